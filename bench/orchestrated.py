"""
DAG runs under a real scheduler: PostgreSQL, then Airflow's scheduler (LocalExecutor), DAG processor
and API server as separate processes (``devtools/cluster.py``), a run triggered through the REST API like
the UI does. Two DAGs, in fresh clusters of the same settings: the shipped ``cmdb_ec2_inventory`` against
the latency gateway (its CSV read back and checked), and its Airflow floor (``bench.airflow_floor``: the
same task graph with no-op tasks), so that Airflow's CPU per mapped task of the real DAG can be set against
Airflow's own.

Settings are Airflow's defaults and the DAG's shipped knobs; the cluster harness's fast test loops (idle
sleep, heartbeats, parse intervals, parallelism) are put back to Airflow's defaults here, as a deployment
runs them. What stays different is listed in each run's ``settings``; the harness's own choices stay (no
runs from the cron schedule, the simple auth manager with every user an admin: its middleware signs a
token per request, which measured within the noise of a user with a password, on the floor).

How the CPU of every Airflow process is counted (:class:`ProcessMeter`): each component is started by
the harness as the leader of a session of its own; its processes are those of its session and their
descendants (PostgreSQL's backends start sessions of their own), read from ``/proc/PID/stat`` at the
trigger, at the end of the run and once a second in between: each one's own user + system seconds and
those of the children it has already waited for (``cutime``/``cstime``). A task process that exits is
waited for by its LocalExecutor worker (the Task SDK supervisor), a PostgreSQL backend by the
postmaster: their whole CPU is then in their parent's counters, so the difference of the two readings is
exact for everything that exited in between, however short-lived. A process whose parent exits first is
waited for by init, not by us: it is counted from its last reading (``cpu_of_orphans``; none in these
runs so far). The samples also give each process's peak resident memory (``VmHWM``) and, per kind of
process, the largest sum of resident sets (RSS) and of proportional sets (PSS, every fifth sample:
forked workers share most pages, which RSS counts once per process).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bench.scenarios import DS, Measured, others, s3_client
from bench.servers import Emulator, machine_cpu
from bench.world import Seeded, Verdict, verify_csv
from devtools import emulator, sandbox

DAG_ID = sandbox.DAG_ID
RUN_TIMEOUT = 900
AIRFLOW_MAX_MAP_LENGTH = 1024  # Airflow's default [core] max_map_length
AIRFLOW_PARALLELISM = 32  # Airflow's default [core] parallelism (LocalExecutor: as many worker processes)
POLL_SECONDS = 3.0

# What devtools.cluster.cluster_env sets for fast test loops: removed here, so Airflow's defaults apply
# (idle sleep 1 s, heartbeats 5 s, each DAG file re-parsed every 30 s by 2 parsing processes, 32 slots).
TEST_LOOPS = (
    "AIRFLOW__CORE__PARALLELISM",
    "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC",
    "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_SEC",
    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL",
    "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL",
    "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES",
)
KINDS = ("scheduler", "executor workers", "task processes", "dag-processor", "api-server", "postgres")


# --------------------------------------------------------------------------------------------------
# CPU and memory of every process of the cluster
# --------------------------------------------------------------------------------------------------


def _kind(component: str, depth: int | None, cmdline: str) -> str:
    """The kind of a process from its component and its depth below the leader (None: re-parented)."""
    if component != "scheduler":
        return component
    if depth == 0:
        return "scheduler"
    if depth == 1 and "LocalExecutor" in cmdline:
        return "executor workers"
    return "task processes"


def _reaped_kind(kind: str) -> str:
    """The kind of the children a process of ``kind`` waits for (their CPU lands in its counters)."""
    return {"scheduler": "executor workers", "executor workers": "task processes"}.get(kind, kind)


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as file:
            return file.read()
    except OSError:
        return ""


def _field_kb(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name):
            return float(line.split()[1])
    return 0.0


@dataclass(frozen=True)
class _Stat:
    """The fields of ``/proc/PID/stat`` the meter uses (CPU in seconds, memory in MB)."""

    pid: int
    ppid: int
    session: int
    start: int  # clock ticks after boot: with the pid, the process's identity
    own: float  # utime + stime
    reaped: float  # cutime + cstime: the children it has waited for
    rss_mb: float


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_MB = (os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096) / 2**20


def _stat(pid: int) -> _Stat | None:
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return None
    fields = text.rpartition(")")[2].split()  # after the command name, which may hold spaces
    # fields[0] is the state (field 3 of proc(5)), so field n of proc(5) is fields[n - 3]
    return _Stat(
        pid=pid,
        ppid=int(fields[1]),
        session=int(fields[3]),
        start=int(fields[19]),
        own=(int(fields[11]) + int(fields[12])) / _TICK,
        reaped=(int(fields[13]) + int(fields[14])) / _TICK,
        rss_mb=int(fields[21]) * _PAGE_MB,
    )


@dataclass
class _Seen:
    """One process as last read."""

    kind: str
    ppid: int
    start: int
    own: float = 0.0
    reaped: float = 0.0
    at_start: tuple[float, float] | None = None  # (own, reaped) at the baseline, when it was there
    hwm_mb: float = 0.0
    orphaned: bool = False


@dataclass
class ProcessMeter:
    """
    CPU seconds and memory of every process of ``components`` (name -> leader pid, each the leader of a
    session of its own: its processes are those of its session, wherever they were re-parented) between
    :meth:`start` and :meth:`stop`.
    """

    components: Mapping[str, int]
    interval: float = 1.0
    seen: dict[int, _Seen] = field(default_factory=dict)
    rss_peak_mb: dict[str, float] = field(default_factory=dict)
    pss_peak_mb: dict[str, float] = field(default_factory=dict)
    count_peak: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _alive: dict[int, int] = field(default_factory=dict)  # pid -> start of the last reading's processes

    def _members(self) -> dict[int, _Stat]:
        """
        Every process (zombies too: their counters still count) of the components' sessions, and every
        descendant of one (PostgreSQL's backends start sessions of their own).
        """
        leaders = set(self.components.values())
        everything: dict[int, _Stat] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                stat = _stat(int(entry))
                if stat is not None:
                    everything[stat.pid] = stat
        children: dict[int, list[int]] = {}
        for stat in everything.values():
            children.setdefault(stat.ppid, []).append(stat.pid)
        found = {pid: stat for pid, stat in everything.items() if stat.session in leaders or pid in leaders}
        todo = list(found)
        while todo:
            for child in children.get(todo.pop(), ()):
                if child not in found:
                    found[child] = everything[child]
                    todo.append(child)
        return found

    def _classify(self, stat: _Stat, members: Mapping[int, _Stat]) -> tuple[str, bool]:
        """(kind, re-parented) of a process seen for the first time."""
        names = {pid: name for name, pid in self.components.items()}
        depth, pid = 0, stat.pid
        while pid not in names:
            parent = members.get(members[pid].ppid) if pid in members else None
            if parent is None:  # its parent is gone: nobody of ours will wait for it
                return _kind(names.get(stat.session, "?"), None, ""), True
            pid, depth = parent.pid, depth + 1
        cmdline = _read(f"/proc/{stat.pid}/cmdline").replace("\0", " ") if depth == 1 else ""
        return _kind(names[pid], depth, cmdline), False

    def _sample(self, *, start: bool = False, pss: bool = False) -> None:
        members = self._members()
        rss: dict[str, float] = {}
        pss_sum: dict[str, float] = {}
        counts: dict[str, int] = {}
        with self._lock:
            for pid, stat in members.items():
                seen = self.seen.get(pid)
                if seen is None or seen.start != stat.start:
                    kind, orphaned = self._classify(stat, members)
                    seen = self.seen[pid] = _Seen(kind, stat.ppid, stat.start, orphaned=orphaned)
                seen.own, seen.reaped = stat.own, stat.reaped
                if start:
                    seen.at_start = (seen.own, seen.reaped)
                if pid not in self.components.values() and (
                    stat.ppid != seen.ppid or stat.ppid not in members
                ):
                    seen.orphaned = True
                status = _read(f"/proc/{pid}/status")
                seen.hwm_mb = max(seen.hwm_mb, _field_kb(status, "VmHWM:") / 1024.0, stat.rss_mb)
                rss[seen.kind] = rss.get(seen.kind, 0.0) + stat.rss_mb
                counts[seen.kind] = counts.get(seen.kind, 0) + 1
                if pss:
                    pss_mb = _field_kb(_read(f"/proc/{pid}/smaps_rollup"), "Pss:") / 1024.0
                    pss_sum[seen.kind] = pss_sum.get(seen.kind, 0.0) + pss_mb
            for kind, value in rss.items():
                self.rss_peak_mb[kind] = max(self.rss_peak_mb.get(kind, 0.0), value)
                self.count_peak[kind] = max(self.count_peak.get(kind, 0), counts[kind])
            for kind, value in pss_sum.items():
                self.pss_peak_mb[kind] = max(self.pss_peak_mb.get(kind, 0.0), value)
            self.samples += 1
            self._alive = {pid: stat.start for pid, stat in members.items()}

    def _loop(self) -> None:
        tick = 0
        while not self._stop.wait(self.interval):
            tick += 1
            self._sample(pss=tick % 5 == 0)

    def start(self) -> ProcessMeter:
        """Read every process now (the baseline); sample from now on."""
        self._sample(start=True, pss=True)
        self._thread = threading.Thread(target=self._loop, name="process-meter", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        """Read every process again; CPU seconds per kind since :meth:`start`, and the memory peaks."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample(pss=True)
        cpu = dict.fromkeys(KINDS, 0.0)
        lost = 0.0
        with self._lock:
            for pid, seen in self.seen.items():
                alive = self._alive.get(pid) == seen.start
                reaped_kind = _reaped_kind(seen.kind)
                if seen.at_start is not None:
                    # Its counters at the baseline are not the run's; if it has exited since, what it used
                    # in total is now in its parent's counters (a process of ours alive at the end).
                    cpu[seen.kind] = cpu.get(seen.kind, 0.0) - seen.at_start[0]
                    cpu[reaped_kind] = cpu.get(reaped_kind, 0.0) - seen.at_start[1]
                if alive:
                    cpu[seen.kind] = cpu.get(seen.kind, 0.0) + seen.own
                    cpu[reaped_kind] = cpu.get(reaped_kind, 0.0) + seen.reaped
                elif seen.orphaned:  # exited with nobody of ours to wait for it: its last reading counts
                    lost += seen.own + seen.reaped - sum(seen.at_start or (0.0, 0.0))
                    cpu[seen.kind] = cpu.get(seen.kind, 0.0) + seen.own + seen.reaped
            hwm: dict[str, float] = {}
            for seen in self.seen.values():
                hwm[seen.kind] = max(hwm.get(seen.kind, 0.0), seen.hwm_mb)
            kinds = [s.kind for s in self.seen.values()]
        return {
            "cpu_by_kind": {k: max(0.0, v) for k, v in cpu.items()},
            "cpu": max(0.0, sum(cpu.values())),
            "cpu_of_orphans": lost,
            "processes_seen": {k: kinds.count(k) for k in cpu},
            "processes_peak": dict(self.count_peak),
            "rss_peak_mb_per_process": hwm,
            "rss_peak_mb_sum": dict(self.rss_peak_mb),
            "pss_peak_mb_sum": dict(self.pss_peak_mb),
            "samples": self.samples,
            "interval_s": self.interval,
        }


# --------------------------------------------------------------------------------------------------
# One run in a fresh cluster
# --------------------------------------------------------------------------------------------------


def _ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def deployment_settings(accounts: int, concurrency: int) -> dict[str, str]:
    """What a run of ``accounts`` needs beyond Airflow's and the DAG's defaults (each says why)."""
    settings: dict[str, str] = {}
    if concurrency != 16:  # the benchmark's own concurrency (the DAG's shipped default is 16)
        settings["CMDB_EC2_INVENTORY_MAX_ACTIVE_ACCOUNTS"] = str(concurrency)
    if accounts > AIRFLOW_MAX_MAP_LENGTH:  # one mapped task instance per account: Airflow's limit is 1,024
        settings["AIRFLOW__CORE__MAX_MAP_LENGTH"] = str(accounts)
    return settings


@dataclass
class ClusterRun:
    """What one triggered run under the scheduler measured."""

    run: dict[str, Any]
    tis: list[dict[str, Any]]
    wall: float
    setup: float
    meter: dict[str, Any]
    machine: tuple[dict[str, float], dict[str, float]]
    settings: dict[str, str]
    ui: dict[str, Any] = field(default_factory=dict)


def _run_in_cluster(
    dag_id: str,
    base_env: dict[str, str],
    conf: dict[str, Any],
    settings: Mapping[str, str],
    timeout: float,
    *,
    before_trigger: Callable[[], None] = lambda: None,
    after_run: Callable[[Any, dict[str, Any]], dict[str, Any]] | None = None,
) -> ClusterRun:
    """A fresh PostgreSQL and cluster on ``base_env``; one run of ``dag_id`` triggered and measured."""
    from devtools.cluster import AirflowCluster, cluster_env
    from devtools.servers import Postgres

    with tempfile.TemporaryDirectory(prefix="cmdb-bench-airflow-") as tmp:
        work = Path(tmp)
        home = Path(base_env["AIRFLOW_HOME"])
        with Postgres() as pg:
            api_port = sandbox.free_port()
            env = cluster_env(base_env, home, pg.url, api_port)
            for key in TEST_LOOPS:
                env.pop(key, None)
            env.pop("PYTHONDONTWRITEBYTECODE", None)  # a deployed image has bytecode
            env.update(settings)
            setup0 = time.perf_counter()
            with AirflowCluster(work, env, api_port) as cluster:
                cluster.wait_migrated(cluster.migrate())
                cluster.start(dag_id)
                api = cluster.api
                api.patch(f"/dags/{dag_id}", {"is_paused": False})
                setup = time.perf_counter() - setup0
                before_trigger()
                components = {m.name: m.process.pid for m in cluster.processes}
                components["postgres"] = pg.pid  # Airflow's PostgreSQL too
                meter = ProcessMeter(components).start()
                machine0 = machine_cpu()
                t0 = time.time()
                run = api.trigger(dag_id, logical_date=f"{DS}T02:00:00Z", conf=conf)
                try:
                    run = _wait_run(api, dag_id, run["dag_run_id"], timeout)
                finally:
                    measured = meter.stop()
                    machine1 = machine_cpu()
                # Trigger to the run's end as the scheduler recorded it (the polling's period left out).
                wall = (_ts(run.get("end_date")) or time.time()) - t0
                tis = task_instances(api, dag_id, run["dag_run_id"])
                ui = after_run(api, run) if after_run is not None else {}
    return ClusterRun(run, tis, wall, setup, measured, (machine0, machine1), dict(settings), ui)


def _wait_run(api: Any, dag_id: str, run_id: str, timeout: float) -> dict[str, Any]:
    """
    Poll the run until it finishes, every ``POLL_SECONDS``: each poll is a request the API server's CPU
    (measured) answers, as a UI left open would, but fewer of them than the harness's once a second.
    """
    from devtools.cluster import FINISHED_RUN_STATES
    from devtools.servers import ClusterError

    deadline = time.monotonic() + timeout
    while True:
        run = dict(api.run(dag_id, run_id))
        if run["state"] in FINISHED_RUN_STATES:
            return run
        if time.monotonic() > deadline:
            raise ClusterError(f"run {run_id} of {dag_id} still {run['state']} after {timeout:.0f} s")
        time.sleep(POLL_SECONDS)


def _details(result: ClusterRun, task_id: str) -> dict[str, Any]:
    """Timings of the mapped tasks, and the CPU and memory of every kind of process."""
    mapped = [t for t in result.tis if t["task_id"] == task_id]
    durations = [float(t["duration"] or 0.0) for t in mapped]
    queued = [
        (_ts(t["start_date"]) or 0.0) - (_ts(t.get("queued_when")) or _ts(t["start_date"]) or 0.0)
        for t in mapped
    ]
    run = result.run
    run_start, run_end = _ts(run.get("start_date")), _ts(run.get("end_date"))
    starts = [s for s in (_ts(t["start_date"]) for t in mapped) if s]
    ends = [e for e in (_ts(t["end_date"]) for t in mapped) if e]
    n = max(1, len(mapped))
    cpu_by_kind = result.meter["cpu_by_kind"]
    return {
        "run_state": run["state"],
        "run_seconds": (run_end - run_start) if run_start and run_end else None,
        "setup_seconds": result.setup,
        "mapped_tasks": len(mapped),
        "scan_phase_seconds": (max(ends) - min(starts)) if starts and ends else None,
        "task_seconds_median": _median(durations),
        "task_seconds_sum": sum(durations),
        "queued_to_start_median": _median(queued),
        "parallelism": int(result.settings.get("AIRFLOW__CORE__PARALLELISM", AIRFLOW_PARALLELISM)),
        "cpu_per_mapped_task": result.meter["cpu"] / n,
        "scheduler_cpu_per_mapped_task": cpu_by_kind["scheduler"] / n,
        "cpu_per_mapped_task_by_kind": {k: v / n for k, v in cpu_by_kind.items()},
        "processes": {k: v for k, v in result.meter.items() if k not in ("cpu",)},
        "settings": result.settings,
        "task_states": sorted({f"{t['task_id']}={t['state']}" for t in result.tis}),
        "ui": result.ui,
    }


def run_orchestrated(
    emu: Emulator,
    seeded: Seeded,
    latency_ms: float,
    *,
    concurrency: int = 16,
    variable_extra: dict[str, Any] | None = None,
    ui: bool = False,
    screenshot: Path | None = None,
) -> Measured:
    """The shipped DAG in a fresh cluster at ``latency_ms``; its CSV read back and checked."""
    accounts = seeded.spec.accounts
    variable = seeded.variable(**(variable_extra or {}))
    settings = deployment_settings(accounts, concurrency)
    gateway: dict[str, Any] = {}

    def before() -> None:
        emu.set_latency(latency_ms)
        emu.reset_calls()
        gateway["before"] = emu.cpu()

    def after(api: Any, run: dict[str, Any]) -> dict[str, Any]:
        gateway["after"], gateway["stats"] = emu.cpu(), emu.stats()
        probed = probe_ui(api, DAG_ID, run["dag_run_id"], screenshot=screenshot) if ui else {}
        emu.set_latency(0)
        return probed

    with tempfile.TemporaryDirectory(prefix="cmdb-bench-home-") as home:
        base = sandbox.airflow_env(Path(home), emulator.demo_connection(emu.url), variable)
        base["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "INFO"
        result = _run_in_cluster(
            DAG_ID,
            base,
            {"overwrite": True},
            settings,
            RUN_TIMEOUT + 3.0 * accounts,
            before_trigger=before,
            after_run=after,
        )
    before_cpu, after_cpu = gateway["before"], gateway["after"]
    body = s3_client(emu.moto_url).get_object(Bucket=seeded.bucket, Key=emulator_csv_key())["Body"].read()
    verdict = verify_csv(body, seeded)
    if result.run["state"] != "success":
        verdict.ok = False
        verdict.problems.insert(0, f"run {result.run['state']}: {sorted({t['state'] for t in result.tis})}")
    details = _details(result, "scan_account")
    details.update(
        concurrency=concurrency,
        by_action=gateway["stats"]["by_action"],
        assume_role_by_role=gateway["stats"]["assume_role_by_role"],
        **others(before_cpu, after_cpu, result.meter["cpu"]),
    )
    return Measured(
        name="orchestrated",
        world=seeded.spec.label,
        latency_ms=latency_ms,
        wall=result.wall,
        verdict=verdict,
        cpu=result.meter["cpu"],
        moto_cpu=after_cpu["moto"] - before_cpu["moto"],
        gateway_cpu=after_cpu["gateway"] - before_cpu["gateway"],
        calls=gateway["stats"]["calls"],
        details=details,
    )


def run_airflow_floor(accounts: int, *, world: str | None = None, concurrency: int = 16) -> Measured:
    """
    The floor DAG (the shipped DAG's graph, no-op tasks) over ``accounts`` mapped tasks, in a fresh cluster
    of the same settings as :func:`run_orchestrated`. Right when the run succeeded with one mapped task
    instance per account.
    """
    from bench.airflow_floor import FLOOR_DAG_ID
    from bench.servers import bench_env

    settings = deployment_settings(accounts, concurrency)
    with tempfile.TemporaryDirectory(prefix="cmdb-bench-floor-") as tmp:
        dags, home = Path(tmp) / "dags", Path(tmp) / "home"
        home.mkdir()
        # No AWS: the connection points nowhere, and nothing reads it.
        base = sandbox.airflow_env(home, emulator.demo_connection("http://127.0.0.1:9"), {})
        base.update({"AIRFLOW__CORE__DAGS_FOLDER": str(dags), "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO"})
        base.pop("AIRFLOW_VAR_CMDB_EC2_INVENTORY", None)
        _generate_floor(dags, {**bench_env(), **base, **settings})
        result = _run_in_cluster(
            FLOOR_DAG_ID, base, {"count": accounts}, settings, RUN_TIMEOUT + 2.0 * accounts
        )
    details = _details(result, "scan_account")
    states = {f"{t['task_id']}={t['state']}" for t in result.tis}
    problems = [f"run {result.run['state']}"] if result.run["state"] != "success" else []
    if details["mapped_tasks"] != accounts:
        problems.append(f"{details['mapped_tasks']} mapped task instances, expected {accounts}")
    problems += [f"not success: {s}" for s in sorted(states) if not s.endswith("=success")]
    verdict = Verdict(not problems, details["mapped_tasks"], problems)
    no_emulator = {"moto": 0.0, "gateway": 0.0}
    before, after = ({**m, **no_emulator} for m in result.machine)
    details.update(concurrency=concurrency, **others(before, after, result.meter["cpu"]))
    return Measured(
        name="airflow_floor",
        world=world or f"{accounts} no-op",
        latency_ms=0.0,
        wall=result.wall,
        verdict=verdict,
        cpu=result.meter["cpu"],
        details=details,
    )


def _generate_floor(dags: Path, env: dict[str, str]) -> Path:
    """``python -m bench.airflow_floor DAGS`` with the cluster's knobs (the DAG reads them when parsed)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "bench.airflow_floor", str(dags)],
        env=env,
        cwd=sandbox.ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(f"bench.airflow_floor failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def task_instances(api: Any, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    """Every task instance of the run (the API client pages them)."""
    return list(api.task_instances(dag_id, run_id))


def emulator_csv_key() -> str:
    """The contract's key of the benchmark date's CSV."""
    return f"cmdb/ec2-inventory/ds={DS}/ec2_inventory.csv"


# --------------------------------------------------------------------------------------------------
# The UI at that size: what the grid and the coverage page ask the API server for
# --------------------------------------------------------------------------------------------------


def _timed_get(url: str, token: str, repeats: int) -> dict[str, Any]:
    """GET ``url`` ``repeats`` times: the status, the size, the first and the median wall time."""
    walls: list[float] = []
    size, status = 0, 0
    for _ in range(repeats):
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})  # noqa: S310
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=300) as answer:  # noqa: S310 - loopback API server
                body, status = answer.read(), answer.status
        except urllib.error.HTTPError as err:
            body, status = err.read(), err.code
        walls.append(time.perf_counter() - t0)
        size = len(body)
    return {"status": status, "bytes": size, "first_s": walls[0], "median_s": _median(walls)}


def _timed_pages(url: str, token: str, repeats: int) -> dict[str, Any]:
    """Every page of 100 of a list endpoint, ``repeats`` times: as :func:`_timed_get`, for the whole list."""
    walls: list[float] = []
    size, status, pages = 0, 0, 0
    for _ in range(repeats):
        t0, size, offset, pages = time.perf_counter(), 0, 0, 0
        while True:
            request = urllib.request.Request(  # noqa: S310 - loopback API server
                f"{url}?limit=100&offset={offset}", headers={"Authorization": f"Bearer {token}"}
            )
            with urllib.request.urlopen(request, timeout=300) as answer:  # noqa: S310
                body, status = answer.read(), answer.status
            size, pages = size + len(body), pages + 1
            page = json.loads(body)
            offset += len(page["task_instances"])
            if not page["task_instances"] or offset >= page["total_entries"]:
                break
        walls.append(time.perf_counter() - t0)
    return {"status": status, "bytes": size, "pages": pages, "first_s": walls[0], "median_s": _median(walls)}


def probe_ui(
    api: Any, dag_id: str, run_id: str, *, repeats: int = 3, screenshot: Path | None = None
) -> dict[str, Any]:
    """
    Time the API server's answers for the run's grid view (structure, runs, the task instances' summaries,
    the task instance list, the mapped task's list page) and for the coverage page (HTML and JSON; the
    first request reads the manifest from S3, later ones are cached).
    """
    base, run = api.base_url, quote(run_id, safe="")
    calls = {
        "grid structure": f"/ui/grid/structure/{dag_id}",
        "grid runs": f"/ui/grid/runs/{dag_id}?limit=10&order_by=-run_after",
        "grid task summaries": f"/ui/grid/ti_summaries/{dag_id}?run_ids={run}",
        "task instances (page of 100)": f"/api/v2/dags/{dag_id}/dagRuns/{run}/taskInstances?limit=100",
        "mapped instances (page of 50)": (
            f"/api/v2/dags/{dag_id}/dagRuns/{run}/taskInstances/scan_account/listMapped?limit=50"
        ),
        "coverage page": "/cmdb-coverage/",
        "coverage.json": "/cmdb-coverage/coverage.json",
    }
    probed = {label: _timed_get(base + path, api.token, repeats) for label, path in calls.items()}
    every = f"{base}/api/v2/dags/{dag_id}/dagRuns/{run}/taskInstances"
    probed["every task instance (pages of 100)"] = _timed_pages(every, api.token, repeats)
    if screenshot is not None:
        from bench.ui_snapshot import coverage_screenshot

        try:
            probed["screenshot"] = coverage_screenshot(base, screenshot)
        except Exception as err:  # optional: the numbers above stand without it
            probed["screenshot"] = {"error": repr(err)}
    return probed


def to_json(measured: Measured) -> str:
    """One run as JSON (for ``python -m bench.orchestrated``'s output)."""
    return json.dumps(measured.to_dict(), indent=1, default=str)


if __name__ == "__main__":  # a quick look: python -m bench.orchestrated ACCOUNTS [REGIONS [INSTANCES]]
    import sys

    from bench.world import DEFAULT_REGIONS, WorldSpec, seed

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    regions = DEFAULT_REGIONS[: int(sys.argv[2])] if len(sys.argv) > 2 else DEFAULT_REGIONS
    per = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    with Emulator() as emu:
        world = seed(emu.moto_url, WorldSpec(n, regions, per))
        shot = Path(tempfile.gettempdir()) / "cmdb-bench-coverage.png"
        print(to_json(run_orchestrated(emu, world, 100.0, ui=True, screenshot=shot)))
    print(to_json(run_airflow_floor(n, world=world.spec.label)))


# --------------------------------------------------------------------------------------------------
# bench.run's sections, and their part of BENCHMARKS.md
# --------------------------------------------------------------------------------------------------

SCALE_UPSTREAM_LIMIT = 4  # as the peer worlds' gateway: 4 requests at a time reach moto


def _crashed(name: str, world: str, latency_ms: float, err: BaseException) -> Measured:
    """A run that crashed is a wrong run: reported, and the benchmark goes on."""
    problem = f"{type(err).__name__}: {str(err)[-600:]}".replace("\n", " ")
    return Measured(name, world, latency_ms, 0.0, Verdict(False, 0, [problem]))


def airflow_floor_section(ctx: Any) -> None:
    """
    ``--only airflow_floor``: the floor DAG over as many mapped tasks as the real scheduler's run
    (``Profile.orchestrated_accounts``, or ``extra["airflow_floor_accounts"]``), labelled with that run's
    world when it ran first.
    """
    accounts = int(ctx.profile.extra.get("airflow_floor_accounts", ctx.profile.orchestrated_accounts))
    if not accounts:
        return
    ours = [
        r
        for r in ctx.results["runs"]
        if r["name"] == "orchestrated" and r["details"].get("mapped_tasks") == accounts
    ]
    world = ours[0]["world"] if ours else f"{accounts} no-op"
    with ctx.step(f"airflow floor: {accounts} no-op mapped tasks"):
        try:
            measured = run_airflow_floor(accounts, world=world, concurrency=ctx.profile.concurrency)
        except Exception as err:
            measured = _crashed("airflow_floor", world, 0.0, err)
    ctx.results["runs"].append(measured.to_dict())


def scale_section(ctx: Any) -> None:
    """
    ``--only scale``: ``extra["scale_world"]`` (e.g. 1,000 x 17 x 1) seeded on an emulator of its own
    (seeding timed), the shipped DAG under the scheduler at ``extra["scale_latency_ms"]`` (default 100),
    the UI's answers at that size and a screenshot of the coverage page (``bench/results/``); with
    ``extra["scale_floor"]`` the floor DAG at the same size too.
    """
    from bench import scenarios
    from bench.world import seed

    spec = ctx.profile.extra.get("scale_world")
    if spec is None:
        return
    latency = float(ctx.profile.extra.get("scale_latency_ms", 100.0))
    shot = sandbox.ROOT / "bench" / "results" / f"coverage-{spec.accounts}-accounts.png"
    with Emulator() as emu:
        with ctx.step(f"seed {spec.label}"):
            world = seed(emu.moto_url, spec)
        ctx.results.setdefault("seeds", []).append(
            {"world": spec.label, "seconds": world.seconds, "instances": spec.instance_count, "scale": True}
        )
        scenarios.set_upstream_limit(emu, SCALE_UPSTREAM_LIMIT)
        with ctx.step(f"orchestrated {spec.label} at {latency:g} ms (with the UI's answers)"):
            try:
                measured = run_orchestrated(
                    emu, world, latency, concurrency=ctx.profile.concurrency, ui=True, screenshot=shot
                )
            except Exception as err:
                measured = _crashed("orchestrated", spec.label, latency, err)
        measured.details.update(scale=True, upstream_limit=SCALE_UPSTREAM_LIMIT, seed_seconds=world.seconds)
        ctx.results["runs"].append(measured.to_dict())
    if ctx.profile.extra.get("scale_floor"):
        with ctx.step(f"airflow floor: {spec.accounts} no-op mapped tasks"):
            try:
                floor = run_airflow_floor(
                    spec.accounts, world=spec.label, concurrency=ctx.profile.concurrency
                )
            except Exception as err:
                floor = _crashed("airflow_floor", spec.label, 0.0, err)
        ctx.results["runs"].append(floor.to_dict())


def _pair(runs: list[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]]:
    """(the shipped DAG's run, the floor's run) per world, in the order they ran."""
    pairs: dict[str, list[Mapping[str, Any] | None]] = {}
    for run in runs:
        if run["name"] in ("orchestrated", "airflow_floor"):
            pairs.setdefault(run["world"], [None, None])[run["name"] == "airflow_floor"] = run
    return [(ours, floor) for ours, floor in pairs.values()]


def report_section(results: Mapping[str, Any]) -> list[str]:
    """The Markdown of the runs under the scheduler: CPU and memory by kind of process, the UI at size."""
    from bench.report import _f, _table

    pairs = _pair(results.get("runs", []))
    if not pairs:
        return []
    out = ["", "## Under the scheduler: the shipped DAG against its Airflow floor", ""]
    rows = []
    for ours, floor in pairs:
        for run in (ours, floor):
            if run is None or "cpu_per_mapped_task_by_kind" not in run["details"]:
                continue
            d = run["details"]
            per = d["cpu_per_mapped_task_by_kind"]
            base = floor["details"].get("cpu_per_mapped_task") if floor and floor["verified"] else None
            ratio = f"{d['cpu_per_mapped_task'] / base:.2f}x" if base and run is ours else "-"
            rows.append(
                (
                    "shipped DAG" if run is ours else "no-op floor",
                    run["world"],
                    _f(run["wall"]) if run["verified"] else f"{_f(run['wall'])} ({run['verdict']})",
                    d["mapped_tasks"],
                    _f(d["cpu_per_mapped_task"], 3),
                    *(_f(per.get(kind), 3) for kind in KINDS),
                    ratio,
                )
            )
    out += _table(
        ("DAG", "world", "wall s", "mapped tasks", "CPU s per mapped task", *KINDS, "x floor"), rows
    )
    out += [
        "",
        "CPU seconds per mapped task of every Airflow process (and its PostgreSQL) from the trigger to the "
        "run's end, by kind: the scheduler's own process, its LocalExecutor workers (each the Task SDK "
        "supervisor of the task it runs), the task processes they fork (our code runs there), the DAG "
        "processor, the API server (the Execution API the tasks call, and the benchmark's poll of the run "
        f"every {POLL_SECONDS:g} s), PostgreSQL. The floor is the same task graph with no-op tasks "
        "(`bench/airflow_floor.py`), in a fresh cluster of the same settings (Airflow's defaults; "
        "`[core] parallelism` 32, the DAG's 16 scans at a time). Exited processes are counted through "
        "their parents' counters of waited-for children (exact, however short-lived), a process whose "
        "parent exited first from its last reading once a second (`cpu_of_orphans` in the JSON).",
        "",
    ]
    memory = []
    for ours, floor in pairs:
        for run in (ours, floor):
            if run is None or "processes" not in run["details"]:
                continue
            p = run["details"]["processes"]
            memory.append(
                (
                    "shipped DAG" if run is ours else "no-op floor",
                    run["world"],
                    *(
                        f"{_f(p['rss_peak_mb_per_process'].get(k), 0)} / {_f(p['pss_peak_mb_sum'].get(k), 0)}"
                        f" ({p['processes_peak'].get(k, 0)})"
                        for k in KINDS
                    ),
                )
            )
    out += _table(("DAG", "world", *KINDS), memory)
    out += [
        "",
        "Memory, MB: the largest peak resident set of one process of the kind (`VmHWM`, sampled once a "
        "second: a task process that lives less than a second may be missed) / the largest sum of the "
        "kind's proportional set sizes (PSS: pages shared by forked processes split between them) "
        "(the most processes of the kind at once, exited ones not yet waited for included).",
    ]
    out += _scale_lines(results)
    return out


def _scale_lines(results: Mapping[str, Any]) -> list[str]:
    from bench.report import _f, _table

    out: list[str] = []
    for run in results.get("runs", []):
        d = run["details"]
        if run["name"] != "orchestrated" or not d.get("scale"):
            continue
        seeds = [s for s in results.get("seeds", []) if s["world"] == run["world"]]
        out += ["", f"## {run['world']} under the scheduler (the UI at that size)", ""]
        if "mapped_tasks" not in d:
            out.append(f"The run did not complete: {run['verdict']}.")
            continue
        out += [
            f"Seeding the world took {_f(seeds[0]['seconds'] if seeds else None, 0)} s. The run: "
            f"{_f(run['wall'])} s trigger to end, CSV {run['verdict']}; {d['mapped_tasks']} mapped tasks, "
            f"{_f(d['cpu_per_mapped_task'], 2)} Airflow CPU s per mapped task, of which the scheduler's "
            f"own process {_f(d['scheduler_cpu_per_mapped_task'], 3)}; moto {_f(run['moto_cpu'])} CPU s; "
            f"median task {_f(d['task_seconds_median'], 2)} s, queued to running "
            f"{_f(d['queued_to_start_median'], 2)} s. Settings beyond the defaults: "
            + (", ".join(f"`{k}={v}`" for k, v in d["settings"].items()) or "none")
            + ".",
            "",
        ]
        ui = {k: v for k, v in d.get("ui", {}).items() if k != "screenshot"}
        out += _table(
            ("request (as the UI makes it)", "HTTP", "bytes", "first s", "median of 3 s"),
            (
                (label, v["status"], f"{v['bytes']:,}", _f(v["first_s"], 3), _f(v["median_s"], 3))
                for label, v in ui.items()
            ),
        )
        shot = d.get("ui", {}).get("screenshot")
        if shot:
            out += [
                "",
                f"Screenshot of the coverage page: `{_relative(shot.get('path', '-'))}` "
                f"({_f((shot.get('bytes') or 0) / 1024, 0)} KiB, {_f(shot.get('seconds'), 1)} s in headless "
                "Chromium)"
                if "path" in shot
                else f"Screenshot failed: {shot.get('error')}",
            ]
    return out


def _relative(path: str) -> str:
    """A path under the repository as the repository names it."""
    with contextlib.suppress(ValueError):
        return str(Path(path).relative_to(sandbox.ROOT))
    return path


def scale_targets(results: Mapping[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """Issue 13's 1,000-account target: the run completes on this machine, its CSV right."""
    from bench.report import _f

    rows: list[tuple[str, str, str, bool | None]] = []
    for run in results.get("runs", []):
        d = run["details"]
        if run["name"] != "orchestrated" or not d.get("scale"):
            continue
        memory = d.get("processes", {}).get("pss_peak_mb_sum", {})
        rows.append(
            (
                f"{run['world']} at {run['latency_ms']:g} ms under the scheduler",
                "completes on this machine, every instance exactly once",
                f"{_f(run['wall'])} s, CSV {run['verdict']}; scheduler "
                f"{_f(d.get('scheduler_cpu_per_mapped_task'), 3)} CPU s per mapped task; peak PSS "
                + ", ".join(f"{k} {_f(v, 0)} MB" for k, v in memory.items()),
                bool(run["verified"]),
            )
        )
    return rows
