"""
Two nightly runs of the DAG through the loopback AWS gateway: day 1 complete; before day 2 one instance is
stopped, one is added and one account's role is broken. Day 2's changes.csv and notification must show
the stop and the addition, and list the broken account's instances as NOT_VERIFIED, never as removed.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from include.cmdb_inventory import emulator, sandbox
from tests.aws_gateway import AwsGateway

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("changes_e2e")]

# The demo's organisation (the 2015 blog's Example Corp), scanned in the regions where it has servers.
REGIONS = ["ap-northeast-1", "ap-southeast-2", "eu-west-1", "us-east-1", "us-east-2", "us-west-2"]
DAY1, DAY2 = "2026-11-19", "2026-11-20"
BROKEN = "333333333333"  # Testing: two servers in us-east-2, one in ap-southeast-2
ARTIFACTS = sandbox.ROOT / "test-artifacts" / "changes"


@pytest.fixture
def gateway() -> Iterator[AwsGateway]:
    with AwsGateway() as gw:
        gw.reset_moto()  # moto's state is per process: start from an empty world
        yield gw


def s3_text(s3: Any, bucket: str, key: str) -> str:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")


def drain(sqs: Any, queue_url: str) -> list[str]:
    texts: list[str] = []
    while True:
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        messages = got.get("Messages", [])
        if not messages:
            return texts
        for m in messages:
            texts.append(m["Body"])
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])


def test_day_two_reports_the_stop_the_addition_and_never_removes_a_broken_account(
    airflow_home: Path, gateway: AwsGateway
) -> None:
    seeded = emulator.seed(gateway.url, emulator.blog_world())
    variable = {**seeded["variable"], "regions": REGIONS, "parquet": True}
    env = sandbox.airflow_env(airflow_home, seeded["connection"], variable)
    assert seeded["connection"]["extra"]["endpoint_url"] == gateway.url
    assert seeded["connection"]["extra"]["service_config"]["sts"]["endpoint_url"] == gateway.url

    payer = emulator.session_in(gateway.url, emulator.PAYER)
    s3, sqs = payer.client("s3", endpoint_url=gateway.url), payer.client("sqs", endpoint_url=gateway.url)
    bucket, prefix = variable["bucket"], "cmdb/ec2-inventory"

    day1 = sandbox.dags_test(env, DAY1)
    assert day1.returncode == 0, (day1.stdout + day1.stderr)[-5000:]
    first = json.loads(s3_text(s3, bucket, f"{prefix}/ds={DAY1}/manifest.json"))
    assert first["complete"] is True
    assert first["changes"]["status"] == "NO_PREVIOUS"
    drain(sqs, seeded["queue_url"])

    # Overnight: one instance stopped, one added, and the broken account's role can no longer be assumed.
    dev = seeded["instances"]["222222222222"]
    stopped = next(i for i in dev if i["name"] == "dev-web-1")
    dev_ec2 = emulator.session_in(gateway.url, "222222222222").client(
        "ec2", endpoint_url=gateway.url, region_name=stopped["region"]
    )
    dev_ec2.stop_instances(InstanceIds=[stopped["id"]])
    prod_ec2 = emulator.session_in(gateway.url, "444444444444").client(
        "ec2", endpoint_url=gateway.url, region_name="eu-west-1"
    )
    added = prod_ec2.run_instances(
        ImageId="ami-12c6146b",
        MinCount=1,
        MaxCount=1,
        InstanceType="t3.small",
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "prod-cache-eu"}]}],
    )["Instances"][0]["InstanceId"]
    gateway.deny_assume_role(f"arn:aws:iam::{BROKEN}:role/CMDBDiscovery")

    day2 = sandbox.dags_test(env, DAY2)
    assert day2.returncode != 0  # check_coverage fails the run: the broken account is a gap
    manifest = json.loads(s3_text(s3, bucket, f"{prefix}/ds={DAY2}/manifest.json"))
    assert manifest["complete"] is False
    assert gateway.count(service="sts", action="AssumeRole", faulted=True) >= 1

    changes_csv = s3_text(s3, bucket, f"{prefix}/ds={DAY2}/changes.csv")
    rows = list(csv.DictReader(io.StringIO(changes_csv, newline="")))
    broken = sorted(i["id"] for i in seeded["instances"][BROKEN])
    assert [(r["Change"], r["InstanceId"], r["Field"]) for r in rows] == [
        ("CHANGED", stopped["id"], "State"),
        ("CHANGED", stopped["id"], "PublicIpAddress"),  # a stopped instance loses its public IP
        *[("NOT_VERIFIED", i, "") for i in sorted(broken, key=lambda i: (_region(seeded, i), i))],
        ("ADDED", added, ""),
    ]
    assert (rows[0]["OldValue"], rows[0]["NewValue"]) == ("running", "stopped")
    assert rows[1]["OldValue"]
    assert rows[1]["NewValue"] == ""
    assert all(r["Change"] != "REMOVED" for r in rows)
    assert {r["Reason"] for r in rows if r["Change"] == "NOT_VERIFIED"} == {
        f"{BROKEN} {region} ROLE_NOT_ASSUMABLE (AccessDenied) in this snapshot"
        for region in {_region(seeded, i) for i in broken}
    }
    summary = manifest["changes"]
    assert (summary["added"], summary["removed"], summary["changed"], summary["not_verified"]) == (1, 0, 1, 3)
    assert summary["previous_ds"] == DAY1
    assert s3_text(s3, bucket, f"{prefix}/latest/changes.csv") == changes_csv
    assert manifest["parquet"]["row_count"] == manifest["row_count"]

    texts = [t for t in drain(sqs, seeded["queue_url"]) if t.startswith(f"EC2 inventory for {DAY2}")]
    assert len(texts) == 1, texts
    notification = texts[0]
    assert "Changes since 2026-11-19: 1 added, 0 removed, 1 changed, 3 not verified" in notification
    assert (
        f"CHANGED  222222222222 us-east-1 {stopped['id']} (dev-web-1) State: running -> stopped"
        in notification
    )
    assert f"{stopped['id']} (dev-web-1) PublicIpAddress: {rows[1]['OldValue']} -> (empty)" in notification
    assert f"ADDED    444444444444 eu-west-1 {added} (prod-cache-eu)" in notification
    assert (
        f"NOT_VERIFIED 2 instance(s), not counted as removed: {BROKEN} us-east-2 ROLE_NOT_ASSUMABLE"
        in notification
    )

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "day2-changes.csv").write_text(changes_csv, newline="")
    (ARTIFACTS / "day2-notification.txt").write_text(notification + "\n")


def _region(seeded: dict[str, Any], instance_id: str) -> str:
    return next(i["region"] for i in seeded["instances"][BROKEN] if i["id"] == instance_id)
