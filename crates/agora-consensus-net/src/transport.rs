//! The transport: committee bookkeeping, the writer task per peer, the accept loop and the
//! reader task per inbound stream.
//!
//! All shared state sits behind one `std` mutex that is never held across an `.await`, so the
//! consensus side (another runtime, another thread) can take it from synchronous trait methods.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    num::NonZeroUsize,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use commonware_actor::Feedback;
use commonware_p2p::{BlockedSubscription, Recipients};
use commonware_runtime::IoBuf;
use commonware_utils::{channel::ring, ordered::Set};
use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use libp2p::{PeerId, Stream};
use tokio::{task::AbortHandle, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::fair::FairQueue;
use crate::{
    ChannelReceiver, ChannelSender, Config, MAX_QUEUED_BYTES_PER_CHANNEL,
    MAX_QUEUED_BYTES_PER_PEER, MAX_STREAMS_PER_PEER, PROTOCOL, PublicKey,
    channel::Blocker,
    outbox::{Item, Outbox},
    peer_id, public_key, wire,
};

/// First wait before reopening a broken stream; doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long `Handle::connect` (routing table, then DHT lookup) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long opening and negotiating a stream may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one frame (or a flush) may take to write before the stream counts as stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Consensus channels over the node's libp2p swarm; see the crate docs.
///
/// Cloning gives another handle to the same transport. Dropping the handles does **not** stop
/// it: call [`Transport::shutdown`].
#[derive(Clone)]
pub struct Transport {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("local", &self.shared.local)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Starts the transport for `committee` (our own key may be in it; we never send to
    /// ourselves) and returns a sender and receiver per channel of `config.channels`, and the
    /// blocker.
    ///
    /// Must be called inside the node's tokio runtime; spawns its tasks there (panics
    /// otherwise, like `tokio::spawn`).
    pub fn start(
        net: agora_net::Handle,
        committee: Vec<PublicKey>,
        config: Config,
    ) -> (
        Transport,
        BTreeMap<u64, (ChannelSender, ChannelReceiver)>,
        Blocker,
    ) {
        let rt = tokio::runtime::Handle::current();
        let local = public_key(&net.local_peer_id());
        if local.is_none() {
            tracing::warn!(
                peer = %net.local_peer_id(),
                "the node's identity is not an ed25519 key; it cannot be a consensus member"
            );
        }
        let max_message = config.max_message.min(u32::MAX as usize - wire::MAX_HEADER);
        let capacity = NonZeroUsize::new(config.queue_per_peer).unwrap_or(NonZeroUsize::MIN);
        let channels: BTreeSet<u64> = config.channels.into_iter().collect();

        let stop = CancellationToken::new();
        let mut inbound = BTreeMap::new();
        let mut receivers = BTreeMap::new();
        for &channel in &channels {
            let queue = Arc::new(FairQueue::new(
                capacity.get(),
                (MAX_QUEUED_BYTES_PER_CHANNEL / 4).max(max_message),
                MAX_QUEUED_BYTES_PER_CHANNEL.max(max_message),
            ));
            inbound.insert(
                channel,
                Delivery {
                    queue: queue.clone(),
                },
            );
            receivers.insert(
                channel,
                ChannelReceiver::new(channel, queue, stop.clone(), capacity),
            );
        }
        let shared = Arc::new(Shared {
            local,
            net,
            rt,
            max_message,
            queue_per_peer: capacity.get(),
            stop,
            state: Mutex::new(State {
                inbound,
                ..State::default()
            }),
        });

        // Register the protocol before returning, so that streams opened by peers right after
        // start are not refused as unsupported.
        let incoming = shared.net.stream_control().accept(PROTOCOL).ok();
        shared.set_committee(committee);
        shared
            .rt
            .spawn(accept_loop(shared.clone(), incoming).instrument(
                tracing::debug_span!("consensus_accept", local = %shared.net.local_peer_id()),
            ));

        let pairs = receivers
            .into_iter()
            .map(|(channel, rx)| (channel, (ChannelSender::new(shared.clone(), channel), rx)))
            .collect();
        let blocker = Blocker::new(shared.clone());
        (Transport { shared }, pairs, blocker)
    }

    /// Replaces the committee (epoch change): writers start for new members, removed members'
    /// writers stop and their inbound streams are closed. Blocked peers stay blocked.
    pub fn set_committee(&self, committee: Vec<PublicKey>) {
        self.shared.set_committee(committee);
    }

    /// Stops all tasks and closes all streams. Receivers then return an error, senders report
    /// `Feedback::Closed`, blocked-set subscriptions end. Idempotent.
    pub fn shutdown(&self) {
        self.shared.shutdown();
    }
}

/// State shared by the transport's tasks and its senders, receivers and blocker.
pub(crate) struct Shared {
    /// Our consensus key; `None` if the node's identity is not ed25519.
    local: Option<PublicKey>,
    net: agora_net::Handle,
    /// The node's runtime, where every task of the transport runs.
    rt: tokio::runtime::Handle,
    pub(crate) max_message: usize,
    queue_per_peer: usize,
    pub(crate) stop: CancellationToken,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    committee: BTreeSet<PublicKey>,
    /// One writer per committee member, except ourselves and blocked peers.
    peers: BTreeMap<PublicKey, Writer>,
    /// The reader tasks of each peer's inbound streams, oldest first.
    readers: BTreeMap<PublicKey, Vec<(u64, AbortHandle)>>,
    next_stream: u64,
    blocked: BTreeSet<PublicKey>,
    blocked_subscribers: Vec<ring::Sender<Set<PublicKey>>>,
    /// Each channel's receiver queue; emptied on shutdown, which ends the receivers.
    inbound: BTreeMap<u64, Delivery>,
    stopped: bool,
}

/// The delivering end of one channel's receiver queue.
struct Delivery {
    queue: Arc<FairQueue>,
}

impl Delivery {
    /// Queues a message unless its sender's share or the channel's byte budget is full: then
    /// it is dropped.
    fn deliver(&self, channel: u64, from: &PublicKey, payload: IoBuf) {
        if let Err(why) = self.queue.push(from, payload) {
            tracing::debug!(channel, ?why, "receiver queue full; message dropped");
        }
    }
}

struct Writer {
    outbox: Arc<Outbox>,
    task: AbortHandle,
}

impl Writer {
    fn stop(&self) {
        self.outbox.close();
        self.task.abort();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("consensus transport lock poisoned")
    }

    /// The outboxes a send to `recipients` goes to: committee members only, never ourselves
    /// nor blocked peers.
    pub(crate) fn targets(
        &self,
        recipients: Recipients<PublicKey>,
    ) -> Vec<(PublicKey, Arc<Outbox>)> {
        let state = self.lock();
        let entry = |key: &PublicKey| {
            state
                .peers
                .get(key)
                .map(|w| (key.clone(), w.outbox.clone()))
        };
        match recipients {
            Recipients::All => state
                .peers
                .iter()
                .map(|(key, w)| (key.clone(), w.outbox.clone()))
                .collect(),
            Recipients::Some(keys) => keys
                .into_iter()
                .collect::<BTreeSet<_>>()
                .iter()
                .filter_map(entry)
                .collect(),
            Recipients::One(key) => entry(&key).into_iter().collect(),
        }
    }

    fn set_committee(self: &Arc<Self>, committee: Vec<PublicKey>) {
        let committee: BTreeSet<PublicKey> = committee.into_iter().collect();
        let (removed_writers, removed_readers) = {
            let mut state = self.lock();
            if state.stopped {
                return;
            }
            let State {
                committee: current,
                peers,
                readers,
                blocked,
                ..
            } = &mut *state;
            let wanted: BTreeSet<&PublicKey> = committee
                .iter()
                .filter(|k| Some(*k) != self.local.as_ref() && !blocked.contains(*k))
                .collect();
            let removed_writers: Vec<Writer> = extract(peers, |k| !wanted.contains(k));
            for key in wanted {
                if !peers.contains_key(key) {
                    peers.insert(key.clone(), self.spawn_writer(key.clone()));
                }
            }
            let removed_readers = extract(readers, |k| !committee.contains(k));
            *current = committee;
            (removed_writers, removed_readers)
        };
        removed_writers.iter().for_each(Writer::stop);
        for task in removed_readers.iter().flatten() {
            task.1.abort();
        }
    }

    fn spawn_writer(self: &Arc<Self>, key: PublicKey) -> Writer {
        let outbox = Arc::new(Outbox::new(
            self.queue_per_peer,
            MAX_QUEUED_BYTES_PER_PEER.max(self.max_message),
        ));
        let peer = peer_id(&key);
        let writer = write_loop(self.net.clone(), peer, outbox.clone());
        let stop = self.stop.clone();
        let task = self.rt.spawn(
            async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = writer => {}
                }
            }
            .instrument(
                tracing::debug_span!("consensus_out", local = %self.net.local_peer_id(), %peer),
            ),
        );
        Writer {
            outbox,
            task: task.abort_handle(),
        }
    }

    /// Takes an inbound stream: starts its reader if the peer is a committee member (not us,
    /// not blocked), else drops the stream at once.
    fn admit(self: &Arc<Self>, peer: PeerId, stream: Stream) {
        let Some(key) = public_key(&peer) else {
            tracing::debug!(%peer, "refusing a stream from a non-ed25519 peer");
            return;
        };
        let evicted = {
            let mut state = self.lock();
            if state.stopped
                || Some(&key) == self.local.as_ref()
                || !state.committee.contains(&key)
                || state.blocked.contains(&key)
            {
                tracing::debug!(%peer, "refusing a stream from outside the committee or blocked");
                return;
            }
            let id = state.next_stream;
            state.next_stream += 1;
            let reader = read_loop(self.clone(), key.clone(), stream);
            let (shared, stop, reader_key) = (self.clone(), self.stop.clone(), key.clone());
            let task = self.rt.spawn(
                async move {
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = reader => shared.forget_reader(&reader_key, id),
                    }
                }
                .instrument(tracing::debug_span!(
                    "consensus_in",
                    local = %self.net.local_peer_id(),
                    %peer,
                    stream = id
                )),
            );
            tracing::debug!(%peer, stream = id, "inbound stream accepted");
            let streams = state.readers.entry(key).or_default();
            streams.push((id, task.abort_handle()));
            (streams.len() > MAX_STREAMS_PER_PEER).then(|| streams.remove(0))
        };
        if let Some((id, task)) = evicted {
            tracing::debug!(%peer, stream = id, "closing the peer's oldest inbound stream");
            task.abort();
        }
    }

    fn forget_reader(&self, key: &PublicKey, id: u64) {
        let mut state = self.lock();
        if let Some(streams) = state.readers.get_mut(key) {
            streams.retain(|(i, _)| *i != id);
            if streams.is_empty() {
                state.readers.remove(key);
            }
        }
    }

    /// Hands a message to its channel's receiver. False if the sender may no longer talk to
    /// us (blocked or out of the committee): the caller closes the stream.
    fn deliver(&self, from: &PublicKey, channel: u64, payload: IoBuf) -> bool {
        let state = self.lock();
        if state.blocked.contains(from) || !state.committee.contains(from) {
            return false;
        }
        match state.inbound.get(&channel) {
            None => tracing::debug!(channel, "message on an unknown channel; dropped"),
            Some(delivery) => delivery.deliver(channel, from, payload),
        }
        true
    }

    pub(crate) fn block(&self, key: PublicKey) -> Feedback {
        let (writer, readers) = {
            let mut state = self.lock();
            if state.stopped {
                return Feedback::Closed;
            }
            if !state.blocked.insert(key.clone()) {
                return Feedback::Ok;
            }
            let set = Set::from_iter_dedup(state.blocked.iter().cloned());
            state
                .blocked_subscribers
                .retain(|subscriber| subscriber.send_lossy(set.clone()));
            (state.peers.remove(&key), state.readers.remove(&key))
        };
        tracing::debug!(peer = %peer_id(&key), "blocked; closing its consensus streams");
        if let Some(writer) = writer {
            writer.stop();
        }
        for (_, task) in readers.into_iter().flatten() {
            task.abort();
        }
        Feedback::Ok
    }

    pub(crate) fn blocked(&self) -> BlockedSubscription<PublicKey> {
        let (sender, receiver) = ring::channel(NonZeroUsize::MIN);
        let mut state = self.lock();
        sender.send_lossy(Set::from_iter_dedup(state.blocked.iter().cloned()));
        if !state.stopped {
            state.blocked_subscribers.push(sender);
        }
        receiver
    }

    fn shutdown(&self) {
        self.stop.cancel();
        let state = {
            let mut state = self.lock();
            if state.stopped {
                return;
            }
            let taken = std::mem::take(&mut *state);
            state.stopped = true;
            // Kept so that a later `blocked()` still reports it.
            state.blocked = taken.blocked.clone();
            taken
        };
        state.peers.values().for_each(Writer::stop);
        for (_, task) in state.readers.values().flatten() {
            task.abort();
        }
        // Dropping `state` drops the receiver queues' senders and the blocked subscriptions.
    }
}

