"""plan_regions: opt-in status, the hub's partition, configured filters, and DescribeRegions denied."""

from __future__ import annotations

from typing import Any

import boto3
import botocore.session
import pytest
from botocore.client import BaseClient
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from include.cmdb_inventory.contract import REGION_DISABLED
from include.cmdb_inventory.regions import RegionPlan, partition_regions, plan_regions

SESSION = botocore.session.get_session()  # one session: EC2's service model is parsed once

# A DescribeRegions answer as moto gives it: every partition's regions, some not opted in.
ANSWER: list[dict[str, str]] = [
    {"RegionName": "us-east-1", "OptInStatus": "opt-in-not-required"},
    {"RegionName": "us-west-2", "OptInStatus": "opt-in-not-required"},
    {"RegionName": "eu-west-1", "OptInStatus": "opt-in-not-required"},
    {"RegionName": "af-south-1", "OptInStatus": "opted-in"},
    {"RegionName": "ap-east-1", "OptInStatus": "not-opted-in"},
    {"RegionName": "me-south-1", "OptInStatus": "not-opted-in"},
    {"RegionName": "cn-north-1", "OptInStatus": "opt-in-not-required"},
    {"RegionName": "us-gov-west-1", "OptInStatus": "opt-in-not-required"},
]


def describe_regions_response(answer: list[dict[str, str]]) -> dict[str, Any]:
    return {"Regions": [{"Endpoint": f"ec2.{r['RegionName']}.amazonaws.com", **r} for r in answer]}


