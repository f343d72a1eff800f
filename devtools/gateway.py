"""Loopback AWS gateway for tests and benchmarks: moto's server behind a fault-injecting proxy.

``AwsGateway`` starts ``moto.server.ThreadedMotoServer`` on 127.0.0.1 and a small keep-alive HTTP
proxy in front of it. Every request through the proxy is parsed (service, region, action, access
key, account, AssumeRole role ARN, S3 bucket/key), logged, and matched against rules that the test
sets at run time to inject AWS-shaped errors, connection resets or latency::

    with AwsGateway() as gw:
        gw.throttle("ec2", status=503, times=2)
        ec2 = boto3.client("ec2", **gw.client_kwargs("eu-west-1"))
        ec2.describe_instances()  # botocore retries twice, then moto answers
        assert gw.count(action="DescribeInstances") == 3

Run standalone (for benchmarks): ``python -m devtools.gateway --port-file gw.json [--latency-ms N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import ipaddress
import json
import logging
import os
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Self, TypedDict, Unpack
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

if TYPE_CHECKING:
    from moto.server import ThreadedMotoServer

__all__ = [
    "ACCESS_DENIED",
    "AUTH_FAILURE",
    "DUMMY_CREDENTIALS",
    "EXPIRED_TOKEN",
    "S3_INTERNAL_ERROR",
    "S3_SLOW_DOWN",
    "S3_WRITE_ACTIONS",
    "UNAUTHORIZED_OPERATION",
    "AwsGateway",
    "Call",
    "CallFilters",
    "Fault",
    "Request",
    "Rule",
    "RuleOptions",
    "default_account_id",
    "main",
    "throttling_fault",
]

log = logging.getLogger(__name__)

DUMMY_CREDENTIALS: dict[str, str] = {
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
    "aws_session_token": "testing",
}
"""Fake credentials for clients pointed at the gateway (moto maps unknown keys to its default account)."""

S3_WRITE_ACTIONS: tuple[str, ...] = ("PutObject", "UploadPart", "CompleteMultipartUpload")
"""S3 actions that ``fail_s3_writes`` targets by default."""

Match = str | Collection[str] | None
"""A rule/filter value: ``None`` matches anything, a string matches exactly, a collection by membership."""

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "expect",
        "content-length",
    }
)
_NO_BODY_STATUSES = frozenset({204, 304})
_CREDENTIAL_RE = re.compile(r"Credential=([^/,\s]+)/[^/,\s]*/([^/,\s]+)/([^/,\s]+)/aws4_request")
_ACCESS_KEY_RE = re.compile(rb"<AccessKeyId>\s*([^<\s]+)\s*</AccessKeyId>")
_ASSUMED_ROLE_ARN_RE = re.compile(rb"<Arn>\s*arn:[\w-]+:sts::(\d{12}):assumed-role/")
_ROLE_ARN_ACCOUNT_RE = re.compile(r"^arn:[\w-]+:iam::(\d{12}):")
_VHOST_S3_RE = re.compile(r"^(?P<bucket>.+?)\.(?:s3[.-]|localhost$)")
_ASSUME_ROLE_ACTIONS = frozenset({"AssumeRole", "AssumeRoleWithWebIdentity", "AssumeRoleWithSAML"})
_SESSION_KEY_ACTIONS = frozenset({"GetSessionToken", "GetFederationToken", "CreateAccessKey"})
_LOOPBACK_NAMES = {"localhost": "127.0.0.1"}

# S3 sub-resources that turn "<Verb>Bucket" / "<Verb>Object" into a named operation.
_S3_BUCKET_SUBRESOURCES: dict[str, str] = {
    "accelerate": "BucketAccelerateConfiguration",
    "acl": "BucketAcl",
    "analytics": "BucketAnalyticsConfiguration",
    "cors": "BucketCors",
    "encryption": "BucketEncryption",
    "intelligent-tiering": "BucketIntelligentTieringConfiguration",
    "inventory": "BucketInventoryConfiguration",
    "lifecycle": "BucketLifecycleConfiguration",
    "logging": "BucketLogging",
    "metrics": "BucketMetricsConfiguration",
    "notification": "BucketNotificationConfiguration",
    "object-lock": "ObjectLockConfiguration",
    "ownershipControls": "BucketOwnershipControls",
    "policy": "BucketPolicy",
    "publicAccessBlock": "PublicAccessBlock",
    "replication": "BucketReplication",
    "requestPayment": "BucketRequestPayment",
    "tagging": "BucketTagging",
    "versioning": "BucketVersioning",
    "website": "BucketWebsite",
}
_S3_OBJECT_SUBRESOURCES: dict[str, str] = {
    "acl": "ObjectAcl",
    "legal-hold": "ObjectLegalHold",
    "retention": "ObjectRetention",
    "tagging": "ObjectTagging",
}
_S3_VERBS = {"GET": "Get", "PUT": "Put", "DELETE": "Delete"}


def default_account_id() -> str:
    """Moto's default account (``MOTO_ACCOUNT_ID`` or ``123456789012``)."""
    try:
        from moto.core import DEFAULT_ACCOUNT_ID

        return str(DEFAULT_ACCOUNT_ID)
    except ImportError:  # pragma: no cover - moto is a test dependency
        return os.environ.get("MOTO_ACCOUNT_ID", "123456789012")


