"""
One redactor (``include/cmdb_inventory/aws/redaction.py``) for every log filter and every scrubbing path.

Property tests embed generated access key ids, secret keys and session tokens in each form botocore, boto3,
Airflow and Python print them (``key=value``, ``key: value``, JSON, escaped JSON, reprs, XML, query strings,
headers), under every spelling of the key's name; none may survive. Then the paths that carry AWS text
onwards, on the emulated organisation: an AWS error message full of secrets through a real scan (the
ledger, the transient error's text), a failure alert, and the configuration's validation errors, which say
which key is wrong and why without echoing ``external_id`` or session-tag values.
"""

from __future__ import annotations

import json
import logging
import string
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from include.cmdb_inventory.aws import redaction
from include.cmdb_inventory.aws.redaction import KEY_ID_MARK, SECRET_MARK, redact, scrub
from include.cmdb_inventory.config import ConfigError, parse_settings

BASE64 = string.ascii_letters + string.digits + "+/"
key_ids = st.builds(
    lambda prefix, rest: prefix + rest,
    st.sampled_from(["AKIA", "ASIA"]),
    st.text(alphabet=string.ascii_uppercase + string.digits, min_size=16, max_size=16),
)
secrets = st.text(alphabet=BASE64, min_size=40, max_size=40)
# Session tokens: base64 of any length STS uses, with or without STS's own prefix, padded or not.
tokens = st.builds(
    lambda prefix, body, pad: prefix + body + pad,
    st.sampled_from(["", "IQoJb3JpZ2luX2VjE", "FQoGZXIvYXdzEBYaD"]),
    st.text(alphabet=BASE64, min_size=24, max_size=600),
    st.sampled_from(["", "=", "=="]),
)
# Text around a secret: anything but what would glue to a key name or a value.
# (fixed words: generated text could be the very secret a test looks for).
around = st.lists(
    st.sampled_from(["DEBUG", "botocore.endpoint:", "Response body:", "(retry)", "sent", "\n", ",", "."]),
    max_size=6,
).map(lambda words: f" {' '.join(words)} ")

SECRET_NAMES = [
    "SecretAccessKey",
    "secretAccessKey",
    "secret_access_key",
    "aws_secret_access_key",
    "AWS_SECRET_ACCESS_KEY",
    "secret_key",
    "SecretKey",
    "secret",
    "password",
]
TOKEN_NAMES = [
    "SessionToken",
    "sessionToken",
    "session_token",
    "aws_session_token",
    "AWS_SESSION_TOKEN",
    "X-Amz-Security-Token",
    "x-amz-security-token",
    "SecurityToken",
    "aws_security_token",
    "token",
]
KEY_ID_NAMES = [
    "AccessKeyId",
    "accessKeyId",
    "access_key_id",
    "aws_access_key_id",
    "AWS_ACCESS_KEY_ID",
    "access_key",
    "AWSAccessKeyId",
    "X-Amz-Credential",
    "Credential",
]
XML_NAMES = {"SecretAccessKey", "SessionToken", "AccessKeyId"}

FORMS: dict[str, Callable[[str, str], str]] = {
    "key=value": lambda k, v: f"{k}={v}",
    "key: value": lambda k, v: f"{k}: {v}",
    "header line": lambda k, v: f"{k}:{v}\n",
    "kwarg repr": lambda k, v: f"{k}={v!r}",
    "double-quoted": lambda k, v: f'{k}="{v}"',
    "yaml quoted": lambda k, v: f"{k}: '{v}'",
    "json": lambda k, v: json.dumps({k: v, "other": 1}),
    "escaped json": lambda k, v: json.dumps(json.dumps({k: v})),
    "twice escaped json": lambda k, v: json.dumps(json.dumps(json.dumps({k: v}))),
    "dict repr": lambda k, v: repr({k: v, "Other": "x"}),
    "bytes header repr": lambda k, v: repr({k: v.encode(), "Host": b"sts.amazonaws.com"}),
    "query string": lambda k, v: f"https://s3.amazonaws.com/b/k?a=1&{k}={quote(v, safe='')}&b=2",
    "query string, raw": lambda k, v: f"?{k}={v}&X-Amz-Date=20261201T000000Z",
}


