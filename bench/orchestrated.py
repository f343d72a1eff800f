"""
DAG runs under a real scheduler: PostgreSQL, then Airflow's scheduler (LocalExecutor), DAG processor
and API server as separate processes (``devtools/cluster.py``), a run triggered through the REST API like
the UI does. Two DAGs, in fresh clusters of the same settings: the shipped ``cmdb_ec2_inventory`` against
the latency gateway (its CSV read back and checked), and its Airflow floor (``bench.airflow_floor``: the
same task graph with no-op tasks), so that Airflow's CPU per mapped task of the real DAG can be set against
Airflow's own.

Settings are Airflow's defaults and the DAG's shipped knobs; the cluster harness's fast test loops (idle
sleep, heartbeats, parse intervals, parallelism) are put back to Airflow's defaults here, as a deployment
runs them. What stays different is listed in each run's ``settings``.

How the CPU of every Airflow process is counted (:class:`ProcessMeter`): each component is started by
the harness in a session of its own; at the trigger and at the end of the run every process of each
component's tree is read from ``/proc`` (psutil): its own user + system seconds and those of its children
it has already waited for (``cutime``/``cstime``). A task process that exits is waited for by its
LocalExecutor worker (the Task SDK supervisor), and a PostgreSQL backend by the postmaster, so their whole
CPU is in their parent's counters at the end: the difference of the two readings is exact for everything
that exited in between. A sampler thread (once a second) also watches for processes whose parent died
first (they would not be waited for in the tree: counted from their last sample) and reads each process's
resident memory: its peak (``VmHWM``), and per kind of process the largest sum of their resident sets
(RSS) and of their proportional sets (PSS, every fifth sample: forked workers share most pages, which RSS
counts once per process).
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


def _kind(component: str, depth: int, cmdline: str) -> str:
    """The kind of a process from its component and its depth below the component's leader."""
    if component == "scheduler":
        if depth == 0:
            return "scheduler"
        if depth == 1 and "LocalExecutor" in cmdline:
            return "executor workers"
        return "task processes" if depth >= 1 else "scheduler"
    return component


def _reaped_kind(kind: str) -> str:
    """The kind of the children a process of ``kind`` waits for (their CPU lands in its counters)."""
    return {"scheduler": "executor workers", "executor workers": "task processes"}.get(kind, kind)


def _status_kb(pid: int, field_name: str) -> float:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith(field_name):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def _pss_kb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii", errors="replace") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


@dataclass
class _Seen:
    """One process as last sampled."""

    kind: str
    ppid: int
    create_time: float
    own: float = 0.0  # user + system seconds
    reaped: float = 0.0  # of the children it has waited for
    at_start: tuple[float, float] | None = None  # (own, reaped) at the start, when it was alive then
    hwm_mb: float = 0.0
    orphaned: bool = False


