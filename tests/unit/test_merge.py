"""merge_inventory and check_coverage against a real SnapshotStore (the conftest's) on in-process moto."""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from include.cmdb_inventory import contract
from include.cmdb_inventory.config import Account, Settings, parse_settings
from include.cmdb_inventory.contract import COLUMNS, CSV_NAME, MANIFEST_NAME, SCHEMA_VERSION
from include.cmdb_inventory.inventory import CoverageError, check_coverage, merge_inventory
from include.cmdb_inventory.records import Record, csv_row, instance_record, sort_key
from include.cmdb_inventory.run import RunInfo
from include.cmdb_inventory.storage import SnapshotStore
from tests.unit.conftest import (  # of the conftest's ``s3`` and ``store`` fixtures
    BUCKET,
    PREFIX,
    stage_failed,
    stage_scanned,
)

A = Account("111111111111", "payments-prod")
B = Account("222222222222", "")
C = Account("333333333333", "data-lake")
DS = "2024-03-01"
ISO_UTC_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

RegionPlan = Mapping[str, int | tuple[str, str]]  # region -> instance count, or (status, error code)


def make_settings(accounts: Sequence[Account] = (C, A, B), **extra: Any) -> Settings:
    """Settings with the accounts deliberately not in id order."""
    listed = [{"id": a.id, "name": a.name} if a.name else a.id for a in accounts]
    return parse_settings({"accounts": listed, "bucket": BUCKET, "prefix": PREFIX, **extra})


def expected_of(settings: Settings) -> list[dict[str, str]]:
    return [a.to_dict() for a in settings.accounts]


def run_info(run_id: str = "scheduled__2024-03-01T00:00:00+00:00", ds: str = DS) -> RunInfo:
    return RunInfo(dag_id="cmdb_ec2_inventory", run_id=run_id, ds=ds, logical_date=f"{ds}T00:00:00+00:00")


def records_for(account: Account, region: str, count: int, tag: str = "") -> list[Record]:
    return [
        instance_record(
            Account(account.id, account.name),
            region,
            {
                "InstanceId": f"i-{account.id[:3]}{n:05d}{tag}",
                "InstanceType": "t3.micro",
                "State": {"Name": "running"},
                "Placement": {"AvailabilityZone": f"{region}a"},
                "Tags": [{"Key": "Name", "Value": f'=host {n}, "{region}"{tag}'}],
            },
            "2024-03-01T01:00:00Z",
        )[0]
        for n in range(count)
    ]


def report_ok(
    store: SnapshotStore, run: RunInfo, account: Account, plan: RegionPlan, tag: str = ""
) -> list[Record]:
    """What scan_account leaves in staging for an account whose role was assumed: a part and a status."""
    records: list[Record] = []
    regions: list[dict[str, Any]] = []
    for region, outcome in sorted(plan.items()):
        if isinstance(outcome, int):
            records += records_for(account, region, outcome, tag)
            regions.append({"region": region, "status": contract.OK, "instances": outcome})
        else:
            status, code = outcome
            error = {"code": code, "message": f"{code} in {region}"}
            regions.append({"region": region, "status": status, "instances": 0, "error": error})
    records.sort(key=sort_key)
    stage_scanned(
        store,
        run,
        account,
        records,
        regions,
        role_arn=f"arn:aws:iam::{account.id}:role/CMDBDiscovery",
        regions_source="describe_regions",
        note="",
    )
    return records


def report_failed(store: SnapshotStore, run: RunInfo, account: Account, status: str, code: str) -> None:
    """What scan_account leaves in staging for an account that failed before its regions were known."""
    stage_failed(
        store,
        run,
        account,
        status,
        {"code": code, "message": f"{code}: not authorized to perform sts:AssumeRole"},
    )


def report_all_ok(store: SnapshotStore, run: RunInfo, tag: str = "") -> dict[str, list[Record]]:
    return {
        A.id: report_ok(store, run, A, {"eu-west-1": 3, "us-east-1": 2}, tag),
        B.id: report_ok(store, run, B, {"eu-west-1": 0, "us-east-1": 1}, tag),
        C.id: report_ok(store, run, C, {"ap-south-1": 4}, tag),
    }


def body(s3: Any, key: str) -> bytes:
    return s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def exists(s3: Any, key: str) -> bool:
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=key).get("Contents", [])
    return any(o["Key"] == key for o in listed)


def csv_rows(s3: Any, key: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(body(s3, key).decode("utf-8"), newline="")))


def manifest_at(store: SnapshotStore, ds: str = DS) -> dict[str, Any]:
    doc = store.get_json(store.layout.snapshot(ds, MANIFEST_NAME))
    assert doc is not None
    return doc


def entries(manifest: Mapping[str, Any], account: Account) -> list[dict[str, Any]]:
    return [e for e in manifest["coverage"] if e["account"] == account.id]


# --- the happy path ---------------------------------------------------------------------------------------


