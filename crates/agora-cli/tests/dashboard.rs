//! The web dashboard's server side, against real `agora up` processes over loopback: login by a
//! one-time code from `agora dashboard`, the session cookie, CSRF and origin checks, embedded
//! assets with ETags, uploads, paging, and the live events of `/v1/events`.

#[allow(dead_code)]
#[path = "integration/common.rs"]
mod common;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::{Node, WAIT, stderr, stdout, wait_for};
use serde_json::{Value, json};

/// An HTTP client that follows no redirect and keeps no cookies: every header is explicit.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .new_agent()
}

struct Reply {
    status: u16,
    headers: ureq::http::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    }
}

fn call(
    node: &Node,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Reply {
    let mut req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", node.api));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let result = match body {
        Some(b) => agent().run(req.body(b).unwrap()),
        None => agent().run(req.body(()).unwrap()),
    };
    let mut resp = result.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    Reply {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_vec()
            .unwrap(),
    }
}

/// A logged-in browser: its cookie header and CSRF token.
struct Session {
    cookie: String,
    csrf: String,
}

impl Session {
    fn get(&self, node: &Node, path: &str) -> Reply {
        call(node, "GET", path, &[("Cookie", &self.cookie)], None)
    }

    fn post(&self, node: &Node, path: &str, body: &Value) -> Reply {
        call(
            node,
            "POST",
            path,
            &[
                ("Cookie", &self.cookie),
                ("X-Agora-CSRF", &self.csrf),
                ("Content-Type", "application/json"),
                ("Origin", &format!("http://{}", node.api)),
            ],
            Some(body.to_string().into_bytes()),
        )
    }
}

/// `agora dashboard --no-open`: the URL it prints.
fn login_url(node: &Node) -> String {
    let out = node.cli(&["dashboard", "--no-open"]);
    assert!(out.status.success(), "agora dashboard: {}", stderr(&out));
    let url = stdout(&out).trim().to_owned();
    assert!(
        url.starts_with(&format!("http://{}/login?code=", node.api)),
        "{url}"
    );
    assert!(!url.contains(&node.token), "the API token is in the URL");
    url
}

/// Opens the login URL like a browser and returns the session.
fn log_in(node: &Node) -> Session {
    let url = login_url(node);
    let path = url.trim_start_matches(&format!("http://{}", node.api));
    let r = call(node, "GET", path, &[("Accept", "text/html")], None);
    assert_eq!(r.status, 303, "{}", r.text());
    let cookie = r.header("set-cookie");
    let value = cookie.split(';').next().unwrap().trim().to_owned();
    let page = call(node, "GET", "/", &[("Cookie", &value)], None);
    let csrf = csrf_of(&page.text());
    Session {
        cookie: value,
        csrf,
    }
}

