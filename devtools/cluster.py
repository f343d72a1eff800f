"""
A real Airflow on loopback for end-to-end tests: on a private PostgreSQL 15 (:mod:`devtools.servers`),
``airflow db migrate``, the scheduler (LocalExecutor), the DAG processor and the API server, each a
subprocess in its own session, torn down reliably; plus a small client of the REST API (``/api/v2``) as
the UI uses it.

    with Postgres() as pg:
        port = free_port()
        with AirflowCluster(workdir, cluster_env(base_env, home, pg.url, port), port) as airflow:
            airflow.wait_migrated(airflow.migrate())
            api = airflow.start(DAG_ID).api
            api.patch(f"/dags/{DAG_ID}", {"is_paused": False})
            run = api.trigger(DAG_ID, logical_date="2026-09-01T02:00:00Z")
            api.wait_run(DAG_ID, run["dag_run_id"])

Nothing listens on anything but 127.0.0.1, on free ports; the scheduler's log server (8793) is not
started (``--skip-serve-logs``): the API server reads task logs from the shared log folder.

On the CeleryExecutor (``cluster_env(..., executor="CeleryExecutor", broker_url=redis.url)``) a private
:class:`Redis` is the broker, the metadata database the result backend, and each
:meth:`AirflowCluster.start_worker` is one ``airflow celery worker`` with its own ``--celery-hostname`` and
task-instance hostname, as on its own machine. Faults: :meth:`AirflowCluster.kill` (SIGKILL to every
process of a component, as when its machine dies), :meth:`AirflowCluster.restart`, :meth:`Postgres.restart`.

The second half, :class:`Org`, is the tests' side of the emulated organisation: the world they seed,
and S3 and the CMDB team's queue read back through the raw moto URL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from devtools import emulator, sandbox
from devtools.gateway import AwsGateway
from devtools.sandbox import free_port
from devtools.servers import ClusterError, Managed, Postgres, Redis, spawn, tail, wait_for
from devtools.world import BUCKET, PAYER, Server, World, session_in

log = logging.getLogger(__name__)

# A Celery worker's task instances report this as their hostname (see worker_hostname).
WORKER_HOSTNAME_VAR = "CMDB_TEST_WORKER_HOSTNAME"
FINISHED_RUN_STATES = frozenset({"success", "failed"})
FINISHED_TI_STATES = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})


def worker_hostname() -> str:
    """
    ``[core] hostname_callable`` of a test's Celery worker: the name of the machine it stands for. Two
    workers on one machine would otherwise report the same hostname on their task instances.
    """
    return os.environ.get(WORKER_HOSTNAME_VAR) or socket.getfqdn()


# --------------------------------------------------------------------------------------------------
# The REST API
# --------------------------------------------------------------------------------------------------


class ApiError(RuntimeError):
    """An HTTP error from the API, with its status and body."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        self.status = status
        self.body = body
        super().__init__(f"{method} {path}: HTTP {status}: {body[:2000]}")


