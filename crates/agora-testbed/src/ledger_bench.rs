//! Ledger benchmark on loopback, all figures from one run: four validators (real `agora up
//! --validator` processes running simplex over libp2p) and a load generator in this process.
//!
//! - Time to finality: sequential `POST /v1/ledger/pay` calls to one validator; each returns
//!   when a finalized block holds the payment (the node's own measurement, submit → final,
//!   and the client's round trip).
//! - Sustained transfers/s: many accounts each send a run of transfers, all signed before the
//!   clock starts, submitted in batches to the four validators at once; the rate is the count
//!   over the time until the last one is final on validator 0. Every transaction's signature
//!   is verified by every validator that admits it.
//! - The ceiling: every validator checks every transfer's signature once, and the four share
//!   the machine's cores, so at most cores × (signatures checked per second per core) ÷ 4
//!   transfers per second. The per-core rate is measured here the way validators check:
//!   batches of 1,024 through `agora_ledger::tx::signatures_valid`. Single `verify_strict`
//!   calls per second are reported beside it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agora_ledger::{Account, AccountTx, Action, Genesis, Hash, Tx};
use anyhow::{Context, Result, bail};
use ed25519_dalek::{Signer as _, SigningKey};
use serde_json::{Value, json};

pub(crate) const VALIDATORS: usize = 4;

pub(crate) struct Validator {
    child: Child,
    api: String,
    token: String,
    pub(crate) tcp: String,
}

