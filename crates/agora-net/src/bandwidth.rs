//! Bandwidth totals.
//!
//! libp2p-metrics counts bytes per transport stack and direction into a Prometheus registry and
//! keeps the counters private. We give that counting its own registry and read the totals back
//! from its text encoding, which is the same text `/metrics` serves.

use std::sync::Arc;

use prometheus_client::{encoding::text::encode, registry::Registry};

const METRIC: &str = "libp2p_bandwidth_bytes_total";

/// Bytes sent and received over all transports since start.
#[derive(Clone, Debug)]
pub struct Bandwidth {
    registry: Arc<Registry>,
}

impl Bandwidth {
    pub(crate) fn new(registry: Registry) -> Self {
        Self {
            registry: Arc::new(registry),
        }
    }

    /// Prometheus text of the bandwidth counters (ends with `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// `(bytes_in, bytes_out)`.
    pub fn totals(&self) -> (u64, u64) {
        parse_totals(&self.encode())
    }
}

fn parse_totals(text: &str) -> (u64, u64) {
    let (mut inbound, mut outbound) = (0u64, 0u64);
    for line in text.lines().filter(|l| l.starts_with(METRIC)) {
        let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        if line.contains("direction=\"Inbound\"") {
            inbound += value as u64;
        } else if line.contains("direction=\"Outbound\"") {
            outbound += value as u64;
        }
    }
    (inbound, outbound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_by_direction() {
        let text = "# TYPE libp2p_bandwidth_bytes counter\n\
            libp2p_bandwidth_bytes_total{protocols=\"/ip4/tcp\",direction=\"Inbound\"} 10\n\
            libp2p_bandwidth_bytes_total{protocols=\"/ip4/udp/quic-v1\",direction=\"Inbound\"} 5\n\
            libp2p_bandwidth_bytes_total{protocols=\"/ip4/tcp\",direction=\"Outbound\"} 7\n\
            # EOF\n";
        assert_eq!(parse_totals(text), (15, 7));
    }
}
