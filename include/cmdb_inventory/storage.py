"""
Every S3 call of the product (``SnapshotStore``: owner-checked, encrypted writes), the parts, the streaming
merge, manifests and the overwrite policy.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import shutil
import tempfile
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from copy import copy as shallow_copy
from dataclasses import dataclass
from itertools import islice
from typing import IO, TYPE_CHECKING, Any

from include.cmdb_inventory.contract import COLUMNS, CommitLayout, Layout
from include.cmdb_inventory.records import Record, csv_row

if TYPE_CHECKING:
    from botocore.client import BaseClient

log = logging.getLogger(__name__)

CSV_CONTENT_TYPE = "text/csv; charset=utf-8"
CHUNK = 1024 * 1024
# Parts downloaded ahead of the merge, in threads, so S3's latency overlaps; each is spooled (at most
# CHUNK in memory, the rest on disk), so memory does not grow with the size of the parts.
PART_PREFETCH = 8
# The CSV's multipart upload: 16 MiB parts, one at a time, so one chunk is held in memory whatever the
# CSV's size (two at a time made the merge's peak memory still grow by a chunk between 100k and 1M rows).
UPLOAD_CHUNK = 16 * CHUNK
UPLOAD_THREADS = 1
MAX_COPY_OBJECT = 5 * 1024**3  # the largest object one CopyObject can copy


class BucketOwnerError(RuntimeError):
    """The output bucket is not owned by the expected account."""


def rows_to_csv(
    rows: Iterable[Record], out: IO[str], header: bool = True, columns: Sequence[str] = COLUMNS
) -> int:
    """
    Write records as RFC 4180 CSV (CRLF, minimal quoting, neutralised cells) in ``columns`` (the contract's,
    then the configured tag columns); return the row count.
    """
    writer = csv.writer(out, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    if header:
        writer.writerow(columns)
    count = 0
    for row in rows:
        writer.writerow(csv_row(row, columns))
        count += 1
    return count


@dataclass(frozen=True)
class Document:
    """
    A JSON document as read from S3: ``body`` (an object), or ``None`` when the key does not exist or the
    document is unusable (not valid JSON, or not a JSON object), and then ``unusable`` says why.
    """

    key: str
    body: dict[str, Any] | None
    unusable: str | None = None


def _copy_source_bucket(source: Any) -> str | None:
    """The bucket of a ``CopySource`` argument (``{"Bucket", "Key"}`` or ``"bucket/key"``)."""
    if isinstance(source, Mapping):
        return str(source.get("Bucket") or "") or None
    if isinstance(source, str):
        return source.lstrip("/").split("/", 1)[0] or None
    return None


@dataclass(frozen=True)
class _OwnerHook:
    """A botocore ``before-parameter-build.s3`` handler: the owner on every request to ``bucket``."""

    bucket: str
    owner: str

    def __call__(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        if params.get("Bucket") != self.bucket:
            return
        members = model.input_shape.members if model.input_shape is not None else {}
        if "ExpectedBucketOwner" in members:
            params.setdefault("ExpectedBucketOwner", self.owner)
        # A copy within the bucket (latest/ from ds=): its source is checked too (s3transfer's copy
        # refuses ExpectedSourceBucketOwner as an extra argument).
        source = _copy_source_bucket(params.get("CopySource"))
        if "ExpectedSourceBucketOwner" in members and source == self.bucket:
            params.setdefault("ExpectedSourceBucketOwner", self.owner)


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
        if expected_bucket_owner:
            # The requests s3transfer makes on its own (AbortMultipartUpload after a failed part) take no
            # extra arguments: add the owner to every request of this client for this bucket, before
            # botocore validates and serialises it (what the caller passed is kept).
            s3.meta.events.register(
                "before-parameter-build.s3",
                _OwnerHook(bucket, expected_bucket_owner),
                unique_id=f"cmdb-expected-bucket-owner:{bucket}:{expected_bucket_owner}",
            )

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
        """
        Read a JSON document; ``None`` when there is none, or when it is unusable (logged, naming the key):
        every reader then treats a truncated or foreign document as absent instead of crashing.
        """
        return self.get_document(key).body

    def get_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        """
        One object's bytes (GetObject); with ``max_bytes``, at most one byte more than that is read, so the
        caller can tell an object over its limit without reading all of it. S3's errors propagate.
        """
        body = self.s3.get_object(Bucket=self.bucket, Key=key, **self.owner_args)["Body"]
        try:
            return bytes(body.read() if max_bytes is None else body.read(max_bytes + 1))
        finally:
            body.close()

    def get_document(self, key: str) -> Document:
        """Read a JSON document, telling a missing one from an unusable one (not JSON, not an object)."""
        from botocore.exceptions import ClientError

        try:
            raw = self.get_bytes(key)
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code"))
            if code in ("NoSuchKey", "404"):
                return Document(key, None)
            # S3 answers 403, not 404, for a missing key when the caller's s3:ListBucket does not cover
            # it; the hub's does only under the prefix. Listing this key (it sorts first) tells them apart.
            if code not in ("AccessDenied", "403"):
                raise
            if self._first_key(key) != key:
                return Document(key, None)
            raise self._bucket_error(err) or err from None
        try:
            body = json.loads(raw)
        except ValueError as err:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
            problem = f"not valid JSON ({len(raw)} bytes: {str(err)[:120]})"
        else:
            if isinstance(body, dict):
                return Document(key, body)
            problem = f"not a JSON object (a JSON {type(body).__name__})"
        log.error("%s is unusable, treated as absent: %s", self.uri(key), problem)
        return Document(key, None, problem)

    def for_commit(self, ds: str, commit: str) -> SnapshotStore:
        """This store with the snapshot files of ``ds`` under ``commit`` (the same client and settings)."""
        view = shallow_copy(self)
        view.layout = CommitLayout(self.layout.prefix, ds=ds, folder=commit)
        return view

    def head_metadata(self, key: str) -> dict[str, str] | None:
        """An object's user metadata (HeadObject); ``None`` when there is no such object."""
        from botocore.exceptions import ClientError

        try:
            response = self.s3.head_object(Bucket=self.bucket, Key=key, **self.owner_args)
        except ClientError as err:
            if str(err.response.get("Error", {}).get("Code")) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        return dict(response.get("Metadata") or {})

    def list_keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (ListObjectsV2, paginated)."""
        paginator = self.s3.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=prefix, **self.owner_args)
        return [obj["Key"] for page in pages for obj in page.get("Contents") or []]

    def list_folders(self, prefix: str) -> list[str]:
        """
        The "folders" directly under ``prefix`` (ListObjectsV2 with the ``/`` delimiter, paginated): each
        common prefix, ``prefix`` included, ending in ``/``.
        """
        paginator = self.s3.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/", **self.owner_args)
        return [common["Prefix"] for page in pages for common in page.get("CommonPrefixes") or []]

    def delete_keys(self, keys: Iterable[str]) -> None:
        """Delete objects (DeleteObjects, a thousand per request); keys that do not exist are no error."""
        listed = list(keys)
        for start in range(0, len(listed), 1000):
            batch = [{"Key": key} for key in listed[start : start + 1000]]
            answer = self.s3.delete_objects(
                Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}, **self.owner_args
            )
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise RuntimeError(
                    f"could not delete {self.uri(first.get('Key', ''))}: {first.get('Code')}: "
                    f"{first.get('Message')} ({len(answer['Errors'])} objects not deleted)"
                )

    def delete(self, key: str) -> None:
        """Delete one object (no error when there is none)."""
        self.s3.delete_object(Bucket=self.bucket, Key=key, **self.owner_args)

    def write_part(self, key: str, records: Iterable[Record], columns: Sequence[str] = COLUMNS) -> int:
        """Write one account's rows as a gzip CSV fragment (no header); return the row count."""
        text = io.StringIO()
        count = rows_to_csv(records, text, header=False, columns=columns)
        body = gzip.compress(text.getvalue().encode("utf-8"), compresslevel=5, mtime=0)
        self.put_bytes(key, body, "text/csv", ContentEncoding="gzip")
        return count

    def download_into(self, key: str, out: IO[bytes]) -> str | None:
        """
        Stream one object into ``out``, ``CHUNK`` at a time; return the SHA-256 of its bytes, or ``None``
        when there is no such object (nothing is written then). Other S3 errors propagate.
        """
        from botocore.exceptions import ClientError

        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=key, **self.owner_args)["Body"]
        except ClientError as err:
            if str(err.response.get("Error", {}).get("Code")) in ("NoSuchKey", "404"):
                return None
            raise
        digest = hashlib.sha256()
        with closing(body):
            while chunk := body.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
        out.flush()
        return digest.hexdigest()

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

    def merge_parts(self, part_keys: Iterable[str], out: IO[bytes], columns: Sequence[str] = COLUMNS) -> str:
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
        rows_to_csv([], header, columns=columns)
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
        """The CSV (or changes.csv) from ``fileobj``'s position: :meth:`upload_file` as ``text/csv``."""
        self.upload_file(fileobj, key, CSV_CONTENT_TYPE, metadata)

    def upload_file(
        self, fileobj: IO[bytes], key: str, content_type: str, metadata: Mapping[str, str]
    ) -> None:
        """
        Upload ``fileobj`` from its position: multipart beyond ``UPLOAD_CHUNK``, one chunk in memory at a
        time whatever the file's size; the object appears only when complete.
        """
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
            ExtraArgs={"ContentType": content_type, "Metadata": dict(metadata), **self.write_args},
            Config=config,
        )

    def download_url(self, key: str, filename: str, *, signer: BaseClient, expires_in: int) -> str:
        """
        A short-lived GET URL of one object, downloaded as ``filename``, that a browser can use as is.

        The object and its bucket's owner are checked first, by a HeadObject of this store's client
        (``ExpectedBucketOwner``): no URL is handed out for an object of a bucket another account owns.
        ``signer`` signs the URL: a client with SigV4 (S3 refuses SigV2 for SSE-KMS objects) and without
        this store's owner hook, since a browser sends no ``x-amz-*`` header, so only the host may be
        signed; :func:`check_browser_safe` refuses any other URL. S3's errors propagate.
        """
        self.s3.head_object(Bucket=self.bucket, Key=key, **self.owner_args)
        url = str(
            signer.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.bucket,
                    "Key": key,
                    "ResponseContentDisposition": f'attachment; filename="{filename}"',
                },
                ExpiresIn=expires_in,
            )
        )
        check_browser_safe(url)
        return url

    def copy(self, source_key: str, key: str) -> None:
        """Server-side copy within the bucket (managed: multipart for large objects)."""
        # s3transfer refuses ExpectedSourceBucketOwner (ValueError) as an extra argument: the client's
        # _OwnerHook adds it (and ExpectedBucketOwner) to the HeadObject and every write of the copy.
        extra: dict[str, str] = dict(self.write_args)
        self.s3.copy({"Bucket": self.bucket, "Key": source_key}, self.bucket, key, ExtraArgs=extra)

    def copy_sized(self, source_key: str, key: str, size: int | None) -> None:
        """
        Server-side copy of an object whose size is known: one ``CopyObject`` (metadata and content type
        copied) up to S3's limit for it, else the managed copy (HeadObject, then multipart).
        """
        if size is None or size > MAX_COPY_OBJECT:
            self.copy(source_key, key)
            return
        owner = self.expected_bucket_owner
        self.s3.copy_object(
            CopySource={"Bucket": self.bucket, "Key": source_key},
            Bucket=self.bucket,
            Key=key,
            MetadataDirective="COPY",
            **({"ExpectedSourceBucketOwner": owner} if owner else {}),
            **self.write_args,
        )