@dataclass
class AirflowApi:
    """A small client of Airflow's public REST API (``/api/v2``) with a bearer token from ``/auth/token``."""

    base_url: str
    token: str = ""
    timeout: float = 60.0

    def login(self) -> None:
        """``GET /auth/token`` (SimpleAuthManager with ``simple_auth_manager_all_admins``)."""
        self.token = self._send("GET", f"{self.base_url}/auth/token", None, auth=False)["access_token"]

    def _send(self, method: str, url: str, body: Any, *, auth: bool = True) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - loopback
                payload = response.read()
        except urllib.error.HTTPError as err:
            raise ApiError(method, url, err.code, err.read().decode(errors="replace")) from None
        return json.loads(payload) if payload else None

    def request(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        """One call to ``/api/v2{path}``; query parameters from keyword arguments."""
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None}, doseq=True)
        url = f"{self.base_url}/api/v2{path}" + (f"?{query}" if query else "")
        return self._send(method, url, body)

    def get(self, path: str, **params: Any) -> Any:
        """GET."""
        return self.request("GET", path, **params)

    def ui_get(self, path: str, **params: Any) -> Any:
        """GET on the UI's own API (``/ui``), e.g. a run's deadlines."""
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None}, doseq=True)
        return self._send("GET", f"{self.base_url}/ui{path}" + (f"?{query}" if query else ""), None)

    def post(self, path: str, body: Any) -> Any:
        """POST with a JSON body."""
        return self.request("POST", path, body)

    def patch(self, path: str, body: Any, **params: Any) -> Any:
        """PATCH with a JSON body."""
        return self.request("PATCH", path, body, **params)

    # ---------------------------------------------------------------- what the UI does

    def trigger(
        self, dag_id: str, *, logical_date: str | None, conf: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The UI's "Trigger" button: a manual run (``logical_date=None``: a run without one)."""
        return dict(self.post(f"/dags/{dag_id}/dagRuns", {"logical_date": logical_date, "conf": conf or {}}))

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        """One DAG run."""
        return dict(self.get(f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"))

    def runs(self, dag_id: str, **params: Any) -> list[dict[str, Any]]:
        """DAG runs (``run_type=...``, ``order_by=...``)."""
        return list(self.get(f"/dags/{dag_id}/dagRuns", limit=100, **params)["dag_runs"])

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every task instance of a run, mapped ones included (page by page: at most 100 come at a time)."""
        path = f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances"
        found: list[dict[str, Any]] = []
        while True:
            page = self.get(path, limit=100, offset=len(found))
            found.extend(page["task_instances"])
            if not page["task_instances"] or len(found) >= page["total_entries"]:
                return found

    def task_instances_by_label(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        """A run's task instances by task id, mapped ones as ``task[<first word of their label>]``."""
        found: dict[str, dict[str, Any]] = {}
        for ti in self.task_instances(dag_id, run_id):
            label = ti["task_id"]
            if ti["map_index"] >= 0:
                label = f"{label}[{str(ti['rendered_map_index']).split(' ')[0]}]"
            found[label] = ti
        return found

    def wait_run(
        self, dag_id: str, run_id: str, timeout: float = 300, states: frozenset[str] = FINISHED_RUN_STATES
    ) -> dict[str, Any]:
        """Poll a run until it reaches one of ``states``; return it."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(dag_id, run_id)
            if run["state"] in states:
                return run
            if time.monotonic() > deadline:
                tis = {
                    (t["task_id"], t["map_index"]): t["state"] for t in self.task_instances(dag_id, run_id)
                }
                raise ClusterError(f"run {run_id} still {run['state']} after {timeout:.0f} s: {tis}")
            time.sleep(1.0)

    def clear(self, dag_id: str, run_id: str, task_ids: list[Any], *, downstream: bool = True) -> Any:
        """The UI's "Clear" on task instances (``[task_id, map_index]`` for one mapped instance)."""
        return self.post(
            f"/dags/{dag_id}/clearTaskInstances",
            {
                "dry_run": False,
                "dag_run_id": run_id,
                "task_ids": task_ids,
                "include_downstream": downstream,
                "include_upstream": False,
                "only_failed": False,
                "reset_dag_runs": True,
            },
        )

    def backfill(
        self,
        dag_id: str,
        from_date: str,
        to_date: str,
        *,
        reprocess_behavior: str = "none",
        conf: Mapping[str, Any] | None = None,
        max_active_runs: int = 2,
    ) -> dict[str, Any]:
        """The UI's "Backfill" form: one run per scheduled date in ``[from_date, to_date]``."""
        body = {
            "dag_id": dag_id,
            "from_date": from_date,
            "to_date": to_date,
            "reprocess_behavior": reprocess_behavior,
            "max_active_runs": max_active_runs,
            "dag_run_conf": dict(conf or {}),
        }
        return dict(self.post("/backfills", body))

    def wait_backfill(self, backfill_id: int, timeout: float = 120) -> dict[str, Any]:
        """Poll a backfill until the scheduler marks it completed (a later loop than its last run's end)."""
        deadline = time.monotonic() + timeout
        while True:
            backfill = dict(self.get(f"/backfills/{backfill_id}"))
            if backfill["completed_at"]:
                return backfill
            if time.monotonic() > deadline:
                raise ClusterError(f"backfill {backfill_id} not completed after {timeout:.0f} s: {backfill}")
            time.sleep(1.0)

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1) -> str:
        """The text of one task try's log, as the UI's log view reads it."""
        path = (
            f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/{task_id}"
            f"/logs/{try_number}"
        )
        content = self.get(path, map_index=map_index, full_content="true")["content"]
        lines = []
        for item in content:
            lines.append(item.get("event", "") if isinstance(item, dict) else str(item))
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Airflow
# --------------------------------------------------------------------------------------------------


def cluster_env(
    base: Mapping[str, str],
    home: Path,
    sql_alchemy_conn: str,
    api_port: int,
    *,
    executor: str = "LocalExecutor",
    broker_url: str | None = None,
) -> dict[str, str]:
    """
    ``base`` (e.g. :func:`sandbox.airflow_env`, with the connection and Variable as ``AIRFLOW_CONN_*`` and
    ``AIRFLOW_VAR_*``, as docker-compose.yaml passes them) made into a cluster on PostgreSQL: LocalExecutor,
    or ``executor="CeleryExecutor"`` with ``broker_url`` (a :class:`Redis`) and the metadata database as
    the result backend, as docker-compose.yaml sets them.
    """
    from cryptography.fernet import Fernet

    if executor not in ("LocalExecutor", "CeleryExecutor"):
        raise ValueError(f"executor must be LocalExecutor or CeleryExecutor, not {executor!r}")
    if (executor == "CeleryExecutor") != (broker_url is not None):
        raise ValueError("broker_url is required with the CeleryExecutor, and only with it")
    env = dict(base)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_alchemy_conn,
            # Airflow also builds an async engine at start-up, for PostgreSQL through asyncpg, which this
            # project does not install. Nothing these tests call uses it (only the dag-run "wait"
            # endpoint, multi-team lookups and the task state store do): point it at an unused SQLite file.
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": f"sqlite+aiosqlite:///{home}/async-engine-unused.db",
            "AIRFLOW__CORE__EXECUTOR": executor,
            "AIRFLOW__CORE__PARALLELISM": "6",
            "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
            # Only what the test asks for runs: no runs from the cron schedule.
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            # Fast loops for a test (defaults are for production).
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "2",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_SEC": "2",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "60",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL": "600",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        }
    )
    if broker_url is not None:
        env.update(
            {
                "AIRFLOW__CELERY__BROKER_URL": broker_url,
                # With the driver named: SQLAlchemy 2.1's default for postgresql:// is psycopg 3, which
                # this project does not install (the metadata database's URL names psycopg2 too).
                "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{sql_alchemy_conn}",
            }
        )
    return env


