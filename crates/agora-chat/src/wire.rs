//! Messages, their signatures and their encoding.
//!
//! Every top-level message is a [`Frame`]: `encode` checks field limits and the frame size,
//! `decode` checks the input length against [`Frame::MAX_LEN`] before postcard reads a single
//! byte, rejects trailing bytes, then checks field limits. Postcard reads from the input slice
//! and fails as soon as a length prefix points past its end, and serde caps the capacity it
//! reserves from a prefix, so hostile prefixes cannot make a decoder allocate much beyond the
//! (already bounded) input. Decoding does not verify signatures: call `verify` (or a `proto` state machine,
//! which always does) before trusting a message.
//!
//! Signatures cover every field but the signature itself: the signed bytes are a per-type domain
//! tag followed by the postcard encoding of the fields in declaration order.

use crate::crypto::{
    self, AEAD_TAG_LEN, Domain, ENCAPPED_KEY_LEN, Identity, KeyError, Signature, VerifyError,
};
use libp2p_identity::PeerId;
use rand_core::CryptoRng;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::{fmt, str::FromStr, time::Duration};

/// Longest direct or room message text, in UTF-8 bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest room name, in bytes.
pub const MAX_ROOM_NAME_BYTES: usize = 64;
/// Longest nickname, in bytes.
pub const MAX_NICK_BYTES: usize = 64;
/// Longest profile "about" text, in bytes.
pub const MAX_ABOUT_BYTES: usize = 1024;
/// Most envelopes in one mailbox fetch response.
pub const MAX_FETCH_BATCH: usize = 256;
/// Most ids in one mailbox ack.
pub const MAX_ACK_IDS: usize = 256;
/// Most messages in one room history response.
pub const MAX_HISTORY_MESSAGES: usize = 256;
/// Largest frame any Agora request-response protocol carries (`agora_net::rpc::MAX_FRAME_LEN`);
/// every [`Frame::MAX_LEN`] here stays within it (checked at compile time below).
pub const MAX_FRAME_LEN: usize = 4 * 1024 * 1024;
/// Byte budget of a batch response (mailbox fetch, room history). Senders fill up to it and
/// page; 3 MiB leaves room for one more item and the framing under [`MAX_FRAME_LEN`].
pub const MAX_BATCH_BYTES: usize = 3 * 1024 * 1024;

/// Generous bound for everything around a body: ids, two peer ids (≤ 40 bytes each for
/// ed25519), numbers, the signature and length prefixes. It only bounds frames; real headers
/// are about 200 bytes.
const HEADER_ALLOWANCE: usize = 1024;
/// Largest encoded [`DirectMessage`].
pub const MAX_DIRECT_MESSAGE_LEN: usize = MAX_BODY_BYTES + HEADER_ALLOWANCE;
/// Largest encoded [`Letter`] (the plaintext of an envelope).
pub const MAX_LETTER_LEN: usize = MAX_DIRECT_MESSAGE_LEN + 8;
/// Largest envelope ciphertext: a letter plus the AEAD tag.
pub const MAX_CIPHERTEXT_BYTES: usize = MAX_LETTER_LEN + AEAD_TAG_LEN;
/// Largest encoded [`Envelope`].
pub const MAX_ENVELOPE_LEN: usize = MAX_CIPHERTEXT_BYTES + HEADER_ALLOWANCE;

const _: () = {
    assert!(<MailboxResponse as Frame>::MAX_LEN <= MAX_FRAME_LEN);
    assert!(<HistoryResponse as Frame>::MAX_LEN <= MAX_FRAME_LEN);
    assert!(<MailboxRequest as Frame>::MAX_LEN <= MAX_FRAME_LEN);
};

/// HPKE `info`: binds envelope keys to this protocol and version.
const ENVELOPE_INFO: &[u8] = b"agora-chat/mailbox/1";

/// A top-level wire message with a size limit.
pub trait Frame: Serialize + DeserializeOwned {
    /// Largest accepted encoding, checked before decoding starts.
    const MAX_LEN: usize;

    /// Field limits (text lengths, list sizes) beyond what the types enforce.
    fn check_limits(&self) -> Result<(), LimitError>;

    fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        self.check_limits()?;
        let bytes =
            postcard::to_allocvec(self).map_err(|e| EncodeError::Serialize(e.to_string()))?;
        if bytes.len() > Self::MAX_LEN {
            return Err(EncodeError::TooLarge {
                len: bytes.len(),
                max: Self::MAX_LEN,
            });
        }
        Ok(bytes)
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > Self::MAX_LEN {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: Self::MAX_LEN,
            });
        }
        let (value, rest) =
            postcard::take_from_bytes::<Self>(bytes).map_err(DecodeError::Malformed)?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes { count: rest.len() });
        }
        value.check_limits()?;
        Ok(value)
    }
}

