"""
Tag columns by alias (``tag_columns``): validation naming the key, first match in the configured order, the
manifest's per-key counts, one header per merge; and the change report across the schema 1 -> 2 change.
"""

from __future__ import annotations

import csv
import hashlib
import io
from typing import Any

import pytest

from include.cmdb_inventory import contract, inventory
from include.cmdb_inventory.changes import CHANGE_COLUMNS
from include.cmdb_inventory.config import Account, ConfigError, Settings, parse_settings
from include.cmdb_inventory.contract import COLUMNS, MANIFEST_NAME
from include.cmdb_inventory.inventory import check_part_columns, merge_inventory, tag_column_sources
from include.cmdb_inventory.records import instance_record, sort_key
from include.cmdb_inventory.run import RunInfo
from include.cmdb_inventory.scan import AccountScan
from include.cmdb_inventory.storage import SnapshotStore, rows_to_csv

BUCKET = "cmdb-tag-columns-bucket"
PREFIX = "cmdb/ec2-inventory"
REGION = "us-east-1"
X = Account("111111111111", "payments")
Y = Account("333333333333", "testing")
BASE = {"accounts": [{"id": a.id, "name": a.name} for a in (X, Y)], "bucket": BUCKET, "prefix": PREFIX}
ALIASES = {"Owner": ["owner", "Owner", "team"], "CostCenter": ["cost-center", "CostCentre"]}
# The 17 columns of schema 1, as a snapshot written before issue 9 has them.
SCHEMA_1_COLUMNS = COLUMNS[:17]


def settings_with(tag_columns: Any = ALIASES, **extra: Any) -> Settings:
    return parse_settings({**BASE, "tag_columns": tag_columns, **extra})


# --- validation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "key", "says"),
    [
        pytest.param(["Owner"], "tag_columns", "must be an object of column names", id="a-list"),
        pytest.param("Owner", "tag_columns", "must be an object of column names", id="a-string"),
        pytest.param({f"C{n}": ["a"] for n in range(51)}, "tag_columns", "at most 50", id="too-many"),
        pytest.param({"1st": ["a"]}, "tag_columns", 'column name "1st" is not valid', id="digit-first"),
        pytest.param({"Owner Name": ["a"]}, "tag_columns", "is not valid", id="space"),
        pytest.param({"Eigentümer": ["a"]}, "tag_columns", "is not valid", id="non-ascii-name"),
        pytest.param({"O" * 65: ["a"]}, "tag_columns", "is not valid", id="name-too-long"),
        pytest.param({"": ["a"]}, "tag_columns", "is not valid", id="empty-name"),
        pytest.param({"state": ["a"]}, "tag_columns.state", "already a column", id="contract-column"),
        pytest.param({"NAME": ["Name"]}, "tag_columns.NAME", "already a column", id="contract-column-case"),
        pytest.param(
            {"Owner": ["a"], "OWNER": ["b"]}, "tag_columns.OWNER", "duplicate column name", id="dup-column"
        ),
        pytest.param({"Owner": []}, "tag_columns.Owner", "non-empty list of tag keys", id="no-keys"),
        pytest.param({"Owner": "owner"}, "tag_columns.Owner", "non-empty list of tag keys", id="key-string"),
        pytest.param({"Owner": None}, "tag_columns.Owner", "non-empty list of tag keys", id="keys-null"),
        pytest.param({"Owner": ["owner", 7]}, "tag_columns.Owner[1]", "7 is not a tag key", id="key-number"),
        pytest.param({"Owner": ["owner", ""]}, "tag_columns.Owner[1]", "is not a tag key", id="key-empty"),
        pytest.param({"Owner": ["k" * 129]}, "tag_columns.Owner[0]", "1-128 characters", id="key-too-long"),
        pytest.param(
            {"Owner": ["owner", "team", "owner"]},
            "tag_columns.Owner[2]",
            'duplicate tag key "owner"',
            id="dup",
        ),
    ],
)
def test_a_bad_tag_columns_setting_names_its_key(value: Any, key: str, says: str) -> None:
    with pytest.raises(ConfigError) as raised:
        settings_with(value)
    assert raised.value.key == key
    assert str(raised.value).startswith(f"invalid configuration cmdb_ec2_inventory.{key}: ")
    assert says in str(raised.value)