class UnsafeUrlError(ValueError):
    """A presigned URL a browser could not use as is: not SigV4, or signing more than the host."""


def check_browser_safe(url: str) -> None:
    """Refuse (``UnsafeUrlError``) a presigned URL that is not SigV4 or signs more than the host."""
    from urllib.parse import parse_qs, urlsplit

    query = parse_qs(urlsplit(url).query)
    algorithm = query.get("X-Amz-Algorithm", [""])[0]
    signed = query.get("X-Amz-SignedHeaders", [""])[0]
    if algorithm != "AWS4-HMAC-SHA256" or signed != "host":
        raise UnsafeUrlError(
            f"the presigned URL is signed with {algorithm or 'SigV2'} over headers {signed or '-'!r}; "
            "a browser needs SigV4 over the host only"
        )


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


def spool(max_memory: int = 8 * CHUNK) -> IO[bytes]:
    """A temporary file (the merged CSV, the Parquet file): in memory up to ``max_memory``, then on disk."""
    return tempfile.SpooledTemporaryFile(max_size=max_memory, mode="w+b")


def digest_of(fileobj: IO[bytes]) -> tuple[str, int]:
    """The SHA-256 and size of a spooled file's whole content, ``CHUNK`` at a time; left at its start."""
    fileobj.seek(0)
    digest = hashlib.sha256()
    size = 0
    while chunk := fileobj.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    fileobj.seek(0)
    return digest.hexdigest(), size


