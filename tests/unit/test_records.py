"""The CSV schema: column order, records from DescribeInstances, neutralisation and an RFC 4180 round trip."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from include.cmdb_inventory.config import Account
from include.cmdb_inventory.contract import (
    COLUMNS,
    LIST_COLUMNS,
    LIST_SEPARATOR,
    SCHEMA_VERSION,
    columns,
)
from include.cmdb_inventory.records import (
    FORMULA_TRIGGERS,
    Record,
    csv_row,
    instance_record,
    iso_utc,
    neutralise,
    sort_key,
)
from include.cmdb_inventory.storage import rows_to_csv

ACCOUNT = "111111111111"
REGION = "eu-west-1"
COLLECTED_AT = "2024-03-02T01:00:00Z"

DESIGN_COLUMNS = (
    "AccountName",
    "AvailabilityZone",
    "State",
    "InstanceType",
    "Platform",
    "PrivateIpAddress",
    "PublicIpAddress",
    "VpcId",
    "SubnetId",
    "ImageId",
    "LaunchTime",
    "Tags",
    "CollectedAt",
)
# Schema 2 (issue 9) appends these, in this order, after every schema-1 column.
SCHEMA_2_COLUMNS = (
    "PlatformDetails",
    "Architecture",
    "InstanceLifecycle",
    "Tenancy",
    "IamInstanceProfileArn",
    "SecurityGroupIds",
    "EbsVolumeIds",
    "KeyName",
    "ImdsV2Required",
    "PrivateDnsName",
    "Ipv6Addresses",
    "OutpostArn",
    "ReservationId",
    "OwnerId",
    "AccountOuPath",
    "AccountTags",
)


def described_instance(**overrides: Any) -> dict[str, Any]:
    """One instance as boto3's DescribeInstances returns it (a realistic subset of its fields)."""
    instance: dict[str, Any] = {
        "AmiLaunchIndex": 0,
        "ImageId": "ami-0c55b159cbfafe1f0",
        "InstanceId": "i-0123456789abcdef0",
        "InstanceType": "t3.micro",
        "LaunchTime": datetime(2024, 3, 1, 12, 30, 45, tzinfo=UTC),
        "Monitoring": {"State": "disabled"},
        "Placement": {"AvailabilityZone": "eu-west-1b", "GroupName": "", "Tenancy": "default"},
        "PrivateDnsName": "ip-10-0-1-12.eu-west-1.compute.internal",
        "PrivateIpAddress": "10.0.1.12",
        "PublicIpAddress": "54.170.1.2",
        "State": {"Code": 16, "Name": "running"},
        "SubnetId": "subnet-0a1b2c3d",
        "VpcId": "vpc-0a1b2c3d",
        "Architecture": "x86_64",
        "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {"VolumeId": "vol-1"}}],
        "MetadataOptions": {"State": "applied", "HttpTokens": "optional", "HttpEndpoint": "enabled"},
        "NetworkInterfaces": [{"NetworkInterfaceId": "eni-1", "PrivateIpAddress": "10.0.1.12"}],
        "SecurityGroups": [{"GroupName": "web", "GroupId": "sg-1"}],
        "Tags": [{"Key": "Name", "Value": "web-1"}, {"Key": "Env", "Value": "prod"}],
        "PlatformDetails": "Linux/UNIX",
        "UsageOperation": "RunInstances",
    }
    instance.update(overrides)
    return instance


def record_of(instance: Mapping[str, Any], name: str = "payments-prod") -> Record:
    return instance_record(Account(ACCOUNT, name), REGION, instance, COLLECTED_AT)[0]


def csv_text(records: Sequence[Record], header: bool = True) -> str:
    out = io.StringIO(newline="")
    rows_to_csv(records, out, header=header)
    return out.getvalue()


