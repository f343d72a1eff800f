"""The CMDB team's notification and the failure alert name what the contract says they name."""

from __future__ import annotations

from typing import Any

import pytest

from include.cmdb_inventory.notify import (
    MAX_GAPS_LISTED,
    SNS_SUBJECT_MAX,
    failure_message,
    message,
    subject,
)

CSV_URI = "s3://cmdb-inventory-bucket/cmdb/ec2-inventory/ds=2024-03-01/ec2_inventory.csv"
MANIFEST_URI = "s3://cmdb-inventory-bucket/cmdb/ec2-inventory/ds=2024-03-01/manifest.json"
LATEST_URI = "s3://cmdb-inventory-bucket/cmdb/ec2-inventory/latest/ec2_inventory.csv"
RUN_ID = "scheduled__2024-03-01T00:00:00+00:00"


def gap(
    account: str, region: str | None, status: str, code: str | None = None, text: str = "", name: str = ""
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "account": account,
        "account_name": name,
        "region": region,
        "status": status,
        "instances": 0,
    }
    if code:
        entry["error"] = {"code": code, "message": text}
    return entry


def summary(**overrides: Any) -> dict[str, Any]:
    """A summary shaped like merge_inventory's return value."""
    base: dict[str, Any] = {
        "ds": "2024-03-01",
        "dag_run_id": RUN_ID,
        "written": True,
        "decision_reason": "no snapshot for this date yet",
        "csv_uri": CSV_URI,
        "manifest_uri": MANIFEST_URI,
        "latest_uri": LATEST_URI,
        "latest_updated": True,
        "row_count": 1234,
        "accounts_expected": 3,
        "accounts_covered": 3,
        "regions_scanned": 51,
        "regions_disabled": 6,
        "run_complete": True,
        "snapshot_complete": True,
        "gap_count": 0,
        "gaps": [],
    }
    base.update(overrides)
    if "gaps" in overrides and "gap_count" not in overrides:
        base["gap_count"] = len(overrides["gaps"])
    return base


GAPS = [
    gap(
        "222222222222",
        None,
        "ROLE_NOT_ASSUMABLE",
        "AccessDenied",
        "not authorized to perform sts:AssumeRole",
        name="payments-prod",
    ),
    gap("333333333333", "eu-central-2", "REGION_DENIED", "UnauthorizedOperation", "denied by SCP"),
    gap("333333333333", "ap-southeast-1", "THROTTLED", "RequestLimitExceeded", "Request limit exceeded."),
    gap(
        "444444444444", None, "TASK_FAILED", "NoStatus", "the account's task ended without reporting a status"
    ),
    gap("555555555555", "us-west-2", "ERROR"),
]


def test_complete_run_names_csv_rows_coverage_and_regions() -> None:
    text = message(summary())
    assert CSV_URI in text
    assert MANIFEST_URI in text
    assert "1234" in text
    assert "3 of 3 covered" in text
    assert "51 scanned" in text
    assert "6 not enabled" in text
    assert "Complete: yes" in text
    assert LATEST_URI in text
    assert "Not covered" not in text
    assert RUN_ID in text
    assert "2024-03-01" in text


def test_incomplete_run_lists_every_gap_with_status_and_error_code() -> None:
    text = message(
        summary(
            accounts_covered=1, accounts_expected=4, run_complete=False, snapshot_complete=False, gaps=GAPS
        )
    )
    assert "1 of 4 covered" in text
    assert "Complete: no" in text
    assert f"Not covered ({len(GAPS)})" in text
    lines = text.splitlines()
    for entry in GAPS:
        where = entry["account"] + (f" {entry['region']}" if entry["region"] else "")
        (line,) = [ln for ln in lines if ln.strip().startswith(f"- {where}")]
        assert entry["status"] in line
        if "error" in entry:
            assert entry["error"]["code"] in line
            assert entry["error"]["message"] in line
    assert "payments-prod" in text


def test_a_gap_without_error_still_shows_its_status() -> None:
    text = message(summary(gaps=[gap("555555555555", "us-west-2", "ERROR")]))
    assert "  - 555555555555 us-west-2: ERROR" in text.splitlines()


