//! Fuzzing of agora-ledger's decoders of network input (hardening issue 20), as proptest runs
//! over mutated valid frames: `Tx::decode`, `Block::decode`, `Approval::decode`,
//! `BlockMsg::decode` (the validators' blocks channel) and `service::wire::decode` of
//! `Request`, `Response` and `Announcement` (`/agora/ledger/1.0.0` and the gossip topic),
//! followed by what a node does next with them: signature checks (single and batch), approval
//! checks, block digests, and the blocks and transactions nested inside.
//!
//! Each decode must not panic, must hold at most [`alloc_bound`] bytes at once (measured by a
//! counting allocator), must refuse input over its limit without allocating, and what it
//! accepts must re-encode to bytes that decode to the same value; a mutated signed transaction
//! or approval that decodes to something else never verifies, and a batch signature check
//! agrees with single checks. Valid frames always decode. (The Commonware finalization
//! certificate inside an announcement is decoded by Commonware's bounded codec in a private
//! function and is not covered here.)
//!
//! 256 cases per property by default (a few seconds in debug); `PROPTEST_CASES` raises it
//! (`bench/fuzz.sh`). A failure found this way becomes a named regression test below.

use agora_fuzz::{mutate, mutations, peak_of};
use agora_ledger::{
    Account, AccountTx, Action, Approval, Block, CommitteeChange, CommitteeTx, Hash,
    SignedAccountTx, Tx,
    block::MAX_BLOCK_BYTES,
    consensus::BlockMsg,
    service::{
        StoredBlock,
        wire::{self, Announcement, Request, Response},
    },
    tx::{MAX_TX_BYTES, signatures_valid},
};
use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use serde::{Serialize, de::DeserializeOwned};

// ---------------------------------------------------------------------------------------------
// Allocation accounting: `agora_fuzz::peak_of` measures the most bytes a closure holds at once
// on this thread, counted by this binary's global allocator. (Mutations of valid frames and the
// proptest config come from agora-fuzz too.)

#[global_allocator]
static ALLOC: agora_fuzz::Counting = agora_fuzz::Counting;

/// The most a decoder may hold for `len` input bytes. Postcard believes a count prefix only as
/// far as one element per remaining input byte, serde reserves at most 1 MiB from one, and
/// byte vectors and strings are copied from the input: so a few hostile bytes can reserve at
/// most a (largest) element struct each, plus small constants.
fn alloc_bound(len: usize) -> usize {
    let element = size_of::<Tx>()
        .max(size_of::<StoredBlock>())
        .max(size_of::<Approval>());
    element * len + 16 * 1024
}

/// Runs `decode` on `bytes` under the allocation bound.
fn bounded<R>(bytes: &[u8], decode: impl FnOnce(&[u8]) -> R) -> R {
    let (r, peak) = peak_of(|| decode(bytes));
    assert!(
        peak <= alloc_bound(bytes.len()),
        "{peak} bytes held decoding {} input bytes",
        bytes.len()
    );
    r
}

// ---------------------------------------------------------------------------------------------
// Valid frames.

const CHAIN: Hash = Hash([7; 32]);

fn key() -> impl Strategy<Value = SigningKey> {
    (1u8..5).prop_map(|i| SigningKey::from_bytes(&[i; 32]))
}

fn account() -> impl Strategy<Value = Account> {
    key().prop_map(|k| Account::from_key(&k.verifying_key()))
}

fn hash() -> impl Strategy<Value = Hash> {
    any::<[u8; 32]>().prop_map(Hash)
}

fn signed_tx() -> impl Strategy<Value = SignedAccountTx> {
    (
        key(),
        any::<u64>(),
        any::<u64>(),
        account(),
        any::<u64>(),
        prop::option::of("\\PC{0,60}"),
    )
        .prop_map(|(k, seq, fee, to, amount, memo)| {
            AccountTx {
                from: Account::from_key(&k.verifying_key()),
                seq,
                fee,
                action: Action::Transfer { to, amount, memo },
            }
            .sign(&k, &CHAIN)
        })
}

