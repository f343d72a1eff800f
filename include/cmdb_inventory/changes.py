"""
What changed since the previous complete snapshot: instances added, removed, changed, and not verified.

An instance missing from this snapshot counts as ``REMOVED`` only when its account and region were scanned
successfully (coverage status ``OK``) in both snapshots; otherwise it is ``NOT_VERIFIED``, with the reason.
A failed scan can therefore never make instances look deleted.

Both CSVs are sorted by Account, Region, InstanceId (the CSV contract), so they are compared by a streaming
merge-join: memory does not grow with the number of instances.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from include.cmdb_inventory import contract, guard
from include.cmdb_inventory.aws.redaction import scrub
from include.cmdb_inventory.contract import CHANGES_NAME, MANIFEST_NAME
from include.cmdb_inventory.records import Record, neutralise, read_csv_rows
from include.cmdb_inventory.storage import digest_of, spool
from include.cmdb_inventory.text import MAX_TEXT_CHARS, MAX_VALUE_CHARS, clean

if TYPE_CHECKING:
    from include.cmdb_inventory.storage import SnapshotStore

log = logging.getLogger(__name__)

CHANGES_SCHEMA_VERSION = 1
CHANGE_COLUMNS: tuple[str, ...] = (
    "Change",
    "Account",
    "Region",
    "InstanceId",
    "Name",
    "Field",
    "OldValue",
    "NewValue",
    "Reason",
)
# The fields whose changes are reported, one row per changed field, in this order.
CHANGE_FIELDS: tuple[str, ...] = (
    "State",
    "InstanceType",
    "PrivateIpAddress",
    "PublicIpAddress",
    "Name",
    "Tags",
)
KEY_COLUMNS: tuple[str, ...] = ("Account", "Region", "InstanceId")

ADDED = "ADDED"
REMOVED = "REMOVED"
CHANGED = "CHANGED"
NOT_VERIFIED = "NOT_VERIFIED"

COMPARED = "COMPARED"  # compared with the previous complete snapshot
NO_PREVIOUS = "NO_PREVIOUS"  # there is no earlier complete snapshot: nothing to compare with
FAILED = "ERROR"  # the previous snapshot could not be read back (missing, altered, unsorted CSV)

TOP_CHANGES = 10  # changes listed in the manifest's summary and the notification
MAX_NOT_VERIFIED_GROUPS = 50  # account/region groups of not-verified instances kept in the summary
MAX_LOOKBACK = 90  # earlier snapshot dates searched for a complete one (newest first)

_DS_RE = re.compile(r"^\d{4}-\d\d-\d\d\Z", re.ASCII)

Key = tuple[str, str, str]


class ChangeDataError(RuntimeError):
    """A snapshot cannot be compared (its CSV is missing, altered, or not sorted); retrying will not help."""


@dataclass(frozen=True)
class Ledger:
    """
    One snapshot's coverage, for deciding what can be verified: ``(account, region)`` -> ledger entry,
    plus ``(account, None)`` entries for accounts that failed before their regions were known.
    """

    entries: Mapping[tuple[str, str | None], Mapping[str, Any]]
    label: str

    @classmethod
    def of(cls, manifest: Mapping[str, Any], label: str) -> Ledger:
        """The ledger of a manifest; ``label`` names the snapshot in reasons ("in this snapshot")."""
        entries: dict[tuple[str, str | None], Mapping[str, Any]] = {}
        listed = manifest.get("coverage") or []
        if not isinstance(listed, list) or not all(isinstance(e, Mapping) and "account" in e for e in listed):
            raise ChangeDataError(f"the coverage ledger {label} is not a list of account entries")
        for entry in listed:
            entries[(str(entry["account"]), entry.get("region"))] = entry
        return cls(entries, label)

    def verified(self, account: str, region: str) -> bool:
        """Whether this region of this account was scanned successfully."""
        entry = self.entries.get((account, region))
        return entry is not None and entry.get("status") == contract.OK

    def why_not(self, account: str, region: str) -> str:
        """Why the region does not count as scanned, e.g. ``111111111111 us-east-1 THROTTLED in ...``."""
        entry = self.entries.get((account, region)) or self.entries.get((account, None))
        if entry is None or entry.get("status") == contract.OK:
            return f"{account} {region} not scanned {self.label}"
        code = (entry.get("error") or {}).get("code")
        status = f"{entry['status']} ({code})" if code else str(entry["status"])
        return f"{account} {region} {status} {self.label}"


def _keyed(rows: Iterable[Mapping[str, str]], which: str) -> Iterator[tuple[Key, Mapping[str, str]]]:
    """Rows with their keys, checking that keys strictly increase (sorted, each instance once)."""
    last: Key | None = None
    for number, row in enumerate(rows, start=1):
        key = (row["Account"], row["Region"], row["InstanceId"])
        if last is not None and key <= last:
            raise ChangeDataError(
                f"{which} CSV is not sorted by Account, Region, InstanceId (or lists an instance twice): "
                f"data row {number} {'/'.join(key)} follows {'/'.join(last)}"
            )
        last = key
        yield key, row


def _row(change: str, row: Mapping[str, str], **cells: str) -> Record:
    return {
        "Change": change,
        "Account": row["Account"],
        "Region": row["Region"],
        "InstanceId": row["InstanceId"],
        "Name": row.get("Name", ""),
        "Field": "",
        "OldValue": "",
        "NewValue": "",
        "Reason": "",
        **cells,
    }


def _gone(row: Mapping[str, str], before: Ledger, after: Ledger) -> Record:
    account, region = row["Account"], row["Region"]
    if before.verified(account, region) and after.verified(account, region):
        return _row(REMOVED, row, Reason="not listed; its region was scanned OK in both snapshots")
    reasons = [
        ledger.why_not(account, region) for ledger in (after, before) if not ledger.verified(account, region)
    ]
    return _row(NOT_VERIFIED, row, Reason="; ".join(reasons))


def _new(row: Mapping[str, str], before: Ledger) -> Record:
    account, region = row["Account"], row["Region"]
    if before.verified(account, region):
        return _row(ADDED, row)
    # It may have existed before: its region was not covered then. Still new to the inventory.
    return _row(ADDED, row, Reason=f"first seen: {before.why_not(account, region)}")


def _changed(old: Mapping[str, str], new: Mapping[str, str]) -> Iterator[Record]:
    for field in CHANGE_FIELDS:
        if old.get(field, "") != new.get(field, ""):
            yield _row(CHANGED, new, Field=field, OldValue=old.get(field, ""), NewValue=new.get(field, ""))


def diff(
    previous: Iterable[Mapping[str, str]],
    current: Iterable[Mapping[str, str]],
    before: Ledger,
    after: Ledger,
) -> Iterator[Record]:
    """
    The change rows between two snapshots' rows, both sorted by Account, Region, InstanceId (a merge-join:
    one row of each in memory). Rows come out in that order; a changed instance gives one row per field.
    """
    old_rows = _keyed(previous, "the previous snapshot's")
    new_rows = _keyed(current, "this snapshot's")
    old, new = next(old_rows, None), next(new_rows, None)
    while old is not None or new is not None:
        if old is not None and (new is None or old[0] < new[0]):
            yield _gone(old[1], before, after)
            old = next(old_rows, None)
        elif new is not None and (old is None or new[0] < old[0]):
            yield _new(new[1], before)
            new = next(new_rows, None)
        elif old is not None and new is not None:
            yield from _changed(old[1], new[1])
            old, new = next(old_rows, None), next(new_rows, None)


@dataclass
class Tally:
    """Counts, the first changes and the not-verified groups, gathered while the rows stream past."""

    added: int = 0
    removed: int = 0
    changed: int = 0
    changed_fields: int = 0
    not_verified: int = 0
    rows: int = 0

    def __post_init__(self) -> None:
        self.top: list[dict[str, str]] = []
        self.groups: dict[tuple[str, str, str], int] = {}
        self._last_changed: Key | None = None

    def add(self, row: Mapping[str, str]) -> None:
        """Count one change row."""
        self.rows += 1
        change = row["Change"]
        if change == NOT_VERIFIED:
            self.not_verified += 1
            # Cut like every value shown (the reason names the account's AWS error); changes.csv has it whole.
            group = (
                clean(row["Account"]),
                clean(row["Region"]),
                clean(row["Reason"], MAX_TEXT_CHARS),
            )
            if group in self.groups or len(self.groups) < MAX_NOT_VERIFIED_GROUPS:
                self.groups[group] = self.groups.get(group, 0) + 1
            return
        if change == ADDED:
            self.added += 1
        elif change == REMOVED:
            self.removed += 1
        else:
            self.changed_fields += 1
            key = (row["Account"], row["Region"], row["InstanceId"])
            if key != self._last_changed:
                self.changed += 1
                self._last_changed = key
        if len(self.top) < TOP_CHANGES:
            # Tag authors choose names and tag values of any size: the summary (manifest, XCom, notification)
            # keeps each value cleaned and cut; changes.csv keeps it whole.
            self.top.append({_snake(column): _shown(column, row[column]) for column in CHANGE_COLUMNS})

    def summary(self) -> dict[str, Any]:
        """The counts and lists of the manifest's ``changes`` (without the status fields)."""
        return {
            "rows": self.rows,
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
            "changed_fields": self.changed_fields,
            "not_verified": self.not_verified,
            "top": self.top,
            "not_verified_groups": [
                {"account": a, "region": r, "reason": reason, "instances": n}
                for (a, r, reason), n in self.groups.items()
            ],
        }