def parse(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


# --- columns ----------------------------------------------------------------------------------------------


def test_first_four_columns_are_the_2015_scripts() -> None:
    assert COLUMNS[:4] == ("Account", "Region", "InstanceId", "Name")


def test_then_every_documented_column_in_order() -> None:
    # Schema 1's columns stay where they were (existing imports read them by position); schema 2's follow.
    assert COLUMNS[4 : 4 + len(DESIGN_COLUMNS)] == DESIGN_COLUMNS
    assert COLUMNS[4 + len(DESIGN_COLUMNS) :] == SCHEMA_2_COLUMNS
    assert len(COLUMNS) == 4 + 13 + 16
    assert len(set(COLUMNS)) == len(COLUMNS)
    assert SCHEMA_VERSION == 2


def test_the_list_columns_are_the_three_id_lists() -> None:
    assert LIST_COLUMNS == ("SecurityGroupIds", "EbsVolumeIds", "Ipv6Addresses")
    assert LIST_SEPARATOR == ";"


def test_tag_columns_come_after_the_contracts_columns_in_the_configured_order() -> None:
    assert columns(["Owner", "CostCenter"]) == (*COLUMNS, "Owner", "CostCenter")
    assert columns() == COLUMNS


def test_record_keys_are_the_columns_in_order() -> None:
    assert tuple(record_of(described_instance())) == COLUMNS


# --- instance_record --------------------------------------------------------------------------------------


def test_record_of_a_running_linux_instance() -> None:
    record = record_of(described_instance())
    assert record == {
        "Account": ACCOUNT,
        "Region": REGION,
        "InstanceId": "i-0123456789abcdef0",
        "Name": "web-1",
        "AccountName": "payments-prod",
        "AvailabilityZone": "eu-west-1b",
        "State": "running",
        "InstanceType": "t3.micro",
        "Platform": "Linux/UNIX",
        "PrivateIpAddress": "10.0.1.12",
        "PublicIpAddress": "54.170.1.2",
        "VpcId": "vpc-0a1b2c3d",
        "SubnetId": "subnet-0a1b2c3d",
        "ImageId": "ami-0c55b159cbfafe1f0",
        "LaunchTime": "2024-03-01T12:30:45Z",
        "Tags": '{"Env":"prod","Name":"web-1"}',
        "CollectedAt": COLLECTED_AT,
        "PlatformDetails": "Linux/UNIX",
        "Architecture": "x86_64",
        "InstanceLifecycle": "on-demand",
        "Tenancy": "default",
        "IamInstanceProfileArn": "",
        "SecurityGroupIds": "sg-1",
        "EbsVolumeIds": "vol-1",
        "KeyName": "",
        "ImdsV2Required": "false",
        "PrivateDnsName": "ip-10-0-1-12.eu-west-1.compute.internal",
        "Ipv6Addresses": "",
        "OutpostArn": "",
        "ReservationId": "",
        "OwnerId": "",
        "AccountOuPath": "",
        "AccountTags": "",
    }
    assert all(isinstance(v, str) for v in record.values())


@pytest.mark.parametrize(
    ("launch_time", "expected"),
    [
        pytest.param(datetime(2024, 3, 1, 12, 30, 45, tzinfo=UTC), "2024-03-01T12:30:45Z", id="utc"),
        pytest.param(
            datetime(2024, 3, 1, 12, 30, 45, tzinfo=timezone(timedelta(hours=2))),
            "2024-03-01T10:30:45Z",
            id="plus-two",
        ),
        pytest.param(
            datetime(2024, 2, 29, 23, 30, tzinfo=timezone(timedelta(hours=-5))),
            "2024-03-01T04:30:00Z",
            id="minus-five-crosses-midnight",
        ),
        pytest.param(datetime(2024, 3, 1, 12, 30, 45), "2024-03-01T12:30:45Z", id="naive-is-utc"),
        pytest.param(
            datetime(2024, 3, 1, 12, 30, 45, 999999, tzinfo=UTC), "2024-03-01T12:30:45Z", id="micro"
        ),
        pytest.param("2024-03-01T12:30:45.000Z", "2024-03-01T12:30:45Z", id="string-z"),
        pytest.param("2024-03-01T14:30:45+02:00", "2024-03-01T12:30:45Z", id="string-offset"),
        pytest.param(None, "", id="none"),
    ],
)
def test_launch_time_is_iso_utc(launch_time: datetime | str | None, expected: str) -> None:
    assert record_of(described_instance(LaunchTime=launch_time))["LaunchTime"] == expected
    assert iso_utc(launch_time) == expected


def test_missing_optional_fields_are_empty() -> None:
    instance = {
        "InstanceId": "i-0fedcba9876543210",
        "State": {"Code": 80, "Name": "stopped"},
        "InstanceType": "m5.large",
        "Placement": {"AvailabilityZone": "eu-west-1a"},
    }
    record = record_of(instance, name="")
    assert record["InstanceId"] == "i-0fedcba9876543210"
    assert record["State"] == "stopped"
    for column in (
        "Name",
        "AccountName",
        "Platform",
        "PrivateIpAddress",
        "PublicIpAddress",
        "VpcId",
        "SubnetId",
        "ImageId",
        "LaunchTime",
    ):
        assert record[column] == "", column
    assert record["Tags"] == "{}"
    assert tuple(record) == COLUMNS


def test_bare_minimum_instance() -> None:
    record = record_of({"InstanceId": "i-1"})
    assert record["InstanceId"] == "i-1"
    assert record["State"] == ""
    assert record["AvailabilityZone"] == ""


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param({"Platform": "windows", "PlatformDetails": "Windows"}, "Windows", id="both"),
        pytest.param({"Platform": "windows", "PlatformDetails": None}, "windows", id="platform-only"),
        pytest.param(
            {"PlatformDetails": "Windows with SQL Server Standard"},
            "Windows with SQL Server Standard",
            id="details",
        ),
        pytest.param({"PlatformDetails": ""}, "", id="none"),
    ],
)
def test_platform(fields: dict[str, Any], expected: str) -> None:
    assert record_of(described_instance(**fields))["Platform"] == expected


