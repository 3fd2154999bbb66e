#!/usr/bin/env python3
"""Provisions the fleet's topology on LocalStack, idempotently.

Reads topology.json (the same file Terraform reads) and the OpenAPI document named there,
creates queues with their DLQs and redrive policies, tables (with TTL where set), and the REST
API (imported from the document with local names filled in, deployed to a stage, with an API
key and usage plan). Running it again converges to the same state and keeps the API key.

Prints the result as JSON (--json) or writes KEY=value lines (--env-file). Tests provision
their own isolated copy with --prefix.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

ROOT = Path(__file__).resolve().parent.parent
ACCOUNT = "000000000000"
# ${name} placeholders, and Terraform's escapes $${ and %%{ (literal ${ and %{).
TEMPLATE = re.compile(r"\$\$\{|%%\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|%\{|\$\{")


def render(template: str, values: dict[str, str]) -> str:
    """Renders like Terraform's templatefile with plain ${name} placeholders: an unknown name,
    an expression or a %{ directive is an error (Terraform would evaluate it)."""

    def sub(m: re.Match) -> str:
        text = m.group(0)
        if text in ("$${", "%%{"):
            return text[1:]
        if m.group(1) is None:
            line = template.count("\n", 0, m.start()) + 1
            raise SystemExit(f"line {line} of the API document has template syntax ({text}) that is not a ${{name}} placeholder")
        if m.group(1) not in values:
            raise SystemExit(f"the API document uses a placeholder with no value: {m.group(1)}")
        return values[m.group(1)]

    return TEMPLATE.sub(sub, template)


def fragment_values(document: Path) -> dict[str, str]:
    """The placeholders every rendering of the document gets besides the deployment's names:
    the template fragments of fragments.json beside the document (${set_owner}, the one
    definition of the caller's owner id, and the write routes' body-size guard; Terraform's
    modules/api-document reads the same file)."""
    fragments = json.loads((document.parent / "fragments.json").read_text())
    return {k: v.strip() for k, v in fragments.items() if k != "//"}


# What each service's fragment (services/*.yaml beside the document) is: comment lines, `paths:`
# and its path items, then `components:` / `  schemas:` and its schemas. The same expression is
# in Terraform's modules/api-document.
SERVICE_FRAGMENT = re.compile(r"^(?:#[^\n]*\n)*paths:\n(.*\n)components:\n  schemas:\n(.*)$", re.S)
PATHS_MARKER = "  # <each service's paths: services/*.yaml>\n"
SCHEMAS_MARKER = "    # <each service's schemas: services/*.yaml>\n"


def assemble_document(document: Path) -> str:
    """The document with every service's fragment in place, services in file-name order (as
    Terraform's fileset lists them)."""
    paths, schemas = [], []
    for fragment in sorted((document.parent / "services").glob("*.yaml"), key=lambda p: p.name):
        m = SERVICE_FRAGMENT.match(fragment.read_text())
        if m is None:
            raise SystemExit(f"{fragment}: not a service fragment (comments, paths:, then components: / schemas:)")
        paths.append(m.group(1))
        schemas.append(m.group(2))
    text = document.read_text()
    for marker in (PATHS_MARKER, SCHEMAS_MARKER):
        if text.count(marker) != 1:
            raise SystemExit(f"{document}: the line {marker.strip()!r} must be there once")
    return text.replace(PATHS_MARKER, "".join(paths)).replace(SCHEMAS_MARKER, "".join(schemas))


def render_document(document: Path, names: dict[str, str]) -> str:
    """The API document as Terraform's modules/api-document renders it for the same names."""
    return render(assemble_document(document), {**names, **fragment_values(document)})


class Provisioner:
    def __init__(self, endpoint: str, region: str, prefix: str, stage: str):
        session = boto3.session.Session(
            aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "test"),
            aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
            region_name=region,
        )
        config = Config(retries={"max_attempts": 5, "mode": "standard"})
        self.client = lambda name: session.client(name, endpoint_url=endpoint, config=config)
        self.endpoint, self.region, self.prefix, self.stage = endpoint, region, prefix, stage
        self.sqs = self.client("sqs")
        self.ddb = self.client("dynamodb")
        self.apigw = self.client("apigateway")
        self.iam = self.client("iam")

    def name(self, suffix: str) -> str:
        return f"{self.prefix}{suffix}"

    # -- queues -------------------------------------------------------------------------
    def queue(self, name: str, attributes: dict[str, str]) -> str:
        try:
            return self.sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        except ClientError as err:
            if err.response["Error"]["Code"] not in ("QueueAlreadyExists", "QueueNameExists"):
                raise
            url = self.sqs.get_queue_url(QueueName=name)["QueueUrl"]
            # FifoQueue is fixed at creation; the rest converges.
            changeable = {k: v for k, v in attributes.items() if k != "FifoQueue"}
            self.sqs.set_queue_attributes(QueueUrl=url, Attributes=changeable)
            return url

    def queue_name(self, key: str, q: dict, dlq: bool = False) -> str:
        """<prefix><key>[-dlq][.fifo]: the same rule as fleet::topology::QueueSpec::name."""
        return self.name(key + ("-dlq" if dlq else "") + (".fifo" if q.get("fifo") else ""))

    def queues(self, spec: dict) -> dict[str, dict[str, str]]:
        out = {}
        for key, q in spec.items():
            fifo = (
                {
                    "FifoQueue": "true",
                    "ContentBasedDeduplication": "false",
                    "DeduplicationScope": "messageGroup",
                    "FifoThroughputLimit": "perMessageGroupId",
                }
                if q.get("fifo")
                else {}
            )
            dlq_url = self.queue(
                self.queue_name(key, q, dlq=True),
                {"MessageRetentionPeriod": str(q["dlq_retention_secs"]), **fifo},
            )
            dlq_arn = self.sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
                "Attributes"
            ]["QueueArn"]
            url = self.queue(
                self.queue_name(key, q),
                {
                    **fifo,
                    "VisibilityTimeout": str(q["visibility_timeout_secs"]),
                    "MessageRetentionPeriod": str(q["message_retention_secs"]),
                    "RedrivePolicy": json.dumps(
                        {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": q["max_receive_count"]}
                    ),
                },
            )
            out[key] = {"name": self.queue_name(key, q), "url": url, "dlq_url": dlq_url}
        return out

    # -- tables -------------------------------------------------------------------------
    def tables(self, spec: dict) -> dict[str, str]:
        out = {}
        for key, t in spec.items():
            name = self.name(key)
            indexes = t.get("indexes") or {}
            try:
                existing = self.ddb.describe_table(TableName=name)["Table"]
            except ClientError as err:
                if err.response["Error"]["Code"] != "ResourceNotFoundException":
                    raise
                create = {}
                if indexes:
                    create["GlobalSecondaryIndexes"] = [gsi(n, i) for n, i in indexes.items()]
                self.ddb.create_table(
                    TableName=name,
                    BillingMode="PAY_PER_REQUEST",
                    AttributeDefinitions=attribute_definitions([t, *indexes.values()]),
                    KeySchema=key_schema(t),
                    **create,
                )
                self.ddb.get_waiter("table_exists").wait(TableName=name)
            else:
                if existing["KeySchema"] != key_schema(t):
                    # A key cannot change in place (e.g. payments and orders became owner-scoped:
                    # docs/security.md). Local data is disposable, but not silently.
                    raise SystemExit(
                        f"table {name} has the key {existing['KeySchema']}, the topology says "
                        f"{key_schema(t)}: delete it (aws dynamodb delete-table --table-name {name}) "
                        "and provision again"
                    )
                have = {i["IndexName"] for i in existing.get("GlobalSecondaryIndexes", [])}
                for index_name, index in indexes.items():
                    if index_name not in have:
                        self.ddb.update_table(
                            TableName=name,
                            AttributeDefinitions=attribute_definitions([t, index]),
                            GlobalSecondaryIndexUpdates=[{"Create": gsi(index_name, index)}],
                        )
            if t.get("ttl_attribute"):
                ttl = self.ddb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
                if ttl.get("TimeToLiveStatus") != "ENABLED":
                    self.ddb.update_time_to_live(
                        TableName=name,
                        TimeToLiveSpecification={"Enabled": True, "AttributeName": t["ttl_attribute"]},
                    )
            out[key] = name
        return out

    # -- topics and buckets ---------------------------------------------------------------
    def topics(self, spec: dict) -> dict[str, str]:
        sns = self.client("sns")
        return {key: sns.create_topic(Name=self.name(key))["TopicArn"] for key in spec}

    def buckets(self, spec: dict) -> dict[str, str]:
        s3 = self.client("s3")
        out = {}
        for key in spec:
            name = self.name(key)
            try:
                s3.create_bucket(Bucket=name)
            except ClientError as err:
                if err.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
            out[key] = name
        return out

    # -- API ----------------------------------------------------------------------------
    def api_role(self) -> str:
        name = self.name("apigw")
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"Service": "apigateway.amazonaws.com"}, "Action": "sts:AssumeRole"}
            ],
        }
        try:
            return self.iam.get_role(RoleName=name)["Role"]["Arn"]
        except ClientError:
            return self.iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]

    def api(self, spec: dict, queues: dict, tables: dict) -> dict[str, str]:
        values = {"region": self.region, "account_id": ACCOUNT, "api_role_arn": self.api_role()}
        for var, ref in spec["template_vars"].items():
            kind, key = ref.split(":", 1)
            values[var] = queues[key]["name"] if kind == "queue" else tables[key]
        body = render_document(ROOT / spec["document"], values)

        name = self.name("api")
        existing = [a for a in self.apigw.get_rest_apis(limit=500)["items"] if a["name"] == name]
        if existing:
            api_id = existing[0]["id"]
            self.apigw.put_rest_api(restApiId=api_id, mode="overwrite", body=body.encode(), failOnWarnings=True)
        else:
            api_id = self.apigw.import_rest_api(body=body.encode(), failOnWarnings=True)["id"]
        self.apigw.update_rest_api(restApiId=api_id, patchOperations=[{"op": "replace", "path": "/name", "value": name}])
        self.apigw.create_deployment(restApiId=api_id, stageName=self.stage, description="provision.py")

        plan_name = self.name("plan")
        plans = [p for p in self.apigw.get_usage_plans(limit=500)["items"] if p["name"] == plan_name]
        if plans:
            plan_id = plans[0]["id"]
            stages = {(s["apiId"], s["stage"]) for s in plans[0].get("apiStages", [])}
            if (api_id, self.stage) not in stages:
                self.apigw.update_usage_plan(
                    usagePlanId=plan_id,
                    patchOperations=[{"op": "add", "path": "/apiStages", "value": f"{api_id}:{self.stage}"}],
                )
        else:
            plan_id = self.apigw.create_usage_plan(
                name=plan_name,
                apiStages=[{"apiId": api_id, "stage": self.stage}],
                throttle={"rateLimit": 1000.0, "burstLimit": 2000},
            )["id"]

        # Two clients: the key to use, and another client's. Each key id is its caller's owner id
        # on the local stack (no Cognito here; docs/security.md), so the two are kept apart:
        # tests/isolation.rs.
        key = self.api_key(plan_id, "key")
        other = self.api_key(plan_id, "other-key")
        return {
            "id": api_id,
            "url": f"{self.endpoint}/_aws/execute-api/{api_id}/{self.stage}",
            "key": key["value"],
            "key_id": key["id"],
            "other_key": other["value"],
            "other_key_id": other["id"],
        }

    def api_key(self, plan_id: str, suffix: str) -> dict:
        """The API key <prefix><suffix> on the usage plan, created once."""
        key_name = self.name(suffix)
        keys = [k for k in self.apigw.get_api_keys(nameQuery=key_name, includeValues=True, limit=500)["items"] if k["name"] == key_name]
        key = keys[0] if keys else self.apigw.create_api_key(name=key_name, enabled=True)
        attached = {k["id"] for k in self.apigw.get_usage_plan_keys(usagePlanId=plan_id, limit=500)["items"]}
        if key["id"] not in attached:
            self.apigw.create_usage_plan_key(usagePlanId=plan_id, keyId=key["id"], keyType="API_KEY")
        return key


