//! Terraform and the local stack deploy the same API: the OpenAPI document rendered by
//! Terraform's `templatefile` (what `terraform/modules/api` deploys) is byte for byte the one
//! `localstack/provision.py` imports, for the same names. Needs `terraform` on PATH; without it
//! the test says so and passes, unless `FLEET_REQUIRE_TERRAFORM=1` (set by `.ci/run`).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use integration_tests::root;
use serde_json::Value;

fn terraform_available() -> Result<bool> {
    let found = Command::new("terraform").arg("version").output().is_ok();
    if !found && std::env::var_os("FLEET_REQUIRE_TERRAFORM").is_some() {
        bail!("terraform is not on PATH but FLEET_REQUIRE_TERRAFORM is set");
    }
    if !found {
        eprintln!("terraform not found: skipping the Terraform/local stack comparison");
    }
    Ok(found)
}

fn run(command: &mut Command) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The document rendered by the Terraform module the API module deploys it through
/// (`terraform/modules/api-document`), in a scratch configuration (no provider, nothing
/// created): the body, and the body parsed by Terraform's `yamldecode`.
fn render_with_terraform(
    document: &Path,
    vars: &serde_json::Map<String, Value>,
    user_pools: &[&str],
) -> Result<(String, Value)> {
    let dir = std::env::temp_dir().join(format!("fleet-tf-render-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir)?;
    // A local module source must be relative: climb from the scratch folder to the root.
    let module = root().join("terraform/modules/api-document");
    let up = "../".repeat(dir.components().count() - 1);
    let source = format!(
        "{up}{}",
        module
            .strip_prefix("/")
            .context("an absolute path")?
            .display()
    );
    std::fs::write(
        dir.join("main.tf"),
        format!(
            r#"
variable "document" {{ type = string }}
variable "vars" {{ type = map(string) }}
variable "pools" {{ type = list(string) }}
module "document" {{
  source                 = "{source}"
  document_path          = var.document
  template_vars          = var.vars
  cognito_user_pool_arns = var.pools
}}
output "body" {{ value = module.document.body }}
output "decoded" {{ value = yamldecode(module.document.body) }}
"#
        ),
    )?;
    std::fs::write(
        dir.join("terraform.tfvars.json"),
        serde_json::json!({ "document": document, "vars": vars, "pools": user_pools }).to_string(),
    )?;
    let tf = |args: &[&str]| {
        let mut command = Command::new("terraform");
        command
            .arg(format!("-chdir={}", dir.display()))
            .args(args)
            .env("TF_CLI_CONFIG_FILE", "/dev/null")
            .env("TF_IN_AUTOMATION", "1");
        command
    };
    run(&mut tf(&["init", "-input=false", "-backend=false"]))?;
    run(&mut tf(&[
        "apply",
        "-input=false",
        "-auto-approve",
        "-state=render.tfstate",
    ]))?;
    let body = run(&mut tf(&[
        "output",
        "-state=render.tfstate",
        "-raw",
        "body",
    ]))?;
    let decoded = serde_json::from_str(&run(&mut tf(&[
        "output",
        "-state=render.tfstate",
        "-json",
        "decoded",
    ]))?)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok((body, decoded))
}

fn python() -> std::path::PathBuf {
    std::env::var_os("FLEET_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root().join(".localstack/venv/bin/python"))
}

fn render_with_provisioner(
    document: &Path,
    vars: &serde_json::Map<String, Value>,
) -> Result<String> {
    run(Command::new(python())
        .current_dir(root().join("localstack"))
        .args([
            "-c",
            "import json, pathlib, sys, provision; \
             sys.stdout.write(provision.render_document(pathlib.Path(sys.argv[1]), json.loads(sys.argv[2])))",
        ])
        .arg(document)
        .arg(Value::Object(vars.clone()).to_string()))
}

/// The one definition of the caller's owner id (`api-gateway-mappings/owner.json`, beside the
/// document): a VTL statement that sets `$owner`, which both renderers substitute for
/// `${set_owner}`.
fn owner_definition(document: &Path) -> Result<String> {
    let path = document
        .parent()
        .context("the document's folder")?
        .join("owner.json");
    let owner: Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )?;
    Ok(owner["set_owner"].as_str().context("set_owner")?.to_owned())
}

/// What `$owner` is after `definition`, in API Gateway's VTL as LocalStack runs it, for each
/// named `$context`.
fn evaluate_owner(definition: &str, contexts: &Value) -> Result<Value> {
    let script = r#"
import json, sys
from localstack.services.apigateway.next_gen.execute_api.template_mapping import ApiGatewayVtlTemplate
out = {}
for name, context in json.loads(sys.argv[2]).items():
    context.update({"requestOverride": {}, "responseOverride": {}})
    variables = {"context": context, "input": {"body": "", "params": {}}}
    overrides = {"requestOverride": {}, "responseOverride": {}}
    out[name] = ApiGatewayVtlTemplate().render_request(sys.argv[1] + "[$owner]", variables, overrides)[0]
print(json.dumps(out))
"#;
    Ok(serde_json::from_str(&run(Command::new(python())
        .args(["-c", script, definition])
        .arg(contexts.to_string()))?)?)
}

/// Every mapping template of an operation: request templates and integration responses'.
fn templates(op: &Value) -> Vec<&str> {
    let integration = &op["x-amazon-apigateway-integration"];
    let mut out: Vec<&str> = integration["requestTemplates"]
        .as_object()
        .into_iter()
        .flat_map(|t| t.values().filter_map(Value::as_str))
        .collect();
    for response in integration["responses"]
        .as_object()
        .into_iter()
        .flat_map(|r| r.values())
    {
        out.extend(
            response["responseTemplates"]
                .as_object()
                .into_iter()
                .flat_map(|t| t.values().filter_map(Value::as_str)),
        );
    }
    out
}

/// The topology's document and every placeholder both renderers fill: the fixed three and the
/// topology's names.
fn document_and_vars() -> Result<(std::path::PathBuf, serde_json::Map<String, Value>)> {
    let topology: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("topology.json"))?)?;
    let document = root().join(
        topology["api"]["document"]
            .as_str()
            .context("api.document")?,
    );
    let mut vars = serde_json::Map::new();
    vars.insert("region".into(), "eu-west-1".into());
    vars.insert("account_id".into(), "123456789012".into());
    vars.insert(
        "api_role_arn".into(),
        "arn:aws:iam::123456789012:role/api".into(),
    );
    for (name, reference) in topology["api"]["template_vars"]
        .as_object()
        .context("template_vars")?
    {
        vars.insert(
            name.clone(),
            format!("prod-{}", reference.as_str().unwrap().replace(':', "-")).into(),
        );
    }
    Ok((document, vars))
}

