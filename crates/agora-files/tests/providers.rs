//! Multi-source downloads against real swarms on loopback: honest providers, one that lies
//! (sends data that does not match the hash) and one that stalls; streams that carry many
//! requests, and providers that take one request per stream.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use agora_files::{
    BLOCK_SIZE, Files, JobState,
    protocol::{PROTOCOL, PROTOCOL_ONE_SHOT, Request, Response, read_limited_frame, write_frame},
};
use agora_net::{Config, Handle, Multiaddr};
use bao_tree::io::{outboard::PreOrderOutboard, sync::CreateOutboard};
use futures::{AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;

const WAIT: Duration = Duration::from_secs(60);

async fn node(bootstrap: Vec<Multiaddr>) -> (Handle, Multiaddr) {
    let config =
        Config::new(vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()]).with_bootstrap(bootstrap);
    let (handle, event_loop) = agora_net::new(
        Keypair::generate_ed25519(),
        config,
        &mut libp2p::metrics::Registry::default(),
    )
    .unwrap();
    tokio::spawn(event_loop.run());
    loop {
        if let Some(a) = handle.local_info().await.unwrap().addrs.first() {
            return (handle.clone(), a.parse().unwrap());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn files(net: &Handle, dir: &std::path::Path) -> Arc<Files> {
    files_and_db(net, dir).0
}

/// [`files`] and the database it keeps its store in.
fn files_and_db(net: &Handle, dir: &std::path::Path) -> (Arc<Files>, Arc<agora_store::Db>) {
    // No replication here: the downloader must fetch from the providers under test.
    let config = agora_files::service::Config {
        replicas: 0,
        ..Default::default()
    };
    start_files(net, dir, config)
}

fn files_with(
    net: &Handle,
    dir: &std::path::Path,
    config: agora_files::service::Config,
) -> Arc<Files> {
    start_files(net, dir, config).0
}

fn start_files(
    net: &Handle,
    dir: &std::path::Path,
    config: agora_files::service::Config,
) -> (Arc<Files>, Arc<agora_store::Db>) {
    std::fs::create_dir_all(dir).unwrap();
    let db = Arc::new(agora_store::Db::open(&dir.join("db")).unwrap());
    (
        Files::start(net.clone(), dir, db.clone(), config).unwrap(),
        db,
    )
}

/// Writes `mib` MiB of patterned bytes to `source.bin` in `dir`: the bytes, their hash, the path.
fn source_file(dir: &std::path::Path, mib: u32) -> (Vec<u8>, blake3::Hash, std::path::PathBuf) {
    let data: Vec<u8> = (0..mib * 1024 * 1024)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let src = dir.join("source.bin");
    std::fs::write(&src, &data).unwrap();
    let hash = blake3::hash(&data);
    (data, hash, src)
}

async fn wait_job(files: &Files, id: u64) -> agora_files::JobView {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let view = files.job(id).unwrap();
        if !matches!(view.state, JobState::Running) {
            return view;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} still running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `net` sees at least `n` providers of `hash` (records spread through the hub).
async fn until_providers(net: &Handle, hash: &blake3::Hash, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while net
        .find_providers(hash.as_bytes().to_vec(), 16)
        .await
        .unwrap()
        .len()
        < n
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "providers not found"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A hub, a peer that `serve` makes a (fake) provider of `hash`, and a downloader (its store
/// under `dir`) that already sees that provider in the DHT.
struct WithFake {
    /// The hub's and the fake's handles: a node stops when its last handle goes.
    _keep: (Handle, Handle),
    hub_addr: Multiaddr,
    down_net: Handle,
    down_addr: Multiaddr,
    down: Arc<Files>,
}

async fn with_fake_provider(
    dir: &std::path::Path,
    hash: &blake3::Hash,
    serve: impl FnOnce(&Handle),
) -> WithFake {
    let (hub, hub_addr) = node(vec![]).await;
    let hub_addr = hub_addr.with_p2p(hub.local_peer_id()).unwrap();
    let (fake, _) = node(vec![hub_addr.clone()]).await;
    serve(&fake);
    fake.provide(hash.as_bytes().to_vec()).await.unwrap();
    let (down_net, down_addr) = node(vec![hub_addr.clone()]).await;
    let down = files(&down_net, dir);
    until_providers(&down_net, hash, 1).await;
    WithFake {
        _keep: (hub, fake),
        hub_addr,
        down_net,
        down_addr,
        down,
    }
}

/// Serves the blob's real size but data corrupted every 64 KiB.
fn liar(net: &Handle, data: Vec<u8>) {
    let mut corrupt = data.clone();
    for i in (0..corrupt.len()).step_by(64 * 1024) {
        corrupt[i] ^= 0xff;
    }
    let honest =
        PreOrderOutboard::<Vec<u8>>::create_sized(&data[..], data.len() as u64, BLOCK_SIZE)
            .unwrap();
    let (corrupt, honest, size) = (Arc::new(corrupt), Arc::new(honest), data.len() as u64);
    let mut incoming = net.stream_control().accept(PROTOCOL).unwrap();
    tokio::spawn(async move {
        while let Some((_, mut stream)) = incoming.next().await {
            let (corrupt, honest) = (corrupt.clone(), honest.clone());
            tokio::spawn(async move {
                let frame = read_limited_frame(&mut stream, 16 * 1024).await.unwrap();
                let req: Request = agora_files::wire::decode(&frame).unwrap();
                let ranges = req.chunk_ranges().unwrap();
                let mut encoded = Vec::new();
                bao_tree::io::sync::encode_ranges(&corrupt[..], &*honest, &ranges, &mut encoded)
                    .unwrap();
                write_frame(&mut stream, &Response::Size(size))
                    .await
                    .unwrap();
                let _ = stream.write_all(&encoded).await;
                let _ = stream.close().await;
            });
        }
    });
}

/// Answers with the size, then never sends a byte.
fn staller(net: &Handle, size: u64) {
    let mut incoming = net.stream_control().accept(PROTOCOL).unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some((_, mut stream)) = incoming.next().await {
            let _ = read_limited_frame(&mut stream, 16 * 1024).await;
            let _ = write_frame(&mut stream, &Response::Size(size)).await;
            held.push(stream);
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_from_many_providers_bans_the_liar_and_outlasts_the_staller() {
    let dir = tempfile::tempdir().unwrap();
    let (data, hash, src) = source_file(dir.path(), 16);

    let (hub, hub_addr) = node(vec![]).await;
    let hub_addr = hub_addr.with_p2p(hub.local_peer_id()).unwrap();
    let mut honest = Vec::new();
    for i in 0..2 {
        let (net, _) = node(vec![hub_addr.clone()]).await;
        let f = files(&net, &dir.path().join(format!("honest{i}")));
        let job = f.share(src.clone(), false, false);
        done(&f, job.id).await;
        honest.push((net, f));
    }
    let (liar_net, _) = node(vec![hub_addr.clone()]).await;
    liar(&liar_net, data.clone());
    liar_net.provide(hash.as_bytes().to_vec()).await.unwrap();
    let (staller_net, _) = node(vec![hub_addr.clone()]).await;
    staller(&staller_net, data.len() as u64);
    staller_net.provide(hash.as_bytes().to_vec()).await.unwrap();

    let (down_net, _) = node(vec![hub_addr]).await;
    let down = files(&down_net, &dir.path().join("down"));
    until_providers(&down_net, &hash, 4).await;

    let out = dir.path().join("out/copy.bin");
    let job = down.get(&hash.to_hex(), out.clone()).unwrap();
    let view = wait_job(&down, job.id).await;
    assert!(matches!(view.state, JobState::Done { .. }), "{view:?}");
    assert_eq!(std::fs::read(&out).unwrap(), data, "byte-identical");
    assert_eq!(view.banned, vec![liar_net.local_peer_id().to_string()]);
    assert!(!out.with_file_name("copy.bin.agora-part").exists());

    // The downloader now provides it too, and holds it as a cached blob.
    let listed = down.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].hash, hash.to_hex().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_liars_means_failure_and_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = vec![7u8; 3 * 1024 * 1024];
    let hash = blake3::hash(&data);
    let WithFake { down, _keep, .. } = with_fake_provider(&dir.path().join("down"), &hash, |net| {
        liar(net, data.clone())
    })
    .await;
    let out = dir.path().join("x.bin");
    let job = down.get(&hash.to_hex(), out.clone()).unwrap();
    let view = wait_job(&down, job.id).await;
    match view.state {
        JobState::Failed { error, code } => {
            assert_eq!(code, "providers_failed");
            assert!(
                error.contains("does not verify") || error.contains("bad data"),
                "{error}"
            );
        }
        other => panic!("expected failure, got {other:?}"),
    }
    assert!(
        !out.exists(),
        "nothing unverified appears at the destination"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloaders_serve_each_other_what_they_have_verified() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..48 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_246_822_519) >> 11) as u8)
        .collect();
    let hash = blake3::hash(&data);
    let src = dir.path().join("source.bin");
    std::fs::write(&src, &data).unwrap();
    let (seed_net, seed_addr) = node(vec![]).await;
    let seed_addr = seed_addr.with_p2p(seed_net.local_peer_id()).unwrap();
    let seeder = files(&seed_net, &dir.path().join("seeder"));
    let job = seeder.share(src.clone(), false, false);
    done(&seeder, job.id).await;

    // Downloaders join one after another, each finding the seeder and the earlier ones.
    let mut downloads = Vec::new();
    for i in 0..4 {
        let (net, _) = node(vec![seed_addr.clone()]).await;
        let f = files(&net, &dir.path().join(format!("down{i}")));
        let out = dir.path().join(format!("copy{i}.bin"));
        let job = f.get(&hash.to_hex(), out.clone()).unwrap();
        downloads.push((net, f, job.id, out));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut served_by_downloaders = 0;
    for (net, f, id, out) in &downloads {
        done(f, *id).await;
        assert!(std::fs::read(out).unwrap() == data, "byte-identical");
        // Nothing wrote to the file after it appeared (an end-game straggler used to, which
        // changed its modification time and made the node stop serving it as stale).
        let meta = f.store().get(&hash).unwrap().expect("adopted");
        assert!(
            !meta.stale && agora_files::store::Store::source_fresh(&meta),
            "{meta:?}"
        );
        served_by_downloaders += net.stats().await.unwrap().bytes_out;
    }
    let seeded = seed_net.stats().await.unwrap().bytes_out;
    eprintln!(
        "seeder sent {} MiB, downloaders sent each other {} MiB, for 4 x {} MiB",
        seeded >> 20,
        served_by_downloaders >> 20,
        data.len() >> 20
    );
    assert!(
        served_by_downloaders > 4 * 1024 * 1024,
        "downloaders served each other only {served_by_downloaders} bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_beside_an_incoming_replica_fetches_the_blob_once() {
    let dir = tempfile::tempdir().unwrap();
    let (data, hash, src) = source_file(dir.path(), 48);
    let (seed_net, seed_addr) = node(vec![]).await;
    let seed_addr = seed_addr.with_p2p(seed_net.local_peer_id()).unwrap();
    // The publisher pushes a replica of what it shares to the nearest nodes: here, the one
    // whose user is about to get the same file.
    let seeder = files_with(
        &seed_net,
        &dir.path().join("seeder"),
        agora_files::service::Config::default(),
    );
    let (down_net, _) = node(vec![seed_addr]).await;
    let down = files_with(
        &down_net,
        &dir.path().join("down"),
        agora_files::service::Config::default(),
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while !seed_net
        .closest_peers(hash.as_bytes().to_vec())
        .await
        .unwrap_or_default()
        .contains(&down_net.local_peer_id())
    {
        assert!(tokio::time::Instant::now() < deadline, "peers never met");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let job = seeder.share(src.clone(), false, false);
    done(&seeder, job.id).await;
    let out = dir.path().join("copy.bin");
    let job = down.get(&hash.to_hex(), out.clone()).unwrap();
    done(&down, job.id).await;
    assert!(std::fs::read(&out).unwrap() == data, "byte-identical");
    // The replica and the get are one transfer, not two side by side.
    let deadline = tokio::time::Instant::now() + WAIT;
    while down.store().get(&hash).unwrap().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "replica never held");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent = seed_net.stats().await.unwrap().bytes_out;
    assert!(
        sent < data.len() as u64 * 3 / 2,
        "the publisher sent {} MiB for one {} MiB blob",
        sent >> 20,
        data.len() >> 20
    );
}

/// Waits for job `id` and asserts it succeeded; returns its result.
async fn done(files: &Files, id: u64) -> serde_json::Value {
    let view = wait_job(files, id).await;
    match view.state {
        JobState::Done { result } => result,
        _ => panic!("{view:?}"),
    }
}

/// Claims to be downloading the blob too and to have none of it yet, whatever is asked.
fn empty_partial(net: &Handle, size: u64) {
    let mut incoming = net.stream_control().accept(PROTOCOL).unwrap();
    tokio::spawn(async move {
        while let Some((_, mut stream)) = incoming.next().await {
            tokio::spawn(async move {
                let _ = read_limited_frame(&mut stream, 16 * 1024).await;
                let response = Response::Partial { size, have: vec![] };
                let _ = write_frame(&mut stream, &response).await;
                let _ = stream.close().await;
            });
        }
    });
}

/// Downloaders that start together announce themselves at once, so a provider lookup can
/// return only peers that have nothing verified yet. The get must not give up on that: it
/// looks again and downloads from the seeder that turns up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_that_first_finds_only_partial_providers_looks_again() {
    let dir = tempfile::tempdir().unwrap();
    let (data, hash, src) = source_file(dir.path(), 4);
    let size = data.len() as u64;
    let WithFake {
        hub_addr,
        down,
        _keep,
        ..
    } = with_fake_provider(&dir.path().join("down"), &hash, |net| {
        empty_partial(net, size)
    })
    .await;
    let out = dir.path().join("copy.bin");
    let job = down.get(&hash.to_hex(), out.clone()).unwrap();

    // The seeder appears only once the get has asked the partial one for the size.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        matches!(down.job(job.id).unwrap().state, JobState::Running),
        "the get gave up while only a partial provider was known: {:?}",
        down.job(job.id).unwrap()
    );
    let (seed_net, _) = node(vec![hub_addr]).await;
    let seeder = files(&seed_net, &dir.path().join("seeder"));
    let shared = seeder.share(src, false, false);
    done(&seeder, shared.id).await;
    done(&down, job.id).await;
    assert!(std::fs::read(&out).unwrap() == data, "byte-identical");
}

/// A publisher may ask a node to hold a replica of a blob that node's user is already
/// getting. From the moment the get starts — here it is still learning the size from a
/// provider that stalls, before any partial file exists — the answer is "already fetching",
/// not a second transfer beside the get.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_request_while_a_get_looks_for_the_size_is_not_a_second_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let data = vec![3u8; 4 * 1024 * 1024];
    let hash = blake3::hash(&data);
    let size = data.len() as u64;
    let WithFake {
        down_net,
        down_addr,
        down,
        _keep,
        ..
    } = with_fake_provider(&dir.path().join("down"), &hash, |net| staller(net, size)).await;
    let job = down
        .get(&hash.to_hex(), dir.path().join("copy.bin"))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(matches!(down.job(job.id).unwrap().state, JobState::Running));

    let (publisher, _) = node(vec![down_addr.with_p2p(down_net.local_peer_id()).unwrap()]).await;
    let answer = ask_replica(&publisher, &down_net, &hash, data.len() as u64).await;
    assert!(answer.accepted, "{answer:?}");
    assert_eq!(answer.reason, "already fetching", "{answer:?}");
}

/// A provider's stream layer keeps one inbound stream waiting per protocol and drops the rest
/// of a burst unanswered. Many downloads started at once (a directory of small files, or
/// several users' gets) make such bursts; every one of them must still complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_downloads_from_one_provider_all_complete() {
    let dir = tempfile::tempdir().unwrap();
    let (data, hash, src) = source_file(dir.path(), 1);
    let (seed_net, seed_addr) = node(vec![]).await;
    let seed_addr = seed_addr.with_p2p(seed_net.local_peer_id()).unwrap();
    let seeder = files(&seed_net, &dir.path().join("seeder"));
    let shared = seeder.share(src, false, false);
    done(&seeder, shared.id).await;
    let (down_net, _) = node(vec![seed_addr]).await;
    let down = files(&down_net, &dir.path().join("down"));
    until_providers(&down_net, &hash, 1).await;
    let jobs: Vec<_> = (0..24)
        .map(|i| {
            let out = dir.path().join(format!("copy{i}.bin"));
            (down.get(&hash.to_hex(), out.clone()).unwrap(), out)
        })
        .collect();
    for (job, out) in jobs {
        done(&down, job.id).await;
        assert!(std::fs::read(&out).unwrap() == data, "byte-identical");
    }
}

/// A directory of small files: each file is one piece, fetched once from the one provider
/// (every worker of that provider used to fetch it at once: 3.3 × the bytes), and all of them
/// arrive intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_of_small_files_is_fetched_once_per_file() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    let mut total = 0;
    for i in 0..60u32 {
        let sub = tree.join(format!("d{}", i % 6));
        std::fs::create_dir_all(&sub).unwrap();
        let body: Vec<u8> = (0..6000 + i * 37).map(|j| (j ^ (i * 131)) as u8).collect();
        total += body.len() as u64;
        std::fs::write(sub.join(format!("f{i}.bin")), body).unwrap();
    }
    // The same content at three paths: fetched once, present at all three.
    let same: Vec<u8> = (0..9000u32).map(|j| (j * 7) as u8).collect();
    for name in ["d0/same.bin", "d3/same.bin", "same-too.bin"] {
        std::fs::write(tree.join(name), &same).unwrap();
    }
    total += same.len() as u64;
    let (seed_net, seed_addr) = node(vec![]).await;
    let seed_addr = seed_addr.with_p2p(seed_net.local_peer_id()).unwrap();
    let seeder = files(&seed_net, &dir.path().join("seeder"));
    let result = done(&seeder, seeder.share(tree.clone(), false, false).id).await;
    let root = result["hash"].as_str().unwrap().to_owned();
    let (down_net, _) = node(vec![seed_addr]).await;
    let down = files(&down_net, &dir.path().join("down"));
    until_providers(&down_net, &blake3::Hash::from_hex(&root).unwrap(), 1).await;
    let before = seed_net.stats().await.unwrap().bytes_out;
    let out = dir.path().join("copy");
    done(&down, down.get(&root, out.clone()).unwrap().id).await;
    for name in ["d0/same.bin", "d3/same.bin", "same-too.bin"] {
        assert!(
            std::fs::read(out.join(name)).unwrap() == same,
            "{name} differs"
        );
    }
    for i in 0..60u32 {
        let rel = format!("d{}/f{i}.bin", i % 6);
        assert!(
            std::fs::read(out.join(&rel)).unwrap() == std::fs::read(tree.join(&rel)).unwrap(),
            "{rel} differs"
        );
    }
    let sent = seed_net.stats().await.unwrap().bytes_out - before;
    assert!(
        sent < total * 2,
        "the seeder sent {sent} bytes for {total} bytes of files"
    );
}

/// Claims the blob is 1 TiB (and sends nothing that proves it).
fn size_liar(net: &Handle) {
    let mut incoming = net.stream_control().accept(PROTOCOL).unwrap();
    tokio::spawn(async move {
        while let Some((_, mut stream)) = incoming.next().await {
            tokio::spawn(async move {
                let _ = read_limited_frame(&mut stream, 16 * 1024).await;
                let _ = write_frame(&mut stream, &Response::Size(1 << 40)).await;
                let _ = stream.write_all(&[0u8; 4096]).await;
                let _ = stream.close().await;
            });
        }
    });
}

/// A provider that lies about the size is caught by the size proof (the blob's last chunk
/// group must hash up to the root): the downloader never reserves the claimed terabyte, and
/// fails with the provider's fault, not a full disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lie_about_the_size_is_caught_before_any_space_is_reserved() {
    let dir = tempfile::tempdir().unwrap();
    for len in [5000usize, 3 * 1024 * 1024] {
        let data = vec![9u8; len];
        let hash = blake3::hash(&data);
        let WithFake { down, _keep, .. } =
            with_fake_provider(&dir.path().join(format!("down{len}")), &hash, size_liar).await;
        let out = dir.path().join(format!("x{len}.bin"));
        let view = wait_job(&down, down.get(&hash.to_hex(), out.clone()).unwrap().id).await;
        match view.state {
            JobState::Failed { error, code } => {
                assert_eq!(code, "providers_failed", "{len}: {error}");
                assert!(error.contains("does not verify"), "{len}: {error}");
            }
            other => panic!("{len}: expected failure, got {other:?}"),
        }
        assert!(!out.exists());
        assert!(
            !agora_files::download::partial_path(&out).exists(),
            "{len}: no space reserved"
        );
    }
}

/// Asks `holder` (through `from`) to hold a replica of `hash`, claimed to be `size` bytes.
async fn ask_replica(
    from: &Handle,
    holder: &Handle,
    hash: &blake3::Hash,
    size: u64,
) -> agora_files::service::ReplicateResponse {
    let request = agora_files::service::ReplicateRequest {
        hash: hash.to_hex().to_string(),
        size,
        name: "r.bin".into(),
    };
    let answer = from
        .request(
            holder.local_peer_id(),
            agora_files::service::REPLICATE_PROTOCOL,
            agora_files::wire::encode(&request),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    agora_files::wire::decode(&answer).unwrap()
}

/// Waits until `files` holds `hash` complete.
async fn until_held(files: &Files, hash: &blake3::Hash) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while files.store().get(hash).unwrap().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "replica never held");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Hardening item 3: a replica request used to make room under the quota at once, for its
/// claimed size, evicting cached replicas before a single byte was verified. Hashes cost
/// nothing, so any peer could flush every replica a node held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_claims_evict_nothing_and_verified_replicas_make_room() {
    let dir = tempfile::tempdir().unwrap();
    let mib = 1024 * 1024;
    // Room for one 2 MiB replica (and its outboard), not two.
    let config = agora_files::service::Config {
        replicas: 0,
        storage_quota: 3 * mib,
        ..Default::default()
    };
    let (holder_net, holder_addr) = node(vec![]).await;
    let holder_addr = holder_addr.with_p2p(holder_net.local_peer_id()).unwrap();
    let holder = files_with(&holder_net, &dir.path().join("holder"), config);
    let (pub_net, _) = node(vec![holder_addr.clone()]).await;
    let publisher = files(&pub_net, &dir.path().join("publisher"));
    let (first, first_hash, first_src) = source_file(dir.path(), 2);
    done(&publisher, publisher.share(first_src, false, false).id).await;
    let answer = ask_replica(&pub_net, &holder_net, &first_hash, first.len() as u64).await;
    assert!(answer.accepted, "{answer:?}");
    until_held(&holder, &first_hash).await;

    // The attack: replicas of blobs nobody can serve, each claiming the whole quota's worth.
    let (attacker, _) = node(vec![holder_addr]).await;
    for i in 0..10u32 {
        let fake = blake3::hash(&i.to_be_bytes());
        let _ = ask_replica(&attacker, &holder_net, &fake, 2 * mib).await;
    }
    // Every claim is given up (no provider delivers a byte) and the real replica is kept.
    let deadline = tokio::time::Instant::now() + WAIT;
    while holder.replicas_in_flight() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "claims still being fetched"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        holder.store().get(&first_hash).unwrap().is_some(),
        "a claim evicted a verified replica"
    );

    // A second real replica that does not fit beside the first makes room as it arrives.
    let mut second = first.clone();
    second[0] ^= 0xff;
    let second_hash = blake3::hash(&second);
    let second_src = dir.path().join("second.bin");
    std::fs::write(&second_src, &second).unwrap();
    done(&publisher, publisher.share(second_src, false, false).id).await;
    let answer = ask_replica(&pub_net, &holder_net, &second_hash, 2 * mib).await;
    assert!(answer.accepted, "{answer:?}");
    until_held(&holder, &second_hash).await;
    assert!(
        holder.store().get(&first_hash).unwrap().is_none(),
        "the older cached replica made room for verified data"
    );
}

