"""
The one builder of emulated AWS organisations (the demo's, the tests' and the benchmarks'), on a moto
server on loopback only: the hub account's bucket, SNS topic and the CMDB team's SQS queue, its
``CMDBApplication`` role and every account's ``CMDBDiscovery`` role deployed from the shipped templates
by moto's CloudFormation (``include/iam``, :mod:`devtools.iam_templates`), instances in any regions and
states, and an AWS Organization with OUs::

    built = build("http://127.0.0.1:5000", World(accounts={PAYER: "Payer"}, servers={PAYER: [...]}))

Accounts are built in parallel from one botocore session (its service models are loaded once), so a
world of a hundred accounts in seventeen regions takes seconds, not minutes.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from devtools.iam_templates import DeployedRole, deploy

if TYPE_CHECKING:
    import boto3

PAYER = "111111111111"
HUB_ROLE = "CMDBApplication"
DISCOVERY_ROLE = "CMDBDiscovery"
BUCKET = "example-corp-cmdb"
TOPIC = "cmdb-ec2-inventory"
QUEUE = "cmdb-team-inbox"
HOME_REGION = "us-east-1"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "moto"}
APPLICATION_TEMPLATE = "cmdb-application"
DISCOVERY_TEMPLATE = "cmdb-discovery"
BUILD_THREADS = 8
# moto lets any caller assume this role in any account, and maps the session to that account.
_SEED_ROLE = "OrganizationAccountAccessRole"
_SEED_KEYS = {"aws_access_key_id": "seeder", "aws_secret_access_key": "seeder"}
_IMAGE_ID = "ami-12c6146b"


@dataclass(frozen=True)
class Server:
    """A server in the world: where, what and in which state."""

    region: str
    name: str
    state: str = "running"
    instance_type: str = "t3.micro"
    tags: tuple[tuple[str, str], ...] = ()
    count: int = 1


@dataclass
class World:
    """An organisation to build: accounts (id -> name) and their servers."""

    accounts: dict[str, str]
    servers: dict[str, list[Server]] = field(default_factory=dict)

    def expected_count(self, include_terminated: bool = False) -> int:
        """How many instances an inventory of this world must list."""
        return sum(
            s.count
            for servers in self.servers.values()
            for s in servers
            if include_terminated or s.state != "terminated"
        )


@dataclass
class Built:
    """A built world: its roles as CloudFormation deployed them, its instances and the hub's endpoints."""

    endpoint_url: str
    world: World
    bucket: str
    topic_arn: str | None
    queue_url: str | None
    kms_key_arn: str | None
    hub_role: DeployedRole | None
    """``None`` when the world was already built (nothing was deployed again)."""
    discovery_roles: dict[str, DeployedRole] = field(default_factory=dict)
    instances: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    """Per account: ``id``, ``region``, ``name`` and ``state`` of each instance launched."""
    seconds: float = 0.0


def check_loopback(endpoint_url: str) -> None:
    """Refuse anything but a local emulator: the builder must never touch real AWS."""
    host = urlparse(endpoint_url).hostname or ""
    try:
        loopback = host in LOOPBACK_HOSTS or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a DNS name such as 127.0.0.1.example.com: it could resolve anywhere
        loopback = False
    if not loopback:
        raise ValueError(f"refusing to seed {endpoint_url!r}: only a loopback emulator may be seeded")


def session_in(endpoint_url: str, account_id: str) -> boto3.session.Session:
    """A session acting inside ``account_id`` on moto (moto honours AssumeRole into any account)."""
    import boto3

    check_loopback(endpoint_url)
    sts = boto3.client("sts", endpoint_url=endpoint_url, region_name=HOME_REGION, **_SEED_KEYS)
    creds = sts.assume_role(RoleArn=f"arn:aws:iam::{account_id}:role/{_SEED_ROLE}", RoleSessionName="seed")[
        "Credentials"
    ]
    return boto3.session.Session(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
        region_name=HOME_REGION,
    )


