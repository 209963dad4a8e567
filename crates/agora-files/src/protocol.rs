//! `/agora/blobs/1.1.0`: fetch byte ranges of a blob, verified as they stream.
//!
//! The requester writes one length-prefixed postcard frame ([`Request`], at most
//! [`MAX_REQUEST_LEN`] bytes). The provider answers with one frame ([`Response`]): the blob's
//! size, or why it cannot serve it; then, after a size, the BLAKE3 verified stream (bao
//! encoding with 16 KiB chunk groups) of the requested chunk ranges. The requester checks every
//! chunk group against the hash it asked for before using it; the size is authenticated by
//! always requesting the last chunk group with the first request of a download.
//!
//! Several requests go over one stream, one after another: once a response is read to its end
//! the requester may write the next request. A stream costs a round trip to open and
//! negotiate, and a connection opens its outbound streams one at a time, so on a 150 ms link
//! a stream per request cost a download worker a round trip or more per piece. The provider
//! takes a serving slot per request (the stream itself holds only a per-peer slot) and closes
//! a stream that stays idle for [`IDLE_TIMEOUT`].
//!
//! `/agora/blobs/1.0.0` is the same exchange, one request per stream (the requester closes
//! its side after the request, the provider after the response), still served for older
//! peers.

use std::{
    collections::HashMap,
    io,
    sync::{Arc, Mutex},
};

use bao_tree::{ChunkNum, ChunkRanges, io::round_up_to_chunks_groups};
use futures::AsyncWriteExt;
use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};

use crate::{BLOCK_SIZE, Hash, store::Store};

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/agora/blobs/1.1.0");
/// One request per stream (older peers).
pub const PROTOCOL_ONE_SHOT: StreamProtocol = StreamProtocol::new("/agora/blobs/1.0.0");
/// How long a [`PROTOCOL`] stream may wait for its first request.
pub const FIRST_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a [`PROTOCOL`] stream is kept open without a request once it has served one.
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);
/// Largest request frame.
pub const MAX_REQUEST_LEN: usize = 16 * 1024;
/// Most ranges in one request or response.
pub const MAX_RANGES: usize = 256;
/// Largest response header frame (a [`Response`] with [`MAX_RANGES`] ranges of 10-byte
/// varints fits).
pub const MAX_RESPONSE_HEADER: usize = 8 * 1024;
/// Requests served at once; more are answered [`Response::Busy`].
pub const MAX_CONCURRENT_SERVES: usize = 32;
/// How long one chunk of a response may wait for the reader: a reader that stalls longer
/// loses its stream (and its serving slot).
pub const WRITE_STALL: std::time::Duration = std::time::Duration::from_secs(20);
/// Stale blobs reported and not yet handled; more reports are dropped (each blob is
/// reported again by its next request).
pub const STALE_QUEUE: usize = 64;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Request {
    /// Hex BLAKE3 hash.
    pub hash: String,
    /// Chunk ranges `[start, end)` in 1 KiB chunks; `end: None` means to the end.
    pub ranges: Vec<(u64, Option<u64>)>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Size(u64),
    NotFound,
    Unavailable(String),
    /// Still downloading it: these verified chunk ranges can be asked for.
    Partial {
        size: u64,
        have: Vec<(u64, Option<u64>)>,
    },
    /// Refused by an admission budget (named in the reason): ask again later.
    Busy(String),
    /// Held whole, but super-seeded: these chunk ranges are served now; get the rest from the
    /// other downloaders, or ask again later (see [`crate::proto::seeding`]).
    Hint {
        have: Vec<(u64, Option<u64>)>,
    },
}

/// Super-seeding state of this node's whole blobs, shared by the streams it serves.
pub type Seeding = Arc<Mutex<crate::proto::seeding::Seeding>>;

/// Blobs being downloaded, whose verified parts are served to other downloaders.
pub type Partials = Arc<Mutex<HashMap<Hash, Arc<crate::download::Partial>>>>;

/// Ranges as `(start, end)` pairs, `end: None` meaning "to the end".
pub fn ranges_to_pairs(ranges: &ChunkRanges) -> Vec<(u64, Option<u64>)> {
    ranges
        .boundaries()
        .chunks(2)
        .map(|pair| (pair[0].0, pair.get(1).map(|e| e.0)))
        .collect()
}

