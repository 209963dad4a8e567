//! The bytes on a consensus stream.
//!
//! A stream carries frames one after another, in one direction only (the opener writes, the
//! acceptor reads). Each frame is
//!
//! ```text
//! u32 big-endian length | channel (unsigned LEB128 varint, 1..=10 bytes) | payload
//! ```
//!
//! The length prefix is agora-net's (`agora_net::read_frame_with_limit` reads it) and counts the
//! varint and the payload. The reader passes [`frame_limit`] as the limit, so a frame announcing
//! more than the largest message plus [`MAX_HEADER`] is refused before anything is allocated.

use commonware_runtime::IoBuf;

/// Longest channel varint: a u64 takes at most ten 7-bit groups.
pub(crate) const MAX_HEADER: usize = 10;

/// Why a frame was refused. The stream it came on is closed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum FrameError {
    #[error("frame ends inside the channel varint")]
    Truncated,
    #[error("channel varint is longer than ten bytes or overflows a u64")]
    BadVarint,
    #[error("payload of {len} bytes exceeds the limit of {limit}")]
    TooLarge { len: usize, limit: usize },
}

/// The largest frame (varint plus payload) a reader accepts for payloads of at most
/// `max_message` bytes.
pub(crate) fn frame_limit(max_message: usize) -> usize {
    max_message.saturating_add(MAX_HEADER)
}

/// The length prefix and channel varint that go before a payload of `payload_len` bytes.
/// Returns the buffer and how many of its bytes to write.
///
/// The caller guarantees `payload_len <= u32::MAX - MAX_HEADER` (the transport clamps its
/// `max_message` to that).
pub(crate) fn header(channel: u64, payload_len: usize) -> ([u8; 4 + MAX_HEADER], usize) {
    let mut buf = [0u8; 4 + MAX_HEADER];
    let varint_len = put_varint(channel, &mut buf[4..]);
    let frame_len = u32::try_from(varint_len + payload_len)
        .expect("max_message is clamped so that a frame length fits a u32");
    buf[..4].copy_from_slice(&frame_len.to_be_bytes());
    (buf, 4 + varint_len)
}

/// Splits a frame (what follows the length prefix) into its channel and payload, without
/// copying the payload.
pub(crate) fn decode(frame: Vec<u8>, max_message: usize) -> Result<(u64, IoBuf), FrameError> {
    let (channel, used) = get_varint(&frame)?;
    let len = frame.len() - used;
    if len > max_message {
        return Err(FrameError::TooLarge {
            len,
            limit: max_message,
        });
    }
    Ok((channel, IoBuf::from(frame).slice(used..)))
}

/// Writes `value` as LEB128 into `out` (at least ten bytes long); returns the bytes used.
fn put_varint(mut value: u64, out: &mut [u8]) -> usize {
    let mut i = 0;
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out[i] = byte;
            return i + 1;
        }
        out[i] = byte | 0x80;
        i += 1;
    }
}

/// Reads a LEB128 u64 from the start of `bytes`; returns it and the bytes used.
fn get_varint(bytes: &[u8]) -> Result<(u64, usize), FrameError> {
    let mut value = 0u64;
    for (i, &byte) in bytes.iter().enumerate().take(MAX_HEADER) {
        let group = u64::from(byte & 0x7f);
        // The tenth group holds only the top bit of a u64.
        if i == MAX_HEADER - 1 && group > 1 {
            return Err(FrameError::BadVarint);
        }
        value |= group << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    if bytes.len() < MAX_HEADER {
        Err(FrameError::Truncated)
    } else {
        Err(FrameError::BadVarint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(channel: u64, payload: &[u8]) -> Vec<u8> {
        let (head, used) = header(channel, payload.len());
        let mut bytes = head[..used].to_vec();
        bytes.extend_from_slice(payload);
        bytes
    }

    #[test]
    fn frames_round_trip_across_the_channel_range() {
        let mut channels = vec![0, 1, 127, 128, 16_383, 16_384, u64::MAX - 1, u64::MAX];
        channels.extend((0..64).map(|shift| 1u64 << shift));
        for channel in channels {
            let bytes = frame(channel, b"vote");
            let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
            assert_eq!(len, bytes.len() - 4, "the prefix counts varint and payload");
            assert!(len <= frame_limit(4));
            let (got, payload) = decode(bytes[4..].to_vec(), 4).unwrap();
            assert_eq!(got, channel);
            assert_eq!(payload.as_ref(), b"vote");
        }
    }

    #[test]
    fn empty_payloads_are_frames_too() {
        let bytes = frame(3, b"");
        let (channel, payload) = decode(bytes[4..].to_vec(), 0).unwrap();
        assert_eq!((channel, payload.len()), (3, 0));
    }

    #[test]
    fn payload_over_the_limit_is_refused() {
        // A one-byte varint leaves room for nine more payload bytes under the frame limit.
        let bytes = frame(1, &[0u8; 9]);
        assert_eq!(
            decode(bytes[4..].to_vec(), 8),
            Err(FrameError::TooLarge { len: 9, limit: 8 })
        );
    }

    #[test]
    fn malformed_varints_are_refused() {
        assert_eq!(decode(vec![], 8), Err(FrameError::Truncated));
        assert_eq!(decode(vec![0x80, 0x80], 8), Err(FrameError::Truncated));
        assert_eq!(decode(vec![0xff; 11], 8), Err(FrameError::BadVarint));
        // Ten bytes whose last group exceeds u64's top bit.
        let mut overflow = vec![0xff; 9];
        overflow.push(0x02);
        assert_eq!(decode(overflow, 8), Err(FrameError::BadVarint));
    }
}
