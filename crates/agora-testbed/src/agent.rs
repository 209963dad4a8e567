//! `agora-testbed agent-hostile`: the attacker of the `hostile` scenario, run inside its own
//! namespace. Everything it does is bounded in count and time, and it prints a JSON summary.

use std::{
    io::Write,
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use agora_chat::{
    crypto::Identity,
    service::{CHAT_PROTOCOL, MAILBOX_PROTOCOL},
    wire::{
        DirectMessage, Envelope, Frame, Letter, MailboxRequest, MailboxResponse, MessageId, RoomId,
        RoomMessage, Timestamp,
    },
};
use agora_net::{KadMode, Multiaddr, PeerId};
use anyhow::{Context, Result};
use futures::StreamExt;
use serde_json::json;

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn now() -> Timestamp {
    Timestamp::from_millis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    )
}

fn socket(addr: &Multiaddr, udp: bool) -> Option<SocketAddr> {
    let mut ip = None;
    let mut port = None;
    for p in addr.iter() {
        match p {
            libp2p::multiaddr::Protocol::Ip4(a) => ip = Some(a),
            libp2p::multiaddr::Protocol::Tcp(p) if !udp => port = Some(p),
            libp2p::multiaddr::Protocol::Udp(p) if udp => port = Some(p),
            _ => {}
        }
    }
    Some(SocketAddr::from((ip?, port?)))
}

/// Raw abuse of the listen ports: garbage, an oversized multistream frame, a connection
/// storm, UDP garbage at QUIC.
fn raw_abuse(tcp: SocketAddr, udp: SocketAddr) -> serde_json::Value {
    let mut garbage = 0;
    for i in 0..20 {
        if let Ok(mut s) = TcpStream::connect_timeout(&tcp, Duration::from_secs(2)) {
            let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
            let _ = s.write_all(&noise(64 * 1024, i + 1));
            garbage += 1;
        }
    }
    // A multistream header announcing a protocol name of ~2 GiB.
    if let Ok(mut s) = TcpStream::connect_timeout(&tcp, Duration::from_secs(2)) {
        let _ = s.write_all(b"\x13/multistream/1.0.0\n\xff\xff\xff\xff\x07");
    }
    let mut storm = Vec::new();
    for _ in 0..200 {
        if let Ok(s) = TcpStream::connect_timeout(&tcp, Duration::from_secs(1)) {
            storm.push(s);
        }
    }
    let held = storm.len();
    std::thread::sleep(Duration::from_secs(3));
    drop(storm);
    let mut datagrams = 0;
    if let Ok(u) = UdpSocket::bind("0.0.0.0:0") {
        for i in 0..200 {
            if u.send_to(&noise(1200, 1000 + i), udp).is_ok() {
                datagrams += 1;
            }
        }
    }
    json!({"garbage_connections": garbage, "storm_connections": held, "udp_garbage": datagrams})
}

