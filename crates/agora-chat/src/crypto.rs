//! Keys, signatures and mailbox encryption.
//!
//! One key does everything: the node's libp2p ed25519 identity key signs every chat message, and
//! its X25519 form (the birationally equivalent Montgomery point, RFC 7748 §4.1) receives mailbox
//! envelopes. The author of a message is therefore named by its [`PeerId`] alone: for ed25519 the
//! `PeerId` is an identity multihash that embeds the public key, so a verifier needs no key
//! directory and a message cannot claim an author whose key did not sign it.
//!
//! Reusing an ed25519 key for X25519 is what libsodium's `crypto_sign_ed25519_pk_to_curve25519`
//! exists for; ePrint 2021/509 ("On using the same key pair for Ed25519 and an X25519 based KEM")
//! analyses exactly this pairing. We add domain tags to every signature and use HPKE's hashed DH
//! KEM. A separate encryption key would need its own signed announcement and lookup, which an
//! offline recipient cannot answer.

use hpke::{Deserializable as _, OpModeR, OpModeS, Serializable as _};
use libp2p_identity::{PeerId, PublicKey, ed25519};
use rand_core::CryptoRng;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// The HPKE suite (RFC 9180): DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20Poly1305.
type Kem = hpke::kem::X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type Aead = hpke::aead::ChaCha20Poly1305;

/// Length of an HPKE encapsulated key for X25519.
pub const ENCAPPED_KEY_LEN: usize = 32;
/// Bytes HPKE adds to a plaintext (the Poly1305 tag).
pub const AEAD_TAG_LEN: usize = 16;

/// A node's signing identity: an ed25519 keypair and the [`PeerId`] derived from it.
#[derive(Clone)]
pub struct Identity {
    keypair: ed25519::Keypair,
    peer_id: PeerId,
}

impl Identity {
    /// Uses the node's libp2p identity key. Agora keys are ed25519; any other type is refused
    /// because its `PeerId` would not embed the key (verifiers could not check signatures) and it
    /// has no X25519 form for mailboxes.
    pub fn from_keypair(keypair: &libp2p_identity::Keypair) -> Result<Self, KeyError> {
        let peer_id = keypair.public().to_peer_id();
        let ed = keypair
            .clone()
            .try_into_ed25519()
            .map_err(|_| KeyError::NotEd25519 { peer: peer_id })?;
        Ok(Self::from_ed25519(ed))
    }

    pub fn from_ed25519(keypair: ed25519::Keypair) -> Self {
        let peer_id = PublicKey::from(keypair.public()).to_peer_id();
        Self { keypair, peer_id }
    }

    /// A deterministic identity from a 32-byte seed (the ed25519 secret key). For tests and
    /// simulations; real nodes use the key in their data directory.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let secret = ed25519::SecretKey::try_from_bytes(seed)
            .expect("32 bytes is a valid ed25519 secret key");
        Self::from_ed25519(ed25519::Keypair::from(secret))
    }

    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    pub(crate) fn sign(&self, domain: Domain, payload: &[u8]) -> Signature {
        let sig = self.keypair.sign(&domain.message(payload));
        Signature(sig.try_into().expect("ed25519 signatures are 64 bytes"))
    }

    /// The X25519 private key for opening envelopes: the clamped first half of SHA-512(seed),
    /// the same scalar ed25519 signs with, so it matches [`x25519_public`] of our `PeerId`.
    fn x25519_secret(&self) -> <Kem as hpke::Kem>::PrivateKey {
        let secret = self.keypair.secret();
        let seed: zeroize::Zeroizing<[u8; 32]> = zeroize::Zeroizing::new(
            secret
                .as_ref()
                .try_into()
                .expect("ed25519 seed is 32 bytes"),
        );
        let scalar =
            zeroize::Zeroizing::new(ed25519_dalek::SigningKey::from_bytes(&seed).to_scalar_bytes());
        // from_bytes clamps, as RFC 9180 §7.1.2 requires of DeserializePrivateKey.
        <Kem as hpke::Kem>::PrivateKey::from_bytes(&scalar[..]).expect("32-byte X25519 scalar")
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret key.
        f.debug_struct("Identity")
            .field("peer_id", &self.peer_id)
            .finish()
    }
}