/// Serves `data` honestly on `protocol`, counting the streams and the requests it answers: on
/// [`PROTOCOL`] every request of a stream in turn until the requester closes it, on
/// [`PROTOCOL_ONE_SHOT`] one request per stream.
fn counting_provider(
    net: &Handle,
    data: Vec<u8>,
    protocol: libp2p::StreamProtocol,
) -> Arc<[AtomicUsize; 2]> {
    let one_shot = protocol == PROTOCOL_ONE_SHOT;
    let outboard =
        PreOrderOutboard::<Vec<u8>>::create_sized(&data[..], data.len() as u64, BLOCK_SIZE)
            .unwrap();
    let (data, outboard) = (Arc::new(data), Arc::new(outboard));
    let counts = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let mut incoming = net.stream_control().accept(protocol).unwrap();
    let counted = counts.clone();
    tokio::spawn(async move {
        while let Some((_, mut stream)) = incoming.next().await {
            counted[0].fetch_add(1, Ordering::SeqCst);
            let (data, outboard, counted) = (data.clone(), outboard.clone(), counted.clone());
            tokio::spawn(async move {
                while let Ok(frame) = read_limited_frame(&mut stream, 16 * 1024).await {
                    counted[1].fetch_add(1, Ordering::SeqCst);
                    let req: Request = agora_files::wire::decode(&frame).unwrap();
                    let ranges = req.chunk_ranges().unwrap();
                    let mut encoded = Vec::new();
                    bao_tree::io::sync::encode_ranges(&data[..], &*outboard, &ranges, &mut encoded)
                        .unwrap();
                    let size = Response::Size(data.len() as u64);
                    if write_frame(&mut stream, &size).await.is_err()
                        || stream.write_all(&encoded).await.is_err()
                        || stream.flush().await.is_err()
                        || one_shot
                    {
                        break;
                    }
                }
                let _ = stream.close().await;
            });
        }
    });
    counts
}

