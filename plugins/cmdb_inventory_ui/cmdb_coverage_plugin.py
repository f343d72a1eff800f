"""
The Airflow plugin of the coverage page: a FastAPI app on the API server (``/cmdb-coverage/``) and a nav
entry in the UI that shows it in a frame. Loading the plugin (every Airflow process does) imports nothing
heavy: the app, FastAPI and the S3 hook are loaded by the first request to the API server.
"""

from __future__ import annotations

import threading
from typing import Any

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/cmdb-coverage"


class LazyCoverageApp:
    """An ASGI app that builds the real one (``coverage_api.create_app``) on its first request."""

    def __init__(self) -> None:
        self._app: Any = None
        self._lock = threading.Lock()

    def _build(self) -> Any:
        with self._lock:
            if self._app is None:
                from include.cmdb_inventory.ui.coverage_api import create_app

                self._app = create_app()
        return self._app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        app = self._app if self._app is not None else self._build()
        await app(scope, receive, send)


class CmdbCoveragePlugin(AirflowPlugin):
    """The latest inventory snapshot's coverage, as a page of the Airflow UI."""

    name = "cmdb_inventory_coverage"
    fastapi_apps = [
        {"app": LazyCoverageApp(), "url_prefix": URL_PREFIX, "name": "CMDB EC2 inventory coverage"},
    ]
    external_views = [
        {
            "name": "Coverage",  # the nav shows about nine characters
            # Relative to the UI's base URL (no leading slash), so it works under any [api] base_url.
            "href": f"{URL_PREFIX.lstrip('/')}/",
            "icon": f"{URL_PREFIX.lstrip('/')}/icon.svg",
            "url_route": "cmdb-coverage",
            "destination": "nav",
        },
    ]
