"""Tests of the loopback AWS gateway: real boto3 clients, real botocore retries, moto behind it."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError
from botocore.retries.standard import ExponentialBackoff

from devtools.gateway import DUMMY_CREDENTIALS, AwsGateway, Fault

REPO_ROOT = Path(__file__).resolve().parents[2]
OTHER_ACCOUNT = "222222222222"
OTHER_ROLE = f"arn:aws:iam::{OTHER_ACCOUNT}:role/CmdbInventoryReader"
# botocore's ``max_attempts`` counts retries; ``total_max_attempts`` counts attempts.
NO_RETRY = Config(retries={"mode": "standard", "total_max_attempts": 1})
STANDARD = Config(retries={"mode": "standard", "max_attempts": 5})


@pytest.fixture(scope="module")
def gw() -> Iterator[AwsGateway]:
    """One gateway (and moto server) for the whole module."""
    with AwsGateway(seed=1234) as gateway:
        yield gateway


@pytest.fixture(autouse=True)
def _clean_gateway(gw: AwsGateway) -> Iterator[None]:
    """Every test starts without rules, latency or logged calls."""
    gw.clear_rules()
    gw.reset_calls()
    gw.latency = 0.0
    yield
    gw.clear_rules()
    gw.latency = 0.0


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shrink botocore's backoff base (1 s throttling / 50 ms other) so retry tests stay fast.

    Only the sleep length changes; which errors are retried is botocore's real decision.
    """
    monkeypatch.setitem(ExponentialBackoff._DEFAULT_BACKOFF_CONFIG, "throttling_base_scale", 0.01)
    monkeypatch.setitem(ExponentialBackoff._DEFAULT_BACKOFF_CONFIG, "non_throttling_base_scale", 0.005)


def client(
    gw: AwsGateway, service: str, region: str = "us-east-1", config: Config = NO_RETRY, **creds: str
) -> Any:
    """A boto3 client aimed at the gateway with dummy (or given) credentials."""
    return boto3.client(service, config=config, **gw.client_kwargs(region, **creds))


def assumed_creds(gw: AwsGateway, role_arn: str = OTHER_ROLE) -> dict[str, str]:
    """Credentials from STS AssumeRole through the gateway, as client keyword arguments."""
    creds = client(gw, "sts").assume_role(RoleArn=role_arn, RoleSessionName="cmdb-test")["Credentials"]
    return {
        "aws_access_key_id": creds["AccessKeyId"],
        "aws_secret_access_key": creds["SecretAccessKey"],
        "aws_session_token": creds["SessionToken"],
    }


