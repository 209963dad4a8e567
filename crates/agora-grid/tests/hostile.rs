//! Hostile workers against a real submitter: in-process peers speaking `/agora/grid/1.0.0`
//! over real loopback sockets beside honest workers running the real service.

use std::{path::Path, sync::Arc, time::Duration};

use agora_grid::{
    Grid,
    proto::{JobStatus, commitment},
    service::{Config, JobView, RunOptions},
    wire::{self, Assignment, Outcome, PROTOCOL, Request, Response},
};
use agora_net::{Handle, Multiaddr};
use libp2p_identity::{Keypair, PeerId};
use tokio_util::sync::CancellationToken;

/// Echoes stdin (up to 60,000 bytes) to stdout.
const ECHO: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "_start")
    (local $n i32)
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 60000))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (local.set $n (i32.load (i32.const 8)))
    (i32.store (i32.const 16) (i32.const 1024))
    (i32.store (i32.const 20) (local.get $n))
    (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))))"#;

const FUEL: u64 = 1_000_000;
const WAIT: Duration = Duration::from_secs(60);

struct Node {
    net: Handle,
    addr: Multiaddr,
    grid: Option<Arc<Grid>>,
    _dir: tempfile::TempDir,
    _stop: CancellationToken,
}

async fn node(with_grid: bool, bootstrap: Vec<Multiaddr>) -> Node {
    let keypair = Keypair::generate_ed25519();
    let (net, addr) = agora_net::start_loopback(keypair, bootstrap).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let grid = if with_grid {
        let db = Arc::new(agora_store::Db::open(&dir.path().join("agora.redb")).unwrap());
        let files =
            agora_files::Files::start(net.clone(), dir.path(), db.clone(), Default::default())
                .unwrap();
        let config = Config {
            cpus: 2,
            ..Config::default()
        };
        Some(
            Grid::start(
                net.clone(),
                files,
                None,
                db,
                dir.path(),
                config,
                stop.clone(),
            )
            .await
            .unwrap(),
        )
    } else {
        None
    };
    Node {
        net,
        addr,
        grid,
        _dir: dir,
        _stop: stop,
    }
}

/// Writes the program and `n` inputs under `dir`; returns the options of a job over them.
fn job_files(dir: &Path, n: usize) -> RunOptions {
    let program = dir.join("echo.wat");
    std::fs::write(&program, ECHO).unwrap();
    let inputs = (0..n)
        .map(|i| {
            let p = dir.join(format!("unit-{i}.txt"));
            std::fs::write(&p, format!("the input of unit {i}\n")).unwrap();
            p
        })
        .collect();
    RunOptions {
        program,
        inputs,
        replicas: 2,
        quorum: 2,
        max_replicas: 4,
        fuel: FUEL,
        memory: 1 << 20,
        ..RunOptions::default()
    }
}

/// A submitter (the real service) with a job of `units` echo units submitted; returns it, the
/// directory of the job's files, the inputs' bytes and the job.
async fn submitted(units: usize) -> (Node, tempfile::TempDir, Vec<Vec<u8>>, JobView) {
    let submitter = node(true, vec![]).await;
    let grid = submitter.grid.clone().unwrap();
    let files = tempfile::tempdir().unwrap();
    let opts = job_files(files.path(), units);
    let inputs = opts
        .inputs
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let job = grid.submit(opts).await.unwrap();
    (submitter, files, inputs, job)
}

/// The outcome an honest worker reveals for `input`, computed here in the same sandbox.
/// (On a thread of its own: WASI's host calls may not block a tokio worker.)
fn honest_outcome(input: &[u8], seed: [u8; 32]) -> Outcome {
    let input = input.to_vec();
    std::thread::spawn(move || honest_outcome_here(&input, seed))
        .join()
        .unwrap()
}

fn honest_outcome_here(input: &[u8], seed: [u8; 32]) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let sandbox = agora_wasm::Sandbox::new(
        agora_wasm::Config::new(dir.path())
            .with_max_memory(1 << 20)
            .with_max_output(wire::MAX_RESULT),
    )
    .unwrap();
    let out = sandbox
        .run_bytes(
            &wat::parse_str(ECHO).unwrap(),
            agora_wasm::RunInput::new(input.to_vec(), FUEL).with_seed(seed),
        )
        .unwrap();
    Outcome::Ok {
        result: *blake3::hash(&out.stdout).as_bytes(),
        size: out.stdout.len() as u64,
        fuel: out.fuel_used,
    }
}

