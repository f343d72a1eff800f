"""
The output contract in code: where each file of a snapshot lives in S3 (``Layout``), the CSV's columns, the
coverage statuses, and the shapes of the manifest, the run summary and an account's status document.
The CMDB team's imports, the UI and the tests rely on these; change them only with docs/output-contract.md.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

# 2: the DescribeInstances attributes, the organisation context and the tag columns appended (issue 9).
SCHEMA_VERSION = 2

# The first four columns are the 2015 script's, so existing imports keep working.
COLUMNS: tuple[str, ...] = (
    "Account",
    "Region",
    "InstanceId",
    "Name",
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
    # Schema 2: from the same DescribeInstances answer (no new permission) ...
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
    # ... and the account's place in AWS Organizations (empty for accounts not discovered there).
    "AccountOuPath",
    "AccountTags",
)
# The columns of schema 1: a part or CSV written before schema 2 has exactly these.
SCHEMA_1_COLUMNS: tuple[str, ...] = COLUMNS[: COLUMNS.index("CollectedAt") + 1]
# Columns holding several values: ``;``-joined (sorted) in the CSV, lists of strings in Parquet.
LIST_COLUMNS: tuple[str, ...] = ("SecurityGroupIds", "EbsVolumeIds", "Ipv6Addresses")
LIST_SEPARATOR = ";"


def columns(tag_columns: Sequence[str] = ()) -> tuple[str, ...]:
    """A snapshot's columns: :data:`COLUMNS`, then the configured tag columns (``tag_columns``) in order."""
    return (*COLUMNS, *tag_columns)


CSV_NAME = "ec2_inventory.csv"
MANIFEST_NAME = "manifest.json"
CHANGES_NAME = "changes.csv"
PARQUET_NAME = "ec2_inventory.parquet"
# The ServiceNow export (``servicenow: true``): an Identification and Reconciliation API payload.
IRE_PAYLOAD_NAME = "servicenow/ire_payload.json.gz"

# Coverage statuses: one per expected account and region (or per account, before its regions are known).
OK = "OK"
REGION_DISABLED = "REGION_DISABLED"  # region not enabled (opted out) in the account: not a gap
REGION_DENIED = "REGION_DENIED"  # a policy (SCP, permission boundary) denies the region
ROLE_NOT_ASSUMABLE = "ROLE_NOT_ASSUMABLE"  # the role is missing, its trust is broken, or AssumeRole denied
THROTTLED = "THROTTLED"  # throttling outlasted botocore's retries
ERROR = "ERROR"  # any other error
TASK_FAILED = "TASK_FAILED"  # the account's task ended without reporting a status
NOT_REQUESTED = "NOT_REQUESTED"  # an expected account that a Param-subset run did not name: a gap

STATUSES = (
    OK,
    REGION_DISABLED,
    REGION_DENIED,
    ROLE_NOT_ASSUMABLE,
    THROTTLED,
    ERROR,
    TASK_FAILED,
    NOT_REQUESTED,
)

# The mass-removal guard's states (manifest ``removal_guard.state``): a snapshot that would report more of the
# previous complete snapshot's instances as REMOVED than ``max_removed_fraction`` is HELD: written under its
# date, but ``latest/`` and the Asset event wait for a person (APPROVED, or REJECTED: latest/ stays).
GUARD_CLEAR = "CLEAR"
GUARD_HELD = "HELD"
GUARD_APPROVED = "APPROVED"
GUARD_REJECTED = "REJECTED"
GUARD_STATES = (GUARD_CLEAR, GUARD_HELD, GUARD_APPROVED, GUARD_REJECTED)
APPROVAL_TASK_ID = "approve_removals"  # the inventory DAG's task where a person decides on a HELD snapshot

_SAFE_RE = re.compile(r"[^A-Za-z0-9._-]")


def safe_segment(text: str, limit: int = 80) -> str:
    """A string made safe to be one S3 key segment (never user text as-is)."""
    cleaned = _SAFE_RE.sub("_", text)[:limit].strip(".") or "_"
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"{cleaned}-{digest}"


