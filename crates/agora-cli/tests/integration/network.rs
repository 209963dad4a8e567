//! Nodes finding and keeping each other.

use serde_json::json;

use crate::common::*;

#[test]
fn two_nodes_connect_and_list_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let a = Node::start(&dir.path().join("a"), &[]);
    let b = Node::start(&dir.path().join("b"), &[]);
    let out = b.cli(&["connect", &a.tcp_addr(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let outcome: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(outcome["peer_id"], a.peer_id.as_str());
    wait_connected(&a, &b);
    wait_connected(&b, &a);

    // Latency comes from ping, agent and protocols from identify.
    let peer = wait_for("ping and identify", WAIT, || {
        let out = b.cli(&["peers", "--json"]);
        let peers: serde_json::Value = serde_json::from_str(&stdout(&out)).ok()?;
        let p = peers
            .as_array()?
            .iter()
            .find(|p| p["peer_id"] == a.peer_id.as_str())?
            .clone();
        (p["latency_ms"].is_number() && p["agent_version"].is_string()).then_some(p)
    });
    assert_eq!(peer["direction"], "outbound");
    assert!(
        peer["agent_version"]
            .as_str()
            .unwrap()
            .starts_with("agora/")
    );
    assert!(
        peer["protocols"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "/ipfs/id/1.0.0")
    );
    assert!(
        peer["addrs"][0]
            .as_str()
            .unwrap()
            .starts_with("/ip4/127.0.0.1/tcp/")
    );
    let (_, a_view) = a.get(&format!("/v1/peers/{}", b.peer_id));
    assert_eq!(a_view["direction"], "inbound");

    // Human output names the peer too.
    let out = b.cli(&["peers"]);
    assert!(stdout(&out).contains(&a.peer_id), "{}", stdout(&out));

    let out = b.cli(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(status["connected_peers"], 1);
    assert!(status["routing_table_size"].as_u64().unwrap() >= 1);
    assert!(status["bytes_in"].as_u64().unwrap() > 0);
    assert!(status["bytes_out"].as_u64().unwrap() > 0);
    assert!(status["storage_bytes"].as_u64().unwrap() > 0);

    let out = a.cli(&["id", "--json"]);
    let id: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(id["peer_id"], a.peer_id.as_str());
    assert!(
        id["addrs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x.as_str().unwrap().ends_with(&a.peer_id))
    );
    assert!(
        id["addrs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x.as_str().unwrap().contains("/quic-v1/"))
    );
    assert_eq!(id["nat_status"], "unknown");

    // Disconnect, then connect again by bare peer id (the routing table knows it).
    let out = b.cli(&["disconnect", &a.peer_id]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("disconnect", WAIT, || {
        (!b.is_connected_to(&a.peer_id)).then_some(())
    });
    let out = b.cli(&["connect", &a.peer_id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(b.is_connected_to(&a.peer_id));
}

#[test]
fn ten_nodes_keep_finding_each_other_after_the_bootstrap_node_dies() {
    let dir = tempfile::tempdir().unwrap();
    let mut boot = Node::start(&dir.path().join("boot"), &[]);
    let boot_addr = boot.tcp_addr();
    let nodes: Vec<Node> = (0..9)
        .map(|i| {
            Node::start(
                &dir.path().join(format!("n{i}")),
                &["--bootstrap", &boot_addr],
            )
        })
        .collect();
    // Everyone learns about the others through the DHT bootstrap.
    for n in &nodes {
        wait_for("routing table to fill", WAIT, || {
            let (_, s) = n.get("/v1/status");
            (s["routing_table_size"].as_u64()? >= 5).then_some(())
        });
    }
    boot.kill9();

    // Every node finds every other by peer id alone, after dropping any existing connection.
    for (i, a) in nodes.iter().enumerate() {
        for b in nodes.iter().skip(i + 1) {
            let _ = a.post("/v1/disconnect", &json!({ "peer": b.peer_id }));
            let (status, body) = a.post("/v1/connect", &json!({ "target": b.peer_id }));
            assert_eq!(status, 200, "{} -> {}: {body}", a.peer_id, b.peer_id);
            assert_eq!(body["peer_id"], b.peer_id.as_str());
        }
    }

    // A newcomer that only knows one survivor finds all others by id.
    let late = Node::start(
        &dir.path().join("late"),
        &["--bootstrap", &nodes[4].tcp_addr()],
    );
    for b in &nodes {
        let (status, body) = late.post("/v1/connect", &json!({ "target": b.peer_id }));
        assert_eq!(status, 200, "late -> {}: {body}", b.peer_id);
    }
}

#[test]
fn kill9_then_restart_keeps_identity_and_reconnects_to_known_peers() {
    let dir = tempfile::tempdir().unwrap();
    let a = Node::start(&dir.path().join("a"), &[]);
    let b_dir = dir.path().join("b");
    let mut b = Node::start(&b_dir, &["--bootstrap", &a.tcp_addr()]);
    wait_connected(&a, &b);
    let b_id = b.peer_id.clone();
    // Known peers are saved shortly after a peer is identified; give that a moment.
    wait_for("b to identify a", WAIT, || {
        let (_, p) = b.get(&format!("/v1/peers/{}", a.peer_id));
        p["agent_version"].is_string().then_some(())
    });
    std::thread::sleep(std::time::Duration::from_secs(2));

    // kill -9: no clean shutdown, a stale api.json and the lock file stay behind.
    b.kill9();
    assert!(b_dir.join("api.json").exists());
    assert_no_node_at(&b_dir, "status");
    wait_for("a to see b gone", WAIT, || {
        (!a.is_connected_to(&b_id)).then_some(())
    });

    // Restart without --bootstrap: same identity, and it redials the peer it knew.
    let mut b = Node::start(&b_dir, &[]);
    assert_eq!(b.peer_id, b_id);
    wait_connected(&b, &a);

    // A clean stop removes api.json and exits 0; the next start still knows a.
    assert!(b.terminate().success());
    assert!(
        !b_dir.join("api.json").exists(),
        "api.json is removed at shutdown"
    );
    let b = Node::start(&b_dir, &[]);
    assert_eq!(b.peer_id, b_id);
    wait_connected(&b, &a);
}

#[test]
fn a_peer_behind_a_relay_is_reached_through_the_circuit() {
    let dir = tempfile::tempdir().unwrap();
    // The relay announces its address (on a public network AutoNAT would confirm it).
    let relay_addr = format!("/ip4/127.0.0.1/tcp/{}", free_port());
    let relay = Node::start_listening(
        &dir.path().join("relay"),
        std::slice::from_ref(&relay_addr),
        &["--external-addr", &relay_addr],
    );
    let circuit = format!("{}/p2p-circuit", relay.tcp_addr());
    // This peer has no listen address of its own: it is reachable only through the relay.
    // It also bootstraps from the relay, which once made the relay client's own dial (and so
    // the reservation) fail.
    let hidden = Node::start_listening(
        &dir.path().join("hidden"),
        std::slice::from_ref(&circuit),
        &["--bootstrap", &relay.tcp_addr()],
    );
    assert!(
        hidden.addrs.iter().all(|a| a.contains("/p2p-circuit/")),
        "{:?}",
        hidden.addrs
    );
    let dialer = Node::start(&dir.path().join("dialer"), &[]);
    let target = format!("{circuit}/p2p/{}", hidden.peer_id);
    let (status, body) = dialer.post("/v1/connect", &json!({ "target": target }));
    assert_eq!(status, 200, "{body}");
    let (_, peer) = dialer.get(&format!("/v1/peers/{}", hidden.peer_id));
    assert!(
        peer["addrs"][0].as_str().unwrap().contains("/p2p-circuit"),
        "{peer}"
    );
    // A direct message rides the relayed connection.
    let (status, sent) = dialer.post(
        "/v1/chat/send",
        &json!({ "to": hidden.peer_id, "text": "through the relay" }),
    );
    assert_eq!(status, 200, "{sent}");
    assert_eq!(sent["state"], "delivered", "{sent}");
    let (_, inbox) = hidden.get("/v1/chat/messages?direction=in");
    assert_eq!(inbox["messages"][0]["text"], "through the relay", "{inbox}");
    assert_eq!(inbox["messages"][0]["peer_id"], dialer.peer_id.as_str());
}
