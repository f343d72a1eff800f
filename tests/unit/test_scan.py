"""scan.scan_regions over moto's server: pagination, regions in parallel, states, per-region failures."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from devtools.world import Server, World, build, session_in
from include.cmdb_inventory.aws.hooks import CrossAccountHook
from include.cmdb_inventory.config import DEFAULT_INSTANCE_STATES, INSTANCE_STATES, Account
from include.cmdb_inventory.contract import OK, REGION_DENIED, REGION_DISABLED, ROLE_NOT_ASSUMABLE, THROTTLED
from include.cmdb_inventory.scan import PAGE_SIZE, AccountScan, scan_regions

BIG = "510000000001"  # one region with more than one page of reservations
MIXED = "510000000002"  # several regions, every kind of state
EMPTY = "510000000003"  # no instances at all
FAULTY = "510000000004"  # regions that fail in different ways
LOCKED = "510000000005"  # the role cannot be assumed
NAMES = {BIG: "Big", MIXED: "Mixed", EMPTY: "Empty", FAULTY: "Faulty", LOCKED: "Locked"}
BIG_REGION = "eu-west-1"
BIG_RESERVATIONS = PAGE_SIZE + 1
COLLECTED_AT = "2026-11-26T02:00:00Z"
AMI = "ami-12c6146b"

pytestmark = pytest.mark.usefixtures("hub_connection")


@dataclass
class Seeded:
    """What was seeded: instance ids by account, region and state."""

    ids: dict[str, dict[str, dict[str, list[str]]]] = field(default_factory=dict)

    def add(self, account: str, region: str, state: str, ids: list[str]) -> None:
        self.ids.setdefault(account, {}).setdefault(region, {}).setdefault(state, []).extend(ids)

    def expected(
        self, account: str, states: tuple[str, ...], regions: tuple[str, ...] = ()
    ) -> list[tuple[str, str]]:
        """(region, instance id) of every instance in these states, in the order the scan must give."""
        return sorted(
            (region, instance_id)
            for region, by_state in self.ids.get(account, {}).items()
            if not regions or region in regions
            for state, ids in by_state.items()
            if state in states
            for instance_id in ids
        )


class _NoNetwork:
    """The HTTP session of an in-process moto client: moto answers first, so sending is a bug."""

    def send(self, request: Any) -> Any:
        raise AssertionError(f"in-process seeding tried to reach {request.url}")


def _seed_in_backend(account: str, region: str, count: int) -> list[str]:
    """Straight into moto's EC2 backend (what its RunInstances handler does, minus HTTP and XML)."""
    from moto.ec2.models import ec2_backends

    backend = ec2_backends[account][region]
    kwargs: dict[str, Any] = {
        "instance_type": "t3.micro",
        "is_instance_type_default": False,
        "placement": None,
        "placement_hostid": None,
        "region_name": region,
        "subnet_id": None,
        "key_name": None,
        "security_group_ids": [],
        "nics": [],
        "private_ip": None,
        "associate_public_ip": None,
        "tags": {},
        "ebs_optimized": False,
        "disable_api_stop": False,
        "instance_market_options": {},
        "instance_initiated_shutdown_behavior": None,
        "launch_template": {},
        "hibernation_options": {},
        "iam_instance_profile_name": None,
        "iam_instance_profile_arn": None,
        "monitoring_state": "disabled",
        "ipv6_address_count": None,
        "metadata_options": {},
        "client_token": "ABCDE",
    }
    return [
        instance.id
        for _ in range(count)
        for instance in backend.run_instances(AMI, 1, None, [], **kwargs).instances
    ]


def _seed_with_mock_aws(endpoint_url: str, account: str, region: str, count: int) -> list[str]:
    """The public way: boto3 against moto in-process (``mock_aws``), slower (XML both ways)."""
    from moto import mock_aws

    session = session_in(endpoint_url, account)  # credentials that moto maps to ``account``
    ids: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("AWS_ENDPOINT_URL", raising=False)
        mock = mock_aws()
        mock.start(reset=False)
        try:
            ec2 = session.client("ec2", region_name=region)
            ec2._endpoint.http_session = _NoNetwork()
            for _ in range(count):
                response = ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1)
                ids.extend(i["InstanceId"] for i in response["Instances"])
        finally:
            mock.stop(remove_data=False)
    return ids


