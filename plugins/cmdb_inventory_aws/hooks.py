"""A hook that assumes one role in one target account and hands out regional clients from it."""

from __future__ import annotations

import hashlib
import re
import threading
from functools import cached_property
from typing import TYPE_CHECKING, Any

import botocore.session
from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
from botocore.config import Config

if TYPE_CHECKING:
    from botocore.client import BaseClient

SESSION_NAME_RE = re.compile(r"[^\w+=,.@-]", re.ASCII)  # AWS's \w is ASCII: "é" or "١" is refused
CHAINED_ROLE_MAX_SECONDS = 3600

_BOTOCORE_LOCK = threading.Lock()
_BOTOCORE_SESSION: botocore.session.Session | None = None
_CLIENT_LOCK = threading.Lock()  # botocore sessions are not thread-safe when creating clients


def shared_botocore_session() -> botocore.session.Session:
    """One botocore session per process, so service models are parsed once, not per account or region."""
    global _BOTOCORE_SESSION
    with _BOTOCORE_LOCK:
        if _BOTOCORE_SESSION is None:
            _BOTOCORE_SESSION = botocore.session.get_session()
        return _BOTOCORE_SESSION


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


class RoleNotAssumableError(RuntimeError):
    """Raised for a permanent refusal of AssumeRole (missing role, broken trust, denied)."""

    def __init__(self, role_arn: str, code: str, message: str) -> None:
        self.role_arn = role_arn
        self.code = code
        self.aws_message = message
        super().__init__(f"cannot assume {role_arn}: {code}: {message}")


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
        self._clients: dict[tuple[str, str], BaseClient] = {}

    @property
    def hub_region(self) -> str:
        """Region of the hub identity's STS endpoint and of the target's first regional calls."""
        return self.region_name or "us-east-1"

    @cached_property
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

    @cached_property
    def hub_sts(self) -> BaseClient:
        """STS client of the hub identity, on the hub region's endpoint."""
        session = self.get_session(region_name=self.hub_region)
        return session.client(
            "sts",
            region_name=self.hub_region,
            endpoint_url=self.conn_config.get_service_endpoint_url("sts"),
            config=self.client_config,
            verify=self.verify,
        )

    @cached_property
    def hub_identity(self) -> dict[str, str]:
        """The hub identity's ``Account`` and ``Arn`` (GetCallerIdentity needs no permission)."""
        identity = self.hub_sts.get_caller_identity()
        return {"Account": identity["Account"], "Arn": identity["Arn"]}

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

    @cached_property
    def _credentials(self) -> dict[str, str]:
        """AssumeRole once for this account; the keys are masked before anything could log them."""
        from airflow.sdk.log import mask_secret
        from botocore.exceptions import ClientError

        kwargs = self.assume_role_kwargs()
        if self.duration_seconds > CHAINED_ROLE_MAX_SECONDS and self.hub_is_assumed_role:
            raise ValueError(
                f"session_duration_seconds={self.duration_seconds} is refused: the hub identity "
                f"{self.hub_identity['Arn']} is an assumed role, and AWS limits role chaining to one hour "
                f"({CHAINED_ROLE_MAX_SECONDS} s)"
            )
        self.log.info(
            "Assuming %s as session %s through STS in %s",
            kwargs["RoleArn"],
            self.session_name,
            self.hub_region,
        )
        try:
            response = self.hub_sts.assume_role(**kwargs)
        except ClientError as err:
            error = err.response.get("Error", {})
            code = str(error.get("Code", "Unknown"))
            if code in {"AccessDenied", "AccessDeniedException", "InvalidClientTokenId", "NoSuchEntity"}:
                raise RoleNotAssumableError(kwargs["RoleArn"], code, str(error.get("Message", ""))) from None
            raise
        creds = response["Credentials"]
        for secret in (creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"]):
            mask_secret(secret)
        return {
            "aws_access_key_id": creds["AccessKeyId"],
            "aws_secret_access_key": creds["SecretAccessKey"],
            "aws_session_token": creds["SessionToken"],
        }

    def assume(self) -> str:
        """Assume the target role now (idempotent) and return its ARN."""
        _ = self._credentials
        return self.target_role_arn

    def client(self, service: str, region: str) -> BaseClient:
        """One client per (service, region), all from the one assumed session and one botocore session."""
        key = (service, region)
        credentials = self._credentials
        with _CLIENT_LOCK:
            if key not in self._clients:
                self._clients[key] = shared_botocore_session().create_client(
                    service,
                    region_name=region,
                    endpoint_url=self.conn_config.get_service_endpoint_url(service),
                    verify=self.verify,
                    config=self.client_config,
                    **credentials,
                )
            return self._clients[key]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} account={self.account_id_target} role={self.role_name}>"
