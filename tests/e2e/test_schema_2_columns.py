"""
Schema 2 through a full DAG run on moto's server: the DescribeInstances columns of instances launched with
every attribute moto keeps (spot, instance profile, security groups, key pair, IMDSv2 required, IPv6), the
tag columns, the Parquet file's list columns, and the manifest's tag-column sources.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from devtools import emulator, sandbox
from devtools.world import PAYER, Server, World, session_in
from include.cmdb_inventory.contract import COLUMNS, LIST_COLUMNS, SCHEMA_VERSION

pytestmark = pytest.mark.e2e

DS = "2026-11-20"
WORKLOADS = "222222222222"
REGIONS = ["eu-west-1", "us-east-1"]
RICH_REGION = "eu-west-1"
AMI = "ami-12c6146b"
TAG_COLUMNS = {"Owner": ["owner", "Owner", "team"], "CostCenter": ["cost-center", "CostCentre"]}


def launch_rich_instances(endpoint_url: str) -> dict[str, Any]:
    """
    In WORKLOADS' eu-west-1: a VPC and subnet with IPv6, two security groups, a key pair and an instance
    profile; an on-demand instance using all of them with IMDSv2 required, and a spot instance with one
    group. Returns what was created, as the creating calls answered (independent of DescribeInstances).
    """
    session = session_in(endpoint_url, WORKLOADS)
    ec2 = session.client("ec2", region_name=RICH_REGION, endpoint_url=endpoint_url)
    iam = session.client("iam", endpoint_url=endpoint_url)
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16", AmazonProvidedIpv6CidrBlock=True)["Vpc"]
    vpc_v6 = vpc["Ipv6CidrBlockAssociationSet"][0]["Ipv6CidrBlock"]  # a /56
    subnet = ec2.create_subnet(
        VpcId=vpc["VpcId"], CidrBlock="10.20.1.0/24", Ipv6CidrBlock=vpc_v6.replace("/56", "/64")
    )["Subnet"]
    web = ec2.create_security_group(GroupName="web", Description="web", VpcId=vpc["VpcId"])["GroupId"]
    ssh = ec2.create_security_group(GroupName="ssh", Description="ssh", VpcId=vpc["VpcId"])["GroupId"]
    ec2.create_key_pair(KeyName="payments-ops")
    iam.create_role(RoleName="payments-web", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17"}))
    profile = iam.create_instance_profile(InstanceProfileName="payments-web")["InstanceProfile"]
    iam.add_role_to_instance_profile(InstanceProfileName="payments-web", RoleName="payments-web")

    def tags(*pairs: tuple[str, str]) -> list[dict[str, Any]]:
        return [{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in pairs]}]

    rich = ec2.run_instances(
        ImageId=AMI,
        MinCount=1,
        MaxCount=1,
        InstanceType="m5.large",
        SubnetId=subnet["SubnetId"],
        SecurityGroupIds=[web, ssh],
        KeyName="payments-ops",
        IamInstanceProfile={"Arn": profile["Arn"]},
        MetadataOptions={"HttpTokens": "required"},
        Ipv6AddressCount=2,
        TagSpecifications=tags(
            ("Name", "payments-web"), ("owner", "ann"), ("team", "payments"), ("cost-center", "4711")
        ),
    )
    spot = ec2.run_instances(
        ImageId=AMI,
        MinCount=1,
        MaxCount=1,
        SubnetId=subnet["SubnetId"],
        SecurityGroupIds=[ssh],
        InstanceMarketOptions={"MarketType": "spot"},
        # An empty owner names nobody: the column falls through to team.
        TagSpecifications=tags(
            ("Name", "batch-spot"), ("owner", ""), ("team", "data"), ("CostCentre", "=42")
        ),
    )
    found = {}
    for name, reservation in (("rich", rich), ("spot", spot)):
        (instance,) = reservation["Instances"]
        instance_id = instance["InstanceId"]
        interfaces = ec2.describe_network_interfaces(
            Filters=[{"Name": "attachment.instance-id", "Values": [instance_id]}]
        )["NetworkInterfaces"]
        volumes = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [instance_id]}])[
            "Volumes"
        ]
        found[name] = {
            "id": instance_id,
            "reservation": reservation["ReservationId"],
            "private_dns": instance["PrivateDnsName"],
            "ipv6": sorted(a["Ipv6Address"] for i in interfaces for a in i.get("Ipv6Addresses", [])),
            "volumes": sorted(v["VolumeId"] for v in volumes),
        }
    return {"web": web, "ssh": ssh, "profile_arn": profile["Arn"], **found}


def test_schema_2_columns_tag_columns_and_parquet_lists_from_a_dag_run(
    airflow_home: Path, fresh_moto: str
) -> None:
    world = World(
        accounts={PAYER: "Payer", WORKLOADS: "Workloads"},
        servers={PAYER: [Server("us-east-1", "billing", tags=(("Owner", "finance"),))]},
    )
    seeded = emulator.seed(fresh_moto, world)
    made = launch_rich_instances(fresh_moto)
    variable = {**seeded["variable"], "regions": REGIONS, "parquet": True, "tag_columns": TAG_COLUMNS}
    env = sandbox.airflow_env(airflow_home, seeded["connection"], variable)

    result = sandbox.dags_test(env, DS)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]

    s3 = session_in(fresh_moto, PAYER).client("s3", endpoint_url=fresh_moto)
    bucket = variable["bucket"]

    def get(key: str) -> bytes:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    manifest = json.loads(get(f"cmdb/ec2-inventory/ds={DS}/manifest.json"))
    body = get(f"cmdb/ec2-inventory/ds={DS}/ec2_inventory.csv")
    reader = csv.DictReader(io.StringIO(body.decode("utf-8"), newline=""))
    rows = {row["InstanceId"]: row for row in reader}
    columns = [*COLUMNS, "Owner", "CostCenter"]
    assert reader.fieldnames == columns == manifest["columns"]
    assert manifest["schema_version"] == SCHEMA_VERSION == 2
    assert manifest["complete"] is True
    assert len(rows) == 3

    rich, spot = rows[made["rich"]["id"]], rows[made["spot"]["id"]]
    (billing,) = (r for r in rows.values() if r["Name"] == "billing")
    assert {c: rich[c] for c in columns[17:]} == {
        # moto returns no PlatformDetails (real EC2 always does, e.g. "Linux/UNIX"): the cell stays empty,
        # while Platform falls back to EC2's Platform ("windows" for moto's image).
        "PlatformDetails": "",
        "Architecture": "x86_64",
        "InstanceLifecycle": "on-demand",
        "Tenancy": "default",
        "IamInstanceProfileArn": made["profile_arn"],
        "SecurityGroupIds": ";".join(sorted([made["web"], made["ssh"]])),
        "EbsVolumeIds": ";".join(made["rich"]["volumes"]),
        "KeyName": "payments-ops",
        "ImdsV2Required": "true",
        "PrivateDnsName": made["rich"]["private_dns"],
        "Ipv6Addresses": ";".join(made["rich"]["ipv6"]),
        "OutpostArn": "",
        "ReservationId": made["rich"]["reservation"],
        "OwnerId": WORKLOADS,
        "AccountOuPath": "",  # accounts from "accounts", not discovered in AWS Organizations
        "AccountTags": "",
        "Owner": "ann",
        "CostCenter": "4711",
    }
    assert rich["Platform"] == "windows"
    assert len(made["rich"]["ipv6"]) == 2
    assert made["rich"]["volumes"]
    assert (spot["InstanceLifecycle"], spot["ImdsV2Required"], spot["KeyName"]) == ("spot", "false", "")
    assert spot["SecurityGroupIds"] == made["ssh"]
    assert (spot["Owner"], spot["CostCenter"]) == ("data", "'=42")
    assert (billing["Owner"], billing["CostCenter"], billing["Ipv6Addresses"]) == ("finance", "", "")
    assert billing["InstanceLifecycle"] == "on-demand"
    assert billing["OwnerId"] == PAYER

    # Which key gave each tag column its values, over the whole snapshot.
    assert manifest["tag_columns"] == [
        {
            "column": "Owner",
            "keys": TAG_COLUMNS["Owner"],
            "matched": {"owner": 1, "Owner": 1, "team": 1},
            "unmatched": 0,
        },
        {
            "column": "CostCenter",
            "keys": TAG_COLUMNS["CostCenter"],
            "matched": {"cost-center": 1, "CostCentre": 1},
            "unmatched": 1,
        },
    ]

    # Parquet: the same rows; list columns as lists of strings (empty list for an empty cell), tag columns
    # as strings.
    table = pq.read_table(io.BytesIO(get(f"cmdb/ec2-inventory/ds={DS}/ec2_inventory.parquet")))
    assert table.column_names == columns
    for column in LIST_COLUMNS:
        kind = table.schema.field(column).type
        assert pa.types.is_list(kind), (column, kind)
        assert kind.value_type == pa.string(), (column, kind)
    assert [str(table.schema.field(c).type) for c in ("Owner", "CostCenter")] == ["string", "string"]
    parquet = {row["InstanceId"]: row for row in table.to_pylist()}
    assert parquet[made["rich"]["id"]]["SecurityGroupIds"] == sorted([made["web"], made["ssh"]])
    assert parquet[made["rich"]["id"]]["Ipv6Addresses"] == made["rich"]["ipv6"]
    assert parquet[made["rich"]["id"]]["EbsVolumeIds"] == made["rich"]["volumes"]
    assert parquet[billing["InstanceId"]]["Ipv6Addresses"] == []
    assert parquet[made["spot"]["id"]]["CostCenter"] == "'=42"
    for instance_id, row in rows.items():
        for column in LIST_COLUMNS:
            assert parquet[instance_id][column] == (row[column].split(";") if row[column] else []), column
