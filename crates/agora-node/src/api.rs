//! The HTTP API (axum). See the crate docs for the routes.

use std::{convert::Infallible, sync::Arc, time::Duration};

use agora_net::{Multiaddr, PeerId};
use axum::{
    Json, Router,
    extract::{Path, Request, State, rejection::JsonRejection},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{
        IntoResponse, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
    routing::{get, post},
};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio_stream::wrappers::{BroadcastStream, errors::BroadcastStreamRecvError};

use crate::Node;

/// How long `POST /v1/connect` waits for a dial or DHT lookup.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(45);
/// Largest request body accepted.
pub const MAX_BODY: usize = 256 * 1024;

/// An API error: status code plus a JSON body `{"error": {"code", "message", "hint"?}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub hint: Option<String>,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                hint: self.hint,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<agora_net::Error> for ApiError {
    fn from(e: agora_net::Error) -> Self {
        use agora_net::Error as E;
        match &e {
            E::PeerNotFound(_) => Self::new(StatusCode::NOT_FOUND, "peer_not_found", e.to_string())
                .with_hint(
                    "the peer is not reachable through the DHT; connect by multiaddr instead",
                ),
            E::Dial(_) => Self::new(StatusCode::BAD_GATEWAY, "dial_failed", e.to_string()),
            E::InvalidAddr { .. } => Self::bad_request(e.to_string()),
            E::Stopped => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                e.to_string(),
            ),
            E::Request(_) | E::UnknownProtocol(_) | E::Gossip(_) | E::Dht(_) => {
                Self::new(StatusCode::BAD_GATEWAY, "network_error", e.to_string())
            }
            E::Refused(_) => Self::new(StatusCode::BAD_GATEWAY, "refused_by_peer", e.to_string())
                .with_hint("the peer's admission budget refused the request; try again later"),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request bodies are limited to {MAX_BODY} bytes"),
            );
        }
        Self::bad_request(format!("invalid JSON body: {}", r.body_text()))
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/v1/id", get(id))
        .route("/v1/peers", get(peers))
        .route("/v1/peers/{peer}", get(peer))
        .route("/v1/connect", post(connect))
        .route("/v1/disconnect", post(disconnect))
        .route("/v1/status", get(status))
        .route("/v1/events", get(events))
        .route("/metrics", get(metrics))
        .route("/v1/files", get(files_list))
        .route("/v1/files/page", get(files_page))
        .route("/v1/files/share", post(files_share))
        .route(
            "/v1/files/upload",
            post(files_upload).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/v1/jobs", get(jobs))
        .route("/v1/files/get", post(files_get))
        .route("/v1/files/unshare", post(files_unshare))
        .route("/v1/files/pin", post(files_pin))
        .route("/v1/jobs/{id}", get(job))
        .route("/v1/search", get(files_search))
        .merge(crate::chat_api::routes())
        .merge(crate::ledger_api::routes())
        .merge(crate::grid_api::routes())
        .merge(crate::docs_api::routes())
        .merge(crate::dashboard::routes())
        .fallback(fallback)
        .layer(middleware::from_fn_with_state(node.clone(), authenticate))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(crate::dashboard::security_headers))
        .with_state(node)
}

/// Every route needs `Authorization: Bearer <token>` or the dashboard's session cookie (with
/// its CSRF token on anything but GET and HEAD), except the dashboard's own pages and assets.
async fn authenticate(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    node.metrics.api_requests.inc();
    if crate::dashboard::is_public(&request) {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let session = match given {
        None => node.dashboard.session_of(request.headers()),
        Some(_) => None,
    };
    match (given, session) {
        (Some(token), _) if constant_time_eq(token.as_bytes(), node.token.as_bytes()) => {
            next.run(request).await
        }
        (None, Some((_, csrf))) => match crate::dashboard::check_csrf(&request, &csrf) {
            Ok(()) => next.run(request).await,
            Err(e) => {
                node.metrics.api_auth_failures.inc();
                e.into_response()
            }
        },
        _ => {
            node.metrics.api_auth_failures.inc();
            let token_file = node.data_dir.file(agora_store::TOKEN_FILE);
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong API token",
            )
            .with_hint(format!(
                "send `Authorization: Bearer <token>` with the token from {}",
                token_file.display()
            ))
            .into_response()
        }
    }
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Pages of the dashboard (a browser asking for HTML), else 404.
async fn fallback(State(node): State<Arc<Node>>, request: Request) -> Response {
    if crate::dashboard::is_page_request(&request) {
        return crate::dashboard::page(State(node), request.headers().clone()).await;
    }
    not_found().await.into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route").with_hint(
        "routes live under /v1: id, peers, connect, disconnect, status, events, files, jobs, search, chat/…, ledger/…, grid/…",
    )
}