fn csrf_of(page: &str) -> String {
    let at = page
        .find("<meta name=\"agora-csrf\" content=\"")
        .unwrap_or_else(|| panic!("no CSRF meta in {page}"));
    let rest = &page[at + "<meta name=\"agora-csrf\" content=\"".len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

fn assert_security_headers(r: &Reply) {
    let csp = r.header("content-security-policy");
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(r.header("x-content-type-options"), "nosniff");
    assert_eq!(r.header("referrer-policy"), "no-referrer");
}

fn assert_login_page(r: &Reply, node: &Node) {
    let page = r.text();
    assert!(
        r.header("content-type").starts_with("text/html"),
        "{:?}",
        r.headers
    );
    assert!(page.contains("agora dashboard"), "{page}");
    assert!(!page.contains(&node.peer_id), "node data on the login page");
    assert!(!page.contains("agora-csrf\" content=\"{{"), "{page}");
    assert_security_headers(r);
}

fn wait_job(node: &Node, job: u64) -> Value {
    wait_for(&format!("job {job}"), WAIT, || {
        let (status, v) = node.get(&format!("/v1/jobs/{job}"));
        assert_eq!(status, 200, "{v}");
        match v["state"].as_str() {
            Some("running") => None,
            Some("done") => Some(v),
            _ => panic!("job {job} failed: {v}"),
        }
    })
}

fn upload(node: &Node, name: &str, body: Vec<u8>) -> Value {
    let r = call(
        node,
        "POST",
        &format!("/v1/files/upload?name={name}"),
        &[
            ("Authorization", &format!("Bearer {}", node.token)),
            ("Content-Type", "application/octet-stream"),
        ],
        Some(body),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    wait_job(node, r.json()["job"].as_u64().unwrap())
}

fn dashboard_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../agora-node/dashboard")
}

fn asset_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            asset_files(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn login_session_csrf_assets_upload_and_paging() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("a"), &[]);

    // Without a session: the login page, no node data; the API still wants its token.
    for path in ["/", "/files"] {
        let r = call(&node, "GET", path, &[("Accept", "text/html")], None);
        assert_eq!(r.status, 200, "{path}");
        assert_login_page(&r, &node);
    }
    for (method, path) in [
        ("GET", "/v1/id"),
        ("GET", "/metrics"),
        ("GET", "/v1/events"),
        ("POST", "/v1/dashboard/login"),
        ("POST", "/logout"),
    ] {
        let r = call(&node, method, path, &[], None);
        assert_eq!(r.status, 401, "{method} {path}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "unauthorized");
    }
    // A JSON client asking for an unknown path outside the API gets no page.
    let r = call(
        &node,
        "GET",
        "/nothing",
        &[("Accept", "application/json")],
        None,
    );
    assert_eq!(r.status, 401);

    // `--json` prints the login answer.
    let out = node.cli(&["dashboard", "--no-open", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["expires_in_s"], 300);
    assert_eq!(v["code"].as_str().unwrap().len(), 64);
    assert!(
        v["url"]
            .as_str()
            .unwrap()
            .ends_with(v["code"].as_str().unwrap())
    );

    // The code logs in once.
    let url = login_url(&node);
    let path = url
        .trim_start_matches(&format!("http://{}", node.api))
        .to_owned();
    let r = call(&node, "GET", &path, &[], None);
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.header("location"), "/");
    let set_cookie = r.header("set-cookie");
    assert!(set_cookie.starts_with("agora_session="), "{set_cookie}");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=604800"] {
        assert!(set_cookie.contains(flag), "{flag} missing: {set_cookie}");
    }
    assert_security_headers(&r);
    let again = call(&node, "GET", &path, &[], None);
    assert_eq!(again.status, 401);
    assert_login_page(&again, &node);
    assert!(again.text().contains("already used"), "{}", again.text());
    let wrong = call(&node, "GET", "/login?code=00ff", &[], None);
    assert_eq!(wrong.status, 401);
    assert_login_page(&wrong, &node);

    // With the cookie: the app with its CSRF token, on client-side routes too.
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let page = call(&node, "GET", "/", &[("Cookie", &cookie)], None);
    assert_eq!(page.status, 200);
    assert_security_headers(&page);
    let csrf = csrf_of(&page.text());
    assert_eq!(csrf.len(), 64, "{csrf}");
    assert!(!page.text().contains("{{CSRF}}"));
    let route = call(
        &node,
        "GET",
        "/ledger",
        &[("Cookie", &cookie), ("Accept", "text/html,*/*")],
        None,
    );
    assert_eq!(csrf_of(&route.text()), csrf);
    let s = Session {
        cookie: cookie.clone(),
        csrf: csrf.clone(),
    };
    let id = s.get(&node, "/v1/id");
    assert_eq!(id.status, 200, "{}", id.text());
    assert_eq!(id.json()["peer_id"], node.peer_id.as_str());
    assert_security_headers(&id);

    // State changes with the cookie need the CSRF token and the node's own origin.
    let profile = json!({ "nick": "dash" }).to_string().into_bytes();
    let own_origin = format!("http://{}", node.api);
    let cases: [(&[(&str, &str)], u16); 5] = [
        (&[], 403),
        (&[("X-Agora-CSRF", "0123")], 403),
        (
            &[("X-Agora-CSRF", &csrf), ("Origin", "http://evil.example")],
            403,
        ),
        (&[("X-Agora-CSRF", &csrf), ("Origin", "null")], 403),
        (&[("X-Agora-CSRF", &csrf), ("Origin", &own_origin)], 200),
    ];
    for (extra, expected) in cases {
        let mut headers = vec![
            ("Cookie", cookie.as_str()),
            ("Content-Type", "application/json"),
        ];
        headers.extend_from_slice(extra);
        let r = call(
            &node,
            "POST",
            "/v1/chat/profile",
            &headers,
            Some(profile.clone()),
        );
        assert_eq!(r.status, expected, "{extra:?}: {}", r.text());
        if expected == 403 {
            assert_eq!(r.json()["error"]["code"], "csrf", "{}", r.text());
        }
    }
    // Without an Origin header (same-origin GET-initiated fetches may omit it) the token suffices.
    let r = call(
        &node,
        "POST",
        "/v1/chat/profile",
        &[
            ("Cookie", &cookie),
            ("X-Agora-CSRF", &csrf),
            ("Content-Type", "application/json"),
        ],
        Some(profile.clone()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // A wrong cookie is no session.
    let r = call(
        &node,
        "GET",
        "/v1/id",
        &[("Cookie", "agora_session=ab12")],
        None,
    );
    assert_eq!(r.status, 401);

    // Assets: every file under dashboard/ is served as it is, with its type and ETag.
    let root = dashboard_dir();
    let mut files = Vec::new();
    asset_files(&root, &mut files);
    assert!(!files.is_empty());
    let mut gzipped = 0;
    for file in &files {
        let rel = file
            .strip_prefix(&root)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let bytes = std::fs::read(file).unwrap();
        let r = call(&node, "GET", &format!("/ui/{rel}"), &[], None);
        assert_eq!(r.status, 200, "{rel}");
        assert!(
            r.body == bytes,
            "{rel} served ({} bytes) differs from the file ({} bytes): rebuild?",
            r.body.len(),
            bytes.len()
        );
        let etag = format!("\"{}\"", blake3::hash(&bytes).to_hex());
        assert_eq!(r.header("etag"), etag, "{rel}");
        assert_eq!(r.header("cache-control"), "no-cache");
        assert_security_headers(&r);
        let expected_type = match rel.rsplit('.').next().unwrap() {
            "html" => "text/html",
            "js" => "application/javascript",
            "css" => "text/css",
            "svg" => "image/svg+xml",
            _ => "",
        };
        assert!(
            r.header("content-type").starts_with(expected_type),
            "{rel}: {}",
            r.header("content-type")
        );
        let r = call(
            &node,
            "GET",
            &format!("/ui/{rel}"),
            &[("If-None-Match", &etag)],
            None,
        );
        assert_eq!(r.status, 304, "{rel}");
        assert!(r.body.is_empty());
        if bytes.len() > 1024 && !expected_type.is_empty() {
            let r = call(
                &node,
                "GET",
                &format!("/ui/{rel}"),
                &[("Accept-Encoding", "gzip, deflate")],
                None,
            );
            assert_eq!(r.header("content-encoding"), "gzip", "{rel}");
            assert_eq!(&r.body[..2], &[0x1f, 0x8b], "{rel}");
            assert!(r.body.len() < bytes.len());
            gzipped += 1;
        }
    }
    let css = files
        .iter()
        .any(|f| f.extension().is_some_and(|e| e == "css"));
    assert!(!css || gzipped > 0, "no asset was served gzipped");
    assert_eq!(call(&node, "GET", "/ui/nope.js", &[], None).status, 404);
    assert_eq!(
        call(&node, "GET", "/ui/../Cargo.toml", &[], None).status,
        404
    );

    // Upload: bigger than the JSON body limit, shared like `share`, its hash is the body's.
    let body: Vec<u8> = (0..600_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let done = upload(&node, "big%20upload.bin", body.clone());
    assert_eq!(
        done["result"]["hash"].as_str().unwrap(),
        blake3::hash(&body).to_hex().as_str(),
        "{done}"
    );
    assert_eq!(done["result"]["name"], "big upload.bin");
    assert!(
        done["result"]["ticket"]
            .as_str()
            .unwrap()
            .starts_with("agora1")
    );
    // Through the session as well (cookie + CSRF, raw body).
    let r = call(
        &node,
        "POST",
        "/v1/files/upload?name=cookie.txt",
        &[
            ("Cookie", &cookie),
            ("X-Agora-CSRF", &csrf),
            ("Origin", &own_origin),
        ],
        Some(b"uploaded from a page".to_vec()),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let done = wait_job(&node, r.json()["job"].as_u64().unwrap());
    assert_eq!(
        done["result"]["hash"].as_str().unwrap(),
        blake3::hash(b"uploaded from a page").to_hex().as_str()
    );
    let r = call(
        &node,
        "POST",
        "/v1/files/upload?name=..",
        &[("Cookie", &cookie), ("X-Agora-CSRF", &csrf)],
        Some(b"x".to_vec()),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let jobs = s.get(&node, "/v1/jobs").json();
    assert_eq!(jobs.as_array().unwrap().len(), 2, "{jobs}");

    // Paging: the total that match and the slice asked for, in name order.
    for i in 0..25 {
        upload(
            &node,
            &format!("page-{i:02}.txt"),
            format!("page {i}").into_bytes(),
        );
    }
    let r = s.get(&node, "/v1/files?offset=5&limit=10&q=PAGE");
    assert_eq!(r.status, 200, "{}", r.text());
    let page = r.json();
    assert_eq!(page["total"], 25, "{page}");
    let names: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (5..15).map(|i| format!("page-{i:02}.txt")).collect();
    assert_eq!(names, expected);
    assert!(
        page["items"][0]["ticket"]
            .as_str()
            .unwrap()
            .starts_with("agora1")
    );
    let page = s
        .get(&node, "/v1/files/page?offset=20&limit=10&q=page")
        .json();
    assert_eq!(page["items"].as_array().unwrap().len(), 5, "{page}");
    let all = s.get(&node, "/v1/files/page?limit=1000").json();
    assert_eq!(all["total"], 27, "{all}");
    // Without parameters: the array the CLI reads.
    let (status, list) = node.get("/v1/files");
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 27);
    let out = node.cli(&["files"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("page-24.txt"));

    // Logging out ends the session (and needs the CSRF token).
    let r = call(&node, "POST", "/logout", &[("Cookie", &cookie)], None);
    assert_eq!(r.status, 403);
    let r = s.post(&node, "/logout", &json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("set-cookie").contains("Max-Age=0"));
    assert_eq!(s.get(&node, "/v1/id").status, 401);
    assert_login_page(&s.get(&node, "/"), &node);
}

/// Reads `/v1/events` on a thread: each event as (name, data).
fn event_stream(node: &Node, session: &Session) -> mpsc::Receiver<(String, Value)> {
    let (tx, rx) = mpsc::channel();
    let url = format!("http://{}/v1/events", node.api);
    let cookie = session.cookie.clone();
    std::thread::spawn(move || {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .new_agent();
        let resp = agent
            .get(&url)
            .header("Cookie", &cookie)
            .header("Accept", "text/event-stream")
            .call()
            .unwrap();
        assert_eq!(resp.status(), 200);
        let reader = BufReader::new(resp.into_body().into_reader());
        let mut name = String::new();
        for line in reader.lines() {
            let Ok(line) = line else { return };
            if let Some(n) = line.strip_prefix("event: ") {
                name = n.to_owned();
            } else if let Some(d) = line.strip_prefix("data: ") {
                let data = serde_json::from_str(d).unwrap_or(Value::Null);
                if tx.send((std::mem::take(&mut name), data)).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// Every event up to the first named `name` whose data satisfies `pred` (the last one).
fn events_until(
    rx: &mpsc::Receiver<(String, Value)>,
    name: &str,
    pred: impl Fn(&Value) -> bool,
) -> Vec<(String, Value)> {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((n, data)) => {
                let done = n == name && pred(&data);
                seen.push((n, data));
                if done {
                    return seen;
                }
            }
            Err(e) => panic!("no {name} event within {WAIT:?}: {e}"),
        }
    }
}

/// Waits for an event named `name` whose data satisfies `pred`; returns it.
fn expect_event(
    rx: &mpsc::Receiver<(String, Value)>,
    name: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((n, data)) if n == name && pred(&data) => return data,
            Ok(_) => {}
            Err(e) => panic!("no {name} event within {WAIT:?}: {e}"),
        }
    }
}

#[test]
fn live_events_for_the_pages() {
    let dir = tempfile::tempdir().unwrap();
    let dirs = [dir.path().join("a"), dir.path().join("b")];
    let accounts = common::write_ledger_genesis(dir.path(), &dirs, 1, "dash", 1_000_000, 1);
    let genesis = dir.path().join("genesis.json");
    let a = common::start_ledger_node(&dirs[0], &genesis, true, None);
    let b = common::start_ledger_node(&dirs[1], &genesis, false, Some(&a));
    common::wait_connected(&a, &b);
    let (sa, sb) = (log_in(&a), log_in(&b));
    let ea = event_stream(&a, &sa);
    let eb = event_stream(&b, &sb);

    // `stats` every 2 s while the stream is open.
    let stats = expect_event(&ea, "stats", |_| true);
    for key in [
        "bytes_in",
        "bytes_out",
        "connected_peers",
        "storage_bytes",
        "uptime_secs",
        "at_ms",
    ] {
        assert!(stats[key].is_u64(), "{key} in {stats}");
    }
    assert!(stats["connected_peers"].as_u64().unwrap() >= 1);

    // Chat: A's page sends, B's page hears it, A's hears it was delivered.
    let r = sb.post(&b, "/v1/chat/profile", &json!({ "nick": "bee" }));
    assert_eq!(r.status, 200, "{}", r.text());
    expect_event(&eb, "chat.profile", |d| d["peer_id"] == b.peer_id.as_str());
    let r = sa.post(
        &a,
        "/v1/chat/send",
        &json!({ "to": b.peer_id, "text": "hi from the page" }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    expect_event(&ea, "chat.message_sent", |d| d["id"] == id.as_str());
    expect_event(&ea, "chat.message_state", |d| {
        d["id"] == id.as_str() && d["state"] == "delivered"
    });
    let got = expect_event(&eb, "chat.message_received", |d| {
        d["peer_id"] == a.peer_id.as_str()
    });
    assert_eq!(got["count"], 1);
    let r = sb.get(
        &b,
        &format!("/v1/chat/messages?peer={}&mark_read=true", a.peer_id),
    );
    assert_eq!(r.status, 200);
    expect_event(&eb, "chat.messages_read", |d| d["count"] == 1);

    // Files: a download on B reports progress and its end.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let shared = upload(&a, "for-b.bin", data.clone());
    let hash = shared["result"]["hash"].as_str().unwrap().to_owned();
    let out = dir.path().join("got.bin");
    let r = sb.post(
        &b,
        "/v1/files/get",
        &json!({ "target": shared["result"]["ticket"], "out": out }),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let job = r.json()["job"].as_u64().unwrap();
    let finished = expect_event(&eb, "files.job_finished", |d| d["id"] == job);
    assert_eq!(finished["state"], "done", "{finished}");
    assert_eq!(finished["done_bytes"], data.len() as u64);
    assert_eq!(finished["total_bytes"], data.len() as u64);
    assert_eq!(std::fs::read(&out).unwrap(), data);
    expect_event(&eb, "files.changed", |d| d["hash"] == hash.as_str());

    // Ledger: a payment from A's page is a new block on both and a tx on both accounts.
    let r = sa.post(
        &a,
        "/v1/ledger/pay",
        &json!({ "to": accounts[1].to_string(), "amount": 1234 }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let tx = r.json()["hash"].as_str().unwrap().to_owned();
    for (node, session, events, who) in [(&a, &sa, &ea, "a"), (&b, &sb, &eb, "b")] {
        let seen = events_until(events, "ledger.tx", |d| d["hash"] == tx.as_str());
        let (_, t) = seen.last().unwrap();
        assert_eq!(t["amount"], 1234, "{who}: {t}");
        let height = t["height"].as_u64().unwrap();
        // The block's event comes first, with the finality time this node saw.
        let block = seen
            .iter()
            .find(|(n, d)| n == "ledger.block" && d["height"] == height)
            .unwrap_or_else(|| panic!("{who}: no ledger.block {height} before the tx"));
        assert_eq!(block.1["txs"], 1, "{who}: {}", block.1);
        assert!(block.1["finality_ms"].is_u64(), "{who}: {}", block.1);
        // And it is among the recent blocks.
        let blocks = session.get(node, "/v1/ledger/blocks?limit=100").json();
        let listed = blocks
            .as_array()
            .unwrap()
            .iter()
            .find(|bl| bl["height"] == height)
            .unwrap_or_else(|| panic!("{who}: block {height} not in {blocks}"));
        assert_eq!(listed["finality_ms"], block.1["finality_ms"], "{who}");
    }
}
