"""The DAG's steps, each callable without Airflow's scheduler: resolve, scan, merge, notify, check."""

from __future__ import annotations

import io
import logging
import secrets
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote

from include.cmdb_inventory import changes, contract, coverage, formats, guard, notify, servicenow
from include.cmdb_inventory.aws import errors
from include.cmdb_inventory.aws.hooks import role_session_name
from include.cmdb_inventory.config import CONTEXT_IN_STAGING, Account, ConfigError, Settings
from include.cmdb_inventory.contract import (
    CSV_NAME,
    MANIFEST_NAME,
    NOT_REQUESTED,
    PARQUET_NAME,
    SCHEMA_VERSION,
    AccountStatus,
    LedgerEntry,
    Manifest,
    Plan,
    PublishedFile,
    RegionStatus,
    RemovalGuard,
    Resolved,
    RunSummary,
    TagColumn,
    UnusableDocument,
)
from include.cmdb_inventory.notify import Prompt, Receipt
from include.cmdb_inventory.run import RunInfo, check_session_duration, hook_for, now_utc
from include.cmdb_inventory.storage import (
    Document,
    SnapshotStore,
    decide_write,
    is_complete,
    snapshot_rank,
    spool,
)
from include.cmdb_inventory.text import clean as clean_text

if TYPE_CHECKING:
    from include.cmdb_inventory.aws.hooks import CrossAccountHook
    from include.cmdb_inventory.organizations import Discovery

log = logging.getLogger(__name__)

MAX_GAPS_IN_XCOM = 100
STATUS_READERS = 16  # merge reads the accounts' status documents this many at a time, not one by one


class CoverageError(RuntimeError):
    """Coverage of the date's snapshot is short."""


class PermanentScanError(RuntimeError):
    """An account failed for a reason a retry will not fix (the role cannot be assumed)."""


class TransientScanError(RuntimeError):
    """An account failed for a reason a retry may fix (throttling, network, unknown errors)."""


# Printable ASCII except "%": what an S3 metadata header may carry as-is (the rest is percent-encoded).
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def header_safe(text: str) -> str:
    """User text (a run id) made safe for an S3 metadata header: no non-ASCII, no CR/LF; reversible."""
    return quote(text, safe=_HEADER_SAFE)


# --- resolve ----------------------------------------------------------------------------------------------


def requested_accounts(settings: Settings, found: Discovery) -> list[Account]:
    """
    The accounts a run's ``accounts`` Param names, each checked against the expected set ``found``: a Param
    picks a subset, never an account from elsewhere (the hub may assume the role in any AWS account).
    """
    expected = {a.id: a for a in found.accounts}
    outside = [a.id for a in settings.accounts if a.id not in expected]
    if outside:
        excluded = {str(n["id"]): str(n.get("reason") or "") for n in found.not_scanned}
        listed = ", ".join(f"{i} ({excluded[i]})" if excluded.get(i) else i for i in outside)
        raise ConfigError(
            "params.accounts",
            f"{listed} {'is' if len(outside) == 1 else 'are'} not among the {len(expected)} expected "
            f"accounts (from {found.source}): the accounts param only picks accounts from the Variable's "
            "accounts or the organizations scope; nothing was scanned or written",
        )
    # The expected account as discovered (its OU path and tags too), named as the Param names it if blank.
    return [replace(expected[a.id], name=expected[a.id].name or a.name) for a in settings.accounts]


def resolve_accounts(
    settings: Settings,
    run: RunInfo,
    store: SnapshotStore,
    overwrite: bool,
    *,
    preflight: bool = False,
    org_client: Any = None,
) -> Resolved:
    """
    The accounts to map over: the static list and/or AWS Organizations (asked here, at run time), or the
    subset of them that the run's ``accounts`` Param names (any other account fails the run here, before
    anything is scanned or written). When the date already has a complete snapshot and the run does not ask
    to overwrite it, nothing is scanned (the list is empty) and the reason is returned; a preflight run
    always checks every account of the run. ``expected`` is what the run scans; ``expected_accounts`` (the
    whole expected set, with each account's source) and ``not_scanned`` (with why) go to the manifest.
    """
    from include.cmdb_inventory.organizations import expected_accounts

    store.check_bucket()
    check_session_duration(settings, run)
    # The expected set never comes from the Params: completeness is measured against it.
    configured = (
        replace(settings, accounts=settings.configured_accounts, accounts_from_params=False)
        if settings.accounts_from_params
        else settings
    )
    found = expected_accounts(configured, org_client, role_session_name("cmdb-org", run.run_id))
    scanned = requested_accounts(settings, found) if settings.accounts_from_params else found.accounts
    accounts = [a.to_dict() for a in scanned]
    plan: Plan = {
        "expected": accounts,
        "expected_accounts": found.expected(),
        "not_scanned": found.not_scanned,
        "accounts_source": found.source,
        "organization_context": found.organization_context,
        "skip_reason": None,
    }
    existing = None if preflight else store.get_json(store.layout.snapshot(run.ds, MANIFEST_NAME))
    if existing and is_complete(existing) and not overwrite:
        reason = (
            f"a complete snapshot for {run.ds} already exists (run {existing.get('dag_run_id')}); "
            "not scanning. Trigger with overwrite=true to replace it"
        )
        log.warning("%s", reason)
        return {**plan, "accounts": [], "skip_reason": reason}
    if not preflight:
        write_contexts(store, run, [a for a in scanned if a.ou_path or a.tags])
    log.info("Resolved %d accounts for %s (%s)", len(accounts), run.ds, found.source)
    return {**plan, "accounts": accounts}


