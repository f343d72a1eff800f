"""
The coverage page in a real browser: one real DAG run against the emulated organisation (one account's
role broken at the AWS gateway, one account name carrying markup), then Airflow's API server with the
plugin, behind the simple auth manager's login, opened in headless Chromium, directly and inside the UI.

Screenshots: test-artifacts/coverage-page.png (the page) and test-artifacts/coverage-page-in-airflow-ui.png.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from devtools import emulator, sandbox
from devtools.chromium import Chromium, chromium_binary
from devtools.gateway import AwsGateway
from devtools.world import DISCOVERY_ROLE, Server, World, session_in

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.xdist_group("ui-browser")]

ARTIFACTS = sandbox.ROOT / "test-artifacts"
DS = "2026-11-20"
REGIONS = ["eu-west-1", "us-east-1"]
BROKEN = "333333333333"
HOSTILE = 'Testing <img src=x onerror="document.body.dataset.pwned=1"><script>alert(1)</script>'
HELD_DS = "2026-11-21"  # a later snapshot the mass-removal guard holds: never latest/, the page finds it
USER, PASSWORD = "cmdb-viewer", "viewer-password-for-tests"


def world() -> World:
    return World(
        accounts={"111111111111": "Payer", "222222222222": "Development", BROKEN: HOSTILE},
        servers={
            "111111111111": [Server("us-east-1", "billing-reports")],
            "222222222222": [
                Server("us-east-1", "dev-web", count=2),
                Server("eu-west-1", "dev-eu", state="stopped"),
            ],
            BROKEN: [Server("eu-west-1", "test-runner")],
        },
    )


@dataclass
class Served:
    url: str
    token: str
    run: subprocess.CompletedProcess[str]


def _request(url: str, token: str | None = None, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    """One GET without following redirects: status, headers, body."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kw: Any) -> None:
            return None

    request = urllib.request.Request(url, **kwargs)  # noqa: S310 - loopback http only
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=30) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def _wait_healthy(url: str, api: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert api.poll() is None, "the API server exited"
        try:
            with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=5):  # noqa: S310
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"API server not healthy at {url}")


def _hold_a_later_snapshot(moto_url: str, variable: dict[str, Any]) -> None:
    """The run's manifest again under the next date, as the guard leaves a held one (latest/ unchanged)."""
    s3 = session_in(moto_url, "111111111111").client("s3", endpoint_url=moto_url)
    prefix, bucket = variable.get("prefix", "cmdb/ec2-inventory"), variable["bucket"]
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}/ds={DS}/manifest.json")["Body"].read())
    manifest.update(ds=HELD_DS, dag_run_id=f"scheduled__{HELD_DS}T02:00:00+00:00")
    manifest["removal_guard"] = {
        "state": "HELD",
        "removed": 3,
        "previous_rows": 4,
        "previous_ds": DS,
        "fraction": 0.75,
        "max_removed_fraction": 0.1,
        "reason": f"3 of the 4 instances of the snapshot of {DS} (75.0%) would be REMOVED",
    }
    s3.put_object(Bucket=bucket, Key=f"{prefix}/ds={HELD_DS}/manifest.json", Body=json.dumps(manifest))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The DAG run's snapshot in the emulator, and Airflow's API server (with the plugin) over it."""
    if chromium_binary() is None:
        pytest.skip("chromium is not installed: `make browser` installs Debian's package")
    home = tmp_path_factory.mktemp("ui-airflow")
    (home / "passwords.json").write_text(json.dumps({USER: PASSWORD}))
    with AwsGateway() as gw:
        variable = {**emulator.demo_variable(world()), "regions": REGIONS}
        env = sandbox.airflow_env(home, emulator.demo_connection(gw.url), variable)
        env.update(
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="False",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=f"{USER}:viewer",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(home / "passwords.json"),
            AIRFLOW__API_AUTH__JWT_SECRET=os.urandom(16).hex(),
        )
        # The database migrates while the organisation is seeded; the API server starts during the run.
        migrate = subprocess.Popen([sys.executable, "-m", "airflow", "db", "migrate"], env=env)
        try:
            gw.reset_moto()  # moto's state is per process: start from an empty world, whatever ran before
            emulator.seed(gw.moto_url, world())
            gw.deny_assume_role(f"arn:aws:iam::{BROKEN}:role/{DISCOVERY_ROLE}")
            assert migrate.wait(timeout=300) == 0
        finally:
            if migrate.poll() is None:
                migrate.kill()
                migrate.wait(timeout=30)
        port = sandbox.free_port()
        assert port != 8793
        url = f"http://127.0.0.1:{port}"
        with (home / "api-server.log").open("wb") as log:
            api = subprocess.Popen(
                [sys.executable, "-m", "airflow", "api-server", "--host", "127.0.0.1", "--port", str(port)],
                env={**env, "AIRFLOW__API__WORKERS": "1"},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            run = sandbox.dags_test(env, DS)
            _hold_a_later_snapshot(gw.moto_url, variable)
            _wait_healthy(url, api)
            body = json.dumps({"username": USER, "password": PASSWORD}).encode()
            status, _, answer = _request(
                f"{url}/auth/token", data=body, headers={"Content-Type": "application/json"}, method="POST"
            )
            assert status == 201, answer
            yield Served(url=url, token=json.loads(answer)["access_token"], run=run)
        finally:
            os.killpg(api.pid, signal.SIGTERM)
            try:
                api.wait(timeout=2)
            except subprocess.TimeoutExpired:
                os.killpg(api.pid, signal.SIGKILL)
                api.wait(timeout=10)


@pytest.fixture(scope="module")
def browser(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    """Headless Chromium holding the UI's session cookie, as after logging in."""
    with Chromium(tmp_path_factory.mktemp("chromium") / "profile") as chromium:
        chromium.set_cookie("_token", served.token, served.url)
        yield chromium


