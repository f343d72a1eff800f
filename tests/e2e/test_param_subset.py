"""
A manual run with the ``accounts`` Param, end to end (issue 10, finding 1): full DAG runs (Airflow's test
runner) against moto behind the loopback AWS gateway, all for one date.

1. A full run (no Params) in which B's role cannot be assumed: the date's snapshot covers 2 of 3 accounts.
2. A run over A alone: scanned and reported, but ``ds=`` and ``latest/`` stay the full run's, byte for byte.
3. A run naming an account outside the expected set: ``resolve_accounts`` fails at once, naming it;
   nothing is assumed, scanned or written.
4. The run over A with ``overwrite=true``: replaces ``ds=`` and ``latest/``, and the manifest says subset.

The runs' logical dates are four times of the same day, so each has its own run id (as the nightly run and
later manual runs have) and all write the same ``ds=`` keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools import sandbox
from devtools.cluster import ACCOUNT_A, ACCOUNT_B, ACCOUNT_C, PREFIX, REGIONS, Org, discovery_role
from devtools.gateway import AwsGateway
from tests.e2e.test_failures import Run, task_instances

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("param-subset")]

DS = "2026-11-21"
OUTSIDE = "999999999999"
CSV, MANIFEST = "ec2_inventory.csv", "manifest.json"


@pytest.fixture
def org() -> Iterator[tuple[Org, AwsGateway]]:
    """The three-account organisation behind a fresh gateway, an empty bucket and queue."""
    with AwsGateway(seed=11) as gateway:
        world = Org(gateway.url, gateway.moto_url)
        world.ensure()
        world.clear_inbox()
        try:
            yield world, gateway
        finally:
            world.reset()


def run_dag(home: Path, org: Org, at: str, conf: dict[str, Any] | None = None) -> Run:
    """One full DAG run at ``at`` (a time of ``DS``) with these Params, the shipped defaults otherwise."""
    env = sandbox.airflow_env(home, org.connection, org.variable)
    result = sandbox.dags_test(env, f"{DS}T{at}:00+00:00", conf)
    return Run(result.returncode, result.stdout + result.stderr, task_instances(home))


def snapshot_objects(org: Org) -> dict[str, bytes]:
    """Every object outside the staging prefix (the snapshot files a reader sees), with its bytes."""
    found: dict[str, bytes] = {}
    for key in org.keys(f"{PREFIX}/"):
        if not key.startswith(f"{PREFIX}/_staging/"):
            body = org.get(key)
            assert body is not None, key
            found[key] = body
    return found


def member_roles_assumed(gateway: AwsGateway) -> set[str | None]:
    """The member accounts' roles assumed (the hub connection itself assumes CMDBApplication first)."""
    return {
        c.role_arn
        for c in gateway.calls(action="AssumeRole")
        if not str(c.role_arn).endswith("/CMDBApplication")
    }


def notification(org: Org) -> str:
    (text,) = [m for m in org.messages() if m.startswith(f"EC2 inventory for {DS}")]
    return text


