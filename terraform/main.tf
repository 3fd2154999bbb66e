# The fleet on AWS, from the same two files the local stack is provisioned from:
# ../topology.json (queues, tables, workers, API variables) and the OpenAPI document it names.

data "aws_caller_identity" "current" {}
data "aws_region" "current" {}
data "aws_partition" "current" {}

# What this deployment runs of the topology: every queue, the workers it deploys (the built-in
# approver unless approval_service = "external"), and the check that every queue has a consumer.
module "topology" {
  source            = "./modules/topology"
  topology          = local.topology
  external_services = var.approval_service == "external" ? ["approval_service"] : []
}

locals {
  topology = jsondecode(file("${path.module}/../topology.json"))
  prefix   = "${var.project}-${var.environment}-"

  queues  = module.topology.queues
  tables  = local.topology.tables
  workers = module.topology.workers

  # "queue:NAME" / "table:NAME" references of the topology, resolved to deployed names.
  names = merge(
    { for key, q in module.queue : "queue:${key}" => q.name },
    { for key, t in module.table : "table:${key}" => t.name },
    # The topology's topics and buckets, made in notifications.tf and buckets.tf.
    { for key, t in aws_sns_topic.topic : "topic:${key}" => t.arn },
    { for key, b in aws_s3_bucket.bucket : "bucket:${key}" => b.bucket },
  )
  arns = merge(
    { for key, t in aws_sns_topic.topic : "topic:${key}" => t.arn },
    { for key, b in aws_s3_bucket.bucket : "bucket:${key}" => b.arn },
  )
}

# One customer-managed key for the environment's queues, tables, topics, logs and bucket.
resource "aws_kms_key" "fleet" {
  description             = "${local.prefix}fleet: queues, tables, topics, logs, results"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
}

resource "aws_kms_alias" "fleet" {
  name          = "alias/${local.prefix}fleet"
  target_key_id = aws_kms_key.fleet.key_id
}

locals {
  account_id = data.aws_caller_identity.current.account_id
  region     = data.aws_region.current.name
  partition  = data.aws_partition.current.partition
  # AWS services that use the key on the fleet's behalf (not through a caller's role), each only
  # for this account's resources (aws:SourceAccount, aws:SourceArn: no confused deputy) and only
  # with the operations it needs.
  kms_service_grants = {
    # Log groups (workers, API access logs, WAF logs). CloudWatch Logs puts the log group's ARN
    # in the encryption context, the documented condition for this key; the source conditions
    # apply where Logs sends them.
    CloudWatchLogs = {
      service = "logs.${local.region}.amazonaws.com"
      actions = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
      source  = "IfExists"
      extra = [{
        test     = "ArnLike"
        variable = "kms:EncryptionContext:aws:logs:arn"
        values   = ["arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:*"]
      }]
      source_arns = ["arn:${local.partition}:logs:${local.region}:${local.account_id}:*"]
    }
    # Alarms publish to the encrypted alarms topic.
    CloudWatchAlarms = {
      service     = "cloudwatch.amazonaws.com"
      actions     = ["kms:Decrypt", "kms:GenerateDataKey*"]
      source      = ""
      extra       = []
      source_arns = ["arn:${local.partition}:cloudwatch:${local.region}:${local.account_id}:alarm:*"]
    }
    # Topics deliver to encrypted queues (e.g. a notifications subscription on SQS).
    SnsTopics = {
      service     = "sns.amazonaws.com"
      actions     = ["kms:Decrypt", "kms:GenerateDataKey*"]
      source      = ""
      extra       = []
      source_arns = ["arn:${local.partition}:sns:${local.region}:${local.account_id}:*"]
    }
    SqsQueues = {
      service     = "sqs.amazonaws.com"
      actions     = ["kms:Decrypt", "kms:GenerateDataKey*"]
      source      = ""
      extra       = []
      source_arns = ["arn:${local.partition}:sqs:${local.region}:${local.account_id}:*"]
    }
  }
}