def test_the_run_left_one_account_uncovered(served: Served) -> None:
    output = (served.run.stdout + served.run.stderr)[-4000:]
    assert served.run.returncode != 0, output  # check_coverage fails the run: one role is broken
    status, _, body = _request(f"{served.url}/cmdb-coverage/coverage.json", served.token)
    assert status == 200, (body, output)
    data = json.loads(body)
    assert data["snapshot"]["ds"] == DS
    assert [a["id"] for a in data["accounts"]] == ["111111111111", "222222222222", BROKEN]
    assert data["totals"] == {**data["totals"], "rows": 4, "accounts_covered": 2, "accounts_expected": 3}
    [failure] = data["failures"]
    assert failure["account"] == BROKEN
    assert (failure["status"], failure["code"]) == ("ROLE_NOT_ASSUMABLE", "AccessDenied")
    assert data["guard"]["state"] == "CLEAR"  # the run's own snapshot: nothing earlier to compare with
    assert (data["held"]["ds"], data["held"]["guard"]["state"]) == (HELD_DS, "HELD")


def test_the_page_sits_behind_airflow_login(served: Served) -> None:
    status, headers, _ = _request(f"{served.url}/cmdb-coverage/")
    assert status == 302
    assert headers["location"].startswith("/auth/login?next=")
    assert "cmdb-coverage" in headers["location"]
    assert _request(f"{served.url}/cmdb-coverage/coverage.json")[0] == 401
    assert _request(f"{served.url}/cmdb-coverage/download/inventory")[0] == 401
    assert _request(f"{served.url}/cmdb-coverage/coverage.json", "not-a-jwt")[0] in (401, 403)
    status, headers, body = _request(f"{served.url}/cmdb-coverage/", served.token)
    assert status == 200
    assert "default-src 'none'" in headers["content-security-policy"]
    assert b"<script" not in body


def test_csv_download_is_a_presigned_redirect(served: Served) -> None:
    status, headers, _ = _request(f"{served.url}/cmdb-coverage/download/inventory", served.token)
    assert status == 307
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(headers["location"]).query)
    assert (query["X-Amz-Algorithm"], query["X-Amz-SignedHeaders"]) == (["AWS4-HMAC-SHA256"], ["host"])
    with urllib.request.urlopen(headers["location"], timeout=30) as answer:  # noqa: S310 - the emulator
        assert answer.headers["Content-Disposition"] == f'attachment; filename="ec2_inventory-{DS}.csv"'
        assert answer.read().startswith(b"Account,Region,InstanceId,Name,")


