# scripts/terraform-local: the SQS, DynamoDB, SNS, S3 and API parts on LocalStack.
environment                = "local"
region                     = "us-east-1"
localstack_endpoint        = "http://127.0.0.1:4566"
workers_enabled            = false
expiry_pipes_enabled       = false
manage_api_gateway_account = false
# LocalStack's community edition has no Cognito; the local run sends auction cycles with
# fleetctl schedule rather than EventBridge Scheduler.
cognito_user_pool_enabled = false
schedules_enabled         = false
