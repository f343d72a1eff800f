"""The ServiceNow IRE payload: its shape, its streaming, its batches, and the merge writing it (moto S3)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import tracemalloc
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest

from include.cmdb_inventory import changes, contract, servicenow
from include.cmdb_inventory.config import Account, parse_settings
from include.cmdb_inventory.contract import IRE_PAYLOAD_NAME, MANIFEST_NAME
from include.cmdb_inventory.records import Record, instance_record, sort_key
from include.cmdb_inventory.run import RunInfo
from include.cmdb_inventory.servicenow import (
    ACCOUNT_CLASS,
    DATACENTER_CLASS,
    HOSTED_ON,
    INSTANCE_CLASS,
    PayloadError,
)
from include.cmdb_inventory.storage import SnapshotStore
from tests.unit.conftest import stage_failed, stage_scanned

BUCKET = "cmdb-servicenow-bucket"
PREFIX = "cmdb/ec2-inventory"
REGION = "us-east-1"
X = Account("111111111111", "payments")
Y = Account("333333333333", "testing")
ACCOUNTS = (X, Y)

Servers = Mapping[str, Sequence[tuple[str, str, str, str]]]  # region -> (id, name, state, private ip)


@pytest.fixture
def s3_bucket() -> str:
    return BUCKET


def records(
    account: Account, region: str, servers: Sequence[tuple[str, str, str, str]], ds: str
) -> list[Record]:
    return [
        instance_record(
            account,
            region,
            {
                "InstanceId": instance,
                "InstanceType": "t3.micro",
                "State": {"Name": state},
                "PrivateIpAddress": ip,
                "Tags": [{"Key": "Name", "Value": name}] if name else [],
            },
            f"{ds}T02:00:00Z",
        )[0]
        for instance, name, state, ip in servers
    ]


def snapshot(
    store: SnapshotStore,
    ds: str,
    world: Mapping[str, Servers | str],
    *,
    overwrite: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """One merge of ``ds`` over ``world`` (an account's servers, or the status of a failed account)."""
    from include.cmdb_inventory.inventory import merge_inventory

    run = RunInfo("cmdb_ec2_inventory", f"manual__{ds}T02:00:00+00:00", ds, f"{ds}T02:00:00+00:00")
    for account in ACCOUNTS:
        servers = world[account.id]
        if isinstance(servers, str):
            error = {"code": "AccessDenied", "message": "not authorized to perform sts:AssumeRole"}
            stage_failed(store, run, account, servers, error)
            continue
        rows = sorted(
            (r for region, s in servers.items() for r in records(account, region, s, ds)), key=sort_key
        )
        regions = [
            {"region": r, "status": contract.OK, "instances": len(s)} for r, s in sorted(servers.items())
        ]
        stage_scanned(store, run, account, rows, regions, note="")
    settings = parse_settings(
        {
            "accounts": [{"id": a.id, "name": a.name} for a in ACCOUNTS],
            "bucket": BUCKET,
            "prefix": PREFIX,
            **extra,
        }
    )
    return merge_inventory(settings, run, store, [a.to_dict() for a in ACCOUNTS], overwrite=overwrite)


def payload_at(store: SnapshotStore, key: str) -> dict[str, Any]:
    return servicenow.load(store.get_bytes(key))


def exists(store: SnapshotStore, key: str) -> bool:
    return store.head_metadata(key) is not None


DAY1: dict[str, Servers | str] = {
    X.id: {
        "eu-west-1": [("i-x0001", "ledger", "running", "10.0.0.1")],
        REGION: [("i-x0002", "web", "running", "10.0.1.2")],
    },
    Y.id: {REGION: [("i-y0001", "=cmd", "running", "10.1.0.1"), ("i-y0002", "", "stopped", "")]},
}
# Day 2: X's eu-west-1 instance is gone (REMOVED); Y's role fails, so Y's instances are NOT_VERIFIED.
DAY2: dict[str, Servers | str] = {
    X.id: {
        "eu-west-1": [],
        REGION: [("i-x0002", "web", "stopped", "10.0.1.2"), ("i-x0003", "new-api", "pending", "10.0.1.3")],
    },
    Y.id: contract.ROLE_NOT_ASSUMABLE,
}


def check_relations(payload: Mapping[str, Any]) -> None:
    """Each relation names two items by index; instances hosted on datacenters, datacenters on accounts."""
    items = payload["items"]
    hosts = {}
    for relation in payload["relations"]:
        assert relation["type"] == HOSTED_ON
        assert 0 <= relation["parent"] < len(items)
        assert 0 <= relation["child"] < len(items)
        hosts[relation["parent"]] = relation["child"]
    for index, item in enumerate(items):
        if item["className"] == INSTANCE_CLASS:
            assert items[hosts[index]]["className"] == DATACENTER_CLASS
        elif item["className"] == DATACENTER_CLASS:
            assert items[hosts[index]]["className"] == ACCOUNT_CLASS
        else:
            assert item["className"] == ACCOUNT_CLASS
            assert index not in hosts
    assert len(payload["relations"]) == len(hosts)  # one host each, no duplicate relation


def test_the_merge_writes_the_payload_retiring_only_removed_instances(store: SnapshotStore) -> None:
    day1 = snapshot(store, "2026-11-19", DAY1, servicenow=True)
    first = payload_at(store, f"{PREFIX}/ds=2026-11-19/{IRE_PAYLOAD_NAME}")
    check_relations(first)
    assert [(i["className"], i["values"]["object_id"]) for i in first["items"]] == [
        (ACCOUNT_CLASS, X.id),
        (DATACENTER_CLASS, "eu-west-1"),
        (INSTANCE_CLASS, "i-x0001"),
        (DATACENTER_CLASS, REGION),
        (INSTANCE_CLASS, "i-x0002"),
        (ACCOUNT_CLASS, Y.id),
        (DATACENTER_CLASS, REGION),
        (INSTANCE_CLASS, "i-y0001"),
        (INSTANCE_CLASS, "i-y0002"),
    ]
    assert first["items"][0]["values"] == {
        "object_id": X.id,
        "account_id": X.id,
        "name": "payments",
        "datacenter_type": DATACENTER_CLASS,
    }
    assert first["items"][1]["values"] == {
        "object_id": "eu-west-1",
        "name": "eu-west-1",
        "region": "eu-west-1",
    }
    assert first["items"][2]["values"] == {
        "object_id": "i-x0001",
        "vm_inst_id": "i-x0001",
        "name": "ledger",
        "state": "on",
        "ip_address": "10.0.0.1",
        "install_status": servicenow.INSTALLED,
    }
    # The CSV's cell as it is (formula-neutralised), and an instance without a Name tag named by its id.
    assert first["items"][7]["values"]["name"] == "'=cmd"
    assert first["items"][8]["values"] | {} == {
        "object_id": "i-y0002",
        "vm_inst_id": "i-y0002",
        "name": "i-y0002",
        "state": "off",
        "ip_address": "",
        "install_status": servicenow.INSTALLED,
    }
    assert day1["written"] is True
    day1_payload = store.get_bytes(f"{PREFIX}/latest/{IRE_PAYLOAD_NAME}")
    assert servicenow.load(day1_payload) == first

    snapshot(store, "2026-11-20", DAY2, servicenow=True)
    manifest = store.get_json(f"{PREFIX}/ds=2026-11-20/{MANIFEST_NAME}")
    assert manifest is not None
    entry = manifest["servicenow"]
    assert entry["key"].startswith(f"{PREFIX}/ds=2026-11-20/run=")  # the commit's own object
    payload = payload_at(store, entry["key"])
    check_relations(payload)
    got = [
        (i["className"], i["values"]["object_id"], i["values"].get("install_status"))
        for i in payload["items"]
    ]
    assert got == [
        (ACCOUNT_CLASS, X.id, None),
        (DATACENTER_CLASS, "eu-west-1", None),
        (INSTANCE_CLASS, "i-x0001", servicenow.RETIRED),  # REMOVED: its region was scanned OK both days
        (DATACENTER_CLASS, REGION, None),
        (INSTANCE_CLASS, "i-x0002", servicenow.INSTALLED),
        (INSTANCE_CLASS, "i-x0003", servicenow.INSTALLED),
    ]
    # Y's instances are NOT_VERIFIED in changes.csv (its role failed): never retired, not even listed.
    assert manifest["changes"]["not_verified"] == 2
    assert payload["items"][2]["values"] == {
        "object_id": "i-x0001",
        "vm_inst_id": "i-x0001",
        "name": "ledger",
        "install_status": servicenow.RETIRED,
    }
    assert [payload["items"][i]["values"]["state"] for i in (4, 5)] == ["off", "starting"]
    assert payload["relations"] == [
        {"parent": 1, "child": 0, "type": HOSTED_ON},
        {"parent": 2, "child": 1, "type": HOSTED_ON},
        {"parent": 3, "child": 0, "type": HOSTED_ON},
        {"parent": 4, "child": 3, "type": HOSTED_ON},
        {"parent": 5, "child": 3, "type": HOSTED_ON},
    ]
    raw = store.get_bytes(entry["key"])
    assert {
        k: entry[k] for k in ("items", "relations", "accounts", "datacenters", "instances", "retired")
    } == {
        "items": 6,
        "relations": 5,
        "accounts": 1,
        "datacenters": 2,
        "instances": 3,
        "retired": 1,
    }
    assert (entry["bytes"], entry["schema_version"]) == (len(raw), servicenow.IRE_PAYLOAD_SCHEMA_VERSION)
    assert entry["sha256"] == __import__("hashlib").sha256(raw).hexdigest()
    # The fixed-name copy in ds= is the commit's payload; latest/ still has day 1's, since the removal guard
    # holds latest/ for day 2 (a quarter of day 1's instances removed), as it holds the CSV there.
    assert store.get_bytes(f"{PREFIX}/ds=2026-11-20/{IRE_PAYLOAD_NAME}") == raw
    assert store.get_bytes(f"{PREFIX}/latest/{IRE_PAYLOAD_NAME}") == day1_payload
    names = [p["name"] for p in manifest["published"]]
    assert IRE_PAYLOAD_NAME in names
    assert names[-1] == contract.CSV_NAME  # the CSV stays last


def test_without_servicenow_no_payload_and_an_earlier_one_is_removed(store: SnapshotStore) -> None:
    snapshot(store, "2026-11-19", DAY1)
    manifest = store.get_json(f"{PREFIX}/ds=2026-11-19/{MANIFEST_NAME}")
    assert manifest is not None
    assert manifest["servicenow"] is None
    assert not store.list_keys(f"{PREFIX}/ds=2026-11-19/")[0:0]  # the listing works
    assert not [k for k in store.list_keys(PREFIX) if k.endswith(IRE_PAYLOAD_NAME)]

    snapshot(store, "2026-11-20", DAY1, servicenow=True)
    assert exists(store, f"{PREFIX}/ds=2026-11-20/{IRE_PAYLOAD_NAME}")
    assert exists(store, f"{PREFIX}/latest/{IRE_PAYLOAD_NAME}")
    # The date rerun with the export turned off: its payload (and latest/'s) must not survive.
    snapshot(store, "2026-11-20", DAY1, overwrite=True)
    assert not exists(store, f"{PREFIX}/ds=2026-11-20/{IRE_PAYLOAD_NAME}")
    assert not exists(store, f"{PREFIX}/latest/{IRE_PAYLOAD_NAME}")
    rerun = store.get_json(f"{PREFIX}/ds=2026-11-20/{MANIFEST_NAME}")
    assert rerun is not None
    assert rerun["servicenow"] is None
    assert {"name": IRE_PAYLOAD_NAME, "key": None, "bytes": None} in rerun["published"]


def changes_csv(rows: Sequence[tuple[str, str, str, str, str]]) -> io.BytesIO:
    """A changes.csv of (Change, Account, Region, InstanceId, Name) rows, as changes.write_rows writes it."""
    out = io.BytesIO()
    records = [
        {"Change": c, "Account": a, "Region": r, "InstanceId": i, "Name": n, "Reason": "x"}
        for c, a, r, i, n in rows
    ]
    changes.write_rows(records, out)
    return out


def test_not_verified_and_other_changes_are_never_retired() -> None:
    source = changes_csv(
        [
            ("REMOVED", X.id, REGION, "i-1", "gone"),
            ("NOT_VERIFIED", X.id, REGION, "i-2", "unknown"),
            ("ADDED", X.id, REGION, "i-3", ""),
            ("CHANGED", X.id, REGION, "i-4", ""),
            ("NOT_VERIFIED", Y.id, REGION, "i-5", ""),
        ]
    )
    assert [r["InstanceId"] for r in servicenow.removed_rows(source)] == ["i-1"]
    stream = list(servicenow.elements([], servicenow.removed_rows(source)))
    retired = [
        e["values"]["object_id"] for kind, e in stream if kind == "item" and e["className"] == INSTANCE_CLASS
    ]
    assert retired == ["i-1"]
    with pytest.raises(PayloadError, match=r"changes\.csv has no column 'Change'"):
        list(servicenow.removed_rows(io.BytesIO(b"Account,Region,InstanceId\r\n")))


def test_the_names_shared_with_changes_agree() -> None:
    assert servicenow.REMOVED == changes.REMOVED
    assert servicenow.KEY_COLUMNS == changes.KEY_COLUMNS
    assert set(servicenow.CSV_COLUMNS) <= set(contract.COLUMNS)


def row(account: str, region: str, instance: str, **cells: str) -> dict[str, str]:
    return {
        "Account": account,
        "Region": region,
        "InstanceId": instance,
        "Name": "",
        "State": "running",
        **cells,
    }


def test_unsorted_input_is_refused_naming_the_rows() -> None:
    rows = [row(X.id, REGION, "i-2"), row(X.id, REGION, "i-1")]
    with pytest.raises(
        PayloadError, match=f"the CSV is not sorted .*{X.id}/{REGION}/i-1 follows {X.id}/{REGION}/i-2"
    ):
        list(servicenow.elements(rows, []))
    listed = [row(X.id, REGION, "i-1")]
    gone = [row(X.id, REGION, "i-1"), row(X.id, REGION, "i-0")]  # a listed instance is not retired
    with pytest.raises(PayloadError, match=r"changes\.csv is not sorted"):
        list(servicenow.elements(listed, gone))
    assert [
        e["values"].get("install_status") for k, e in servicenow.elements(listed, gone[:1]) if k == "item"
    ][-1] == servicenow.INSTALLED


def test_every_ec2_state_maps_to_a_vm_instance_state() -> None:
    states = {
        s: servicenow.instance_values(row(X.id, REGION, "i-1", State=s))["state"] for s in servicenow.STATES
    }
    assert states == {
        "pending": "starting",
        "running": "on",
        "stopping": "stopping",
        "stopped": "off",
        "shutting-down": "terminating",
        "terminated": "terminated",
    }
    assert servicenow.instance_values(row(X.id, REGION, "i-1", State="hibernated"))["state"] == "unknown"


def many_rows(count: int, consumed: list[int]) -> Iterator[dict[str, str]]:
    """``count`` sorted rows over 3 accounts x 4 regions, counting in ``consumed`` how many were taken."""
    per_group = count // 12
    for a in range(3):
        for r in range(4):
            for i in range(per_group):
                consumed[0] += 1
                yield row(
                    f"{a:012d}", f"region-{r}", f"i-{i:08d}", Name=f"server-{i}", PrivateIpAddress="10.0.0.1"
                )


class Sink(io.RawIOBase):
    """A binary file that keeps nothing: the bytes written, and how many rows were consumed at each write."""

    def __init__(self, consumed: list[int], record: bool = True) -> None:
        super().__init__()
        self.size = 0
        self.consumed = consumed
        self.record = record
        self.at: list[tuple[int, int]] = []  # (rows consumed, bytes written so far)

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.size += len(data)
        if self.record:
            self.at.append((self.consumed[0], self.size))
        return len(data)


def test_the_payload_is_written_while_the_rows_stream_past() -> None:
    consumed = [0]
    sink = Sink(consumed)
    counts = servicenow.write_json(servicenow.elements(many_rows(12_000, consumed), []), sink)
    assert counts["instances"] == 12_000
    # Items reach the file as the rows come: half-way through the input, about half the items are out.
    halfway = [written for rows, written in sink.at if rows == 6_000]
    assert halfway
    assert halfway[-1] > sink.size * 0.3


def peak_bytes(count: int) -> int:
    consumed = [0]
    tracemalloc.start()
    try:
        servicenow.write_json(
            servicenow.elements(many_rows(count, consumed), []), Sink(consumed, record=False)
        )
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_rows() -> None:
    small, large = peak_bytes(2_400), peak_bytes(36_000)
    # The relations are spooled (in memory up to a bounded size, then on disk): fifteen times the rows may
    # not cost more than a few MiB more; a list of every item would cost tens of MiB here.
    assert large < small + 4 * 1024 * 1024, (small, large)


def tiny_payload() -> dict[str, Any]:
    rows = [
        row(X.id, "eu-west-1", "i-1"),
        row(X.id, REGION, "i-2"),
        row(X.id, REGION, "i-3"),
        row(Y.id, REGION, "i-4"),
        row(Y.id, REGION, "i-5"),
    ]
    out = io.BytesIO()
    servicenow.write_json(servicenow.elements(rows, [row(X.id, REGION, "i-29")]), out)
    return json.loads(out.getvalue())


def test_batches_are_self_contained_and_cover_every_instance_once() -> None:
    payload = tiny_payload()
    before = json.dumps(payload, sort_keys=True)
    check_relations(payload)
    assert servicenow.instance_count(payload) == 6
    cut = list(servicenow.batches(payload, 2))
    assert len(cut) == servicenow.batch_count(6, 2) == 3
    seen = []
    for body in cut:
        assert set(body) == {"items", "relations"}
        check_relations(body)  # every relation's indexes are the batch's own
        instances = [i["values"]["object_id"] for i in body["items"] if i["className"] == INSTANCE_CLASS]
        assert 1 <= len(instances) <= 2
        seen += instances
    assert seen == ["i-1", "i-2", "i-29", "i-3", "i-4", "i-5"]
    # The first batch spans two of X's datacenters; the second repeats X's account and us-east-1's.
    assert [i["className"] for i in cut[0]["items"]] == [
        ACCOUNT_CLASS,
        DATACENTER_CLASS,
        INSTANCE_CLASS,
        DATACENTER_CLASS,
        INSTANCE_CLASS,
    ]
    assert [(i["className"], i["values"]["object_id"]) for i in cut[1]["items"]] == [
        (ACCOUNT_CLASS, X.id),
        (DATACENTER_CLASS, REGION),
        (INSTANCE_CLASS, "i-29"),
        (INSTANCE_CLASS, "i-3"),
    ]
    assert cut[1]["relations"] == [
        {"parent": 1, "child": 0, "type": HOSTED_ON},
        {"parent": 2, "child": 1, "type": HOSTED_ON},
        {"parent": 3, "child": 1, "type": HOSTED_ON},
    ]
    assert servicenow.batch(payload, 2, 2) == cut[2]
    assert json.dumps(payload, sort_keys=True) == before  # pure
    assert list(servicenow.batches(payload, 100)) == [payload]
    with pytest.raises(PayloadError, match="batch size must be at least 1, not 0"):
        list(servicenow.batches(payload, 0))
    with pytest.raises(PayloadError, match="batch 3 does not exist: the payload has 3"):
        servicenow.batch(payload, 3, 2)
    broken = {**payload, "relations": [*payload["relations"], {"parent": 99, "child": 0, "type": HOSTED_ON}]}
    with pytest.raises(PayloadError, match="relation 9 names items 99 and 0: not among 11 items"):
        list(servicenow.batches(broken, 2))


def test_load_reads_the_file_and_refuses_other_json() -> None:
    payload = tiny_payload()
    assert servicenow.load(gzip.compress(json.dumps(payload).encode())) == payload
    with pytest.raises(PayloadError, match="not an identifyreconcile payload"):
        servicenow.load(gzip.compress(b"[1, 2]"))
    # No instance at all (every account empty, nothing removed): still a valid body, and no batch.
    empty = io.BytesIO()
    assert servicenow.write_json(servicenow.elements([], []), empty)["items"] == 0
    assert servicenow.load(gzip.compress(empty.getvalue())) == {"items": [], "relations": []}
    assert list(servicenow.batches({"items": [], "relations": []}, 5)) == []


def test_the_csv_reader_checks_columns_and_cells() -> None:
    text = "Account,Region,InstanceId,Name,AccountName,State\r\n1,r,i-1,n,a,running\r\n"
    with pytest.raises(PayloadError, match="the CSV has no column 'PrivateIpAddress'"):
        list(servicenow.read_rows(io.BytesIO(text.encode()), servicenow.CSV_COLUMNS, "the CSV"))
    header = ",".join(servicenow.CSV_COLUMNS)
    short = f"{header}\r\n1,r,i-1\r\n"
    with pytest.raises(PayloadError, match="the CSV line 2 does not have one cell per column"):
        list(servicenow.read_rows(io.BytesIO(short.encode()), servicenow.CSV_COLUMNS, "the CSV"))
    rows = list(csv.reader(io.StringIO(header)))
    assert rows == [list(servicenow.CSV_COLUMNS)]
