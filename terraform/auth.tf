# Who may call the API: an API key (usage plan, throttling) on every non-public route, and,
# with a user pool, a valid Cognito JWT in the Authorization header as well.

resource "aws_cognito_user_pool" "api" {
  count                    = var.cognito_user_pool_enabled ? 1 : 0
  name                     = "${local.prefix}api-users"
  deletion_protection      = var.environment == "prod" ? "ACTIVE" : "INACTIVE"
  mfa_configuration        = "OPTIONAL"
  auto_verified_attributes = ["email"]
  username_attributes      = ["email"]

  software_token_mfa_configuration {
    enabled = true
  }
  password_policy {
    minimum_length                   = 14
    require_lowercase                = true
    require_uppercase                = true
    require_numbers                  = true
    require_symbols                  = true
    temporary_password_validity_days = 3
  }
  admin_create_user_config {
    # Upstream clients are provisioned by an operator, not signed up by themselves.
    allow_admin_create_user_only = true
  }
  account_recovery_setting {
    recovery_mechanism {
      name     = "verified_email"
      priority = 1
    }
  }
}

# Machine clients and people alike get tokens through this client (no secret). Flows: SRP (SDKs
# and apps that implement it), USER_PASSWORD_AUTH (a CLI or server client signs in with its user
# name and password through `aws cognito-idp initiate-auth`, over TLS; docs/security.md has the
# recipe), and refresh tokens. The API's owner id is the ID token's sub.
resource "aws_cognito_user_pool_client" "api" {
  count                         = var.cognito_user_pool_enabled ? 1 : 0
  name                          = "${local.prefix}api-client"
  user_pool_id                  = aws_cognito_user_pool.api[0].id
  generate_secret               = false
  prevent_user_existence_errors = "ENABLED"
  explicit_auth_flows           = ["ALLOW_USER_SRP_AUTH", "ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"]
  access_token_validity         = 60
  id_token_validity             = 60
  refresh_token_validity        = 30
  token_validity_units {
    access_token  = "minutes"
    id_token      = "minutes"
    refresh_token = "days"
  }
}
