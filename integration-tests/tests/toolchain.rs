//! One toolchain, one HTTP stack, no known advisories, checked from the files (no LocalStack):
//!
//! - `rust-toolchain.toml`'s channel, the workspace `rust-version` (inherited by every crate)
//!   and the Dockerfile's builder (`RUST_VERSION`) are the same version, and it is at least the
//!   highest `rust-version` any package of `Cargo.lock` declares (from `cargo metadata`);
//! - the legacy HTTP stack (hyper 0.x, rustls 0.21 and their companions), which the AWS SDK's
//!   default `rustls` feature pulls in beside hyper 1 / rustls 0.23, stays out of `Cargo.lock`;
//! - `cargo audit` finds no vulnerability, where it is installed and its advisory database can
//!   be had (CI on GitHub sets `FLEET_REQUIRE_ADVISORIES=1`: there a missing check fails).
//!   `FLEET_ADVISORY_DB=<path>` points it at a local copy of the database (offline).

use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use integration_tests::root;
use serde_json::Value;

fn read(relative: &str) -> Result<String> {
    let path = root().join(relative);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// `major.minor[.patch]` as a comparable triple (a missing patch is 0).
fn version(text: &str) -> Result<(u64, u64, u64)> {
    let mut parts = text.trim().split('.').map(str::parse::<u64>);
    let mut next = |required: bool| -> Result<u64> {
        match parts.next() {
            Some(part) => Ok(part.with_context(|| format!("version {text:?}"))?),
            None if !required => Ok(0),
            None => bail!("version {text:?}: major.minor[.patch] expected"),
        }
    };
    let parsed = (next(true)?, next(true)?, next(false)?);
    ensure!(parts.next().is_none(), "version {text:?}: too many parts");
    Ok(parsed)
}

/// The string value of `key = "..."` within `[section]` of a TOML file (enough for the flat
/// files it reads: rust-toolchain.toml, Cargo.toml).
fn toml_value(text: &str, section: &str, key: &str) -> Option<String> {
    let mut in_section = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_section = line == format!("[{section}]");
            continue;
        }
        if !in_section {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            if k.trim() == key {
                return Some(v.trim().trim_matches('"').to_owned());
            }
        }
    }
    None
}

/// The default of `ARG <name>=<value>` in the Dockerfile.
fn dockerfile_arg(dockerfile: &str, name: &str) -> Option<String> {
    dockerfile
        .lines()
        .filter_map(|line| line.trim().strip_prefix("ARG "))
        .filter_map(|arg| arg.split_once('='))
        .find(|(key, _)| key.trim() == name)
        .map(|(_, value)| value.trim().trim_matches('"').to_owned())
}

/// The Rust version the Dockerfile builds with: the tag of its `FROM rust:<version>-...`
/// stage(s), `${RUST_VERSION}` resolved from the ARG's default.
fn dockerfile_rust_version() -> Result<String> {
    let dockerfile = read("Dockerfile")?;
    let rust_version = dockerfile_arg(&dockerfile, "RUST_VERSION");
    let mut versions = Vec::new();
    for line in dockerfile.lines().map(str::trim) {
        let Some(image) = line.strip_prefix("FROM ").map(str::trim) else {
            continue;
        };
        let image = image.split_whitespace().next().unwrap_or("");
        let image = image
            .trim_start_matches("docker.io/")
            .trim_start_matches("library/");
        let Some(tag) = image.strip_prefix("rust:") else {
            continue;
        };
        let tag = match &rust_version {
            Some(v) => tag.replace("${RUST_VERSION}", v),
            None => tag.to_owned(),
        };
        ensure!(!tag.contains('$'), "FROM {image}: an ARG without a default");
        versions.push(tag.split('-').next().unwrap_or("").to_owned());
    }
    match versions.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("the Dockerfile has no `FROM rust:<version>-...` builder stage"),
        many => {
            ensure!(
                many.iter().all(|v| v == &many[0]),
                "the Dockerfile's rust stages disagree: {many:?}"
            );
            Ok(many[0].clone())
        }
    }
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    command.current_dir(root());
    command
}

