//! Contract routes under `/v1/ledger/contracts`: deploy, call, query, show, events.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/ledger/contracts` | `{code_hex \| wat, init? \| init_hex?, gas?}`: deploys, waits for finality |
//! | `POST /v1/ledger/contracts/{account}/call` | `{method, args? \| args_hex?, value?, gas?}`: calls, waits for finality |
//! | `POST /v1/ledger/contracts/{account}/query` | `{method, args? \| args_hex?, gas?}`: runs read-only on this node's state (no transaction, no fee) |
//! | `GET /v1/ledger/contracts/{account}` | code hash and size, creator, balance, storage entries |
//! | `GET /v1/ledger/contracts/{account}/events?limit=&after=` | events of finalized transactions, newest first |
//!
//! Deploy, call and query answer `{"contract", "status": "ok", "output", "output_hex",
//! "events", "gas_used", …}`; `output` (and an event's `topic` and `data`) is the text when
//! the bytes are UTF-8 without control characters, else `null`, and the `_hex` field is
//! always there. Deploy and call
//! add `fee` (charged), `max_fee`, `height`, `hash`, `seq`, `finality_ms`. A deploy or call
//! that was included but failed when it ran (revert, trap, out of gas…) is final and charged:
//! it answers 409 `contract_failed` with the same fields inside the error, `status` being the
//! failure. A query that fails answers 409 `query_failed` (nothing was sent or charged).
//!
//! Contract addresses are BLAKE3 hashes, not ed25519 keys, so they are parsed by
//! [`parse_contract_account`] (prefix, base58, length and checksum) rather than
//! `Account::from_str`, which also asks for a curve point.

use std::sync::Arc;

use agora_ledger::contract::{
    self as contract, ContractAction, ContractError, ContractOutcome, MAX_GAS, MAX_INPUT,
    MAX_METHOD,
};
use agora_ledger::service::{Ledger, Payment};
use agora_ledger::tx::MAX_TX_BYTES;
use agora_ledger::{Account, AccountParseError, AccountTx, Action, Effect, SignedAccountTx, Tx};
use axum::{
    Json, Router,
    extract::{
        DefaultBodyLimit, Path, Query, State,
        rejection::{JsonRejection, QueryRejection},
    },
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::{Node, api::ApiError};

/// Gas of a deploy, call or query that names none.
pub const DEFAULT_GAS: u64 = 10_000_000;
/// Request bodies on these routes: a 16 KiB module is 32 KiB of hex, and its text form can be
/// ten times that.
pub const MAX_CONTRACT_BODY: usize = 512 * 1024;
/// Events one `events` request lists at most (and finalized transactions it reads).
pub const MAX_EVENTS_LISTED: usize = 1_000;
/// Events listed when the request names no limit.
pub const DEFAULT_EVENTS: usize = 50;
/// Queries run at once (each on a blocking thread, with a copy of the state).
pub const MAX_CONCURRENT_QUERIES: usize = 4;
/// Storage entries `show` counts at most (the scan runs under the tip's lock).
pub const MAX_COUNTED_ENTRIES: usize = 1_000_000;

static QUERIES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_CONCURRENT_QUERIES);

pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/v1/ledger/contracts", post(deploy))
        .route("/v1/ledger/contracts/{account}", get(show))
        .route("/v1/ledger/contracts/{account}/call", post(call))
        .route("/v1/ledger/contracts/{account}/query", post(query))
        .route("/v1/ledger/contracts/{account}/events", get(events))
        .layer(DefaultBodyLimit::max(MAX_CONTRACT_BODY))
}