def test_tag_columns_keep_the_configured_order_and_keys_as_written() -> None:
    settings = settings_with(
        {
            "Owner": ["owner", "Owner", "team"],
            "Kostenstelle": ["Kostenstelle-Ü", "aws:cloudformation:stack-name"],
        }
    )
    assert settings.tag_columns == (
        ("Owner", ("owner", "Owner", "team")),
        ("Kostenstelle", ("Kostenstelle-Ü", "aws:cloudformation:stack-name")),
    )
    assert settings.columns == (*COLUMNS, "Owner", "Kostenstelle")
    # Keys differing only in case are distinct tag keys (EC2's keys are case-sensitive).
    assert settings_with({"Owner": ["owner", "OWNER"]}).tag_columns == (("Owner", ("owner", "OWNER")),)
    # Two columns may read the same key; a name of 64 characters is the longest allowed.
    assert len(settings_with({"A" * 64: ["team"], "Team": ["team"]}).tag_columns) == 2


@pytest.mark.parametrize("value", [None, {}])
def test_no_tag_columns_is_the_contracts_columns(value: Any) -> None:
    settings = parse_settings(BASE) if value is None else settings_with(value)
    assert settings.tag_columns == ()
    assert settings.columns == COLUMNS


# --- which key gave the value: the scan's counts and the manifest -----------------------------------------


def tagged(instance_id: str, **tags: str) -> dict[str, Any]:
    return {
        "InstanceId": instance_id,
        "State": {"Name": "running"},
        "Tags": [{"Key": k.replace("_", "-"), "Value": v} for k, v in tags.items()],
    }


def test_the_scan_counts_each_columns_source_key_per_instance() -> None:
    settings = settings_with()
    found = [
        instance_record(
            X, REGION, tagged(f"i-{n}", **tags), "2026-11-20T02:00:00Z", None, settings.tag_columns
        )[1]
        for n, tags in enumerate(
            [
                {"owner": "ann", "Owner": "bob", "cost_center": "1"},
                {"Owner": "bob", "team": "t"},
                {"team": "t", "CostCentre": "2"},
                {"owner": "", "team": "t"},  # an empty value names nobody: team gives it
                {"OWNER": "upper"},  # keys are case-sensitive: no match
                {},
            ]
        )
    ]
    scan = AccountScan(X.id, X.name)
    scan.count_sources(settings.tag_columns, found[:3])
    scan.count_sources(settings.tag_columns, found[3:])  # a second region adds to the first
    assert scan.tag_sources == {
        "Owner": {"owner": 1, "Owner": 1, "team": 2, "": 2},
        "CostCenter": {"cost-center": 1, "CostCentre": 1, "": 4},
    }


def test_the_manifest_entry_sums_the_accounts_in_the_configured_key_order() -> None:
    settings = settings_with()
    statuses = [
        {"account": X.id, "part_key": "x", "tag_sources": {"Owner": {"team": 2, "owner": 3, "": 1}}},
        {
            "account": Y.id,
            "part_key": "y",
            "tag_sources": {"Owner": {"owner": 1, "": 4}, "CostCenter": {"": 5}},
        },
        {"account": "444444444444", "part_key": None},  # failed before a part: counts nothing
    ]
    listed = tag_column_sources(settings, statuses)
    assert listed == [
        {
            "column": "Owner",
            "keys": ["owner", "Owner", "team"],
            "matched": {"owner": 4, "team": 2},
            "unmatched": 5,
        },
        {"column": "CostCenter", "keys": ["cost-center", "CostCentre"], "matched": {}, "unmatched": 5},
    ]
    assert list(listed[0]["matched"]) == ["owner", "team"]  # the configured order, not the counts'
    assert tag_column_sources(parse_settings(BASE), statuses) == []


# --- one header per merge ---------------------------------------------------------------------------------


def test_parts_with_the_merges_columns_pass() -> None:
    settings = settings_with()
    columns = list(settings.columns)
    check_part_columns(
        settings,
        [
            {"account": X.id, "part_key": "x", "columns": columns},
            {"account": Y.id, "part_key": None},  # no part (a failed account): nothing to merge
        ],
    )


