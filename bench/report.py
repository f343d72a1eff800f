"""The Markdown of ``BENCHMARKS.md``: the targets, then every measured run, floor, merge and parse."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

TARGETS = {
    # issue 13, at the 2015 post's size (4 x 17 x 10, 100 ms, 4 calls at a time reaching moto)
    "engine_floor": 1.3,  # engine within this many times its floor (one Airflow import + the scan's floor)
    "vs_serial": 2.0,  # engine at least this many times faster than the serial 2015 algorithm
    "vs_c7n": 4.0,  # engine at least this many times faster than c7n-org
    "dags_test_vs_serial": 1.0,  # `airflow dags test` no slower than the serial algorithm
    # issue 13, 100 x 17 x 5 under the scheduler (bench-airflow's runs)
    "scheduler_seconds": 90.0,
    "scheduler_cpu_vs_floor": 1.2,  # Airflow CPU per mapped task vs the no-op floor DAG's
    # met before, kept
    "volume_floor": 1.25,  # engine vs floor, volume-bound world
    "merge_seconds": 20.0,
    "merge_rss_mb": 150.0,
    "parse_ms": 50.0,
}
POST_WORLD = ("4 x 17 x 10", 100.0)  # the 2015 post's size
VOLUME_WORLD = ("20 x 17 x 100", 0.0)
ORCHESTRATED_WORLD = ("100 x 17 x 5", 100.0)
NOT_MEASURED = "not measured"
TOOL_LABELS = {
    "baseline": "the 2015 algorithm, serial (boto3)",
    "c7n-org": "Cloud Custodian c7n-org",
    "engine": "this project, engine (`bench.engine`, accounts in parallel)",
    "dags_test": "this project, `airflow dags test` end to end",
}

Row = tuple[str, str, str, bool | None]
"""(target, goal, measured, met): met is None when it could not be measured."""


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _find(runs: list[Mapping[str, Any]], name: str, world: str, latency: float) -> Mapping[str, Any] | None:
    for run in runs:
        if run["name"] == name and run["world"] == world and float(run["latency_ms"]) == latency:
            return run
    return None


def _same_accounts(runs: list[Mapping[str, Any]], like: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """An engine run at the same latency on accounts like ``like``'s (same regions and instances each)."""
    shape = like["world"].split(" x ", 1)[1]
    for run in runs:
        if (
            run["name"] == "engine"
            and run["world"].split(" x ", 1)[1] == shape
            and float(run["latency_ms"]) == float(like["latency_ms"])
        ):
            return run
    return None


def _floor(floors: list[Mapping[str, Any]], world: str, latency: float) -> Mapping[str, Any] | None:
    for floor in floors:
        if floor["world"] == world and float(floor["latency_ms"]) == latency:
            return floor
    return None


def _verified_wall(run: Mapping[str, Any] | None) -> float | None:
    """A wall time counts only when the run's output was right."""
    return float(run["wall"]) if run and run["verified"] else None


def process_wall(run: Mapping[str, Any] | None) -> float | None:
    """
    A peer's wall time as a user timing the command sees it (spawn to exit; c7n-org: run + report), and
    only when its output was right.
    """
    if not run or not run["verified"]:
        return None
    return float(run["details"].get("process_wall", run["wall"]))


def process_cpu(run: Mapping[str, Any]) -> float:
    """CPU seconds of the run's processes (all of them, imports included)."""
    return float(run["details"].get("process_cpu", run["cpu"]))


def _range(walls: list[float]) -> str:
    return f" (median of {len(walls)}: {_f(min(walls), 2)}-{_f(max(walls), 2)})"


def _met(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "**no**")


def _why_missing(run: Mapping[str, Any] | None, what: str) -> str:
    """``not measured`` and why: no such run, or its CSV was wrong."""
    if run is None:
        return f"{NOT_MEASURED} ({what}: no run)"
    return f"{NOT_MEASURED} ({what}: {run['verdict']})"


def engine_floor(results: Mapping[str, Any], world: str, latency: float) -> dict[str, float] | None:
    """
    The engine's floor in a process of its own: one Airflow import (a fresh process importing the
    provider's hook) plus the scan's floor (the larger of the latency critical path and moto's CPU for
    the scan's calls).
    """
    floor, imported = _floor(results.get("floors", []), world, latency), results.get("import_floor")
    if not floor or not imported:
        return None
    return {
        **{k: v for k, v in floor.items() if isinstance(v, (int, float))},
        "scan_floor": float(floor["floor"]),
        "import": float(imported["wall"]),
        "floor": float(imported["wall"]) + float(floor["floor"]),
    }


