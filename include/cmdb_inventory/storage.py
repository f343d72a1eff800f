"""S3 layout, parts, the streaming merge, manifests and the overwrite policy."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import re
import shutil
import tempfile
from collections import deque
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import IO, TYPE_CHECKING, Any

from include.cmdb_inventory.records import COLUMNS, Record, csv_row

if TYPE_CHECKING:
    from botocore.client import BaseClient

log = logging.getLogger(__name__)

CSV_NAME = "ec2_inventory.csv"
MANIFEST_NAME = "manifest.json"
CSV_CONTENT_TYPE = "text/csv; charset=utf-8"
CHUNK = 1024 * 1024
# Parts downloaded ahead of the merge, in threads, so S3's latency overlaps; each is spooled (at most
# CHUNK in memory, the rest on disk), so memory does not grow with the size of the parts.
PART_PREFETCH = 8
# The CSV's multipart upload: 16 MiB parts, one at a time, so one chunk is held in memory whatever the
# CSV's size (two at a time made the merge's peak memory still grow by a chunk between 100k and 1M rows).
UPLOAD_CHUNK = 16 * CHUNK
UPLOAD_THREADS = 1
_SAFE_RE = re.compile(r"[^A-Za-z0-9._-]")


class BucketOwnerError(RuntimeError):
    """The output bucket is not owned by the expected account."""


def safe_segment(text: str, limit: int = 80) -> str:
    """A string made safe to be one S3 key segment (never user text as-is)."""
    cleaned = _SAFE_RE.sub("_", text)[:limit].strip(".") or "_"
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"{cleaned}-{digest}"


def rows_to_csv(rows: Iterable[Record], out: IO[str], header: bool = True) -> int:
    """Write records as RFC 4180 CSV (CRLF, minimal quoting, neutralised cells); return the row count."""
    writer = csv.writer(out, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    if header:
        writer.writerow(COLUMNS)
    count = 0
    for row in rows:
        writer.writerow(csv_row(row))
        count += 1
    return count


@dataclass(frozen=True)
class Layout:
    """Where everything lives under ``s3://{bucket}/{prefix}/``."""

    prefix: str

    def snapshot(self, ds: str, name: str) -> str:
        """Key of a snapshot file of one logical date (contract)."""
        return f"{self.prefix}/ds={ds}/{name}"

    def latest(self, name: str) -> str:
        """Key of the newest date's snapshot file (contract)."""
        return f"{self.prefix}/latest/{name}"

    def staging(self, ds: str, run_id: str) -> str:
        """Run-specific staging prefix, so two runs never mix their parts."""
        return f"{self.prefix}/_staging/ds={ds}/run={safe_segment(run_id)}"

    def part(self, staging: str, account_id: str) -> str:
        """One account's CSV rows (gzip, no header, sorted)."""
        return f"{staging}/parts/{account_id}.csv.gz"

    def status(self, staging: str, account_id: str) -> str:
        """One account's coverage status."""
        return f"{staging}/status/{account_id}.json"