def error_of(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    """(error code, HTTP status) of a ClientError."""
    response: Any = exc.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


# --- basics


def test_urls_are_loopback_and_distinct(gw: AwsGateway) -> None:
    assert gw.url.startswith("http://127.0.0.1:")
    assert gw.moto_url.startswith("http://127.0.0.1:")
    assert gw.url != gw.moto_url
    assert gw.running


@pytest.mark.parametrize(
    "kwargs",
    [{"host": "0.0.0.0"}, {"host": "example.com"}, {"upstream": "http://192.0.2.10:5000"}],  # noqa: S104
)
def test_refuses_non_loopback(kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="loopback"):
        AwsGateway(**kwargs)  # type: ignore[arg-type]


def test_passthrough_parses_and_logs_calls(gw: AwsGateway) -> None:
    ec2 = client(gw, "ec2", "eu-west-1")
    assert ec2.describe_instances()["Reservations"] == []
    client(gw, "sts").get_caller_identity()

    (call,) = gw.calls(service="ec2")
    assert (call.action, call.region, call.account, call.access_key) == (
        "DescribeInstances",
        "eu-west-1",
        gw.default_account,
        DUMMY_CREDENTIALS["aws_access_key_id"],
    )
    assert (call.status, call.fault) == (200, None)
    assert gw.count(service="sts", action="GetCallerIdentity", status=200) == 1
    assert gw.count() == 2
    gw.reset_calls()
    assert gw.calls() == []


def test_raw_moto_url_bypasses_gateway(gw: AwsGateway) -> None:
    gw.fail(500, "InternalError", service="sts")
    sts = boto3.client(
        "sts", endpoint_url=gw.moto_url, region_name="us-east-1", config=NO_RETRY, **DUMMY_CREDENTIALS
    )
    assert sts.get_caller_identity()["Account"] == gw.default_account
    assert gw.count() == 0


def test_json_protocol_actions_and_throttling(gw: AwsGateway) -> None:
    sqs = client(gw, "sqs", "eu-west-1", STANDARD)
    gw.throttle("sqs", action="CreateQueue", times=1)
    url = sqs.create_queue(QueueName=f"q-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    assert url
    assert [(c.action, c.fault) for c in gw.calls(service="sqs")] == [
        ("CreateQueue", "ThrottlingException"),
        ("CreateQueue", None),
    ]
    gw.throttle("organizations")
    with pytest.raises(ClientError) as exc:
        client(gw, "organizations").describe_organization()
    assert error_of(exc) == ("TooManyRequestsException", 400)


def test_upstream_mode_fronts_an_existing_moto(gw: AwsGateway) -> None:
    with AwsGateway(upstream=gw.moto_url) as second:
        assert second.moto_url == gw.moto_url
        sts = boto3.client("sts", config=NO_RETRY, **second.client_kwargs())
        assert sts.get_caller_identity()["Account"] == gw.default_account
        assert second.count(action="GetCallerIdentity") == 1
    assert gw.count() == 0
    client(gw, "sts").get_caller_identity()  # moto still up after the second gateway stopped


def test_chunked_request_body_is_forwarded(gw: AwsGateway) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    headers = {
        "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20250101/eu-west-2/sts/aws4_request, "
        "SignedHeaders=host, Signature=0",
        "Content-Type": "application/x-www-form-urlencoded",
    }
    try:
        conn.request(
            "POST", "/", body=iter([b"Action=GetCallerIdentity", b"&Version=2011-06-15"]), headers=headers
        )
        response = conn.getresponse()
        assert response.status == 200
        assert b"<GetCallerIdentityResponse" in response.read()
    finally:
        conn.close()
    assert [(c.service, c.action, c.region) for c in gw.calls()] == [
        ("sts", "GetCallerIdentity", "eu-west-2")
    ]


def test_reset_moto_wipes_state_and_learned_keys(gw: AwsGateway) -> None:
    s3 = client(gw, "s3")
    s3.create_bucket(Bucket="cmdb-reset-me")
    assumed_creds(gw)
    assert gw.key_accounts
    gw.reset_moto()
    assert gw.key_accounts == {}
    assert "cmdb-reset-me" not in {b["Name"] for b in s3.list_buckets()["Buckets"]}


# --- STS / accounts


def test_assume_role_access_denied_is_not_retried(gw: AwsGateway) -> None:
    denied = gw.deny_assume_role(OTHER_ROLE)
    sts = client(gw, "sts", config=STANDARD)
    with pytest.raises(ClientError) as exc:
        sts.assume_role(RoleArn=OTHER_ROLE, RoleSessionName="cmdb-test")
    assert error_of(exc) == ("AccessDenied", 403)
    assert OTHER_ROLE in exc.value.response["Error"]["Message"]
    assert gw.count(action="AssumeRole", role_arn=OTHER_ROLE) == 1  # standard mode: not retried
    assert denied.hits == 1

    allowed = "arn:aws:iam::333333333333:role/CmdbInventoryReader"
    assert sts.assume_role(RoleArn=allowed, RoleSessionName="cmdb-test")["Credentials"]["AccessKeyId"]
    assert gw.calls(role_arn=allowed)[0].status == 200


def test_account_attribution_after_assume_role(gw: AwsGateway) -> None:
    creds = assumed_creds(gw)
    assert gw.calls(action="AssumeRole")[0].role_arn == OTHER_ROLE
    assert gw.account_for(creds["aws_access_key_id"]) == OTHER_ACCOUNT

    assert client(gw, "sts", **creds).get_caller_identity()["Account"] == OTHER_ACCOUNT  # moto agrees
    other_ec2 = client(gw, "ec2", "eu-west-1", **creds)
    group = f"cmdb-{uuid.uuid4().hex[:8]}"
    other_ec2.create_security_group(GroupName=group, Description="only in 222222222222")
    assert gw.calls(action="CreateSecurityGroup")[0].account == OTHER_ACCOUNT

    default_groups = client(gw, "ec2", "eu-west-1").describe_security_groups()["SecurityGroups"]
    assert group not in {g["GroupName"] for g in default_groups}
    assert gw.count(action="DescribeSecurityGroups", account=gw.default_account) == 1


def test_rules_match_on_account(gw: AwsGateway) -> None:
    creds = assumed_creds(gw)
    gw.deny_ec2(account=OTHER_ACCOUNT)
    with pytest.raises(ClientError) as exc:
        client(gw, "ec2", "eu-west-1", **creds).describe_instances()
    assert error_of(exc) == ("UnauthorizedOperation", 403)
    client(gw, "ec2", "eu-west-1").describe_instances()  # default account unaffected


def test_credentials_expire_after_n_calls_per_access_key(gw: AwsGateway) -> None:
    first = assumed_creds(gw)
    expiry = gw.expire_credentials(after=2, account=OTHER_ACCOUNT)
    ec2 = client(gw, "ec2", "eu-west-1", STANDARD, **first)
    ec2.describe_regions()
    ec2.describe_instances()
    with pytest.raises(ClientError) as exc:
        ec2.describe_instances()
    # EC2's error shape, parsed by botocore; not retried (standard mode treats it as permanent).
    assert error_of(exc) == ("ExpiredToken", 400)
    assert "security token included in the request is expired" in exc.value.response["Error"]["Message"]
    assert gw.count(fault="ExpiredToken") == 1
    # STS (query protocol) answers the same code for the same keys.
    with pytest.raises(ClientError) as exc:
        client(gw, "sts", **first).get_caller_identity()
    assert error_of(exc) == ("ExpiredToken", 400)

    # New credentials for the same account (a new AssumeRole) get their own two calls.
    second = assumed_creds(gw)
    fresh = client(gw, "ec2", "eu-west-1", **second)
    fresh.describe_instances()
    fresh.describe_instances()
    with pytest.raises(ClientError):
        fresh.describe_instances()
    client(gw, "ec2", "eu-west-1").describe_instances()  # other accounts are not affected
    assert expiry.matched_by_key == {first["aws_access_key_id"]: 4, second["aws_access_key_id"]: 3}
    assert expiry.hits == 3


def test_after_counts_matching_calls_before_firing(gw: AwsGateway) -> None:
    sts = client(gw, "sts")
    rule = gw.fail(500, "InternalError", service="sts", after=2, times=1)
    sts.get_caller_identity()
    sts.get_caller_identity()
    with pytest.raises(ClientError):
        sts.get_caller_identity()
    sts.get_caller_identity()  # times=1: fired once, then exhausted
    assert (rule.matched, rule.hits, rule.exhausted) == (4, 1, True)
    with pytest.raises(ValueError, match="after"):
        gw.fail(500, "InternalError", after=-1)


def test_map_key_declares_an_account(gw: AwsGateway) -> None:
    gw.map_key("AKIAEXAMPLEMAPPED", "444444444444")
    client(gw, "ec2", aws_access_key_id="AKIAEXAMPLEMAPPED").describe_regions()
    assert gw.calls()[0].account == "444444444444"


def test_sts_throttling_is_retried(gw: AwsGateway) -> None:
    gw.throttle("sts", times=2)
    response = client(gw, "sts", config=STANDARD).get_caller_identity()
    assert response["ResponseMetadata"]["RetryAttempts"] == 2
    assert [c.status for c in gw.calls()] == [400, 400, 200]
    assert gw.count(fault="Throttling") == 2

    gw.throttle("sts", times=1)
    with pytest.raises(ClientError) as exc:
        client(gw, "sts").get_caller_identity()
    assert error_of(exc) == ("Throttling", 400)


# --- EC2 faults


def test_region_not_enabled_answers_auth_failure(gw: AwsGateway) -> None:
    gw.disable_region("ap-east-1")
    with pytest.raises(ClientError) as exc:
        client(gw, "ec2", "ap-east-1", STANDARD).describe_instances()
    assert error_of(exc) == ("AuthFailure", 401)
    assert gw.count(region="ap-east-1") == 1  # not retried
    assert client(gw, "ec2", "eu-west-1").describe_instances()["Reservations"] == []


def test_scp_deny_matches_region_and_action(gw: AwsGateway) -> None:
    gw.deny_ec2(region=["eu-central-1", "eu-central-2"], action="DescribeInstances")
    with pytest.raises(ClientError) as exc:
        client(gw, "ec2", "eu-central-1", STANDARD).describe_instances()
    assert error_of(exc) == ("UnauthorizedOperation", 403)
    assert "ec2:DescribeInstances" in exc.value.response["Error"]["Message"]
    client(gw, "ec2", "eu-central-1").describe_regions()  # other action passes
    client(gw, "ec2", "eu-west-1").describe_instances()  # other region passes
    assert gw.count(faulted=True) == 1
    assert gw.count(faulted=False) == 2


@pytest.mark.parametrize("status", [400, 503])
def test_request_limit_exceeded_is_retried(gw: AwsGateway, status: int) -> None:
    rule = gw.throttle("ec2", status=status, action="DescribeInstances", times=2)
    response = client(gw, "ec2", "eu-west-1", STANDARD).describe_instances()
    assert response["ResponseMetadata"]["RetryAttempts"] == 2
    assert [(c.status, c.fault) for c in gw.calls(action="DescribeInstances")] == [
        (status, "RequestLimitExceeded"),
        (status, "RequestLimitExceeded"),
        (200, None),
    ]
    assert rule.exhausted
    assert rule.remaining == 0


def test_throttling_beyond_max_attempts_surfaces(gw: AwsGateway) -> None:
    gw.throttle("ec2", status=503)
    config = Config(retries={"mode": "standard", "total_max_attempts": 3})
    with pytest.raises(ClientError) as exc:
        client(gw, "ec2", "eu-west-1", config).describe_instances()
    assert error_of(exc) == ("RequestLimitExceeded", 503)
    assert gw.count(action="DescribeInstances") == 3


# --- S3 faults


@pytest.fixture
def bucket(gw: AwsGateway) -> str:
    """A fresh S3 bucket (created before the test's rules exist)."""
    name = f"cmdb-{uuid.uuid4().hex[:12]}"
    client(gw, "s3").create_bucket(Bucket=name)
    gw.reset_calls()
    return name


def upload_in_one_part(s3: Any, bucket: str, key: str, body: bytes) -> None:
    """A multipart upload of one part: create, upload the part, complete."""
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    part = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=body)
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key=key,
        UploadId=upload,
        MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
    )