/// Why bytes could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("frame is {len} bytes, over the {max}-byte limit; dropped unread")]
    TooLarge { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    Malformed(#[source] postcard::Error),
    #[error("{count} unexpected bytes after the frame")]
    TrailingBytes { count: usize },
    #[error(transparent)]
    Limit(#[from] LimitError),
}

/// Why a message could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("encoded frame is {len} bytes, over the {max}-byte limit; send fewer items per batch")]
    TooLarge { len: usize, max: usize },
    #[error("cannot encode: {0}")]
    Serialize(String),
    #[error(transparent)]
    Limit(#[from] LimitError),
}

/// A field over its limit or with content we refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("{what} is {len} bytes, over the {max}-byte limit; shorten it")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{what} has {len} items, over the limit of {max}")]
    TooMany {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error(
        "{what} contains control or direction-override characters, which could disguise it on screen"
    )]
    BadChars { what: &'static str },
    #[error("room name {name:?} is invalid: use 1-64 characters from a-z, 0-9, '-', '_', '.'")]
    RoomName { name: String },
}

fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), LimitError> {
    if len > max {
        Err(LimitError::TooLong { what, len, max })
    } else {
        Ok(())
    }
}

fn check_count(what: &'static str, len: usize, max: usize) -> Result<(), LimitError> {
    if len > max {
        Err(LimitError::TooMany { what, len, max })
    } else {
        Ok(())
    }
}

/// Message text: bounded, and no terminal control characters (an ANSI escape in a chat line
/// could rewrite the reader's screen). Newlines and tabs are text.
fn check_text(what: &'static str, s: &str, max: usize) -> Result<(), LimitError> {
    check_len(what, s.len(), max)?;
    if s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(LimitError::BadChars { what });
    }
    Ok(())
}

/// Names shown beside ids (nicknames): also no line breaks and no bidi overrides, which could
/// make one name look like another or reorder the short peer id printed next to it.
fn check_name(what: &'static str, s: &str, max: usize) -> Result<(), LimitError> {
    check_len(what, s.len(), max)?;
    if s.trim().is_empty() {
        return Err(LimitError::Empty { what });
    }
    let bidi = |c: char| matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if s.chars().any(|c| c.is_control() || bidi(c)) {
        return Err(LimitError::BadChars { what });
    }
    Ok(())
}

/// Postcard encoding of the signed fields. Serializing plain data into a `Vec` cannot fail.
fn payload<T: Serialize>(fields: &T) -> Vec<u8> {
    postcard::to_allocvec(fields).expect("encoding plain data into a Vec cannot fail")
}

/// Milliseconds since the Unix epoch. The core never reads a clock: callers pass `now`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub const fn from_millis(ms: u64) -> Self {
        Self(ms)
    }

    pub const fn as_millis(self) -> u64 {
        self.0
    }

    pub fn saturating_add(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }

    pub fn saturating_sub(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

/// A random 128-bit message id, chosen by the sender.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    pub fn random(rng: &mut impl CryptoRng) -> Self {
        let mut b = [0; 16];
        rng.fill_bytes(&mut b);
        Self(b)
    }

    /// The envelope id of a receipt sent through a mailbox: derived, so that re-sending the same
    /// receipt is deduplicated by holders like a re-sent message.
    pub fn of_receipt(message_id: &MessageId) -> Self {
        let h = blake3::Hasher::new()
            .update(b"agora-chat/receipt-id\0")
            .update(&message_id.0)
            .finalize();
        Self(h.as_bytes()[..16].try_into().expect("16 of 32 bytes"))
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

/// What a peer says about its availability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Online,
    Away,
    Busy,
    Offline,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Online => "online",
            Status::Away => "away",
            Status::Busy => "busy",
            Status::Offline => "offline",
        })
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "online" => Ok(Status::Online),
            "away" => Ok(Status::Away),
            "busy" => Ok(Status::Busy),
            "offline" => Ok(Status::Offline),
            _ => Err(format!(
                "unknown status {s:?}: use online, away, busy or offline"
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Direct messages: /agora/chat/1.0.0, request DirectMessage, response DirectReply.

/// A signed one-to-one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectMessage {
    pub id: MessageId,
    pub from: PeerId,
    pub to: PeerId,
    /// Per conversation and per sender, from 0: `from`'s n-th message to `to`.
    pub seq: u64,
    pub sent_at: Timestamp,
    pub body: String,
    pub signature: Signature,
}

impl DirectMessage {
    pub fn new(
        identity: &Identity,
        id: MessageId,
        to: PeerId,
        seq: u64,
        sent_at: Timestamp,
        body: String,
    ) -> Result<Self, LimitError> {
        check_text("message body", &body, MAX_BODY_BYTES)?;
        let from = identity.peer_id();
        let signature = identity.sign(
            Domain::DirectMessage,
            &payload(&(&id, &from, &to, seq, sent_at, &body)),
        );
        Ok(Self {
            id,
            from,
            to,
            seq,
            sent_at,
            body,
            signature,
        })
    }

    /// Checks limits and that `from`'s key signed every field.
    pub fn verify(&self) -> Result<(), VerifyError> {
        self.check_limits()?;
        let p = payload(&(
            &self.id,
            &self.from,
            &self.to,
            self.seq,
            self.sent_at,
            &self.body,
        ));
        crypto::verify(&self.from, Domain::DirectMessage, &p, &self.signature)
    }
}

impl Frame for DirectMessage {
    const MAX_LEN: usize = MAX_DIRECT_MESSAGE_LEN;
    fn check_limits(&self) -> Result<(), LimitError> {
        check_text("message body", &self.body, MAX_BODY_BYTES)
    }
}

/// A delivery receipt, signed by the recipient of the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub message_id: MessageId,
    /// Who sent the message (and receives this receipt).
    pub sender: PeerId,
    /// Who received the message and signed this receipt.
    pub recipient: PeerId,
    pub seq: u64,
    pub received_at: Timestamp,
    pub signature: Signature,
}

impl Receipt {
    pub(crate) fn new(recipient: &Identity, msg: &DirectMessage, received_at: Timestamp) -> Self {
        let (message_id, sender, rcpt, seq) = (msg.id, msg.from, recipient.peer_id(), msg.seq);
        let signature = recipient.sign(
            Domain::Receipt,
            &payload(&(&message_id, &sender, &rcpt, seq, received_at)),
        );
        Self {
            message_id,
            sender,
            recipient: rcpt,
            seq,
            received_at,
            signature,
        }
    }