/// Downloads a blob of `mib` MiB from a [`counting_provider`] speaking `protocol`, checks the
/// copy, and returns how many streams and requests the provider saw.
async fn fetch_counted(mib: u32, protocol: libp2p::StreamProtocol) -> (usize, usize) {
    let dir = tempfile::tempdir().unwrap();
    let (data, hash, _) = source_file(dir.path(), mib);
    let mut counts = None;
    let fake = with_fake_provider(dir.path(), &hash, |net| {
        counts = Some(counting_provider(net, data.clone(), protocol));
    })
    .await;
    let out = dir.path().join("out/copy.bin");
    let job = fake.down.get(&hash.to_hex(), out.clone()).unwrap();
    done(&fake.down, job.id).await;
    assert_eq!(std::fs::read(&out).unwrap(), data, "byte-identical");
    let counts = counts.unwrap();
    (
        counts[0].load(Ordering::SeqCst),
        counts[1].load(Ordering::SeqCst),
    )
}

/// A download's workers keep their streams: a provider sees a few streams carrying many
/// requests (each stream used to carry one, and cost a round trip to open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_sends_its_requests_over_a_few_kept_streams() {
    let (streams, requests) = fetch_counted(16, PROTOCOL).await;
    // The size probe's stream, and one per worker of the provider (4).
    assert!(streams <= 5, "{streams} streams for {requests} requests");
    assert!(
        requests > streams,
        "{streams} streams for {requests} requests"
    );
}

