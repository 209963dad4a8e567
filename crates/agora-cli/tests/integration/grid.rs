//! Grid computing across real `agora` processes: the genome workload on a 5-node devnet compared
//! with the native program, a worker killed mid-unit, a submitter restarted mid-job or away
//! while its workers finish, and the sandbox's limits seen from `agora grid run`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;

use crate::common::{Node, WAIT, free_port, log_tail, stderr, stdout, wait_connected, wait_for};

/// How long to wait for workers to take and finish units: workers measure their speed and run
/// at idle priority, so on a 2-core machine busy with other tests they start late.
const BUSY_WAIT: Duration = Duration::from_secs(90);

/// Builds the genome workload (C, compiled to wasm32-wasi and natively) into `out`.
fn build_workload(out: &Path) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../workloads/genome/build.sh");
    let o = Command::new("bash")
        .arg(&script)
        .arg(out)
        .output()
        .expect("run build.sh");
    assert!(
        o.status.success(),
        "building the workload failed (CI installs clang lld wasi-libc libclang-rt-dev-wasm32):\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out.to_owned()
}

/// `n` nodes; every other node connected to the first. Extra args for all.
fn nodes(root: &Path, n: usize, extra: &[&str]) -> Vec<Node> {
    let nodes: Vec<Node> = (0..n)
        .map(|i| Node::start(&root.join(format!("n{i}")), extra))
        .collect();
    for other in &nodes[1..] {
        let o = other.cli(&["connect", &nodes[0].addrs[0]]);
        assert!(o.status.success(), "{}", stderr(&o));
        wait_connected(&nodes[0], other);
    }
    nodes
}

fn run_json(node: &Node, args: &[&str]) -> (std::process::Output, Value) {
    let mut all = vec!["grid", "run", "--json"];
    all.extend_from_slice(args);
    let o = node.cli(&all);
    let v = serde_json::from_str(&stdout(&o)).unwrap_or(Value::Null);
    (o, v)
}

fn worker(node: &Node) -> Value {
    let (status, v) = node.get("/v1/grid/worker");
    assert_eq!(status, 200, "{v}");
    v
}

/// Submits `program` over the files of `dir` without waiting; returns the job id.
fn submit_detached(node: &Node, program: &Path, dir: &Path) -> String {
    let sub = node.cli(&[
        "grid",
        "run",
        program.to_str().unwrap(),
        "--inputs",
        dir.to_str().unwrap(),
        "--detach",
        "--json",
    ]);
    assert!(sub.status.success(), "{}", stderr(&sub));
    let job: Value = serde_json::from_str(&stdout(&sub)).unwrap();
    job["job"].as_str().unwrap().to_owned()
}

/// A program that spins `iterations` times (fuel, not time) and then echoes its input.
fn slow_echo(dir: &Path, iterations: u64) -> PathBuf {
    let p = dir.join("slow.wat");
    std::fs::write(
        &p,
        format!(
            r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "_start")
    (local $n i32) (local $i i64)
    (loop $spin
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br_if $spin (i64.lt_u (local.get $i) (i64.const {iterations}))))
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 60000))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (local.set $n (i32.load (i32.const 8)))
    (i32.store (i32.const 16) (i32.const 1024))
    (i32.store (i32.const 20) (local.get $n))
    (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))))"#
        ),
    )
    .unwrap();
    p
}

fn inputs(dir: &Path, n: usize) -> PathBuf {
    let d = dir.join("inputs");
    std::fs::create_dir_all(&d).unwrap();
    for i in 0..n {
        std::fs::write(d.join(format!("u{i}.txt")), format!("unit {i}\n")).unwrap();
    }
    d
}

