"""
The coverage page's data, built from a snapshot's manifest, and its HTML. Pure: no Airflow, no I/O.

Every value of a manifest is untrusted (account names, instance names and AWS error messages can hold
markup): the model keeps them as plain text and the template escapes all of them (Jinja2 autoescape, no
``|safe`` on data). The page has no script at all, and its stylesheet is allowed by hash.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from include.cmdb_inventory import contract, coverage
from include.cmdb_inventory.contract import CSV_NAME

TEMPLATES = Path(__file__).with_name("templates")

# status -> (css class, meaning); unknown statuses are shown as "other", never dropped.
STATUS_INFO: dict[str, tuple[str, str]] = {
    contract.OK: ("ok", "scanned (the number is its instances)"),
    contract.REGION_DISABLED: ("disabled", "region not enabled in the account: not a gap"),
    contract.REGION_DENIED: ("denied", "region denied by a policy (SCP, permission boundary)"),
    contract.ROLE_NOT_ASSUMABLE: ("role", "role cannot be assumed"),
    contract.THROTTLED: ("throttled", "throttling outlasted every retry"),
    contract.ERROR: ("error", "other error"),
    contract.TASK_FAILED: ("taskfailed", "the account's task ended without reporting"),
    contract.NOT_REQUESTED: ("disabled", "not named by a run over some accounts (a gap)"),
}
OTHER_INFO = ("other", "a status this page does not know")
# How bad a status is, for an account's overall status (higher is worse).
_SEVERITY = {
    contract.REGION_DISABLED: 0,
    contract.OK: 1,
    contract.REGION_DENIED: 2,
    contract.THROTTLED: 3,
    contract.ERROR: 4,
    contract.NOT_REQUESTED: 2,
    contract.TASK_FAILED: 5,
    contract.ROLE_NOT_ASSUMABLE: 6,
}
MAX_TEXT = 1000  # characters kept of any one manifest value
MAX_CHANGES_LISTED = 50
CHANGE_KEYS = (
    "change",
    "account",
    "region",
    "instance_id",
    "name",
    "field",
    "old_value",
    "new_value",
    "reason",
)
DOWNLOADS = {"inventory": "ec2_inventory", "changes": "changes"}  # download name -> file stem
MAX_OU_PATH = 512  # characters kept of an account's OU path
# The mass-removal guard's states -> css class; HELD has its own (it must stand out), unknown ones "other".
GUARD_CSS = {
    contract.GUARD_CLEAR: "ok",
    contract.GUARD_APPROVED: "ok",
    contract.GUARD_HELD: "held",
    contract.GUARD_REJECTED: "role",
}


def text(value: Any, limit: int = MAX_TEXT) -> str:
    """Any manifest value as bounded plain text (``None`` is empty)."""
    if value is None:
        return ""
    out = value if isinstance(value, str) else str(value)
    return out if len(out) <= limit else out[: limit - 1] + "…"


def number(value: Any) -> int:
    """Any manifest value as a non-negative count (anything unparsable is 0)."""
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def status_info(status: str) -> tuple[str, str]:
    """``(css class, meaning)`` of a status."""
    return STATUS_INFO.get(status, OTHER_INFO)


def console_url(bucket: str, key: str, region: str | None) -> str:
    """The AWS console's page of one S3 object (the console of the region's partition)."""
    region = region or "us-east-1"
    host = "s3.console.aws.amazon.com"
    if region.startswith("cn-"):
        host = "console.amazonaws.cn"
    elif region.startswith("us-gov-"):
        host = "console.amazonaws-us-gov.com"
    query = urlencode({"region": region, "prefix": key})
    return f"https://{host}/s3/object/{quote(bucket, safe='')}?{query}"


def _error(entry: Mapping[str, Any]) -> tuple[str, str]:
    error = entry.get("error")
    if isinstance(error, Mapping):
        return text(error.get("code"), 200), text(error.get("message"))
    return ("", text(error)) if error else ("", "")


def _cell(entry: Mapping[str, Any], account_label: str) -> dict[str, Any]:
    status = text(entry.get("status"), 64) or "UNKNOWN"
    region = text(entry.get("region"), 64)
    instances = number(entry.get("instances"))
    code, message = _error(entry)
    note = text(entry.get("note"))
    css, meaning = status_info(status)
    where = f"{account_label} · {region}" if region else account_label
    title = f"{where}: {status}"
    if status == contract.OK:
        title += f", {instances} instance{'s' if instances != 1 else ''}"
    if code or message:
        title += f"\n{code}: {message}" if code else f"\n{message}"
    if note:
        title += f"\n{note}"
    return {
        "region": region or None,
        "status": status,
        "css": css,
        "meaning": meaning,
        "instances": instances,
        "code": code,
        "message": message,
        "note": note,
        "title": title,
    }


def share(value: Any) -> str:
    """A fraction from the manifest as a percentage (``12.5%``); anything but a finite number is empty."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return ""
    return f"{value:.1%}"


