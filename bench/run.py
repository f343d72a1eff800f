"""
``make bench``: seed synthetic organisations on moto (127.0.0.1), measure the engine, the 2015
baseline, the floor, a full run under a real scheduler, the merge at a million rows and the DAG file's
parse time; check every run's CSV against the seeded world; write the table to ``BENCHMARKS.md``.

    python -m bench.run                      # the full benchmark (minutes)
    python -m bench.run --profile quick      # smaller worlds
    python -m bench.run --profile smoke --out /tmp/B.md   # seconds: the harness's own check

Every wall time counts only when the run's output was verified; a wrong answer is reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report
from bench.world import DEFAULT_REGIONS, WorldSpec

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Profile:
    """What one ``bench.run`` measures."""

    name: str
    latency_world: WorldSpec  # engine vs baseline vs floor at 0 and 100 ms (its first accounts)
    latency_accounts: int
    volume_world: WorldSpec | None  # engine vs floor at 0 ms (emulator-bound)
    orchestrated_accounts: int  # 0: skip; else a real-scheduler run on the latency world's first N
    merge_parts: int  # parts of 1,000 rows (the merge is measured at 10% and 100% of them)
    parse_repeats: int
    mapping_accounts: int = 0  # 0: skip; else a run expanding this many accounts (> max_map_length)
    engine_repeats: int = 3  # the latency world's engine runs: the median of this many counts
    concurrency: int = 16
    latency_ms: float = 100.0
    baseline_at_zero: bool = True


PROFILES: dict[str, Profile] = {
    "full": Profile(
        name="full",
        latency_world=WorldSpec(100, DEFAULT_REGIONS, 5),
        latency_accounts=20,
        volume_world=WorldSpec(20, DEFAULT_REGIONS, 100),
        orchestrated_accounts=100,
        merge_parts=1000,
        parse_repeats=7,
        mapping_accounts=1500,
    ),
    "quick": Profile(
        name="quick",
        latency_world=WorldSpec(20, DEFAULT_REGIONS, 5),
        latency_accounts=20,
        volume_world=WorldSpec(5, DEFAULT_REGIONS, 100),
        orchestrated_accounts=20,
        merge_parts=100,
        parse_repeats=3,
    ),
    "smoke": Profile(
        name="smoke",
        latency_world=WorldSpec(3, DEFAULT_REGIONS[:2], 3),
        latency_accounts=3,
        volume_world=None,
        orchestrated_accounts=0,
        merge_parts=10,
        parse_repeats=1,
        concurrency=2,
        latency_ms=20.0,
        baseline_at_zero=False,
        engine_repeats=1,
    ),
}


def machine() -> dict[str, Any]:
    """Where and when the numbers were taken."""
    import psutil

    from bench import servers  # noqa: F401 - imported for its side-effect-free helpers only

    versions = {}
    for name in ("apache-airflow", "apache-airflow-providers-amazon", "boto3", "moto"):
        from importlib.metadata import version

        versions[name] = version(name)
    return {
        "date": datetime.now(tz=UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu_model": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "load_start": os.getloadavg(),
        "versions": versions,
    }


def run_profile(profile: Profile, only: set[str] | None = None) -> dict[str, Any]:
    """Every measurement of a profile; returns the results as JSON-able data."""
    from bench import scenarios
    from bench.servers import Emulator
    from bench.world import seed

    results: dict[str, Any] = {"profile": profile.name, "machine": machine(), "runs": [], "floors": []}

    def wanted(name: str) -> bool:
        return only is None or name in only

    def step(label: str) -> Any:
        return scenarios.timed(label)

    if wanted("latency") or wanted("orchestrated"):
        with Emulator() as emu:
            with step(f"seed {profile.latency_world.label}"):
                world = seed(emu.moto_url, profile.latency_world)
            results["seed"] = {"world": profile.latency_world.label, "seconds": world.seconds}
            part = world.subset(profile.latency_accounts)
            if wanted("latency"):
                with step("floor (emulator capacity)"):
                    cap = scenarios.capacity(emu, part, profile.concurrency)
                for latency in (0.0, profile.latency_ms):
                    floor = scenarios.floor_of(cap, part, profile.concurrency, latency)
                    results["floors"].append(
                        {"world": part.spec.label, "latency_ms": latency, **floor, "capacity": cap.to_dict()}
                    )
                    with step(f"engine {part.spec.label} at {latency:g} ms"):
                        results["runs"].append(
                            scenarios.run_engine_repeated(
                                emu, part, latency, profile.concurrency, profile.engine_repeats
                            ).to_dict()
                        )
                    if latency or profile.baseline_at_zero:
                        with step(f"baseline {part.spec.label} at {latency:g} ms"):
                            results["runs"].append(scenarios.run_baseline(emu, part, latency).to_dict())
            if wanted("orchestrated") and profile.orchestrated_accounts:
                from bench.orchestrated import run_orchestrated

                target = world.subset(profile.orchestrated_accounts)
                with step(f"engine {target.spec.label} at {profile.latency_ms:g} ms (the same world)"):
                    results["runs"].append(
                        scenarios.run_engine(emu, target, profile.latency_ms, profile.concurrency).to_dict()
                    )
                with step(f"orchestrated {target.spec.label} at {profile.latency_ms:g} ms"):
                    results["runs"].append(
                        run_orchestrated(
                            emu, target, profile.latency_ms, concurrency=profile.concurrency
                        ).to_dict()
                    )

    if wanted("volume") and profile.volume_world is not None:
        with Emulator() as emu:
            with step(f"seed {profile.volume_world.label}"):
                world = seed(emu.moto_url, profile.volume_world)
            with step("floor (emulator capacity)"):
                cap = scenarios.capacity(emu, world, profile.concurrency)
            floor = scenarios.floor_of(cap, world, profile.concurrency, 0.0)
            results["floors"].append(
                {"world": world.spec.label, "latency_ms": 0.0, **floor, "capacity": cap.to_dict()}
            )
            with step(f"engine {world.spec.label} at 0 ms"):
                results["runs"].append(scenarios.run_engine(emu, world, 0.0, profile.concurrency).to_dict())
            with step(f"baseline {world.spec.label} at 0 ms"):
                results["runs"].append(scenarios.run_baseline(emu, world, 0.0).to_dict())

    if wanted("merge"):
        with step(f"merge {profile.merge_parts} parts of 1,000 rows"):
            results["merge"] = scenarios.run_merges(profile.merge_parts)

    if wanted("parse"):
        with step("parse"):
            results["parse"] = scenarios.run_parse(profile.parse_repeats)

    if wanted("mapping") and profile.mapping_accounts:
        with step(f"mapping {profile.mapping_accounts} accounts"):
            results["mapping"] = scenarios.run_mapping(profile.mapping_accounts)

    if wanted("tuning") and profile.name != "smoke":  # each botocore tuning piece with and without
        from bench import tuning

        with step("tuning"):
            results["tuning"] = tuning.measure()

    results["machine"]["load_end"] = os.getloadavg()
    return results


def main(argv: list[str] | None = None) -> int:
    """Run a profile, write the Markdown (and the raw JSON), print the table."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument(
        "--only", default="", help="comma-separated: latency,volume,orchestrated,merge,parse,mapping,tuning"
    )
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="the Markdown report")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "latest.json"), help="raw results")
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    only = {s.strip() for s in args.only.split(",") if s.strip()} or None
    started = time.perf_counter()
    print(f"bench profile {profile.name} ...", flush=True)
    results = run_profile(profile, only)
    results["seconds"] = time.perf_counter() - started
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    markdown = report.render(results, command=f"python -m bench.run --profile {profile.name}")
    Path(args.out).write_text(markdown)
    print(markdown)
    print(f"wrote {args.out} and {args.json} in {results['seconds']:.0f} s")
    wrong = [r for r in results["runs"] if not r["verified"]]
    if results.get("merge"):
        wrong += [m for m in results["merge"] if not m["verified"]]
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
