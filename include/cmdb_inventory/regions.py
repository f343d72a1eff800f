"""Which regions of an account to scan: DescribeRegions, opt-in status, the configured filters."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from include.cmdb_inventory.aws.clients import shared_botocore_session
from include.cmdb_inventory.aws.errors import DENIED_CODES, error_of
from include.cmdb_inventory.contract import REGION_DISABLED

if TYPE_CHECKING:
    from botocore.client import BaseClient

log = logging.getLogger(__name__)

ENABLED_OPT_IN = ("opt-in-not-required", "opted-in")


@dataclass
class RegionPlan:
    """Regions to scan, regions recorded without a scan, and where the list came from."""

    scan: list[str]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    source: str = "DescribeRegions"
    note: str = ""


def partition_regions(partition: str) -> tuple[str, ...]:
    """botocore's list of EC2 regions for one partition."""
    session = shared_botocore_session()
    return tuple(sorted(session.get_available_regions("ec2", partition_name=partition)))


def region_partition(region: str) -> str | None:
    """
    The partition of a region name: botocore's region lists first, then each partition's name pattern, so
    a region AWS opened after this botocore was released still lands in its partition (not dropped).
    """
    from botocore.exceptions import UnknownRegionError

    try:
        return str(shared_botocore_session().get_partition_for_region(region))
    except UnknownRegionError:
        return None


def _select(candidates: list[str], regions: tuple[str, ...], exclude: tuple[str, ...]) -> list[str]:
    chosen = [r for r in candidates if not regions or r in regions]
    return sorted(r for r in chosen if r not in exclude)


def plan_regions(
    ec2: BaseClient, partition: str, regions: tuple[str, ...] = (), exclude: tuple[str, ...] = ()
) -> RegionPlan:
    """
    Ask the account which regions it has enabled, then apply ``regions`` and ``exclude_regions``.

    Regions not enabled (``not-opted-in``) are recorded as ``REGION_DISABLED``. Regions outside the hub's
    partition are ignored (moto answers with every partition's regions; AWS does not). When
    DescribeRegions is denied, fall back to the configured list, else botocore's list for the partition.
    """
    from botocore.exceptions import ClientError

    try:
        answer = ec2.describe_regions(AllRegions=True)["Regions"]
    except ClientError as err:
        error = error_of(err)
        if error["code"] not in DENIED_CODES:
            raise
        source = "configured" if regions else "botocore"
        fallback = list(regions) if regions else [r for r in partition_regions(partition)]
        note = (
            f"DescribeRegions denied ({error['code']}); scanned the {source} region list instead, "
            "so regions that are not enabled show as REGION_DISABLED"
        )
        log.warning("%s", note)
        return RegionPlan(scan=_select(fallback, regions, exclude), source=source, note=note)

    enabled: list[str] = []
    skipped: list[dict[str, Any]] = []
    for item in answer:
        name = item["RegionName"]
        if region_partition(name) != partition:
            continue
        status = item.get("OptInStatus", "opt-in-not-required")
        if status in ENABLED_OPT_IN:
            enabled.append(name)
        elif (not regions or name in regions) and name not in exclude:
            skipped.append(
                {
                    "region": name,
                    "status": REGION_DISABLED,
                    "error": {"code": "OptInStatus", "message": f"region is {status}"},
                }
            )
    known = {item["RegionName"] for item in answer if region_partition(item["RegionName"]) == partition}
    for name in regions:
        if name not in known and name not in exclude:
            skipped.append(
                {
                    "region": name,
                    "status": REGION_DISABLED,
                    "error": {"code": "UnknownRegion", "message": "not offered to this account"},
                }
            )
    return RegionPlan(
        scan=_select(enabled, regions, exclude), skipped=sorted(skipped, key=lambda s: s["region"])
    )
