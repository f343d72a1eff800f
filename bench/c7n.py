"""
Cloud Custodian's ``c7n-org`` as the benchmark's peer: the same seeded world, through the same latency
gateway, its CSV checked like ours.

c7n-org lives in a venv of its own, ``.bench-venv-c7n`` at the repo's root (pinned by
``bench/requirements-c7n.txt`` and its lock ``bench/constraints-c7n.txt``, installed with compiled
bytecode, like ours); :func:`ensure_venv` makes it when it is missing or stale. Its configuration, as a
user of c7n-org would write it for this organisation:

- ``accounts.yml``: every account with its ``CMDBDiscovery`` role and the world's regions; each
  account's ``name`` is its id, because c7n-org writes the name in its report's ``Account`` column;
- ``policy.yml``: one ``aws.ec2`` policy whose server-side filter leaves out terminated instances,
  as ours does;
- ``c7n-org run --cache-period 0`` (no cache), workers left at c7n-org's default (``C7N_ORG_PARALLEL``
  unset: four per core, processes), then ``c7n-org report --format csv`` for the CSV.

Every client reaches the gateway through ``AWS_ENDPOINT_URL`` (botocore reads it); the environment is
built from nothing, so no setting of this machine's reaches c7n-org.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.scenarios import RUN_TIMEOUT, Measured, Skipped, _measured
from bench.servers import Emulator, children_cpu
from bench.world import Seeded, Verdict, verify_csv
from devtools import emulator
from devtools.sandbox import ROOT
from devtools.world import DISCOVERY_ROLE, check_loopback

VENV = ROOT / ".bench-venv-c7n"
REQUIREMENTS = ROOT / "bench" / "requirements-c7n.txt"
CONSTRAINTS = ROOT / "bench" / "constraints-c7n.txt"
UV_VERSION = "0.13.9"
LOCK = ROOT / "bench" / "results" / ".c7n-venv.lock"  # in an ignored folder
POLICY_NAME = "ec2-inventory"
POLICY = f"""\
policies:
- name: {POLICY_NAME}
  resource: aws.ec2
  query:
  - instance-state-name: [pending, running, shutting-down, stopping, stopped]
"""
REPORT_COLUMNS: tuple[str, ...] = ("Account", "Region", "Policy", "InstanceId", "Name")
# c7n.reports.csvout.CSV_INJECTION_PREFIXES: c7n's report prefixes these values with a quote.
CSV_INJECTION_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def c7n_csv_name(name: str) -> str:
    """What ``c7n-org report`` writes for a Name tag: c7n's own formula neutralisation."""
    return "'" + name if name.startswith(CSV_INJECTION_PREFIXES) else name


# --- the venv -------------------------------------------------------------------------------------------


def _wanted() -> str:
    """What the venv must have been made from: the pins, the lock and uv's version."""
    digest = hashlib.sha256()
    for path in (REQUIREMENTS, CONSTRAINTS):
        digest.update(path.read_bytes())
    digest.update(UV_VERSION.encode())
    return digest.hexdigest()


def c7n_org_bin(venv: Path = VENV) -> Path:
    """The ``c7n-org`` executable of the venv."""
    return venv / "bin" / "c7n-org"


def venv_ready(venv: Path = VENV) -> bool:
    """Whether the venv exists and was made from the current pins."""
    stamp = venv / ".installed"
    return c7n_org_bin(venv).exists() and stamp.exists() and stamp.read_text().strip() == _wanted()


