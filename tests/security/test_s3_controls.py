"""
S3 controls on the wire (issue point 6), read at the gateway from a real DAG run: every S3 request the
product makes names the expected bucket owner, every write asks for SSE-KMS with the configured key, no
request sets an ACL; and a bucket owned by another account is refused with a clear error.

moto enforces neither ``ExpectedBucketOwner`` nor encryption headers, so the gateway does what S3 does:
it answers 403 ``AccessDenied`` when ``x-amz-expected-bucket-owner`` names another account than the
bucket's owner (``world._add_s3_rules``).
"""

from __future__ import annotations

from collections import Counter

import pytest
from botocore.exceptions import ClientError

from include.cmdb_inventory import inventory
from include.cmdb_inventory.config import parse_settings
from include.cmdb_inventory.run import RunInfo
from include.cmdb_inventory.storage import BucketOwnerError, SnapshotStore
from tests.security.conftest import SUCCESS_DS
from tests.security.world import BUCKET, FOREIGN_ACCOUNT, FOREIGN_BUCKET, PAYER, PREFIX, Org, Run

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("security-e2e")]

WRITES = {"PutObject", "CopyObject", "CreateMultipartUpload"}  # UploadPart inherits CreateMultipartUpload's


def test_every_s3_request_of_a_run_carries_owner_and_encryption_and_no_acl(
    org: Org, success_run: Run
) -> None:
    admins = org.admin_access_keys()
    s3 = [r for r in success_run.requests if r.service == "s3" and r.access_key not in admins]
    actions = Counter(r.action for r in s3)
    assert actions["PutObject"] >= 5
    assert actions["CopyObject"] >= 1
    assert actions["GetObject"] >= 1
    assert actions["ListObjectsV2"] >= 1
    for request in s3:
        where = f"{request.action} {request.key}"
        assert request.bucket == BUCKET, where
        assert (request.key or request.params.get("prefix", "")).startswith(f"{PREFIX}/"), where
        assert request.headers.get("x-amz-expected-bucket-owner") == PAYER, where
        if request.action in ("CopyObject", "UploadPartCopy"):  # latest/ from ds=: the source's owner too
            assert request.headers.get("x-amz-source-expected-bucket-owner") == PAYER, where
        assert "x-amz-acl" not in request.headers, where
        assert not [h for h in request.headers if h.startswith("x-amz-grant-")], where
        assert "acl" not in request.params, where
        if request.action in WRITES:
            assert request.headers.get("x-amz-server-side-encryption") == "aws:kms", where
            assert request.headers.get("x-amz-server-side-encryption-aws-kms-key-id") == org.kms_key_arn, (
                where
            )
    assert not [a for a in actions if "Acl" in a]


def test_every_object_of_the_snapshot_is_stored_with_the_kms_key(org: Org, success_run: Run) -> None:
    s3 = org.admin("s3")
    keys = [
        item["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{PREFIX}/")
        for item in page.get("Contents", [])
        if f"ds={SUCCESS_DS}" in item["Key"] or "/latest/" in item["Key"]
    ]
    assert len(keys) >= 5
    for key in keys:
        head = s3.head_object(Bucket=BUCKET, Key=key)
        assert head["ServerSideEncryption"] == "aws:kms", key
        assert head["SSEKMSKeyId"] == org.kms_key_arn, key


def foreign_store(org: Org, owner: str | None) -> SnapshotStore:
    """A store on the other account's bucket, with an identity that may do anything (so only the owner
    check can refuse), through the gateway."""
    return SnapshotStore(
        org.admin("s3", via_gateway=True), FOREIGN_BUCKET, PREFIX, expected_bucket_owner=owner
    )


def test_a_bucket_owned_by_another_account_is_refused_clearly(org: Org) -> None:
    mark = org.gateway.mark()
    store = foreign_store(org, owner=PAYER)
    with pytest.raises(
        BucketOwnerError, match=rf"'{FOREIGN_BUCKET}' is not owned by the expected account {PAYER}"
    ):
        store.check_bucket()
    with pytest.raises(BucketOwnerError, match=FOREIGN_BUCKET):
        store.get_json(f"{PREFIX}/ds={SUCCESS_DS}/manifest.json")
    with pytest.raises(ClientError, match="AccessDenied"):
        store.put_json(f"{PREFIX}/x.json", {"never": "written"})

    settings = parse_settings(
        {"accounts": [PAYER], "bucket": FOREIGN_BUCKET, "prefix": PREFIX, "expected_bucket_owner": PAYER}
    )
    run = RunInfo("cmdb_ec2_inventory", "manual__owner-test", SUCCESS_DS, f"{SUCCESS_DS}T00:00:00")
    with pytest.raises(BucketOwnerError, match="refusing to write"):
        inventory.resolve_accounts(settings, run, store, overwrite=False)

    sent = org.gateway.since(mark)
    assert sent
    assert all(r.headers.get("x-amz-expected-bucket-owner") == PAYER for r in sent)
    assert org.admin("s3").list_objects_v2(Bucket=FOREIGN_BUCKET).get("KeyCount") == 0


def test_the_owner_check_is_what_refuses(org: Org) -> None:
    """Control for the test above: the same identity and bucket pass when the owner named is the real one."""
    foreign_store(org, owner=FOREIGN_ACCOUNT).check_bucket()
    foreign_store(org, owner=None).check_bucket()
    assert foreign_store(org, owner=FOREIGN_ACCOUNT).get_json(f"{PREFIX}/missing.json") is None
