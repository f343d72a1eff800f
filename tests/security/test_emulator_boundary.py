"""
The emulator code path (SECURITY.md): the seeder, the sandbox and the demo create IAM roles, instances and
buckets, so they must never reach a real AWS endpoint, whatever credentials the machine holds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devtools import emulator, sandbox
from devtools.world import PAYER, check_loopback, session_in


@pytest.mark.parametrize(
    "url",
    [
        "https://iam.amazonaws.com",
        "https://sts.us-east-1.amazonaws.com",
        "http://10.0.0.5:5000",
        "http://169.254.169.254",
        "http://moto.example.com:5000",
        "http://127.0.0.1.nip.io:5000",
        "http://[2001:db8::1]:5000",
    ],
)
def test_the_seeder_refuses_anything_but_loopback(url: str) -> None:
    with pytest.raises(ValueError, match="only a loopback emulator may be seeded"):
        check_loopback(url)
    with pytest.raises(ValueError, match="loopback"):
        session_in(url, PAYER)
    with pytest.raises(ValueError, match="loopback"):
        emulator.seed(url)


@pytest.mark.parametrize("url", ["http://127.0.0.1:5000", "http://localhost:5000", "http://127.0.0.2:1"])
def test_the_seeder_accepts_loopback(url: str) -> None:
    check_loopback(url)


def test_sandbox_runs_see_no_host_credentials_and_only_the_emulator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "AKIAREALHOSTKEY00000",
        "AWS_SECRET_ACCESS_KEY": "real-host-secret",
        "AWS_SESSION_TOKEN": "real-host-token",
        "AWS_PROFILE": "production",
        "AWS_ENDPOINT_URL": "https://real.example.com",
        "AIRFLOW_CONN_AWS_DEFAULT": "aws://real",
    }.items():
        monkeypatch.setenv(name, value)
    connection = emulator.demo_connection("http://127.0.0.1:5000")
    env = sandbox.airflow_env(tmp_path, connection, emulator.demo_variable())
    assert not {k for k in env if k.startswith("AWS_")} - {
        "AWS_ENDPOINT_URL",
        "AWS_EC2_METADATA_DISABLED",
        "AWS_DEFAULT_REGION",
    }
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:5000"
    assert env["AWS_EC2_METADATA_DISABLED"] == "true"
    conn = json.loads(env["AIRFLOW_CONN_AWS_DEFAULT"])
    assert conn["extra"]["endpoint_url"] == "http://127.0.0.1:5000"
    assert conn["extra"]["service_config"]["sts"]["endpoint_url"] == "http://127.0.0.1:5000"
    assert "real" not in json.dumps(env)
