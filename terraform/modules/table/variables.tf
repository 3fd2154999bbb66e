variable "name" {
  description = "Name of the table."
  type        = string
}

variable "partition_key" {
  description = "Partition key: name and type (S, N or B)."
  type        = object({ name = string, type = string })
}

variable "sort_key" {
  description = "Sort key (name and type), or null."
  type        = object({ name = string, type = string })
  default     = null
}

variable "ttl_attribute" {
  description = "Attribute holding each item's expiry (seconds since the epoch), or null for no TTL."
  type        = string
  default     = null
}

variable "indexes" {
  description = "Global secondary indexes by name: partition key and optional sort key; every attribute is projected."
  type = map(object({
    partition_key = object({ name = string, type = string })
    sort_key      = optional(object({ name = string, type = string }))
  }))
  default = {}
}

variable "stream_enabled" {
  description = "Enable the table's stream with old images (e.g. to forward TTL deletions)."
  type        = bool
  default     = false
}

variable "kms_key_arn" {
  description = "Customer-managed KMS key encrypting the table at rest."
  type        = string
}

variable "deletion_protection" {
  description = "Refuse to delete the table (set in production)."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
