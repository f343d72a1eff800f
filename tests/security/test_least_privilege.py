"""
Least privilege, enforced (issue point 2): moto's server authenticates and authorises every request
against IAM, the hub runs as ``CMDBApplication`` with exactly the shipped policy and every member role is
``CMDBDiscovery`` with exactly the shipped policy, and a full DAG run succeeds. Calls outside the policies
are refused, in a run and one by one.

What moto 5.2 enforces (``moto/core/authorization.py``, ``moto/iam/access_control.py``): the signature and
the identity (IAM user keys, assumed-role sessions) of every request to a service dispatched through
``BaseResponse.call_action`` — here STS, EC2, SNS and IAM, each shown refusing below — and to S3; the
action and the ``Resource`` ARN (S3 objects and buckets, STS role ARNs; SNS topics only with this suite's
fix, see ``moto_iam_server``; EC2 always ``*``, which is all DescribeInstances/DescribeRegions support in
AWS too); explicit denies; the trust policy of a role in the caller's own account. Not evaluated:
``Condition`` operators other than ``StringEquals`` (our ``s3:prefix`` ``StringLike`` is ignored, so the
listing grant is read as unconditional), trust policies of roles in another account, ``ExternalId`` when it
is missing, ``aws:PrincipalOrgID``, SCPs, and KMS key use by S3. The trust policies moto's CloudFormation
deploys are checked document by document (``tests/unit/test_iam_templates.py``).
"""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from typing import Any

import pytest
from botocore.exceptions import ClientError

from devtools.iam_templates import render_role
from tests.security import world
from tests.security.conftest import DENIED_DS, SUCCESS_DS
from tests.security.world import BUCKET, HUB_ROLE_ARN, PAYER, PREFIX, Org, Run

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("security-e2e")]

DENIED_CODES = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "403"}  # 403: HEAD, no body
# S3 REST operations (as the gateway names them) -> the IAM action AWS authorises them with.
S3_IAM_ACTIONS = {
    "GetObject": "s3:GetObject",
    "HeadObject": "s3:GetObject",
    "PutObject": "s3:PutObject",
    "CopyObject": "s3:PutObject",  # and s3:GetObject on the source
    "CreateMultipartUpload": "s3:PutObject",
    "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject",
    "AbortMultipartUpload": "s3:AbortMultipartUpload",
    "DeleteObject": "s3:DeleteObject",
    "ListObjectsV2": "s3:ListBucket",
}


def denied(call: Any, *args: Any, **kwargs: Any) -> str:
    """Assert the call is refused by IAM; return the error message."""
    with pytest.raises(ClientError) as excinfo:
        call(*args, **kwargs)
    error = excinfo.value.response["Error"]
    assert error["Code"] in DENIED_CODES, error
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    return str(error.get("Message", ""))


def statements(documents: dict[str, Any]) -> list[dict[str, Any]]:
    """Every statement of a role's inline policies."""
    found: list[dict[str, Any]] = []
    for document in documents.values():
        listed = document["Statement"]
        found.extend(listed if isinstance(listed, list) else [listed])
    return found


def granted_actions(documents: dict[str, Any]) -> set[str]:
    """The actions a role's policies allow."""
    actions: set[str] = set()
    for statement in statements(documents):
        listed = statement["Action"]
        actions.update([listed] if isinstance(listed, str) else listed)
    return actions


def task_states(run: Run) -> dict[str, str]:
    """``task_id[map_index]`` -> state, from the run's metadata database."""
    rows = world.query(run.home, "SELECT task_id, map_index, state FROM task_instance")
    return {f"{task}[{index}]" if index >= 0 else task: str(state) for task, index, state in rows}


