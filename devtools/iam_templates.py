"""
The shipped CloudFormation templates (``include/iam``), deployed with moto's CloudFormation.

:func:`deploy` creates a stack from a template in the account its clients act in (moto's server on
loopback, or moto in-process) and reads back what the stack made: its outputs and every IAM role as IAM
holds it. :func:`render_role` does that in a throwaway in-process moto, for tests that need a role's
documents; :func:`render_properties` evaluates one resource's properties with moto's CloudFormation
parser, for the properties moto's resources do not apply (the bucket's lifecycle rules, its public access
block and ownership controls: moto's bucket applies only ``BucketEncryption`` and ``Tags``).

What moto 5.2.5's CloudFormation does differently from CloudFormation, and this module does instead
(nothing else):

- **Parameters**: moto checks no constraint (``Type: Number``, ``AllowedValues``, ``AllowedPattern``,
  ``MinLength``/``MaxLength``, ``MinValue``/``MaxValue``) and ignores undeclared ones:
  :func:`check_parameters` checks them before anything is sent.
- **YAML short forms**: moto's loader reads ``!Condition X`` as ``Fn::Condition``, which its condition
  evaluator does not know, so an ``!And``/``!Or`` over conditions is always false (the hub's instance
  profile and the discovery role's ExternalId/organization condition would silently vanish): templates
  are sent as JSON in the long form (:func:`template_body`).
- **Pseudo parameters**: ``AWS::Partition`` is always ``aws`` and ``AWS::URLSuffix`` ``amazonaws.com``:
  for another partition they are substituted before the template is sent.
- **Inline role policies**: ``AWS::NoValue`` as a list item stays a ``null`` item, and a policy written as
  a mapping is stored as Python's ``repr`` of it, not JSON (moto's IAM enforcement cannot read that): each
  inline policy is read back, its nulls dropped, and put again with ``PutRolePolicy``, which validates it
  as CloudFormation's IAM does.
- **What moto skips**: a resource type it does not implement (a warning), an intrinsic function it does
  not know (kept as a literal value) and a role's ``ManagedPolicyArns`` (ignored) would deploy a stack
  that looks narrower than the template: :func:`deploy` refuses such a template instead.
"""

from __future__ import annotations

import ast
import functools
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "include" / "iam"
"""Where the shipped templates live (``include/iam``)."""

ROLE_TYPE = "AWS::IAM::Role"
# Resource types whose properties moto's CloudFormation deploys (checked against moto's models), each with
# the properties it ignores: a template using them would deploy less than it says.
DEPLOYABLE_TYPES: dict[str, frozenset[str]] = {
    ROLE_TYPE: frozenset({"ManagedPolicyArns"}),
    "AWS::IAM::InstanceProfile": frozenset(),
    "AWS::S3::Bucket": frozenset(),  # only encryption and tags are applied: see render_properties
}
# The intrinsic functions moto's CloudFormation evaluates (moto.cloudformation.parsing.clean_json and
# parse_condition); any other "Fn::" would be kept as a literal mapping.
_INTRINSICS = frozenset(
    {"Base64", "FindInMap", "GetAZs", "GetAtt", "If", "ImportValue", "Join", "Select", "Split", "Sub"}
    | {"ToJsonString", "Equals", "Not", "And", "Or"}
)
_PARTITION_SUFFIXES = {"aws-cn": "amazonaws.com.cn"}


class TemplateError(ValueError):
    """The template, or the parameters given for it, cannot be deployed."""


@dataclass(frozen=True)
class DeployedRole:
    """One ``AWS::IAM::Role`` of a stack, as IAM holds it after the deployment."""

    role_name: str
    arn: str
    assume_role_policy: dict[str, Any]
    policies: dict[str, dict[str, Any]]
    max_session_duration: int = 3600
    path: str = "/"
    description: str = ""
    logical_id: str = ""


@dataclass(frozen=True)
class Stack:
    """A created stack: its name, outputs and the roles it made (by logical id)."""

    name: str
    outputs: dict[str, str]
    roles: dict[str, DeployedRole]

    def role(self, logical_id: str | None = None) -> DeployedRole:
        """The stack's only role, or the one with ``logical_id``."""
        if logical_id is None:
            if len(self.roles) != 1:
                raise TemplateError(f"stack {self.name} has roles {sorted(self.roles)}; pass logical_id")
            return next(iter(self.roles.values()))
        if logical_id not in self.roles:
            raise TemplateError(f"stack {self.name} has no role {logical_id!r}: {sorted(self.roles)}")
        return self.roles[logical_id]


