//! Request-response for application protocols: one request layer for all of them.
//!
//! # Wire
//! Every application protocol rides one libp2p `request_response` protocol, [`RPC_PROTOCOL`]
//! (`/agora/rpc/1.0.0`), one request per stream. The request names its application protocol
//! (`/agora/chat/1.0.0`, …) in its first frame and carries its bytes in the second; the
//! response is one frame, or a refusal frame. A frame is a u32 big-endian length followed by
//! that many bytes; a response length with bit 31 set is a refusal whose remaining bits are the
//! length of a UTF-8 reason of at most [`MAX_REFUSAL_LEN`] bytes.
//!
//! Why one wire protocol rather than one per application: libp2p's `request_response` fixes
//! its protocol list when it is built and offers every listed protocol on each outbound
//! request, so one behaviour cannot choose among several, and the set of behaviours of a swarm
//! is fixed at compile time. With the application protocol inside the request,
//! [`Handle::serve`](crate::Handle::serve) takes any protocol at any time, as it did over raw
//! streams, and nothing has to list the protocols up front.
//!
//! # Limits
//! - Lengths are checked before any buffer is allocated, and a buffer grows only as bytes
//!   arrive: a peer announcing a huge frame costs us four bytes of reading, not memory.
//! - A peer has [`READ_REQUEST_TIMEOUT`] to send its request and [`WRITE_RESPONSE_TIMEOUT`] to
//!   take our response; at most [`MAX_STREAMS_PER_CONNECTION`] requests are open per connection
//!   (ours and theirs).
//! - Admission, checked in the event loop before a request reaches the application:
//!   [`MAX_INBOUND_PER_PEER`] requests per peer and [`MAX_INBOUND_PER_PROTOCOL`] in all per
//!   protocol, and room in the application's queue. A request over a budget is answered with a
//!   refusal naming it and counted on `agora_refusals_total{budget}` ([`budget`]).
//! - The requester keeps at most [`MAX_OUTBOUND_PER_PEER`] requests per peer and protocol on
//!   the wire and queues the rest (at most [`MAX_QUEUED_PER_PEER`]), so a burst from one
//!   honest node is paced to the responder's per-peer budget instead of refused.
//!
//! libp2p-stream, which carried these requests before, keeps one inbound stream waiting per
//! protocol and drops the rest of a burst; `request_response` hands every request that arrives
//! on to us, and every one of ours ends in a response, a refusal or a reported failure.

use std::{
    collections::{HashMap, VecDeque},
    io,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, FutureExt, future::BoxFuture,
    stream::FuturesUnordered,
};
use libp2p::{
    PeerId, StreamProtocol,
    request_response::{self, InboundRequestId, OutboundRequestId, ResponseChannel},
};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot},
    time::Instant,
};
use tracing::Instrument;

use crate::{
    Error, InboundRequest, Reply,
    admission::{PeerSlot, PeerSlots, Refusals},
};

/// The one wire protocol of every application request.
pub const RPC_PROTOCOL: StreamProtocol = StreamProtocol::new("/agora/rpc/1.0.0");

/// Largest request or response frame, in bytes.
pub const MAX_FRAME_LEN: usize = 4 * 1024 * 1024;

