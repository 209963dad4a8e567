//! Request-response for application protocols, over libp2p streams.
//!
//! One request per stream: the requester opens a stream on the protocol, writes one frame and
//! closes its side; the responder reads the frame, writes one frame back.
//!
//! A frame is a u32 big-endian length followed by that many bytes. The length is checked
//! against [`MAX_FRAME_LEN`] before any buffer is allocated, so a peer announcing a huge frame
//! costs us four bytes of reading, not memory.

use std::{io, sync::Arc, time::Duration};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use tokio::sync::{Semaphore, mpsc};

use crate::{
    Error, InboundRequest, Reply,
    admission::{PeerSlots, Refusals},
};

/// Largest request or response frame, in bytes.
pub const MAX_FRAME_LEN: usize = 4 * 1024 * 1024;

/// Reads one frame, refusing lengths above [`MAX_FRAME_LEN`] before allocating.
pub async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    read_frame_with_limit(io, MAX_FRAME_LEN).await
}

/// Reads one frame (u32 big-endian length, then the bytes), refusing lengths above `limit`
/// before allocating.
pub async fn read_frame_with_limit<T: AsyncRead + Unpin>(
    io: &mut T,
    limit: usize,
) -> io::Result<Vec<u8>> {
    let len = read_frame_len(io, limit).await?;
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Reads a frame's length prefix; a length above `limit` is `InvalidData`.
async fn read_frame_len<T: AsyncRead + Unpin>(io: &mut T, limit: usize) -> io::Result<usize> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the limit of {limit}"),
        ));
    }
    Ok(len)
}

/// Writes one frame and closes the writing side.
pub async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, data: &[u8]) -> io::Result<()> {
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
    io.close().await
}

/// Most inbound requests handled at once per protocol, from all peers together.
pub const MAX_INBOUND_PER_PROTOCOL: usize = 64;
/// Most inbound requests of one peer handled at once per protocol: one peer cannot hold the
/// slots of [`MAX_INBOUND_PER_PROTOCOL`] by itself.
pub const MAX_INBOUND_PER_PEER: usize = 8;
/// Longest refusal reason sent on the wire, in bytes.
pub const MAX_REFUSAL_LEN: usize = 1024;
/// How long a peer has to send its request once the stream is open.
const READ_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a peer has to take our response: a slow reader loses its slot after this.
const WRITE_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// A response frame whose length has this bit set is a refusal: the remaining bits are the
/// length of a UTF-8 reason ([`MAX_FRAME_LEN`] is far below it, so no response is mistaken).
const REFUSAL_FLAG: u32 = 1 << 31;

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
}

/// Attempts per request when the stream fails before the response starts.
const ATTEMPTS: usize = 3;

/// Sends one request on a new stream and reads the one response, within `timeout` in all.
///
/// A responder that is flooded with new streams drops some unread (libp2p-stream queues one
/// inbound stream per protocol at a time); the requester then sees the stream closed before
/// any response. Such a request is sent again on a fresh stream, up to [`ATTEMPTS`] times,
/// so application protocols must be idempotent (all of Agora's are). A refusal is final.
pub(crate) async fn request(
    control: libp2p_stream::Control,
    peer: PeerId,
    protocol: StreamProtocol,
    data: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, Error> {
    let attempts = async {
        let mut last = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
            }
            match request_once(control.clone(), peer, protocol.clone(), &data).await {
                Ok(response) => return Ok(response),
                Err((e, retry)) if retry => last = Some(e),
                Err((e, _)) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Request("no attempt made".into())))
    };
    tokio::time::timeout(timeout, attempts)
        .await
        .map_err(|_| Error::Request(format!("no response within {timeout:?}")))?
}

/// One attempt; the flag says whether the failure is worth another attempt (the stream was
/// closed before the response began).
async fn request_once(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    protocol: StreamProtocol,
    data: &[u8],
) -> Result<Vec<u8>, (Error, bool)> {
    let mut stream = control
        .open_stream(peer, protocol)
        .await
        .map_err(|e| (Error::Request(e.to_string()), false))?;
    if let Err(e) = write_frame(&mut stream, data).await {
        return Err((Error::Request(format!("sending: {e}")), true));
    }
    // Closed before the response began: worth another attempt; an oversized length is not.
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.map_err(|e| {
        let retry = e.kind() != io::ErrorKind::InvalidData;
        (Error::Request(format!("receiving: {e}")), retry)
    })?;
    let len = u32::from_be_bytes(len);
    let receiving = |e: io::Error| (Error::Request(format!("receiving: {e}")), false);
    if len & REFUSAL_FLAG != 0 {
        let len = (len & !REFUSAL_FLAG) as usize;
        if len > MAX_REFUSAL_LEN {
            return Err((
                Error::Request(format!("refusal of {len} bytes exceeds {MAX_REFUSAL_LEN}")),
                false,
            ));
        }
        let mut reason = vec![0u8; len];
        stream.read_exact(&mut reason).await.map_err(receiving)?;
        return Err((
            Error::Refused(String::from_utf8_lossy(&reason).into_owned()),
            false,
        ));
    }
    let len = len as usize;
    if len > MAX_FRAME_LEN {
        return Err((
            Error::Request(format!(
                "receiving: frame of {len} bytes exceeds the limit of {MAX_FRAME_LEN}"
            )),
            false,
        ));
    }
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await.map_err(receiving)?;
    Ok(buf)
}