class SnapshotStore:
    """
    All S3 I/O of the product. Every request names the expected bucket owner when configured, and every
    write asks for server-side encryption (SSE-S3, or SSE-KMS with the configured key). No ACLs are set.
    """

    def __init__(
        self,
        s3: BaseClient,
        bucket: str,
        prefix: str,
        *,
        kms_key_id: str | None = None,
        expected_bucket_owner: str | None = None,
    ) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.layout = Layout(prefix)
        self.kms_key_id = kms_key_id
        self.expected_bucket_owner = expected_bucket_owner

    def uri(self, key: str) -> str:
        """``s3://bucket/key``."""
        return f"s3://{self.bucket}/{key}"

    @property
    def owner_args(self) -> dict[str, str]:
        """``ExpectedBucketOwner`` when configured."""
        return {"ExpectedBucketOwner": self.expected_bucket_owner} if self.expected_bucket_owner else {}

    @property
    def write_args(self) -> dict[str, str]:
        """Encryption (and owner) arguments of every write."""
        args = dict(self.owner_args)
        if self.kms_key_id:
            args.update(ServerSideEncryption="aws:kms", SSEKMSKeyId=self.kms_key_id)
        else:
            args["ServerSideEncryption"] = "AES256"
        return args

    def _bucket_error(self, err: Exception) -> BucketOwnerError | None:
        """The clear error for a 403 under ``ExpectedBucketOwner`` or a missing bucket; else ``None``."""
        code = str(getattr(err, "response", {}).get("Error", {}).get("Code", ""))
        if code in ("403", "AccessDenied") and self.expected_bucket_owner:
            return BucketOwnerError(
                f"bucket {self.bucket!r} is not owned by the expected account "
                f"{self.expected_bucket_owner} (or access is denied): refusing to write"
            )
        if code in ("404", "NoSuchBucket"):
            return BucketOwnerError(f"bucket {self.bucket!r} does not exist")
        return None

    def _first_key(self, prefix: str) -> str | None:
        """The first key under ``prefix`` (owner-checked); a clear error for a foreign or missing bucket."""
        from botocore.exceptions import ClientError

        try:
            response = self.s3.list_objects_v2(
                Bucket=self.bucket, Prefix=prefix, MaxKeys=1, **self.owner_args
            )
        except ClientError as err:
            raise self._bucket_error(err) or err from None
        contents = response.get("Contents") or [{}]
        return contents[0].get("Key")

    def check_bucket(self) -> None:
        """
        Fail clearly when the bucket is missing or owned by another account than expected.

        A ``ListObjectsV2`` of our own prefix, not ``HeadBucket``: the hub role may list the bucket only
        under its prefix (an ``s3:prefix`` condition), and ``HeadBucket`` carries no prefix.
        """
        self._first_key(f"{self.layout.prefix}/")

    def put_bytes(
        self,
        key: str,
        body: bytes,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
        **extra: str,
    ) -> None:
        """One PutObject with encryption and owner checks."""
        self.s3.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=body,
            ContentType=content_type,
            Metadata=dict(metadata or {}),
            **extra,
            **self.write_args,
        )

    def put_json(self, key: str, document: Mapping[str, Any]) -> None:
        """Write a JSON document."""
        body = json.dumps(document, indent=1, sort_keys=True, ensure_ascii=False).encode()
        self.put_bytes(key, body, "application/json")

    def get_json(self, key: str) -> dict[str, Any] | None:
        """Read a JSON document; ``None`` when there is none."""
        from botocore.exceptions import ClientError

        try:
            response = self.s3.get_object(Bucket=self.bucket, Key=key, **self.owner_args)
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code"))
            if code in ("NoSuchKey", "404"):
                return None
            # S3 answers 403, not 404, for a missing key when the caller's s3:ListBucket does not cover
            # it; the hub's does only under the prefix. Listing this key (it sorts first) tells them apart.
            if code not in ("AccessDenied", "403"):
                raise
            if self._first_key(key) != key:
                return None
            raise self._bucket_error(err) or err from None
        return json.loads(response["Body"].read())

    def write_part(self, key: str, records: Iterable[Record]) -> int:
        """Write one account's rows as a gzip CSV fragment (no header); return the row count."""
        text = io.StringIO()
        count = rows_to_csv(records, text, header=False)
        body = gzip.compress(text.getvalue().encode("utf-8"), compresslevel=5, mtime=0)
        self.put_bytes(key, body, "text/csv", ContentEncoding="gzip")
        return count

    def copy_part_into(self, key: str, out: IO[bytes]) -> None:
        """Stream one part's rows into ``out`` without holding it in memory."""
        body = self.s3.get_object(Bucket=self.bucket, Key=key, **self.owner_args)["Body"]
        with gzip.GzipFile(fileobj=body, mode="rb") as rows:
            shutil.copyfileobj(rows, out, CHUNK)

    def fetch_part(self, key: str) -> IO[bytes]:
        """One part's compressed bytes in a spooled file (in memory up to ``CHUNK``, then on disk)."""
        body = self.s3.get_object(Bucket=self.bucket, Key=key, **self.owner_args)["Body"]
        buffer = tempfile.SpooledTemporaryFile(max_size=CHUNK, mode="w+b")  # noqa: SIM115 - the caller closes it
        try:
            shutil.copyfileobj(body, buffer, CHUNK)
        except BaseException:
            buffer.close()
            raise
        buffer.seek(0)
        return buffer

    def merge_parts(self, part_keys: Iterable[str], out: IO[bytes]) -> str:
        """
        Header plus every part in order into ``out``; return the SHA-256 of what was written.

        Parts are downloaded ``PART_PREFETCH`` ahead in threads (so the merge is not one S3 round trip
        per account in sequence) and written strictly in order; the digest is computed while writing.
        """
        digest = hashlib.sha256()

        def write(data: bytes) -> None:
            digest.update(data)
            out.write(data)

        header = io.StringIO()
        rows_to_csv([], header)
        write(header.getvalue().encode("utf-8"))
        keys = iter(part_keys)
        with ThreadPoolExecutor(max_workers=PART_PREFETCH, thread_name_prefix="merge-prefetch") as pool:
            pending: deque[Future[IO[bytes]]] = deque(
                pool.submit(self.fetch_part, key) for key in islice(keys, PART_PREFETCH)
            )
            try:
                while pending:
                    with pending.popleft().result() as buffer:
                        following = next(keys, None)
                        if following is not None:
                            pending.append(pool.submit(self.fetch_part, following))
                        with gzip.GzipFile(fileobj=buffer, mode="rb") as rows:
                            while chunk := rows.read(CHUNK):
                                write(chunk)
            finally:
                for future in pending:  # after a failure: drop what was fetched ahead
                    if not future.cancel() and future.exception() is None:
                        future.result().close()
        out.flush()
        out.seek(0)
        return digest.hexdigest()

    def upload_csv(self, fileobj: IO[bytes], key: str, metadata: Mapping[str, str]) -> None:
        """Multipart upload (bounded buffers); the object appears only when complete."""
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(
            multipart_threshold=UPLOAD_CHUNK,
            multipart_chunksize=UPLOAD_CHUNK,
            max_concurrency=UPLOAD_THREADS,
        )
        # s3transfer reads a file object (not a file name) into memory chunk by chunk and may hold 10 chunks
        # by default (boto3 does not expose the knob): keep it to one chunk per thread.
        config.max_in_memory_upload_chunks = UPLOAD_THREADS
        self.s3.upload_fileobj(
            _KeepOpen(fileobj),  # s3transfer closes what it uploads; the caller still needs the file
            self.bucket,
            key,
            ExtraArgs={"ContentType": CSV_CONTENT_TYPE, "Metadata": dict(metadata), **self.write_args},
            Config=config,
        )

    def copy(self, source_key: str, key: str) -> None:
        """Server-side copy within the bucket (managed: multipart for large objects)."""
        # s3transfer refuses ExpectedSourceBucketOwner (ValueError); the source is this same bucket, and
        # ExpectedBucketOwner is sent on the source HeadObject and on every write of the copy.
        extra: dict[str, str] = dict(self.write_args)
        self.s3.copy({"Bucket": self.bucket, "Key": source_key}, self.bucket, key, ExtraArgs=extra)


