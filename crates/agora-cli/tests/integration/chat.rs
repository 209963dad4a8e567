//! Messaging across real nodes: direct messages, offline mailboxes, rooms, presence.

use std::{
    io::{BufRead, BufReader, Write},
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::common::{Node, agora, stderr, stdout, wait_connected, wait_for};

const WAIT: Duration = Duration::from_secs(30);

fn json(node: &Node, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = node.cli(&all);
    assert!(
        out.status.success(),
        "agora {args:?} failed: {}",
        stderr(&out)
    );
    serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("agora {args:?}: not JSON ({e}): {}", stdout(&out)))
}

/// Runs `agora ARGS --data-dir DIR` with `input` on its standard input.
fn with_stdin(node: &Node, args: &[&str], input: &[u8]) -> std::process::Output {
    let mut child = agora()
        .args(args)
        .arg("--data-dir")
        .arg(&node.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn texts(messages: &Value) -> Vec<String> {
    messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect()
}

fn status_of(node: &Node, peer: &str) -> Option<String> {
    let who = json(node, &["who"]);
    who.as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer_id"] == peer)
        .map(|p| p["status"].as_str().unwrap().to_owned())
}

#[test]
fn direct_messages_between_peers_with_no_connection_at_start_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Node::start(&dir.path().join("hub"), &[]);
    let a = Node::start(&dir.path().join("a"), &["--bootstrap", &hub.tcp_addr()]);
    let b_dir = dir.path().join("b");
    let mut b = Node::start(&b_dir, &["--bootstrap", &hub.tcp_addr()]);
    // The test starts from no direct connection. The DHT's own bootstrap lookup may already
    // have connected a and b (the hub names each to the other); close that connection rather
    // than count on winning the race.
    wait_for("no direct connection between a and b", WAIT, || {
        if !a.is_connected_to(&b.peer_id) {
            return Some(());
        }
        // (It may have closed by itself meanwhile; the loop checks again.)
        let _ = a.cli(&["disconnect", &b.peer_id]);
        None
    });
    // Both reached the hub (a node is ready before its bootstrap dial completes), so a lookup
    // through it can find the other; under a loaded machine the send could otherwise race
    // the bootstrap and fall back to the mailbox.
    wait_connected(&hub, &a);
    wait_connected(&hub, &b);
    // Connected is not yet findable: the hub adds a peer to its DHT routing table only after
    // identify, which a loaded machine can delay past the send's 8 s connect timeout.
    wait_for("the hub's routing table to hold a and b", WAIT, || {
        let (_, s) = hub.get("/v1/status");
        (s["routing_table_size"].as_u64()? >= 2).then_some(())
    });

    assert!(
        a.cli(&["profile", "set", "--nick", "alice"])
            .status
            .success()
    );
    let profile = json(&b, &["profile", "set", "--nick", "bob", "--about", "hi"]);
    assert_eq!(profile["nick"], "bob");
    assert_eq!(profile["status"], "online");

    // `inbox --follow` streams what arrives.
    let mut follow = agora()
        .args(["inbox", "--follow", "--json", "--data-dir"])
        .arg(&b.dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sent = a.cli(&["send", &b.peer_id, "hello", "bob"]);
    assert!(sent.status.success(), "{}", stderr(&sent));
    assert!(stdout(&sent).contains("delivered"), "{}", stdout(&sent));
    // Read on a thread: a stream that never shows the message fails the test, not hangs it.
    let stdout_pipe = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout_pipe).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(WAIT);
    follow.kill().unwrap();
    let line = line.expect("inbox --follow showed the message");
    follow.wait().unwrap();
    let streamed: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(streamed["text"], "hello bob");
    assert_eq!(streamed["peer_id"], a.peer_id.as_str());

    let inbox = json(&b, &["inbox"]);
    assert_eq!(texts(&inbox), ["hello bob"]);
    assert_eq!(inbox[0]["via"], "direct");
    // Bob learnt alice's signed profile from her.
    wait_for("alice's nick at bob", WAIT, || {
        let inbox = json(&b, &["inbox"]);
        (inbox[0]["nick"] == "alice").then_some(())
    });
    // Listing marked it read.
    assert_eq!(json(&b, &["inbox", "--unread"]), Value::Array(vec![]));
    let sent = json(&a, &["inbox", "--sent"]);
    assert_eq!(sent[0]["state"], "delivered");

    // Contacts by name; bad targets and oversized messages are clear errors.
    let added = json(&b, &["contacts", "add", &a.peer_id, "--name", "al"]);
    assert_eq!(added["status"], "online");
    let reply = b.cli(&["send", "al", "hi", "alice"]);
    assert!(reply.status.success(), "{}", stderr(&reply));
    // The interactive chat with a contact sends each line typed.
    let out = with_stdin(&b, &["chat", "al"], b"typed in chat\n/who\n/quit\n");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("online"),
        "/who shows presence: {}",
        stdout(&out)
    );
    assert_eq!(texts(&json(&a, &["inbox"])), ["hi alice", "typed in chat"]);
    let bad = b.cli(&["send", "nobody", "hi"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr(&bad).contains("neither a peer id nor the name of a contact"),
        "{}",
        stderr(&bad)
    );
    let big = with_stdin(
        &b,
        &["send", &a.peer_id, "-"],
        "x".repeat(70_000).as_bytes(),
    );
    assert_eq!(big.status.code(), Some(1));
    assert!(
        stderr(&big).contains("65536-byte limit"),
        "{}",
        stderr(&big)
    );

    // A restart keeps messages, contacts and the conversation's numbering: a message sent
    // after it is shown at once (a reset counter would hold it back as out of order).
    assert!(b.terminate().success());
    let b = Node::start(&b_dir, &["--bootstrap", &hub.tcp_addr()]);
    let all = json(&b, &["inbox", "--all"]);
    assert_eq!(texts(&all), ["hello bob", "hi alice", "typed in chat"]);
    let contacts = json(&b, &["contacts"]);
    assert_eq!(contacts[0]["peer_id"], a.peer_id.as_str());
    assert_eq!(contacts[0]["contact"], "al");
    // Reach the restarted node at its new address first: this is about numbering, not about how
    // soon a finds it (under load the lookup can lose to the send's timeout, and the message
    // then goes to b's mailbox instead).
    let connected = a.cli(&["connect", &b.tcp_addr()]);
    assert!(connected.status.success(), "{}", stderr(&connected));
    let again = a.cli(&["send", &b.peer_id, "after", "restart"]);
    assert!(stdout(&again).contains("delivered"), "{}", stderr(&again));
    assert_eq!(texts(&json(&b, &["inbox", "--unread"])), ["after restart"]);
}

#[test]
fn offline_delivery_when_sender_and_recipient_are_never_online_together() {
    let dir = tempfile::tempdir().unwrap();
    let h1 = Node::start(&dir.path().join("h1"), &[]);
    let holders: Vec<Node> = (2..=4)
        .map(|i| {
            Node::start(
                &dir.path().join(format!("h{i}")),
                &["--bootstrap", &h1.tcp_addr()],
            )
        })
        .collect();
    let boot = ["--bootstrap", &h1.tcp_addr()];
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));

    // Bob exists but is offline.
    let mut b = Node::start(&b_dir, &boot);
    let bob = b.peer_id.clone();
    assert!(b.cli(&["profile", "set", "--nick", "bob"]).status.success());
    assert!(b.terminate().success());

    let mut a = Node::start(&a_dir, &boot);
    let alice = a.peer_id.clone();
    let out = a.cli(&["send", &bob, "while", "you", "were", "away", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let outcome: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(outcome["state"], "stored", "{outcome}");
    assert!(outcome["holders"].as_u64().unwrap() >= 2, "{outcome}");
    assert_eq!(json(&a, &["inbox", "--sent"])[0]["state"], "stored");
    assert!(a.terminate().success());

    // Bob comes back while alice is away and collects his mailbox at start.
    let mut b = Node::start(&b_dir, &boot);
    let got = wait_for("bob collects his mailbox", WAIT, || {
        let inbox = json(&b, &["inbox"]);
        (!inbox.as_array().unwrap().is_empty()).then_some(inbox)
    });
    assert_eq!(texts(&got), ["while you were away"]);
    assert_eq!(got[0]["via"], "mailbox");
    assert_eq!(got[0]["peer_id"], alice.as_str());
    // Leaving at once: the node finishes storing the receipt for alice before it stops.
    assert!(b.terminate().success());

    // Alice comes back and learns from her mailbox that bob got it.
    let a = Node::start(&a_dir, &boot);
    wait_for("alice learns of the delivery", WAIT, || {
        let sent = json(&a, &["inbox", "--sent"]);
        (sent[0]["state"] == "delivered").then_some(())
    });
    drop(holders);
}

#[test]
fn a_room_of_ten_nodes_shares_posts_and_a_late_joiner_gets_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Node::start(&dir.path().join("n0"), &[]);
    let mut nodes = vec![];
    for i in 1..9 {
        nodes.push(Node::start(
            &dir.path().join(format!("n{i}")),
            &["--bootstrap", &hub.tcp_addr()],
        ));
    }
    nodes.insert(0, hub);
    for (i, n) in nodes.iter().enumerate() {
        assert!(
            n.cli(&["profile", "set", "--nick", &format!("n{i}")])
                .status
                .success()
        );
        let joined = n.cli(&["room", "join", "lobby"]);
        assert!(joined.status.success(), "{}", stderr(&joined));
    }
    for (i, n) in nodes.iter().enumerate() {
        let posted = n.cli(&["room", "post", "lobby", &format!("post from n{i}")]);
        assert!(posted.status.success(), "{}", stderr(&posted));
    }
    let all: Vec<String> = (0..9).map(|i| format!("post from n{i}")).collect();
    for n in &nodes {
        wait_for("every post at every member", WAIT, || {
            let mut got = texts(&json(n, &["room", "read", "lobby"]));
            got.sort();
            (got == all).then_some(())
        });
    }

    // The late joiner gets the history from members, verified.
    let late = Node::start(
        &dir.path().join("late"),
        &["--bootstrap", &nodes[0].tcp_addr()],
    );
    let joined = json(&late, &["room", "join", "lobby"]);
    assert!(joined["history"].as_u64().unwrap() >= 9, "{joined}");
    assert_eq!(joined["rejected"], 0);
    let mut got = texts(&json(&late, &["room", "read", "lobby"]));
    got.sort();
    assert_eq!(got, all);

    // Interactive chat: lines typed are posted, /who lists members, /quit leaves.
    let out = with_stdin(
        &late,
        &["chat", "lobby"],
        b"hello from the late joiner\n/who\n/quit\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("n1 ("),
        "/who lists members: {}",
        stdout(&out)
    );
    wait_for("the late joiner's post at n1", WAIT, || {
        texts(&json(&nodes[1], &["room", "read", "lobby"]))
            .contains(&"hello from the late joiner".to_owned())
            .then_some(())
    });
    let members = json(&nodes[1], &["room", "members", "lobby"]);
    assert!(
        members
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["peer_id"] == late.peer_id.as_str()),
        "{members}"
    );
    // A member that restarts keeps the room and its posts.
    let mut last = nodes.pop().unwrap();
    let last_dir = last.dir.clone();
    assert!(last.terminate().success());
    let last = Node::start(&last_dir, &["--bootstrap", &nodes[0].tcp_addr()]);
    let rooms = json(&last, &["room", "list"]);
    assert_eq!(rooms[0]["room"], "lobby", "{rooms}");
    let kept = texts(&json(&last, &["room", "read", "lobby"]));
    for post in &all {
        assert!(kept.contains(post), "{post} lost in the restart: {kept:?}");
    }
    drop(last);
    // Bad room names are clear errors.
    let bad = late.cli(&["room", "join", "Not A Room!"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("room names are"), "{}", stderr(&bad));
}

#[test]
fn presence_shows_offline_after_kill9_within_a_minute_and_at_once_after_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Node::start(&dir.path().join("hub"), &[]);
    let boot = ["--bootstrap", &hub.tcp_addr()];
    let a = Node::start(&dir.path().join("a"), &boot);
    let b_dir = dir.path().join("b");
    let mut b = Node::start(&b_dir, &boot);
    assert!(
        b.cli(&["profile", "set", "--nick", "bob", "--status", "busy"])
            .status
            .success()
    );
    json(&a, &["contacts", "add", &b.peer_id, "--name", "bob"]);
    json(&b, &["contacts", "add", &a.peer_id]);

    let who = json(&a, &["who"]);
    let entry = who
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer_id"] == b.peer_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["status"], "busy", "{who}");
    assert_eq!(entry["nick"], "bob");
    assert!(entry["last_seen"].as_u64().is_some());

    // kill -9: no goodbye; the peer must still show offline within 60 s.
    b.kill9();
    let killed = Instant::now();
    wait_for("bob offline after kill -9", Duration::from_secs(70), || {
        (status_of(&a, &b.peer_id).as_deref() == Some("offline")).then_some(())
    });
    assert!(
        killed.elapsed() < Duration::from_secs(60),
        "took {:?}",
        killed.elapsed()
    );

    // Back online (it tells its contacts at start), then a clean shutdown shows at once.
    let mut b = Node::start(&b_dir, &boot);
    wait_for("bob online again", WAIT, || {
        (status_of(&a, &b.peer_id).as_deref() == Some("busy")).then_some(())
    });
    // The goodbye is sent before the node exits, so it is offline the moment it is gone.
    assert!(b.terminate().success());
    assert_eq!(status_of(&a, &b.peer_id).as_deref(), Some("offline"));
}