/// A provider that takes one request per stream (`/agora/blobs/1.0.0`, older nodes) still
/// serves a download.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_of_one_request_per_stream_still_serves() {
    let (streams, requests) = fetch_counted(4, PROTOCOL_ONE_SHOT).await;
    assert_eq!(streams, requests);
    assert!(requests > 1);
}

/// Reads one response to its end from `stream` and returns the stream and the data it carried.
async fn read_response(
    stream: libp2p::Stream,
    hash: blake3::Hash,
    ranges: bao_tree::ChunkRanges,
) -> (libp2p::Stream, Vec<u8>) {
    let (end, bytes) = decode_response(stream, hash, ranges).await;
    (end.unwrap(), bytes)
}

/// Reads a response from `stream`: its size frame, then the verified data of `ranges`. Returns
/// the stream once the response is read to its end, or the error that ended it early, and the
/// bytes verified before that.
async fn decode_response(
    mut stream: libp2p::Stream,
    hash: blake3::Hash,
    ranges: bao_tree::ChunkRanges,
) -> (Result<libp2p::Stream, bao_tree::io::DecodeError>, Vec<u8>) {
    use bao_tree::io::{
        BaoContentItem,
        fsm::{ResponseDecoder, ResponseDecoderNext},
    };
    use tokio_util::compat::FuturesAsyncReadCompatExt;
    let frame = read_limited_frame(&mut stream, 8 * 1024).await.unwrap();
    let Response::Size(size) = agora_files::wire::decode(&frame).unwrap() else {
        panic!("not a size");
    };
    let tree = bao_tree::BaoTree::new(size, BLOCK_SIZE);
    let reader = iroh_io::TokioStreamReader::new(stream.compat());
    let mut decoder = ResponseDecoder::new(hash, ranges, tree, reader);
    let mut bytes = Vec::new();
    loop {
        match decoder.next().await {
            ResponseDecoderNext::More((next, Ok(item))) => {
                decoder = next;
                if let BaoContentItem::Leaf(leaf) = item {
                    bytes.extend_from_slice(&leaf.data);
                }
            }
            ResponseDecoderNext::More((_, Err(e))) => return (Err(e), bytes),
            ResponseDecoderNext::Done(reader) => {
                return (Ok(reader.into_inner().into_inner()), bytes);
            }
        }
    }
}