@pytest.mark.parametrize(
    "tags",
    [pytest.param(None, id="no-key"), pytest.param([], id="empty-list")],
)
def test_no_tags(tags: list[dict[str, str]] | None) -> None:
    instance = described_instance()
    if tags is None:
        del instance["Tags"]
    else:
        instance["Tags"] = tags
    record = record_of(instance)
    assert record["Name"] == ""
    assert record["Tags"] == "{}"


def test_tags_are_a_json_object_with_sorted_keys() -> None:
    tags = [
        {"Key": "zeta", "Value": "last"},
        {"Key": "Name", "Value": "db-1"},
        {"Key": "aws:cloudformation:stack-name", "Value": "payments"},
        {"Key": "Ümlaut", "Value": "ja"},
        {"Key": "Empty", "Value": ""},
        {"Key": "Cost Center", "Value": '4711 "core"'},
    ]
    record = record_of(described_instance(Tags=tags))
    decoded = json.loads(record["Tags"])
    assert isinstance(decoded, dict)
    assert decoded == {t["Key"]: t["Value"] for t in tags}
    assert list(decoded) == sorted(decoded)
    assert "Ümlaut" in record["Tags"]  # UTF-8, not \u escapes
    assert record["Name"] == "db-1"


def test_name_comes_from_the_name_tag_only() -> None:
    tags = [{"Key": "name", "Value": "lowercase"}, {"Key": "Hostname", "Value": "h"}]
    assert record_of(described_instance(Tags=tags))["Name"] == ""


# --- neutralise -------------------------------------------------------------------------------------------


def test_the_triggers_are_owasps() -> None:
    assert set(FORMULA_TRIGGERS) == {"=", "+", "-", "@", "\t", "\r"}


@pytest.mark.parametrize("trigger", ["=", "+", "-", "@", "\t", "\r"])
@pytest.mark.parametrize("rest", ["", "1+1", 'HYPERLINK("http://x")', "cmd|' /C calc'!A0", " "])
def test_every_trigger_gets_a_leading_quote(trigger: str, rest: str) -> None:
    assert neutralise(trigger + rest) == "'" + trigger + rest


