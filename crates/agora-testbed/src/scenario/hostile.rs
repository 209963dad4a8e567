//! `hostile`: four honest nodes in a room on one LAN and an attacker beside them that sends
//! garbage, an oversized multistream frame, a connection storm, UDP garbage, a flood of
//! garbage requests, forged direct messages, an oversized request frame, a mailbox flood past
//! its quota and forged room posts — and one attack per admission budget of the hardening
//! work: direct messages from throwaway keys, an index flood under a real file's keyword,
//! replica claims for blobs nobody has, and slow streams holding request and blob slots.
//! Pass: every honest node is still up, under 200 MiB of memory, refused what was forged,
//! kept its replicas, and — while the slow streams are still held — the honest nodes message
//! each other, find the real file by its keyword and fetch it.
//!
//! The nodes also run a ledger whose committee is the four honest nodes plus the attacker
//! (5 = 3f + 2 validators, f = 1: the four honest ones are a quorum without it). The attacker,
//! a Byzantine committee member, floods the consensus blocks channel with unsolicited
//! proposals, floods one validator with submissions, and serves the ledger sync protocol as a
//! liar (a height a million blocks ahead, junk blocks). A fifth honest node, a follower,
//! starts during the attack, bootstrapped from the attacker and asking it first. Pass:
//! payments made during the attack are final, every validator refused the flood within its
//! per-sender budget, the submissions were refused by their budgets, and the follower reaches
//! the validators' tip (same digest) having left the liar's junk.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{
    Ctx,
    net::{Testbed, wait_for},
    node::{Node, listen_args},
};

const HONEST: usize = 4;
/// Where the follower lives (started during the attack).
const FOLLOWER_IP: &str = "10.66.0.14";
const MALLORY_IP: &str = "10.66.0.99";
/// Unsolicited proposals the attacker floods, and over how long.
const PROPOSALS: u64 = 2_000;
const FLOOD: Duration = Duration::from_secs(10);
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

/// Every node is still running and under [`MAX_RSS_KIB`]: their RSS, or which one died or
/// grew, with the tail of its log.
fn alive_within_memory<'a>(
    tb: &Testbed,
    nodes: impl IntoIterator<Item = &'a Node>,
    under: &str,
) -> Result<Vec<u64>> {
    let mut rss_all = Vec::new();
    for n in nodes {
        let Some(rss) = rss_kib(n.pid) else {
            bail!(
                "{} died under {under}:\n{}",
                n.name,
                tb.log_tail(&n.name, 30)
            );
        };
        if rss > MAX_RSS_KIB {
            bail!("{} grew to {rss} KiB under {under}", n.name);
        }
        rss_all.push(rss);
    }
    Ok(rss_all)
}

