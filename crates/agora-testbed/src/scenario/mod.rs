//! Scenarios: each builds its network, runs real `agora` nodes in it, checks what must hold
//! and returns its measurements as JSON (an error is a failed check).

pub mod churn;
pub mod hostile;
pub mod nat;
pub mod partition;
pub mod swarm_wan;
pub mod wan;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::{Ctx, net::Testbed, node::Node};

/// Writes `mib` MiB of patterned bytes to `name` in the testbed's directory and shares the
/// file from `node`: the bytes and their hash as `share` printed it.
pub(crate) fn share_patterned(
    ctx: &Ctx,
    tb: &Testbed,
    node: &Node,
    name: &str,
    mib: u32,
) -> Result<(Vec<u8>, String)> {
    let file = tb.dir.join(name);
    let data: Vec<u8> = (0..(mib << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&file, &data)?;
    let shared = node.cli(tb, &ctx.agora, &["share", file.to_str().unwrap()])?;
    let hash = shared["hash"]
        .as_str()
        .context("share printed no hash")?
        .to_owned();
    Ok((data, hash))
}

pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub run: fn(&Ctx, &mut Testbed) -> Result<Value>,
}

pub const ALL: &[Scenario] = &[
    Scenario {
        name: "nat",
        about: "two peers behind NATs meet through a public relay and hole-punch a direct connection (DCUtR); a peer behind a symmetric NAT stays reachable via the relay",
        run: nat::run,
    },
    Scenario {
        name: "churn",
        about: "30 nodes on a LAN; waves kill -9 and restart a random 30% for 2 minutes (--duration, --nodes) while a prober reaches live peers by id and messages them; passes at >= 99% lookup success",
        run: churn::run,
    },
    Scenario {
        name: "hostile",
        about: "an attacker beside four honest nodes sends garbage, storms, floods, forged messages and oversized frames, and as a Byzantine ledger validator floods proposals and submissions and lies to syncing nodes; the honest nodes stay up, bounded, keep talking and finalizing, and a new follower catches up",
        run: hostile::run,
    },
    Scenario {
        name: "wan",
        about: "20 nodes on 4 LANs behind routers with 40-150 ms round trips and 1% loss between LANs; reach by peer id across LANs and a verified file transfer",
        run: wan::run,
    },
    Scenario {
        name: "partition",
        about: "two LANs in one room split silently by their router: each half keeps messaging and posting, a message across waits, and after the heal presence, the held message and new posts cross again; 3 members of a shared note per side edit during the split and all 6 converge after the heal",
        run: partition::run,
    },
    Scenario {
        name: "swarm-wan",
        about: "one seeder and 8 downloaders on their own LANs (uplinks 10-100 Mbit/s, 20-150 ms round trips, 0-1% loss): agora's swarm against aria2c + opentracker on the same network, then both again with the seeder leaving after uploading 1.5x the file",
        run: swarm_wan::run,
    },
];