/// Ranges told to a requester (what a partial download has, what a super-seeder serves): the
/// first [`MAX_RANGES`] of them, a subset that is still true, so the response fits in
/// [`MAX_RESPONSE_HEADER`] however fragmented the set (a swarm's downloaders fetch their
/// pieces in scattered order).
pub fn advertised(ranges: &ChunkRanges) -> Vec<(u64, Option<u64>)> {
    let mut pairs = ranges_to_pairs(ranges);
    pairs.truncate(MAX_RANGES);
    pairs
}

/// The inverse of [`ranges_to_pairs`], for untrusted input: unsorted or overlapping pairs are
/// simply merged.
pub fn pairs_to_ranges(pairs: &[(u64, Option<u64>)]) -> ChunkRanges {
    let mut out = ChunkRanges::empty();
    for (start, end) in pairs.iter().take(MAX_RANGES) {
        match end {
            Some(end) if end > start => out |= ChunkRanges::from(ChunkNum(*start)..ChunkNum(*end)),
            Some(_) => {}
            None => out |= ChunkRanges::from(ChunkNum(*start)..),
        }
    }
    out
}

impl Request {
    pub fn new(hash: &Hash, ranges: &ChunkRanges) -> Self {
        Self {
            hash: hash.to_hex().to_string(),
            ranges: ranges_to_pairs(ranges),
        }
    }

    /// Parses and bounds-checks the ranges, rounded out to whole chunk groups.
    pub fn chunk_ranges(&self) -> Result<ChunkRanges, String> {
        if self.ranges.len() > MAX_RANGES {
            return Err(format!("more than {MAX_RANGES} ranges"));
        }
        let mut out = ChunkRanges::empty();
        let mut last_end = 0u64;
        for (i, (start, end)) in self.ranges.iter().enumerate() {
            if i > 0 && *start < last_end {
                return Err("ranges must be sorted and disjoint".into());
            }
            match end {
                Some(end) if end <= start => return Err("empty or inverted range".into()),
                Some(end) => {
                    out |= ChunkRanges::from(ChunkNum(*start)..ChunkNum(*end));
                    last_end = *end;
                }
                None => {
                    if i + 1 != self.ranges.len() {
                        return Err("only the last range may be open".into());
                    }
                    out |= ChunkRanges::from(ChunkNum(*start)..);
                }
            }
        }
        Ok(round_up_to_chunks_groups(out, BLOCK_SIZE))
    }
}

/// What a blob stream serves with: the store, the verified parts of downloads under way, and
/// the super-seeding state.
#[derive(Clone)]
pub struct Served {
    pub store: Store,
    pub partials: Partials,
    pub seeding: Seeding,
    /// Blobs found stale (their in-place file was changed, moved or deleted) are reported
    /// here, so the node stops announcing them.
    pub stale: tokio::sync::mpsc::Sender<Hash>,
}

/// Serves one inbound [`PROTOCOL_ONE_SHOT`] stream: one request, one response, closed. Errors
/// are logged by the caller; the stream is dropped either way.
pub async fn serve_one_shot(
    served: &Served,
    peer: PeerId,
    mut stream: libp2p::Stream,
) -> io::Result<()> {
    let request = read_request(&mut stream, FIRST_REQUEST_TIMEOUT)
        .await?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no request"))?;
    serve_request(served, peer, &mut stream, request).await?;
    stream.close().await
}