/// Why a `PeerId` or key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "peer id {peer} does not embed an ed25519 key; Agora peer ids start with 12D3KooW, check for a typo"
    )]
    NotEd25519 { peer: PeerId },
    #[error("peer id {peer} embeds a weak (low-order) key; it cannot receive mailbox messages")]
    NoX25519 { peer: PeerId },
}

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("signature does not match the claimed author {author}: forged or corrupted, dropped")]
    BadSignature { author: PeerId },
    #[error("{0}")]
    Limit(#[from] crate::wire::LimitError),
}

/// The ed25519 public key embedded in an identity-multihash `PeerId`.
pub fn public_key(peer: &PeerId) -> Result<ed25519::PublicKey, KeyError> {
    let mh = peer.as_ref();
    // Code 0 is the identity multihash; hashed (sha2-256) peer ids belong to large RSA keys.
    if mh.code() != 0 {
        return Err(KeyError::NotEd25519 { peer: *peer });
    }
    PublicKey::try_decode_protobuf(mh.digest())
        .ok()
        .and_then(|pk| pk.try_into_ed25519().ok())
        .ok_or(KeyError::NotEd25519 { peer: *peer })
}

/// The X25519 public key of a peer: the Montgomery form of its ed25519 key.
pub fn x25519_public(peer: &PeerId) -> Result<[u8; 32], KeyError> {
    let ed = public_key(peer)?;
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&ed.to_bytes())
        .map_err(|_| KeyError::NotEd25519 { peer: *peer })?;
    Ok(vk.to_montgomery().to_bytes())
}

pub(crate) fn verify(
    author: &PeerId,
    domain: Domain,
    payload: &[u8],
    sig: &Signature,
) -> Result<(), VerifyError> {
    let key = public_key(author)?;
    if key.verify(&domain.message(payload), &sig.0) {
        Ok(())
    } else {
        Err(VerifyError::BadSignature { author: *author })
    }
}

/// Where a peer's offline mailbox lives: the Kademlia key whose k closest peers hold it.
/// Hashing spreads mailboxes over the keyspace, so the holders are not the recipient's own
/// neighbours (who are likely offline with it) and no peer chooses whose mail it holds.
pub fn mailbox_key(recipient: &PeerId) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"agora-mailbox");
    h.update(&recipient.to_bytes());
    *h.finalize().as_bytes()
}

/// Signing contexts. Each signed structure gets its own tag so a signature made for one kind of
/// message can never be replayed as another (a receipt as a message, a fetch as an ack...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Domain {
    DirectMessage,
    Receipt,
    Envelope,
    MailboxFetch,
    MailboxAck,
    Room,
    Presence,
    Profile,
}

impl Domain {
    fn tag(self) -> &'static [u8] {
        // NUL-terminated so that no tag is a prefix of another.
        match self {
            Domain::DirectMessage => b"agora-chat/dm/1\0",
            Domain::Receipt => b"agora-chat/receipt/1\0",
            Domain::Envelope => b"agora-chat/envelope/1\0",
            Domain::MailboxFetch => b"agora-chat/mailbox-fetch/1\0",
            Domain::MailboxAck => b"agora-chat/mailbox-ack/1\0",
            Domain::Room => b"agora-chat/room/1\0",
            Domain::Presence => b"agora-chat/presence/1\0",
            Domain::Profile => b"agora-chat/profile/1\0",
        }
    }

    fn message(self, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(self.tag().len() + payload.len());
        m.extend_from_slice(self.tag());
        m.extend_from_slice(payload);
        m
    }
}

/// An ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Signature({:02x}{:02x}{:02x}{:02x}..)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

