"""
The measured runs on one seeded world: the engine and the baseline (each in a process of its own,
through the latency gateway), the floor, and the check of every CSV against the world.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.floor import Capacity, floor_seconds, measure_capacity
from bench.servers import Emulator, children_cpu
from bench.world import LEGACY_COLUMNS, Seeded, Verdict, verify_csv
from devtools import emulator, sandbox
from devtools.world import DISCOVERY_ROLE, PAYER, session_in

DS = "2026-11-26"
RUN_TIMEOUT = 1800


@dataclass
class Measured:
    """One measured run: what ran, on which world, at which latency, how long, and whether it was right."""

    name: str
    world: str
    latency_ms: float
    wall: float
    verdict: Verdict
    cpu: float = 0.0
    moto_cpu: float = 0.0
    gateway_cpu: float = 0.0
    calls: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "name": self.name,
            "world": self.world,
            "latency_ms": self.latency_ms,
            "wall": self.wall,
            "verified": self.verdict.ok,
            "verdict": self.verdict.summary(),
            "cpu": self.cpu,
            "moto_cpu": self.moto_cpu,
            "gateway_cpu": self.gateway_cpu,
            "calls": self.calls,
            "details": self.details,
        }


def _python(module: str, params: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """Run ``python -m module PARAMS RESULT`` and return RESULT."""
    with tempfile.TemporaryDirectory(prefix="cmdb-bench-run-") as tmp:
        params_path, result_path = Path(tmp) / "params.json", Path(tmp) / "result.json"
        params_path.write_text(json.dumps(params))
        done = subprocess.run(
            [sys.executable, "-m", module, str(params_path), str(result_path)],
            env=env,
            cwd=sandbox.ROOT,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        if done.returncode != 0 or not result_path.exists():
            raise RuntimeError(f"{module} failed ({done.returncode}):\n{done.stderr[-4000:]}")
        return dict(json.loads(result_path.read_text()))


def others(before: dict[str, float], after: dict[str, float], ours: float) -> dict[str, float]:
    """
    The machine's CPU while a run ran: busy seconds on every core, stolen by the host, and those of other
    processes (not the measured process, moto or the gateway): the contention the numbers carry.
    """
    busy = after["machine_busy"] - before["machine_busy"]
    emulator = after["moto"] - before["moto"] + after["gateway"] - before["gateway"]
    return {
        "machine_busy": busy,
        "machine_steal": after["machine_steal"] - before["machine_steal"],
        "others_cpu": max(0.0, busy - emulator - ours),
    }


def s3_client(moto_url: str) -> Any:
    """An S3 client of the payer (the bucket's owner), straight at moto."""
    return session_in(moto_url, PAYER).client("s3", endpoint_url=moto_url)


def _measured(
    name: str,
    seeded: Seeded,
    latency_ms: float,
    result: dict[str, Any],
    verdict: Verdict,
    cpus: tuple[dict[str, float], dict[str, float], float],
    stats: dict[str, Any],
    **details: Any,
) -> Measured:
    """A run's measurement from its child's ``result``, the emulator's CPU ``before``/``after`` and ours."""
    before, after, ours = cpus
    return Measured(
        name=name,
        world=seeded.spec.label,
        latency_ms=latency_ms,
        wall=result["wall"],
        verdict=verdict,
        cpu=result["cpu"],
        moto_cpu=after["moto"] - before["moto"],
        gateway_cpu=after["gateway"] - before["gateway"],
        calls=stats["calls"],
        details={**result, **details, "by_action": stats["by_action"], **others(before, after, ours)},
    )


def run_engine(
    emu: Emulator,
    seeded: Seeded,
    latency_ms: float,
    concurrency: int,
    variable_extra: dict[str, Any] | None = None,
    name: str = "engine",
) -> Measured:
    """The engine through the gateway at ``latency_ms``; its CSV read back and checked."""
    variable = seeded.variable(**(variable_extra or {}))
    run_id = f"bench__{uuid.uuid4().hex[:12]}"
    emu.set_latency(latency_ms)
    emu.reset_calls()
    with tempfile.TemporaryDirectory(prefix="cmdb-bench-home-") as home:
        env = sandbox.airflow_env(Path(home), emulator.demo_connection(emu.url), variable)
        env["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        before, child0 = emu.cpu(), children_cpu()
        result = _python(
            "bench.engine",
            {"variable": variable, "concurrency": concurrency, "run_id": run_id, "ds": DS},
            env,
        )
        after, child1 = emu.cpu(), children_cpu()
    stats = emu.stats()
    emu.set_latency(0)
    body = s3_client(emu.moto_url).get_object(Bucket=seeded.bucket, Key=result["csv_key"])["Body"].read()
    verdict = verify_csv(body, seeded)
    if result["errors"]:
        verdict = Verdict(False, verdict.rows, [*result["errors"], *verdict.problems])
    return _measured(
        name,
        seeded,
        latency_ms,
        result,
        verdict,
        (before, after, child1 - child0),
        stats,
        concurrency=concurrency,
        region_threads=variable.get("region_threads", 17),
        assume_role_by_role=stats["assume_role_by_role"],
        gateway_errors=stats["errors"],
    )


def run_engine_repeated(
    emu: Emulator, seeded: Seeded, latency_ms: float, concurrency: int, repeats: int
) -> Measured:
    """
    The engine ``repeats`` times on the same world: the run with the median wall time counts, the others'
    walls are kept (a many-threaded process on two shared cores varies), and every run must be right.
    """
    runs = sorted(
        (run_engine(emu, seeded, latency_ms, concurrency) for _ in range(max(1, repeats))),
        key=lambda m: m.wall,
    )
    median = runs[len(runs) // 2]
    wrong = [m.verdict for m in runs if not m.verdict.ok]
    if wrong:
        median.verdict = wrong[0]
    median.details["walls"] = [m.wall for m in runs]
    return median


def run_baseline(emu: Emulator, seeded: Seeded, latency_ms: float) -> Measured:
    """The 2015 algorithm through the gateway at ``latency_ms``; its CSV checked."""
    connection = emulator.demo_connection(emu.url)
    emu.set_latency(latency_ms)
    emu.reset_calls()
    with tempfile.TemporaryDirectory(prefix="cmdb-bench-baseline-") as tmp:
        csv_path = Path(tmp) / "inventory.csv"
        params = {
            "endpoint_url": emu.url,
            "login": connection["login"],
            "password": connection["password"],
            "hub_role_arn": connection["extra"]["role_arn"],
            "accounts": list(seeded.names),
            "regions": list(seeded.spec.regions),
            "role_name": DISCOVERY_ROLE,
            "csv_path": str(csv_path),
        }
        from bench.servers import bench_env

        before, child0 = emu.cpu(), children_cpu()
        result = _python("bench.baseline", params, bench_env(AWS_ENDPOINT_URL=emu.url))
        after, child1 = emu.cpu(), children_cpu()
        verdict = verify_csv(csv_path.read_bytes(), seeded, columns=LEGACY_COLUMNS, product=False)
    stats = emu.stats()
    emu.set_latency(0)
    return _measured("baseline", seeded, latency_ms, result, verdict, (before, after, child1 - child0), stats)


def capacity(emu: Emulator, seeded: Seeded, threads: int) -> Capacity:
    """moto's capacity for the floor's calls (straight at moto, no gateway)."""
    return measure_capacity(
        emu.moto_url, seeded, DISCOVERY_ROLE, threads, cpu_of_moto=lambda: emu.cpu()["moto"]
    )


def floor_of(cap: Capacity, seeded: Seeded, concurrency: int, latency_ms: float) -> dict[str, float]:
    """The floor of this world at this latency and concurrency."""
    return floor_seconds(cap, seeded.spec.accounts, concurrency, latency_ms / 1000.0)


def timed(label: str) -> Any:
    """Print a progress line with the elapsed time when the block ends."""

    class _Timer:
        def __enter__(self) -> _Timer:
            self.t0 = time.perf_counter()
            print(f"  {label} ...", flush=True)
            return self

        def __exit__(self, *exc: object) -> None:
            print(f"  {label}: {time.perf_counter() - self.t0:.1f} s", flush=True)

    return _Timer()


def run_merges(parts: int) -> list[dict[str, Any]]:
    """
    Merge 10% and then 100% of ``parts`` synthetic parts of 1,000 rows, each in a fresh process (its
    own peak RSS), on a moto server of their own; every merged CSV checked byte for byte.
    """
    from bench import merge
    from bench.servers import bench_env

    results: list[dict[str, Any]] = []
    with Emulator() as emu:
        expected = merge.write_parts(emu.moto_url, parts)
        for case in expected:
            out_key = f"{merge.PREFIX}/ds={DS}/ec2_inventory-{case.rows}.csv"
            params = {"endpoint_url": emu.moto_url, "keys": case.keys, "rows": case.rows, "out_key": out_key}
            before = emu.cpu()["moto"]
            result = _python("bench.merge", params, bench_env())
            result["moto_cpu"] = emu.cpu()["moto"] - before
            sha256, lines = merge.merged_sha256(emu.moto_url, out_key)
            ok = sha256 == case.sha256 == result["sha256"] and lines == case.rows + 1
            results.append(
                {
                    **result,
                    "rows": case.rows,
                    "parts": len(case.keys),
                    "rows_per_second": case.rows / result["wall"] if result["wall"] else 0.0,
                    "verified": ok,
                    "verdict": f"ok ({case.rows} rows, SHA-256 matches)"
                    if ok
                    else f"WRONG: {lines - 1} rows, SHA-256 {sha256[:12]} expected {case.sha256[:12]}",
                }
            )
    return results


def run_parse(repeats: int) -> dict[str, Any]:
    """The DAG file's import time (file and cold), in fresh processes."""
    from bench import parse
    from bench.servers import bench_env

    with tempfile.TemporaryDirectory(prefix="cmdb-bench-parse-") as home:
        env = bench_env(
            AIRFLOW_HOME=home,
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__DAGS_FOLDER=str(sandbox.ROOT / "dags"),
            AIRFLOW__CORE__UNIT_TEST_MODE="False",
        )
        return {"file": parse.measure(repeats, env), "cold": parse.measure(repeats, env, cold=True)}


def run_mapping(accounts: int) -> dict[str, Any]:
    """
    ``accounts`` synthetic accounts (more than Airflow's default ``max_map_length``) through the DAG with
    Airflow's test runner, the scans expanded but not executed: with ``AIRFLOW__CORE__MAX_MAP_LENGTH`` set
    to cover them, and with the default (refused, clearly, before any work).
    """
    from bench.servers import bench_env

    results: dict[str, Any] = {"accounts": accounts}
    with tempfile.TemporaryDirectory(prefix="cmdb-bench-mapping-") as home:
        env = sandbox.airflow_env(Path(home), emulator.demo_connection("http://127.0.0.1:9"), {})
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        sandbox.migrate(env)
        for label, limit in (("configured", str(max(2048, accounts))), ("default", None)):
            run_env = {**env, **({"AIRFLOW__CORE__MAX_MAP_LENGTH": limit} if limit else {})}
            done = subprocess.run(
                [sys.executable, "-m", "bench.mapping", str(accounts)],
                env={**bench_env(), **run_env},
                cwd=sandbox.ROOT,
                capture_output=True,
                text=True,
                timeout=RUN_TIMEOUT,
                check=False,
            )
            lines = done.stdout.strip().splitlines()
            if done.returncode != 0 or not lines:
                raise RuntimeError(f"bench.mapping failed ({done.returncode}):\n{done.stderr[-3000:]}")
            result = json.loads(lines[-1])
            result["clear_refusal"] = "AIRFLOW__CORE__MAX_MAP_LENGTH" in done.stdout + done.stderr
            results[label] = result
    return results
