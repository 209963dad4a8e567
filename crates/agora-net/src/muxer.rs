//! Yamux (`/yamux/1.0.0`) as Agora's stream multiplexer, with data frames of up to
//! [`SPLIT_SEND_SIZE`] (just under 64 KiB) instead of the 16 KiB that `libp2p-yamux` is fixed to.
//!
//! # Why not `libp2p-yamux`
//! `libp2p-yamux` does not expose the `yamux` crate's `split_send_size`, and its 16 KiB frames
//! cost a bulk transfer dearly: every frame is a separate hand-over between the writing task and
//! the connection task (and between the connection task and the reader on the other side), each
//! with its own wake-up and allocation. Measured with `agora-testbed transport-bench` (two
//! processes, a raw 1 GiB stream over TCP + Noise + Yamux on loopback, 2 cores): 356–402 MiB/s
//! and 1.7–2.3 CPU-s per GiB on each side with 16 KiB frames; 512–574 MiB/s with frames of
//! 64 KiB (which spill into a second, tiny Noise message); 565–613 MiB/s and 1.3 / 1.8 CPU-s
//! with this size; 522–660 MiB/s with 256 KiB frames. A whole `agora get`: 324–369 MiB/s with
//! 16 KiB frames, 372–398 with 256 KiB, 397–414 with this size.
//!
//! # Why not larger
//! A frame is written whole, so a small frame of another stream (a chat message, a Kademlia
//! reply) waits behind the data frame being sent. Measured on a 100 Mbit/s link (two network
//! namespaces, `tbf`) while a 64 MiB download runs: a direct message's round trip took
//! ~115–125 ms with 16 or 64 KiB frames, 89–129 ms with this size, and ~150–170 ms with
//! 256 KiB frames. The size is the largest body whose frame (12-byte header) fits one Noise
//! message (64,511 bytes of plaintext in libp2p-noise).
//!
//! The wire format is unchanged, so any yamux peer interoperates: a sender never puts more in
//! one frame than the receiver's window allows, `rust-yamux` accepts frame bodies of up to
//! 1 MiB and js-yamux bounds them by the window only.
//!
//! The [`StreamMuxer`] below does what `libp2p-yamux`'s does: inbound streams that arrive while
//! the connection is driven are buffered (at most [`MAX_BUFFERED_INBOUND`], further ones are
//! dropped, which resets them) until the swarm asks for them.

use std::{
    collections::VecDeque,
    io, iter,
    pin::Pin,
    task::{Context, Poll, Waker, ready},
};

use futures::{AsyncRead, AsyncWrite, future};
use libp2p::core::{
    muxing::{StreamMuxer, StreamMuxerEvent},
    upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo},
};

/// Largest data frame body this node sends: with yamux's 12-byte header, one Noise message
/// (libp2p-noise encrypts at most 64 KiB − 1 KiB of plaintext per message).
pub const SPLIT_SEND_SIZE: usize = 64 * 1024 - 1024 - 12;

/// Inbound streams held for the swarm at most; yamux's own ACK backlog makes a well-behaved
/// peer stop opening streams before this.
const MAX_BUFFERED_INBOUND: usize = 256;

/// The connection upgrade that sets up [`Muxer`] on a secured connection.
#[derive(Debug, Clone)]
pub struct Yamux(yamux::Config);

impl Default for Yamux {
    fn default() -> Self {
        let mut config = yamux::Config::default();
        config.set_split_send_size(SPLIT_SEND_SIZE);
        Yamux(config)
    }
}

impl Yamux {
    /// The upgrade with Agora's settings (for `SwarmBuilder::with_tcp` and friends).
    pub fn new() -> Self {
        Self::default()
    }
}

impl UpgradeInfo for Yamux {
    type Info = &'static str;
    type InfoIter = iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        iter::once("/yamux/1.0.0")
    }
}

impl<C> InboundConnectionUpgrade<C> for Yamux
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = Muxer<C>;
    type Error = io::Error;
    type Future = future::Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, io: C, _: Self::Info) -> Self::Future {
        future::ready(Ok(Muxer::new(yamux::Connection::new(
            Coalesced::new(io),
            self.0,
            yamux::Mode::Server,
        ))))
    }
}

