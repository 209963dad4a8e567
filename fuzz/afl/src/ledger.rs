//! agora-ledger frames: `Tx::decode`, `Block::decode`, `Approval::decode`, `BlockMsg::decode`
//! (the validators' blocks channel) and `service::wire::decode` of `Request`, `Response` and
//! `Announcement`; the first byte picks the decoder, modulo 7. Then what a node does next:
//! single and batch signature checks (which must agree), approval checks, digests, and the
//! transactions and blocks nested inside. Checks as in
//! `crates/agora-ledger/tests/fuzz_decoders.rs`: no panic, oversized input refused before
//! allocating, allocation bounded, what decodes re-encodes to bytes that decode the same.

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

use crate::{peak_of, tagged};

const CHAIN: Hash = Hash([7; 32]);

/// The proptest file's bound: one (largest) element per input byte, plus constants.
fn alloc_bound(len: usize) -> usize {
    let element = size_of::<Tx>()
        .max(size_of::<StoredBlock>())
        .max(size_of::<Approval>());
    element * len + 16 * 1024
}

fn bounded<R>(bytes: &[u8], decode: impl FnOnce(&[u8]) -> R) -> R {
    crate::bounded(bytes, alloc_bound(bytes.len()), decode)
}

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
    assert_eq!(
        signatures_valid(&signed, &CHAIN),
        single,
        "batch and single checks agree"
    );
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
    assert_eq!(Block::decode(&b.encode()).as_ref(), Ok(b));
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

/// The decoders, in selector order.
pub const KINDS: [&str; 7] = [
    "tx",
    "block",
    "approval",
    "block_msg",
    "request",
    "response",
    "announcement",
];

pub fn run(data: &[u8]) {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind as usize % KINDS.len() {
        0 => {
            let (tx, peak) = peak_of(|| Tx::decode(bytes));
            if bytes.len() > MAX_TX_BYTES {
                assert!(tx.is_err() && peak == 0, "refused before allocating");
            }
            check_tx_bytes(bytes);
        }
        1 => {
            let (block, peak) = peak_of(|| Block::decode(bytes));
            if bytes.len() > MAX_BLOCK_BYTES {
                assert!(block.is_err() && peak == 0, "refused before allocating");
            }
            check_block_bytes(bytes);
        }
        2 => {
            if let Some(a) = bounded(bytes, Approval::decode) {
                assert_eq!(Approval::decode(&a.encode()).as_ref(), Some(&a));
                let change = CommitteeChange::Add(a.validator);
                let _ = a.valid_for(&change, 0, &CHAIN);
            }
        }
        3 => {
            if let Some(m) = bounded(bytes, BlockMsg::decode) {
                assert_eq!(BlockMsg::decode(&m.encode()).as_ref(), Some(&m));
                match &m {
                    BlockMsg::Proposal(b) | BlockMsg::Have(b) => check_block(b),
                    BlockMsg::Want(_) => {}
                    BlockMsg::Txs(txs) => check_txs(txs),
                }
            }
        }
        4 => {
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
        }
        5 => {
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
        }
        _ => {
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
    }
}

pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let keys: Vec<SigningKey> = (1u8..4).map(|i| SigningKey::from_bytes(&[i; 32])).collect();
    let account = |k: &SigningKey| Account::from_key(&k.verifying_key());
    let transfer = AccountTx {
        from: account(&keys[0]),
        seq: 1,
        fee: 10,
        action: Action::Transfer {
            to: account(&keys[1]),
            amount: 500,
            memo: Some("rent".into()),
        },
    }
    .sign(&keys[0], &CHAIN);
    let change = CommitteeChange::Add(account(&keys[2]));
    let approvals: Vec<Approval> = keys[..2]
        .iter()
        .map(|k| CommitteeTx::approve(&change, 4, k, &CHAIN))
        .collect();
    let committee = CommitteeTx {
        change,
        nonce: 4,
        approvals: approvals.clone(),
    };
    let txs = vec![Tx::Account(transfer), Tx::Committee(committee)];
    let block = Block {
        parent: Hash([1; 32]),
        height: 9,
        timestamp_ms: 1_700_000_000_000,
        txs: txs.clone(),
        state_root: Hash([2; 32]),
    };

    let mut out = Vec::new();
    let mut add = |kind: usize, name: &str, bytes: Vec<u8>| {
        out.push((
            format!("{}-{name}", KINDS[kind]),
            tagged(kind as u8, &bytes),
        ));
    };
    add(0, "transfer", txs[0].encode());
    add(0, "committee", txs[1].encode());
    add(1, "two-txs", block.encode());
    add(2, "add", approvals[0].encode());
    add(3, "proposal", BlockMsg::Proposal(block.clone()).encode());
    add(3, "want", BlockMsg::Want(Hash([3; 32])).encode());
    add(3, "txs", BlockMsg::Txs(txs.clone()).encode());
    add(4, "status", wire::encode(&Request::Status));
    add(
        4,
        "submit-many",
        wire::encode(&Request::SubmitMany(txs.iter().map(Tx::encode).collect())),
    );
    let stored = StoredBlock {
        block: block.encode(),
        certificate: Some(vec![5; 40]),
    };
    add(5, "blocks", wire::encode(&Response::Blocks(vec![stored])));
    let status = Response::Status {
        chain: CHAIN,
        height: 9,
        digest: block.digest(),
        validator: true,
    };
    add(5, "status", wire::encode(&status));
    add(
        5,
        "submitted",
        wire::encode(&Response::SubmittedMany(vec![
            Ok(Hash([4; 32])),
            Err("seq".into()),
        ])),
    );
    let announcement = Announcement {
        height: block.height,
        digest: block.digest(),
        certificate: vec![6; 40],
        block: Some(block.encode()),
    };
    add(6, "with-block", wire::encode(&announcement));
    out
}
