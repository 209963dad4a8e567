//! Groupware routes: spaces under `/v1/spaces`, documents under `/v1/docs`, tasks across
//! spaces under `/v1/tasks`.

use std::sync::Arc;

use agora_docs::{
    Kind, Role, TaskState, TaskUpdate,
    service::{DocsError, Edit, doc_id, space_id},
};
use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, Path, Query, State, rejection::JsonRejection},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use libp2p::PeerId;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{Node, api::ApiError};

/// Request bodies of document routes may carry a whole note.
pub const MAX_DOC_BODY: usize = 2 * 1024 * 1024;

impl From<DocsError> for ApiError {
    fn from(e: DocsError) -> Self {
        use agora_docs::DocError as D;
        let (status, code) = match &e {
            DocsError::NoSpace(_) => (StatusCode::NOT_FOUND, "no_such_space"),
            DocsError::NoDoc(_) => (StatusCode::NOT_FOUND, "no_such_doc"),
            DocsError::NoInvite(_) => (StatusCode::NOT_FOUND, "no_such_invite"),
            DocsError::Denied(_) => (StatusCode::FORBIDDEN, "denied"),
            DocsError::Bad(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            DocsError::Doc(D::NotWriter { .. }) => (StatusCode::FORBIDDEN, "not_a_writer"),
            DocsError::Doc(D::NoTask(_)) => (StatusCode::NOT_FOUND, "no_such_task"),
            DocsError::Doc(D::NoPost(_)) => (StatusCode::NOT_FOUND, "no_such_post"),
            DocsError::Doc(D::DocTooBig { .. }) => (StatusCode::PAYLOAD_TOO_LARGE, "doc_too_big"),
            DocsError::Doc(D::TooLarge { .. }) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "change_too_large")
            }
            DocsError::Doc(_) => (StatusCode::BAD_REQUEST, "bad_edit"),
            DocsError::Op(_) => (StatusCode::BAD_REQUEST, "bad_membership_change"),
            DocsError::Db(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage_error"),
        };
        let hint = match &e {
            DocsError::Doc(D::NotWriter { .. }) => Some(
                "readers can read but not write; an admin can run `agora space role SPACE PEER editor`",
            ),
            _ => None,
        };
        let err = ApiError::new(status, code, e.to_string());
        match hint {
            Some(h) => err.with_hint(h),
            None => err,
        }
    }
}

pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/v1/spaces", get(spaces).post(create_space))
        .route("/v1/spaces/{space}", get(space))
        .route("/v1/spaces/{space}/invite", post(invite))
        .route("/v1/spaces/{space}/join", post(join))
        .route("/v1/spaces/{space}/remove", post(remove))
        .route("/v1/spaces/{space}/role", post(role))
        .route("/v1/spaces/{space}/leave", post(leave))
        .route("/v1/spaces/{space}/docs", get(docs).post(new_doc))
        .route("/v1/docs/{doc}", get(doc))
        .route("/v1/docs/{doc}/text", axum::routing::put(set_text))
        .route("/v1/docs/{doc}/append", post(append))
        .route("/v1/docs/{doc}/title", axum::routing::put(rename))
        .route("/v1/docs/{doc}/history", get(history))
        .route("/v1/docs/{doc}/export", get(export))
        .route("/v1/docs/{doc}/tasks", post(add_task))
        .route("/v1/docs/{doc}/tasks/{task}", post(update_task))
        .route("/v1/docs/{doc}/posts", post(add_post))
        .route("/v1/docs/{doc}/fields", axum::routing::put(set_fields))
        .route("/v1/docs/{doc}/attach", post(attach))
        .route("/v1/tasks", get(tasks))
        .layer(DefaultBodyLimit::max(MAX_DOC_BODY))
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(v)| v).map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("document request bodies are limited to {MAX_DOC_BODY} bytes"),
            )
        } else {
            ApiError::bad_request(format!("invalid JSON body: {}", r.body_text()))
        }
    })
}

fn peer(s: &str) -> Result<PeerId, ApiError> {
    s.parse()
        .map_err(|_| ApiError::bad_request(format!("{s:?} is not a peer id")))
}

fn parse_role(s: &str) -> Result<Role, ApiError> {
    match s {
        "admin" => Ok(Role::Admin),
        "editor" => Ok(Role::Editor),
        "reader" => Ok(Role::Reader),
        _ => Err(ApiError::bad_request(format!(
            "unknown role {s:?}: admin, editor or reader"
        ))),
    }
}

fn check_date(d: &str) -> Result<(), ApiError> {
    let ok = d.len() == 10
        && d.as_bytes()[4] == b'-'
        && d.as_bytes()[7] == b'-'
        && d.chars()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{d:?} is not a date (YYYY-MM-DD)"
        )))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameBody {
    name: String,
}

async fn create_space(
    State(node): State<Arc<Node>>,
    b: Result<Json<NameBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let b = body(b)?;
    Ok(Json(
        serde_json::to_value(node.docs.create_space(&b.name).await?).unwrap_or_default(),
    ))
}

