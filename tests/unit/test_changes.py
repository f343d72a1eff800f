"""Change detection: the merge-join on small worlds (hypothesis); never a removal after a failed scan."""

from __future__ import annotations

import csv
import io
import tracemalloc
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from include.cmdb_inventory import changes
from include.cmdb_inventory.changes import (
    ADDED,
    CHANGE_COLUMNS,
    CHANGE_FIELDS,
    CHANGED,
    NOT_VERIFIED,
    REMOVED,
    ChangeDataError,
    Ledger,
    Tally,
    diff,
    write_rows,
)
from include.cmdb_inventory.contract import COLUMNS

X, Y = "111111111111", "333333333333"


def row(account: str, region: str, instance: str, **fields: str) -> dict[str, str]:
    base = {column: "" for column in COLUMNS}
    base.update(Account=account, Region=region, InstanceId=instance, State="running", InstanceType="t3.micro")
    base.update(Tags="{}", CollectedAt="2026-11-20T02:00:00Z")
    base.update(fields)
    return base


def ledger(statuses: Mapping[tuple[str, str | None], str], label: str = "in this snapshot") -> Ledger:
    coverage = []
    for (account, region), status in statuses.items():
        entry: dict[str, Any] = {"account": account, "region": region, "status": status, "instances": 0}
        if status != "OK":
            entry["error"] = {
                "code": "AccessDenied" if status == "ROLE_NOT_ASSUMABLE" else "Boom",
                "message": "",
            }
        coverage.append(entry)
    return Ledger.of({"coverage": coverage}, label)


ALL_OK = {(X, "eu-west-1"): "OK", (X, "us-east-1"): "OK", (Y, "us-east-1"): "OK"}


def test_added_removed_and_one_row_per_changed_field() -> None:
    before = [
        row(X, "eu-west-1", "i-01", Name="gone"),
        row(X, "us-east-1", "i-02", Name="web", PrivateIpAddress="10.0.0.1"),
        row(X, "us-east-1", "i-03", Name="same"),
    ]
    after = [
        row(X, "us-east-1", "i-02", Name="web-2", State="stopped", PrivateIpAddress="10.0.0.1"),
        row(X, "us-east-1", "i-03", Name="same", CollectedAt="2026-11-21T02:00:00Z"),  # not a tracked field
        row(X, "us-east-1", "i-04", Name="new"),
    ]
    out = list(diff(before, after, ledger(ALL_OK, "before"), ledger(ALL_OK)))
    assert [(r["Change"], r["InstanceId"], r["Field"], r["OldValue"], r["NewValue"]) for r in out] == [
        (REMOVED, "i-01", "", "", ""),
        (CHANGED, "i-02", "State", "running", "stopped"),
        (CHANGED, "i-02", "Name", "web", "web-2"),
        (ADDED, "i-04", "", "", ""),
    ]
    assert out[0]["Name"] == "gone"
    assert out[0]["Reason"].startswith("not listed")
    assert out[1]["Name"] == "web-2"
    assert out[3]["Reason"] == ""


def test_an_account_whose_role_fails_has_no_removed_instances() -> None:
    """The failure mode of other tools: a failed scan must never mark an account's instances deleted."""
    before = [row(X, "us-east-1", "i-x1"), row(Y, "us-east-1", "i-y1"), row(Y, "us-east-1", "i-y2")]
    after = [row(X, "us-east-1", "i-x1")]
    failed = {(X, "us-east-1"): "OK", (Y, None): "ROLE_NOT_ASSUMABLE"}
    out = list(diff(before, after, ledger(ALL_OK, "in the previous snapshot"), ledger(failed)))
    assert [r["Change"] for r in out] == [NOT_VERIFIED, NOT_VERIFIED]
    assert [r["InstanceId"] for r in out] == ["i-y1", "i-y2"]
    assert out[0]["Reason"] == f"{Y} us-east-1 ROLE_NOT_ASSUMABLE (AccessDenied) in this snapshot"


@pytest.mark.parametrize(
    ("after_statuses", "reason"),
    [
        ({(X, "us-east-1"): "THROTTLED"}, f"{X} us-east-1 THROTTLED (Boom) in this snapshot"),
        ({(X, "us-east-1"): "REGION_DENIED"}, f"{X} us-east-1 REGION_DENIED (Boom) in this snapshot"),
        ({(X, "eu-west-1"): "OK"}, f"{X} us-east-1 not scanned in this snapshot"),  # region not scanned now
        ({(Y, "us-east-1"): "OK"}, f"{X} us-east-1 not scanned in this snapshot"),  # account not expected now
        ({(X, None): "OK"}, f"{X} us-east-1 not scanned in this snapshot"),  # account had no regions
    ],
)
def test_a_region_not_scanned_ok_now_is_not_verified(
    after_statuses: dict[tuple[str, str | None], str], reason: str
) -> None:
    out = list(diff([row(X, "us-east-1", "i-1")], [], ledger(ALL_OK), ledger(after_statuses)))
    assert [(r["Change"], r["Reason"]) for r in out] == [(NOT_VERIFIED, reason)]


