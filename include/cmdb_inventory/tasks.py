"""
The Airflow adapter: task context in, the steps' calls, domain errors out as Airflow exceptions. The
steps live in :mod:`~include.cmdb_inventory.inventory` (DAG ``cmdb_ec2_inventory``) and
:mod:`~include.cmdb_inventory.preflight` (DAG ``cmdb_ec2_inventory_preflight``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from include.cmdb_inventory import assets, guard, inventory, preflight
from include.cmdb_inventory.config import VARIABLE_KEY, Account, ConfigError, Settings, parse_settings
from include.cmdb_inventory.contract import APPROVAL_TASK_ID
from include.cmdb_inventory.invocation import running_dags_test
from include.cmdb_inventory.notify import Prompt
from include.cmdb_inventory.run import RunInfo, store_for

if TYPE_CHECKING:
    from include.cmdb_inventory.contract import Plan, RunSummary
    from include.cmdb_inventory.notify import Receipt
    from include.cmdb_inventory.preflight import PreflightSummary

log = logging.getLogger(__name__)

# The inventory DAG's Param mode=preflight still runs the preflight, for one release, saying this.
DEPRECATION = (
    "the param mode=preflight of cmdb_ec2_inventory is deprecated and goes in the next release: trigger "
    "the DAG cmdb_ec2_inventory_preflight instead (the same checks and report)"
)


def settings_from(context: Mapping[str, Any]) -> Settings:
    """Read the Variable now (never at parse time) and apply the run's Params; bad config fails for good."""
    from airflow.sdk import Variable

    from include.cmdb_inventory.aws.redaction import guard_botocore_logs

    guard_botocore_logs()  # every task starts here: botocore's DEBUG records never carry credentials
    params = context.get("params") or {}
    try:
        raw = Variable.get(VARIABLE_KEY, default=None)
        if raw is None:
            raise ConfigError("(variable)", f"the Airflow Variable {VARIABLE_KEY!r} is not set")
        return parse_settings(raw, params)
    except ConfigError as err:
        raise AirflowFailException(str(err)) from None


def run_info(context: Mapping[str, Any]) -> RunInfo:
    """The run's ids and its logical date (``run_after`` for runs without one)."""
    dag_run = context["dag_run"]
    when = dag_run.logical_date or dag_run.run_after
    return RunInfo(
        dag_id=dag_run.dag_id,
        run_id=dag_run.run_id,
        ds=when.strftime("%Y-%m-%d"),
        logical_date=when.isoformat(),
        try_number=int(getattr(context.get("ti"), "try_number", 1) or 1),
    )


def deprecated_preflight(context: Mapping[str, Any]) -> bool:
    """
    Whether this run of the inventory DAG asks for a preflight (its Param ``mode``, deprecated: see
    :data:`DEPRECATION`, logged by every task of such a run); an unknown mode fails the run for good.
    """
    mode = (context.get("params") or {}).get("mode") or preflight.INVENTORY
    if mode not in preflight.MODES:
        raise AirflowFailException(f"invalid param mode: {mode!r} (allowed: {', '.join(preflight.MODES)})")
    if mode == preflight.INVENTORY:
        return False
    log.warning("DEPRECATED: %s", DEPRECATION)
    return True


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
            "scheduler, the API server and the workers (see docs/operations.md, 'What to tune')"
        )


def _plan(context: Mapping[str, Any]) -> Plan:
    # resolve_accounts' plan (every expected account, and why nothing is scanned, if so), pulled by key: the
    # mapped scans' XComs are what the wiring passes, the plan is for the merge alone.
    plan = context["ti"].xcom_pull(task_ids="resolve_accounts", key="plan")
    if not plan:
        raise AirflowFailException(
            "resolve_accounts did not finish (see its log): nothing to merge, nothing written"
        )
    return cast("Plan", plan)


# --- both DAGs --------------------------------------------------------------------------------------------


