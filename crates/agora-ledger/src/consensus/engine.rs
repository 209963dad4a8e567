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
use commonware_utils::channel::mpsc;
use commonware_utils::{NZDuration, NZU16, NZUsize};
use rand_core::CryptoRng;

use super::app::{App, AppConfig, Base, Finalized, Mailbox};
use super::{PrivateKey, PublicKey, Scheme, committee_set, genesis_digest, namespace};
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
        }
    }
}

/// What a running validator hands back: the engine and application tasks, the application's
/// mailbox (to submit transactions) and the stream of finalized blocks.
pub struct Running {
    pub engine: Handle<()>,
    pub app: Handle<()>,
    pub mailbox: Mailbox,
    pub finalized: mpsc::UnboundedReceiver<Finalized>,
}

/// Starts the simplex engine and the ledger application for this validator.
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
    let chain = config.genesis.chain_id();
    let committee = committee_set(&config.base.state.committee)?;
    let me = config.key.public_key();
    let scheme = Scheme::signer(&namespace(&chain), committee, config.key)
        .ok_or_else(|| format!("this node's key {me} is not in the committee"))?;
    let (app, mailbox, finalized) = App::new(config.base, channels.blocks, config.app);
    let leader_timeout = config.leader_timeout;
    let engine = Engine::new(
        context.child("simplex"),
        Config {
            scheme,
            elector: RoundRobin::<commonware_cryptography::Sha256>::default(),
            blocker,
            automaton: mailbox.clone(),
            relay: mailbox.clone(),
            reporter: mailbox.clone(),
            track_historical_votes: false,
            strategy: commonware_parallel::Sequential,
            partition: format!("{}_e0", config.partition_prefix),
            mailbox_size: NZUsize!(1024),
            epoch: Epoch::zero(),
            floor: Floor::Genesis(genesis_digest(&config.genesis)),
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
        },
    );
    let app = app.start(context.child("ledger_app"));
    let engine = engine.start(channels.votes, channels.certificates, channels.resolver);
    Ok(Running {
        engine,
        app,
        mailbox,
        finalized,
    })
}
