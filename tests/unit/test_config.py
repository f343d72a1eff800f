"""Settings from the Variable's JSON and the run's Params: defaults, validation and error messages."""

from __future__ import annotations

import json
from typing import Any

import pytest

from include.cmdb_inventory.config import (
    DEFAULT_INSTANCE_STATES,
    Account,
    ConfigError,
    Settings,
    known_regions,
    parse_accounts,
    parse_settings,
)

ACCOUNT_A = "111111111111"
ACCOUNT_B = "222222222222"
ACCOUNT_C = "333333333333"
BUCKET = "cmdb-inventory-bucket"


def minimal(**extra: Any) -> dict[str, Any]:
    """The smallest valid Variable, plus ``extra``."""
    return {"accounts": [ACCOUNT_A], "bucket": BUCKET, **extra}


def config_error(raw: Any, params: dict[str, Any] | None = None) -> ConfigError:
    """The ConfigError that parsing ``raw`` raises."""
    with pytest.raises(ConfigError) as info:
        parse_settings(raw, params)
    return info.value


def assert_names(err: ConfigError, key: str, *fragments: str) -> None:
    """The error is about ``key`` and its message names the key and every fragment (the bad value)."""
    text = str(err)
    assert err.key == key, text
    assert f"cmdb_ec2_inventory.{key}:" in text, text
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in {text!r}"


def shown(value: Any) -> str:
    """How an error message shows a bad value (JSON, ASCII-escaped)."""
    return json.dumps(value, ensure_ascii=True)


# --- defaults -------------------------------------------------------------------------------------------


def test_defaults_match_the_design_table() -> None:
    settings = parse_settings(minimal())
    assert isinstance(settings, Settings)
    assert settings.accounts == (Account(id=ACCOUNT_A, name=""),)
    assert settings.bucket == BUCKET
    assert settings.role_name == "CMDBDiscovery"
    assert settings.external_id is None
    assert settings.session_duration_seconds == 3600
    assert settings.regions == ()  # all enabled regions
    assert settings.exclude_regions == ()
    assert settings.prefix == "cmdb/ec2-inventory"
    assert settings.sns_topic_arn is None
    assert settings.aws_conn_id == "aws_default"
    # additional keys
    assert settings.hub_region is None
    assert settings.kms_key_id is None
    assert settings.expected_bucket_owner is None
    assert settings.instance_states == DEFAULT_INSTANCE_STATES
    assert "terminated" not in settings.instance_states
    assert settings.denied_regions_fail_coverage is True


def test_every_documented_key_is_read() -> None:
    raw = minimal(
        role_name="InventoryReader",
        external_id="cmdb-ext-id:42",
        session_duration_seconds=900,
        regions=["eu-west-1", "us-east-1", "eu-west-1"],
        exclude_regions=["ap-south-1"],
        prefix="team/inv",
        sns_topic_arn="arn:aws:sns:eu-west-1:999999999999:cmdb-inventory",
        aws_conn_id="aws_hub",
        hub_region="eu-west-1",
        kms_key_id="alias/cmdb-inventory",
        expected_bucket_owner="999999999999",
        instance_states=["running", "stopped", "running"],
        region_threads=4,
        max_attempts=3,
        denied_regions_fail_coverage=False,
    )
    settings = parse_settings(raw)
    assert settings.role_name == "InventoryReader"
    assert settings.external_id == "cmdb-ext-id:42"
    assert settings.session_duration_seconds == 900
    assert settings.regions == ("eu-west-1", "us-east-1")  # de-duplicated, order kept
    assert settings.exclude_regions == ("ap-south-1",)
    assert settings.prefix == "team/inv"
    assert settings.sns_topic_arn == "arn:aws:sns:eu-west-1:999999999999:cmdb-inventory"
    assert settings.aws_conn_id == "aws_hub"
    assert settings.hub_region == "eu-west-1"
    assert settings.kms_key_id == "alias/cmdb-inventory"
    assert settings.expected_bucket_owner == "999999999999"
    assert settings.instance_states == ("running", "stopped")
    assert settings.region_threads == 4
    assert settings.max_attempts == 3
    assert settings.denied_regions_fail_coverage is False


