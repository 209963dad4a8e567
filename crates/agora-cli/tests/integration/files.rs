//! File sharing between real nodes: share, find through the DHT, get, tickets, directories,
//! resume after kill -9, and bad input.

use std::{fs, path::Path, time::Duration};

use serde_json::Value;

use crate::common::*;

/// Deterministic pseudo-random bytes.
fn data(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn json_out(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "{}\n{}", stdout(out), stderr(out));
    serde_json::from_str(&stdout(out)).unwrap_or_else(|_| panic!("not JSON: {}", stdout(out)))
}

fn share(node: &Node, path: &Path) -> Value {
    json_out(&node.cli(&["share", path.to_str().unwrap(), "--json"]))
}

#[test]
fn share_then_get_through_the_dht_with_tickets_and_directories() {
    let dir = tempfile::tempdir().unwrap();
    let a = Node::start(&dir.path().join("a"), &[]);
    let b = Node::start(&dir.path().join("b"), &["--bootstrap", &a.tcp_addr()]);
    let c = Node::start(&dir.path().join("c"), &["--bootstrap", &b.tcp_addr()]);

    let content = data(3 * 1024 * 1024 + 123, 1);
    let src = dir.path().join("report.pdf");
    fs::write(&src, &content).unwrap();
    let shared = share(&a, &src);
    assert_eq!(
        shared["hash"],
        blake3::hash(&content).to_hex().as_str(),
        "same as b3sum"
    );
    assert_eq!(shared["size"], content.len());
    assert_eq!(shared["name"], "report.pdf");
    assert!(shared["ticket"].as_str().unwrap().starts_with("agora1"));
    let hash = shared["hash"].as_str().unwrap().to_owned();

    // c bootstrapped from b only; whatever it learned since, it must find the provider a
    // through the DHT's provider records.
    let _ = c.post("/v1/disconnect", &serde_json::json!({ "peer": a.peer_id }));
    let out = dir.path().join("got/report.pdf");
    let got = json_out(&c.cli(&["get", &hash, "-o", out.to_str().unwrap(), "--json"]));
    assert_eq!(got["size"], content.len());
    assert_eq!(fs::read(&out).unwrap(), content);
    let listed = json_out(&c.cli(&["files", "--json"]));
    assert_eq!(listed[0]["hash"], hash.as_str());
    assert_eq!(listed[0]["kind"], "cached");

    // A node outside the network (no bootstrap) gets it with the ticket alone.
    let d = Node::start(&dir.path().join("d"), &[]);
    let out_d = dir.path().join("d-copy");
    json_out(&d.cli(&[
        "get",
        shared["ticket"].as_str().unwrap(),
        "-o",
        out_d.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(fs::read(&out_d).unwrap(), content);

    // A directory tree comes back as the same tree.
    let tree = dir.path().join("album");
    fs::create_dir_all(tree.join("disc 1")).unwrap();
    fs::create_dir_all(tree.join("empty-ish/deeper")).unwrap();
    fs::write(tree.join("cover.jpg"), data(70_000, 2)).unwrap();
    fs::write(tree.join("disc 1/01.flac"), data(1_500_000, 3)).unwrap();
    fs::write(tree.join("empty-ish/deeper/notes.txt"), b"liner notes").unwrap();
    let shared_dir = share(&a, &tree);
    let out_tree = dir.path().join("album-copy");
    let got = json_out(&c.cli(&[
        "get",
        shared_dir["hash"].as_str().unwrap(),
        "-o",
        out_tree.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(got["files"], 3);
    for rel in ["cover.jpg", "disc 1/01.flac", "empty-ish/deeper/notes.txt"] {
        assert_eq!(
            fs::read(out_tree.join(rel)).unwrap(),
            fs::read(tree.join(rel)).unwrap(),
            "{rel}"
        );
    }

    // Unshare: a no longer lists it.
    let out = a.cli(&["unshare", &hash]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = json_out(&a.cli(&["files", "--json"]));
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["hash"] != hash.as_str())
    );
    assert!(src.exists(), "unshare leaves the user's file alone");
}

#[test]
fn bad_input_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let a = Node::start(&dir.path().join("a"), &[]);
    // b takes no replicas, so a stays the only provider of what a shares.
    let b = Node::start(
        &dir.path().join("b"),
        &["--bootstrap", &a.tcp_addr(), "--storage-quota", "0"],
    );

    // A path that does not exist.
    let out = a.cli(&["share", dir.path().join("nope.txt").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));

    // A hash nobody has: "not found" after a bounded search.
    let nobody = blake3::hash(b"nobody shares this").to_hex().to_string();
    let started = std::time::Instant::now();
    let out = b.cli(&["get", &nobody, "-o", dir.path().join("x").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no provider"), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(!dir.path().join("x").exists());

    // Not a hash, not a ticket.
    let out = b.cli(&["get", "hello", "-o", "/tmp/x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("neither a BLAKE3 hash"),
        "{}",
        stderr(&out)
    );

    // A listing that tries to escape the destination is refused; nothing is written outside.
    let evil = dir.path().join("evil.json");
    let listing = serde_json::json!({
        "agora_collection": 1,
        "entries": [{"path": "../escaped.txt", "hash": blake3::hash(b"x").to_hex().to_string(), "size": 1}]
    });
    fs::write(&evil, listing.to_string()).unwrap();
    let shared = share(&a, &evil);
    let out_dir = dir.path().join("dl/evil");
    let out = b.cli(&[
        "get",
        shared["hash"].as_str().unwrap(),
        "-o",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("escape"), "{}", stderr(&out));
    assert!(!dir.path().join("dl/escaped.txt").exists());
    assert!(!out_dir.exists());

    // A shared file edited afterwards is no longer served.
    let doc = dir.path().join("doc.txt");
    fs::write(&doc, b"version 1").unwrap();
    let shared = share(&a, &doc);
    std::thread::sleep(Duration::from_millis(20));
    fs::write(&doc, b"version 2, longer").unwrap();
    let out = b.cli(&[
        "get",
        shared["hash"].as_str().unwrap(),
        "-o",
        dir.path().join("doc").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("changed"), "{}", stderr(&out));
    let listed = json_out(&a.cli(&["files", "--json"]));
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["hash"] == shared["hash"])
        .unwrap()
        .clone();
    assert_eq!(entry["stale"], true);
}

#[test]
fn a_download_killed_with_the_node_resumes_from_the_verified_part() {
    // The downloader takes no replicas: the get fetches into `<out>.agora-part` itself.
    killed_download_resumes(&["--storage-quota", "0"], "big-copy.bin.agora-part");
}

#[test]
fn a_get_beside_a_replica_follows_it_and_resumes_it_after_kill_9() {
    // The downloader takes replicas: the publisher pushes one to it as it shares, the get
    // follows that fetch into the store (one transfer, not two side by side) and, after the
    // kill, resumes it from the store's partial file.
    killed_download_resumes(&[], "b/blobs");
}

#[test]
fn a_replica_interrupted_by_kill_9_is_resumed_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    // No repair round during the test: only the restarted holder can finish the replica.
    let a = Node::start(&dir.path().join("a"), &["--replica-check-interval", "3600"]);
    let b_dir = dir.path().join("b");
    let args = ["--bootstrap", &a.tcp_addr()];
    let mut b = Node::start(&b_dir, &args);
    wait_connected(&b, &a);
    let content = data(400 * 1024 * 1024, 11);
    let src = dir.path().join("big.bin");
    fs::write(&src, &content).unwrap();
    // Sharing pushes a replica to the only other node, which starts fetching it.
    let shared = share(&a, &src);
    let hash = shared["hash"].as_str().unwrap().to_owned();
    wait_for("part of the replica sent", WAIT, || {
        let (_, status) = a.get("/v1/status");
        let out = status["bytes_out"].as_u64()?;
        assert!(
            out < 300 * 1024 * 1024,
            "the replica was nearly done before the kill"
        );
        (out > 32 * 1024 * 1024).then_some(())
    });
    b.kill9();

    let b = Node::start(&b_dir, &args);
    wait_for("the replica held", WAIT, || {
        let listed = json_out(&b.cli(&["files", "--json"]));
        listed
            .as_array()?
            .iter()
            .any(|f| f["hash"] == hash.as_str())
            .then_some(())
    });
    let log = fs::read_to_string(b_dir.join("node.log")).unwrap();
    assert!(log.contains("resuming a replica"), "{log}");
    let resumed = resumed_bytes(&log);
    assert!(resumed > 0, "resumed from {resumed} bytes");
    // What it holds is the file, byte for byte (served from the store to a local get).
    let out = dir.path().join("from-replica.bin");
    json_out(&b.cli(&["get", &hash, "-o", out.to_str().unwrap(), "--json"]));
    assert!(fs::read(&out).unwrap() == content, "byte-identical replica");
}

/// Shares 400 MiB on one node, gets it on another, kills that node with SIGKILL part-way
/// (a partial file must then exist under `partial_under`, relative to the test directory),
/// restarts it and gets again: the download resumes from the verified part.
fn killed_download_resumes(b_args: &[&str], partial_under: &str) {
    let dir = tempfile::tempdir().unwrap();
    let a = Node::start(&dir.path().join("a"), &[]);
    let b_dir = dir.path().join("b");
    let mut args = vec!["--bootstrap".to_owned(), a.tcp_addr()];
    args.extend(b_args.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut b = Node::start(&b_dir, &args);
    let content = data(400 * 1024 * 1024, 9);
    let src = dir.path().join("big.bin");
    fs::write(&src, &content).unwrap();
    let shared = share(&a, &src);
    let hash = shared["hash"].as_str().unwrap().to_owned();
    let out = dir.path().join("big-copy.bin");

    let (status, started) = b.post(
        "/v1/files/get",
        &serde_json::json!({ "target": hash, "out": out }),
    );
    assert_eq!(status, 202, "{started}");
    let job = started["job"].as_u64().unwrap();
    // Kill the downloading node part-way.
    let done_at_kill = wait_for("some progress", WAIT, || {
        let (_, v) = b.get(&format!("/v1/jobs/{job}"));
        let done = v["done_bytes"].as_u64()?;
        assert_eq!(
            v["state"], "running",
            "finished before it could be killed: {v}"
        );
        (done > 16 * 1024 * 1024).then_some(done)
    });
    b.kill9();
    assert!(!out.exists(), "no partial file at the destination");
    let partials = partial_files(&dir.path().join(partial_under));
    assert_eq!(partials.len(), 1, "one partial file under {partial_under}");

    let b = Node::start(&b_dir, &args[2..]);
    wait_connected(&b, &a);
    let got = json_out(&b.cli(&["get", &hash, "-o", out.to_str().unwrap(), "--json"]));
    assert_eq!(got["size"], content.len());
    assert!(
        fs::read(&out).unwrap() == content,
        "byte-identical after resume"
    );
    assert!(!partials[0].exists(), "the partial file was completed");
    // One copy on disk: a replica the get followed is handed over to `out`, not copied beside
    // it (the store keeps only the outboard), and the node still holds and serves the blob.
    let in_store = tree_size(&b_dir.join("blobs"));
    assert!(
        in_store < content.len() as u64 / 4,
        "the store keeps {in_store} bytes beside the download"
    );
    let listed = json_out(&b.cli(&["files", "--json"]));
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["hash"] == hash.as_str()),
        "still held: {listed}"
    );
    let log = fs::read_to_string(b_dir.join("node.log")).unwrap();
    let resumed = resumed_bytes(&log);
    assert!(
        resumed > 0,
        "resumed from {resumed} bytes (had {done_at_kill} at the kill)"
    );
}

/// Bytes of the files in the tree under `path`.
fn tree_size(path: &std::path::Path) -> u64 {
    let mut total = 0;
    for entry in fs::read_dir(path).into_iter().flatten().flatten() {
        let p = entry.path();
        total += if p.is_dir() {
            tree_size(&p)
        } else {
            p.metadata().map_or(0, |m| m.len())
        };
    }
    total
}

/// The verified bytes a download resumed from, as the node logged them.
fn resumed_bytes(log: &str) -> u64 {
    log.lines()
        .find(|l| l.contains("resuming download"))
        .and_then(|l| l.split("have_bytes=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no resume in the log:\n{log}"))
}

/// The `*.agora-part` files at `path` (a file) or in the tree under it.
fn partial_files(path: &std::path::Path) -> Vec<std::path::PathBuf> {
    if path.is_file() {
        return vec![path.to_owned()];
    }
    let mut found = Vec::new();
    for entry in fs::read_dir(path).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            found.extend(partial_files(&p));
        } else if p.to_string_lossy().ends_with(".agora-part") {
            found.push(p);
        }
    }
    found
}

/// Unmounts the small tmpfs when the test ends, however it ends.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_disk_at_the_destination_is_a_clear_error_that_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    fs::create_dir_all(&small).unwrap();
    // A 2 MiB filesystem of our own (root, as in CI); without root there is no way to fill a
    // disk safely, so say so rather than pretend.
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "agora-test"])
        .arg(&small)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED: mounting a small tmpfs needs root");
        return;
    }
    let _mount = Mount(small.clone());
    let a = Node::start(&dir.path().join("a"), &[]);
    let b = Node::start(&dir.path().join("b"), &["--bootstrap", &a.tcp_addr()]);
    let content = data(8 * 1024 * 1024, 5);
    let src = dir.path().join("eight.bin");
    fs::write(&src, &content).unwrap();
    let hash = share(&a, &src)["hash"].as_str().unwrap().to_owned();

    let out = small.join("eight.bin");
    let result = b.cli(&["get", &hash, "-o", out.to_str().unwrap()]);
    assert_eq!(result.status.code(), Some(1));
    assert!(
        stderr(&result).contains("No space left on device"),
        "{}",
        stderr(&result)
    );
    assert!(!out.exists(), "no partial file at OUT");
    // The space is reserved before any byte is fetched, so nothing is left taking it.
    assert_eq!(
        fs::read_dir(&small).unwrap().count(),
        0,
        "nothing left behind on the full disk"
    );

    // Nothing else is lost: the node still downloads elsewhere, and the source is intact.
    let ok = dir.path().join("eight-ok.bin");
    json_out(&b.cli(&["get", &hash, "-o", ok.to_str().unwrap(), "--json"]));
    assert_eq!(fs::read(&ok).unwrap(), content);
    assert_eq!(fs::read(&src).unwrap(), content);
}

