"""
The DAG on a real Celery cluster, without Docker, and through process-level faults: Redis (Debian's
``redis-server``) as the broker and a private PostgreSQL 15 as metadata database and result backend, the
scheduler, DAG processor and API server, and two ``airflow celery worker`` processes with different
``--celery-hostname``s sharing that broker and database, as workers on two machines do. AWS is moto behind
the loopback gateway. Everything is driven through the REST API, as the UI does it.

One cluster for the module; the tests share it and run in file order (the worker killed in the second
test is started again after it, as when its machine comes back). World: twelve accounts x two regions.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from devtools import sandbox
from devtools.cluster import PREFIX, AirflowApi, ClusterError, Harness, Org, running_cluster
from devtools.servers import postgres_available, redis_available
from devtools.world import PAYER, Server, World

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.scheduler,
    pytest.mark.xdist_group("celery"),
    pytest.mark.usefixtures("no_gateway_rules"),
    pytest.mark.skipif(
        not redis_available(), reason="Debian's redis-server is not installed and `make redis` could not"
    ),
    pytest.mark.skipif(
        not postgres_available(), reason="the PostgreSQL 15 server binaries are not installed"
    ),
]

log = logging.getLogger(__name__)

DAG_ID = sandbox.DAG_ID
CSV, MANIFEST = "ec2_inventory.csv", "manifest.json"
WORKERS = ("w1", "w2")
# Worker processes per worker: enough for the twelve scans to need both workers, small for two cores.
CONCURRENCY = 2
# The scheduler fails a running task instance whose worker stopped heartbeating after this long (Airflow's
# default is 300 s: a test cannot wait that long; the supervisor heartbeats every 5 s).
HEARTBEAT_TIMEOUT = 20
# The scheduler requeues a task instance queued this long (Airflow's default is 600 s; see env()).
QUEUED_TIMEOUT = 60


def celery_world() -> World:
    """Twelve accounts (the payer and eleven more) x two regions; one terminated instance, never listed."""
    accounts = {PAYER: "Payer", **{f"2000000000{n:02d}": f"Team {n:02d}" for n in range(1, 12)}}
    servers: dict[str, list[Server]] = {}
    for n, account in enumerate(accounts):
        servers[account] = [Server("us-east-1", f"app-{n:02d}")]
        if n % 2:
            servers[account].append(Server("eu-west-1", f"db-{n:02d}", state="stopped"))
        if n % 3 == 0:
            servers[account].append(Server("eu-west-1", f"web-{n:02d}", count=2))
    servers["200000000004"].append(Server("us-east-1", "retired", state="terminated"))
    return World(accounts=accounts, servers=servers)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    """Redis, PostgreSQL, the gateway and world, ``airflow db migrate``, the three components, two workers."""
    workdir = tmp_path_factory.mktemp("celery")  # the components' logs stay there (pytest keeps 3)
    settings = {
        # A dead worker's task instances stay "running" until the scheduler sees their heartbeats stop:
        # after [scheduler] task_instance_heartbeat_timeout (default 300 s), checked every
        # task_instance_heartbeat_timeout_detection_interval (default 10 s). Seconds here, not minutes.
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
        # A restarted scheduler adopts the task instances of one that died once the dead one's heartbeat
        # is [scheduler] scheduler_health_check_threshold (30 s) old, at its next orphan check (default
        # every 300 s): every 5 s here, so that a task the dead scheduler had queued in the database but
        # not yet sent to the broker is queued again within the test's wait.
        "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "5",
        # A delivery that Celery drops before Airflow's code runs (a worker that cannot record the task as
        # STARTED because the result backend, the metadata database, is down; a worker killed between
        # taking a message and starting it) leaves its task instance queued until
        # [scheduler] task_queued_timeout requeues it (default 600 s, checked every 120 s). 60 s, every
        # 5 s here. It is also the lifetime of a queued task's start token: well above what a scan waits
        # for a worker slot here (at most six queued for four slots).
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": str(QUEUED_TIMEOUT),
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": "5",
    }
    with running_cluster(
        workdir,
        gateway_seed=12,
        world=celery_world(),
        # A scan killed with its worker is retried after 1 s, not the shipped 120 s (doubling).
        knobs=sandbox.FAST_RETRIES,
        settings=settings,
        celery_workers=WORKERS,
        worker_concurrency=CONCURRENCY,
    ) as harness:
        yield harness


def wait_until(what: str, check: Callable[[], bool], timeout: float = 120) -> None:
    """Poll ``check`` until it holds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def scans(api: AirflowApi, run_id: str) -> dict[str, dict[str, Any]]:
    """
    A run's mapped ``scan_account`` task instances by account id (from their label, rendered when the
    task starts; until then by map index).
    """
    return {
        str(ti["rendered_map_index"]).split(" ")[0]: ti
        for ti in api.task_instances(DAG_ID, run_id)
        if ti["task_id"] == "scan_account" and ti["map_index"] >= 0
    }


