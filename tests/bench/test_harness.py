"""
The benchmark harness checks itself: a fast wrong answer must never count. Pure checks of the CSV
verdicts (ours and c7n-org's report), the gateway's limit on calls reaching the emulator and the report's
targets, then the ``smoke`` profile end to end (3 accounts x 2 regions x 3 instances, every peer tool)
and an engine run that misses an account, which the harness must call wrong.
"""

from __future__ import annotations

import csv
import http.client
import io
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from bench import c7n, report, scenarios
from bench.floor import critical_path
from bench.scenarios import Measured
from bench.world import DEFAULT_REGIONS, LEGACY_COLUMNS, Seeded, Verdict, WorldSpec, verify_csv
from devtools.gateway import AwsGateway
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


def test_a_world_of_instances_launched_one_at_a_time_names_each() -> None:
    spec = WorldSpec(2, ("eu-west-1", "us-east-1"), 3, one_per_instance=True)
    servers = spec.servers("111111111111")
    assert [(s.region, s.count) for s in servers] == [("eu-west-1", 1)] * 3 + [("us-east-1", 1)] * 3
    assert len({s.name for s in servers}) == 6
    assert all(s.name.startswith("=srv-111111111111-") for s in servers)  # still formula triggers
    shared = WorldSpec(2, ("eu-west-1",), 3).servers("111111111111")
    assert [(s.name, s.count) for s in shared] == [("=srv-111111111111-eu-west-1", 3)]

    seeded = hand_seeded()
    seeded.instance_names = {iid: f"=own-{iid}" for ids in seeded.instances.values() for iid in ids}
    part = seeded.subset(1)
    assert set(part.instance_names) == {
        i for k, ids in seeded.instances.items() if k[0] == "111111111111" for i in ids
    }
    assert all(name == f"=own-{iid}" for iid, (_, _, name) in part.expected().items())


# --- c7n-org's report, checked like ours -----------------------------------------------------------------


def c7n_report(seeded: Seeded, name: Any = c7n.c7n_csv_name, rows: Any = None) -> bytes:
    """A report CSV as ``c7n-org report --format csv`` writes it (every cell quoted, names neutralised)."""
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL)
    writer.writerow(c7n.REPORT_COLUMNS)
    for account, region, iid, tag in rows if rows is not None else c7n_rows(seeded):
        writer.writerow([account, region, c7n.POLICY_NAME, iid, name(tag)])
    return out.getvalue().encode()


def c7n_rows(seeded: Seeded) -> list[tuple[str, str, str, str]]:
    """What c7n-org lists for the world: per account and region, in no particular order."""
    return [(a, r, iid, n) for iid, (a, r, n) in sorted(seeded.expected().items(), reverse=True)]


def test_c7n_neutralises_formula_triggers_its_own_way() -> None:
    for trigger in ("=", "+", "-", "@", "\t", "\r"):
        assert c7n.c7n_csv_name(f"{trigger}x") == f"'{trigger}x"
    assert c7n.c7n_csv_name("web-1") == "web-1"
    assert c7n.c7n_csv_name("") == ""


def test_a_correct_c7n_report_passes_in_any_order() -> None:
    seeded = hand_seeded()
    verdict = c7n.verify_report(c7n_report(seeded), seeded)
    assert verdict.ok, verdict.problems
    assert verdict.rows == 8


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        pytest.param(lambda rows: rows[1:], "1 seeded instances missing", id="a-row-missing"),
        pytest.param(lambda rows: [*rows, rows[0]], "listed twice", id="a-row-twice"),
        pytest.param(
            lambda rows: [("111111111111", "eu-west-1", "i-x", "=n"), *rows], "not seeded", id="extra"
        ),
        pytest.param(
            lambda rows: [(rows[0][0], "us-west-2", *rows[0][2:]), *rows[1:]], "expected", id="region"
        ),
    ],
)
def test_a_wrong_c7n_report_fails(change: Any, problem: str) -> None:
    seeded = hand_seeded()
    verdict = c7n.verify_report(c7n_report(seeded, rows=change(c7n_rows(seeded))), seeded)
    assert not verdict.ok
    assert any(problem in p for p in verdict.problems), verdict.problems


def test_a_c7n_report_must_neutralise_names_with_c7n_rule_and_name_its_policy() -> None:
    seeded = hand_seeded()
    raw = c7n.verify_report(c7n_report(seeded, name=lambda n: n), seeded)  # names as tagged: wrong
    assert not raw.ok
    assert "expected" in raw.problems[0]
    other = c7n_report(seeded).replace(c7n.POLICY_NAME.encode(), b"other-policy")
    assert any("policies" in p for p in c7n.verify_report(other, seeded).problems)
    header = c7n_report(seeded).replace(b'"Policy"', b'"Resource"', 1)
    assert "header" in c7n.verify_report(header, seeded).problems[0]


