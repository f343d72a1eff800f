"""The shipped IAM templates (include/iam) lint clean, grant exactly what they should, and deploy to IAM.

Every assertion about a policy is about the role moto's CloudFormation deploys from the template we ship
(``render_role``: a stack in an in-process moto, read back from IAM). Whether IAM *enforces* them (moto's
server with IAM enforcement) is covered in ``tests/security/test_least_privilege.py``.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from devtools.iam_templates import (
    TEMPLATE_DIR,
    DeployedRole,
    TemplateError,
    deploy,
    load_template,
    parse_template,
    render_role,
)

# One in-process moto for the module: each rendering deploys a stack into it and deletes it again.
pytestmark = pytest.mark.usefixtures("mocked_aws")

DISCOVERY = "cmdb-discovery"
APPLICATION = "cmdb-application"
TEMPLATE_FILES = [TEMPLATE_DIR / f"{DISCOVERY}.yaml", TEMPLATE_DIR / f"{APPLICATION}.yaml"]
HUB_ROLE_ARN = "arn:aws:iam::999999999999:role/CMDBApplication"
BUCKET = "cmdb-inventory-bucket"
TOPIC_ARN = "arn:aws:sns:us-east-1:999999999999:cmdb-inventory"
KMS_KEY_ARN = "arn:aws:kms:us-east-1:999999999999:key/0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
ORG_ID = "o-abcdefghij"
TRUST_ACTIONS = {"sts:AssumeRole", "sts:SetSourceIdentity", "sts:TagSession"}
S3_OBJECT_ACTIONS = {"s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:AbortMultipartUpload"}


# --------------------------------------------------------------------------- helpers


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    assert document["Version"] == "2012-10-17"
    return _as_list(document["Statement"])


def _all_statements(role: DeployedRole) -> list[dict[str, Any]]:
    return [stmt for doc in role.policies.values() for stmt in _statements(doc)]


def _actions(statements: list[dict[str, Any]]) -> set[str]:
    return {action for stmt in statements for action in _as_list(stmt["Action"])}


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair in a nested dict/list structure."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def _iam_glob_matches(pattern: str, value: str) -> bool:
    """IAM ARN matching, read as permissively as possible: ``*`` spans anything, even ``:`` and ``/``."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value) is not None


def _discovery(external_id: str = "", organization_id: str = "", **extra: str) -> DeployedRole:
    params = {"HubRoleArn": HUB_ROLE_ARN, **extra}
    if external_id:
        params["ExternalId"] = external_id
    if organization_id:
        params["OrganizationId"] = organization_id
    return render_role(DISCOVERY, params)


def _application(**params: str) -> DeployedRole:
    return render_role(APPLICATION, {"BucketName": BUCKET, **params})


@functools.cache
def _every_rendering() -> tuple[DeployedRole, ...]:
    """Both roles under every combination of the optional parameters."""
    roles = [
        _discovery(ext, org) for ext, org in itertools.product(["", "cmdb-external-id"], ["", "o-abcdefghij"])
    ]
    for topic, key, trust, org in itertools.product(
        ["", TOPIC_ARN],
        ["", KMS_KEY_ARN],
        [("Service", "ec2.amazonaws.com"), ("Role", HUB_ROLE_ARN)],
        ["", ORG_ID],
    ):
        roles.append(
            _application(
                TopicArn=topic,
                KmsKeyArn=key,
                TrustedPrincipalType=trust[0],
                TrustedPrincipal=trust[1],
                OrganizationId=org,
            )
        )
    return tuple(roles)


# --------------------------------------------------------------------------- cfn-lint


def _cfn_lint() -> list[str]:
    binary = Path(sys.executable).with_name("cfn-lint")
    if binary.is_file():
        return [str(binary)]
    return [sys.executable, "-c", "from cfnlint.runner import main; main()"]


