"""
Headless Chromium (Debian's ``chromium``) driven over the DevTools protocol, for the UI tests.

Only what the tests need: set a cookie, open a URL, wait for a JavaScript condition, read values and
take PNG screenshots. The websocket client is ``websockets`` (already installed: uvicorn depends on it).
The browser runs in its own process group with a throwaway profile, on loopback only.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from devtools.sandbox import free_port

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)


def chromium_binary() -> str | None:
    """The Chromium executable, when installed."""
    return CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")


class Chromium:
    """One headless browser with one tab; a context manager (the process group is killed on exit)."""

    def __init__(self, profile: Path, width: int = 1400, height: int = 900) -> None:
        self.profile = profile
        self.width, self.height = width, height
        self._ids = itertools.count(1)
        self._proc: subprocess.Popen[bytes] | None = None
        self._ws: Any = None
        self._session = ""

    def __enter__(self) -> Self:
        from websockets.sync.client import connect

        binary = chromium_binary()
        if binary is None:
            raise RuntimeError("chromium is not installed (make browser)")
        port = free_port()
        self._proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={self.profile}", f"--remote-debugging-port={port}"],
            stdout=subprocess.DEVNULL,
            stderr=(self.profile.parent / "chromium.log").open("wb"),
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version", timeout=2) as answer:
                    ws_url = json.load(answer)["webSocketDebuggerUrl"]
                break
            except OSError:
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    self.__exit__(None, None, None)
                    raise RuntimeError("chromium did not start its DevTools endpoint") from None
                time.sleep(0.2)
        self._ws = connect(ws_url, max_size=None, open_timeout=10)
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call(
            "Emulation.setDeviceMetricsOverride",
            session=True,
            width=self.width,
            height=self.height,
            deviceScaleFactor=1,
            mobile=False,
        )
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=10)

    def call(
        self, method: str, session: bool = False, timeout: float = 30.0, **params: Any
    ) -> dict[str, Any]:
        """One DevTools command (browser-wide, or in the tab with ``session=True``); its result."""
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self._session
        self._ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self._ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") != message_id:
                continue  # an event
            if "error" in reply:
                raise RuntimeError(f"{method}: {reply['error']}")
            return dict(reply.get("result") or {})

    def set_cookie(self, name: str, value: str, url: str) -> None:
        """A cookie for ``url``'s origin, as the UI's login sets it (HttpOnly, SameSite=Lax)."""
        cookie = {"name": name, "value": value, "url": url, "httpOnly": True, "sameSite": "Lax"}
        self.call("Network.setCookie", session=True, **cookie)

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the tab."""
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str, ready: str, timeout: float = 30.0) -> None:
        """Navigate, then wait until the JavaScript expression ``ready`` is true."""
        self.call("Page.navigate", session=True, url=url)
        deadline = time.monotonic() + timeout
        while not self.evaluate(f"Boolean({ready})"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}: not ready after {timeout:.0f}s ({ready}); at {self.url()}")
            time.sleep(0.25)

    def url(self) -> str:
        """The tab's current URL."""
        return str(self.evaluate("location.href"))

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        """A PNG of the viewport (or of the whole page) written to ``path``."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            height = int(self.evaluate("document.documentElement.scrollHeight"))
            params.update(
                captureBeyondViewport=True,
                clip={"x": 0, "y": 0, "width": self.width, "height": max(height, self.height), "scale": 1},
            )
        data = self.call("Page.captureScreenshot", session=True, **params)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
