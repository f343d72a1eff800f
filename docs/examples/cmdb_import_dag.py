"""
### CMDB import, scheduled on the EC2 inventory snapshot

Runs each time `cmdb_ec2_inventory` writes a snapshot (its Asset `cmdb_ec2_inventory_snapshot`), and
reads where the CSV is and what it covers from the triggering asset event's `extra`. An example: copy it
into your DAGs folder and replace the body of `import_snapshot` with your CMDB's import.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow.sdk import Asset, dag, task

log = logging.getLogger(__name__)

# The same name and URI as include/cmdb_inventory/assets.py: an Asset is identified by both.
EC2_INVENTORY = Asset(
    name="cmdb_ec2_inventory_snapshot",
    uri=os.environ.get("CMDB_EC2_INVENTORY_ASSET_URI", "x-cmdb://ec2-inventory/snapshot"),
    group="cmdb",
)


def latest_snapshot(triggering_asset_events: Mapping[Any, Sequence[Any]]) -> dict[str, Any]:
    """The ``extra`` of the newest snapshot event that triggered this run (csv_uri, ds, complete...)."""
    events = triggering_asset_events.get(EC2_INVENTORY) or []
    if not events:
        raise ValueError("not triggered by a cmdb_ec2_inventory snapshot (a manual run?)")
    return dict(max(events, key=lambda e: e.timestamp).extra)


@dag(
    dag_id=Path(__file__).stem,
    schedule=[EC2_INVENTORY],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    doc_md=__doc__,
    tags=["cmdb", "example"],
    default_args={"owner": "cmdb-team", "retries": 2},
)
def cmdb_import_dag() -> None:
    """One task: import the snapshot the event points at."""

    @task
    def import_snapshot(triggering_asset_events: Any = None) -> dict[str, Any]:
        snapshot = latest_snapshot(triggering_asset_events or {})
        if not snapshot["complete"]:
            log.warning("Snapshot %s is partial: see %s", snapshot["ds"], snapshot["manifest_uri"])
        log.info("Importing %s (%d rows) for %s", snapshot["csv_uri"], snapshot["row_count"], snapshot["ds"])
        # Your import here, e.g. S3Hook().download_file(...) on snapshot["csv_uri"], then load the CMDB.
        return snapshot

    import_snapshot()


cmdb_import_dag()
