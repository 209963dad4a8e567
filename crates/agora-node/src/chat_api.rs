//! Messaging routes under `/v1/chat` (see the crate docs for the list).

use std::{sync::Arc, time::Duration};

use agora_chat::{
    service::{
        Chat, ChatError, Direction, JoinOutcome, MessageFilter, MessageRecord, PeerView,
        PostOutcome, ProfileView, RoomPost, RoomView, SendOutcome,
    },
    wire::Status,
};
use axum::{
    Json, Router,
    extract::{Path, Query, State, rejection::JsonRejection, rejection::QueryRejection},
    http::StatusCode,
    routing::{get, post},
};
use serde::{Deserialize, Serialize};

use crate::{
    Node,
    api::{ApiError, parse_peer},
};

impl From<ChatError> for ApiError {
    fn from(e: ChatError) -> Self {
        match &e {
            ChatError::BadInput(_) => {
                Self::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string())
            }
            ChatError::NotFound(_) => Self::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
            ChatError::Net(n) => n.clone().into(),
            ChatError::Db(_) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "store_error",
                e.to_string(),
            ),
        }
    }
}

pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/v1/chat/profile", get(profile_show).post(profile_set))
        .route("/v1/chat/contacts", get(contacts).post(contacts_add))
        .route("/v1/chat/contacts/remove", post(contacts_remove))
        .route("/v1/chat/send", post(send))
        .route("/v1/chat/messages", get(messages))
        .route("/v1/chat/rooms", get(rooms))
        .route("/v1/chat/rooms/join", post(join))
        .route("/v1/chat/rooms/leave", post(leave))
        .route("/v1/chat/rooms/post", post(room_post))
        .route("/v1/chat/rooms/{room}/messages", get(room_messages))
        .route("/v1/chat/rooms/{room}/members", get(room_members))
        .route("/v1/chat/who", get(who))
        .route("/v1/chat/mailbox/collect", post(collect))
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))
}

#[derive(Deserialize)]
struct PeerQuery {
    peer: Option<String>,
}

async fn profile_show(
    State(node): State<Arc<Node>>,
    q: Result<Query<PeerQuery>, QueryRejection>,
) -> Result<Json<ProfileView>, ApiError> {
    let q = query(q)?;
    let peer = match q.peer.as_deref() {
        Some(p) => Some(node.chat.resolve_peer(p)?),
        None => None,
    };
    let view = match peer {
        Some(p) => node.chat.lookup_profile(p).await?,
        None => node.chat.profile(None)?,
    };
    Ok(Json(view))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileSet {
    nick: Option<String>,
    status: Option<String>,
    about: Option<String>,
}

async fn profile_set(
    State(node): State<Arc<Node>>,
    body: Result<Json<ProfileSet>, JsonRejection>,
) -> Result<Json<ProfileView>, ApiError> {
    let Json(req) = body?;
    let status = match req.status.as_deref() {
        Some(s) => Some(
            s.parse::<Status>()
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e))?,
        ),
        None => None,
    };
    Ok(Json(
        node.chat.set_profile(req.nick, status, req.about).await?,
    ))
}