def seed_many_reservations(endpoint_url: str, account: str, region: str, count: int) -> list[str]:
    """
    ``count`` reservations of one instance in one region. The moto server runs in this process and
    shares moto's backends, so seeding in-process is enough. Measured for 1,001 reservations: ~45 s
    through the server, ~11 s through ``mock_aws``, ~4 s straight into the backend (used unless moto's
    internal signature changed).
    """
    try:
        first = _seed_in_backend(account, region, 1)
    except (TypeError, KeyError, AttributeError):
        return _seed_with_mock_aws(endpoint_url, account, region, count)
    return first + _seed_in_backend(account, region, count - 1)


@pytest.fixture(scope="module", autouse=True)
def _lean_moto_backends() -> Iterator[None]:
    """EC2 backends created by this module skip moto's ~1,300 default AMIs (4x cheaper per region)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
        yield


# Built by the world builder in an organisation of this module's own (the session's moto server is shared):
# its hub account and bucket, no topic.
HUB = "510000000000"
WORLD = World(
    accounts={BIG: NAMES[BIG], MIXED: NAMES[MIXED], FAULTY: NAMES[FAULTY]},
    servers={
        BIG: [Server("us-east-1", "big-east")],
        MIXED: [
            Server("us-east-1", "web-b"),
            Server("us-east-1", "web-a"),
            Server("us-east-1", "old", state="stopped"),
            Server("us-east-1", "gone", state="terminated"),
            Server("eu-west-1", "eu-db", count=2),
            Server("eu-west-1", "eu-gone", state="terminated"),
            Server("ap-southeast-2", "syd", state="stopped"),
        ],
        FAULTY: [
            Server(region, f"faulty-{region}")
            for region in ("us-east-1", "eu-west-1", "eu-central-1", "us-west-2")
        ],
    },
)


@pytest.fixture(scope="module")
def world(moto_url: str) -> Seeded:
    """The accounts of this module, seeded once on the session's moto server."""
    built = build(moto_url, WORLD, bucket="cmdb-scan-tests", topic=None, hub_account=HUB)
    world = Seeded()
    for account, instances in built.instances.items():
        for instance in instances:
            world.add(account, instance["region"], instance["state"], [instance["id"]])
    # More than a page of reservations: one reservation each, which the builder's servers are not.
    world.add(BIG, BIG_REGION, "running", seed_many_reservations(moto_url, BIG, BIG_REGION, BIG_RESERVATIONS))
    return world


def hook(account: str, **kwargs: Any) -> CrossAccountHook:
    return CrossAccountHook(account_id=account, session_name="cmdb@test_scan", **kwargs)


def scan(
    target: CrossAccountHook, account: str, states: tuple[str, ...] = DEFAULT_INSTANCE_STATES, **kwargs: Any
) -> AccountScan:
    return scan_regions(
        target,
        Account(id=account, name=NAMES[account]),
        states=states,
        collected_at=COLLECTED_AT,
        threads=kwargs.pop("threads", 4),
        **kwargs,
    )


def listed(result: AccountScan) -> list[tuple[str, str]]:
    return [(r["Region"], r["InstanceId"]) for r in result.records]


def regions_of(result: AccountScan) -> dict[str, dict[str, Any]]:
    return {entry["region"]: entry for entry in result.regions}


class Calls:
    """Request parameters of every DescribeInstances call of one client."""

    def __init__(self, client: Any) -> None:
        self.params: list[dict[str, Any]] = []
        client.meta.events.register("before-parameter-build.ec2.DescribeInstances", self.record)

    def record(self, params: dict[str, Any], **_: Any) -> None:
        self.params.append(dict(params))


