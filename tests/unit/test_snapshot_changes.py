"""changes.csv through merge_inventory on moto S3: the previous complete snapshot, latest/, notify."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from include.cmdb_inventory import contract
from include.cmdb_inventory.changes import CHANGE_COLUMNS, find_previous, snapshot_dates
from include.cmdb_inventory.config import Account, parse_settings
from include.cmdb_inventory.contract import CHANGES_NAME, MANIFEST_NAME
from include.cmdb_inventory.inventory import merge_inventory
from include.cmdb_inventory.notify import message
from include.cmdb_inventory.records import Record, instance_record, sort_key
from include.cmdb_inventory.run import RunInfo
from include.cmdb_inventory.storage import SnapshotStore
from tests.unit.conftest import stage_failed, stage_scanned

REGION = "us-east-1"
BUCKET = "cmdb-changes-bucket"
PREFIX = "cmdb/ec2-inventory"
X = Account("111111111111", "payments")
Y = Account("333333333333", "testing")
ACCOUNTS = (X, Y)

Servers = Mapping[str, Sequence[tuple[str, str, str]]]  # region -> (instance id, name, state)


@pytest.fixture
def s3_bucket() -> str:
    """The conftest's ``store``: this module's bucket, emptied between tests, behind a fresh client."""
    return BUCKET


def settings_for(**extra: Any) -> Any:
    return parse_settings(
        {
            "accounts": [{"id": a.id, "name": a.name} for a in ACCOUNTS],
            "bucket": BUCKET,
            "prefix": PREFIX,
            **extra,
        }
    )


def records(account: Account, region: str, servers: Sequence[tuple[str, str, str]], ds: str) -> list[Record]:
    return [
        instance_record(
            Account(account.id, account.name),
            region,
            {
                "InstanceId": instance,
                "InstanceType": "t3.micro",
                "State": {"Name": state},
                "Tags": [{"Key": "Name", "Value": name}],
            },
            f"{ds}T02:00:00Z",
        )[0]
        for instance, name, state in servers
    ]


def report(store: SnapshotStore, run: RunInfo, account: Account, servers: Servers | str) -> None:
    """What scan_account leaves in staging: a part and an OK status, or (a status string) a failed account."""
    if isinstance(servers, str):
        error = {"code": "AccessDenied", "message": "not authorized to perform sts:AssumeRole"}
        stage_failed(store, run, account, servers, error)
        return
    rows = sorted(
        (r for region, s in servers.items() for r in records(account, region, s, run.ds)), key=sort_key
    )
    regions = [{"region": r, "status": contract.OK, "instances": len(s)} for r, s in sorted(servers.items())]
    stage_scanned(store, run, account, rows, regions, note="")


def snapshot(
    store: SnapshotStore,
    ds: str,
    world: Mapping[str, Servers | str],
    *,
    overwrite: bool = False,
    kind: str = "scheduled",
    **extra: Any,
) -> dict[str, Any]:
    """One run of ``ds`` over ``world``: merge's summary."""
    run = RunInfo("cmdb_ec2_inventory", f"{kind}__{ds}T02:00:00+00:00", ds, f"{ds}T02:00:00+00:00")
    for account in ACCOUNTS:
        report(store, run, account, world[account.id])
    settings = settings_for(**extra)
    return merge_inventory(settings, run, store, [a.to_dict() for a in ACCOUNTS], overwrite=overwrite)


def read_csv(store: SnapshotStore, key: str) -> list[dict[str, str]]:
    body = store.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode("utf-8")
    reader = csv.DictReader(io.StringIO(body, newline=""))
    assert tuple(reader.fieldnames or ()) == CHANGE_COLUMNS
    return list(reader)


DAY1: dict[str, Servers | str] = {
    X.id: {"eu-west-1": [("i-x0001", "ledger", "running")], REGION: [("i-x0002", "web", "running")]},
    Y.id: {REGION: [("i-y0001", "test-1", "running"), ("i-y0002", "test-2", "stopped")]},
}


