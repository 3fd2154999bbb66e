//! The stack under test: where LocalStack answers, the workspace and its binaries, and an
//! isolated copy of the fleet's topology provisioned on LocalStack for one test.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use tokio::process::Command;

/// Where LocalStack answers (the standard AWS variable, as for the workers).
pub fn endpoint() -> String {
    if crate::container::wanted() {
        return crate::container::endpoint();
    }
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:4566".to_owned())
}

/// The workspace root: `FLEET_ROOT`, else the crate folder cargo names at run time, else the
/// one it named at build time.
///
/// Run time first: builds share a `CARGO_TARGET_DIR` across clones (CI's fresh clone, a
/// developer's tree), and cargo reuses a test binary built in another clone, whose compile-time
/// path would point the tests at that clone's provisioner and API document.
pub fn root() -> PathBuf {
    if let Some(root) = std::env::var_os("FLEET_ROOT") {
        return PathBuf::from(root);
    }
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    Path::new(&manifest_dir)
        .parent()
        .expect("integration-tests sits in the workspace")
        .to_path_buf()
}

/// The Python that runs the local provisioner: `FLEET_PYTHON`, else the virtual environment
/// `localstack/start.sh` makes.
pub fn python() -> PathBuf {
    std::env::var_os("FLEET_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".localstack/venv/bin/python"))
}

/// A built binary of the workspace: `FLEET_BIN_DIR`, else the profile folder this test
/// executable was built into (`target/<profile>/deps/..`).
pub fn binary(name: &str) -> PathBuf {
    let dir = std::env::var_os("FLEET_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().expect("current exe");
            let parent = exe.parent().expect("exe folder");
            if parent.ends_with("deps") {
                parent.parent().expect("profile folder").to_path_buf()
            } else {
                parent.to_path_buf()
            }
        });
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` first (scripts/test does)",
        path.display()
    );
    path
}

/// The stack's answer from `provision.py --json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Provisioned {
    pub prefix: String,
    pub api: Api,
    pub queues: HashMap<String, Queue>,
    pub tables: HashMap<String, String>,
    /// SNS topic ARNs by topology name.
    #[serde(default)]
    pub topics: HashMap<String, String>,
    /// S3 bucket names by topology name.
    #[serde(default)]
    pub buckets: HashMap<String, String>,
    pub workers: HashMap<String, HashMap<String, String>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Api {
    pub id: String,
    pub url: String,
    pub key: String,
    /// Another client's key.
    pub other_key: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Queue {
    pub name: String,
    pub url: String,
    pub dlq_url: String,
}

/// An isolated copy of the fleet on LocalStack, with clients to look at it.
pub struct Stack {
    pub info: Provisioned,
    pub sqs: aws_sdk_sqs::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub http: reqwest::Client,
}

/// AWS configuration for LocalStack (test credentials unless the environment has others).
pub async fn sdk_config() -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint())
        .region(aws_config::Region::new(
            std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".to_owned()),
        ));
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        loader = loader.credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "static",
        ));
    }
    loader.load().await
}

impl Stack {
    /// Provisions a fresh copy of the topology under a random prefix.
    pub async fn provision() -> Result<Self> {
        let health = format!("{}/_localstack/health", endpoint());
        reqwest::get(&health).await.with_context(|| {
            format!(
                "LocalStack does not answer at {health}: run scripts/test, or localstack/start.sh"
            )
        })?;
        Self::provision_prefix(&format!("t{:08x}-", fastrand::u32(..))).await
    }

    /// Runs the provisioner again over this stack's prefix.
    pub async fn reprovision(&self) -> Result<Self> {
        Self::provision_prefix(&self.info.prefix).await
    }

    async fn provision_prefix(prefix: &str) -> Result<Self> {
        let python = python();
        let output = Command::new(&python)
            .arg(root().join("localstack/provision.py"))
            .args(["--json", "--prefix", prefix, "--endpoint", &endpoint()])
            .output()
            .await
            .with_context(|| format!("running {}", python.display()))?;
        if !output.status.success() {
            bail!(
                "provision.py failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let info: Provisioned = serde_json::from_slice(&output.stdout)?;
        let sdk = sdk_config().await;
        Ok(Self {
            info,
            sqs: aws_sdk_sqs::Client::new(&sdk),
            dynamodb: aws_sdk_dynamodb::Client::new(&sdk),
            http: reqwest::Client::new(),
        })
    }

    pub fn queue(&self, name: &str) -> &Queue {
        &self.info.queues[name]
    }

    pub fn table(&self, name: &str) -> &str {
        &self.info.tables[name]
    }

    /// The environment a worker gets from the provisioner, plus the AWS variables.
    pub fn worker_env(&self, worker: &str) -> HashMap<String, String> {
        let mut env = self.info.workers[worker].clone();
        env.insert("AWS_ENDPOINT_URL".into(), endpoint());
        env.entry("AWS_REGION".into())
            .or_insert_with(|| "us-east-1".into());
        for var in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
            env.insert(
                var.into(),
                std::env::var(var).unwrap_or_else(|_| "test".into()),
            );
        }
        env.insert("FLEET_LOG_FORMAT".into(), "json".into());
        env.insert("FLEET_METRICS_INTERVAL_SECS".into(), "1".into());
        // Test time: a transient failure comes back in seconds, not the production minute.
        env.entry("FLEET_RETRY_BASE_MS".into())
            .or_insert_with(|| "2000".into());
        env
    }

    /// [`Self::worker_env`] with some variables set or replaced.
    pub fn worker_env_with(&self, worker: &str, extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut env = self.worker_env(worker);
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        env
    }
}
