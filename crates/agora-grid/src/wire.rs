//! What grid peers say to each other on `/agora/grid/1.0.0` (through the node's request layer)
//! and on the gossip topic [`ANNOUNCE_TOPIC`], as postcard, with the limits a receiver checks
//! before it keeps anything.

use libp2p::StreamProtocol;
use libp2p_identity::PeerId;
use serde::{Deserialize, Serialize};

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/agora/grid/1.0.0");
/// Gossip topic on which submitters with open units announce themselves.
pub const ANNOUNCE_TOPIC: &str = "agora/grid/announce/1";
/// DHT key under which submitters with open units provide (workers look it up).
pub fn grid_key() -> Vec<u8> {
    blake3::hash(b"agora/grid/1.0.0 submitters")
        .as_bytes()
        .to_vec()
}

pub type Digest = [u8; 32];

/// Largest result a unit may produce: it travels inside one reveal frame.
pub const MAX_RESULT: usize = 3 * 1024 * 1024;
/// Most units in one job.
pub const MAX_UNITS: usize = 100_000;
/// Most replicas of one unit (including those added after disagreement).
pub const MAX_REPLICAS: u8 = 16;
/// Largest program accepted (bytes of the `.wasm`).
pub const MAX_PROGRAM: u64 = 64 * 1024 * 1024;
/// Largest input of one unit.
pub const MAX_INPUT: u64 = 256 * 1024 * 1024;
/// Inputs up to this size travel inside the assignment…
pub const MAX_INLINE_INPUT: u64 = 1024 * 1024;
/// …as long as one answer carries at most this many input bytes (the frame limit is 4 MiB).
pub const MAX_INLINE_TOTAL: u64 = 2 * 1024 * 1024;
/// Longest deadline of a unit (the sandbox's wall-clock guard is set above it).
pub const MAX_LEASE_MS: u64 = 2 * 3600 * 1000;
/// Most units one Fetch may ask for.
pub const MAX_SLOTS: u8 = 64;
/// Longest unit name (an input file name).
pub const MAX_NAME: usize = 255;

/// A job as its submitter defines it. Its id is [`JobSpec::id`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub submitter: PeerId,
    /// BLAKE3 of the `.wasm` bytes (a blob of the submitter).
    pub program: Digest,
    pub program_size: u64,
    pub units: Vec<UnitSpec>,
    pub replicas: u8,
    pub quorum: u8,
    pub max_replicas: u8,
    /// Fuel each replica may burn.
    pub fuel: u64,
    /// Linear memory each replica may grow to (bytes).
    pub memory: u64,
    /// How long a worker has from assignment to commitment.
    pub lease_ms: u64,
    /// Paid per accepted unit to each worker that agreed (ledger base units; 0 = unpaid).
    pub pay: u64,
    /// When it was submitted (ms since the epoch); makes ids of repeated jobs differ.
    pub created_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitSpec {
    pub name: String,
    pub input: Digest,
    pub size: u64,
}

impl JobSpec {
    pub fn id(&self) -> Digest {
        let mut h = blake3::Hasher::new();
        h.update(b"agora-grid job v1");
        h.update(&encode(self));
        *h.finalize().as_bytes()
    }

    /// The seed a unit's program gets for `random_get`: the same on every replica.
    pub fn seed(&self, unit: u32) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(b"agora-grid seed v1");
        h.update(&self.id());
        h.update(&unit.to_le_bytes());
        *h.finalize().as_bytes()
    }

    /// Checks the limits; the error names the one broken.
    pub fn check(&self) -> Result<(), String> {
        if self.units.is_empty() {
            return Err("a job needs at least one unit".into());
        }
        if self.units.len() > MAX_UNITS {
            return Err(format!("{} units; at most {MAX_UNITS}", self.units.len()));
        }
        if self.quorum == 0 || self.quorum > self.replicas {
            return Err(format!(
                "quorum {} must be between 1 and replicas ({})",
                self.quorum, self.replicas
            ));
        }
        if self.max_replicas < self.replicas || self.max_replicas > MAX_REPLICAS {
            return Err(format!(
                "max replicas {} must be between replicas ({}) and {MAX_REPLICAS}",
                self.max_replicas, self.replicas
            ));
        }
        if self.program_size > MAX_PROGRAM {
            return Err(format!(
                "program of {} bytes; at most {MAX_PROGRAM}",
                self.program_size
            ));
        }
        if self.fuel == 0 {
            return Err("fuel must be positive".into());
        }
        if self.lease_ms == 0 || self.lease_ms > MAX_LEASE_MS {
            return Err(format!(
                "a unit's deadline must be between 1 s and {} s",
                MAX_LEASE_MS / 1000
            ));
        }
        for u in &self.units {
            if u.size > MAX_INPUT {
                return Err(format!(
                    "input {:?} of {} bytes; at most {MAX_INPUT}",
                    u.name, u.size
                ));
            }
            if u.name.len() > MAX_NAME {
                return Err(format!("unit name longer than {MAX_NAME} bytes"));
            }
        }
        Ok(())
    }
}

/// Why a replica produced no result. Identical on every honest peer for the same program and
/// input (the sandbox is deterministic), so errors are compared like results.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunFailure {
    OutOfFuel,
    OutOfMemory { limit: u64 },
    Trap { message: String },
    Exit { code: i32 },
    OutputCap { limit: u64 },
}

impl std::fmt::Display for RunFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::OutOfFuel => write!(f, "out of fuel"),
            Self::OutOfMemory { limit } => write!(f, "out of memory (limit {limit} bytes)"),
            Self::Trap { message } => write!(f, "trap: {message}"),
            Self::Exit { code } => write!(f, "exited with status {code}"),
            Self::OutputCap { limit } => write!(f, "output exceeded {limit} bytes"),
        }
    }
}

