"""The coverage page plugin without a browser: its model, its HTML (escaping), its app, its S3 source."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from include.cmdb_inventory.ui import coverage_page
from include.cmdb_inventory.ui.coverage_source import Location, SnapshotCache, SourceError, fetch_manifest

PREFIX = "cmdb/ec2-inventory"
BUCKET = "example-corp-cmdb"
LOCATION = Location(bucket=BUCKET, prefix=PREFIX, region_name="us-east-1")
CSV_KEY = f"{PREFIX}/ds=2026-11-20/ec2_inventory.csv"


def ok(account: str, name: str, region: str, instances: int) -> dict[str, Any]:
    return {
        "account": account,
        "account_name": name,
        "region": region,
        "status": "OK",
        "instances": instances,
    }


def manifest(**overrides: Any) -> dict[str, Any]:
    """A manifest shaped like merge_inventory's: two accounts scanned, one role broken, one region denied."""
    doc: dict[str, Any] = {
        "schema_version": 1,
        "dag_id": "cmdb_ec2_inventory",
        "dag_run_id": "scheduled__2026-11-20T02:00:00+00:00",
        "ds": "2026-11-20",
        "logical_date": "2026-11-20T02:00:00+00:00",
        "collected_at": "2026-11-20T02:04:11Z",
        "csv_key": CSV_KEY,
        "csv_uri": f"s3://{BUCKET}/{CSV_KEY}",
        "row_count": 5,
        "complete": False,
        "accounts_expected": 3,
        "accounts_covered": 1,
        "regions_scanned": 3,
        "regions_disabled": 1,
        "denied_regions_fail_coverage": True,
        "coverage": [
            ok("111111111111", "Payer", "eu-west-1", 2),
            ok("111111111111", "Payer", "us-east-1", 1),
            {
                "account": "111111111111",
                "account_name": "Payer",
                "region": "ap-east-1",
                "status": "REGION_DISABLED",
                "instances": 0,
                "error": {"code": "OptInStatus", "message": "region is not-opted-in"},
            },
            ok("222222222222", "Development", "eu-west-1", 2),
            {
                "account": "222222222222",
                "account_name": "Development",
                "region": "us-east-1",
                "status": "REGION_DENIED",
                "instances": 0,
                "error": {"code": "UnauthorizedOperation", "message": "explicit deny in an SCP"},
            },
            {
                "account": "333333333333",
                "account_name": "Testing",
                "region": None,
                "status": "ROLE_NOT_ASSUMABLE",
                "instances": 0,
                "error": {"code": "AccessDenied", "message": "not authorized to perform: sts:AssumeRole"},
            },
        ],
    }
    doc.update(overrides)
    return doc


def model_of(doc: dict[str, Any]) -> dict[str, Any]:
    return coverage_page.build_model(doc, bucket=BUCKET, prefix=PREFIX, region="us-east-1")


def test_model_is_an_accounts_by_regions_grid_with_totals_and_reasons() -> None:
    model = model_of(manifest())
    assert model["regions"] == ["ap-east-1", "eu-west-1", "us-east-1"]
    rows = {a["id"]: a for a in model["accounts"]}
    assert list(rows) == ["111111111111", "222222222222", "333333333333"]
    payer = rows["111111111111"]
    assert (payer["name"], payer["instances"], payer["status"], payer["reason"]) == ("Payer", 3, "OK", "")
    assert {r: c["status"] for r, c in payer["cells"].items()} == {
        "ap-east-1": "REGION_DISABLED",
        "eu-west-1": "OK",
        "us-east-1": "OK",
    }
    assert payer["cells"]["eu-west-1"]["title"] == "111111111111 (Payer) · eu-west-1: OK, 2 instances"
    dev = rows["222222222222"]
    assert dev["status"] == "REGION_DENIED"
    assert dev["reason"] == "us-east-1: REGION_DENIED"
    broken = rows["333333333333"]
    assert broken["failure"]["status"] == "ROLE_NOT_ASSUMABLE"
    assert broken["reason"] == "ROLE_NOT_ASSUMABLE · AccessDenied"
    assert "sts:AssumeRole" in broken["reason_title"]
    assert [(f["account"], f["region"], f["status"], f["code"], f["gap"]) for f in model["failures"]] == [
        ("222222222222", "us-east-1", "REGION_DENIED", "UnauthorizedOperation", True),
        ("333333333333", None, "ROLE_NOT_ASSUMABLE", "AccessDenied", True),
    ]
    assert model["totals"] == {
        "rows": 5,
        "instances": 5,
        "accounts_expected": 3,
        "accounts_covered": 1,
        "regions": 3,
        "regions_scanned": 3,
        "regions_disabled": 1,
        "gaps": 2,
    }
    assert model["snapshot"]["complete"] is False
    assert model["csv"]["download"] == "download/inventory"
    assert model["csv"]["console_url"].startswith(
        "https://s3.console.aws.amazon.com/s3/object/example-corp-cmdb?"
    )
    assert model["changes"] is None
    assert {item["status"]: item["count"] for item in model["legend"]}["OK"] == 3


