"""
The mass-removal guard (issue 9): a snapshot that would report more than ``max_removed_fraction`` of the
previous complete snapshot's instances as REMOVED is written under its date, but ``latest/`` and the Asset
event wait for a person; rejected, ``latest/`` stays as it was and the snapshot is never a baseline.
Against a real SnapshotStore on in-process moto (the conftest's), through the merge's own code.
"""

from __future__ import annotations

from typing import Any

import pytest

from include.cmdb_inventory import assets, contract, guard, inventory, notify
from include.cmdb_inventory.changes import REMOVED
from include.cmdb_inventory.contract import CSV_NAME, MANIFEST_NAME
from include.cmdb_inventory.run import RunInfo
from include.cmdb_inventory.storage import SnapshotStore
from tests.unit.test_merge import A, csv_rows, expected_of, make_settings, report_ok, run_info

D1, D2, D3 = "2024-03-01", "2024-03-02", "2024-03-03"


def night(ds: str) -> RunInfo:
    return run_info(run_id=f"scheduled__{ds}T02:00:00+00:00", ds=ds)


def merged(store: SnapshotStore, ds: str, plan: dict[str, Any], **settings: Any) -> contract.RunSummary:
    """One nightly run of account A: its scan's part and status, then the merge (shipped settings)."""
    config = make_settings((A,), **settings)
    run = night(ds)
    report_ok(store, run, A, plan)
    return inventory.merge_inventory(config, run, store, expected_of(config))


def latest_ds(store: SnapshotStore) -> str:
    doc = store.get_json(store.layout.latest(MANIFEST_NAME))
    assert doc is not None
    return str(doc["ds"])


class Outlets(dict[Any, Any]):
    """``outlet_events`` as a task sees it: records the events added through the alias."""

    def __init__(self) -> None:
        super().__init__()
        self.added: list[dict[str, Any]] = []

    def __missing__(self, alias: Any) -> Any:
        outlets = self

        class _Alias:
            def add(self, asset: Any, extra: dict[str, Any]) -> None:
                outlets.added.append(extra)

        return _Alias()


@pytest.mark.parametrize(
    ("removed", "previous", "limit", "state"),
    [
        (3, 20, 0.1, contract.GUARD_HELD),  # 15 %
        (2, 20, 0.1, contract.GUARD_CLEAR),  # exactly 10 %: not more than the limit
        (0, 20, 0.0, contract.GUARD_CLEAR),
        (1, 20, 0.0, contract.GUARD_HELD),  # 0: any removal waits for a person
        (20, 20, 1.0, contract.GUARD_CLEAR),  # 1: the guard is off
        (0, 0, 0.1, contract.GUARD_CLEAR),  # nothing compared
    ],
)
def test_assess_holds_only_above_the_fraction(removed: int, previous: int, limit: float, state: str) -> None:
    verdict = guard.assess(removed, previous, "2024-03-01" if previous else None, limit)
    assert verdict["state"] == state
    assert verdict["fraction"] == (round(removed / previous, 6) if previous else None)


def test_a_mass_removal_is_written_under_its_date_but_latest_waits(store: SnapshotStore, s3: Any) -> None:
    first = merged(store, D1, {"us-east-1": 20})
    assert first["removal_guard"] is not None
    assert first["removal_guard"]["state"] == contract.GUARD_CLEAR  # nothing to compare with
    held = merged(store, D2, {"us-east-1": 17})  # 3 of 20 gone: 15 % > the default 10 %

    guard_doc = held["removal_guard"]
    assert guard_doc is not None
    assert guard_doc["state"] == contract.GUARD_HELD
    assert (guard_doc["removed"], guard_doc["previous_rows"], guard_doc["previous_ds"]) == (3, 20, D1)
    assert held["written"]
    assert not held["latest_updated"]
    # Written under its date: the date's CSV holds the 17 instances; latest/ is still the first night's.
    assert len(csv_rows(s3, store.layout.snapshot(D2, CSV_NAME))) == 1 + 17
    assert latest_ds(store) == D1
    assert len(csv_rows(s3, store.layout.latest(CSV_NAME))) == 1 + 20
    # No Asset event: imports scheduled on the snapshot wait too.
    outlets = Outlets()
    assert assets.emit_snapshot_event(outlets, held) is False
    assert outlets.added == []
    # The notification says what is waiting and why, and where to decide.
    url = "http://airflow.example/dags/x/runs/y/tasks/approve_removals/required_actions"
    text = notify.message(held, notify.Prompt(url=url, timeout_hours=20))
    assert "HELD:" in text
    assert "3 of the 20 instances" in text
    assert "15.0%" in text
    assert "approve_removals/required_actions" in text
    assert "Without an answer it is rejected after 20 hours." in text
    # Under airflow dags test nobody can answer: the message says so instead of pointing at a request.
    attended = notify.message(held, notify.Prompt(asked=False))
    assert "nobody is asked under airflow dags test" in attended
    assert "Required Actions" not in attended
    assert "HELD for approval" in notify.subject(held)