def test_first_snapshot_has_nothing_to_compare_with(store: SnapshotStore) -> None:
    summary = snapshot(store, "2026-11-19", DAY1)
    changes = summary["changes"]
    assert changes["status"] == "NO_PREVIOUS"
    assert changes["detail"] == "no snapshot before 2026-11-19 to compare with"
    assert (changes["added"], changes["removed"], changes["not_verified"], changes["rows"]) == (0, 0, 0, 0)
    assert read_csv(store, changes["key"]) == []  # the header only: nothing claimed
    assert "Changes:  none listed: no snapshot before 2026-11-19" in message(summary)


def test_a_failed_role_never_removes_the_accounts_instances(store: SnapshotStore) -> None:
    """Day 1 complete with Y's instances; day 2 Y's role fails: no removals, Y's instances NOT_VERIFIED."""
    snapshot(store, "2026-11-19", DAY1)
    day2: dict[str, Servers | str] = {
        X.id: {
            "eu-west-1": [],
            REGION: [("i-x0002", "web", "stopped"), ("i-x0003", "new-api", "running")],
        },
        Y.id: contract.ROLE_NOT_ASSUMABLE,
    }
    # Five instances: one removal is 20 %, which the mass-removal guard would hold (latest/ is checked
    # below; the guard has its own tests in test_removal_guard.py), so it is off here.
    summary = snapshot(store, "2026-11-20", day2, max_removed_fraction=1.0)
    assert summary["snapshot_complete"] is False
    changes = summary["changes"]
    assert changes["status"] == "COMPARED"
    assert (changes["previous_ds"], changes["previous_run_id"]) == (
        "2026-11-19",
        "scheduled__2026-11-19T02:00:00+00:00",
    )
    rows = read_csv(store, f"{PREFIX}/ds=2026-11-20/{CHANGES_NAME}")
    got = [
        (r["Change"], r["Account"], r["Region"], r["InstanceId"], r["Field"], r["OldValue"], r["NewValue"])
        for r in rows
    ]
    assert got == [
        ("REMOVED", X.id, "eu-west-1", "i-x0001", "", "", ""),
        ("CHANGED", X.id, REGION, "i-x0002", "State", "running", "stopped"),
        ("ADDED", X.id, REGION, "i-x0003", "", "", ""),
        ("NOT_VERIFIED", Y.id, REGION, "i-y0001", "", "", ""),
        ("NOT_VERIFIED", Y.id, REGION, "i-y0002", "", "", ""),
    ]
    reason = f"{Y.id} {REGION} ROLE_NOT_ASSUMABLE (AccessDenied) in this snapshot"
    assert [r["Reason"] for r in rows[3:]] == [reason, reason]
    assert [r["Name"] for r in rows] == ["ledger", "web", "new-api", "test-1", "test-2"]
    assert (changes["added"], changes["removed"], changes["changed"], changes["not_verified"]) == (1, 1, 1, 2)
    assert changes["changed_fields"] == 1
    assert changes["rows"] == 5
    assert [t["instance_id"] for t in changes["top"]] == ["i-x0001", "i-x0002", "i-x0003"]
    assert changes["not_verified_groups"] == [
        {"account": Y.id, "region": REGION, "reason": reason, "instances": 2}
    ]

    # The manifest carries the same summary; latest/ has the same changes.csv.
    manifest = store.get_json(f"{PREFIX}/ds=2026-11-20/{MANIFEST_NAME}")
    assert manifest is not None
    assert manifest["changes"] == changes
    latest = store.s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/latest/{CHANGES_NAME}")["Body"].read()
    assert latest == store.s3.get_object(Bucket=BUCKET, Key=changes["key"])["Body"].read()

    # The notification carries the counts and the top changes, and says Y's instances are not removed.
    text = message(summary)
    assert "Changes since 2026-11-19: 1 added, 1 removed, 1 changed, 2 not verified" in text
    assert f"  REMOVED  {X.id} eu-west-1 i-x0001 (ledger)" in text
    assert f"  CHANGED  {X.id} {REGION} i-x0002 (web) State: running -> stopped" in text
    assert f"  ADDED    {X.id} {REGION} i-x0003 (new-api)" in text
    assert f"  NOT_VERIFIED 2 instance(s), not counted as removed: {reason}" in text


