"""Parquet next to the CSV (typed, streamed, versioned), the Athena symlinks, and their copies in latest/."""

from __future__ import annotations

import csv
import hashlib
import io
import random
import tracemalloc
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.awsrequest import AWSResponse

from include.cmdb_inventory import contract, formats, storage
from include.cmdb_inventory.config import Account, parse_settings
from include.cmdb_inventory.contract import COLUMNS, CSV_NAME, LIST_COLUMNS, PARQUET_NAME, SCHEMA_VERSION
from include.cmdb_inventory.formats import csv_to_parquet, parquet_metadata
from include.cmdb_inventory.inventory import merge_inventory
from include.cmdb_inventory.records import Record, instance_record, sort_key
from include.cmdb_inventory.run import RunInfo
from include.cmdb_inventory.storage import SnapshotStore, rows_to_csv, spool
from tests.unit.conftest import stage_scanned

REGION = "us-east-1"
BUCKET = "cmdb-formats-bucket"
PREFIX = "cmdb/ec2-inventory"
A = Account("111111111111", 'Payer, "main"')
DS = "2026-11-20"
MIB = 1024 * 1024

OWNERS = ["team-a", "", "=evil", "émoji 🚀"]
NAMES = ['=HYPERLINK("http://evil")', "multi\r\nline", 'quo"te, comma', "émoji 🚀", "", "@x", "-1", "plain"]