impl Drop for Validator {
    fn drop(&mut self) {
        // SIGTERM, then SIGKILL if it does not stop.
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn new_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .new_agent()
}

impl Validator {
    pub(crate) fn call(
        &self,
        agent: &ureq::Agent,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        let url = format!("http://{}{path}", self.api);
        let auth = format!("Bearer {}", self.token);
        let response = match (method, body) {
            ("GET", _) => agent.get(&url).header("Authorization", &auth).call(),
            (_, Some(b)) => agent.post(&url).header("Authorization", &auth).send_json(b),
            _ => agent.post(&url).header("Authorization", &auth).send_empty(),
        };
        let mut response = response.with_context(|| format!("{method} {path}"))?;
        let status = response.status();
        let v: Value = response.body_mut().read_json()?;
        if !status.is_success() {
            bail!("{method} {path}: {status}: {v}");
        }
        Ok(v)
    }
}

pub(crate) fn start(
    agora: &Path,
    dir: &Path,
    genesis: &Path,
    bootstrap: Option<&str>,
) -> Result<Validator> {
    std::fs::create_dir_all(dir)?;
    let log = std::fs::File::create(dir.join("node.log"))?;
    let mut cmd = Command::new(agora);
    cmd.arg("up")
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0"])
        .arg("--genesis")
        .arg(genesis)
        .arg("--validator")
        .env(
            "RUST_LOG",
            std::env::var("AGORA_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if let Some(b) = bootstrap {
        cmd.args(["--bootstrap", b]);
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", agora.display()))?;
    let pid = child.id();
    let mut v = Validator {
        child,
        api: String::new(),
        token: String::new(),
        tcp: String::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let info = loop {
        if let Ok(info) = agora_store::read_api_info(dir)
            && info.pid == pid
        {
            break info;
        }
        if let Ok(Some(status)) = v.child.try_wait() {
            bail!(
                "validator exited at start ({status}); see {}",
                dir.join("node.log").display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "validator did not start; see {}",
                dir.join("node.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    v.api = info.api;
    v.token = std::fs::read_to_string(&info.token_file)?.trim().to_owned();
    let id = v.call(&new_agent(), "GET", "/v1/id", None)?;
    v.tcp = id["addrs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find(|a| a.contains("/tcp/"))
        .unwrap_or_default()
        .to_owned();
    Ok(v)
}

pub(crate) fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((p / 100.0) * (sorted.len() - 1) as f64).round() as usize]
}

pub(crate) fn bench_key(i: usize) -> SigningKey {
    let seed = blake3::hash(format!("agora-ledger-bench-{i}").as_bytes());
    SigningKey::from_bytes(seed.as_bytes())
}

/// `verify_strict` calls per second on one core.
fn verify_rate() -> f64 {
    let key = bench_key(usize::MAX);
    let messages: Vec<Vec<u8>> = (0..512u32).map(|i| i.to_le_bytes().repeat(40)).collect();
    let signatures: Vec<_> = messages.iter().map(|m| key.sign(m)).collect();
    let verifying = key.verifying_key();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(2) {
        for (m, s) in messages.iter().zip(&signatures) {
            assert!(verifying.verify_strict(m, s).is_ok());
            n += 1;
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Transfer signatures per second on one core, checked the way validators check them: in
/// batches of 1,024 (`agora_ledger::tx::signatures_valid`, ZIP-215 rules), distinct senders.
fn batch_verify_rate(chain: &Hash) -> f64 {
    let txs: Vec<agora_ledger::SignedAccountTx> = (0..1024)
        .map(|i| {
            let key = bench_key(1_000_000 + i);
            AccountTx {
                from: Account::from_key(&key.verifying_key()),
                seq: 0,
                fee: 1,
                action: Action::Transfer {
                    to: Account::from_key(&bench_key(0).verifying_key()),
                    amount: 1,
                    memo: None,
                },
            }
            .sign(&key, chain)
        })
        .collect();
    let refs: Vec<&agora_ledger::SignedAccountTx> = txs.iter().collect();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(2) {
        let valid = agora_ledger::tx::signatures_valid(&refs, chain);
        assert!(valid.iter().all(|v| *v));
        n += refs.len() as u64;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

pub struct Options {
    pub agora: PathBuf,
    pub payments: usize,
    pub accounts: usize,
    pub txs_per_account: usize,
}

pub fn run(opts: &Options) -> Result<Value> {
    let root = std::env::temp_dir().join(format!("agora-ledger-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let result = run_in(opts, &root);
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn run_in(opts: &Options, root: &Path) -> Result<Value> {
    let dirs: Vec<PathBuf> = (0..VALIDATORS)
        .map(|i| root.join(format!("v{i}")))
        .collect();
    let validators: Vec<Account> = dirs
        .iter()
        .map(|d| Ok(agora_ledger::service::identity_in(d)?.0))
        .collect::<Result<_>>()?;
    let keys: Vec<SigningKey> = (0..opts.accounts).map(bench_key).collect();
    let mut balances: Vec<(Account, u64)> =
        validators.iter().map(|a| (*a, 1_000_000_000_000)).collect();
    balances.extend(
        keys.iter()
            .map(|k| (Account::from_key(&k.verifying_key()), 1_000_000_000)),
    );
    let genesis = Genesis {
        chain: "bench".into(),
        validators: validators.clone(),
        balances,
        min_fee: 1,
        epoch_length: 1_000_000_000,
    };
    let gpath = root.join("genesis.json");
    std::fs::write(&gpath, serde_json::to_vec(&genesis)?)?;
    let chain: Hash = genesis.chain_id();

    eprintln!("ledger bench: starting {VALIDATORS} validators");
    let mut nodes = vec![start(&opts.agora, &dirs[0], &gpath, None)?];
    for dir in &dirs[1..] {
        let boot = nodes[0].tcp.clone();
        nodes.push(start(&opts.agora, dir, &gpath, Some(&boot))?);
    }
    let agent = new_agent();
    let height = |v: &Validator| -> Result<u64> {
        Ok(v.call(&agent, "GET", "/v1/ledger/status", None)?["height"]
            .as_u64()
            .unwrap_or(0))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while nodes
        .iter()
        .map(&height)
        .collect::<Result<Vec<_>>>()?
        .iter()
        .any(|h| *h < 3)
    {
        if Instant::now() > deadline {
            bail!(
                "the validators made no blocks within 60 s; see {}",
                root.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // Time to finality, one payment after another.
    eprintln!("ledger bench: {} sequential payments", opts.payments);
    let to = Account::from_key(&keys[0].verifying_key()).to_string();
    let mut node_ms = Vec::new();
    let mut client_ms = Vec::new();
    for _ in 0..opts.payments {
        let t = Instant::now();
        let v = nodes[0].call(
            &agent,
            "POST",
            "/v1/ledger/pay",
            Some(&json!({"to": to, "amount": 1})),
        )?;
        client_ms.push(t.elapsed().as_secs_f64() * 1e3);
        node_ms.push(v["finality_ms"].as_f64().unwrap_or(f64::NAN));
    }
    node_ms.sort_by(f64::total_cmp);
    client_ms.sort_by(f64::total_cmp);

    // Sustained throughput: sign everything first.
    let total = opts.accounts * opts.txs_per_account;
    eprintln!("ledger bench: signing {total} transfers");
    let sink = Account::from_key(&bench_key(usize::MAX - 1).verifying_key());
    let mut txs = Vec::with_capacity(total);
    for seq in 0..opts.txs_per_account {
        for key in &keys {
            let tx = Tx::Account(
                AccountTx {
                    from: Account::from_key(&key.verifying_key()),
                    seq: seq as u64,
                    fee: 1,
                    action: Action::Transfer {
                        to: sink,
                        amount: 1,
                        memo: None,
                    },
                }
                .sign(key, &chain),
            );
            txs.push(tx);
        }
    }
    eprintln!("ledger bench: submitting {total} transfers to {VALIDATORS} validators");
    // Each account's transactions go to one validator (the position within a round).
    let done = crate::load::submit_all(&nodes, &txs, |j| j % opts.accounts, None)?;
    let (rejected, submitted_s) = (done.rejected, done.submit_s);
    let expected = (total - rejected.min(total)) as u64;
    let final_s = done.final_s;
    let rate = expected as f64 / final_s;
    let verify = verify_rate();
    let batch = batch_verify_rate(&chain);
    // Every validator checks every signature once; the validators share the machine's cores.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ceiling = cores as f64 * batch / VALIDATORS as f64;
    let status = nodes[0].call(&agent, "GET", "/v1/ledger/status", None)?;
    Ok(json!({
        "validators": VALIDATORS,
        "finality_ms": {
            "payments": opts.payments,
            "node_p50": pct(&node_ms, 50.0),
            "node_p99": pct(&node_ms, 99.0),
            "client_p50": pct(&client_ms, 50.0),
            "client_p99": pct(&client_ms, 99.0),
        },
        "throughput": {
            "transfers": expected,
            "rejected": rejected,
            "accounts": opts.accounts,
            "submit_s": submitted_s,
            "final_s": final_s,
            "tx_per_s": rate,
        },
        "ed25519_verify_per_s_one_core": verify,
        "batch_verify_per_s_one_core": batch,
        "cores": cores,
        "ceiling_tx_per_s": ceiling,
        "vs_ceiling": rate / ceiling,
        "height": status["height"],
    }))
}