def _loopback_host(host: str) -> str:
    """Return ``host`` as a loopback IP literal, or raise ``ValueError``."""
    host = _LOOPBACK_NAMES.get(host.lower(), host).strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"AwsGateway only uses loopback IP addresses, not {host!r}") from None
    if not address.is_loopback:
        raise ValueError(f"AwsGateway refuses non-loopback address {host!r}")
    return host


def _matches(expected: Match, value: str | None) -> bool:
    """Whether ``value`` satisfies a ``Match`` (None = anything, str = equal, collection = member)."""
    if expected is None:
        return True
    if value is None:
        return False
    if isinstance(expected, str):
        return value == expected
    return value in expected


# --------------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fault:
    """What to do with a matching call: answer with an AWS error, or reset the connection.

    ``message`` may use ``{service} {action} {region} {account} {role_arn} {bucket} {key}``.
    With ``after_forward=True`` the call still reaches moto (it takes effect) before the fault.
    """

    kind: Literal["error", "reset", "throttle"] = "error"
    status: int = 500
    code: str = "InternalError"
    message: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    after_forward: bool = False

    @classmethod
    def error(
        cls,
        status: int,
        code: str,
        message: str = "",
        *,
        headers: dict[str, str] | None = None,
        after_forward: bool = False,
    ) -> Fault:
        """An error answer, serialised in the protocol of the request's service."""
        return cls("error", status, code, message, tuple((headers or {}).items()), after_forward)

    @classmethod
    def reset(cls, *, after_forward: bool = False) -> Fault:
        """Close the client socket with an RST instead of answering."""
        return cls("reset", 0, "reset", "", (), after_forward)

    @classmethod
    def throttle(cls, status: int | None = None) -> Fault:
        """The throttling error of whichever service is called (see ``throttling_fault``)."""
        return cls("throttle", status or 0, "throttle")

    def resolve(self, service: str) -> Fault:
        """Turn a ``throttle`` fault into the concrete error of ``service``."""
        if self.kind != "throttle":
            return self
        concrete = throttling_fault(service, self.status or None)
        return Fault.error(concrete.status, concrete.code, concrete.message, after_forward=self.after_forward)

    @property
    def label(self) -> str:
        """What the call log records as ``Call.fault``."""
        return "reset" if self.kind == "reset" else self.code


ACCESS_DENIED = Fault.error(
    403,
    "AccessDenied",
    "User: arn:aws:iam::{account}:user/gateway is not authorized to perform: sts:AssumeRole "
    "on resource: {role_arn}",
)
AUTH_FAILURE = Fault.error(401, "AuthFailure", "AWS was not able to validate the provided access credentials")
UNAUTHORIZED_OPERATION = Fault.error(
    403,
    "UnauthorizedOperation",
    "You are not authorized to perform this operation. User is not authorized to perform: "
    "ec2:{action} with an explicit deny in a service control policy",
)
EXPIRED_TOKEN = Fault.error(400, "ExpiredToken", "The security token included in the request is expired")
"""What EC2, STS and the other query services answer for temporary credentials past their expiry."""
S3_INTERNAL_ERROR = Fault.error(500, "InternalError", "We encountered an internal error. Please try again.")
S3_SLOW_DOWN = Fault.error(503, "SlowDown", "Please reduce your request rate.")


def throttling_fault(service: str, status: int | None = None) -> Fault:
    """The throttling error a service really sends (EC2 ``RequestLimitExceeded``, S3 ``SlowDown``...)."""
    if service == "ec2":
        return Fault.error(status or 400, "RequestLimitExceeded", "Request limit exceeded.")
    if service == "s3":
        return Fault.error(status or 503, "SlowDown", "Please reduce your request rate.")
    if service in {"organizations", "lambda"}:
        return Fault.error(
            status or (429 if service == "lambda" else 400), "TooManyRequestsException", "Rate exceeded"
        )
    if service in {"sqs", "logs", "dynamodb", "monitoring", "ecs", "events"}:
        return Fault.error(status or 400, "ThrottlingException", "Rate exceeded")
    return Fault.error(status or 400, "Throttling", "Rate exceeded")


