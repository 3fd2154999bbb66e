# Who approves posts. posts-worker sends one request per post to approval-requests (FIFO) and
# approvals-worker applies the answers from approval-responses; in between sits an approval
# service:
# - approval_service = "builtin" (default): the topology's approver (approval-simulator, the
#   worker whose replaceable_by is "approval_service") runs as a worker like any other, with the
#   rules of approval_policy;
# - approval_service = "external": no approver task; a real approval service consumes
#   approval-requests and answers on approval-responses (output approval_integration: the
#   queue URLs, and an IAM policy for its role; approval_service_principal_arns lets roles of
#   another account in through the queue and key policies). docs/deploy.md.

locals {
  approver                     = one([for name, w in local.topology.workers : name if try(w.replaceable_by, null) == "approval_service"])
  approval_requests_queue      = local.topology.workers[local.approver].queue
  approval_responses_queue     = one([for ref in values(local.topology.workers[local.approver].env) : split(":", ref)[1] if startswith(ref, "queue:")])
  approval_external            = var.approval_service == "external"
  approval_external_principals = local.approval_external ? var.approval_service_principal_arns : []

  # The approver's rules (approval-simulator: APPROVAL_POLICY, APPROVAL_DELAY_SECS).
  approver_environment = {
    APPROVAL_POLICY     = var.approval_policy
    APPROVAL_DELAY_SECS = tostring(var.approval_delay_secs)
  }

  # What the approval service does on each of its queues.
  approval_queue_actions = {
    (local.approval_requests_queue)  = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes", "sqs:GetQueueUrl"]
    (local.approval_responses_queue) = ["sqs:SendMessage", "sqs:GetQueueAttributes", "sqs:GetQueueUrl"]
  }
}

# For the external service's own role (attach it there): read the requests, send the answers,
# use the queues' key.
data "aws_iam_policy_document" "approval_service" {
  statement {
    sid       = "ConsumeApprovalRequests"
    actions   = local.approval_queue_actions[local.approval_requests_queue]
    resources = [module.queue[local.approval_requests_queue].arn]
  }
  statement {
    sid       = "SendApprovalResponses"
    actions   = local.approval_queue_actions[local.approval_responses_queue]
    resources = [module.queue[local.approval_responses_queue].arn]
  }
  statement {
    sid       = "UseTheQueuesKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.fleet.arn]
  }
}

# Roles of another account need the queues' resource policies as well (and the key policy:
# main.tf, ExternalApprovalServiceThroughSqs).
data "aws_iam_policy_document" "approval_queue" {
  for_each = { for queue, actions in local.approval_queue_actions : queue => actions if length(local.approval_external_principals) > 0 }
  statement {
    sid       = "ExternalApprovalService"
    actions   = each.value
    resources = [module.queue[each.key].arn]
    principals {
      type        = "AWS"
      identifiers = local.approval_external_principals
    }
  }
}

resource "aws_sqs_queue_policy" "approval" {
  for_each  = data.aws_iam_policy_document.approval_queue
  queue_url = module.queue[each.key].url
  policy    = each.value.json
}
