//! Virtual networks made of Linux network namespaces.
//!
//! Every host, router and LAN switch is a namespace named `<prefix>-<name>`; the prefix is
//! unique per run (`agtb` + 6 hex digits). LANs are bridges inside their own switch namespace,
//! and veth pairs are created directly inside the namespaces they join, so nothing the testbed
//! makes ever exists in the host's own network namespace and no address it assigns can reach
//! the host's interfaces. [`Testbed`] removes exactly what it created when dropped (also after
//! a failure); [`clean_leftovers`] removes what an interrupted run left behind, by prefix.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// The prefix of everything a testbed creates.
pub const PREFIX: &str = "agtb";

/// Set by SIGINT/SIGTERM; long waits check it and give up so that cleanup runs.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Makes Ctrl-C and SIGTERM stop the run (and clean up) instead of killing the process.
pub fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// Runs a command, failing with its stderr if it fails.
pub fn run(program: &str, args: &[&str]) -> Result<Output> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Why namespaces cannot be used here, if they cannot.
pub fn check_capabilities() -> Result<(), String> {
    if unsafe { libc::geteuid() } != 0 {
        return Err("the testbed creates network namespaces and needs root".into());
    }
    for tool in ["ip", "tc", "nft"] {
        if Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return Err(format!(
                "`{tool}` is not installed (apt-get install iproute2 nftables)"
            ));
        }
    }
    let probe = format!("{PREFIX}probe{}", std::process::id());
    if let Err(e) = run("ip", &["netns", "add", &probe]) {
        return Err(format!("cannot create a network namespace: {e}"));
    }
    let _ = run("ip", &["netns", "del", &probe]);
    Ok(())
}

/// A process started inside a namespace.
struct Proc {
    child: Child,
}

/// One run's namespaces and processes.
pub struct Testbed {
    pub prefix: String,
    pub dir: PathBuf,
    namespaces: Vec<String>,
    procs: Vec<Proc>,
    /// Next free port number per switch namespace.
    ports: BTreeMap<String, usize>,
    keep_dir: bool,
}

