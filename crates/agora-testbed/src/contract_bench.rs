//! The contracts' benchmark, all figures from one run, with the example token
//! (`examples/contracts/token.c`, built with clang by `examples/contracts/build.sh`).
//!
//! - **Gas calibration**: gas per millisecond of CPU on this machine, for a pure-wasm loop
//!   (fuel alone) and for token transfers (host calls and storage): the measurement behind the
//!   published gas table.
//! - **Per-call cost**: a call instantiates the cached module afresh; the time of a trivial
//!   query (`supply`), p50 and p99 — cold instantiation with the cache.
//! - **Native vs engine**: the token's transfer written in Rust over a `BTreeMap` against the
//!   same transfer through the engine (signed transactions applied to the state machine).
//! - **Through consensus**: four validators on loopback; 200 holders each send token transfers,
//!   all signed beforehand, in batches; calls final per second on validator 0, and payment
//!   finality measured meanwhile (like the market bench).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agora_ledger::contract::{ContractAction as C, fee_for};
use agora_ledger::{Account, AccountTx, Action, Effect, Genesis, State, Tx};
use anyhow::{Context, Result, bail, ensure};
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};

use crate::ledger_bench::{VALIDATORS, Validator, bench_key, new_agent, pct};
use crate::load;

/// Token-transfer calls per second in the paced phase: the issue's target rate.
const PACED_RATE: f64 = 2_000.0;

const GAS: u64 = 5_000_000;

fn key(i: usize) -> SigningKey {
    bench_key(2_000_000 + i)
}

