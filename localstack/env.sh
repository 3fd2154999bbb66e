# Sourced by the LocalStack scripts: where things are and how LocalStack is configured.
# Verified settings: ../shared/docs/localstack.md in the steering repo; summary in README.md.
FLEET_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LS_DIR="$FLEET_ROOT/.localstack"
LS_VENV="$LS_DIR/venv"
LS_PIDFILE="$LS_DIR/localstack.pid"
LS_LOG="$LS_DIR/localstack.log"
LS_PORT="${LOCALSTACK_PORT:-4566}"
LS_URL="http://127.0.0.1:$LS_PORT"

export GATEWAY_LISTEN="127.0.0.1:$LS_PORT"
export GATEWAY_SERVER="${GATEWAY_SERVER:-hypercorn}"   # binds loopback only
export LOCALSTACK_HOST="127.0.0.1:$LS_PORT"
export SQS_ENDPOINT_STRATEGY=off                       # queue URLs on 127.0.0.1
export DNS_ADDRESS=0 SKIP_SSL_CERT_DOWNLOAD=1 DISABLE_EVENTS=1
export LOCALSTACK_VOLUME_DIR="$LS_DIR/volume"
export PROVIDER_OVERRIDE_DYNAMODB=moto                 # localstack/dynamodb-moto-provider
# LocalStack's SQS otherwise puts a CloudWatch metric for every message it sends, receives and
# deletes, on its one Python core: 16.5 instead of 8 CPU-ms per payment here, half the drain
# rate. Nothing reads them: the one SQS metric fleetctl reads, ApproximateAgeOfOldestMessage,
# is not among those LocalStack publishes (its test puts that datum itself).
export SQS_DISABLE_CLOUDWATCH_METRICS="${SQS_DISABLE_CLOUDWATCH_METRICS:-1}"
export SERVICES="sqs,dynamodb,apigateway,iam,sts,sns,s3,ec2,cloudwatch,logs,events,scheduler,kms"

ls_healthy() {
  curl -fsS --max-time 2 "$LS_URL/_localstack/health" >/dev/null 2>&1
}
