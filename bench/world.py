"""
The benchmark's synthetic organisation: N accounts x R regions x K instances, seeded fast on moto, and
the check of an inventory CSV against it (so a fast wrong answer never counts).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from devtools import world
from include.cmdb_inventory.contract import COLUMNS
from include.cmdb_inventory.records import neutralise

# The 17 regions every AWS account has enabled by default (no opt-in), all enabled in moto.
DEFAULT_REGIONS: tuple[str, ...] = (
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-south-1",
    "ap-southeast-1",
    "ap-southeast-2",
    "ca-central-1",
    "eu-central-1",
    "eu-north-1",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "sa-east-1",
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
)
LEGACY_COLUMNS: tuple[str, ...] = ("Account", "Region", "InstanceId", "Name")


@dataclass(frozen=True)
class WorldSpec:
    """
    How big the organisation is: accounts, regions (names), instances per account and region. By default
    each account and region's instances are one reservation (one ``RunInstances`` of K) sharing a Name;
    ``one_per_instance`` launches them one at a time, each its own reservation with its own Name, as a
    console user or a script launching servers one by one does (moto pages and answers per reservation).
    """

    accounts: int
    regions: tuple[str, ...]
    instances: int
    one_per_instance: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.accounts <= 99_999 or self.instances < 0 or not self.regions:
            raise ValueError(f"bad world {self}")

    @property
    def label(self) -> str:
        """``20 x 17 x 5``."""
        return f"{self.accounts} x {len(self.regions)} x {self.instances}"

    @property
    def instance_count(self) -> int:
        """Instances in the whole world."""
        return self.accounts * len(self.regions) * self.instances

    def account_ids(self) -> list[str]:
        """The payer (the hub's account) first, then synthetic 12-digit ids."""
        return [world.PAYER] + [f"{200_000_000_000 + i:012d}" for i in range(1, self.accounts)]

    @staticmethod
    def account_name(index: int) -> str:
        """The name configured for the ``index``-th account."""
        return "Payer" if index == 0 else f"bench-{index:05d}"

    @staticmethod
    def server_name(account: str, region: str) -> str:
        """The Name tag of the instances of one account and region (a formula trigger on purpose)."""
        return f"=srv-{account}-{region}"

    def servers(self, account: str) -> list[world.Server]:
        """What :func:`devtools.world.build` launches in one account: per region one or K reservations."""
        if not self.instances:
            return []
        if not self.one_per_instance:
            return [world.Server(r, self.server_name(account, r), count=self.instances) for r in self.regions]
        return [
            world.Server(r, f"{self.server_name(account, r)}-{n:03d}")
            for r in self.regions
            for n in range(self.instances)
        ]


@dataclass
class Seeded:
    """A seeded world: what the inventory must list, and how to point the DAG at it."""

    spec: WorldSpec
    names: dict[str, str]
    instances: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    bucket: str = world.BUCKET
    seconds: float = 0.0
    instance_names: dict[str, str] = field(default_factory=dict)
    """instance id -> Name tag, where it is not the account and region's ``server_name``."""

    def variable(self, **extra: Any) -> dict[str, Any]:
        """The ``cmdb_ec2_inventory`` Variable for this world (its 17 regions, no SNS topic)."""
        return {
            "accounts": [{"id": a, "name": n} for a, n in self.names.items()],
            "bucket": self.bucket,
            "hub_region": world.HOME_REGION,
            "regions": list(self.spec.regions),
            **extra,
        }

    def subset(self, accounts: int) -> Seeded:
        """The first ``accounts`` accounts of this world, as a world of their own (same moto)."""
        if not 1 <= accounts <= self.spec.accounts:
            raise ValueError(f"the world has {self.spec.accounts} accounts, not {accounts}")
        keep = set(list(self.names)[:accounts])
        instances = {k: v for k, v in self.instances.items() if k[0] in keep}
        ids = {iid for v in instances.values() for iid in v}
        return Seeded(
            spec=WorldSpec(accounts, self.spec.regions, self.spec.instances, self.spec.one_per_instance),
            names={a: n for a, n in self.names.items() if a in keep},
            instances=instances,
            bucket=self.bucket,
            seconds=self.seconds,
            instance_names={i: n for i, n in self.instance_names.items() if i in ids},
        )

    def expected(self) -> dict[str, tuple[str, str, str]]:
        """instance id -> (account, region, Name)."""
        return {
            iid: (account, region, self.instance_names.get(iid) or self.spec.server_name(account, region))
            for (account, region), ids in self.instances.items()
            for iid in ids
        }

    def regions_of(self) -> dict[str, list[str]]:
        """account id -> the regions to scan (every account: the world's regions)."""
        return {account: list(self.spec.regions) for account in self.names}


def seed(moto_url: str, spec: WorldSpec) -> Seeded:
    """
    Seed ``spec`` on a fresh moto server (directly, not through the latency gateway) with
    :func:`devtools.world.build`: the hub (bucket, topic, ``CMDBApplication``), every account's
    ``CMDBDiscovery`` from the shipped templates, and per account and region one ``RunInstances`` of K
    (or K of one, ``spec.one_per_instance``).
    """
    ids = spec.account_ids()
    names = {a: spec.account_name(i) for i, a in enumerate(ids)}
    servers = {a: spec.servers(a) for a in ids}
    built = world.build(moto_url, world.World(names, servers if spec.instances else {}))
    seeded = Seeded(spec=spec, names=names, seconds=built.seconds)
    for account in ids:
        launched = built.instances.get(account, [])
        for region in spec.regions:
            seeded.instances[(account, region)] = [i["id"] for i in launched if i["region"] == region]
        if spec.one_per_instance:
            seeded.instance_names.update({i["id"]: i["name"] for i in launched})
    return seeded


def _as_is(name: str) -> str:
    return name


@dataclass
class Verdict:
    """The result of checking one CSV against the seeded world."""

    ok: bool
    rows: int
    problems: list[str]

    def summary(self) -> str:
        """``ok (8500 rows)`` or the first problems."""
        if self.ok:
            return f"ok ({self.rows} rows)"
        return f"WRONG ({self.rows} rows): " + "; ".join(self.problems[:5])


def verify_csv(
    body: bytes | Iterable[str],
    seeded: Seeded,
    *,
    columns: tuple[str, ...] = COLUMNS,
    product: bool = True,
    name_rule: Callable[[str], str] | None = None,
) -> Verdict:
    """
    Check an inventory CSV against the seeded world: the header, every seeded instance exactly once and
    nothing else, each row's account, region and Name. For the product (``product=True``) also the
    contract's extras: rows sorted by Account, Region, InstanceId, the account's name, the state, and
    formula neutralisation of the Name (the world's names start with ``=``). ``name_rule`` is what the
    tool writes for a seeded Name (default: the product's neutralisation, or the Name as it is).
    """
    if name_rule is None:
        name_rule = neutralise if product else _as_is
    text = io.StringIO(body.decode("utf-8"), newline="") if isinstance(body, bytes) else body
    reader = csv.reader(text)
    problems: list[str] = []
    header = next(reader, None)
    if header is None or tuple(header) != columns:
        return Verdict(False, 0, [f"header is {header!r}, expected {list(columns)!r}"])
    index = {name: i for i, name in enumerate(columns)}
    expected = seeded.expected()
    seen: set[str] = set()
    previous: tuple[str, str, str] | None = None
    rows = 0
    for row in reader:
        rows += 1
        if len(row) != len(columns):
            problems.append(f"row {rows}: {len(row)} cells, expected {len(columns)}")
            continue
        account, region, iid, name = (row[index[c]] for c in LEGACY_COLUMNS)
        if iid in seen:
            problems.append(f"row {rows}: {iid} listed twice")
        seen.add(iid)
        want = expected.get(iid)
        if want is None:
            problems.append(f"row {rows}: {iid} was not seeded")
            continue
        want_name = name_rule(want[2])
        if (account, region, name) != (want[0], want[1], want_name):
            problems.append(
                f"row {rows}: {iid} is {(account, region, name)}, expected {(want[0], want[1], want_name)}"
            )
        if product:
            key = (account, region, iid)
            if previous is not None and key < previous:
                problems.append(f"row {rows}: not sorted by Account, Region, InstanceId")
            previous = key
            if row[index["AccountName"]] != seeded.names.get(account):
                problems.append(f"row {rows}: AccountName {row[index['AccountName']]!r}")
            if row[index["State"]] != "running":
                problems.append(f"row {rows}: State {row[index['State']]!r}")
    missing = len(set(expected) - seen)
    if missing:
        problems.append(f"{missing} seeded instances missing")
    return Verdict(not problems, rows, problems)
