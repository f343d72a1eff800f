"""
The DAG file's import time and what it imports, each measurement in a fresh interpreter (after one
warm-up run that fills the bytecode caches), repeated; the median counts.

- **file**: Airflow's own parts that the file names (``from airflow.sdk import dag, task, ...``) already
  imported, as in a DAG processor that has parsed any TaskFlow DAG: the cost of this file and of the
  project modules it imports.
- **cold**: only ``airflow.sdk`` imported: the above plus Airflow's lazily imported decorators and
  timetables.

    python -m bench.parse [--cold]     (one measurement, as JSON on stdout)
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from typing import Any

from devtools import sandbox

DAG_FILE = sandbox.ROOT / "dags" / f"{sandbox.DAG_ID}.py"
# Must never be imported when the DAG file is parsed.
FORBIDDEN = (
    "boto3",
    "botocore",
    "pandas",
    "pyarrow",
    "airflow.providers.amazon.aws.hooks",
    "include.cmdb_inventory.aws",
)


def sdk_names() -> list[str]:
    """The names the DAG file imports from ``airflow.sdk``."""
    import ast

    tree = ast.parse(DAG_FILE.read_text())
    return [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "airflow.sdk"
        for alias in node.names
    ]


def measure_once(cold: bool = False) -> dict[str, Any]:
    """Import the DAG file once; its seconds and the modules it added."""
    import importlib.util

    import airflow.sdk  # the DAG processor has it already

    if not cold:
        for name in sdk_names():
            getattr(airflow.sdk, name)
    before = set(sys.modules)
    started = time.perf_counter()
    spec = importlib.util.spec_from_file_location("bench_parsed_dag", DAG_FILE)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot import {DAG_FILE}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    seconds = time.perf_counter() - started
    added = sorted(set(sys.modules) - before)
    heavy = sorted(m for m in added if m.startswith(FORBIDDEN))
    packages = sorted({m.split(".")[0] for m in added})
    return {"seconds": seconds, "modules_added": len(added), "packages_added": packages, "heavy": heavy}


def measure(repeats: int, env: dict[str, str], cold: bool = False) -> dict[str, Any]:
    """``repeats`` measurements, each in a fresh process (one warm-up first, to fill bytecode caches)."""
    runs: list[dict[str, Any]] = []
    for _ in range(repeats + 1):
        done = subprocess.run(
            [sys.executable, "-m", "bench.parse", *(["--cold"] if cold else [])],
            env=env,
            cwd=sandbox.ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    runs = runs[1:]
    seconds = [r["seconds"] for r in runs]
    return {
        "median_ms": statistics.median(seconds) * 1000.0,
        "min_ms": min(seconds) * 1000.0,
        "max_ms": max(seconds) * 1000.0,
        "repeats": repeats,
        "heavy": sorted({m for r in runs for m in r["heavy"]}),
        "packages_added": runs[-1]["packages_added"],
        "modules_added": runs[-1]["modules_added"],
    }


if __name__ == "__main__":
    print(json.dumps(measure_once(cold="--cold" in sys.argv[1:])))
