//! What ships, checked from the files (no Docker, no AWS, no LocalStack):
//!
//! - the image: the Dockerfile builds every deployed worker of `topology.json` (not
//!   `local_only`) in one cargo invocation, and the container's command picks the worker;
//! - the deploy workflow: dev only after the ci workflow passed on that commit, then prod behind
//!   the GitHub environment `prod`; per environment bootstrap (the ECR repository) before the
//!   push before the deploy; run steps read vars and secrets only through their `env`;
//! - the KEDA manifests in `deploy/keda/`: generated from `topology.json` by
//!   [`keda_manifest`] here, queue names as Terraform makes them. After a topology change:
//!   `UPDATE_KEDA=1 cargo test --workspace --test deploy` rewrites them.
//!
//! docs/image-and-ci.md explains the rules these tests hold.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, ensure, Context, Result};
use fleet::topology::QueueSpec;
use integration_tests::root;
use serde_json::{json, Value};
use yaml_rust2::{Yaml, YamlLoader};

/// Terraform's `var.project` default: the first part of every name (`<project>-<environment>-<key>`).
const PROJECT: &str = "queue-fleet";
/// Where the image puts the worker binaries.
const BIN_DIR: &str = "/usr/local/bin";
/// What the image carries besides the deployed workers (one-off operations tasks).
const IMAGE_EXTRAS: &[&str] = &["fleetctl"];

