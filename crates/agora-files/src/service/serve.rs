//! Serving `/agora/blobs/1.1.0` (and `1.0.0`): admission per peer and in all, then the
//! verified stream of the ranges asked for ([`crate::protocol::serve_persistent`]).

use super::*;

/// Accepts blob streams, within [`budget::MAX_SERVES_PER_PEER`] per peer and
/// [`MAX_CONCURRENT_SERVES`] in all.
pub(super) fn serve_blobs(files: &Arc<Files>) -> Result<(), FilesError> {
    let net = files.net.clone();
    let accept = |protocol| {
        net.stream_control()
            .accept(protocol)
            .map_err(|e| FilesError::BadTarget(e.to_string()))
    };
    let persistent = accept(protocol::PROTOCOL)?;
    let one_shot = accept(protocol::PROTOCOL_ONE_SHOT)?;
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT_SERVES));
    let peer_slots = PeerSlots::new(budget::MAX_SERVES_PER_PEER);
    // Blobs whose in-place file went away or changed: stop announcing them, or downloaders
    // keep finding this node in the DHT and keep being refused.
    let (stale, mut stale_rx) = tokio::sync::mpsc::channel::<Hash>(protocol::STALE_QUEUE);
    tokio::spawn({
        let net = net.clone();
        async move {
            while let Some(hash) = stale_rx.recv().await {
                tracing::info!(hash = %hash.to_hex(), "no longer announcing a blob whose file changed");
                let _ = net.stop_providing(hash.as_bytes().to_vec()).await;
            }
        }
    });
    let served = protocol::Served {
        store: files.store.clone(),
        partials: files.partials.clone(),
        seeding: protocol::Seeding::default(),
        stale,
    };
    // Streams that carry requests one after another: a stream holds one of its peer's
    // MAX_SERVES_PER_PEER slots while it is open (so one peer cannot hold many idle streams),
    // and each request one of the MAX_CONCURRENT_SERVES serving slots while it is answered.
    tokio::spawn({
        let (net, served, slots, peer_slots) = (
            net.clone(),
            served.clone(),
            slots.clone(),
            peer_slots.clone(),
        );
        let mut incoming = persistent;
        async move {
            while let Some((peer, stream)) = incoming.next().await {
                let Some(peer_slot) = peer_slots.try_acquire(peer) else {
                    refused(&net, peer, stream, budget::REFUSED_SERVE_PEER);
                    continue;
                };
                let (net, served, slots) = (net.clone(), served.clone(), slots.clone());
                tokio::spawn(async move {
                    let _peer_slot = peer_slot;
                    let refusals = net.admission();
                    let budget = budget::REFUSED_SERVE_TOTAL;
                    let served =
                        protocol::serve_persistent(&served, peer, stream, &slots, refusals, budget);
                    if let Err(e) = served.await {
                        tracing::debug!(%peer, "blob stream failed: {e}");
                    }
                });
            }
        }
    });
    // One request per stream (older peers): both slots for the stream's life.
    tokio::spawn(async move {
        let mut incoming = one_shot;
        while let Some((peer, stream)) = incoming.next().await {
            // One peer holds at most MAX_SERVES_PER_PEER of the slots, so a slow reader
            // cannot take them all (each write also has a stall timeout).
            let admitted = match peer_slots.try_acquire(peer) {
                None => Err(budget::REFUSED_SERVE_PEER),
                Some(peer_slot) => slots
                    .clone()
                    .try_acquire_owned()
                    .map(|permit| (peer_slot, permit))
                    .map_err(|_| budget::REFUSED_SERVE_TOTAL),
            };
            let slots = match admitted {
                Ok(slots) => slots,
                Err(name) => {
                    refused(&net, peer, stream, name);
                    continue;
                }
            };
            let served = served.clone();
            tokio::spawn(async move {
                let _slots = slots;
                if let Err(e) = protocol::serve_one_shot(&served, peer, stream).await {
                    tracing::debug!(%peer, "blob request failed: {e}");
                }
            });
        }
    });
    Ok(())
}

/// Counts a refused stream and answers it [`protocol::Response::Busy`].
fn refused(net: &agora_net::Handle, peer: PeerId, stream: libp2p::Stream, name: &'static str) {
    net.admission().refuse(name);
    tracing::debug!(%peer, budget = name, "blob stream refused");
    tokio::spawn(protocol::refuse_stream(stream, name));
}
