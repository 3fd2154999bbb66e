# terraform apply -var-file=environments/prod.tfvars (VPC and subnets: set them here or with -var)
environment              = "prod"
region                   = "eu-west-1"
api_clients              = ["default"]
api_throttle_rate_limit  = 500
api_throttle_burst_limit = 1000
waf_enabled              = true
deletion_protection      = true
log_retention_days       = 365
# Posts are decided by the built-in approver (approval-simulator's rules). To plug a real
# approval service in: approval_service = "external" (docs/deploy.md).
approval_service = "builtin"
approval_policy  = "reject-words:spam,scam"
