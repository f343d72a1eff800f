"""
moto's server with IAM enforcement, for the least-privilege tests: ``python -m tests.security.moto_iam_server
--port N`` (loopback only).

moto authenticates and authorises every request once its free action budget is spent
(``INITIAL_NO_AUTH_ACTION_COUNT``, read from the environment when moto is imported; ``POST
/moto-api/reset-auth`` with a number sets it at run time and restarts the count). Two gaps of moto 5.2
would deny calls that AWS allows under the shipped policies, so they are fixed here, in this process only:

- SNS requests are authorised against ``Resource: "*"`` (moto's SNS has no resource resolution), so a
  policy granting ``sns:Publish`` on one topic ARN — ours — would never match: the resource becomes the
  request's ``TopicArn``/``TargetArn``.
- A trust policy naming a role ARN (``Principal: {"AWS": "arn:aws:iam::1:role/R"}``) does not match that
  role's sessions (``arn:aws:sts::1:assumed-role/R/s``), as it does in AWS; and a ``Service`` principal
  raises ``TypeError`` in moto. Both are fixed (moto evaluates trust only for a role in the caller's own
  account: cross-account trust and ``aws:PrincipalOrgID`` stay unevaluated; the trust policies deployed
  from the templates are checked document by document in ``tests/unit/test_iam_templates.py``).
"""

from __future__ import annotations

import argparse
import re
from typing import Any

_SESSION_ARN_RE = re.compile(r"^arn:([\w-]+):sts::(\d{12}):assumed-role/([\w+=,.@-]+)/[^/]+\Z")


def patch_moto() -> None:
    """Apply the two fidelity fixes described in the module docstring."""
    from moto.iam import access_control
    from moto.sns.responses import SNSResponse

    def sns_resource(self: Any) -> str:
        for name in ("TopicArn", "TargetArn"):
            values = self.querystring.get(name)
            if values:
                return str(values[0])
        return "*"

    SNSResponse._determine_resource = sns_resource  # type: ignore[attr-defined]

    def check_principal(self: Any, principal: str) -> bool:
        expected = (self._statement.get("Principal") or {}).get("AWS")
        if expected is None:
            return False  # a Service principal: no IAM identity is it
        names = [expected] if isinstance(expected, str) else list(expected)
        if "*" in names or principal in names:
            return True
        session = _SESSION_ARN_RE.match(principal)
        if session is None:
            return False
        partition, account, role = session.groups()
        prefix = f"arn:{partition}:iam::{account}:role/"
        return any(n.startswith(prefix) and n.rsplit("/", 1)[-1] == role for n in names)

    access_control.IAMPolicyStatement._check_principal = check_principal  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    """Patch moto, then run its server on 127.0.0.1."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    patch_moto()
    from moto.server import main as moto_main

    moto_main(["-H", "127.0.0.1", "-p", str(args.port)])


if __name__ == "__main__":
    main()