def test_s3_operations_are_classified(gw: AwsGateway, bucket: str) -> None:
    s3 = client(gw, "s3")
    s3.put_object(Bucket=bucket, Key="exports/a b.json", Body=b"{}")
    s3.head_object(Bucket=bucket, Key="exports/a b.json")
    s3.get_object(Bucket=bucket, Key="exports/a b.json")["Body"].read()
    s3.list_objects_v2(Bucket=bucket, Prefix="exports/")
    s3.copy_object(Bucket=bucket, Key="copy.json", CopySource={"Bucket": bucket, "Key": "exports/a b.json"})
    upload_in_one_part(s3, bucket, "mp.json", b"x" * 1024)
    s3.delete_object(Bucket=bucket, Key="copy.json")
    calls = gw.calls(service="s3")
    assert [c.action for c in calls] == [
        "PutObject",
        "HeadObject",
        "GetObject",
        "ListObjectsV2",
        "CopyObject",
        "CreateMultipartUpload",
        "UploadPart",
        "CompleteMultipartUpload",
        "DeleteObject",
    ]
    assert calls[0].key == "exports/a b.json"
    assert {c.bucket for c in calls} == {bucket}
    assert calls[-1].status == 204


@pytest.mark.parametrize(("status", "code"), [(500, "InternalError"), (503, "SlowDown")])
def test_s3_put_failures_are_retried(gw: AwsGateway, bucket: str, status: int, code: str) -> None:
    gw.fail_s3_writes(status, bucket=bucket, key_prefix="exports/", times=1)
    s3 = client(gw, "s3", config=STANDARD)
    body = b"x" * (2 * 1024 * 1024)  # > 1 MiB: botocore sends "Expect: 100-continue"
    response = s3.put_object(Bucket=bucket, Key="exports/big.bin", Body=body)
    assert response["ResponseMetadata"]["RetryAttempts"] == 1
    assert [(c.status, c.fault) for c in gw.calls(action="PutObject")] == [(status, code), (200, None)]
    assert s3.head_object(Bucket=bucket, Key="exports/big.bin")["ContentLength"] == len(body)

    s3.put_object(Bucket=bucket, Key="other/x.json", Body=b"{}")  # outside the key prefix
    gw.fail_s3_writes(status, bucket=bucket)
    with pytest.raises(ClientError) as exc:
        client(gw, "s3").put_object(Bucket=bucket, Key="exports/y.json", Body=b"{}")
    assert error_of(exc) == (code, status)