@pytest.mark.parametrize(
    "value",
    [
        "",
        "web-1",
        "i-0123456789abcdef0",
        "10.0.1.12",
        " =leading space",
        "a=b",
        "'already quoted",
        '{"Env":"prod"}',
        "\nnewline first",
        "x-y+z@w",
        "サーバー",
        "🚀 rocket",
        "\u200fright-to-left",
        "\uff1dfullwidth equals",
    ],
)
def test_safe_values_are_untouched(value: str) -> None:
    assert neutralise(value) == value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a\x00b", "ab"),
        ("\x00", ""),
        ("\x00\x00web\x00", "web"),
        ("\x00=1+1", "'=1+1"),  # a NUL cannot hide a trigger
        ("=\x00", "'="),
    ],
)
def test_nul_is_removed(value: str, expected: str) -> None:
    assert neutralise(value) == expected


def test_csv_row_neutralises_every_cell_in_column_order() -> None:
    record = record_of(described_instance(Tags=[{"Key": "Name", "Value": "=cmd()"}]), name="@ops")
    row = csv_row(record)
    assert len(row) == len(COLUMNS)
    assert row[COLUMNS.index("Name")] == "'=cmd()"
    assert row[COLUMNS.index("AccountName")] == "'@ops"
    assert row[COLUMNS.index("Account")] == ACCOUNT


def test_csv_row_of_a_partial_record() -> None:
    assert csv_row({"Account": ACCOUNT}) == [ACCOUNT] + [""] * (len(COLUMNS) - 1)


def test_sort_key() -> None:
    records = [
        {"Account": "2", "Region": "a", "InstanceId": "i-1"},
        {"Account": "1", "Region": "b", "InstanceId": "i-0"},
        {"Account": "1", "Region": "a", "InstanceId": "i-2"},
        {"Account": "1", "Region": "a", "InstanceId": "i-1"},
    ]
    assert [sort_key(r) for r in sorted(records, key=sort_key)] == [
        ("1", "a", "i-1"),
        ("1", "a", "i-2"),
        ("1", "b", "i-0"),
        ("2", "a", "i-1"),
    ]


# --- CSV round trip ---------------------------------------------------------------------------------------


def test_header_row_and_crlf_line_endings() -> None:
    records = [record_of(described_instance(InstanceId=f"i-{n}")) for n in range(3)]
    text = csv_text(records)
    assert text.startswith(",".join(COLUMNS) + "\r\n")
    assert text.endswith("\r\n")
    lines = text.split("\r\n")
    assert len(lines) == 1 + 3 + 1  # header, rows, "" after the final CRLF
    assert "\n" not in text.replace("\r\n", "")
    rows = parse(text)
    assert rows[0] == list(COLUMNS)
    assert [r[2] for r in rows[1:]] == ["i-0", "i-1", "i-2"]


def test_no_header_when_asked() -> None:
    text = csv_text([record_of(described_instance())], header=False)
    assert not text.startswith("Account,")
    assert len(parse(text)) == 1


def test_rows_to_csv_returns_the_row_count() -> None:
    out = io.StringIO()
    assert rows_to_csv(iter([record_of(described_instance())] * 4), out) == 4
    assert rows_to_csv([], io.StringIO()) == 0


HOSTILE_VALUES = [
    pytest.param("web, db, cache", id="commas"),
    pytest.param('the "primary" host', id="quotes"),
    pytest.param('"', id="lone-quote"),
    pytest.param("line one\nline two", id="lf"),
    pytest.param("line one\r\nline two", id="crlf"),
    pytest.param("line one\rline two", id="cr"),
    pytest.param("trailing newline\n", id="trailing-lf"),
    pytest.param("Überwachung \u2013 ñandú \u2013 数据库", id="unicode"),
    pytest.param("🚀🔥 prod 👩‍💻", id="emoji"),
    pytest.param("\u200fשרת ראשי\u200f", id="rtl-mark"),
    pytest.param("\u202egnp.exe", id="rtl-override"),
    pytest.param("", id="empty"),
    pytest.param(" ", id="space"),
    pytest.param('a,"b"\r\n,c', id="everything"),
]


