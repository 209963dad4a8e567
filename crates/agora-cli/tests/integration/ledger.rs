//! The ledger across real processes: four validators running simplex over libp2p, followers
//! that verify certificates, a validator killed and restarted, a double spend, a validator
//! added to the committee at run time.

use std::path::Path;

use agora_ledger::{Account, AccountTx, Action, Genesis, Tx};

use serde_json::{Value, json};

use crate::common::{Node, WAIT, stderr, stdout, wait_for};

const START: u64 = 1_000_000;

/// The account of the identity in `dir` (created now, used by the node later) and its key.
fn identity(dir: &Path) -> (Account, ed25519_dalek::SigningKey) {
    agora_ledger::service::identity_in(dir).unwrap()
}

/// A genesis with the first `validators` of `dirs` as the committee, every dir funded.
/// Returns each dir's account and key (read before any node locks its data dir).
fn write_genesis(
    root: &Path,
    dirs: &[std::path::PathBuf],
    validators: usize,
) -> Vec<(Account, ed25519_dalek::SigningKey)> {
    write_genesis_with(root, dirs, validators, 1_000_000)
}

fn write_genesis_with(
    root: &Path,
    dirs: &[std::path::PathBuf],
    validators: usize,
    epoch_length: u64,
) -> Vec<(Account, ed25519_dalek::SigningKey)> {
    let ids: Vec<_> = dirs.iter().map(|d| identity(d)).collect();
    let accounts: Vec<Account> = ids.iter().map(|(a, _)| *a).collect();
    let genesis = Genesis {
        chain: "itest".into(),
        validators: accounts[..validators].to_vec(),
        balances: accounts.iter().map(|a| (*a, START)).collect(),
        min_fee: 10,
        epoch_length,
    };
    std::fs::write(
        root.join("genesis.json"),
        serde_json::to_vec_pretty(&genesis).unwrap(),
    )
    .unwrap();
    ids
}