def test_s3_multipart_part_and_complete_failures(gw: AwsGateway, bucket: str) -> None:
    gw.fail_s3_writes(503, action="UploadPart", times=1)
    gw.fail_s3_writes(500, action="CompleteMultipartUpload", times=1)
    s3 = client(gw, "s3", config=STANDARD)
    upload_in_one_part(s3, bucket, "mp.bin", b"y" * 4096)
    assert s3.head_object(Bucket=bucket, Key="mp.bin")["ContentLength"] == 4096
    assert gw.count(action="UploadPart") == 2
    assert gw.count(action="CompleteMultipartUpload") == 2
    assert {c.fault for c in gw.calls(faulted=True)} == {"SlowDown", "InternalError"}


def test_fault_after_forward_still_takes_effect(gw: AwsGateway, bucket: str) -> None:
    gw.add_rule(Fault.error(500, "InternalError", after_forward=True), action="PutObject")
    s3 = client(gw, "s3")
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="lost-answer.json", Body=b"{}")
    assert error_of(exc) == ("InternalError", 500)
    assert s3.get_object(Bucket=bucket, Key="lost-answer.json")["Body"].read() == b"{}"


# --- generic


@pytest.mark.parametrize("service", ["sns", "sqs", "iam", "ec2", "s3"])
def test_generic_fault_in_each_protocol(gw: AwsGateway, service: str) -> None:
    gw.fail(418, "TeapotError", "short and stout: {action}", service=service)
    calls = {
        "sns": lambda c: c.list_topics(),
        "sqs": lambda c: c.list_queues(),
        "iam": lambda c: c.list_roles(),
        "ec2": lambda c: c.describe_vpcs(),
        "s3": lambda c: c.list_buckets(),
    }
    with pytest.raises(ClientError) as exc:
        calls[service](client(gw, service))
    assert error_of(exc) == ("TeapotError", 418)
    assert exc.value.response["Error"]["Message"].startswith("short and stout: ")