@dataclass
class AirflowCluster:
    """``airflow db migrate``, then scheduler, dag-processor and api-server on loopback."""

    workdir: Path
    env: dict[str, str]
    api_port: int
    processes: list[Managed] = field(default_factory=list)
    api: AirflowApi = field(init=False)
    timings: dict[str, float] = field(default_factory=dict)

    commands: dict[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict)
    """Each component's command line and environment, to restart it as it was."""

    def __post_init__(self) -> None:
        self.api = AirflowApi(f"http://127.0.0.1:{self.api_port}")

    def _airflow(self, name: str, *args: str, env: Mapping[str, str] | None = None) -> Managed:
        cmd, full_env = [sys.executable, "-m", "airflow", *args], {**self.env, **(env or {})}
        self.commands[name] = (cmd, full_env)
        return spawn(name, cmd, self.workdir / f"{name}.log", full_env)

    def migrate(self) -> Managed:
        """Start ``airflow db migrate`` (wait with :meth:`wait_migrated`)."""
        return self._airflow("db-migrate", "db", "migrate")

    def wait_migrated(self, migrate: Managed, timeout: float = 300) -> None:
        """Wait for the migration started by :meth:`migrate`."""
        started = time.monotonic()
        try:
            code = migrate.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            migrate.stop()
            raise ClusterError(f"airflow db migrate timed out:\n{tail(migrate.log_path)}") from None
        if code:
            raise ClusterError(f"airflow db migrate failed ({code}):\n{tail(migrate.log_path)}")
        self.timings["migrate_wait"] = time.monotonic() - started

    def start(self, dag_id: str, timeout: float = 240) -> Self:
        """Start the three components; wait for the API, a healthy scheduler and the parsed DAG."""
        started = time.monotonic()
        self.processes.append(self._airflow("dag-processor", "dag-processor"))
        self.processes.append(self._airflow("scheduler", "scheduler", "--skip-serve-logs"))
        self.processes.append(
            self._airflow(
                "api-server",
                "api-server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.api_port),
                "--workers",
                "1",
            )
        )
        wait_for("the API server", self._api_up, timeout, self.processes)
        self.api.login()
        wait_for("a healthy scheduler", self._scheduler_healthy, timeout, self.processes)
        wait_for(f"the DAG {dag_id} to be parsed", lambda: self._dag_parsed(dag_id), timeout, self.processes)
        self.timings["start"] = time.monotonic() - started
        return self

    def start_worker(self, name: str, concurrency: int = 2) -> Managed:
        """
        ``airflow celery worker`` as if on a machine of its own called ``name``: Celery node ``name@<host>``,
        task instances reporting ``name`` as their hostname, no log server (the API server reads task logs
        from the shared log folder). Wait for it with :meth:`wait_worker`.
        """
        hostname = self.worker_node(name)
        managed = self._airflow(
            name,
            "celery",
            "worker",
            "--celery-hostname",
            hostname,
            "--concurrency",
            str(concurrency),
            "--skip-serve-logs",
            env={
                WORKER_HOSTNAME_VAR: name,
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{__name__}.worker_hostname",
            },
        )
        self.processes.append(managed)
        return managed

    @staticmethod
    def worker_node(name: str) -> str:
        """The Celery node name of worker ``name``."""
        return f"{name}@{socket.gethostname()}"

    def wait_worker(self, name: str, timeout: float = 180) -> None:
        """Wait until worker ``name`` consumes from the broker (Celery logs ``<node> ready.``)."""
        managed = self.component(name)
        ready = f"{self.worker_node(name)} ready."

        def logged() -> bool:
            return ready in managed.output()

        wait_for(f"worker {name}", logged, timeout, [managed])

    def component(self, name: str) -> Managed:
        """The running component ``name`` (``scheduler``, ``dag-processor``, ``api-server`` or a worker)."""
        for managed in self.processes:
            if managed.name == name:
                return managed
        raise ClusterError(f"no component {name!r} running: {[m.name for m in self.processes]}")

    def kill(self, name: str) -> Managed:
        """SIGKILL every process of component ``name`` at once (as when its machine dies); forget it."""
        managed = self.component(name)
        managed.kill()
        self.processes.remove(managed)
        log.warning("killed %s (pid %s)", name, managed.process.pid)
        return managed

    def restart(self, name: str) -> Managed:
        """Start component ``name`` again with its command and environment (killing what is left of it)."""
        for managed in [m for m in self.processes if m.name == name]:
            managed.kill()
            self.processes.remove(managed)
        cmd, env = self.commands[name]
        managed = spawn(name, cmd, self.workdir / f"{name}.log", env)
        self.processes.append(managed)
        return managed

    def exited(self) -> list[str]:
        """Components that have exited by themselves."""
        return [m.name for m in self.processes if not m.alive()]

    def _api_up(self) -> bool:
        with urllib.request.urlopen(f"{self.api.base_url}/api/v2/monitor/health", timeout=5) as response:  # noqa: S310
            return response.status == 200

    def _scheduler_healthy(self) -> bool:
        health = self.api.get("/monitor/health")
        return health["scheduler"]["status"] == "healthy"

    def _dag_parsed(self, dag_id: str) -> bool:
        errors = self.api.get("/importErrors")
        if errors.get("total_entries"):
            raise ClusterError(f"import errors: {errors['import_errors']}")
        self.api.get(f"/dags/{dag_id}")
        return True

    def check_alive(self) -> None:
        """Raise when a component has died."""
        for managed in self.processes:
            if not managed.alive():
                raise ClusterError(f"{managed.name} died:\n{tail(managed.log_path)}")

    def logs(self, lines: int = 60) -> str:
        """The tails of every component's log (for failure messages)."""
        return "\n".join(f"--- {m.name}\n{tail(m.log_path, lines)}" for m in self.processes)

    def explain(self, dag_id: str, run_id: str, lines: int = 30) -> str:
        """
        Why a run is where it is (for failure messages): its state, every task instance's state, try and
        host, the log tails of the failed ones' last tries, then the components' log tails.
        """
        parts = []
        try:
            parts.append(f"run {run_id}: {self.api.run(dag_id, run_id)['state']}")
            tis = self.api.task_instances(dag_id, run_id)
            for ti in tis:
                parts.append(
                    f"  {ti['task_id']}[{ti['map_index']}] {ti['state']} try {ti['try_number']} "
                    f"on {ti['hostname']}"
                )
            for ti in tis:
                if ti["state"] in ("failed", "up_for_retry", "upstream_failed") and ti["try_number"]:
                    text = self.api.task_log(dag_id, run_id, ti["task_id"], ti["try_number"], ti["map_index"])
                    tail = "\n".join(text.splitlines()[-lines:])
                    parts.append(
                        f"--- log of {ti['task_id']}[{ti['map_index']}] try {ti['try_number']}\n{tail}"
                    )
        except Exception as err:  # the API may be what is broken
            parts.append(f"(the API could not say: {err!r})")
        parts.append(self.logs(lines))
        return "\n".join(parts)

    def stop(self) -> None:
        """Stop every component at once (each whole session), then wait for each, last started first."""
        for managed in self.processes:
            managed.signal_stop()
        while self.processes:
            self.processes.pop().stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------------