fn committee_tx() -> impl Strategy<Value = CommitteeTx> {
    (
        any::<bool>(),
        account(),
        any::<u64>(),
        prop::collection::vec(key(), 0..4),
    )
        .prop_map(|(add, who, nonce, keys)| {
            let change = if add {
                CommitteeChange::Add(who)
            } else {
                CommitteeChange::Remove(who)
            };
            let approvals = keys
                .iter()
                .map(|k| CommitteeTx::approve(&change, nonce, k, &CHAIN))
                .collect();
            CommitteeTx {
                change,
                nonce,
                approvals,
            }
        })
}

fn tx() -> impl Strategy<Value = Tx> {
    prop_oneof![
        3 => signed_tx().prop_map(Tx::Account),
        1 => committee_tx().prop_map(Tx::Committee),
    ]
}

fn block() -> impl Strategy<Value = Block> {
    (
        hash(),
        any::<u64>(),
        any::<u64>(),
        prop::collection::vec(tx(), 0..5),
        hash(),
    )
        .prop_map(|(parent, height, timestamp_ms, txs, state_root)| Block {
            parent,
            height,
            timestamp_ms,
            txs,
            state_root,
        })
}

fn block_msg() -> impl Strategy<Value = BlockMsg> {
    prop_oneof![
        block().prop_map(BlockMsg::Proposal),
        hash().prop_map(BlockMsg::Want),
        block().prop_map(BlockMsg::Have),
        prop::collection::vec(tx(), 0..6).prop_map(BlockMsg::Txs),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::Status),
        (any::<u64>(), any::<u32>()).prop_map(|(from, max)| Request::Blocks { from, max }),
        tx().prop_map(|t| Request::Submit(t.encode())),
        prop::collection::vec(tx(), 0..5)
            .prop_map(|ts| Request::SubmitMany(ts.iter().map(Tx::encode).collect())),
    ]
}

fn result() -> impl Strategy<Value = Result<Hash, String>> {
    prop_oneof![hash().prop_map(Ok), "\\PC{0,40}".prop_map(Err)]
}

fn stored_block() -> impl Strategy<Value = StoredBlock> {
    (
        block(),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..200)),
    )
        .prop_map(|(b, certificate)| StoredBlock {
            block: b.encode(),
            certificate,
        })
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        (hash(), any::<u64>(), hash(), any::<bool>()).prop_map(
            |(chain, height, digest, validator)| Response::Status {
                chain,
                height,
                digest,
                validator
            }
        ),
        prop::collection::vec(stored_block(), 0..3).prop_map(Response::Blocks),
        result().prop_map(Response::Submitted),
        prop::collection::vec(result(), 0..5).prop_map(Response::SubmittedMany),
        "\\PC{0,40}".prop_map(Response::Error),
    ]
}

fn announcement() -> impl Strategy<Value = Announcement> {
    (
        block(),
        prop::collection::vec(any::<u8>(), 0..200),
        any::<bool>(),
    )
        .prop_map(|(b, certificate, with_block)| Announcement {
            height: b.height,
            digest: b.digest(),
            certificate,
            block: with_block.then(|| b.encode()),
        })
}

/// Any frame, as the type it is sent as.
#[derive(Debug)]
enum Msg {
    Tx(Tx),
    Block(Block),
    Approval(Approval, CommitteeChange, u64),
    BlockMsg(BlockMsg),
    Request(Request),
    Response(Response),
    Announcement(Announcement),
}

fn msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        tx().prop_map(Msg::Tx),
        block().prop_map(Msg::Block),
        committee_tx()
            .prop_filter("an approval", |c| !c.approvals.is_empty())
            .prop_map(|c| Msg::Approval(c.approvals[0].clone(), c.change, c.nonce)),
        block_msg().prop_map(Msg::BlockMsg),
        request().prop_map(Msg::Request),
        response().prop_map(Msg::Response),
        announcement().prop_map(Msg::Announcement),
    ]
}

impl Msg {
    fn encode(&self) -> Vec<u8> {
        match self {
            Msg::Tx(t) => t.encode(),
            Msg::Block(b) => b.encode(),
            Msg::Approval(a, ..) => a.encode(),
            Msg::BlockMsg(m) => m.encode(),
            Msg::Request(r) => wire::encode(r),
            Msg::Response(r) => wire::encode(r),
            Msg::Announcement(a) => wire::encode(a),
        }
    }

