//! Load for the ledger's consensus benches (market, contracts): pre-signed transactions
//! submitted to the validators, paced or as fast as they are taken, and a client timed
//! meanwhile.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use std::path::Path;

use agora_ledger::state::Genesis;
use agora_ledger::{Account, Tx};
use anyhow::{Result, ensure};
use serde_json::json;

use crate::ledger_bench::{VALIDATORS, Validator, new_agent, start};

/// Transactions final on `node` so far (its `applied_txs`).
pub(crate) fn applied(node: &Validator, agent: &ureq::Agent) -> Result<u64> {
    Ok(
        node.call(agent, "GET", "/v1/ledger/status", None)?["applied_txs"]
            .as_u64()
            .unwrap_or(0),
    )
}

/// Submits `txs` through `/v1/ledger/submit`, the i-th to validator `route(i)`, one thread
/// per validator. With a `rate` (transactions per second in all) each validator gets its
/// share in batches every 100 ms; without, batches of 500 as fast as they are taken. Waits
/// until all admitted ones are final on validator 0.
pub(crate) fn submit_all(
    nodes: &[Validator],
    txs: &[Tx],
    route: impl Fn(usize) -> usize,
    rate: Option<f64>,
) -> Result<Submitted> {
    let agent = new_agent();
    let before = applied(&nodes[0], &agent)?;
    let mut per: Vec<Vec<String>> = vec![Vec::new(); VALIDATORS];
    for (i, tx) in txs.iter().enumerate() {
        per[route(i) % VALIDATORS].push(hex::encode(tx.encode()));
    }
    let chunk = rate.map_or(500, |r| ((r / 10.0 / VALIDATORS as f64) as usize).max(1));
    let t0 = Instant::now();
    let rejected = std::thread::scope(|s| -> Result<usize> {
        let handles: Vec<_> = nodes
            .iter()
            .zip(&per)
            .map(|(node, txs)| {
                s.spawn(move || -> Result<usize> {
                    let agent = new_agent();
                    let mut rejected = 0;
                    for (n, batch) in txs.chunks(chunk).enumerate() {
                        if rate.is_some() {
                            let due = t0 + Duration::from_millis(100 * n as u64);
                            std::thread::sleep(due.saturating_duration_since(Instant::now()));
                        }
                        let v = node.call(
                            &agent,
                            "POST",
                            "/v1/ledger/submit",
                            Some(&json!({ "txs": batch })),
                        )?;
                        rejected += v["rejected"].as_array().map_or(0, Vec::len);
                    }
                    Ok(rejected)
                })
            })
            .collect();
        let mut sum = 0;
        for handle in handles {
            sum += handle.join().expect("submitter")?;
        }
        Ok(sum)
    })?;
    let submit_s = t0.elapsed().as_secs_f64();
    let expected = (txs.len() - rejected) as u64;
    let deadline = Instant::now() + Duration::from_secs(300);
    while applied(&nodes[0], &agent)? - before < expected {
        ensure!(
            Instant::now() < deadline,
            "transactions not final after 300 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(Submitted {
        rejected,
        submit_s,
        final_s: t0.elapsed().as_secs_f64(),
    })
}

/// What [`submit_all`] did.
pub(crate) struct Submitted {
    /// Transactions the validators refused at admission.
    pub rejected: usize,
    /// Seconds until the last submission was answered.
    pub submit_s: f64,
    /// Seconds from the first submission until every admitted one was final.
    pub final_s: f64,
}

/// Runs `load` while a client calls `timed` one call after another (at most 2,000 calls);
/// each call returns the finality it measured, in ms. Returns the load's result and the
/// sorted finality times.
pub(crate) fn timed_during<T>(
    mut timed: impl FnMut(&ureq::Agent) -> Result<Option<f64>> + Send,
    load: impl FnOnce() -> Result<T>,
) -> Result<(T, Vec<f64>)> {
    let stop = AtomicBool::new(false);
    let (result, times) = std::thread::scope(|s| {
        let timer = s.spawn(|| -> Result<Vec<f64>> {
            let agent = new_agent();
            let mut ms = Vec::new();
            while !stop.load(Ordering::Relaxed) && ms.len() < 2_000 {
                if let Some(f) = timed(&agent)? {
                    ms.push(f);
                }
            }
            Ok(ms)
        });
        let result = load();
        stop.store(true, Ordering::Relaxed);
        (result, timer.join().expect("timed client"))
    });
    let mut times = times?;
    times.sort_by(f64::total_cmp);
    Ok((result?, times))
}

/// One payment of 1 base unit from `node`'s own account to `to`, timed by the node (submit
/// to final).
pub(crate) fn pay_once(node: &Validator, agent: &ureq::Agent, to: &str) -> Result<Option<f64>> {
    let v = node.call(
        agent,
        "POST",
        "/v1/ledger/pay",
        Some(&json!({"to": to, "amount": 1})),
    )?;
    Ok(v["finality_ms"].as_f64())
}

/// Four validators under `root` (`v0`…`v3`) on a new chain `chain`, the validators and every
/// account of `funded` holding 10¹² base units each: writes the genesis and starts the
/// validators (the others bootstrap from the first). Returns them and the genesis.
pub(crate) fn devnet(
    agora: &Path,
    root: &Path,
    chain: &str,
    funded: impl IntoIterator<Item = Account>,
) -> Result<(Vec<Validator>, Genesis)> {
    let dirs: Vec<std::path::PathBuf> = (0..VALIDATORS)
        .map(|i| root.join(format!("v{i}")))
        .collect();
    let validators: Vec<Account> = dirs
        .iter()
        .map(|d| Ok(agora_ledger::service::identity_in(d)?.0))
        .collect::<Result<_>>()?;
    let balances = validators
        .iter()
        .copied()
        .chain(funded)
        .map(|a| (a, 1_000_000_000_000))
        .collect();
    let genesis = Genesis {
        chain: chain.into(),
        validators,
        balances,
        min_fee: 1,
        epoch_length: 1_000_000_000,
    };
    let gpath = root.join("genesis.json");
    std::fs::write(&gpath, serde_json::to_vec(&genesis)?)?;
    eprintln!("{chain}: starting {VALIDATORS} validators");
    let mut nodes = vec![start(agora, &dirs[0], &gpath, None)?];
    for dir in &dirs[1..] {
        let boot = nodes[0].tcp.clone();
        nodes.push(start(agora, dir, &gpath, Some(&boot))?);
    }
    Ok((nodes, genesis))
}