fn read(relative: &str) -> Result<String> {
    let path = root().join(relative);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

fn topology() -> Result<Value> {
    Ok(serde_json::from_str(&read("topology.json")?)?)
}

/// The workers Terraform deploys (not `local_only`), by name.
fn deployed_workers(topology: &Value) -> Result<BTreeMap<String, Value>> {
    let workers = topology["workers"]
        .as_object()
        .context("topology.json has no workers")?;
    Ok(workers
        .iter()
        .filter(|(_, w)| !w["local_only"].as_bool().unwrap_or(false))
        .map(|(name, w)| (name.clone(), w.clone()))
        .collect())
}

/// The default of `ARG <name>=<value>` in the Dockerfile (quotes removed).
fn dockerfile_arg(dockerfile: &str, name: &str) -> Result<String> {
    dockerfile
        .lines()
        .filter_map(|line| line.trim().strip_prefix("ARG "))
        .filter_map(|arg| arg.split_once('='))
        .find(|(key, _)| key.trim() == name)
        .map(|(_, value)| value.trim().trim_matches('"').to_owned())
        .with_context(|| format!("the Dockerfile has no ARG {name}=<default>"))
}

/// The worker binaries the image carries: the Dockerfile's `WORKERS`.
fn image_binaries() -> Result<BTreeSet<String>> {
    let workers = dockerfile_arg(&read("Dockerfile")?, "WORKERS")?;
    Ok(workers.split_whitespace().map(str::to_owned).collect())
}

/// YAML (1.2: `on` is a string) as JSON values, one per document.
fn load_yaml(text: &str) -> Result<Vec<Value>> {
    fn convert(yaml: &Yaml) -> Result<Value> {
        Ok(match yaml {
            Yaml::Real(text) => json!(text.parse::<f64>()?),
            Yaml::Integer(n) => json!(n),
            Yaml::String(s) => json!(s),
            Yaml::Boolean(b) => json!(b),
            Yaml::Null => Value::Null,
            Yaml::Array(items) => Value::Array(items.iter().map(convert).collect::<Result<_>>()?),
            Yaml::Hash(map) => {
                let mut object = serde_json::Map::new();
                for (key, value) in map {
                    let key = match key {
                        Yaml::String(s) => s.clone(),
                        Yaml::Integer(n) => n.to_string(),
                        Yaml::Boolean(b) => b.to_string(),
                        other => bail!("a mapping key that is not a scalar: {other:?}"),
                    };
                    object.insert(key, convert(value)?);
                }
                Value::Object(object)
            }
            Yaml::Alias(_) | Yaml::BadValue => bail!("unsupported YAML node {yaml:?}"),
        })
    }
    YamlLoader::load_from_str(text)?
        .iter()
        .map(convert)
        .collect()
}

fn workflow(file: &str) -> Result<Value> {
    let mut documents = load_yaml(&read(&format!(".github/workflows/{file}"))?)?;
    ensure!(documents.len() == 1, "{file}: one YAML document expected");
    Ok(documents.remove(0))
}

fn jobs(workflow: &Value) -> Result<&serde_json::Map<String, Value>> {
    workflow["jobs"]
        .as_object()
        .context("a workflow without jobs")
}

/// A job's `needs`, a string or a list.
fn needs(job: &Value) -> Vec<String> {
    match &job["needs"] {
        Value::String(one) => vec![one.clone()],
        Value::Array(many) => many
            .iter()
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether `job` runs after `other` (directly or through other jobs).
fn runs_after(jobs: &serde_json::Map<String, Value>, job: &str, other: &str) -> bool {
    let mut pending = needs(&jobs[job]);
    let mut seen = BTreeSet::new();
    while let Some(name) = pending.pop() {
        if name == other {
            return true;
        }
        if seen.insert(name.clone()) {
            if let Some(next) = jobs.get(&name) {
                pending.extend(needs(next));
            }
        }
    }
    false
}

/// A job's GitHub environment: `environment: prod` or `environment: {name: prod}`.
fn environment(job: &Value) -> Option<&str> {
    job["environment"]
        .as_str()
        .or_else(|| job["environment"]["name"].as_str())
}

fn steps(job: &Value) -> Result<&Vec<Value>> {
    job["steps"].as_array().context("a job without steps")
}

fn step_index(job: &Value, name: &str) -> Result<usize> {
    steps(job)?
        .iter()
        .position(|step| step["name"].as_str() == Some(name))
        .with_context(|| format!("no step named {name:?}"))
}

fn uses_index(job: &Value, action: &str) -> Option<usize> {
    steps(job).ok()?.iter().position(|step| {
        step["uses"]
            .as_str()
            .is_some_and(|uses| uses.starts_with(&format!("{action}@")))
    })
}

/// The environment variables a shell script reads (`$NAME`, `${NAME...}`), comments left out.
fn shell_reads(script: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in script.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let bytes = line.as_bytes();
        for (i, _) in line.match_indices('$') {
            let start = match bytes.get(i + 1) {
                Some(b'{') => i + 2,
                _ => i + 1,
            };
            let name: String = line[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            {
                names.insert(name);
            }
        }
    }
    names
}

/// The variables a shell script sets itself (`name=...`, `for name in`).
fn shell_assigns(script: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for word in script.split_whitespace() {
        if let Some((name, _)) = word.split_once('=') {
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                names.insert(name.to_owned());
            }
        }
    }
    let words: Vec<&str> = script.split_whitespace().collect();
    for pair in words.windows(2) {
        if pair[0] == "for" {
            names.insert(pair[1].to_owned());
        }
    }
    names
}

/// What the runner gives every step.
const RUNNER_VARIABLES: &[&str] = &[
    "CI",
    "HOME",
    "PATH",
    "GITHUB_ENV",
    "GITHUB_OUTPUT",
    "GITHUB_PATH",
    "GITHUB_SHA",
    "GITHUB_STEP_SUMMARY",
    "GITHUB_WORKSPACE",
    "RUNNER_TEMP",
];

/// The `TF_VAR_*` a step maps, with their values.
fn tf_vars(step: &Value) -> BTreeMap<String, Value> {
    step["env"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(key, _)| key.starts_with("TF_VAR_"))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

fn env_keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .map(|env| env.keys().cloned().collect())
        .unwrap_or_default()
}

/// Every `<prefix>NAME` in a text (e.g. `vars.` → the configuration variables it names).
fn context_names(text: &str, prefix: &str) -> BTreeSet<String> {
    text.match_indices(prefix)
        .map(|(i, _)| {
            text[i + prefix.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| !name.is_empty())
        .collect()
}

/// All of Terraform's root configuration, one string.
fn terraform_root() -> Result<String> {
    let mut text = String::new();
    let mut files: Vec<_> = std::fs::read_dir(root().join("terraform"))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "tf"))
        .collect();
    files.sort();
    for file in files {
        text.push_str(&std::fs::read_to_string(file)?);
        text.push('\n');
    }
    Ok(text)
}

/// Whitespace collapsed to one space (Terraform's `fmt` aligns `=` signs).
fn squeeze(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

// ------------------------------------------------------------------------------------------
// The image

#[test]
fn the_image_builds_every_deployed_worker_once_and_selects_it_by_command() -> Result<()> {
    let dockerfile = read("Dockerfile")?;
    let binaries = image_binaries()?;
    let deployed: BTreeSet<String> = deployed_workers(&topology()?)?.into_keys().collect();

    let missing: Vec<_> = deployed.difference(&binaries).collect();
    ensure!(
        missing.is_empty(),
        "deployed workers the image does not build (add them to the Dockerfile's WORKERS): {missing:?}"
    );
    let extra: Vec<_> = binaries
        .iter()
        .filter(|b| !deployed.contains(*b) && !IMAGE_EXTRAS.contains(&b.as_str()))
        .collect();
    ensure!(
        extra.is_empty(),
        "the image carries binaries that are neither deployed workers nor {IMAGE_EXTRAS:?} \
         (local_only stand-ins stay out): {extra:?}"
    );

    // Each one is a binary target of the workspace, so `cargo build --bin <name>` finds it.
    let metadata = cargo_metadata_no_deps()?;
    let bins: BTreeSet<String> = metadata["packages"]
        .as_array()
        .context("cargo metadata: packages")?
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.contains(&json!("bin")))
        })
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect();
    let unknown: Vec<_> = binaries.difference(&bins).collect();
    ensure!(
        unknown.is_empty(),
        "WORKERS names no binary of the workspace: {unknown:?}"
    );

    // One cargo invocation for all of them (the SDK compiled once), from the lock file.
    let builds: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.contains("cargo build"))
        .collect();
    ensure!(
        builds.len() == 1,
        "one `cargo build` for every worker, found {builds:?}"
    );
    for flag in ["--release", "--locked", "$bins"] {
        ensure!(
            builds[0].contains(flag),
            "the cargo build lacks {flag}: {}",
            builds[0]
        );
    }
    ensure!(
        dockerfile.contains("for worker in $WORKERS; do bins=\"$bins --bin $worker\"; done"),
        "the build's --bin list comes from WORKERS"
    );
    ensure!(
        dockerfile.contains(&format!("COPY --from=build /out/bin/ {BIN_DIR}/")),
        "the runtime stage copies every built worker to {BIN_DIR}"
    );
    // No worker is the default: the command names it (ECS `command`, Kubernetes `command`).
    let instructions: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("CMD") || l.starts_with("ENTRYPOINT"))
        .collect();
    ensure!(
        instructions == ["ENTRYPOINT []"],
        "the image has no default worker (ENTRYPOINT [], no CMD), found {instructions:?}"
    );
    Ok(())
}

