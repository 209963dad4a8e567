//! Committee changes and the validator engine: approvals, submitting a change, and starting
//! and stopping the simplex engine (each epoch's engine talks to that epoch's committee), whose
//! finalized blocks are applied here and announced on the gossip topic.

use std::sync::Arc;
use std::time::Duration;

use commonware_codec::Encode as _;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::{Config, Ledger, LedgerError, ValidatorHandle};
use crate::account::Account;
use crate::consensus::{
    self, Base, CHANNEL_BLOCKS, CHANNEL_CERTIFICATES, CHANNEL_RESOLVER, CHANNEL_VOTES, Channels,
    ValidatorConfig,
};
use crate::state::State;
use crate::tx::{Approval, CommitteeChange, CommitteeTx, Hash, Tx};

/// How often a validator's copy of the engine's metrics is refreshed.
const METRICS_REFRESH: Duration = Duration::from_secs(1);

/// A finalized committee change.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CommitteeChanged {
    pub hash: Hash,
    pub height: u64,
    /// The first epoch (and its first block) ordered by the changed committee.
    pub effective_epoch: u64,
    pub effective_height: u64,
    pub next_committee: Vec<Account>,
}

impl Ledger {
    /// This validator's approval of `change` at the current committee nonce. Only approvals
    /// of the current committee's members count, so other nodes are refused.
    pub fn approve_committee_change(
        &self,
        change: &CommitteeChange,
    ) -> Result<(Approval, u64), LedgerError> {
        let inner = self.inner.lock().unwrap();
        if !inner.state.committee.contains(&self.account) {
            return Err(LedgerError::Rejected(format!(
                "this node's account {} is not in the current committee: only its members' \
                 approvals count",
                self.account
            )));
        }
        check_change_useful(&inner.state, change)?;
        let nonce = inner.state.committee_nonce;
        Ok((
            CommitteeTx::approve(change, nonce, &self.key, &self.chain),
            nonce,
        ))
    }

    /// Submits a committee change with the current members' approvals and waits until it is
    /// final. It takes effect at the start of the next epoch.
    pub async fn change_committee(
        &self,
        change: CommitteeChange,
        approvals: Vec<Approval>,
    ) -> Result<CommitteeChanged, LedgerError> {
        let mut tips = self.tip.subscribe();
        let (tx, nonce) = {
            let inner = self.inner.lock().unwrap();
            check_change_useful(&inner.state, &change)?;
            let nonce = inner.state.committee_nonce;
            let tx = Tx::Committee(CommitteeTx {
                change,
                nonce,
                approvals,
            });
            inner.state.check(&tx, false)?;
            (tx, nonce)
        };
        let hash = tx.hash();
        self.submit(tx).await?;
        let height = self
            .wait_final(&hash, &mut tips, || {
                let inner = self.inner.lock().unwrap();
                (inner.state.committee_nonce > nonce).then(|| {
                    LedgerError::Rejected(format!(
                        "another committee change used nonce {nonce} first; approve again"
                    ))
                })
            })
            .await?;
        let inner = self.inner.lock().unwrap();
        let epoch_length = inner.state.epoch_length;
        let effective_epoch = inner.state.epoch_of(height) + 1;
        Ok(CommitteeChanged {
            hash,
            height,
            effective_epoch,
            effective_height: effective_epoch * epoch_length + 1,
            next_committee: inner.state.next_committee.clone(),
        })
    }

    // ---- the validator engine ----

