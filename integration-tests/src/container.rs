//! Opt-in, for those with Docker: the tests' LocalStack as a container through
//! `testcontainers`, instead of the pip-installed one on 127.0.0.1:4566.
//!
//! `FLEET_LOCALSTACK=container cargo test -p integration-tests --features docker` starts
//! LocalStack's image (the version `localstack/install.sh` pins) once per test binary, on a free
//! port of this machine, and points every test at it ([`crate::endpoint`]); the provisioning is
//! the same (`localstack/provision.py` against that endpoint, with the Python of
//! `.localstack/venv` or `FLEET_PYTHON`). `testcontainers` removes the container when the test
//! process ends (its Ryuk reaper).
//!
//! Differences from the default stack: DynamoDB is the image's own (DynamoDB Local, which needs
//! the Java the image has), not the moto provider `localstack/install.sh` registers. The
//! development machines of this project have no Docker engine, so this path is compiled in CI
//! (`cargo clippy --features docker`) but not exercised there: see docs/testing.md.

/// The variable that chooses the container: `FLEET_LOCALSTACK=container`.
pub const SWITCH: &str = "FLEET_LOCALSTACK";

/// Whether the tests are asked to run LocalStack as a container.
pub fn wanted() -> bool {
    std::env::var(SWITCH).is_ok_and(|v| v == "container")
}

/// The container's endpoint, starting it on first use.
///
/// # Panics
/// When the crate was built without the `docker` feature, or the container cannot start (no
/// Docker engine, the image cannot be pulled): a test cannot run without its stack.
pub fn endpoint() -> String {
    imp::endpoint()
}

#[cfg(not(feature = "docker"))]
mod imp {
    pub(super) fn endpoint() -> String {
        panic!(
            "{}=container needs the `docker` feature: \
             cargo test -p integration-tests --features docker",
            super::SWITCH
        )
    }
}

#[cfg(feature = "docker")]
mod imp {
    use std::sync::OnceLock;

    use testcontainers::core::{IntoContainerPort, WaitFor};
    use testcontainers::runners::SyncRunner;
    use testcontainers::{Container, GenericImage, ImageExt};

    /// LocalStack's image, at the version `localstack/install.sh` installs from PyPI.
    const IMAGE: (&str, &str) = ("localstack/localstack", "2026.3.0");
    /// LocalStack's port inside the container.
    const PORT: u16 = 4566;
    /// The services the fleet and `terraform/` touch (as `localstack/env.sh`).
    const SERVICES: &str =
        "sqs,dynamodb,apigateway,iam,sts,sns,s3,ec2,cloudwatch,logs,events,scheduler,kms";

    /// The running container (kept for the life of the process) and its endpoint.
    static LOCALSTACK: OnceLock<(Container<GenericImage>, String)> = OnceLock::new();

    pub(super) fn endpoint() -> String {
        LOCALSTACK
            .get_or_init(|| {
                // The sync runner blocks on a runtime of its own: not from inside a test's.
                std::thread::spawn(start)
                    .join()
                    .expect("the container start panicked")
                    .unwrap_or_else(|err| panic!("cannot start LocalStack's container: {err:#}"))
            })
            .1
            .clone()
    }

    fn start() -> anyhow::Result<(Container<GenericImage>, String)> {
        // A fixed host port, known before the start, so that LocalStack names it in the URLs
        // it hands out (queue URLs, API Gateway's invoke URLs).
        let host_port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let container = GenericImage::new(IMAGE.0, IMAGE.1)
            .with_exposed_port(PORT.tcp())
            .with_wait_for(WaitFor::message_on_stdout("Ready."))
            .with_mapped_port(host_port, PORT.tcp())
            .with_env_var("SERVICES", SERVICES)
            .with_env_var("LOCALSTACK_HOST", format!("127.0.0.1:{host_port}"))
            .with_env_var("SQS_ENDPOINT_STRATEGY", "off")
            .with_env_var("SQS_DISABLE_CLOUDWATCH_METRICS", "1")
            .with_env_var("DISABLE_EVENTS", "1")
            .start()?;
        let url = format!("http://127.0.0.1:{host_port}");
        eprintln!("LocalStack container {} at {url}", container.id());
        Ok((container, url))
    }
}
