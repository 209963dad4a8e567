//! Space keys and what holders keep: end-to-end encryption of a space.
//!
//! # Keys
//! A [`SpaceKey`] is 32 random bytes with a random id, made by an admin at a causal point of
//! the membership (`after`, the heads it knew). It reaches each member as a [`Grant`]: the key
//! sealed with HPKE to the member's identity key (the same suite as chat mailboxes), the
//! plaintext signed by the admin over the space, the key, `after` and the member. The owner
//! makes the first key with the space; an admin who removes a member makes a new one and grants
//! it to everyone left (rotation); an admin who adds a member grants it every key it holds, so
//! the newcomer can read the history holders keep.
//!
//! Every member decrypts with any key it holds. It encrypts only with the *current* key
//! ([`current`]): one whose maker is an admin now and whose `after` covers every removal in
//! the log, the latest such (largest causal past, then lowest id). A removed member never gets
//! a key made after its removal, so it cannot read what is written afterwards. A member that
//! knows of a removal but has no key made after it yet does not upload until one arrives.
//!
//! # What holders see
//! Holders keep [`Envelope`]s under [`holder_tag`] of the space (a hash: not the space id):
//! `Sealed` — a [`Bundle`] of membership operations and signed document changes, encrypted with
//! a space key (XChaCha20-Poly1305, the nonce derived from key and plaintext so that the same
//! bundle uploaded twice is the same envelope) — and `Grant` — a sealed grant without its
//! recipient. Nothing else: no member ids, no document ids, no text; sizes and timing only.

use std::fmt;

use agora_chat::crypto::{Identity, open, seal};
use chacha20poly1305::{
    XChaCha20Poly1305, XNonce,
    aead::{Aead, KeyInit, Payload},
};
use libp2p_identity::{PeerId, ed25519};
use serde::{Deserialize, Serialize};

use super::doc::{DocId, SignedChange};
use super::membership::{OpId, Space, SpaceId, public_key};

const GRANT_INFO: &[u8] = b"agora-docs/key-grant/1";
const KEY_SIGN_TAG: &[u8] = b"agora-docs/space-key/1\0";
const GRANT_SIGN_TAG: &[u8] = b"agora-docs/key-grant/1\0";
const BUNDLE_TAG: &[u8] = b"agora-docs/bundle/1\0";
const HOLDER_TAG: &[u8] = b"agora-docs/holder/1\0";

/// Largest envelope a holder keeps or a member uploads.
pub const MAX_ENVELOPE_BYTES: usize = 1024 * 1024;

/// A space key's id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KeyId(pub [u8; 16]);

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", hex::encode(&self.0[..6]))
    }
}

/// A symmetric key of a space.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceKey {
    pub id: KeyId,
    pub key: [u8; 32],
    /// The membership heads its maker knew.
    pub after: Vec<OpId>,
    /// Its maker (an admin).
    pub by: PeerId,
    /// The maker's signature over the space, id, key hash and `after`: whoever holds the key
    /// can grant it on, and nobody can pass off a key of its own as the maker's.
    pub sig: Vec<u8>,
}

impl fmt::Debug for SpaceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("SpaceKey")
            .field("id", &self.id)
            .field("by", &self.by)
            .finish()
    }
}

impl SpaceKey {
    /// A fresh key made and signed by `maker` at the space's current heads.
    pub fn new(space: &Space, maker: &ed25519::Keypair) -> SpaceKey {
        let mut k = SpaceKey {
            id: KeyId(rand::random()),
            key: rand::random(),
            after: space.heads(),
            by: libp2p_identity::PublicKey::from(maker.public()).to_peer_id(),
            sig: Vec::new(),
        };
        k.sig = maker.sign(&key_message(&space.id(), &k));
        k
    }

    /// Whether the maker signed this key for `space`.
    pub fn verify(&self, space: &SpaceId) -> bool {
        public_key(&self.by).is_ok_and(|pk| pk.verify(&key_message(space, self), &self.sig))
    }
}

/// A key sealed to one member, as members exchange it (the recipient named), signed by the
/// admin who granted it so that every member can check a grant it cannot open before keeping
/// and forwarding it (a member cannot plant junk in another's place).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub key: KeyId,
    pub member: PeerId,
    pub enc: [u8; 32],
    pub ct: Vec<u8>,
    pub by: PeerId,
    pub sig: Vec<u8>,
}

fn grant_message(
    space: &SpaceId,
    key: &KeyId,
    member: &PeerId,
    enc: &[u8; 32],
    ct: &[u8],
) -> Vec<u8> {
    let mut m = GRANT_SIGN_TAG.to_vec();
    m.extend_from_slice(&space.0);
    m.extend_from_slice(&key.0);
    m.extend_from_slice(&member.to_bytes());
    m.extend_from_slice(enc);
    m.extend_from_slice(blake3::hash(ct).as_bytes());
    m
}