def tis_by_task(api: AirflowApi, run_id: str) -> dict[str, dict[str, Any]]:
    """A run's unmapped task instances by task id."""
    return {ti["task_id"]: ti for ti in api.task_instances(DAG_ID, run_id) if ti["map_index"] < 0}


def trigger(api: AirflowApi, ds: str) -> str:
    """A manual run of date ``ds``; its run id."""
    return str(api.trigger(DAG_ID, logical_date=f"{ds}T02:00:00Z")["dag_run_id"])


def listed(org: Org, ds: str) -> list[tuple[str, str, str]]:
    """(Account, Region, InstanceId) of every row of the date's CSV, in file order."""
    return [(r["Account"], r["Region"], r["InstanceId"]) for r in org.rows(org.key(ds, CSV))]


def assert_exact(org: Org, ds: str, run_id: str) -> dict[str, Any]:
    """The date's snapshot is this run's, complete, and lists every seeded instance exactly once."""
    manifest = org.json(org.key(ds, MANIFEST))
    assert manifest is not None, f"no manifest for {ds}"
    assert manifest["dag_run_id"] == run_id
    assert manifest["complete"] is True, manifest["coverage"]
    rows = listed(org, ds)
    assert len(rows) == len(set(rows)), "an instance listed twice"
    assert set(rows) == org.expected()
    assert manifest["row_count"] == len(rows)
    return manifest


def snapshots(org: Org) -> dict[str, bytes | None]:
    """Every object of every snapshot (dates and latest/), staging excluded."""
    return {key: org.get(key) for key in org.keys(f"{PREFIX}/") if "/_staging/" not in key}


def mid_run(api: AirflowApi, run_id: str, *, done: int, left: int) -> Callable[[], bool]:
    """A check: at least ``done`` scans succeeded and at least ``left`` are not finished yet."""

    def check() -> bool:
        states = [ti["state"] for ti in scans(api, run_id).values()]
        finished = sum(s == "success" for s in states)
        unfinished = sum(s not in ("success", "failed", "upstream_failed", "skipped") for s in states)
        if states and unfinished < left:
            raise ClusterError(f"the run went too fast to be caught in the middle: {states}")
        return finished >= done

    return check


