//! Contracts in the state machine: deploy and call through signed transactions, storage in the
//! state root, gas and fees, failures that change nothing but the fee, reentrancy, nested calls,
//! value transfers, NaN canonicalisation, and replicas that agree on every root.

use agora_ledger::contract::{ContractAction as C, contract_address, fee_for};
use agora_ledger::{Account, AccountTx, Action, Effect, Genesis, State, Tx, TxError};
use ed25519_dalek::SigningKey;

const FEE: u64 = 10;
const GAS: u64 = 2_000_000;

fn key(i: u8) -> SigningKey {
    SigningKey::from_bytes(&[i.wrapping_add(90); 32])
}

fn account(i: u8) -> Account {
    Account::from_key(&key(i).verifying_key())
}

fn state() -> State {
    State::genesis(&Genesis {
        chain: "contracts".into(),
        validators: vec![account(50)],
        balances: (0..4).map(|i| (account(i), 1_000_000_000)).collect(),
        min_fee: FEE,
        epoch_length: 100,
    })
}

fn tx(st: &State, from: u8, action: C) -> Tx {
    let a = account(from);
    let fee = fee_for(st.min_fee, action.gas_limit());
    Tx::Account(
        AccountTx {
            from: a,
            seq: st.account(&a).seq,
            fee,
            action: Action::Contract(action),
        }
        .sign(&key(from), &st.chain),
    )
}

/// Applies on `st` and on `twin` (checking the signature once, as a validator that cached it
/// would not); both must agree on the effect and the root.
fn apply(
    st: &mut State,
    twin: &mut State,
    t: &Tx,
) -> Result<agora_ledger::contract::ContractOutcome, TxError> {
    let a = st.apply(t, false);
    let b = twin.apply(t, true);
    assert_eq!(a, b);
    assert_eq!(st.root(), twin.root());
    match a? {
        Effect::Contract { outcome, .. } => Ok(outcome),
        other => panic!("a contract action had effect {other:?}"),
    }
}

const COUNTER: &str = r#"
(module
  (import "agora" "get" (func $get (param i32 i32 i32 i32) (result i32)))
  (import "agora" "put" (func $put (param i32 i32 i32 i32)))
  (import "agora" "output" (func $output (param i32 i32)))
  (import "agora" "emit" (func $emit (param i32 i32 i32 i32)))
  (import "agora" "revert" (func $revert (param i32 i32)))
  (import "agora" "value" (func $value (result i64)))
  (memory (export "memory") 1)
  (data (i32.const 0) "count")
  (data (i32.const 16) "bump")
  (data (i32.const 32) "no")
  (func (export "init")
    (i64.store (i32.const 64) (i64.const 10))
    (call $put (i32.const 0) (i32.const 5) (i32.const 64) (i32.const 8)))
  (func $load (result i64)
    (if (i32.eq (call $get (i32.const 0) (i32.const 5) (i32.const 64) (i32.const 8)) (i32.const -1))
      (then (return (i64.const 0))))
    (i64.load (i32.const 64)))
  (func (export "increment")
    (i64.store (i32.const 64) (i64.add (call $load) (i64.const 1)))
    (call $put (i32.const 0) (i32.const 5) (i32.const 64) (i32.const 8))
    (call $emit (i32.const 16) (i32.const 4) (i32.const 64) (i32.const 8)))
  (func (export "read")
    (i64.store (i32.const 64) (call $load))
    (call $output (i32.const 64) (i32.const 8)))
  (func (export "paid")
    (i64.store (i32.const 64) (call $value))
    (call $output (i32.const 64) (i32.const 8)))
  (func (export "bump_then_revert")
    (i64.store (i32.const 64) (i64.const 999))
    (call $put (i32.const 0) (i32.const 5) (i32.const 64) (i32.const 8))
    (call $emit (i32.const 16) (i32.const 4) (i32.const 64) (i32.const 8))
    (call $revert (i32.const 32) (i32.const 2)))
  (func (export "spin") (loop $l (br $l)))
  (func (export "bomb") (local $i i32)
    (loop $l
      (i32.store (i32.const 128) (local.get $i))
      (call $put (i32.const 128) (i32.const 4) (i32.const 256) (i32.const 1000))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l)))
  (func (export "nan")
    (f64.store (i32.const 64)
      (f64.mul (f64.div (f64.const 0) (f64.const 0)) (f64.sqrt (f64.const -1))))
    (call $output (i32.const 64) (i32.const 8)))
)
"#;