def test_removals_in_a_region_that_failed_never_count(store: SnapshotStore) -> None:
    merged(store, D1, {"us-east-1": 20, "eu-west-1": 5})
    # eu-west-1 throttled tonight: its 5 instances are NOT_VERIFIED, not REMOVED; us-east-1 lost one.
    summary = merged(store, D2, {"us-east-1": 19, "eu-west-1": (contract.THROTTLED, "Throttling")})
    assert summary["changes"] is not None
    assert (summary["changes"]["removed"], summary["changes"]["not_verified"]) == (1, 5)
    assert summary["removal_guard"] is not None
    assert summary["removal_guard"]["state"] == contract.GUARD_CLEAR


def test_approval_publishes_latest_and_sends_the_asset_event(store: SnapshotStore, s3: Any) -> None:
    merged(store, D1, {"us-east-1": 20})
    merged(store, D2, {"us-east-1": 10})
    config = make_settings((A,))
    request = inventory.awaiting_decision(store, night(D2))
    assert request is not None
    subject, body = inventory.approval_request(request)
    assert "10 instances would be REMOVED" in subject
    assert "50.0%" in body

    decision = inventory.settle_removals(config, night(D2), store, approved=True, decided_by="alice")
    assert decision["state"] == contract.GUARD_APPROVED
    assert decision["latest_updated"]
    assert latest_ds(store) == D2
    assert len(csv_rows(s3, store.layout.latest(CSV_NAME))) == 1 + 10
    recorded = store.get_json(store.layout.snapshot(D2, MANIFEST_NAME))
    assert recorded is not None
    assert recorded["removal_guard"]["state"] == contract.GUARD_APPROVED
    assert recorded["removal_guard"]["decided_by"] == "alice"
    outlets = Outlets()
    assert assets.emit_snapshot_event(outlets, decision) is True
    assert [e["ds"] for e in outlets.added] == [D2]
    assert "APPROVED by alice" in notify.decision_message(decision)
    # Decided: nothing is left to ask, and deciding again is refused with why.
    assert inventory.awaiting_decision(store, night(D2)) is None
    with pytest.raises(inventory.DecisionError, match="no longer run"):
        inventory.settle_removals(config, night(D2), store, approved=False, decided_by="bob")


def test_rejection_keeps_latest_and_the_snapshot_is_never_a_baseline(store: SnapshotStore, s3: Any) -> None:
    merged(store, D1, {"us-east-1": 20})
    merged(store, D2, {"us-east-1": 10})
    config = make_settings((A,))
    decision = inventory.settle_removals(
        config, night(D2), store, approved=False, decided_by="the response timeout (Reject)"
    )
    assert decision["state"] == contract.GUARD_REJECTED
    assert not decision["latest_updated"]
    assert latest_ds(store) == D1
    assert len(csv_rows(s3, store.layout.latest(CSV_NAME))) == 1 + 20
    assert assets.emit_snapshot_event(Outlets(), decision) is False
    # The next night compares with the last snapshot a person did not reject (D1, skipping D2).
    third = merged(store, D3, {"us-east-1": 10})
    assert third["changes"] is not None
    assert third["changes"]["previous_ds"] == D1
    assert f"skipped {D2}, whose snapshot is REJECTED" in third["changes"]["detail"]
    # The same removals are asked about again, never accepted silently.
    assert third["changes"]["removed"] == 10
    assert third["removal_guard"] is not None
    assert third["removal_guard"]["state"] == contract.GUARD_HELD
    assert latest_ds(store) == D1


def test_a_rerun_merge_of_a_rejected_date_is_held_again(store: SnapshotStore) -> None:
    merged(store, D1, {"us-east-1": 20})
    merged(store, D2, {"us-east-1": 10})
    config = make_settings((A,))
    inventory.settle_removals(config, night(D2), store, approved=False, decided_by="bob")
    # An operator clears merge_inventory of that run: its new commit is judged again, held again (its
    # approval, cleared with it, asks again); latest/ never moves on its own.
    again = inventory.merge_inventory(config, night(D2), store, expected_of(config))
    assert again["removal_guard"] is not None
    assert again["removal_guard"]["state"] == contract.GUARD_HELD
    assert not again["latest_updated"]
    assert latest_ds(store) == D1
    assert inventory.awaiting_decision(store, night(D2)) is not None


def test_a_held_snapshot_is_not_the_baseline_while_it_waits(store: SnapshotStore) -> None:
    merged(store, D1, {"us-east-1": 20})
    merged(store, D2, {"us-east-1": 10})  # held, nobody answered yet
    third = merged(store, D3, {"us-east-1": 20})  # back to normal: compared with D1, nothing removed
    assert third["changes"] is not None
    assert third["changes"]["previous_ds"] == D1
    assert third["removal_guard"] is not None
    assert third["removal_guard"]["state"] == contract.GUARD_CLEAR
    assert third["latest_updated"]
    assert latest_ds(store) == D3
    # The change rows of the held date name its removals, REMOVED in regions scanned OK in both.
    changes_key = store.layout.snapshot(D2, contract.CHANGES_NAME)
    assert store.get_bytes(changes_key).decode().count(REMOVED) == 10