# --------------------------------------------------------------------------- loading


class _CfnLoader(yaml.SafeLoader):
    """SafeLoader that reads CloudFormation's short forms as the long forms, and keeps dates as strings."""


# CloudFormation keeps "2012-10-17" a string; YAML 1.1 would make it a date.
_CfnLoader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _construct_short_form(loader: _CfnLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = suffix if suffix in ("Ref", "Condition") else f"Fn::{suffix}"
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if name == "Fn::GetAtt":
            value = str(value).split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


_CfnLoader.add_multi_constructor("!", _construct_short_form)


def parse_template(text: str) -> dict[str, Any]:
    """Parse CloudFormation YAML (or JSON) text into the long-form template dict."""
    try:
        template = yaml.load(text, Loader=_CfnLoader)  # noqa: S506 - _CfnLoader is a SafeLoader
    except yaml.YAMLError as exc:
        raise TemplateError(f"invalid template YAML: {exc}") from exc
    if not isinstance(template, dict) or not isinstance(template.get("Resources"), dict):
        raise TemplateError("a template must be a mapping with a Resources mapping")
    return template


def load_template(name: str, template_dir: Path | None = None) -> dict[str, Any]:
    """Load ``<template_dir>/<name>[.yaml]`` (default dir: :data:`TEMPLATE_DIR`) as a dict."""
    directory = TEMPLATE_DIR if template_dir is None else Path(template_dir)
    filename = name if name.endswith((".yaml", ".yml", ".json")) else f"{name}.yaml"
    if Path(filename).name != filename:
        raise TemplateError(f"template name must be a bare file name, got {name!r}")
    path = directory / filename
    if not path.is_file():
        raise TemplateError(f"no template {filename!r} in {directory}")
    return parse_template(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- what moto does not check


def check_parameters(template: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, str]:
    """Every declared parameter's value (given or default), checked against its constraints."""
    declared: Mapping[str, Any] = template.get("Parameters") or {}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise TemplateError(f"unknown parameter(s) {unknown}; the template declares {sorted(declared)}")
    values: dict[str, str] = {}
    for name, spec in declared.items():
        kind = spec.get("Type")
        if kind not in ("String", "Number"):
            raise TemplateError(f"parameter {name}: unsupported Type {kind!r} (only String and Number)")
        if name in given:
            value = given[name]
        elif "Default" in spec:
            value = spec["Default"]
            if kind == "Number" and isinstance(value, int | float) and not isinstance(value, bool):
                value = str(value)
        else:
            raise TemplateError(f"parameter {name} is required")
        if not isinstance(value, str):
            raise TemplateError(f"parameter {name} must be a string, got {value!r}")
        if kind == "Number":
            _check_number(name, value, spec)
        allowed = spec.get("AllowedValues")
        if allowed is not None and value not in [str(v) for v in allowed]:
            raise TemplateError(f"parameter {name}={value!r} is not one of {allowed}")
        pattern = spec.get("AllowedPattern")
        if pattern is not None and re.fullmatch(pattern, value) is None:
            raise TemplateError(f"parameter {name}={value!r} does not match {pattern}")
        if len(value) < int(spec.get("MinLength", 0)) or len(value) > int(spec.get("MaxLength", 1 << 30)):
            raise TemplateError(f"parameter {name}={value!r} has a length outside MinLength/MaxLength")
        values[name] = value
    return values


def _check_number(name: str, value: str, spec: Mapping[str, Any]) -> None:
    try:
        number = float(value)
    except ValueError:
        raise TemplateError(f"parameter {name}={value!r} is not a number") from None
    if "MinValue" in spec and number < float(spec["MinValue"]):
        raise TemplateError(f"parameter {name}={value!r} is below MinValue {spec['MinValue']}")
    if "MaxValue" in spec and number > float(spec["MaxValue"]):
        raise TemplateError(f"parameter {name}={value!r} is above MaxValue {spec['MaxValue']}")


def check_deployable(template: Mapping[str, Any]) -> None:
    """Refuse what moto would skip or keep literally: unknown resource types, properties, intrinsics."""
    for logical_id, resource in (template.get("Resources") or {}).items():
        kind = resource.get("Type") if isinstance(resource, dict) else None
        if kind not in DEPLOYABLE_TYPES:
            raise TemplateError(f"{logical_id}: moto's CloudFormation does not deploy {kind!r}")
        ignored = sorted(DEPLOYABLE_TYPES[kind] & set(resource.get("Properties") or {}))
        if ignored:
            raise TemplateError(f"{logical_id}: moto's CloudFormation ignores {ignored}")
    for section in ("Conditions", "Resources", "Outputs"):
        for key in _keys(template.get(section)):
            if key.startswith("Fn::") and key[4:] not in _INTRINSICS:
                raise TemplateError(f"{section}: moto's CloudFormation does not evaluate {key}")


def _keys(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [k for key, value in node.items() for k in [str(key), *_keys(value)]]
    if isinstance(node, list):
        return [k for item in node for k in _keys(item)]
    return []


def template_body(template: Mapping[str, Any], partition: str = "aws") -> str:
    """The template as JSON in the long form, with ``partition``'s pseudo parameters substituted."""
    body = json.dumps(template)
    suffix = _PARTITION_SUFFIXES.get(partition, "amazonaws.com")
    for name, value in (("AWS::Partition", partition), ("AWS::URLSuffix", suffix)):
        body = body.replace(json.dumps({"Ref": name}), json.dumps(value)).replace(f"${{{name}}}", value)
    return body


def _without_nulls(node: Any) -> Any:
    """``node`` without the ``null`` list items that ``AWS::NoValue`` leaves in moto."""
    if isinstance(node, list):
        return [_without_nulls(item) for item in node if item is not None]
    if isinstance(node, dict):
        return {key: _without_nulls(value) for key, value in node.items()}
    return node


def _stored_document(stored: Any, where: str) -> dict[str, Any]:
    """A policy document as moto's IAM returns it: parsed JSON, JSON text, or moto's Python repr."""
    document = stored
    if isinstance(stored, str):
        try:
            document = json.loads(stored)
        except ValueError:
            try:
                document = ast.literal_eval(stored)  # moto stores a mapping given by CloudFormation as repr
            except (ValueError, SyntaxError) as exc:
                raise TemplateError(f"{where}: unreadable policy document {stored[:200]!r}") from exc
    if not isinstance(document, dict):
        raise TemplateError(f"{where}: a policy document must be a mapping, got {document!r}")
    return dict(_without_nulls(document))


# --------------------------------------------------------------------------- deployment


def deploy(
    cfn: Any,
    iam: Any,
    template: str | Mapping[str, Any],
    parameters: Mapping[str, str] | None = None,
    *,
    stack_name: str | None = None,
    partition: str = "aws",
    template_dir: Path | None = None,
) -> Stack:
    """
    Create the stack of ``template`` (a shipped template's name, or a loaded template) with ``cfn``, a
    CloudFormation client of the target account, and read back its roles with ``iam`` (same account).
    """
    if isinstance(template, str):
        stack_name = stack_name or Path(template).stem
        template = load_template(template, template_dir)
    if not stack_name:
        raise TemplateError("a loaded template needs a stack_name")
    values = check_parameters(template, parameters or {})
    check_deployable(template)
    try:
        cfn.create_stack(
            StackName=stack_name,
            TemplateBody=template_body(template, partition),
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in values.items()],
            Capabilities=["CAPABILITY_NAMED_IAM"],
        )
        (described,) = cfn.describe_stacks(StackName=stack_name)["Stacks"]
        summaries = cfn.list_stack_resources(StackName=stack_name)["StackResourceSummaries"]
    except Exception as exc:  # botocore's ClientError, or moto's own error when it runs in-process
        raise TemplateError(f"stack {stack_name}: CloudFormation refused it: {exc!r}") from exc
    if described["StackStatus"] != "CREATE_COMPLETE":
        raise TemplateError(f"stack {stack_name} is {described['StackStatus']}")
    roles = {
        s["LogicalResourceId"]: _settle_role(iam, s["PhysicalResourceId"], s["LogicalResourceId"])
        for s in summaries
        if s.get("ResourceType") == ROLE_TYPE
    }
    outputs = {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}
    return Stack(stack_name, outputs, roles)


def _settle_role(iam: Any, role_name: str, logical_id: str) -> DeployedRole:
    """Store the role's inline policies as JSON without nulls (see the module docstring); read it back."""
    role = iam.get_role(RoleName=role_name)["Role"]
    stored_trust = role["AssumeRolePolicyDocument"]
    trust = _stored_document(stored_trust, f"{logical_id} trust policy")
    if trust != stored_trust:
        iam.update_assume_role_policy(RoleName=role_name, PolicyDocument=json.dumps(trust))
    policies: dict[str, dict[str, Any]] = {}
    for name in iam.list_role_policies(RoleName=role_name)["PolicyNames"]:
        stored = iam.get_role_policy(RoleName=role_name, PolicyName=name)["PolicyDocument"]
        policies[name] = _stored_document(stored, f"{logical_id} policy {name}")
        iam.put_role_policy(RoleName=role_name, PolicyName=name, PolicyDocument=json.dumps(policies[name]))
    return DeployedRole(
        role_name=role["RoleName"],
        arn=role["Arn"],
        assume_role_policy=trust,
        policies=policies,
        max_session_duration=int(role.get("MaxSessionDuration", 3600)),
        path=role.get("Path", "/"),
        description=role.get("Description", ""),
        logical_id=logical_id,
    )


# --------------------------------------------------------------------------- in a throwaway moto


@functools.cache
def _mock_session() -> Any:
    """One boto3 session for every in-process rendering: its service models are loaded once."""
    import boto3

    return boto3.session.Session()


def _mocked_clients(account_id: str, region: str) -> tuple[Any, Any]:
    """CloudFormation and IAM clients acting in ``account_id`` of the in-process moto."""
    from botocore.config import Config

    # Never a configured endpoint (AWS_ENDPOINT_URL may name a loopback server): moto in-process only.
    config = Config(ignore_configured_endpoint_urls=True)
    session = _mock_session()
    sts = session.client(
        "sts", region_name=region, config=config, aws_access_key_id="render", aws_secret_access_key="render"
    )
    creds = sts.assume_role(RoleArn=f"arn:aws:iam::{account_id}:role/render", RoleSessionName="render")[
        "Credentials"
    ]
    keys = {
        "aws_access_key_id": creds["AccessKeyId"],
        "aws_secret_access_key": creds["SecretAccessKey"],
        "aws_session_token": creds["SessionToken"],
    }
    return (
        session.client("cloudformation", region_name=region, config=config, **keys),
        session.client("iam", region_name=region, config=config, **keys),
    )


def render_role(
    template_name: str,
    parameters: Mapping[str, str] | None = None,
    partition: str = "aws",
    account_id: str = "111111111111",
    region: str = "us-east-1",
    *,
    logical_id: str | None = None,
    template_dir: Path | None = None,
) -> DeployedRole:
    """
    The IAM role the shipped template ``template_name`` creates with these parameters: deployed with
    moto's CloudFormation in-process (inside the caller's ``mock_aws`` if there is one, where the stack is
    deleted again), read back from IAM.
    """
    from moto import mock_aws

    with mock_aws():
        cfn, iam = _mocked_clients(account_id, region)
        stack = deploy(
            cfn,
            iam,
            template_name,
            parameters,
            stack_name=f"render-{uuid.uuid4().hex[:12]}",
            partition=partition,
            template_dir=template_dir,
        )
        try:
            return stack.role(logical_id)
        finally:
            cfn.delete_stack(StackName=stack.name)


def render_properties(
    template_name: str,
    logical_id: str,
    parameters: Mapping[str, str] | None = None,
    partition: str = "aws",
    account_id: str = "111111111111",
    region: str = "us-east-1",
    *,
    template_dir: Path | None = None,
) -> dict[str, Any]:
    """
    The ``Properties`` of one resource of a shipped template as moto's CloudFormation evaluates them (its
    ``ResourceMap`` and ``clean_json``, what ``create_stack`` runs), without creating anything.
    """
    from moto import mock_aws
    from moto.cloudformation.parsing import ResourceMap, clean_json

    template = load_template(template_name, template_dir)
    values = check_parameters(template, parameters or {})
    check_deployable(template)
    body = json.loads(template_body(template, partition))
    resource = body["Resources"].get(logical_id)
    if not isinstance(resource, dict):
        raise TemplateError(f"no resource {logical_id!r} in {template_name}")
    with mock_aws():
        resources = ResourceMap("render", "render", values, {}, region, account_id, body, {})
        resources.load()
        if "Condition" in resource and not resources.lazy_condition_map[resource["Condition"]]:
            raise TemplateError(f"{logical_id} is not created with these parameters")
        props = clean_json(resource.get("Properties") or {}, resources)
    return dict(_without_nulls(props))
