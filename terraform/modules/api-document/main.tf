# The API document a deployment imports: the shared OpenAPI document rendered with
# templatefile (byte for byte what localstack/provision.py imports; integration-tests/tests/
# terraform.rs checks it), optionally with a Cognito user-pool authorizer added to every route
# that requires an API key. No provider: pure functions of the inputs.

locals {
  # The template fragments every mapping template shares, fragments.json beside the document
  # (provision.py reads the same file): ${set_owner}, the one definition of the caller's owner
  # id (with the Cognito authorizer the JWT's sub, without it the API key id: the same VTL
  # serves both, docs/security.md), and the body-size guard of the write routes.
  fragments = { for k, v in jsondecode(file("${dirname(var.document_path)}/fragments.json")) : k => trimspace(v) if k != "//" }
  rendered  = templatefile(var.document_path, merge(var.template_vars, local.fragments))
  cognito   = length(var.cognito_user_pool_arns) > 0

  cognito_scheme = jsonencode({
    type                             = "apiKey"
    name                             = "Authorization"
    in                               = "header"
    "x-amazon-apigateway-authtype"   = "cognito_user_pools"
    "x-amazon-apigateway-authorizer" = { type = "cognito_user_pools", providerARNs = var.cognito_user_pool_arns }
  })
  # JSON is YAML: flow-style entries fit any indentation. A route's requirement
  # "- api_key: []" becomes "api key AND a valid JWT"; the scheme joins securitySchemes.
  with_cognito = replace(
    replace(local.rendered, "- api_key: []", "- {api_key: [], cognito: []}"),
    "\n  securitySchemes:\n",
    "\n  securitySchemes:\n    cognito: ${local.cognito_scheme}\n",
  )
  body = local.cognito ? local.with_cognito : local.rendered
}
