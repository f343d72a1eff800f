"""
Hostile tag sizes (issue 10, finding 3): tag authors choose names and tag values up to EC2's limits (50 tags
an instance, keys of 128 characters, values of 256, any script). Every value the notification, the
manifest's ``changes.top`` and the merge's XCom show is cleaned and cut (``text.clean``); the whole message
stays below SNS's limit for any input, pointing at ``changes.csv`` and the manifest for what it leaves
out; ``changes.csv`` keeps every value whole.
"""

from __future__ import annotations

import csv
import io
import json
import re
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from include.cmdb_inventory import changes, contract, inventory
from include.cmdb_inventory.config import Account, parse_settings
from include.cmdb_inventory.contract import MANIFEST_NAME
from include.cmdb_inventory.notify import MAX_GAPS_LISTED, message, subject
from include.cmdb_inventory.records import instance_record, sort_key
from include.cmdb_inventory.run import RunInfo
from include.cmdb_inventory.storage import SnapshotStore
from include.cmdb_inventory.text import (
    ELLIPSIS,
    MAX_MESSAGE_BYTES,
    MAX_TEXT_CHARS,
    MAX_VALUE_CHARS,
    SNS_MESSAGE_LIMIT,
    SNS_SUBJECT_LIMIT,
    published_size,
    utf8_size,
)
from tests.unit.conftest import PREFIX, stage_scanned

# --------------------------------------------------------------------------- maximum-size tags

TAGS_PER_INSTANCE = 50  # EC2: at most 50 tags a resource
TAG_KEY_MAX = 128  # EC2: keys up to 128 Unicode characters
TAG_VALUE_MAX = 256  # EC2: values up to 256 Unicode characters
SCRIPTS: dict[str, str] = {
    "latin": string.ascii_letters + string.digits,
    "cjk": "".join(chr(c) for c in range(0x4E00, 0x4E00 + 400)),  # 3 bytes each in UTF-8
    "devanagari": "".join(chr(c) for c in range(0x0915, 0x0939)),  # 3 bytes each
    "emoji": "".join(chr(c) for c in range(0x1F600, 0x1F640)),  # 4 bytes each
}
# Tag text that would add lines to an e-mail, or display a line reversed.
INJECTED = "\r\nInjected: a line of its own\u2028\u2029\u0085\u202e"
# Anything a message must never carry (besides its own line breaks), defined independently of text.py.
FORBIDDEN = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def script_text(script: str, length: int, seed: int) -> str:
    """``length`` characters of ``script``, different for each seed."""
    alphabet = SCRIPTS[script]
    return "".join(alphabet[(seed * 7 + i) % len(alphabet)] for i in range(length))


def max_size_tags(script: str, instance: int, version: int) -> dict[str, str]:
    """
    EC2's maximum: 50 tags, keys of 128 characters, values of 256, all in ``script``. ``Name`` depends on
    the instance only; the other values change with ``version`` (so each instance has one ``Tags`` change,
    both values whole tag sets). ``Name`` and one other value carry CR/LF, separators and an RTL override.
    """
    name = f"{script}-{instance}{INJECTED}" + script_text(script, TAG_VALUE_MAX, instance)
    tags = {"Name": name[:TAG_VALUE_MAX]}
    for n in range(1, TAGS_PER_INSTANCE):
        key = f"{n:02d}-" + script_text(script, TAG_KEY_MAX - 3, n)
        value = script_text(script, TAG_VALUE_MAX, instance * 1000 + version * 100 + n)
        tags[key] = (INJECTED + value)[:TAG_VALUE_MAX] if n == 1 else value
    assert len(tags) == TAGS_PER_INSTANCE
    assert all(len(k) <= TAG_KEY_MAX and len(v) <= TAG_VALUE_MAX for k, v in tags.items())
    return tags


def script_of(index: int) -> str:
    """Instances take turns: Latin, CJK, Devanagari, emoji."""
    return list(SCRIPTS)[index % len(SCRIPTS)]


def assert_safe_line(line: str) -> None:
    assert not FORBIDDEN.search(line), repr(line)
    assert not line.lstrip().startswith("Injected:"), repr(line)


# --------------------------------------------------------------------------- two nights through the merge

REGION = "us-east-1"
BUCKET = "cmdb-message-limits"
ACCOUNT = Account("111111111111", "payments")
INSTANCES = 20
DAY1, DAY2 = "2026-11-19", "2026-11-20"


@pytest.fixture
def s3_bucket() -> str:
    """The conftest's ``store`` (moto's in-process S3) on this module's bucket, empty."""
    return BUCKET