def test_merge_writes_the_parts_rows_sorted_by_account(s3: Any, store: SnapshotStore) -> None:
    settings, run = make_settings(), run_info()
    parts = report_all_ok(store, run)
    summary = merge_inventory(settings, run, store, expected_of(settings))

    assert summary["written"] is True
    rows = csv_rows(s3, store.layout.snapshot(DS, CSV_NAME))
    assert rows[0] == list(COLUMNS)
    expected_rows = [csv_row(r) for account in sorted(parts) for r in parts[account]]
    assert rows[1:] == expected_rows
    assert [r[:3] for r in rows[1:]] == sorted(r[:3] for r in rows[1:])
    assert [r[0] for r in rows[1:]] == [A.id] * 5 + [B.id] + [C.id] * 4
    assert all(r[COLUMNS.index("Name")].startswith("'=host") for r in rows[1:])  # neutralised
    assert summary["row_count"] == len(rows) - 1 == 10


def test_manifest_fields(s3: Any, store: SnapshotStore) -> None:
    settings, run = make_settings(), run_info()
    report_all_ok(store, run)
    summary = merge_inventory(settings, run, store, expected_of(settings))

    csv_key = store.layout.snapshot(DS, CSV_NAME)
    manifest = manifest_at(store)
    assert manifest["dag_run_id"] == run.run_id
    assert manifest["logical_date"] == run.logical_date
    assert ISO_UTC_RE.match(manifest["collected_at"])
    assert manifest["schema_version"] == SCHEMA_VERSION
    # csv_key names the commit's own CSV (never rewritten); the contract's key holds a copy of it.
    assert manifest["csv_key"] == f"{manifest['commit_prefix']}/{CSV_NAME}"
    assert manifest["commit_prefix"].startswith(f"{PREFIX}/ds={DS}/run=")
    assert manifest["csv_uri"] == f"s3://{BUCKET}/{manifest['csv_key']}"
    assert manifest["row_count"] == 10
    assert manifest["complete"] is True
    assert manifest["columns"] == list(COLUMNS)
    assert manifest["csv_sha256"] == hashlib.sha256(body(s3, manifest["csv_key"])).hexdigest()
    assert body(s3, csv_key) == body(s3, manifest["csv_key"])
    assert manifest["csv_bytes"] == len(body(s3, csv_key))
    head = s3.head_object(Bucket=BUCKET, Key=csv_key)
    assert head["Metadata"]["commit-id"] == manifest["commit_id"]
    assert head["Metadata"]["sha256"] == manifest["csv_sha256"]
    assert [(p["name"], p["key"]) for p in manifest["published"]] == [
        ("changes.csv", manifest["changes"]["key"]),
        ("ec2_inventory.parquet", None),
        (contract.IRE_PAYLOAD_NAME, None),  # the ServiceNow export is off by default
        (CSV_NAME, manifest["csv_key"]),
    ]
    assert manifest["servicenow"] is None
    # The mass-removal guard: the first snapshot has nothing to compare with.
    assert manifest["removal_guard"]["state"] == contract.GUARD_CLEAR
    assert summary["removal_guard"] == manifest["removal_guard"]
    assert manifest["tag_columns"] == []
    assert manifest["schema_version"] == 2
    assert manifest["accounts_expected"] == 3
    assert manifest["accounts_covered"] == 3
    assert manifest["regions_scanned"] == 5

    ledger = {(e["account"], e["region"]): e for e in manifest["coverage"]}
    assert set(ledger) == {
        (A.id, "eu-west-1"),
        (A.id, "us-east-1"),
        (B.id, "eu-west-1"),
        (B.id, "us-east-1"),
        (C.id, "ap-south-1"),
    }
    assert ledger[(A.id, "eu-west-1")]["instances"] == 3
    assert ledger[(C.id, "ap-south-1")]["instances"] == 4
    for entry in manifest["coverage"]:
        assert {"account", "region", "status", "instances"} <= set(entry)
        assert entry["status"] == contract.OK
        assert "error" not in entry
    assert [a["id"] for a in manifest["accounts"]] == [A.id, B.id, C.id]
    assert summary["csv_uri"] == f"s3://{BUCKET}/{csv_key}"
    assert summary["snapshot_complete"] is True
    assert summary["gaps"] == []
    check_coverage(summary)  # complete: does not raise


def test_latest_is_a_copy_of_the_snapshot(s3: Any, store: SnapshotStore) -> None:
    settings, run = make_settings(), run_info()
    report_all_ok(store, run)
    summary = merge_inventory(settings, run, store, expected_of(settings))
    assert summary["latest_updated"] is True
    layout = store.layout
    assert body(s3, layout.latest(CSV_NAME)) == body(s3, layout.snapshot(DS, CSV_NAME))
    assert store.get_json(layout.latest(MANIFEST_NAME)) == manifest_at(store)


