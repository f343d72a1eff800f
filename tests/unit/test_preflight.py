"""The preflight against moto's server: role, enabled regions, allowed regions; the report; no snapshot."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest

from include.cmdb_inventory import preflight
from include.cmdb_inventory.aws.hooks import CrossAccountHook
from include.cmdb_inventory.config import Account, parse_settings
from include.cmdb_inventory.run import RunInfo
from include.cmdb_inventory.storage import SnapshotStore

pytestmark = pytest.mark.usefixtures("hub_connection")

REGIONS = ("eu-west-1", "us-east-1", "us-west-2")
BUCKET = "cmdb-preflight-tests"
_ACCOUNTS = itertools.count(610000000001)


def new_account() -> Account:
    return Account(id=str(next(_ACCOUNTS)), name="Onboarding")


def fail_in(hook: CrossAccountHook, region: str, response: Any) -> None:
    """DescribeInstances in ``region`` answers ``response`` (botocore's real parsing runs)."""
    hook.client("ec2", region).meta.events.register("before-send.ec2.DescribeInstances", lambda **_: response)


def test_a_ready_account_lists_enabled_and_allowed_regions() -> None:
    account = new_account()
    hook = CrossAccountHook(account_id=account.id)
    doc = preflight.probe_account(hook, account, regions=REGIONS)
    assert doc["status"] == "OK"
    assert doc["role_arn"] == f"arn:aws:iam::{account.id}:role/CMDBDiscovery"
    assert doc["regions_allowed"] == list(REGIONS)
    assert doc["regions_enabled"] == list(REGIONS)
    assert preflight.reasons_of(doc) == []


def test_denied_and_disabled_regions(aws_error: Callable[..., Any]) -> None:
    account = new_account()
    hook = CrossAccountHook(account_id=account.id, max_attempts=1)
    fail_in(hook, "eu-west-1", aws_error("UnauthorizedOperation", "explicit deny in an SCP", status=403))
    fail_in(hook, "us-west-2", aws_error("AuthFailure", "region not enabled", status=401))

    doc = preflight.probe_account(hook, account, regions=REGIONS)

    statuses = {e["region"]: e["status"] for e in doc["regions"]}
    assert statuses == {"eu-west-1": "REGION_DENIED", "us-east-1": "OK", "us-west-2": "REGION_DISABLED"}
    assert doc["status"] == "REGION_DENIED"
    assert doc["regions_allowed"] == ["us-east-1"]
    assert doc["regions_enabled"] == ["eu-west-1", "us-east-1"]
    assert preflight.reasons_of(doc) == [
        "eu-west-1 REGION_DENIED: UnauthorizedOperation: explicit deny in an SCP"
    ]
    # When denied regions are accepted (denied_regions_fail_coverage=false), the account is ready.
    assert preflight.reasons_of(doc, denied_is_gap=False) == []


def test_a_role_that_cannot_be_assumed(aws_error: Callable[..., Any]) -> None:
    account = new_account()
    hook = CrossAccountHook(account_id=account.id)
    hook.hub_sts.meta.events.register(
        "before-send.sts.AssumeRole",
        lambda **_: aws_error("AccessDenied", "not authorized to perform sts:AssumeRole", 403, "query"),
    )
    doc = preflight.probe_account(hook, account, regions=REGIONS)
    assert doc["status"] == "ROLE_NOT_ASSUMABLE"
    assert doc["regions"] == []
    [reason] = preflight.reasons_of(doc)
    assert reason.startswith(
        f"ROLE_NOT_ASSUMABLE: cannot assume arn:aws:iam::{account.id}:role/CMDBDiscovery"
    )
    assert "AccessDenied" in reason


@pytest.fixture
def store(moto_url: str) -> SnapshotStore:
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")
    if BUCKET not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=BUCKET)
    return SnapshotStore(s3, BUCKET, "cmdb/ec2-inventory")


