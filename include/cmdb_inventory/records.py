"""The CSV schema: columns, one normalised record per instance, formula neutralisation."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

from include.cmdb_inventory.contract import COLUMNS, LIST_SEPARATOR

if TYPE_CHECKING:
    from include.cmdb_inventory.config import Account

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


def joined(values: Iterable[Any]) -> str:
    """A list cell (``contract.LIST_COLUMNS``): the values, deduplicated, sorted, ``;``-joined."""
    return LIST_SEPARATOR.join(sorted({str(v) for v in values if v}))


def _interfaces(instance: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list(instance.get("NetworkInterfaces") or [])


def security_groups(instance: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    """
    The instance's security groups and those of each attached network interface: an instance with several
    interfaces is reached through all of them (and moto leaves the instance's own list empty when the
    default group was applied to its interface).
    """
    yield from instance.get("SecurityGroups") or []
    for interface in _interfaces(instance):
        yield from interface.get("Groups") or []


def ipv6_addresses(instance: Mapping[str, Any]) -> Iterable[str]:
    """Every IPv6 address of every attached interface, and the instance's primary one (``Ipv6Address``)."""
    if instance.get("Ipv6Address"):
        yield str(instance["Ipv6Address"])
    for interface in _interfaces(instance):
        for address in interface.get("Ipv6Addresses") or []:
            yield str(address.get("Ipv6Address") or "")


def lifecycle(instance: Mapping[str, Any]) -> str:
    """
    EC2's ``InstanceLifecycle`` as it says it (``spot``, ``scheduled``, ``capacity-block``, or a value EC2
    adds later, kept rather than mistaken for on-demand); EC2 leaves it out for ``on-demand``.
    """
    return str(instance.get("InstanceLifecycle") or "on-demand")


def imds_v2_required(instance: Mapping[str, Any]) -> str:
    """``true`` when IMDSv2 is required (``HttpTokens`` ``required``), ``false`` when optional, else empty."""
    tokens = (instance.get("MetadataOptions") or {}).get("HttpTokens")
    return {"required": "true", "optional": "false"}.get(str(tokens or ""), "")


def tag_column_values(
    tags: Mapping[str, str], tag_columns: Sequence[tuple[str, Sequence[str]]]
) -> tuple[dict[str, str], dict[str, str]]:
    """
    The configured tag columns' cells: each the value of the first of its keys that ``tags`` has with a
    non-empty value (keys compared case-sensitively). An empty value is skipped: a key created and left
    blank names no owner or cost centre, and the next alias may. Also returns, per column, the key that
    gave the value (columns without a match are absent there).
    """
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    for column, keys in tag_columns:
        values[column] = ""
        for key in keys:
            if tags.get(key):
                values[column], sources[column] = tags[key], key
                break
    return values, sources


def instance_record(
    account: Account,
    region: str,
    instance: Mapping[str, Any],
    collected_at: str,
    reservation: Mapping[str, Any] | None = None,
    tag_columns: Sequence[tuple[str, Sequence[str]]] = (),
) -> tuple[Record, dict[str, str]]:
    """
    One instance from ``DescribeInstances`` (and its reservation) as a flat record of strings, in column
    order, the configured tag columns last; and which tag key gave each tag column its value.
    """
    tags = _tags(instance)
    reservation = reservation or {}
    placement = instance.get("Placement") or {}
    tag_values, sources = tag_column_values(tags, tag_columns)
    record = {
        "Account": account.id,
        "Region": region,
        "InstanceId": str(instance.get("InstanceId", "")),
        "Name": tags.get("Name", ""),
        "AccountName": account.name,
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
        "PlatformDetails": str(instance.get("PlatformDetails") or ""),
        "Architecture": str(instance.get("Architecture") or ""),
        "InstanceLifecycle": lifecycle(instance),
        "Tenancy": str(placement.get("Tenancy") or ""),
        "IamInstanceProfileArn": str((instance.get("IamInstanceProfile") or {}).get("Arn") or ""),
        "SecurityGroupIds": joined(group.get("GroupId") for group in security_groups(instance)),
        "EbsVolumeIds": joined(
            (m.get("Ebs") or {}).get("VolumeId") for m in instance.get("BlockDeviceMappings") or []
        ),
        "KeyName": str(instance.get("KeyName") or ""),
        "ImdsV2Required": imds_v2_required(instance),
        "PrivateDnsName": str(instance.get("PrivateDnsName") or ""),
        "Ipv6Addresses": joined(ipv6_addresses(instance)),
        "OutpostArn": str(instance.get("OutpostArn") or ""),
        "ReservationId": str(reservation.get("ReservationId") or ""),
        "OwnerId": str(reservation.get("OwnerId") or ""),
        "AccountOuPath": account.ou_path,
        "AccountTags": account.tags_json if (account.ou_path or account.tags) else "",
        **tag_values,
    }
    return record, sources


def neutralise(value: str) -> str:
    """Make a cell safe for spreadsheets: drop NUL, prefix formula triggers with ``'``."""
    value = value.replace("\x00", "")
    if value.startswith(FORMULA_TRIGGERS):
        return "'" + value
    return value


def csv_row(record: Mapping[str, str], columns: Sequence[str] = COLUMNS) -> list[str]:
    """The CSV cells of a record, neutralised, in column order."""
    return [neutralise(record.get(column, "")) for column in columns]


def sort_key(record: Mapping[str, str]) -> tuple[str, str, str]:
    """Rows are sorted by Account, Region, InstanceId."""
    return (record["Account"], record["Region"], record["InstanceId"])


def read_csv_rows(
    source: IO[bytes], columns: Sequence[str], which: str, error: type[Exception]
) -> Iterator[dict[str, str]]:
    """
    Stream the rows of a CSV we wrote (a binary file, from its start) that must have ``columns``. A missing
    column, a row without one cell per column, or text that is not UTF-8 CSV raises ``error`` naming
    ``which`` (e.g. "the CSV", "changes.csv"). Lazy: nothing is read before the first row is asked for.
    """
    source.seek(0)
    text = io.TextIOWrapper(source, encoding="utf-8", newline="")
    try:
        reader = csv.DictReader(text)
        missing = [c for c in columns if c not in (reader.fieldnames or ())]
        if missing:
            raise error(f"{which} has no column {missing[0]!r}")
        for row in reader:
            if None in row or None in row.values():
                raise error(f"{which} line {reader.line_num} does not have one cell per column")
            yield row
    except (UnicodeDecodeError, csv.Error) as err:
        raise error(f"{which} cannot be read: {err}") from None
    finally:
        text.detach()