def test_denied_regions_are_not_gaps_when_configured_so() -> None:
    model = model_of(manifest(denied_regions_fail_coverage=False))
    assert [f["gap"] for f in model["failures"]] == [False, True]
    assert "(not a gap)" in coverage_page.render_page(model)


def test_the_page_shows_the_grid_legend_failures_and_csv() -> None:
    html = coverage_page.render_page(model_of(manifest()))
    assert 'id="grid"' in html
    assert html.count('<tr data-account="') == 3 + 2  # grid rows, then failure rows
    for status in (
        "OK",
        "REGION_DISABLED",
        "REGION_DENIED",
        "ROLE_NOT_ASSUMABLE",
        "THROTTLED",
        "ERROR",
        "TASK_FAILED",
    ):
        assert f"</span>{status}" in html  # the legend names every status
    assert f"s3://{BUCKET}/{CSV_KEY}" in html
    assert 'href="download/inventory"' in html
    assert "not authorized to perform: sts:AssumeRole" in html
    assert 'id="changes-none"' in html  # no changes summary in this manifest
    assert "1<small> of 3</small>" in html


HOSTILE_NAME = "<script>alert('name')</script>"
HOSTILE_MESSAGE = '<img src=x onerror="alert(1)">denied'
HOSTILE_ATTRIBUTE = '" onmouseover="alert(2)'


def hostile_manifest() -> dict[str, Any]:
    doc = manifest()
    for entry in doc["coverage"]:
        if entry["account"] == "333333333333":
            entry["account_name"] = HOSTILE_NAME
            entry["error"] = {"code": HOSTILE_ATTRIBUTE, "message": HOSTILE_MESSAGE}
    doc["coverage"].append(
        {"account": "444444444444", "account_name": "x", "region": "<em>eu</em>", "status": "<u>NEW</u>"}
    )
    doc["dag_run_id"] = "</title><script>alert(3)</script>"
    doc["changes"] = {
        "status": "COMPARED",
        "previous_ds": "2026-11-19",
        "added": 1,
        "top": [{"change": "ADDED", "account": "111111111111", "name": "<svg onload=alert(4)>"}],
        "key": f"{PREFIX}/ds=2026-11-20/changes.csv",
    }
    doc["accounts_not_scanned"] = [{"id": "555555555555", "name": "<iframe src=//evil>", "reason": "x"}]
    return doc


def test_hostile_manifest_values_are_escaped_everywhere() -> None:
    html = coverage_page.render_page(model_of(hostile_manifest()))
    tags = set(re.findall(r"<\s*([a-zA-Z]+)", html))
    assert not tags & {"script", "img", "svg", "iframe", "em", "u"}, tags
    assert "&lt;script&gt;alert(&#39;name&#39;)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;denied" in html
    assert "&lt;svg onload=alert(4)&gt;" in html
    assert "&lt;iframe src=//evil&gt;" in html
    assert 'onmouseover="' not in html  # the quote cannot close an attribute
    assert "&#34; onmouseover=&#34;alert(2)" in html


def test_unknown_statuses_and_garbage_values_do_not_break_the_page() -> None:
    doc = manifest(row_count="many", accounts_expected=None, coverage=[*manifest()["coverage"], 7, None])
    doc["coverage"].append(
        {"account": "444444444444", "region": "eu-west-1", "status": "SUSPENDED", "instances": "x"}
    )
    doc["changes"] = "not a mapping"
    model = model_of(doc)
    assert model["totals"]["rows"] == 0
    assert model["totals"]["accounts_expected"] == 4  # counted from the ledger instead
    cell = next(a for a in model["accounts"] if a["id"] == "444444444444")["cells"]["eu-west-1"]
    assert (cell["status"], cell["css"], cell["instances"]) == ("SUSPENDED", "other", 0)
    assert {
        "status": "SUSPENDED",
        "css": "other",
        "meaning": coverage_page.OTHER_INFO[1],
        "count": 1,
    } in model["legend"]
    assert model["changes"] is None
    assert "SUSPENDED" in coverage_page.render_page(model)
    assert coverage_page.render_page(model_of({}))  # an empty manifest still renders


def test_changes_summary_is_shown_when_present() -> None:
    doc = manifest(
        changes={
            "status": "COMPARED",
            "detail": "compared with 2026-11-19",
            "previous_ds": "2026-11-19",
            "previous_run_id": "scheduled__2026-11-19T02:00:00+00:00",
            "added": 1,
            "removed": 2,
            "changed": 3,
            "not_verified": 4,
            "key": f"{PREFIX}/ds=2026-11-20/changes.csv",
            "top": [
                {
                    "change": "CHANGED",
                    "account": "111111111111",
                    "region": "eu-west-1",
                    "instance_id": "i-1",
                    "name": "web",
                    "field": "State",
                    "old_value": "running",
                    "new_value": "stopped",
                },
            ],
            "not_verified_groups": [
                {
                    "account": "333333333333",
                    "region": "eu-west-1",
                    "reason": "ROLE_NOT_ASSUMABLE",
                    "instances": 4,
                }
            ],
        }
    )
    model = model_of(doc)
    changes = model["changes"]
    assert (changes["added"], changes["removed"], changes["changed"], changes["not_verified"]) == (1, 2, 3, 4)
    assert changes["download"] == "download/changes"
    html = coverage_page.render_page(model)
    assert '<span class="add">+1</span>' in html
    assert "since 2026-11-19" in html
    assert "<td>State</td>" in html
    assert "running" in html
    assert "stopped" in html
    assert "333333333333 eu-west-1 (4: ROLE_NOT_ASSUMABLE)" in html
    # The minimal shape (counts and top only, no status) is a comparison too.
    minimal = model_of(manifest(changes={"previous_ds": "2026-11-19", "added": 1, "top": []}))
    assert minimal["changes"]["compared"] is True
    nothing = model_of(manifest(changes={"status": "NO_PREVIOUS", "detail": "no snapshot before 2026-11-20"}))
    assert nothing["changes"]["compared"] is False
    assert nothing["changes"]["download"] is None
    assert "no snapshot before 2026-11-20" in coverage_page.render_page(nothing)