def test_report_under_staging_and_nothing_else(store: SnapshotStore, aws_error: Callable[..., Any]) -> None:
    ready, broken, silent = new_account(), new_account(), new_account()
    settings = parse_settings(
        {"bucket": BUCKET, "accounts": [ready.id, broken.id, silent.id], "regions": list(REGIONS)}
    )
    run = RunInfo(
        dag_id="cmdb_ec2_inventory", run_id=f"manual__pf{ready.id}", ds="2026-12-03", logical_date="x"
    )

    assert preflight.check_account(settings, run, ready, store)["ready"] is True
    bad_hook = CrossAccountHook(account_id=broken.id)
    bad_hook.hub_sts.meta.events.register(
        "before-send.sts.AssumeRole", lambda **_: aws_error("AccessDenied", "denied", 403, "query")
    )
    assert preflight.check_account(settings, run, broken, store, hook=bad_hook)["ready"] is False
    # ``silent``'s task never reported (killed): it is not ready either.
    expected = [a.to_dict() for a in (ready, broken, silent)]

    summary = preflight.write_report(settings, run, store, expected, {"not_scanned": [{"id": "x"}]})

    assert summary["mode"] == "preflight"
    assert summary["ready"] is False
    assert (summary["accounts_expected"], summary["accounts_ready"], summary["not_ready_count"]) == (3, 1, 2)
    assert {n["account"]: n["status"] for n in summary["not_ready"]} == {
        broken.id: "ROLE_NOT_ASSUMABLE",
        silent.id: "TASK_FAILED",
    }
    staging = store.layout.staging(run.ds, run.run_id)
    assert summary["report_uri"] == f"s3://{BUCKET}/{staging}/preflight.json"
    report = store.get_json(f"{staging}/preflight.json")
    assert report is not None
    assert report["accounts_not_scanned"] == [{"id": "x"}]
    assert [a["account"] for a in report["accounts"]] == sorted([ready.id, broken.id, silent.id])
    # Nothing outside the run's staging prefix: no CSV, no manifest, no latest/.
    keys = [o["Key"] for o in store.s3.list_objects_v2(Bucket=BUCKET, Prefix="cmdb/").get("Contents", [])]
    run_keys = [k for k in keys if run.run_id.split("__")[1] in k]
    assert run_keys
    assert all(k.startswith(staging + "/") for k in run_keys)
    assert not any(k.endswith(("ec2_inventory.csv", "manifest.json")) for k in keys if "ds=2026-12-03" in k)

    text = preflight.message(summary)
    assert summary["report_uri"] in text
    assert "1 of 3 ready" in text
    assert f"{broken.id} (Onboarding): ROLE_NOT_ASSUMABLE" in text
    assert "AccessDenied" in text
    assert "NOT READY" in preflight.subject(summary)
    with pytest.raises(preflight.NotReadyError, match=broken.id):
        preflight.check_ready(summary)


def test_check_ready_passes_when_every_account_is_ready() -> None:
    preflight.check_ready({"ready": True, "report_uri": "s3://b/k", "ds": "2026-12-03"})


def test_the_inventory_dags_deprecated_mode_param_still_runs_the_preflight_and_says_so(
    store: SnapshotStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """
    ``mode=preflight`` on ``cmdb_ec2_inventory`` (deprecated for one release): its five tasks, through the
    adapter as the DAG calls them, check the accounts instead of scanning them, and every task's log, the
    merge's XCom and the notification say to use ``cmdb_ec2_inventory_preflight``.
    """
    from airflow.sdk import Variable

    from include.cmdb_inventory import tasks

    account = new_account()
    variable = {"bucket": BUCKET, "accounts": [account.id], "regions": list(REGIONS)}
    monkeypatch.setattr(Variable, "get", staticmethod(lambda key, default=None: json.dumps(variable)))
    monkeypatch.setattr(tasks, "store_for", lambda settings: store)
    xcoms: dict[str, Any] = {}

    class Ti:
        try_number = 1

        def xcom_push(self, key: str, value: Any) -> None:
            xcoms[key] = value

        def xcom_pull(self, task_ids: str, key: str) -> Any:
            return xcoms.get(key)

    class DagRun:
        dag_id = "cmdb_ec2_inventory"
        run_id = f"manual__deprecated{account.id}"
        logical_date = datetime(2026, 12, 4, 2, tzinfo=UTC)

    context: dict[str, Any] = {"params": {"mode": "preflight"}, "ti": Ti(), "dag_run": DagRun()}
    with caplog.at_level(logging.INFO):
        accounts = tasks.resolve(context)
        checked = [tasks.scan(context, a) for a in accounts]
        summary = tasks.merge(context)
        receipt = tasks.notify(context, summary)
        tasks.check(context, summary)  # every account is ready: the preflight's check passes

    assert checked == [{"account": account.id, "ready": True, "status": "OK"}]
    assert summary["mode"] == "preflight"
    assert summary["ready"] is True
    assert summary["deprecation"] == tasks.DEPRECATION
    assert "deprecated" in tasks.DEPRECATION
    assert "cmdb_ec2_inventory_preflight" in tasks.DEPRECATION
    warnings = [r for r in caplog.records if r.name == tasks.__name__ and r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [f"DEPRECATED: {tasks.DEPRECATION}"] * 5  # each task's log
    # No topic is configured: the notification is logged, and it says so too.
    assert receipt["message_id"] is None
    assert f"DEPRECATED: {tasks.DEPRECATION}" in caplog.text
    staging = store.layout.staging(tasks.run_info(context).ds, DagRun.run_id)
    assert store.get_json(f"{staging}/preflight.json") is not None
    assert store.get_json(store.layout.snapshot("2026-12-04", "manifest.json")) is None  # no snapshot


@pytest.mark.parametrize("mode", [None, "", "inventory"])
def test_an_inventory_run_is_no_preflight_and_says_nothing_of_it(
    mode: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    from include.cmdb_inventory import tasks

    assert tasks.deprecated_preflight({"params": {"mode": mode}}) is False
    assert tasks.deprecated_preflight({}) is False
    assert "DEPRECATED" not in caplog.text


def test_an_unknown_mode_fails_the_run_for_good() -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from include.cmdb_inventory import tasks

    with pytest.raises(AirflowFailException, match="invalid param mode: 'scan'"):
        tasks.deprecated_preflight({"params": {"mode": "scan"}})
