"""LocalStack provider plugin: DynamoDB served by moto.

LocalStack's own DynamoDB provider downloads a Java runtime and DynamoDB Local on first use,
which cannot work offline. This plugin is chosen with PROVIDER_OVERRIDE_DYNAMODB=moto and hands
every DynamoDB operation to moto's in-process backend (conditional writes, transactions,
Query/Scan and API Gateway integrations all work; TTL is stored but never enforced).
"""

from localstack.aws.api.dynamodb import DynamodbApi
from localstack.services.moto import MotoFallbackDispatcher
from localstack.services.plugins import Service, aws_provider


class MotoDynamoDBProvider(DynamodbApi):
    """Every operation falls through to moto."""


@aws_provider(api="dynamodb", name="moto")
def dynamodb_moto():
    return Service.for_provider(
        MotoDynamoDBProvider(), dispatch_table_factory=MotoFallbackDispatcher
    )
