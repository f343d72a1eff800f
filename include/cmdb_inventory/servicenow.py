"""
The ServiceNow export (``servicenow: true``): the snapshot as one payload of ServiceNow's Identification and
Reconciliation API, ``POST /api/now/identifyreconcile``, written next to the CSV as
``servicenow/ire_payload.json.gz``, and the pure function that cuts it into self-contained batches.

The payload is the API's documented request body, ``{"items": [...], "relations": [...]}``: each item a
``className`` and its ``values``; each relation the ``parent`` and ``child`` item indexes and a ``type`` (a
name of ``cmdb_rel_type``). Sources:

- The API (request body, ``/query`` to dry-run, the itil or asset role):
  https://www.servicenow.com/docs/r/yokohama/api-reference/rest-apis/c_IdentifyReconcileAPI.html and
  https://docs.servicenow.com/bundle/geneva-servicenow-platform/page/integrate/inbound_rest/reference/r_IdentifyReconcileAPIPOST.html
- The cloud model: a cloud VM instance is ``cmdb_ci_vm_instance`` -> (Hosted on::Hosts) -> the region's
  datacenter -> (Hosted on::Hosts) -> ``cmdb_ci_cloud_service_account``, the class for AWS accounts:
  https://www.servicenow.com/docs/r/Ir~NPf1dr8MGFXQE6QlBoQ/zLSzT0mIdCcOAt1X3iEB3g (the CMDB Workspace's
  cloud criteria), https://docs.servicenow.com/bundle/washingtondc-it-operations-management/page/product/discovery/concept/aws-cloud-discovery.html
  (``cmdb_ci_vm_instance`` hosted on ``cmdb_ci_aws_datacenter``, the datacenter hosted on the account) and
  the Cloud class page (cloud CIs are identified by their ``object_id`` within their logical datacenter):
  https://www.servicenow.com/docs/r/fr-FR/servicenow-platform/configuration-management-database-cmdb/class-cloud.html
- Retiring rather than deleting: ServiceNow's own VM removal sets Install Status to Retired,
  https://www.servicenow.com/docs/r/yokohama/it-operations-management/itom-visibility/vm-instance-state-and-status-fields.html

What was chosen where those pages are silent:

- Items: one ``cmdb_ci_cloud_service_account`` per account (``object_id`` and ``account_id`` the account
  id, ``name``, ``datacenter_type``), one ``cmdb_ci_aws_datacenter`` per account and region (``object_id``,
  ``name`` and ``region`` the region), one ``cmdb_ci_vm_instance`` per instance (``object_id`` and
  ``vm_inst_id`` the instance id, ``name`` its Name tag or else its id, ``state``, ``ip_address`` its
  private address, ``install_status`` Installed). Every value comes from the CSV's own columns (or the
  manifest's account names): nothing that would need another AWS call. A relation's parent is the item
  that is hosted, its child the host, as the API's example ("Runs on::Runs", parent the application).
- ``state``: EC2's instance state mapped onto the class's choices (:data:`STATES`; any other, ``unknown``).
- Instances ``REMOVED`` in this snapshot's ``changes.csv`` (their region scanned OK in both snapshots)
  come as ``cmdb_ci_vm_instance`` items with ``install_status`` Retired, related like the others (the
  instance is identified within its datacenter), without ``state``: a listing that no longer shows an
  instance cannot say how it ended. ``NOT_VERIFIED`` instances (a region not scanned OK) are never retired.
- No ``sys_object_source_info`` and no ``internal_id``: the source name must be one of the instance's
  ``discovery_source`` choices, which only its administrator knows; the example DAG passes it as the
  ``sysparm_data_source`` query parameter instead.
- Cells are the CSV's, including the leading ``'`` of formula neutralisation (a Name tag ``=x`` arrives as
  ``'=x``): once written, a neutralising quote cannot be told from a quote that was in the data (the tag
  ``'=x`` is written unchanged), so removing it would alter data; the Parquet file keeps it for the same
  reason (formats.py).

The file is written as the rows stream past (items straight into the gzip stream, relations into a spooled
file appended after them), spooled and uploaded a chunk at a time: memory does not grow with the number of
instances. Both CSVs are sorted by Account, Region, InstanceId, so they are merged in one pass.
"""

from __future__ import annotations

import gzip
import json
import logging
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any, Protocol

from include.cmdb_inventory.contract import IRE_PAYLOAD_NAME
from include.cmdb_inventory.records import neutralise, read_csv_rows
from include.cmdb_inventory.storage import CHUNK, digest_of, spool