async fn ask(net: &Handle, to: PeerId, request: &Request) -> Result<Response, String> {
    match net
        .request(to, PROTOCOL, wire::encode(request), Duration::from_secs(10))
        .await
    {
        Ok(bytes) => wire::decode(&bytes),
        Err(e) => Err(e.to_string()),
    }
}

async fn fetch(net: &Handle, submitter: PeerId, slots: u8) -> Vec<Assignment> {
    match ask(
        net,
        submitter,
        &Request::Fetch {
            slots,
            fuel_per_sec: 0,
            memory: 1 << 30,
        },
    )
    .await
    .unwrap()
    {
        Response::Assign(list) => list,
        Response::NoWork { .. } => Vec::new(),
        other => panic!("unexpected answer to a fetch: {other:?}"),
    }
}

/// Commits, then asks again until a quorum has committed, then reveals `outcome`.
async fn commit_then_reveal(
    net: &Handle,
    submitter: PeerId,
    a: &Assignment,
    commit_to: [u8; 32],
    reveal: Outcome,
    bytes: Vec<u8>,
) -> Response {
    loop {
        let r = ask(
            net,
            submitter,
            &Request::Commit {
                job: a.job,
                unit: a.unit,
                commitment: commit_to,
            },
        )
        .await
        .unwrap();
        match r {
            Response::Committed { reveal: true } => break,
            Response::Committed { reveal: false } => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => panic!("unexpected answer to a commit: {other:?}"),
        }
    }
    ask(
        net,
        submitter,
        &Request::Reveal {
            job: a.job,
            unit: a.unit,
            outcome: reveal,
            result: bytes,
        },
    )
    .await
    .unwrap()
}