/// A node sharing a file of `mib` MiB: its bytes, hash, handle and address to bootstrap from.
struct Seeded {
    data: Vec<u8>,
    hash: blake3::Hash,
    net: Handle,
    bootstrap: Multiaddr,
    _files: Arc<Files>,
}

async fn seeded(dir: &std::path::Path, mib: u32) -> Seeded {
    let (data, hash, src) = source_file(dir, mib);
    let (net, addr) = node(vec![]).await;
    let files = files(&net, &dir.join("seed"));
    done(&files, files.share(src, false, false).id).await;
    let bootstrap = addr.with_p2p(net.local_peer_id()).unwrap();
    Seeded {
        data,
        hash,
        net,
        bootstrap,
        _files: files,
    }
}

/// A node answers several requests on one stream, in turn, and one request on a stream of the
/// older protocol, which it then closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_answers_request_after_request_on_one_stream() {
    use bao_tree::{ChunkNum, ChunkRanges};
    use futures::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let Seeded {
        data,
        hash,
        net: seed,
        bootstrap,
        ..
    } = seeded(dir.path(), 2).await;
    let (client, _) = node(vec![bootstrap]).await;
    let peer = seed.local_peer_id();
    let mut control = client.stream_control();
    let mut stream = control.open_stream(peer, PROTOCOL).await.unwrap();
    // The second MiB, then the first 64 KiB, then the last group: one stream.
    for (from, to) in [(1024, 2048), (0, 64), (2032, 2048)] {
        let ranges = ChunkRanges::from(ChunkNum(from)..ChunkNum(to));
        let request = Request::new(&hash, &ranges);
        write_frame(&mut stream, &request).await.unwrap();
        let (next, bytes) = read_response(stream, hash, ranges).await;
        stream = next;
        assert_eq!(bytes, data[from as usize * 1024..to as usize * 1024]);
    }
    stream.close().await.unwrap();

    let mut old = control.open_stream(peer, PROTOCOL_ONE_SHOT).await.unwrap();
    let ranges = ChunkRanges::from(ChunkNum(0)..ChunkNum(16));
    write_frame(&mut old, &Request::new(&hash, &ranges))
        .await
        .unwrap();
    old.close().await.unwrap();
    let (mut old, bytes) = read_response(old, hash, ranges).await;
    assert_eq!(bytes, data[..16 * 1024]);
    let mut rest = Vec::new();
    old.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "closed after its one answer");
}

