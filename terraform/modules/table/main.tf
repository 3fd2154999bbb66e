locals {
  keys = concat(
    [var.partition_key],
    var.sort_key == null ? [] : [var.sort_key],
    flatten([for index in values(var.indexes) : concat(
      [index.partition_key],
      index.sort_key == null ? [] : [index.sort_key],
    )]),
  )
  attributes = { for key in local.keys : key.name => key.type }
}

# On-demand capacity: the workers' write rate follows the queue, not a forecast.
resource "aws_dynamodb_table" "this" {
  name                        = var.name
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = var.partition_key.name
  range_key                   = var.sort_key == null ? null : var.sort_key.name
  deletion_protection_enabled = var.deletion_protection
  stream_enabled              = var.stream_enabled
  stream_view_type            = var.stream_enabled ? "OLD_IMAGE" : null

  dynamic "attribute" {
    for_each = local.attributes
    content {
      name = attribute.key
      type = attribute.value
    }
  }

  dynamic "global_secondary_index" {
    for_each = var.indexes
    content {
      name            = global_secondary_index.key
      hash_key        = global_secondary_index.value.partition_key.name
      range_key       = global_secondary_index.value.sort_key == null ? null : global_secondary_index.value.sort_key.name
      projection_type = "ALL"
    }
  }

  ttl {
    enabled        = var.ttl_attribute != null
    attribute_name = var.ttl_attribute == null ? "" : var.ttl_attribute
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled     = true
    kms_key_arn = var.kms_key_arn
  }

  tags = var.tags
}
