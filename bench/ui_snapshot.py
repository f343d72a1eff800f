"""
A screenshot of the coverage page (``/cmdb-coverage/``) with headless Chromium's own ``--screenshot``
(Debian's ``/usr/bin/chromium``, a throwaway profile, loopback only), for the benchmark's report of the UI
at a large organisation's size. The benchmark's cluster runs the simple auth manager with every user an
admin, whose middleware authenticates each request: the browser needs no login.

    python -m bench.ui_snapshot URL OUT.png
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from devtools.chromium import FLAGS, chromium_binary

WIDTH, HEIGHT = 1400, 2000
BUDGET_MS = 20_000  # virtual time for the page's scripts and requests before the capture


def screenshot(url: str, out: Path, width: int = WIDTH, height: int = HEIGHT) -> dict[str, Any]:
    """Open ``url`` headless and write a PNG of the first ``width`` x ``height`` pixels to ``out``."""
    binary = chromium_binary()
    if binary is None:
        raise RuntimeError("chromium is not installed (make browser)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cmdb-bench-chromium-") as profile:
        cmd = [
            binary,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--virtual-time-budget={BUDGET_MS}",
            f"--screenshot={out}",
            url,
        ]
        started = time.perf_counter()
        # A fixed command (the browser binary) on a loopback URL of our own cluster.
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        seconds = time.perf_counter() - started
    if done.returncode or not out.exists():
        raise RuntimeError(f"chromium --screenshot failed ({done.returncode}): {done.stderr[-1500:]}")
    return {"path": str(out), "bytes": out.stat().st_size, "seconds": seconds, "size": [width, height]}


def coverage_screenshot(base_url: str, out: Path) -> dict[str, Any]:
    """The coverage page of the API server at ``base_url``."""
    return screenshot(f"{base_url}/cmdb-coverage/", out)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m bench.ui_snapshot URL OUT.png")
    print(screenshot(sys.argv[1], Path(sys.argv[2])))
