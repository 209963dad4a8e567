//! `wan`: 20 nodes on 4 LANs joined by routers over a backbone whose links add 20–75 ms of
//! delay each way (40–150 ms round trips between LANs) and 0.5% loss each way (about 1% per
//! round trip) with ±10% jitter, emulated in user space by [`crate::link`], and 50 Mbit/s
//! uplinks (`tc tbf`). Checks: every
//! node is reached by peer id from another LAN, and a file shared on one LAN is fetched,
//! verified, on another. Reports reach latency and transfer throughput.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{
    Ctx,
    net::{Testbed, interrupted},
    node::{Node, listen_args, start_joining, wait_routing_tables},
};

const LANS: usize = 4;
const PER_LAN: usize = 5;
/// One-way delay added where each LAN's router sends onto the backbone.
const DELAY_MS: [u32; LANS] = [20, 40, 60, 75];
const LOSS_PERCENT: f32 = 0.5;
/// Each LAN's uplink rate.
const UPLINK_MBIT: u32 = 50;
const FILE_BYTES: usize = 8 << 20;

fn host_ip(lan: usize, i: usize) -> String {
    format!("10.{}.0.{}", 10 + lan, 10 + i)
}

fn pct(sorted: &[u128], p: usize) -> u128 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[(sorted.len() - 1) * p / 100]
}

pub fn run(ctx: &Ctx, tb: &mut Testbed) -> Result<Value> {
    tb.add_switch("core")?;
    for (lan, delay) in DELAY_MS.iter().enumerate() {
        let (router, switch) = (format!("r{lan}"), format!("lan{lan}"));
        tb.add_switch(&switch)?;
        tb.add_host(&router)?;
        tb.plug(
            &router,
            "core0",
            "core",
            &format!("10.200.0.{}/24", lan + 1),
        )?;
        tb.plug(&router, "lan0", &switch, &format!("10.{}.0.1/24", 10 + lan))?;
        tb.forward(&router)?;
        tb.rate_limit(&router, "core0", UPLINK_MBIT)?;
        // The other LANs are reached through a TUN device whose user-space agent adds the
        // delay and loss (this kernel has no netem) and carries packets over the backbone.
        tb.ip(&router, &["tuntap", "add", "dev", "wan0", "mode", "tun"])?;
        tb.ip(&router, &["link", "set", "wan0", "mtu", "1400", "up"])?;
        for other in (0..LANS).filter(|o| *o != lan) {
            tb.ip(
                &router,
                &[
                    "route",
                    "add",
                    &format!("10.{}.0.0/24", 10 + other),
                    "dev",
                    "wan0",
                ],
            )?;
        }
        let me = std::env::current_exe()?;
        tb.spawn(
            &router,
            &me,
            &[
                "agent-link".into(),
                "--index".into(),
                lan.to_string(),
                "--delay-ms".into(),
                delay.to_string(),
                "--jitter-ms".into(),
                (delay / 10).to_string(),
                "--loss".into(),
                LOSS_PERCENT.to_string(),
            ],
            &format!("link-{router}"),
        )?;
        for i in 0..PER_LAN {
            let host = format!("w{lan}{i}");
            tb.add_host(&host)?;
            tb.plug(&host, "eth0", &switch, &format!("{}/24", host_ip(lan, i)))?;
            tb.default_route(&host, &format!("10.{}.0.1", 10 + lan))?;
        }
    }
    let mut nodes: Vec<Node> = Vec::new();
    let mut boot: Option<String> = None;
    for lan in 0..LANS {
        for i in 0..PER_LAN {
            let name = format!("w{lan}{i}");
            let ip = host_ip(lan, i);
            let args = listen_args(&ip);
            nodes.push(start_joining(tb, &ctx.agora, &name, &ip, args, &mut boot)?);
        }
    }
    wait_routing_tables(tb, &ctx.agora, &nodes, 3, Duration::from_secs(60))?;

    // Reach every node on another LAN by peer id, twice, from a node on LAN 0.
    let prober = &nodes[1];
    let mut times = Vec::new();
    let mut failures = Vec::new();
    for round in 0..2 {
        for target in nodes.iter().skip(PER_LAN) {
            if interrupted() {
                bail!("interrupted");
            }
            let _ = prober.cli(tb, &ctx.agora, &["disconnect", &target.peer_id]);
            let t0 = Instant::now();
            match prober.cli(tb, &ctx.agora, &["connect", &target.peer_id]) {
                Ok(_) => times.push(t0.elapsed().as_millis()),
                Err(e) => failures.push(format!("round {round}, {}: {e:#}", target.name)),
            }
        }
    }
    let attempts = times.len() + failures.len();
    times.sort_unstable();

    // A file shared on LAN 3 and fetched, verified, on LAN 0.
    let path = tb.dir.join("wan-file.bin");
    let mut data = vec![0u8; FILE_BYTES];
    let mut x = ctx.seed | 1;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(&path, &data)?;
    let publisher = &nodes[3 * PER_LAN];
    let shared = publisher.cli(tb, &ctx.agora, &["share", path.to_str().unwrap()])?;
    let hash = shared["hash"]
        .as_str()
        .context("share printed no hash")?
        .to_owned();
    let out = tb.dir.join("wan-file.out");
    let t0 = Instant::now();
    nodes[2].cli(tb, &ctx.agora, &["get", &hash, "-o", out.to_str().unwrap()])?;
    let secs = t0.elapsed().as_secs_f64();
    if std::fs::read(&out)? != data {
        bail!("the file fetched across the WAN differs from the one shared");
    }

    let figures = json!({
        "nodes": nodes.len(),
        "one_way_delay_ms": DELAY_MS,
        "loss_percent_each_way": LOSS_PERCENT,
        "jitter_ms": DELAY_MS.map(|d| d / 10),
        "uplink_mbit": UPLINK_MBIT,
        "reach_by_id": {
            "attempts": attempts,
            "ok": times.len(),
            "success": times.len() as f64 / attempts.max(1) as f64,
            "ms_p50": pct(&times, 50),
            "ms_p90": pct(&times, 90),
            "ms_max": times.last().copied().unwrap_or(0),
            "failures": failures,
        },
        "file": {
            "bytes": FILE_BYTES,
            "secs": secs,
            "mib_per_s": FILE_BYTES as f64 / (1 << 20) as f64 / secs,
        },
    });
    if times.len() * 100 < attempts * 99 {
        bail!("too many peers could not be reached by id across the WAN: {figures}");
    }
    Ok(figures)
}