def write_contexts(store: SnapshotStore, run: RunInfo, accounts: Sequence[Account]) -> None:
    """
    Each account's organisation context into the run's staging prefix, a few at a time: one small document
    per account, read by its own scan only (the mapped list, which every scan pulls whole, stays small).
    """
    staging = store.layout.staging(run.ds, run.run_id)

    def put(account: Account) -> None:
        store.put_json(store.layout.context(staging, account.id), account.context())

    with ThreadPoolExecutor(max_workers=STATUS_READERS, thread_name_prefix="resolve-context") as pool:
        list(pool.map(put, accounts))


def account_of(store: SnapshotStore, run: RunInfo, data: Mapping[str, Any]) -> Account:
    """
    A mapped task's account (``Account.to_dict``), with its organisation context read from the run's
    staging prefix when resolve left one. A context that is gone (the staging prefix expired) is logged and
    the account scanned without it: its instances matter more than two columns.
    """
    account = Account.from_dict(data)
    if data.get("context") != CONTEXT_IN_STAGING:
        return account
    key = store.layout.context(store.layout.staging(run.ds, run.run_id), account.id)
    doc = store.get_json(key)
    if doc is None:
        log.warning("Account %s: no organisation context at %s; scanning without it", account.label, key)
        return account
    return Account.from_dict({**data, **doc})


# --- scan -------------------------------------------------------------------------------------------------


def _status_doc(
    run: RunInfo,
    account: Account,
    *,
    status: str,
    error: dict[str, str] | None = None,
    role_arn: str | None = None,
    regions: list[RegionStatus] | None = None,
    regions_source: str | None = None,
    note: str | None = None,
    instances: int = 0,
    part_key: str | None = None,
) -> AccountStatus:
    """An account's status document (``None``: the key is left out, as documents before it had none)."""
    doc: AccountStatus = {
        "account": account.id,
        "account_name": account.name,
        "dag_run_id": run.run_id,
        "try_number": run.try_number,
        "finished_at": now_utc(),
        "regions": regions or [],
        "instances": instances,
        "part_key": part_key,
        "error": error,
        "status": status,
    }
    if role_arn is not None:
        doc["role_arn"] = role_arn
    if regions_source is not None:
        doc["regions_source"] = regions_source
    if note is not None:
        doc["note"] = note
    return doc


def scan_account(
    settings: Settings,
    run: RunInfo,
    account: Account,
    store: SnapshotStore,
    hook: CrossAccountHook | None = None,
) -> dict[str, Any]:
    """
    Scan one account, write its part and its status to the run's staging prefix, return a small summary.

    The status is written before any failure is raised, so merge can always say why an account is missing.
    """
    from include.cmdb_inventory.scan import scan_regions

    staging = store.layout.staging(run.ds, run.run_id)
    status_key = store.layout.status(staging, account.id)
    hook = hook or hook_for(settings, account, run)
    try:
        result = scan_regions(
            hook,
            account,
            collected_at=now_utc(),
            regions=settings.regions,
            exclude_regions=settings.exclude_regions,
            states=settings.instance_states,
            threads=settings.region_threads,
            tag_columns=settings.tag_columns,
        )
    except Exception as err:
        error = errors.error_of(err)
        status = errors.region_status_of(error["code"])
        status = status if status == contract.THROTTLED else contract.ERROR
        store.put_json(status_key, _status_doc(run, account, status=status, error=error))
        raise TransientScanError(f"account {account.label}: {error['code']}: {error['message']}") from None

    if result.status == contract.ROLE_NOT_ASSUMABLE:
        error = result.error or {}
        store.put_json(
            status_key, _status_doc(run, account, status=result.status, role_arn=result.role_arn, error=error)
        )
        raise PermanentScanError(
            f"account {account.label}: cannot assume {result.role_arn}: {error.get('code')}: "
            f"{error.get('message')}"
        )

    part_key = store.layout.part(staging, account.id)
    instances = store.write_part(part_key, result.records, settings.columns)
    # scan.py's region entries are RegionStatus documents (region, status, instances, error where not OK).
    regions = cast("list[RegionStatus]", result.regions)
    doc = _status_doc(
        run,
        account,
        status=contract.OK,
        role_arn=result.role_arn,
        regions=regions,
        regions_source=result.regions_source,
        note=result.note,
        instances=instances,
        part_key=part_key,
    )
    doc["columns"] = list(settings.columns)
    if settings.tag_columns:
        doc["tag_sources"] = result.tag_sources
    store.put_json(status_key, doc)
    counts: dict[str, int] = {}
    for region in regions:
        counts[region["status"]] = counts.get(region["status"], 0) + 1
    summary = {"account": account.id, "instances": instances, "part_key": part_key, "regions": counts}
    log.info("Account %s: %d instances; regions %s", account.label, instances, counts)

    transient = [r for r in regions if coverage.is_transient(r["status"])]
    if transient:
        listed = ", ".join(f"{r['region']} {r.get('error', {}).get('code')}" for r in transient)
        raise TransientScanError(f"account {account.label}: regions failed, retrying: {listed}")
    return summary


