//! The currency market's benchmark, all figures from one run.
//!
//! - **Matching alone**: the state machine on one core, in this process. Makers rest offers
//!   selling USD for AGR; takers' offers each cross several of them. Every transaction is
//!   signed before the clock starts and applied with its signature counted as checked, so the
//!   figure is the matching engine's (book lookups, fills, balance moves, the undo log and the
//!   invariant checks). Reported as matched offers (fills) per second of CPU, beside plain AGR
//!   transfers through the same `State::apply` — the state machine's own limit on this core.
//! - **Path finding**: books of 1,000 resting offers each (USD/AGR, AGR/EUR, a worse direct
//!   USD/EUR, and USD/GBP, GBP/EUR through a third currency), then cross-currency payments of
//!   1 EUR paid in USD, each timed alone (path search over every candidate path, then the
//!   fills): p50 and p99.
//! - **Through consensus**: four validators (real `agora up --validator` processes) on
//!   loopback. Makers and takers submit offers, all signed before the clock starts, in batches
//!   to the four validators; the rate is offer transactions final per second on validator 0.
//!   Meanwhile one client pays AGR one payment after another on validator 0 and times each to
//!   finality.

use std::path::Path;
use std::time::{Duration, Instant};

use agora_ledger::amount::{Code, IOU_SCALE};
use agora_ledger::market::{MarketAction as M, OfferFlags};
use agora_ledger::{
    Account, AccountTx, Action, Amount, Effect, Genesis, Hash, Issue, Outcome, State, Tx,
};
use anyhow::{Result, bail, ensure};
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};

use crate::ledger_bench::{VALIDATORS, Validator, bench_key, new_agent, pct};
use crate::load;

fn key(i: usize) -> SigningKey {
    bench_key(1_000_000 + i)
}

fn account(k: &SigningKey) -> Account {
    Account::from_key(&k.verifying_key())
}

fn sign(k: &SigningKey, seq: u64, fee: u64, action: Action, chain: &Hash) -> Tx {
    Tx::Account(
        AccountTx {
            from: account(k),
            seq,
            fee,
            action,
        }
        .sign(k, chain),
    )
}

fn issue(code: &str, issuer: &SigningKey) -> Issue {
    Issue {
        code: Code::new(code).expect("a valid code"),
        issuer: account(issuer),
    }
}

fn units(i: Issue, u: u128) -> Amount {
    Amount::issued(i, u * IOU_SCALE)
}

