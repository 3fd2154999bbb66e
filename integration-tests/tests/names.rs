//! One rule for queue names, `<prefix><key>[-dlq][.fifo]`, owned by
//! `fleet::topology::QueueSpec::name`; the copies outside Rust (the local provisioner in Python,
//! Terraform's queue module) are checked against it here. No LocalStack needed.

use std::process::Command;

use anyhow::{ensure, Context, Result};
use fleet::topology::{is_fifo, Topology, DLQ_SUFFIX, FIFO_SUFFIX};
use integration_tests::{python, root};

/// Every topology queue's name and DLQ name as `provision.py` makes them, for `prefix`.
fn provisioner_names(prefix: &str) -> Result<serde_json::Value> {
    let script = r#"
import json, sys, types, provision
topology = json.load(open(sys.argv[2]))
me = types.SimpleNamespace(name=lambda suffix: sys.argv[1] + suffix)
print(json.dumps({key: [provision.Provisioner.queue_name(me, key, q), provision.Provisioner.queue_name(me, key, q, dlq=True)]
                  for key, q in topology["queues"].items()}))
"#;
    let out = Command::new(python())
        .current_dir(root().join("localstack"))
        .args(["-c", script, prefix])
        .arg(root().join("topology.json"))
        .output()
        .context("running provision.py's Python")?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[test]
fn the_provisioner_names_queues_by_the_engine_s_rule() -> Result<()> {
    let topology = Topology::builtin();
    let prefix = "fleet-";
    let python = provisioner_names(prefix)?;
    for (key, spec) in &topology.queues {
        let expected = [spec.name(prefix, key, false), spec.name(prefix, key, true)];
        let got: Vec<&str> = python[key]
            .as_array()
            .with_context(|| format!("{key} in provision.py's names"))?
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        ensure!(
            got == expected,
            "{key}: provision.py names {got:?}, the engine {expected:?}"
        );
        ensure!(is_fifo(&expected[0]) == spec.fifo && is_fifo(&expected[1]) == spec.fifo);
    }
    Ok(())
}

#[test]
fn terraform_names_queues_by_the_engine_s_rule() -> Result<()> {
    let module = std::fs::read_to_string(root().join("terraform/modules/queue/main.tf"))?;
    let root_module = std::fs::read_to_string(root().join("terraform/main.tf"))?;
    // The module is called with name = <prefix><key> and appends the same suffixes.
    let expected = [
        "name = \"${local.prefix}${each.key}\"".to_owned(),
        format!("suffix = var.fifo ? \"{FIFO_SUFFIX}\" : \"\""),
        format!("name = \"${{var.name}}{DLQ_SUFFIX}${{local.suffix}}\""),
        "name = \"${var.name}${local.suffix}\"".to_owned(),
    ];
    let squeeze = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    let (module, root_module) = (squeeze(&module), squeeze(&root_module));
    for line in &expected {
        ensure!(
            module.contains(line.as_str()) || root_module.contains(line.as_str()),
            "terraform/ no longer says `{line}`: queue names must follow fleet::topology::QueueSpec::name"
        );
    }
    Ok(())
}
