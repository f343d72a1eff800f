"""
Each piece of the botocore tuning (``include/cmdb_inventory/aws/tuning.py``) with and without it, on moto's
server behind the latency gateway (127.0.0.1); a piece that lives per process is measured in fresh
processes. Every number is the median of ``--repeats`` repetitions.

- ``ec2_clients``: a task's EC2 clients (one per region of a default account), with EC2's model cut to the
  inventory's operations or whole: CPU seconds and resident memory.
- ``timestamps``: CPU to parse one DescribeInstances page, with botocore's timestamp parser or
  ``datetime.fromisoformat`` (C) swapped into the parser (the piece was dropped; its code is kept here).
- ``hub_session``: what a task process spends on the hub (the store's S3 client, the hub's STS client and
  identity, the account's AssumeRole), with one hub session per process or the provider's session per hook.
- ``session_lock``: accounts assuming their roles at once in one process at an added latency, each hook's
  session under its own lock or as a ``functools.cached_property`` (on Python 3.11 one lock for every
  instance); one account per process is the DAG's case.

    PYTHONPATH=. .venv/bin/python -m bench.tuning [--repeats N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from bench.servers import Emulator
from bench.world import DEFAULT_REGIONS, WorldSpec, seed
from devtools import emulator, sandbox
from devtools.world import BUCKET, HOME_REGION, HUB_ROLE

EC2_OPERATIONS = frozenset({"DescribeInstances", "DescribeRegions"})  # the inventory's (inventory.py)
PAGE_INSTANCES = 100  # instances in the parsed page (one reservation: moto pages by reservation)
PARSES = 20  # parses of the page per repetition
LOCK_ACCOUNTS = 16  # accounts at once (the DAG's CMDB_EC2_INVENTORY_MAX_ACTIVE_ACCOUNTS)
LOCK_LATENCY_MS = 100.0
CHILD_TIMEOUT = 300
# moto's dummy keys: an account of its own for the parsed page, with nothing else in it.
TIMESTAMP_ACCOUNT = {"aws_access_key_id": "bench-timestamps", "aws_secret_access_key": "bench"}


def median(values: list[float]) -> float:
    """The median, rounded for the report."""
    return round(statistics.median(values), 4)


def rss_mb() -> float:
    """Resident memory of this process now."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


# --------------------------------------------------------------------------- children (fresh processes)


def child_ec2_clients(variant: str, params: dict[str, Any]) -> dict[str, Any]:
    """A task's EC2 clients from the process's session: ``cut`` or ``whole`` model."""
    from botocore.config import Config
    from botocore.credentials import Credentials

    from include.cmdb_inventory.aws import clients

    operations = EC2_OPERATIONS if variant == "cut" else frozenset()
    credentials = Credentials("bench", "bench", "bench")
    config = Config(retries={"mode": "standard", "total_max_attempts": 8}, max_pool_connections=17)
    rss0, cpu0 = rss_mb(), time.process_time()
    session = clients.botocore_session(operations)
    made = [
        clients.create_client(
            session, "ec2", region, credentials, endpoint_url=params["url"], verify=None, config=config
        )
        for region in DEFAULT_REGIONS
    ]
    cpu = time.process_time() - cpu0
    methods = len([m for m in dir(made[0]) if not m.startswith("_")])
    return {"cpu": cpu, "rss_mb": rss_mb() - rss0, "clients": len(made), "methods_per_client": methods}


def child_hub_session(variant: str, params: dict[str, Any]) -> dict[str, Any]:
    """A task process's hub: ``one`` hub session per process, or the provider's ``per-hook`` sessions."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
    from botocore.config import Config

    from include.cmdb_inventory.aws import hooks

    class PerHookSession(hooks.CrossAccountHook):
        """The hook with the provider's session per call, and its own GetCallerIdentity."""

        def get_session(self, region_name: str | None = None, deferrable: bool = False) -> Any:
            return AwsBaseHook.get_session(self, region_name=region_name, deferrable=deferrable)

        @cached_property
        def hub_identity(self) -> dict[str, str]:
            answer = self.hub_sts.get_caller_identity()
            return {"Account": answer["Account"], "Arn": answer["Arn"]}

    region = HOME_REGION
    config = Config(retries={"mode": "standard", "total_max_attempts": 8})
    cpu0, wall0 = time.process_time(), time.perf_counter()
    store_hook = (hooks.HubHook if variant == "one" else AwsBaseHook)(
        aws_conn_id="aws_default", region_name=region, client_type="s3"
    )
    s3 = store_hook.get_client_type(region_name=region, config=config)
    hook_class = hooks.CrossAccountHook if variant == "one" else PerHookSession
    hook = hook_class(account_id=params["account"], region_name=region)
    hook.assume()
    s3.list_objects_v2(Bucket=BUCKET, MaxKeys=1)  # the store's first call (its credentials in use)
    return {"cpu": time.process_time() - cpu0, "wall": time.perf_counter() - wall0}


