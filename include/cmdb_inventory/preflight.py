"""
Preflight for onboarding (the DAG ``cmdb_ec2_inventory_preflight``): for every expected account, can the
role be assumed, which regions are enabled, and which of them allow ``DescribeInstances`` — without
scanning inventories or writing a snapshot. The report goes to the run's staging prefix.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

from include.cmdb_inventory import contract, coverage, notify
from include.cmdb_inventory.aws import errors
from include.cmdb_inventory.aws.hooks import RoleNotAssumableError
from include.cmdb_inventory.config import Account, Settings
from include.cmdb_inventory.regions import plan_regions
from include.cmdb_inventory.run import RunInfo, hook_for, now_utc
from include.cmdb_inventory.text import (
    MAX_MESSAGE_BYTES,
    MAX_TEXT_CHARS,
    SNS_SUBJECT_LIMIT,
    clean,
    cut_published,
)

if TYPE_CHECKING:
    from include.cmdb_inventory.aws.hooks import CrossAccountHook
    from include.cmdb_inventory.notify import Receipt
    from include.cmdb_inventory.storage import SnapshotStore

log = logging.getLogger(__name__)

INVENTORY = "inventory"
PREFLIGHT = "preflight"
MODES = (INVENTORY, PREFLIGHT)
REPORT_NAME = "preflight.json"
PROBE_MAX_RESULTS = 5  # the smallest page DescribeInstances accepts: one cheap call per region
MAX_NOT_READY_IN_XCOM = 100
MAX_NOT_READY_LISTED = 50


class NotReadyError(RuntimeError):
    """At least one expected account is not ready to be scanned."""


class NotReady(TypedDict):
    """An account that is not ready, and why (one reason per failure)."""

    account: str
    account_name: str
    status: str
    reasons: list[str]


class PreflightSummary(TypedDict):
    """``write_report``'s XCom, what the preflight's notification and check read."""

    mode: str  # PREFLIGHT
    ds: str
    dag_run_id: str
    written: bool  # always False: a preflight writes no snapshot
    report_uri: str
    accounts_expected: int
    accounts_ready: int
    ready: bool
    not_ready_count: int
    not_ready: list[NotReady]  # the first MAX_NOT_READY_IN_XCOM
    accounts_not_scanned: int
    deprecation: NotRequired[str]  # a run of the inventory DAG with mode=preflight: what to use instead


def status_key(store: SnapshotStore, run: RunInfo, account_id: str) -> str:
    """One account's preflight result, under the run's staging prefix."""
    return f"{store.layout.staging(run.ds, run.run_id)}/preflight/{account_id}.json"


def report_key(store: SnapshotStore, run: RunInfo) -> str:
    """The run's preflight report, under the run's staging prefix."""
    return f"{store.layout.staging(run.ds, run.run_id)}/{REPORT_NAME}"


def probe_region(hook: CrossAccountHook, region: str) -> dict[str, Any]:
    """One ``DescribeInstances`` (MaxResults=5) in ``region``: OK, or the status its error maps to."""
    try:
        hook.client("ec2", region).describe_instances(MaxResults=PROBE_MAX_RESULTS)
    except Exception as err:
        error = errors.error_of(err)
        return {"region": region, "status": errors.region_status_of(error["code"]), "error": error}
    return {"region": region, "status": contract.OK}


def probe_account(
    hook: CrossAccountHook,
    account: Account,
    *,
    regions: tuple[str, ...] = (),
    exclude_regions: tuple[str, ...] = (),
    threads: int = 8,
    denied_is_gap: bool = True,
) -> dict[str, Any]:
    """
    Assume the role, plan the regions (``DescribeRegions``, then the configured filters) and probe each
    enabled region once. Never raises for AWS errors: they are the answer.
    """
    doc: dict[str, Any] = {"account": account.id, "account_name": account.name, "regions": []}
    try:
        doc["role_arn"] = hook.assume()
    except RoleNotAssumableError as err:
        return {
            **doc,
            "role_arn": err.role_arn,
            "status": contract.ROLE_NOT_ASSUMABLE,
            "error": errors.error_of(err),
        }
    except Exception as err:
        error = errors.error_of(err)
        return {**doc, "status": errors.region_status_of(error["code"]), "error": error}
    try:
        plan = plan_regions(hook.client("ec2", hook.hub_region), hook.partition, regions, exclude_regions)
    except Exception as err:
        error = errors.error_of(err)
        return {**doc, "status": errors.region_status_of(error["code"]), "error": error}
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(plan.scan) or 1))) as pool:
        probed = list(pool.map(lambda region: probe_region(hook, region), plan.scan))
    entries = sorted([*plan.skipped, *probed], key=lambda e: e["region"])
    gaps = [e for e in entries if coverage.is_gap(e["status"], denied_is_gap)]
    return {
        **doc,
        "status": contract.OK if not gaps else gaps[0]["status"],
        "regions": entries,
        "regions_source": plan.source,
        "note": plan.note,
        "regions_enabled": sorted(e["region"] for e in entries if e["status"] != contract.REGION_DISABLED),
        "regions_allowed": sorted(e["region"] for e in entries if e["status"] == contract.OK),
    }


def reasons_of(doc: Mapping[str, Any], denied_is_gap: bool = True) -> list[str]:
    """Why an account is not ready, one line per failure (empty when it is ready)."""
    if doc.get("error") and not doc.get("regions"):
        error = doc["error"]
        what = f"cannot assume {doc.get('role_arn')}" if doc["status"] == contract.ROLE_NOT_ASSUMABLE else ""
        return [f"{doc['status']}: {what + ': ' if what else ''}{error.get('code')}: {error.get('message')}"]
    return [
        f"{e['region']} {e['status']}: {e.get('error', {}).get('code')}: {e.get('error', {}).get('message')}"
        for e in doc.get("regions") or []
        if coverage.is_gap(e["status"], denied_is_gap)
    ]


def check_account(
    settings: Settings,
    run: RunInfo,
    account: Account,
    store: SnapshotStore,
    *,
    hook: CrossAccountHook | None = None,  # tests pass one; the DAG's task builds the account's own
) -> dict[str, Any]:
    """The preflight DAG's ``check_account``: probe one account, write its result, return a small summary."""
    doc = probe_account(
        hook or hook_for(settings, account, run),
        account,
        regions=settings.regions,
        exclude_regions=settings.exclude_regions,
        threads=settings.region_threads,
        denied_is_gap=settings.denied_regions_fail_coverage,
    )
    reasons = reasons_of(doc, settings.denied_regions_fail_coverage)
    doc.update(ready=not reasons, reasons=reasons, checked_at=now_utc(), dag_run_id=run.run_id)
    store.put_json(status_key(store, run, account.id), doc)
    if reasons:
        log.error("Account %s is NOT ready: %s", account.label, "; ".join(reasons))
    else:
        log.info(
            "Account %s is ready: role %s, %d regions allowed (%s)",
            account.label,
            doc.get("role_arn"),
            len(doc.get("regions_allowed", [])),
            ", ".join(doc.get("regions_allowed", [])),
        )
    return {"account": account.id, "ready": not reasons, "status": doc["status"]}