#[test]
fn keyword_search_finds_a_file_from_a_node_four_hops_away() {
    let dir = tempfile::tempdir().unwrap();
    // A chain: each node bootstraps from the previous one only.
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..5 {
        let extra: Vec<String> = nodes
            .last()
            .map(|prev| vec!["--bootstrap".to_owned(), prev.tcp_addr()])
            .unwrap_or_default();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        nodes.push(Node::start(&dir.path().join(format!("n{i}")), &extra));
    }
    let (first, last) = (&nodes[0], &nodes[4]);
    let content = data(200_000, 7);
    let src = dir.path().join("Holiday_Photos-2024 (Greece).zip");
    fs::write(&src, &content).unwrap();
    let hash = share(first, &src)["hash"].as_str().unwrap().to_owned();
    fs::write(dir.path().join("Work Photos.tar"), b"other").unwrap();
    share(&nodes[1], &dir.path().join("Work Photos.tar"));

    // Case and punctuation do not matter; every word must match.
    let hits = json_out(&last.cli(&["search", "PHOTOS", "greece", "--json"]));
    let hits = hits.as_array().unwrap();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0]["hash"], hash.as_str());
    assert_eq!(hits[0]["name"], "Holiday_Photos-2024 (Greece).zip");
    assert_eq!(hits[0]["size"], content.len());
    assert!(hits[0]["providers"].as_u64().unwrap() >= 1);
    let both = json_out(&last.cli(&["search", "photos", "--json"]));
    assert_eq!(both.as_array().unwrap().len(), 2, "{both}");
    let none = json_out(&last.cli(&["search", "nonexistent", "words", "--json"]));
    assert!(none.as_array().unwrap().is_empty());
    let out = last.cli(&["search", "x"]);
    assert_eq!(out.status.code(), Some(1));

    // And the hit can be fetched, byte-identical.
    let dest = dir.path().join("found.zip");
    json_out(&last.cli(&["get", &hash, "-o", dest.to_str().unwrap(), "--json"]));
    assert_eq!(fs::read(&dest).unwrap(), content);
}