def peer_targets(results: Mapping[str, Any]) -> list[Row]:
    """Issue 13's targets at the 2015 post's size."""
    runs = results.get("runs", [])
    world, latency = POST_WORLD
    at = f"{world} at {latency:g} ms"
    engine, baseline = _find(runs, "engine", world, latency), _find(runs, "baseline", world, latency)
    c7n, dags = _find(runs, "c7n-org", world, latency), _find(runs, "dags_test", world, latency)
    e, b, c, d = (process_wall(r) for r in (engine, baseline, c7n, dags))
    floor = engine_floor(results, world, latency)
    rows: list[Row] = []
    goal = f"≤ {TARGETS['engine_floor']:g}x its floor"
    if e is None:
        rows.append(
            (f"{at}: engine vs its floor", goal, _why_missing(engine, "engine"), False if engine else None)
        )
    elif floor is None:
        rows.append((f"{at}: engine vs its floor", goal, f"{NOT_MEASURED} (no floor)", None))
    else:
        ratio = e / floor["floor"]
        rows.append(
            (
                f"{at}: engine vs its floor",
                goal,
                f"{ratio:.2f}x ({_f(e, 2)} s vs {_f(floor['floor'], 2)} s = import "
                f"{_f(floor['import'], 2)} + max(critical path {_f(floor['critical_path'], 2)}, "
                f"moto CPU {_f(floor['emulator_cpu'], 2)}))",
                ratio <= TARGETS["engine_floor"],
            )
        )
    for label, peer, p, key in (
        ("the serial 2015 algorithm", baseline, b, "vs_serial"),
        ("c7n-org", c7n, c, "vs_c7n"),
    ):
        goal = f"≥ {TARGETS[key]:g}x faster"
        name = f"{at}: engine vs {label}"
        if e is None:
            rows.append((name, goal, _why_missing(engine, "engine"), False if engine else None))
        elif p is None:
            why = results.get("skipped", {}).get(world, {}).get(peer["name"] if peer else "c7n-org")
            rows.append((name, goal, f"{NOT_MEASURED} ({why})" if why else _why_missing(peer, label), None))
        else:
            rows.append((name, goal, f"{p / e:.2f}x ({_f(p, 2)} s vs {_f(e, 2)} s)", p / e >= TARGETS[key]))
    name, goal = f"{at}: `airflow dags test` vs the serial 2015 algorithm", "no slower"
    if d is None:
        rows.append((name, goal, _why_missing(dags, "airflow dags test"), False if dags else None))
    elif b is None:
        rows.append((name, goal, _why_missing(baseline, "the serial algorithm"), None))
    else:
        rows.append((name, goal, f"{d / b:.2f}x its time ({_f(d, 2)} s vs {_f(b, 2)} s)", d <= b))
    return rows


def _airflow_floor(results: Mapping[str, Any], mapped_tasks: int | None) -> Mapping[str, Any] | None:
    """
    The no-op floor DAG's run with as many mapped tasks: a run named ``airflow_floor`` in ``runs``
    (``details.cpu_per_mapped_task`` and ``details.mapped_tasks``), or ``results["airflow_floor"]`` (one
    such dict, or a list of them, with those keys at the top or under ``details``).
    """
    found: list[Mapping[str, Any]] = [r for r in results.get("runs", []) if r["name"] == "airflow_floor"]
    extra = results.get("airflow_floor")
    found += extra if isinstance(extra, list) else [extra] if extra else []

    def tasks(entry: Mapping[str, Any]) -> Any:
        return entry.get("details", entry).get("mapped_tasks")

    same = [f for f in found if mapped_tasks is not None and tasks(f) == mapped_tasks]
    return (same or (found if len(found) == 1 else []) or [None])[0]


