locals {
  suffix = var.fifo ? ".fifo" : ""
  alarms = var.alarms_enabled ? {
    dlq_not_empty = {
      description = "Messages in the dead-letter queue of ${var.name}: inspect with `fleetctl dlq peek`, redrive with `fleetctl dlq redrive`."
      queue       = aws_sqs_queue.dlq.name
      metric      = "ApproximateNumberOfMessagesVisible"
      threshold   = 0
      statistic   = "Maximum"
    }
    oldest_message = {
      description = "The oldest message in ${var.name} waits longer than ${var.oldest_message_alarm_seconds} s: workers are down, failing or too few."
      queue       = aws_sqs_queue.this.name
      metric      = "ApproximateAgeOfOldestMessage"
      threshold   = var.oldest_message_alarm_seconds
      statistic   = "Maximum"
    }
  } : {}
}

resource "aws_sqs_queue" "dlq" {
  name                              = "${var.name}-dlq${local.suffix}"
  fifo_queue                        = var.fifo ? true : null
  message_retention_seconds         = var.dlq_retention_seconds
  sqs_managed_sse_enabled           = var.kms_key_arn == null ? true : null
  kms_master_key_id                 = var.kms_key_arn
  kms_data_key_reuse_period_seconds = var.kms_key_arn == null ? null : 3600
  tags                              = var.tags
}

resource "aws_sqs_queue" "this" {
  name                              = "${var.name}${local.suffix}"
  fifo_queue                        = var.fifo ? true : null
  content_based_deduplication       = var.fifo ? false : null
  deduplication_scope               = var.fifo ? "messageGroup" : null
  fifo_throughput_limit             = var.fifo ? "perMessageGroupId" : null
  visibility_timeout_seconds        = var.visibility_timeout_seconds
  message_retention_seconds         = var.message_retention_seconds
  receive_wait_time_seconds         = 20
  sqs_managed_sse_enabled           = var.kms_key_arn == null ? true : null
  kms_master_key_id                 = var.kms_key_arn
  kms_data_key_reuse_period_seconds = var.kms_key_arn == null ? null : 3600
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dlq.arn
    maxReceiveCount     = var.max_receive_count
  })
  tags = var.tags
}

# Only this queue may send to the DLQ through SQS's redrive.
resource "aws_sqs_queue_redrive_allow_policy" "dlq" {
  queue_url = aws_sqs_queue.dlq.id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.this.arn]
  })
}

resource "aws_cloudwatch_metric_alarm" "this" {
  for_each = local.alarms

  alarm_name          = "${each.value.queue}-${replace(each.key, "_", "-")}"
  alarm_description   = each.value.description
  namespace           = "AWS/SQS"
  metric_name         = each.value.metric
  dimensions          = { QueueName = each.value.queue }
  statistic           = each.value.statistic
  period              = 60
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = each.value.threshold
  treat_missing_data  = "notBreaching"
  alarm_actions       = [var.alarm_topic_arn]
  ok_actions          = [var.alarm_topic_arn]
  tags                = var.tags
}