async fn wait_done(grid: &Grid, job: &str) -> JobView {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = grid.job(job, true).unwrap();
        if v.status != JobStatus::Running {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job not done in {WAIT:?}: {v:?}"
        );
        grid.wait_change(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lying_worker_never_gets_a_wrong_result_accepted_and_is_excluded() {
    let (submitter, _files, inputs, job) = submitted(6).await;
    let s_id = submitter.net.local_peer_id();
    let grid = submitter.grid.clone().unwrap();

    // The liar takes a replica of every unit before anyone else is there.
    let liar = node(false, vec![submitter.addr.clone()]).await;
    let liar_id = liar.net.local_peer_id();
    liar.net.dial(submitter.addr.clone()).await.unwrap();
    let taken = fetch(&liar.net, s_id, 6).await;
    assert_eq!(
        taken.len(),
        agora_grid::service::budget::MAX_RUNNING_UNPROVEN,
        "an unproven identity gets only a few replicas"
    );
    let lie_bytes = b"forged result".to_vec();
    let lie = Outcome::Ok {
        result: *blake3::hash(&lie_bytes).as_bytes(),
        size: lie_bytes.len() as u64,
        fuel: 1,
    };
    let mut liars = Vec::new();
    for a in taken {
        let (net, lie, bytes) = (liar.net.clone(), lie.clone(), lie_bytes.clone());
        liars.push(tokio::spawn(async move {
            let c = commitment(&lie.digest(), &net.local_peer_id());
            commit_then_reveal(&net, s_id, &a, c, lie, bytes).await
        }));
    }

    // Two honest workers join.
    let h1 = node(true, vec![submitter.addr.clone()]).await;
    let h2 = node(true, vec![submitter.addr.clone()]).await;
    for h in [&h1, &h2] {
        h.net.dial(submitter.addr.clone()).await.unwrap();
    }
    let done = wait_done(&grid, &job.job).await;
    for l in liars {
        let answer = l.await.unwrap();
        assert!(
            matches!(
                answer,
                Response::Revealed {
                    accepted: false,
                    ..
                }
            ),
            "{answer:?}"
        );
    }
    assert_eq!(done.validated, 6, "{done:?}");
    for u in &done.results {
        let input = &inputs[u.index as usize];
        assert_eq!(
            u.result_hash.as_deref(),
            Some(blake3::hash(input).to_hex().as_str()),
            "unit {} accepted the right bytes (echo)",
            u.index
        );
        assert_eq!(u.peers.len(), 2);
        assert!(!u.peers.contains(&liar_id.to_string()));
    }
    let workers = grid.workers();
    let l = workers
        .iter()
        .find(|w| w.peer == liar_id.to_string())
        .unwrap();
    assert!(l.faults >= 3 && l.excluded, "{l:?}");
    assert_eq!(l.valid, 0);
    // Excluded: a new job gives it nothing, honest workers still get everything.
    let more = tempfile::tempdir().unwrap();
    let job2 = grid.submit(job_files(more.path(), 2)).await.unwrap();
    assert!(fetch(&liar.net, s_id, 4).await.is_empty());
    let done2 = wait_done(&grid, &job2.job).await;
    assert_eq!(done2.validated, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copied_answer_or_commitment_is_caught_by_the_commitment() {
    let (submitter, _files, inputs, job) = submitted(2).await;
    let s_id = submitter.net.local_peer_id();
    let grid = submitter.grid.clone().unwrap();

    let copier = node(false, vec![submitter.addr.clone()]).await;
    let copier_id = copier.net.local_peer_id();
    copier.net.dial(submitter.addr.clone()).await.unwrap();
    let taken = fetch(&copier.net, s_id, 2).await;
    assert_eq!(taken.len(), 2);

    // Unit 0: it commits to a guess, then (having seen the honest reveal) reveals the honest
    // outcome. Unit 1: it commits with the honest worker's commitment itself.
    let h1 = node(true, vec![submitter.addr.clone()]).await;
    h1.net.dial(submitter.addr.clone()).await.unwrap();
    let h1_id = h1.net.local_peer_id();
    let mut tasks = Vec::new();
    for a in taken {
        let input = &inputs[a.unit as usize];
        let honest = honest_outcome(input, a.seed);
        let commit_to = if a.unit == 0 {
            commitment(&blake3::hash(b"a guess").into(), &copier_id)
        } else {
            commitment(&honest.digest(), &h1_id)
        };
        let net = copier.net.clone();
        let bytes = input.clone();
        tasks.push(tokio::spawn(async move {
            commit_then_reveal(&net, s_id, &a, commit_to, honest, bytes).await
        }));
    }
    for t in tasks {
        let answer = t.await.unwrap();
        assert_eq!(
            answer,
            Response::Revealed {
                decided: false,
                accepted: false
            },
            "a copy is not counted"
        );
    }
    // A second honest worker settles both units.
    let h2 = node(true, vec![submitter.addr.clone()]).await;
    h2.net.dial(submitter.addr.clone()).await.unwrap();
    let done = wait_done(&grid, &job.job).await;
    assert_eq!(done.validated, 2, "{done:?}");
    for u in &done.results {
        assert!(!u.peers.contains(&copier_id.to_string()), "{u:?}");
    }
    let c = grid
        .workers()
        .into_iter()
        .find(|w| w.peer == copier_id.to_string())
        .unwrap();
    assert_eq!((c.faults, c.valid), (2, 0), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grid_budgets_refuse_floods_and_forged_reveals() {
    let submitter = node(true, vec![]).await;
    let s_id = submitter.net.local_peer_id();
    let grid = submitter.grid.clone().unwrap();
    let files = tempfile::tempdir().unwrap();
    let job = grid.submit(job_files(files.path(), 40)).await.unwrap();
    let flooder = node(false, vec![submitter.addr.clone()]).await;
    flooder.net.dial(submitter.addr.clone()).await.unwrap();

    // An identity with no accepted unit holds at most MAX_RUNNING_UNPROVEN replicas at once,
    // however much it asks.
    let mut got = 0;
    for _ in 0..4 {
        got += fetch(&flooder.net, s_id, 64).await.len();
    }
    assert_eq!(got, agora_grid::service::budget::MAX_RUNNING_UNPROVEN);

    // A reveal whose bytes do not match its claim, and one for a unit it does not hold, are
    // refused before anything is kept.
    let job_id: [u8; 32] = hex::decode(&job.job).unwrap().try_into().unwrap();
    let forged = Request::Reveal {
        job: job_id,
        unit: 0,
        outcome: Outcome::Ok {
            result: [0; 32],
            size: 3,
            fuel: 1,
        },
        result: b"abc".to_vec(),
    };
    let e = ask(&flooder.net, s_id, &forged).await.unwrap_err();
    assert!(e.contains("do not match"), "{e}");
    let e = ask(
        &flooder.net,
        s_id,
        &Request::Commit {
            job: job_id,
            unit: 39,
            commitment: [1; 32],
        },
    )
    .await
    .unwrap_err();
    assert!(e.contains("assigned"), "{e}");

    // Fetches past the per-peer rate are refused with the budget's name.
    let mut refused = None;
    for _ in 0..1000 {
        if let Err(e) = ask(
            &flooder.net,
            s_id,
            &Request::Fetch {
                slots: 1,
                fuel_per_sec: 0,
                memory: 1 << 30,
            },
        )
        .await
        {
            refused = Some(e);
            break;
        }
    }
    let refused = refused.expect("the fetch rate is bounded");
    assert!(refused.contains("grid.fetch.peer_rate"), "{refused}");
    assert!(
        submitter
            .net
            .admission()
            .count(agora_grid::service::budget::REFUSED_FETCH_RATE)
            > 0
    );
    // Garbage on the protocol is refused, the node lives on.
    let e = submitter_garbage(&flooder.net, s_id).await;
    assert!(e.contains("malformed"), "{e}");
    assert_eq!(
        grid.job(&job.job, false).unwrap().status,
        JobStatus::Running
    );
}

async fn submitter_garbage(net: &Handle, to: PeerId) -> String {
    net.request(to, PROTOCOL, vec![0xff; 100], Duration::from_secs(10))
        .await
        .unwrap_err()
        .to_string()
}

/// A hostile submitter hands out a unit whose input it claims is 16 bytes but whose hash names
/// a 64 MiB blob it serves: the worker learns the real (authenticated) size first and fetches
/// nothing, reserving no disk; it runs nothing for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_submitter_cannot_make_a_worker_fetch_more_than_it_claimed() {
    // The hostile submitter: a files service holding a big blob, and a grid protocol handler
    // of its own.
    let keypair = Keypair::generate_ed25519();
    let (net, addr) = agora_net::start_loopback(keypair, vec![]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(agora_store::Db::open(&dir.path().join("agora.redb")).unwrap());
    let files = agora_files::Files::start(net.clone(), dir.path(), db, Default::default()).unwrap();
    let big_path = dir.path().join("big");
    std::fs::write(&big_path, vec![7u8; 64 << 20]).unwrap();
    let (big, _) = files
        .store()
        .import_file(
            &big_path,
            true,
            agora_files::store::Kind::Own,
            &std::sync::atomic::AtomicU64::new(0),
        )
        .unwrap();
    let program = wat::parse_str(ECHO).unwrap();
    let program_hash = files
        .store()
        .import_bytes(&program, "echo.wasm", agora_files::store::Kind::Own, false)
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    net.serve(PROTOCOL, tx).unwrap();
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let served2 = served.clone();
    tokio::spawn(async move {
        while let Some(req) = rx.recv().await {
            let response = match wire::decode::<Request>(&req.data) {
                Ok(Request::Fetch { .. })
                    if served2.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 =>
                {
                    Response::Assign(vec![Assignment {
                        job: [9; 32],
                        unit: 0,
                        program: *program_hash.as_bytes(),
                        program_size: program.len() as u64,
                        input: *big.as_bytes(),
                        input_size: 16,
                        fuel: FUEL,
                        memory: 1 << 20,
                        lease_ms: 60_000,
                        expected_fuel: 0,
                        seed: [0; 32],
                        input_inline: Vec::new(),
                    }])
                }
                _ => Response::NoWork { retry_ms: 60_000 },
            };
            let _ = req.reply.send(wire::encode(&response));
        }
    });

    let worker = node(true, vec![addr.clone()]).await;
    worker.net.dial(addr.clone()).await.unwrap();
    // It offers work (as a submitter does when it meets a peer), again if an offer is lost
    // (on a loaded machine the first can fail while the connection is still being set up).
    let grid = worker.grid.clone().unwrap();
    tokio::time::timeout(WAIT, async {
        while served.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            let _ = net
                .request(
                    worker.net.local_peer_id(),
                    PROTOCOL,
                    wire::encode(&Request::Offer(wire::Announce {
                        open_units: 1,
                        max_fuel: FUEL,
                    })),
                    Duration::from_secs(10),
                )
                .await;
            for _ in 0..40 {
                if served.load(std::sync::atomic::Ordering::SeqCst) != 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    })
    .await
    .expect("the worker asked for work");
    // The unit ends without being run, and nothing big was written anywhere.
    tokio::time::timeout(WAIT, async {
        while grid.worker_status().running > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the worker gave up the unit");
    assert_eq!(grid.worker_status().units_run, 0);
    let mut biggest = 0;
    let mut stack = vec![worker._dir.path().to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                use std::os::unix::fs::MetadataExt;
                biggest = biggest.max(m.blocks() * 512);
            }
        }
    }
    assert!(
        biggest < 1 << 20,
        "a file of {biggest} bytes on the worker's disk"
    );
}
