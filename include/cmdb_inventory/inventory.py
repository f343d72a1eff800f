"""The DAG's steps, each callable without Airflow's scheduler: resolve, scan, merge, notify, check."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from include.cmdb_inventory import coverage
from include.cmdb_inventory.config import Account, Settings
from include.cmdb_inventory.records import COLUMNS, SCHEMA_VERSION, iso_utc
from include.cmdb_inventory.storage import (
    CSV_NAME,
    MANIFEST_NAME,
    SnapshotStore,
    decide_write,
    snapshot_rank,
    spool,
)

if TYPE_CHECKING:
    from cmdb_inventory_aws.hooks import CrossAccountHook

log = logging.getLogger(__name__)

MAX_GAPS_IN_XCOM = 100


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


def now_utc() -> str:
    """Collection time, ISO-8601 UTC."""
    return iso_utc(datetime.now(tz=UTC))


def store_for(settings: Settings) -> SnapshotStore:
    """The S3 store, through the provider's S3 hook (so connection extras apply)."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    client = S3Hook(aws_conn_id=settings.aws_conn_id, region_name=settings.hub_region).get_conn()
    return SnapshotStore(
        client,
        settings.bucket,
        settings.prefix,
        kms_key_id=settings.kms_key_id,
        expected_bucket_owner=settings.expected_bucket_owner,
    )


def hook_for(settings: Settings, account: Account, run: RunInfo) -> CrossAccountHook:
    """The cross-account hook of one account, with a session name that traces back to the run."""
    from cmdb_inventory_aws.hooks import CrossAccountHook, role_session_name

    return CrossAccountHook(
        account_id=account.id,
        role_name=settings.role_name,
        session_name=role_session_name("cmdb", run.run_id),
        external_id=settings.external_id,
        duration_seconds=settings.session_duration_seconds,
        max_attempts=settings.max_attempts,
        max_pool_connections=max(10, settings.region_threads),
        aws_conn_id=settings.aws_conn_id,
        region_name=settings.hub_region,
    )


def resolve_accounts(
    settings: Settings, run: RunInfo, store: SnapshotStore, overwrite: bool
) -> dict[str, Any]:
    """
    The accounts to map over. When the date already has a complete snapshot and the run does not ask to
    overwrite it, nothing is scanned (the list is empty) and the reason is returned.
    """
    store.check_bucket()
    accounts = [a.to_dict() for a in settings.accounts]
    existing = store.get_json(store.layout.snapshot(run.ds, MANIFEST_NAME))
    if existing and existing.get("complete") and not overwrite:
        reason = (
            f"a complete snapshot for {run.ds} already exists (run {existing.get('dag_run_id')}); "
            "not scanning. Trigger with overwrite=true to replace it"
        )
        log.warning("%s", reason)
        return {"accounts": [], "expected": accounts, "skip_reason": reason}
    log.info("Resolved %d accounts for %s", len(accounts), run.ds)
    return {"accounts": accounts, "expected": accounts, "skip_reason": None}


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
        error = coverage.error_of(err)
        status = coverage.region_status_of(error["code"])
        status = status if status == coverage.THROTTLED else coverage.ERROR
        store.put_json(status_key, _status_doc(run, account, status=status, error=error))
        raise TransientScanError(f"account {account.label}: {error['code']}: {error['message']}") from None

    if result.status == coverage.ROLE_NOT_ASSUMABLE:
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
        status=coverage.OK,
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


def _ledger(statuses: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One coverage entry per account and region (or per account when it failed before regions)."""
    entries: list[dict[str, Any]] = []
    for doc in statuses:
        base = {"account": doc["account"], "account_name": doc.get("account_name", "")}
        if doc["status"] != coverage.OK or not doc.get("regions"):
            if doc["status"] == coverage.OK:
                entries.append({**base, "region": None, "status": coverage.OK, "instances": 0})
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


def merge_inventory(
    settings: Settings,
    run: RunInfo,
    store: SnapshotStore,
    expected: Sequence[Mapping[str, Any]],
    *,
    overwrite: bool = False,
    skip_reason: str | None = None,
) -> dict[str, Any]:
    """
    Stream every reported part into the CSV, write the manifest with the whole ledger, then ``latest/``.

    A date's snapshot is only replaced by a better one (or when the run asks to overwrite it); a failed
    upload leaves the previous snapshot and ``latest/`` as they were.
    """
    layout = store.layout
    staging = layout.staging(run.ds, run.run_id)
    csv_key, manifest_key = layout.snapshot(run.ds, CSV_NAME), layout.snapshot(run.ds, MANIFEST_NAME)
    accounts = sorted((Account.from_dict(a) for a in expected), key=lambda a: a.id)
    existing = store.get_json(manifest_key)

    statuses: list[dict[str, Any]] = []
    if not skip_reason:
        for account in accounts:
            doc = store.get_json(layout.status(staging, account.id))
            if doc is None:
                doc = _status_doc(
                    run,
                    account,
                    status=coverage.TASK_FAILED,
                    error={
                        "code": "NoStatus",
                        "message": "the account's task ended without reporting a status "
                        "(killed, timed out, or never ran)",
                    },
                )
            statuses.append(doc)
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
        "complete": totals["complete"] and bool(statuses),
        "accounts_expected": len(accounts),
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
    }

    if skip_reason:
        write, reason = False, skip_reason
    else:
        store.put_json(f"{staging}/{MANIFEST_NAME}", manifest)
        write, reason = decide_write(existing, snapshot_rank(manifest), overwrite)

    latest_updated = False
    if write:
        with spool() as csv_file:
            sha256 = store.merge_parts(parts, csv_file)
            manifest["csv_sha256"] = sha256
            metadata = {"dag-run-id": run.run_id[:200], "sha256": sha256, "rows": str(row_count)}
            store.upload_csv(csv_file, csv_key, metadata)
        store.put_json(manifest_key, manifest)
        latest = store.get_json(layout.latest(MANIFEST_NAME))
        if latest is None or str(latest.get("ds", "")) <= run.ds:
            store.copy(csv_key, layout.latest(CSV_NAME))
            store.put_json(layout.latest(MANIFEST_NAME), manifest)
            latest_updated = True
        log.info("Wrote %s (%d rows): %s", store.uri(csv_key), row_count, reason)
    else:
        log.warning("Did not write %s: %s", store.uri(csv_key), reason)

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
        "run_complete": manifest["complete"] if not skip_reason else bool(current.get("complete")),
        "snapshot_complete": bool(current.get("complete")),
        "gap_count": len(gaps),
        "gaps": gaps[:MAX_GAPS_IN_XCOM],
    }


def notify_cmdb(settings: Settings, summary: Mapping[str, Any]) -> str:
    """Publish the summary to the CMDB team's topic (or log it when no topic is configured)."""
    from include.cmdb_inventory.notify import message, subject

    text, title = message(summary), subject(summary)
    if not settings.sns_topic_arn:
        log.info("No sns_topic_arn configured; the notification would be:\n%s", text)
        return text
    from airflow.providers.amazon.aws.hooks.sns import SnsHook

    hook = SnsHook(aws_conn_id=settings.aws_conn_id, region_name=settings.hub_region)
    hook.publish_to_target(target_arn=settings.sns_topic_arn, message=text, subject=title)
    log.info("Notified %s:\n%s", settings.sns_topic_arn, text)
    return text


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
