//! A real `agora` node running inside a testbed namespace, driven through its CLI (run in the
//! same namespace, since the node's API listens on that namespace's loopback).

use std::{path::PathBuf, process::Output, time::Duration};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::net::{Testbed, wait_for};

pub struct Node {
    pub name: String,
    pub ns: String,
    pub dir: PathBuf,
    pub pid: u32,
    pub peer_id: String,
}

impl Node {
    /// Starts `agora up` in namespace `ns` and waits until it serves its API.
    pub fn start(
        tb: &mut Testbed,
        agora: &std::path::Path,
        ns: &str,
        name: &str,
        extra: &[String],
    ) -> Result<Node> {
        let dir = tb.dir.join(name);
        std::fs::create_dir_all(&dir)?;
        let _ = std::fs::remove_file(dir.join("api.json"));
        let mut args: Vec<String> = vec![
            "up".into(),
            "--data-dir".into(),
            dir.display().to_string(),
            "--api".into(),
            "127.0.0.1:0".into(),
        ];
        args.extend_from_slice(extra);
        let pid = tb.spawn(ns, agora, &args, name)?;
        let info = wait_for(Duration::from_secs(20), || {
            let text = std::fs::read_to_string(dir.join("api.json")).ok()?;
            let v: Value = serde_json::from_str(&text).ok()?;
            (v["pid"].as_u64() == Some(u64::from(pid))).then_some(v)
        })
        .with_context(|| format!("node {name} did not start:\n{}", tb.log_tail(name, 20)))?;
        Ok(Node {
            name: name.to_owned(),
            ns: ns.to_owned(),
            dir,
            pid,
            peer_id: info["peer_id"].as_str().unwrap_or_default().to_owned(),
        })
    }

    /// Runs `agora ARGS --data-dir DIR --json` in the node's namespace.
    fn run_cli(&self, tb: &Testbed, agora: &std::path::Path, args: &[&str]) -> Result<Output> {
        let dir = self.dir.display().to_string();
        Ok(std::process::Command::new("ip")
            .args(["netns", "exec", &tb.ns(&self.ns)])
            .arg(agora)
            .args(args)
            .args(["--data-dir", dir.as_str(), "--json"])
            .stdin(std::process::Stdio::null())
            .output()?)
    }

    /// Runs `agora ARGS` on this node and parses its JSON output; a failing command is an error.
    pub fn cli(&self, tb: &Testbed, agora: &std::path::Path, args: &[&str]) -> Result<Value> {
        let out = self.run_cli(tb, agora, args)?;
        if !out.status.success() {
            bail!(
                "agora {} on {}: {}",
                args.join(" "),
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "agora {} on {}: output is not JSON",
                args.join(" "),
                self.name
            )
        })
    }

    /// Like [`Node::cli`] but also returns the JSON a failing command printed (e.g. `send`
    /// reporting a message it could only queue).
    pub fn cli_any(&self, tb: &Testbed, agora: &std::path::Path, args: &[&str]) -> Result<Value> {
        let out = self.run_cli(tb, agora, args)?;
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "agora {} on {}: {}",
                args.join(" "),
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
    }

    /// The node's connections to `peer`: the remote address of each.
    pub fn connections_to(&self, tb: &Testbed, agora: &std::path::Path, peer: &str) -> Vec<String> {
        self.cli(tb, agora, &["peers"])
            .ok()
            .and_then(|v| {
                v.as_array()?
                    .iter()
                    .find(|p| p["peer_id"] == peer)
                    .map(|p| {
                        p["addrs"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|a| a.as_str().map(str::to_owned))
                            .collect()
                    })
            })
            .unwrap_or_default()
    }
}

/// Starts node `name` in the namespace of the same name, bootstrapped from `first` (the TCP
/// address of the first node started, port 4001); the first node started becomes `first`.
pub fn start_joining(
    tb: &mut Testbed,
    agora: &std::path::Path,
    name: &str,
    ip: &str,
    mut args: Vec<String>,
    first: &mut Option<String>,
) -> Result<Node> {
    if let Some(b) = first.as_ref() {
        args.extend(["--bootstrap".into(), b.clone()]);
    }
    let node = Node::start(tb, agora, name, name, &args)?;
    if first.is_none() {
        *first = Some(format!("/ip4/{ip}/tcp/4001/p2p/{}", node.peer_id));
    }
    Ok(node)
}

/// `--listen` arguments for TCP and QUIC on port 4001 of `ip`.
pub fn listen_args(ip: &str) -> Vec<String> {
    vec![
        "--listen".into(),
        format!("/ip4/{ip}/tcp/4001"),
        "--listen".into(),
        format!("/ip4/{ip}/udp/4001/quic-v1"),
    ]
}

/// Waits until every node's routing table holds at least `min` peers.
pub fn wait_routing_tables(
    tb: &Testbed,
    agora: &std::path::Path,
    nodes: &[Node],
    min: u64,
    timeout: Duration,
) -> Result<()> {
    wait_for(timeout, || {
        nodes
            .iter()
            .all(|n| {
                n.cli(tb, agora, &["status"])
                    .ok()
                    .and_then(|s| s["routing_table_size"].as_u64())
                    .is_some_and(|r| r >= min)
            })
            .then_some(())
    })
    .with_context(|| format!("routing tables did not fill within {timeout:?}"))
}
