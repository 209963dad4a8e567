//! The web dashboard: embedded assets, one-time login codes, session cookies and CSRF checks.
//!
//! # Serving
//! Every file under `crates/agora-node/dashboard/` is compiled into the binary (rust-embed, also
//! in debug builds) and served at `/ui/<path>` without a session: the assets hold no node data.
//! Each carries `Cache-Control: no-cache` and an ETag (BLAKE3 of the content), so a reload costs
//! one 304 per asset; text assets are gzipped once, at first use, when the client accepts gzip.
//!
//! `GET /` and every other `GET` a browser asks for as HTML outside `/v1`, `/ui`, `/login`,
//! `/logout` and `/metrics` (so that client-side routes such as `/files` survive a reload) answer
//! `index.html` with `{{CSRF}}` replaced by the session's CSRF token when the request carries a
//! valid session cookie, and `login.html` (no node data) otherwise.
//!
//! # Login
//! The long-lived API token never appears in a URL or a page. `agora dashboard` calls
//! `POST /v1/dashboard/login` with the token and gets a one-time code (32 random bytes, hex,
//! valid [`CODE_TTL`], at most [`MAX_CODES`] outstanding, the oldest dropped first) inside a URL,
//! `/login?code=…`. Opening it exchanges the code for a session: a random 32-byte id in an
//! `HttpOnly; SameSite=Strict` cookie ([`COOKIE`]), of which the node keeps only the BLAKE3
//! hash, with a random CSRF token of its own. Sessions live in memory: at most [`MAX_SESSIONS`]
//! (the oldest dropped first), each for [`SESSION_TTL`]; restarting the node logs every browser
//! out (run `agora dashboard` again).
//!
//! # CSRF
//! The JSON API accepts the session cookie in place of the bearer token. A request authenticated
//! by the cookie whose method is not `GET` or `HEAD` must carry [`CSRF_HEADER`] with the
//! session's token, and, when it has an `Origin` header, come from the API's own origin
//! (`http://<Host>`); otherwise it is refused with 403 `{"error": {"code": "csrf"}}`. A form or
//! a page on another origin cannot set that header, and cannot read the token (it is only in the
//! HTML served to the session itself).

use std::{
    collections::{HashMap, VecDeque},
    io::Write,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::Body,
    extract::{Query, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};

use crate::{Node, api::ApiError};

/// How long a login code printed by `agora dashboard` stays valid.
pub const CODE_TTL: Duration = Duration::from_secs(5 * 60);
/// Login codes outstanding at once; issuing one more drops the oldest.
pub const MAX_CODES: usize = 16;
/// How long a dashboard session lasts (the cookie's `Max-Age`).
pub const SESSION_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Sessions kept at once; a new login beyond it ends the oldest session.
pub const MAX_SESSIONS: usize = 64;
/// The session cookie.
pub const COOKIE: &str = "agora_session";
/// The header that carries the session's CSRF token on state-changing requests.
pub const CSRF_HEADER: &str = "x-agora-csrf";
/// Where `index.html` wants the CSRF token.
const CSRF_PLACEHOLDER: &str = "{{CSRF}}";
/// Where `login.html` wants a message (an expired code, …); empty when there is none.
const MESSAGE_PLACEHOLDER: &str = "{{MESSAGE}}";
/// The Content-Security-Policy of every response: nothing from another origin, no inline code.
pub const CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'";
/// Random bytes in a login code, a session id and a CSRF token.
const SECRET_BYTES: usize = 32;

/// The dashboard's assets, compiled into the binary.
#[derive(rust_embed::RustEmbed)]
#[folder = "dashboard/"]
struct Assets;

/// Login codes and sessions (pure state: every call takes `now`).
#[derive(Default)]
pub struct Logins {
    codes: VecDeque<Pending>,
    sessions: VecDeque<Session>,
}

struct Pending {
    hash: blake3::Hash,
    expires: Instant,
}

struct Session {
    hash: blake3::Hash,
    csrf: String,
    expires: Instant,
}

/// A session just created by [`Logins::redeem`]: the cookie value and its CSRF token.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: String,
    pub csrf: String,
}

/// Why a login code was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    #[error("this login code is unknown or was already used")]
    Unknown,
    #[error("this login code has expired")]
    Expired,
}

fn secret() -> String {
    hex::encode(rand::random::<[u8; SECRET_BYTES]>())
}

impl Logins {
    /// A new one-time login code, valid until `now + CODE_TTL`.
    pub fn issue(&mut self, now: Instant) -> String {
        self.codes.retain(|c| c.expires > now);
        while self.codes.len() >= MAX_CODES {
            self.codes.pop_front();
        }
        let code = secret();
        self.codes.push_back(Pending {
            hash: blake3::hash(code.as_bytes()),
            expires: now + CODE_TTL,
        });
        code
    }

