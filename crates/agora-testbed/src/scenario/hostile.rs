//! `hostile`: four honest nodes in a room on one LAN and an attacker beside them that sends
//! garbage, an oversized multistream frame, a connection storm, UDP garbage, a flood of
//! garbage requests, forged direct messages, an oversized request frame, a mailbox flood past
//! its quota and forged room posts — and one attack per admission budget of the hardening
//! work: direct messages from throwaway keys, an index flood under a real file's keyword,
//! replica claims for blobs nobody has, and slow streams holding request and blob slots.
//! Pass: every honest node is still up, under 200 MiB of memory, refused what was forged,
//! kept its replicas, and — while the slow streams are still held — the honest nodes message
//! each other, find the real file by its keyword and fetch it.

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
/// How long the attacker holds its slow streams after its summary, while honest traffic is
/// checked.
const AGENT_HOLD: Duration = Duration::from_secs(20);

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
        // Room for the real file's replica, but not beside one of the attacker's claims.
        args.extend(["--storage-quota".into(), "48MiB".into()]);
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
    // A real file, shared by h0 and replicated to the others, whose keyword the attacker
    // floods and whose replicas its claims must not evict.
    let file = tb.dir.join("lobbyfile-report.bin");
    let data: Vec<u8> = (0..(4u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&file, &data)?;
    let shared = nodes[0].cli(tb, &ctx.agora, &["share", file.to_str().unwrap()])?;
    let hash = shared["hash"]
        .as_str()
        .context("share printed no hash")?
        .to_owned();
    let holds = |n: &Node| -> bool {
        n.cli(tb, &ctx.agora, &["files"])
            .ok()
            .and_then(|v| v.as_array().cloned())
            .into_iter()
            .flatten()
            .any(|f| f["hash"] == hash.as_str())
    };
    wait_for(Duration::from_secs(60), || {
        nodes[1..].iter().any(holds).then_some(())
    })
    .context("the shared file was never replicated")?;
    let holders: Vec<usize> = (1..HONEST).filter(|i| holds(&nodes[*i])).collect();
    let rss_before: Vec<u64> = nodes.iter().map(|n| rss_kib(n.pid).unwrap_or(0)).collect();

    // The attack, bounded by the agent itself; its summary is part of the report.
    let me = std::env::current_exe()?;
    let mut args: Vec<String> = vec!["agent-hostile".into(), "--room".into(), "lobby".into()];
    for t in &targets {
        args.extend(["--target".into(), t.clone()]);
    }
    args.extend([
        "--blob".into(),
        hash.clone(),
        "--keyword".into(),
        "lobbyfile".into(),
        "--hold".into(),
        AGENT_HOLD.as_secs().to_string(),
    ]);
    let mut agent = std::process::Command::new("ip")
        .args(["netns", "exec", &tb.ns("mallory")])
        .arg(&me)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("cannot run the hostile agent")?;
    // The summary comes first; the agent then holds its slow streams for AGENT_HOLD.
    let mut line = String::new();
    let stdout = agent.stdout.take().context("agent stdout")?;
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
    let attack: Value = match serde_json::from_str(&line) {
        Ok(v) => v,
        Err(_) => {
            let out = agent.wait_with_output()?;
            bail!(
                "the hostile agent failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };

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
    let protocol = &attack["protocol"];
    if protocol["throwaway_dms_refused"] != 100 {
        bail!("direct messages from throwaway keys were taken: {attack}");
    }
    // The index flood: at most 32 entries per provider and keyword at each of 4 nodes.
    if protocol["index_entries_stored"]
        .as_u64()
        .unwrap_or(u64::MAX)
        > 4 * 32
    {
        bail!("the index flood was not bounded: {attack}");
    }
    if protocol["slow_streams_answered"].as_u64().unwrap_or(0) == 0 {
        bail!("no slow stream was refused: {attack}");
    }
    // Honest traffic still flows while the slow streams are held at h0: a direct message to
    // h0 (whose chat slots the attacker holds its share of), the real file found by its
    // flooded keyword and fetched, and a room post.
    let sent = nodes[1].cli(tb, &ctx.agora, &["send", &nodes[0].peer_id, "still here"])?;
    if sent["state"] != "delivered" {
        bail!("an honest message was not delivered during the attack: {sent}");
    }
    let found = nodes[3].cli(tb, &ctx.agora, &["search", "lobbyfile", "report"])?;
    if !found
        .as_array()
        .into_iter()
        .flatten()
        .any(|h| h["hash"] == hash.as_str())
    {
        bail!("the real file was not found under its flooded keyword: {found}");
    }
    let out = tb.dir.join("lobbyfile-copy.bin");
    nodes[3].cli(tb, &ctx.agora, &["get", &hash, "-o", out.to_str().unwrap()])?;
    if std::fs::read(&out)? != data {
        bail!("the real file was not fetched intact during the attack");
    }
    let agent_out = agent.wait_with_output()?;
    if !agent_out.status.success() {
        bail!(
            "the hostile agent failed: {}",
            String::from_utf8_lossy(&agent_out.stderr)
        );
    }
    // Replica claims evicted nothing.
    for i in &holders {
        if !holds(&nodes[*i]) {
            bail!(
                "{} lost its replica to the attacker's claims",
                nodes[*i].name
            );
        }
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
        "replica_holders_kept": holders.len(),
    }))
}