/// Calls another contract's `increment`, itself (reentrancy), and pays back.
const CALLER: &str = r#"
(module
  (import "agora" "input" (func $input (param i32 i32) (result i32)))
  (import "agora" "call" (func $call (param i32 i32 i32 i32 i32 i64) (result i32)))
  (import "agora" "output" (func $output (param i32 i32)))
  (import "agora" "return_data" (func $rd (param i32 i32) (result i32)))
  (import "agora" "address" (func $address (param i32)))
  (import "agora" "caller" (func $caller (param i32)))
  (import "agora" "transfer" (func $transfer (param i32 i64) (result i32)))
  (import "agora" "balance" (func $balance (result i64)))
  (memory (export "memory") 1)
  (data (i32.const 100) "increment")
  (data (i32.const 120) "again")
  ;; input: a 32-byte contract address; calls its increment; outputs the status byte
  (func (export "forward")
    (drop (call $input (i32.const 0) (i32.const 32)))
    (i32.store8 (i32.const 200)
      (call $call (i32.const 0) (i32.const 100) (i32.const 9) (i32.const 0) (i32.const 0) (i64.const 0)))
    (call $output (i32.const 200) (i32.const 1)))
  ;; calls itself: refused (reentrancy); outputs status ‖ the failure message
  (func (export "again")
    (call $address (i32.const 0))
    (i32.store8 (i32.const 300)
      (call $call (i32.const 0) (i32.const 120) (i32.const 5) (i32.const 0) (i32.const 0) (i64.const 0)))
    (call $output (i32.const 300)
      (i32.add (i32.const 1) (call $rd (i32.const 301) (i32.const 100)))))
  ;; pays 40 of what it holds back to its caller; outputs the status and the balance left
  (func (export "refund")
    (call $caller (i32.const 0))
    (i32.store8 (i32.const 400) (call $transfer (i32.const 0) (i64.const 40)))
    (i64.store (i32.const 401) (call $balance))
    (call $output (i32.const 400) (i32.const 9)))
)
"#;

fn deploy(st: &mut State, twin: &mut State, from: u8, wat: &str) -> Account {
    let code = wat::parse_str(wat).unwrap();
    let seq = st.account(&account(from)).seq;
    let t = tx(
        st,
        from,
        C::Deploy {
            code,
            init: Vec::new(),
            gas: GAS,
        },
    );
    let o = apply(st, twin, &t).unwrap();
    assert_eq!(o.error, None, "{o:?}");
    assert_eq!(o.contract, contract_address(&account(from), seq));
    o.contract
}

fn call(contract: Account, method: &str, value: u64, gas: u64) -> C {
    C::Call {
        contract,
        method: method.into(),
        input: Vec::new(),
        value,
        gas,
    }
}

fn u64_of(out: &[u8]) -> u64 {
    u64::from_le_bytes(out[..8].try_into().unwrap())
}

#[test]
fn a_counter_is_deployed_called_and_queried_and_replicas_agree() {
    let (mut st, mut twin) = (state(), state());
    let c = deploy(&mut st, &mut twin, 0, COUNTER);
    // init ran: 10.
    assert_eq!(u64_of(&st.query(&c, "read", &[], GAS).output), 10);
    for _ in 0..3 {
        let t = tx(&st, 1, call(c, "increment", 0, GAS));
        let o = apply(&mut st, &mut twin, &t).unwrap();
        assert_eq!(o.error, None);
        assert_eq!(o.events.len(), 1);
        assert_eq!(o.events[0].topic, b"bump");
        assert!(o.gas_used > 0);
    }
    let q = st.query(&c, "read", &[], GAS);
    assert_eq!(u64_of(&q.output), 13);
    // A query writes nothing.
    let before = st.root();
    let q = st.query(&c, "increment", &[], GAS);
    assert_eq!(q.error, None);
    assert_eq!(st.root(), before);
    assert_eq!(u64_of(&st.query(&c, "read", &[], GAS).output), 13);
    // The fee is the minimum plus the gas used, never the whole limit.
    let bal = st.account(&account(1)).balance;
    let t = tx(&st, 1, call(c, "increment", 0, GAS));
    let o = apply(&mut st, &mut twin, &t).unwrap();
    let paid = bal - st.account(&account(1)).balance;
    assert_eq!(paid, fee_for(FEE, o.gas_used));
    assert!(paid < fee_for(FEE, GAS));
    // Unknown method: fails, fee charged, nothing else.
    let t = tx(&st, 1, call(c, "nope", 0, GAS));
    let o = apply(&mut st, &mut twin, &t).unwrap();
    assert!(o.error.unwrap().contains("no method"));
}

