"""
Full DAG runs (Airflow's test runner) for issue 6: accounts from AWS Organizations with the snapshot's
Asset event, and through the fault-injecting gateway a run of the preflight DAG and one of the inventory
DAG with its deprecated Param ``mode=preflight`` (shipped defaults otherwise).
"""

from __future__ import annotations

import csv
import io
import json
import runpy
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from devtools import emulator, sandbox
from devtools.gateway import AwsGateway
from devtools.world import PAYER, Server, World, seed_organization, session_in
from include.cmdb_inventory.assets import ASSET_NAME, ASSET_URI, EXTRA_KEYS
from include.cmdb_inventory.tasks import DEPRECATION

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
REGIONS = ["eu-west-1", "us-east-1"]
DS = "2026-12-05"
PREFIX = "cmdb/ec2-inventory"


def _org_world() -> World:
    return World(
        accounts={
            PAYER: "Payer",
            "222222222222": "Development",
            "232323232323": "Development 2",
            "333333333333": "Testing",
            "444444444444": "Production",
            "555555555555": "Sandbox",
        },
        servers={
            PAYER: [Server("us-east-1", "billing")],
            "222222222222": [Server("us-east-1", "dev-web"), Server("eu-west-1", "dev-eu", count=2)],
            "232323232323": [Server("us-east-1", "dev2-excluded")],
            "333333333333": [Server("us-east-1", "test-excluded-ou")],
            "444444444444": [Server("us-east-1", "prod-suspended")],
            "555555555555": [Server("us-east-1", "sandbox-out-of-scope")],
        },
    )


def _objects(s3: Any, bucket: str) -> list[str]:
    return [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for o in page.get("Contents", [])
    ]


