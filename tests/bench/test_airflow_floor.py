"""
The benchmark's Airflow floor and its process meter: the no-op DAG generated from the shipped DAG has its
task graph (parsed by Airflow's DagBag, both), the generator refuses what it cannot carry over, and the
meter counts the CPU of processes that exit during a run, orphans included.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench import airflow_floor
from bench.orchestrated import ProcessMeter

pytestmark = pytest.mark.xdist_group("bench")

KNOBS = ("CMDB_EC2_INVENTORY_MAX_ACTIVE_ACCOUNTS", "CMDB_EC2_INVENTORY_POOL")


@pytest.fixture
def shipped_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The DAG's shipped knobs (parse-time environment), whatever the caller's environment set."""
    for knob in KNOBS:
        monkeypatch.delenv(knob, raising=False)


def test_the_floor_dag_has_the_shipped_dags_task_graph(tmp_path: Path, shipped_env: None) -> None:
    real = airflow_floor.load_dag()
    path = airflow_floor.write_floor_dag(tmp_path / "dags", real)
    floor = airflow_floor.load_dag(path, airflow_floor.FLOOR_DAG_ID)

    assert airflow_floor.shape(floor) == airflow_floor.shape(real)
    tasks = airflow_floor.shape(floor)["tasks"]
    # What the comparison covers, spelled out: fails here too when the shipped DAG changes shape.
    assert list(tasks) == [
        "resolve_accounts",
        "scan_account",
        "merge_inventory",
        "notify_cmdb",
        "check_coverage",
        "approve_removals",
    ]
    assert tasks["approve_removals"]["upstream"] == ["merge_inventory"]
    scan = tasks["scan_account"]
    assert scan["mapped"]
    assert scan["expands"] == {"account": "resolve_accounts"}
    assert (scan["pool"], scan["max_active_tis_per_dagrun"]) == ("default_pool", 16)
    assert scan["map_index_template"] == "{{ task.op_kwargs['account']['label'] }}"
    assert tasks["merge_inventory"]["trigger_rule"] == "all_done"
    assert tasks["merge_inventory"]["upstream"] == ["resolve_accounts", "scan_account"]
    assert tasks["merge_inventory"]["max_active_tis_per_dag"] == 1
    assert tasks["notify_cmdb"]["args"] == tasks["check_coverage"]["args"] == ["merge_inventory"]
    assert tasks["check_coverage"]["retries"] == 0
    # No-op: the floor imports Airflow's SDK only, never our code or an AWS library.
    source = path.read_text()
    assert "include" not in source
    assert "boto" not in source
    assert floor.dag_id == "cmdb_ec2_inventory_floor"


def test_the_floor_follows_the_dags_parse_time_knobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CMDB_EC2_INVENTORY_MAX_ACTIVE_ACCOUNTS", "4")
    monkeypatch.setenv("CMDB_EC2_INVENTORY_POOL", "cmdb_ec2_inventory")
    path = airflow_floor.write_floor_dag(tmp_path / "dags")
    monkeypatch.delenv(
        "CMDB_EC2_INVENTORY_MAX_ACTIVE_ACCOUNTS"
    )  # the floor holds the values it was made with
    scan = airflow_floor.shape(airflow_floor.load_dag(path, airflow_floor.FLOOR_DAG_ID))["tasks"][
        "scan_account"
    ]
    assert (scan["pool"], scan["max_active_tis_per_dagrun"]) == ("cmdb_ec2_inventory", 4)


def test_the_generator_refuses_what_it_cannot_carry_and_never_writes_into_dags(tmp_path: Path) -> None:
    dag_file = tmp_path / "partial_dag.py"
    dag_file.write_text(
        textwrap.dedent(
            """
            from datetime import datetime
            from airflow.sdk import dag, task

            @dag(dag_id="partial_dag", schedule=None, start_date=datetime(2026, 1, 1))
            def partial_dag():
                @task
                def items():
                    return [1, 2]

                @task
                def work(x, y):
                    return x + y

                work.partial(y=1).expand(x=items())

            partial_dag()
            """
        )
    )
    dag = airflow_floor.load_dag(dag_file, "partial_dag")
    with pytest.raises(airflow_floor.FloorError, match=r"task work: partial\(\) arguments"):
        airflow_floor.floor_source(dag)
    with pytest.raises(airflow_floor.FloorError, match="dags/ folder"):
        airflow_floor.write_floor_dag(airflow_floor.REAL_DAG_FILE.parent)


def _burner(tmp: Path) -> str:
    """A leader that burns CPU itself, in a child it waits for, and in an orphan whose parent exits first."""
    return textwrap.dedent(
        f"""
        import os, time
        from pathlib import Path

        def burn(seconds):
            end = time.process_time() + seconds
            while time.process_time() < end:
                pass

        tmp = Path({str(tmp)!r})
        while not (tmp / "go").exists():
            time.sleep(0.02)
        burn(0.2)
        child = os.fork()
        if child == 0:
            burn(0.3)
            os._exit(0)
        os.waitpid(child, 0)
        middle = os.fork()
        if middle == 0:
            if os.fork() == 0:  # the orphan: its parent exits at once, nobody in the tree waits for it
                burn(1.2)
                (tmp / "orphan-done").write_text(str(os.getpid()))
                os._exit(0)
            os._exit(0)
        os.waitpid(middle, 0)
        (tmp / "leader-done").write_text("1")
        time.sleep(60)
        """
    )


def test_the_meter_counts_processes_that_exit_during_the_run(tmp_path: Path) -> None:
    leader = subprocess.Popen(
        [sys.executable, "-c", _burner(tmp_path)], start_new_session=True, stdin=subprocess.DEVNULL
    )
    try:
        time.sleep(0.3)  # the interpreter's own start-up is before the baseline
        meter = ProcessMeter({"dag-processor": leader.pid}, interval=0.1).start()
        (tmp_path / "go").write_text("1")
        deadline = time.monotonic() + 60
        while not all((tmp_path / f).exists() for f in ("leader-done", "orphan-done")):
            assert time.monotonic() < deadline, "the burner did not finish"
            time.sleep(0.05)
        orphan = Path(f"/proc/{(tmp_path / 'orphan-done').read_text()}")
        while orphan.exists() and time.monotonic() < deadline:  # reaped by init, not by us
            time.sleep(0.05)
        measured = meter.stop()
    finally:
        os.killpg(leader.pid, signal.SIGKILL)
        leader.wait(10)
    burned = 0.2 + 0.3 + 1.2
    assert burned - 0.25 <= measured["cpu"] <= burned + 0.5, measured
    if not orphan.exists():  # gone before the last reading: only the samples can have counted it
        assert 1.2 - 0.25 <= measured["cpu_of_orphans"] <= 1.2 + 0.05, measured
    assert measured["cpu_by_kind"]["dag-processor"] == pytest.approx(measured["cpu"])
    assert measured["processes_seen"]["dag-processor"] >= 3
    assert measured["rss_peak_mb_per_process"]["dag-processor"] > 1
