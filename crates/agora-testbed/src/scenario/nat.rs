//! `nat`: two peers behind their own home NATs and one public node.
//!
//! ```text
//!                 wan 10.99.0.0/24
//!     ┌───────────────┬───────────────┬───────────────┐
//!  public .10      nat1 .1         nat2 .2         nat3 .3 (symmetric)
//!                    │               │               │
//!              lan1 192.168.1/24  lan2 192.168.2/24  lan3 192.168.3/24
//!                  alice .10       bob .10         carol .10
//! ```
//!
//! The public node is a relay. Alice, bob and carol reserve a slot on it. Bob dials alice
//! through the relay; DCUtR must then punch a direct connection through both NATs. Carol's
//! NAT gives every flow a random port, so punching cannot work: she must stay reachable
//! through the relay (a direct message to her is delivered).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{
    Ctx,
    net::{Testbed, wait_for},
    node::{Node, listen_args},
};

const PORT: u16 = 4001;

pub fn run(ctx: &Ctx, tb: &mut Testbed) -> Result<Value> {
    tb.add_switch("wan")?;
    tb.add_host("public")?;
    tb.plug("public", "eth0", "wan", "10.99.0.10/24")?;
    let homes = [("alice", 1, false), ("bob", 2, false), ("carol", 3, true)];
    for (host, n, symmetric) in homes {
        let (router, lan) = (format!("nat{n}"), format!("lan{n}"));
        tb.add_switch(&lan)?;
        tb.add_host(&router)?;
        tb.add_host(host)?;
        tb.plug(&router, "wan0", "wan", &format!("10.99.0.{n}/24"))?;
        tb.plug(&router, "lan0", &lan, &format!("192.168.{n}.1/24"))?;
        tb.plug(host, "eth0", &lan, &format!("192.168.{n}.10/24"))?;
        tb.default_route(host, &format!("192.168.{n}.1"))?;
        tb.nat(&router, "wan0", symmetric)?;
    }

    let mut extra = listen_args("10.99.0.10");
    extra.extend([
        "--external-addr".into(),
        format!("/ip4/10.99.0.10/tcp/{PORT}"),
        "--external-addr".into(),
        format!("/ip4/10.99.0.10/udp/{PORT}/quic-v1"),
    ]);
    let public = Node::start(tb, &ctx.agora, "public", "public", &extra)?;
    let relay = format!("/ip4/10.99.0.10/tcp/{PORT}/p2p/{}", public.peer_id);
    let circuit = format!("{relay}/p2p-circuit");
    let mut nodes = Vec::new();
    for (host, _, _) in homes {
        let mut extra = listen_args("0.0.0.0");
        extra.extend([
            "--bootstrap".into(),
            relay.clone(),
            "--listen".into(),
            circuit.clone(),
        ]);
        nodes.push(Node::start(tb, &ctx.agora, host, host, &extra)?);
    }
    let (alice, bob, carol) = (&nodes[0], &nodes[1], &nodes[2]);

    // Each home node holds a reservation on the relay.
    for n in &nodes {
        wait_for(Duration::from_secs(30), || {
            let id = n.cli(tb, &ctx.agora, &["id"]).ok()?;
            id["addrs"]
                .as_array()?
                .iter()
                .any(|a| a.as_str().is_some_and(|a| a.contains("/p2p-circuit/")))
                .then_some(())
        })
        .with_context(|| {
            format!(
                "{} got no relay reservation:\n{}",
                n.name,
                tb.log_tail(&n.name, 20)
            )
        })?;
    }

    // Bob → alice through the relay, then hole punching.
    let t0 = Instant::now();
    bob.cli(
        tb,
        &ctx.agora,
        &["connect", &format!("{circuit}/p2p/{}", alice.peer_id)],
    )
    .context("bob cannot reach alice through the relay")?;
    let relayed_ms = t0.elapsed().as_millis();
    let direct = wait_for(Duration::from_secs(30), || {
        bob.connections_to(tb, &ctx.agora, &alice.peer_id)
            .into_iter()
            .find(|a| !a.contains("/p2p-circuit"))
    });
    let punch_ms = t0.elapsed().as_millis();
    let Some(direct) = direct else {
        bail!(
            "no direct connection between bob and alice 30 s after the relayed one; bob's connections: {:?}\n--- bob ---\n{}\n--- alice ---\n{}",
            bob.connections_to(tb, &ctx.agora, &alice.peer_id),
            tb.log_tail("bob", 30),
            tb.log_tail("alice", 30)
        );
    };
    let transport = if direct.contains("/quic") {
        "quic"
    } else {
        "tcp"
    };
    if !direct.contains("10.99.0.1/") {
        bail!("bob's direct connection to alice is not through alice's NAT: {direct}");
    }

    // Carol is behind a symmetric NAT: reachable through the relay, never directly.
    let t1 = Instant::now();
    bob.cli(
        tb,
        &ctx.agora,
        &["connect", &format!("{circuit}/p2p/{}", carol.peer_id)],
    )
    .context("bob cannot reach carol through the relay")?;
    std::thread::sleep(Duration::from_secs(5));
    let to_carol = bob.connections_to(tb, &ctx.agora, &carol.peer_id);
    // A direct connection through a NAT that randomises every port would mean the emulated
    // NATs let unsolicited traffic in, and the hole punch above proved nothing.
    if to_carol.iter().any(|a| !a.contains("/p2p-circuit")) {
        bail!("bob got a direct connection to carol through her symmetric NAT: {to_carol:?}");
    }
    let sent = bob.cli(
        tb,
        &ctx.agora,
        &["send", &carol.peer_id, "hello through the relay"],
    )?;
    if sent["state"] != "delivered" {
        bail!("a message to carol through the relay was not delivered: {sent}");
    }
    let carol_ms = t1.elapsed().as_millis();

    Ok(json!({
        "hole_punch": {
            "ok": true,
            "transport": transport,
            "direct_addr": direct,
            "relayed_connect_ms": relayed_ms,
            "direct_after_ms": punch_ms,
        },
        "symmetric_nat": {
            "direct": false,
            "connections": to_carol,
            "message_via_relay": sent["state"],
            "ms": carol_ms,
        },
    }))
}
