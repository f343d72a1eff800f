"""
A real Airflow on loopback for end-to-end tests: a private PostgreSQL 15, then ``airflow db migrate``,
the scheduler (LocalExecutor), the DAG processor and the API server, each a subprocess in its own
process group, torn down reliably; plus a small client of the REST API (``/api/v2``) as the UI uses it.

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

The second half, :class:`Org`, is the tests' side of the emulated organisation: the world they seed,
and S3 and the CMDB team's queue read back through the raw moto URL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from include.cmdb_inventory.sandbox import free_port

log = logging.getLogger(__name__)

PG_BIN = Path(os.environ.get("CMDB_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
FINISHED_RUN_STATES = frozenset({"success", "failed"})
FINISHED_TI_STATES = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})


class ClusterError(RuntimeError):
    """A component did not start, or a wait timed out; the message carries the tails of the logs."""


def postgres_available() -> bool:
    """Whether the PostgreSQL server binaries are installed."""
    return (PG_BIN / "initdb").exists() and (PG_BIN / "postgres").exists()


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Managed:
    """A subprocess started in its own process group, with its output in a log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    stop_signal: int = signal.SIGTERM

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """Signal the whole process group, wait, then kill whatever is left of it."""
        pgid = self.process.pid  # start_new_session=True: the leader's pid is the group id
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, self.stop_signal)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0f s; killing its process group", self.name, timeout)
        # Children (executor workers, task processes) may outlive the leader: kill the group regardless.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


def _spawn(
    name: str,
    cmd: list[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    *,
    user: str | None = None,
    stop_signal: int = signal.SIGTERM,
) -> Managed:
    with log_path.open("ab") as out:
        # Fixed commands of this harness (the PostgreSQL binaries, this interpreter running Airflow).
        process = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            user=user,
        )
    return Managed(name, process, log_path, stop_signal)


