"""
The mass-removal guard under a real scheduler (issue 9): a night on which more than the shipped
``max_removed_fraction`` (10 %) of the previous complete snapshot's instances are gone writes the
snapshot under its date, holds ``latest/`` and the Asset event, and asks a person through Airflow's
human-in-the-loop approval; the test answers as the UI does, through the REST API, both ways.

Shipped configuration: no ``CMDB_EC2_INVENTORY_*`` knob, the Variable's guard settings left to their
defaults (one cluster for the module, its own: the world loses instances here). World: three accounts x
two regions, seven listed instances (``devtools.cluster.small_world``).
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from devtools import sandbox
from devtools.cluster import ACCOUNT_B, ACCOUNT_C, AirflowApi, Harness, running_cluster
from devtools.world import session_in

pytestmark = [pytest.mark.e2e, pytest.mark.scheduler, pytest.mark.xdist_group("approval")]

DAG_ID = sandbox.DAG_ID
TASK = "approve_removals"
CSV, MANIFEST = "ec2_inventory.csv", "manifest.json"
NIGHT1, NIGHT2, NIGHT3 = "2026-08-01", "2026-08-02", "2026-08-03"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    workdir = tmp_path_factory.mktemp("approval")
    with running_cluster(workdir, gateway_seed=13) as harness:
        assert [k for k in harness.base_env if k.startswith("CMDB_EC2_INVENTORY_")] == []  # shipped knobs
        assert "max_removed_fraction" not in harness.org.variable  # the shipped 0.1
        yield harness


def ti_path(run_id: str) -> str:
    return f"/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/{TASK}/-1"


def approval_state(api: AirflowApi, run_id: str) -> str:
    return str(api.get(ti_path(run_id))["state"])


def wait_awaiting_input(env: Harness, run_id: str, timeout: float = 240) -> dict[str, Any]:
    """
    Poll until the approval asks a person, and until the scheduler has taken in the exit of the worker
    process that parked it; return its human-in-the-loop request. Waiting for that is a person's pace:
    Airflow 3.3.2 races an answer that comes before the scheduler processed the parking process's executor
    event ("success" while the resumed try is queued or running makes it retry the task, which then asks
    again); people answer minutes later.
    """
    deadline = time.monotonic() + timeout
    while True:
        ti = env.api.get(ti_path(run_id))
        taken_in = (
            "Received executor event with state success for task instance "
            f"TaskInstanceKey(dag_id='{DAG_ID}', task_id='{TASK}', run_id='{run_id}', "
            f"try_number={ti['try_number']},"
        )
        if ti["state"] == "awaiting_input" and taken_in in env.cluster.component("scheduler").output():
            return dict(env.api.get(f"{ti_path(run_id)}/hitlDetails"))
        if ti["state"] in ("success", "skipped", "failed", "upstream_failed") or time.monotonic() > deadline:
            explained = env.cluster.explain(DAG_ID, run_id)
            raise AssertionError(f"{TASK} is {ti['state']}, not awaiting input:\n{explained}")
        time.sleep(1.0)


def night(env: Harness, ds: str) -> str:
    run = env.api.trigger(DAG_ID, logical_date=f"{ds}T02:00:00Z")
    return str(run["dag_run_id"])


def terminate(env: Harness, account: str, names: set[str]) -> int:
    """Terminate the world's instances of ``account`` with these Name tags; return how many."""
    gone = [i for i in env.org.seeded["instances"][account] if i["name"] in names]
    for instance in gone:
        ec2 = session_in(env.gateway.url, account).client(
            "ec2", endpoint_url=env.gateway.url, region_name=instance["region"]
        )
        ec2.terminate_instances(InstanceIds=[instance["id"]])
    return len(gone)


def snapshot_events(api: AirflowApi) -> list[dict[str, Any]]:
    """The snapshot Asset's events sent by the inventory DAG, oldest first."""
    found = api.get("/assets/events", source_dag_id=DAG_ID, limit=100, order_by="timestamp")["asset_events"]
    return [e for e in found if e["extra"].get("ds")]