def ensure_venv(create: bool = True, venv: Path = VENV) -> Path:
    """
    The ``c7n-org`` executable, the venv made first when it is missing or stale and ``create`` (this
    interpreter's ``-m venv``, uv at :data:`UV_VERSION`, ``uv pip install --compile-bytecode`` of the pins
    under the lock). Raises :class:`Skipped` when the venv is not there and ``create`` is false.
    """
    if venv_ready(venv):
        return c7n_org_bin(venv)
    if not create:
        raise Skipped(f"no c7n-org venv ({venv.name}; `make bench` makes it)")
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two benchmarks at once make it once
        if venv_ready(venv):
            return c7n_org_bin(venv)
        shutil.rmtree(venv, ignore_errors=True)
        print(f"  making {venv.name} (c7n-org, pinned) ...", flush=True)
        python = venv / "bin" / "python"
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "VIRTUAL_ENV")}

        def run(*cmd: str | Path) -> None:
            done = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(
                    f"{' '.join(map(str, cmd))} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
                )

        run(sys.executable, "-m", "venv", venv)
        (venv / ".gitignore").write_text("*\n")  # as Python 3.13's venv does: never committed
        run(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"uv=={UV_VERSION}")
        run(venv / "bin" / "uv", "pip", "install", "--quiet", "--compile-bytecode", "--python", python,
            "-r", REQUIREMENTS, "-c", CONSTRAINTS)  # fmt: skip
        (venv / ".installed").write_text(_wanted() + "\n")
    return c7n_org_bin(venv)


def default_workers(c7n_bin: Path) -> int:
    """c7n-org's worker count on this machine with ``C7N_ORG_PARALLEL`` unset (read from c7n-org itself)."""
    python = c7n_bin.parent / "python"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tempfile.gettempdir()}
    done = subprocess.run(
        [str(python), "-c", "import c7n_org.cli as c; print(c.WORKER_COUNT)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout.strip())


def versions(c7n_bin: Path) -> dict[str, str]:
    """The versions of c7n-org, c7n, boto3 and botocore in the venv."""
    python = c7n_bin.parent / "python"
    code = (
        "import json; from importlib.metadata import version as v; "
        "print(json.dumps({n: v(n) for n in ('c7n-org', 'c7n', 'boto3', 'botocore')}))"
    )
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout))


# --- configuration, run, report ------------------------------------------------------------------------


def write_config(workdir: Path, regions: dict[str, list[str]]) -> None:
    """``accounts.yml`` (JSON is YAML), ``policy.yml`` and the (unused) cache folder in ``workdir``."""
    accounts = [
        {
            "account_id": account,
            "name": account,  # the report's Account column is the name
            "role": f"arn:aws:iam::{account}:role/{DISCOVERY_ROLE}",
            "regions": list(names),
        }
        for account, names in regions.items()
    ]
    (workdir / "accounts.yml").write_text(json.dumps({"accounts": accounts}, indent=1))
    (workdir / "policy.yml").write_text(POLICY)
    (workdir / "cache").mkdir(exist_ok=True)


def c7n_env(endpoint_url: str, home: Path, login: str, password: str) -> dict[str, str]:
    """c7n-org's whole environment: the gateway for every client, the hub's keys, nothing of this machine."""
    check_loopback(endpoint_url)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": login,
        "AWS_SECRET_ACCESS_KEY": password,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }


def _common(workdir: Path) -> list[str]:
    return ["-c", "accounts.yml", "-u", "policy.yml", "-s", "out", "--cache-path", str(workdir / "cache")]


