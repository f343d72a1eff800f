"""Settings from the ``cmdb_ec2_inventory`` Variable and the run's Params, validated."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

VARIABLE_KEY = "cmdb_ec2_inventory"
ORGANIZATIONS_KEY = "organizations"

# ASCII-only \d and \w, and \Z rather than $ (which also matches before a trailing newline).
ACCOUNT_ID_RE = re.compile(r"^\d{12}\Z", re.ASCII)
ROLE_NAME_RE = re.compile(r"^[\w+=,.@-]{1,64}\Z", re.ASCII)
EXTERNAL_ID_RE = re.compile(r"^[\w+=,.@:/-]{2,1224}\Z", re.ASCII)
BUCKET_RE = re.compile(r"^(?!xn--)(?!.*\.\.)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z", re.ASCII)
PREFIX_RE = re.compile(r"^[A-Za-z0-9!_.*'()/-]{1,512}\Z", re.ASCII)
SNS_ARN_RE = re.compile(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?\Z", re.ASCII)
KMS_KEY_RE = re.compile(
    r"^(arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:(key|alias)/[\w/+=,.@-]+|alias/[\w/+=,.@-]+|[0-9a-f-]{36})\Z",
    re.ASCII,
)
CONN_ID_RE = re.compile(r"^[\w.-]{1,250}\Z", re.ASCII)
ROOT_ID_RE = re.compile(r"^r-[0-9a-z]{4,32}\Z", re.ASCII)
OU_ID_RE = re.compile(r"^ou-[0-9a-z]{4,32}-[a-z0-9]{8,32}\Z", re.ASCII)
# arn:{partition}:iam::{account}:role/{optional/path/}{name}
ROLE_ARN_RE = re.compile(
    r"^arn:(aws[a-z-]*):iam::(\d{12}):role/((?:[\x21-\x7e]*/)?[\w+=,.@-]{1,64})\Z", re.ASCII
)
ACCOUNT_NAME_MAX = 256
# AssumeRole's limits: SourceIdentity 2-64 of [\w+=,.@-]; at most 50 session tags, keys 1-128 and values
# 0-256 characters of [\p{L}\p{Z}\p{N}_.:/=+\-@], keys unique regardless of case and not starting aws:.
SOURCE_IDENTITY_RE = re.compile(r"^[\w+=,.@-]{2,64}\Z", re.ASCII)
SESSION_TAGS_MAX = 50
SESSION_TAG_KEY_MAX = 128
SESSION_TAG_VALUE_MAX = 256

INSTANCE_STATES = ("pending", "running", "shutting-down", "stopping", "stopped", "terminated")
DEFAULT_INSTANCE_STATES = tuple(s for s in INSTANCE_STATES if s != "terminated")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and the bad value."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"invalid configuration {VARIABLE_KEY}.{key}: {message}")


CONTEXT_IN_STAGING = "staging"  # Account.to_dict's ``context``: the account's context is a staging document


@dataclass(frozen=True)
class Account:
    """One expected AWS account."""

    id: str
    name: str = ""
    # Its place in AWS Organizations, when it was discovered there: ``Root/Workloads/Prod``, and its tags
    # (ListTagsForResource) as sorted (key, value) pairs. Empty for an account known only from ``accounts``.
    ou_path: str = ""
    tags: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        """How the account is shown in the UI and in messages."""
        return f"{self.id} ({self.name})" if self.name else self.id

    @property
    def tags_json(self) -> str:
        """The account's tags as the ``AccountTags`` cell: a JSON object, keys sorted (``{}`` for none)."""
        return json.dumps(dict(self.tags), ensure_ascii=False, sort_keys=True, separators=(",", ":"))

    def to_dict(self) -> dict[str, str]:
        """
        Small JSON form, as passed between tasks: every mapped task pulls the whole list, so the organisation
        context (which grows with each account's tags) is not in it; ``context`` says that it waits in the
        run's staging prefix (``inventory.account_of`` reads it there).
        """
        data = {"id": self.id, "name": self.name, "label": self.label}
        if self.ou_path or self.tags:
            data["context"] = CONTEXT_IN_STAGING
        return data

    def context(self) -> dict[str, Any]:
        """The organisation context as the run's staging keeps it: ``{"ou_path", "tags"}``."""
        return {"ou_path": self.ou_path, "tags": dict(self.tags)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Account:
        """Inverse of :meth:`to_dict` (and of :meth:`context`'s keys, when ``data`` has them)."""
        raw_tags = data.get("tags") or {}
        tags = json.loads(raw_tags) if isinstance(raw_tags, str) else raw_tags
        return cls(
            id=str(data["id"]),
            name=str(data.get("name") or ""),
            ou_path=str(data.get("ou_path") or ""),
            tags=tuple(sorted((str(k), str(v)) for k, v in dict(tags).items())),
        )


@dataclass(frozen=True)
class OrganizationsSettings:
    """The validated ``organizations`` setting: where to discover accounts (organizations.py asks AWS)."""

    role_arn: str | None = None
    include_ous: tuple[str, ...] = ()
    exclude_ous: tuple[str, ...] = ()
    exclude_accounts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Settings:
    """Validated settings of one run."""

    accounts: tuple[Account, ...]
    bucket: str
    role_name: str = "CMDBDiscovery"
    external_id: str | None = None
    session_duration_seconds: int = 3600
    regions: tuple[str, ...] = ()
    exclude_regions: tuple[str, ...] = ()
    prefix: str = "cmdb/ec2-inventory"
    sns_topic_arn: str | None = None
    aws_conn_id: str = "aws_default"
    hub_region: str | None = None
    kms_key_id: str | None = None
    expected_bucket_owner: str | None = None
    instance_states: tuple[str, ...] = DEFAULT_INSTANCE_STATES
    region_threads: int = 17  # the regions every account has enabled by default: one wave
    max_attempts: int = 8
    denied_regions_fail_coverage: bool = True
    source_identity: str | None = None
    session_tags: tuple[tuple[str, str], ...] = ()  # sorted (key, value) pairs
    parquet: bool = False  # also write the snapshot as Parquet (formats.py)
    # Extra columns from instance tags: (column, tag keys in order); the first key with a value wins.
    tag_columns: tuple[tuple[str, tuple[str, ...]], ...] = ()
    servicenow: bool = False  # also write the ServiceNow IRE payload (servicenow.py)
    # More REMOVED than this share of the previous complete snapshot's instances: latest/ waits for a person.
    max_removed_fraction: float = 0.1
    organizations: OrganizationsSettings | None = None  # discover accounts at run time (resolve_accounts)
    accounts_from_params: bool = False  # the run's Params named the accounts of this run (``accounts``)
    # The Variable's own ``accounts``: with ``organizations``, the expected set that a run's Params may only
    # pick from (resolve_accounts checks the Params against it; ``accounts`` may be the Params' subset).
    configured_accounts: tuple[Account, ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        """The snapshot's CSV columns: the contract's, then the tag columns."""
        from include.cmdb_inventory.contract import columns

        return columns([column for column, _ in self.tag_columns])

    def account(self, account_id: str) -> Account:
        """The configured account with this id."""
        for acc in self.accounts:
            if acc.id == account_id:
                return acc
        return Account(id=account_id)


_KNOWN_KEYS = {
    "accounts",
    "role_name",
    "external_id",
    "session_duration_seconds",
    "regions",
    "exclude_regions",
    "bucket",
    "prefix",
    "sns_topic_arn",
    "aws_conn_id",
    "hub_region",
    "kms_key_id",
    "expected_bucket_owner",
    "instance_states",
    "region_threads",
    "max_attempts",
    "denied_regions_fail_coverage",
    "source_identity",
    "session_tags",
    "parquet",
    "organizations",
    "tag_columns",
    "servicenow",
    "max_removed_fraction",
}

# A tag column's name: a CSV header cell that every CMDB import tool and SQL engine takes as it is.
TAG_COLUMN_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}\Z", re.ASCII)
TAG_KEY_MAX = 128  # EC2's limit on a tag key's length
TAG_COLUMNS_MAX = 50


def known_regions() -> frozenset[str]:
    """Every region botocore knows, in every partition."""
    from include.cmdb_inventory.aws.clients import shared_botocore_session

    session = shared_botocore_session()
    regions: set[str] = set()
    for partition in session.get_available_partitions():
        regions.update(
            session.get_available_regions("ec2", partition_name=partition, allow_non_regional=False)
        )
    return frozenset(regions)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str, ensure_ascii=True)
    return text if len(text) <= 80 else text[:77] + "..."


