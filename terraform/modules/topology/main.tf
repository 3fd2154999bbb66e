# What one deployment runs of the topology: the queues it creates, the workers it deploys, and
# what an external system provides instead of a worker (e.g. a real approval service in place
# of the built-in approver). Every queue must have a consumer. No provider: pure functions of
# the inputs, so integration-tests/tests/terraform.rs evaluates exactly this.

locals {
  queues = var.topology.queues

  # Workers an external service replaces here (replaceable_by named in var.external_services).
  replaced = {
    for name, w in var.topology.workers : name => w.replaceable_by
    if contains(var.external_services, try(w.replaceable_by, ""))
  }

  # Deployed: every worker but the local-only stand-ins and the replaced ones.
  workers = {
    for name, w in var.topology.workers : name => w
    if !try(w.local_only, false) && !contains(keys(local.replaced), name)
  }

  # An external service consumes its worker's queue and sends where the worker sent.
  external = {
    for name, service in local.replaced : service => {
      replaces = name
      consumes = var.topology.workers[name].queue
      sends_to = [for ref in values(try(var.topology.workers[name].env, {})) : split(":", ref)[1] if startswith(ref, "queue:")]
    }
  }

  consumers = {
    for key in keys(local.queues) : key => concat(
      [for name, w in local.workers : name if w.queue == key],
      [for service, e in local.external : "external:${service}" if e.consumes == key],
    )
  }
  unconsumed        = sort([for key, c in local.consumers : key if length(c) == 0])
  unknown_queues    = sort([for name, w in local.workers : "${name} -> ${w.queue}" if !contains(keys(local.queues), w.queue)])
  unknown_send_refs = sort(flatten([for e in values(local.external) : [for q in e.sends_to : q if !contains(keys(local.queues), q)]]))
}