def test_json_string_is_accepted_like_the_decoded_object() -> None:
    raw = minimal(regions=["us-west-2"])
    assert parse_settings(json.dumps(raw)) == parse_settings(raw)


def test_known_regions_cover_every_partition() -> None:
    regions = known_regions()
    assert {"us-east-1", "eu-west-1", "cn-north-1", "us-gov-west-1"} <= regions
    assert "mars-north-1" not in regions


# --- accounts -------------------------------------------------------------------------------------------


def test_accounts_as_strings_and_objects() -> None:
    settings = parse_settings(
        minimal(
            accounts=[
                ACCOUNT_A,
                {"id": ACCOUNT_B, "name": "payments-prod"},
                {"id": ACCOUNT_C},
                {"id": "444444444444", "name": None},
            ]
        )
    )
    assert settings.accounts == (
        Account(ACCOUNT_A, ""),
        Account(ACCOUNT_B, "payments-prod"),
        Account(ACCOUNT_C, ""),
        Account("444444444444", ""),
    )
    assert settings.account(ACCOUNT_B).label == f"{ACCOUNT_B} (payments-prod)"
    assert settings.account(ACCOUNT_A).label == ACCOUNT_A
    # an account that is not configured is still labelled by its id
    assert settings.account("555555555555") == Account("555555555555")


def test_account_dict_round_trip() -> None:
    account = Account(ACCOUNT_B, "payments-prod")
    data = account.to_dict()
    assert data == {"id": ACCOUNT_B, "name": "payments-prod", "label": f"{ACCOUNT_B} (payments-prod)"}
    assert Account.from_dict(data) == account
    assert Account.from_dict({"id": ACCOUNT_A}) == Account(ACCOUNT_A, "")


def test_account_names_may_be_unicode() -> None:
    (account,) = parse_accounts([{"id": ACCOUNT_A, "name": "Zahlungsverkehr \u2013 Produktion 💶"}])
    assert account.name == "Zahlungsverkehr \u2013 Produktion 💶"


@pytest.mark.parametrize(
    "bad_id",
    [
        pytest.param("12345678901", id="11-digits"),
        pytest.param("1234567890123", id="13-digits"),
        pytest.param("12345678901a", id="letter"),
        pytest.param("abcdefghijkl", id="letters"),
        pytest.param("", id="empty"),
        pytest.param(" 123456789012", id="leading-space"),
        pytest.param("123456789012 ", id="trailing-space"),
        pytest.param("123456789012\n", id="trailing-newline"),
        pytest.param("1234-5678-9012", id="dashes"),
        pytest.param("١٢٣٤٥٦٧٨٩٠١٢", id="arabic-indic-digits"),
        pytest.param("".join(chr(0xFF10 + int(d)) for d in "123456789012"), id="fullwidth-digits"),
    ],
)
def test_malformed_account_id_strings(bad_id: str) -> None:
    err = config_error(minimal(accounts=[ACCOUNT_A, bad_id]))
    assert_names(err, "accounts[1]", shown(bad_id), "12 digits")


@pytest.mark.parametrize(
    "bad_id",
    [
        pytest.param(123456789012, id="int"),
        pytest.param(12345678901.0, id="float"),
        pytest.param(None, id="null"),
        pytest.param(True, id="bool"),
        pytest.param(["123456789012"], id="list"),
    ],
)
def test_account_ids_that_are_not_strings(bad_id: Any) -> None:
    err = config_error(minimal(accounts=[bad_id]))
    assert_names(err, "accounts[0]", shown(bad_id), "must be a string")