    /// Checks `bytes` decoded as this frame's type: equal to `self` when `original`; if not,
    /// a different signed transaction or approval must not verify.
    fn decode_as_own_type(&self, bytes: &[u8], original: bool) {
        match self {
            Msg::Tx(want) => match Tx::decode(bytes) {
                Ok(got) if original => assert_eq!(&got, want),
                Ok(got) => assert_forgery_fails(&got, want),
                Err(e) => assert!(!original, "{e}"),
            },
            Msg::Block(want) => match Block::decode(bytes) {
                Ok(got) if original => assert_eq!(&got, want),
                Ok(got) => {
                    for t in &got.txs {
                        if !want.txs.contains(t) {
                            assert_forgery_fails(t, t);
                        }
                    }
                }
                Err(e) => assert!(!original, "{e}"),
            },
            Msg::Approval(want, change, nonce) => match Approval::decode(bytes) {
                Some(got) if original => {
                    assert_eq!(&got, want);
                    assert!(got.valid_for(change, *nonce, &CHAIN));
                }
                Some(got) => assert!(got == *want || !got.valid_for(change, *nonce, &CHAIN)),
                None => assert!(!original),
            },
            Msg::BlockMsg(want) => match BlockMsg::decode(bytes) {
                Some(got) if original => assert_eq!(&got, want),
                Some(_) => {}
                None => assert!(!original),
            },
            Msg::Request(want) => same_encoding(bytes, want, original),
            Msg::Response(want) => same_encoding(bytes, want, original),
            Msg::Announcement(want) => same_encoding(bytes, want, original),
        }
    }
}

/// A decoded transaction `got` that differs from `want` does not verify (for `got == want`,
/// only that checking it does not panic).
fn assert_forgery_fails(got: &Tx, want: &Tx) {
    match got {
        Tx::Account(s) => {
            let valid = s.signature_valid(&CHAIN);
            assert!(got == want || !valid, "forged: {got:?}");
        }
        Tx::Committee(c) => {
            for a in &c.approvals {
                let valid = a.valid_for(&c.change, c.nonce, &CHAIN);
                let Tx::Committee(w) = want else {
                    assert!(!valid, "forged: {a:?}");
                    continue;
                };
                let genuine = w.change == c.change && w.nonce == c.nonce && w.approvals.contains(a);
                assert!(genuine || !valid, "forged: {a:?}");
            }
        }
    }
}

/// The service messages are not `Eq`: compare encodings.
fn same_encoding<T: Serialize + DeserializeOwned>(bytes: &[u8], want: &T, original: bool) {
    match wire::decode::<T>(bytes) {
        Some(got) if original => assert_eq!(wire::encode(&got), wire::encode(want)),
        Some(_) => {}
        None => assert!(!original),
    }
}

// ---------------------------------------------------------------------------------------------
// The decoders.

/// What a node does with decoded transactions: single and batch signature checks (which must
/// agree), approval checks, hashes.
fn check_txs<'a>(txs: impl IntoIterator<Item = &'a Tx>) {
    let txs: Vec<&Tx> = txs.into_iter().collect();
    let signed: Vec<&SignedAccountTx> = txs
        .iter()
        .filter_map(|t| match t {
            Tx::Account(s) => Some(s),
            Tx::Committee(_) => None,
        })
        .collect();
    let single: Vec<bool> = signed.iter().map(|s| s.signature_valid(&CHAIN)).collect();
    assert_eq!(signatures_valid(&signed, &CHAIN), single);
    for t in txs {
        let _ = (t.hash(), t.sender());
        if let Tx::Committee(c) = t {
            for a in &c.approvals {
                let _ = (a.valid_for(&c.change, c.nonce, &CHAIN), a.validator.key());
            }
        }
        assert_eq!(Tx::decode(&t.encode()).as_ref(), Ok(t));
    }
}

fn check_block(b: &Block) {
    let again = b.encode();
    assert_eq!(Block::decode(&again).as_ref(), Ok(b));
    let _ = b.digest();
    check_txs(&b.txs);
}

fn check_tx_bytes(bytes: &[u8]) {
    if let Ok(t) = bounded(bytes, Tx::decode) {
        check_txs([&t]);
    }
}