def test_a_gap_with_only_a_code() -> None:
    text = message(summary(gaps=[gap("555555555555", "us-west-2", "THROTTLED", "Throttling")]))
    assert "  - 555555555555 us-west-2: THROTTLED - Throttling" in text.splitlines()


def test_many_gaps_are_capped_and_point_to_the_manifest() -> None:
    gaps = [gap("666666666666", f"region-{n}", "ERROR", "InternalError") for n in range(MAX_GAPS_LISTED + 20)]
    text = message(summary(gaps=gaps, gap_count=len(gaps) + 30))
    assert f"Not covered ({len(gaps) + 30})" in text
    assert text.count("InternalError") == MAX_GAPS_LISTED
    left = len(gaps) + 30 - MAX_GAPS_LISTED
    assert f"  \u2026 {left} more not covered: see {MANIFEST_URI}" in text.splitlines()


def test_not_written_says_why() -> None:
    reason = (
        "a complete snapshot for this date already exists (run scheduled__x); trigger with overwrite=true"
    )
    text = message(summary(written=False, decision_reason=reason, latest_updated=False))
    assert "not rewritten by this run" in text
    assert reason in text
    assert CSV_URI in text
    assert LATEST_URI not in text


def test_written_names_the_reason_too() -> None:
    reason = "replaces a partial snapshot (run x) with a more complete one"
    assert reason in message(summary(decision_reason=reason))


@pytest.mark.parametrize(("complete", "state"), [(True, "complete"), (False, "INCOMPLETE")])
def test_subject(complete: bool, state: str) -> None:
    title = subject(summary(snapshot_complete=complete))
    assert title == f"EC2 inventory 2024-03-01: 1234 instances, {state}"
    assert len(title) <= SNS_SUBJECT_MAX


@pytest.mark.parametrize("ds", ["2024-03-01", "x" * 200])
@pytest.mark.parametrize("rows", [0, 10**30])
def test_subject_is_at_most_100_characters(ds: str, rows: int) -> None:
    assert SNS_SUBJECT_MAX == 100
    title = subject(summary(ds=ds, row_count=rows, snapshot_complete=False))
    assert 0 < len(title) <= 100
    assert "\n" not in title


def test_failure_message_names_task_and_account() -> None:
    text = failure_message(
        "scan_account", "222222222222 (payments-prod)", RUN_ID, 3, "AccessDenied: not authorized"
    )
    assert "scan_account" in text
    assert "222222222222 (payments-prod)" in text
    assert RUN_ID in text
    assert "try 3" in text
    assert "AccessDenied: not authorized" in text


def test_failure_message_without_account() -> None:
    text = failure_message("merge_inventory", "", RUN_ID, 1, "boom")
    assert "merge_inventory failed" in text
    assert "for account" not in text
    assert "boom" in text


def test_an_unusable_manifest_is_named_with_why() -> None:
    unusable = [
        {
            "key": "cmdb/ec2-inventory/ds=2024-03-01/manifest.json",
            "uri": MANIFEST_URI,
            "problem": "not valid JSON (26 bytes: Unterminated string)",
        },
        {
            "key": "cmdb/ec2-inventory/latest/manifest.json",
            "uri": "s3://b/latest/manifest.json",
            "problem": "not a JSON object (a JSON list)",
        },
    ]
    text = message(summary(unusable=unusable))
    assert (
        f"Unusable: {MANIFEST_URI} (not valid JSON (26 bytes: Unterminated string)): treated as absent"
        in text
    )
    assert (
        "Unusable: s3://b/latest/manifest.json (not a JSON object (a JSON list)): treated as absent" in text
    )
    assert "Unusable:" not in message(summary())


# --- publishing: one path to SNS ------------------------------------------------------------------------

TOPIC = "arn:aws:sns:eu-west-1:111111111111:cmdb-ec2-inventory"


class _SnsHook:
    """The provider's SnsHook as SNS answers it: ``publish_to_target`` returns Publish's whole response."""

    calls: list[dict[str, Any]] = []

    def __init__(self, *, aws_conn_id: str, region_name: str | None) -> None:
        self.where = {"aws_conn_id": aws_conn_id, "region_name": region_name}

    def publish_to_target(self, **kwargs: Any) -> dict[str, Any]:
        _SnsHook.calls.append({**self.where, **kwargs})
        return {"MessageId": "5a1e-m1", "ResponseMetadata": {"RequestId": "r-1", "HTTPHeaders": {"x": "y"}}}