def test_the_previous_snapshot_is_the_newest_complete_earlier_date(store: SnapshotStore) -> None:
    snapshot(store, "2026-11-18", DAY1)
    snapshot(store, "2026-11-19", {**DAY1, Y.id: contract.ROLE_NOT_ASSUMABLE})  # partial: skipped
    day3 = snapshot(store, "2026-11-20", DAY1)["changes"]
    assert day3["previous_ds"] == "2026-11-18"
    assert day3["rows"] == 0
    assert day3["detail"].startswith("compared with the complete snapshot of 2026-11-18")

    # A rerun of the same date compares with an earlier date, never with the snapshot it replaces.
    moved = {**DAY1, X.id: {REGION: [("i-x0002", "web", "running")], "eu-west-1": []}}
    rerun = snapshot(store, "2026-11-20", moved, overwrite=True, kind="manual")["changes"]
    assert rerun["previous_ds"] == "2026-11-18"
    assert rerun["removed"] == 1

    # A backfill of an earlier date compares with an even earlier one; other folders are not dates.
    assert snapshot_dates(store) == ["2026-11-18", "2026-11-19", "2026-11-20"]
    found, detail = find_previous(store, "2026-11-18")
    assert found is None
    assert detail == "no snapshot before 2026-11-18 to compare with"
    found, detail = find_previous(store, "2026-11-19", lookback=1)
    assert found is not None
    assert found["ds"] == "2026-11-18"
    found, detail = find_previous(store, "2026-11-20", lookback=1)
    assert found is None
    assert "none of the 1 newest snapshot dates before 2026-11-20 is complete" in detail


def previous_csv_key(store: SnapshotStore, ds: str) -> str:
    """The CSV that change detection reads for ``ds``: the one its manifest commits (``csv_key``)."""
    manifest = store.get_json(f"{PREFIX}/ds={ds}/{MANIFEST_NAME}")
    assert manifest is not None
    return str(manifest["csv_key"])


def test_an_altered_previous_csv_is_reported_not_compared(store: SnapshotStore) -> None:
    snapshot(store, "2026-11-19", DAY1)
    key = previous_csv_key(store, "2026-11-19")
    altered = store.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().replace(b"i-x0002", b"i-x0009")
    store.s3.put_object(Bucket=BUCKET, Key=key, Body=altered)

    summary = snapshot(store, "2026-11-20", DAY1)
    assert summary["written"] is True  # the snapshot itself is fine and written
    changes = summary["changes"]
    assert changes["status"] == "ERROR"
    assert "does not match its manifest's csv_sha256" in changes["detail"]
    assert read_csv(store, changes["key"]) == []
    assert "Changes:  none listed: not compared: the previous snapshot's CSV" in message(summary)


def test_a_kept_snapshot_reports_its_own_changes(store: SnapshotStore) -> None:
    snapshot(store, "2026-11-19", DAY1)
    first = snapshot(store, "2026-11-20", {**DAY1, X.id: {REGION: [], "eu-west-1": []}})
    again = snapshot(store, "2026-11-20", DAY1, kind="manual")  # another run; complete already: kept
    assert again["written"] is False
    assert again["changes"] == first["changes"]
    assert again["changes"]["removed"] == 2


# --- an unusable previous manifest or changes input: the run writes its snapshot and says why ------------


def put_raw(store: SnapshotStore, key: str, data: bytes) -> None:
    store.s3.put_object(Bucket=BUCKET, Key=key, Body=data, ContentType="application/json")


