"""
A loopback stub of ServiceNow's Identification and Reconciliation API (``POST /api/now/identifyreconcile``)
for the example DAG's test: it records every request (path, query, body, whether Basic auth came, and with
which user) and answers 200 with an IRE-like body, or, for the request numbers it is told, 429 with a
``Retry-After`` or a 5xx. Never a real ServiceNow: 127.0.0.1, a free port.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Received:
    """One request as the stub saw it, and what it answered."""

    number: int  # from 1, in arrival order
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any  # the parsed JSON (None when it was not JSON)
    user: str | None  # the Basic auth user, None without Basic auth
    password_matched: bool
    status: int


@dataclass
class IreStub:
    """The stub's state: the rules (request number -> (status, Retry-After or None)) and what it received."""

    user: str
    password: str
    faults: dict[int, tuple[int, str | None]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    url: str = ""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def answer(self, number: int) -> tuple[int, str | None]:
        """The status (and Retry-After) for request ``number``."""
        return self.faults.get(number, (200, None))

    def record(self, request: Received) -> None:
        """Keep one request."""
        with self._lock:
            self.received.append(request)

    def next_number(self) -> int:
        """The next request's number."""
        with self._lock:
            return len(self.received) + 1

    def accepted(self) -> list[Received]:
        """The requests answered 200."""
        return [r for r in self.received if r.status == 200]


def ire_response(body: Mapping[str, Any]) -> dict[str, Any]:
    """An IRE-like answer: one result per item (className, operation, sysId), the relations as sent."""
    items = [
        {
            "className": item.get("className"),
            "operation": "INSERT",
            "sysId": uuid.uuid4().hex,
            "identifierEntrySysId": uuid.uuid4().hex,
            "identificationAttempts": [],
        }
        for item in body.get("items") or []
    ]
    return {"result": {"items": items, "relations": list(body.get("relations") or [])}}


def _handler(stub: IreStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet: the test reads ``received``
            return

        def do_POST(self) -> None:
            number = stub.next_number()
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            user, matched = None, False
            auth = self.headers.get("Authorization") or ""
            if auth.startswith("Basic "):
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                matched = password == stub.password
            parts = urlsplit(self.path)
            status, retry_after = stub.answer(number)
            if parts.path.rstrip("/") != "/api/now/identifyreconcile" or body is None:
                status, retry_after = 400, None
            elif user != stub.user or not matched:
                status, retry_after = 401, None
            stub.record(
                Received(number, "POST", parts.path, parse_qs(parts.query), body, user, matched, status)
            )
            if status == 200:
                answer: dict[str, Any] = ire_response(body)
            else:
                answer = {"error": {"message": f"stub answered {status}", "detail": ""}, "status": "failure"}
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if retry_after is not None:
                self.send_header("Retry-After", retry_after)
            self.end_headers()
            self.wfile.write(data)

    return Handler


@contextmanager
def ire_stub(
    user: str, password: str, faults: Mapping[int, tuple[int, str | None]] | None = None
) -> Iterator[IreStub]:
    """Run the stub on 127.0.0.1 (a free port) in a thread; yield its state (``url`` set)."""
    stub = IreStub(user=user, password=password, faults=dict(faults or {}))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(stub))
    stub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="ire-stub", daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
