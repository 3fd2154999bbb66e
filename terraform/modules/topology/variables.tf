variable "topology" {
  description = "The fleet's topology (../topology.json, decoded): queues, tables, workers."
  type        = any

  validation {
    condition     = can(keys(var.topology.queues)) && can(keys(var.topology.workers))
    error_message = "The topology needs queues and workers."
  }
}

variable "external_services" {
  description = "Services an external system provides in this deployment, by the name a worker of the topology gives in replaceable_by (e.g. [\"approval_service\"]): those workers are not deployed, and their queues are the integration point of the external system."
  type        = set(string)
  default     = []

  validation {
    condition = alltrue([
      for s in var.external_services : contains([for w in values(var.topology.workers) : try(w.replaceable_by, "")], s)
    ])
    error_message = "Every external service must be the replaceable_by of a worker of the topology."
  }
}