def test_max_removed_fraction_is_validated_and_named() -> None:
    from include.cmdb_inventory.config import ConfigError

    for bad in (-0.1, 1.5, "0.1", True, None):
        with pytest.raises(ConfigError, match="max_removed_fraction"):
            make_settings((A,), max_removed_fraction=bad)
    assert make_settings((A,)).max_removed_fraction == 0.1  # the shipped default


def test_an_approval_after_a_newer_date_sends_no_event(store: SnapshotStore) -> None:
    """A late approval must not make downstream imports apply an older snapshot after a newer one."""
    merged(store, D1, {"us-east-1": 20})
    merged(store, D2, {"us-east-1": 10})  # held
    third = merged(store, D3, {"us-east-1": 20})  # compared with D1: nothing removed; latest/ moves to D3
    assert third["latest_updated"]
    decision = inventory.settle_removals(
        make_settings((A,)), night(D2), store, approved=True, decided_by="al"
    )
    assert decision["state"] == contract.GUARD_APPROVED
    assert not decision["latest_updated"]
    assert latest_ds(store) == D3
    outlets = Outlets()
    assert assets.emit_snapshot_event(outlets, decision) is False
    assert outlets.added == []
    assert "a newer date is already there" in notify.decision_message(decision)


def test_an_approval_recorded_by_a_try_that_died_is_published_by_the_next(
    store: SnapshotStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    merged(store, D1, {"us-east-1": 20})
    merged(store, D2, {"us-east-1": 10})
    config = make_settings((A,))

    def died(*_: Any, **__: Any) -> Any:
        raise ConnectionError("the worker died while publishing")

    with monkeypatch.context() as patch:
        patch.setattr(inventory, "publish", died)
        with pytest.raises(ConnectionError):
            inventory.settle_removals(config, night(D2), store, approved=True, decided_by="alice")
    assert guard.state_of(store.get_json(store.layout.snapshot(D2, MANIFEST_NAME))) == contract.GUARD_APPROVED
    assert latest_ds(store) == D1
    # The retry finds nothing to ask, but the recorded approval to finish: latest/ and the event follow.
    assert inventory.awaiting_decision(store, night(D2)) is None
    finished = inventory.unfinished_approval(store, night(D2))
    assert finished is not None
    assert finished["latest_updated"]
    assert latest_ds(store) == D2
    assert assets.emit_snapshot_event(Outlets(), finished) is True
    assert inventory.unfinished_approval(store, night(D2)) is None  # done: a later retry skips


def test_a_run_that_wrote_nothing_points_to_the_run_that_holds(store: SnapshotStore) -> None:
    merged(store, D1, {"us-east-1": 20})
    merged(store, D2, {"us-east-1": 10})  # held by the nightly run
    config = make_settings((A,))
    rerun = run_info(run_id=f"manual__{D2}T09:00:00+00:00", ds=D2)
    report_ok(store, rerun, A, {"us-east-1": 10})
    summary = inventory.merge_inventory(config, rerun, store, expected_of(config))
    assert not summary["written"]
    assert guard.is_held(summary)  # the date's snapshot is held ...
    text = notify.message(summary)
    assert "in the run that wrote it" in text  # ... by another run: this one's approval asks nothing
    assert "Decide:" not in text
    assert inventory.awaiting_decision(store, rerun) is None


def test_latest_keeps_its_objects_while_reruns_of_its_date_are_held(store: SnapshotStore, s3: Any) -> None:
    merged(store, D1, {"us-east-1": 20})
    merged(store, D2, {"us-east-1": 10})
    config = make_settings((A,))
    inventory.settle_removals(config, night(D2), store, approved=True, decided_by="alice")
    # Two overwrite reruns of D2 remove even more: each is held; latest/ still names the approved commit.
    for hour, count in (("09", 5), ("10", 4)):
        rerun = run_info(run_id=f"manual__{D2}T{hour}:00:00+00:00", ds=D2)
        report_ok(store, rerun, A, {"us-east-1": count})
        held = inventory.merge_inventory(config, rerun, store, expected_of(config), overwrite=True)
        assert held["written"]
        assert guard.is_held(held)
    latest = store.get_json(store.layout.latest(MANIFEST_NAME))
    assert latest is not None
    assert latest["row_count"] == 10
    assert len(csv_rows(s3, latest["csv_key"])) == 1 + 10  # the object latest/ names still exists


def test_a_comparison_that_failed_holds_latest(store: SnapshotStore) -> None:
    merged(store, D1, {"us-east-1": 20})
    previous = store.get_json(store.layout.snapshot(D1, MANIFEST_NAME))
    assert previous is not None
    store.put_bytes(previous["csv_key"], b"Account,Region\r\n", "text/csv")  # altered since: sha256 differs
    summary = merged(store, D2, {"us-east-1": 20})
    assert summary["changes"] is not None
    assert summary["changes"]["status"] == "ERROR"
    assert summary["removal_guard"] is not None
    assert summary["removal_guard"]["state"] == contract.GUARD_HELD
    assert "could not compare" in summary["removal_guard"]["reason"]
    assert latest_ds(store) == D1