#[test]
fn failures_pay_their_fee_and_change_nothing_else() {
    let (mut st, mut twin) = (state(), state());
    let c = deploy(&mut st, &mut twin, 0, COUNTER);
    let contracts = st.contracts.clone();
    for (method, cause) in [
        ("spin", "out of gas"),
        ("bomb", "out of gas"),
        ("bump_then_revert", "reverted: no"),
    ] {
        let bal = st.account(&account(2)).balance;
        let t = tx(&st, 2, call(c, method, 0, 500_000));
        let o = apply(&mut st, &mut twin, &t).unwrap();
        assert_eq!(o.error.as_deref(), Some(cause), "{method}");
        assert!(o.events.is_empty());
        assert_eq!(
            st.contracts, contracts,
            "{method} changed the contract's state"
        );
        let paid = bal - st.account(&account(2)).balance;
        assert_eq!(paid, fee_for(FEE, o.gas_used), "{method}");
        if cause == "out of gas" {
            assert_eq!(o.gas_used, 500_000);
        }
    }
}

#[test]
fn bad_modules_and_bad_fees_are_refused_before_inclusion() {
    let st = state();
    let refused = |action: C| {
        let t = tx(&st, 0, action);
        st.clone().apply(&t, false)
    };
    let unknown =
        wat::parse_str(r#"(module (import "agora" "steal" (func)) (memory (export "memory") 1))"#)
            .unwrap();
    let wasi = wat::parse_str(
        r#"(module (import "wasi_snapshot_preview1" "fd_write" (func)) (memory (export "memory") 1))"#,
    )
    .unwrap();
    let start =
        wat::parse_str(r#"(module (memory (export "memory") 1) (func $s) (start $s))"#).unwrap();
    for code in [unknown, wasi, start, b"\0asm garbage".to_vec(), Vec::new()] {
        assert!(matches!(
            refused(C::Deploy {
                code,
                init: Vec::new(),
                gas: GAS
            }),
            Err(TxError::Contract(_))
        ),);
    }
    // `init` runs only at deploy.
    assert!(matches!(
        refused(call(account(1), "init", 0, GAS)),
        Err(TxError::Contract(_))
    ));
    // A fee below the gas limit's cost.
    let a = account(0);
    let t = Tx::Account(
        AccountTx {
            from: a,
            seq: 0,
            fee: FEE,
            action: Action::Contract(call(a, "x", 0, GAS)),
        }
        .sign(&key(0), &st.chain),
    );
    assert!(matches!(
        st.clone().apply(&t, false),
        Err(TxError::Contract(_))
    ));
}

#[test]
fn nested_calls_reentrancy_value_and_nan() {
    let (mut st, mut twin) = (state(), state());
    let counter = deploy(&mut st, &mut twin, 0, COUNTER);
    let caller = deploy(&mut st, &mut twin, 0, CALLER);
    // caller.forward(counter) increments the counter, as the caller contract.
    let t = tx(
        &st,
        1,
        C::Call {
            contract: caller,
            method: "forward".into(),
            input: counter.0.to_vec(),
            value: 0,
            gas: GAS,
        },
    );
    let o = apply(&mut st, &mut twin, &t).unwrap();
    assert_eq!(o.error, None);
    assert_eq!(o.output, vec![0]);
    assert_eq!(o.events.len(), 1, "the nested call's event");
    assert_eq!(o.events[0].contract, counter);
    assert_eq!(u64_of(&st.query(&counter, "read", &[], GAS).output), 11);
    // Calling itself: refused by the reentrancy rule, the caller goes on.
    let t = tx(&st, 1, call(caller, "again", 0, GAS));
    let o = apply(&mut st, &mut twin, &t).unwrap();
    assert_eq!(o.error, None);
    assert_eq!(o.output[0], 1);
    assert!(String::from_utf8_lossy(&o.output[1..]).contains("reentrancy"));
    // Value: 100 sent with a call lands on the contract, which pays 40 back.
    let t = tx(&st, 2, call(caller, "refund", 100, GAS));
    let bal = st.account(&account(2)).balance;
    let o = apply(&mut st, &mut twin, &t).unwrap();
    assert_eq!(o.error, None);
    assert_eq!(o.output[0], 0);
    assert_eq!(u64_of(&o.output[1..]), 60);
    assert_eq!(st.account(&caller).balance, 60);
    assert_eq!(
        bal - st.account(&account(2)).balance,
        60 + fee_for(FEE, o.gas_used)
    );
    // More value than the sender has: refused before inclusion.
    let t = tx(&st, 3, call(counter, "paid", 2_000_000_000, GAS));
    assert!(matches!(
        st.clone().apply(&t, false),
        Err(TxError::InsufficientFunds { .. })
    ));
    // NaN: canonical bits, whatever the CPU.
    let q = st.query(&counter, "nan", &[], GAS);
    assert_eq!(u64_of(&q.output), 0x7ff8_0000_0000_0000);
}
