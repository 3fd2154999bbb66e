# The workers: one image repository, and one Fargate service per worker of the topology.

locals {
  # What a worker needs from this configuration beyond the topology's references, by worker.
  worker_extra_environment = {
    "vpc-worker" = { VPC_PROJECT_TAG = local.vpc_project_tag }
    # The bucket's own customer-managed key, so result objects are SSE-KMS with it.
    "order-results-worker" = { RESULTS_KMS_KEY_ID = local.results_kms_key_arn }
    # The built-in approver's rules (approval.tf).
    "approval-simulator" = local.approver_environment
  }

  worker_settings = {
    # The workers this deployment runs (module.topology: not local-only stand-ins, not the
    # approver when an external approval service replaces it).
    for name, w in local.workers : name => {
      queue   = w.queue
      scaling = w.scaling
      grace   = w.shutdown_grace_secs
      # The topology's env, with "queue:x" (URL) / "table:x" (name) / "topic:x" (ARN) /
      # "bucket:x" (name) resolved and other values literal, plus its in-process scaling and
      # what a worker needs from this configuration (local.worker_extra_environment), and the
      # deployment's own overrides (var.worker_overrides[...].environment).
      environment = merge(
        {
          for k, ref in w.env : k => (
            startswith(ref, "queue:") ? module.queue[split(":", ref)[1]].url : lookup(local.names, ref, ref)
          )
        },
        {
          FLEET_MIN_CONCURRENCY          = tostring(w.scaling.min_concurrency)
          FLEET_MAX_CONCURRENCY          = tostring(w.scaling.max_concurrency)
          FLEET_TARGET_BACKLOG_PER_UNIT  = tostring(w.scaling.target_backlog_per_unit)
          FLEET_SCALE_DOWN_COOLDOWN_SECS = tostring(w.scaling.scale_down_cooldown_secs)
        },
        lookup(local.worker_extra_environment, name, {}),
        coalesce(try(var.worker_overrides[name].environment, null), {}),
      )
      tables    = [for ref in values(w.env) : module.table[split(":", ref)[1]].arn if startswith(ref, "table:")]
      sends_to  = [for ref in values(w.env) : module.queue[split(":", ref)[1]].arn if startswith(ref, "queue:")]
      topics    = [for ref in values(w.env) : local.arns[ref] if startswith(ref, "topic:")]
      buckets   = [for ref in values(w.env) : local.arns[ref] if startswith(ref, "bucket:")]
      cpu       = coalesce(try(var.worker_overrides[name].cpu, null), 256)
      memory    = coalesce(try(var.worker_overrides[name].memory, null), 512)
      min_tasks = coalesce(try(var.worker_overrides[name].min_tasks, null), w.scaling.min_tasks)
      max_tasks = coalesce(try(var.worker_overrides[name].max_tasks, null), w.scaling.max_tasks)
    }
  }
}

# One image for every worker (the Dockerfile builds them all; each task's command picks its
# worker), in one repository per environment: <project>-<environment>-workers.
resource "aws_ecr_repository" "workers" {
  count                = var.workers_enabled ? 1 : 0
  name                 = "${local.prefix}workers"
  image_tag_mutability = "IMMUTABLE"
  force_delete         = var.environment != "prod"
  image_scanning_configuration {
    scan_on_push = true
  }
  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = aws_kms_key.fleet.arn
  }
}

resource "aws_ecr_lifecycle_policy" "workers" {
  count      = length(aws_ecr_repository.workers)
  repository = aws_ecr_repository.workers[0].name
  policy = jsonencode({
    rules = [{
      rulePriority = 1
      description  = "keep the last 50 images"
      selection    = { tagStatus = "any", countType = "imageCountMoreThan", countNumber = 50 }
      action       = { type = "expire" }
    }]
  })
}

# The per-worker repositories of before (<project>/<worker>, the same in every environment):
# out of the state, not deleted (they hold the images that ran; delete them by hand).
removed {
  from = aws_ecr_lifecycle_policy.worker
  lifecycle {
    destroy = false
  }
}

removed {
  from = aws_ecr_repository.worker
  lifecycle {
    destroy = false
  }
}

resource "aws_ecs_cluster" "fleet" {
  count = var.workers_enabled ? 1 : 0
  name  = "${local.prefix}fleet"
  setting {
    # RunningTaskCount for the backlog-per-task scaling comes from Container Insights.
    name  = "containerInsights"
    value = "enabled"
  }
}

resource "aws_security_group" "workers" {
  count = var.workers_enabled ? 1 : 0
  name  = "${local.prefix}workers"
  #checkov:skip=CKV2_AWS_5:Attached to the worker services in module.worker (security_group_ids), which checkov does not follow.
  description = "Worker tasks: no inbound traffic; HTTPS out to AWS APIs"
  vpc_id      = var.vpc_id
  egress {
    #checkov:skip=CKV_AWS_382:Workers call regional AWS endpoints (SQS, DynamoDB, ...) whose addresses are not fixed; only HTTPS is allowed.
    description = "HTTPS to AWS APIs"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

module "worker" {
  source   = "./modules/worker"
  for_each = var.workers_enabled ? local.worker_settings : {}

  name        = "${local.prefix}${each.key}"
  worker      = each.key
  cluster_arn = aws_ecs_cluster.fleet[0].arn
  image       = "${aws_ecr_repository.workers[0].repository_url}:${var.image_tag}"
  command     = ["/usr/local/bin/${each.key}"]
  cpu         = each.value.cpu
  memory      = each.value.memory
  environment = each.value.environment
  queue = {
    name    = module.queue[each.value.queue].name
    arn     = module.queue[each.value.queue].arn
    url     = module.queue[each.value.queue].url
    dlq_arn = module.queue[each.value.queue].dlq_arn
    dlq_url = module.queue[each.value.queue].dlq_url
  }
  dynamodb_table_arns     = each.value.tables
  send_queue_arns         = each.value.sends_to
  publish_topic_arns      = each.value.topics
  write_bucket_arns       = each.value.buckets
  kms_key_arn             = aws_kms_key.fleet.arn
  subnet_ids              = var.private_subnet_ids
  security_group_ids      = [aws_security_group.workers[0].id]
  shutdown_grace_seconds  = each.value.grace
  log_retention_days      = var.log_retention_days
  min_tasks               = each.value.min_tasks
  max_tasks               = each.value.max_tasks
  target_backlog_per_task = each.value.scaling.target_backlog_per_task
  extra_policy_json       = lookup(local.worker_extra_policies, each.key, null)
}
