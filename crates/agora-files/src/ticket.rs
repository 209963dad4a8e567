//! Tickets: a blob id plus where to get it, for a peer not yet in the same network.
//!
//! Format: `agora1` followed by URL-safe base64 (no padding) of the JSON
//! `{"hash": hex, "peer": peer id, "addrs": [multiaddr, …]}`.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::Hash;

const PREFIX: &str = "agora1";
/// Longest ticket accepted.
const MAX_TICKET_LEN: usize = 8192;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub hash: Hash,
    pub peer: PeerId,
    pub addrs: Vec<Multiaddr>,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    hash: String,
    peer: String,
    addrs: Vec<String>,
}

impl Ticket {
    pub fn encode(&self) -> String {
        let wire = Wire {
            hash: self.hash.to_hex().to_string(),
            peer: self.peer.to_string(),
            addrs: self.addrs.iter().map(|a| a.to_string()).collect(),
        };
        format!(
            "{PREFIX}{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&wire).expect("serialises"))
        )
    }

    pub fn decode(s: &str) -> Result<Self, String> {
        let body = s
            .strip_prefix(PREFIX)
            .ok_or_else(|| format!("a ticket starts with {PREFIX}"))?;
        if s.len() > MAX_TICKET_LEN {
            return Err("ticket too long".into());
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| format!("ticket is not valid base64: {e}"))?;
        let wire: Wire =
            serde_json::from_slice(&bytes).map_err(|e| format!("ticket is not valid: {e}"))?;
        Ok(Self {
            hash: Hash::from_hex(&wire.hash).map_err(|e| format!("ticket hash: {e}"))?,
            peer: wire.peer.parse().map_err(|e| format!("ticket peer: {e}"))?,
            addrs: wire
                .addrs
                .iter()
                .map(|a| a.parse().map_err(|e| format!("ticket address {a}: {e}")))
                .collect::<Result<_, _>>()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let t = Ticket {
            hash: blake3::hash(b"hi"),
            peer: PeerId::random(),
            addrs: vec!["/ip4/127.0.0.1/tcp/4001".parse().unwrap()],
        };
        assert_eq!(Ticket::decode(&t.encode()).unwrap(), t);
        assert!(Ticket::decode("agora1!!!").is_err());
        assert!(Ticket::decode("nope").is_err());
        assert!(Ticket::decode(&format!("agora1{}", "A".repeat(10_000))).is_err());
    }
}