impl<C> OutboundConnectionUpgrade<C> for Yamux
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = Muxer<C>;
    type Error = io::Error;
    type Future = future::Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, io: C, _: Self::Info) -> Self::Future {
        future::ready(Ok(Muxer::new(yamux::Connection::new(
            Coalesced::new(io),
            self.0,
            yamux::Mode::Client,
        ))))
    }
}

/// Writes of at most this many bytes are held until the next write or flush.
const HELD: usize = 64;

/// The secured connection under yamux, with each frame's 12-byte header sent together with its
/// body.
///
/// yamux writes a data frame as two writes, header then body. Under TLS each write is a record
/// of its own and a system call of its own, so every 64 KiB frame cost a 12-byte record (an
/// AES-GCM pass and 22 bytes of overhead, decrypted on the other side too) and a second
/// `writev`. Here a small write is held (it counts as written) and goes out in one vectored
/// write with the next one (rustls puts both in the same records), or at the next flush, which
/// yamux does after every frame. Noise buffers its writes itself; there it changes nothing.
struct Coalesced<C> {
    inner: C,
    held: [u8; HELD],
    held_len: usize,
}

impl<C> Coalesced<C> {
    fn new(inner: C) -> Self {
        Coalesced {
            inner,
            held: [0; HELD],
            held_len: 0,
        }
    }
}

impl<C: AsyncWrite + Unpin> Coalesced<C> {
    /// Writes out what is held.
    fn poll_write_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.held_len > 0 {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held[..self.held_len]))?;
            self.written_held(n)?;
        }
        Poll::Ready(Ok(()))
    }

    /// Drops the first `n` held bytes, which the inner writer took; returns how many of its
    /// `n` were not held ones.
    fn written_held(&mut self, n: usize) -> io::Result<usize> {
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let of_held = n.min(self.held_len);
        self.held.copy_within(of_held..self.held_len, 0);
        self.held_len -= of_held;
        Ok(n - of_held)
    }
}

impl<C: AsyncRead + Unpin> AsyncRead for Coalesced<C> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<C: AsyncWrite + Unpin> AsyncWrite for Coalesced<C> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.held_len + buf.len() <= HELD {
            this.held[this.held_len..this.held_len + buf.len()].copy_from_slice(buf);
            this.held_len += buf.len();
            return Poll::Ready(Ok(buf.len()));
        }
        while this.held_len > 0 {
            let both = [
                io::IoSlice::new(&this.held[..this.held_len]),
                io::IoSlice::new(buf),
            ];
            let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, &both))?;
            let of_buf = this.written_held(n)?;
            if of_buf > 0 {
                return Poll::Ready(Ok(of_buf));
            }
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_held(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_held(cx))?;
        Pin::new(&mut this.inner).poll_close(cx)
    }
}

/// One yamux connection, driven by the swarm's connection task.
pub struct Muxer<C> {
    connection: yamux::Connection<Coalesced<C>>,
    /// Streams the peer opened while the connection was being driven, until the swarm asks.
    inbound: VecDeque<yamux::Stream>,
    /// The swarm's task waiting in [`StreamMuxer::poll_inbound`].
    inbound_waker: Option<Waker>,
}

impl<C> Muxer<C> {
    fn new(connection: yamux::Connection<Coalesced<C>>) -> Self {
        Muxer {
            connection,
            inbound: VecDeque::new(),
            inbound_waker: None,
        }
    }
}

