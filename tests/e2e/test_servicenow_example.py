"""
The ServiceNow example DAG (docs/examples/servicenow_import.py) run by Airflow's test runner against a
loopback stub of the Identification and Reconciliation API, on a snapshot the merge wrote to moto's S3
with ``servicenow: true``: every batch arrives once, 429 and 5xx are retried (in the task, then by
Airflow), no accepted batch is sent twice, and no credential reaches the logs.
"""

from __future__ import annotations

import base64
import json
import runpy
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from devtools import sandbox
from devtools.servicenow_stub import ire_stub
from include.cmdb_inventory import contract, servicenow
from include.cmdb_inventory.assets import ALIAS_NAME, SNAPSHOT
from include.cmdb_inventory.config import Account, parse_settings
from include.cmdb_inventory.records import instance_record, sort_key
from include.cmdb_inventory.run import RunInfo
from include.cmdb_inventory.storage import SnapshotStore
from tests.unit.conftest import stage_scanned

pytestmark = pytest.mark.e2e

EXAMPLE = sandbox.ROOT / "docs" / "examples" / "servicenow_import.py"
BUCKET = "cmdb-servicenow-e2e"
PREFIX = "cmdb/ec2-inventory"
X, Y = Account("111111111111", "payments"), Account("333333333333", "testing")
USER, PASSWORD = "cmdb.import", "stub-Secret-7Qx9"
DAY1, DAY2 = "2026-11-19", "2026-11-20"


def world(day: str) -> dict[Account, dict[str, list[str]]]:
    """Eleven instances on day 1; on day 2 one of X's eu-west-1 instances is gone (1/11: under the guard)."""
    eu = ["i-eu01", "i-eu02"] if day == DAY1 else ["i-eu01"]
    return {
        X: {"eu-west-1": eu, "us-east-1": [f"i-us{n:02d}" for n in range(6)]},
        Y: {"us-east-1": ["i-y01", "i-y02", "i-y03"]},
    }


def write_snapshot(store: SnapshotStore, ds: str) -> None:
    """What the nightly run leaves: the accounts' parts and statuses, then merge_inventory (servicenow on)."""
    from include.cmdb_inventory.inventory import merge_inventory

    run = RunInfo("cmdb_ec2_inventory", f"scheduled__{ds}T02:00:00+00:00", ds, f"{ds}T02:00:00+00:00")
    for account, regions in world(ds).items():
        rows = sorted(
            (
                instance_record(
                    account,
                    region,
                    {"InstanceId": i, "State": {"Name": "running"}, "PrivateIpAddress": "10.0.0.9"},
                    f"{ds}T02:00:00Z",
                )[0]
                for region, ids in regions.items()
                for i in ids
            ),
            key=sort_key,
        )
        statuses = [
            {"region": r, "status": contract.OK, "instances": len(i)} for r, i in sorted(regions.items())
        ]
        stage_scanned(store, run, account, rows, statuses, note="")
    accounts = [{"id": a.id, "name": a.name} for a in (X, Y)]
    settings = parse_settings({"accounts": accounts, "bucket": BUCKET, "prefix": PREFIX, "servicenow": True})
    summary = merge_inventory(settings, run, store, accounts)
    assert summary["written"], summary["decision_reason"]


def logs_of(home: Path, result: Any) -> str:
    files = [p.read_text(errors="replace") for p in (home / "logs").rglob("*") if p.is_file()]
    return "\n".join([result.stdout, result.stderr, *files])


