variable "name" {
  description = "Name of the REST API (and prefix of its role, stage log group and usage plan)."
  type        = string
}

variable "document_path" {
  description = "Path of the OpenAPI document with x-amazon-apigateway-integration extensions (api-gateway-mappings/openapi.yaml)."
  type        = string
}

variable "template_vars" {
  description = "Values of the document's placeholders besides region, account_id and api_role_arn (queue and table names)."
  type        = map(string)
}

variable "cognito_user_pool_arns" {
  description = "Cognito user pools (ARNs) whose JWTs, in the Authorization header, every route that requires an API key also requires; empty: API keys only."
  type        = list(string)
  default     = []
}

variable "queue_arns" {
  description = "Queues the API may send to (sqs:SendMessage, nothing else)."
  type        = list(string)
}

variable "table_arns" {
  description = "Tables the API reads directly (dynamodb:GetItem and Query, on the tables and their indexes)."
  type        = list(string)
}

variable "kms_key_arn" {
  description = "KMS key of the queues and tables (the role may use it to encrypt messages and decrypt items) and of the access log group."
  type        = string
}

variable "stage_name" {
  description = "Name of the stage (part of the invoke URL)."
  type        = string
  default     = "v1"
}

variable "throttle_rate_limit" {
  description = "Steady-state requests per second, per stage and per API key."
  type        = number
  default     = 100
}

variable "throttle_burst_limit" {
  description = "Burst of requests above the rate, per stage and per API key."
  type        = number
  default     = 200
}

variable "api_clients" {
  description = "Names of the clients that get an API key (each in the usage plan)."
  type        = list(string)
  default     = []
}

variable "log_retention_days" {
  description = "Retention of the access log group, in days."
  type        = number
  default     = 365
}

variable "waf_enabled" {
  description = "Put a WAFv2 web ACL in front of the stage: AWS managed common, known-bad-inputs and SQL-injection rules, the 8 KB body limit outside waf_large_body_routes, a per-IP rate limit."
  type        = bool
  default     = false
}

variable "waf_rate_limit" {
  description = "Requests per 5 minutes from one IP address before WAF blocks it (when waf_enabled)."
  type        = number
  default     = 2000

  validation {
    condition     = var.waf_rate_limit >= 10 && var.waf_rate_limit <= 2000000000
    error_message = "waf_rate_limit: 10 to 2,000,000,000 requests per 5 minutes (WAF's bounds)."
  }
}

variable "waf_large_body_routes" {
  description = "Last path segments of the routes whose bodies may exceed 8 KB (the common rule set's SizeRestrictions_BODY): POST /posts (10,000 characters) and POST /orders (100 records). Every other route keeps the 8 KB limit."
  type        = list(string)
  default     = ["posts", "orders"]

  validation {
    condition     = length(var.waf_large_body_routes) > 0 && alltrue([for r in var.waf_large_body_routes : can(regex("^[A-Za-z0-9_-]+$", r))])
    error_message = "waf_large_body_routes: at least one path segment of A-Z a-z 0-9 _ -."
  }
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
