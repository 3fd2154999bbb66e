output "queues" {
  description = "The queues to create, by topology name (the topology's queues, every one)."
  value       = local.queues
}

output "workers" {
  description = "The workers to deploy, by topology name, with their topology entry."
  value       = local.workers
  precondition {
    condition     = length(local.unknown_queues) == 0
    error_message = "Workers consume queues the topology does not define: ${join(", ", local.unknown_queues)}."
  }
}

output "external_services" {
  description = "What external systems provide here, by service name: the worker each replaces, the queue it consumes and the queues it answers on."
  value       = local.external
  precondition {
    condition     = length(local.unknown_send_refs) == 0
    error_message = "An external service would answer on queues the topology does not define: ${join(", ", local.unknown_send_refs)}."
  }
}

output "queue_consumers" {
  description = "Who consumes each queue: deployed workers by name, external services as external:<service>. Every queue has at least one."
  value       = local.consumers
  precondition {
    condition     = length(local.unconsumed) == 0
    error_message = "Queues without a consumer in this deployment (no deployed worker and no external service reads them): ${join(", ", local.unconsumed)}."
  }
}