def test_merge_of_an_account_with_no_instances(s3: Any, store: SnapshotStore) -> None:
    settings, run = make_settings([A]), run_info()
    report_ok(store, run, A, {"eu-west-1": 0})
    summary = merge_inventory(settings, run, store, expected_of(settings))
    assert csv_rows(s3, store.layout.snapshot(DS, CSV_NAME)) == [list(COLUMNS)]
    assert summary["snapshot_complete"] is True
    assert manifest_at(store)["row_count"] == 0


# --- gaps -------------------------------------------------------------------------------------------------


def test_an_account_without_status_is_task_failed(s3: Any, store: SnapshotStore) -> None:
    settings, run = make_settings(), run_info()
    report_ok(store, run, A, {"eu-west-1": 2})
    report_ok(store, run, C, {"eu-west-1": 1})  # B never reported
    summary = merge_inventory(settings, run, store, expected_of(settings))

    manifest = manifest_at(store)
    (entry,) = entries(manifest, B)
    assert entry["status"] == contract.TASK_FAILED
    assert entry["region"] is None
    assert entry["instances"] == 0
    assert entry["error"]["code"] == "NoStatus"
    assert entry["error"]["message"]
    assert manifest["complete"] is False
    assert manifest["row_count"] == 3
    rows = csv_rows(s3, store.layout.snapshot(DS, CSV_NAME))
    assert [r[0] for r in rows[1:]] == [A.id, A.id, C.id]
    assert [(g["account"], g["status"]) for g in summary["gaps"]] == [(B.id, contract.TASK_FAILED)]

    with pytest.raises(CoverageError) as info:
        check_coverage(summary)
    assert B.id in str(info.value)
    assert contract.TASK_FAILED in str(info.value)
    assert "2 of 3 accounts covered" in str(info.value)


def test_role_not_assumable_is_a_gap(s3: Any, store: SnapshotStore) -> None:
    settings, run = make_settings(), run_info()
    report_ok(store, run, A, {"eu-west-1": 2})
    report_failed(store, run, B, contract.ROLE_NOT_ASSUMABLE, "AccessDenied")
    report_ok(store, run, C, {"eu-west-1": 1})
    summary = merge_inventory(settings, run, store, expected_of(settings))

    manifest = manifest_at(store)
    assert manifest["complete"] is False
    assert manifest["accounts_covered"] == 2
    (entry,) = entries(manifest, B)
    assert entry["status"] == contract.ROLE_NOT_ASSUMABLE
    assert entry["error"]["code"] == "AccessDenied"
    (gap,) = summary["gaps"]
    assert (gap["account"], gap["region"], gap["status"]) == (B.id, None, contract.ROLE_NOT_ASSUMABLE)
    assert summary["snapshot_complete"] is False
    assert summary["written"] is True  # partial snapshots are still written
    with pytest.raises(CoverageError, match=f"{B.id} {contract.ROLE_NOT_ASSUMABLE}"):
        check_coverage(summary)


def test_a_disabled_region_is_not_a_gap(store: SnapshotStore) -> None:
    settings, run = make_settings([A]), run_info()
    report_ok(store, run, A, {"eu-west-1": 2, "ap-east-1": (contract.REGION_DISABLED, "AuthFailure")})
    summary = merge_inventory(settings, run, store, expected_of(settings))

    manifest = manifest_at(store)
    assert manifest["complete"] is True
    assert manifest["regions_disabled"] == 1
    disabled = [e for e in manifest["coverage"] if e["region"] == "ap-east-1"]
    assert disabled[0]["status"] == contract.REGION_DISABLED
    assert disabled[0]["error"]["code"] == "AuthFailure"
    assert summary["gaps"] == []
    check_coverage(summary)


@pytest.mark.parametrize(("denied_is_gap", "complete"), [(True, False), (False, True)])
def test_a_denied_region_is_a_gap_unless_configured(
    store: SnapshotStore, denied_is_gap: bool, complete: bool
) -> None:
    settings = make_settings([A], denied_regions_fail_coverage=denied_is_gap)
    run = run_info()
    report_ok(
        store, run, A, {"eu-west-1": 2, "me-south-1": (contract.REGION_DENIED, "UnauthorizedOperation")}
    )
    summary = merge_inventory(settings, run, store, expected_of(settings))

    manifest = manifest_at(store)
    assert manifest["complete"] is complete
    assert manifest["denied_regions_fail_coverage"] is denied_is_gap
    (denied,) = [e for e in manifest["coverage"] if e["region"] == "me-south-1"]
    assert denied["status"] == contract.REGION_DENIED
    assert denied["error"]["code"] == "UnauthorizedOperation"
    assert [g["region"] for g in summary["gaps"]] == (["me-south-1"] if denied_is_gap else [])
    if complete:
        check_coverage(summary)
    else:
        with pytest.raises(CoverageError, match="me-south-1 REGION_DENIED"):
            check_coverage(summary)


def test_a_throttled_region_is_a_gap(store: SnapshotStore) -> None:
    settings, run = make_settings([A]), run_info()
    report_ok(store, run, A, {"eu-west-1": 1, "us-west-2": (contract.THROTTLED, "RequestLimitExceeded")})
    summary = merge_inventory(settings, run, store, expected_of(settings))
    assert manifest_at(store)["complete"] is False
    assert [(g["region"], g["error"]["code"]) for g in summary["gaps"]] == [
        ("us-west-2", "RequestLimitExceeded")
    ]


