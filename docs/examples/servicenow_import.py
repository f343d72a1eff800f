"""
### ServiceNow import of the EC2 inventory snapshot

Runs each time `cmdb_ec2_inventory` writes a snapshot (its Asset), reads the snapshot's manifest and its
ServiceNow payload (`servicenow/ire_payload.json.gz`, written with `"servicenow": true`) from S3, and posts
the payload to ServiceNow's Identification and Reconciliation API (`POST /api/now/identifyreconcile`) in
batches: one mapped task per batch, so a batch ServiceNow accepted is never sent again, not even when
another batch's task is retried. Throttling (429, honouring `Retry-After`) and server errors (5xx) are
retried with backoff inside the task, then by Airflow. A partial or subset snapshot, or one the removal
guard holds, is skipped unless the `import_partial` Param says otherwise (the guard's hold never is).
An example: copy it into your DAGs folder next to the `include/` package; see docs/examples/README.md.

Each payload retires what was removed since the snapshot before it. When several snapshot events arrive
in one run (the import was paused for days), only the newest is imported, and it does not retire what
the older ones removed: import those first, oldest first, with the `manifest_uri` Param.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowException, AirflowSkipException

from include.cmdb_inventory.assets import SNAPSHOT

log = logging.getLogger(__name__)

SERVICENOW_CONN_ID = "servicenow_default"  # an HTTP connection: host, login and password of the API user
AWS_CONN_ID = "aws_default"  # may read the inventory's bucket
IRE_ENDPOINT = "/api/now/identifyreconcile"
ATTEMPTS = 4  # per batch and task try: 429 and 5xx are retried this many times in all, then Airflow retries
BACKOFF_SECONDS = 1.0  # doubling between attempts without Retry-After
MAX_WAIT_SECONDS = 300  # a longer Retry-After (ServiceNow's limits are per hour) fails the try instead
PARALLEL_BATCHES = 2  # batches posted at once, to stay under the instance's rate-limit rules
# Airflow's retry of a batch's task: a knob of the deployment (the test shortens it).
RETRY_DELAY = timedelta(seconds=int(os.environ.get("SERVICENOW_IMPORT_RETRY_DELAY_SECONDS", "120")))


def which_manifest(params: Mapping[str, Any], triggering_asset_events: Mapping[Any, Sequence[Any]]) -> str:
    """The manifest: the ``manifest_uri`` Param (manual runs), else the newest triggering event's."""
    if params.get("manifest_uri"):
        return str(params["manifest_uri"])
    events = triggering_asset_events.get(SNAPSHOT) or []
    if not events:
        raise ValueError("not triggered by a snapshot: give the manifest_uri param for a manual run")
    return str(max(events, key=lambda e: e.timestamp).extra["manifest_uri"])


def skip_reason(manifest: Mapping[str, Any], import_partial: bool) -> str | None:
    """Why this snapshot is not imported, or ``None``."""
    guard = (manifest.get("removal_guard") or {}).get("state")
    if guard in ("HELD", "REJECTED"):
        return f"the removal guard's state is {guard}: approve the snapshot in cmdb_ec2_inventory first"
    if not manifest.get("servicenow"):
        return "the snapshot has no ServiceNow payload (set servicenow: true in the inventory's Variable)"
    if import_partial:
        return None
    if manifest.get("subset"):
        return "a subset snapshot (an accounts Param run): set import_partial to import it"
    if not manifest.get("complete"):
        return "a partial snapshot (coverage is short): set import_partial to import it"
    return None


def retry_after(response: Any, attempt: int) -> float:
    """Seconds before the next attempt: the ``Retry-After`` header (seconds or a date), else backoff."""
    header = response.headers.get("Retry-After")
    if header:
        try:
            return max(0.0, float(header))
        except ValueError:
            return max(0.0, (parsedate_to_datetime(header) - datetime.now(UTC)).total_seconds())
    return BACKOFF_SECONDS * 2 ** (attempt - 1)


