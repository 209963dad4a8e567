//! The ledger's consensus integration under Commonware's deterministic runtime and simulated
//! network: real simplex engines, the real ledger application, seeded faults.
//!
//! Each test runs four validators (f = 1). A follower-style checker on every validator verifies
//! each finalization certificate against the committee, executes the finalized blocks and keeps
//! the state roots, so the assertions compare what every validator actually committed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agora_ledger::consensus::{
    self, Base, CHANNEL_BLOCKS, CHANNEL_CERTIFICATES, CHANNEL_RESOLVER, CHANNEL_VOTES, Channels,
    Mailbox, PrivateKey, PublicKey, Running, Scheme, ValidatorConfig,
};
use agora_ledger::{
    Account, AccountTx, Action, CommitteeChange, CommitteeTx, Genesis, Hash, State, Tx,
};
use commonware_consensus::simplex;
use commonware_cryptography::Signer as _;
use commonware_p2p::simulated::{Config as NetConfig, Link, Network, Oracle};
use commonware_runtime::{Clock, Quota, Runner as _, Spawner as _, Supervisor as _, deterministic};
use commonware_utils::{NZU32, NZUsize};
use ed25519_dalek::SigningKey;

const N: usize = 4;
const FEE: u64 = 1;

type Ctx = deterministic::Context;

fn user(i: u8) -> SigningKey {
    SigningKey::from_bytes(&[i + 1; 32])
}

fn user_account(i: u8) -> Account {
    Account::from_key(&user(i).verifying_key())
}

fn validator_key(i: usize) -> PrivateKey {
    consensus::private_key(&[200 + i as u8; 32])
}

fn genesis(epoch_length: u64) -> Genesis {
    Genesis {
        chain: "sim".into(),
        validators: (0..N)
            .map(|i| consensus::account_of(&validator_key(i)))
            .collect(),
        balances: (0..4).map(|i| (user_account(i), 1_000_000)).collect(),
        min_fee: FEE,
        epoch_length,
    }
}

/// A committee change approved by the given validators.
fn committee_tx(chain: &Hash, change: CommitteeChange, nonce: u64, approvers: &[usize]) -> Tx {
    let approvals = approvers
        .iter()
        .map(|&i| {
            let key = SigningKey::from_bytes(&[200 + i as u8; 32]);
            CommitteeTx::approve(&change, nonce, &key, chain)
        })
        .collect();
    Tx::Committee(CommitteeTx {
        change,
        nonce,
        approvals,
    })
}

fn pay(chain: &Hash, from: u8, to: u8, amount: u64, seq: u64) -> Tx {
    Tx::Account(
        AccountTx {
            from: user_account(from),
            seq,
            fee: FEE,
            action: Action::Transfer {
                to: user_account(to),
                amount,
                memo: None,
            },
        }
        .sign(&user(from), chain),
    )
}

/// What one validator committed, as seen by an independent checker.
#[derive(Clone)]
struct Applied {
    state: State,
    digest: Hash,
    timestamp_ms: u64,
    epoch_start: Hash,
    /// state root per height
    roots: BTreeMap<u64, Hash>,
    certificates: usize,
    txs: Vec<Hash>,
}

struct Validator {
    key: PrivateKey,
    running: Option<Running>,
    applied: Arc<Mutex<Applied>>,
}

struct Sim {
    context: Ctx,
    oracle: Oracle<PublicKey, Ctx>,
    genesis: Genesis,
    validators: Vec<Validator>,
    keys: Vec<PublicKey>,
    /// Nodes fed the blocks node 0 applied, as a node's ledger service does for a validator
    /// outside the committee or behind it (`Mailbox::advance`).
    fed: Arc<Mutex<Vec<usize>>>,
    /// The running nodes' application mailboxes.
    mailboxes: Arc<Mutex<Vec<Option<Mailbox>>>>,
    feeding: std::sync::atomic::AtomicBool,
    /// What the validators' admission budgets refused (all count here).
    refusals: agora_net::Refusals,
}