def test_connection_reset_is_a_botocore_connection_error(gw: AwsGateway) -> None:
    rule = gw.reset_connections(service="sts", times=1)
    with pytest.raises(ConnectionClosedError):
        client(gw, "sts").get_caller_identity()
    assert gw.calls()[0].fault == "reset"
    assert gw.calls()[0].status == 0
    assert rule.exhausted

    gw.reset_connections(service="sts", times=1)
    response = client(gw, "sts", config=STANDARD).get_caller_identity()
    assert response["ResponseMetadata"]["RetryAttempts"] == 1


def test_latency_rule_and_global_latency(gw: AwsGateway) -> None:
    sts = client(gw, "sts")
    sts.get_caller_identity()  # warm the connection
    gw.add_latency(0.3, action="GetCallerIdentity")
    start = time.perf_counter()
    sts.get_caller_identity()
    assert 0.3 <= time.perf_counter() - start < 2.0
    assert gw.calls()[-1].delay == pytest.approx(0.3)

    gw.clear_rules()
    start = time.perf_counter()
    sts.get_caller_identity()
    assert time.perf_counter() - start < 0.25

    gw.latency = 0.2
    start = time.perf_counter()
    client(gw, "ec2", "eu-west-1").describe_regions()
    assert 0.2 <= time.perf_counter() - start < 2.0


