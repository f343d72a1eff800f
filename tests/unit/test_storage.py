"""S3 layout, parts, the streaming merge, encryption/owner arguments on the wire, and the overwrite policy."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config
from botocore.exceptions import ClientError

from devtools.world import session_in
from include.cmdb_inventory.contract import (
    COLUMNS,
    CSV_NAME,
    MANIFEST_NAME,
    CommitLayout,
    Layout,
    safe_segment,
)
from include.cmdb_inventory.records import Record
from include.cmdb_inventory.storage import (
    CSV_CONTENT_TYPE,
    BucketOwnerError,
    SnapshotStore,
    UnsafeUrlError,
    decide_write,
    snapshot_rank,
    spool,
)
from tests.unit.conftest import BUCKET, PREFIX, REGION  # the conftest's ``s3`` fixture: its bucket, empty

OWNER = "123456789012"  # moto's default account, which owns the bucket
KMS_KEY = "arn:aws:kms:us-east-1:123456789012:key/0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
DS = "2024-03-01"
RUN_SCHEDULED = "scheduled__2024-03-01T00:00:00+00:00"
RUN_MANUAL = "manual__2024-03-01T06:12:33.123456+00:00"
MIB = 1024 * 1024

WRITE_OPS = {"PutObject", "CopyObject", "CreateMultipartUpload"}


@dataclass
class Wire:
    """Every S3 call's operation name and parameters, as botocore is about to serialise them."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def capture(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.calls.append((model.name, dict(params)))

    def ops(self, *names: str) -> list[dict[str, Any]]:
        return [params for op, params in self.calls if op in names]

    def names(self) -> list[str]:
        return [op for op, _ in self.calls]


@pytest.fixture
def wire(s3: Any) -> Wire:
    recorder = Wire()
    s3.meta.events.register("before-parameter-build.s3", recorder.capture)
    return recorder


def make_store(s3: Any, kms_key_id: str | None = None, owner: str | None = None) -> SnapshotStore:
    return SnapshotStore(s3, BUCKET, PREFIX, kms_key_id=kms_key_id, expected_bucket_owner=owner)


def record(account: str, region: str, instance_id: str, name: str = "") -> Record:
    values = dict.fromkeys(COLUMNS, "")
    values.update(Account=account, Region=region, InstanceId=instance_id, Name=name)
    values["Tags"] = json.dumps({"Name": name}) if name else "{}"
    return values


