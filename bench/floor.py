"""
The floor: the least time any implementation could take for a world, a latency and a concurrency.

It is the larger of

- the **latency critical path**: each account needs AssumeRole, then DescribeRegions, then its longest
  region's DescribeInstances pages, one after another (regions in parallel); accounts run in waves of the
  configured concurrency: ``waves x (2 + pages) x latency``;
- the **emulator's capacity**: moto's server answers on one interpreter lock, so it cannot serve those
  same calls faster than its own CPU seconds for them. Measured by replaying exactly that call set
  (raw HTTP, responses not parsed) straight at moto's server, with psutil on its process.
"""

from __future__ import annotations

import http.client
import math
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from bench.world import Seeded

_KEY_RE = re.compile(rb"<AccessKeyId>([^<]+)</AccessKeyId>")
_TOKEN_RE = re.compile(rb"<nextToken>([^<]+)</nextToken>")
STATES = ("pending", "running", "shutting-down", "stopping", "stopped")


@dataclass
class Capacity:
    """moto's server replaying the floor's calls at full speed."""

    calls: int
    wall: float
    moto_cpu: float
    max_pages: int
    threads: int

    @property
    def requests_per_second(self) -> float:
        """Calls per wall second."""
        return self.calls / self.wall if self.wall else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {**asdict(self), "requests_per_second": self.requests_per_second}


def critical_path(accounts: int, concurrency: int, pages: int, latency_s: float) -> float:
    """``waves x (AssumeRole + DescribeRegions + pages) x latency``."""
    waves = math.ceil(accounts / max(1, concurrency))
    return waves * (2 + pages) * latency_s


def _request(
    conn: http.client.HTTPConnection, key: str, service: str, region: str, form: dict[str, str]
) -> bytes:
    headers = {
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
        "X-Amz-Date": "20260101T000000Z",
        "Authorization": (
            f"AWS4-HMAC-SHA256 Credential={key}/20260101/{region}/{service}/aws4_request, "
            "SignedHeaders=host;x-amz-date, Signature=0"
        ),
    }
    conn.request("POST", "/", body=urlencode(form), headers=headers)
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"{service} {form.get('Action')}: HTTP {response.status}: {body[:300]!r}")
    return body


def measure_capacity(
    moto_url: str, seeded: Seeded, role_name: str, threads: int, cpu_of_moto: Callable[[], float]
) -> Capacity:
    """Replay AssumeRole + DescribeRegions + paginated DescribeInstances per account at moto itself."""
    parts = urlsplit(moto_url)
    local = threading.local()
    pages_seen: list[int] = []
    lock = threading.Lock()

    def conn() -> http.client.HTTPConnection:
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=120)
        return local.conn

    def one(account: str) -> int:
        calls = 0
        body = _request(
            conn(),
            "bench-hub",
            "sts",
            "us-east-1",
            {
                "Action": "AssumeRole",
                "Version": "2011-06-15",
                "RoleArn": f"arn:aws:iam::{account}:role/{role_name}",
                "RoleSessionName": "cmdb-floor",
            },
        )
        found = _KEY_RE.search(body)
        if not found:
            raise RuntimeError("AssumeRole answered without an AccessKeyId")
        key = found.group(1).decode()
        _request(
            conn(),
            key,
            "ec2",
            "us-east-1",
            {"Action": "DescribeRegions", "Version": "2016-11-15", "AllRegions": "true"},
        )
        calls += 2
        for region in seeded.spec.regions:
            form = {"Action": "DescribeInstances", "Version": "2016-11-15", "MaxResults": "1000"}
            form["Filter.1.Name"] = "instance-state-name"
            form.update({f"Filter.1.Value.{i}": s for i, s in enumerate(STATES, 1)})
            pages = 0
            while True:
                page = _request(conn(), key, "ec2", region, form)
                pages += 1
                token = _TOKEN_RE.search(page)
                if not token:
                    break
                form["NextToken"] = token.group(1).decode()
            calls += pages
            with lock:
                pages_seen.append(pages)
        return calls

    cpu0, t0 = cpu_of_moto(), time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        calls = sum(pool.map(one, list(seeded.names)))
    wall, cpu = time.perf_counter() - t0, cpu_of_moto() - cpu0
    return Capacity(calls=calls, wall=wall, moto_cpu=cpu, max_pages=max(pages_seen or [1]), threads=threads)


def floor_seconds(capacity: Capacity, accounts: int, concurrency: int, latency_s: float) -> dict[str, float]:
    """The floor and its two terms."""
    path = critical_path(accounts, concurrency, capacity.max_pages, latency_s)
    return {"floor": max(path, capacity.moto_cpu), "critical_path": path, "emulator_cpu": capacity.moto_cpu}