def test_a_region_not_scanned_before_is_not_verified_either() -> None:
    before_statuses = {(X, "us-east-1"): "REGION_DENIED"}  # a complete snapshot may deny a region by policy
    out = list(
        diff([row(X, "us-east-1", "i-1")], [], ledger(before_statuses, "in the previous (d)"), ledger(ALL_OK))
    )
    assert out[0]["Change"] == NOT_VERIFIED
    assert out[0]["Reason"] == f"{X} us-east-1 REGION_DENIED (Boom) in the previous (d)"


def test_an_instance_in_a_region_not_covered_before_is_added_and_says_so() -> None:
    out = list(
        diff([], [row(Y, "us-east-1", "i-1")], ledger({(X, "us-east-1"): "OK"}, "in prev"), ledger(ALL_OK))
    )
    assert [(r["Change"], r["Reason"]) for r in out] == [
        (ADDED, f"first seen: {Y} us-east-1 not scanned in prev")
    ]


@pytest.mark.parametrize(
    ("rows", "which"),
    [
        ([row(X, "us-east-1", "i-2"), row(X, "us-east-1", "i-1")], "previous"),
        ([row(X, "us-east-1", "i-1"), row(X, "us-east-1", "i-1")], "previous"),
        ([row(Y, "us-east-1", "i-1"), row(X, "us-east-1", "i-9")], "previous"),
    ],
)
def test_unsorted_or_duplicated_rows_are_refused_not_misread(rows: list[dict[str, str]], which: str) -> None:
    with pytest.raises(ChangeDataError, match=which):
        list(diff(rows, [], ledger(ALL_OK), ledger(ALL_OK)))
    with pytest.raises(ChangeDataError, match="this snapshot's"):
        list(diff([], rows, ledger(ALL_OK), ledger(ALL_OK)))


def test_change_rows_are_rfc4180_and_neutralised() -> None:
    old = row(X, "us-east-1", "i-1", Name="=cmd|' /C calc'!A0", Tags='{"a":"x,\\"y\\""}')
    new = row(X, "us-east-1", "i-1", Name="'=already neutral", Tags='{"a":"line\nbreak"}')
    out = io.BytesIO()
    tally = Tally()
    write_rows(diff([old], [new], ledger(ALL_OK), ledger(ALL_OK)), out, tally)
    text = out.getvalue().decode("utf-8")
    assert text.startswith(",".join(CHANGE_COLUMNS) + "\r\n")
    parsed = list(csv.DictReader(io.StringIO(text, newline="")))
    assert [(r["Field"], r["OldValue"], r["NewValue"]) for r in parsed] == [
        ("Name", "'=cmd|' /C calc'!A0", "'=already neutral"),  # neutralised once, never twice
        ("Tags", '{"a":"x,\\"y\\""}', '{"a":"line\nbreak"}'),
    ]
    assert tally.changed == 1
    assert tally.changed_fields == 2
    assert tally.rows == 2
    assert tally.top[0] == {
        "change": CHANGED,
        "account": X,
        "region": "us-east-1",
        "instance_id": "i-1",
        "name": "'=already neutral",
        "field": "Name",
        "old_value": "=cmd|' /C calc'!A0",
        "new_value": "'=already neutral",
        "reason": "",
    }


# --- property: the merge-join agrees with a dictionary model on random small worlds ---------------------

ACCOUNTS = (X, "222222222222", Y)
REGIONS = ("eu-west-1", "us-east-1")
STATUSES = ("OK", "OK", "OK", "ROLE_NOT_ASSUMABLE", "THROTTLED", "REGION_DISABLED", None)  # None: no entry

keys = st.tuples(
    st.sampled_from(ACCOUNTS), st.sampled_from(REGIONS), st.sampled_from([f"i-{n}" for n in range(6)])
)
values = st.fixed_dictionaries(
    {field: st.sampled_from(["", "a", "b", "=c"]) for field in CHANGE_FIELDS}
    | {"InstanceType": st.sampled_from(["t3.micro", "m5.large"])}
)
worlds = st.dictionaries(keys, values, max_size=12)
ledgers = st.dictionaries(
    st.tuples(st.sampled_from(ACCOUNTS), st.sampled_from((*REGIONS, None))),
    st.sampled_from(STATUSES),
    max_size=8,
)


