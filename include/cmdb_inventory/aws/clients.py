"""
The client plumbing under the hooks: the process's botocore sessions, clients made from them that sign with
an account's refreshable credentials, and botocore's refresh windows scaled to short sessions.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import botocore.session
from botocore.credentials import RefreshableCredentials

from include.cmdb_inventory.aws.tuning import CutEc2Loader

if TYPE_CHECKING:
    from botocore.client import BaseClient
    from botocore.config import Config
    from botocore.credentials import Credentials

# A new botocore session per account or region re-parses botocore's service models (DESIGN.md: a peer
# tool spent half its CPU there), so every account's clients come from these: one session per process
# and set of EC2 operations its EC2 clients know (none: EC2's whole model). Process-wide by design.
_SESSIONS: dict[frozenset[str], botocore.session.Session] = {}
_SESSIONS_LOCK = threading.Lock()
# botocore sessions are not thread-safe while they create clients, and the regions' threads share them.
CLIENT_LOCK = threading.Lock()


def botocore_session(ec2_operations: frozenset[str] = frozenset()) -> botocore.session.Session:
    """The process's botocore session; with ``ec2_operations``, the one whose EC2 clients know only those."""
    with _SESSIONS_LOCK:
        if ec2_operations not in _SESSIONS:
            session = botocore.session.get_session()
            if ec2_operations:
                session.register_component("data_loader", CutEc2Loader(ec2_operations))
            # Build its endpoint data now, under the lock: region lists are then read from any thread.
            session.get_available_partitions()
            _SESSIONS[ec2_operations] = session
        return _SESSIONS[ec2_operations]


def shared_botocore_session() -> botocore.session.Session:
    """The process's botocore session with every model whole (also botocore's partitions and regions)."""
    return botocore_session()


def create_client(
    session: botocore.session.Session,
    service: str,
    region: str,
    credentials: Credentials,
    *,
    endpoint_url: str | None,
    verify: bool | str | None,
    config: Config,
) -> BaseClient:
    """A client of ``session`` in ``region`` that signs with ``credentials`` (refreshable or not)."""
    frozen = credentials.get_frozen_credentials()
    with CLIENT_LOCK:
        client = session.create_client(
            service,
            region_name=region,
            endpoint_url=endpoint_url,
            verify=verify,
            config=config,
            aws_access_key_id=frozen.access_key,
            aws_secret_access_key=frozen.secret_key,
            aws_session_token=frozen.token,
        )
    sign_with(client, credentials)
    return client


def sign_with(client: BaseClient, credentials: Credentials) -> None:
    """
    Make ``client`` sign with ``credentials``. botocore's only public way to give a client refreshable
    credentials is a session of its own, holding them: a session per account, which is what the shared
    sessions avoid. ``create_client`` takes static keys, so the client's signer gets the object itself, as
    botocore's own sessions hand theirs over (a private attribute: this fails loudly if botocore renames it).
    """
    signer = client._request_signer
    if not hasattr(signer, "_credentials"):
        raise RuntimeError(
            "botocore's RequestSigner has no _credentials: cannot attach refreshable credentials"
        )
    signer._credentials = credentials


# botocore's refresh windows (re-assume this long before expiry: advisory, then blocking), scaled down for
# short sessions: with botocore's fixed 15 minutes, a 15-minute session would be re-assumed on every call.
BOTOCORE_ADVISORY_REFRESH_SECONDS = 15 * 60
BOTOCORE_MANDATORY_REFRESH_SECONDS = 10 * 60


def refresh_windows(duration_seconds: int) -> tuple[int, int]:
    """(advisory, mandatory) seconds before expiry at which a session of this duration is re-assumed."""
    return (
        min(BOTOCORE_ADVISORY_REFRESH_SECONDS, duration_seconds // 3),
        min(BOTOCORE_MANDATORY_REFRESH_SECONDS, duration_seconds // 6),
    )


def refreshing_credentials(
    fetch: Callable[[], dict[str, Any]], duration_seconds: int
) -> RefreshableCredentials:
    """
    Credentials from ``fetch()`` now (botocore's metadata: keys, token, ``expiry_time``), fetched again by
    botocore before they expire, as the provider's ``AwsBaseHook`` and botocore's ``AssumeRoleProvider`` do.
    """
    advisory, mandatory = refresh_windows(duration_seconds)
    return RefreshableCredentials.create_from_metadata(
        metadata=fetch(),
        refresh_using=fetch,
        method="sts-assume-role",
        advisory_timeout=advisory,
        mandatory_timeout=mandatory,
    )
