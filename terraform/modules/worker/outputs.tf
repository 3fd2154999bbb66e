output "service_name" {
  description = "Name of the ECS service."
  value       = aws_ecs_service.this.name
}

output "task_role_arn" {
  description = "ARN of the worker's task role."
  value       = aws_iam_role.task.arn
}

output "log_group_name" {
  description = "Log group of the worker (JSON logs; EMF metric lines become CloudWatch metrics)."
  value       = aws_cloudwatch_log_group.this.name
}