@dataclass(frozen=True)
class Layout:
    """Where everything lives under ``s3://{bucket}/{prefix}/``."""

    prefix: str

    def snapshot(self, ds: str, name: str) -> str:
        """Key of a snapshot file of one logical date (contract)."""
        return f"{self.prefix}/ds={ds}/{name}"

    def latest(self, name: str) -> str:
        """Key of the newest date's snapshot file (contract)."""
        return f"{self.prefix}/latest/{name}"

    def staging(self, ds: str, run_id: str) -> str:
        """Run-specific staging prefix, so two runs never mix their parts."""
        return f"{self.prefix}/_staging/ds={ds}/run={safe_segment(run_id)}"

    def part(self, staging: str, account_id: str) -> str:
        """One account's CSV rows (gzip, no header, sorted)."""
        return f"{staging}/parts/{account_id}.csv.gz"

    def status(self, staging: str, account_id: str) -> str:
        """One account's coverage status."""
        return f"{staging}/status/{account_id}.json"

    def context(self, staging: str, account_id: str) -> str:
        """One account's organisation context (OU path, tags), written by resolve for its scan."""
        return f"{staging}/context/{account_id}.json"

    def commits(self, ds: str) -> str:
        """Where every commit of one date keeps its objects (``{prefix}/ds=D/run=``...)."""
        return f"{self.prefix}/ds={ds}/run="

    def commit(self, ds: str, run_id: str, attempt: str) -> str:
        """
        One merge attempt's own folder: its CSV, ``changes.csv`` and Parquet file, written once and never
        changed; the date's manifest commits them (its ``csv_key`` etc. name them).
        """
        return f"{self.commits(ds)}{safe_segment(run_id)}/{attempt}"


@dataclass(frozen=True)
class CommitLayout(Layout):
    """A layout whose snapshot files of ``ds`` are one commit's (its ``folder``), every other key as usual."""

    ds: str = ""
    folder: str = ""

    def snapshot(self, ds: str, name: str) -> str:
        """The commit's file for its own date; the contract's key for any other date."""
        return f"{self.folder}/{name}" if ds == self.ds else super().snapshot(ds, name)


# --- The shapes of the documents and XComs (what the code writes; ``NotRequired``: only some have it) ---
# An AWS error is ``{"code": ..., "message": ...}`` (``aws.errors.error_of``) wherever one is kept.


class RegionStatus(TypedDict):
    """One region of an account, as its scan left it (in the account's status document)."""

    region: str
    status: str
    instances: int
    error: NotRequired[dict[str, str]]  # where not OK


class AccountStatus(TypedDict):
    """
    One account's status document, ``{staging}/status/{account}.json`` (``Layout.status``): written by
    ``scan_account`` before any failure is raised, read by ``merge_inventory``; ``status`` is a coverage
    status of the whole account, ``regions`` each region's.
    """

    account: str
    account_name: str
    dag_run_id: str
    try_number: int
    finished_at: str
    regions: list[RegionStatus]
    instances: int
    part_key: str | None  # the account's part (gzip CSV rows) when it was scanned
    error: dict[str, str] | None
    status: str
    role_arn: NotRequired[str]
    regions_source: NotRequired[str]
    note: NotRequired[str]
    columns: NotRequired[list[str]]  # the part's columns (the settings' when it was scanned)
    tag_sources: NotRequired[dict[str, dict[str, int]]]  # tag column -> tag key ("" none) -> instances


class LedgerEntry(TypedDict):
    """One entry of the manifest's ``coverage``: an account and region, or an account (``region`` None)."""

    account: str
    account_name: str
    region: str | None
    status: str
    instances: int
    error: NotRequired[dict[str, str] | None]  # where not OK
    note: NotRequired[str]


class ManifestAccount(TypedDict):
    """One entry of the manifest's ``accounts``: each expected account's own status."""

    id: str
    name: str
    status: str
    role_arn: str
    regions_source: str
    try_number: int | None


class PublishedFile(TypedDict):
    """A fixed-name file of a snapshot and the object it is a copy of (``key`` None: it must not exist)."""

    name: str
    key: str | None
    bytes: int | None


class TagColumn(TypedDict):
    """A configured tag column (manifest ``tag_columns``): its tag keys, which key each value came from."""

    column: str
    keys: list[str]  # in the configured order: the first key an instance has with a value gives the cell
    matched: dict[str, int]  # tag key -> instances whose value came from it
    unmatched: int  # instances with none of the keys (the cell is empty)


