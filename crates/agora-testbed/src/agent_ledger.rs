//! The ledger attacks of `agora-testbed agent-hostile`. The attacker's identity key is a member
//! of the ledger committee (the scenario writes it into the genesis), so it speaks the real
//! consensus transport (`agora-consensus-net`, `/agora/consensus/1.0.0`) and the honest
//! validators accept its streams:
//!
//! - **One Byzantine validator** floods the consensus blocks channel with unsolicited,
//!   well-formed block proposals (random parents, heights just above the finalized tip, ~4 KiB
//!   of junk transfers each), bounded in count and time.
//! - **Submission flood**: concurrent `SubmitMany` batches of signed transfers and `Submit`s
//!   of ~3 MiB at one validator, past its per-peer transaction and byte budgets.
//! - **Lying sync peer**: it serves `/agora/ledger/1.0.0` itself, claims a height a million
//!   blocks above the honest tip and answers `Blocks` with junk that links to the asker's tip:
//!   in turn a long uncertified run (the asker must leave it at its run budget) and a run
//!   whose last block carries a real certificate of another block (which must not verify).
//!
//! Everything is bounded; the counts go into the agent's JSON summaries.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agora_consensus_net::{ChannelSender, Transport};
use agora_ledger::consensus::{BlockMsg, CHANNEL_BLOCKS};
use agora_ledger::service::wire::{MAX_BLOCKS_PER_REQUEST, Request, Response, decode, encode};
use agora_ledger::service::{PROTOCOL, StoredBlock};
use agora_ledger::{Account, AccountTx, Action, Block, Hash, SignedAccountTx, Tx};
use agora_net::{Handle, InboundRequest, PeerId};
use anyhow::{Context, Result};
use commonware_p2p::{Recipients, Sender as _};
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(5);
/// How far above the honest tip the liar claims to be.
const CLAIMED_LEAD: u64 = 1_000_000;
/// Junk digests remembered to link the next answer of a session to the previous one.
const MAX_JUNK_REMEMBERED: usize = 8_192;

fn seeded_key(i: u64) -> SigningKey {
    let seed = blake3::hash(format!("agora-testbed-mallory-{i}").as_bytes());
    SigningKey::from_bytes(seed.as_bytes())
}