@pytest.mark.parametrize(
    "key",
    ["other/prefix/ds=2026-11-20/ec2_inventory.csv", f"{PREFIX}/../secrets.csv", f"{PREFIX}/x.json", ""],
)
def test_downloads_are_offered_only_for_csvs_under_the_prefix(key: str) -> None:
    model = model_of(manifest(csv_key=key, changes={"status": "COMPARED", "key": key}))
    assert model["csv"]["download"] is None
    assert coverage_page.download_key(model, "inventory") is None
    assert coverage_page.download_key(model, "changes") is None
    assert coverage_page.download_key(model_of(manifest()), "inventory") == CSV_KEY
    assert coverage_page.download_key(model_of(manifest()), "../../etc") is None


def test_content_security_policy_allows_the_page_stylesheet_and_nothing_else() -> None:
    html = coverage_page.render_page(model_of(manifest()))
    [css] = re.findall(r"<style>(.*?)</style>", html, flags=re.S)
    digest = base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()
    policy = coverage_page.content_security_policy()
    assert f"style-src 'sha256-{digest}'" in policy
    assert policy.startswith("default-src 'none';")
    assert "frame-ancestors 'self'" in policy
    assert "http" not in css  # no external font, image or import


def test_console_url_follows_the_partition() -> None:
    assert coverage_page.console_url("b", "k/x.csv", "cn-north-1").startswith("https://console.amazonaws.cn/")
    assert coverage_page.console_url("b", "k/x.csv", "us-gov-west-1").startswith(
        "https://console.amazonaws-us-gov.com/"
    )
    assert "prefix=k%2Fx.csv" in coverage_page.console_url("b", "k/x.csv", None)


# ------------------------------------------------------------------------------------------- the app


@pytest.fixture
def app_factory() -> Callable[..., Any]:
    from fastapi import HTTPException
    from fastapi.testclient import TestClient

    from include.cmdb_inventory.ui.coverage_api import create_app

    def factory(
        doc: dict[str, Any] | None = None, *, logged_in: bool = True, error: SourceError | None = None
    ) -> tuple[Any, list[tuple[str, str]]]:
        presigned: list[tuple[str, str]] = []

        def locate() -> Location:
            if error:
                raise error
            return LOCATION

        def authorise() -> None:
            if not logged_in:
                raise HTTPException(401, "Not authenticated")

        def presign(location: Location, key: str, filename: str) -> str:
            presigned.append((key, filename))
            return f"http://127.0.0.1:9/{key}?signed"

        app = create_app(
            locate=locate,
            cache=SnapshotCache(fetch=lambda location: doc if doc is not None else manifest()),
            authorise=authorise,
            presign=presign,
            login=lambda request: f"/auth/login?next={request.url}",
        )
        return TestClient(app, base_url="http://127.0.0.1", follow_redirects=False), presigned

    return factory


def test_app_serves_the_page_and_the_same_data_as_json(app_factory: Callable[..., Any]) -> None:
    client, _ = app_factory()
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == coverage_page.content_security_policy()
    assert page.headers["cache-control"] == "no-store"
    assert 'id="grid"' in page.text
    data = client.get("/coverage.json").json()
    expected = model_of(manifest())
    assert data["accounts"] == json.loads(json.dumps(expected["accounts"]))
    assert data["failures"] == expected["failures"]
    assert data["snapshot"]["manifest_uri"] == f"s3://{BUCKET}/{PREFIX}/latest/manifest.json"
    assert client.post("/").status_code == 405  # read-only


def test_app_download_redirects_to_a_presigned_url(app_factory: Callable[..., Any]) -> None:
    client, presigned = app_factory(manifest(ds='2026-11-20"; x'))
    answer = client.get("/download/inventory")
    assert answer.status_code == 307
    assert answer.headers["location"] == f"http://127.0.0.1:9/{CSV_KEY}?signed"
    assert presigned == [(CSV_KEY, "ec2_inventory-2026-11-20___x.csv")]  # the untrusted date is sanitised
    assert client.get("/download/changes").status_code == 404  # no changes in this manifest
    assert client.get("/download/other").status_code == 404