def test_more_than_1000_reservations_are_paginated(world: Seeded) -> None:
    target = hook(BIG)
    calls = Calls(target.client("ec2", BIG_REGION))

    result = scan(target, BIG, regions=(BIG_REGION, "us-east-1"))

    assert len(calls.params) > 1, "DescribeInstances was not paginated"
    assert all(p["MaxResults"] == PAGE_SIZE == 1000 for p in calls.params)
    assert "NextToken" not in calls.params[0]
    assert all(p.get("NextToken") for p in calls.params[1:])
    assert calls.params[0]["Filters"] == [
        {"Name": "instance-state-name", "Values": list(DEFAULT_INSTANCE_STATES)}
    ]

    assert result.status == OK
    assert result.role_arn == f"arn:aws:iam::{BIG}:role/CMDBDiscovery"
    assert listed(result) == world.expected(BIG, DEFAULT_INSTANCE_STATES)
    assert len(result.records) == BIG_RESERVATIONS + 1
    assert len({r["InstanceId"] for r in result.records}) == len(result.records), "every instance once"
    assert result.regions == [
        {"region": BIG_REGION, "status": OK, "instances": BIG_RESERVATIONS},
        {"region": "us-east-1", "status": OK, "instances": 1},
    ]


def test_several_regions_every_state_but_terminated_by_default(world: Seeded) -> None:
    regions = ("us-east-1", "eu-west-1", "ap-southeast-2", "us-west-2")
    result = scan(hook(MIXED), MIXED, regions=regions)

    assert result.status == OK
    assert listed(result) == world.expected(MIXED, DEFAULT_INSTANCE_STATES)
    assert {r["State"] for r in result.records} == {"running", "stopped"}
    terminated = set(
        world.ids[MIXED]["us-east-1"]["terminated"] + world.ids[MIXED]["eu-west-1"]["terminated"]
    )
    assert not terminated & {r["InstanceId"] for r in result.records}
    assert regions_of(result) == {
        "ap-southeast-2": {"region": "ap-southeast-2", "status": OK, "instances": 1},
        "eu-west-1": {"region": "eu-west-1", "status": OK, "instances": 2},
        "us-east-1": {"region": "us-east-1", "status": OK, "instances": 3},
        "us-west-2": {"region": "us-west-2", "status": OK, "instances": 0},
    }
    assert [e["region"] for e in result.regions] == sorted(regions)
    by_id = {r["InstanceId"]: r for r in result.records}
    (old,) = world.ids[MIXED]["us-east-1"]["stopped"]
    assert by_id[old]["Name"] == "old"
    assert by_id[old]["State"] == "stopped"
    assert by_id[old]["Region"] == "us-east-1"
    assert by_id[old]["AvailabilityZone"].startswith("us-east-1")
    assert all(r["Account"] == MIXED and r["AccountName"] == "Mixed" for r in result.records)
    assert all(r["CollectedAt"] == COLLECTED_AT for r in result.records)


def test_records_are_sorted_by_region_then_instance_id(world: Seeded) -> None:
    result = scan(hook(MIXED), MIXED, regions=("us-east-1", "eu-west-1", "ap-southeast-2"), threads=3)
    keys = listed(result)
    assert keys == sorted(keys)
    assert [k[0] for k in keys] == sorted(k[0] for k in keys)


def test_terminated_instances_are_listed_when_asked(world: Seeded) -> None:
    regions = ("us-east-1", "eu-west-1")
    result = scan(hook(MIXED), MIXED, states=INSTANCE_STATES, regions=regions)
    assert listed(result) == world.expected(MIXED, INSTANCE_STATES, regions)
    assert {r["State"] for r in result.records} == {"running", "stopped", "terminated"}
    (gone,) = world.ids[MIXED]["us-east-1"]["terminated"]
    assert {r["InstanceId"]: r["State"] for r in result.records}[gone] == "terminated"


def test_only_the_requested_states_are_listed(world: Seeded) -> None:
    regions = ("us-east-1", "ap-southeast-2")
    result = scan(hook(MIXED), MIXED, states=("stopped",), regions=regions)
    assert listed(result) == world.expected(MIXED, ("stopped",), regions)
    assert {r["State"] for r in result.records} == {"stopped"}


