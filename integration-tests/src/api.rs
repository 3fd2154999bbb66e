//! Calls to the stack's API (API Gateway on LocalStack, the real OpenAPI document and mapping
//! templates) and who the callers are.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::Value;
use tokio::process::Command;

use crate::{endpoint, python, Stack};

impl Stack {
    /// A request to the API, with the stack's API key.
    pub fn api(&self, method: Method, path: &str) -> RequestBuilder {
        self.api_as(Some(&self.info.api.key), method, path)
    }

    /// A request to the API with API key `key`; `None`: none (a public route, or a refusal).
    pub fn api_as(&self, key: Option<&str>, method: Method, path: &str) -> RequestBuilder {
        let request = self
            .http
            .request(method, format!("{}{}", self.info.api.url, path));
        match key {
            Some(key) => request.header("x-api-key", key),
            None => request,
        }
    }

    /// [`call`]s the API with the stack's API key, with `body` (JSON) if any.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value)> {
        let request = self.api(method, path);
        call(match body {
            Some(body) => request.json(body),
            None => request,
        })
        .await
    }
}

/// Sends a request to the gateway and reads the answer: the status and the body as JSON. The
/// gateway answers JSON, refusals and failures included, so an answer that is not JSON is an
/// error, naming the request, the status and the text.
pub async fn call(request: RequestBuilder) -> Result<(StatusCode, Value)> {
    let (client, request) = request.build_split();
    let request = request?;
    let url = request.url();
    let what = format!(
        "{} {}{}",
        request.method(),
        url.path(),
        url.query().map(|q| format!("?{q}")).unwrap_or_default()
    );
    let response = client.execute(request).await.context(what.clone())?;
    let status = response.status();
    let text = response.text().await?;
    let body = serde_json::from_str(&text)
        .with_context(|| format!("{what} answered {status} with no JSON: {text:.300}"))?;
    Ok((status, body))
}

/// The ids of the stack's two API keys, `(key, other key)`: on the local stack (and in any
/// deployment without a Cognito user pool) a caller's owner id is the id of its API key
/// (`$context.identity.apiKeyId`; see docs/security.md). Asked of API Gateway with the
/// provisioner's Python, the way `provision.py` finds its keys.
pub async fn api_key_ids(stack: &Stack) -> Result<(String, String)> {
    let python = python();
    let script = "import boto3, json, os, sys\n\
        c = boto3.client('apigateway', endpoint_url=sys.argv[1], region_name=sys.argv[2],\n\
            aws_access_key_id=os.environ.get('AWS_ACCESS_KEY_ID', 'test'),\n\
            aws_secret_access_key=os.environ.get('AWS_SECRET_ACCESS_KEY', 'test'))\n\
        items = c.get_api_keys(nameQuery=sys.argv[3], includeValues=True, limit=500)['items']\n\
        print(json.dumps({k['value']: k['id'] for k in items if k['name'].startswith(sys.argv[3])}))";
    let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".to_owned());
    let output = Command::new(&python)
        .args(["-c", script, &endpoint(), &region, &stack.info.prefix])
        .output()
        .await
        .with_context(|| format!("running {}", python.display()))?;
    if !output.status.success() {
        bail!(
            "listing the API keys failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let ids: HashMap<String, String> = serde_json::from_slice(&output.stdout)?;
    let id = |value: &str| {
        ids.get(value)
            .cloned()
            .with_context(|| format!("no API key of {} has this value", stack.info.prefix))
    };
    Ok((id(&stack.info.api.key)?, id(&stack.info.api.other_key)?))
}