def test_app_sends_browsers_without_a_session_to_the_login(app_factory: Callable[..., Any]) -> None:
    client, presigned = app_factory(logged_in=False)
    page = client.get("/")
    assert page.status_code == 302
    assert page.headers["location"] == "/auth/login?next=http://127.0.0.1/"
    for path in ("/coverage.json", "/download/inventory"):
        assert client.get(path).status_code == 401
    assert presigned == []
    assert client.get("/icon.svg").status_code == 200  # the nav icon needs no session


def test_app_says_why_there_is_nothing_to_show(app_factory: Callable[..., Any]) -> None:
    client, _ = app_factory(error=SourceError(404, "No snapshot yet", "<b>s3://x/latest/manifest.json</b>"))
    page = client.get("/")
    assert page.status_code == 404
    assert "No snapshot yet" in page.text
    assert "&lt;b&gt;s3://x/latest/manifest.json&lt;/b&gt;" in page.text
    assert client.get("/coverage.json").json() == {
        "error": "No snapshot yet",
        "detail": "<b>s3://x/latest/manifest.json</b>",
    }


# ------------------------------------------------------------------------------------------ the source


def test_cache_keeps_a_manifest_briefly_and_never_keeps_errors() -> None:
    now = [0.0]
    reads: list[Location] = []
    answers: list[Any] = [SourceError(502, "S3", "down"), {"ds": "1"}, {"ds": "2"}]

    def fetch(location: Location) -> dict[str, Any]:
        reads.append(location)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    cache = SnapshotCache(ttl=30, fetch=fetch, clock=lambda: now[0])
    with pytest.raises(SourceError):
        cache.get(LOCATION)
    assert cache.get(LOCATION).manifest == {"ds": "1"}
    now[0] = 29
    assert cache.get(LOCATION).manifest == {"ds": "1"}
    now[0] = 31
    assert cache.get(LOCATION).manifest == {"ds": "2"}
    assert len(reads) == 3


def test_fetch_reads_latest_manifest_from_s3(moto_url: str) -> None:
    import boto3

    s3 = boto3.client(
        "s3", endpoint_url=moto_url, region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b"
    )
    location = Location(bucket="cmdb-ui-unit", prefix="team/inv")
    s3.create_bucket(Bucket="cmdb-ui-unit")
    with pytest.raises(SourceError) as missing:
        fetch_manifest(location, s3)
    assert missing.value.status == 404
    assert "s3://cmdb-ui-unit/team/inv/latest/manifest.json" in missing.value.detail
    s3.put_object(Bucket="cmdb-ui-unit", Key="team/inv/latest/manifest.json", Body=b"{not json")
    with pytest.raises(SourceError) as broken:
        fetch_manifest(location, s3)
    assert broken.value.status == 502
    s3.put_object(Bucket="cmdb-ui-unit", Key="team/inv/latest/manifest.json", Body=json.dumps(manifest()))
    assert fetch_manifest(location, s3)["csv_key"] == CSV_KEY


def test_location_comes_from_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from include.cmdb_inventory.ui.coverage_source import location_from_variable

    monkeypatch.setenv(
        "AIRFLOW_VAR_CMDB_EC2_INVENTORY",
        json.dumps(
            {"accounts": ["111111111111"], "bucket": BUCKET, "prefix": "/team/inv/", "aws_conn_id": "hub"}
        ),
    )
    assert location_from_variable() == Location(bucket=BUCKET, prefix="team/inv", aws_conn_id="hub")
    monkeypatch.setenv("AIRFLOW_VAR_CMDB_EC2_INVENTORY", json.dumps({"accounts": ["111111111111"]}))
    with pytest.raises(SourceError) as invalid:
        location_from_variable()
    assert invalid.value.status == 503
    assert "bucket" in invalid.value.detail