# --------------------------------------------------------------------------------------------------
# Requests, calls, rules
# --------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Request:
    """A parsed request as rules see it (``when=`` predicates receive this)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    body: bytes
    service: str
    region: str
    access_key: str
    account: str
    action: str
    protocol: str
    params: dict[str, list[str]] = field(default_factory=dict)
    role_arn: str | None = None
    bucket: str | None = None
    key: str | None = None

    def param(self, name: str) -> str | None:
        """First value of a query-protocol parameter or URL query parameter."""
        values = self.params.get(name) or self.query.get(name)
        return values[0] if values else None


@dataclass(frozen=True, slots=True)
class Call:
    """One logged call through the gateway (``status`` 0 = connection reset, 502 = upstream failure)."""

    seq: int
    started: float
    service: str
    action: str
    region: str
    account: str
    access_key: str
    role_arn: str | None
    bucket: str | None
    key: str | None
    method: str
    path: str
    status: int
    fault: str | None
    delay: float
    duration: float


class _Matches(TypedDict, total=False):
    """What a request is matched on, by rules and by call filters alike."""

    service: Match
    action: Match
    account: Match
    region: Match
    role_arn: Match
    bucket: Match
    key_prefix: str | None
    access_key: Match


class RuleOptions(_Matches, total=False):
    """Keyword options shared by ``add_rule`` and the fault helpers."""

    when: Callable[[Request], bool] | None
    latency: float
    times: int | None
    after: int
    per_access_key: bool
    probability: float | None
    seed: int | None


class CallFilters(_Matches, total=False):
    """Filters of ``calls``/``count``; ``fault`` is the error code or ``"reset"``."""

    method: Match
    fault: Match
    status: int | Collection[int] | None
    faulted: bool | None


_CALL_MATCH_FIELDS = (
    "service",
    "action",
    "account",
    "region",
    "role_arn",
    "bucket",
    "access_key",
    "method",
    "fault",
)


@dataclass(eq=False)
class Rule:
    """A match (all given fields must match) plus a fault and/or latency, limited by times/probability.

    ``after`` lets that many matching calls through untouched before the rule starts firing; with
    ``per_access_key`` they are counted per access key, so each new set of credentials gets its own
    ``after`` calls (credentials that expire some calls after they were issued: ``expire_credentials``).
    Remove with ``rule.remove()`` or use it as a context manager (``with gw.throttle(...):``).
    """

    fault: Fault | None = None
    latency: float = 0.0
    service: Match = None
    action: Match = None
    account: Match = None
    region: Match = None
    role_arn: Match = None
    bucket: Match = None
    key_prefix: str | None = None
    access_key: Match = None
    when: Callable[[Request], bool] | None = None
    times: int | None = None
    after: int = 0
    per_access_key: bool = False
    probability: float | None = None
    seed: int | None = None
    hits: int = field(default=0, init=False)
    """How many calls the rule fired on."""
    matched: int = field(default=0, init=False)
    """How many calls matched the filters (fired or not)."""
    matched_by_key: dict[str, int] = field(default_factory=dict, init=False)
    """Matching calls per access key (counted only with ``per_access_key``)."""
    _rng: random.Random = field(init=False, repr=False)
    _gateway: AwsGateway | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.probability is not None and not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        if self.times is not None and self.times < 0:
            raise ValueError("times must be >= 0")
        if self.after < 0:
            raise ValueError("after must be >= 0")
        self._rng = random.Random(self.seed)

    def matches(self, req: Request) -> bool:
        """Whether the request satisfies every filter of this rule."""
        return (
            _matches(self.service, req.service)
            and _matches(self.action, req.action)
            and _matches(self.region, req.region)
            and _matches(self.account, req.account)
            and _matches(self.role_arn, req.role_arn)
            and _matches(self.bucket, req.bucket)
            and _matches(self.access_key, req.access_key)
            and (self.key_prefix is None or (req.key is not None and req.key.startswith(self.key_prefix)))
            and (self.when is None or self.when(req))
        )

    @property
    def remaining(self) -> int | None:
        """Calls left before a ``times=`` rule is exhausted (None = unlimited)."""
        return None if self.times is None else max(self.times - self.hits, 0)

    @property
    def exhausted(self) -> bool:
        """Whether a ``times=`` rule has fired all its times."""
        return self.times is not None and self.hits >= self.times

    def remove(self) -> None:
        """Detach the rule from its gateway (idempotent)."""
        if self._gateway is not None:
            self._gateway.remove_rule(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()


# --------------------------------------------------------------------------------------------------
# Request parsing and error serialisation
# --------------------------------------------------------------------------------------------------


def _s3_operation(
    method: str, key: str | None, bucket: str | None, q: dict[str, list[str]], h: Message
) -> str:
    """Name the S3 operation of a REST request from method, path and query."""
    if not bucket:
        return "ListBuckets" if method == "GET" else f"{method} /"
    if not key:
        if method == "HEAD":
            return "HeadBucket"
        if method == "POST" and "delete" in q:
            return "DeleteObjects"
        if method == "GET":
            if q.get("list-type") == ["2"]:
                return "ListObjectsV2"
            for sub, op in (("uploads", "ListMultipartUploads"), ("versions", "ListObjectVersions")):
                if sub in q:
                    return op
            if "location" in q:
                return "GetBucketLocation"
        verb = _S3_VERBS.get(method)
        if verb:
            for sub, name in _S3_BUCKET_SUBRESOURCES.items():
                if sub in q:
                    return verb + name
        return {"GET": "ListObjects", "PUT": "CreateBucket", "DELETE": "DeleteBucket"}.get(
            method, f"{method}Bucket"
        )
    copy = "x-amz-copy-source" in h
    if method == "PUT":
        if "partNumber" in q and "uploadId" in q:
            return "UploadPartCopy" if copy else "UploadPart"
        for sub, name in _S3_OBJECT_SUBRESOURCES.items():
            if sub in q:
                return "Put" + name
        return "CopyObject" if copy else "PutObject"
    if method == "POST":
        if "uploads" in q:
            return "CreateMultipartUpload"
        if "uploadId" in q:
            return "CompleteMultipartUpload"
        if "restore" in q:
            return "RestoreObject"
        if "select" in q:
            return "SelectObjectContent"
        return "PostObject"
    if method == "GET":
        if "uploadId" in q:
            return "ListParts"
        if "attributes" in q:
            return "GetObjectAttributes"
        for sub, name in _S3_OBJECT_SUBRESOURCES.items():
            if sub in q:
                return "Get" + name
        return "GetObject"
    if method == "HEAD":
        return "HeadObject"
    if method == "DELETE":
        if "uploadId" in q:
            return "AbortMultipartUpload"
        if "tagging" in q:
            return "DeleteObjectTagging"
        return "DeleteObject"
    return f"{method}Object"


@functools.cache
def _model_protocol(service: str) -> str | None:
    """botocore's protocol for a signing name that is also a service name (e.g. lambda: rest-json)."""
    try:
        import botocore.session

        return str(botocore.session.get_session().get_service_model(service).protocol)
    except Exception:
        return None


