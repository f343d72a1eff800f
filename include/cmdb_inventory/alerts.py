"""Task failure and missed-deadline alerts to the CMDB topic, published the one way (``notify.publish``)."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseNotifier

# Where Airflow defines them: ``airflow.sdk`` exports them at run time, but its stub (``__init__.pyi``) not.
from airflow.sdk.definitions.callback import SyncCallback
from airflow.sdk.definitions.deadline import DeadlineAlert, DeadlineReference

from include.cmdb_inventory import notify
from include.cmdb_inventory.invocation import running_dags_test
from include.cmdb_inventory.text import clean

if TYPE_CHECKING:
    from airflow.sdk import Context

log = logging.getLogger(__name__)

DAG_ID = "cmdb_ec2_inventory"  # the DAG the deadline alert watches (and the alerts' default name)
DEADLINE_NAME = f"{DAG_ID} not finished"
# Standard topics only: the notifications are published without a MessageGroupId, which FIFO topics need.
TOPIC_ARN_RE = re.compile(r"arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}")


def _account_of(context: Mapping[str, Any]) -> str:
    ti = context.get("ti")
    label = getattr(ti, "rendered_map_index", None)
    if label:
        return str(label)
    account = (getattr(context.get("task"), "op_kwargs", None) or {}).get("account")
    if isinstance(account, dict):
        return str(account.get("label") or account.get("id") or "")
    return ""


class TaskFailureNotifier(BaseNotifier):
    """
    ``on_failure_callback`` that publishes the failed task and its account to ``sns_topic_arn``.

    The topic and connection are read from the configuration when the failure happens (never at parse
    time); :func:`~include.cmdb_inventory.notify.publish` publishes it, through the provider's ``SnsHook``
    as the provider's ``SnsNotifier`` does. Without a topic the alert is logged.
    """

    template_fields = ()

    def notify(self, context: Context) -> None:
        """Publish one alert; never raise (a failing alert must not hide the task's own error)."""
        from include.cmdb_inventory.aws.redaction import scrub

        ti = context.get("ti")
        task_id = getattr(ti, "task_id", "?")
        dag_run = context.get("dag_run")
        dag_id = str(getattr(dag_run, "dag_id", "") or DAG_ID)
        text = notify.failure_message(
            task=task_id,
            account=_account_of(context),
            run_id=getattr(dag_run, "run_id", "?"),
            try_number=int(getattr(ti, "try_number", 0) or 0),
            error=scrub(str(context.get("exception") or "unknown error")),
            dag_id=dag_id,
        )
        try:
            # Not at module level: the DAG files import this module, and the adapter's imports are heavy.
            from include.cmdb_inventory.tasks import settings_from

            settings = settings_from(context)
        except Exception as err:
            log.error("Cannot read the configuration to send the failure alert (%s):\n%s", err, text)
            return
        if not settings.sns_topic_arn:
            log.error("No sns_topic_arn configured; failure alert:\n%s", text)
            return
        try:
            notify.publish(
                settings.sns_topic_arn,
                f"{dag_id}: {task_id} failed",
                text,
                aws_conn_id=settings.aws_conn_id,
                region_name=settings.hub_region,
            )
        except Exception:
            log.exception("Could not publish the failure alert:\n%s", text)


def deadline_alert(minutes: float, topic_arn: str | None = None) -> DeadlineAlert | None:
    """
    The DAG's Deadline Alert: a run of logical date D that has not succeeded by D + ``minutes`` alerts
    the topic. None when ``minutes`` is 0 or less, and under ``airflow dags test``.

    Two Airflow 3.3.2 defects decide its shape:

    - The reference is the run's logical date, not ``DAGRUN_QUEUED_AT``: clearing task instances
      recalculates pending queued-at deadlines with ``timedelta(seconds=<the interval>)``, but 3.3.2
      stores the interval as a serialised dict, so the UI's and REST API's Clear answers HTTP 500.
      Logical-date deadlines are never recalculated. For the nightly run (logical date = its 02:00 slot)
      the deadline is the same, and it means what the CMDB team waits for: that night's file by 06:00.
    - ``airflow dags test`` runs an in-memory copy of the DAG whose ``deadline`` still holds the alert
      definitions where ``DagRun.update_state`` expects their database ids: every successful test run
      then fails (``'dict' object has no attribute 'hex'``). A test run is attended: no alert there.

    :param minutes: minutes after the logical date; 0 turns the alert off
    :param topic_arn: the topic of the alert, fixed when the DAG is parsed (deadline callbacks cannot
        read Variables from the metadata database); None falls back to the Variable's ``sns_topic_arn``
    """
    topic_arn = (topic_arn or "").strip() or None
    if topic_arn and not TOPIC_ARN_RE.fullmatch(topic_arn):
        # An optional setting must not stop the nightly run: the DAG parses, the alert uses the Variable's.
        log.error(
            "CMDB_EC2_INVENTORY_ALERT_TOPIC_ARN is not a standard SNS topic ARN, ignored: %r", topic_arn
        )
        topic_arn = None
    if not math.isfinite(minutes):
        log.error(
            "CMDB_EC2_INVENTORY_DEADLINE_MINUTES is not a finite number (%r): no deadline alert", minutes
        )
        return None
    if minutes <= 0 or running_dags_test():
        return None
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_LOGICAL_DATE,
        interval=timedelta(minutes=minutes),
        callback=SyncCallback(deadline_missed, kwargs={"minutes": minutes, "topic_arn": topic_arn}),
        name=DEADLINE_NAME,
    )