impl Grant {
    /// Whether the grant's signature verifies (who signed it is for the caller to judge).
    pub fn verify(&self, space: &SpaceId) -> bool {
        public_key(&self.by).is_ok_and(|pk| {
            pk.verify(
                &grant_message(space, &self.key, &self.member, &self.enc, &self.ct),
                &self.sig,
            )
        })
    }
}

fn key_message(space: &SpaceId, key: &SpaceKey) -> Vec<u8> {
    let mut m = KEY_SIGN_TAG.to_vec();
    m.extend_from_slice(&space.0);
    m.extend_from_slice(&key.id.0);
    m.extend_from_slice(blake3::hash(&key.key).as_bytes());
    for h in &key.after {
        m.extend_from_slice(&h.0);
    }
    m
}

/// Seals `key` to `member`, signed by `granter` (any admin holding the key may grant it on:
/// the key carries its maker's signature).
pub fn grant(
    space: &SpaceId,
    key: &SpaceKey,
    member: PeerId,
    granter: &ed25519::Keypair,
) -> Option<Grant> {
    let body = postcard::to_allocvec(key).ok()?;
    let (enc, ct) = seal(&member, GRANT_INFO, &space.0, &body, &mut rand::rng()).ok()?;
    let sig = granter.sign(&grant_message(space, &key.id, &member, &enc, &ct));
    Some(Grant {
        key: key.id,
        member,
        enc,
        ct,
        by: libp2p_identity::PublicKey::from(granter.public()).to_peer_id(),
        sig,
    })
}

/// Opens a grant sealed to `me` for `space`: `None` when it is not ours, not for this space,
/// or the key's signature does not verify.
pub fn open_grant(me: &Identity, space: &SpaceId, enc: &[u8; 32], ct: &[u8]) -> Option<SpaceKey> {
    let body = open(me, enc, GRANT_INFO, &space.0, ct)?;
    let key: SpaceKey = postcard::from_bytes(&body).ok()?;
    key.verify(space).then_some(key)
}

/// The key to encrypt with now (see the module docs); `None` when no key made after the
/// latest removal has arrived.
pub fn current<'a>(
    space: &Space,
    keys: impl Iterator<Item = &'a SpaceKey>,
) -> Option<&'a SpaceKey> {
    let removals = space.removals();
    keys.filter(|k| space.is_admin(&k.by) || space.owner() == k.by)
        .filter(|k| removals.iter().all(|r| space.covers(&k.after, r)))
        .filter_map(|k| Some((space.past_len(&k.after)?, k)))
        .max_by(|(pa, a), (pb, b)| pa.cmp(pb).then(b.id.cmp(&a.id)))
        .map(|(_, k)| k)
}

/// Where holders keep a space's envelopes (the DHT key of its holders).
pub fn holder_tag(space: &SpaceId) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(HOLDER_TAG);
    h.update(&space.0);
    *h.finalize().as_bytes()
}

/// What a sealed envelope holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// Encoded membership operations (parents first).
    pub ops: Vec<Vec<u8>>,
    /// Signed changes per document (causal order).
    pub docs: Vec<(DocId, Vec<SignedChange>)>,
}

/// What holders keep.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Envelope {
    Sealed {
        key: KeyId,
        nonce: [u8; 24],
        ct: Vec<u8>,
    },
    Grant {
        enc: [u8; 32],
        ct: Vec<u8>,
    },
}

impl Envelope {
    /// The envelope's id (holders deduplicate on it).
    pub fn id(&self) -> [u8; 32] {
        *blake3::hash(&self.to_bytes()).as_bytes()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("encoding owned data does not fail")
    }

    /// Decodes untrusted bytes, refusing more than [`MAX_ENVELOPE_BYTES`] first.
    pub fn from_bytes(bytes: &[u8]) -> Option<Envelope> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return None;
        }
        postcard::from_bytes(bytes).ok()
    }

    /// A grant as holders keep it (its recipient and key id hidden inside the ciphertext).
    pub fn of_grant(g: &Grant) -> Envelope {
        Envelope::Grant {
            enc: g.enc,
            ct: g.ct.clone(),
        }
    }
}

fn bundle_aad(space: &SpaceId, key: &KeyId) -> Vec<u8> {
    let mut aad = BUNDLE_TAG.to_vec();
    aad.extend_from_slice(&space.0);
    aad.extend_from_slice(&key.0);
    aad
}

/// Encrypts a bundle with a space key.
pub fn seal_bundle(space: &SpaceId, key: &SpaceKey, bundle: &Bundle) -> Envelope {
    let plain = postcard::to_allocvec(bundle).expect("encoding owned data does not fail");
    let n = blake3::keyed_hash(&key.key, &plain);
    let nonce: [u8; 24] = n.as_bytes()[..24].try_into().expect("24 of 32 bytes");
    let cipher = XChaCha20Poly1305::new((&key.key).into());
    let ct = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &plain,
                aad: &bundle_aad(space, &key.id),
            },
        )
        .expect("XChaCha20-Poly1305 encrypts any length we produce");
    Envelope::Sealed {
        key: key.id,
        nonce,
        ct,
    }
}

