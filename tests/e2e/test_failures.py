"""
What happens when things fail, end to end: each test is a full DAG run (Airflow's test runner) against
moto behind the loopback AWS gateway, whose rules inject the fault; each checks the CSV, the manifest,
what reached the CMDB team's queue, the task instances' states and tries, and the calls at the gateway.

World: three accounts (A payer, B, C) x two regions, seven listed instances.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devtools import sandbox
from devtools.cluster import (
    ACCOUNT_A,
    ACCOUNT_B,
    ACCOUNT_C,
    PREFIX,
    REGIONS,
    Org,
    discovery_role,
)
from devtools.gateway import AwsGateway

# One worker runs the whole module: its tests share one gateway and one seeded world.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("failures")]

DS = "2026-11-20"
CSV, MANIFEST = "ec2_inventory.csv", "manifest.json"


@dataclass
class Run:
    """One ``airflow dags test`` run: exit code, output, and its task instances from the metadata DB."""

    returncode: int
    output: str
    tis: dict[tuple[str, int], dict[str, Any]]

    def ti(self, task_id: str, account: str | None = None) -> dict[str, Any]:
        """A task instance; for ``scan_account``, the one labelled with ``account``."""
        found = [
            ti
            for (tid, _), ti in self.tis.items()
            if tid == task_id and (account is None or str(ti["rendered_map_index"]).startswith(account))
        ]
        assert len(found) == 1, (task_id, account, self.tis)
        return found[0]

    def states(self, task_id: str) -> list[str]:
        """States of every instance of a task (mapped: one per account)."""
        return sorted(ti["state"] for (tid, _), ti in self.tis.items() if tid == task_id)


def state_of(ti: Mapping[str, Any]) -> tuple[str, int]:
    """A task instance's (state, try number)."""
    return str(ti["state"]), int(ti["try_number"])