def write_report(
    settings: Settings,
    run: RunInfo,
    store: SnapshotStore,
    expected: Sequence[Mapping[str, Any]],
    plan: Mapping[str, Any] | None = None,
) -> PreflightSummary:
    """
    The preflight DAG's ``write_report``: collect every account's result into the report (staging prefix
    only: no CSV, manifest or ``latest/``) and return the summary for notify and check.
    """
    plan = plan or {}
    accounts = sorted((Account.from_dict(a) for a in expected), key=lambda a: a.id)
    results: list[dict[str, Any]] = []
    for account in accounts:
        doc = store.get_json(status_key(store, run, account.id))
        if doc is None:
            reason = "the account's task ended without reporting (killed, timed out, or never ran)"
            doc = {
                "account": account.id,
                "account_name": account.name,
                "status": contract.TASK_FAILED,
                "ready": False,
                "reasons": [f"{contract.TASK_FAILED}: {reason}"],
                "error": {"code": "NoStatus", "message": reason},
            }
        results.append(doc)
    not_ready: list[NotReady] = [
        {
            "account": d["account"],
            "account_name": d.get("account_name", ""),
            "status": d["status"],
            "reasons": d.get("reasons", []),
        }
        for d in results
        if not d.get("ready")
    ]
    key = report_key(store, run)
    report = {
        "mode": PREFLIGHT,
        "dag_id": run.dag_id,
        "dag_run_id": run.run_id,
        "ds": run.ds,
        "checked_at": now_utc(),
        "role_name": settings.role_name,
        "accounts_source": plan.get("accounts_source", "accounts"),
        "accounts_expected": len(results),
        "accounts_ready": len(results) - len(not_ready),
        "ready": bool(results) and not not_ready,
        "accounts": results,
        "not_ready": not_ready,
        "accounts_not_scanned": list(plan.get("not_scanned") or []),
    }
    store.put_json(key, report)
    for item in not_ready:
        log.error("NOT READY %s (%s): %s", item["account"], item["account_name"], "; ".join(item["reasons"]))
    log.info(
        "Preflight: %d of %d accounts ready; report %s",
        report["accounts_ready"],
        len(results),
        store.uri(key),
    )
    return {
        "mode": PREFLIGHT,
        "ds": run.ds,
        "dag_run_id": run.run_id,
        "written": False,
        "report_uri": store.uri(key),
        "accounts_expected": report["accounts_expected"],
        "accounts_ready": report["accounts_ready"],
        "ready": report["ready"],
        "not_ready_count": len(not_ready),
        "not_ready": not_ready[:MAX_NOT_READY_IN_XCOM],
        "accounts_not_scanned": len(report["accounts_not_scanned"]),
    }