def test_parts_scanned_with_other_tag_columns_fail_naming_the_accounts() -> None:
    settings = settings_with()
    statuses = [
        {"account": X.id, "part_key": "x", "columns": list(settings.columns)},
        {"account": Y.id, "part_key": "y", "columns": list(COLUMNS)},  # scanned before tag_columns was set
        {"account": "444444444444", "part_key": "z", "columns": [*COLUMNS, "Owner"]},  # another set
    ]
    with pytest.raises(ConfigError) as raised:
        check_part_columns(settings, statuses)
    text = str(raised.value)
    assert raised.value.key == "tag_columns"
    assert f"the parts of {Y.id}, 444444444444 were scanned with other columns" in text
    assert X.id not in text
    assert "clear those accounts' scan tasks" in text


def test_a_part_from_before_schema_2_fails_the_merge_rather_than_misaligning_its_rows() -> None:
    # A run whose scans ran on schema 1's code and whose merge runs after the upgrade (a retried merge):
    # its parts have 17 cells a row, its status documents no "columns".
    with pytest.raises(ConfigError, match=X.id):
        check_part_columns(parse_settings(BASE), [{"account": X.id, "part_key": "x"}])


@pytest.fixture
def s3_bucket() -> str:
    """The conftest's ``store``: this module's bucket, emptied between tests."""
    return BUCKET


def run_of(ds: str, kind: str = "scheduled") -> RunInfo:
    return RunInfo("cmdb_ec2_inventory", f"{kind}__{ds}T02:00:00+00:00", ds, f"{ds}T02:00:00+00:00")


def stage(
    store: SnapshotStore,
    run: RunInfo,
    account: Account,
    instances: list[dict[str, Any]],
    settings: Settings,
) -> None:
    """What scan_account stages: the part in the settings' columns; a status with them and the sources."""
    found = [
        instance_record(account, REGION, i, f"{run.ds}T02:00:00Z", None, settings.tag_columns)
        for i in instances
    ]
    found.sort(key=lambda pair: sort_key(pair[0]))
    scan = AccountScan(account.id, account.name)
    scan.count_sources(settings.tag_columns, [sources for _, sources in found])
    staging = store.layout.staging(run.ds, run.run_id)
    part_key = store.layout.part(staging, account.id)
    count = store.write_part(part_key, [record for record, _ in found], settings.columns)
    regions = [{"region": REGION, "status": contract.OK, "instances": count}]
    doc = inventory._status_doc(
        run, account, status=contract.OK, regions=regions, instances=count, part_key=part_key
    )
    doc["columns"] = list(settings.columns)
    if settings.tag_columns:
        doc["tag_sources"] = scan.tag_sources
    store.put_json(store.layout.status(staging, account.id), doc)


def read_csv(store: SnapshotStore, key: str) -> tuple[list[str], list[dict[str, str]]]:
    body = store.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode("utf-8")
    reader = csv.DictReader(io.StringIO(body, newline=""))
    rows = list(reader)
    return list(reader.fieldnames or ()), rows


X_INSTANCES = [
    tagged("i-x1", Name="web", owner="ann", cost_center="4711"),
    tagged("i-x2", Name="db", Owner="bob", team="dba"),
    tagged("i-x3", Name="batch", owner="", team="data"),
]
Y_INSTANCES = [tagged("i-y1", Name="test", CostCentre="=SUM(1)"), tagged("i-y2", Name="bare")]


def test_merge_writes_tag_columns_last_and_the_manifest_says_where_they_came_from(
    store: SnapshotStore,
) -> None:
    settings = settings_with()
    run = run_of("2026-11-20")
    stage(store, run, X, X_INSTANCES, settings)
    stage(store, run, Y, Y_INSTANCES, settings)
    merge_inventory(settings, run, store, [X.to_dict(), Y.to_dict()], overwrite=True)

    manifest = store.get_json(store.layout.snapshot(run.ds, MANIFEST_NAME))
    assert manifest is not None
    assert manifest["schema_version"] == 2
    assert manifest["columns"] == [*COLUMNS, "Owner", "CostCenter"]
    header, rows = read_csv(store, manifest["csv_key"])
    assert header == manifest["columns"]
    assert {r["InstanceId"]: (r["Owner"], r["CostCenter"]) for r in rows} == {
        "i-x1": ("ann", "4711"),
        "i-x2": ("bob", ""),
        "i-x3": ("data", ""),
        "i-y1": ("", "'=SUM(1)"),  # neutralised like every cell
        "i-y2": ("", ""),
    }
    assert manifest["tag_columns"] == [
        {
            "column": "Owner",
            "keys": ["owner", "Owner", "team"],
            "matched": {"owner": 1, "Owner": 1, "team": 1},
            "unmatched": 2,
        },
        {
            "column": "CostCenter",
            "keys": ["cost-center", "CostCentre"],
            "matched": {"cost-center": 1, "CostCentre": 1},
            "unmatched": 3,
        },
    ]


