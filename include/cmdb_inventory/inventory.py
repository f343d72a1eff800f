"""The DAG's steps, each callable without Airflow's scheduler: resolve, scan, merge, notify, check."""

from __future__ import annotations

import io
import logging
import secrets
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from include.cmdb_inventory import changes, contract, coverage, formats
from include.cmdb_inventory.aws import errors
from include.cmdb_inventory.config import Account, ConfigError, Settings
from include.cmdb_inventory.contract import COLUMNS, CSV_NAME, MANIFEST_NAME, PARQUET_NAME, SCHEMA_VERSION
from include.cmdb_inventory.records import iso_utc
from include.cmdb_inventory.storage import (
    Document,
    SnapshotStore,
    decide_write,
    is_complete,
    snapshot_rank,
    spool,
)

if TYPE_CHECKING:
    from include.cmdb_inventory.aws.hooks import CrossAccountHook
    from include.cmdb_inventory.organizations import Discovery

log = logging.getLogger(__name__)

MAX_GAPS_IN_XCOM = 100
STATUS_READERS = 16  # merge reads the accounts' status documents this many at a time, not one by one
# Every EC2 call of the inventory (and all that CMDBDiscovery allows): its EC2 clients know only these.
EC2_OPERATIONS = ("DescribeInstances", "DescribeRegions")


# The coverage status of an expected account that a subset run (the accounts Param) did not scan: a gap.
NOT_REQUESTED = contract.NOT_REQUESTED


class CoverageError(RuntimeError):
    """Coverage of the date's snapshot is short."""


class PermanentScanError(RuntimeError):
    """An account failed for a reason a retry will not fix (the role cannot be assumed)."""


class TransientScanError(RuntimeError):
    """An account failed for a reason a retry may fix (throttling, network, unknown errors)."""


@dataclass(frozen=True)
class RunInfo:
    """The DAG run a step works for."""

    dag_id: str
    run_id: str
    ds: str
    logical_date: str
    try_number: int = 1


# Printable ASCII except "%": what an S3 metadata header may carry as-is (the rest is percent-encoded).
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def header_safe(text: str) -> str:
    """User text (a run id) made safe for an S3 metadata header: no non-ASCII, no CR/LF; reversible."""
    from urllib.parse import quote

    return quote(text, safe=_HEADER_SAFE)


def now_utc() -> str:
    """Collection time, ISO-8601 UTC."""
    return iso_utc(datetime.now(tz=UTC))


def store_for(settings: Settings) -> SnapshotStore:
    """
    The S3 store, through the provider's hook machinery (so connection extras apply), on the process's one
    hub session (``HubHook``: what ``S3Hook(...).get_conn()`` gives, without another AssumeRole).
    """
    from botocore.config import Config

    from include.cmdb_inventory.aws.hooks import HubHook

    hook = HubHook(aws_conn_id=settings.aws_conn_id, region_name=settings.hub_region, client_type="s3")
    # botocore's standard retries with the configured attempts, as for EC2 (its default of three attempts
    # gave up inside a SlowDown storm and left it to a task retry minutes later); connection extras win.
    ours = Config(retries={"mode": "standard", "total_max_attempts": settings.max_attempts})
    conn_config = hook.conn_config.botocore_config
    client = hook.get_client_type(
        region_name=settings.hub_region, config=ours.merge(conn_config) if conn_config else ours
    )
    return SnapshotStore(
        client,
        settings.bucket,
        settings.prefix,
        kms_key_id=settings.kms_key_id,
        expected_bucket_owner=settings.expected_bucket_owner,
    )


def hook_for(settings: Settings, account: Account, run: RunInfo) -> CrossAccountHook:
    """The cross-account hook of one account, with a session name that traces back to the run."""
    from include.cmdb_inventory.aws.hooks import CrossAccountHook, role_session_name

    return CrossAccountHook(
        account_id=account.id,
        role_name=settings.role_name,
        session_name=role_session_name("cmdb", run.run_id),
        external_id=settings.external_id,
        duration_seconds=settings.session_duration_seconds,
        source_identity=settings.source_identity,
        session_tags=dict(settings.session_tags),
        max_attempts=settings.max_attempts,
        max_pool_connections=max(10, settings.region_threads),
        aws_conn_id=settings.aws_conn_id,
        region_name=settings.hub_region,
        ec2_operations=EC2_OPERATIONS,
    )


