"""
End-to-end fixtures: a migrated throwaway Airflow database, copied for each test; a fresh moto; and, for
the modules whose ``env`` fixture is a :class:`devtools.cluster.Harness`, a gateway without fault rules.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools import sandbox
from devtools.cluster import Harness


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ``airflow db migrate`` per test process; tests get a copy."""
    home = tmp_path_factory.mktemp("airflow-template")
    env = sandbox.airflow_env(home, {"extra": {"endpoint_url": "http://127.0.0.1:9"}}, {})
    sandbox.migrate(env)
    return home / "airflow.db"


@pytest.fixture
def airflow_home(tmp_path: Path, migrated_db: Path) -> Path:
    """A fresh Airflow home with its own copy of the migrated database."""
    home = tmp_path / "airflow"
    home.mkdir()
    shutil.copy(migrated_db, home / "airflow.db")
    return home


@pytest.fixture
def fresh_moto() -> Iterator[str]:
    """A fresh moto server on 127.0.0.1 for one test (a fresh emulated organisation)."""
    with sandbox.moto_server() as url:
        yield url


@pytest.fixture
def no_gateway_rules(env: Harness) -> Iterator[None]:
    """No fault rule of another test on the module's gateway, before or after; the cluster alive after."""
    env.gateway.clear_rules()
    yield
    env.gateway.clear_rules()
    env.cluster.check_alive()
