//! `churn`: N nodes (default 30) on one LAN; for the duration (default 120 s), waves kill -9
//! a random 30% of them and restart them (same identity and address). Meanwhile a stable
//! prober reaches random live peers by peer id (`agora connect PEER_ID` after dropping any
//! connection to it) and sends them direct messages, and random churning nodes download a
//! file from a stable one. Pass: ≥ 99% of lookups succeed, every message is delivered or
//! stored, every download completes verified.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::{
    Ctx,
    net::{Testbed, interrupted},
    node::{Node, listen_args, wait_routing_tables},
    sim::Rng,
};

fn addr(i: usize) -> String {
    format!("10.77.{}.{}", i / 200, 10 + i % 200)
}

fn node_args(i: usize, bootstrap: Option<&str>) -> Vec<String> {
    let mut args = listen_args(&addr(i));
    if let Some(b) = bootstrap {
        args.extend(["--bootstrap".into(), b.to_owned()]);
    }
    args
}

pub fn run(ctx: &Ctx, tb: &mut Testbed) -> Result<Value> {
    let n = ctx.nodes.unwrap_or(30).max(5);
    let duration = Duration::from_secs(ctx.duration.unwrap_or(120));
    let mut rng = Rng::new(ctx.seed);
    tb.add_switch("lan")?;
    for i in 0..n {
        let host = format!("n{i}");
        tb.add_host(&host)?;
        tb.plug(&host, "eth0", "lan", &format!("{}/16", addr(i)))?;
    }
    let first = Node::start(tb, &ctx.agora, "n0", "n0", &node_args(0, None))?;
    let boot = format!("/ip4/{}/tcp/4001/p2p/{}", addr(0), first.peer_id);
    let mut nodes = vec![first];
    for i in 1..n {
        let name = format!("n{i}");
        nodes.push(Node::start(
            tb,
            &ctx.agora,
            &name,
            &name,
            &node_args(i, Some(&boot)),
        )?);
    }
    // Let the routing tables fill.
    wait_routing_tables(tb, &ctx.agora, &nodes, 3, Duration::from_secs(30))?;

    // A file on the stable bootstrap node, fetched by random churning nodes during the run.
    let (data, hash) = super::share_patterned(ctx, tb, &nodes[0], "churn-file.bin", 2)?;
    let (mut gets, mut gets_ok) = (0u64, 0u64);

    // n0 (bootstrap) and n1 (the prober) stay up; the others churn.
    let prober = 1;
    let churnable: Vec<usize> = (2..n).collect();
    let per_wave = (churnable.len() * 3).div_ceil(10);
    let wave_every = (duration / 6).max(Duration::from_secs(5));
    let started = Instant::now();
    let mut next_wave = started + wave_every / 2;
    let (mut lookups, mut found, mut waves, mut kills) = (0u64, 0u64, 0u64, 0u64);
    let (mut dms, mut delivered, mut stored) = (0u64, 0u64, 0u64);
    let mut failures: Vec<String> = Vec::new();
    while started.elapsed() < duration {
        if interrupted() {
            bail!("interrupted");
        }
        if Instant::now() >= next_wave {
            // Kill -9 a random 30%, then restart them with the same identity and address.
            let mut pick = churnable.clone();
            let mut victims = Vec::new();
            for _ in 0..per_wave {
                victims.push(pick.swap_remove(rng.below(pick.len())));
            }
            for &v in &victims {
                tb.stop(nodes[v].pid, true);
                kills += 1;
            }
            std::thread::sleep(Duration::from_secs(1));
            for &v in &victims {
                let name = format!("n{v}");
                nodes[v] = Node::start(tb, &ctx.agora, &name, &name, &node_args(v, Some(&boot)))?;
            }
            waves += 1;
            next_wave += wave_every;
            continue;
        }
        // Reach a random live peer by id from scratch.
        let target = churnable[rng.below(churnable.len())];
        let peer = nodes[target].peer_id.clone();
        let p = &nodes[prober];
        let _ = p.cli(tb, &ctx.agora, &["disconnect", &peer]);
        lookups += 1;
        match p.cli(tb, &ctx.agora, &["connect", &peer]) {
            Ok(_) => found += 1,
            Err(e) => {
                if failures.len() < 10 {
                    failures.push(format!("{e:#}"));
                }
            }
        }
        if lookups % 3 == 0 {
            dms += 1;
            let text = format!("churn message {dms}");
            match p.cli(tb, &ctx.agora, &["send", &peer, &text]) {
                Ok(v) if v["state"] == "delivered" => delivered += 1,
                Ok(v) if v["state"] == "stored" => stored += 1,
                _ => {}
            }
        }
        if lookups % 10 == 0 {
            let getter = &nodes[churnable[rng.below(churnable.len())]];
            gets += 1;
            let out = tb.dir.join(format!("churn-get-{gets}.bin"));
            match getter.cli(tb, &ctx.agora, &["get", &hash, "-o", out.to_str().unwrap()]) {
                Ok(_) if std::fs::read(&out).is_ok_and(|got| got == data) => gets_ok += 1,
                Ok(_) => failures.push(format!("{} fetched different bytes", getter.name)),
                Err(e) => {
                    if failures.len() < 10 {
                        failures.push(format!("{} could not fetch the file: {e:#}", getter.name));
                    }
                }
            }
            let _ = std::fs::remove_file(&out);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let rate = if lookups == 0 {
        0.0
    } else {
        found as f64 / lookups as f64
    };
    let figures = json!({
        "nodes": n,
        "duration_secs": duration.as_secs(),
        "waves": waves,
        "kills": kills,
        "lookups": lookups,
        "lookups_ok": found,
        "lookup_success": rate,
        "messages": dms,
        "messages_delivered": delivered,
        "messages_stored_for_later": stored,
        "file_gets": gets,
        "file_gets_ok": gets_ok,
        "failures": failures,
    });
    if lookups < 10 {
        bail!("too few lookups to judge ({lookups}): {figures}");
    }
    if rate < 0.99 {
        bail!(
            "peer-id lookup success {:.1}% is under 99%: {figures}",
            rate * 100.0
        );
    }
    if gets_ok < gets {
        bail!("some file downloads failed under churn: {figures}");
    }
    if delivered + stored < dms {
        bail!("some direct messages were neither delivered nor stored: {figures}");
    }
    Ok(figures)
}