def run_org(c7n_bin: Path, workdir: Path, env: dict[str, str]) -> dict[str, Any]:
    """``c7n-org run`` then ``c7n-org report``: each one's wall and CPU (its processes), exit and log tail."""
    result: dict[str, Any] = {}
    report = [
        "report",
        *_common(workdir),
        "--format",
        "csv",
        "--no-default-fields",
        "--field",
        "InstanceId=InstanceId",
        "--field",
        "Name=tag:Name",
        "-f",
        "report.csv",
    ]
    for step, args in (("run", ["run", *_common(workdir), "--cache-period", "0"]), ("report", report)):
        cpu0, t0 = children_cpu(), time.perf_counter()
        done = subprocess.run(
            [str(c7n_bin), *args],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        result[f"{step}_wall"] = time.perf_counter() - t0
        result[f"{step}_cpu"] = children_cpu() - cpu0
        result[f"{step}_exit"] = done.returncode
        if done.returncode != 0:
            result["log_tail"] = (done.stdout + done.stderr)[-600:]
            break
    return result


# --- the check ------------------------------------------------------------------------------------------


def verify_report(body: bytes, seeded: Seeded) -> Verdict:
    """
    c7n-org's report CSV against the seeded world: its header, every seeded instance exactly once and
    nothing else, each with its account, region and Name as c7n neutralises it, all of the one policy.
    """
    verdict = verify_csv(body, seeded, columns=REPORT_COLUMNS, product=False, name_rule=c7n_csv_name)
    if not verdict.rows:  # a wrong header, or no rows: nothing more to read
        return verdict
    policies = {row.get("Policy") for row in csv.DictReader(io.StringIO(body.decode("utf-8"), newline=""))}
    if policies != {POLICY_NAME}:
        verdict = Verdict(False, verdict.rows, [f"policies {sorted(policies)}", *verdict.problems])
    return verdict


def raw_problems(out_dir: Path, seeded: Seeded) -> list[str]:
    """
    The same check on c7n-org's raw output (``out/<account>/<region>/<policy>/resources.json``, names as
    tagged): every account and region answered, and the same instances as the seeded world.
    """
    found: list[tuple[str, str, str, str]] = []
    answered = set()
    for path in sorted(out_dir.glob(f"*/*/{POLICY_NAME}/resources.json")):
        account, region = path.parts[-4], path.parts[-3]
        answered.add((account, region))
        for instance in json.loads(path.read_text()):
            tags = {t["Key"]: t["Value"] for t in instance.get("Tags") or []}
            found.append((account, region, instance["InstanceId"], tags.get("Name", "")))
    problems = []
    wanted_regions = {(a, r) for a in seeded.names for r in seeded.spec.regions}
    if answered != wanted_regions:
        problems.append(f"resources.json for {len(answered)} of {len(wanted_regions)} account-regions")
    expected = {(a, r, i, n) for i, (a, r, n) in seeded.expected().items()}
    if len(found) != len(set(found)) or set(found) != expected:
        problems.append(
            f"resources.json lists {len(found)} instances ({len(set(found) - expected)} unexpected, "
            f"{len(expected - set(found))} missing)"
        )
    return problems


# --- the measured run -----------------------------------------------------------------------------------


def run_c7n(emu: Emulator, seeded: Seeded, latency_ms: float, c7n_bin: Path, workers: int) -> Measured:
    """
    c7n-org on ``seeded`` through the gateway at ``latency_ms``: wall and CPU of ``run`` plus ``report``
    (the time to a CSV, as every tool here is timed to its CSV), the gateway's call count, the checks.
    """
    connection = emulator.demo_connection(emu.url)
    with tempfile.TemporaryDirectory(prefix="cmdb-bench-c7n-") as tmp:
        workdir = Path(tmp)
        write_config(workdir, seeded.regions_of())
        env = c7n_env(emu.url, workdir, connection["login"], connection["password"])
        emu.set_latency(latency_ms)
        emu.reset_calls()
        before = emu.cpu()
        result = run_org(c7n_bin, workdir, env)
        after = emu.cpu()
        stats = emu.stats()
        emu.set_latency(0)
        report = workdir / "report.csv"
        if result.get("report_exit") == 0 and report.exists():
            verdict = verify_report(report.read_bytes(), seeded)
            raw = raw_problems(workdir / "out", seeded)
        else:
            verdict, raw = Verdict(False, 0, ["no report"]), []
    failed = [f"c7n-org {s} exit {result[f'{s}_exit']}" for s in ("run", "report") if result.get(f"{s}_exit")]
    if failed or raw:
        tail = [result["log_tail"].replace("\n", " ")] if "log_tail" in result else []
        verdict = Verdict(False, verdict.rows, [*failed, *raw, *verdict.problems, *tail])
    wall = result["run_wall"] + result.get("report_wall", 0.0)
    cpu = result["run_cpu"] + result.get("report_cpu", 0.0)
    timings = {**result, "wall": wall, "cpu": cpu, "process_wall": wall, "process_cpu": cpu}
    with contextlib.suppress(KeyError):
        del timings["log_tail"]
    return _measured(
        "c7n-org", seeded, latency_ms, timings, verdict, (before, after, cpu), stats, workers=workers
    )