def test_every_role_carries_exactly_the_shipped_policies(org: Org) -> None:
    """
    The roles in the world's IAM are exactly the shipped templates rendered again, apart from the world
    (an in-process moto, with the world's parameters): what building the world changed shows here.
    """
    hub = render_role(
        "cmdb-application",
        {
            "BucketName": BUCKET,
            "Prefix": PREFIX,
            "TopicArn": org.topic_arn,
            "KmsKeyArn": org.kms_key_arn,
            "TrustedPrincipalType": "Service",  # the template's default, as the world deploys it
            "TrustedPrincipal": "ec2.amazonaws.com",
        },
        account_id=PAYER,
    )
    text = json.dumps(hub.policies)  # rendered for this world: its bucket prefix, topic and KMS key
    assert {f"arn:aws:s3:::{BUCKET}/{PREFIX}/*", org.topic_arn, org.kms_key_arn} <= set(
        re.findall(r'"([^"]+)"', text)
    )
    iam = org.admin("iam")
    assert iam.list_role_policies(RoleName=hub.role_name)["PolicyNames"] == list(hub.policies)
    assert iam.list_attached_role_policies(RoleName=hub.role_name)["AttachedPolicies"] == []
    for name, document in hub.policies.items():
        assert iam.get_role_policy(RoleName=hub.role_name, PolicyName=name)["PolicyDocument"] == document
    # The one documented difference (tests/security/world.py): the hub's trust names the worker user.
    trust = copy.deepcopy(hub.assume_role_policy)
    for statement in trust["Statement"]:
        statement["Principal"] = {"AWS": f"arn:aws:iam::{PAYER}:user/{world.WORKER}"}
    assert iam.get_role(RoleName=hub.role_name)["Role"]["AssumeRolePolicyDocument"] == trust
    for account in org.world.accounts:
        role = render_role("cmdb-discovery", {"HubRoleArn": HUB_ROLE_ARN}, account_id=account)
        member_iam = org.admin("iam", account=account)
        assert member_iam.list_role_policies(RoleName=role.role_name)["PolicyNames"] == list(role.policies)
        assert member_iam.list_attached_role_policies(RoleName=role.role_name)["AttachedPolicies"] == []
        stored_trust = member_iam.get_role(RoleName=role.role_name)["Role"]["AssumeRolePolicyDocument"]
        assert stored_trust == role.assume_role_policy
        for name, document in role.policies.items():
            stored = member_iam.get_role_policy(RoleName=role.role_name, PolicyName=name)["PolicyDocument"]
            if account in world.CRIPPLED:  # the negative run's accounts: one action removed, nothing added
                assert granted_actions({name: stored}) == granted_actions({name: document}) - {
                    world.CRIPPLED[account]
                }
            else:
                assert stored == document


def test_enforcement_is_live_for_every_identity(org: Org) -> None:
    worker = org.worker_session()
    url = org.moto_url
    # The workers' own identity may only become the hub.
    denied(worker.client("s3", endpoint_url=url).list_buckets)
    denied(worker.client("ec2", endpoint_url=url).describe_instances)

    hub = org.assume(worker, HUB_ROLE_ARN)
    s3, sns = hub.client("s3", endpoint_url=url), hub.client("sns", endpoint_url=url)
    key = f"{PREFIX}/_probe/enforcement.json"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"{}", ServerSideEncryption="AES256")
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"{}"
    s3.delete_object(Bucket=BUCKET, Key=key)
    sns.publish(TopicArn=org.topic_arn, Message="enforcement probe")
    world.drain_queue(org)
    # ...and nothing else: other keys, buckets, topics, services, roles.
    denied(s3.put_object, Bucket=BUCKET, Key="elsewhere/x.json", Body=b"{}")
    denied(s3.get_object, Bucket=BUCKET, Key="elsewhere/x.json")
    denied(s3.put_object, Bucket=world.FOREIGN_BUCKET, Key=f"{PREFIX}/x.json", Body=b"{}")
    denied(s3.list_buckets)
    denied(sns.publish, TopicArn=org.topic_arn.replace(world.TOPIC, "another-topic"), Message="x")
    denied(hub.client("ec2", endpoint_url=url).describe_instances)
    denied(hub.client("iam", endpoint_url=url).list_roles)
    assume = hub.client("sts", endpoint_url=url).assume_role
    admin_role = "arn:aws:iam::222222222222:role/OrganizationAccountAccessRole"
    message = denied(assume, RoleArn=admin_role, RoleSessionName="x1")
    assert "sts:AssumeRole" in message

    # A member's discovery role: DescribeRegions and DescribeInstances, nothing else.
    member = org.assume(hub, "arn:aws:iam::222222222222:role/CMDBDiscovery")
    ec2 = member.client("ec2", endpoint_url=url, region_name="eu-west-1")
    assert ec2.describe_regions()["Regions"]
    assert ec2.describe_instances()["Reservations"]
    denied(ec2.describe_vpcs)
    denied(ec2.describe_security_groups)
    denied(member.client("s3", endpoint_url=url).list_buckets)
    denied(member.client("iam", endpoint_url=url).list_roles)
    denied(member.client("sts", endpoint_url=url).assume_role, RoleArn=HUB_ROLE_ARN, RoleSessionName="back")


