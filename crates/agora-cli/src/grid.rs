//! `agora grid`: run a job across the network, follow it, fetch its results; list jobs and
//! workers.

use std::{
    io::IsTerminal,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::{
    ClientArgs,
    client::Endpoint,
    files::absolute,
    output::{self, short_id},
    up::parse_size,
};

#[derive(Subcommand)]
pub enum GridCmd {
    /// Run a WASI program (.wasm or .wat) on every input across the network; each unit runs on
    /// R peers and is accepted when a quorum agrees. Waits and writes OUT/<input>.out.
    Run {
        /// The program: a WASI command that reads one unit on stdin and writes its result.
        program: PathBuf,
        /// An input file (one unit each); repeatable.
        #[arg(long = "input", required_unless_present = "inputs")]
        input: Vec<PathBuf>,
        /// A directory whose files are the units (not recursive).
        #[arg(long, conflicts_with = "input")]
        inputs: Option<PathBuf>,
        /// Peers each unit runs on.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=16))]
        replicas: u8,
        /// Agreeing peers needed to accept a result (default: min(2, replicas)).
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=16))]
        quorum: Option<u8>,
        /// Fuel (instructions, roughly) each replica may burn.
        #[arg(long, default_value_t = 10_000_000_000)]
        fuel: u64,
        /// Memory each replica may use (e.g. 64MiB).
        #[arg(long, value_parser = parse_size, default_value = "64MiB")]
        memory: u64,
        /// Seconds a worker has to finish a unit before it is issued to another.
        #[arg(long, default_value_t = 600)]
        deadline: u64,
        /// Pay each worker whose result was accepted this many base units per unit.
        #[arg(long)]
        pay: Option<u64>,
        /// Where to write the results (default: do not write them).
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// Submit and print the job id without waiting.
        #[arg(long)]
        detach: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Jobs this node submitted.
    Jobs(ClientArgs),
    /// One job with every unit.
    Status {
        job: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Write a job's accepted results to DIR/<input>.out.
    Results {
        job: String,
        #[arg(short, long)]
        out: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop a job: open units fail, nothing more is handed out.
    Cancel {
        job: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Workers this node has given units to: reputation, units done, fuel, paid.
    Workers(ClientArgs),
    /// This node as a worker: threads, speed, units run, outcomes held, earned.
    Worker(ClientArgs),
}

pub fn run(cmd: GridCmd) -> Result<()> {
    match cmd {
        GridCmd::Run {
            program,
            input,
            inputs,
            replicas,
            quorum,
            fuel,
            memory,
            deadline,
            pay,
            out,
            detach,
            client,
        } => {
            let mut files = Vec::new();
            if let Some(dir) = inputs {
                let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
                    .with_context(|| format!("cannot read {}", dir.display()))?
                    .filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.is_file())
                    .collect();
                entries.sort();
                if entries.is_empty() {
                    bail!("{} holds no files", dir.display());
                }
                files = entries;
            }
            files.extend(input);
            if !program.is_file() {
                bail!("{} is not a file", program.display());
            }
            let quorum = quorum.unwrap_or(replicas.min(2));
            if quorum > replicas {
                bail!("--quorum {quorum} is more than --replicas {replicas}");
            }
            let files: Vec<PathBuf> = files.iter().map(|p| absolute(p)).collect::<Result<_>>()?;
            let ep = Endpoint::resolve(&client)?;
            let mut body = json!({
                "program": absolute(&program)?,
                "inputs": files,
                "replicas": replicas,
                "quorum": quorum,
                "max_replicas": replicas.saturating_add(3).min(16),
                "fuel": fuel,
                "memory": memory,
                "deadline_secs": deadline,
            });
            if let Some(p) = pay {
                body["pay"] = json!(p);
            }
            let job: Value = ep.post("/v1/grid/run", &body)?;
            let id = job["job"].as_str().unwrap_or_default().to_owned();
            if detach {
                return output::print(client.json, &job, |v| {
                    format!(
                        "job {} submitted: {} unit(s); follow it with `agora grid status {}`",
                        v["job"].as_str().unwrap_or("?"),
                        v["units"],
                        v["job"].as_str().unwrap_or("?")
                    )
                });
            }
            let done = follow(&ep, &id)?;
            if let Some(out) = &out {
                let out = absolute(out)?;
                let _: Value = ep.post(
                    &format!("/v1/grid/jobs/{id}/results"),
                    &json!({ "out": out }),
                )?;
            }
            let summary = summary(&done);
            if client.json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!("{}", human_summary(&done, out.as_deref()));
            }
            let failed = done["failed"].as_u64().unwrap_or(0);
            if failed > 0 {
                for u in done["results"].as_array().into_iter().flatten() {
                    if u["state"] == "failed" {
                        eprintln!(
                            "unit {} failed: {}",
                            u["input"].as_str().unwrap_or("?"),
                            u["error"]
                                .as_str()
                                .unwrap_or("the agreed outcome was an error")
                        );
                    }
                }
                bail!("{failed} unit(s) failed");
            }
            if done["status"] == "cancelled" {
                bail!("the job was cancelled");
            }
            Ok(())
        }
        GridCmd::Jobs(client) => {
            let jobs: Value = Endpoint::resolve(&client)?.get("/v1/grid/jobs")?;
            output::print(client.json, &jobs, |v| {
                let list = v.as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    return "no jobs (submit one with `agora grid run PROGRAM --input FILE`)"
                        .into();
                }
                list.iter()
                    .map(|j| {
                        format!(
                            "{}  {:<9} {}/{} validated, {} failed, paid {}",
                            j["job"].as_str().unwrap_or("?"),
                            j["status"].as_str().unwrap_or("?"),
                            j["validated"],
                            j["units"],
                            j["failed"],
                            j["paid"]
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        GridCmd::Status { job, client } => {
            let v: Value = Endpoint::resolve(&client)?.get(&format!("/v1/grid/jobs/{job}"))?;
            output::print(client.json, &v, |v| {
                let mut s = format!(
                    "job {} {}: {}/{} validated, {} failed, {} open; R={} quorum={} fuel={} paid {}",
                    v["job"].as_str().unwrap_or("?"),
                    v["status"].as_str().unwrap_or("?"),
                    v["validated"],
                    v["units"],
                    v["failed"],
                    v["open"],
                    v["replicas"],
                    v["quorum"],
                    v["fuel"],
                    v["paid"]
                );
                for u in v["results"].as_array().into_iter().flatten() {
                    s.push_str(&format!(
                        "\n  {:<24} {:<8} {} {}",
                        u["input"].as_str().unwrap_or("?"),
                        u["state"].as_str().unwrap_or("?"),
                        u["result_hash"]
                            .as_str()
                            .map(short_id)
                            .unwrap_or_else(|| u["error"].as_str().unwrap_or("").to_owned()),
                        u["peers"]
                            .as_array()
                            .map(|p| p
                                .iter()
                                .map(|p| short_id(p.as_str().unwrap_or("?")))
                                .collect::<Vec<_>>()
                                .join(","))
                            .unwrap_or_default()
                    ));
                }
                s
            })
        }
        GridCmd::Results { job, out, client } => {
            let out = absolute(&out)?;
            let v: Value = Endpoint::resolve(&client)?.post(
                &format!("/v1/grid/jobs/{job}/results"),
                &json!({ "out": out }),
            )?;
            output::print(client.json, &v, |v| {
                let n = v["written"].as_array().map(Vec::len).unwrap_or(0);
                format!("wrote {n} result(s) to {}", out.display())
            })
        }
        GridCmd::Cancel { job, client } => {
            let v: Value = Endpoint::resolve(&client)?
                .post(&format!("/v1/grid/jobs/{job}/cancel"), &json!({}))?;
            output::print(client.json, &v, |v| {
                format!(
                    "job {} cancelled ({} unit(s) had been validated)",
                    v["job"].as_str().unwrap_or("?"),
                    v["validated"]
                )
            })
        }
        GridCmd::Workers(client) => {
            let v: Value = Endpoint::resolve(&client)?.get("/v1/grid/workers")?;
            output::print(client.json, &v, |v| {
                let list = v.as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    return "no workers yet".into();
                }
                list.iter()
                    .map(|w| {
                        format!(
                            "{}  valid {} faults {} missed {} fuel {} paid {}{}",
                            w["peer"].as_str().unwrap_or("?"),
                            w["valid"],
                            w["faults"],
                            w["missed"],
                            w["fuel"],
                            w["paid"],
                            if w["excluded"] == true {
                                "  EXCLUDED"
                            } else {
                                ""
                            }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        GridCmd::Worker(client) => {
            let v: Value = Endpoint::resolve(&client)?.get("/v1/grid/worker")?;
            output::print(client.json, &v, |v| {
                format!(
                    "worker {}: {} thread(s), {} running, {} unit(s) run, {} fuel, {} fuel/s, {} held, earned {}",
                    if v["enabled"] == true {
                        "on"
                    } else {
                        "off (--no-grid)"
                    },
                    v["cpus"],
                    v["running"],
                    v["units_run"],
                    v["fuel_run"],
                    v["fuel_per_sec"],
                    v["held"],
                    v["earned"]
                        .as_u64()
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| "- (no ledger)".into())
                )
            })
        }
    }
}

/// How long `grid run --pay` waits after the last unit for the payments to be final.
const PAY_WAIT: Duration = Duration::from_secs(60);

/// Follows a job until it is over, with a progress bar of validated units on a terminal.
fn follow(ep: &Endpoint, id: &str) -> Result<Value> {
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("grid [{bar:30}] {pos}/{len} units {msg} {elapsed}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar
    });
    let mut ended: Option<Instant> = None;
    loop {
        let v: Value = ep.get(&format!("/v1/grid/jobs/{id}?wait=20"))?;
        if let Some(bar) = &bar {
            bar.set_length(v["units"].as_u64().unwrap_or(0));
            bar.set_position(
                v["validated"].as_u64().unwrap_or(0) + v["failed"].as_u64().unwrap_or(0),
            );
            let failed = v["failed"].as_u64().unwrap_or(0);
            if failed > 0 {
                bar.set_message(format!("({failed} failed)"));
            }
        }
        // Payments go out in batches every few seconds: wait (a bounded time) for the last.
        let owed = v["owed"].as_u64().unwrap_or(0);
        if v["status"] != "running"
            && owed > 0
            && ended.get_or_insert_with(Instant::now).elapsed() < PAY_WAIT
        {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        if v["status"] != "running" {
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            return Ok(v);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The one JSON object `agora grid run --json` prints.
fn summary(v: &Value) -> Value {
    let results: Vec<Value> = v["results"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|u| {
            let mut r = json!({
                "input": u["input"],
                "input_hash": u["input_hash"],
                "result_hash": u["result_hash"],
                "peers": u["peers"],
                "fuel": u["fuel"],
                "state": u["state"],
            });
            if !u["error"].is_null() {
                r["error"] = u["error"].clone();
            }
            r
        })
        .collect();
    json!({
        "job": v["job"],
        "status": v["status"],
        "units": v["units"],
        "validated": v["validated"],
        "failed": v["failed"],
        "paid": v["paid"],
        "results": results,
    })
}

fn human_summary(v: &Value, out: Option<&Path>) -> String {
    let mut s = format!(
        "job {}: {}/{} units validated, {} failed",
        v["job"].as_str().unwrap_or("?"),
        v["validated"],
        v["units"],
        v["failed"]
    );
    if v["pay"].as_u64().unwrap_or(0) > 0 {
        s.push_str(&format!(", paid {}", v["paid"]));
    }
    if let Some(out) = out {
        s.push_str(&format!("; results in {}", out.display()));
    }
    s
}