# --- merge: read the statuses, build the manifest, commit it, publish the copies, summarise ---------------


@dataclass(frozen=True)
class Scope:
    """What a merge measures against: the accounts this run scanned, and the expected ones it did not."""

    accounts: list[Account]  # the run's (``expected``), by id
    unrequested: list[Account]  # expected accounts a Param-subset run did not name, by id

    @classmethod
    def of(cls, expected: Sequence[Mapping[str, Any]], plan: Mapping[str, Any] | None) -> Scope:
        """The run's accounts; with ``plan`` (from resolve), also the expected ones it did not scan."""
        accounts = sorted((Account.from_dict(a) for a in expected), key=lambda a: a.id)
        requested = {a.id for a in accounts}
        listed = (plan or {}).get("expected_accounts") or []
        unrequested = sorted(
            (Account.from_dict(a) for a in listed if a["id"] not in requested), key=lambda a: a.id
        )
        return cls(accounts, unrequested)

    @property
    def subset(self) -> bool:
        """A subset run (its accounts Param): each expected account it did not scan is a gap."""
        return bool(self.unrequested)


def _not_requested(run: RunInfo, account: Account) -> AccountStatus:
    """The status of an expected account that a subset run did not scan (it is a gap of this run)."""
    message = "not named in this run's accounts param: a subset run does not scan it"
    return _status_doc(run, account, status=NOT_REQUESTED, error={"code": "NotRequested", "message": message})


def read_statuses(store: SnapshotStore, run: RunInfo, scope: Scope) -> list[Mapping[str, Any]]:
    """
    Every expected account's status, by account id: what its scan wrote (read a few at a time), else
    ``TASK_FAILED`` (its task ended without one), and ``NOT_REQUESTED`` for those a subset run left out.
    """
    staging = store.layout.staging(run.ds, run.run_id)
    with ThreadPoolExecutor(max_workers=STATUS_READERS, thread_name_prefix="merge-status") as pool:
        docs = list(pool.map(store.get_json, [store.layout.status(staging, a.id) for a in scope.accounts]))
    statuses: list[Mapping[str, Any]] = []
    for account, doc in zip(scope.accounts, docs, strict=True):
        if doc is not None:
            statuses.append(doc)
            continue
        message = "the account's task ended without reporting a status (killed, timed out, or never ran)"
        error = {"code": "NoStatus", "message": message}
        statuses.append(_status_doc(run, account, status=contract.TASK_FAILED, error=error))
    statuses += [_not_requested(run, a) for a in scope.unrequested]
    statuses.sort(key=lambda d: str(d["account"]))
    return statuses


def _ledger(statuses: Sequence[Mapping[str, Any]]) -> list[LedgerEntry]:
    """One coverage entry per account and region (or per account when it failed before regions)."""
    entries: list[LedgerEntry] = []
    for doc in statuses:
        account, name = doc["account"], doc.get("account_name", "")
        if doc["status"] != contract.OK or not doc.get("regions"):
            entry: LedgerEntry = {
                "account": account,
                "account_name": name,
                "region": None,
                "status": doc["status"],
                "instances": 0,
            }
            if doc["status"] != contract.OK:
                entry["error"] = doc.get("error")
            entries.append(entry)
            continue
        for region in doc["regions"]:
            entry = {
                "account": account,
                "account_name": name,
                "region": region["region"],
                "status": region["status"],
                "instances": region.get("instances", 0),
            }
            if region.get("error"):
                entry["error"] = region["error"]
            if doc.get("note"):
                entry["note"] = doc["note"]
            entries.append(entry)
    return entries