data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_111:In a key policy, resource "*" is the key itself; the account delegates to IAM policies, which name the key.
  #checkov:skip=CKV_AWS_356:In a key policy, resource "*" is the key itself.
  #checkov:skip=CKV_AWS_109:The account root statement is the standard key policy that lets IAM policies govern the key.
  statement {
    sid       = "AccountAdministersThroughIam"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }
  dynamic "statement" {
    for_each = local.kms_service_grants
    content {
      sid       = statement.key
      actions   = statement.value.actions
      resources = ["*"]
      principals {
        type        = "Service"
        identifiers = [statement.value.service]
      }
      condition {
        test     = "StringEquals${statement.value.source}"
        variable = "aws:SourceAccount"
        values   = [local.account_id]
      }
      condition {
        test     = "ArnLike${statement.value.source}"
        variable = "aws:SourceArn"
        values   = statement.value.source_arns
      }
      dynamic "condition" {
        for_each = statement.value.extra
        content {
          test     = condition.value.test
          variable = condition.value.variable
          values   = condition.value.values
        }
      }
    }
  }
  # A real approval service in another account (approval_service = "external" with
  # approval_service_principal_arns) reads and answers on the encrypted approval queues.
  dynamic "statement" {
    for_each = length(local.approval_external_principals) > 0 ? [1] : []
    content {
      sid       = "ExternalApprovalServiceThroughSqs"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = ["*"]
      principals {
        type        = "AWS"
        identifiers = local.approval_external_principals
      }
      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["sqs.${local.region}.amazonaws.com"]
      }
    }
  }
}

module "queue" {
  source   = "./modules/queue"
  for_each = local.queues

  name                         = "${local.prefix}${each.key}"
  fifo                         = try(each.value.fifo, false)
  visibility_timeout_seconds   = each.value.visibility_timeout_secs
  max_receive_count            = each.value.max_receive_count
  message_retention_seconds    = each.value.message_retention_secs
  dlq_retention_seconds        = each.value.dlq_retention_secs
  kms_key_arn                  = aws_kms_key.fleet.arn
  alarm_topic_arn              = aws_sns_topic.alarms.arn
  oldest_message_alarm_seconds = try(each.value.oldest_message_alarm_secs, var.oldest_message_alarm_seconds)
}

module "table" {
  source   = "./modules/table"
  for_each = local.tables

  name                = "${local.prefix}${each.key}"
  partition_key       = each.value.partition_key
  sort_key            = try(each.value.sort_key, null)
  ttl_attribute       = try(each.value.ttl_attribute, null)
  indexes             = try(each.value.indexes, {})
  stream_enabled      = try(each.value.expired_items_to, null) != null
  kms_key_arn         = aws_kms_key.fleet.arn
  deletion_protection = var.deletion_protection
}

module "api" {
  source = "./modules/api"

  name          = "${local.prefix}api"
  document_path = "${path.module}/../${local.topology.api.document}"
  template_vars = { for var_name, ref in local.topology.api.template_vars : var_name => local.names[ref] }
  # The queues and tables the document's integrations name, nothing more.
  queue_arns = [for ref in values(local.topology.api.template_vars) : module.queue[split(":", ref)[1]].arn if startswith(ref, "queue:")]
  table_arns = [for ref in values(local.topology.api.template_vars) : module.table[split(":", ref)[1]].arn if startswith(ref, "table:")]

  kms_key_arn          = aws_kms_key.fleet.arn
  stage_name           = var.environment
  throttle_rate_limit  = var.api_throttle_rate_limit
  throttle_burst_limit = var.api_throttle_burst_limit
  api_clients          = var.api_clients
  log_retention_days   = var.log_retention_days
  waf_enabled          = var.waf_enabled

  cognito_user_pool_arns = concat(aws_cognito_user_pool.api[*].arn, var.cognito_user_pool_arns)
}

# Stage logs need an account-wide CloudWatch role for API Gateway (once per account and region).
resource "aws_iam_role" "api_gateway_logs" {
  count = var.manage_api_gateway_account ? 1 : 0
  name  = "${local.prefix}apigateway-logs"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "apigateway.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
}

resource "aws_iam_role_policy_attachment" "api_gateway_logs" {
  count      = var.manage_api_gateway_account ? 1 : 0
  role       = aws_iam_role.api_gateway_logs[0].name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs"
}

resource "aws_api_gateway_account" "this" {
  count               = var.manage_api_gateway_account ? 1 : 0
  cloudwatch_role_arn = aws_iam_role.api_gateway_logs[0].arn
}
