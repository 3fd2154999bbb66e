# Monitoring beside the per-queue alarms of modules/queue (DLQ not empty, oldest message too
# old, its threshold per queue from topology.json's oldest_message_alarm_secs): alarms on what
# the workers report in their EMF lines (namespace QueueFleet, dimensions Worker and Queue,
# fleet::metrics) and on the API's 5XX answers, all to the alarms topic; and one dashboard for
# the fleet.

variable "dead_lettered_alarm_percent" {
  description = "Alarm when a worker dead-letters more than this percentage of what it receives (3 of 5 minutes)."
  type        = number
  default     = 1

  validation {
    condition     = var.dead_lettered_alarm_percent >= 0 && var.dead_lettered_alarm_percent <= 100
    error_message = "dead_lettered_alarm_percent: a percentage, 0-100."
  }
}

variable "retried_alarm_percent" {
  description = "Alarm when a worker hands back more than this percentage of what it receives for a later try (3 of 5 minutes): a dependency failing, a business wait taking long."
  type        = number
  default     = 10

  validation {
    condition     = var.retried_alarm_percent >= 0 && var.retried_alarm_percent <= 100
    error_message = "retried_alarm_percent: a percentage, 0-100."
  }
}

variable "handler_latency_alarm_p99_ms" {
  description = "Alarm when a worker's p99 handler latency, in milliseconds, is above this (3 of 5 minutes); per worker (topology name) in handler_latency_alarm_p99_ms_by_worker."
  type        = number
  default     = 5000

  validation {
    condition     = var.handler_latency_alarm_p99_ms > 0
    error_message = "handler_latency_alarm_p99_ms: milliseconds, above 0."
  }
}

variable "handler_latency_alarm_p99_ms_by_worker" {
  description = "Per worker (topology name): the p99 handler latency alarm's threshold in milliseconds, replacing handler_latency_alarm_p99_ms (e.g. vpc-worker, whose EC2 calls take seconds)."
  type        = map(number)
  default = {
    # A request is a CreateVpc and a CreateSubnet per subnet, rate-limited, each a few seconds.
    "vpc-worker" = 60000
    # A results fetch may take the source's timeout (RESULTS_SOURCE_TIMEOUT_MS, 5 s) and a
    # fan-out sends up to tens of batches.
    "results-worker" = 15000
  }

  validation {
    condition     = alltrue([for name in keys(var.handler_latency_alarm_p99_ms_by_worker) : contains(keys(local.topology.workers), name)])
    error_message = "handler_latency_alarm_p99_ms_by_worker: every key must be a worker of topology.json."
  }
}

variable "api_5xx_alarm_percent" {
  description = "Alarm when more than this percentage of the API's requests are answered 5XX (3 of 5 minutes)."
  type        = number
  default     = 1

  validation {
    condition     = var.api_5xx_alarm_percent >= 0 && var.api_5xx_alarm_percent <= 100
    error_message = "api_5xx_alarm_percent: a percentage, 0-100."
  }
}

locals {
  # fleet::metrics::NAMESPACE, and the dimensions of a worker's EMF lines: Worker is its
  # FLEET_WORKER_NAME (modules/worker: the topology name, as fleetctl status asks for it), Queue
  # the name of its queue (prefixed: one deployment's).
  metrics_namespace = "QueueFleet"
  api_name          = "${local.prefix}api" # module.api's name (main.tf)
  api_stage         = var.environment      # module.api's stage (main.tf)

  # The deployed workers (none without ECS: nothing would report).
  monitored_workers = {
    for name, w in(var.workers_enabled ? local.worker_settings : {}) : name => {
      worker     = name
      queue      = module.queue[w.queue].name
      log_group  = "/queue-fleet/${local.prefix}${name}"
      latency_ms = lookup(var.handler_latency_alarm_p99_ms_by_worker, name, var.handler_latency_alarm_p99_ms)
    }
  }

  # A rate alarm per worker and kind: what share of its receives it dead-letters, retries.
  worker_rate_alarms = merge([
    for name, w in local.monitored_workers : {
      "${name}-dead-lettered" = merge(w, {
        metric    = "dead_lettered"
        threshold = var.dead_lettered_alarm_percent
        what      = "dead-letters more than ${var.dead_lettered_alarm_percent} % of what it receives: look at the DLQ's reasons (fleetctl dlq peek ${w.queue})"
      })
      "${name}-retried" = merge(w, {
        metric    = "retried"
        threshold = var.retried_alarm_percent
        what      = "hands back more than ${var.retried_alarm_percent} % of what it receives for a later try: a dependency failing (see breaker_open) or waits taking long"
      })
    }
  ]...)

  # Periods of every alarm here: one minute, alarming when 3 of the last 5 breach.
  alarm_period             = 60
  alarm_evaluation_periods = 5
  alarm_datapoints         = 3
}