pub(crate) fn parse_peer(s: &str) -> Result<PeerId, ApiError> {
    s.parse()
        .map_err(|e| ApiError::bad_request(format!("invalid peer id {s:?}: {e}")))
}

async fn id(State(node): State<Arc<Node>>) -> ApiResult<agora_net::NodeInfo> {
    Ok(Json(node.net.local_info().await?))
}

async fn peers(State(node): State<Arc<Node>>) -> ApiResult<Vec<agora_net::PeerInfo>> {
    Ok(Json(node.net.peers().await?))
}

async fn peer(
    State(node): State<Arc<Node>>,
    Path(peer): Path<String>,
) -> ApiResult<agora_net::PeerInfo> {
    let peer = parse_peer(&peer)?.to_string();
    node.net
        .peers()
        .await?
        .into_iter()
        .find(|p| p.peer_id == peer)
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "peer_not_connected",
                format!("peer {peer} is not connected"),
            )
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectRequest {
    /// A multiaddr (`/ip4/…/tcp/…[/p2p/…]`) or a bare peer id.
    pub target: String,
}

async fn connect(
    State(node): State<Arc<Node>>,
    body: Result<Json<ConnectRequest>, JsonRejection>,
) -> ApiResult<agora_net::ConnectOutcome> {
    let Json(ConnectRequest { target }) = body?;
    let target = target.trim();
    let work = async {
        if target.starts_with('/') {
            let addr: Multiaddr = target.parse().map_err(|e| {
                ApiError::bad_request(format!("invalid multiaddr {target:?}: {e}"))
                    .with_hint("expected e.g. /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...")
            })?;
            let peer = node.net.dial(addr).await?;
            Ok(agora_net::ConnectOutcome {
                peer_id: peer.to_string(),
                via: "address".into(),
                already_connected: false,
            })
        } else {
            let peer = parse_peer(target)
                .map_err(|e| e.with_hint("give a multiaddr starting with / or a peer id"))?;
            Ok(node.net.connect(peer).await?)
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, work).await {
        Ok(result) => result.map(Json),
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!("could not connect within {CONNECT_TIMEOUT:?}"),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisconnectRequest {
    pub peer: String,
}

#[derive(Serialize)]
struct Disconnected {
    peer_id: String,
    disconnected: bool,
}

async fn disconnect(
    State(node): State<Arc<Node>>,
    body: Result<Json<DisconnectRequest>, JsonRejection>,
) -> Result<Json<Disconnected>, ApiError> {
    let Json(DisconnectRequest { peer }) = body?;
    let peer = parse_peer(peer.trim())?;
    if node.net.disconnect(peer).await? {
        Ok(Json(Disconnected {
            peer_id: peer.to_string(),
            disconnected: true,
        }))
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "peer_not_connected",
            format!("peer {peer} is not connected"),
        ))
    }
}

/// `GET /v1/status`.
#[derive(Serialize, Deserialize, Debug)]
pub struct Status {
    pub peer_id: String,
    pub agent_version: String,
    pub uptime_secs: u64,
    pub connected_peers: usize,
    pub connections: usize,
    pub routing_table_size: usize,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub storage_bytes: u64,
    pub gossip_topics: usize,
    pub nat_status: agora_net::NatState,
    pub data_dir: String,
}

async fn status(State(node): State<Arc<Node>>) -> ApiResult<Status> {
    let stats = node.net.stats().await?;
    let info = node.net.local_info().await?;
    let dir = node.data_dir.clone();
    let storage_bytes = tokio::task::spawn_blocking(move || dir.disk_usage())
        .await
        .unwrap_or(0);
    Ok(Json(Status {
        peer_id: info.peer_id,
        agent_version: info.agent_version,
        uptime_secs: node.started.elapsed().as_secs(),
        connected_peers: stats.connected_peers,
        connections: stats.connections,
        routing_table_size: stats.routing_table_size,
        bytes_in: stats.bytes_in,
        bytes_out: stats.bytes_out,
        storage_bytes,
        gossip_topics: stats.gossip_topics,
        nat_status: info.nat_status,
        data_dir: node.data_dir.path().display().to_string(),
    }))
}

async fn events(
    State(node): State<Arc<Node>>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let shutdown = node.shutdown.clone();
    // Messaging events are named `chat.<event>` (`chat.message_received`, `chat.presence`, …).
    let chat = BroadcastStream::new(node.chat.events()).filter_map(|item| {
        futures::future::ready(item.ok().map(|event| {
            let json = serde_json::to_value(&event).unwrap_or_default();
            let kind = format!("chat.{}", json["event"].as_str().unwrap_or("event"));
            Ok(SseEvent::default().event(kind).data(json.to_string()))
        }))
    });
    // The node's own: `stats`, `files.*`, `ledger.*` (see `live`).
    let live = BroadcastStream::new(node.dashboard.live.subscribe()).filter_map(|item| {
        futures::future::ready(item.ok().map(|event| {
            Ok(SseEvent::default()
                .event(event.name)
                .data(event.data.to_string()))
        }))
    });
    let net = BroadcastStream::new(node.net.events()).map(|item| {
        Ok(match item {
            Ok(event) => {
                let json = serde_json::to_value(&event).unwrap_or_default();
                let kind = json["type"].as_str().unwrap_or("event").to_owned();
                SseEvent::default().event(kind).data(json.to_string())
            }
            Err(BroadcastStreamRecvError::Lagged(n)) => SseEvent::default()
                .event("lagged")
                .data(format!("{{\"skipped\":{n}}}")),
        })
    });
    // Grid events are named `grid.<event>` (`grid.unit_decided`, `grid.job_finished`, …).
    let grid = BroadcastStream::new(node.grid.events()).filter_map(|item| {
        futures::future::ready(item.ok().map(|event| {
            let json = serde_json::to_value(&event).unwrap_or_default();
            let kind = format!("grid.{}", json["event"].as_str().unwrap_or("event"));
            Ok(SseEvent::default().event(kind).data(json.to_string()))
        }))
    });
    // Groupware events are named `docs.<event>` (`docs.doc_changed`, `docs.task_assigned`, …).
    let docs = BroadcastStream::new(node.docs.events()).filter_map(|item| {
        futures::future::ready(item.ok().map(|event| {
            let json = serde_json::to_value(&event).unwrap_or_default();
            let kind = format!("docs.{}", json["event"].as_str().unwrap_or("event"));
            Ok(SseEvent::default().event(kind).data(json.to_string()))
        }))
    });
    // Counted while open: the `stats` event runs only while someone listens.
    let client = crate::dashboard::SseClient::new(node.clone());
    let stream = futures::stream::select_all([
        net.boxed(),
        grid.boxed(),
        docs.boxed(),
        chat.boxed(),
        live.boxed(),
    ])
    .take_until(async move { shutdown.cancelled().await })
    .map(move |event| {
        let _open = &client;
        event
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn metrics(State(node): State<Arc<Node>>) -> Result<Response, ApiError> {
    let stats = node.net.stats().await?;
    let dir = node.data_dir.clone();
    let storage = tokio::task::spawn_blocking(move || dir.disk_usage())
        .await
        .unwrap_or(0);
    let ledger = node.ledger.as_ref().map(|l| l.status());
    let consensus = node
        .ledger
        .as_ref()
        .map(|l| l.consensus_metrics())
        .unwrap_or_default();
    let body = node.metrics.encode(
        &stats,
        node.started.elapsed().as_secs(),
        storage,
        ledger.as_ref(),
        &consensus,
        &format!(
            "{}{}",
            node.grid.metrics_text(),
            docs_metrics(&node.docs.stats())
        ),
    );
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

impl From<agora_files::FilesError> for ApiError {
    fn from(e: agora_files::FilesError) -> Self {
        use agora_files::FilesError as E;
        match &e {
            E::BadTarget(_) => Self::bad_request(e.to_string()),
            E::NotHeld(_) => Self::new(StatusCode::NOT_FOUND, "not_held", e.to_string()),
            E::Store(_) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "store_error",
                e.to_string(),
            ),
        }
    }
}

#[derive(Serialize)]
struct JobStarted {
    job: u64,
}

fn absolute(path: &str, what: &str) -> Result<std::path::PathBuf, ApiError> {
    let p = std::path::PathBuf::from(path);
    if !p.is_absolute() {
        return Err(ApiError::bad_request(format!(
            "{what} must be an absolute path, got {path:?}"
        )));
    }
    Ok(p)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareRequest {
    pub path: String,
    #[serde(default)]
    pub pin: bool,
    #[serde(default)]
    pub copy: bool,
}

async fn files_share(
    State(node): State<Arc<Node>>,
    body: Result<Json<ShareRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<JobStarted>), ApiError> {
    let Json(req) = body?;
    let path = absolute(&req.path, "path")?;
    if std::fs::symlink_metadata(&path).is_err() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "path_not_found",
            format!("{} does not exist", path.display()),
        ));
    }
    let job = node.files.share(path, req.pin, req.copy);
    crate::live::watch_job(&node, job.id);
    Ok((StatusCode::ACCEPTED, Json(JobStarted { job: job.id })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetRequest {
    pub target: String,
    pub out: String,
}

async fn files_get(
    State(node): State<Arc<Node>>,
    body: Result<Json<GetRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<JobStarted>), ApiError> {
    let Json(req) = body?;
    let out = absolute(&req.out, "out")?;
    let job = node.files.get(&req.target, out)?;
    crate::live::watch_job(&node, job.id);
    Ok((StatusCode::ACCEPTED, Json(JobStarted { job: job.id })))
}

async fn job(
    State(node): State<Arc<Node>>,
    Path(id): Path<u64>,
) -> Result<Json<agora_files::JobView>, ApiError> {
    node.files.job(id).map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "job_not_found",
            format!("no job {id}"),
        )
    })
}

/// `GET /v1/jobs`: the share, upload and download jobs started through the API (the newest
/// [`RECENT_JOBS`](crate::live::RECENT_JOBS)), newest first.
async fn jobs(State(node): State<Arc<Node>>) -> Json<Vec<agora_files::JobView>> {
    Json(
        node.dashboard
            .live
            .jobs()
            .into_iter()
            .filter_map(|id| node.files.job(id))
            .collect(),
    )
}

/// `?offset=N&limit=M&q=TEXT&kind=own|pinned|cached` of `GET /v1/files` and `/v1/files/page`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FilesQuery {
    pub offset: Option<usize>,
    pub limit: Option<usize>,
    /// Words that must all occur in the name (case-insensitive), or a hash prefix.
    pub q: Option<String>,
    pub kind: Option<String>,
}

impl FilesQuery {
    fn is_empty(&self) -> bool {
        self.offset.is_none() && self.limit.is_none() && self.q.is_none() && self.kind.is_none()
    }
}

/// Largest page of `GET /v1/files/page`.
pub const MAX_FILES_PAGE: usize = 1_000;
/// Page size when `limit` is not given.
pub const DEFAULT_FILES_PAGE: usize = 100;

/// One page of held files: the total that match, and the slice asked for.
#[derive(Serialize)]
pub struct FilesPage {
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
    pub items: Vec<FileItem>,
}

#[derive(Serialize)]
pub struct FileItem {
    #[serde(flatten)]
    pub file: agora_files::service::FileView,
    /// For own shares and pins: a ticket naming this node as a provider.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
}

async fn held_files(node: &Arc<Node>) -> Result<Vec<agora_files::service::FileView>, ApiError> {
    let files = node.clone();
    tokio::task::spawn_blocking(move || files.files.list())
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(ApiError::from)
}

/// `GET /v1/files`: every held file as an array; with any of `offset`, `limit`, `q`, `kind`
/// the page object of `/v1/files/page` instead.
async fn files_list(
    State(node): State<Arc<Node>>,
    query: Result<axum::extract::Query<FilesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if query.is_empty() {
        return Ok(Json(held_files(&node).await?).into_response());
    }
    Ok(Json(files_page_of(&node, query).await?).into_response())
}

/// `GET /v1/files/page?offset=N&limit=M&q=TEXT&kind=K`.
async fn files_page(
    State(node): State<Arc<Node>>,
    query: Result<axum::extract::Query<FilesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<FilesPage>, ApiError> {
    let axum::extract::Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    Ok(Json(files_page_of(&node, query).await?))
}

async fn files_page_of(node: &Arc<Node>, query: FilesQuery) -> Result<FilesPage, ApiError> {
    let kind = match query.kind.as_deref().map(str::trim) {
        None | Some("") | Some("all") => None,
        Some(k @ ("own" | "pinned" | "cached")) => Some(k.to_owned()),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "kind is own, pinned, cached or all, not {other:?}"
            )));
        }
    };
    let words: Vec<String> = query
        .q
        .as_deref()
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_lowercase)
        .collect();
    let offset = query.offset.unwrap_or(0);
    let limit = query
        .limit
        .unwrap_or(DEFAULT_FILES_PAGE)
        .clamp(1, MAX_FILES_PAGE);
    let all = held_files(node).await?;
    let matching: Vec<_> = all
        .into_iter()
        .filter(|f| {
            kind.as_deref().is_none_or(|k| {
                serde_json::to_value(f.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    == Some(k.to_owned())
            })
        })
        .filter(|f| {
            let name = f.name.to_lowercase();
            words
                .iter()
                .all(|w| name.contains(w.as_str()) || f.hash.starts_with(w.as_str()))
        })
        .collect();
    let total = matching.len();
    let page: Vec<_> = matching.into_iter().skip(offset).take(limit).collect();
    let needs_ticket = page
        .iter()
        .any(|f| f.kind != agora_files::store::Kind::Cached);
    let addrs: Vec<Multiaddr> = if needs_ticket {
        node.files.ticket_addrs().await
    } else {
        Vec::new()
    };
    let peer = node.net.local_peer_id();
    let items = page
        .into_iter()
        .map(|file| {
            let ticket = (file.kind != agora_files::store::Kind::Cached)
                .then(|| agora_files::Hash::from_hex(&file.hash).ok())
                .flatten()
                .map(|hash| {
                    agora_files::ticket::Ticket {
                        hash,
                        peer,
                        addrs: addrs.clone(),
                    }
                    .encode()
                });
            FileItem { file, ticket }
        })
        .collect();
    Ok(FilesPage {
        total,
        offset,
        limit,
        items,
    })
}

