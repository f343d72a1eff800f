"""Onboarding check before the nightly EC2 inventory: can every expected account be scanned? A report only."""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import Param, dag, get_current_context, task

from include.cmdb_inventory.alerts import TaskFailureNotifier

if TYPE_CHECKING:
    from include.cmdb_inventory.notify import Receipt
    from include.cmdb_inventory.preflight import PreflightSummary

# The inventory's deployment knobs (environment only, read when the DAG is parsed): the checks of one run
# share the scans' bound and pool, as they call the same accounts.
MAX_ACTIVE_ACCOUNTS = int(os.environ.get("CMDB_EC2_INVENTORY_MAX_ACTIVE_ACCOUNTS", "16"))
SCAN_POOL = os.environ.get("CMDB_EC2_INVENTORY_POOL", "default_pool")
ACCOUNTS_HELP = "Check only these of the expected accounts (12-digit ids as strings); empty: every one."


@dag(
    dag_id=Path(__file__).stem,
    schedule=None,  # triggered by hand, before relying on a new account or OU
    start_date=datetime(2026, 1, 1),
    catchup=False,
    doc_md=__doc__,
    tags=["cmdb", "aws", "ec2", "preflight"],
    default_args={
        "owner": "cmdb-platform",
        "retries": 2,
        "retry_delay": timedelta(minutes=1),
        "execution_timeout": timedelta(minutes=15),  # every task: one call or two per account
        "on_failure_callback": TaskFailureNotifier(),
    },
    params={"accounts": Param(None, type=["null", "array"], description=ACCOUNTS_HELP)},
)
def cmdb_ec2_inventory_preflight() -> None:
    """Wiring only: the steps live in ``include.cmdb_inventory.preflight`` (``tasks`` is their adapter)."""

    @task(execution_timeout=timedelta(minutes=5))
    def resolve_accounts() -> list[dict[str, str]]:
        from include.cmdb_inventory import tasks

        return tasks.resolve(get_current_context(), for_preflight=True)

    @task(
        map_index_template="{{ task.op_kwargs['account']['label'] }}",
        multiple_outputs=False,
        max_active_tis_per_dagrun=MAX_ACTIVE_ACCOUNTS,
        pool=SCAN_POOL,
    )
    def check_account(account: dict[str, str]) -> dict[str, Any]:
        from include.cmdb_inventory import tasks

        return tasks.check_account(get_current_context(), account)

    @task(trigger_rule="all_done", multiple_outputs=False)
    def write_report() -> PreflightSummary:
        from include.cmdb_inventory import tasks

        return tasks.write_report(get_current_context())

    # ``summary: Any``: the wiring passes an XComArg (see the inventory DAG); the task gets the value.
    @task(multiple_outputs=False)
    def notify_cmdb(summary: Any) -> Receipt:
        from include.cmdb_inventory import tasks

        return tasks.notify_readiness(get_current_context(), summary)

    @task(retries=0)
    def check_ready(summary: Any) -> None:
        from include.cmdb_inventory import tasks

        tasks.check_ready(summary)

    accounts = resolve_accounts()
    checked = check_account.expand(account=accounts)
    summary = write_report()
    checked >> summary
    accounts >> summary  # the report reads resolve_accounts' plan (expected accounts) itself
    notify_cmdb(summary) >> check_ready(summary)


cmdb_ec2_inventory_preflight()
