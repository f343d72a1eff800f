"""
The botocore tuning that measurably pays, each piece with its number from ``python -m bench.tuning``
(the table in docs/operations.md). Without it the inventory gives the same answers, at a higher cost.
Measured and dropped: a timestamp parser in C swapped into botocore's, and a ``cached_property``
re-implementation.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import botocore.loaders

if TYPE_CHECKING:
    from botocore.client import BaseClient

# --------------------------------------------------------------------------- EC2 clients cut to the inventory
# bench.tuning: a task's 17 EC2 clients take 0.11 s of CPU and 25 MB cut to the two operations, 0.26 s and
# 46 MB with EC2's whole model (botocore builds each client a class with a method per operation: 838).


class CutEc2Loader(botocore.loaders.Loader):
    """botocore's loader, with EC2's API model cut to ``operations`` and the shapes they use."""

    def __init__(self, operations: frozenset[str]) -> None:
        super().__init__()
        self.operations = operations
        self._cut: dict[tuple[str, str | None], dict[str, Any]] = {}

    def load_service_model(self, service_name: str, type_name: str, api_version: str | None = None) -> Any:
        """The model botocore asked for; EC2's API model cut (once per loader and version)."""
        model = super().load_service_model(service_name, type_name, api_version)
        if service_name != "ec2" or type_name != "service-2":
            return model
        key = (type_name, api_version)
        if key not in self._cut:
            self._cut[key] = cut_model(model, self.operations)
        return self._cut[key]


def cut_model(model: dict[str, Any], operations: frozenset[str]) -> dict[str, Any]:
    """A botocore API model with only ``operations`` and the shapes they reach."""
    shapes: dict[str, Any] = model["shapes"]
    wanted = {name: model["operations"][name] for name in sorted(operations)}
    todo = [ref["shape"] for op in wanted.values() for ref in (op.get("input"), op.get("output")) if ref]
    todo += [ref["shape"] for op in wanted.values() for ref in op.get("errors", [])]
    keep: set[str] = set()
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep.add(name)
        shape = shapes[name]
        refs = [
            *shape.get("members", {}).values(),
            *(shape[k] for k in ("member", "key", "value") if k in shape),
        ]
        todo.extend(ref["shape"] for ref in refs)
    return {**model, "operations": wanted, "shapes": {name: shapes[name] for name in keep}}


# --------------------------------------------------------------------------- one hub session per process
# bench.tuning: a task process's hub (the store's S3 client, the hub's STS client and identity, the
# account's AssumeRole) with a role_arn connection: 1 AssumeRole of the hub role and 0.26 s of CPU with one
# hub session, 2 and 0.49 s with the provider's session per hook (keys only: 0.22 s against 0.25 s).
#
# ``AwsBaseHook.get_session`` builds a new boto3 session for every call (each parsing botocore's endpoint
# data) and, with the connection's ``role_arn``, assumes that role every time. The session's credentials
# refresh themselves, so one serves every hook of the process: it is shared by hooks that the steps create
# apart (the store's, the account's), hence process-wide, per connection (as configured) and region.
_HUB_LOCK = threading.Lock()
_HUB_SESSIONS: dict[str, HubSession] = {}


class HubSession:
    """The hub identity's boto3 session and, asked once, who it is."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self._identity: dict[str, str] | None = None
        self._lock = threading.Lock()

    def identity(self, sts: BaseClient) -> dict[str, str]:
        """``Account`` and ``Arn`` of the hub identity (GetCallerIdentity through ``sts``, once)."""
        with self._lock:
            if self._identity is None:
                answer = sts.get_caller_identity()
                self._identity = {"Account": answer["Account"], "Arn": answer["Arn"]}
            return dict(self._identity)


def hub_session(key: str, create: Callable[[], Any]) -> HubSession:
    """The process's hub session for ``key`` (:func:`hub_key`), made by ``create`` the first time."""
    with _HUB_LOCK:
        if key not in _HUB_SESSIONS:
            _HUB_SESSIONS[key] = HubSession(create())
        return _HUB_SESSIONS[key]


def hub_key(aws_conn_id: str | None, region_name: str | None, conn: Any) -> str:
    """What identifies the hub identity in a process: the connection, as configured, and the region."""
    identity: list[Any] = [aws_conn_id, region_name, conn.conn_id, conn.aws_access_key_id]
    identity += [conn.aws_secret_access_key, conn.role_arn, conn.extra_config]
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
