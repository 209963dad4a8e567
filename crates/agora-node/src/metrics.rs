//! Prometheus metrics: libp2p's (registered by `agora-net`) and the node's own.

use std::sync::atomic::AtomicU64;

use agora_net::{Bandwidth, Stats};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};

pub struct Metrics {
    registry: Registry,
    bandwidth: Bandwidth,
    connected_peers: Gauge,
    connections: Gauge,
    routing_table_size: Gauge,
    uptime_seconds: Gauge,
    storage_bytes: Gauge,
    pub api_requests: Counter,
    pub api_auth_failures: Counter<u64, AtomicU64>,
    ledger_height: Gauge,
    ledger_applied_txs: Gauge,
    ledger_tx_per_sec: Gauge<f64, AtomicU64>,
    ledger_validator: Gauge,
}

impl Metrics {
    pub fn new(mut registry: Registry, bandwidth: Bandwidth) -> Self {
        let m = Self {
            registry: Registry::default(),
            bandwidth,
            connected_peers: Gauge::default(),
            connections: Gauge::default(),
            routing_table_size: Gauge::default(),
            uptime_seconds: Gauge::default(),
            storage_bytes: Gauge::default(),
            api_requests: Counter::default(),
            api_auth_failures: Counter::default(),
            ledger_height: Gauge::default(),
            ledger_applied_txs: Gauge::default(),
            ledger_tx_per_sec: Gauge::default(),
            ledger_validator: Gauge::default(),
        };
        let agora = registry.sub_registry_with_prefix("agora");
        agora.register(
            "connected_peers",
            "Peers with at least one open connection",
            m.connected_peers.clone(),
        );
        agora.register("connections", "Open connections", m.connections.clone());
        agora.register(
            "routing_table_size",
            "Peers in the Kademlia routing table",
            m.routing_table_size.clone(),
        );
        agora.register(
            "uptime_seconds",
            "Seconds since the node started",
            m.uptime_seconds.clone(),
        );
        agora.register(
            "storage_bytes",
            "Bytes used by the data directory",
            m.storage_bytes.clone(),
        );
        agora.register(
            "api_requests",
            "HTTP API requests received",
            m.api_requests.clone(),
        );
        agora.register(
            "api_auth_failures",
            "HTTP API requests refused for a missing or wrong token",
            m.api_auth_failures.clone(),
        );
        agora.register(
            "ledger_height",
            "Height of the last finalized ledger block applied",
            m.ledger_height.clone(),
        );
        agora.register(
            "ledger_applied_txs",
            "Ledger transactions applied since the node started",
            m.ledger_applied_txs.clone(),
        );
        agora.register(
            "ledger_tx_per_sec",
            "Ledger transactions per second over the last minute",
            m.ledger_tx_per_sec.clone(),
        );
        agora.register(
            "ledger_validator",
            "1 if this node runs consensus as a validator",
            m.ledger_validator.clone(),
        );
        Self { registry, ..m }
    }

    /// Updates the gauges from `stats` and returns the Prometheus text of all metrics.
    pub fn encode(
        &self,
        stats: &Stats,
        uptime_secs: u64,
        storage_bytes: u64,
        ledger: Option<&agora_ledger::service::Status>,
        consensus: &str,
        grid: &str,
    ) -> String {
        if let Some(l) = ledger {
            self.ledger_height.set(l.height as i64);
            self.ledger_applied_txs.set(l.applied_txs as i64);
            self.ledger_tx_per_sec.set(l.tx_per_sec);
            self.ledger_validator.set(i64::from(l.validator));
        }
        self.connected_peers.set(stats.connected_peers as i64);
        self.connections.set(stats.connections as i64);
        self.routing_table_size.set(stats.routing_table_size as i64);
        self.uptime_seconds.set(uptime_secs as i64);
        self.storage_bytes.set(storage_bytes as i64);
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        // Every encoding ends with `# EOF`; the exposition format allows it once, at the end.
        if let Some(stripped) = out.strip_suffix("# EOF\n") {
            out.truncate(stripped.len());
        }
        // The ledger engine's own metrics (Commonware's registry), prefixed with `consensus_`.
        for line in consensus
            .lines()
            .filter(|l| !l.trim().is_empty() && *l != "# EOF")
        {
            match line.strip_prefix("# ") {
                Some(comment) => {
                    let mut parts = comment.splitn(2, ' ');
                    let (kind, rest) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                    out.push_str(&format!("# {kind} consensus_{rest}\n"));
                }
                None => out.push_str(&format!("consensus_{line}\n")),
            }
        }
        out.push_str(grid);
        out.push_str(&self.bandwidth.encode());
        out
    }
}