def scheduler_targets(results: Mapping[str, Any]) -> list[Row]:
    """Issue 13's targets under the real scheduler, from the ``orchestrated`` and Airflow floor runs."""
    world, latency = ORCHESTRATED_WORLD
    run = _find(results.get("runs", []), "orchestrated", world, latency)
    at = f"{world} at {latency:g} ms under the scheduler"
    o = _verified_wall(run)
    rows: list[Row] = []
    goal = f"< {TARGETS['scheduler_seconds']:g} s"
    if o is None:
        rows.append((f"{at}: wall", goal, _why_missing(run, "scheduler run"), False if run else None))
    else:
        walls = run["details"].get("walls") or []
        rows.append(
            (
                f"{at}: wall",
                goal,
                f"{_f(o)} s" + (_range(walls) if len(walls) > 1 else ""),
                o < TARGETS["scheduler_seconds"],
            )
        )
    name, goal = (
        f"{at}: Airflow CPU per mapped task",
        f"≤ {TARGETS['scheduler_cpu_vs_floor']:g}x the no-op floor DAG's",
    )
    floor = _airflow_floor(results, run["details"].get("mapped_tasks") if run else None)
    if o is None or run is None:
        rows.append((name, goal, _why_missing(run, "scheduler run"), False if run else None))
    elif floor is None or (floor.get("verified") is False):
        rows.append(
            (name, goal, f"{NOT_MEASURED} (no-op floor DAG: {floor['verdict'] if floor else 'no run'})", None)
        )
    else:
        ours = float(run["details"]["cpu_per_mapped_task"])
        theirs = float(floor.get("details", floor)["cpu_per_mapped_task"])
        ratio = ours / theirs if theirs else float("inf")
        rows.append(
            (
                name,
                goal,
                f"{ratio:.2f}x ({_f(ours, 2)} CPU s vs {_f(theirs, 2)} CPU s)",
                ratio <= TARGETS["scheduler_cpu_vs_floor"],
            )
        )
    return rows


def kept_targets(results: Mapping[str, Any]) -> list[Row]:
    """The targets met before, which must stay met: volume floor, million-row merge, parse time."""
    runs, floors = results.get("runs", []), results.get("floors", [])
    rows: list[Row] = []
    world, latency = VOLUME_WORLD
    engine, floor = _find(runs, "engine", world, latency), _floor(floors, world, latency)
    e = _verified_wall(engine)
    if e and floor and engine:
        ratio, replay = e / floor["floor"], float(floor["capacity"]["wall"])
        rows.append(
            (
                f"volume-bound {world} at 0 ms: engine vs floor",
                f"≤ {TARGETS['volume_floor']:g}x floor",
                f"{ratio:.2f}x ({_f(e)} s vs {_f(floor['floor'])} s; {e / replay:.2f}x moto's own replay "
                f"of the calls, {_f(replay)} s; engine's own CPU {_f(engine['cpu'])} s)",
                ratio <= TARGETS["volume_floor"],
            )
        )
    merges = results.get("merge") or []
    if merges:
        big, small = merges[-1], merges[0]
        ok = (
            big["verified"]
            and big["wall"] < TARGETS["merge_seconds"]
            and big["peak_rss_mb"] < TARGETS["merge_rss_mb"]
        )
        rows.append(
            (
                f"merge of {big['rows']:,} rows",
                f"< {TARGETS['merge_seconds']:g} s, peak RSS < {TARGETS['merge_rss_mb']:g} MB, flat",
                f"{_f(big['wall'])} s, {_f(big['peak_rss_mb'], 0)} MB "
                f"({small['rows']:,} rows: {_f(small['peak_rss_mb'], 0)} MB)",
                ok,
            )
        )
    parse = results.get("parse")
    if parse:
        file = parse["file"]
        rows.append(
            (
                "DAG file import",
                f"< {TARGETS['parse_ms']:g} ms, no boto3/pandas/provider hooks",
                f"{_f(file['median_ms'])} ms (cold: {_f(parse['cold']['median_ms'])} ms); heavy: "
                f"{', '.join(file['heavy']) or 'none'}",
                file["median_ms"] < TARGETS["parse_ms"] and not file["heavy"] and not parse["cold"]["heavy"],
            )
        )
    return rows


def _scale_targets(results: Mapping[str, Any]) -> list[Row]:
    from bench.orchestrated import scale_targets

    return scale_targets(results)


# Extension point: more target rows, each a function of the results (rendered after the built-in ones).
TARGET_ROWS: list[Callable[[Mapping[str, Any]], list[Row]]] = [_scale_targets]


