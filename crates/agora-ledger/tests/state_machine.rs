//! Property and unit tests of the pure state machine: supply is conserved (minus burned fees),
//! no balance goes negative, conflicting transactions never both apply, and every replica that
//! executes the same blocks reaches the same state root.

use std::collections::{BTreeMap, HashSet};

use agora_ledger::block::BlockError;
use agora_ledger::state::max_faulty;
use agora_ledger::{
    Account, AccountTx, Action, Block, CommitteeChange, CommitteeTx, Genesis, Hash, State, Tx,
    TxError, quorum,
};
use ed25519_dalek::SigningKey;
use proptest::prelude::*;

const FEE: u64 = 10;

fn key(i: u8) -> SigningKey {
    SigningKey::from_bytes(&[i.wrapping_add(1); 32])
}

fn account(i: u8) -> Account {
    Account::from_key(&key(i).verifying_key())
}

fn genesis(balances: &[u64], validators: u8) -> Genesis {
    Genesis {
        chain: "test".into(),
        validators: (100..100 + validators).map(account).collect(),
        balances: balances
            .iter()
            .enumerate()
            .map(|(i, b)| (account(i as u8), *b))
            .collect(),
        min_fee: FEE,
        epoch_length: 5,
    }
}

fn transfer(chain: &Hash, from: u8, to: u8, amount: u64, fee: u64, seq: u64) -> Tx {
    Tx::Account(
        AccountTx {
            from: account(from),
            seq,
            fee,
            action: Action::Transfer {
                to: account(to),
                amount,
                memo: None,
            },
        }
        .sign(&key(from), chain),
    )
}

/// One generated operation: a transfer that may be valid or not, and possibly a conflicting
/// twin (same sender and sequence, other recipient) sent to the other validator.
#[derive(Clone, Debug)]
struct Op {
    from: u8,
    to: u8,
    amount: u64,
    fee: u64,
    seq_offset: i8,
    conflict_to: Option<u8>,
    tamper: bool,
}

