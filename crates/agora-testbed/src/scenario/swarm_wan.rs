//! `swarm-wan`: agora's file swarm against BitTorrent (aria2c peers, an opentracker tracker, a
//! private torrent made by mktorrent) on the same shaped network in the same run.
//!
//! One seeder (peer 0) and 8 downloaders, each alone on its own LAN behind a router on a common
//! backbone. Every router has its own uplink (`tc tbf`, 10–100 Mbit/s), one-way delay onto the
//! backbone (10–75 ms, so 20–150 ms round trips between peers, ±10% jitter) and loss (0–1% each
//! way), emulated in user space by [`crate::link`] as in `wan` (this kernel has no netem).
//!
//! Four phases on that one topology, each with fresh data directories:
//! 1. agora: 9 daemons, the seeder shares the file, the 8 `agora get`s start together;
//! 2. aria2c: the same file as a private torrent (256 KiB pieces), tracker on the seeder's host,
//!    DHT/LPD/PEX off, the 8 aria2c downloaders started paused and unpaused together, every
//!    one seeding on (`--seed-ratio=0.0`) until the last is done, as agora's daemons do;
//! 3. and 4. the same for each client, but the seeder is stopped (SIGTERM) once it has uploaded
//!    1.5 × the file, and every downloader must still complete from the others: they get at
//!    most 120 s, and are given up on once together they receive less than 5% of the file in
//!    30 s (`stalled`).
//!
//! Per client: `seconds` until the last downloader is done, `median_downloader_s`,
//! `downloader_s` in peer order (p1..p8, as in `links`), the seeder's upload as a multiple of
//! the file, and `load`: how busy the machine, the link agents and the client's own processes
//! were (on a small machine the emulation and the clients share the same cores).
//!
//! `SWARM_WAN_ONLY=agora,aria2,agora-leave,aria2-leave` (any of them) runs only those phases,
//! for work on one client; the others are reported as `{"skipped": true}`.
//!
//! Every copy is checked byte for byte. Fails only on breakage: a copy that differs, a client
//! that cannot run, a normal-mode download that does not complete. Losing the race, or a
//! client that cannot finish once the seeder left, is reported, not failed.
//!
//! Upload is measured twice: each client's own counter (agora `bytes_out`: wire bytes with
//! protocol overhead and DHT traffic; aria2c `uploadLength`: piece payload only), and the same
//! way for both, the bytes the seeder's router sent onto the backbone (`seeder_wire_x`).

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{
    Ctx,
    net::{Testbed, interrupted, wait_for},
    node::{Node, listen_args, wait_routing_tables},
};

/// Peer 0 seeds, the others download.
const PEERS: usize = 9;
const DOWNLOADERS: usize = PEERS - 1;
/// Per peer: its router's uplink rate.
const UPLINK_MBIT: [u32; PEERS] = [50, 100, 100, 50, 50, 20, 20, 10, 10];
/// Per peer: the one-way delay its router adds onto the backbone (jitter ±10% of it).
const DELAY_MS: [u32; PEERS] = [30, 10, 75, 20, 60, 10, 45, 35, 75];
/// Per peer: the loss its router adds onto the backbone, in percent.
const LOSS_PERCENT: [f32; PEERS] = [0.25, 0.0, 0.5, 1.0, 0.0, 0.25, 1.0, 0.5, 0.0];
const FILE_MIB: usize = 32;
/// Torrent piece size as a power of two (2^18 = 256 KiB, mktorrent's default).
const PIECE_LOG: u32 = 18;
/// The seeder leaves once it has uploaded this multiple of the file.
const LEAVE_X: f64 = 1.5;
/// Longest a phase's downloads may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest the downloaders get to complete after the seeder left.
const AFTER_LEAVE_TIMEOUT: Duration = Duration::from_secs(120);
/// After the seeder left, the downloaders are given up on once together they have received
/// less than 1/[`STALL_FRACTION`] of the file in this long.
const STALL_WINDOW: Duration = Duration::from_secs(30);
const STALL_FRACTION: u64 = 20;
const TRACKER_PORT: u16 = 6969;
const RPC_PORT: u16 = 6800;
const BT_PORT: u16 = 6881;
/// The external programs, with the Debian packages holding them.
const TOOLS: [(&str, &str); 4] = [
    ("aria2c", "aria2"),
    ("opentracker", "opentracker"),
    ("mktorrent", "mktorrent"),
    ("curl", "curl"),
];