@pytest.mark.parametrize("value", HOSTILE_VALUES)
def test_round_trip_of_hostile_names_and_tags(value: str) -> None:
    tags = [
        {"Key": "Name", "Value": value},
        {"Key": value or "k", "Value": value},
        {"Key": "Owner", "Value": f"x{value}x"},
    ]
    record = record_of(described_instance(Tags=tags), name=value)
    text = csv_text([record, record_of(described_instance(InstanceId="i-2"))])
    rows = parse(text)
    assert len(rows) == 3
    assert rows[0] == list(COLUMNS)
    row = dict(zip(COLUMNS, rows[1], strict=True))
    assert row["Name"] == value
    assert row["AccountName"] == value
    assert json.loads(row["Tags"]) == {t["Key"]: t["Value"] for t in tags}
    assert rows[2][COLUMNS.index("InstanceId")] == "i-2"


def test_round_trip_of_neutralised_values() -> None:
    record = record_of(
        described_instance(Tags=[{"Key": "Name", "Value": '=HYPERLINK("http://evil","x")'}]), name="+1"
    )
    (row,) = parse(csv_text([record], header=False))
    assert row[COLUMNS.index("Name")] == '\'=HYPERLINK("http://evil","x")'
    assert row[COLUMNS.index("AccountName")] == "'+1"


# --- property ---------------------------------------------------------------------------------------------

# Any text boto3 could hand us (no lone surrogates: those are not valid UTF-8 and AWS never returns them).
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)
TRIGGER_HEAVY = st.text(st.sampled_from(["=", "+", "-", "@", "\t", "\r", "\n", "\x00", '"', ",", "a", "'"]))
ANY_TEXT = st.one_of(TEXT, TRIGGER_HEAVY)


@st.composite
def instances(draw: st.DrawFn) -> tuple[str, dict[str, str], dict[str, Any]]:
    name = draw(ANY_TEXT)
    tags = draw(st.dictionaries(ANY_TEXT, ANY_TEXT, max_size=4))
    tags["Name"] = name
    instance = described_instance(
        InstanceId=draw(ANY_TEXT), Tags=[{"Key": k, "Value": v} for k, v in tags.items()]
    )
    return name, tags, instance


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=st.lists(instances(), min_size=1, max_size=4), account_name=ANY_TEXT)
def test_property_any_text_round_trips_one_row_per_record(
    items: list[tuple[str, dict[str, str], dict[str, Any]]], account_name: str
) -> None:
    records = [record_of(instance, name=account_name) for _, _, instance in items]
    rows = parse(csv_text(records))
    assert rows[0] == list(COLUMNS)
    assert len(rows) == 1 + len(records)
    for (name, tags, instance), record, row in zip(items, records, rows[1:], strict=True):
        assert len(row) == len(COLUMNS)
        cells = dict(zip(COLUMNS, row, strict=True))
        assert cells["Name"] == neutralise(name)
        assert cells["AccountName"] == neutralise(account_name)
        assert cells["InstanceId"] == neutralise(instance["InstanceId"])
        assert json.loads(cells["Tags"]) == tags
        assert row == [neutralise(record[c]) for c in COLUMNS]
        for cell in row:
            assert not cell.startswith(FORMULA_TRIGGERS), cell
            assert "\x00" not in cell


# --- schema 2: the DescribeInstances attributes -----------------------------------------------------------