/// Decrypts a sealed envelope with `key` (which must be the key it names).
pub fn open_bundle(space: &SpaceId, key: &SpaceKey, nonce: &[u8; 24], ct: &[u8]) -> Option<Bundle> {
    let cipher = XChaCha20Poly1305::new((&key.key).into());
    let plain = cipher
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ct,
                aad: &bundle_aad(space, &key.id),
            },
        )
        .ok()?;
    postcard::from_bytes(&plain).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Action, Role};

    fn ident(n: u8) -> Identity {
        Identity::from_seed([n; 32])
    }

    fn ed(n: u8) -> ed25519::Keypair {
        ed25519::Keypair::from(ed25519::SecretKey::try_from_bytes([n; 32]).unwrap())
    }

    #[test]
    fn grants_open_only_for_their_member_and_space() {
        let (owner, bob, eve) = (ed(1), ident(2), ident(3));
        let owner_id = ident(1).peer_id();
        let (space, _) = Space::create("s", &owner, 1).unwrap();
        let key = SpaceKey::new(&space, &owner);
        assert_eq!(key.by, owner_id);
        let g = grant(&space.id(), &key, bob.peer_id(), &owner).unwrap();
        assert_eq!(
            open_grant(&bob, &space.id(), &g.enc, &g.ct),
            Some(key.clone())
        );
        assert_eq!(open_grant(&eve, &space.id(), &g.enc, &g.ct), None);
        assert_eq!(open_grant(&bob, &OpId([9; 32]), &g.enc, &g.ct), None);
        // A key of eve's own passed off as the owner's: refused.
        let mut forged = SpaceKey::new(&space, &ed(3));
        forged.by = owner_id;
        let g = grant(&space.id(), &forged, bob.peer_id(), &ed(3)).unwrap();
        assert!(g.verify(&space.id()));
        let mut tampered = g.clone();
        tampered.member = eve.peer_id();
        assert!(!tampered.verify(&space.id()));
        assert_eq!(open_grant(&bob, &space.id(), &g.enc, &g.ct), None);
    }

    #[test]
    fn bundles_round_trip_and_hide_their_content() {
        let owner = ed(1);
        let (space, create) = Space::create("s", &owner, 1).unwrap();
        let key = SpaceKey::new(&space, &owner);
        let bundle = Bundle {
            ops: vec![create.to_bytes()],
            docs: vec![(
                DocId([4; 32]),
                vec![SignedChange {
                    bytes: b"a secret phrase".to_vec(),
                    sig: vec![1; 64],
                }],
            )],
        };
        let env = seal_bundle(&space.id(), &key, &bundle);
        let bytes = env.to_bytes();
        assert!(!bytes.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            env,
            seal_bundle(&space.id(), &key, &bundle),
            "deterministic"
        );
        let Envelope::Sealed { nonce, ct, .. } = Envelope::from_bytes(&bytes).unwrap() else {
            panic!()
        };
        assert_eq!(open_bundle(&space.id(), &key, &nonce, &ct), Some(bundle));
        let other = SpaceKey::new(&space, &owner);
        assert_eq!(open_bundle(&space.id(), &other, &nonce, &ct), None);
        assert!(Envelope::from_bytes(&vec![0; MAX_ENVELOPE_BYTES + 1]).is_none());
    }

    #[test]
    fn current_key_is_made_after_every_removal_by_an_admin() {
        let owner = ed(1);
        let owner_id = ident(1).peer_id();
        let (mut space, _) = Space::create("s", &owner, 1).unwrap();
        let k0 = SpaceKey::new(&space, &owner);
        assert_eq!(k0.by, owner_id);
        let bob = ident(2).peer_id();
        space
            .act(
                Action::Add {
                    member: bob,
                    role: Role::Editor,
                },
                &owner,
                2,
            )
            .unwrap();
        let keys = [k0.clone()];
        assert_eq!(current(&space, keys.iter()), Some(&k0));
        // A key made by an editor is never current.
        let by_bob = SpaceKey::new(&space, &ed(2));
        let keys = [k0.clone(), by_bob];
        assert_eq!(current(&space, keys.iter()), Some(&k0));
        // After a removal, no old key is current until a new one is made.
        space
            .act(Action::Remove { member: bob }, &owner, 3)
            .unwrap();
        assert_eq!(current(&space, keys.iter()), None);
        let k1 = SpaceKey::new(&space, &owner);
        let keys = [k0, k1.clone()];
        assert_eq!(current(&space, keys.iter()), Some(&k1));
    }
}
