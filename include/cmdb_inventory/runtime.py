"""Glue between Airflow's task context and the steps in :mod:`include.cmdb_inventory.inventory`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from include.cmdb_inventory import inventory
from include.cmdb_inventory.config import VARIABLE_KEY, Account, ConfigError, Settings, parse_settings


def settings_from(context: Mapping[str, Any]) -> Settings:
    """Read the Variable now (never at parse time) and apply the run's Params; bad config fails for good."""
    from airflow.sdk import Variable

    params = context.get("params") or {}
    try:
        raw = Variable.get(VARIABLE_KEY, default=None)
        if raw is None:
            raise ConfigError("(variable)", f"the Airflow Variable {VARIABLE_KEY!r} is not set")
        return parse_settings(raw, params)
    except ConfigError as err:
        raise AirflowFailException(str(err)) from None


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
    resolved = inventory.resolve_accounts(
        settings, run_info(context), inventory.store_for(settings), overwrite
    )
    context["ti"].xcom_push(key="plan", value={k: resolved[k] for k in ("expected", "skip_reason")})
    return resolved["accounts"]


def scan(context: Mapping[str, Any], account: Mapping[str, Any]) -> dict[str, Any]:
    """``scan_account``: permanent errors fail without retries, transient ones let Airflow retry."""
    settings = settings_from(context)
    try:
        return inventory.scan_account(
            settings, run_info(context), Account.from_dict(account), inventory.store_for(settings)
        )
    except inventory.PermanentScanError as err:
        raise AirflowFailException(str(err)) from None


def merge(context: Mapping[str, Any], plan: Mapping[str, Any]) -> dict[str, Any]:
    """``merge_inventory``: the CSV, the manifest, ``latest/``."""
    settings = settings_from(context)
    return inventory.merge_inventory(
        settings,
        run_info(context),
        inventory.store_for(settings),
        plan["expected"],
        overwrite=bool((context.get("params") or {}).get("overwrite")),
        skip_reason=plan.get("skip_reason"),
    )


def notify(context: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    """``notify_cmdb``: tell the CMDB team."""
    return inventory.notify_cmdb(settings_from(context), summary)


def check(summary: Mapping[str, Any]) -> None:
    """``check_coverage``: a short coverage fails the run (no retry: the data will not change)."""
    try:
        inventory.check_coverage(summary)
    except inventory.CoverageError as err:
        raise AirflowFailException(str(err)) from None