async fn contacts(State(node): State<Arc<Node>>) -> Json<Vec<PeerView>> {
    Json(node.chat.contacts())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContactAdd {
    peer: String,
    name: Option<String>,
}

async fn contacts_add(
    State(node): State<Arc<Node>>,
    body: Result<Json<ContactAdd>, JsonRejection>,
) -> Result<Json<PeerView>, ApiError> {
    let Json(req) = body?;
    let peer = parse_peer(req.peer.trim())?;
    Ok(Json(node.chat.add_contact(peer, req.name).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContactRemove {
    peer: String,
}

async fn contacts_remove(
    State(node): State<Arc<Node>>,
    body: Result<Json<ContactRemove>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(req) = body?;
    let peer = node.chat.resolve_peer(req.peer.trim())?;
    let removed = node.chat.remove_contact(peer)?;
    if !removed {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{peer} is not a contact"),
        ));
    }
    Ok(Json(
        serde_json::json!({ "peer_id": peer.to_string(), "removed": true }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendRequest {
    to: String,
    text: String,
}

async fn send(
    State(node): State<Arc<Node>>,
    body: Result<Json<SendRequest>, JsonRejection>,
) -> Result<Json<SendOutcome>, ApiError> {
    let Json(req) = body?;
    let to = node.chat.resolve_peer(req.to.trim())?;
    Ok(Json(node.chat.send(to, req.text).await?))
}

#[derive(Deserialize)]
struct MessagesQuery {
    /// `in`, `out` or absent for both.
    direction: Option<String>,
    peer: Option<String>,
    #[serde(default)]
    unread: bool,
    /// Only messages with a local number above this (the `cursor` of an earlier answer).
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
    /// Seconds to wait for a new message when there is none (long poll).
    #[serde(default)]
    wait: u64,
    #[serde(default)]
    mark_read: bool,
}

#[derive(Serialize)]
struct MessagesPage {
    messages: Vec<MessageView>,
    /// Pass as `after` to get only newer messages.
    cursor: u64,
}

#[derive(Serialize)]
struct MessageView {
    #[serde(flatten)]
    record: MessageRecord,
    nick: Option<String>,
    short_id: String,
}

async fn messages(
    State(node): State<Arc<Node>>,
    q: Result<Query<MessagesQuery>, QueryRejection>,
) -> Result<Json<MessagesPage>, ApiError> {
    let q = query(q)?;
    let direction = match q.direction.as_deref() {
        None | Some("all") => None,
        Some("in") => Some(Direction::In),
        Some("out") => Some(Direction::Out),
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("direction is in, out or all, not {other:?}"),
            ));
        }
    };
    let peer = match q.peer.as_deref() {
        Some(p) => Some(node.chat.resolve_peer(p)?),
        None => None,
    };
    let filter = MessageFilter {
        direction,
        peer,
        unread_only: q.unread,
    };
    let records = node
        .chat
        .messages(
            filter,
            q.after,
            q.limit.unwrap_or(100),
            Duration::from_secs(q.wait),
            q.mark_read,
        )
        .await?;
    let cursor = records.iter().map(|r| r.n).max().unwrap_or(q.after);
    let messages = records
        .into_iter()
        .map(|record| {
            let (nick, short_id) = node.chat.names(&record.peer_id);
            MessageView {
                record,
                nick,
                short_id,
            }
        })
        .collect();
    Ok(Json(MessagesPage { messages, cursor }))
}

async fn rooms(State(node): State<Arc<Node>>) -> Json<Vec<RoomView>> {
    Json(node.chat.rooms().await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomRequest {
    room: String,
}

async fn join(
    State(node): State<Arc<Node>>,
    body: Result<Json<RoomRequest>, JsonRejection>,
) -> Result<Json<JoinOutcome>, ApiError> {
    let Json(req) = body?;
    let room = Chat::parse_room(&req.room)?;
    Ok(Json(node.chat.join(&room).await?))
}

async fn leave(
    State(node): State<Arc<Node>>,
    body: Result<Json<RoomRequest>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(req) = body?;
    let room = Chat::parse_room(&req.room)?;
    if !node.chat.leave(&room).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("not in room {room}"),
        ));
    }
    Ok(Json(
        serde_json::json!({ "room": room.to_string(), "left": true }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PostRequest {
    room: String,
    text: String,
}

async fn room_post(
    State(node): State<Arc<Node>>,
    body: Result<Json<PostRequest>, JsonRejection>,
) -> Result<Json<PostOutcome>, ApiError> {
    let Json(req) = body?;
    let room = Chat::parse_room(&req.room)?;
    Ok(Json(node.chat.post(&room, req.text).await?))
}

#[derive(Deserialize)]
struct RoomMessagesQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
    #[serde(default)]
    wait: u64,
}

#[derive(Serialize)]
struct PostsPage {
    messages: Vec<RoomPost>,
    cursor: u64,
}

async fn room_messages(
    State(node): State<Arc<Node>>,
    Path(room): Path<String>,
    q: Result<Query<RoomMessagesQuery>, QueryRejection>,
) -> Result<Json<PostsPage>, ApiError> {
    let q = query(q)?;
    let room = Chat::parse_room(&room)?;
    let posts = node
        .chat
        .read_room(
            &room,
            q.after,
            q.limit.unwrap_or(100),
            Duration::from_secs(q.wait),
        )
        .await?;
    let cursor = posts.iter().map(|p| p.n).max().unwrap_or(q.after);
    Ok(Json(PostsPage {
        messages: posts,
        cursor,
    }))
}

async fn room_members(
    State(node): State<Arc<Node>>,
    Path(room): Path<String>,
) -> Result<Json<Vec<PeerView>>, ApiError> {
    let room = Chat::parse_room(&room)?;
    Ok(Json(node.chat.members(&room).await?))
}

async fn who(State(node): State<Arc<Node>>) -> Json<Vec<PeerView>> {
    Json(node.chat.who().await)
}

async fn collect(State(node): State<Arc<Node>>) -> Json<serde_json::Value> {
    let n = node.chat.collect_mailbox().await;
    Json(serde_json::json!({ "collected": n }))
}
