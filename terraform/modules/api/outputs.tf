output "id" {
  description = "Id of the REST API."
  value       = aws_api_gateway_rest_api.this.id
}

output "invoke_url" {
  description = "Base URL of the stage: append /payments/{paymentId}, /books, ..."
  value       = aws_api_gateway_stage.this.invoke_url
}

output "rendered_document" {
  description = "The OpenAPI document as deployed (the local stack imports the same one)."
  value       = local.body
}

output "api_key_ids" {
  description = "API key ids by client name (values: aws apigateway get-api-key --include-value)."
  value       = { for name, key in aws_api_gateway_api_key.client : name => key.id }
}

output "api_keys" {
  description = "API key values by client name."
  value       = { for name, key in aws_api_gateway_api_key.client : name => key.value }
  sensitive   = true
}

output "role_arn" {
  description = "ARN of the role API Gateway uses for its integrations."
  value       = aws_iam_role.api.arn
}
