//! Real swarms over real loopback sockets, in one process.

use std::time::Duration;

use agora_net::{Config, Handle, KadMode, MessageAcceptance, Multiaddr, PeerId, StreamProtocol};
use libp2p::identity::Keypair;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(20);

async fn node(bootstrap: Vec<Multiaddr>) -> (Handle, Multiaddr) {
    let config = Config::new(vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()])
        .with_bootstrap(bootstrap)
        .with_kad_mode(KadMode::Auto);
    let (handle, event_loop) = agora_net::new(
        Keypair::generate_ed25519(),
        config,
        &mut Registry::default(),
    )
    .unwrap();
    tokio::spawn(event_loop.run());
    let addr = wait_for(|| async {
        handle
            .local_info()
            .await
            .unwrap()
            .addrs
            .first()
            .map(|a| a.parse::<Multiaddr>().unwrap())
    })
    .await;
    (handle, addr)
}

async fn wait_for<T, F: std::future::Future<Output = Option<T>>>(mut f: impl FnMut() -> F) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn connected(a: &Handle, b: PeerId) -> bool {
    let b = b.to_string();
    a.peers().await.unwrap().iter().any(|p| p.peer_id == b)
}

#[tokio::test]
async fn dial_identify_and_ping() {
    let (a, a_addr) = node(vec![]).await;
    let (b, _) = node(vec![]).await;
    assert_eq!(b.dial(a_addr).await.unwrap(), a.local_peer_id());
    let info = wait_for(|| async {
        b.peers()
            .await
            .unwrap()
            .into_iter()
            .find(|p| p.latency_ms.is_some() && p.agent_version.is_some())
    })
    .await;
    assert_eq!(info.peer_id, a.local_peer_id().to_string());
    assert_eq!(
        info.agent_version.as_deref(),
        Some(agora_net::AGENT_VERSION)
    );
    assert!(
        info.protocols.iter().any(|p| p == "/agora/kad/1.0.0"),
        "{:?}",
        info.protocols
    );
    assert!(
        info.protocols.iter().any(|p| p == "/meshsub/1.1.0"),
        "{:?}",
        info.protocols
    );
    let stats = b.stats().await.unwrap();
    assert_eq!(stats.connected_peers, 1);
    assert!(stats.bytes_in > 0 && stats.bytes_out > 0, "{stats:?}");
}

#[tokio::test]
async fn peer_id_is_found_through_the_dht() {
    let (hub, hub_addr) = node(vec![]).await;
    let hub_addr = hub_addr.with_p2p(hub.local_peer_id()).unwrap();
    let (a, _) = node(vec![hub_addr.clone()]).await;
    let (c, _) = node(vec![hub_addr]).await;
    // Wait until the hub has both in its routing table.
    wait_for(|| async { (hub.stats().await.unwrap().routing_table_size >= 2).then_some(()) }).await;
    assert!(!connected(&a, c.local_peer_id()).await);
    let outcome = a.connect(c.local_peer_id()).await.unwrap();
    assert!(!outcome.already_connected);
    assert!(
        ["dialed", "dht"].contains(&outcome.via.as_str()),
        "{outcome:?}"
    );
    assert!(connected(&a, c.local_peer_id()).await);
    // Once connected, asking again is immediate.
    assert!(
        a.connect(c.local_peer_id())
            .await
            .unwrap()
            .already_connected
    );
}

#[tokio::test]
async fn unknown_peer_id_is_not_found() {
    let (hub, hub_addr) = node(vec![]).await;
    let (a, _) = node(vec![hub_addr.with_p2p(hub.local_peer_id()).unwrap()]).await;
    wait_for(|| async { (a.stats().await.unwrap().routing_table_size >= 1).then_some(()) }).await;
    let stranger = PeerId::random();
    let err = tokio::time::timeout(Duration::from_secs(40), a.connect(stranger))
        .await
        .expect("the lookup ends by itself")
        .unwrap_err();
    assert_eq!(err, agora_net::Error::PeerNotFound(stranger));
}

