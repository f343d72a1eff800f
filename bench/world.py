"""
The benchmark's synthetic organisation: N accounts x R regions x K instances, seeded fast on moto, and
the check of an inventory CSV against it (so a fast wrong answer never counts).
"""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from devtools import emulator
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
SEED_THREADS = 8


@dataclass(frozen=True)
class WorldSpec:
    """How big the organisation is: accounts, regions (names), instances per account and region."""

    accounts: int
    regions: tuple[str, ...]
    instances: int

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
        return [emulator.PAYER] + [f"{200_000_000_000 + i:012d}" for i in range(1, self.accounts)]

    @staticmethod
    def account_name(index: int) -> str:
        """The name configured for the ``index``-th account."""
        return "Payer" if index == 0 else f"bench-{index:05d}"

    @staticmethod
    def server_name(account: str, region: str) -> str:
        """The Name tag of the instances of one account and region (a formula trigger on purpose)."""
        return f"=srv-{account}-{region}"


@dataclass
class Seeded:
    """A seeded world: what the inventory must list, and how to point the DAG at it."""

    spec: WorldSpec
    names: dict[str, str]
    instances: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    bucket: str = emulator.BUCKET
    seconds: float = 0.0

    def variable(self, **extra: Any) -> dict[str, Any]:
        """The ``cmdb_ec2_inventory`` Variable for this world (its 17 regions, no SNS topic)."""
        return {
            "accounts": [{"id": a, "name": n} for a, n in self.names.items()],
            "bucket": self.bucket,
            "hub_region": emulator.HOME_REGION,
            "regions": list(self.spec.regions),
            **extra,
        }

    def subset(self, accounts: int) -> Seeded:
        """The first ``accounts`` accounts of this world, as a world of their own (same moto)."""
        if not 1 <= accounts <= self.spec.accounts:
            raise ValueError(f"the world has {self.spec.accounts} accounts, not {accounts}")
        keep = list(self.names)[:accounts]
        return Seeded(
            spec=WorldSpec(accounts, self.spec.regions, self.spec.instances),
            names={a: self.names[a] for a in keep},
            instances={k: v for k, v in self.instances.items() if k[0] in set(keep)},
            bucket=self.bucket,
            seconds=self.seconds,
        )

    def expected(self) -> dict[str, tuple[str, str, str]]:
        """instance id -> (account, region, Name)."""
        return {
            iid: (account, region, self.spec.server_name(account, region))
            for (account, region), ids in self.instances.items()
            for iid in ids
        }


def seed(moto_url: str, spec: WorldSpec, threads: int = SEED_THREADS) -> Seeded:
    """
    Seed ``spec`` on a fresh moto server (directly, not through the latency gateway): the hub (role,
    bucket, topic) with :func:`devtools.emulator.seed`, then every account's
    ``CMDBDiscovery`` role (from the shipped template) and one ``RunInstances`` of K per region, from one
    botocore session, accounts in parallel.
    """
    import time

    import botocore.session

    from devtools.iam_templates import render_role

    started = time.perf_counter()
    ids = spec.account_ids()
    emulator.seed(moto_url, emulator.World(accounts={emulator.PAYER: "Payer"}))
    session = botocore.session.get_session()
    lock = threading.Lock()

    def client(service: str, region: str, **creds: str) -> Any:
        with lock:  # creating clients from one botocore session is not thread-safe
            return session.create_client(service, region_name=region, endpoint_url=moto_url, **creds)

    seeder = {"aws_access_key_id": "seeder", "aws_secret_access_key": "seeder"}  # the emulator's dummy key
    sts = client("sts", emulator.HOME_REGION, **seeder)
    hub_role_arn = f"arn:aws:iam::{emulator.PAYER}:role/{emulator.HUB_ROLE}"
    seeded = Seeded(spec=spec, names={a: spec.account_name(i) for i, a in enumerate(ids)})

    def one(account: str) -> dict[tuple[str, str], list[str]]:
        answer = sts.assume_role(
            RoleArn=f"arn:aws:iam::{account}:role/OrganizationAccountAccessRole", RoleSessionName="seed"
        )["Credentials"]
        creds = {
            "aws_access_key_id": answer["AccessKeyId"],
            "aws_secret_access_key": answer["SecretAccessKey"],
            "aws_session_token": answer["SessionToken"],
        }
        if account != emulator.PAYER:  # the payer's role comes with the hub
            role = render_role("cmdb-discovery", {"HubRoleArn": hub_role_arn}, account_id=account)
            iam = client("iam", emulator.HOME_REGION, **creds)
            iam.create_role(
                RoleName=role.role_name,
                AssumeRolePolicyDocument=json.dumps(role.assume_role_policy),
                MaxSessionDuration=role.max_session_duration,
            )
            for name, document in role.policies.items():
                iam.put_role_policy(
                    RoleName=role.role_name, PolicyName=name, PolicyDocument=json.dumps(document)
                )
        found: dict[tuple[str, str], list[str]] = {}
        for region in spec.regions:
            if spec.instances == 0:
                found[(account, region)] = []
                continue
            ec2 = client("ec2", region, **creds)
            response = ec2.run_instances(
                ImageId="ami-12c6146b",
                MinCount=spec.instances,
                MaxCount=spec.instances,
                InstanceType="t3.micro",
                TagSpecifications=[
                    {
                        "ResourceType": "instance",
                        "Tags": [{"Key": "Name", "Value": spec.server_name(account, region)}],
                    }
                ],
            )
            found[(account, region)] = [i["InstanceId"] for i in response["Instances"]]
        return found

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for found in pool.map(one, ids):
            seeded.instances.update(found)
    seeded.seconds = time.perf_counter() - started
    return seeded


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
) -> Verdict:
    """
    Check an inventory CSV against the seeded world: the header, every seeded instance exactly once and
    nothing else, each row's account, region and Name. For the product (``product=True``) also the
    contract's extras: rows sorted by Account, Region, InstanceId, the account's name, the state, and
    formula neutralisation of the Name (the world's names start with ``=``).
    """
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
        want_name = neutralise(want[2]) if product else want[2]
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