CHILDREN = {"ec2_clients": child_ec2_clients, "hub_session": child_hub_session}


def run_child(kind: str, variant: str, params: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """``python -m bench.tuning child KIND VARIANT PARAMS``: its JSON answer (the last line it prints)."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.tuning", "child", kind, variant, json.dumps(params)],
        env=env,
        cwd=sandbox.ROOT,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.tuning child {kind} {variant} failed:\n{done.stderr[-4000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def child_env(emu: Emulator, home: Path, connection: dict[str, Any]) -> dict[str, str]:
    """A child's environment: a throwaway Airflow home, the hub connection, quiet logs."""
    env = sandbox.airflow_env(home, connection, {"accounts": [], "bucket": BUCKET})
    env["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # warm processes, as a deployed image has bytecode
    return env


# --------------------------------------------------------------------------- the measurements


def measure_ec2_clients(emu: Emulator, home: Path, repeats: int) -> dict[str, Any]:
    """CPU and memory of a task's EC2 clients, cut and whole, each in fresh processes."""
    env = child_env(emu, home, emulator.demo_connection(emu.moto_url))
    runs: dict[str, list[dict[str, Any]]] = {"cut": [], "whole": []}
    for _ in range(repeats):
        for variant in runs:  # interleaved: the machine's load weighs on both alike
            runs[variant].append(run_child("ec2_clients", variant, {"url": emu.moto_url}, env))
    return {
        variant: {
            "cpu_s": median([r["cpu"] for r in found]),
            "rss_mb": median([r["rss_mb"] for r in found]),
            "clients": found[0]["clients"],
            "methods_per_client": found[0]["methods_per_client"],
        }
        for variant, found in runs.items()
    }


def fast_timestamp(value: Any) -> datetime:
    """The dropped piece: ISO-8601 with a zone in C, anything else through botocore's parser."""
    from botocore.utils import parse_timestamp

    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed
    return parse_timestamp(value)


def measure_timestamps(emu: Emulator, repeats: int) -> dict[str, Any]:
    """CPU to parse one DescribeInstances page, botocore's timestamp parser against the one in C."""
    from botocore.parsers import ResponseParserFactory

    from include.cmdb_inventory.aws import clients

    session = clients.shared_botocore_session()
    ec2 = session.create_client(
        "ec2",
        region_name="eu-west-1",
        endpoint_url=emu.moto_url,
        **TIMESTAMP_ACCOUNT,
    )
    ec2.run_instances(ImageId="ami-12c6146b", MinCount=PAGE_INSTANCES, MaxCount=PAGE_INSTANCES)
    captured: dict[str, Any] = {}
    ec2.meta.events.register(
        "before-parse.ec2.DescribeInstances", lambda response_dict, **_: captured.update(response_dict)
    )
    ec2.describe_instances()
    output = ec2.meta.service_model.operation_model("DescribeInstances").output_shape
    per_page: dict[str, list[float]] = {"botocore": [], "fromisoformat": []}
    instances = 0
    for _ in range(repeats):
        for variant, times in per_page.items():
            factory = ResponseParserFactory()
            if variant == "fromisoformat":
                factory.set_parser_defaults(timestamp_parser=fast_timestamp)
            parser = factory.create_parser("ec2")
            cpu0 = time.process_time()
            for _ in range(PARSES):
                parsed = parser.parse(captured, output)
            times.append((time.process_time() - cpu0) / PARSES)
            instances = sum(len(r["Instances"]) for r in parsed["Reservations"])
    timestamps = captured["body"].count(b"Time>") // 2  # LaunchTime, AttachTime...: open and close tags
    return {
        "instances": instances,
        "timestamps_per_instance": round(timestamps / max(1, instances), 1),
        **{f"{variant}_ms_per_page": median(times) * 1000 for variant, times in per_page.items()},
        **{
            f"{variant}_ms_per_instance": median(times) * 1000 / max(1, instances)
            for variant, times in per_page.items()
        },
    }


def measure_hub_session(emu: Emulator, home: Path, account: str, repeats: int) -> dict[str, Any]:
    """A task process's hub, both ways, with the demo's ``role_arn`` connection and with keys only."""
    connections = {
        "role_arn": emulator.demo_connection(emu.url),
        "keys": {**emulator.demo_connection(emu.url)},
    }
    connections["keys"]["extra"] = {k: v for k, v in connections["keys"]["extra"].items() if k != "role_arn"}
    results: dict[str, Any] = {}
    for name, connection in connections.items():
        env = child_env(emu, home, connection)
        runs: dict[str, list[dict[str, Any]]] = {"one": [], "per-hook": []}
        for _ in range(repeats):
            for variant, found in runs.items():
                emu.reset_calls()
                answer = run_child("hub_session", variant, {"account": account}, env)
                stats = emu.stats()
                answer["assume_role_hub"] = stats["assume_role_by_role"].get(HUB_ROLE, 0)
                answer["get_caller_identity"] = stats["by_action"].get("sts:GetCallerIdentity", 0)
                answer["calls"] = stats["calls"]
                found.append(answer)
        results[name] = {
            variant: {
                "cpu_s": median([r["cpu"] for r in found]),
                "wall_s": median([r["wall"] for r in found]),
                "assume_role_hub": median([r["assume_role_hub"] for r in found]),
                "get_caller_identity": median([r["get_caller_identity"] for r in found]),
                "calls": median([r["calls"] for r in found]),
            }
            for variant, found in runs.items()
        }
    return results


def measure_session_lock(emu: Emulator, accounts: list[str], repeats: int) -> dict[str, Any]:
    """
    Accounts' first AssumeRole at once in one process (the engine's case, and any caller with several
    hooks), and one account alone (a mapped task's case), with each hook's own lock or the stdlib's.
    """
    import os

    from airflow.sdk._shared.secrets_masker import reset_secrets_masker

    from include.cmdb_inventory.aws import hooks

    class StdlibCachedSession(hooks.CrossAccountHook):
        """The account's session as a ``functools.cached_property``: what the hook had without its lock."""

        @cached_property
        def _stdlib_session(self) -> Any:
            return hooks.CrossAccountHook.session(self)

        def session(self) -> Any:
            return self._stdlib_session

    connection = emulator.demo_connection(emu.url)
    saved = {k: os.environ.get(k) for k in ("AIRFLOW_CONN_AWS_DEFAULT", "AWS_ENDPOINT_URL")}
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps(connection)
    os.environ["AWS_ENDPOINT_URL"] = emu.url
    variants = {"own_lock": hooks.CrossAccountHook, "functools": StdlibCachedSession}
    region = HOME_REGION
    logging.getLogger("airflow.task.hooks").setLevel(logging.WARNING)  # a line per AssumeRole otherwise
    walls: dict[str, dict[int, list[float]]] = {v: {len(accounts): [], 1: []} for v in variants}
    try:
        _ = hooks.CrossAccountHook(account_id=accounts[0], region_name=region).hub_identity  # the hub session
        emu.set_latency(LOCK_LATENCY_MS)
        for _ in range(repeats):
            for variant, hook_class in variants.items():
                for count in walls[variant]:
                    # Airflow's masker recompiles one pattern of every secret it was given at each new one:
                    # a process with hundreds of sessions pays more per AssumeRole than a task process does.
                    reset_secrets_masker()
                    made = [hook_class(account_id=a, region_name=region) for a in accounts[:count]]
                    for hook in made:
                        _ = hook.hub_identity, hook.hub_sts  # only AssumeRole is measured
                    start = threading.Barrier(count + 1)

                    def assume(hook: hooks.CrossAccountHook, start: threading.Barrier = start) -> None:
                        start.wait()
                        hook.assume()

                    with ThreadPoolExecutor(max_workers=count) as pool:
                        futures = [pool.submit(assume, hook) for hook in made]
                        start.wait()
                        began = time.perf_counter()
                        for future in futures:
                            future.result()
                        walls[variant][count].append(time.perf_counter() - began)
    finally:
        emu.set_latency(0)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return {
        "latency_ms": LOCK_LATENCY_MS,
        **{
            variant: {f"{count}_accounts_wall_s": median(found) for count, found in by_count.items()}
            for variant, by_count in walls.items()
        },
    }


def measure(repeats: int = 5) -> dict[str, Any]:
    """Every piece, with and without; medians of ``repeats`` repetitions."""
    started = time.perf_counter()
    with Emulator() as emu, tempfile.TemporaryDirectory(prefix="cmdb-bench-tuning-") as tmp:
        world = seed(emu.moto_url, WorldSpec(LOCK_ACCOUNTS, DEFAULT_REGIONS[:1], 0))
        accounts = list(world.names)
        results = {
            "repeats": repeats,
            "ec2_clients": measure_ec2_clients(emu, Path(tmp), repeats),
            "timestamps": measure_timestamps(emu, repeats),
            "hub_session": measure_hub_session(emu, Path(tmp), accounts[0], repeats),
            "session_lock": measure_session_lock(emu, accounts, repeats),
        }
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results


def main(argv: list[str] | None = None) -> int:
    """Measure and print the results as JSON (``child ...``: one child measurement)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["child"]:
        kind, variant, params = argv[1], argv[2], json.loads(argv[3])
        print(json.dumps(CHILDREN[kind](variant, params)))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.tuning", description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default="", help="also write the results here")
    args = parser.parse_args(argv)
    results = measure(args.repeats)
    text = json.dumps(results, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
