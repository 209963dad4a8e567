//! `agora-testbed`: builds networks of Linux network namespaces on this machine (hosts, LANs,
//! NAT routers, lossy links) and runs the real `agora` binary in them.
//!
//! Exit codes: 0 the scenario passed, 1 it failed, 2 usage error, 77 this machine cannot run
//! the testbed (not root, no `ip`/`nft`, namespaces not allowed) — never a silent pass.

mod agent;
mod agent_ledger;
mod bench;
mod contract_bench;
mod docs_bench;
mod grid_sim;
mod ledger_bench;
mod link;
mod load;
mod market_bench;
mod net;
mod node;
mod sandbox_bench;
mod scenario;
mod sim;
mod transport_bench;

use std::{path::PathBuf, process::ExitCode, time::Instant};

use clap::{Parser, Subcommand};
use serde_json::json;

/// Exit code when namespaces cannot be used here.
const CANNOT_RUN: u8 = 77;

#[derive(Parser)]
#[command(name = "agora-testbed", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The scenarios that exist.
    List,
    /// Run a scenario; exit 0 if every check passes.
    Run {
        scenario: String,
        /// Seed for the scenario's random choices.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// The agora binary to run in the namespaces (default: next to this one).
        #[arg(long, env = "AGORA_BIN")]
        agora: Option<PathBuf>,
        /// Keep the nodes' data directories and logs (their path is printed).
        #[arg(long)]
        keep: bool,
        /// How long the scenario's main phase runs, in seconds (churn: default 120).
        #[arg(long)]
        duration: Option<u64>,
        /// How many nodes the scenario starts (churn: default 30).
        #[arg(long)]
        nodes: Option<usize>,
    },
    /// Remove namespaces and processes left behind by interrupted runs.
    Clean,
    /// Run every capability's benchmark (bench/ scripts, release build of agora) and print one
    /// table of figures with their ratios against the machine's limits measured in the same run.
    Bench {
        /// The agora binary (default: next to this one; build both with --release).
        #[arg(long, env = "AGORA_BIN")]
        agora: Option<PathBuf>,
        /// The agora checkout holding bench/ (default: the one this was built from).
        #[arg(long)]
        repo: Option<PathBuf>,
        /// Smaller sizes (256 MiB file, 2,000 messages) for a run of a few minutes.
        #[arg(long)]
        quick: bool,
        #[arg(long)]
        json: bool,
        /// Also write the table into this README, between its `agora-testbed bench` markers.
        #[arg(long)]
        write_readme: Option<PathBuf>,
    },
    /// How fast Agora's libp2p transport alone (TCP + Noise + Yamux) carries a raw stream
    /// between two processes on loopback: the bound for any file transfer over it.
    TransportBench {
        /// MiB to send.
        #[arg(long, default_value_t = 1024)]
        mib: u64,
        /// Security both ends offer: tls-noise (negotiates TLS 1.3) or noise-only.
        #[arg(long, default_value_t = agora_net::Security::TlsNoise)]
        security: agora_net::Security,
        /// Internal: be the receiving process.
        #[arg(long, hide = true)]
        serve: bool,
    },
    /// The ledger's benchmark alone: four validators on loopback, time to finality and
    /// sustained transfers/s against the machine's ed25519 verification rate.
    LedgerBench {
        #[arg(long, env = "AGORA_BIN")]
        agora: Option<PathBuf>,
        /// Sequential payments timed for finality.
        #[arg(long, default_value_t = 200)]
        payments: usize,
        /// Sending accounts in the throughput run.
        #[arg(long, default_value_t = 1000)]
        accounts: usize,
        /// Transfers each account sends.
        #[arg(long, default_value_t = 20)]
        txs: usize,
    },
    /// The currency market's benchmark: matching alone on one core (matched offers/s against
    /// plain transfers), path finding over books of 1,000 offers (p50/p99), and offers through
    /// four validators on loopback with payment finality measured meanwhile (build with
    /// --release).
    MarketBench {
        #[arg(long, env = "AGORA_BIN")]
        agora: Option<PathBuf>,
        /// Smaller books and load (a debug build finishes in about a minute).
        #[arg(long)]
        quick: bool,
    },
    /// The contracts' benchmark: gas per ms (the calibration behind the gas table), per-call
    /// instantiation p50/p99, the example token natively vs in the engine, and token transfers
    /// through four validators with payment finality meanwhile (build with --release).
    ContractBench {
        #[arg(long, env = "AGORA_BIN")]
        agora: Option<PathBuf>,
        /// The agora checkout holding examples/contracts (default: the one this was built from).
        #[arg(long)]
        repo: Option<PathBuf>,
        #[arg(long)]
        quick: bool,
    },
    /// The grid sandbox's cost: the genome workload native against agora-wasm with and without
    /// fuel metering, and the compile, cache-hit and instantiation costs (build with --release).
    SandboxBench {
        /// The agora checkout holding workloads/genome (default: the one this was built from).
        #[arg(long)]
        repo: Option<PathBuf>,
        /// A unit of a tenth of the size and 3 rounds instead of 5.
        #[arg(long)]
        quick: bool,
        #[arg(long)]
        json: bool,
    },
    /// The groupware documents' cost, in process: a 259,778-edit editing trace through
    /// automerge alone and through Agora's signed changes (replay, save, load, peak RSS), two
    /// replicas with 10,000 divergent changes each brought together, five members under random
    /// partitions converging (build with --release).
    DocsBench {
        /// A 5,000-edit prefix of the trace, 300 divergent changes, 2 partition runs of 600
        /// edits (a debug build finishes in about half a minute).
        #[arg(long)]
        quick: bool,
        #[arg(long)]
        json: bool,
        /// Internal: run one variant of the trace (automerge or agora) and print its figures.
        #[arg(long, hide = true)]
        child: Option<String>,
        /// Internal: edits of the trace the child replays.
        #[arg(long, hide = true, default_value_t = 0)]
        edits: usize,
        /// Internal: edits per change in the child (automerge: 0 for one commit at the end).
        #[arg(long, hide = true, default_value_t = 0)]
        group: usize,
    },
    /// Simulate one grid job on thousands of workers (churn, cheaters) through the real
    /// submitter state machine on virtual time: units accepted, wrong results, cheaters caught,
    /// CPU spent per useful CPU. Exits 1 if the job did not finish or a wrong result was
    /// accepted.
    GridSim {
        #[arg(long, default_value_t = 10_000)]
        workers: usize,
        #[arg(long, default_value_t = 20_000)]
        units: usize,
        /// Fraction of the workers offline at any time.
        #[arg(long, default_value_t = 0.3)]
        churn: f64,
        /// Fraction of the workers that cheat (4 in 5 lie, 1 in 5 copy).
        #[arg(long, default_value_t = 0.1)]
        cheaters: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        json: bool,
    },
    /// Simulate the DHT at 100, 1,000 and 10,000 nodes (in one process) and print lookup hops,
    /// success and messages, without and with churn.
    Sim {
        /// Network sizes (repeatable).
        #[arg(long = "nodes", default_values_t = vec![100usize, 1000, 10000])]
        nodes: Vec<usize>,
        /// Fractions of nodes that vanish after the tables are built (repeatable).
        #[arg(long = "churn", default_values_t = vec![0.0f64, 0.3])]
        churn: Vec<f64>,
        /// Lookups per configuration.
        #[arg(long, default_value_t = 1000)]
        lookups: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        json: bool,
    },
    /// A user-space WAN link (delay, loss) of the `wan` scenario, run in a router namespace.
    #[command(hide = true)]
    AgentLink {
        #[arg(long)]
        index: u8,
        #[arg(long)]
        delay_ms: u64,
        #[arg(long, default_value_t = 0)]
        jitter_ms: u64,
        #[arg(long)]
        loss: f64,
    },
    /// The attacker of the `hostile` scenario (run by it inside its namespace).
    #[command(hide = true)]
    AgentHostile {
        #[arg(long, required = true)]
        target: Vec<agora_net::Multiaddr>,
        #[arg(long)]
        room: String,
        /// A real blob to hold slow streams for.
        #[arg(long)]
        blob: Option<String>,
        /// A keyword of a real file's name, to flood the index under.
        #[arg(long)]
        keyword: Option<String>,
        /// Seconds to hold the slow streams after printing the summary.
        #[arg(long, default_value_t = 0)]
        hold: u64,
        /// A file holding the hex ed25519 secret of the attacker's identity, a member of the
        /// ledger committee: enables the ledger attacks.
        #[arg(long)]
        ledger_key: Option<PathBuf>,
        /// Unsolicited block proposals to flood.
        #[arg(long, default_value_t = 2000)]
        proposals: u64,
        /// Seconds the proposal flood lasts.
        #[arg(long, default_value_t = 10)]
        flood_secs: u64,
        /// Seconds at most the lying sync server waits for stdin to close.
        #[arg(long, default_value_t = 90)]
        max_serve: u64,
    },
}

