variable "name" {
  description = "Name of the worker's AWS resources (service, task family, roles, log group), unique in the account: the deployment's prefix and the worker."
  type        = string
}

variable "worker" {
  description = "The worker's topology name (its binary): FLEET_WORKER_NAME, so its logs, its metrics' Worker dimension and its dead letters' fleet.worker say the same in every deployment (the Queue dimension, a prefixed name, tells deployments apart)."
  type        = string
}

variable "cluster_arn" {
  description = "ECS cluster running the service."
  type        = string
}

variable "image" {
  description = "Container image of the worker (repository:tag)."
  type        = string
}

variable "command" {
  description = "The container's command: the worker's binary in the fleet image, e.g. [\"/usr/local/bin/payments-worker\"]. The image carries every worker and has no default command; the health check runs the same binary with --health-check."
  type        = list(string)

  validation {
    condition     = length(var.command) > 0
    error_message = "command: the worker binary to run, e.g. [\"/usr/local/bin/payments-worker\"]."
  }
}

variable "cpu" {
  description = "Fargate CPU units per task (256 = 0.25 vCPU)."
  type        = number
  default     = 256
}

variable "memory" {
  description = "Fargate memory per task, in MiB."
  type        = number
  default     = 512
}

variable "environment" {
  description = "Environment of the worker (FLEET_* settings and its own, e.g. table names)."
  type        = map(string)
  default     = {}
}

variable "queue" {
  description = "The queue the worker consumes and its dead-letter queue."
  type = object({
    name    = string
    arn     = string
    url     = string
    dlq_arn = string
    dlq_url = string
  })
}

variable "dynamodb_table_arns" {
  description = "Tables the worker writes (item reads and writes, TransactWriteItems)."
  type        = list(string)
  default     = []
}

variable "send_queue_arns" {
  description = "Other queues the worker sends to (sqs:SendMessage), e.g. a downstream step."
  type        = list(string)
  default     = []
}

variable "publish_topic_arns" {
  description = "SNS topics the worker publishes to."
  type        = list(string)
  default     = []
}

variable "write_bucket_arns" {
  description = "S3 buckets the worker writes objects to (s3:PutObject on their objects)."
  type        = list(string)
  default     = []
}

variable "kms_key_arn" {
  description = "KMS key of the queues and tables."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets of the tasks (they reach AWS through NAT or VPC endpoints)."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) > 0
    error_message = "subnet_ids: a Fargate service needs at least one subnet."
  }
}

variable "security_group_ids" {
  description = "Security groups of the tasks."
  type        = list(string)

  validation {
    condition     = length(var.security_group_ids) > 0
    error_message = "security_group_ids: at least one security group."
  }
}

variable "shutdown_grace_seconds" {
  description = "The worker's grace period on SIGTERM, in seconds (FLEET_SHUTDOWN_GRACE_SECS); ECS waits 10 s longer before SIGKILL (at most 120)."
  type        = number
  default     = 25
}

variable "log_retention_days" {
  description = "Retention of the worker's log group, in days."
  type        = number
  default     = 365
}

variable "min_tasks" {
  description = "Fewest tasks; 0 lets the service scale to zero on an empty queue (a step policy brings it back to one)."
  type        = number
  default     = 1

  validation {
    condition     = var.min_tasks >= 0
    error_message = "min_tasks must be 0 or more."
  }
}

variable "max_tasks" {
  description = "Most tasks."
  type        = number
  default     = 10

  validation {
    condition     = var.max_tasks >= 1
    error_message = "max_tasks must be at least 1."
  }
}

variable "target_backlog_per_task" {
  description = "Messages (visible + in flight) one task should carry: acceptable latency in seconds x messages one task handles per second."
  type        = number
  default     = 400
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}

variable "health_max_age_seconds" {
  description = "The container health check fails when the worker made no progress (a receive answered, a message finished) for this many seconds; keep it above the longest handler when the pool can be full of them."
  type        = number
  default     = 120
}

variable "extra_policy_json" {
  description = "An IAM policy (JSON) added to the task role for what the topology's references do not cover (e.g. EC2 for vpc-worker); null for none."
  type        = string
  default     = null
}
