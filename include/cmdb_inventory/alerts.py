"""Task failure and missed-deadline alerts to the CMDB topic, through the Amazon provider's SNS."""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import BaseNotifier

log = logging.getLogger(__name__)


def _account_of(context: dict[str, Any]) -> str:
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
    time); the provider's :class:`SnsNotifier` does the publishing. Without a topic the alert is logged.
    """

    template_fields = ()

    def notify(self, context: dict[str, Any]) -> None:
        """Publish one alert; never raise (a failing alert must not hide the task's own error)."""
        from include.cmdb_inventory.coverage import scrub
        from include.cmdb_inventory.notify import failure_message

        ti = context.get("ti")
        task_id = getattr(ti, "task_id", "?")
        run_id = getattr(context.get("dag_run"), "run_id", "?")
        text = failure_message(
            task=task_id,
            account=_account_of(context),
            run_id=run_id,
            try_number=int(getattr(ti, "try_number", 0) or 0),
            error=scrub(str(context.get("exception") or "unknown error")),
        )
        try:
            from include.cmdb_inventory.runtime import settings_from

            settings = settings_from(context)
        except Exception as err:
            log.error("Cannot read the configuration to send the failure alert (%s):\n%s", err, text)
            return
        if not settings.sns_topic_arn:
            log.error("No sns_topic_arn configured; failure alert:\n%s", text)
            return
        try:
            from airflow.providers.amazon.aws.notifications.sns import SnsNotifier

            SnsNotifier(
                aws_conn_id=settings.aws_conn_id,
                target_arn=settings.sns_topic_arn,
                message=text,
                subject=f"cmdb_ec2_inventory: {task_id} failed"[:100],
                region_name=settings.hub_region,
            ).notify(context)
        except Exception:
            log.exception("Could not publish the failure alert:\n%s", text)


def deadline_message(dag_run: dict[str, Any], deadline: dict[str, Any], minutes: float) -> str:
    """The text of a missed-deadline alert: which run, its state now, and when it was due."""
    return (
        f"cmdb_ec2_inventory: run {dag_run.get('dag_run_id', '?')} has not finished by its deadline.\n"
        f"Logical date: {dag_run.get('logical_date') or '-'}; queued at {dag_run.get('queued_at') or '-'}; "
        f"state now: {dag_run.get('state', '?')}.\n"
        f"Deadline: {deadline.get('deadline_time', '?')} ({minutes:g} minutes after the run was queued).\n"
        "The CMDB's CSV for this date may be missing or incomplete: check the run in the Airflow UI."
    )


def deadline_missed(context: dict[str, Any], minutes: float = 0.0) -> None:
    """
    Deadline Alert callback (a ``SyncCallback``, run by the executor like a task): the run has not
    succeeded ``minutes`` after it was queued. Publishes to ``sns_topic_arn`` (or logs without one).

    Airflow passes ``context`` with the run (``dag_run``, as the REST API shows it) and the ``deadline``.
    A publishing error is raised, so the callback shows as failed in Airflow.
    """
    dag_run = dict(context.get("dag_run") or {})
    text = deadline_message(dag_run, dict(context.get("deadline") or {}), minutes)
    try:
        from include.cmdb_inventory.runtime import settings_from

        settings = settings_from({})
    except Exception as err:
        log.error("Cannot read the configuration to send the deadline alert (%s):\n%s", err, text)
        return
    if not settings.sns_topic_arn:
        log.error("No sns_topic_arn configured; deadline alert:\n%s", text)
        return
    from airflow.providers.amazon.aws.hooks.sns import SnsHook

    SnsHook(aws_conn_id=settings.aws_conn_id, region_name=settings.hub_region).publish_to_target(
        target_arn=settings.sns_topic_arn,
        message=text,
        subject=f"cmdb_ec2_inventory: run {dag_run.get('dag_run_id', '?')} missed its deadline"[:100],
    )
    log.warning("Deadline missed; alerted %s:\n%s", settings.sns_topic_arn, text)
