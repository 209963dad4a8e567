//! Contracts across real processes, through `agora contract`: four validators and a follower.
//! A counter written in WAT is deployed, called from two nodes (one sends value), queried on
//! every node with identical answers; an endless loop runs out of gas, pays its fee and changes
//! nothing; a module importing an unknown function, malformed bytes and an oversized module are
//! refused before anything is signed (exit 2); a validator killed with -9 restarts, replays to
//! the same state root and answers the same query.

use std::path::{Path, PathBuf};

use agora_ledger::Account;
use serde_json::{Value, json};

use crate::common::{
    Node, WAIT, ledger_height as height, start_ledger_node as start, stderr, stdout, wait_for,
    write_ledger_genesis,
};

const START: u64 = 1_000_000;
const FEE: u64 = 10;

/// A counter: `init` takes the first count (8 bytes, little-endian), `increment` adds one and
/// emits `bump` with the new count, `read` outputs it, `hello` outputs text, `spin` writes and
/// then loops forever.
const COUNTER: &str = r#"
(module
  (import "agora" "input" (func $input (param i32 i32) (result i32)))
  (import "agora" "get" (func $get (param i32 i32 i32 i32) (result i32)))
  (import "agora" "put" (func $put (param i32 i32 i32 i32)))
  (import "agora" "output" (func $output (param i32 i32)))
  (import "agora" "emit" (func $emit (param i32 i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "count")
  (data (i32.const 16) "bump")
  (data (i32.const 32) "hello, agora")
  (func (export "init")
    (i64.store (i32.const 64) (i64.const 0))
    (drop (call $input (i32.const 64) (i32.const 8)))
    (call $put (i32.const 0) (i32.const 5) (i32.const 64) (i32.const 8)))
  (func $load (result i64)
    (if (i32.eq (call $get (i32.const 0) (i32.const 5) (i32.const 64) (i32.const 8))
                (i32.const -1))
      (then (return (i64.const 0))))
    (i64.load (i32.const 64)))
  (func (export "increment")
    (i64.store (i32.const 64) (i64.add (call $load) (i64.const 1)))
    (call $put (i32.const 0) (i32.const 5) (i32.const 64) (i32.const 8))
    (call $emit (i32.const 16) (i32.const 4) (i32.const 64) (i32.const 8)))
  (func (export "read")
    (i64.store (i32.const 64) (call $load))
    (call $output (i32.const 64) (i32.const 8)))
  (func (export "hello") (call $output (i32.const 32) (i32.const 12)))
  (func (export "spin")
    (i64.store (i32.const 64) (i64.const 999))
    (call $put (i32.const 0) (i32.const 5) (i32.const 64) (i32.const 8))
    (loop $l (br $l)))
)
"#;

fn write_genesis(root: &Path, dirs: &[PathBuf], validators: usize) -> Vec<Account> {
    write_ledger_genesis(root, dirs, validators, "contract-itest", START, FEE)
}

fn wait_height(node: &Node, h: u64) {
    wait_for(&format!("block {h} on {}", node.peer_id), WAIT, || {
        (height(node) >= h).then_some(())
    });
}

/// `agora ARGS --json` on `node`, which must succeed.
fn ok(node: &Node, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let out = node.cli(&args);
    assert!(
        out.status.success(),
        "agora {args:?}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("agora {args:?}: {e}: {}", stdout(&out)))
}

/// `agora ARGS` on `node`, which must fail with exit `code`: (stdout, stderr).
fn fails(node: &Node, args: &[&str], code: i32) -> (String, String) {
    let out = node.cli(args);
    let (o, e) = (stdout(&out), stderr(&out));
    assert_eq!(
        out.status.code(),
        Some(code),
        "agora {args:?}: expected exit {code}\nstdout: {o}\nstderr: {e}"
    );
    assert!(!e.contains("panicked"), "{e}");
    (o, e)
}

fn balance(node: &Node, account: &Account) -> (u64, u64) {
    let b = ok(node, &["balance", &account.to_string()]);
    (b["balance"].as_u64().unwrap(), b["seq"].as_u64().unwrap())
}

/// The counter as `read` answers it on `node`.
fn read(node: &Node, contract: &str) -> u64 {
    let q = ok(node, &["contract", "query", contract, "read"]);
    assert_eq!(q["status"], "ok", "{q}");
    let bytes = hex_bytes(q["output_hex"].as_str().unwrap());
    u64::from_le_bytes(bytes.try_into().unwrap())
}

fn hex_bytes(text: &str) -> Vec<u8> {
    hex::decode(text).unwrap()
}

fn state_roots_agree(nodes: &[&Node], h: u64) {
    let roots: Vec<Value> = nodes
        .iter()
        .map(|n| {
            wait_height(n, h);
            let (status, block) = n.get(&format!("/v1/ledger/blocks/{h}"));
            assert_eq!(status, 200, "{block}");
            block["state_root"].clone()
        })
        .collect();
    assert!(roots.iter().all(|r| *r == roots[0]), "{roots:?}");
}

#[test]
fn a_counter_contract_runs_alike_on_every_node_and_failures_change_nothing() {
    let root = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (0..5).map(|i| root.path().join(format!("n{i}"))).collect();
    let accounts = write_genesis(root.path(), &dirs, 4);
    let gpath = root.path().join("genesis.json");
    let mut nodes = vec![start(&dirs[0], &gpath, true, None)];
    for (i, dir) in dirs.iter().enumerate().skip(1) {
        let node = start(dir, &gpath, i < 4, Some(&nodes[0]));
        nodes.push(node);
    }
    for n in &nodes {
        wait_height(n, 2);
    }
    let follower = 4;
    let files = root.path();
    let counter = files.join("counter.wat");
    std::fs::write(&counter, COUNTER).unwrap();
    let steal = files.join("steal.wat");
    std::fs::write(
        &steal,
        r#"(module (import "agora" "steal" (func)) (memory (export "memory") 1))"#,
    )
    .unwrap();
    let garbage = files.join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm garbage").unwrap();
    let big = files.join("big.wat");
    std::fs::write(
        &big,
        format!(
            r#"(module (memory (export "memory") 1) (data (i32.const 0) "{}"))"#,
            "x".repeat(20_000)
        ),
    )
    .unwrap();
    let path = |p: &Path| p.to_str().unwrap().to_owned();

    // ---- refused before anything is signed: exit 2 with the cause ----
    let n0 = &nodes[0];
    for (args, needle) in [
        (
            vec!["contract", "deploy", &path(&files.join("missing.wat"))],
            "cannot read",
        ),
        (
            vec!["contract", "deploy", &path(&counter), "--init-hex", "zz"],
            "not hex",
        ),
        (
            vec!["contract", "call", "agnope", "increment"],
            "not an account",
        ),
        (
            vec!["contract", "deploy", &path(&garbage)],
            "not a valid WebAssembly module",
        ),
        (
            vec!["contract", "deploy", &path(&steal)],
            "imports agora::steal",
        ),
        (
            vec!["contract", "deploy", &path(&big)],
            "a transaction holds at most",
        ),
        (
            vec!["contract", "deploy", &path(&counter), "--gas", "0"],
            "gas is 1 to",
        ),
    ] {
        let (_, err) = fails(n0, &args, 2);
        assert!(err.contains(needle), "agora {args:?}: {err}");
    }
    let (status, v) = n0.post(
        "/v1/ledger/contracts",
        &json!({"code_hex": hex::encode(b"\0asm garbage")}),
    );
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "bad_module", "{v}");
    assert_eq!(balance(n0, &accounts[0]), (START, 0), "nothing was sent");

    // ---- deploy, with the first count as init's input ----
    let d = ok(
        n0,
        &[
            "contract",
            "deploy",
            &path(&counter),
            "--init-hex",
            &hex::encode(5u64.to_le_bytes()),
        ],
    );
    assert_eq!(d["status"], "ok", "{d}");
    let contract = d["contract"].as_str().unwrap().to_owned();
    let c = contract.as_str();
    assert!(d["fee"].as_u64().unwrap() > FEE, "{d}");
    assert!(d["fee"].as_u64() <= d["max_fee"].as_u64(), "{d}");
    for n in &nodes {
        wait_height(n, d["height"].as_u64().unwrap());
    }
    let tx = ok(&nodes[follower], &["tx", d["hash"].as_str().unwrap()]);
    assert_eq!(tx["kind"], "contract", "{tx}");
    assert_eq!(tx["outcome"]["contract"], c, "{tx}");

    // ---- called from two nodes at once: a validator (sending value) and the follower ----
    let calls: Vec<Value> = std::thread::scope(|s| {
        let a = s.spawn(|| {
            ok(
                &nodes[1],
                &["contract", "call", c, "increment", "--value", "1234"],
            )
        });
        let b = s.spawn(|| ok(&nodes[follower], &["contract", "call", c, "increment"]));
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    let mut bumps = Vec::new();
    for v in &calls {
        assert_eq!(v["status"], "ok", "{v}");
        let events = v["events"].as_array().unwrap();
        assert_eq!(events.len(), 1, "{v}");
        assert_eq!(events[0]["topic"], "bump", "{v}");
        assert_eq!(events[0]["contract"], c, "{v}");
        bumps.push(events[0]["data_hex"].as_str().unwrap().to_owned());
        assert!(v["gas_used"].as_u64().unwrap() > 0, "{v}");
    }
    bumps.sort();
    let le = |n: u64| hex::encode(n.to_le_bytes());
    assert_eq!(bumps, vec![le(6), le(7)]);
    let last = calls
        .iter()
        .map(|v| v["height"].as_u64().unwrap())
        .max()
        .unwrap();

    // ---- every node answers the same query: output, events, gas ----
    let answers: Vec<Value> = nodes
        .iter()
        .map(|n| {
            wait_height(n, last);
            let mut q = ok(n, &["contract", "query", c, "read"]);
            q.as_object_mut().unwrap().remove("height");
            q
        })
        .collect();
    assert!(answers.iter().all(|q| *q == answers[0]), "{answers:?}");
    assert_eq!(answers[0]["output_hex"], le(7), "{}", answers[0]);
    assert_eq!(read(&nodes[follower], c), 7);
    let hello = ok(&nodes[follower], &["contract", "query", c, "hello"]);
    assert_eq!(hello["output"], "hello, agora", "{hello}");
    assert_eq!(hello["output_hex"], hex::encode("hello, agora"), "{hello}");
    let show = ok(&nodes[follower], &["contract", "show", c]);
    assert_eq!(show["balance"], 1234, "the value sent: {show}");
    assert_eq!(show["creator"], accounts[0].to_string(), "{show}");
    assert_eq!(show["storage_entries"], 1, "{show}");
    let events = ok(&nodes[2], &["contract", "events", c]);
    let listed: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data_hex"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 2, "{events}");
    assert!(
        listed.iter().all(|d| *d == le(6) || *d == le(7)),
        "{events}"
    );

    // ---- an endless loop: out of gas, fee charged, nothing else changed ----
    let n2 = &nodes[2];
    let (bal, seq) = balance(n2, &accounts[2]);
    let show_before = ok(n2, &["contract", "show", c]);
    let (out, err) = fails(
        n2,
        &["contract", "call", c, "spin", "--gas", "300000", "--json"],
        1,
    );
    let spun: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(spun["status"], "out of gas", "{spun}");
    assert_eq!(spun["gas_used"], 300_000, "{spun}");
    assert_eq!(spun["fee"], FEE + 30, "{spun}");
    assert!(spun["events"].as_array().unwrap().is_empty(), "{spun}");
    assert!(err.contains("out of gas"), "{err}");
    assert!(err.contains("fee of 40 was charged"), "{err}");
    assert_eq!(balance(n2, &accounts[2]), (bal - FEE - 30, seq + 1));
    let spun_at = spun["height"].as_u64().unwrap();
    for n in &nodes {
        wait_height(n, spun_at);
        assert_eq!(
            read(n, c),
            7,
            "the loop's write was undone on {}",
            n.peer_id
        );
    }
    let mut show_after = ok(n2, &["contract", "show", c]);
    show_after["height"] = show_before["height"].clone();
    assert_eq!(show_after, show_before);
    let tx = ok(&nodes[follower], &["tx", spun["hash"].as_str().unwrap()]);
    assert_eq!(tx["outcome"]["status"], "out of gas", "{tx}");
    // The same loop as a query: fails, costs nothing.
    let (_, err) = fails(
        &nodes[follower],
        &["contract", "query", c, "spin", "--gas", "100000"],
        1,
    );
    assert!(err.contains("out of gas"), "{err}");
    assert!(err.contains("nothing was sent"), "{err}");
    let (status, v) = nodes[follower].post(
        &format!("/v1/ledger/contracts/{c}/query"),
        &json!({"method": "nope"}),
    );
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("query_failed")),
        "{v}"
    );

    // ---- kill -9 validator 3; the others go on; it restarts and replays to the same root ----
    nodes[3].kill9();
    let v = ok(&nodes[0], &["contract", "call", c, "increment"]);
    assert_eq!(v["status"], "ok", "{v}");
    let last = v["height"].as_u64().unwrap();
    nodes[3] = start(&dirs[3], &gpath, true, Some(&nodes[0]));
    wait_height(&nodes[3], last);
    let all: Vec<&Node> = nodes.iter().collect();
    state_roots_agree(&all, last);
    for n in &all {
        assert_eq!(read(n, c), 8, "on {}", n.peer_id);
    }
    // And it takes part again: its own call is final everywhere.
    let v = ok(&nodes[3], &["contract", "call", c, "increment"]);
    let last = v["height"].as_u64().unwrap();
    state_roots_agree(&all, last);
    assert_eq!(read(&nodes[follower], c), 9);
}