/// Most inbound requests handled at once per protocol, from all peers together.
pub const MAX_INBOUND_PER_PROTOCOL: usize = 64;
/// Most inbound requests of one peer handled at once per protocol: one peer cannot hold the
/// slots of [`MAX_INBOUND_PER_PROTOCOL`] by itself.
pub const MAX_INBOUND_PER_PEER: usize = 8;
/// Most requests of ours on the wire at once per peer and protocol: the responder's per-peer
/// budget, so that our bursts wait their turn here instead of being refused there.
pub const MAX_OUTBOUND_PER_PEER: usize = MAX_INBOUND_PER_PEER;
/// Most requests of ours waiting for their turn per peer and protocol; more fail at once.
pub const MAX_QUEUED_PER_PEER: usize = 1024;
/// Longest refusal reason sent on the wire, in bytes.
pub const MAX_REFUSAL_LEN: usize = 1024;
/// Longest application protocol name in a request, in bytes.
pub const MAX_PROTOCOL_LEN: usize = 256;
/// Most request streams open at once on one connection, inbound and outbound together. An
/// honest Agora node has at most [`MAX_OUTBOUND_PER_PEER`] per protocol open; a stream past
/// this is reset (our own outbound ones fail with an error).
pub const MAX_STREAMS_PER_CONNECTION: usize = 256;
/// How long a peer has to send its request once the stream is open.
pub const READ_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a peer has to take our response: a slow reader loses its stream after this.
pub const WRITE_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// The request layer's own bound on a request, from the stream's opening to the end of the
/// response, and on how long the application may take to answer. Generous: each caller of
/// [`Handle::request`](crate::Handle::request) gives its own, shorter timeout.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(120);
/// A response frame whose length has this bit set is a refusal: the remaining bits are the
/// length of a UTF-8 reason ([`MAX_FRAME_LEN`] is far below it, so no response is mistaken).
const REFUSAL_FLAG: u32 = 1 << 31;
/// A frame's buffer is first allocated at most this large, then grows as bytes arrive.
const READ_CHUNK: usize = 64 * 1024;
/// Bytes of inbound requests being read at once, from all peers together (the sum of their
/// claimed lengths). A request is read before its peer's admission is checked (the request
/// layer hands over only whole requests), so without this one peer could have
/// [`MAX_STREAMS_PER_CONNECTION`] requests of [`MAX_FRAME_LEN`] each in memory at once.
pub const MAX_READING_BYTES: usize = 64 * 1024 * 1024;

/// Budget names counted on `agora_refusals_total` by the request layer.
pub mod budget {
    /// A peer already had [`MAX_INBOUND_PER_PEER`](super::MAX_INBOUND_PER_PEER) requests of
    /// the protocol in flight.
    pub const PER_PEER: &str = "rpc.inbound_per_peer";
    /// All peers together had [`MAX_INBOUND_PER_PROTOCOL`](super::MAX_INBOUND_PER_PROTOCOL)
    /// requests of the protocol in flight.
    pub const TOTAL: &str = "rpc.inbound_per_protocol";
    /// The application's queue of requests was full.
    pub const QUEUE: &str = "rpc.handler_queue";
    /// [`MAX_READING_BYTES`](super::MAX_READING_BYTES) of requests were being read already
    /// (the stream is reset: the request was not read).
    pub const READING: &str = "rpc.reading_bytes";
}

/// Reads one frame, refusing lengths above [`MAX_FRAME_LEN`] before allocating.
pub async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    read_frame_with_limit(io, MAX_FRAME_LEN).await
}

/// Reads one frame (u32 big-endian length, then the bytes), refusing lengths above `limit`
/// before allocating; the buffer grows only as bytes arrive.
pub async fn read_frame_with_limit<T: AsyncRead + Unpin>(
    io: &mut T,
    limit: usize,
) -> io::Result<Vec<u8>> {
    let len = read_frame_len(io, limit).await?;
    read_body(io, len).await
}

/// Reads a frame's length prefix; a length above `limit` is `InvalidData`.
async fn read_frame_len<T: AsyncRead + Unpin>(io: &mut T, limit: usize) -> io::Result<usize> {
    let len = read_u32(io).await? as usize;
    if len > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the limit of {limit}"),
        ));
    }
    Ok(len)
}

async fn read_u32<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<u32> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    Ok(u32::from_be_bytes(len))
}

/// Reads exactly `len` bytes (already checked against a limit), allocating as they arrive: a
/// length is only a claim.
async fn read_body<T: AsyncRead + Unpin>(io: &mut T, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len.min(READ_CHUNK));
    (&mut *io).take(len as u64).read_to_end(&mut buf).await?;
    if buf.len() < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("frame ended after {} of {len} bytes", buf.len()),
        ));
    }
    Ok(buf)
}

/// Writes one frame and closes the writing side.
pub async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, data: &[u8]) -> io::Result<()> {
    write_frame_open(io, data).await?;
    io.close().await
}