class _KeepOpen(io.RawIOBase):
    """A read-only view of a binary file that ignores ``close()`` (the file stays usable after upload)."""

    def __init__(self, inner: IO[bytes]) -> None:
        super().__init__()
        self._inner = inner

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._inner.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        return self._inner.read(size)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._inner.seek(offset, whence)

    def tell(self) -> int:
        return self._inner.tell()


def spool() -> IO[bytes]:
    """A temporary file for the merged CSV: in memory while small, on disk beyond 8 MiB."""
    return tempfile.SpooledTemporaryFile(max_size=8 * CHUNK, mode="w+b")


def snapshot_rank(manifest: Mapping[str, Any] | None) -> tuple[int, int, int]:
    """Order snapshots by quality: complete first, then regions covered, then rows."""
    if not manifest:
        return (-1, -1, -1)
    ok = sum(1 for e in manifest.get("coverage", []) if e.get("status") == "OK")
    return (int(bool(manifest.get("complete"))), ok, int(manifest.get("row_count") or 0))


def decide_write(
    existing: Mapping[str, Any] | None,
    new_rank: tuple[int, int, int],
    overwrite: bool,
    run_id: str | None = None,
) -> tuple[bool, str]:
    """
    The overwrite policy: write when there is no snapshot, when asked to (``overwrite``), or when the new
    one is at least as good as a partial one. Another run's complete snapshot, or a better one, is kept.
    This run's own earlier attempt (a retried or cleared merge) is replaced when not better than the new.
    """
    if existing is None:
        return True, "no snapshot for this date yet"
    if overwrite:
        return True, "overwrite requested by the run's 'overwrite' param"
    if run_id is not None and existing.get("dag_run_id") == run_id:
        if new_rank >= snapshot_rank(existing):
            return True, "replaces this run's own earlier attempt"
        return False, "this run's earlier attempt covered more; kept it"
    if existing.get("complete"):
        return False, (
            f"a complete snapshot for this date already exists (run {existing.get('dag_run_id')}); "
            "trigger with overwrite=true to replace it"
        )
    if new_rank >= snapshot_rank(existing):
        return (
            True,
            f"replaces a partial snapshot (run {existing.get('dag_run_id')}) with a more complete one",
        )
    return False, (
        f"the existing partial snapshot (run {existing.get('dag_run_id')}) covers more than this run; kept it"
    )
