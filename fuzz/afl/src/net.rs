//! agora-net frame reading: `read_frame_with_limit` (u32 big-endian length, then the bytes)
//! over a `futures::io::Cursor`, frame after frame until the first error. The first input byte
//! picks the limit (low 3 bits) and whether the stream arrives whole or a few bytes per read
//! (the next bits); the rest is the stream. Checks as in
//! `crates/agora-net/tests/fuzz_decoders.rs`: a length over the limit is refused before
//! allocating, no more is held than what arrived plus one read chunk, and each frame read,
//! written again with `write_frame`, is exactly the bytes it was read from.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use agora_net::{MAX_FRAME_LEN, MAX_REFUSAL_LEN, read_frame_with_limit, write_frame};
use futures::{AsyncRead, executor::block_on, io::Cursor};

use crate::peak_of;

/// Bytes a reader may hold beyond what arrived: its first read chunk (64 KiB in `rpc.rs`),
/// `read_to_end`'s growth and the error message.
const SLACK: usize = 64 * 1024 + 4 * 1024;

const LIMITS: [usize; 8] = [0, 1, 4, 100, 255, MAX_REFUSAL_LEN, 65_536, MAX_FRAME_LEN];

/// A reader that hands out at most `step` bytes per read, as a network stream does.
struct Trickle<'a> {
    bytes: &'a [u8],
    step: usize,
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let n = buf.len().min(self.step).min(self.bytes.len());
        buf[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Poll::Ready(Ok(n))
    }
}

/// One frame as `write_frame` writes it.
fn framed(data: &[u8]) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    block_on(write_frame(&mut out, data)).expect("a frame under the limit is written");
    out.into_inner()
}

/// Checks one `read_frame_with_limit` on `rest` (the unread stream); returns the frame length
/// consumed (with its prefix), or `None` at the first error.
fn check_read(
    rest: &[u8],
    limit: usize,
    read: impl FnOnce() -> io::Result<Vec<u8>>,
) -> Option<usize> {
    let claimed = rest
        .get(..4)
        .map(|b| u32::from_be_bytes(b.try_into().unwrap()) as usize);
    let (read, peak) = peak_of(read);
    if claimed.is_some_and(|c| c > limit) {
        let e = read
            .as_ref()
            .expect_err("a length over the limit is refused");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(
            peak < 1024,
            "{peak} bytes held refusing an oversized length"
        );
    }
    assert!(
        peak <= 2 * rest.len() + SLACK,
        "{peak} bytes held reading {claimed:?} claimed, {} present",
        rest.len()
    );
    let Ok(frame) = read else {
        // Everything complete and under the limit was read.
        assert!(claimed.is_none_or(|c| c > limit || rest.len() < 4 + c));
        return None;
    };
    assert!(frame.len() <= limit);
    assert_eq!(Some(frame.len()), claimed);
    let again = framed(&frame);
    assert_eq!(
        &rest[..again.len()],
        &again[..],
        "a frame is the bytes it was read from"
    );
    Some(again.len())
}

pub fn run(data: &[u8]) {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let limit = LIMITS[(mode & 7) as usize];
    let step = (mode >> 3) as usize % 8;
    if step == 0 {
        // Whole, from a cursor.
        let mut cursor = Cursor::new(stream);
        loop {
            let at = cursor.position() as usize;
            let read = || block_on(read_frame_with_limit(&mut cursor, limit));
            let Some(n) = check_read(&stream[at..], limit, read) else {
                return;
            };
            assert_eq!(
                cursor.position() as usize,
                at + n,
                "the reader stops at the frame's end"
            );
        }
    } else {
        // `step` bytes per read.
        let mut reader = Trickle {
            bytes: stream,
            step,
        };
        loop {
            let rest = reader.bytes;
            let read = || block_on(read_frame_with_limit(&mut reader, limit));
            let Some(n) = check_read(rest, limit, read) else {
                return;
            };
            assert_eq!(
                reader.bytes.len(),
                rest.len() - n,
                "the reader stops at the frame's end"
            );
        }
    }
}

pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let two: Vec<u8> = [framed(b"hello"), framed(&[0x55; 300])].concat();
    let mut refusal = ((b"busy".len() as u32) | 1 << 31).to_be_bytes().to_vec();
    refusal.extend_from_slice(b"busy");
    let mut huge = (u32::MAX).to_be_bytes().to_vec();
    huge.extend_from_slice(&[7; 10]);
    vec![
        ("two-frames-whole-max".into(), [&[7u8][..], &two].concat()),
        (
            "two-frames-step3-1k".into(),
            [&[(3 << 3) | 5u8][..], &two].concat(),
        ),
        (
            "empty-frame-limit0".into(),
            [&[0u8][..], &framed(b"")].concat(),
        ),
        ("refusal".into(), [&[7u8][..], &refusal].concat()),
        ("huge-claim".into(), [&[6u8][..], &huge].concat()),
    ]
}