    pub fn verify(&self) -> Result<(), VerifyError> {
        let p = payload(&(
            &self.message_id,
            &self.sender,
            &self.recipient,
            self.seq,
            self.received_at,
        ));
        crypto::verify(&self.recipient, Domain::Receipt, &p, &self.signature)
    }
}

impl Frame for Receipt {
    const MAX_LEN: usize = HEADER_ALLOWANCE;
    fn check_limits(&self) -> Result<(), LimitError> {
        Ok(())
    }
}

/// Response to a [`DirectMessage`] request.
// One per message, short-lived: boxing the receipt would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirectReply {
    Delivered(Receipt),
    Rejected(Rejection),
}

/// Why a recipient did not accept a direct message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    /// Addressed to someone else: do not retry with this peer.
    NotForUs,
    /// Bad signature or over a limit: do not retry.
    Invalid,
    /// Too far ahead of the recipient's gap buffer: retry later, earlier messages first.
    TryLater,
}

impl Frame for DirectReply {
    const MAX_LEN: usize = HEADER_ALLOWANCE;
    fn check_limits(&self) -> Result<(), LimitError> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Offline mailbox: /agora/mailbox/1.0.0, request MailboxRequest, response MailboxResponse.

/// The plaintext of an [`Envelope`]: a message, or the receipt for one, so that a sender and a
/// recipient who are never online together still learn of delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Letter {
    Message(DirectMessage),
    Receipt(Receipt),
}

impl Letter {
    /// The envelope id this letter travels under.
    pub fn id(&self) -> MessageId {
        match self {
            Letter::Message(m) => m.id,
            Letter::Receipt(r) => MessageId::of_receipt(&r.message_id),
        }
    }

    fn author(&self) -> PeerId {
        match self {
            Letter::Message(m) => m.from,
            Letter::Receipt(r) => r.recipient,
        }
    }

    fn addressee(&self) -> PeerId {
        match self {
            Letter::Message(m) => m.to,
            Letter::Receipt(r) => r.sender,
        }
    }

    pub fn verify(&self) -> Result<(), VerifyError> {
        match self {
            Letter::Message(m) => m.verify(),
            Letter::Receipt(r) => r.verify(),
        }
    }
}

impl Frame for Letter {
    const MAX_LEN: usize = MAX_LETTER_LEN;
    fn check_limits(&self) -> Result<(), LimitError> {
        match self {
            Letter::Message(m) => m.check_limits(),
            Letter::Receipt(_) => Ok(()),
        }
    }
}

/// A sealed letter for a recipient's mailbox holders.
///
/// Holders see who wrote to whom, when, and how long it is (they need that for quotas); the
/// letter is HPKE-encrypted to the recipient's identity key with the header as associated data,
/// and the sender signs the header, encapsulated key and ciphertext. A holder therefore cannot
/// read it, alter it or re-address it, and cannot store envelopes in someone else's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: MessageId,
    pub from: PeerId,
    pub to: PeerId,
    pub created_at: Timestamp,
    pub enc: [u8; ENCAPPED_KEY_LEN],
    pub ciphertext: Vec<u8>,
    pub signature: Signature,
}

impl Envelope {
    /// Seals a letter we wrote (a message from us, or a receipt by us) to its addressee.
    pub fn seal(
        identity: &Identity,
        letter: &Letter,
        created_at: Timestamp,
        rng: &mut impl CryptoRng,
    ) -> Result<Self, SealError> {
        let from = identity.peer_id();
        if letter.author() != from {
            // Sealing someone else's letter under our name would make the recipient reject it.
            return Err(SealError::NotOurs);
        }
        let (id, to) = (letter.id(), letter.addressee());
        let plaintext = letter.encode().map_err(|_| SealError::TooLarge)?;
        let aad = payload(&(&id, &from, &to, created_at));
        let (enc, ciphertext) = crypto::seal(&to, ENVELOPE_INFO, &aad, &plaintext, rng)?;
        let signature = identity.sign(
            Domain::Envelope,
            &payload(&(&id, &from, &to, created_at, &enc, &ciphertext)),
        );
        Ok(Self {
            id,
            from,
            to,
            created_at,
            enc,
            ciphertext,
            signature,
        })
    }

    /// Checks the sender's signature over the envelope (what a holder can check).
    pub fn verify(&self) -> Result<(), VerifyError> {
        self.check_limits()?;
        let p = payload(&(
            &self.id,
            &self.from,
            &self.to,
            self.created_at,
            &self.enc,
            &self.ciphertext,
        ));
        crypto::verify(&self.from, Domain::Envelope, &p, &self.signature)
    }

    /// Opens an envelope addressed to us. Anything tampered with, forged, or re-wrapped by
    /// someone other than the letter's author is an error, never a letter.
    pub fn open(&self, identity: &Identity) -> Result<Letter, OpenError> {
        if self.to != identity.peer_id() {
            return Err(OpenError::NotForUs { to: self.to });
        }
        self.verify()?;
        let aad = payload(&(&self.id, &self.from, &self.to, self.created_at));
        let plaintext = crypto::open(identity, &self.enc, ENVELOPE_INFO, &aad, &self.ciphertext)
            .ok_or(OpenError::Decrypt { from: self.from })?;
        let letter =
            Letter::decode(&plaintext).map_err(|_| OpenError::Malformed { from: self.from })?;
        letter.verify()?;
        // The inner signature binds the author; the outer one only the wrapper. They must agree,
        // or anyone could re-wrap a letter they received and pass it off as sent to someone else.
        if letter.author() != self.from || letter.addressee() != self.to || letter.id() != self.id {
            return Err(OpenError::Mismatch { from: self.from });
        }
        Ok(letter)
    }