def test_loading_the_plugin_registers_one_page_and_imports_no_web_stack(tmp_path: Any) -> None:
    """Every Airflow process loads plugins: ours must be one plugin, light, with the page and nav entry."""
    code = (
        "import json, sys\n"
        "from airflow import plugins_manager\n"
        "plugins, errors = plugins_manager._get_plugins()\n"
        "ours = [p for p in plugins if 'cmdb_inventory_ui' in str(p.source)]\n"
        "print(json.dumps({'names': [p.name for p in ours], 'errors': errors,\n"
        "  'apps': [{k: v for k, v in a.items() if k != 'app'} for p in ours for a in p.fastapi_apps],\n"
        "  'views': [v for p in ours for v in p.external_views],\n"
        # The app, the store and the S3 hook live in include/ (include.cmdb_inventory.ui, .storage, .aws):
        # none of them, nor FastAPI or botocore, may be imported by loading the plugin.
        "  'heavy': sorted(m for m in sys.modules\n"
        "    if m.split('.')[0] in ('fastapi', 'starlette', 'include', 'botocore', 'boto3'))}))\n"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(sandbox_root() / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PYTHONPATH": str(sandbox_root()),  # as deployed: the project root; Airflow adds the plugins folder
    }
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["names"] == ["cmdb_inventory_coverage"]
    assert found["errors"] == {}
    assert found["apps"] == [{"url_prefix": "/cmdb-coverage", "name": "CMDB EC2 inventory coverage"}]
    [view] = found["views"]
    assert (view["href"], view["url_route"], view["destination"]) == (
        "cmdb-coverage/",
        "cmdb-coverage",
        "nav",
    )
    assert found["heavy"] == []


def sandbox_root() -> Any:
    from devtools.sandbox import ROOT

    return ROOT


# ------------------------------------------------------------- the download, in the hardened setup
#
# The hardened setup: ``expected_bucket_owner`` and ``kms_key_id`` set, the snapshot SSE-KMS encrypted. moto
# checks no signature of a presigned URL, no ExpectedBucketOwner and no signature version, so the gateway in
# front of it does what S3 does: it verifies a SigV4 query signature over what the request carries
# (a header named in X-Amz-SignedHeaders that the browser did not send fails it), refuses SigV2 for an
# SSE-KMS object, and answers 403 when x-amz-expected-bucket-owner names another account.

HARDENED_BUCKET = "cmdb-ui-hardened"
HARDENED_CSV = b"Account,Region,InstanceId,Name\r\n111111111111,eu-west-1,i-0abc,web\r\n"
KMS_REQUIRES_SIGV4 = (
    "Requests specifying Server Side Encryption with AWS KMS managed keys require AWS Signature Version 4."
)


def _sigv4_query_verdict(req: Any, secrets: dict[str, str], now: float) -> str | None:
    """S3's check of a SigV4 presigned request as it arrived: None if S3 accepts it, else the error code."""
    import calendar
    import hmac
    import time as _time
    from urllib.parse import quote, unquote

    query = {k: v[0] for k, v in req.query.items()}
    path, _, raw_query = req.path.partition("?")
    credential = query.get("X-Amz-Credential", "")
    access_key, _, scope = credential.partition("/")
    if access_key not in secrets:
        return "InvalidAccessKeyId"
    signed = query.get("X-Amz-SignedHeaders", "").split(";")
    if any(req.headers.get(name) is None for name in signed):
        return "SignatureDoesNotMatch"  # a signed header the request does not carry
    pairs = []
    for item in raw_query.split("&"):
        name, _, value = item.partition("=")
        if unquote(name) != "X-Amz-Signature":
            pairs.append((quote(unquote(name), safe="-_.~"), quote(unquote(value), safe="-_.~")))
    canonical = "\n".join(
        [
            req.method,
            path,
            "&".join(f"{n}={v}" for n, v in sorted(pairs)),
            "".join(f"{name}:{' '.join(str(req.headers.get(name)).split())}\n" for name in signed),
            ";".join(signed),
            "UNSIGNED-PAYLOAD",
        ]
    )
    string_to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", query["X-Amz-Date"], scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = ("AWS4" + secrets[access_key]).encode()
    for part in scope.split("/"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, query.get("X-Amz-Signature", "")):
        return "SignatureDoesNotMatch"
    signed_at = calendar.timegm(_time.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ"))
    if signed_at + int(query.get("X-Amz-Expires", "0")) < now:
        return "AccessDenied"  # "Request has expired"
    return None


class S3Fidelity:
    """The gateway's S3 rules of this section, and what they saw (every S3 request's headers and query)."""

    def __init__(self, gw: Any, owner: str, kms_objects: set[str], secrets: dict[str, str]) -> None:
        import time as _time

        self.seen: list[dict[str, Any]] = []
        self.verdicts: list[str | None] = []
        self.owner, self.kms_objects, self.secrets = owner, kms_objects, secrets
        gw.add_rule(None, when=self._see)
        gw.fail(403, "AccessDenied", "Access Denied", when=self._foreign_owner)
        gw.fail(400, "InvalidArgument", KMS_REQUIRES_SIGV4, when=self._sigv2_on_kms)
        gw.fail(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match",
            when=self._bad_sigv4,
        )
        self._now = _time.time

    def _see(self, req: Any) -> bool:
        self.seen.append(
            {
                "action": req.action,
                "method": req.method,
                "path": req.path,
                "headers": {k.lower(): v for k, v in req.headers.items()},
                "query": {k: v[0] for k, v in req.query.items()},
            }
        )
        return False

    def _foreign_owner(self, req: Any) -> bool:
        expected = req.headers.get("x-amz-expected-bucket-owner")
        return expected is not None and expected != self.owner

    def _sigv2_on_kms(self, req: Any) -> bool:
        key = req.path.partition("?")[0].split("/", 2)[-1]
        from urllib.parse import unquote

        return "AWSAccessKeyId" in req.query and unquote(key) in self.kms_objects

    def _bad_sigv4(self, req: Any) -> bool:
        if "X-Amz-Signature" not in req.query:
            return False
        verdict = _sigv4_query_verdict(req, self.secrets, self._now())
        self.verdicts.append(verdict)
        return verdict is not None


@pytest.fixture
def hardened(
    moto_url: str, monkeypatch: pytest.MonkeyPatch, hub_env_factory: Callable[..., dict[str, str]]
) -> Any:
    """An SSE-KMS snapshot, the Variable with owner and KMS key, the hub connection through the gateway."""
    import boto3

    from devtools.gateway import AwsGateway
    from include.cmdb_inventory.config import VARIABLE_KEY
    from tests.conftest import HUB_LOGIN, HUB_PASSWORD

    raw = {"endpoint_url": moto_url, "region_name": "us-east-1", "aws_access_key_id": "a"}
    s3 = boto3.client("s3", aws_secret_access_key="b", **raw)
    kms_key = boto3.client("kms", aws_secret_access_key="b", **raw).create_key()["KeyMetadata"]["Arn"]
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
        s3.create_bucket(Bucket=HARDENED_BUCKET)
    encryption = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key}
    s3.put_object(Bucket=HARDENED_BUCKET, Key=CSV_KEY, Body=HARDENED_CSV, **encryption)
    doc = json.dumps(manifest(csv_uri=f"s3://{HARDENED_BUCKET}/{CSV_KEY}")).encode()
    s3.put_object(Bucket=HARDENED_BUCKET, Key=f"{PREFIX}/latest/manifest.json", Body=doc, **encryption)
    with AwsGateway(upstream=moto_url) as gw:
        owner = gw.default_account  # moto's account of the hub's static key: the bucket's owner
        for name, value in hub_env_factory(gw.url).items():
            monkeypatch.setenv(name, value)
        variable = {
            "accounts": ["111111111111"],
            "bucket": HARDENED_BUCKET,
            "prefix": PREFIX,
            "hub_region": "us-east-1",
            "expected_bucket_owner": owner,
            "kms_key_id": kms_key,
        }
        monkeypatch.setenv(f"AIRFLOW_VAR_{VARIABLE_KEY.upper()}", json.dumps(variable))
        fidelity = S3Fidelity(
            gw, owner, {CSV_KEY, f"{PREFIX}/latest/manifest.json"}, {HUB_LOGIN: HUB_PASSWORD}
        )
        yield gw, fidelity, owner


def test_download_in_the_hardened_setup_is_a_sigv4_url_a_browser_can_use(hardened: Any) -> None:
    import urllib.request
    from urllib.parse import parse_qs, urlsplit

    from fastapi.testclient import TestClient

    from include.cmdb_inventory.ui.coverage_api import create_app

    gw, fidelity, owner = hardened
    app = create_app(authorise=lambda: None, cache=SnapshotCache())  # the real Variable, S3 and presigner
    answer = TestClient(app, base_url="http://127.0.0.1", follow_redirects=False).get("/download/inventory")
    assert answer.status_code == 307, answer.text
    url = answer.headers["location"]
    server_reads = len(fidelity.seen)

    # What a browser does with it: a plain GET, no extra header.
    with urllib.request.urlopen(url, timeout=30) as got:  # noqa: S310 - the loopback gateway
        assert got.read() == HARDENED_CSV
        assert got.headers["Content-Disposition"] == 'attachment; filename="ec2_inventory-2026-11-20.csv"'
    assert fidelity.verdicts == [None]  # S3's signature check passed over what the browser sent

    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-SignedHeaders"] == ["host"]
    assert int(query["X-Amz-Expires"][0]) <= 300
    assert not [name for name in query if "owner" in name.lower()]

    # The owner check stays on the server's own reads: the manifest's GET, the look for a held snapshot
    # (the ds= folders, then the newest date's manifest: absent here) and the object's HEAD name it.
    reads = fidelity.seen[:server_reads]
    assert [r["action"] for r in reads] == ["GetObject", "ListObjectsV2", "GetObject", "HeadObject"]
    assert all(r["headers"]["x-amz-expected-bucket-owner"] == owner for r in reads)
    assert all(r["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 ") for r in reads)
    [browser] = fidelity.seen[server_reads:]
    assert "x-amz-expected-bucket-owner" not in browser["headers"]
    assert gw.count(faulted=True) == 0


def test_no_download_url_for_an_object_of_a_bucket_another_account_owns(hardened: Any) -> None:
    from include.cmdb_inventory.ui.coverage_source import presigned_url

    gw, fidelity, _ = hardened
    squatted = Location(
        bucket=HARDENED_BUCKET, prefix=PREFIX, region_name="us-east-1", expected_bucket_owner="999999999999"
    )
    with pytest.raises(SourceError) as refused:
        presigned_url(squatted, CSV_KEY, "x.csv")
    assert refused.value.status == 502
    assert "AccessDenied" in refused.value.detail
    assert "owned by 999999999999" in refused.value.detail
    [head] = gw.calls(action="HeadObject")
    assert (head.status, head.fault) == (403, "AccessDenied")
    assert fidelity.seen[-1]["headers"]["x-amz-expected-bucket-owner"] == "999999999999"


# ------------------------------------------------- organisation context and the mass-removal guard (issue 9)


def _expected(ou_paths: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"id": account, "name": "", "source": "organizations", "ou_path": path, "tags": {}}
        for account, path in ou_paths.items()
    ]


