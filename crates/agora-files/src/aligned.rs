//! Reading a response's leaves into page-aligned buffers, so that verified leaves go to an
//! `O_DIRECT` file as they are, without first being copied into an aligned buffer.
//!
//! [`LeafReader`] is the decoder's reader. Each leaf (a 16 KiB chunk group) is read straight
//! from the stream into a buffer of its own that starts at a page boundary; `pwritev` then
//! takes a run of leaves from where they are. The buffers are pooled and never cleared: a
//! fresh buffer is zeroed once, and a reused one is already initialized, so no read pays for
//! zeroing its buffer (tokio-util's `Compat` zero-fills any uninitialized read buffer) and no
//! leaf lands in fresh memory that page-faults on first touch. Parent hash pairs (64 bytes)
//! are read straight from the stream into arrays: there is no read buffer to copy leaves out of.

use std::io;

use agora_net::pool::BufferPool;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Alignment of `O_DIRECT` offsets, lengths and buffers: a page, which covers every logical
/// block size in use.
pub const DIRECT_ALIGN: usize = 4096;

/// The largest leaf: a chunk group.
const LEAF: usize = 16 * 1024;

/// Leaf buffers not in use, kept for the next leaves (at most 512, 10 MiB): room for a leaf
/// at a page boundary.
static POOL: BufferPool = BufferPool::new(LEAF + DIRECT_ALIGN, 512);

/// A leaf's bytes at a page boundary of `mem`; `mem` goes back to the pool when dropped.
struct LeafBuf {
    mem: Box<[u8]>,
    start: usize,
    len: usize,
}

impl LeafBuf {
    /// A buffer with room for `len` bytes at a page boundary.
    fn take(len: usize) -> Self {
        let mem = match len <= LEAF {
            true => POOL.take(),
            false => vec![0; len + DIRECT_ALIGN].into_boxed_slice(),
        };
        let start = mem.as_ptr().align_offset(DIRECT_ALIGN);
        LeafBuf { mem, start, len }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.mem[self.start..self.start + self.len]
    }
}

impl AsRef<[u8]> for LeafBuf {
    fn as_ref(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.len]
    }
}

impl Drop for LeafBuf {
    fn drop(&mut self) {
        POOL.give(std::mem::take(&mut self.mem));
    }
}

/// Whether every buffer of `run` starts at a page boundary and is a whole number of pages long.
pub fn pages(run: &[Bytes]) -> bool {
    run.iter().all(|b| {
        (b.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN) && b.len().is_multiple_of(DIRECT_ALIGN)
    })
}

/// A stream reader for bao-tree's decoder that reads each leaf into a page-aligned buffer.
pub struct LeafReader<R> {
    inner: R,
}

impl<R> LeafReader<R> {
    pub fn new(inner: R) -> Self {
        LeafReader { inner }
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: AsyncRead + Unpin> iroh_io::AsyncStreamReader for LeafReader<R> {
    async fn read_bytes(&mut self, len: usize) -> io::Result<Bytes> {
        let mut buf = LeafBuf::take(len);
        let mut filled = 0;
        while filled < len {
            match self.inner.read(&mut buf.bytes_mut()[filled..]).await? {
                0 => break,
                n => filled += n,
            }
        }
        if filled == 0 {
            return Ok(Bytes::new());
        }
        buf.len = filled;
        Ok(Bytes::from_owner(buf))
    }

    async fn read<const L: usize>(&mut self) -> io::Result<[u8; L]> {
        let mut buf = [0; L];
        self.inner.read_exact(&mut buf).await?;
        Ok(buf)
    }
}