def test_twelve_accounts_spread_over_both_workers(env: Harness) -> None:
    api, org = env.api, env.org
    ds = "2026-10-01"
    started = time.monotonic()
    run_id = trigger(api, ds)
    run = api.wait_run(DAG_ID, run_id, timeout=300)
    env.timings["spread_run"] = time.monotonic() - started
    assert run["state"] == "success", env.cluster.explain(DAG_ID, run_id)

    # Twelve mapped scans, each once, green, on both workers (each task instance names its worker).
    found = scans(api, run_id)
    assert sorted(found) == sorted(org.world.accounts)
    assert {(ti["state"], ti["try_number"]) for ti in found.values()} == {("success", 1)}
    hosts = [ti["hostname"] for ti in found.values()]
    assert set(hosts) == set(WORKERS), hosts
    assert {ti["executor"] for ti in found.values()} <= {None, "CeleryExecutor"}
    others = tis_by_task(api, run_id)
    # approve_removals asks a person only when the mass-removal guard holds the snapshot: skipped here.
    assert others.pop("approve_removals")["state"] == "skipped"
    assert {t: (ti["state"], ti["hostname"] in WORKERS) for t, ti in others.items()} == dict.fromkeys(
        ("resolve_accounts", "merge_inventory", "notify_cmdb", "check_coverage"), ("success", True)
    )
    # Each worker's own log shows at least as many deliveries from the broker as task instances name it.
    for name in WORKERS:
        text = env.cluster.component(name).output()
        received = len(re.findall(r"Task execute_workload\[[0-9a-f-]+\] received", text))
        named = sum(ti["hostname"] == name for ti in [*found.values(), *others.values()])
        assert received >= named > 0, (name, received, named)

    manifest = assert_exact(org, ds, run_id)
    assert manifest["accounts_covered"] == 12
    log.warning(
        "Celery run: %.0f s, scans per worker %s",
        env.timings["spread_run"],
        {name: hosts.count(name) for name in WORKERS},
    )


def test_worker_killed_mid_scan_is_retried_on_the_other_worker(env: Harness) -> None:
    api, org, gateway, cluster = env.api, env.org, env.gateway, env.cluster
    ds = "2026-10-02"
    slow = "200000000007"
    # The slow account's EC2 calls hang for a minute: its scan is still running when its worker dies.
    hang = gateway.add_latency(60, account=slow, service="ec2")
    gateway.reset_calls()
    started = time.monotonic()
    run_id = trigger(api, ds)

    def scanning() -> bool:
        ti = scans(api, run_id).get(slow)
        return bool(ti and ti["state"] == "running" and ti["hostname"] in WORKERS and hang.matched)

    wait_until(f"the scan of {slow} to be in the middle of its EC2 calls", scanning)
    victim = scans(api, run_id)[slow]["hostname"]
    (survivor,) = set(WORKERS) - {victim}
    cluster.kill(victim)
    killed_at = time.monotonic()
    hang.remove()

    run = api.wait_run(DAG_ID, run_id, timeout=240)
    env.timings["worker_kill_recovery"] = time.monotonic() - killed_at
    env.timings["worker_kill_run"] = time.monotonic() - started
    assert run["state"] == "success", cluster.explain(DAG_ID, run_id)

    # The slow account's first try died with its worker; the scheduler saw its heartbeats stop and the
    # retry ran on the other worker.
    ti = scans(api, run_id)[slow]
    assert (ti["state"], ti["try_number"], ti["hostname"]) == ("success", 2, survivor)
    tries = api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/scan_account/{ti['map_index']}/tries")[
        "task_instances"
    ]
    first = next(t for t in tries if t["try_number"] == 1)
    assert (first["hostname"], first["state"]) == (victim, "failed"), first
    events = api.get("/eventLogs", dag_id=DAG_ID, run_id=run_id, event="heartbeat timeout")["event_logs"]
    assert any(e["map_index"] == ti["map_index"] for e in events), events
    # Every other scan ended green too (one that shared the dead worker was retried the same way).
    assert {t["state"] for t in scans(api, run_id).values()} == {"success"}
    assert gateway.count(action="AssumeRole", role_arn=f"arn:aws:iam::{slow}:role/CMDBDiscovery") == 2

    assert_exact(org, ds, run_id)
    # Its machine is back: the worker rejoins under the same name (ready for the next tests).
    cluster.restart(victim)
    log.warning(
        "worker %s killed: run green %.0f s after the kill (heartbeat timeout %s s)",
        victim,
        env.timings["worker_kill_recovery"],
        HEARTBEAT_TIMEOUT,
    )