/// What one replica of a unit produced. Its [`Outcome::digest`] is what replicas compare.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Ok {
        #[serde(with = "hex_digest")]
        result: Digest,
        size: u64,
        fuel: u64,
    },
    Err {
        error: RunFailure,
        fuel: u64,
    },
}

impl Outcome {
    pub fn digest(&self) -> Digest {
        let mut h = blake3::Hasher::new();
        h.update(b"agora-grid outcome v1");
        h.update(&encode(self));
        *h.finalize().as_bytes()
    }

    pub fn fuel(&self) -> u64 {
        match self {
            Self::Ok { fuel, .. } | Self::Err { fuel, .. } => *fuel,
        }
    }
}

mod hex_digest {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex::encode(d))
        } else {
            serde::Serialize::serialize(d, s)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            let v = hex::decode(&s).map_err(serde::de::Error::custom)?;
            v.try_into()
                .map_err(|_| serde::de::Error::custom("expected 32 bytes"))
        } else {
            <[u8; 32]>::deserialize(d)
        }
    }
}

/// One replica handed to a worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub job: Digest,
    pub unit: u32,
    pub program: Digest,
    pub program_size: u64,
    pub input: Digest,
    pub input_size: u64,
    pub fuel: u64,
    pub memory: u64,
    pub lease_ms: u64,
    /// The most fuel an accepted unit of this job has used so far (0 = none accepted yet):
    /// with its measured speed, a worker judges whether it can finish before the lease ends.
    pub expected_fuel: u64,
    pub seed: [u8; 32],
    /// The input itself when it is at most [`MAX_INLINE_INPUT`] bytes (saves a blob fetch per
    /// small unit); empty otherwise. The worker checks it against `input` before using it.
    pub input_inline: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// A worker asks for up to `slots` replicas it can finish within their lease at its
    /// measured `fuel_per_sec`, with at most `memory` bytes each.
    Fetch {
        slots: u8,
        fuel_per_sec: u64,
        memory: u64,
    },
    /// A worker commits to an outcome ([`crate::proto::commitment`]).
    Commit {
        job: Digest,
        unit: u32,
        commitment: Digest,
    },
    /// A worker reveals its outcome; a result's bytes come along.
    Reveal {
        job: Digest,
        unit: u32,
        outcome: Outcome,
        result: Vec<u8>,
    },
    /// The submitter asks a worker that committed to reveal now.
    Pull { job: Digest, unit: u32 },
    /// A worker asks what became of its replica (to drop what it holds).
    Settled { job: Digest, unit: u32 },
    /// A worker is still working on its replica (every 15 s).
    Progress { job: Digest, unit: u32 },
    /// A submitter tells a peer it just met (or all it is connected to, on a new job) that it
    /// has open units: gossip needs a mesh first, this does not.
    Offer(Announce),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Assign(Vec<Assignment>),
    /// Nothing for you now; ask again after `retry_ms`.
    NoWork {
        retry_ms: u64,
    },
    /// Commitment recorded; reveal now if `reveal`, else wait to be pulled.
    Committed {
        reveal: bool,
    },
    /// Reveal recorded. `decided` when the unit is decided; `accepted` when this worker's
    /// outcome was the one agreed.
    Revealed {
        decided: bool,
        accepted: bool,
    },
    /// Answer to a pull.
    Reveal {
        outcome: Outcome,
        result: Vec<u8>,
    },
    /// The job or unit is over, or unknown here: drop what you hold for it.
    Gone,
    /// Still undecided; keep holding.
    Pending,
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("postcard encoding of an in-memory value")
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|e| format!("malformed grid message: {e}"))
}

/// An announcement on [`ANNOUNCE_TOPIC`]: "I have open units". The author is gossipsub's
/// signed source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    pub open_units: u32,
    pub max_fuel: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message survives postcard (no self-describing serde attributes sneak in).
    #[test]
    fn every_message_round_trips_through_postcard() {
        let outcomes = [
            Outcome::Ok {
                result: [1; 32],
                size: 3,
                fuel: 9,
            },
            Outcome::Err {
                error: RunFailure::Trap {
                    message: "unreachable".into(),
                },
                fuel: 4,
            },
            Outcome::Err {
                error: RunFailure::OutOfMemory { limit: 1 },
                fuel: 0,
            },
        ];
        for o in &outcomes {
            let back: Outcome = decode(&encode(o)).unwrap();
            assert_eq!(&back, o);
            let r = Request::Reveal {
                job: [2; 32],
                unit: 7,
                outcome: o.clone(),
                result: vec![1, 2, 3],
            };
            assert_eq!(decode::<Request>(&encode(&r)).unwrap(), r);
            let p = Response::Reveal {
                outcome: o.clone(),
                result: vec![],
            };
            assert_eq!(decode::<Response>(&encode(&p)).unwrap(), p);
        }
        let a = Response::Assign(vec![Assignment {
            job: [3; 32],
            unit: 1,
            program: [4; 32],
            program_size: 5,
            input: [6; 32],
            input_size: 7,
            fuel: 8,
            memory: 9,
            lease_ms: 10,
            expected_fuel: 11,
            seed: [12; 32],
            input_inline: b"abc".to_vec(),
        }]);
        assert_eq!(decode::<Response>(&encode(&a)).unwrap(), a);
        assert!(decode::<Request>(&[0xff, 0xff]).is_err());
    }
}
