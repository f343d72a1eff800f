"""
The hooks: ``HubHook``, the provider's ``AwsBaseHook`` on the process's one hub session, and
``CrossAccountHook``, which assumes a role in one target account once and gives one client per region.
"""

from __future__ import annotations

import hashlib
import re
import threading
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
from botocore.config import Config

from include.cmdb_inventory.aws import clients, tuning
from include.cmdb_inventory.aws.errors import PERMANENT_ASSUME_ROLE_CODES
from include.cmdb_inventory.aws.redaction import guard_botocore_logs

if TYPE_CHECKING:
    from botocore.client import BaseClient
    from botocore.credentials import Credentials

SESSION_NAME_RE = re.compile(r"[^\w+=,.@-]", re.ASCII)  # AWS's \w is ASCII: no "é"
CHAINED_ROLE_MAX_SECONDS = 3600


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


class HubHook(AwsBaseHook):
    """
    ``AwsBaseHook`` on the process's hub session (:func:`~include.cmdb_inventory.aws.tuning.hub_session`):
    ``HubHook(client_type="s3", ...).get_conn()`` is ``S3Hook(...).get_conn()`` (same endpoint, config and
    connection extras) without two more botocore sessions and another AssumeRole of the connection's role.
    """

    def hub(self, region_name: str | None) -> tuning.HubSession:
        """The process's hub session of this hook's connection in ``region_name``."""
        key = tuning.hub_key(self.aws_conn_id, region_name, self.conn_config)
        return tuning.hub_session(key, lambda: super(HubHook, self).get_session(region_name=region_name))

    def get_session(self, region_name: str | None = None, deferrable: bool = False) -> Any:
        """The hub's boto3 session (deferrable sessions are the provider's own)."""
        if deferrable:
            return super().get_session(region_name=region_name, deferrable=True)
        return self.hub(region_name).session

    def get_client_type(
        self, region_name: str | None = None, config: Config | None = None, deferrable: bool = False
    ) -> Any:
        """A client of the hub session, created under the process's client lock."""
        self.get_session(region_name=region_name, deferrable=deferrable)  # any AssumeRole: outside the lock
        with clients.CLIENT_LOCK:
            return super().get_client_type(region_name=region_name, config=config, deferrable=deferrable)


class CrossAccountHook(HubHook):
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
    :param aws_conn_id: The Airflow connection of the hub identity.
    :param region_name: The hub region (its STS endpoint, the account's first calls).
    :param ec2_operations: When given, EC2 clients know only these operations (e.g. ``DescribeInstances``,
        ``DescribeRegions``): much cheaper to create (see :mod:`include.cmdb_inventory.aws.tuning`).
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
        self.ec2_operations = frozenset(ec2_operations or ())
        # The account's session (assumed on first use) and its clients, under the hook's own lock: other
        # accounts' hooks in the process never wait for this one's AssumeRole (as a functools.cached_property,
        # on Python 3.11 one lock for all instances: bench.tuning, 16 accounts at once, 1.8 s against 0.32 s).
        self.credentials: Credentials | None = None
        self.assume_role_count = 0  # AssumeRole calls of this hook: the first, then each refresh
        self._clients: dict[tuple[str, str], BaseClient] = {}
        self._lock = threading.RLock()

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
        # Connection extras (config_kwargs) win over our defaults; the base class's own merge adds the
        # provider's user agent, as on the provider's clients.
        conn_config = self.conn_config.botocore_config
        return self._get_config(ours.merge(conn_config) if conn_config else ours)

    @cached_property
    def hub_sts(self) -> BaseClient:
        """STS client of the hub identity, on the hub region's endpoint (its own client per hook)."""
        session = self.get_session(region_name=self.hub_region)
        with clients.CLIENT_LOCK:
            return session.client(
                "sts",
                region_name=self.hub_region,
                endpoint_url=self.conn_config.get_service_endpoint_url("sts"),
                config=self.client_config,
                verify=self.verify,
            )

    @cached_property
    def hub_identity(self) -> dict[str, str]:
        """The hub identity's ``Account`` and ``Arn``, asked once per process and connection."""
        return self.hub(self.hub_region).identity(self.hub_sts)

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

    def session(self) -> Credentials:
        """
        The account's session: assumed on first use (a refusal raises :class:`RoleNotAssumableError`, and
        the next call asks again), then re-assumed by botocore before it expires, so a scan that outlives
        its session goes on. Every client of the account signs with this one object.
        """
        with self._lock:
            if self.credentials is None:
                self.check_session_duration()
                self.credentials = clients.refreshing_credentials(self._assume_role, self.duration_seconds)
            return self.credentials

    def assume(self) -> str:
        """Assume the target role now (idempotent) and return its ARN."""
        self.session()
        return self.target_role_arn

    def session_key(self) -> str:
        """The access key id of the account's current session (to tell sessions apart, never logged)."""
        return str(self.session().get_frozen_credentials().access_key)

    def renew_session(self, stale_key: str) -> bool:
        """
        AWS answered ``ExpiredToken`` for the session whose key is ``stale_key`` before its own expiry
        time (revoked, clock skew): assume the role again now and sign every client of the account with
        the new session. Threads that saw the same session renew it once; say whether this call did.
        """
        with self._lock:
            if self.session_key() != stale_key:
                return False  # another region's thread renewed it already
            self.log.warning("Session of %s expired early; assuming the role again", self.target_role_arn)
            self.credentials = clients.refreshing_credentials(self._assume_role, self.duration_seconds)
            for client in self._clients.values():
                clients.sign_with(client, self.credentials)
            return True

    def client(self, service: str, region: str) -> BaseClient:
        """One client per (service, region), all from the one assumed session and one botocore session."""
        key = (service, region)
        with self._lock:
            if key not in self._clients:
                ec2_operations = self.ec2_operations if service == "ec2" else frozenset()
                self._clients[key] = clients.create_client(
                    clients.botocore_session(ec2_operations),
                    service,
                    region,
                    self.session(),
                    endpoint_url=self.conn_config.get_service_endpoint_url(service),
                    verify=self.verify,
                    config=self.client_config,
                )
            return self._clients[key]

    def _assume_role(self) -> dict[str, str]:
        """One AssumeRole (botocore calls it again to refresh); the keys are masked before any use."""
        from airflow.sdk.log import mask_secret
        from botocore.exceptions import ClientError

        guard_botocore_logs()  # botocore's DEBUG records of the answer carry the new secret
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

    def __repr__(self) -> str:
        return f"<{type(self).__name__} account={self.account_id_target} role={self.role_name}>"
