//! `agora-testbed bench`: runs the benchmark of every capability that exists (the scripts in
//! `bench/`), each of which measures the machine's own limits in the same run, and prints one
//! table of figures with their ratios. The README's performance tables come from it.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// The last line of a script's output that parses as a JSON object.
fn last_json(text: &str) -> Option<Value> {
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .find(Value::is_object)
}

fn run_script(dir: &Path, program: &str, args: &[String], env: &[(&str, String)]) -> Result<Value> {
    eprintln!("running {program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{program} failed: {}\n{}",
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    last_json(&text).with_context(|| format!("{program} printed no JSON result:\n{text}"))
}

/// Runs a command to completion in `dir` (its output is not a result).
fn run_command(dir: &Path, program: &str, args: &[&str]) -> Result<()> {
    eprintln!("running {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cannot run {program}"))?;
    if !status.success() {
        bail!("{program} {} failed: {status}", args.join(" "));
    }
    Ok(())
}

/// A number as is; a list of samples as `min–max`.
fn span(v: &Value) -> String {
    match v.as_array() {
        Some(samples) => {
            let mut xs: Vec<f64> = samples.iter().filter_map(Value::as_f64).collect();
            xs.sort_by(f64::total_cmp);
            match (xs.first(), xs.last()) {
                (Some(lo), Some(hi)) if lo == hi => format!("{lo}"),
                (Some(lo), Some(hi)) => format!("{lo}–{hi}"),
                _ => "–".into(),
            }
        }
        None => v.to_string(),
    }
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// Markers around the generated table in the README's performance section.
pub const README_BEGIN: &str = "<!-- agora-testbed bench: begin -->";
pub const README_END: &str = "<!-- agora-testbed bench: end -->";

/// `readme` with the text between the markers replaced by `table`.
pub fn replace_readme_section(readme: &str, table: &str) -> Result<String> {
    let (Some(begin), Some(end)) = (readme.find(README_BEGIN), readme.find(README_END)) else {
        bail!("the README has no `{README_BEGIN}` … `{README_END}` markers");
    };
    if end < begin {
        bail!("the README's bench markers are in the wrong order");
    }
    let head = &readme[..begin + README_BEGIN.len()];
    let tail = &readme[end..];
    Ok(format!("{head}\n{}\n{tail}", table.trim_end()))
}

pub fn run(
    agora: &Path,
    repo: &Path,
    quick: bool,
    json_out: bool,
    readme: Option<&Path>,
) -> Result<()> {
    let bench = repo.join("bench");
    if !bench.join("files.sh").exists() {
        bail!(
            "no bench/ scripts under {} (pass --repo with the path of an agora checkout)",
            repo.display()
        );
    }
    let bin = agora.display().to_string();
    let size = if quick { "256" } else { "1024" }.to_owned();
    let basics = run_script(
        repo,
        "bash",
        &[
            bench.join("node-basics.sh").display().to_string(),
            bin.clone(),
        ],
        &[],
    )?;
    let files = run_script(
        repo,
        "bash",
        &[bench.join("files.sh").display().to_string(), bin.clone()],
        &[("SIZE_MIB", size.clone())],
    )?;
    // The transport alone with each cipher, three times each, interleaved, right after the
    // transfers it bounds.
    let mib: u64 = if quick { 256 } else { 1024 };
    let mut tls = Vec::new();
    let mut noise = Vec::new();
    for _ in 0..3 {
        for (security, runs) in [
            (agora_net::Security::TlsNoise, &mut tls),
            (agora_net::Security::NoiseOnly, &mut noise),
        ] {
            eprintln!("running agora-testbed transport-bench --mib {mib} --security {security}");
            runs.push(crate::transport_bench::run(mib, security)?);
        }
    }
    let median = |mut runs: Vec<Value>| {
        runs.sort_by(|a, b| f(&a["mib_s"]).total_cmp(&f(&b["mib_s"])));
        let samples: Vec<Value> = runs.iter().map(|r| r["mib_s"].clone()).collect();
        let mut m = runs.swap_remove(1);
        m["samples"] = json!(samples);
        m
    };
    let (tls, noise) = (median(tls), median(noise));
    let transport = json!({
        "tls": tls,
        "noise": noise,
        "get_vs_transport": (f(&files["get"]) / f(&tls["mib_s"]) * 100.0).round() / 100.0,
        "tls_vs_noise": (f(&tls["mib_s"]) / f(&noise["mib_s"]) * 100.0).round() / 100.0,
    });
    let swarm = run_script(
        repo,
        "bash",
        &[bench.join("swarm.sh").display().to_string(), bin.clone()],
        &[("SIZE_MIB", if quick { "64" } else { "256" }.into())],
    )?;
    let messages = if quick { "760" } else { "1520" };
    let chat = run_script(
        repo,
        "python3",
        &[
            bench.join("chat.py").display().to_string(),
            "--bin".into(),
            bin,
            "--messages".into(),
            messages.into(),
        ],
        &[],
    )?;
    eprintln!("running the ledger benchmark");
    let ledger = crate::ledger_bench::run(&crate::ledger_bench::Options {
        agora: agora.to_owned(),
        payments: if quick { 100 } else { 300 },
        accounts: 1000,
        txs_per_account: if quick { 10 } else { 30 },
    })?;
    eprintln!("running the market benchmark");
    let market = crate::market_bench::run(&crate::market_bench::Options {
        agora: agora.to_owned(),
        quick,
    })?;
    eprintln!("running the sandbox benchmark");
    let sandbox =
        crate::sandbox_bench::run(&crate::sandbox_bench::Options::new(repo.to_owned(), quick))?;
    eprintln!("running the docs benchmark");
    let docs = crate::docs_bench::run(&crate::docs_bench::Options::new(quick))?;
    if crate::docs_bench::failed(&docs) {
        eprintln!("the docs benchmark failed in part; its errors are in the table");
    }
    let grid = run_script(
        repo,
        "bash",
        &[
            bench.join("grid.sh").display().to_string(),
            agora.display().to_string(),
            if quick { "8" } else { "16" }.into(),
        ],
        &[],
    )?;
    // The web dashboard in headless Chromium (tests/browser): its pinned packages first.
    let browser = repo.join("tests/browser");
    if !browser.join("node_modules").exists() {
        run_command(
            &browser,
            "npm",
            &["ci", "--no-audit", "--no-fund", "--loglevel=error"],
        )?;
    }
    let dashboard = run_script(
        &browser,
        "node",
        &["bench.mjs".into()],
        &[
            ("AGORA_BIN", agora.display().to_string()),
            ("BENCH_RUNS", if quick { "1" } else { "3" }.into()),
        ],
    )?;
    // agora against aria2c on shaped links (the `swarm-wan` scenario: network namespaces, so
    // root; without them the row says why).
    let swarm_wan = match crate::net::check_capabilities() {
        Ok(()) => {
            let exe = std::env::current_exe()?.display().to_string();
            let args = [
                "run".to_owned(),
                "swarm-wan".into(),
                "--json".into(),
                "--agora".into(),
                agora.display().to_string(),
            ];
            run_script(repo, &exe, &args, &[])?["figures"].clone()
        }
        Err(why) => json!({ "skipped": why }),
    };
    let all = json!({"node": basics, "files": files, "transport": transport, "swarm": swarm, "swarm_wan": swarm_wan, "chat": chat, "ledger": ledger, "market": market, "sandbox": sandbox, "grid": grid, "docs": docs, "dashboard": dashboard});
    if json_out {
        println!("{all}");
        return Ok(());
    }
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut row = |a: &str, b: String, c: String| rows.push((a.into(), b, c));
    let b = &all["node"];
    row(
        "node start, spawn → API ready",
        format!("{} ms", span(&b["start_ms"])),
        String::new(),
    );
    row(
        "idle RSS / with 4 peers",
        format!(
            "{} / {} MiB",
            b["idle_rss_mib"][0], b["rss_with_peers_mib"][0]
        ),
        String::new(),
    );
    row(
        "connect TCP / QUIC (incl. CLI process)",
        format!(
            "{} / {} ms",
            span(&b["connect_tcp_ms"]),
            span(&b["connect_quic_ms"])
        ),
        String::new(),
    );
    let fl = &all["files"];
    row(
        "machine: b3sum / O_DIRECT write / iperf3",
        format!("{} / {} / {} MiB/s", fl["b3sum"], fl["disk"], fl["iperf3"]),
        format!(
            "limit {} MiB/s = min(these, the ceiling below); disk: median of 5 rounds",
            fl["limit"]
        ),
    );
    row(
        "encrypted + verified transfer ceiling",
        format!("{} MiB/s", fl["ceiling"]),
        format!(
            "{} cores ÷ CPU per GiB of TCP ({} s) + {} ×2 + BLAKE3; negotiated {} (AES-128-GCM {} MiB/s, ChaCha20-Poly1305 {} MiB/s)",
            fl["cores"],
            fl["tcp_cpu_s_per_gib"],
            fl["cipher"].as_str().unwrap_or("?"),
            fl["security"].as_str().unwrap_or("?"),
            fl["aes"],
            fl["chacha"]
        ),
    );
    row(
        "agora share (BLAKE3 + outboard)",
        format!("{} MiB/s", fl["share"]),
        format!("{:.2} × b3sum (target ≥ 0.8)", f(&fl["share_ratio"])),
    );
    row(
        "agora get node → node, verified, on disk",
        format!("{} MiB/s", fl["get"]),
        format!(
            "{:.2} × the limit (target ≥ 0.6); {:.2} × the ceiling",
            f(&fl["get_ratio"]),
            f(&fl["get_vs_ceiling"])
        ),
    );
    // A rate, or "not run" where the script left it out (0).
    let mib_s = |v: &Value| match v.as_u64().unwrap_or(0) {
        0 => "not run".to_string(),
        x => format!("{x} MiB/s"),
    };
    row(
        "agora get on a node already fetching the blob as a replica",
        mib_s(&fl["replica_get"]),
        format!(
            "{:.2} × a plain get (one round, timed from the share's end; the get must not wait \
             behind the replica fetch)",
            f(&fl["replica_get_vs_get"])
        ),
    );
    let tr = &all["transport"];
    for (name, key) in [("TLS 1.3", "tls"), ("Noise", "noise")] {
        let t = &tr[key];
        row(
            &format!("libp2p transport alone: raw stream, TCP + {name} + Yamux"),
            format!("{} MiB/s", t["mib_s"]),
            format!(
                "median of 3 ({}), negotiated {}; CPU per GiB sender {} s, receiver {} s",
                span(&t["samples"]),
                t["security"].as_str().unwrap_or("?"),
                t["sender_cpu_s_per_gib"],
                t["receiver_cpu_s_per_gib"],
            ),
        );
    }
    row(
        "agora get vs the transport alone (TLS)",
        format!("{:.2} ×", f(&tr["get_vs_transport"])),
        format!("TLS = {:.2} × Noise", f(&tr["tls_vs_noise"])),
    );
    row(
        "iroh sendme, same file",
        mib_s(&fl["sendme"]),
        match fl["vs_sendme"].as_f64() {
            Some(x) => format!("agora = {x:.2} × sendme (target ≥ 1.5)"),
            None => "no sendme binary (SENDME=path) or not root".into(),
        },
    );
    row(
        "peak RSS seeder / downloader",
        format!(
            "{} / {} MiB",
            fl["rss_seeder_mib"], fl["rss_downloader_mib"]
        ),
        String::new(),
    );
    let sw = &all["swarm"];
    row(
        "agora: 1 seeder → 8 downloaders",
        format!(
            "{} s for {} MiB each (median downloader {} s)",
            sw["seconds"], sw["size_mib"], sw["median_downloader_s"]
        ),
        format!(
            "seeder uploads {:.2} × the file; medians of {} rounds",
            f(&sw["seeder_upload_x"]),
            sw["rounds"]
        ),
    );
    let bt = &sw["aria2"];
    row(
        "aria2c + opentracker, same swarm, interleaved",
        format!(
            "{} s (median downloader {} s)",
            bt["seconds"], bt["median_downloader_s"]
        ),
        format!(
            "seeder uploads {:.2} × the file; agora = {:.2} × as fast in total, {:.2} × per median downloader (target: > 1, seeder ≤ aria2c's)",
            f(&bt["seeder_upload_x"]),
            f(&sw["vs_aria2"]),
            f(&sw["vs_aria2_downloader"])
        ),
    );
    let wan = &all["swarm_wan"];
    if let Some(why) = wan["skipped"].as_str() {
        row(
            "swarm-wan: agora vs aria2c on shaped links",
            "not run".into(),
            why.into(),
        );
    } else {
        for (name, key) in [("agora", "agora"), ("aria2c", "aria2")] {
            let c = &wan[key];
            row(
                &format!("swarm-wan, {name}: 1 → 8 over 10–100 Mbit/s, 20–150 ms, 0–1 % loss"),
                format!(
                    "{} s (median downloader {} s) for {} MiB",
                    c["seconds"], c["median_downloader_s"], wan["file_mib"]
                ),
                format!("seeder uploads {:.2} × the file", f(&c["seeder_upload_x"])),
            );
        }
        row(
            "swarm-wan: agora vs aria2c",
            format!(
                "{:.2} × as fast in total, {:.2} × per median downloader",
                f(&wan["vs_aria2"]),
                f(&wan["vs_aria2_downloader"])
            ),
            "target > 1, seeder upload ≤ aria2c's".into(),
        );
        let left = &wan["seeder_leaves"];
        row(
            "swarm-wan: seeder leaves at 1.5 ×",
            format!(
                "agora {}/{} complete, aria2c {}/{}",
                left["agora"]["completed"],
                left["agora"]["of"],
                left["aria2"]["completed"],
                left["aria2"]["of"]
            ),
            "every downloader should complete from the others".into(),
        );
    }
    let c = &all["chat"];
    row(
        "machine: loopback RTT / fdatasync p50",
        format!(
            "{:.3} / {:.3} ms",
            f(&c["loopback_rtt_ms"]["p50"]),
            f(&c["fdatasync_ms"]["p50"])
        ),
        String::new(),
    );
    row(
        "DM latency p50 / p99 (send → receipt)",
        format!(
            "{:.2} / {:.2} ms",
            f(&c["dm_latency_ms"]["p50"]),
            f(&c["dm_latency_ms"]["p99"])
        ),
        format!(
            "{:.1} × (RTT + 2 fdatasync)",
            f(&c["dm_latency_ms"]["vs_durable_floor"])
        ),
    );
    row(
        "DMs sustained, 8 sender nodes → 1 recipient",
        format!("{:.0} msgs/s", f(&c["dm_sustained_per_s"])),
        "each sender within a peer's budget (bursts of 200, then 20/s)".into(),
    );
    row(
        "room fan-out p50 / p99",
        format!(
            "{:.1} / {:.1} ms ({} nodes)",
            f(&c["room_fanout_ms"]["p50"]),
            f(&c["room_fanout_ms"]["p99"]),
            c["room_fanout_ms"]["nodes"]
        ),
        format!(
            "{}/{} delivered",
            c["room_fanout_ms"]["delivered"], c["room_fanout_ms"]["expected"]
        ),
    );
    let l = &all["ledger"];
    row(
        "ledger time to finality p50 / p99 (4 validators)",
        format!(
            "{:.0} / {:.0} ms",
            f(&l["finality_ms"]["node_p50"]),
            f(&l["finality_ms"]["node_p99"])
        ),
        "target p50 < 500 ms; XRPL closes every 3–5 s".into(),
    );
    row(
        "ledger sustained transfers, signatures verified",
        format!("{:.0} tx/s", f(&l["throughput"]["tx_per_s"])),
        format!(
            "{:.2} × the signature-check ceiling ({:.0} tx/s: {} cores × {:.0} batch-verified/s \
             ÷ 4 validators; single verify_strict {:.0}/s); target ≥ 5,000 tx/s",
            f(&l["vs_ceiling"]),
            f(&l["ceiling_tx_per_s"]),
            l["cores"],
            f(&l["batch_verify_per_s_one_core"]),
            f(&l["ed25519_verify_per_s_one_core"])
        ),
    );
    for (a, b, c) in crate::market_bench::rows(&all["market"]) {
        row(&a, b, c);
    }
    for (a, b, c) in crate::sandbox_bench::rows(&all["sandbox"]) {
        row(&a, b, c);
    }
    let g = &all["grid"];
    row(
        "grid: genome job on 4 nodes (3 workers), R = 2",
        format!(
            "{:.2} units/s ({} units)",
            f(&g["grid_units_per_s"]),
            g["units"]
        ),
        format!(
            "{:.2} × ideal ({:.2} units/s = native {:.2}/s × {} cores ÷ R); target ≥ 0.7",
            f(&g["ratio_to_ideal"]),
            f(&g["ideal_units_per_s"]),
            f(&g["native_units_per_s"]),
            g["cores"]
        ),
    );
    row(
        "grid: scheduling overhead, tiny units",
        format!("{:.1} ms per unit", f(&g["tiny_ms_per_unit"])),
        format!(
            "{} echo units, R = 2: fetch, run, commit, reveal, quorum",
            g["tiny_units"]
        ),
    );
    for (a, b, c) in crate::docs_bench::rows(&all["docs"]) {
        row(&a, b, c);
    }
    let d = &all["dashboard"];
    let cold: Vec<f64> = d["cold_load"]
        .as_object()
        .map(|pages| pages.values().map(|p| f(&p["median_ms"])).collect())
        .unwrap_or_default();
    let (lo, hi) = cold
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    row(
        "dashboard: cold load of each page to usable (Chromium, loopback)",
        format!("{lo}–{hi} ms (per-page medians)"),
        format!("slowest {hi} ms (target ≤ 300)"),
    );
    row(
        "dashboard: a direct message to the other node's open page",
        format!("{} ms", d["event_to_dom"]["dm_sent_to_dom_ms"]),
        format!(
            "SSE event → DOM {} ms (target ≤ 500)",
            d["event_to_dom"]["sse_event_to_dom_ms"]
        ),
    );
    row(
        "dashboard: an idle open page's CPU on the node",
        format!(
            "+{} % (ledger page on a ledger node: +{} %)",
            d["idle_cpu_percent"]["dashboard_cost_plain"],
            d["idle_cpu_percent"]["dashboard_cost_ledger"]
        ),
        "target ≤ 1 %".into(),
    );
    row(
        "dashboard: files table of 10,000 entries, request → drawn",
        format!("{} ms", d["files_table"]["table_from_request_to_drawn_ms"]),
        "target ≤ 200 ms".into(),
    );
    let mut table = String::from("| figure | value | ratio |\n|---|---|---|\n");
    for (a, b, c) in rows {
        table.push_str(&format!("| {a} | {b} | {c} |\n"));
    }
    print!("{table}");
    if let Some(path) = readme {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let date = std::process::Command::new("date")
            .arg("+%Y-%m-%d")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let generated = format!(
            "Produced by `agora-testbed bench{}` on {date} (release build, this machine, every ratio from the same run):\n\n{table}",
            if quick { " --quick" } else { "" }
        );
        std::fs::write(path, replace_readme_section(&text, &generated)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote the table into {}", path.display());
    }
    Ok(())
}

/// Where the repository (and its `bench/` scripts) is: this crate's checkout by default.
pub fn default_repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_table_is_replaced_between_the_markers_only() {
        let readme = format!("# A\nbefore\n{README_BEGIN}\nold\n{README_END}\nafter\n");
        let out = replace_readme_section(&readme, "| new |\n").unwrap();
        assert_eq!(
            out,
            format!("# A\nbefore\n{README_BEGIN}\n| new |\n{README_END}\nafter\n")
        );
        assert_eq!(
            replace_readme_section(&out, "| new |").unwrap(),
            out,
            "idempotent"
        );
        assert!(replace_readme_section("no markers", "x").is_err());
        assert!(replace_readme_section(&format!("{README_END}{README_BEGIN}"), "x").is_err());
    }

    #[test]
    fn samples_show_as_their_range() {
        assert_eq!(span(&serde_json::json!([21, 13, 16])), "13–21");
        assert_eq!(span(&serde_json::json!([8, 8])), "8");
        assert_eq!(span(&serde_json::json!(46)), "46");
    }

    #[test]
    fn the_last_json_line_of_a_script_is_its_result() {
        let text = "progress 1\n{\"a\": 1}\nnoise\n{\"b\": 2}\n";
        assert_eq!(last_json(text), Some(serde_json::json!({"b": 2})));
        assert_eq!(last_json("no json here\n"), None);
    }
}
