"""
A run's ``accounts`` Param picks a subset of the expected accounts (issue 10, finding 1): an account from
elsewhere fails ``resolve_accounts`` naming it; a subset is measured against the whole expected set, so it
is never complete and never replaces a date's snapshot or ``latest/`` unless ``overwrite`` asks, and then
its manifest says it is a subset. moto in-process (S3, Organizations).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from include.cmdb_inventory import contract, notify
from include.cmdb_inventory.config import Account, ConfigError, Settings, parse_settings
from include.cmdb_inventory.contract import CSV_NAME, MANIFEST_NAME
from include.cmdb_inventory.inventory import merge_inventory, resolve_accounts
from include.cmdb_inventory.run import RunInfo
from include.cmdb_inventory.storage import SnapshotStore, decide_write, is_complete, is_subset, snapshot_rank
from tests.unit.conftest import PREFIX
from tests.unit.test_merge import report_failed, report_ok
from tests.unit.test_organizations import Org

BUCKET = "cmdb-subset-tests"
A = Account("111111111111", "Payer")
B = Account("222222222222", "Development")
C = Account("333333333333", "Production")
OUTSIDE, OTHER_OUTSIDE = "999999999999", "888888888888"
DS = "2026-11-20"


@pytest.fixture
def s3_bucket() -> str:
    """The conftest's ``store`` on this module's bucket."""
    return BUCKET


def objects(store: SnapshotStore) -> dict[str, bytes]:
    """Every object of the bucket, by key."""
    found: dict[str, bytes] = {}
    for page in store.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            found[item["Key"]] = store.s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
    return found


def variable(**extra: Any) -> dict[str, Any]:
    return {
        "accounts": [{"id": a.id, "name": a.name} for a in (A, B, C)],
        "bucket": BUCKET,
        "prefix": PREFIX,
        **extra,
    }


def run_info(run_id: str) -> RunInfo:
    return RunInfo(dag_id="cmdb_ec2_inventory", run_id=run_id, ds=DS, logical_date=f"{DS}T02:00:00+00:00")


NIGHTLY = run_info("scheduled__2026-11-20T02:00:00+00:00")
MANUAL = run_info("manual__2026-11-20T10:00:00+00:00")


def nightly_two_of_three(store: SnapshotStore) -> dict[str, Any]:
    """The nightly run's snapshot: A and C covered, B's role not assumable (partial, written)."""
    settings = parse_settings(variable())
    plan = resolve_accounts(settings, NIGHTLY, store, False)
    report_ok(store, NIGHTLY, A, {"us-east-1": 2, "eu-west-1": 1})
    report_failed(store, NIGHTLY, B, contract.ROLE_NOT_ASSUMABLE, "AccessDenied")
    report_ok(store, NIGHTLY, C, {"us-east-1": 3})
    summary = merge_inventory(settings, NIGHTLY, store, plan["expected"], plan=plan)
    assert summary["written"] is True
    manifest = store.get_json(store.layout.snapshot(DS, MANIFEST_NAME))
    assert manifest is not None
    assert (manifest["complete"], manifest["accounts_covered"], manifest["accounts_expected"]) == (
        False,
        2,
        3,
    )
    return manifest


def subset_run(
    store: SnapshotStore, params: dict[str, Any], run: RunInfo = MANUAL
) -> tuple[Settings, dict[str, Any], dict[str, Any]]:
    """A manual run with these Params: resolve, each requested account scanned fine, merge."""
    settings = parse_settings(variable(), params)
    plan = resolve_accounts(settings, run, store, bool(params.get("overwrite")))
    for account in plan["accounts"]:
        report_ok(store, run, Account.from_dict(account), {"us-east-1": 1}, tag="m")
    summary = merge_inventory(
        settings,
        run,
        store,
        plan["expected"],
        overwrite=bool(params.get("overwrite")),
        skip_reason=plan["skip_reason"],
        plan=plan,
    )
    return settings, plan, summary


# --- the configuration ------------------------------------------------------------------------------------


def test_params_keep_the_configured_and_discovered_expected_sets() -> None:
    static = parse_settings(variable(), {"accounts": [B.id]})
    assert [a.id for a in static.accounts] == [B.id]
    assert [a.id for a in static.configured_accounts] == [A.id, B.id, C.id]
    org = parse_settings({"bucket": BUCKET, "organizations": {}}, {"accounts": [B.id]})
    assert org.configured_accounts == ()  # the expected set is discovered at run time
    assert org.accounts_from_params is True


# --- resolve_accounts: accounts from elsewhere --------------------------------------------------------------


def test_a_param_account_outside_the_configured_set_fails_resolve_naming_each(store: SnapshotStore) -> None:
    settings = parse_settings(variable(), {"accounts": [A.id, OUTSIDE, OTHER_OUTSIDE]})
    with pytest.raises(ConfigError) as info:
        resolve_accounts(settings, MANUAL, store, False)
    text = str(info.value)
    assert info.value.key == "params.accounts", text
    assert OUTSIDE in text
    assert OTHER_OUTSIDE in text
    assert A.id not in text
    assert "nothing was scanned or written" in text
    assert objects(store) == {}


def test_through_the_airflow_adapter_it_fails_for_good(store: SnapshotStore, monkeypatch: Any) -> None:
    """tasks.resolve turns it into AirflowFailException (no retry), pushing no plan (merge then stops)."""
    from airflow.sdk import Variable
    from airflow.sdk.exceptions import AirflowFailException

    from include.cmdb_inventory import tasks

    pushed: list[Any] = []

    class Ti:
        try_number = 1

        def xcom_push(self, **kwargs: Any) -> None:
            pushed.append(kwargs)

    class DagRun:
        dag_id = "cmdb_ec2_inventory"
        run_id = MANUAL.run_id
        logical_date = datetime(2026, 11, 20, 10, tzinfo=UTC)

    monkeypatch.setattr(Variable, "get", staticmethod(lambda key, default=None: json.dumps(variable())))
    monkeypatch.setattr(tasks, "store_for", lambda settings: store)
    context = {"params": {"accounts": [OUTSIDE]}, "ti": Ti(), "dag_run": DagRun()}
    with pytest.raises(AirflowFailException, match=OUTSIDE):
        tasks.resolve(context)
    assert pushed == []
    assert objects(store) == {}


def test_with_organizations_the_param_picks_from_the_discovered_set(store: SnapshotStore) -> None:
    org = Org()
    dev, excluded = org.account("Dev"), org.account("Excluded")
    raw = {"bucket": BUCKET, "prefix": PREFIX, "organizations": {"exclude_accounts": [excluded]}}

    plan = resolve_accounts(
        parse_settings(raw, {"accounts": [dev]}), MANUAL, store, False, org_client=org.client
    )
    assert [a["id"] for a in plan["accounts"]] == [dev]
    assert plan["accounts"][0]["name"] == "Dev"  # the expected set's name
    assert {a["id"] for a in plan["expected_accounts"]} == {org.management, dev}
    assert plan["accounts_source"] == "organizations"
    before = objects(store)  # the first resolve left its accounts' organisation context in staging

    # An excluded account and one outside the organisation: both named, the excluded one with why.
    settings = parse_settings(raw, {"accounts": [dev, excluded, OUTSIDE]})
    with pytest.raises(ConfigError) as info:
        resolve_accounts(settings, MANUAL, store, False, org_client=org.client)
    text = str(info.value)
    assert f"{excluded} (excluded by organizations.exclude_accounts)" in text
    assert OUTSIDE in text
    assert f"{dev}," not in text
    assert objects(store) == before  # the refused run wrote nothing


# --- the write decision -------------------------------------------------------------------------------------


def partial(run_id: str = "scheduled__x", **extra: Any) -> dict[str, Any]:
    coverage_ = [
        {"account": "1", "region": "r", "status": "OK"},
        {"account": "2", "region": None, "status": "X"},
    ]
    return {"complete": False, "row_count": 5, "coverage": coverage_, "dag_run_id": run_id, **extra}


def complete(run_id: str = "scheduled__x", **extra: Any) -> dict[str, Any]:
    return {"complete": True, "row_count": 5, "coverage": [], "dag_run_id": run_id, **extra}


BIG_RANK = (0, 1000, 10**6)  # a subset with many regions and rows: rank alone would let it win


@pytest.mark.parametrize(
    "existing",
    [None, partial(), complete(), partial(run_id=MANUAL.run_id)],
    ids=["none", "partial", "complete", "own-earlier-attempt"],
)
def test_a_subset_never_writes_without_overwrite(existing: dict[str, Any] | None) -> None:
    write, why = decide_write(existing, BIG_RANK, False, MANUAL.run_id, subset=True)
    assert write is False
    assert "subset" in why
    assert "overwrite=true" in why


@pytest.mark.parametrize("existing", [None, partial(), complete()], ids=["none", "partial", "complete"])
def test_overwrite_writes_a_subset_and_says_so(existing: dict[str, Any] | None) -> None:
    write, why = decide_write(existing, (0, 0, 0), True, MANUAL.run_id, subset=True)
    assert write is True
    assert "subset" in why


def test_a_subset_is_never_complete_even_in_older_manifests() -> None:
    assert is_complete(complete()) is True
    assert is_complete(complete(subset=True)) is False
    # Written before this fix: a Param run measured against its own list said "complete".
    legacy = complete(accounts_source="params.accounts")
    assert is_subset(legacy) is True
    assert is_complete(legacy) is False
    assert snapshot_rank(legacy)[0] == 0
    assert is_subset(complete(accounts_source="params.accounts", subset=False)) is False
    # ...so the nightly run may replace it, and resolve does not skip the date because of it.
    assert decide_write(legacy, (0, 1, 1), False, NIGHTLY.run_id) == (
        True,
        "replaces a partial snapshot (run scheduled__x) with a more complete one",
    )


# --- merge: the nightly 2-of-3 snapshot and a manual run over one account -----------------------------------


def test_a_param_subset_does_not_replace_a_better_snapshot_or_latest(store: SnapshotStore) -> None:
    nightly = nightly_two_of_three(store)
    before = objects(store)
    snapshot_keys = {k: v for k, v in before.items() if "/_staging/" not in k}
    assert f"{PREFIX}/latest/{CSV_NAME}" in snapshot_keys

    _, plan, summary = subset_run(store, {"accounts": [A.id]})

    assert plan["skip_reason"] is None  # the nightly snapshot is partial: the subset is scanned...
    assert summary["written"] is False  # ...but never replaces it
    assert summary["latest_updated"] is False
    assert summary["subset"] is True
    assert summary["accounts_requested"] == [A.id]
    assert "subset" in summary["decision_reason"]
    after = objects(store)
    assert {k: v for k, v in after.items() if "/_staging/" not in k} == snapshot_keys
    # The run's own manifest (in its staging prefix) is measured against all three accounts.
    staged = store.get_json(f"{store.layout.staging(DS, MANUAL.run_id)}/{MANIFEST_NAME}")
    assert staged is not None
    assert staged["subset"] is True
    assert staged["accounts_requested"] == [A.id]
    assert staged["complete"] is False
    assert (staged["accounts_expected"], staged["accounts_covered"]) == (3, 1)
    assert {(e["account"], e["status"]) for e in staged["coverage"] if e["account"] != A.id} == {
        (B.id, contract.NOT_REQUESTED),
        (C.id, contract.NOT_REQUESTED),
    }
    # The summary and the notification describe the date's snapshot (the nightly one), and the subset.
    assert (summary["accounts_covered"], summary["accounts_expected"]) == (2, 3)
    text = notify.message(summary)
    assert "(not rewritten by this run)" in text
    assert "Subset:   only the 1 account(s) its param names" in text
    assert "Complete: no" in text
    assert "Why:      this run scanned only the accounts its 'accounts' param names" in text
    assert f"{B.id} (Development): ROLE_NOT_ASSUMABLE" in text  # the nightly snapshot's gap
    assert nightly["dag_run_id"] != MANUAL.run_id


def test_a_param_naming_every_expected_account_is_a_full_run(store: SnapshotStore) -> None:
    nightly_two_of_three(store)
    _, _, summary = subset_run(store, {"accounts": [C.id, A.id, B.id]})
    assert summary["subset"] is False
    assert summary["written"] is True  # complete beats the nightly partial
    manifest = store.get_json(store.layout.snapshot(DS, MANIFEST_NAME))
    assert manifest is not None
    assert (manifest["complete"], manifest["subset"], manifest["accounts_requested"]) == (True, False, None)


def test_overwrite_replaces_with_a_subset_that_the_manifest_records(store: SnapshotStore) -> None:
    nightly_two_of_three(store)

    _, _, summary = subset_run(store, {"accounts": [A.id], "overwrite": True})

    assert summary["written"] is True
    assert summary["latest_updated"] is True
    assert summary["snapshot_complete"] is False
    for where in (store.layout.snapshot(DS, MANIFEST_NAME), store.layout.latest(MANIFEST_NAME)):
        manifest = store.get_json(where)
        assert manifest is not None, where
        assert manifest["dag_run_id"] == MANUAL.run_id, where
        assert manifest["subset"] is True, where
        assert manifest["accounts_requested"] == [A.id], where
        assert manifest["complete"] is False, where
        assert manifest["accounts_expected"] == 3, where
        assert {e["id"] for e in manifest["expected_accounts"]} == {A.id, B.id, C.id}, where
    assert "Subset:" in notify.message(summary)

    # The next full run of the date (complete) replaces the subset without overwrite.
    full = run_info("manual__2026-11-20T12:00:00+00:00")
    settings = parse_settings(variable())
    plan = resolve_accounts(settings, full, store, False)
    assert plan["skip_reason"] is None
    for account in (A, B, C):
        report_ok(store, full, account, {"us-east-1": 1})
    assert merge_inventory(settings, full, store, plan["expected"], plan=plan)["written"] is True
    manifest = store.get_json(store.layout.snapshot(DS, MANIFEST_NAME))
    assert manifest is not None
    assert (manifest["dag_run_id"], manifest["complete"], manifest["subset"]) == (full.run_id, True, False)
