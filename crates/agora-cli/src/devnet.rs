//! `agora devnet`: N real `agora up` processes on loopback, connected to one another.
//!
//! Node 0 starts alone; node i bootstraps from node i-1 and from node (i-1)/2, so the start-up
//! graph is a chain plus a binary tree rather than a star around one node. The devnet then waits
//! until every node has a peer and the connection graph is in one piece, prints a table, and
//! runs until SIGINT/SIGTERM, when it stops exactly the processes it started (by pid) and
//! waits for them. Children also get SIGTERM if the devnet process itself dies
//! (`PR_SET_PDEATHSIG`). Data directories under `--dir` are kept, so a re-run reuses the
//! identities; without `--dir` a temporary directory is used and removed at the end.
//!
//! The devnet also runs a ledger: `genesis.json` in the devnet directory names the first four
//! nodes (fewer if the devnet is smaller) as validators and funds every node's account and a
//! faucet account (its key is the identity in `<dir>/faucet`; run a node on that data
//! directory to spend from it). An existing `genesis.json` is reused, so a re-run continues
//! the same chain. Every node runs with `--validator`: those outside the committee follow
//! until a committee change (`agora ledger approve` / `change`) adds them, at the next epoch
//! (200 blocks; an idle chain makes about 2.5 blocks a second).

use std::{
    fs::{self, File},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;
use serde_json::Value;

use crate::{client::Endpoint, output::short_id};

/// How long one node may take to become ready.
const NODE_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the whole network may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long stopping waits before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Validators in a devnet genesis (all nodes if fewer).
pub const DEVNET_VALIDATORS: usize = 4;
/// What every devnet account starts with, in base units.
pub const DEVNET_BALANCE: u64 = 1_000_000_000;
/// What the faucet starts with.
pub const FAUCET_BALANCE: u64 = 1_000_000_000_000;

#[derive(Args, Debug)]
pub struct DevnetArgs {
    /// Number of nodes.
    #[arg(long, short = 'n', default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub nodes: u32,
    /// Directory for the nodes' data directories (kept, so identities are reused).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print the node table as one JSON line instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct NodeRow {
    name: String,
    peer_id: String,
    pid: u32,
    api: String,
    data_dir: PathBuf,
    addrs: Vec<String>,
    account: String,
    validator: bool,
}

struct Devnet {
    children: Vec<(String, Child)>,
    temp_dir: Option<PathBuf>,
}

impl Drop for Devnet {
    fn drop(&mut self) {
        stop_children(&mut self.children);
        if let Some(dir) = &self.temp_dir {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

pub fn run(args: DevnetArgs) -> Result<()> {
    let (dir, temp_dir) = match &args.dir {
        Some(d) => (d.clone(), None),
        None => {
            let d = std::env::temp_dir().join(format!("agora-devnet-{}", std::process::id()));
            (d.clone(), Some(d))
        }
    };
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let exe = std::env::current_exe().context("cannot find the agora executable")?;
    let mut net = Devnet {
        children: Vec::new(),
        temp_dir,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let stop = runtime.block_on(async { signals() })?;

    let genesis_path = dir.join("genesis.json");
    let genesis = devnet_genesis(&dir, args.nodes as usize, &genesis_path)?;
    let mut rows: Vec<NodeRow> = Vec::new();
    for i in 0..args.nodes as usize {
        let name = format!("node{i}");
        let data_dir = dir.join(&name);
        let account = account_of(&data_dir)?;
        let validator = genesis.validators.contains(&account);
        let mut bootstrap: Vec<String> = Vec::new();
        if i > 0 {
            for j in [i - 1, (i - 1) / 2] {
                if let Some(addr) = tcp_addr(&rows[j])
                    && !bootstrap.contains(&addr)
                {
                    bootstrap.push(addr);
                }
            }
        }
        // All run consensus; only the committee's members vote (see the module docs).
        let child = spawn_node(&exe, &data_dir, &bootstrap, &genesis_path)?;
        let pid = child.id();
        net.children.push((name.clone(), child));
        let mut row = wait_ready(
            &name,
            &data_dir,
            pid,
            &mut net.children.last_mut().unwrap().1,
        )?;
        row.account = account.to_string();
        row.validator = validator;
        rows.push(row);
    }

    wait_connected(&rows)?;
    if args.json {
        println!("{}", serde_json::json!({ "dir": dir, "nodes": rows }));
    } else {
        print_table(&rows, &dir);
    }

    runtime.block_on(async {
        let mut stop = stop;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tick.tick() => {
                    for (name, child) in net.children.iter_mut() {
                        if let Ok(Some(status)) = child.try_wait() {
                            eprintln!("warning: {name} exited ({status}); see {}", dir.join(name.as_str()).join("node.log").display());
                        }
                    }
                    net.children.retain_mut(|(_, c)| !matches!(c.try_wait(), Ok(Some(_))));
                }
            }
        }
    });
    eprintln!("stopping {} node(s)…", net.children.len());
    let count = net.children.len();
    stop_children(&mut net.children);
    eprintln!("stopped {count} node(s)");
    Ok(())
}

/// Resolves when SIGINT or SIGTERM arrives.
fn signals() -> Result<tokio::sync::oneshot::Receiver<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        let _ = tx.send(());
    });
    Ok(rx)
}

