# terraform apply -var-file=environments/dev.tfvars (VPC and subnets: set them here or with -var)
environment              = "dev"
region                   = "eu-west-1"
api_clients              = ["default", "ci"]
api_throttle_rate_limit  = 50
api_throttle_burst_limit = 100
log_retention_days       = 365
# Scale to zero when idle in dev.
worker_overrides = {
  "payments-worker" = { min_tasks = 0, max_tasks = 2 }
  "books-worker"    = { min_tasks = 0, max_tasks = 2 }
}