async fn spaces(State(node): State<Arc<Node>>) -> Json<Value> {
    let (spaces, invites) = node.docs.spaces();
    Json(json!({ "spaces": spaces, "invites": invites }))
}

async fn space(
    State(node): State<Arc<Node>>,
    Path(s): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = space_id(&s)?;
    Ok(Json(
        serde_json::to_value(node.docs.space(&id)?).unwrap_or_default(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerRoleBody {
    peer: String,
    role: Option<String>,
}

async fn invite(
    State(node): State<Arc<Node>>,
    Path(s): Path<String>,
    b: Result<Json<PeerRoleBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = space_id(&s)?;
    let b = body(b)?;
    let p = peer(&b.peer)?;
    let role = parse_role(b.role.as_deref().unwrap_or("editor"))?;
    let delivered = node.docs.invite(&id, p, role).await?;
    Ok(Json(
        json!({ "space": s, "peer": b.peer, "role": role, "delivered": delivered }),
    ))
}

async fn join(
    State(node): State<Arc<Node>>,
    Path(s): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = space_id(&s)?;
    Ok(Json(
        serde_json::to_value(node.docs.join(&id).await?).unwrap_or_default(),
    ))
}

async fn remove(
    State(node): State<Arc<Node>>,
    Path(s): Path<String>,
    b: Result<Json<PeerRoleBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = space_id(&s)?;
    let b = body(b)?;
    node.docs.remove(&id, peer(&b.peer)?).await?;
    Ok(Json(json!({ "space": s, "peer": b.peer })))
}

async fn role(
    State(node): State<Arc<Node>>,
    Path(s): Path<String>,
    b: Result<Json<PeerRoleBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = space_id(&s)?;
    let b = body(b)?;
    let role = parse_role(
        b.role
            .as_deref()
            .ok_or_else(|| ApiError::bad_request("`role` is required"))?,
    )?;
    node.docs.set_role(&id, peer(&b.peer)?, role).await?;
    Ok(Json(json!({ "space": s, "peer": b.peer, "role": role })))
}

async fn leave(
    State(node): State<Arc<Node>>,
    Path(s): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = space_id(&s)?;
    node.docs.leave(&id).await?;
    Ok(Json(json!({ "space": s })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDocBody {
    title: String,
    kind: Option<String>,
}

async fn new_doc(
    State(node): State<Arc<Node>>,
    Path(s): Path<String>,
    b: Result<Json<NewDocBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = space_id(&s)?;
    let b = body(b)?;
    let kind: Kind = b
        .kind
        .as_deref()
        .unwrap_or("note")
        .parse()
        .map_err(ApiError::bad_request)?;
    let d = node.docs.new_doc(&id, &b.title, kind).await?;
    Ok(Json(json!({
        "doc": d.doc, "space": s, "title": d.title, "kind": d.kind, "heads": d.heads,
    })))
}

async fn docs(
    State(node): State<Arc<Node>>,
    Path(s): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = space_id(&s)?;
    Ok(Json(json!({ "docs": node.docs.docs(&id)? })))
}

async fn doc(
    State(node): State<Arc<Node>>,
    Path(d): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = doc_id(&d)?;
    Ok(Json(
        serde_json::to_value(node.docs.doc(&id)?).unwrap_or_default(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TextBody {
    text: String,
}

async fn edit(node: &Arc<Node>, d: &str, e: Edit) -> Result<Json<Value>, ApiError> {
    let id = doc_id(d)?;
    let r = node.docs.edit(&id, e).await?;
    Ok(Json(serde_json::to_value(r).unwrap_or_default()))
}

async fn set_text(
    State(node): State<Arc<Node>>,
    Path(d): Path<String>,
    b: Result<Json<TextBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let b = body(b)?;
    edit(&node, &d, Edit::SetText(b.text)).await
}

async fn append(
    State(node): State<Arc<Node>>,
    Path(d): Path<String>,
    b: Result<Json<TextBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let b = body(b)?;
    edit(&node, &d, Edit::Append(b.text)).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TitleBody {
    title: String,
}

async fn rename(
    State(node): State<Arc<Node>>,
    Path(d): Path<String>,
    b: Result<Json<TitleBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let b = body(b)?;
    edit(&node, &d, Edit::Rename(b.title)).await
}

async fn history(
    State(node): State<Arc<Node>>,
    Path(d): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = doc_id(&d)?;
    Ok(Json(
        json!({ "doc": d, "history": node.docs.history(&id)? }),
    ))
}

#[derive(Deserialize)]
struct ExportQuery {
    format: Option<String>,
}

async fn export(
    State(node): State<Arc<Node>>,
    Path(d): Path<String>,
    Query(q): Query<ExportQuery>,
) -> Result<Response, ApiError> {
    let id = doc_id(&d)?;
    match q.format.as_deref().unwrap_or("md") {
        "md" | "markdown" => Ok((
            [(header::CONTENT_TYPE, "text/markdown; charset=utf-8")],
            node.docs.markdown(&id)?,
        )
            .into_response()),
        "json" => {
            Ok(Json(serde_json::to_value(node.docs.doc(&id)?).unwrap_or_default()).into_response())
        }
        f => Err(ApiError::bad_request(format!(
            "unknown format {f:?}: md or json"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskBody {
    title: String,
    assign: Option<String>,
    due: Option<String>,
}

async fn add_task(
    State(node): State<Arc<Node>>,
    Path(d): Path<String>,
    b: Result<Json<TaskBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let b = body(b)?;
    let assignee = b.assign.as_deref().map(peer).transpose()?;
    if let Some(due) = &b.due {
        check_date(due)?;
    }
    let id = doc_id(&d)?;
    let r = node
        .docs
        .edit(
            &id,
            Edit::AddTask {
                title: b.title,
                assignee,
                due: b.due,
            },
        )
        .await?;
    Ok(Json(json!({ "doc": d, "task": r.id, "heads": r.heads })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskUpdateBody {
    title: Option<String>,
    state: Option<String>,
    /// A peer id, or null to unassign.
    #[serde(default, with = "double_option")]
    assign: Option<Option<String>>,
    #[serde(default, with = "double_option")]
    due: Option<Option<String>>,
}

mod double_option {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<String>>, D::Error> {
        Option::<String>::deserialize(d).map(Some)
    }
}

async fn update_task(
    State(node): State<Arc<Node>>,
    Path((d, task)): Path<(String, String)>,
    b: Result<Json<TaskUpdateBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let b = body(b)?;
    let state = b
        .state
        .as_deref()
        .map(|s| s.parse::<TaskState>())
        .transpose()
        .map_err(ApiError::bad_request)?;
    let assignee = match &b.assign {
        Some(Some(p)) => Some(Some(peer(p)?)),
        Some(None) => Some(None),
        None => None,
    };
    if let Some(Some(due)) = &b.due {
        check_date(due)?;
    }
    let id = doc_id(&d)?;
    let r = node
        .docs
        .edit(
            &id,
            Edit::UpdateTask {
                task: task.clone(),
                update: TaskUpdate {
                    title: b.title,
                    assignee,
                    state,
                    due: b.due,
                },
            },
        )
        .await?;
    Ok(Json(
        json!({ "doc": d, "task": task, "heads": r.heads, "changed": r.changed }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PostBody {
    text: String,
    reply_to: Option<String>,
}

async fn add_post(
    State(node): State<Arc<Node>>,
    Path(d): Path<String>,
    b: Result<Json<PostBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let b = body(b)?;
    let id = doc_id(&d)?;
    let r = node
        .docs
        .edit(
            &id,
            Edit::Post {
                text: b.text,
                reply_to: b.reply_to,
            },
        )
        .await?;
    Ok(Json(json!({ "doc": d, "post": r.id, "heads": r.heads })))
}

async fn set_fields(
    State(node): State<Arc<Node>>,
    Path(d): Path<String>,
    b: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let v = body(b)?;
    if !v.is_object() {
        return Err(ApiError::bad_request("form fields must be a JSON object"));
    }
    edit(&node, &d, Edit::SetFields(v)).await
}

#[derive(Deserialize)]
struct TasksQuery {
    mine: Option<bool>,
}

async fn tasks(State(node): State<Arc<Node>>, Query(q): Query<TasksQuery>) -> Json<Value> {
    Json(json!({ "tasks": node.docs.tasks(q.mine.unwrap_or(false)) }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachBody {
    /// An absolute path on the node's machine.
    path: String,
}

/// Shares the file (pinned, so it stays while the document names it) and attaches it.
async fn attach(
    State(node): State<Arc<Node>>,
    Path(d): Path<String>,
    b: Result<Json<AttachBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let b = body(b)?;
    let id = doc_id(&d)?;
    // Fail before the file is hashed when the document is not here.
    node.docs.doc(&id)?;
    let path = std::path::PathBuf::from(&b.path);
    if !path.is_absolute() {
        return Err(ApiError::bad_request(format!(
            "{} is not an absolute path (the node resolves paths on its own machine)",
            b.path
        )));
    }
    if !path.is_file() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "path_not_found",
            format!("{} is not a file", path.display()),
        ));
    }
    let job = node.files.share(path, true, false);
    // Hashing runs at GB/s; a bounded wait covers any file a quota allows.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(600);
    let result = loop {
        match job.view().state {
            agora_files::JobState::Running => {}
            agora_files::JobState::Done { result } => break result,
            agora_files::JobState::Failed { error, .. } => {
                return Err(ApiError::bad_request(format!(
                    "cannot share the file: {error}"
                )));
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "sharing the file took more than 10 minutes",
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let (Some(hash), Some(size), Some(name)) = (
        result["hash"].as_str(),
        result["size"].as_u64(),
        result["name"].as_str(),
    ) else {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "share_error",
            format!("unexpected share result {result}"),
        ));
    };
    let r = node
        .docs
        .edit(
            &id,
            Edit::Attach {
                name: name.to_string(),
                hash: hash.to_string(),
                size,
            },
        )
        .await?;
    Ok(Json(
        json!({ "doc": d, "name": name, "hash": hash, "size": size, "heads": r.heads }),
    ))
}