def described_reservation() -> dict[str, Any]:
    """
    One reservation as boto3's DescribeInstances returns it on real AWS: a spot instance on a dedicated
    host in an Outpost, two network interfaces (each with its own groups and IPv6 addresses), two EBS
    volumes, an instance profile, a key pair and IMDSv2 required.
    """
    instance = described_instance(
        InstanceId="i-0aa11bb22cc33dd44",
        InstanceType="m6g.large",
        Architecture="arm64",
        InstanceLifecycle="spot",
        SpotInstanceRequestId="sir-abcd1234",
        Placement={"AvailabilityZone": "eu-west-1a", "GroupName": "", "Tenancy": "host", "HostId": "h-0123"},
        IamInstanceProfile={
            "Arn": "arn:aws:iam::111111111111:instance-profile/payments-web",
            "Id": "AIPAEXAMPLEID",
        },
        KeyName="payments-ops",
        MetadataOptions={
            "State": "applied",
            "HttpTokens": "required",
            "HttpPutResponseHopLimit": 2,
            "HttpEndpoint": "enabled",
            "HttpProtocolIpv6": "disabled",
            "InstanceMetadataTags": "disabled",
        },
        PrivateDnsName="ip-10-0-1-12.eu-west-1.compute.internal",
        Ipv6Address="2a05:d018:1:2::10",
        OutpostArn="arn:aws:outposts:eu-west-1:111111111111:outpost/op-0abcdef1234567890",
        PlatformDetails="Linux/UNIX",
        SecurityGroups=[
            {"GroupName": "web", "GroupId": "sg-0b2"},
            {"GroupName": "ssh", "GroupId": "sg-0a1"},
        ],
        BlockDeviceMappings=[
            {"DeviceName": "/dev/xvda", "Ebs": {"VolumeId": "vol-0ffff", "Status": "attached"}},
            {"DeviceName": "/dev/xvdb", "Ebs": {"VolumeId": "vol-0aaaa", "Status": "attached"}},
        ],
        NetworkInterfaces=[
            {
                "NetworkInterfaceId": "eni-0primary",
                "Attachment": {"DeviceIndex": 0, "Status": "attached"},
                "Groups": [
                    {"GroupName": "web", "GroupId": "sg-0b2"},
                    {"GroupName": "ssh", "GroupId": "sg-0a1"},
                ],
                "Ipv6Addresses": [{"Ipv6Address": "2a05:d018:1:2::10", "IsPrimaryIpv6": True}],
            },
            {
                "NetworkInterfaceId": "eni-0second",
                "Attachment": {"DeviceIndex": 1, "Status": "attached"},
                "Groups": [{"GroupName": "replication", "GroupId": "sg-0c3"}],
                "Ipv6Addresses": [{"Ipv6Address": "2a05:d018:1:2::9"}, {"Ipv6Address": "2a05:d018:1:3::1"}],
            },
        ],
    )
    return {
        "Groups": [],
        "Instances": [instance],
        "OwnerId": "111111111111",
        "RequesterId": "940372691376",
        "ReservationId": "r-0123456789abcdef0",
    }


def record_with_reservation(reservation: Mapping[str, Any], **kwargs: Any) -> tuple[Record, dict[str, str]]:
    (instance,) = reservation["Instances"]
    return instance_record(
        Account(ACCOUNT, "payments-prod"), REGION, instance, COLLECTED_AT, reservation, **kwargs
    )


def test_record_of_a_spot_instance_with_every_schema_2_field_from_its_reservation() -> None:
    record, sources = record_with_reservation(described_reservation())
    assert {c: record[c] for c in SCHEMA_2_COLUMNS} == {
        "PlatformDetails": "Linux/UNIX",
        "Architecture": "arm64",
        "InstanceLifecycle": "spot",
        "Tenancy": "host",
        "IamInstanceProfileArn": "arn:aws:iam::111111111111:instance-profile/payments-web",
        # Every interface's groups, each once, sorted (not the order EC2 listed them in).
        "SecurityGroupIds": "sg-0a1;sg-0b2;sg-0c3",
        "EbsVolumeIds": "vol-0aaaa;vol-0ffff",
        "KeyName": "payments-ops",
        "ImdsV2Required": "true",
        "PrivateDnsName": "ip-10-0-1-12.eu-west-1.compute.internal",
        # The primary address (also on the first interface) once, then the second interface's.
        "Ipv6Addresses": "2a05:d018:1:2::10;2a05:d018:1:2::9;2a05:d018:1:3::1",
        "OutpostArn": "arn:aws:outposts:eu-west-1:111111111111:outpost/op-0abcdef1234567890",
        "ReservationId": "r-0123456789abcdef0",
        "OwnerId": "111111111111",
        "AccountOuPath": "",
        "AccountTags": "",
    }
    assert tuple(record) == COLUMNS
    assert sources == {}
    # A list cell splits back into exactly its values.
    assert record["SecurityGroupIds"].split(LIST_SEPARATOR) == ["sg-0a1", "sg-0b2", "sg-0c3"]