def _when(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def queued_after_deadline(dag_run: dict[str, Any], deadline: dict[str, Any]) -> bool:
    """
    Whether a manual or backfill run was queued when its deadline had already passed (a run of a past
    date): such a run is being watched by whoever started it, and alerting at once would only be noise.
    A scheduled run always alerts: the CMDB team is waiting for that file.
    """
    if dag_run.get("run_type") == "scheduled":
        return False
    queued, due = _when(dag_run.get("queued_at")), _when(deadline.get("deadline_time"))
    return queued is not None and due is not None and due <= queued


def deadline_message(dag_run: dict[str, Any], deadline: dict[str, Any], minutes: float) -> str:
    """The text of a missed-deadline alert: which run, its state now, and when it was due."""
    run = {k: clean(dag_run.get(k) or "-") for k in ("dag_run_id", "logical_date", "queued_at", "state")}
    return (
        f"cmdb_ec2_inventory: run {run['dag_run_id']} has not finished by its deadline.\n"
        f"Logical date: {run['logical_date']}; queued at {run['queued_at']}; state now: {run['state']}.\n"
        f"Deadline: {clean(deadline.get('deadline_time', '?'))} "
        f"({minutes:g} minutes after the logical date).\n"
        "The CMDB's CSV for this date may be missing or incomplete: check the run in the Airflow UI."
    )


def _alert_target(topic_arn: str | None) -> tuple[str, str, str | None] | None:
    """
    (topic, connection id, region) of the deadline alert, or None (then it is only logged); the region is
    None when neither the topic fixed at parse time nor the Variable's ``hub_region`` names one.
    """
    try:
        from include.cmdb_inventory.tasks import settings_from

        settings = settings_from({})
    except Exception as err:
        if not topic_arn:
            log.error("Cannot read the configuration to send the deadline alert (%s)", err)
            return None
        log.info("Configuration not readable here (%s); alerting %s with aws_default", err, topic_arn)
        return topic_arn, "aws_default", topic_arn.split(":")[3]
    topic = topic_arn or settings.sns_topic_arn
    if not topic:
        return None
    region = topic.split(":")[3] if topic_arn else settings.hub_region
    return topic, settings.aws_conn_id, region


def deadline_missed(context: dict[str, Any], minutes: float = 0.0, topic_arn: str | None = None) -> None:
    """
    Deadline Alert callback (a ``SyncCallback``, run by the executor like a task): the run has not
    succeeded ``minutes`` after its logical date. Publishes to the topic (or logs without one).

    Airflow passes ``context`` with the run (``dag_run``, as the REST API shows it) and the ``deadline``.
    A publishing error is raised, so the callback shows as failed in Airflow.
    """
    dag_run = dict(context.get("dag_run") or {})
    deadline = dict(context.get("deadline") or {})
    text = deadline_message(dag_run, deadline, minutes)
    if queued_after_deadline(dag_run, deadline):
        log.info("Run %s was queued after its deadline; no alert:\n%s", dag_run.get("dag_run_id"), text)
        return
    target = _alert_target(topic_arn)
    if target is None:
        log.error("No topic configured for the deadline alert:\n%s", text)
        return
    topic, conn_id, region = target
    subject = f"{DAG_ID}: run {dag_run.get('dag_run_id', '?')} missed its deadline"
    notify.publish(topic, subject, text, aws_conn_id=conn_id, region_name=region)
    log.warning("Deadline missed; alerted %s:\n%s", topic, text)
