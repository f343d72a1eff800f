"""
Where the coverage page reads from: the latest snapshot's manifest in S3, located through the same
Variable the DAG reads, fetched through the snapshot store (on the Amazon provider's S3 hook machinery) at
request time, cached briefly; and the newest dated snapshot after it, when the mass-removal guard holds it
(a held snapshot never becomes ``latest/``, so the page looks for it).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from include.cmdb_inventory.storage import SnapshotStore

log = logging.getLogger(__name__)

CACHE_SECONDS = 30.0
PRESIGN_SECONDS = 300
MAX_MANIFEST_BYTES = 32 * 1024 * 1024
HELD_LOOKBACK = 3  # dates (newest first) whose manifest may be read looking for a held snapshot
DS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}\Z", re.ASCII)  # a snapshot folder's date (``ds=YYYY-MM-DD``)


class SourceError(RuntimeError):
    """The manifest cannot be shown; ``title`` and ``detail`` say why (plain text), ``status`` is HTTP's."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        self.status, self.title, self.detail = status, title, detail
        super().__init__(f"{title}: {detail}")


@dataclass(frozen=True)
class Location:
    """The snapshot store of the configuration: bucket, prefix and how to reach them."""

    bucket: str
    prefix: str
    aws_conn_id: str = "aws_default"
    region_name: str | None = None
    expected_bucket_owner: str | None = None

    @property
    def manifest_key(self) -> str:
        """``{prefix}/latest/manifest.json`` (the output contract)."""
        from include.cmdb_inventory.contract import MANIFEST_NAME, Layout

        return Layout(self.prefix).latest(MANIFEST_NAME)

    def uri(self, key: str) -> str:
        """``s3://bucket/key``."""
        return f"s3://{self.bucket}/{key}"


@dataclass(frozen=True)
class Snapshot:
    """A manifest as read, and when."""

    location: Location
    manifest: dict[str, Any]
    fetched_at: str
    held: dict[str, Any] | None = None  # fetch_held's answer: a newer snapshot the guard holds or rejected


def location_from_variable() -> Location:
    """Read the Variable now (request time) and validate it the way the DAG does."""
    from airflow.sdk import Variable

    from include.cmdb_inventory.config import VARIABLE_KEY, ConfigError, parse_settings

    raw = Variable.get(VARIABLE_KEY, default=None)
    if raw is None:
        raise SourceError(503, "Not configured", f"the Airflow Variable {VARIABLE_KEY!r} is not set")
    try:
        settings = parse_settings(raw)
    except ConfigError as err:
        raise SourceError(503, "Invalid configuration", str(err)) from None
    return Location(
        bucket=settings.bucket,
        prefix=settings.prefix,
        aws_conn_id=settings.aws_conn_id,
        region_name=settings.hub_region,
        expected_bucket_owner=settings.expected_bucket_owner,
    )


def _hub_hook(location: Location) -> Any:
    """
    The provider's S3 hook machinery on the process's one hub session (``HubHook``: connection extras
    apply, a connection's ``role_arn`` is assumed once per process, not per request). Puts the credential
    filter on botocore's loggers first: the API server is a process that talks to AWS too.
    """
    from include.cmdb_inventory.aws.redaction import guard_botocore_logs

    guard_botocore_logs()
    from include.cmdb_inventory.aws.hooks import HubHook

    return HubHook(aws_conn_id=location.aws_conn_id, region_name=location.region_name, client_type="s3")


def store_of(location: Location, client: Any = None) -> SnapshotStore:
    """
    The snapshot store of ``location``: every S3 call of the page goes through it (each names the expected
    bucket owner). ``client`` replaces the server's own reading client (the hub hook's).
    """
    from include.cmdb_inventory.storage import SnapshotStore

    return SnapshotStore(
        client or _hub_hook(location).get_conn(),
        location.bucket,
        location.prefix,
        expected_bucket_owner=location.expected_bucket_owner,
    )


