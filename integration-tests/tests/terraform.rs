//! Terraform and the local stack deploy the same API: the OpenAPI document rendered by
//! Terraform's `templatefile` (what `terraform/modules/api` deploys) is byte for byte the one
//! `localstack/provision.py` imports, for the same names. Needs `terraform` on PATH; without it
//! the test says so and passes, unless `FLEET_REQUIRE_TERRAFORM=1` (set by `.ci/run`).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use integration_tests::{python, root};
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

/// The one definition of the caller's owner id (`api-gateway-mappings/fragments.json`, beside
/// the document): a VTL statement that sets `$owner`, which both renderers substitute for
/// `${set_owner}`.
fn owner_definition(document: &Path) -> Result<String> {
    let path = document
        .parent()
        .context("the document's folder")?
        .join("fragments.json");
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

/// The text of the whole API: the shared document and every service's fragment beside it
/// (`services/*.yaml`), as both renderers assemble it (order aside).
fn document_text(document: &std::path::Path) -> Result<String> {
    let mut text = std::fs::read_to_string(document)?;
    let dir = document
        .parent()
        .context("the document's folder")?
        .join("services");
    let mut fragments: Vec<_> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    fragments.sort();
    for fragment in fragments {
        text.push_str(&std::fs::read_to_string(fragment)?);
    }
    Ok(text)
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
    let in_document = document_text(&document)?.matches("- api_key: []").count();
    assert!(in_document > 10);
    assert_eq!(keyed, in_document, "every route that needs a key");
    assert!(public >= 2, "the public posts routes stay public");
    Ok(())
}

#[test]
fn the_document_names_the_caller_only_through_the_owner_definition() -> Result<()> {
    let (document, _) = document_and_vars()?;
    let text = document_text(&document)?;
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

/// Applies a scratch configuration (no provider, nothing created) that calls `module` (a
/// folder under `terraform/modules`) as `module "m"` with `arguments` (HCL), the variables
/// `vars` (JSON) declared as `any`, and returns `terraform output -json`. An error carries
/// Terraform's message (e.g. a failed precondition).
fn apply_scratch_module(
    module: &str,
    arguments: &str,
    outputs: &[&str],
    vars: &serde_json::Map<String, Value>,
) -> Result<Value> {
    let dir = std::env::temp_dir().join(format!("fleet-tf-module-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir)?;
    let module_dir = root().join("terraform/modules").join(module);
    let up = "../".repeat(dir.components().count() - 1);
    let source = format!(
        "{up}{}",
        module_dir
            .strip_prefix("/")
            .context("an absolute path")?
            .display()
    );
    let mut main = String::new();
    for name in vars.keys() {
        main.push_str(&format!("variable \"{name}\" {{ type = any }}\n"));
    }
    main.push_str(&format!(
        "module \"m\" {{\n  source = \"{source}\"\n{arguments}\n}}\n"
    ));
    for output in outputs {
        main.push_str(&format!(
            "output \"{output}\" {{ value = module.m.{output} }}\n"
        ));
    }
    std::fs::write(dir.join("main.tf"), main)?;
    std::fs::write(
        dir.join("terraform.tfvars.json"),
        Value::Object(vars.clone()).to_string(),
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
    let result = (|| {
        run(&mut tf(&["init", "-input=false", "-backend=false"]))?;
        run(&mut tf(&[
            "apply",
            "-input=false",
            "-auto-approve",
            "-no-color",
            "-state=scratch.tfstate",
        ]))?;
        let out = run(&mut tf(&["output", "-state=scratch.tfstate", "-json"]))?;
        Ok(serde_json::from_str::<Value>(&out)?)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// What the root configuration deploys of `topology` (`terraform/modules/topology`, which
/// `terraform/main.tf` creates the queues from and `workers.tf` deploys the workers from), with
/// `approval_service` as the root variable sets it: `external_services` is
/// `["approval_service"]` for `"external"`, empty for `"builtin"`.
fn deployment_on_aws(topology: &Value, approval_service: &str) -> Result<Value> {
    let mut vars = serde_json::Map::new();
    vars.insert("topology".into(), topology.clone());
    vars.insert(
        "external".into(),
        if approval_service == "external" {
            serde_json::json!(["approval_service"])
        } else {
            serde_json::json!([])
        },
    );
    apply_scratch_module(
        "topology",
        "  topology          = var.topology\n  external_services = var.external",
        &["queues", "workers", "external_services", "queue_consumers"],
        &vars,
    )
}

/// Queue name → the worker that consumes it on the local stack: `localstack/provision.py`
/// creates every queue of the topology and computes each worker's environment
/// (`FLEET_QUEUE_URL`); `scripts/run-local` and the tests start every worker it returns.
fn consumers_on_the_local_stack(topology: &Value) -> Result<(Vec<String>, Value)> {
    let script = r#"
import json, sys, provision
topology = json.loads(sys.argv[1])
queues = {k: {"url": "local:" + k, "dlq_url": "local-dlq:" + k} for k in topology["queues"]}
tables = {k: "t-" + k for k in topology["tables"]}
topics = {k: "arn:topic:" + k for k in topology.get("topics", {})}
buckets = {k: "b-" + k for k in topology.get("buckets", {})}
workers = provision.worker_env(topology, queues, tables, topics, buckets)
print(json.dumps({"queues": sorted(queues), "workers": {w: env["FLEET_QUEUE_URL"] for w, env in workers.items()}}))
"#;
    let out: Value = serde_json::from_str(&run(Command::new(python())
        .current_dir(root().join("localstack"))
        .args(["-c", script])
        .arg(topology.to_string()))?)?;
    let queues = out["queues"]
        .as_array()
        .context("queues")?
        .iter()
        .map(|q| q.as_str().unwrap_or_default().to_owned())
        .collect();
    Ok((queues, out["workers"].clone()))
}

#[test]
fn every_queue_has_a_consumer_locally_and_on_aws() -> Result<()> {
    let topology: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("topology.json"))?)?;
    let queues: Vec<&String> = topology["queues"]
        .as_object()
        .context("queues")?
        .keys()
        .collect();

    // The local stack: every queue provisioned, every worker started on its queue.
    let (local_queues, local_workers) = consumers_on_the_local_stack(&topology)?;
    assert_eq!(
        local_queues.iter().collect::<Vec<_>>(),
        queues,
        "the local stack provisions every queue"
    );
    for queue in &local_queues {
        let consumers: Vec<&String> = local_workers
            .as_object()
            .context("workers")?
            .iter()
            .filter(|(_, url)| url.as_str() == Some(&format!("local:{queue}")))
            .map(|(w, _)| w)
            .collect();
        assert!(
            !consumers.is_empty(),
            "locally nothing consumes queue {queue}"
        );
    }
    let run_local = std::fs::read_to_string(root().join("scripts/run-local"))?;
    assert!(
        run_local.contains(r#"for worker, env in p["workers"].items():"#),
        "scripts/run-local starts every worker the provisioner returns"
    );

    if !terraform_available()? {
        return Ok(());
    }
    // AWS, with either approval service: what Terraform creates and deploys.
    for approval_service in ["builtin", "external"] {
        let out = deployment_on_aws(&topology, approval_service)?;
        let created: Vec<&String> = out["queues"]["value"]
            .as_object()
            .context("queues")?
            .keys()
            .collect();
        assert_eq!(created, queues, "Terraform creates every queue");
        let workers = out["workers"]["value"].as_object().context("workers")?;
        let external = out["external_services"]["value"]
            .as_object()
            .context("external_services")?;
        for queue in &created {
            let by_worker = workers
                .values()
                .any(|w| w["queue"].as_str() == Some(queue.as_str()));
            let by_service = external
                .values()
                .any(|e| e["consumes"].as_str() == Some(queue.as_str()));
            assert!(
                by_worker || by_service,
                "{approval_service}: nothing consumes queue {queue} on AWS"
            );
            assert!(
                !out["queue_consumers"]["value"][queue.as_str()]
                    .as_array()
                    .context("consumers")?
                    .is_empty(),
                "{approval_service}: the module's own account of {queue}"
            );
        }
        match approval_service {
            "builtin" => {
                assert!(
                    workers.contains_key("approval-simulator"),
                    "the approver is deployed"
                );
                assert!(external.is_empty());
            }
            _ => {
                assert!(
                    !workers.contains_key("approval-simulator"),
                    "no approver task with an external approval service"
                );
                let service = &external["approval_service"];
                assert_eq!(service["replaces"], "approval-simulator");
                assert_eq!(service["consumes"], "approval-requests");
                assert_eq!(
                    service["sends_to"],
                    serde_json::json!(["approval-responses"])
                );
            }
        }
        // Every other worker of the topology is deployed in both cases.
        for name in topology["workers"].as_object().context("workers")?.keys() {
            if name != "approval-simulator" {
                assert!(workers.contains_key(name), "{approval_service}: {name}");
            }
        }
    }

    // The check runs in every plan: a queue nobody consumes fails it, naming the queue.
    let mut orphaned = topology.clone();
    orphaned["queues"]["orphans"] = orphaned["queues"]["payments"].clone();
    let failure = deployment_on_aws(&orphaned, "builtin")
        .err()
        .context("a queue without a consumer must fail the plan")?;
    assert!(
        format!("{failure:#}").contains("Queues without a consumer in this deployment")
            && format!("{failure:#}").contains("orphans"),
        "{failure:#}"
    );

    // The root configuration creates the queues and deploys the workers from the module.
    let main = std::fs::read_to_string(root().join("terraform/main.tf"))?;
    assert!(main.contains("source            = \"./modules/topology\""));
    assert!(main.contains("queues  = module.topology.queues"));
    assert!(main.contains("workers = module.topology.workers"));
    assert!(main.contains("for_each = local.queues"));
    let workers_tf = std::fs::read_to_string(root().join("terraform/workers.tf"))?;
    assert!(workers_tf.contains("for name, w in local.workers : name => {"));
    assert!(workers_tf.contains("for_each = var.workers_enabled ? local.worker_settings : {}"));
    // Only LocalStack's configuration (whose workers run locally) turns the ECS part off.
    for env in ["dev", "prod"] {
        let tfvars =
            std::fs::read_to_string(root().join(format!("terraform/environments/{env}.tfvars")))?;
        assert!(
            !tfvars.contains("workers_enabled"),
            "{env} deploys the workers"
        );
    }
    Ok(())
}