def assert_gone(value: str, text: str, mark: str) -> None:
    out = redact(text)
    assert value not in out, (text, out)
    assert quote(value, safe="") not in out, (text, out)
    assert mark in out, out
    assert redact(out) == out  # idempotent: a second pass changes nothing


@settings(max_examples=400, deadline=None)  # no deadline: a loaded CI machine is not a failure
@given(
    secret=secrets,
    name=st.sampled_from(SECRET_NAMES),
    form=st.sampled_from(sorted(FORMS)),
    before=around,
    after=around,
)
def test_secret_keys_are_redacted_in_every_form_and_spelling(
    secret: str, name: str, form: str, before: str, after: str
) -> None:
    assert_gone(secret, before + FORMS[form](name, secret) + after, SECRET_MARK)
    if name in XML_NAMES:  # STS's and IAM's answers
        assert_gone(secret, f"<Credentials><{name}>{secret}</{name}></Credentials>", SECRET_MARK)


@settings(max_examples=400, deadline=None)
@given(
    token=tokens,
    name=st.sampled_from(TOKEN_NAMES),
    form=st.sampled_from(sorted(FORMS)),
    before=around,
    after=around,
)
def test_session_tokens_are_redacted_in_every_form_and_spelling(
    token: str, name: str, form: str, before: str, after: str
) -> None:
    assert_gone(token, before + FORMS[form](name, token) + after, SECRET_MARK)
    if name in XML_NAMES:  # STS's and IAM's answers
        assert_gone(token, f"<Credentials><{name}>{token}</{name}></Credentials>", SECRET_MARK)


@settings(max_examples=300, deadline=None)
@given(
    key_id=key_ids | st.from_regex(r"\A[a-z]{3,10}-?[0-9][A-Za-z0-9]{2,20}\Z"),  # any login, not only AKIA...
    name=st.sampled_from(KEY_ID_NAMES),
    form=st.sampled_from(sorted(FORMS)),
    before=around,
)
def test_access_key_ids_are_redacted_in_every_form_and_spelling(
    key_id: str, name: str, form: str, before: str
) -> None:
    assert_gone(key_id, before + FORMS[form](name, key_id), KEY_ID_MARK)
    if name in XML_NAMES:  # STS's and IAM's answers
        assert_gone(key_id, f"<Credentials><{name}>{key_id}</{name}></Credentials>", KEY_ID_MARK)


@settings(max_examples=200, deadline=None)
@given(
    key_id=key_ids,
    secret=secrets,
    token=tokens,
    signature=st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
)
def test_what_botocore_and_boto3_print_is_redacted(
    key_id: str, secret: str, token: str, signature: str
) -> None:
    """STS's XML answer, a parsed answer's repr, frozen credentials, a signed request's headers and URL."""
    from botocore.credentials import ReadOnlyCredentials

    scope = "20261201/us-east-1/sts/aws4_request"
    texts = [
        f"<AssumeRoleResult><Credentials><AccessKeyId>{key_id}</AccessKeyId><SecretAccessKey>{secret}"
        f"</SecretAccessKey><SessionToken>{token}</SessionToken><Expiration>2026-12-01T01:00:00Z</Expiration>"
        "</Credentials></AssumeRoleResult>",
        repr({"Credentials": {"AccessKeyId": key_id, "SecretAccessKey": secret, "SessionToken": token}}),
        repr(ReadOnlyCredentials(key_id, secret, token, None)),
        repr(
            {
                "X-Amz-Date": b"20261201T000000Z",
                "X-Amz-Security-Token": token.encode(),
                "Authorization": f"AWS4-HMAC-SHA256 Credential={key_id}/{scope}, "
                f"SignedHeaders=host;x-amz-date, Signature={signature}".encode(),
            }
        ),
        "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        f"&X-Amz-Credential={quote(key_id + '/' + scope, safe='')}"
        f"&X-Amz-Security-Token={quote(token, safe='')}&X-Amz-Signature={signature}",
        f"Authorization: AWS {key_id}:{quote(secret[:28], safe='')}",  # SigV2
        f"aws://{key_id}:{quote(secret, safe='')}@/?region_name=eu-west-1",  # an Airflow connection URI
        json.dumps({"conn_type": "aws", "login": key_id, "password": secret}),
    ]
    for text in texts:
        out = redact(text)
        for value in (key_id, secret, token, signature, quote(token, safe=""), quote(secret, safe="")):
            assert value not in out, (value[:10], out)


