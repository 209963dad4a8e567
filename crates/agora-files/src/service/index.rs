//! The search client and announcing: publishing names to the peers closest to each keyword,
//! querying them, and re-announcing held blobs. The index itself is [`crate::search::Index`].

use super::*;

/// Index requests waiting for the handler; more are refused.
const SEARCH_QUEUE: usize = 64;

/// Answers `/agora/search/1.0.0`: index requests within each peer's rate, handled on a
/// blocking thread (the index is behind a lock).
pub(super) fn serve_index(files: &Arc<Files>) -> Result<(), FilesError> {
    let net = files.net.clone();
    let (tx, mut requests) = tokio::sync::mpsc::channel::<agora_net::InboundRequest>(SEARCH_QUEUE);
    net.serve(search::PROTOCOL, tx)
        .map_err(|e| FilesError::BadTarget(e.to_string()))?;
    tokio::spawn({
        let files = Arc::downgrade(files);
        let net = net.clone();
        async move {
            while let Some(req) = requests.recv().await {
                let Some(files) = files.upgrade() else { return };
                if let Err(reason) = files.search_rate.admit(
                    &req.peer,
                    1.0,
                    files.net.admission(),
                    budget::REFUSED_SEARCH_RATE,
                ) {
                    req.reply.refuse(reason);
                    continue;
                }
                let agora_net::InboundRequest { peer, data, reply } = req;
                // Index work holds the index lock: off the async workers.
                let handled = tokio::task::spawn_blocking(move || {
                    match crate::wire::decode::<search::Request>(&data) {
                        Ok(request) => files.index.lock().unwrap().handle(
                            peer,
                            request,
                            std::time::Instant::now(),
                        ),
                        Err(e) => search::Handled {
                            response: search::Response::Refused(format!("malformed request: {e}")),
                            refused: vec![search::Refused::Malformed],
                        },
                    }
                })
                .await;
                let Ok(handled) = handled else { continue };
                for refused in &handled.refused {
                    net.admission().refuse(refused.budget());
                }
                let _ = reply.send(crate::wire::encode(&handled.response));
            }
        }
    });
    Ok(())
}

impl Files {
    pub(super) async fn announce_all(&self) {
        let Ok(list) = self.store.list() else { return };
        self.index.lock().unwrap().expire(std::time::Instant::now());
        for (hash, meta) in list {
            if !meta.stale {
                let _ = self.net.provide(hash.as_bytes().to_vec()).await;
                self.publish_name(&meta.name, meta.size, &hash).await;
            }
        }
    }

    /// Stores index entries for `name` at the peers closest to each of its keywords, and in
    /// this node's own index.
    pub async fn publish_name(&self, name: &str, size: u64, hash: &Hash) {
        let me = self.net.local_peer_id();
        let entry = search::Entry {
            name: name.to_owned(),
            size,
            hash: hash.to_hex().to_string(),
            provider: me.to_string(),
        };
        for keyword in search::keywords(name) {
            let request = search::Request::Publish {
                keyword: keyword.clone(),
                entries: vec![entry.clone()],
            };
            let _ = self
                .index
                .lock()
                .unwrap()
                .handle(me, request, std::time::Instant::now());
            let peers = self
                .net
                .closest_peers(search::keyword_key(&keyword))
                .await
                .unwrap_or_default();
            let bytes = crate::wire::encode(&search::Request::Publish {
                keyword,
                entries: vec![entry.clone()],
            });
            let sends = peers.into_iter().take(search::REPLICAS).map(|peer| {
                self.net.request(
                    peer,
                    search::PROTOCOL,
                    bytes.clone(),
                    Duration::from_secs(10),
                )
            });
            for result in futures::future::join_all(sends).await {
                if let Err(e) = result {
                    tracing::debug!("publishing a keyword failed: {e}");
                }
            }
        }
    }

    /// Searches the network for names containing every word of `query`.
    pub async fn search(&self, query: &str) -> Result<Vec<search::Hit>, FilesError> {
        let all = search::keywords(query);
        let Some(keyword) = all.iter().max_by_key(|k| k.chars().count()).cloned() else {
            return Err(FilesError::BadTarget(
                "give at least one word of two or more letters or digits".into(),
            ));
        };
        let me = self.net.local_peer_id();
        let mut entries =
            self.index
                .lock()
                .unwrap()
                .query(&keyword, &all, std::time::Instant::now());
        let peers = self
            .net
            .closest_peers(search::keyword_key(&keyword))
            .await
            .unwrap_or_default();
        let bytes = crate::wire::encode(&search::Request::Query {
            keyword,
            all: all.clone(),
        });
        let asks = peers
            .into_iter()
            .filter(|p| *p != me)
            .take(search::REPLICAS * 2)
            .map(|peer| {
                self.net.request(
                    peer,
                    search::PROTOCOL,
                    bytes.clone(),
                    Duration::from_secs(10),
                )
            });
        for answer in futures::future::join_all(asks).await {
            if let Ok(Ok(search::Response::Results(found))) =
                answer.map(|b| crate::wire::decode::<search::Response>(&b))
            {
                // An answer is untrusted: keep only entries that really match.
                entries.extend(
                    found
                        .into_iter()
                        .take(search::MAX_ENTRIES_PER_MESSAGE)
                        .filter(|e| {
                            let have = search::keywords(&e.name);
                            Hash::from_hex(&e.hash).is_ok() && all.iter().all(|k| have.contains(k))
                        }),
                );
            }
        }
        Ok(search::merge(entries))
    }
}