fn start(dir: &Path, genesis: &Path, validator: bool, bootstrap: Option<&Node>) -> Node {
    let genesis = genesis.to_str().unwrap().to_owned();
    let mut args = vec!["--genesis".to_owned(), genesis];
    if validator {
        args.push("--validator".into());
    }
    if let Some(b) = bootstrap {
        args.push("--bootstrap".into());
        args.push(b.tcp_addr());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Node::start(dir, &args)
}

fn height(node: &Node) -> u64 {
    let (status, v) = node.get("/v1/ledger/status");
    assert_eq!(status, 200, "{v}");
    v["height"].as_u64().unwrap()
}

fn block(node: &Node, height: u64) -> Option<Value> {
    let (status, v) = node.get(&format!("/v1/ledger/blocks/{height}"));
    (status == 200).then_some(v)
}

fn json_out(node: &Node, args: &[&str]) -> Value {
    let out = node.cli(args);
    assert!(out.status.success(), "agora {args:?}: {}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

fn pay(from: &Node, to: &Account, amount: u64) -> Value {
    json_out(
        from,
        &["pay", &to.to_string(), &amount.to_string(), "--json"],
    )
}

/// Every node holds the same block (digest and state root) at `height`.
fn assert_same_block(nodes: &[&Node], height: u64) {
    let blocks: Vec<Value> = nodes
        .iter()
        .map(|n| wait_for(&format!("block {height}"), WAIT, || block(n, height)))
        .collect();
    for b in &blocks[1..] {
        assert_eq!(
            b["digest"], blocks[0]["digest"],
            "different blocks at {height}"
        );
        assert_eq!(b["state_root"], blocks[0]["state_root"]);
    }
}

fn final_everywhere(nodes: &[&Node], hash: &str) {
    for n in nodes {
        wait_for(&format!("tx {hash} final on every node"), WAIT, || {
            (n.get(&format!("/v1/ledger/tx/{hash}")).0 == 200).then_some(())
        });
    }
}

#[test]
fn payments_are_final_on_every_node_and_a_killed_validator_catches_up() {
    let root = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (0..6).map(|i| root.path().join(format!("n{i}"))).collect();
    let ids = write_genesis(root.path(), &dirs, 4);
    let gpath = root.path().join("genesis.json");
    let first = start(&dirs[0], &gpath, true, None);
    let mut nodes = vec![first];
    for (i, dir) in dirs.iter().enumerate().skip(1) {
        let node = start(dir, &gpath, i < 4, Some(&nodes[0]));
        nodes.push(node);
    }
    for n in &nodes {
        wait_for("the ledger to make blocks on every node", WAIT, || {
            (height(n) >= 2).then_some(())
        });
    }
    let accounts: Vec<Account> = ids.iter().map(|(a, _)| *a).collect();

    // A follower pays a follower; a validator pays a follower.
    let p1 = pay(&nodes[4], &accounts[5], 1_234);
    let p2 = pay(&nodes[0], &accounts[5], 66);
    assert!(p1["finality_ms"].as_u64().unwrap() < 10_000);
    let all: Vec<&Node> = nodes.iter().collect();
    for p in [&p1, &p2] {
        final_everywhere(&all, p["hash"].as_str().unwrap());
    }
    let h = p1["height"]
        .as_u64()
        .unwrap()
        .max(p2["height"].as_u64().unwrap());
    assert_same_block(&all, h);
    for n in &all {
        let b = json_out(n, &["balance", &accounts[5].to_string(), "--json"]);
        assert_eq!(b["balance"].as_u64().unwrap(), START + 1_234 + 66);
        let b = json_out(n, &["balance", &accounts[4].to_string(), "--json"]);
        assert_eq!(b["balance"].as_u64().unwrap(), START - 1_234 - 10);
        assert_eq!(b["seq"].as_u64().unwrap(), 1);
    }
    // The engine's own metrics, from Commonware's registry (copied every second), one `# EOF`
    // at the very end.
    let metrics = wait_for("the engine's metrics", WAIT, || {
        let (code, metrics) = nodes[0].request("GET", "/metrics", Some(&nodes[0].token), None);
        assert_eq!(code, 200);
        metrics
            .contains("consensus_ledger_orchestrator_simplex_")
            .then_some(metrics)
    });
    assert!(metrics.contains("agora_ledger_validator 1"), "{metrics}");
    assert!(metrics.contains("agora_ledger_height "), "{metrics}");
    assert_eq!(metrics.matches("# EOF").count(), 1);
    let status = json_out(&nodes[5], &["ledger", "status", "--json"]);
    assert_eq!(status["committee"].as_array().unwrap().len(), 4);
    assert_eq!(status["validator"], false);
    assert_eq!(
        status["supply"].as_u64().unwrap() + status["burned"].as_u64().unwrap(),
        6 * START
    );

    // kill -9 one validator: three of four still finalize.
    nodes[3].kill9();
    let mut paid = Vec::new();
    for amount in [1u64, 2, 3] {
        paid.push(pay(&nodes[4], &accounts[1], amount));
    }
    let alive: Vec<&Node> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3)
        .map(|(_, n)| n)
        .collect();
    for p in &paid {
        final_everywhere(&alive, p["hash"].as_str().unwrap());
    }
    let killed_at = paid.last().unwrap()["height"].as_u64().unwrap();

    // Restarted, it catches up with everything it missed and takes part again.
    let restarted = start(&dirs[3], &gpath, true, Some(&nodes[0]));
    nodes[3] = restarted;
    wait_for("the restarted validator to catch up", WAIT, || {
        (height(&nodes[3]) >= killed_at).then_some(())
    });
    let all: Vec<&Node> = nodes.iter().collect();
    assert_same_block(&all, killed_at);
    let p = pay(&nodes[3], &accounts[0], 7);
    final_everywhere(&all, p["hash"].as_str().unwrap());
    let history = json_out(
        &nodes[2],
        &["ledger", "history", &accounts[1].to_string(), "--json"],
    );
    assert_eq!(history.as_array().unwrap().len(), 3);

    // A wallet's batch through a follower: checked there (signatures in one batch), the good
    // ones forwarded to a validator in one request, each answered in order.
    let status = json_out(&nodes[5], &["ledger", "status", "--json"]);
    let chain = agora_ledger::Hash::from_hex(status["chain_id"].as_str().unwrap()).unwrap();
    let (wallet, key) = ids[5].clone();
    let signed = |seq: u64| {
        Tx::Account(
            AccountTx {
                from: wallet,
                seq,
                fee: 10,
                action: Action::Transfer {
                    to: accounts[0],
                    amount: 100 + seq,
                    memo: None,
                },
            }
            .sign(&key, &chain),
        )
    };
    let (first, second) = (signed(0), signed(1));
    let mut forged = signed(2).encode();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let (code, v) = nodes[5].post(
        "/v1/ledger/submit",
        &json!({"txs": [
            hex::encode(first.encode()),
            hex::encode(&forged),
            hex::encode([7u8; 5]),
            hex::encode(second.encode()),
        ]}),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["accepted"], 2, "{v}");
    let rejected = v["rejected"].as_array().unwrap();
    assert_eq!(rejected[0]["index"], 1);
    assert!(
        rejected[0]["error"].as_str().unwrap().contains("signature"),
        "{v}"
    );
    assert_eq!(rejected[1]["index"], 2);
    for tx in [&first, &second] {
        final_everywhere(&all, &tx.hash().to_hex());
    }
}

#[test]
fn a_double_spend_sent_to_two_validators_applies_exactly_once() {
    let root = tempfile::tempdir().unwrap();
    let mut dirs: Vec<_> = (0..4).map(|i| root.path().join(format!("v{i}"))).collect();
    // A wallet that no node runs: the test signs its transactions itself.
    dirs.push(root.path().join("wallet"));
    let ids = write_genesis(root.path(), &dirs, 4);
    let gpath = root.path().join("genesis.json");
    let first = start(&dirs[0], &gpath, true, None);
    let mut nodes = vec![first];
    for dir in &dirs[1..4] {
        let node = start(dir, &gpath, true, Some(&nodes[0]));
        nodes.push(node);
    }
    for n in &nodes {
        wait_for("blocks", WAIT, || (height(n) >= 1).then_some(()));
    }
    let status = json_out(&nodes[0], &["ledger", "status", "--json"]);
    let chain = agora_ledger::Hash::from_hex(status["chain_id"].as_str().unwrap()).unwrap();
    let (wallet, key) = ids[4].clone();
    let (a, b) = (ids[1].0, ids[2].0);
    let spend = |to: Account| {
        Tx::Account(
            AccountTx {
                from: wallet,
                seq: 0,
                fee: 10,
                action: Action::Transfer {
                    to,
                    amount: 900_000,
                    memo: None,
                },
            }
            .sign(&key, &chain),
        )
    };
    let (to_a, to_b) = (spend(a), spend(b));
    // Both at once, to two different validators.
    std::thread::scope(|s| {
        let ha = s.spawn(|| {
            nodes[1].post(
                "/v1/ledger/submit",
                &json!({"tx": hex::encode(to_a.encode())}),
            )
        });
        let hb = s.spawn(|| {
            nodes[2].post(
                "/v1/ledger/submit",
                &json!({"tx": hex::encode(to_b.encode())}),
            )
        });
        let (ra, rb) = (ha.join().unwrap(), hb.join().unwrap());
        assert!(ra.0 == 200 || rb.0 == 200, "{ra:?} {rb:?}");
    });
    for n in &nodes {
        wait_for("the wallet's sequence to advance", WAIT, || {
            (json_out(n, &["balance", &wallet.to_string(), "--json"])["seq"] == 1).then_some(())
        });
    }
    // Let more blocks pass: the other spend must never apply later either.
    let h = height(&nodes[0]);
    wait_for("more blocks", WAIT, || {
        (height(&nodes[0]) > h + 5).then_some(())
    });
    for n in &nodes {
        let found = [&to_a, &to_b]
            .iter()
            .filter(|t| n.get(&format!("/v1/ledger/tx/{}", t.hash())).0 == 200)
            .count();
        assert_eq!(found, 1, "exactly one of the two spends is final");
        let w = json_out(n, &["balance", &wallet.to_string(), "--json"]);
        assert_eq!(w["balance"].as_u64().unwrap(), START - 900_000 - 10);
        let got = json_out(n, &["balance", &a.to_string(), "--json"])["balance"]
            .as_u64()
            .unwrap()
            + json_out(n, &["balance", &b.to_string(), "--json"])["balance"]
                .as_u64()
                .unwrap();
        assert_eq!(got, 2 * START + 900_000);
    }
    // A third spend of the same sequence is refused with a clear error.
    let (status, v) = nodes[3].post(
        "/v1/ledger/submit",
        &json!({"tx": hex::encode(spend(ids[3].0).encode())}),
    );
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("sequence"),
        "{v}"
    );
    assert_same_block(&nodes.iter().collect::<Vec<_>>(), h + 5);
}

#[test]
fn a_validator_added_by_committee_change_votes_from_the_next_epoch() {
    const EPOCH: u64 = 30;
    let root = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (0..6).map(|i| root.path().join(format!("n{i}"))).collect();
    let ids = write_genesis_with(root.path(), &dirs, 4, EPOCH);
    let gpath = root.path().join("genesis.json");
    // Five run with --validator; the fifth is not in the committee yet. The sixth follows
    // (it checks each epoch's certificates against that epoch's committee).
    let mut nodes = vec![start(&dirs[0], &gpath, true, None)];
    for (i, dir) in dirs.iter().enumerate().skip(1) {
        let node = start(dir, &gpath, i < 5, Some(&nodes[0]));
        nodes.push(node);
    }
    for n in &nodes {
        wait_for("blocks on every node", WAIT, || {
            (height(n) >= 2).then_some(())
        });
    }
    let accounts: Vec<Account> = ids.iter().map(|(a, _)| *a).collect();
    let newcomer = accounts[4].to_string();
    let status = json_out(&nodes[4], &["ledger", "status", "--json"]);
    assert_eq!(status["validator"], false);
    assert_eq!(status["runs_consensus"], true);

    // Only current members' approvals count; a bad approval is refused before submission.
    let out = nodes[4].cli(&["ledger", "approve", "add", &newcomer]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not in the current committee"),
        "{}",
        stderr(&out)
    );
    let out = nodes[4].cli(&["ledger", "change", "add", &newcomer, "abcd"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not an approval"), "{}", stderr(&out));

    // Two approvals are not a quorum of four.
    let approvals: Vec<String> = nodes[..3]
        .iter()
        .map(|n| {
            let v = json_out(n, &["ledger", "approve", "add", &newcomer, "--json"]);
            assert_eq!(v["nonce"], 0);
            v["approval"].as_str().unwrap().to_owned()
        })
        .collect();
    let out = nodes[4].cli(&[
        "ledger",
        "change",
        "add",
        &newcomer,
        &approvals[0],
        &approvals[1],
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("approvals"), "{}", stderr(&out));

    // Three are: the newcomer itself submits the change (forwarded to the committee).
    let mut args = vec!["ledger", "change", "add", newcomer.as_str()];
    args.extend(approvals.iter().map(String::as_str));
    args.push("--json");
    let changed = json_out(&nodes[4], &args);
    let effective = changed["effective_height"].as_u64().unwrap();
    assert_eq!(effective % EPOCH, 1, "{changed}");
    assert_eq!(changed["next_committee"].as_array().unwrap().len(), 5);
    for n in &nodes {
        wait_for("the new epoch on every node", WAIT, || {
            (height(n) >= effective).then_some(())
        });
        let status = json_out(n, &["ledger", "status", "--json"]);
        assert_eq!(status["committee"].as_array().unwrap().len(), 5);
    }
    let status = json_out(&nodes[4], &["ledger", "status", "--json"]);
    assert_eq!(status["validator"], true);

    // Five validators need four votes: with validator 1 killed, payments finalize only
    // because the newcomer votes.
    nodes[1].kill9();
    let p = pay(&nodes[4], &accounts[0], 5);
    let alive: Vec<&Node> = [0, 2, 3, 4, 5].iter().map(|&i| &nodes[i]).collect();
    final_everywhere(&alive, p["hash"].as_str().unwrap());
    assert_same_block(&alive, p["height"].as_u64().unwrap());
    let (_, metrics) = nodes[4].request("GET", "/metrics", Some(&nodes[4].token), None);
    assert!(metrics.contains("agora_ledger_validator 1"), "{metrics}");
}
