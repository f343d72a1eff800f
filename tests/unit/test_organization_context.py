"""
The organisation context of the expected accounts (moto in-process, botocore's Stubber for paging): OU
paths from the root down, account tags (ListTagsForResource, an optional permission), and how both reach
the plan, a Param-subset run, the scan's records and the manifest.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.stub import Stubber

from include.cmdb_inventory.config import Account, OrganizationsSettings, parse_settings
from include.cmdb_inventory.inventory import account_of, merge_inventory, resolve_accounts
from include.cmdb_inventory.organizations import discover
from include.cmdb_inventory.records import instance_record
from include.cmdb_inventory.run import RunInfo
from include.cmdb_inventory.storage import SnapshotStore
from tests.unit.test_organizations import Org

BUCKET = "cmdb-org-context-tests"


@pytest.fixture
def org(mocked_aws: None) -> Org:
    return Org()


@pytest.fixture
def s3_bucket() -> str:
    return BUCKET


def _run(org: Org, ds: str) -> RunInfo:
    return RunInfo(
        dag_id="cmdb_ec2_inventory",
        run_id=f"manual__{org.management}",
        ds=ds,
        logical_date=f"{ds}T00:00:00+00:00",
    )


def _tag(org: Org, account_id: str, **tags: str) -> None:
    org.client.tag_resource(ResourceId=account_id, Tags=[{"Key": k, "Value": v} for k, v in tags.items()])


class _Calls:
    """An Organizations client's API calls by operation, with their parameters (a client event hook)."""

    def __init__(self, client: Any) -> None:
        self.by_operation: dict[str, list[dict[str, Any]]] = {}
        client.meta.events.register("provide-client-params.organizations", self)

    def __call__(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.by_operation.setdefault(model.name, []).append(dict(params))

    def values(self, operation: str, key: str) -> list[str]:
        return sorted(str(p[key]) for p in self.by_operation.get(operation, []))


def _deny_tags(client: Any) -> None:
    """ListTagsForResource answers 400 AccessDeniedException (before moto sees it), like a missing grant."""

    def deny(**_: Any) -> AWSResponse:
        body = json.dumps(
            {
                "__type": "AccessDeniedException",
                "Message": "You don't have permissions to access this resource.",
            }
        ).encode()

        class Raw:
            def stream(self, **__: Any) -> Any:
                yield body

        return AWSResponse("http://127.0.0.1/", 400, {"Content-Type": "application/x-amz-json-1.1"}, Raw())

    client.meta.events.register_first("before-send.organizations.ListTagsForResource", deny)


# --- OU paths -----------------------------------------------------------------------------------------------


def test_ou_paths_for_nested_ous_and_for_accounts_at_the_root(org: Org) -> None:
    workloads = org.ou("Workloads")
    prod = org.ou("Prod", workloads)
    payments = org.ou("Payments", prod)
    at_root = org.account("at-root")
    in_workloads = org.account("w", workloads)
    in_prod = org.account("p", prod)
    in_payments = org.account("pay", payments)

    found = discover(org.client, OrganizationsSettings())

    paths = {a.id: a.ou_path for a in found.accounts}
    assert paths == {
        org.management: "Root",
        at_root: "Root",
        in_workloads: "Root/Workloads",
        in_prod: "Root/Workloads/Prod",
        in_payments: "Root/Workloads/Prod/Payments",
    }
    assert {e["id"]: e["ou_path"] for e in found.expected()} == paths
    assert found.organization_context == {"ou_paths": True, "tags": True}


def test_include_ous_subset_keeps_the_paths_from_the_root(org: Org) -> None:
    workloads = org.ou("Workloads")
    prod = org.ou("Prod", workloads)
    dev = org.ou("Dev", workloads)
    legacy = org.ou("Legacy", prod)
    in_prod = org.account("p", prod)
    in_legacy = org.account("l", legacy)
    org.account("d", dev)  # outside include_ous: out of scope
    org.account("at-root")

    calls = _Calls(org.client)
    found = discover(org.client, OrganizationsSettings(include_ous=(prod,)))

    assert {a.id: a.ou_path for a in found.accounts} == {
        in_prod: "Root/Workloads/Prod",
        in_legacy: "Root/Workloads/Prod/Legacy",
    }
    assert found.not_scanned == []
    # Accounts are listed only inside the included subtree (the OUs everywhere, for the names).
    assert calls.values("ListAccountsForParent", "ParentId") == sorted([prod, legacy])


def test_an_exclude_ou_above_an_include_ou_does_not_drop_it(org: Org) -> None:
    """As before the walk started at the root: exclusions apply within the included subtree only."""
    workloads = org.ou("Workloads")
    prod = org.ou("Prod", workloads)
    in_prod = org.account("p", prod)

    found = discover(org.client, OrganizationsSettings(include_ous=(prod,), exclude_ous=(workloads,)))

    assert [a.id for a in found.accounts] == [in_prod]
    assert found.not_scanned == []


# --- tags ---------------------------------------------------------------------------------------------------


def test_tags_are_read_for_each_scanned_or_static_account_in_the_org_only(org: Org) -> None:
    ou = org.ou("Workloads")
    scanned = org.account("scanned", ou)
    static_in_org = org.account("static-in-org", ou)
    excluded = org.account("excluded", ou)
    closed = org.account("closed", ou, closed=True)
    for account_id in (scanned, static_in_org, excluded, closed):
        _tag(org, account_id, owner=f"team-{account_id[-3:]}", **{"cost-center": "=cc 42"})
    outside = "123412341234"  # static, not in the organisation: nothing to ask
    static = [Account(static_in_org, "Static"), Account(outside, "Elsewhere")]

    calls = _Calls(org.client)
    found = discover(
        org.client, OrganizationsSettings(include_ous=(ou,), exclude_accounts=(excluded,)), static
    )

    by_id = {a.id: a for a in found.accounts}
    assert by_id[scanned].tags == (("cost-center", "=cc 42"), ("owner", f"team-{scanned[-3:]}"))
    assert by_id[static_in_org].tags == (("cost-center", "=cc 42"), ("owner", f"team-{static_in_org[-3:]}"))
    assert by_id[static_in_org].ou_path == "Root/Workloads"
    assert by_id[static_in_org].name == "Static"
    assert by_id[outside].tags == ()
    assert by_id[outside].ou_path == ""
    assert calls.values("ListTagsForResource", "ResourceId") == sorted([scanned, static_in_org])
    expected = {e["id"]: e for e in found.expected()}
    assert expected[scanned]["tags"] == {"cost-center": "=cc 42", "owner": f"team-{scanned[-3:]}"}
    assert expected[outside]["tags"] == {}
    assert expected[outside]["ou_path"] == ""


def test_tags_follow_next_token_across_pages() -> None:
    """moto answers ListTagsForResource in one page: botocore's Stubber plays AWS's paged answers."""
    client = boto3.client(
        "organizations", region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s"
    )
    account = {"Id": "210987654321", "Name": "Paged", "State": "ACTIVE", "Arn": "arn:aws:organizations::1"}
    with Stubber(client) as stub:
        stub.add_response("list_roots", {"Roots": [{"Id": "r-ab12", "Name": "Root"}]})
        stub.add_response("list_accounts_for_parent", {"Accounts": [account]}, {"ParentId": "r-ab12"})
        stub.add_response(
            "list_organizational_units_for_parent", {"OrganizationalUnits": []}, {"ParentId": "r-ab12"}
        )
        stub.add_response(
            "list_tags_for_resource",
            {"Tags": [{"Key": "owner", "Value": "payments"}], "NextToken": "page-2"},
            {"ResourceId": account["Id"]},
        )
        stub.add_response(
            "list_tags_for_resource",
            {"Tags": [{"Key": "cost-center", "Value": "4711"}]},
            {"ResourceId": account["Id"], "NextToken": "page-2"},
        )
        found = discover(client, OrganizationsSettings())
        stub.assert_no_pending_responses()

    assert found.accounts == [
        Account(
            "210987654321", "Paged", ou_path="Root", tags=(("cost-center", "4711"), ("owner", "payments"))
        )
    ]


def test_denied_tags_keep_the_run_going_and_the_manifest_says_so(
    org: Org, store: SnapshotStore, caplog: pytest.LogCaptureFixture
) -> None:
    ou = org.ou("Workloads")
    active = org.account("Active", ou)
    _tag(org, active, owner="someone")
    _deny_tags(org.client)
    settings = parse_settings({"bucket": BUCKET, "organizations": {"include_ous": [ou]}})
    run = _run(org, "2026-12-03")

    with caplog.at_level(logging.WARNING, logger="include.cmdb_inventory.organizations"):
        plan: dict[str, Any] = resolve_accounts(settings, run, store, False, org_client=org.client)

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "ListTagsForResource" in warnings[0].getMessage()
    assert "AccessDeniedException" in warnings[0].getMessage()
    scanned = [account_of(store, run, a) for a in plan["accounts"]]
    assert scanned == [Account(active, "Active", "Root/Workloads")]
    merge_inventory(settings, run, store, plan["expected"], plan=plan)
    manifest = store.get_json(store.layout.snapshot(run.ds, "manifest.json"))
    assert manifest is not None
    assert manifest["organization_context"] == {
        "ou_paths": True,
        "tags": False,
        "tags_error": "AccessDeniedException: You don't have permissions to access this resource.",
    }
    assert manifest["expected_accounts"] == [
        {"id": active, "name": "Active", "source": "organizations", "ou_path": "Root/Workloads", "tags": {}}
    ]


def test_another_tags_error_still_fails_the_run(org: Org) -> None:
    """Only a denial is tolerated: anything else (here an unknown target) is raised as before."""
    from botocore.exceptions import ClientError

    org.account("Active")

    def gone(**_: Any) -> AWSResponse:
        body = json.dumps({"__type": "TargetNotFoundException", "Message": "gone"}).encode()

        class Raw:
            def stream(self, **__: Any) -> Any:
                yield body

        return AWSResponse("http://127.0.0.1/", 400, {}, Raw())

    org.client.meta.events.register_first("before-send.organizations.ListTagsForResource", gone)
    with pytest.raises(ClientError, match="TargetNotFoundException"):
        discover(org.client, OrganizationsSettings())


# --- the run ------------------------------------------------------------------------------------------------


def test_a_param_subset_run_keeps_ou_path_and_tags(org: Org, store: SnapshotStore) -> None:
    prod = org.ou("Prod", org.ou("Workloads"))
    picked = org.account("Picked", prod)
    org.account("Other", prod)
    _tag(org, picked, owner="payments")
    settings = parse_settings(
        {"bucket": BUCKET, "organizations": {"include_ous": [prod]}}, {"accounts": [{"id": picked}]}
    )

    run = _run(org, "2026-12-04")
    plan: dict[str, Any] = resolve_accounts(settings, run, store, False, org_client=org.client)

    # The mapped list stays small (every scan pulls it whole); the context waits in staging.
    assert plan["accounts"] == [
        {"id": picked, "name": "Picked", "label": f"{picked} (Picked)", "context": "staging"}
    ]
    assert [account_of(store, run, a) for a in plan["accounts"]] == [
        Account(picked, "Picked", "Root/Workloads/Prod", (("owner", "payments"),))
    ]


def test_the_scan_task_gets_the_context_from_staging_and_writes_it_in_the_record(
    store: SnapshotStore,
) -> None:
    """The mapped task's argument is JSON (an XCom) without tags; its scan reads its own context document."""
    from include.cmdb_inventory.inventory import write_contexts

    run = RunInfo("cmdb_ec2_inventory", "scheduled__2026-12-05T02:00:00+00:00", "2026-12-05", "2026-12-05")
    account = Account("123456789012", "Prod", ou_path="Root/Workloads/Prod", tags=(("owner", 'a"b'),))
    mapped = json.loads(json.dumps(account.to_dict()))
    assert "tags" not in mapped
    assert "ou_path" not in mapped
    write_contexts(store, run, [account])
    received = account_of(store, run, mapped)
    assert received == account

    record, _ = instance_record(received, "eu-west-1", {"InstanceId": "i-1"}, "2026-12-01T00:00:00Z")
    assert record["AccountOuPath"] == "Root/Workloads/Prod"
    assert json.loads(record["AccountTags"]) == {"owner": 'a"b'}
    # A context that is gone (staging expired) costs the two columns, never the account's instances.
    store.s3.delete_object(
        Bucket=store.bucket, Key=store.layout.context(store.layout.staging(run.ds, run.run_id), account.id)
    )
    assert account_of(store, run, mapped) == Account("123456789012", "Prod")