resource "aws_cloudwatch_metric_alarm" "worker_rate" {
  for_each = local.worker_rate_alarms

  alarm_name          = "${local.prefix}${each.value.worker}-${replace(each.value.metric, "_", "-")}-rate"
  alarm_description   = "${each.value.worker} ${each.value.what}."
  comparison_operator = "GreaterThanThreshold"
  threshold           = each.value.threshold
  evaluation_periods  = local.alarm_evaluation_periods
  datapoints_to_alarm = local.alarm_datapoints
  # No lines, no messages: nothing is failing.
  treat_missing_data = "notBreaching"
  alarm_actions      = [aws_sns_topic.alarms.arn]
  ok_actions         = [aws_sns_topic.alarms.arn]

  metric_query {
    id          = "rate"
    label       = "${each.value.metric} % of received"
    expression  = "IF(received > 0, 100 * failed / received, 0)"
    return_data = true
  }

  metric_query {
    id = "received"
    metric {
      namespace   = local.metrics_namespace
      metric_name = "received"
      dimensions  = { Worker = each.value.worker, Queue = each.value.queue }
      period      = local.alarm_period
      stat        = "Sum"
    }
  }

  metric_query {
    id = "failed"
    metric {
      namespace   = local.metrics_namespace
      metric_name = each.value.metric
      dimensions  = { Worker = each.value.worker, Queue = each.value.queue }
      period      = local.alarm_period
      stat        = "Sum"
    }
  }
}

# The p99 of the handler latency over every task: the metric is a distribution (EMF Values and
# Counts), so CloudWatch's percentile is the fleet's, not an average of per-task percentiles.
resource "aws_cloudwatch_metric_alarm" "handler_latency" {
  for_each = local.monitored_workers

  alarm_name          = "${local.prefix}${each.value.worker}-handler-latency-p99"
  alarm_description   = "${each.value.worker}: p99 handler latency above ${each.value.latency_ms} ms: a dependency slow, tasks starved of CPU."
  namespace           = local.metrics_namespace
  metric_name         = "handler_latency_ms"
  dimensions          = { Worker = each.value.worker, Queue = each.value.queue }
  extended_statistic  = "p99"
  period              = local.alarm_period
  evaluation_periods  = local.alarm_evaluation_periods
  datapoints_to_alarm = local.alarm_datapoints
  comparison_operator = "GreaterThanThreshold"
  threshold           = each.value.latency_ms
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
}

# API Gateway's 5XXError averages to the share of requests answered 5XX (a queue or table the
# gateway could not reach: the client was not given a 202).
resource "aws_cloudwatch_metric_alarm" "api_5xx" {
  alarm_name          = "${local.api_name}-5xx"
  alarm_description   = "More than ${var.api_5xx_alarm_percent} % of ${local.api_name}'s requests answered 5XX: clients are refused; the access log names each request_id."
  namespace           = "AWS/ApiGateway"
  metric_name         = "5XXError"
  dimensions          = { ApiName = local.api_name, Stage = local.api_stage }
  statistic           = "Average"
  period              = local.alarm_period
  evaluation_periods  = local.alarm_evaluation_periods
  datapoints_to_alarm = local.alarm_datapoints
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.api_5xx_alarm_percent / 100
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
}

