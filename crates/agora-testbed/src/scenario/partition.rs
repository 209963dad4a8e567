//! `partition`: eight nodes on two LANs joined by one router, all in one room. The router
//! then drops everything between the LANs (no resets: a silent partition). Each half must keep
//! working on its own — direct messages and room posts within a half — while a message across
//! is kept for later. Then the partition heals and the halves must merge: presence comes back,
//! the held message is delivered, new room posts cross again, posts made on each side during
//! the partition are filled in on the other, and peers on the other side are reached by id.
//!
//! The nodes also run a ledger with four validators, two on each side: during the partition
//! neither side has the quorum of three, so no block is finalized anywhere (safety over
//! liveness, as BFT promises); after the heal finality resumes and a payment is final on all
//! eight nodes with the same balances.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{
    Ctx,
    net::{Testbed, wait_for},
    node::{Node, start_joining},
};

const PER_SIDE: usize = 4;
const WAIT: Duration = Duration::from_secs(90);

fn status(tb: &Testbed, ctx: &Ctx, of: &Node, peer: &str) -> Option<String> {
    let who = of.cli(tb, &ctx.agora, &["who"]).ok()?;
    who.as_array()?
        .iter()
        .find(|p| p["peer_id"] == peer)
        .and_then(|p| p["status"].as_str().map(str::to_owned))
}

fn has_post(tb: &Testbed, ctx: &Ctx, n: &Node, text: &str) -> bool {
    n.cli(tb, &ctx.agora, &["room", "read", "town"])
        .ok()
        .and_then(|v| v.as_array().map(|a| a.iter().any(|p| p["text"] == text)))
        .unwrap_or(false)
}

fn has_message(tb: &Testbed, ctx: &Ctx, n: &Node, text: &str) -> bool {
    n.cli(tb, &ctx.agora, &["inbox", "--all"])
        .ok()
        .and_then(|v| {
            v.as_array().map(|a| {
                a.iter()
                    .any(|m| m["text"] == text && m["direction"] == "in")
            })
        })
        .unwrap_or(false)
}

fn ledger_height(tb: &Testbed, ctx: &Ctx, n: &Node) -> Option<u64> {
    n.cli(tb, &ctx.agora, &["ledger", "status"]).ok()?["height"].as_u64()
}

fn check(ok: Option<()>, what: &str) -> Result<()> {
    ok.with_context(|| format!("{what} did not happen within {WAIT:?}"))
}