def build_manifest(
    settings: Settings,
    run: RunInfo,
    store: SnapshotStore,
    statuses: Sequence[Mapping[str, Any]],
    scope: Scope,
    plan: Mapping[str, Any] | None = None,
) -> Manifest:
    """
    The manifest of the run's snapshot: its coverage ledger (every expected account and region), the totals,
    and what it should have held (``expected_accounts``) and deliberately did not (``accounts_not_scanned``).
    Its keys name the date's fixed-name CSV until :func:`commit_snapshot` names the commit's own objects.
    """
    entries = _ledger(statuses)
    totals = coverage.summarise(entries, settings.denied_regions_fail_coverage)
    csv_key = store.layout.snapshot(run.ds, CSV_NAME)
    plan = plan or {}
    listed = plan.get("expected_accounts") or [
        {"id": a.id, "name": a.name, "source": "accounts"} for a in scope.accounts
    ]
    manifest: Manifest = {
        "schema_version": SCHEMA_VERSION,
        "dag_id": run.dag_id,
        "dag_run_id": run.run_id,
        "logical_date": run.logical_date,
        "ds": run.ds,
        "collected_at": now_utc(),
        "csv_key": csv_key,
        "csv_uri": store.uri(csv_key),
        "columns": list(settings.columns),
        "row_count": sum(int(d.get("instances") or 0) for d in statuses if d.get("part_key")),
        # A subset run is measured against the whole expected set: it is never complete.
        "complete": totals["complete"] and bool(statuses) and not scope.subset,
        "subset": scope.subset,
        "accounts_requested": sorted(a.id for a in scope.accounts) if scope.subset else None,
        "accounts_expected": len(scope.accounts) + len(scope.unrequested),
        "accounts_covered": totals["accounts_covered"],
        "regions_scanned": totals["regions_scanned"],
        "regions_disabled": totals["regions_disabled"],
        "denied_regions_fail_coverage": settings.denied_regions_fail_coverage,
        "accounts": [
            {
                "id": d["account"],
                "name": d.get("account_name", ""),
                "status": d["status"],
                "role_arn": d.get("role_arn", ""),
                "regions_source": d.get("regions_source", ""),
                "try_number": d.get("try_number"),
            }
            for d in statuses
        ],
        "coverage": entries,
        "accounts_source": plan.get("accounts_source") or "accounts",
        "expected_accounts": sorted(listed, key=lambda a: a["id"]),
        "accounts_not_scanned": sorted(plan.get("not_scanned") or [], key=lambda a: a["id"]),
        "tag_columns": tag_column_sources(settings, statuses),
    }
    # What Organizations told about the expected accounts (OU paths; tags, or why not), when it was asked.
    if plan.get("organization_context"):
        manifest["organization_context"] = plan["organization_context"]
    return manifest


def tag_column_sources(settings: Settings, statuses: Sequence[Mapping[str, Any]]) -> list[TagColumn]:
    """The manifest's ``tag_columns``: each configured column, its keys, the instances each key filled."""
    listed: list[TagColumn] = []
    for column, keys in settings.tag_columns:
        counts: dict[str, int] = {}
        for doc in statuses:
            for key, n in ((doc.get("tag_sources") or {}).get(column) or {}).items():
                counts[key] = counts.get(key, 0) + int(n)
        unmatched = counts.pop("", 0)
        matched = {key: counts[key] for key in keys if counts.get(key)}
        listed.append({"column": column, "keys": list(keys), "matched": matched, "unmatched": unmatched})
    return listed


def check_part_columns(settings: Settings, statuses: Sequence[Mapping[str, Any]]) -> None:
    """
    Fail, naming the accounts, when a part was written with other columns than the merge's (the Variable's
    ``tag_columns`` changed during the run, or the scans ran before an upgrade to schema 2): one CSV has one
    header. A status without ``columns`` was written before schema 2: its part has schema 1's columns.
    """
    wanted = list(settings.columns)
    other = [
        str(d["account"])
        for d in statuses
        if d.get("part_key") and d.get("columns", list(contract.SCHEMA_1_COLUMNS)) != wanted
    ]
    if other:
        raise ConfigError(
            "tag_columns",
            f"the parts of {', '.join(other[:20])} were scanned with other columns than the merge's (the "
            "tag_columns setting changed during this run, or the scans ran before an upgrade): clear those "
            "accounts' scan tasks (or rerun the date) so every part has the same columns",
        )


# The fixed-name CSV's metadata key naming the commit it is a copy of (how a later attempt sees that the
# copies of a committed snapshot were not finished).
COMMIT_ID_METADATA = "commit-id"


