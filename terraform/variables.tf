variable "project" {
  description = "Project name: the first part of every resource name (<project>-<environment>-<name>)."
  type        = string
  default     = "queue-fleet"
}

variable "environment" {
  description = "Environment name (dev, prod): the second part of every resource name."
  type        = string
}

variable "region" {
  description = "AWS region to deploy to."
  type        = string
  default     = "eu-west-1"
}

variable "localstack_endpoint" {
  description = "Point every provider endpoint at LocalStack (e.g. http://127.0.0.1:4566); null for AWS."
  type        = string
  default     = null
}

variable "workers_enabled" {
  description = "Deploy the ECS part (cluster, ECR repositories, worker services). Off for LocalStack, whose community edition has no ECS."
  type        = bool
  default     = true
}

variable "expiry_pipes_enabled" {
  description = "Forward TTL deletions to the queues the topology names (DynamoDB stream -> EventBridge Pipes). Off for LocalStack, whose community edition has no Pipes and never expires items."
  type        = bool
  default     = true
}

variable "image_tag" {
  description = "Tag of the worker images in ECR (CI/CD pushes the commit SHA)."
  type        = string
  default     = "latest"
}

variable "vpc_id" {
  description = "VPC of the worker tasks (required when workers_enabled)."
  type        = string
  default     = null
}

variable "private_subnet_ids" {
  description = "Private subnets of the worker tasks, with a route to AWS APIs (NAT or VPC endpoints)."
  type        = list(string)
  default     = []
}

variable "worker_overrides" {
  description = "Per worker (by topology name): task size and task bounds replacing the topology's (cpu units, memory MiB, min/max tasks; min 0 scales to zero), and environment variables added to or replacing the topology's (e.g. results-worker: RESULTS_SOURCE = \"http\", RESULTS_SOURCE_URL = \"https://...\")."
  type = map(object({
    cpu         = optional(number)
    memory      = optional(number)
    min_tasks   = optional(number)
    max_tasks   = optional(number)
    environment = optional(map(string))
  }))
  default = {}
}

variable "log_retention_days" {
  description = "Retention of every log group, in days."
  type        = number
  default     = 365
}

variable "api_clients" {
  description = "Clients that get an API key (names)."
  type        = list(string)
  default     = ["default"]
}

variable "api_throttle_rate_limit" {
  description = "API requests per second, steady state, per stage and per key."
  type        = number
  default     = 100
}

variable "api_throttle_burst_limit" {
  description = "API request burst, per stage and per key."
  type        = number
  default     = 200
}

variable "waf_enabled" {
  description = "Put a WAF web ACL in front of the API stage."
  type        = bool
  default     = false
}

variable "manage_api_gateway_account" {
  description = "Set the account-wide API Gateway CloudWatch role (needed once per account and region for stage logs)."
  type        = bool
  default     = true
}

variable "alarm_subscriptions" {
  description = "Who hears about alarms (DLQ not empty, old messages): SNS protocol and endpoint, e.g. { protocol = \"email\", endpoint = \"ops@example.com\" }."
  type        = list(object({ protocol = string, endpoint = string }))
  default     = []
}

variable "notification_subscriptions" {
  description = "Who gets the fleet's business notifications (e.g. rejected orders), as SNS protocol and endpoint."
  type        = list(object({ protocol = string, endpoint = string }))
  default     = []
}

variable "oldest_message_alarm_seconds" {
  description = "Alarm when a queue's oldest message is older than this, in seconds."
  type        = number
  default     = 900
}

variable "results_expiry_days" {
  description = "Days before objects in the results bucket expire (noncurrent versions: 30 days)."
  type        = number
  default     = 365
}

variable "deletion_protection" {
  description = "Protect tables from deletion (set in production)."
  type        = bool
  default     = false
}

variable "github_repository" {
  description = "owner/name of the GitHub repository whose workflows deploy this environment through OIDC; null creates no deploy role."
  type        = string
  default     = null
}

variable "schedules_enabled" {
  description = "Create the topology's schedules (e.g. an auction cycle every 5 minutes) in EventBridge Scheduler; false creates none (LocalStack: the local run uses fleetctl schedule)."
  type        = bool
  default     = true
}

variable "cognito_user_pool_enabled" {
  description = "Create a Cognito user pool (and an app client) whose JWTs the API requires, beside the API key, on every route that needs a key; public routes stay public."
  type        = bool
  default     = true
}

variable "cognito_user_pool_arns" {
  description = "Existing Cognito user pools whose JWTs the API also accepts (ARNs)."
  type        = list(string)
  default     = []
}