/// Writes one frame and leaves the stream open.
async fn write_frame_open<T: AsyncWrite + Unpin>(io: &mut T, data: &[u8]) -> io::Result<()> {
    if data.len() > MAX_FRAME_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "frame of {} bytes exceeds the limit of {MAX_FRAME_LEN}",
                data.len()
            ),
        ));
    }
    io.write_all(&(data.len() as u32).to_be_bytes()).await?;
    io.write_all(data).await?;
    io.flush().await
}

/// Writes a refusal frame with `reason`, cut to [`MAX_REFUSAL_LEN`] bytes at a character
/// boundary.
async fn write_refusal<T: AsyncWrite + Unpin>(io: &mut T, reason: &str) -> io::Result<()> {
    let mut end = reason.len().min(MAX_REFUSAL_LEN);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    io.write_all(&(reason.len() as u32 | REFUSAL_FLAG).to_be_bytes())
        .await?;
    io.write_all(reason).await?;
    io.flush().await
}

/// Runs `f` until `deadline`; running out is `TimedOut`.
async fn within<T>(
    deadline: Instant,
    what: &str,
    f: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout_at(deadline, f)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("{what} took too long")))?
}

/// A request on the wire: the application protocol and its bytes.
#[derive(Debug)]
pub struct Request {
    pub(crate) protocol: StreamProtocol,
    pub(crate) data: Vec<u8>,
    /// When the requester stops waiting (outbound only; not sent).
    pub(crate) deadline: Option<Instant>,
}

/// A response on the wire: the bytes, or a refusal's reason.
pub type Response = Result<Vec<u8>, String>;

/// The codec of [`RPC_PROTOCOL`]. `request_response` clones it for every stream, so the
/// deadline that `write_request` keeps is the one of that stream's request.
#[derive(Debug, Clone, Default)]
pub struct Codec {
    deadline: Option<Instant>,
    /// Bytes of inbound requests being read, shared by every stream's codec.
    reading: Arc<AtomicUsize>,
    refusals: Refusals,
}

/// A reservation of [`MAX_READING_BYTES`]; released when dropped.
struct Reading<'a> {
    reading: &'a AtomicUsize,
    len: usize,
}

impl<'a> Reading<'a> {
    fn reserve(reading: &'a AtomicUsize, len: usize) -> Option<Self> {
        reading
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held + len <= MAX_READING_BYTES).then_some(held + len)
            })
            .ok()
            .map(|_| Reading { reading, len })
    }
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        self.reading.fetch_sub(self.len, Ordering::AcqRel);
    }
}

impl request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        let deadline = Instant::now() + READ_REQUEST_TIMEOUT;
        within(deadline, "reading the request", async {
            let name = read_frame_with_limit(io, MAX_PROTOCOL_LEN).await?;
            let protocol = String::from_utf8(name)
                .ok()
                .and_then(|name| StreamProtocol::try_from_owned(name).ok())
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "invalid protocol name")
                })?;
            let len = read_frame_len(io, MAX_FRAME_LEN).await?;
            let Some(_reading) = Reading::reserve(&self.reading, len) else {
                self.refusals.refuse(budget::READING);
                return Err(io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    "too many request bytes being read at once",
                ));
            };
            let data = read_body(io, len).await?;
            Ok(Request {
                protocol,
                data,
                deadline: None,
            })
        })
        .await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        let deadline = self
            .deadline
            .unwrap_or_else(|| Instant::now() + RPC_TIMEOUT);
        within(deadline, "waiting for the response", async {
            let len = read_u32(io).await?;
            if len & REFUSAL_FLAG != 0 {
                let len = (len & !REFUSAL_FLAG) as usize;
                if len > MAX_REFUSAL_LEN {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("refusal of {len} bytes exceeds {MAX_REFUSAL_LEN}"),
                    ));
                }
                let reason = read_body(io, len).await?;
                return Ok(Err(String::from_utf8_lossy(&reason).into_owned()));
            }
            let len = len as usize;
            if len > MAX_FRAME_LEN {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("frame of {len} bytes exceeds the limit of {MAX_FRAME_LEN}"),
                ));
            }
            read_body(io, len).await.map(Ok)
        })
        .await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.deadline = request.deadline;
        let deadline = self
            .deadline
            .unwrap_or_else(|| Instant::now() + RPC_TIMEOUT);
        within(deadline, "sending the request", async {
            write_frame_open(io, request.protocol.as_ref().as_bytes()).await?;
            write_frame_open(io, &request.data).await
        })
        .await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let deadline = Instant::now() + WRITE_RESPONSE_TIMEOUT;
        within(deadline, "sending the response", async {
            match response {
                Ok(data) => write_frame_open(io, &data).await,
                Err(reason) => write_refusal(io, &reason).await,
            }
        })
        .await
    }
}

