"""
Seed an emulated AWS organisation on a moto server (loopback only): the demo's, the tests' and the
benchmarks' world. The IAM roles are created from the shipped CloudFormation templates.

    python -m devtools.emulator seed --endpoint-url http://127.0.0.1:5000
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

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
    """An organisation to seed: accounts (id -> name) and their servers."""

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


def blog_world() -> World:
    """The 2015 blog post's Example Corp: a payer and three linked accounts."""
    return World(
        accounts={
            PAYER: "Payer",
            "222222222222": "Development",
            "333333333333": "Testing",
            "444444444444": "Production",
        },
        servers={
            PAYER: [
                Server("us-east-1", "billing-reports"),
                Server("eu-west-1", "ad-controller", state="stopped"),
            ],
            "222222222222": [
                Server("us-east-1", "dev-web-1"),
                Server("us-east-1", "dev-web-2", state="stopped"),
                Server("us-west-2", "dev-build"),
                Server("us-west-2", "dev-old", state="terminated"),
            ],
            "333333333333": [
                Server("us-east-2", "test-runner", count=2),
                Server("ap-southeast-2", "test-sydney", tags=(("Team", 'QA, "night" shift'),)),
            ],
            "444444444444": [
                Server("us-east-1", "prod-web-1", instance_type="m5.large", tags=(("Env", "prod"),)),
                Server("us-east-1", "prod-web-2", instance_type="m5.large", tags=(("Env", "prod"),)),
                Server("eu-west-1", "prod-db-eu", instance_type="r5.xlarge"),
                Server("ap-northeast-1", '=HYPERLINK("http://evil")', tags=(("Owner", "@mallory"),)),
            ],
        },
    )


def check_loopback(endpoint_url: str) -> None:
    """Refuse anything but a local emulator: this module must never touch real AWS."""
    import ipaddress

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
    sts = boto3.client(
        "sts",
        endpoint_url=endpoint_url,
        region_name=HOME_REGION,
        aws_access_key_id="seeder",
        aws_secret_access_key="seeder",
    )
    creds = sts.assume_role(
        RoleArn=f"arn:aws:iam::{account_id}:role/OrganizationAccountAccessRole", RoleSessionName="seed"
    )["Credentials"]
    return boto3.session.Session(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
        region_name=HOME_REGION,
    )


def _create_role(iam: Any, rendered: Any) -> None:
    iam.create_role(
        RoleName=rendered.role_name,
        AssumeRolePolicyDocument=json.dumps(rendered.assume_role_policy),
        MaxSessionDuration=rendered.max_session_duration,
    )
    for name, document in rendered.policies.items():
        iam.put_role_policy(RoleName=rendered.role_name, PolicyName=name, PolicyDocument=json.dumps(document))