# The emulated organisation, as the tests read back what the DAG wrote
# --------------------------------------------------------------------------------------------------

ACCOUNT_A, ACCOUNT_B, ACCOUNT_C = "111111111111", "222222222222", "333333333333"
REGIONS = ["eu-west-1", "us-east-1"]
PREFIX = "cmdb/ec2-inventory"


def small_world() -> World:
    """Three accounts x two regions: 7 listed instances (and one terminated, never listed)."""
    return World(
        accounts={ACCOUNT_A: "Payer", ACCOUNT_B: "Development", ACCOUNT_C: "Production"},
        servers={
            ACCOUNT_A: [
                Server("us-east-1", "billing"),
                Server("eu-west-1", "ad-controller", state="stopped"),
            ],
            ACCOUNT_B: [
                Server("us-east-1", "dev-web", count=2),
                Server("eu-west-1", "dev-eu"),
                Server("us-east-1", "dev-old", state="terminated"),
            ],
            ACCOUNT_C: [
                Server("eu-west-1", "prod-db", instance_type="r5.large"),
                Server("us-east-1", "=prod-web", tags=(("Env", "prod"),)),
            ],
        },
    )


def discovery_role(account: str) -> str:
    """The role ARN the DAG assumes in ``account``."""
    return f"arn:aws:iam::{account}:role/CMDBDiscovery"