@pytest.mark.parametrize(
    ("item", "key", "fragments"),
    [
        pytest.param({"id": "12345"}, "accounts[0]", ['"12345"'], id="short-id-in-object"),
        pytest.param({"id": 123456789012}, "accounts[0]", ["123456789012"], id="int-id-in-object"),
        pytest.param({"name": "no-id"}, "accounts[0]", ["null"], id="missing-id"),
        pytest.param(
            {"id": ACCOUNT_A, "nmae": "typo"}, "accounts[0]", ['"nmae"', "id, name"], id="unknown-key"
        ),
        pytest.param({"id": ACCOUNT_A, "name": 42}, "accounts[0].name", ["42"], id="name-not-string"),
        pytest.param({"id": ACCOUNT_A, "name": "x" * 300}, "accounts[0].name", ["xxxx"], id="name-too-long"),
    ],
)
def test_malformed_account_objects(item: dict[str, Any], key: str, fragments: list[str]) -> None:
    err = config_error(minimal(accounts=[item]))
    assert_names(err, key, *fragments)


@pytest.mark.parametrize(
    "accounts",
    [
        pytest.param([ACCOUNT_A, ACCOUNT_A], id="strings"),
        pytest.param([ACCOUNT_A, {"id": ACCOUNT_A, "name": "again"}], id="string-and-object"),
        pytest.param([{"id": ACCOUNT_A}, ACCOUNT_B, {"id": ACCOUNT_A}], id="objects"),
    ],
)
def test_duplicated_account_ids(accounts: list[Any]) -> None:
    err = config_error(minimal(accounts=accounts))
    assert_names(err, f"accounts[{len(accounts) - 1}]", "duplicate", ACCOUNT_A)


def test_empty_account_list() -> None:
    assert_names(config_error(minimal(accounts=[])), "accounts", "empty")


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(ACCOUNT_A, id="string"),
        pytest.param({"id": ACCOUNT_A}, id="object"),
        pytest.param(123456789012, id="int"),
        pytest.param(None, id="null"),
    ],
)
def test_accounts_not_a_list(value: Any) -> None:
    err = config_error(minimal(accounts=value))
    assert_names(err, "accounts", "must be a list", shown(value)[:20])


def test_missing_accounts() -> None:
    assert_names(config_error({"bucket": BUCKET}), "accounts", "required")


# --- params override --------------------------------------------------------------------------------------


def test_params_accounts_replace_the_variables() -> None:
    settings = parse_settings(
        minimal(accounts=[ACCOUNT_A, ACCOUNT_B]), {"accounts": [ACCOUNT_C, {"id": ACCOUNT_B, "name": "b"}]}
    )
    assert [a.id for a in settings.accounts] == [ACCOUNT_C, ACCOUNT_B]
    assert settings.accounts[1].name == "b"


@pytest.mark.parametrize(
    "params",
    [
        pytest.param(None, id="no-params"),
        pytest.param({}, id="empty-params"),
        pytest.param({"accounts": None}, id="accounts-null"),
        pytest.param({"accounts": []}, id="accounts-empty"),
        pytest.param({"overwrite": True}, id="other-params-only"),
    ],
)
def test_empty_params_keep_the_variables_accounts(params: dict[str, Any] | None) -> None:
    settings = parse_settings(minimal(accounts=[ACCOUNT_A, ACCOUNT_B]), params)
    assert [a.id for a in settings.accounts] == [ACCOUNT_A, ACCOUNT_B]


def test_params_accounts_do_not_replace_the_variables_accounts() -> None:
    """The Params pick a subset of the expected accounts: without the Variable's there is nothing to pick."""
    err = config_error({"bucket": BUCKET}, {"accounts": [ACCOUNT_B]})
    assert_names(err, "accounts", "required", "Param")


def test_params_accounts_keep_the_configured_set() -> None:
    settings = parse_settings(minimal(accounts=[ACCOUNT_A, ACCOUNT_B]), {"accounts": [ACCOUNT_B]})
    assert settings.accounts == (Account(ACCOUNT_B),)
    assert settings.accounts_from_params is True
    assert settings.configured_accounts == (Account(ACCOUNT_A), Account(ACCOUNT_B))


