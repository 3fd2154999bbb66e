# The topology's schedules: EventBridge Scheduler sends each one's body to its queue at its
# rate (e.g. an auction cycle every 5 minutes). Locally, `fleetctl schedule` does the same.
# <aws.scheduler.scheduled-time> in a body is filled in by the scheduler.

locals {
  schedules = var.schedules_enabled ? try(local.topology.schedules, {}) : {}
}

resource "aws_scheduler_schedule_group" "fleet" {
  count = length(local.schedules) > 0 ? 1 : 0
  name  = "${local.prefix}fleet"
}

resource "aws_scheduler_schedule" "topology" {
  for_each    = local.schedules
  name        = "${local.prefix}${each.key}"
  group_name  = aws_scheduler_schedule_group.fleet[0].name
  description = each.value.description

  # rate() counts whole minutes; the topology's every_secs is a multiple of 60 (a unit test
  # of fleet::topology checks it).
  schedule_expression          = each.value.every_secs == 60 ? "rate(1 minute)" : "rate(${each.value.every_secs / 60} minutes)"
  schedule_expression_timezone = "UTC"
  kms_key_arn                  = aws_kms_key.fleet.arn

  flexible_time_window {
    mode = "OFF"
  }

  target {
    arn      = module.queue[each.value.queue].arn
    role_arn = aws_iam_role.scheduler[0].arn
    input    = jsonencode(each.value.body)

    retry_policy {
      # A cycle not sent within 5 minutes is superseded by the next one.
      maximum_event_age_in_seconds = 300
      maximum_retry_attempts       = 10
    }
  }
}

data "aws_iam_policy_document" "scheduler_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["scheduler.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

resource "aws_iam_role" "scheduler" {
  count              = length(local.schedules) > 0 ? 1 : 0
  name               = "${local.prefix}scheduler"
  assume_role_policy = data.aws_iam_policy_document.scheduler_assume.json
}

data "aws_iam_policy_document" "scheduler" {
  statement {
    sid       = "SendScheduledMessages"
    actions   = ["sqs:SendMessage"]
    resources = distinct([for s in values(local.schedules) : module.queue[s.queue].arn])
  }
  statement {
    sid       = "EncryptedQueues"
    actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
    resources = [aws_kms_key.fleet.arn]
  }
}

resource "aws_iam_role_policy" "scheduler" {
  count  = length(local.schedules) > 0 ? 1 : 0
  name   = "send-scheduled-messages"
  role   = aws_iam_role.scheduler[0].id
  policy = data.aws_iam_policy_document.scheduler.json
}
