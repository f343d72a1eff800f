"""The coverage ledger's arithmetic: which statuses are gaps or transient, and the summary of a ledger."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from include.cmdb_inventory.contract import ERROR, OK, REGION_DENIED, REGION_DISABLED, THROTTLED


def is_gap(status: str, denied_is_gap: bool = True) -> bool:
    """Whether an entry with this status makes coverage short."""
    if status in (OK, REGION_DISABLED):
        return False
    if status == REGION_DENIED:
        return denied_is_gap
    return True


def is_transient(status: str) -> bool:
    """Errors worth a task retry (Airflow's): throttling that outlasted botocore, unknown errors."""
    return status in (THROTTLED, ERROR)


def summarise(entries: Iterable[Mapping[str, Any]], denied_is_gap: bool = True) -> dict[str, Any]:
    """Totals of a coverage ledger: accounts covered, regions scanned, gaps."""
    entries = list(entries)
    accounts = sorted({e["account"] for e in entries})
    failed_accounts = sorted(
        {e["account"] for e in entries if is_gap(e["status"], denied_is_gap) and e["region"] is None}
    )
    gaps = [e for e in entries if is_gap(e["status"], denied_is_gap)]
    gap_accounts = sorted({e["account"] for e in gaps})
    return {
        "accounts_expected": len(accounts),
        "accounts_covered": len(accounts) - len(gap_accounts),
        "accounts_failed": failed_accounts,
        "regions_scanned": sum(1 for e in entries if e["status"] == OK),
        "regions_disabled": sum(1 for e in entries if e["status"] == REGION_DISABLED),
        "instances": sum(int(e.get("instances") or 0) for e in entries),
        "gaps": gaps,
        "complete": not gaps,
    }