impl Testbed {
    pub fn new(dir: &Path) -> Result<Self> {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            ^ u128::from(std::process::id()) << 20;
        let prefix = format!("{PREFIX}{:06x}", (seed as u64) & 0xff_ffff);
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            prefix,
            dir: dir.to_owned(),
            namespaces: Vec::new(),
            procs: Vec::new(),
            ports: BTreeMap::new(),
            keep_dir: false,
        })
    }

    pub fn keep_dir(&mut self) {
        self.keep_dir = true;
    }

    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Runs `ip` inside a namespace.
    pub fn ip(&self, ns: &str, args: &[&str]) -> Result<Output> {
        let ns = self.ns(ns);
        let mut all = vec!["-n", ns.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs any command inside a namespace.
    pub fn exec(&self, ns: &str, program: &str, args: &[&str]) -> Result<Output> {
        let ns = self.ns(ns);
        let mut all = vec!["netns", "exec", ns.as_str(), program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// A host (or router): a namespace with loopback up.
    pub fn add_host(&mut self, name: &str) -> Result<()> {
        let ns = self.ns(name);
        run("ip", &["netns", "add", &ns])?;
        self.namespaces.push(ns);
        self.ip(name, &["link", "set", "lo", "up"])?;
        Ok(())
    }

    /// A LAN: a namespace holding one bridge.
    pub fn add_switch(&mut self, name: &str) -> Result<()> {
        self.add_host(name)?;
        self.ip(name, &["link", "add", "br0", "type", "bridge"])?;
        self.ip(name, &["link", "set", "br0", "up"])?;
        self.ports.insert(name.to_owned(), 0);
        Ok(())
    }

    /// Plugs `host` into `switch` with interface `ifname` and address `cidr` (e.g.
    /// `10.0.0.2/24`).
    pub fn plug(&mut self, host: &str, ifname: &str, switch: &str, cidr: &str) -> Result<()> {
        let port = {
            let n = self
                .ports
                .get_mut(switch)
                .with_context(|| format!("no switch {switch}"))?;
            *n += 1;
            format!("p{n}")
        };
        let (host_ns, switch_ns) = (self.ns(host), self.ns(switch));
        run(
            "ip",
            &[
                "link", "add", ifname, "netns", &host_ns, "type", "veth", "peer", "name", &port,
                "netns", &switch_ns,
            ],
        )?;
        self.ip(switch, &["link", "set", &port, "master", "br0"])?;
        self.ip(switch, &["link", "set", &port, "up"])?;
        self.ip(host, &["addr", "add", cidr, "dev", ifname])?;
        self.ip(host, &["link", "set", ifname, "up"])?;
        Ok(())
    }

    pub fn default_route(&self, host: &str, via: &str) -> Result<()> {
        self.ip(host, &["route", "add", "default", "via", via])?;
        Ok(())
    }

    /// Makes `router` forward between its interfaces.
    pub fn forward(&self, router: &str) -> Result<()> {
        self.exec(router, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        Ok(())
    }

    /// Hides everything behind `router` behind its address on `wan_if`, as a home router
    /// does: outgoing flows are masqueraded, unsolicited incoming ones dropped. With
    /// `symmetric`, every flow gets a random port (a NAT hole punching cannot get through).
    pub fn nat(&self, router: &str, wan_if: &str, symmetric: bool) -> Result<()> {
        self.forward(router)?;
        let masq = if symmetric {
            "masquerade random,fully-random"
        } else {
            "masquerade"
        };
        let rules = format!(
            "table ip nat {{\n\
               chain postrouting_rules {{ type nat hook postrouting priority 100; oifname \"{wan_if}\" {masq}; }}\n\
             }}\n\
             table ip filter {{\n\
               chain forward_rules {{ type filter hook forward priority 0; policy accept;\n\
                 iifname \"{wan_if}\" ct state established,related accept\n\
                 iifname \"{wan_if}\" drop\n\
               }}\n\
               chain input_rules {{ type filter hook input priority 0; policy accept;\n\
                 iifname \"{wan_if}\" ct state established,related accept\n\
                 iifname \"{wan_if}\" drop\n\
               }}\n\
             }}\n"
        );
        let path = self.dir.join(format!("{router}.nft"));
        std::fs::write(&path, rules)?;
        self.exec(router, "nft", &["-f", path.to_str().unwrap()])?;
        Ok(())
    }

    /// Limits the rate of packets leaving `ifname` (token bucket, `tc tbf`).
    pub fn rate_limit(&self, host: &str, ifname: &str, mbit: u32) -> Result<()> {
        let rate = format!("{mbit}mbit");
        self.exec(
            host,
            "tc",
            &[
                "qdisc", "add", "dev", ifname, "root", "tbf", "rate", &rate, "burst", "64kb",
                "latency", "200ms",
            ],
        )?;
        Ok(())
    }

    /// Starts a long-running process inside a namespace, its output in `<dir>/<log>.log`.
    pub fn spawn(&mut self, ns: &str, program: &Path, args: &[String], log: &str) -> Result<u32> {
        let file = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{log}.log")))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(ns)])
            .arg(program)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("AGORA_TESTBED_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let pid = child.id();
        self.procs.push(Proc { child });
        Ok(pid)
    }

    /// Stops one process started with [`Testbed::spawn`]: SIGTERM, then SIGKILL after 10 s.
    pub fn stop(&mut self, pid: u32, kill: bool) {
        if let Some(i) = self.procs.iter().position(|p| p.child.id() == pid) {
            let mut p = self.procs.remove(i);
            stop_child(&mut p.child, kill);
        }
    }

    /// The tail of a process log, for failure reports.
    pub fn log_tail(&self, log: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join(format!("{log}.log"))).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

fn stop_child(child: &mut Child, kill: bool) {
    let pid = child.id() as libc::pid_t;
    // `ip netns exec` execs the program, so the pid is the node itself.
    unsafe {
        libc::kill(pid, if kill { libc::SIGKILL } else { libc::SIGTERM });
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for p in &mut self.procs {
            stop_child(&mut p.child, false);
        }
        for ns in self.namespaces.iter().rev() {
            kill_namespace_pids(ns);
            if let Err(e) = run("ip", &["netns", "del", ns]) {
                eprintln!("warning: cannot remove namespace {ns}: {e}");
            }
        }
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn kill_namespace_pids(ns: &str) {
    if let Ok(out) = run("ip", &["netns", "pids", ns]) {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<libc::pid_t>() {
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

/// Removes namespaces (and the processes in them) left by earlier runs; returns their names.
pub fn clean_leftovers() -> Result<Vec<String>> {
    let out = run("ip", &["netns", "list"])?;
    let mut removed = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if name.starts_with(PREFIX) {
            kill_namespace_pids(name);
            run("ip", &["netns", "del", name])?;
            removed.push(name.to_owned());
        }
    }
    Ok(removed)
}

/// Polls `f` every 100 ms until it returns `Some`, for at most `timeout`.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline || interrupted() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespaces() -> Vec<String> {
        let out = run("ip", &["netns", "list"]).expect("ip netns list");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    }

    /// Hosts and a switch are created under the run's prefix, the hosts get their addresses,
    /// and everything (namespaces, processes, the directory) is gone after a failure.
    #[test]
    fn a_failed_run_leaves_no_namespace_process_or_directory_behind() {
        if let Err(why) = check_capabilities() {
            eprintln!("SKIPPED: namespaces cannot be used here: {why}");
            return;
        }
        let dir = std::env::temp_dir().join(format!("agtb-unit-{}", std::process::id()));
        let mut created = Vec::new();
        let mut pid = 0;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut tb = Testbed::new(&dir).unwrap();
            tb.add_switch("lan").unwrap();
            for (host, ip) in [("h1", "10.77.0.1/24"), ("h2", "10.77.0.2/24")] {
                tb.add_host(host).unwrap();
                tb.plug(host, "eth0", "lan", ip).unwrap();
            }
            created = tb.namespaces.clone();
            let present = namespaces();
            assert!(
                created.iter().all(|ns| present.contains(ns)),
                "{created:?} {present:?}"
            );
            assert!(created.iter().all(|ns| ns.starts_with(PREFIX)));
            let addrs = tb.ip("h2", &["-4", "addr", "show", "eth0"]).unwrap();
            assert!(String::from_utf8_lossy(&addrs.stdout).contains("10.77.0.2/24"));
            pid = tb
                .spawn("h1", Path::new("/bin/sleep"), &["600".into()], "sleeper")
                .unwrap();
            panic!("a scenario fails here");
        }));
        assert!(result.is_err());
        assert!(!created.is_empty());
        let present = namespaces();
        for ns in &created {
            assert!(!present.contains(ns), "namespace {ns} left behind");
        }
        // SAFETY: kill(pid, 0) only asks whether the process exists.
        let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true);
        assert!(!alive || zombie, "process {pid} left running");
        assert!(!dir.exists(), "run directory left behind");
    }
}
