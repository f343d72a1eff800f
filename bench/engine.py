"""
The engine without Airflow's scheduler: the DAG's steps from :mod:`include.cmdb_inventory.inventory`
(resolve, ``scan_account`` per account in a thread pool of the configured concurrency, then
``merge_inventory``): each account with its own cross-account hook, as its mapped task; one S3 store
(client) for the process, which the steps take as a parameter.

Runs in a process of its own (fresh caches, its own CPU and memory):

    python -m bench.engine PARAMS.json RESULT.json

PARAMS: ``variable`` (the Variable's JSON), ``concurrency``, ``run_id``, ``ds``. The Airflow connection
``aws_default`` comes from ``AIRFLOW_CONN_AWS_DEFAULT`` in the environment.
"""

from __future__ import annotations

import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.servers import child_main, peak_rss_mb


def run(params: dict[str, Any]) -> dict[str, Any]:
    """One inventory of every account; wall and CPU seconds of each phase, and what it wrote."""
    started = time.perf_counter()
    from include.cmdb_inventory import inventory
    from include.cmdb_inventory.config import Account, parse_settings
    from include.cmdb_inventory.run import RunInfo, store_for

    import_seconds = time.perf_counter() - started
    settings = parse_settings(params["variable"])
    ds = params["ds"]
    run_info = RunInfo(
        dag_id="cmdb_ec2_inventory", run_id=params["run_id"], ds=ds, logical_date=f"{ds}T02:00:00+00:00"
    )
    cpu0, t0 = time.process_time(), time.perf_counter()
    store = store_for(settings)  # one S3 client for the process: the steps take it as a parameter
    resolved = inventory.resolve_accounts(settings, run_info, store, overwrite=True)
    t_resolved = time.perf_counter()

    def scan(account: dict[str, str]) -> dict[str, Any]:
        begun = time.perf_counter()
        try:
            summary = inventory.scan_account(settings, run_info, Account.from_dict(account), store)
            error = None
        except Exception as err:  # an account's failure is reported, as its task would fail
            summary, error = {}, f"{type(err).__name__}: {err}"
        return {"seconds": time.perf_counter() - begun, "instances": summary.get("instances"), "error": error}

    with ThreadPoolExecutor(max_workers=int(params["concurrency"])) as pool:
        accounts = list(pool.map(scan, resolved["accounts"]))
    t_scanned = time.perf_counter()
    summary = inventory.merge_inventory(
        settings, run_info, store, resolved["expected"], overwrite=True, plan=resolved
    )
    t1, cpu1 = time.perf_counter(), time.process_time()
    seconds = sorted(a["seconds"] for a in accounts)
    return {
        "wall": t1 - t0,
        "resolve_wall": t_resolved - t0,
        "scan_wall": t_scanned - t_resolved,
        "merge_wall": t1 - t_scanned,
        "cpu": cpu1 - cpu0,
        "import_seconds": import_seconds,
        "peak_rss_mb": peak_rss_mb(),
        "accounts": len(accounts),
        "account_seconds_median": seconds[len(seconds) // 2] if seconds else 0.0,
        "account_seconds_max": seconds[-1] if seconds else 0.0,
        "errors": [a["error"] for a in accounts if a["error"]][:10],
        "row_count": summary["row_count"],
        "csv_key": summary["csv_uri"].split("/", 3)[3],
        "complete": summary["run_complete"],
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(child_main(run, sys.argv[1:]))
