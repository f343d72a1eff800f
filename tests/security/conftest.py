"""
Fixtures of the security suite: one enforced world per test process and the three DAG runs against it,
each made once and shared by every module that inspects it (all in the ``security-e2e`` xdist group).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from devtools import sandbox
from tests.security import world
from tests.security.world import Org, Run

SUCCESS_DS = "2026-11-20"
DENIED_DS = "2026-11-21"
CHAINED_DS = "2026-11-22"
SOURCE_IDENTITY = "cmdb-ec2-inventory"
SESSION_TAGS = {"app": "cmdb", "cost-centre": "platform/inventory"}


@pytest.fixture(scope="session")
def org(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Org]:
    """The enforced world; the Airflow database is migrated while moto is being seeded."""
    template = tmp_path_factory.mktemp("security-airflow-template")
    env = sandbox.airflow_env(template, {"extra": {"endpoint_url": "http://127.0.0.1:9"}}, {})
    migrate = subprocess.Popen(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        with world.enforcing_moto() as moto_url, world.RecordingGateway(upstream=moto_url) as gateway:
            seeded = world.seed(moto_url, gateway, template / "airflow.db")
            _, err = migrate.communicate(timeout=600)
            assert migrate.returncode == 0, err[-3000:]
            yield seeded
    finally:
        if migrate.poll() is None:
            migrate.kill()
            migrate.wait()


@pytest.fixture(scope="session")
def success_run(org: Org, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Three accounts (hostile names and tags), every S3 control on, session tags and source identity."""
    variable = org.variable(world.GOOD_ACCOUNTS, source_identity=SOURCE_IDENTITY, session_tags=SESSION_TAGS)
    return world.run_dag(org, tmp_path_factory.mktemp("success-run"), variable, SUCCESS_DS)


@pytest.fixture(scope="session")
def denied_run(org: Org, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The crippled accounts, one whose role cannot be assumed; botocore logging at DEBUG."""
    variable = org.variable(world.DENIED_ACCOUNTS)
    return world.run_dag(org, tmp_path_factory.mktemp("denied-run"), variable, DENIED_DS, debug=True)


@pytest.fixture(scope="session")
def chained_run(org: Org, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """DurationSeconds of two hours while the hub identity is an assumed role (role chaining)."""
    variable = org.variable({world.PAYER: "Payer"}, session_duration_seconds=7200)
    return world.run_dag(org, tmp_path_factory.mktemp("chained-run"), variable, CHAINED_DS)