    /// Bytes a holder accounts for this envelope.
    pub fn stored_size(&self) -> usize {
        self.ciphertext.len() + 256
    }
}

impl Frame for Envelope {
    const MAX_LEN: usize = MAX_ENVELOPE_LEN;
    fn check_limits(&self) -> Result<(), LimitError> {
        check_len(
            "envelope ciphertext",
            self.ciphertext.len(),
            MAX_CIPHERTEXT_BYTES,
        )
    }
}

/// Why a letter could not be sealed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("only the author of a letter can seal it")]
    NotOurs,
    #[error("letter is over the {MAX_LETTER_LEN}-byte envelope limit")]
    TooLarge,
}

/// Why an envelope could not be opened. Such an envelope is dropped, never shown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("envelope is addressed to {to}, not to us")]
    NotForUs { to: PeerId },
    #[error(transparent)]
    Invalid(#[from] VerifyError),
    #[error("envelope from {from} does not decrypt: tampered with or corrupted, dropped")]
    Decrypt { from: PeerId },
    #[error("envelope from {from} decrypts to a malformed letter, dropped")]
    Malformed { from: PeerId },
    #[error("envelope from {from} wraps a letter by someone else or for someone else, dropped")]
    Mismatch { from: PeerId },
}

/// A recipient asks a holder for its envelopes. Signed so that only the recipient can list
/// (and, with [`AckRequest`], delete) its mail; bound to one holder and a time so that a
/// captured request is useless elsewhere or later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRequest {
    pub recipient: PeerId,
    pub holder: PeerId,
    pub issued_at: Timestamp,
    pub signature: Signature,
}

impl FetchRequest {
    pub fn new(identity: &Identity, holder: PeerId, issued_at: Timestamp) -> Self {
        let recipient = identity.peer_id();
        let signature = identity.sign(
            Domain::MailboxFetch,
            &payload(&(&recipient, &holder, issued_at)),
        );
        Self {
            recipient,
            holder,
            issued_at,
            signature,
        }
    }

    pub fn verify(&self) -> Result<(), VerifyError> {
        let p = payload(&(&self.recipient, &self.holder, self.issued_at));
        crypto::verify(&self.recipient, Domain::MailboxFetch, &p, &self.signature)
    }
}

/// A recipient tells a holder it has the listed envelopes: the holder deletes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckRequest {
    pub recipient: PeerId,
    pub holder: PeerId,
    pub issued_at: Timestamp,
    pub ids: Vec<MessageId>,
    pub signature: Signature,
}

impl AckRequest {
    pub fn new(
        identity: &Identity,
        holder: PeerId,
        issued_at: Timestamp,
        ids: Vec<MessageId>,
    ) -> Result<Self, LimitError> {
        check_count("ack ids", ids.len(), MAX_ACK_IDS)?;
        let recipient = identity.peer_id();
        let signature = identity.sign(
            Domain::MailboxAck,
            &payload(&(&recipient, &holder, issued_at, &ids)),
        );
        Ok(Self {
            recipient,
            holder,
            issued_at,
            ids,
            signature,
        })
    }