/// `?name=FILE&pin=BOOL` of `POST /v1/files/upload`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    pub name: String,
    #[serde(default)]
    pub pin: bool,
}

/// Where uploads are kept, under the data directory (each in a directory of its own so that
/// the file keeps its name).
pub const UPLOAD_DIR: &str = "uploads";

/// A file name as the browser gave it, without any directory part.
fn upload_name(name: &str) -> Result<String, ApiError> {
    let name = name.rsplit(['/', '\\']).next().unwrap_or("").trim();
    if name.is_empty() || name == "." || name == ".." || name.contains('\0') || name.len() > 255 {
        return Err(
            ApiError::bad_request(format!("{name:?} is not a file name"))
                .with_hint("pass ?name=FILE with the file's name (no directory)"),
        );
    }
    Ok(name.to_owned())
}

/// `POST /v1/files/upload?name=FILE`: the raw body is written to a file under the data
/// directory (at most the node's storage quota), then shared as `/v1/files/share` shares a
/// path: `202 {"job"}`.
async fn files_upload(
    State(node): State<Arc<Node>>,
    query: Result<axum::extract::Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<JobStarted>), ApiError> {
    use tokio::io::AsyncWriteExt;
    let axum::extract::Query(query) = query
        .map_err(|e| ApiError::bad_request(format!("expected ?name=FILE: {}", e.body_text())))?;
    let name = upload_name(&query.name)?;
    let limit = node.dashboard.upload_limit;
    let dir = node
        .data_dir
        .path()
        .join(UPLOAD_DIR)
        .join(hex::encode(rand::random::<[u8; 8]>()));
    let io_error = |e: std::io::Error| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "io_error",
            format!("cannot store the upload: {e}"),
        )
    };
    tokio::fs::create_dir_all(&dir).await.map_err(io_error)?;
    // Removes the upload's directory if the upload fails or the client goes away mid-way
    // (the handler is then dropped at an await).
    struct Cleanup(Option<std::path::PathBuf>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Some(dir) = self.0.take() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
    let mut cleanup = Cleanup(Some(dir.clone()));
    let path = dir.join(&name);
    let partial = dir.join(format!(".{name}.part"));
    let written = async {
        let mut file = tokio::fs::File::create(&partial).await.map_err(io_error)?;
        let mut stream = body.into_data_stream();
        let mut size: u64 = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::bad_request(format!("the upload was interrupted: {e}"))
            })?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("uploads are limited to the storage quota, {limit} bytes"),
                )
                .with_hint("share a bigger file by its path on the node (`agora share PATH`), or raise --storage-quota"));
            }
            file.write_all(&chunk).await.map_err(io_error)?;
        }
        file.sync_all().await.map_err(io_error)?;
        drop(file);
        tokio::fs::rename(&partial, &path).await.map_err(io_error)?;
        Ok(size)
    }
    .await;
    written?;
    cleanup.0 = None;
    let job = node.files.share(path, query.pin, false);
    crate::live::watch_job(&node, job.id);
    Ok((StatusCode::ACCEPTED, Json(JobStarted { job: job.id })))
}

