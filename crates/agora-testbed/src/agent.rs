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
use agora_files::search;
use agora_net::{KadMode, Multiaddr, PeerId};
use anyhow::{Context, Result};
use futures::StreamExt;
use serde_json::json;

pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
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

/// What the attacker aims at besides the room: a real blob (for slow readers) and a keyword of
/// a real file's name (for the index flood), and how long it holds its slow streams after it
/// printed its summary (the scenario checks honest traffic meanwhile).
pub struct Aims {
    pub blob: Option<String>,
    pub keyword: Option<String>,
    pub hold: Duration,
    /// The ledger attacks, when the attacker's key is a committee member.
    pub ledger: Option<LedgerPlan>,
}

/// The ledger part: the attacker's identity (its committee key), how many unsolicited
/// proposals it floods over how long, and how long at most its lying sync server waits for
/// the scenario to close the agent's stdin once everything else is done.
pub struct LedgerPlan {
    pub secret: [u8; 32],
    pub proposals: u64,
    pub flood: Duration,
    pub max_serve: Duration,
}

pub fn hostile(targets: &[Multiaddr], room: &str, aims: &Aims) -> Result<()> {
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
    rt.block_on(async {
        let keypair = match &aims.ledger {
            Some(plan) => libp2p::identity::Keypair::ed25519_from_bytes(plan.secret)?,
            None => libp2p::identity::Keypair::generate_ed25519(),
        };
        let me = Identity::from_keypair(&keypair)?;
        // A fixed port, so that a node started later can be bootstrapped from the attacker.
        let config = agora_net::Config::new(vec!["/ip4/0.0.0.0/tcp/4001".parse()?])
            .with_bootstrap(targets.to_vec())
            .with_kad_mode(KadMode::Client);
        let (net, event_loop) = agora_net::new(
            keypair,
            config,
            &mut prometheus_client::registry::Registry::default(),
        )?;
        tokio::spawn(event_loop.run());
        let ledger = match aims.ledger {
            Some(_) => Some(crate::agent_ledger::LedgerAttack::start(&net, &peers)?),
            None => None,
        };
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

        // 1. Direct messages validly signed by throwaway keys, over one connection.
        let mut throwaway_refused = 0;
        for i in 0..100u8 {
            let key = Identity::from_keypair(&libp2p::identity::Keypair::generate_ed25519())?;
            let m = DirectMessage::new(
                &key,
                MessageId([i; 16]),
                peers[0],
                5,
                now(),
                format!("forged throwaway {i}"),
            )?;
            if let Err(agora_net::Error::Refused(_)) =
                net.request(peers[0], CHAT_PROTOCOL, m.encode()?, t).await
            {
                throwaway_refused += 1;
            }
        }

        // 2. The search index of every target flooded under a real file's keyword.
        let mut index_stored = 0;
        if let Some(keyword) = &aims.keyword {
            let me_id = net.local_peer_id().to_string();
            for peer in &peers {
                for batch in 0..10u64 {
                    let entries = (0..200u64)
                        .map(|i| search::Entry {
                            name: format!("{keyword} fake {batch} {i}"),
                            size: 1,
                            hash: blake3::hash(&[batch.to_be_bytes(), i.to_be_bytes()].concat())
                                .to_hex()
                                .to_string(),
                            provider: me_id.clone(),
                        })
                        .collect();
                    let req = search::Request::Publish {
                        keyword: keyword.clone(),
                        entries,
                    };
                    let bytes = agora_files::wire::encode(&req);
                    if let Ok(answer) = net.request(*peer, search::PROTOCOL, bytes, t).await
                        && let Ok(search::Response::Stored(n)) = agora_files::wire::decode(&answer)
                    {
                        index_stored += n;
                    }
                }
            }
        }

        // 3. Replica claims for blobs nobody serves, each too big to fit beside what the
        // targets hold (the scenario gives them 48 MiB of quota).
        let (mut claims_accepted, mut claims_refused) = (0, 0);
        for peer in &peers {
            for i in 0..40u64 {
                let request = agora_files::service::ReplicateRequest {
                    hash: blake3::hash(&(7000 + i).to_be_bytes()).to_hex().to_string(),
                    size: 46 << 20,
                    name: "claim.bin".into(),
                };
                let answer = net
                    .request(
                        *peer,
                        agora_files::service::REPLICATE_PROTOCOL,
                        agora_files::wire::encode(&request),
                        t,
                    )
                    .await;
                match answer.map(|a| {
                    agora_files::wire::decode::<agora_files::service::ReplicateResponse>(&a)
                }) {
                    Ok(Ok(r)) if r.accepted => claims_accepted += 1,
                    Ok(Ok(_)) => claims_refused += 1,
                    _ => {}
                }
            }
        }

        // 6. Slow streams: request streams opened and never written (they hold no request
        // slot: a request is admitted once it has arrived) and blob streams for a real blob
        // never read, at the first target. They are held after the summary is printed.
        let mut control = net.stream_control();
        let (mut held, mut slots_refused) = (Vec::new(), 0);
        for _ in 0..64 {
            if let Ok(s) = control.open_stream(peers[0], agora_net::RPC_PROTOCOL).await {
                held.push(s);
            }
        }
        if let Some(blob) = &aims.blob {
            let request = agora_files::protocol::Request {
                hash: blob.clone(),
                ranges: vec![(0, None)],
            };
            for _ in 0..48 {
                if let Ok(mut s) = control
                    .open_stream(peers[0], agora_files::protocol::PROTOCOL)
                    .await
                {
                    let _ = agora_files::protocol::write_frame(&mut s, &request).await;
                    held.push(s);
                }
            }
        }
        for s in held.iter_mut() {
            use futures::AsyncReadExt;
            let mut first = [0u8; 1];
            if let Ok(Ok(())) =
                tokio::time::timeout(Duration::from_millis(200), s.read_exact(&mut first)).await
            {
                // A refusal frame (chat) or an answer frame (blobs: Busy, or the start of a
                // Size frame that we then never read past).
                slots_refused += 1;
            }
        }

        let summary = json!({
            "garbage_requests_answered": flood,
            "forged_dms_refused": forged_refused,
            "oversized_frame_answered": oversized,
            "mailbox_stored": stored,
            "mailbox_refused": refused,
            "forged_posts_published": published,
            "throwaway_dms_refused": throwaway_refused,
            "index_entries_stored": index_stored,
            "replica_claims_accepted": claims_accepted,
            "replica_claims_refused": claims_refused,
            "slow_streams_opened": held.len(),
            "slow_streams_answered": slots_refused,
        });
        println!("{}", json!({"raw": raw, "protocol": summary}));
        std::io::stdout().flush()?;
        // The ledger attacks run while the slow streams are held.
        let ledger_phase = async {
            let (Some(attack), Some(plan)) = (&ledger, &aims.ledger) else {
                return anyhow::Ok(());
            };
            let (flood, submissions) = tokio::join!(
                attack.flood_proposals(plan.proposals, plan.flood),
                attack.flood_submissions()
            );
            println!(
                "{}",
                json!({"ledger": {"flood": flood, "submit": submissions}})
            );
            std::io::stdout().flush()?;
            anyhow::Ok(())
        };
        let (_, phase) = tokio::join!(tokio::time::sleep(aims.hold), ledger_phase);
        phase?;
        drop(held);
        if let (Some(attack), Some(plan)) = (&ledger, &aims.ledger) {
            // The lying sync server keeps serving until the scenario closes our stdin.
            let stdin_closed = tokio::task::spawn_blocking(|| {
                let mut sink = Vec::new();
                let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
            });
            let _ = tokio::time::timeout(plan.max_serve, stdin_closed).await;
            println!("{}", json!({"sync_liar": attack.liar_summary()}));
            std::io::stdout().flush()?;
            attack.shutdown();
        }
        let _ = net.shutdown().await;
        anyhow::Ok(())
    })?;
    Ok(())
}

/// The ledger plan of `agent-hostile`, if a committee key file was given.
pub fn ledger_plan(
    key_file: Option<&std::path::Path>,
    proposals: u64,
    flood_secs: u64,
    max_serve: u64,
) -> Result<Option<LedgerPlan>> {
    let Some(path) = key_file else {
        return Ok(None);
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let secret: [u8; 32] = hex::decode(text.trim())?
        .try_into()
        .map_err(|_| anyhow::anyhow!("{}: not a 32-byte secret", path.display()))?;
    Ok(Some(LedgerPlan {
        secret,
        proposals,
        flood: Duration::from_secs(flood_secs),
        max_serve: Duration::from_secs(max_serve),
    }))
}
