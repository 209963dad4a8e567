//! Ledger routes under `/v1/ledger`: account, balance, pay, tx, status, history, committee.

use std::sync::Arc;

// Most transactions in one `submit` call: what one request to a validator carries.
use agora_ledger::service::wire::MAX_SUBMIT_BATCH;
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
        .route("/v1/ledger/committee/approve", post(committee_approve))
        .route("/v1/ledger/committee/change", post(committee_change))
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
            let bytes = txs
                .iter()
                .map(|tx| unhex(tx))
                .collect::<Result<Vec<_>, _>>()?;
            let mut accepted = 0;
            let mut rejected = Vec::new();
            for (index, answer) in ledger
                .submit_signed_many(&bytes)
                .await
                .into_iter()
                .enumerate()
            {
                match answer {
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
    /// A market transaction: what it asked, and what it did (fills, or why it failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    effect: Option<serde_json::Value>,
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
        action: None,
        effect: None,
    };
    match record.tx {
        Tx::Account(signed) => {
            v.from = Some(signed.body.from.to_string());
            v.fee = Some(signed.body.fee);
            v.seq = Some(signed.body.seq);
            match signed.body.action {
                Action::Transfer { to, amount, memo } => {
                    v.to = Some(to.to_string());
                    v.amount = Some(amount);
                    v.memo = memo;
                }
                Action::Market(m) => {
                    v.kind = "market";
                    v.action = serde_json::to_value(&m).ok();
                    v.effect = record
                        .effect
                        .as_ref()
                        .and_then(|e| serde_json::to_value(e).ok());
                }
            }
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

/// A committee change as the API takes it: `{"add": ACCOUNT}` or `{"remove": ACCOUNT}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeRequest {
    add: Option<String>,
    remove: Option<String>,
    /// Approvals (hex, as `approve` returns them); only for `change`.
    #[serde(default)]
    approvals: Vec<String>,
}

/// Most approvals a change may carry (more than any committee needs).
const MAX_APPROVALS: usize = 1_000;

impl ChangeRequest {
    fn change(&self) -> Result<CommitteeChange, ApiError> {
        match (&self.add, &self.remove) {
            (Some(a), None) => Ok(CommitteeChange::Add(parse_account(a)?)),
            (None, Some(a)) => Ok(CommitteeChange::Remove(parse_account(a)?)),
            _ => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "give either add or remove (an account)",
            )),
        }
    }
}

fn change_view(change: &CommitteeChange) -> serde_json::Value {
    match change {
        CommitteeChange::Add(a) => serde_json::json!({ "add": a.to_string() }),
        CommitteeChange::Remove(a) => serde_json::json!({ "remove": a.to_string() }),
    }
}

/// This validator's approval of a committee change at the current nonce.
async fn committee_approve(
    State(node): State<Arc<Node>>,
    body: Result<Json<ChangeRequest>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let ledger = ledger(&node)?;
    let Json(req) = body?;
    let change = req.change()?;
    let (approval, nonce) = ledger.approve_committee_change(&change)?;
    Ok(Json(serde_json::json!({
        "approval": hex::encode(approval.encode()),
        "validator": approval.validator.to_string(),
        "nonce": nonce,
        "change": change_view(&change),
    })))
}

/// Submits a committee change with its approvals and waits until it is final.
async fn committee_change(
    State(node): State<Arc<Node>>,
    body: Result<Json<ChangeRequest>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let ledger = ledger(&node)?;
    let Json(req) = body?;
    let change = req.change()?;
    if req.approvals.is_empty() || req.approvals.len() > MAX_APPROVALS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("give 1 to {MAX_APPROVALS} approvals"),
        )
        .with_hint(
            "each current validator runs `agora ledger approve` and passes you its output",
        ));
    }
    let approvals = req
        .approvals
        .iter()
        .map(|text| {
            let bad = || {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_approval",
                    format!("{text:?} is not an approval (as `agora ledger approve` prints)"),
                )
            };
            let bytes = hex::decode(text.trim()).map_err(|_| bad())?;
            agora_ledger::Approval::decode(&bytes).ok_or_else(bad)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let done = ledger.change_committee(change.clone(), approvals).await?;
    Ok(Json(serde_json::json!({
        "hash": done.hash.to_hex(),
        "height": done.height,
        "change": change_view(&change),
        "effective_epoch": done.effective_epoch,
        "effective_height": done.effective_height,
        "next_committee": done.next_committee.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
    })))
}
