"""The downstream example of docs/output-contract.md (not deployed): parses, scheduled on the snapshot."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from include.cmdb_inventory.assets import ALIAS_NAME, SNAPSHOT

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"


def test_example_parses_and_is_scheduled_on_the_snapshot_asset() -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(EXAMPLES))
    assert bag.import_errors == {}
    dag = bag.dags["cmdb_import_dag"]
    assert [(a.name, a.uri) for a in dag.timetable.asset_condition.objects] == [(SNAPSHOT.name, SNAPSHOT.uri)]
    assert [t.task_id for t in dag.tasks] == ["import_snapshot"]


def test_example_is_not_in_the_deployed_dags_folder() -> None:
    assert not (ROOT / "dags" / "cmdb_import_dag.py").exists()


def test_example_reads_the_newest_triggering_event() -> None:
    import runpy

    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

    example = runpy.run_path(str(EXAMPLES / "cmdb_import_dag.py"))

    def event(ds: str, hour: int) -> AssetEventDagRunReferenceResult:
        return AssetEventDagRunReferenceResult(
            asset={"name": SNAPSHOT.name, "uri": SNAPSHOT.uri, "extra": {}},
            extra={"csv_uri": f"s3://b/p/ds={ds}/ec2_inventory.csv", "ds": ds, "complete": True},
            source_task_id="merge_inventory",
            source_dag_id="cmdb_ec2_inventory",
            source_run_id=f"scheduled__{ds}",
            source_map_index=-1,
            source_aliases=[{"name": ALIAS_NAME}],
            timestamp=datetime(2026, 12, 1, hour, tzinfo=UTC),
        )

    events = TriggeringAssetEventsAccessor.build([event("2026-12-02", 3), event("2026-12-01", 2)])
    assert example["latest_snapshot"](events)["ds"] == "2026-12-02"
    with pytest.raises(ValueError, match="not triggered"):
        example["latest_snapshot"](TriggeringAssetEventsAccessor.build([]))
