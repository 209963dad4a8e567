//! Starting a validator: the simplex engine plus the ledger application, on any Commonware
//! runtime and any transport that implements Commonware's p2p traits.

use std::num::NonZeroUsize;
use std::time::Duration;

use commonware_consensus::simplex::elector::RoundRobin;
use commonware_consensus::simplex::{Config, Engine, Floor, ForwardPolicy, SkipBudget, SkipPolicy};
use commonware_consensus::types::{Epoch, ViewDelta};
use commonware_cryptography::Signer as _;
use commonware_p2p::{Blocker, Receiver, Sender};
use commonware_runtime::buffer::paged::CacheRef;
use commonware_runtime::{Clock, Handle, Metrics, Spawner, Storage};
use commonware_utils::channel::{mpsc, watch};
use commonware_utils::{NZDuration, NZU16, NZUsize};
use rand_core::CryptoRng;

use commonware_p2p::utils::mux::Muxer;
use tracing::{debug, info, warn};

use super::app::{App, AppConfig, Base, EpochStart, Finalized, Mailbox};
use super::{PrivateKey, PublicKey, Scheme, committee_set, digest, namespace};
use crate::state::Genesis;

/// The four (sender, receiver) pairs a validator talks over.
pub struct Channels<S, R> {
    pub votes: (S, R),
    pub certificates: (S, R),
    pub resolver: (S, R),
    pub blocks: (S, R),
}

pub struct ValidatorConfig {
    pub genesis: Genesis,
    pub key: PrivateKey,
    /// The last finalized block this node applied (genesis on first start).
    pub base: Base,
    /// Prefix of the engine's journal partition (`[A-Za-z0-9_-]`); one journal per epoch.
    pub partition_prefix: String,
    pub app: AppConfig,
    /// How long to wait for a leader's proposal before voting to skip the view.
    pub leader_timeout: Duration,
    /// Told each new epoch's committee (the node points its transport at it).
    pub on_committee: Option<OnCommittee>,
    /// Where the application counts what its admission budgets refuse (the node's
    /// `agora_refusals_total`); `None` counts nowhere.
    pub refusals: Option<agora_net::Refusals>,
}

impl ValidatorConfig {
    pub fn new(genesis: Genesis, key: PrivateKey, base: Base) -> Self {
        ValidatorConfig {
            genesis,
            key,
            base,
            partition_prefix: "agora_ledger".into(),
            app: AppConfig::default(),
            leader_timeout: Duration::from_secs(1),
            on_committee: None,
            refusals: None,
        }
    }
}

/// Called with the committee of each epoch this validator enters (the transport connects to
/// exactly those peers).
pub type OnCommittee = std::sync::Arc<dyn Fn(&[PublicKey]) + Send + Sync>;

/// What a running validator hands back: the orchestrator (which runs one simplex engine per
/// epoch) and application tasks, the application's mailbox (to submit transactions) and the
/// stream of finalized blocks.
pub struct Running {
    pub engine: Handle<()>,
    pub app: Handle<()>,
    pub mailbox: Mailbox,
    /// Bounded ([`FINALIZED_OUTPUT`](super::app::FINALIZED_OUTPUT)): consensus waits for the
    /// node to take them.
    pub finalized: mpsc::Receiver<Finalized>,
}

/// Starts the ledger application and the orchestrator that runs the simplex engine for each
/// epoch whose committee includes this validator.
///
/// Epochs follow Commonware's orchestrator pattern: when the application finalizes an epoch's
/// last block, the orchestrator aborts that epoch's engine and starts the next one with the new
/// committee, `Floor::Genesis(last block)`, its own journal partition and its own subchannels
/// (the votes, certificates and resolver channels are muxed by epoch, so a message from a
/// validator already in the next epoch is never mistaken for misbehaviour in this one). While
/// this validator is outside the committee it runs no engine and waits: the node feeds the
/// application the blocks it follows (`Mailbox::advance`).
pub fn start_validator<E, S, R, B>(
    context: E,
    config: ValidatorConfig,
    channels: Channels<S, R>,
    blocker: B,
) -> Result<Running, String>
where
    E: Clock + CryptoRng + Spawner + Storage + Metrics,
    S: Sender<PublicKey = PublicKey>,
    R: Receiver<PublicKey = PublicKey>,
    B: Blocker<PublicKey = PublicKey>,
{
    // Refuse a committee that is not made of keys before anything starts.
    committee_set(&config.base.state.committee)?;
    let (app, mailbox, finalized, epochs) =
        App::new(config.base, channels.blocks, config.app, config.refusals);
    let orchestrator = Orchestrator {
        namespace: namespace(&config.genesis.chain_id()),
        key: config.key,
        partition_prefix: config.partition_prefix,
        leader_timeout: config.leader_timeout,
        on_committee: config.on_committee,
        automaton: mailbox.clone(),
        blocker,
    };
    let app = app.start(context.child("ledger_app"));
    let engine = context.child("orchestrator").spawn(move |context| {
        orchestrator.run(
            context,
            epochs,
            channels.votes,
            channels.certificates,
            channels.resolver,
        )
    });
    Ok(Running {
        engine,
        app,
        mailbox,
        finalized,
    })
}

