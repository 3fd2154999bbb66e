variable "name" {
  description = "Name of the queue (without .fifo); its dead-letter queue is <name>-dlq."
  type        = string
}

variable "fifo" {
  description = "Create FIFO queues (ordered per message group, deduplicated): names get the .fifo ending."
  type        = bool
  default     = false
}

variable "visibility_timeout_seconds" {
  description = "Visibility timeout of a received message, in seconds. Keep it above the worker's longest handler (the engine's heartbeat extends it while a handler runs)."
  type        = number

  validation {
    condition     = var.visibility_timeout_seconds >= 0 && var.visibility_timeout_seconds <= 43200
    error_message = "visibility_timeout_seconds: 0 to 43200 (12 hours), SQS's bounds."
  }
}

variable "max_receive_count" {
  description = "Receives before SQS moves a message to the dead-letter queue (count)."
  type        = number

  validation {
    condition     = var.max_receive_count >= 1 && var.max_receive_count <= 1000
    error_message = "max_receive_count: 1 to 1000, SQS's bounds."
  }
}

variable "message_retention_seconds" {
  description = "How long the queue keeps a message, in seconds."
  type        = number
  default     = 345600

  validation {
    condition     = var.message_retention_seconds >= 60 && var.message_retention_seconds <= 1209600
    error_message = "message_retention_seconds: 60 to 1209600 (14 days), SQS's bounds."
  }
}

variable "dlq_retention_seconds" {
  description = "How long the dead-letter queue keeps a message, in seconds (the maximum, 14 days, leaves time to inspect and redrive)."
  type        = number
  default     = 1209600

  validation {
    condition     = var.dlq_retention_seconds >= 60 && var.dlq_retention_seconds <= 1209600
    error_message = "dlq_retention_seconds: 60 to 1209600 (14 days), SQS's bounds."
  }
}

variable "kms_key_arn" {
  description = "KMS key encrypting both queues at rest; null uses SQS-managed encryption (SSE-SQS)."
  type        = string
  default     = null
}

variable "alarms_enabled" {
  description = "Create the CloudWatch alarms (DLQ not empty, oldest message too old)."
  type        = bool
  default     = true
}

variable "alarm_topic_arn" {
  description = "SNS topic the alarms notify (required when alarms_enabled)."
  type        = string
  default     = null
}

variable "oldest_message_alarm_seconds" {
  description = "Alarm when the oldest message in the queue is older than this many seconds."
  type        = number
  default     = 900

  validation {
    condition     = var.oldest_message_alarm_seconds >= 60
    error_message = "oldest_message_alarm_seconds: at least 60 (the alarm's period)."
  }
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