def test_browser_shows_the_grid_and_the_failed_accounts_reason(served: Served, browser: Chromium) -> None:
    browser.open(f"{served.url}/cmdb-coverage/", ready="document.querySelector('#grid')")
    rows = browser.evaluate("[...document.querySelectorAll('#grid tbody tr')].map(r => r.dataset.account)")
    assert rows == ["111111111111", "222222222222", BROKEN]
    cells = browser.evaluate(
        "Object.fromEntries([...document.querySelectorAll('#grid tbody tr')].map(r => [r.dataset.account,"
        " [...r.querySelectorAll('td.cell')].map(c => c.dataset.status + ':' + c.textContent.trim())]))"
    )
    assert cells == {
        "111111111111": ["OK:·", "OK:1"],
        "222222222222": ["OK:1", "OK:2"],
        BROKEN: ["ROLE_NOT_ASSUMABLE:!", "ROLE_NOT_ASSUMABLE:!"],
    }
    reason = browser.evaluate(f"document.querySelector('tr[data-account=\"{BROKEN}\"] .why').textContent")
    assert reason == "ROLE_NOT_ASSUMABLE · AccessDenied"
    failures = browser.evaluate("document.querySelector('#failures').innerText")
    assert BROKEN in failures
    assert "AccessDenied" in failures
    assert f"arn:aws:iam::{BROKEN}:role/CMDBDiscovery" in failures
    assert browser.evaluate("document.querySelector('#total-accounts').textContent") == "2 of 3"
    assert browser.evaluate("document.querySelector('#csv-uri').textContent").endswith(
        f"/ds={DS}/ec2_inventory.csv"
    )
    # The hostile account name is text, not markup: nothing ran, no element was injected.
    name = browser.evaluate(f"document.querySelector('tr[data-account=\"{BROKEN}\"] .name').textContent")
    assert name == HOSTILE
    assert browser.evaluate("document.querySelectorAll('img, script').length") == 0
    # The guard: this snapshot's state, and the later snapshot it holds, standing out above the totals.
    assert browser.evaluate("document.querySelector('#removal-guard').dataset.state") == "CLEAR"
    banner = browser.evaluate("document.querySelector('#removal-guard-held[role=alert]').innerText")
    assert f"HELD: the snapshot of {HELD_DS} waits for approval in the Airflow UI" in banner
    assert f"latest/ (and this page) still shows the previous snapshot, {DS}" in banner
    assert browser.evaluate("document.body.dataset.pwned === undefined") is True
    # Self-contained: the page loaded nothing from anywhere else (no CDN, no font, no script).
    loaded = browser.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
    assert [u for u in loaded if not u.startswith(served.url)] == [], loaded
    browser.screenshot(ARTIFACTS / "coverage-page.png", full_page=True)


def test_the_page_is_a_nav_entry_of_the_airflow_ui(served: Served, browser: Chromium) -> None:
    framed = "document.querySelector('iframe[title=\"Coverage\"]')"
    browser.open(
        f"{served.url}/plugin/cmdb-coverage",
        ready=f"{framed} && {framed}.contentDocument && {framed}.contentDocument.querySelector('#grid')",
        timeout=90,
    )
    assert browser.evaluate(f"{framed}.contentDocument.querySelectorAll('#grid tbody tr').length") == 3
    # The nav entry: a link to the plugin's route, labelled with the view's name.
    nav = browser.evaluate(
        "[...document.querySelectorAll('a[href$=\"plugin/cmdb-coverage\"]')].map(a => a.textContent.trim())"
    )
    assert "Coverage" in nav, nav
    time.sleep(1.0)  # let the UI finish painting its navigation
    browser.screenshot(ARTIFACTS / "coverage-page-in-airflow-ui.png")
