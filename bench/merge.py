"""
The merge at volume: synthetic instance rows in gzip CSV parts on moto's server (a separate process, so
the objects do not live in the measured process), merged by the product's own path —
``SnapshotStore.merge_parts`` into ``storage.spool()``, then ``SnapshotStore.upload_csv`` (multipart) —
in a process of its own, measured for wall time and peak RSS. The result is downloaded and compared
byte for byte (SHA-256) with what the parts must merge to.

    python -m bench.merge PARAMS.json RESULT.json
"""

from __future__ import annotations

import gzip
import hashlib
import io
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from bench.servers import child_main, peak_rss_mb

BUCKET = "cmdb-bench-merge"
PREFIX = "cmdb/ec2-inventory"
CREDS = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench"}
ROWS_PER_PART = 1000
ROW = (
    "{account},eu-west-1,i-{iid:017x},web-{iid},bench-{account},eu-west-1a,running,m5.large,Linux/UNIX,"
    "10.{a}.{b}.{c},,vpc-0123456789abcdef0,subnet-0123456789abcdef0,ami-0123456789abcdef0,"
    '2026-01-01T00:00:00Z,"{{""Name"":""web-{iid}"",""Team"":""platform""}}",2026-11-26T02:00:00Z\r\n'
)


def _client(endpoint_url: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1", **CREDS)


def part_key(index: int) -> str:
    """Key of the ``index``-th synthetic part (one per account, as the product writes them)."""
    return f"{PREFIX}/_staging/ds=2026-11-26/run=bench/parts/{200_000_000_000 + index:012d}.csv.gz"


def part_body(index: int, rows: int = ROWS_PER_PART) -> bytes:
    """The CSV rows (no header, CRLF) of one part, uncompressed."""
    account = f"{200_000_000_000 + index:012d}"
    lines = []
    for n in range(rows):
        iid = index * rows + n
        lines.append(ROW.format(account=account, iid=iid, a=iid >> 16 & 255, b=iid >> 8 & 255, c=iid & 255))
    return "".join(lines).encode()


@dataclass
class Parts:
    """Parts written to moto, and the SHA-256 and row count their merge must have."""

    keys: list[str]
    rows: int
    sha256: str


def write_parts(endpoint_url: str, parts: int, threads: int = 8) -> list[Parts]:
    """
    Write ``parts`` parts of 1,000 rows; return the expected merge of every prefix length that a caller
    may measure (10%, 100% of the parts), as ``Parts``.
    """
    from include.cmdb_inventory.storage import rows_to_csv

    s3 = _client(endpoint_url)
    s3.create_bucket(Bucket=BUCKET)
    header = io.StringIO()
    rows_to_csv([], header)

    def put(index: int) -> None:
        body = gzip.compress(part_body(index), compresslevel=5, mtime=0)
        s3.put_object(Bucket=BUCKET, Key=part_key(index), Body=body)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(put, range(parts)))
    results: list[Parts] = []
    for count in sorted({max(1, parts // 10), parts}):
        digest = hashlib.sha256(header.getvalue().encode())
        for index in range(count):
            digest.update(part_body(index))
        results.append(Parts([part_key(i) for i in range(count)], count * ROWS_PER_PART, digest.hexdigest()))
    return results


def merged_sha256(endpoint_url: str, key: str) -> tuple[str, int]:
    """SHA-256 and line count of the merged CSV on S3 (streamed)."""
    body = _client(endpoint_url).get_object(Bucket=BUCKET, Key=key)["Body"]
    digest, lines = hashlib.sha256(), 0
    while chunk := body.read(1024 * 1024):
        digest.update(chunk)
        lines += chunk.count(b"\n")
    return digest.hexdigest(), lines


def run(params: dict[str, Any]) -> dict[str, Any]:
    """Merge the parts and upload the CSV exactly as ``merge_inventory`` does; wall, CPU, RSS."""
    from include.cmdb_inventory.storage import SnapshotStore, spool

    store = SnapshotStore(_client(params["endpoint_url"]), BUCKET, PREFIX)
    rss_before = peak_rss_mb()
    cpu0, t0 = time.process_time(), time.perf_counter()
    with spool() as csv_file:
        sha256 = store.merge_parts(params["keys"], csv_file)
        t_merged = time.perf_counter()
        store.upload_csv(csv_file, params["out_key"], {"sha256": sha256, "rows": str(params["rows"])})
    t1, cpu1 = time.perf_counter(), time.process_time()
    return {
        "wall": t1 - t0,
        "merge_wall": t_merged - t0,
        "upload_wall": t1 - t_merged,
        "cpu": cpu1 - cpu0,
        "sha256": sha256,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": rss_before,
    }


if __name__ == "__main__":
    sys.exit(child_main(run, sys.argv[1:]))
