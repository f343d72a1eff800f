"""
Accounts from AWS Organizations: the OU walk of the ``organizations`` setting (validated in config.py), and
which accounts are scanned (ACTIVE ones) or listed as not scanned, with why; the run's expected accounts,
each with its organisation context (its OU path and its account tags).

Nothing here talks to AWS when the configuration is parsed: :func:`discover` runs in ``resolve_accounts``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from include.cmdb_inventory.config import (
    ORGANIZATIONS_KEY,
    ROLE_ARN_RE,
    Account,
    ConfigError,
    OrganizationsSettings,
)
from include.cmdb_inventory.contract import OrganizationContext

if TYPE_CHECKING:
    from botocore.client import BaseClient

    from include.cmdb_inventory.config import Settings

log = logging.getLogger(__name__)

ACTIVE = "ACTIVE"

# Where an expected account came from (manifest ``expected_accounts[].source``).
FROM_STATIC = "accounts"
FROM_ORGANIZATIONS = "organizations"
FROM_BOTH = "accounts+organizations"
FROM_PARAMS = "params.accounts"

# ListTagsForResource is optional: these answers mean "not allowed", and the run goes on without tags.
ACCESS_DENIED = ("AccessDenied", "AccessDeniedException")
OU_PATH_SEPARATOR = "/"


@dataclass
class Discovery:
    """The expected accounts of one run, and the accounts deliberately not scanned, with why."""

    accounts: list[Account]
    not_scanned: list[dict[str, str]] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # account id -> FROM_*
    source: str = FROM_STATIC  # of the whole list: accounts, organizations, accounts+organizations, params
    # Set when Organizations was asked (manifest ``organization_context``): whether OU paths and account
    # tags were read, and why the tags were not (``tags_error``).
    organization_context: OrganizationContext | None = None

    def expected(self) -> list[dict[str, Any]]:
        """
        ``[{"id", "name", "source"}]``: what should be in the snapshot (manifest ``expected_accounts``); when
        Organizations was asked, each entry also has ``ou_path`` and ``tags`` (an object; both empty for an
        account not found in the organisation's scope).
        """
        entries: list[dict[str, Any]] = []
        for a in self.accounts:
            entry: dict[str, Any] = {
                "id": a.id,
                "name": a.name,
                "source": self.sources.get(a.id, FROM_STATIC),
            }
            if self.organization_context is not None:
                entry.update(ou_path=a.ou_path, tags=dict(a.tags))
            entries.append(entry)
        return entries


def _items(client: BaseClient, operation: str, key: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
    for page in client.get_paginator(operation).paginate(**kwargs):
        yield from page.get(key, [])


def _state(account: Mapping[str, Any]) -> str:
    # AWS is moving from ``Status`` to ``State`` (which adds PENDING_CLOSURE, CLOSED...): prefer State.
    return str(account.get("State") or account.get("Status") or "UNKNOWN")


def list_org_accounts(
    client: BaseClient, spec: OrganizationsSettings
) -> list[tuple[dict[str, Any], str, str]]:
    """
    Every account in scope as ``(account, excluded_ou, ou_path)``: the whole organisation, or the subtrees
    of ``include_ous`` (children included, recursively). ``excluded_ou`` is the OU of ``exclude_ous`` the
    account sits under (within the walked subtree), else ``""``; ``ou_path`` is the names from the root
    down to the account's parent (``Root/Workloads/Prod``).

    The walk always starts at the roots, so every path has its names without another call: OUs are listed
    everywhere, accounts only inside the scope.
    """
    from botocore.exceptions import ClientError

    include = set(spec.include_ous)
    path_of: dict[str, str] = {}
    parent_of: dict[str, str] = {}
    in_scope: dict[str, bool] = {}
    queue: deque[str] = deque()
    try:
        roots = list(_items(client, "list_roots", "Roots"))
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") != "AWSOrganizationsNotInUseException":
            raise
        raise ConfigError(
            ORGANIZATIONS_KEY,
            "the identity listing the accounts is not in an AWS Organization "
            "(AWSOrganizationsNotInUseException): run as the management account or a delegated "
            "administrator, or set organizations.role_arn to a read role there",
        ) from None
    for root in roots:
        path_of[root["Id"]] = str(root.get("Name") or root["Id"])
        in_scope[root["Id"]] = not include or root["Id"] in include
        queue.append(root["Id"])
    found: dict[str, tuple[dict[str, Any], str]] = {}
    while queue:
        parent = queue.popleft()
        if in_scope[parent]:
            for account in _items(client, "list_accounts_for_parent", "Accounts", ParentId=parent):
                found.setdefault(account["Id"], (account, parent))
        for ou in _items(
            client, "list_organizational_units_for_parent", "OrganizationalUnits", ParentId=parent
        ):
            if ou["Id"] in path_of:
                continue
            path_of[ou["Id"]] = f"{path_of[parent]}{OU_PATH_SEPARATOR}{ou.get('Name') or ou['Id']}"
            parent_of[ou["Id"]] = parent
            in_scope[ou["Id"]] = in_scope[parent] or ou["Id"] in include
            queue.append(ou["Id"])

    for index, ou_id in enumerate(spec.include_ous):
        if ou_id not in path_of:
            raise ConfigError(
                f"{ORGANIZATIONS_KEY}.include_ous[{index}]",
                f"{ou_id} is not in the organisation (not found under its roots)",
            )

    def excluded_by(node: str) -> str:
        # Up from the account's parent, but never above the top of its included subtree: an exclude_ous OU
        # that holds an include_ous OU does not drop what was included.
        while node:
            if node in spec.exclude_ous:
                return node
            node = parent_of.get(node, "")
            if not in_scope.get(node):
                return ""
        return ""

    return [(account, excluded_by(parent), path_of[parent]) for account, parent in found.values()]


def account_tags(client: BaseClient, account_id: str) -> tuple[tuple[str, str], ...]:
    """An account's tags from ``ListTagsForResource`` (every page), as sorted ``(key, value)`` pairs."""
    tags = {
        str(t.get("Key", "")): str(t.get("Value", ""))
        for t in _items(client, "list_tags_for_resource", "Tags", ResourceId=account_id)
    }
    return tuple(sorted(tags.items()))


def _with_tags(client: BaseClient, accounts: list[Account], in_org: set[str]) -> tuple[list[Account], str]:
    """
    ``accounts`` with the tags of those in the organisation (one ListTagsForResource per account); when it
    is denied (an optional permission), the accounts unchanged and why (every account then has no tags).
    """
    from botocore.exceptions import ClientError

    tagged: list[Account] = []
    for account in accounts:
        if account.id not in in_org:
            tagged.append(account)
            continue
        try:
            tagged.append(replace(account, tags=account_tags(client, account.id)))
        except ClientError as err:
            error = err.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code not in ACCESS_DENIED:
                raise
            message = " ".join(str(error.get("Message") or "").split())[:300]
            why = f"{code}: {message}" if message else code
            log.warning(
                "AWS Organizations: ListTagsForResource is not allowed (%s); the accounts' tags are not "
                "read (AccountTags stays empty). Grant organizations:ListTagsForResource to read them",
                why,
            )
            return accounts, why
    return tagged, ""


def discover(client: BaseClient, spec: OrganizationsSettings, static: Sequence[Account] = ()) -> Discovery:
    """
    The expected accounts: the static ``accounts`` (in their order, their names win) and then the
    organisation's ACTIVE accounts in scope (by id, named from Organizations). Accounts in
    ``exclude_accounts`` or under ``exclude_ous``, and accounts whose state is not ACTIVE (SUSPENDED,
    PENDING_CLOSURE...), are not scanned and are listed with why. A static account that Organizations
    reports as not ACTIVE is not scanned either (it could not be); ``exclude_ous`` never drops a static one.
    """
    org = {a["Id"]: (a, excluded_ou, path) for a, excluded_ou, path in list_org_accounts(client, spec)}
    accounts: list[Account] = []
    sources: dict[str, str] = {}
    not_scanned: list[dict[str, str]] = []

    def skip(account_id: str, name: str, state: str, reason: str) -> None:
        not_scanned.append({"id": account_id, "name": name, "state": state, "reason": reason})

    for account in static:
        if account.id in org:
            found, _, path = org[account.id]
            name, state = account.name or str(found.get("Name") or ""), _state(found)
            if state != ACTIVE:
                skip(
                    account.id,
                    name,
                    state,
                    f"state {state} in AWS Organizations (listed in accounts): "
                    "only ACTIVE accounts are scanned",
                )
                continue
            accounts.append(replace(account, name=name, ou_path=path))
            sources[account.id] = FROM_BOTH
        else:
            accounts.append(account)
            sources[account.id] = FROM_STATIC

    static_ids = {a.id for a in static}
    for account_id in sorted(org):
        if account_id in static_ids:
            continue
        found, excluded_ou, path = org[account_id]
        name, state = str(found.get("Name") or ""), _state(found)
        if account_id in spec.exclude_accounts:
            skip(account_id, name, state, "excluded by organizations.exclude_accounts")
        elif excluded_ou:
            skip(account_id, name, state, f"under {excluded_ou}, excluded by organizations.exclude_ous")
        elif state != ACTIVE:
            skip(
                account_id,
                name,
                state,
                f"state {state} in AWS Organizations: only ACTIVE accounts are scanned",
            )
        else:
            accounts.append(Account(id=account_id, name=name, ou_path=path))
            sources[account_id] = FROM_ORGANIZATIONS

    accounts, tags_error = _with_tags(client, accounts, set(org))
    context: OrganizationContext = {"ou_paths": True, "tags": not tags_error}
    if tags_error:
        context["tags_error"] = tags_error
    source = f"{FROM_STATIC}+{FROM_ORGANIZATIONS}" if static else FROM_ORGANIZATIONS
    log.info(
        "AWS Organizations: %d accounts in scope, %d to scan, %d not scanned",
        len(org),
        len(accounts),
        len(not_scanned),
    )
    for item in not_scanned:
        log.info("Not scanning %s (%s): %s", item["id"], item["name"], item["reason"])
    return Discovery(
        accounts=accounts,
        not_scanned=not_scanned,
        sources=sources,
        source=source,
        organization_context=context,
    )


def organizations_client(settings: Settings, session_name: str = "cmdb-organizations") -> BaseClient:
    """
    An Organizations client: through ``organizations.role_arn`` (assumed from the hub identity) when set,
    else as the hub identity itself. botocore's ``standard`` retries; connection extras apply.
    """
    from botocore.config import Config

    from include.cmdb_inventory.aws.hooks import CrossAccountHook

    spec = settings.organizations
    assert spec is not None  # noqa: S101 - only called when the setting is present
    if spec.role_arn:
        match = ROLE_ARN_RE.match(spec.role_arn)
        assert match is not None  # noqa: S101 - validated when parsed
        hook = CrossAccountHook(
            account_id=match.group(2),
            role_name=match.group(3),  # the path stays part of the name: the ARN is rebuilt exactly
            session_name=session_name,
            max_attempts=settings.max_attempts,
            aws_conn_id=settings.aws_conn_id,
            region_name=settings.hub_region,
        )
        log.info("Listing accounts through %s", hook.target_role_arn)
        return hook.client("organizations", hook.hub_region)

    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    base = AwsBaseHook(
        aws_conn_id=settings.aws_conn_id, region_name=settings.hub_region, client_type="organizations"
    )
    ours = Config(retries={"mode": "standard", "total_max_attempts": settings.max_attempts})
    conn_config = base.conn_config.botocore_config
    log.info("Listing accounts as the hub identity")
    return base.get_client_type(config=ours.merge(conn_config) if conn_config else ours)


def expected_accounts(
    settings: Settings, client: BaseClient | None = None, session_name: str = ""
) -> Discovery:
    """The run's expected accounts: the Params' list, the static list, and/or AWS Organizations'."""
    if settings.accounts_from_params:
        return Discovery(
            accounts=list(settings.accounts),
            sources=dict.fromkeys((a.id for a in settings.accounts), FROM_PARAMS),
            source=FROM_PARAMS,
        )
    if settings.organizations is None:
        return Discovery(
            accounts=list(settings.accounts),
            sources=dict.fromkeys((a.id for a in settings.accounts), FROM_STATIC),
            source=FROM_STATIC,
        )
    if client is None:
        client = organizations_client(settings, session_name or "cmdb-organizations")
    found = discover(client, settings.organizations, settings.accounts)
    if not found.accounts:
        raise ConfigError(
            ORGANIZATIONS_KEY,
            f"AWS Organizations has no ACTIVE account in scope ({len(found.not_scanned)} listed as not "
            "scanned): check include_ous, exclude_ous and exclude_accounts",
        )
    return found
