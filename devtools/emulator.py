"""
The emulated AWS organisation of the demo and the docker-compose emulator profile: the 2015 blog post's
Example Corp, built on a moto server (loopback only) by :mod:`devtools.world`, and the connection and
Variable that point the DAG at it.

    python -m devtools.emulator seed --endpoint-url http://127.0.0.1:5000
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from devtools.world import (
    BUCKET,
    HOME_REGION,
    HUB_ROLE,
    PAYER,
    TOPIC,
    Server,
    World,
    build,
)

__all__ = ["blog_world", "demo_connection", "demo_variable", "main", "seed"]


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


def seed(endpoint_url: str, world: World | None = None) -> dict[str, Any]:
    """
    Build ``world`` (default: the blog's organisation) with :func:`devtools.world.build`. Returns the Airflow
    connection and Variable that point the DAG at it, the SQS queue URL subscribed to the topic, and the
    instances by account (``id``, ``region``, ``name``, ``state``). Seeding an already seeded emulator
    changes nothing.
    """
    world = world or blog_world()
    built = build(endpoint_url, world)
    return {
        "connection": demo_connection(endpoint_url),
        "variable": {**demo_variable(world), "sns_topic_arn": built.topic_arn},
        "queue_url": built.queue_url,
        "instances": built.instances,
    }


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