fn random_hash(n: u64, salt: &str) -> Hash {
    Hash(*blake3::hash(format!("{salt}-{n}-{:?}", Instant::now()).as_bytes()).as_bytes())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Well-formed transfers that no one signed (~420 bytes each): padding for junk blocks.
fn junk_txs(n: u64, count: usize) -> Vec<Tx> {
    (0..count)
        .map(|i| {
            Tx::Account(SignedAccountTx {
                body: AccountTx {
                    from: Account(random_hash(n * 64 + i as u64, "from").0),
                    seq: n,
                    fee: 1,
                    action: Action::Transfer {
                        to: Account(random_hash(n, "to").0),
                        amount: 1,
                        memo: Some("j".repeat(agora_ledger::tx::MAX_MEMO)),
                    },
                },
                signature: [0x5a; 64],
            })
        })
        .collect()
}

#[derive(Default)]
struct Liar {
    /// The chain id, learnt from an honest validator.
    chain: Mutex<Option<Hash>>,
    /// Height → digest of the junk served, to link a session's next answer to its last one.
    junk: Mutex<HashMap<u64, Hash>>,
    /// Per asker: how many `Status` requests it sent (its session's mode alternates with it)
    /// and how many junk blocks it was served.
    askers: Mutex<HashMap<PeerId, (u64, u64)>>,
    statuses: AtomicU64,
    block_requests: AtomicU64,
    junk_blocks: AtomicU64,
    forged_certificates: AtomicU64,
}

pub struct LedgerAttack {
    net: Handle,
    validators: Vec<PeerId>,
    transport: Transport,
    blocks: ChannelSender,
    liar: Arc<Liar>,
}

async fn ask(net: &Handle, peer: PeerId, request: &Request) -> Result<Response> {
    let bytes = net
        .request(peer, PROTOCOL, encode(request), TIMEOUT)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    decode(&bytes).context("malformed ledger answer")
}

/// The first honest validator's (chain, height).
async fn honest_status(net: &Handle, validators: &[PeerId]) -> Option<(Hash, u64)> {
    for v in validators {
        if let Ok(Response::Status { chain, height, .. }) = ask(net, *v, &Request::Status).await {
            return Some((chain, height));
        }
    }
    None
}

impl LedgerAttack {
    /// Joins the consensus transport as a committee member and starts serving the ledger
    /// protocol as a liar. Inside the agent's tokio runtime.
    pub fn start(net: &Handle, validators: &[PeerId]) -> Result<Self> {
        let mut committee: Vec<_> = validators
            .iter()
            .filter_map(agora_consensus_net::public_key)
            .collect();
        committee.extend(agora_consensus_net::public_key(&net.local_peer_id()));
        let (transport, mut channels, _blocker) = Transport::start(
            net.clone(),
            committee,
            agora_consensus_net::Config::new(vec![CHANNEL_BLOCKS]),
        );
        let (blocks, _rx) = channels
            .remove(&CHANNEL_BLOCKS)
            .context("no blocks channel")?;
        let liar = Arc::new(Liar::default());
        let (tx, mut rx) = tokio::sync::mpsc::channel::<InboundRequest>(64);
        net.serve(PROTOCOL, tx)
            .map_err(|e| anyhow::anyhow!("cannot serve {PROTOCOL}: {e}"))?;
        {
            let (net, validators, liar) = (net.clone(), validators.to_vec(), liar.clone());
            tokio::spawn(async move {
                while let Some(req) = rx.recv().await {
                    let (net, validators, liar) = (net.clone(), validators.clone(), liar.clone());
                    tokio::spawn(async move {
                        let answer = liar.answer(&net, &validators, req.peer, &req.data).await;
                        let _ = req.reply.send(encode(&answer));
                    });
                }
            });
        }
        Ok(Self {
            net: net.clone(),
            validators: validators.to_vec(),
            transport,
            blocks,
            liar,
        })
    }

    /// Floods the blocks channel with `count` unsolicited proposals over `over`, to every other
    /// committee member.
    pub async fn flood_proposals(&self, count: u64, over: Duration) -> Value {
        const TICKS: u64 = 100;
        let per_tick = count.div_ceil(TICKS);
        let tick = over / TICKS as u32;
        let started = Instant::now();
        let (mut sent, mut queued, mut tip) = (0u64, 0usize, 0u64);
        let mut sender = self.blocks.clone();
        let mut bytes = 0usize;
        for t in 0..TICKS {
            if t % 5 == 0
                && let Some((_, h)) = honest_status(&self.net, &self.validators).await
            {
                tip = h;
            }
            for _ in 0..per_tick {
                if sent >= count {
                    break;
                }
                sent += 1;
                let junk = Block {
                    parent: random_hash(sent, "parent"),
                    // Within what validators hold (up to 1,024 above their finalized tip).
                    height: tip + 2 + sent % 1_000,
                    timestamp_ms: now_ms(),
                    txs: junk_txs(sent, 10),
                    state_root: random_hash(sent, "root"),
                };
                let message = BlockMsg::Proposal(junk).encode();
                bytes += message.len();
                queued += sender.send(Recipients::All, message, false).len();
            }
            let next = tick * (t as u32 + 1);
            if let Some(wait) = next.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        json!({
            "proposals_sent": sent,
            "proposal_sends_queued": queued,
            "proposal_bytes": bytes,
            "flood_secs": started.elapsed().as_secs_f64(),
        })
    }

    /// Floods one validator with submissions past its per-peer budgets.
    pub async fn flood_submissions(&self) -> Value {
        let target = self.validators[1 % self.validators.len()];
        let Some((chain, _)) = honest_status(&self.net, &self.validators).await else {
            return json!({"error": "no honest validator answered"});
        };
        // 1,000 transfers from unfunded keys, validly signed: each admitted batch costs the
        // validator 1,000 signature checks.
        let to = Account(
            agora_consensus_net::public_key(&target)
                .map(|k| {
                    let mut a = [0u8; 32];
                    a.copy_from_slice(k.as_ref());
                    a
                })
                .unwrap_or_default(),
        );
        let batch: Vec<Vec<u8>> = (0..agora_ledger::service::wire::MAX_SUBMIT_BATCH as u64)
            .map(|i| {
                let key = seeded_key(i);
                Tx::Account(
                    AccountTx {
                        from: Account::from_key(&key.verifying_key()),
                        seq: 0,
                        fee: 1,
                        action: Action::Transfer {
                            to,
                            amount: 1,
                            memo: None,
                        },
                    }
                    .sign(&key, &chain),
                )
                .encode()
            })
            .collect();
        let mut counts: HashMap<String, u64> = HashMap::new();
        let mut tally = |outcome: Result<Vec<u8>, agora_net::Error>| {
            let key = match outcome {
                Ok(answer) => match decode::<Response>(&answer) {
                    Some(Response::SubmittedMany(_)) | Some(Response::Submitted(_)) => {
                        "answered".to_owned()
                    }
                    _ => "other".to_owned(),
                },
                Err(agora_net::Error::Refused(reason)) => format!("refused {reason}"),
                Err(_) => "failed".to_owned(),
            };
            *counts.entry(key).or_default() += 1;
        };
        let many = encode(&Request::SubmitMany(batch));
        for _ in 0..3 {
            let round = futures::future::join_all((0..8).map(|_| {
                self.net
                    .request(target, PROTOCOL, many.clone(), Duration::from_secs(20))
            }))
            .await;
            round.into_iter().for_each(&mut tally);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // Single submissions of 3.5 MiB each (undecodable as a transaction), 8 at once: 28 MiB
        // against a byte budget of 8 MiB/s with a burst of 8 MiB.
        let big = encode(&Request::Submit(crate::agent::noise(7 << 19, 99)));
        let round = futures::future::join_all(
            (0..8).map(|_| self.net.request(target, PROTOCOL, big.clone(), TIMEOUT)),
        )
        .await;
        round.into_iter().for_each(&mut tally);
        let count = |k: &str| counts.get(k).copied().unwrap_or(0);
        json!({
            "submit_target": target.to_string(),
            "submit_requests": 32,
            "submit_answered": count("answered"),
            "submit_refused_txs": count("refused ledger.submit_peer_txs"),
            "submit_refused_bytes": count("refused ledger.submit_peer_bytes"),
            "submit_outcomes": counts,
        })
    }

    /// What the lying sync server did, per asker too.
    pub fn liar_summary(&self) -> Value {
        let askers: serde_json::Map<String, Value> = self
            .liar
            .askers
            .lock()
            .unwrap()
            .iter()
            .map(|(p, (statuses, blocks))| {
                (
                    p.to_string(),
                    json!({"statuses": statuses, "junk_blocks": blocks}),
                )
            })
            .collect();
        json!({
            "status_answered": self.liar.statuses.load(Ordering::Relaxed),
            "block_requests": self.liar.block_requests.load(Ordering::Relaxed),
            "junk_blocks_served": self.liar.junk_blocks.load(Ordering::Relaxed),
            "forged_certificates_served": self.liar.forged_certificates.load(Ordering::Relaxed),
            "askers": askers,
        })
    }

    pub fn shutdown(&self) {
        self.transport.shutdown();
    }
}

impl Liar {
    async fn answer(
        &self,
        net: &Handle,
        validators: &[PeerId],
        peer: PeerId,
        data: &[u8],
    ) -> Response {
        match decode::<Request>(data) {
            Some(Request::Status) => {
                self.statuses.fetch_add(1, Ordering::Relaxed);
                let Some((chain, height)) = honest_status(net, validators).await else {
                    return Response::Error("busy".into());
                };
                *self.chain.lock().unwrap() = Some(chain);
                {
                    let mut askers = self.askers.lock().unwrap();
                    if askers.len() >= 256 && !askers.contains_key(&peer) {
                        askers.clear();
                    }
                    askers.entry(peer).or_default().0 += 1;
                }
                Response::Status {
                    chain,
                    height: height + CLAIMED_LEAD,
                    digest: random_hash(height, "tip"),
                    validator: true,
                }
            }
            Some(Request::Blocks { from, max }) => {
                self.block_requests.fetch_add(1, Ordering::Relaxed);
                let n = max.clamp(1, MAX_BLOCKS_PER_REQUEST) as u64;
                let forged = self
                    .askers
                    .lock()
                    .unwrap()
                    .get(&peer)
                    .is_some_and(|(s, _)| s % 2 == 0);
                let known = self.junk.lock().unwrap().get(&(from.max(1) - 1)).copied();
                let (mut parent, certificate) = match known {
                    Some(d) => (d, None),
                    None => self.honest_parent(net, validators, from).await,
                };
                let mut blocks = Vec::new();
                for height in from.max(1)..from.max(1) + n {
                    let block = Block {
                        parent,
                        height,
                        timestamp_ms: now_ms(),
                        txs: junk_txs(height, 2),
                        state_root: random_hash(height, "sync-root"),
                    };
                    let encoded = block.encode();
                    parent = Hash::of(&encoded);
                    {
                        let mut junk = self.junk.lock().unwrap();
                        if junk.len() >= MAX_JUNK_REMEMBERED {
                            junk.clear();
                        }
                        junk.insert(height, parent);
                    }
                    blocks.push(StoredBlock {
                        block: encoded,
                        certificate: None,
                    });
                }
                if forged && let Some(last) = blocks.last_mut() {
                    // A real certificate, of another block: it must not verify for this one.
                    last.certificate =
                        Some(certificate.unwrap_or_else(|| crate::agent::noise(200, from)));
                    self.forged_certificates.fetch_add(1, Ordering::Relaxed);
                }
                self.junk_blocks
                    .fetch_add(blocks.len() as u64, Ordering::Relaxed);
                if let Some(a) = self.askers.lock().unwrap().get_mut(&peer) {
                    a.1 += blocks.len() as u64;
                }
                Response::Blocks(blocks)
            }
            Some(Request::Submit(_) | Request::SubmitMany(_)) => {
                Response::Error("this node is not a validator".into())
            }
            None => Response::Error("malformed request".into()),
        }
    }

    /// The digest of the honest block at `from - 1` (so the junk links to the asker's tip) and
    /// the certificate of some honest block, if one is at hand.
    async fn honest_parent(
        &self,
        net: &Handle,
        validators: &[PeerId],
        from: u64,
    ) -> (Hash, Option<Vec<u8>>) {
        let chain = self.chain.lock().unwrap().unwrap_or_default();
        let below = from.max(1) - 1;
        for v in validators {
            let request = Request::Blocks {
                from: below.max(1),
                max: 8,
            };
            if let Ok(Response::Blocks(blocks)) = ask(net, *v, &request).await {
                let certificate = blocks.iter().find_map(|b| b.certificate.clone());
                let parent = if below == 0 {
                    Some(chain)
                } else {
                    blocks
                        .first()
                        .and_then(|b| Block::decode(&b.block).ok())
                        .filter(|b| b.height == below)
                        .map(|b| b.digest())
                };
                if let Some(parent) = parent {
                    return (parent, certificate);
                }
            }
        }
        (random_hash(from, "unknown-parent"), None)
    }
}
