"""
The benchmark's emulated AWS: moto's server and the latency gateway, each a process of its own on
127.0.0.1, with their CPU seconds read from ``/proc`` (psutil).

    python -m bench.servers moto --port N     (moto's server with request logging off)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from devtools.sandbox import ROOT, free_port

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


def _wait_http(url: str, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before it was ready")
        try:
            urllib.request.urlopen(url, timeout=2).close()  # noqa: S310 - a loopback URL we built
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} was not ready within {READY_TIMEOUT} s")


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    """Stop a child we started (its own process group), by its id."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


class Emulator:
    """moto's server (a separate process) and the latency gateway in front of it (another one)."""

    def __init__(self, latency_ms: float = 0.0) -> None:
        self.latency_ms = latency_ms
        self._tmp = tempfile.TemporaryDirectory(prefix="cmdb-bench-")
        self.moto: subprocess.Popen[bytes] | None = None
        self.gateway: subprocess.Popen[bytes] | None = None
        self.moto_url = ""
        self.url = ""
        self.control_url = ""

    def start(self) -> Self:
        """Start moto, then the gateway; wait until both answer."""
        port = free_port()
        self.moto = subprocess.Popen(
            [sys.executable, "-m", "bench.servers", "moto", "--port", str(port)],
            env=bench_env(MOTO_EC2_LOAD_DEFAULT_AMIS="false"),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.moto_url = f"http://127.0.0.1:{port}"
        _wait_http(f"{self.moto_url}/moto-api/", self.moto, "moto_server")
        port_file = Path(self._tmp.name) / "gateway.json"
        self.gateway = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.gateway",
                "--upstream",
                self.moto_url,
                "--port-file",
                str(port_file),
                "--latency-ms",
                str(self.latency_ms),
            ],
            env=bench_env(),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + READY_TIMEOUT
        while not port_file.exists():
            if self.gateway.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the latency gateway did not start")
            time.sleep(0.05)
        info = json.loads(port_file.read_text())
        self.url, self.control_url = info["url"], info["control_url"]
        _wait_http(f"{self.control_url}/stats", self.gateway, "the latency gateway")
        return self

    def stop(self) -> None:
        """Stop both processes (only ours, by id)."""
        _stop(self.gateway)
        _stop(self.moto)
        self._tmp.cleanup()

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

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
        if self.moto is None or self.gateway is None:
            raise RuntimeError("the emulator is not started")
        return {
            "moto": cpu_seconds(self.moto.pid),
            "gateway": cpu_seconds(self.gateway.pid),
            **machine_cpu(),
        }


def _serve_moto(port: int) -> None:
    """moto's own server (werkzeug, threaded), without a log line per request."""
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from moto.server import main

    main(["-H", "127.0.0.1", "-p", str(port)])


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "moto" and sys.argv[2] == "--port":
        _serve_moto(int(sys.argv[3]))
    else:
        sys.exit("usage: python -m bench.servers moto --port N")