fn host(i: usize) -> String {
    format!("p{i}")
}

fn host_ip(i: usize) -> String {
    format!("10.{}.0.10", 10 + i)
}

fn r2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Bytes free for an unprivileged writer on the file system holding `dir`.
fn free_bytes(dir: &Path) -> u64 {
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return 0;
    };
    // SAFETY: statvfs writes into the zeroed struct it is given; the path is NUL-terminated.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(path.as_ptr(), &mut st) != 0 {
            return 0;
        }
        st.f_bavail as u64 * st.f_frsize as u64
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// Each peer on its own LAN; routers on the `core` backbone, each with its uplink rate and a
/// link agent for its delay, jitter and loss. Returns the agents' pids.
fn build(tb: &mut Testbed) -> Result<Vec<u32>> {
    tb.add_switch("core")?;
    let me = std::env::current_exe()?;
    let mut agents = Vec::new();
    for i in 0..PEERS {
        let (router, switch, host) = (format!("r{i}"), format!("lan{i}"), host(i));
        tb.add_switch(&switch)?;
        tb.add_host(&router)?;
        tb.plug(&router, "core0", "core", &format!("10.200.0.{}/24", i + 1))?;
        tb.plug(&router, "lan0", &switch, &format!("10.{}.0.1/24", 10 + i))?;
        tb.forward(&router)?;
        tb.rate_limit(&router, "core0", UPLINK_MBIT[i])?;
        tb.ip(&router, &["tuntap", "add", "dev", "wan0", "mode", "tun"])?;
        tb.ip(&router, &["link", "set", "wan0", "mtu", "1400", "up"])?;
        for other in (0..PEERS).filter(|o| *o != i) {
            let net = format!("10.{}.0.0/24", 10 + other);
            tb.ip(&router, &["route", "add", &net, "dev", "wan0"])?;
        }
        let args = [
            "agent-link".into(),
            "--index".into(),
            i.to_string(),
            "--delay-ms".into(),
            DELAY_MS[i].to_string(),
            "--jitter-ms".into(),
            (DELAY_MS[i] / 10).to_string(),
            "--loss".into(),
            LOSS_PERCENT[i].to_string(),
        ];
        agents.push(tb.spawn(&router, &me, &args, &format!("link-{router}"))?);
        tb.add_host(&host)?;
        tb.plug(&host, "eth0", &switch, &format!("{}/24", host_ip(i)))?;
        tb.default_route(&host, &format!("10.{}.0.1", 10 + i))?;
    }
    Ok(agents)
}

/// Bytes sent so far through `dev` in namespace `ns`.
fn tx_bytes(tb: &Testbed, ns: &str, dev: &str) -> Result<u64> {
    let out = tb.ip(ns, &["-j", "-s", "link", "show", dev])?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    v[0]["stats64"]["tx"]["bytes"]
        .as_u64()
        .with_context(|| format!("no byte count for {dev} in {ns}"))
}

/// The machine's busy and total CPU time, in clock ticks (/proc/stat).
fn cpu_ticks() -> (u64, u64) {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = f.iter().sum();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// CPU time a process (all its threads) has used, in clock ticks.
fn process_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command name: state is field 3, utime 14 and stime 15.
    [11, 12]
        .iter()
        .filter_map(|k| f.get(*k)?.parse::<u64>().ok())
        .sum()
}