fn holds(node: &Node, hash: &str) -> bool {
    let listed = json_out(&node.cli(&["files", "--json"]));
    listed.as_array().unwrap().iter().any(|f| f["hash"] == hash)
}

#[test]
fn a_file_outlives_its_publisher_through_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let mut publisher = Node::start(&dir.path().join("pub"), &[]);
    let holders: Vec<Node> = (0..3)
        .map(|i| {
            Node::start(
                &dir.path().join(format!("h{i}")),
                &[
                    "--bootstrap",
                    &publisher.tcp_addr(),
                    "--replica-check-interval",
                    "2",
                ],
            )
        })
        .collect();
    for h in &holders {
        wait_for("routing tables", WAIT, || {
            let (_, s) = h.get("/v1/status");
            (s["routing_table_size"].as_u64()? >= 3).then_some(())
        });
    }
    let content = data(2 * 1024 * 1024 + 77, 11);
    let src = dir.path().join("precious.bin");
    fs::write(&src, &content).unwrap();
    let hash = share(&publisher, &src)["hash"].as_str().unwrap().to_owned();
    for h in &holders {
        wait_for("a replica", WAIT, || holds(h, &hash).then_some(()));
    }
    // The publisher goes away for good.
    publisher.kill9();
    fs::remove_file(&src).unwrap();

    let late = Node::start(
        &dir.path().join("late"),
        &["--bootstrap", &holders[1].tcp_addr()],
    );
    let out = dir.path().join("recovered.bin");
    json_out(&late.cli(&["get", &hash, "-o", out.to_str().unwrap(), "--json"]));
    assert_eq!(fs::read(&out).unwrap(), content);
}