def test_full_run_succeeds_with_only_the_shipped_policies(org: Org, success_run: Run) -> None:
    states = task_states(success_run)
    assert {f"scan_account[{n}]" for n in range(len(world.GOOD_ACCOUNTS))} <= set(states)
    # approve_removals asks a person only when the mass-removal guard holds the snapshot: skipped here.
    assert states.pop("approve_removals") == "skipped", (states, success_run.output[-5000:])
    assert set(states.values()) == {"success"}, (states, success_run.output[-5000:])
    manifest = world.manifest(org, SUCCESS_DS)
    assert manifest["complete"] is True
    expected = {
        i["id"]
        for account in world.GOOD_ACCOUNTS
        for i in org.instances.get(account, [])
        if i["state"] != "terminated" and i["region"] in world.REGIONS
    }
    rows = world.csv_rows(org, SUCCESS_DS)
    assert sorted(r[2] for r in rows[1:]) == sorted(expected)
    assert len(success_run.messages) == 1
    assert "Complete: yes" in success_run.messages[0]

    # IAM refused nothing the product asked for (the only 403s are the gateway's S3 emulation)...
    product = [c for c in success_run.calls if c.access_key not in org.admin_access_keys()]
    refused = [(c.service, c.action, c.key) for c in product if c.status == 403 and c.fault is None]
    assert refused == []
    # ...and every call is one the shipped policies name (GetCallerIdentity needs no permission).
    hub, member = org.hub_role, org.discovery_roles[PAYER]
    allowed = granted_actions(hub.policies) | granted_actions(member.policies) | {"sts:GetCallerIdentity"}
    used: Counter[str] = Counter()
    for call in product:
        if call.service == "s3":
            assert call.action in S3_IAM_ACTIONS, f"unexpected S3 operation {call.action}"
            used[S3_IAM_ACTIONS[call.action]] += 1
        else:
            used[f"{call.service}:{call.action}"] += 1
    assert set(used) <= allowed, sorted(set(used) - allowed)
    assert {"sts:AssumeRole", "ec2:DescribeRegions", "ec2:DescribeInstances", "s3:PutObject"} <= set(used)
    assert {"s3:GetObject", "s3:ListBucket", "sns:Publish"} <= set(used)


def test_head_bucket_is_not_needed(org: Org, success_run: Run) -> None:
    """HeadBucket needs s3:ListBucket without a prefix: the hub has none, and the product never asks."""
    hub = org.assume(org.worker_session(), HUB_ROLE_ARN)
    denied(hub.client("s3", endpoint_url=org.moto_url).head_bucket, Bucket=BUCKET)
    assert not [c for c in success_run.calls if c.action == "HeadBucket"]


def test_a_call_outside_the_policy_is_denied_in_a_run(org: Org, denied_run: Run) -> None:
    states = task_states(denied_run)
    assert states["scan_account[3]"] == "failed"  # the account whose role cannot be assumed
    assert states["check_coverage"] == "failed"
    assert states["merge_inventory"] == states["notify_cmdb"] == "success"
    assert denied_run.result.returncode != 0
    manifest = world.manifest(org, DENIED_DS)
    assert manifest["complete"] is False
    by_account: dict[str, list[dict[str, Any]]] = {}
    for entry in manifest["coverage"]:
        by_account.setdefault(entry["account"], []).append(entry)

    # No ec2:DescribeInstances: every region of the account is REGION_DENIED, with IAM's words.
    no_instances = by_account[world.NO_DESCRIBE_INSTANCES]
    assert {e["region"] for e in no_instances} == set(world.REGIONS)
    for entry in no_instances:
        assert entry["status"] == "REGION_DENIED"
        assert entry["error"]["code"] in DENIED_CODES
        assert "ec2:DescribeInstances" in entry["error"]["message"]
    # No ec2:DescribeRegions: the configured regions are scanned instead, and the ledger says so.
    no_regions = by_account[world.NO_DESCRIBE_REGIONS]
    assert {(e["region"], e["status"]) for e in no_regions} == {(r, "OK") for r in world.REGIONS}
    assert all("DescribeRegions denied" in e["note"] for e in no_regions)
    # AssumeRole refused: the account's task fails for good, the others still deliver.
    (broken,) = by_account[world.ASSUME_DENIED]
    assert broken["status"] == "ROLE_NOT_ASSUMABLE"
    assert broken["error"]["code"] == "AccessDenied"
    assert {e["status"] for e in by_account[PAYER]} == {"OK"}

    refused = {(c.service, c.action) for c in denied_run.calls if c.status == 403 and c.fault is None}
    assert refused == {("ec2", "DescribeRegions"), ("ec2", "DescribeInstances")}
    rows = world.csv_rows(org, DENIED_DS)
    accounts = Counter(r[0] for r in rows[1:])
    assert set(accounts) == {PAYER, world.NO_DESCRIBE_REGIONS}
    alerts = [m for m in denied_run.messages if world.ASSUME_DENIED in m and "failed" in m]
    assert alerts, json.dumps(denied_run.messages)[:2000]
