//! The ledger checks signatures with `ed25519-zebra` (ZIP-215 rules on curve25519-dalek 5).
//! Validators must agree on every signature forever, so these tests hold it to
//! `ed25519-consensus`, the crate the ledger used before and the reference for the same
//! rules: the edge cases that separate ed25519 implementations (small-order keys and nonces,
//! non-canonical point encodings, non-canonical scalars) and random valid, tampered and
//! garbage signatures, each checked singly and in batches.

use agora_ledger::tx::signatures_valid;
use agora_ledger::{Account, AccountTx, Action, Hash, SignedAccountTx};
use ed25519_dalek::{Signer, SigningKey};
use proptest::prelude::*;

/// What the reference accepts for `tx` on `chain`.
fn reference(tx: &SignedAccountTx, chain: &Hash) -> bool {
    let Ok(key) = ed25519_consensus::VerificationKey::try_from(tx.body.from.0) else {
        return false;
    };
    key.verify(
        &ed25519_consensus::Signature::from(tx.signature),
        &tx.body.signing_message(chain),
    )
    .is_ok()
}

fn body(from: [u8; 32], seq: u64) -> AccountTx {
    AccountTx {
        from: Account(from),
        seq,
        fee: 1,
        action: Action::Transfer {
            to: Account([7; 32]),
            amount: 5,
            memo: None,
        },
    }
}

fn hex32(s: &str) -> [u8; 32] {
    hex::decode(s).unwrap().try_into().unwrap()
}

/// Encodings of the eight small-order points, canonical and not (y ≥ p, or a sign bit on
/// x = 0): where cofactored, cofactorless and strict verifiers part ways.
fn small_order_encodings() -> Vec<[u8; 32]> {
    [
        // identity, y = 1 (and non-canonical y = p + 1)
        "0100000000000000000000000000000000000000000000000000000000000000",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        // identity with the sign bit set (x = 0 "negative")
        "0100000000000000000000000000000000000000000000000000000000000080",
        // order 2, y = -1
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        // order 4, y = 0
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        // non-canonical y = p (= 0)
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        // order 8
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    ]
    .into_iter()
    .map(hex32)
    .collect()
}

#[test]
fn small_order_and_non_canonical_cases_match_the_reference() {
    let chain = Hash([3; 32]);
    let points = small_order_encodings();
    // s = 0, and s = ℓ (not canonical: must be refused).
    let l = hex32("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010");
    let mut txs = Vec::new();
    for a in &points {
        for r in &points {
            for s in [[0u8; 32], l] {
                let mut signature = [0u8; 64];
                signature[..32].copy_from_slice(r);
                signature[32..].copy_from_slice(&s);
                txs.push(SignedAccountTx {
                    body: body(*a, 1),
                    signature,
                });
            }
        }
    }
    let expected: Vec<bool> = txs.iter().map(|tx| reference(tx, &chain)).collect();
    let single: Vec<bool> = txs.iter().map(|tx| tx.signature_valid(&chain)).collect();
    assert_eq!(single, expected);
    // ZIP-215 accepts small-order keys and nonces with s = 0; the case must be exercised.
    assert!(expected.iter().filter(|v| **v).count() >= 100);
    assert!(expected.iter().any(|v| !*v));
    // Batches mixing them, at several sizes (a failed batch is split down to single checks).
    for size in [1, 7, 8, 33, txs.len()] {
        for chunk in txs.chunks(size) {
            let refs: Vec<&SignedAccountTx> = chunk.iter().collect();
            let batch = signatures_valid(&refs, &chain);
            let want: Vec<bool> = chunk.iter().map(|tx| reference(tx, &chain)).collect();
            assert_eq!(batch, want, "batch of {size}");
        }
    }
}

/// A signature as the generator made it: valid, tampered in one bit, with `s` made
/// non-canonical (s + ℓ), or random bytes.
#[derive(Clone, Debug)]
enum Case {
    Valid,
    FlipBit(usize),
    ScalarPlusL,
    Garbage([u8; 32], [u8; 32]),
}

fn case() -> impl Strategy<Value = Case> {
    prop_oneof![
        3 => Just(Case::Valid),
        2 => (0usize..512).prop_map(Case::FlipBit),
        1 => Just(Case::ScalarPlusL),
        1 => (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(a, b)| Case::Garbage(a, b)),
    ]
}

/// s + ℓ, little-endian (s < ℓ < 2²⁵³, so it fits in 32 bytes).
fn plus_l(s: &mut [u8]) {
    let l = hex32("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010");
    let mut carry = 0u16;
    for (b, l) in s.iter_mut().zip(l) {
        let sum = *b as u16 + l as u16 + carry;
        *b = sum as u8;
        carry = sum >> 8;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_signatures_match_the_reference(
        seeds in proptest::collection::vec((any::<[u8; 32]>(), any::<u64>(), case()), 1..40),
    ) {
        let chain = Hash([9; 32]);
        let txs: Vec<SignedAccountTx> = seeds
            .iter()
            .map(|(seed, seq, case)| {
                let key = SigningKey::from_bytes(seed);
                let body = body(key.verifying_key().to_bytes(), *seq);
                let mut signature = key.sign(&body.signing_message(&chain)).to_bytes();
                match case {
                    Case::Valid => {}
                    Case::FlipBit(bit) => signature[bit / 8] ^= 1 << (bit % 8),
                    Case::ScalarPlusL => plus_l(&mut signature[32..]),
                    Case::Garbage(r, s) => {
                        signature[..32].copy_from_slice(r);
                        signature[32..].copy_from_slice(s);
                    }
                }
                SignedAccountTx { body, signature }
            })
            .collect();
        let expected: Vec<bool> = txs.iter().map(|tx| reference(tx, &chain)).collect();
        for (tx, (want, (_, _, case))) in txs.iter().zip(expected.iter().zip(&seeds)) {
            prop_assert_eq!(tx.signature_valid(&chain), *want);
            if matches!(case, Case::Valid) {
                prop_assert!(*want);
            }
        }
        let refs: Vec<&SignedAccountTx> = txs.iter().collect();
        prop_assert_eq!(signatures_valid(&refs, &chain), expected);
    }
}