def test_the_example_posts_every_batch_once_through_429_5xx_and_a_task_retry(
    airflow_home: Path, fresh_moto: str
) -> None:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=fresh_moto,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    s3.create_bucket(Bucket=BUCKET)
    store = SnapshotStore(s3, BUCKET, PREFIX)
    write_snapshot(store, DAY1)
    write_snapshot(store, DAY2)
    manifest = store.get_json(f"{PREFIX}/ds={DAY2}/{contract.MANIFEST_NAME}")
    assert manifest is not None
    assert (manifest["complete"], manifest["servicenow"]["retired"]) == (True, 1)
    payload = servicenow.load(store.get_bytes(manifest["servicenow"]["key"]))
    expected = list(servicenow.batches(payload, 4))
    assert len(expected) == 3  # 10 listed instances and 1 retired, four a batch

    connection = {
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": {"region_name": "us-east-1", "endpoint_url": fresh_moto},
    }
    # Requests 1-4 answer 503: the first batch's task uses its four attempts and fails its first try, so
    # Airflow retries it; request 5 answers 429 (Retry-After 1 s), request 7 a 502. The rest 200.
    faults: dict[int, tuple[int, str | None]] = {n: (503, None) for n in range(1, 5)}
    faults |= {5: (429, "1"), 7: (502, None)}
    with ire_stub(USER, PASSWORD, faults) as stub:
        host, port = stub.url.removeprefix("http://").split(":")
        env = sandbox.airflow_env(airflow_home, connection, {})
        env["AIRFLOW__CORE__DAGS_FOLDER"] = str(EXAMPLE.parent)
        env["AIRFLOW_CONN_SERVICENOW_DEFAULT"] = json.dumps(
            {
                "conn_type": "http",
                "host": host,
                "port": int(port),
                "schema": "http",
                "login": USER,
                "password": PASSWORD,
            }
        )
        # The example's Airflow retry delay is 120 s; this test's subject is that retry, so it waits 1 s.
        env["SERVICENOW_IMPORT_RETRY_DELAY_SECONDS"] = "1"
        conf = {"manifest_uri": store.uri(f"{PREFIX}/ds={DAY2}/{contract.MANIFEST_NAME}"), "batch_size": 4}
        result = sandbox.dags_test(env, DAY2, conf, dag_id="servicenow_import")
        assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]

    received = stub.received
    assert [r.status for r in received] == [503, 503, 503, 503, 429, 200, 502, 200, 200]
    assert all(r.path == servicenow.IRE_ENDPOINT for r in received)
    assert all(r.query == {"sysparm_data_source": ["ServiceNow"]} for r in received)
    assert all(r.user == USER and r.password_matched for r in received)  # Basic auth from the connection
    # A retried request is the same batch again; every batch accepted exactly once, none after it was.
    assert received[0].body == received[1].body == received[2].body == received[3].body == received[8].body
    assert received[4].body == received[5].body
    assert received[6].body == received[7].body
    accepted = [json.dumps(r.body, sort_keys=True) for r in stub.accepted()]
    assert sorted(accepted) == sorted(json.dumps(b, sort_keys=True) for b in expected)
    assert len(set(accepted)) == len(accepted) == 3
    retired = [
        i for r in stub.accepted() for i in r.body["items"] if i["values"].get("install_status") == "7"
    ]
    assert [i["values"]["object_id"] for i in retired] == ["i-eu02"]

    # Neither the password nor the Basic auth header's value is in any output or task log.
    logs = logs_of(airflow_home, result)
    assert "ServiceNow answered HTTP 429; attempt 1 of 4 in 1.0 s" in logs
    assert "ServiceNow answered HTTP 503 4 times" in logs  # the try Airflow retried
    for secret in (PASSWORD, base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()):
        assert secret not in logs


def test_the_example_skips_partial_subset_and_held_snapshots() -> None:
    example = runpy.run_path(str(EXAMPLE))
    reason = example["skip_reason"]
    whole = {"complete": True, "subset": False, "servicenow": {"key": "k"}}
    assert reason(whole, False) is None
    assert "partial snapshot" in reason({**whole, "complete": False}, False)
    assert "subset snapshot" in reason({**whole, "subset": True}, False)
    assert reason({**whole, "complete": False, "subset": True}, True) is None  # import_partial
    assert "no ServiceNow payload" in reason({**whole, "servicenow": None}, True)
    held = {**whole, "removal_guard": {"state": contract.GUARD_HELD}}
    assert "removal guard's state is HELD" in reason(held, True)
    assert reason({**whole, "removal_guard": {"state": contract.GUARD_APPROVED}}, False) is None


def test_the_example_reads_the_param_or_the_newest_triggering_event() -> None:
    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

    which = runpy.run_path(str(EXAMPLE))["which_manifest"]

    def event(ds: str, hour: int) -> AssetEventDagRunReferenceResult:
        return AssetEventDagRunReferenceResult(
            asset={"name": SNAPSHOT.name, "uri": SNAPSHOT.uri, "extra": {}},
            extra={"manifest_uri": f"s3://b/p/ds={ds}/manifest.json", "ds": ds, "complete": True},
            source_task_id="merge_inventory",
            source_dag_id="cmdb_ec2_inventory",
            source_run_id=f"scheduled__{ds}",
            source_map_index=-1,
            source_aliases=[{"name": ALIAS_NAME}],
            timestamp=datetime(2026, 12, 1, hour, tzinfo=UTC),
        )

    events = TriggeringAssetEventsAccessor.build([event("2026-12-02", 3), event("2026-12-01", 2)])
    assert which({}, events) == "s3://b/p/ds=2026-12-02/manifest.json"
    assert which({"manifest_uri": "s3://b/x/manifest.json"}, events) == "s3://b/x/manifest.json"
    with pytest.raises(ValueError, match="give the manifest_uri param"):
        which({"manifest_uri": None}, TriggeringAssetEventsAccessor.build([]))


def test_retry_after_is_honoured_in_seconds_or_as_a_date_else_backoff() -> None:
    retry_after = runpy.run_path(str(EXAMPLE))["retry_after"]

    class Answer:
        def __init__(self, headers: Mapping[str, str]) -> None:
            self.headers = headers

    assert retry_after(Answer({"Retry-After": "7"}), 1) == 7.0
    assert 0 <= retry_after(Answer({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}), 1) == 0.0
    waits: Sequence[float] = [retry_after(Answer({}), n) for n in (1, 2, 3)]
    assert waits == [1.0, 2.0, 4.0]