def night(store: SnapshotStore, ds: str, version: int) -> dict[str, Any]:
    """One run of ``ds`` whose 20 instances carry maximum-size tags (``version`` varies the values)."""
    run = RunInfo("cmdb_ec2_inventory", f"scheduled__{ds}T02:00:00+00:00", ds, f"{ds}T02:00:00+00:00")
    records = sorted(
        (
            instance_record(
                Account(ACCOUNT.id, ACCOUNT.name),
                REGION,
                {
                    "InstanceId": f"i-{n:017x}",
                    "InstanceType": "t3.micro",
                    "State": {"Name": "running"},
                    "Tags": [
                        {"Key": k, "Value": v} for k, v in max_size_tags(script_of(n), n, version).items()
                    ],
                },
                f"{ds}T02:00:00Z",
            )[0]
            for n in range(INSTANCES)
        ),
        key=sort_key,
    )
    regions = [{"region": REGION, "status": contract.OK, "instances": len(records)}]
    stage_scanned(store, run, ACCOUNT, records, regions, note="")
    config = {"accounts": [{"id": ACCOUNT.id, "name": ACCOUNT.name}], "bucket": BUCKET, "prefix": PREFIX}
    return inventory.merge_inventory(parse_settings(config), run, store, [ACCOUNT.to_dict()])


def test_twenty_instances_with_fifty_maximum_size_tags_keep_message_manifest_and_xcom_small(
    store: SnapshotStore,
) -> None:
    night(store, DAY1, 0)
    summary = night(store, DAY2, 1)  # every instance's tag values changed
    manifest = store.get_json(store.layout.snapshot(DAY2, MANIFEST_NAME))
    assert manifest is not None
    top = manifest["changes"]["top"]
    assert manifest["changes"]["rows"] == INSTANCES  # one Tags change each
    assert len(top) == changes.TOP_CHANGES

    # changes.csv is the full record: every value whole, line breaks and all.
    body = store.s3.get_object(Bucket=BUCKET, Key=manifest["changes"]["key"])["Body"].read().decode()
    rows = list(csv.DictReader(io.StringIO(body, newline="")))
    tag_rows = [r for r in rows if r["Field"] == "Tags"]
    assert len(tag_rows) == INSTANCES
    for r in tag_rows:
        n = int(r["InstanceId"][2:], 16)
        assert json.loads(r["NewValue"]) == max_size_tags(script_of(n), n, 1)
        assert json.loads(r["OldValue"]) == max_size_tags(script_of(n), n, 0)
        assert INJECTED in r["Name"]

    # The manifest's top: every value cleaned and cut.
    for entry in top:
        for column, value in entry.items():
            limit = MAX_TEXT_CHARS if column == "reason" else MAX_VALUE_CHARS
            assert len(value) <= limit, column
            assert not FORBIDDEN.search(value), (column, value)
    assert any(e["new_value"].endswith(ELLIPSIS) for e in top)
    top_bytes = utf8_size(json.dumps(top, ensure_ascii=False))  # as the manifest stores it
    assert top_bytes < 32_000, top_bytes  # was 1,003,206 bytes (whole tag sets)

    # The merge's XCom: its return value as Airflow stores it (JSON, non-ASCII escaped).
    xcom_bytes = len(json.dumps(summary))
    assert xcom_bytes < 64_000, xcom_bytes  # was 2,180,894 bytes

    # The notification fits SNS, lists the first changes cut, and points at changes.csv for the rest.
    text = message(summary)
    size = published_size(text)  # what SNS counts
    assert utf8_size(text) <= size <= MAX_MESSAGE_BYTES < SNS_MESSAGE_LIMIT, size  # was 2,178,808: refused
    for line in text.split("\n"):
        assert_safe_line(line)
    uri = manifest["changes"]["uri"]
    more = INSTANCES - changes.TOP_CHANGES
    assert f"  {ELLIPSIS} {more} more changes in {uri}" in text.split("\n")
    assert sum(1 for line in text.split("\n") if line.startswith("  CHANGED ")) == changes.TOP_CHANGES
    print(f"\nmanifest changes.top {top_bytes} bytes, merge XCom {xcom_bytes} bytes, message {size} bytes")


# --------------------------------------------------------------------------- the message cap, any input


def hostile(max_size: int) -> st.SearchStrategy[str]:
    """Text with controls, separators, bidi overrides, 4-byte characters, or very long."""
    chars = st.sampled_from(["\r", "\n", "\x00", "\x85", "\u2028", "\u202e", "\u2067", "🚀", "中", "a", " "])
    return st.one_of(
        st.text(max_size=max_size),
        st.text(alphabet=chars, max_size=max_size),
        st.builds(lambda c, n: c * n, chars, st.integers(0, 20_000)),
    )


def big(char: str, n: int) -> str:
    return char * n


