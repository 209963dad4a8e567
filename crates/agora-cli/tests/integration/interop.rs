//! Interoperability with an independent libp2p implementation: js-libp2p (interop/js) dials an
//! agora node over TCP, identifies it, pings it and uses its Kademlia DHT. js-libp2p speaks
//! Noise only, so these connections also show agora falling back from TLS to Noise.

use std::{path::PathBuf, process::Command, sync::Mutex};

use serde_json::Value;

use crate::common::*;

fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../interop/js")
}

/// Installs the pinned js-libp2p packages once (`npm ci`), as the test's own setup.
fn ensure_js_deps() {
    static DONE: Mutex<bool> = Mutex::new(false);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if *done || js_dir().join("node_modules/libp2p").exists() {
        *done = true;
        return;
    }
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(js_dir())
        .output()
        .expect("npm is needed for the interop test (Node.js >= 20)");
    assert!(
        out.status.success(),
        "npm ci in interop/js failed:\n{}",
        stderr(&out)
    );
    *done = true;
}

fn js_peer(args: &[&str]) -> Value {
    ensure_js_deps();
    let out = Command::new("node")
        .arg("peer.mjs")
        .args(args)
        .current_dir(js_dir())
        .env("INTEROP_TIMEOUT_MS", "25000")
        .output()
        .expect("node is needed for the interop test");
    let text = stdout(&out);
    let last = text.lines().last().unwrap_or_default();
    let v: Value = serde_json::from_str(last)
        .unwrap_or_else(|_| panic!("js peer printed no JSON:\n{text}\n{}", stderr(&out)));
    assert!(
        out.status.success() && v["ok"] == true,
        "js peer failed: {v}\n{}",
        stderr(&out)
    );
    v
}

#[test]
fn js_libp2p_dials_identifies_and_pings_an_agora_node() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let v = js_peer(&["identify-ping", &node.tcp_addr()]);
    assert_eq!(v["remote_peer_id"], node.peer_id.as_str());
    assert!(
        v["agent_version"].as_str().unwrap().starts_with("agora/"),
        "{v}"
    );
    let protocols: Vec<&str> = v["protocols"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    for p in [
        "/ipfs/id/1.0.0",
        "/ipfs/ping/1.0.0",
        "/agora/kad/1.0.0",
        "/meshsub/1.1.0",
    ] {
        assert!(protocols.contains(&p), "{p} missing from {protocols:?}");
    }
    assert_eq!(v["rtt_ms"].as_array().unwrap().len(), 3);
}

#[test]
fn js_libp2p_finds_a_peer_through_the_agora_dht() {
    let dir = tempfile::tempdir().unwrap();
    let a = Node::start(&dir.path().join("a"), &[]);
    let b = Node::start(&dir.path().join("b"), &["--bootstrap", &a.tcp_addr()]);
    wait_for("a's routing table to hold b", WAIT, || {
        let (_, s) = a.get("/v1/status");
        (s["routing_table_size"].as_u64()? >= 1).then_some(())
    });
    let v = js_peer(&["kad-find", &a.tcp_addr(), &b.peer_id]);
    assert_eq!(v["target"], b.peer_id.as_str());
    let b_port = b.tcp_addr().split('/').nth(4).unwrap().to_owned();
    assert!(
        v["addrs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x.as_str().unwrap().contains(&format!("/tcp/{b_port}"))),
        "{v}"
    );
}

/// A js-libp2p peer fetches a whole 4 MiB blob from an agora node over `/agora/blobs/1.0.0`.
/// Agora's yamux sends data frames of up to 63 KiB (libp2p-yamux: 16 KiB); js-yamux must take
/// them (it bounds a frame by the stream's receive window only) and every byte must arrive:
/// the size, the exact length of the encoding (data + one 64-byte parent per extra 16 KiB
/// group) and the blob's last bytes at its end.
#[test]
fn js_libp2p_fetches_a_blob_sent_in_large_yamux_frames() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("a"), &[]);
    let size: usize = 4 * 1024 * 1024;
    let data: Vec<u8> = (0..size as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 15) as u8)
        .collect();
    let file = dir.path().join("blob.bin");
    std::fs::write(&file, &data).unwrap();
    let out = node.cli(&["share", file.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let shared: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let hash = shared["hash"].as_str().unwrap();
    let v = js_peer(&["blob-get", &node.tcp_addr(), hash]);
    assert_eq!(v["response"]["size"], size as u64, "{v}");
    let groups = size.div_ceil(16 * 1024);
    assert_eq!(v["encoded_bytes"], (size + (groups - 1) * 64) as u64, "{v}");
    let tail: String = data[size - 64..]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(v["tail_hex"], tail.as_str());
}

/// An in-process agora-net node (gossip has no CLI yet; applications will put it to use).
async fn gossip_node() -> (agora_net::Handle, String) {
    let config = agora_net::Config::new(vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()]);
    let (handle, event_loop) = agora_net::new(
        libp2p::identity::Keypair::generate_ed25519(),
        config,
        &mut libp2p::metrics::Registry::default(),
    )
    .unwrap();
    tokio::spawn(event_loop.run());
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(addr) = handle.local_info().await.unwrap().addrs.first() {
            return (handle.clone(), addr.clone());
        }
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossipsub_messages_flow_between_js_libp2p_and_agora() {
    use agora_net::MessageAcceptance;
    use tokio::{io::AsyncBufReadExt, sync::mpsc};

    tokio::task::spawn_blocking(ensure_js_deps).await.unwrap();
    let (node, addr) = gossip_node().await;
    let (tx, mut rx) = mpsc::channel(16);
    node.subscribe("agora-interop", tx).await.unwrap();

    // js → agora: the message arrives signed by the js peer and is accepted.
    let sent = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || js_peer(&["gossip-send", &addr, "agora-interop", "hello from js"])
    });
    let msg = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(msg.data, b"hello from js");
    assert!(msg.author.is_some());
    node.validate(msg.id, msg.source, MessageAcceptance::Accept)
        .await
        .unwrap();
    sent.await.unwrap();

    // agora → js.
    let mut js = tokio::process::Command::new("node")
        .args(["peer.mjs", "gossip-recv", &addr, "agora-interop"])
        .current_dir(js_dir())
        .env("INTEROP_TIMEOUT_MS", "25000")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(js.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ready.as_deref(), Some("{\"ready\":true}"));
    let deadline = std::time::Instant::now() + WAIT;
    while node
        .publish("agora-interop", b"hello from agora".to_vec())
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no gossip peer to publish to"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // js-libp2p offers Noise only; agora offers TLS first and falls back to Noise for it.
    let peers = node.peers().await.unwrap();
    assert!(
        peers.iter().any(|p| p.security == ["noise"]),
        "the js peer's connection is not Noise: {peers:?}"
    );
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["data"], "hello from agora");
    assert_eq!(v["from"], node.local_peer_id().to_string());
    assert!(js.wait().await.unwrap().success());
}