def key_schema(spec: dict) -> list[dict]:
    keys = [spec["partition_key"]] + ([spec["sort_key"]] if spec.get("sort_key") else [])
    return [{"AttributeName": k["name"], "KeyType": kt} for k, kt in zip(keys, ["HASH", "RANGE"])]


def attribute_definitions(specs: list[dict]) -> list[dict]:
    """Every key attribute of a table and its indexes, once."""
    seen = {}
    for spec in specs:
        for k in (spec["partition_key"], spec.get("sort_key")):
            if k:
                seen[k["name"]] = k["type"]
    return [{"AttributeName": n, "AttributeType": t} for n, t in seen.items()]


def gsi(name: str, spec: dict) -> dict:
    return {"IndexName": name, "KeySchema": key_schema(spec), "Projection": {"ProjectionType": "ALL"}}


def resolve(ref: str, queues: dict, tables: dict, topics: dict, buckets: dict) -> str:
    """A topology reference: queue:x (URL), table:x (name), topic:x (ARN), bucket:x (name);
    any other value is a literal."""
    kind, _, key = ref.partition(":")
    lookup = {
        "queue": lambda: queues[key]["url"],
        "table": lambda: tables[key],
        "topic": lambda: topics[key],
        "bucket": lambda: buckets[key],
    }.get(kind)
    return lookup() if lookup else ref