def test_a_mass_removal_waits_for_a_person_who_approves_it(env: Harness) -> None:
    api, org = env.api, env.org
    first = night(env, NIGHT1)
    assert api.wait_run(DAG_ID, first)["state"] == "success"
    assert approval_state(api, first) == "skipped"  # nothing held: nobody is asked
    assert org.json(org.key(NIGHT1, MANIFEST))["removal_guard"]["state"] == "CLEAR"
    events_before = len(snapshot_events(api))

    # Overnight two of the seven instances go (29 %, above the shipped 10 %).
    assert terminate(env, ACCOUNT_B, {"dev-web"}) == 2
    org.clear_inbox()
    second = night(env, NIGHT2)
    request = wait_awaiting_input(env, second)
    assert request["options"] == ["Approve", "Reject"]
    assert "2 instances would be REMOVED" in request["subject"]
    assert "2 of the 7 instances" in request["body"]

    # Written under its date; latest/ still the first night's; no Asset event yet.
    held = org.json(org.key(NIGHT2, MANIFEST))
    assert held["removal_guard"]["state"] == "HELD"
    assert held["row_count"] == 5
    assert org.json(org.key("latest", MANIFEST))["ds"] == NIGHT1
    assert len(org.rows(org.key("latest", CSV))) == 7
    assert len(snapshot_events(api)) == events_before
    # The CMDB team was told what waits, why and where to decide.
    (told,) = [m for m in org.messages(wait=2) if m.startswith(f"EC2 inventory for {NIGHT2}")]
    assert "HELD:" in told
    assert "2 of the 7 instances" in told
    assert f"task {TASK}" in told or f"/tasks/{TASK}/required_actions" in told

    # The person approves, as the UI's Required Actions page does.
    answer = api.patch(f"{ti_path(second)}/hitlDetails", {"chosen_options": ["Approve"]})
    assert answer["chosen_options"] == ["Approve"]
    assert api.wait_run(DAG_ID, second)["state"] == "success"
    assert approval_state(api, second) == "success"
    approved = org.json(org.key(NIGHT2, MANIFEST))
    assert approved["removal_guard"]["state"] == "APPROVED"
    assert approved["removal_guard"]["decided_by"]  # the user who answered
    assert org.json(org.key("latest", MANIFEST))["ds"] == NIGHT2
    assert len(org.rows(org.key("latest", CSV))) == 5
    events = snapshot_events(api)
    assert len(events) == events_before + 1
    assert events[-1]["extra"]["ds"] == NIGHT2
    assert events[-1]["source_task_id"] == TASK
    assert any("APPROVED" in m for m in org.messages(wait=2))


def test_a_rejected_snapshot_leaves_latest_as_it_was(env: Harness) -> None:
    api, org = env.api, env.org
    assert org.json(org.key("latest", MANIFEST))["ds"] == NIGHT2  # the previous test's approved night
    events_before = len(snapshot_events(api))
    assert terminate(env, ACCOUNT_C, {"prod-db"}) == 1  # one of five: 20 %
    third = night(env, NIGHT3)
    wait_awaiting_input(env, third)
    api.patch(f"{ti_path(third)}/hitlDetails", {"chosen_options": ["Reject"]})
    assert api.wait_run(DAG_ID, third)["state"] == "success"  # a person's answer is not a failure

    rejected = org.json(org.key(NIGHT3, MANIFEST))
    assert rejected["removal_guard"]["state"] == "REJECTED"
    assert rejected["row_count"] == 4  # still written under its date
    assert len(org.rows(org.key(NIGHT3, CSV))) == 4
    assert org.json(org.key("latest", MANIFEST))["ds"] == NIGHT2  # untouched
    assert len(org.rows(org.key("latest", CSV))) == 5
    assert len(snapshot_events(api)) == events_before
