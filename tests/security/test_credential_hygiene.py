"""
Credential hygiene (issue point 3): after a successful run and after a failing run with every logger at
DEBUG (botocore included), no access key id, secret key or session token of any session the product used —
the workers' long-term AKIA key and secret, the hub's CMDBApplication sessions, every CMDBDiscovery
session, each captured from STS's answers at the gateway — appears in any task log line (stdout and stderr
of ``airflow dags test``, which runs the tasks in-process; the Airflow home's ``logs/`` is also read), any
row of the run's metadata database (XComs, rendered template fields, task instances, audit log, every other
table), any S3 object written, or any notification or failure alert; nor anything shaped like an AWS key id.

One exclusion, an Airflow bug outside this project: ``airflow dags test``'s in-process supervisor
(``InProcessSupervisorComms.send`` in ``airflow/sdk/execution_time/supervisor.py``) logs every message a
task sends it at DEBUG, including the ``MaskSecret`` requests that register secrets with the masker —
values and all. The real supervisor logs those messages with their body omitted. Those lines, and only
those, are dropped before the search (and counted, so the exclusion is visible).
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.security import world
from tests.security.world import Org, Run

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("security-e2e")]

# The in-process test supervisor's "Sending request msg=MaskSecret(value=...)" lines (see the docstring).
TEST_RUNNER_MASK_LINE = re.compile(r"^.*Sending request\s.*msg=MaskSecret\(.*$", re.MULTILINE)


def everything_written(org: Org, run: Run) -> dict[str, str]:
    """Every place a credential could land, by name."""
    output, excluded = TEST_RUNNER_MASK_LINE.subn("", run.output)
    places = {"dags-test-output": output}
    places.update(world.airflow_texts(run.home))
    places.update({f"s3://{world.BUCKET}/{key}": text for key, text in world.bucket_texts(org).items()})
    places.update({f"sns-message-{n}": text for n, text in enumerate(run.messages)})
    places["excluded-test-runner-lines"] = str(excluded)
    return places


def assert_no_credentials(org: Org, run: Run) -> dict[str, str]:
    """The search itself; returns the places searched."""
    assumed = [c for c in run.calls if c.action == "AssumeRole" and c.status == 200]
    assert len(assumed) >= 2, "the run assumed no role"
    secrets = org.secrets()  # the worker's key and secret, and three per session STS handed out
    assert len(secrets) >= 2 + 3 * len(assumed)
    assert org.worker_key["AccessKeyId"].startswith("AKIA")
    assert any(s.startswith("ASIA") for s in secrets)
    places = everything_written(org, run)
    leaks = [
        (place, secret[:8] + "...") for place, text in places.items() for secret in secrets if secret in text
    ]
    assert leaks == []
    shaped = {place: world.KEY_PATTERN.findall(text)[:3] for place, text in places.items()}
    assert {place: found for place, found in shaped.items() if found} == {}
    return places


@pytest.mark.parametrize("name", ["success_run", "denied_run"])
def test_no_credential_reaches_logs_xcoms_templates_objects_or_messages(
    name: str, org: Org, request: pytest.FixtureRequest
) -> None:
    run: Run = request.getfixturevalue(name)
    places = assert_no_credentials(org, run)
    # The search covered real material, not empty places.
    assert world.query(run.home, "SELECT count(*) FROM xcom")[0][0] >= 5
    assert world.query(run.home, "SELECT count(*) FROM rendered_task_instance_fields")[0][0] >= 5
    assert sum(1 for place in places if place.startswith("s3://")) >= 5
    assert run.messages
    assert "scan_account" in places["dags-test-output"]


def test_a_failing_account_and_botocore_at_debug_leak_nothing(org: Org, denied_run: Run) -> None:
    output = denied_run.output
    # botocore really logged its wire traffic at DEBUG: requests, signing, responses...
    for logger in ("botocore.endpoint", "botocore.auth", "botocore.parsers"):
        assert f"[{logger}]" in output, logger
    assert "Response body:" in output
    # ...with the credentials in it replaced (the hook's filter), not dropped silently.
    assert "[redacted-key-id]" in output
    assert "<SecretAccessKey>[redacted]</SecretAccessKey>" in output
    assert re.search(r"x-amz-security-token['\"]?\s*[:=]\s*b?['\"]?\[redacted\]", output, re.IGNORECASE)
    # A task failed with an AWS error, and its message, the alert and the ledger name it without secrets.
    assert "cannot assume arn:aws:iam::666666666666:role/CMDBDiscovery: AccessDenied" in output
    assert any("666666666666" in m and "AccessDenied" in m for m in denied_run.messages)


@pytest.fixture
def fresh_api_server_logging() -> Iterator[io.StringIO]:
    """
    Logging as in a fresh API server process, at DEBUG: no credential filter on any logger (nothing but the
    plugin may put one there: no task ran in that process), and every record of every logger captured.
    """
    from airflow.sdk import Variable

    # An API server has configured Airflow's logging before any request; here the first Variable read does
    # (it replaces the root logger's handlers), so one is read first.
    Variable.get("cmdb_ec2_inventory_logging_warm_up", default=None)
    loggers = [
        logging.getLogger(),
        *(v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger)),
    ]
    removed = [(lg, f) for lg in loggers for f in lg.filters if "CredentialLogFilter" in type(f).__name__]
    for logger, found in removed:
        logger.removeFilter(found)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    levels = {
        name: logging.getLogger(name).level
        for name in ("", "botocore", "urllib3", "airflow", "cmdb_inventory_ui")
    }
    root.addHandler(handler)
    for name in levels:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        for logger, found in removed:
            logger.addFilter(found)


def test_the_coverage_page_at_debug_with_a_role_arn_connection_leaks_nothing(
    org: Org, success_run: Run, fresh_api_server_logging: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    The API server's side: the plugin's source reads the manifest, checks and presigns the CSV through the
    hub connection (worker keys, then ``role_arn``: an AssumeRole in this process), everything at DEBUG.
    """
    from fastapi.testclient import TestClient

    from include.cmdb_inventory.aws import tuning
    from include.cmdb_inventory.config import VARIABLE_KEY
    from include.cmdb_inventory.ui.coverage_api import create_app
    from include.cmdb_inventory.ui.coverage_source import SnapshotCache

    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(org.connection()))
    monkeypatch.setenv(f"AIRFLOW_VAR_{VARIABLE_KEY.upper()}", json.dumps(org.variable(world.GOOD_ACCOUNTS)))
    monkeypatch.setattr(tuning, "_HUB_SESSIONS", {})  # a fresh process: no hub session yet
    minted_before = set(org.gateway.minted)
    mark = org.gateway.mark()

    client = TestClient(
        create_app(authorise=lambda: None, cache=SnapshotCache()), base_url="http://127.0.0.1"
    )
    assert client.get("/").status_code == 200
    assert client.get("/coverage.json").json()["snapshot"]["ds"]
    download = client.get("/download/inventory", follow_redirects=False)
    assert download.status_code == 307, download.text

    log = fresh_api_server_logging.getvalue()
    minted = org.gateway.minted - minted_before
    assert len(minted) >= 3, "the page assumed the hub role in this process"
    assert any(r.action == "AssumeRole" for r in org.gateway.since(mark))
    # botocore really logged the AssumeRole answer and the signed requests...
    assert "AssumeRoleResponse" in log
    assert "Response body" in log
    assert "<SecretAccessKey>[redacted]</SecretAccessKey>" in log
    # ...and nothing secret of any identity reached the log, nor the presigned URL's own token and signature.
    query = parse_qs(urlsplit(download.headers["location"]).query)
    secrets = org.secrets() | {query["X-Amz-Security-Token"][0], query["X-Amz-Signature"][0]}
    assert [s[:8] + "..." for s in secrets if s in log] == []
    assert world.KEY_PATTERN.findall(log) == []