/// What every scenario gets.
pub struct Ctx {
    pub agora: PathBuf,
    pub seed: u64,
    pub duration: Option<u64>,
    pub nodes: Option<usize>,
}

fn default_agora() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("agora")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("agora"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::List => {
            for s in scenario::ALL {
                println!("{:<10} {}", s.name, s.about);
            }
            ExitCode::SUCCESS
        }
        Command::AgentLink {
            index,
            delay_ms,
            jitter_ms,
            loss,
        } => match link::run(
            index,
            std::time::Duration::from_millis(delay_ms),
            std::time::Duration::from_millis(jitter_ms),
            loss,
        ) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::AgentHostile {
            target,
            room,
            blob,
            keyword,
            hold,
            ledger_key,
            proposals,
            flood_secs,
            max_serve,
        } => match agent::ledger_plan(ledger_key.as_deref(), proposals, flood_secs, max_serve)
            .and_then(|ledger| {
                agent::hostile(
                    &target,
                    &room,
                    &agent::Aims {
                        blob,
                        keyword,
                        hold: std::time::Duration::from_secs(hold),
                        ledger,
                    },
                )
            }) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Sim {
            nodes,
            churn,
            lookups,
            seed,
            json,
        } => {
            if nodes.iter().any(|n| *n < 2 || *n > 200_000)
                || churn.iter().any(|c| !(0.0..0.95).contains(c))
            {
                eprintln!("error: --nodes must be 2..=200000 and --churn in [0, 0.95)");
                return ExitCode::from(2);
            }
            if !json {
                println!(
                    "{:>7} {:>6} {:>8} {:>9} {:>9} {:>11} {:>9} {:>9} {:>6}",
                    "NODES",
                    "CHURN",
                    "SUCCESS",
                    "HOPS p50",
                    "HOPS p95",
                    "ROUNDS p50",
                    "MSGS avg",
                    "MSGS p95",
                    "TABLE"
                );
            }
            let mut rows = Vec::new();
            for &n in &nodes {
                for &c in &churn {
                    let r = sim::run_one(n, c, lookups, seed);
                    if json {
                        rows.push(r);
                    } else {
                        let u = |k: &str| r[k].as_u64().unwrap_or(0);
                        println!(
                            "{:>7} {:>5.0}% {:>7.1}% {:>9} {:>9} {:>11} {:>9.1} {:>9} {:>6}",
                            u("nodes"),
                            c * 100.0,
                            r["success"].as_f64().unwrap_or(0.0) * 100.0,
                            u("hops_p50"),
                            u("hops_p95"),
                            u("rounds_p50"),
                            r["messages_mean"].as_f64().unwrap_or(0.0),
                            u("messages_p95"),
                            u("routing_table_mean"),
                        );
                    }
                }
            }
            if json {
                println!("{}", serde_json::Value::Array(rows));
            }
            ExitCode::SUCCESS
        }
        Command::Bench {
            agora,
            repo,
            quick,
            json,
            write_readme,
        } => {
            let agora = agora.unwrap_or_else(default_agora);
            let repo = repo.unwrap_or_else(bench::default_repo);
            match bench::run(&agora, &repo, quick, json, write_readme.as_deref()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::TransportBench {
            mib,
            security,
            serve,
        } => {
            let result = if serve {
                transport_bench::serve(security)
            } else {
                transport_bench::run(mib, security).map(|v| println!("{v}"))
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::ContractBench { agora, repo, quick } => {
            let opts = contract_bench::Options {
                agora: agora.unwrap_or_else(default_agora),
                repo: repo.unwrap_or_else(bench::default_repo),
                quick,
            };
            match contract_bench::run(&opts) {
                Ok(v) => {
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::MarketBench { agora, quick } => {
            let opts = market_bench::Options {
                agora: agora.unwrap_or_else(default_agora),
                quick,
            };
            match market_bench::run(&opts) {
                Ok(v) => {
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::LedgerBench {
            agora,
            payments,
            accounts,
            txs,
        } => {
            let opts = ledger_bench::Options {
                agora: agora.unwrap_or_else(default_agora),
                payments,
                accounts,
                txs_per_account: txs,
            };
            match ledger_bench::run(&opts) {
                Ok(v) => {
                    println!("{v}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::SandboxBench { repo, quick, json } => {
            let repo = repo.unwrap_or_else(bench::default_repo);
            match sandbox_bench::run(&sandbox_bench::Options::new(repo, quick)) {
                Ok(v) => {
                    sandbox_bench::print(&v, json);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::DocsBench {
            quick,
            json,
            child,
            edits,
            group,
        } => {
            let result = match child {
                Some(variant) => docs_bench::child(&variant, edits, group).map(|v| {
                    println!("{v}");
                    true
                }),
                None => docs_bench::run(&docs_bench::Options::new(quick)).map(|v| {
                    docs_bench::print(&v, json);
                    !docs_bench::failed(&v)
                }),
            };
            match result {
                Ok(true) => ExitCode::SUCCESS,
                // A part failed: its error is in the table and the JSON.
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::GridSim {
            workers,
            units,
            churn,
            cheaters,
            seed,
            json,
        } => {
            let cfg = grid_sim::Config {
                workers,
                units,
                churn,
                cheaters,
                seed,
            };
            if let Err(e) = cfg.check() {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            let started = Instant::now();
            let report = grid_sim::run(&cfg);
            if json {
                println!("{}", report.to_json());
            } else {
                println!("{report}");
                println!(
                    "simulated in {:.1} s ({} events)",
                    started.elapsed().as_secs_f64(),
                    report.events
                );
            }
            if report.done && report.wrong_accepted == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Clean => {
            if let Err(why) = net::check_capabilities() {
                eprintln!("agora-testbed cannot run here: {why}");
                return ExitCode::from(CANNOT_RUN);
            }
            match net::clean_leftovers() {
                Ok(removed) => {
                    println!(
                        "removed {} namespace(s){}",
                        removed.len(),
                        if removed.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", removed.join(" "))
                        }
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run {
            scenario,
            seed,
            json,
            agora,
            keep,
            duration,
            nodes,
        } => {
            let Some(s) = scenario::ALL.iter().find(|s| s.name == scenario) else {
                let names: Vec<&str> = scenario::ALL.iter().map(|s| s.name).collect();
                eprintln!(
                    "error: unknown scenario {scenario:?}; the scenarios are: {}",
                    names.join(", ")
                );
                return ExitCode::from(2);
            };
            if let Err(why) = net::check_capabilities() {
                eprintln!("agora-testbed cannot run here: {why}");
                return ExitCode::from(CANNOT_RUN);
            }
            let agora = agora.unwrap_or_else(default_agora);
            net::install_signal_handlers();
            let dir = std::env::temp_dir().join(format!("agora-testbed-{}", std::process::id()));
            let mut tb = match net::Testbed::new(&dir) {
                Ok(tb) => tb,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
            if keep {
                tb.keep_dir();
                eprintln!("keeping data and logs in {}", dir.display());
            }
            let ctx = Ctx {
                agora,
                seed,
                duration,
                nodes,
            };
            let started = Instant::now();
            let result = (s.run)(&ctx, &mut tb);
            let secs = started.elapsed().as_secs_f64();
            drop(tb);
            match result {
                Ok(figures) => {
                    if json {
                        println!(
                            "{}",
                            json!({"scenario": s.name, "passed": true, "seed": seed, "secs": secs, "figures": figures})
                        );
                    } else {
                        println!(
                            "{}: passed in {secs:.1} s\n{}",
                            s.name,
                            serde_json::to_string_pretty(&figures).unwrap_or_default()
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    if json {
                        println!(
                            "{}",
                            json!({"scenario": s.name, "passed": false, "seed": seed, "secs": secs, "error": format!("{e:#}")})
                        );
                    } else {
                        eprintln!("{}: FAILED after {secs:.1} s: {e:#}", s.name);
                    }
                    ExitCode::FAILURE
                }
            }
        }
    }
}