fn cargo_metadata_no_deps() -> Result<Value> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--manifest-path",
        ])
        .arg(root().join("Cargo.toml"))
        .output()?;
    ensure!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Terraform runs the one image per worker by its command, from a repository per environment.
/// (terraform/ belongs to its own change; this test says what it must hold for the image.)
#[test]
fn terraform_runs_each_worker_by_command_from_an_environment_repository() -> Result<()> {
    let mut problems = Vec::new();
    let worker_module = read("terraform/modules/worker/main.tf")?;
    let container = worker_module
        .split("container_definitions")
        .nth(1)
        .context("modules/worker has no container_definitions")?;
    let container = container.split("healthCheck").next().unwrap_or(container);
    if !container
        .lines()
        .any(|l| l.trim_start().starts_with("command"))
    {
        problems.push(
            "modules/worker's container definition sets no `command`: the image has no default \
             worker (command = [\"/usr/local/bin/<worker>\"])",
        );
    }
    if worker_module.contains("/usr/local/bin/worker\"") {
        problems.push(
            "modules/worker runs /usr/local/bin/worker, which the image does not have: the \
             health check runs the worker's own binary (/usr/local/bin/<worker> --health-check)",
        );
    }
    let terraform = terraform_root()?;
    let repositories: Vec<&str> = terraform
        .split("resource \"aws_ecr_repository\"")
        .skip(1)
        .collect();
    if repositories.is_empty() {
        problems.push("terraform/ creates no ECR repository");
    }
    for repository in &repositories {
        let name_line = repository
            .lines()
            .find(|l| l.trim_start().starts_with("name "))
            .unwrap_or("");
        if !(name_line.contains("local.prefix") || name_line.contains("var.environment")) {
            problems.push(
                "an ECR repository name without the environment (dev and prod would share it): \
                 name it \"${local.prefix}workers\"",
            );
        }
    }
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

// ------------------------------------------------------------------------------------------
// The deploy workflow

/// The dev and prod jobs (by their GitHub environment), and the job that builds the image.
fn deploy_jobs(workflow: &Value) -> Result<(String, String, String)> {
    let jobs = jobs(workflow)?;
    let by_environment = |name: &str| {
        jobs.iter()
            .find(|(_, job)| environment(job) == Some(name))
            .map(|(key, _)| key.clone())
            .with_context(|| format!("no job deploys to the GitHub environment {name:?}"))
    };
    let image = jobs
        .iter()
        .find(|(_, job)| uses_index(job, "docker/build-push-action").is_some())
        .map(|(key, _)| key.clone())
        .context("no job builds the image (docker/build-push-action)")?;
    Ok((image, by_environment("dev")?, by_environment("prod")?))
}

#[test]
fn dev_deploys_only_a_commit_the_ci_workflow_passed() -> Result<()> {
    let deploy = workflow("deploy.yml")?;
    let ci = workflow("ci.yml")?;
    let ci_name = ci["name"].as_str().context("ci.yml has no name")?;

    let triggers = deploy["on"]
        .as_object()
        .context("deploy.yml: `on` is a map")?;
    ensure!(
        triggers.keys().collect::<Vec<_>>() == ["workflow_run"],
        "deploy.yml starts only from the ci workflow (a push or a dispatch would skip ci): {:?}",
        triggers.keys().collect::<Vec<_>>()
    );
    let run = &triggers["workflow_run"];
    ensure!(
        run["workflows"] == json!([ci_name]),
        "workflow_run on {ci_name:?}: {run}"
    );
    ensure!(run["types"] == json!(["completed"]), "types: [completed]");
    ensure!(run["branches"] == json!(["main"]), "branches: [main]");

    // Every job hangs off jobs that run only for a successful ci run of a push to main.
    let jobs = jobs(&deploy)?;
    for (name, job) in jobs.iter().filter(|(_, job)| needs(job).is_empty()) {
        let condition = job["if"].as_str().unwrap_or("");
        for required in [
            "github.event.workflow_run.conclusion == 'success'",
            "github.event.workflow_run.event == 'push'",
            "github.event.workflow_run.head_repository.full_name == github.repository",
        ] {
            ensure!(
                condition.contains(required),
                "job {name} starts the deployment: its `if` needs {required}"
            );
        }
    }
    let (image, dev, _) = deploy_jobs(&deploy)?;
    ensure!(runs_after(jobs, &dev, &image), "{dev} runs after {image}");

    // The commit ci tested, not whatever main is by now.
    for (name, job) in jobs {
        for step in steps(job)? {
            if step["uses"]
                .as_str()
                .is_some_and(|u| u.starts_with("actions/checkout@"))
            {
                ensure!(
                    step["with"]["ref"] == json!("${{ github.event.workflow_run.head_sha }}"),
                    "job {name} checks out the commit ci passed (ref: head_sha)"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn each_environment_bootstraps_then_pushes_then_deploys_and_prod_waits_for_approval() -> Result<()>
{
    let deploy = workflow("deploy.yml")?;
    let jobs = jobs(&deploy)?;
    let (image, dev, prod) = deploy_jobs(&deploy)?;
    ensure!(runs_after(jobs, &prod, &dev), "{prod} runs after {dev}");
    ensure!(
        environment(&jobs[&prod]) == Some("prod"),
        "prod runs in the GitHub environment prod (its required reviewers approve)"
    );
    ensure!(
        runs_after(jobs, &dev, &image),
        "{dev} pushes what {image} built"
    );

    for name in [&dev, &prod] {
        let job = &jobs[name];
        let env_name = environment(job).context("an environment")?;
        let (bootstrap, push, deploy_step) = (
            step_index(job, "bootstrap")?,
            step_index(job, "push")?,
            step_index(job, "deploy")?,
        );
        ensure!(
            bootstrap < push && push < deploy_step,
            "{name}: bootstrap, then push, then deploy"
        );
        let credentials =
            uses_index(job, "aws-actions/configure-aws-credentials").context("AWS credentials")?;
        let login = uses_index(job, "aws-actions/amazon-ecr-login").context("ECR login")?;
        ensure!(
            credentials < bootstrap && login < push,
            "{name}: credentials before the bootstrap, the registry login before the push"
        );
        let steps = steps(job)?;
        let script = |i: usize| steps[i]["run"].as_str().unwrap_or("").to_owned();
        ensure!(
            script(bootstrap).contains("terraform apply")
                && script(bootstrap).contains("-target=aws_ecr_repository."),
            "{name}: the bootstrap applies the ECR repository alone (-target)"
        );
        ensure!(
            steps[push]["env"]["REPOSITORY"]
                .as_str()
                .is_some_and(|r| r.contains("steps.bootstrap.outputs.")),
            "{name}: the push goes to the repository the bootstrap made"
        );
        ensure!(
            tf_vars(&steps[bootstrap]) == tf_vars(&steps[deploy_step]),
            "{name}: the bootstrap maps the deploy's TF_VAR_* (a targeted apply validates them all)"
        );
        ensure!(
            script(push).contains("docker push"),
            "{name}: the push step pushes"
        );
        ensure!(
            script(deploy_step).contains("terraform apply")
                && !script(deploy_step).contains("-target"),
            "{name}: the deploy applies everything"
        );
        ensure!(
            job["env"]["DEPLOY_ENVIRONMENT"] == json!(env_name),
            "{name}: DEPLOY_ENVIRONMENT is its GitHub environment, {env_name}"
        );
        ensure!(
            root()
                .join(format!("terraform/environments/{env_name}.tfvars"))
                .exists(),
            "{name}: terraform/environments/{env_name}.tfvars"
        );
    }
    // prod does what dev did: same steps; only the environment differs.
    ensure!(
        jobs[&dev]["steps"] == jobs[&prod]["steps"],
        "the dev and prod jobs run the same steps"
    );
    Ok(())
}

#[test]
fn run_steps_read_vars_and_secrets_only_through_their_env() -> Result<()> {
    let variables = read("terraform/variables.tf")?;
    for file in ["ci.yml", "deploy.yml"] {
        let workflow = workflow(file)?;
        let workflow_env = env_keys(&workflow["env"]);
        for (job_name, job) in jobs(&workflow)? {
            let job_env = env_keys(&job["env"]);
            for step in steps(job)? {
                let label = format!(
                    "{file} {job_name} step {}",
                    step["name"]
                        .as_str()
                        .or(step["uses"].as_str())
                        .unwrap_or("?")
                );
                for name in env_keys(&step["env"]) {
                    if let Some(variable) = name.strip_prefix("TF_VAR_") {
                        ensure!(
                            variables.contains(&format!("variable \"{variable}\"")),
                            "{label}: {name} sets no variable of terraform/variables.tf"
                        );
                    }
                }
                let Some(script) = step["run"].as_str() else {
                    continue;
                };
                ensure!(
                    !script.contains("${{"),
                    "{label}: an expression in the script; map it into the step's env"
                );
                let defined: BTreeSet<String> = env_keys(&step["env"])
                    .into_iter()
                    .chain(job_env.iter().cloned())
                    .chain(workflow_env.iter().cloned())
                    .chain(shell_assigns(script))
                    .chain(RUNNER_VARIABLES.iter().map(|v| v.to_string()))
                    .collect();
                let unmapped: Vec<_> = shell_reads(script)
                    .into_iter()
                    .filter(|name| !defined.contains(name))
                    .collect();
                ensure!(
                    unmapped.is_empty(),
                    "{label} reads variables its env does not map: {unmapped:?}"
                );
            }
        }
    }
    // What deploy.yml takes from the repository's settings is listed in its header.
    let text = read(".github/workflows/deploy.yml")?;
    let header: String = text
        .lines()
        .take_while(|l| l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    for prefix in ["vars.", "secrets."] {
        for name in context_names(&text, prefix) {
            ensure!(
                header.contains(&name),
                "deploy.yml uses {prefix}{name}: list it in the header comment"
            );
        }
    }
    Ok(())
}

#[test]
fn the_bootstrap_targets_what_terraform_declares() -> Result<()> {
    let deploy = workflow("deploy.yml")?;
    let (_, dev, _) = deploy_jobs(&deploy)?;
    let job = &jobs(&deploy)?[&dev];
    let script = steps(job)?[step_index(job, "bootstrap")?]["run"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let terraform = terraform_root()?;
    let mut problems = Vec::new();
    for target in script
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("-target="))
    {
        let (kind, name) = target.split_once('.').context("-target=<type>.<name>")?;
        if !terraform.contains(&format!("resource \"{kind}\" \"{name}\"")) {
            problems.push(format!(
                "the bootstrap targets {target}, which terraform/ does not declare"
            ));
        }
    }
    for output in context_names(&script, "terraform output -raw ") {
        if !terraform.contains(&format!("output \"{output}\"")) {
            problems.push(format!(
                "the bootstrap reads the output {output}, which terraform/ does not declare"
            ));
        }
    }
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

/// The README's deploy recipe: the first ```sh block after "**The recipe**".
fn readme_recipe() -> Result<String> {
    let readme = read("README.md")?;
    let start = readme
        .find("**The recipe**")
        .context("README: **The recipe**")?;
    let block = readme[start..]
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .context("README: the recipe's sh block")?;
    Ok(block.to_owned())
}

/// The README's recipe is the workflow's order and commands: bootstrap with the workflow's
/// targets, build the one image, apply with the image tag; every output it reads exists.
#[test]
fn the_readme_recipe_is_the_workflows() -> Result<()> {
    let recipe = readme_recipe()?;
    let deploy = workflow("deploy.yml")?;
    let (_, dev, _) = deploy_jobs(&deploy)?;
    let job = &jobs(&deploy)?[&dev];
    let run = |step: &str| -> Result<String> {
        Ok(steps(job)?[step_index(job, step)?]["run"]
            .as_str()
            .unwrap_or("")
            .to_owned())
    };
    let targets = |text: &str| -> Vec<String> {
        text.split_whitespace()
            .filter(|w| w.starts_with("-target="))
            .map(str::to_owned)
            .collect()
    };
    let bootstrap = run("bootstrap")?;
    ensure!(
        targets(&recipe) == targets(&bootstrap),
        "the README bootstraps {:?}, the workflow {:?}",
        targets(&recipe),
        targets(&bootstrap)
    );
    let position = |needle: &str| {
        recipe
            .find(needle)
            .with_context(|| format!("the README's recipe has no `{needle}`"))
    };
    let (boot, build, push, apply) = (
        position("-target=")?,
        position("docker build")?,
        position("docker push")?,
        position("-var=\"image_tag=$IMAGE_TAG\"")?,
    );
    ensure!(
        boot < build && build < push && push < apply,
        "the README's recipe must bootstrap, build, push, then apply"
    );
    ensure!(
        squeeze(&run("deploy")?).contains("-var=\"image_tag=$IMAGE_TAG\""),
        "the workflow's deploy applies with the image tag as the README does"
    );
    let terraform = terraform_root()?;
    for output in context_names(&recipe, "terraform output -raw ") {
        ensure!(
            terraform.contains(&format!("output \"{output}\"")),
            "the README reads the output {output}, which terraform/ does not declare"
        );
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// KEDA

/// Placeholders of the manifests, filled by `envsubst` (docs/image-and-ci.md).
const KEDA_PLACEHOLDERS: &[&str] = &[
    "ENVIRONMENT",
    "AWS_REGION",
    "AWS_ACCOUNT_ID",
    "IMAGE",
    "RESULTS_BUCKET",
];

/// Terraform's name of a topology queue, table or topic: `<project>-<environment>-<key>`, a
/// FIFO queue with `.fifo` (terraform/main.tf, modules/queue).
fn deployed_name(key: &str) -> String {
    format!("{}{key}", deployed_prefix())
}

/// Terraform's prefix of every name: `<project>-<environment>-`.
fn deployed_prefix() -> String {
    format!("{PROJECT}-${{ENVIRONMENT}}-")
}

/// Terraform's name of topology queue `key` (`dlq`: of its dead-letter queue), by the engine's
/// rule ([`QueueSpec::name`]).
fn deployed_queue_name(topology: &Value, key: &str, dlq: bool) -> String {
    let spec: QueueSpec = serde_json::from_value(topology["queues"][key].clone())
        .unwrap_or_else(|e| panic!("queue {key} of topology.json: {e}"));
    spec.name(&deployed_prefix(), key, dlq)
}

fn queue_url(topology: &Value, key: &str, dlq: bool) -> String {
    format!(
        "https://sqs.${{AWS_REGION}}.amazonaws.com/${{AWS_ACCOUNT_ID}}/{}",
        deployed_queue_name(topology, key, dlq)
    )
}

/// A topology `env` value as Terraform resolves it (terraform/workers.tf): queue → URL,
/// table → name, topic → ARN, bucket → its name (random suffix: a placeholder), else literal.
fn resolve(topology: &Value, reference: &str) -> Result<String> {
    Ok(match reference.split_once(':') {
        Some(("queue", key)) => queue_url(topology, key, false),
        Some(("table", key)) => deployed_name(key),
        Some(("topic", key)) => format!(
            "arn:aws:sns:${{AWS_REGION}}:${{AWS_ACCOUNT_ID}}:{}",
            deployed_name(key)
        ),
        Some(("bucket", key)) => format!("${{{}_BUCKET}}", key.to_uppercase().replace('-', "_")),
        _ => reference.to_owned(),
    })
}

fn number(scaling: &Value, key: &str) -> Result<u64> {
    scaling[key]
        .as_u64()
        .with_context(|| format!("scaling.{key}"))
}

/// A worker's manifests: its ServiceAccount, Deployment (the image, its command, the
/// environment Terraform gives its ECS task), TriggerAuthentication and ScaledObject.
fn keda_manifest(topology: &Value, name: &str, worker: &Value) -> Result<String> {
    let queue = worker["queue"].as_str().context("worker.queue")?;
    let scaling = &worker["scaling"];
    let (min_tasks, max_tasks) = (number(scaling, "min_tasks")?, number(scaling, "max_tasks")?);
    let backlog = number(scaling, "target_backlog_per_task")?;
    let grace = worker["shutdown_grace_secs"]
        .as_u64()
        .context("shutdown_grace_secs")?;
    let fifo = topology["queues"][queue]["fifo"].as_bool() == Some(true);

    // What terraform/modules/worker and workers.tf put in the task's environment.
    let mut env = BTreeMap::new();
    if let Some(topology_env) = worker["env"].as_object() {
        for (key, reference) in topology_env {
            let reference = reference.as_str().context("an env value")?;
            env.insert(key.clone(), resolve(topology, reference)?);
        }
    }
    for (key, scaling_key) in [
        ("FLEET_MIN_CONCURRENCY", "min_concurrency"),
        ("FLEET_MAX_CONCURRENCY", "max_concurrency"),
        ("FLEET_TARGET_BACKLOG_PER_UNIT", "target_backlog_per_unit"),
        ("FLEET_SCALE_DOWN_COOLDOWN_SECS", "scale_down_cooldown_secs"),
    ] {
        env.insert(key.to_owned(), number(scaling, scaling_key)?.to_string());
    }
    if name == "vpc-worker" {
        // terraform/vpc.tf: the tag its IAM policy allows, <project>-<environment>.
        env.insert(
            "VPC_PROJECT_TAG".to_owned(),
            format!("{PROJECT}-${{ENVIRONMENT}}"),
        );
    }
    for (key, value) in [
        ("AWS_REGION", "${AWS_REGION}".to_owned()),
        ("FLEET_QUEUE_URL", queue_url(topology, queue, false)),
        ("FLEET_DLQ_URL", queue_url(topology, queue, true)),
        ("FLEET_HEALTH_FILE", "/run/fleet/health".to_owned()),
        ("FLEET_HEALTH_MAX_AGE_SECS", "120".to_owned()),
        ("FLEET_SHUTDOWN_GRACE_SECS", grace.to_string()),
        ("FLEET_LOG_FORMAT", "json".to_owned()),
        ("FLEET_WORKER_NAME", name.to_owned()),
        ("FLEET_SCALER_PROCESSES", min_tasks.max(1).to_string()),
    ] {
        env.insert(key.to_owned(), value);
    }
    let quote = |s: &str| serde_json::to_string(s).expect("a string");
    let env_lines: String = env
        .iter()
        .map(|(key, value)| {
            format!(
                "            - name: {key}\n              value: {}\n",
                quote(value)
            )
        })
        .collect();
    let placeholders: Vec<&str> = KEDA_PLACEHOLDERS
        .iter()
        .copied()
        .filter(|p| env_lines.contains(&format!("${{{p}}}")) || *p == "IMAGE")
        .collect();
    let fifo_note = if fifo {
        "# The queue is FIFO: replicas (and concurrency within one) help only while more message\n\
         # groups than workers have messages waiting, since a group's messages go one at a time.\n"
    } else {
        ""
    };
    let binary = format!("{BIN_DIR}/{name}");
    let queue_url = queue_url(topology, queue, false);
    Ok(format!(
        r#"# {name} on Kubernetes, scaled by KEDA on its queue's depth. Generated from topology.json
# by integration-tests/tests/deploy.rs: do not edit; after a topology change run
#   UPDATE_KEDA=1 cargo test --workspace --test deploy
# Fill in {placeholders} with envsubst (docs/image-and-ci.md, "KEDA").
#
# desired replicas = ceil((visible + in flight) / queueLength), within [min, max]: the formula
# of the in-process scaler and of the ECS service (docs/engine.md, "Scaling by queue depth"), with
# topology.json's min_tasks {min_tasks}, max_tasks {max_tasks}, target_backlog_per_task {backlog}.
{fifo_note}apiVersion: v1
kind: ServiceAccount
metadata:
  name: {name}
  labels:
    app.kubernetes.io/name: {name}
    app.kubernetes.io/part-of: {PROJECT}
  # The worker's AWS role, with what its ECS task role has (terraform/modules/worker): an EKS
  # Pod Identity association for this service account, or an IRSA annotation here
  # (eks.amazonaws.com/role-arn).
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  labels:
    app.kubernetes.io/name: {name}
    app.kubernetes.io/part-of: {PROJECT}
spec:
  # No replicas: the HorizontalPodAutoscaler KEDA makes for the ScaledObject sets them.
  selector:
    matchLabels:
      app.kubernetes.io/name: {name}
  template:
    metadata:
      labels:
        app.kubernetes.io/name: {name}
        app.kubernetes.io/part-of: {PROJECT}
    spec:
      serviceAccountName: {name}
      # SIGTERM, the worker's grace period (FLEET_SHUTDOWN_GRACE_SECS), 10 s more, SIGKILL.
      terminationGracePeriodSeconds: {termination}
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        runAsGroup: 65532
        fsGroup: 65532
        seccompProfile:
          type: RuntimeDefault
      containers:
        - name: worker
          image: "${{IMAGE}}"
          # The image carries every worker; the command picks this one.
          command: [{binary_json}]
          env:
{env_lines}          resources:
            requests:
              cpu: 250m
              memory: 512Mi
            limits:
              memory: 512Mi
          securityContext:
            readOnlyRootFilesystem: true
            allowPrivilegeEscalation: false
            capabilities:
              drop: ["ALL"]
          volumeMounts:
            - name: health
              mountPath: /run/fleet
          # The worker writes its last progress to FLEET_HEALTH_FILE and checks its age itself.
          livenessProbe:
            exec:
              command: [{binary_json}, "--health-check"]
            initialDelaySeconds: 60
            periodSeconds: 30
            timeoutSeconds: 5
            failureThreshold: 3
      volumes:
        - name: health
          emptyDir: {{}}
---
apiVersion: keda.sh/v1alpha1
kind: TriggerAuthentication
metadata:
  name: {name}
spec:
  # KEDA reads the queue's attributes with its operator's AWS identity (IRSA or EKS Pod
  # Identity), which needs sqs:GetQueueAttributes on the queue.
  podIdentity:
    provider: aws
---
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: {name}
spec:
  scaleTargetRef:
    name: {name}
  minReplicaCount: {min_tasks}
  maxReplicaCount: {max_tasks}
  pollingInterval: 15
  # Seconds of an empty queue before scaling to zero (with minReplicaCount 0).
  cooldownPeriod: 120
  advanced:
    horizontalPodAutoscalerConfig:
      behavior:
        scaleDown:
          # ECS's scale-in cooldown (terraform/modules/worker).
          stabilizationWindowSeconds: 120
  triggers:
    - type: aws-sqs-queue
      authenticationRef:
        name: {name}
      metadata:
        queueURL: {queue_url_json}
        awsRegion: "${{AWS_REGION}}"
        queueLength: "{backlog}"
        scaleOnInFlight: "true"
        scaleOnDelayed: "false"
"#,
        placeholders = placeholders.join(", "),
        // As ECS's stopTimeout (terraform/modules/worker).
        termination = (grace + 10).min(120),
        binary_json = quote(&binary),
        queue_url_json = quote(&queue_url),
    ))
}

/// The manifests the topology calls for, by file name.
fn keda_manifests() -> Result<BTreeMap<String, String>> {
    let topology = topology()?;
    deployed_workers(&topology)?
        .iter()
        .map(|(name, worker)| {
            Ok((
                format!("{name}.yaml"),
                keda_manifest(&topology, name, worker)?,
            ))
        })
        .collect()
}

#[test]
fn keda_manifests_are_the_ones_the_topology_generates() -> Result<()> {
    let dir = root().join("deploy/keda");
    let expected = keda_manifests()?;
    let present: BTreeSet<String> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    if std::env::var_os("UPDATE_KEDA").is_some() {
        for stale in present.iter().filter(|n| !expected.contains_key(*n)) {
            std::fs::remove_file(dir.join(stale))?;
        }
        for (file, text) in &expected {
            std::fs::write(dir.join(file), text)?;
        }
        eprintln!(
            "UPDATE_KEDA: wrote {} manifests to {}",
            expected.len(),
            dir.display()
        );
        return Ok(());
    }
    let mut problems = Vec::new();
    for (file, text) in &expected {
        match std::fs::read_to_string(dir.join(file)) {
            Ok(committed) if committed == *text => {}
            Ok(_) => problems.push(format!("{file} differs from what topology.json generates")),
            Err(_) => problems.push(format!("{file} is missing")),
        }
    }
    for stale in present.iter().filter(|n| !expected.contains_key(*n)) {
        problems.push(format!("{stale} is no deployed worker's"));
    }
    ensure!(
        problems.is_empty(),
        "{}\nregenerate: UPDATE_KEDA=1 cargo test --workspace --test deploy",
        problems.join("\n")
    );
    Ok(())
}

#[test]
fn keda_manifests_run_the_image_and_scale_on_terraforms_queue() -> Result<()> {
    let topology = topology()?;
    let binaries = image_binaries()?;
    for (name, worker) in deployed_workers(&topology)? {
        let text = keda_manifest(&topology, &name, &worker)?;
        let documents = load_yaml(&text)?;
        let find = |kind: &str| {
            documents
                .iter()
                .find(|d| d["kind"] == json!(kind))
                .with_context(|| format!("{name}: no {kind}"))
        };
        let (deployment, auth, scaled) = (
            find("Deployment")?,
            find("TriggerAuthentication")?,
            find("ScaledObject")?,
        );
        find("ServiceAccount")?;

        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        ensure!(container["image"] == json!("${IMAGE}"), "{name}: the image");
        ensure!(
            container["command"] == json!([format!("{BIN_DIR}/{name}")])
                && binaries.contains(&name),
            "{name}: the command runs its binary, which the image carries"
        );
        ensure!(
            auth["spec"]["podIdentity"]["provider"] == json!("aws"),
            "{name}: pod identity"
        );
        let spec = &scaled["spec"];
        ensure!(
            spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"],
            "{name}: scales its Deployment"
        );
        let scaling = &worker["scaling"];
        ensure!(
            spec["minReplicaCount"] == scaling["min_tasks"]
                && spec["maxReplicaCount"] == scaling["max_tasks"],
            "{name}: replicas within the topology's min_tasks and max_tasks"
        );
        let trigger = &spec["triggers"][0];
        ensure!(
            trigger["type"] == json!("aws-sqs-queue"),
            "{name}: the SQS trigger"
        );
        ensure!(
            trigger["authenticationRef"]["name"] == auth["metadata"]["name"],
            "{name}: the trigger uses the TriggerAuthentication"
        );
        let metadata = &trigger["metadata"];
        ensure!(
            metadata["queueLength"] == json!(scaling["target_backlog_per_task"].to_string())
                && metadata["scaleOnInFlight"] == json!("true"),
            "{name}: queueLength is target_backlog_per_task, in-flight messages count"
        );
        let queue = worker["queue"].as_str().context("queue")?;
        let queue_name = deployed_queue_name(&topology, queue, false);
        let url = metadata["queueURL"].as_str().context("queueURL")?;
        ensure!(
            url.ends_with(&format!("/{queue_name}")),
            "{name}: the queue Terraform names {queue_name}, not {url}"
        );
        let env = container["env"].as_array().context("env")?;
        ensure!(
            env.iter()
                .any(|e| e["name"] == json!("FLEET_QUEUE_URL") && e["value"] == json!(url)),
            "{name}: the worker consumes the queue KEDA watches"
        );
        for placeholder in context_names(&text, "${") {
            ensure!(
                KEDA_PLACEHOLDERS.contains(&placeholder.as_str()),
                "{name}: ${{{placeholder}}} is not one of {KEDA_PLACEHOLDERS:?}"
            );
        }
    }
    Ok(())
}

/// The names the manifests use are the ones Terraform gives: `<project>-<environment>-<key>`
/// with `.fifo` for FIFO queues and `-dlq` before it for the dead-letter queue.
#[test]
fn keda_names_follow_terraforms_naming_rule() -> Result<()> {
    let main = squeeze(&read("terraform/main.tf")?);
    let variables = read("terraform/variables.tf")?;
    let project = squeeze(
        variables
            .split("variable \"project\"")
            .nth(1)
            .and_then(|rest| rest.split("\n}").next())
            .context("terraform/variables.tf: variable \"project\"")?,
    );
    let queue = squeeze(&read("terraform/modules/queue/main.tf")?);
    let topics = squeeze(&read("terraform/notifications.tf")?);
    for (text, needle, file) in [
        (&project, format!("default = \"{PROJECT}\""), "terraform/variables.tf (project)"),
        (&topics, "resource \"aws_sns_topic\" \"topic\" { for_each = local.topology.topics name = \"${local.prefix}${each.key}\"".to_owned(), "terraform/notifications.tf"),
        (&main, "prefix = \"${var.project}-${var.environment}-\"".to_owned(), "terraform/main.tf"),
        (&main, "module \"queue\" { source = \"./modules/queue\" for_each = local.queues name = \"${local.prefix}${each.key}\"".to_owned(), "terraform/main.tf"),
        (&main, "module \"table\" { source = \"./modules/table\" for_each = local.tables name = \"${local.prefix}${each.key}\"".to_owned(), "terraform/main.tf"),
        (&queue, "suffix = var.fifo ? \".fifo\" : \"\"".to_owned(), "terraform/modules/queue/main.tf"),
        (&queue, "name = \"${var.name}-dlq${local.suffix}\"".to_owned(), "terraform/modules/queue/main.tf"),
        (&queue, "name = \"${var.name}${local.suffix}\"".to_owned(), "terraform/modules/queue/main.tf"),
    ] {
        ensure!(
            text.contains(&needle),
            "{file} no longer says `{needle}`: update keda_manifest in tests/deploy.rs to the new naming, then UPDATE_KEDA=1"
        );
    }
    Ok(())
}
