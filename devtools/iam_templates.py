"""Render the IAM roles of the shipped CloudFormation templates (``include/iam``) to plain JSON.

Tests and the demo seeder use this so the policies they exercise are the policies we ship. Only the
subset of CloudFormation the templates use is evaluated: String parameters (defaults, AllowedValues,
AllowedPattern, Min/MaxLength), Number parameters (MinValue/MaxValue; a ``Ref`` gives the number as a
string, as in CloudFormation), Conditions, ``Ref`` (parameters and the AWS::Partition, AWS::AccountId,
AWS::Region, AWS::URLSuffix and AWS::NoValue pseudo parameters), ``Fn::Sub``, ``Fn::If``,
``Fn::Equals``, ``Fn::Not``, ``Fn::And``, ``Fn::Or``, ``Fn::Join`` and ``Condition``. Anything else raises
:class:`TemplateError` rather than being guessed at.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "include" / "iam"
"""Where the shipped templates live (``include/iam``)."""

ROLE_TYPE = "AWS::IAM::Role"
_ROLE_PROPERTIES = frozenset(
    {"RoleName", "AssumeRolePolicyDocument", "Policies", "MaxSessionDuration", "Path", "Description"}
)
_SUB_VAR = re.compile(r"\$\{([^}]*)\}")


class TemplateError(ValueError):
    """The template, or the parameters given for it, cannot be rendered."""


class _NoValue:
    """The value of ``Ref: AWS::NoValue``: the enclosing key or list item is removed."""

    def __repr__(self) -> str:
        return "AWS::NoValue"


NO_VALUE: Any = _NoValue()


@dataclass(frozen=True)
class RenderedRole:
    """One ``AWS::IAM::Role`` as CloudFormation would create it."""

    role_name: str
    assume_role_policy: dict[str, Any]
    policies: dict[str, dict[str, Any]]
    max_session_duration: int = 3600
    path: str = "/"
    description: str = ""
    logical_id: str = field(default="", compare=False)


# --------------------------------------------------------------------------- YAML loading


class _CfnLoader(yaml.SafeLoader):
    """SafeLoader that understands CloudFormation short-form tags and keeps dates as strings."""


# CloudFormation keeps "2012-10-17" a string; YAML 1.1 would make it a date.
_CfnLoader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}

_SHORT_FORMS = {
    "Ref": "Ref",
    "Condition": "Condition",
    "Sub": "Fn::Sub",
    "If": "Fn::If",
    "Equals": "Fn::Equals",
    "Not": "Fn::Not",
    "And": "Fn::And",
    "Or": "Fn::Or",
    "Join": "Fn::Join",
    "GetAtt": "Fn::GetAtt",
}


def _construct_short_form(loader: _CfnLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = _SHORT_FORMS.get(tag_suffix)
    if name is None:
        raise TemplateError(f"unsupported CloudFormation tag !{tag_suffix} at {node.start_mark}")
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if name == "Fn::GetAtt":
            value = str(value).split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    else:  # pragma: no cover - PyYAML has no other node kinds
        raise TemplateError(f"cannot read !{tag_suffix} at {node.start_mark}")
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


# --------------------------------------------------------------------------- evaluation


class _Evaluator:
    """Evaluates intrinsic functions against resolved parameters and conditions."""

    def __init__(self, template: Mapping[str, Any], refs: dict[str, Any]) -> None:
        self._conditions: Mapping[str, Any] = template.get("Conditions") or {}
        self._refs = refs
        self._resolved: dict[str, bool] = {}
        self._resolving: set[str] = set()

    def condition(self, name: Any) -> bool:
        """The value of the named condition."""
        if not isinstance(name, str) or name not in self._conditions:
            raise TemplateError(f"unknown condition {name!r}")
        if name in self._resolved:
            return self._resolved[name]
        if name in self._resolving:
            raise TemplateError(f"condition {name!r} refers to itself")
        self._resolving.add(name)
        value = self._boolean(self._conditions[name])
        self._resolving.discard(name)
        self._resolved[name] = value
        return value

    def _boolean(self, node: Any) -> bool:
        if isinstance(node, dict) and list(node) == ["Condition"]:
            return self.condition(node["Condition"])
        value = self.value(node)
        if isinstance(value, bool):
            return value
        if value in ("true", "false"):
            return value == "true"
        raise TemplateError(f"expected a condition, got {value!r}")

    def value(self, node: Any) -> Any:
        """Evaluate ``node``; may return :data:`NO_VALUE`."""
        if isinstance(node, list):
            items = [self.value(item) for item in node]
            return [item for item in items if item is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Ref" or key.startswith("Fn::"):
                return self._intrinsic(key, arg)
        result = {}
        for key, child in node.items():
            value = self.value(child)
            if value is not NO_VALUE:
                result[key] = value
        return result

    def _intrinsic(self, name: str, arg: Any) -> Any:
        if name == "Ref":
            return self._ref(arg)
        if name == "Fn::If":
            if not (isinstance(arg, list) and len(arg) == 3):
                raise TemplateError(f"Fn::If needs [condition, value_if_true, value_if_false], got {arg!r}")
            return self.value(arg[1] if self.condition(arg[0]) else arg[2])
        if name == "Fn::Equals":
            if not (isinstance(arg, list) and len(arg) == 2):
                raise TemplateError(f"Fn::Equals needs two values, got {arg!r}")
            left, right = (self._string(self.value(item), name) for item in arg)
            return left == right
        if name == "Fn::Not":
            if not (isinstance(arg, list) and len(arg) == 1):
                raise TemplateError(f"Fn::Not needs one condition, got {arg!r}")
            return not self._boolean(arg[0])
        if name in ("Fn::And", "Fn::Or"):
            if not (isinstance(arg, list) and 2 <= len(arg) <= 10):
                raise TemplateError(f"{name} needs 2 to 10 conditions, got {arg!r}")
            values = [self._boolean(item) for item in arg]
            return all(values) if name == "Fn::And" else any(values)
        if name == "Fn::Sub":
            return self._sub(arg)
        if name == "Fn::Join":
            return self._join(arg)
        raise TemplateError(f"unsupported intrinsic function {name} ({arg!r})")

    def _ref(self, name: Any) -> Any:
        if not isinstance(name, str):
            raise TemplateError(f"Ref needs a name, got {name!r}")
        if name not in self._refs:
            raise TemplateError(f"unsupported Ref {name!r} (only parameters and pseudo parameters)")
        return self._refs[name]

    def _sub(self, arg: Any) -> str:
        variables: dict[str, Any] = {}
        if isinstance(arg, list):
            if len(arg) != 2 or not isinstance(arg[1], dict):
                raise TemplateError(f"Fn::Sub list form needs [string, {{variables}}], got {arg!r}")
            arg, raw = arg
            variables = {key: self.value(value) for key, value in raw.items()}
        if not isinstance(arg, str):
            raise TemplateError(f"Fn::Sub needs a string, got {arg!r}")

        def replace(match: re.Match[str]) -> str:
            var = match.group(1)
            if var.startswith("!"):
                return "${" + var[1:] + "}"
            value = variables[var] if var in variables else self._sub_ref(var)
            return self._string(value, "Fn::Sub")

        return _SUB_VAR.sub(replace, arg)

    def _sub_ref(self, var: str) -> Any:
        if "." in var and var not in self._refs:
            raise TemplateError(f"unsupported Fn::Sub attribute reference ${{{var}}}")
        return self._ref(var)

    def _join(self, arg: Any) -> str:
        if not (isinstance(arg, list) and len(arg) == 2 and isinstance(arg[0], str)):
            raise TemplateError(f"Fn::Join needs [delimiter, [values]], got {arg!r}")
        values = self.value(arg[1])
        if not isinstance(values, list):
            raise TemplateError(f"Fn::Join needs a list of values, got {values!r}")
        return arg[0].join(self._string(value, "Fn::Join") for value in values)

    @staticmethod
    def _string(value: Any, where: str) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str | int | float):
            return str(value)
        raise TemplateError(f"{where} needs a string value, got {value!r}")


def _parameter_values(template: Mapping[str, Any], given: Mapping[str, str]) -> dict[str, str]:
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


def _pseudo_parameters(partition: str, account_id: str, region: str) -> dict[str, Any]:
    return {
        "AWS::Partition": partition,
        "AWS::AccountId": account_id,
        "AWS::Region": region,
        "AWS::URLSuffix": "amazonaws.com.cn" if partition == "aws-cn" else "amazonaws.com",
        "AWS::NoValue": NO_VALUE,
    }


def _document(value: Any, where: str) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise TemplateError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise TemplateError(f"{where} must be a policy document mapping, got {value!r}")
    return value


def render_role_from_template(
    template: Mapping[str, Any],
    parameters: Mapping[str, str] | None = None,
    *,
    partition: str = "aws",
    account_id: str = "111111111111",
    region: str = "us-east-1",
    logical_id: str | None = None,
) -> RenderedRole:
    """Render the (only, or ``logical_id``) ``AWS::IAM::Role`` of an already-loaded template."""
    resources: Mapping[str, Any] = template.get("Resources") or {}
    roles = [key for key, res in resources.items() if isinstance(res, dict) and res.get("Type") == ROLE_TYPE]
    if logical_id is None:
        if len(roles) != 1:
            raise TemplateError(f"expected exactly one {ROLE_TYPE} resource, found {roles}; pass logical_id")
        logical_id = roles[0]
    elif logical_id not in roles:
        raise TemplateError(f"no {ROLE_TYPE} resource {logical_id!r}; the template has {roles}")

    refs: dict[str, Any] = _pseudo_parameters(partition, account_id, region)
    refs.update(_parameter_values(template, parameters or {}))
    evaluator = _Evaluator(template, refs)

    resource = resources[logical_id]
    if "Condition" in resource and not evaluator.condition(resource["Condition"]):
        raise TemplateError(f"{logical_id} is not created with these parameters")
    props = evaluator.value(resource.get("Properties") or {})
    extra = sorted(set(props) - _ROLE_PROPERTIES)
    if extra:
        raise TemplateError(f"{logical_id}: unsupported role properties {extra}")
    if not isinstance(props.get("RoleName"), str):
        raise TemplateError(f"{logical_id}: RoleName must be set (generated names are not supported)")

    policies: dict[str, dict[str, Any]] = {}
    for policy in props.get("Policies", []):
        name = policy.get("PolicyName")
        if not isinstance(name, str) or name in policies:
            raise TemplateError(f"{logical_id}: missing or duplicate PolicyName {name!r}")
        policies[name] = _document(policy.get("PolicyDocument"), f"{logical_id} policy {name}")

    return RenderedRole(
        role_name=props["RoleName"],
        assume_role_policy=_document(props.get("AssumeRolePolicyDocument"), f"{logical_id} trust policy"),
        policies=policies,
        max_session_duration=int(props.get("MaxSessionDuration", 3600)),
        path=str(props.get("Path", "/")),
        description=str(props.get("Description", "")),
        logical_id=logical_id,
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
) -> RenderedRole:
    """Render the IAM role of the shipped template ``template_name`` with these parameter values."""
    return render_role_from_template(
        load_template(template_name, template_dir),
        parameters,
        partition=partition,
        account_id=account_id,
        region=region,
        logical_id=logical_id,
    )


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
    """The ``Properties`` of one resource of a shipped template, evaluated with these parameter values."""
    template = load_template(template_name, template_dir)
    resource = (template.get("Resources") or {}).get(logical_id)
    if not isinstance(resource, dict):
        raise TemplateError(f"no resource {logical_id!r} in {template_name}")
    refs: dict[str, Any] = _pseudo_parameters(partition, account_id, region)
    refs.update(_parameter_values(template, parameters or {}))
    evaluator = _Evaluator(template, refs)
    if "Condition" in resource and not evaluator.condition(resource["Condition"]):
        raise TemplateError(f"{logical_id} is not created with these parameters")
    props = evaluator.value(resource.get("Properties") or {})
    if not isinstance(props, dict):
        raise TemplateError(f"{logical_id}: Properties must be a mapping")
    return props