def resolve(context: Mapping[str, Any], *, for_preflight: bool = False) -> list[dict[str, str]]:
    """
    ``resolve_accounts``: the accounts to map over (none when the date is already complete, unless the run
    is a preflight, which checks every account). The plan for the next steps (every expected account,
    and why nothing is scanned, if so) goes to the XCom key ``plan``.
    """
    settings = settings_from(context)
    overwrite = bool((context.get("params") or {}).get("overwrite"))
    try:
        resolved = inventory.resolve_accounts(
            settings,
            run_info(context),
            store_for(settings),
            overwrite,
            preflight=for_preflight or deprecated_preflight(context),
        )
    except ConfigError as err:  # e.g. an include_ous id that is not in the organisation
        raise AirflowFailException(str(err)) from None
    check_mappable(len(resolved["accounts"]))
    plan: Plan = {
        "expected": resolved["expected"],
        "skip_reason": resolved["skip_reason"],
        "expected_accounts": resolved["expected_accounts"],
        "not_scanned": resolved["not_scanned"],
        "accounts_source": resolved["accounts_source"],
    }
    if resolved.get("organization_context") is not None:
        plan["organization_context"] = resolved["organization_context"]
    context["ti"].xcom_push(key="plan", value=plan)
    return resolved["accounts"]


# --- cmdb_ec2_inventory -----------------------------------------------------------------------------------


def scan(context: Mapping[str, Any], account: Mapping[str, Any]) -> dict[str, Any]:
    """``scan_account``: permanent errors fail without retries, transient ones let Airflow retry."""
    settings = settings_from(context)
    checking = deprecated_preflight(context)
    run, store = run_info(context), store_for(settings)
    if checking:
        return preflight.check_account(settings, run, Account.from_dict(account), store)
    try:
        return inventory.scan_account(settings, run, inventory.account_of(store, run, account), store)
    except inventory.PermanentScanError as err:
        raise AirflowFailException(str(err)) from None


def merge(context: Mapping[str, Any]) -> RunSummary | PreflightSummary:
    """``merge_inventory``: the CSV, the manifest, ``latest/``; fails at once when nothing was resolved."""
    plan = _plan(context)
    settings = settings_from(context)
    checking = deprecated_preflight(context)
    run, store = run_info(context), store_for(settings)
    if checking:
        report = preflight.write_report(settings, run, store, plan["expected"], plan)
        report["deprecation"] = DEPRECATION  # in the XCom and the notification, too
        return report
    try:
        summary = inventory.merge_inventory(
            settings,
            run,
            store,
            plan["expected"],
            overwrite=bool((context.get("params") or {}).get("overwrite")),
            skip_reason=plan.get("skip_reason"),
            plan=plan,
        )
    except ConfigError as err:  # e.g. parts scanned with other columns: a retry would fail the same way
        raise AirflowFailException(str(err)) from None
    if "outlet_events" in context and assets.emit_snapshot_event(context["outlet_events"], summary):
        log.info("Asset event for %s: %s", assets.SNAPSHOT.name, assets.event_extra(summary))
    return summary


def approval_url(context: Mapping[str, Any]) -> str | None:
    """The Airflow UI's page where a person answers this run's approval (``[api] base_url``), if known."""
    from urllib.parse import quote

    from airflow.sdk.configuration import conf

    base = (conf.get("api", "base_url", fallback="") or "").rstrip("/")
    if not base:
        return None
    dag_run = context["dag_run"]
    return (
        f"{base}/dags/{quote(dag_run.dag_id, safe='')}/runs/{quote(dag_run.run_id, safe='')}/tasks/"
        f"{APPROVAL_TASK_ID}/required_actions"
    )


def notify(context: Mapping[str, Any], summary: RunSummary) -> Receipt:
    """``notify_cmdb``: tell the CMDB team (and where to decide when the removal guard holds the snapshot)."""
    if deprecated_preflight(context):  # then merge returned the preflight's summary
        return notify_readiness(context, cast("PreflightSummary", summary))
    prompt = None
    if guard.is_held(summary):
        approval = context["dag"].get_task(APPROVAL_TASK_ID) if "dag" in context else None
        timeout = getattr(approval, "response_timeout", None)
        prompt = Prompt(
            url=approval_url(context),
            asked=not running_dags_test(),
            timeout_hours=timeout.total_seconds() / 3600 if timeout else None,
        )
    return inventory.notify_cmdb(settings_from(context), summary, prompt)