pub fn run(ctx: &Ctx, tb: &mut Testbed) -> Result<Value> {
    tb.add_switch("lan")?;
    for i in 0..HONEST {
        let h = format!("h{i}");
        tb.add_host(&h)?;
        tb.plug(&h, "eth0", "lan", &format!("10.66.0.{}/24", 10 + i))?;
    }
    tb.add_host("h4")?;
    tb.plug("h4", "eth0", "lan", &format!("{FOLLOWER_IP}/24"))?;
    tb.add_host("mallory")?;
    tb.plug("mallory", "eth0", "lan", &format!("{MALLORY_IP}/24"))?;
    let ledger = write_genesis(tb)?;
    let mut nodes: Vec<Node> = Vec::new();
    let mut targets = Vec::new();
    for i in 0..HONEST {
        let ip = format!("10.66.0.{}", 10 + i);
        let mut args = listen_args(&ip);
        args.extend(ledger.node_args(true));
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
    let (data, hash) = super::share_patterned(ctx, tb, &nodes[0], "lobbyfile-report.bin", 4)?;
    let holds = |tb: &Testbed, n: &Node| -> bool {
        n.cli(tb, &ctx.agora, &["files"])
            .ok()
            .and_then(|v| v.as_array().cloned())
            .into_iter()
            .flatten()
            .any(|f| f["hash"] == hash.as_str())
    };
    wait_for(Duration::from_secs(60), || {
        nodes[1..].iter().any(|n| holds(tb, n)).then_some(())
    })
    .context("the shared file was never replicated")?;
    let holders: Vec<usize> = (1..HONEST).filter(|i| holds(tb, &nodes[*i])).collect();
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
        "--ledger-key".into(),
        ledger.mallory_key_file.display().to_string(),
        "--proposals".into(),
        PROPOSALS.to_string(),
        "--flood-secs".into(),
        FLOOD.as_secs().to_string(),
    ]);
    let mut agent = std::process::Command::new("ip")
        .args(["netns", "exec", &tb.ns("mallory")])
        .arg(&me)
        .args(&args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("cannot run the hostile agent")?;
    // The summary comes first; the agent then holds its slow streams for AGENT_HOLD while it
    // runs the ledger attacks (a second summary line), and serves as a lying sync peer until
    // its stdin is closed (a third).
    let lines = agent_lines(agent.stdout.take().context("agent stdout")?);
    let next_line = |agent: &mut std::process::Child, timeout: Duration| -> Result<Value> {
        match lines.recv_timeout(timeout) {
            Ok(line) => {
                serde_json::from_str(&line).with_context(|| format!("agent printed {line:?}"))
            }
            Err(_) => {
                let _ = agent.kill();
                let mut stderr = String::new();
                if let Some(mut e) = agent.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
                }
                bail!("the hostile agent failed: {stderr}");
            }
        }
    };
    let attack = next_line(&mut agent, Duration::from_secs(120))?;
    let attack_started = std::time::Instant::now();

    // Payments during the proposal and submission floods (each returns once final): one as
    // they start, one amid them (after the honest traffic checks), one after.
    let mut payments = vec![pay(
        tb,
        &ctx.agora,
        &nodes[1],
        &ledger.accounts[2],
        attack_started,
    )?];
    // A follower joins during the attack, bootstrapped from the attacker (whose peer id sorts
    // first, so the follower's sync asks it before any honest validator) and from h0.
    let mut args = listen_args(FOLLOWER_IP);
    args.extend(ledger.node_args(false));
    args.extend([
        "--bootstrap".into(),
        format!("/ip4/{MALLORY_IP}/tcp/4001/p2p/{}", ledger.mallory_peer),
        "--bootstrap".into(),
        targets[0].clone(),
    ]);
    let follower = Node::start(tb, &ctx.agora, "h4", "h4", &args)?;
    let follower_started = std::time::Instant::now();
    let status = |tb: &Testbed, n: &Node| -> Option<(u64, String)> {
        let s = n.cli(tb, &ctx.agora, &["ledger", "status"]).ok()?;
        Some((s["height"].as_u64()?, s["digest"].as_str()?.to_owned()))
    };
    let start_height = status(tb, &nodes[0]).context("no ledger status on h0")?.0;
    wait_for(Duration::from_secs(30), || {
        (status(tb, &follower)?.0 >= start_height).then_some(())
    })
    .with_context(|| {
        format!(
            "the follower did not reach the validators' height {start_height} during the \
             attack: at {:?}\n{}",
            status(tb, &follower),
            tb.log_tail("h4", 20)
        )
    })?;
    let caught_up_s = follower_started.elapsed().as_secs_f64();

    // Every honest node is up and within memory bounds.
    let rss_after = alive_within_memory(tb, &nodes, "attack")?;
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
    if let Some(wait) = (FLOOD / 2).checked_sub(attack_started.elapsed()) {
        std::thread::sleep(wait);
    }
    payments.push(pay(
        tb,
        &ctx.agora,
        &nodes[3],
        &ledger.accounts[0],
        attack_started,
    )?);

    // The ledger attacks' summary, once the floods are over.
    let ledger_attack = next_line(&mut agent, FLOOD + Duration::from_secs(60))?;
    let flood = &ledger_attack["ledger"]["flood"];
    let submit = &ledger_attack["ledger"]["submit"];
    if flood["proposals_sent"] != PROPOSALS {
        bail!("the proposal flood did not run: {ledger_attack}");
    }
    if submit["submit_refused_txs"].as_u64().unwrap_or(0) == 0
        || submit["submit_refused_bytes"].as_u64().unwrap_or(0) == 0
    {
        bail!("the submission flood was not refused by both budgets: {ledger_attack}");
    }
    // Consensus kept finalizing through the flood: a payment right after it is final too.
    payments.push(pay(
        tb,
        &ctx.agora,
        &nodes[2],
        &ledger.accounts[1],
        attack_started,
    )?);
    // The follower reaches the validators' tip, block for block (the same digest), while the
    // liar still serves.
    let target_height = status(tb, &nodes[0]).context("no ledger status on h0")?.0;
    let (follower_height, follower_digest) = wait_for(Duration::from_secs(30), || {
        let (h, d) = status(tb, &follower)?;
        if h < target_height {
            return None;
        }
        let (vh, vd) = status(tb, &nodes[0])?;
        (vh == h && vd == d).then_some((h, d))
    })
    .with_context(|| {
        format!(
            "the follower did not keep up with the validators ({target_height}): at {:?}\n{}",
            status(tb, &follower),
            tb.log_tail("h4", 20)
        )
    })?;
    if agent.try_wait()?.is_some() {
        bail!("the attacker stopped serving before the follower caught up");
    }
    // What each honest node refused, from its /metrics.
    let mut validator_refusals = Vec::new();
    for n in &nodes {
        let text = api_get(tb, n, "/metrics")?;
        let unsolicited = refusals(&text, "ledger.unsolicited_blocks");
        if unsolicited == 0 {
            bail!("{} refused none of the attacker's proposals", n.name);
        }
        validator_refusals.push(json!({
            "unsolicited_blocks": unsolicited,
            "submit_peer_txs": refusals(&text, "ledger.submit_peer_txs"),
            "submit_peer_bytes": refusals(&text, "ledger.submit_peer_bytes"),
            "sync_junk": refusals(&text, "ledger.sync_junk"),
            "sync_uncertified_run": refusals(&text, "ledger.sync_uncertified_run"),
        }));
    }
    let text = api_get(tb, &follower, "/metrics")?;
    let (follower_junk, follower_run) = (
        refusals(&text, "ledger.sync_junk"),
        refusals(&text, "ledger.sync_uncertified_run"),
    );
    if follower_junk + follower_run == 0 {
        bail!("the follower never left the liar's junk (was it asked?)");
    }
    drop(agent.stdin.take());
    let liar = next_line(&mut agent, Duration::from_secs(30))?;
    let served = liar["sync_liar"]["askers"][&follower.peer_id]["junk_blocks"]
        .as_u64()
        .unwrap_or(0);
    if served == 0 {
        bail!("the liar served the follower no junk: {liar}");
    }
    let with_follower: Vec<&Node> = nodes.iter().chain([&follower]).collect();
    let ledger_rss = alive_within_memory(tb, with_follower, "the ledger attacks")?;

    let agent_out = agent.wait_with_output()?;
    if !agent_out.status.success() {
        bail!(
            "the hostile agent failed: {}",
            String::from_utf8_lossy(&agent_out.stderr)
        );
    }
    // Replica claims evicted nothing.
    for i in &holders {
        if !holds(tb, &nodes[*i]) {
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
        "ledger": {
            "attack": ledger_attack["ledger"],
            "sync_liar": liar["sync_liar"],
            "payments": payments,
            "validator_refusals": validator_refusals,
            "follower": {
                "height": follower_height,
                "digest": follower_digest,
                "start_height": start_height,
                "caught_up_s": caught_up_s,
                "sync_junk_refusals": follower_junk,
                "sync_uncertified_run_refusals": follower_run,
                "junk_blocks_served_to_it": served,
            },
            "rss_kib": ledger_rss,
        },
    }))
}

