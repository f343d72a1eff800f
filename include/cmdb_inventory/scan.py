"""One account: assume its role, plan its regions, scan them in parallel, paginated."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from include.cmdb_inventory.aws.errors import EXPIRED_SESSION_CODES, error_of, region_status_of
from include.cmdb_inventory.contract import OK, ROLE_NOT_ASSUMABLE
from include.cmdb_inventory.records import Record, instance_record
from include.cmdb_inventory.regions import plan_regions

if TYPE_CHECKING:
    from botocore.client import BaseClient

    from include.cmdb_inventory.aws.hooks import CrossAccountHook
    from include.cmdb_inventory.config import Account

log = logging.getLogger(__name__)

PAGE_SIZE = 1000


@dataclass
class AccountScan:
    """What one account's scan found: records sorted by region and instance, and per-region statuses."""

    account_id: str
    account_name: str
    status: str = OK
    role_arn: str = ""
    error: dict[str, str] | None = None
    regions: list[dict[str, Any]] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    regions_source: str = ""
    note: str = ""
    # Per tag column, which tag key gave the instances their value ("" counts those with none of the keys).
    tag_sources: dict[str, dict[str, int]] = field(default_factory=dict)

    def count_sources(
        self, tag_columns: Sequence[tuple[str, Sequence[str]]], found: list[dict[str, str]]
    ) -> None:
        """Add one region's tag-column sources (one entry per instance) to :attr:`tag_sources`."""
        for column, _ in tag_columns:
            counts = self.tag_sources.setdefault(column, {})
            for sources in found:
                key = sources.get(column, "")
                counts[key] = counts.get(key, 0) + 1


def scan_region(
    ec2: BaseClient,
    account: Account,
    region: str,
    states: tuple[str, ...],
    collected_at: str,
    tag_columns: Sequence[tuple[str, Sequence[str]]] = (),
) -> list[tuple[Record, dict[str, str]]]:
    """
    Every instance of one region in the given states, through the paginator, sorted by id: each record
    with the tag key each tag column's value came from.
    """
    paginator = ec2.get_paginator("describe_instances")
    pages = paginator.paginate(
        Filters=[{"Name": "instance-state-name", "Values": list(states)}],
        PaginationConfig={"PageSize": PAGE_SIZE},
    )
    found = [
        instance_record(account, region, instance, collected_at, reservation, tag_columns)
        for page in pages
        for reservation in page.get("Reservations", [])
        for instance in reservation.get("Instances", [])
    ]
    found.sort(key=lambda r: r[0]["InstanceId"])
    return found


def scan_regions(
    hook: CrossAccountHook,
    account: Account,
    *,
    regions: tuple[str, ...] = (),
    exclude_regions: tuple[str, ...] = (),
    states: tuple[str, ...],
    collected_at: str,
    threads: int = 8,
    tag_columns: Sequence[tuple[str, Sequence[str]]] = (),
) -> AccountScan:
    """
    Scan one account's regions: assume its role, plan its regions, list each (in parallel, paginated).
    A role that cannot be assumed gives status ``ROLE_NOT_ASSUMABLE``; a region that
    fails gives that region its own status; both keep the error code and message.
    """
    from include.cmdb_inventory.aws.hooks import RoleNotAssumableError

    result = AccountScan(account_id=account.id, account_name=account.name)
    try:
        result.role_arn = hook.assume()
    except RoleNotAssumableError as err:
        result.status = ROLE_NOT_ASSUMABLE
        result.role_arn = err.role_arn
        result.error = error_of(err)
        log.error("Account %s: %s", account.label, err)
        return result

    plan = plan_regions(hook.client("ec2", hook.hub_region), hook.partition, regions, exclude_regions)
    result.regions_source, result.note = plan.source, plan.note
    result.regions.extend({**s, "instances": 0} for s in plan.skipped)
    log.info("Account %s: scanning %d regions (%s)", account.label, len(plan.scan), plan.source)

    def listing(region: str) -> list[tuple[Record, dict[str, str]]]:
        return scan_region(hook.client("ec2", region), account, region, states, collected_at, tag_columns)

    def one(region: str) -> tuple[str, list[tuple[Record, dict[str, str]]] | None, dict[str, str] | None]:
        session = ""
        try:
            session = hook.session_key()
            return region, listing(region), None
        except Exception as err:
            error = error_of(err)
        if error["code"] not in EXPIRED_SESSION_CODES:
            return region, None, error
        # The session was refused as expired: renew it once (for every region's thread) and list the region
        # again; a region's scan is a fresh paginated listing, so scanning it again loses nothing.
        log.warning("Account %s region %s: %s; renewing the session", account.label, region, error["code"])
        try:
            hook.renew_session(session)
            return region, listing(region), None
        except Exception as err:  # e.g. the role is no longer assumable, or expired again: this region fails
            return region, None, error_of(err)

    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(plan.scan) or 1))) as pool:
        outcomes = list(pool.map(one, plan.scan))

    for region, records, error in outcomes:
        if error is None and records is not None:
            result.records.extend(record for record, _ in records)
            result.count_sources(tag_columns, [sources for _, sources in records])
            result.regions.append({"region": region, "status": OK, "instances": len(records)})
        else:
            assert error is not None  # noqa: S101 - one of the two is always set
            status = region_status_of(error["code"])
            log.warning("Account %s region %s: %s %s: %s", account.label, region, status, *error.values())
            result.regions.append({"region": region, "status": status, "instances": 0, "error": error})
    result.regions.sort(key=lambda r: r["region"])
    return result