@pytest.mark.parametrize(
    "text",
    [
        "account 111111111111 (Payer) region eu-west-1: REGION_DENIED UnauthorizedOperation: explicit deny",
        "SignatureDoesNotMatch: The request signature we calculated does not match the signature you sent",
        "The security token included in the request is expired",
        "DescribeInstances NextToken=eyJ2IjoxfQ paginated; 1000 reservations",
        "s3://example-corp-cmdb/cmdb/ec2-inventory/ds=2026-11-20/ec2_inventory.csv: 403",
        "not authorized to perform: sts:AssumeRole on resource: arn:aws:iam::222222222222:role/CMDBDiscovery",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text) == text


def test_scrub_redacts_then_cuts() -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    for text in (f"aws_secret_access_key='{secret}' " + "x" * 600, "x" * 470 + f" SecretAccessKey={secret}"):
        out = scrub(text, limit=500)
        assert len(out) <= 500
        assert secret[:8] not in out


def test_hooks_and_coverage_use_the_one_redactor(
    hub_connection: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ledger's text is redaction's scrub; the hook puts redaction's filter on botocore's loggers."""
    import botocore.endpoint
    from botocore.exceptions import ClientError

    from include.cmdb_inventory.aws import errors
    from include.cmdb_inventory.aws.hooks import CrossAccountHook

    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    leaky = f"denied for AKIAIOSFODNN7EXAMPLE (aws_secret_access_key={secret}) " + "x" * 600
    entry = errors.error_of(ClientError({"Error": {"Code": "AccessDenied", "Message": leaky}}, "Describe"))
    assert entry == {"code": "AccessDenied", "message": scrub(leaky)}
    assert secret not in entry["message"]
    assert "AKIAIOSFODNN7EXAMPLE" not in entry["message"]

    # A process where no task has guarded the logs yet: the hook's first AssumeRole does.
    logger = logging.getLogger(botocore.endpoint.__name__)
    monkeypatch.setattr(logger, "filters", [f for f in logger.filters if f is not redaction.LOG_FILTER])
    CrossAccountHook(account_id="520000000009").assume()
    assert redaction.LOG_FILTER in logger.filters


def test_the_log_filter_sits_on_every_aws_module_logger() -> None:
    import botocore.endpoint
    import botocore.parsers
    import botocore.retries.standard
    import s3transfer.tasks

    redaction.guard_botocore_logs()
    modules = [botocore.endpoint, botocore.parsers, botocore.retries.standard, s3transfer.tasks]
    for module in modules:
        logger = next(v for v in vars(module).values() if isinstance(v, logging.Logger))
        assert redaction.LOG_FILTER in logger.filters, logger.name
    names = redaction.aws_logger_names()
    assert {
        "botocore.auth",
        "botocore.credentials",
        "boto3.resources.action",
        "urllib3.connectionpool",
    } <= set(names)


def test_the_log_filter_redacts_messages_arguments_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    secret, token = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "FQoGZXIvYXdzEBYaD" + "x" * 60
    redaction.guard_botocore_logs()
    logger = logging.getLogger("botocore.endpoint")
    with caplog.at_level(logging.DEBUG, logger="botocore.endpoint"):
        logger.debug("Response body: %s", {"SecretAccessKey": secret})
        try:
            raise RuntimeError(f"boom aws_session_token={token}")
        except RuntimeError:
            logger.exception("failed")
    text = "\n".join(caplog.messages) + "".join(r.exc_text or "" for r in caplog.records)
    assert secret not in text
    assert token not in text
    assert text.count(SECRET_MARK) == 2


# --------------------------------------------------------------------------- the scrubbing paths, on the wire

LEAKY_ACCOUNT = "540000000001"
LEAK_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYLEAKYKEY1"
LEAK_TOKEN = "IQoJb3JpZ2luX2VjEJr" + "Zm9yIHRlc3Rz" * 12
LEAK_KEY_ID = "ASIAZZZZLEAKY0000001"
# An AWS error message that quotes a request's credentials, as a misbehaving proxy or SDK echo might.
LEAKY_MESSAGE = (
    f'denied; debug: aws_secret_access_key=\'{LEAK_SECRET}\', \\"SessionToken\\": \\"{LEAK_TOKEN}\\", '
    f"Credential={LEAK_KEY_ID}/20261201/eu-west-1/ec2/aws4_request"
)
LEAKS = (LEAK_SECRET, LEAK_TOKEN, LEAK_KEY_ID)


@pytest.fixture
def leaky_org(
    moto_url: str, monkeypatch: pytest.MonkeyPatch, hub_env_factory: Callable[..., dict[str, str]]
) -> Any:
    """The gateway answering EC2 with errors whose messages carry credentials; hub connection through it."""
    from devtools.gateway import AwsGateway

    with AwsGateway(upstream=moto_url) as gw:
        for name, value in hub_env_factory(gw.url).items():
            monkeypatch.setenv(name, value)
        gw.fail(403, "UnauthorizedOperation", LEAKY_MESSAGE, action="DescribeInstances", region="eu-west-1")
        gw.fail(400, "InternalFailure", LEAKY_MESSAGE, action="DescribeInstances", region="us-west-2")
        yield gw


def test_aws_error_text_reaches_ledger_and_retry_message_redacted(leaky_org: Any, moto_url: str) -> None:
    import boto3

    from include.cmdb_inventory import inventory
    from include.cmdb_inventory.config import Account
    from include.cmdb_inventory.run import RunInfo, store_for

    bucket = "cmdb-redaction-test"
    raw = boto3.client(
        "s3", endpoint_url=moto_url, region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b"
    )
    raw.create_bucket(Bucket=bucket)
    settings = parse_settings(
        {
            "accounts": [LEAKY_ACCOUNT],
            "bucket": bucket,
            "regions": ["eu-west-1", "us-west-2"],
            "max_attempts": 1,
        }
    )
    run = RunInfo("cmdb_ec2_inventory", "manual__2026-12-01T00:00:00+00:00", "2026-12-01", "2026-12-01")
    with pytest.raises(inventory.TransientScanError) as retried:
        inventory.scan_account(settings, run, Account(LEAKY_ACCOUNT), store_for(settings))
    stored = [
        raw.get_object(Bucket=bucket, Key=item["Key"])["Body"].read().decode()
        for item in raw.list_objects_v2(Bucket=bucket)["Contents"]
        if item["Key"].endswith(".json")
    ]
    [status] = [json.loads(text) for text in stored]
    messages = {r["region"]: r["error"]["message"] for r in status["regions"]}
    assert set(messages) == {"eu-west-1", "us-west-2"}
    assert all("denied; debug:" in m for m in messages.values())  # the message is kept, its secrets are not
    for text in [str(retried.value), *stored]:
        for leak in LEAKS:
            assert leak not in text


def test_failure_alert_is_redacted(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from include.cmdb_inventory.alerts import TaskFailureNotifier
    from include.cmdb_inventory.config import VARIABLE_KEY

    monkeypatch.setenv(
        f"AIRFLOW_VAR_{VARIABLE_KEY.upper()}", json.dumps({"accounts": [LEAKY_ACCOUNT], "bucket": "b-cmdb"})
    )

    class TaskInstance:
        task_id, try_number, rendered_map_index = "scan_account", 2, LEAKY_ACCOUNT

    class DagRun:
        run_id = "manual__2026-12-01T00:00:00+00:00"

    context = {
        "ti": TaskInstance(),
        "dag_run": DagRun(),
        "params": {},
        "exception": RuntimeError(LEAKY_MESSAGE),
    }
    with caplog.at_level(logging.INFO):
        TaskFailureNotifier().notify(context)  # no topic configured: the alert is logged
    alert = "\n".join(r.getMessage() for r in caplog.records if "scan_account" in r.getMessage())
    assert LEAKY_ACCOUNT in alert
    assert "denied; debug:" in alert
    for leak in LEAKS:
        assert leak not in alert


# --------------------------------------------------------------------------- validation errors

BASE: dict[str, Any] = {"accounts": ["222222222222"], "bucket": "example-corp-cmdb"}
MARKER = "Zq7Xv"  # in every generated bad value, so a message that shows it is caught
bad_chars = st.sampled_from([" ", "\n", "'", '"', "é", "#", "!", "*", "\x00", "{", "日"])
bad_tag_chars = st.sampled_from(
    ["\n", "'", '"', "#", "!", "*", "\x00", "{", ";", "\u202e"]
)  # spaces, letters: fine


def _invalid_external_ids() -> st.SearchStrategy[Any]:
    allowed = string.ascii_letters + string.digits + "+=,.@:/-_"
    word = st.text(alphabet=allowed, min_size=1, max_size=20)
    return st.one_of(
        st.builds(lambda a, c, b: f"{a}{MARKER}{c}{b}", word, bad_chars, word),
        st.builds(lambda a: MARKER + "x" * a, st.integers(min_value=1220, max_value=1400)),
        st.just([f"{MARKER}-in-a-list"]),
        st.just({"id": MARKER}),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_invalid_external_ids())
def test_external_id_errors_say_why_without_the_value(value: Any) -> None:
    if (
        isinstance(value, str)
        and len(value) <= 1224
        and all(c.isascii() and (c.isalnum() or c in "+=,.@:/-_") for c in value)
    ):
        return  # hypothesis built a valid one
    with pytest.raises(ConfigError) as excinfo:
        parse_settings({**BASE, "external_id": value})
    text = str(excinfo.value)
    assert excinfo.value.key == "external_id"
    assert "cmdb_ec2_inventory.external_id:" in text
    assert MARKER not in text
    assert "not shown" in text


@settings(max_examples=150, deadline=None)
@given(
    value=st.one_of(
        st.builds(
            lambda a, c: f"{MARKER}{a}{c}", st.text(alphabet=string.ascii_letters, max_size=20), bad_tag_chars
        ),
        st.builds(lambda n: MARKER + "v" * n, st.integers(min_value=252, max_value=400)),
        st.just(["x", MARKER]),
        st.just({MARKER: 1}),
    )
)
def test_session_tag_errors_name_the_tag_without_its_value(value: Any) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_settings({**BASE, "session_tags": {"team": "cmdb", "cost-centre": value}})
    text = str(excinfo.value)
    assert excinfo.value.key == "session_tags"
    assert '"cost-centre"' in text  # which tag
    assert MARKER not in text


def test_a_session_tags_value_of_the_wrong_type_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_settings({**BASE, "session_tags": f"team={MARKER}"})
    assert MARKER not in str(excinfo.value)
    assert "got a string" in str(excinfo.value)


def test_the_coverage_page_shows_the_config_error_without_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    from include.cmdb_inventory.config import VARIABLE_KEY
    from include.cmdb_inventory.ui.coverage_source import SourceError, location_from_variable

    monkeypatch.setenv(
        f"AIRFLOW_VAR_{VARIABLE_KEY.upper()}", json.dumps({**BASE, "external_id": f"tenant {MARKER}"})
    )
    with pytest.raises(SourceError) as excinfo:
        location_from_variable()
    assert "external_id" in excinfo.value.detail
    assert "character 7 is not allowed" in excinfo.value.detail
    assert MARKER not in excinfo.value.detail