    /// Uses up `code` and opens a session for it.
    pub fn redeem(&mut self, code: &str, now: Instant) -> Result<NewSession, CodeError> {
        let hash = blake3::hash(code.trim().as_bytes());
        // blake3::Hash compares in constant time.
        let i = self
            .codes
            .iter()
            .position(|c| c.hash == hash)
            .ok_or(CodeError::Unknown)?;
        let pending = self.codes.remove(i).expect("index from position");
        if pending.expires <= now {
            return Err(CodeError::Expired);
        }
        self.sessions.retain(|s| s.expires > now);
        while self.sessions.len() >= MAX_SESSIONS {
            self.sessions.pop_front();
        }
        let session = NewSession {
            id: secret(),
            csrf: secret(),
        };
        self.sessions.push_back(Session {
            hash: blake3::hash(session.id.as_bytes()),
            csrf: session.csrf.clone(),
            expires: now + SESSION_TTL,
        });
        Ok(session)
    }

    /// The CSRF token of the live session whose cookie value is `id`.
    pub fn session(&self, id: &str, now: Instant) -> Option<String> {
        let hash = blake3::hash(id.as_bytes());
        self.sessions
            .iter()
            .find(|s| s.hash == hash && s.expires > now)
            .map(|s| s.csrf.clone())
    }

    /// Ends the session whose cookie value is `id`; true if there was one.
    pub fn end(&mut self, id: &str) -> bool {
        let hash = blake3::hash(id.as_bytes());
        let before = self.sessions.len();
        self.sessions.retain(|s| s.hash != hash);
        self.sessions.len() != before
    }

    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    pub fn codes(&self) -> usize {
        self.codes.len()
    }
}

/// The dashboard's share of the node state.
#[derive(Default)]
pub struct Dashboard {
    logins: Mutex<Logins>,
    assets: Mutex<HashMap<String, Arc<Asset>>>,
    /// Open `/v1/events` streams; the `stats` event runs only while there is one.
    pub(crate) sse_clients: AtomicUsize,
    /// Events the node adds to the stream for the dashboard.
    pub live: crate::live::Live,
    /// Largest upload accepted (the node's storage quota).
    pub upload_limit: u64,
}

impl Dashboard {
    /// Uploads through `POST /v1/files/upload` are limited to `upload_limit` bytes.
    pub fn new(upload_limit: u64) -> Self {
        Self {
            upload_limit,
            ..Default::default()
        }
    }

    fn logins(&self) -> std::sync::MutexGuard<'_, Logins> {
        self.logins.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The CSRF token of the session named by the request's cookie, if it is live.
    pub fn session_of(&self, headers: &HeaderMap) -> Option<(String, String)> {
        let id = cookie(headers, COOKIE)?;
        let csrf = self.logins().session(&id, Instant::now())?;
        Some((id, csrf))
    }

    /// How many `/v1/events` streams are open.
    pub fn sse_clients(&self) -> usize {
        self.sse_clients.load(Ordering::Relaxed)
    }

    fn asset(&self, path: &str) -> Option<Arc<Asset>> {
        if let Some(a) = self
            .assets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
        {
            return Some(a.clone());
        }
        let file = Assets::get(path)?;
        let asset = Arc::new(Asset::new(path, file.data.into_owned()));
        self.assets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.to_owned(), asset.clone());
        Some(asset)
    }
}

/// Counts an open event stream for as long as it lives.
pub(crate) struct SseClient(Arc<Node>);

impl SseClient {
    pub(crate) fn new(node: Arc<Node>) -> Self {
        node.dashboard.sse_clients.fetch_add(1, Ordering::Relaxed);
        node.dashboard.live.stream_opened();
        Self(node)
    }
}

