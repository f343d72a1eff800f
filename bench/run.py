"""
``make bench``: seed synthetic organisations on moto (127.0.0.1), measure side by side on the same worlds
through the same latency gateway the 2015 serial algorithm, Cloud Custodian's c7n-org, the engine and
``airflow dags test``; then the volume floor, a full run under a real scheduler, the merge at a million
rows and the DAG file's parse time; check every run's CSV against the seeded world; write the table to
``BENCHMARKS.md``.

    python -m bench.run                      # the full benchmark (issue 13's set and the rest; an hour+)
    python -m bench.run --profile quick      # smaller worlds, one run each
    python -m bench.run --profile smoke --out /tmp/B.md   # seconds: the harness's own check
    python -m bench.run --only peers         # some sections only

Every wall time counts only when the run's output was verified; a wrong answer is reported as such.

Extension points: :data:`PEER_TOOLS` (a tool measured on every peer world), :data:`WORLD_STEPS`
(measurements on a peer world's emulator after the peers, e.g. the real scheduler's run) and
:data:`SECTIONS` (measurements of their own, in order); each adds its results to the results dict that
:mod:`bench.report` renders.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import report
from bench.world import DEFAULT_REGIONS, WorldSpec

if TYPE_CHECKING:
    from bench.scenarios import Measured
    from bench.servers import Emulator
    from bench.world import Seeded

ROOT = Path(__file__).resolve().parents[1]
PEER_ORDER = ("baseline", "c7n-org", "engine", "dags_test")


@dataclass(frozen=True)
class Peers:
    """
    The tools side by side (issue 13): ``world`` seeded once on an emulator of its own; on each of its
    first ``subsets`` accounts every tool, interleaved, ``repeats`` times (the median's run counts), at
    ``latency_ms`` added by the gateway, which lets ``upstream_limit`` calls at a time reach moto.
    """

    world: WorldSpec
    subsets: tuple[int, ...]
    tools: tuple[str, ...] = PEER_ORDER
    repeats: int = 3
    latency_ms: float = 100.0
    upstream_limit: int | None = 4


@dataclass(frozen=True)
class Profile:
    """What one ``bench.run`` measures."""

    name: str
    peers: tuple[Peers, ...]
    volume_world: WorldSpec | None  # engine vs floor at 0 ms (emulator-bound)
    orchestrated_accounts: int  # 0: skip; else a real-scheduler run on the first N of the largest peer world
    merge_parts: int  # parts of 1,000 rows (the merge is measured at 10% and 100% of them)
    parse_repeats: int
    mapping_accounts: int = 0  # 0: skip; else a run expanding this many accounts (> max_map_length)
    concurrency: int = 16  # the engine's accounts at a time (the DAG's default max active accounts)
    import_repeats: int = 3  # the import floor's fresh processes
    create_c7n_venv: bool = True  # False: c7n-org is skipped when its venv is absent
    tuning: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict)  # parameters of registered steps and sections


ISSUE13_WORLDS = (
    # The 2015 post's size; instances launched one at a time (one reservation each, its own Name).
    Peers(WorldSpec(4, DEFAULT_REGIONS, 10, one_per_instance=True), (4,)),
    Peers(WorldSpec(100, DEFAULT_REGIONS, 5, one_per_instance=True), (20, 100)),
)

PROFILES: dict[str, Profile] = {
    "full": Profile(
        name="full",
        peers=ISSUE13_WORLDS,
        volume_world=WorldSpec(20, DEFAULT_REGIONS, 100),
        orchestrated_accounts=100,
        merge_parts=1000,
        parse_repeats=7,
        mapping_accounts=1500,
        # bench.orchestrated's sections: 1,000 accounts under the scheduler, and the floor DAG at that size
        extra={"scale_world": WorldSpec(1000, DEFAULT_REGIONS, 1), "scale_floor": True},
    ),
    "quick": Profile(
        name="quick",
        peers=(
            Peers(WorldSpec(4, DEFAULT_REGIONS, 10, one_per_instance=True), (4,), repeats=1),
            Peers(WorldSpec(20, DEFAULT_REGIONS, 5, one_per_instance=True), (20,), repeats=1),
        ),
        volume_world=WorldSpec(5, DEFAULT_REGIONS, 100),
        orchestrated_accounts=20,
        merge_parts=100,
        parse_repeats=3,
        import_repeats=1,
        extra={"scale_world": WorldSpec(50, DEFAULT_REGIONS, 1)},  # the 1,000-account path, smaller
    ),
    "smoke": Profile(
        name="smoke",
        peers=(
            Peers(
                WorldSpec(3, DEFAULT_REGIONS[:2], 3, one_per_instance=True),
                (3,),
                repeats=1,
                latency_ms=20.0,
                upstream_limit=2,
            ),
        ),
        volume_world=None,
        orchestrated_accounts=0,
        merge_parts=10,
        parse_repeats=1,
        concurrency=2,
        import_repeats=1,
        create_c7n_venv=False,
        tuning=False,
    ),
}


@dataclass
class Context:
    """What the steps of one run share: the profile, the section filter, the results, lazily made things."""

    profile: Profile
    only: set[str] | None
    results: dict[str, Any]
    shared: dict[str, Any] = field(default_factory=dict)  # e.g. the c7n-org binary, the dags test homes

    def wanted(self, name: str) -> bool:
        """Whether ``--only`` leaves this section in."""
        return self.only is None or name in self.only

    def step(self, label: str) -> Any:
        """A progress line with the elapsed time."""
        from bench import scenarios

        return scenarios.timed(label)


PeerTool = Callable[["Emulator", "Seeded", Peers, Context], "Measured"]
"""Measure one tool once on a seeded world (the gateway's latency is the tool's to set, from ``Peers``)."""


def _baseline(emu: Emulator, seeded: Seeded, peers: Peers, ctx: Context) -> Measured:
    from bench import scenarios

    return scenarios.run_baseline(emu, seeded, peers.latency_ms)


def _engine(emu: Emulator, seeded: Seeded, peers: Peers, ctx: Context) -> Measured:
    from bench import scenarios

    return scenarios.run_engine(emu, seeded, peers.latency_ms, ctx.profile.concurrency)


def _c7n(emu: Emulator, seeded: Seeded, peers: Peers, ctx: Context) -> Measured:
    from bench import c7n

    if "c7n" not in ctx.shared:  # made (or found missing) once per run
        try:
            binary = c7n.ensure_venv(create=ctx.profile.create_c7n_venv)
            ctx.shared["c7n"] = (binary, c7n.default_workers(binary), None)
            ctx.results["machine"]["versions_c7n"] = c7n.versions(binary)
        except c7n.Skipped as skipped:
            ctx.shared["c7n"] = (None, 0, skipped)
    binary, workers, skipped = ctx.shared["c7n"]
    if skipped is not None:
        raise skipped
    return c7n.run_c7n(emu, seeded, peers.latency_ms, binary, workers)


def _dags_test(emu: Emulator, seeded: Seeded, peers: Peers, ctx: Context) -> Measured:
    from bench import scenarios

    if "dags_test_homes" not in ctx.shared:
        ctx.shared["dags_test_homes"] = scenarios.DagsTestHomes()
    return scenarios.run_dags_test(emu, seeded, peers.latency_ms, ctx.shared["dags_test_homes"])


# Extension point: a tool measured on every peer world whose ``Peers.tools`` names it.
PEER_TOOLS: dict[str, PeerTool] = {
    "baseline": _baseline,
    "c7n-org": _c7n,
    "engine": _engine,
    "dags_test": _dags_test,
}

WorldStep = Callable[["Emulator", "Seeded", Peers, Context], None]
"""After the peers, on the same emulator and seeded world (the gateway still limited): adds results."""


def _orchestrated(emu: Emulator, world: Seeded, peers: Peers, ctx: Context) -> None:
    """The real scheduler's run on the first ``orchestrated_accounts`` of the first world that has them."""
    accounts = ctx.profile.orchestrated_accounts
    if not (ctx.wanted("orchestrated") and accounts) or world.spec.accounts < accounts:
        return
    if ctx.shared.get("orchestrated_done"):
        return
    ctx.shared["orchestrated_done"] = True
    from bench.orchestrated import run_orchestrated

    target = world.subset(accounts)
    with ctx.step(f"orchestrated {target.spec.label} at {peers.latency_ms:g} ms"):
        measured = run_orchestrated(emu, target, peers.latency_ms, concurrency=ctx.profile.concurrency)
        measured.details["upstream_limit"] = peers.upstream_limit
        ctx.results["runs"].append(measured.to_dict())


# Extension point: measurements on each peer world's emulator, in order, after its peers.
WORLD_STEPS: list[WorldStep] = [_orchestrated]


def _failed(name: str, seeded: Seeded, latency_ms: float, err: BaseException) -> Measured:
    """A run that crashed: reported as wrong, the bench goes on."""
    from bench.scenarios import Measured
    from bench.world import Verdict

    problem = f"{type(err).__name__}: {str(err)[-600:]}".replace("\n", " ")
    return Measured(name, seeded.spec.label, latency_ms, 0.0, Verdict(False, 0, [problem]))


def run_peers(ctx: Context) -> None:
    """Every peer world: seed, floors, the tools interleaved ``repeats`` times (medians), the world steps."""
    from bench import scenarios
    from bench.servers import Emulator
    from bench.world import seed

    profile, results = ctx.profile, ctx.results
    if ctx.wanted("peers"):
        with ctx.step("import floor (a fresh process importing AwsBaseHook)"):
            results["import_floor"] = scenarios.run_import_floor(profile.import_repeats)
    for peers in profile.peers:
        with Emulator() as emu:
            with ctx.step(f"seed {peers.world.label}"):
                world = seed(emu.moto_url, peers.world)
            results.setdefault("seeds", []).append(
                {"world": peers.world.label, "seconds": world.seconds, **_world_facts(peers.world)}
            )
            for accounts in peers.subsets if ctx.wanted("peers") else ():
                _measure_subset(ctx, emu, peers, world.subset(accounts))
            scenarios.set_upstream_limit(emu, peers.upstream_limit)
            for world_step in WORLD_STEPS:
                world_step(emu, world, peers, ctx)
            scenarios.set_upstream_limit(emu, None)


def _measure_subset(ctx: Context, emu: Emulator, peers: Peers, part: Seeded) -> None:
    """One peer world: its floor, then every tool, interleaved, ``repeats`` times; the medians count."""
    from bench import scenarios

    profile, results = ctx.profile, ctx.results
    label = part.spec.label
    with ctx.step(f"floor {label} (emulator capacity)"):
        cap = scenarios.capacity(emu, part, profile.concurrency)
    floor = scenarios.floor_of(cap, part, profile.concurrency, peers.latency_ms)
    results["floors"].append(
        {
            "world": label,
            "latency_ms": peers.latency_ms,
            **floor,
            "capacity": cap.to_dict(),
            "concurrency": profile.concurrency,
        }
    )
    scenarios.set_upstream_limit(emu, peers.upstream_limit)
    skipped = results["skipped"].setdefault(label, {})
    measured: dict[str, list[Measured]] = {}
    for repeat in range(max(1, peers.repeats)):
        for tool in peers.tools:
            if tool in skipped:
                continue
            with ctx.step(f"{tool} {label} at {peers.latency_ms:g} ms ({repeat + 1}/{peers.repeats})"):
                try:
                    run = PEER_TOOLS[tool](emu, part, peers, ctx)
                except scenarios.Skipped as why:
                    skipped[tool] = str(why)
                    continue
                except Exception as err:  # a crashed run is a wrong run; the bench goes on
                    run = _failed(tool, part, peers.latency_ms, err)
            run.details.update(
                peer=True, upstream_limit=peers.upstream_limit, one_per_instance=part.spec.one_per_instance
            )
            measured.setdefault(tool, []).append(run)
    if not skipped:
        del results["skipped"][label]
    for tool in peers.tools:
        if measured.get(tool):
            results["runs"].append(scenarios.median_of(measured[tool], key="process_wall").to_dict())


def _world_facts(spec: WorldSpec) -> dict[str, Any]:
    return {"instances": spec.instance_count, "one_per_instance": spec.one_per_instance}


def run_volume(ctx: Context) -> None:
    """The volume-bound world at 0 ms: engine and baseline against moto's own capacity."""
    from bench import scenarios
    from bench.servers import Emulator
    from bench.world import seed

    spec, concurrency = ctx.profile.volume_world, ctx.profile.concurrency
    if spec is None:
        return
    with Emulator() as emu:
        with ctx.step(f"seed {spec.label}"):
            world = seed(emu.moto_url, spec)
        with ctx.step("floor (emulator capacity)"):
            cap = scenarios.capacity(emu, world, concurrency)
        floor = scenarios.floor_of(cap, world, concurrency, 0.0)
        ctx.results["floors"].append(
            {"world": world.spec.label, "latency_ms": 0.0, **floor, "capacity": cap.to_dict()}
        )
        with ctx.step(f"engine {world.spec.label} at 0 ms"):
            ctx.results["runs"].append(scenarios.run_engine(emu, world, 0.0, concurrency).to_dict())
        with ctx.step(f"baseline {world.spec.label} at 0 ms"):
            ctx.results["runs"].append(scenarios.run_baseline(emu, world, 0.0).to_dict())


def run_merge(ctx: Context) -> None:
    """The merge at 10% and 100% of the profile's parts."""
    from bench import scenarios

    with ctx.step(f"merge {ctx.profile.merge_parts} parts of 1,000 rows"):
        ctx.results["merge"] = scenarios.run_merges(ctx.profile.merge_parts)


def run_parse(ctx: Context) -> None:
    """The DAG file's import time."""
    from bench import scenarios

    with ctx.step("parse"):
        ctx.results["parse"] = scenarios.run_parse(ctx.profile.parse_repeats)


def run_mapping(ctx: Context) -> None:
    """More accounts than ``max_map_length``."""
    from bench import scenarios

    if ctx.profile.mapping_accounts:
        with ctx.step(f"mapping {ctx.profile.mapping_accounts} accounts"):
            ctx.results["mapping"] = scenarios.run_mapping(ctx.profile.mapping_accounts)


def run_airflow_floor(ctx: Context) -> None:
    """The no-op floor DAG under the scheduler, as many mapped tasks as the orchestrated run."""
    from bench.orchestrated import airflow_floor_section

    airflow_floor_section(ctx)


def run_scale(ctx: Context) -> None:
    """``extra["scale_world"]`` (1,000 accounts) under the scheduler, with the UI's answers at that size."""
    from bench.orchestrated import scale_section

    scale_section(ctx)


def run_tuning(ctx: Context) -> None:
    """Each botocore tuning piece with and without."""
    if ctx.profile.tuning:
        from bench import tuning

        with ctx.step("tuning"):
            ctx.results["tuning"] = tuning.measure()


@dataclass(frozen=True)
class Section:
    """A named part of the benchmark (``--only`` selects by name)."""

    name: str
    run: Callable[[Context], None]


# Extension point: the sections, in order (a registered one adds its results; report.py renders them).
SECTIONS: list[Section] = [
    Section("peers", run_peers),
    Section("airflow_floor", run_airflow_floor),  # right after the peers' orchestrated run: same conditions
    Section("scale", run_scale),
    Section("volume", run_volume),
    Section("merge", run_merge),
    Section("parse", run_parse),
    Section("mapping", run_mapping),
    Section("tuning", run_tuning),
]


def machine() -> dict[str, Any]:
    """Where and when the numbers were taken."""
    from importlib.metadata import version

    import psutil

    versions = {
        name: version(name) for name in ("apache-airflow", "apache-airflow-providers-amazon", "boto3", "moto")
    }
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
    results: dict[str, Any] = {"profile": profile.name, "machine": machine(), "runs": [], "floors": []}
    results["skipped"] = {}  # world -> tool -> why
    ctx = Context(profile, only, results)
    try:
        for section in SECTIONS:
            # "orchestrated" is a world step of the peers: --only orchestrated runs the peer worlds for it
            if ctx.wanted(section.name) or (section.name == "peers" and ctx.wanted("orchestrated")):
                section.run(ctx)
    finally:
        homes = ctx.shared.get("dags_test_homes")
        if homes is not None:
            homes.close()
    results["machine"]["load_end"] = os.getloadavg()
    return results


def main(argv: list[str] | None = None) -> int:
    """Run a profile, write the Markdown (and the raw JSON), print the table."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated: " + ",".join([*(s.name for s in SECTIONS), "orchestrated"]),
    )
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="the Markdown report")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "latest.json"), help="raw results")
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    only = {s.strip() for s in args.only.split(",") if s.strip()} or None
    known = {s.name for s in SECTIONS} | {"orchestrated"}
    if only and only - known:
        parser.error(f"unknown sections {sorted(only - known)}; known: {sorted(known)}")
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