struct Orchestrator<B> {
    namespace: Vec<u8>,
    key: PrivateKey,
    partition_prefix: String,
    leader_timeout: Duration,
    on_committee: Option<OnCommittee>,
    automaton: Mailbox,
    blocker: B,
}

impl<B: Blocker<PublicKey = PublicKey>> Orchestrator<B> {
    fn partition(&self, epoch: u64) -> String {
        format!("{}_e{epoch}", self.partition_prefix)
    }

    async fn run<E, S, R>(
        self,
        context: E,
        mut epochs: watch::Receiver<Option<EpochStart>>,
        votes: (S, R),
        certificates: (S, R),
        resolver: (S, R),
    ) where
        E: Clock + CryptoRng + Spawner + Storage + Metrics,
        S: Sender<PublicKey = PublicKey>,
        R: Receiver<PublicKey = PublicKey>,
    {
        let (votes_mux, mut votes) = Muxer::new(context.child("votes_mux"), votes.0, votes.1);
        let (certificates_mux, mut certificates) = Muxer::new(
            context.child("certificates_mux"),
            certificates.0,
            certificates.1,
        );
        let (resolver_mux, mut resolver) =
            Muxer::new(context.child("resolver_mux"), resolver.0, resolver.1);
        votes_mux.start();
        certificates_mux.start();
        resolver_mux.start();
        let me = self.key.public_key();
        let mut current: Option<(u64, Handle<()>)> = None;
        // Only the newest epoch start matters (an engine for an older epoch would be aborted
        // at once), so the application keeps just that one for us.
        while epochs.changed().await.is_ok() {
            let Some(start) = epochs.borrow_and_update().clone() else {
                continue;
            };
            if current.as_ref().is_some_and(|(e, _)| *e >= start.epoch) {
                continue;
            }
            if let Some((epoch, engine)) = current.take() {
                engine.abort();
                let _ = engine.await;
                // The finished epoch's votes are worthless now: its last block is final.
                if let Err(error) = context.remove(&self.partition(epoch), None).await {
                    debug!(epoch, %error, "cannot remove the finished epoch's journal");
                }
            }
            let committee = match committee_set(&start.committee) {
                Ok(committee) => committee,
                Err(error) => {
                    warn!(epoch = start.epoch, %error, "unusable committee; not validating");
                    continue;
                }
            };
            if let Some(on_committee) = &self.on_committee {
                on_committee(committee.as_ref());
            }
            let Some(scheme) = Scheme::signer(&self.namespace, committee, self.key.clone()) else {
                info!(
                    epoch = start.epoch,
                    "not in this epoch's committee: following until added"
                );
                continue;
            };
            // Journals of epochs that ended while this node was down.
            if start.epoch > 0 {
                let _ = context.remove(&self.partition(start.epoch - 1), None).await;
            }
            let subchannel = start.epoch;
            let (Ok(votes), Ok(certificates), Ok(resolver)) = (
                votes.register(subchannel).await,
                certificates.register(subchannel).await,
                resolver.register(subchannel).await,
            ) else {
                warn!(epoch = start.epoch, "cannot open the epoch's channels");
                return;
            };
            info!(epoch = start.epoch, floor = %start.floor, %me, "starting consensus for epoch");
            let engine = Engine::new(
                context
                    .child("simplex")
                    .with_attribute("epoch", start.epoch),
                self.engine_config(scheme, start.epoch, start.floor),
            );
            let handle = engine.start(votes, certificates, resolver);
            current = Some((start.epoch, handle));
        }
    }

    fn engine_config(
        &self,
        scheme: Scheme,
        epoch: u64,
        floor: crate::Hash,
    ) -> Config<
        Scheme,
        RoundRobin<commonware_cryptography::Sha256>,
        B,
        commonware_cryptography::blake3::Digest,
        Mailbox,
        Mailbox,
        Mailbox,
        commonware_parallel::Sequential,
    > {
        let leader_timeout = self.leader_timeout;
        Config {
            scheme,
            elector: RoundRobin::<commonware_cryptography::Sha256>::default(),
            blocker: self.blocker.clone(),
            automaton: self.automaton.clone(),
            relay: self.automaton.clone(),
            reporter: self.automaton.clone(),
            track_historical_votes: false,
            strategy: commonware_parallel::Sequential,
            partition: self.partition(epoch),
            mailbox_size: NZUsize!(1024),
            epoch: Epoch::new(epoch),
            floor: Floor::Genesis(digest(floor)),
            replay_buffer: NZUsize!(1 << 20),
            write_buffer: NZUsize!(1 << 20),
            page_cache: CacheRef::new(NZU16!(4096), NonZeroUsize::new(256).unwrap()),
            leader_timeout,
            certification_timeout: leader_timeout * 2,
            timeout_retry: leader_timeout * 5,
            view_retention: ViewDelta::new(64),
            skip: SkipPolicy::Enabled {
                timeout: leader_timeout * 10,
                budget: SkipBudget::Participants,
            },
            fetch_timeout: NZDuration!(Duration::from_secs(1)),
            fetch_retry_delay: Duration::from_millis(100),
            forward: ForwardPolicy::SilentVoters,
        }
    }
}
