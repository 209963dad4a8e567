//! `agora-testbed sandbox-bench`: what running a grid job in Agora's WebAssembly sandbox costs
//! against running the same C program natively, all figures from one run on this machine.
//!
//! The job is the genome workload (`workloads/genome`: Smith-Waterman alignment), built by its
//! `build.sh` natively (`cc -O2`) and for wasm32-wasi (`clang -O2`), on one large generated work
//! unit. Measured:
//!
//! - native: the process from spawn to exit (reading the unit on stdin, writing the result);
//! - wasm with fuel metering (how grid jobs run) and without (benchmarks only): one
//!   `Sandbox::run` of the already validated module, instantiation included;
//! - each as the median of several rounds; the outputs must be byte-identical to native;
//! - the fuel a unit uses and the fuel burnt per second;
//! - the fixed costs: compiling the module (cold cache), loading it from the compile cache
//!   (a new sandbox on the same cache directory) and one run of a unit with no queries
//!   (instantiation, WASI set-up, the program's start-up and exit).
//!
//! Ratios are speeds: native time ÷ sandbox time, so 1.0 is native speed. The target for the
//! metered sandbox is ≥ 0.6 × native, the stretch goal 0.8.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use agora_wasm::{Config, RunInput, RunOutput, Sandbox, ValidatedModule};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// Fuel budget of a timed run: far more than any unit here needs.
const FUEL: u64 = 1 << 50;

pub struct Options {
    /// The checkout holding `workloads/genome`.
    pub repo: PathBuf,
    /// Timed rounds per variant (the median is reported).
    pub rounds: usize,
    /// Reference letters of the unit.
    pub ref_len: usize,
    /// Queries in the unit.
    pub queries: usize,
    /// Letters per query.
    pub qlen: usize,
}

impl Options {
    /// About a second of native work per run (1.07 × 10^9 cells), or a tenth of it.
    pub fn new(repo: PathBuf, quick: bool) -> Self {
        Self {
            repo,
            rounds: if quick { 3 } else { 5 },
            ref_len: if quick { 65_536 } else { 262_144 },
            queries: if quick { 4 } else { 8 },
            qlen: if quick { 400 } else { 512 },
        }
    }
}

/// Removes the scratch directory however the benchmark ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn ms(d: f64) -> f64 {
    (d * 1e5).round() / 100.0
}