/// A peer that opens streams and leaves them idle holds only its own per-peer slots: its next
/// stream is answered `Busy` naming the budget, a request on one of its open streams is still
/// answered, and another peer downloads meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_hold_only_their_peers_slots() {
    use bao_tree::{ChunkNum, ChunkRanges};
    use futures::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let Seeded {
        data,
        hash,
        net: seed,
        bootstrap,
        ..
    } = seeded(dir.path(), 1).await;
    let peer = seed.local_peer_id();

    let (hostile, _) = node(vec![bootstrap.clone()]).await;
    let mut control = hostile.stream_control();
    let mut idle = Vec::new();
    for _ in 0..agora_files::service::budget::MAX_SERVES_PER_PEER {
        idle.push(control.open_stream(peer, PROTOCOL).await.unwrap());
    }
    let mut extra = control.open_stream(peer, PROTOCOL).await.unwrap();
    let frame = tokio::time::timeout(WAIT, read_limited_frame(&mut extra, 8 * 1024))
        .await
        .unwrap()
        .unwrap();
    match agora_files::wire::decode(&frame).unwrap() {
        Response::Busy(why) => assert!(why.contains("files.serve.peer"), "{why}"),
        other => panic!("expected busy, got {other:?}"),
    }
    let mut rest = Vec::new();
    extra.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "the refused stream is closed");

    // The idle streams are still the hostile peer's to use.
    let ranges = ChunkRanges::from(ChunkNum(0)..ChunkNum(16));
    let mut stream = idle.pop().unwrap();
    write_frame(&mut stream, &Request::new(&hash, &ranges))
        .await
        .unwrap();
    let (_stream, bytes) = read_response(stream, hash, ranges).await;
    assert_eq!(bytes, data[..16 * 1024]);

    // Another peer is not held up by them.
    let (down_net, _) = node(vec![bootstrap]).await;
    let down = files(&down_net, &dir.path().join("down"));
    until_providers(&down_net, &hash, 1).await;
    let out = dir.path().join("out/copy.bin");
    let job = down.get(&hash.to_hex(), out.clone()).unwrap();
    done(&down, job.id).await;
    assert_eq!(std::fs::read(&out).unwrap(), data, "byte-identical");
    drop(idle);
}

