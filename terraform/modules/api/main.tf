data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

# The role API Gateway assumes to call SQS and DynamoDB: sends to its queues, reads its tables.
resource "aws_iam_role" "api" {
  name = "${var.name}-integrations"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "apigateway.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
  tags = var.tags
}

resource "aws_iam_role_policy" "api" {
  name = "send-and-read"
  role = aws_iam_role.api.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid    = "SendToQueues"
        Effect = "Allow"
        # GetQueueAttributes: a write whose body is too large for a message asks the queue for
        # its ARN instead of sending, and answers 413 (api-gateway-mappings/fragments.json).
        Action   = ["sqs:SendMessage", "sqs:GetQueueAttributes"]
        Resource = var.queue_arns
      },
      {
        Sid      = "ReadTables"
        Effect   = "Allow"
        Action   = ["dynamodb:GetItem", "dynamodb:Query"]
        Resource = concat(var.table_arns, [for arn in var.table_arns : "${arn}/index/*"])
      },
      {
        Sid      = "UseTheKey"
        Effect   = "Allow"
        Action   = ["kms:GenerateDataKey", "kms:Decrypt"]
        Resource = [var.kms_key_arn]
      },
    ]
  })
}

# The same document the local stack imports, with this deployment's names (and the Cognito
# authorizer when there are user pools).
module "document" {
  source        = "../api-document"
  document_path = var.document_path
  template_vars = merge(var.template_vars, {
    region       = data.aws_region.current.name
    account_id   = data.aws_caller_identity.current.account_id
    api_role_arn = aws_iam_role.api.arn
  })
  cognito_user_pool_arns = var.cognito_user_pool_arns
}

locals {
  body = module.document.body
}

