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

from include.cmdb_inventory import contract, inventory
from include.cmdb_inventory.config import Account, ConfigError, parse_settings
from include.cmdb_inventory.run import RunInfo, hook_for, store_for
from tests.security import world
from tests.security.conftest import CHAINED_DS, SESSION_TAGS, SOURCE_IDENTITY
from tests.security.world import PAYER, PREFIX, Org, Run

BASE: dict[str, Any] = {"accounts": ["222222222222"], "bucket": "example-corp-cmdb"}
RUN = RunInfo("cmdb_ec2_inventory", "manual__2026-11-20T02:00:00+00:00", "2026-11-20", "2026-11-20")


# --------------------------------------------------------------------------- configuration


def test_source_identity_and_session_tags_are_optional() -> None:
    settings = parse_settings(BASE)
    assert settings.source_identity is None
    assert settings.session_tags == ()
    hook = hook_for(settings, settings.accounts[0], RUN)
    assert hook.source_identity is None
    assert hook.session_tags == {}


def test_source_identity_and_session_tags_reach_the_hook() -> None:
    tags = {"team": "platform", "Cost Centre": "ÜBER 42", "path": "a/b:c=d+e-f@g_h.i", "empty": ""}
    settings = parse_settings({**BASE, "source_identity": "cmdb@nightly.run-1", "session_tags": tags})
    assert settings.source_identity == "cmdb@nightly.run-1"
    assert dict(settings.session_tags) == tags
    hook = hook_for(settings, Account("222222222222"), RUN)
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
    hook = hook_for(settings, settings.accounts[0], RUN)
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

    from include.cmdb_inventory.aws.hooks import CrossAccountHook

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


# --------------------------------------------------------------------------- a scan longer than its session
#
# moto's STS hands out sessions of the requested DurationSeconds and accepts them forever; the gateway plays
# AWS: once a session has expired, every call signed with it answers ExpiredToken. Time is not waited for: the
# test shortens the first session's remaining life (what its expiry says) at a chosen call, as if the scan had
# run for most of its session by then.

LONG_SCAN_ACCOUNT = "530000000001"
LONG_SCAN_REGIONS = ("ap-southeast-2", "eu-central-1", "eu-west-1", "us-east-1", "us-east-2", "us-west-2")
EXPIRED_AFTER = 3  # the first session's last accepted DescribeInstances: the others of the scan come later
SHORT_SESSION = 900  # the shortest session AWS allows (and the configuration accepts)
DURATION_REFUSED = "The requested DurationSeconds exceeds the MaxSessionDuration set for this role."


@pytest.fixture(scope="module")
def sts_gateway(moto_url: str) -> Any:
    """The gateway in front of the session's moto, with one account's instances in every scanned region."""
    from devtools.gateway import AwsGateway
    from devtools.world import session_in

    seeder = session_in(moto_url, LONG_SCAN_ACCOUNT)
    for region in LONG_SCAN_REGIONS:
        ec2 = seeder.client("ec2", region_name=region, endpoint_url=moto_url)
        if not ec2.describe_instances()["Reservations"]:
            ec2.run_instances(ImageId="ami-12c6146b", MinCount=2, MaxCount=2, InstanceType="t3.micro")
    with AwsGateway(upstream=moto_url) as gw:
        yield gw


@pytest.fixture
def via_gateway(sts_gateway: Any, monkeypatch: pytest.MonkeyPatch, hub_env_factory: Any) -> Any:
    """The hub connection (static keys) through the gateway; a clean rule set and call log."""
    for name, value in hub_env_factory(sts_gateway.url).items():
        monkeypatch.setenv(name, value)
    sts_gateway.clear_rules()
    sts_gateway.reset_calls()
    yield sts_gateway
    sts_gateway.clear_rules()