# What manifests written before subsets were recorded say for a run whose accounts Param named the accounts.
_PARAMS_SOURCE = "params.accounts"


def is_subset(manifest: Mapping[str, Any] | None) -> bool:
    """Whether a snapshot covers only the accounts a run's Param named (not the whole expected set)."""
    if not isinstance(manifest, Mapping):
        return False
    if "subset" in manifest:
        return bool(manifest["subset"])
    # Older manifests measured a Param run against its own list: never trust their "complete".
    return manifest.get("accounts_source") == _PARAMS_SOURCE


def is_complete(manifest: Mapping[str, Any] | None) -> bool:
    """Whether a snapshot covers every expected account and region; a subset never does."""
    return isinstance(manifest, Mapping) and manifest.get("complete") is True and not is_subset(manifest)


def snapshot_rank(manifest: Mapping[str, Any] | None) -> tuple[int, int, int]:
    """Order snapshots by quality: complete first, then regions covered, then rows."""
    if not manifest or not isinstance(manifest, Mapping):
        return (-1, -1, -1)
    ok = sum(1 for e in manifest.get("coverage", []) if e.get("status") == "OK")
    return (int(is_complete(manifest)), ok, int(manifest.get("row_count") or 0))


def decide_write(
    existing: Mapping[str, Any] | None,
    new_rank: tuple[int, int, int],
    overwrite: bool,
    run_id: str | None = None,
    *,
    subset: bool = False,
) -> tuple[bool, str]:
    """
    The overwrite policy: write when there is no snapshot, when asked to (``overwrite``), or when the new
    one is at least as good as a partial one. Another run's complete snapshot, or a better one, is kept.
    This run's own earlier attempt (a retried or cleared merge) is replaced when not better than the new.
    A ``subset`` run (its accounts Param named only some expected accounts) writes only with ``overwrite``.
    """
    if subset and not overwrite:
        return False, (
            "this run scanned only the accounts its 'accounts' param names, a subset of the expected "
            "accounts: a subset never replaces the date's snapshot or latest/; trigger with "
            "overwrite=true to replace them (the manifest then records the subset)"
        )
    if existing is None:
        return True, "no snapshot for this date yet" + (" (a subset: overwrite=true)" if subset else "")
    own = run_id is not None and existing.get("dag_run_id") == run_id
    if own and overwrite and new_rank[0] < snapshot_rank(existing)[0]:
        # overwrite=true asks to replace other runs' snapshots, never this run's own complete attempt with
        # an incomplete one (a cleared merge whose staging parts have expired would write an empty one).
        return False, "this run's earlier attempt covered more; kept it"
    if overwrite:
        return True, "overwrite requested by the run's 'overwrite' param" + (
            " (a subset of the expected accounts: the manifest says so)" if subset else ""
        )
    if run_id is not None and existing.get("dag_run_id") == run_id:
        if new_rank >= snapshot_rank(existing):
            return True, "replaces this run's own earlier attempt"
        return False, "this run's earlier attempt covered more; kept it"
    if is_complete(existing):
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