def read_body(s3: Any, key: str) -> bytes:
    return s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def parse(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


# --- layout -----------------------------------------------------------------------------------------------


def test_snapshot_and_latest_keys_follow_the_contract() -> None:
    layout = Layout(PREFIX)
    assert CSV_NAME == "ec2_inventory.csv"
    assert MANIFEST_NAME == "manifest.json"
    assert layout.snapshot(DS, CSV_NAME) == "cmdb/ec2-inventory/ds=2024-03-01/ec2_inventory.csv"
    assert layout.snapshot(DS, MANIFEST_NAME) == "cmdb/ec2-inventory/ds=2024-03-01/manifest.json"
    assert layout.latest(CSV_NAME) == "cmdb/ec2-inventory/latest/ec2_inventory.csv"
    assert layout.latest(MANIFEST_NAME) == "cmdb/ec2-inventory/latest/manifest.json"


def test_a_rerun_of_the_same_date_writes_the_same_snapshot_keys() -> None:
    assert Layout(PREFIX).snapshot(DS, CSV_NAME) == Layout(PREFIX).snapshot(DS, CSV_NAME)


@pytest.mark.parametrize(
    ("run_a", "run_b"),
    [
        (RUN_SCHEDULED, RUN_MANUAL),
        ("manual__2024-03-01T00:00:00+00:00", "manual__2024-03-01T00:00:00_00:00"),  # same after cleaning
        ("a:b", "a+b"),
        ("a/b", "a_b"),
        ("run", "run "),
    ],
)
def test_staging_prefixes_differ_for_two_runs_of_the_same_date(run_a: str, run_b: str) -> None:
    layout = Layout(PREFIX)
    staging_a, staging_b = layout.staging(DS, run_a), layout.staging(DS, run_b)
    assert staging_a != staging_b
    for staging in (staging_a, staging_b):
        assert staging.startswith(f"{PREFIX}/_staging/ds={DS}/run=")
        # staging never lands inside a date's snapshot folder or latest/
        assert not staging.startswith(f"{PREFIX}/ds=")
        assert not staging.startswith(f"{PREFIX}/latest/")


@pytest.mark.parametrize("run_id", [RUN_SCHEDULED, RUN_MANUAL, "../../etc/passwd", "a/b/c", "x" * 300])
def test_staging_keys_never_hold_raw_run_id_characters(run_id: str) -> None:
    layout = Layout(PREFIX)
    staging = layout.staging(DS, run_id)
    run_segment = staging.rsplit("/run=", 1)[1]
    for char in (":", "+", "/", " "):
        assert char not in run_segment
    assert staging.count("/") == PREFIX.count("/") + 3  # prefix/_staging/ds=.../run=...
    assert ".." not in staging.split("/")
    assert layout.part(staging, "111111111111") == f"{staging}/parts/111111111111.csv.gz"
    assert layout.status(staging, "111111111111") == f"{staging}/status/111111111111.json"


SAFE_SEGMENT_RE = re.compile(r"^[A-Za-z0-9._-]+$")


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("../..", id="dotdot"),
        pytest.param("..", id="parent"),
        pytest.param(".", id="dot"),
        pytest.param("", id="empty"),
        pytest.param("/", id="slash"),
        pytest.param("a/../../b", id="traversal"),
        pytest.param("Überwachung-数据库-🚀", id="unicode"),
        pytest.param("\u202egnp.exe", id="rtl-override"),
        pytest.param("a\x00b\r\nc", id="control"),
        pytest.param("x" * 500, id="500-chars"),
        pytest.param("ü" * 500, id="500-unicode"),
        pytest.param(RUN_MANUAL, id="run-id"),
    ],
)
def test_safe_segment_of_hostile_text(text: str) -> None:
    segment = safe_segment(text)
    assert SAFE_SEGMENT_RE.match(segment), segment
    assert not segment.startswith(".")
    assert segment not in (".", "..")
    assert len(segment) <= 80 + 11
    assert segment == safe_segment(text)  # deterministic
    assert segment.endswith("-" + hashlib.sha256(text.encode()).hexdigest()[:10])


def test_safe_segment_keeps_distinct_texts_distinct() -> None:
    texts = ["../..", "..", ".", "", "_", "a:b", "a+b", "a_b", "x" * 500, "x" * 501, "ü", "ö"]
    assert len({safe_segment(t) for t in texts}) == len(texts)


def test_safe_segment_keeps_a_readable_stem() -> None:
    assert safe_segment(RUN_SCHEDULED).startswith("scheduled__2024-03-01T00_00_00_00_00-")


# --- parts and merge --------------------------------------------------------------------------------------


def write_parts(store: SnapshotStore, parts: dict[str, list[Record]]) -> list[str]:
    staging = store.layout.staging(DS, RUN_SCHEDULED)
    keys = []
    for account, records in parts.items():
        key = store.layout.part(staging, account)
        assert store.write_part(key, records) == len(records)
        keys.append(key)
    return keys


def test_write_part_is_gzip_csv_without_header(s3: Any) -> None:
    store = make_store(s3)
    (key,) = write_parts(store, {"111111111111": [record("111111111111", "eu-west-1", "i-1", "a,b")]})
    head = s3.head_object(Bucket=BUCKET, Key=key)
    assert head["ContentEncoding"] == "gzip"
    rows = parse(gzip.decompress(read_body(s3, key)))
    # Schema 1's 17 cells (Tags 16th, CollectedAt 17th), then schema 2's 16 appended ones, all empty here.
    assert rows == [
        ["111111111111", "eu-west-1", "i-1", "a,b"] + [""] * 11 + ['{"Name": "a,b"}', ""] + [""] * 16
    ]
    assert len(COLUMNS) == 33


def test_parts_and_merge_carry_the_tag_columns_after_the_contracts(s3: Any) -> None:
    store = make_store(s3)
    columns = (*COLUMNS, "Owner", "CostCenter")
    row = {**record("111111111111", "eu-west-1", "i-1", "web"), "Owner": "=ops", "CostCenter": ""}
    key = store.layout.part(store.layout.staging(DS, RUN_SCHEDULED), "111111111111")
    assert store.write_part(key, [row], columns) == 1
    (cells,) = parse(gzip.decompress(read_body(s3, key)))
    assert len(cells) == len(columns)
    assert cells[-2:] == ["'=ops", ""]
    with spool() as out:
        store.merge_parts([key], out, columns)
        header, merged = parse(out.read())
    assert header == list(columns)
    assert merged == cells


