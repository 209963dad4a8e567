//! Client commands: they talk to a running node over its HTTP API.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::{ClientArgs, output};

/// Where a node's API is and how to authenticate.
pub struct Endpoint {
    pub base: String,
    pub token: String,
    agent: ureq::Agent,
}

impl Endpoint {
    pub fn resolve(args: &ClientArgs) -> Result<Self> {
        let (api, token_file) = match &args.api {
            Some(api) => (api.clone(), args.data_dir.join(agora_store::TOKEN_FILE)),
            None => match agora_store::read_api_info(&args.data_dir) {
                Ok(info) => (info.api, info.token_file),
                Err(_) => bail!(
                    "no agora node is running at {} (start one with `agora up --data-dir {}`)",
                    args.data_dir.display(),
                    args.data_dir.display()
                ),
            },
        };
        let token = match &args.token {
            Some(t) => t.clone(),
            None => std::fs::read_to_string(&token_file)
                .with_context(|| {
                    format!(
                        "cannot read the API token {} (pass --token or AGORA_TOKEN)",
                        token_file.display()
                    )
                })?
                .trim()
                .to_owned(),
        };
        Ok(Self::new(&api, token))
    }

    pub fn new(api: &str, token: String) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .new_agent();
        Self {
            base: format!("http://{api}"),
            token,
            agent,
        }
    }

    fn unreachable(&self, e: ureq::Error) -> anyhow::Error {
        match e {
            ureq::Error::Io(_) | ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
                anyhow!(
                    "no agora node is running at {} (start one with `agora up`)",
                    self.base.trim_start_matches("http://")
                )
            }
            other => anyhow!("talking to the node at {}: {other}", self.base),
        }
    }

    fn finish<T: DeserializeOwned>(
        &self,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T> {
        let mut response = response.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let body: Value = response
            .body_mut()
            .read_json()
            .with_context(|| format!("the node answered {status} with a body that is not JSON"))?;
        if !status.is_success() {
            let err = &body["error"];
            let message = err["message"].as_str().unwrap_or("unknown error");
            let mut text = format!("{message} (HTTP {})", status.as_u16());
            if let Some(hint) = err["hint"].as_str() {
                text.push_str(&format!("\nhint: {hint}"));
            }
            bail!(text);
        }
        serde_json::from_value(body).context("unexpected response from the node")
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let response = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .call();
        self.finish(response)
    }

    pub fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T> {
        let response = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .send_json(body);
        self.finish(response)
    }
}

pub fn id(args: &ClientArgs) -> Result<()> {
    let info: Value = Endpoint::resolve(args)?.get("/v1/id")?;
    output::print(args.json, &info, output::id)
}

pub fn peers(args: &ClientArgs) -> Result<()> {
    let peers: Value = Endpoint::resolve(args)?.get("/v1/peers")?;
    output::print(args.json, &peers, output::peers)
}

pub fn status(args: &ClientArgs) -> Result<()> {
    let status: Value = Endpoint::resolve(args)?.get("/v1/status")?;
    output::print(args.json, &status, output::status)
}

pub fn connect(args: &ClientArgs, target: &str) -> Result<()> {
    let outcome: Value =
        Endpoint::resolve(args)?.post("/v1/connect", &serde_json::json!({ "target": target }))?;
    output::print(args.json, &outcome, |v| {
        let peer = v["peer_id"].as_str().unwrap_or("?");
        if v["already_connected"].as_bool() == Some(true) {
            format!("already connected to {peer}")
        } else {
            format!(
                "connected to {peer} (via {})",
                v["via"].as_str().unwrap_or("?")
            )
        }
    })
}

pub fn disconnect(args: &ClientArgs, peer: &str) -> Result<()> {
    let outcome: Value =
        Endpoint::resolve(args)?.post("/v1/disconnect", &serde_json::json!({ "peer": peer }))?;
    output::print(args.json, &outcome, |v| {
        format!("disconnected from {}", v["peer_id"].as_str().unwrap_or("?"))
    })
}
