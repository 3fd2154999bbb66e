# The topology's buckets (topology.json "buckets": the results bucket, where accepted auction
# results are stored): each private, encrypted with the fleet's key, versioned, TLS only.
# Workers reach a bucket through "bucket:<key>" in their env (main.tf resolves it).

resource "aws_s3_bucket" "bucket" {
  for_each = local.topology.buckets

  #checkov:skip=CKV_AWS_18:Access logging needs a separate log bucket per environment; the fleet's writes are audited through CloudTrail data events if required.
  #checkov:skip=CKV_AWS_144:Cross-region replication is a disaster-recovery choice left to the operator; results can be recomputed from the orders.
  #checkov:skip=CKV2_AWS_62:No consumer of bucket events exists; readers list by prefix.
  bucket_prefix = "${local.prefix}${each.key}-"
  force_destroy = var.environment != "prod"
}

resource "aws_s3_bucket_public_access_block" "bucket" {
  for_each                = aws_s3_bucket.bucket
  bucket                  = each.value.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "bucket" {
  for_each = aws_s3_bucket.bucket
  bucket   = each.value.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_versioning" "bucket" {
  for_each = aws_s3_bucket.bucket
  bucket   = each.value.id
  versioning_configuration {
    status = "Enabled"
  }
}

locals {
  # The buckets' customer-managed key: their default encryption, and what order-results-worker
  # requests explicitly (RESULTS_KMS_KEY_ID, workers.tf). Without the variable the worker sends
  # no encryption header and the default applies; it never asks for SSE-S3.
  results_kms_key_arn = aws_kms_key.fleet.arn
}

resource "aws_s3_bucket_server_side_encryption_configuration" "bucket" {
  for_each = aws_s3_bucket.bucket
  bucket   = each.value.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = local.results_kms_key_arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "bucket" {
  for_each = aws_s3_bucket.bucket
  bucket   = each.value.id
  rule {
    id     = "expire"
    status = "Enabled"
    filter {}
    expiration {
      days = var.results_expiry_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}

resource "aws_s3_bucket_policy" "bucket" {
  for_each = aws_s3_bucket.bucket
  bucket   = each.value.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "TlsOnly"
      Effect    = "Deny"
      Principal = "*"
      Action    = "s3:*"
      Resource  = [each.value.arn, "${each.value.arn}/*"]
      Condition = { Bool = { "aws:SecureTransport" = "false" } }
    }]
  })
}

# Before the buckets came from the topology, the results bucket was declared by hand.
moved {
  from = aws_s3_bucket.results
  to   = aws_s3_bucket.bucket["results"]
}

moved {
  from = aws_s3_bucket_public_access_block.results
  to   = aws_s3_bucket_public_access_block.bucket["results"]
}

moved {
  from = aws_s3_bucket_ownership_controls.results
  to   = aws_s3_bucket_ownership_controls.bucket["results"]
}

moved {
  from = aws_s3_bucket_versioning.results
  to   = aws_s3_bucket_versioning.bucket["results"]
}

moved {
  from = aws_s3_bucket_server_side_encryption_configuration.results
  to   = aws_s3_bucket_server_side_encryption_configuration.bucket["results"]
}

moved {
  from = aws_s3_bucket_lifecycle_configuration.results
  to   = aws_s3_bucket_lifecycle_configuration.bucket["results"]
}

moved {
  from = aws_s3_bucket_policy.results
  to   = aws_s3_bucket_policy.bucket["results"]
}