def _cbor_text(value: str) -> bytes:
    """CBOR-encode a text string (major type 3)."""
    data = value.encode()
    n = len(data)
    if n < 24:
        head = bytes([0x60 | n])
    elif n < 0x100:
        head = bytes([0x78, n])
    elif n < 0x10000:
        head = b"\x79" + struct.pack(">H", n)
    else:
        head = b"\x7a" + struct.pack(">I", n)
    return head + data


def _error_response(
    req: Request, status: int, code: str, message: str
) -> tuple[list[tuple[str, str]], bytes]:
    """Headers and body of an error answer in the request's protocol, as botocore parses it."""
    request_id = str(uuid.uuid4())
    msg = escape(message)
    kind = "Sender" if status < 500 else "Receiver"
    proto = req.protocol
    if proto == "rest":
        proto = "rest-json" if _model_protocol(req.service) == "rest-json" else "rest-xml"
    if proto == "ec2":
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
            f"<Code>{escape(code)}</Code><Message>{msg}</Message></Error></Errors>"
            f"<RequestID>{request_id}</RequestID></Response>"
        )
        return [("Content-Type", "text/xml;charset=UTF-8"), ("x-amzn-RequestId", request_id)], body.encode()
    if proto == "s3":
        headers = [("Content-Type", "application/xml"), ("x-amz-request-id", request_id[:16].upper())]
        headers.append(("x-amz-id-2", request_id))
        if req.method == "HEAD":
            return headers, b""
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error>'
            f"<Code>{escape(code)}</Code><Message>{msg}</Message>"
            + (f"<Key>{escape(req.key)}</Key>" if req.key else "")
            + (f"<BucketName>{escape(req.bucket)}</BucketName>" if req.bucket else "")
            + f"<RequestId>{request_id[:16].upper()}</RequestId><HostId>{request_id}</HostId></Error>"
        )
        return headers, body.encode()
    if proto == "json":
        content_type = req.headers.get("Content-Type") or "application/x-amz-json-1.0"
        payload = json.dumps({"__type": code, "message": message}).encode()
        return [
            ("Content-Type", content_type),
            ("x-amzn-RequestId", request_id),
            ("x-amzn-query-error", f"{code};{kind}"),
        ], payload
    if proto == "rest-json":
        payload = json.dumps({"__type": code, "message": message, "Message": message}).encode()
        return [
            ("Content-Type", "application/json"),
            ("x-amzn-RequestId", request_id),
            ("x-amzn-ErrorType", code),
        ], payload
    if proto == "cbor":
        payload = (
            b"\xa2" + _cbor_text("__type") + _cbor_text(code) + _cbor_text("message") + _cbor_text(message)
        )
        return [
            ("Content-Type", "application/cbor"),
            ("smithy-protocol", "rpc-v2-cbor"),
            ("x-amzn-RequestId", request_id),
            ("x-amzn-query-error", f"{code};{kind}"),
        ], payload
    namespace = f"https://{req.service or 'aws'}.amazonaws.com/doc/"
    body = (
        f'<ErrorResponse xmlns="{namespace}"><Error><Type>{kind}</Type>'
        f"<Code>{escape(code)}</Code><Message>{msg}</Message></Error>"
        f"<RequestId>{request_id}</RequestId></ErrorResponse>"
    )
    return [("Content-Type", "text/xml"), ("x-amzn-RequestId", request_id)], body.encode()


class _FormatDict(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _format_message(template: str, req: Request) -> str:
    values = _FormatDict(
        service=req.service,
        action=req.action,
        region=req.region,
        account=req.account,
        role_arn=req.role_arn or "",
        bucket=req.bucket or "",
        key=req.key or "",
    )
    try:
        return template.format_map(values)
    except (ValueError, IndexError, AttributeError):
        return template


# --------------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------------


class _UpstreamPool:
    """Idle keep-alive ``HTTPConnection``s to moto, shared by the proxy's handler threads."""

    def __init__(self, host: str, port: int, max_idle: int = 128, timeout: float = 120.0) -> None:
        self._host, self._port, self._timeout = host, port, timeout
        self._max_idle = max_idle
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    def acquire(self) -> http.client.HTTPConnection:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)

    def release(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class _Limiter:
    """At most ``limit`` holders of a slot at once (``None``: any number); the limit may change in use."""

    def __init__(self, limit: int | None) -> None:
        self._cond = threading.Condition()
        self._limit = _check_limit(limit)
        self._held = 0
        self.peak = 0

    @property
    def limit(self) -> int | None:
        return self._limit

    @limit.setter
    def limit(self, value: int | None) -> None:
        with self._cond:
            self._limit = _check_limit(value)
            self._cond.notify_all()

    def reset_peak(self) -> None:
        with self._cond:
            self.peak = self._held

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        with self._cond:
            while self._limit is not None and self._held >= self._limit:
                self._cond.wait()
            self._held += 1
            self.peak = max(self.peak, self._held)
        try:
            yield
        finally:
            with self._cond:
                self._held -= 1
                self._cond.notify()


def _check_limit(limit: int | None) -> int | None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"upstream_limit must be a positive integer or None, not {limit!r}")
    return limit


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256
    gateway: AwsGateway


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer
    upstream: http.client.HTTPConnection | None = None

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.gateway._track(self.connection, add=True)

    def finish(self) -> None:
        self.server.gateway._track(self.connection, add=False)
        if self.upstream is not None:
            self.server.gateway._pool.release(self.upstream)
            self.upstream = None
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: object) -> None:
        """Silence the per-request stderr lines of ``http.server``."""

    def _dispatch(self) -> None:
        self.server.gateway._handle(self)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _dispatch

    def read_body(self) -> bytes:
        """The request body (Content-Length or chunked)."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send_raw(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> None:
        """Write one complete response with a single ``sendall`` (no Nagle/delayed-ACK stalls)."""
        head = bool(self.command == "HEAD")
        lines = [f"HTTP/1.1 {status} {reason}\r\n"]
        for name, value in headers:
            lower = name.lower()
            if lower in _HOP_BY_HOP and not (head and lower == "content-length"):
                continue
            lines.append(f"{name}: {value}\r\n")
        if not head and status not in _NO_BODY_STATUSES and status >= 200:
            lines.append(f"Content-Length: {len(body)}\r\n")
        if self.close_connection:
            lines.append("Connection: close\r\n")
        lines.append("\r\n")
        payload = "".join(lines).encode("latin-1")
        if not head and status not in _NO_BODY_STATUSES:
            payload += body
        self.wfile.write(payload)

    def reset(self) -> None:
        """Abort the client connection with an RST (SO_LINGER 0) without answering."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            self.connection.close()