def rows_of(world: Mapping[tuple[str, str, str], Mapping[str, str]]) -> list[dict[str, str]]:
    return [row(*key, **fields) for key, fields in sorted(world.items())]


def ok(statuses: Mapping[tuple[str, str | None], str | None], account: str, region: str) -> bool:
    return statuses.get((account, region)) == "OK"


@settings(max_examples=200, deadline=None)
@given(previous=worlds, current=worlds, before=ledgers, after=ledgers)
def test_diff_matches_a_dictionary_model(
    previous: dict[tuple[str, str, str], dict[str, str]],
    current: dict[tuple[str, str, str], dict[str, str]],
    before: dict[tuple[str, str | None], str | None],
    after: dict[tuple[str, str | None], str | None],
) -> None:
    clean_before = {k: v for k, v in before.items() if v is not None}
    clean_after = {k: v for k, v in after.items() if v is not None}
    out = list(diff(rows_of(previous), rows_of(current), ledger(clean_before), ledger(clean_after)))

    expected: list[tuple[str, str, str, str, str, str, str]] = []
    for key in sorted(set(previous) | set(current)):
        account, region, _ = key
        if key not in current:
            verified = ok(clean_before, account, region) and ok(clean_after, account, region)
            expected.append((REMOVED if verified else NOT_VERIFIED, *key, "", "", ""))
        elif key not in previous:
            expected.append((ADDED, *key, "", "", ""))
        else:
            old, new = row(*key, **previous[key]), row(*key, **current[key])
            expected += [(CHANGED, *key, f, old[f], new[f]) for f in CHANGE_FIELDS if old[f] != new[f]]
    got = [
        (r["Change"], r["Account"], r["Region"], r["InstanceId"], r["Field"], r["OldValue"], r["NewValue"])
        for r in out
    ]
    assert got == expected
    # The promise, stated directly: nothing is REMOVED unless its region was scanned OK in both snapshots.
    for r in out:
        if r["Change"] == REMOVED:
            assert ok(clean_after, r["Account"], r["Region"])
            assert ok(clean_before, r["Account"], r["Region"])
        if r["Change"] == NOT_VERIFIED:
            assert r["Reason"]


# --- memory: the merge-join does not hold the CSVs ---------------------------------------------------------


def big_csv(count: int, shift: int) -> io.BytesIO:
    from include.cmdb_inventory.storage import rows_to_csv

    def rows() -> Iterator[dict[str, str]]:
        for n in range(count):
            yield row(X, "us-east-1", f"i-{n + shift:09d}", Name=f"host-{n % 7}", Tags='{"k":"v"}')

    text = io.StringIO()
    rows_to_csv(rows(), text)
    return io.BytesIO(text.getvalue().encode())


class Sink(io.RawIOBase):
    """A binary file that forgets what is written (in production: a spooled file on disk)."""

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return len(data)


def peak_of_compare(count: int) -> tuple[int, Tally]:
    manifest = {"ds": "d", "coverage": [{"account": X, "region": "us-east-1", "status": "OK"}]}
    previous, current = big_csv(count, 0), big_csv(count, count // 10)
    tracemalloc.start()
    try:
        tally = changes.compare(manifest, previous, manifest, current, io.BufferedWriter(Sink()))
        return tracemalloc.get_traced_memory()[1], tally
    finally:
        tracemalloc.stop()


def test_compare_memory_does_not_grow_with_the_number_of_instances() -> None:
    small_peak, small = peak_of_compare(500)
    large_peak, large = peak_of_compare(10_000)
    assert (small.added, small.removed) == (50, 50)
    assert (large.added, large.removed) == (1_000, 1_000)
    # 20x the rows, (nearly) the same peak: only a row of each side and one output row are held.
    assert large_peak < small_peak * 1.5 + 64 * 1024, (small_peak, large_peak)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"Account,Region,InstanceId\r\n1,2,3\r\n", "no column 'State'"),
        (("," * 16 + "\r\n").join(["\ufeff" + ",".join(COLUMNS), ""]).encode(), "no column 'Account'"),
        ((",".join(COLUMNS) + "\r\n1,2,3\r\n").encode(), "line 2 does not have one cell per column"),
        (
            (",".join(COLUMNS) + "\r\n" + "," * 17 + "\r\n").encode(),
            "line 2 does not have one cell per column",
        ),
        ((",".join(COLUMNS) + "\r\n").encode() + b"\xff\xfe" + b"," * 16 + b"\r\n", "cannot be read"),
    ],
)
def test_a_csv_that_cannot_be_read_faithfully_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(ChangeDataError, match=message):
        list(changes.read_rows(io.BytesIO(data)))
