//! `fleetctl`, the operations CLI, run against a stack's prefix.

use std::process::Stdio;

use anyhow::Result;
use tokio::process::Command;

use crate::{binary, Stack};

/// A `fleetctl` command for a stack's prefix, with the AWS environment.
pub fn fleetctl_command(stack: &Stack, args: &[&str]) -> Command {
    let mut command = Command::new(binary("fleetctl"));
    command
        .args(args)
        .env("FLEET_PREFIX", &stack.info.prefix)
        .envs(
            stack
                .worker_env("payments-worker")
                .into_iter()
                .filter(|(k, _)| k.starts_with("AWS_")),
        )
        .stdin(Stdio::null());
    command
}

/// Runs `fleetctl` against a stack's prefix; returns (exit code, stdout, stderr).
pub async fn fleetctl(stack: &Stack, args: &[&str]) -> Result<(i32, String, String)> {
    let out = fleetctl_command(stack, args).output().await?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}
