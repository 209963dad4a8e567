//! `partition`: eight nodes on two LANs joined by one router, all in one room. The router
//! then drops everything between the LANs (no resets: a silent partition). Each half must keep
//! working on its own — direct messages and room posts within a half — while a message across
//! is kept for later. Then the partition heals and the halves must merge: presence comes back,
//! the held message is delivered, new room posts cross again, posts made on each side during
//! the partition are filled in on the other, and peers on the other side are reached by id.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{
    Ctx,
    net::{Testbed, wait_for},
    node::Node,
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
            ];
            if let Some(b) = &boot {
                args.extend(["--bootstrap".into(), b.clone()]);
            }
            let node = Node::start(tb, &ctx.agora, &name, &name, &args)?;
            if boot.is_none() {
                boot = Some(format!("/ip4/{ip}/tcp/4001/p2p/{}", node.peer_id));
            }
            nodes.push(node);
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
    }))
}