fn us(d: f64) -> f64 {
    (d * 1e7).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Letters of every query (records after the first) times the reference's letters.
fn cells(unit: &[u8]) -> u64 {
    let mut lens = Vec::new();
    for line in unit.split(|&b| b == b'\n') {
        if line.first() == Some(&b'>') {
            lens.push(0u64);
        } else if let Some(n) = lens.last_mut() {
            *n += line.iter().filter(|b| b.is_ascii_alphabetic()).count() as u64;
        }
    }
    match lens.split_first() {
        Some((reference, queries)) => reference * queries.iter().sum::<u64>(),
        None => 0,
    }
}

fn run_native(align: &Path, unit: &Path) -> Result<(f64, Vec<u8>)> {
    let input = fs::File::open(unit)?;
    let started = Instant::now();
    let out = Command::new(align)
        .stdin(Stdio::from(input))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot run {}", align.display()))?;
    let secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "native align failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((secs, out.stdout))
}

/// One timed run in the sandbox: (seconds, output).
fn run_wasm(sb: &Sandbox, module: &ValidatedModule, unit: &[u8]) -> Result<(f64, RunOutput)> {
    let input = RunInput::new(unit.to_vec(), FUEL);
    let started = Instant::now();
    let out = sb
        .run(module, input)
        .map_err(|e| anyhow::anyhow!("align.wasm failed in the sandbox: {e}"))?;
    Ok((started.elapsed().as_secs_f64(), out))
}

/// Median seconds of `n` calls of `f`.
fn time_n(n: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        f()?;
        times.push(started.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

fn config(cache: &Path, fuel: bool) -> Config {
    // The longest run here takes seconds; the guard must never be what stops it.
    Config::new(cache)
        .with_wall_guard(Duration::from_secs(3600))
        .with_fuel_metering(fuel)
}

pub fn run(opts: &Options) -> Result<Value> {
    let build_sh = opts.repo.join("workloads/genome/build.sh");
    if !build_sh.exists() {
        bail!(
            "no workloads/genome/build.sh under {} (pass --repo with an agora checkout)",
            opts.repo.display()
        );
    }
    let scratch =
        Scratch(std::env::temp_dir().join(format!("agora-sandbox-bench-{}", std::process::id())));
    let bin = scratch.0.join("bin");
    eprintln!("building the genome workload");
    let out = Command::new("bash")
        .arg(&build_sh)
        .arg(&bin)
        .stdin(Stdio::null())
        .output()
        .context("cannot run bash")?;
    if !out.status.success() {
        bail!(
            "workloads/genome/build.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let units = scratch.0.join("units");
    let status = Command::new(bin.join("gen"))
        .args(["1", "1"])
        .arg(&units)
        .args([
            opts.ref_len.to_string(),
            opts.queries.to_string(),
            opts.qlen.to_string(),
        ])
        .status()
        .context("cannot run gen")?;
    if !status.success() {
        bail!("gen failed");
    }
    let unit_path = units.join("unit-000.fa");
    let unit = fs::read(&unit_path)?;
    let wasm = fs::read(bin.join("align.wasm"))?;
    let cells = cells(&unit);

    // Fixed costs: compile (fresh cache directory each time), cache hit, empty run.
    let caches = scratch.0.join("caches");
    let mut n = 0;
    let compile = time_n(3, || {
        n += 1;
        let sb = Sandbox::new(config(&caches.join(n.to_string()), true))?;
        sb.validate(&wasm)?;
        Ok(())
    })?;
    let metered = Sandbox::new(config(&caches.join("1"), true))?;
    let cache_hit = time_n(5, || {
        metered.validate(&wasm)?;
        Ok(())
    })?;
    if metered.cache_stats().compiled != 0 {
        bail!("the compile cache missed: {:?}", metered.cache_stats());
    }
    let module = metered.validate(&wasm)?;
    let empty_unit = b">r\nACGT\n".to_vec();
    let empty_run = time_n(500, || {
        metered
            .run(&module, RunInput::new(empty_unit.clone(), FUEL))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    })?;
    let unmetered = Sandbox::new(config(&caches.join("unmetered"), false))?;
    let module_off = unmetered.validate(&wasm)?;

    // The unit: native, metered, unmetered in turn, so that a change in the machine's load
    // during the run touches all three alike.
    eprintln!(
        "{} rounds of native, metered and unmetered align on {:.2} × 10^9 cells",
        opts.rounds,
        cells as f64 / 1e9
    );
    let (mut native, mut fuel_on, mut fuel_off) = (Vec::new(), Vec::new(), Vec::new());
    let mut fuel_used = 0;
    for _ in 0..opts.rounds {
        let (secs, native_out) = run_native(&bin.join("align"), &unit_path)?;
        native.push(secs);
        let (secs, on) = run_wasm(&metered, &module, &unit)?;
        fuel_on.push(secs);
        let (secs, off) = run_wasm(&unmetered, &module_off, &unit)?;
        fuel_off.push(secs);
        if on.stdout != native_out || off.stdout != native_out {
            bail!(
                "the sandbox's output differs from native:\nnative:\n{}\nsandbox:\n{}",
                String::from_utf8_lossy(&native_out),
                String::from_utf8_lossy(&on.stdout)
            );
        }
        if fuel_used != 0 && on.fuel_used != fuel_used {
            bail!(
                "fuel differs between runs: {fuel_used} and {}",
                on.fuel_used
            );
        }
        fuel_used = on.fuel_used;
    }
    let samples = |xs: &[f64]| xs.iter().map(|x| ms(*x)).collect::<Vec<_>>();
    let samples_ms = json!({"native": samples(&native), "wasm_fuel": samples(&fuel_on),
                            "wasm_nofuel": samples(&fuel_off)});
    let (native, fuel_on, fuel_off) = (median(native), median(fuel_on), median(fuel_off));

    Ok(json!({
        "unit": {"ref_len": opts.ref_len, "queries": opts.queries, "qlen": opts.qlen,
                 "bytes": unit.len(), "cells": cells},
        "rounds": opts.rounds,
        "samples_ms": samples_ms,
        "native_ms": ms(native),
        "wasm_fuel_ms": ms(fuel_on),
        "wasm_nofuel_ms": ms(fuel_off),
        "native_gcups": round3(cells as f64 / native / 1e9),
        "wasm_fuel_gcups": round3(cells as f64 / fuel_on / 1e9),
        "wasm_fuel_vs_native": round3(native / fuel_on),
        "wasm_nofuel_vs_native": round3(native / fuel_off),
        "fuel_on_vs_off": round3(fuel_off / fuel_on),
        "fuel_per_unit": fuel_used,
        "fuel_per_s": (fuel_used as f64 / fuel_on).round(),
        "compile_cold_ms": ms(compile),
        "cache_hit_ms": ms(cache_hit),
        "empty_run_us": us(empty_run),
        "wasm_bytes": wasm.len(),
    }))
}

/// Prints the result: the JSON object, or a table like `agora-testbed bench`'s.
pub fn print(v: &Value, json_out: bool) {
    if json_out {
        println!("{v}");
        return;
    }
    println!("| figure | value | ratio |\n|---|---|---|");
    for (a, b, c) in rows(v) {
        println!("| {a} | {b} | {c} |");
    }
}

/// The figures as rows of `agora-testbed bench`'s table: (figure, value, ratio).
pub fn rows(v: &Value) -> Vec<(String, String, String)> {
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    vec![
        (
            "genome align (Smith-Waterman) native, cc -O2".into(),
            format!("{:.0} ms", f("native_ms")),
            format!(
                "{:.2} × 10^9 cells, {:.2} GCUPS",
                v["unit"]["cells"].as_f64().unwrap_or(f64::NAN) / 1e9,
                f("native_gcups")
            ),
        ),
        (
            "same in the wasm sandbox, fuel metered".into(),
            format!("{:.0} ms", f("wasm_fuel_ms")),
            format!(
                "{:.2} × native (target ≥ 0.6, stretch 0.8)",
                f("wasm_fuel_vs_native")
            ),
        ),
        (
            "same, fuel metering off (benchmark only)".into(),
            format!("{:.0} ms", f("wasm_nofuel_ms")),
            format!(
                "{:.2} × native; metering costs {:.0}% (on = {:.2} × off)",
                f("wasm_nofuel_vs_native"),
                (1.0 - f("fuel_on_vs_off")) * 100.0,
                f("fuel_on_vs_off")
            ),
        ),
        (
            "fuel per unit / per second".into(),
            format!("{} / {:.3e}", v["fuel_per_unit"], f("fuel_per_s")),
            String::new(),
        ),
        (
            "wasm compile cold / cache hit / empty run".into(),
            format!(
                "{:.1} ms / {:.2} ms / {:.0} µs",
                f("compile_cold_ms"),
                f("cache_hit_ms"),
                f("empty_run_us")
            ),
            format!(
                "{} bytes of wasm; empty run = instantiate + WASI + start-up",
                v["wasm_bytes"]
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_reference_letters_times_query_letters() {
        assert_eq!(cells(b">r x\nACGT\nAC\n>q1\nAAA\n>q2\nA C\r\n"), 6 * 5);
        assert_eq!(cells(b">r\nACGT\n"), 0);
        assert_eq!(cells(b""), 0);
    }

    #[test]
    fn the_median_is_the_middle_sample() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![5.0]), 5.0);
    }
}
