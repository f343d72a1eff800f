"""
The latency proxy of the benchmarks: ``devtools.gateway.AwsGateway`` fronting a separate moto server,
plus a small control endpoint (on its own port) to set the added latency and read call counts.

    python -m bench.gateway --upstream http://127.0.0.1:PORT --port-file gw.json

``gw.json`` gets ``{"url", "control_url", "pid"}``. Control: ``GET /stats`` (calls by service and action,
AssumeRole calls by role), ``POST /latency?ms=N``, ``POST /limit?n=N`` (at most N calls at moto at once;
0: any number), ``POST /reset`` (forget the call log).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from devtools.gateway import AwsGateway

MAX_CALLS = 2_000_000


def stats(gateway: AwsGateway) -> dict[str, Any]:
    """Calls through the gateway since the last reset: by ``service:action``, and AssumeRole by role."""
    calls = gateway.calls()
    by_action = Counter(f"{c.service}:{c.action}" for c in calls)
    roles = Counter(
        (c.role_arn or "").rsplit("/", 1)[-1] for c in calls if c.action == "AssumeRole" and c.role_arn
    )
    return {
        "calls": len(calls),
        "by_action": dict(sorted(by_action.items())),
        "assume_role_by_role": dict(sorted(roles.items())),
        "errors": sum(1 for c in calls if c.status >= 400 or c.status == 0),
        "latency_ms": gateway.latency * 1000.0,
        "upstream_limit": gateway.upstream_limit,
        "upstream_peak": gateway.upstream_peak,
    }


def control_server(gateway: AwsGateway) -> ThreadingHTTPServer:
    """The control endpoint on a free loopback port."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            """Quiet."""

        def _answer(self, document: dict[str, Any], status: int = 200) -> None:
            body = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if urlsplit(self.path).path == "/stats":
                self._answer(stats(gateway))
            else:
                self._answer({"error": "unknown path"}, 404)

        def do_POST(self) -> None:
            parts = urlsplit(self.path)
            if parts.path == "/latency":
                gateway.latency = float(parse_qs(parts.query).get("ms", ["0"])[0]) / 1000.0
                self._answer({"latency_ms": gateway.latency * 1000.0})
            elif parts.path == "/limit":
                n = int(parse_qs(parts.query).get("n", ["0"])[0])
                gateway.upstream_limit = n if n > 0 else None
                self._answer({"upstream_limit": gateway.upstream_limit})
            elif parts.path == "/reset":
                gateway.reset_calls()
                self._answer({"reset": True})
            else:
                self._answer({"error": "unknown path"}, 404)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__)
    parser.add_argument("--upstream", required=True, help="the moto server, http://127.0.0.1:PORT")
    parser.add_argument("--port-file", required=True, help="where to write the URLs as JSON")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="latency added to every call")
    args = parser.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    gateway = AwsGateway(upstream=args.upstream, latency=args.latency_ms / 1000.0, max_calls=MAX_CALLS)
    with gateway:
        control = control_server(gateway)
        threading.Thread(target=control.serve_forever, daemon=True, name="bench-gateway-control").start()
        info = {
            "url": gateway.url,
            "control_url": f"http://127.0.0.1:{control.server_address[1]}",
            "pid": os.getpid(),
        }
        tmp = f"{args.port_file}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(info, fh)
        os.replace(tmp, args.port_file)
        try:
            while not stop.wait(0.5):
                pass
        finally:
            control.shutdown()
            with contextlib.suppress(OSError):
                os.unlink(args.port_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