/// `cargo metadata` of the workspace and of every package in Cargo.lock.
fn metadata() -> Result<Value> {
    let out = cargo()
        .args(["metadata", "--format-version", "1", "--locked"])
        .output()
        .context("running cargo metadata")?;
    ensure!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[test]
fn toolchain_file_workspace_and_dockerfile_name_one_version() -> Result<()> {
    let toolchain = read("rust-toolchain.toml")?;
    let channel = toml_value(&toolchain, "toolchain", "channel")
        .context("rust-toolchain.toml: [toolchain] channel")?;
    // A version, not `stable`: the same compiler everywhere, and one the Docker image has.
    let pinned = version(&channel)
        .with_context(|| format!("rust-toolchain.toml pins a version (x.y.z), not {channel:?}"))?;
    ensure!(
        channel.split('.').count() == 3,
        "rust-toolchain.toml pins a full version (x.y.z), not {channel:?}"
    );
    for component in ["rustfmt", "clippy"] {
        ensure!(
            toolchain.contains(&format!("\"{component}\"")),
            "rust-toolchain.toml installs {component} (CI runs it)"
        );
    }

    let workspace = toml_value(&read("Cargo.toml")?, "workspace.package", "rust-version")
        .context("Cargo.toml: [workspace.package] rust-version")?;
    let docker = dockerfile_rust_version()?;
    ensure!(
        docker == channel,
        "the Dockerfile builds with rust {docker}, rust-toolchain.toml says {channel}"
    );
    ensure!(
        version(&workspace)? == pinned,
        "Cargo.toml's rust-version {workspace} is not rust-toolchain.toml's {channel}"
    );

    // Every crate of the workspace inherits it.
    let metadata = metadata()?;
    let members: Vec<&str> = metadata["workspace_members"]
        .as_array()
        .context("workspace_members")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for package in metadata["packages"].as_array().context("packages")? {
        if !members.contains(&package["id"].as_str().unwrap_or("")) {
            continue;
        }
        let name = package["name"].as_str().unwrap_or("?");
        let manifest = std::fs::read_to_string(package["manifest_path"].as_str().unwrap_or(""))?;
        ensure!(
            manifest.contains("rust-version.workspace = true"),
            "{name}'s Cargo.toml does not inherit the workspace rust-version \
             (rust-version.workspace = true)"
        );
        ensure!(
            package["rust_version"].as_str() == Some(workspace.as_str()),
            "{name} has rust-version {}, the workspace {workspace}",
            package["rust_version"]
        );
    }

    // CI takes its toolchain from the file, not from a second pin.
    let ci = read(".github/workflows/ci.yml")?;
    ensure!(
        ci.contains("rustup toolchain install") && !ci.contains("rust-toolchain@"),
        "ci.yml installs the toolchain of rust-toolchain.toml (rustup toolchain install), no other"
    );
    Ok(())
}

#[test]
fn the_toolchain_is_new_enough_for_every_locked_package() -> Result<()> {
    let metadata = metadata()?;
    // The workspace's own crates declare the toolchain's version: the dependencies set the pace.
    let members = metadata["workspace_members"]
        .as_array()
        .context("workspace_members")?;
    let mut required: Vec<((u64, u64, u64), String)> = Vec::new();
    for package in metadata["packages"].as_array().context("packages")? {
        if members.contains(&package["id"]) {
            continue;
        }
        if let Some(rust_version) = package["rust_version"].as_str() {
            required.push((
                version(rust_version)?,
                format!(
                    "{} {} (rust-version {rust_version})",
                    package["name"].as_str().unwrap_or("?"),
                    package["version"].as_str().unwrap_or("?")
                ),
            ));
        }
    }
    let highest = required
        .iter()
        .map(|(v, _)| *v)
        .max()
        .context("no package declares a rust-version")?;
    let docker = dockerfile_rust_version()?;
    let builder = version(&docker)?;
    let newer: Vec<&str> = required
        .iter()
        .filter(|(v, _)| *v > builder)
        .map(|(_, what)| what.as_str())
        .collect();
    ensure!(
        newer.is_empty(),
        "the Dockerfile builds with rust {docker}, older than what {} locked packages need \
         (move rust-toolchain.toml, Cargo.toml's rust-version and the Dockerfile together):\n{}",
        newer.len(),
        newer.join("\n")
    );
    eprintln!(
        "highest rust-version in Cargo.lock: {}.{}.{}; the toolchain: {docker}",
        highest.0, highest.1, highest.2
    );
    Ok(())
}

/// Packages of the legacy HTTP stack, by name and the versions that are legacy.
fn is_legacy(name: &str, version: &str) -> bool {
    let major_minor = |prefix: &str| version.starts_with(prefix);
    match name {
        "hyper" => major_minor("0."),
        "rustls" => major_minor("0.21.") || major_minor("0.20."),
        "hyper-rustls" => major_minor("0.24.") || major_minor("0.23."),
        "tokio-rustls" => major_minor("0.24.") || major_minor("0.23."),
        "rustls-webpki" => major_minor("0.101.") || major_minor("0.100."),
        "h2" => major_minor("0.3."),
        "sct" => true,
        _ => false,
    }
}

#[test]
fn the_legacy_http_stack_stays_out_of_the_lock_file() -> Result<()> {
    let lock = read("Cargo.lock")?;
    let mut legacy = Vec::new();
    let mut name = None;
    for line in lock.lines() {
        if line == "[[package]]" {
            name = None;
        } else if let Some(value) = line.strip_prefix("name = ") {
            name = Some(value.trim_matches('"').to_owned());
        } else if let (Some(n), Some(value)) = (&name, line.strip_prefix("version = ")) {
            let version = value.trim_matches('"');
            if is_legacy(n, version) {
                legacy.push(format!("{n}@{version}"));
            }
        }
    }
    if legacy.is_empty() {
        return Ok(());
    }
    // Who brings them: cargo tree, inverted.
    let mut why = String::new();
    for package in &legacy {
        if let Ok(out) = cargo()
            .args(["tree", "--workspace", "--edges", "normal,build", "--invert"])
            .arg(package)
            .output()
        {
            why.push_str(&String::from_utf8_lossy(&out.stdout));
        }
    }
    bail!(
        "Cargo.lock has the legacy HTTP stack again: {legacy:?}. An AWS SDK crate with its \
         default features (`rustls`) brings it: give it default-features = false, features = \
         [\"default-https-client\", \"rt-tokio\"] in Cargo.toml's [workspace.dependencies].\n{why}"
    );
}

#[test]
fn cargo_audit_finds_no_vulnerability() -> Result<()> {
    let required = std::env::var_os("FLEET_REQUIRE_ADVISORIES").is_some();
    let skip = |why: String| -> Result<()> {
        ensure!(!required, "FLEET_REQUIRE_ADVISORIES is set, but {why}");
        eprintln!("advisory check skipped: {why}");
        Ok(())
    };
    if !cargo()
        .args(["audit", "--version"])
        .output()
        .is_ok_and(|out| out.status.success())
    {
        return skip("cargo-audit is not installed (cargo install cargo-audit --locked)".into());
    }
    let mut audit = cargo();
    audit.args(["audit", "--json", "--file", "Cargo.lock"]);
    if let Some(db) = std::env::var_os("FLEET_ADVISORY_DB") {
        audit.arg("--db").arg(db).args(["--no-fetch", "--stale"]);
    }
    let out = audit.output().context("running cargo audit")?;
    let Ok(report) = serde_json::from_slice::<Value>(&out.stdout) else {
        // No report: the database could not be fetched (offline) or read.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().last().unwrap_or("").to_owned();
        return skip(format!("cargo audit could not run: {last}"));
    };
    let database = &report["database"];
    eprintln!(
        "cargo audit: {} advisories (database updated {})",
        database["advisory-count"],
        database["last-updated"].as_str().unwrap_or("?")
    );
    for (kind, warnings) in report["warnings"].as_object().into_iter().flatten() {
        for warning in warnings.as_array().into_iter().flatten() {
            eprintln!(
                "cargo audit warning ({kind}): {} {} {}",
                warning["package"]["name"].as_str().unwrap_or("?"),
                warning["package"]["version"].as_str().unwrap_or("?"),
                warning["advisory"]["id"].as_str().unwrap_or("")
            );
        }
    }
    let found: Vec<String> = report["vulnerabilities"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            format!(
                "{} {} {}: {} (patched: {})",
                v["package"]["name"].as_str().unwrap_or("?"),
                v["package"]["version"].as_str().unwrap_or("?"),
                v["advisory"]["id"].as_str().unwrap_or("?"),
                v["advisory"]["title"].as_str().unwrap_or(""),
                v["versions"]["patched"]
            )
        })
        .collect();
    ensure!(
        found.is_empty(),
        "cargo audit found vulnerabilities (update the crates; an accepted one goes in \
         .cargo/audit.toml with the reason):\n{}",
        found.join("\n")
    );
    Ok(())
}