@pytest.mark.parametrize(
    ("accounts", "key", "fragment"),
    [
        pytest.param(["12345"], "params.accounts[0]", '"12345"', id="short"),
        pytest.param([ACCOUNT_B, ACCOUNT_B], "params.accounts[1]", ACCOUNT_B, id="duplicate"),
        pytest.param(ACCOUNT_B, "params.accounts", ACCOUNT_B, id="not-a-list"),
    ],
)
def test_params_accounts_are_validated(accounts: Any, key: str, fragment: str) -> None:
    err = config_error(minimal(), {"accounts": accounts})
    assert_names(err, key, fragment)


# --- bucket -----------------------------------------------------------------------------------------------


def test_missing_bucket() -> None:
    assert_names(config_error({"accounts": [ACCOUNT_A]}), "bucket", "required")


@pytest.mark.parametrize(
    "bucket",
    [
        pytest.param("", id="empty"),
        pytest.param("ab", id="too-short"),
        pytest.param("a" * 64, id="too-long"),
        pytest.param("Cmdb-Inventory", id="uppercase"),
        pytest.param("cmdb_inventory", id="underscore"),
        pytest.param("-cmdb", id="leading-dash"),
        pytest.param("cmdb-", id="trailing-dash"),
        pytest.param("cmdb..inventory", id="double-dot"),
        pytest.param("xn--cmdb", id="xn-prefix"),
        pytest.param("cmdb inventory", id="space"),
        pytest.param("s3://cmdb-inventory", id="uri"),
        pytest.param("cmdb-inventory/prefix", id="slash"),
        pytest.param("cmdb-inventory\n", id="trailing-newline"),
    ],
)
def test_invalid_bucket_names(bucket: str) -> None:
    assert_names(config_error(minimal(bucket=bucket)), "bucket", shown(bucket))


@pytest.mark.parametrize("bucket", ["abc", "cmdb.inventory.example", "a" * 63, "0-cmdb-9"])
def test_valid_bucket_names(bucket: str) -> None:
    assert parse_settings(minimal(bucket=bucket)).bucket == bucket


@pytest.mark.parametrize("bucket", [42, True, ["cmdb-inventory"], {"name": "cmdb"}])
def test_bucket_of_wrong_type(bucket: Any) -> None:
    assert_names(config_error(minimal(bucket=bucket)), "bucket", "must be a string", shown(bucket))


# --- regions ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["regions", "exclude_regions"])
@pytest.mark.parametrize("bad", ["mars-north-1", "US-EAST-1", "us-east-1 ", "useast1", ""])
def test_unknown_region_names(key: str, bad: str) -> None:
    err = config_error(minimal(**{key: ["eu-west-1", bad]}))
    assert_names(err, key, "unknown region", shown(bad))


@pytest.mark.parametrize("key", ["regions", "exclude_regions"])
@pytest.mark.parametrize(
    "value",
    [
        pytest.param("us-east-1", id="string"),
        pytest.param(["us-east-1", 7], id="int-in-list"),
        pytest.param({"us-east-1": True}, id="object"),
    ],
)
def test_region_lists_of_wrong_type(key: str, value: Any) -> None:
    err = config_error(minimal(**{key: value}))
    assert_names(err, key, "list of region names", shown(value)[:20])


def test_empty_regions_list_is_refused() -> None:
    assert_names(config_error(minimal(regions=[])), "regions", "empty")


def test_empty_exclude_regions_is_fine() -> None:
    assert parse_settings(minimal(exclude_regions=[])).exclude_regions == ()


@pytest.mark.parametrize("bad", ["mars-north-1", "EU-WEST-1", ""])
def test_unknown_hub_region(bad: str) -> None:
    assert_names(config_error(minimal(hub_region=bad)), "hub_region", shown(bad))


@pytest.mark.parametrize("region", ["us-east-1", "cn-north-1", "us-gov-west-1"])
def test_regions_of_every_partition_are_known(region: str) -> None:
    settings = parse_settings(minimal(regions=[region], hub_region=region))
    assert settings.regions == (region,)
    assert settings.hub_region == region


