//! Grid routes under `/v1/grid`: submit a job, list and inspect jobs, export results, cancel,
//! known workers, and this node's worker status.

use std::{path::PathBuf, sync::Arc, time::Duration};

use agora_grid::{GridError, service::RunOptions};
use axum::{
    Json, Router,
    extract::{Path, Query, State, rejection::JsonRejection},
    http::StatusCode,
    routing::{get, post},
};
use serde::Deserialize;

use crate::{Node, api::ApiError};

impl From<GridError> for ApiError {
    fn from(e: GridError) -> Self {
        let (status, code) = match &e {
            GridError::BadJob(_) | GridError::Program(_) | GridError::Io { .. } => {
                (StatusCode::BAD_REQUEST, "bad_job")
            }
            GridError::NoSuchJob(_) => (StatusCode::NOT_FOUND, "no_such_job"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "grid_error"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/v1/grid/run", post(run))
        .route("/v1/grid/jobs", get(jobs))
        .route("/v1/grid/jobs/{id}", get(job))
        .route("/v1/grid/jobs/{id}/results", post(results))
        .route("/v1/grid/jobs/{id}/cancel", post(cancel))
        .route("/v1/grid/workers", get(workers))
        .route("/v1/grid/worker", get(worker))
}

fn json<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(v)| v)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunBody {
    program: PathBuf,
    inputs: Vec<PathBuf>,
    replicas: Option<u8>,
    quorum: Option<u8>,
    max_replicas: Option<u8>,
    fuel: Option<u64>,
    memory: Option<u64>,
    /// Seconds a worker has per unit.
    deadline_secs: Option<u64>,
    pay: Option<u64>,
}

async fn run(
    State(node): State<Arc<Node>>,
    body: Result<Json<RunBody>, JsonRejection>,
) -> Result<Json<agora_grid::service::JobView>, ApiError> {
    let b = json(body)?;
    let mut opts = RunOptions {
        program: b.program,
        inputs: b.inputs,
        ..Default::default()
    };
    if let Some(r) = b.replicas {
        opts.replicas = r;
        // Two agreeing replicas by default, never more than there are.
        opts.quorum = opts.quorum.min(r);
        opts.max_replicas = opts.max_replicas.max(r);
    }
    if let Some(q) = b.quorum {
        opts.quorum = q;
    }
    if let Some(m) = b.max_replicas {
        opts.max_replicas = m;
    }
    if let Some(f) = b.fuel {
        opts.fuel = f;
    }
    if let Some(m) = b.memory {
        opts.memory = m;
    }
    if let Some(d) = b.deadline_secs {
        opts.lease = Duration::from_secs(d.max(1));
    }
    if let Some(p) = b.pay {
        opts.pay = p;
    }
    for p in std::iter::once(&opts.program).chain(&opts.inputs) {
        if !p.is_absolute() {
            return Err(ApiError::bad_request(format!(
                "{} is not an absolute path (the node resolves paths on its own machine)",
                p.display()
            )));
        }
    }
    Ok(Json(node.grid.submit(opts).await?))
}

async fn jobs(State(node): State<Arc<Node>>) -> Json<Vec<agora_grid::service::JobView>> {
    Json(node.grid.jobs())
}

#[derive(Deserialize)]
struct JobQuery {
    /// Long-poll: wait up to this many seconds for a change first.
    wait: Option<u64>,
}

async fn job(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    Query(q): Query<JobQuery>,
) -> Result<Json<agora_grid::service::JobView>, ApiError> {
    if let Some(w) = q.wait {
        // Only while the job runs; a change just before the wait is not missed.
        node.grid
            .wait_job(&id, Duration::from_secs(w.min(60)))
            .await;
    }
    Ok(Json(node.grid.job(&id, true)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResultsBody {
    out: PathBuf,
}

async fn results(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    body: Result<Json<ResultsBody>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let b = json(body)?;
    if !b.out.is_absolute() {
        return Err(ApiError::bad_request("`out` must be an absolute path"));
    }
    let written = node.grid.export_results(&id, b.out).await?;
    Ok(Json(serde_json::json!({
        "written": written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
    })))
}

async fn cancel(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> Result<Json<agora_grid::service::JobView>, ApiError> {
    Ok(Json(node.grid.cancel(&id).await?))
}

async fn workers(State(node): State<Arc<Node>>) -> Json<Vec<agora_grid::service::WorkerView>> {
    Json(node.grid.workers())
}

async fn worker(State(node): State<Arc<Node>>) -> Json<agora_grid::service::WorkerStatus> {
    let mut status = node.grid.worker_status();
    let grid = node.grid.clone();
    status.earned = tokio::task::spawn_blocking(move || grid.earned())
        .await
        .ok()
        .flatten();
    Json(status)
}
