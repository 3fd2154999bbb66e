terraform {
  # 1.9: input validations that refer to other variables (vpc_id and subnets with
  # workers_enabled) and to the topology.
  required_version = ">= 1.9"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.60, < 6.0"
    }
  }
  # Configure a backend per environment (e.g. -backend-config=environments/prod.s3.tfbackend);
  # without one, state is local.
}