/// Writes a refusal frame with `reason` (cut to [`MAX_REFUSAL_LEN`] bytes at a character
/// boundary) and closes the writing side.
async fn write_refusal<T: AsyncWrite + Unpin + Send>(io: &mut T, reason: &str) -> io::Result<()> {
    let mut end = reason.len().min(MAX_REFUSAL_LEN);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    io.write_all(&(reason.len() as u32 | REFUSAL_FLAG).to_be_bytes())
        .await?;
    io.write_all(reason).await?;
    io.close().await
}

/// Accepts streams of `protocol` and hands each request to `requests`, writing back the reply.
///
/// Budgets, checked before the request is read: [`MAX_INBOUND_PER_PEER`] per peer and
/// [`MAX_INBOUND_PER_PROTOCOL`] in all; a request over either, or arriving while `requests` is
/// full, gets a refusal frame naming the budget and is counted on `refusals`.
pub(crate) fn serve(
    mut control: libp2p_stream::Control,
    protocol: StreamProtocol,
    requests: mpsc::Sender<InboundRequest>,
    refusals: Refusals,
) -> Result<(), Error> {
    let mut incoming = control
        .accept(protocol.clone())
        .map_err(|_| Error::Request(format!("{protocol} is already served")))?;
    let slots = Arc::new(Semaphore::new(MAX_INBOUND_PER_PROTOCOL));
    let peer_slots = PeerSlots::new(MAX_INBOUND_PER_PEER);
    tokio::spawn(async move {
        while let Some((peer, mut stream)) = incoming.next().await {
            let admitted = match peer_slots.try_acquire(peer) {
                None => Err((budget::PER_PEER, "busy: too many requests from you at once")),
                Some(peer_slot) => match slots.clone().try_acquire_owned() {
                    Ok(permit) => Ok((peer_slot, permit)),
                    Err(_) => Err((budget::TOTAL, "busy: too many requests at once")),
                },
            };
            let (peer_slot, permit) = match admitted {
                Ok(slots) => slots,
                Err((budget, reason)) => {
                    refusals.refuse(budget);
                    tracing::debug!(%peer, %protocol, budget, "inbound request refused");
                    // The refusal is written off the accept loop, bounded in time.
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(
                            WRITE_RESPONSE_TIMEOUT,
                            write_refusal(&mut stream, reason),
                        )
                        .await;
                    });
                    continue;
                }
            };
            let requests = requests.clone();
            let refusals = refusals.clone();
            tokio::spawn(async move {
                let _slots = (peer_slot, permit);
                let data = match tokio::time::timeout(READ_REQUEST_TIMEOUT, read_frame(&mut stream))
                    .await
                {
                    Ok(Ok(data)) => data,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, "bad request frame: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "request not sent in time");
                        return;
                    }
                };
                let (reply, response) = Reply::channel();
                if requests
                    .try_send(InboundRequest { peer, data, reply })
                    .is_err()
                {
                    refusals.refuse(budget::QUEUE);
                    tracing::debug!(%peer, "request handler busy or gone; refusing request");
                    let _ = tokio::time::timeout(
                        WRITE_RESPONSE_TIMEOUT,
                        write_refusal(&mut stream, "busy: request queue full"),
                    )
                    .await;
                    return;
                }
                let written = match response.await {
                    Ok(Ok(response)) => {
                        tokio::time::timeout(
                            WRITE_RESPONSE_TIMEOUT,
                            write_frame(&mut stream, &response),
                        )
                        .await
                    }
                    Ok(Err(reason)) => {
                        tokio::time::timeout(
                            WRITE_RESPONSE_TIMEOUT,
                            write_refusal(&mut stream, &reason),
                        )
                        .await
                    }
                    Err(_) => return,
                };
                match written {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(%peer, "cannot send response: {e}"),
                    Err(_) => tracing::debug!(%peer, "response not taken in time"),
                }
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use futures::io::Cursor;

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
}