/// The `request_response` behaviour of [`RPC_PROTOCOL`].
pub(crate) fn behaviour(refusals: Refusals) -> request_response::Behaviour<Codec> {
    request_response::Behaviour::with_codec(
        Codec {
            refusals,
            ..Codec::default()
        },
        [(RPC_PROTOCOL, request_response::ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(RPC_TIMEOUT)
            .with_max_concurrent_streams(MAX_STREAMS_PER_CONNECTION),
    )
}

/// The protocols this node serves, shared by every [`Handle`](crate::Handle) (which registers)
/// and the event loop (which dispatches).
#[derive(Debug, Clone, Default)]
pub(crate) struct Services(Arc<Mutex<HashMap<StreamProtocol, Service>>>);

/// One served protocol: where its requests go and the slots they take.
#[derive(Debug, Clone)]
struct Service {
    requests: mpsc::Sender<InboundRequest>,
    slots: Arc<Semaphore>,
    peer_slots: PeerSlots,
}

impl Services {
    /// Hands requests of `protocol` to `requests` from now on.
    pub(crate) fn serve(
        &self,
        protocol: StreamProtocol,
        requests: mpsc::Sender<InboundRequest>,
    ) -> Result<(), Error> {
        let mut services = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // A service whose receiver is gone has stopped: its protocol may be served again.
        if services
            .get(&protocol)
            .is_some_and(|s| !s.requests.is_closed())
        {
            return Err(Error::Request(format!("{protocol} is already served")));
        }
        services.insert(
            protocol,
            Service {
                requests,
                slots: Arc::new(Semaphore::new(MAX_INBOUND_PER_PROTOCOL)),
                peer_slots: PeerSlots::new(MAX_INBOUND_PER_PEER),
            },
        );
        Ok(())
    }

    fn get(&self, protocol: &StreamProtocol) -> Option<Service> {
        let services = self.0.lock().unwrap_or_else(|e| e.into_inner());
        services.get(protocol).cloned()
    }
}

/// A response the application is working on, and the slots its request holds until then.
type PendingReply = BoxFuture<'static, (ResponseChannel<Response>, Option<Response>)>;

/// A request of ours waiting for its turn or on the wire.
#[derive(Debug)]
pub(crate) struct Outbound {
    pub(crate) peer: PeerId,
    pub(crate) protocol: StreamProtocol,
    pub(crate) data: Vec<u8>,
    pub(crate) deadline: Instant,
    pub(crate) reply: oneshot::Sender<Result<Vec<u8>, Error>>,
}

/// The event loop's side of the request layer: admission and dispatch of inbound requests,
/// pacing and correlation of outbound ones. Every table is bounded: by the admission slots
/// (pending replies), by [`MAX_OUTBOUND_PER_PEER`] and [`MAX_QUEUED_PER_PEER`] per peer and
/// protocol with a request of ours in flight (outbound tables).
pub(crate) struct Rpc {
    services: Services,
    refusals: Refusals,
    /// Inbound requests the application is answering.
    replies: FuturesUnordered<PendingReply>,
    /// Our requests on the wire, by id.
    outbound: HashMap<OutboundRequestId, InFlight>,
    /// Our requests on the wire and waiting, per peer and protocol.
    lanes: HashMap<(PeerId, StreamProtocol), Lane>,
}

#[derive(Debug)]
struct InFlight {
    lane: (PeerId, StreamProtocol),
    reply: oneshot::Sender<Result<Vec<u8>, Error>>,
    span: tracing::Span,
}

#[derive(Debug, Default)]
struct Lane {
    in_flight: usize,
    waiting: VecDeque<Outbound>,
}

impl Rpc {
    pub(crate) fn new(services: Services, refusals: Refusals) -> Self {
        Rpc {
            services,
            refusals,
            replies: FuturesUnordered::new(),
            outbound: HashMap::new(),
            lanes: HashMap::new(),
        }
    }

    /// The next response the application has finished (or given up on). Pending while there
    /// is none; cancel-safe.
    pub(crate) async fn next_reply(&mut self) -> (ResponseChannel<Response>, Option<Response>) {
        use futures::StreamExt;
        match self.replies.next().await {
            Some(reply) => reply,
            None => std::future::pending().await,
        }
    }

    /// Sends a request of ours, or queues it behind the ones on the wire to that peer.
    pub(crate) fn request(
        &mut self,
        behaviour: &mut request_response::Behaviour<Codec>,
        outbound: Outbound,
    ) {
        let key = (outbound.peer, outbound.protocol.clone());
        let lane = self.lanes.entry(key).or_default();
        if lane.in_flight < MAX_OUTBOUND_PER_PEER {
            lane.in_flight += 1;
            self.send(behaviour, outbound);
        } else if lane.waiting.len() < MAX_QUEUED_PER_PEER {
            lane.waiting.push_back(outbound);
        } else {
            let _ = outbound.reply.send(Err(Error::Request(format!(
                "{MAX_QUEUED_PER_PEER} requests already wait for {}",
                outbound.peer
            ))));
        }
    }

    /// Puts a request on the wire; its lane has counted it.
    fn send(&mut self, behaviour: &mut request_response::Behaviour<Codec>, o: Outbound) {
        let lane = (o.peer, o.protocol.clone());
        let request_id = behaviour.send_request(
            &o.peer,
            Request {
                protocol: o.protocol.clone(),
                data: o.data,
                deadline: Some(o.deadline),
            },
        );
        let span = tracing::debug_span!(
            "rpc",
            peer = %o.peer,
            protocol = %o.protocol,
            request_id = %request_id,
            direction = "outbound"
        );
        span.in_scope(|| tracing::trace!("request sent"));
        self.outbound.insert(
            request_id,
            InFlight {
                lane,
                reply: o.reply,
                span,
            },
        );
    }

    /// A request of ours ended: answers its caller and lets the next one of its lane go.
    fn finish(
        &mut self,
        behaviour: &mut request_response::Behaviour<Codec>,
        request_id: OutboundRequestId,
        result: Result<Vec<u8>, Error>,
    ) {
        let Some(in_flight) = self.outbound.remove(&request_id) else {
            return;
        };
        in_flight.span.in_scope(|| match &result {
            Ok(response) => tracing::trace!(len = response.len(), "response received"),
            Err(e) => tracing::debug!("request failed: {e}"),
        });
        let _ = in_flight.reply.send(result);
        let Some(lane) = self.lanes.get_mut(&in_flight.lane) else {
            return;
        };
        lane.in_flight -= 1;
        let now = Instant::now();
        // The next request whose caller still waits.
        while let Some(next) = lane.waiting.pop_front() {
            if next.reply.is_closed() {
                continue;
            }
            if next.deadline <= now {
                let _ = next.reply.send(Err(Error::Request(
                    "no response in time: still waiting for earlier requests to the peer".into(),
                )));
                continue;
            }
            lane.in_flight += 1;
            self.send(behaviour, next);
            return;
        }
        if lane.in_flight == 0 {
            self.lanes.remove(&in_flight.lane);
        }
    }

    /// Handles an event of the `request_response` behaviour.
    pub(crate) fn on_event(
        &mut self,
        behaviour: &mut request_response::Behaviour<Codec>,
        event: request_response::Event<Request, Response>,
    ) {
        use request_response::{Event, Message, OutboundFailure};
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request_id,
                        request,
                        channel,
                    },
                ..
            } => {
                if let Some(refusal) = self.on_request(peer, request_id, request, channel) {
                    let (channel, reason) = refusal;
                    let _ = behaviour.send_response(channel, Err(reason));
                }
            }
            Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                let result = response.map_err(Error::Refused);
                self.finish(behaviour, request_id, result);
            }
            Event::OutboundFailure {
                request_id, error, ..
            } => {
                let error = match error {
                    OutboundFailure::UnsupportedProtocols => {
                        format!("the peer does not speak {RPC_PROTOCOL}")
                    }
                    OutboundFailure::Io(e) => e.to_string(),
                    e => e.to_string(),
                };
                self.finish(behaviour, request_id, Err(Error::Request(error)));
            }
            Event::InboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                tracing::debug!(%peer, %request_id, "inbound request failed: {error}");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    /// Admits an inbound request and hands it to its service; or returns the refusal to send.
    fn on_request(
        &mut self,
        peer: PeerId,
        request_id: InboundRequestId,
        request: Request,
        channel: ResponseChannel<Response>,
    ) -> Option<(ResponseChannel<Response>, String)> {
        let Request { protocol, data, .. } = request;
        let span = tracing::debug_span!(
            "rpc",
            %peer,
            %protocol,
            request_id = %request_id,
            direction = "inbound"
        );
        let entered = span.enter();
        let Some(service) = self.services.get(&protocol) else {
            tracing::debug!("request for a protocol not served here");
            return Some((channel, format!("{protocol} is not served here")));
        };
        let admitted = match service.peer_slots.try_acquire(peer) {
            None => Err((budget::PER_PEER, "busy: too many requests from you at once")),
            Some(peer_slot) => match service.slots.clone().try_acquire_owned() {
                Ok(permit) => Ok((peer_slot, permit)),
                Err(_) => Err((budget::TOTAL, "busy: too many requests at once")),
            },
        };
        let slots = match admitted {
            Ok(slots) => slots,
            Err((budget, reason)) => {
                self.refusals.refuse(budget);
                tracing::debug!(budget, "inbound request refused");
                return Some((channel, reason.to_owned()));
            }
        };
        let (reply, response) = Reply::channel();
        match service
            .requests
            .try_send(InboundRequest { peer, data, reply })
        {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.refusals.refuse(budget::QUEUE);
                tracing::debug!("request handler busy; refusing request");
                return Some((channel, "busy: request queue full".to_owned()));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!("request handler gone; refusing request");
                return Some((channel, format!("{protocol} is not served here")));
            }
        }
        drop(entered);
        self.replies.push(
            await_reply(channel, response, slots)
                .instrument(span)
                .boxed(),
        );
        None
    }
}