/// Serves one inbound [`PROTOCOL`] stream: requests one after another, each within a serving
/// slot of `slots` (a request that finds none is answered [`Response::Busy`] and the stream
/// stays), until the requester closes it or leaves it idle for [`IDLE_TIMEOUT`].
pub async fn serve_persistent(
    served: &Served,
    peer: PeerId,
    mut stream: libp2p::Stream,
    slots: &Arc<tokio::sync::Semaphore>,
    refusals: &agora_net::Refusals,
    budget: &'static str,
) -> io::Result<()> {
    let mut wait = FIRST_REQUEST_TIMEOUT;
    loop {
        let request = match read_request(&mut stream, wait).await {
            Ok(Some(request)) => request,
            // Closed by the requester, or idle: done.
            Ok(None) => return stream.close().await,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return stream.close().await,
            Err(e) => return Err(e),
        };
        wait = IDLE_TIMEOUT;
        let Ok(_slot) = slots.try_acquire() else {
            refusals.refuse(budget);
            write_frame(&mut stream, &busy(budget)).await?;
            continue;
        };
        serve_request(served, peer, &mut stream, request).await?;
    }
}

/// The next request on `stream`; `None` if the requester closed the stream first.
async fn read_request(
    stream: &mut libp2p::Stream,
    wait: std::time::Duration,
) -> io::Result<Option<Request>> {
    let frame = match tokio::time::timeout(wait, read_limited_frame(stream, MAX_REQUEST_LEN)).await
    {
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request not sent in time",
            ));
        }
        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Ok(frame) => frame?,
    };
    crate::wire::decode(&frame)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Answers one request on `stream` (the response frame, then the data after a size), leaving
/// the stream open. A blob found stale is reported on `served.stale`.
async fn serve_request(
    served: &Served,
    peer: PeerId,
    stream: &mut libp2p::Stream,
    request: Request,
) -> io::Result<()> {
    let Served {
        store,
        partials,
        seeding,
        stale,
    } = served;
    let ranges = request
        .chunk_ranges()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let Ok(hash) = Hash::from_hex(&request.hash) else {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "bad hash"));
    };
    let opened = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.open_blob(&hash))
            .await
            .map_err(io::Error::other)?
    };
    let from_store = opened.is_ok();
    let blob = match opened {
        Ok(blob) => blob,
        Err(crate::store::StoreError::Unknown(_)) => {
            let partial = partials.lock().unwrap().get(&hash).cloned();
            let Some(partial) = partial else {
                write_frame(stream, &Response::NotFound).await?;
                return Ok(());
            };
            let have = partial.have.lock().unwrap().clone();
            match partial.open_if_has(&ranges, &have) {
                Some(Ok(blob)) => blob,
                Some(Err(e)) => {
                    write_frame(stream, &Response::Unavailable(e.to_string())).await?;
                    return Ok(());
                }
                None => {
                    let response = Response::Partial {
                        size: partial.size,
                        have: advertised(&have),
                    };
                    write_frame(stream, &response).await?;
                    return Ok(());
                }
            }
        }
        Err(e) => {
            if matches!(e, crate::store::StoreError::Stale(_)) {
                let _ = stale.try_send(hash);
            }
            write_frame(stream, &Response::Unavailable(e.to_string())).await?;
            return Ok(());
        }
    };
    let mut counted = Vec::new();
    if from_store {
        let decision = seeding.lock().unwrap().decide(
            hash,
            blob.size,
            peer,
            &ranges,
            1 << BLOCK_SIZE.chunk_log(),
            std::time::Instant::now(),
        );
        match decision {
            crate::proto::seeding::Decision::Serve(pieces) => counted = pieces,
            crate::proto::seeding::Decision::Hint(serves) => {
                tracing::debug!(%peer, hash = %hash.to_hex(), "super-seeding: hinted");
                let response = Response::Hint {
                    have: advertised(&serves),
                };
                return write_frame(stream, &response).await;
            }
        }
    }
    let result = send_ranges(blob, &ranges, stream).await;
    if !counted.is_empty() {
        seeding
            .lock()
            .unwrap()
            .settle(hash, &counted, result.is_ok());
    }
    result
}