class Org:
    """
    The seeded organisation: seed once, reseed when moto was reset behind our back (moto keeps one state
    per process, and other tests' servers reset it), and read S3 and the CMDB team's queue through the
    raw moto URL, so that the gateway's call log only holds the DAG's calls.
    """

    def __init__(self, gateway_url: str, moto_url: str, world: World | None = None) -> None:
        self.gateway_url = gateway_url
        self.moto_url = moto_url
        self.world = world if world is not None else small_world()
        self.seeded: dict[str, Any] = {}
        self.inbox: list[str] = []
        self._clients: dict[str, Any] = {}

    def ensure(self) -> dict[str, Any]:
        """
        Our world, seeded (through the gateway, so it learns which access key is which account): kept
        when it is still there, else moto is reset and the world seeded again.
        """
        if self.seeded and self._world_present():
            return self.seeded
        self.reset()
        self.seeded = emulator.seed(self.gateway_url, self.world)
        self.client("sqs").create_queue(QueueName=self._marker)
        return self.seeded

    def reset(self) -> None:
        """Wipe moto's state (other tests of this process then start from an empty world)."""
        request = urllib.request.Request(f"{self.moto_url}/moto-api/reset", method="POST")  # noqa: S310
        urllib.request.urlopen(request, timeout=30).close()  # noqa: S310 - the loopback moto server
        self._clients.clear()
        self.inbox.clear()
        self.seeded = {}

    @property
    def _marker(self) -> str:
        return f"cmdb-tests-world-{id(self)}"

    def _world_present(self) -> bool:
        """Whether moto still holds the world we seeded (another test's reset and seed removes the marker)."""
        try:
            self.client("sqs").get_queue_url(QueueName=self._marker)
        except Exception:
            return False
        return True

    def client(self, service: str) -> Any:
        """A client acting in the payer account, on the raw moto server."""
        if service not in self._clients:
            session = session_in(self.moto_url, PAYER)
            self._clients[service] = session.client(service, endpoint_url=self.moto_url)
        return self._clients[service]

    @property
    def connection(self) -> dict[str, Any]:
        """The hub connection (on the gateway)."""
        return dict(self.seeded["connection"])

    @property
    def variable(self) -> dict[str, Any]:
        """The DAG's Variable for this world (two regions)."""
        return {**self.seeded["variable"], "regions": REGIONS}

    @property
    def bucket(self) -> str:
        """The output bucket."""
        return BUCKET

    def expected(self, *, without: frozenset[tuple[str, str]] = frozenset()) -> set[tuple[str, str, str]]:
        """(Account, Region, InstanceId) of every listed instance, except in (account, region) ``without``."""
        return {
            (account, i["region"], i["id"])
            for account, instances in self.seeded["instances"].items()
            for i in instances
            if i["state"] != "terminated" and (account, i["region"]) not in without
        }

    def key(self, ds: str, name: str) -> str:
        """Key of a snapshot file of one date (``ds="latest"``: of ``latest/``)."""
        return f"{PREFIX}/ds={ds}/{name}" if ds != "latest" else f"{PREFIX}/latest/{name}"

    def get(self, key: str) -> bytes | None:
        """An object's bytes, or None."""
        from botocore.exceptions import ClientError

        try:
            return bytes(self.client("s3").get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except ClientError as err:
            if err.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise

    def head(self, key: str) -> dict[str, Any]:
        """An object's HeadObject answer."""
        return dict(self.client("s3").head_object(Bucket=self.bucket, Key=key))

    def json(self, key: str) -> dict[str, Any] | None:
        """A JSON object, or None."""
        body = self.get(key)
        return None if body is None else dict(json.loads(body))

    def put(self, key: str, body: bytes, **extra: Any) -> None:
        """Write an object (a test's precondition)."""
        self.client("s3").put_object(Bucket=self.bucket, Key=key, Body=body, **extra)

    def rows(self, key: str) -> list[dict[str, str]]:
        """The rows of a CSV object."""
        import csv
        import io

        body = self.get(key)
        if body is None:
            raise KeyError(f"no object {key}")
        return list(csv.DictReader(io.StringIO(body.decode("utf-8"), newline="")))

    def keys(self, prefix: str = "") -> list[str]:
        """Every key under ``prefix``."""
        paginator = self.client("s3").get_paginator("list_objects_v2")
        return [
            obj["Key"]
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix)
            for obj in page.get("Contents", [])
        ]

    def empty_bucket(self) -> None:
        """Delete every object."""
        for key in self.keys():
            self.client("s3").delete_object(Bucket=self.bucket, Key=key)

    def messages(self, wait: float = 0.0) -> list[str]:
        """Every message the CMDB team's queue received so far (drained into ``inbox``)."""
        sqs, url = self.client("sqs"), self.seeded["queue_url"]
        deadline = time.monotonic() + wait
        while True:
            got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
                "Messages", []
            )
            for message in got:
                self.inbox.append(message["Body"])
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            if not got and time.monotonic() >= deadline:
                return list(self.inbox)

    def clear_inbox(self) -> None:
        """Forget (and drain) every message so far."""
        self.messages()
        self.inbox.clear()


