terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.60, < 6.0"
    }
  }
  # Configure a backend per environment (e.g. -backend-config=environments/prod.s3.tfbackend);
  # without one, state is local.
}
