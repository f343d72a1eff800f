"""
The product changes the benchmark measured (``bench.tuning``), each checked on its own: EC2 clients cut to
the inventory's operations, one hub session per process, hooks that do not wait for each other.
"""

from __future__ import annotations

import threading
from typing import Any

from include.cmdb_inventory.aws import clients, hooks, tuning

CREDS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def test_cut_model_keeps_the_operations_and_every_shape_they_reach() -> None:
    import botocore.session

    full = botocore.session.get_session().get_component("data_loader").load_service_model("ec2", "service-2")
    cut = tuning.cut_model(full, frozenset({"DescribeInstances", "DescribeRegions"}))
    assert set(cut["operations"]) == {"DescribeInstances", "DescribeRegions"}
    assert len(full["operations"]) > 500
    assert 50 < len(cut["shapes"]) < len(full["shapes"]) / 10
    for name, shape in cut["shapes"].items():  # closed: every reference resolves
        refs = [
            *shape.get("members", {}).values(),
            *(shape[k] for k in ("member", "key", "value") if k in shape),
        ]
        assert all(ref["shape"] in cut["shapes"] for ref in refs), name
    assert cut["shapes"]["Instance"] == full["shapes"]["Instance"]  # nothing of a kept shape is dropped
    assert cut["metadata"] == full["metadata"]


def test_inventory_ec2_clients_know_only_its_operations_and_still_paginate(moto_url: str) -> None:
    session = clients.botocore_session(frozenset({"DescribeInstances", "DescribeRegions"}))
    ec2 = session.create_client("ec2", region_name="eu-west-1", endpoint_url=moto_url, **CREDS)
    assert {m for m in dir(ec2) if m.startswith("describe")} == {"describe_instances", "describe_regions"}
    assert not hasattr(ec2, "run_instances")
    pages = list(ec2.get_paginator("describe_instances").paginate(PaginationConfig={"PageSize": 1000}))
    assert pages[0]["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert ec2.describe_regions()["Regions"]
    # The shared session (tests, other callers) keeps the whole model.
    full = clients.shared_botocore_session().create_client("ec2", region_name="eu-west-1", **CREDS)
    assert hasattr(full, "describe_availability_zones")


def test_hook_for_cuts_ec2_but_not_other_services() -> None:
    from include.cmdb_inventory.config import Account, parse_settings
    from include.cmdb_inventory.run import EC2_OPERATIONS, RunInfo, hook_for

    settings = parse_settings({"accounts": ["123456789012"], "bucket": "example-corp-cmdb"})
    hook = hook_for(settings, Account("123456789012"), RunInfo("d", "r", "2026-11-26", "2026-11-26"))
    assert hook.ec2_operations == frozenset(EC2_OPERATIONS) == {"DescribeInstances", "DescribeRegions"}
    import botocore.credentials

    # No AssumeRole for this check: fixed credentials in place of the account's refreshing ones.
    hook.credentials = botocore.credentials.Credentials(
        CREDS["aws_access_key_id"], CREDS["aws_secret_access_key"], "t"
    )
    assert not hasattr(hook.client("ec2", "eu-west-1"), "run_instances")
    assert hasattr(hook.client("sts", "eu-west-1"), "get_caller_identity")


def test_hooks_of_one_connection_share_one_hub_session(hub_connection: dict[str, Any]) -> None:
    first = hooks.CrossAccountHook(account_id="111111111111", region_name="us-east-1")
    second = hooks.CrossAccountHook(account_id="222222222222", region_name="us-east-1")
    other_region = hooks.CrossAccountHook(account_id="222222222222", region_name="eu-west-1")
    s3 = hooks.HubHook(aws_conn_id="aws_default", region_name="us-east-1", client_type="s3")
    assert first.get_session("us-east-1") is second.get_session("us-east-1") is s3.get_session("us-east-1")
    assert other_region.get_session("eu-west-1") is not first.get_session("us-east-1")
    assert first.hub_sts is not second.hub_sts  # a client per hook: event handlers stay the hook's own
    assert s3.get_conn().meta.service_model.service_name == "s3"


def test_one_hooks_assume_role_does_not_hold_up_another_hook(hub_connection: dict[str, Any]) -> None:
    """Each hook's session is its own: one account's AssumeRole still on the wire never holds up another's."""
    slow = hooks.CrossAccountHook(account_id="111111111111", region_name="us-east-1")
    fast = hooks.CrossAccountHook(account_id="222222222222", region_name="us-east-1")
    started, release = threading.Event(), threading.Event()
    waited: list[bool] = []

    def hold(**_: Any) -> None:
        started.set()
        waited.append(release.wait(10))

    slow.hub_sts.meta.events.register("before-send.sts.AssumeRole", hold)
    waiting = threading.Thread(target=slow.assume)
    waiting.start()
    assert started.wait(10)
    assert fast.assume() == "arn:aws:iam::222222222222:role/CMDBDiscovery"  # while the slow one waits
    release.set()
    waiting.join(10)
    assert waited == [True]
    assert slow.session_key() != fast.session_key()