def test_each_account_shows_its_ou_path_from_the_expected_accounts() -> None:
    long_path = "Root/" + "/".join(["Deep"] * 200)
    doc = manifest(
        expected_accounts=_expected(
            {
                "111111111111": "Root",
                "222222222222": "Root/Workloads/<script>alert('ou')</script>",
                "333333333333": long_path,
                "444444444444": "Root/Not/In/The/Ledger",
            }
        )
    )
    model = model_of(doc)
    paths = {a["id"]: a["ou_path"] for a in model["accounts"]}
    assert paths["111111111111"] == "Root"
    assert paths["222222222222"] == "Root/Workloads/<script>alert('ou')</script>"  # plain text in the model
    assert len(paths["333333333333"]) == coverage_page.MAX_OU_PATH
    assert paths["333333333333"].endswith("…")
    assert "444444444444" not in paths  # rows come from the ledger, as before
    html = coverage_page.render_page(model)
    assert '<span class="ou" title="OU path in AWS Organizations: Root">Root</span>' in html
    assert "Root/Workloads/&lt;script&gt;alert(&#39;ou&#39;)&lt;/script&gt;" in html
    assert "<script>" not in html
    # A manifest without organisation context (a static list, an older manifest) shows no OU line.
    assert 'class="ou"' not in coverage_page.render_page(model_of(manifest()))
    assert 'class="ou"' not in coverage_page.render_page(model_of(manifest(expected_accounts=[{"id": 7}])))