fn account(k: &SigningKey) -> Account {
    Account::from_key(&k.verifying_key())
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Builds the example contracts into `out`; returns the token's bytes.
pub fn build_token(repo: &Path, out: &Path) -> Result<Vec<u8>> {
    let script = repo.join("examples/contracts/build.sh");
    let o = std::process::Command::new("bash")
        .arg(&script)
        .arg(out)
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !o.status.success() {
        bail!(
            "building the example contracts failed (they need clang and lld): {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(std::fs::read(out.join("token.wasm"))?)
}

fn sign(k: &SigningKey, seq: u64, min_fee: u64, action: C, chain: &agora_ledger::Hash) -> Tx {
    Tx::Account(
        AccountTx {
            from: account(k),
            seq,
            fee: fee_for(min_fee, action.gas_limit()),
            action: Action::Contract(action),
        }
        .sign(k, chain),
    )
}

fn transfer(token: Account, to: &Account, amount: u64) -> C {
    let mut input = to.0.to_vec();
    input.extend_from_slice(&amount.to_le_bytes());
    C::Call {
        contract: token,
        method: "transfer".into(),
        input,
        value: 0,
        gas: 200_000,
    }
}

const SPIN: &str = r#"(module (memory (export "memory") 1)
  (func (export "spin") (local $i i64)
    (loop $l (local.set $i (i64.add (local.get $i) (i64.const 1))) (br $l))))"#;

/// The in-process parts.
pub fn in_process(token: &[u8], calls: usize) -> Result<Value> {
    let deployer = key(0);
    let holders: Vec<SigningKey> = (1..=100).map(key).collect();
    let mut balances = vec![(account(&deployer), 1_000_000_000_000u64)];
    balances.extend(holders.iter().map(|k| (account(k), 1_000_000_000_000)));
    let mut st = State::genesis(&Genesis {
        chain: "contract-bench".into(),
        validators: vec![account(&key(999))],
        balances,
        min_fee: 1,
        epoch_length: 1_000_000,
    });
    let chain = st.chain;
    let apply = |st: &mut State, tx: &Tx| -> Result<agora_ledger::contract::ContractOutcome> {
        match st.apply(tx, true) {
            Ok(Effect::Contract { outcome, .. }) => Ok(outcome),
            Ok(e) => bail!("unexpected effect {e:?}"),
            Err(e) => bail!("refused: {e}"),
        }
    };
    let deploy = |st: &mut State, code: Vec<u8>, init: Vec<u8>, seq: u64| {
        let o = apply(
            st,
            &sign(
                &deployer,
                seq,
                1,
                C::Deploy {
                    code,
                    init,
                    gas: GAS,
                },
                &chain,
            ),
        )?;
        ensure!(o.error.is_none(), "deploy failed: {:?}", o.error);
        Ok(o.contract)
    };
    let t = deploy(
        &mut st,
        token.to_vec(),
        1_000_000_000u64.to_le_bytes().to_vec(),
        0,
    )?;
    let spin = deploy(&mut st, wat::parse_str(SPIN)?, Vec::new(), 1)?;
    // Give every holder tokens.
    for (seq, h) in (2..).zip(holders.iter()) {
        let o = apply(
            &mut st,
            &sign(
                &deployer,
                seq,
                1,
                transfer(t, &account(h), 1_000_000),
                &chain,
            ),
        )?;
        ensure!(o.error.is_none(), "{:?}", o.error);
    }
    // Gas per ms: a pure loop, out of gas at 50 M.
    let spin_gas = 50_000_000;
    let tx = sign(
        &key(1),
        0,
        1,
        C::Call {
            contract: spin,
            method: "spin".into(),
            input: Vec::new(),
            value: 0,
            gas: spin_gas,
        },
        &chain,
    );
    let t0 = thread_cpu();
    let o = apply(&mut st, &tx)?;
    let spin_ms = (thread_cpu() - t0).as_secs_f64() * 1e3;
    ensure!(o.error.as_deref() == Some("out of gas"), "{:?}", o.error);
    // Token transfers through the engine, signatures counted as checked.
    let per = calls / holders.len();
    let base: Vec<u64> = holders
        .iter()
        .map(|h| st.account(&account(h)).seq)
        .collect();
    let mut txs = Vec::with_capacity(calls);
    for round in 0..per {
        for (i, h) in holders.iter().enumerate() {
            let to = account(&holders[(i + 1 + round) % holders.len()]);
            txs.push(sign(
                h,
                base[i] + round as u64,
                1,
                transfer(t, &to, 1),
                &chain,
            ));
        }
    }
    let mut gas = 0;
    let t0 = thread_cpu();
    for tx in &txs {
        let o = apply(&mut st, tx)?;
        ensure!(o.error.is_none(), "{:?}", o.error);
        gas += o.gas_used;
    }
    let engine_s = (thread_cpu() - t0).as_secs_f64();
    // The same transfers natively.
    let mut native: BTreeMap<[u8; 32], u64> =
        holders.iter().map(|h| (account(h).0, 1_000_000)).collect();
    let t0 = thread_cpu();
    for round in 0..per {
        for (i, h) in holders.iter().enumerate() {
            let from = account(h).0;
            let to = account(&holders[(i + 1 + round) % holders.len()]).0;
            let have = native[&from];
            ensure!(have >= 1, "native: insufficient");
            native.insert(from, have - 1);
            *native.entry(to).or_default() += 1;
        }
    }
    let native_s = (thread_cpu() - t0).as_secs_f64().max(1e-9);
    // Per-call cost of a trivial query.
    let mut q = Vec::with_capacity(1_000);
    for _ in 0..1_000 {
        let t0 = thread_cpu();
        let o = st.query(&t, "supply", &[], GAS);
        q.push((thread_cpu() - t0).as_secs_f64() * 1e3);
        ensure!(o.error.is_none(), "{:?}", o.error);
    }
    q.sort_by(f64::total_cmp);
    let calls_per_s = txs.len() as f64 / engine_s;
    Ok(json!({
        "gas_per_ms_wasm_loop": spin_gas as f64 / spin_ms,
        "gas_per_ms_token_transfer": gas as f64 / (engine_s * 1e3),
        "gas_per_transfer": gas / txs.len() as u64,
        "transfers": txs.len(),
        "engine_calls_per_s": calls_per_s,
        "native_transfers_per_s": txs.len() as f64 / native_s,
        "engine_vs_native": (txs.len() as f64 / native_s) / calls_per_s,
        "query_p50_ms": pct(&q, 50.0),
        "query_p99_ms": pct(&q, 99.0),
        "target_instantiation_p99_ms": 1,
    }))
}

pub struct Options {
    pub agora: PathBuf,
    pub repo: PathBuf,
    pub quick: bool,
}

pub fn run(opts: &Options) -> Result<Value> {
    let build = tempfile::tempdir()?;
    let token = build_token(&opts.repo, build.path())?;
    eprintln!("contract bench: in process");
    let local = in_process(&token, if opts.quick { 2_000 } else { 20_000 })?;
    let root = std::env::temp_dir().join(format!("agora-contract-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let consensus = consensus_in(opts, &root, &token);
    let _ = std::fs::remove_dir_all(&root);
    Ok(json!({"engine": local, "consensus": consensus?}))
}

fn consensus_in(opts: &Options, root: &Path, token: &[u8]) -> Result<Value> {
    let (holders_n, rounds) = if opts.quick { (50, 10) } else { (200, 50) };
    let deployer = key(0);
    let holders: Vec<SigningKey> = (1..=holders_n).map(key).collect();
    let payee = key(100_000);
    let funded = std::iter::once(&deployer)
        .chain(&holders)
        .chain(std::iter::once(&payee))
        .map(account);
    let (nodes, genesis) = load::devnet(&opts.agora, root, "contract-bench", funded)?;
    let chain = genesis.chain_id();
    let agent = new_agent();
    let status = |v: &Validator| v.call(&agent, "GET", "/v1/ledger/status", None);
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(&nodes[0]).map_or(0, |v| v["height"].as_u64().unwrap_or(0)) < 3 {
        ensure!(Instant::now() < deadline, "no blocks within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Spread over the validators by position (each holder's transactions stay on one
    // validator, as the holders repeat in a multiple of 4), or all to validator 0.
    let spread = |i: usize| i;
    let first = |_: usize| 0;
    // Setup: the token, then tokens for every holder (the holders are numbered so that
    // every holder's transactions go to one validator).
    let deploy = sign(
        &deployer,
        0,
        1,
        C::Deploy {
            code: token.to_vec(),
            init: 1_000_000_000u64.to_le_bytes().to_vec(),
            gas: GAS,
        },
        &chain,
    );
    let t = agora_ledger::contract::contract_address(&account(&deployer), 0);
    let r = load::submit_all(&nodes, &[deploy], first, None)?.rejected;
    ensure!(r == 0, "the deploy was rejected");
    let setup: Vec<Tx> = holders
        .iter()
        .enumerate()
        .map(|(i, h)| {
            sign(
                &deployer,
                1 + i as u64,
                1,
                transfer(t, &account(h), 1_000_000),
                &chain,
            )
        })
        .chain(std::iter::once(sign(
            &deployer,
            1 + holders.len() as u64,
            1,
            transfer(t, &genesis.validators[0], 1_000_000),
            &chain,
        )))
        .collect();
    let r = load::submit_all(&nodes, &setup, first, None)?.rejected;
    ensure!(r == 0, "{r} setup transfers rejected");
    let mut calls = Vec::new();
    for round in 0..3 * rounds {
        for (i, h) in holders.iter().enumerate() {
            let to = account(&holders[(i + 1 + round) % holders.len()]);
            calls.push(sign(h, round as u64, 1, transfer(t, &to, 1), &chain));
        }
    }
    // A third as fast as taken, the rest paced at the target rate.
    let paced = calls.split_off(calls.len() / 3);
    let payee_text = account(&payee).to_string();
    eprintln!(
        "contract bench: {} token transfers through consensus as fast as taken",
        calls.len()
    );
    let (max, finality) = load::timed_during(
        |agent| load::pay_once(&nodes[0], agent, &payee_text),
        || load::submit_all(&nodes, &calls, spread, None),
    )?;
    let (rejected, secs) = (max.rejected, max.final_s);
    let rate = (calls.len() - rejected) as f64 / secs;
    // Paced: token transfers called through validator 0's API (its own account holds
    // tokens), each timed from submission to finality by the node.
    eprintln!(
        "contract bench: {} token transfers at {PACED_RATE}/s, calls timed meanwhile",
        paced.len()
    );
    let call_path = format!("/v1/ledger/contracts/{t}/call");
    let mut args = account(&payee).0.to_vec();
    args.extend_from_slice(&1u64.to_le_bytes());
    let call_body = json!({"method": "transfer", "args_hex": hex::encode(&args), "gas": 200_000});
    let (paced_done, call_finality) = load::timed_during(
        |agent| {
            let v = nodes[0].call(agent, "POST", &call_path, Some(&call_body))?;
            ensure!(v["status"] == "ok", "the timed call failed: {v}");
            Ok(v["finality_ms"].as_f64())
        },
        || load::submit_all(&nodes, &paced, spread, Some(PACED_RATE)),
    )?;
    let (paced_rejected, paced_secs) = (paced_done.rejected, paced_done.final_s);
    let paced_rate = (paced.len() - paced_rejected) as f64 / paced_secs;
    let call_p50 = pct(&call_finality, 50.0);
    Ok(json!({
        "validators": VALIDATORS,
        "paced": {
            "calls": paced.len(),
            "offered_per_s": PACED_RATE,
            "rejected": paced_rejected,
            "calls_per_s": paced_rate,
            "calls_timed": call_finality.len(),
            "call_finality_p50_ms": call_p50,
            "call_finality_p99_ms": pct(&call_finality, 99.0),
            "target_finality_p50_ms": 100,
            "met": paced_rate >= 0.95 * PACED_RATE && call_p50 <= 100.0,
        },
        "calls": calls.len(),
        "rejected": rejected,
        "seconds": secs,
        "calls_per_s": rate,
        "target_calls_per_s": 2_000,
        "payments_timed": finality.len(),
        "payment_finality_p50_ms": pct(&finality, 50.0),
        "payment_finality_p99_ms": pct(&finality, 99.0),
    }))
}
