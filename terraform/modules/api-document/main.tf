# The API document a deployment imports: the shared OpenAPI document with each service's
# fragment (services/*.yaml beside it) in place, rendered with templatestring (byte for byte
# what localstack/provision.py imports; integration-tests/tests/terraform.rs checks it),
# optionally with a Cognito user-pool authorizer added to every route that requires an API key.
# No provider: pure functions of the inputs.

locals {
  dir = dirname(var.document_path)
  # Each fragment: comment lines, `paths:` and its path items, then `components:` / `  schemas:`
  # and its schemas (provision.py's SERVICE_FRAGMENT). fileset lists in file-name order.
  services = [
    for f in sort(fileset("${local.dir}/services", "*.yaml")) :
    regex("(?s)^(?:#[^\n]*\n)*paths:\n(.*\n)components:\n  schemas:\n(.*)$", file("${local.dir}/services/${f}"))
  ]
  assembled = replace(
    replace(file(var.document_path), "  # <each service's paths: services/*.yaml>\n", join("", [for s in local.services : s[0]])),
    "    # <each service's schemas: services/*.yaml>\n",
    join("", [for s in local.services : s[1]]),
  )

  # The template fragments every mapping template shares, fragments.json beside the document
  # (provision.py reads the same file): ${set_owner}, the one definition of the caller's owner
  # id (with the Cognito authorizer the JWT's sub, without it the API key id: the same VTL
  # serves both, docs/security.md), and the body-size guard of the write routes.
  fragments = { for k, v in jsondecode(file("${local.dir}/fragments.json")) : k => trimspace(v) if k != "//" }
  rendered  = templatestring(local.assembled, merge(var.template_vars, local.fragments))
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