/// An account's text form (`ag…`: base58 of the 32 bytes and a 4-byte checksum) with its
/// checksum checked, whether or not the bytes are an ed25519 key: contract addresses are
/// BLAKE3 hashes, and about half of them are not curve points.
pub fn parse_contract_account(text: &str) -> Result<Account, AccountParseError> {
    let text = text.trim();
    match text.parse::<Account>() {
        Ok(account) => Ok(account),
        // Everything but the curve point was checked (prefix, base58, length, checksum).
        Err(AccountParseError::Key) => {
            let body = text
                .strip_prefix(agora_ledger::account::PREFIX)
                .ok_or(AccountParseError::Prefix)?;
            let raw = bs58::decode(body)
                .into_vec()
                .map_err(|_| AccountParseError::Base58)?;
            let bytes: [u8; 32] = raw
                .get(..32)
                .and_then(|b| b.try_into().ok())
                .ok_or(AccountParseError::Length(raw.len()))?;
            let account = Account(bytes);
            // The same text back: the checksum is the one `Display` writes.
            if account.to_string() != text {
                return Err(AccountParseError::Checksum);
            }
            Ok(account)
        }
        Err(e) => Err(e),
    }
}

/// A contract route's error: an ordinary [`ApiError`], or a contract that ran and failed
/// (409 with the outcome's fields inside the error).
pub(crate) enum ContractApiError {
    Api(ApiError),
    Failed {
        code: &'static str,
        message: String,
        hint: Option<String>,
        fields: Map<String, Value>,
    },
}

impl<E: Into<ApiError>> From<E> for ContractApiError {
    fn from(e: E) -> Self {
        ContractApiError::Api(e.into())
    }
}

impl IntoResponse for ContractApiError {
    fn into_response(self) -> Response {
        match self {
            ContractApiError::Api(e) => e.into_response(),
            ContractApiError::Failed {
                code,
                message,
                hint,
                mut fields,
            } => {
                fields.insert("code".into(), json!(code));
                fields.insert("message".into(), json!(message));
                if let Some(h) = hint {
                    fields.insert("hint".into(), json!(h));
                }
                (StatusCode::CONFLICT, Json(json!({ "error": fields }))).into_response()
            }
        }
    }
}

type Answer = Result<Json<Value>, ContractApiError>;

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(v)| v).map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "contract requests are limited to {MAX_CONTRACT_BODY} bytes (and a deploy \
                     transaction to {MAX_TX_BYTES} bytes)"
                ),
            )
        } else {
            ApiError::bad_request(format!("invalid JSON body: {}", r.body_text()))
        }
    })
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

fn account_param(text: &str) -> Result<Account, ApiError> {
    parse_contract_account(text).map_err(|e| {
        bad("bad_account", format!("{text:?} is not an account: {e}"))
            .with_hint("contracts are named by the `ag…` address their deploy printed")
    })
}

fn unhex(what: &str, text: &str) -> Result<Vec<u8>, ApiError> {
    hex::decode(text.trim()).map_err(|e| bad("bad_hex", format!("{what} is not hex: {e}")))
}