def guard(state: str, **overrides: Any) -> dict[str, Any]:
    doc = {
        "state": state,
        "removed": 40,
        "previous_rows": 100,
        "previous_ds": "2026-11-19",
        "fraction": 0.4,
        "max_removed_fraction": 0.1,
        "reason": "40 of the 100 instances of the snapshot of 2026-11-19 (40.0%) would be REMOVED",
    }
    doc.update(overrides)
    return doc


def test_the_snapshot_guard_state_is_shown_and_nothing_for_older_manifests() -> None:
    older = coverage_page.render_page(model_of(manifest()))
    assert model_of(manifest())["guard"] is None
    assert 'id="removal-guard"' not in older
    assert "removal guard" not in older

    clear = model_of(manifest(removal_guard=guard("CLEAR", removed=1, fraction=0.01)))
    assert clear["guard"]["state"] == "CLEAR"
    assert clear["guard"]["fraction"] == "1.0%"
    assert clear["guard"]["max_removed_fraction"] == "10.0%"
    html = coverage_page.render_page(clear)
    assert 'id="removal-guard" data-state="CLEAR"' in html
    assert '<span class="st ok">CLEAR</span>' in html
    assert "1 removed (1.0%), limit 10.0%" in html
    assert 'id="removal-guard-held"' not in html
    first = guard("CLEAR", removed=0, previous_rows=0, previous_ds=None, fraction=None)
    assert "mass-removal guard · nothing to compare with" in " ".join(
        coverage_page.render_page(model_of(manifest(removal_guard=first))).split()
    )

    approved = model_of(
        manifest(removal_guard=guard("APPROVED", decided_by="ops-lead", decided_at="2026-11-20T07:00:00Z"))
    )
    html = coverage_page.render_page(approved)
    assert "approved by ops-lead at 2026-11-20T07:00:00Z" in html


def test_a_held_snapshot_stands_out_and_says_latest_still_shows_the_previous_one() -> None:
    held = {
        "ds": "2026-11-21",
        "dag_run_id": "scheduled__2026-11-21T02:00:00+00:00",
        "manifest_uri": f"s3://{BUCKET}/{PREFIX}/ds=2026-11-21/manifest.json",
        "removal_guard": guard("HELD"),
    }
    model = coverage_page.build_model(
        manifest(removal_guard=guard("CLEAR")), bucket=BUCKET, prefix=PREFIX, held=held
    )
    assert model["held"]["guard"]["held"] is True
    html = coverage_page.render_page(model)
    banner = html[html.index('id="removal-guard-held"') : html.index('id="totals"')]
    assert 'class="guard held"' in html
    assert 'role="alert"' in banner
    assert "HELD: the snapshot of 2026-11-21 waits for approval in the Airflow UI" in banner
    assert "<b>40</b> of the 100 instances of the snapshot of 2026-11-19 (40.0%)" in banner
    assert "more than max_removed_fraction 10.0%" in banner
    assert "latest/ (and this page) still shows the previous snapshot, 2026-11-20" in banner
    assert "scheduled__2026-11-21T02:00:00+00:00" in banner
    # Rejected: said plainly, without the alert; a lookup that failed says so instead of hiding it.
    rejected = {**held, "removal_guard": guard("REJECTED", decided_by="ops-lead")}
    html = coverage_page.render_page(
        coverage_page.build_model(manifest(), bucket=BUCKET, prefix=PREFIX, held=rejected)
    )
    assert "<b>REJECTED</b>: the snapshot of 2026-11-21" in html
    assert "decided by ops-lead" in html
    assert 'role="alert"' not in html
    failed = coverage_page.build_model(
        manifest(), bucket=BUCKET, prefix=PREFIX, held={"error": "AccessDenied"}
    )
    assert 'id="held-unknown"' in coverage_page.render_page(failed)
    # A lookup that found nothing to show (or a snapshot that is not held) adds nothing.
    for nothing in (None, {**held, "removal_guard": guard("CLEAR")}, {"ds": "x"}, "garbage"):
        model = coverage_page.build_model(manifest(), bucket=BUCKET, prefix=PREFIX, held=nothing)  # type: ignore[arg-type]
        assert model["held"] is None
        assert 'id="removal-guard-held"' not in coverage_page.render_page(model)


