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

/// The bytes of a request as `/agora/rpc/1.0.0` carries it: the protocol name frame, then
/// the data frame's length (the data itself is left to the caller when `data` is empty).
fn raw_request(protocol: &StreamProtocol, data: &[u8]) -> Vec<u8> {
    let name = protocol.as_ref().as_bytes();
    let mut bytes = (name.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(name);
    if !data.is_empty() {
        bytes.extend_from_slice(&(data.len() as u32).to_be_bytes());
        bytes.extend_from_slice(data);
    }
    bytes
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

/// The security protocol of each connection `a` has to `b`, once it has one.
async fn security_between(a: &Handle, b: PeerId) -> Vec<String> {
    let b = b.to_string();
    wait_for(|| async {
        a.peers()
            .await
            .unwrap()
            .into_iter()
            .find(|p| p.peer_id == b)
            .map(|p| p.security)
    })
    .await
}

#[tokio::test]
async fn agora_nodes_negotiate_tls_and_noise_only_peers_get_noise() {
    let (a, a_addr) = agora_net::start_loopback(Keypair::generate_ed25519(), vec![])
        .await
        .unwrap();
    let (b, _) = agora_net::start_loopback(Keypair::generate_ed25519(), vec![])
        .await
        .unwrap();
    let (c, _) = agora_net::start_loopback_secured(
        Keypair::generate_ed25519(),
        vec![],
        agora_net::Security::NoiseOnly,
    )
    .await
    .unwrap();
    b.dial(a_addr.clone()).await.unwrap();
    c.dial(a_addr).await.unwrap();
    // Both ends agree on what was negotiated: TLS between two default nodes, Noise with the
    // node that offers Noise only.
    assert_eq!(security_between(&b, a.local_peer_id()).await, ["tls"]);
    assert_eq!(security_between(&a, b.local_peer_id()).await, ["tls"]);
    assert_eq!(security_between(&c, a.local_peer_id()).await, ["noise"]);
    assert_eq!(security_between(&a, c.local_peer_id()).await, ["noise"]);

    // Bytes cross both kinds of connection intact.
    let echo = StreamProtocol::new("/agora-test/echo-secured/1");
    let mut incoming = a.stream_control().accept(echo.clone()).unwrap();
    tokio::spawn(async move {
        use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
        while let Some((_, mut s)) = incoming.next().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).await.unwrap();
                s.write_all(&buf).await.unwrap();
                s.close().await.unwrap();
            });
        }
    });
    for dialer in [&b, &c] {
        use futures::{AsyncReadExt, AsyncWriteExt};
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut s = dialer
            .stream_control()
            .open_stream(a.local_peer_id(), echo.clone())
            .await
            .unwrap();
        s.write_all(&data).await.unwrap();
        s.close().await.unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.unwrap();
        assert!(back == data, "echo differs");
    }
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
    use futures::{AsyncReadExt, AsyncWriteExt};
    let mut control = b.stream_control();
    let mut stream = control
        .open_stream(a.local_peer_id(), agora_net::RPC_PROTOCOL)
        .await
        .unwrap();
    stream
        .write_all(&raw_request(&protocol, &[])[..])
        .await
        .unwrap();
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
    use futures::{AsyncReadExt, AsyncWriteExt};

    let protocol = StreamProtocol::new("/agora/test-slots/1.0.0");
    let (server, addr) = node(vec![]).await;
    let (hostile, _) = node(vec![]).await;
    let (honest, _) = node(vec![]).await;
    // The handler answers the honest peer at once but keeps every request of the hostile peer
    // waiting, so each one it sends holds a slot.
    let (tx, mut rx) = mpsc::channel::<agora_net::InboundRequest>(64);
    server.serve(protocol.clone(), tx).unwrap();
    let hostile_id = hostile.local_peer_id();
    tokio::spawn(async move {
        let mut parked = Vec::new();
        while let Some(req) = rx.recv().await {
            if req.peer == hostile_id {
                parked.push(req);
            } else {
                let _ = req.reply.send(req.data);
            }
        }
    });
    hostile.dial(addr.clone()).await.unwrap();
    honest.dial(addr).await.unwrap();
    // The hostile peer bypasses its own request layer (which would pace it to its share) and
    // sends every request it can at once, on raw streams.
    let mut streams = Vec::new();
    let mut control = hostile.stream_control();
    for i in 0..agora_net::MAX_INBOUND_PER_PROTOCOL {
        let mut stream = control
            .open_stream(server.local_peer_id(), agora_net::RPC_PROTOCOL)
            .await
            .unwrap();
        stream
            .write_all(&raw_request(&protocol, format!("request {i}").as_bytes()))
            .await
            .unwrap();
        stream.close().await.unwrap();
        streams.push(stream);
    }
    // Requests past the per-peer budget are answered at once with a refusal frame; the rest
    // wait for the handler, which never answers them.
    let (mut held, mut refused) = (0, 0);
    for stream in streams.iter_mut() {
        let mut len = [0u8; 4];
        match tokio::time::timeout(Duration::from_millis(300), stream.read_exact(&mut len)).await {
            Err(_) => held += 1,
            Ok(Ok(())) => {
                assert_ne!(u32::from_be_bytes(len) & (1 << 31), 0, "a refusal frame");
                refused += 1;
            }
            Ok(Err(e)) => panic!("a request was dropped: {e}"),
        }
    }
    assert_eq!(
        held,
        agora_net::MAX_INBOUND_PER_PEER,
        "one peer holds {held} slots"
    );
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