def subject(summary: PreflightSummary) -> str:
    """SNS subject (at most 100 characters)."""
    state = "all ready" if summary.get("ready") else f"{summary.get('not_ready_count', 0)} NOT READY"
    text = f"EC2 inventory preflight {summary['ds']}: {summary['accounts_expected']} accounts, {state}"
    return clean(text, SNS_SUBJECT_LIMIT - 1)


def message(summary: PreflightSummary) -> str:
    """The preflight notification: the report's URI, the counts, each account not ready and why."""
    lines = [
        f"EC2 inventory PREFLIGHT for {summary['ds']} (run {summary['dag_run_id']}): nothing was scanned "
        "or written except this report.",
        *([f"DEPRECATED: {summary['deprecation']}"] if summary.get("deprecation") else []),
        "",
        f"Report:   {summary['report_uri']}",
        f"Accounts: {summary['accounts_ready']} of {summary['accounts_expected']} ready",
    ]
    if summary.get("accounts_not_scanned"):
        lines.append(f"Skipped:  {summary['accounts_not_scanned']} accounts not scanned (see the report)")
    not_ready = summary.get("not_ready") or []
    if not_ready:
        lines += ["", f"Not ready ({summary.get('not_ready_count', len(not_ready))}):"]
        for item in not_ready[:MAX_NOT_READY_LISTED]:
            name = f" ({clean(item['account_name'])})" if item.get("account_name") else ""
            lines.append(f"  - {clean(item['account'])}{name}: {clean(item['status'])}")
            lines += [f"      {clean(reason, MAX_TEXT_CHARS)}" for reason in item.get("reasons", [])[:10]]
        if summary.get("not_ready_count", len(not_ready)) > MAX_NOT_READY_LISTED:
            lines.append(f"  ... and more: see {summary['report_uri']}")
    # Account names and AWS error texts are bounded above; the cap holds for any number of accounts.
    return cut_published("\n".join(lines), MAX_MESSAGE_BYTES)


def notify_readiness(settings: Settings, summary: PreflightSummary) -> Receipt:
    """Publish the preflight's summary to the CMDB team's topic (or log it without one): its receipt."""
    return notify.send(settings, subject(summary), message(summary))


def check_ready(summary: PreflightSummary) -> None:
    """The preflight DAG's ``check_ready``: fail when any expected account is not ready."""
    if summary.get("ready"):
        log.info("Preflight: every expected account is ready (%s)", summary["report_uri"])
        return
    listed = "; ".join(f"{n['account']} {n['status']}" for n in (summary.get("not_ready") or [])[:20])
    raise NotReadyError(
        f"preflight for {summary['ds']}: {summary.get('not_ready_count', 0)} of "
        f"{summary['accounts_expected']} accounts not ready: {listed or 'no account checked'}; "
        f"see {summary['report_uri']}"
    )
