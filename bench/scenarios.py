"""
The measured runs on one seeded world: the engine, the baseline and ``airflow dags test`` (each in a
process of its own, through the latency gateway), the floor, and the check of every CSV against the world.
Cloud Custodian's c7n-org, the peer from another venv, is in :mod:`bench.c7n`.

Each run is timed twice: ``wall``/``cpu`` as the tool itself counts them (after its imports, where it
can say), and ``process_wall``/``process_cpu`` from outside, spawn to exit, every process it started
included, as a user timing the command sees it: the peers are compared on the latter.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
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
CSV_KEY = f"cmdb/ec2-inventory/ds={DS}/ec2_inventory.csv"  # the contract's key of the benchmark date's CSV
# What a fresh process needs before the engine's first AWS call: Python and the Amazon provider's hook.
IMPORT_FLOOR_CODE = "from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook"


class Skipped(Exception):
    """A tool that cannot run here (e.g. its venv is absent in the smoke profile): the report says why."""


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
    """Run ``python -m module PARAMS RESULT`` and return RESULT, with its process's wall and CPU."""
    with tempfile.TemporaryDirectory(prefix="cmdb-bench-run-") as tmp:
        params_path, result_path = Path(tmp) / "params.json", Path(tmp) / "result.json"
        params_path.write_text(json.dumps(params))
        cpu0, t0 = children_cpu(), time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", module, str(params_path), str(result_path)],
            env=env,
            cwd=sandbox.ROOT,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        process_wall, process_cpu = time.perf_counter() - t0, children_cpu() - cpu0
        if done.returncode != 0 or not result_path.exists():
            raise RuntimeError(f"{module} failed ({done.returncode}):\n{done.stderr[-4000:]}")
        result = dict(json.loads(result_path.read_text()))
        return {**result, "process_wall": process_wall, "process_cpu": process_cpu}


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
        details={
            **result,
            **details,
            "by_action": stats["by_action"],
            "upstream_peak": stats.get("upstream_peak"),  # the most calls at moto at once
            **others(before, after, ours),
        },
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
        before = emu.cpu()
        result = _python(
            "bench.engine",
            {"variable": variable, "concurrency": concurrency, "run_id": run_id, "ds": DS},
            env,
        )
        after = emu.cpu()
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
        (before, after, result["process_cpu"]),
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
    return median_of(runs)


def median_of(runs: list[Measured], key: str = "wall") -> Measured:
    """
    The run with the median ``key`` (``wall``, or ``process_wall`` of the details) counts: every run's
    walls and CPU are kept in its details, and it is right only if every run was.
    """
    if not runs:
        raise ValueError("no runs")

    def value(m: Measured) -> float:  # a crashed run has only its (zero) wall
        return float(m.wall if key == "wall" else m.details.get(key, m.wall))

    ordered = sorted(runs, key=value)
    median = ordered[len(ordered) // 2]
    wrong = [m.verdict for m in ordered if not m.verdict.ok]
    if wrong:
        median.verdict = wrong[0]
    median.details["walls"] = [m.wall for m in ordered]
    median.details["repeats"] = len(ordered)
    if key != "wall":
        median.details[f"{key}s"] = [value(m) for m in ordered]
        median.details["process_cpus"] = [float(m.details.get("process_cpu", 0.0)) for m in ordered]
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

        before = emu.cpu()
        result = _python("bench.baseline", params, bench_env(AWS_ENDPOINT_URL=emu.url))
        after = emu.cpu()
        verdict = verify_csv(csv_path.read_bytes(), seeded, columns=LEGACY_COLUMNS, product=False)
    stats = emu.stats()
    emu.set_latency(0)
    return _measured(
        "baseline", seeded, latency_ms, result, verdict, (before, after, result["process_cpu"]), stats
    )


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


def set_upstream_limit(emu: Emulator, limit: int | None) -> None:
    """How many calls the gateway lets reach moto at once from now on (``None``: any number)."""
    request = urllib.request.Request(f"{emu.control_url}/limit?n={limit or 0}", method="POST", data=b"")  # noqa: S310
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - our loopback gateway
        answer = json.loads(response.read())
    if answer.get("upstream_limit") != limit:
        raise RuntimeError(f"the gateway did not take the limit {limit}: {answer}")


def run_import_floor(repeats: int) -> dict[str, Any]:
    """
    A fresh process importing the Amazon provider's ``AwsBaseHook`` and nothing else (spawn to exit,
    median of ``repeats``): the least any Airflow-based scan pays before its first AWS call.
    """
    from bench.servers import bench_env

    walls, cpus = [], []
    for _ in range(max(1, repeats)):
        cpu0, t0 = children_cpu(), time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", IMPORT_FLOOR_CODE],
            env=bench_env(),
            cwd=sandbox.ROOT,
            capture_output=True,
            timeout=RUN_TIMEOUT,
            check=True,
        )
        walls.append(time.perf_counter() - t0)
        cpus.append(children_cpu() - cpu0)
    return {
        "code": IMPORT_FLOOR_CODE,
        "wall": statistics.median(walls),
        "cpu": statistics.median(cpus),
        "walls": sorted(walls),
    }