def test_cfn_lint_passes_on_every_shipped_template() -> None:
    shipped = sorted(TEMPLATE_DIR.glob("*.yaml"))  # what `make lint` lints
    assert {p.name for p in shipped} >= {f"{DISCOVERY}.yaml", f"{APPLICATION}.yaml", "cmdb-bucket.yaml"}
    result = subprocess.run(
        [*_cfn_lint(), "--", *map(str, shipped)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"cfn-lint failed:\n{result.stdout}\n{result.stderr}"


# --------------------------------------------------------------------------- discovery role


@pytest.mark.parametrize("external_id", ["", "cmdb-external-id"])
@pytest.mark.parametrize("organization_id", ["", "o-abcdefghij"])
def test_discovery_trusts_only_the_hub_role(external_id: str, organization_id: str) -> None:
    role = _discovery(external_id, organization_id)
    statements = _statements(role.assume_role_policy)

    assert _actions(statements) == TRUST_ACTIONS
    for stmt in statements:
        assert stmt["Effect"] == "Allow"
        assert stmt["Principal"] == {"AWS": HUB_ROLE_ARN}
        assert not {"NotPrincipal", "NotAction"} & stmt.keys()
    text = json.dumps(role.assume_role_policy)
    assert ":root" not in text
    assert '"*"' not in text

    (assume,) = [s for s in statements if "sts:AssumeRole" in _as_list(s["Action"])]
    assume_conditions = assume.get("Condition", {}).get("StringEquals", {})
    if external_id:
        assert assume_conditions["sts:ExternalId"] == external_id
    else:
        assert "sts:ExternalId" not in json.dumps(statements)
    for stmt in statements:
        conditions = stmt.get("Condition", {})
        if organization_id:
            assert conditions["StringEquals"]["aws:PrincipalOrgID"] == organization_id
        else:
            assert "aws:PrincipalOrgID" not in json.dumps(conditions)
    if not external_id and not organization_id:
        assert all("Condition" not in stmt for stmt in statements)


@pytest.mark.parametrize(
    "hub_role_arn",
    [
        "arn:aws:iam::999999999999:root",
        "999999999999",
        "*",
        "arn:aws:iam::*:role/CMDBApplication",
        "arn:aws:iam::999999999999:user/CMDBApplication",
        "arn:aws:iam::999999999999:role/*",
    ],
)
def test_discovery_rejects_hub_arns_that_are_not_one_role(hub_role_arn: str) -> None:
    with pytest.raises(TemplateError, match="HubRoleArn"):
        render_role(DISCOVERY, {"HubRoleArn": hub_role_arn})


@pytest.mark.parametrize(
    "hub_role_arn",
    [
        "arn:aws-us-gov:iam::999999999999:role/CMDBApplication",
        "arn:aws-cn:iam::999999999999:role/CMDBApplication",
        "arn:aws:iam::999999999999:role/cmdb/hub/CMDBApplication",
    ],
)
def test_discovery_accepts_role_arns_in_any_partition_and_path(hub_role_arn: str) -> None:
    role = render_role(DISCOVERY, {"HubRoleArn": hub_role_arn})
    assert {s["Principal"]["AWS"] for s in _statements(role.assume_role_policy)} == {hub_role_arn}


def test_discovery_requires_hub_role_arn() -> None:
    with pytest.raises(TemplateError, match="HubRoleArn is required"):
        render_role(DISCOVERY, {})


def test_discovery_permissions_are_exactly_describe_instances_and_regions() -> None:
    role = _discovery()
    assert role.role_name == "CMDBDiscovery"
    assert role.max_session_duration == 3600
    assert role.path == "/"
    assert list(role.policies) == ["cmdb-discovery-ec2-read"]
    statements = _all_statements(role)
    assert _actions(statements) == {"ec2:DescribeInstances", "ec2:DescribeRegions"}
    for stmt in statements:
        assert stmt["Effect"] == "Allow"
        assert stmt["Resource"] == "*"
        assert "Condition" not in stmt
    assert _discovery(RoleName="CMDBDiscoveryDev").role_name == "CMDBDiscoveryDev"


# --------------------------------------------------------------------------- both templates


def test_no_wildcard_or_negated_elements_in_any_template() -> None:
    for path in TEMPLATE_FILES:
        raw = load_template(path.name)
        for key, value in _walk(raw):
            assert key not in {"NotAction", "NotResource", "NotPrincipal"}, path.name
            if key == "Action":
                for action in _as_list(value):
                    assert isinstance(action, str), (path.name, action)
                    assert "*" not in action, (path.name, action)
                    assert "?" not in action, (path.name, action)
    for role in _every_rendering():
        for stmt in [*_statements(role.assume_role_policy), *_all_statements(role)]:
            assert stmt["Effect"] == "Allow"
            for action in _as_list(stmt["Action"]):
                assert re.fullmatch(r"[a-z0-9-]+:[A-Za-z]+", action), action


def test_rendered_documents_fit_iam_size_quotas() -> None:
    for role in _every_rendering():
        assert len(json.dumps(role.assume_role_policy, separators=(",", ":"))) <= 2048
        assert sum(len(json.dumps(doc, separators=(",", ":"))) for doc in role.policies.values()) <= 10240


# --------------------------------------------------------------------------- application role


@pytest.mark.parametrize("discovery_role_name", ["CMDBDiscovery", "CMDBDiscoveryDev"])
@pytest.mark.parametrize("partition", ["aws", "aws-us-gov"])
def test_application_may_assume_only_discovery_roles(discovery_role_name: str, partition: str) -> None:
    role = render_role(
        APPLICATION, {"BucketName": BUCKET, "DiscoveryRoleName": discovery_role_name}, partition=partition
    )
    sts = [s for s in _all_statements(role) if any(a.startswith("sts:") for a in _as_list(s["Action"]))]
    assert len(sts) == 1
    assert set(_as_list(sts[0]["Action"])) == TRUST_ACTIONS
    (resource,) = _as_list(sts[0]["Resource"])
    assert resource == f"arn:{partition}:iam::*:role/{discovery_role_name}"

    def matches(arn: str) -> bool:
        return _iam_glob_matches(resource, arn)

    assert matches(f"arn:{partition}:iam::222222222222:role/{discovery_role_name}")
    assert matches(f"arn:{partition}:iam::333333333333:role/{discovery_role_name}")
    for other in [
        f"arn:{partition}:iam::222222222222:role/{discovery_role_name}Admin",
        f"arn:{partition}:iam::222222222222:role/Admin{discovery_role_name}",
        f"arn:{partition}:iam::222222222222:role/OrganizationAccountAccessRole",
        f"arn:{partition}:iam::222222222222:role/team/{discovery_role_name}",
        f"arn:{partition}:iam::222222222222:user/{discovery_role_name}",
        f"arn:{partition}:iam::222222222222:root",
    ]:
        assert not matches(other), other


def _may_assume(role: DeployedRole, role_arn: str, resource_org: str | None) -> bool:
    """Whether the role's policies allow sts:AssumeRole of ``role_arn`` when that role's account is in
    ``resource_org`` (``None``: the request carries no ``aws:ResourceOrgID``), by moto's IAM evaluator."""
    from moto.iam.access_control import IAMPolicy, PermissionResult

    context = {"aws:ResourceOrgID": resource_org} if resource_org else {}
    return any(
        IAMPolicy(json.dumps(doc)).is_action_permitted("sts:AssumeRole", role_arn, None, context)
        == PermissionResult.PERMITTED
        for doc in role.policies.values()
    )


def test_application_assumes_discovery_roles_only_in_its_organization() -> None:
    """OrganizationId given: the condition is on (no other switch); empty: any account, as before."""
    member = "arn:aws:iam::222222222222:role/CMDBDiscovery"
    restricted = _application(OrganizationId=ORG_ID)
    (sts,) = [s for s in _all_statements(restricted) if "sts:AssumeRole" in _as_list(s["Action"])]
    assert set(_as_list(sts["Action"])) == TRUST_ACTIONS  # SetSourceIdentity and TagSession too
    assert sts["Condition"] == {"StringEquals": {"aws:ResourceOrgID": ORG_ID}}
    assert _may_assume(restricted, member, ORG_ID)
    assert not _may_assume(restricted, member, "o-zzzzzzzzzz")  # an account of another organization
    # An account in no organization has no aws:ResourceOrgID, which StringEquals never matches in IAM
    # (moto's evaluator passes a missing key, so this is checked on the document: no ...IfExists).
    assert "IfExists" not in json.dumps(sts["Condition"])

    unrestricted = _application()
    (sts,) = [s for s in _all_statements(unrestricted) if "sts:AssumeRole" in _as_list(s["Action"])]
    assert "Condition" not in sts
    assert _may_assume(unrestricted, member, "o-zzzzzzzzzz")
    assert _may_assume(unrestricted, member, None)
    # The other grants never carry the organization condition.
    for stmt in _all_statements(restricted):
        if stmt is not sts and "sts:AssumeRole" not in _as_list(stmt["Action"]):
            assert "aws:ResourceOrgID" not in json.dumps(stmt)
    for bad in ["o-123", "ou-ab12-abcdefgh", "r-ab12", "o-ABCDEFGHIJ", "*"]:
        with pytest.raises(TemplateError, match="OrganizationId"):
            _application(OrganizationId=bad)


@pytest.mark.parametrize(("bucket", "prefix"), [(BUCKET, None), ("other.bucket-1", "team/cmdb/ec2")])
def test_application_s3_access_is_limited_to_the_bucket_prefix(bucket: str, prefix: str | None) -> None:
    params = {"BucketName": bucket} | ({"Prefix": prefix} if prefix else {})
    role = render_role(APPLICATION, params)
    prefix = prefix or "cmdb/ec2-inventory"
    s3 = [s for s in _all_statements(role) if any(a.startswith("s3:") for a in _as_list(s["Action"]))]
    assert _actions(s3) == S3_OBJECT_ACTIONS | {"s3:ListBucket"}
    for stmt in s3:
        actions = set(_as_list(stmt["Action"]))
        if actions == {"s3:ListBucket"}:
            assert _as_list(stmt["Resource"]) == [f"arn:aws:s3:::{bucket}"]
            assert stmt["Condition"] == {"StringLike": {"s3:prefix": f"{prefix}/*"}}
        else:
            assert actions <= S3_OBJECT_ACTIONS
            assert _as_list(stmt["Resource"]) == [f"arn:aws:s3:::{bucket}/{prefix}/*"]
            assert "Condition" not in stmt
    object_resource = f"arn:aws:s3:::{bucket}/{prefix}/*"
    assert _iam_glob_matches(object_resource, f"arn:aws:s3:::{bucket}/{prefix}/2024/01/01/inventory.csv")
    assert not _iam_glob_matches(object_resource, f"arn:aws:s3:::{bucket}/other/inventory.csv")
    assert not _iam_glob_matches(object_resource, f"arn:aws:s3:::{bucket}-copy/{prefix}/inventory.csv")


@pytest.mark.parametrize("prefix", ["*", "cmdb/*", "/cmdb", "cmdb/", "cmdb//x", "cmdb/${aws:username}"])
def test_application_rejects_prefixes_that_would_widen_the_grant(prefix: str) -> None:
    with pytest.raises(TemplateError, match="Prefix"):
        _application(Prefix=prefix)


@pytest.mark.parametrize(("topic", "key"), itertools.product(["", TOPIC_ARN], ["", KMS_KEY_ARN]))
def test_application_permissions_are_exactly_the_expected_set(topic: str, key: str) -> None:
    role = _application(TopicArn=topic, KmsKeyArn=key)
    assert role.role_name == "CMDBApplication"
    assert role.max_session_duration == 3600
    statements = _all_statements(role)
    expected = TRUST_ACTIONS | S3_OBJECT_ACTIONS | {"s3:ListBucket"}
    if topic:
        expected |= {"sns:Publish"}
    if key:
        expected |= {"kms:GenerateDataKey", "kms:Decrypt"}
    assert _actions(statements) == expected
    for stmt in statements:
        actions = set(_as_list(stmt["Action"]))
        if actions == {"sns:Publish"}:
            assert stmt["Resource"] == TOPIC_ARN
        if actions & {"kms:GenerateDataKey", "kms:Decrypt"}:
            assert actions == {"kms:GenerateDataKey", "kms:Decrypt"}
            assert stmt["Resource"] == KMS_KEY_ARN
        assert "*" not in _as_list(stmt["Resource"])


def test_application_trusts_ec2_by_default_or_an_existing_role() -> None:
    (default,) = _statements(_application().assume_role_policy)
    assert default["Principal"] == {"Service": "ec2.amazonaws.com"}
    assert default["Action"] == "sts:AssumeRole"
    workers = "arn:aws:iam::999999999999:role/airflow-workers"
    (by_role,) = _statements(
        _application(TrustedPrincipalType="Role", TrustedPrincipal=workers).assume_role_policy
    )
    assert by_role["Principal"] == {"AWS": workers}
    assert by_role["Action"] == "sts:AssumeRole"
    for bad in ["*", "arn:aws:iam::999999999999:root", "999999999999"]:
        with pytest.raises(TemplateError, match="TrustedPrincipal"):
            _application(TrustedPrincipalType="Role", TrustedPrincipal=bad)


def test_application_instance_profile_only_for_ec2() -> None:
    template = load_template(APPLICATION)
    profile = template["Resources"]["ApplicationInstanceProfile"]
    assert profile["Condition"] == "CreateInstanceProfile"
    assert template["Outputs"]["InstanceProfileArn"]["Condition"] == "CreateInstanceProfile"
    assert set(template["Outputs"]) == {"RoleArn", "InstanceProfileArn"}
    assert set(load_template(DISCOVERY)["Outputs"]) == {"RoleArn"}


# --------------------------------------------------------------------------- where moto alone goes wrong

_MINI = """
Parameters:
  Name: {Type: String, Default: demo}
  Extra: {Type: String, Default: ""}
  Mode: {Type: String, Default: a, AllowedValues: [a, b]}
Conditions:
  HasExtra: !Not [!Equals [!Ref Extra, ""]]
  IsA: !Equals [a, !Ref Mode]
  Both: !And [!Condition HasExtra, !Condition IsA]
  Either: !Or [!Condition HasExtra, !Condition IsA]
Resources:
  Role:
    Type: AWS::IAM::Role
    Properties:
      RoleName: !Join ["-", [!Ref Name, !Ref AWS::Region]]
      Path: /cmdb/
      AssumeRolePolicyDocument: '{"Version": "2012-10-17", "Statement": []}'
      Policies:
        - PolicyName: p
          PolicyDocument:
            Version: 2012-10-17
            Statement:
              - Sid: Sub
                Effect: Allow
                Action: s3:GetObject
                Resource: !Sub
                  - arn:${AWS::Partition}:s3:::${B}/${!literal}/${AWS::AccountId}
                  - B: !Ref Name
                Condition: !If [Both, {StringEquals: {"aws:SourceVpc": both}}, !Ref AWS::NoValue]
              - !If
                - Either
                - {Sid: Either, Effect: Allow, Action: s3:PutObject, Resource: "*"}
                - !Ref AWS::NoValue
              - !If
                - HasExtra
                - {Sid: Extra, Effect: Allow, Action: s3:ListBucket, Resource: "*"}
                - !Ref AWS::NoValue
"""


def _mini(parameters: dict[str, Any], **where: str) -> DeployedRole:
    """``_MINI`` deployed by moto's CloudFormation in-process (account, region, partition as ``where``)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "mini.yaml").write_text(_MINI, encoding="utf-8")
        return render_role("mini", parameters, template_dir=Path(folder), **where)


def test_deployment_evaluates_intrinsics_like_cloudformation() -> None:
    """Short-form conditions, AWS::NoValue in a list, another partition: where moto alone goes wrong."""
    role = _mini({}, partition="aws-cn", account_id="123456789012", region="cn-north-1")
    assert role.role_name == "demo-cn-north-1"
    assert role.path == "/cmdb/"
    assert role.assume_role_policy == {"Version": "2012-10-17", "Statement": []}
    document = role.policies["p"]
    assert document["Version"] == "2012-10-17"  # stays a string, not a YAML date
    assert document["Statement"] == [  # Either holds (IsA); the NoValue items are gone, not null
        {
            "Sid": "Sub",
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": "arn:aws-cn:s3:::demo/${literal}/123456789012",
        },
        {"Sid": "Either", "Effect": "Allow", "Action": "s3:PutObject", "Resource": "*"},
    ]
    role = _mini({"Extra": "x", "Mode": "b"})
    assert [s["Sid"] for s in role.policies["p"]["Statement"]] == ["Sub", "Either", "Extra"]
    assert "Condition" not in role.policies["p"]["Statement"][0]
    assert role.policies["p"]["Statement"][0]["Resource"] == "arn:aws:s3:::demo/${literal}/111111111111"
    role = _mini({"Extra": "x"})  # Both: an !And of two !Condition
    assert role.policies["p"]["Statement"][0]["Condition"] == {"StringEquals": {"aws:SourceVpc": "both"}}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("Path: /cmdb/", "ManagedPolicyArns: [arn:aws:iam::aws:policy/ReadOnlyAccess]"), "ignores"),
        (("Type: AWS::IAM::Role", "Type: AWS::IAM::User"), "does not deploy 'AWS::IAM::User'"),
        (("RoleName: !Join", "RoleName: !Cidr [a, 1, 2] #"), "does not evaluate Fn::Cidr"),
        (("RoleName: !Join", "RoleName: !GetAtt Other.Arn #"), "CloudFormation refused it"),
        (("RoleName: !Join", "RoleName: !Ref Other #"), "CloudFormation refused it"),
        (("- Either\n", "- Nope\n"), "CloudFormation refused it"),
    ],
)
def test_deployment_refuses_what_moto_would_skip_or_keep(change: tuple[str, str], message: str) -> None:
    old, new = change
    assert old in _MINI
    template = parse_template(_MINI.replace(old, new, 1))
    cfn, iam = boto3.client("cloudformation", region_name="us-east-1"), boto3.client("iam")
    with pytest.raises(TemplateError, match=message):
        deploy(cfn, iam, template, {"Extra": "x"}, stack_name="refused")
    assert iam.list_roles()["Roles"] == []


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"Nope": "x"}, r"unknown parameter\(s\) \['Nope'\]"),
        ({"Mode": "c"}, "Mode='c' is not one of"),
        ({"Name": 1}, "Name must be a string"),
    ],
)
def test_parameters_are_checked_before_deployment(parameters: dict[str, Any], message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        _mini(parameters)


def test_load_template_errors() -> None:
    with pytest.raises(TemplateError, match="no template"):
        load_template("does-not-exist")
    with pytest.raises(TemplateError, match="bare file name"):
        load_template("../iam/cmdb-discovery")
    assert load_template(f"{DISCOVERY}.yaml") == load_template(DISCOVERY)


# --------------------------------------------------------------------------- IAM accepts the documents


@pytest.fixture
def clients() -> Iterator[tuple[Any, Any]]:
    """CloudFormation and IAM of moto's default account; the stacks a test creates are deleted after it."""
    cfn, iam = boto3.client("cloudformation", region_name="us-east-1"), boto3.client("iam")
    yield cfn, iam
    for stack in cfn.describe_stacks()["Stacks"]:
        cfn.delete_stack(StackName=stack["StackName"])


def test_moto_iam_accepts_the_deployed_roles(clients: tuple[Any, Any]) -> None:
    cfn, iam = clients
    hub = deploy(
        cfn,
        iam,
        APPLICATION,
        {"BucketName": BUCKET, "TopicArn": TOPIC_ARN, "KmsKeyArn": KMS_KEY_ARN, "OrganizationId": ORG_ID},
    )
    application = hub.role()
    hub_arn = hub.outputs["RoleArn"]
    assert hub_arn == application.arn == "arn:aws:iam::123456789012:role/CMDBApplication"
    # The default trust (EC2) comes with the instance profile, holding the role.
    (profile,) = iam.list_instance_profiles()["InstanceProfiles"]
    assert hub.outputs["InstanceProfileArn"] == profile["Arn"]
    assert (profile["InstanceProfileName"], [r["RoleName"] for r in profile["Roles"]]) == (
        application.role_name,
        [application.role_name],
    )

    member = deploy(
        cfn,
        iam,
        DISCOVERY,
        {"HubRoleArn": hub_arn, "ExternalId": "cmdb-external-id", "OrganizationId": "o-abcdefghij"},
    )
    discovery = member.role()
    assert set(member.outputs) == {"RoleArn"}

    for role in (application, discovery):
        stored = iam.get_role(RoleName=role.role_name)["Role"]
        assert stored["AssumeRolePolicyDocument"] == role.assume_role_policy
        assert stored["MaxSessionDuration"] == 3600
        # moto validates trust policies only on update_assume_role_policy, not through CloudFormation.
        iam.update_assume_role_policy(
            RoleName=role.role_name, PolicyDocument=json.dumps(role.assume_role_policy)
        )
        assert iam.list_role_policies(RoleName=role.role_name)["PolicyNames"] == list(role.policies)
        for name, document in role.policies.items():
            got = iam.get_role_policy(RoleName=role.role_name, PolicyName=name)["PolicyDocument"]
            assert got == document  # JSON that boto3 parses: IAM validated it on PutRolePolicy


def test_a_role_trusted_hub_gets_no_instance_profile(clients: tuple[Any, Any]) -> None:
    cfn, iam = clients
    workers = "arn:aws:iam::123456789012:role/airflow-workers"
    parameters = {"BucketName": BUCKET, "TrustedPrincipalType": "Role", "TrustedPrincipal": workers}
    hub = deploy(cfn, iam, APPLICATION, parameters)
    assert set(hub.outputs) == {"RoleArn"}
    assert iam.list_instance_profiles()["InstanceProfiles"] == []


def test_moto_iam_rejects_malformed_documents(clients: tuple[Any, Any]) -> None:
    """Guard for the tests above: moto really validates inline policies and trust policies."""
    cfn, iam = clients
    role = deploy(cfn, iam, DISCOVERY, {"HubRoleArn": HUB_ROLE_ARN}).role()
    no_resource = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "ec2:DescribeRegions"}],
    }
    with pytest.raises(iam.exceptions.MalformedPolicyDocumentException):
        iam.put_role_policy(RoleName=role.role_name, PolicyName="bad", PolicyDocument=json.dumps(no_resource))
    trust = json.loads(json.dumps(role.assume_role_policy))
    trust["Statement"][0]["Action"] = "ec2:DescribeRegions"
    with pytest.raises(iam.exceptions.MalformedPolicyDocumentException):
        iam.update_assume_role_policy(RoleName=role.role_name, PolicyDocument=json.dumps(trust))
