"""
Sessions (issue point 7): optional ``source_identity`` and ``session_tags`` (validated against AssumeRole's
limits) reach every AssumeRole on the wire; ``session_duration_seconds`` above one hour is refused up front,
before any role is assumed, when the hub is itself an assumed role (a full DAG run); STS is reached on the
hub region's regional endpoint.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

from include.cmdb_inventory import inventory
from include.cmdb_inventory.config import Account, ConfigError, parse_settings
from tests.security import world
from tests.security.conftest import CHAINED_DS, SESSION_TAGS, SOURCE_IDENTITY
from tests.security.world import PAYER, PREFIX, Org, Run

BASE: dict[str, Any] = {"accounts": ["222222222222"], "bucket": "example-corp-cmdb"}
RUN = inventory.RunInfo("cmdb_ec2_inventory", "manual__2026-11-20T02:00:00+00:00", "2026-11-20", "2026-11-20")


# --------------------------------------------------------------------------- configuration


def test_source_identity_and_session_tags_are_optional() -> None:
    settings = parse_settings(BASE)
    assert settings.source_identity is None
    assert settings.session_tags == ()
    hook = inventory.hook_for(settings, settings.accounts[0], RUN)
    assert hook.source_identity is None
    assert hook.session_tags == {}


def test_source_identity_and_session_tags_reach_the_hook() -> None:
    tags = {"team": "platform", "Cost Centre": "ÜBER 42", "path": "a/b:c=d+e-f@g_h.i", "empty": ""}
    settings = parse_settings({**BASE, "source_identity": "cmdb@nightly.run-1", "session_tags": tags})
    assert settings.source_identity == "cmdb@nightly.run-1"
    assert dict(settings.session_tags) == tags
    hook = inventory.hook_for(settings, Account("222222222222"), RUN)
    assert hook.source_identity == "cmdb@nightly.run-1"
    assert hook.session_tags == tags
    hash(settings)  # still a value: usable as a cache key


@pytest.mark.parametrize(
    "value",
    ["x", "a" * 65, "has space", "colon:no", "é-not-ascii", 42, ["cmdb"]],
)
def test_invalid_source_identity_is_refused_naming_the_key(value: Any) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_settings({**BASE, "source_identity": value})
    assert excinfo.value.key == "source_identity"


@pytest.mark.parametrize(
    ("tags", "words"),
    [
        (["a", "b"], "must be an object"),
        ("team=platform", "must be an object"),
        ({f"k{n}": "v" for n in range(51)}, "at most 50"),
        ({"": "v"}, "tag key"),
        ({"k" * 129: "v"}, "tag key"),
        ({"aws:team": "v"}, "not starting with aws:"),
        ({"AWS:team": "v"}, "not starting with aws:"),
        ({"semi;colon": "v"}, "tag key"),
        ({"k": "v" * 257}, "value of tag"),
        ({"k": 1}, "value of tag"),
        ({"k": None}, "value of tag"),
        ({"k": "new\nline"}, "value of tag"),
        ({"k": "quote'"}, "value of tag"),
        ({"Team": "a", "team": "b"}, "duplicate tag key"),
    ],
)
def test_invalid_session_tags_are_refused_naming_the_key(tags: Any, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as excinfo:
        parse_settings({**BASE, "session_tags": tags})
    assert excinfo.value.key == "session_tags"


def test_fifty_tags_at_the_limits_are_accepted() -> None:
    tags = {f"{n:02d}" + "k" * 126: "v" * 256 for n in range(50)}
    assert len(parse_settings({**BASE, "session_tags": tags}).session_tags) == 50


def test_long_sessions_are_not_refused_when_the_hub_is_not_an_assumed_role() -> None:
    settings = parse_settings({**BASE, "session_duration_seconds": 7200})
    hook = inventory.hook_for(settings, settings.accounts[0], RUN)
    hook.__dict__["hub_identity"] = {"Account": PAYER, "Arn": f"arn:aws:iam::{PAYER}:user/airflow"}
    hook.check_session_duration()  # an IAM user or an instance profile's first hop: up to 12 hours
    hook.__dict__["hub_identity"] = {"Account": PAYER, "Arn": f"arn:aws:sts::{PAYER}:assumed-role/Hub/s"}
    with pytest.raises(ValueError, match=r"role chaining to one hour \(3600 s\)"):
        hook.check_session_duration()


# --------------------------------------------------------------------------- regional STS, offline


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1", "ap-southeast-2"])
def test_hub_sts_uses_the_regional_endpoint(region: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """No endpoint_url configured: the hub's STS client resolves sts.<region>.amazonaws.com (no request)."""
    import json

    from cmdb_inventory_aws.hooks import CrossAccountHook

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_STS", "AWS_STS_REGIONAL_ENDPOINTS"):
        monkeypatch.delenv(name, raising=False)
    connection = {
        "conn_type": "aws",
        "login": "AKIDUMMY",
        "password": "dummy",
        "extra": {"region_name": region},
    }
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(connection))

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("resolving the endpoint must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    hook = CrossAccountHook(account_id="222222222222", region_name=region)
    assert hook.hub_sts.meta.endpoint_url == f"https://sts.{region}.amazonaws.com"
    assert hook.hub_sts.meta.region_name == region


# --------------------------------------------------------------------------- on the wire, in DAG runs


@pytest.mark.e2e
@pytest.mark.xdist_group("security-e2e")
def test_every_assume_role_carries_source_identity_and_session_tags(org: Org, success_run: Run) -> None:
    assumes = [r for r in success_run.requests if r.action == "AssumeRole" and r.params.get("RoleArn")]
    discovery = [r for r in assumes if r.params["RoleArn"].endswith(":role/CMDBDiscovery")]
    assert {r.params["RoleArn"].split(":")[4] for r in discovery} == set(world.GOOD_ACCOUNTS)
    expected_tags = dict(sorted(SESSION_TAGS.items()))
    for request in discovery:
        params = request.params
        assert params["SourceIdentity"] == SOURCE_IDENTITY
        tags = {params[f"Tags.member.{n}.Key"]: params[f"Tags.member.{n}.Value"] for n in range(1, 3)}
        assert tags == expected_tags
        assert "Tags.member.3.Key" not in params
        assert params["DurationSeconds"] == "3600"
        assert params["RoleSessionName"].startswith("cmdb@manual__")
        assert request.region == world.HOME_REGION  # signed for the hub region's STS
    # Every STS call is signed for the hub region (a regional endpoint; the global one signs us-east-1).
    assert {r.region for r in success_run.requests if r.service == "sts"} == {world.HOME_REGION}


@pytest.mark.e2e
@pytest.mark.xdist_group("security-e2e")
def test_chained_hub_with_a_long_session_is_refused_before_any_assume_role(
    org: Org, chained_run: Run
) -> None:
    output = chained_run.output
    assert "session_duration_seconds" in output
    assert "AWS limits role chaining to one hour (3600 s)" in output
    assert f"arn:aws:sts::{PAYER}:assumed-role/CMDBApplication/" in output
    rows = world.query(chained_run.home, "SELECT task_id, state, try_number FROM task_instance")
    states = {task: (state, tries) for task, state, tries in rows}
    assert states["resolve_accounts"] == ("failed", 1)  # a configuration error: failed for good, no retry
    assert "scan_account" not in states or states["scan_account"][0] == "upstream_failed"
    discovery = [
        r
        for r in chained_run.requests
        if r.action == "AssumeRole" and "CMDBDiscovery" in r.params.get("RoleArn", "")
    ]
    assert discovery == []
    writes = [r for r in chained_run.requests if r.service == "s3" and r.method in ("PUT", "POST", "DELETE")]
    assert writes == []
    assert not [k for k in world.bucket_texts(org) if f"ds={CHAINED_DS}" in k and k.startswith(PREFIX)]
