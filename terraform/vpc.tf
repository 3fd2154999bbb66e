# vpc-worker creates VPCs and subnets for POST /vpcs: EC2 rights limited to resources tagged
# with this project (created with the tag, deleted only when they carry it).

locals {
  vpc_project_tag = "${var.project}-${var.environment}"
  # What vpc-worker needs beyond the topology's references (read in workers.tf; its
  # VPC_PROJECT_TAG is set there from vpc_project_tag).
  worker_extra_policies = {
    "vpc-worker" = data.aws_iam_policy_document.vpc_provisioning.json
  }
  ec2_arn = "arn:${data.aws_partition.current.partition}:ec2:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}"
}

data "aws_iam_policy_document" "vpc_provisioning" {
  statement {
    sid       = "CreateTaggedForTheProject"
    actions   = ["ec2:CreateVpc", "ec2:CreateSubnet"]
    resources = ["${local.ec2_arn}:vpc/*", "${local.ec2_arn}:subnet/*"]
    condition {
      test     = "StringEquals"
      variable = "aws:RequestTag/Project"
      values   = [local.vpc_project_tag]
    }
  }
  statement {
    # CreateSubnet also names the (already tagged) VPC it goes into.
    sid       = "CreateSubnetsInTheProjectsVpcs"
    actions   = ["ec2:CreateSubnet"]
    resources = ["${local.ec2_arn}:vpc/*"]
    condition {
      test     = "StringEquals"
      variable = "ec2:ResourceTag/Project"
      values   = [local.vpc_project_tag]
    }
  }
  statement {
    sid       = "TagOnCreate"
    actions   = ["ec2:CreateTags"]
    resources = ["${local.ec2_arn}:*/*"]
    condition {
      test     = "StringEquals"
      variable = "ec2:CreateAction"
      values   = ["CreateVpc", "CreateSubnet"]
    }
  }
  statement {
    sid       = "RemoveOnlyTheProjects"
    actions   = ["ec2:DeleteVpc", "ec2:DeleteSubnet"]
    resources = ["${local.ec2_arn}:*/*"]
    condition {
      test     = "StringEquals"
      variable = "ec2:ResourceTag/Project"
      values   = [local.vpc_project_tag]
    }
  }
  statement {
    #checkov:skip=CKV_AWS_356:EC2 Describe actions support no resource-level permissions.
    sid       = "Describe"
    actions   = ["ec2:DescribeVpcs", "ec2:DescribeSubnets", "ec2:DescribeAvailabilityZones"]
    resources = ["*"]
  }
}