# --- top level --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["acounts", "Bucket", "region", "session_duration", "overwrite"])
def test_unknown_top_level_keys(key: str) -> None:
    err = config_error(minimal(**{key: "x"}))
    assert_names(err, key, "unknown key")


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param([ACCOUNT_A], id="list"),
        pytest.param(42, id="int"),
        pytest.param(None, id="null"),
        pytest.param(True, id="bool"),
        pytest.param("[1, 2]", id="json-list-string"),
        pytest.param("null", id="json-null-string"),
        pytest.param('"just a string"', id="json-string-string"),
    ],
)
def test_non_object_json(raw: Any) -> None:
    err = config_error(raw)
    decoded = json.loads(raw) if isinstance(raw, str) else raw
    assert_names(err, "(root)", "JSON object", shown(decoded))


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("{", id="unterminated"),
        pytest.param("{'accounts': []}", id="single-quotes"),
        pytest.param('{"accounts": ["111111111111",]}', id="trailing-comma"),
        pytest.param("", id="empty"),
        pytest.param("accounts=111111111111", id="not-json"),
    ],
)
def test_invalid_json_string(raw: str) -> None:
    err = config_error(raw)
    assert_names(err, "(json)", "not valid JSON", "line 1")


# --- types and bounds -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        pytest.param("session_duration_seconds", True, "must be an integer", id="duration-bool"),
        pytest.param("session_duration_seconds", "3600", "must be an integer", id="duration-string"),
        pytest.param("session_duration_seconds", 3600.0, "must be an integer", id="duration-float"),
        pytest.param("session_duration_seconds", None, "must be an integer", id="duration-null"),
        pytest.param("region_threads", False, "must be an integer", id="threads-bool"),
        pytest.param("region_threads", "8", "must be an integer", id="threads-string"),
        pytest.param("max_attempts", [3], "must be an integer", id="attempts-list"),
        pytest.param("denied_regions_fail_coverage", "false", "true or false", id="denied-string"),
        pytest.param("denied_regions_fail_coverage", 0, "true or false", id="denied-int"),
        pytest.param("role_name", 5, "must be a string", id="role-int"),
        pytest.param("prefix", ["cmdb"], "must be a string", id="prefix-list"),
        pytest.param("sns_topic_arn", True, "must be a string", id="sns-bool"),
        pytest.param("aws_conn_id", 1, "must be a string", id="conn-int"),
        pytest.param("hub_region", 1, "must be a string", id="hub-int"),
        pytest.param("kms_key_id", {"id": "k"}, "must be a string", id="kms-object"),
        pytest.param("expected_bucket_owner", 123456789012, "must be a string", id="owner-int"),
    ],
)
def test_wrong_types(key: str, value: Any, fragment: str) -> None:
    err = config_error(minimal(**{key: value}))
    assert_names(err, key, fragment, shown(value))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        pytest.param("role_name", "", id="role-empty"),
        pytest.param("role_name", "role/with/slash", id="role-slash"),
        pytest.param("role_name", "r" * 65, id="role-too-long"),
        pytest.param("role_name", "Rôle", id="role-non-ascii"),
        pytest.param("role_name", "CMDBDiscovery\n", id="role-newline"),
        pytest.param("sns_topic_arn", "cmdb-inventory", id="sns-not-arn"),
        pytest.param("sns_topic_arn", "arn:aws:sqs:us-east-1:999999999999:q", id="sns-sqs-arn"),
        pytest.param("sns_topic_arn", "arn:aws:sns:us-east-1:9999:cmdb", id="sns-short-account"),
        pytest.param("aws_conn_id", "aws default", id="conn-space"),
        pytest.param("aws_conn_id", "", id="conn-empty"),
        pytest.param("kms_key_id", "my-key", id="kms-bare-name"),
        pytest.param("kms_key_id", "arn:aws:s3:::bucket", id="kms-wrong-arn"),
        pytest.param("expected_bucket_owner", "12345", id="owner-short"),
        pytest.param("expected_bucket_owner", "99999999999x", id="owner-letter"),
    ],
)
def test_invalid_string_values(key: str, value: str) -> None:
    err = config_error(minimal(**{key: value}))
    assert_names(err, key, "not valid", shown(value)[:60])


