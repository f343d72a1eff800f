"""
The coverage page's FastAPI app, mounted on Airflow's API server by the plugin.

Routes (relative to the mount, ``/cmdb-coverage``): ``/`` the page, ``coverage.json`` the same data,
``download/inventory`` and ``download/changes`` a redirect to a short-lived presigned S3 URL, and
``icon.svg``. Everything but the icon sits behind Airflow's own authentication and authorization: the
caller must be allowed to read the runs of the ``cmdb_ec2_inventory`` DAG (the JWT of the UI's ``_token``
cookie or an ``Authorization: Bearer`` header). The app is read-only: GET routes only.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from include.cmdb_inventory.ui import coverage_page, coverage_source
from include.cmdb_inventory.ui.coverage_source import Location, SnapshotCache, SourceError

log = logging.getLogger(__name__)

DAG_ID = "cmdb_ec2_inventory"
ICON_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="#017cee" '
    'stroke-width="2"><rect x="3" y="3" width="7" height="7" rx="1"/><rect x="14" y="3" width="7" '
    'height="7" rx="1"/><rect x="3" y="14" width="7" height="7" rx="1"/><rect x="14" y="14" width="7" '
    'height="7" rx="1" fill="#017cee"/></svg>'
)


def airflow_authorisation() -> Callable[..., Any]:
    """Airflow's dependency: an authenticated user allowed to read this DAG's runs (else 401/403)."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag

    return requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=DAG_ID)


def login_url(request: Request) -> str:
    """The auth manager's login page, coming back to this URL."""
    from airflow.api_fastapi.app import get_auth_manager

    return str(get_auth_manager().get_url_login(next_url=str(request.url)))


def _headers(html: bool = False) -> dict[str, str]:
    headers = {
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    if html:
        headers["Content-Security-Policy"] = coverage_page.content_security_policy()
    return headers


def create_app(
    *,
    locate: Callable[[], Location] = coverage_source.location_from_variable,
    cache: SnapshotCache | None = None,
    authorise: Callable[..., Any] | None = None,
    presign: Callable[[Location, str, str], str] = coverage_source.presigned_url,
    login: Callable[[Request], str] = login_url,
) -> FastAPI:
    """The app; the arguments replace its I/O and Airflow's auth in tests."""
    cache = cache or SnapshotCache()
    guard = Depends(authorise or airflow_authorisation())
    app = FastAPI(title="CMDB EC2 inventory coverage", docs_url=None, redoc_url=None, openapi_url=None)

    def model() -> dict[str, Any]:
        location = locate()
        snapshot = cache.get(location)
        return coverage_page.build_model(
            snapshot.manifest,
            bucket=location.bucket,
            prefix=location.prefix,
            region=location.region_name,
            manifest_uri=location.uri(location.manifest_key),
            fetched_at=snapshot.fetched_at,
            held=snapshot.held,
        )

    @app.exception_handler(HTTPException)
    async def _unauthenticated(request: Request, exc: HTTPException) -> Response:
        """The page sends a browser without a session to the login page; the JSON answers 401/403."""
        path = request.url.path.removeprefix(request.scope.get("root_path", ""))
        if exc.status_code == 401 and path in ("", "/"):
            return RedirectResponse(login(request), status_code=302, headers=_headers())
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=_headers())

    @app.get("/", response_class=HTMLResponse, dependencies=[guard])
    def page() -> HTMLResponse:
        try:
            body, status = coverage_page.render_page(model()), 200
        except SourceError as err:
            body = coverage_page.render_page(problem={"title": err.title, "detail": err.detail})
            status = err.status
        return HTMLResponse(body, status_code=status, headers=_headers(html=True))

    @app.get("/coverage.json", dependencies=[guard])
    def coverage_json() -> JSONResponse:
        try:
            return JSONResponse(model(), headers=_headers())
        except SourceError as err:
            return JSONResponse(
                {"error": err.title, "detail": err.detail}, status_code=err.status, headers=_headers()
            )

    @app.get("/download/{name}", dependencies=[guard])
    def download(name: str) -> Response:
        try:
            data = model()
        except SourceError as err:
            return JSONResponse(
                {"error": err.title, "detail": err.detail}, status_code=err.status, headers=_headers()
            )
        key = coverage_page.download_key(data, name)
        if key is None:
            return JSONResponse({"detail": "no such download"}, status_code=404, headers=_headers())
        location = locate()
        ds = re.sub(r"[^\w.-]", "_", data["snapshot"]["ds"], flags=re.ASCII) or "latest"
        filename = f"{coverage_page.DOWNLOADS[name]}-{ds}.csv"
        log.info("Presigning s3://%s/%s for a download", location.bucket, key)  # never the URL: it is a key
        try:
            url = presign(location, key, filename)
        except SourceError as err:
            return JSONResponse(
                {"error": err.title, "detail": err.detail}, status_code=err.status, headers=_headers()
            )
        return RedirectResponse(url, status_code=307, headers=_headers())

    @app.get("/icon.svg")
    def icon() -> Response:
        return Response(ICON_SVG, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    return app
