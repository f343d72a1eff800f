"""Accounts from AWS Organizations (moto in-process): the OU walk, exclusions, states, the static union."""

from __future__ import annotations

import itertools
from typing import Any

import boto3
import pytest

from devtools.world import session_in
from include.cmdb_inventory import organizations
from include.cmdb_inventory.config import Account, ConfigError, OrganizationsSettings, parse_settings
from include.cmdb_inventory.inventory import merge_inventory, resolve_accounts
from include.cmdb_inventory.organizations import discover
from include.cmdb_inventory.run import RunInfo
from include.cmdb_inventory.storage import SnapshotStore

REGION = "us-east-1"
BUCKET = "cmdb-org-tests"
_MANAGEMENT_IDS = itertools.count(900000000001)


class Org:
    """A fresh organisation (its own management account, so tests never share one) and helpers."""

    def __init__(self) -> None:
        self.management = str(next(_MANAGEMENT_IDS))
        creds = boto3.client("sts", region_name=REGION).assume_role(
            RoleArn=f"arn:aws:iam::{self.management}:role/OrganizationsReader", RoleSessionName="tests"
        )["Credentials"]
        self.client = boto3.client(
            "organizations",
            region_name=REGION,
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
        )
        self.client.create_organization(FeatureSet="ALL")
        self.root = self.client.list_roots()["Roots"][0]["Id"]

    def ou(self, name: str, parent: str | None = None) -> str:
        return self.client.create_organizational_unit(ParentId=parent or self.root, Name=name)[
            "OrganizationalUnit"
        ]["Id"]

    def account(self, name: str, ou: str | None = None, *, closed: bool = False) -> str:
        account_id = self.client.create_account(AccountName=name, Email=f"{name}@example.com")[
            "CreateAccountStatus"
        ]["AccountId"]
        if ou:
            self.client.move_account(AccountId=account_id, SourceParentId=self.root, DestinationParentId=ou)
        if closed:
            self.client.close_account(AccountId=account_id)
        return account_id


@pytest.fixture
def org(mocked_aws: None) -> Org:
    return Org()


def ids(accounts: list[Account]) -> list[str]:
    return [a.id for a in accounts]


# --- discovery ----------------------------------------------------------------------------------------------


def test_whole_organisation_only_active_accounts_named_from_organizations(org: Org) -> None:
    dev = org.account("Development")
    prod = org.account("Production", org.ou("Workloads"))
    gone = org.account("Closed", closed=True)

    found = discover(org.client, OrganizationsSettings())

    assert ids(found.accounts) == sorted([org.management, dev, prod])
    assert {a.id: a.name for a in found.accounts}[prod] == "Production"
    assert found.source == "organizations"
    assert found.not_scanned == [
        {
            "id": gone,
            "name": "Closed",
            "state": "SUSPENDED",
            "reason": "state SUSPENDED in AWS Organizations: only ACTIVE accounts are scanned",
        }
    ]
    assert {e["source"] for e in found.expected()} == {"organizations"}


def test_include_ous_take_children_recursively_and_nothing_else(org: Org) -> None:
    workloads = org.ou("Workloads")
    prod = org.ou("Prod", workloads)
    deep = org.ou("Payments", prod)
    sandbox = org.ou("Sandbox")
    in_workloads = org.account("w", workloads)
    in_prod = org.account("p", prod)
    in_deep = org.account("d", deep)
    org.account("s", sandbox)
    org.account("at-root")

    found = discover(org.client, OrganizationsSettings(include_ous=(workloads,)))

    assert ids(found.accounts) == sorted([in_workloads, in_prod, in_deep])
    assert found.not_scanned == []  # accounts outside include_ous are out of scope, not "not scanned"


def test_exclusions_are_listed_with_why(org: Org) -> None:
    workloads = org.ou("Workloads")
    prod = org.ou("Prod", workloads)
    legacy = org.ou("Legacy", prod)
    keep = org.account("keep", workloads)
    dropped = org.account("dropped", workloads)
    in_legacy = org.account("legacy", legacy)
    in_prod = org.account("prod", prod)

    spec = OrganizationsSettings(include_ous=(workloads,), exclude_ous=(prod,), exclude_accounts=(dropped,))
    found = discover(org.client, spec)

    assert ids(found.accounts) == [keep]
    reasons = {n["id"]: n["reason"] for n in found.not_scanned}
    assert reasons == {
        dropped: "excluded by organizations.exclude_accounts",
        in_prod: f"under {prod}, excluded by organizations.exclude_ous",
        in_legacy: f"under {prod}, excluded by organizations.exclude_ous",  # the nearest excluded ancestor
    }
    assert all(n["state"] == "ACTIVE" for n in found.not_scanned)


