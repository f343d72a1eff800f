"""
The benchmark's emulated AWS: moto's server and the latency gateway, each a process of its own on
127.0.0.1 (started with :mod:`devtools.servers`), with their CPU seconds read from ``/proc`` (psutil).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from devtools.sandbox import ROOT
from devtools.servers import ClusterError, Managed, MotoServer, ThrowawayServer, spawn, wait_for

READY_TIMEOUT = 60.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def peak_rss_mb() -> float:
    """
    Peak resident memory of this process (``VmHWM``). Not ``ru_maxrss``: on Linux that survives
    ``exec`` and so starts at the parent's size.
    """
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine_cpu() -> dict[str, float]:
    """CPU seconds the whole machine has been busy (every core, every process) and stolen by its host."""
    import psutil

    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + t.irq + t.softirq + t.steal
    return {"machine_busy": float(busy), "machine_steal": float(t.steal)}


def children_cpu() -> float:
    """CPU seconds of this process's finished children (a measured subprocess, imports included)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return float(usage.ru_utime + usage.ru_stime)


def child_main(run: Callable[[dict[str, Any]], dict[str, Any]], argv: list[str]) -> int:
    """A measured child's ``main``: ``python -m bench.<module> PARAMS.json RESULT.json``."""
    params = json.loads(Path(argv[0]).read_text())
    Path(argv[1]).write_text(json.dumps(run(params), indent=1))
    return 0


def bench_env(**extra: str) -> dict[str, str]:
    """Environment of the benchmark's child processes: this repo importable, loopback only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # measure warm processes, as a deployed image has bytecode
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "NO_PROXY": "*",
        }
    )
    env.update(extra)
    return env


class Emulator(ThrowawayServer):
    """moto's server (a separate process) and the latency gateway in front of it (another one)."""

    def __init__(self, latency_ms: float = 0.0) -> None:
        self.latency_ms = latency_ms
        self.moto = MotoServer(env=bench_env(MOTO_EC2_LOAD_DEFAULT_AMIS="false"))
        self.dir = Path()
        self._server: Managed | None = None  # the gateway
        self.moto_url = ""
        self.url = ""
        self.control_url = ""

    def start(self) -> Self:
        """Start moto, then the gateway; wait until both answer."""
        self.moto_url = self.moto.start().url
        self.dir = Path(tempfile.mkdtemp(prefix="cmdb-bench-"))
        port_file = self.dir / "gateway.json"
        cmd = [sys.executable, "-m", "bench.gateway", "--upstream", self.moto_url]
        cmd += ["--port-file", str(port_file), "--latency-ms", str(self.latency_ms)]
        self._server = spawn("gateway", cmd, self.dir / "gateway.log", bench_env(), cwd=ROOT)
        wait_for("the latency gateway's port file", port_file.exists, READY_TIMEOUT, [self._server], 0.05)
        info = json.loads(port_file.read_text())
        self.url, self.control_url = info["url"], info["control_url"]
        wait_for("the latency gateway", lambda: self.stats() is not None, READY_TIMEOUT, [self._server], 0.1)
        return self

    def stop(self) -> None:
        """Stop both processes (only ours, by id)."""
        super().stop()
        self.moto.stop()

    def _control(self, method: str, path: str) -> dict[str, Any]:
        data = None if method == "GET" else b""
        request = urllib.request.Request(f"{self.control_url}{path}", method=method, data=data)  # noqa: S310
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - our loopback gateway
            return dict(json.loads(response.read()))

    def set_latency(self, ms: float) -> None:
        """Latency the gateway adds to every call from now on."""
        self._control("POST", f"/latency?ms={ms}")
        self.latency_ms = ms

    def stats(self) -> dict[str, Any]:
        """Calls through the gateway since the last reset."""
        return self._control("GET", "/stats")

    def reset_calls(self) -> None:
        """Forget the gateway's call log."""
        self._control("POST", "/reset")

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of moto's server and of the gateway, and of the whole machine (busy, steal)."""
        if self._server is None:
            raise ClusterError("the emulator is not started")
        return {"moto": cpu_seconds(self.moto.pid), "gateway": cpu_seconds(self.pid), **machine_cpu()}