/// The ledger of the scenario: its genesis file, the honest validators' accounts and the
/// attacker's committee key.
struct Ledger {
    genesis: std::path::PathBuf,
    accounts: Vec<agora_ledger::Account>,
    mallory_key_file: std::path::PathBuf,
    mallory_peer: String,
}

impl Ledger {
    fn node_args(&self, validator: bool) -> Vec<String> {
        let mut args = vec!["--genesis".into(), self.genesis.display().to_string()];
        if validator {
            args.push("--validator".into());
        }
        args
    }
}

/// Writes a genesis whose committee is the honest nodes h0..h3 and the attacker (5 = 3f + 2,
/// f = 1: the honest four are a quorum of 4 without it). The attacker's key is drawn until its
/// peer id sorts before every honest validator's, so that a syncing node, which asks committee
/// members in peer id order, always asks the liar first.
fn write_genesis(tb: &Testbed) -> Result<Ledger> {
    let mut accounts = Vec::new();
    let mut honest_peers = Vec::new();
    for i in 0..HONEST {
        let (account, _) = agora_ledger::service::identity_in(&tb.dir.join(format!("h{i}")))?;
        let key = agora_ledger::consensus::public_key(&account).context("not a key")?;
        honest_peers.push(agora_consensus_net::peer_id(&key).to_string());
        accounts.push(account);
    }
    let first = honest_peers.iter().min().cloned().unwrap_or_default();
    let (secret, mallory) = (0..10_000)
        .find_map(|_| {
            let keypair = libp2p::identity::Keypair::generate_ed25519();
            let peer = keypair.public().to_peer_id().to_string();
            (peer < first).then(|| {
                let secret = keypair.try_into_ed25519().ok()?.secret();
                Some((secret.as_ref().to_vec(), peer))
            })?
        })
        .context("no attacker key sorts first")?;
    let mallory_account = {
        let key = ed25519_dalek::SigningKey::from_bytes(secret.as_slice().try_into()?);
        agora_ledger::Account::from_key(&key.verifying_key())
    };
    let mut validators = accounts.clone();
    validators.push(mallory_account);
    let genesis = agora_ledger::Genesis {
        chain: "hostile".into(),
        validators,
        balances: accounts.iter().map(|a| (*a, 1_000_000_000)).collect(),
        min_fee: 1,
        epoch_length: 1_000_000_000,
    };
    genesis.validate().map_err(|e| anyhow::anyhow!(e))?;
    if agora_ledger::quorum(genesis.validators.len()) > HONEST {
        bail!("the honest validators are not a quorum");
    }
    let path = tb.dir.join("genesis.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&genesis)?)?;
    let key_file = tb.dir.join("mallory.key");
    std::fs::write(&key_file, hex::encode(&secret))?;
    Ok(Ledger {
        genesis: path,
        accounts,
        mallory_key_file: key_file,
        mallory_peer: mallory,
    })
}

/// `agora pay TO 5` on `from`, which returns once the payment is final: its block, time to
/// finality and when it was made (seconds after the attack began).
fn pay(
    tb: &Testbed,
    agora: &std::path::Path,
    from: &Node,
    to: &agora_ledger::Account,
    since: std::time::Instant,
) -> Result<Value> {
    let at = since.elapsed().as_secs_f64();
    let paid = from.cli(tb, agora, &["pay", &to.to_string(), "5"])?;
    if paid["height"].as_u64().unwrap_or(0) == 0 {
        bail!("a payment from {} printed no block: {paid}", from.name);
    }
    Ok(json!({
        "from": from.name,
        "attack_s": at,
        "height": paid["height"],
        "finality_ms": paid["finality_ms"],
    }))
}

/// The agent's stdout, a line at a time, on a channel (so that waiting for one can time out).
fn agent_lines(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// `GET path` on a node's HTTP API, which listens on its namespace's loopback: from a thread
/// that enters the namespace.
fn api_get(tb: &Testbed, node: &Node, path: &str) -> Result<String> {
    let info = agora_store::read_api_info(&node.dir)?;
    let token = std::fs::read_to_string(&info.token_file)?.trim().to_owned();
    let netns = format!("/run/netns/{}", tb.ns(&node.ns));
    let url = format!("http://{}{path}", info.api);
    std::thread::spawn(move || -> Result<String> {
        use std::os::fd::AsRawFd;
        let ns = std::fs::File::open(&netns).with_context(|| format!("cannot open {netns}"))?;
        // SAFETY: setns(2) on a namespace file we hold open; it moves only this thread.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {netns}: {}", std::io::Error::last_os_error());
        }
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .new_agent();
        let mut response = agent
            .get(&url)
            .header("Authorization", &format!("Bearer {token}"))
            .call()?;
        Ok(response.body_mut().read_to_string()?)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the API thread panicked"))?
}

/// `agora_refusals_total{budget="…"}` in a /metrics text.
fn refusals(metrics: &str, budget: &str) -> u64 {
    let name = format!("agora_refusals_total{{budget=\"{budget}\"}}");
    metrics
        .lines()
        .find(|l| l.starts_with(&name))
        .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}
