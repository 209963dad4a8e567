//! The example contracts of `examples/contracts` (C, built here with Debian's clang against
//! `sdk/c/agora_contract.h`), run through the state machine: a token with allowances, an escrow
//! released by its arbiter or refunded after its deadline, a name registry.

use std::path::{Path, PathBuf};
use std::process::Command;

use agora_ledger::contract::{ContractAction as C, ContractOutcome, fee_for};
use agora_ledger::{Account, AccountTx, Action, Effect, Genesis, State, Tx};
use ed25519_dalek::SigningKey;

const GAS: u64 = 5_000_000;

fn key(i: u8) -> SigningKey {
    SigningKey::from_bytes(&[i.wrapping_add(120); 32])
}

fn account(i: u8) -> Account {
    Account::from_key(&key(i).verifying_key())
}

/// Builds the examples (CI installs clang and lld).
fn build() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/contracts/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(dir.path())
        .output()
        .expect("run build.sh");
    assert!(
        out.status.success(),
        "building the example contracts failed (they need clang and lld):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.path().to_owned();
    (dir, path)
}

fn state() -> State {
    State::genesis(&Genesis {
        chain: "examples".into(),
        validators: vec![account(60)],
        balances: (0..5).map(|i| (account(i), 1_000_000_000)).collect(),
        min_fee: 10,
        epoch_length: 1_000,
    })
}

fn run(st: &mut State, from: u8, action: C) -> ContractOutcome {
    let a = account(from);
    let tx = Tx::Account(
        AccountTx {
            from: a,
            seq: st.account(&a).seq,
            fee: fee_for(st.min_fee, action.gas_limit()),
            action: Action::Contract(action),
        }
        .sign(&key(from), &st.chain),
    );
    match st.apply(&tx, false).expect("included") {
        Effect::Contract { outcome, .. } => outcome,
        e => panic!("{e:?}"),
    }
}

fn deploy(st: &mut State, dir: &Path, name: &str, from: u8, init: Vec<u8>) -> Account {
    let code = std::fs::read(dir.join(format!("{name}.wasm"))).unwrap();
    let o = run(
        st,
        from,
        C::Deploy {
            code,
            init,
            gas: GAS,
        },
    );
    assert_eq!(o.error, None, "{name}: {o:?}");
    o.contract
}

fn call(
    st: &mut State,
    from: u8,
    c: Account,
    method: &str,
    input: Vec<u8>,
    value: u64,
) -> ContractOutcome {
    run(
        st,
        from,
        C::Call {
            contract: c,
            method: method.into(),
            input,
            value,
            gas: GAS,
        },
    )
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn amount(v: u64) -> [u8; 8] {
    v.to_le_bytes()
}

fn u64_of(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().unwrap())
}

#[test]
fn the_token_moves_balances_and_allowances() {
    let (_keep, dir) = build();
    let mut st = state();
    let t = deploy(&mut st, &dir, "token", 0, amount(1_000).to_vec());
    let bal = |st: &State, i: u8| u64_of(&st.query(&t, "balance_of", &account(i).0, GAS).output);
    assert_eq!(bal(&st, 0), 1_000);
    assert_eq!(u64_of(&st.query(&t, "supply", &[], GAS).output), 1_000);
    let o = call(
        &mut st,
        0,
        t,
        "transfer",
        cat(&[&account(1).0, &amount(300)]),
        0,
    );
    assert_eq!(o.error, None);
    assert_eq!(o.events.len(), 1);
    assert_eq!(o.events[0].topic, b"transfer");
    assert_eq!((bal(&st, 0), bal(&st, 1)), (700, 300));
    // Too much: reverted, nothing moved.
    let o = call(
        &mut st,
        1,
        t,
        "transfer",
        cat(&[&account(2).0, &amount(301)]),
        0,
    );
    assert_eq!(o.error.as_deref(), Some("reverted: insufficient balance"));
    assert_eq!((bal(&st, 1), bal(&st, 2)), (300, 0));
    // Allowance: 1 lets 2 spend 100 of its tokens.
    call(
        &mut st,
        1,
        t,
        "approve",
        cat(&[&account(2).0, &amount(100)]),
        0,
    );
    let o = call(
        &mut st,
        2,
        t,
        "transfer_from",
        cat(&[&account(1).0, &account(3).0, &amount(60)]),
        0,
    );
    assert_eq!(o.error, None);
    assert_eq!((bal(&st, 1), bal(&st, 3)), (240, 60));
    let left = st.query(&t, "allowance", &cat(&[&account(1).0, &account(2).0]), GAS);
    assert_eq!(u64_of(&left.output), 40);
    let o = call(
        &mut st,
        2,
        t,
        "transfer_from",
        cat(&[&account(1).0, &account(3).0, &amount(41)]),
        0,
    );
    assert_eq!(o.error.as_deref(), Some("reverted: allowance exceeded"));
    let o = call(&mut st, 0, t, "transfer", vec![1, 2, 3], 0);
    assert_eq!(o.error.as_deref(), Some("reverted: bad input length"));
}

