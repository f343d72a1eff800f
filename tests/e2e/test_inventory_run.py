"""A full DAG run (Airflow's test runner) against moto's server: 4 accounts x 3 regions."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from devtools import emulator, sandbox
from devtools.world import PAYER, Server, World, session_in
from include.cmdb_inventory.contract import COLUMNS

pytestmark = pytest.mark.e2e

REGIONS = ["eu-west-1", "us-east-1", "us-west-2"]
DS = "2026-11-20"


def four_accounts() -> World:
    """Four accounts, three regions, every state, and one account with no instances at all."""
    return World(
        accounts={
            "111111111111": "Payer",
            "222222222222": 'Dev, "quoted"',
            "333333333333": "",
            "444444444444": "Empty",
        },
        servers={
            "111111111111": [
                Server("us-east-1", "hub-1"),
                Server("eu-west-1", "hub-eu", state="stopped"),
                Server("us-west-2", "hub-west", count=3),
            ],
            "222222222222": [
                Server("us-east-1", "dev,web", tags=(("Team", "a\nb"), ("Cost", "=1+1"))),
                Server("us-west-2", "dev-gone", state="terminated"),
                Server("eu-west-1", "dev-émoji-🚀", count=2),
            ],
            "333333333333": [Server("us-west-2", "@test", state="stopped"), Server("us-east-1", "test-1")],
        },
    )


def _s3_json(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def test_full_run_lists_exactly_the_seeded_instances(airflow_home: Path, fresh_moto: str) -> None:
    world = four_accounts()
    seeded = emulator.seed(fresh_moto, world)
    variable = {**seeded["variable"], "regions": REGIONS}
    env = sandbox.airflow_env(airflow_home, seeded["connection"], variable)
    # The nightly flow as shipped: no deployment knob changed (the deadline alert is on by default).
    assert [k for k in env if k.startswith("CMDB_EC2_INVENTORY_")] == []

    result = sandbox.dags_test(env, DS)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]

    payer = session_in(fresh_moto, PAYER)
    s3 = payer.client("s3", endpoint_url=fresh_moto)
    bucket = variable["bucket"]
    manifest = _s3_json(s3, bucket, f"cmdb/ec2-inventory/ds={DS}/manifest.json")
    body = s3.get_object(Bucket=bucket, Key=f"cmdb/ec2-inventory/ds={DS}/ec2_inventory.csv")["Body"].read()
    rows = list(csv.DictReader(io.StringIO(body.decode("utf-8"), newline="")))

    # Exactly the seeded instances that are not terminated, once each, in the contract's order.
    expected = {
        (account, i["region"], i["id"])
        for account, instances in seeded["instances"].items()
        for i in instances
        if i["state"] != "terminated"
    }
    got = [(r["Account"], r["Region"], r["InstanceId"]) for r in rows]
    assert len(got) == len(set(got)) == world.expected_count() == 10
    assert set(got) == expected
    assert got == sorted(got)
    assert list(rows[0].keys()) == list(COLUMNS)
    names = {r["InstanceId"]: r["Name"] for r in rows}
    for account, instances in seeded["instances"].items():
        for i in instances:
            if i["state"] != "terminated":
                assert names[i["id"]].lstrip("'") == i["name"], (account, i)
    assert {r["Name"] for r in rows} >= {"'@test", "dev,web", "dev-émoji-🚀"}
    assert {r["State"] for r in rows} == {"running", "stopped"}

    # The manifest's ledger: every account x region, all OK, with the right counts.
    assert manifest["complete"] is True
    assert manifest["row_count"] == 10
    assert manifest["dag_id"] == "cmdb_ec2_inventory"
    assert manifest["logical_date"].startswith(DS)
    ledger = {(e["account"], e["region"]): e for e in manifest["coverage"]}
    assert set(ledger) == {(a, r) for a in world.accounts for r in REGIONS}
    assert {e["status"] for e in ledger.values()} == {"OK"}
    counts: dict[tuple[str, str], int] = {}
    for account, region, _ in expected:
        counts[(account, region)] = counts.get((account, region), 0) + 1
    assert {k: e["instances"] for k, e in ledger.items() if e["instances"]} == counts

    # latest/ holds the same snapshot.
    latest = s3.get_object(Bucket=bucket, Key="cmdb/ec2-inventory/latest/ec2_inventory.csv")["Body"].read()
    assert latest == body

    # The CMDB team's queue got the notification.
    sqs = payer.client("sqs", endpoint_url=fresh_moto)
    messages = sqs.receive_message(QueueUrl=seeded["queue_url"], MaxNumberOfMessages=10, WaitTimeSeconds=2)
    texts = [m["Body"] for m in messages.get("Messages", [])]
    assert len(texts) == 1, texts
    assert f"s3://{bucket}/cmdb/ec2-inventory/ds={DS}/ec2_inventory.csv" in texts[0]
    assert "Rows:     10" in texts[0]
    assert "4 of 4 covered" in texts[0]
    assert "12 scanned" in texts[0]


def test_invalid_configuration_fails_resolve_and_writes_nothing(airflow_home: Path, fresh_moto: str) -> None:
    seeded = emulator.seed(fresh_moto, World(accounts={"111111111111": "Payer"}))
    variable = {**seeded["variable"], "accounts": ["111111111111", "22222222222x"]}
    env = sandbox.airflow_env(airflow_home, seeded["connection"], variable)

    result = sandbox.dags_test(env, DS)
    assert result.returncode != 0
    assert "accounts[1]" in result.stdout + result.stderr
    assert "22222222222x" in result.stdout + result.stderr
    s3 = session_in(fresh_moto, PAYER).client("s3", endpoint_url=fresh_moto)
    assert s3.list_objects_v2(Bucket=variable["bucket"]).get("KeyCount", 0) == 0
