"""
Accounts from AWS Organizations: the OU walk of the ``organizations`` setting (validated in config.py), and
which accounts are scanned (ACTIVE ones) or listed as not scanned, with why; the run's expected accounts.

Nothing here talks to AWS when the configuration is parsed: :func:`discover` runs in ``resolve_accounts``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from include.cmdb_inventory.config import (
    ORGANIZATIONS_KEY,
    ROLE_ARN_RE,
    Account,
    ConfigError,
    OrganizationsSettings,
)

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


@dataclass
class Discovery:
    """The expected accounts of one run, and the accounts deliberately not scanned, with why."""

    accounts: list[Account]
    not_scanned: list[dict[str, str]] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # account id -> FROM_*
    source: str = FROM_STATIC  # of the whole list: accounts, organizations, accounts+organizations, params

    def expected(self) -> list[dict[str, str]]:
        """``[{"id", "name", "source"}]``: what should be in the snapshot (manifest ``expected_accounts``)."""
        return [
            {"id": a.id, "name": a.name, "source": self.sources.get(a.id, FROM_STATIC)} for a in self.accounts
        ]


def _items(client: BaseClient, operation: str, key: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
    for page in client.get_paginator(operation).paginate(**kwargs):
        yield from page.get(key, [])


def _state(account: Mapping[str, Any]) -> str:
    # AWS is moving from ``Status`` to ``State`` (which adds PENDING_CLOSURE, CLOSED...): prefer State.
    return str(account.get("State") or account.get("Status") or "UNKNOWN")


def list_org_accounts(client: BaseClient, spec: OrganizationsSettings) -> list[tuple[dict[str, Any], str]]:
    """
    Every account in scope as ``(account, excluded_ou)``: the whole organisation, or the subtrees of
    ``include_ous`` (children included, recursively). ``excluded_ou`` is the OU of ``exclude_ous`` the
    account sits under (within the walked tree), else ``""``.
    """
    from botocore.exceptions import ClientError

    if not spec.include_ous and not spec.exclude_ous:
        return [(a, "") for a in _items(client, "list_accounts", "Accounts")]

    starts = list(spec.include_ous) or [r["Id"] for r in _items(client, "list_roots", "Roots")]
    parent_of: dict[str, str] = {}
    found: dict[str, tuple[dict[str, Any], str]] = {}
    queue, seen = deque(starts), set()
    while queue:
        parent = queue.popleft()
        if parent in seen:
            continue
        seen.add(parent)
        try:
            for account in _items(client, "list_accounts_for_parent", "Accounts", ParentId=parent):
                found.setdefault(account["Id"], (account, parent))
            for ou in _items(
                client, "list_organizational_units_for_parent", "OrganizationalUnits", ParentId=parent
            ):
                parent_of.setdefault(ou["Id"], parent)
                queue.append(ou["Id"])
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code", ""))
            if parent in spec.include_ous and code in ("ParentNotFoundException", "InvalidInputException"):
                index = spec.include_ous.index(parent)
                raise ConfigError(
                    f"{ORGANIZATIONS_KEY}.include_ous[{index}]",
                    f"{parent} is not in the organisation ({code})",
                ) from None
            raise

    def excluded_by(node: str) -> str:
        while node:
            if node in spec.exclude_ous:
                return node
            node = parent_of.get(node, "")
        return ""

    return [(account, excluded_by(parent)) for account, parent in found.values()]


def discover(client: BaseClient, spec: OrganizationsSettings, static: Sequence[Account] = ()) -> Discovery:
    """
    The expected accounts: the static ``accounts`` (in their order, their names win) and then the
    organisation's ACTIVE accounts in scope (by id, named from Organizations). Accounts in
    ``exclude_accounts`` or under ``exclude_ous``, and accounts whose state is not ACTIVE (SUSPENDED,
    PENDING_CLOSURE...), are not scanned and are listed with why. A static account that Organizations
    reports as not ACTIVE is not scanned either (it could not be); ``exclude_ous`` never drops a static one.
    """
    org = {a["Id"]: (a, excluded_ou) for a, excluded_ou in list_org_accounts(client, spec)}
    accounts: list[Account] = []
    sources: dict[str, str] = {}
    not_scanned: list[dict[str, str]] = []

    def skip(account_id: str, name: str, state: str, reason: str) -> None:
        not_scanned.append({"id": account_id, "name": name, "state": state, "reason": reason})

    for account in static:
        if account.id in org:
            found, _ = org[account.id]
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
            accounts.append(Account(id=account.id, name=name))
            sources[account.id] = FROM_BOTH
        else:
            accounts.append(account)
            sources[account.id] = FROM_STATIC

    static_ids = {a.id for a in static}
    for account_id in sorted(org):
        if account_id in static_ids:
            continue
        found, excluded_ou = org[account_id]
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
            accounts.append(Account(id=account_id, name=name))
            sources[account_id] = FROM_ORGANIZATIONS

    source = f"{FROM_STATIC}+{FROM_ORGANIZATIONS}" if static else FROM_ORGANIZATIONS
    log.info(
        "AWS Organizations: %d accounts in scope, %d to scan, %d not scanned",
        len(org),
        len(accounts),
        len(not_scanned),
    )
    for item in not_scanned:
        log.info("Not scanning %s (%s): %s", item["id"], item["name"], item["reason"])
    return Discovery(accounts=accounts, not_scanned=not_scanned, sources=sources, source=source)


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
