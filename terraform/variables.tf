variable "project" {
  description = "Project name: the first part of every resource name (<project>-<environment>-<name>)."
  type        = string
  default     = "queue-fleet"

  validation {
    # Lower case for S3 and ECR; short enough for the longest derived names (IAM roles: 64).
    condition     = can(regex("^[a-z][a-z0-9-]{1,19}$", var.project)) && !endswith(var.project, "-")
    error_message = "project: 2-20 characters of a-z, 0-9 and -, starting with a letter, not ending with -."
  }
}

variable "environment" {
  description = "Environment name (dev, prod): the second part of every resource name."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{0,9}$", var.environment))
    error_message = "environment: 1-10 characters of a-z and 0-9, starting with a letter (e.g. dev, prod, local)."
  }
  validation {
    # The results bucket's name prefix is "<project>-<environment>-results-", at most 37
    # characters for S3's bucket_prefix.
    condition     = length("${var.project}-${var.environment}-results-") <= 37
    error_message = "project and environment together are too long: \"<project>-<environment>-results-\" must fit in 37 characters (S3 bucket_prefix)."
  }
}

variable "region" {
  description = "AWS region to deploy to."
  type        = string
  default     = "eu-west-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]$", var.region))
    error_message = "region: an AWS region name such as eu-west-1."
  }
}

variable "localstack_endpoint" {
  description = "Point every provider endpoint at LocalStack (e.g. http://127.0.0.1:4566); null for AWS."
  type        = string
  default     = null

  validation {
    condition     = var.localstack_endpoint == null || can(regex("^https?://[^/]+/?$", var.localstack_endpoint))
    error_message = "localstack_endpoint: null, or a URL such as http://127.0.0.1:4566."
  }
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

  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.image_tag))
    error_message = "image_tag: a container image tag (1-128 of A-Z a-z 0-9 _ . -, not starting with . or -)."
  }
}

variable "vpc_id" {
  description = "VPC of the worker tasks (required when workers_enabled)."
  type        = string
  default     = null

  validation {
    condition     = var.vpc_id == null ? !var.workers_enabled : can(regex("^vpc-[0-9a-f]{8,17}$", var.vpc_id))
    error_message = "vpc_id: the workers run on ECS (workers_enabled), so a VPC id (vpc-...) is required; set it in the tfvars or with -var / TF_VAR_vpc_id."
  }
}

variable "private_subnet_ids" {
  description = "Private subnets of the worker tasks, with a route to AWS APIs (NAT or VPC endpoints); required when workers_enabled."
  type        = list(string)
  default     = []

  validation {
    condition     = !var.workers_enabled || length(var.private_subnet_ids) > 0
    error_message = "private_subnet_ids: the workers run on ECS (workers_enabled), so at least one private subnet is required (TF_VAR_private_subnet_ids='[\"subnet-...\"]')."
  }
  validation {
    condition     = alltrue([for id in var.private_subnet_ids : can(regex("^subnet-[0-9a-f]{8,17}$", id))]) && length(distinct(var.private_subnet_ids)) == length(var.private_subnet_ids)
    error_message = "private_subnet_ids: distinct subnet ids (subnet-...)."
  }
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

  validation {
    condition     = alltrue([for name in keys(var.worker_overrides) : contains(keys(local.topology.workers), name)])
    error_message = "worker_overrides: every key must be a worker of topology.json."
  }
  validation {
    # Fargate task sizes: CPU units and memory (MiB) of a valid combination.
    # (Conditionals, not ||: Terraform evaluates both sides of || and a null fails.)
    condition = alltrue([for o in values(var.worker_overrides) : (
      (o.cpu == null ? true : contains([256, 512, 1024, 2048, 4096, 8192, 16384], o.cpu)) &&
      (o.memory == null ? true : o.memory >= 512 && o.memory <= 122880)
    )])
    error_message = "worker_overrides: cpu must be a Fargate size (256, 512, 1024, 2048, 4096, 8192, 16384) and memory 512-122880 MiB."
  }
  validation {
    condition = alltrue([for o in values(var.worker_overrides) : (
      (o.min_tasks == null ? true : o.min_tasks >= 0) && (o.max_tasks == null ? true : o.max_tasks >= 1) &&
      (o.min_tasks == null || o.max_tasks == null ? true : o.min_tasks <= o.max_tasks)
    )])
    error_message = "worker_overrides: min_tasks >= 0, max_tasks >= 1 and min_tasks <= max_tasks."
  }
}

