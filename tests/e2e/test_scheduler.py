"""
Reruns, backfills and concurrent runs on a real Airflow: scheduler (LocalExecutor), DAG processor and API
server on loopback, a private PostgreSQL 15, moto behind the loopback AWS gateway. Everything is driven
through the REST API (``/api/v2``) as the UI does it: trigger, watch task instances, clear one mapped task
instance with its downstream tasks, create backfills.

One cluster for the module (``devtools/cluster.py``); the tests share it and run in file order.
World: three accounts (A payer, B, C) x two regions, seven listed instances.

The cluster runs the DAG as shipped: no ``CMDB_EC2_INVENTORY_*`` knob is changed (the deadline alert is on,
240 minutes; retries wait the shipped 120 s), and the Variable lives in the metadata database, set through
the REST API as an operator sets it in the UI. The deployment setting the README asks for beside it,
``CMDB_EC2_INVENTORY_ALERT_TOPIC_ARN``, is set as a deployment would set it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devtools import emulator, sandbox
from devtools.cluster import (
    ACCOUNT_A,
    ACCOUNT_B,
    ACCOUNT_C,
    PREFIX,
    AirflowApi,
    Harness,
    Org,
    discovery_role,
    running_cluster,
    without_collected_at,
)
from include.cmdb_inventory.contract import safe_segment

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.scheduler,
    pytest.mark.xdist_group("scheduler"),
    pytest.mark.usefixtures("no_gateway_rules"),
]

DAG_ID = sandbox.DAG_ID
CSV, MANIFEST = "ec2_inventory.csv", "manifest.json"
ACCOUNTS = (ACCOUNT_A, ACCOUNT_B, ACCOUNT_C)
SHIPPED_DEADLINE = timedelta(minutes=240)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    """PostgreSQL, the gateway and world, ``airflow db migrate``, then the three Airflow components."""
    workdir = tmp_path_factory.mktemp("scheduler")  # the components' logs stay there (pytest keeps 3)
    # What the README asks a deployment to set when its Variable lives in the database (set below through
    # the REST API, as an operator sets it in the UI).
    settings = {"CMDB_EC2_INVENTORY_ALERT_TOPIC_ARN": emulator.demo_variable()["sns_topic_arn"]}
    with running_cluster(workdir, gateway_seed=11, settings=settings, variable_in_database=True) as harness:
        assert [k for k in harness.base_env if k.startswith("CMDB_EC2_INVENTORY_")] == []  # shipped defaults
        yield harness


def tis_of(api: AirflowApi, run_id: str) -> dict[str, dict[str, Any]]:
    """A run's task instances by task id, mapped ones by their label's account id."""
    return api.task_instances_by_label(DAG_ID, run_id)


def state_try(ti: Mapping[str, Any]) -> tuple[str, int]:
    """A task instance's (state, try number)."""
    return str(ti["state"]), int(ti["try_number"])


def staging(run_id: str, ds: str) -> str:
    """The run's staging prefix (contract: run-specific)."""
    return f"{PREFIX}/_staging/ds={ds}/run={safe_segment(run_id)}"


def notifications(org: Org, ds: str, run_id: str) -> list[str]:
    """The CMDB team's notifications of one run (one per try of notify_cmdb), oldest first."""
    return [m for m in org.messages(wait=2) if m.startswith(f"EC2 inventory for {ds} (run {run_id})")]


def notification(org: Org, ds: str, run_id: str) -> str:
    """The CMDB team's one notification of a run."""
    found = notifications(org, ds, run_id)
    assert len(found) == 1, (run_id, org.inbox)
    return found[0]


