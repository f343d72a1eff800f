"""A hook that assumes one role in one target account and hands out regional clients from it."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

import botocore.loaders
import botocore.session
from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
from botocore.config import Config
from botocore.credentials import Credentials, RefreshableCredentials

from include.cmdb_inventory.aws import redaction
from include.cmdb_inventory.aws.errors import PERMANENT_ASSUME_ROLE_CODES
from include.cmdb_inventory.aws.redaction import guard_botocore_logs, redact

if TYPE_CHECKING:
    from botocore.client import BaseClient

SESSION_NAME_RE = re.compile(r"[^\w+=,.@-]", re.ASCII)  # AWS's \w is ASCII: no "é"
CHAINED_ROLE_MAX_SECONDS = 3600

_BOTOCORE_LOCK = threading.Lock()
_BOTOCORE_SESSION: botocore.session.Session | None = None
_CUT_SESSIONS: dict[frozenset[str], botocore.session.Session] = {}  # sessions with EC2's model cut
_CLIENT_LOCK = threading.Lock()  # botocore sessions are not thread-safe when creating clients
_HUB_LOCK = threading.Lock()
_HUB_SESSIONS: dict[str, Any] = {}  # the hub identity's boto3 session, per connection and region
_HUB_IDENTITIES: dict[str, dict[str, str]] = {}  # and its GetCallerIdentity answer

# The credential redactor and botocore's log filter live in one module, shared with the coverage page (the
# API server's process) and every scrubbing path; these names stay for callers of this module.
redact_credentials = redact
CredentialLogFilter = redaction.CredentialLogFilter


class instance_cached_property(cached_property):
    """
    ``functools.cached_property`` without Python 3.11's lock, which is one lock per attribute *for every
    instance of the class*: one account's AssumeRole (a network call) made every other account's hook in
    the process wait. Here each instance computes its value once, under a lock of its own.
    """

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        cache = instance.__dict__
        name = self.attrname or self.func.__name__
        if name in cache:
            return cache[name]
        lock = cache.setdefault(f"_{name}_lock", threading.Lock())  # setdefault is atomic
        with lock:
            if name not in cache:
                cache[name] = self.func(instance)
            return cache[name]


def parse_timestamp(value: Any) -> datetime:
    """
    The shared session's timestamp parser: ISO-8601 with a zone (what EC2 answers) in C; anything else
    through botocore's own, which goes through dateutil at ~70 us a value, and a DescribeInstances
    instance carries several (launch and attachment times): a large part of the CPU of parsing a page.
    """
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed
    from botocore.utils import parse_timestamp as botocore_parse_timestamp

    return botocore_parse_timestamp(value)


def _new_botocore_session(loader: botocore.loaders.Loader | None = None) -> botocore.session.Session:
    session = botocore.session.get_session()
    if loader is not None:
        session.register_component("data_loader", loader)
    # Build its endpoint data now, under the lock: region lists are then read from any thread.
    session.get_available_partitions()
    session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=parse_timestamp)
    return session


def shared_botocore_session() -> botocore.session.Session:
    """One botocore session per process, so service models are parsed once, not per account or region."""
    global _BOTOCORE_SESSION
    with _BOTOCORE_LOCK:
        if _BOTOCORE_SESSION is None:
            _BOTOCORE_SESSION = _new_botocore_session()
        return _BOTOCORE_SESSION


class _CutEc2Loader(botocore.loaders.Loader):
    """botocore's loader, with EC2's API model cut to some operations and the shapes they use."""

    def __init__(self, operations: frozenset[str]) -> None:
        super().__init__()
        self.operations = operations
        self._cut: dict[tuple[str, str | None], dict[str, Any]] = {}

    def load_service_model(self, service_name: str, type_name: str, api_version: str | None = None) -> Any:
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


def cut_botocore_session(ec2_operations: frozenset[str]) -> botocore.session.Session:
    """
    A process-wide botocore session whose EC2 clients know only ``ec2_operations``. botocore builds a
    client class with a method per operation for every client; EC2 has ~830, which took 15-25 ms of CPU
    per client, 17 clients per account: most of an account's CPU. With two operations it is ~1 ms.
    """
    with _BOTOCORE_LOCK:
        if ec2_operations not in _CUT_SESSIONS:
            _CUT_SESSIONS[ec2_operations] = _new_botocore_session(_CutEc2Loader(ec2_operations))
        return _CUT_SESSIONS[ec2_operations]


def role_session_name(*parts: str) -> str:
    """A RoleSessionName (2-64 chars of ``[\\w+=,.@-]``) that traces back to the DAG run."""
    text = SESSION_NAME_RE.sub(".", "@".join(p for p in parts if p)) or "cmdb-ec2-inventory"
    if len(text) > 64:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        text = f"{text[:55]}-{digest}"
    return text.ljust(2, "-")


def partition_of(arn: str) -> str:
    """The partition (``aws``, ``aws-cn``, ``aws-us-gov``...) of an ARN."""
    parts = arn.split(":")
    if len(parts) < 6 or parts[0] != "arn" or not parts[1]:
        raise ValueError(f"not an ARN: {arn!r}")
    return parts[1]


def hub_session(hook: AwsBaseHook, region_name: str | None) -> Any:
    """
    The hub identity's boto3 session for ``hook``'s connection, one per process, connection and region.
    ``AwsBaseHook`` builds two new botocore sessions for every hook (each parsing botocore's endpoint and
    model files) and, with the connection's ``role_arn``, assumes that role every time; the session's
    credentials refresh themselves, so one serves every hook of the process: the S3 store's and every
    account's hub STS client (a task process then assumes ``role_arn`` once, not twice).
    """
    key = _hub_key(hook, region_name)
    with _HUB_LOCK:
        if key not in _HUB_SESSIONS:
            _HUB_SESSIONS[key] = AwsBaseHook.get_session(hook, region_name=region_name)
        return _HUB_SESSIONS[key]


def _hub_key(hook: AwsBaseHook, region_name: str | None) -> str:
    """What identifies the hub identity in this process: the connection (as configured) and the region."""
    conn = hook.conn_config
    identity = [hook.aws_conn_id, region_name, conn.conn_id, conn.aws_access_key_id]
    identity += [conn.aws_secret_access_key, conn.role_arn, conn.extra_config]
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


class HubHook(AwsBaseHook):
    """
    An ``AwsBaseHook`` on the process's hub session (:func:`hub_session`):
    ``HubHook(client_type="s3", ...).get_conn()`` is ``S3Hook(...).get_conn()`` (same endpoint, config and
    connection extras) without two more botocore sessions and another AssumeRole.
    """

    def get_session(self, region_name: str | None = None, deferrable: bool = False) -> Any:
        """The cached hub session (deferrable sessions are the provider's own)."""
        if deferrable:
            return super().get_session(region_name=region_name, deferrable=True)
        return hub_session(self, region_name)

    def get_client_type(
        self, region_name: str | None = None, config: Config | None = None, deferrable: bool = False
    ) -> Any:
        """A client from the shared session; created under the lock (sessions are not thread-safe)."""
        self.get_session(region_name=region_name, deferrable=deferrable)  # any AssumeRole: outside the lock
        with _CLIENT_LOCK:
            return super().get_client_type(region_name=region_name, config=config, deferrable=deferrable)


# botocore's refresh windows (re-assume this long before expiry: advisory, then blocking), scaled down for
# short sessions: with botocore's fixed 15 minutes, a 15-minute session would be re-assumed on every call.
BOTOCORE_ADVISORY_REFRESH_SECONDS = 15 * 60
BOTOCORE_MANDATORY_REFRESH_SECONDS = 10 * 60


def refresh_windows(duration_seconds: int) -> tuple[int, int]:
    """(advisory, mandatory) seconds before expiry at which a session of this duration is re-assumed."""
    return (
        min(BOTOCORE_ADVISORY_REFRESH_SECONDS, duration_seconds // 3),
        min(BOTOCORE_MANDATORY_REFRESH_SECONDS, duration_seconds // 6),
    )


def sign_with(client: BaseClient, credentials: Credentials) -> None:
    """
    Make ``client`` sign with ``credentials`` (refreshable). ``create_client`` takes only static keys, and
    the one shared botocore session cannot hold every account's credentials, so the client's signer gets
    them, as botocore's own sessions hand theirs over. Fails loudly if botocore renames the attribute.
    """
    signer = client._request_signer
    if not hasattr(signer, "_credentials"):
        raise RuntimeError(
            "botocore's RequestSigner has no _credentials: cannot attach refreshable credentials"
        )
    signer._credentials = credentials


class RoleNotAssumableError(RuntimeError):
    """
    Raised for a permanent refusal of AssumeRole (missing role, broken trust, denied, a session longer than
    the role allows): the account fails without retries (status ``ROLE_NOT_ASSUMABLE`` with the code).
    """

    def __init__(self, role_arn: str, code: str, message: str) -> None:
        self.role_arn = role_arn
        self.code = code
        self.aws_message = message
        super().__init__(f"cannot assume {role_arn}: {code}: {message}")


class SessionDurationError(ValueError):
    """DurationSeconds above one hour was asked for while the hub identity is itself an assumed role."""


class CrossAccountHook(AwsBaseHook):
    """
    Assume ``role_name`` in one target account once, then give one client per service and region.

    The hub identity comes from the Airflow AWS connection (its extras ``endpoint_url``, ``region_name``,
    ``config_kwargs``, ``service_config`` and ``role_arn`` keep working). The target role's ARN uses the
    hub identity's partition, AssumeRole goes through the hub region's STS endpoint, and the temporary
    credentials are registered with Airflow's secret masker and never logged or returned.

    :param account_id: The 12-digit target account.
    :param role_name: The role assumed in the target account.
    :param session_name: RoleSessionName; should trace back to the DAG run (see :func:`role_session_name`).
    :param external_id: ExternalId passed to AssumeRole, if any.
    :param duration_seconds: DurationSeconds of the assumed session.
    :param source_identity: SourceIdentity passed to AssumeRole, if any.
    :param session_tags: Session tags passed to AssumeRole, if any.
    :param max_attempts: Attempts per call in botocore's ``standard`` retry mode.
    :param max_pool_connections: HTTP connections per client; at least the number of threads using it.
    :param ec2_operations: When given, EC2 clients know only these operations (e.g. ``DescribeInstances``,
        ``DescribeRegions``): much cheaper to create (see :func:`cut_botocore_session`).
    """

    def __init__(
        self,
        *,
        account_id: str,
        role_name: str = "CMDBDiscovery",
        session_name: str = "cmdb-ec2-inventory",
        external_id: str | None = None,
        duration_seconds: int = 3600,
        source_identity: str | None = None,
        session_tags: dict[str, str] | None = None,
        max_attempts: int = 8,
        max_pool_connections: int = 10,
        aws_conn_id: str | None = AwsBaseHook.default_conn_name,
        region_name: str | None = None,
        ec2_operations: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__(aws_conn_id=aws_conn_id, region_name=region_name, client_type="sts")
        self.account_id_target = account_id
        self.role_name = role_name
        self.session_name = session_name
        self.external_id = external_id
        self.duration_seconds = duration_seconds
        self.source_identity = source_identity
        self.session_tags = session_tags or {}
        self.max_attempts = max_attempts
        self.max_pool_connections = max_pool_connections
        self.ec2_operations = frozenset(ec2_operations) if ec2_operations else None
        self._clients: dict[tuple[str, str], BaseClient] = {}
        self.assume_role_count = 0  # AssumeRole calls of this hook: the first, then each refresh
        self._renew_lock = threading.Lock()

    @property
    def hub_region(self) -> str:
        """Region of the hub identity's STS endpoint and of the target's first regional calls."""
        return self.region_name or "us-east-1"

    @instance_cached_property
    def client_config(self) -> Config:
        """One botocore Config for every client: standard retries, enough pooled connections."""
        ours = Config(
            # total_max_attempts counts the first attempt; botocore's "max_attempts" counts retries only.
            retries={"mode": "standard", "total_max_attempts": self.max_attempts},
            max_pool_connections=self.max_pool_connections,
            connect_timeout=10,
            read_timeout=60,
        )
        # Connection extras (config_kwargs) win over our defaults.
        conn_config = self.conn_config.botocore_config
        return self._get_config(ours.merge(conn_config) if conn_config else ours)

    def hub_session(self) -> Any:
        """The hub identity's boto3 session (one per process, connection and region: :func:`hub_session`)."""
        return hub_session(self, self.hub_region)

    @instance_cached_property
    def hub_sts(self) -> BaseClient:
        """STS client of the hub identity, on the hub region's endpoint (its own client per hook)."""
        session = self.hub_session()
        with _CLIENT_LOCK:
            return session.client(
                "sts",
                region_name=self.hub_region,
                endpoint_url=self.conn_config.get_service_endpoint_url("sts"),
                config=self.client_config,
                verify=self.verify,
            )

    @instance_cached_property
    def hub_identity(self) -> dict[str, str]:
        """
        The hub identity's ``Account`` and ``Arn`` (GetCallerIdentity needs no permission), asked once per
        process and connection, like its session (:func:`hub_session`).
        """
        key = _hub_key(self, self.hub_region)
        found = _HUB_IDENTITIES.get(key)
        if found is None:
            answer = self.hub_sts.get_caller_identity()
            found = _HUB_IDENTITIES.setdefault(key, {"Account": answer["Account"], "Arn": answer["Arn"]})
        return dict(found)

    @property
    def partition(self) -> str:
        """Partition of the hub identity, used for the target role's ARN."""
        return partition_of(self.hub_identity["Arn"])

    @property
    def hub_is_assumed_role(self) -> bool:
        """True when the hub identity is itself an assumed role (so AssumeRole is role chaining)."""
        return ":assumed-role/" in self.hub_identity["Arn"]

    @property
    def target_role_arn(self) -> str:
        """ARN of the role assumed in the target account."""
        return f"arn:{self.partition}:iam::{self.account_id_target}:role/{self.role_name}"

    def assume_role_kwargs(self) -> dict[str, Any]:
        """The AssumeRole request (without secrets: there are none in it)."""
        kwargs: dict[str, Any] = {
            "RoleArn": self.target_role_arn,
            "RoleSessionName": self.session_name,
            "DurationSeconds": self.duration_seconds,
        }
        if self.external_id:
            kwargs["ExternalId"] = self.external_id
        if self.source_identity:
            kwargs["SourceIdentity"] = self.source_identity
        if self.session_tags:
            kwargs["Tags"] = [{"Key": k, "Value": v} for k, v in sorted(self.session_tags.items())]
        return kwargs

    def check_session_duration(self) -> None:
        """
        Refuse, before any AssumeRole, a DurationSeconds above one hour when the hub identity is itself an
        assumed role: AWS caps role chaining at one hour. Asks STS only when the duration is above it.
        """
        if self.duration_seconds > CHAINED_ROLE_MAX_SECONDS and self.hub_is_assumed_role:
            raise SessionDurationError(
                f"session_duration_seconds={self.duration_seconds} is refused: the hub identity "
                f"{self.hub_identity['Arn']} is an assumed role, and AWS limits role chaining to one hour "
                f"({CHAINED_ROLE_MAX_SECONDS} s); use at most {CHAINED_ROLE_MAX_SECONDS}"
            )

    def session_key(self) -> str:
        """The access key id of the account's current session (to tell sessions apart, never logged)."""
        return str(self.credentials.get_frozen_credentials().access_key)

    def renew_session(self, stale_key: str) -> bool:
        """
        AWS answered ``ExpiredToken`` for the session whose key is ``stale_key`` before its own expiry
        time (revoked, clock skew): assume the role again now and sign every client of the account with
        the new session. Threads that saw the same session renew it once; say whether this call did.
        """
        with self._renew_lock:
            if self.session_key() != stale_key:
                return False  # another region's thread renewed it already
            self.log.warning("Session of %s expired early; assuming the role again", self.target_role_arn)
            fresh = self._refreshing_credentials()
            self.__dict__["credentials"] = fresh
            with _CLIENT_LOCK:
                for client in self._clients.values():
                    sign_with(client, fresh)
            return True

    @instance_cached_property
    def credentials(self) -> Credentials:
        """
        The account's session: assumed once, now (a refusal raises :class:`RoleNotAssumableError` here),
        then re-assumed by botocore before it expires (``RefreshableCredentials``, as the provider's
        ``AwsBaseHook`` and botocore's own ``AssumeRoleProvider`` do), so a scan that outlives its session
        goes on. Every client of the account signs with this one object.
        """
        return self._refreshing_credentials()

    def _refreshing_credentials(self) -> RefreshableCredentials:
        guard_botocore_logs()
        self.check_session_duration()
        advisory, mandatory = refresh_windows(self.duration_seconds)
        return RefreshableCredentials.create_from_metadata(
            metadata=self._assume_role(),
            refresh_using=self._assume_role,
            method="sts-assume-role",
            advisory_timeout=advisory,
            mandatory_timeout=mandatory,
        )

    def _assume_role(self) -> dict[str, str]:
        """One AssumeRole (botocore calls it again to refresh); the keys are masked before any use."""
        from airflow.sdk.log import mask_secret
        from botocore.exceptions import ClientError

        guard_botocore_logs()
        kwargs = self.assume_role_kwargs()
        self.assume_role_count += 1
        self.log.info(
            "%s %s as session %s through STS in %s",
            "Assuming" if self.assume_role_count == 1 else "Refreshing the session: assuming again",
            kwargs["RoleArn"],
            self.session_name,
            self.hub_region,
        )
        try:
            response = self.hub_sts.assume_role(**kwargs)
        except ClientError as err:
            error = err.response.get("Error", {})
            code = str(error.get("Code", "Unknown"))
            if code in PERMANENT_ASSUME_ROLE_CODES:
                message = str(error.get("Message", ""))
                raise RoleNotAssumableError(kwargs["RoleArn"], code, self._explain(code, message)) from None
            raise
        creds = response["Credentials"]
        for secret in (creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"]):
            mask_secret(secret)
        return {
            "access_key": creds["AccessKeyId"],
            "secret_key": creds["SecretAccessKey"],
            "token": creds["SessionToken"],
            "expiry_time": creds["Expiration"].isoformat(),
        }

    def _explain(self, code: str, message: str) -> str:
        """STS's message, and what to change when the session is longer than the role allows."""
        if code == "ValidationError" and "DurationSeconds" in message:
            return (
                f"{message} (session_duration_seconds={self.duration_seconds}: lower it to at most the "
                f"role's MaxSessionDuration, or raise the MaxSessionDuration of {self.role_name})"
            )
        return message

    def assume(self) -> str:
        """Assume the target role now (idempotent) and return its ARN."""
        _ = self.credentials
        return self.target_role_arn

    def client(self, service: str, region: str) -> BaseClient:
        """One client per (service, region), all from the one assumed session and one botocore session."""
        key = (service, region)
        _ = self.credentials  # the first AssumeRole happens outside the lock (other accounts' hooks share it)
        if service == "ec2" and self.ec2_operations:
            session = cut_botocore_session(self.ec2_operations)
        else:
            session = shared_botocore_session()
        with _CLIENT_LOCK:
            if key not in self._clients:
                # Read under the lock that renew_session holds while it re-signs: never a stale session.
                credentials = self.credentials
                frozen = credentials.get_frozen_credentials()
                client = session.create_client(
                    service,
                    region_name=region,
                    endpoint_url=self.conn_config.get_service_endpoint_url(service),
                    verify=self.verify,
                    config=self.client_config,
                    aws_access_key_id=frozen.access_key,
                    aws_secret_access_key=frozen.secret_key,
                    aws_session_token=frozen.token,
                )
                sign_with(client, credentials)
                self._clients[key] = client
            return self._clients[key]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} account={self.account_id_target} role={self.role_name}>"