variable "log_retention_days" {
  description = "Retention of every log group, in days."
  type        = number
  default     = 365

  validation {
    # What CloudWatch Logs accepts (0: never expire).
    condition     = contains([0, 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days: a CloudWatch Logs retention (0 = never, 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288 or 3653)."
  }
}

variable "api_clients" {
  description = "Clients that get an API key (names)."
  type        = list(string)
  default     = ["default"]

  validation {
    condition     = length(var.api_clients) > 0 && length(distinct(var.api_clients)) == length(var.api_clients) && alltrue([for c in var.api_clients : can(regex("^[A-Za-z0-9_-]{1,64}$", c))])
    error_message = "api_clients: at least one, distinct, each 1-64 of A-Z a-z 0-9 _ -."
  }
}

variable "api_throttle_rate_limit" {
  description = "API requests per second, steady state, per stage and per key."
  type        = number
  default     = 100

  validation {
    condition     = var.api_throttle_rate_limit > 0
    error_message = "api_throttle_rate_limit must be positive."
  }
}

variable "api_throttle_burst_limit" {
  description = "API request burst, per stage and per key."
  type        = number
  default     = 200

  validation {
    condition     = var.api_throttle_burst_limit >= 1 && floor(var.api_throttle_burst_limit) == var.api_throttle_burst_limit
    error_message = "api_throttle_burst_limit must be a whole number of at least 1."
  }
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
  sensitive   = true
  default     = []

  validation {
    condition     = alltrue([for s in var.alarm_subscriptions : contains(["email", "email-json", "https", "http", "sqs", "lambda", "sms", "application", "firehose"], s.protocol) && length(s.endpoint) > 0])
    error_message = "alarm_subscriptions: each an SNS protocol (email, email-json, https, http, sqs, lambda, sms, application, firehose) and a non-empty endpoint."
  }
}

variable "notification_subscriptions" {
  description = "Who gets the fleet's business notifications (e.g. rejected orders), as SNS protocol and endpoint."
  type        = list(object({ protocol = string, endpoint = string }))
  sensitive   = true
  default     = []

  validation {
    condition     = alltrue([for s in var.notification_subscriptions : contains(["email", "email-json", "https", "http", "sqs", "lambda", "sms", "application", "firehose"], s.protocol) && length(s.endpoint) > 0])
    error_message = "notification_subscriptions: each an SNS protocol (email, email-json, https, http, sqs, lambda, sms, application, firehose) and a non-empty endpoint."
  }
}

variable "oldest_message_alarm_seconds" {
  description = "Alarm when a queue's oldest message is older than this, in seconds; a queue's oldest_message_alarm_secs in topology.json replaces it for that queue."
  type        = number
  default     = 900

  validation {
    condition     = var.oldest_message_alarm_seconds >= 60
    error_message = "oldest_message_alarm_seconds: at least 60 (the alarm's period)."
  }
}

variable "results_expiry_days" {
  description = "Days before objects in the results bucket expire (noncurrent versions: 30 days)."
  type        = number
  default     = 365

  validation {
    condition     = var.results_expiry_days >= 1 && floor(var.results_expiry_days) == var.results_expiry_days
    error_message = "results_expiry_days: a whole number of days, at least 1."
  }
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

  validation {
    condition     = var.github_repository == null || can(regex("^[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}$", var.github_repository))
    error_message = "github_repository: owner/name, without wildcards."
  }
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

  validation {
    condition     = alltrue([for arn in var.cognito_user_pool_arns : can(regex("^arn:aws[a-z-]*:cognito-idp:[a-z0-9-]+:[0-9]{12}:userpool/.+$", arn))])
    error_message = "cognito_user_pool_arns: Cognito user pool ARNs (arn:aws:cognito-idp:REGION:ACCOUNT:userpool/ID)."
  }
}

variable "approval_service" {
  description = "Who decides on posts: \"builtin\" deploys the approver (the topology's approval-simulator, with the rules of approval_policy) in this environment; \"external\" deploys none: a real approval service consumes the approval-requests queue and answers on approval-responses (output approval_integration, docs/deploy.md)."
  type        = string
  default     = "builtin"

  validation {
    condition     = contains(["builtin", "external"], var.approval_service)
    error_message = "approval_service: \"builtin\" or \"external\"."
  }
}

variable "approval_policy" {
  description = "Rules of the built-in approver (APPROVAL_POLICY): approve-all, reject-words:W1,W2 (reject a post whose title or body contains a word, any case) or random:SEED[:RATIO]. Unused with an external approval service."
  type        = string
  default     = "reject-words:spam,scam"

  validation {
    condition     = can(regex("^(approve-all|reject-words:.*[^, ].*|random:[0-9]+(:(0(\\.[0-9]+)?|1(\\.0+)?|\\.[0-9]+))?)$", var.approval_policy))
    error_message = "approval_policy: approve-all, reject-words:W1,W2 (at least one word) or random:SEED[:RATIO] (a whole seed, a ratio within 0..1)."
  }
}

variable "approval_delay_secs" {
  description = "Seconds before the built-in approver's answer is visible (APPROVAL_DELAY_SECS, 0-900); the local stack waits 2 s to behave like a remote service, a deployment need not."
  type        = number
  default     = 0

  validation {
    condition     = var.approval_delay_secs >= 0 && var.approval_delay_secs <= 900 && floor(var.approval_delay_secs) == var.approval_delay_secs
    error_message = "approval_delay_secs: a whole number of seconds within 0-900."
  }
}

variable "approval_service_principal_arns" {
  description = "With approval_service = \"external\": IAM roles (or accounts) of another AWS account that run the approval service; they are let in by the approval queues' policies and the key policy. Same-account roles need only the policy of output approval_integration."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for arn in var.approval_service_principal_arns : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:(root|role/.+)$", arn))])
    error_message = "approval_service_principal_arns: IAM role ARNs (arn:aws:iam::ACCOUNT:role/NAME) or account roots (arn:aws:iam::ACCOUNT:root)."
  }
  validation {
    condition     = length(var.approval_service_principal_arns) == 0 || var.approval_service == "external"
    error_message = "approval_service_principal_arns is only for approval_service = \"external\"."
  }
}