/// Writes the size, then the verified encoding of `ranges` of `blob`.
async fn send_ranges(
    blob: crate::store::OpenBlob,
    ranges: &ChunkRanges,
    stream: &mut libp2p::Stream,
) -> io::Result<()> {
    write_frame(stream, &Response::Size(blob.size)).await?;
    // bao-tree's fast encoder is synchronous: it runs on a blocking thread and hands the
    // encoding over in 1 MiB chunks, which this task writes to the stream. (Writing through a
    // sync bridge instead cost a thread hand-off for every yamux frame.) See `encode` for when
    // each group is hashed again as it is sent.
    // Written buffers go back to a pool to be filled again (`SendBuf`).
    let (chunks, mut received) = tokio::sync::mpsc::channel::<SendBuf>(2);
    let ranges = ranges.clone();
    let encoder = tokio::task::spawn_blocking(move || {
        let mut out = ChunkSender::new(chunks, &blob.data);
        encode(&blob, &ranges, &mut out)?;
        out.send()
    });
    let mut sent = Ok(());
    while let Some(chunk) = received.recv().await {
        let written = tokio::time::timeout(WRITE_STALL, stream.write_all(chunk.filled()))
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the reader stalled; stream dropped",
                ))
            });
        if let Err(e) = written {
            // Dropping the receiver stops the encoder at its next chunk.
            sent = Err(e);
            break;
        }
    }
    drop(received);
    let encoded = encoder.await.map_err(io::Error::other)?;
    sent?;
    encoded
}

/// The answer to a request or stream that `budget` refused.
fn busy(budget: &'static str) -> Response {
    Response::Busy(format!("{budget}: too many requests at once; retry later"))
}

/// Answers a stream that an admission budget refused with [`Response::Busy`], bounded in
/// time (the request itself is not read).
pub async fn refuse_stream(mut stream: libp2p::Stream, budget: &'static str) {
    let _ = tokio::time::timeout(WRITE_STALL, async {
        write_frame(&mut stream, &busy(budget)).await?;
        stream.close().await
    })
    .await;
}

/// Writes the verified encoding of `ranges` of `blob` to `out`, re-hashing each group first if
/// the blob asks for it ([`OpenBlob::recheck`](crate::store::OpenBlob)).
///
/// Requests ask for whole chunk groups ([`Request::chunk_ranges`]), and those are encoded here
/// the way bao-tree's `encode_ranges` does it, except that each group's data is read from the
/// file straight into the send buffer: bao-tree's encoder reads a group into a buffer of its
/// own and writes it on, one more copy of every byte sent (5 % of a seeder's CPU in a get).
/// Adjacent groups are read with one `preadv` per send buffer ([`ChunkSender::leaf`]), not a
/// read per 16 KiB group. Anything else goes through bao-tree's encoder. `out` reads the groups
/// from `blob.data`.
fn encode(
    blob: &crate::store::OpenBlob,
    ranges: &ChunkRanges,
    out: &mut ChunkSender<'_>,
) -> io::Result<()> {
    use bao_tree::{io::sync::truncate_ranges, iter::BaoChunk};
    let (data, outboard) = (&blob.data, &blob.outboard);
    let tree = outboard.tree;
    let ranges = truncate_ranges(ranges, tree.size());
    if blob.recheck {
        return bao_tree::io::sync::encode_ranges_validated(data, outboard, ranges, out)
            .map_err(io::Error::from);
    }
    if !whole_groups(&tree, ranges) {
        return bao_tree::io::sync::encode_ranges(data, outboard, ranges, out)
            .map_err(io::Error::from);
    }
    // The hash pairs are read from the outboard 64 KiB at a time: a range's pairs lie close
    // together in pre-order, and a read per pair was a system call per 16 KiB sent.
    let mut window = OutboardWindow::default();
    for item in tree.ranges_pre_order_chunks_iter_ref(ranges, 0) {
        match item {
            BaoChunk::Parent { node, .. } => {
                let offset = tree.pre_order_offset(node).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("node {node:?} is not in the outboard"),
                    )
                })? * 64;
                let pair = window.pair(&outboard.data, offset)?;
                out.slot(64)?.copy_from_slice(pair);
            }
            BaoChunk::Leaf {
                start_chunk, size, ..
            } => out.leaf(start_chunk.to_bytes(), size)?,
        }
    }
    Ok(())
}

/// A window of an outboard file, read [`OutboardWindow::SIZE`] bytes at a time.
#[derive(Default)]
struct OutboardWindow {
    start: u64,
    bytes: Vec<u8>,
}

impl OutboardWindow {
    const SIZE: usize = 64 * 1024;