def _presigning_client(location: Location) -> Any:
    """
    A client that presigns with SigV4 (connection extras kept): botocore's default for presigned S3 URLs
    is SigV2 on some endpoints, which S3 refuses for SSE-KMS objects. Its own client, so the store's owner
    check (a header) is never signed into a URL that a browser uses.
    """
    from botocore.config import Config

    hook = _hub_hook(location)
    return hook.get_client_type(config=hook.config.merge(Config(signature_version="s3v4")))


def fetch_manifest(location: Location, client: Any = None) -> dict[str, Any]:
    """GET the latest manifest; a missing one, an AWS error or a broken document is a ``SourceError``."""
    from botocore.exceptions import BotoCoreError, ClientError

    from include.cmdb_inventory.aws.redaction import scrub

    key = location.manifest_key
    try:
        body = store_of(location, client).get_bytes(key, max_bytes=MAX_MANIFEST_BYTES)
    except ClientError as err:
        error = err.response.get("Error", {})
        code = str(error.get("Code", "Unknown"))
        if code in ("NoSuchKey", "404"):
            raise SourceError(
                404, "No snapshot yet", f"{location.uri(key)} does not exist: no run has written one"
            ) from None
        log.warning("Reading %s failed: %s", location.uri(key), code)
        raise SourceError(502, "Cannot read the manifest", f"{location.uri(key)}: {code}") from None
    except BotoCoreError as err:
        log.warning("Reading %s failed: %s", location.uri(key), type(err).__name__)
        detail = f"{location.uri(key)}: {scrub(str(err))}"
        raise SourceError(502, "Cannot read the manifest", detail) from None
    if len(body) > MAX_MANIFEST_BYTES:
        raise SourceError(
            502, "Manifest too large", f"{location.uri(key)} is over {MAX_MANIFEST_BYTES} bytes"
        )
    try:
        manifest = json.loads(body)
    except ValueError as err:
        raise SourceError(502, "Broken manifest", f"{location.uri(key)} is not JSON: {err}") from None
    if not isinstance(manifest, dict):
        raise SourceError(502, "Broken manifest", f"{location.uri(key)} is not a JSON object")
    return manifest


def fetch_held(location: Location, latest: Mapping[str, Any], client: Any = None) -> dict[str, Any] | None:
    """
    The newest dated snapshot from ``latest``'s date on, when the mass-removal guard holds it or it was
    rejected: its ``ds``, ``dag_run_id``, ``manifest_uri`` and ``removal_guard``; ``None`` when there is
    none. One listing of the ``ds=`` folders and a manifest read for the newest date that has one (at most
    ``HELD_LOOKBACK`` tried); an AWS error is ``{"error"}``
    (the page says it could not look rather than hide a held snapshot).
    """
    from botocore.exceptions import BotoCoreError, ClientError

    from include.cmdb_inventory.contract import GUARD_HELD, GUARD_REJECTED, MANIFEST_NAME

    store = store_of(location, client)
    root = f"{location.prefix}/ds="
    latest_ds = str(latest.get("ds") or "")
    try:
        dates = sorted(folder[len(root) :].rstrip("/") for folder in store.list_folders(root))
        # The latest's own date too: a rerun of that date may be the one held (latest/ keeps the old one).
        newer = [ds for ds in dates if DS_RE.match(ds) and ds >= latest_ds]
        manifest, key, found_ds = None, "", ""
        # The newest date with a manifest: a newer folder may hold only an attempt in progress (or one that
        # died before committing), which must not hide a held snapshot under it.
        for ds in reversed(newer[-HELD_LOOKBACK:]):
            key = store.layout.snapshot(ds, MANIFEST_NAME)
            try:
                body = store.get_bytes(key, max_bytes=MAX_MANIFEST_BYTES)
            except ClientError as err:
                if str(err.response.get("Error", {}).get("Code")) in ("NoSuchKey", "404"):
                    continue
                raise
            manifest = json.loads(body) if len(body) <= MAX_MANIFEST_BYTES else None
            found_ds = ds
            break
    except ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", "Unknown"))
        log.warning("Looking for a held snapshot under %s failed: %s", location.uri(root), code)
        return {"error": f"could not look for a snapshot after {latest_ds or 'latest/'}: {code}"}
    except (BotoCoreError, ValueError) as err:
        code = type(err).__name__
        log.warning("Looking for a held snapshot under %s failed: %s", location.uri(root), code)
        return {"error": f"could not look for a snapshot after {latest_ds or 'latest/'}: {code}"}
    if not isinstance(manifest, dict):
        return None
    guard = manifest.get("removal_guard")
    if not isinstance(guard, dict) or guard.get("state") not in (GUARD_HELD, GUARD_REJECTED):
        return None
    return {
        "ds": manifest.get("ds") or found_ds,
        "dag_run_id": manifest.get("dag_run_id"),
        "manifest_uri": location.uri(key),
        "removal_guard": guard,
    }