def removal_request(context: Mapping[str, Any]) -> tuple[str, str] | None:
    """
    ``approve_removals`` before it asks: the subject and body to show, or ``None`` when this run's snapshot
    is not held by the mass-removal guard (nothing to ask: the task is skipped).
    """
    if deprecated_preflight(context):
        return None
    settings = settings_from(context)
    held = inventory.awaiting_decision(store_for(settings), run_info(context))
    if held is None:
        return None
    if running_dags_test():
        # Nobody can answer an attended test run's request (dags test waits for it, forever): it stays HELD.
        raise AirflowSkipException(
            f"the mass-removal guard holds the snapshot of {held.get('ds')}, but under airflow dags test "
            "nobody is asked: latest/ stays as it is; run the date under a scheduler to approve or reject it"
        )
    return inventory.approval_request(held)


def finish_approval(context: Mapping[str, Any]) -> dict[str, Any] | None:
    """``approve_removals`` retried after an approval was recorded: publish it, send the event, tell."""
    settings = settings_from(context)
    decision = inventory.unfinished_approval(store_for(settings), run_info(context))
    if decision is not None:
        _announce(context, settings, decision)
    return decision


def _announce(context: Mapping[str, Any], settings: Settings, decision: Mapping[str, Any]) -> None:
    if "outlet_events" in context and assets.emit_snapshot_event(context["outlet_events"], decision):
        log.info("Asset event for %s: %s", assets.SNAPSHOT.name, assets.event_extra(decision))
    inventory.notify_decision(settings, decision)


def settle_removals(context: Mapping[str, Any], *, approved: bool, decided_by: str) -> dict[str, Any]:
    """
    ``approve_removals`` once answered: record the decision; when approved, publish ``latest/`` and send
    the snapshot's asset event; tell the CMDB team either way.
    """
    settings = settings_from(context)
    try:
        decision = inventory.settle_removals(
            settings, run_info(context), store_for(settings), approved=approved, decided_by=decided_by
        )
    except inventory.DecisionError as err:
        raise AirflowFailException(str(err)) from None
    _announce(context, settings, decision)
    return decision


def check(context: Mapping[str, Any], summary: RunSummary) -> None:
    """``check_coverage``: a short coverage fails the run."""
    if deprecated_preflight(context):  # then merge returned the preflight's summary
        return check_ready(cast("PreflightSummary", summary))
    try:
        inventory.check_coverage(summary)
    except inventory.CoverageError as err:
        raise AirflowFailException(str(err)) from None


# --- cmdb_ec2_inventory_preflight -------------------------------------------------------------------------


def check_account(context: Mapping[str, Any], account: Mapping[str, Any]) -> dict[str, Any]:
    """``check_account``: one account's readiness; AWS errors are the answer, never the task's failure."""
    settings = settings_from(context)
    return preflight.check_account(
        settings, run_info(context), Account.from_dict(account), store_for(settings)
    )


def write_report(context: Mapping[str, Any]) -> PreflightSummary:
    """``write_report``: every account's readiness in the run's report; fails at once without a plan."""
    plan = _plan(context)
    settings = settings_from(context)
    return preflight.write_report(settings, run_info(context), store_for(settings), plan["expected"], plan)


def notify_readiness(context: Mapping[str, Any], summary: PreflightSummary) -> Receipt:
    """``notify_cmdb`` of the preflight: tell the CMDB team which accounts are ready."""
    return preflight.notify_readiness(settings_from(context), summary)


def check_ready(summary: PreflightSummary) -> None:
    """``check_ready``: an account that is not ready fails the run."""
    try:
        preflight.check_ready(summary)
    except preflight.NotReadyError as err:
        raise AirflowFailException(str(err)) from None
