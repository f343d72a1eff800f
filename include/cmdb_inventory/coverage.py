"""Coverage statuses, error classification and the ledger's arithmetic."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# The one redactor; ``coverage.scrub`` stays importable from here for its callers (alerts, tests).
from include.cmdb_inventory.redaction import scrub

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

# The account's session was refused as expired although its own expiry time is ahead (revoked, clock
# skew): the scan assumes the role again and scans the region once more.
EXPIRED_SESSION_CODES = frozenset({"ExpiredToken", "ExpiredTokenException"})

DISABLED_CODES = {"AuthFailure", "OptInRequired", "InvalidClientTokenId", "UnrecognizedClientException"}
DENIED_CODES = {"UnauthorizedOperation", "AccessDenied", "AccessDeniedException", "UnauthorizedAccess"}
THROTTLE_CODES = {
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
    "SlowDown",
    "RequestThrottled",
    "RequestThrottledException",
}


def error_of(exc: BaseException) -> dict[str, str]:
    """``{"code", "message"}`` of an exception: the AWS error code where there is one."""
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping) and isinstance(response.get("Error"), Mapping):
        error = response["Error"]
        return {"code": str(error.get("Code", "Unknown")), "message": scrub(str(error.get("Message", "")))}
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code:
        return {"code": code, "message": scrub(str(getattr(exc, "aws_message", exc)))}
    return {"code": type(exc).__name__, "message": scrub(str(exc))}


def region_status_of(code: str) -> str:
    """The coverage status of a region whose call failed with this AWS error code."""
    if code in DISABLED_CODES:
        return REGION_DISABLED
    if code in DENIED_CODES:
        return REGION_DENIED
    if code in THROTTLE_CODES:
        return THROTTLED
    return ERROR


def is_gap(status: str, denied_is_gap: bool = True) -> bool:
    """Whether an entry with this status makes coverage short."""
    if status in (OK, REGION_DISABLED):
        return False
    if status == REGION_DENIED:
        return denied_is_gap
    return True


def is_transient(status: str) -> bool:
    """Errors worth a task retry (Airflow's): throttling that outlasted botocore, unknown errors."""
    return status in (THROTTLED, ERROR)


def summarise(entries: Iterable[Mapping[str, Any]], denied_is_gap: bool = True) -> dict[str, Any]:
    """Totals of a coverage ledger: accounts covered, regions scanned, gaps."""
    entries = list(entries)
    accounts = sorted({e["account"] for e in entries})
    failed_accounts = sorted(
        {e["account"] for e in entries if is_gap(e["status"], denied_is_gap) and e["region"] is None}
    )
    gaps = [e for e in entries if is_gap(e["status"], denied_is_gap)]
    gap_accounts = sorted({e["account"] for e in gaps})
    return {
        "accounts_expected": len(accounts),
        "accounts_covered": len(accounts) - len(gap_accounts),
        "accounts_failed": failed_accounts,
        "regions_scanned": sum(1 for e in entries if e["status"] == OK),
        "regions_disabled": sum(1 for e in entries if e["status"] == REGION_DISABLED),
        "instances": sum(int(e.get("instances") or 0) for e in entries),
        "gaps": gaps,
        "complete": not gaps,
    }
