//! Ledger routes under `/v1/ledger`: account, balance, pay, tx, status, history, committee,
//! and the currency market (trust lines, issuer settings, authorisation, issued and
//! cross-currency payments, offers, lines, books).
//!
//! Amounts are text wherever they can be issued: `AMOUNT` (AGR base units), `AMOUNT/AGR` or
//! `AMOUNT/CUR/ISSUER` (up to 9 decimals), and issued balances and limits are decimal strings,
//! so that no JSON number ever rounds them. Rates are decimal strings in whole units (of what is
//! bought per unit of what is sold; in a book, quote per base).

use std::sync::Arc;

use agora_ledger::amount::{self, Code, Currency, IOU_DECIMALS, Issue, Rate};
use agora_ledger::market::{Fill, Line, MarketAction, Offer, OfferFlags, OfferId, Outcome};
// Most transactions in one `submit` call: what one request to a validator carries.
use agora_ledger::service::wire::MAX_SUBMIT_BATCH;
use agora_ledger::service::{Ledger, LedgerError, Payment, TxRecord};
use agora_ledger::{Account, Action, Amount, CommitteeChange, Effect, Hash, Tx, TxError};
use axum::{
    Json, Router,
    extract::{
        Path, Query, State,
        rejection::{JsonRejection, PathRejection, QueryRejection},
    },
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{Node, api::ApiError};

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        let (status, code) = match &e {
            LedgerError::Tx(TxError::InsufficientFunds { .. }) => {
                (StatusCode::BAD_REQUEST, "insufficient_funds")
            }
            // Refused before inclusion (no fee charged): a zero amount, an offer of a currency
            // for itself, a transfer fee over 100 %…
            LedgerError::Tx(TxError::Market(_)) => (StatusCode::BAD_REQUEST, "invalid_market_tx"),
            // A bad module, gas limit or fee: refused before inclusion (no fee charged).
            LedgerError::Tx(TxError::Contract(c)) => {
                return crate::contract_api::contract_error(c);
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
        .route("/v1/ledger/blocks", get(recent_blocks))
        .route("/v1/ledger/committee/approve", post(committee_approve))
        .route("/v1/ledger/committee/change", post(committee_change))
        .route("/v1/ledger/trust", post(trust))
        .route("/v1/ledger/issuer", post(issuer))
        .route("/v1/ledger/authorize", post(authorize))
        .route("/v1/ledger/offers", get(offers).post(offer_create))
        .route(
            "/v1/ledger/offers/{seq}",
            axum::routing::delete(offer_cancel),
        )
        .route("/v1/ledger/lines", get(lines))
        .route("/v1/ledger/book", get(book))
        .merge(crate::contract_api::routes())
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

/// An account or a contract (whose address need not be an ed25519 key), for routes that only
/// read.
fn parse_any_account(text: &str) -> Result<Account, ApiError> {
    crate::contract_api::parse_contract_account(text).map_err(|e| {
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
        // `key`: the account's 32 bytes in hex, as contracts take accounts in their inputs.
        serde_json::json!({
            "account": ledger.account().to_string(),
            "key": hex::encode(ledger.account().0),
        }),
    ))
}

#[derive(Deserialize)]
struct AccountQuery {
    account: Option<String>,
    limit: Option<usize>,
    /// History only: skip the newest `offset` transactions (paging back).
    offset: Option<usize>,
}

#[derive(Serialize)]
struct BalanceView {
    account: String,
    balance: u64,
    seq: u64,
    height: u64,
    /// AGR held back by the lines and offers the account owns (not spendable by transfers).
    reserve: u64,
    /// Every issued currency: the account's lines and, for an issuer, what it owes per
    /// currency (a negative balance).
    issued: Vec<Value>,
}

async fn balance(
    State(node): State<Arc<Node>>,
    q: Result<Query<AccountQuery>, QueryRejection>,
) -> Result<Json<BalanceView>, ApiError> {
    let ledger = ledger(&node)?;
    let q = query(q)?;
    let account = match q.account.as_deref() {
        Some(text) => parse_any_account(text)?,
        None => ledger.account(),
    };
    Ok(Json(ledger.with_state(|state| {
        let a = state.account(&account);
        let mut issued: Vec<Value> = state
            .lines_of(&account)
            .iter()
            .map(|(issue, line)| line_view(issue, line))
            .collect();
        for (issue, owed) in state
            .market
            .obligations
            .iter()
            .filter(|(i, _)| i.issuer == account)
        {
            issued.push(json!({
                "currency": issue.code.as_str(),
                "issuer": issue.issuer.to_string(),
                "balance": amount::format_signed_units(-(*owed as i128)),
                "obligation": true,
            }));
        }
        BalanceView {
            account: account.to_string(),
            balance: a.balance,
            seq: a.seq,
            height: state.height,
            reserve: state.reserve_of(&account),
            issued,
        }
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PayRequest {
    to: String,
    /// A whole number of AGR base units (a transfer, as before), or text:
    /// `AMOUNT[/AGR]` or `AMOUNT/CUR/ISSUER`.
    amount: Value,
    memo: Option<String>,
    fee: Option<u64>,
    /// The most to spend, in the currency to spend (`AMOUNT/CUR/ISSUER` or `AMOUNT[/AGR]`).
    send_max: Option<String>,
    /// Deliver what `send_max` buys if it cannot buy all of `amount`.
    #[serde(default)]
    partial: bool,
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

/// Pays `amount` to `to`. A native amount without `send_max` is a plain transfer (the answer
/// is as it always was); anything else is a market payment (through the issuer, or through
/// the books from `send_max`'s currency) answered with its outcome, or 409 `market_failed`.
async fn pay(
    State(node): State<Arc<Node>>,
    body: Result<Json<PayRequest>, JsonRejection>,
) -> Result<Response, MarketApiError> {
    let ledger = ledger(&node)?;
    let Json(req) = body?;
    let to = parse_account(&req.to)?;
    let deliver = match &req.amount {
        Value::Number(n) => Amount::native(n.as_u64().ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_amount",
                format!("amount {n}: a whole number of base units, or text AMOUNT/CUR/ISSUER"),
            )
        })?),
        Value::String(text) => parse_amount(text)?,
        other => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_amount",
                format!("amount {other}: a whole number of base units, or text AMOUNT/CUR/ISSUER"),
            )
            .into());
        }
    };
    let send_max = req.send_max.as_deref().map(parse_amount).transpose()?;
    if deliver.currency == Currency::Native && send_max.is_none() {
        let amount = deliver.value as u64;
        let payment = ledger.pay(to, amount, req.memo, req.fee).await?;
        return Ok(Json(PayView {
            hash: payment.hash,
            height: payment.height,
            finality_ms: payment.finality_ms,
            from: ledger.account().to_string(),
            to: to.to_string(),
            amount,
            fee: payment.fee,
            seq: payment.seq,
        })
        .into_response());
    }
    if req.memo.is_some() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "a memo is carried only by plain AGR transfers (no send_max)",
        )
        .into());
    }
    let action = MarketAction::Pay {
        to,
        deliver,
        send_max,
        partial: req.partial,
    };
    Ok(settle(ledger, ledger.market(action, req.fee).await?)?.into_response())
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
    /// A market or contract transaction: what it asked, and what it did (fills, output and
    /// events, or why it failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    effect: Option<serde_json::Value>,
    /// The effect for people: amounts as text, rates in whole units; a contract's output and
    /// events as text and hex, `status` "ok" or why it failed, and the fee charged.
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<serde_json::Value>,
}

