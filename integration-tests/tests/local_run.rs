//! The local run's scripts, checked without running the fleet (each check takes well under a
//! second, and none builds or starts anything):
//!
//! - every script parses (`bash -n`);
//! - `scripts/run-local --help`, an unknown argument, and `--check` (the prerequisites, then
//!   what it would build and start): the dev profile by default, `--release` on request, the
//!   endpoint following `LOCALSTACK_PORT`;
//! - a missing prerequisite is named: a Rust older than the workspace needs, no C compiler, a
//!   port that is not a number;
//! - `scripts/lib.sh` points `AWS_ENDPOINT_URL` (what provision.py, the workers, fleetctl and
//!   `integration_tests::endpoint()` use) at `LOCALSTACK_PORT`, and the port at a local
//!   `AWS_ENDPOINT_URL` when no port is given;
//! - `localstack/stop.sh --pid` leaves a process that is not LocalStack alone.
//!
//! Starting and stopping LocalStack for real (Ctrl-C, a second Ctrl-C, a crashed worker) is
//! slow and was checked by hand; see the README's "Two commands" and docs/localstack.md,
//! "Starting and stopping".

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use anyhow::{ensure, Context, Result};
use integration_tests::root;

const SCRIPTS: &[&str] = &[
    "scripts/run-local",
    "scripts/lib.sh",
    "scripts/fleetctl",
    "scripts/test",
    "localstack/env.sh",
    "localstack/start.sh",
    "localstack/stop.sh",
    "localstack/install.sh",
];

