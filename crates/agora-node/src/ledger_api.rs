//! Ledger routes under `/v1/ledger`: account, balance, pay, tx, status, history.

use std::sync::Arc;

use agora_ledger::service::{Ledger, LedgerError, TxRecord};
use agora_ledger::{Account, Action, CommitteeChange, Hash, Tx, TxError};
use axum::{
    Json, Router,
    extract::{Path, Query, State, rejection::JsonRejection, rejection::QueryRejection},
    http::StatusCode,
    routing::{get, post},
};
use serde::{Deserialize, Serialize};

use crate::{Node, api::ApiError};

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        let (status, code) = match &e {
            LedgerError::Tx(TxError::InsufficientFunds { .. }) => {
                (StatusCode::BAD_REQUEST, "insufficient_funds")
            }
            LedgerError::Tx(_) | LedgerError::Rejected(_) | LedgerError::Replaced(_) => {
                (StatusCode::BAD_REQUEST, "rejected")
            }
            LedgerError::NoValidator(_) => (StatusCode::SERVICE_UNAVAILABLE, "no_validator"),
            LedgerError::NotFinal(_) => (StatusCode::GATEWAY_TIMEOUT, "not_final"),
            LedgerError::Stopped => (StatusCode::SERVICE_UNAVAILABLE, "stopping"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "ledger_error"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/v1/ledger/account", get(account))
        .route("/v1/ledger/balance", get(balance))
        .route("/v1/ledger/pay", post(pay))
        .route("/v1/ledger/submit", post(submit))
        .route("/v1/ledger/tx/{hash}", get(tx))
        .route("/v1/ledger/status", get(status))
        .route("/v1/ledger/blocks/{height}", get(block))
        .route("/v1/ledger/history", get(history))
}

fn ledger(node: &Node) -> Result<&Arc<Ledger>, ApiError> {
    node.ledger.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "not_following",
            "this node does not follow a ledger",
        )
        .with_hint("start it with `agora up --genesis FILE` (an `agora devnet` writes one)")
    })
}

fn parse_account(text: &str) -> Result<Account, ApiError> {
    text.parse::<Account>().map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_account",
            format!("{text:?} is not an account: {e}"),
        )
        .with_hint("accounts look like `ag…` (see `agora account`)")
    })
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))
}

async fn account(State(node): State<Arc<Node>>) -> Result<Json<serde_json::Value>, ApiError> {
    let ledger = ledger(&node)?;
    Ok(Json(
        serde_json::json!({ "account": ledger.account().to_string() }),
    ))
}

#[derive(Deserialize)]
struct AccountQuery {
    account: Option<String>,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct BalanceView {
    account: String,
    balance: u64,
    seq: u64,
    height: u64,
}

async fn balance(
    State(node): State<Arc<Node>>,
    q: Result<Query<AccountQuery>, QueryRejection>,
) -> Result<Json<BalanceView>, ApiError> {
    let ledger = ledger(&node)?;
    let q = query(q)?;
    let account = match q.account.as_deref() {
        Some(text) => parse_account(text)?,
        None => ledger.account(),
    };
    let state = ledger.balance(&account);
    Ok(Json(BalanceView {
        account: account.to_string(),
        balance: state.balance,
        seq: state.seq,
        height: ledger.height(),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PayRequest {
    to: String,
    amount: u64,
    memo: Option<String>,
    fee: Option<u64>,
}

#[derive(Serialize)]
struct PayView {
    hash: Hash,
    height: u64,
    finality_ms: u64,
    from: String,
    to: String,
    amount: u64,
    fee: u64,
    seq: u64,
}

async fn pay(
    State(node): State<Arc<Node>>,
    body: Result<Json<PayRequest>, JsonRejection>,
) -> Result<Json<PayView>, ApiError> {
    let ledger = ledger(&node)?;
    let Json(req) = body?;
    let to = parse_account(&req.to)?;
    let payment = ledger.pay(to, req.amount, req.memo, req.fee).await?;
    Ok(Json(PayView {
        hash: payment.hash,
        height: payment.height,
        finality_ms: payment.finality_ms,
        from: ledger.account().to_string(),
        to: to.to_string(),
        amount: req.amount,
        fee: payment.fee,
        seq: payment.seq,
    }))
}

/// Most transactions in one `submit` call.
const MAX_SUBMIT_BATCH: usize = 1_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitRequest {
    /// One signed transaction's encoding, in hex...
    tx: Option<String>,
    /// ...or up to 1,000 of them.
    txs: Option<Vec<String>>,
}

fn unhex(tx: &str) -> Result<Vec<u8>, ApiError> {
    hex::decode(tx.trim()).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "a transaction must be the hex encoding of a signed transaction",
        )
    })
}

/// Transactions signed elsewhere (wallets, load generators): checked, handed to a validator,
/// not waited for. One (`tx`): its hash or the reason it was refused. Many (`txs`): how many
/// were taken and why the others were not.
async fn submit(
    State(node): State<Arc<Node>>,
    body: Result<Json<SubmitRequest>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let ledger = ledger(&node)?;
    let Json(req) = body?;
    match (req.tx, req.txs) {
        (Some(tx), None) => {
            let hash = ledger.submit_signed(&unhex(&tx)?).await?;
            Ok(Json(serde_json::json!({ "hash": hash.to_hex() })))
        }
        (None, Some(txs)) if txs.len() <= MAX_SUBMIT_BATCH => {
            let mut accepted = 0;
            let mut rejected = Vec::new();
            for (index, tx) in txs.iter().enumerate() {
                match ledger.submit_signed(&unhex(tx)?).await {
                    Ok(_) => accepted += 1,
                    Err(e) => {
                        rejected.push(serde_json::json!({"index": index, "error": e.to_string()}))
                    }
                }
            }
            Ok(Json(
                serde_json::json!({ "accepted": accepted, "rejected": rejected }),
            ))
        }
        (None, Some(_)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("at most {MAX_SUBMIT_BATCH} transactions per call"),
        )),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "give either tx (one transaction) or txs (a list)",
        )),
    }
}