locals {
  # The dashboard: the API, then the queues (AWS/SQS), then the workers (their EMF metrics, a
  # line per worker), then their finished-message lines; two widgets a row.
  api_widgets = [
    {
      title   = "API requests / min"
      metrics = [for m in ["Count", "4XXError", "5XXError"] : ["AWS/ApiGateway", m, "ApiName", local.api_name, "Stage", local.api_stage, { stat = "Sum", label = m }]]
    },
    {
      title   = "API latency (ms)"
      metrics = [for stat in ["p50", "p99"] : ["AWS/ApiGateway", "Latency", "ApiName", local.api_name, "Stage", local.api_stage, { stat = stat, label = stat }]]
    },
  ]
  queue_widgets = [
    for spec in [
      { title = "Backlog (visible, in flight)", metrics = ["ApproximateNumberOfMessagesVisible", "ApproximateNumberOfMessagesNotVisible"], dlq = false },
      { title = "Oldest message (s)", metrics = ["ApproximateAgeOfOldestMessage"], dlq = false },
      { title = "Dead-letter queues (messages)", metrics = ["ApproximateNumberOfMessagesVisible"], dlq = true },
      ] : {
      title = spec.title
      metrics = concat([
        for key, q in module.queue : [
          for m in spec.metrics : ["AWS/SQS", m, "QueueName", spec.dlq ? q.dlq_name : q.name, {
            stat  = "Maximum"
            label = m == "ApproximateNumberOfMessagesNotVisible" ? "${key} in flight" : key
          }]
        ]
      ]...)
    }
  ]
  worker_widgets = length(local.monitored_workers) == 0 ? [] : [
    for spec in [
      { title = "Received / min", metrics = ["received"], stat = "Sum" },
      { title = "Succeeded, duplicates / min", metrics = ["succeeded", "duplicates"], stat = "Sum" },
      { title = "Retried / min", metrics = ["retried"], stat = "Sum" },
      { title = "Dead-lettered / min", metrics = ["dead_lettered"], stat = "Sum" },
      { title = "Handler latency p50 (ms, all tasks)", metrics = ["handler_latency_ms"], stat = "p50" },
      { title = "Handler latency p99 (ms, all tasks)", metrics = ["handler_latency_ms"], stat = "p99" },
      { title = "In flight (max)", metrics = ["in_flight"], stat = "Maximum" },
      { title = "Concurrency (max)", metrics = ["concurrency"], stat = "Maximum" },
      { title = "Circuit breaker open (1), opened / min", metrics = ["breaker_open", "breaker_opened"], stat = "Maximum" },
      { title = "Requeued during outages / min", metrics = ["requeued"], stat = "Sum" },
      { title = "FIFO held back, parked behind a stopped group / min", metrics = ["held_back", "parked"], stat = "Sum" },
      ] : {
      title = spec.title
      metrics = concat([
        for name, w in local.monitored_workers : [
          for m in spec.metrics : [local.metrics_namespace, m, "Worker", w.worker, "Queue", w.queue, {
            stat  = spec.stat
            label = length(spec.metrics) > 1 ? "${name} ${m}" : name
          }]
        ]
      ]...)
    }
  ]
  metric_widgets = concat(local.api_widgets, local.queue_widgets, local.worker_widgets)
  # Logs Insights over the workers' JSON logs: what became of the messages, minute by minute.
  log_sources = join("", [for w in values(local.monitored_workers) : "SOURCE '${w.log_group}' | "])
  dashboard_widgets = concat(
    [for i, w in local.metric_widgets : {
      type   = "metric"
      x      = (i % 2) * 12
      y      = floor(i / 2) * 6
      width  = 12
      height = 6
      properties = {
        title   = w.title
        region  = local.region
        view    = "timeSeries"
        stacked = false
        period  = 60
        metrics = w.metrics
      }
    }],
    length(local.monitored_workers) == 0 ? [] : [{
      type   = "log"
      x      = 0
      y      = ceil(length(local.metric_widgets) / 2) * 6
      width  = 24
      height = 6
      properties = {
        title  = "Finished messages by outcome (fleet::message lines)"
        region = local.region
        view   = "timeSeries"
        query  = "${local.log_sources}fields @timestamp | filter target = \"fleet::message\" | stats count(*) by fields.outcome, bin(1m)"
      }
    }],
  )
}

resource "aws_cloudwatch_dashboard" "fleet" {
  dashboard_name = "${local.prefix}fleet"
  dashboard_body = jsonencode({ widgets = local.dashboard_widgets })
}

output "dashboard_name" {
  description = "The fleet's CloudWatch dashboard (API, queues, workers, finished messages)."
  value       = aws_cloudwatch_dashboard.fleet.dashboard_name
}