fn link(latency_ms: u64, jitter_ms: u64, success: f64) -> Link {
    Link {
        latency: Duration::from_millis(latency_ms),
        jitter: Duration::from_millis(jitter_ms),
        success_rate: commonware_utils::Probability::from_f64(success).unwrap(),
    }
}

impl Sim {
    async fn new(context: Ctx, link_config: Link) -> Self {
        Self::with(context, link_config, N, 1_000_000).await
    }

    /// `total` nodes, the first four in the genesis committee, epochs of `epoch_length` blocks.
    async fn with(context: Ctx, link_config: Link, total: usize, epoch_length: u64) -> Self {
        // RUST_LOG=agora_ledger=debug shows what the application does.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let genesis = genesis(epoch_length);
        let keys: Vec<PublicKey> = (0..total).map(|i| validator_key(i).public_key()).collect();
        let (network, oracle) = Network::new_with_peers(
            context.child("network"),
            NetConfig {
                max_size: 8 << 20,
                max_peers_per_set: NZUsize!(8),
                disconnect_on_block: true,
                tracked_peer_sets: NZUsize!(1),
            },
            keys.clone(),
        )
        .await;
        network.start();
        let state = State::genesis(&genesis);
        let validators = (0..total)
            .map(|i| Validator {
                key: validator_key(i),
                running: None,
                applied: Arc::new(Mutex::new(Applied {
                    state: state.clone(),
                    digest: genesis.chain_id(),
                    timestamp_ms: 0,
                    epoch_start: genesis.chain_id(),
                    roots: BTreeMap::new(),
                    certificates: 0,
                    txs: Vec::new(),
                })),
            })
            .collect();
        let mut sim = Sim {
            context,
            oracle,
            genesis,
            validators,
            keys,
            fed: Arc::default(),
            mailboxes: Arc::new(Mutex::new(vec![None; total])),
            feeding: Default::default(),
            refusals: Default::default(),
        };
        sim.link_all(Some(link_config), |_, _| true).await;
        sim
    }

    /// Adds (or, with `None`, removes) links between every ordered pair that `pick` accepts.
    async fn link_all(&mut self, config: Option<Link>, pick: impl Fn(usize, usize) -> bool) {
        for i in 0..self.keys.len() {
            for j in 0..self.keys.len() {
                if i == j || !pick(i, j) {
                    continue;
                }
                let (a, b) = (self.keys[i].clone(), self.keys[j].clone());
                match &config {
                    Some(link) => self.oracle.add_link(a, b, link.clone()).await.unwrap(),
                    None => self.oracle.remove_link(a, b).await.unwrap(),
                }
            }
        }
    }

    async fn channels(
        &mut self,
        i: usize,
    ) -> Channels<
        commonware_p2p::simulated::Sender<PublicKey, Ctx>,
        commonware_p2p::simulated::Receiver<PublicKey>,
    > {
        let control = self.oracle.control(self.keys[i].clone());
        let quota = Quota::per_second(NZU32!(100_000));
        Channels {
            votes: control.register(CHANNEL_VOTES, quota).await.unwrap(),
            certificates: control.register(CHANNEL_CERTIFICATES, quota).await.unwrap(),
            resolver: control.register(CHANNEL_RESOLVER, quota).await.unwrap(),
            blocks: control.register(CHANNEL_BLOCKS, quota).await.unwrap(),
        }
    }

