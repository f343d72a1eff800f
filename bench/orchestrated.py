"""
A full DAG run under a real scheduler: PostgreSQL, then Airflow's scheduler (LocalExecutor), DAG
processor and API server as separate processes (``devtools/cluster.py``), the DAG triggered through
the REST API like the UI does, against the latency gateway. Measures the run's wall time, the CPU
seconds of every Airflow process (task processes included), and each mapped task's timings.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.scenarios import DS, Measured, others, s3_client
from bench.servers import Emulator
from bench.world import Seeded, verify_csv
from devtools import emulator, sandbox

DAG_ID = sandbox.DAG_ID
RUN_TIMEOUT = 900


def tree_cpu(pids: list[int]) -> float:
    """CPU seconds of these processes and every descendant, live or already reaped."""
    import psutil

    total = 0.0
    seen: set[int] = set()
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in procs:
            if proc.pid in seen:
                continue
            seen.add(proc.pid)
            try:
                t = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += t.user + t.system + t.children_user + t.children_system
    return total


def _ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def run_orchestrated(
    emu: Emulator,
    seeded: Seeded,
    latency_ms: float,
    *,
    concurrency: int = 16,
    parallelism: int = 32,
    variable_extra: dict[str, Any] | None = None,
    workdir: Path | None = None,
) -> Measured:
    """Start a cluster, trigger one run at ``latency_ms``, wait for it, read the CSV back and check it."""
    from devtools.cluster import AirflowCluster, cluster_env
    from devtools.servers import Postgres

    variable = seeded.variable(**(variable_extra or {}))
    connection = emulator.demo_connection(emu.url)
    with tempfile.TemporaryDirectory(prefix="cmdb-bench-airflow-") as tmp:
        work = workdir or Path(tmp)
        home = work / "airflow"
        home.mkdir(parents=True, exist_ok=True)
        with Postgres() as pg:
            api_port = sandbox.free_port()
            base = sandbox.airflow_env(home, connection, variable)
            base.pop("PYTHONDONTWRITEBYTECODE", None)
            env = cluster_env(base, home, pg.url, api_port)
            env.update(
                {
                    "AIRFLOW_CONN_AWS_DEFAULT": base["AIRFLOW_CONN_AWS_DEFAULT"],
                    "AIRFLOW_VAR_CMDB_EC2_INVENTORY": base["AIRFLOW_VAR_CMDB_EC2_INVENTORY"],
                    "AIRFLOW__CORE__PARALLELISM": str(parallelism),
                    "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(max(parallelism, concurrency)),
                    "CMDB_EC2_INVENTORY_MAX_ACTIVE_ACCOUNTS": str(concurrency),
                    "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                }
            )
            setup0 = time.perf_counter()
            with AirflowCluster(work, env, api_port) as cluster:
                cluster.wait_migrated(cluster.migrate())
                cluster.start(DAG_ID)
                setup = time.perf_counter() - setup0
                api = cluster.api
                api.patch(f"/dags/{DAG_ID}", {"is_paused": False})
                emu.set_latency(latency_ms)
                emu.reset_calls()
                pids = [m.process.pid for m in cluster.processes]
                pids.append(pg.pid)  # Airflow's PostgreSQL too
                cpu0, gw0 = tree_cpu(pids), emu.cpu()
                t0 = time.perf_counter()
                run = api.trigger(DAG_ID, logical_date=f"{DS}T02:00:00Z", conf={"overwrite": True})
                run = api.wait_run(DAG_ID, run["dag_run_id"], timeout=RUN_TIMEOUT)
                wall = time.perf_counter() - t0
                cpu1, gw1 = tree_cpu(pids), emu.cpu()
                stats = emu.stats()
                emu.set_latency(0)
                tis = task_instances(api, run["dag_run_id"])
    scans = [t for t in tis if t["task_id"] == "scan_account"]
    durations = [float(t["duration"] or 0.0) for t in scans]
    queued = [
        (_ts(t["start_date"]) or 0.0) - (_ts(t.get("queued_when")) or _ts(t["start_date"]) or 0.0)
        for t in scans
    ]
    run_start, run_end = _ts(run.get("start_date")), _ts(run.get("end_date"))
    scan_starts = [_ts(t["start_date"]) for t in scans if t["start_date"]]
    scan_ends = [_ts(t["end_date"]) for t in scans if t["end_date"]]
    key = emulator_csv_key()
    body = s3_client(emu.moto_url).get_object(Bucket=seeded.bucket, Key=key)["Body"].read()
    verdict = verify_csv(body, seeded)
    states = sorted({f"{t['task_id']}={t['state']}" for t in tis})
    if run["state"] != "success":
        verdict.ok = False
        verdict.problems.insert(0, f"run {run['state']}: {states}")
    return Measured(
        name="orchestrated",
        world=seeded.spec.label,
        latency_ms=latency_ms,
        wall=wall,
        verdict=verdict,
        cpu=cpu1 - cpu0,
        moto_cpu=gw1["moto"] - gw0["moto"],
        gateway_cpu=gw1["gateway"] - gw0["gateway"],
        calls=stats["calls"],
        details={
            "run_state": run["state"],
            "run_seconds": (run_end - run_start) if run_start and run_end else None,
            "setup_seconds": setup,
            "mapped_tasks": len(scans),
            "scan_phase_seconds": (max(scan_ends) - min(scan_starts)) if scan_starts and scan_ends else None,
            "task_seconds_median": _median(durations),
            "task_seconds_sum": sum(durations),
            "queued_to_start_median": _median(queued),
            "cpu_per_mapped_task": (cpu1 - cpu0) / max(1, len(scans)),
            "concurrency": concurrency,
            "parallelism": parallelism,
            "by_action": stats["by_action"],
            "assume_role_by_role": stats["assume_role_by_role"],
            "task_states": states,
            **others(gw0, gw1, cpu1 - cpu0),
        },
    )


def task_instances(api: Any, run_id: str) -> list[dict[str, Any]]:
    """Every task instance of the run, page by page (the API returns at most 100 at a time)."""
    from urllib.parse import quote

    path = f"/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances"
    found: list[dict[str, Any]] = []
    while True:
        page = api.get(path, limit=100, offset=len(found))
        found.extend(page["task_instances"])
        if not page["task_instances"] or len(found) >= page["total_entries"]:
            return found


def emulator_csv_key() -> str:
    """The contract's key of the benchmark date's CSV."""
    return f"cmdb/ec2-inventory/ds={DS}/ec2_inventory.csv"