def summary_of(
    gaps: list[dict[str, Any]],
    top: list[dict[str, str]],
    groups: list[dict[str, Any]],
    *,
    gap_count: int | None = None,
    counts: tuple[int, int, int, int] = (0, 0, 0, 0),
    reason: str = "no snapshot for this date yet",
    run_id: str = "scheduled__2026-11-20T02:00:00+00:00",
) -> dict[str, Any]:
    added, removed, changed_fields, not_verified = counts
    root = "s3://cmdb-message-limits/cmdb/ec2-inventory/ds=2026-11-20"
    return {
        "ds": DAY2,
        "dag_run_id": run_id,
        "written": True,
        "decision_reason": reason,
        "csv_uri": f"{root}/ec2_inventory.csv",
        "manifest_uri": f"{root}/manifest.json",
        "latest_uri": "s3://cmdb-message-limits/cmdb/ec2-inventory/latest/ec2_inventory.csv",
        "latest_updated": True,
        "row_count": 20,
        "accounts_expected": len(gaps) + 1,
        "accounts_covered": 1,
        "regions_scanned": 17,
        "regions_disabled": 0,
        "run_complete": not gaps,
        "snapshot_complete": not gaps,
        "gap_count": len(gaps) if gap_count is None else gap_count,
        "gaps": gaps,
        "changes": {
            "status": "COMPARED",
            "detail": "compared with the complete snapshot of 2026-11-19",
            "previous_ds": DAY1,
            "uri": f"{root}/changes.csv",
            "rows": added + removed + changed_fields + not_verified,
            "added": added,
            "removed": removed,
            "changed": changed_fields,
            "changed_fields": changed_fields,
            "not_verified": not_verified,
            "top": top,
            "not_verified_groups": groups,
        },
    }


def change(value: str, n: int = 0) -> dict[str, str]:
    return {
        "change": "CHANGED",
        "account": "111111111111",
        "region": REGION,
        "instance_id": f"i-{n:017x}",
        "name": value,
        "field": "Tags",
        "old_value": value,
        "new_value": value,
        "reason": value,
    }


def gap(account: int, value: str) -> dict[str, Any]:
    return {
        "account": f"{account:012d}",
        "account_name": value,
        "region": None,
        "status": "ROLE_NOT_ASSUMABLE",
        "instances": 0,
        "error": {"code": value, "message": value},
    }


def assert_fits(text: str) -> list[str]:
    assert utf8_size(text) <= published_size(text) <= MAX_MESSAGE_BYTES, published_size(text)
    lines = text.split("\n")
    for line in lines:
        assert_safe_line(line)
    return lines


def test_worst_case_message_is_capped_with_pointers_to_changes_csv_and_the_manifest() -> None:
    """Old manifests (uncut top values), thousands of accounts not covered, huge error texts: still fits."""
    huge = big("🚀", 100_000)  # 400,000 bytes per value
    gaps = [gap(n + 2, huge) for n in range(5000)]
    top = [change(huge, n) for n in range(200)]
    groups = [{"account": "111111111111", "region": REGION, "reason": huge, "instances": 3}] * 500
    summary = summary_of(gaps, top, groups, counts=(10**6, 10**6, 10**6, 1500), reason=huge, run_id=huge)
    lines = assert_fits(message(summary))
    uri = summary["changes"]["uri"]
    assert any(
        line.startswith(f"  {ELLIPSIS} ") and line.endswith(f"more changes in {uri}") for line in lines
    )
    assert any(line.endswith(f"more not covered: see {summary['manifest_uri']}") for line in lines)
    assert "Not covered (5000):" in lines
    assert summary["csv_uri"] in message(summary)  # the head always survives


