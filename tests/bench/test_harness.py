"""
The benchmark harness checks itself: a fast wrong answer must never count. Pure checks of the CSV
verdicts and the report, then the ``smoke`` profile end to end (3 accounts x 2 regions x 3 instances,
seconds) and an engine run that misses an account, which the harness must call wrong.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from bench import report
from bench.floor import critical_path
from bench.world import DEFAULT_REGIONS, LEGACY_COLUMNS, Seeded, WorldSpec, verify_csv
from include.cmdb_inventory.contract import COLUMNS
from include.cmdb_inventory.records import neutralise
from include.cmdb_inventory.storage import rows_to_csv

pytestmark = pytest.mark.xdist_group("bench")

SPEC = WorldSpec(2, ("eu-west-1", "us-east-1"), 2)


def hand_seeded() -> Seeded:
    """A seeded world written down by hand (no emulator)."""
    names = {"111111111111": "Payer", "200000000001": "bench-00001"}
    instances = {
        (account, region): [f"i-{account[-2:]}{region[:2]}{n}" for n in range(SPEC.instances)]
        for account in names
        for region in SPEC.regions
    }
    return Seeded(spec=SPEC, names=names, instances=instances)


def product_rows(seeded: Seeded) -> list[dict[str, str]]:
    """What a correct inventory lists, sorted as the contract says."""
    rows = [
        {
            "Account": account,
            "Region": region,
            "InstanceId": iid,
            "Name": SPEC.server_name(account, region),
            "AccountName": seeded.names[account],
            "State": "running",
        }
        for (account, region), ids in seeded.instances.items()
        for iid in ids
    ]
    return sorted(rows, key=lambda r: (r["Account"], r["Region"], r["InstanceId"]))


def as_csv(rows: list[dict[str, str]]) -> bytes:
    out = io.StringIO()
    rows_to_csv(rows, out)
    return out.getvalue().encode()


def test_a_correct_inventory_passes() -> None:
    seeded = hand_seeded()
    verdict = verify_csv(as_csv(product_rows(seeded)), seeded)
    assert verdict.ok, verdict.problems
    assert verdict.rows == SPEC.instance_count == 8
    assert verdict.summary() == "ok (8 rows)"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        pytest.param(lambda rows: rows[1:], "missing", id="a-row-missing"),
        pytest.param(lambda rows: [*rows, rows[0]], "listed twice", id="a-row-twice"),
        pytest.param(lambda rows: list(reversed(rows)), "not sorted", id="unsorted"),
        pytest.param(
            lambda rows: [{**rows[0], "InstanceId": "i-unseeded"}, *rows[1:]], "was not seeded", id="unseeded"
        ),
        pytest.param(
            lambda rows: [{**rows[0], "Region": "us-east-1"}, *rows[1:]], "expected", id="wrong-region"
        ),
        pytest.param(
            lambda rows: [{**rows[0], "Account": "200000000001"}, *rows[1:]], "expected", id="wrong-account"
        ),
        pytest.param(lambda rows: [{**rows[0], "Name": "other"}, *rows[1:]], "expected", id="wrong-name"),
        pytest.param(
            lambda rows: [{**rows[0], "AccountName": "x"}, *rows[1:]], "AccountName", id="wrong-name-col"
        ),
        pytest.param(lambda rows: [{**rows[0], "State": "stopped"}, *rows[1:]], "State", id="wrong-state"),
    ],
)
def test_a_wrong_inventory_fails(change: Any, problem: str) -> None:
    seeded = hand_seeded()
    rows = product_rows(seeded)
    verdict = verify_csv(as_csv(change(rows)), seeded)
    assert not verdict.ok
    assert any(problem in p for p in verdict.problems), verdict.problems
    assert verdict.summary().startswith("WRONG")


def test_names_must_be_neutralised_in_the_product_but_not_in_the_2015_csv() -> None:
    seeded = hand_seeded()
    rows = product_rows(seeded)
    assert rows[0]["Name"].startswith("=")  # the world's names are formula triggers on purpose
    raw = io.StringIO()
    raw.write(",".join(COLUMNS) + "\r\n")
    for row in rows:  # not neutralised: the product's contract is broken
        raw.write(",".join(row.get(c, "") for c in COLUMNS) + "\r\n")
    assert not verify_csv(raw.getvalue().encode(), seeded).ok

    legacy = "Account,Region,InstanceId,Name\r\n" + "".join(
        f"{r['Account']},{r['Region']},{r['InstanceId']},{r['Name']}\r\n" for r in reversed(rows)
    )
    assert verify_csv(legacy.encode(), seeded, columns=LEGACY_COLUMNS, product=False).ok
    neutralised = legacy.replace(",=", ",'=")
    assert neutralise("=x") == "'=x"
    assert not verify_csv(neutralised.encode(), seeded, columns=LEGACY_COLUMNS, product=False).ok


def test_a_wrong_header_fails() -> None:
    seeded = hand_seeded()
    body = as_csv(product_rows(seeded)).replace(b"Account,Region", b"Region,Account", 1)
    verdict = verify_csv(body, seeded)
    assert not verdict.ok
    assert "header" in verdict.problems[0]


def test_the_latency_critical_path_counts_waves_of_accounts() -> None:
    # 20 accounts at 16 at a time: two waves of AssumeRole + DescribeRegions + one page, at 100 ms.
    assert critical_path(20, 16, 1, 0.1) == pytest.approx(0.6)
    assert critical_path(16, 16, 1, 0.1) == pytest.approx(0.3)
    assert critical_path(100, 16, 2, 0.1) == pytest.approx(7 * 4 * 0.1)
    assert critical_path(5, 16, 1, 0.0) == 0.0


def fake_results(engine_ok: bool) -> dict[str, Any]:
    world = report.LATENCY_WORLD[0]

    def run(name: str, wall: float, ok: bool) -> dict[str, Any]:
        return {
            "name": name,
            "world": world,
            "latency_ms": 100.0,
            "wall": wall,
            "verified": ok,
            "verdict": "ok" if ok else "WRONG",
            "cpu": 1.0,
            "moto_cpu": 1.0,
            "gateway_cpu": 0.1,
            "calls": 10,
            "details": {"accounts": 20, "by_action": {"ec2:DescribeInstances": 340}},
        }

    return {
        "machine": {
            "date": "2026-11-26 00:00 UTC",
            "cores": 2,
            "memory_gib": 24,
            "python": "3.11",
            "versions": {"moto": "5"},
            "load_start": (0.0, 0.0, 0.0),
        },
        "runs": [run("engine", 1.0, engine_ok), run("baseline", 40.0, True)],
        "floors": [
            {
                "world": world,
                "latency_ms": 100.0,
                "floor": 0.9,
                "critical_path": 0.6,
                "emulator_cpu": 0.9,
                "capacity": {"requests_per_second": 70.0, "wall": 1.0},
            }
        ],
    }


def test_the_report_counts_only_verified_runs() -> None:
    good = report.targets(fake_results(engine_ok=True))
    assert [met for *_, met in good] == [True, True]
    bad = report.targets(fake_results(engine_ok=False))
    assert bad == []  # a wrong engine answer gives no speed-up and no ratio to the floor
    text = report.render(fake_results(engine_ok=False), command="test")
    assert "| engine | 20 x 17 x 5 | 100 ms | 1.00 | - |" in text


# --- the harness end to end, on the emulator ------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """``python -m bench.run --profile smoke`` (3 x 2 x 3, engine, baseline, floor, merge, parse)."""
    from bench.run import main

    out = tmp_path_factory.mktemp("bench")
    code = main(["--profile", "smoke", "--out", str(out / "B.md"), "--json", str(out / "r.json")])
    assert code == 0
    return json.loads((out / "r.json").read_text()), (out / "B.md").read_text()


def test_the_smoke_benchmark_verifies_every_run(smoke_results: tuple[dict[str, Any], str]) -> None:
    results, markdown = smoke_results
    runs = {(r["name"], r["latency_ms"]): r for r in results["runs"]}
    assert set(runs) == {("engine", 0.0), ("engine", 20.0), ("baseline", 20.0)}
    for run in runs.values():
        assert run["verified"], run["verdict"]
        assert run["verdict"] == "ok (18 rows)"
        assert run["calls"] > 0
        assert run["wall"] > 0
    engine = runs[("engine", 20.0)]["details"]
    # One AssumeRole of the hub role for the whole process, one of CMDBDiscovery per account.
    assert engine["assume_role_by_role"] == {"CMDBApplication": 1, "CMDBDiscovery": 3}
    assert engine["by_action"]["ec2:DescribeInstances"] == 3 * 2
    assert runs[("baseline", 20.0)]["details"]["by_action"] == {
        "ec2:DescribeInstances": 6,
        "sts:AssumeRole": 4,
    }
    floors = {f["latency_ms"]: f for f in results["floors"]}
    assert floors[20.0]["critical_path"] == pytest.approx(2 * 3 * 0.02)  # 3 accounts, 2 at a time
    assert floors[0.0]["capacity"]["calls"] == 3 * (2 + 2)
    assert all(m["verified"] for m in results["merge"])
    assert [m["rows"] for m in results["merge"]] == [1000, 10000]
    assert results["parse"]["file"]["heavy"] == []
    assert results["parse"]["cold"]["heavy"] == []
    for heading in ("## Targets", "## Engine, baseline and floor", "## Floors", "## Merge", "## Parse"):
        assert heading in markdown
    assert "2 cores" in markdown or f"{results['machine']['cores']} cores" in markdown


def test_a_wrong_answer_is_caught_on_the_emulator() -> None:
    """An engine run that leaves out one account is fast, and wrong: the harness says so."""
    from bench import scenarios
    from bench.servers import Emulator
    from bench.world import seed

    with Emulator() as emu:
        seeded = seed(emu.moto_url, WorldSpec(3, DEFAULT_REGIONS[:2], 3))
        short = [{"id": a, "name": n} for a, n in list(seeded.names.items())[:2]]
        measured = scenarios.run_engine(emu, seeded, 0.0, 2, variable_extra={"accounts": short})
    assert not measured.verdict.ok
    assert measured.verdict.rows == 12
    assert "6 seeded instances missing" in measured.verdict.problems
    assert measured.to_dict()["verified"] is False