def _run_servers(ec2: Any, servers: Iterable[Server]) -> list[dict[str, str]]:
    seeded: list[dict[str, str]] = []
    for server in servers:
        tags = [{"Key": "Name", "Value": server.name}, *({"Key": k, "Value": v} for k, v in server.tags)]
        response = ec2.run_instances(
            ImageId="ami-12c6146b",
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
        seeded.extend(
            {"id": i, "region": server.region, "name": server.name, "state": server.state} for i in new
        )
    return seeded


def seed(endpoint_url: str, world: World | None = None) -> dict[str, Any]:
    """
    Seed ``world`` (default: the blog's organisation). Returns the Airflow connection and Variable that
    point the DAG at it, the SQS queue URL subscribed to the topic, and the seeded instances by account
    (``id``, ``region``, ``name``, ``state``). Seeding an already seeded emulator changes nothing.
    """
    from devtools.iam_templates import render_role

    world = world or blog_world()
    hub_role_arn = f"arn:aws:iam::{PAYER}:role/{HUB_ROLE}"
    payer = session_in(endpoint_url, PAYER)

    iam = payer.client("iam", endpoint_url=endpoint_url)
    already_seeded = any(r["RoleName"] == HUB_ROLE for r in iam.list_roles()["Roles"])
    if not already_seeded:
        _create_role(
            iam,
            render_role(
                "cmdb-application",
                {"BucketName": BUCKET, "TopicArn": f"arn:aws:sns:{HOME_REGION}:{PAYER}:{TOPIC}"},
                account_id=PAYER,
            ),
        )
        payer.client("s3", endpoint_url=endpoint_url).create_bucket(Bucket=BUCKET)
    sns = payer.client("sns", endpoint_url=endpoint_url)
    topic_arn = sns.create_topic(Name=TOPIC)["TopicArn"]
    sqs = payer.client("sqs", endpoint_url=endpoint_url)
    queue_url = sqs.create_queue(QueueName=QUEUE)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(
        TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn, Attributes={"RawMessageDelivery": "true"}
    )

    instances: dict[str, list[dict[str, str]]] = {}
    for account_id in [] if already_seeded else world.accounts:
        session = payer if account_id == PAYER else session_in(endpoint_url, account_id)
        _create_role(
            session.client("iam", endpoint_url=endpoint_url),
            render_role("cmdb-discovery", {"HubRoleArn": hub_role_arn}, account_id=account_id),
        )
        by_region: dict[str, list[Server]] = {}
        for server in world.servers.get(account_id, []):
            by_region.setdefault(server.region, []).append(server)
        for region, servers in sorted(by_region.items()):
            ec2 = session.client("ec2", endpoint_url=endpoint_url, region_name=region)
            instances.setdefault(account_id, []).extend(_run_servers(ec2, servers))

    return {
        "connection": demo_connection(endpoint_url),
        "variable": {**demo_variable(world), "sns_topic_arn": topic_arn},
        "queue_url": queue_url,
        "instances": instances,
    }


def seed_organization(
    endpoint_url: str,
    world: World,
    ous: dict[str, list[str]] | None = None,
    suspended: Iterable[str] = (),
) -> dict[str, Any]:
    """
    Create ``world`` as an AWS Organization on moto, with the payer (:data:`PAYER`) as management account.

    moto chooses new accounts' ids itself, so every other account is created under a new id: seed the
    returned ``world`` (re-keyed, same names and servers) with :func:`seed`. ``ous`` maps OU paths
    (``"Workloads/Prod"``; parents are created as needed) to the world's account ids moved there;
    ``suspended`` are world account ids closed (moto makes them ``SUSPENDED`` at once). Returns ``world``,
    ``ids`` (world id -> organisation id), ``ous`` (path -> OU id) and ``root_id``.
    """
    payer = session_in(endpoint_url, PAYER)
    org = payer.client("organizations", endpoint_url=endpoint_url)
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
    for account_id in suspended:
        org.close_account(AccountId=ids[account_id])

    rekeyed = World(
        accounts={ids[a]: n for a, n in world.accounts.items()},
        servers={ids[a]: list(s) for a, s in world.servers.items()},
    )
    return {"world": rekeyed, "ids": ids, "ous": ou_ids, "root_id": root_id}


def demo_connection(endpoint_url: str) -> dict[str, Any]:
    """The hub connection for the emulator: dummy keys, then ``CMDBApplication`` as the hub identity."""
    return {
        "conn_type": "aws",
        "login": "cmdb-hub-demo-key",
        "password": "cmdb-hub-demo-secret",
        "extra": {
            "region_name": HOME_REGION,
            "endpoint_url": endpoint_url,
            "role_arn": f"arn:aws:iam::{PAYER}:role/{HUB_ROLE}",
            "service_config": {"sts": {"endpoint_url": endpoint_url}},
        },
    }


def demo_variable(world: World | None = None) -> dict[str, Any]:
    """The ``cmdb_ec2_inventory`` Variable for a seeded world."""
    world = world or blog_world()
    return {
        "accounts": [{"id": a, "name": n} for a, n in world.accounts.items()],
        "bucket": BUCKET,
        "sns_topic_arn": f"arn:aws:sns:{HOME_REGION}:{PAYER}:{TOPIC}",
        "hub_region": HOME_REGION,
    }


def main(argv: list[str] | None = None) -> int:
    """``seed``: seed the blog's organisation and print the connection and Variable as JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["seed"])
    parser.add_argument("--endpoint-url", required=True, help="the moto server, e.g. http://127.0.0.1:5000")
    args = parser.parse_args(argv)
    result = seed(args.endpoint_url)
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
