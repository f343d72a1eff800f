"""
``make demo``: one full DAG run against the embedded default, an emulated AWS organisation.

Starts moto's server on 127.0.0.1, seeds the 2015 blog's organisation (payer 111111111111 and three
linked accounts, each with CMDBDiscovery; the payer's CMDBApplication as the hub identity), runs the DAG
once with Airflow's test runner, and prints the CSV's URI, its first rows (a few columns), its first row in
full (every column), the coverage and the notification as read back from the CMDB team's queue. The CSV
and manifest are copied to demo-output/.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from devtools import emulator, sandbox
from devtools.world import PAYER, session_in


def _client(service: str, endpoint_url: str) -> object:
    session = session_in(endpoint_url, PAYER)
    return session.client(service, endpoint_url=endpoint_url)


# A few columns for the table of the first rows: the 2015 script's, then some of schema 2's.
TABLE_COLUMNS = (
    "Account",
    "Region",
    "InstanceId",
    "Name",
    "State",
    "InstanceLifecycle",
    "ImdsV2Required",
    "SecurityGroupIds",
)
CELL_WIDTH = 24


def _cell(value: str, width: int = CELL_WIDTH) -> str:
    """One cell on one line, cut with an ellipsis so that the table stays readable."""
    value = value.replace("\r", " ").replace("\n", " ")
    return value if len(value) <= width else value[: width - 1] + "…"


def _table(header: list[str], rows: list[list[str]]) -> str:
    """The first rows' :data:`TABLE_COLUMNS` (those in the header) as an aligned text table."""
    shown = [c for c in TABLE_COLUMNS if c in header]
    cells = [[_cell(row[header.index(c)]) for c in shown] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(shown)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(shown, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join("  " + line.rstrip() for line in lines)


def _every_column(header: list[str], row: list[str]) -> str:
    """One row as ``column: value`` lines, every column (the tag columns too), empty cells as ``-``."""
    width = max(len(c) for c in header)
    return "\n".join(f"  {c.ljust(width)}  {_cell(v, 100) or '-'}" for c, v in zip(header, row, strict=True))


def main(output_dir: Path = sandbox.ROOT / "demo-output", rows: int = 12) -> int:
    """Run the demo; return the DAG run's exit code."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    ds = datetime.now(tz=UTC).strftime("%Y-%m-%d")
    with sandbox.moto_server() as endpoint_url, tempfile.TemporaryDirectory(prefix="cmdb-demo-") as home:
        print(f"emulated AWS (moto) on {endpoint_url}")
        seeded = emulator.seed(endpoint_url)
        expected = sum(len(v) for v in seeded["instances"].values())
        print(f"seeded {len(seeded['variable']['accounts'])} accounts, {expected} instances (one terminated)")
        env = sandbox.airflow_env(Path(home), seeded["connection"], seeded["variable"])
        print("preparing a throwaway Airflow (SQLite) ...")
        sandbox.migrate(env)
        print(f"running DAG {sandbox.DAG_ID} for {ds} with `airflow dags test` ...")
        result = sandbox.dags_test(env, ds)
        (Path(home) / "dags_test.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            print(result.stdout[-4000:], result.stderr[-4000:], sep="\n", file=sys.stderr)
            print(f"DAG run failed (exit {result.returncode})", file=sys.stderr)

        s3 = _client("s3", endpoint_url)
        bucket = seeded["variable"]["bucket"]
        prefix = f"cmdb/ec2-inventory/ds={ds}"
        manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}/manifest.json")["Body"].read())
        body = s3.get_object(Bucket=bucket, Key=manifest["csv_key"])["Body"].read()
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "ec2_inventory.csv").write_bytes(body)
        (output_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))

        header, *records = list(csv.reader(io.StringIO(body.decode("utf-8"), newline="")))
        print(f"\nCSV: s3://{bucket}/{prefix}/ec2_inventory.csv  ({manifest['row_count']} rows)")
        print(f"     committed by the manifest as {manifest['csv_uri']}")
        print(f"     schema {manifest['schema_version']}, {len(header)} columns")
        print(_table(header, records[:rows]))
        if records:
            print("\nThe first row, every column:")
            print(_every_column(header, records[0]))
        print("\nCoverage:")
        print(
            f"  complete={manifest['complete']}  accounts {manifest['accounts_covered']}/"
            f"{manifest['accounts_expected']}  regions scanned {manifest['regions_scanned']}  "
            f"not enabled {manifest['regions_disabled']}"
        )
        for account in manifest["accounts"]:
            print(f"  {account['id']} {account['name']:<12} {account['status']}")

        sqs = _client("sqs", endpoint_url)
        messages = sqs.receive_message(
            QueueUrl=seeded["queue_url"], MaxNumberOfMessages=10, WaitTimeSeconds=1
        )
        print("\nNotification (read back from the CMDB team's SQS queue):")
        for message in messages.get("Messages", []):
            print("  " + message["Body"].replace("\n", "\n  "))
        print(f"\ncopied the CSV and manifest to {output_dir}/")
        return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