def targets(results: Mapping[str, Any]) -> list[Row]:
    """(target, goal, measured, met) per target: issue 13's (``not measured`` where absent), the kept ones."""
    rows = peer_targets(results) + scheduler_targets(results) + kept_targets(results)
    for extra in TARGET_ROWS:
        rows += extra(results)
    return rows


def gaps(results: Mapping[str, Any]) -> list[str]:
    """Why targets are missed, from this run's own numbers (empty when they are met)."""
    return _post_gaps(results) + _orchestrated_gaps(results)


def _orchestrated_gaps(results: Mapping[str, Any]) -> list[str]:
    world, latency = ORCHESTRATED_WORLD
    run = _find(results.get("runs", []), "orchestrated", world, latency)
    if not run or not run["verified"] or run["wall"] < TARGETS["scheduler_seconds"]:
        return []
    d, cores = run["details"], int(results["machine"]["cores"] or 1)
    used = run["cpu"] + run["moto_cpu"] + run["gateway_cpu"]
    return [
        f"- **Under the scheduler, {world} at {latency:g} ms ({_f(run['wall'])} s).** Airflow's processes "
        f"used {_f(run['cpu'])} CPU s ({_f(d['cpu_per_mapped_task'], 2)} per mapped task, our code "
        f"included), moto {_f(run['moto_cpu'])} and the gateway {_f(run['gateway_cpu'])}: at least "
        f"{_f(used / cores)} s of work per core on this {cores}-core machine. Other processes took "
        f"{_f(d.get('others_cpu'))} CPU s meanwhile (the host stole {_f(d.get('machine_steal'))} s): "
        f"{_f(d.get('machine_busy'))} busy CPU s of the {_f(cores * run['wall'])} the run's wall time "
        "offered.",
    ]


def _post_gaps(results: Mapping[str, Any]) -> list[str]:
    """Where the engine's time went at the post's size, when it missed a target there."""
    runs = results.get("runs", [])
    world, latency = POST_WORLD
    engine = _find(runs, "engine", world, latency)
    e, floor = process_wall(engine), engine_floor(results, world, latency)
    if engine is None or e is None or floor is None:
        return []
    missed = [row for row in peer_targets(results) if row[3] is False]
    if not missed:
        return []
    d = engine["details"]
    before = e - float(engine["wall"])
    lines = [
        f"- **The engine at {world}, {latency:g} ms ({_f(e, 2)} s spawn to exit).** "
        f"{_f(before, 2)} s before its first step (Python and imports: {_f(d.get('import_seconds'), 2)} "
        f"s; a bare `AwsBaseHook` import takes {_f(floor['import'], 2)} s), then resolve "
        f"{_f(d.get('resolve_wall'), 2)} s, scan {_f(d.get('scan_wall'), 2)} s (moto busy "
        f"{_f(engine['moto_cpu'], 2)} CPU s for the run's {engine['calls']} calls; the scan's own calls "
        f"need {_f(floor['emulator_cpu'], 2)} s of it, the latency critical path "
        f"{_f(floor['critical_path'], 2)} s), merge {_f(d.get('merge_wall'), 2)} s. Its processes used "
        f"{_f(process_cpu(engine), 1)} CPU s on the {results['machine']['cores']} cores it shares with moto "
        f"and the gateway ({_f(engine['gateway_cpu'], 1)} s).",
    ]
    for name in ("baseline", "c7n-org", "dags_test"):
        peer = _find(runs, name, world, latency)
        if peer and peer["verified"]:
            lines.append(
                f"- {TOOL_LABELS[name]}: {_f(process_wall(peer), 2)} s, {_f(process_cpu(peer), 1)} CPU s, "
                f"{peer['calls']} calls, moto busy {_f(peer['moto_cpu'], 1)} CPU s."
            )
    return lines