@pytest.mark.parametrize("value", [12345, "x", "has space"], ids=["int", "too-short", "space"])
def test_an_invalid_external_id_is_named_but_never_shown(value: Any) -> None:
    """The ExternalId is the secret half of the member roles' trust: its errors never echo it."""
    err = config_error(minimal(external_id=value))
    assert_names(err, "external_id")
    assert shown(value) not in str(err)
    if len(str(value)) > 2:
        assert str(value) not in str(err)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("kms_key_id", "alias/cmdb-inventory"),
        ("kms_key_id", "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"),
        ("kms_key_id", "arn:aws:kms:eu-west-1:999999999999:key/0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"),
        ("sns_topic_arn", "arn:aws-us-gov:sns:us-gov-west-1:999999999999:cmdb.fifo"),
        ("external_id", "tenant:cmdb/prod=1"),
        ("role_name", "path.like+role=name,x@y-z_"),
    ],
)
def test_valid_string_values(key: str, value: str) -> None:
    assert getattr(parse_settings(minimal(**{key: value})), key) == value


@pytest.mark.parametrize(("value", "ok"), [(899, False), (900, True), (43200, True), (43201, False)])
def test_session_duration_bounds(value: int, ok: bool) -> None:
    raw = minimal(session_duration_seconds=value)
    if ok:
        assert parse_settings(raw).session_duration_seconds == value
    else:
        assert_names(config_error(raw), "session_duration_seconds", "900", "43200", str(value))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("session_duration_seconds", 0),
        ("session_duration_seconds", -3600),
        ("region_threads", 0),
        ("region_threads", 65),
        ("max_attempts", 0),
        ("max_attempts", 21),
    ],
)
def test_integer_bounds(key: str, value: int) -> None:
    assert_names(config_error(minimal(**{key: value})), key, "between", str(value))


@pytest.mark.parametrize(
    "states",
    [
        pytest.param(["running", "exploded"], id="unknown-state"),
        pytest.param("running", id="string"),
        pytest.param([], id="empty"),
        pytest.param(["Running"], id="capitalised"),
    ],
)
def test_invalid_instance_states(states: Any) -> None:
    err = config_error(minimal(instance_states=states))
    assert_names(err, "instance_states", shown(states))


# --- prefix -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("cmdb", "cmdb"),
        ("/cmdb/ec2/", "cmdb/ec2"),
        ("cmdb/ec2-inventory/", "cmdb/ec2-inventory"),
        ("//cmdb", "cmdb"),
        ("team_a/inv.v2/(prod)", "team_a/inv.v2/(prod)"),
        ("", "cmdb/ec2-inventory"),
        (None, "cmdb/ec2-inventory"),
    ],
)
def test_prefix_normalisation(given: str | None, expected: str) -> None:
    assert parse_settings(minimal(prefix=given)).prefix == expected


@pytest.mark.parametrize(
    "prefix",
    [
        pytest.param("..", id="dotdot"),
        pytest.param("cmdb/../other", id="dotdot-inside"),
        pytest.param("cmdb/..", id="dotdot-last"),
        pytest.param("./cmdb", id="dot"),
        pytest.param("cmdb//inventory", id="double-slash"),
        pytest.param("/", id="only-slash"),
        pytest.param("cmdb inventory", id="space"),
        pytest.param("cmdb\\inventory", id="backslash"),
        pytest.param("cmdb\ninventory", id="newline-inside"),
        pytest.param("cmdb\n", id="trailing-newline"),
        pytest.param("cmdb/ds=2024-01-01", id="equals"),
        pytest.param("cmdb/üñí", id="non-ascii"),
        pytest.param("c" * 513, id="too-long"),
    ],
)
def test_unsafe_prefixes(prefix: str) -> None:
    err = config_error(minimal(prefix=prefix))
    assert_names(err, "prefix", "not a safe S3 prefix", shown(prefix.strip("/"))[:40])