    /// The 64-byte hash pair at `offset` of `file`.
    fn pair(&mut self, file: &std::fs::File, offset: u64) -> io::Result<&[u8]> {
        use std::os::unix::fs::FileExt;
        let cached = offset >= self.start && offset + 64 <= self.start + self.bytes.len() as u64;
        if !cached {
            self.bytes.resize(Self::SIZE, 0);
            let mut filled = 0;
            while filled < 64 {
                match file.read_at(&mut self.bytes[filled..], offset + filled as u64)? {
                    0 => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the outboard file is shorter than its tree",
                        ));
                    }
                    n => filled += n,
                }
            }
            self.bytes.truncate(filled);
            self.start = offset;
        }
        let at = (offset - self.start) as usize;
        Ok(&self.bytes[at..at + 64])
    }
}

/// Whether every group that `ranges` (truncated to the blob) touches is asked for whole.
fn whole_groups(tree: &bao_tree::BaoTree, ranges: &bao_tree::ChunkRangesRef) -> bool {
    tree.ranges_pre_order_chunks_iter_ref(ranges, 0)
        .all(|item| match item {
            bao_tree::iter::BaoChunk::Leaf { ranges, .. } => ranges.is_all(),
            bao_tree::iter::BaoChunk::Parent { .. } => true,
        })
}

/// Bytes handed from the encoder thread to the task that writes the stream, per buffer.
const SEND_CHUNK: usize = 1 << 20;

/// A buffer of [`SEND_CHUNK`] bytes of which the first `len` are to be sent. Buffers go back and
/// forth between the encoder and the writer without being cleared or resized, so each is
/// zeroed once, when it is made.
struct SendBuf {
    bytes: Box<[u8]>,
    len: usize,
}

/// Send buffers not in use, kept for the next response (at most 8): a response of a few MiB
/// would otherwise make (and zero) most of its buffers afresh.
static POOL: agora_net::pool::BufferPool = agora_net::pool::BufferPool::new(SEND_CHUNK, 8);

impl SendBuf {
    fn new() -> Self {
        SendBuf {
            bytes: POOL.take(),
            len: 0,
        }
    }

    fn filled(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl Drop for SendBuf {
    fn drop(&mut self) {
        POOL.give(std::mem::take(&mut self.bytes));
    }
}

/// Passes what is written on in buffers of [`SEND_CHUNK`] bytes (blocking while two are
/// queued), and the leaves of `file` asked for with [`ChunkSender::leaf`]. Fails once the other
/// side stopped listening.
struct ChunkSender<'a> {
    chunks: tokio::sync::mpsc::Sender<SendBuf>,
    buf: SendBuf,
    /// The blob's data.
    file: &'a std::fs::File,
    /// Leaves of the current buffer still to be read: adjacent in `file` from `at`, at these
    /// places in the buffer (with their hash pairs between them).
    pending: Vec<std::ops::Range<usize>>,
    at: u64,
}

impl<'a> ChunkSender<'a> {
    fn new(chunks: tokio::sync::mpsc::Sender<SendBuf>, file: &'a std::fs::File) -> Self {
        ChunkSender {
            chunks,
            buf: SendBuf::new(),
            file,
            pending: Vec::new(),
            at: 0,
        }
    }

    /// Hands the filled part of the buffer to the writer, once its leaves are read.
    fn send(&mut self) -> io::Result<()> {
        self.read_pending()?;
        if self.buf.len == 0 {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buf, SendBuf::new());
        self.chunks
            .blocking_send(full)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the stream was closed"))
    }

    /// Reserves the next `n` bytes of the stream (at most [`SEND_CHUNK`]); returns where they
    /// start in the buffer.
    fn reserve(&mut self, n: usize) -> io::Result<usize> {
        if SEND_CHUNK - self.buf.len < n {
            self.send()?;
        }
        let start = self.buf.len;
        self.buf.len += n;
        Ok(start)
    }

    /// The next `n` bytes of the stream, to be filled in.
    fn slot(&mut self, n: usize) -> io::Result<&mut [u8]> {
        let start = self.reserve(n)?;
        Ok(&mut self.buf.bytes[start..start + n])
    }