def _write_commit(
    settings: Settings, run: RunInfo, store: SnapshotStore, manifest: Manifest, parts: Sequence[str]
) -> None:
    """
    Write this attempt's objects under its own commit folder, once, never to be changed: the CSV (streamed
    from the parts), ``changes.csv``, the Parquet file and the Athena symlinks; fill the manifest's keys
    and ``published`` (which fixed-name file is a copy of which object). Writes no fixed-name file: the
    date's manifest, written next, commits the snapshot.
    """
    layout = store.layout
    attempt = f"try{run.try_number}-{secrets.token_hex(4)}"  # a failed attempt's objects are never reused
    folder = layout.commit(run.ds, run.run_id, attempt)
    view = store.for_commit(run.ds, folder)
    csv_key = view.layout.snapshot(run.ds, CSV_NAME)
    with spool() as csv_file:
        sha256 = store.merge_parts(parts, csv_file, settings.columns)
        size = csv_file.seek(0, io.SEEK_END)
        csv_file.seek(0)
        manifest["csv_key"] = csv_key
        manifest["csv_uri"] = store.uri(csv_key)
        manifest["csv_sha256"] = sha256
        manifest["csv_bytes"] = size
        manifest["commit_id"] = attempt
        manifest["commit_prefix"] = folder
        metadata = {
            "dag-run-id": header_safe(run.run_id)[:200],
            "sha256": sha256,
            "rows": str(manifest["row_count"]),
            "schema-version": str(SCHEMA_VERSION),  # the CSV's columns (contract.COLUMNS)
            COMMIT_ID_METADATA: attempt,
        }
        store.upload_csv(csv_file, csv_key, metadata)
        csv_file.seek(0)
        manifest["changes"] = changes.write_changes(view, run.ds, manifest, csv_file)
        csv_file.seek(0)
        # The ServiceNow payload retires what changes.csv reports REMOVED. Without it, None: the date's
        # fixed-name payload is then removed with the copies (``_published``), as Parquet's is.
        manifest["servicenow"] = (
            servicenow.write_payload(view, run.ds, manifest, csv_file) if settings.servicenow else None
        )
        csv_file.seek(0)
        # Athena's symlinks name the date's fixed-name copies: the same text every time, so writing them
        # before the commit changes nothing a reader sees (the copies follow the commit).
        fixed = {
            **manifest,
            "csv_key": layout.snapshot(run.ds, CSV_NAME),
            "parquet_key": layout.snapshot(run.ds, PARQUET_NAME),
        }
        written = formats.write_formats(view, run.ds, fixed, csv_file, parquet=settings.parquet)
        manifest["parquet"], manifest["athena"] = written["parquet"], written["athena"]
    manifest["published"] = _published(manifest)


def commit_snapshot(
    settings: Settings,
    run: RunInfo,
    store: SnapshotStore,
    manifest: Manifest,
    statuses: Sequence[Mapping[str, Any]],
    existing: Mapping[str, Any] | None,
) -> None:
    """
    Commit the run's snapshot: its objects under the attempt's own commit folder first (a failed attempt
    changes nothing a reader of the manifest sees), then the date's manifest, which commits them.
    """
    check_part_columns(settings, statuses)
    _write_commit(settings, run, store, manifest, [d["part_key"] for d in statuses if d.get("part_key")])
    manifest["removal_guard"] = assess_removals(settings, manifest)
    # The snapshot this one replaces keeps its objects until the date's next commit: a reader who resolved
    # the old manifest a moment ago can still fetch what it names.
    manifest["replaces_commit_prefix"] = (existing or {}).get("commit_prefix")
    store.put_json(store.layout.snapshot(run.ds, MANIFEST_NAME), manifest)


def assess_removals(settings: Settings, manifest: Mapping[str, Any]) -> RemovalGuard:
    """The mass-removal guard's verdict on a snapshot, from its change summary."""
    summary = manifest.get("changes") or {}
    compared = summary.get("status") == changes.COMPARED
    if summary.get("status") == changes.FAILED:
        # A previous snapshot was found but could not be read back: its removals are unknown, not zero.
        verdict = guard.unverifiable(str(summary.get("detail") or ""), settings.max_removed_fraction)
        log.warning("Holding latest/ for %s: %s", manifest.get("ds"), verdict["reason"])
        return verdict
    verdict = guard.assess(
        removed=int(summary.get("removed") or 0) if compared else 0,
        previous_rows=int(summary.get("previous_rows") or 0) if compared else 0,
        previous_ds=summary.get("previous_ds") if compared else None,
        max_removed_fraction=settings.max_removed_fraction,
    )
    if verdict["state"] == contract.GUARD_HELD:
        log.warning("Holding latest/ for %s: %s", manifest.get("ds"), verdict["reason"])
    return verdict


def _published(manifest: Mapping[str, Any]) -> list[PublishedFile]:
    """
    The fixed-name files of a snapshot and the object each is a copy of (``key`` ``None``: the file must
    not exist), in the order they are refreshed: the CSV last, so its metadata says all were. A manifest
    written before commits (no ``published``) names its fixed-name files themselves.
    """
    if manifest.get("published"):
        return list(manifest["published"])
    changes_doc, parquet = manifest.get("changes") or {}, manifest.get("parquet") or {}
    payload = manifest.get("servicenow") or {}
    return [
        {"name": contract.CHANGES_NAME, "key": changes_doc.get("key"), "bytes": changes_doc.get("bytes")},
        {"name": PARQUET_NAME, "key": parquet.get("key"), "bytes": parquet.get("bytes")},
        {"name": contract.IRE_PAYLOAD_NAME, "key": payload.get("key"), "bytes": payload.get("bytes")},
        {"name": CSV_NAME, "key": manifest.get("csv_key"), "bytes": manifest.get("csv_bytes")},
    ]


def _place(store: SnapshotStore, entry: PublishedFile, key: str) -> None:
    """Make the fixed-name ``key`` a copy of ``entry``'s object (server-side), or remove it."""
    if entry.get("key") is None:
        store.delete(key)
    elif entry["key"] != key:  # a snapshot written before commits: its files are their own fixed names
        store.copy_sized(str(entry["key"]), key, entry.get("bytes"))


