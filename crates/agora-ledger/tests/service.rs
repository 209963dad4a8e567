//! The ledger service against hostile peers, in one process over real loopback sockets: a
//! one-validator chain, a follower, and a peer that lies on every channel it has — forged
//! gossip announcements, a sync peer claiming a long chain of uncertified blocks, garbage
//! requests. The follower must apply none of it and then follow the real chain.

use std::sync::Arc;
use std::time::Duration;

use agora_ledger::consensus::AppConfig;
use agora_ledger::service::wire::{self, Announcement, Request, Response};
use agora_ledger::service::{Config, Ledger, PROTOCOL, StoredBlock};
use agora_ledger::{Account, Block, Genesis, Hash, State};
use agora_net::{GossipMessage, Handle, InboundRequest, Multiaddr};
use libp2p::gossipsub::MessageAcceptance;
use libp2p::identity::Keypair;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

fn account(keypair: &Keypair) -> Account {
    Account::of_identity(keypair).unwrap()
}

struct Node {
    net: Handle,
    addr: Multiaddr,
    ledger: Arc<Ledger>,
    dir: std::path::PathBuf,
    _tmp: Option<tempfile::TempDir>,
    stop: CancellationToken,
}

impl Node {
    /// Stops the ledger (consensus thread included) and the swarm; the data stays on disk.
    async fn stop(self) -> std::path::PathBuf {
        self.ledger.shutdown().await;
        self.stop.cancel();
        let _ = self.net.shutdown().await;
        self.dir.clone()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn node(
    keypair: &Keypair,
    genesis: &Genesis,
    validator: bool,
    bootstrap: Vec<Multiaddr>,
) -> Node {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let interval = Duration::from_millis(400);
    let mut n = node_in(&dir, keypair, genesis, validator, bootstrap, interval).await;
    n._tmp = Some(tmp);
    n
}

async fn node_in(
    dir: &std::path::Path,
    keypair: &Keypair,
    genesis: &Genesis,
    validator: bool,
    bootstrap: Vec<Multiaddr>,
    empty_block_interval: Duration,
) -> Node {
    let (net, addr) = agora_net::start_loopback(keypair.clone(), bootstrap)
        .await
        .unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let db = Arc::new(agora_store::Db::open(&dir.join("agora.redb")).unwrap());
    let stop = CancellationToken::new();
    let ledger = Ledger::start(
        net.clone(),
        keypair,
        db,
        Config {
            genesis: genesis.clone(),
            validator,
            consensus_dir: dir.join("consensus"),
            app: AppConfig {
                empty_block_interval,
                ..Default::default()
            },
            leader_timeout: Duration::from_secs(1),
        },
        stop.clone(),
    )
    .await
    .unwrap();
    Node {
        net,
        addr,
        ledger,
        dir: dir.to_owned(),
        _tmp: None,
        stop,
    }
}

/// Waits until `net` has a connection to `peer`.
async fn until_connected(net: &Handle, peer: libp2p::PeerId, what: &str) {
    let peer = peer.to_string();
    wait_for(what, || async {
        net.peers().await.unwrap().iter().any(|p| p.peer_id == peer)
    })
    .await;
}

async fn wait_for<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Blocks that execute correctly on the genesis state (right parents, right state roots) but
/// were never ordered by the committee: they carry no valid certificate.
fn forged_chain(genesis: &Genesis, len: u64) -> Vec<Block> {
    let mut state = State::genesis(genesis);
    let mut parent = genesis.chain_id();
    let mut out = Vec::new();
    for i in 0..len {
        let (block, next, _) = Block::build(&state, parent, 1_000 + i, [], 10);
        parent = block.digest();
        state = next;
        out.push(block);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_applies_no_forged_block_and_then_follows_the_real_chain() {
    let (validator_key, follower_key, liar_key) = (
        Keypair::generate_ed25519(),
        Keypair::generate_ed25519(),
        Keypair::generate_ed25519(),
    );
    let genesis = Genesis {
        chain: "hostile".into(),
        validators: vec![account(&validator_key)],
        balances: vec![
            (account(&validator_key), 1_000_000),
            (account(&follower_key), 1_000_000),
        ],
        min_fee: 1,
        epoch_length: 1_000_000,
    };
    let forged = forged_chain(&genesis, 50);

    // The liar: claims height 1,000 and serves uncertified (or garbage-certified) blocks.
    let (liar, liar_addr) = agora_net::start_loopback(liar_key.clone(), vec![])
        .await
        .unwrap();
    let (tx, mut requests) = mpsc::channel::<InboundRequest>(16);
    liar.serve(PROTOCOL, tx).unwrap();
    let served = forged.clone();
    let chain = genesis.chain_id();
    tokio::spawn(async move {
        while let Some(req) = requests.recv().await {
            let answer = match wire::decode::<Request>(&req.data) {
                Some(Request::Status) => Response::Status {
                    chain,
                    height: 1_000,
                    digest: Hash([9; 32]),
                    validator: true,
                },
                Some(Request::Blocks { from, .. }) => Response::Blocks(
                    served
                        .iter()
                        .filter(|b| b.height >= from)
                        .map(|b| StoredBlock {
                            block: b.encode(),
                            certificate: (b.height % 2 == 0).then(|| vec![0xAB; 200]),
                        })
                        .collect(),
                ),
                _ => Response::Error("no".into()),
            };
            let _ = req.reply.send(wire::encode(&answer));
        }
    });
    let topic = format!("agora/ledger/{}/blocks", &chain.to_hex()[..16]);
    let (gossip_tx, mut gossip_rx) = mpsc::channel::<GossipMessage>(16);
    liar.subscribe(&topic, gossip_tx).await.unwrap();
    tokio::spawn({
        let liar = liar.clone();
        async move {
            while let Some(m) = gossip_rx.recv().await {
                let _ = liar
                    .validate(m.id, m.source, MessageAcceptance::Accept)
                    .await;
            }
        }
    });

    // The follower knows only the liar at first.
    let follower = node(&follower_key, &genesis, false, vec![liar_addr.clone()]).await;
    until_connected(
        &follower.net,
        liar.local_peer_id(),
        "the follower to see the liar",
    )
    .await;
    // Forged announcements: a valid-looking block with a garbage certificate, garbage bytes.
    wait_for("gossip mesh with the liar", || async {
        liar.topic_peers(&topic)
            .await
            .unwrap()
            .contains(&follower.net.local_peer_id())
    })
    .await;
    for b in forged.iter().take(3) {
        let a = Announcement {
            height: b.height,
            digest: b.digest(),
            certificate: vec![7; 300],
            block: Some(b.encode()),
        };
        let _ = liar.publish(&topic, wire::encode(&a)).await;
    }
    let _ = liar.publish(&topic, vec![0xFF; 5_000]).await;
    // Garbage and extreme requests to the follower: answered with errors, nothing breaks.
    for data in [
        vec![],
        vec![0xFF; 64],
        wire::encode(&Request::Blocks {
            from: u64::MAX,
            max: u32::MAX,
        }),
        wire::encode(&Request::Submit(vec![1, 2, 3])),
    ] {
        let answer = liar
            .request(
                follower.net.local_peer_id(),
                PROTOCOL,
                data,
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        match wire::decode::<Response>(&answer).unwrap() {
            Response::Error(_) | Response::Submitted(Err(_)) | Response::Blocks(_) => {}
            other => panic!("unexpected answer {other:?}"),
        }
    }
    // Several sync rounds (every 2 s) against the liar, and the announcements: nothing applied.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(follower.ledger.height(), 0, "a forged block was applied");

    // The real validator appears: the follower catches up with the real chain.
    let validator = node(&validator_key, &genesis, true, vec![follower.addr.clone()]).await;
    wait_for("the follower to follow the validator", || async {
        follower.ledger.height() >= 5 && validator.ledger.height() >= 5
    })
    .await;
    for height in 1..=5 {
        let (a, da, _) = validator.ledger.block(height).unwrap().unwrap();
        let (b, db, _) = follower.ledger.block(height).unwrap().unwrap();
        assert_eq!(da, db);
        assert_eq!(a.state_root, b.state_root);
        assert_ne!(
            da,
            forged[height as usize - 1].digest(),
            "the forged block was kept"
        );
    }
    // And its own payment, submitted to the validator over the network, is final on both.
    let paid = follower
        .ledger
        .pay(
            account(&validator_key),
            500,
            Some("through a hostile network".into()),
            None,
        )
        .await
        .unwrap();
    wait_for("the payment on the validator", || async {
        validator.ledger.tx(&paid.hash).unwrap().is_some()
    })
    .await;
    assert_eq!(
        follower.ledger.balance(&account(&follower_key)).balance,
        1_000_000 - 501
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validator_down_for_hundreds_of_blocks_catches_up_and_votes_again() {
    let keys: Vec<Keypair> = (0..4).map(|_| Keypair::generate_ed25519()).collect();
    let genesis = Genesis {
        chain: "long-downtime".into(),
        validators: keys.iter().map(account).collect(),
        balances: keys.iter().map(|k| (account(k), 1_000_000)).collect(),
        min_fee: 1,
        epoch_length: 1_000_000,
    };
    let fast = Duration::from_millis(5);
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (0..4).map(|i| tmp.path().join(format!("v{i}"))).collect();
    let mut nodes = vec![node_in(&dirs[0], &keys[0], &genesis, true, vec![], fast).await];
    for i in 1..4 {
        let boot = vec![nodes[0].addr.clone()];
        nodes.push(node_in(&dirs[i], &keys[i], &genesis, true, boot, fast).await);
    }
    wait_for("the first blocks", || async {
        nodes.iter().all(|n| n.ledger.height() >= 3)
    })
    .await;
    // Validator 3 goes away while the other three finalize far more blocks than the engine
    // keeps in memory for laggards (256): it can only come back by fetching them.
    let down = nodes.pop().unwrap();
    let left_at = down.ledger.height();
    down.stop().await;
    let target = left_at + 400;
    wait_for("400 blocks without validator 3", || async {
        nodes.iter().all(|n| n.ledger.height() >= target)
    })
    .await;
    let back = node_in(
        &dirs[3],
        &keys[3],
        &genesis,
        true,
        vec![nodes[0].addr.clone()],
        fast,
    )
    .await;
    wait_for("validator 3 to catch up", || async {
        back.ledger.height() >= target
    })
    .await;
    // Now stop validator 2: the chain can only go on if validator 3 votes again (3 of 4).
    let gone = nodes.pop().unwrap();
    gone.stop().await;
    nodes.push(back);
    let paid = nodes[0]
        .ledger
        .pay(account(&keys[1]), 42, None, None)
        .await
        .expect("final with validators 0, 1 and the caught-up 3");
    for n in &nodes {
        wait_for("the payment on every running validator", || async {
            n.ledger.tx(&paid.hash).unwrap().is_some()
        })
        .await;
    }
    let h = paid.height;
    let digests: Vec<Hash> = nodes
        .iter()
        .map(|n| n.ledger.block(h).unwrap().unwrap().1)
        .collect();
    assert!(digests.iter().all(|d| *d == digests[0]));
}

/// A peer that answers the ledger protocol with a fixed chain and claimed height.
fn serve_chain(net: &Handle, chain: Hash, height: u64, blocks: Vec<StoredBlock>) {
    let (tx, mut requests) = mpsc::channel::<InboundRequest>(16);
    net.serve(PROTOCOL, tx).unwrap();
    tokio::spawn(async move {
        while let Some(req) = requests.recv().await {
            let answer = match wire::decode::<Request>(&req.data) {
                Some(Request::Status) => Response::Status {
                    chain,
                    height,
                    digest: Hash([9; 32]),
                    validator: false,
                },
                Some(Request::Blocks { from, max }) => Response::Blocks(
                    blocks
                        .iter()
                        .filter(|b| Block::decode(&b.block).unwrap().height >= from)
                        .take(max as usize)
                        .cloned()
                        .collect(),
                ),
                _ => Response::Error("no".into()),
            };
            let _ = req.reply.send(wire::encode(&answer));
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_junk_peer_claiming_a_long_chain_never_blocks_an_honest_one() {
    let (validator_key, follower_key, junk_key, relay_key) = (
        Keypair::generate_ed25519(),
        Keypair::generate_ed25519(),
        Keypair::generate_ed25519(),
        Keypair::generate_ed25519(),
    );
    let genesis = Genesis {
        chain: "junk-sync".into(),
        validators: vec![account(&validator_key)],
        balances: vec![(account(&validator_key), 1_000_000)],
        min_fee: 1,
        epoch_length: 1_000_000,
    };
    let chain = genesis.chain_id();

    // The real chain: a validator runs alone to height 10; an honest relay fetches its blocks
    // and serves them to the follower, the way a follower that holds blocks finalized
    // implicitly does: only the top block carries its certificate, the ones below it are
    // proven by their hash links to it. The validator then stops (no gossip reaches the
    // follower: all it learns comes through sync).
    let validator = node(&validator_key, &genesis, true, vec![]).await;
    wait_for("ten blocks", || async { validator.ledger.height() >= 10 }).await;
    let (relay, relay_addr) =
        agora_net::start_loopback(relay_key.clone(), vec![validator.addr.clone()])
            .await
            .unwrap();
    let answer = relay
        .request(
            validator.net.local_peer_id(),
            PROTOCOL,
            wire::encode(&Request::Blocks { from: 1, max: 10 }),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let Some(Response::Blocks(mut real)) = wire::decode::<Response>(&answer) else {
        panic!("no blocks from the validator");
    };
    let top = real
        .iter()
        .rposition(|b| b.certificate.is_some())
        .expect("the validator holds certificates");
    real.truncate(top + 1);
    for stored in &mut real[..top] {
        stored.certificate = None;
    }
    let real_height = top as u64 + 1;
    assert!(real_height >= 2, "a chain to catch up on");
    let real_digests: Vec<Hash> = real
        .iter()
        .map(|b| Block::decode(&b.block).unwrap().digest())
        .collect();
    validator.stop().await;

    // The junk peer: claims a huge height and serves a long, well-formed, uncertified chain
    // (garbage certificates on some blocks).
    let forged = forged_chain(&genesis, 300);
    let (junk, junk_addr) = agora_net::start_loopback(junk_key.clone(), vec![])
        .await
        .unwrap();
    serve_chain(
        &junk,
        chain,
        u64::MAX / 2,
        forged
            .iter()
            .map(|b| StoredBlock {
                block: b.encode(),
                certificate: (b.height % 7 == 0).then(|| vec![0xAB; 200]),
            })
            .collect(),
    );

    // The follower meets the junk peer first and syncs with it for a while.
    let follower = node(&follower_key, &genesis, false, vec![junk_addr]).await;
    until_connected(
        &follower.net,
        junk.local_peer_id(),
        "the follower to see the junk peer",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(follower.ledger.height(), 0, "a junk block was applied");
    assert_eq!(follower.ledger.pending_blocks(), 0, "junk blocks are held");
    assert!(
        follower
            .net
            .admission()
            .count(agora_ledger::service::BUDGET_SYNC_JUNK)
            > 0,
        "the junk peer was left"
    );

    // Then the honest relay: the follower must catch up with the real chain.
    serve_chain(&relay, chain, real_height, real);
    follower.net.dial(relay_addr).await.unwrap();
    wait_for("the follower to catch up with the honest peer", || async {
        follower.ledger.height() >= real_height
    })
    .await;
    for (i, digest) in real_digests.iter().enumerate() {
        let (_, d, _) = follower.ledger.block(i as u64 + 1).unwrap().unwrap();
        assert_eq!(d, *digest, "height {} is not the real block", i + 1);
    }
    // And nothing of the junk peer's is held (its claims reserved nothing).
    assert_eq!(follower.ledger.pending_blocks(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_flooding_submissions_is_refused_by_its_budget() {
    use agora_ledger::service::{BUDGET_SUBMIT_TXS, SUBMIT_TXS_PER_PEER};
    let (validator_key, flooder_key) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let genesis = Genesis {
        chain: "submit-flood".into(),
        validators: vec![account(&validator_key)],
        balances: vec![(account(&validator_key), 1_000_000)],
        min_fee: 1,
        epoch_length: 1_000_000,
    };
    let validator = node(&validator_key, &genesis, true, vec![]).await;
    wait_for("the validator to validate", || async {
        validator.ledger.is_validator()
    })
    .await;
    let (flooder, _) = agora_net::start_loopback(flooder_key.clone(), vec![validator.addr.clone()])
        .await
        .unwrap();
    // Full batches of (undecodable) transactions, back to back. Within the budget a peer gets
    // its burst plus the rate for the time spent; past that it must be refused, without the
    // validator decoding anything.
    let batch = wire::encode(&Request::SubmitMany(vec![vec![0u8; 16]; 1_000]));
    let started = std::time::Instant::now();
    let mut sent = 0f64;
    let refusal = loop {
        let allowed = SUBMIT_TXS_PER_PEER.burst
            + SUBMIT_TXS_PER_PEER.per_sec * started.elapsed().as_secs_f64();
        assert!(
            sent <= allowed + 1_000.0,
            "{sent} transactions submitted within a budget of {allowed}, none refused"
        );
        match flooder
            .request(
                validator.net.local_peer_id(),
                PROTOCOL,
                batch.clone(),
                Duration::from_secs(10),
            )
            .await
        {
            Ok(answer) => match wire::decode::<Response>(&answer) {
                Some(Response::SubmittedMany(results)) => {
                    assert_eq!(results.len(), 1_000);
                    assert!(results.iter().all(|r| r.is_err()));
                    sent += 1_000.0;
                }
                other => panic!("unexpected answer {other:?}"),
            },
            Err(agora_net::Error::Refused(reason)) => break reason,
            Err(e) => panic!("request failed: {e}"),
        }
    };
    assert_eq!(refusal, BUDGET_SUBMIT_TXS);
    assert!(validator.net.admission().count(BUDGET_SUBMIT_TXS) > 0);
    // The budget is the flooder's alone: the validator's own payments still go through.
    let paid = validator
        .ledger
        .pay(account(&flooder_key), 5, None, None)
        .await
        .unwrap();
    assert!(paid.height > 0);
}
