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
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::{Error, InboundRequest};

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

/// Most inbound requests handled at once per protocol; streams beyond it are dropped.
pub const MAX_INBOUND_PER_PROTOCOL: usize = 64;
/// How long a peer has to send its request once the stream is open.
const READ_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Attempts per request when the stream fails before the response starts.
const ATTEMPTS: usize = 3;

/// Sends one request on a new stream and reads the one response, within `timeout` in all.
///
/// A responder that is flooded with new streams drops some unread (libp2p-stream queues one
/// inbound stream per protocol at a time); the requester then sees the stream closed before
/// any response. Such a request is sent again on a fresh stream, up to [`ATTEMPTS`] times,
/// so application protocols must be idempotent (all of Agora's are).
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
    let len = read_frame_len(&mut stream, MAX_FRAME_LEN)
        .await
        .map_err(|e| {
            let retry = e.kind() != io::ErrorKind::InvalidData;
            (Error::Request(format!("receiving: {e}")), retry)
        })?;
    let mut buf = vec![0u8; len];
    stream
        .read_exact(&mut buf)
        .await
        .map_err(|e| (Error::Request(format!("receiving: {e}")), false))?;
    Ok(buf)
}

/// Accepts streams of `protocol` and hands each request to `requests`, writing back the reply.
pub(crate) fn serve(
    mut control: libp2p_stream::Control,
    protocol: StreamProtocol,
    requests: mpsc::Sender<InboundRequest>,
) -> Result<(), Error> {
    let mut incoming = control
        .accept(protocol.clone())
        .map_err(|_| Error::Request(format!("{protocol} is already served")))?;
    let slots = Arc::new(Semaphore::new(MAX_INBOUND_PER_PROTOCOL));
    tokio::spawn(async move {
        while let Some((peer, mut stream)) = incoming.next().await {
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tracing::debug!(%peer, %protocol, "too many inbound requests; dropping stream");
                continue;
            };
            let requests = requests.clone();
            tokio::spawn(async move {
                let _permit = permit;
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
                let (reply, response) = oneshot::channel();
                if requests
                    .try_send(InboundRequest { peer, data, reply })
                    .is_err()
                {
                    tracing::debug!(%peer, "request handler busy or gone; dropping request");
                    return;
                }
                if let Ok(response) = response.await
                    && let Err(e) = write_frame(&mut stream, &response).await
                {
                    tracing::debug!(%peer, "cannot send response: {e}");
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
    async fn truncated_frame_is_an_error() {
        let mut bytes = 10u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(b"abc");
        assert!(read_frame(&mut Cursor::new(bytes)).await.is_err());
    }
}
