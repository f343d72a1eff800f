"""
What every step of a run works with, below the steps themselves (inventory and preflight both use it):
the run's identity (``RunInfo``), its clock, its S3 store and each account's cross-account hook.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from botocore.config import Config

from include.cmdb_inventory.aws.hooks import (
    CHAINED_ROLE_MAX_SECONDS,
    CrossAccountHook,
    HubHook,
    SessionDurationError,
    role_session_name,
)
from include.cmdb_inventory.config import Account, ConfigError, Settings
from include.cmdb_inventory.records import iso_utc
from include.cmdb_inventory.storage import SnapshotStore

# Every EC2 call of the inventory (and all that CMDBDiscovery allows): its EC2 clients know only these.
EC2_OPERATIONS = ("DescribeInstances", "DescribeRegions")


@dataclass(frozen=True)
class RunInfo:
    """The DAG run a step works for."""

    dag_id: str
    run_id: str
    ds: str
    logical_date: str
    try_number: int = 1


def now_utc() -> str:
    """Collection time, ISO-8601 UTC."""
    return iso_utc(datetime.now(tz=UTC))


def store_for(settings: Settings) -> SnapshotStore:
    """
    The S3 store, through the provider's hook machinery (so connection extras apply), on the process's one
    hub session (``HubHook``: what ``S3Hook(...).get_conn()`` gives, without another AssumeRole).
    """
    hook = HubHook(aws_conn_id=settings.aws_conn_id, region_name=settings.hub_region, client_type="s3")
    # botocore's standard retries with the configured attempts, as for EC2 (its default of three attempts
    # gave up inside a SlowDown storm and left it to a task retry minutes later); connection extras win.
    ours = Config(retries={"mode": "standard", "total_max_attempts": settings.max_attempts})
    conn_config = hook.conn_config.botocore_config
    client = hook.get_client_type(
        region_name=settings.hub_region, config=ours.merge(conn_config) if conn_config else ours
    )
    return SnapshotStore(
        client,
        settings.bucket,
        settings.prefix,
        kms_key_id=settings.kms_key_id,
        expected_bucket_owner=settings.expected_bucket_owner,
    )


def hook_for(settings: Settings, account: Account, run: RunInfo) -> CrossAccountHook:
    """The cross-account hook of one account, with a session name that traces back to the run."""
    return CrossAccountHook(
        account_id=account.id,
        role_name=settings.role_name,
        session_name=role_session_name("cmdb", run.run_id),
        external_id=settings.external_id,
        duration_seconds=settings.session_duration_seconds,
        source_identity=settings.source_identity,
        session_tags=dict(settings.session_tags),
        max_attempts=settings.max_attempts,
        max_pool_connections=max(10, settings.region_threads),
        aws_conn_id=settings.aws_conn_id,
        region_name=settings.hub_region,
        ec2_operations=EC2_OPERATIONS,
    )


def check_session_duration(settings: Settings, run: RunInfo) -> None:
    """
    Refuse up front (before any account is scanned) a ``session_duration_seconds`` above one hour when the
    hub identity is itself an assumed role: AWS caps role chaining at one hour.
    """
    if settings.session_duration_seconds <= CHAINED_ROLE_MAX_SECONDS:
        return
    anchor = settings.accounts[0] if settings.accounts else Account(id="000000000000")
    try:
        hook_for(settings, anchor, run).check_session_duration()
    except SessionDurationError as err:
        raise ConfigError("session_duration_seconds", str(err)) from None
