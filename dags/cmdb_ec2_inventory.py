"""Nightly cross-account EC2 inventory for the CMDB: one CSV in S3, an SNS notification, coverage checked."""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import CronTriggerTimetable, Param, dag, get_current_context, task

from include.cmdb_inventory.alerts import TaskFailureNotifier, deadline_alert
from include.cmdb_inventory.approval import RemovalApprovalOperator
from include.cmdb_inventory.assets import SNAPSHOT_ALIAS
from include.cmdb_inventory.contract import APPROVAL_TASK_ID

if TYPE_CHECKING:
    from include.cmdb_inventory.contract import RunSummary
    from include.cmdb_inventory.notify import Receipt
    from include.cmdb_inventory.preflight import PreflightSummary

# Deployment knobs that must be known when the DAG is parsed (environment only, never Variables).
MAX_ACTIVE_ACCOUNTS = int(os.environ.get("CMDB_EC2_INVENTORY_MAX_ACTIVE_ACCOUNTS", "16"))
# The Airflow pool of the account scans, which bounds them across runs (create it first: see
# docs/operations.md, 'What to tune').
SCAN_POOL = os.environ.get("CMDB_EC2_INVENTORY_POOL", "default_pool")
RETRY_DELAY = timedelta(seconds=int(os.environ.get("CMDB_EC2_INVENTORY_RETRY_DELAY_SECONDS", "120")))
# Alert the topic when a run has not succeeded this long after its logical date (the nightly run: 02:00);
# 0 turns the alert off. Its topic is fixed here: deadline callbacks cannot read Variables from the DB.
DEADLINE_MINUTES = float(os.environ.get("CMDB_EC2_INVENTORY_DEADLINE_MINUTES", "240"))
ALERT_TOPIC_ARN = os.environ.get("CMDB_EC2_INVENTORY_ALERT_TOPIC_ARN") or None
# How long a snapshot held by the mass-removal guard waits for a person before it counts as rejected.
APPROVAL_TIMEOUT = timedelta(hours=float(os.environ.get("CMDB_EC2_INVENTORY_APPROVAL_TIMEOUT_HOURS", "20")))
if not timedelta(0) < APPROVAL_TIMEOUT:  # no timeout would let a held run wait (and hold its slot) forever
    raise ValueError("CMDB_EC2_INVENTORY_APPROVAL_TIMEOUT_HOURS must be a number of hours above 0")


@dag(
    dag_id=Path(__file__).stem,
    schedule=CronTriggerTimetable(os.environ.get("CMDB_EC2_INVENTORY_SCHEDULE", "0 2 * * *"), timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=2,
    deadline=deadline_alert(DEADLINE_MINUTES, ALERT_TOPIC_ARN),
    doc_md=__doc__,
    tags=["cmdb", "aws", "ec2", "inventory"],
    default_args={
        "owner": "cmdb-platform",
        "retries": 2,
        "retry_delay": RETRY_DELAY,
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=15),
        "execution_timeout": timedelta(minutes=30),
        "on_failure_callback": TaskFailureNotifier(),
    },
    params={
        "accounts": Param(
            None,
            type=["null", "array"],
            description="Some of the expected accounts, for this run only (12-digit ids as strings); the "
            "date's snapshot is replaced only with overwrite. Empty scans every expected account.",
        ),
        "overwrite": Param(
            False,
            type="boolean",
            description="Replace this date's snapshot even when it is already complete.",
        ),
        "mode": Param(
            "inventory",
            type="string",
            enum=["inventory", "preflight"],
            description="Deprecated (goes in the next release): trigger cmdb_ec2_inventory_preflight "
            "instead. preflight: only check every account (role, enabled and allowed regions); no scan, "
            "no snapshot.",
        ),
    },
)
def cmdb_ec2_inventory() -> None:
    """Wiring only: the steps live in ``include.cmdb_inventory`` (``tasks`` is their Airflow adapter)."""

    @task(execution_timeout=timedelta(minutes=5))
    def resolve_accounts() -> list[dict[str, str]]:
        from include.cmdb_inventory import tasks

        return tasks.resolve(get_current_context())

    @task(
        map_index_template="{{ task.op_kwargs['account']['label'] }}",
        multiple_outputs=False,
        max_active_tis_per_dagrun=MAX_ACTIVE_ACCOUNTS,
        pool=SCAN_POOL,
        execution_timeout=timedelta(minutes=45),
    )
    def scan_account(account: dict[str, str]) -> dict[str, Any]:
        from include.cmdb_inventory import tasks

        return tasks.scan(get_current_context(), account)

    @task(
        trigger_rule="all_done",
        multiple_outputs=False,
        # One merge at a time across runs: two runs of one date (or two dates racing for latest/) never
        # interleave their writes of the same keys.
        max_active_tis_per_dag=1,
        execution_timeout=timedelta(minutes=60),
        outlets=[SNAPSHOT_ALIAS],  # an event for the snapshot Asset only when one was written
    )
    def merge_inventory() -> RunSummary | PreflightSummary:
        from include.cmdb_inventory import tasks

        return tasks.merge(get_current_context())

    # ``summary: Any``: the wiring below passes an XComArg, which TaskFlow's stubs check against these
    # parameters; the task receives the value (a RunSummary), whose shape the adapter's signature carries.
    @task(multiple_outputs=False, execution_timeout=timedelta(minutes=5))
    def notify_cmdb(summary: Any) -> Receipt:
        from include.cmdb_inventory import tasks

        return tasks.notify(get_current_context(), summary)

    @task(retries=0, execution_timeout=timedelta(minutes=5))
    def check_coverage(summary: Any) -> None:
        from include.cmdb_inventory import tasks

        tasks.check(get_current_context(), summary)

    accounts = resolve_accounts()
    scanned = scan_account.expand(account=accounts)
    summary = merge_inventory()
    scanned >> summary
    accounts >> summary  # merge reads resolve_accounts' plan (expected accounts) itself
    notify_cmdb(summary) >> check_coverage(summary)
    # Asks a person only when the mass-removal guard holds this run's snapshot; skipped otherwise.
    summary >> RemovalApprovalOperator(task_id=APPROVAL_TASK_ID, response_timeout=APPROVAL_TIMEOUT)


cmdb_ec2_inventory()