fn check_block_bytes(bytes: &[u8]) {
    if let Ok(b) = bounded(bytes, Block::decode) {
        check_block(&b);
    }
}

/// Decodes `bytes` as every ledger frame and runs what a node runs on the result.
fn decode_all(bytes: &[u8]) {
    let (tx, peak) = peak_of(|| Tx::decode(bytes));
    if bytes.len() > MAX_TX_BYTES {
        assert!(tx.is_err() && peak == 0, "refused before allocating");
    }
    check_tx_bytes(bytes);
    let (block, peak) = peak_of(|| Block::decode(bytes));
    if bytes.len() > MAX_BLOCK_BYTES {
        assert!(block.is_err() && peak == 0, "refused before allocating");
    }
    check_block_bytes(bytes);
    if let Some(a) = bounded(bytes, Approval::decode) {
        assert_eq!(Approval::decode(&a.encode()).as_ref(), Some(&a));
        let change = CommitteeChange::Add(a.validator);
        let _ = a.valid_for(&change, 0, &CHAIN);
    }
    if let Some(m) = bounded(bytes, BlockMsg::decode) {
        assert_eq!(BlockMsg::decode(&m.encode()).as_ref(), Some(&m));
        match &m {
            BlockMsg::Proposal(b) | BlockMsg::Have(b) => check_block(b),
            BlockMsg::Want(_) => {}
            BlockMsg::Txs(txs) => check_txs(txs),
        }
    }
    if let Some(r) = bounded(bytes, |b| wire::decode::<Request>(b)) {
        let again = wire::encode(&r);
        assert_eq!(
            wire::encode(&wire::decode::<Request>(&again).unwrap()),
            again
        );
        match r {
            Request::Submit(t) => check_tx_bytes(&t),
            Request::SubmitMany(ts) => ts.iter().for_each(|t| check_tx_bytes(t)),
            Request::Status | Request::Blocks { .. } => {}
        }
    }
    if let Some(r) = bounded(bytes, |b| wire::decode::<Response>(b)) {
        let again = wire::encode(&r);
        assert_eq!(
            wire::encode(&wire::decode::<Response>(&again).unwrap()),
            again
        );
        if let Response::Blocks(blocks) = r {
            blocks.iter().for_each(|s| check_block_bytes(&s.block));
        }
    }
    if let Some(a) = bounded(bytes, |b| wire::decode::<Announcement>(b)) {
        let again = wire::encode(&a);
        assert_eq!(
            wire::encode(&wire::decode::<Announcement>(&again).unwrap()),
            again
        );
        if let Some(b) = &a.block {
            check_block_bytes(b);
        }
    }
}

proptest! {
    #![proptest_config(agora_fuzz::config())]

    #[test]
    fn valid_frames_decode(m in msg()) {
        let bytes = m.encode();
        m.decode_as_own_type(&bytes, true);
        decode_all(&bytes);
    }

    #[test]
    fn mutated_frames_are_refused_or_round_trip(m in msg(), other in msg(), ms in mutations()) {
        let bytes = mutate(&m.encode(), &other.encode(), &ms);
        decode_all(&bytes);
        m.decode_as_own_type(&bytes, false);
    }

    #[test]
    fn random_bytes_are_refused_or_round_trip(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        decode_all(&bytes);
    }
}

#[test]
fn oversized_input_is_refused_before_allocating() {
    // `decode_all` asserts the refusals and that nothing was allocated.
    for len in [
        129,
        MAX_TX_BYTES + 1,
        MAX_BLOCK_BYTES + 1,
        MAX_BLOCK_BYTES + 65,
    ] {
        decode_all(&vec![0x81; len]);
    }
}

/// `consensus::wire::MAX_TX_BATCH` (private to the crate).
const MAX_TX_BATCH: usize = 1_024;

#[test]
fn an_oversized_transaction_batch_is_refused() {
    let t = Tx::Committee(CommitteeTx {
        change: CommitteeChange::Add(Account([1; 32])),
        nonce: 0,
        approvals: vec![],
    });
    let m = BlockMsg::Txs(vec![t; MAX_TX_BATCH + 1]);
    assert_eq!(BlockMsg::decode(&m.encode()), None);
}
