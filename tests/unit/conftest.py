"""Unit-test fixtures shared by the modules that talk to moto's in-process AWS, and what a scan stages."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from moto import mock_aws

from include.cmdb_inventory import contract
from include.cmdb_inventory.contract import COLUMNS
from include.cmdb_inventory.storage import SnapshotStore

if TYPE_CHECKING:
    from include.cmdb_inventory.config import Account
    from include.cmdb_inventory.records import Record
    from include.cmdb_inventory.run import RunInfo

REGION = "us-east-1"
BUCKET = "cmdb-inventory-bucket"
PREFIX = "cmdb/ec2-inventory"


@contextmanager
def moto_in_process() -> Iterator[None]:
    """moto's in-process AWS with dummy credentials; no profile, config file or endpoint of the machine."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": "/nonexistent/aws-config",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
        }.items():
            patch.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            patch.delenv(name, raising=False)
        with mock_aws():
            yield


@pytest.fixture(scope="module")
def mocked_aws() -> Iterator[None]:
    """moto's in-process AWS with dummy credentials, once per module (starting it per test is slow)."""
    with moto_in_process():
        yield


@pytest.fixture
def fresh_aws() -> Iterator[None]:
    """moto's in-process AWS for one test only: nothing another test made (a bucket, a stack) is there."""
    with moto_in_process():
        yield


def empty_bucket(client: Any, bucket: str) -> None:
    """Create ``bucket``, or empty it: its multipart uploads aborted, its objects deleted."""
    if bucket not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=bucket)
        return
    for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys})


@pytest.fixture
def s3_bucket() -> str:
    """The bucket of the ``s3`` and ``store`` fixtures; a module with a bucket of its own overrides this."""
    return BUCKET


@pytest.fixture
def s3(mocked_aws: None, s3_bucket: str) -> Any:
    """A fresh client (so event hooks never leak between tests) and ``s3_bucket``, empty."""
    client = boto3.client("s3", region_name=REGION)
    empty_bucket(client, s3_bucket)
    return client


@pytest.fixture
def store(s3: Any, s3_bucket: str) -> SnapshotStore:
    """The snapshot store on ``s3``: ``s3_bucket`` under ``PREFIX``, no KMS key, no expected owner."""
    return SnapshotStore(s3, s3_bucket, PREFIX)


# --- what scan_account leaves in staging, for the merge to read ---------------------------------------------


def stage_scanned(
    store: SnapshotStore,
    run: RunInfo,
    account: Account,
    records: list[Record],
    regions: list[dict[str, Any]],
    columns: Sequence[str] = COLUMNS,
    **status: Any,
) -> int:
    """
    What scan_account leaves in staging for an account whose role was assumed: ``records`` (sorted) as its
    part, and an OK status with ``regions`` (then ``status``'s fields). Returns the part's row count.
    """
    from include.cmdb_inventory import inventory  # imports Airflow: only the modules that merge pay for it

    staging = store.layout.staging(run.ds, run.run_id)
    part_key = store.layout.part(staging, account.id)
    count = store.write_part(part_key, records, columns)
    doc = inventory._status_doc(
        run, account, status=contract.OK, regions=regions, instances=count, part_key=part_key, **status
    )
    doc["columns"] = list(columns)  # as scan_account records them
    store.put_json(store.layout.status(staging, account.id), doc)
    return count


def stage_failed(
    store: SnapshotStore, run: RunInfo, account: Account, status: str, error: dict[str, str]
) -> None:
    """What scan_account leaves in staging for an account that failed before its regions were known."""
    from include.cmdb_inventory import inventory

    doc = inventory._status_doc(run, account, status=status, error=error)
    store.put_json(store.layout.status(store.layout.staging(run.ds, run.run_id), account.id), doc)
