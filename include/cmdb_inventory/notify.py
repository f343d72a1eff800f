"""
The one way this project publishes to SNS (:func:`publish`), and the text of the CMDB team's notification
and of failure alerts.

Every value shown is cleaned and cut (:func:`~include.cmdb_inventory.text.clean`: tag authors choose names
and tag values), every line is bounded, and the whole notification stays within
:data:`~include.cmdb_inventory.text.MAX_MESSAGE_BYTES` (below SNS's limit): what does not fit is counted
on a line pointing at ``changes.csv`` or the manifest, which hold everything.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TypedDict

from include.cmdb_inventory import guard
from include.cmdb_inventory.contract import APPROVAL_TASK_ID, GUARD_APPROVED
from include.cmdb_inventory.text import (
    ELLIPSIS,
    MAX_LINE_CHARS,
    MAX_MESSAGE_BYTES,
    MAX_TEXT_CHARS,
    SNS_SUBJECT_LIMIT,
    clean,
    cut_published,
    line_cost,
    published_size,
    utf8_size,
)

if TYPE_CHECKING:
    from include.cmdb_inventory.config import Settings
    from include.cmdb_inventory.contract import RunSummary

log = logging.getLogger(__name__)

MAX_GAPS_LISTED = 50
SNS_SUBJECT_MAX = SNS_SUBJECT_LIMIT  # a subject is shorter than this (characters)


class Receipt(TypedDict):
    """What was published (a notification's XCom): where, its subject, its size, SNS's id; never the text."""

    topic_arn: str | None
    subject: str
    message_bytes: int
    message_id: str | None  # None when nothing was published (no topic configured)


def publish(
    topic_arn: str, subject: str, message: str, *, aws_conn_id: str, region_name: str | None = None
) -> Receipt:
    """
    Publish one message to an SNS topic through the Amazon provider's ``SnsHook.publish_to_target``: the
    one path of every notification and alert, so each keeps SNS's limits (``text``): a subject shorter
    than ``SNS_SUBJECT_LIMIT`` without control characters, a message within ``MAX_MESSAGE_BYTES`` as SNS
    counts it. Errors propagate; the caller decides whether one may.

    :param topic_arn: a standard topic's ARN (the messages carry no ``MessageGroupId``)
    :param aws_conn_id: the Airflow connection of the publishing identity
    :param region_name: the topic's region; None: the connection's
    """
    from airflow.providers.amazon.aws.hooks.sns import SnsHook

    subject = clean(subject, SNS_SUBJECT_LIMIT - 1)
    message = cut_published(message, MAX_MESSAGE_BYTES)
    hook = SnsHook(aws_conn_id=aws_conn_id, region_name=region_name)
    response = hook.publish_to_target(target_arn=topic_arn, message=message, subject=subject)
    message_id = response.get("MessageId") if isinstance(response, Mapping) else None
    return {
        "topic_arn": topic_arn,
        "subject": subject,
        "message_bytes": utf8_size(message),
        "message_id": None if message_id is None else str(message_id),
    }


def send(settings: Settings, subject: str, message: str) -> Receipt:
    """Publish to the configured ``sns_topic_arn`` on the hub connection, or log the text without one."""
    if not settings.sns_topic_arn:
        log.info("No sns_topic_arn configured; the notification would be:\n%s", message)
        return {
            "topic_arn": None,
            "subject": subject,
            "message_bytes": utf8_size(message),
            "message_id": None,
        }
    receipt = publish(
        settings.sns_topic_arn,
        subject,
        message,
        aws_conn_id=settings.aws_conn_id,
        region_name=settings.hub_region,
    )
    log.info("Notified %s:\n%s", settings.sns_topic_arn, message)
    return receipt


class _Listing(NamedTuple):
    """
    A part of the message: its title lines, the items it lists (as many as fit), and ``more``, the line
    for what is not listed given how many items are (None when nothing is left out). Parts with a lower
    ``rank`` get the room first.
    """

    title: list[str]
    items: list[str]
    more: Callable[[int], str | None]
    rank: int


def _number(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _gap_line(gap: Mapping[str, Any]) -> str:
    where = clean(gap["account"]) + (f" {clean(gap['region'])}" if gap.get("region") else "")
    name = f" ({clean(gap['account_name'])})" if gap.get("account_name") else ""
    error = gap.get("error") or {}
    reason = f"{clean(error.get('code'))}: {clean(error.get('message'), MAX_TEXT_CHARS)}".strip(": ")
    return f"  - {where}{name}: {clean(gap['status'])}" + (f" - {reason}" if reason else "")


def _change_line(change: Mapping[str, Any]) -> str:
    where = f"{clean(change['account'])} {clean(change['region'])} {clean(change['instance_id'])}"
    name = f" ({clean(change['name'])})" if change.get("name") else ""
    line = f"  {clean(change['change']):<8} {where}{name}"
    if change.get("field"):
        old = clean(change.get("old_value")) or "(empty)"
        new = clean(change.get("new_value")) or "(empty)"
        line += f" {clean(change['field'])}: {old} -> {new}"
    if change.get("reason"):
        line += f" [{clean(change['reason'], MAX_TEXT_CHARS)}]"
    return line


def _change_parts(changes: Mapping[str, Any] | None) -> list[_Listing]:
    """Counts and the first changes since the previous complete snapshot (changes.csv has them all)."""
    if not changes:
        return []
    uri = clean(changes.get("uri"), MAX_TEXT_CHARS)
    if changes.get("status") != "COMPARED":
        detail = clean(changes.get("detail"), MAX_TEXT_CHARS)
        return [_Listing(["", f"Changes:  none listed: {detail}", f"          {uri}"], [], lambda _: None, 1)]
    added, removed = _number(changes.get("added")), _number(changes.get("removed"))
    not_verified = _number(changes.get("not_verified"))
    listable = added + removed + _number(changes.get("changed_fields", changes.get("changed")))
    title = [
        "",
        f"Changes since {clean(changes.get('previous_ds'))}: {added} added, {removed} removed, "
        f"{_number(changes.get('changed'))} changed, {not_verified} not verified",
        f"          {uri}",
    ]
    top = [_change_line(c) for c in changes.get("top") or []]

    def more_changes(listed: int) -> str | None:
        left = listable - listed
        return f"  {ELLIPSIS} {left} more changes in {uri}" if left > 0 else None

    groups = (changes.get("not_verified_groups") or [])[:MAX_GAPS_LISTED]
    group_lines = [
        f"  NOT_VERIFIED {_number(g.get('instances'))} instance(s), not counted as removed: "
        f"{clean(g.get('reason'), MAX_TEXT_CHARS)}"
        for g in groups
    ]

    def more_not_verified(listed: int) -> str | None:
        left = not_verified - sum(_number(g.get("instances")) for g in groups[:listed])
        return f"  {ELLIPSIS} {left} more not verified in {uri}" if left > 0 else None

    return [_Listing(title, top, more_changes, 1), _Listing([], group_lines, more_not_verified, 2)]


def _fit(head: Sequence[str], parts: Sequence[_Listing]) -> str:
    """
    ``head``, then each part's title, as many of its items as fit and its line for the rest, within
    :data:`MAX_MESSAGE_BYTES`. The head and titles always; then items by rank (the gaps first: they are the
    notification's contract).
    """
    head = [clean(line, MAX_LINE_CHARS) for line in head]
    parts = [
        p._replace(
            title=[clean(t, MAX_LINE_CHARS) for t in p.title],
            items=[clean(i, MAX_LINE_CHARS) for i in p.items],
        )
        for p in parts
    ]
    # Sizes as SNS counts them (published_size: the provider's JSON); a message of no lines costs the
    # envelope. A part's "more" line is widest when nothing is listed.
    room = MAX_MESSAGE_BYTES - published_size("") + line_cost("")
    room -= sum(line_cost(line) for line in head)
    room -= sum(line_cost(line) for p in parts for line in [*p.title, p.more(0) or ""])
    listed = [0] * len(parts)
    for index in sorted(range(len(parts)), key=lambda i: parts[i].rank):
        for item in parts[index].items:
            if line_cost(item) > room:
                break
            room -= line_cost(item)
            listed[index] += 1
    lines = list(head)
    for part, count in zip(parts, listed, strict=True):
        more = part.more(count)
        lines += [*part.title, *part.items[:count], *([clean(more, MAX_LINE_CHARS)] if more else [])]
    # A backstop only: the head and titles are made of cut values and fit with room to spare.
    return cut_published("\n".join(lines), MAX_MESSAGE_BYTES)


def subject(summary: RunSummary) -> str:
    """A short subject line: shorter than SNS allows (``SNS_SUBJECT_MAX``), no control characters."""
    state = "complete" if summary.get("snapshot_complete") else "INCOMPLETE"
    if guard.is_held(summary):
        state = "HELD for approval"
    text = f"EC2 inventory {clean(summary['ds'])}: {clean(summary['row_count'])} instances, {state}"
    return clean(text, SNS_SUBJECT_MAX - 1)


class Prompt(NamedTuple):
    """How a person decides on a held snapshot: the approval's page, whether anyone is asked, its timeout."""

    url: str | None = None
    asked: bool = True  # False under airflow dags test, which nobody can answer
    timeout_hours: float | None = None


def guard_lines(summary: Mapping[str, Any], prompt: Prompt | None = None) -> list[str]:
    """What the mass-removal guard holds and why, and where a person decides (none when nothing is held)."""
    if not guard.is_held(summary):
        return []
    held = summary["removal_guard"]
    if not summary.get("written"):
        # The date's snapshot is another run's: that run's approval decides, not this one's.
        return [
            "",
            "HELD:     the date's snapshot waits for a person to approve it in the run that wrote it "
            f"(task {APPROVAL_TASK_ID}); this run wrote nothing. latest/ shows the previous snapshot.",
            f"Because:  {clean(held.get('reason'), MAX_TEXT_CHARS)}",
        ]
    prompt = prompt or Prompt()
    head = [
        "",
        "HELD:     latest/ and the snapshot Asset event wait for a person to approve this snapshot.",
        f"Because:  {clean(held.get('reason'), MAX_TEXT_CHARS)}",
    ]
    if not prompt.asked:
        return [
            *head,
            "Decide:   nobody is asked under airflow dags test: the snapshot stays held and latest/ as it "
            "is; run the date under a scheduler to approve or reject it.",
        ]
    run_id = clean(summary["dag_run_id"], MAX_TEXT_CHARS)
    where = (
        clean(prompt.url, MAX_TEXT_CHARS)
        if prompt.url
        else f"the Airflow UI: Browse > Required Actions, DAG run {run_id}, task {APPROVAL_TASK_ID}"
    )
    timeout = f" after {prompt.timeout_hours:g} hours" if prompt.timeout_hours else ""
    return [
        *head,
        f"Decide:   approve or reject it in {where}",
        "          Rejecting leaves latest/ as it is; the snapshot stays under its date "
        f"({clean(summary['csv_uri'], MAX_TEXT_CHARS)}). Without an answer it is rejected{timeout}.",
    ]


def message(summary: RunSummary, prompt: Prompt | None = None) -> str:
    """
    Where the CSV is, what it holds and covers, what the mass-removal guard holds (and where to decide),
    each gap with its reason and the first changes, as many as fit in :data:`MAX_MESSAGE_BYTES` (the rest
    counted, with where to find them).
    """
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
    if summary.get("subset"):
        requested = summary.get("accounts_requested") or []
        lines.append(f"Subset:   only the {len(requested)} account(s) its param names")
    if summary.get("written"):
        lines.append(f"Why:      {summary['decision_reason']}")
    if summary.get("latest_updated"):
        lines.append(f"Latest:   {summary['latest_uri']}")
    if summary.get("parquet_uri"):
        lines.append(f"Parquet:  {summary['parquet_uri']}")
    lines += guard_lines(summary, prompt)
    # A manifest the merge could not use (not JSON, not an object): the team learns which, and why.
    for document in (summary.get("unusable") or [])[:MAX_GAPS_LISTED]:
        uri, problem = clean(document.get("uri"), MAX_TEXT_CHARS), clean(document.get("problem"))
        lines.append(f"Unusable: {uri} ({problem}): treated as absent")
    parts = _change_parts(summary.get("changes"))
    gaps = summary.get("gaps") or []
    if gaps:
        gap_count = _number(summary.get("gap_count", len(gaps)))
        manifest_uri = clean(summary["manifest_uri"], MAX_TEXT_CHARS)

        def more_gaps(listed: int) -> str | None:
            left = gap_count - listed
            return f"  {ELLIPSIS} {left} more not covered: see {manifest_uri}" if left > 0 else None

        items = [_gap_line(g) for g in gaps[:MAX_GAPS_LISTED]]
        parts.append(_Listing(["", f"Not covered ({gap_count}):"], items, more_gaps, 0))
    return _fit(lines, parts)


def decision_subject(decision: Mapping[str, Any]) -> str:
    """The subject of the notification of a decision on a held snapshot."""
    return clean(f"EC2 inventory {clean(decision['ds'])}: removals {decision['state']}", SNS_SUBJECT_MAX - 1)


def decision_message(decision: Mapping[str, Any]) -> str:
    """What was decided on a snapshot the mass-removal guard held, by whom, and what latest/ shows now."""
    ds, run_id = clean(decision["ds"]), clean(decision["dag_run_id"], MAX_TEXT_CHARS)
    if decision.get("latest_updated"):
        latest = f"latest/ is now this snapshot: {clean(decision['latest_uri'], MAX_TEXT_CHARS)}"
    elif decision["state"] == GUARD_APPROVED:
        latest = "latest/ did not move: a newer date is already there"
    else:
        latest = "latest/ did not move; this snapshot stays under its date and is never compared with"
    return "\n".join(
        [
            f"The snapshot of {ds} (run {run_id}) was held by the mass-removal guard.",
            f"Decision: {clean(decision['state'])} by {clean(decision['decided_by'])}.",
            latest,
            f"Snapshot: {clean(decision['csv_uri'], MAX_TEXT_CHARS)}",
            f"Manifest: {clean(decision['manifest_uri'], MAX_TEXT_CHARS)}",
        ]
    )


def failure_message(
    task: str, account: str, run_id: str, try_number: int, error: str, dag_id: str = "cmdb_ec2_inventory"
) -> str:
    """A task failure alert naming the DAG, the task and the account (each value cleaned and cut)."""
    task, account, run_id = clean(task), clean(account, MAX_TEXT_CHARS), clean(run_id, MAX_TEXT_CHARS)
    where = f"{task} for account {account}" if account else task
    return (
        f"{clean(dag_id)}: {where} failed (run {run_id}, try {try_number}).\n"
        f"Error: {clean(error, MAX_TEXT_CHARS)}\n"
        "Other accounts are not affected; the run's manifest lists every gap."
    )