def test_merge_parts_round_trip(s3: Any) -> None:
    store = make_store(s3)
    parts = {
        "111111111111": [
            record("111111111111", r, f"i-{n}", f"web {n}")
            for r in ("eu-west-1", "us-east-1")
            for n in range(2)
        ],
        "222222222222": [record("222222222222", "eu-west-1", "i-x", 'quote " and\r\nnewline')],
        "333333333333": [record("333333333333", "ap-south-1", f"i-{n:03d}") for n in range(50)],
    }
    keys = write_parts(store, parts)
    with spool() as out:
        digest = store.merge_parts(keys, out)
        assert out.tell() == 0
        data = out.read()
    assert digest == hashlib.sha256(data).hexdigest()
    assert data.startswith((",".join(COLUMNS) + "\r\n").encode())
    assert data.count(b"Account,Region,InstanceId,Name") == 1
    rows = parse(data)
    assert rows[0] == list(COLUMNS)
    expected = [r for records in parts.values() for r in records]
    assert len(rows) == 1 + len(expected)
    assert [tuple(r[:4]) for r in rows[1:]] == [
        (r["Account"], r["Region"], r["InstanceId"], r["Name"]) for r in expected
    ]


def test_merge_keeps_the_order_of_the_part_keys(s3: Any) -> None:
    store = make_store(s3)
    keys = write_parts(
        store,
        {
            "222222222222": [record("222222222222", "r", "i-2")],
            "111111111111": [record("111111111111", "r", "i-1")],
        },
    )
    with spool() as out:
        store.merge_parts(list(reversed(keys)), out)
        rows = parse(out.read())
    assert [r[0] for r in rows[1:]] == ["111111111111", "222222222222"]


def test_merge_of_parts_with_zero_rows(s3: Any) -> None:
    store = make_store(s3)
    keys = write_parts(store, {"111111111111": [], "222222222222": [], "333333333333": []})
    with spool() as out:
        digest = store.merge_parts(keys, out)
        data = out.read()
    assert data == (",".join(COLUMNS) + "\r\n").encode()
    assert digest == hashlib.sha256(data).hexdigest()


def test_merge_of_empty_and_full_parts(s3: Any) -> None:
    store = make_store(s3)
    keys = write_parts(
        store,
        {"111111111111": [], "222222222222": [record("222222222222", "r", "i-1")], "333333333333": []},
    )
    with spool() as out:
        store.merge_parts(keys, out)
        rows = parse(out.read())
    assert len(rows) == 2
    assert rows[1][:3] == ["222222222222", "r", "i-1"]


def test_merge_of_no_parts_is_the_header(s3: Any) -> None:
    with spool() as out:
        make_store(s3).merge_parts([], out)
        assert out.read() == (",".join(COLUMNS) + "\r\n").encode()


def large_csv(min_bytes: int) -> bytes:
    header = (",".join(COLUMNS) + "\r\n").encode()
    row = "111111111111,eu-west-1,i-{:012d},web server with a long name" + ",x" * 13 + "\r\n"
    lines = [header]
    size, n = len(header), 0
    while size <= min_bytes:
        line = row.format(n).encode()
        lines.append(line)
        size += len(line)
        n += 1
    return b"".join(lines)


def assert_encrypted(params: dict[str, Any], kms_key_id: str | None) -> None:
    if kms_key_id:
        assert params["ServerSideEncryption"] == "aws:kms", params
        assert params["SSEKMSKeyId"] == kms_key_id, params
    else:
        assert params["ServerSideEncryption"] == "AES256", params
        assert "SSEKMSKeyId" not in params, params


def assert_owner_on_every_call(wire: Wire, owner: str | None) -> None:
    for op, params in wire.calls:
        assert "ACL" not in params, op
        assert not [k for k in params if k.startswith("Grant")], op
        if owner:
            assert params.get("ExpectedBucketOwner") == owner, (op, params)
        else:
            assert "ExpectedBucketOwner" not in params, (op, params)