def test_scheduler_killed_and_restarted_mid_run(env: Harness) -> None:
    api, org, cluster = env.api, env.org, env.cluster
    ds = "2026-10-03"
    for name in WORKERS:  # the one killed before is back
        cluster.wait_worker(name)
    started = time.monotonic()
    run_id = trigger(api, ds)
    wait_until("the run to be in the middle of its scans", mid_run(api, run_id, done=2, left=4))
    old = cluster.component("scheduler").process.pid
    cluster.kill("scheduler")
    at_kill = {ti["map_index"]: ti["state"] for ti in scans(api, run_id).values()}
    cluster.restart("scheduler")  # as a supervisor (compose's restart: always, systemd) does

    run = api.wait_run(DAG_ID, run_id, timeout=240)
    env.timings["scheduler_kill_run"] = time.monotonic() - started
    assert run["state"] == "success", cluster.explain(DAG_ID, run_id)
    assert cluster.component("scheduler").process.pid != old
    # Every scan ended green; those already running or done when the scheduler died ran only once.
    after = {ti["map_index"]: ti for ti in scans(api, run_id).values()}
    assert {t["state"] for t in after.values()} == {"success"}
    started_before = [i for i, state in at_kill.items() if state in ("running", "success")]
    assert started_before
    assert {after[i]["try_number"] for i in started_before} == {1}
    assert_exact(org, ds, run_id)
    log.warning(
        "scheduler killed with scans %s: run green after %.0f s, tries %s",
        sorted(str(state) for state in at_kill.values()),
        env.timings["scheduler_kill_run"],
        sorted(t["try_number"] for t in after.values()),
    )


def test_metadata_database_restarted_mid_run(env: Harness) -> None:
    api, org, cluster = env.api, env.org, env.cluster
    ds = "2026-10-04"
    before = snapshots(org)
    started = time.monotonic()
    run_id = trigger(api, ds)
    wait_until("the run to be in the middle of its scans", mid_run(api, run_id, done=2, left=4))
    down = env.pg.restart(down=1.0)

    # Airflow's components may exit on a lost database connection; a supervisor starts them again.
    restarted: list[str] = []
    deadline = time.monotonic() + QUEUED_TIMEOUT + 180
    while True:
        for name in cluster.exited():
            log.warning("%s exited after the database restart; starting it again", name)
            restarted.append(name)
            cluster.restart(name)
        try:
            run = api.run(DAG_ID, run_id)
        except Exception as err:  # the API server itself may be down for a moment
            log.warning("API not answering: %r", err)
            run = {"state": "unknown"}
        if run["state"] in ("success", "failed"):
            break
        assert time.monotonic() < deadline, cluster.explain(DAG_ID, run_id)
        time.sleep(1)
    env.timings["database_restart_run"] = time.monotonic() - started

    # Earlier dates' snapshots are exactly as they were (latest/ follows the newest date: this one).
    after = snapshots(org)
    assert {k: v for k, v in after.items() if k in before and "/latest/" not in k} == {
        k: v for k, v in before.items() if "/latest/" not in k
    }
    if run["state"] == "success":
        assert_exact(org, ds, run_id)
        latest = org.json(org.key("latest", MANIFEST))
        assert latest is not None
        assert latest["dag_run_id"] == run_id
    else:
        # A red run: its snapshot, if any, is marked incomplete and names every account it lacks.
        manifest = org.json(org.key(ds, MANIFEST))
        if manifest is not None:
            assert manifest["complete"] is False
            missing = {e["account"] for e in manifest["coverage"] if e["status"] != "OK"}
            assert missing, manifest["coverage"]
            rows = set(listed(org, ds))
            assert rows <= org.expected()
            assert {a for a, _, _ in org.expected() - rows} <= missing
    requeued = api.get("/eventLogs", dag_id=DAG_ID, run_id=run_id, event="stuck in queued reschedule")
    log.warning(
        "database down %.1f s: run %s after %.0f s; components restarted: %s; "
        "task instances requeued after deliveries lost: %s",
        down,
        run["state"],
        env.timings["database_restart_run"],
        restarted or "none",
        sorted(e["map_index"] for e in requeued["event_logs"]) or "none",
    )