def test_a_param_subset_never_replaces_the_snapshot_unless_overwrite(
    airflow_home: Path, org: tuple[Org, AwsGateway]
) -> None:
    world, gateway = org

    # 1. The full run: B cannot be assumed, so the date's snapshot (and latest/) covers 2 of 3 accounts.
    gateway.deny_assume_role(discovery_role(ACCOUNT_B))
    full = run_dag(airflow_home, world, "02:00")
    assert full.ti("merge_inventory")["state"] == "success", full.output[-5000:]
    assert full.ti("check_coverage")["state"] == "failed"
    nightly = world.json(world.key(DS, MANIFEST))
    assert nightly is not None
    assert (nightly["complete"], nightly["accounts_covered"], nightly["accounts_expected"]) == (False, 2, 3)
    assert world.json(world.key("latest", MANIFEST)) == nightly
    before = snapshot_objects(world)
    gateway.clear_rules()
    gateway.reset_calls()
    world.clear_inbox()

    # 2. A manual run over A alone: A is scanned, nothing a reader sees changes.
    subset = run_dag(airflow_home, world, "10:00", {"accounts": [ACCOUNT_A]})
    assert subset.ti("merge_inventory")["state"] == "success", subset.output[-5000:]
    assert subset.states("scan_account") == ["success"]
    assert member_roles_assumed(gateway) == {discovery_role(ACCOUNT_A)}
    assert snapshot_objects(world) == before
    staged = [k for k in world.keys(f"{PREFIX}/_staging/ds={DS}/") if k.endswith(f"/{MANIFEST}")]
    run_manifest = next(
        m
        for m in (world.json(k) for k in staged)
        if m and m["dag_run_id"] == subset.ti("merge_inventory")["run_id"]
    )
    assert run_manifest["subset"] is True
    assert run_manifest["accounts_requested"] == [ACCOUNT_A]
    assert run_manifest["complete"] is False
    assert (run_manifest["accounts_expected"], run_manifest["accounts_covered"]) == (3, 1)
    statuses = {(e["account"], e["status"]) for e in run_manifest["coverage"]}
    assert {(ACCOUNT_B, "NOT_REQUESTED"), (ACCOUNT_C, "NOT_REQUESTED")} <= statuses
    text = notification(world)
    assert "(not rewritten by this run)" in text
    assert "Subset:   only the 1 account(s) its param names" in text
    assert "a subset never replaces the date's snapshot or latest/" in text
    assert "Accounts: 2 of 3 covered" in text  # the date's snapshot: still the full run's
    gateway.reset_calls()
    world.clear_inbox()

    # 3. An account outside the expected set: resolve_accounts fails for good, naming it; nothing happens.
    outside = run_dag(airflow_home, world, "11:00", {"accounts": [ACCOUNT_A, OUTSIDE]})
    assert outside.returncode != 0
    assert (outside.ti("resolve_accounts")["state"], outside.ti("resolve_accounts")["try_number"]) == (
        "failed",
        1,
    )
    assert f"{OUTSIDE} is not among the 3 expected accounts" in outside.output
    assert "AirflowFailException" in outside.output
    assert outside.ti("merge_inventory")["state"] == "failed"  # "resolve_accounts did not finish"
    assert member_roles_assumed(gateway) == set()
    assert gateway.count(service="ec2") == 0
    assert gateway.count(service="s3", method=("PUT", "POST", "DELETE")) == 0
    assert snapshot_objects(world) == before
    assert [m for m in world.messages() if m.startswith(f"EC2 inventory for {DS}")] == []
    world.clear_inbox()

    # 4. The run over A with overwrite=true: replaces ds= and latest/; the manifest records the subset.
    replaced = run_dag(airflow_home, world, "12:00", {"accounts": [ACCOUNT_A], "overwrite": True})
    assert replaced.ti("merge_inventory")["state"] == "success", replaced.output[-5000:]
    assert replaced.ti("check_coverage")["state"] == "failed"  # the date's snapshot is now a subset
    manifest = world.json(world.key(DS, MANIFEST))
    assert manifest is not None
    assert manifest["dag_run_id"] == replaced.ti("merge_inventory")["run_id"]
    assert (manifest["subset"], manifest["accounts_requested"], manifest["complete"]) == (
        True,
        [ACCOUNT_A],
        False,
    )
    assert manifest["accounts_expected"] == 3
    assert {e["id"] for e in manifest["expected_accounts"]} == {ACCOUNT_A, ACCOUNT_B, ACCOUNT_C}
    assert world.json(world.key("latest", MANIFEST)) == manifest
    rows = world.rows(world.key(DS, CSV))
    assert {r["Account"] for r in rows} == {ACCOUNT_A}
    assert len(rows) == len({k for k in world.expected() if k[0] == ACCOUNT_A}) == manifest["row_count"]
    assert world.get(world.key("latest", CSV)) == world.get(world.key(DS, CSV))
    text = notification(world)
    assert "Subset:   only the 1 account(s) its param names" in text
    assert "a subset of the expected accounts: the manifest says so" in text
    assert "Complete: no" in text
    assert set(REGIONS) <= {e["region"] for e in manifest["coverage"] if e["account"] == ACCOUNT_A}
