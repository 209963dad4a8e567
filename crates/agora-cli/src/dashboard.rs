//! `agora dashboard`: a one-time login link to the node's web dashboard.

use std::process::{Command, Stdio};

use anyhow::Result;
use serde_json::Value;

use crate::{ClientArgs, client::Endpoint, output};

/// Asks the node for a login code, prints the link (the URL alone on stdout, so that scripts
/// can take it) and, unless `no_open`, opens it in a browser when there is a display.
pub fn run(args: &ClientArgs, no_open: bool) -> Result<()> {
    let login: Value = Endpoint::resolve(args)?.post("/v1/dashboard/login", &Value::Null)?;
    let url = login["url"].as_str().unwrap_or_default().to_owned();
    output::print(args.json, &login, |v| {
        v["url"].as_str().unwrap_or("-").to_owned()
    })?;
    if !args.json {
        let minutes = login["expires_in_s"].as_u64().unwrap_or(300) / 60;
        eprintln!(
            "open this link within {minutes} minutes; it logs one browser in, once (the session lasts 7 days or until the node restarts)"
        );
    }
    if !no_open && !url.is_empty() && has_display() {
        open(&url);
    }
    Ok(())
}

fn has_display() -> bool {
    ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()))
}

/// Starts `xdg-open`; a machine without it (or without a browser) only gets a note.
fn open(url: &str) {
    let spawned = Command::new("xdg-open")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if let Err(e) = spawned {
        eprintln!("could not start xdg-open ({e}); open the link yourself");
    }
}