def test_a_part_scanned_with_other_tag_columns_fails_the_merge_and_commits_nothing(
    store: SnapshotStore,
) -> None:
    run = run_of("2026-11-20")
    stage(store, run, X, X_INSTANCES, settings_with())
    stage(store, run, Y, Y_INSTANCES, parse_settings(BASE))  # scanned before the Variable gained tag_columns
    with pytest.raises(ConfigError, match=rf"the parts of {Y.id} were scanned with other columns"):
        merge_inventory(settings_with(), run, store, [X.to_dict(), Y.to_dict()], overwrite=True)
    assert store.get_json(store.layout.snapshot(run.ds, MANIFEST_NAME)) is None
    assert store.get_json(store.layout.latest(MANIFEST_NAME)) is None


# --- the change report across the schema change -----------------------------------------------------------


def as_schema_1(store: SnapshotStore, ds: str) -> None:
    """
    Turn the committed snapshot of ``ds`` into what schema 1's code wrote: its CSV with the 17 columns only,
    and a manifest saying so (schema_version 1, no tag_columns), its csv_sha256 matching.
    """
    key = store.layout.snapshot(ds, MANIFEST_NAME)
    manifest = store.get_json(key)
    assert manifest is not None
    _, rows = read_csv(store, manifest["csv_key"])
    text = io.StringIO()
    rows_to_csv(rows, text, columns=SCHEMA_1_COLUMNS)
    body = text.getvalue().encode("utf-8")
    store.s3.put_object(Bucket=BUCKET, Key=manifest["csv_key"], Body=body)
    manifest.update(
        schema_version=1,
        columns=list(SCHEMA_1_COLUMNS),
        csv_sha256=hashlib.sha256(body).hexdigest(),
        csv_bytes=len(body),
    )
    manifest.pop("tag_columns", None)
    store.put_json(key, manifest)


def test_a_schema_1_previous_snapshot_compares_with_schema_2_without_spurious_changes(
    store: SnapshotStore,
) -> None:
    plain = parse_settings(BASE)
    day1 = run_of("2026-11-19")
    stage(store, day1, X, X_INSTANCES, plain)
    stage(store, day1, Y, Y_INSTANCES, plain)
    merge_inventory(plain, day1, store, [X.to_dict(), Y.to_dict()], overwrite=True)
    as_schema_1(store, day1.ds)
    header, _ = read_csv(store, store.get_json(store.layout.snapshot(day1.ds, MANIFEST_NAME))["csv_key"])
    assert len(header) == 17

    # Day 2 on schema 2 with tag columns: the same instances, one stopped, one gone, one new.
    settings = settings_with()
    day2 = run_of("2026-11-20")
    stopped = {**X_INSTANCES[1], "State": {"Name": "stopped"}}
    stage(store, day2, X, [X_INSTANCES[0], stopped, X_INSTANCES[2], tagged("i-x4", Name="new")], settings)
    stage(store, day2, Y, Y_INSTANCES[:1], settings)
    summary = merge_inventory(settings, day2, store, [X.to_dict(), Y.to_dict()], overwrite=False)

    changes = summary["changes"]
    assert changes["status"] == "COMPARED", changes["detail"]
    assert changes["previous_ds"] == day1.ds
    assert (changes["added"], changes["removed"], changes["changed"], changes["not_verified"]) == (1, 1, 1, 0)
    body = store.s3.get_object(Bucket=BUCKET, Key=changes["key"])["Body"].read().decode("utf-8")
    reader = csv.DictReader(io.StringIO(body, newline=""))
    assert tuple(reader.fieldnames or ()) == CHANGE_COLUMNS
    got = [(r["Change"], r["InstanceId"], r["Field"], r["OldValue"], r["NewValue"]) for r in reader]
    assert got == [
        ("CHANGED", "i-x2", "State", "running", "stopped"),
        ("ADDED", "i-x4", "", "", ""),
        ("REMOVED", "i-y2", "", "", ""),
    ]
