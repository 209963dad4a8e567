//! `hostile`: four honest nodes in a room on one LAN and an attacker beside them that sends
//! garbage, an oversized multistream frame, a connection storm, UDP garbage, a flood of
//! garbage requests, forged direct messages, an oversized request frame, a mailbox flood past
//! its quota and forged room posts. Pass: every honest node is still up, under 200 MiB of
//! memory, refused what was forged, and the honest nodes still message each other.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{
    Ctx,
    net::{Testbed, wait_for},
    node::{Node, listen_args},
};

const HONEST: usize = 4;
const MAX_RSS_KIB: u64 = 200 * 1024;

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub fn run(ctx: &Ctx, tb: &mut Testbed) -> Result<Value> {
    tb.add_switch("lan")?;
    for i in 0..HONEST {
        let h = format!("h{i}");
        tb.add_host(&h)?;
        tb.plug(&h, "eth0", "lan", &format!("10.66.0.{}/24", 10 + i))?;
    }
    tb.add_host("mallory")?;
    tb.plug("mallory", "eth0", "lan", "10.66.0.99/24")?;
    let mut nodes: Vec<Node> = Vec::new();
    let mut targets = Vec::new();
    for i in 0..HONEST {
        let ip = format!("10.66.0.{}", 10 + i);
        let mut args = listen_args(&ip);
        if let Some(first) = targets.first() {
            args.extend(["--bootstrap".into(), String::clone(first)]);
        }
        let name = format!("h{i}");
        let node = Node::start(tb, &ctx.agora, &name, &name, &args)?;
        targets.push(format!("/ip4/{ip}/tcp/4001/p2p/{}", node.peer_id));
        nodes.push(node);
    }
    for n in &nodes {
        n.cli(tb, &ctx.agora, &["room", "join", "lobby"])?;
    }
    let rss_before: Vec<u64> = nodes.iter().map(|n| rss_kib(n.pid).unwrap_or(0)).collect();

    // The attack, bounded by the agent itself; its summary is part of the report.
    let me = std::env::current_exe()?;
    let mut args: Vec<String> = vec!["agent-hostile".into(), "--room".into(), "lobby".into()];
    for t in &targets {
        args.extend(["--target".into(), t.clone()]);
    }
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &tb.ns("mallory")])
        .arg(&me)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .output()
        .context("cannot run the hostile agent")?;
    if !out.status.success() {
        bail!(
            "the hostile agent failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let attack: Value = serde_json::from_slice(&out.stdout).context("agent summary")?;

    // Every honest node is up and within memory bounds.
    let mut rss_after = Vec::new();
    for n in &nodes {
        let Some(rss) = rss_kib(n.pid) else {
            bail!(
                "{} died under attack:\n{}",
                n.name,
                tb.log_tail(&n.name, 30)
            );
        };
        if rss > MAX_RSS_KIB {
            bail!("{} grew to {rss} KiB under attack", n.name);
        }
        rss_after.push(rss);
    }
    if attack["protocol"]["forged_dms_refused"] != 50 {
        bail!("not every forged direct message was refused: {attack}");
    }
    if attack["protocol"]["mailbox_refused"].as_u64().unwrap_or(0) == 0 {
        bail!("the mailbox flood was never refused: {attack}");
    }
    // Honest traffic still flows: a direct message and a room post.
    let sent = nodes[1].cli(tb, &ctx.agora, &["send", &nodes[2].peer_id, "still here"])?;
    if sent["state"] != "delivered" {
        bail!("an honest message was not delivered after the attack: {sent}");
    }
    nodes[0].cli(tb, &ctx.agora, &["room", "post", "lobby", "honest post"])?;
    wait_for(Duration::from_secs(20), || {
        let posts = nodes[3]
            .cli(tb, &ctx.agora, &["room", "read", "lobby"])
            .ok()?;
        posts
            .as_array()?
            .iter()
            .any(|p| p["text"] == "honest post")
            .then_some(())
    })
    .context("an honest room post did not arrive after the attack")?;
    for n in &nodes {
        let posts = n.cli(tb, &ctx.agora, &["room", "read", "lobby"])?;
        if posts
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["text"].as_str().is_some_and(|t| t.starts_with("FORGED")))
        {
            bail!("{} shows a forged room post", n.name);
        }
        let inbox = n.cli(tb, &ctx.agora, &["inbox"])?;
        if inbox
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["text"].as_str().is_some_and(|t| t.starts_with("forged")))
        {
            bail!("{} shows a forged direct message", n.name);
        }
    }
    Ok(json!({
        "attack": attack,
        "rss_kib_before": rss_before,
        "rss_kib_after": rss_after,
        "honest_message": sent["state"],
    }))
}