/// `text` or `hex` (not both) as bytes; none is empty.
fn input(
    (text_name, text): (&str, Option<String>),
    (hex_name, hex): (&str, Option<String>),
) -> Result<Vec<u8>, ApiError> {
    let bytes = match (text, hex) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(format!(
                "give {text_name} (text) or {hex_name}, not both"
            )));
        }
        (Some(t), None) => t.into_bytes(),
        (None, Some(h)) => unhex(hex_name, &h)?,
        (None, None) => Vec::new(),
    };
    if bytes.len() > MAX_INPUT {
        return Err(bad(
            "too_long",
            format!(
                "{text_name} is {} bytes, more than {MAX_INPUT}",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

fn gas(gas: Option<u64>) -> Result<u64, ApiError> {
    let gas = gas.unwrap_or(DEFAULT_GAS);
    if gas == 0 || gas > MAX_GAS {
        return Err(bad(
            "bad_gas",
            format!("gas {gas}: give 1 to {MAX_GAS} (default {DEFAULT_GAS})"),
        ));
    }
    Ok(gas)
}

fn method(m: &str) -> Result<(), ApiError> {
    if m.is_empty() || m.len() > MAX_METHOD {
        return Err(bad(
            "bad_method",
            format!("a method is an exported function's name of 1 to {MAX_METHOD} bytes"),
        ));
    }
    Ok(())
}

/// A static refusal of a contract transaction as an API error with its own code.
pub(crate) fn contract_error(e: &ContractError) -> ApiError {
    let (status, code, hint) = match e {
        ContractError::Module(_) => (
            StatusCode::BAD_REQUEST,
            "bad_module",
            "a contract imports only functions of module \"agora\", has no start function \
             and exports its memory as \"memory\"",
        ),
        ContractError::Gas(_) => (
            StatusCode::BAD_REQUEST,
            "bad_gas",
            "give gas from 1 to 1,000,000,000",
        ),
        ContractError::TooLong => (
            StatusCode::BAD_REQUEST,
            "too_long",
            "method names are at most 64 bytes and inputs 8 KiB",
        ),
        ContractError::FeeBelowGas { .. } => (
            StatusCode::BAD_REQUEST,
            "fee_too_low",
            "the fee must cover the minimum fee plus 1 per 10,000 gas of the gas limit",
        ),
        ContractError::InitCall => (
            StatusCode::BAD_REQUEST,
            "init_call",
            "`init` runs once, at deploy; call another method",
        ),
        ContractError::TooLarge(_) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "a deploy transaction is at most 16 KiB: shrink the module (-O2, --strip-all)",
        ),
    };
    ApiError::new(status, code, e.to_string()).with_hint(hint)
}

/// Bytes as text when they are UTF-8 without control characters (tabs and line breaks
/// aside), else `null`: a little-endian number is valid UTF-8 but not text.
fn text(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(t)
            if !t
                .chars()
                .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) =>
        {
            json!(t)
        }
        _ => Value::Null,
    }
}

fn event_view(e: &contract::Event) -> Value {
    json!({
        "contract": e.contract.to_string(),
        "topic": text(&e.topic),
        "topic_hex": hex::encode(&e.topic),
        "data": text(&e.data),
        "data_hex": hex::encode(&e.data),
    })
}

/// What a deploy, call or query did: `contract`, `status`, `output`, `output_hex`, `events`,
/// `gas_used`.
pub(crate) fn outcome_fields(o: &ContractOutcome) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("contract".into(), json!(o.contract.to_string()));
    m.insert("status".into(), json!(o.error.as_deref().unwrap_or("ok")));
    m.insert("output".into(), text(&o.output));
    m.insert("output_hex".into(), json!(hex::encode(&o.output)));
    m.insert(
        "events".into(),
        Value::Array(o.events.iter().map(event_view).collect()),
    );
    m.insert("gas_used".into(), json!(o.gas_used));
    m
}

/// The size of `action` signed by this node: refused here when it is over the transaction
/// limit, which every validator and follower applies when it decodes one.
fn check_size(ledger: &Ledger, action: &Action) -> Result<(), ApiError> {
    let probe = Tx::Account(SignedAccountTx {
        body: AccountTx {
            from: ledger.account(),
            // The largest values, so that the real transaction is never longer.
            seq: u64::MAX,
            fee: u64::MAX,
            action: action.clone(),
        },
        signature: [0; 64],
    });
    let size = probe.encode().len();
    if size <= MAX_TX_BYTES {
        return Ok(());
    }
    let what = match action {
        Action::Contract(ContractAction::Deploy { code, .. }) => {
            format!(" (the module is {} bytes)", code.len())
        }
        _ => String::new(),
    };
    Err(ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!(
            "the transaction would be {size} bytes{what}, over the {MAX_TX_BYTES}-byte limit \
             of a ledger transaction"
        ),
    )
    .with_hint(
        "a deploy carries the whole module: keep contracts under about 16 KiB (build with -Oz, \
         strip the name and debug sections, move data out of the module)",
    ))
}