/// `bash <script> <args>` in the workspace, with the variables the scripts read about the
/// stack cleared (scripts/test exports them), then `env` set.
fn bash(args: &[&str], env: &[(&str, &str)]) -> Result<Output> {
    let mut command = Command::new("bash");
    command
        .args(args)
        .current_dir(root())
        .stdin(Stdio::null())
        .env_remove("LOCALSTACK_PORT")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("RUSTC")
        .env_remove("CC");
    for (key, value) in env {
        command.env(key, value);
    }
    command
        .output()
        .with_context(|| format!("running bash {args:?}"))
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A port nothing listens on (just now), so `--check` finds no LocalStack there.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// An executable shell script in a fresh temporary folder.
fn fake_program(name: &str, body: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!(
        "fleet-local-run-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n"))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

#[test]
fn every_script_parses() -> Result<()> {
    for script in SCRIPTS {
        let out = bash(&["-n", script], &[])?;
        ensure!(out.status.success(), "bash -n {script}: {}", text(&out).1);
    }
    Ok(())
}

#[test]
fn run_local_help_and_bad_arguments() -> Result<()> {
    let out = bash(&["scripts/run-local", "--help"], &[])?;
    let (stdout, _) = text(&out);
    ensure!(out.status.success(), "--help exits 0");
    for word in [
        "--release",
        "--check",
        "LOCALSTACK_PORT",
        ".fleet/local.env",
        "scripts/fleetctl",
    ] {
        ensure!(stdout.contains(word), "--help mentions {word}: {stdout}");
    }

    let out = bash(&["scripts/run-local", "--no-such-flag"], &[])?;
    let (_, stderr) = text(&out);
    ensure!(out.status.code() == Some(2), "an unknown argument exits 2");
    ensure!(
        stderr.contains("unknown argument: --no-such-flag") && stderr.contains("usage:"),
        "an unknown argument is named, with the usage: {stderr}"
    );
    Ok(())
}

#[test]
fn run_local_check_says_what_it_would_build_and_start() -> Result<()> {
    let port = free_port()?.to_string();
    let endpoint = format!("http://127.0.0.1:{port}");

    let out = bash(
        &["scripts/run-local", "--check"],
        &[("LOCALSTACK_PORT", &port)],
    )?;
    let (stdout, stderr) = text(&out);
    ensure!(
        out.status.success(),
        "--check passes here: {stdout}{stderr}"
    );
    ensure!(stdout.contains("prerequisites: ok"), "{stdout}");
    // The dev profile by default: the very build scripts/test makes.
    ensure!(
        stdout.contains("build: cargo build --workspace --bins (profile dev"),
        "{stdout}"
    );
    ensure!(stdout.contains("/debug"), "dev binaries: {stdout}");
    ensure!(
        stdout.contains(&format!("would be started at {endpoint}")),
        "LocalStack on LOCALSTACK_PORT: {stdout}"
    );
    ensure!(
        stdout.contains(&format!("AWS_ENDPOINT_URL={endpoint}\n")),
        "the endpoint follows the port: {stdout}"
    );

    let out = bash(
        &["scripts/run-local", "--release", "--check"],
        &[("LOCALSTACK_PORT", &port)],
    )?;
    let (stdout, stderr) = text(&out);
    ensure!(out.status.success(), "--release --check: {stdout}{stderr}");
    ensure!(
        stdout.contains("build: cargo build --workspace --bins --release (profile release"),
        "{stdout}"
    );
    ensure!(stdout.contains("/release"), "release binaries: {stdout}");
    Ok(())
}

#[test]
fn missing_prerequisites_are_named() -> Result<()> {
    let port = free_port()?.to_string();

    let old_rustc = fake_program("rustc", "echo 'rustc 1.60.0 (7737e0b5c 2022-04-04)'")?;
    let out = bash(
        &["scripts/run-local", "--check"],
        &[
            ("LOCALSTACK_PORT", &port),
            ("RUSTC", old_rustc.to_str().context("path")?),
        ],
    );
    if let Some(dir) = old_rustc.parent() {
        std::fs::remove_dir_all(dir).ok();
    }
    let out = out?;
    let (_, stderr) = text(&out);
    ensure!(out.status.code() == Some(1), "an old Rust fails the check");
    ensure!(
        stderr.contains("too old: rustc 1.60.0") && stderr.contains("needs Rust"),
        "names the Rust version: {stderr}"
    );

    let out = bash(
        &["scripts/run-local", "--check"],
        &[("LOCALSTACK_PORT", &port), ("CC", "/nonexistent/cc")],
    )?;
    let (_, stderr) = text(&out);
    ensure!(
        out.status.code() == Some(1),
        "no C compiler fails the check"
    );
    ensure!(stderr.contains("missing: a C compiler"), "{stderr}");

    let out = bash(
        &["scripts/run-local", "--check"],
        &[("LOCALSTACK_PORT", "45x")],
    )?;
    let (_, stderr) = text(&out);
    ensure!(!out.status.success(), "a port that is no number fails");
    ensure!(
        stderr.contains("LOCALSTACK_PORT=45x is not a port number"),
        "{stderr}"
    );
    Ok(())
}

/// `LOCALSTACK_PORT AWS_ENDPOINT_URL` after sourcing scripts/lib.sh with `env`.
fn lib_endpoint(env: &[(&str, &str)]) -> Result<(String, String)> {
    let out = bash(
        &[
            "-c",
            "source scripts/lib.sh && echo \"$LOCALSTACK_PORT $AWS_ENDPOINT_URL\"",
        ],
        env,
    )?;
    let (stdout, stderr) = text(&out);
    ensure!(out.status.success(), "sourcing lib.sh: {stderr}");
    let (port, url) = stdout
        .trim()
        .split_once(' ')
        .with_context(|| format!("two words: {stdout}"))?;
    Ok((port.to_owned(), url.to_owned()))
}

#[test]
fn the_endpoint_follows_localstack_port() -> Result<()> {
    let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    // CI: nothing set, as before.
    ensure!(lib_endpoint(&[])? == pair("4566", "http://127.0.0.1:4566"));
    ensure!(lib_endpoint(&[("LOCALSTACK_PORT", "4599")])? == pair("4599", "http://127.0.0.1:4599"));
    // A port given explicitly wins over a local endpoint left in the shell.
    ensure!(
        lib_endpoint(&[
            ("LOCALSTACK_PORT", "4599"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
        ])? == pair("4599", "http://127.0.0.1:4599")
    );
    // `source .fleet/local.env` of a run on 4599, then scripts/test: the same LocalStack.
    ensure!(
        lib_endpoint(&[("AWS_ENDPOINT_URL", "http://127.0.0.1:4599")])?
            == pair("4599", "http://127.0.0.1:4599")
    );
    // An endpoint elsewhere is left as it is.
    ensure!(
        lib_endpoint(&[("AWS_ENDPOINT_URL", "http://localstack.internal:4566")])?
            == pair("4566", "http://localstack.internal:4566")
    );
    Ok(())
}

#[test]
fn stop_leaves_a_process_that_is_not_localstack_alone() -> Result<()> {
    let port = free_port()?.to_string();
    let mut sleeper = Command::new("sleep").arg("30").spawn()?;
    let pid = sleeper.id().to_string();
    let out = bash(
        &["localstack/stop.sh", "--pid", &pid, "--grace", "1"],
        &[("LOCALSTACK_PORT", &port)],
    )?;
    let still_running = sleeper.try_wait()?.is_none();
    sleeper.kill().ok();
    sleeper.wait().ok();
    ensure!(out.status.success(), "stop.sh: {}", text(&out).1);
    ensure!(
        still_running,
        "stop.sh --pid {pid} killed a process that is not LocalStack"
    );
    Ok(())
}
