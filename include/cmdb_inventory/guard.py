"""
The mass-removal guard: a snapshot that would report more than ``max_removed_fraction`` of the previous
complete snapshot's instances as ``REMOVED`` (in regions scanned OK in both, so a failed scan never counts)
is written under its date, but held: ``latest/`` and the snapshot Asset event wait until a person approves
it in the Airflow UI (the DAG's ``approve_removals`` task). A rejected snapshot stays under its date and
never becomes ``latest/`` nor the baseline of a later comparison.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from include.cmdb_inventory.contract import (
    GUARD_APPROVED,
    GUARD_CLEAR,
    GUARD_HELD,
    GUARD_REJECTED,
    RemovalGuard,
)


def assess(
    removed: int, previous_rows: int, previous_ds: str | None, max_removed_fraction: float
) -> RemovalGuard:
    """
    The guard's verdict on a snapshot that reports ``removed`` instances REMOVED against the previous
    complete snapshot (of ``previous_ds``, ``previous_rows`` instances; 0: nothing was compared).
    """
    fraction = removed / previous_rows if previous_rows else None
    verdict: RemovalGuard = {
        "state": GUARD_CLEAR,
        "removed": removed,
        "previous_rows": previous_rows,
        "previous_ds": previous_ds,
        "fraction": round(fraction, 6) if fraction is not None else None,
        "max_removed_fraction": max_removed_fraction,
        "reason": "",
    }
    if fraction is None:
        verdict["reason"] = "nothing to compare with: no previous complete snapshot was read"
    elif fraction > max_removed_fraction:
        verdict["state"] = GUARD_HELD
        verdict["reason"] = (
            f"{removed} of the {previous_rows} instances of the snapshot of {verdict['previous_ds']} "
            f"({fraction:.1%}) would be REMOVED, more than max_removed_fraction {max_removed_fraction:g}"
        )
    else:
        verdict["reason"] = (
            f"{removed} of {previous_rows} instances REMOVED ({fraction:.1%}), within max_removed_fraction "
            f"{max_removed_fraction:g}"
        )
    return verdict


def unverifiable(detail: str, max_removed_fraction: float) -> RemovalGuard:
    """
    The verdict when a previous complete snapshot was found but could not be compared (its CSV missing or
    altered): how many instances are gone is unknown, so a person decides.
    """
    return {
        "state": GUARD_HELD,
        "removed": 0,
        "previous_rows": 0,
        "previous_ds": None,
        "fraction": None,
        "max_removed_fraction": max_removed_fraction,
        "reason": f"the change report could not compare with the previous snapshot ({detail}): how many "
        "instances were removed is unknown",
    }


def state_of(manifest: Mapping[str, Any] | None) -> str | None:
    """A snapshot's guard state; ``None`` for a snapshot written before the guard (or none)."""
    guard = (manifest or {}).get("removal_guard")
    return str(guard.get("state")) if isinstance(guard, Mapping) and guard.get("state") else None


def may_publish(manifest: Mapping[str, Any] | None) -> bool:
    """Whether a snapshot may become ``latest/`` (and a baseline): not while held, never once rejected."""
    return state_of(manifest) not in (GUARD_HELD, GUARD_REJECTED)


def is_held(summary_or_manifest: Mapping[str, Any] | None) -> bool:
    """Whether a snapshot (its manifest, or a run summary's ``removal_guard``) waits for a person."""
    return state_of(summary_or_manifest) == GUARD_HELD


def decided(guard: Mapping[str, Any], *, approved: bool, by: str, at: str) -> RemovalGuard:
    """The guard after a person's (or the response timeout's) decision."""
    settled: RemovalGuard = {**guard}  # type: ignore[typeddict-item]
    settled["state"] = GUARD_APPROVED if approved else GUARD_REJECTED
    settled["decided_by"] = by
    settled["decided_at"] = at
    return settled