def post(hook: Any, body: Mapping[str, Any], data_source: str) -> Any:
    """One batch, retried on 429 and 5xx; ServiceNow's answer, or an error naming the last status."""
    endpoint = f"{IRE_ENDPOINT}?sysparm_data_source={quote(data_source)}"
    headers = {"Accept": "application/json", "Content-Type": "application/json"}
    attempt = 0
    while True:
        attempt += 1
        response = hook.run(
            endpoint=endpoint,
            data=json.dumps(body),
            headers=headers,
            extra_options={"check_response": False, "timeout": 300},
        )
        status = response.status_code
        if status < 300:
            return response.json()
        if status != 429 and status < 500:
            raise AirflowException(f"ServiceNow refused the batch: HTTP {status}: {response.text[:500]}")
        wait = retry_after(response, attempt)
        if attempt == ATTEMPTS or wait > MAX_WAIT_SECONDS:
            raise AirflowException(f"ServiceNow answered HTTP {status} {attempt} times (wait {wait:.0f} s)")
        log.warning(
            "ServiceNow answered HTTP %s; attempt %d of %d in %.1f s", status, attempt, ATTEMPTS, wait
        )
        time.sleep(wait)


def read_s3(uri: str) -> bytes:
    """One object's bytes, through the Amazon provider."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    bucket, key = S3Hook.parse_s3_url(uri)
    return bytes(S3Hook(aws_conn_id=AWS_CONN_ID).get_key(key, bucket).get()["Body"].read())


@dag(
    dag_id=Path(__file__).stem,
    schedule=[SNAPSHOT],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    doc_md=__doc__,
    tags=["cmdb", "servicenow", "example"],
    default_args={"owner": "cmdb-team", "retries": 3, "retry_delay": RETRY_DELAY},
    params={
        "manifest_uri": Param(
            None, type=["null", "string"], description="s3://.../manifest.json (manual run)"
        ),
        "batch_size": Param(100, type="integer", minimum=1, description="instances per request"),
        "import_partial": Param(False, type="boolean", description="also import partial or subset snapshots"),
        "data_source": Param(
            "ServiceNow", type="string", description="sysparm_data_source (discovery_source)"
        ),
    },
)
def servicenow_import() -> None:
    """Plan the batches of the snapshot's payload, then post each in its own mapped task."""

    @task
    def plan_batches(params: Any = None, triggering_asset_events: Any = None) -> list[dict[str, Any]]:
        from include.cmdb_inventory.servicenow import batch_count

        manifest_uri = which_manifest(params, triggering_asset_events or {})
        manifest = json.loads(read_s3(manifest_uri))
        reason = skip_reason(manifest, params["import_partial"])
        if reason:
            raise AirflowSkipException(f"{manifest_uri}: {reason}")
        payload = manifest["servicenow"]
        count = batch_count(int(payload["instances"]), params["batch_size"])
        log.info("%s: %d instances in %d batches", payload["uri"], payload["instances"], count)
        return [
            {
                "uri": payload["uri"],
                "sha256": payload["sha256"],
                "number": n,
                "of": count,
                "size": params["batch_size"],
            }
            for n in range(count)
        ]

    @task(map_index_template="{{ batch_label }}", max_active_tis_per_dagrun=PARALLEL_BATCHES)
    def post_batch(batch: dict[str, Any], params: Any = None) -> dict[str, Any]:
        import hashlib

        from airflow.providers.http.hooks.http import HttpHook

        from include.cmdb_inventory import servicenow

        get_current_context()["batch_label"] = f"batch {batch['number'] + 1} of {batch['of']}"
        data = read_s3(batch["uri"])
        if hashlib.sha256(data).hexdigest() != batch["sha256"]:
            raise AirflowException(f"{batch['uri']} is not the payload its manifest names (replaced since?)")
        body = servicenow.batch(servicenow.load(data), batch["number"], batch["size"])
        answer = post(HttpHook(method="POST", http_conn_id=SERVICENOW_CONN_ID), body, params["data_source"])
        results = (answer.get("result") or {}).get("items") or []
        failed = [r for r in results if r.get("errors")]
        if failed:
            log.warning("ServiceNow reported errors for %d items, e.g. %s", len(failed), failed[0]["errors"])
        return {
            "batch": batch["number"],
            "items": len(body["items"]),
            "results": len(results),
            "errors": len(failed),
        }

    post_batch.expand(batch=plan_batches())


servicenow_import()