def _string(raw: Mapping[str, Any], key: str, pattern: re.Pattern[str] | None = None) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string, got {_short(value)}")
    if pattern is not None and not pattern.match(value):
        raise ConfigError(key, f"{_short(value)} is not valid")
    return value


def _kind(value: Any) -> str:
    """What a JSON value is, without the value (for errors about values that must not be shown)."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return "null" if value is None else type(value).__name__


def _first_bad_character(text: str, allowed: Callable[[str], bool]) -> str:
    """Where ``text`` breaks the rule, without showing it: "character N is not allowed"."""
    for index, char in enumerate(text, 1):
        if not allowed(char):
            return f"character {index} is not allowed"
    return ""


def _external_id(raw: Mapping[str, Any], key: str = "external_id") -> str | None:
    """
    ``external_id``, checked like every string, but no error shows it: the ExternalId is the secret half of
    the member roles' trust, and errors reach task logs, alerts and the coverage page.
    """
    value = raw.get(key)
    if value is None:
        return None
    rule = "2-1224 letters, digits or +=,.@:/- (the value is not shown)"
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string of {rule}, got {_kind(value)}")
    if not EXTERNAL_ID_RE.match(value):
        why = (
            f"it has {len(value)} characters"
            if not 2 <= len(value) <= 1224
            else _first_bad_character(value, lambda c: bool(EXTERNAL_ID_RE.match(c * 2)))
        )
        raise ConfigError(key, f"is not valid: {why}; it must be {rule}")
    return value


def _integer(raw: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"must be an integer, got {_short(value)}")
    if not low <= value <= high:
        raise ConfigError(key, f"must be between {low} and {high}, got {value}")
    return value


def _boolean(raw: Mapping[str, Any], key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(key, f"must be true or false, got {_short(value)}")
    return value


def _tag_text_ok(text: str) -> bool:
    """Whether every character is one AWS allows in a session tag: letters, digits, spaces, ``_.:/=+-@``."""
    return all(unicodedata.category(c)[0] in "LNZ" or c in "_.:/=+-@" for c in text)


def _session_tags(raw: Mapping[str, Any], key: str = "session_tags") -> tuple[tuple[str, str], ...]:
    value = raw.get(key)
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"must be an object of tag keys to string values, got {_kind(value)}")
    if len(value) > SESSION_TAGS_MAX:
        raise ConfigError(key, f"has {len(value)} tags; AWS allows at most {SESSION_TAGS_MAX}")
    seen: set[str] = set()
    for tag, tag_value in value.items():
        if (
            not isinstance(tag, str)
            or not 1 <= len(tag) <= SESSION_TAG_KEY_MAX
            or not _tag_text_ok(tag)
            or tag.lower().startswith("aws:")
        ):
            raise ConfigError(
                key,
                f"tag key {_short(tag)} is not valid: 1-{SESSION_TAG_KEY_MAX} letters, digits, spaces or "
                "_.:/=+-@, not starting with aws:",
            )
        # Tag values are never shown (they may carry what the member accounts' trust conditions check):
        # the error says which tag and why.
        if not isinstance(tag_value, str):
            why = f"got {_kind(tag_value)}"
        elif len(tag_value) > SESSION_TAG_VALUE_MAX:
            why = f"it has {len(tag_value)} characters"
        else:
            why = _first_bad_character(tag_value, _tag_text_ok)
        if why:
            raise ConfigError(
                key,
                f"the value of tag {_short(tag)} is not valid: {why}; it must be a string of at most "
                f"{SESSION_TAG_VALUE_MAX} letters, digits, spaces or _.:/=+-@ (the value is not shown)",
            )
        if tag.lower() in seen:
            raise ConfigError(key, f"duplicate tag key {_short(tag)} (AWS compares tag keys ignoring case)")
        seen.add(tag.lower())
    return tuple(sorted(value.items()))


def _region_list(raw: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = raw.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
        raise ConfigError(key, f"must be a list of region names, got {_short(value)}")
    known = known_regions()
    unknown = [r for r in value if r not in known]
    if unknown:
        raise ConfigError(key, f"unknown region name {_short(unknown[0])}")
    seen: list[str] = []
    for region in value:
        if region not in seen:
            seen.append(region)
    return tuple(seen)


def _tag_columns(raw: Mapping[str, Any], key: str = "tag_columns") -> tuple[tuple[str, tuple[str, ...]], ...]:
    """
    ``{"Owner": ["owner", "Owner", "team"], ...}``: each column (a new CSV column after the contract's)
    holds the value of the first of its tag keys an instance has with a non-empty value (keys compared
    case-sensitively; records.tag_column_values).
    """
    from include.cmdb_inventory.contract import COLUMNS

    value = raw.get(key)
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"must be an object of column names to lists of tag keys, got {_kind(value)}")
    if len(value) > TAG_COLUMNS_MAX:
        raise ConfigError(key, f"has {len(value)} columns; at most {TAG_COLUMNS_MAX} are allowed")
    taken = {c.lower() for c in COLUMNS}
    seen: set[str] = set()
    parsed: list[tuple[str, tuple[str, ...]]] = []
    for column, keys in value.items():
        where = f"{key}.{column}"
        if not isinstance(column, str) or not TAG_COLUMN_RE.match(column):
            raise ConfigError(
                key,
                f"column name {_short(column)} is not valid: a letter, then up to 63 letters, digits or _",
            )
        if column.lower() in taken:
            raise ConfigError(where, f"{column} is already a column of the inventory (names ignore case)")
        if column.lower() in seen:
            raise ConfigError(where, "duplicate column name (names ignore case)")
        seen.add(column.lower())
        if not isinstance(keys, list) or not keys:
            raise ConfigError(where, f"must be a non-empty list of tag keys, got {_short(keys)}")
        for index, tag in enumerate(keys):
            if not isinstance(tag, str) or not 1 <= len(tag) <= TAG_KEY_MAX:
                raise ConfigError(
                    f"{where}[{index}]",
                    f"{_short(tag)} is not a tag key (a string of 1-{TAG_KEY_MAX} characters)",
                )
            if tag in keys[:index]:
                raise ConfigError(f"{where}[{index}]", f"duplicate tag key {_short(tag)}")
        parsed.append((column, tuple(keys)))
    return tuple(parsed)


def _fraction(raw: Mapping[str, Any], key: str, default: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:  # NaN != NaN
        raise ConfigError(key, f"must be a number between 0 and 1, got {_short(value)}")
    if not 0 <= value <= 1:
        raise ConfigError(key, f"must be between 0 and 1, got {value}")
    return float(value)


def parse_accounts(value: Any, key: str = "accounts") -> tuple[Account, ...]:
    """Validate an account list: ids as 12-digit strings or ``{"id", "name"}`` objects, no duplicates."""
    if not isinstance(value, list):
        raise ConfigError(key, f"must be a list of 12-digit account ids, got {_short(value)}")
    if not value:
        raise ConfigError(key, "is empty: at least one account is required")
    accounts: list[Account] = []
    seen: set[str] = set()
    for index, item in enumerate(value):
        where = f"{key}[{index}]"
        name = ""
        if isinstance(item, Mapping):
            unknown = sorted(set(item) - {"id", "name"})
            if unknown:
                raise ConfigError(where, f"unknown key {_short(unknown[0])} (allowed: id, name)")
            account_id = item.get("id")
            name = item.get("name") or ""
            if not isinstance(name, str) or len(name) > ACCOUNT_NAME_MAX:
                raise ConfigError(
                    f"{where}.name",
                    f"must be a string of at most {ACCOUNT_NAME_MAX} characters, got {_short(name)}",
                )
        else:
            account_id = item
        if not isinstance(account_id, str):
            raise ConfigError(
                where, f"account id {_short(account_id)} must be a string of 12 digits (quote it)"
            )
        if not ACCOUNT_ID_RE.match(account_id):
            raise ConfigError(where, f"account id {_short(account_id)} is not 12 digits")
        if account_id in seen:
            raise ConfigError(where, f"duplicate account id {account_id}")
        seen.add(account_id)
        accounts.append(Account(id=account_id, name=name))
    return tuple(accounts)


def _id_list(raw: Mapping[str, Any], name: str, pattern: re.Pattern[str], what: str) -> tuple[str, ...]:
    key = f"{ORGANIZATIONS_KEY}.{name}"
    value = raw.get(name)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(key, f"must be a list of {what}, got {_short(value)}")
    seen: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, str) or not pattern.match(item):
            raise ConfigError(f"{key}[{index}]", f"{_short(item)} is not {what}")
        if item in seen:
            raise ConfigError(f"{key}[{index}]", f"duplicate {item}")
        seen.append(item)
    return tuple(seen)


def parse_organizations(value: Any, static_ids: Sequence[str] = ()) -> OrganizationsSettings:
    """Validate the ``organizations`` object (no AWS call); errors name the key, e.g. ``include_ous[1]``."""
    key = ORGANIZATIONS_KEY
    if not isinstance(value, Mapping):
        raise ConfigError(
            key,
            f"must be an object with role_arn, include_ous, exclude_ous, exclude_accounts; "
            f"got {_short(value)}",
        )
    allowed = ("role_arn", "include_ous", "exclude_ous", "exclude_accounts")
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}", f"unknown key (allowed: {', '.join(allowed)})")
    role_arn = value.get("role_arn")
    if role_arn is not None and (not isinstance(role_arn, str) or not ROLE_ARN_RE.match(role_arn)):
        raise ConfigError(
            f"{key}.role_arn",
            f"{_short(role_arn)} is not an IAM role ARN (arn:aws:iam::123456789012:role/NAME)",
        )
    include = _id_list(
        value,
        "include_ous",
        re.compile(f"{OU_ID_RE.pattern}|{ROOT_ID_RE.pattern}"),
        "an OU id (ou-...) or root id (r-...)",
    )
    exclude = _id_list(value, "exclude_ous", OU_ID_RE, "an OU id (ou-xxxx-xxxxxxxx)")
    both = [ou for ou in exclude if ou in include]
    if both:
        index = exclude.index(both[0])
        raise ConfigError(f"{key}.exclude_ous[{index}]", f"{both[0]} is also in include_ous")
    accounts = _id_list(value, "exclude_accounts", ACCOUNT_ID_RE, "a 12-digit account id (as a string)")
    listed = [a for a in accounts if a in static_ids]
    if listed:
        index = accounts.index(listed[0])
        raise ConfigError(
            f"{key}.exclude_accounts[{index}]",
            f"{listed[0]} is also listed in accounts: remove it from one of the two",
        )
    return OrganizationsSettings(
        role_arn=role_arn, include_ous=include, exclude_ous=exclude, exclude_accounts=accounts
    )


def parse_settings(raw: Any, params: Mapping[str, Any] | None = None) -> Settings:
    """Validate the Variable's JSON (already decoded) and the run's Params into :class:`Settings`."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as err:
            raise ConfigError("(json)", f"is not valid JSON: {err.msg} at line {err.lineno}") from None
    if not isinstance(raw, Mapping):
        raise ConfigError("(root)", f"must be a JSON object, got {_short(raw)}")
    unknown = sorted(k for k in raw if k not in _KNOWN_KEYS)
    if unknown:
        raise ConfigError(str(unknown[0]), "unknown key (check the spelling; see docs/configuration.md)")
    params = params or {}

    # The expected accounts come from the Variable (and/or Organizations) only: the accounts Param picks a
    # subset of them for one run, never adds to them (resolve_accounts refuses any other account).
    organizations = None
    if raw.get("organizations") is not None:
        static = raw.get("accounts")
        static_accounts = parse_accounts(static) if static not in (None, []) else ()
        organizations = parse_organizations(raw["organizations"], [a.id for a in static_accounts])
    elif "accounts" not in raw:
        raise ConfigError(
            "accounts",
            "is required unless 'organizations' is set: list the accounts, or discover them "
            "(the accounts Param of a run only picks accounts from these)",
        )
    else:
        static_accounts = parse_accounts(raw["accounts"])
    requested = parse_accounts(params["accounts"], key="params.accounts") if params.get("accounts") else ()
    accounts = requested or static_accounts

    bucket = _string(raw, "bucket", BUCKET_RE)
    if not bucket:
        raise ConfigError("bucket", "is required")
    prefix = _string(raw, "prefix") or "cmdb/ec2-inventory"
    prefix = prefix.strip("/")
    if not PREFIX_RE.match(prefix) or any(part in ("", ".", "..") for part in prefix.split("/")):
        raise ConfigError("prefix", f"{_short(prefix)} is not a safe S3 prefix")

    regions = _region_list(raw, "regions")
    if "regions" in raw and not regions:
        raise ConfigError("regions", "is empty: omit it to scan every enabled region")
    states = raw.get("instance_states", list(DEFAULT_INSTANCE_STATES))
    if not isinstance(states, list) or not states or any(s not in INSTANCE_STATES for s in states):
        raise ConfigError(
            "instance_states",
            f"must be a non-empty list of {', '.join(INSTANCE_STATES)}, got {_short(states)}",
        )
    hub_region = _string(raw, "hub_region")
    if hub_region is not None and hub_region not in known_regions():
        raise ConfigError("hub_region", f"unknown region name {_short(hub_region)}")

    return Settings(
        accounts=accounts,
        bucket=bucket,
        role_name=_string(raw, "role_name", ROLE_NAME_RE) or "CMDBDiscovery",
        external_id=_external_id(raw),
        session_duration_seconds=_integer(raw, "session_duration_seconds", 3600, 900, 43200),
        regions=regions,
        exclude_regions=_region_list(raw, "exclude_regions"),
        prefix=prefix,
        sns_topic_arn=_string(raw, "sns_topic_arn", SNS_ARN_RE),
        aws_conn_id=_string(raw, "aws_conn_id", CONN_ID_RE) or "aws_default",
        hub_region=hub_region,
        kms_key_id=_string(raw, "kms_key_id", KMS_KEY_RE),
        expected_bucket_owner=_string(raw, "expected_bucket_owner", ACCOUNT_ID_RE),
        instance_states=tuple(dict.fromkeys(states)),
        region_threads=_integer(raw, "region_threads", 17, 1, 64),
        max_attempts=_integer(raw, "max_attempts", 8, 1, 20),
        denied_regions_fail_coverage=_boolean(raw, "denied_regions_fail_coverage", True),
        source_identity=_string(raw, "source_identity", SOURCE_IDENTITY_RE),
        session_tags=_session_tags(raw),
        parquet=_boolean(raw, "parquet", False),
        tag_columns=_tag_columns(raw),
        servicenow=_boolean(raw, "servicenow", False),
        max_removed_fraction=_fraction(raw, "max_removed_fraction", 0.1),
        organizations=organizations,
        accounts_from_params=bool(requested),
        configured_accounts=static_accounts,
    )