    pub(super) async fn start_validator(
        self: &Arc<Self>,
        config: &Config,
        secret: &[u8; 32],
    ) -> Result<(), LedgerError> {
        let base = {
            let inner = self.inner.lock().unwrap();
            if !inner.state.committee.contains(&self.account) {
                info!(
                    account = %self.account,
                    "--validator: this account is not in the current committee; following the \
                     ledger until a committee change adds it"
                );
            }
            Base {
                state: inner.state.clone(),
                digest: inner.digest,
                timestamp_ms: inner.timestamp_ms,
                epoch_start: inner.epoch_start,
            }
        };
        let committee_keys: Vec<_> = base
            .state
            .committee
            .iter()
            .filter_map(consensus::public_key)
            .collect();
        let (transport, mut channels, blocker) = agora_consensus_net::Transport::start(
            self.net.clone(),
            committee_keys,
            agora_consensus_net::Config {
                channels: vec![
                    CHANNEL_VOTES,
                    CHANNEL_CERTIFICATES,
                    CHANNEL_RESOLVER,
                    CHANNEL_BLOCKS,
                ],
                ..Default::default()
            },
        );
        let mut take = |c| channels.remove(&c).expect("channel configured above");
        let channels = Channels {
            votes: take(CHANNEL_VOTES),
            certificates: take(CHANNEL_CERTIFICATES),
            resolver: take(CHANNEL_RESOLVER),
            blocks: take(CHANNEL_BLOCKS),
        };
        let mut validator_config =
            ValidatorConfig::new(self.genesis.clone(), consensus::private_key(secret), base);
        validator_config.app = config.app;
        validator_config.leader_timeout = config.leader_timeout;
        validator_config.refusals = Some(self.net.admission().clone());
        {
            // Each epoch's engine talks to that epoch's committee.
            let transport = transport.clone();
            validator_config.on_committee = Some(Arc::new(move |committee: &[_]| {
                transport.set_committee(committee.to_vec());
            }));
        }
        std::fs::create_dir_all(&config.consensus_dir).map_err(|e| {
            LedgerError::Validator(format!(
                "cannot create {}: {e}",
                config.consensus_dir.display()
            ))
        })?;
        let runtime_config = commonware_runtime::tokio::Config::new()
            .with_storage_directory(config.consensus_dir.clone())
            .with_worker_threads(2);
        let (ready_tx, ready_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let metrics = self.consensus_metrics.clone();
        let thread = std::thread::Builder::new()
            .name("agora-consensus".into())
            .spawn(move || {
                use commonware_runtime::{
                    Clock as _, Metrics as _, Runner as _, Spawner as _, Supervisor as _,
                };
                commonware_runtime::tokio::Runner::new(runtime_config).start(|context| async move {
                    match consensus::start_validator(
                        context.child("ledger"),
                        validator_config,
                        channels,
                        blocker,
                    ) {
                        Ok(running) => {
                            let _ = ready_tx.send(Ok((running.mailbox, running.finalized)));
                            // The engine's own metrics (votes, views, timeouts, journal) live
                            // in this runtime's registry: refresh the node's copy every second.
                            let mut stop_rx = stop_rx;
                            loop {
                                *metrics.lock().unwrap() = context.encode();
                                tokio::select! {
                                    _ = &mut stop_rx => break,
                                    _ = context.sleep(METRICS_REFRESH) => {}
                                }
                            }
                            let _ = context.stop(0, Some(Duration::from_secs(5))).await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                })
            })
            .map_err(|e| LedgerError::Validator(format!("cannot start consensus thread: {e}")))?;
        let (mailbox, finalized) = match ready_rx.await {
            Ok(Ok(ready)) => ready,
            Ok(Err(e)) => return Err(LedgerError::Validator(e)),
            Err(_) => {
                return Err(LedgerError::Validator(
                    "consensus thread died at start".into(),
                ));
            }
        };
        *self.validator.lock().unwrap() = Some(ValidatorHandle {
            mailbox,
            stop: Some(stop_tx),
            thread: Some(thread),
            transport,
        });
        tokio::spawn(Self::finalized_loop(Arc::downgrade(self), finalized));
        info!("validating: consensus engine started");
        Ok(())
    }

    /// Stops consensus (if running) and waits for its thread.
    pub async fn shutdown(&self) {
        let handle = self.validator.lock().unwrap().take();
        if let Some(mut handle) = handle {
            if let Some(stop) = handle.stop.take() {
                let _ = stop.send(());
            }
            if let Some(thread) = handle.thread.take() {
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            }
            handle.transport.shutdown();
        }
        // What this node finalized is written before it stops.
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!("ledger blocks not written at shutdown: {e}"),
            Err(e) => warn!("ledger store flush failed: {e}"),
        }
    }

    /// Blocks the own consensus engine finalized: already executed and checked by it.
    async fn finalized_loop(
        ledger: std::sync::Weak<Self>,
        mut finalized: commonware_utils::channel::mpsc::Receiver<consensus::Finalized>,
    ) {
        while let Some(f) = finalized.recv().await {
            let Some(ledger) = ledger.upgrade() else {
                return;
            };
            let certificate = f.finalization.as_ref().map(|c| c.encode().to_vec());
            let height = f.block.height;
            let announce = certificate.clone().filter(|_| ledger.announces(height));
            let block_bytes = f.block.encode();
            let result = {
                let ledger = ledger.clone();
                let block = f.block;
                let digest = f.digest;
                let executed = f.executed;
                tokio::task::spawn_blocking(move || {
                    ledger.apply_executed(vec![(block, digest, certificate)], executed, false)
                })
                .await
            };
            if let Ok(Err(e)) = result {
                warn!("cannot store finalized block {height}: {e}");
            }
            if let Some(certificate) = announce {
                ledger
                    .announce(height, f.digest, certificate, block_bytes)
                    .await;
            }
        }
    }
}

/// Refuses a change that would do nothing, with a reason a user understands.
fn check_change_useful(state: &State, change: &CommitteeChange) -> Result<(), LedgerError> {
    let problem = match change {
        CommitteeChange::Add(v) if !v.is_usable() => {
            Some(format!("{v} is not a usable ed25519 key"))
        }
        CommitteeChange::Add(v) if state.next_committee.contains(v) => {
            Some(format!("{v} is already in the committee"))
        }
        CommitteeChange::Remove(v) if !state.next_committee.contains(v) => {
            Some(format!("{v} is not in the committee"))
        }
        CommitteeChange::Remove(_) if state.next_committee.len() == 1 => {
            Some("the last validator cannot be removed".into())
        }
        _ => None,
    };
    match problem {
        Some(problem) => Err(LedgerError::Rejected(problem)),
        None => Ok(()),
    }
}