def test_an_instance_without_the_optional_fields_has_empty_schema_2_cells_and_is_on_demand() -> None:
    record = record_of({"InstanceId": "i-1"})
    assert {c: record[c] for c in SCHEMA_2_COLUMNS if record[c]} == {"InstanceLifecycle": "on-demand"}


@pytest.mark.parametrize(
    ("lifecycle", "expected"),
    [
        pytest.param("spot", "spot", id="spot"),
        pytest.param("scheduled", "scheduled", id="scheduled"),
        pytest.param("capacity-block", "capacity-block", id="capacity-block"),
        # A value EC2 added later (botocore knows it) is kept, never mistaken for on-demand.
        pytest.param("interruptible-capacity-reservation", "interruptible-capacity-reservation", id="newer"),
        pytest.param(None, "on-demand", id="absent-is-on-demand"),
        pytest.param("", "on-demand", id="empty-is-on-demand"),
    ],
)
def test_instance_lifecycle(lifecycle: str | None, expected: str) -> None:
    instance = described_instance()
    if lifecycle is not None:
        instance["InstanceLifecycle"] = lifecycle
    assert record_of(instance)["InstanceLifecycle"] == expected


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        pytest.param({"HttpTokens": "required"}, "true", id="required"),
        pytest.param({"HttpTokens": "optional"}, "false", id="optional"),
        pytest.param({"State": "pending"}, "", id="no-tokens"),
        pytest.param(None, "", id="no-metadata-options"),
    ],
)
def test_imds_v2_required_from_http_tokens(options: dict[str, str] | None, expected: str) -> None:
    instance = described_instance(MetadataOptions=options)
    assert record_of(instance)["ImdsV2Required"] == expected


@pytest.mark.parametrize("tenancy", ["default", "dedicated", "host"])
def test_tenancy_from_placement(tenancy: str) -> None:
    placement = {"AvailabilityZone": "eu-west-1b", "Tenancy": tenancy}
    assert record_of(described_instance(Placement=placement))["Tenancy"] == tenancy


@pytest.mark.parametrize("details", [None, ""])
def test_an_empty_platform_details_stays_empty_while_platform_falls_back(details: str | None) -> None:
    record = record_of(described_instance(Platform="windows", PlatformDetails=details))
    assert record["PlatformDetails"] == ""
    assert record["Platform"] == "windows"


def test_list_cells_are_sorted_deduplicated_and_skip_empty_ids() -> None:
    instance = described_instance(
        SecurityGroups=[{"GroupId": "sg-9"}, {"GroupId": "sg-1"}, {"GroupId": "sg-9"}, {"GroupName": "x"}],
        BlockDeviceMappings=[
            {"DeviceName": "/dev/xvdb", "Ebs": {"VolumeId": "vol-b"}},
            {"DeviceName": "/dev/sdc", "VirtualName": "ephemeral0"},  # instance store: no EBS volume
            {"DeviceName": "/dev/xvda", "Ebs": {"VolumeId": "vol-a"}},
            {"DeviceName": "/dev/xvdd", "Ebs": {"VolumeId": "vol-a"}},
        ],
        NetworkInterfaces=[
            {"Groups": [{"GroupId": "sg-1"}], "Ipv6Addresses": [{"Ipv6Address": "2001:db8::2"}]},
            {"Groups": [], "Ipv6Addresses": [{"Ipv6Address": "2001:db8::1"}, {"Ipv6Address": "2001:db8::2"}]},
        ],
    )
    record = record_of(instance)
    assert record["SecurityGroupIds"] == "sg-1;sg-9"
    assert record["EbsVolumeIds"] == "vol-a;vol-b"
    assert record["Ipv6Addresses"] == "2001:db8::1;2001:db8::2"


