"""
Scale past the defaults: more accounts than Airflow's ``max_map_length`` (by configuration, refused clearly
without it), and the concurrency knobs of the scans (per run, across runs through a pool) read at parse time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devtools import emulator, sandbox

pytestmark = pytest.mark.xdist_group("bench-scale")

ACCOUNTS = 1100  # more than Airflow's default max_map_length (1,024)


@pytest.fixture(scope="module")
def migrated_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A throwaway Airflow home (SQLite, migrated) for Airflow's in-process test runner."""
    home = tmp_path_factory.mktemp("airflow-mapping")
    env = sandbox.airflow_env(home, emulator.demo_connection("http://127.0.0.1:9"), {})
    sandbox.migrate(env)
    return env


def mapping_run(env: dict[str, str], **extra: str) -> tuple[dict[str, Any], str]:
    """``python -m bench.mapping ACCOUNTS``: the DAG over synthetic accounts, scans expanded, not run."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.mapping", str(ACCOUNTS)],
        env={**env, **extra},
        cwd=sandbox.ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stdout + done.stderr


def test_more_accounts_than_max_map_length_expand_when_configured(migrated_env: dict[str, str]) -> None:
    result, _ = mapping_run(migrated_env, AIRFLOW__CORE__MAX_MAP_LENGTH="2048")
    assert result["states"]["resolve_accounts=success"] == 1
    assert result["scan_instances"] == ACCOUNTS
    assert result["states"]["scan_account=success"] == ACCOUNTS
    assert result["map_indexes"] == [0, ACCOUNTS - 1]


def test_without_the_setting_resolve_fails_at_once_naming_it(migrated_env: dict[str, str]) -> None:
    result, log = mapping_run(migrated_env)
    assert result["states"]["resolve_accounts=failed"] == 1
    assert result["scan_instances"] == 1  # not expanded: the unmapped placeholder only
    assert "scan_account=upstream_failed" in result["states"]
    assert f"{ACCOUNTS} accounts to scan" in log
    assert f"set AIRFLOW__CORE__MAX_MAP_LENGTH to at least {ACCOUNTS}" in log
    assert log.count("Done. Returned value was") == 0  # refused before the list is pushed, not retried


def test_check_mappable_reads_airflows_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from include.cmdb_inventory.tasks import check_mappable

    monkeypatch.delenv("AIRFLOW__CORE__MAX_MAP_LENGTH", raising=False)
    check_mappable(1024)
    with pytest.raises(AirflowFailException, match=r"1025 accounts to scan.*at most 1024"):
        check_mappable(1025)
    monkeypatch.setenv("AIRFLOW__CORE__MAX_MAP_LENGTH", "5000")
    check_mappable(5000)
    with pytest.raises(AirflowFailException, match="AIRFLOW__CORE__MAX_MAP_LENGTH to at least 5001"):
        check_mappable(5001)


def scan_task(env: dict[str, str]) -> dict[str, Any]:
    """The scan task's pool and per-run limit, as Airflow parses the DAG file with ``env``."""
    code = (
        "import json; from airflow.dag_processing.dagbag import DagBag; "
        f"bag = DagBag(dag_folder={str(sandbox.ROOT / 'dags')!r}); "
        "assert not bag.import_errors, bag.import_errors; "
        f"t = bag.dags[{sandbox.DAG_ID!r}].get_task('scan_account'); "
        "print(json.dumps({'pool': t.pool, 'max_active_tis_per_dagrun': t.max_active_tis_per_dagrun}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=sandbox.ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_scan_concurrency_is_bounded_per_run_and_across_runs(tmp_path: Path) -> None:
    env = sandbox.airflow_env(tmp_path, emulator.demo_connection("http://127.0.0.1:9"), {})
    assert scan_task(env) == {"pool": "default_pool", "max_active_tis_per_dagrun": 16}
    env.update(
        {"CMDB_EC2_INVENTORY_POOL": "cmdb_ec2_inventory", "CMDB_EC2_INVENTORY_MAX_ACTIVE_ACCOUNTS": "4"}
    )
    assert scan_task(env) == {"pool": "cmdb_ec2_inventory", "max_active_tis_per_dagrun": 4}