/// A finalized transaction for people and scripts.
#[derive(Serialize)]
pub struct TxView {
    hash: Hash,
    height: u64,
    index: u32,
    block_time_ms: u64,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    amount: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fee: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memo: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    change: Option<String>,
}

fn view(record: TxRecord) -> TxView {
    let mut v = TxView {
        hash: record.hash,
        height: record.height,
        index: record.index,
        block_time_ms: record.block_time_ms,
        kind: "transfer",
        from: None,
        to: None,
        amount: None,
        fee: None,
        seq: None,
        memo: None,
        change: None,
    };
    match record.tx {
        Tx::Account(signed) => {
            let Action::Transfer { to, amount, memo } = signed.body.action;
            v.from = Some(signed.body.from.to_string());
            v.to = Some(to.to_string());
            v.amount = Some(amount);
            v.fee = Some(signed.body.fee);
            v.seq = Some(signed.body.seq);
            v.memo = memo;
        }
        Tx::Committee(c) => {
            v.kind = "committee";
            v.change = Some(match c.change {
                CommitteeChange::Add(a) => format!("add {a}"),
                CommitteeChange::Remove(a) => format!("remove {a}"),
            });
        }
    }
    v
}

async fn tx(
    State(node): State<Arc<Node>>,
    Path(hash): Path<String>,
) -> Result<Json<TxView>, ApiError> {
    let ledger = ledger(&node)?;
    let hash = Hash::from_hex(&hash).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_hash",
            format!("{hash:?} is not a transaction hash (64 hex digits)"),
        )
    })?;
    match ledger.tx(&hash)? {
        Some(record) => Ok(Json(view(record))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no finalized transaction {hash} (yet) on this node"),
        )),
    }
}

async fn status(
    State(node): State<Arc<Node>>,
) -> Result<Json<agora_ledger::service::Status>, ApiError> {
    Ok(Json(ledger(&node)?.status()))
}

#[derive(Serialize)]
struct BlockView {
    height: u64,
    digest: Hash,
    parent: Hash,
    timestamp_ms: u64,
    state_root: Hash,
    certified: bool,
    txs: Vec<Hash>,
}

async fn block(
    State(node): State<Arc<Node>>,
    Path(height): Path<u64>,
) -> Result<Json<BlockView>, ApiError> {
    let ledger = ledger(&node)?;
    match ledger.block(height)? {
        Some((block, digest, certified)) => Ok(Json(BlockView {
            height: block.height,
            digest,
            parent: block.parent,
            timestamp_ms: block.timestamp_ms,
            state_root: block.state_root,
            certified,
            txs: block.txs.iter().map(Tx::hash).collect(),
        })),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("this node has no finalized block {height} (yet)"),
        )),
    }
}

async fn history(
    State(node): State<Arc<Node>>,
    q: Result<Query<AccountQuery>, QueryRejection>,
) -> Result<Json<Vec<TxView>>, ApiError> {
    let ledger = ledger(&node)?;
    let q = query(q)?;
    let account = match q.account.as_deref() {
        Some(text) => parse_account(text)?,
        None => ledger.account(),
    };
    let records = ledger.history(&account, q.limit.unwrap_or(50).clamp(1, 1_000))?;
    Ok(Json(records.into_iter().map(view).collect()))
}
