"""
Two nightly runs of the DAG through the loopback AWS gateway: day 1 complete; before day 2 one instance is
stopped, one is added and one account's role is broken. Day 2's changes.csv and notification must show
the stop and the addition, and list the broken account's instances as NOT_VERIFIED, never as removed.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools import emulator, sandbox
from devtools.gateway import AwsGateway
from devtools.world import PAYER, Server, World, session_in
from include.cmdb_inventory.text import (
    MAX_MESSAGE_BYTES,
    MAX_VALUE_CHARS,
    SNS_MESSAGE_LIMIT,
    published_size,
    utf8_size,
)
from tests.unit.test_message_limits import FORBIDDEN, INSTANCES, assert_safe_line, max_size_tags, script_of

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

    payer = session_in(gateway.url, PAYER)
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
    dev_ec2 = session_in(gateway.url, "222222222222").client(
        "ec2", endpoint_url=gateway.url, region_name=stopped["region"]
    )
    dev_ec2.stop_instances(InstanceIds=[stopped["id"]])
    prod_ec2 = session_in(gateway.url, "444444444444").client(
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


def test_fifty_maximum_size_tags_on_twenty_changed_instances_still_reach_the_cmdb_queue(
    airflow_home: Path, gateway: AwsGateway
) -> None:
    """
    Hostile tag sizes (issue 10, finding 3): 20 instances, each with 50 tags at EC2's maximum sizes in
    Latin, CJK, Devanagari and emoji, every value changed overnight. The gateway refuses a Publish the way
    SNS does: a Message parameter above 262,144 bytes (what the provider's SnsHook sends: the text inside
    JSON, non-ASCII escaped), or a subject of 100 characters or with control characters; moto alone counts
    characters of the message. Day 2's notification must still reach the queue, within the cap, without
    injected lines; the manifest's ``changes.top`` and the merge's XCom stay small; ``changes.csv`` keeps
    every value whole. Before the fix, day 2's Publish was 2.4 to 3.0 MB (which instances sort first
    varies), refused on each of its 3 tries; the merge's XCom was 3.0 MB.
    """
    account, region = PAYER, "us-east-1"
    world = World(
        accounts={account: "Payer"},
        servers={
            account: [
                Server(
                    region,
                    (tags := max_size_tags(script_of(n), n, 0))["Name"],
                    tags=tuple((k, v) for k, v in tags.items() if k != "Name"),
                )
                for n in range(INSTANCES)
            ]
        },
    )
    published: list[int] = []

    def refused_by_sns(req: Any) -> bool:
        text, title = req.param("Message") or "", req.param("Subject") or ""
        published.append(utf8_size(text))
        return utf8_size(text) > SNS_MESSAGE_LIMIT or len(title) >= 100 or bool(FORBIDDEN.search(title))

    gateway.fail(400, "InvalidParameter", "Invalid parameter: Message too long", service="sns",
                 action="Publish", when=refused_by_sns)  # fmt: skip
    seeded = emulator.seed(gateway.url, world)
    variable = {**seeded["variable"], "regions": [region]}
    env = sandbox.airflow_env(airflow_home, seeded["connection"], variable)
    payer = session_in(gateway.url, account)
    s3, sqs = payer.client("s3", endpoint_url=gateway.url), payer.client("sqs", endpoint_url=gateway.url)
    ec2 = payer.client("ec2", endpoint_url=gateway.url, region_name=region)
    bucket, prefix = variable["bucket"], "cmdb/ec2-inventory"

    day1 = sandbox.dags_test(env, DAY1)
    assert day1.returncode == 0, (day1.stdout + day1.stderr)[-5000:]
    drain(sqs, seeded["queue_url"])
    # Overnight every tag value but Name changes: each instance has one Tags change of two whole tag sets.
    for n, server in enumerate(seeded["instances"][account]):
        new = max_size_tags(script_of(n), n, 1)
        ec2.create_tags(Resources=[server["id"]], Tags=[{"Key": k, "Value": v} for k, v in new.items()])
    published.clear()

    day2 = sandbox.dags_test(env, DAY2)
    assert day2.returncode == 0, f"Publish sizes {published}: " + (day2.stdout + day2.stderr)[-3000:]
    assert gateway.count(service="sns", action="Publish", faulted=True) == 0, published
    assert len(published) == 1
    assert published[0] <= MAX_MESSAGE_BYTES, published

    manifest = json.loads(s3_text(s3, bucket, f"{prefix}/ds={DAY2}/manifest.json"))
    summary = manifest["changes"]
    assert (summary["changed"], summary["changed_fields"], summary["rows"]) == (
        INSTANCES,
        INSTANCES,
        INSTANCES,
    )

    # changes.csv: every tag set whole, as EC2 answers it now (the full record is never cut).
    described = {
        i["InstanceId"]: {t["Key"]: t["Value"] for t in i["Tags"]}
        for r in ec2.describe_instances()["Reservations"]
        for i in r["Instances"]
    }
    rows = list(csv.DictReader(io.StringIO(s3_text(s3, bucket, summary["key"]), newline="")))
    assert len(rows) == INSTANCES
    for row in rows:
        assert row["Field"] == "Tags"
        assert json.loads(row["NewValue"]) == described[row["InstanceId"]]
        assert len(json.loads(row["OldValue"])) == 50

    # The manifest's top and the merge's XCom: every value cut, both small.
    top_bytes = utf8_size(json.dumps(summary["top"], ensure_ascii=False))
    for entry in summary["top"]:
        assert all(len(v) <= MAX_VALUE_CHARS for k, v in entry.items() if k != "reason"), entry
        assert not any(FORBIDDEN.search(v) for v in entry.values()), entry
    assert top_bytes < 32_000, top_bytes
    with contextlib.closing(sqlite3.connect(airflow_home / "airflow.db")) as db:
        xcoms = dict(
            db.execute(
                "SELECT x.task_id, length(CAST(x.value AS BLOB)) FROM xcom x JOIN dag_run d ON x.dag_run_id "
                "= d.id WHERE x.key = 'return_value' AND d.logical_date LIKE ?",
                (f"{DAY2}%",),
            )
        )
    xcom_bytes = xcoms["merge_inventory"]
    assert xcom_bytes < 64_000, xcoms  # the summary, as Airflow stores it
    assert xcoms["notify_cmdb"] < 1_000, xcoms  # notify_cmdb returns a receipt, never the text it published

    # The notification: delivered once, below the cap, no injected lines, a pointer to changes.csv.
    texts = [t for t in drain(sqs, seeded["queue_url"]) if t.startswith(f"EC2 inventory for {DAY2}")]
    assert len(texts) == 1, [t[:200] for t in texts]
    notification = texts[0]
    assert utf8_size(notification) <= published_size(notification) == published[0] <= MAX_MESSAGE_BYTES
    for line in notification.split("\n"):
        assert_safe_line(line)
    assert f"  \u2026 {INSTANCES - 10} more changes in {summary['uri']}" in notification.split("\n")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "max-size-tags-notification.txt").write_text(notification + "\n")
    print(
        f"\nPublish sizes {published}; manifest changes.top {top_bytes} bytes; merge XCom {xcom_bytes} bytes;"
        f" notification {utf8_size(notification)} bytes of UTF-8"
    )
