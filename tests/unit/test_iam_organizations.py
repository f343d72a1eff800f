"""
The hub template's optional Organizations statements (``ReadOrganizations``), rendered by moto's
CloudFormation, against the calls account discovery really makes (moto in-process).
"""

from __future__ import annotations

from typing import Any

import pytest

from devtools.iam_templates import DeployedRole, TemplateError, render_role
from include.cmdb_inventory.config import Account, OrganizationsSettings
from include.cmdb_inventory.organizations import discover
from tests.unit.test_organization_context import _Calls
from tests.unit.test_organizations import Org

BUCKET = "cmdb-inventory-bucket"
ORG_ID = "o-abcdefghij"
LISTING = {
    "organizations:ListAccountsForParent",
    "organizations:ListOrganizationalUnitsForParent",
    "organizations:ListRoots",
}
TAGS = "organizations:ListTagsForResource"


def _hub(**params: str) -> DeployedRole:
    return render_role("cmdb-application", {"BucketName": BUCKET, **params})


def _organizations_statements(role: DeployedRole) -> list[dict[str, Any]]:
    return [
        s
        for doc in role.policies.values()
        for s in doc["Statement"]
        if any(str(a).startswith("organizations:") for a in _as_list(s["Action"]))
    ]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_no_organizations_permission_by_default() -> None:
    assert _organizations_statements(_hub()) == []
    assert _organizations_statements(_hub(ReadOrganizations="none")) == []


def test_accounts_grants_the_ou_walk_only() -> None:
    [listing] = _organizations_statements(_hub(ReadOrganizations="accounts"))
    assert listing["Sid"] == "ListOrganizationAccounts"
    assert set(_as_list(listing["Action"])) == LISTING
    assert listing["Resource"] == "*"  # these List actions have no resource type


@pytest.mark.parametrize(
    ("organization_id", "resource"),
    [
        ("", "arn:aws:organizations::*:account/o-*/*"),
        (ORG_ID, f"arn:aws:organizations::*:account/{ORG_ID}/*"),
    ],
)
def test_accounts_and_tags_adds_tags_of_accounts_only(organization_id: str, resource: str) -> None:
    role = _hub(ReadOrganizations="accounts-and-tags", OrganizationId=organization_id)
    listing, tags = _organizations_statements(role)
    assert set(_as_list(listing["Action"])) == LISTING
    assert tags == {
        "Sid": "ReadOrganizationAccountTags",
        "Effect": "Allow",
        "Action": TAGS,
        "Resource": resource,
    }


def test_other_values_are_refused_before_deployment() -> None:
    with pytest.raises(TemplateError, match=r"ReadOrganizations='everything' is not one of"):
        _hub(ReadOrganizations="everything")


def test_the_grant_is_exactly_what_discovery_calls(mocked_aws: None) -> None:
    """Every Organizations call of a discovery (nested OUs, include_ous, a static account) is granted."""
    org = Org()
    workloads = org.ou("Workloads")
    prod = org.ou("Prod", workloads)
    static = org.account("static", prod)
    org.account("p", prod)
    calls = _Calls(org.client)
    discover(org.client, OrganizationsSettings(), [Account(static)])
    discover(org.client, OrganizationsSettings(include_ous=(workloads,), exclude_ous=(prod,)))
    called = {f"organizations:{operation}" for operation in calls.by_operation}

    granted = {
        action
        for s in _organizations_statements(_hub(ReadOrganizations="accounts-and-tags"))
        for action in _as_list(s["Action"])
    }
    assert called == granted == {*LISTING, TAGS}