/// Removes and returns the values whose keys match `remove`.
fn extract<V>(
    map: &mut BTreeMap<PublicKey, V>,
    mut remove: impl FnMut(&PublicKey) -> bool,
) -> Vec<V> {
    let keys: Vec<PublicKey> = map.keys().filter(|k| remove(k)).cloned().collect();
    keys.iter().filter_map(|k| map.remove(k)).collect()
}

/// Accepts streams of [`PROTOCOL`] until the transport stops.
async fn accept_loop(shared: Arc<Shared>, incoming: Option<libp2p_stream::IncomingStreams>) {
    let stop = shared.stop.clone();
    let run = async {
        let mut incoming = match incoming {
            Some(incoming) => incoming,
            None => register(&shared).await,
        };
        while let Some((peer, stream)) = incoming.next().await {
            shared.admit(peer, stream);
        }
    };
    tokio::select! {
        () = stop.cancelled() => {}
        () = run => {}
    }
}

/// Registers [`PROTOCOL`] once the previous owner let go of it: a transport shut down just
/// before this one started may still hold it for a moment.
async fn register(shared: &Shared) -> libp2p_stream::IncomingStreams {
    let mut control = shared.net.stream_control();
    let mut backoff = BACKOFF_MIN;
    tracing::warn!("{PROTOCOL} is taken on this node (another consensus transport?); retrying");
    loop {
        tokio::time::sleep(backoff).await;
        if let Ok(incoming) = control.accept(PROTOCOL) {
            tracing::info!("{PROTOCOL} registered");
            return incoming;
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Keeps a stream to `peer` open and writes its outbox on it, reopening it after a backoff
/// when it breaks. Runs until aborted.
async fn write_loop(net: agora_net::Handle, peer: PeerId, outbox: Arc<Outbox>) {
    let mut control = net.stream_control();
    let mut backoff = BACKOFF_MIN;
    loop {
        match open(&net, &mut control, peer).await {
            Ok(stream) => {
                tracing::debug!("stream open");
                let opened = Instant::now();
                if let Err(e) = pump(&outbox, stream).await {
                    tracing::debug!("stream closed: {e}");
                }
                // A stream that stayed up a while was a success: start the backoff afresh.
                if opened.elapsed() >= BACKOFF_MAX {
                    backoff = BACKOFF_MIN;
                }
            }
            Err(e) => tracing::debug!("cannot open a stream: {e}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn open(
    net: &agora_net::Handle,
    control: &mut libp2p_stream::Control,
    peer: PeerId,
) -> Result<Stream, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, net.connect(peer)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(format!("connecting: {e}")),
        Err(_) => return Err(format!("not connected within {CONNECT_TIMEOUT:?}")),
    }
    match tokio::time::timeout(OPEN_TIMEOUT, control.open_stream(peer, PROTOCOL)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no stream within {OPEN_TIMEOUT:?}")),
    }
}

/// Writes the outbox on `stream` until the stream fails. A message whose write fails goes back
/// to the outbox for the next stream; messages already handed to the muxer when the
/// connection dies are lost. While idle it watches the stream, so that a peer closing it
/// (restart, refusal) is noticed before the next message is written into a dead stream.
async fn pump(outbox: &Outbox, mut stream: Stream) -> io::Result<()> {
    let mut probe = [0u8; 1];
    loop {
        while let Some(item) = outbox.pop() {
            if let Err(e) = with_timeout(write_item(&mut stream, &item)).await {
                outbox.requeue(item);
                return Err(e);
            }
        }
        with_timeout(stream.flush()).await?;
        tokio::select! {
            () = outbox.ready() => {}
            read = stream.read(&mut probe) => {
                return Err(match read {
                    Ok(0) => io::Error::new(io::ErrorKind::UnexpectedEof, "closed by the peer"),
                    Ok(_) => io::Error::new(io::ErrorKind::InvalidData, "the peer wrote on a one-way stream"),
                    Err(e) => e,
                });
            }
        }
    }
}

async fn write_item(stream: &mut Stream, item: &Item) -> io::Result<()> {
    let (header, len) = wire::header(item.channel, item.payload.len());
    stream.write_all(&header[..len]).await?;
    stream.write_all(item.payload.as_ref()).await
}

async fn with_timeout<T>(io: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::time::timeout(WRITE_TIMEOUT, io)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write stalled"))?
}

/// Reads frames from one inbound stream and delivers them until the stream ends, a frame is
/// refused or the sender is blocked. Dropping the stream on return closes it.
async fn read_loop(shared: Arc<Shared>, key: PublicKey, mut stream: Stream) {
    let limit = wire::frame_limit(shared.max_message);
    loop {
        let frame = match agora_net::read_frame_with_limit(&mut stream, limit).await {
            Ok(frame) => frame,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                tracing::debug!("stream ended");
                return;
            }
            Err(e) => {
                tracing::debug!("closing the stream: {e}");
                return;
            }
        };
        let (channel, payload) = match wire::decode(frame, shared.max_message) {
            Ok(decoded) => decoded,
            Err(e) => {
                tracing::debug!("closing the stream: bad frame: {e}");
                return;
            }
        };
        if !shared.deliver(&key, channel, payload) {
            tracing::debug!("closing the stream: sender blocked or left the committee");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use commonware_p2p::Receiver as _;

    use super::*;

    #[tokio::test]
    async fn a_receiver_queue_keeps_to_its_byte_budget() {
        let queue = Arc::new(FairQueue::new(8, 4, 4));
        let delivery = Delivery {
            queue: queue.clone(),
        };
        let stop = CancellationToken::new();
        let mut receiver = ChannelReceiver::new(0, queue, stop, NonZeroUsize::MIN);
        let from = public_key(
            &libp2p::identity::Keypair::generate_ed25519()
                .public()
                .into(),
        )
        .unwrap();

        delivery.deliver(0, &from, IoBuf::copy_from_slice(b"abc"));
        // Over the budget: dropped.
        delivery.deliver(0, &from, IoBuf::copy_from_slice(b"de"));
        assert_eq!(receiver.recv().await.unwrap().1.as_ref(), b"abc");
        // Taking it out gave the bytes back.
        delivery.deliver(0, &from, IoBuf::copy_from_slice(b"wxyz"));
        assert_eq!(receiver.recv().await.unwrap().1.as_ref(), b"wxyz");
    }
}
