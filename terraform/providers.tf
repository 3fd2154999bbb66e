provider "aws" {
  region = var.region

  # LocalStack (scripts/terraform-local): every service at one endpoint, no real credentials.
  skip_credentials_validation = var.localstack_endpoint != null
  skip_metadata_api_check     = var.localstack_endpoint != null
  skip_requesting_account_id  = var.localstack_endpoint != null
  s3_use_path_style           = var.localstack_endpoint != null
  access_key                  = var.localstack_endpoint != null ? "test" : null
  secret_key                  = var.localstack_endpoint != null ? "test" : null

  dynamic "endpoints" {
    for_each = var.localstack_endpoint == null ? [] : [var.localstack_endpoint]
    content {
      apigateway     = endpoints.value
      cloudwatch     = endpoints.value
      cloudwatchlogs = endpoints.value
      dynamodb       = endpoints.value
      iam            = endpoints.value
      kms            = endpoints.value
      s3             = endpoints.value
      sns            = endpoints.value
      sqs            = endpoints.value
      sts            = endpoints.value
    }
  }

  default_tags {
    tags = {
      Project     = var.project
      Environment = var.environment
      ManagedBy   = "terraform"
    }
  }
}