_RETRYABLE_UPSTREAM_ERRORS = (
    http.client.RemoteDisconnected,
    http.client.BadStatusLine,
    BrokenPipeError,
    ConnectionResetError,
    ConnectionAbortedError,
)


# --------------------------------------------------------------------------------------------------
# The gateway
# --------------------------------------------------------------------------------------------------


class AwsGateway:
    """Moto's server on 127.0.0.1 behind a recording, fault-injecting keep-alive proxy.

    ``url`` is the proxy endpoint for clients; ``moto_url`` the raw moto server (unlogged, no faults).
    Pass ``upstream="http://127.0.0.1:PORT"`` to front an already running moto server instead.
    ``latency`` (seconds) is added to every proxied call; change it any time via ``gw.latency``.
    ``upstream_limit`` lets at most that many calls at a time reach moto (the others wait their turn after
    their latency, as behind a server with that many workers); ``None``, the default, lets all through.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        upstream: str | None = None,
        latency: float = 0.0,
        seed: int | None = 0,
        max_calls: int | None = None,
        quiet: bool = True,
        upstream_limit: int | None = None,
    ) -> None:
        self.host = _loopback_host(host)
        self._port = port
        self._upstream: tuple[str, int] | None = None
        if upstream is not None:
            parts = urlsplit(upstream)
            if parts.scheme != "http" or parts.port is None:
                raise ValueError(f"upstream must look like http://127.0.0.1:PORT, not {upstream!r}")
            self._upstream = (_loopback_host(parts.hostname or ""), parts.port)
        self.latency = latency
        self.seed = seed
        self.quiet = quiet
        self.default_account = default_account_id()
        self._lock = threading.Lock()
        self._rules: tuple[Rule, ...] = ()
        self._calls: deque[Call] = deque(maxlen=max_calls)
        self._limiter = _Limiter(upstream_limit)
        self._seq = 0
        self._key_accounts: dict[str, str] = {}
        self._conns: set[socket.socket] = set()
        self._moto: ThreadedMotoServer | None = None
        self._server: _ProxyServer | None = None
        self._thread: threading.Thread | None = None
        self._pool: _UpstreamPool
        self.moto_url = ""
        self.url = ""

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        """Start moto (unless ``upstream`` was given) and the proxy; return ``self``."""
        if self._server is not None:
            return self
        if self._upstream is None:
            from moto.server import ThreadedMotoServer

            if self.quiet:
                werkzeug_log = logging.getLogger("werkzeug")
                if werkzeug_log.level == logging.NOTSET:
                    werkzeug_log.setLevel(logging.WARNING)
            moto = ThreadedMotoServer(ip_address=self.host, port=0, verbose=False)
            moto.start()
            # Don't let moto's server_close() wait for idle keep-alive handler threads.
            inner = getattr(moto, "_server", None)
            if inner is not None:
                inner.block_on_close = False
            self._moto = moto
            moto_host, moto_port = moto.get_host_and_port()
            upstream = (_loopback_host(moto_host), moto_port)
        else:
            upstream = self._upstream
        self.moto_url = f"http://{upstream[0]}:{upstream[1]}"
        self._pool = _UpstreamPool(*upstream)
        server = _ProxyServer((self.host, self._port), _Handler)
        server.gateway = self
        self._server = server
        self.url = f"http://{self.host}:{server.server_address[1]}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="aws-gateway", daemon=True
        )
        self._thread.start()
        log.debug("AwsGateway %s -> %s", self.url, self.moto_url)
        return self

    def stop(self) -> None:
        """Stop the proxy (dropping open client connections) and the moto server it started."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._pool.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        moto, self._moto = self._moto, None
        if moto is not None:
            moto.stop()

    @property
    def running(self) -> bool:
        """Whether the proxy is serving."""
        return self._server is not None

    @property
    def port(self) -> int:
        """The proxy's TCP port."""
        if self._server is None:
            raise RuntimeError("AwsGateway is not running")
        return int(self._server.server_address[1])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def client_kwargs(self, region: str = "us-east-1", **credentials: str) -> dict[str, str]:
        """``boto3.client(service, **gw.client_kwargs(region))``: endpoint, region, dummy creds."""
        creds = {**DUMMY_CREDENTIALS, **credentials}
        return {"endpoint_url": self.url, "region_name": region, **creds}

    def reset_moto(self) -> None:
        """Wipe moto's state (``POST /moto-api/reset``) and forget learned access keys."""
        host, port = urlsplit(self.moto_url).hostname or "", urlsplit(self.moto_url).port or 0
        conn = http.client.HTTPConnection(_loopback_host(host), port, timeout=30)
        try:
            conn.request("POST", "/moto-api/reset", body=b"")
            conn.getresponse().read()
        finally:
            conn.close()
        with self._lock:
            self._key_accounts.clear()

    # ---------------------------------------------------------------- rules

    @property
    def rules(self) -> tuple[Rule, ...]:
        """Active rules, in evaluation order."""
        return self._rules

    def add_rule(self, fault: Fault | None = None, **options: Unpack[RuleOptions]) -> Rule:
        """Add a rule; the first firing rule with a fault decides the answer, latencies add up."""
        if options.get("seed") is None and self.seed is not None:
            options["seed"] = self.seed + len(self._rules)
        rule = Rule(fault=fault, **options)
        rule._gateway = self
        with self._lock:
            self._rules = (*self._rules, rule)
        return rule

    def remove_rule(self, rule: Rule) -> None:
        """Remove a rule (no error if already gone)."""
        with self._lock:
            self._rules = tuple(r for r in self._rules if r is not rule)

    def clear_rules(self) -> None:
        """Remove every rule (the global ``latency`` is kept)."""
        with self._lock:
            self._rules = ()

    def fail(self, status: int, code: str, message: str = "", **options: Unpack[RuleOptions]) -> Rule:
        """Answer matching calls with any ``(status, code, message)`` in the service's error format."""
        return self.add_rule(Fault.error(status, code, message), **options)

    def deny_assume_role(self, role_arn: Match, **options: Unpack[RuleOptions]) -> Rule:
        """STS ``AssumeRole`` of ``role_arn`` answers 403 ``AccessDenied``."""
        return self.add_rule(ACCESS_DENIED, service="sts", action="AssumeRole", role_arn=role_arn, **options)

    def disable_region(self, region: Match, **options: Unpack[RuleOptions]) -> Rule:
        """EC2 in ``region`` answers 401 ``AuthFailure``, like a region not enabled for the account."""
        options.setdefault("service", "ec2")
        return self.add_rule(AUTH_FAILURE, region=region, **options)

    def deny_ec2(self, **options: Unpack[RuleOptions]) -> Rule:
        """EC2 answers 403 ``UnauthorizedOperation`` (an SCP deny); narrow with region=/action=/account=."""
        options.setdefault("service", "ec2")
        return self.add_rule(UNAUTHORIZED_OPERATION, **options)

    def expire_credentials(self, after: int = 0, **options: Unpack[RuleOptions]) -> Rule:
        """Temporary credentials expire ``after`` calls after they were first used: every later call with
        the same access key answers HTTP 400 ``ExpiredToken`` (in the service's protocol, as EC2 and STS
        do). Counted per access key, so credentials from a new AssumeRole work for ``after`` calls again.
        Narrow with ``account=`` (the account the keys act in), ``service=``, ``region=``..."""
        options.setdefault("per_access_key", True)
        return self.add_rule(EXPIRED_TOKEN, after=after, **options)

    def throttle(
        self, service: Match = "ec2", *, status: int | None = None, **options: Unpack[RuleOptions]
    ) -> Rule:
        """The service's real throttling error: EC2 ``RequestLimitExceeded`` (400, or ``status=503``),
        query services ``Throttling`` 400, JSON services ``ThrottlingException`` 400, S3 ``SlowDown`` 503.
        """
        return self.add_rule(Fault.throttle(status), service=service, **options)

    def fail_s3_writes(self, status: int = 500, **options: Unpack[RuleOptions]) -> Rule:
        """S3 ``PutObject``/``UploadPart``/``CompleteMultipartUpload`` answer 500 ``InternalError``
        (or ``status=503``: ``SlowDown``); narrow with ``bucket=``/``key_prefix=``/``action=``."""
        fault = (
            S3_SLOW_DOWN if status == 503 else Fault.error(status, "InternalError", S3_INTERNAL_ERROR.message)
        )
        options.setdefault("action", S3_WRITE_ACTIONS)
        return self.add_rule(fault, service="s3", **options)

    def reset_connections(self, **options: Unpack[RuleOptions]) -> Rule:
        """Matching calls get their connection reset (RST, no answer)."""
        return self.add_rule(Fault.reset(), **options)

    def add_latency(self, seconds: float, **options: Unpack[RuleOptions]) -> Rule:
        """Sleep ``seconds`` before forwarding matching calls."""
        return self.add_rule(None, latency=seconds, **options)

    @property
    def upstream_limit(self) -> int | None:
        """How many calls may be at moto at once (``None``: no limit); settable any time."""
        return self._limiter.limit

    @upstream_limit.setter
    def upstream_limit(self, value: int | None) -> None:
        self._limiter.limit = value

    @property
    def upstream_peak(self) -> int:
        """The most calls that were at moto at once since the last ``reset_calls``."""
        return self._limiter.peak

    # ---------------------------------------------------------------- call log and accounts

    def calls(self, **filters: Unpack[CallFilters]) -> list[Call]:
        """Logged calls matching every given filter (see ``CallFilters``), oldest first."""
        with self._lock:
            snapshot = list(self._calls)
        if not filters:
            return snapshot
        status = filters.get("status")
        statuses = None if status is None else {status} if isinstance(status, int) else set(status)
        faulted = filters.get("faulted")
        key_prefix = filters.get("key_prefix")
        fields = [(name, filters[name]) for name in _CALL_MATCH_FIELDS if filters.get(name) is not None]  # type: ignore[literal-required]
        return [
            c
            for c in snapshot
            if all(_matches(expected, getattr(c, name)) for name, expected in fields)
            and (statuses is None or c.status in statuses)
            and (faulted is None or (c.fault is not None) == faulted)
            and (key_prefix is None or (c.key is not None and c.key.startswith(key_prefix)))
        ]

    def count(self, **filters: Unpack[CallFilters]) -> int:
        """Number of logged calls matching the filters of ``calls``."""
        return len(self.calls(**filters))

    def reset_calls(self) -> None:
        """Forget the call log (and the peak of calls at moto at once)."""
        with self._lock:
            self._calls.clear()
        self._limiter.reset_peak()

    def account_for(self, access_key: str) -> str:
        """The account an access key acts in (learned from AssumeRole answers, else moto's default)."""
        return self._key_accounts.get(access_key, self.default_account)

    def map_key(self, access_key: str, account: str) -> None:
        """Declare which account an access key belongs to (for keys minted outside the gateway)."""
        with self._lock:
            self._key_accounts[access_key] = account

    @property
    def key_accounts(self) -> dict[str, str]:
        """A copy of the learned access-key → account map."""
        with self._lock:
            return dict(self._key_accounts)

    # ---------------------------------------------------------------- internals

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def _parse(self, h: _Handler, body: bytes) -> Request:
        method = h.command
        target = h.path
        if target.startswith(("http://", "https://")):
            parts = urlsplit(target)
            target = parts.path + (f"?{parts.query}" if parts.query else "")
        path, _, raw_query = target.partition("?")
        query = parse_qs(raw_query, keep_blank_values=True) if raw_query else {}
        headers = h.headers
        service = region = access_key = ""
        auth = headers.get("Authorization") or ""
        m = _CREDENTIAL_RE.search(auth)
        if m:
            access_key, region, service = m.group(1), m.group(2), m.group(3)
        elif "X-Amz-Credential" in query:
            scope = query["X-Amz-Credential"][0].split("/")
            if len(scope) >= 4:
                access_key, region, service = scope[0], scope[2], scope[3]
        elif auth.startswith("AWS "):
            access_key = auth[4:].split(":", 1)[0]
        params: dict[str, list[str]] = {}
        content_type = (headers.get("Content-Type") or "").lower()
        if body and content_type.startswith("application/x-www-form-urlencoded") and service != "s3":
            params = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        target_header = headers.get("X-Amz-Target")
        bucket = key = role_arn = None
        if service == "s3":
            protocol = "s3"
            bucket, key = self._s3_location(path, headers.get("Host") or "")
            action = _s3_operation(method, key, bucket, query, headers)
        elif target_header:
            protocol = "json" if service != "ec2" else "ec2"
            action = target_header.rsplit(".", 1)[-1]
        elif "Action" in params or "Action" in query:
            protocol = "ec2" if service == "ec2" else "query"
            action = (params.get("Action") or query["Action"])[0]
        elif path.startswith("/service/") and "/operation/" in path:
            protocol = "cbor" if "cbor" in content_type or headers.get("smithy-protocol") else "json"
            action = path.rsplit("/", 1)[-1]
        else:
            protocol = "ec2" if service == "ec2" else "rest-json" if "json" in content_type else "rest"
            action = f"{method} {path}"
        if action in _ASSUME_ROLE_ACTIONS:
            values = params.get("RoleArn") or query.get("RoleArn")
            role_arn = values[0] if values else None
        return Request(
            method=method,
            path=target,
            query=query,
            headers=headers,
            body=body,
            service=service,
            region=region,
            access_key=access_key,
            account=self.account_for(access_key),
            action=action,
            protocol=protocol,
            params=params,
            role_arn=role_arn,
            bucket=bucket,
            key=key,
        )

    @staticmethod
    def _s3_location(path: str, host: str) -> tuple[str | None, str | None]:
        hostname = host.rsplit(":", 1)[0] if not host.startswith("[") else host
        vhost = _VHOST_S3_RE.match(hostname)
        rest = unquote(path).lstrip("/")
        if vhost:
            return vhost.group("bucket"), rest or None
        bucket, _, key = rest.partition("/")
        return bucket or None, key or None

    def _decide(self, req: Request) -> tuple[Fault | None, float]:
        """Evaluate the rules: (first firing fault, total added latency)."""
        fault: Fault | None = None
        delay = self.latency
        for rule in self._rules:
            if fault is not None and rule.fault is not None:
                continue
            if not rule.matches(req):
                continue
            with self._lock:
                rule.matched += 1
                seen = rule.matched
                if rule.per_access_key:
                    seen = rule.matched_by_key.get(req.access_key, 0) + 1
                    rule.matched_by_key[req.access_key] = seen
                if seen <= rule.after:
                    continue
                if rule.probability is not None and rule._rng.random() >= rule.probability:
                    continue
                if rule.times is not None and rule.hits >= rule.times:
                    continue
                rule.hits += 1
            delay += rule.latency
            if rule.fault is not None:
                fault = rule.fault
        return fault, delay

    def _forward(self, h: _Handler, req: Request) -> tuple[int, str, list[tuple[str, str]], bytes]:
        headers: dict[str, str] = {}
        for name, value in req.headers.items():
            if name.lower() in _HOP_BY_HOP:
                continue
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        body: bytes | None = req.body if (req.body or req.method in {"POST", "PUT", "PATCH"}) else None
        for attempt in range(2):
            if h.upstream is None:
                h.upstream = self._pool.acquire()
            conn = h.upstream
            reused = conn.sock is not None
            try:
                conn.request(req.method, req.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except _RETRYABLE_UPSTREAM_ERRORS:
                conn.close()
                if attempt or not reused:
                    raise
                continue
            except BaseException:
                conn.close()
                raise
            return resp.status, resp.reason, resp.getheaders(), data
        raise AssertionError("unreachable")  # pragma: no cover

    def _learn(self, req: Request, body: bytes) -> None:
        """Learn access-key → account from STS/IAM answers that mint keys."""
        if req.action in _ASSUME_ROLE_ACTIONS:
            key = _ACCESS_KEY_RE.search(body)
            arn = _ASSUMED_ROLE_ARN_RE.search(body)
            account = arn.group(1).decode() if arn else None
            if account is None and req.role_arn:
                role = _ROLE_ARN_ACCOUNT_RE.match(req.role_arn)
                account = role.group(1) if role else None
        elif req.action in _SESSION_KEY_ACTIONS:
            key = _ACCESS_KEY_RE.search(body)
            account = req.account
        else:
            return
        if key and account:
            with self._lock:
                self._key_accounts[key.group(1).decode()] = account

    def _handle(self, h: _Handler) -> None:
        """Serve one request: parse, decide, (sleep), forward or fault; log it before answering."""
        started = time.time()
        t0 = time.perf_counter()
        body = h.read_body()
        req = self._parse(h, body)
        fault, delay = self._decide(req) if self._rules else (None, self.latency)
        if fault is not None:
            fault = fault.resolve(req.service)
        if delay > 0:
            time.sleep(delay)
        if fault is not None and not fault.after_forward:
            self._record(started, t0, req, fault.status, fault, delay)
            self._apply(h, req, fault)
            return
        try:
            with self._limiter.slot():  # after the latency: only the emulator's side is limited
                status, reason, headers, data = self._forward(h, req)
        except (OSError, http.client.HTTPException) as exc:
            log.warning("AwsGateway: upstream failure for %s %s: %r", req.method, req.path, exc)
            fault = Fault.error(502, "BadGateway", f"moto server unreachable: {exc!r}")
            status = fault.status
        else:
            if status == 200 and req.service in {"sts", "iam"}:
                self._learn(req, data)
        if fault is not None:
            self._record(started, t0, req, fault.status, fault, delay)
            self._apply(h, req, fault)
        else:
            self._record(started, t0, req, status, None, delay)
            h.send_raw(status, reason, headers, data)

    def _apply(self, h: _Handler, req: Request, fault: Fault) -> None:
        if fault.kind == "reset":
            h.reset()
            return
        headers, body = _error_response(req, fault.status, fault.code, _format_message(fault.message, req))
        headers.extend(fault.headers)
        h.send_raw(fault.status, http.client.responses.get(fault.status, "Error"), headers, body)

    def _record(
        self, started: float, t0: float, req: Request, status: int, fault: Fault | None, delay: float
    ) -> None:
        with self._lock:
            self._seq += 1
            self._calls.append(
                Call(
                    seq=self._seq,
                    started=started,
                    service=req.service,
                    action=req.action,
                    region=req.region,
                    account=req.account,
                    access_key=req.access_key,
                    role_arn=req.role_arn,
                    bucket=req.bucket,
                    key=req.key,
                    method=req.method,
                    path=req.path,
                    status=status,
                    fault=None if fault is None else fault.label,
                    delay=delay,
                    duration=time.perf_counter() - t0,
                )
            )


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run a gateway until SIGTERM/SIGINT, publishing its URLs as JSON in ``--port-file``."""
    parser = argparse.ArgumentParser(prog="python -m devtools.gateway", description=main.__doc__)
    parser.add_argument("--port-file", required=True, help="where to write {url, moto_url, pid} JSON")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="latency added to every call")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="proxy port (default: a free one)")
    parser.add_argument("--upstream", default=None, help="front this moto server instead of starting one")
    parser.add_argument(
        "--upstream-limit", type=int, default=None, help="at most this many calls at moto at once"
    )
    args = parser.parse_args(argv)

    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    gateway = AwsGateway(
        host=args.host,
        port=args.port,
        upstream=args.upstream,
        latency=args.latency_ms / 1000.0,
        upstream_limit=args.upstream_limit,
    )
    with gateway:
        info = {"url": gateway.url, "moto_url": gateway.moto_url, "pid": os.getpid()}
        tmp = f"{args.port_file}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(info, fh)
        os.replace(tmp, args.port_file)
        print(f"aws-gateway {gateway.url} -> {gateway.moto_url}", file=sys.stderr, flush=True)
        try:
            while not stop.wait(0.5):
                pass
        finally:
            with contextlib.suppress(OSError):
                os.unlink(args.port_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