# --- latest/ and backfills --------------------------------------------------------------------------------


def merge_date(store: SnapshotStore, ds: str, tag: str = "", **kwargs: Any) -> dict[str, Any]:
    # A tag gives every instance a new id, so the previous date's are all REMOVED: the mass-removal guard
    # (off here; tested in test_removal_guard.py) would hold latest/, which these tests follow by date.
    settings = make_settings(max_removed_fraction=1.0)
    run = run_info(run_id=f"scheduled__{ds}T00:00:00+00:00{tag}", ds=ds)
    report_all_ok(store, run, tag=tag)
    return merge_inventory(settings, run, store, expected_of(settings), **kwargs)


def test_latest_follows_the_newest_date_not_a_backfill(s3: Any, store: SnapshotStore) -> None:
    layout = store.layout
    assert merge_date(store, "2024-03-02")["latest_updated"] is True
    latest_csv, latest_manifest = body(s3, layout.latest(CSV_NAME)), body(s3, layout.latest(MANIFEST_NAME))

    backfill = merge_date(store, "2024-03-01", tag="-old")
    assert backfill["written"] is True
    assert backfill["latest_updated"] is False
    assert exists(s3, layout.snapshot("2024-03-01", CSV_NAME))
    assert body(s3, layout.latest(CSV_NAME)) == latest_csv
    assert body(s3, layout.latest(MANIFEST_NAME)) == latest_manifest
    assert store.get_json(layout.latest(MANIFEST_NAME))["ds"] == "2024-03-02"

    newer = merge_date(store, "2024-03-03", tag="-new")
    assert newer["latest_updated"] is True
    assert store.get_json(layout.latest(MANIFEST_NAME))["ds"] == "2024-03-03"
    assert body(s3, layout.latest(CSV_NAME)) == body(s3, layout.snapshot("2024-03-03", CSV_NAME))
    assert b"-new" in body(s3, layout.latest(CSV_NAME))


# --- overwrite policy -------------------------------------------------------------------------------------


def test_a_complete_snapshot_is_kept_unless_overwrite(s3: Any, store: SnapshotStore) -> None:
    settings, layout = make_settings(), store.layout
    first = run_info("scheduled__2024-03-01T00:00:00+00:00")
    report_all_ok(store, first, tag="-first")
    merge_inventory(settings, first, store, expected_of(settings))
    csv_before = body(s3, layout.snapshot(DS, CSV_NAME))
    manifest_before = body(s3, layout.snapshot(DS, MANIFEST_NAME))

    second = run_info("manual__2024-03-01T09:00:00+00:00")
    report_all_ok(store, second, tag="-second")
    summary = merge_inventory(settings, second, store, expected_of(settings))
    assert summary["written"] is False
    assert "overwrite" in summary["decision_reason"]
    assert first.run_id in summary["decision_reason"]
    assert body(s3, layout.snapshot(DS, CSV_NAME)) == csv_before
    assert body(s3, layout.snapshot(DS, MANIFEST_NAME)) == manifest_before
    assert summary["snapshot_complete"] is True
    check_coverage(summary)

    summary = merge_inventory(settings, second, store, expected_of(settings), overwrite=True)
    assert summary["written"] is True
    assert manifest_at(store)["dag_run_id"] == second.run_id
    assert b"-second" in body(s3, layout.snapshot(DS, CSV_NAME))
    assert b"-first" not in body(s3, layout.snapshot(DS, CSV_NAME))


def test_a_partial_snapshot_is_replaced_by_a_complete_one(s3: Any, store: SnapshotStore) -> None:
    settings, layout = make_settings(), store.layout
    first = run_info("scheduled__2024-03-01T00:00:00+00:00")
    report_ok(store, first, A, {"eu-west-1": 3})
    report_failed(store, first, B, contract.ROLE_NOT_ASSUMABLE, "AccessDenied")
    report_ok(store, first, C, {"eu-west-1": 1})
    assert merge_inventory(settings, first, store, expected_of(settings))["snapshot_complete"] is False
    assert manifest_at(store)["complete"] is False

    second = run_info("manual__2024-03-01T09:00:00+00:00")
    report_all_ok(store, second, tag="-second")
    summary = merge_inventory(settings, second, store, expected_of(settings))
    assert summary["written"] is True
    assert "partial" in summary["decision_reason"]
    manifest = manifest_at(store)
    assert manifest["complete"] is True
    assert manifest["dag_run_id"] == second.run_id
    assert store.get_json(layout.latest(MANIFEST_NAME))["dag_run_id"] == second.run_id
    rows = csv_rows(s3, layout.snapshot(DS, CSV_NAME))
    assert len(rows) - 1 == manifest["row_count"] == 10
    check_coverage(summary)


