"""
The inventory DAG's ``approve_removals`` task: Airflow 3's human-in-the-loop approval (the standard
provider's ``HITLOperator``) for a snapshot the mass-removal guard (``guard.py``) holds.

It asks only when this run's snapshot is held, and is skipped otherwise. Approve: ``latest/`` and the
snapshot Asset event follow; Reject (also what an unanswered request becomes when it times out):
``latest/`` stays as it was. Either way the decision is recorded in the date's manifest and the CMDB team
is told.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk.exceptions import AirflowSkipException

from include.cmdb_inventory.assets import SNAPSHOT_ALIAS

if TYPE_CHECKING:
    from airflow.sdk import Context

APPROVE = "Approve"
REJECT = "Reject"


class RemovalApprovalOperator(HITLOperator):
    """Ask a person whether a held snapshot may become ``latest/``; act on the answer."""

    def __init__(self, *, response_timeout: timedelta, **kwargs: Any) -> None:
        super().__init__(
            subject="EC2 inventory: approve a snapshot that removes many instances",
            options=[APPROVE, REJECT],
            defaults=[REJECT],  # an unanswered request times out as Reject: latest/ never moves by itself
            response_timeout=response_timeout,
            outlets=[SNAPSHOT_ALIAS],
            **kwargs,
        )

    def execute(self, context: Context) -> Any:
        """Skip when nothing is held; else write the request (its text from the manifest) and wait."""
        from include.cmdb_inventory import tasks

        request = tasks.removal_request(context)
        if request is None:
            finished = tasks.finish_approval(context)  # an earlier try recorded an approval, then died
            if finished is not None:
                return finished
            raise AirflowSkipException("the mass-removal guard holds nothing in this run: nothing to approve")
        self.subject, self.body = request
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        """Record the answer (or the timeout's Reject) and publish, or not."""
        from include.cmdb_inventory import tasks

        answer = super().execute_complete(context, event)
        user = answer.get("responded_by_user") or {}
        decided_by = str(user.get("name") or user.get("id") or "") or "the response timeout (Reject)"
        return tasks.settle_removals(
            context, approved=list(answer["chosen_options"]) == [APPROVE], decided_by=decided_by
        )
