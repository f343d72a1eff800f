"""
The baseline: a straight port of the 2015 PowerShell script (AWS .NET blog, "Cross-Account IAM Roles in
Windows PowerShell") to boto3. As a process of its own:

    python -m bench.baseline PARAMS.json RESULT.json

Accounts one after another; for each, ``Use-STSRole`` (AssumeRole ``CMDBDiscovery``), then the regions
one after another (``Get-AWSRegion`` is the SDK's local list: here the configured regions) and
``Get-EC2Instance`` (DescribeInstances, paginated), then ``ConvertTo-Csv`` of Account, Region,
InstanceId, Name. The script ran as ``CMDBApplication`` (an instance profile): here, one AssumeRole of
that role first. PARAMS: ``endpoint_url``, ``login``, ``password``, ``hub_role_arn``, ``accounts``,
``regions``, ``role_name``, ``csv_path``.
"""

from __future__ import annotations

import csv
import sys
import time
from typing import Any

from bench.servers import child_main, peak_rss_mb


def run(params: dict[str, Any]) -> dict[str, Any]:
    """The 2015 algorithm; returns its wall and CPU seconds and writes its CSV to ``csv_path``."""
    import boto3

    endpoint = params["endpoint_url"]
    hub = boto3.client(
        "sts",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=params["login"],
        aws_secret_access_key=params["password"],
    )
    cpu0, t0 = time.process_time(), time.perf_counter()
    profile = hub.assume_role(RoleArn=params["hub_role_arn"], RoleSessionName="CMDBApplication")[
        "Credentials"
    ]
    session = boto3.session.Session(
        aws_access_key_id=profile["AccessKeyId"],
        aws_secret_access_key=profile["SecretAccessKey"],
        aws_session_token=profile["SessionToken"],
    )
    sts = session.client("sts", endpoint_url=endpoint, region_name="us-east-1")
    rows: list[dict[str, str]] = []
    for account in params["accounts"]:
        role_arn = f"arn:aws:iam::{account}:role/{params['role_name']}"
        creds = sts.assume_role(RoleArn=role_arn, RoleSessionName="CMDB")["Credentials"]
        for region in params["regions"]:
            ec2 = session.client(
                "ec2",
                endpoint_url=endpoint,
                region_name=region,
                aws_access_key_id=creds["AccessKeyId"],
                aws_secret_access_key=creds["SecretAccessKey"],
                aws_session_token=creds["SessionToken"],
            )
            for page in ec2.get_paginator("describe_instances").paginate():
                for reservation in page["Reservations"]:
                    for instance in reservation["Instances"]:
                        name = next((t["Value"] for t in instance.get("Tags", []) if t["Key"] == "Name"), "")
                        rows.append(
                            {
                                "Account": account,
                                "Region": region,
                                "InstanceId": instance["InstanceId"],
                                "Name": name,
                            }
                        )
    with open(params["csv_path"], "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=["Account", "Region", "InstanceId", "Name"])
        writer.writeheader()
        writer.writerows(rows)
    t1, cpu1 = time.perf_counter(), time.process_time()
    return {
        "wall": t1 - t0,
        "cpu": cpu1 - cpu0,
        "peak_rss_mb": peak_rss_mb(),
        "row_count": len(rows),
    }


if __name__ == "__main__":
    sys.exit(child_main(run, sys.argv[1:]))