#[test]
fn the_escrow_is_released_by_its_arbiter_or_refunded_after_the_deadline() {
    let (_keep, dir) = build();
    let mut st = state();
    let (arbiter, beneficiary, depositor) = (account(1), account(2), 3u8);
    let init = |deadline: u64| cat(&[&arbiter.0, &beneficiary.0, &amount(deadline)]);
    let e = deploy(&mut st, &dir, "escrow", 0, init(100));
    let o = call(&mut st, depositor, e, "deposit", Vec::new(), 5_000);
    assert_eq!(o.error, None);
    assert_eq!(st.account(&e).balance, 5_000);
    // Not the arbiter: refused; the arbiter: paid to the beneficiary.
    let o = call(&mut st, 4, e, "release", Vec::new(), 0);
    assert_eq!(
        o.error.as_deref(),
        Some("reverted: only the arbiter releases")
    );
    let before = st.account(&beneficiary).balance;
    let o = call(&mut st, 1, e, "release", Vec::new(), 0);
    assert_eq!(o.error, None);
    assert_eq!(o.events[0].topic, b"released");
    assert_eq!(st.account(&beneficiary).balance, before + 5_000);
    assert_eq!(st.account(&e).balance, 0);
    // A second escrow with a deadline at height 3: no refund before, a refund after.
    let e2 = deploy(&mut st, &dir, "escrow", 0, init(3));
    call(&mut st, depositor, e2, "deposit", Vec::new(), 700);
    let o = call(&mut st, depositor, e2, "refund", Vec::new(), 0);
    assert_eq!(
        o.error.as_deref(),
        Some("reverted: too early: before the deadline")
    );
    for h in 1..=3 {
        st.finish_block(h);
    }
    let before = st.account(&account(depositor)).balance;
    let o = call(&mut st, depositor, e2, "refund", Vec::new(), 0);
    assert_eq!(o.error, None, "{o:?}");
    let fee = before + 700 - st.account(&account(depositor)).balance;
    assert_eq!(fee, fee_for(st.min_fee, o.gas_used));
    let status = st.query(&e2, "status", &[], GAS).output;
    assert_eq!(
        (u64_of(&status), u64_of(&status[8..]), status[16]),
        (0, 3, 1)
    );
}

#[test]
fn the_registry_keeps_the_first_owner_of_a_name() {
    let (_keep, dir) = build();
    let mut st = state();
    let r = deploy(&mut st, &dir, "registry", 0, Vec::new());
    assert_eq!(
        call(&mut st, 1, r, "register", b"alice".to_vec(), 0).error,
        None
    );
    let o = call(&mut st, 2, r, "register", b"alice".to_vec(), 0);
    assert_eq!(o.error.as_deref(), Some("reverted: taken"));
    assert_eq!(st.query(&r, "lookup", b"alice", GAS).output, account(1).0);
    let o = call(&mut st, 2, r, "give", cat(&[&account(2).0, b"alice"]), 0);
    assert_eq!(
        o.error.as_deref(),
        Some("reverted: only the owner gives a name")
    );
    assert_eq!(
        call(&mut st, 1, r, "give", cat(&[&account(2).0, b"alice"]), 0).error,
        None
    );
    assert_eq!(st.query(&r, "lookup", b"alice", GAS).output, account(2).0);
    let q = st.query(&r, "lookup", b"bob", GAS);
    assert_eq!(q.error.as_deref(), Some("reverted: unknown name"));
}
