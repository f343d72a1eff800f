"""
Mapping past Airflow's ``max_map_length`` (default 1,024): one DAG run with Airflow's in-process test
runner over a synthetic account list, with the scans expanded but not executed
(``dag.test(mark_success_pattern=...)``), so what is measured is the mechanics: ``resolve_accounts``' list
is accepted (or refused, clearly) and ``scan_account`` expands into one task instance per account.

    python -m bench.mapping ACCOUNTS   (an Airflow home with a migrated database; prints JSON)

The Variable comes from the environment; ``resolve_accounts`` runs for real (configuration, the
``max_map_length`` check, the XCom push through Airflow's execution API) except its S3 reads.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from typing import Any

from devtools import sandbox

NOT_EXECUTED = "scan_account|merge_inventory|notify_cmdb|check_coverage|approve_removals"


def synthetic_accounts(count: int) -> list[str]:
    """``count`` distinct 12-digit account ids."""
    return [f"{300_000_000_000 + index:012d}" for index in range(count)]


def variable(count: int) -> dict[str, Any]:
    """The ``cmdb_ec2_inventory`` Variable of a synthetic organisation of ``count`` accounts."""
    return {"accounts": synthetic_accounts(count), "bucket": "example-corp-cmdb", "regions": ["us-east-1"]}


def _resolve_without_s3(settings: Any, *_: Any, **__: Any) -> dict[str, Any]:
    """``inventory.resolve_accounts`` minus its S3 reads (bucket check, an existing snapshot)."""
    accounts = [a.to_dict() for a in settings.accounts]
    return {
        "accounts": accounts,
        "expected": accounts,
        "expected_accounts": None,
        "not_scanned": [],
        "accounts_source": "accounts",
        "skip_reason": None,
    }


def run() -> dict[str, Any]:
    """One DAG run over the Variable's accounts; the task instances it made."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    from include.cmdb_inventory import inventory, tasks

    inventory.resolve_accounts = _resolve_without_s3  # type: ignore[assignment]
    tasks.store_for = lambda settings: None  # type: ignore[assignment,return-value]
    dag = DagBag(dag_folder=str(sandbox.ROOT / "dags")).get_dag(sandbox.DAG_ID)
    started = time.perf_counter()
    dag_run = dag.test(logical_date=None, mark_success_pattern=NOT_EXECUTED)
    seconds = time.perf_counter() - started
    with create_session() as session:
        rows = (
            session.query(TaskInstance.task_id, TaskInstance.map_index, TaskInstance.state)
            .filter(TaskInstance.dag_id == sandbox.DAG_ID, TaskInstance.run_id == dag_run.run_id)
            .all()
        )
    scans = sorted(r.map_index for r in rows if r.task_id == "scan_account")
    return {
        "seconds": seconds,
        "max_map_length": os.environ.get("AIRFLOW__CORE__MAX_MAP_LENGTH", "1024 (default)"),
        "states": dict(Counter(f"{r.task_id}={r.state}" for r in rows)),
        "scan_instances": len(scans),
        "map_indexes": [scans[0], scans[-1]] if scans else [],
    }


if __name__ == "__main__":
    # Airflow 3.3.2's dag.test() cannot finish a run of a DAG with a Deadline Alert (README, "The deadline
    # alert"); what is measured here is the mapping, so this run has none.
    os.environ["CMDB_EC2_INVENTORY_DEADLINE_MINUTES"] = "0"
    if len(sys.argv) > 1:
        os.environ["AIRFLOW_VAR_CMDB_EC2_INVENTORY"] = json.dumps(variable(int(sys.argv[1])))
    print(json.dumps(run()))