def presigned_url(location: Location, key: str, filename: str, client: Any = None) -> str:
    """
    A short-lived SigV4 GET URL of one object, downloaded as ``filename``, that a browser can use as is
    (``SnapshotStore.download_url``: the host and the query signed only, the bucket owner checked by the
    server's own HEAD of the object first). ``client`` replaces the server's reading client.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    from include.cmdb_inventory.storage import UnsafeUrlError

    try:
        store = store_of(location, client)
        return store.download_url(
            key, filename, signer=_presigning_client(location), expires_in=PRESIGN_SECONDS
        )
    except ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", "Unknown"))
        code = {"403": "AccessDenied", "404": "NoSuchKey"}.get(code, code)  # a HEAD's answer has no body
        log.warning("Cannot offer %s for download: %s", location.uri(key), code)
        detail = f"{location.uri(key)}: {code}"
        if code == "AccessDenied" and location.expected_bucket_owner:
            detail += f" (is the bucket owned by {location.expected_bucket_owner}, expected_bucket_owner?)"
        status = 404 if code == "NoSuchKey" else 502
        raise SourceError(status, "Cannot offer the download", detail) from None
    except BotoCoreError as err:
        log.warning("Cannot offer %s for download: %s", location.uri(key), type(err).__name__)
        raise SourceError(
            502, "Cannot offer the download", f"{location.uri(key)}: {type(err).__name__}"
        ) from None
    except UnsafeUrlError as err:
        raise SourceError(500, "Cannot offer the download", str(err)) from None


class SnapshotCache:
    """The last manifest read per location, kept ``ttl`` seconds (errors are never cached)."""

    def __init__(
        self,
        ttl: float = CACHE_SECONDS,
        fetch: Callable[[Location], dict[str, Any]] = fetch_manifest,
        clock: Callable[[], float] = time.monotonic,
        held: Callable[[Location, Mapping[str, Any]], dict[str, Any] | None] | None = None,
    ) -> None:
        self.ttl = ttl
        self._fetch = fetch
        # The held-snapshot lookup goes with S3's manifest: a replaced ``fetch`` reads from elsewhere.
        self._held = held if held is not None else (fetch_held if fetch is fetch_manifest else None)
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[Location, tuple[float, Snapshot]] = {}

    def get(self, location: Location) -> Snapshot:
        """The cached snapshot of ``location``, or a fresh read."""
        now = self._clock()
        with self._lock:
            hit = self._entries.get(location)
            if hit and now - hit[0] < self.ttl:
                return hit[1]
        manifest = self._fetch(location)
        held = self._held(location, manifest) if self._held else None
        snapshot = Snapshot(location, manifest, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), held)
        with self._lock:
            self._entries = {location: (now, snapshot)}  # one configuration at a time: no growth
        return snapshot