#[derive(Deserialize)]
pub struct SearchQuery {
    pub q: String,
}

async fn files_search(
    State(node): State<Arc<Node>>,
    query: Result<axum::extract::Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<agora_files::search::Hit>>, ApiError> {
    let axum::extract::Query(SearchQuery { q }) =
        query.map_err(|e| ApiError::bad_request(format!("expected ?q=WORDS: {e}")))?;
    Ok(Json(node.files.search(&q).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashRequest {
    pub hash: String,
}

async fn files_unshare(
    State(node): State<Arc<Node>>,
    body: Result<Json<HashRequest>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(req) = body?;
    let meta = node.files.unshare(&req.hash).await?;
    node.dashboard.live.emit(
        "files.changed",
        serde_json::json!({ "change": "unshared", "hash": req.hash.trim() }),
    );
    Ok(Json(
        serde_json::json!({ "hash": req.hash.trim(), "name": meta.name, "unshared": true }),
    ))
}

async fn files_pin(
    State(node): State<Arc<Node>>,
    body: Result<Json<HashRequest>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(req) = body?;
    let meta = node.files.pin(&req.hash)?;
    node.dashboard.live.emit(
        "files.changed",
        serde_json::json!({ "change": "pinned", "hash": req.hash.trim() }),
    );
    Ok(Json(
        serde_json::json!({ "hash": req.hash.trim(), "name": meta.name, "kind": meta.kind }),
    ))
}

/// Groupware gauges and counters in the Prometheus text format.
fn docs_metrics(s: &agora_docs::service::DocsStats) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        out.push_str(&format!(
            "# HELP agora_docs_{name} {help}\n# TYPE agora_docs_{name} {kind}\nagora_docs_{name} {value}\n"
        ));
    };
    metric(
        "spaces",
        "gauge",
        "Spaces this node has joined",
        s.spaces as u64,
    );
    metric(
        "documents",
        "gauge",
        "Documents in joined spaces",
        s.docs as u64,
    );
    metric(
        "changes",
        "gauge",
        "Changes held, all documents",
        s.changes as u64,
    );
    metric(
        "invites",
        "gauge",
        "Invites waiting for `agora space join`",
        s.invites as u64,
    );
    metric(
        "changes_received_total",
        "counter",
        "Changes received from peers and applied",
        s.changes_received,
    );
    metric(
        "changes_refused_total",
        "counter",
        "Changes received and refused (signature, role, limits)",
        s.changes_refused,
    );
    metric(
        "sync_rounds_total",
        "counter",
        "Sync rounds this node started",
        s.sync_rounds,
    );
    metric(
        "sync_sent_bytes_total",
        "counter",
        "Bytes of sync requests sent",
        s.bytes_sent,
    );
    metric(
        "sync_received_bytes_total",
        "counter",
        "Bytes of sync responses received",
        s.bytes_received,
    );
    metric(
        "held_envelopes",
        "gauge",
        "Encrypted envelopes held for other spaces' members",
        s.held_envelopes as u64,
    );
    metric(
        "held_bytes",
        "gauge",
        "Bytes of envelopes held for others",
        s.held_bytes,
    );
    metric(
        "unreadable_envelopes",
        "gauge",
        "Envelopes from holders that no key of this node opens",
        s.unreadable as u64,
    );
    metric(
        "snapshots_written_total",
        "counter",
        "Document snapshots written (each replaces the changes stored one by one before it)",
        s.snapshots_written,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_errors_map_to_statuses() {
        let peer = PeerId::random();
        let cases = [
            (agora_net::Error::PeerNotFound(peer), StatusCode::NOT_FOUND),
            (agora_net::Error::Dial("x".into()), StatusCode::BAD_GATEWAY),
            (agora_net::Error::Stopped, StatusCode::SERVICE_UNAVAILABLE),
            (
                agora_net::Error::InvalidAddr {
                    addr: "x".into(),
                    reason: "y".into(),
                },
                StatusCode::BAD_REQUEST,
            ),
        ];
        for (err, status) in cases {
            assert_eq!(ApiError::from(err).status, status);
        }
    }

    #[tokio::test]
    async fn error_body_has_code_message_and_hint() {
        let response = ApiError::new(StatusCode::NOT_FOUND, "peer_not_found", "gone")
            .with_hint("try again")
            .into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let bytes = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let body: ErrorBody = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body.error.code, "peer_not_found");
        assert_eq!(body.error.message, "gone");
        assert_eq!(body.error.hint.as_deref(), Some("try again"));
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
