output "body" {
  description = "The document to import (YAML)."
  value       = local.body
  precondition {
    condition     = !local.cognito || can(yamldecode(local.body).components.securitySchemes.cognito)
    error_message = "The Cognito authorizer could not be added: the document no longer has a top-level components.securitySchemes at two spaces of indentation."
  }
}