def test_a_partial_snapshot_is_kept_over_a_worse_one(s3: Any, store: SnapshotStore) -> None:
    settings, layout = make_settings(), store.layout
    first = run_info("scheduled__2024-03-01T00:00:00+00:00")
    report_ok(store, first, A, {"eu-west-1": 3, "us-east-1": 1})
    report_failed(store, first, B, contract.ROLE_NOT_ASSUMABLE, "AccessDenied")
    report_ok(store, first, C, {"eu-west-1": 1})
    merge_inventory(settings, first, store, expected_of(settings))
    csv_before = body(s3, layout.snapshot(DS, CSV_NAME))

    second = run_info("manual__2024-03-01T09:00:00+00:00")
    report_ok(store, second, A, {"eu-west-1": 3})
    report_failed(store, second, B, contract.ROLE_NOT_ASSUMABLE, "AccessDenied")
    report_failed(store, second, C, contract.ROLE_NOT_ASSUMABLE, "AccessDenied")
    summary = merge_inventory(settings, second, store, expected_of(settings))
    assert summary["written"] is False
    assert "covers more" in summary["decision_reason"]
    assert body(s3, layout.snapshot(DS, CSV_NAME)) == csv_before
    assert manifest_at(store)["dag_run_id"] == first.run_id
    # the summary describes the snapshot that stays: the first run's
    assert summary["row_count"] == 5
    assert [g["account"] for g in summary["gaps"]] == [B.id]


def test_skip_reason_writes_nothing(s3: Any, store: SnapshotStore) -> None:
    merge_date(store, DS)
    before = {k: body(s3, k) for k in (store.layout.snapshot(DS, CSV_NAME), store.layout.latest(CSV_NAME))}
    settings, run = make_settings(), run_info("manual__2024-03-01T10:00:00+00:00")
    summary = merge_inventory(settings, run, store, [], skip_reason="a complete snapshot already exists")
    assert summary["written"] is False
    assert summary["decision_reason"] == "a complete snapshot already exists"
    assert summary["snapshot_complete"] is True
    assert {k: body(s3, k) for k in before} == before
    assert not exists(s3, f"{store.layout.staging(DS, run.run_id)}/{MANIFEST_NAME}")


# --- failures leave the previous snapshot alone -----------------------------------------------------------


def fail_upload(monkeypatch: pytest.MonkeyPatch, store: SnapshotStore) -> None:
    def boom(*_: Any, **__: Any) -> None:
        raise ConnectionError("upload interrupted")

    monkeypatch.setattr(store, "upload_csv", boom)