/// The ledger account of the identity in `data_dir` (created if missing).
fn account_of(data_dir: &Path) -> Result<agora_ledger::Account> {
    let (account, _) = agora_ledger::service::identity_in(data_dir)
        .with_context(|| format!("identity in {}", data_dir.display()))?;
    Ok(account)
}

/// Reads `genesis.json` if the devnet directory has one, or writes a new one: the first
/// nodes are validators, every node and the faucet are funded.
/// Blocks per epoch on a devnet: committee changes wait at most this long to take effect.
const DEVNET_EPOCH_LENGTH: u64 = 200;

fn devnet_genesis(dir: &Path, nodes: usize, path: &Path) -> Result<agora_ledger::Genesis> {
    if path.exists() {
        return crate::up::read_genesis(path);
    }
    let mut accounts = Vec::new();
    for i in 0..nodes {
        accounts.push(account_of(&dir.join(format!("node{i}")))?);
    }
    let faucet = account_of(&dir.join("faucet"))?;
    let mut balances: Vec<_> = accounts.iter().map(|a| (*a, DEVNET_BALANCE)).collect();
    balances.push((faucet, FAUCET_BALANCE));
    let genesis = agora_ledger::Genesis {
        chain: format!("devnet-{}", std::process::id()),
        validators: accounts.iter().take(DEVNET_VALIDATORS).copied().collect(),
        balances,
        min_fee: 10,
        epoch_length: DEVNET_EPOCH_LENGTH,
    };
    genesis.validate().map_err(|e| anyhow::anyhow!(e))?;
    fs::write(path, serde_json::to_vec_pretty(&genesis)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(genesis)
}

fn spawn_node(exe: &Path, data_dir: &Path, bootstrap: &[String], genesis: &Path) -> Result<Child> {
    fs::create_dir_all(data_dir)?;
    // A stale api.json from a killed run must not be mistaken for this node's.
    let _ = fs::remove_file(data_dir.join(agora_store::API_INFO_FILE));
    let log = File::options()
        .create(true)
        .append(true)
        .open(data_dir.join("node.log"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("up")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
        .args(["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"])
        .args(["--api", "127.0.0.1:0"])
        .arg("--genesis")
        .arg(genesis);
    cmd.arg("--validator");
    for b in bootstrap {
        cmd.args(["--bootstrap", b]);
    }
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .env_remove("AGORA_API")
        .env_remove("AGORA_DATA_DIR");
    // SAFETY: prctl is async-signal-safe; it only sets this child's parent-death signal.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("cannot start {}", exe.display()))
}

fn wait_ready(name: &str, data_dir: &Path, pid: u32, child: &mut Child) -> Result<NodeRow> {
    let deadline = Instant::now() + NODE_START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            let log = fs::read_to_string(data_dir.join("node.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            bail!(
                "{name} exited during start-up ({status}):\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        if let Ok(info) = agora_store::read_api_info(data_dir)
            && info.pid == pid
        {
            let token = fs::read_to_string(&info.token_file)?.trim().to_owned();
            let id: Value = Endpoint::new(&info.api, token).get("/v1/id")?;
            let addrs = id["addrs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect();
            return Ok(NodeRow {
                name: name.to_owned(),
                peer_id: info.peer_id,
                pid,
                api: info.api,
                data_dir: data_dir.to_owned(),
                addrs,
                account: String::new(),
                validator: false,
            });
        }
        if Instant::now() > deadline {
            bail!(
                "{name} did not become ready within {NODE_START_TIMEOUT:?}; see {}",
                data_dir.join("node.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tcp_addr(row: &NodeRow) -> Option<String> {
    row.addrs.iter().find(|a| a.contains("/tcp/")).cloned()
}

/// Waits until every node has a peer and all nodes form one connected graph.
fn wait_connected(rows: &[NodeRow]) -> Result<()> {
    if rows.len() < 2 {
        return Ok(());
    }
    let endpoints: Vec<Endpoint> = rows
        .iter()
        .map(|r| {
            let token = fs::read_to_string(r.data_dir.join(agora_store::TOKEN_FILE))?;
            Ok(Endpoint::new(&r.api, token.trim().to_owned()))
        })
        .collect::<Result<_>>()?;
    let index = |id: &str| rows.iter().position(|r| r.peer_id == id);
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        let mut parent: Vec<usize> = (0..rows.len()).collect();
        fn find(p: &mut Vec<usize>, i: usize) -> usize {
            if p[i] != i {
                let r = find(p, p[i]);
                p[i] = r;
            }
            p[i]
        }
        let mut all_have_peers = true;
        for (i, ep) in endpoints.iter().enumerate() {
            let peers: Value = ep.get("/v1/peers")?;
            let peers = peers.as_array().cloned().unwrap_or_default();
            all_have_peers &= !peers.is_empty();
            for p in &peers {
                if let Some(j) = p["peer_id"].as_str().and_then(index) {
                    let (a, b) = (find(&mut parent, i), find(&mut parent, j));
                    parent[a] = b;
                }
            }
        }
        let root = find(&mut parent, 0);
        if all_have_peers && (0..rows.len()).all(|i| find(&mut parent, i) == root) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the devnet did not connect within {CONNECT_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn print_table(rows: &[NodeRow], dir: &Path) {
    println!("agora devnet: {} node(s) in {}", rows.len(), dir.display());
    println!();
    println!(
        "{:<7} {:<20} {:<8} {:<17} {:<10} DATA DIR",
        "NAME", "PEER", "PID", "API", "LEDGER"
    );
    for r in rows {
        println!(
            "{:<7} {:<20} {:<8} {:<17} {:<10} {}",
            r.name,
            short_id(&r.peer_id),
            r.pid,
            r.api,
            if r.validator { "validator" } else { "follower" },
            r.data_dir.display()
        );
    }
    println!();
    println!(
        "Ledger: genesis {}; every node's account holds {DEVNET_BALANCE}, the faucet ({}) {FAUCET_BALANCE}.",
        dir.join("genesis.json").display(),
        dir.join("faucet").display()
    );
    let d0 = rows[0].data_dir.display();
    println!();
    println!("Try:");
    println!("  agora peers  --data-dir {d0}");
    println!("  agora status --data-dir {d0}");
    if let Some(last) = rows.last() {
        println!("  agora connect {} --data-dir {d0}", last.peer_id);
    }
    println!("  export AGORA_DATA_DIR={d0}; agora id");
    if let Some(last) = rows.last() {
        println!("  agora pay {} 1000 --data-dir {d0}", last.account);
    }
    println!("  agora ledger status --data-dir {d0}");
    println!();
    println!("Logs are in each data dir's node.log. Press Ctrl-C to stop the devnet.");
}

/// SIGTERM to each child we started, then SIGKILL to those still running after the timeout.
fn stop_children(children: &mut Vec<(String, Child)>) {
    for (_, child) in children.iter() {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    for (name, child) in children.iter_mut() {
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    eprintln!("{name} did not stop in time; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    children.clear();
}