/// Answers every request of `protocol` on `server` with its own bytes, after a millisecond of
/// "work" each, one at a time.
fn echo(server: &Handle, protocol: &StreamProtocol) {
    let (tx, mut rx) = mpsc::channel::<agora_net::InboundRequest>(64);
    server.serve(protocol.clone(), tx).unwrap();
    tokio::spawn(async move {
        while let Some(req) = rx.recv().await {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let _ = req.reply.send(req.data);
        }
    });
}

/// Sends `n` requests at once from `client` and sorts the outcomes: answered (with the right
/// echo), refused with a reason, failed otherwise (dropped, timed out, reset).
async fn burst(
    client: &Handle,
    server: PeerId,
    protocol: &StreamProtocol,
    n: u32,
) -> (usize, usize, Vec<agora_net::Error>) {
    let results = futures::future::join_all((0..n).map(|i| async move {
        let data = i.to_be_bytes().to_vec();
        let result = client
            .request(server, protocol.clone(), data.clone(), WAIT)
            .await;
        (data, result)
    }))
    .await;
    let (mut answered, mut refused, mut failed) = (0, 0, Vec::new());
    for (data, result) in results {
        match result {
            Ok(response) => {
                assert_eq!(response, data, "a response to another request");
                answered += 1;
            }
            Err(agora_net::Error::Refused(reason)) if !reason.is_empty() => refused += 1,
            Err(e) => failed.push(e),
        }
    }
    (answered, refused, failed)
}

/// Hardening issue 20: libp2p-stream keeps one inbound stream waiting per protocol and drops
/// the rest of a burst, which the requester saw as a stream closed before any response (a
/// retry loop papered over it). Every request of a burst must now be answered or refused with
/// a reason; none may vanish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_requests_is_answered_or_refused_never_dropped() {
    let protocol = StreamProtocol::new("/agora/test-burst/1.0.0");
    let (server, addr) = node(vec![]).await;
    echo(&server, &protocol);
    let (client, _) = node(vec![]).await;
    client.dial(addr.clone()).await.unwrap();
    let started = std::time::Instant::now();
    let (answered, refused, failed) = burst(&client, server.local_peer_id(), &protocol, 200).await;
    println!(
        "burst of 200 from one peer: {answered} answered, {refused} refused, {} failed in {:?}",
        failed.len(),
        started.elapsed()
    );
    assert!(failed.is_empty(), "requests failed silently: {failed:?}");
    assert_eq!(answered + refused, 200);

    // The same burst on raw streams, past the requester's pacing (as a peer that is not Agora
    // may send it): the server answers or refuses every one.
    use futures::{AsyncReadExt, AsyncWriteExt};
    let control = client.stream_control();
    let raw = futures::future::join_all((0..200u32).map(|i| {
        let mut control = control.clone();
        let server = server.local_peer_id();
        let protocol = protocol.clone();
        async move {
            let mut stream = control
                .open_stream(server, agora_net::RPC_PROTOCOL)
                .await
                .map_err(|e| e.to_string())?;
            stream
                .write_all(&raw_request(&protocol, &i.to_be_bytes()))
                .await
                .map_err(|e| e.to_string())?;
            stream.close().await.map_err(|e| e.to_string())?;
            let mut response = Vec::new();
            tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
                .await
                .map_err(|_| "no response in time".to_owned())?
                .map_err(|e| e.to_string())?;
            let len =
                u32::from_be_bytes(response.get(..4).ok_or("no response")?.try_into().unwrap());
            Ok::<bool, String>(len & (1 << 31) == 0)
        }
    }))
    .await;
    let raw_answered = raw.iter().filter(|r| matches!(r, Ok(true))).count();
    let raw_refused = raw.iter().filter(|r| matches!(r, Ok(false))).count();
    let raw_failed: Vec<_> = raw.iter().filter_map(|r| r.as_ref().err()).collect();
    println!(
        "raw burst of 200 from one peer: {raw_answered} answered, {raw_refused} refused, {} failed",
        raw_failed.len()
    );
    assert!(
        raw_failed.is_empty(),
        "raw requests dropped: {raw_failed:?}"
    );

    // Three peers, fifty requests each at once: each stays within its own budget, so all are
    // answered.
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (c, _) = node(vec![]).await;
        c.dial(addr.clone()).await.unwrap();
        clients.push(c);
    }
    let started = std::time::Instant::now();
    let outcomes = futures::future::join_all(
        clients
            .iter()
            .map(|c| burst(c, server.local_peer_id(), &protocol, 50)),
    )
    .await;
    println!(
        "3 peers x 50: {:?} in {:?}",
        outcomes
            .iter()
            .map(|(a, r, f)| (*a, *r, f.len()))
            .collect::<Vec<_>>(),
        started.elapsed()
    );
    for (answered, refused, failed) in outcomes {
        assert!(failed.is_empty(), "requests failed: {failed:?}");
        assert_eq!((answered, refused), (50, 0));
    }
}