def manifest_key(ds: str) -> str:
    return f"{PREFIX}/ds={ds}/{MANIFEST_NAME}"


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        pytest.param(lambda raw: raw[: len(raw) // 2], "not valid JSON", id="truncated"),
        pytest.param(lambda raw: b"", "not valid JSON", id="empty"),
        pytest.param(lambda raw: b"\xff\xfe{garbage", "not valid JSON", id="not-utf8"),
        pytest.param(lambda raw: b'["a", "list"]', "not a JSON object (a JSON list)", id="a-list"),
        pytest.param(lambda raw: b"null", "not a JSON object (a JSON NoneType)", id="null"),
    ],
)
def test_an_unusable_previous_manifest_is_skipped_and_named(
    store: SnapshotStore, damage: Any, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    snapshot(store, "2026-11-19", DAY1)
    key = manifest_key("2026-11-19")
    put_raw(store, key, damage(store.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()))

    summary = snapshot(store, "2026-11-20", DAY1)

    # The run writes its own snapshot; the change report says why it could not compare.
    assert summary["written"] is True
    assert summary["snapshot_complete"] is True
    assert store.get_json(manifest_key("2026-11-20")) is not None
    changes = summary["changes"]
    assert changes["status"] == "NO_PREVIOUS"
    assert "skipped 2026-11-19, whose manifest.json is unusable" in changes["detail"]
    assert problem in changes["detail"]
    assert read_csv(store, changes["key"]) == []
    assert "whose manifest.json is unusable" in message(summary)
    # Logged, naming the key.
    assert any(f"s3://{BUCKET}/{key} is unusable" in r.getMessage() for r in caplog.records)


def test_an_unusable_manifest_is_skipped_for_an_earlier_complete_one(store: SnapshotStore) -> None:
    snapshot(store, "2026-11-18", DAY1)
    snapshot(store, "2026-11-19", DAY1)
    put_raw(store, manifest_key("2026-11-19"), b'{"complete": true, "csv_key": "x", "row_co')

    previous, detail = find_previous(store, "2026-11-20")
    assert previous is not None
    assert previous["ds"] == "2026-11-18"
    assert detail.startswith("compared with the complete snapshot of 2026-11-18 (run ")
    assert "; skipped 2026-11-19, whose manifest.json is unusable (not valid JSON" in detail

    summary = snapshot(store, "2026-11-20", DAY1)
    assert summary["changes"]["status"] == "COMPARED"
    assert summary["changes"]["previous_ds"] == "2026-11-18"


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda raw: raw[: len(raw) // 2], id="truncated"),
        pytest.param(lambda raw: b'{"not": "a CSV"}', id="json-not-csv"),
        pytest.param(lambda raw: b"", id="empty"),
    ],
)
def test_an_unusable_previous_csv_is_reported_not_compared(store: SnapshotStore, damage: Any) -> None:
    snapshot(store, "2026-11-19", DAY1)
    key = previous_csv_key(store, "2026-11-19")
    store.s3.put_object(
        Bucket=BUCKET, Key=key, Body=damage(store.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    )

    summary = snapshot(store, "2026-11-20", DAY1)
    assert summary["written"] is True
    changes = summary["changes"]
    assert changes["status"] == "ERROR"
    assert changes["detail"].startswith("not compared: the previous snapshot's CSV")
    assert read_csv(store, changes["key"]) == []
    assert "Changes:  none listed: not compared" in message(summary)


def test_a_previous_manifest_with_a_foreign_ledger_is_reported_not_compared(store: SnapshotStore) -> None:
    snapshot(store, "2026-11-19", DAY1)
    manifest = store.get_json(manifest_key("2026-11-19"))
    assert manifest is not None
    store.put_json(manifest_key("2026-11-19"), {**manifest, "coverage": "all of it"})

    summary = snapshot(store, "2026-11-20", DAY1)
    assert summary["written"] is True
    assert summary["changes"]["status"] == "ERROR"
    assert (
        "the coverage ledger in the previous snapshot (2026-11-19) is not a list"
        in summary["changes"]["detail"]
    )