if TYPE_CHECKING:
    from include.cmdb_inventory.storage import SnapshotStore

log = logging.getLogger(__name__)

IRE_PAYLOAD_SCHEMA_VERSION = 1
IRE_CONTENT_TYPE = "application/gzip"
IRE_ENDPOINT = "/api/now/identifyreconcile"

ACCOUNT_CLASS = "cmdb_ci_cloud_service_account"
DATACENTER_CLASS = "cmdb_ci_aws_datacenter"
INSTANCE_CLASS = "cmdb_ci_vm_instance"
HOSTED_ON = "Hosted on::Hosts"
INSTALLED = "1"  # cmdb_ci.install_status: Installed
RETIRED = "7"  # cmdb_ci.install_status: Retired

# EC2 instance state -> cmdb_ci_vm_instance.state.
STATES: dict[str, str] = {
    "pending": "starting",
    "running": "on",
    "stopping": "stopping",
    "stopped": "off",
    "shutting-down": "terminating",
    "terminated": "terminated",
}
UNKNOWN_STATE = "unknown"

# changes.py's names (a sibling layer, not imported: a unit test checks they agree).
REMOVED = "REMOVED"
KEY_COLUMNS = ("Account", "Region", "InstanceId")
CSV_COLUMNS = (*KEY_COLUMNS, "Name", "AccountName", "State", "PrivateIpAddress")

Key = tuple[str, str, str]


class Writable(Protocol):
    """Where the payload's bytes go (a file, a ``GzipFile``)."""

    def write(self, data: bytes, /) -> int: ...


class PayloadError(ValueError):
    """The inputs cannot make a payload (unsorted CSV, missing changes.csv), or a payload cannot be cut."""


def instance_values(row: Mapping[str, str]) -> dict[str, str]:
    """A listed instance's ``cmdb_ci_vm_instance`` values, from its CSV row only."""
    instance_id = row["InstanceId"]
    return {
        "object_id": instance_id,
        "vm_inst_id": instance_id,
        "name": row.get("Name") or instance_id,
        "state": STATES.get(row.get("State", ""), UNKNOWN_STATE),
        "ip_address": row.get("PrivateIpAddress", ""),
        "install_status": INSTALLED,
    }


def retired_values(row: Mapping[str, str]) -> dict[str, str]:
    """A ``REMOVED`` instance's values (a changes.csv row): identified like a listed one, and retired."""
    instance_id = row["InstanceId"]
    return {
        "object_id": instance_id,
        "vm_inst_id": instance_id,
        "name": row.get("Name") or instance_id,
        "install_status": RETIRED,
    }


def _key(row: Mapping[str, str] | None) -> Key | None:
    return None if row is None else (row["Account"], row["Region"], row["InstanceId"])


def _merged(
    current: Iterable[Mapping[str, str]], removed: Iterable[Mapping[str, str]]
) -> Iterator[tuple[Mapping[str, str], bool]]:
    """Both sorted streams as one, in key order: ``(row, retired)``; keys must strictly increase."""
    listed, gone = iter(current), iter(removed)
    a, b = next(listed, None), next(gone, None)
    last: Key | None = None
    while a is not None or b is not None:
        key_a, key_b = _key(a), _key(b)
        if a is not None and key_a is not None and (key_b is None or key_a <= key_b):
            row, retired, key = a, False, key_a
            if key_a == key_b:  # listed again: it is not gone (changes.csv never says so; be safe)
                b = next(gone, None)
            a = next(listed, None)
        elif b is not None and key_b is not None:
            row, retired, key = b, True, key_b
            b = next(gone, None)
        if last is not None and key <= last:
            which = "changes.csv" if retired else "the CSV"
            raise PayloadError(
                f"{which} is not sorted by Account, Region, InstanceId (or lists an instance twice): "
                f"{'/'.join(key)} follows {'/'.join(last)}"
            )
        last = key
        yield row, retired