/// Signs, submits and waits for `action`; answers its outcome, or 409 when it failed.
async fn run(ledger: &Arc<Ledger>, action: ContractAction) -> Answer {
    let gas = action.gas_limit();
    let min_fee = ledger.with_state(|s| s.min_fee);
    let max_fee = contract::fee_for(min_fee, gas);
    action
        .check_static(max_fee, min_fee)
        .map_err(|e| contract_error(&e))?;
    let action = Action::Contract(action);
    check_size(ledger, &action)?;
    let payment = ledger.act(action, Some(max_fee)).await?;
    settle(payment)
}

fn settle(p: Payment) -> Answer {
    let Some(Effect::Contract { fee, outcome, .. }) = &p.effect else {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ledger_error",
            format!(
                "tx {} is final in block {} but no contract outcome is stored for it",
                p.hash, p.height
            ),
        )
        .into());
    };
    let mut fields = outcome_fields(outcome);
    fields.insert("fee".into(), json!(fee));
    fields.insert("max_fee".into(), json!(p.fee));
    fields.insert("height".into(), json!(p.height));
    fields.insert("hash".into(), json!(p.hash.to_hex()));
    fields.insert("seq".into(), json!(p.seq));
    fields.insert("finality_ms".into(), json!(p.finality_ms));
    match &outcome.error {
        None => Ok(Json(Value::Object(fields))),
        Some(reason) => Err(ContractApiError::Failed {
            code: "contract_failed",
            message: format!(
                "{reason} (the transaction is final in block {}, tx {}: its fee of {fee} was \
                 charged and nothing else changed)",
                p.height, p.hash
            ),
            hint: Some(format!("`agora tx {}` shows the transaction", p.hash)),
            fields,
        }),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployRequest {
    /// The module's bytes, in hex...
    code_hex: Option<String>,
    /// ...or its text form (WAT), compiled here.
    wat: Option<String>,
    /// Input of the module's `init`, as text or hex.
    init: Option<String>,
    init_hex: Option<String>,
    gas: Option<u64>,
}

/// Deploys a module from this node's account; its address is in the answer's `contract`.
async fn deploy(
    State(node): State<Arc<Node>>,
    req: Result<Json<DeployRequest>, JsonRejection>,
) -> Answer {
    let ledger = ledger(&node)?;
    let req = body(req)?;
    let code = match (req.code_hex, req.wat) {
        (Some(h), None) => unhex("code_hex", &h)?,
        (None, Some(text)) => tokio::task::spawn_blocking(move || wat::parse_str(&text))
            .await
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?
            .map_err(|e| {
                bad("bad_wat", format!("the WAT text does not compile: {e}"))
                    .with_hint("check it with `wasm-tools parse FILE.wat`")
            })?,
        _ => {
            return Err(ApiError::bad_request(
                "give the module as code_hex (bytes in hex) or wat (text), one of them",
            )
            .into());
        }
    };
    if code.is_empty() {
        return Err(bad("bad_module", "the module is empty").into());
    }
    let init = input(("init", req.init), ("init_hex", req.init_hex))?;
    let action = ContractAction::Deploy {
        code,
        init,
        gas: gas(req.gas)?,
    };
    run(ledger, action).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallRequest {
    method: String,
    /// Input as text or hex.
    args: Option<String>,
    args_hex: Option<String>,
    /// AGR base units sent to the contract with the call (calls only).
    value: Option<u64>,
    gas: Option<u64>,
}

/// The contract at `account` in this node's state, or 404.
fn existing(ledger: &Ledger, account: &Account) -> Result<(), ApiError> {
    let (exists, height) =
        ledger.with_state(|s| (s.contracts.accounts.contains_key(account), s.height));
    if exists {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "no_contract",
        format!("no contract {account} on this node's ledger (block {height})"),
    )
    .with_hint(
        "contracts are named by the `contract` address their deploy printed; if it was just \
         deployed through another node, wait until this one has the block",
    ))
}

/// Calls `method` of the contract with `args` (and `value` AGR) from this node's account.
async fn call(
    State(node): State<Arc<Node>>,
    Path(account): Path<String>,
    req: Result<Json<CallRequest>, JsonRejection>,
) -> Answer {
    let ledger = ledger(&node)?;
    let contract = account_param(&account)?;
    let req = body(req)?;
    method(&req.method)?;
    let input = input(("args", req.args), ("args_hex", req.args_hex))?;
    let gas = gas(req.gas)?;
    existing(ledger, &contract)?;
    let action = ContractAction::Call {
        contract,
        method: req.method,
        input,
        value: req.value.unwrap_or(0),
        gas,
    };
    run(ledger, action).await
}

/// Runs `method` read-only against this node's finalized state: no transaction, no fee,
/// nothing kept.
async fn query(
    State(node): State<Arc<Node>>,
    Path(account): Path<String>,
    req: Result<Json<CallRequest>, JsonRejection>,
) -> Answer {
    let ledger = ledger(&node)?;
    let contract = account_param(&account)?;
    let req = body(req)?;
    if req.value.is_some_and(|v| v > 0) {
        return Err(ApiError::bad_request(
            "a query sends no value (it is not a transaction): call the contract instead",
        )
        .into());
    }
    method(&req.method)?;
    let input = input(("args", req.args), ("args_hex", req.args_hex))?;
    let gas = gas(req.gas)?;
    existing(ledger, &contract)?;
    let _permit = QUERIES
        .acquire()
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopping", "shutting down"))?;
    // A copy of the tip: the query runs on a blocking thread without holding the ledger.
    let state = ledger.with_state(|s| s.clone());
    let method = req.method;
    let (height, outcome) = tokio::task::spawn_blocking(move || {
        (state.height, state.query(&contract, &method, &input, gas))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let mut fields = outcome_fields(&outcome);
    fields.insert("height".into(), json!(height));
    match &outcome.error {
        None => Ok(Json(Value::Object(fields))),
        Some(reason) => Err(ContractApiError::Failed {
            code: "query_failed",
            message: format!(
                "{reason} (a query on block {height}: nothing was sent, charged or changed)"
            ),
            hint: None,
            fields,
        }),
    }
}

/// A contract: code hash and size, creator, AGR balance, storage entries.
async fn show(
    State(node): State<Arc<Node>>,
    Path(account): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let ledger = ledger(&node)?;
    let contract = account_param(&account)?;
    existing(ledger, &contract)?;
    let view = ledger.with_state(|s| {
        let info = s.contracts.accounts.get(&contract)?;
        let code_size = s.contracts.code.get(&info.code).map_or(0, Vec::len);
        let (mut entries, mut bytes) = (0usize, 0usize);
        let mut capped = false;
        for ((owner, key), value) in s.contracts.storage.range((contract, Vec::new())..) {
            if *owner != contract {
                break;
            }
            if entries == MAX_COUNTED_ENTRIES {
                capped = true;
                break;
            }
            entries += 1;
            bytes += key.len() + value.len();
        }
        let balance = s.account(&contract);
        Some(json!({
            "contract": contract.to_string(),
            "code_hash": info.code.to_hex(),
            "code_size": code_size,
            "creator": info.creator.to_string(),
            "balance": balance.balance,
            "storage_entries": entries,
            "storage_bytes": bytes,
            "storage_counted_all": !capped,
            "height": s.height,
        }))
    });
    view.map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_contract",
            format!("no contract {contract}"),
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    /// Most events listed (1 to 1,000; default 50).
    limit: Option<usize>,
    /// Only events of blocks above this height (for following).
    after: Option<u64>,
}

/// Events the contract emitted in finalized transactions (its own, and those of calls made
/// to it by other contracts), newest first, from the ledger's history index. At most
/// `limit` events from the newest [`MAX_EVENTS_LISTED`] transactions that involved it.
async fn events(
    State(node): State<Arc<Node>>,
    Path(account): Path<String>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let ledger = ledger(&node)?;
    let contract = account_param(&account)?;
    let q = q
        .map(|Query(v)| v)
        .map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = q
        .limit
        .unwrap_or(DEFAULT_EVENTS)
        .clamp(1, MAX_EVENTS_LISTED);
    let after = q.after.unwrap_or(0);
    // The height first: a block finalized meanwhile is listed now or by the next `after`.
    let height = ledger.height();
    existing(ledger, &contract)?;
    let records = ledger.history(&contract, MAX_EVENTS_LISTED)?;
    let mut out = Vec::new();
    'records: for r in records {
        if r.height <= after {
            break;
        }
        if r.height > height {
            continue;
        }
        let Some(Effect::Contract { outcome, from, .. }) = &r.effect else {
            continue;
        };
        let method = match &r.tx {
            Tx::Account(signed) => match &signed.body.action {
                Action::Contract(ContractAction::Call { method, .. }) => Some(method.clone()),
                Action::Contract(ContractAction::Deploy { .. }) => Some("init".to_owned()),
                _ => None,
            },
            Tx::Committee(_) => None,
        };
        // Newest first: the transaction's events from its last.
        for (n, e) in outcome.events.iter().enumerate().rev() {
            if e.contract != contract {
                continue;
            }
            if out.len() >= limit {
                break 'records;
            }
            let mut v = event_view(e);
            v["height"] = json!(r.height);
            v["index"] = json!(r.index);
            v["n"] = json!(n);
            v["block_time_ms"] = json!(r.block_time_ms);
            v["hash"] = json!(r.hash.to_hex());
            v["from"] = json!(from.to_string());
            v["called"] = json!(outcome.contract.to_string());
            v["method"] = json!(method);
            out.push(v);
        }
    }
    Ok(Json(json!({
        "contract": contract.to_string(),
        "height": height,
        "events": out,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_addresses_parse_with_the_checksum_alone() {
        let deployer = Account([7; 32]);
        let (mut keys, mut hashes) = (0, 0);
        for seq in 0..64 {
            let a = contract::contract_address(&deployer, seq);
            let text = a.to_string();
            assert_eq!(parse_contract_account(&text), Ok(a));
            match text.parse::<Account>() {
                Ok(_) => keys += 1,
                Err(AccountParseError::Key) => hashes += 1,
                Err(e) => panic!("{e}"),
            }
            // One character changed: the checksum catches it.
            let mut changed: Vec<char> = text.chars().collect();
            let i = 2 + (seq as usize % (changed.len() - 2));
            changed[i] = if changed[i] == 'z' { 'y' } else { 'z' };
            let changed: String = changed.into_iter().collect();
            assert!(parse_contract_account(&changed).is_err(), "{changed}");
        }
        assert!(keys > 0 && hashes > 0, "{keys} keys, {hashes} non-keys");
        assert_eq!(parse_contract_account("xx"), Err(AccountParseError::Prefix));
        assert_eq!(
            parse_contract_account("ag0OIl"),
            Err(AccountParseError::Base58)
        );
    }

    #[test]
    fn outputs_are_text_when_they_are_utf8_and_always_hex() {
        let o = ContractOutcome {
            contract: Account([1; 32]),
            error: None,
            output: b"hi".to_vec(),
            events: vec![contract::Event {
                contract: Account([1; 32]),
                topic: b"t".to_vec(),
                data: vec![0xff, 0],
            }],
            gas_used: 5,
        };
        let f = outcome_fields(&o);
        assert_eq!(f["status"], "ok");
        assert_eq!(f["output"], "hi");
        assert_eq!(f["output_hex"], "6869");
        assert_eq!(f["events"][0]["topic"], "t");
        assert_eq!(f["events"][0]["data"], Value::Null);
        assert_eq!(f["events"][0]["data_hex"], "ff00");
        assert_eq!(text(&7u64.to_le_bytes()), Value::Null, "UTF-8, not text");
        assert_eq!(text(b"a\tb\n"), json!("a\tb\n"));
    }
}