def _shown(column: str, value: str) -> str:
    """A change row's cell as the summary shows it: cleaned and cut (a reason is a sentence)."""
    return clean(value, MAX_TEXT_CHARS if column == "Reason" else MAX_VALUE_CHARS)


def _snake(column: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", column).lower()


def write_rows(rows: Iterable[Mapping[str, str]], out: IO[bytes], tally: Tally | None = None) -> int:
    """Write change rows as RFC 4180 CSV (CRLF, header, neutralised cells) into a binary file."""
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
    try:
        writer = csv.writer(text, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
        writer.writerow(CHANGE_COLUMNS)
        count = 0
        for row in rows:
            writer.writerow([neutralise(row.get(column, "")) for column in CHANGE_COLUMNS])
            if tally is not None:
                tally.add(row)
            count += 1
        text.flush()
        return count
    finally:
        text.detach()


def read_rows(source: IO[bytes]) -> Iterator[dict[str, str]]:
    """Stream the rows of an inventory CSV (a binary file, from its start), checking its header."""
    return read_csv_rows(source, (*KEY_COLUMNS, *CHANGE_FIELDS), "the CSV", ChangeDataError)


def snapshot_dates(store: SnapshotStore) -> list[str]:
    """Every date with a snapshot folder (``{prefix}/ds=YYYY-MM-DD/``), from S3's listing, oldest first."""
    root = f"{store.layout.prefix}/ds="
    dates = (folder[len(root) :].rstrip("/") for folder in store.list_folders(root))
    return sorted(ds for ds in dates if _DS_RE.match(ds))


def find_previous(
    store: SnapshotStore, ds: str, lookback: int = MAX_LOOKBACK
) -> tuple[dict[str, Any] | None, str]:
    """
    The manifest of the newest complete snapshot of a date before ``ds`` (so a rerun of ``ds`` compares
    with an earlier date, never with itself), and a sentence saying what was found.
    """
    earlier = [d for d in reversed(snapshot_dates(store)) if d < ds]
    if not earlier:
        return None, f"no snapshot before {ds} to compare with"
    # A manifest that is not valid JSON or not an object is skipped (it cannot say whether its date is
    # complete), and named in the sentence, so the change report says why that date was not used.
    unusable: list[str] = []
    for candidate in earlier[:lookback]:
        document = store.get_document(store.layout.snapshot(candidate, MANIFEST_NAME))
        manifest = document.body
        if document.unusable:
            unusable.append(f"{candidate}, whose manifest.json is unusable ({document.unusable})")
        elif manifest and not guard.may_publish(manifest):
            # A snapshot held by the mass-removal guard (or rejected) is not a baseline: comparing with it
            # would let the next night's snapshot repeat its removals without anyone approving them.
            state = guard.state_of(manifest)
            unusable.append(f"{candidate}, whose snapshot is {state} by the mass-removal guard")
        elif manifest and manifest.get("complete") is True and manifest.get("csv_key"):
            skipped = f"; skipped {'; '.join(unusable)}" if unusable else ""
            return manifest, (
                f"compared with the complete snapshot of {candidate} (run {manifest.get('dag_run_id')})"
                + skipped
            )
    searched = min(len(earlier), lookback)
    return None, (
        f"none of the {searched} newest snapshot dates before {ds} is complete "
        "(an incomplete snapshot cannot tell removed instances from unscanned ones)"
        + (f"; skipped {'; '.join(unusable)}" if unusable else "")
    )


def _download(store: SnapshotStore, manifest: Mapping[str, Any], out: IO[bytes]) -> None:
    """The previous snapshot's CSV into ``out``, checked against the SHA-256 its manifest recorded."""
    key = str(manifest["csv_key"])
    sha256 = store.download_into(key, out)
    if sha256 is None:
        raise ChangeDataError(f"the previous snapshot's CSV {store.uri(key)} is missing")
    expected = manifest.get("csv_sha256")
    if expected and sha256 != expected:
        raise ChangeDataError(
            f"the previous snapshot's CSV {store.uri(key)} does not match its manifest's csv_sha256 "
            "(replaced since?)"
        )


def compare(
    previous_manifest: Mapping[str, Any],
    previous_csv: IO[bytes],
    manifest: Mapping[str, Any],
    current_csv: IO[bytes],
    out: IO[bytes],
) -> Tally:
    """Compare two snapshots (manifests and CSV files) and write ``changes.csv`` into ``out``."""
    before = Ledger.of(previous_manifest, f"in the previous snapshot ({previous_manifest.get('ds')})")
    after = Ledger.of(manifest, "in this snapshot")
    tally = Tally()
    write_rows(diff(read_rows(previous_csv), read_rows(current_csv), before, after), out, tally)
    return tally


def write_changes(
    store: SnapshotStore,
    ds: str,
    manifest: Mapping[str, Any],
    current_csv: IO[bytes],
) -> dict[str, Any]:
    """
    Write ``{prefix}/ds=YYYY-MM-DD/changes.csv`` for the snapshot being written (its manifest, without the
    changes yet, and its CSV file) and return the manifest's ``changes`` summary.

    ``changes.csv`` is always written; when there is nothing to compare with, or the previous snapshot
    cannot be read back, it holds only its header and the summary's ``status`` and ``detail`` say why.
    S3 errors other than a missing previous CSV propagate (the task's retry will redo the merge).
    """
    key = store.layout.snapshot(ds, CHANGES_NAME)
    previous, detail = find_previous(store, ds)
    summary: dict[str, Any] = {
        "schema_version": CHANGES_SCHEMA_VERSION,
        "status": NO_PREVIOUS,
        "detail": detail,
        "previous_ds": None,
        "previous_run_id": None,
        "previous_csv_key": None,
        "previous_rows": 0,  # the previous snapshot's instances (what the removal guard measures against)
        "key": key,
        "uri": store.uri(key),
        "columns": list(CHANGE_COLUMNS),
        "fields": list(CHANGE_FIELDS),
    }
    tally = Tally()
    with spool() as out:
        if previous is not None:
            summary.update(
                status=COMPARED,
                previous_ds=previous.get("ds"),
                previous_run_id=previous.get("dag_run_id"),
                previous_csv_key=previous.get("csv_key"),
                previous_rows=int(previous.get("row_count") or 0),
            )
            try:
                with spool() as previous_csv:
                    _download(store, previous, previous_csv)
                    tally = compare(previous, previous_csv, manifest, current_csv, out)
            except ChangeDataError as err:
                log.error("Changes for %s not computed: %s", ds, err)
                skipped = detail.partition("; skipped ")[2]  # dates whose manifest was unusable, if any
                summary.update(
                    status=FAILED,
                    detail=f"not compared: {scrub(str(err))}" + (f"; skipped {skipped}" if skipped else ""),
                )
                tally = Tally()
                out.seek(0)
                out.truncate()
                write_rows([], out)
        else:
            write_rows([], out)
        sha256, size = digest_of(out)
        summary.update(tally.summary(), sha256=sha256, bytes=size)
        store.upload_csv(
            out,
            key,
            {"sha256": sha256, "rows": str(tally.rows), "compared-with": str(summary["previous_ds"] or "")},
        )
    log.info(
        "Changes for %s: %s; %d added, %d removed, %d changed, %d not verified",
        ds,
        summary["detail"],
        tally.added,
        tally.removed,
        tally.changed,
        tally.not_verified,
    )
    return summary
