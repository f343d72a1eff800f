"""
The shipped bucket template (``include/iam/cmdb-bucket.yaml``) cleans up what the DAG leaves behind (issue
10, finding 6): incomplete multipart uploads under the prefix are aborted after one day, and the staging
prefix the code writes (``contract.Layout``) expires after ``StagingRetentionDays``; the snapshots never
do. The documented JSON for an existing bucket says the same and S3 (moto) accepts it; moto's
CloudFormation deploys the template (it does not apply ``LifecycleConfiguration``, so the rules themselves
are read from the template as moto's CloudFormation parser evaluates them: ``render_properties``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import boto3
import pytest

from devtools.iam_templates import TEMPLATE_DIR, TemplateError, load_template, render_properties
from include.cmdb_inventory.config import parse_settings
from include.cmdb_inventory.contract import CSV_NAME, MANIFEST_NAME, Layout

TEMPLATE = "cmdb-bucket"
BUCKET = "example-corp-cmdb"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"
ABORT_ID, STAGING_ID = "cmdb-abort-incomplete-multipart-uploads", "cmdb-expire-staging"


def rules(**parameters: str) -> dict[str, dict[str, Any]]:
    """The template's lifecycle rules by id, evaluated with these parameters."""
    props = render_properties(TEMPLATE, "InventoryBucket", {"BucketName": BUCKET, **parameters})
    return {rule["Id"]: rule for rule in props["LifecycleConfiguration"]["Rules"]}


def staging_root(prefix: str) -> str:
    """The prefix every run's staging keys share, as the code builds them."""
    return Layout(prefix).staging("2026-11-20", "scheduled__2026-11-20T02:00:00+00:00").split("ds=")[0]


def as_s3_api(rule: dict[str, Any]) -> dict[str, Any]:
    """A CloudFormation lifecycle rule in the shape of S3's PutBucketLifecycleConfiguration."""
    api: dict[str, Any] = {"ID": rule["Id"], "Status": rule["Status"], "Filter": {"Prefix": rule["Prefix"]}}
    if "AbortIncompleteMultipartUpload" in rule:
        api["AbortIncompleteMultipartUpload"] = {
            "DaysAfterInitiation": int(rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"])
        }
    if "ExpirationInDays" in rule:
        api["Expiration"] = {"Days": int(rule["ExpirationInDays"])}
    if "NoncurrentVersionExpiration" in rule:
        api["NoncurrentVersionExpiration"] = {
            "NoncurrentDays": int(rule["NoncurrentVersionExpiration"]["NoncurrentDays"])
        }
    return api


def documented_lifecycle() -> dict[str, Any]:
    """The JSON block the deployment guide gives for an existing bucket."""
    text = DOCS.read_text(encoding="utf-8")
    match = re.search(r"<!-- cmdb-lifecycle\.json:[^>]*-->\s*```json\n(.*?)\n```", text, re.DOTALL)
    assert match, "docs/deployment.md lost its cmdb-lifecycle.json block"
    return dict(json.loads(match.group(1)))


@pytest.mark.parametrize(
    ("parameters", "prefix", "days"),
    [({}, None, 14), ({"Prefix": "team/cmdb/ec2", "StagingRetentionDays": "3"}, "team/cmdb/ec2", 3)],
    ids=["defaults", "custom"],
)
def test_the_rules_match_what_the_code_writes(
    parameters: dict[str, str], prefix: str | None, days: int
) -> None:
    # The template's default prefix is the DAG's.
    prefix = prefix or parse_settings({"accounts": ["111111111111"], "bucket": BUCKET}).prefix
    layout = Layout(prefix)
    found = rules(**parameters)
    assert set(found) == {ABORT_ID, STAGING_ID}
    assert all(rule["Status"] == "Enabled" for rule in found.values())

    abort = found[ABORT_ID]
    assert abort["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    assert abort["Prefix"] == f"{prefix}/"
    assert not {"ExpirationInDays", "ExpirationDate", "Transitions"} & set(abort)
    for key in (layout.snapshot("2026-11-20", CSV_NAME), layout.latest(CSV_NAME)):  # the multipart uploads
        assert key.startswith(abort["Prefix"]), key

    staging = found[STAGING_ID]
    assert staging["Prefix"] == staging_root(prefix) == f"{prefix}/_staging/"
    assert int(staging["ExpirationInDays"]) == days
    assert staging["NoncurrentVersionExpiration"] == {"NoncurrentDays": 1}
    run = layout.staging("2026-11-20", "manual__2026-11-20T10:00:00+00:00")
    for key in (
        layout.part(run, "111111111111"),
        layout.status(run, "111111111111"),
        f"{run}/{MANIFEST_NAME}",
    ):
        assert key.startswith(staging["Prefix"]), key
    for key in (layout.snapshot("2026-11-20", CSV_NAME), layout.latest(MANIFEST_NAME)):  # never expire
        assert not key.startswith(staging["Prefix"]), key


def test_retention_is_a_validated_parameter() -> None:
    spec = load_template(TEMPLATE)["Parameters"]["StagingRetentionDays"]
    assert (spec["Type"], spec["Default"], spec["MinValue"]) == ("Number", 14, 1)
    for bad, message in (("0", "MinValue"), ("99999", "MaxValue"), ("two", "not a number")):
        with pytest.raises(TemplateError, match=message):
            rules(StagingRetentionDays=bad)


def test_the_bucket_is_private_encrypted_and_kept() -> None:
    template = load_template(TEMPLATE)
    bucket = template["Resources"]["InventoryBucket"]
    assert (bucket["DeletionPolicy"], bucket["UpdateReplacePolicy"]) == ("Retain", "Retain")
    props = render_properties(TEMPLATE, "InventoryBucket", {"BucketName": BUCKET})
    assert props["BucketName"] == BUCKET
    assert set(props["PublicAccessBlockConfiguration"].values()) == {True}
    assert props["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    (default,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert default == {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
    key = "arn:aws:kms:us-east-1:111111111111:key/0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
    props = render_properties(TEMPLATE, "InventoryBucket", {"BucketName": BUCKET, "KmsKeyArn": key})
    (default,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert default["ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key}
    assert default["BucketKeyEnabled"] is True
    assert (TEMPLATE_DIR / f"{TEMPLATE}.yaml").is_file()  # under include/iam: `make lint` lints it


def test_the_documented_json_is_the_templates_rules_and_s3_accepts_it(fresh_aws: None) -> None:
    documented = documented_lifecycle()
    assert documented["Rules"] == [as_s3_api(rules()[ABORT_ID]), as_s3_api(rules()[STAGING_ID])]

    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_lifecycle_configuration(Bucket=BUCKET, LifecycleConfiguration=documented)
    stored = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]}
    for rule in documented["Rules"]:
        for field, value in rule.items():
            assert stored[rule["ID"]][field] == value, (rule["ID"], field)


def test_moto_cloudformation_deploys_the_template(fresh_aws: None) -> None:
    cfn = boto3.client("cloudformation", region_name="us-east-1")
    body = (TEMPLATE_DIR / f"{TEMPLATE}.yaml").read_text(encoding="utf-8")
    cfn.create_stack(
        StackName="cmdb-bucket",
        TemplateBody=body,
        Parameters=[
            {"ParameterKey": "BucketName", "ParameterValue": BUCKET},
            {"ParameterKey": "StagingRetentionDays", "ParameterValue": "7"},
        ],
    )
    (stack,) = cfn.describe_stacks(StackName="cmdb-bucket")["Stacks"]
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    assert {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}["BucketName"] == BUCKET
    s3 = boto3.client("s3", region_name="us-east-1")
    rule = s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