def without_collected_at(rows: Iterable[Mapping[str, str]]) -> list[dict[str, str]]:
    """CSV rows without the collection time (the only column that differs between two clean runs)."""
    return [{k: v for k, v in row.items() if k != "CollectedAt"} for row in rows]


# --------------------------------------------------------------------------------------------------
# One module's cluster, end to end
# --------------------------------------------------------------------------------------------------


@dataclass
class Harness:
    """A test module's cluster: its API, the gateway, the organisation, the components and PostgreSQL."""

    api: AirflowApi
    gateway: AwsGateway
    org: Org
    cluster: AirflowCluster
    pg: Postgres
    base_env: dict[str, str]
    """The DAG's environment (``sandbox.airflow_env``) before the cluster's settings and the caller's."""
    timings: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def running_cluster(
    workdir: Path,
    *,
    gateway_seed: int,
    world: World | None = None,
    knobs: Mapping[str, str] | None = None,
    settings: Mapping[str, str] | None = None,
    variable_in_database: bool = False,
    celery_workers: Sequence[str] = (),
    worker_concurrency: int = 2,
) -> Iterator[Harness]:
    """
    PostgreSQL (and Redis as the broker when there are ``celery_workers``), the gateway and ``world``
    (default :func:`small_world`), ``airflow db migrate`` while the world is seeded, the scheduler, DAG
    processor and API server (the Celery workers booting meanwhile), then the DAG unpaused as with the
    UI's toggle; the components' logs stay in ``workdir``. ``knobs`` are the DAG's deployment knobs and
    ``settings`` more environment over :func:`cluster_env`'s: a caller that changes a default says why
    where it passes it. With ``variable_in_database`` the Variable is set through the REST API, as an
    operator sets it in the UI, instead of as ``AIRFLOW_VAR_*``. Leaves moto empty for the next module.
    """
    started = time.monotonic()
    home = workdir / "home"
    home.mkdir()
    with contextlib.ExitStack() as stack:
        gateway = stack.enter_context(AwsGateway(seed=gateway_seed))
        pg = stack.enter_context(Postgres())
        redis = stack.enter_context(Redis()) if celery_workers else None
        org = Org(gateway.url, gateway.moto_url, world)
        stack.callback(org.reset)  # after the components stopped
        variable = {**emulator.demo_variable(org.world), "regions": REGIONS}
        base = sandbox.airflow_env(home, emulator.demo_connection(gateway.url), variable, knobs)
        env = dict(base)
        if variable_in_database:
            del env["AIRFLOW_VAR_CMDB_EC2_INVENTORY"]
        port = free_port()
        if redis is None:
            env = cluster_env(env, home, pg.url, port)
        else:
            env = cluster_env(env, home, pg.url, port, executor="CeleryExecutor", broker_url=redis.url)
        env.update(settings or {})
        cluster = stack.enter_context(AirflowCluster(workdir, env, port))
        migrate = cluster.migrate()
        org.ensure()  # seeds while the database migrates
        cluster.wait_migrated(migrate)
        for name in celery_workers:  # they boot while the other components do
            cluster.start_worker(name, concurrency=worker_concurrency)
        cluster.start(sandbox.DAG_ID)
        for name in celery_workers:
            cluster.wait_worker(name)
        if variable_in_database:
            cluster.api.post("/variables", {"key": "cmdb_ec2_inventory", "value": json.dumps(variable)})
        cluster.api.patch(f"/dags/{sandbox.DAG_ID}", {"is_paused": False})  # the UI's toggle
        timings = {"cluster_ready": time.monotonic() - started, **cluster.timings}
        log.warning("Airflow cluster ready: %s", timings)
        yield Harness(cluster.api, gateway, org, cluster, pg, base, timings)
        log.warning("Airflow cluster: module took %.0f s", time.monotonic() - started)
