//! The command line: usage errors, missing nodes, locked data dirs, bad bootstrap addresses.

use std::{path::Path, process::Output};

use crate::common::*;

/// `agora up` that is expected to fail at start-up (it would run forever otherwise).
fn up_once(dir: &Path, listen: &str, api: &str) -> Output {
    agora()
        .args(["up", "--listen", listen, "--api", api, "--data-dir"])
        .arg(dir)
        .output()
        .unwrap()
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        vec!["frobnicate"],
        vec!["connect"],
        vec!["up", "--listen", "not-a-multiaddr"],
        vec!["up", "--api", "nowhere"],
        vec!["up", "--kad-mode", "sideways"],
        vec!["devnet", "--nodes", "0"],
    ] {
        let out = agora().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).is_empty());
    }
    let out = agora().arg("--help").output().unwrap();
    assert!(out.status.success());
    for cmd in ["up", "id", "peers", "connect", "status", "devnet"] {
        assert!(stdout(&out).contains(cmd), "--help lists {cmd}");
    }
}

#[test]
fn no_node_running_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    assert_no_node_at(dir.path(), "id");

    // A port where nothing listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = agora()
        .args(["peers", "--api", &port.to_string(), "--token", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("no agora node is running at {port}")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn env_vars_and_wrong_token() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let out = agora()
        .arg("id")
        .env("AGORA_API", &node.api)
        .env("AGORA_TOKEN", &node.token)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&node.peer_id));
    let out = agora()
        .arg("id")
        .env("AGORA_API", &node.api)
        .env("AGORA_TOKEN", "wrong")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("HTTP 401"), "{}", stderr(&out));
    assert!(stderr(&out).contains("api.token"), "{}", stderr(&out));
}

#[test]
fn a_locked_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let out = up_once(dir.path(), "/ip4/127.0.0.1/tcp/0", "127.0.0.1:0");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("in use by another running agora node"),
        "{err}"
    );
    assert!(err.contains(&format!("pid {}", node.pid())), "{err}");
    // The running node is unharmed.
    assert_eq!(node.get("/v1/id").0, 200);
}

#[test]
fn bad_bootstrap_addresses_warn_but_the_node_starts() {
    let dir = tempfile::tempdir().unwrap();
    let closed = free_port();
    let node = Node::start(
        dir.path(),
        &[
            "--bootstrap",
            "garbage",
            "--bootstrap",
            &format!(
                "/ip4/127.0.0.1/tcp/{closed}/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
            ),
        ],
    );
    assert_eq!(node.get("/v1/status").0, 200);
    let log = std::fs::read_to_string(dir.path().join("node.log")).unwrap();
    assert!(
        log.contains("ignoring malformed bootstrap address \"garbage\""),
        "{log}"
    );
    let log = wait_for("the unreachable bootstrap warning", WAIT, || {
        let log = std::fs::read_to_string(dir.path().join("node.log")).unwrap();
        log.contains("is unreachable").then_some(log)
    });
    assert!(log.contains(&format!("/tcp/{closed}")), "{log}");
}

#[test]
fn corrupt_identity_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("identity.key"), b"garbage").unwrap();
    let out = up_once(dir.path(), "/ip4/127.0.0.1/tcp/0", "127.0.0.1:0");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is corrupt"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(dir.path().join("identity.key")).unwrap(),
        b"garbage"
    );
}

#[test]
fn busy_listen_port_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = up_once(
        dir.path(),
        &format!("/ip4/127.0.0.1/tcp/{port}"),
        "127.0.0.1:0",
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("Address already in use"), "{err}");
    assert!(err.contains("pass another --listen"), "{err}");
    let out = up_once(
        dir.path(),
        "/ip4/127.0.0.1/tcp/0",
        &format!("127.0.0.1:{port}"),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("pass another --api"), "{err}");
}