def test_c7n_raw_output_must_cover_every_account_region(tmp_path: Any) -> None:
    seeded = hand_seeded()
    for (account, region), ids in seeded.instances.items():
        folder = tmp_path / account / region / c7n.POLICY_NAME
        folder.mkdir(parents=True)
        tags = [{"Key": "Name", "Value": SPEC.server_name(account, region)}]
        (folder / "resources.json").write_text(json.dumps([{"InstanceId": i, "Tags": tags} for i in ids]))
    assert c7n.raw_problems(tmp_path, seeded) == []
    (tmp_path / "111111111111" / "us-east-1" / c7n.POLICY_NAME / "resources.json").write_text("[]")
    assert c7n.raw_problems(tmp_path, seeded) == [
        "resources.json lists 6 instances (0 unexpected, 2 missing)"
    ]
    (tmp_path / "111111111111" / "us-east-1" / c7n.POLICY_NAME / "resources.json").unlink()
    assert "for 3 of 4 account-regions" in c7n.raw_problems(tmp_path, seeded)[0]


def test_c7n_config_names_each_account_by_its_id_and_leaves_out_terminated(tmp_path: Any) -> None:
    c7n.write_config(tmp_path, {"111111111111": ["eu-west-1", "us-east-1"]})
    accounts = json.loads((tmp_path / "accounts.yml").read_text())["accounts"]
    assert accounts == [
        {
            "account_id": "111111111111",
            "name": "111111111111",
            "role": "arn:aws:iam::111111111111:role/CMDBDiscovery",
            "regions": ["eu-west-1", "us-east-1"],
        }
    ]
    policy = (tmp_path / "policy.yml").read_text()
    assert "terminated" not in policy
    assert "stopped" in policy
    env = c7n.c7n_env("http://127.0.0.1:5", tmp_path, "k", "s")
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:5"
    assert "C7N_ORG_PARALLEL" not in env  # c7n-org's default worker count
    with pytest.raises(ValueError, match="loopback"):
        c7n.c7n_env("https://ec2.amazonaws.com", tmp_path, "k", "s")


# --- the gateway's limit on calls reaching the emulator ---------------------------------------------------


class _SlowUpstream(ThreadingHTTPServer):
    """An upstream that holds every request ``hold`` seconds and counts how many it held at once."""

    daemon_threads = True

    def __init__(self, hold: float) -> None:
        self.hold, self.now, self.peak = hold, 0, 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                """Quiet."""

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with outer.lock:
                    outer.now += 1
                    outer.peak = max(outer.peak, outer.now)
                time.sleep(outer.hold)
                with outer.lock:
                    outer.now -= 1
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        super().__init__(("127.0.0.1", 0), Handler)


def _burst(url: str, n: int) -> float:
    """``n`` requests at once through the gateway; the seconds until the last answer."""

    def one(_: int) -> int:
        parts = url.split("//", 1)[1].split(":")
        conn = http.client.HTTPConnection(parts[0], int(parts[1]), timeout=30)
        conn.request("POST", "/", body=b"Action=DescribeInstances", headers={"Content-Type": "x"})
        status = conn.getresponse().status
        conn.close()
        return status

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=n) as pool:
        assert list(pool.map(one, range(n))) == [200] * n
    return time.perf_counter() - t0


def test_the_gateway_lets_at_most_the_limit_reach_the_emulator_after_the_latency() -> None:
    upstream = _SlowUpstream(hold=0.2)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        with AwsGateway(upstream=f"http://127.0.0.1:{upstream.server_address[1]}", upstream_limit=2) as gw:
            seconds = _burst(gw.url, 6)
            assert upstream.peak == 2 == gw.upstream_peak
            assert seconds >= 3 * 0.2  # three turns of two
            gw.upstream_limit, upstream.peak = None, 0
            gw.reset_calls()
            _burst(gw.url, 6)
            assert upstream.peak == 6 == gw.upstream_peak  # no limit: all at once
            # The latency is the network's: it is not served in turns.
            upstream.hold, gw.latency, gw.upstream_limit = 0.0, 0.3, 1
            assert _burst(gw.url, 6) < 6 * 0.3
            with pytest.raises(ValueError, match="positive integer"):
                gw.upstream_limit = 0
    finally:
        upstream.shutdown()
        upstream.server_close()


# --- the report ------------------------------------------------------------------------------------------


def _run(
    name: str, world: str, wall: float, ok: bool = True, own_wall: float | None = None, **details: Any
) -> dict[str, Any]:
    """A run's JSON: ``wall`` spawn to exit, ``own_wall`` as the tool counts (default: the same)."""
    return {
        "name": name,
        "world": world,
        "latency_ms": 100.0,
        "wall": wall if own_wall is None else own_wall,
        "verified": ok,
        "verdict": "ok (680 rows)" if ok else "WRONG (679 rows): 1 seeded instances missing",
        "cpu": 1.0,
        "moto_cpu": 1.0,
        "gateway_cpu": 0.1,
        "calls": 10,
        "details": {"accounts": 4, "peer": True, "process_wall": wall, "process_cpu": 2.0, **details},
    }


