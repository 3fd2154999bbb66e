output "api_invoke_url" {
  description = "Base URL of the API (append /payments/{paymentId}, /books, ...)."
  value       = module.api.invoke_url
}

output "api_id" {
  description = "Id of the REST API."
  value       = module.api.id
}

output "api_key_ids" {
  description = "API key ids by client (read a value with: aws apigateway get-api-key --api-key ID --include-value)."
  value       = module.api.api_key_ids
}

output "api_keys" {
  description = "API key values by client."
  value       = module.api.api_keys
  sensitive   = true
}

output "api_document" {
  description = "The OpenAPI document as deployed (rendered from api-gateway-mappings/openapi.yaml)."
  value       = module.api.rendered_document
}

output "queue_urls" {
  description = "Queue URLs by topology name."
  value       = { for key, q in module.queue : key => q.url }
}

output "dlq_urls" {
  description = "Dead-letter queue URLs by topology name."
  value       = { for key, q in module.queue : key => q.dlq_url }
}

output "table_names" {
  description = "Table names by topology name."
  value       = { for key, t in module.table : key => t.name }
}

output "fleet_prefix" {
  description = "Name prefix of this deployment: FLEET_PREFIX for fleetctl."
  value       = local.prefix
}

output "alarm_topic_arn" {
  description = "SNS topic of the operators' alarms."
  value       = aws_sns_topic.alarms.arn
}

output "notification_topic_arn" {
  description = "SNS topic of the fleet's business notifications."
  value       = aws_sns_topic.topic["notifications"].arn
}

output "results_bucket" {
  description = "Name of the results bucket."
  value       = aws_s3_bucket.bucket["results"].bucket
}

output "worker_image_repository" {
  description = "The ECR repository of the workers' image (push it tagged with image_tag; every worker runs it by its command)."
  value       = one(aws_ecr_repository.workers[*].repository_url)
}

output "deploy_role_arn" {
  description = "Role GitHub Actions assumes to deploy this environment (when github_repository is set)."
  value       = try(aws_iam_role.deploy[0].arn, null)
}

output "cognito_user_pool_id" {
  description = "The API's Cognito user pool (null without one): create users here; their ID tokens go in the Authorization header."
  value       = one(aws_cognito_user_pool.api[*].id)
}

output "cognito_client_id" {
  description = "The app client that issues the API's tokens (null without a user pool)."
  value       = one(aws_cognito_user_pool_client.api[*].id)
}

output "approval_integration" {
  description = "The approval step: which service decides (approval_service), the built-in approver's worker when it runs, and the integration point of a real approval service: it consumes requests_queue_url (FIFO, one group per post: {\"post_id\", \"title\", \"body\", \"author\"}) and answers {\"post_id\", \"decision\": \"APPROVED\" | \"REJECTED\", \"reason\"?} on responses_queue_url; iam_policy_json is what its role needs (docs/deploy.md)."
  value = {
    approval_service    = var.approval_service
    approver_worker     = local.approval_external ? null : local.approver
    requests_queue_url  = module.queue[local.approval_requests_queue].url
    requests_queue_arn  = module.queue[local.approval_requests_queue].arn
    requests_dlq_url    = module.queue[local.approval_requests_queue].dlq_url
    responses_queue_url = module.queue[local.approval_responses_queue].url
    responses_queue_arn = module.queue[local.approval_responses_queue].arn
    kms_key_arn         = aws_kms_key.fleet.arn
    iam_policy_json     = data.aws_iam_policy_document.approval_service.json
  }
}

output "queue_consumers" {
  description = "Who consumes each queue in this deployment: workers by topology name, external:<service> for an external service (every queue has one; module.topology checks it)."
  value       = module.topology.queue_consumers
}