def task_instances(home: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """The latest run's task instances, read from the throwaway SQLite metadata DB."""
    with sqlite3.connect(home / "airflow.db") as db:
        db.row_factory = sqlite3.Row
        run_id = db.execute("SELECT run_id FROM dag_run ORDER BY id DESC LIMIT 1").fetchone()[0]
        rows = db.execute(
            "SELECT task_id, map_index, state, try_number, rendered_map_index FROM task_instance "
            "WHERE run_id = ?",
            (run_id,),
        ).fetchall()
    return {(r["task_id"], r["map_index"]): {**dict(r), "run_id": run_id} for r in rows}


@pytest.fixture(scope="module")
def gateway() -> Iterator[AwsGateway]:
    """moto behind the fault-injecting proxy, for the whole module."""
    with AwsGateway(seed=7) as gw:
        yield gw


@pytest.fixture(scope="module")
def world(gateway: AwsGateway) -> Iterator[Org]:
    """The organisation, seeded through the gateway (again if another test of this process reset moto)."""
    org = Org(gateway.url, gateway.moto_url)
    yield org
    org.reset()  # leave moto empty for the next module of this process


@pytest.fixture
def org(world: Org, gateway: AwsGateway) -> Iterator[Org]:
    """Each test: the world present, an empty bucket and queue, no rules, an empty call log."""
    world.ensure()
    world.empty_bucket()
    world.clear_inbox()
    gateway.clear_rules()
    gateway.reset_calls()
    yield world
    gateway.clear_rules()


def run_dag(
    home: Path,
    org: Org,
    ds: str = DS,
    variable: Mapping[str, Any] | None = None,
    knobs: Mapping[str, str] | None = None,
) -> Run:
    """One full DAG run for ``ds`` with the hub connection on the gateway (``knobs``: changed defaults)."""
    env = sandbox.airflow_env(home, org.connection, variable or org.variable, knobs)
    result: subprocess.CompletedProcess[str] = sandbox.dags_test(env, ds)
    return Run(result.returncode, result.stdout + result.stderr, task_instances(home))


def csv_keys(org: Org, ds: str = DS) -> set[tuple[str, str, str]]:
    """(Account, Region, InstanceId) of every row of the date's CSV, checking there are no duplicates."""
    rows = [(r["Account"], r["Region"], r["InstanceId"]) for r in org.rows(org.key(ds, CSV))]
    assert len(rows) == len(set(rows)), "an instance is listed twice"
    assert rows == sorted(rows)
    return set(rows)


def ledger(manifest: Mapping[str, Any]) -> dict[tuple[str, str | None], dict[str, Any]]:
    """The manifest's coverage entries by (account, region)."""
    return {(e["account"], e["region"]): e for e in manifest["coverage"]}


def notifications(org: Org, ds: str = DS) -> list[str]:
    """The CMDB team's notifications about ``ds``."""
    return [m for m in org.messages() if m.startswith(f"EC2 inventory for {ds}")]


def alerts(org: Org) -> list[str]:
    """Task failure alerts."""
    return [m for m in org.messages() if m.startswith("cmdb_ec2_inventory:") and " failed (run " in m]


def test_role_not_assumable_fails_only_that_account(
    airflow_home: Path, org: Org, gateway: AwsGateway
) -> None:
    gateway.deny_assume_role(discovery_role(ACCOUNT_B))

    run = run_dag(airflow_home, org)

    # The run is red; exactly B's mapped task failed, at once, without a retry.
    assert run.returncode != 0
    assert run.ti("scan_account", ACCOUNT_B)["state"] == "failed"
    assert run.ti("scan_account", ACCOUNT_B)["try_number"] == 1
    for account in (ACCOUNT_A, ACCOUNT_C):
        assert run.ti("scan_account", account)["state"] == "success"
    assert run.ti("merge_inventory")["state"] == "success"
    assert run.ti("notify_cmdb")["state"] == "success"
    assert run.ti("check_coverage")["state"] == "failed"
    assert gateway.count(action="AssumeRole", role_arn=discovery_role(ACCOUNT_B)) == 1
    assert gateway.count(service="ec2", account=ACCOUNT_B) == 0

    # Every instance of the other accounts is in the CSV.
    assert csv_keys(org) == org.expected(without=frozenset((ACCOUNT_B, r) for r in REGIONS))

    # The manifest says the snapshot is partial, and why.
    manifest = org.json(org.key(DS, MANIFEST))
    assert manifest is not None
    assert manifest["complete"] is False
    assert manifest["accounts_covered"] == 2
    assert manifest["accounts_expected"] == 3
    entry = ledger(manifest)[(ACCOUNT_B, None)]
    assert entry["status"] == "ROLE_NOT_ASSUMABLE"
    assert entry["error"]["code"] == "AccessDenied"
    assert discovery_role(ACCOUNT_B) in entry["error"]["message"]
    assert {e["status"] for k, e in ledger(manifest).items() if k[0] != ACCOUNT_B} == {"OK"}

    # The notification names the account and the reason; the failure alert names the task and account.
    (text,) = notifications(org)
    assert "Accounts: 2 of 3 covered" in text
    assert "Complete: no" in text
    assert f"{ACCOUNT_B} (Development): ROLE_NOT_ASSUMABLE - AccessDenied" in text
    scan_alerts = [a for a in alerts(org) if "scan_account" in a]
    assert len(scan_alerts) == 1
    assert f"scan_account for account {ACCOUNT_B} (Development) failed" in scan_alerts[0]
    assert "AccessDenied" in scan_alerts[0]
    assert any("check_coverage failed" in a for a in alerts(org))


def test_throttling_is_retried_and_nothing_is_lost(airflow_home: Path, org: Org, gateway: AwsGateway) -> None:
    # The first three DescribeInstances calls get HTTP 400 RequestLimitExceeded, then half of the others
    # (up to four) HTTP 503 RequestLimitExceeded.
    gateway.throttle("ec2", action="DescribeInstances", times=3)
    gateway.throttle("ec2", status=503, action="DescribeInstances", probability=0.5, times=4, seed=3)

    run = run_dag(airflow_home, org)

    assert run.returncode == 0, run.output[-5000:]
    throttled_400 = gateway.count(action="DescribeInstances", fault="RequestLimitExceeded", status=400)
    throttled_503 = gateway.count(action="DescribeInstances", fault="RequestLimitExceeded", status=503)
    assert throttled_400 == 3
    assert throttled_503 >= 1
    # botocore retried inside each task: no task needed an Airflow retry.
    assert {run.ti("scan_account", a)["try_number"] for a in (ACCOUNT_A, ACCOUNT_B, ACCOUNT_C)} == {1}
    assert csv_keys(org) == org.expected()
    manifest = org.json(org.key(DS, MANIFEST))
    assert manifest is not None
    assert manifest["complete"] is True
    assert manifest["row_count"] == len(org.expected()) == 7
    assert {e["status"] for e in manifest["coverage"]} == {"OK"}
    (text,) = notifications(org)
    assert "Accounts: 3 of 3 covered" in text
    assert "Complete: yes" in text


# Credentials that expire in the middle of an account's scan. Before the hook re-assumed its role on
# ExpiredToken, the region whose call got it was an ERROR gap, the account's task failed after its retries
# and the run was red (False keeps that expectation, the one place to flip); now it re-assumes and finishes.
HOOK_REASSUMES_ON_EXPIRED_TOKEN = True


def assert_expired_token_outcome(run: Run, org: Org, gateway: AwsGateway) -> None:
    """What a run does when B's credentials expire two EC2 calls after each time they are issued."""
    manifest = org.json(org.key(DS, MANIFEST))
    assert manifest is not None
    entries = ledger(manifest)
    assumed = gateway.count(action="AssumeRole", role_arn=discovery_role(ACCOUNT_B))
    expired = gateway.count(service="ec2", account=ACCOUNT_B, fault="ExpiredToken", status=400)
    assert expired >= 1
    if HOOK_REASSUMES_ON_EXPIRED_TOKEN:
        assert run.returncode == 0, run.output[-5000:]
        assert state_of(run.ti("scan_account", ACCOUNT_B)) == ("success", 1)
        assert assumed == 2  # the role assumed again once, within the one try
        assert csv_keys(org) == org.expected()
        assert manifest["complete"] is True
        assert {e["status"] for e in manifest["coverage"]} == {"OK"}
        return

    # Each try assumes the role again (fresh credentials), and each try's credentials expire the same way.
    assert run.returncode != 0
    assert state_of(run.ti("scan_account", ACCOUNT_B)) == ("failed", 3)
    assert (assumed, expired) == (3, 3)
    for account in (ACCOUNT_A, ACCOUNT_C):
        assert state_of(run.ti("scan_account", account)) == ("success", 1)
    assert run.ti("merge_inventory")["state"] == "success"
    assert run.ti("notify_cmdb")["state"] == "success"
    assert run.ti("check_coverage")["state"] == "failed"
    # Never a silently short region: the region that got ExpiredToken is an ERROR gap naming the code, and
    # B's rows in the CSV are exactly those of its region that was scanned OK.
    failed = [r for r in REGIONS if entries[(ACCOUNT_B, r)]["status"] != "OK"]
    assert len(failed) == 1, entries
    (region,) = failed
    entry = entries[(ACCOUNT_B, region)]
    assert (entry["status"], entry["error"]["code"]) == ("ERROR", "ExpiredToken")
    assert entry["instances"] == 0
    assert csv_keys(org) == org.expected(without=frozenset({(ACCOUNT_B, region)}))
    assert manifest["complete"] is False
    assert manifest["accounts_covered"] == 2
    (text,) = notifications(org)
    assert f"{ACCOUNT_B} {region} (Development): ERROR - ExpiredToken" in text
    assert "Complete: no" in text
    scan_alerts = [a for a in alerts(org) if "scan_account" in a]
    assert len(scan_alerts) == 1
    assert "ExpiredToken" in scan_alerts[0]


def test_credentials_expiring_in_the_middle_of_a_scan(
    airflow_home: Path, org: Org, gateway: AwsGateway
) -> None:
    # B's assumed credentials expire two EC2 calls after they are issued: DescribeRegions and one region's
    # DescribeInstances succeed, the other region's DescribeInstances answers ExpiredToken (HTTP 400).
    gateway.expire_credentials(after=2, account=ACCOUNT_B, service="ec2")

    # The shipped defaults: the account re-assumes its role within its one try (no Airflow retry).
    run = run_dag(airflow_home, org)

    assert_expired_token_outcome(run, org, gateway)


def test_s3_slowdown_storms_are_retried_and_nothing_is_lost(
    airflow_home: Path, org: Org, gateway: AwsGateway
) -> None:
    # S3 answers 503 SlowDown in storms that end (each rule a fixed number of answers, fewer in a row than
    # botocore's default attempts): on the scans' part and status uploads, on merge's reads of the parts,
    # on every write of the date's snapshot (CSV, changes.csv, manifest, copies) and of latest/.
    staging = f"{PREFIX}/_staging/"
    storms = {
        "part and status uploads": gateway.throttle("s3", action="PutObject", key_prefix=staging, times=3),
        "status and part downloads": gateway.throttle("s3", action="GetObject", key_prefix=staging, times=3),
        "snapshot writes": gateway.throttle(
            "s3", action=("PutObject", "CopyObject"), key_prefix=f"{PREFIX}/ds={DS}/", times=3
        ),
        "latest/ writes": gateway.throttle(
            "s3", action=("PutObject", "CopyObject"), key_prefix=f"{PREFIX}/latest/", times=3
        ),
    }
    started = time.monotonic()
    run = run_dag(airflow_home, org)
    elapsed = time.monotonic() - started

    assert run.returncode == 0, run.output[-5000:]
    # Every storm happened in full and botocore retried through it: no task needed an Airflow retry.
    assert {name: rule.hits for name, rule in storms.items()} == dict.fromkeys(storms, 3)
    assert gateway.count(service="s3", fault="SlowDown", status=503) == 12
    for task_id in ("resolve_accounts", "merge_inventory", "notify_cmdb", "check_coverage"):
        assert state_of(run.ti(task_id)) == ("success", 1), task_id
    for account in (ACCOUNT_A, ACCOUNT_B, ACCOUNT_C):
        assert state_of(run.ti("scan_account", account)) == ("success", 1), account
    # Nothing lost: the CSV is exactly the world, whole, in ds= and latest/, matching its manifest.
    assert csv_keys(org) == org.expected()
    manifest = org.json(org.key(DS, MANIFEST))
    assert manifest is not None
    assert manifest["complete"] is True
    assert manifest["row_count"] == 7
    assert org.json(org.key("latest", MANIFEST)) == manifest
    for where in (DS, "latest"):
        body = org.get(org.key(where, CSV))
        assert body is not None
        assert hashlib.sha256(body).hexdigest() == manifest["csv_sha256"], where
    (text,) = notifications(org)
    assert "Complete: yes" in text
    print(f"SlowDown storms: 12 answers of 503 retried by botocore; run took {elapsed:.1f} s")


def test_unusable_previous_manifest_and_changes_input(airflow_home: Path, org: Org) -> None:
    # The day before has a truncated manifest.json (not JSON); the day before that a complete manifest
    # whose CSV (what change detection reads) was truncated after it was written.
    before, earlier = "2026-11-19", "2026-11-18"
    org.put(org.key(before, CSV), b"Account,Region,InstanceId\r\n", ContentType="text/csv")
    truncated_manifest = b'{"dag_run_id": "scheduled__2026-11-19T02:00:00+00:00", "complete": tr'
    org.put(org.key(before, MANIFEST), truncated_manifest, ContentType="application/json")
    full = b"Account,Region,InstanceId,Name\r\n111111111111,us-east-1,i-0123456789abcdef0,billing\r\n"
    manifest = {
        "ds": earlier,
        "dag_run_id": f"scheduled__{earlier}T02:00:00+00:00",
        "complete": True,
        "csv_key": org.key(earlier, CSV),
        "csv_sha256": hashlib.sha256(full).hexdigest(),
        "coverage": [],
    }
    org.put(org.key(earlier, CSV), full[:40], ContentType="text/csv")
    org.put(org.key(earlier, MANIFEST), json.dumps(manifest).encode(), ContentType="application/json")

    run = run_dag(airflow_home, org)

    # The run writes its own snapshot, whole and exact, and is green.
    assert run.returncode == 0, run.output[-5000:]
    assert state_of(run.ti("merge_inventory")) == ("success", 1)
    assert csv_keys(org) == org.expected()
    written = org.json(org.key(DS, MANIFEST))
    assert written is not None
    assert written["complete"] is True
    assert hashlib.sha256(org.get(org.key(DS, CSV)) or b"").hexdigest() == written["csv_sha256"]
    # The change report says why it could not compare: the CSV it read, and the date it skipped.
    changes = written["changes"]
    assert changes["status"] == "ERROR"
    assert changes["detail"].startswith(
        f"not compared: the previous snapshot's CSV s3://{org.bucket}/{org.key(earlier, CSV)} does not match "
        "its manifest's csv_sha256"
    )
    assert f"skipped {before}, whose manifest.json is unusable (not valid JSON" in changes["detail"]
    assert org.rows(org.key(DS, "changes.csv")) == []
    (text,) = notifications(org)
    assert "Changes:  none listed: not compared: the previous snapshot's CSV" in text
    assert f"skipped {before}, whose manifest.json is unusable" in text
    # The earlier dates are left as they were.
    assert org.get(org.key(before, MANIFEST)) == truncated_manifest
    assert org.get(org.key(earlier, CSV)) == full[:40]


@pytest.mark.parametrize("denied_fails_coverage", [None, False], ids=["default", "switch-false"])
def test_disabled_and_denied_regions_are_recorded(
    airflow_home: Path, org: Org, gateway: AwsGateway, denied_fails_coverage: bool | None
) -> None:
    # C has not enabled eu-west-1 (EC2 answers AuthFailure); an SCP denies A us-east-1.
    gateway.disable_region("eu-west-1", account=ACCOUNT_C)
    gateway.deny_ec2(region="us-east-1", account=ACCOUNT_A)
    variable = dict(org.variable)
    if denied_fails_coverage is not None:
        variable["denied_regions_fail_coverage"] = denied_fails_coverage

    run = run_dag(airflow_home, org, variable=variable)

    assert gateway.count(service="ec2", account=ACCOUNT_C, region="eu-west-1", fault="AuthFailure") >= 1
    assert (
        gateway.count(service="ec2", account=ACCOUNT_A, region="us-east-1", fault="UnauthorizedOperation")
        >= 1
    )
    # Neither is a task error: every account's task succeeded at its first try.
    assert run.states("scan_account") == ["success"] * 3
    assert {run.ti("scan_account", a)["try_number"] for a in (ACCOUNT_A, ACCOUNT_B, ACCOUNT_C)} == {1}
    assert csv_keys(org) == org.expected(
        without=frozenset({(ACCOUNT_C, "eu-west-1"), (ACCOUNT_A, "us-east-1")})
    )

    manifest = org.json(org.key(DS, MANIFEST))
    assert manifest is not None
    entries = ledger(manifest)
    assert entries[(ACCOUNT_C, "eu-west-1")]["status"] == "REGION_DISABLED"
    assert entries[(ACCOUNT_C, "eu-west-1")]["error"]["code"] == "AuthFailure"
    assert entries[(ACCOUNT_A, "us-east-1")]["status"] == "REGION_DENIED"
    assert entries[(ACCOUNT_A, "us-east-1")]["error"]["code"] == "UnauthorizedOperation"
    assert manifest["regions_disabled"] == 1
    (text,) = notifications(org)
    assert "1 not enabled" in text
    assert "REGION_DISABLED" not in text  # not a gap, so not listed as one

    if denied_fails_coverage is None:  # the documented default: a denied region makes coverage short
        assert run.returncode != 0
        assert manifest["denied_regions_fail_coverage"] is True
        assert manifest["complete"] is False
        assert run.ti("check_coverage")["state"] == "failed"
        assert f"{ACCOUNT_A} us-east-1 (Payer): REGION_DENIED - UnauthorizedOperation" in text
        assert "Complete: no" in text
    else:  # denied on purpose (e.g. by SCP): recorded, but coverage is complete
        assert run.returncode == 0, run.output[-5000:]
        assert manifest["denied_regions_fail_coverage"] is False
        assert manifest["complete"] is True
        assert run.ti("check_coverage")["state"] == "success"
        assert "Complete: yes" in text


def test_s3_upload_failure_during_merge(airflow_home: Path, org: Org, gateway: AwsGateway) -> None:
    previous = "2026-11-19"

    # 1. The previous day: only the first try's write of latest/manifest.json fails (HTTP 500, after the
    # date's snapshot and latest/'s CSV were written). Airflow retries merge; the retry must leave latest/
    # whole and consistent, not half-moved.
    def first_try(_: Any) -> bool:
        staging = [
            c
            for c in gateway.calls(action="PutObject", key_prefix=f"{PREFIX}/_staging/ds={previous}/")
            if c.key and c.key.endswith(f"/{MANIFEST}")
        ]
        return len(staging) < 2  # merge writes its staging manifest once per try

    gateway.fail_s3_writes(key_prefix=f"{PREFIX}/latest/{MANIFEST}", when=first_try)
    # The subject is merge's Airflow retries: the shipped 120 s delay would make this test wait minutes.
    retried = run_dag(airflow_home, org, ds=previous, knobs=sandbox.FAST_RETRIES)
    assert retried.returncode == 0, retried.output[-5000:]
    assert state_of(retried.ti("merge_inventory")) == ("success", 2)
    assert gateway.count(key_prefix=f"{PREFIX}/latest/{MANIFEST}", status=500) >= 1
    manifest = org.json(org.key(previous, MANIFEST))
    latest_manifest = org.json(org.key("latest", MANIFEST))
    assert manifest is not None
    assert latest_manifest is not None
    assert manifest["complete"] is True
    assert (latest_manifest["ds"], latest_manifest["dag_run_id"]) == (previous, manifest["dag_run_id"])
    for where in (previous, "latest"):
        body = org.get(org.key(where, CSV))
        assert body is not None
        assert hashlib.sha256(body).hexdigest() == manifest["csv_sha256"], where
    assert csv_keys(org, previous) == org.expected()
    (text,) = notifications(org, previous)
    assert f"Latest:   s3://{org.bucket}/{PREFIX}/latest/{CSV}" in text
    latest_before = {name: org.get(org.key("latest", name)) for name in (CSV, MANIFEST)}
    org.clear_inbox()
    gateway.clear_rules()

    # 2. The next day, every write of the date's snapshot fails: merge fails, is retried twice, fails.
    gateway.fail_s3_writes(key_prefix=f"{PREFIX}/ds={DS}/")
    gateway.reset_calls()
    failed = run_dag(airflow_home, org, knobs=sandbox.FAST_RETRIES)  # retries again: 1 s, as above
    assert failed.returncode != 0
    assert state_of(failed.ti("merge_inventory")) == ("failed", 3)  # the first try and two retries
    assert failed.ti("notify_cmdb")["state"] == "upstream_failed"
    assert gateway.count(service="s3", key_prefix=f"{PREFIX}/ds={DS}/", status=500) >= 3
    assert gateway.count(service="s3", key_prefix=f"{PREFIX}/ds={DS}/", method="PUT", faulted=False) == 0
    # Nothing of the date is visible; latest/ is exactly the previous day's; the team was not notified.
    assert org.keys(f"{PREFIX}/ds={DS}/") == []
    assert {name: org.get(org.key("latest", name)) for name in (CSV, MANIFEST)} == latest_before
    assert notifications(org) == []
    merge_alerts = [a for a in alerts(org) if "merge_inventory failed" in a]
    assert len(merge_alerts) == 1
    assert "try 3" in merge_alerts[0]