fn exited(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_none_or(|r| r.1.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// CPU time of each process so far.
fn ticks_of(pids: &[u32]) -> Vec<(u32, u64)> {
    pids.iter().map(|p| (*p, process_ticks(*p))).collect()
}

/// How busy the machine, the link agents and the client's processes were during a phase.
struct Load {
    at: Instant,
    cpu: (u64, u64),
    agents: Vec<(u32, u64)>,
    clients: Vec<(u32, u64)>,
}

impl Load {
    fn start(agents: &[u32], clients: &[u32]) -> Load {
        Load {
            at: Instant::now(),
            cpu: cpu_ticks(),
            agents: ticks_of(agents),
            clients: ticks_of(clients),
        }
    }

    fn figures(&self) -> Value {
        // SAFETY: sysconf only reads a configuration value.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let used = |start: &[(u32, u64)]| {
            start
                .iter()
                .map(|(p, t)| process_ticks(*p).saturating_sub(*t))
                .sum::<u64>() as f64
                / hz
        };
        let (busy, total) = cpu_ticks();
        let wall = self.at.elapsed().as_secs_f64().max(1e-3);
        json!({
            "machine_cpu_busy": r2((busy - self.cpu.0) as f64 / (total - self.cpu.1).max(1) as f64),
            "link_agents_cpu_s": r2(used(&self.agents)),
            "link_agents_cores": r2(used(&self.agents) / wall),
            "client_cpu_s": r2(used(&self.clients)),
            "client_cores": r2(used(&self.clients) / wall),
        })
    }
}

/// A downloader's state as polled.
enum Poll {
    Pending,
    Done(f64),
    Failed(String),
}

/// What happened to one phase's downloads.
struct Outcome {
    /// Per downloader (peer 1..): seconds after the start at which it completed.
    done: Vec<Option<f64>>,
    failures: Vec<String>,
    /// When the seeder left (seconds after the start) and what it had uploaded then.
    left: Option<(f64, u64)>,
    timed_out: bool,
    /// Given up on after the seeder left: no progress for [`STALL_WINDOW`].
    stalled: bool,
}

/// Polls the downloaders until all are done or failed, or the time is up. With `leave`,
/// polls the seeder's upload every 100 ms and stops it once it reaches [`LEAVE_X`] × the file;
/// from then on polls the bytes the downloaders have received (`received`) every second and
/// gives up once they stall.
fn watch(
    size: u64,
    leave: bool,
    t0: Instant,
    mut poll: impl FnMut(usize) -> Poll,
    mut uploaded: impl FnMut() -> Option<u64>,
    mut stop_seeder: impl FnMut(),
    mut received: impl FnMut() -> Option<u64>,
) -> Result<Outcome> {
    let mut o = Outcome {
        done: vec![None; DOWNLOADERS],
        failures: Vec::new(),
        left: None,
        timed_out: false,
        stalled: false,
    };
    let mut ended = [false; DOWNLOADERS];
    let mut next_poll = Instant::now();
    // When the downloaders last made progress, and how much they had received then.
    let mut progress: Option<(Instant, u64)> = None;
    loop {
        if interrupted() {
            bail!("interrupted");
        }
        for (i, end) in ended.iter_mut().enumerate().filter(|(_, e)| !**e) {
            match poll(i) {
                Poll::Pending => {}
                Poll::Done(s) => (o.done[i], *end) = (Some(s), true),
                Poll::Failed(why) => {
                    let why: String = why.chars().take(400).collect();
                    o.failures.push(format!("{}: {why}", host(i + 1)));
                    *end = true;
                }
            }
        }
        if ended.iter().all(|e| *e) {
            break;
        }
        let now = Instant::now();
        let deadline = match o.left {
            Some((s, _)) => {
                (t0 + RUN_TIMEOUT).min(t0 + Duration::from_secs_f64(s) + AFTER_LEAVE_TIMEOUT)
            }
            None => t0 + RUN_TIMEOUT,
        };
        if now > deadline {
            o.timed_out = true;
            break;
        }
        if leave && o.left.is_none() && now >= next_poll {
            next_poll = now + Duration::from_millis(100);
            if let Some(up) = uploaded()
                && up as f64 >= LEAVE_X * size as f64
            {
                stop_seeder();
                o.left = Some((t0.elapsed().as_secs_f64(), up));
            }
        }
        if o.left.is_some() && now >= next_poll {
            next_poll = now + Duration::from_secs(1);
            if let Some(got) = received() {
                match progress {
                    Some((_, base)) if got < base + size / STALL_FRACTION => {}
                    _ => progress = Some((now, got)),
                }
            }
            if progress.is_some_and(|(at, _)| now - at > STALL_WINDOW) {
                o.stalled = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(o)
}

/// Figures of one phase.
fn summary(o: &Outcome, size: u64, seeder_up: u64, seeder_wire: u64, peers_up: u64) -> Value {
    let mut times: Vec<f64> = o.done.iter().flatten().copied().collect();
    times.sort_by(f64::total_cmp);
    let median = match times.len() {
        0 => None,
        n if n % 2 == 1 => Some(times[n / 2]),
        n => Some((times[n / 2 - 1] + times[n / 2]) / 2.0),
    };
    let x = |b: u64| r2(b as f64 / size as f64);
    let mut v = json!({
        "seconds": times.last().map(|t| r2(*t)),
        "median_downloader_s": median.map(r2),
        "downloader_s": o.done.iter().map(|t| t.map(r2)).collect::<Vec<_>>(),
        "seeder_upload_x": x(seeder_up),
        "seeder_wire_x": x(seeder_wire),
        "downloaders_upload_x": x(peers_up),
        "completed": times.len(),
        "of": DOWNLOADERS,
    });
    if let Some((s, up)) = o.left {
        v["left_s"] = json!(r2(s));
        v["left_at_x"] = json!(x(up));
    }
    if o.timed_out {
        v["timed_out"] = json!(true);
    }
    if o.stalled {
        v["stalled"] = json!(true);
    }
    if !o.failures.is_empty() {
        v["failures"] = json!(o.failures);
    }
    v
}

/// Child processes killed (by pid) when dropped, unless already reaped.
struct Procs(Vec<Option<Child>>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in self.0.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// Checks the copies of the downloaders that completed.
fn verify(client: &str, o: &Outcome, data: &[u8], copy: &impl Fn(usize) -> PathBuf) -> Result<()> {
    for (i, _) in o.done.iter().enumerate().filter(|(_, d)| d.is_some()) {
        let path = copy(i + 1);
        let got = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        if got != data {
            bail!(
                "{client}: the copy of {} ({}) differs from the file shared",
                host(i + 1),
                path.display()
            );
        }
    }
    Ok(())
}

fn check_complete(client: &str, leave: bool, o: &Outcome, figures: &Value) -> Result<()> {
    if !leave && o.done.iter().any(Option::is_none) {
        bail!("{client}: not every downloader completed: {figures}");
    }
    Ok(())
}

/// agora: 9 daemons, the seeder shares the file, the 8 gets start together.
fn agora_phase(
    ctx: &Ctx,
    tb: &mut Testbed,
    data: &[u8],
    file: &Path,
    leave: bool,
    agents: &[u32],
) -> Result<Value> {
    let tag = if leave { "leave" } else { "full" };
    let size = data.len() as u64;
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..PEERS {
        let mut args = listen_args(&host_ip(i));
        // Nobody takes replicas of the shared file: only the downloads move bytes.
        args.extend(["--storage-quota".into(), "0".into()]);
        if let Some(seeder) = nodes.first() {
            args.extend([
                "--bootstrap".into(),
                format!("/ip4/{}/tcp/4001/p2p/{}", host_ip(0), seeder.peer_id),
            ]);
        }
        let name = format!("agora-{tag}-{}", host(i));
        nodes.push(Node::start(tb, &ctx.agora, &host(i), &name, &args)?);
    }
    wait_routing_tables(tb, &ctx.agora, &nodes, 4, Duration::from_secs(90))?;
    let seeder = &nodes[0];
    let shared = seeder.cli(tb, &ctx.agora, &["share", file.to_str().unwrap()])?;
    let hash = shared["hash"]
        .as_str()
        .context("share printed no hash")?
        .to_owned();
    let status = |n: &Node, key: &str| {
        n.cli(tb, &ctx.agora, &["status"])
            .ok()
            .and_then(|s| s[key].as_u64())
    };
    let bytes_out = |n: &Node| status(n, "bytes_out");
    let before = bytes_out(seeder).context("the seeder's status has no bytes_out")?;
    let wire_before = tx_bytes(tb, "r0", "core0")?;
    let base = tb.dir.clone();
    let out = |i: usize| base.join(format!("agora-{tag}-{}.out", host(i)));
    let log = |i: usize| base.join(format!("agora-{tag}-{}-get.log", host(i)));

    let pids: Vec<u32> = nodes.iter().map(|n| n.pid).collect();
    let load = Load::start(agents, &pids);
    let t0 = Instant::now();
    let mut gets = Procs(Vec::new());
    for (i, node) in nodes.iter().enumerate().skip(1) {
        let logf = fs::File::create(log(i))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &tb.ns(&node.ns)])
            .arg(&ctx.agora)
            .args(["get", &hash, "-o"])
            .arg(out(i))
            .arg("--data-dir")
            .arg(&node.dir)
            .arg("--json")
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .spawn()
            .context("cannot start agora get")?;
        gets.0.push(Some(child));
    }
    let seeder_pid = seeder.pid;
    let outcome = watch(
        size,
        leave,
        t0,
        |i| {
            let Some(child) = gets.0[i].as_mut() else {
                return Poll::Pending;
            };
            let exit = child.try_wait();
            if matches!(exit, Ok(None)) {
                return Poll::Pending;
            }
            gets.0[i] = None;
            match exit {
                Ok(Some(s)) if s.success() => Poll::Done(t0.elapsed().as_secs_f64()),
                Ok(Some(s)) => Poll::Failed(format!("agora get {s}: {}", tail(&log(i + 1)))),
                Ok(None) => Poll::Pending,
                Err(e) => Poll::Failed(format!("agora get: {e}")),
            }
        },
        || bytes_out(seeder).map(|b| b.saturating_sub(before)),
        // SAFETY: kill(2) on the seeder's own pid, started by this run.
        || unsafe {
            libc::kill(seeder_pid as libc::pid_t, libc::SIGTERM);
        },
        || nodes[1..].iter().map(|n| status(n, "bytes_in")).sum(),
    )?;
    drop(gets);
    let load = load.figures();
    let seeder_up = match outcome.left {
        Some((_, up)) => up,
        None => bytes_out(seeder).unwrap_or(before) - before,
    };
    let seeder_wire = tx_bytes(tb, "r0", "core0")? - wire_before;
    let peers_up: u64 = nodes[1..].iter().filter_map(bytes_out).sum();
    let mut figures = summary(&outcome, size, seeder_up, seeder_wire, peers_up);
    figures["load"] = load;
    for pid in pids {
        tb.stop(pid, false);
    }
    verify("agora", &outcome, data, &out)?;
    // The copies are checked: free the disk for the next phase.
    for i in 1..PEERS {
        let _ = fs::remove_file(out(i));
        let mut part = out(i).into_os_string();
        part.push(".agora-part");
        let _ = fs::remove_file(part);
    }
    check_complete("agora", leave, &outcome, &figures)?;
    Ok(figures)
}

/// A JSON-RPC call to the aria2c in namespace `ns`.
fn rpc(tb: &Testbed, ns: &str, method: &str, params: Value) -> Result<Value> {
    let body = json!({"jsonrpc": "2.0", "id": "t", "method": method, "params": params});
    let url = format!("http://127.0.0.1:{RPC_PORT}/jsonrpc");
    let out = tb.exec(
        ns,
        "curl",
        &[
            "-sS",
            "--max-time",
            "5",
            "--noproxy",
            "*",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body.to_string(),
            &url,
        ],
    )?;
    let v: Value = serde_json::from_slice(&out.stdout).context("aria2c's reply is not JSON")?;
    if !v["error"].is_null() {
        bail!("aria2c {method} in {ns}: {}", v["error"]);
    }
    Ok(v["result"].clone())
}

/// A byte count (`uploadLength`, `completedLength`) of the aria2c in `ns`.
fn aria2_bytes(tb: &Testbed, ns: &str, key: &str) -> Result<u64> {
    let active = rpc(tb, ns, "aria2.tellActive", json!([[key]]))?;
    Ok(active
        .as_array()
        .context("tellActive returned no list")?
        .iter()
        .filter_map(|d| d[key].as_str()?.parse::<u64>().ok())
        .sum())
}

/// Piece bytes the aria2c in `ns` has uploaded.
fn uploaded(tb: &Testbed, ns: &str) -> Result<u64> {
    aria2_bytes(tb, ns, "uploadLength")
}

/// How many seeders the tracker counts for the torrent (its scrape).
fn tracker_seeders(tb: &Testbed, port: u16, infohash: &str) -> Option<u64> {
    let mut url = format!("http://{}:{port}/scrape?info_hash=", host_ip(0));
    for k in (0..infohash.len()).step_by(2) {
        url.push('%');
        url.push_str(infohash.get(k..k + 2)?);
    }
    let out = tb
        .exec(
            &host(0),
            "curl",
            &["-sS", "--max-time", "2", "--noproxy", "*", &url],
        )
        .ok()?;
    let body = String::from_utf8_lossy(&out.stdout);
    let rest = &body[body.find("8:completei")? + "8:completei".len()..];
    rest[..rest.find('e')?].parse().ok()
}

/// aria2c: tracker on the seeder's host, the seeder, 8 downloaders started paused and unpaused
/// together; everybody seeds on until the last is done.
fn aria2_phase(
    tb: &mut Testbed,
    data: &[u8],
    file: &Path,
    leave: bool,
    agents: &[u32],
) -> Result<Value> {
    let tag = if leave { "leave" } else { "full" };
    let size = data.len() as u64;
    let dir = tb.dir.join(format!("aria2-{tag}"));
    let tdir = dir.join("tracker");
    fs::create_dir_all(&tdir)?;
    let port = TRACKER_PORT + u16::from(leave);
    let torrent = dir.join("swarm.torrent");
    let announce = format!("http://{}:{port}/announce", host_ip(0));
    crate::net::run(
        "mktorrent",
        &[
            "-p",
            "-l",
            &PIECE_LOG.to_string(),
            "-a",
            &announce,
            "-o",
            torrent.to_str().unwrap(),
            file.to_str().unwrap(),
        ],
    )?;
    let shown = crate::net::run("aria2c", &["-S", torrent.to_str().unwrap()])?;
    let infohash = String::from_utf8_lossy(&shown.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Info Hash: ").map(|h| h.trim().to_owned()))
        .context("aria2c -S printed no info hash")?;

    // opentracker (Debian builds it with a whitelist) chroots into its directory and drops to
    // user nobody: the whitelist's path is relative, the directory world-readable.
    fs::write(tdir.join("whitelist.txt"), format!("{infohash}\n"))?;
    fs::write(
        tdir.join("opentracker.conf"),
        "access.whitelist whitelist.txt\n",
    )?;
    fs::set_permissions(&tdir, fs::Permissions::from_mode(0o755))?;
    for f in ["whitelist.txt", "opentracker.conf"] {
        fs::set_permissions(tdir.join(f), fs::Permissions::from_mode(0o644))?;
    }
    let tracker = tb.spawn(
        &host(0),
        Path::new("/bin/sh"),
        &[
            "-c".into(),
            format!(
                "cd '{}' && exec opentracker -f opentracker.conf -i {} -p {port} -P {port} -d .",
                tdir.display(),
                host_ip(0)
            ),
        ],
        &format!("opentracker-{tag}"),
    )?;

    // Writes <dir>/p<i>.done holding the time of completion.
    let hook = dir.join("done.sh");
    fs::write(
        &hook,
        "#!/bin/sh\nd=$(dirname \"$3\"); echo \"$(date +%s.%N)\" > \"$d.done.tmp\" && mv \"$d.done.tmp\" \"$d.done\"\n",
    )?;
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755))?;
    let peer_dir = |i: usize| dir.join(host(i));
    let args = |i: usize| -> Vec<String> {
        let ip = host_ip(i);
        [
            "--no-conf",
            "--enable-rpc",
            "--rpc-listen-all=false",
            "--enable-dht=false",
            "--enable-dht6=false",
            "--bt-enable-lpd=false",
            "--enable-peer-exchange=false",
            "--disable-ipv6=true",
            "--seed-ratio=0.0",
            "--summary-interval=0",
            "--console-log-level=warn",
            "--log-level=notice",
            "--auto-file-renaming=false",
        ]
        .map(String::from)
        .into_iter()
        .chain([
            format!("--rpc-listen-port={RPC_PORT}"),
            format!("--listen-port={BT_PORT}"),
            format!("--bt-external-ip={ip}"),
            format!("--interface={ip}"),
            format!("--stop-with-process={}", std::process::id()),
            format!("--dir={}", peer_dir(i).display()),
            format!("--log={}.log", peer_dir(i).display()),
        ])
        .collect()
    };
    let aria2c = Path::new("aria2c");

    fs::create_dir_all(peer_dir(0))?;
    fs::copy(file, peer_dir(0).join(file.file_name().unwrap()))?;
    let mut seed_args = args(0);
    seed_args.extend([
        "--bt-seed-unverified=true".into(),
        torrent.display().to_string(),
    ]);
    let seeder = tb.spawn(&host(0), aria2c, &seed_args, &format!("aria2-{tag}-p0"))?;
    wait_for(Duration::from_secs(30), || {
        let active = rpc(tb, &host(0), "aria2.tellActive", json!([["seeder"]])).ok()?;
        (active[0]["seeder"] == "true").then_some(())
    })
    .with_context(|| {
        format!(
            "the aria2c seeder did not start seeding:\n{}",
            tb.log_tail(&format!("aria2-{tag}-p0"), 10)
        )
    })?;
    wait_for(Duration::from_secs(30), || {
        tracker_seeders(tb, port, &infohash).filter(|n| *n >= 1)
    })
    .with_context(|| {
        format!(
            "the tracker never listed the seeder:\n{}",
            tb.log_tail(&format!("opentracker-{tag}"), 10)
        )
    })?;
    let mut pids = vec![seeder];
    for i in 1..PEERS {
        fs::create_dir_all(peer_dir(i))?;
        let mut a = args(i);
        a.extend([
            "--pause=true".into(),
            format!("--on-bt-download-complete={}", hook.display()),
            torrent.display().to_string(),
        ]);
        pids.push(tb.spawn(&host(i), aria2c, &a, &format!("aria2-{tag}-{}", host(i)))?);
    }
    for i in 1..PEERS {
        wait_for(Duration::from_secs(30), || {
            rpc(tb, &host(i), "aria2.getVersion", json!([])).ok()
        })
        .with_context(|| format!("the aria2c RPC of {} did not answer", host(i)))?;
    }
    let before = uploaded(tb, &host(0))?;
    let wire_before = tx_bytes(tb, "r0", "core0")?;

    let load = Load::start(agents, &pids);
    let t0 = Instant::now();
    let t0_epoch = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
    let shared: &Testbed = tb;
    std::thread::scope(|s| {
        let unpaused: Vec<_> = (1..PEERS)
            .map(|i| s.spawn(move || rpc(shared, &host(i), "aria2.unpauseAll", json!([]))))
            .collect();
        unpaused
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("an RPC thread panicked"))?
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let outcome = watch(
        size,
        leave,
        t0,
        |i| {
            if let Some(at) = fs::read_to_string(dir.join(format!("{}.done", host(i + 1))))
                .ok()
                .and_then(|s| s.trim().parse::<f64>().ok())
            {
                Poll::Done((at - t0_epoch).max(0.0))
            } else if exited(pids[i + 1]) {
                Poll::Failed(format!(
                    "aria2c exited: {}",
                    tail(&tb.dir.join(format!("aria2-{tag}-{}.log", host(i + 1))))
                ))
            } else {
                Poll::Pending
            }
        },
        || {
            uploaded(tb, &host(0))
                .ok()
                .map(|u| u.saturating_sub(before))
        },
        // SAFETY: kill(2) on the aria2c seeder's own pid, started by this run.
        || unsafe {
            libc::kill(seeder as libc::pid_t, libc::SIGTERM);
        },
        || {
            (1..PEERS)
                .map(|i| aria2_bytes(tb, &host(i), "completedLength").ok())
                .sum()
        },
    )?;
    let load = load.figures();
    let seeder_up = match outcome.left {
        Some((_, up)) => up,
        None => uploaded(tb, &host(0))?.saturating_sub(before),
    };
    let seeder_wire = tx_bytes(tb, "r0", "core0")? - wire_before;
    let peers_up: u64 = (1..PEERS).filter_map(|i| uploaded(tb, &host(i)).ok()).sum();
    let mut figures = summary(&outcome, size, seeder_up, seeder_wire, peers_up);
    figures["load"] = load;
    figures["piece_kib"] = json!((1u32 << PIECE_LOG) / 1024);
    for pid in pids.into_iter().rev() {
        tb.stop(pid, false);
    }
    tb.stop(tracker, false);
    let copy = |i: usize| peer_dir(i).join(file.file_name().unwrap());
    verify("aria2c", &outcome, data, &copy)?;
    for i in 0..PEERS {
        let _ = fs::remove_file(copy(i));
    }
    check_complete("aria2c", leave, &outcome, &figures)?;
    Ok(figures)
}

pub fn run(ctx: &Ctx, tb: &mut Testbed) -> Result<Value> {
    let only = std::env::var("SWARM_WAN_ONLY").unwrap_or_default();
    let want = |phase: &str| only.is_empty() || only.split(',').any(|p| p == phase);
    let bittorrent = want("aria2") || want("aria2-leave");
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(program, _)| bittorrent && !on_path(program))
        .map(|(_, package)| *package)
        .collect();
    if !missing.is_empty() {
        bail!(
            "swarm-wan compares against BitTorrent and needs aria2c, opentracker, mktorrent and \
             curl: apt-get install {}",
            missing.join(" ")
        );
    }
    // At most the file and 9 copies of it are on disk at once, besides the nodes' own data.
    let need = (12 * FILE_MIB as u64) << 20;
    let free = free_bytes(&tb.dir);
    if free < need {
        bail!(
            "swarm-wan needs {} MiB free under {} and there are {} MiB",
            need >> 20,
            tb.dir.display(),
            free >> 20
        );
    }
    let agents = build(tb)?;
    let file = tb.dir.join("swarm.bin");
    let mut data = vec![0u8; FILE_MIB << 20];
    let mut x = ctx.seed | 1;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    fs::write(&file, &data)?;

    // Each phase runs only if asked for; a phase left out is reported as skipped.
    let mut phase = |name: &str, bittorrent: bool, leave: bool| -> Result<Value> {
        match (want(name), bittorrent) {
            (false, _) => Ok(json!({"skipped": true})),
            (true, false) => agora_phase(ctx, tb, &data, &file, leave, &agents),
            (true, true) => aria2_phase(tb, &data, &file, leave, &agents),
        }
    };
    let agora = phase("agora", false, false)?;
    let aria2 = phase("aria2", true, false)?;
    let agora_leave = phase("agora-leave", false, true)?;
    let aria2_leave = phase("aria2-leave", true, true)?;

    let ratio = |k: &str| match (aria2[k].as_f64(), agora[k].as_f64()) {
        (Some(a), Some(b)) if b > 0.0 => json!(r2(a / b)),
        _ => Value::Null,
    };
    let less = |k: &str| match (agora[k].as_f64(), aria2[k].as_f64()) {
        (Some(a), Some(b)) => json!(a < b),
        _ => Value::Null,
    };
    let at_most = |k: &str| match (agora[k].as_f64(), aria2[k].as_f64()) {
        (Some(a), Some(b)) => json!(a <= b),
        _ => Value::Null,
    };
    let links: Vec<Value> = (0..PEERS)
        .map(|i| {
            json!({
                "peer": host(i),
                "role": if i == 0 { "seeder" } else { "downloader" },
                "uplink_mbit": UPLINK_MBIT[i],
                "one_way_delay_ms": DELAY_MS[i],
                "jitter_ms": DELAY_MS[i] / 10,
                "loss_percent_each_way": LOSS_PERCENT[i],
            })
        })
        .collect();
    Ok(json!({
        "file_mib": FILE_MIB,
        "downloaders": DOWNLOADERS,
        "links": links,
        "agora": agora,
        "aria2": aria2,
        "vs_aria2": ratio("seconds"),
        "vs_aria2_downloader": ratio("median_downloader_s"),
        "targets_met": {
            "total_time": less("seconds"),
            "median_downloader": less("median_downloader_s"),
            "seeder_upload": at_most("seeder_upload_x"),
            "seeder_wire": at_most("seeder_wire_x"),
        },
        "seeder_leaves": {
            "leave_at_x": LEAVE_X,
            "wait_after_leaving_s": AFTER_LEAVE_TIMEOUT.as_secs(),
            "agora": agora_leave,
            "aria2": aria2_leave,
        },
    }))
}
