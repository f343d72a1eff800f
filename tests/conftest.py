"""Shared test setup: a private Airflow home, no examples, no real AWS credentials or endpoints."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest

# Before anything imports Airflow: a throwaway home, no examples, and AWS defaults that can only reach
# a local emulator (each test that talks to AWS passes its own loopback endpoint).
_HOME = tempfile.mkdtemp(prefix="cmdb-tests-airflow-")
os.environ["AIRFLOW_HOME"] = _HOME
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_HOME}/airflow.db"
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
for _name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
    os.environ.pop(_name, None)


# --- AWS emulator fixtures (moto's server on loopback; the hub connection as an env-var connection) ---

HUB_LOGIN = "hubkey-AKIAEXAMPLE"
HUB_PASSWORD = "hubsecret"


class _RawBody:
    """The ``raw`` of a :class:`botocore.awsrequest.AWSResponse`: what botocore reads the body from."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


def _aws_error_response(
    code: str, message: str = "injected", status: int = 400, protocol: str = "ec2"
) -> Any:
    """An AWS error as botocore receives it: ``protocol`` is ``ec2`` (EC2's XML) or ``query`` (STS, IAM)."""
    from xml.sax.saxutils import escape

    from botocore.awsrequest import AWSResponse

    code, message = escape(code), escape(message)
    if protocol == "ec2":
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error></Errors><RequestID>00000000-test</RequestID></Response>"
        )
    else:
        body = (
            '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
            f"<Code>{code}</Code><Message>{message}</Message></Error>"
            "<RequestId>00000000-test</RequestId></ErrorResponse>"
        )
    return AWSResponse("http://127.0.0.1/", status, {"Content-Type": "text/xml"}, _RawBody(body.encode()))


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """One moto server (multi-account) on 127.0.0.1 for the whole test session; yields its URL."""
    from devtools.sandbox import moto_server

    with moto_server() as url:
        yield url


@pytest.fixture(scope="session")
def hub_env_factory() -> Callable[..., dict[str, str]]:
    """
    ``factory(endpoint_url, **extra)`` -> the environment variables of the hub connection ``aws_default``
    (``AIRFLOW_CONN_AWS_DEFAULT`` as JSON, extras merged with ``extra``) plus loopback-only AWS_* safety
    nets. For module-scoped use with ``pytest.MonkeyPatch.context()``.
    """

    def factory(endpoint_url: str, **extra: Any) -> dict[str, str]:
        connection = {
            "conn_type": "aws",
            "login": HUB_LOGIN,
            "password": HUB_PASSWORD,
            "extra": {
                "region_name": "us-east-1",
                "endpoint_url": endpoint_url,
                "service_config": {"sts": {"endpoint_url": endpoint_url}},
                **extra,
            },
        }
        return {
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(connection),
            "AWS_ENDPOINT_URL": endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "NO_PROXY": "*",
        }

    return factory


@pytest.fixture
def set_hub_connection(
    moto_url: str, monkeypatch: pytest.MonkeyPatch, hub_env_factory: Callable[..., dict[str, str]]
) -> Callable[..., dict[str, Any]]:
    """``set_hub_connection(**extra)`` (re)sets ``aws_default`` on ``moto_url``, e.g. with ``role_arn``."""

    def apply(**extra: Any) -> dict[str, Any]:
        env = hub_env_factory(moto_url, **extra)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return dict(json.loads(env["AIRFLOW_CONN_AWS_DEFAULT"]))

    return apply


@pytest.fixture
def hub_connection(set_hub_connection: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """The hub connection ``aws_default`` (static keys, region us-east-1) on ``moto_url``; its dict."""
    return set_hub_connection()


@pytest.fixture
def aws_error() -> Callable[..., Any]:
    """
    ``aws_error(code, message="injected", status=400, protocol="ec2"|"query")`` -> an ``AWSResponse``
    to return from a botocore ``before-send`` handler, so botocore's real parsing and retries run.
    """
    return _aws_error_response


@pytest.fixture
def no_retry_delay(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """botocore's standard-mode backoff becomes 0 s; returns the list of delays it would have slept."""
    from botocore.retries.standard import ExponentialBackoff

    delays: list[float] = []
    original = ExponentialBackoff.delay_amount

    def delay_amount(self: ExponentialBackoff, context: Any) -> float:
        delays.append(original(self, context))
        return 0.0

    monkeypatch.setattr(ExponentialBackoff, "delay_amount", delay_amount)
    return delays


# --- pytest-xdist's --dist loadgroup under pytest 9 ---


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """
    Make ``xdist_group`` marks group again: xdist 3.8 tags a grouped test by assigning ``item._nodeid``
    (``path::test@group``), which pytest 9 no longer reads (node ids live in ``item._id``), so every test
    became its own scope and "grouped" tests ran in parallel on different workers. No-op when xdist's own
    suffix took effect, or without ``--dist loadgroup``.
    """
    if not getattr(config.option, "loadgroup", False):
        return
    try:
        from _pytest.nodeid import NodeId
    except ImportError:  # an older pytest, where xdist's own suffix works
        return
    for item in items:
        names = sorted(
            {
                str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                for m in item.iter_markers("xdist_group")
            }
        )
        suffix = "@" + "_".join(names)
        if names and not item.nodeid.endswith(suffix) and hasattr(item, "_id"):
            item._id = NodeId.parse(item.nodeid + suffix)