class _Clients:
    """Clients of every account from one botocore session (creating clients from it is not thread-safe)."""

    def __init__(self, endpoint_url: str) -> None:
        import botocore.session

        check_loopback(endpoint_url)
        self.endpoint_url = endpoint_url
        self._session = botocore.session.get_session()
        self._lock = threading.Lock()
        self._sts = self._client("sts", HOME_REGION, _SEED_KEYS)

    def _client(self, service: str, region: str, keys: Mapping[str, str]) -> Any:
        with self._lock:
            return self._session.create_client(
                service, region_name=region, endpoint_url=self.endpoint_url, **keys
            )

    def account(self, account_id: str) -> Any:
        """A client factory ``client(service, region=HOME_REGION)`` acting inside ``account_id``."""
        creds = self._sts.assume_role(
            RoleArn=f"arn:aws:iam::{account_id}:role/{_SEED_ROLE}", RoleSessionName="seed"
        )["Credentials"]
        keys = {
            "aws_access_key_id": creds["AccessKeyId"],
            "aws_secret_access_key": creds["SecretAccessKey"],
            "aws_session_token": creds["SessionToken"],
        }

        def client(service: str, region: str = HOME_REGION) -> Any:
            return self._client(service, region, keys)

        return client


def _run_servers(ec2: Any, region: str, servers: Iterable[Server]) -> list[dict[str, str]]:
    launched: list[dict[str, str]] = []
    for server in servers:
        tags = [{"Key": "Name", "Value": server.name}, *({"Key": k, "Value": v} for k, v in server.tags)]
        response = ec2.run_instances(
            ImageId=_IMAGE_ID,
            MinCount=server.count,
            MaxCount=server.count,
            InstanceType=server.instance_type,
            TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
        )
        new = [i["InstanceId"] for i in response["Instances"]]
        if server.state == "stopped":
            ec2.stop_instances(InstanceIds=new)
        elif server.state == "terminated":
            ec2.terminate_instances(InstanceIds=new)
        launched.extend({"id": i, "region": region, "name": server.name, "state": server.state} for i in new)
    return launched


def build(
    endpoint_url: str,
    world: World,
    *,
    bucket: str = BUCKET,
    topic: str | None = TOPIC,
    queue: str | None = QUEUE,
    kms_key: bool = False,
    hub_parameters: Mapping[str, str] | None = None,
    discovery_parameters: Mapping[str, str] | None = None,
    hub_account: str = PAYER,
) -> Built:
    """
    Build ``world`` on the moto server at ``endpoint_url``: in ``hub_account`` the bucket, the ``topic``
    with the ``queue`` subscribed (raw delivery), a KMS key when ``kms_key``, and the ``cmdb-application``
    stack (bucket, topic and key as its parameters, then ``hub_parameters``); in every account of the world
    the ``cmdb-discovery`` stack trusting the hub role (then ``discovery_parameters``) and its servers.
    Building an already built emulator changes nothing (the topic and queue are looked up again).
    """
    started = time.perf_counter()
    clients = _Clients(endpoint_url)
    hub = clients.account(hub_account)
    already = any(
        s["StackName"] == APPLICATION_TEMPLATE for s in hub("cloudformation").describe_stacks()["Stacks"]
    )
    built = Built(endpoint_url, world, bucket, None, None, None, None)
    if topic is not None:
        sns = hub("sns")
        built.topic_arn = sns.create_topic(Name=topic)["TopicArn"]
        if queue is not None:
            sqs = hub("sqs")
            built.queue_url = sqs.create_queue(QueueName=queue)["QueueUrl"]
            attributes = sqs.get_queue_attributes(QueueUrl=built.queue_url, AttributeNames=["QueueArn"])
            sns.subscribe(
                TopicArn=built.topic_arn,
                Protocol="sqs",
                Endpoint=attributes["Attributes"]["QueueArn"],
                Attributes={"RawMessageDelivery": "true"},
            )
    if already:
        built.seconds = time.perf_counter() - started
        return built

    if kms_key:
        built.kms_key_arn = hub("kms").create_key()["KeyMetadata"]["Arn"]
    hub("s3").create_bucket(Bucket=bucket)
    parameters = {
        "BucketName": bucket,
        "TopicArn": built.topic_arn or "",
        "KmsKeyArn": built.kms_key_arn or "",
    }
    stack = deploy(
        hub("cloudformation"), hub("iam"), APPLICATION_TEMPLATE, {**parameters, **(hub_parameters or {})}
    )
    built.hub_role = stack.role()
    trusted = {"HubRoleArn": built.hub_role.arn, **(discovery_parameters or {})}

    def one(account_id: str) -> tuple[str, DeployedRole, list[dict[str, str]]]:
        client = hub if account_id == hub_account else clients.account(account_id)
        role = deploy(client("cloudformation"), client("iam"), DISCOVERY_TEMPLATE, trusted).role()
        by_region: dict[str, list[Server]] = {}
        for server in world.servers.get(account_id, []):
            by_region.setdefault(server.region, []).append(server)
        launched = [
            instance
            for region, servers in sorted(by_region.items())
            for instance in _run_servers(client("ec2", region), region, servers)
        ]
        return account_id, role, launched

    with ThreadPoolExecutor(max_workers=BUILD_THREADS) as pool:
        for account_id, role, launched in pool.map(one, world.accounts):
            built.discovery_roles[account_id] = role
            if launched:
                built.instances[account_id] = launched
    built.seconds = time.perf_counter() - started
    return built