#[test]
fn a_genome_job_on_a_five_node_devnet_matches_the_native_program() {
    let root = tempfile::tempdir().unwrap();
    let bin = build_workload(&root.path().join("bin"));
    let units = root.path().join("units");
    let o = Command::new(bin.join("gen"))
        .args(["7", "20"])
        .arg(&units)
        .args(["16384", "8", "200"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let net = nodes(root.path(), 5, &[]);
    let out = root.path().join("out");
    let (o, v) = run_json(
        &net[0],
        &[
            bin.join("align.wasm").to_str().unwrap(),
            "--inputs",
            units.to_str().unwrap(),
            "--replicas",
            "2",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}\n{}", stderr(&o), stdout(&o));
    assert_eq!(v["units"], 20);
    assert_eq!(v["validated"], 20);
    assert_eq!(v["failed"], 0);
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 20);
    for r in results {
        let name = r["input"].as_str().unwrap();
        // Byte-identical to the same C program compiled for this machine.
        let native = Command::new(bin.join("align"))
            .stdin(std::fs::File::open(units.join(name)).unwrap())
            .output()
            .unwrap();
        assert!(native.status.success());
        assert!(!native.stdout.is_empty());
        let got = std::fs::read(out.join(format!("{name}.out"))).unwrap();
        assert_eq!(got, native.stdout, "unit {name}");
        assert_eq!(
            r["result_hash"].as_str().unwrap(),
            blake3::hash(&native.stdout).to_hex().as_str()
        );
        // Agreed by two distinct peers, neither of them the submitter.
        let peers: Vec<&str> = r["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert_eq!(peers.len(), 2, "{r}");
        assert_ne!(peers[0], peers[1]);
        assert!(!peers.contains(&net[0].peer_id.as_str()));
        assert!(r["fuel"].as_u64().unwrap() > 0);
    }
    // `grid jobs`, `grid status` and `grid workers` agree.
    let job = v["job"].as_str().unwrap();
    let o = net[0].cli(&["grid", "jobs"]);
    assert!(stdout(&o).contains(job), "{}", stdout(&o));
    let o = net[0].cli(&["grid", "status", job, "--json"]);
    let status: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(status["validated"], 20);
    let (_, workers) = net[0].get("/v1/grid/workers");
    let valid: u64 = workers
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["valid"].as_u64().unwrap())
        .sum();
    assert_eq!(valid, 40, "{workers}");
    let (_, metrics) = net[0].request("GET", "/metrics", Some(&net[0].token.clone()), None);
    assert!(
        metrics.contains("agora_grid_units_validated 20"),
        "{metrics}"
    );
}

#[test]
fn a_worker_killed_mid_unit_has_its_unit_issued_again() {
    let root = tempfile::tempdir().unwrap();
    let mut net = nodes(root.path(), 4, &[]);
    let program = slow_echo(root.path(), 300_000_000);
    let dir = inputs(root.path(), 3);
    let job = submit_detached(&net[0], &program, &dir);
    // Kill -9 the first worker seen running its first units (one that has delivered nothing
    // yet: an outcome it delivered before dying stands, and would be among the results).
    let victim = wait_for("a worker running its first unit", BUSY_WAIT, || {
        (1..4).find(|&i| {
            let w = worker(&net[i]);
            w["executing"].as_u64() >= Some(1) && w["units_run"].as_u64() == Some(0)
        })
    });
    let victim_id = net[victim].peer_id.clone();
    net[victim].kill9();
    let done = wait_for("the job to finish", Duration::from_secs(120), || {
        let (_, v) = net[0].get(&format!("/v1/grid/jobs/{job}?wait=5"));
        (v["status"] != "running").then_some(v)
    });
    assert_eq!(done["validated"], 3, "{done}");
    for u in done["results"].as_array().unwrap() {
        assert!(
            !u["peers"]
                .as_array()
                .unwrap()
                .contains(&Value::from(victim_id.clone())),
            "{u}"
        );
    }
    let (_, workers) = net[0].get("/v1/grid/workers");
    let w = workers
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["peer"] == victim_id.as_str())
        .unwrap();
    assert!(w["missed"].as_u64().unwrap() >= 1, "{w}");
}

#[test]
fn a_restarted_submitter_resumes_and_one_away_gets_results_on_return() {
    let root = tempfile::tempdir().unwrap();
    // The submitter keeps its address across the restart, as a daemon with a configured port
    // does: the workers find it again there.
    let listen = vec![format!("/ip4/127.0.0.1/tcp/{}", free_port())];
    let mut net = vec![Node::start_listening(&root.path().join("n0"), &listen, &[])];
    for i in 1..3 {
        let n = Node::start(&root.path().join(format!("n{i}")), &[]);
        let o = n.cli(&["connect", &net[0].addrs[0]]);
        assert!(o.status.success(), "{}", stderr(&o));
        wait_connected(&net[0], &n);
        net.push(n);
    }
    let program = slow_echo(root.path(), 200_000_000);
    let dir = inputs(root.path(), 4);
    let job = submit_detached(&net[0], &program, &dir);
    // Both workers have taken work (computing now, or holding a finished outcome: one may
    // finish its unit before the other starts): the submitter goes away (kill -9, mid-job).
    let busy = |w: &Value| w["executing"] == 1 || w["held"].as_u64() >= Some(1);
    wait_for("both workers computing", BUSY_WAIT, || {
        (busy(&worker(&net[1])) && busy(&worker(&net[2]))).then_some(())
    });
    net[0].kill9();
    // The workers finish and hold their outcomes for it.
    wait_for("outcomes held for the absent submitter", BUSY_WAIT, || {
        (worker(&net[1])["held"].as_u64() >= Some(1) && worker(&net[2])["held"].as_u64() >= Some(1))
            .then_some(())
    });
    let dir0 = net[0].dir.clone();
    net[0] = Node::start_listening(&dir0, &listen, &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let done = loop {
        let (_, v) = net[0].get(&format!("/v1/grid/jobs/{job}?wait=5"));
        if v["status"] != "running" {
            break v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the resumed job did not finish: {v}\nworkers: {} {}\nsubmitter:\n{}\nworker 1:\n{}\nworker 2:\n{}",
            worker(&net[1]),
            worker(&net[2]),
            log_tail(&net[0].dir, 40),
            log_tail(&net[1].dir, 40),
            log_tail(&net[2].dir, 40)
        );
    };
    assert_eq!(done["validated"], 4, "{done}");
    // Nothing was computed twice: each worker ran each unit once and was credited for all.
    for w in &net[1..] {
        assert_eq!(worker(w)["units_run"], 4, "{}", worker(w));
    }
    let (_, workers) = net[0].get("/v1/grid/workers");
    for w in workers.as_array().unwrap() {
        assert_eq!(w["valid"], 4, "{w}");
    }
    let out = root.path().join("out");
    let o = net[0].cli(&["grid", "results", &job, "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    for i in 0..4 {
        assert_eq!(
            std::fs::read_to_string(out.join(format!("u{i}.txt.out"))).unwrap(),
            format!("unit {i}\n")
        );
    }
}

#[test]
fn sandbox_limits_fail_units_alike_and_bad_programs_are_refused_at_submission() {
    let root = tempfile::tempdir().unwrap();
    let bin = build_workload(&root.path().join("bin"));
    let net = nodes(root.path(), 4, &[]);
    let dir = inputs(root.path(), 1);
    let write = |name: &str, wat: &str| {
        let p = root.path().join(name);
        std::fs::write(&p, wat).unwrap();
        p
    };
    let run = |program: &Path, extra: &[&str]| {
        let mut args = vec![program.to_str().unwrap(), "--inputs", dir.to_str().unwrap()];
        args.extend_from_slice(extra);
        run_json(&net[0], &args)
    };

    // An endless loop ends by fuel, with the same error on both peers.
    let endless = write(
        "loop.wat",
        r#"(module (memory (export "memory") 1) (func (export "_start") (loop $l (br $l))))"#,
    );
    let (o, v) = run(&endless, &["--fuel", "5000000"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("out of fuel"), "{}", stderr(&o));
    assert_eq!(v["failed"], 1);
    assert_eq!(v["results"][0]["peers"].as_array().unwrap().len(), 2, "{v}");

    // A memory bomb stops at the limit.
    let bomb = write(
        "bomb.wat",
        r#"(module (memory (export "memory") 1)
             (func (export "_start") (loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) unreachable))"#,
    );
    let (o, v) = run(&bomb, &["--memory", "2MiB"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("out of memory (limit 2097152 bytes)"),
        "the bomb stops at the limit: {err}"
    );
    assert_eq!(v["results"][0]["peers"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v["failed"], 1);

    // Output over the cap is refused.
    let big = write(
        "big.wat",
        r#"(module
             (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
             (memory (export "memory") 80)
             (func (export "_start")
               (i32.store (i32.const 0) (i32.const 64))
               (i32.store (i32.const 4) (i32.const 5000000))
               (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
    );
    let (o, _) = run(&big, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("output"), "{}", stderr(&o));

    // A forbidden import and threads are refused at submission, naming what is wrong.
    let forbidden = write(
        "forbidden.wat",
        r#"(module (import "wasi_snapshot_preview1" "path_open" (func (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
             (memory (export "memory") 1) (func (export "_start")))"#,
    );
    let (o, _) = run(&forbidden, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("path_open"), "{}", stderr(&o));
    let threads = write(
        "threads.wat",
        r#"(module (memory (export "memory") 1 1 shared) (func (export "_start")))"#,
    );
    let (o, _) = run(&threads, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).to_lowercase().contains("thread") || stderr(&o).contains("shared"),
        "{}",
        stderr(&o)
    );
    let (_, jobs) = net[0].get("/v1/grid/jobs");
    assert_eq!(
        jobs.as_array().unwrap().len(),
        3,
        "refused programs make no job"
    );

    // A float/NaN-heavy kernel gives the same result on 3 peers.
    let (o, v) = run(&bin.join("nan.wasm"), &["--replicas", "3", "--quorum", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(v["validated"], 1);
    assert_eq!(v["results"][0]["peers"].as_array().unwrap().len(), 3);
}

#[test]
fn grid_cli_refuses_bad_arguments_clearly() {
    let root = tempfile::tempdir().unwrap();
    let node = Node::start(&root.path().join("n"), &["--no-grid"]);
    let o = node.cli(&[
        "grid",
        "run",
        "/nonexistent.wasm",
        "--input",
        "/etc/hostname",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not a file"), "{}", stderr(&o));
    let o = node.cli(&["grid", "run", "x.wasm"]);
    assert_eq!(o.status.code(), Some(2), "no input is a usage error");
    let o = node.cli(&["grid", "status", "nothex"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("64 hex digits"), "{}", stderr(&o));
    let p = root.path().join("p.wat");
    std::fs::write(&p, "(module (func (export \"_start\")))").unwrap();
    let o = node.cli(&[
        "grid",
        "run",
        p.to_str().unwrap(),
        "--input",
        "/etc/hostname",
        "--pay",
        "5",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("ledger"), "{}", stderr(&o));
    let (_, w) = node.get("/v1/grid/worker");
    assert_eq!(w["enabled"], false);
}

#[test]
fn a_paid_job_pays_each_agreeing_worker_through_the_ledger() {
    let root = tempfile::tempdir().unwrap();
    let (mut devnet, table) = crate::devnet::start_devnet(&root.path().join("net"), "4");
    let dirs: Vec<String> = table["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["data_dir"].as_str().unwrap().to_owned())
        .collect();
    let cli = |i: usize, args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend_from_slice(&["--data-dir", &dirs[i]]);
        crate::common::agora().args(&all).output().unwrap()
    };
    let balance = |i: usize| -> u64 {
        let o = cli(i, &["balance", "--json"]);
        let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
        v["balance"].as_u64().unwrap()
    };
    let before: Vec<u64> = (0..4).map(balance).collect();
    let program = slow_echo(root.path(), 1000);
    let dir = inputs(root.path(), 3);
    let o = cli(
        0,
        &[
            "grid",
            "run",
            program.to_str().unwrap(),
            "--inputs",
            dir.to_str().unwrap(),
            "--pay",
            "7",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["validated"], 3);
    assert_eq!(v["paid"], 3 * 2 * 7, "{v}");
    // Each worker earned 7 per unit it was credited for; the submitter paid that plus fees.
    let o = cli(0, &["grid", "workers", "--json"]);
    let workers: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let mut credited = 0;
    for (i, d) in dirs.iter().enumerate().skip(1) {
        let id = crate::common::agora()
            .args(["id", "--json", "--data-dir", d])
            .output()
            .unwrap();
        let id: Value = serde_json::from_str(&stdout(&id)).unwrap();
        let Some(w) = workers
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["peer"] == id["peer_id"])
        else {
            continue;
        };
        let valid = w["valid"].as_u64().unwrap();
        credited += valid;
        assert_eq!(w["paid"].as_u64().unwrap(), 7 * valid, "{w}");
        let o = cli(i, &["grid", "worker", "--json"]);
        let me: Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(me["earned"].as_u64().unwrap(), 7 * valid, "{me}");
        assert_eq!(balance(i), before[i] + 7 * valid);
    }
    assert_eq!(credited, 6);
    assert!(
        balance(0) <= before[0] - 42,
        "the submitter paid 42 and fees"
    );
    crate::common::signal(devnet.id(), libc::SIGTERM);
    wait_for("devnet to exit", WAIT, || devnet.try_wait().unwrap());
}
