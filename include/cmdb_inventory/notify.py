"""The text of the CMDB team's notification and of failure alerts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MAX_GAPS_LISTED = 50
SNS_SUBJECT_MAX = 100


def _gap_line(gap: Mapping[str, Any]) -> str:
    where = gap["account"] + (f" {gap['region']}" if gap.get("region") else "")
    name = f" ({gap['account_name']})" if gap.get("account_name") else ""
    error = gap.get("error") or {}
    reason = f"{error.get('code', '')}: {error.get('message', '')}".strip(": ")
    return f"  - {where}{name}: {gap['status']}" + (f" - {reason}" if reason else "")


def _change_line(change: Mapping[str, Any]) -> str:
    where = f"{change['account']} {change['region']} {change['instance_id']}"
    name = f" ({change['name']})" if change.get("name") else ""
    line = f"  {change['change']:<8} {where}{name}"
    if change.get("field"):
        old, new = change.get("old_value") or "(empty)", change.get("new_value") or "(empty)"
        line += f" {change['field']}: {old} -> {new}"
    if change.get("reason"):
        line += f" [{change['reason']}]"
    return line


def _change_lines(changes: Mapping[str, Any] | None) -> list[str]:
    """Counts and the first changes since the previous complete snapshot (changes.csv has them all)."""
    if not changes:
        return []
    if changes.get("status") != "COMPARED":
        return ["", f"Changes:  none listed: {changes.get('detail', '')}", f"          {changes['uri']}"]
    lines = [
        "",
        f"Changes since {changes['previous_ds']}: {changes['added']} added, {changes['removed']} removed, "
        f"{changes['changed']} changed, {changes['not_verified']} not verified",
        f"          {changes['uri']}",
    ]
    top = changes.get("top") or []
    lines += [_change_line(c) for c in top]
    if len(top) < changes["added"] + changes["removed"] + changes.get("changed_fields", changes["changed"]):
        lines.append("  ... and more in changes.csv")
    groups = changes.get("not_verified_groups") or []
    for group in groups[:MAX_GAPS_LISTED]:
        count = group["instances"]
        lines.append(f"  NOT_VERIFIED {count} instance(s), not counted as removed: {group['reason']}")
    if changes["not_verified"] > sum(g["instances"] for g in groups[:MAX_GAPS_LISTED]):
        lines.append("  ... more not verified: see changes.csv")
    return lines


def subject(summary: Mapping[str, Any]) -> str:
    """A short subject line (SNS allows 100 characters)."""
    state = "complete" if summary.get("snapshot_complete") else "INCOMPLETE"
    text = f"EC2 inventory {summary['ds']}: {summary['row_count']} instances, {state}"
    return text[:SNS_SUBJECT_MAX]


def message(summary: Mapping[str, Any]) -> str:
    """Where the CSV is, what it holds and covers, and every gap with its reason."""
    lines = [f"EC2 inventory for {summary['ds']} (run {summary['dag_run_id']})", ""]
    if summary.get("written"):
        lines.append(f"CSV:      {summary['csv_uri']}")
    else:
        lines.append(f"CSV:      {summary['csv_uri']} (not rewritten by this run)")
        lines.append(f"Why:      {summary['decision_reason']}")
    lines += [
        f"Manifest: {summary['manifest_uri']}",
        f"Rows:     {summary['row_count']}",
        f"Accounts: {summary['accounts_covered']} of {summary['accounts_expected']} covered",
        f"Regions:  {summary['regions_scanned']} scanned, {summary.get('regions_disabled', 0)} not enabled",
        f"Complete: {'yes' if summary.get('run_complete') else 'no'}",
    ]
    if summary.get("written"):
        lines.append(f"Why:      {summary['decision_reason']}")
    if summary.get("latest_updated"):
        lines.append(f"Latest:   {summary['latest_uri']}")
    if summary.get("parquet_uri"):
        lines.append(f"Parquet:  {summary['parquet_uri']}")
    lines += _change_lines(summary.get("changes"))
    gaps = summary.get("gaps") or []
    if gaps:
        lines += ["", f"Not covered ({summary.get('gap_count', len(gaps))}):"]
        lines += [_gap_line(g) for g in gaps[:MAX_GAPS_LISTED]]
        if summary.get("gap_count", len(gaps)) > MAX_GAPS_LISTED:
            lines.append(f"  ... and more: see {summary['manifest_uri']}")
    return "\n".join(lines)


def failure_message(task: str, account: str, run_id: str, try_number: int, error: str) -> str:
    """A task failure alert naming the task and the account."""
    where = f"{task} for account {account}" if account else task
    return (
        f"cmdb_ec2_inventory: {where} failed (run {run_id}, try {try_number}).\n"
        f"Error: {error}\n"
        "Other accounts are not affected; the run's manifest lists every gap."
    )
