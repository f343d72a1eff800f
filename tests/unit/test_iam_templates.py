"""The shipped IAM templates (include/iam) lint clean, grant exactly what they should, and render to IAM JSON.

Every assertion about a policy goes through ``render_role`` so it is about the documents we ship. Whether
IAM *enforces* them (policy simulation against moto's IAM enforcement) is covered elsewhere.
"""

from __future__ import annotations

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
from moto import mock_aws

from devtools.iam_templates import (
    TEMPLATE_DIR,
    RenderedRole,
    TemplateError,
    load_template,
    parse_template,
    render_role,
    render_role_from_template,
)

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


def _all_statements(role: RenderedRole) -> list[dict[str, Any]]:
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


def _discovery(external_id: str = "", organization_id: str = "", **extra: str) -> RenderedRole:
    params = {"HubRoleArn": HUB_ROLE_ARN, **extra}
    if external_id:
        params["ExternalId"] = external_id
    if organization_id:
        params["OrganizationId"] = organization_id
    return render_role(DISCOVERY, params)


def _application(**params: str) -> RenderedRole:
    return render_role(APPLICATION, {"BucketName": BUCKET, **params})


def _every_rendering() -> list[RenderedRole]:
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
    return roles


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


def _may_assume(role: RenderedRole, role_arn: str, resource_org: str | None) -> bool:
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


# --------------------------------------------------------------------------- the renderer itself

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
              - Resource: !Sub
                  - arn:${AWS::Partition}:s3:::${B}/${!literal}/${AWS::AccountId}
                  - B: !Ref Name
                Both: !If [Both, yes-both, !Ref AWS::NoValue]
                Either: !If [Either, yes-either, no-either]
              - !If [HasExtra, {Sid: extra}, !Ref AWS::NoValue]
"""


def test_renderer_evaluates_intrinsics_like_cloudformation() -> None:
    template = parse_template(_MINI)
    role = render_role_from_template(
        template, partition="aws-cn", account_id="123456789012", region="cn-north-1"
    )
    assert role.role_name == "demo-cn-north-1"
    assert role.path == "/cmdb/"
    assert role.assume_role_policy == {"Version": "2012-10-17", "Statement": []}
    document = role.policies["p"]
    assert document["Version"] == "2012-10-17"  # stays a string, not a YAML date
    assert document["Statement"] == [
        {"Resource": "arn:aws-cn:s3:::demo/${literal}/123456789012", "Either": "yes-either"},
    ]
    role = render_role_from_template(template, {"Extra": "x", "Mode": "b"})
    assert role.policies["p"]["Statement"] == [
        {"Resource": "arn:aws:s3:::demo/${literal}/111111111111", "Either": "yes-either"},
        {"Sid": "extra"},
    ]
    role = render_role_from_template(template, {"Extra": "x"})
    assert role.policies["p"]["Statement"][0]["Both"] == "yes-both"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("RoleName: !Join", "RoleName: !Select [0, [a]] #"), "unsupported CloudFormation tag !Select"),
        (("RoleName: !Join", "RoleName: !GetAtt Other.Arn #"), "unsupported intrinsic function Fn::GetAtt"),
        (("RoleName: !Join", "RoleName: !Ref Other #"), "unsupported Ref 'Other'"),
        (("B: !Ref Name", "C: !Ref Name"), r"unsupported Fn::Sub attribute|unsupported Ref 'B'"),
        (("Path: /cmdb/", "ManagedPolicyArns: []"), "unsupported role properties"),
        (("!Condition IsA]", "!Condition Nope]"), "unknown condition 'Nope'"),
    ],
)
def test_renderer_rejects_what_it_does_not_support(change: tuple[str, str], message: str) -> None:
    old, new = change
    assert old in _MINI
    with pytest.raises(TemplateError, match=message):
        render_role_from_template(parse_template(_MINI.replace(old, new, 1)), {"Extra": "x"})


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"Nope": "x"}, r"unknown parameter\(s\) \['Nope'\]"),
        ({"Mode": "c"}, "Mode='c' is not one of"),
        ({"Name": 1}, "Name must be a string"),
    ],
)
def test_renderer_validates_parameters(parameters: dict[str, Any], message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        render_role_from_template(parse_template(_MINI), parameters)


def test_load_template_errors() -> None:
    with pytest.raises(TemplateError, match="no template"):
        load_template("does-not-exist")
    with pytest.raises(TemplateError, match="bare file name"):
        load_template("../iam/cmdb-discovery")
    assert load_template(f"{DISCOVERY}.yaml") == load_template(DISCOVERY)


# --------------------------------------------------------------------------- IAM accepts the documents


@pytest.fixture
def iam(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_IAM"):
        monkeypatch.delenv(name, raising=False)
    with mock_aws():
        yield boto3.client("iam", region_name="us-east-1")


def _create(iam: Any, role: RenderedRole) -> str:
    arn = iam.create_role(
        RoleName=role.role_name,
        Path=role.path,
        Description=role.description,
        MaxSessionDuration=role.max_session_duration,
        AssumeRolePolicyDocument=json.dumps(role.assume_role_policy),
    )["Role"]["Arn"]
    # moto validates trust policies only on update_assume_role_policy, not on create_role.
    iam.update_assume_role_policy(RoleName=role.role_name, PolicyDocument=json.dumps(role.assume_role_policy))
    for name, document in role.policies.items():
        iam.put_role_policy(RoleName=role.role_name, PolicyName=name, PolicyDocument=json.dumps(document))
    return arn


def test_moto_iam_accepts_the_rendered_roles(iam: Any) -> None:
    application = render_role(
        APPLICATION,
        {"BucketName": BUCKET, "TopicArn": TOPIC_ARN, "KmsKeyArn": KMS_KEY_ARN, "OrganizationId": ORG_ID},
        account_id="123456789012",
    )
    hub_arn = _create(iam, application)
    assert hub_arn == "arn:aws:iam::123456789012:role/CMDBApplication"
    iam.create_instance_profile(InstanceProfileName=application.role_name)
    iam.add_role_to_instance_profile(
        InstanceProfileName=application.role_name, RoleName=application.role_name
    )

    discovery = render_role(
        DISCOVERY,
        {"HubRoleArn": hub_arn, "ExternalId": "cmdb-external-id", "OrganizationId": "o-abcdefghij"},
        account_id="123456789012",
    )
    _create(iam, discovery)

    for role in (application, discovery):
        stored = iam.get_role(RoleName=role.role_name)["Role"]
        assert stored["AssumeRolePolicyDocument"] == role.assume_role_policy
        assert stored["MaxSessionDuration"] == 3600
        assert iam.list_role_policies(RoleName=role.role_name)["PolicyNames"] == list(role.policies)
        for name, document in role.policies.items():
            got = iam.get_role_policy(RoleName=role.role_name, PolicyName=name)["PolicyDocument"]
            assert got == document


def test_moto_iam_rejects_malformed_documents(iam: Any) -> None:
    """Guard for the test above: moto really validates inline policies and trust policies."""
    role = _discovery()
    _create(iam, role)
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