def tricky_records(
    count: int,
    account: Account = A,
    region: str = REGION,
    tag_columns: Sequence[tuple[str, Sequence[str]]] = (),
) -> list[Record]:
    return sorted(
        (
            instance_record(
                Account(account.id, account.name),
                region,
                {
                    "InstanceId": f"i-{n:08d}",
                    "InstanceType": "t3.micro",
                    "State": {"Name": "running" if n % 3 else "stopped"},
                    "PrivateIpAddress": f"10.0.{n // 250}.{n % 250}",
                    "LaunchTime": None if n % 5 == 0 else datetime(2026, 1, 2, 3, 4, n % 60, tzinfo=UTC),
                    "Tags": [
                        {"Key": "Name", "Value": NAMES[n % len(NAMES)]},
                        {"Key": "Team", "Value": "a\nb"},
                        *([{"Key": "owner", "Value": OWNERS[n // 2 % len(OWNERS)]}] if n % 4 else []),
                    ],
                    # List columns: none, one or several values (every third instance has none).
                    "SecurityGroups": [{"GroupId": f"sg-{g:04d}"} for g in range(n % 3)],
                    "BlockDeviceMappings": [{"Ebs": {"VolumeId": f"vol-{n:06d}{v}"}} for v in "ba"[: n % 3]],
                    "NetworkInterfaces": [
                        {"Ipv6Addresses": [{"Ipv6Address": f"2001:db8::{n:x}"}] if n % 2 else []}
                    ],
                },
                "2026-11-20T02:00:07Z",
                tag_columns=tag_columns,
            )[0]
            for n in range(count)
        ),
        key=sort_key,
    )


def csv_bytes(records: list[Record]) -> bytes:
    text = io.StringIO()
    rows_to_csv(records, text)
    return text.getvalue().encode("utf-8")


def csv_dicts(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))


def as_csv_cell(value: Any) -> str:
    """A Parquet cell in the CSV's spelling (timestamps back to ISO-8601 UTC, lists ;-joined, nulls empty)."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, list):
        assert all(isinstance(v, str) and v for v in value), value
        return ";".join(value)
    return str(value)


def assert_same_as_csv(table: pa.Table, data: bytes, columns: Sequence[str] = COLUMNS) -> None:
    assert table.column_names == list(columns)
    assert [table.schema.field(c).type for c in ("LaunchTime", "CollectedAt")] == [
        pa.timestamp("ms", tz="UTC")
    ] * 2
    assert [table.schema.field(c).type for c in LIST_COLUMNS] == [pa.list_(pa.string())] * 3
    others = {c for c in columns if c not in ("LaunchTime", "CollectedAt", *LIST_COLUMNS)}
    assert {str(table.schema.field(c).type) for c in others} == {"string"}
    # An empty list cell is an empty list, never null; the list columns' order follows the CSV's.
    assert [table.column(c).null_count for c in LIST_COLUMNS] == [0, 0, 0]
    parquet_rows = [{k: as_csv_cell(v) for k, v in row.items()} for row in table.to_pylist()]
    assert parquet_rows == csv_dicts(data)


def test_parquet_holds_the_csv_rows_typed_in_bounded_row_groups() -> None:
    records = tricky_records(1_000)
    data = csv_bytes(records)
    out = io.BytesIO()
    manifest = {"schema_version": SCHEMA_VERSION, "ds": DS, "dag_run_id": "scheduled__x", "csv_sha256": "abc"}
    counts = csv_to_parquet(
        io.BytesIO(data), out, parquet_metadata(manifest), row_group_rows=300, block_bytes=16 * 1024
    )
    assert counts == {"row_count": 1_000, "row_groups": 4}

    out.seek(0)
    parquet = pq.ParquetFile(out)
    assert parquet.metadata.num_row_groups == 4
    assert [parquet.metadata.row_group(i).num_rows for i in range(4)] == [300, 300, 300, 100]
    meta = parquet.schema_arrow.metadata
    assert meta[b"cmdb_ec2_inventory.schema_version"] == b"2"
    assert meta[b"cmdb_ec2_inventory.csv_schema_version"] == b"2"
    assert meta[b"cmdb_ec2_inventory.ds"] == DS.encode()
    assert meta[b"cmdb_ec2_inventory.csv_sha256"] == b"abc"
    table = parquet.read()
    assert_same_as_csv(table, data)
    # Documented choice: cells are the CSV's, neutralisation included; empty timestamps are nulls.
    names = set(table.column("Name").to_pylist())
    assert {'\'=HYPERLINK("http://evil")', "multi\r\nline", "'@x", "'-1", "émoji 🚀"} <= names
    assert table.column("LaunchTime").null_count == 200
    assert table.column("LaunchTime")[1].as_py() == datetime(2026, 1, 2, 3, 4, 1, tzinfo=UTC)
    # The list columns: lists of strings, an empty list where the CSV cell is empty.
    by_id = {row["InstanceId"]: row for row in table.to_pylist()}
    assert by_id["i-00000000"]["SecurityGroupIds"] == []
    assert by_id["i-00000000"]["EbsVolumeIds"] == []
    assert by_id["i-00000000"]["Ipv6Addresses"] == []
    assert by_id["i-00000002"]["SecurityGroupIds"] == ["sg-0000", "sg-0001"]
    assert by_id["i-00000002"]["EbsVolumeIds"] == ["vol-000002a", "vol-000002b"]
    assert by_id["i-00000001"]["Ipv6Addresses"] == ["2001:db8::1"]
    assert {len(row["SecurityGroupIds"]) for row in by_id.values()} == {0, 1, 2}


def test_conversion_memory_is_bounded_by_the_row_group_not_the_file() -> None:
    def peak(count: int) -> tuple[int, int]:
        data = csv_bytes(tricky_records(count))
        peaks = []
        # Arrow's readahead thread holds a few blocks more now and then on a busy machine: the least of
        # three runs is what the conversion itself needs.
        for _ in range(3):
            pool = pa.proxy_memory_pool(pa.default_memory_pool())
            csv_to_parquet(
                io.BytesIO(data), io.BytesIO(), row_group_rows=500, block_bytes=64 * 1024, memory_pool=pool
            )
            peaks.append(int(pool.max_memory()))
        return min(peaks), len(data)

    (small, _), (large, size) = peak(2_000), peak(20_000)
    # Arrow's peak: about one row group and one CSV block, whether the CSV has 2,000 rows or 20,000 (3.6 MB).
    assert large < small * 1.25, (small, large)
    assert large < size / 4, (large, size)


def test_a_csv_with_other_columns_is_refused() -> None:
    with pytest.raises(ValueError, match="header"):
        csv_to_parquet(io.BytesIO(b"Account,Region\r\n1,2\r\n"), io.BytesIO())


# --- the upload's memory, against an S3 that keeps nothing ------------------------------------------------


class _Body:
    """The ``raw`` of an ``AWSResponse``: what botocore reads a response body from."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: Any) -> Any:
        yield self.data


_ANSWERS = {
    "CreateMultipartUpload": b"<InitiateMultipartUploadResult><UploadId>u-1</UploadId>"
    b"</InitiateMultipartUploadResult>",
    "CompleteMultipartUpload": b"<CompleteMultipartUploadResult><ETag>&quot;e&quot;</ETag>"
    b"</CompleteMultipartUploadResult>",
}


class ForgetfulS3:
    """
    An S3 that keeps nothing: a botocore ``before-send`` handler reads each request's body and answers it,
    so the process holds only what the client holds (moto in this process would keep every byte). Records
    each request (operation, headers, body size) and the SHA-256 of the uploaded parts, in order.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str], int]] = []
        self.parts = hashlib.sha256()

    def __call__(self, request: Any, event_name: str, **_: Any) -> AWSResponse:
        operation = event_name.rsplit(".", 1)[-1]
        body = request.body
        data = body.read() if hasattr(body, "read") else bytes(body or b"")
        if operation == "UploadPart":
            self.parts.update(data)
        headers = {
            k.lower(): v.decode() if isinstance(v, bytes) else str(v) for k, v in request.headers.items()
        }
        self.calls.append((operation, headers, len(data)))
        return AWSResponse(request.url, 200, {"ETag": '"e"'}, _Body(_ANSWERS.get(operation, b"")))


def incompressible_csv(rows: int) -> bytes:
    """An inventory CSV whose ``Tags`` are random hex: Parquet cannot shrink it, it stays the CSV's size."""
    rng = random.Random(rows)
    tags, collected = COLUMNS.index("Tags"), COLUMNS.index("CollectedAt")
    lines = [",".join(COLUMNS) + "\r\n"]
    for n in range(rows):
        cells = ["111111111111", REGION, f"i-{n:08d}", "web"] + [""] * (len(COLUMNS) - 4)
        cells[tags], cells[collected] = rng.randbytes(600).hex(), "2026-11-20T02:00:07Z"
        lines.append(",".join(cells) + "\r\n")
    return "".join(lines).encode()


def test_writing_parquet_holds_chunks_of_the_upload_not_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parquet goes through the store's upload: one-chunk parts, one peak for a file four times larger."""
    # S3's smallest part (5 MiB) instead of the shipped 16 MiB: the same bound, on files a quarter the size.
    monkeypatch.setattr(storage, "UPLOAD_CHUNK", 5 * MIB)

    def peak(rows: int) -> tuple[int, dict[str, Any], ForgetfulS3]:
        s3 = boto3.client(
            "s3",
            region_name=REGION,
            endpoint_url="http://127.0.0.1:9",  # never reached: the handler answers every request
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        sink = ForgetfulS3()
        s3.meta.events.register("before-send.s3", sink)
        store = SnapshotStore(s3, BUCKET, PREFIX)
        with spool() as csv_file:  # the merged CSV, spooled to disk as merge_inventory's is
            csv_file.write(incompressible_csv(rows))
            tracemalloc.start()
            try:
                written = formats.write_formats(
                    store, DS, {"row_count": rows, "ds": DS}, csv_file, parquet=True
                )
                return tracemalloc.get_traced_memory()[1], written["parquet"], sink
            finally:
                tracemalloc.stop()

    (small, _, _), (large, parquet, sink) = peak(10_000), peak(40_000)

    operations = [operation for operation, _, _ in sink.calls]
    assert operations[0] == "CreateMultipartUpload"
    assert operations[-3:] == ["CompleteMultipartUpload", "PutObject", "PutObject"]  # then the symlinks
    sizes = [size for operation, _, size in sink.calls if operation == "UploadPart"]
    assert len(sizes) == -(-parquet["bytes"] // (5 * MIB))
    assert max(sizes) == 5 * MIB
    assert sink.parts.hexdigest() == parquet["sha256"]  # the whole file, in order
    started = sink.calls[0][1]
    assert started["x-amz-meta-sha256"] == parquet["sha256"]
    assert started["content-type"] == formats.PARQUET_CONTENT_TYPE
    assert started["x-amz-server-side-encryption"] == "AES256"
    # The peak is a few upload chunks and Arrow's read-ahead, whether the Parquet file is 12 or 46 MiB.
    assert parquet["bytes"] > 40 * MIB
    assert large < small * 1.25, (small, large)
    assert large < parquet["bytes"] / 2, (large, parquet["bytes"])


# --- through merge_inventory, on moto's S3 ------------------------------------------------------------------


@pytest.fixture
def s3_bucket() -> str:
    """The conftest's ``store``: this module's bucket, empty, behind a fresh client."""
    return BUCKET


def merge(store: SnapshotStore, records: list[Record], run_id: str, **config: Any) -> dict[str, Any]:
    run = RunInfo("cmdb_ec2_inventory", run_id, DS, f"{DS}T02:00:00+00:00")
    stage_scanned(
        store, run, A, records, [{"region": REGION, "status": contract.OK, "instances": len(records)}]
    )
    settings = parse_settings({"accounts": [A.id], "bucket": BUCKET, "prefix": PREFIX, **config})
    return merge_inventory(settings, run, store, [A.to_dict()], overwrite=True)


def get(store: SnapshotStore, key: str) -> bytes:
    return store.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def exists(store: SnapshotStore, key: str) -> bool:
    return any(
        o["Key"] == key for o in store.s3.list_objects_v2(Bucket=BUCKET, Prefix=key).get("Contents", [])
    )


def test_merge_writes_parquet_symlinks_and_latest_and_removes_them_when_turned_off(
    store: SnapshotStore,
) -> None:
    layout = store.layout
    parquet_key, csv_key = layout.snapshot(DS, PARQUET_NAME), layout.snapshot(DS, CSV_NAME)
    summary = merge(store, tricky_records(40), "scheduled__one", parquet=True)
    assert summary["parquet_uri"] == f"s3://{BUCKET}/{parquet_key}"

    manifest = store.get_json(layout.snapshot(DS, "manifest.json"))
    assert manifest is not None
    entry = manifest["parquet"]
    assert (entry["key"], entry["schema_version"], entry["row_count"], entry["row_groups"]) == (
        f"{manifest['commit_prefix']}/{PARQUET_NAME}",
        2,
        40,
        1,
    )
    body = get(store, parquet_key)
    assert entry["bytes"] == len(body)
    parquet = pq.ParquetFile(io.BytesIO(body))
    assert parquet.schema_arrow.metadata[b"cmdb_ec2_inventory.csv_sha256"] == manifest["csv_sha256"].encode()
    assert parquet.schema_arrow.metadata[b"cmdb_ec2_inventory.dag_run_id"] == b"scheduled__one"
    assert_same_as_csv(parquet.read(), get(store, csv_key))
    head = store.s3.head_object(Bucket=BUCKET, Key=parquet_key)
    assert head["ContentType"] == formats.PARQUET_CONTENT_TYPE
    assert head["ServerSideEncryption"] == "AES256"

    # Athena: one symlink manifest per table and date, naming exactly the data file.
    csv_link = f"{PREFIX}/athena/ec2_inventory_csv/ds={DS}/symlink.txt"
    parquet_link = f"{PREFIX}/athena/ec2_inventory_parquet/ds={DS}/symlink.txt"
    assert manifest["athena"] == {"csv_symlink_key": csv_link, "parquet_symlink_key": parquet_link}
    assert get(store, csv_link) == f"s3://{BUCKET}/{csv_key}\n".encode()
    assert get(store, parquet_link) == f"s3://{BUCKET}/{parquet_key}\n".encode()  # the fixed-name copy
    assert get(store, entry["key"]) == body
    assert get(store, layout.latest(PARQUET_NAME)) == body

    # Turned off, a rerun of the date leaves no Parquet of the earlier run behind.
    summary = merge(store, tricky_records(39), "manual__two")
    assert summary["parquet_uri"] is None
    assert not exists(store, parquet_key)
    assert not exists(store, parquet_link)
    assert not exists(store, layout.latest(PARQUET_NAME))
    assert exists(store, csv_link)
    manifest = store.get_json(layout.snapshot(DS, "manifest.json"))
    assert manifest is not None
    assert manifest["parquet"] is None
    assert manifest["athena"]["parquet_symlink_key"] is None


TAG_COLUMNS = {"Owner": ["owner", "Owner"], "CostCenter": ["cost-center"]}


def test_tag_columns_are_the_last_parquet_columns_as_strings(store: SnapshotStore) -> None:
    from include.cmdb_inventory import inventory

    settings = parse_settings(
        {"accounts": [A.id], "bucket": BUCKET, "prefix": PREFIX, "parquet": True, "tag_columns": TAG_COLUMNS}
    )
    run = RunInfo("cmdb_ec2_inventory", "scheduled__tags", DS, f"{DS}T02:00:00+00:00")
    records = tricky_records(12, tag_columns=settings.tag_columns)
    # What scan_account stages with tag columns: the part in the settings' columns, and those columns.
    staging = store.layout.staging(run.ds, run.run_id)
    part_key = store.layout.part(staging, A.id)
    store.write_part(part_key, records, settings.columns)
    regions = [{"region": REGION, "status": contract.OK, "instances": len(records)}]
    doc = inventory._status_doc(
        run, A, status=contract.OK, regions=regions, instances=len(records), part_key=part_key
    )
    doc["columns"] = list(settings.columns)
    store.put_json(store.layout.status(staging, A.id), doc)
    merge_inventory(settings, run, store, [A.to_dict()], overwrite=True)

    manifest = store.get_json(store.layout.snapshot(DS, "manifest.json"))
    assert manifest is not None
    assert manifest["columns"] == [*COLUMNS, "Owner", "CostCenter"]
    csv_data = get(store, store.layout.snapshot(DS, CSV_NAME))
    table = pq.read_table(io.BytesIO(get(store, store.layout.snapshot(DS, PARQUET_NAME))))
    assert_same_as_csv(table, csv_data, manifest["columns"])
    assert [str(table.schema.field(c).type) for c in ("Owner", "CostCenter")] == ["string", "string"]
    owners = table.column("Owner").to_pylist()
    assert table.column("Owner").null_count == 0  # no tag, or an empty one: "" as in the CSV
    assert sorted(set(owners)) == ["", "'=evil", "team-a", "émoji 🚀"]
    assert set(table.column("CostCenter").to_pylist()) == {""}


def test_the_parquet_setting_is_a_boolean_and_off_by_default() -> None:
    from include.cmdb_inventory.config import ConfigError

    base = {"accounts": [A.id], "bucket": BUCKET}
    assert parse_settings(base).parquet is False
    assert parse_settings({**base, "parquet": True}).parquet is True
    with pytest.raises(ConfigError, match=r"cmdb_ec2_inventory\.parquet: must be true or false"):
        parse_settings({**base, "parquet": "yes"})