def _refresh(
    store: SnapshotStore, snapshot: Mapping[str, Any], *, latest: bool, keep: str | None = None
) -> None:
    """
    Refresh the fixed-name copies of a committed snapshot: ``ds=D/`` (and ``latest/`` when ``latest``,
    its manifest last), then remove the date's other commits' objects (the snapshot this one replaced,
    attempts that died before committing), then the date's CSV, last. Each step is idempotent: an attempt
    interrupted anywhere is finished by the next one (see :func:`_unfinished`). ``keep``: a commit folder
    of the date that ``latest/`` still names (it lags behind a snapshot the removal guard holds).
    """
    layout, ds = store.layout, str(snapshot["ds"])
    *rest, last = _published(snapshot)
    for entry in rest:
        _place(store, entry, layout.snapshot(ds, entry["name"]))
    if latest:
        for entry in (*rest, last):
            _place(store, entry, layout.latest(entry["name"]))
        store.put_json(layout.latest(MANIFEST_NAME), snapshot)
    if snapshot.get("commit_prefix"):
        kept = tuple(
            f"{p}/" for p in (snapshot["commit_prefix"], snapshot.get("replaces_commit_prefix"), keep) if p
        )
        store.delete_keys(k for k in store.list_keys(layout.commits(ds)) if not k.startswith(kept))
    _place(store, last, layout.snapshot(ds, last["name"]))


def _unusable(store: SnapshotStore, document: Document) -> list[UnusableDocument]:
    """A document that could not be used (not JSON, not an object), for the summary: key, URI, why."""
    if not document.unusable:
        return []
    return [{"key": document.key, "uri": store.uri(document.key), "problem": document.unusable}]


def _unfinished(store: SnapshotStore, snapshot: Mapping[str, Any]) -> bool:
    """Whether a committed snapshot's fixed-name copies were left unfinished (its CSV's is refreshed last)."""
    if not snapshot.get("commit_id"):
        return False
    metadata = store.head_metadata(store.layout.snapshot(str(snapshot["ds"]), CSV_NAME)) or {}
    return metadata.get(COMMIT_ID_METADATA) != snapshot["commit_id"]


def publish(
    store: SnapshotStore, run: RunInfo, snapshot: Mapping[str, Any], *, written: bool
) -> tuple[bool, list[UnusableDocument]]:
    """
    Make the fixed-name copies follow the date's committed ``snapshot``, and ``latest/`` the newest date's:
    after a commit (``written``), and whenever an earlier attempt committed but was interrupted while
    copying. Returns whether ``latest/`` moved, and ``latest/``'s manifest if it was unusable.
    """
    latest_doc = store.get_document(store.layout.latest(MANIFEST_NAME))
    latest = latest_doc.body
    if latest is None and latest_doc.unusable:
        # latest/ has a snapshot, but its manifest is unusable: only the newest date may take it over, so
        # latest/ never moves back to an older date.
        newer = run.ds >= max(changes.snapshot_dates(store), default=run.ds)
    else:
        newer = latest is None or str(latest.get("ds", "")) < run.ds
    identity = ("dag_run_id", "csv_sha256", "commit_id")
    stale = (
        latest is not None
        and str(latest.get("ds", "")) == run.ds
        and [latest.get(k) for k in identity] != [snapshot.get(k) for k in identity]
    )
    # A snapshot held by the mass-removal guard (or rejected) keeps its date's copies, never latest/.
    to_latest = (newer or stale) and guard.may_publish(snapshot)
    # latest/'s objects of this date stay while latest/ names them (until a publishable commit replaces it).
    keep = None
    if latest is not None and str(latest.get("ds", "")) == run.ds and not to_latest:
        keep = latest.get("commit_prefix")
    if written or newer or stale or _unfinished(store, snapshot):
        _refresh(store, snapshot, latest=to_latest, keep=keep)
        return to_latest, _unusable(store, latest_doc)
    return False, _unusable(store, latest_doc)


def summarise(
    settings: Settings,
    run: RunInfo,
    store: SnapshotStore,
    manifest: Manifest,
    current: Mapping[str, Any],
    scope: Scope,
    *,
    written: bool,
    reason: str,
    skipped: bool,
    latest_updated: bool,
    unusable: list[UnusableDocument],
) -> RunSummary:
    """
    The run's summary (its XCom) of the date's ``current`` snapshot: this run's ``manifest`` when it was
    written, else the date's existing one (else this run's, unwritten). ``subset`` is this run's.
    """
    layout = store.layout
    gaps = coverage.summarise(current.get("coverage", []), settings.denied_regions_fail_coverage)["gaps"]
    return {
        "ds": run.ds,
        "dag_run_id": run.run_id,
        "written": written,
        "decision_reason": reason,
        "csv_uri": store.uri(layout.snapshot(run.ds, CSV_NAME)),
        "manifest_uri": store.uri(layout.snapshot(run.ds, MANIFEST_NAME)),
        "latest_uri": store.uri(layout.latest(CSV_NAME)),
        "latest_updated": latest_updated,
        "row_count": current.get("row_count", 0),
        "accounts_expected": current.get("accounts_expected", len(scope.accounts)),
        "accounts_covered": current.get("accounts_covered", 0),
        "regions_scanned": current.get("regions_scanned", 0),
        "regions_disabled": current.get("regions_disabled", 0),
        "run_complete": manifest["complete"] if not skipped else is_complete(current),
        "snapshot_complete": is_complete(current),
        "subset": manifest["subset"],  # this run's, whether or not it was written
        "accounts_requested": manifest["accounts_requested"],
        "gap_count": len(gaps),
        "gaps": gaps[:MAX_GAPS_IN_XCOM],
        "changes": current.get("changes"),
        "parquet_uri": store.uri(layout.snapshot(run.ds, PARQUET_NAME)) if current.get("parquet") else None,
        "unusable": unusable,
        "removal_guard": current.get("removal_guard"),
    }