def test_organisation_defined_accounts_and_the_snapshot_asset_event(
    airflow_home: Path, fresh_moto: str
) -> None:
    org = seed_organization(
        fresh_moto,
        _org_world(),
        ous={
            "Workloads/Dev": ["222222222222", "232323232323"],
            "Workloads/Test": ["333333333333"],
            "Workloads/Prod": ["444444444444"],
            "Sandbox": ["555555555555"],
        },
        suspended=["444444444444"],
        tags={"222222222222": {"owner": "dev-team", "cost-center": "CC-1001"}, PAYER: {"owner": "finance"}},
    )
    ids, ous = org["ids"], org["ous"]
    seeded = emulator.seed(fresh_moto, org["world"])
    variable = {
        **{k: v for k, v in seeded["variable"].items() if k != "accounts"},
        "accounts": [{"id": PAYER, "name": "Payer (static)"}],  # combined with the organisation's
        "organizations": {
            "include_ous": [ous["Workloads"]],
            "exclude_ous": [ous["Workloads/Test"]],
            "exclude_accounts": [ids["232323232323"]],
        },
        "regions": REGIONS,
    }
    env = sandbox.airflow_env(airflow_home, seeded["connection"], variable)

    result = sandbox.dags_test(env, DS)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]

    s3 = session_in(fresh_moto, PAYER).client("s3", endpoint_url=fresh_moto)
    bucket = variable["bucket"]
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"{PREFIX}/ds={DS}/manifest.json")["Body"].read())
    body = s3.get_object(Bucket=bucket, Key=f"{PREFIX}/ds={DS}/ec2_inventory.csv")["Body"].read().decode()
    rows = list(csv.DictReader(io.StringIO(body, newline="")))

    dev = ids["222222222222"]
    # Only the static payer and the ACTIVE, included, not excluded account were scanned.
    assert {(r["Account"], r["Name"]) for r in rows} == {
        (PAYER, "billing"),
        (dev, "dev-web"),
        (dev, "dev-eu"),
    }
    assert len(rows) == 4
    assert {r["AccountName"] for r in rows} == {"Payer (static)", "Development"}  # names: static, then org
    # The organisation context, through the mapped scans' XComs into the CSV: the OU path and the tags of
    # the account discovered in Organizations; none for the static payer (outside include_ous: not asked).
    dev_tags = {"cost-center": "CC-1001", "owner": "dev-team"}
    assert {(r["Account"], r["AccountOuPath"], r["AccountTags"]) for r in rows} == {
        (PAYER, "", ""),
        (dev, "Root/Workloads/Dev", json.dumps(dev_tags, separators=(",", ":"))),
    }
    assert manifest["complete"] is True
    assert manifest["accounts_expected"] == 2
    assert manifest["accounts_source"] == "accounts+organizations"
    assert manifest["expected_accounts"] == sorted(
        [
            # At the root: outside include_ous, so not looked up in the organisation.
            {"id": PAYER, "name": "Payer (static)", "source": "accounts", "ou_path": "", "tags": {}},
            {
                "id": dev,
                "name": "Development",
                "source": "organizations",
                "ou_path": "Root/Workloads/Dev",
                "tags": dev_tags,
            },
        ],
        key=lambda a: a["id"],
    )
    not_scanned = {n["id"]: n for n in manifest["accounts_not_scanned"]}
    assert set(not_scanned) == {ids["232323232323"], ids["333333333333"], ids["444444444444"]}
    assert not_scanned[ids["232323232323"]]["reason"] == "excluded by organizations.exclude_accounts"
    assert ous["Workloads/Test"] in not_scanned[ids["333333333333"]]["reason"]
    assert not_scanned[ids["444444444444"]]["state"] == "SUSPENDED"
    assert "only ACTIVE accounts are scanned" in not_scanned[ids["444444444444"]]["reason"]
    assert ids["555555555555"] not in not_scanned  # outside include_ous: out of scope
    assert {e["account"] for e in manifest["coverage"]} == {PAYER, dev}
    latest = json.loads(s3.get_object(Bucket=bucket, Key=f"{PREFIX}/latest/manifest.json")["Body"].read())
    assert latest["expected_accounts"] == manifest["expected_accounts"]

    # The snapshot's Asset event, with the extra a downstream DAG reads.
    with sqlite3.connect(airflow_home / "airflow.db") as db:
        events = db.execute(
            "SELECT a.name, a.uri, e.extra, e.source_task_id, e.timestamp FROM asset_event e "
            "JOIN asset a ON a.id = e.asset_id"
        ).fetchall()
    assert len(events) == 1, events
    name, uri, raw_extra, source_task, timestamp = events[0]
    assert (name, uri, source_task) == (ASSET_NAME, ASSET_URI, "merge_inventory")
    extra = json.loads(raw_extra)
    assert set(extra) == set(EXTRA_KEYS)
    assert extra["csv_uri"] == f"s3://{bucket}/{PREFIX}/ds={DS}/ec2_inventory.csv"
    assert extra["ds"] == DS
    assert extra["complete"] is True
    assert extra["row_count"] == 4

    # The downstream example (docs/output-contract.md, docs/examples/) reads exactly that extra from its
    # triggering events.
    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

    example = runpy.run_path(str(ROOT / "docs" / "examples" / "cmdb_import_dag.py"))
    event = AssetEventDagRunReferenceResult(
        asset={"name": name, "uri": uri, "extra": {}},
        extra=extra,
        source_task_id=source_task,
        source_dag_id="cmdb_ec2_inventory",
        source_run_id=manifest["dag_run_id"],
        source_map_index=-1,
        source_aliases=[{"name": "cmdb_ec2_inventory_snapshot_written"}],
        timestamp=datetime.fromisoformat(timestamp).replace(tzinfo=UTC)
        if "+" not in timestamp
        else timestamp,
    )
    snapshot = example["latest_snapshot"](TriggeringAssetEventsAccessor.build([event]))
    assert snapshot["csv_uri"] == extra["csv_uri"]
    assert snapshot["row_count"] == 4


@dataclass(frozen=True)
class BrokenAccountWorld:
    """Three accounts behind the gateway, the third's CMDBDiscovery refusing AssumeRole."""

    gw: AwsGateway
    seeded: dict[str, Any]
    variable: dict[str, Any]


@pytest.fixture(scope="module")
def broken_account_world() -> Iterator[BrokenAccountWorld]:
    """Built once for the preflight runs of both DAGs (each test empties the bucket and the queue first)."""
    world = World(
        accounts={PAYER: "Payer", "222222222222": "Ready", "333333333333": "Broken"},
        servers={PAYER: [Server("us-east-1", "billing")], "222222222222": [Server("eu-west-1", "web")]},
    )
    with AwsGateway() as gw:
        gw.reset_moto()
        seeded = emulator.seed(gw.url, world)  # through the gateway, so it learns each key's account
        variable = {**seeded["variable"], "regions": REGIONS}
        gw.deny_assume_role("arn:aws:iam::333333333333:role/CMDBDiscovery")
        assert seeded["connection"]["extra"]["endpoint_url"] == gw.url
        assert seeded["connection"]["extra"]["service_config"]["sts"]["endpoint_url"] == gw.url
        yield BrokenAccountWorld(gw, seeded, variable)


def _receive(sqs: Any, queue_url: str, wait: int) -> list[str]:
    """Every message waiting in the queue (waiting up to ``wait`` seconds for the first), deleted."""
    texts: list[str] = []
    while messages := sqs.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0 if texts else wait
    ).get("Messages", []):
        for message in messages:
            texts.append(message["Body"])
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    return texts