/// Requests the whole of `hash` on a new stream and decodes what comes back: the verified
/// bytes, and the error that ended the response early, if one did.
async fn fetch_raw(
    client: &Handle,
    peer: libp2p::PeerId,
    hash: blake3::Hash,
) -> (Vec<u8>, Option<bao_tree::io::DecodeError>) {
    use bao_tree::ChunkRanges;
    let mut stream = client
        .stream_control()
        .open_stream(peer, PROTOCOL)
        .await
        .unwrap();
    write_frame(&mut stream, &Request::new(&hash, &ChunkRanges::all()))
        .await
        .unwrap();
    let (end, bytes) = decode_response(stream, hash, ChunkRanges::all()).await;
    (bytes, end.err())
}

/// A byte of a shared file rots on disk (its size and modification time unchanged). While the
/// node hashed the file recently it sends without hashing again, and the receiver's check
/// catches the rotted group; once the blob is older than the recheck window the node hashes
/// what it sends and stops before the rotted group, so not one rotted byte leaves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotted_bytes_of_an_old_blob_are_not_sent() {
    use agora_files::store::{RECHECK_AFTER_SECS, Store};
    use bao_tree::io::DecodeError;
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let (data, hash, src) = source_file(dir.path(), 2);
    let (net, addr) = node(vec![]).await;
    let seed_dir = dir.path().join("seed");
    let (files, db) = files_and_db(&net, &seed_dir);
    done(&files, files.share(src.clone(), false, false).id).await;

    let rot_at = 1536 * 1024 + 77;
    let file = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
    let mtime = file.metadata().unwrap().modified().unwrap();
    file.write_all_at(&[data[rot_at] ^ 0x5a], rot_at as u64)
        .unwrap();
    file.set_modified(mtime).unwrap();
    drop(file);

    let (client, _) = node(vec![addr.with_p2p(net.local_peer_id()).unwrap()]).await;
    let peer = net.local_peer_id();
    let (bytes, error) = fetch_raw(&client, peer, hash).await;
    assert!(
        matches!(error, Some(DecodeError::LeafHashMismatch(_))),
        "fresh blob: sent as stored, caught by the receiver: {error:?}"
    );
    assert_eq!(bytes, data[..bytes.len()]);
    assert!(bytes.len() <= rot_at);

    let store = Store::open(&seed_dir, db).unwrap();
    let mut meta = store.get(&hash).unwrap().unwrap();
    meta.added -= 2 * RECHECK_AFTER_SECS;
    store.put(&hash, &meta).unwrap();
    let (bytes, error) = fetch_raw(&client, peer, hash).await;
    assert!(
        matches!(
            error,
            Some(
                DecodeError::LeafNotFound(_) | DecodeError::ParentNotFound(_) | DecodeError::Io(_)
            )
        ),
        "old blob: the response ends before the rotted group, nothing fails to verify: {error:?}"
    );
    assert_eq!(bytes, data[..bytes.len()], "no rotted byte left the node");
    assert!(bytes.len() <= rot_at);
}
