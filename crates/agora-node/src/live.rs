//! Live events the node adds to `/v1/events` for the dashboard, besides those the services
//! broadcast themselves (network, chat, grid, docs):
//!
//! - `stats` every [`STATS_INTERVAL`], only while at least one event stream is open: traffic
//!   totals, peers, storage used, uptime (the dashboard draws its bandwidth chart from them);
//! - `files.job_progress` / `files.job_finished` for share, upload and download jobs started
//!   through the API, and `files.changed` when the set of held files changes through it;
//! - `ledger.block` for each newly finalized block applied (with the finality time this node
//!   saw) and `ledger.tx` for each of them that sent from or paid to this node's account.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast};

use crate::Node;

/// How often `stats` is sent while a client listens.
pub const STATS_INTERVAL: Duration = Duration::from_secs(2);
/// How long a measured storage size is reused (measuring walks the data directory).
const STORAGE_REFRESH: Duration = Duration::from_secs(30);
/// How often a running job's progress is looked at.
const JOB_POLL: Duration = Duration::from_millis(250);
/// Blocks reported at most per new tip (a node catching up skips the older ones).
const MAX_BLOCKS_PER_POLL: u64 = 32;
/// Recent blocks remembered with their finality time.
pub const RECENT_BLOCKS: usize = 256;
/// Jobs remembered for `GET /v1/jobs`.
pub const RECENT_JOBS: usize = 64;
/// Events buffered for a slow event stream before it lags.
const EVENT_CAP: usize = 1024;

/// One event for the stream: its SSE name and JSON data.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    pub name: &'static str,
    pub data: Value,
}

/// A finalized block as this node saw it arrive.
#[derive(Debug, Clone, Serialize)]
pub struct SeenBlock {
    pub height: u64,
    pub digest: String,
    pub timestamp_ms: u64,
    pub txs: usize,
    /// Milliseconds from the block's timestamp to this node applying it (`None` for blocks
    /// applied while nothing was looking, e.g. before this run).
    pub finality_ms: Option<u64>,
}

pub struct Live {
    events: broadcast::Sender<LiveEvent>,
    /// Woken when an event stream opens (stores a permit if nobody waits).
    stream_opened: Notify,
    jobs: Mutex<VecDeque<u64>>,
    blocks: Mutex<VecDeque<SeenBlock>>,
}

impl Default for Live {
    fn default() -> Self {
        Self {
            events: broadcast::channel(EVENT_CAP).0,
            stream_opened: Notify::new(),
            jobs: Mutex::new(VecDeque::new()),
            blocks: Mutex::new(VecDeque::new()),
        }
    }
}

impl Live {
    pub fn subscribe(&self) -> broadcast::Receiver<LiveEvent> {
        self.events.subscribe()
    }

    pub fn emit(&self, name: &'static str, data: Value) {
        let _ = self.events.send(LiveEvent { name, data });
    }

    pub(crate) fn stream_opened(&self) {
        self.stream_opened.notify_one();
    }

    /// Jobs started through the API, newest first.
    pub fn jobs(&self) -> Vec<u64> {
        self.jobs.lock().unwrap().iter().rev().copied().collect()
    }

    /// The newest `limit` blocks seen, newest first.
    pub fn recent_blocks(&self, limit: usize) -> Vec<SeenBlock> {
        self.blocks
            .lock()
            .unwrap()
            .iter()
            .rev()
            .take(limit)
            .cloned()
            .collect()
    }

    pub fn finality_ms(&self, height: u64) -> Option<u64> {
        self.blocks
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|b| b.height == height)
            .and_then(|b| b.finality_ms)
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Starts the stats and ledger watchers; they end with the node.
pub(crate) fn spawn(node: &Arc<Node>) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = vec![tokio::spawn(stats_loop(node.clone()))];
    if node.ledger.is_some() {
        tasks.push(tokio::spawn(ledger_loop(node.clone())));
    }
    tasks
}