impl<C> Muxer<C>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    /// Drives the connection until the peer opens a stream (or the connection ends).
    fn poll_next_inbound(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<yamux::Stream, yamux::ConnectionError>> {
        match self.connection.poll_next_inbound(cx) {
            Poll::Ready(Some(result)) => Poll::Ready(result),
            Poll::Ready(None) => Poll::Ready(Err(yamux::ConnectionError::Closed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<C> StreamMuxer for Muxer<C>
where
    C: AsyncRead + AsyncWrite + Unpin + 'static,
{
    type Substream = yamux::Stream;
    type Error = yamux::ConnectionError;

    fn poll_inbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let this = self.get_mut();
        if let Some(stream) = this.inbound.pop_front() {
            return Poll::Ready(Ok(stream));
        }
        if let Poll::Ready(result) = this.poll_next_inbound(cx) {
            return Poll::Ready(result);
        }
        this.inbound_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_outbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        self.get_mut().connection.poll_new_outbound(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().connection.poll_close(cx)
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        let this = self.get_mut();
        let stream = match this.poll_next_inbound(cx) {
            Poll::Ready(Ok(stream)) => stream,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        if this.inbound.len() >= MAX_BUFFERED_INBOUND {
            tracing::warn!(%stream, "too many inbound streams waiting; resetting one");
            drop(stream);
        } else {
            this.inbound.push_back(stream);
            if let Some(waker) = this.inbound_waker.take() {
                waker.wake();
            }
        }
        // Come back at once: the connection may have more to do.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use futures::{AsyncReadExt, AsyncWriteExt};
    use libp2p::core::muxing::StreamMuxerExt;
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpStream,
    };
    use tokio_util::compat::TokioAsyncReadCompatExt;

    use super::*;

    /// A writer that takes at most `max` bytes per call, answers every third call `Pending`
    /// (waking at once), and records what each call received.
    struct Recorder {
        out: Vec<u8>,
        calls: Vec<usize>,
        flushes: usize,
        max: usize,
        polls: usize,
    }

    impl Recorder {
        fn new(max: usize) -> Self {
            Recorder {
                out: Vec::new(),
                calls: Vec::new(),
                flushes: 0,
                max,
                polls: 0,
            }
        }

        fn stall(&mut self, cx: &mut Context<'_>) -> bool {
            self.polls += 1;
            if self.max < usize::MAX && self.polls.is_multiple_of(3) {
                cx.waker().wake_by_ref();
                return true;
            }
            false
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            if this.stall(cx) {
                return Poll::Pending;
            }
            let mut taken = 0;
            for buf in bufs {
                let n = buf.len().min(this.max - taken);
                this.out.extend_from_slice(&buf[..n]);
                taken += n;
            }
            this.calls.push(taken);
            Poll::Ready(Ok(taken))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A frame header goes out in the same write as its body; a header alone (a window update)
    /// goes out at the flush; with a writer that takes a few bytes at a time and stalls, every
    /// byte still arrives once and in order.
    #[test]
    fn small_writes_go_out_with_the_next_write_or_at_the_flush() {
        let header = [7u8; 12];
        let body: Vec<u8> = (0..SPLIT_SEND_SIZE).map(|i| (i % 251) as u8).collect();
        let mut expected = Vec::new();
        for part in [&header[..], &body, &header, &header, &body[..100], &header] {
            expected.extend_from_slice(part);
        }
        for max in [usize::MAX, 5, 13, 4096] {
            let mut io = Coalesced::new(Recorder::new(max));
            futures::executor::block_on(async {
                io.write_all(&header).await.unwrap();
                io.write_all(&body).await.unwrap();
                io.flush().await.unwrap();
                io.write_all(&header).await.unwrap();
                io.flush().await.unwrap();
                io.write_all(&header).await.unwrap();
                io.write_all(&body[..100]).await.unwrap();
                io.write_all(&header).await.unwrap();
                io.close().await.unwrap();
            });
            let recorder = io.inner;
            assert!(
                recorder.out == expected,
                "max {max}: bytes lost or reordered"
            );
            if max == usize::MAX {
                assert_eq!(
                    recorder.calls,
                    [12 + body.len(), 12, 112, 12],
                    "one write per frame"
                );
                assert_eq!(recorder.flushes, 2);
            }
        }
    }

    /// A connected pair of real loopback TCP sockets.
    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    /// Forwards bytes from `from` to `to`, parsing the yamux frames on the way and keeping
    /// the largest data frame body seen in `largest`.
    async fn relay_measuring(
        mut from: impl tokio::io::AsyncRead + Unpin,
        mut to: impl tokio::io::AsyncWrite + Unpin,
        largest: Arc<AtomicUsize>,
    ) {
        let mut header = [0u8; 12];
        while from.read_exact(&mut header).await.is_ok() {
            to.write_all(&header).await.unwrap();
            // Type 0 is a data frame, whose length field is its body's; other types carry none.
            if header[1] == 0 {
                let len = u32::from_be_bytes(header[8..12].try_into().unwrap()) as usize;
                largest.fetch_max(len, Ordering::SeqCst);
                let mut body = vec![0u8; len];
                from.read_exact(&mut body).await.unwrap();
                to.write_all(&body).await.unwrap();
            }
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4093) as u8).collect()
    }

    /// Drives a muxer's connection on its own task, handing inbound streams to `tx`.
    fn drive<M>(mut muxer: M, tx: tokio::sync::mpsc::UnboundedSender<M::Substream>)
    where
        M: StreamMuxer + Unpin + Send + 'static,
        M::Substream: Send,
        M::Error: std::fmt::Debug,
    {
        tokio::spawn(async move {
            loop {
                let inbound = future::poll_fn(|cx| {
                    // Keep the connection moving; streams it yields are buffered for poll_inbound.
                    if let Poll::Ready(Err(_)) = muxer.poll_unpin(cx) {
                        return Poll::Ready(None);
                    }
                    match muxer.poll_inbound_unpin(cx) {
                        Poll::Ready(Ok(s)) => Poll::Ready(Some(s)),
                        Poll::Ready(Err(_)) => Poll::Ready(None),
                        Poll::Pending => Poll::Pending,
                    }
                })
                .await;
                match inbound {
                    Some(s) => {
                        if tx.send(s).is_err() {
                            return;
                        }
                    }
                    None => return,
                }
            }
        });
    }

    /// Our muxer on one side, stock `libp2p-yamux` on the other, with a relay between them
    /// that reads the yamux frames: a stream each way carries 3 MiB intact, so the wire format
    /// is plain yamux and the stock receiver accepts our frames, and ours are larger than
    /// stock 16 KiB but never larger than `SPLIT_SEND_SIZE`.
    #[tokio::test]
    async fn large_frames_interoperate_with_stock_libp2p_yamux() {
        let (a, a_relay) = tcp_pair().await;
        let (b_relay, b) = tcp_pair().await;
        let ((a_r, a_w), (b_r, b_w)) = (a_relay.into_split(), b_relay.into_split());
        let largest = Arc::new(AtomicUsize::new(0));
        tokio::spawn(relay_measuring(a_r, b_w, largest.clone()));
        tokio::spawn(relay_measuring(b_r, a_w, Arc::new(AtomicUsize::new(0))));
        let (a, b) = (a.compat(), b.compat());
        let mut ours = Yamux::new()
            .upgrade_outbound(a, "/yamux/1.0.0")
            .await
            .unwrap();
        let mut theirs = libp2p::yamux::Config::default()
            .upgrade_inbound(b, "/yamux/1.0.0")
            .await
            .unwrap();
        let data = pattern(3 << 20);

        // Ours opens and sends; theirs receives.
        let mut out = future::poll_fn(|cx| ours.poll_outbound_unpin(cx))
            .await
            .unwrap();
        let (tx_ours, mut rx_ours) = tokio::sync::mpsc::unbounded_channel();
        let (tx_theirs, mut rx_theirs) = tokio::sync::mpsc::unbounded_channel();
        let mut theirs_out = future::poll_fn(|cx| theirs.poll_outbound_unpin(cx))
            .await
            .unwrap();
        drive(ours, tx_ours);
        drive(theirs, tx_theirs);

        let sent = data.clone();
        let writer = tokio::spawn(async move {
            out.write_all(&sent).await.unwrap();
            out.close().await.unwrap();
        });
        let mut inbound = rx_theirs.recv().await.expect("stock side got the stream");
        let mut got = Vec::new();
        inbound.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data, "bytes differ after our large frames");
        // Every byte theirs read went through the relay first.
        let largest = largest.load(Ordering::SeqCst);
        assert!(
            largest > 16 * 1024 && largest <= SPLIT_SEND_SIZE,
            "our largest data frame: {largest} bytes"
        );

        // Theirs sends back on its own stream; ours receives.
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            theirs_out.write_all(&sent).await.unwrap();
            theirs_out.close().await.unwrap();
        });
        let mut inbound = rx_ours.recv().await.expect("our side got the stream");
        let mut got = Vec::new();
        inbound.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert!(got == data, "bytes differ after stock frames");
    }
}