def _preflight_run(
    where: BrokenAccountWorld, airflow_home: Path, conf: dict[str, Any] | None, dag_id: str
) -> tuple[str, list[str]]:
    """
    One run (shipped defaults, ``conf`` as its Params) on an empty bucket and queue, and what every
    preflight must show: the run fails naming the broken account, each ready account is probed once per
    region, only staging objects and the report are written, and the one notification names the broken
    account and the report. Returns the run's output and the notification's text.
    """
    gw, seeded, variable = where.gw, where.seeded, where.variable
    s3 = session_in(gw.moto_url, PAYER).client("s3", endpoint_url=gw.moto_url)
    sqs = session_in(gw.moto_url, PAYER).client("sqs", endpoint_url=gw.moto_url)
    bucket = variable["bucket"]
    for key in _objects(s3, bucket):  # the other DAG's run of this date writes the same keys
        s3.delete_object(Bucket=bucket, Key=key)
    _receive(sqs, seeded["queue_url"], wait=0)  # the other run's messages: received ones are deleted too
    gw.reset_calls()
    env = sandbox.airflow_env(airflow_home, seeded["connection"], variable)

    result = sandbox.dags_test(env, DS, conf, dag_id=dag_id)
    output = result.stdout + result.stderr

    assert result.returncode != 0, output[-5000:]  # the last check fails: an account is not ready
    assert "333333333333" in output
    assert "NOT READY 333333333333 (Broken): ROLE_NOT_ASSUMABLE" in output
    # Each ready account: one cheap DescribeInstances per allowed region, nothing paginated.
    probes = gw.calls(action="DescribeInstances")
    assert len(probes) == 2 * len(REGIONS), [(c.account, c.region) for c in probes]
    assert {c.account for c in probes} == {PAYER, "222222222222"}

    keys = _objects(s3, bucket)
    assert not [k for k in keys if not k.startswith(f"{PREFIX}/_staging/")], keys
    assert not [k for k in keys if k.endswith((".csv", ".csv.gz", "manifest.json"))], keys
    [report_key] = [k for k in keys if k.endswith("/preflight.json")]
    report = json.loads(s3.get_object(Bucket=bucket, Key=report_key)["Body"].read())
    assert report["mode"] == "preflight"
    assert report["ready"] is False
    assert [(n["account"], n["status"]) for n in report["not_ready"]] == [
        ("333333333333", "ROLE_NOT_ASSUMABLE")
    ]
    assert "AccessDenied" in report["not_ready"][0]["reasons"][0]
    ready = {a["account"]: a for a in report["accounts"] if a["ready"]}
    assert set(ready) == {PAYER, "222222222222"}
    assert ready["222222222222"]["regions_allowed"] == REGIONS

    # The notification names the broken account and the report.
    texts = _receive(sqs, seeded["queue_url"], wait=2)
    preflight_texts = [t for t in texts if "PREFLIGHT" in t]
    assert len(preflight_texts) == 1, texts
    assert "333333333333 (Broken): ROLE_NOT_ASSUMABLE" in preflight_texts[0]
    assert f"s3://{bucket}/{report_key}" in preflight_texts[0]

    # No snapshot, so no Asset event.
    with sqlite3.connect(airflow_home / "airflow.db") as db:
        assert db.execute("SELECT count(*) FROM asset_event").fetchone()[0] == 0
    return output, preflight_texts[0]


@pytest.mark.xdist_group("preflight-gateway")
def test_preflight_names_the_broken_account_and_writes_no_snapshot(
    broken_account_world: BrokenAccountWorld, airflow_home: Path
) -> None:
    output, notification = _preflight_run(
        broken_account_world, airflow_home, None, dag_id="cmdb_ec2_inventory_preflight"
    )
    assert "DEPRECATED" not in output
    assert "DEPRECATED" not in notification


@pytest.mark.xdist_group("preflight-gateway")
def test_deprecated_mode_preflight_still_runs_the_preflight_and_says_so(
    broken_account_world: BrokenAccountWorld, airflow_home: Path
) -> None:
    """The inventory DAG with the Param ``mode=preflight``: the same preflight, flagged as deprecated."""
    output, notification = _preflight_run(
        broken_account_world, airflow_home, {"mode": "preflight"}, sandbox.DAG_ID
    )
    assert f"DEPRECATED: {DEPRECATION}" in output
    assert f"DEPRECATED: {DEPRECATION}" in notification
    assert "cmdb_ec2_inventory_preflight" in notification  # what to use instead