@pytest.mark.parametrize(
    ("kms_key_id", "owner"),
    [pytest.param(None, None, id="sse-s3"), pytest.param(KMS_KEY, OWNER, id="sse-kms-owner")],
)
def test_upload_and_copy_of_a_large_csv_are_multipart(
    s3: Any, wire: Wire, kms_key_id: str | None, owner: str | None
) -> None:
    store = make_store(s3, kms_key_id=kms_key_id, owner=owner)
    data = large_csv(17 * MIB)
    assert len(data) > 16 * MIB
    key = store.layout.snapshot(DS, CSV_NAME)
    store.upload_csv(io.BytesIO(data), key, {"sha256": hashlib.sha256(data).hexdigest(), "rows": "1"})

    assert not wire.ops("PutObject")
    (create,) = wire.ops("CreateMultipartUpload")
    assert_encrypted(create, kms_key_id)
    assert create["ContentType"] == CSV_CONTENT_TYPE
    assert len(wire.ops("UploadPart")) == 2
    assert len(wire.ops("CompleteMultipartUpload")) == 1
    assert_owner_on_every_call(wire, owner)

    # the latest/ copy of a large CSV is a multipart copy: still encrypted, same bytes and content type
    wire.calls.clear()
    store.copy(key, store.layout.latest(CSV_NAME))
    assert wire.ops("UploadPartCopy"), wire.names()
    (create,) = wire.ops("CreateMultipartUpload")
    assert_encrypted(create, kms_key_id)
    assert_owner_on_every_call(wire, owner)

    wire.calls.clear()
    obj = s3.get_object(Bucket=BUCKET, Key=key)
    assert obj["Body"].read() == data
    assert obj["ContentType"] == CSV_CONTENT_TYPE
    assert obj["ServerSideEncryption"] == ("aws:kms" if kms_key_id else "AES256")
    assert obj["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    latest = s3.get_object(Bucket=BUCKET, Key=store.layout.latest(CSV_NAME))
    assert latest["Body"].read() == data
    assert latest["ContentType"] == CSV_CONTENT_TYPE
    assert latest["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()


def test_upload_csv_of_a_small_file_is_one_put(s3: Any, wire: Wire) -> None:
    store = make_store(s3)
    data = large_csv(1000)
    store.upload_csv(io.BytesIO(data), "k.csv", {"rows": "3"})
    assert wire.names().count("PutObject") == 1
    assert "CreateMultipartUpload" not in wire.names()
    assert read_body(s3, "k.csv") == data


@pytest.mark.parametrize("owner", [None, OWNER])
def test_a_sized_copy_is_one_copy_object_keeping_metadata(s3: Any, wire: Wire, owner: str | None) -> None:
    store = make_store(s3, kms_key_id=KMS_KEY, owner=owner)
    data = large_csv(1000)
    store.upload_csv(io.BytesIO(data), "src.csv", {"sha256": "abc", "commit-id": "try1-x"})
    wire.calls.clear()
    store.copy_sized("src.csv", "dst.csv", len(data))
    assert wire.names() == ["CopyObject"]
    (params,) = wire.ops("CopyObject")
    assert params["MetadataDirective"] == "COPY"
    assert_encrypted(params, KMS_KEY)
    assert params.get("ExpectedSourceBucketOwner") == owner
    assert_owner_on_every_call(wire, owner)
    copied = s3.get_object(Bucket=BUCKET, Key="dst.csv")
    assert copied["Body"].read() == data
    assert copied["Metadata"] == {"sha256": "abc", "commit-id": "try1-x"}
    assert copied["ContentType"] == CSV_CONTENT_TYPE

    # Unknown size (a manifest written before sizes were recorded) or beyond CopyObject: the managed copy.
    wire.calls.clear()
    store.copy_sized("src.csv", "other.csv", None)
    assert wire.names()[0] == "HeadObject"
    assert read_body(s3, "other.csv") == data


def test_commit_layout_puts_only_its_own_dates_files_in_its_folder() -> None:
    layout = Layout(PREFIX)
    folder = layout.commit(DS, RUN_MANUAL, "try2-0a1b2c3d")
    assert folder.startswith(layout.commits(DS))
    assert folder == f"{PREFIX}/ds={DS}/run={safe_segment(RUN_MANUAL)}/try2-0a1b2c3d"
    assert ":" not in folder.split("/run=")[1]
    commit = CommitLayout(PREFIX, ds=DS, folder=folder)
    assert commit.snapshot(DS, "changes.csv") == f"{folder}/changes.csv"
    assert commit.snapshot("2024-02-29", MANIFEST_NAME) == layout.snapshot("2024-02-29", MANIFEST_NAME)
    assert commit.latest(CSV_NAME) == layout.latest(CSV_NAME)
    assert commit.prefix == PREFIX


def test_list_and_delete_keys(s3: Any, wire: Wire) -> None:
    store = make_store(s3, owner=OWNER)
    for n in range(3):
        store.put_bytes(f"{PREFIX}/ds={DS}/run=a/{n}.csv", b"x", "text/csv")
    store.put_bytes(f"{PREFIX}/ds={DS}/{CSV_NAME}", b"x", "text/csv")
    listed = store.list_keys(store.layout.commits(DS))
    assert listed == [f"{PREFIX}/ds={DS}/run=a/{n}.csv" for n in range(3)]
    wire.calls.clear()
    store.delete_keys([*listed[:2], f"{PREFIX}/never-there.csv"])
    assert wire.names() == ["DeleteObjects"]
    assert_owner_on_every_call(wire, OWNER)
    assert store.list_keys(f"{PREFIX}/ds={DS}/") == [f"{PREFIX}/ds={DS}/{CSV_NAME}", listed[2]]
    wire.calls.clear()
    store.delete_keys([])
    assert wire.names() == []


def test_the_stores_s3_client_retries_through_a_slowdown_storm_on_a_multipart_upload(
    moto_url: str,
    monkeypatch: pytest.MonkeyPatch,
    hub_env_factory: Any,
    no_retry_delay: list[float],
) -> None:
    """
    The store as the DAG builds it (``store_for``: the hub connection, the configured attempts), behind the
    gateway: S3 answers 503 SlowDown five times in a row on the CSV's parts, three times on starting and on
    completing the upload, three on a copy; botocore retries through every storm, nothing is lost.
    ``no_retry_delay`` makes botocore's backoff sleep 0 s (only the sleep: which calls are retried, and how
    often, stays botocore's decision).
    """
    from devtools.gateway import AwsGateway
    from include.cmdb_inventory.config import parse_settings
    from include.cmdb_inventory.run import store_for

    with AwsGateway(upstream=moto_url) as gateway:
        for name, value in hub_env_factory(gateway.url).items():
            monkeypatch.setenv(name, value)
        bucket = "cmdb-slowdown-storm"
        boto3.client("s3", **gateway.client_kwargs()).create_bucket(Bucket=bucket)
        store = store_for(parse_settings({"accounts": ["111111111111"], "bucket": bucket}))
        storms = [
            gateway.throttle("s3", action="CreateMultipartUpload", times=3),
            gateway.throttle("s3", action="UploadPart", times=5),
            gateway.throttle("s3", action="CompleteMultipartUpload", times=3),
            gateway.throttle("s3", action="CopyObject", times=3),
        ]
        data = large_csv(17 * MIB)
        key = store.layout.snapshot(DS, CSV_NAME)
        store.upload_csv(io.BytesIO(data), key, {"sha256": hashlib.sha256(data).hexdigest()})
        store.copy_sized(key, store.layout.latest(CSV_NAME), len(data))

        assert [rule.hits for rule in storms] == [3, 5, 3, 3]
        assert gateway.count(action="UploadPart", status=200) == 2  # two 16 MiB parts, each once
        assert gateway.count(service="s3", fault="SlowDown", status=503) == 14
        assert len(no_retry_delay) == 14  # one retry per SlowDown, each after botocore's backoff
        raw = session_in(moto_url, OWNER).client(
            "s3",
            endpoint_url=moto_url,
            # moto's checksum of a multipart object is not the one botocore computes over the whole body
            config=Config(response_checksum_validation="when_required"),
        )
        for where in (key, store.layout.latest(CSV_NAME)):
            obj = raw.get_object(Bucket=bucket, Key=where)
            assert obj["Body"].read() == data, where
        assert raw.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


# --- encryption, owner and ACLs on the wire ---------------------------------------------------------------


def exercise_every_write(store: SnapshotStore) -> None:
    """Every kind of S3 request the store makes."""
    store.check_bucket()
    store.put_json(f"{PREFIX}/doc.json", {"a": 1})
    assert store.get_json(f"{PREFIX}/doc.json") == {"a": 1}
    assert store.get_json(f"{PREFIX}/missing.json") is None
    keys = write_parts(store, {"111111111111": [record("111111111111", "r", "i-1")]})
    with spool() as out:
        store.merge_parts(keys, out)
        store.upload_csv(out, store.layout.snapshot(DS, CSV_NAME), {"rows": "1"})
    store.copy(store.layout.snapshot(DS, CSV_NAME), store.layout.latest(CSV_NAME))
    store.put_bytes(f"{PREFIX}/raw.bin", b"raw", "application/octet-stream")
    # The reads that changes.py, formats.py and the coverage page make through the store.
    csv_key = store.layout.snapshot(DS, CSV_NAME)
    with spool() as out:
        assert store.download_into(csv_key, out) is not None
    assert store.get_bytes(csv_key, max_bytes=4) == b"Accou"
    assert store.list_folders(f"{PREFIX}/ds=") == [f"{PREFIX}/ds={DS}/"]
    signer = boto3.client("s3", region_name=REGION, config=Config(signature_version="s3v4"))
    assert store.download_url(csv_key, "x.csv", signer=signer, expires_in=60).startswith("https://")
    store.delete(f"{PREFIX}/raw.bin")


@pytest.mark.parametrize(
    ("kms_key_id", "owner"),
    [
        pytest.param(None, None, id="sse-s3"),
        pytest.param("alias/cmdb-inventory", None, id="sse-kms-alias"),
        pytest.param(None, OWNER, id="sse-s3-owner"),
        pytest.param(KMS_KEY, OWNER, id="sse-kms-arn-owner"),
    ],
)
def test_every_request_carries_encryption_and_owner_and_no_acl(
    s3: Any, wire: Wire, kms_key_id: str | None, owner: str | None
) -> None:
    store = make_store(s3, kms_key_id=kms_key_id, owner=owner)
    exercise_every_write(store)

    names = set(wire.names())
    assert {"PutObject", "CopyObject", "GetObject", "ListObjectsV2"} <= names, names
    assert "HeadBucket" not in names  # needs an unconditional s3:ListBucket, which the hub role lacks
    writes = wire.ops(*WRITE_OPS)
    assert len(writes) >= 5  # json, part, csv, copy, raw
    for params in writes:
        assert_encrypted(params, kms_key_id)
    assert_owner_on_every_call(wire, owner)
    assert read_body(s3, store.layout.latest(CSV_NAME)).count(b"\r\n") == 2


def test_download_into_streams_an_object_and_tells_a_missing_one(s3: Any) -> None:
    store = make_store(s3)
    data = large_csv(3 * MIB)
    store.put_bytes("k.csv", data, "text/csv")
    with spool() as out:
        assert store.download_into("k.csv", out) == hashlib.sha256(data).hexdigest()
        out.seek(0)
        assert out.read() == data
        out.seek(0)
        assert store.download_into("missing.csv", out) is None
        assert out.tell() == 0  # nothing written
    assert store.get_bytes("k.csv") == data
    assert store.get_bytes("k.csv", max_bytes=10) == data[:11]  # one byte more: the caller sees it is over


def test_list_folders_names_the_folders_right_under_a_prefix(s3: Any) -> None:
    store = make_store(s3)
    for key in ("ds=2024-03-01/a.csv", "ds=2024-03-02/run=x/b.csv", "ds=2024-03-02/c.csv", "latest/a.csv"):
        store.put_bytes(f"{PREFIX}/{key}", b"x", "text/csv")
    assert store.list_folders(f"{PREFIX}/ds=") == [f"{PREFIX}/ds=2024-03-01/", f"{PREFIX}/ds=2024-03-02/"]
    assert store.list_folders(f"{PREFIX}/") == [
        f"{PREFIX}/{d}/" for d in ("ds=2024-03-01", "ds=2024-03-02", "latest")
    ]
    assert store.list_folders(f"{PREFIX}/nothing/") == []


def test_a_download_url_signs_the_host_only_and_is_refused_otherwise(s3: Any) -> None:
    store = make_store(s3, owner=OWNER)
    store.put_bytes("k.csv", b"x", "text/csv")
    signer = boto3.client("s3", region_name=REGION, config=Config(signature_version="s3v4"))
    url = store.download_url("k.csv", "inventory.csv", signer=signer, expires_in=300)
    assert "X-Amz-SignedHeaders=host&" in url
    assert "attachment%3B%20filename%3D%22inventory.csv%22" in url
    # A store's client adds the owner (a header) to every request: a URL it signed would need the browser
    # to send that header, so it is refused; so is a SigV2 URL.
    owned = boto3.client("s3", region_name=REGION, config=Config(signature_version="s3v4"))
    SnapshotStore(owned, BUCKET, PREFIX, expected_bucket_owner=OWNER)
    with pytest.raises(UnsafeUrlError, match="over headers 'host;x-amz-expected-bucket-owner'"):
        store.download_url("k.csv", "inventory.csv", signer=owned, expires_in=300)
    sigv2 = boto3.client("s3", region_name=REGION, config=Config(signature_version="s3"))
    with pytest.raises(UnsafeUrlError, match="SigV2"):
        store.download_url("k.csv", "inventory.csv", signer=sigv2, expires_in=300)
    with pytest.raises(ClientError):  # the owner-checked HEAD first: no URL for a missing object
        store.download_url("missing.csv", "x.csv", signer=signer, expires_in=300)


def test_objects_are_stored_encrypted(s3: Any) -> None:
    store = make_store(s3, kms_key_id=KMS_KEY)
    store.put_json(f"{PREFIX}/doc.json", {"a": 1})
    head = s3.head_object(Bucket=BUCKET, Key=f"{PREFIX}/doc.json")
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"] == KMS_KEY


# --- get_json and check_bucket ----------------------------------------------------------------------------


def test_get_json_of_a_missing_key_is_none(s3: Any) -> None:
    assert make_store(s3).get_json(f"{PREFIX}/ds={DS}/{MANIFEST_NAME}") is None
    assert make_store(s3, owner=OWNER).get_json("nothing/here.json") is None


def test_get_json_round_trip_keeps_unicode(s3: Any) -> None:
    store = make_store(s3)
    doc = {"name": "Überwachung 🚀", "n": [1, 2], "none": None}
    store.put_json("d.json", doc)
    assert store.get_json("d.json") == doc
    assert "Überwachung".encode() in read_body(s3, "d.json")


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        pytest.param(b'{"complete": true, "row_co', "not valid JSON (26 bytes: ", id="truncated"),
        pytest.param(b"", "not valid JSON (0 bytes: ", id="empty"),
        pytest.param(b"\xff\xfe\x00{", "not valid JSON (4 bytes: ", id="not-utf8"),
        pytest.param(b"[1, 2]", "not a JSON object (a JSON list)", id="a-list"),
        pytest.param(b'"text"', "not a JSON object (a JSON str)", id="a-string"),
        pytest.param(b"42", "not a JSON object (a JSON int)", id="a-number"),
    ],
)
def test_an_unusable_document_is_named_and_read_as_absent(
    s3: Any, data: bytes, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store(s3)
    key = f"{PREFIX}/ds={DS}/{MANIFEST_NAME}"
    s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    document = store.get_document(key)
    assert document.key == key
    assert document.body is None
    assert document.unusable is not None
    assert document.unusable.startswith(problem)
    assert store.get_json(key) is None  # every reader (resolve's skip check too) treats it as absent
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"][-1] == (
        f"s3://{BUCKET}/{key} is unusable, treated as absent: {document.unusable}"
    )
    missing = store.get_document(f"{PREFIX}/nothing.json")
    assert (missing.body, missing.unusable) == (None, None)
    store.put_json(key, {"ok": True})
    assert store.get_document(key) == type(document)(key, {"ok": True})


