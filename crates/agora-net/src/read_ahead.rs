//! Reading a TLS connection's socket [`READ_AHEAD`] bytes at a time.
//!
//! rustls reads at most one record (16 KiB and a few bytes) per read, so a bulk transfer made
//! a `recvfrom` per 16 KiB: 65,536 system calls per GiB received, each of which also made the
//! kernel send a window update (on loopback the sender's side of the connection then runs in the
//! receiver's system call). In the downloader's profile of a 1 GiB get, 28 % of its CPU was
//! under `recvfrom`, and only 4 % of it was the copy of the bytes. [`ReadAhead`] reads what
//! the socket has, up to [`READ_AHEAD`] bytes, and serves rustls's reads from that: one more
//! copy of every byte received, against a sixteenth of the system calls and acknowledgements.
//!
//! A connection holds a buffer only while it has bytes in it that were not read yet; buffers
//! come from a small process-wide pool, so idle connections cost nothing and a buffer is zeroed
//! once, when it is made.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use futures::{AsyncRead, AsyncWrite};

use crate::pool::BufferPool;

/// Bytes read from the socket at most at once.
pub(crate) const READ_AHEAD: usize = 256 * 1024;

/// Buffers not in use (at most 16 kept, 4 MiB).
static POOL: BufferPool = BufferPool::new(READ_AHEAD, 16);

/// A socket whose reads are served from up to [`READ_AHEAD`] bytes read at once; writes go
/// straight through.
pub(crate) struct ReadAhead<C> {
    inner: C,
    /// Bytes read and not yet handed out: `buf[pos..len]`.
    buf: Option<Box<[u8]>>,
    pos: usize,
    len: usize,
}

impl<C> ReadAhead<C> {
    pub(crate) fn new(inner: C) -> Self {
        ReadAhead {
            inner,
            buf: None,
            pos: 0,
            len: 0,
        }
    }

    /// Copies what is buffered into `out`; the buffer goes back to the pool once emptied.
    fn serve(&mut self, out: &mut [u8]) -> usize {
        let Some(buf) = &self.buf else { return 0 };
        let n = out.len().min(self.len - self.pos);
        out[..n].copy_from_slice(&buf[self.pos..self.pos + n]);
        self.pos += n;
        if self.pos == self.len
            && let Some(buf) = self.buf.take()
        {
            POOL.give(buf);
        }
        n
    }
}

impl<C: AsyncRead + Unpin> AsyncRead for ReadAhead<C> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if out.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.buf.is_some() {
            return Poll::Ready(Ok(this.serve(out)));
        }
        if out.len() >= READ_AHEAD {
            return Pin::new(&mut this.inner).poll_read(cx, out);
        }
        let mut buf = POOL.take();
        match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(n)) if n > 0 => {
                (this.buf, this.pos, this.len) = (Some(buf), 0, n);
                Poll::Ready(Ok(this.serve(out)))
            }
            other => {
                POOL.give(buf);
                other
            }
        }
    }
}

impl<C: AsyncWrite + Unpin> AsyncWrite for ReadAhead<C> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use futures::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::compat::TokioAsyncReadCompatExt;

    use super::*;

    /// Over a real loopback socket: reads of every size (a byte, a record, more than the
    /// read-ahead) get the bytes once and in order, the end of the stream is reported, and a
    /// drained connection holds no buffer.
    #[tokio::test]
    async fn reads_of_any_size_get_every_byte_in_order() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let (mut a, b) = (a.unwrap().compat(), b.unwrap().0.compat());
        let data: Vec<u8> = (0..3 * READ_AHEAD + 12_345)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            for part in sent.chunks(70_000) {
                a.write_all(part).await.unwrap();
            }
            a.close().await.unwrap();
        });
        let mut reader = ReadAhead::new(b);
        let mut got = Vec::new();
        let sizes = [1, 16 * 1024 + 29, READ_AHEAD + 1, 7, 4096];
        let mut buf = vec![0; READ_AHEAD + 1];
        for size in sizes.iter().cycle() {
            let n = reader.read(&mut buf[..*size]).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        writer.await.unwrap();
        assert!(
            got == data,
            "{} of {} bytes, or out of order",
            got.len(),
            data.len()
        );
        assert!(reader.buf.is_none(), "a drained connection holds no buffer");
    }
}
