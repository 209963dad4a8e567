//! A process-wide pool of I/O buffers of one size.
//!
//! Transfers use big buffers over and over: the TLS read-ahead, the seeder's send buffers, the
//! downloader's leaf buffers. A buffer made afresh costs its zeroing and, on first touch, a page
//! fault per page; a pooled one costs neither. A pool keeps at most `keep` idle buffers, so what
//! it holds is bounded (`size × keep`) whatever the load was.

use std::sync::Mutex;

pub struct BufferPool {
    size: usize,
    keep: usize,
    free: Mutex<Vec<Box<[u8]>>>,
}

impl BufferPool {
    /// A pool of `size`-byte buffers that keeps at most `keep` of them idle.
    pub const fn new(size: usize, keep: usize) -> Self {
        BufferPool {
            size,
            keep,
            free: Mutex::new(Vec::new()),
        }
    }

    /// An idle buffer, or a new zeroed one. Its contents are whatever its last user left.
    pub fn take(&self) -> Box<[u8]> {
        let pooled = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        pooled.unwrap_or_else(|| vec![0; self.size].into_boxed_slice())
    }

    /// Gives `buf` back: kept if it is this pool's size and fewer than `keep` are idle.
    pub fn give(&self, buf: Box<[u8]>) {
        if buf.len() != self.size {
            return;
        }
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < self.keep {
            free.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buffers given back are taken again (the same memory, as last written); the pool keeps
    /// no more than `keep`, and no buffer of another size; once it is empty, new buffers come
    /// zeroed.
    #[test]
    fn buffers_are_reused_up_to_the_bound() {
        let pool = BufferPool::new(4096, 2);
        let mut bufs: Vec<_> = (0..3).map(|_| pool.take()).collect();
        assert!(
            bufs.iter()
                .all(|b| b.len() == 4096 && b.iter().all(|&x| x == 0))
        );
        bufs[0][0] = 7;
        let kept: Vec<*const u8> = bufs.iter().map(|b| b.as_ptr()).collect();
        for b in bufs {
            pool.give(b);
        }
        pool.give(vec![0; 100].into_boxed_slice());
        assert_eq!(pool.free.lock().unwrap().len(), 2, "at most `keep` idle");
        let again = [pool.take(), pool.take()];
        assert!(again.iter().all(|b| kept.contains(&b.as_ptr())));
        assert!(again.iter().any(|b| b[0] == 7), "not cleared");
        assert!(pool.free.lock().unwrap().is_empty(), "both taken again");
        assert!(
            pool.take().iter().all(|&x| x == 0),
            "then a new, zeroed one"
        );
    }
}
