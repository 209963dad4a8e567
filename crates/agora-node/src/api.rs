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
        .route("/v1/files/share", post(files_share))
        .route("/v1/files/get", post(files_get))
        .route("/v1/files/unshare", post(files_unshare))
        .route("/v1/files/pin", post(files_pin))
        .route("/v1/jobs/{id}", get(job))
        .route("/v1/search", get(files_search))
        .merge(crate::chat_api::routes())
        .merge(crate::ledger_api::routes())
        .merge(crate::grid_api::routes())
        .merge(crate::docs_api::routes())
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(node.clone(), authenticate))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(node)
}

/// Every route needs `Authorization: Bearer <token>`.
async fn authenticate(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    node.metrics.api_requests.inc();
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(token) if constant_time_eq(token.as_bytes(), node.token.as_bytes()) => {
            next.run(request).await
        }
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

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
    let stream = futures::stream::select(futures::stream::select(net, grid), docs)
        .take_until(async move { shutdown.cancelled().await });
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

async fn files_list(
    State(node): State<Arc<Node>>,
) -> Result<Json<Vec<agora_files::service::FileView>>, ApiError> {
    let files = node.clone();
    let list = tokio::task::spawn_blocking(move || files.files.list())
        .await
        .map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })??;
    Ok(Json(list))
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