pub fn run(ctx: &Ctx, tb: &mut Testbed) -> Result<Value> {
    tb.add_host("router")?;
    for (side, net) in [("a", 31), ("b", 32)] {
        let lan = format!("lan{side}");
        tb.add_switch(&lan)?;
        tb.plug(
            "router",
            &format!("{lan}0"),
            &lan,
            &format!("10.{net}.0.1/24"),
        )?;
        for i in 0..PER_SIDE {
            let host = format!("{side}{i}");
            tb.add_host(&host)?;
            tb.plug(&host, "eth0", &lan, &format!("10.{net}.0.{}/24", 10 + i))?;
            tb.default_route(&host, &format!("10.{net}.0.1"))?;
        }
    }
    tb.forward("router")?;

    // The ledger: validators a0, a1, b0, b1; every node funded.
    let mut accounts = Vec::new();
    for side in ["a", "b"] {
        for i in 0..PER_SIDE {
            let name = format!("{side}{i}");
            let dir = tb.dir.join(&name);
            std::fs::create_dir_all(&dir)?;
            accounts.push((name, agora_ledger::service::identity_in(&dir)?.0));
        }
    }
    let is_validator = |name: &str| matches!(name, "a0" | "a1" | "b0" | "b1");
    let genesis = agora_ledger::Genesis {
        chain: "testbed-partition".into(),
        validators: accounts
            .iter()
            .filter(|(n, _)| is_validator(n))
            .map(|(_, a)| *a)
            .collect(),
        balances: accounts.iter().map(|(_, a)| (*a, 1_000_000)).collect(),
        min_fee: 1,
        epoch_length: 1_000_000,
    };
    let genesis_path = tb.dir.join("genesis.json");
    std::fs::write(&genesis_path, serde_json::to_vec(&genesis)?)?;
    let account_of = |name: &str| {
        accounts
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a.to_string())
            .unwrap_or_default()
    };

    let mut nodes: Vec<Node> = Vec::new();
    let mut boot: Option<String> = None;
    for (side, net) in [("a", 31), ("b", 32)] {
        for i in 0..PER_SIDE {
            let name = format!("{side}{i}");
            let ip = format!("10.{net}.0.{}", 10 + i);
            let mut args = vec![
                "--listen".to_string(),
                format!("/ip4/{ip}/tcp/4001"),
                "--mailbox-check-interval".into(),
                "5".into(),
                "--genesis".into(),
                genesis_path.display().to_string(),
            ];
            if is_validator(&name) {
                args.push("--validator".into());
            }
            nodes.push(start_joining(tb, &ctx.agora, &name, &ip, args, &mut boot)?);
        }
    }
    let (a, b) = nodes.split_at(PER_SIDE);
    for n in &nodes {
        n.cli(tb, &ctx.agora, &["room", "join", "town"])?;
    }
    a[1].cli(tb, &ctx.agora, &["contacts", "add", &b[1].peer_id])?;
    b[1].cli(tb, &ctx.agora, &["contacts", "add", &a[1].peer_id])?;
    a[2].cli(
        tb,
        &ctx.agora,
        &["room", "post", "town", "before the split"],
    )?;
    check(
        wait_for(WAIT, || {
            has_post(tb, ctx, &b[2], "before the split").then_some(())
        }),
        "a post crossing before the partition",
    )?;
    let before = a[3].cli(tb, &ctx.agora, &["pay", &account_of("b3"), "100"])?;
    let before_hash = before["hash"].as_str().unwrap_or_default().to_owned();
    check(
        wait_for(WAIT, || {
            b[3].cli(tb, &ctx.agora, &["tx", &before_hash])
                .ok()
                .map(|_| ())
        }),
        "a payment across the network final before the partition",
    )?;

    // The partition: the router silently drops everything between the LANs.
    let rules = "table inet partition {\n chain forward_rules { type filter hook forward priority -10; policy drop; }\n}\n";
    let path = tb.dir.join("partition.nft");
    std::fs::write(&path, rules)?;
    tb.exec("router", "nft", &["-f", path.to_str().unwrap()])?;
    let split = Instant::now();
    check(
        wait_for(WAIT, || {
            (status(tb, ctx, &a[1], &b[1].peer_id).as_deref() == Some("offline")).then_some(())
        }),
        "the other side showing offline",
    )?;
    let detect_ms = split.elapsed().as_millis();
    // No quorum on either side: no block is finalized anywhere.
    let frozen: Vec<Option<u64>> = nodes.iter().map(|n| ledger_height(tb, ctx, n)).collect();
    std::thread::sleep(Duration::from_secs(5));
    let later: Vec<Option<u64>> = nodes.iter().map(|n| ledger_height(tb, ctx, n)).collect();
    if frozen != later || frozen.iter().any(Option::is_none) {
        bail!("the ledger finalized blocks without a quorum: heights {frozen:?} then {later:?}");
    }

    // Each half works on its own.
    for (side, half) in [("a", a), ("b", b)] {
        let text = format!("within {side}");
        let sent = half[2].cli(tb, &ctx.agora, &["send", &half[3].peer_id, &text])?;
        if sent["state"] != "delivered" {
            bail!("a message within half {side} was not delivered during the partition: {sent}");
        }
        let post = format!("post within {side}");
        half[3].cli(tb, &ctx.agora, &["room", "post", "town", &post])?;
        check(
            wait_for(WAIT, || has_post(tb, ctx, &half[0], &post).then_some(())),
            &format!("a room post within half {side} during the partition"),
        )?;
    }
    // Across: kept for later.
    let across = a[2].cli_any(tb, &ctx.agora, &["send", &b[2].peer_id, "across the split"])?;
    if across["state"] == "delivered" {
        bail!("a message crossed a partition that drops everything: {across}");
    }

    // Heal.
    tb.exec("router", "nft", &["delete", "table", "inet", "partition"])?;
    let healed = Instant::now();
    check(
        wait_for(WAIT, || {
            (status(tb, ctx, &a[1], &b[1].peer_id).as_deref() == Some("online")).then_some(())
        }),
        "presence across the healed partition",
    )?;
    let presence_ms = healed.elapsed().as_millis();
    // Finality resumes: a payment across is final on all eight nodes, balances agree.
    let after = b[2].cli(tb, &ctx.agora, &["pay", &account_of("a2"), "250"])?;
    let ledger_ms = healed.elapsed().as_millis();
    let after_hash = after["hash"].as_str().unwrap_or_default().to_owned();
    for n in &nodes {
        check(
            wait_for(WAIT, || {
                n.cli(tb, &ctx.agora, &["tx", &after_hash]).ok().map(|_| ())
            }),
            &format!("the payment after the heal final on {}", n.name),
        )?;
    }
    let balances: Vec<Value> = nodes
        .iter()
        .map(|n| {
            n.cli(tb, &ctx.agora, &["balance", &account_of("a2")])
                .map(|v| v["balance"].clone())
        })
        .collect::<Result<_>>()?;
    if balances.iter().any(|b| *b != json!(1_000_250)) {
        bail!("balances disagree after the heal: {balances:?}");
    }
    check(
        wait_for(WAIT, || {
            has_message(tb, ctx, &b[2], "across the split").then_some(())
        }),
        "the held message arriving after the partition healed",
    )?;
    let message_ms = healed.elapsed().as_millis();
    a[0].cli(
        tb,
        &ctx.agora,
        &["room", "post", "town", "after the heal from a"],
    )?;
    b[0].cli(
        tb,
        &ctx.agora,
        &["room", "post", "town", "after the heal from b"],
    )?;
    check(
        wait_for(WAIT, || {
            (has_post(tb, ctx, &b[3], "after the heal from a")
                && has_post(tb, ctx, &a[3], "after the heal from b"))
            .then_some(())
        }),
        "room posts crossing after the heal",
    )?;
    let gossip_ms = healed.elapsed().as_millis();
    for (x, y) in [(&a[3], &b[3]), (&b[0], &a[2])] {
        let _ = x.cli(tb, &ctx.agora, &["disconnect", &y.peer_id]);
        x.cli(tb, &ctx.agora, &["connect", &y.peer_id])
            .with_context(|| format!("{} cannot reach {} by id after the heal", x.name, y.name))?;
    }
    // Posts made on each side during the partition are filled in by room history sync.
    check(
        wait_for(WAIT, || {
            (has_post(tb, ctx, &b[0], "post within a") && has_post(tb, ctx, &a[0], "post within b"))
                .then_some(())
        }),
        "posts made during the partition reaching the other half",
    )?;
    let backfill_ms = healed.elapsed().as_millis();
    Ok(json!({
        "nodes": nodes.len(),
        "offline_detected_after_ms": detect_ms,
        "message_across_during_partition": across["state"],
        "after_heal_ms": {
            "presence_online": presence_ms,
            "held_message_delivered": message_ms,
            "room_posts_cross": gossip_ms,
        },
        "posts_made_during_partition_filled_in_ms": backfill_ms,
        "ledger": {
            "validators": 4,
            "heights_frozen_during_partition": frozen,
            "payment_final_after_heal_ms": ledger_ms,
        },
    }))
}