impl Drop for SseClient {
    fn drop(&mut self) {
        self.0.dashboard.sse_clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One embedded file, ready to serve.
struct Asset {
    body: Vec<u8>,
    gzip: Option<Vec<u8>>,
    etag: String,
    content_type: &'static str,
}

impl Asset {
    fn new(path: &str, body: Vec<u8>) -> Self {
        let content_type = content_type(path);
        let compressible = content_type.starts_with("text/")
            || content_type.starts_with("application/javascript")
            || content_type.starts_with("application/json")
            || content_type.starts_with("image/svg");
        let gzip = (compressible && body.len() > 256)
            .then(|| gzip(&body))
            .filter(|g| g.len() < body.len());
        Self {
            etag: format!("\"{}\"", blake3::hash(&body).to_hex()),
            body,
            gzip,
            content_type,
        }
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).expect("writing to a Vec cannot fail");
    enc.finish().expect("writing to a Vec cannot fail")
}

fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    match ext.to_ascii_lowercase().as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "application/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "txt" | "md" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_owned())
}

fn under(path: &str, prefix: &str) -> bool {
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// A browser asking for a page: `GET /`, or a `GET` for HTML outside the API and the assets.
pub fn is_page_request(request: &Request) -> bool {
    let path = request.uri().path();
    if !matches!(*request.method(), Method::GET | Method::HEAD)
        || ["/v1", "/ui", "/login", "/logout", "/metrics"]
            .iter()
            .any(|p| under(path, p))
    {
        return false;
    }
    path == "/"
        || request
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html"))
}

/// Requests served without any authentication: assets, the login exchange, pages (which decide
/// themselves between the app and the login page).
pub fn is_public(request: &Request) -> bool {
    let path = request.uri().path();
    under(path, "/ui") || path == "/login" || is_page_request(request)
}

/// Why a cookie-authenticated request was refused, or `Ok` to let it through.
pub fn check_csrf(request: &Request, csrf: &str) -> Result<(), ApiError> {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return Ok(());
    }
    let headers = request.headers();
    let given = headers
        .get(CSRF_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !crate::api::constant_time_eq(given, csrf.as_bytes()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf",
            "missing or wrong X-Agora-CSRF header",
        )
        .with_hint(
            "a request made with the dashboard's session cookie must send the CSRF token from the page's <meta name=\"agora-csrf\">",
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if host.is_empty() || origin.as_bytes() != format!("http://{host}").as_bytes() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "csrf",
                "request from another origin",
            )
            .with_hint("the dashboard's API only answers pages it served itself"));
        }
    }
    Ok(())
}

/// Adds the dashboard's security headers to every response.
pub async fn security_headers(request: Request, next: axum::middleware::Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/ui/{*path}", get(asset))
        .route("/login", get(login))
        .route("/logout", post(logout))
        .route("/v1/dashboard/login", post(issue_code))
}

async fn asset(
    State(node): State<Arc<Node>>,
    axum::extract::Path(path): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(asset) = node.dashboard.asset(&path) else {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "no such asset",
        )
            .into_response();
    };
    let mut response = if etag_matches(&headers, &asset.etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        match asset.gzip.as_ref().filter(|_| accepts_gzip(&headers)) {
            Some(gz) => {
                ([(header::CONTENT_ENCODING, "gzip")], Body::from(gz.clone())).into_response()
            }
            None => Body::from(asset.body.clone()).into_response(),
        }
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if let Ok(v) = HeaderValue::from_str(&asset.etag) {
        h.insert(header::ETAG, v);
    }
    response
}

fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim())
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let name = parts.next().unwrap_or("");
            let q_zero = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !q_zero
        })
}