pub fn hostile(targets: &[Multiaddr], room: &str) -> Result<()> {
    let peers: Vec<PeerId> = targets
        .iter()
        .map(|a| {
            a.iter()
                .find_map(|p| match p {
                    libp2p::multiaddr::Protocol::P2p(id) => Some(id),
                    _ => None,
                })
                .context("targets must end in /p2p/<peer id>")
        })
        .collect::<Result<_>>()?;
    let tcp = socket(&targets[0], false).context("first target has no TCP address")?;
    let udp = SocketAddr::new(tcp.ip(), tcp.port());
    let raw = raw_abuse(tcp, udp);

    let rt = tokio::runtime::Runtime::new()?;
    let protocol = rt.block_on(async {
        let keypair = libp2p::identity::Keypair::generate_ed25519();
        let me = Identity::from_keypair(&keypair)?;
        let config = agora_net::Config::new(vec!["/ip4/0.0.0.0/tcp/0".parse()?])
            .with_bootstrap(targets.to_vec())
            .with_kad_mode(KadMode::Client);
        let (net, event_loop) = agora_net::new(
            keypair,
            config,
            &mut prometheus_client::registry::Registry::default(),
        )?;
        tokio::spawn(event_loop.run());
        for _ in 0..100 {
            if net.peers().await.map(|p| p.len()).unwrap_or(0) >= peers.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let t = Duration::from_secs(5);

        // A flood of garbage requests, 32 at a time, to every target.
        let flood = futures::stream::iter(0..400u64)
            .map(|i| {
                let net = net.clone();
                let peer = peers[(i as usize) % peers.len()];
                async move {
                    net.request(peer, CHAT_PROTOCOL, noise(512, i), t)
                        .await
                        .is_ok()
                }
            })
            .buffer_unordered(32)
            .filter(|ok| futures::future::ready(*ok))
            .count()
            .await;

        // Forged direct messages: signed by us, claiming to be from another target.
        let mut forged_refused = 0;
        for i in 0..50u8 {
            let mut m = DirectMessage::new(
                &me,
                MessageId([i; 16]),
                peers[0],
                u64::from(i),
                now(),
                format!("forged {i}"),
            )?;
            m.from = peers[1 % peers.len()];
            // Refused by the author check (a refusal on the wire) or as a bad signature.
            match net.request(peers[0], CHAT_PROTOCOL, m.encode()?, t).await {
                Err(agora_net::Error::Refused(_)) => forged_refused += 1,
                Ok(reply)
                    if matches!(
                        agora_chat::wire::DirectReply::decode(&reply),
                        Ok(agora_chat::wire::DirectReply::Rejected(_))
                    ) =>
                {
                    forged_refused += 1
                }
                _ => {}
            }
        }

        // An oversized request frame.
        let oversized = net
            .request(
                peers[0],
                MAILBOX_PROTOCOL,
                vec![0u8; agora_net::MAX_FRAME_LEN],
                t,
            )
            .await
            .is_ok();

        // Filling one recipient's mailbox at its holder, past the per-sender quota.
        let victim = peers[1 % peers.len()];
        let (mut stored, mut refused) = (0, 0);
        for seq in 0..520u64 {
            let m = DirectMessage::new(
                &me,
                MessageId({
                    let mut id = [0u8; 16];
                    id[..8].copy_from_slice(&seq.to_be_bytes());
                    id[8] = 0xee;
                    id
                }),
                victim,
                seq,
                now(),
                "spam".into(),
            )?;
            let sealed = Envelope::seal(&me, &Letter::Message(m), now(), &mut rand::rng());
            let req = MailboxRequest::Store(sealed?).encode()?;
            if let Ok(r) = net.request(peers[0], MAILBOX_PROTOCOL, req, t).await {
                match MailboxResponse::decode(&r) {
                    Ok(MailboxResponse::Stored) => stored += 1,
                    Ok(MailboxResponse::Refused(_)) => refused += 1,
                    _ => {}
                }
            }
        }

        // Forged room posts on the room's gossip topic.
        let room = RoomId::new(room)?;
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        net.subscribe(&room.topic(), tx).await?;
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut published = 0;
        for i in 0..20u64 {
            let mut post = RoomMessage::new(&me, room.clone(), i, now(), format!("FORGED {i}"))?;
            post.from = peers[0];
            if net.publish(&room.topic(), post.encode()?).await.is_ok() {
                published += 1;
            }
            let _ = net.publish(&room.topic(), noise(300, i)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _ = net.shutdown().await;
        anyhow::Ok(json!({
            "garbage_requests_answered": flood,
            "forged_dms_refused": forged_refused,
            "oversized_frame_answered": oversized,
            "mailbox_stored": stored,
            "mailbox_refused": refused,
            "forged_posts_published": published,
        }))
    })?;
    println!("{}", json!({"raw": raw, "protocol": protocol}));
    Ok(())
}
