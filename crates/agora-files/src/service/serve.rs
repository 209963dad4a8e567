//! Serving `/agora/blobs/1.0.0`: admission per peer and in all, then the verified stream of
//! the ranges asked for ([`crate::protocol::serve_stream`]).

use super::*;

/// Accepts blob streams, within [`budget::MAX_SERVES_PER_PEER`] per peer and
/// [`MAX_CONCURRENT_SERVES`] in all.
pub(super) fn serve_blobs(files: &Arc<Files>) -> Result<(), FilesError> {
    let net = files.net.clone();
    let store = files.store.clone();
    let mut incoming = net
        .stream_control()
        .accept(protocol::PROTOCOL)
        .map_err(|e| FilesError::BadTarget(e.to_string()))?;
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT_SERVES));
    let peer_slots = PeerSlots::new(budget::MAX_SERVES_PER_PEER);
    let partials = files.partials.clone();
    let seeding = protocol::Seeding::default();
    // Blobs whose in-place file went away or changed: stop announcing them, or downloaders
    // keep finding this node in the DHT and keep being refused.
    let (stale_tx, mut stale_rx) = tokio::sync::mpsc::channel::<Hash>(protocol::STALE_QUEUE);
    tokio::spawn({
        let net = net.clone();
        async move {
            while let Some(hash) = stale_rx.recv().await {
                tracing::info!(hash = %hash.to_hex(), "no longer announcing a blob whose file changed");
                let _ = net.stop_providing(hash.as_bytes().to_vec()).await;
            }
        }
    });
    let serve_net = net.clone();
    tokio::spawn(async move {
        let net = serve_net;
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
                    net.admission().refuse(name);
                    tracing::debug!(%peer, budget = name, "blob request refused");
                    tokio::spawn(protocol::refuse_stream(stream, name));
                    continue;
                }
            };
            let (store, partials, seeding, stale) = (
                store.clone(),
                partials.clone(),
                seeding.clone(),
                stale_tx.clone(),
            );
            tokio::spawn(async move {
                let _slots = slots;
                let served = protocol::serve_stream(store, partials, seeding, peer, stream, stale);
                if let Err(e) = served.await {
                    tracing::debug!(%peer, "blob request failed: {e}");
                }
            });
        }
    });
    Ok(())
}
