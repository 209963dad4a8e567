//! `agora up`: run a node in the foreground.
//!
//! Settings come from, in order of precedence: flags, `AGORA_*` environment variables,
//! `<data-dir>/config.toml`, built-in defaults.

use std::{net::SocketAddr, path::PathBuf};

use agora_node::{CancellationToken, NodeConfig};
use anyhow::{Context, Result};
use clap::Args;
use libp2p::Multiaddr;
use serde::Deserialize;

pub const DEFAULT_LISTEN: [&str; 2] = ["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"];
pub const DEFAULT_API: &str = "127.0.0.1:7401";
pub const DEFAULT_MAX_CONNECTIONS: u32 = 256;
/// How long the process waits for blocking tasks after the node has stopped.
const SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(Args, Debug, Default)]
pub struct UpArgs {
    /// Data directory: identity, API token, database, config.toml.
    #[arg(long, env = "AGORA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Multiaddr to listen on (repeatable). Default: TCP and QUIC on port 4001, all interfaces.
    #[arg(long, env = "AGORA_LISTEN", value_delimiter = ',')]
    pub listen: Vec<Multiaddr>,
    /// Address of the HTTP API (default 127.0.0.1:7401; port 0 picks a free one).
    #[arg(long, env = "AGORA_API_LISTEN")]
    pub api: Option<SocketAddr>,
    /// Multiaddr of a peer to join the network through (repeatable).
    #[arg(long, env = "AGORA_BOOTSTRAP", value_delimiter = ',')]
    pub bootstrap: Vec<String>,
    /// Address to announce as reachable without confirmation (repeatable), e.g. a forwarded port.
    #[arg(long, env = "AGORA_EXTERNAL_ADDR", value_delimiter = ',')]
    pub external_addr: Vec<Multiaddr>,
    /// Kademlia mode: auto (server on loopback/private networks), server or client.
    #[arg(long, env = "AGORA_KAD_MODE")]
    pub kad_mode: Option<agora_net::KadMode>,
    /// Discover peers on the local network with mDNS (multicast; off by default).
    #[arg(long, env = "AGORA_MDNS")]
    pub mdns: bool,
    /// Ask the router for a port mapping with UPnP (off by default).
    #[arg(long, env = "AGORA_UPNP")]
    pub upnp: bool,
    /// Security offered on TCP and relayed connections: `tls-noise` (TLS 1.3 preferred, Noise
    /// for peers without TLS; the default) or `noise-only`.
    #[arg(long, env = "AGORA_SECURITY")]
    pub security: Option<agora_net::Security>,
    /// Do not act as a circuit relay for other peers.
    #[arg(long, env = "AGORA_NO_RELAY_SERVER")]
    pub no_relay_server: bool,
    /// Most connections held at once.
    #[arg(long, env = "AGORA_MAX_CONNECTIONS")]
    pub max_connections: Option<u32>,
    /// Disk the node may use for others' replicas and outboards (e.g. 10GiB, 500MB); cached
    /// replicas are evicted, oldest first, to stay under it. Default 10GiB.
    #[arg(long, env = "AGORA_STORAGE_QUOTA", value_parser = parse_size)]
    pub storage_quota: Option<u64>,
    /// Seconds between checks that shared blobs still have enough replicas. Default 600.
    #[arg(long, env = "AGORA_REPLICA_CHECK_INTERVAL")]
    pub replica_check_interval: Option<u64>,
    /// Seconds between collections of this node's offline mailbox (it is also collected at
    /// start). Default 60.
    #[arg(long, env = "AGORA_MAILBOX_CHECK_INTERVAL")]
    pub mailbox_check_interval: Option<u64>,
    /// Most offline messages this node holds for others from any one sender. Default 500.
    #[arg(long, env = "AGORA_MAILBOX_SENDER_QUOTA")]
    pub mailbox_sender_quota: Option<usize>,
    /// Follow the ledger this genesis file (JSON) describes; `agora devnet` writes one.
    #[arg(long, env = "AGORA_GENESIS")]
    pub genesis: Option<PathBuf>,
    /// Take part in the ledger's consensus whenever this node's account is in the committee
    /// (until a committee change adds it, the node follows). Needs --genesis.
    #[arg(long, env = "AGORA_VALIDATOR", requires = "genesis")]
    pub validator: bool,
    /// Grid units this node runs for others at once, each on an idle-priority thread. Default 1.
    #[arg(long, env = "AGORA_GRID_CPUS", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub grid_cpus: Option<u16>,
    /// Most memory one grid unit may use on this node (e.g. 256MiB, the default).
    #[arg(long, env = "AGORA_GRID_MEMORY", value_parser = parse_size)]
    pub grid_memory: Option<u64>,
    /// Run no grid units for others (this node can still submit jobs).
    #[arg(long, env = "AGORA_NO_GRID")]
    pub no_grid: bool,
}