def test_get_json_of_a_missing_bucket_raises(s3: Any) -> None:
    store = SnapshotStore(s3, "no-such-bucket", PREFIX)
    with pytest.raises(ClientError):
        store.get_json("x.json")


def test_check_bucket_of_a_missing_bucket(s3: Any) -> None:
    with pytest.raises(BucketOwnerError, match="does not exist"):
        SnapshotStore(s3, "no-such-bucket", PREFIX).check_bucket()


def forbid_head_bucket(s3: Any) -> None:
    """Answer ListObjectsV2 (check_bucket's call) with 403, as S3 does when ExpectedBucketOwner does not
    match (moto ignores it)."""

    def forbidden(**_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        return AWSResponse("https://s3", 403, {}, None), {"Error": {"Code": "403", "Message": "Forbidden"}}

    s3.meta.events.register("before-call.s3.ListObjectsV2", forbidden)


def test_check_bucket_owned_by_another_account(s3: Any) -> None:
    forbid_head_bucket(s3)
    with pytest.raises(BucketOwnerError, match="999999999999"):
        make_store(s3, owner="999999999999").check_bucket()


def test_check_bucket_forbidden_without_expected_owner_is_the_client_error(s3: Any) -> None:
    forbid_head_bucket(s3)
    with pytest.raises(ClientError):
        make_store(s3).check_bucket()


# --- overwrite policy -------------------------------------------------------------------------------------


def manifest(complete: bool, ok_regions: int, rows: int, run_id: str = "old-run") -> dict[str, Any]:
    coverage = [{"account": "1", "region": f"r{n}", "status": "OK"} for n in range(ok_regions)]
    coverage.append({"account": "1", "region": "x", "status": "REGION_DISABLED"})
    if not complete:
        coverage.append({"account": "2", "region": None, "status": "ROLE_NOT_ASSUMABLE"})
    return {"complete": complete, "row_count": rows, "coverage": coverage, "dag_run_id": run_id}


def test_snapshot_rank() -> None:
    assert snapshot_rank(None) == (-1, -1, -1)
    assert snapshot_rank({}) == (-1, -1, -1)
    assert snapshot_rank(manifest(True, 3, 10)) == (1, 3, 10)
    assert snapshot_rank(manifest(False, 2, 7)) == (0, 2, 7)
    assert snapshot_rank({"complete": False, "row_count": None}) == (0, 0, 0)
    # complete beats any partial, then regions covered, then rows
    assert snapshot_rank(manifest(True, 1, 0)) > snapshot_rank(manifest(False, 50, 10_000))
    assert snapshot_rank(manifest(False, 3, 0)) > snapshot_rank(manifest(False, 2, 10_000))
    assert snapshot_rank(manifest(False, 3, 11)) > snapshot_rank(manifest(False, 3, 10))


COMPLETE_NEW = snapshot_rank(manifest(True, 3, 10))
PARTIAL_NEW = snapshot_rank(manifest(False, 2, 8))


@pytest.mark.parametrize(
    ("existing", "new_rank", "overwrite", "write", "reason"),
    [
        pytest.param(None, COMPLETE_NEW, False, True, "no snapshot", id="none-complete"),
        pytest.param(None, PARTIAL_NEW, False, True, "no snapshot", id="none-partial"),
        pytest.param(manifest(True, 3, 10), COMPLETE_NEW, False, False, "overwrite=true", id="complete-kept"),
        pytest.param(
            manifest(True, 1, 1), COMPLETE_NEW, False, False, "old-run", id="complete-kept-better-new"
        ),
        pytest.param(
            manifest(True, 3, 10), PARTIAL_NEW, False, False, "already exists", id="complete-vs-partial"
        ),
        pytest.param(manifest(True, 3, 10), PARTIAL_NEW, True, True, "overwrite", id="complete-overwritten"),
        pytest.param(manifest(False, 2, 8), COMPLETE_NEW, False, True, "partial", id="partial-by-complete"),
        pytest.param(manifest(False, 1, 8), PARTIAL_NEW, False, True, "partial", id="partial-by-better"),
        pytest.param(manifest(False, 2, 8), PARTIAL_NEW, False, True, "partial", id="partial-by-equal"),
        pytest.param(manifest(False, 3, 1), PARTIAL_NEW, False, False, "covers more", id="partial-kept"),
        pytest.param(
            manifest(False, 2, 9), PARTIAL_NEW, False, False, "old-run", id="partial-more-rows-kept"
        ),
        pytest.param(manifest(False, 3, 1), PARTIAL_NEW, True, True, "overwrite", id="partial-overwritten"),
    ],
)
def test_decide_write(
    existing: dict[str, Any] | None, new_rank: tuple[int, int, int], overwrite: bool, write: bool, reason: str
) -> None:
    decision, why = decide_write(existing, new_rank, overwrite)
    assert decision is write
    assert reason in why