    pub fn verify(&self) -> Result<(), VerifyError> {
        check_count("ack ids", self.ids.len(), MAX_ACK_IDS)?;
        let p = payload(&(&self.recipient, &self.holder, self.issued_at, &self.ids));
        crypto::verify(&self.recipient, Domain::MailboxAck, &p, &self.signature)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MailboxRequest {
    Store(Envelope),
    Fetch(FetchRequest),
    Ack(AckRequest),
}

impl Frame for MailboxRequest {
    const MAX_LEN: usize = MAX_ENVELOPE_LEN + 8;
    fn check_limits(&self) -> Result<(), LimitError> {
        match self {
            MailboxRequest::Store(e) => e.check_limits(),
            MailboxRequest::Fetch(_) => Ok(()),
            MailboxRequest::Ack(a) => check_count("ack ids", a.ids.len(), MAX_ACK_IDS),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MailboxResponse {
    /// Stored (or already held: storing is idempotent).
    Stored,
    /// The oldest envelopes first; `remaining` more are held: ack these, then fetch again.
    Envelopes {
        envelopes: Vec<Envelope>,
        remaining: u32,
    },
    Acked {
        deleted: u32,
    },
    Refused(Refusal),
}

/// Why a holder refused a mailbox request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The recipient's mailbox is full here: try another holder or later.
    RecipientFull,
    /// The sender has used its quota here: wait for deliveries or expiry.
    SenderFull,
    /// This holder is out of space.
    HolderFull,
    /// Too old (past the TTL) or dated in the future.
    BadTime,
    /// Bad signature, wrong holder or unusable key.
    Invalid,
}

impl Frame for MailboxResponse {
    const MAX_LEN: usize = MAX_BATCH_BYTES + MAX_ENVELOPE_LEN;
    fn check_limits(&self) -> Result<(), LimitError> {
        match self {
            MailboxResponse::Envelopes { envelopes, .. } => {
                check_count("fetched envelopes", envelopes.len(), MAX_FETCH_BATCH)?;
                envelopes.iter().try_for_each(Envelope::check_limits)
            }
            _ => Ok(()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rooms: RoomMessage on the gossipsub topic `RoomId::topic`; history over
// /agora/room-history/1.0.0, request HistoryRequest, response HistoryResponse.

/// A room name: 1-64 of `a-z 0-9 - _ .`. Restricting the alphabet keeps names unambiguous to
/// type and read (no case or Unicode look-alikes) and safe inside a topic string.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RoomId(String);

impl RoomId {
    pub fn new(name: impl Into<String>) -> Result<Self, LimitError> {
        let id = Self(name.into());
        id.check()?;
        Ok(id)
    }

    fn check(&self) -> Result<(), LimitError> {
        let ok = (1..=MAX_ROOM_NAME_BYTES).contains(&self.0.len())
            && self
                .0
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
        if ok {
            Ok(())
        } else {
            Err(LimitError::RoomName {
                name: self.0.chars().take(80).collect(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The gossipsub topic carrying this room's messages.
    pub fn topic(&self) -> String {
        format!("/agora/room/1/{}", self.0)
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A signed room post. The room is signed too, so a post cannot be replayed into another room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomMessage {
    pub room: RoomId,
    pub from: PeerId,
    /// Per room and per author; with `from` it identifies the post.
    pub seq: u64,
    pub sent_at: Timestamp,
    pub body: String,
    pub signature: Signature,
}

impl RoomMessage {
    pub fn new(
        identity: &Identity,
        room: RoomId,
        seq: u64,
        sent_at: Timestamp,
        body: String,
    ) -> Result<Self, LimitError> {
        check_text("room message body", &body, MAX_BODY_BYTES)?;
        let from = identity.peer_id();
        let signature = identity.sign(Domain::Room, &payload(&(&room, &from, seq, sent_at, &body)));
        Ok(Self {
            room,
            from,
            seq,
            sent_at,
            body,
            signature,
        })
    }

    pub fn verify(&self) -> Result<(), VerifyError> {
        self.check_limits()?;
        let p = payload(&(&self.room, &self.from, self.seq, self.sent_at, &self.body));
        crypto::verify(&self.from, Domain::Room, &p, &self.signature)
    }
}

impl Frame for RoomMessage {
    const MAX_LEN: usize = MAX_DIRECT_MESSAGE_LEN;
    fn check_limits(&self) -> Result<(), LimitError> {
        self.room.check()?;
        check_text("room message body", &self.body, MAX_BODY_BYTES)
    }
}

/// A joiner asks a member for recent posts: at most `limit` of the newest posts sent at or
/// after `since`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRequest {
    pub room: RoomId,
    pub since: Timestamp,
    pub limit: u16,
}

impl Frame for HistoryRequest {
    const MAX_LEN: usize = 128;
    fn check_limits(&self) -> Result<(), LimitError> {
        self.room.check()
    }
}

/// Posts oldest first. Unsigned as a whole: the joiner verifies each post's own signature, so a
/// member can withhold posts but not forge or alter them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryResponse {
    pub room: RoomId,
    pub messages: Vec<RoomMessage>,
}

impl Frame for HistoryResponse {
    const MAX_LEN: usize = MAX_BATCH_BYTES + MAX_DIRECT_MESSAGE_LEN;
    fn check_limits(&self) -> Result<(), LimitError> {
        self.room.check()?;
        check_count(
            "history messages",
            self.messages.len(),
            MAX_HISTORY_MESSAGES,
        )?;
        self.messages.iter().try_for_each(RoomMessage::check_limits)
    }
}

// ---------------------------------------------------------------------------------------------
// Presence and profiles: sent to the peers that care (contacts, shared rooms).

/// A signed heartbeat: `peer` is `status` until `expires_at`, unless a higher `seq` says
/// otherwise. Using the send time in milliseconds as `seq` keeps it increasing across restarts
/// without stored state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub peer: PeerId,
    pub status: Status,
    pub seq: u64,
    pub expires_at: Timestamp,
    pub signature: Signature,
}

impl Presence {
    pub fn new(identity: &Identity, status: Status, seq: u64, expires_at: Timestamp) -> Self {
        let peer = identity.peer_id();
        let signature = identity.sign(
            Domain::Presence,
            &payload(&(&peer, status, seq, expires_at)),
        );
        Self {
            peer,
            status,
            seq,
            expires_at,
            signature,
        }
    }

    pub fn verify(&self) -> Result<(), VerifyError> {
        let p = payload(&(&self.peer, self.status, self.seq, self.expires_at));
        crypto::verify(&self.peer, Domain::Presence, &p, &self.signature)
    }
}

impl Frame for Presence {
    const MAX_LEN: usize = 256;
    fn check_limits(&self) -> Result<(), LimitError> {
        Ok(())
    }
}

/// A signed profile; a higher `version` replaces a lower one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub peer: PeerId,
    /// Not unique: always show it with [`crate::proto::presence::short_peer_id`].
    pub nick: String,
    pub about: String,
    /// The status the peer wants shown while online.
    pub status: Status,
    pub version: u64,
    pub signature: Signature,
}

impl Profile {
    pub fn new(
        identity: &Identity,
        nick: String,
        about: String,
        status: Status,
        version: u64,
    ) -> Result<Self, LimitError> {
        check_name("nickname", &nick, MAX_NICK_BYTES)?;
        check_text("about", &about, MAX_ABOUT_BYTES)?;
        let peer = identity.peer_id();
        let signature = identity.sign(
            Domain::Profile,
            &payload(&(&peer, &nick, &about, status, version)),
        );
        Ok(Self {
            peer,
            nick,
            about,
            status,
            version,
            signature,
        })
    }

    pub fn verify(&self) -> Result<(), VerifyError> {
        self.check_limits()?;
        let p = payload(&(
            &self.peer,
            &self.nick,
            &self.about,
            self.status,
            self.version,
        ));
        crypto::verify(&self.peer, Domain::Profile, &p, &self.signature)
    }
}

impl Frame for Profile {
    const MAX_LEN: usize = MAX_NICK_BYTES + MAX_ABOUT_BYTES + HEADER_ALLOWANCE;
    fn check_limits(&self) -> Result<(), LimitError> {
        check_name("nickname", &self.nick, MAX_NICK_BYTES)?;
        check_text("about", &self.about, MAX_ABOUT_BYTES)
    }
}

/// `/agora/presence/1.0.0`, both ways: a peer's signed presence and, when it changed or was
/// asked for, its signed profile. Sent to the peers that care (contacts, room members); the
/// answer carries the responder's own, so one exchange updates both sides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceExchange {
    pub presence: Presence,
    pub profile: Option<Profile>,
}

impl PresenceExchange {
    /// Checks both signatures and that they are by the same peer.
    pub fn verify(&self) -> Result<(), VerifyError> {
        self.presence.verify()?;
        if let Some(profile) = &self.profile {
            profile.verify()?;
            if profile.peer != self.presence.peer {
                return Err(VerifyError::BadSignature {
                    author: profile.peer,
                });
            }
        }
        Ok(())
    }
}

impl Frame for PresenceExchange {
    const MAX_LEN: usize = <Presence as Frame>::MAX_LEN + <Profile as Frame>::MAX_LEN + 8;
    fn check_limits(&self) -> Result<(), LimitError> {
        self.profile.as_ref().map_or(Ok(()), Profile::check_limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{SeedableRng, rngs::StdRng};

    fn alice() -> Identity {
        Identity::from_seed([1; 32])
    }
    fn bob() -> Identity {
        Identity::from_seed([2; 32])
    }
    fn dm(body: &str) -> DirectMessage {
        DirectMessage::new(
            &alice(),
            MessageId([9; 16]),
            bob().peer_id(),
            3,
            Timestamp(1000),
            body.into(),
        )
        .unwrap()
    }
    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    #[test]
    fn direct_message_signature_covers_every_field() {
        let m = dm("hi");
        m.verify().unwrap();
        fn carol() -> PeerId {
            Identity::from_seed([3; 32]).peer_id()
        }
        let tampered: [fn(&mut DirectMessage); 7] = [
            |m| m.id.0[0] ^= 1,
            |m| m.from = carol(),
            |m| m.to = carol(),
            |m| m.seq += 1,
            |m| m.sent_at.0 += 1,
            |m| m.body.push('!'),
            |m| m.signature.0[10] ^= 1,
        ];
        for t in tampered {
            let mut m2 = m.clone();
            t(&mut m2);
            assert!(m2.verify().is_err(), "{m2:?}");
        }
    }

    #[test]
    fn forged_sender_is_rejected() {
        // Mallory signs with her key but claims to be Alice.
        let mallory = Identity::from_seed([66; 32]);
        let mut m = DirectMessage::new(
            &mallory,
            MessageId([1; 16]),
            bob().peer_id(),
            0,
            Timestamp(0),
            "pay me".into(),
        )
        .unwrap();
        m.from = alice().peer_id();
        assert!(matches!(m.verify(), Err(VerifyError::BadSignature { .. })));
    }

    #[test]
    fn body_limit_is_64_kib() {
        let at_limit = "a".repeat(MAX_BODY_BYTES);
        let m = dm(&at_limit);
        let bytes = m.encode().unwrap();
        assert!(bytes.len() <= MAX_DIRECT_MESSAGE_LEN);
        assert_eq!(DirectMessage::decode(&bytes).unwrap(), m);
        let err = DirectMessage::new(
            &alice(),
            MessageId([0; 16]),
            bob().peer_id(),
            0,
            Timestamp(0),
            "a".repeat(MAX_BODY_BYTES + 1),
        );
        assert!(matches!(err, Err(LimitError::TooLong { .. })));
        // A peer that sends an oversize body anyway is stopped at decode.
        let mut big = m.clone();
        big.body.push('a');
        let bytes = postcard::to_allocvec(&big).unwrap();
        assert!(DirectMessage::decode(&bytes).is_err());
    }

    #[test]
    fn oversized_frame_is_refused_before_parsing() {
        let junk = vec![0u8; MAX_DIRECT_MESSAGE_LEN + 1];
        assert!(matches!(
            DirectMessage::decode(&junk),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = dm("x").encode().unwrap();
        bytes.push(0);
        assert!(matches!(
            DirectMessage::decode(&bytes),
            Err(DecodeError::TrailingBytes { count: 1 })
        ));
    }

    #[test]
    fn control_characters_are_refused() {
        assert!(
            DirectMessage::new(
                &alice(),
                MessageId([0; 16]),
                bob().peer_id(),
                0,
                Timestamp(0),
                "\x1b[2J".into()
            )
            .is_err()
        );
        assert!(
            DirectMessage::new(
                &alice(),
                MessageId([0; 16]),
                bob().peer_id(),
                0,
                Timestamp(0),
                "two\nlines\t".into()
            )
            .is_ok()
        );
        assert!(
            Profile::new(
                &alice(),
                "ev\u{202e}il".into(),
                String::new(),
                Status::Online,
                1
            )
            .is_err()
        );
        assert!(Profile::new(&alice(), "  ".into(), String::new(), Status::Online, 1).is_err());
    }

    #[test]
    fn room_names() {
        assert!(RoomId::new("rust-devs_2.0").is_ok());
        for bad in ["", "Rust", "a b", "café", "x/y", &"a".repeat(65)] {
            assert!(RoomId::new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(RoomId::new("lobby").unwrap().topic(), "/agora/room/1/lobby");
        // An invalid name arriving on the wire is refused at decode.
        let m = RoomMessage::new(
            &alice(),
            RoomId::new("lobby").unwrap(),
            0,
            Timestamp(0),
            "hi".into(),
        )
        .unwrap();
        let mut bad = m.clone();
        bad.room = RoomId("LOBBY".into());
        assert!(RoomMessage::decode(&postcard::to_allocvec(&bad).unwrap()).is_err());
    }

    #[test]
    fn envelope_round_trip_hides_and_protects_content() {
        let (a, b) = (alice(), bob());
        let m = dm("meet at noon");
        let env =
            Envelope::seal(&a, &Letter::Message(m.clone()), Timestamp(5), &mut rng()).unwrap();
        env.verify().unwrap();
        assert!(
            !env.ciphertext.windows(4).any(|w| w == b"noon"),
            "holders see no plaintext"
        );
        let bytes = env.encode().unwrap();
        let env2 = Envelope::decode(&bytes).unwrap();
        assert_eq!(env2.open(&b).unwrap(), Letter::Message(m));
        assert!(matches!(env2.open(&a), Err(OpenError::NotForUs { .. })));
    }

    #[test]
    fn tampered_envelope_is_rejected_not_shown() {
        let (a, b) = (alice(), bob());
        let env = Envelope::seal(&a, &Letter::Message(dm("x")), Timestamp(5), &mut rng()).unwrap();
        // A holder flips a ciphertext bit: the sender signature no longer matches.
        let mut t = env.clone();
        t.ciphertext[3] ^= 0x80;
        assert!(matches!(
            t.open(&b),
            Err(OpenError::Invalid(VerifyError::BadSignature { .. }))
        ));
        // A holder flips a bit and re-signs as itself: the AEAD fails (or the author check).
        let mallory = Identity::from_seed([66; 32]);
        let mut t = env.clone();
        t.ciphertext[3] ^= 0x80;
        t.from = mallory.peer_id();
        t.signature = mallory.sign(
            Domain::Envelope,
            &payload(&(&t.id, &t.from, &t.to, t.created_at, &t.enc, &t.ciphertext)),
        );
        t.verify().unwrap();
        assert!(matches!(t.open(&b), Err(OpenError::Decrypt { .. })));
    }

    #[test]
    fn rewrapped_envelope_is_rejected() {
        // Mallory cannot re-seal Alice's signed message under her own envelope...
        let mallory = Identity::from_seed([66; 32]);
        assert!(matches!(
            Envelope::seal(
                &mallory,
                &Letter::Message(dm("x")),
                Timestamp(0),
                &mut rng()
            ),
            Err(SealError::NotOurs)
        ));
        // ...nor hand-build one: the author check in `open` catches it.
        let (id, from, to, created_at) = (
            MessageId([9; 16]),
            mallory.peer_id(),
            bob().peer_id(),
            Timestamp(0),
        );
        let aad = payload(&(&id, &from, &to, created_at));
        let plain = Letter::Message(dm("x")).encode().unwrap();
        let (enc, ciphertext) = crypto::seal(&to, ENVELOPE_INFO, &aad, &plain, &mut rng()).unwrap();
        let signature = mallory.sign(
            Domain::Envelope,
            &payload(&(&id, &from, &to, created_at, &enc, &ciphertext)),
        );
        let env = Envelope {
            id,
            from,
            to,
            created_at,
            enc,
            ciphertext,
            signature,
        };
        assert!(matches!(env.open(&bob()), Err(OpenError::Mismatch { .. })));
    }

    #[test]
    fn receipts_travel_in_envelopes() {
        let (a, b) = (alice(), bob());
        let r = Receipt::new(&b, &dm("x"), Timestamp(9));
        r.verify().unwrap();
        let env =
            Envelope::seal(&b, &Letter::Receipt(r.clone()), Timestamp(9), &mut rng()).unwrap();
        assert_eq!(env.to, a.peer_id());
        assert_eq!(env.open(&a).unwrap(), Letter::Receipt(r));
    }

    #[test]
    fn mailbox_requests_bind_recipient_and_holder() {
        let holder = Identity::from_seed([8; 32]).peer_id();
        let f = FetchRequest::new(&bob(), holder, Timestamp(1));
        f.verify().unwrap();
        let mut f2 = f.clone();
        f2.recipient = alice().peer_id();
        assert!(f2.verify().is_err());
        let a = AckRequest::new(&bob(), holder, Timestamp(1), vec![MessageId([1; 16])]).unwrap();
        a.verify().unwrap();
        let mut a2 = a.clone();
        a2.ids.push(MessageId([2; 16]));
        assert!(a2.verify().is_err());
        assert!(
            AckRequest::new(
                &bob(),
                holder,
                Timestamp(1),
                vec![MessageId([0; 16]); MAX_ACK_IDS + 1]
            )
            .is_err()
        );
        let req = MailboxRequest::Ack(a);
        assert_eq!(MailboxRequest::decode(&req.encode().unwrap()).unwrap(), req);
    }

    #[test]
    fn history_response_is_bounded() {
        let room = RoomId::new("lobby").unwrap();
        let m = RoomMessage::new(&alice(), room.clone(), 0, Timestamp(0), "x".into()).unwrap();
        let resp = HistoryResponse {
            room,
            messages: vec![m; MAX_HISTORY_MESSAGES + 1],
        };
        assert!(matches!(
            resp.encode(),
            Err(EncodeError::Limit(LimitError::TooMany { .. }))
        ));
        let bytes = postcard::to_allocvec(&resp).unwrap();
        assert!(HistoryResponse::decode(&bytes).is_err());
    }

    #[test]
    fn status_parses_and_prints() {
        for s in [Status::Online, Status::Away, Status::Busy, Status::Offline] {
            assert_eq!(s.to_string().parse::<Status>().unwrap(), s);
        }
        assert!(
            "sleeping"
                .parse::<Status>()
                .unwrap_err()
                .contains("online, away, busy")
        );
    }

    /// Decodes `bytes` as every frame type; none may panic.
    fn decode_all(bytes: &[u8]) {
        let _ = DirectMessage::decode(bytes);
        let _ = Receipt::decode(bytes);
        let _ = DirectReply::decode(bytes);
        let _ = Letter::decode(bytes);
        let _ = Envelope::decode(bytes);
        let _ = MailboxRequest::decode(bytes);
        let _ = MailboxResponse::decode(bytes);
        let _ = RoomMessage::decode(bytes);
        let _ = HistoryRequest::decode(bytes);
        let _ = HistoryResponse::decode(bytes);
        let _ = Presence::decode(bytes);
        let _ = Profile::decode(bytes);
    }

    fn body() -> impl Strategy<Value = String> {
        "[^\\p{Cc}]{0,200}|[\\n\\ta-z]{0,50}"
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            decode_all(&bytes);
        }

        #[test]
        fn corrupted_frames_never_panic_and_never_verify(
            body in body(), pos in any::<prop::sample::Index>(), bit in 0u8..8, seq in any::<u64>()
        ) {
            let m = DirectMessage::new(&alice(), MessageId([4; 16]), bob().peer_id(), seq, Timestamp(seq / 2), body).unwrap();
            let mut bytes = m.encode().unwrap();
            decode_all(&bytes);
            let i = pos.index(bytes.len());
            // Every strict prefix is malformed.
            decode_all(&bytes[..i]);
            prop_assert!(DirectMessage::decode(&bytes[..i]).is_err());
            bytes[i] ^= 1 << bit;
            decode_all(&bytes);
            if let Ok(m2) = DirectMessage::decode(&bytes) {
                // A flipped bit either fails to parse or fails the signature.
                prop_assert!(m2 == m || m2.verify().is_err());
            }
        }

        #[test]
        fn corrupted_envelopes_are_never_opened(pos in any::<prop::sample::Index>(), bit in 0u8..8, seed in any::<u64>()) {
            let env = Envelope::seal(&alice(), &Letter::Message(dm("secret")), Timestamp(1), &mut StdRng::seed_from_u64(seed)).unwrap();
            let mut bytes = MailboxRequest::Store(env.clone()).encode().unwrap();
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
            decode_all(&bytes);
            if let Ok(MailboxRequest::Store(e)) = MailboxRequest::decode(&bytes) {
                prop_assert!(e == env || e.open(&bob()).is_err());
            }
        }

        #[test]
        fn frames_round_trip(body in body(), seq in any::<u64>(), t in any::<u64>(), version in any::<u64>(), nick in "[a-zA-Z0-9 ]{0,20}[a-z]") {
            let (a, b) = (alice(), bob());
            let room = RoomId::new("r").unwrap();
            let m = DirectMessage::new(&a, MessageId([seq as u8; 16]), b.peer_id(), seq, Timestamp(t), body.clone()).unwrap();
            prop_assert_eq!(DirectMessage::decode(&m.encode().unwrap()).unwrap(), m.clone());
            let r = DirectReply::Delivered(Receipt::new(&b, &m, Timestamp(t)));
            prop_assert_eq!(DirectReply::decode(&r.encode().unwrap()).unwrap(), r);
            let rm = RoomMessage::new(&a, room.clone(), seq, Timestamp(t), body.clone()).unwrap();
            prop_assert_eq!(RoomMessage::decode(&rm.encode().unwrap()).unwrap(), rm.clone());
            let h = HistoryResponse { room: room.clone(), messages: vec![rm.clone(), rm] };
            prop_assert_eq!(HistoryResponse::decode(&h.encode().unwrap()).unwrap(), h);
            let hr = HistoryRequest { room, since: Timestamp(t), limit: seq as u16 };
            prop_assert_eq!(HistoryRequest::decode(&hr.encode().unwrap()).unwrap(), hr);
            let p = Presence::new(&a, Status::Busy, seq, Timestamp(t));
            prop_assert_eq!(Presence::decode(&p.encode().unwrap()).unwrap(), p.clone());
            p.verify().unwrap();
            let pr = Profile::new(&a, nick, body, Status::Away, version).unwrap();
            prop_assert_eq!(Profile::decode(&pr.encode().unwrap()).unwrap(), pr.clone());
            pr.verify().unwrap();
            let env = Envelope::seal(&a, &Letter::Message(m.clone()), Timestamp(t), &mut StdRng::seed_from_u64(seq)).unwrap();
            let resp = MailboxResponse::Envelopes { envelopes: vec![env.clone()], remaining: 3 };
            prop_assert_eq!(MailboxResponse::decode(&resp.encode().unwrap()).unwrap(), resp);
            let req = MailboxRequest::Store(env);
            let back = MailboxRequest::decode(&req.encode().unwrap()).unwrap();
            prop_assert_eq!(&back, &req);
            let MailboxRequest::Store(env) = back else { unreachable!() };
            prop_assert_eq!(env.open(&b).unwrap(), Letter::Message(m));
        }
    }
}