def test_exclude_ous_without_include_walks_from_the_root(org: Org) -> None:
    sandbox = org.ou("Sandbox")
    inside = org.account("inside", sandbox)
    outside = org.account("outside")

    found = discover(org.client, OrganizationsSettings(exclude_ous=(sandbox,)))

    assert ids(found.accounts) == sorted([org.management, outside])
    assert [n["id"] for n in found.not_scanned] == [inside]


def test_suspended_accounts_in_an_included_ou(org: Org) -> None:
    ou = org.ou("Workloads")
    active = org.account("active", ou)
    closed = org.account("closed", ou, closed=True)

    found = discover(org.client, OrganizationsSettings(include_ous=(ou,)))

    assert ids(found.accounts) == [active]
    assert [(n["id"], n["state"]) for n in found.not_scanned] == [(closed, "SUSPENDED")]


def test_pages_past_one_response(org: Org) -> None:
    """moto answers ListAccountsForParent 20 at a time: the paginator must follow NextToken."""
    ou = org.ou("Big")
    created = [org.account(f"a{i}", ou) for i in range(23)]

    found = discover(org.client, OrganizationsSettings(include_ous=(ou,)))

    assert ids(found.accounts) == sorted(created)


def test_static_accounts_union_static_names_win_blanks_are_filled(org: Org) -> None:
    named = org.account("OrgName")
    blank = org.account("FilledFromOrg")
    closed = org.account("Closed", closed=True)
    outside = "123412341234"  # not in the organisation at all: kept, it was listed on purpose
    static = [Account(named, "StaticName"), Account(blank), Account(outside, "Elsewhere"), Account(closed)]

    found = discover(org.client, OrganizationsSettings(), static)

    by_id = {a.id: a for a in found.accounts}
    assert ids(found.accounts)[:3] == [named, blank, outside]  # the static list first, in its order
    assert by_id[named].name == "StaticName"
    assert by_id[blank].name == "FilledFromOrg"
    assert by_id[outside].name == "Elsewhere"
    assert org.management in by_id
    assert closed not in by_id
    assert [n["id"] for n in found.not_scanned] == [closed]
    assert "listed in accounts" in found.not_scanned[0]["reason"]
    sources = {e["id"]: e["source"] for e in found.expected()}
    assert sources[named] == sources[blank] == "accounts+organizations"
    assert sources[outside] == "accounts"
    assert sources[org.management] == "organizations"
    assert found.source == "accounts+organizations"


def test_an_unknown_include_ou_is_a_config_error_naming_it(org: Org) -> None:
    real = org.ou("Real")
    missing = "ou-zzzz-zzzzzzzz"
    with pytest.raises(ConfigError) as info:
        discover(org.client, OrganizationsSettings(include_ous=(real, missing)))
    assert info.value.key == "organizations.include_ous[1]"
    assert missing in str(info.value)


def test_resolve_refuses_an_empty_scope(org: Org) -> None:
    empty = org.ou("Empty")
    settings = parse_settings({"bucket": BUCKET, "organizations": {"include_ous": [empty]}})
    with pytest.raises(ConfigError, match="no ACTIVE account in scope"):
        organizations.expected_accounts(settings, org.client)


def test_params_accounts_override_discovery(org: Org) -> None:
    settings = parse_settings(
        {"bucket": BUCKET, "organizations": {}}, {"accounts": [{"id": "222222222222", "name": "one"}]}
    )
    found = organizations.expected_accounts(settings, client=None)  # no client: it must not ask Organizations
    assert ids(found.accounts) == ["222222222222"]
    assert found.source == "params.accounts"


# --- resolve_accounts and the manifest ----------------------------------------------------------------------


@pytest.fixture
def s3_bucket() -> str:
    """The conftest's ``store`` on this module's bucket."""
    return BUCKET