def worker_env(topology: dict, queues: dict, tables: dict, topics: dict, buckets: dict) -> dict[str, dict[str, str]]:
    out = {}
    for worker, w in topology["workers"].items():
        env = {
            "FLEET_QUEUE_URL": queues[w["queue"]]["url"],
            "FLEET_DLQ_URL": queues[w["queue"]]["dlq_url"],
            "FLEET_SHUTDOWN_GRACE_SECS": str(w["shutdown_grace_secs"]),
        }
        scaling = w.get("scaling", {})
        for var, key in [
            ("FLEET_MIN_CONCURRENCY", "min_concurrency"),
            ("FLEET_MAX_CONCURRENCY", "max_concurrency"),
            ("FLEET_TARGET_BACKLOG_PER_UNIT", "target_backlog_per_unit"),
            ("FLEET_SCALE_DOWN_COOLDOWN_SECS", "scale_down_cooldown_secs"),
        ]:
            if key in scaling:
                env[var] = str(scaling[key])
        for var, ref in w.get("env", {}).items():
            env[var] = resolve(ref, queues, tables, topics, buckets)
        out[worker] = env
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default=os.environ.get("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"))
    parser.add_argument("--region", default=os.environ.get("AWS_REGION", "us-east-1"))
    parser.add_argument("--prefix", default="fleet-", help="prefix of every resource name (default: fleet-)")
    parser.add_argument("--stage", default="local", help="API stage name (default: local)")
    parser.add_argument("--topology", default=str(ROOT / "topology.json"))
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    parser.add_argument("--env-file", help="write API_URL=, API_KEY=, AWS_ENDPOINT_URL=... lines to this file")
    args = parser.parse_args()

    topology = json.loads(Path(args.topology).read_text())
    p = Provisioner(args.endpoint, args.region, args.prefix, args.stage)
    queues = p.queues(topology["queues"])
    tables = p.tables(topology["tables"])
    topics = p.topics(topology.get("topics", {}))
    buckets = p.buckets(topology.get("buckets", {}))
    api = p.api(topology["api"], queues, tables)
    result = {
        "endpoint": args.endpoint,
        "region": args.region,
        "prefix": args.prefix,
        "api": api,
        "queues": queues,
        "tables": tables,
        "topics": topics,
        "buckets": buckets,
        "workers": worker_env(topology, queues, tables, topics, buckets),
    }
    if args.env_file:
        lines = {
            "API_URL": api["url"],
            "API_KEY": api["key"],
            "AWS_ENDPOINT_URL": args.endpoint,
            "AWS_REGION": args.region,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
        }
        for key, q in queues.items():
            lines[f"{key.upper().replace('-', '_')}_QUEUE_URL"] = q["url"]
            lines[f"{key.upper().replace('-', '_')}_DLQ_URL"] = q["dlq_url"]
        for key, t in tables.items():
            lines[f"{key.upper().replace('-', '_')}_TABLE"] = t
        path = Path(args.env_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