/// `1048576`, `512KiB`, `10MB`, `10GiB`, `1TB`…
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 500MB or 10GiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1000 * 1000,
        "mib" => 1 << 20,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1 << 30,
        "t" | "tb" => 1000u64.pow(4),
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use B, KB, KiB, MB, MiB, GB, GiB, TB, TiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// `<data-dir>/config.toml`.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<Vec<String>>,
    pub api: Option<String>,
    pub bootstrap: Option<Vec<String>>,
    pub external_addrs: Option<Vec<String>>,
    pub kad_mode: Option<agora_net::KadMode>,
    pub mdns: Option<bool>,
    pub upnp: Option<bool>,
    pub relay_server: Option<bool>,
    pub security: Option<agora_net::Security>,
    pub max_connections: Option<u32>,
    pub storage_quota: Option<String>,
    pub replica_check_interval: Option<u64>,
    pub mailbox_check_interval: Option<u64>,
    pub mailbox_sender_quota: Option<usize>,
    pub genesis: Option<PathBuf>,
    pub validator: Option<bool>,
    pub grid_cpus: Option<u16>,
    pub grid_memory: Option<String>,
    pub no_grid: Option<bool>,
}

/// Reads and checks a genesis file.
pub fn read_genesis(path: &std::path::Path) -> Result<agora_ledger::Genesis> {
    let bytes = agora_store::read_limited(path, 16 << 20)
        .with_context(|| format!("cannot read the genesis file {}", path.display()))?;
    let genesis: agora_ledger::Genesis = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a valid genesis file", path.display()))?;
    genesis
        .validate()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(genesis)
}

fn parse_addrs(what: &str, raw: &[String]) -> Result<Vec<Multiaddr>> {
    raw.iter()
        .map(|s| {
            s.parse()
                .with_context(|| format!("config.toml: {what} {s:?} is not a multiaddr"))
        })
        .collect()
}

/// Merges flags/environment (already in `args`) over the config file over defaults.
pub fn resolve(args: UpArgs) -> Result<NodeConfig> {
    let data_dir = args.data_dir.unwrap_or_else(crate::default_data_dir);
    let path = data_dir.join(agora_store::CONFIG_FILE);
    let file: FileConfig = match std::fs::read_to_string(&path) {
        Ok(text) => {
            toml::from_str(&text).with_context(|| format!("{} is invalid", path.display()))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => FileConfig::default(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let listen = if !args.listen.is_empty() {
        args.listen
    } else if let Some(l) = &file.listen {
        parse_addrs("listen", l)?
    } else {
        DEFAULT_LISTEN.iter().map(|a| a.parse().unwrap()).collect()
    };
    let api = match (args.api, &file.api) {
        (Some(a), _) => a,
        (None, Some(a)) => a
            .parse()
            .with_context(|| format!("config.toml: api {a:?} is not host:port"))?,
        (None, None) => DEFAULT_API.parse().unwrap(),
    };
    let bootstrap = if args.bootstrap.is_empty() {
        file.bootstrap.unwrap_or_default()
    } else {
        args.bootstrap
    };
    let external_addrs = if args.external_addr.is_empty() {
        parse_addrs("external_addrs", &file.external_addrs.unwrap_or_default())?
    } else {
        args.external_addr
    };
    let validator = args.validator || file.validator.unwrap_or(false);
    let ledger = match args.genesis.or(file.genesis) {
        Some(path) => Some(agora_node::LedgerConfig {
            genesis: read_genesis(&path)?,
            validator,
        }),
        None if validator => anyhow::bail!("--validator needs --genesis FILE"),
        None => None,
    };
    let grid = {
        let mut grid = agora_grid::Config::default();
        if let Some(n) = args.grid_cpus.or(file.grid_cpus) {
            anyhow::ensure!(
                (1..=256).contains(&n),
                "config.toml: grid_cpus must be between 1 and 256"
            );
            grid.cpus = n as usize;
        }
        let from_file = match &file.grid_memory {
            Some(m) => {
                Some(parse_size(m).map_err(|e| anyhow::anyhow!("config.toml: grid_memory: {e}"))?)
            }
            None => None,
        };
        if let Some(m) = args.grid_memory.or(from_file) {
            anyhow::ensure!(
                (64 * 1024..=4 * 1024 * 1024 * 1024).contains(&m),
                "--grid-memory must be between 64KiB and 4GiB (wasm32 addresses at most 4 GiB)"
            );
            grid.memory = m;
        }
        grid.enabled = !(args.no_grid || file.no_grid.unwrap_or(false));
        grid
    };
    Ok(NodeConfig {
        grid,
        ledger,
        data_dir,
        listen,
        api,
        bootstrap,
        external_addrs,
        kad_mode: args.kad_mode.or(file.kad_mode).unwrap_or_default(),
        mdns: args.mdns || file.mdns.unwrap_or(false),
        upnp: args.upnp || file.upnp.unwrap_or(false),
        relay_server: !args.no_relay_server && file.relay_server.unwrap_or(true),
        security: args.security.or(file.security).unwrap_or_default(),
        max_connections: args
            .max_connections
            .or(file.max_connections)
            .unwrap_or(DEFAULT_MAX_CONNECTIONS),
        files: {
            let mut files = agora_files::service::Config::default();
            let from_file = match &file.storage_quota {
                Some(q) => Some(
                    parse_size(q)
                        .map_err(|e| anyhow::anyhow!("config.toml: storage_quota: {e}"))?,
                ),
                None => None,
            };
            if let Some(q) = args.storage_quota.or(from_file) {
                files.storage_quota = q;
            }
            if let Some(secs) = args.replica_check_interval.or(file.replica_check_interval) {
                files.replica_check = std::time::Duration::from_secs(secs.max(1));
            }
            files
        },
        chat: {
            let mut chat = agora_chat::service::Config::default();
            if let Some(secs) = args.mailbox_check_interval.or(file.mailbox_check_interval) {
                chat.mailbox_check = std::time::Duration::from_secs(secs.max(1));
            }
            if let Some(n) = args.mailbox_sender_quota.or(file.mailbox_sender_quota) {
                chat.mailbox = chat
                    .mailbox
                    .with_sender_quota(agora_chat::proto::mailbox::Quota {
                        messages: n,
                        bytes: 8 << 20,
                    });
            }
            chat
        },
    })
}

pub fn run(args: UpArgs) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = resolve(args)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(on_signals(shutdown.clone()));
        agora_node::run(config, shutdown).await
    });
    // Dropping the runtime would wait for every blocking task, and one still writing a blob
    // into a stream whose connection is already closed never finishes: bound the wait.
    runtime.shutdown_timeout(SHUTDOWN_TIMEOUT);
    result?;
    Ok(())
}