/// Applies `tx` and insists that it was carried out (setup steps).
fn must(st: &mut State, tx: &Tx) -> Result<Effect> {
    let e = st
        .apply(tx, true)
        .map_err(|e| anyhow::anyhow!("setup transaction refused: {e}"))?;
    if let Effect::Market {
        outcome: Outcome::Failed { error },
        ..
    } = &e
    {
        bail!("setup transaction failed: {error}");
    }
    Ok(e)
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

/// A state whose accounts `keys` hold `agr` each; validator is a throwaway key.
fn genesis_state(keys: &[&SigningKey], agr: u64) -> State {
    State::genesis(&Genesis {
        chain: "market-bench".into(),
        validators: vec![account(&key(999_999))],
        balances: keys.iter().map(|k| (account(k), agr)).collect(),
        min_fee: 1,
        epoch_length: 1_000_000,
    })
}

/// Matching alone: returns the figures.
pub fn matching(makers: usize, offers_each: usize, takers: usize) -> Result<Value> {
    let issuer = key(0);
    let maker_keys: Vec<SigningKey> = (0..makers).map(|i| key(10 + i)).collect();
    let taker_keys: Vec<SigningKey> = (0..takers).map(|i| key(100_000 + i)).collect();
    let mut all: Vec<&SigningKey> = vec![&issuer];
    all.extend(maker_keys.iter());
    all.extend(taker_keys.iter());
    let mut st = genesis_state(&all, 1_000_000_000_000);
    let chain = st.chain;
    let usd = issue("USD", &issuer);
    // Makers trust and receive USD, then rest `offers_each` offers of 1 USD at rates spread
    // over 1000..1999 AGR per USD.
    for (seq_issuer, m) in maker_keys.iter().enumerate() {
        let trust = M::TrustSet {
            issue: usd,
            limit: 1_000_000 * IOU_SCALE,
        };
        must(&mut st, &sign(m, 0, 1, Action::Market(trust), &chain))?;
        let pay = M::Pay {
            to: account(m),
            deliver: units(usd, offers_each as u128 + 10),
            send_max: None,
            partial: false,
        };
        must(
            &mut st,
            &sign(&issuer, seq_issuer as u64, 1, Action::Market(pay), &chain),
        )?;
    }
    for t in &taker_keys {
        let trust = M::TrustSet {
            issue: usd,
            limit: 1_000_000 * IOU_SCALE,
        };
        must(&mut st, &sign(t, 0, 1, Action::Market(trust), &chain))?;
    }
    let mut placements = Vec::new();
    for j in 0..offers_each {
        for (i, m) in maker_keys.iter().enumerate() {
            let offer = M::OfferCreate {
                sell: units(usd, 1),
                buy: Amount::native(1000 + ((i * 7 + j * 13) % 1000) as u64),
                flags: OfferFlags::default(),
            };
            placements.push(sign(m, 1 + j as u64, 1, Action::Market(offer), &chain));
        }
    }
    let t0 = thread_cpu();
    for tx in &placements {
        must(&mut st, tx)?;
    }
    let place_cpu = thread_cpu() - t0;
    let resting = st.market.offers.len();
    // Takers: each buys `per_taker` USD paying up to 2000 AGR per USD: crosses that many offers.
    let per_taker = (makers * offers_each / takers).max(1) as u128;
    let crossings: Vec<Tx> = taker_keys
        .iter()
        .map(|t| {
            let offer = M::OfferCreate {
                sell: Amount::native(2000 * per_taker as u64),
                buy: units(usd, per_taker),
                flags: OfferFlags::default(),
            };
            sign(t, 1, 1, Action::Market(offer), &chain)
        })
        .collect();
    let mut fills = 0usize;
    let t0 = thread_cpu();
    for tx in &crossings {
        if let Effect::Market {
            outcome: Outcome::OfferPlaced { fills: f, .. },
            ..
        } = must(&mut st, tx)?
        {
            fills += f.len();
        }
    }
    let cross_cpu = thread_cpu() - t0;
    st.audit_market().map_err(|e| anyhow::anyhow!(e))?;
    ensure!(fills > 0, "no offer crossed");
    // The same state machine's plain transfers, for scale.
    let sink = account(&issuer);
    let transfers: Vec<Tx> = taker_keys
        .iter()
        .flat_map(|t| {
            (2..12).map(move |seq| {
                let to = Action::Transfer {
                    to: sink,
                    amount: 1,
                    memo: None,
                };
                sign(t, seq, 1, to, &chain)
            })
        })
        .collect();
    let t0 = thread_cpu();
    for tx in &transfers {
        must(&mut st, tx)?;
    }
    let transfer_cpu = thread_cpu() - t0;
    let fills_per_s = fills as f64 / cross_cpu.as_secs_f64();
    let transfers_per_s = transfers.len() as f64 / transfer_cpu.as_secs_f64();
    Ok(json!({
        "resting_offers": resting,
        "placed_per_s": placements.len() as f64 / place_cpu.as_secs_f64(),
        "crossing_txs": crossings.len(),
        "fills": fills,
        "matched_per_s": fills_per_s,
        "crossing_txs_per_s": crossings.len() as f64 / cross_cpu.as_secs_f64(),
        "transfers_per_s": transfers_per_s,
        "matched_vs_transfers": fills_per_s / transfers_per_s,
        "target_matched_per_s": 100_000,
        "met": fills_per_s >= 100_000.0,
    }))
}

/// Path finding: books of `depth` offers; `payments` cross-currency payments timed one by one.
pub fn path_finding(depth: usize, payments: usize) -> Result<Value> {
    let usd_issuer = key(0);
    let eur_issuer = key(1);
    let gbp_issuer = key(2);
    let makers: Vec<SigningKey> = (0..depth).map(|i| key(10 + i)).collect();
    let payers: Vec<SigningKey> = (0..payments.div_ceil(200))
        .map(|i| key(200_000 + i))
        .collect();
    let recipient = key(300_000);
    let mut all: Vec<&SigningKey> = vec![&usd_issuer, &eur_issuer, &gbp_issuer, &recipient];
    all.extend(makers.iter());
    all.extend(payers.iter());
    let mut st = genesis_state(&all, 1_000_000_000_000);
    let chain = st.chain;
    let (usd, eur, gbp) = (
        issue("USD", &usd_issuer),
        issue("EUR", &eur_issuer),
        issue("GBP", &gbp_issuer),
    );
    let trust = |st: &mut State, k: &SigningKey, seq: u64, i: Issue| {
        let a = M::TrustSet {
            issue: i,
            limit: 1_000_000_000 * IOU_SCALE,
        };
        must(st, &sign(k, seq, 1, Action::Market(a), &chain))
    };
    let mut issuer_seq = [0u64; 3];
    let mut fund = |st: &mut State, which: usize, to: &SigningKey, i: Issue, u: u128| {
        let issuer = [&usd_issuer, &eur_issuer, &gbp_issuer][which];
        let a = M::Pay {
            to: account(to),
            deliver: units(i, u),
            send_max: None,
            partial: false,
        };
        let r = must(
            st,
            &sign(issuer, issuer_seq[which], 1, Action::Market(a), &chain),
        );
        issuer_seq[which] += 1;
        r
    };
    for m in &makers {
        for (s, i) in [usd, eur, gbp].into_iter().enumerate() {
            trust(&mut st, m, s as u64, i)?;
        }
        fund(&mut st, 1, m, eur, 10_000)?;
        fund(&mut st, 2, m, gbp, 10_000)?;
    }
    trust(&mut st, &recipient, 0, eur)?;
    for p in &payers {
        trust(&mut st, p, 0, usd)?;
        fund(&mut st, 0, p, usd, 1_000_000)?;
    }
    // Each maker rests one offer in each book, rates spread so the books have depth.
    for (i, m) in makers.iter().enumerate() {
        let spread = (i % 100) as u128;
        let books = [
            // AGR for USD: 1,000 AGR per USD or a little more.
            (Amount::native(100_000), units(usd, 100), 1000 + spread),
            // EUR for AGR
            (units(eur, 100), Amount::native(100_000), 1000 + spread),
            // EUR for USD directly, worse
            (units(eur, 100), units(usd, 130), 0),
            // GBP for USD, EUR for GBP
            (units(gbp, 100), units(usd, 110), 0),
            (units(eur, 100), units(gbp, 110), 0),
        ];
        for (seq, (sell, buy, _)) in books.into_iter().enumerate() {
            let buy = Amount {
                value: buy.value + buy.value * spread / 1000,
                ..buy
            };
            let a = M::OfferCreate {
                sell,
                buy,
                flags: OfferFlags::default(),
            };
            must(
                &mut st,
                &sign(m, 3 + seq as u64, 1, Action::Market(a), &chain),
            )?;
        }
    }
    let books = st.pairs().count();
    let resting = st.market.offers.len();
    let mut times = Vec::with_capacity(payments);
    let mut fills = 0;
    for n in 0..payments {
        let p = &payers[n / 200];
        let a = M::Pay {
            to: account(&recipient),
            deliver: units(eur, 1),
            send_max: Some(units(usd, 2)),
            partial: false,
        };
        let tx = sign(p, 1 + (n % 200) as u64, 1, Action::Market(a), &chain);
        let t0 = thread_cpu();
        let e = must(&mut st, &tx)?;
        times.push((thread_cpu() - t0).as_secs_f64() * 1e3);
        if let Effect::Market {
            outcome: Outcome::Paid { fills: f, .. },
            ..
        } = e
        {
            fills += f.len();
        }
    }
    st.audit_market().map_err(|e| anyhow::anyhow!(e))?;
    times.sort_by(f64::total_cmp);
    let p99 = pct(&times, 99.0);
    Ok(json!({
        "books": books,
        "resting_offers": resting,
        "offers_per_book": depth,
        "payments": payments,
        "fills": fills,
        "p50_ms": pct(&times, 50.0),
        "p99_ms": p99,
        "max_ms": times.last().copied().unwrap_or(0.0),
        "target_p99_ms": 10,
        "met": p99 <= 10.0,
    }))
}

pub struct Options {
    pub agora: std::path::PathBuf,
    pub quick: bool,
}

/// Offers per second submitted in the paced phase: the target rate.
const TARGET_RATE: f64 = 5_000.0;

/// Offers through consensus, with payment finality measured meanwhile.
pub fn consensus(opts: &Options) -> Result<Value> {
    let root = std::env::temp_dir().join(format!("agora-market-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let result = consensus_in(opts, &root);
    if std::env::var_os("AGORA_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&root);
    } else {
        eprintln!("market bench: kept {}", root.display());
    }
    result
}

fn consensus_in(opts: &Options, root: &Path) -> Result<Value> {
    // Each round is 2 × makers offers; half the rounds run as fast as taken, half paced at
    // TARGET_RATE for about ten seconds.
    let (makers, rounds) = if opts.quick { (50, 10) } else { (200, 125) };
    let issuer = key(0);
    let maker_keys: Vec<SigningKey> = (0..makers).map(|i| key(10 + i)).collect();
    let taker_keys: Vec<SigningKey> = (0..makers).map(|i| key(100_000 + i)).collect();
    let payee = key(300_000);
    let funded = std::iter::once(&issuer)
        .chain(&maker_keys)
        .chain(&taker_keys)
        .chain(std::iter::once(&payee))
        .map(account);
    let (nodes, genesis) = load::devnet(&opts.agora, root, "market-bench", funded)?;
    let chain = genesis.chain_id();
    let usd = issue("USD", &issuer);
    let agent = new_agent();
    let status = |v: &Validator| v.call(&agent, "GET", "/v1/ledger/status", None);
    let deadline = Instant::now() + Duration::from_secs(60);
    while nodes
        .iter()
        .map(|n| Ok(status(n)?["height"].as_u64().unwrap_or(0)))
        .collect::<Result<Vec<_>>>()?
        .iter()
        .any(|h| *h < 3)
    {
        ensure!(
            Instant::now() < deadline,
            "the validators made no blocks within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let by_position = |i: usize| i;

    // Setup: lines, and USD for the makers.
    eprintln!("market bench: setup ({makers} makers, {makers} takers)");
    let mut setup = Vec::new();
    for k in maker_keys.iter().chain(&taker_keys) {
        let a = M::TrustSet {
            issue: usd,
            limit: 1_000_000_000 * IOU_SCALE,
        };
        setup.push(sign(k, 0, 1, Action::Market(a), &chain));
    }
    for (i, m) in maker_keys.iter().enumerate() {
        let a = M::Pay {
            to: account(m),
            deliver: units(usd, 1_000_000),
            send_max: None,
            partial: false,
        };
        setup.push(sign(&issuer, i as u64, 1, Action::Market(a), &chain));
    }
    let rejected = load::submit_all(&nodes, &setup, by_position, None)?.rejected;
    ensure!(rejected == 0, "{rejected} setup transactions rejected");

    // The load: each round, every maker rests an offer and every taker crosses one.
    let mut load = Vec::new();
    for r in 0..2 * rounds {
        for (i, m) in maker_keys.iter().enumerate() {
            let a = M::OfferCreate {
                sell: units(usd, 10),
                buy: Amount::native(10_000 + ((i + r) % 50) as u64),
                flags: OfferFlags::default(),
            };
            load.push(sign(m, 1 + r as u64, 1, Action::Market(a), &chain));
        }
        for t in &taker_keys {
            let a = M::OfferCreate {
                sell: Amount::native(11_000),
                buy: units(usd, 10),
                flags: OfferFlags::default(),
            };
            load.push(sign(t, 1 + r as u64, 1, Action::Market(a), &chain));
        }
    }
    let paced = load.split_off(load.len() / 2);
    eprintln!("market bench: {} offers as fast as taken", load.len());
    let max = load::submit_all(&nodes, &load, by_position, None)?;
    let (rejected_max, secs_max) = (max.rejected, max.final_s);
    let max_rate = (load.len() - rejected_max) as f64 / secs_max;
    // Paced load with payments timed meanwhile: (rejected, seconds, sorted finality ms).
    let payee_text = account(&payee).to_string();
    // (rejected, seconds, sorted finality ms, the machine's busy CPU seconds meanwhile).
    let paced_run = |load: &[Tx], what: &str| -> Result<(usize, f64, Vec<f64>, f64)> {
        eprintln!(
            "market bench: {} {what} at {TARGET_RATE}/s, payments timed meanwhile",
            load.len()
        );
        let busy = busy_cpu_s();
        let (done, finality) = load::timed_during(
            |agent| load::pay_once(&nodes[0], agent, &payee_text),
            || load::submit_all(&nodes, load, by_position, Some(TARGET_RATE)),
        )?;
        let busy = busy_cpu_s().zip(busy).map_or(f64::NAN, |(b, a)| b - a);
        Ok((done.rejected, done.final_s, finality, busy))
    };
    let (rejected, secs, finality, busy) = paced_run(&paced, "offers")?;
    let rate = (paced.len() - rejected) as f64 / secs;
    let p50 = pct(&finality, 50.0);
    // The reference: plain AGR transfers at the same rate, the same way.
    let sink = account(&issuer);
    let transfers: Vec<Tx> = (0..paced.len() / (2 * makers))
        .flat_map(|r| {
            maker_keys.iter().chain(&taker_keys).map(move |k| {
                let seq = 1 + 2 * rounds as u64 + r as u64;
                let to = Action::Transfer {
                    to: sink,
                    amount: 1,
                    memo: None,
                };
                sign(k, seq, 1, to, &chain)
            })
        })
        .collect();
    let (t_rejected, t_secs, t_finality, t_busy) = paced_run(&transfers, "transfers")?;
    Ok(json!({
        "validators": VALIDATORS,
        "max_offers_per_s": max_rate,
        "max_rejected": rejected_max,
        "offers": paced.len(),
        "offered_per_s": TARGET_RATE,
        "rejected": rejected,
        "seconds": secs,
        "offers_per_s": rate,
        "target_offers_per_s": 5_000,
        "payments_timed": finality.len(),
        // The whole machine's busy cores while the paced offers ran (validators, load and
        // timed client: 2.0 is saturated), and its CPU per offer made final.
        "cpu_busy_cores": busy / secs,
        "cpu_ms_per_offer": busy * 1e3 / (paced.len() - rejected) as f64,
        "payment_finality_p50_ms": p50,
        "payment_finality_p99_ms": pct(&finality, 99.0),
        "target_finality_p50_ms": 50,
        "met": rate >= 5_000.0 && p50 <= 50.0,
        "reference_transfers": {
            "transfers": transfers.len(),
            "rejected": t_rejected,
            "transfers_per_s": (transfers.len() - t_rejected) as f64 / t_secs,
            "cpu_busy_cores": t_busy / t_secs,
            "cpu_ms_per_transfer": t_busy * 1e3 / (transfers.len() - t_rejected) as f64,
            "payments_timed": t_finality.len(),
            "payment_finality_p50_ms": pct(&t_finality, 50.0),
            "payment_finality_p99_ms": pct(&t_finality, 99.0),
        },
        "height": status(&nodes[0])?["height"],
    }))
}

/// CPU seconds the whole machine has spent busy since boot (`/proc/stat`: user, nice,
/// system, irq, softirq, steal), or `None` where that file does not exist.
fn busy_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|i| fields.get(*i))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(busy as f64 / ticks)
}

/// All three parts.
pub fn run(opts: &Options) -> Result<Value> {
    let (makers, each, takers) = if opts.quick {
        (50, 20, 100)
    } else {
        (500, 40, 2_000)
    };
    eprintln!("market bench: matching alone");
    let matching = matching(makers, each, takers)?;
    eprintln!("market bench: path finding");
    let paths = path_finding(
        if opts.quick { 200 } else { 1_000 },
        if opts.quick { 200 } else { 1_000 },
    )?;
    let consensus = consensus(opts)?;
    Ok(json!({
        "matching": matching,
        "path_finding": paths,
        "consensus": consensus,
    }))
}

/// The table rows of a run: (figure, value, ratio).
pub fn rows(v: &Value) -> Vec<(String, String, String)> {
    let f = |x: &Value| x.as_f64().unwrap_or(f64::NAN);
    let met = |x: &Value| {
        if x.as_bool() == Some(true) {
            "met"
        } else {
            "MISSED"
        }
    };
    let (m, p, c) = (&v["matching"], &v["path_finding"], &v["consensus"]);
    vec![
        (
            format!(
                "market: matching alone, one core ({} crossing offers taking {} resting ones)",
                m["crossing_txs"], m["fills"]
            ),
            format!("{:.0} matched offers/s", f(&m["matched_per_s"])),
            format!(
                "target ≥ 100,000/s: {}; {:.3} × plain transfers through the same state machine \
                 ({:.0}/s)",
                met(&m["met"]),
                f(&m["matched_vs_transfers"]),
                f(&m["transfers_per_s"])
            ),
        ),
        (
            format!(
                "market: path finding + fills of a cross-currency payment, {} books of {} offers",
                p["books"], p["offers_per_book"]
            ),
            format!(
                "p50 {:.3} ms, p99 {:.3} ms",
                f(&p["p50_ms"]),
                f(&p["p99_ms"])
            ),
            format!("target p99 ≤ 10 ms: {}", met(&p["met"])),
        ),
        (
            "market: offers through 4 validators, as fast as taken".into(),
            format!("{:.0} offers/s", f(&c["max_offers_per_s"])),
            format!(
                "target ≥ 5,000/s: {}",
                if f(&c["max_offers_per_s"]) >= 5_000.0 {
                    "met"
                } else {
                    "MISSED"
                }
            ),
        ),
        (
            "market: payment finality while offers arrive at 5,000/s".into(),
            format!(
                "p50 {:.0} ms, p99 {:.0} ms",
                f(&c["payment_finality_p50_ms"]),
                f(&c["payment_finality_p99_ms"])
            ),
            format!(
                "target p50 ≤ 50 ms: {}; {:.0} offers/s final, machine {:.2} of 2 cores busy, \
                 {:.3} CPU ms per offer; with plain transfers at 5,000/s instead: p50 {:.0} ms",
                if f(&c["payment_finality_p50_ms"]) <= 50.0 {
                    "met"
                } else {
                    "MISSED"
                },
                f(&c["offers_per_s"]),
                f(&c["cpu_busy_cores"]),
                f(&c["cpu_ms_per_offer"]),
                f(&c["reference_transfers"]["payment_finality_p50_ms"])
            ),
        ),
    ]
}
