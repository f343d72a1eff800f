"""Glue between Airflow's task context and the steps in :mod:`include.cmdb_inventory.inventory`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from include.cmdb_inventory import assets, inventory, preflight
from include.cmdb_inventory.config import VARIABLE_KEY, Account, ConfigError, Settings, parse_settings

log = logging.getLogger(__name__)


def settings_from(context: Mapping[str, Any]) -> Settings:
    """Read the Variable now (never at parse time) and apply the run's Params; bad config fails for good."""
    from airflow.sdk import Variable

    from include.cmdb_inventory.aws.hooks import guard_botocore_logs

    guard_botocore_logs()  # every task starts here: botocore's DEBUG records never carry credentials
    params = context.get("params") or {}
    try:
        raw = Variable.get(VARIABLE_KEY, default=None)
        if raw is None:
            raise ConfigError("(variable)", f"the Airflow Variable {VARIABLE_KEY!r} is not set")
        return parse_settings(raw, params)
    except ConfigError as err:
        raise AirflowFailException(str(err)) from None


def mode_of(context: Mapping[str, Any]) -> str:
    """The run's Param ``mode``: ``inventory`` (default) or ``preflight``."""
    mode = (context.get("params") or {}).get("mode") or preflight.INVENTORY
    if mode not in preflight.MODES:
        raise AirflowFailException(f"invalid param mode: {mode!r} (allowed: {', '.join(preflight.MODES)})")
    return str(mode)


def run_info(context: Mapping[str, Any]) -> inventory.RunInfo:
    """The run's ids and its logical date (``run_after`` for runs without one)."""
    dag_run = context["dag_run"]
    when = dag_run.logical_date or dag_run.run_after
    return inventory.RunInfo(
        dag_id=dag_run.dag_id,
        run_id=dag_run.run_id,
        ds=when.strftime("%Y-%m-%d"),
        logical_date=when.isoformat(),
        try_number=int(getattr(context.get("ti"), "try_number", 1) or 1),
    )


def resolve(context: Mapping[str, Any]) -> list[dict[str, str]]:
    """
    ``resolve_accounts``: the accounts to map over (none when the date is already complete). The plan for
    merge (every expected account, and why nothing is scanned, if so) goes to the XCom key ``plan``.
    """
    settings = settings_from(context)
    overwrite = bool((context.get("params") or {}).get("overwrite"))
    try:
        resolved = inventory.resolve_accounts(
            settings,
            run_info(context),
            inventory.store_for(settings),
            overwrite,
            preflight=mode_of(context) == preflight.PREFLIGHT,
        )
    except ConfigError as err:  # e.g. an include_ous id that is not in the organisation
        raise AirflowFailException(str(err)) from None
    check_mappable(len(resolved["accounts"]))
    keys = ("expected", "skip_reason", "expected_accounts", "not_scanned", "accounts_source")
    context["ti"].xcom_push(key="plan", value={k: resolved[k] for k in keys})
    return resolved["accounts"]


def check_mappable(count: int) -> None:
    """
    Fail for good, naming the setting, when Airflow cannot map ``count`` accounts: one mapped task expands
    into at most ``[core] max_map_length`` instances (default 1,024). Otherwise Airflow's API refuses the
    list only after this task's work, with a message that names neither, and the task is retried in vain.
    """
    from airflow.sdk.configuration import conf

    limit = conf.getint("core", "max_map_length", fallback=1024)
    if count > limit:
        raise AirflowFailException(
            f"{count} accounts to scan, but Airflow maps one task into at most {limit} instances "
            f"([core] max_map_length): set AIRFLOW__CORE__MAX_MAP_LENGTH to at least {count} for the "
            "scheduler, the API server and the workers (see the README, 'How the cost grows')"
        )


def scan(context: Mapping[str, Any], account: Mapping[str, Any]) -> dict[str, Any]:
    """``scan_account``: permanent errors fail without retries, transient ones let Airflow retry."""
    settings = settings_from(context)
    if mode_of(context) == preflight.PREFLIGHT:
        return preflight.preflight_account(
            settings, run_info(context), Account.from_dict(account), inventory.store_for(settings)
        )
    try:
        return inventory.scan_account(
            settings, run_info(context), Account.from_dict(account), inventory.store_for(settings)
        )
    except inventory.PermanentScanError as err:
        raise AirflowFailException(str(err)) from None


def merge(context: Mapping[str, Any]) -> dict[str, Any]:
    """``merge_inventory``: the CSV, the manifest, ``latest/``; fails at once when nothing was resolved."""
    plan = context["ti"].xcom_pull(task_ids="resolve_accounts", key="plan")
    if not plan:
        raise AirflowFailException(
            "resolve_accounts did not finish (see its log): nothing to merge, nothing written"
        )
    settings = settings_from(context)
    if mode_of(context) == preflight.PREFLIGHT:
        return preflight.preflight_report(
            settings, run_info(context), inventory.store_for(settings), plan["expected"], plan
        )
    summary = inventory.merge_inventory(
        settings,
        run_info(context),
        inventory.store_for(settings),
        plan["expected"],
        overwrite=bool((context.get("params") or {}).get("overwrite")),
        skip_reason=plan.get("skip_reason"),
        plan=plan,
    )
    if "outlet_events" in context and assets.emit_snapshot_event(context["outlet_events"], summary):
        log.info("Asset event for %s: %s", assets.SNAPSHOT.name, assets.event_extra(summary))
    return summary


def notify(context: Mapping[str, Any], summary: Mapping[str, Any]) -> dict[str, Any]:
    """``notify_cmdb``: tell the CMDB team."""
    return inventory.notify_cmdb(settings_from(context), summary)


def check(summary: Mapping[str, Any]) -> None:
    """``check_coverage``: a short coverage (or, in preflight, an account not ready) fails the run."""
    try:
        if summary.get("mode") == preflight.PREFLIGHT:
            preflight.check_ready(summary)
        else:
            inventory.check_coverage(summary)
    except (inventory.CoverageError, preflight.NotReadyError) as err:
        raise AirflowFailException(str(err)) from None