/// First SIGINT/SIGTERM: clean shutdown. Second: exit at once.
async fn on_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
    shutdown.cancel();
    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
    eprintln!("second signal: exiting without a clean shutdown");
    std::process::exit(130);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_file_beat_defaults() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.toml"),
            "api = \"127.0.0.1:9999\"\nlisten = [\"/ip4/127.0.0.1/tcp/5555\"]\nmdns = true\nkad_mode = \"client\"\n",
        )
        .unwrap();
        let from_file = resolve(UpArgs {
            data_dir: Some(dir.path().into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(from_file.api, "127.0.0.1:9999".parse().unwrap());
        assert_eq!(
            from_file.listen,
            vec!["/ip4/127.0.0.1/tcp/5555".parse().unwrap()]
        );
        assert!(from_file.mdns);
        assert_eq!(from_file.kad_mode, agora_net::KadMode::Client);
        assert!(from_file.relay_server);

        let from_flags = resolve(UpArgs {
            data_dir: Some(dir.path().into()),
            api: Some("127.0.0.1:1".parse().unwrap()),
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            kad_mode: Some(agora_net::KadMode::Server),
            no_relay_server: true,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(from_flags.api, "127.0.0.1:1".parse().unwrap());
        assert_eq!(
            from_flags.listen,
            vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()]
        );
        assert_eq!(from_flags.kad_mode, agora_net::KadMode::Server);
        assert!(!from_flags.relay_server);
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("3MiB"), Ok(3 << 20));
        assert_eq!(parse_size("10GB"), Ok(10_000_000_000));
        assert_eq!(parse_size("2 gib"), Ok(2 << 30));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5XB").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }

    #[test]
    fn defaults_without_file() {
        let dir = tempfile::tempdir().unwrap();
        let c = resolve(UpArgs {
            data_dir: Some(dir.path().into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.api, DEFAULT_API.parse().unwrap());
        assert_eq!(c.listen.len(), 2);
        assert!(!c.mdns && !c.upnp);
        assert_eq!(c.max_connections, DEFAULT_MAX_CONNECTIONS);
    }

    #[test]
    fn bad_config_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.toml"), "listen = [\"nonsense\"]\n").unwrap();
        let err = resolve(UpArgs {
            data_dir: Some(dir.path().into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("not a multiaddr"), "{err:#}");
        std::fs::write(dir.path().join("config.toml"), "colour = \"blue\"\n").unwrap();
        let err = resolve(UpArgs {
            data_dir: Some(dir.path().into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
    }
}
