"""The CSV schema: columns, one normalised record per instance, formula neutralisation."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from include.cmdb_inventory.contract import COLUMNS

# OWASP: a cell starting with one of these is read as a formula by spreadsheets.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")

Record = dict[str, str]


def iso_utc(value: datetime | str | None) -> str:
    """ISO-8601 in UTC with a ``Z`` suffix; empty for no value."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _tags(instance: Mapping[str, Any]) -> dict[str, str]:
    return {str(t.get("Key", "")): str(t.get("Value", "")) for t in instance.get("Tags") or []}


def instance_record(
    account_id: str, account_name: str, region: str, instance: Mapping[str, Any], collected_at: str
) -> Record:
    """One instance from ``DescribeInstances`` as a flat record of strings, in CSV column order."""
    tags = _tags(instance)
    return {
        "Account": account_id,
        "Region": region,
        "InstanceId": str(instance.get("InstanceId", "")),
        "Name": tags.get("Name", ""),
        "AccountName": account_name,
        "AvailabilityZone": str((instance.get("Placement") or {}).get("AvailabilityZone", "")),
        "State": str((instance.get("State") or {}).get("Name", "")),
        "InstanceType": str(instance.get("InstanceType", "")),
        "Platform": str(instance.get("PlatformDetails") or instance.get("Platform") or ""),
        "PrivateIpAddress": str(instance.get("PrivateIpAddress") or ""),
        "PublicIpAddress": str(instance.get("PublicIpAddress") or ""),
        "VpcId": str(instance.get("VpcId") or ""),
        "SubnetId": str(instance.get("SubnetId") or ""),
        "ImageId": str(instance.get("ImageId") or ""),
        "LaunchTime": iso_utc(instance.get("LaunchTime")),
        "Tags": json.dumps(tags, ensure_ascii=False, sort_keys=True, separators=(",", ":")),
        "CollectedAt": collected_at,
    }


def neutralise(value: str) -> str:
    """Make a cell safe for spreadsheets: drop NUL, prefix formula triggers with ``'``."""
    value = value.replace("\x00", "")
    if value.startswith(FORMULA_TRIGGERS):
        return "'" + value
    return value


def csv_row(record: Mapping[str, str]) -> list[str]:
    """The CSV cells of a record, neutralised, in column order."""
    return [neutralise(record.get(column, "")) for column in COLUMNS]


def sort_key(record: Mapping[str, str]) -> tuple[str, str, str]:
    """Rows are sorted by Account, Region, InstanceId."""
    return (record["Account"], record["Region"], record["InstanceId"])