def test_hostile_and_garbage_guard_values_are_escaped_and_bounded() -> None:
    hostile = guard(
        '<b onmouseover="x">HELD' + "x" * 40,
        removed="many",
        fraction=float("nan"),
        max_removed_fraction=True,
        reason="<script>alert('reason')</script>" + "r" * 5000,
        decided_by='" onmouseover="alert(3)',
    )
    model = model_of(manifest(removal_guard=hostile))
    g = model["guard"]
    assert (g["css"], g["removed"], g["fraction"], g["max_removed_fraction"]) == ("other", 0, "", "")
    assert len(g["state"]) == 32
    assert len(g["reason"]) == coverage_page.MAX_TEXT
    held = {
        "ds": "<i>d</i>",
        "dag_run_id": "<u>run</u>",
        "removal_guard": guard("HELD", reason="<svg onload=1>"),
    }
    html = coverage_page.render_page(
        coverage_page.build_model(manifest(removal_guard=hostile), bucket=BUCKET, prefix=PREFIX, held=held)
    )
    tags = set(re.findall(r"<\s*([a-zA-Z]+)", html))
    assert not tags & {"script", "svg", "i", "u"}, tags
    assert "&lt;script&gt;alert(&#39;reason&#39;)&lt;/script&gt;" in html
    assert "&lt;svg onload=1&gt;" in html
    assert 'onmouseover="' not in html
    assert coverage_page.render_page(model_of(manifest(removal_guard="not a mapping")))


def test_the_app_shows_what_the_cache_found_held(app_factory: Callable[..., Any]) -> None:
    from fastapi.testclient import TestClient

    from include.cmdb_inventory.ui.coverage_api import create_app

    looked: list[str] = []

    def held(location: Location, latest: dict[str, Any]) -> dict[str, Any]:
        looked.append(str(latest.get("ds")))
        return {"ds": "2026-11-21", "dag_run_id": "r", "removal_guard": guard("HELD")}

    app = create_app(
        locate=lambda: LOCATION,
        cache=SnapshotCache(fetch=lambda location: manifest(), held=held),
        authorise=lambda: None,
    )
    client = TestClient(app, base_url="http://127.0.0.1")
    assert 'id="removal-guard-held"' in client.get("/").text
    assert client.get("/coverage.json").json()["held"]["guard"]["state"] == "HELD"
    assert looked == ["2026-11-20"]  # once: the lookup is cached with the manifest
    # A replaced fetch (the tests' own manifests) never looks in S3 for a held snapshot.
    assert SnapshotCache(fetch=lambda location: manifest()).get(LOCATION).held is None


def test_fetch_held_finds_the_newest_dated_snapshot_the_guard_holds(moto_url: str) -> None:
    import boto3

    from include.cmdb_inventory.ui.coverage_source import fetch_held

    s3 = boto3.client(
        "s3", endpoint_url=moto_url, region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b"
    )
    bucket = "cmdb-ui-held"
    location = Location(bucket=bucket, prefix="team/inv")
    s3.create_bucket(Bucket=bucket)

    def put(ds: str, state: str | None) -> None:
        doc = manifest(ds=ds, dag_run_id=f"run-{ds}")
        if state:
            doc["removal_guard"] = guard(state)
        s3.put_object(Bucket=bucket, Key=f"team/inv/ds={ds}/manifest.json", Body=json.dumps(doc))

    latest = manifest(ds="2026-11-20")
    assert fetch_held(location, latest, s3) is None  # no dated snapshot at all
    put("2026-11-19", "HELD")  # older than latest/: decided long ago or replaced, not shown
    put("2026-11-20", "CLEAR")
    assert fetch_held(location, latest, s3) is None
    put("2026-11-20", "HELD")  # a rerun of latest's own date, held: latest/ keeps the earlier one
    assert fetch_held(location, latest, s3) == {
        "ds": "2026-11-20",
        "dag_run_id": "run-2026-11-20",
        "manifest_uri": f"s3://{bucket}/team/inv/ds=2026-11-20/manifest.json",
        "removal_guard": guard("HELD"),
    }
    put("2026-11-22", "REJECTED")
    s3.put_object(Bucket=bucket, Key="team/inv/ds=not-a-date/manifest.json", Body=b"{}")
    found = fetch_held(location, latest, s3)
    assert found is not None
    assert (found["ds"], found["removal_guard"]["state"]) == ("2026-11-22", "REJECTED")
    # A newer date holding only an attempt in progress (objects, no manifest yet) hides nothing.
    s3.put_object(Bucket=bucket, Key="team/inv/ds=2026-11-23/run=r/try1-x/ec2_inventory.csv", Body=b"")
    found = fetch_held(location, latest, s3)
    assert found is not None
    assert found["ds"] == "2026-11-22"
    put("2026-11-23", None)  # from before the guard
    assert fetch_held(location, latest, s3) is None
    s3.put_object(Bucket=bucket, Key="team/inv/ds=2026-11-24/manifest.json", Body=b"{broken")
    assert fetch_held(location, latest, s3) == {
        "error": "could not look for a snapshot after 2026-11-20: JSONDecodeError"
    }