def merge_inventory(
    settings: Settings,
    run: RunInfo,
    store: SnapshotStore,
    expected: Sequence[Mapping[str, Any]],
    *,
    overwrite: bool = False,
    skip_reason: str | None = None,
    plan: Mapping[str, Any] | None = None,
) -> RunSummary:
    """
    Stream every reported part into the CSV, write the manifest with the whole ledger, then ``latest/``.
    ``plan`` (from resolve) adds the expected account list and the accounts not scanned to the manifest.

    A date's snapshot is only replaced by a better one (or when the run asks to overwrite it); a failed
    upload leaves the previous snapshot and ``latest/`` as they were. A snapshot's objects are written under
    the attempt's own commit folder and committed by the date's manifest (its keys name them); the
    fixed-name copies in ``ds=`` and ``latest/`` follow, and an attempt that was interrupted while copying
    is finished by the next merge of the date. An unusable manifest (not JSON, not an object) counts as
    none and is named in the summary's ``unusable``.
    """
    existing_doc = store.get_document(store.layout.snapshot(run.ds, MANIFEST_NAME))
    existing = existing_doc.body
    scope = Scope.of(expected, plan)
    statuses = [] if skip_reason else read_statuses(store, run, scope)
    manifest = build_manifest(settings, run, store, statuses, scope, plan)

    if skip_reason:
        write, reason = False, skip_reason
    else:
        store.put_json(f"{store.layout.staging(run.ds, run.run_id)}/{MANIFEST_NAME}", manifest)
        write, reason = decide_write(
            existing, snapshot_rank(manifest), overwrite, run.run_id, subset=scope.subset
        )
    unusable = _unusable(store, existing_doc)
    if unusable and write:
        reason += f" (the date's manifest.json was unusable, treated as absent: {existing_doc.unusable})"

    if write:
        commit_snapshot(settings, run, store, manifest, statuses, existing)
        log.info("Committed %s (%d rows): %s", manifest["csv_uri"], manifest["row_count"], reason)
    else:
        log.warning("Did not write %s: %s", store.uri(store.layout.snapshot(run.ds, CSV_NAME)), reason)

    snapshot = manifest if write else existing
    latest_updated = False
    if snapshot is not None:
        latest_updated, unusable_latest = publish(store, run, snapshot, written=write)
        unusable += unusable_latest
    current = manifest if write else (existing or manifest)
    return summarise(
        settings,
        run,
        store,
        manifest,
        current,
        scope,
        written=write,
        reason=reason,
        skipped=bool(skip_reason),
        latest_updated=latest_updated,
        unusable=unusable,
    )


# --- notify and check -------------------------------------------------------------------------------------


def notify_cmdb(settings: Settings, summary: RunSummary, prompt: Prompt | None = None) -> Receipt:
    """
    Publish the summary to the CMDB team's topic (or log it when no topic is configured); return a small
    receipt (the XCom): where it went, its subject, its size and SNS's message id, never the text itself.
    ``prompt``: where and how a person decides on a snapshot the mass-removal guard holds.
    """
    return notify.send(settings, notify.subject(summary), notify.message(summary, prompt))


# --- the mass-removal guard's decision ---------------------------------------------------------------------


class DecisionError(RuntimeError):
    """The held snapshot can no longer be decided on (another run replaced the date's snapshot)."""


def awaiting_decision(store: SnapshotStore, run: RunInfo) -> Manifest | None:
    """
    The date's snapshot when it is this run's and waits for a person (HELD; or REJECTED, when an operator
    clears the approval task to decide again); else ``None``: nothing to ask.
    """
    manifest = store.get_json(store.layout.snapshot(run.ds, MANIFEST_NAME))
    if not manifest or manifest.get("dag_run_id") != run.run_id:
        return None
    state = guard.state_of(manifest)
    return cast("Manifest", manifest) if state in (contract.GUARD_HELD, contract.GUARD_REJECTED) else None