#[test]
fn terraform_deploys_the_document_the_local_stack_imports() -> Result<()> {
    if !terraform_available()? {
        return Ok(());
    }
    let (document, vars) = document_and_vars()?;
    let (by_terraform, _) = render_with_terraform(&document, &vars, &[])?;
    let by_provisioner = render_with_provisioner(&document, &vars)?;
    assert!(
        !by_terraform.contains("${"),
        "a placeholder was left unrendered by Terraform"
    );
    if by_terraform != by_provisioner {
        let line = by_terraform
            .lines()
            .zip(by_provisioner.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        bail!(
            "Terraform and provision.py render the API differently from line {}:\n  terraform: {:?}\n  provision: {:?}",
            line + 1,
            by_terraform.lines().nth(line),
            by_provisioner.lines().nth(line)
        );
    }
    // The Terraform module deploys exactly this rendering of the topology's document.
    let module = std::fs::read_to_string(root().join("terraform/modules/api/main.tf"))?;
    assert!(
        module.contains("body              = local.body"),
        "the REST API body is the rendered document"
    );
    assert!(
        module.contains("source        = \"../api-document\""),
        "rendered by the module under test"
    );
    let main = std::fs::read_to_string(root().join("terraform/main.tf"))?;
    assert!(
        main.contains("local.topology.api.document"),
        "the root passes the topology's document"
    );
    assert!(
        main.contains("local.topology.api.template_vars"),
        "and the topology's names"
    );
    Ok(())
}

#[test]
fn with_a_user_pool_every_keyed_route_also_requires_a_cognito_jwt() -> Result<()> {
    if !terraform_available()? {
        return Ok(());
    }
    let (document, vars) = document_and_vars()?;
    let pool = "arn:aws:cognito-idp:eu-west-1:123456789012:userpool/eu-west-1_abc";
    let (_, api) = render_with_terraform(&document, &vars, &[pool])?;
    let scheme = &api["components"]["securitySchemes"]["cognito"];
    assert_eq!(scheme["x-amazon-apigateway-authtype"], "cognito_user_pools");
    assert_eq!(
        scheme["x-amazon-apigateway-authorizer"]["providerARNs"],
        serde_json::json!([pool])
    );
    assert_eq!(scheme["name"], "Authorization");
    assert!(api["components"]["securitySchemes"]["api_key"].is_object());
    let (mut keyed, mut public) = (0, 0);
    for (path, item) in api["paths"].as_object().context("paths")? {
        for (method, op) in item.as_object().context("path item")? {
            match op.get("security").and_then(Value::as_array) {
                Some(requirements) => {
                    keyed += 1;
                    assert_eq!(
                        requirements,
                        &vec![serde_json::json!({"api_key": [], "cognito": []})],
                        "{method} {path}: the key and a JWT"
                    );
                }
                None => public += 1,
            }
        }
    }
    let in_document = std::fs::read_to_string(&document)?
        .matches("- api_key: []")
        .count();
    assert!(in_document > 10);
    assert_eq!(keyed, in_document, "every route that needs a key");
    assert!(public >= 2, "the public posts routes stay public");
    Ok(())
}

#[test]
fn the_document_names_the_caller_only_through_the_owner_definition() -> Result<()> {
    let (document, _) = document_and_vars()?;
    let text = std::fs::read_to_string(&document)?;
    let definition = owner_definition(&document)?;
    assert!(
        definition.contains("context.authorizer.claims.sub")
            && definition.contains("context.identity.apiKeyId"),
        "{definition}"
    );
    // No template derives an identity of its own: the claims appear nowhere, and the API key
    // id only as the apiKeyId attribute (which client application sent it), once per use.
    assert!(
        !text.contains("context.authorizer"),
        "no copy of the owner logic"
    );
    assert_eq!(
        text.matches("$context.identity.apiKeyId").count(),
        text.matches("Name=apiKeyId&").count(),
        "the API key id is only the apiKeyId provenance attribute"
    );
    assert!(text.matches("${set_owner}").count() > 10);
    Ok(())
}

#[test]
fn with_a_user_pool_the_owner_is_the_jwt_sub_and_else_the_api_key_id() -> Result<()> {
    if !terraform_available()? {
        return Ok(());
    }
    let (document, vars) = document_and_vars()?;
    let definition = owner_definition(&document)?;
    let pool = "arn:aws:cognito-idp:eu-west-1:123456789012:userpool/eu-west-1_abc";
    let (_, api) = render_with_terraform(&document, &vars, &[pool])?;

    // Every keyed route but the shared catalogue's reads derives the owner, with the one
    // definition, before any use of it; every write sends it to the worker.
    let shared = ["get /books", "get /books/{book_id}"];
    let mut owned = 0;
    for (path, item) in api["paths"].as_object().context("paths")? {
        for (method, op) in item.as_object().context("path item")? {
            if op.get("security").is_none() {
                assert!(
                    templates(op).iter().all(|t| !t.contains("$owner")),
                    "{method} {path} is public: no owner"
                );
                continue;
            }
            let route = format!("{method} {path}");
            let using: Vec<&str> = templates(op)
                .into_iter()
                .filter(|t| t.contains("$owner"))
                .collect();
            if shared.contains(&route.as_str()) {
                assert!(using.is_empty(), "{route} is the shared catalogue");
                continue;
            }
            assert!(!using.is_empty(), "{route} derives the owner");
            owned += 1;
            for template in using {
                let at = template
                    .find(&definition)
                    .with_context(|| format!("{route}: the owner definition in {template}"))?;
                let first_use = template.find("$owner").unwrap();
                assert!(
                    (at..at + definition.len()).contains(&first_use),
                    "{route}: $owner used before its definition: {template}"
                );
                assert!(
                    !template
                        .replace(&definition, "")
                        .contains("context.authorizer"),
                    "{route}: no second derivation"
                );
            }
            let uri = op["x-amazon-apigateway-integration"]["uri"]
                .as_str()
                .unwrap_or_default();
            if uri.contains(":sqs:path/") {
                let request = templates(op)[0];
                assert!(
                    request.contains("Name=ownerId&")
                        && request.contains("StringValue=$util.urlEncode($owner)"),
                    "{route} sends ownerId: {request}"
                );
            }
        }
    }
    assert!(owned >= 12, "{owned} routes use the owner");

    // What the definition selects, in API Gateway's VTL (as LocalStack evaluates it).
    let owners = evaluate_owner(
        &definition,
        &serde_json::json!({
            "both": {"identity": {"apiKeyId": "key123"},
                     "authorizer": {"claims": {"sub": "5f0c-user-sub", "email": "a@b.c"}}},
            "api key only": {"identity": {"apiKeyId": "key123"}},
            "no claims": {"identity": {"apiKeyId": "key123"}, "authorizer": {}},
        }),
    )?;
    assert_eq!(owners["both"], "[5f0c-user-sub]", "Cognito's sub wins");
    assert_eq!(owners["api key only"], "[key123]", "else the API key id");
    assert_eq!(owners["no claims"], "[key123]");
    Ok(())
}