def _guard(raw: Any) -> dict[str, Any] | None:
    """A manifest's ``removal_guard`` (``contract.RemovalGuard``), normalised; ``None`` when it has none."""
    if not isinstance(raw, Mapping):
        return None
    state = text(raw.get("state"), 32) or "UNKNOWN"
    return {
        "state": state,
        "css": GUARD_CSS.get(state, OTHER_INFO[0]),
        "held": state == contract.GUARD_HELD,
        "removed": number(raw.get("removed")),
        "previous_rows": number(raw.get("previous_rows")),
        "previous_ds": text(raw.get("previous_ds"), 64),
        "fraction": share(raw.get("fraction")),
        "max_removed_fraction": share(raw.get("max_removed_fraction")),
        "reason": text(raw.get("reason")),
        "decided_by": text(raw.get("decided_by"), 256),
        "decided_at": text(raw.get("decided_at"), 64),
    }


def _held(raw: Any) -> dict[str, Any] | None:
    """
    A dated snapshot newer than ``latest/`` that the guard holds or that was rejected (``coverage_source.
    fetch_held``: ``ds``, ``dag_run_id``, ``manifest_uri``, ``removal_guard``; or ``error`` when the page
    could not look), normalised; ``None`` when there is none.
    """
    if not isinstance(raw, Mapping):
        return None
    if raw.get("error"):
        return {"error": text(raw.get("error")), "guard": None}
    guard = _guard(raw.get("removal_guard"))
    if guard is None or guard["state"] not in (contract.GUARD_HELD, contract.GUARD_REJECTED):
        return None
    return {
        "error": "",
        "ds": text(raw.get("ds"), 64),
        "dag_run_id": text(raw.get("dag_run_id"), 250),
        "manifest_uri": text(raw.get("manifest_uri")),
        "guard": guard,
    }


def _list_of(raw: Mapping[str, Any], key: str) -> list[Any]:
    """``raw[key]`` when it is a list, else an empty one (a foreign manifest may hold anything)."""
    value = raw.get(key)
    return value if isinstance(value, list) else []


def _changes(raw: Any) -> dict[str, Any] | None:
    """The manifest's ``changes`` summary, normalised; ``None`` when the manifest has none."""
    if not isinstance(raw, Mapping):
        return None
    top = [
        {key: text(item.get(key)) for key in CHANGE_KEYS}
        for item in _list_of(raw, "top")[:MAX_CHANGES_LISTED]
        if isinstance(item, Mapping)
    ]
    groups = [
        {
            "account": text(g.get("account"), 64),
            "region": text(g.get("region"), 64),
            "reason": text(g.get("reason")),
            "instances": number(g.get("instances")),
        }
        for g in _list_of(raw, "not_verified_groups")[:MAX_CHANGES_LISTED]
        if isinstance(g, Mapping)
    ]
    status = text(raw.get("status"), 64)
    previous_ds = text(raw.get("previous_ds"), 64)
    return {
        "status": status,
        # Compared with an earlier snapshot (a producer without ``status`` says so by naming it).
        "compared": status == "COMPARED" or (not status and bool(previous_ds)),
        "detail": text(raw.get("detail")),
        "previous_ds": previous_ds,
        "previous_run_id": text(raw.get("previous_run_id"), 250),
        "added": number(raw.get("added")),
        "removed": number(raw.get("removed")),
        "changed": number(raw.get("changed")),
        "not_verified": number(raw.get("not_verified")),
        "uri": text(raw.get("uri")),
        "key": text(raw.get("key")),
        "top": top,
        "not_verified_groups": groups,
    }