def test_the_expected_list_is_resolved_at_run_time_and_saved_in_the_manifest(
    org: Org, store: SnapshotStore
) -> None:
    ou = org.ou("Workloads")
    active = org.account("Active", ou)
    closed = org.account("Closed", ou, closed=True)
    settings = parse_settings(
        {
            "bucket": BUCKET,
            "accounts": [{"id": "444444444444", "name": "Static"}],
            "organizations": {"include_ous": [ou]},
        }
    )
    run = RunInfo(
        dag_id="cmdb_ec2_inventory",
        run_id=f"manual__{org.management}",
        ds="2026-12-01",
        logical_date="2026-12-01T00:00:00+00:00",
    )

    plan: dict[str, Any] = resolve_accounts(settings, run, store, False, org_client=org.client)

    assert [a["id"] for a in plan["accounts"]] == ["444444444444", active]
    assert plan["expected"] == plan["accounts"]
    assert plan["accounts_source"] == "accounts+organizations"
    assert [n["id"] for n in plan["not_scanned"]] == [closed]

    merge_inventory(settings, run, store, plan["expected"], plan=plan)
    manifest = store.get_json(store.layout.snapshot(run.ds, "manifest.json"))
    assert manifest is not None
    assert manifest["expected_accounts"] == sorted(
        [
            # Outside include_ous: not looked up in the organisation, so no organisation context.
            {"id": "444444444444", "name": "Static", "source": "accounts", "ou_path": "", "tags": {}},
            {
                "id": active,
                "name": "Active",
                "source": "organizations",
                "ou_path": "Root/Workloads",
                "tags": {},
            },
        ],
        key=lambda a: a["id"],
    )
    assert manifest["organization_context"] == {"ou_paths": True, "tags": True}
    assert manifest["accounts_not_scanned"] == [
        {"id": closed, "name": "Closed", "state": "SUSPENDED", "reason": plan["not_scanned"][0]["reason"]}
    ]
    assert manifest["accounts_source"] == "accounts+organizations"
    # Coverage is measured against the expected list: neither account reported, so both are gaps.
    assert manifest["accounts_expected"] == 2
    assert manifest["complete"] is False
    assert {e["account"] for e in manifest["coverage"]} == {"444444444444", active}


def test_a_static_only_manifest_lists_its_expected_accounts(store: SnapshotStore) -> None:
    settings = parse_settings({"bucket": BUCKET, "accounts": ["555555555555"]})
    run = RunInfo(
        dag_id="d", run_id="manual__static", ds="2026-12-02", logical_date="2026-12-02T00:00:00+00:00"
    )
    plan = resolve_accounts(settings, run, store, False)
    merge_inventory(settings, run, store, plan["expected"], plan=plan)
    manifest = store.get_json(store.layout.snapshot(run.ds, "manifest.json"))
    assert manifest is not None
    assert manifest["expected_accounts"] == [{"id": "555555555555", "name": "", "source": "accounts"}]
    assert manifest["accounts_not_scanned"] == []
    assert manifest["accounts_source"] == "accounts"


# --- the read role ----------------------------------------------------------------------------------------


def test_role_arn_is_assumed_before_listing(moto_url: str, set_hub_connection: Any) -> None:
    """Through the hub connection on moto's server: the hub account has no organisation, the role's has."""
    set_hub_connection()
    # An organisation of its own (not seed_organization's, whose payer other modules' worlds share).
    management = str(next(_MANAGEMENT_IDS))
    client = session_in(moto_url, management).client("organizations", endpoint_url=moto_url)
    client.create_organization(FeatureSet="ALL")

    hub_only = parse_settings({"bucket": BUCKET, "organizations": {}})
    with pytest.raises(ConfigError, match="not in an AWS Organization"):  # the hub account has none
        organizations.expected_accounts(hub_only)
    through_role = parse_settings(
        {"bucket": BUCKET, "organizations": {"role_arn": f"arn:aws:iam::{management}:role/org/OrgReader"}}
    )
    org_client = organizations.organizations_client(through_role, "cmdb-org-test")
    assert org_client.meta.config.retries["mode"] == "standard"
    found = organizations.expected_accounts(through_role, org_client)
    assert ids(found.accounts) == [management]