async fn stats_loop(node: Arc<Node>) {
    let live = &node.dashboard.live;
    let mut storage: Option<(Instant, u64)> = None;
    loop {
        if node.dashboard.sse_clients() == 0 {
            tokio::select! {
                () = live.stream_opened.notified() => continue,
                () = node.shutdown.cancelled() => return,
            }
        }
        let storage_bytes = match storage {
            Some((at, bytes)) if at.elapsed() < STORAGE_REFRESH => bytes,
            _ => {
                let dir = node.data_dir.clone();
                let bytes = tokio::task::spawn_blocking(move || dir.disk_usage())
                    .await
                    .unwrap_or(0);
                storage = Some((Instant::now(), bytes));
                bytes
            }
        };
        if let Ok(stats) = node.net.stats().await {
            live.emit(
                "stats",
                json!({
                    "at_ms": unix_ms(),
                    "bytes_in": stats.bytes_in,
                    "bytes_out": stats.bytes_out,
                    "connected_peers": stats.connected_peers,
                    "connections": stats.connections,
                    "storage_bytes": storage_bytes,
                    "storage_quota": node.dashboard.upload_limit,
                    "uptime_secs": node.started.elapsed().as_secs(),
                }),
            );
        }
        tokio::select! {
            () = tokio::time::sleep(STATS_INTERVAL) => {}
            () = node.shutdown.cancelled() => return,
        }
    }
}

/// Follows a share, upload or download job and reports its progress until it ends. A job
/// already followed (a repeated identical request joins the running job) is not followed twice.
pub(crate) fn watch_job(node: &Arc<Node>, id: u64) {
    {
        let mut jobs = node.dashboard.live.jobs.lock().unwrap();
        if jobs.contains(&id) {
            return;
        }
        if jobs.len() >= RECENT_JOBS {
            jobs.pop_front();
        }
        jobs.push_back(id);
    }
    let node = node.clone();
    tokio::spawn(async move {
        let mut last: Option<Value> = None;
        loop {
            let Some(view) = node.files.job(id) else {
                return;
            };
            let json = serde_json::to_value(&view).unwrap_or_default();
            let running = json["state"] == "running";
            if last.as_ref() != Some(&json) {
                let name = if running {
                    "files.job_progress"
                } else {
                    "files.job_finished"
                };
                node.dashboard.live.emit(name, json.clone());
            }
            if !running {
                if view.kind == "share" && json["state"] == "done" {
                    node.dashboard.live.emit(
                        "files.changed",
                        json!({ "change": "shared", "hash": json["result"]["hash"], "job": id }),
                    );
                } else if view.kind == "get" && json["state"] == "done" {
                    node.dashboard.live.emit(
                        "files.changed",
                        json!({ "change": "downloaded", "hash": json["result"]["hash"], "job": id }),
                    );
                }
                return;
            }
            last = Some(json);
            tokio::select! {
                () = tokio::time::sleep(JOB_POLL) => {}
                () = node.shutdown.cancelled() => return,
            }
        }
    });
}

async fn ledger_loop(node: Arc<Node>) {
    let Some(ledger) = node.ledger.clone() else {
        return;
    };
    let me = ledger.account();
    let mut tips = ledger.tips();
    let mut seen = ledger.height();
    loop {
        tokio::select! {
            tip = tips.recv() => match tip {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            () = node.shutdown.cancelled() => return,
        }
        let height = ledger.height();
        if height <= seen {
            continue;
        }
        let observed = unix_ms();
        let from = (seen + 1).max(height.saturating_sub(MAX_BLOCKS_PER_POLL - 1));
        let (ledger2, last_seen) = (ledger.clone(), seen);
        let found = tokio::task::spawn_blocking(move || {
            let mut blocks = Vec::new();
            for h in from..=height {
                if let Ok(Some((block, digest, _))) = ledger2.block(h) {
                    blocks.push(SeenBlock {
                        height: h,
                        digest: digest.to_string(),
                        timestamp_ms: block.timestamp_ms,
                        txs: block.txs.len(),
                        finality_ms: Some(observed.saturating_sub(block.timestamp_ms)),
                    });
                }
            }
            let txs = if blocks.iter().any(|b| b.txs > 0) {
                ledger2
                    .history(&me, 100)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|r| r.height > last_seen && r.height <= height)
                    .collect()
            } else {
                Vec::new()
            };
            (blocks, txs)
        })
        .await;
        seen = height;
        let Ok((blocks, mut txs)) = found else {
            continue;
        };
        let live = &node.dashboard.live;
        {
            let mut recent = live.blocks.lock().unwrap();
            for b in &blocks {
                if recent.len() >= RECENT_BLOCKS {
                    recent.pop_front();
                }
                recent.push_back(b.clone());
            }
        }
        for b in blocks {
            live.emit("ledger.block", serde_json::to_value(&b).unwrap_or_default());
        }
        txs.reverse();
        for record in txs {
            let view = crate::ledger_api::view(record);
            live.emit("ledger.tx", serde_json::to_value(&view).unwrap_or_default());
        }
    }
}