class DagsTestHomes:
    """
    Fresh Airflow homes for ``airflow dags test``, each with its own copy of one migrated SQLite database
    (migrating once: the migration is set-up, not the run a user times).
    """

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="cmdb-bench-dagstest-"))
        self._template: Path | None = None
        self.migrate_seconds = 0.0
        self._count = 0

    def new(self, connection: dict[str, Any], variable: dict[str, Any]) -> tuple[Path, dict[str, str]]:
        """A home with a migrated database, and the environment of a run in it (the shipped defaults)."""
        if self._template is None:
            template = self.root / "template"
            template.mkdir()
            started = time.perf_counter()
            sandbox.migrate(_dags_test_env(template, connection, variable))
            self.migrate_seconds = time.perf_counter() - started
            self._template = template
        self._count += 1
        home = self.root / f"run-{self._count}"
        home.mkdir()
        shutil.copy2(self._template / "airflow.db", home / "airflow.db")
        return home, _dags_test_env(home, connection, variable)

    def close(self) -> None:
        """Remove every home."""
        shutil.rmtree(self.root, ignore_errors=True)


def _dags_test_env(home: Path, connection: dict[str, Any], variable: dict[str, Any]) -> dict[str, str]:
    env = sandbox.airflow_env(home, connection, variable)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # measure warm processes, as a deployed image has bytecode
    return env


def run_dags_test(emu: Emulator, seeded: Seeded, latency_ms: float, homes: DagsTestHomes) -> Measured:
    """
    ``airflow dags test cmdb_ec2_inventory DS`` end to end (a fresh home, the shipped defaults, the run's
    ``overwrite`` so that the date's earlier snapshots do not stop it), through the gateway at
    ``latency_ms``; the CSV read back from S3 (deleted first, so an old one cannot pass) and checked.
    """
    connection = emulator.demo_connection(emu.url)
    home, env = homes.new(connection, seeded.variable())
    s3 = s3_client(emu.moto_url)
    s3.delete_object(Bucket=seeded.bucket, Key=CSV_KEY)
    emu.set_latency(latency_ms)
    emu.reset_calls()
    # sandbox.dags_test's command, with the benchmark's longer timeout (a hundred accounts, one at a time)
    cmd = [
        sys.executable,
        "-m",
        "airflow",
        "dags",
        "test",
        sandbox.DAG_ID,
        DS,
        "--conf",
        '{"overwrite": true}',
    ]
    before, cpu0, t0 = emu.cpu(), children_cpu(), time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, timeout=RUN_TIMEOUT)
    wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
    after = emu.cpu()
    stats = emu.stats()
    emu.set_latency(0)
    (home / "dags_test.log").write_text(done.stdout + done.stderr)
    try:
        body = s3.get_object(Bucket=seeded.bucket, Key=CSV_KEY)["Body"].read()
    except Exception as err:  # a missing CSV is a wrong run, reported as such
        verdict = Verdict(False, 0, [f"no CSV at {CSV_KEY}: {type(err).__name__}"])
    else:
        verdict = verify_csv(body, seeded)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-300:].replace("\n", " ")
        verdict = Verdict(False, verdict.rows, [f"exit {done.returncode}: {tail}", *verdict.problems])
    result = {"wall": wall, "cpu": cpu, "process_wall": wall, "process_cpu": cpu, "exit": done.returncode}
    return _measured(
        "dags_test",
        seeded,
        latency_ms,
        result,
        verdict,
        (before, after, cpu),
        stats,
        migrate_seconds=homes.migrate_seconds,
        log=str(home / "dags_test.log"),
    )