#[test]
fn replicas_are_evicted_under_the_quota_but_pins_and_own_shares_stay() {
    let dir = tempfile::tempdir().unwrap();
    let a = Node::start(&dir.path().join("a"), &[]);
    // q holds replicas for a under a 3 MiB quota.
    let q = Node::start(
        &dir.path().join("q"),
        &["--bootstrap", &a.tcp_addr(), "--storage-quota", "3MiB"],
    );
    wait_connected(&a, &q);
    let own = dir.path().join("q-own.bin");
    fs::write(&own, data(5 * 1024 * 1024, 20)).unwrap();
    let own_hash = share(&q, &own)["hash"].as_str().unwrap().to_owned();

    let mut hashes = Vec::new();
    for i in 0..4 {
        let path = dir.path().join(format!("file{i}.bin"));
        fs::write(&path, data(1200 * 1024, 30 + i)).unwrap();
        let hash = share(&a, &path)["hash"].as_str().unwrap().to_owned();
        wait_for("the replica on q", WAIT, || holds(&q, &hash).then_some(()));
        if i == 1 {
            assert!(q.cli(&["pin", &hash]).status.success());
        }
        hashes.push(hash);
    }
    // file0 was evicted for file2; file2 (not file1, pinned) for file3.
    assert!(!holds(&q, &hashes[0]), "oldest cached replica evicted");
    assert!(holds(&q, &hashes[1]), "pinned replica kept");
    assert!(!holds(&q, &hashes[2]), "next cached replica evicted");
    assert!(holds(&q, &hashes[3]), "newest replica held");
    assert!(holds(&q, &own_hash), "own share never evicted");
    let listed = json_out(&q.cli(&["files", "--json"]));
    let pinned = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["hash"] == hashes[1].as_str())
        .unwrap()
        .clone();
    assert_eq!(pinned["kind"], "pinned");
}