def build_model(
    manifest: Mapping[str, Any],
    *,
    bucket: str,
    prefix: str,
    region: str | None = None,
    manifest_uri: str = "",
    fetched_at: str = "",
    held: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """
    Everything the page shows, as JSON-ready data: the snapshot, totals, the accounts x regions grid
    (cells keyed by region, each account with its OU path), the failures with their reasons, the changes
    summary, the CSV's links, the snapshot's mass-removal guard and a newer snapshot the guard ``held``.
    """
    entries = [e for e in manifest.get("coverage") or [] if isinstance(e, Mapping)]
    names: dict[str, str] = {}
    for source in (manifest.get("expected_accounts"), manifest.get("accounts")):
        for item in source if isinstance(source, list) else []:
            if isinstance(item, Mapping) and item.get("id") and item.get("name"):
                names.setdefault(text(item["id"], 64), text(item["name"], 256))
    ou_paths: dict[str, str] = {}
    for item in _list_of(manifest, "expected_accounts"):
        if isinstance(item, Mapping) and item.get("id") and isinstance(item.get("ou_path"), str):
            ou_paths.setdefault(text(item["id"], 64), text(item["ou_path"], MAX_OU_PATH))
    for e in entries:
        if e.get("account_name"):
            names.setdefault(text(e.get("account"), 64), text(e["account_name"], 256))

    denied_is_gap = manifest.get("denied_regions_fail_coverage") is not False
    regions = sorted({text(e.get("region"), 64) for e in entries if e.get("region")})
    accounts: dict[str, dict[str, Any]] = {}
    failures: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    for e in entries:
        account_id = text(e.get("account"), 64)
        name = names.get(account_id, "")
        label = f"{account_id} ({name})" if name else account_id
        row = accounts.setdefault(
            account_id,
            {
                "id": account_id,
                "name": name,
                "label": label,
                "ou_path": ou_paths.get(account_id, ""),
                "instances": 0,
                "cells": {},
                "failure": None,
            },
        )
        cell = _cell(e, label)
        counts[cell["status"]] = counts.get(cell["status"], 0) + 1
        if cell["status"] == contract.OK:
            row["instances"] += cell["instances"]
        if cell["region"] is None:
            row["failure"] = cell if cell["status"] != contract.OK else row["failure"]
        else:
            row["cells"][cell["region"]] = cell
        if cell["status"] not in (contract.OK, contract.REGION_DISABLED):
            failures.append(
                {
                    "account": account_id,
                    "account_name": name,
                    "region": cell["region"],
                    "status": cell["status"],
                    "css": cell["css"],
                    "code": cell["code"],
                    "message": cell["message"],
                    "note": cell["note"],
                    "gap": coverage.is_gap(cell["status"], denied_is_gap),
                }
            )
    for row in accounts.values():
        statuses = [c["status"] for c in row["cells"].values()]
        if row["failure"]:
            statuses.append(row["failure"]["status"])
        worst = max(statuses, key=lambda s: _SEVERITY.get(s, 5), default=contract.OK)
        row["status"] = worst
        row["css"] = status_info(worst)[0]
        row["reason"], row["reason_title"] = _reason(row)

    ledger = coverage.summarise(
        [{"account": text(e.get("account")), "region": e.get("region"), **_status_of(e)} for e in entries],
        denied_is_gap,
    )
    expected = number(manifest.get("accounts_expected")) or ledger["accounts_expected"]
    covered = manifest.get("accounts_covered")
    totals = {
        "rows": number(manifest.get("row_count")),
        "instances": sum(r["instances"] for r in accounts.values()),
        "accounts_expected": expected,
        "accounts_covered": number(covered) if covered is not None else ledger["accounts_covered"],
        "regions": len(regions),
        "regions_scanned": number(manifest.get("regions_scanned") or ledger["regions_scanned"]),
        "regions_disabled": number(manifest.get("regions_disabled") or ledger["regions_disabled"]),
        "gaps": sum(1 for f in failures if f["gap"]),
    }
    legend = [
        {"status": status, "css": css, "meaning": meaning, "count": counts.get(status, 0)}
        for status, (css, meaning) in STATUS_INFO.items()
    ] + [
        {"status": status, "css": OTHER_INFO[0], "meaning": OTHER_INFO[1], "count": n}
        for status, n in sorted(counts.items())
        if status not in STATUS_INFO
    ]

    # The manifest commits its run's own CSV (csv_key); the CMDB team imports the date's fixed-name copy,
    # so that is the URI and console link shown, while the download serves what the manifest committed.
    csv_key = text(manifest.get("csv_key"))
    ds = text(manifest.get("ds"), 64)
    shown_key = f"{prefix}/ds={ds}/{CSV_NAME}" if manifest.get("commit_prefix") and ds else csv_key
    changes = _changes(manifest.get("changes"))
    if changes is not None:
        offered = changes["compared"] and _under(changes["key"], prefix)
        changes["download"] = "download/changes" if offered else None
    not_scanned = [
        {
            "id": text(a.get("id"), 64),
            "name": text(a.get("name"), 256),
            "state": text(a.get("state"), 64),
            "reason": text(a.get("reason")),
        }
        for a in manifest.get("accounts_not_scanned") or []
        if isinstance(a, Mapping)
    ]
    return {
        "snapshot": {
            "ds": text(manifest.get("ds"), 64),
            "dag_id": text(manifest.get("dag_id"), 250),
            "dag_run_id": text(manifest.get("dag_run_id"), 250),
            "logical_date": text(manifest.get("logical_date"), 64),
            "collected_at": text(manifest.get("collected_at"), 64),
            "complete": manifest.get("complete") is True,
            "schema_version": text(manifest.get("schema_version"), 16),
            "accounts_source": text(manifest.get("accounts_source"), 64),
            "manifest_uri": manifest_uri,
            "fetched_at": fetched_at,
        },
        "csv": {
            "uri": f"s3://{bucket}/{shown_key}" if shown_key else "",
            "key": csv_key,
            "console_url": console_url(bucket, shown_key, region) if shown_key else None,
            "download": "download/inventory" if _under(csv_key, prefix) else None,
        },
        "totals": totals,
        "regions": regions,
        "accounts": sorted(accounts.values(), key=lambda r: r["id"]),
        "failures": failures,
        "legend": legend,
        "changes": changes,
        "not_scanned": not_scanned,
        "guard": _guard(manifest.get("removal_guard")),  # None: a snapshot from before the guard
        "held": _held(held),
    }


def _reason(row: Mapping[str, Any]) -> tuple[str, str]:
    """One line under the account's name saying why it is not fully covered, and its tooltip."""
    failure = row["failure"]
    if failure:
        short = f"{failure['status']} · {failure['code']}" if failure["code"] else failure["status"]
        return short, failure["title"]
    bad = [c for c in row["cells"].values() if c["status"] not in (contract.OK, contract.REGION_DISABLED)]
    if not bad:
        return "", ""
    if len(bad) == 1:
        short = f"{bad[0]['region']}: {bad[0]['status']}"
    else:
        short = f"{len(bad)} regions: " + ", ".join(sorted({c["status"] for c in bad}))
    return short, "\n".join(c["title"] for c in bad)


def _status_of(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {"status": text(entry.get("status"), 64), "instances": number(entry.get("instances"))}


def _under(key: str, prefix: str) -> bool:
    """Whether ``key`` is a CSV under the configured prefix (the only objects the page hands out)."""
    return bool(key) and key.startswith(f"{prefix}/") and key.endswith(".csv") and ".." not in key.split("/")


def download_key(model: Mapping[str, Any], name: str) -> str | None:
    """The S3 key behind ``download/{name}`` (``inventory`` or ``changes``), when the model offers it."""
    if name == "inventory" and model["csv"]["download"]:
        return str(model["csv"]["key"])
    changes = model.get("changes")
    if name == "changes" and changes and changes.get("download"):
        return str(changes["key"])
    return None


# --------------------------------------------------------------------------------------------- HTML


@cache
def stylesheet() -> str:
    """The page's whole stylesheet (self-contained: no fonts, images or CDNs)."""
    return (TEMPLATES / "coverage.css").read_text(encoding="utf-8")


def style_hash() -> str:
    """``'sha256-…'`` of the stylesheet, for the Content-Security-Policy."""
    digest = hashlib.sha256(stylesheet().encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def content_security_policy() -> str:
    """No scripts, no external anything; only this page's own stylesheet; framed only by Airflow."""
    return (
        f"default-src 'none'; style-src {style_hash()}; img-src 'self' data:; "
        "form-action 'none'; base-uri 'none'; frame-ancestors 'self'"
    )


@cache
def _environment() -> Any:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_page(model: Mapping[str, Any] | None = None, *, problem: Mapping[str, str] | None = None) -> str:
    """The page: the model's grid, or a ``problem`` (``title``, ``detail``) when there is nothing to show."""
    from markupsafe import Markup

    template = _environment().get_template("coverage.html")
    return str(template.render(m=model, problem=problem, css=Markup(stylesheet())))  # noqa: S704 - our file