def check_session_duration(settings: Settings, run: RunInfo) -> None:
    """
    Refuse up front (before any account is scanned) a ``session_duration_seconds`` above one hour when the
    hub identity is itself an assumed role: AWS caps role chaining at one hour.
    """
    from include.cmdb_inventory.aws.hooks import CHAINED_ROLE_MAX_SECONDS, SessionDurationError

    if settings.session_duration_seconds <= CHAINED_ROLE_MAX_SECONDS:
        return
    anchor = settings.accounts[0] if settings.accounts else Account(id="000000000000")
    try:
        hook_for(settings, anchor, run).check_session_duration()
    except SessionDurationError as err:
        raise ConfigError("session_duration_seconds", str(err)) from None


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
    return [Account(id=a.id, name=expected[a.id].name or a.name) for a in settings.accounts]


def resolve_accounts(
    settings: Settings,
    run: RunInfo,
    store: SnapshotStore,
    overwrite: bool,
    *,
    preflight: bool = False,
    org_client: Any = None,
) -> dict[str, Any]:
    """
    The accounts to map over: the static list and/or AWS Organizations (asked here, at run time), or the
    subset of them that the run's ``accounts`` Param names (any other account fails the run here, before
    anything is scanned or written). When the date already has a complete snapshot and the run does not ask
    to overwrite it, nothing is scanned (the list is empty) and the reason is returned; a preflight run
    always checks every account of the run. ``expected`` is what the run scans; ``expected_accounts`` (the
    whole expected set, with each account's source) and ``not_scanned`` (with why) go to the manifest.
    """
    from dataclasses import replace

    from include.cmdb_inventory.aws.hooks import role_session_name
    from include.cmdb_inventory.organizations import resolve as discover

    store.check_bucket()
    check_session_duration(settings, run)
    # The expected set never comes from the Params: completeness is measured against it.
    configured = (
        replace(settings, accounts=settings.configured_accounts, accounts_from_params=False)
        if settings.accounts_from_params
        else settings
    )
    found = discover(configured, org_client, role_session_name("cmdb-org", run.run_id))
    scanned = requested_accounts(settings, found) if settings.accounts_from_params else found.accounts
    accounts = [a.to_dict() for a in scanned]
    plan = {
        "expected": accounts,
        "expected_accounts": found.expected(),
        "not_scanned": found.not_scanned,
        "accounts_source": found.source,
    }
    existing = None if preflight else store.get_json(store.layout.snapshot(run.ds, MANIFEST_NAME))
    if existing and is_complete(existing) and not overwrite:
        reason = (
            f"a complete snapshot for {run.ds} already exists (run {existing.get('dag_run_id')}); "
            "not scanning. Trigger with overwrite=true to replace it"
        )
        log.warning("%s", reason)
        return {"accounts": [], **plan, "skip_reason": reason}
    log.info("Resolved %d accounts for %s (%s)", len(accounts), run.ds, found.source)
    return {"accounts": accounts, **plan, "skip_reason": None}


