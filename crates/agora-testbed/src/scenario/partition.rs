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
//!
//! And groupware: before the split a0 creates a space and a note and invites five editors,
//! a1 and a3 on its side and b0, b1 and b2 on the other; each waits for its invite and joins,
//! and all six must hold the same note and see six members. During the split each of the six
//! appends its own line; the three on each side must converge among themselves (identical text
//! and heads, their side's three lines and none of the other side's). After the heal all six
//! must hold identical text and heads with all six lines. The members are chosen so that the
//! heal checks' explicit `connect`s (a3–b3, b0–a2) join no two members: the note crosses on
//! connections the nodes make themselves. It is checked last, so its time after the heal is an
//! upper bound.

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
/// The members of the groupware space on each side (indices into that side's nodes); the
/// first on side a creates it. Neither a2 nor b3 is one: see the module docs.
const MEMBERS_A: [usize; 3] = [0, 1, 3];
const MEMBERS_B: [usize; 3] = [0, 1, 2];
/// The note's first line, written by its creator before the split.
const FIRST_LINE: &str = "written before the split";

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

/// The note `doc` as `n` has it: its text and its heads, sorted.
fn note(tb: &Testbed, ctx: &Ctx, n: &Node, doc: &str) -> Option<(String, Vec<String>)> {
    let v = n.cli(tb, &ctx.agora, &["doc", "show", doc]).ok()?;
    let mut heads: Vec<String> = v["heads"]
        .as_array()?
        .iter()
        .map(|h| h.as_str().map(str::to_owned))
        .collect::<Option<_>>()?;
    heads.sort();
    Some((v["text"].as_str()?.to_owned(), heads))
}

/// The line `n` appends to the note during the split.
fn split_line(n: &Node) -> String {
    format!("line from {} during the split", n.name)
}

/// Waits until every node of `group` holds the same text and heads for `doc` and `ok` holds
/// for that text; returns them, or an error showing what each node had last.
fn converge(
    tb: &Testbed,
    ctx: &Ctx,
    group: &[&Node],
    doc: &str,
    what: &str,
    ok: impl Fn(&str) -> bool,
) -> Result<(String, Vec<String>)> {
    let mut last = Vec::new();
    wait_for(WAIT, || {
        last = group.iter().map(|n| note(tb, ctx, n, doc)).collect();
        let first = last.first()?.clone()?;
        (last.iter().all(|x| x.as_ref() == Some(&first)) && ok(&first.0)).then_some(first)
    })
    .with_context(|| {
        let had: Vec<String> = group
            .iter()
            .zip(&last)
            .map(|(n, x)| format!("{}: {x:?}", n.name))
            .collect();
        format!(
            "{what} did not happen within {WAIT:?}; last seen:\n{}",
            had.join("\n")
        )
    })
}

/// Whether `text` has `line` as one of its lines.
fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

/// Before the split: `members[0]` creates a space and a note and invites the others as
/// editors; each waits for its invite and joins; all must hold the same note and see every
/// member. Returns the note.
fn groupware_setup(tb: &Testbed, ctx: &Ctx, members: &[&Node]) -> Result<String> {
    let owner = members[0];
    let space = owner.cli(tb, &ctx.agora, &["space", "create", "partition"])?["space"]
        .as_str()
        .context("space create printed no space")?
        .to_owned();
    let doc = owner.cli(tb, &ctx.agora, &["doc", "new", &space, "Notes"])?["doc"]
        .as_str()
        .context("doc new printed no doc")?
        .to_owned();
    owner.cli(tb, &ctx.agora, &["doc", "append", &doc, FIRST_LINE])?;
    for m in &members[1..] {
        owner.cli(
            tb,
            &ctx.agora,
            &["space", "invite", &space, &m.peer_id, "--role", "editor"],
        )?;
    }
    for m in &members[1..] {
        check(
            wait_for(WAIT, || {
                let v = m
                    .cli(tb, &ctx.agora, &["space", "list", "--invites"])
                    .ok()?;
                v["invites"]
                    .as_array()?
                    .iter()
                    .any(|i| i["space"] == space.as_str())
                    .then_some(())
            }),
            &format!("the invite reaching {}", m.name),
        )?;
        let joined = m.cli(tb, &ctx.agora, &["space", "join", &space])?;
        if joined["role"] != "editor" {
            bail!("{} joined the space not as an editor: {joined}", m.name);
        }
    }
    converge(
        tb,
        ctx,
        members,
        &doc,
        "all members holding the note",
        |t| has_line(t, FIRST_LINE),
    )?;
    for m in members {
        check(
            wait_for(WAIT, || {
                let v = m.cli(tb, &ctx.agora, &["space", "show", &space]).ok()?;
                (v["members"].as_array()?.len() == members.len()).then_some(())
            }),
            &format!("{} seeing all {} members", m.name, members.len()),
        )?;
    }
    Ok(doc)
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
    let members_a: Vec<&Node> = MEMBERS_A.iter().map(|&i| &a[i]).collect();
    let members_b: Vec<&Node> = MEMBERS_B.iter().map(|&i| &b[i]).collect();
    let members: Vec<&Node> = members_a.iter().chain(&members_b).copied().collect();
    let doc = groupware_setup(tb, ctx, &members)?;
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
    // Each member appends its own line to the note; each side converges on its own lines.
    for m in &members {
        m.cli(tb, &ctx.agora, &["doc", "append", &doc, &split_line(m)])?;
    }
    let appended = Instant::now();
    let mut side_ms = serde_json::Map::new();
    for (side, mine, theirs) in [("a", &members_a, &members_b), ("b", &members_b, &members_a)] {
        converge(
            tb,
            ctx,
            mine,
            &doc,
            &format!("the note converging within half {side} during the partition"),
            |t| {
                has_line(t, FIRST_LINE)
                    && mine.iter().all(|m| has_line(t, &split_line(m)))
                    // Not even as part of a line.
                    && !theirs.iter().any(|m| t.contains(&split_line(m)))
            },
        )?;
        side_ms.insert(side.into(), json!(appended.elapsed().as_millis()));
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
    // The note: all six members identical, with every line from both sides.
    let (_, heads) = converge(
        tb,
        ctx,
        &members,
        &doc,
        "the note converging on all six members after the heal",
        |t| has_line(t, FIRST_LINE) && members.iter().all(|m| has_line(t, &split_line(m))),
    )?;
    let note_ms = healed.elapsed().as_millis();
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
        "groupware": {
            "members": members.len(),
            "note_converged_within_each_half_ms": side_ms,
            "note_converged_after_heal_ms": note_ms,
            "heads_after_heal": heads.len(),
        },
        "ledger": {
            "validators": 4,
            "heights_frozen_during_partition": frozen,
            "payment_final_after_heal_ms": ledger_ms,
        },
    }))
}