    /// Starts (or restarts, from what it last applied) validator `i` and its checker.
    async fn start(&mut self, i: usize) {
        let channels = self.channels(i).await;
        let applied = self.validators[i].applied.clone();
        let base = {
            let a = applied.lock().unwrap();
            Base {
                state: a.state.clone(),
                digest: a.digest,
                timestamp_ms: a.timestamp_ms,
                epoch_start: a.epoch_start,
            }
        };
        let mut config =
            ValidatorConfig::new(self.genesis.clone(), self.validators[i].key.clone(), base);
        config.partition_prefix = format!("validator{i}");
        config.refusals = Some(self.refusals.clone());
        let blocker = self.oracle.control(self.keys[i].clone());
        let context = self.context.child("validator").with_attribute("index", i);
        let mut running = consensus::start_validator(context, config, channels, blocker).unwrap();
        let mut finalized = std::mem::replace(
            &mut running.finalized,
            commonware_utils::channel::mpsc::channel(1).1,
        );
        let chain = self.genesis.chain_id();
        self.context
            .child("checker")
            .spawn(move |mut context| async move {
                while let Some(f) = finalized.recv().await {
                    let mut a = applied.lock().unwrap();
                    if f.block.height <= a.state.height {
                        // Already fed to this checker (see `Sim::feed`).
                        continue;
                    }
                    assert_eq!(f.block.parent, a.digest, "finalized blocks arrive in order");
                    if let Some(cert) = &f.finalization {
                        // Signed by the committee of the block's epoch, in that epoch.
                        let epoch = a.state.epoch_of(f.block.height);
                        assert_eq!(cert.proposal.round.epoch().get(), epoch);
                        let committee = consensus::committee_set(&a.state.committee).unwrap();
                        let verifier = Scheme::verifier(&consensus::namespace(&chain), committee);
                        assert_eq!(cert.proposal.payload, consensus::digest(f.digest));
                        assert!(cert.verify(
                            &mut context,
                            &verifier,
                            &commonware_parallel::Sequential
                        ));
                        a.certificates += 1;
                    }
                    let (state, _) = f
                        .block
                        .execute(&a.state, |_| false)
                        .expect("finalized block executes");
                    assert_eq!(state.root(), f.block.state_root);
                    a.roots.insert(f.block.height, state.root());
                    a.txs.extend(f.block.txs.iter().map(Tx::hash));
                    a.state = state;
                    a.digest = f.digest;
                    a.timestamp_ms = f.block.timestamp_ms;
                    if a.state.ends_epoch(f.block.height) {
                        a.epoch_start = f.digest;
                    }
                }
            });
        self.mailboxes.lock().unwrap()[i] = Some(running.mailbox.clone());
        self.validators[i].running = Some(running);
    }

    /// Node `i` is no longer fed: it must keep up through its own engine.
    fn unfeed(&self, i: usize) {
        self.fed.lock().unwrap().retain(|&j| j != i);
    }

    /// From now on node `i` is also fed what node 0 applied, like a node whose ledger service
    /// fetches certified blocks from peers and hands them to its application.
    fn feed(&self, i: usize) {
        let mut fed = self.fed.lock().unwrap();
        if !fed.contains(&i) {
            fed.push(i);
        }
        if self
            .feeding
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let fed = self.fed.clone();
        let source = self.validators[0].applied.clone();
        let targets: Vec<_> = self.validators.iter().map(|v| v.applied.clone()).collect();
        let mailboxes = self.mailboxes.clone();
        self.context
            .child("feeder")
            .spawn(move |context| async move {
                loop {
                    context.sleep(Duration::from_millis(200)).await;
                    let from = source.lock().unwrap().clone();
                    for &i in fed.lock().unwrap().iter() {
                        let mut a = targets[i].lock().unwrap();
                        if a.state.height >= from.state.height {
                            continue;
                        }
                        for (height, root) in &from.roots {
                            if *height > a.state.height {
                                a.roots.insert(*height, *root);
                            }
                        }
                        a.state = from.state.clone();
                        a.digest = from.digest;
                        a.timestamp_ms = from.timestamp_ms;
                        a.epoch_start = from.epoch_start;
                        if let Some(mailbox) = &mailboxes.lock().unwrap()[i] {
                            mailbox.advance(Base {
                                state: a.state.clone(),
                                digest: a.digest,
                                timestamp_ms: a.timestamp_ms,
                                epoch_start: a.epoch_start,
                            });
                        }
                    }
                }
            });
    }

    /// kill -9: the engine and the application stop at once; the journal survives.
    async fn crash(&mut self, i: usize) {
        self.mailboxes.lock().unwrap()[i] = None;
        if let Some(running) = self.validators[i].running.take() {
            running.engine.abort();
            running.app.abort();
            let _ = running.engine.await;
            let _ = running.app.await;
        }
    }

