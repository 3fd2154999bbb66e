# The role GitHub Actions assumes through OIDC to deploy this environment (no stored keys).

data "aws_iam_openid_connect_provider" "github" {
  count = var.github_repository == null ? 0 : 1
  url   = "https://token.actions.githubusercontent.com"
}

resource "aws_iam_role" "deploy" {
  count = var.github_repository == null ? 0 : 1
  name  = "${local.prefix}deploy"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Federated = data.aws_iam_openid_connect_provider.github[0].arn }
      Action    = "sts:AssumeRoleWithWebIdentity"
      Condition = {
        StringEquals = { "token.actions.githubusercontent.com:aud" = "sts.amazonaws.com" }
        # Only workflows running in this repository's <environment> GitHub environment.
        StringLike = { "token.actions.githubusercontent.com:sub" = "repo:${var.github_repository}:environment:${var.environment}" }
      }
    }]
  })
}

resource "aws_iam_role_policy_attachment" "deploy" {
  #checkov:skip=CKV_AWS_274:Terraform manages every resource of the environment (IAM roles included), which needs administrator rights; the role is limited to one repository's environment by its trust policy.
  count      = var.github_repository == null ? 0 : 1
  role       = aws_iam_role.deploy[0].name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AdministratorAccess"
}