#[test]
fn a_node_stops_promptly_on_sigterm_while_serving_a_download() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Node::start(&dir.path().join("a"), &[]);
    let b = Node::start(
        &dir.path().join("b"),
        &["--bootstrap", &a.tcp_addr(), "--storage-quota", "0"],
    );
    let src = dir.path().join("big.bin");
    fs::write(&src, data(300 * 1024 * 1024, 13)).unwrap();
    let hash = share(&a, &src)["hash"].as_str().unwrap().to_owned();
    let out = dir.path().join("copy.bin");
    let (status, started) = b.post(
        "/v1/files/get",
        &serde_json::json!({ "target": hash, "out": out }),
    );
    assert_eq!(status, 202, "{started}");
    let job = started["job"].as_u64().unwrap();
    wait_for("the transfer to start", WAIT, || {
        let (_, v) = b.get(&format!("/v1/jobs/{job}"));
        (v["done_bytes"].as_u64()? > 0).then_some(())
    });
    let t0 = std::time::Instant::now();
    let exit = a.terminate();
    assert!(exit.success(), "{exit}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );
    assert!(!dir.path().join("a/api.json").exists());
    // The downloader is left with a clear failure, and nothing at OUT.
    // (Opening a stream to a dead peer can wait for a dial that never completes; each try is
    // bounded by 3 s, so giving up on the only provider takes about 10 s.)
    let view = wait_for("the download to end", Duration::from_secs(120), || {
        let (_, v) = b.get(&format!("/v1/jobs/{job}"));
        (v["state"] != "running").then_some(v)
    });
    if view["state"] == "failed" {
        assert!(!out.exists());
    }
}

