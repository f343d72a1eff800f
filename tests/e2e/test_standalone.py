"""
The issue's own reproduction, as a new user tries the DAG: ``airflow standalone`` (SQLite, LocalExecutor,
scheduler + DAG processor + API server + triggerer in one command) on loopback, driven through ``/api/v2``.

A nightly-like run with one account's role denied goes red with the gap named; clearing that account's
mapped task instance with its downstream tasks (the UI's Clear) while the run's shipped 240-minute
deadline is still pending succeeds, rescans only that account and turns the run green with every instance
listed. No ``CMDB_EC2_INVENTORY_*`` knob is changed. The PostgreSQL variant, with the alert itself, is
``test_scheduler.py``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from devtools import emulator, sandbox
from devtools.cluster import ACCOUNT_A, ACCOUNT_B, ACCOUNT_C, REGIONS, AirflowApi, Org, discovery_role
from devtools.gateway import AwsGateway

pytestmark = [pytest.mark.e2e, pytest.mark.scheduler, pytest.mark.xdist_group("standalone")]

DAG_ID = sandbox.DAG_ID


def _standalone_env(base: dict[str, str], home: Path, port: int) -> dict[str, str]:
    """``base`` plus what a loopback-only, test-driven standalone needs (none of it the DAG's knobs)."""
    from cryptography.fernet import Fernet

    env = dict(base)
    env.update(
        {
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            # Loopback only, on free ports: the scheduler's and the triggerer's log servers.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(sandbox.free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(sandbox.free_port()),
            # Only what the test triggers runs; fast loops for a test.
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "60",
            # standalone starts its components as `airflow ...` from PATH: this venv's.
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), base.get("PATH", os.defpath)]),
        }
    )
    return env


def _wait(what: str, check: Any, timeout: float, process: subprocess.Popen[bytes], log: Path) -> None:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if process.poll() is not None or "Exception in thread" in log.read_text(errors="replace"):
            raise AssertionError(
                f"airflow standalone exited while waiting for {what}:\n{log.read_text()[-4000:]}"
            )
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AirflowApi, AwsGateway, Org]]:
    home = tmp_path_factory.mktemp("standalone")
    with AwsGateway(seed=12) as gateway:
        org = Org(gateway.url, gateway.moto_url)
        org.ensure()
        variable = {**emulator.demo_variable(org.world), "regions": REGIONS}
        base = sandbox.airflow_env(home, emulator.demo_connection(gateway.url), variable)
        assert [k for k in base if k.startswith("CMDB_EC2_INVENTORY_")] == []  # the shipped defaults
        port = sandbox.free_port()
        log = home / "standalone.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "airflow", "standalone"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_standalone_env(base, home, port),
                start_new_session=True,
            )
        api = AirflowApi(f"http://127.0.0.1:{port}")
        try:
            _wait("the API server", lambda: api.get("/monitor/health"), 300, process, log)
            api.login()
            _wait("the DAG", lambda: api.get(f"/dags/{DAG_ID}"), 300, process, log)
            api.patch(f"/dags/{DAG_ID}", {"is_paused": False})
            yield api, gateway, org
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=20)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            org.reset()


def test_clear_of_a_mapped_task_with_the_deadline_pending_on_sqlite(
    standalone: tuple[AirflowApi, AwsGateway, Org],
) -> None:
    api, gateway, org = standalone
    # Due four minutes from now under the shipped 240 minutes: pending through the whole test.
    logical = datetime.now(tz=UTC).replace(microsecond=0) - timedelta(minutes=236)
    ds = logical.strftime("%Y-%m-%d")
    broken = gateway.deny_assume_role(discovery_role(ACCOUNT_B))
    run_id = api.trigger(DAG_ID, logical_date=logical.isoformat())["dag_run_id"]
    assert api.wait_run(DAG_ID, run_id, timeout=300)["state"] == "failed"
    manifest = org.json(org.key(ds, "manifest.json"))
    assert manifest is not None
    assert [a["status"] for a in manifest["accounts"] if a["id"] == ACCOUNT_B] == ["ROLE_NOT_ASSUMABLE"]
    path = f"/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id, safe='')}/deadlines"
    ((deadline,),) = [api.ui_get(path)["deadlines"]]
    assert deadline["missed"] is False

    broken.remove()
    gateway.reset_calls()
    tis = api.task_instances_by_label(DAG_ID, run_id)
    api.clear(DAG_ID, run_id, [["scan_account", tis[f"scan_account[{ACCOUNT_B}]"]["map_index"]]])
    assert api.wait_run(DAG_ID, run_id, timeout=300)["state"] == "success"

    assert gateway.count(action="AssumeRole", role_arn=discovery_role(ACCOUNT_B)) == 1
    for account in (ACCOUNT_A, ACCOUNT_C):
        assert gateway.count(action="AssumeRole", role_arn=discovery_role(account)) == 0
    rows = org.rows(org.key(ds, "ec2_inventory.csv"))
    assert {(r["Account"], r["Region"], r["InstanceId"]) for r in rows} == org.expected()
    assert len(rows) == len(org.expected())
