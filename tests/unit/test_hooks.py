"""CrossAccountHook against moto's server: one AssumeRole per account, clients, retries, masking."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from botocore.exceptions import ClientError
from hypothesis import given, settings
from hypothesis import strategies as st

from include.cmdb_inventory.aws.clients import shared_botocore_session
from include.cmdb_inventory.aws.hooks import CrossAccountHook, RoleNotAssumableError, role_session_name

TARGET = "520000000001"
OTHER = "520000000002"
REGIONS = ("us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-southeast-2")
SERVICES = ("ec2", "sts")
# AWS's RoleSessionName: 2-64 characters of [\w+=,.@-], where \w is ASCII.
SESSION_NAME_OK = re.compile(r"[A-Za-z0-9_+=,.@-]{2,64}", re.ASCII)
HUB_ROLE_ARN = "arn:aws:iam::111111111111:role/CMDBApplication"

pytestmark = pytest.mark.usefixtures("hub_connection")


class Calls:
    """Parameters of every call (or every attempt) seen by a botocore event handler."""

    def __init__(self) -> None:
        self.params: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.params)

    def record(self, params: dict[str, Any] | None = None, **_: Any) -> None:
        with self._lock:
            self.params.append(dict(params or {}))


def assume_role_calls(hook: CrossAccountHook) -> Calls:
    """AssumeRole API calls (one per call, however many attempts) with their request parameters."""
    calls = Calls()
    hook.hub_sts.meta.events.register("before-parameter-build.sts.AssumeRole", calls.record)
    return calls


def assume_role_attempts(hook: CrossAccountHook, respond: Callable[[int], Any] | None = None) -> Calls:
    """AssumeRole HTTP attempts; ``respond(attempt)`` may return a response instead of sending."""
    attempts = Calls()

    def before_send(**kwargs: Any) -> Any:
        attempts.record()
        return respond(len(attempts)) if respond else None

    hook.hub_sts.meta.events.register("before-send.sts.AssumeRole", before_send)
    return attempts


def test_hub_identity_and_masking_work_outside_a_task() -> None:
    from airflow.sdk._shared.secrets_masker import redact
    from airflow.sdk.log import mask_secret

    hook = CrossAccountHook(account_id=TARGET)
    assert hook.hub_identity["Arn"].startswith("arn:aws:")
    assert hook.hub_identity["Account"].isdigit()
    assert hook.partition == "aws"
    assert not hook.hub_is_assumed_role

    mask_secret("not-a-task-but-masked-0123")
    assert redact("x not-a-task-but-masked-0123 y") == "x *** y"


def test_one_assume_role_per_account_from_many_threads() -> None:
    hook = CrossAccountHook(account_id=TARGET, max_pool_connections=16)
    calls = assume_role_calls(hook)
    keys = [(service, region) for service in SERVICES for region in REGIONS]
    threads = 12
    start = threading.Barrier(threads)

    def worker(offset: int) -> list[tuple[tuple[str, str], Any]]:
        start.wait(timeout=30)  # every thread asks for its first client at the same moment
        order = keys[offset % len(keys) :] + keys[: offset % len(keys)]
        return [(key, hook.client(*key)) for key in order]

    with ThreadPoolExecutor(max_workers=threads) as pool:
        got = [item for items in pool.map(worker, range(threads)) for item in items]

    assert len(got) == threads * len(keys)
    assert len(calls) == 1
    assert calls.params[0]["RoleArn"] == f"arn:aws:iam::{TARGET}:role/CMDBDiscovery"
    by_key: dict[tuple[str, str], set[int]] = {}
    for key, client in got:
        by_key.setdefault(key, set()).add(id(client))
    assert len(by_key) == len(SERVICES) * len(REGIONS)
    assert all(len(ids) == 1 for ids in by_key.values()), "one client per (service, region), reused"
    assert len({next(iter(ids)) for ids in by_key.values()}) == len(by_key), "distinct per key"
    for service, region in by_key:
        client = hook.client(service, region)
        assert client.meta.service_model.service_name == service
        assert client.meta.region_name == region
    # The clients act inside the target account, as the assumed role.
    arn = hook.client("sts", "eu-west-1").get_caller_identity()["Arn"]
    assert arn.startswith(f"arn:aws:sts::{TARGET}:assumed-role/CMDBDiscovery/")
    assert len(calls) == 1


def test_clients_come_from_one_shared_botocore_session() -> None:
    first = CrossAccountHook(account_id=TARGET)
    second = CrossAccountHook(account_id=OTHER)
    loader = shared_botocore_session().get_component("data_loader")
    clients = [
        first.client("ec2", "us-east-1"),
        first.client("ec2", "eu-west-1"),
        second.client("ec2", "us-east-1"),
    ]
    assert all(client._loader is loader for client in clients)


def test_each_account_assumes_its_own_role_once() -> None:
    hooks = {account: CrossAccountHook(account_id=account) for account in (TARGET, OTHER)}
    calls = {account: assume_role_calls(hook) for account, hook in hooks.items()}
    for account, hook in hooks.items():
        for region in REGIONS[:2]:
            identity = hook.client("sts", region).get_caller_identity()
            assert identity["Account"] == account
        assert hook.assume() == f"arn:aws:iam::{account}:role/CMDBDiscovery"
        assert [c["RoleArn"] for c in calls[account].params] == [f"arn:aws:iam::{account}:role/CMDBDiscovery"]


@pytest.mark.parametrize(
    ("partition", "hub_region"),
    [("aws", "us-east-1"), ("aws-us-gov", "us-gov-west-1"), ("aws-cn", "cn-north-1")],
)
def test_role_arn_uses_the_hub_identity_partition(partition: str, hub_region: str) -> None:
    hook = CrossAccountHook(account_id=TARGET, role_name="CMDBDiscovery", region_name=hub_region)
    # hub_identity is a cached_property: setting it on the instance replaces GetCallerIdentity's answer.
    hook.hub_identity = {"Account": "111111111111", "Arn": f"arn:{partition}:iam::111111111111:user/hub"}
    calls = assume_role_calls(hook)

    expected = f"arn:{partition}:iam::{TARGET}:role/CMDBDiscovery"
    assert hook.partition == partition
    assert hook.assume() == expected
    assert [c["RoleArn"] for c in calls.params] == [expected]
    assert hook.hub_sts.meta.region_name == hub_region


@settings(deadline=None, max_examples=300)  # no deadline: a loaded CI machine is not a failure
@given(st.lists(st.text(max_size=120), max_size=4))
def test_role_session_name_is_always_valid(parts: list[str]) -> None:
    name = role_session_name(*parts)
    assert SESSION_NAME_OK.fullmatch(name), name
    assert role_session_name(*parts) == name


@pytest.mark.parametrize(
    "run_id",
    [
        "scheduled__2026-11-26T02:00:00+00:00",
        "manual__2026-11-26T08:15:42.123456+00:00",
        "backfill__2026-01-01T02:00:00+00:00",
        "my run/with spaces",
        "x",
    ],
)
def test_role_session_name_traces_back_to_a_short_run_id(run_id: str) -> None:
    name = role_session_name("cmdb", run_id)
    assert SESSION_NAME_OK.fullmatch(name)
    assert name == "cmdb@" + re.sub(r"[^A-Za-z0-9_+=,.@-]", ".", run_id)


@pytest.mark.parametrize(
    "hostile",
    [
        "",
        "é",
        "\x00",
        "日本語のラン",
        "١٢٣",  # Arabic-Indic digits: \w in Unicode, not in AWS's ASCII \w
        "a" * 300,
        "manual__" + "é" * 80,
        "'; DROP TABLE runs; --",
        "\n\r\t",
    ],
)
def test_role_session_name_of_hostile_run_ids(hostile: str) -> None:
    for name in (role_session_name("cmdb", hostile), role_session_name(hostile)):
        assert SESSION_NAME_OK.fullmatch(name), repr(name)


def test_long_run_ids_keep_a_readable_prefix_and_stay_distinct() -> None:
    long_a = "manual__" + "a" * 80 + "-1"
    long_b = "manual__" + "a" * 80 + "-2"
    name_a, name_b = role_session_name("cmdb", long_a), role_session_name("cmdb", long_b)
    assert len(name_a) == len(name_b) == 64
    assert name_a != name_b
    assert name_a.startswith("cmdb@manual__aaaa")


def test_role_session_name_is_passed_to_assume_role() -> None:
    session_name = role_session_name("cmdb", "scheduled__2026-11-26T02:00:00+00:00")
    hook = CrossAccountHook(account_id=TARGET, session_name=session_name)
    calls = assume_role_calls(hook)
    arn = hook.client("sts", "us-east-1").get_caller_identity()["Arn"]
    assert calls.params[0]["RoleSessionName"] == session_name
    assert arn.endswith(f"/CMDBDiscovery/{session_name}")


def test_optional_assume_role_parameters_are_passed_when_set() -> None:
    hook = CrossAccountHook(
        account_id=TARGET,
        external_id="cmdb-external-id-42",
        duration_seconds=900,
        source_identity="cmdb-airflow",
        session_tags={"Team": "cmdb", "Dag": "cmdb_ec2_inventory"},
    )
    calls = assume_role_calls(hook)
    hook.assume()
    (params,) = calls.params
    assert params["ExternalId"] == "cmdb-external-id-42"
    assert params["DurationSeconds"] == 900
    assert params["SourceIdentity"] == "cmdb-airflow"
    assert params["Tags"] == [{"Key": "Dag", "Value": "cmdb_ec2_inventory"}, {"Key": "Team", "Value": "cmdb"}]


def test_optional_assume_role_parameters_are_absent_when_not_set() -> None:
    hook = CrossAccountHook(account_id=TARGET)
    calls = assume_role_calls(hook)
    hook.assume()
    (params,) = calls.params
    assert set(params) == {"RoleArn", "RoleSessionName", "DurationSeconds"}
    assert params["DurationSeconds"] == 3600


def test_long_sessions_are_allowed_when_the_hub_is_not_an_assumed_role() -> None:
    hook = CrossAccountHook(account_id=TARGET, duration_seconds=7200)
    calls = assume_role_calls(hook)
    hook.assume()
    assert calls.params[0]["DurationSeconds"] == 7200


def test_chained_hub_refuses_sessions_over_one_hour_up_front(
    set_hub_connection: Callable[..., dict[str, Any]],
) -> None:
    set_hub_connection(role_arn=HUB_ROLE_ARN)
    hook = CrossAccountHook(account_id=TARGET, duration_seconds=7200)
    assert hook.hub_is_assumed_role
    calls = assume_role_calls(hook)
    attempts = assume_role_attempts(hook)

    with pytest.raises(ValueError, match=r"role chaining to one hour") as excinfo:
        hook.client("ec2", "us-east-1")
    assert "7200" in str(excinfo.value)
    assert "assumed-role/CMDBApplication" in str(excinfo.value)
    assert len(calls) == 0
    assert len(attempts) == 0


def test_chained_hub_assumes_with_one_hour(set_hub_connection: Callable[..., dict[str, Any]]) -> None:
    set_hub_connection(role_arn=HUB_ROLE_ARN)
    hook = CrossAccountHook(account_id=TARGET, duration_seconds=3600)
    calls = assume_role_calls(hook)
    assert hook.hub_identity["Arn"].startswith("arn:aws:sts::111111111111:assumed-role/CMDBApplication/")
    assert hook.client("sts", "us-east-1").get_caller_identity()["Account"] == TARGET
    assert len(calls) == 1


@pytest.mark.parametrize(("code", "status"), [("AccessDenied", 403), ("InvalidClientTokenId", 403)])
def test_permanent_assume_role_refusal_is_not_retried(
    code: str, status: int, aws_error: Callable[..., Any], no_retry_delay: list[float]
) -> None:
    hook = CrossAccountHook(account_id=TARGET, max_attempts=5)
    message = f"User: arn:aws:sts::111111111111:user/hub is not authorized to perform sts:AssumeRole ({code})"
    attempts = assume_role_attempts(hook, lambda _: aws_error(code, message, status, protocol="query"))

    with pytest.raises(RoleNotAssumableError) as excinfo:
        hook.assume()
    err = excinfo.value
    role_arn = f"arn:aws:iam::{TARGET}:role/CMDBDiscovery"
    assert err.role_arn == role_arn
    assert err.code == code
    assert role_arn in str(err)
    assert code in str(err)
    assert len(attempts) == 1
    assert no_retry_delay == []
    # Not cached: the next try asks again (and fails again).
    with pytest.raises(RoleNotAssumableError):
        hook.client("ec2", "us-east-1")
    assert len(attempts) == 2


@pytest.mark.parametrize("code", ["Throttling", "RequestLimitExceeded"])
def test_throttled_assume_role_is_retried(
    code: str, aws_error: Callable[..., Any], no_retry_delay: list[float]
) -> None:
    hook = CrossAccountHook(account_id=TARGET, max_attempts=5)
    calls = assume_role_calls(hook)
    attempts = assume_role_attempts(
        hook,
        lambda attempt: aws_error(code, "Rate exceeded", 400, protocol="query") if attempt <= 2 else None,
    )

    assert hook.assume() == f"arn:aws:iam::{TARGET}:role/CMDBDiscovery"
    assert len(calls) == 1
    assert len(attempts) == 3
    assert len(no_retry_delay) == 2
    assert hook.client("sts", "us-east-1").get_caller_identity()["Account"] == TARGET


def test_throttling_that_outlasts_max_attempts_raises_the_throttle(
    aws_error: Callable[..., Any], no_retry_delay: list[float]
) -> None:
    hook = CrossAccountHook(account_id=TARGET, max_attempts=3)
    attempts = assume_role_attempts(hook, lambda _: aws_error("Throttling", "Rate exceeded", 400, "query"))
    with pytest.raises(ClientError) as excinfo:
        hook.assume()
    assert not isinstance(excinfo.value, RoleNotAssumableError)
    assert excinfo.value.response["Error"]["Code"] == "Throttling"
    assert len(attempts) == 3, "max_attempts counts attempts per call, the first one included"


def test_clients_use_standard_retries_and_enough_connections() -> None:
    hook = CrossAccountHook(account_id=TARGET, max_attempts=6, max_pool_connections=32)
    for client in (hook.hub_sts, hook.client("ec2", "eu-west-1"), hook.client("sts", "us-west-2")):
        config = client.meta.config
        assert config.retries["mode"] == "standard"
        assert config.retries["total_max_attempts"] == 6
        assert config.max_pool_connections >= 32


def test_assumed_credentials_are_masked_and_never_shown() -> None:
    from airflow.sdk._shared.secrets_masker import _secrets_masker, redact

    hook = CrossAccountHook(account_id=TARGET)
    hook.assume()
    frozen = hook.credentials.get_frozen_credentials()
    secrets = [frozen.access_key, frozen.secret_key, frozen.token]
    assert len(secrets) == 3
    patterns = _secrets_masker().patterns
    for secret in secrets:
        assert re.escape(secret) in patterns
        assert secret not in redact(f"key={secret}")
        assert secret not in repr(hook)
        assert secret not in str(hook)
    assert repr(hook) == f"<CrossAccountHook account={TARGET} role=CMDBDiscovery>"


def test_assumed_credentials_never_reach_a_log_record(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("botocore", "urllib3", "airflow", "include.cmdb_inventory"):
        caplog.set_level(logging.DEBUG, logger=name)

    hook = CrossAccountHook(account_id=TARGET)
    hook.client("ec2", "eu-west-1").describe_instances()
    hook.client("ec2", "us-west-2").describe_availability_zones()
    hook.client("sts", "us-east-1").get_caller_identity()
    frozen = hook.credentials.get_frozen_credentials()
    secrets = [frozen.access_key, frozen.secret_key, frozen.token]

    loggers = {record.name for record in caplog.records}
    assert {"botocore.endpoint", "botocore.parsers", "botocore.auth"} <= loggers, "botocore logged at DEBUG"
    assert any(f"arn:aws:iam::{TARGET}:role/CMDBDiscovery" in r.getMessage() for r in caplog.records)
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "")
        for secret in secrets:
            assert secret not in text, f"{record.name}: a credential in {text[:120]!r}"


def test_endpoint_url_of_the_connection_applies_to_regional_clients(
    moto_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The environment's safety net points at a closed port: only the connection's URL can answer.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    hook = CrossAccountHook(account_id=TARGET)
    for service, region in (("ec2", "eu-west-1"), ("ec2", "ap-southeast-2"), ("sts", "us-west-2")):
        client = hook.client(service, region)
        assert client.meta.endpoint_url == moto_url
    assert hook.client("ec2", "eu-west-1").describe_instances()["Reservations"] == []


def test_clients_in_different_regions_sign_with_their_own_region() -> None:
    hook = CrossAccountHook(account_id=TARGET)
    scopes: dict[str, list[str]] = {}
    for region in ("eu-west-1", "ap-southeast-2", "us-west-2"):
        client = hook.client("ec2", region)

        def capture(request: Any, region: str = region, **_: Any) -> None:
            authorization = request.headers["Authorization"]
            authorization = authorization.decode() if isinstance(authorization, bytes) else authorization
            scopes.setdefault(region, []).append(authorization)

        client.meta.events.register("before-send.ec2", capture)
        zones = client.describe_availability_zones()["AvailabilityZones"]
        assert zones
        assert {z["RegionName"] for z in zones} == {region}
    for region, headers in scopes.items():
        assert headers
        assert all(f"/{region}/ec2/aws4_request" in h for h in headers)


# --------------------------------------------------------------------- refreshable sessions


def test_every_client_of_an_account_signs_with_its_one_refreshable_session() -> None:
    from botocore.credentials import RefreshableCredentials

    hook = CrossAccountHook(account_id=TARGET, ec2_operations=("DescribeInstances", "DescribeRegions"))
    calls = assume_role_calls(hook)
    clients = [hook.client("ec2", region) for region in REGIONS[:3]] + [hook.client("sts", "eu-west-1")]
    assert isinstance(hook.credentials, RefreshableCredentials)
    assert all(client._get_credentials() is hook.credentials for client in clients)
    for client in clients[:3]:
        client.describe_instances()
    assert clients[3].get_caller_identity()["Account"] == TARGET
    assert len(calls) == 1  # one AssumeRole per account, whatever the number of regions and calls


def test_a_refreshed_session_is_masked_and_used_by_every_client() -> None:
    from datetime import UTC, datetime, timedelta

    from airflow.sdk._shared.secrets_masker import _secrets_masker

    hook = CrossAccountHook(account_id=TARGET, duration_seconds=900)
    calls = assume_role_calls(hook)
    ec2 = hook.client("ec2", "eu-west-1")
    first = hook.credentials.get_frozen_credentials()
    # Botocore re-assumes inside the mandatory window (forced here by shortening the session).
    hook.credentials._expiry_time = datetime.now(tz=UTC) + timedelta(seconds=30)
    ec2.describe_instances()
    second = hook.credentials.get_frozen_credentials()
    assert len(calls) == 2
    assert second.access_key != first.access_key
    assert hook.client("ec2", "eu-west-1") is ec2  # the same client, signing with the new session
    patterns = _secrets_masker().patterns
    for secret in (second.access_key, second.secret_key, second.token):
        assert re.escape(secret) in patterns


def test_a_session_longer_than_the_role_allows_is_refused_for_good_without_retries(
    aws_error: Callable[..., Any], no_retry_delay: list[float]
) -> None:
    hook = CrossAccountHook(account_id=TARGET, duration_seconds=7200, max_attempts=5)
    message = "The requested DurationSeconds exceeds the MaxSessionDuration set for this role."
    attempts = assume_role_attempts(
        hook, lambda _: aws_error("ValidationError", message, 400, protocol="query")
    )
    with pytest.raises(RoleNotAssumableError) as excinfo:
        hook.assume()
    assert excinfo.value.code == "ValidationError"
    assert message in str(excinfo.value)
    assert "session_duration_seconds=7200" in str(excinfo.value)
    assert len(attempts) == 1
    assert no_retry_delay == []


def test_a_session_refused_as_expired_is_renewed_once_for_every_thread_and_client() -> None:
    from concurrent.futures import ThreadPoolExecutor

    hook = CrossAccountHook(account_id=TARGET)
    calls = assume_role_calls(hook)
    clients = [hook.client("ec2", region) for region in ("eu-west-1", "us-east-1", "us-west-2")]
    stale = hook.session_key()
    # Every region's thread saw ExpiredToken for the same session: one AssumeRole renews it for all.
    with ThreadPoolExecutor(max_workers=3) as pool:
        renewed = list(pool.map(lambda _: hook.renew_session(stale), range(3)))
    assert sorted(renewed) == [False, False, True]
    assert len(calls) == 2
    fresh = hook.session_key()
    assert fresh != stale
    for client in clients:
        assert client._request_signer._credentials.get_frozen_credentials().access_key == fresh
    assert hook.renew_session(stale) is False  # a late thread with the old key renews nothing