def seed_organization(
    endpoint_url: str,
    world: World,
    ous: dict[str, list[str]] | None = None,
    suspended: Iterable[str] = (),
    tags: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    """
    Create ``world`` as an AWS Organization on moto, with the payer (:data:`PAYER`) as management account.

    moto chooses new accounts' ids itself, so every other account is created under a new id: build the
    returned ``world`` (re-keyed, same names and servers). ``ous`` maps OU paths (``"Workloads/Prod"``;
    parents are created as needed) to the world's account ids moved there; ``suspended`` are world account
    ids closed (moto makes them ``SUSPENDED`` at once); ``tags`` maps world account ids to their account
    tags (TagResource, what ListTagsForResource answers). Returns ``world``, ``ids`` (world id -> organisation
    id), ``ous`` (path -> OU id) and ``root_id``.
    """
    org = session_in(endpoint_url, PAYER).client("organizations", endpoint_url=endpoint_url)
    org.create_organization(FeatureSet="ALL")
    root_id = org.list_roots()["Roots"][0]["Id"]

    ids: dict[str, str] = {}
    for account_id, name in world.accounts.items():
        if account_id == PAYER:
            ids[account_id] = PAYER
            continue
        status = org.create_account(AccountName=name or account_id, Email=f"aws+{account_id}@example.com")
        ids[account_id] = status["CreateAccountStatus"]["AccountId"]

    ou_ids: dict[str, str] = {}
    for path in sorted(ous or {}):
        parent = root_id
        parts = path.split("/")
        for depth in range(1, len(parts) + 1):
            sub = "/".join(parts[:depth])
            if sub not in ou_ids:
                ou_ids[sub] = org.create_organizational_unit(ParentId=parent, Name=parts[depth - 1])[
                    "OrganizationalUnit"
                ]["Id"]
            parent = ou_ids[sub]
        for account_id in (ous or {})[path]:
            org.move_account(AccountId=ids[account_id], SourceParentId=root_id, DestinationParentId=parent)
    for account_id, account_tags in (tags or {}).items():
        org.tag_resource(
            ResourceId=ids[account_id], Tags=[{"Key": k, "Value": v} for k, v in account_tags.items()]
        )
    for account_id in suspended:
        org.close_account(AccountId=ids[account_id])

    rekeyed = World(
        accounts={ids[a]: n for a, n in world.accounts.items()},
        servers={ids[a]: list(s) for a, s in world.servers.items()},
    )
    return {"world": rekeyed, "ids": ids, "ous": ou_ids, "root_id": root_id}