// serde implements arrays only up to 32 elements; encode as a 64-byte string of bytes.
impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Signature;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("64 signature bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Signature, E> {
                v.try_into()
                    .map(Signature)
                    .map_err(|_| E::invalid_length(v.len(), &self))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// Encrypts `plaintext` to `recipient`'s identity key. `info` and `aad` are bound into the key
/// schedule and the AEAD, so a ciphertext cannot be moved to another context or header. Every
/// user (chat envelopes, groupware key grants) passes its own `info`.
pub fn seal(
    recipient: &PeerId,
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
    rng: &mut impl CryptoRng,
) -> Result<([u8; ENCAPPED_KEY_LEN], Vec<u8>), KeyError> {
    let pk_bytes = x25519_public(recipient)?;
    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(&pk_bytes)
        .map_err(|_| KeyError::NoX25519 { peer: *recipient })?;
    // Encapsulation fails for low-order points (the DH output would be all zero): a malicious
    // peer id, refused rather than producing a ciphertext anyone could open.
    let (enc, ct) = hpke::single_shot_seal_with_rng::<Aead, Kdf, Kem>(
        &OpModeS::Base,
        &pk,
        info,
        plaintext,
        aad,
        rng,
    )
    .map_err(|_| KeyError::NoX25519 { peer: *recipient })?;
    let enc: [u8; ENCAPPED_KEY_LEN] = enc
        .to_bytes()
        .as_slice()
        .try_into()
        .expect("X25519 encapped key is 32 bytes");
    Ok((enc, ct))
}

/// Opens what [`seal`] sealed to `identity` with the same `info` and `aad`.
pub fn open(
    identity: &Identity,
    enc: &[u8; ENCAPPED_KEY_LEN],
    info: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
) -> Option<Vec<u8>> {
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(enc).ok()?;
    hpke::single_shot_open::<Aead, Kdf, Kem>(
        &OpModeR::Base,
        &identity.x25519_secret(),
        &enc,
        info,
        ciphertext,
        aad,
    )
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::StdRng};

    #[test]
    fn peer_id_embeds_the_signing_key() {
        let id = Identity::from_seed([7; 32]);
        let pk = public_key(&id.peer_id()).unwrap();
        assert_eq!(PublicKey::from(pk).to_peer_id(), id.peer_id());
        let sig = id.sign(Domain::Room, b"hello");
        verify(&id.peer_id(), Domain::Room, b"hello", &sig).unwrap();
        assert!(verify(&id.peer_id(), Domain::Room, b"hellO", &sig).is_err());
        // Domain separation: the same bytes under another tag do not verify.
        assert!(verify(&id.peer_id(), Domain::Profile, b"hello", &sig).is_err());
    }

    #[test]
    fn libp2p_keypair_is_accepted() {
        let kp = libp2p_identity::Keypair::ed25519_from_bytes([3; 32]).unwrap();
        let id = Identity::from_keypair(&kp).unwrap();
        assert_eq!(id.peer_id(), kp.public().to_peer_id());
        assert_eq!(id.peer_id(), Identity::from_seed([3; 32]).peer_id());
    }

    #[test]
    fn non_ed25519_peer_id_is_a_clear_error() {
        // A sha2-256 multihash peer id (what RSA keys get): no key inside.
        let mh =
            libp2p_identity::PeerId::from_bytes(&[&[0x12, 0x20][..], &[9; 32]].concat()).unwrap();
        let err = public_key(&mh).unwrap_err();
        assert!(err.to_string().contains("12D3KooW"), "{err}");
    }

    #[test]
    fn x25519_secret_matches_converted_public() {
        let id = Identity::from_seed([42; 32]);
        let pk = <Kem as hpke::Kem>::sk_to_pk(&id.x25519_secret());
        assert_eq!(
            pk.to_bytes().as_slice(),
            &x25519_public(&id.peer_id()).unwrap()
        );
    }

    #[test]
    fn seal_open_round_trip_and_binding() {
        let bob = Identity::from_seed([2; 32]);
        let eve = Identity::from_seed([5; 32]);
        let mut rng = StdRng::seed_from_u64(1);
        let (enc, ct) = seal(&bob.peer_id(), b"info", b"aad", b"secret", &mut rng).unwrap();
        assert_eq!(
            open(&bob, &enc, b"info", b"aad", &ct).as_deref(),
            Some(&b"secret"[..])
        );
        assert_eq!(
            open(&eve, &enc, b"info", b"aad", &ct),
            None,
            "only the recipient opens"
        );
        assert_eq!(open(&bob, &enc, b"info", b"AAD", &ct), None, "aad is bound");
        assert_eq!(
            open(&bob, &enc, b"other", b"aad", &ct),
            None,
            "info is bound"
        );
        let mut bad = ct.clone();
        bad[0] ^= 1;
        assert_eq!(
            open(&bob, &enc, b"info", b"aad", &bad),
            None,
            "tampering is detected"
        );
    }

    #[test]
    fn mailbox_key_is_blake3_of_tag_and_peer_id() {
        let p = Identity::from_seed([1; 32]).peer_id();
        let expected = blake3::hash(&[&b"agora-mailbox"[..], &p.to_bytes()].concat());
        assert_eq!(mailbox_key(&p), *expected.as_bytes());
        assert_ne!(
            mailbox_key(&p),
            mailbox_key(&Identity::from_seed([2; 32]).peer_id())
        );
    }
}
