data "aws_region" "current" {}

locals {
  cluster_name = element(split("/", var.cluster_arn), 1)
  environment = merge(var.environment, {
    FLEET_QUEUE_URL           = var.queue.url
    FLEET_DLQ_URL             = var.queue.dlq_url
    FLEET_HEALTH_FILE         = "/run/fleet/health"
    FLEET_HEALTH_MAX_AGE_SECS = tostring(var.health_max_age_seconds)
    FLEET_SHUTDOWN_GRACE_SECS = tostring(var.shutdown_grace_seconds)
    FLEET_LOG_FORMAT          = "json"
    FLEET_WORKER_NAME         = var.worker
    # Each process divides the backlog by the number of tasks it expects at full load.
    FLEET_SCALER_PROCESSES = tostring(max(var.min_tasks, 1))
  })
}

resource "aws_cloudwatch_log_group" "this" {
  name              = "/queue-fleet/${var.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

data "aws_iam_policy_document" "ecs_tasks" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

# Pulls the image and writes the logs; nothing else.
resource "aws_iam_role" "execution" {
  name               = "${var.name}-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks.json
  tags               = var.tags
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

# What the worker itself may do: consume its queue, dead-letter, write its tables.
resource "aws_iam_role" "task" {
  name               = "${var.name}-task"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks.json
  tags               = var.tags
}

locals {
  grants = {
    WriteTables = {
      actions = [
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "dynamodb:ConditionCheckItem",
        "dynamodb:Scan",
      ]
      resources = var.dynamodb_table_arns
    }
    SendDownstream = { actions = ["sqs:SendMessage"], resources = var.send_queue_arns }
    Notify         = { actions = ["sns:Publish"], resources = var.publish_topic_arns }
    WriteObjects   = { actions = ["s3:PutObject"], resources = [for arn in var.write_bucket_arns : "${arn}/*"] }
  }
}

data "aws_iam_policy_document" "task" {
  statement {
    sid = "ConsumeQueue"
    # SendMessage: during a dependency outage the engine puts a message whose receives ran
    # out back on its own queue as a fresh copy instead of dead-lettering it (ride-out).
    actions = [
      "sqs:ReceiveMessage",
      "sqs:DeleteMessage",
      "sqs:ChangeMessageVisibility",
      "sqs:GetQueueAttributes",
      "sqs:SendMessage",
    ]
    resources = [var.queue.arn]
  }
  statement {
    sid       = "DeadLetter"
    actions   = ["sqs:SendMessage", "sqs:GetQueueUrl", "sqs:GetQueueAttributes"]
    resources = [var.queue.dlq_arn]
  }
  # What the worker reaches beyond its queue, granted only when it has any.
  dynamic "statement" {
    for_each = { for sid, grant in local.grants : sid => grant if length(grant.resources) > 0 }
    content {
      sid       = statement.key
      actions   = statement.value.actions
      resources = statement.value.resources
    }
  }
  statement {
    sid       = "UseTheKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.kms_key_arn]
  }
}

resource "aws_iam_role_policy" "task" {
  name   = "worker"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.task.json
}

# What only this worker needs beyond queues, tables, topics and buckets (e.g. EC2 for
# vpc-worker), written by the caller.
resource "aws_iam_role_policy" "extra" {
  count  = var.extra_policy_json == null ? 0 : 1
  name   = "worker-extra"
  role   = aws_iam_role.task.id
  policy = var.extra_policy_json
}

resource "aws_ecs_task_definition" "this" {
  family                   = var.name
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.cpu
  memory                   = var.memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }
  container_definitions = jsonencode([{
    name                   = var.name
    image                  = var.image
    command                = var.command
    essential              = true
    readonlyRootFilesystem = true
    user                   = "65532:65532"
    # SIGTERM, then the worker's grace period, then a margin before SIGKILL.
    stopTimeout = min(var.shutdown_grace_seconds + 10, 120)
    environment = [for k, v in local.environment : { name = k, value = v }]
    # The engine writes the time of its last progress to FLEET_HEALTH_FILE (on a writable
    # task volume: the root file system is read-only); the worker binary itself checks it
    # (distroless: no shell, no curl). Unhealthy tasks are replaced by the service.
    mountPoints = [{ sourceVolume = "health", containerPath = "/run/fleet", readOnly = false }]
    healthCheck = {
      command     = concat(["CMD"], var.command, ["--health-check"])
      interval    = 30
      timeout     = 5
      retries     = 3
      startPeriod = 60
    }
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.this.name
        awslogs-region        = data.aws_region.current.name
        awslogs-stream-prefix = var.name
      }
    }
  }])
  volume {
    name = "health"
  }
  tags = var.tags
}