    /// The next `size` bytes of the stream are the file's from `offset`: read with the leaves
    /// adjacent to it, before the buffer is sent.
    fn leaf(&mut self, offset: u64, size: usize) -> io::Result<()> {
        let pending: usize = self.pending.iter().map(|r| r.len()).sum();
        if offset != self.at + pending as u64 {
            self.read_pending()?;
        }
        let start = self.reserve(size)?;
        if self.pending.is_empty() {
            self.at = offset;
        }
        self.pending.push(start..start + size);
        Ok(())
    }

    /// Reads the pending leaves into their places, with one `preadv` (more if it comes back
    /// short).
    fn read_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut slices = Vec::with_capacity(self.pending.len());
        let mut rest: &mut [u8] = &mut self.buf.bytes;
        let mut passed = 0;
        for range in &self.pending {
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(range.start - passed);
            let (slot, tail) = tail.split_at_mut(range.len());
            slices.push(io::IoSliceMut::new(slot));
            (rest, passed) = (tail, range.end);
        }
        let total: usize = self.pending.iter().map(|r| r.len()).sum();
        let mut slices = &mut slices[..];
        let mut done = 0;
        while done < total {
            match rustix::io::preadv(self.file, slices, self.at + done as u64) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the blob's file is shorter than its tree",
                    ));
                }
                Ok(n) => {
                    done += n;
                    io::IoSliceMut::advance_slices(&mut slices, n);
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.pending.clear();
        Ok(())
    }
}

impl io::Write for ChunkSender<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len == SEND_CHUNK {
            self.send()?;
        }
        let n = data.len().min(SEND_CHUNK - self.buf.len);
        self.slot(n)?.copy_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

pub async fn write_frame<W: futures::AsyncWrite + Unpin, T: Serialize>(
    io: &mut W,
    value: &T,
) -> io::Result<()> {
    let bytes = crate::wire::encode(value);
    io.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    io.write_all(&bytes).await?;
    io.flush().await
}

/// Reads one length-prefixed frame of at most `limit` bytes (the framing of agora-net).
pub use agora_net::read_frame_with_limit as read_limited_frame;

#[cfg(test)]
mod tests {
    use super::*;

    /// The buffers `encode` hands over for `ranges` of a blob of `data`, joined.
    fn encoded(data: &[u8], ranges: &ChunkRanges, recheck: bool) -> Vec<u8> {
        try_encode(data, data.len(), ranges, recheck).unwrap()
    }

    /// `encode` of a blob of `data` whose file holds only its first `on_disk` bytes.
    fn try_encode(
        data: &[u8],
        on_disk: usize,
        ranges: &ChunkRanges,
        recheck: bool,
    ) -> io::Result<Vec<u8>> {
        use bao_tree::io::{outboard::PreOrderOutboard, sync::CreateOutboard};
        let dir = tempfile::tempdir().unwrap();
        let outboard =
            PreOrderOutboard::<Vec<u8>>::create_sized(data, data.len() as u64, BLOCK_SIZE).unwrap();
        std::fs::write(dir.path().join("data"), &data[..on_disk]).unwrap();
        std::fs::write(dir.path().join("outboard"), &outboard.data).unwrap();
        let open = |name| std::fs::File::open(dir.path().join(name)).unwrap();
        let blob = crate::store::OpenBlob {
            data: open("data"),
            outboard: PreOrderOutboard {
                root: outboard.root,
                tree: outboard.tree,
                data: open("outboard"),
            },
            size: data.len() as u64,
            recheck,
        };
        let (chunks, mut received) = tokio::sync::mpsc::channel(1024);
        let mut out = ChunkSender::new(chunks, &blob.data);
        encode(&blob, ranges, &mut out)?;
        out.send()?;
        let mut joined = Vec::new();
        while let Ok(buf) = received.try_recv() {
            joined.extend_from_slice(buf.filled());
        }
        Ok(joined)
    }