def fake_results(
    engine: float = 6.0,
    baseline: float = 14.5,
    c7n_org: float | None = 25.0,
    dags: float = 14.0,
    ok: bool = True,
) -> dict[str, Any]:
    world = report.POST_WORLD[0]
    runs = [
        _run("baseline", world, baseline),
        _run("engine", world, engine, ok, own_wall=engine - 2.5, import_seconds=2.3),
        _run("dags_test", world, dags),
    ]
    if c7n_org is not None:
        runs.append(_run("c7n-org", world, c7n_org, workers=8))
    return {
        "machine": {
            "date": "2026-11-26 00:00 UTC",
            "cores": 2,
            "memory_gib": 24,
            "python": "3.11",
            "versions": {"moto": "5"},
            "load_start": (0.0, 0.0, 0.0),
        },
        "runs": runs,
        "floors": [
            {
                "world": world,
                "latency_ms": 100.0,
                "floor": 2.0,
                "critical_path": 0.3,
                "emulator_cpu": 2.0,
                "capacity": {"requests_per_second": 70.0, "wall": 2.0},
            }
        ],
        "import_floor": {"code": "import x", "wall": 2.5, "cpu": 2.4, "walls": [2.5]},
        "skipped": {} if c7n_org is not None else {world: {"c7n-org": "no c7n-org venv"}},
    }


def _rows(results: dict[str, Any]) -> dict[str, tuple[str, bool | None]]:
    return {t.split(": ", 1)[1]: (measured, met) for t, _, measured, met in report.targets(results)}


def test_the_targets_at_the_posts_size_say_met_or_not_with_their_numbers() -> None:
    met = _rows(fake_results())
    assert met["engine vs its floor"] == (
        "1.33x (6.00 s vs 4.50 s = import 2.50 + max(critical path 0.30, moto CPU 2.00))",
        False,  # 1.33 > 1.3
    )
    assert met["engine vs the serial 2015 algorithm"] == ("2.42x (14.50 s vs 6.00 s)", True)
    assert met["engine vs c7n-org"] == ("4.17x (25.00 s vs 6.00 s)", True)
    assert met["`airflow dags test` vs the serial 2015 algorithm"] == (
        "0.97x its time (14.00 s vs 14.50 s)",
        True,
    )
    slow = _rows(fake_results(engine=8.0, dags=15.0))
    assert slow["engine vs the serial 2015 algorithm"][1] is False
    assert slow["engine vs c7n-org"] == ("3.12x (25.00 s vs 8.00 s)", False)
    assert slow["`airflow dags test` vs the serial 2015 algorithm"][1] is False
    text = report.render(fake_results(engine=8.0), command="test")
    assert "Where a target is missed" in text
    assert (
        "**The engine at 4 x 17 x 10, 100 ms (8.00 s spawn to exit).** 2.50 s before its first step" in text
    )


def test_a_wrong_or_absent_run_is_never_a_met_target() -> None:
    wrong = _rows(fake_results(ok=False))
    assert wrong["engine vs its floor"] == (
        "not measured (engine: WRONG (679 rows): 1 seeded instances missing)",
        False,
    )
    assert wrong["engine vs c7n-org"][1] is False
    skipped = _rows(fake_results(c7n_org=None))
    assert skipped["engine vs c7n-org"] == ("not measured (no c7n-org venv)", None)
    text = report.render(fake_results(c7n_org=None), command="test")
    assert "| Cloud Custodian c7n-org | skipped | - | - | - | - | no c7n-org venv |" in text
    assert "| this project, engine (`bench.engine`, accounts in parallel) | 6.00 |" in text


def test_the_scheduler_targets_take_the_airflow_floor_when_there_is_one() -> None:
    results = fake_results()
    absent = _rows(results)
    assert absent["wall"] == ("not measured (scheduler run: no run)", None)
    assert absent["Airflow CPU per mapped task"] == ("not measured (scheduler run: no run)", None)
    world = report.ORCHESTRATED_WORLD[0]
    results["runs"].append(_run("orchestrated", world, 95.0, mapped_tasks=100, cpu_per_mapped_task=1.5))
    no_floor = _rows(results)
    assert no_floor["wall"] == ("95.0 s", False)
    assert no_floor["Airflow CPU per mapped task"] == ("not measured (no-op floor DAG: no run)", None)
    results["runs"].append(
        _run("airflow_floor", "100 no-op", 60.0, mapped_tasks=100, cpu_per_mapped_task=1.3)
    )
    assert _rows(results)["Airflow CPU per mapped task"] == ("1.15x (1.50 CPU s vs 1.30 CPU s)", True)
    results["runs"][-1] = {"name": "other", "world": "-", "latency_ms": 0, "details": {}}
    results["airflow_floor"] = {"mapped_tasks": 100, "cpu_per_mapped_task": 1.0}
    assert _rows(results)["Airflow CPU per mapped task"] == ("1.50x (1.50 CPU s vs 1.00 CPU s)", False)