def test_an_account_whose_scan_outlives_its_session_still_finishes(via_gateway: Any) -> None:
    from datetime import UTC, datetime, timedelta

    from include.cmdb_inventory.aws.clients import refresh_windows
    from include.cmdb_inventory.aws.hooks import CrossAccountHook
    from include.cmdb_inventory.config import DEFAULT_INSTANCE_STATES
    from include.cmdb_inventory.scan import scan_regions

    gw = via_gateway
    hook = CrossAccountHook(
        account_id=LONG_SCAN_ACCOUNT, duration_seconds=SHORT_SESSION, region_name=world.HOME_REGION
    )
    role_arn = hook.assume()
    first_key = hook.credentials.get_frozen_credentials().access_key
    calls = {"first": 0}

    def first_session_expired(req: Any) -> bool:
        """ExpiredToken for the first session after its EXPIRED_AFTER-th DescribeInstances."""
        if req.access_key != first_key or req.action != "DescribeInstances":
            return False
        calls["first"] += 1
        if calls["first"] == EXPIRED_AFTER:
            # The scan has run for most of the session: a minute is left, inside botocore's refresh window.
            hook.credentials._expiry_time = datetime.now(tz=UTC) + timedelta(seconds=60)
        return calls["first"] > EXPIRED_AFTER

    gw.fail(
        400,
        "ExpiredToken",
        "The security token included in the request is expired",
        when=first_session_expired,
    )
    result = scan_regions(
        hook,
        Account(LONG_SCAN_ACCOUNT, "Long scan"),
        regions=LONG_SCAN_REGIONS,
        states=DEFAULT_INSTANCE_STATES,
        collected_at="2026-11-23T02:00:00Z",
        threads=1,  # one call at a time: the test decides exactly which call the first session ends after
    )

    assert [(r["region"], r["status"]) for r in result.regions] == [(r, "OK") for r in LONG_SCAN_REGIONS]
    assert len(result.records) == 2 * len(LONG_SCAN_REGIONS)
    assume_roles = gw.calls(action="AssumeRole", role_arn=role_arn)
    assert [c.status for c in assume_roles] == [200, 200]  # the first, then exactly one re-assume
    assert hook.assume_role_count == 2
    assert gw.count(fault="ExpiredToken") == 0  # nothing was sent with the expired session
    described = gw.calls(action="DescribeInstances")
    second_key = hook.credentials.get_frozen_credentials().access_key
    assert second_key != first_key
    assert [c.access_key for c in described] == [first_key] * EXPIRED_AFTER + [second_key] * (
        len(LONG_SCAN_REGIONS) - EXPIRED_AFTER
    )
    # A 15-minute session is re-assumed a few minutes before it ends, not on every call (botocore's fixed
    # 15-minute window would do that); a long one keeps botocore's windows.
    assert refresh_windows(SHORT_SESSION) == (300, 150)
    assert refresh_windows(3600) == (900, 600)


def test_a_session_longer_than_the_role_allows_fails_the_account_for_good(
    via_gateway: Any, moto_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """STS's ValidationError for DurationSeconds is permanent: no retry, the account named in the ledger."""
    import json
    from datetime import UTC, datetime

    import boto3
    from airflow.sdk.exceptions import AirflowFailException

    from include.cmdb_inventory import tasks
    from include.cmdb_inventory.config import VARIABLE_KEY

    gw = via_gateway
    bucket = "cmdb-sessions-test"
    raw = boto3.client(
        "s3", endpoint_url=moto_url, region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b"
    )
    raw.create_bucket(Bucket=bucket)
    variable = {
        "accounts": [LONG_SCAN_ACCOUNT],
        "bucket": bucket,
        "session_duration_seconds": 7200,
        "regions": ["eu-west-1"],
    }
    monkeypatch.setenv(f"AIRFLOW_VAR_{VARIABLE_KEY.upper()}", json.dumps(variable))
    # The role's MaxSessionDuration is one hour (the default): STS refuses anything longer.
    gw.fail(
        400,
        "ValidationError",
        DURATION_REFUSED,
        action="AssumeRole",
        when=lambda req: int(req.param("DurationSeconds") or 0) > 3600,
    )

    class DagRun:
        dag_id, run_id = "cmdb_ec2_inventory", "manual__2026-11-23T02:00:00+00:00"
        logical_date = run_after = datetime(2026, 11, 23, 2, tzinfo=UTC)

    class TaskInstance:
        try_number = 1

    context: dict[str, Any] = {"params": {}, "dag_run": DagRun(), "ti": TaskInstance()}
    account = Account(LONG_SCAN_ACCOUNT, "Long session")
    with pytest.raises(AirflowFailException) as failed:  # failed for good: Airflow does not retry it
        tasks.scan(context, account.to_dict())
    assert "ValidationError" in str(failed.value)
    assert "session_duration_seconds=7200" in str(failed.value)
    assert gw.count(action="AssumeRole") == 1  # botocore did not retry it either
    assert gw.count(action="DescribeInstances") == 0

    settings = tasks.settings_from(context)
    run = tasks.run_info(context)
    summary = inventory.merge_inventory(settings, run, store_for(settings), [account.to_dict()])
    manifest_key = summary["manifest_uri"].removeprefix(f"s3://{bucket}/")
    manifest = json.loads(raw.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    [entry] = manifest["coverage"]
    assert (entry["account"], entry["region"], entry["status"]) == (
        LONG_SCAN_ACCOUNT,
        None,
        contract.ROLE_NOT_ASSUMABLE,
    )
    assert entry["error"]["code"] == "ValidationError"
    assert DURATION_REFUSED in entry["error"]["message"]
    assert "session_duration_seconds=7200" in entry["error"]["message"]
    assert manifest["complete"] is False
