"""
``ExpectedBucketOwner`` on every request, read on the wire at the loopback gateway (issue 10, finding 6):
including the requests s3transfer makes on its own, which take no extra arguments — its
``AbortMultipartUpload`` after a failed part, and the ``HeadObject`` and ``CopyObject`` of a managed copy
(whose source owner s3transfer refuses as an argument). ``SnapshotStore`` adds the owner with a botocore
``before-parameter-build.s3`` hook on its client, for its bucket only.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import boto3
import pytest
from botocore.exceptions import ClientError

from devtools.gateway import AwsGateway, Request
from include.cmdb_inventory.storage import UPLOAD_CHUNK, SnapshotStore

BUCKET, OTHER_BUCKET = "cmdb-owner-tests", "someone-elses-bucket"
PREFIX = "cmdb/ec2-inventory"
OWNER_HEADER, SOURCE_OWNER_HEADER = "x-amz-expected-bucket-owner", "x-amz-source-expected-bucket-owner"


@pytest.fixture
def wire() -> Iterator[tuple[AwsGateway, list[Request]]]:
    """moto behind the gateway, two buckets, and every S3 request the gateway sees, in order."""
    with AwsGateway() as gateway:
        seen: list[Request] = []
        gateway.add_rule(None, service="s3", when=lambda req: seen.append(req) or False)
        s3 = boto3.client("s3", **gateway.client_kwargs())
        for bucket in (BUCKET, OTHER_BUCKET):
            s3.create_bucket(Bucket=bucket)
        seen.clear()
        yield gateway, seen


def store_on(gateway: AwsGateway, owner: str | None) -> SnapshotStore:
    client = boto3.client("s3", **gateway.client_kwargs())
    return SnapshotStore(client, BUCKET, PREFIX, expected_bucket_owner=owner)


def headers(requests: list[Request], action: str) -> list[dict[str, str]]:
    return [{k.lower(): v for k, v in r.headers.items()} for r in requests if r.action == action]


def test_s3transfers_own_abort_names_the_owner(wire: tuple[AwsGateway, list[Request]]) -> None:
    gateway, seen = wire
    owner = gateway.default_account
    # The first part of the CSV's multipart upload is refused (not retried): s3transfer aborts the upload.
    gateway.fail(403, "AccessDenied", "injected", service="s3", action="UploadPart", times=1)
    store = store_on(gateway, owner)

    with pytest.raises(ClientError, match="AccessDenied"):
        store.upload_csv(io.BytesIO(b"x" * (UPLOAD_CHUNK + 1)), f"{PREFIX}/ds=2026-11-20/x.csv", {})

    actions = [r.action for r in seen]
    assert actions.count("CreateMultipartUpload") == 1
    assert "AbortMultipartUpload" in actions, actions
    for request in seen:
        assert request.bucket == BUCKET
        assert request.headers.get(OWNER_HEADER) == owner, request.action
    (abort,) = headers(seen, "AbortMultipartUpload")
    assert abort[OWNER_HEADER] == owner
    assert store.s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_a_copy_names_the_owner_of_source_and_target(wire: tuple[AwsGateway, list[Request]]) -> None:
    gateway, seen = wire
    owner = gateway.default_account
    store = store_on(gateway, owner)
    store.put_bytes(f"{PREFIX}/ds=2026-11-20/a.csv", b"a,b\r\n", "text/csv")
    seen.clear()

    store.copy(f"{PREFIX}/ds=2026-11-20/a.csv", f"{PREFIX}/latest/a.csv")

    assert {r.action for r in seen} == {"HeadObject", "CopyObject"}
    assert all(r.headers.get(OWNER_HEADER) == owner for r in seen)
    (copy,) = headers(seen, "CopyObject")
    assert copy[SOURCE_OWNER_HEADER] == owner


def test_only_the_stores_bucket_and_only_when_configured(wire: tuple[AwsGateway, list[Request]]) -> None:
    gateway, seen = wire
    owner = gateway.default_account
    store = store_on(gateway, owner)
    store.s3.list_objects_v2(Bucket=OTHER_BUCKET)  # the same client, another bucket: untouched
    store.s3.list_objects_v2(Bucket=BUCKET, ExpectedBucketOwner=owner)  # what a caller passes is kept
    unchecked = store_on(gateway, None)
    unchecked.put_json(f"{PREFIX}/x.json", {"a": 1})
    assert [(r.bucket, r.headers.get(OWNER_HEADER)) for r in seen] == [
        (OTHER_BUCKET, None),
        (BUCKET, owner),
        (BUCKET, None),
    ]
    # Many stores on one client register one hook.
    for _ in range(3):
        SnapshotStore(store.s3, BUCKET, PREFIX, expected_bucket_owner=owner)
    seen.clear()
    store.get_json(f"{PREFIX}/x.json")
    assert [r.headers.get_all(OWNER_HEADER) for r in seen] == [[owner]]