pub(crate) fn view(record: TxRecord) -> TxView {
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
        outcome: None,
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
                    if let Some(Effect::Market { outcome, .. }) = &record.effect {
                        v.outcome = Some(outcome_view(outcome));
                    }
                }
                Action::Contract(c) => {
                    v.kind = "contract";
                    v.action = Some(contract_action_view(&c));
                    v.effect = record
                        .effect
                        .as_ref()
                        .and_then(|e| serde_json::to_value(e).ok());
                    if let Some(Effect::Contract { fee, outcome, .. }) = &record.effect {
                        let mut o = crate::contract_api::outcome_fields(outcome);
                        o.insert("fee".into(), json!(fee));
                        v.outcome = Some(Value::Object(o));
                    }
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
        Some(text) => parse_any_account(text)?,
        None => ledger.account(),
    };
    let limit = q.limit.unwrap_or(50).clamp(1, 1_000);
    let offset = q.offset.unwrap_or(0).min(MAX_HISTORY_OFFSET);
    let records = ledger.history(&account, offset + limit)?;
    Ok(Json(records.into_iter().skip(offset).map(view).collect()))
}

/// Deepest `offset` into an account's history.
const MAX_HISTORY_OFFSET: usize = 10_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecentQuery {
    limit: Option<usize>,
}