def overlap(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two runs or task instances were running at the same time."""
    return bool(a["start_date"] < b["end_date"] and b["start_date"] < a["end_date"])


@dataclass
class Clean:
    """The clean snapshot made by two concurrent runs of today's date."""

    ds: str
    runs: dict[str, dict[str, Any]]
    rows: list[dict[str, str]]
    csv: bytes
    manifest: dict[str, Any]


@pytest.fixture(scope="module")
def clean(env: Harness) -> Clean:
    """Two runs triggered at once for the same date (runs without a logical date: today); B overwrites."""
    api, org = env.api, env.org
    a = api.trigger(DAG_ID, logical_date=None)
    b = api.trigger(DAG_ID, logical_date=None, conf={"overwrite": True})
    runs = {"a": api.wait_run(DAG_ID, a["dag_run_id"]), "b": api.wait_run(DAG_ID, b["dag_run_id"])}
    ds = str(runs["b"]["run_after"])[:10]
    csv = org.get(org.key(ds, CSV))
    manifest = org.json(org.key(ds, MANIFEST))
    assert csv is not None, env.cluster.logs()
    assert manifest is not None
    return Clean(ds, runs, without_collected_at(org.rows(org.key(ds, CSV))), csv, manifest)


def test_two_runs_in_flight_never_mix_their_parts(env: Harness, clean: Clean) -> None:
    api, org = env.api, env.org
    a, b = clean.runs["a"], clean.runs["b"]
    assert (a["state"], b["state"]) == ("success", "success")
    assert str(a["run_after"])[:10] == clean.ds  # one date, two runs
    assert overlap(a, b), (a, b)

    # Each run scanned every account into its own staging prefix; each status names its own run.
    for run in (a, b):
        prefix = staging(run["dag_run_id"], clean.ds)
        assert sorted(org.keys(f"{prefix}/parts/")) == [f"{prefix}/parts/{x}.csv.gz" for x in ACCOUNTS]
        for account in ACCOUNTS:
            status = org.json(f"{prefix}/status/{account}.json")
            assert status is not None
            assert status["dag_run_id"] == run["dag_run_id"]
    # Their merges never ran at the same time (one merge at a time across runs).
    merges = [tis_of(api, r["dag_run_id"])["merge_inventory"] for r in (a, b)]
    assert not overlap(*merges), merges

    # The date's snapshot is wholly B's (B asked to overwrite): its CSV is exactly the header and B's parts.
    assert clean.manifest["dag_run_id"] == b["dag_run_id"]
    assert clean.manifest["complete"] is True
    prefix = staging(b["dag_run_id"], clean.ds)
    parts = b"".join(gzip.decompress(org.get(f"{prefix}/parts/{x}.csv.gz") or b"") for x in ACCOUNTS)
    header, _, body = clean.csv.partition(b"\r\n")
    assert header.startswith(b"Account,Region,InstanceId,Name")
    assert body == parts
    assert hashlib.sha256(clean.csv).hexdigest() == clean.manifest["csv_sha256"]
    assert org.head(org.key(clean.ds, CSV))["Metadata"]["dag-run-id"] == b["dag_run_id"]
    assert len(clean.rows) == len(org.expected()) == 7

    # A's notification says what A did: wrote first (then B overwrote), or kept B's complete snapshot.
    text_a = notification(org, clean.ds, a["dag_run_id"])
    assert "not rewritten by this run" in text_a or "Why:      no snapshot for this date yet" in text_a
    text_b = notification(org, clean.ds, b["dag_run_id"])
    assert "Accounts: 3 of 3 covered" in text_b


def test_clear_one_mapped_task_rescans_only_that_account(env: Harness, clean: Clean) -> None:
    api, org, gateway = env.api, env.org, env.gateway
    ds = "2026-09-01"
    broken = gateway.deny_assume_role(discovery_role(ACCOUNT_B))
    gateway.reset_calls()
    run_id = api.trigger(DAG_ID, logical_date=f"{ds}T02:00:00Z")["dag_run_id"]
    assert api.wait_run(DAG_ID, run_id)["state"] == "failed"

    # Exactly B's mapped task failed, once (no retries); the run is red because coverage is short.
    tis = tis_of(api, run_id)
    assert state_try(tis[f"scan_account[{ACCOUNT_B}]"]) == ("failed", 1)
    assert state_try(tis[f"scan_account[{ACCOUNT_A}]"]) == ("success", 1)
    assert state_try(tis[f"scan_account[{ACCOUNT_C}]"]) == ("success", 1)
    assert tis[f"scan_account[{ACCOUNT_B}]"]["rendered_map_index"] == f"{ACCOUNT_B} (Development)"
    assert state_try(tis["merge_inventory"]) == ("success", 1)
    assert state_try(tis["notify_cmdb"]) == ("success", 1)
    assert state_try(tis["check_coverage"]) == ("failed", 1)
    assert gateway.count(action="AssumeRole", role_arn=discovery_role(ACCOUNT_B)) == 1
    manifest = org.json(org.key(ds, MANIFEST))
    assert manifest is not None
    assert manifest["complete"] is False
    assert [a["status"] for a in manifest["accounts"] if a["id"] == ACCOUNT_B] == ["ROLE_NOT_ASSUMABLE"]
    alerts = [m for m in org.messages(wait=2) if m.startswith("cmdb_ec2_inventory: scan_account")]
    assert any(f"for account {ACCOUNT_B} (Development) failed (run {run_id}, try 1)" in m for m in alerts)

    # The role is fixed; clear B's task instance and its downstream tasks (the UI's "Clear").
    broken.remove()
    gateway.reset_calls()
    api.clear(DAG_ID, run_id, [["scan_account", tis[f"scan_account[{ACCOUNT_B}]"]["map_index"]]])
    assert api.wait_run(DAG_ID, run_id)["state"] == "success", env.cluster.logs()

    # Only B was scanned again; resolve_accounts did not run again (merge used its plan from the first try).
    assert gateway.count(action="AssumeRole", role_arn=discovery_role(ACCOUNT_B)) == 1
    for account in (ACCOUNT_A, ACCOUNT_C):
        assert gateway.count(action="AssumeRole", role_arn=discovery_role(account)) == 0
        assert gateway.count(service="ec2", account=account) == 0
    tis = tis_of(api, run_id)
    assert state_try(tis[f"scan_account[{ACCOUNT_B}]"]) == ("success", 2)
    assert state_try(tis[f"scan_account[{ACCOUNT_A}]"]) == ("success", 1)
    assert state_try(tis["resolve_accounts"]) == ("success", 1)
    assert state_try(tis["merge_inventory"]) == ("success", 2)
    assert state_try(tis["check_coverage"]) == ("success", 2)

    # Green, with a complete CSV equal to a clean run's apart from the collection times.
    manifest = org.json(org.key(ds, MANIFEST))
    assert manifest is not None
    assert manifest["complete"] is True
    assert manifest["dag_run_id"] == run_id
    assert without_collected_at(org.rows(org.key(ds, CSV))) == clean.rows
    first, second = notifications(org, ds, run_id)  # one per try of notify_cmdb
    assert "Complete: no" in first
    assert "Complete: yes" in second
    assert "Why:      replaces this run's own earlier attempt" in second


def _previous_snapshot(org: Org, clean: Clean, ds: str, *, partial: bool) -> None:
    """
    Write a snapshot for ``ds`` as an earlier deployment would have: the clean snapshot's content, or,
    ``partial``, without B (its role not assumable then).
    """
    manifest = json.loads(json.dumps(clean.manifest))
    csv = clean.csv
    manifest.update(
        {
            "ds": ds,
            "logical_date": f"{ds}T02:00:00+00:00",
            "dag_run_id": f"scheduled__{ds}T02:00:00+00:00",
            "csv_key": org.key(ds, CSV),
            "csv_uri": f"s3://{org.bucket}/{org.key(ds, CSV)}",
        }
    )
    if partial:
        lines = csv.split(b"\r\n")
        csv = b"\r\n".join(x for x in lines if not x.startswith(ACCOUNT_B.encode()))
        manifest["coverage"] = [e for e in manifest["coverage"] if e["account"] != ACCOUNT_B] + [
            {
                "account": ACCOUNT_B,
                "account_name": "Development",
                "region": None,
                "status": "ROLE_NOT_ASSUMABLE",
                "instances": 0,
                "error": {"code": "AccessDenied", "message": "not authorized to perform: sts:AssumeRole"},
            }
        ]
        manifest.update({"complete": False, "accounts_covered": 2, "row_count": csv.count(b"\r\n") - 1})
    manifest["csv_sha256"] = hashlib.sha256(csv).hexdigest()
    org.put(org.key(ds, CSV), csv, ContentType="text/csv; charset=utf-8")
    org.put(org.key(ds, MANIFEST), json.dumps(manifest).encode(), ContentType="application/json")


def _backfill_runs(api: AirflowApi, dates: list[str]) -> dict[str, dict[str, Any]]:
    """The finished backfill run of each date."""
    runs: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 60
    while len(runs) < len(dates):
        for run in api.runs(DAG_ID, run_type="backfill"):
            ds = str(run["logical_date"])[:10]
            if ds in dates:
                runs[ds] = run
        assert time.monotonic() < deadline, f"backfill runs not created: {runs}"
        time.sleep(1)
    return {ds: api.wait_run(DAG_ID, run["dag_run_id"]) for ds, run in runs.items()}


def test_backfill_three_dates(env: Harness, clean: Clean) -> None:
    api, org = env.api, env.org
    complete, partial, empty = "2026-09-02", "2026-09-03", "2026-09-04"
    _previous_snapshot(org, clean, complete, partial=False)
    _previous_snapshot(org, clean, partial, partial=True)
    kept = {name: org.get(org.key(complete, name)) for name in (CSV, MANIFEST)}

    backfill = api.backfill(DAG_ID, f"{complete}T00:00:00Z", f"{empty}T23:00:00Z")
    runs = _backfill_runs(api, [complete, partial, empty])
    api.wait_backfill(backfill["id"])  # one backfill at a time per DAG
    assert {ds: r["state"] for ds, r in runs.items()} == dict.fromkeys((complete, partial, empty), "success")

    # One snapshot per date at the contracted keys, each complete and equal to a clean run's.
    for ds in (complete, partial, empty):
        manifest = org.json(org.key(ds, MANIFEST))
        assert manifest is not None
        assert manifest["complete"] is True
        # The manifest commits the run's own CSV; the contracted key holds a copy of it.
        assert org.get(manifest["csv_key"]) == org.get(org.key(ds, CSV))
        assert hashlib.sha256(org.get(org.key(ds, CSV)) or b"").hexdigest() == manifest["csv_sha256"]
        assert without_collected_at(org.rows(org.key(ds, CSV))) == clean.rows

    # The complete date was not scanned again nor overwritten; its log and notification say so.
    assert {name: org.get(org.key(complete, name)) for name in (CSV, MANIFEST)} == kept
    run_id = runs[complete]["dag_run_id"]
    assert org.keys(f"{staging(run_id, complete)}/parts/") == []
    tis = tis_of(api, run_id)
    assert tis["scan_account"]["state"] == "skipped"  # mapped over no account
    why = f"a complete snapshot for {complete} already exists (run scheduled__{complete}T02:00:00+00:00)"
    resolve_log = api.task_log(DAG_ID, run_id, "resolve_accounts", tis["resolve_accounts"]["try_number"])
    assert why in resolve_log
    assert "overwrite=true" in resolve_log
    text = notification(org, complete, run_id)
    assert "(not rewritten by this run)" in text
    assert why in text

    # The partial date was replaced by the more complete snapshot; the empty one written.
    replaced = org.json(org.key(partial, MANIFEST))
    assert replaced is not None
    assert replaced["dag_run_id"] == runs[partial]["dag_run_id"]
    assert "replaces a partial snapshot" in notification(org, partial, runs[partial]["dag_run_id"])
    assert "no snapshot for this date yet" in notification(org, empty, runs[empty]["dag_run_id"])
    # latest/ only moves forward: it still holds today's snapshot.
    latest = org.json(org.key("latest", MANIFEST))
    assert latest is not None
    assert latest["ds"] == clean.ds


def test_overwrite_param_replaces_a_complete_snapshot(env: Harness, clean: Clean) -> None:
    api, org = env.api, env.org
    ds = "2026-09-02"  # complete since before the previous test's backfill, which kept it
    if org.json(org.key(ds, MANIFEST)) is None:  # this test alone
        _previous_snapshot(org, clean, ds, partial=False)
    before = org.json(org.key(ds, MANIFEST))
    assert before is not None
    assert before["complete"] is True

    # Backfill the date again, reprocessing completed runs, with the Param overwrite=true.
    backfill = api.backfill(
        DAG_ID, f"{ds}T00:00:00Z", f"{ds}T23:00:00Z", reprocess_behavior="completed", conf={"overwrite": True}
    )
    run = api.wait_run(DAG_ID, _backfill_runs(api, [ds])[ds]["dag_run_id"])
    api.wait_backfill(backfill["id"])
    assert run["state"] == "success"
    assert run["conf"] == {"overwrite": True}

    after = org.json(org.key(ds, MANIFEST))
    assert after is not None
    assert after["dag_run_id"] == run["dag_run_id"] != before["dag_run_id"]
    assert after["collected_at"] > before["collected_at"]
    assert without_collected_at(org.rows(org.key(ds, CSV))) == clean.rows
    assert len(org.keys(f"{staging(run['dag_run_id'], ds)}/parts/")) == 3
    *_, text = notifications(org, ds, run["dag_run_id"])  # a rerun of the backfill's run: its latest
    assert "Why:      overwrite requested by the run's 'overwrite' param" in text


def _deadline_of(api: AirflowApi, run_id: str) -> dict[str, Any]:
    (row,) = api.ui_get(f"/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id, safe='')}/deadlines")[
        "deadlines"
    ]
    return dict(row)


def _at(value: Any) -> datetime:
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def test_clear_with_a_pending_deadline_then_the_deadline_alert(env: Harness, clean: Clean) -> None:
    """
    The shipped 240-minute deadline, with no knob: a run whose logical date is 240 minutes minus a
    minute ago is due a minute from now. Its first try fails (B's role denied) while the deadline is
    pending; Clear of B's mapped task then succeeds (Airflow 3.3.2 answered HTTP 500 for a pending
    queued-at deadline); the rerun outlasts the deadline, so the alert reaches the topic, although the
    Variable lives in the metadata database, which deadline callbacks cannot read.
    """
    api, org, gateway = env.api, env.org, env.gateway
    due_in = 60.0  # seconds: more than the first, failing try takes on a loaded machine
    logical = datetime.now(tz=UTC).replace(microsecond=0) - SHIPPED_DEADLINE + timedelta(seconds=due_in)
    ds = logical.strftime("%Y-%m-%d")
    broken = gateway.deny_assume_role(discovery_role(ACCOUNT_B))
    org.clear_inbox()
    # overwrite: the date may be today's, whose complete snapshot the clean runs wrote.
    run_id = api.trigger(DAG_ID, logical_date=logical.isoformat(), conf={"overwrite": True})["dag_run_id"]
    assert api.wait_run(DAG_ID, run_id)["state"] == "failed"

    deadline = _deadline_of(api, run_id)
    assert _at(deadline["deadline_time"]) == logical + SHIPPED_DEADLINE
    assert deadline["missed"] is False, "the first try outlasted the deadline: raise due_in"

    # Fixed; Clear B with its downstream tasks while the deadline is pending. The rerun waits on the
    # gateway until the deadline has passed.
    broken.remove()
    wait = (_at(deadline["deadline_time"]) - datetime.now(tz=UTC)).total_seconds() + 5
    gateway.add_latency(max(wait, 1.0), service="ec2", account=ACCOUNT_B, times=1)
    tis = tis_of(api, run_id)
    api.clear(DAG_ID, run_id, [["scan_account", tis[f"scan_account[{ACCOUNT_B}]"]["map_index"]]])
    assert api.wait_run(DAG_ID, run_id)["state"] == "success", env.cluster.logs()
    assert state_try(tis_of(api, run_id)[f"scan_account[{ACCOUNT_A}]"]) == ("success", 1)
    assert without_collected_at(org.rows(org.key(ds, CSV))) == clean.rows

    # The deadline was missed during the rerun: Airflow shows it, and the alert reached the topic.
    assert _deadline_of(api, run_id)["missed"] is True
    alert = f"cmdb_ec2_inventory: run {run_id} has not finished by its deadline"
    until = time.monotonic() + 90
    while not any(m.startswith(alert) for m in org.inbox) and time.monotonic() < until:
        org.messages(wait=2)
    (text,) = [m for m in org.inbox if m.startswith(alert)]
    assert "(240 minutes after the logical date)" in text
    assert f"Logical date: {logical:%Y-%m-%dT%H:%M:%S}" in text

    # Runs of past dates (the clear test's, the backfills') missed theirs at once and stayed silent.
    silent = [r["dag_run_id"] for r in api.runs(DAG_ID) if r["dag_run_id"] != run_id]
    assert silent
    assert [m for m in org.inbox if any(f"run {r} has not finished" in m for r in silent)] == []
