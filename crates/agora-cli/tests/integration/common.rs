//! Test harness: real `agora` processes on loopback, driven over HTTP and the CLI.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

pub const WAIT: Duration = Duration::from_secs(30);

pub fn agora() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agora"));
    cmd.env_remove("AGORA_API")
        .env_remove("AGORA_TOKEN")
        .env_remove("AGORA_DATA_DIR")
        .env(
            "RUST_LOG",
            std::env::var("AGORA_TEST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null());
    cmd
}

/// Polls `f` until it returns `Some`, failing the test after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running `agora up` child process with its own data directory.
pub struct Node {
    pub dir: PathBuf,
    pub child: Option<Child>,
    pub api: String,
    pub token: String,
    pub peer_id: String,
    pub addrs: Vec<String>,
    agent: ureq::Agent,
}

impl Node {
    /// Starts a node in `dir` on loopback ports chosen by the OS.
    pub fn start(dir: &Path, extra: &[&str]) -> Node {
        let child = Self::spawn(dir, extra);
        Self::ready(dir, child)
    }

    /// Starts a node that listens only on `listen`.
    pub fn start_listening(dir: &Path, listen: &[String], extra: &[&str]) -> Node {
        let child = Self::spawn_with(dir, listen, extra);
        Self::ready(dir, child)
    }

    pub fn spawn(dir: &Path, extra: &[&str]) -> Child {
        let loopback = [
            "/ip4/127.0.0.1/tcp/0".to_owned(),
            "/ip4/127.0.0.1/udp/0/quic-v1".to_owned(),
        ];
        Self::spawn_with(dir, &loopback, extra)
    }

    pub fn spawn_with(dir: &Path, listen: &[String], extra: &[&str]) -> Child {
        fs::create_dir_all(dir).unwrap();
        let _ = fs::remove_file(dir.join("api.json"));
        let log = fs::File::options()
            .create(true)
            .append(true)
            .open(dir.join("node.log"))
            .unwrap();
        agora()
            .arg("up")
            .arg("--data-dir")
            .arg(dir)
            .args(listen.iter().flat_map(|l| ["--listen", l.as_str()]))
            .args(["--api", "127.0.0.1:0"])
            .args(extra)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn agora up")
    }

    /// Waits until the child has written its api.json.
    pub fn ready(dir: &Path, mut child: Child) -> Node {
        let pid = child.id();
        let info = wait_for("api.json", WAIT, || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("agora up exited early ({status}):\n{}", log_tail(dir, 30));
            }
            let text = fs::read_to_string(dir.join("api.json")).ok()?;
            let v: Value = serde_json::from_str(&text).ok()?;
            (v["pid"].as_u64() == Some(pid as u64)).then_some(v)
        });
        let token_file = info["token_file"].as_str().unwrap();
        let token = fs::read_to_string(token_file).unwrap().trim().to_owned();
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .new_agent();
        let mut node = Node {
            dir: dir.to_owned(),
            child: Some(child),
            api: info["api"].as_str().unwrap().to_owned(),
            token,
            peer_id: info["peer_id"].as_str().unwrap().to_owned(),
            addrs: Vec::new(),
            agent,
        };
        let (status, id) = node.get("/v1/id");
        assert_eq!(status, 200, "{id}");
        node.addrs = id["addrs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect();
        node
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn tcp_addr(&self) -> String {
        self.addrs
            .iter()
            .find(|a| a.contains("/tcp/"))
            .expect("a TCP address")
            .clone()
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String) {
        let url = format!("http://{}{path}", self.api);
        let mut req = ureq::http::Request::builder().method(method).uri(url);
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let result = match body {
            Some(b) => {
                let req = req
                    .header("Content-Type", "application/json")
                    .body(b.to_owned())
                    .unwrap();
                self.agent.run(req)
            }
            None => self.agent.run(req.body(()).unwrap()),
        };
        let mut resp = result.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        (status, resp.body_mut().read_to_string().unwrap())
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let (status, body) = self.request("GET", path, Some(&self.token.clone()), None);
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, body) = self.request(
            "POST",
            path,
            Some(&self.token.clone()),
            Some(&body.to_string()),
        );
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    pub fn peer_ids(&self) -> Vec<String> {
        let (status, peers) = self.get("/v1/peers");
        assert_eq!(status, 200, "{peers}");
        peers
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["peer_id"].as_str().unwrap().to_owned())
            .collect()
    }

    pub fn is_connected_to(&self, other: &str) -> bool {
        self.peer_ids().iter().any(|p| p == other)
    }

    /// Runs the CLI against this node (via --data-dir).
    pub fn cli(&self, args: &[&str]) -> Output {
        agora()
            .args(args)
            .arg("--data-dir")
            .arg(&self.dir)
            .output()
            .unwrap()
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!("node did not stop within {WAIT:?} after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory of the process in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- log of node {} ({}) ---\n{}",
                self.peer_id,
                self.dir.display(),
                log_tail(&self.dir, 40)
            );
        }
        self.kill9();
    }
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a child we started.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

pub fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

pub fn log_tail(dir: &Path, lines: usize) -> String {
    let log = fs::read_to_string(dir.join("node.log")).unwrap_or_default();
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a client command against a data directory where no node runs, and checks the error.
pub fn assert_no_node_at(dir: &Path, command: &str) {
    let out = agora()
        .args([command, "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("no agora node is running"), "{err}");
    assert!(err.contains("agora up"), "{err}");
}

/// Waits until `a` lists `b` among its peers.
pub fn wait_connected(a: &Node, b: &Node) {
    wait_for(
        &format!("{} to list {}", a.peer_id, b.peer_id),
        WAIT,
        || a.is_connected_to(&b.peer_id).then_some(()),
    );
}

/// Writes `root/genesis.json` for a ledger of the nodes in `dirs` (their identities created
/// if missing): the first `validators` validate, every account starts with `balance`.
pub fn write_ledger_genesis(
    root: &Path,
    dirs: &[std::path::PathBuf],
    validators: usize,
    chain: &str,
    balance: u64,
    min_fee: u64,
) -> Vec<agora_ledger::Account> {
    let accounts: Vec<agora_ledger::Account> = dirs
        .iter()
        .map(|d| agora_ledger::service::identity_in(d).unwrap().0)
        .collect();
    let genesis = agora_ledger::Genesis {
        chain: chain.into(),
        validators: accounts[..validators].to_vec(),
        balances: accounts.iter().map(|a| (*a, balance)).collect(),
        min_fee,
        epoch_length: 1_000_000,
    };
    std::fs::write(
        root.join("genesis.json"),
        serde_json::to_vec_pretty(&genesis).unwrap(),
    )
    .unwrap();
    accounts
}

/// Starts a node following the ledger of `genesis` (validating when asked), bootstrapped from
/// `bootstrap`.
pub fn start_ledger_node(
    dir: &Path,
    genesis: &Path,
    validator: bool,
    bootstrap: Option<&Node>,
) -> Node {
    let mut args = vec!["--genesis".to_owned(), genesis.to_str().unwrap().to_owned()];
    if validator {
        args.push("--validator".into());
    }
    if let Some(b) = bootstrap {
        args.push("--bootstrap".into());
        args.push(b.tcp_addr());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Node::start(dir, &args)
}

/// A node's finalized ledger height.
pub fn ledger_height(node: &Node) -> u64 {
    let (status, v) = node.get("/v1/ledger/status");
    assert_eq!(status, 200, "{v}");
    v["height"].as_u64().unwrap()
}