    /// A blob file cut short after it was shared (it is the user's file, shared in place)
    /// fails the response with an error instead of sending what is not there.
    #[test]
    fn a_blob_file_cut_short_fails_the_encoding() {
        let data: Vec<u8> = (0..2 * 1024 * 1024 + 100u32)
            .map(|i| (i % 253) as u8)
            .collect();
        for on_disk in [0, 16 * 1024 + 7, 1024 * 1024 + 16 * 1024, data.len() - 1] {
            let e = try_encode(&data, on_disk, &ChunkRanges::all(), false).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{on_disk}: {e}");
        }
    }

    /// Reading groups straight into the send buffers gives bao-tree's encoding byte for byte:
    /// whole blobs, single groups, several ranges, the short last group, ranges past the end,
    /// and ranges that are not whole groups (which bao-tree's encoder serves).
    #[test]
    fn encoding_into_send_buffers_matches_bao_tree() {
        let data: Vec<u8> = (0..3 * 1024 * 1024 + 5000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        let chunks = ChunkNum::chunks(data.len() as u64).0;
        let r = |a: u64, b: u64| ChunkRanges::from(ChunkNum(a)..ChunkNum(b));
        let cases = [
            ChunkRanges::all(),
            r(0, 16),
            r(16, 48) | r(1024, 2048),
            r(3072, chunks),
            ChunkRanges::from(ChunkNum(3072)..),
            r(5000, 6000),
            r(0, 3) | r(40, 41),
            ChunkRanges::empty(),
        ];
        let tree = bao_tree::BaoTree::new(data.len() as u64, BLOCK_SIZE);
        let whole = |r: &ChunkRanges| {
            whole_groups(&tree, bao_tree::io::sync::truncate_ranges(r, tree.size()))
        };
        assert!(cases[..5].iter().all(whole), "read into the send buffers");
        assert!(!whole(&cases[5]) && !whole(&cases[6]), "bao-tree's encoder");
        for ranges in cases {
            let mut reference = Vec::new();
            let outboard = bao_tree::io::outboard::PreOrderMemOutboard::create(&data, BLOCK_SIZE);
            bao_tree::io::sync::encode_ranges(&data, &outboard, &ranges, &mut reference).unwrap();
            assert_eq!(encoded(&data, &ranges, false), reference, "{ranges:?}");
            assert_eq!(
                encoded(&data, &ranges, true),
                reference,
                "{ranges:?} rechecked"
            );
        }
    }

    #[test]
    fn request_ranges_round_trip_and_round_to_groups() {
        let hash = blake3::hash(b"x");
        let ranges =
            ChunkRanges::from(ChunkNum(16)..ChunkNum(32)) | ChunkRanges::from(ChunkNum(64)..);
        let req = Request::new(&hash, &ranges);
        assert_eq!(req.ranges, vec![(16, Some(32)), (64, None)]);
        assert_eq!(req.chunk_ranges().unwrap(), ranges);
        let odd = Request {
            hash: req.hash.clone(),
            ranges: vec![(3, Some(5))],
        };
        assert_eq!(
            odd.chunk_ranges().unwrap(),
            ChunkRanges::from(ChunkNum(0)..ChunkNum(16))
        );
    }

    #[test]
    fn pairs_round_trip_and_tolerate_junk() {
        let r = ChunkRanges::from(ChunkNum(0)..ChunkNum(16)) | ChunkRanges::from(ChunkNum(32)..);
        assert_eq!(pairs_to_ranges(&ranges_to_pairs(&r)), r);
        assert_eq!(
            pairs_to_ranges(&[(10, Some(5)), (0, Some(16)), (8, Some(20))]),
            ChunkRanges::from(ChunkNum(0)..ChunkNum(20))
        );
    }

    #[test]
    fn hostile_ranges_are_refused() {
        let hash = blake3::hash(b"x").to_hex().to_string();
        for ranges in [
            vec![(5, Some(5))],
            vec![(9, Some(3))],
            vec![(0, None), (10, Some(20))],
            vec![(10, Some(20)), (0, Some(5))],
            (0..300).map(|i| (i * 2, Some(i * 2 + 1))).collect(),
        ] {
            let req = Request {
                hash: hash.clone(),
                ranges,
            };
            assert!(req.chunk_ranges().is_err(), "{req:?}");
        }
    }
}