class RemovalGuard(TypedDict):
    """The manifest's ``removal_guard``: whether this snapshot may move ``latest/`` without a person."""

    state: str  # GUARD_STATES
    removed: int  # instances REMOVED (verified regions only) against the previous complete snapshot
    previous_rows: int  # that snapshot's instances (0: nothing to compare with)
    previous_ds: str | None
    fraction: float | None  # removed / previous_rows, None when nothing was compared
    max_removed_fraction: float
    reason: str
    decided_by: NotRequired[str]  # who approved or rejected it (APPROVED, REJECTED)
    decided_at: NotRequired[str]


class OrganizationContext(TypedDict):
    """The manifest's ``organization_context``: what AWS Organizations told about the expected accounts."""

    ou_paths: bool  # each account found in the organisation has its ``ou_path`` (``Root/Workloads/Prod``)
    tags: bool  # its account tags were read (ListTagsForResource, an optional permission)
    tags_error: NotRequired[str]  # why they were not: the AWS error code and message (AccessDeniedException)


class Manifest(TypedDict):
    """
    ``ds=YYYY-MM-DD/manifest.json`` (and ``latest/manifest.json``): the snapshot's commit point and its
    coverage ledger. The keys from ``csv_sha256`` on are set when a snapshot is written (committed).
    """

    schema_version: int
    dag_id: str
    dag_run_id: str
    logical_date: str
    ds: str
    collected_at: str
    csv_key: str
    csv_uri: str
    columns: list[str]
    row_count: int
    complete: bool
    subset: bool
    accounts_requested: list[str] | None  # the accounts a Param-subset run named; None for a full run
    accounts_expected: int
    accounts_covered: int
    regions_scanned: int
    regions_disabled: int
    denied_regions_fail_coverage: bool
    accounts: list[ManifestAccount]
    coverage: list[LedgerEntry]
    accounts_source: str
    expected_accounts: list[dict[str, Any]]  # {"id", "name", "source"}, with Organizations "ou_path", "tags"
    accounts_not_scanned: list[dict[str, str]]  # {"id", "name", "state", "reason"}
    organization_context: NotRequired[OrganizationContext]  # when Organizations was asked
    csv_sha256: NotRequired[str]
    csv_bytes: NotRequired[int]
    commit_id: NotRequired[str]
    commit_prefix: NotRequired[str]
    changes: NotRequired[dict[str, Any]]  # changes.write_changes' summary
    parquet: NotRequired[dict[str, Any] | None]  # formats.write_formats' entries
    athena: NotRequired[dict[str, Any]]
    published: NotRequired[list[PublishedFile]]
    replaces_commit_prefix: NotRequired[str | None]
    tag_columns: NotRequired[list[TagColumn]]
    servicenow: NotRequired[dict[str, Any] | None]  # servicenow.write_payload's entry
    removal_guard: NotRequired[RemovalGuard]


class Plan(TypedDict):
    """What ``resolve_accounts`` decided for the run (its XCom ``plan``, read by the merge)."""

    expected: list[dict[str, str]]  # the accounts this run scans (``Account.to_dict``)
    expected_accounts: list[dict[str, Any]]  # the whole expected set, each with its source
    not_scanned: list[dict[str, str]]
    accounts_source: str
    organization_context: NotRequired[OrganizationContext | None]
    skip_reason: str | None  # why nothing is scanned (the date is already complete), if so


class Resolved(Plan):
    """``resolve_accounts``' answer: the plan and the accounts to map over."""

    accounts: list[dict[str, str]]


class UnusableDocument(TypedDict):
    """A document the merge could not use (not JSON, not an object): where, and why."""

    key: str
    uri: str
    problem: str


class RunSummary(TypedDict):
    """``merge_inventory``'s XCom, what ``notify_cmdb`` and ``check_coverage`` read: small, keys not data."""

    ds: str
    dag_run_id: str
    written: bool
    decision_reason: str
    csv_uri: str
    manifest_uri: str
    latest_uri: str
    latest_updated: bool
    row_count: int
    accounts_expected: int
    accounts_covered: int
    regions_scanned: int
    regions_disabled: int
    run_complete: bool
    snapshot_complete: bool
    subset: bool  # this run's, whether or not it was written
    accounts_requested: list[str] | None
    gap_count: int
    gaps: list[LedgerEntry]  # the first ``MAX_GAPS_IN_XCOM``
    changes: dict[str, Any] | None
    parquet_uri: str | None
    unusable: list[UnusableDocument]
    removal_guard: RemovalGuard | None  # the date's snapshot's (None: a snapshot from before the guard)