def test_times_and_rule_removal(gw: AwsGateway) -> None:
    sts = client(gw, "sts")
    rule = gw.fail(500, "InternalError", service="sts")
    with pytest.raises(ClientError):
        sts.get_caller_identity()
    rule.remove()
    assert rule not in gw.rules
    sts.get_caller_identity()
    rule.remove()  # idempotent

    with gw.fail(503, "ServiceUnavailable", service="sts") as scoped:
        with pytest.raises(ClientError) as exc:
            sts.get_caller_identity()
        assert error_of(exc) == ("ServiceUnavailable", 503)
    assert scoped not in gw.rules
    sts.get_caller_identity()

    once = gw.fail(500, "InternalError", service="sts", times=1)
    with pytest.raises(ClientError):
        sts.get_caller_identity()
    sts.get_caller_identity()
    assert (once.hits, once.matched, once.exhausted) == (1, 2, True)


def test_probability_is_seeded_and_reproducible(gw: AwsGateway) -> None:
    sts = client(gw, "sts")

    def pattern() -> list[bool]:
        outcome = []
        for _ in range(40):
            try:
                sts.get_caller_identity()
                outcome.append(False)
            except ClientError:
                outcome.append(True)
        return outcome

    rule = gw.fail(500, "InternalError", service="sts", probability=0.5, seed=7)
    first = pattern()
    rule.remove()
    gw.fail(500, "InternalError", service="sts", probability=0.5, seed=7)
    assert pattern() == first
    assert 8 <= sum(first) <= 32
    assert gw.count(fault="InternalError") == 2 * sum(first)


def test_call_log_is_thread_safe(gw: AwsGateway) -> None:
    def work() -> None:
        sts = client(gw, "sts")
        for _ in range(25):
            sts.get_caller_identity()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    calls = gw.calls(action="GetCallerIdentity", status=200)
    assert len(calls) == 200
    assert len({c.seq for c in calls}) == 200


# --- CLI


def test_cli_writes_port_file_and_stops_on_sigterm(tmp_path: Path) -> None:
    port_file = tmp_path / "gateway.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "devtools.gateway", "--port-file", str(port_file), "--latency-ms", "5"],
        cwd=REPO_ROOT,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "gateway did not publish its port file"
            time.sleep(0.05)
        info = json.loads(port_file.read_text())
        assert info["url"].startswith("http://127.0.0.1:")
        assert info["moto_url"].startswith("http://127.0.0.1:")
        sts = boto3.client(
            "sts", endpoint_url=info["url"], region_name="us-east-1", config=NO_RETRY, **DUMMY_CREDENTIALS
        )
        assert sts.get_caller_identity()["Account"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert not port_file.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
