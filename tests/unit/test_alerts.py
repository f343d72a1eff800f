"""The deadline alert's callback: whom it alerts, with what, and when it stays silent."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from include.cmdb_inventory import alerts

TOPIC = "arn:aws:sns:eu-west-1:111111111111:cmdb-ec2-inventory"


def _run(run_type: str, queued_at: str) -> dict[str, Any]:
    return {
        "dag_run_id": f"{run_type}__2026-11-20T02:00:00+00:00",
        "run_type": run_type,
        "logical_date": "2026-11-20T02:00:00Z",
        "queued_at": queued_at,
        "state": "running",
    }


DEADLINE = {"id": "x", "deadline_time": "2026-11-20T06:00:00+00:00"}


@pytest.mark.parametrize(
    ("run_type", "queued_at", "silent"),
    [
        ("scheduled", "2026-11-20T02:00:01Z", False),
        ("scheduled", "2026-11-20T07:30:00Z", False),  # the CMDB team still waits for that night's file
        ("manual", "2026-11-20T05:00:00Z", False),
        ("manual", "2026-11-21T09:00:00Z", True),  # a manual run of a past date
        ("backfill", "2026-11-25T09:00:00Z", True),
        ("backfill", "not a time", False),
    ],
)
def test_runs_of_past_dates_stay_silent_scheduled_runs_never(
    run_type: str, queued_at: str, silent: bool
) -> None:
    assert alerts.queued_after_deadline(_run(run_type, queued_at), DEADLINE) is silent


class _Sns:
    published: list[dict[str, Any]] = []

    def __init__(self, *, aws_conn_id: str, region_name: str) -> None:
        self.where = {"aws_conn_id": aws_conn_id, "region_name": region_name}

    def publish_to_target(self, **kwargs: Any) -> None:
        _Sns.published.append({**self.where, **kwargs})


@pytest.fixture
def sns(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    from airflow.providers.amazon.aws.hooks import sns as sns_module

    monkeypatch.setattr(sns_module, "SnsHook", _Sns)
    _Sns.published = []
    return _Sns.published


def _settings(monkeypatch: pytest.MonkeyPatch, settings: Any) -> None:
    from include.cmdb_inventory import tasks

    def settings_from(context: Any) -> Any:
        if isinstance(settings, Exception):
            raise settings
        return settings

    monkeypatch.setattr(tasks, "settings_from", settings_from)


def _context(run: dict[str, Any]) -> dict[str, Any]:
    return {"dag_run": run, "deadline": DEADLINE}


def test_the_topic_fixed_at_parse_time_is_alerted_when_the_variable_is_out_of_reach(
    monkeypatch: pytest.MonkeyPatch, sns: list[dict[str, Any]]
) -> None:
    # Airflow 3.3.2 refuses metadata-DB Variables to deadline callbacks (HTTP 403 behind Variable.get).
    _settings(monkeypatch, RuntimeError("403 Forbidden"))
    alerts.deadline_missed(_context(_run("scheduled", "2026-11-20T02:00:01Z")), minutes=240, topic_arn=TOPIC)
    (message,) = sns
    assert message["target_arn"] == TOPIC
    assert (message["aws_conn_id"], message["region_name"]) == ("aws_default", "eu-west-1")
    assert "has not finished by its deadline" in message["message"]
    assert "(240 minutes after the logical date)" in message["message"]
    assert len(message["subject"]) <= 100


def test_without_a_parse_time_topic_the_variable_decides(
    monkeypatch: pytest.MonkeyPatch, sns: list[dict[str, Any]]
) -> None:
    settings = SimpleNamespace(
        sns_topic_arn="arn:aws:sns:us-east-1:111111111111:t", aws_conn_id="hub", hub_region="us-east-2"
    )
    _settings(monkeypatch, settings)
    alerts.deadline_missed(_context(_run("scheduled", "2026-11-20T02:00:01Z")), minutes=240)
    (message,) = sns
    assert (message["target_arn"], message["aws_conn_id"], message["region_name"]) == (
        "arn:aws:sns:us-east-1:111111111111:t",
        "hub",
        "us-east-2",
    )


def test_no_topic_anywhere_logs_the_alert(
    monkeypatch: pytest.MonkeyPatch, sns: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    _settings(monkeypatch, RuntimeError("403 Forbidden"))
    alerts.deadline_missed(_context(_run("scheduled", "2026-11-20T02:00:01Z")), minutes=240)
    assert sns == []
    assert "Cannot read the configuration to send the deadline alert" in caplog.text


def test_a_backfill_of_a_past_date_is_not_alerted(
    monkeypatch: pytest.MonkeyPatch, sns: list[dict[str, Any]]
) -> None:
    _settings(monkeypatch, RuntimeError("unused"))
    alerts.deadline_missed(_context(_run("backfill", "2026-11-25T09:00:00Z")), minutes=240, topic_arn=TOPIC)
    assert sns == []


def test_zero_minutes_turns_the_alert_off() -> None:
    assert alerts.deadline_alert(0) is None
    assert alerts.deadline_alert(-1) is None
    assert alerts.deadline_alert(30) is not None


def test_a_bad_parse_time_setting_is_named_and_never_stops_the_dag(caplog: pytest.LogCaptureFixture) -> None:
    # A typo in an optional alert setting must not make the nightly DAG an import error.
    alert = alerts.deadline_alert(240, "cmdb")
    assert alert is not None
    assert alert.callback.kwargs["topic_arn"] is None
    assert (
        "CMDB_EC2_INVENTORY_ALERT_TOPIC_ARN is not a standard SNS topic ARN, ignored: 'cmdb'" in caplog.text
    )
    padded = alerts.deadline_alert(240, f" {TOPIC} \n")  # as an .env line may carry it
    assert padded is not None
    assert padded.callback.kwargs["topic_arn"] == TOPIC
    fifo = alerts.deadline_alert(240, f"{TOPIC}.fifo")
    assert fifo is not None
    assert fifo.callback.kwargs["topic_arn"] is None
    for minutes in (float("nan"), float("inf")):
        assert alerts.deadline_alert(minutes) is None
    assert "CMDB_EC2_INVENTORY_DEADLINE_MINUTES is not a finite number" in caplog.text


def test_the_deadline_subject_is_shorter_than_snss_limit_and_has_no_controls(
    monkeypatch: pytest.MonkeyPatch, sns: list[dict[str, Any]]
) -> None:
    _settings(monkeypatch, RuntimeError("403 Forbidden"))
    run = {**_run("scheduled", "2026-11-20T02:00:01Z"), "dag_run_id": "x\r\nInjected" + "r" * 120}
    alerts.deadline_missed(_context(run), minutes=240, topic_arn=TOPIC)
    (message,) = sns
    assert len(message["subject"]) < 100
    assert "\n" not in message["subject"]
    assert "\nInjected" not in message["message"]
