"""
The snapshot as an Airflow Asset, so a CMDB import DAG can be scheduled on it (``schedule=[SNAPSHOT]``).

The bucket is only known at run time (the Variable), so the asset has a stable logical identity; set
``CMDB_EC2_INVENTORY_ASSET_URI`` in the environment (read when the DAG is parsed, never a Variable) to
give it a real URI such as ``s3://bucket/prefix/latest/ec2_inventory.csv``. ``merge_inventory`` declares
the alias :data:`SNAPSHOT_ALIAS` as its outlet and adds an event for :data:`SNAPSHOT` through it only
when it wrote a snapshot: a run that skips the date, fails to write, or is a preflight emits nothing (a
plain Asset outlet would emit an event on every successful run).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, AssetAlias

from include.cmdb_inventory import guard

if TYPE_CHECKING:
    from include.cmdb_inventory.contract import RunSummary

ASSET_NAME = "cmdb_ec2_inventory_snapshot"
ASSET_URI = os.environ.get("CMDB_EC2_INVENTORY_ASSET_URI", "x-cmdb://ec2-inventory/snapshot")
ALIAS_NAME = "cmdb_ec2_inventory_snapshot_written"

SNAPSHOT = Asset(name=ASSET_NAME, uri=ASSET_URI, group="cmdb")
SNAPSHOT_ALIAS = AssetAlias(name=ALIAS_NAME, group="cmdb")

EXTRA_KEYS = (
    "csv_uri",
    "manifest_uri",
    "latest_uri",
    "ds",
    "dag_run_id",
    "complete",
    "row_count",
    "accounts_expected",
    "accounts_covered",
    "latest_updated",
    "subset",
)


def event_extra(summary: RunSummary | Mapping[str, Any]) -> dict[str, Any]:
    """The asset event's ``extra``: where the snapshot is and what it covers (JSON values only)."""
    extra = {
        "csv_uri": summary["csv_uri"],
        "manifest_uri": summary["manifest_uri"],
        "latest_uri": summary.get("latest_uri", ""),
        "ds": summary["ds"],
        "dag_run_id": summary["dag_run_id"],
        "complete": bool(summary.get("snapshot_complete")),
        "row_count": int(summary.get("row_count") or 0),
        "accounts_expected": int(summary.get("accounts_expected") or 0),
        "accounts_covered": int(summary.get("accounts_covered") or 0),
        "latest_updated": bool(summary.get("latest_updated")),
        # A Param-subset snapshot written with overwrite=true: a downstream import may want to skip it.
        "subset": bool(summary.get("subset")),
    }
    return {k: extra[k] for k in EXTRA_KEYS}


def emit_snapshot_event(outlet_events: Any, summary: RunSummary | Mapping[str, Any]) -> bool:
    """
    Add the snapshot's asset event through the alias when the run wrote the snapshot and the mass-removal
    guard does not hold it (then the approval sends it); say whether.
    """
    if not summary.get("written"):  # a preflight's summary is never "written" either
        return False
    if guard.is_held(summary):
        return False
    outlet_events[SNAPSHOT_ALIAS].add(SNAPSHOT, extra=event_extra(summary))
    return True