def _wait_for(what: str, check: Callable[[], bool], timeout: float, logs: Iterable[Managed] = ()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for managed in logs:
            if not managed.alive():
                raise ClusterError(
                    f"{managed.name} exited ({managed.process.returncode}) while waiting for {what}:\n"
                    f"{_tail(managed.log_path)}"
                )
        try:
            if check():
                return
        except ClusterError:
            raise
        except Exception as err:  # not up yet
            log.debug("waiting for %s: %r", what, err)
        time.sleep(0.5)
    tails = "\n".join(f"--- {m.name}\n{_tail(m.log_path)}" for m in logs)
    raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")


# --------------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------------


class Postgres:
    """
    A throwaway PostgreSQL server: ``initdb`` into a temporary directory (trust authentication), a unix
    socket in that directory, TCP on 127.0.0.1 at a free port. Runs as ``postgres`` when we are root
    (PostgreSQL refuses to run as root).
    """

    def __init__(self, database: str = "airflow", user: str = "airflow") -> None:
        self.database = database
        self.user = user
        self.port = 0
        self.dir = Path()
        self._server: Managed | None = None
        self._os_user: str | None = None

    @property
    def url(self) -> str:
        """SQLAlchemy URL for Airflow (psycopg2)."""
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            list(args), capture_output=True, text=True, check=False, user=self._os_user, timeout=120
        )
        if result.returncode:
            raise ClusterError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")

    def start(self) -> Self:
        """initdb, start the server, create the database."""
        if not postgres_available():
            raise ClusterError(f"PostgreSQL binaries not found in {PG_BIN}")
        self.dir = Path(tempfile.mkdtemp(prefix="cmdb-pg-"))
        if os.geteuid() == 0:
            self._os_user = "postgres" if _user_exists("postgres") else "nobody"
            entry = pwd.getpwnam(self._os_user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
            self.dir.chmod(0o755)  # its logs are read by this (root) process
        data, sockets = self.dir / "data", self.dir / "sockets"
        self._run(
            str(PG_BIN / "initdb"),
            "-D",
            str(data),
            "-U",
            self.user,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        sockets.mkdir()
        if self._os_user is not None:
            entry = pwd.getpwnam(self._os_user)
            os.chown(sockets, entry.pw_uid, entry.pw_gid)
        self.port = free_port()
        self._server = _spawn(
            "postgres",
            [
                str(PG_BIN / "postgres"),
                "-D",
                str(data),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-k",
                str(sockets),
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ],
            self.dir / "postgres.log",
            user=self._os_user,
            stop_signal=signal.SIGINT,  # PostgreSQL's "fast" shutdown
        )
        _wait_for("PostgreSQL", self._ready, 60, [self._server])
        self._run(
            str(PG_BIN / "createdb"), "-h", str(sockets), "-p", str(self.port), "-U", self.user, self.database
        )
        return self

    def _ready(self) -> bool:
        result = subprocess.run(
            [str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self.dir != Path() and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


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
        """Every task instance of a run, mapped ones included."""
        path = f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances"
        return list(self.get(path, limit=1000)["task_instances"])

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


def cluster_env(base: Mapping[str, str], home: Path, sql_alchemy_conn: str, api_port: int) -> dict[str, str]:
    """
    ``base`` (e.g. :func:`sandbox.airflow_env`, with the connection and Variable as ``AIRFLOW_CONN_*`` and
    ``AIRFLOW_VAR_*``, as docker-compose.yaml passes them) made into a LocalExecutor cluster on PostgreSQL.
    """
    from cryptography.fernet import Fernet

    env = dict(base)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_alchemy_conn,
            # Airflow also builds an async engine at start-up, for PostgreSQL through asyncpg, which this
            # project does not install. Nothing these tests call uses it (only the dag-run "wait"
            # endpoint, multi-team lookups and the task state store do): point it at an unused SQLite file.
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": f"sqlite+aiosqlite:///{home}/async-engine-unused.db",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
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

    def __post_init__(self) -> None:
        self.api = AirflowApi(f"http://127.0.0.1:{self.api_port}")

    def _airflow(self, name: str, *args: str) -> Managed:
        return _spawn(name, [sys.executable, "-m", "airflow", *args], self.workdir / f"{name}.log", self.env)

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
            raise ClusterError(f"airflow db migrate timed out:\n{_tail(migrate.log_path)}") from None
        if code:
            raise ClusterError(f"airflow db migrate failed ({code}):\n{_tail(migrate.log_path)}")
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
        _wait_for("the API server", self._api_up, timeout, self.processes)
        self.api.login()
        _wait_for("a healthy scheduler", self._scheduler_healthy, timeout, self.processes)
        _wait_for(f"the DAG {dag_id} to be parsed", lambda: self._dag_parsed(dag_id), timeout, self.processes)
        self.timings["start"] = time.monotonic() - started
        return self

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
                raise ClusterError(f"{managed.name} died:\n{_tail(managed.log_path)}")

    def logs(self, lines: int = 60) -> str:
        """The tails of every component's log (for failure messages)."""
        return "\n".join(f"--- {m.name}\n{_tail(m.log_path, lines)}" for m in self.processes)

    def stop(self) -> None:
        """Stop every component (its whole process group), last started first."""
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


def small_world() -> Any:
    """Three accounts x two regions: 7 listed instances (and one terminated, never listed)."""
    from include.cmdb_inventory.emulator import Server, World

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

    def __init__(self, gateway_url: str, moto_url: str) -> None:
        self.gateway_url = gateway_url
        self.moto_url = moto_url
        self.world = small_world()
        self.seeded: dict[str, Any] = {}
        self.inbox: list[str] = []
        self._clients: dict[str, Any] = {}

    def ensure(self) -> dict[str, Any]:
        """
        Our world, seeded (through the gateway, so it learns which access key is which account): kept
        when it is still there, else moto is reset and the world seeded again.
        """
        from include.cmdb_inventory import emulator

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
            from include.cmdb_inventory import emulator

            session = emulator.session_in(self.moto_url, emulator.PAYER)
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
        from include.cmdb_inventory.emulator import BUCKET

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
        assert body is not None, f"no {key}"
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
