//! The groupware protocol, [`PROTOCOL`] (`/agora/docs/1.0.0`), on the node's request layer:
//! postcard-encoded [`Request`]s and [`Response`]s.
//!
//! - `Sync`: one round of syncing a space — membership heads and the operations the other side
//!   may lack, and one [`SyncMsg`] per document ([`crate::proto::sync`]). The initiator runs
//!   rounds until both sides are quiet. Only members of the space (any role) are answered.
//! - `Invite`: an admin hands the invitee the space's membership log, which names it; the
//!   invitee checks the log itself and keeps the invite until `agora space join`.
//! - `Hold` / `Fetch`: a member leaves an encrypted envelope with a holder (one of the peers
//!   closest to the space's holder tag) / takes the envelopes held for a tag after a cursor
//!   ([`crate::proto::keys`], [`crate::proto::holder`]). Holders answer anyone: they hold only
//!   ciphertext, within quotas per sender and per space.

use serde::{Deserialize, Serialize};

use crate::proto::doc::DocId;
use crate::proto::membership::SpaceId;
use crate::proto::sync::SyncMsg;

pub const PROTOCOL: libp2p::StreamProtocol = libp2p::StreamProtocol::new("/agora/docs/1.0.0");

/// Documents named in one sync round at most.
pub const MAX_DOCS_PER_ROUND: usize = 256;
/// Membership operations carried in one message at most (a whole log fits).
pub const MAX_OPS_PER_MESSAGE: usize = crate::proto::membership::MAX_OPS;
/// Change bytes one response carries at most, all documents together (under the request
/// layer's 4 MiB frame).
pub const MAX_RESPONSE_CHANGE_BYTES: usize = 3 * 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Sync {
        space: SpaceId,
        members: Members,
        docs: Vec<(DocId, SyncMsg)>,
        /// Ask the responder to include the documents it has and this list does not name.
        all_docs: bool,
    },
    Invite {
        /// The space's whole membership log, encoded operations.
        ops: Vec<Vec<u8>>,
    },
    Hold {
        tag: [u8; 32],
        envelope: Vec<u8>,
    },
    Fetch {
        tag: [u8; 32],
        /// The last sequence number already taken from this holder.
        since: Option<u64>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Sync {
        members: Members,
        docs: Vec<(DocId, SyncMsg)>,
    },
    Invited,
    Held,
    Fetched {
        /// (sequence number, envelope), oldest first.
        envelopes: Vec<(u64, Vec<u8>)>,
        more: bool,
    },
}

/// A side's membership heads and the operations the other side may lack.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    pub heads: Vec<crate::OpId>,
    pub ops: Vec<Vec<u8>>,
    /// Space keys sealed to members (each opens only for its member).
    pub grants: Vec<crate::proto::keys::Grant>,
}

/// Grants carried in one message at most.
pub const MAX_GRANTS: usize = 4096;
/// Envelope bytes one fetch answer carries at most.
pub const MAX_FETCH_BYTES: usize = 3 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("malformed message: {0}")]
    Decode(String),
    #[error("message over limits: {0}")]
    Limits(String),
}

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("postcard encoding of owned data does not fail")
}

impl Request {
    /// Decodes untrusted bytes and checks every count before anything else looks at them.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let r: Request =
            postcard::from_bytes(bytes).map_err(|e| WireError::Decode(e.to_string()))?;
        match &r {
            Request::Sync { members, docs, .. } => {
                members.check()?;
                check_docs(docs)?;
            }
            Request::Invite { ops } => check_ops(ops)?,
            Request::Hold { envelope, .. } => {
                if envelope.len() > crate::proto::keys::MAX_ENVELOPE_BYTES {
                    return Err(WireError::Limits(format!(
                        "an envelope of {} bytes",
                        envelope.len()
                    )));
                }
            }
            Request::Fetch { .. } => {}
        }
        Ok(r)
    }
}

impl Response {
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let r: Response =
            postcard::from_bytes(bytes).map_err(|e| WireError::Decode(e.to_string()))?;
        if let Response::Sync { members, docs } = &r {
            members.check()?;
            check_docs(docs)?;
        }
        Ok(r)
    }
}

impl Members {
    fn check(&self) -> Result<(), WireError> {
        if self.heads.len() > crate::MAX_PARENTS * 64 {
            return Err(WireError::Limits("too many membership heads".into()));
        }
        if self.grants.len() > MAX_GRANTS || self.grants.iter().any(|g| g.ct.len() > 4096) {
            return Err(WireError::Limits("too many or too large key grants".into()));
        }
        check_ops(&self.ops)
    }
}

fn check_ops(ops: &[Vec<u8>]) -> Result<(), WireError> {
    if ops.len() > MAX_OPS_PER_MESSAGE {
        return Err(WireError::Limits(format!(
            "{} membership operations, more than {MAX_OPS_PER_MESSAGE}",
            ops.len()
        )));
    }
    if let Some(op) = ops.iter().find(|o| o.len() > crate::MAX_OP_BYTES) {
        return Err(WireError::Limits(format!(
            "a membership operation of {} bytes",
            op.len()
        )));
    }
    Ok(())
}

fn check_docs(docs: &[(DocId, SyncMsg)]) -> Result<(), WireError> {
    if docs.len() > MAX_DOCS_PER_ROUND {
        return Err(WireError::Limits(format!(
            "{} documents in one round, more than {MAX_DOCS_PER_ROUND}",
            docs.len()
        )));
    }
    for (_, m) in docs {
        m.check_limits().map_err(WireError::Limits)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_over_limit_messages_are_errors() {
        for bytes in [
            &[][..],
            &[0xff; 64][..],
            &[0, 0xff, 0xff, 0xff, 0xff, 0x0f][..],
        ] {
            assert!(Request::decode(bytes).is_err());
            assert!(Response::decode(bytes).is_err());
        }
        let many = Request::Sync {
            space: crate::OpId([1; 32]),
            members: Members::default(),
            docs: (0..MAX_DOCS_PER_ROUND + 1)
                .map(|i| (DocId([i as u8; 32]), SyncMsg::default()))
                .collect(),
            all_docs: false,
        };
        assert!(matches!(
            Request::decode(&encode(&many)),
            Err(WireError::Limits(_))
        ));
        let big_op = Request::Invite {
            ops: vec![vec![0; crate::MAX_OP_BYTES + 1]],
        };
        assert!(matches!(
            Request::decode(&encode(&big_op)),
            Err(WireError::Limits(_))
        ));
        let ok = Request::Invite {
            ops: vec![vec![1, 2]],
        };
        assert_eq!(Request::decode(&encode(&ok)).unwrap(), ok);
    }
}