resource "aws_api_gateway_rest_api" "this" {
  name              = var.name
  body              = local.body
  put_rest_api_mode = "overwrite"
  fail_on_warnings  = true
  endpoint_configuration {
    types = ["REGIONAL"]
  }
  tags = var.tags
  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_api_gateway_deployment" "this" {
  rest_api_id = aws_api_gateway_rest_api.this.id
  triggers = {
    redeployment = sha1(local.body)
  }
  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_cloudwatch_log_group" "access" {
  name              = "/aws/apigateway/${var.name}/access"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

resource "aws_api_gateway_stage" "this" {
  #checkov:skip=CKV_AWS_120:No response caching: reads must reflect the workers' writes at once, and writes are never cached.
  #checkov:skip=CKV2_AWS_51:Clients authenticate with API keys over TLS; the integrations are AWS services, not a backend that checks client certificates.
  #checkov:skip=CKV2_AWS_29:The WAF web ACL is optional (var.waf_enabled), off for the local stack where WAF is not emulated.
  #checkov:skip=CKV2_AWS_77:The optional web ACL includes AWSManagedRulesKnownBadInputsRuleSet (Log4j); checkov cannot follow the conditional association.
  rest_api_id          = aws_api_gateway_rest_api.this.id
  deployment_id        = aws_api_gateway_deployment.this.id
  stage_name           = var.stage_name
  xray_tracing_enabled = true
  access_log_settings {
    destination_arn = aws_cloudwatch_log_group.access.arn
    format = jsonencode({
      requestId      = "$context.requestId"
      ip             = "$context.identity.sourceIp"
      apiKeyId       = "$context.identity.apiKeyId"
      httpMethod     = "$context.httpMethod"
      resourcePath   = "$context.resourcePath"
      status         = "$context.status"
      integration    = "$context.integration.status"
      latencyMs      = "$context.responseLatency"
      requestTime    = "$context.requestTimeEpoch"
      validatorError = "$context.error.validationErrorString"
    })
  }
  tags = var.tags
}

resource "aws_api_gateway_method_settings" "all" {
  rest_api_id = aws_api_gateway_rest_api.this.id
  stage_name  = aws_api_gateway_stage.this.stage_name
  method_path = "*/*"
  settings {
    #checkov:skip=CKV_AWS_225:No response caching (see the stage).
    metrics_enabled        = true
    logging_level          = "ERROR"
    throttling_rate_limit  = var.throttle_rate_limit
    throttling_burst_limit = var.throttle_burst_limit
    caching_enabled        = false
  }
}

resource "aws_api_gateway_usage_plan" "this" {
  name = "${var.name}-clients"
  api_stages {
    api_id = aws_api_gateway_rest_api.this.id
    stage  = aws_api_gateway_stage.this.stage_name
  }
  throttle_settings {
    rate_limit  = var.throttle_rate_limit
    burst_limit = var.throttle_burst_limit
  }
  tags = var.tags
}

resource "aws_api_gateway_api_key" "client" {
  for_each = toset(var.api_clients)
  name     = "${var.name}-${each.key}"
  enabled  = true
  tags     = var.tags
}

resource "aws_api_gateway_usage_plan_key" "client" {
  for_each      = aws_api_gateway_api_key.client
  key_id        = each.value.id
  key_type      = "API_KEY"
  usage_plan_id = aws_api_gateway_usage_plan.this.id
}

# The web ACL (when waf_enabled). Body size: the AWS common rule set blocks every body over
# 8 KB (SizeRestrictions_BODY), but a post may carry 10,000 characters and an order batch 100
# records, both over 8 KB. That rule only counts here (it still labels the request), and the
# next rule blocks a labelled request unless it goes to a route that takes large bodies
# (var.waf_large_body_routes): everywhere else the 8 KB limit stands. API Gateway's own limit
# (10 MB) and the routes' JSON schemas bound the large ones.
resource "aws_wafv2_web_acl" "this" {
  count = var.waf_enabled ? 1 : 0
  name  = var.name
  scope = "REGIONAL"
  default_action {
    allow {}
  }
  rule {
    name     = "aws-common"
    priority = 1
    override_action {
      none {}
    }
    statement {
      managed_rule_group_statement {
        vendor_name = "AWS"
        name        = "AWSManagedRulesCommonRuleSet"
        rule_action_override {
          name = "SizeRestrictions_BODY"
          action_to_use {
            count {}
          }
        }
      }
    }
    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${var.name}-aws-common"
      sampled_requests_enabled   = true
    }
  }
  rule {
    name     = "body-over-8k-outside-large-body-routes"
    priority = 2
    action {
      block {}
    }
    statement {
      and_statement {
        statement {
          label_match_statement {
            scope = "LABEL"
            key   = "awswaf:managed:aws:core-rule-set:SizeRestrictions_Body"
          }
        }
        statement {
          not_statement {
            statement {
              regex_match_statement {
                # The path is one of the routes (/<stage>/posts on the execute-api host,
                # /posts behind a custom domain), not any path ending in its name
                # (/payments/posts).
                regex_string = "^(/[^/]+)?/(${join("|", var.waf_large_body_routes)})/?$"
                field_to_match {
                  uri_path {}
                }
                text_transformation {
                  priority = 0
                  type     = "NONE"
                }
              }
            }
          }
        }
      }
    }
    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${var.name}-body-over-8k"
      sampled_requests_enabled   = true
    }
  }
  rule {
    name     = "aws-known-bad-inputs"
    priority = 3
    override_action {
      none {}
    }
    statement {
      managed_rule_group_statement {
        vendor_name = "AWS"
        name        = "AWSManagedRulesKnownBadInputsRuleSet"
      }
    }
    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${var.name}-known-bad-inputs"
      sampled_requests_enabled   = true
    }
  }
  rule {
    name     = "aws-sqli"
    priority = 4
    override_action {
      none {}
    }
    statement {
      managed_rule_group_statement {
        vendor_name = "AWS"
        name        = "AWSManagedRulesSQLiRuleSet"
      }
    }
    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${var.name}-sqli"
      sampled_requests_enabled   = true
    }
  }
  rule {
    name     = "rate-per-ip"
    priority = 5
    action {
      block {}
    }
    statement {
      rate_based_statement {
        limit              = var.waf_rate_limit
        aggregate_key_type = "IP"
      }
    }
    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${var.name}-rate-per-ip"
      sampled_requests_enabled   = true
    }
  }
  visibility_config {
    cloudwatch_metrics_enabled = true
    metric_name                = var.name
    sampled_requests_enabled   = true
  }
  tags = var.tags
}

resource "aws_cloudwatch_log_group" "waf" {
  count = var.waf_enabled ? 1 : 0
  # WAF requires this name prefix.
  name              = "aws-waf-logs-${var.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

resource "aws_wafv2_web_acl_logging_configuration" "this" {
  count                   = var.waf_enabled ? 1 : 0
  resource_arn            = aws_wafv2_web_acl.this[0].arn
  log_destination_configs = [aws_cloudwatch_log_group.waf[0].arn]
}

resource "aws_wafv2_web_acl_association" "this" {
  count        = var.waf_enabled ? 1 : 0
  resource_arn = aws_api_gateway_stage.this.arn
  web_acl_arn  = aws_wafv2_web_acl.this[0].arn
}
