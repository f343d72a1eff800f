"""
The one taxonomy of AWS error codes: which refusals mean a region is not enabled, denied by policy,
throttled, or a role that cannot be assumed, and the ``{"code", "message"}`` every ledger entry carries.
"""

from __future__ import annotations

from collections.abc import Mapping

from include.cmdb_inventory.aws.redaction import scrub
from include.cmdb_inventory.contract import ERROR, REGION_DENIED, REGION_DISABLED, THROTTLED

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


# AssumeRole refusals that the same request will get again: fail the account for good (no retries). A
# ValidationError is a request AWS will never accept as sent (e.g. DurationSeconds above the role's
# MaxSessionDuration); PackedPolicyTooLarge, session tags too large for the role.
PERMANENT_ASSUME_ROLE_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "InvalidClientTokenId",
        "NoSuchEntity",
        "ValidationError",
        "PackedPolicyTooLarge",
    }
)