@dataclass
class ProcessMeter:
    """CPU seconds and memory of the process trees of ``components`` (name -> leader pid) during a run."""

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

    def _walk(self) -> list[tuple[Any, str, int]]:
        """(process, kind, ppid) of every live process of every component, orphans seen before included."""
        import psutil

        found: list[tuple[Any, str, int]] = []
        pids: set[int] = set()

        def visit(proc: Any, component: str, depth: int) -> None:
            try:
                cmdline = " ".join(proc.cmdline())
                children = proc.children()
                ppid = proc.ppid()
            except psutil.Error:
                return
            found.append((proc, _kind(component, depth, cmdline), ppid))
            pids.add(proc.pid)
            for child in children:
                visit(child, component, depth + 1)

        for component, pid in self.components.items():
            with contextlib.suppress(psutil.Error):
                visit(psutil.Process(pid), component, 0)
        for pid, seen in list(self.seen.items()):  # re-parented processes are no longer in any tree
            if pid in pids or not seen.orphaned:
                continue
            try:
                proc = psutil.Process(pid)
                if abs(proc.create_time() - seen.create_time) < 0.01:
                    found.append((proc, seen.kind, proc.ppid()))
            except psutil.Error:
                continue
        return found

    def _sample(self, *, start: bool = False, pss: bool = False) -> None:
        import psutil

        rss: dict[str, float] = {}
        pss_sum: dict[str, float] = {}
        counts: dict[str, int] = {}
        walked = self._walk()
        alive = {proc.pid for proc, _, _ in walked}
        leaders = set(self.components.values())
        with self._lock:
            for proc, kind, ppid in walked:
                try:
                    times = proc.cpu_times()
                    created = proc.create_time()
                    resident = proc.memory_info().rss / 2**20
                except psutil.Error:
                    continue
                seen = self.seen.get(proc.pid)
                if seen is None or abs(seen.create_time - created) >= 0.01:
                    seen = self.seen[proc.pid] = _Seen(kind, ppid, created)
                seen.own = times.user + times.system
                seen.reaped = times.children_user + times.children_system
                if start:
                    seen.at_start = (seen.own, seen.reaped)
                # A process whose parent is gone is re-parented: nobody in the tree will wait for it.
                leader = proc.pid in leaders
                seen.orphaned = seen.orphaned or (not leader and (ppid != seen.ppid or ppid not in alive))
                seen.hwm_mb = max(seen.hwm_mb, _status_kb(proc.pid, "VmHWM:") / 1024.0, resident)
                rss[kind] = rss.get(kind, 0.0) + resident
                counts[kind] = counts.get(kind, 0) + 1
                if pss:
                    pss_sum[kind] = pss_sum.get(kind, 0.0) + _pss_kb(proc.pid) / 1024.0
            for kind, value in rss.items():
                self.rss_peak_mb[kind] = max(self.rss_peak_mb.get(kind, 0.0), value)
                self.count_peak[kind] = max(self.count_peak.get(kind, 0), counts[kind])
            for kind, value in pss_sum.items():
                self.pss_peak_mb[kind] = max(self.pss_peak_mb.get(kind, 0.0), value)
            self.samples += 1

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
        import psutil

        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample(pss=True)
        cpu = dict.fromkeys(KINDS, 0.0)
        lost = 0.0
        with self._lock:
            for pid, seen in self.seen.items():
                try:
                    alive = abs(psutil.Process(pid).create_time() - seen.create_time) < 0.01
                except psutil.Error:
                    alive = False
                own0, reaped0 = seen.at_start or (0.0, 0.0)
                if alive or seen.at_start is not None:
                    # Alive at the start: its start counters are in the baseline; if it has exited since,
                    # what it used in total is now in its parent's counters (below).
                    cpu[seen.kind] = cpu.get(seen.kind, 0.0) - own0
                    cpu[_reaped_kind(seen.kind)] = cpu.get(_reaped_kind(seen.kind), 0.0) - reaped0
                if alive:
                    cpu[seen.kind] = cpu.get(seen.kind, 0.0) + seen.own
                    cpu[_reaped_kind(seen.kind)] = cpu.get(_reaped_kind(seen.kind), 0.0) + seen.reaped
                elif seen.orphaned:  # exited with nobody of ours to wait for it: its last sample
                    used = seen.own + seen.reaped
                    lost += used
                    cpu[seen.kind] = cpu.get(seen.kind, 0.0) + used
            hwm: dict[str, float] = {}
            for seen in self.seen.values():
                hwm[seen.kind] = max(hwm.get(seen.kind, 0.0), seen.hwm_mb)
        return {
            "cpu_by_kind": {k: max(0.0, v) for k, v in cpu.items()},
            "cpu": max(0.0, sum(cpu.values())),
            "cpu_of_orphans": lost,
            "processes_seen": dict(
                sorted({k: sum(1 for s in self.seen.values() if s.kind == k) for k in cpu}.items())
            ),
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
    """Every task instance of the run, page by page (the API returns at most 100 at a time)."""
    path = f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances"
    found: list[dict[str, Any]] = []
    while True:
        page = api.get(path, limit=100, offset=len(found))
        found.extend(page["task_instances"])
        if not page["task_instances"] or len(found) >= page["total_entries"]:
            return found


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
