"""A local sandbox for the demo, tests and benchmarks: moto's server on loopback and a throwaway Airflow."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DAG_ID = "cmdb_ec2_inventory"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's server on 127.0.0.1 (a free port), yielding its URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    # moto keeps its state per process, not per server: start every sandbox from an empty world.
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=30).close()  # noqa: S310
    try:
        yield url
    finally:
        server.stop()


# The shipped retry delay (120 s, doubling) would make every retry of a test wait minutes. Only runs whose
# subject is a retry pass this, saying so where they do.
FAST_RETRIES = {"CMDB_EC2_INVENTORY_RETRY_DELAY_SECONDS": "1"}


def airflow_env(
    home: Path,
    connection: Mapping[str, Any],
    variable: Mapping[str, Any],
    knobs: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """
    Environment of a throwaway Airflow (SQLite, this repo's DAG) pointed at the emulator, with the DAG's
    shipped defaults: its deployment knobs (``CMDB_EC2_INVENTORY_*``) are left unset unless ``knobs``
    sets them (a caller that changes a default says why).
    """
    endpoint_url = connection["extra"]["endpoint_url"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(connection),
            "AIRFLOW_VAR_CMDB_EC2_INVENTORY": json.dumps(variable),
            # Safety net: anything that would resolve a default AWS endpoint lands on the emulator.
            "AWS_ENDPOINT_URL": endpoint_url,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_DEFAULT_REGION": "us-east-1",
            "PYTHONPATH": str(ROOT),
            "NO_PROXY": "*",
        }
    )
    env.update(knobs or {})
    return env


def migrate(env: Mapping[str, str]) -> None:
    """Create the throwaway metadata database."""
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=dict(env),
        check=True,
        capture_output=True,
        text=True,
    )


def dags_test(
    env: Mapping[str, str],
    logical_date: str,
    conf: Mapping[str, Any] | None = None,
    dag_id: str = DAG_ID,
) -> subprocess.CompletedProcess[str]:
    """One full DAG run with Airflow's test runner (``airflow dags test``); non-zero exit when it fails."""
    cmd = [sys.executable, "-m", "airflow", "dags", "test", dag_id, logical_date]
    if conf:
        cmd += ["--conf", json.dumps(conf)]
    # The command is this interpreter running Airflow's CLI with fixed arguments.
    return subprocess.run(cmd, env=dict(env), capture_output=True, text=True, check=False, timeout=900)
