//! Agora messaging core: signed direct messages with receipts, offline mailboxes, rooms with
//! history, presence and profiles.
//!
//! The core of this crate is sans-I/O: it owns the wire formats ([`wire`]), the keys and
//! ciphers ([`crypto`]) and the state machines ([`proto`]), with no sockets, no tasks and no
//! clock. [`service`] drives it over the node's libp2p swarm and keeps its state in redb. Every function that cares about time takes `now`, and every one that needs
//! randomness takes an `rng` ([`rand_core::CryptoRng`], re-exported).
//!
//! # Roles
//!
//! - **Sender** ([`proto::direct::Sender`]): numbers each message per peer, signs it with the
//!   node's libp2p ed25519 key and keeps it until the recipient's signed [`wire::Receipt`]
//!   arrives. It sends directly over `/agora/chat/1.0.0` when the peer is reachable (through a
//!   relay if needed), otherwise seals it into a mailbox [`wire::Envelope`].
//! - **Receiver** ([`proto::direct::Receiver`], one per conversation): checks the signature and
//!   that the message is for us, drops duplicates and replays, restores order per sender with a
//!   bounded buffer, and signs receipts.
//! - **Mailbox holder** ([`proto::mailbox::MailboxStore`]): any of the k ≥ 3 peers closest to
//!   [`crypto::mailbox_key`] of a recipient. It stores verified envelopes under TTL and quotas,
//!   serves them only to the recipient (signed [`wire::FetchRequest`]) and deletes them on a
//!   signed [`wire::AckRequest`]. It can read neither content nor tamper with it.
//! - **Room member** ([`proto::room::RoomHistory`]): keeps the verified recent posts of a room
//!   (gossipsub topic [`wire::RoomId::topic`]) and answers joiners' history requests; a joiner
//!   verifies every post in an answer.
//! - **Presence** ([`proto::presence`]): signs heartbeats ([`proto::presence::Heartbeat`]), tracks
//!   peers' heartbeats with expiry ([`proto::presence::PresenceTable`]) and their newest signed
//!   profiles ([`proto::presence::ProfileBook`]).
//!
//! # Messages
//!
//! | protocol | request | response |
//! | --- | --- | --- |
//! | `/agora/chat/1.0.0` | [`wire::DirectMessage`] | [`wire::DirectReply`] |
//! | `/agora/mailbox/1.0.0` | [`wire::MailboxRequest`] | [`wire::MailboxResponse`] |
//! | `/agora/room-history/1.0.0` | [`wire::HistoryRequest`] | [`wire::HistoryResponse`] |
//! | gossipsub `/agora/room/1/<name>` | [`wire::RoomMessage`] | |
//! | `/agora/presence/1.0.0`, with contacts and room members | [`wire::PresenceExchange`] | [`wire::PresenceExchange`] |
//!
//! Every message names its author by [`libp2p_identity::PeerId`] and carries an ed25519
//! signature over all its other fields, with a per-type domain tag. An ed25519 `PeerId` embeds
//! the public key, so any receiver can verify any message without a key directory, and a
//! message's author is exactly the key that signed it.
//!
//! # Encoding: postcard
//!
//! Frames are serde types encoded with [postcard](https://docs.rs/postcard): compact (varints,
//! no field names), one encoding per value (so re-encoding the decoded fields for signature
//! checks is exact), and it decodes from a borrowed slice, so a length prefix inside the input
//! can never make it allocate more than the input holds. CBOR (ciborium) would have been
//! self-describing, but Agora has no consumer that needs that, and its indefinite-length items
//! make limits harder to reason about. Versioning is by protocol id, not by the format.
//!
//! # Mailbox encryption: HPKE
//!
//! Envelopes use HPKE (RFC 9180, crate [`hpke`]) with DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and
//! ChaCha20Poly1305, to the recipient's identity key converted to X25519 (ed25519-dalek's
//! `to_montgomery` / `to_scalar_bytes`). HPKE rather than a NaCl sealed box because it is an IETF
//! standard with test vectors, binds a context string and associated data (the envelope header:
//! id, sender, recipient, time) into the ciphertext, and the `hpke` crate shares the
//! curve25519-dalek 5 / rand_core 0.10 stack libp2p already builds, while `crypto_box`'s stable
//! release is on the previous one. The sender additionally signs the sealed envelope (so holders
//! can check who stores what and cannot tamper), and the plaintext is the sender-signed message
//! itself (so nobody can re-wrap someone else's message under their own name).
//!
//! # Limits
//!
//! Every frame has a maximum length checked before decoding ([`wire::Frame::MAX_LEN`]); message
//! text is at most [`wire::MAX_BODY_BYTES`] (64 KiB) and may not contain terminal control
//! characters; batches (mailbox fetches, room history) are at most [`wire::MAX_BATCH_BYTES`].
//! Every state machine is bounded: out-of-order buffer, outbox, mailbox quotas per recipient,
//! per sender and in total, room history length and age, presence table size. Each has a
//! `Config` with safe defaults and `with_*` setters.
//!
//! # Example
//!
//! ```
//! use agora_chat::crypto::Identity;
//! use agora_chat::proto::direct::{Config, Received, Receiver, Sender};
//! use agora_chat::wire::{DirectMessage, Frame, MessageId, Timestamp};
//!
//! let (alice, bob) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]));
//! let mut outbox = Sender::new(alice.clone(), Config::default());
//! let mut inbox = Receiver::new(bob.clone(), alice.peer_id(), Config::default());
//! let now = Timestamp::from_millis(1_700_000_000_000);
//!
//! let msg = outbox.send(bob.peer_id(), MessageId([7; 16]), "hello".into(), now).unwrap();
//! let bytes = msg.encode().unwrap(); // ...over /agora/chat/1.0.0...
//! let got = inbox.handle_message(DirectMessage::decode(&bytes).unwrap(), now).unwrap();
//! let Received::Delivered { messages, receipt } = got else { unreachable!() };
//! assert_eq!(messages[0].body, "hello");
//! outbox.handle_receipt(&receipt).unwrap(); // ...and back in the response.
//! assert_eq!(outbox.pending_len(), 0);
//! ```

pub mod crypto;
pub mod proto;
pub mod wire;

pub use rand_core;
pub mod service;