/// An embedded HTML file as text (an empty page if the build has none).
fn html_file(name: &str) -> String {
    Assets::get(name)
        .map(|f| String::from_utf8_lossy(&f.data).into_owned())
        .unwrap_or_default()
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// The login page, with `message` in place of `{{MESSAGE}}` (or right after `<body>` when the
/// page has no placeholder).
fn login_page(status: StatusCode, message: &str) -> Response {
    let page = html_file("login.html");
    let escaped = escape_html(message);
    let body = if page.contains(MESSAGE_PLACEHOLDER) {
        page.replace(MESSAGE_PLACEHOLDER, &escaped)
    } else if message.is_empty() {
        page
    } else {
        let p = format!("<p class=\"login-error\" role=\"alert\">{escaped}</p>");
        match page
            .find("<body")
            .and_then(|i| page[i..].find('>').map(|j| i + j + 1))
        {
            Some(at) => format!("{}{p}{}", &page[..at], &page[at..]),
            None => format!("{p}{page}"),
        }
    };
    html(status, body)
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// `GET /` and the client-side routes: the app with a session, the login page without.
pub async fn page(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    match node.dashboard.session_of(&headers) {
        Some((_, csrf)) => html(
            StatusCode::OK,
            html_file("index.html").replace(CSRF_PLACEHOLDER, &csrf),
        ),
        None => login_page(StatusCode::OK, ""),
    }
}

#[derive(Deserialize)]
struct LoginQuery {
    code: Option<String>,
}

/// `GET /login?code=C`: exchanges a one-time code for a session cookie.
async fn login(
    State(node): State<Arc<Node>>,
    query: Result<Query<LoginQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let code = query.ok().and_then(|Query(q)| q.code).unwrap_or_default();
    if code.is_empty() {
        return login_page(
            StatusCode::UNAUTHORIZED,
            "This link has no login code. Run `agora dashboard` on the node's machine for a new one.",
        );
    }
    let redeemed = node.dashboard.logins().redeem(&code, Instant::now());
    match redeemed {
        Ok(session) => {
            tracing::info!("dashboard login");
            (
                StatusCode::SEE_OTHER,
                [
                    (header::LOCATION, "/".to_owned()),
                    (
                        header::SET_COOKIE,
                        format!(
                            "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
                            session.id,
                            SESSION_TTL.as_secs()
                        ),
                    ),
                    (header::CACHE_CONTROL, "no-store".to_owned()),
                ],
            )
                .into_response()
        }
        Err(e) => login_page(
            StatusCode::UNAUTHORIZED,
            &format!("{e}. Run `agora dashboard` on the node's machine for a new one."),
        ),
    }
}

/// `POST /logout` (CSRF-checked by the API's authentication): ends the session.
async fn logout(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    let ended = cookie(&headers, COOKIE)
        .map(|id| node.dashboard.logins().end(&id))
        .unwrap_or(false);
    (
        [(
            header::SET_COOKIE,
            format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
        )],
        Json(serde_json::json!({ "logged_out": ended })),
    )
        .into_response()
}

/// `POST /v1/dashboard/login`.
#[derive(Serialize, Deserialize, Debug)]
pub struct LoginCode {
    pub url: String,
    pub code: String,
    pub expires_in_s: u64,
}

async fn issue_code(State(node): State<Arc<Node>>, headers: HeaderMap) -> Json<LoginCode> {
    let code = node.dashboard.logins().issue(Instant::now());
    // The address the client reached the API at; the listening address when the Host header is
    // missing or odd.
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| node.api_addr.to_string());
    Json(LoginCode {
        url: format!("http://{host}/login?code={code}"),
        code,
        expires_in_s: CODE_TTL.as_secs(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_logs_in_once() {
        let mut l = Logins::default();
        let now = Instant::now();
        let code = l.issue(now);
        assert_eq!(code.len(), 2 * SECRET_BYTES);
        let s = l.redeem(&code, now + Duration::from_secs(1)).unwrap();
        assert_eq!(l.session(&s.id, now).as_deref(), Some(s.csrf.as_str()));
        assert_eq!(l.redeem(&code, now).unwrap_err(), CodeError::Unknown);
        assert!(l.session("nope", now).is_none());
    }

    #[test]
    fn codes_expire() {
        let mut l = Logins::default();
        let now = Instant::now();
        let code = l.issue(now);
        assert_eq!(
            l.redeem(&code, now + CODE_TTL).unwrap_err(),
            CodeError::Expired
        );
        // An expired code is used up too.
        assert_eq!(l.redeem(&code, now).unwrap_err(), CodeError::Unknown);
        let code = l.issue(now);
        assert!(
            l.redeem(&code, now + CODE_TTL - Duration::from_secs(1))
                .is_ok()
        );
    }

    #[test]
    fn at_most_max_codes_outstanding() {
        let mut l = Logins::default();
        let now = Instant::now();
        let first = l.issue(now);
        let rest: Vec<_> = (0..MAX_CODES).map(|_| l.issue(now)).collect();
        assert_eq!(l.codes(), MAX_CODES);
        assert_eq!(l.redeem(&first, now).unwrap_err(), CodeError::Unknown);
        assert!(l.redeem(&rest[0], now).is_ok());
    }

    #[test]
    fn sessions_are_capped_and_expire() {
        let mut l = Logins::default();
        let now = Instant::now();
        let sessions: Vec<_> = (0..MAX_SESSIONS + 1)
            .map(|_| {
                let code = l.issue(now);
                l.redeem(&code, now).unwrap()
            })
            .collect();
        assert_eq!(l.sessions(), MAX_SESSIONS);
        assert!(l.session(&sessions[0].id, now).is_none(), "oldest dropped");
        assert!(l.session(&sessions[1].id, now).is_some());
        let last = &sessions[MAX_SESSIONS];
        assert!(l.session(&last.id, now + SESSION_TTL).is_none(), "expired");
        assert!(l.end(&last.id));
        assert!(!l.end(&last.id));
        assert!(l.session(&last.id, now).is_none());
    }

    #[test]
    fn cookie_parsing() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; agora_session=abc ; b=2"),
        );
        assert_eq!(cookie(&h, COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
    }

    #[test]
    fn gzip_negotiation_and_etags() {
        let mut h = HeaderMap::new();
        assert!(!accepts_gzip(&h));
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip, deflate, br"),
        );
        assert!(accepts_gzip(&h));
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip;q=0, br"),
        );
        assert!(!accepts_gzip(&h));
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("W/\"x\", \"y\""),
        );
        assert!(etag_matches(&h, "\"y\""));
        assert!(etag_matches(&h, "\"x\""));
        assert!(!etag_matches(&h, "\"z\""));
    }

    #[test]
    fn login_message_is_escaped() {
        assert_eq!(
            escape_html("<a href='x'>&"),
            "&lt;a href=&#39;x&#39;&gt;&amp;"
        );
    }
}