def test_an_account_without_instances(world: Seeded) -> None:
    result = scan(hook(EMPTY), EMPTY, threads=8)

    assert result.status == OK
    assert result.records == []
    assert result.regions_source == "DescribeRegions"
    scanned = [e for e in result.regions if e["status"] == OK]
    assert len(scanned) >= 15
    assert all(e["instances"] == 0 for e in result.regions)
    assert all(
        e["status"] == REGION_DISABLED and e["error"]["code"] == "OptInStatus"
        for e in result.regions
        if e["status"] != OK
    )
    assert not any(e["region"].startswith(("cn-", "us-gov-")) for e in result.regions)
    assert [e["region"] for e in result.regions] == sorted(e["region"] for e in result.regions)

    explicit = scan(hook(EMPTY), EMPTY, regions=("us-east-1", "eu-west-1", "sa-east-1"))
    assert explicit.status == OK
    assert explicit.records == []
    assert explicit.regions == [
        {"region": region, "status": OK, "instances": 0} for region in ("eu-west-1", "sa-east-1", "us-east-1")
    ]


def test_region_failures_are_classified_per_region(
    world: Seeded, aws_error: Callable[..., Any], no_retry_delay: list[float]
) -> None:
    target = hook(FAULTY, max_attempts=3)
    faults = {
        "eu-west-1": ("UnauthorizedOperation", "You are not authorized to perform this operation.", 403),
        "eu-central-1": ("AuthFailure", "AWS was not able to validate the provided access credentials", 401),
        "us-west-2": ("RequestLimitExceeded", "Request limit exceeded.", 503),
    }
    attempts: dict[str, int] = {}
    for region, (code, message, status) in faults.items():

        def fail(
            region: str = region, code: str = code, message: str = message, status: int = status, **_: Any
        ) -> Any:
            attempts[region] = attempts.get(region, 0) + 1
            return aws_error(code, message, status, protocol="ec2")

        target.client("ec2", region).meta.events.register("before-send.ec2.DescribeInstances", fail)

    result = scan(target, FAULTY, regions=("us-east-1", *faults))

    assert result.status == OK
    entries = regions_of(result)
    assert entries["eu-west-1"]["status"] == REGION_DENIED
    assert entries["eu-west-1"]["error"] == {
        "code": "UnauthorizedOperation",
        "message": "You are not authorized to perform this operation.",
    }
    assert entries["eu-central-1"]["status"] == REGION_DISABLED
    assert entries["eu-central-1"]["error"]["code"] == "AuthFailure"
    assert "not able to validate" in entries["eu-central-1"]["error"]["message"]
    assert entries["us-west-2"]["status"] == THROTTLED
    assert entries["us-west-2"]["error"]["code"] == "RequestLimitExceeded"
    assert all(entries[region]["instances"] == 0 for region in faults)
    # Permanent errors are not retried; throttling is, by botocore's standard mode, up to max_attempts.
    assert attempts == {"eu-west-1": 1, "eu-central-1": 1, "us-west-2": 3}
    assert len(no_retry_delay) == 2

    assert entries["us-east-1"] == {"region": "us-east-1", "status": OK, "instances": 1}
    assert listed(result) == [("us-east-1", world.ids[FAULTY]["us-east-1"]["running"][0])]
    assert result.records[0]["Name"] == "faulty-us-east-1"


def test_a_role_that_cannot_be_assumed(
    world: Seeded, aws_error: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    target = hook(LOCKED)
    message = (
        f"User: arn:aws:iam::123456789012:user/hub is not authorized to perform: sts:AssumeRole on {LOCKED}"
    )
    target.hub_sts.meta.events.register(
        "before-send.sts.AssumeRole", lambda **_: aws_error("AccessDenied", message, 403, protocol="query")
    )
    region_calls: list[tuple[str, str]] = []

    def no_region_calls(service: str, region: str) -> Any:
        region_calls.append((service, region))
        raise AssertionError("no regional client without the role")

    monkeypatch.setattr(target, "client", no_region_calls)

    result = scan(target, LOCKED)

    assert result.status == ROLE_NOT_ASSUMABLE
    assert result.role_arn == f"arn:aws:iam::{LOCKED}:role/CMDBDiscovery"
    assert result.error is not None
    assert result.error["code"] == "AccessDenied"
    assert "not authorized" in result.error["message"]
    assert result.regions == []
    assert result.records == []
    assert region_calls == []