#[test]
fn a_get_before_the_node_has_peers_waits_for_the_network() {
    // `agora get` on a node that is not connected to anyone yet (just started, bootstrap still
    // under way) must wait for the network instead of reporting "not found" at once.
    let dir = tempfile::tempdir().unwrap();
    let a = Node::start(&dir.path().join("a"), &[]);
    let content = data(200_000, 9);
    let src = dir.path().join("early.bin");
    std::fs::write(&src, &content).unwrap();
    let hash = share(&a, &src)["hash"].as_str().unwrap().to_owned();
    let b = Node::start(&dir.path().join("b"), &[]);
    let out = dir.path().join("early.out");
    let get = agora()
        .args(["get", &hash, "-o", out.to_str().unwrap(), "--data-dir"])
        .arg(&b.dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let connected = b.cli(&["connect", &a.tcp_addr()]);
    assert!(connected.status.success(), "{}", stderr(&connected));
    let got = get.wait_with_output().unwrap();
    assert!(got.status.success(), "{}", stderr(&got));
    assert_eq!(std::fs::read(&out).unwrap(), content);
}

#[test]
fn a_download_the_user_deleted_is_fetched_again() {
    // A download is served from where it was written; if the user deletes (or changes) that
    // file, a later `agora get` must fetch the blob again rather than fail to copy it.
    let dir = tempfile::tempdir().unwrap();
    let a = Node::start(&dir.path().join("a"), &[]);
    // Too little quota for a replica: b holds the blob only as the download it made.
    let b = Node::start(
        &dir.path().join("b"),
        &["--bootstrap", &a.tcp_addr(), "--storage-quota", "64KiB"],
    );
    let content = data(300_000, 11);
    let src = dir.path().join("once.bin");
    std::fs::write(&src, &content).unwrap();
    let hash = share(&a, &src)["hash"].as_str().unwrap().to_owned();
    let first = dir.path().join("first.bin");
    let got = b.cli(&["get", &hash, "-o", first.to_str().unwrap()]);
    assert!(got.status.success(), "{}", stderr(&got));
    std::fs::remove_file(&first).unwrap();
    let second = dir.path().join("second.bin");
    let got = b.cli(&["get", &hash, "-o", second.to_str().unwrap()]);
    assert!(got.status.success(), "{}", stderr(&got));
    assert_eq!(std::fs::read(&second).unwrap(), content);
    // Changed in place: also fetched again, and the copy is the original content.
    std::fs::write(&second, b"edited by the user").unwrap();
    let third = dir.path().join("third.bin");
    let got = b.cli(&["get", &hash, "-o", third.to_str().unwrap()]);
    assert!(got.status.success(), "{}", stderr(&got));
    assert_eq!(std::fs::read(&third).unwrap(), content);
}

/// A swarm outlives its seeder: the seeder super-seeds (each piece leaves it once before any
/// leaves it twice), so once it has uploaded 1.25 × the file and is killed, the 6 downloaders
/// still complete, verified, from each other. Without super-seeding a seeder at that point has
/// sent some pieces twice and others never, and the downloads cannot finish.
#[test]
fn a_swarm_completes_from_the_downloaders_after_its_seeder_leaves() {
    const SIZE: usize = 32 << 20;
    let dir = tempfile::tempdir().unwrap();
    // No replicas: only the swarm moves the file.
    let mut seeder = Node::start(&dir.path().join("s"), &["--storage-quota", "0"]);
    let downloaders: Vec<Node> = (0..6)
        .map(|i| {
            Node::start(
                &dir.path().join(format!("d{i}")),
                &["--storage-quota", "0", "--bootstrap", &seeder.tcp_addr()],
            )
        })
        .collect();
    let content = data(SIZE, 21);
    let src = dir.path().join("big.bin");
    fs::write(&src, &content).unwrap();
    let hash = share(&seeder, &src)["hash"].as_str().unwrap().to_owned();
    let sent = |n: &Node| n.get("/v1/status").1["bytes_out"].as_u64().unwrap();
    let before = sent(&seeder);

    let mut gets: Vec<_> = downloaders
        .iter()
        .enumerate()
        .map(|(i, d)| {
            agora()
                .args(["get", &hash, "-o"])
                .arg(dir.path().join(format!("out{i}.bin")))
                .arg("--data-dir")
                .arg(&d.dir)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let uploaded = loop {
        let up = sent(&seeder) - before;
        if up >= SIZE as u64 * 5 / 4 {
            break up;
        }
        let mut running = 0;
        for get in gets.iter_mut() {
            running += usize::from(get.try_wait().unwrap().is_none());
        }
        assert!(
            running > 0,
            "the swarm finished before its seeder uploaded 1.25 x the file ({up} bytes)"
        );
        assert!(std::time::Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(5));
    };
    seeder.kill9();
    for (i, get) in gets.into_iter().enumerate() {
        let out = get.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "downloader {i} failed after the seeder left at {uploaded} bytes: {}",
            stderr(&out)
        );
        assert!(
            fs::read(dir.path().join(format!("out{i}.bin"))).unwrap() == content,
            "copy {i} differs"
        );
    }
}