fn op(accounts: u8) -> impl Strategy<Value = Op> {
    (
        0..accounts,
        0..accounts,
        prop_oneof![0u64..50, 0u64..2_000, Just(u64::MAX), Just(u64::MAX - 5)],
        prop_oneof![Just(FEE), Just(FEE - 1), 10u64..30, Just(u64::MAX)],
        prop_oneof![4 => Just(0i8), 1 => -2i8..3],
        proptest::option::weighted(0.3, 0..accounts),
        proptest::bool::weighted(0.05),
    )
        .prop_map(
            |(from, to, amount, fee, seq_offset, conflict_to, tamper)| Op {
                from,
                to,
                amount,
                fee,
                seq_offset,
                conflict_to,
                tamper,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn supply_is_conserved_and_conflicts_apply_once(
        balances in proptest::collection::vec(0u64..5_000, 2..6),
        rounds in proptest::collection::vec(proptest::collection::vec(op(6), 0..8), 1..12),
    ) {
        let n = balances.len() as u8;
        let g = genesis(&balances, 4);
        let chain = g.chain_id();
        let initial: u128 = balances.iter().map(|&b| b as u128).sum();
        // Two validators with separate mempools take turns proposing on one chain; a replica
        // follows by executing what they propose.
        let mut chain_state = State::genesis(&g);
        let mut replica = State::genesis(&g);
        let mut parent = Hash::default();
        let mut mempools: [Vec<Tx>; 2] = [Vec::new(), Vec::new()];
        let mut applied = HashSet::new();
        let mut pairs = Vec::new();
        for (round, ops) in rounds.iter().enumerate() {
            for o in ops {
                let (from, to) = (o.from % n, o.to % n);
                let next = chain_state.account(&account(from)).seq;
                let seq = next.saturating_add_signed(o.seq_offset as i64);
                let mut tx = transfer(&chain, from, to, o.amount, o.fee, seq);
                if o.tamper && let Tx::Account(s) = &mut tx {
                    s.signature[5] ^= 1;
                }
                if let Some(other) = o.conflict_to {
                    let twin = transfer(&chain, from, other % n, o.amount, o.fee, seq);
                    if twin != tx {
                        pairs.push((tx.hash(), twin.hash()));
                        mempools[1].push(twin);
                    }
                }
                mempools[round % 2].push(tx);
            }
            let proposer = round % 2;
            let mut candidates = std::mem::take(&mut mempools[proposer]);
            // A mempool holds a transaction once: two ops may generate the very same transfer
            // (same sender, recipient, amount, fee and sequence number, hence the same hash).
            let mut held = HashSet::new();
            candidates.retain(|t| held.insert(t.hash()));
            let (block, next_state, skipped) =
                Block::build(&chain_state, parent, round as u64, candidates.iter().map(|t| (t.clone(), false)), 100);
            prop_assert_eq!(block.txs.len() + skipped.len(), candidates.len());
            // Skipped transactions go back only if they may still apply later.
            for tx in candidates {
                let hash = tx.hash();
                if !block.txs.contains(&tx)
                    && matches!(next_state.check(&tx, false), Err(TxError::WrongSequence { expected, got }) if got > expected)
                {
                    mempools[proposer].push(tx);
                } else if block.txs.contains(&tx) {
                    prop_assert!(applied.insert(hash), "a transaction applied twice");
                }
            }
            let (replayed, effects) = block.execute(&replica, |_| false).expect("a built block executes");
            prop_assert_eq!(effects.len(), block.txs.len());
            prop_assert_eq!(replayed.root(), block.state_root);
            prop_assert_eq!(&replayed, &next_state);
            replica = replayed;
            chain_state = next_state;
            parent = block.digest();
            // Conservation: balances plus burned fees equal the genesis supply.
            prop_assert_eq!(chain_state.supply() + chain_state.burned as u128, initial);
        }
        for (a, b) in pairs {
            prop_assert!(!(applied.contains(&a) && applied.contains(&b)), "both halves of a double spend applied");
        }
        // Sequence numbers count exactly the applied transactions of each account.
        let mut per_sender: BTreeMap<Account, u64> = BTreeMap::new();
        for s in chain_state.accounts.keys() {
            per_sender.insert(*s, chain_state.account(s).seq);
        }
        prop_assert_eq!(per_sender.values().sum::<u64>(), applied.len() as u64);
    }

    #[test]
    fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Tx::decode(&bytes);
        let _ = Block::decode(&bytes);
    }
}

#[test]
fn invalid_transactions_are_refused_with_the_reason() {
    let g = genesis(&[1_000, 0], 4);
    let chain = g.chain_id();
    let state = State::genesis(&g);
    let check = |tx: &Tx| state.check(tx, false);
    assert_eq!(check(&transfer(&chain, 0, 1, 100, FEE, 0)), Ok(()));
    assert_eq!(
        check(&transfer(&chain, 0, 1, 100, FEE, 1)),
        Err(TxError::WrongSequence {
            expected: 0,
            got: 1
        })
    );
    assert_eq!(
        check(&transfer(&chain, 0, 1, 995, FEE, 0)),
        Err(TxError::InsufficientFunds {
            balance: 1_000,
            needed: 1_005
        })
    );
    assert_eq!(
        check(&transfer(&chain, 0, 1, u64::MAX, FEE, 0)),
        Err(TxError::Overflow)
    );
    assert_eq!(
        check(&transfer(&chain, 0, 1, 5, FEE - 1, 0)),
        Err(TxError::FeeTooLow {
            fee: FEE - 1,
            min: FEE
        })
    );
    assert_eq!(
        check(&transfer(&chain, 0, 0, 5, FEE, 0)),
        Err(TxError::SelfPayment)
    );
    assert_eq!(
        check(&transfer(&chain, 1, 0, 5, FEE, 0)),
        Err(TxError::InsufficientFunds {
            balance: 0,
            needed: 15
        })
    );
    // Signed for another chain, or altered after signing.
    let other = genesis(&[1_000, 0], 3).chain_id();
    assert_eq!(
        check(&transfer(&other, 0, 1, 100, FEE, 0)),
        Err(TxError::BadSignature)
    );
    let Tx::Account(mut forged) = transfer(&chain, 0, 1, 100, FEE, 0) else {
        unreachable!()
    };
    forged.body.action = Action::Transfer {
        to: account(1),
        amount: 900,
        memo: None,
    };
    assert_eq!(check(&Tx::Account(forged)), Err(TxError::BadSignature));
}

#[test]
fn recipient_overflow_is_refused() {
    let g = genesis(&[u64::MAX, u64::MAX - 3], 4);
    let chain = g.chain_id();
    let state = State::genesis(&g);
    assert_eq!(
        state.check(&transfer(&chain, 0, 1, 4, FEE, 0), false),
        Err(TxError::Overflow)
    );
    assert_eq!(
        state.check(&transfer(&chain, 0, 1, 3, FEE, 0), false),
        Ok(())
    );
}

#[test]
fn a_block_with_an_invalid_transaction_or_wrong_root_is_rejected() {
    let g = genesis(&[1_000, 0], 4);
    let chain = g.chain_id();
    let state = State::genesis(&g);
    let (good, _, _) = Block::build(
        &state,
        Hash::default(),
        1,
        [(transfer(&chain, 0, 1, 100, FEE, 0), false)],
        10,
    );
    assert!(good.execute(&state, |_| false).is_ok());

    let mut double = good.clone();
    double.txs.push(double.txs[0].clone());
    assert!(matches!(
        double.execute(&state, |_| false),
        Err(BlockError::InvalidTx {
            index: 1,
            error: TxError::WrongSequence { .. },
            ..
        })
    ));

    let mut lying = good.clone();
    lying.state_root = Hash([7; 32]);
    assert!(matches!(
        lying.execute(&state, |_| false),
        Err(BlockError::StateRoot { .. })
    ));

    let mut skipped_height = good.clone();
    skipped_height.height = 2;
    assert!(matches!(
        skipped_height.execute(&state, |_| false),
        Err(BlockError::Height { .. })
    ));
    assert_eq!(Block::decode(&good.encode()), Ok(good));
}

#[test]
fn committee_changes_need_a_quorum_and_wait_for_the_next_epoch() {
    let g = genesis(&[1_000], 4);
    let chain = g.chain_id();
    let mut state = State::genesis(&g);
    assert_eq!(max_faulty(4), 1);
    assert_eq!(quorum(4), 3);
    let newcomer = account(50);
    let change = CommitteeChange::Add(newcomer);
    let approvals = |signers: &[u8], nonce: u64| {
        signers
            .iter()
            .map(|&i| CommitteeTx::approve(&change, nonce, &key(i), &chain))
            .collect::<Vec<_>>()
    };
    // Two approvals, or one validator approving three times, are not a quorum.
    for signers in [&[100u8, 101][..], &[100, 100, 100], &[100, 101, 7]] {
        let tx = Tx::Committee(CommitteeTx {
            change: change.clone(),
            nonce: 0,
            approvals: approvals(signers, 0),
        });
        assert!(matches!(
            state.check(&tx, false),
            Err(TxError::NotEnoughApprovals { got: 2, needed: 3 })
                | Err(TxError::NotEnoughApprovals { got: 1, needed: 3 })
        ));
    }
    let tx = Tx::Committee(CommitteeTx {
        change: change.clone(),
        nonce: 0,
        approvals: approvals(&[100, 102, 103], 0),
    });
    // Block 1 of epoch 0 (blocks 1..=5) carries the change: the committee switches after block 5.
    state.apply(&tx, false).unwrap();
    assert_eq!(
        state.apply(&tx, false),
        Err(TxError::WrongNonce {
            expected: 1,
            got: 0
        })
    );
    for height in 1..=4 {
        state.finish_block(height);
        assert!(!state.committee.contains(&newcomer));
    }
    state.finish_block(5);
    assert!(state.committee.contains(&newcomer));
    assert_eq!(state.committee.len(), 5);
}

#[test]
fn batch_signature_checks_agree_with_single_checks() {
    let g = genesis(&[1_000; 8], 4);
    let chain = g.chain_id();
    let mut txs: Vec<agora_ledger::SignedAccountTx> = (0..100u64)
        .map(|i| {
            let Tx::Account(signed) = transfer(&chain, (i % 8) as u8, 9, 1 + i, FEE, i / 8) else {
                unreachable!()
            };
            signed
        })
        .collect();
    // Bad ones scattered: a flipped signature bit, a changed amount, a signature by another key.
    txs[0].signature[5] ^= 1;
    let Action::Transfer { amount, .. } = &mut txs[37].body.action else {
        unreachable!()
    };
    *amount += 1;
    let Tx::Account(other) = transfer(&chain, 5, 9, 100, FEE, 12) else {
        unreachable!()
    };
    txs[99].signature = other.signature;
    let refs: Vec<&agora_ledger::SignedAccountTx> = txs.iter().collect();
    let batch = agora_ledger::tx::signatures_valid(&refs, &chain);
    let single: Vec<bool> = txs.iter().map(|t| t.signature_valid(&chain)).collect();
    assert_eq!(batch, single);
    let bad: Vec<usize> = (0..100).filter(|i| !batch[*i]).collect();
    assert_eq!(bad, vec![0, 37, 99]);
    // All good: one batch, all true; none: empty.
    assert!(
        agora_ledger::tx::signatures_valid(&refs[1..37], &chain)
            .iter()
            .all(|v| *v)
    );
    assert!(agora_ledger::tx::signatures_valid(&[], &chain).is_empty());
}