@pytest.fixture
def sns_hook(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    from airflow.providers.amazon.aws.hooks import sns

    monkeypatch.setattr(sns, "SnsHook", _SnsHook)
    _SnsHook.calls = []
    return _SnsHook.calls


def test_publish_keeps_snss_limits_and_returns_the_message_id(sns_hook: list[dict[str, Any]]) -> None:
    from include.cmdb_inventory.notify import publish
    from include.cmdb_inventory.text import MAX_MESSAGE_BYTES, published_size

    receipt = publish(TOPIC, "x\r\nInjected " + "s" * 200, "line\n" * 60_000, aws_conn_id="hub")
    (call,) = sns_hook
    assert (call["target_arn"], call["aws_conn_id"], call["region_name"]) == (TOPIC, "hub", None)
    assert len(call["subject"]) < SNS_SUBJECT_MAX
    assert "\n" not in call["subject"]
    assert "\r" not in call["subject"]
    assert published_size(call["message"]) <= MAX_MESSAGE_BYTES < published_size("line\n" * 60_000)
    # The receipt (an XCom): SNS's message id, never Publish's response (its request id, HTTP headers).
    assert receipt == {
        "topic_arn": TOPIC,
        "subject": call["subject"],
        "message_bytes": len(call["message"].encode()),
        "message_id": "5a1e-m1",
    }


def test_the_cmdb_notification_is_published_with_its_receipt(sns_hook: list[dict[str, Any]]) -> None:
    from include.cmdb_inventory.config import parse_settings
    from include.cmdb_inventory.inventory import notify_cmdb

    settings = parse_settings(
        {"accounts": ["111111111111"], "bucket": "b-cmdb", "sns_topic_arn": TOPIC, "hub_region": "eu-west-1"}
    )
    receipt = notify_cmdb(settings, summary())
    (call,) = sns_hook
    assert (call["target_arn"], call["region_name"]) == (TOPIC, "eu-west-1")
    assert call["message"] == message(summary())
    assert receipt["message_id"] == "5a1e-m1"


def test_every_notification_and_alert_goes_through_publish(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CMDB notification, the preflight's, the failure alert and the deadline alert: one function."""
    from types import SimpleNamespace

    from include.cmdb_inventory import alerts, inventory, notify, preflight, tasks

    published: list[tuple[str, str]] = []

    def publish(topic_arn: str, subject: str, message: str, **where: Any) -> Any:
        published.append((topic_arn, subject))
        return {"topic_arn": topic_arn, "subject": subject, "message_bytes": 0, "message_id": "m"}

    monkeypatch.setattr(notify, "publish", publish)
    settings = SimpleNamespace(sns_topic_arn=TOPIC, aws_conn_id="aws_default", hub_region="eu-west-1")
    monkeypatch.setattr(tasks, "settings_from", lambda context: settings)
    readiness = {
        "mode": "preflight",
        "ds": "2024-03-01",
        "dag_run_id": RUN_ID,
        "report_uri": "s3://b/p/preflight.json",
        "accounts_expected": 1,
        "accounts_ready": 1,
        "ready": True,
        "not_ready_count": 0,
        "not_ready": [],
        "accounts_not_scanned": 0,
    }

    inventory.notify_cmdb(settings, summary())
    preflight.notify_readiness(settings, readiness)
    failed = SimpleNamespace(task_id="scan_account", try_number=1, rendered_map_index="222222222222")
    context = {"ti": failed, "dag_run": SimpleNamespace(run_id=RUN_ID), "exception": RuntimeError("boom")}
    alerts.TaskFailureNotifier().notify(context)
    run = {"dag_run_id": RUN_ID, "run_type": "scheduled", "queued_at": "2024-03-01T02:00:01Z"}
    alerts.deadline_missed({"dag_run": run, "deadline": {"deadline_time": "2024-03-01T06:00:00Z"}}, 240)

    assert [topic for topic, _ in published] == [TOPIC] * 4
    assert [subject.split(":")[0] for _, subject in published] == [
        "EC2 inventory 2024-03-01",
        "EC2 inventory preflight 2024-03-01",
        "cmdb_ec2_inventory",
        "cmdb_ec2_inventory",
    ]