    async fn submit(&self, i: usize, tx: Tx) -> Result<Hash, consensus::Rejected> {
        let mailbox = self.validators[i].running.as_ref().unwrap().mailbox.clone();
        mailbox.submit(tx).await.expect("application running")
    }

    fn height(&self, i: usize) -> u64 {
        self.validators[i].applied.lock().unwrap().state.height
    }

    fn applied(&self, i: usize) -> Applied {
        self.validators[i].applied.lock().unwrap().clone()
    }

    /// Waits (simulated time) until `done` holds, or panics after `limit`.
    async fn wait_for(&self, limit: Duration, what: &str, done: impl Fn(&Sim) -> bool) {
        let start = self.context.current();
        while !done(self) {
            assert!(
                self.context.current().duration_since(start).unwrap() < limit,
                "timed out waiting for {what}; heights {:?}",
                (0..N).map(|i| self.height(i)).collect::<Vec<_>>()
            );
            self.context.sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every pair of validators agrees on the state root at every height both reached.
    fn assert_agreement(&self, who: &[usize]) {
        let applied: Vec<Applied> = who.iter().map(|&i| self.applied(i)).collect();
        for a in &applied {
            for b in &applied {
                for (height, root) in &a.roots {
                    if let Some(other) = b.roots.get(height) {
                        assert_eq!(root, other, "state roots differ at height {height}");
                    }
                }
            }
        }
    }
}

#[test]
fn four_validators_finalize_transfers_with_identical_state() {
    deterministic::Runner::timed(Duration::from_secs(120)).start(|context| async move {
        let mut sim = Sim::new(context, link(10, 2, 1.0)).await;
        for i in 0..N {
            sim.start(i).await;
        }
        let chain = sim.genesis.chain_id();
        // Ten payments from each of four users, each submitted to a different validator.
        let mut hashes = Vec::new();
        for seq in 0..10 {
            for from in 0..4u8 {
                let tx = pay(&chain, from, (from + 1) % 4, 100 + seq, seq);
                hashes.push(
                    sim.submit((from as usize + seq as usize) % N, tx)
                        .await
                        .unwrap(),
                );
            }
        }
        sim.wait_for(
            Duration::from_secs(30),
            "all payments on every validator",
            |s| (0..N).all(|i| hashes.iter().all(|h| s.applied(i).txs.contains(h))),
        )
        .await;
        sim.assert_agreement(&[0, 1, 2, 3]);
        let a = sim.applied(0);
        assert!(a.certificates > 0);
        // Each user paid 10 × (100..110) + fees and received the same from its neighbour.
        for u in 0..4 {
            let acct = a.state.account(&user_account(u));
            assert_eq!(acct.seq, 10);
            assert_eq!(acct.balance, 1_000_000 - 10 * FEE);
        }
        assert_eq!(a.state.burned, 40 * FEE);
    });
}

#[test]
fn a_double_spend_sent_to_two_validators_applies_once() {
    deterministic::Runner::timed(Duration::from_secs(120)).start(|context| async move {
        let mut sim = Sim::new(context, link(10, 2, 1.0)).await;
        for i in 0..N {
            sim.start(i).await;
        }
        let chain = sim.genesis.chain_id();
        // User 0 spends nearly everything twice with the same sequence number.
        let to_1 = pay(&chain, 0, 1, 900_000, 0);
        let to_2 = pay(&chain, 0, 2, 900_000, 0);
        let first = sim.submit(0, to_1.clone()).await;
        let second = sim.submit(2, to_2.clone()).await;
        assert!(
            first.is_ok() && second.is_ok(),
            "each validator admits its copy"
        );
        sim.wait_for(
            Duration::from_secs(30),
            "the sender's sequence to advance",
            |s| (0..N).all(|i| s.applied(i).state.account(&user_account(0)).seq == 1),
        )
        .await;
        // Let a few more blocks pass: the loser must never apply later either.
        let h = sim.height(0);
        sim.wait_for(Duration::from_secs(30), "more blocks", |s| {
            s.height(0) > h + 5
        })
        .await;
        sim.assert_agreement(&[0, 1, 2, 3]);
        for i in 0..N {
            let a = sim.applied(i);
            let applied = [to_1.hash(), to_2.hash()]
                .iter()
                .filter(|h| a.txs.contains(h))
                .count();
            assert_eq!(applied, 1, "validator {i}: exactly one of the two spends");
            assert_eq!(
                a.state.account(&user_account(0)).balance,
                1_000_000 - 900_000 - FEE
            );
            let received = a.state.account(&user_account(1)).balance
                + a.state.account(&user_account(2)).balance;
            assert_eq!(received, 2_000_000 + 900_000);
        }
    });
}

#[test]
fn a_crashed_validator_does_not_stop_the_others_and_catches_up_after_restart() {
    deterministic::Runner::timed(Duration::from_secs(180)).start(|context| async move {
        let mut sim = Sim::new(context, link(10, 2, 1.0)).await;
        for i in 0..N {
            sim.start(i).await;
        }
        let chain = sim.genesis.chain_id();
        sim.wait_for(Duration::from_secs(10), "first blocks", |s| {
            s.height(3) >= 3
        })
        .await;
        sim.crash(3).await;
        let crashed_at = sim.height(3);
        // Payments keep finalizing with three of four.
        let mut hashes = Vec::new();
        for seq in 0..5 {
            hashes.push(sim.submit(0, pay(&chain, 0, 1, 10, seq)).await.unwrap());
        }
        sim.wait_for(
            Duration::from_secs(30),
            "payments without validator 3",
            |s| (0..3).all(|i| hashes.iter().all(|h| s.applied(i).txs.contains(h))),
        )
        .await;
        assert_eq!(
            sim.height(3),
            crashed_at,
            "a crashed validator applies nothing"
        );
        // Restart from its journal and last applied block: it catches up with the others.
        sim.start(3).await;
        let target = sim.height(0) + 5;
        sim.wait_for(
            Duration::from_secs(60),
            "the restarted validator to catch up",
            |s| s.height(3) >= target,
        )
        .await;
        sim.assert_agreement(&[0, 1, 2, 3]);
        let a = sim.applied(3);
        assert!(hashes.iter().all(|h| a.txs.contains(h)));
    });
}

#[test]
fn a_partition_stops_finality_and_healing_resumes_it() {
    deterministic::Runner::timed(Duration::from_secs(180)).start(|context| async move {
        let mut sim = Sim::new(context.child("sim"), link(10, 2, 1.0)).await;
        for i in 0..N {
            sim.start(i).await;
        }
        sim.wait_for(Duration::from_secs(10), "first blocks", |s| {
            s.height(0) >= 3
        })
        .await;
        // Split {0, 1} | {2, 3}: neither half has a quorum of 3.
        let across = |i: usize, j: usize| (i < 2) != (j < 2);
        sim.link_all(None, across).await;
        context.sleep(Duration::from_secs(2)).await;
        let frozen: Vec<u64> = (0..N).map(|i| sim.height(i)).collect();
        context.sleep(Duration::from_secs(10)).await;
        for (i, height) in frozen.iter().enumerate() {
            assert_eq!(
                sim.height(i),
                *height,
                "validator {i} finalized during the partition"
            );
        }
        let chain = sim.genesis.chain_id();
        let during = sim.submit(2, pay(&chain, 2, 3, 77, 0)).await.unwrap();
        // Heal: finality resumes and the payment made during the split is final everywhere.
        sim.link_all(Some(link(10, 2, 1.0)), across).await;
        sim.wait_for(Duration::from_secs(60), "finality after healing", |s| {
            (0..N).all(|i| s.applied(i).txs.contains(&during))
        })
        .await;
        sim.assert_agreement(&[0, 1, 2, 3]);
    });
}

#[test]
fn lossy_slow_links_still_reach_agreement() {
    deterministic::Runner::timed(Duration::from_secs(300)).start(|context| async move {
        let mut sim = Sim::new(context, link(80, 40, 0.85)).await;
        for i in 0..N {
            sim.start(i).await;
        }
        let chain = sim.genesis.chain_id();
        let mut hashes = Vec::new();
        for seq in 0..5 {
            hashes.push(
                sim.submit(seq as usize % N, pay(&chain, 1, 2, 5, seq))
                    .await
                    .unwrap(),
            );
        }
        sim.wait_for(Duration::from_secs(120), "payments over lossy links", |s| {
            (0..N).all(|i| hashes.iter().all(|h| s.applied(i).txs.contains(h)))
        })
        .await;
        sim.assert_agreement(&[0, 1, 2, 3]);
    });
}

#[test]
fn an_equivocating_validator_cannot_fork_the_honest_ones() {
    deterministic::Runner::timed(Duration::from_secs(180)).start(|context| async move {
        let mut sim = Sim::new(context.child("sim"), link(10, 2, 1.0)).await;
        // Validator 0 is Byzantine: it signs conflicting notarize/finalize votes for every
        // proposal it sees (Commonware's conflicter), and runs no honest engine.
        let chain = sim.genesis.chain_id();
        let committee = consensus::committee_set(&sim.genesis.validators).unwrap();
        let scheme =
            Scheme::signer(&consensus::namespace(&chain), committee, validator_key(0)).unwrap();
        let channels = sim.channels(0).await;
        // Validators speak on per-epoch subchannels; the equivocator joins epoch 0's.
        let (mux, mut votes) = commonware_p2p::utils::mux::Muxer::new(
            context.child("byzantine_mux"),
            channels.votes.0,
            channels.votes.1,
        );
        mux.start();
        let votes = votes.register(0).await.unwrap();
        simplex::mocks::conflicter::Conflicter::<_, _, commonware_cryptography::Blake3>::new(
            context.child("byzantine"),
            simplex::mocks::conflicter::Config { scheme },
        )
        .start(votes);
        for i in 1..N {
            sim.start(i).await;
        }
        let mut hashes = Vec::new();
        for seq in 0..5 {
            hashes.push(
                sim.submit(1 + seq as usize % 3, pay(&chain, 3, 0, 9, seq))
                    .await
                    .unwrap(),
            );
        }
        sim.wait_for(
            Duration::from_secs(60),
            "payments despite the equivocator",
            |s| (1..N).all(|i| hashes.iter().all(|h| s.applied(i).txs.contains(h))),
        )
        .await;
        sim.assert_agreement(&[1, 2, 3]);
        // The honest validators noticed and blocked the equivocator (and only it).
        let blocked = sim.oracle.blocked().await.unwrap();
        assert!(!blocked.is_empty(), "conflicting votes are detected");
        assert!(blocked.iter().all(|(_, who)| *who == sim.keys[0]));
    });
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let run = |seed: u64| {
        deterministic::Runner::new(
            deterministic::Config::new()
                .with_seed(seed)
                .with_timeout(Some(Duration::from_secs(60))),
        )
        .start(|context| async move {
            let mut sim = Sim::new(context.child("sim"), link(20, 10, 0.95)).await;
            for i in 0..N {
                sim.start(i).await;
            }
            let chain = sim.genesis.chain_id();
            sim.submit(0, pay(&chain, 0, 1, 5, 0)).await.unwrap();
            sim.wait_for(Duration::from_secs(20), "ten blocks", |s| s.height(1) >= 10)
                .await;
            let a = sim.applied(1);
            (a.roots.clone(), context.auditor().state())
        })
    };
    let (roots_a, audit_a) = run(7);
    let (roots_b, audit_b) = run(7);
    assert_eq!(roots_a, roots_b);
    assert_eq!(audit_a, audit_b);
}

#[test]
fn committee_changes_take_effect_at_the_next_epoch() {
    deterministic::Runner::timed(Duration::from_secs(900)).start(|context| async move {
        const L: u64 = 20;
        let mut sim = Sim::with(context, link(10, 2, 1.0), 5, L).await;
        for i in 0..5 {
            sim.start(i).await;
        }
        // Node 4 runs a validator but is not in the genesis committee: it follows.
        sim.feed(4);
        let chain = sim.genesis.chain_id();
        let v = |i: usize| consensus::account_of(&validator_key(i));

        // A change approved by only two of four is refused; three (the quorum) are enough.
        let weak = committee_tx(&chain, CommitteeChange::Add(v(4)), 0, &[0, 1]);
        assert!(sim.submit(0, weak).await.is_err());
        let add = committee_tx(&chain, CommitteeChange::Add(v(4)), 0, &[0, 1, 2]);
        sim.submit(1, add.clone()).await.unwrap();
        sim.wait_for(Duration::from_secs(60), "validator 4 added", |s| {
            (0..5).all(|i| s.applied(i).state.committee.contains(&v(4)))
        })
        .await;
        let added = sim.applied(0);
        assert!(added.txs.contains(&add.hash()));
        assert_eq!(added.state.committee.len(), 5);
        sim.unfeed(4);

        // Five validators: a quorum is four. With validator 1 down, blocks finalize only if
        // validator 4 votes.
        sim.crash(1).await;
        let certificates_before = sim.applied(4).certificates;
        let mut hashes = Vec::new();
        for seq in 0..5 {
            hashes.push(sim.submit(4, pay(&chain, 0, 1, 10, seq)).await.unwrap());
        }
        sim.wait_for(Duration::from_secs(60), "payments with validator 4", |s| {
            [0, 2, 3, 4]
                .iter()
                .all(|&i| hashes.iter().all(|h| s.applied(i).txs.contains(h)))
        })
        .await;
        assert!(
            sim.applied(4).certificates > certificates_before,
            "validator 4's own engine finalizes blocks"
        );

        // Remove validator 1 (approved by four of five) while it is down.
        let remove = committee_tx(&chain, CommitteeChange::Remove(v(1)), 1, &[0, 2, 3, 4]);
        sim.submit(0, remove.clone()).await.unwrap();
        sim.wait_for(Duration::from_secs(120), "validator 1 removed", |s| {
            [0, 2, 3, 4]
                .iter()
                .all(|&i| !s.applied(i).state.committee.contains(&v(1)))
        })
        .await;
        // Committee {0, 2, 3, 4}: a quorum is three, so with validator 2 down as well the
        // others still finalize (under the old committee of five they could not).
        sim.crash(2).await;
        let mut hashes = Vec::new();
        for seq in 0..3 {
            hashes.push(sim.submit(3, pay(&chain, 2, 3, 10, seq)).await.unwrap());
        }
        sim.wait_for(Duration::from_secs(60), "payments after the removal", |s| {
            [0, 3, 4]
                .iter()
                .all(|&i| hashes.iter().all(|h| s.applied(i).txs.contains(h)))
        })
        .await;
        // The removed validator, restarted, follows without voting and agrees.
        sim.start(1).await;
        sim.feed(1);
        let target = sim.height(0);
        sim.wait_for(Duration::from_secs(60), "validator 1 to follow", |s| {
            s.height(1) >= target
        })
        .await;
        sim.assert_agreement(&[0, 1, 3, 4]);
        let a = sim.applied(0);
        assert_eq!(a.state.committee, {
            let mut c = vec![v(0), v(2), v(3), v(4)];
            c.sort();
            c
        });
        assert!(a.state.height > 2 * L, "at least two epochs passed");
    });
}

#[test]
fn a_validator_flooding_blocks_cannot_crowd_out_honest_proposals() {
    use agora_ledger::Block;
    use agora_ledger::consensus::BlockMsg;
    use commonware_p2p::{Recipients, Sender as _};
    use commonware_runtime::IoBuf;

    deterministic::Runner::timed(Duration::from_secs(300)).start(|context| async move {
        let mut sim = Sim::new(context.child("sim"), link(10, 2, 1.0)).await;
        // Validator 0 is Byzantine: it runs no engine and floods the blocks channel with
        // distinct, well-formed but unwanted proposals just above the others' finalized height
        // (new ones all the time, so whatever room finality frees is taken again at once).
        let mut blocks = sim.channels(0).await.blocks.0;
        let watched = sim.validators[1].applied.clone();
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = sent.clone();
        context.child("flood").spawn(move |context| async move {
            let mut n: u64 = 0;
            loop {
                let tip = watched.lock().unwrap().state.height;
                for _ in 0..100 {
                    n += 1;
                    let junk = Block {
                        parent: Hash::of(&n.to_le_bytes()),
                        height: tip + 2 + n % 1_000,
                        timestamp_ms: n,
                        txs: vec![],
                        state_root: Hash([0; 32]),
                    };
                    let bytes = BlockMsg::Proposal(junk).encode();
                    blocks.send(Recipients::All, IoBuf::from(bytes), false);
                }
                counter.store(n, std::sync::atomic::Ordering::Relaxed);
                context.sleep(Duration::from_millis(50)).await;
            }
        });
        for i in 1..N {
            sim.start(i).await;
        }
        // Let the flood run well past the old limit of 4,096 held blocks first.
        while sent.load(std::sync::atomic::Ordering::Relaxed) < 10_000 {
            context.sleep(Duration::from_millis(100)).await;
        }
        let chain = sim.genesis.chain_id();
        let mut hashes = Vec::new();
        for seq in 0..5 {
            hashes.push(
                sim.submit(1 + seq as usize % 3, pay(&chain, 2, 1, 7, seq))
                    .await
                    .unwrap(),
            );
        }
        sim.wait_for(
            Duration::from_secs(60),
            "payments despite the block flood",
            |s| (1..N).all(|i| hashes.iter().all(|h| s.applied(i).txs.contains(h))),
        )
        .await;
        sim.assert_agreement(&[1, 2, 3]);
        // The flood was refused by the flooder's own budget, and what each honest validator
        // holds stays within the budgets: one sender's unsolicited blocks plus what the
        // engines asked for, nowhere near the 10,000+ blocks sent.
        assert!(sim.refusals.count(consensus::BUDGET_UNSOLICITED_BLOCKS) > 1_000);
        for i in 1..N {
            let mailbox = sim.validators[i].running.as_ref().unwrap().mailbox.clone();
            let held = mailbox.held().await.unwrap();
            assert!(
                held.max_unsolicited_per_sender <= consensus::MAX_UNSOLICITED_BLOCKS_PER_SENDER,
                "validator {i}: {held:?}"
            );
            assert!(
                held.blocks <= N * consensus::MAX_UNSOLICITED_BLOCKS_PER_SENDER + 64,
                "validator {i}: {held:?}"
            );
            assert!(
                held.bytes <= N * consensus::MAX_UNSOLICITED_BYTES_PER_SENDER,
                "validator {i}: {held:?}"
            );
        }
    });
}

#[test]
fn relayed_transactions_are_verified_off_the_consensus_thread_and_forged_ones_dropped() {
    use agora_ledger::consensus::BlockMsg;
    use commonware_p2p::{Recipients, Sender as _};
    use commonware_runtime::IoBuf;

    deterministic::Runner::timed(Duration::from_secs(120)).start(|context| async move {
        let mut sim = Sim::new(context.child("sim"), link(10, 2, 1.0)).await;
        for i in 1..N {
            sim.start(i).await;
        }
        // Validator 0 runs no engine; it only relays a batch, as validators do with what
        // their users submit: one good transfer and one with a forged signature.
        let chain = sim.genesis.chain_id();
        let good = pay(&chain, 2, 1, 7, 0);
        let mut forged = pay(&chain, 3, 0, 1_000, 0);
        if let Tx::Account(signed) = &mut forged {
            signed.signature[5] ^= 1;
        }
        let (good_hash, forged_hash) = (good.hash(), forged.hash());
        let mut blocks = sim.channels(0).await.blocks.0;
        let batch = BlockMsg::Txs(vec![forged, good]).encode();
        blocks.send(Recipients::All, IoBuf::from(batch), false);
        sim.wait_for(
            Duration::from_secs(60),
            "the relayed good transfer to be final",
            |s| (1..N).all(|i| s.applied(i).txs.contains(&good_hash)),
        )
        .await;
        // A few more blocks, then: the forged one never made it into any.
        context.sleep(Duration::from_secs(3)).await;
        for i in 1..N {
            assert!(!sim.applied(i).txs.contains(&forged_hash), "validator {i}");
        }
        sim.assert_agreement(&[1, 2, 3]);
    });
}