def approval_request(manifest: Mapping[str, Any]) -> tuple[str, str]:
    """The subject and body (Markdown) a person reads in the Airflow UI before approving or rejecting."""
    held = manifest.get("removal_guard") or {}
    changes_doc = manifest.get("changes") or {}
    subject = f"EC2 inventory {manifest.get('ds')}: {held.get('removed')} instances would be REMOVED"
    body = "\n".join(
        [
            f"**{clean_text(held.get('reason'))}**",
            "",
            f"- Snapshot: `{clean_text(manifest.get('csv_uri'))}` ({manifest.get('row_count')} instances)",
            f"- Compared with: the snapshot of {clean_text(held.get('previous_ds'))} "
            f"({held.get('previous_rows')} instances)",
            f"- Every change: `{clean_text(changes_doc.get('uri'))}`",
            "",
            "**Approve**: latest/ becomes this snapshot and the snapshot Asset event is sent (imports run).",
            "**Reject**: latest/ stays as it is; this snapshot stays under its date, and is never compared "
            "with. Without an answer, the approval times out as Reject.",
        ]
    )
    return subject, body


def settle_removals(
    settings: Settings, run: RunInfo, store: SnapshotStore, *, approved: bool, decided_by: str
) -> dict[str, Any]:
    """
    A person's decision on the run's held snapshot: record it in the date's manifest, then follow it (see
    :func:`follow_decision`). The decision is recorded first, so a try that dies after it is finished by
    the next try (:func:`unfinished_approval`) rather than asking again.
    """
    manifest = awaiting_decision(store, run)
    if manifest is None:
        raise DecisionError(
            f"the snapshot of {run.ds} is no longer run {run.run_id}'s held snapshot (another run replaced "
            "it, or it was decided already): nothing to approve or reject"
        )
    manifest["removal_guard"] = guard.decided(
        manifest["removal_guard"], approved=approved, by=decided_by, at=now_utc()
    )
    store.put_json(store.layout.snapshot(run.ds, MANIFEST_NAME), manifest)
    return follow_decision(store, run, manifest)


def unfinished_approval(store: SnapshotStore, run: RunInfo) -> dict[str, Any] | None:
    """
    An approval of this run that an earlier try recorded but did not publish (it died before): publish it
    now; ``None`` when there is none, or nothing is left to publish.
    """
    manifest = store.get_json(store.layout.snapshot(run.ds, MANIFEST_NAME))
    if not manifest or manifest.get("dag_run_id") != run.run_id:
        return None
    if guard.state_of(manifest) != contract.GUARD_APPROVED:
        return None
    decision = follow_decision(store, run, manifest)
    return decision if decision["latest_updated"] else None


def follow_decision(store: SnapshotStore, run: RunInfo, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """
    Act on a recorded decision: when approved, publish ``latest/`` (if the date is still the newest) like a
    merge would. Returns what the asset event and the notification need.
    """
    guard_doc = manifest["removal_guard"]
    state = str(guard_doc["state"])
    latest_updated = False
    if state == contract.GUARD_APPROVED:
        latest_updated, _ = publish(store, run, manifest, written=False)
    decided_by = str(guard_doc.get("decided_by") or "")
    log.warning("%s the snapshot of %s (by %s); latest/ moved: %s", state, run.ds, decided_by, latest_updated)
    layout = store.layout
    return {
        "ds": run.ds,
        "dag_run_id": run.run_id,
        # The Asset event follows latest/: an approved snapshot that a newer date already passed (latest/
        # did not move) sends none, or an import would apply the older snapshot after the newer one.
        "written": latest_updated,
        "state": state,
        "decided_by": decided_by,
        "csv_uri": store.uri(layout.snapshot(run.ds, CSV_NAME)),
        "manifest_uri": store.uri(layout.snapshot(run.ds, MANIFEST_NAME)),
        "latest_uri": store.uri(layout.latest(CSV_NAME)),
        "latest_updated": latest_updated,
        "snapshot_complete": is_complete(manifest),
        "row_count": manifest.get("row_count", 0),
        "accounts_expected": manifest.get("accounts_expected", 0),
        "accounts_covered": manifest.get("accounts_covered", 0),
        "subset": bool(manifest.get("subset")),
        "removal_guard": guard_doc,
    }


def notify_decision(settings: Settings, decision: Mapping[str, Any]) -> Receipt:
    """Tell the CMDB team what was decided on a held snapshot, and what ``latest/`` shows now."""
    return notify.send(settings, notify.decision_subject(decision), notify.decision_message(decision))


def check_coverage(summary: RunSummary) -> None:
    """Fail when the date's snapshot does not cover every expected account and enabled region."""
    if summary.get("snapshot_complete"):
        log.info("Coverage complete: %s", summary["csv_uri"])
        return
    gaps = summary.get("gaps") or []
    listed = "; ".join(
        f"{g['account']}{' ' + str(g.get('region')) if g.get('region') else ''} {g['status']}"
        for g in gaps[:20]
    )
    raise CoverageError(
        f"coverage is short for {summary['ds']}: {summary['accounts_covered']} of "
        f"{summary['accounts_expected']} accounts covered, "
        f"{summary.get('gap_count', len(gaps))} gaps: {listed}"
    )
