"""DAG integrity: both DAGs parse, touch nothing at parse time, and have the contract's shape."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAG_FILE = ROOT / "dags" / "cmdb_ec2_inventory.py"
PREFLIGHT_FILE = ROOT / "dags" / "cmdb_ec2_inventory_preflight.py"
DAG_FILES = [pytest.param(DAG_FILE, id="inventory"), pytest.param(PREFLIGHT_FILE, id="preflight")]


@pytest.fixture(scope="module")
def bag() -> Any:
    """The dags folder, loaded through Airflow's own DagBag."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    return bag


@pytest.fixture(scope="module")
def dag(bag: Any) -> Any:
    """The inventory DAG."""
    return bag.dags["cmdb_ec2_inventory"]


@pytest.fixture(scope="module")
def preflight_dag(bag: Any) -> Any:
    """The onboarding check's DAG."""
    return bag.dags["cmdb_ec2_inventory_preflight"]


def test_dagbag_has_only_our_dag_without_errors(dag: Any) -> None:
    assert dag is not None
    assert dag.dag_id == "cmdb_ec2_inventory"


def test_the_dags_folder_holds_the_inventory_and_its_preflight(bag: Any) -> None:
    assert set(bag.dags) == {"cmdb_ec2_inventory", "cmdb_ec2_inventory_preflight"}


@pytest.mark.parametrize("dag_file", DAG_FILES)
def test_parsing_touches_no_connection_variable_or_network(
    monkeypatch: pytest.MonkeyPatch, dag_file: Path
) -> None:
    """Import the DAG file with every way out blocked: connections, Variables and sockets."""
    import runpy

    from airflow.sdk import BaseHook, Variable

    touched: list[str] = []

    def refuse(what: str) -> Any:
        def _refuse(*args: Any, **kwargs: Any) -> Any:
            touched.append(what)
            raise AssertionError(f"{what} at parse time")

        return _refuse

    monkeypatch.setattr(BaseHook, "get_connection", classmethod(refuse("connection")))
    monkeypatch.setattr(Variable, "get", staticmethod(refuse("variable")))
    monkeypatch.setattr(socket.socket, "connect", refuse("network"))
    monkeypatch.setattr(socket, "create_connection", refuse("network"))
    namespace = runpy.run_path(str(dag_file))
    assert touched == []
    assert dag_file.stem in namespace


@pytest.mark.parametrize("dag_file", DAG_FILES)
def test_dag_file_imports_no_heavy_modules(dag_file: Path) -> None:
    """No boto3, botocore, pandas or provider hooks at module level (they load inside tasks)."""
    code = (
        "import json, runpy, sys; runpy.run_path(sys.argv[1]); "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'boto3', 'botocore', 'pandas', 'moto'} or m.startswith('airflow.providers.amazon.aws.hooks'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(dag_file)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"PYTHONPATH": f"{ROOT}:{ROOT / 'plugins'}", "PATH": "/usr/bin:/bin"},
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_schedule_and_defaults(dag: Any) -> None:
    timetable = dag.timetable
    assert timetable.expression == "0 2 * * *"
    assert "UTC" in str(timetable.timezone)
    assert dag.catchup is False
    assert dag.start_date.year == 2026
    assert {"cmdb", "aws", "ec2"} <= set(dag.tags)
    assert dag.doc_md
    assert dag.default_args["owner"] == "cmdb-platform"
    assert dag.default_args["retries"] >= 2
    assert dag.default_args["on_failure_callback"]
    assert set(dag.params.keys()) >= {"accounts", "overwrite", "mode"}
    mode = dag.params.get_param("mode")
    assert (mode.value, mode.schema["enum"]) == ("inventory", ["inventory", "preflight"])
    assert "deprecated" in mode.description.lower()
    assert "cmdb_ec2_inventory_preflight" in mode.description


def test_preflight_is_manual_with_the_same_governance(preflight_dag: Any) -> None:
    """By hand only (no schedule, no catch-up, no deadline), owned and retried like the inventory."""
    assert preflight_dag.schedule is None
    assert preflight_dag.timetable.can_be_scheduled is False
    assert preflight_dag.catchup is False
    assert preflight_dag.deadline is None
    assert {"cmdb", "aws", "ec2", "preflight"} <= set(preflight_dag.tags)
    assert preflight_dag.doc_md
    assert preflight_dag.default_args["owner"] == "cmdb-platform"
    assert preflight_dag.default_args["retries"] >= 2
    assert preflight_dag.default_args["on_failure_callback"]
    assert set(preflight_dag.params.keys()) == {"accounts"}
    assert preflight_dag.params["accounts"] is None


