# Tables whose expired items must be handled (posts -> archive): DynamoDB TTL deletes the item,
# its stream record (old image) goes through EventBridge Pipes to the queue the topology names,
# keeping only deletions made by TTL. The worker on that queue accepts these records.

locals {
  expiry_pipes = {
    for key, t in local.tables : key => split(":", t.expired_items_to)[1]
    if try(t.expired_items_to, null) != null && var.expiry_pipes_enabled
  }
}

data "aws_iam_policy_document" "pipes_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["pipes.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "expiry_pipe" {
  for_each           = local.expiry_pipes
  name               = "${local.prefix}${each.key}-expiry-pipe"
  assume_role_policy = data.aws_iam_policy_document.pipes_assume.json
}

resource "aws_iam_role_policy" "expiry_pipe" {
  for_each = local.expiry_pipes
  name     = "stream-to-queue"
  role     = aws_iam_role.expiry_pipe[each.key].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Effect   = "Allow"
        Action   = ["dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator", "dynamodb:ListStreams"]
        Resource = [module.table[each.key].stream_arn]
      },
      {
        Effect   = "Allow"
        Action   = ["sqs:SendMessage"]
        Resource = [module.queue[each.value].arn]
      },
      {
        Effect   = "Allow"
        Action   = ["kms:Decrypt", "kms:GenerateDataKey"]
        Resource = [aws_kms_key.fleet.arn]
      },
    ]
  })
}

resource "aws_pipes_pipe" "expiry" {
  for_each = local.expiry_pipes
  name     = "${local.prefix}${each.key}-expired"
  role_arn = aws_iam_role.expiry_pipe[each.key].arn
  source   = module.table[each.key].stream_arn
  target   = module.queue[each.value].arn
  source_parameters {
    dynamodb_stream_parameters {
      starting_position = "LATEST"
      batch_size        = 10
    }
    filter_criteria {
      filter {
        # Only deletions by TTL, not the ones a worker makes (e.g. a rejected post).
        pattern = jsonencode({
          eventName    = ["REMOVE"]
          userIdentity = { type = ["Service"], principalId = ["dynamodb.amazonaws.com"] }
        })
      }
    }
  }
  depends_on = [aws_iam_role_policy.expiry_pipe]
}