def test_a_failed_upload_of_a_new_date_keeps_latest(
    s3: Any, store: SnapshotStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = store.layout
    merge_date(store, "2024-03-01")
    latest_before = {k: body(s3, k) for k in (layout.latest(CSV_NAME), layout.latest(MANIFEST_NAME))}

    fail_upload(monkeypatch, store)
    with pytest.raises(ConnectionError):
        merge_date(store, "2024-03-02", tag="-failed")
    assert not exists(s3, layout.snapshot("2024-03-02", CSV_NAME))
    assert not exists(s3, layout.snapshot("2024-03-02", MANIFEST_NAME))
    assert {k: body(s3, k) for k in latest_before} == latest_before


def test_a_failed_upload_over_a_partial_snapshot_keeps_it(
    s3: Any, store: SnapshotStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, layout = make_settings(), store.layout
    first = run_info("scheduled__2024-03-01T00:00:00+00:00")
    report_ok(store, first, A, {"eu-west-1": 3})
    report_failed(store, first, B, contract.ROLE_NOT_ASSUMABLE, "AccessDenied")
    report_ok(store, first, C, {"eu-west-1": 1})
    merge_inventory(settings, first, store, expected_of(settings))
    keys = [
        layout.snapshot(DS, CSV_NAME),
        layout.snapshot(DS, MANIFEST_NAME),
        layout.latest(CSV_NAME),
        layout.latest(MANIFEST_NAME),
    ]
    before = {k: body(s3, k) for k in keys}

    second = run_info("manual__2024-03-01T09:00:00+00:00")
    report_all_ok(store, second, tag="-second")
    fail_upload(monkeypatch, store)
    with pytest.raises(ConnectionError):
        merge_inventory(settings, second, store, expected_of(settings))
    assert {k: body(s3, k) for k in keys} == before


def test_a_retried_merge_repairs_latest_after_a_failed_copy(
    store: SnapshotStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    merge_date(store, "2024-03-01")
    # max_removed_fraction=1: the tag renews every id (see merge_date); the guard would hold latest/.
    settings = make_settings(max_removed_fraction=1.0)
    run = run_info("scheduled__2024-03-02T00:00:00+00:00", ds="2024-03-02")
    report_all_ok(store, run, tag="-new")

    def interrupted(*_: Any, **__: Any) -> None:
        raise ConnectionError("copy interrupted")

    with monkeypatch.context() as patch:
        patch.setattr(store, "copy_sized", interrupted)
        with pytest.raises(ConnectionError):
            merge_inventory(settings, run, store, expected_of(settings))
    assert manifest_at(store, "2024-03-02")["dag_run_id"] == run.run_id  # the date's snapshot was written

    summary = merge_inventory(settings, run, store, expected_of(settings))  # Airflow retries the task
    assert summary["latest_updated"] is True
    assert store.get_json(store.layout.latest(MANIFEST_NAME))["ds"] == "2024-03-02"


# --- unusable manifests ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage", [b'{"dag_run_id": "scheduled__2024-03-01T00:00:00+00:00", "comp', b"[1, 2]"]
)
def test_an_unusable_manifest_of_the_date_and_of_latest_counts_as_absent(
    s3: Any, store: SnapshotStore, damage: bytes
) -> None:
    layout = store.layout
    for key in (layout.snapshot(DS, MANIFEST_NAME), layout.latest(MANIFEST_NAME)):
        s3.put_object(Bucket=BUCKET, Key=key, Body=damage)
    settings, run = make_settings(), run_info("manual__2024-03-01T09:00:00+00:00")
    report_all_ok(store, run)

    summary = merge_inventory(settings, run, store, expected_of(settings))

    # Written (nothing usable to keep), and both unusable documents are named, with why.
    assert summary["written"] is True
    assert "the date's manifest.json was unusable, treated as absent: not " in summary["decision_reason"]
    assert [u["key"] for u in summary["unusable"]] == [
        layout.snapshot(DS, MANIFEST_NAME),
        layout.latest(MANIFEST_NAME),
    ]
    assert all(u["problem"].startswith("not ") for u in summary["unusable"])
    assert summary["latest_updated"] is True
    manifest = manifest_at(store)
    assert manifest["dag_run_id"] == run.run_id
    assert store.get_json(layout.latest(MANIFEST_NAME)) == manifest
    assert hashlib.sha256(body(s3, layout.latest(CSV_NAME))).hexdigest() == manifest["csv_sha256"]
    # The next run finds a usable manifest again: nothing is named any more.
    again = merge_inventory(settings, run, store, expected_of(settings))
    assert again["unusable"] == []


# --- a date's objects change together: the merge killed between any two writes ---------------------------

# Every S3 request that changes an object.
S3_WRITES = frozenset(
    {
        "PutObject",
        "CopyObject",
        "CreateMultipartUpload",
        "UploadPart",
        "UploadPartCopy",
        "CompleteMultipartUpload",
        "DeleteObject",
        "DeleteObjects",
    }
)
FIXED_NAMES = (CSV_NAME, "changes.csv", "ec2_inventory.parquet", contract.IRE_PAYLOAD_NAME, MANIFEST_NAME)


class Killed(BaseException):
    """The merge's process dies (a BaseException, so no ``except Exception`` of the code survives it)."""


class Killer:
    """
    A botocore ``before-parameter-build`` handler: the merge dies just before its write number ``at``
    (every S3 call after that fails too, as in a process that is gone); ``at=None`` only counts them.
    """

    def __init__(self, at: int | None = None) -> None:
        self.at = at
        self.writes: list[tuple[str, str]] = []
        self.dead = False

    def __call__(self, model: Any, params: Mapping[str, Any], **_: Any) -> None:
        if self.dead:
            raise Killed("the process is gone")
        if model.name in S3_WRITES:
            self.writes.append((model.name, str(params.get("Key", ""))))
            if len(self.writes) == self.at:
                self.dead = True
                raise Killed(f"killed before write {self.at}: {model.name} {params.get('Key')}")


def killed_merge(store: SnapshotStore, at: int | None, merge: Any) -> Killer:
    """Run ``merge()`` with the merge killed before write ``at``; the killer tells what was written."""
    killer = Killer(at)
    store.s3.meta.events.register("before-parameter-build.s3", killer, unique_id="test-killer")
    try:
        merge()
    except Killed:
        assert at is not None
    else:
        assert at is None or at > len(killer.writes), f"write {at} never came: {killer.writes}"
    finally:
        store.s3.meta.events.unregister("before-parameter-build.s3", unique_id="test-killer")
    return killer


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def maybe_body(s3: Any, key: str) -> bytes | None:
    return body(s3, key) if exists(s3, key) else None


def read_as_a_reader(s3: Any, store: SnapshotStore, folder: str) -> dict[str, Any] | None:
    """
    What a reader sees who reads ``folder``'s manifest first and then the objects its keys name: ``None``
    when there is no manifest; else the manifest, after checking each object is whole and matches it.
    """
    key = f"{PREFIX}/{folder}/{MANIFEST_NAME}"
    if not exists(s3, key):
        return None
    manifest = store.get_json(key)
    assert manifest is not None, f"{key} is not a JSON object"
    assert sha(body(s3, manifest["csv_key"])) == manifest["csv_sha256"], folder
    rows = csv_rows(s3, manifest["csv_key"])
    assert len(rows) - 1 == manifest["row_count"], folder
    assert sha(body(s3, manifest["changes"]["key"])) == manifest["changes"]["sha256"], folder
    if manifest.get("parquet"):
        assert sha(body(s3, manifest["parquet"]["key"])) == manifest["parquet"]["sha256"], folder
    return manifest


def assert_fixed_names_are_one_runs(
    s3: Any, store: SnapshotStore, folder: str, manifest: Mapping[str, Any]
) -> None:
    """Every fixed-name file of ``folder`` (``ds=D`` or ``latest``) is the committed snapshot's, whole."""
    assert store.get_json(f"{PREFIX}/{folder}/{MANIFEST_NAME}") == manifest, folder
    assert sha(body(s3, f"{PREFIX}/{folder}/{CSV_NAME}")) == manifest["csv_sha256"], folder
    assert sha(body(s3, f"{PREFIX}/{folder}/changes.csv")) == manifest["changes"]["sha256"], folder
    parquet = maybe_body(s3, f"{PREFIX}/{folder}/ec2_inventory.parquet")
    if manifest.get("parquet"):
        assert parquet is not None, folder
        assert sha(parquet) == manifest["parquet"]["sha256"], folder
    else:
        assert parquet is None, folder
    # Each fixed-name file is a copy of the object the manifest names; the CSV's metadata says which commit.
    names = {entry["name"]: entry["key"] for entry in manifest["published"]}
    assert set(names) | {MANIFEST_NAME} == set(FIXED_NAMES)
    for name, source in names.items():
        fixed = maybe_body(s3, f"{PREFIX}/{folder}/{name}")
        assert fixed == (None if source is None else body(s3, source)), (folder, name)
    head = s3.head_object(Bucket=BUCKET, Key=f"{PREFIX}/{folder}/{CSV_NAME}")
    assert head["Metadata"]["commit-id"] == manifest["commit_id"], folder


def commit_objects(s3: Any, ds: str) -> set[str]:
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/ds={ds}/run=").get("Contents", [])
    return {o["Key"] for o in listed}


def fresh_bucket(s3: Any) -> None:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=BUCKET, Delete={"Objects": keys})


@pytest.mark.parametrize(
    ("scenario", "retry"),
    [
        pytest.param("replace", "same-run", id="overwrite-of-the-date-then-airflow-retry"),
        pytest.param("replace", "next-run", id="overwrite-of-the-date-then-a-run-that-writes-nothing"),
        pytest.param("new-date", "same-run", id="a-new-date-then-airflow-retry"),
    ],
)
def test_a_merge_killed_between_any_two_writes_leaves_each_snapshot_whole(
    s3: Any, store: SnapshotStore, scenario: str, retry: str
) -> None:
    """
    ``replace``: the date has run one's complete snapshot with Parquet, also in ``latest/``; run two (the
    run's ``overwrite``, no Parquet) is killed before its k-th write, for every k. ``new-date``: the
    previous day is in ``latest/`` and the new date's run is killed. Then Airflow retries the merge (the
    same run, next try), or another run of the date comes that writes nothing (its resolve saw a complete
    snapshot) but finishes what the killed one committed.
    """
    ds = DS if scenario == "replace" else "2024-03-02"
    first = run_info("scheduled__2024-03-01T00:00:00+00:00")
    second = run_info(
        "manual__2024-03-01T09:00:00+00:00" if scenario == "replace" else f"scheduled__{ds}T00:00:00+00:00",
        ds=ds,
    )
    # max_removed_fraction=1: the tags renew every instance id between the runs (see merge_date); the guard
    # would hold latest/, and this test follows the copies of a snapshot that may be published.
    with_parquet = make_settings(parquet=True, max_removed_fraction=1.0)
    second_settings = make_settings(parquet=scenario == "new-date", max_removed_fraction=1.0)

    def setup() -> None:
        fresh_bucket(s3)
        report_all_ok(store, first, tag="-first")
        merge_inventory(with_parquet, first, store, expected_of(with_parquet))
        report_all_ok(store, second, tag="-second")

    def merge_second(run: RunInfo = second) -> Any:
        return lambda: merge_inventory(
            second_settings, run, store, expected_of(second_settings), overwrite=scenario == "replace"
        )

    setup()
    previous = read_as_a_reader(s3, store, f"ds={first.ds}")
    assert previous is not None
    before = (previous["dag_run_id"], previous["csv_sha256"])
    uninterrupted = killed_merge(store, None, merge_second())
    total = len(uninterrupted.writes)
    assert total >= 10, uninterrupted.writes

    for at in range(1, total + 1):
        setup()
        killer = killed_merge(store, at, merge_second())
        assert killer.dead, at

        # A reader who follows the manifest sees one run's whole snapshot, the old or the new, in ds= and
        # in latest/ (whatever the fixed-name files hold at this moment).
        seen = read_as_a_reader(s3, store, f"ds={ds}")
        latest = read_as_a_reader(s3, store, "latest")
        assert latest is not None, at
        if scenario == "replace":
            assert seen is not None, at
            assert seen["dag_run_id"] in (first.run_id, second.run_id), at
            assert latest["dag_run_id"] in (first.run_id, second.run_id), at
        else:
            assert seen is None or seen["dag_run_id"] == second.run_id, at
            assert (latest["ds"], latest["dag_run_id"]) in ((first.ds, first.run_id), (ds, second.run_id)), at
            previous = read_as_a_reader(s3, store, f"ds={first.ds}")
            assert previous is not None, at
            assert (previous["dag_run_id"], previous["csv_sha256"]) == before, at
        csv_link = f"{PREFIX}/athena/ec2_inventory_csv/ds={ds}/symlink.txt"
        if exists(s3, csv_link):  # Athena's CSV symlink always names the date's fixed-name CSV
            assert body(s3, csv_link) == f"s3://{BUCKET}/{PREFIX}/ds={ds}/{CSV_NAME}\n".encode(), at

        # The next attempt finishes it: every fixed-name file of ds= and latest/ is one run's, whole.
        if retry == "same-run":
            merge_second(RunInfo(second.dag_id, second.run_id, ds, second.logical_date, try_number=2))()
        else:
            third = run_info("manual__2024-03-01T12:00:00+00:00")
            summary = merge_inventory(second_settings, third, store, [], skip_reason="complete already")
            assert summary["written"] is False
        committed = store.get_json(f"{PREFIX}/ds={ds}/{MANIFEST_NAME}")
        assert committed is not None, at
        if retry == "same-run":
            assert committed["dag_run_id"] == second.run_id, at
        assert_fixed_names_are_one_runs(s3, store, f"ds={ds}", committed)
        assert_fixed_names_are_one_runs(s3, store, "latest", committed)
        # Under the date, no other commit's objects are left by a merge that committed or finished copies
        # (a killed attempt's, and any older than the snapshot this one replaced, which stays until the
        # date's next commit for readers of the old manifest); a merge that wrote nothing leaves a killed
        # attempt's uncommitted objects (no manifest names them) to the date's next commit.
        folders = {k.rsplit("/", 1)[0] for k in commit_objects(s3, ds)}
        assert committed["commit_prefix"] in folders, at
        kept = {committed["commit_prefix"], committed.get("replaces_commit_prefix")} - {None}
        if retry == "same-run" or committed["dag_run_id"] == second.run_id:
            assert folders == kept, at
        else:
            attempted = {k.rsplit("/", 1)[0] for _, k in killer.writes if f"/ds={ds}/run=" in k}
            assert folders <= {*kept, *attempted}, (at, killer.writes)


def test_an_unusable_latest_manifest_never_moves_latest_back_to_an_older_date(
    s3: Any, store: SnapshotStore
) -> None:
    settings = make_settings()
    old, new = run_info(), run_info("scheduled__2024-03-05T00:00:00+00:00", ds="2024-03-05")
    for run in (old, new):
        report_all_ok(store, run)
        merge_inventory(settings, run, store, expected_of(settings))
    newest_csv = body(s3, f"{PREFIX}/latest/{CSV_NAME}")
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/latest/{MANIFEST_NAME}", Body=b'{"ds": "2024-03-0')

    rerun = RunInfo(old.dag_id, old.run_id, old.ds, old.logical_date, try_number=2)
    summary = merge_inventory(settings, rerun, store, expected_of(settings))
    assert summary["latest_updated"] is False
    assert body(s3, f"{PREFIX}/latest/{CSV_NAME}") == newest_csv  # still the newest date's
    # The newest date's own rerun repairs latest/.
    merge_inventory(
        settings, RunInfo(new.dag_id, new.run_id, new.ds, new.logical_date, 2), store, expected_of(settings)
    )
    latest = store.get_json(f"{PREFIX}/latest/{MANIFEST_NAME}")
    assert latest is not None
    assert latest["ds"] == "2024-03-05"


def test_overwrite_never_replaces_the_runs_own_better_attempt(s3: Any, store: SnapshotStore) -> None:
    settings, run = make_settings(), run_info("manual__2024-03-01T09:00:00+00:00")
    report_all_ok(store, run)
    first = merge_inventory(settings, run, store, expected_of(settings), overwrite=True)
    assert first["written"] is True
    assert first["snapshot_complete"] is True
    # The staging parts expired (the bucket's lifecycle rule); the run's merge is cleared and runs again.
    store.delete_keys(store.list_keys(store.layout.staging(run.ds, run.run_id)))
    again = RunInfo(run.dag_id, run.run_id, run.ds, run.logical_date, try_number=2)
    summary = merge_inventory(settings, again, store, expected_of(settings), overwrite=True)
    assert summary["written"] is False
    assert "this run's earlier attempt covered more" in summary["decision_reason"]
    manifest = store.get_json(f"{PREFIX}/ds={DS}/{MANIFEST_NAME}")
    assert manifest is not None
    assert manifest["complete"] is True
    assert manifest["row_count"] == first["row_count"]
