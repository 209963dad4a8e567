//! `agora devnet`: starts connected nodes, stops exactly them.

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    time::Duration,
};

use serde_json::Value;

use crate::common::*;

pub fn start_devnet(dir: &std::path::Path, n: &str) -> (std::process::Child, Value) {
    let mut child = agora()
        .args(["devnet", "--nodes", n, "--json", "--dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.with_extension("stderr")).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|_| {
        let err = std::fs::read_to_string(dir.with_extension("stderr")).unwrap_or_default();
        panic!("devnet did not print its table: {line:?}\n{err}")
    });
    (child, v)
}

fn alive(pid: u64) -> bool {
    // Zombies of an exited child count as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[test]
fn devnet_starts_connected_nodes_and_stops_exactly_them() {
    let dir = tempfile::tempdir().unwrap();
    // An unrelated node that the devnet must leave alone.
    let bystander = Node::start(&dir.path().join("bystander"), &[]);

    let (mut devnet, table) = start_devnet(&dir.path().join("net"), "4");
    let nodes = table["nodes"].as_array().unwrap().clone();
    assert_eq!(nodes.len(), 4);
    let pids: Vec<u64> = nodes.iter().map(|n| n["pid"].as_u64().unwrap()).collect();
    let ids: Vec<String> = nodes
        .iter()
        .map(|n| n["peer_id"].as_str().unwrap().to_owned())
        .collect();
    for n in &nodes {
        let out = agora()
            .args([
                "peers",
                "--json",
                "--data-dir",
                n["data_dir"].as_str().unwrap(),
            ])
            .output()
            .unwrap();
        let peers: Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert!(
            !peers.as_array().unwrap().is_empty(),
            "{} has no peers",
            n["name"]
        );
        // Agora nodes secure their TCP connections with TLS 1.3 (Noise only for peers
        // without TLS), and `peers` says so for each connection.
        for p in peers.as_array().unwrap() {
            assert_eq!(
                p["security"].as_array().unwrap().len(),
                p["addrs"].as_array().unwrap().len()
            );
            for s in p["security"].as_array().unwrap() {
                assert!(s == "tls" || s == "quic", "{p}");
            }
        }
        let table = stdout(
            &agora()
                .args(["peers", "--data-dir", n["data_dir"].as_str().unwrap()])
                .output()
                .unwrap(),
        );
        assert!(
            table.contains("SECURITY") && table.contains(" tls "),
            "{table}"
        );
    }

    signal(devnet.id(), libc::SIGINT);
    let status = wait_for("devnet to exit", WAIT, || devnet.try_wait().unwrap());
    assert!(status.success(), "{status}");
    for pid in &pids {
        wait_for("devnet child to exit", Duration::from_secs(5), || {
            (!alive(*pid)).then_some(())
        });
    }
    assert!(
        alive(bystander.pid() as u64),
        "the devnet stopped a process it did not start"
    );
    assert_eq!(bystander.get("/v1/id").0, 200);

    // Same --dir again: same identities.
    let (mut devnet, table) = start_devnet(&dir.path().join("net"), "4");
    let again: Vec<String> = table["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["peer_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(again, ids);
    signal(devnet.id(), libc::SIGTERM);
    assert!(wait_for("devnet to exit", WAIT, || devnet.try_wait().unwrap()).success());
}
