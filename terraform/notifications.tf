# Operators' alarms (DLQ depth, message age) and the fleet's business notifications.

resource "aws_sns_topic" "alarms" {
  name              = "${local.prefix}alarms"
  kms_master_key_id = aws_kms_key.fleet.arn
}

resource "aws_sns_topic_subscription" "alarms" {
  for_each  = { for s in var.alarm_subscriptions : "${s.protocol}:${s.endpoint}" => s }
  topic_arn = aws_sns_topic.alarms.arn
  protocol  = each.value.protocol
  endpoint  = each.value.endpoint
}

resource "aws_sns_topic" "notifications" {
  name              = "${local.prefix}notifications"
  kms_master_key_id = aws_kms_key.fleet.arn
}

resource "aws_sns_topic_subscription" "notifications" {
  for_each  = { for s in var.notification_subscriptions : "${s.protocol}:${s.endpoint}" => s }
  topic_arn = aws_sns_topic.notifications.arn
  protocol  = each.value.protocol
  endpoint  = each.value.endpoint
}