def test_preflight_task_graph(preflight_dag: Any) -> None:
    tasks = {t.task_id: t for t in preflight_dag.tasks}
    assert set(tasks) == {"resolve_accounts", "check_account", "write_report", "notify_cmdb", "check_ready"}
    assert tasks["resolve_accounts"].downstream_task_ids == {"check_account", "write_report"}
    assert tasks["check_account"].downstream_task_ids == {"write_report"}
    assert tasks["write_report"].downstream_task_ids == {"notify_cmdb", "check_ready"}
    assert tasks["notify_cmdb"].downstream_task_ids == {"check_ready"}
    assert tasks["check_ready"].downstream_task_ids == set()
    assert tasks["write_report"].trigger_rule == "all_done"  # a killed check is a not-ready account
    assert "account" in tasks["check_account"].map_index_template
    for task in tasks.values():
        assert task.execution_timeout is not None, task.task_id
        assert task.outlets == [], task.task_id  # a preflight writes no snapshot: no Asset event
    assert tasks["check_ready"].retries == 0


def test_task_graph_is_the_contract(dag: Any) -> None:
    tasks = {t.task_id: t for t in dag.tasks}
    assert set(tasks) == {
        "resolve_accounts",
        "scan_account",
        "merge_inventory",
        "notify_cmdb",
        "check_coverage",
        "approve_removals",
    }
    assert tasks["resolve_accounts"].downstream_task_ids >= {"scan_account", "merge_inventory"}
    assert tasks["scan_account"].downstream_task_ids == {"merge_inventory"}
    assert tasks["merge_inventory"].downstream_task_ids == {
        "notify_cmdb",
        "check_coverage",
        "approve_removals",
    }
    assert tasks["approve_removals"].downstream_task_ids == set()
    # The mass-removal guard's approval: Airflow's human-in-the-loop; unanswered, it rejects (the default).
    from airflow.providers.standard.operators.hitl import HITLOperator

    approval = tasks["approve_removals"]
    assert isinstance(approval, HITLOperator)
    assert approval.options == ["Approve", "Reject"]
    assert approval.defaults == ["Reject"]
    assert approval.response_timeout is not None
    assert approval.response_timeout.total_seconds() == 20 * 3600
    assert tasks["notify_cmdb"].downstream_task_ids == {"check_coverage"}
    assert tasks["check_coverage"].downstream_task_ids == set()
    assert tasks["merge_inventory"].trigger_rule == "all_done"
    assert "account" in tasks["scan_account"].map_index_template
    for task in tasks.values():
        assert task.execution_timeout is not None, task.task_id
    assert tasks["check_coverage"].retries == 0
    # The snapshot Asset: an alias outlet on merge_inventory (an event only when a snapshot is written).
    from include.cmdb_inventory.assets import SNAPSHOT_ALIAS

    # ... and on approve_removals, which sends it for a held snapshot once a person approves it.
    publishing = {"merge_inventory", "approve_removals"}
    assert tasks["merge_inventory"].outlets == [SNAPSHOT_ALIAS]
    assert tasks["approve_removals"].outlets == [SNAPSHOT_ALIAS]
    assert [t.outlets for t in tasks.values() if t.task_id not in publishing] == [[]] * (len(tasks) - 2)


def test_deadline_alert_is_on_by_default_and_never_queued_at(dag: Any) -> None:
    """
    Shipped default: a deadline 240 minutes after the logical date (06:00 for the 02:00 run). Never
    ``DAGRUN_QUEUED_AT``: Airflow 3.3.2's Clear of task instances crashes (HTTP 500) recalculating those.
    """
    from airflow.sdk import DeadlineReference

    (alert,) = dag.deadline if isinstance(dag.deadline, list) else [dag.deadline]
    assert alert.reference == DeadlineReference.DAGRUN_LOGICAL_DATE
    assert alert.interval.total_seconds() == 240 * 60
    assert alert.callback.path == "include.cmdb_inventory.alerts.deadline_missed"
    assert alert.callback.kwargs == {"minutes": 240.0, "topic_arn": None}


@pytest.mark.parametrize(
    ("argv", "dags_test"),
    [
        (["/venv/bin/airflow", "dags", "test", "cmdb_ec2_inventory", "2026-11-20"], True),
        (["/venv/lib/airflow/__main__.py", "dags", "test", "cmdb_ec2_inventory"], True),
        (["/venv/bin/airflow", "-v", "dags", "test"], True),
        (["/venv/bin/airflow", "dag-processor"], False),
        (["/venv/bin/airflow", "dags", "list"], False),
        (["/venv/bin/airflow", "scheduler"], False),
        (["/venv/bin/airflow", "tasks", "test", "cmdb_ec2_inventory", "x"], False),
    ],
)
def test_the_alert_is_left_out_only_under_airflow_dags_test(argv: list[str], dags_test: bool) -> None:
    from include.cmdb_inventory.invocation import running_dags_test

    assert running_dags_test(argv) is dags_test


def test_airflow_dags_test_parses_the_dag_without_its_deadline() -> None:
    """What `airflow dags test` sees (its own argv); a scheduler's parse keeps the alert (test above)."""
    code = (
        "import sys; folder = sys.argv[1]; sys.argv = ['airflow', 'dags', 'test', 'cmdb_ec2_inventory']; "
        "from airflow.dag_processing.dagbag import DagBag; "
        "print(DagBag(dag_folder=folder).dags['cmdb_ec2_inventory'].deadline)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "dags")],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"PYTHONPATH": f"{ROOT}:{ROOT / 'plugins'}", "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip().splitlines()[-1] == "None"
