"""
The output contract in code: where each file of a snapshot lives in S3 (``Layout``), the CSV's columns, the
coverage statuses, and the shapes of the manifest, the run summary and an account's status document.
The CMDB team's imports, the UI and the tests rely on these; change them only with docs/output-contract.md.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

SCHEMA_VERSION = 1

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
)

CSV_NAME = "ec2_inventory.csv"
MANIFEST_NAME = "manifest.json"
CHANGES_NAME = "changes.csv"
PARQUET_NAME = "ec2_inventory.parquet"

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