def test_the_median_run_counts_and_is_right_only_if_every_run_was() -> None:
    def measured(wall: float, ok: bool = True) -> Measured:
        return Measured(
            "engine",
            "w",
            0.0,
            wall,
            Verdict(ok, 1, [] if ok else ["bad"]),
            details={"process_wall": wall + 1},
        )

    median = scenarios.median_of([measured(3.0), measured(1.0), measured(2.0)], key="process_wall")
    assert median.wall == 2.0
    assert median.details["process_walls"] == [2.0, 3.0, 4.0]
    assert median.verdict.ok
    wrong = scenarios.median_of([measured(3.0), measured(1.0, ok=False), measured(2.0)])
    assert wrong.wall == 2.0
    assert not wrong.verdict.ok


# --- the harness end to end, on the emulator ------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """
    ``python -m bench.run --profile smoke``: on 3 x 2 x 3 at 20 ms, two calls at a time reaching moto, the
    baseline, c7n-org (skipped when its venv is absent: the smoke profile does not make it), the engine
    and ``airflow dags test``; the floors, merge and parse.
    """
    from bench.run import main

    out = tmp_path_factory.mktemp("bench")
    code = main(["--profile", "smoke", "--out", str(out / "B.md"), "--json", str(out / "r.json")])
    assert code == 0
    return json.loads((out / "r.json").read_text()), (out / "B.md").read_text()


def test_the_smoke_benchmark_verifies_every_run(smoke_results: tuple[dict[str, Any], str]) -> None:
    results, markdown = smoke_results
    runs = {r["name"]: r for r in results["runs"]}
    have_c7n = c7n.venv_ready()
    assert set(runs) == {"baseline", "engine", "dags_test", *(["c7n-org"] if have_c7n else [])}
    for run in runs.values():
        assert run["verified"], run["verdict"]
        assert run["verdict"] == "ok (18 rows)"
        assert run["latency_ms"] == 20.0
        assert run["calls"] > 0
        assert 0 < run["wall"] <= run["details"]["process_wall"]
        assert run["details"]["process_cpu"] > 0
        assert 1 <= run["details"]["upstream_peak"] <= 2  # the profile's limit of calls at moto at once
    engine = runs["engine"]["details"]
    # One AssumeRole of the hub role for the whole process, one of CMDBDiscovery per account.
    assert engine["assume_role_by_role"] == {"CMDBApplication": 1, "CMDBDiscovery": 3}
    assert engine["by_action"]["ec2:DescribeInstances"] == 3 * 2
    assert runs["dags_test"]["details"]["by_action"]["ec2:DescribeInstances"] == 3 * 2
    assert runs["dags_test"]["details"]["exit"] == 0
    assert runs["baseline"]["details"]["by_action"] == {"ec2:DescribeInstances": 6, "sts:AssumeRole": 4}
    if have_c7n:  # one AssumeRole per account and region: c7n-org assumes the role in every worker task
        assert runs["c7n-org"]["details"]["by_action"] == {"ec2:DescribeInstances": 6, "sts:AssumeRole": 6}
        assert runs["c7n-org"]["details"]["workers"] == 4 * (os.cpu_count() or 1)
    else:
        assert results["skipped"] == {
            "3 x 2 x 3": {"c7n-org": "no c7n-org venv (.bench-venv-c7n; `make bench` makes it)"}
        }
        assert "| Cloud Custodian c7n-org | skipped |" in markdown
    (floor,) = results["floors"]
    assert floor["critical_path"] == pytest.approx(2 * 3 * 0.02)  # 3 accounts, 2 at a time
    assert floor["capacity"]["calls"] == 3 * (2 + 2)
    assert results["import_floor"]["wall"] > 0
    assert all(m["verified"] for m in results["merge"])
    assert [m["rows"] for m in results["merge"]] == [1000, 10000]
    assert results["parse"]["file"]["heavy"] == []
    assert results["parse"]["cold"]["heavy"] == []
    for heading in ("## Targets", "## Side by side", "## Every run", "## Floors", "## Merge", "## Parse"):
        assert heading in markdown
    assert "| 4 x 17 x 10 at 100 ms: engine vs its floor | ≤ 1.3x its floor | not measured" in markdown
    assert f"{results['machine']['cores']} cores" in markdown


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
