# Operators' alarms (DLQ depth, message age) and the fleet's business notifications.

resource "aws_sns_topic" "alarms" {
  name              = "${local.prefix}alarms"
  kms_master_key_id = aws_kms_key.fleet.arn
}

resource "aws_sns_topic_subscription" "alarms" {
  # Keyed by a hash: an endpoint (a chat webhook's URL holds its token) never appears in a
  # resource address, a plan or the deploy log; the variable is sensitive.
  for_each  = nonsensitive(toset([for s in var.alarm_subscriptions : sha256("${s.protocol}:${s.endpoint}")]))
  topic_arn = aws_sns_topic.alarms.arn
  protocol  = one([for s in var.alarm_subscriptions : s.protocol if sha256("${s.protocol}:${s.endpoint}") == each.key])
  endpoint  = one([for s in var.alarm_subscriptions : s.endpoint if sha256("${s.protocol}:${s.endpoint}") == each.key])
}

# The topology's topics (topology.json "topics": the business notifications). Workers reach a
# topic through "topic:<key>" in their env (main.tf resolves it).
resource "aws_sns_topic" "topic" {
  for_each          = local.topology.topics
  name              = "${local.prefix}${each.key}"
  kms_master_key_id = aws_kms_key.fleet.arn
}

moved {
  from = aws_sns_topic.notifications
  to   = aws_sns_topic.topic["notifications"]
}

resource "aws_sns_topic_subscription" "notifications" {
  # Keyed by a hash: an endpoint (a chat webhook's URL holds its token) never appears in a
  # resource address, a plan or the deploy log; the variable is sensitive.
  for_each  = nonsensitive(toset([for s in var.notification_subscriptions : sha256("${s.protocol}:${s.endpoint}")]))
  topic_arn = aws_sns_topic.topic["notifications"].arn
  protocol  = one([for s in var.notification_subscriptions : s.protocol if sha256("${s.protocol}:${s.endpoint}") == each.key])
  endpoint  = one([for s in var.notification_subscriptions : s.endpoint if sha256("${s.protocol}:${s.endpoint}") == each.key])
}