def test_many_accounts_not_covered_with_long_error_texts_fit_and_point_to_the_manifest() -> None:
    long_error = "User is not authorized to perform sts:AssumeRole " + big("é", 5000) + "\r\nInjected: x"
    gaps = [gap(n + 2, long_error) for n in range(10_000)]
    summary = summary_of(gaps, [], [])
    lines = assert_fits(message(summary))
    listed = [line for line in lines if line.startswith("  - ")]
    # Each line holds a cut name, code and message; as SNS counts them (non-ASCII escaped) only some of
    # the first 50 fit, in order, and the rest are counted.
    assert 0 < len(listed) < MAX_GAPS_LISTED
    assert [line.split()[1] for line in listed] == [f"{n + 2:012d}" for n in range(len(listed))]
    assert all(len(line) < 3 * MAX_TEXT_CHARS for line in listed)
    left = 10_000 - len(listed)
    assert lines[-1] == f"  {ELLIPSIS} {left} more not covered: see {summary['manifest_uri']}"

    # Shorter error texts: the first 50 are listed, the rest counted.
    short = [gap(n + 2, "AccessDenied\r\nInjected: x") for n in range(10_000)]
    lines = assert_fits(message(summary_of(short, [], [])))
    listed = [line for line in lines if line.startswith("  - ")]
    assert len(listed) == MAX_GAPS_LISTED
    assert all(line.endswith("AccessDenied Injected: x") for line in listed)  # the line break: a space
    assert lines[-1].startswith(f"  {ELLIPSIS} {10_000 - MAX_GAPS_LISTED} more not covered: see ")


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example],
)
@given(
    values=st.lists(hostile(3000), min_size=1, max_size=6),
    gaps=st.integers(0, 400),
    tops=st.integers(0, 40),
    groups=st.integers(0, 80),
    counts=st.tuples(*[st.integers(0, 10**9)] * 4),
)
def test_any_summary_gives_a_message_below_the_cap_without_controls(
    values: list[str], gaps: int, tops: int, groups: int, counts: tuple[int, int, int, int]
) -> None:
    def pick(n: int) -> str:
        return values[n % len(values)]

    summary = summary_of(
        [gap(n + 2, pick(n)) for n in range(gaps)],
        [change(pick(n), n) for n in range(tops)],
        [
            {"account": pick(n), "region": pick(n + 1), "reason": pick(n + 2), "instances": n}
            for n in range(groups)
        ],
        counts=counts,
        reason=pick(3),
        run_id=pick(4),
    )
    assert_fits(message(summary))
    title = subject({**summary, "ds": pick(5)})
    assert len(title) < SNS_SUBJECT_LIMIT
    assert not FORBIDDEN.search(title)
    assert "\n" not in title


@pytest.mark.parametrize("ds", ["2026-11-20\r\nBcc: x", "\u202e" + "x" * 300, "🚀" * 120])
def test_subject_is_shorter_than_100_characters_without_controls(ds: str) -> None:
    title = subject(summary_of([], [], []) | {"ds": ds, "row_count": 10**40})
    assert 0 < len(title) < SNS_SUBJECT_LIMIT
    assert not FORBIDDEN.search(title)
    assert "\n" not in title
    assert title.startswith("EC2 inventory ")


# --------------------------------------------------------------------------- Tally records cut values


def test_tally_keeps_cleaned_cut_values_in_top_and_groups() -> None:
    tally = changes.Tally()
    huge = INJECTED + big("中", 50_000)
    for n in range(changes.TOP_CHANGES + 5):
        tally.add(
            {
                "Change": changes.CHANGED,
                "Account": "111111111111",
                "Region": REGION,
                "InstanceId": f"i-{n:017x}",
                "Name": huge,
                "Field": "Tags",
                "OldValue": huge,
                "NewValue": "",
                "Reason": "",
            }
        )
    tally.add(
        {
            "Change": changes.NOT_VERIFIED,
            "Account": "111111111111",
            "Region": REGION,
            "InstanceId": "i-1",
            "Name": huge,
            "Field": "",
            "OldValue": "",
            "NewValue": "",
            "Reason": huge,
        }
    )
    summary = tally.summary()
    assert len(summary["top"]) == changes.TOP_CHANGES
    for entry in summary["top"]:
        assert entry["name"] == entry["old_value"]
        assert len(entry["name"]) == MAX_VALUE_CHARS
        assert entry["name"].endswith(ELLIPSIS)
        assert entry["name"].startswith(" Injected: a line of its own ")  # CR/LF, separators became one space
        assert entry["new_value"] == ""
    (group,) = summary["not_verified_groups"]
    assert len(group["reason"]) == MAX_TEXT_CHARS
    assert not FORBIDDEN.search(group["reason"])
    assert len(json.dumps(summary)) < 64_000


def test_the_preflight_notification_is_cleaned_and_capped_too() -> None:
    from include.cmdb_inventory import preflight

    hostile = "Prod\r\nInjected: line\u202e" + "名" * 5000
    summary = {
        "ds": "2026-11-20",
        "dag_run_id": "manual__x",
        "report_uri": "s3://b/p/preflight.json",
        "accounts_ready": 0,
        "accounts_expected": 2000,
        "ready": False,
        "not_ready_count": 2000,
        "not_ready": [
            {
                "account": f"{i:012d}",
                "account_name": hostile,
                "status": "ROLE_NOT_ASSUMABLE",
                "reasons": [hostile] * 10,
            }
            for i in range(2000)
        ],
    }
    text, title = preflight.message(summary), preflight.subject(summary)
    assert published_size(text) <= MAX_MESSAGE_BYTES
    assert "\nInjected: line" not in text
    assert "\u202e" not in text
    assert len(title) < 100