def elements(
    current: Iterable[Mapping[str, str]],
    removed: Iterable[Mapping[str, str]],
    account_names: Mapping[str, str] | None = None,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """
    The payload's items and relations, in order, as ``("item", item)`` and ``("relation", relation)``:
    per account its service account item, per region its datacenter item, then its instances (listed and
    retired, in key order). ``account_names`` (account id -> name, as in the CSV's AccountName) names the
    accounts; an account without one is named by its id.
    """
    names = account_names or {}
    index = -1
    account: str | None = None
    region: str | None = None
    account_index = datacenter_index = -1
    for row, retired in _merged(current, removed):
        if row["Account"] != account:
            account, region = row["Account"], None
            index += 1
            account_index = index
            yield (
                "item",
                {
                    "className": ACCOUNT_CLASS,
                    "values": {
                        "object_id": account,
                        "account_id": account,
                        "name": names.get(account) or row.get("AccountName") or account,
                        "datacenter_type": DATACENTER_CLASS,
                    },
                },
            )
        if row["Region"] != region:
            region = row["Region"]
            index += 1
            datacenter_index = index
            yield (
                "item",
                {
                    "className": DATACENTER_CLASS,
                    "values": {"object_id": region, "name": region, "region": region},
                },
            )
            yield "relation", {"parent": datacenter_index, "child": account_index, "type": HOSTED_ON}
        index += 1
        values = retired_values(row) if retired else instance_values(row)
        yield "item", {"className": INSTANCE_CLASS, "values": values}
        yield "relation", {"parent": index, "child": datacenter_index, "type": HOSTED_ON}


def read_rows(source: IO[bytes], columns: Sequence[str], which: str) -> Iterator[dict[str, str]]:
    """Stream the rows of a CSV (a binary file, from its start) that must have ``columns``."""
    return read_csv_rows(source, columns, which, PayloadError)


def removed_rows(source: IO[bytes]) -> Iterator[dict[str, str]]:
    """The ``REMOVED`` rows of a changes.csv (a binary file, from its start); ``NOT_VERIFIED`` never."""
    return (
        row for row in read_rows(source, ("Change", *KEY_COLUMNS), "changes.csv") if row["Change"] == REMOVED
    )


def _dumps(element: Mapping[str, Any]) -> str:
    return json.dumps(element, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def write_json(stream: Iterable[tuple[str, dict[str, Any]]], out: Writable) -> dict[str, int]:
    """
    Write the payload's JSON (UTF-8, one item or relation a line) into the binary file ``out`` from
    :func:`elements`: items as they come, relations spooled and appended. Returns the counts.
    """
    counts = {"items": 0, "relations": 0, "accounts": 0, "datacenters": 0, "instances": 0, "retired": 0}
    classes = {ACCOUNT_CLASS: "accounts", DATACENTER_CLASS: "datacenters", INSTANCE_CLASS: "instances"}
    with spool(CHUNK) as relations:  # bounded: beyond CHUNK on disk
        out.write(b'{"items":[')
        for kind, element in stream:
            line = _dumps(element).encode()
            if kind == "item":
                out.write((b"\n" if counts["items"] == 0 else b",\n") + line)
                counts["items"] += 1
                counts[classes[element["className"]]] += 1
                if element["values"].get("install_status") == RETIRED:
                    counts["retired"] += 1
            else:
                relations.write((b"\n" if counts["relations"] == 0 else b",\n") + line)
                counts["relations"] += 1
        out.write(b'\n],\n"relations":[')
        relations.seek(0)
        shutil.copyfileobj(relations, out, CHUNK)
        out.write(b"\n]}\n")
    return counts


def _account_names(manifest: Mapping[str, Any]) -> dict[str, str]:
    """Account id -> name as the CSV's AccountName cell has it (neutralised), from the manifest."""
    listed = manifest.get("accounts") or manifest.get("expected_accounts") or []
    return {str(a["id"]): neutralise(str(a.get("name") or "")) for a in listed if a.get("id")}


def _changes_file(store: SnapshotStore, manifest: Mapping[str, Any], out: IO[bytes]) -> None:
    """This snapshot's changes.csv into ``out``, checked against the SHA-256 its summary recorded."""
    summary = manifest.get("changes") or {}
    key = summary.get("key")
    if not key:
        raise PayloadError("the manifest names no changes.csv: the payload is written after it")
    sha256 = store.download_into(str(key), out)
    if sha256 is None:
        raise PayloadError(f"this snapshot's changes.csv {store.uri(str(key))} is missing")
    if summary.get("sha256") and sha256 != summary["sha256"]:
        raise PayloadError(f"{store.uri(str(key))} does not match the manifest's changes sha256")


def write_payload(
    store: SnapshotStore, ds: str, manifest: Mapping[str, Any], csv_file: IO[bytes]
) -> dict[str, Any]:
    """
    Write ``servicenow/ire_payload.json.gz`` of the snapshot being written (``store`` the commit's view,
    ``manifest`` with its ``changes`` summary, ``csv_file`` its merged CSV) and return the manifest's
    ``servicenow`` entry: where it is, its size and digest, and what it holds.
    """
    key = store.layout.snapshot(ds, IRE_PAYLOAD_NAME)
    with spool() as changes_csv, spool(CHUNK) as out:
        _changes_file(store, manifest, changes_csv)
        with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0) as packed:
            listed = read_rows(csv_file, CSV_COLUMNS, "the CSV")
            stream = elements(listed, removed_rows(changes_csv), _account_names(manifest))
            counts = write_json(stream, packed)
        if counts["instances"] - counts["retired"] != int(manifest.get("row_count") or 0):
            raise PayloadError(
                f"the payload lists {counts['instances'] - counts['retired']} instances, the manifest "
                f"{manifest.get('row_count')}"
            )
        sha256, size = digest_of(out)
        store.upload_file(
            out,
            key,
            IRE_CONTENT_TYPE,
            {
                "sha256": sha256,
                "items": str(counts["items"]),
                "schema-version": str(IRE_PAYLOAD_SCHEMA_VERSION),
            },
        )
    log.info(
        "Wrote %s (%d items: %d instances of which %d retired; %d relations; %d bytes)",
        store.uri(key),
        counts["items"],
        counts["instances"],
        counts["retired"],
        counts["relations"],
        size,
    )
    return {
        "key": key,
        "uri": store.uri(key),
        "schema_version": IRE_PAYLOAD_SCHEMA_VERSION,
        "format": f"ServiceNow Identification and Reconciliation API request body (POST {IRE_ENDPOINT})",
        "compression": "gzip",
        "bytes": size,
        "sha256": sha256,
        **counts,
        "cells": "as in the CSV (formula-neutralised with a leading ')",
    }


# --- batches: what the example DAG posts -------------------------------------------------------------------


def load(data: bytes) -> dict[str, Any]:
    """A payload file's bytes (gzip JSON) as the payload object."""
    payload = json.loads(gzip.decompress(data))
    if not isinstance(payload, dict) or not isinstance(payload.get("items"), list):
        raise PayloadError("not an identifyreconcile payload (no items list)")
    return payload


def _hosts(payload: Mapping[str, Any]) -> dict[int, int]:
    """Item index -> the index of the item it is hosted on, checking every relation's indexes."""
    count = len(payload["items"])
    hosts: dict[int, int] = {}
    for number, relation in enumerate(payload.get("relations") or []):
        parent, child = relation.get("parent"), relation.get("child")
        if not (
            isinstance(parent, int) and isinstance(child, int) and 0 <= parent < count and 0 <= child < count
        ):
            raise PayloadError(
                f"relation {number} names items {parent!r} and {child!r}: not among {count} items"
            )
        if relation.get("type") == HOSTED_ON:
            hosts[parent] = child
    return hosts


def instance_count(payload: Mapping[str, Any]) -> int:
    """The payload's ``cmdb_ci_vm_instance`` items (listed and retired)."""
    return sum(1 for item in payload["items"] if item.get("className") == INSTANCE_CLASS)


def batch_count(instances: int, size: int) -> int:
    """How many batches of ``size`` instances ``instances`` make."""
    if size < 1:
        raise PayloadError(f"batch size must be at least 1, not {size}")
    return -(-instances // size)


def batches(payload: Mapping[str, Any], size: int) -> Iterator[dict[str, Any]]:
    """
    The payload cut into batches of at most ``size`` instances, in order, each a whole request body: its
    instances, the datacenter and account items they are hosted on (repeated in every batch that needs
    them) and their Hosted on::Hosts relations, renumbered. Pure: the payload is not changed.
    """
    batch_count(0, size)  # checks the size
    items: Sequence[Mapping[str, Any]] = payload["items"]
    hosts = _hosts(payload)
    instances = [i for i, item in enumerate(items) if item.get("className") == INSTANCE_CLASS]
    for start in range(0, len(instances), size):
        wanted: set[int] = set()
        for index in instances[start : start + size]:
            while index not in wanted:  # the instance, its datacenter, the datacenter's account
                wanted.add(index)
                if index not in hosts:
                    break
                index = hosts[index]
        kept = sorted(wanted)
        renumber = {old: new for new, old in enumerate(kept)}
        yield {
            "items": [items[i] for i in kept],
            "relations": [
                {"parent": renumber[i], "child": renumber[hosts[i]], "type": HOSTED_ON}
                for i in kept
                if hosts.get(i) in renumber
            ],
        }


def batch(payload: Mapping[str, Any], number: int, size: int) -> dict[str, Any]:
    """Batch ``number`` (from 0) of :func:`batches`."""
    for position, body in enumerate(batches(payload, size)):
        if position == number:
            return body
    raise PayloadError(
        f"batch {number} does not exist: the payload has {batch_count(instance_count(payload), size)}"
    )
