output "name" {
  description = "Name of the table."
  value       = aws_dynamodb_table.this.name
}

output "stream_arn" {
  description = "ARN of the table's stream (null without one)."
  value       = aws_dynamodb_table.this.stream_arn
}

output "arn" {
  description = "ARN of the table (its indexes are <arn>/index/<name>)."
  value       = aws_dynamodb_table.this.arn
}