def _status_doc(run: RunInfo, account: Account, **fields: Any) -> dict[str, Any]:
    return {
        "account": account.id,
        "account_name": account.name,
        "dag_run_id": run.run_id,
        "try_number": run.try_number,
        "finished_at": now_utc(),
        "regions": [],
        "instances": 0,
        "part_key": None,
        "error": None,
        **fields,
    }


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
    from include.cmdb_inventory.scan import scan_account as scan

    staging = store.layout.staging(run.ds, run.run_id)
    status_key = store.layout.status(staging, account.id)
    hook = hook or hook_for(settings, account, run)
    try:
        result = scan(
            hook,
            account,
            regions=settings.regions,
            exclude_regions=settings.exclude_regions,
            states=settings.instance_states,
            collected_at=now_utc(),
            threads=settings.region_threads,
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
    instances = store.write_part(part_key, result.records)
    doc = _status_doc(
        run,
        account,
        status=contract.OK,
        role_arn=result.role_arn,
        regions=result.regions,
        regions_source=result.regions_source,
        note=result.note,
        instances=instances,
        part_key=part_key,
    )
    store.put_json(status_key, doc)
    counts: dict[str, int] = {}
    for region in result.regions:
        counts[region["status"]] = counts.get(region["status"], 0) + 1
    summary = {"account": account.id, "instances": instances, "part_key": part_key, "regions": counts}
    log.info("Account %s: %d instances; regions %s", account.label, instances, counts)

    transient = [r for r in result.regions if coverage.is_transient(r["status"])]
    if transient:
        listed = ", ".join(f"{r['region']} {r['error']['code']}" for r in transient)
        raise TransientScanError(f"account {account.label}: regions failed, retrying: {listed}")
    return summary


def _not_requested(run: RunInfo, account: Account) -> dict[str, Any]:
    """The status of an expected account that a subset run did not scan (it is a gap of this run)."""
    message = "not named in this run's accounts param: a subset run does not scan it"
    return _status_doc(run, account, status=NOT_REQUESTED, error={"code": "NotRequested", "message": message})


def _ledger(statuses: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One coverage entry per account and region (or per account when it failed before regions)."""
    entries: list[dict[str, Any]] = []
    for doc in statuses:
        base = {"account": doc["account"], "account_name": doc.get("account_name", "")}
        if doc["status"] != contract.OK or not doc.get("regions"):
            if doc["status"] == contract.OK:
                entries.append({**base, "region": None, "status": contract.OK, "instances": 0})
            else:
                entries.append(
                    {
                        **base,
                        "region": None,
                        "status": doc["status"],
                        "instances": 0,
                        "error": doc.get("error"),
                    }
                )
            continue
        for region in doc["regions"]:
            entry = {**base, "region": region["region"], "status": region["status"]}
            entry["instances"] = region.get("instances", 0)
            if region.get("error"):
                entry["error"] = region["error"]
            if doc.get("note"):
                entry["note"] = doc["note"]
            entries.append(entry)
    return entries


def _expected_doc(expected: Sequence[Mapping[str, Any]], plan: Mapping[str, Any] | None) -> dict[str, Any]:
    """Manifest keys saying what should have been in the snapshot, and what was deliberately left out."""
    plan = plan or {}
    listed = plan.get("expected_accounts") or [
        {"id": a["id"], "name": a.get("name", ""), "source": "accounts"} for a in expected
    ]
    return {
        "accounts_source": plan.get("accounts_source") or "accounts",
        "expected_accounts": sorted(listed, key=lambda a: a["id"]),
        "accounts_not_scanned": sorted(plan.get("not_scanned") or [], key=lambda a: a["id"]),
    }


# The fixed-name CSV's metadata key naming the commit it is a copy of (how a later attempt sees that the
# copies of a committed snapshot were not finished).
COMMIT_ID_METADATA = "commit-id"


def _commit(
    settings: Settings,
    run: RunInfo,
    store: SnapshotStore,
    manifest: dict[str, Any],
    parts: Sequence[str],
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
        sha256 = store.merge_parts(parts, csv_file)
        size = csv_file.seek(0, io.SEEK_END)
        csv_file.seek(0)
        manifest.update(
            csv_key=csv_key,
            csv_uri=store.uri(csv_key),
            csv_sha256=sha256,
            csv_bytes=size,
            commit_id=attempt,
            commit_prefix=folder,
        )
        metadata = {
            "dag-run-id": header_safe(run.run_id)[:200],
            "sha256": sha256,
            "rows": str(manifest["row_count"]),
            COMMIT_ID_METADATA: attempt,
        }
        store.upload_csv(csv_file, csv_key, metadata)
        csv_file.seek(0)
        manifest["changes"] = changes.write_changes(view, run.ds, manifest, csv_file)
        csv_file.seek(0)
        # Athena's symlinks name the date's fixed-name copies: the same text every time, so writing them
        # before the commit changes nothing a reader sees (the copies follow the commit).
        fixed = {
            **manifest,
            "csv_key": layout.snapshot(run.ds, CSV_NAME),
            "parquet_key": layout.snapshot(run.ds, PARQUET_NAME),
        }
        manifest.update(formats.write_formats(view, run.ds, fixed, csv_file, parquet=settings.parquet))
    manifest["published"] = _published(manifest)


def _published(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """
    The fixed-name files of a snapshot and the object each is a copy of (``key`` ``None``: the file must
    not exist), in the order they are refreshed: the CSV last, so its metadata says all were. A manifest
    written before commits (no ``published``) names its fixed-name files themselves.
    """
    if manifest.get("published"):
        return list(manifest["published"])
    changes_doc, parquet = manifest.get("changes") or {}, manifest.get("parquet") or {}
    return [
        {"name": contract.CHANGES_NAME, "key": changes_doc.get("key"), "bytes": changes_doc.get("bytes")},
        {"name": PARQUET_NAME, "key": parquet.get("key"), "bytes": parquet.get("bytes")},
        {"name": CSV_NAME, "key": manifest.get("csv_key"), "bytes": manifest.get("csv_bytes")},
    ]


def _place(store: SnapshotStore, entry: Mapping[str, Any], key: str) -> None:
    """Make the fixed-name ``key`` a copy of ``entry``'s object (server-side), or remove it."""
    if entry.get("key") is None:
        store.delete(key)
    elif entry["key"] != key:  # a snapshot written before commits: its files are their own fixed names
        store.copy_sized(str(entry["key"]), key, entry.get("bytes"))


def _publish(store: SnapshotStore, snapshot: Mapping[str, Any], *, latest: bool) -> None:
    """
    Refresh the fixed-name copies of a committed snapshot: ``ds=D/`` (and ``latest/`` when ``latest``,
    its manifest last), then remove the date's other commits' objects (the snapshot this one replaced,
    attempts that died before committing), then the date's CSV, last. Each step is idempotent: an attempt
    interrupted anywhere is finished by the next one (see :func:`_unfinished`).
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
            f"{p}/" for p in (snapshot["commit_prefix"], snapshot.get("replaces_commit_prefix")) if p
        )
        store.delete_keys(k for k in store.list_keys(layout.commits(ds)) if not k.startswith(kept))
    _place(store, last, layout.snapshot(ds, last["name"]))


def _unusable(store: SnapshotStore, document: Document) -> list[dict[str, str]]:
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


def merge_inventory(
    settings: Settings,
    run: RunInfo,
    store: SnapshotStore,
    expected: Sequence[Mapping[str, Any]],
    *,
    overwrite: bool = False,
    skip_reason: str | None = None,
    plan: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
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
    layout = store.layout
    staging = layout.staging(run.ds, run.run_id)
    csv_key, manifest_key = layout.snapshot(run.ds, CSV_NAME), layout.snapshot(run.ds, MANIFEST_NAME)
    accounts = sorted((Account.from_dict(a) for a in expected), key=lambda a: a.id)
    existing_doc = store.get_document(manifest_key)  # an unusable manifest counts as none (and is named)
    existing = existing_doc.body
    # A subset run (its accounts Param) is measured against the whole expected set: each expected account
    # it did not scan is a NOT_REQUESTED gap, so a subset is never complete.
    requested = {a.id for a in accounts}
    listed = (plan or {}).get("expected_accounts") or []
    unrequested = sorted(
        (Account.from_dict(a) for a in listed if a["id"] not in requested), key=lambda a: a.id
    )
    subset = bool(unrequested)

    statuses: list[dict[str, Any]] = []
    if not skip_reason:
        with ThreadPoolExecutor(max_workers=STATUS_READERS, thread_name_prefix="merge-status") as pool:
            docs = list(pool.map(store.get_json, [layout.status(staging, a.id) for a in accounts]))
        for account, doc in zip(accounts, docs, strict=True):
            if doc is None:
                doc = _status_doc(
                    run,
                    account,
                    status=contract.TASK_FAILED,
                    error={
                        "code": "NoStatus",
                        "message": "the account's task ended without reporting a status "
                        "(killed, timed out, or never ran)",
                    },
                )
            statuses.append(doc)
        statuses += [_not_requested(run, a) for a in unrequested]
        statuses.sort(key=lambda d: str(d["account"]))
    entries = _ledger(statuses)
    totals = coverage.summarise(entries, settings.denied_regions_fail_coverage)
    parts = [d["part_key"] for d in statuses if d.get("part_key")]
    row_count = sum(int(d.get("instances") or 0) for d in statuses if d.get("part_key"))

    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "dag_id": run.dag_id,
        "dag_run_id": run.run_id,
        "logical_date": run.logical_date,
        "ds": run.ds,
        "collected_at": now_utc(),
        "csv_key": csv_key,
        "csv_uri": store.uri(csv_key),
        "columns": list(COLUMNS),
        "row_count": row_count,
        "complete": totals["complete"] and bool(statuses) and not subset,
        "subset": subset,
        "accounts_requested": sorted(requested) if subset else None,
        "accounts_expected": len(accounts) + len(unrequested),
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
        **_expected_doc(expected, plan),
    }

    if skip_reason:
        write, reason = False, skip_reason
    else:
        store.put_json(f"{staging}/{MANIFEST_NAME}", manifest)
        write, reason = decide_write(existing, snapshot_rank(manifest), overwrite, run.run_id, subset=subset)

    unusable = _unusable(store, existing_doc)
    if unusable and write:
        reason += f" (the date's manifest.json was unusable, treated as absent: {existing_doc.unusable})"

    latest_updated = False
    if write:
        # The run's objects under its own commit folder first (a failed attempt changes nothing a reader of
        # the manifest sees), then the manifest, which commits them, then the fixed-name copies.
        _commit(settings, run, store, manifest, parts)
        # The snapshot this one replaces keeps its objects until the date's next commit: a reader who
        # resolved the old manifest a moment ago can still fetch what it names.
        manifest["replaces_commit_prefix"] = (existing or {}).get("commit_prefix")
        store.put_json(manifest_key, manifest)
        log.info("Committed %s (%d rows): %s", manifest["csv_uri"], row_count, reason)
    else:
        log.warning("Did not write %s: %s", store.uri(csv_key), reason)

    # The fixed-name copies follow the committed snapshot, and latest/ the newest date's: refreshed after a
    # commit, and finished here when an earlier attempt committed but was interrupted while copying.
    snapshot = manifest if write else existing
    if snapshot is not None:
        latest_doc = store.get_document(layout.latest(MANIFEST_NAME))
        unusable += _unusable(store, latest_doc)
        latest = latest_doc.body
        if latest is None and latest_doc.unusable:
            # latest/ has a snapshot, but its manifest is unusable: only the newest date may take it over,
            # so latest/ never moves back to an older date.
            newer = run.ds >= max(changes.snapshot_dates(store), default=run.ds)
        else:
            newer = latest is None or str(latest.get("ds", "")) < run.ds
        identity = ("dag_run_id", "csv_sha256", "commit_id")
        stale = (
            latest is not None
            and str(latest.get("ds", "")) == run.ds
            and [latest.get(k) for k in identity] != [snapshot.get(k) for k in identity]
        )
        if write or newer or stale or _unfinished(store, snapshot):
            _publish(store, snapshot, latest=newer or stale)
            latest_updated = newer or stale

    current = manifest if write else (existing or manifest)
    gaps = coverage.summarise(current.get("coverage", []), settings.denied_regions_fail_coverage)["gaps"]
    return {
        "ds": run.ds,
        "dag_run_id": run.run_id,
        "written": write,
        "decision_reason": reason,
        "csv_uri": store.uri(csv_key),
        "manifest_uri": store.uri(manifest_key),
        "latest_uri": store.uri(layout.latest(CSV_NAME)),
        "latest_updated": latest_updated,
        "row_count": current.get("row_count", 0),
        "accounts_expected": current.get("accounts_expected", len(accounts)),
        "accounts_covered": current.get("accounts_covered", 0),
        "regions_scanned": current.get("regions_scanned", 0),
        "regions_disabled": current.get("regions_disabled", 0),
        "run_complete": manifest["complete"] if not skip_reason else is_complete(current),
        "snapshot_complete": is_complete(current),
        "subset": subset,  # this run's, whether or not it was written
        "accounts_requested": manifest["accounts_requested"],
        "gap_count": len(gaps),
        "gaps": gaps[:MAX_GAPS_IN_XCOM],
        "changes": current.get("changes"),
        "parquet_uri": store.uri(layout.snapshot(run.ds, PARQUET_NAME)) if current.get("parquet") else None,
        "unusable": unusable,
    }


def notify_cmdb(settings: Settings, summary: Mapping[str, Any]) -> dict[str, Any]:
    """
    Publish the summary to the CMDB team's topic (or log it when no topic is configured); return a small
    receipt (the XCom): where it went, its subject, its size and SNS's message id, never the text itself.
    """
    from include.cmdb_inventory import notify, preflight

    texts = preflight if summary.get("mode") == preflight.PREFLIGHT else notify
    text, title = texts.message(summary), texts.subject(summary)
    receipt: dict[str, Any] = {
        "topic_arn": settings.sns_topic_arn,
        "subject": title,
        "message_bytes": len(text.encode("utf-8")),
        "message_id": None,
    }
    if not settings.sns_topic_arn:
        log.info("No sns_topic_arn configured; the notification would be:\n%s", text)
        return receipt
    from airflow.providers.amazon.aws.hooks.sns import SnsHook

    hook = SnsHook(aws_conn_id=settings.aws_conn_id, region_name=settings.hub_region)
    receipt["message_id"] = hook.publish_to_target(
        target_arn=settings.sns_topic_arn, message=text, subject=title
    )
    log.info("Notified %s:\n%s", settings.sns_topic_arn, text)
    return receipt


def check_coverage(summary: Mapping[str, Any]) -> None:
    """Fail when the date's snapshot does not cover every expected account and enabled region."""
    if summary.get("snapshot_complete"):
        log.info("Coverage complete: %s", summary["csv_uri"])
        return
    gaps = summary.get("gaps") or []
    listed = "; ".join(
        f"{g['account']}{' ' + g['region'] if g.get('region') else ''} {g['status']}" for g in gaps[:20]
    )
    raise CoverageError(
        f"coverage is short for {summary['ds']}: {summary['accounts_covered']} of "
        f"{summary['accounts_expected']} accounts covered, "
        f"{summary.get('gap_count', len(gaps))} gaps: {listed}"
    )
