//! docs/configuration.md against each worker binary's `--help`: every variable a binary reads
//! is documented with its flag (and, in the engine's table, its default), and the document
//! names no variable that no binary reads. No LocalStack needed.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use fleet::topology::Topology;
use integration_tests::{binary, root};

/// One option of a `--help`: its long flag, its variable, its default.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HelpOption {
    flag: String,
    default: Option<String>,
}

/// The options of a binary's `--help` that have a variable, by variable.
fn options(bin: &str) -> Result<BTreeMap<String, HelpOption>> {
    let out = Command::new(binary(bin))
        .arg("--help")
        .env_clear()
        .output()
        .with_context(|| format!("{bin} --help"))?;
    ensure!(out.status.success(), "{bin} --help failed");
    let help = String::from_utf8(out.stdout)?;
    let mut found = BTreeMap::new();
    let mut flag: Option<String> = None;
    let mut default = None;
    for line in help.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("--").or_else(|| {
            trimmed
                .strip_prefix('-')
                .and_then(|r| r.split_once(", --").map(|(_, long)| long))
        }) {
            flag = Some(format!(
                "--{}",
                rest.split([' ', '=', '<', ',']).next().unwrap_or_default()
            ));
            default = None;
        }
        if let Some(d) = trimmed
            .split("[default: ")
            .nth(1)
            .and_then(|d| d.split(']').next())
        {
            default = Some(d.to_owned());
        }
        if let Some(var) = trimmed
            .split("[env: ")
            .nth(1)
            .and_then(|v| v.split(['=', ']']).next())
        {
            let flag = flag
                .clone()
                .with_context(|| format!("{bin}: {var} has no flag"))?;
            found.insert(
                var.to_owned(),
                HelpOption {
                    flag,
                    default: default.clone(),
                },
            );
        }
    }
    Ok(found)
}

/// The rows of the document's tables that name a variable: variable → the whole row.
fn documented_rows(doc: &str) -> BTreeMap<String, Vec<String>> {
    let mut rows: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in doc.lines().filter(|l| l.starts_with('|')) {
        for var in backticked(line) {
            if var
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                && var.contains('_')
            {
                rows.entry(var).or_default().push(line.to_owned());
            }
        }
    }
    rows
}

/// Every `code` span of a line.
fn backticked(line: &str) -> Vec<String> {
    line.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_variable_a_worker_reads_is_documented_with_its_flag_and_default() -> Result<()> {
    let doc = std::fs::read_to_string(root().join("docs/configuration.md"))?;
    let rows = documented_rows(&doc);
    let engine = options("payments-worker")?;
    let mut read = BTreeSet::new();
    let mut wrong = Vec::new();
    for worker in Topology::builtin().workers.keys() {
        for (var, option) in options(worker)? {
            read.insert(var.clone());
            let Some(rows) = rows.get(&var) else {
                wrong.push(format!(
                    "{worker}: {var} ({}) is not documented",
                    option.flag
                ));
                continue;
            };
            if !rows
                .iter()
                .any(|row| backticked(row).iter().any(|c| c.contains(&option.flag)))
            {
                wrong.push(format!(
                    "{worker}: {var}'s flag {} is not in its row",
                    option.flag
                ));
            }
            // The engine's table has a default column: it must say the binary's default.
            if let (Some(default), true) = (&option.default, engine.contains_key(&var)) {
                let row = &rows[0];
                let cell = row.split('|').nth(3).unwrap_or_default();
                if !cell.replace('`', "").contains(default.as_str()) {
                    wrong.push(format!(
                        "{var}: the default is {default}, the document says {}",
                        cell.trim()
                    ));
                }
            }
        }
    }
    for var in rows.keys() {
        let is_option_like = var.starts_with("FLEET_") && !var.starts_with("FLEET_PREFIX");
        if is_option_like && !read.contains(var) && !documented_elsewhere(var) {
            wrong.push(format!("{var} is documented but no worker reads it"));
        }
    }
    ensure!(
        wrong.is_empty(),
        "docs/configuration.md:\n{}",
        wrong.join("\n")
    );
    Ok(())
}

/// Variables in the document's tables that are not worker options: the scripts' and the tests'.
fn documented_elsewhere(var: &str) -> bool {
    [
        "FLEET_REQUIRE_TERRAFORM",
        "FLEET_PYTHON",
        "FLEET_MAX_IN_FLIGHT",
    ]
    .contains(&var)
}