/// Waits for the application's response, holding the request's slots until it comes (or
/// until [`RPC_TIMEOUT`], when the request layer has given up on it anyway). `None` sends
/// nothing: the requester sees the stream closed.
async fn await_reply(
    channel: ResponseChannel<Response>,
    response: oneshot::Receiver<Response>,
    slots: (PeerSlot, OwnedSemaphorePermit),
) -> (ResponseChannel<Response>, Option<Response>) {
    let response = match tokio::time::timeout(RPC_TIMEOUT, response).await {
        Ok(Ok(response)) => Some(response),
        Ok(Err(_)) => {
            tracing::debug!("the handler dropped the request without an answer");
            None
        }
        Err(_) => {
            tracing::debug!("the handler did not answer in time");
            None
        }
    };
    drop(slots);
    (channel, response)
}

#[cfg(test)]
mod tests {
    use futures::io::Cursor;
    use request_response::Codec as _;

    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let mut buf = Cursor::new(Vec::new());
        write_frame(&mut buf, b"hello").await.unwrap();
        let mut rd = Cursor::new(buf.into_inner());
        assert_eq!(read_frame(&mut rd).await.unwrap(), b"hello");
    }

    #[tokio::test]
    async fn oversized_length_is_rejected_before_allocation() {
        let mut bytes = (u32::MAX).to_be_bytes().to_vec();
        bytes.extend_from_slice(b"tiny");
        let err = read_frame(&mut Cursor::new(bytes)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn a_refusal_is_cut_at_its_limit_on_a_character_boundary() {
        let mut buf = Cursor::new(Vec::new());
        let reason = "é".repeat(MAX_REFUSAL_LEN); // two bytes each
        write_refusal(&mut buf, &reason).await.unwrap();
        let bytes = buf.into_inner();
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap());
        assert_ne!(len & REFUSAL_FLAG, 0);
        let len = (len & !REFUSAL_FLAG) as usize;
        assert_eq!(len, MAX_REFUSAL_LEN);
        assert!(std::str::from_utf8(&bytes[4..4 + len]).is_ok());
    }

    #[tokio::test]
    async fn truncated_frame_is_an_error() {
        let mut bytes = 10u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(b"abc");
        assert!(read_frame(&mut Cursor::new(bytes)).await.is_err());
    }

    #[tokio::test]
    async fn requests_and_responses_round_trip_through_the_codec() {
        let mut codec = Codec::default();
        let mut wire = Cursor::new(Vec::new());
        let request = Request {
            protocol: StreamProtocol::new("/agora/test/1.0.0"),
            data: b"ask".to_vec(),
            deadline: Some(Instant::now() + Duration::from_secs(5)),
        };
        codec
            .write_request(&RPC_PROTOCOL, &mut wire, request)
            .await
            .unwrap();
        let mut rd = Cursor::new(wire.into_inner());
        let read = codec.read_request(&RPC_PROTOCOL, &mut rd).await.unwrap();
        assert_eq!(read.protocol.as_ref(), "/agora/test/1.0.0");
        assert_eq!(read.data, b"ask");

        for response in [Ok(b"answer".to_vec()), Err("busy: try later".to_owned())] {
            let mut wire = Cursor::new(Vec::new());
            codec
                .write_response(&RPC_PROTOCOL, &mut wire, response.clone())
                .await
                .unwrap();
            let mut rd = Cursor::new(wire.into_inner());
            let read = codec.read_response(&RPC_PROTOCOL, &mut rd).await.unwrap();
            assert_eq!(read, response);
        }
    }

    /// What one peer can make this node hold while reading requests is bounded: requests are
    /// read before admission, so the bytes being read at once have a budget of their own.
    #[tokio::test]
    async fn requests_past_the_reading_budget_are_not_read() {
        let codec = Codec::default();
        let request = |len: usize| {
            let mut bytes = 17u32.to_be_bytes().to_vec();
            bytes.extend_from_slice(b"/agora/test/1.0.0");
            bytes.extend_from_slice(&(len as u32).to_be_bytes());
            bytes.extend(std::iter::repeat_n(7u8, len));
            bytes
        };
        // Others' requests hold all but 1 MiB of the budget while they are read.
        let held = Reading::reserve(&codec.reading, MAX_READING_BYTES - (1 << 20)).unwrap();
        let err = codec
            .clone()
            .read_request(&RPC_PROTOCOL, &mut Cursor::new(request(2 << 20)))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::OutOfMemory);
        assert_eq!(codec.refusals.count(budget::READING), 1);
        // One that fits is read, and gives its share back once read.
        let read = codec
            .clone()
            .read_request(&RPC_PROTOCOL, &mut Cursor::new(request(1 << 20)))
            .await
            .unwrap();
        assert_eq!(read.data.len(), 1 << 20);
        drop(held);
        assert_eq!(codec.reading.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn a_request_with_a_bad_protocol_name_or_oversized_body_is_rejected() {
        let mut codec = Codec::default();
        // A protocol name must start with a slash.
        let mut bytes = 3u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(b"abc");
        bytes.extend_from_slice(&0u32.to_be_bytes());
        let err = codec
            .read_request(&RPC_PROTOCOL, &mut Cursor::new(bytes))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // A body above the limit is refused on its length.
        let mut bytes = 2u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(b"/a");
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        let err = codec
            .read_request(&RPC_PROTOCOL, &mut Cursor::new(bytes))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // A protocol name above its limit too.
        let bytes = ((MAX_PROTOCOL_LEN + 1) as u32).to_be_bytes().to_vec();
        let err = codec
            .read_request(&RPC_PROTOCOL, &mut Cursor::new(bytes))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