#[tokio::test]
async fn gossip_is_delivered_after_validation() {
    let (a, a_addr) = node(vec![]).await;
    let (b, _) = node(vec![]).await;
    b.dial(a_addr).await.unwrap();
    let (a_tx, _a_rx) = mpsc::channel(16);
    let (b_tx, mut b_rx) = mpsc::channel(16);
    a.subscribe("room", a_tx).await.unwrap();
    b.subscribe("room", b_tx).await.unwrap();
    // The mesh forms at the next heartbeat; until then publishing has no peers.
    wait_for(|| async { a.publish("room", b"hello".to_vec()).await.ok() }).await;
    let msg = tokio::time::timeout(WAIT, b_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(msg.data, b"hello");
    assert_eq!(msg.author, Some(a.local_peer_id()));
    assert_eq!(msg.source, a.local_peer_id());
    b.validate(msg.id, msg.source, MessageAcceptance::Accept)
        .await
        .unwrap();
    assert_eq!(b.stats().await.unwrap().gossip_topics, 1);
    assert!(b.unsubscribe("room").await.unwrap());
}

#[tokio::test]
async fn request_response_with_limits() {
    let protocol = StreamProtocol::new("/agora/test-echo/1.0.0");
    let (a, a_addr) = node(vec![]).await;
    let (b, _) = node(vec![]).await;
    let (tx, mut rx) = mpsc::channel::<agora_net::InboundRequest>(8);
    a.serve(protocol.clone(), tx).unwrap();
    assert!(
        a.serve(protocol.clone(), mpsc::channel(1).0).is_err(),
        "served twice"
    );
    tokio::spawn(async move {
        while let Some(req) = rx.recv().await {
            let _ = req.reply.send(req.data.to_ascii_uppercase());
        }
    });
    b.dial(a_addr).await.unwrap();
    let resp = b
        .request(a.local_peer_id(), protocol.clone(), b"ping".to_vec(), WAIT)
        .await
        .unwrap();
    assert_eq!(resp, b"PING");

    // A request over the frame limit is refused before it is sent.
    let big = vec![0u8; agora_net::MAX_FRAME_LEN + 1];
    assert!(
        b.request(a.local_peer_id(), protocol.clone(), big, WAIT)
            .await
            .is_err()
    );

    // A raw stream announcing a huge frame is dropped by the server, which keeps serving.
    let mut control = b.stream_control();
    let mut stream = control
        .open_stream(a.local_peer_id(), protocol.clone())
        .await
        .unwrap();
    use futures::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let _ = stream.close().await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut buf))
        .await
        .unwrap();
    assert!(buf.is_empty(), "no response to a hostile frame");
    let resp = b
        .request(
            a.local_peer_id(),
            protocol.clone(),
            b"still there".to_vec(),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(resp, b"STILL THERE");

    // A protocol nobody serves fails cleanly.
    let other = StreamProtocol::new("/agora/nothing/1.0.0");
    assert!(
        b.request(a.local_peer_id(), other, b"x".to_vec(), WAIT)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn shutdown_closes_connections_and_reports_known_peers() {
    let (a, a_addr) = node(vec![]).await;
    let (b, _) = node(vec![]).await;
    b.dial(a_addr.clone()).await.unwrap();
    wait_for(|| async { connected(&a, b.local_peer_id()).await.then_some(()) }).await;
    let known = b.shutdown().await.unwrap();
    assert_eq!(known.len(), 1);
    assert_eq!(known[0].0, a.local_peer_id());
    let a_addr = a_addr.to_string();
    assert!(
        known[0]
            .1
            .iter()
            .any(|k| a_addr.starts_with(&k.to_string())),
        "{known:?}"
    );
    wait_for(|| async { (!connected(&a, b.local_peer_id()).await).then_some(()) }).await;
    assert_eq!(b.local_info().await.unwrap_err(), agora_net::Error::Stopped);
}

#[tokio::test]
async fn providers_are_announced_and_found() {
    let (hub, hub_addr) = node(vec![]).await;
    let hub_addr = hub_addr.with_p2p(hub.local_peer_id()).unwrap();
    let (a, _) = node(vec![hub_addr.clone()]).await;
    let (c, _) = node(vec![hub_addr]).await;
    wait_for(|| async { (hub.stats().await.unwrap().routing_table_size >= 2).then_some(()) }).await;
    let key = b"some blob hash".to_vec();
    a.provide(key.clone()).await.unwrap();
    let providers = wait_for(|| async {
        let found = c.find_providers(key.clone(), 5).await.unwrap();
        found.contains(&a.local_peer_id()).then_some(found)
    })
    .await;
    assert_eq!(providers, vec![a.local_peer_id()]);
    // The provider was dialed while its address was at hand.
    wait_for(|| async { connected(&c, a.local_peer_id()).await.then_some(()) }).await;
    assert!(
        c.find_providers(b"nobody has this".to_vec(), 5)
            .await
            .unwrap()
            .is_empty()
    );

    let closest = c.closest_peers(b"any key".to_vec()).await.unwrap();
    assert!(closest.contains(&hub.local_peer_id()), "{closest:?}");
}

/// Hardening item 6: the 64 request slots of a protocol were shared by all peers, so one
/// peer holding requests open (a slow reader, or a handler it keeps busy) took every slot and
/// honest peers' requests were dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_cannot_hold_every_request_slot() {
    use futures::AsyncReadExt;

    let protocol = StreamProtocol::new("/agora/test-slots/1.0.0");
    let (server, addr) = node(vec![]).await;
    let (hostile, _) = node(vec![]).await;
    let (honest, _) = node(vec![]).await;
    // The handler answers at once, but only the honest peer's stream reads its answer: the
    // hostile peer opens streams and never sends its request, holding each slot.
    let (tx, mut rx) = mpsc::channel::<agora_net::InboundRequest>(64);
    server.serve(protocol.clone(), tx).unwrap();
    tokio::spawn(async move {
        while let Some(req) = rx.recv().await {
            let _ = req.reply.send(req.data);
        }
    });
    hostile.dial(addr.clone()).await.unwrap();
    honest.dial(addr).await.unwrap();
    let mut streams = Vec::new();
    let mut control = hostile.stream_control();
    for _ in 0..agora_net::MAX_INBOUND_PER_PROTOCOL {
        let stream = control
            .open_stream(server.local_peer_id(), protocol.clone())
            .await
            .unwrap();
        streams.push(stream);
    }
    // Streams past the per-peer budget are answered at once with a refusal frame; the rest
    // stay open, waiting for a request that never comes.
    let (mut held, mut refused) = (0, 0);
    for stream in streams.iter_mut() {
        let mut len = [0u8; 4];
        match tokio::time::timeout(Duration::from_millis(300), stream.read_exact(&mut len)).await {
            Err(_) => held += 1,
            Ok(Ok(())) => {
                assert_ne!(u32::from_be_bytes(len) & (1 << 31), 0, "a refusal frame");
                refused += 1;
            }
            Ok(Err(_)) => {} // dropped before it was accepted
        }
    }
    assert!(
        held <= agora_net::MAX_INBOUND_PER_PEER,
        "one peer holds {held} slots"
    );
    assert!(refused > 0, "no stream was refused");
    assert_eq!(
        server.admission().count(agora_net::budget::PER_PEER),
        refused as u64
    );
    // The honest peer is served while the hostile one holds its share.
    let answer = honest
        .request(
            server.local_peer_id(),
            protocol.clone(),
            b"hello".to_vec(),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(answer, b"hello");
    // And the hostile peer, asking properly past its budget, gets the reason.
    match hostile
        .request(server.local_peer_id(), protocol, b"more".to_vec(), WAIT)
        .await
    {
        Err(agora_net::Error::Refused(reason)) => assert!(reason.contains("busy"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    drop(streams);
}
