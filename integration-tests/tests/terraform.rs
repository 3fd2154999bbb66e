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

/// The document rendered by Terraform's own `templatefile`, in a scratch configuration
/// (no provider, nothing created).
fn render_with_terraform(document: &Path, vars: &serde_json::Map<String, Value>) -> Result<String> {
    let dir = std::env::temp_dir().join(format!("fleet-tf-render-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("main.tf"),
        r#"
variable "document" { type = string }
variable "vars" { type = map(string) }
output "body" { value = templatefile(var.document, var.vars) }
"#,
    )?;
    std::fs::write(
        dir.join("terraform.tfvars.json"),
        serde_json::json!({ "document": document, "vars": vars }).to_string(),
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
    let _ = std::fs::remove_dir_all(&dir);
    Ok(body)
}

fn render_with_provisioner(
    document: &Path,
    vars: &serde_json::Map<String, Value>,
) -> Result<String> {
    let python = std::env::var_os("FLEET_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root().join(".localstack/venv/bin/python"));
    run(Command::new(python)
        .current_dir(root().join("localstack"))
        .args([
            "-c",
            "import json, sys, provision; \
             sys.stdout.write(provision.render(open(sys.argv[1]).read(), json.loads(sys.argv[2])))",
        ])
        .arg(document)
        .arg(Value::Object(vars.clone()).to_string()))
}

#[test]
fn terraform_deploys_the_document_the_local_stack_imports() -> Result<()> {
    if !terraform_available()? {
        return Ok(());
    }
    let topology: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("topology.json"))?)?;
    let document = root().join(
        topology["api"]["document"]
            .as_str()
            .context("api.document")?,
    );
    // Every placeholder both renderers fill: the fixed three and the topology's names.
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
    let by_terraform = render_with_terraform(&document, &vars)?;
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
        module.contains("templatefile(var.document_path"),
        "rendered with templatefile"
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