/// `GET /v1/ledger/blocks?limit=N`: the newest finalized blocks (at most 100), newest first,
/// each with the finality time this node saw when it was running and watching.
async fn recent_blocks(
    State(node): State<Arc<Node>>,
    q: Result<Query<RecentQuery>, QueryRejection>,
) -> Result<Json<Vec<crate::live::SeenBlock>>, ApiError> {
    let ledger = ledger(&node)?.clone();
    let limit = query(q)?.limit.unwrap_or(20).clamp(1, 100) as u64;
    let top = ledger.height();
    let node2 = node.clone();
    let blocks = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let mut h = top;
        while h > 0 && (out.len() as u64) < limit {
            if let Ok(Some((block, digest, _))) = ledger.block(h) {
                out.push(crate::live::SeenBlock {
                    height: h,
                    digest: digest.to_string(),
                    timestamp_ms: block.timestamp_ms,
                    txs: block.txs.len(),
                    finality_ms: node2.dashboard.live.finality_ms(h),
                });
            }
            h -= 1;
        }
        out
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(Json(blocks))
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

// ---- the currency market ----

/// A market route's error: an ordinary [`ApiError`], or a transaction that was included but
/// failed when it ran (409 `market_failed`: final, fee charged, nothing else changed), whose
/// error body also carries `hash`, `height`, `fee` and `seq`.
pub(crate) enum MarketApiError {
    Api(ApiError),
    Failed {
        reason: String,
        payment: Box<Payment>,
    },
}

impl<E: Into<ApiError>> From<E> for MarketApiError {
    fn from(e: E) -> Self {
        MarketApiError::Api(e.into())
    }
}

impl IntoResponse for MarketApiError {
    fn into_response(self) -> Response {
        match self {
            MarketApiError::Api(e) => e.into_response(),
            MarketApiError::Failed { reason, payment } => {
                let p = &payment;
                let body = json!({ "error": {
                    "code": "market_failed",
                    "message": format!(
                        "{reason} (the transaction is final in block {}, tx {}: its fee of {} \
                         was charged and nothing else changed)",
                        p.height, p.hash, p.fee
                    ),
                    "hint": format!("`agora tx {}` shows the transaction", p.hash),
                    "reason": reason,
                    "hash": p.hash,
                    "height": p.height,
                    "fee": p.fee,
                    "seq": p.seq,
                }});
                (StatusCode::CONFLICT, Json(body)).into_response()
            }
        }
    }
}

fn bad(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

/// `AMOUNT`, `AMOUNT/AGR` or `AMOUNT/CUR/ISSUER`.
fn parse_amount(text: &str) -> Result<Amount, ApiError> {
    text.parse::<Amount>().map_err(|e| {
        bad("bad_amount", e.to_string()).with_hint(
            "AGR: AMOUNT (whole base units); issued: AMOUNT/CUR/ISSUER, e.g. 12.5/USD/ag…",
        )
    })
}

/// `AGR` or `CUR/ISSUER`.
fn parse_currency(text: &str) -> Result<Currency, ApiError> {
    Currency::parse(text).map_err(|e| {
        let message = match e {
            amount::AmountError::Form(_) => format!("currency {text:?}: write AGR or CUR/ISSUER"),
            e => e.to_string(),
        };
        bad("bad_currency", message).with_hint("write AGR or CUR/ISSUER, e.g. USD/ag…")
    })
}

fn parse_code(text: &str) -> Result<Code, ApiError> {
    Code::new(text.trim()).map_err(|e| bad("bad_currency", e.to_string()))
}

/// A limit: a decimal string of units (up to 9 decimals) or a whole number.
fn parse_limit(v: &Value) -> Result<u128, ApiError> {
    match v {
        Value::String(text) => {
            amount::parse_units(text.trim()).map_err(|e| bad("bad_amount", format!("limit: {e}")))
        }
        Value::Number(n) => n
            .as_u64()
            .and_then(|u| (u as u128).checked_mul(amount::IOU_SCALE))
            .filter(|atoms| *atoms <= amount::MAX_IOU)
            .ok_or_else(|| {
                bad(
                    "bad_amount",
                    format!("limit {n}: a decimal string like \"1000\""),
                )
            }),
        other => Err(bad(
            "bad_amount",
            format!("limit {other}: a decimal string like \"1000\""),
        )),
    }
}

/// An amount as text that parses back: `12.5/USD/ag…`, or `42/AGR`.
fn amount_text(a: &Amount) -> String {
    match a.currency {
        Currency::Native => format!("{}/AGR", a.value),
        Currency::Issued(_) => a.to_string(),
    }
}

/// A value of `currency` as a decimal (base units for AGR, units for issued currencies).
fn value_text(currency: &Currency, value: u128) -> String {
    Amount {
        currency: *currency,
        value,
    }
    .value_text()
}

/// Powers of ten between a currency's unit and what amounts count (atoms, or base units).
fn unit_digits(c: &Currency) -> i32 {
    match c {
        Currency::Native => 0,
        Currency::Issued(_) => IOU_DECIMALS as i32,
    }
}

/// `m × 10^e` as a decimal string without trailing zeros.
fn decimal(m: u128, e: i32) -> String {
    if m == 0 {
        return "0".into();
    }
    let digits = m.to_string();
    let point = digits.len() as i32 + e;
    let s = if point <= 0 {
        format!("0.{}{digits}", "0".repeat((-point) as usize))
    } else if point as usize >= digits.len() {
        format!("{digits}{}", "0".repeat(point as usize - digits.len()))
    } else {
        format!(
            "{}.{}",
            &digits[..point as usize],
            &digits[point as usize..]
        )
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// An offer's rate (atoms of `buys` per atom of `sells`) in units of `buys` per unit of
/// `sells`: exact, 8 significant digits.
fn unit_rate(rate: &Rate, sells: &Currency, buys: &Currency) -> String {
    decimal(
        rate.mantissa() as u128,
        rate.exponent() + unit_digits(sells) - unit_digits(buys),
    )
}

/// The inverse of an offer's rate, in units of `sells` per unit of `buys` (a bid's price in
/// quote per base), rounded down to 8 significant digits.
fn unit_rate_inverse(rate: &Rate, sells: &Currency, buys: &Currency) -> String {
    // 1 / (m 10^e) = (10^15 / m) 10^(-15-e), and 10^15 / m has 8 or 9 digits.
    let q = 1_000_000_000_000_000u128 / rate.mantissa() as u128;
    decimal(
        q,
        -15 - rate.exponent() + unit_digits(buys) - unit_digits(sells),
    )
}

fn line_view(issue: &Issue, line: &Line) -> Value {
    json!({
        "currency": issue.code.as_str(),
        "issuer": issue.issuer.to_string(),
        "balance": amount::format_units(line.balance),
        "limit": amount::format_units(line.limit),
        "authorized": line.authorized,
    })
}

fn fill_view(f: &Fill) -> Value {
    json!({
        "owner": f.offer.owner.to_string(),
        "seq": f.offer.seq,
        // As the taker sees it: what it paid the offer's owner, and what it got.
        "paid": amount_text(&f.paid),
        "got": amount_text(&f.got),
    })
}

/// What a market transaction did, for people and scripts (amounts as text).
pub(crate) fn outcome_view(o: &Outcome) -> Value {
    match o {
        Outcome::TrustSet {
            issue,
            limit,
            removed,
        } => json!({
            "result": "trust_set",
            "currency": issue.code.as_str(),
            "issuer": issue.issuer.to_string(),
            "limit": amount::format_units(*limit),
            "removed": removed,
        }),
        Outcome::IssuerSet(s) => json!({
            "result": "issuer_set",
            "require_auth": s.require_auth,
            "transfer_fee_ppm": s.transfer_fee_ppm,
        }),
        Outcome::Authorized { holder, issue } => json!({
            "result": "authorized",
            "holder": holder.to_string(),
            "currency": issue.code.as_str(),
            "issuer": issue.issuer.to_string(),
        }),
        Outcome::Paid {
            to,
            delivered,
            spent,
            fills,
        } => json!({
            "result": "paid",
            "to": to.to_string(),
            "delivered": amount_text(delivered),
            "spent": amount_text(spent),
            "fills": fills.iter().map(fill_view).collect::<Vec<_>>(),
        }),
        Outcome::OfferPlaced {
            id,
            fills,
            paid,
            got,
            resting,
            rate,
        } => json!({
            "result": "offer_placed",
            "owner": id.owner.to_string(),
            "seq": id.seq,
            "sell": paid.currency.to_string(),
            "buy": got.currency.to_string(),
            "rate": unit_rate(rate, &paid.currency, &got.currency),
            "fills": fills.iter().map(fill_view).collect::<Vec<_>>(),
            "paid": amount_text(paid),
            "got": amount_text(got),
            "resting": resting.as_ref().map(amount_text),
        }),
        Outcome::OfferCancelled { id } => json!({
            "result": "offer_cancelled",
            "owner": id.owner.to_string(),
            "seq": id.seq,
        }),
        Outcome::Failed { error } => json!({
            "result": "failed",
            "error": error.to_string(),
        }),
    }
}

/// The answer to a final market transaction: the payment with its effect, or 409 when it
/// failed at execution.
fn settle(ledger: &Ledger, p: Payment) -> Result<Json<Value>, MarketApiError> {
    let outcome = match &p.effect {
        Some(Effect::Market { outcome, .. }) => Some(outcome),
        _ => None,
    };
    if let Some(Outcome::Failed { error }) = outcome {
        return Err(MarketApiError::Failed {
            reason: error.to_string(),
            payment: Box::new(p),
        });
    }
    Ok(Json(json!({
        "hash": p.hash,
        "height": p.height,
        "finality_ms": p.finality_ms,
        "from": ledger.account().to_string(),
        "seq": p.seq,
        "fee": p.fee,
        "kind": "market",
        "outcome": outcome.map(outcome_view),
        "effect": p.effect.as_ref().and_then(|e| serde_json::to_value(e).ok()),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustRequest {
    issuer: String,
    currency: String,
    /// Decimal string (units); 0 removes a line at zero balance.
    limit: Value,
    fee: Option<u64>,
}

/// Sets this account's trust line for `currency` issued by `issuer`.
async fn trust(
    State(node): State<Arc<Node>>,
    body: Result<Json<TrustRequest>, JsonRejection>,
) -> Result<Json<Value>, MarketApiError> {
    let ledger = ledger(&node)?;
    let Json(req) = body?;
    let issue = Issue {
        code: parse_code(&req.currency)?,
        issuer: parse_account(&req.issuer)?,
    };
    let limit = parse_limit(&req.limit)?;
    let action = MarketAction::TrustSet { issue, limit };
    settle(ledger, ledger.market(action, req.fee).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuerRequest {
    require_auth: Option<bool>,
    /// Paid by the sender of a holder-to-holder transfer on top, in millionths (≤ 1,000,000).
    transfer_fee_ppm: Option<u32>,
    fee: Option<u64>,
}

/// This account's settings as an issuer.
async fn issuer(
    State(node): State<Arc<Node>>,
    body: Result<Json<IssuerRequest>, JsonRejection>,
) -> Result<Json<Value>, MarketApiError> {
    let ledger = ledger(&node)?;
    let Json(req) = body?;
    if req.require_auth.is_none() && req.transfer_fee_ppm.is_none() {
        return Err(
            ApiError::bad_request("give require_auth or transfer_fee_ppm (or both)").into(),
        );
    }
    let action = MarketAction::IssuerSet {
        require_auth: req.require_auth,
        transfer_fee_ppm: req.transfer_fee_ppm,
    };
    settle(ledger, ledger.market(action, req.fee).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthorizeRequest {
    holder: String,
    currency: String,
    fee: Option<u64>,
}

/// Authorises a holder's line of a currency this account issues.
async fn authorize(
    State(node): State<Arc<Node>>,
    body: Result<Json<AuthorizeRequest>, JsonRejection>,
) -> Result<Json<Value>, MarketApiError> {
    let ledger = ledger(&node)?;
    let Json(req) = body?;
    let action = MarketAction::Authorize {
        holder: parse_account(&req.holder)?,
        code: parse_code(&req.currency)?,
    };
    settle(ledger, ledger.market(action, req.fee).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OfferRequest {
    sell: String,
    buy: String,
    #[serde(default)]
    ioc: bool,
    #[serde(default)]
    fok: bool,
    #[serde(default)]
    sell_all: bool,
    #[serde(default)]
    passive: bool,
    fee: Option<u64>,
}

/// Places an offer: it crosses what it can at once, the rest rests (unless ioc/fok).
async fn offer_create(
    State(node): State<Arc<Node>>,
    body: Result<Json<OfferRequest>, JsonRejection>,
) -> Result<Json<Value>, MarketApiError> {
    let ledger = ledger(&node)?;
    let Json(req) = body?;
    let action = MarketAction::OfferCreate {
        sell: parse_amount(&req.sell)?,
        buy: parse_amount(&req.buy)?,
        flags: OfferFlags {
            ioc: req.ioc,
            fok: req.fok,
            sell: req.sell_all,
            passive: req.passive,
        },
    };
    settle(ledger, ledger.market(action, req.fee).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeeQuery {
    fee: Option<u64>,
}

/// Cancels this account's offer placed by its transaction of sequence `seq`.
async fn offer_cancel(
    State(node): State<Arc<Node>>,
    seq: Result<Path<u64>, PathRejection>,
    q: Result<Query<FeeQuery>, QueryRejection>,
) -> Result<Json<Value>, MarketApiError> {
    let ledger = ledger(&node)?;
    let Path(seq) = seq.map_err(|e| {
        bad(
            "bad_request",
            format!(
                "an offer is named by its sequence number: {}",
                e.body_text()
            ),
        )
    })?;
    let fee = query(q)?.fee;
    settle(
        ledger,
        ledger
            .market(MarketAction::OfferCancel { seq }, fee)
            .await?,
    )
}

fn offer_view(id: &OfferId, o: &Offer) -> Value {
    json!({
        "owner": id.owner.to_string(),
        "seq": id.seq,
        "sell": o.sells.to_string(),
        "buy": o.buys.to_string(),
        // Of what it sells.
        "remaining": value_text(&o.sells, o.remaining),
        // Units of `buy` asked per unit of `sell`.
        "rate": unit_rate(&o.rate, &o.sells, &o.buys),
    })
}

/// An account's resting offers.
async fn offers(
    State(node): State<Arc<Node>>,
    q: Result<Query<AccountQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let ledger = ledger(&node)?;
    let q = query(q)?;
    let account = match q.account.as_deref() {
        Some(text) => parse_account(text)?,
        None => ledger.account(),
    };
    Ok(Json(ledger.with_state(|state| {
        json!({
            "account": account.to_string(),
            "height": state.height,
            "offers": state
                .offers_of(&account)
                .iter()
                .map(|(id, o)| offer_view(id, o))
                .collect::<Vec<_>>(),
        })
    })))
}

/// An account's trust lines (as holder) and, for an issuer, the lines issued on it: those
/// with a `holder` and the balance negative (what the issuer owes).
async fn lines(
    State(node): State<Arc<Node>>,
    q: Result<Query<AccountQuery>, QueryRejection>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let ledger = ledger(&node)?;
    let q = query(q)?;
    let account = match q.account.as_deref() {
        Some(text) => parse_account(text)?,
        None => ledger.account(),
    };
    Ok(Json(ledger.with_state(|state| {
        let mut out: Vec<Value> = state
            .lines_of(&account)
            .iter()
            .map(|(issue, line)| line_view(issue, line))
            .collect();
        for (holder, issue, line) in state.lines_issued_by(&account) {
            let mut v = line_view(&issue, &line);
            v["holder"] = json!(holder.to_string());
            v["balance"] = json!(amount::format_signed_units(-(line.balance as i128)));
            out.push(v);
        }
        out
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BookQuery {
    base: String,
    quote: String,
    limit: Option<usize>,
}

/// Offers in a book, best first, at most this many per side by default.
const BOOK_DEPTH: usize = 20;
const MAX_BOOK_DEPTH: usize = 500;

/// The `base`/`quote` market: asks sell base for quote, bids sell quote for base; both priced
/// in quote per base (`rate`) with their size in base.
async fn book(
    State(node): State<Arc<Node>>,
    q: Result<Query<BookQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let ledger = ledger(&node)?;
    let q = query(q)?;
    let base = parse_currency(&q.base)?;
    let quote = parse_currency(&q.quote)?;
    if base == quote {
        return Err(bad(
            "bad_currency",
            "base and quote must be two different currencies".into(),
        ));
    }
    let limit = q.limit.unwrap_or(BOOK_DEPTH).clamp(1, MAX_BOOK_DEPTH);
    Ok(Json(ledger.with_state(|state| {
        let asks: Vec<Value> = state
            .book(base, quote, limit)
            .iter()
            .map(|(id, o)| {
                json!({
                    "owner": id.owner.to_string(),
                    "seq": id.seq,
                    "rate": unit_rate(&o.rate, &base, &quote),
                    "size": value_text(&base, o.remaining),
                })
            })
            .collect();
        let bids: Vec<Value> = state
            .book(quote, base, limit)
            .iter()
            .map(|(id, o)| {
                // What the bid's remaining quote asks in base (rounded up, as a taker pays).
                let size = o.rate.mul_up(o.remaining).unwrap_or(u128::MAX);
                json!({
                    "owner": id.owner.to_string(),
                    "seq": id.seq,
                    "rate": unit_rate_inverse(&o.rate, &quote, &base),
                    "size": value_text(&base, size),
                })
            })
            .collect();
        json!({
            "base": base.to_string(),
            "quote": quote.to_string(),
            "height": state.height,
            "asks": asks,
            "bids": bids,
        })
    })))
}

/// A contract action for people: the code by hash and size, inputs as text when they are.
fn contract_action_view(c: &agora_ledger::contract::ContractAction) -> serde_json::Value {
    use agora_ledger::contract::ContractAction;
    let text = |b: &[u8]| match std::str::from_utf8(b) {
        Ok(t) => serde_json::json!(t),
        Err(_) => serde_json::json!({ "hex": hex::encode(b) }),
    };
    match c {
        ContractAction::Deploy { code, init, gas } => serde_json::json!({
            "deploy": {
                "code_hash": agora_ledger::Hash::of(code).to_hex(),
                "code_bytes": code.len(),
                "init": text(init),
                "gas": gas,
            }
        }),
        ContractAction::Call {
            contract,
            method,
            input,
            value,
            gas,
        } => serde_json::json!({
            "call": {
                "contract": contract.to_string(),
                "method": method,
                "input": text(input),
                "value": value,
                "gas": gas,
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue() -> Issue {
        Issue {
            code: Code::new("USD").unwrap(),
            issuer: some_account(),
        }
    }

    fn some_account() -> Account {
        Account::of_identity(&libp2p::identity::Keypair::generate_ed25519()).unwrap()
    }

    #[test]
    fn rates_print_in_whole_units() {
        let usd = Currency::Issued(issue());
        let agr = Currency::Native;
        // Sells 10 USD for 1,000 AGR: 1000 base units per 10e9 atoms = 100 AGR per USD.
        let r = Rate::ratio_up(1_000, 10 * amount::IOU_SCALE).unwrap();
        assert_eq!(unit_rate(&r, &usd, &agr), "100");
        // Seen from the other side: 0.01 USD per AGR.
        assert_eq!(unit_rate_inverse(&r, &usd, &agr), "0.01");
        // Sells 3 USD for 7 USD-like units of another issued currency: 2.3333334 (rounded up).
        let r = Rate::ratio_up(7 * amount::IOU_SCALE, 3 * amount::IOU_SCALE).unwrap();
        assert_eq!(unit_rate(&r, &usd, &usd), "2.3333334");
        assert_eq!(unit_rate_inverse(&r, &usd, &usd), "0.42857141");
        assert_eq!(decimal(12_500_000, -7), "1.25");
        assert_eq!(decimal(5, 3), "5000");
        assert_eq!(decimal(5, -3), "0.005");
    }

    #[test]
    fn amounts_print_so_that_they_parse_back() {
        let a = Amount::native(42);
        assert_eq!(amount_text(&a), "42/AGR");
        assert_eq!(amount_text(&a).parse::<Amount>().unwrap(), a);
        let b = Amount::issued(issue(), 12_500_000_000);
        assert_eq!(amount_text(&b).parse::<Amount>().unwrap(), b);
        assert!(parse_amount("1.0000000001/USD/x").is_err());
        assert_eq!(parse_limit(&json!("12.5")).unwrap(), 12_500_000_000);
        assert_eq!(parse_limit(&json!(3)).unwrap(), 3_000_000_000);
        assert!(parse_limit(&json!(-3)).is_err());
        assert!(parse_limit(&json!("1e3")).is_err());
    }
}
