variable "document_path" {
  description = "Path of the OpenAPI document with x-amazon-apigateway-* extensions (api-gateway-mappings/openapi.yaml)."
  type        = string
}

variable "template_vars" {
  description = "Values of every placeholder of the document (region, account_id, api_role_arn, queue and table names) but the shared template fragments (set_owner, ...), which the module reads from fragments.json beside the document."
  type        = map(string)
}

variable "cognito_user_pool_arns" {
  description = "Cognito user pools (ARNs) whose JWTs every route that requires an API key also requires, in the Authorization header; empty: API keys only, the document exactly as the local stack imports it."
  type        = list(string)
  default     = []
}