resource "aws_ecs_service" "this" {
  # The first tasks need their roles' policies to pull the image and reach their queue.
  depends_on              = [aws_iam_role_policy_attachment.execution, aws_iam_role_policy.task]
  name                    = var.name
  cluster                 = var.cluster_arn
  task_definition         = aws_ecs_task_definition.this.arn
  launch_type             = "FARGATE"
  platform_version        = "LATEST"
  desired_count           = var.min_tasks
  enable_ecs_managed_tags = true
  propagate_tags          = "SERVICE"
  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = var.security_group_ids
    assign_public_ip = false
  }
  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }
  lifecycle {
    # Application Auto Scaling owns the task count.
    ignore_changes = [desired_count]
  }
  tags = var.tags
}

resource "aws_appautoscaling_target" "this" {
  service_namespace  = "ecs"
  resource_id        = "service/${local.cluster_name}/${aws_ecs_service.this.name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = var.min_tasks
  max_capacity       = var.max_tasks
}

# Backlog per task = (visible + in flight) / running tasks, kept near the target: the same
# formula as the in-process scaler and KEDA (docs/engine.md, "Scaling by queue depth").
resource "aws_appautoscaling_policy" "backlog_per_task" {
  name               = "${var.name}-backlog-per-task"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.this.service_namespace
  resource_id        = aws_appautoscaling_target.this.resource_id
  scalable_dimension = aws_appautoscaling_target.this.scalable_dimension
  target_tracking_scaling_policy_configuration {
    target_value       = var.target_backlog_per_task
    scale_in_cooldown  = 120
    scale_out_cooldown = 30
    customized_metric_specification {
      metrics {
        id          = "visible"
        return_data = false
        metric_stat {
          stat = "Sum"
          metric {
            namespace   = "AWS/SQS"
            metric_name = "ApproximateNumberOfMessagesVisible"
            dimensions {
              name  = "QueueName"
              value = var.queue.name
            }
          }
        }
      }
      metrics {
        id          = "in_flight"
        return_data = false
        metric_stat {
          stat = "Sum"
          metric {
            namespace   = "AWS/SQS"
            metric_name = "ApproximateNumberOfMessagesNotVisible"
            dimensions {
              name  = "QueueName"
              value = var.queue.name
            }
          }
        }
      }
      metrics {
        id          = "tasks"
        return_data = false
        metric_stat {
          stat = "Average"
          metric {
            namespace   = "ECS/ContainerInsights"
            metric_name = "RunningTaskCount"
            dimensions {
              name  = "ClusterName"
              value = local.cluster_name
            }
            dimensions {
              name  = "ServiceName"
              value = aws_ecs_service.this.name
            }
          }
        }
      }
      metrics {
        id          = "backlog_per_task"
        label       = "messages (visible + in flight) per running task"
        expression  = "IF(tasks > 0, (visible + in_flight) / tasks, visible + in_flight)"
        return_data = true
      }
    }
  }
}

# From zero, target tracking has no task to divide by: one message wakes one task.
resource "aws_appautoscaling_policy" "wake_from_zero" {
  count              = var.min_tasks == 0 ? 1 : 0
  name               = "${var.name}-wake-from-zero"
  policy_type        = "StepScaling"
  service_namespace  = aws_appautoscaling_target.this.service_namespace
  resource_id        = aws_appautoscaling_target.this.resource_id
  scalable_dimension = aws_appautoscaling_target.this.scalable_dimension
  step_scaling_policy_configuration {
    adjustment_type         = "ExactCapacity"
    cooldown                = 60
    metric_aggregation_type = "Maximum"
    step_adjustment {
      metric_interval_lower_bound = 0
      scaling_adjustment          = 1
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "wake_from_zero" {
  count               = var.min_tasks == 0 ? 1 : 0
  alarm_name          = "${var.name}-queue-not-empty"
  alarm_description   = "Messages wait in ${var.queue.name} while ${var.name} may have no task."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = var.queue.name }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  alarm_actions       = [aws_appautoscaling_policy.wake_from_zero[0].arn]
  tags                = var.tags
}