def test_empty_lists_are_empty_cells() -> None:
    record = record_of(described_instance(SecurityGroups=[], BlockDeviceMappings=[], NetworkInterfaces=[]))
    assert [record[c] for c in LIST_COLUMNS] == ["", "", ""]


def test_a_group_only_on_the_interface_is_listed() -> None:
    # moto (and an instance whose default group was applied to its interface) leaves SecurityGroups empty.
    instance = described_instance(SecurityGroups=[], NetworkInterfaces=[{"Groups": [{"GroupId": "sg-def"}]}])
    assert record_of(instance)["SecurityGroupIds"] == "sg-def"


def test_no_reservation_leaves_its_columns_empty() -> None:
    record = record_of(described_instance())
    assert (record["ReservationId"], record["OwnerId"]) == ("", "")


def test_organisation_context_only_for_accounts_from_organizations() -> None:
    account = Account(ACCOUNT, "payments-prod", ou_path="Root/Workloads/Prod", tags=(("cost", "42"),))
    record, _ = instance_record(account, REGION, described_instance(), COLLECTED_AT)
    assert (record["AccountOuPath"], json.loads(record["AccountTags"])) == (
        "Root/Workloads/Prod",
        {"cost": "42"},
    )
    assert record_of(described_instance())["AccountTags"] == ""


# --- tag columns ----------------------------------------------------------------------------------------

OWNER = ("Owner", ("owner", "Owner", "team"))
COST = ("CostCenter", ("cost-center", "CostCentre"))


def tagged(*tags: tuple[str, str]) -> dict[str, Any]:
    return described_instance(Tags=[{"Key": k, "Value": v} for k, v in tags])


@pytest.mark.parametrize(
    ("tags", "owner", "source"),
    [
        pytest.param([("owner", "a"), ("Owner", "b"), ("team", "c")], "a", "owner", id="first-key-wins"),
        pytest.param([("team", "c"), ("Owner", "b")], "b", "Owner", id="configured-order-not-tag-order"),
        pytest.param([("team", "c")], "c", "team", id="last-key"),
        pytest.param([("OWNER", "x"), ("Team", "y")], "", None, id="case-sensitive"),
        # An empty value names nobody: the next alias gives the value.
        pytest.param([("owner", ""), ("Owner", "b")], "b", "Owner", id="empty-value-falls-through"),
        pytest.param([("owner", ""), ("team", "")], "", None, id="only-empty-values-is-no-match"),
        pytest.param([("owner", " ")], " ", "owner", id="a-space-is-a-value"),
        pytest.param([], "", None, id="no-tags"),
    ],
)
def test_tag_column_takes_the_first_configured_key_present(
    tags: list[tuple[str, str]], owner: str, source: str | None
) -> None:
    record, sources = instance_record(
        Account(ACCOUNT), REGION, tagged(*tags), COLLECTED_AT, tag_columns=[OWNER, COST]
    )
    assert tuple(record) == (*COLUMNS, "Owner", "CostCenter")
    assert record["Owner"] == owner
    assert record["CostCenter"] == ""
    assert sources.get("Owner") == source
    assert "CostCenter" not in sources


def test_tag_columns_in_the_csv_after_the_contracts_columns_neutralised() -> None:
    record, _ = instance_record(
        Account(ACCOUNT),
        REGION,
        tagged(("Name", "web"), ("Owner", "=cmd()"), ("CostCentre", "4711")),
        COLLECTED_AT,
        tag_columns=[OWNER, COST],
    )
    out = io.StringIO(newline="")
    rows_to_csv([record], out, columns=columns(["Owner", "CostCenter"]))
    header, row = parse(out.getvalue())
    assert header == [*COLUMNS, "Owner", "CostCenter"]
    assert row[-2:] == ["'=cmd()", "4711"]


def test_the_primary_ipv6_address_is_listed_even_without_its_interface() -> None:
    instance = described_instance(Ipv6Address="2001:db8::7", NetworkInterfaces=[])
    assert record_of(instance)["Ipv6Addresses"] == "2001:db8::7"