@pytest.fixture
def ec2() -> BaseClient:
    """An EC2 client whose calls never leave the process (a closed loopback port as its endpoint)."""
    client = SESSION.create_client(
        "ec2",
        region_name="us-east-1",
        endpoint_url="http://127.0.0.1:9",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    return client


def stub_answer(ec2: BaseClient, answer: list[dict[str, str]]) -> Stubber:
    stubber = Stubber(ec2)
    stubber.add_response("describe_regions", describe_regions_response(answer), {"AllRegions": True})
    stubber.activate()
    return stubber


def stub_error(ec2: BaseClient, code: str, status: int = 403) -> Stubber:
    stubber = Stubber(ec2)
    stubber.add_client_error(
        "describe_regions",
        service_error_code=code,
        service_message=f"You are not authorized to perform this operation. ({code})",
        http_status_code=status,
        expected_params={"AllRegions": True},
    )
    stubber.activate()
    return stubber


def skipped_regions(plan: RegionPlan) -> dict[str, str]:
    assert all(s["status"] == REGION_DISABLED for s in plan.skipped)
    return {s["region"]: s["error"]["code"] for s in plan.skipped}


def test_enabled_regions_are_scanned_and_not_opted_in_recorded(ec2: BaseClient) -> None:
    stubber = stub_answer(ec2, ANSWER)
    plan = plan_regions(ec2, "aws")
    stubber.assert_no_pending_responses()

    assert plan.scan == ["af-south-1", "eu-west-1", "us-east-1", "us-west-2"]
    assert skipped_regions(plan) == {"ap-east-1": "OptInStatus", "me-south-1": "OptInStatus"}
    assert [s["region"] for s in plan.skipped] == ["ap-east-1", "me-south-1"]
    assert "not-opted-in" in plan.skipped[0]["error"]["message"]
    assert plan.source == "DescribeRegions"
    assert plan.note == ""


@pytest.mark.parametrize(
    ("partition", "expected"),
    [
        ("aws", {"us-east-1", "us-west-2", "eu-west-1", "af-south-1"}),
        ("aws-cn", {"cn-north-1"}),
        ("aws-us-gov", {"us-gov-west-1"}),
    ],
)
def test_regions_outside_the_hub_partition_are_dropped(
    ec2: BaseClient, partition: str, expected: set[str]
) -> None:
    stub_answer(ec2, ANSWER)
    plan = plan_regions(ec2, partition)
    assert set(plan.scan) == expected
    if partition != "aws":
        assert plan.skipped == []


def test_moto_answer_is_kept_to_the_hub_partition(moto_url: str) -> None:
    ec2 = boto3.client(
        "ec2",
        endpoint_url=moto_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    everything = {r["RegionName"] for r in ec2.describe_regions(AllRegions=True)["Regions"]}
    assert any(r.startswith("cn-") for r in everything), "moto answers with every partition"

    for partition, prefix in (("aws", ""), ("aws-cn", "cn-"), ("aws-us-gov", "us-gov-")):
        plan = plan_regions(ec2, partition)
        named = plan.scan + [s["region"] for s in plan.skipped]
        assert named, partition
        assert set(named) <= set(partition_regions(partition))
        assert all(r.startswith(prefix) for r in named)
        if partition == "aws":
            assert not any(r.startswith(("cn-", "us-gov-")) for r in named)
            assert "us-east-1" in plan.scan


def test_a_region_botocore_does_not_know_yet_is_scanned(ec2: BaseClient) -> None:
    """AWS opens regions after our botocore was pinned; an enabled new region must not vanish."""
    new_region = "ap-southeast-99"
    assert new_region not in partition_regions("aws")
    stub_answer(ec2, [*ANSWER, {"RegionName": new_region, "OptInStatus": "opted-in"}])
    plan = plan_regions(ec2, "aws")
    assert new_region in plan.scan


def test_configured_regions_are_honoured(ec2: BaseClient) -> None:
    stub_answer(ec2, ANSWER)
    plan = plan_regions(ec2, "aws", regions=("eu-west-1", "us-east-1", "ap-east-1"))
    assert plan.scan == ["eu-west-1", "us-east-1"]
    # A configured region that is not enabled shows as REGION_DISABLED; others not opted in are not named.
    assert skipped_regions(plan) == {"ap-east-1": "OptInStatus"}


def test_excluded_regions_are_neither_scanned_nor_recorded(ec2: BaseClient) -> None:
    stub_answer(ec2, ANSWER)
    plan = plan_regions(ec2, "aws", exclude=("us-east-1", "ap-east-1"))
    assert plan.scan == ["af-south-1", "eu-west-1", "us-west-2"]
    assert skipped_regions(plan) == {"me-south-1": "OptInStatus"}


def test_exclude_wins_over_regions(ec2: BaseClient) -> None:
    stub_answer(ec2, ANSWER)
    plan = plan_regions(
        ec2, "aws", regions=("eu-west-1", "us-west-2", "ap-east-1"), exclude=("us-west-2", "ap-east-1")
    )
    assert plan.scan == ["eu-west-1"]
    assert plan.skipped == []


def test_a_configured_region_the_account_is_not_offered_is_disabled(ec2: BaseClient) -> None:
    stub_answer(ec2, ANSWER)
    plan = plan_regions(ec2, "aws", regions=("us-east-1", "ap-southeast-7"))
    assert plan.scan == ["us-east-1"]
    assert skipped_regions(plan) == {"ap-southeast-7": "UnknownRegion"}


def test_a_configured_region_of_another_partition_is_disabled_not_dropped(ec2: BaseClient) -> None:
    """moto names cn-north-1 to an ``aws`` hub; real AWS does not. Either way it must show in coverage."""
    stub_answer(ec2, ANSWER)
    plan = plan_regions(ec2, "aws", regions=("us-east-1", "cn-north-1"))
    assert plan.scan == ["us-east-1"]
    assert skipped_regions(plan) == {"cn-north-1": "UnknownRegion"}


@pytest.mark.parametrize("code", ["UnauthorizedOperation", "AccessDenied"])
def test_denied_describe_regions_falls_back_to_the_configured_list(ec2: BaseClient, code: str) -> None:
    stubber = stub_error(ec2, code)
    plan = plan_regions(ec2, "aws", regions=("us-east-1", "eu-west-1", "ap-east-1"), exclude=("ap-east-1",))
    stubber.assert_no_pending_responses()

    assert plan.scan == ["eu-west-1", "us-east-1"]
    assert plan.skipped == []
    assert plan.source == "configured"
    assert f"DescribeRegions denied ({code})" in plan.note
    assert "configured region list" in plan.note


@pytest.mark.parametrize("partition", ["aws", "aws-cn", "aws-us-gov"])
def test_denied_describe_regions_without_a_list_falls_back_to_botocore(
    ec2: BaseClient, partition: str
) -> None:
    stub_error(ec2, "UnauthorizedOperation")
    exclude = (partition_regions(partition)[0],)
    plan = plan_regions(ec2, partition, exclude=exclude)

    assert plan.scan == [r for r in partition_regions(partition) if r not in exclude]
    assert plan.scan
    assert plan.source == "botocore"
    assert "DescribeRegions denied (UnauthorizedOperation)" in plan.note
    assert "botocore region list" in plan.note
    assert "REGION_DISABLED" in plan.note


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("InternalError", 500),
        ("RequestLimitExceeded", 503),
        ("AuthFailure", 401),
        ("InvalidParameterValue", 400),
    ],
)
def test_other_describe_regions_errors_propagate(ec2: BaseClient, code: str, status: int) -> None:
    stub_error(ec2, code, status)
    with pytest.raises(ClientError) as excinfo:
        plan_regions(ec2, "aws", regions=("us-east-1",))
    assert excinfo.value.response["Error"]["Code"] == code


def test_describe_regions_asks_for_all_regions(ec2: BaseClient) -> None:
    stubber = Stubber(ec2)
    stubber.add_response("describe_regions", describe_regions_response(ANSWER[:1]), {"AllRegions": True})
    with stubber:
        assert plan_regions(ec2, "aws").scan == ["us-east-1"]
    stubber.assert_no_pending_responses()