def peers_section(results: Mapping[str, Any]) -> list[str]:
    """The side-by-side tables: every peer world, every tool, medians of the repeats."""
    runs = [r for r in results.get("runs", []) if r["details"].get("peer")]
    skipped: Mapping[str, Mapping[str, str]] = results.get("skipped", {})
    worlds = list(dict.fromkeys([*(r["world"] for r in runs), *skipped]))
    if not worlds:
        return []
    versions = results["machine"].get("versions_c7n", {})
    out = ["", "## Side by side: the 2015 algorithm, c7n-org, the engine, `airflow dags test`", ""]
    out.append(
        "The same seeded world, the same gateway for every tool: each call delayed by the added latency, at "
        "most the stated number of calls at a time reaching moto. Every tool installed with compiled "
        "bytecode. *wall*: spawn to exit as a user timing the command sees it (c7n-org: `run` plus `report`, "
        "the time to its CSV); the median run of the repeats counts, the tools run in turn. *CPU*: every "
        "process of the tool (c7n-org's worker processes and `airflow dags test`'s included). *requests*: "
        "through the gateway."
    )
    imported = results.get("import_floor")
    for world in worlds:
        entries = [r for r in runs if r["world"] == world]
        if not entries and not skipped.get(world):
            continue
        latency = float(entries[0]["latency_ms"]) if entries else None
        limit = entries[0]["details"].get("upstream_limit") if entries else None
        one_each = bool(entries and entries[0]["details"].get("one_per_instance"))
        shape = "one reservation per instance, each its own Name" if one_each else "a reservation per region"
        out += [
            "",
            f"### {world} ({shape}) at {_f(latency, 0)} ms, {limit or 'any number of'} calls at a time",
            "",
        ]
        rows = []
        for run in entries:
            d = run["details"]
            label = TOOL_LABELS.get(run["name"], run["name"])
            if run["name"] == "c7n-org" and versions:
                label = f"Cloud Custodian c7n-org {versions.get('c7n-org')} ({d.get('workers')} workers)"
            walls = d.get("process_walls") or []
            wall = process_wall(run)
            rows.append(
                (
                    label,
                    (_f(wall, 2) if wall is not None else "-") + (_range(walls) if len(walls) > 1 else ""),
                    _f(process_cpu(run), 1),
                    run["calls"],
                    _f(run["moto_cpu"], 1),
                    _f(d.get("others_cpu"), 1),
                    run["verdict"],
                )
            )
        for tool, why in skipped.get(world, {}).items():
            rows.append((TOOL_LABELS.get(tool, tool), "skipped", "-", "-", "-", "-", why))
        out += _table(
            ("tool", "wall s", "CPU s", "requests", "moto CPU s", "other processes' CPU s", "CSV check"), rows
        )
        floor = engine_floor(results, world, latency or 0.0)
        if floor:
            out += [
                "",
                f"Engine floor here: {_f(floor['floor'], 2)} s = one Airflow import "
                f"({_f(floor['import'], 2)} s) + the larger of the latency critical path "
                f"({_f(floor['critical_path'], 2)} s at {floor.get('concurrency', '-')} accounts at a time) "
                f"and moto's CPU for the scan's calls ({_f(floor['emulator_cpu'], 2)} s).",
            ]
    if versions:
        out += ["", "c7n-org's venv: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + "."]
    if imported:
        out += [
            "",
            f"Import floor: `{imported['code']}` in a fresh process, {_f(imported['wall'], 2)} s wall, "
            f"{_f(imported['cpu'], 2)} CPU s (median of {len(imported['walls'])}).",
        ]
    return out


def _scheduler_section(results: Mapping[str, Any]) -> list[str]:
    from bench.orchestrated import report_section

    return report_section(results)


# Extension point: more sections, each a function of the results returning Markdown lines (rendered in
# order after the built-in sections, before the calls per account).
SECTIONS: list[Callable[[Mapping[str, Any]], list[str]]] = [_scheduler_section]


def render(results: Mapping[str, Any], command: str) -> str:
    """The whole report."""
    m = results["machine"]
    runs, floors = results.get("runs", []), results.get("floors", [])
    out: list[str] = [
        "# Benchmarks",
        "",
        f"Generated by `make bench` (`{command}`) on {m['date']}: {m['cores']} cores, {m['memory_gib']} GiB, "
        f"Python {m['python']}, " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ". "
        f"Load average (1/5/15 min) at the start {'/'.join(f'{x:.1f}' for x in m['load_start'])}, "
        f"at the end {'/'.join(f'{x:.1f}' for x in m.get('load_end', m['load_start']))} "
        "(other work on the machine slows every number here). "
        f"Total {_f(results.get('seconds'), 0)} s.",
        "",
        "Worlds are *accounts x regions x instances per account and region*, seeded on moto's server (one "
        "process, one interpreter lock), reached through a latency-injecting gateway (another process). "
        "Every run's CSV is checked against the seeded world (every instance exactly once, account, region, "
        "Name and its formula neutralisation, order); a wall time counts only when that check passed.",
        "",
        "## Targets",
        "",
    ]
    out += _table(
        ("target", "goal", "measured", "met"), ((t, g, v, _met(ok)) for t, g, v, ok in targets(results))
    )

    explained = gaps(results)
    if explained:
        out += ["", "Where a target is missed, why (this run's numbers):", "", *explained]
    out += peers_section(results)
    out += ["", "## Every run", ""]
    rows = []
    for run in runs:
        floor = _floor(floors, run["world"], float(run["latency_ms"]))
        wall = _verified_wall(run)
        ratio = f"{wall / floor['floor']:.2f}x" if wall and floor and floor["floor"] else "-"
        d = run["details"]
        phases = " / ".join(_f(d.get(k), 1) for k in ("resolve_wall", "scan_wall", "merge_wall"))
        rows.append(
            (
                run["name"],
                run["world"],
                f"{run['latency_ms']:g} ms",
                _f(run["wall"], 2) + (_range(d["walls"]) if len(d.get("walls", [])) > 1 else ""),
                _f(d.get("process_wall"), 2),
                phases if "scan_wall" in d else "-",
                ratio,
                _f(run["cpu"]),
                _f(run["moto_cpu"]),
                _f(run["gateway_cpu"]),
                _f(d.get("others_cpu")),
                run["calls"],
                run["verdict"],
            )
        )
    out += _table(
        (
            "run",
            "world",
            "added latency",
            "wall s (its own count)",
            "spawn to exit s",
            "resolve / scan / merge s",
            "x floor",
            "own CPU s",
            "moto CPU s",
            "gateway CPU s",
            "other processes' CPU s",
            "calls",
            "CSV check",
        ),
        rows,
    )
    out += [
        "",
        "*wall (its own count)*: the engine and the baseline count from their first step (imports and "
        "set-up before it left out); the others from outside. *spawn to exit*: the process as a user timing "
        "the command sees it. *own CPU*: the measured process after its imports (for `orchestrated`: every "
        "Airflow process, task processes included, and their PostgreSQL; for c7n-org and `airflow dags "
        "test`: every process of theirs). *moto CPU*: moto's server while the run ran. *other processes'*: "
        "everything else the machine ran meanwhile (its contention is in every number). *calls*: requests "
        "through the gateway.",
        "",
        "## Floors",
        "",
        "The floor is the larger of the latency critical path (per account AssumeRole, DescribeRegions and "
        "the longest region's pages in sequence, accounts in waves of the concurrency) and moto's own CPU "
        "seconds for exactly those calls (replayed at full speed straight at moto's server, responses not "
        "parsed): moto answers on one interpreter lock, so no client can get them faster.",
        "",
    ]
    out += _table(
        (
            "world",
            "added latency",
            "critical path s",
            "moto CPU for the calls s",
            "moto req/s (replay)",
            "replay wall s",
            "floor s",
        ),
        (
            (
                f["world"],
                f"{f['latency_ms']:g} ms",
                _f(f["critical_path"], 2),
                _f(f["emulator_cpu"], 2),
                _f(f["capacity"]["requests_per_second"], 0),
                _f(f["capacity"]["wall"], 2),
                _f(f["floor"], 2),
            )
            for f in floors
        ),
    )
    orchestrated = [r for r in runs if r["name"] == "orchestrated"]
    if orchestrated:
        out += ["", "## Orchestrated (real scheduler)", ""]
        rows = []
        for run in orchestrated:
            d = run["details"]
            engine = _find(runs, "engine", run["world"], float(run["latency_ms"])) or _same_accounts(
                runs, run
            )
            engine_task = engine["details"]["account_seconds_median"] if engine else None
            overhead = d["task_seconds_median"] - engine_task if engine_task is not None else None
            rows.append(
                (
                    run["world"],
                    f"{run['latency_ms']:g} ms",
                    _f(run["wall"]),
                    d["mapped_tasks"],
                    f"{d['concurrency']} / {d['parallelism']}",
                    _f(d["scan_phase_seconds"]),
                    _f(d["task_seconds_median"], 2),
                    _f(engine_task, 2),
                    _f(overhead, 2),
                    _f(d["queued_to_start_median"], 2),
                    _f(d["cpu_per_mapped_task"], 2),
                    _f(engine["cpu"] / max(1, engine["details"]["accounts"]), 2) if engine else "-",
                )
            )
        out += _table(
            (
                "world",
                "added latency",
                "wall s (trigger → done)",
                "mapped tasks",
                "max active per run / parallelism",
                "scan phase s",
                "task s (median)",
                "engine per account s",
                "overhead per task s",
                "queued → running s",
                "CPU s per mapped task (all Airflow)",
                "engine CPU s per account",
            ),
            rows,
        )
        out += [
            "",
            "Overhead per mapped task = the median task's duration under the scheduler minus the median "
            "account's time in the engine (accounts of the same size, same latency and concurrency, one "
            "process). CPU per mapped "
            "task = CPU seconds of every Airflow process during the run (scheduler, DAG processor, API "
            "server, executor workers, task processes) divided by the number of mapped tasks.",
        ]
    merges = results.get("merge") or []
    if merges:
        out += ["", "## Merge (SnapshotStore.merge_parts + upload_csv)", ""]
        out += _table(
            (
                "rows",
                "parts",
                "wall s",
                "merge s",
                "upload s",
                "rows/s",
                "peak RSS MB",
                "RSS before merge MB",
                "own CPU s",
                "moto CPU s",
                "check",
            ),
            (
                (
                    f"{x['rows']:,}",
                    x["parts"],
                    _f(x["wall"], 2),
                    _f(x["merge_wall"], 2),
                    _f(x["upload_wall"], 2),
                    _f(x["rows_per_second"], 0),
                    _f(x["peak_rss_mb"], 0),
                    _f(x["rss_before_mb"], 0),
                    _f(x["cpu"], 2),
                    _f(x.get("moto_cpu"), 2),
                    x["verdict"],
                )
                for x in merges
            ),
        )
    parse = results.get("parse")
    if parse:
        out += ["", "## Parse (the DAG file's import)", ""]
        out += _table(
            ("measure", "median ms", "min ms", "max ms", "runs", "heavy modules", "packages it imports"),
            (
                (
                    label,
                    _f(p["median_ms"]),
                    _f(p["min_ms"]),
                    _f(p["max_ms"]),
                    p["repeats"],
                    ", ".join(p["heavy"]) or "none",
                    ", ".join(p["packages_added"]),
                )
                for label, p in (
                    ("file (Airflow's named parts warm)", parse["file"]),
                    ("cold (only airflow.sdk warm)", parse["cold"]),
                )
            ),
        )
    mapping = results.get("mapping")
    if mapping:
        out += ["", f"## Mapping {mapping['accounts']:,} accounts (more than max_map_length)", ""]
        out += _table(
            ("AIRFLOW__CORE__MAX_MAP_LENGTH", "scan_account instances", "map indexes", "task states", "s"),
            (
                (
                    m["max_map_length"],
                    f"{m['scan_instances']:,}",
                    "..".join(str(i) for i in m["map_indexes"]),
                    ", ".join(f"{k} x{v}" for k, v in sorted(m["states"].items())),
                    _f(m["seconds"]),
                )
                for m in (mapping["configured"], mapping["default"])
            ),
        )
        out += [
            "",
            "Airflow's test runner, scans expanded but not executed (`mark_success_pattern`); with the "
            "default, "
            "`resolve_accounts` fails at once, without retries, naming `AIRFLOW__CORE__MAX_MAP_LENGTH`"
            + (" (seen in its log)." if mapping["default"].get("clear_refusal") else "."),
        ]
    for section in SECTIONS:
        out += section(results)
    engines = [r for r in runs if r["name"] == "engine" and r["details"].get("by_action")]
    if engines:
        out += ["", "## Calls per account (engine)", ""]
        actions = sorted({a for r in engines for a in r["details"]["by_action"]})
        out += _table(
            ("world", "added latency", *actions),
            (
                (
                    r["world"],
                    f"{r['latency_ms']:g} ms",
                    *(_f(r["details"]["by_action"].get(a, 0) / r["details"]["accounts"], 2) for a in actions),
                )
                for r in engines
            ),
        )
    out.append("")
    return "\n".join(out)
