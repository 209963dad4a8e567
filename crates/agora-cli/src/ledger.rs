//! Ledger commands: account, balance, pay, tx, ledger status|history|approve|change, and the
//! currency market: ledger trust|issuer|authorize|lines|offer|offers|book|balance.
//!
//! Accounts, amounts and currency codes are checked by clap's value parsers, so a malformed one
//! is a usage error (exit 2) before any request is made.

use std::time::Duration;

use agora_ledger::amount::{self, Code, Currency};
use agora_ledger::{Account, Amount};
use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::{ClientArgs, client::Endpoint};

#[derive(Subcommand, Debug)]
pub enum LedgerCmd {
    /// Height, committee, last block time, transactions per second.
    Status(ClientArgs),
    /// Finalized transactions that paid from or to an account, or called a contract (yours by
    /// default).
    History {
        /// Account (`ag…`); default: this node's.
        account: Option<String>,
        /// How many, newest first.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Sign this validator's approval of a committee change (prints it for the submitter).
    ///
    /// A change needs approvals from a quorum (2f + 1) of the current committee; each member
    /// runs this and passes its output to whoever runs `agora ledger change`.
    Approve {
        #[arg(value_enum)]
        action: ChangeKind,
        /// The validator's account (`ag…`, as `agora account` prints on that node).
        account: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Submit a committee change with its approvals; waits until it is final. It takes effect
    /// at the start of the next epoch.
    Change {
        #[arg(value_enum)]
        action: ChangeKind,
        /// The validator's account (`ag…`).
        account: String,
        /// Approvals printed by `agora ledger approve` on current validators.
        #[arg(required = true, num_args = 1..)]
        approvals: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// AGR balance, reserve and every issued currency of an account or contract (yours by
    /// default).
    Balance {
        /// Account (`ag…`), a contract's too; default: this node's.
        #[arg(value_parser = crate::contract::parse_contract)]
        account: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Accept up to LIMIT of the currency CUR issued by ISSUER (a trust line); 0 removes a
    /// line at zero balance. Each line holds back the owner reserve of AGR.
    Trust {
        /// The issuer's account (`ag…`).
        #[arg(value_parser = parse_account)]
        issuer: String,
        /// Currency code: 3 to 12 of A-Z and 0-9 (not AGR).
        #[arg(value_parser = parse_code)]
        currency: String,
        /// Most to hold, in units (up to 9 decimals).
        #[arg(value_parser = parse_limit)]
        limit: String,
        #[command(flatten)]
        fee: FeeArg,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// This account's settings as an issuer of currencies.
    #[command(group(clap::ArgGroup::new("setting").required(true).multiple(true)
        .args(["require_auth", "transfer_fee"])))]
    Issuer {
        /// Whether holders' lines need `agora ledger authorize` before they can hold anything.
        #[arg(long, value_name = "true|false")]
        require_auth: Option<bool>,
        /// Transfer fee in percent (0 to 100, up to 4 decimals: 0.25 = 2,500 ppm), paid on top
        /// by the sender of a transfer between two holders and destroyed.
        #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
        transfer_fee: Option<u32>,
        #[command(flatten)]
        fee: FeeArg,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Authorise HOLDER's line of the currency CUR that this account issues.
    Authorize {
        #[arg(value_parser = parse_account)]
        holder: String,
        #[arg(value_parser = parse_code)]
        currency: String,
        #[command(flatten)]
        fee: FeeArg,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Trust lines of an account (yours by default); an issuer's also lists the lines issued
    /// on it (negative balance, with the holder).
    Lines {
        #[arg(value_parser = parse_account)]
        account: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Place or cancel an offer.
    #[command(subcommand)]
    Offer(OfferCmd),
    /// Resting offers of an account (yours by default).
    Offers {
        #[arg(value_parser = parse_account)]
        account: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The BASE/QUOTE order book: asks (selling BASE) and bids (buying BASE), priced in QUOTE
    /// per BASE, sizes in BASE, best first.
    Book {
        /// `AGR` or `CUR/ISSUER`.
        #[arg(value_parser = parse_currency)]
        base: String,
        /// `AGR` or `CUR/ISSUER`.
        #[arg(value_parser = parse_currency)]
        quote: String,
        /// Offers per side.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum OfferCmd {
    /// Sell an amount for another: crosses the opposite book (and through AGR when better) at
    /// once; what is left rests in the book unless --ioc or --fok. Prints the offer's id (the
    /// transaction's sequence number), the fills and what rests.
    Create {
        /// What to sell: `AMOUNT` (AGR base units) or `AMOUNT/CUR/ISSUER`.
        #[arg(long, value_parser = parse_market_amount)]
        sell: Amount,
        /// What to get for it.
        #[arg(long, value_parser = parse_market_amount)]
        buy: Amount,
        /// Immediate or cancel: take what crosses now, leave nothing in the book.
        #[arg(long, conflicts_with = "fok")]
        ioc: bool,
        /// Fill or kill: fill entirely now or fail.
        #[arg(long)]
        fok: bool,
        /// Do not take offers at exactly this offer's rate.
        #[arg(long)]
        passive: bool,
        /// Sell all of --sell even when that buys more than --buy.
        #[arg(long)]
        sell_all: bool,
        #[command(flatten)]
        fee: FeeArg,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel one of this account's offers by its id (sequence number).
    Cancel {
        seq: u64,
        #[command(flatten)]
        fee: FeeArg,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(clap::Args, Debug, Clone, Copy)]
pub struct FeeArg {
    /// Fee to offer (burned); default: the ledger's minimum.
    #[arg(long)]
    pub fee: Option<u64>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum ChangeKind {
    /// Add a validator.
    Add,
    /// Remove a validator.
    Remove,
}

fn change_body(action: ChangeKind, account: &str) -> Result<Value> {
    let account = check_account(account)?;
    Ok(match action {
        ChangeKind::Add => json!({ "add": account }),
        ChangeKind::Remove => json!({ "remove": account }),
    })
}

/// Checks the account's text form here, so a typo gets a clear error before any request.
fn check_account(text: &str) -> Result<String> {
    match text.trim().parse::<agora_ledger::Account>() {
        Ok(a) => Ok(a.to_string()),
        Err(e) => bail!("{text:?} is not an account: {e}"),
    }
}

/// A clap value parser: an account (`ag…`), normalised.
pub fn parse_account(s: &str) -> Result<String, String> {
    s.trim()
        .parse::<Account>()
        .map(|a| a.to_string())
        .map_err(|e| format!("not an account: {e} (`agora account` prints a node's own)"))
}

/// A clap value parser: a currency code (3 to 12 of A-Z and 0-9, not AGR).
pub fn parse_code(s: &str) -> Result<String, String> {
    Code::new(s.trim())
        .map(|c| c.to_string())
        .map_err(|e| e.to_string())
}

/// A clap value parser: `AGR` or `CUR/ISSUER`.
pub fn parse_currency(s: &str) -> Result<String, String> {
    Currency::parse(s)
        .map(|c| c.to_string())
        .map_err(|e| match e {
            amount::AmountError::Form(_) => {
                format!("currency {s:?}: write AGR or CUR/ISSUER (e.g. USD/ag…)")
            }
            e => e.to_string(),
        })
}

/// A clap value parser: a limit in units, up to 9 decimals (printed back canonically).
pub fn parse_limit(s: &str) -> Result<String, String> {
    amount::parse_units(s.trim())
        .map(amount::format_units)
        .map_err(|e| e.to_string())
}

/// A clap value parser: a market amount, `AMOUNT[/AGR]` or `AMOUNT/CUR/ISSUER`, not zero.
pub fn parse_market_amount(s: &str) -> Result<Amount, String> {
    let a: Amount = s.trim().parse().map_err(|e: amount::AmountError| {
        format!("{e} (e.g. 12.5/USD/ag… or 1000 for AGR base units)")
    })?;
    if a.value == 0 {
        return Err("the amount must be more than zero".into());
    }
    Ok(a)
}

/// What `agora pay` pays: AGR base units (a plain transfer), or any amount (a market payment).
#[derive(Clone, Copy, Debug)]
pub enum PayAmount {
    Native(u64),
    Market(Amount),
}

/// A clap value parser for `agora pay`: whole base units as before (`1_000` allowed), or
/// `AMOUNT/AGR`, or `AMOUNT/CUR/ISSUER`.
pub fn parse_pay_amount(s: &str) -> Result<PayAmount, String> {
    if !s.contains('/') {
        return parse_amount(s).map(PayAmount::Native);
    }
    let a = parse_market_amount(s)?;
    Ok(match a.currency {
        Currency::Native => PayAmount::Native(a.value as u64),
        Currency::Issued(_) => PayAmount::Market(a),
    })
}

/// A clap value parser: a percentage with up to 4 decimals (0 to 100), as millionths.
pub fn parse_percent(s: &str) -> Result<u32, String> {
    let text = s.trim().trim_end_matches('%');
    let bad = || format!("{s:?} is not a percentage from 0 to 100 with up to 4 decimals");
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty()
        || frac.len() > 4
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || whole.len() > 3
    {
        return Err(bad());
    }
    let whole: u32 = whole.parse().map_err(|_| bad())?;
    let frac: u32 = format!("{frac:0<4}").parse().map_err(|_| bad())?;
    let ppm = whole * 10_000 + frac;
    if ppm > 1_000_000 {
        return Err(bad());
    }
    Ok(ppm)
}

/// `agora pay` amounts: whole base units.
pub fn parse_amount(s: &str) -> Result<u64, String> {
    let n: u64 = s
        .trim()
        .replace('_', "")
        .parse()
        .map_err(|_| format!("{s:?} is not an amount (a whole number of base units)"))?;
    if n == 0 {
        return Err("the amount must be more than zero".into());
    }
    Ok(n)
}

fn time(ms: u64) -> String {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000) else {
        return ms.to_string();
    };
    let t = t.to_offset(time::UtcOffset::current_local_offset().unwrap_or(time::UtcOffset::UTC));
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

pub fn account(client: &ClientArgs) -> Result<()> {
    let v: Value = Endpoint::resolve(client)?.get("/v1/ledger/account")?;
    if client.json {
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!("{}", v["account"].as_str().unwrap_or_default());
    }
    Ok(())
}

pub fn balance(client: &ClientArgs, account: Option<&str>) -> Result<()> {
    let path = match account {
        Some(a) => format!("/v1/ledger/balance?account={a}"),
        None => "/v1/ledger/balance".to_owned(),
    };
    let v: Value = Endpoint::resolve(client)?.get(&path)?;
    if client.json {
        println!(
            "{}",
            json!({"account": v["account"], "balance": v["balance"], "seq": v["seq"],
                   "reserve": v["reserve"], "issued": v["issued"]})
        );
        return Ok(());
    }
    println!(
        "{}  balance {}  seq {}  (as of block {})",
        v["account"].as_str().unwrap_or_default(),
        v["balance"],
        v["seq"],
        v["height"]
    );
    let reserve = v["reserve"].as_u64().unwrap_or(0);
    if reserve > 0 {
        println!(
            "  reserve {reserve} AGR held back for lines and offers (spendable {})",
            v["balance"].as_u64().unwrap_or(0).saturating_sub(reserve)
        );
    }
    for l in v["issued"].as_array().into_iter().flatten() {
        let cur = format!("{}/{}", s(&l["currency"]), s(&l["issuer"]));
        if l["obligation"].as_bool() == Some(true) {
            println!(
                "  {:>20} {cur}  (issued: owed to holders)",
                s(&l["balance"])
            );
        } else {
            println!(
                "  {:>20} {cur}  (limit {}{})",
                s(&l["balance"]),
                s(&l["limit"]),
                if l["authorized"].as_bool() == Some(false) {
                    ", not authorised by the issuer"
                } else {
                    ""
                }
            );
        }
    }
    Ok(())
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

pub fn pay(
    client: &ClientArgs,
    to: &str,
    amount: PayAmount,
    send_max: Option<Amount>,
    partial: bool,
    memo: Option<String>,
    fee: Option<u64>,
) -> Result<()> {
    let endpoint = Endpoint::resolve(client)?;
    let market = match (amount, send_max) {
        (PayAmount::Native(n), None) => {
            // A plain transfer, exactly as before.
            let v: Value = endpoint.post(
                "/v1/ledger/pay",
                &json!({"to": to, "amount": n, "memo": memo, "fee": fee}),
            )?;
            if client.json {
                println!("{}", serde_json::to_string(&v)?);
            } else {
                println!(
                    "paid {} to {}\ntx {}\nfinal in block {} after {} ms (fee {})",
                    v["amount"],
                    v["to"].as_str().unwrap_or_default(),
                    v["hash"].as_str().unwrap_or_default(),
                    v["height"],
                    v["finality_ms"],
                    v["fee"]
                );
            }
            return Ok(());
        }
        (PayAmount::Native(n), Some(_)) => Amount::native(n),
        (PayAmount::Market(a), _) => a,
    };
    if memo.is_some() {
        // A usage error (exit 2), before anything is sent.
        clap::Error::raw(
            clap::error::ErrorKind::ArgumentConflict,
            "--memo is carried only by plain AGR transfers (not with --send-max or an issued \
             amount)\n",
        )
        .exit();
    }
    let v: Value = endpoint.post(
        "/v1/ledger/pay",
        &json!({
            "to": to,
            "amount": market.to_string(),
            "send_max": send_max.map(|m| m.to_string()),
            "partial": partial,
            "fee": fee,
        }),
    )?;
    print_market(client.json, &v)
}

/// Shortens `CUR/ag…` for tables: `USD/agAbCdEf…`.
fn short_cur(text: &str) -> String {
    match text.split_once('/') {
        Some((code, issuer)) if issuer.len() > 12 => format!("{code}/{}…", &issuer[..10]),
        _ => text.to_owned(),
    }
}

/// An amount as the API writes it (`12.5/USD/ag…`, `42/AGR`), short for people.
fn short_amount(text: &str) -> String {
    match text.split_once('/') {
        Some((value, cur)) => format!("{value} {}", short_cur(cur)),
        None => text.to_owned(),
    }
}

fn fills_text(fills: &Value) -> String {
    let mut out = String::new();
    for f in fills.as_array().into_iter().flatten() {
        out.push_str(&format!(
            "\n  fill: offer {}/{}: paid {}, got {}",
            s(&f["owner"]),
            f["seq"],
            short_amount(s(&f["paid"])),
            short_amount(s(&f["got"]))
        ));
    }
    out
}

/// A market transaction's outcome on one line (history, `agora tx`).
fn outcome_line(o: &Value) -> String {
    match s(&o["result"]) {
        "trust_set" if o["removed"].as_bool() == Some(true) => format!(
            "trust line for {} removed",
            short_cur(&format!("{}/{}", s(&o["currency"]), s(&o["issuer"])))
        ),
        "trust_set" => format!(
            "trusts {} up to {}",
            short_cur(&format!("{}/{}", s(&o["currency"]), s(&o["issuer"]))),
            s(&o["limit"])
        ),
        "issuer_set" => format!(
            "issuer settings: require authorisation {}, transfer fee {} ppm",
            o["require_auth"], o["transfer_fee_ppm"]
        ),
        "authorized" => format!(
            "authorised {} to hold {}",
            s(&o["holder"]),
            s(&o["currency"])
        ),
        "paid" => format!(
            "paid {} to {} (spent {}, {} fill(s))",
            short_amount(s(&o["delivered"])),
            s(&o["to"]),
            short_amount(s(&o["spent"])),
            o["fills"].as_array().map_or(0, Vec::len)
        ),
        "offer_placed" => {
            let fills = o["fills"].as_array().map_or(0, Vec::len);
            let crossed = if fills == 0 {
                "nothing crossed".to_owned()
            } else {
                format!(
                    "paid {}, got {} ({fills} fill(s))",
                    short_amount(s(&o["paid"])),
                    short_amount(s(&o["got"]))
                )
            };
            let rests = o["resting"]
                .as_str()
                .map(|r| format!(", rests {}", short_amount(r)))
                .unwrap_or_default();
            format!("offer {}: {crossed}{rests}", o["seq"])
        }
        "offer_cancelled" => format!("cancelled offer {}", o["seq"]),
        "failed" => format!("FAILED (fee charged): {}", s(&o["error"])),
        other => format!("market: {other}"),
    }
}

/// Prints a final market transaction (as `POST /v1/ledger/{pay,trust,…}` answers it).
fn print_market(json: bool, v: &Value) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(v)?);
        return Ok(());
    }
    let o = &v["outcome"];
    let what = match s(&o["result"]) {
        "trust_set" if o["removed"].as_bool() == Some(true) => format!(
            "trust line for {}/{} removed",
            s(&o["currency"]),
            s(&o["issuer"])
        ),
        "trust_set" => format!(
            "trust line for {}/{} set: limit {}",
            s(&o["currency"]),
            s(&o["issuer"]),
            s(&o["limit"])
        ),
        "issuer_set" => format!(
            "issuer settings: require authorisation {}, transfer fee {} % ({} ppm)",
            o["require_auth"],
            amount::format_units(o["transfer_fee_ppm"].as_u64().unwrap_or(0) as u128 * 100_000),
            o["transfer_fee_ppm"]
        ),
        "authorized" => format!(
            "authorised {}'s line for {}",
            s(&o["holder"]),
            s(&o["currency"])
        ),
        "paid" => format!(
            "paid {} to {}, spent {}{}",
            short_amount(s(&o["delivered"])),
            s(&o["to"]),
            short_amount(s(&o["spent"])),
            fills_text(&o["fills"])
        ),
        "offer_placed" => {
            let fills = o["fills"].as_array().map_or(0, Vec::len);
            let mut t = format!(
                "offer {}: sells {} for {} at {} {} per {}",
                o["seq"],
                short_cur(s(&o["sell"])),
                short_cur(s(&o["buy"])),
                s(&o["rate"]),
                short_cur(s(&o["buy"])),
                short_cur(s(&o["sell"]))
            );
            if fills > 0 {
                t.push_str(&format!(
                    "\ncrossed {fills} offer(s): paid {}, got {}{}",
                    short_amount(s(&o["paid"])),
                    short_amount(s(&o["got"])),
                    fills_text(&o["fills"])
                ));
            }
            match o["resting"].as_str() {
                Some(r) => t.push_str(&format!(
                    "\nresting: {} (cancel with `agora ledger offer cancel {}`)",
                    short_amount(r),
                    o["seq"]
                )),
                None => t.push_str("\nnothing rests in the book"),
            }
            t
        }
        "offer_cancelled" => format!("offer {} cancelled", o["seq"]),
        other => format!("done ({other})"),
    };
    println!(
        "{what}\ntx {}\nfinal in block {} after {} ms (fee {})",
        s(&v["hash"]),
        v["height"],
        v["finality_ms"],
        v["fee"]
    );
    Ok(())
}

/// `DELETE path` (the client's other verbs live in `client.rs`), with the same error text.
fn delete(endpoint: &Endpoint, path: &str) -> Result<Value> {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(5)))
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .new_agent();
    let mut response = agent
        .delete(format!("{}{path}", endpoint.base))
        .header("Authorization", format!("Bearer {}", endpoint.token))
        .call()
        .map_err(|e| anyhow!("talking to the node at {}: {e}", endpoint.base))?;
    let status = response.status();
    let body: Value = response
        .body_mut()
        .read_json()
        .with_context(|| format!("the node answered {status} with a body that is not JSON"))?;
    if !status.is_success() {
        let err = &body["error"];
        let mut text = format!(
            "{} (HTTP {})",
            err["message"].as_str().unwrap_or("unknown error"),
            status.as_u16()
        );
        if let Some(hint) = err["hint"].as_str() {
            text.push_str(&format!("\nhint: {hint}"));
        }
        bail!(text);
    }
    Ok(body)
}

fn account_query(path: &str, account: Option<&str>) -> String {
    match account {
        Some(a) => format!("{path}?account={a}"),
        None => path.to_owned(),
    }
}

fn lines(client: &ClientArgs, account: Option<&str>) -> Result<()> {
    let v: Value = Endpoint::resolve(client)?.get(&account_query("/v1/ledger/lines", account))?;
    if client.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let list = v.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("no trust lines (add one with `agora ledger trust ISSUER CUR LIMIT`)");
        return Ok(());
    }
    println!(
        "{:<12} {:>24} {:>24}  ISSUER / HOLDER",
        "CURRENCY", "BALANCE", "LIMIT"
    );
    for l in &list {
        let who = match l["holder"].as_str() {
            Some(h) => format!("issued to {h}"),
            None => s(&l["issuer"]).to_owned(),
        };
        println!(
            "{:<12} {:>24} {:>24}  {who}{}",
            s(&l["currency"]),
            s(&l["balance"]),
            s(&l["limit"]),
            if l["authorized"].as_bool() == Some(false) {
                "  (not authorised)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

fn offers(client: &ClientArgs, account: Option<&str>) -> Result<()> {
    let v: Value = Endpoint::resolve(client)?.get(&account_query("/v1/ledger/offers", account))?;
    if client.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let list = v["offers"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("no resting offers");
    }
    for o in &list {
        let (sell, buy) = (short_cur(s(&o["sell"])), short_cur(s(&o["buy"])));
        println!(
            "offer {:>6}  sells {} {sell} for {buy} at {} {buy} per {sell}",
            o["seq"],
            s(&o["remaining"]),
            s(&o["rate"])
        );
    }
    Ok(())
}

fn book(client: &ClientArgs, base: &str, quote: &str, limit: usize) -> Result<()> {
    let v: Value = Endpoint::resolve(client)?.get(&format!(
        "/v1/ledger/book?base={base}&quote={quote}&limit={}",
        limit.clamp(1, 500)
    ))?;
    if client.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let (b, q) = (short_cur(base), short_cur(quote));
    println!("{b} / {q}: rates in {q} per {b}, sizes in {b}");
    for (side, title) in [("asks", "asks (selling"), ("bids", "bids (buying")] {
        let list = v[side].as_array().cloned().unwrap_or_default();
        println!("{title} {b}): {}", list.len());
        for o in &list {
            println!(
                "  {:>20} {:>24}  offer {}/{}",
                s(&o["rate"]),
                s(&o["size"]),
                s(&o["owner"]),
                o["seq"]
            );
        }
    }
    Ok(())
}

fn tx_line(v: &Value) -> String {
    match v["kind"].as_str() {
        Some("committee") => format!(
            "block {:>7}  {}  committee: {}  tx {}",
            v["height"],
            time(v["block_time_ms"].as_u64().unwrap_or(0)),
            v["change"].as_str().unwrap_or_default(),
            v["hash"].as_str().unwrap_or_default()
        ),
        Some("market") => format!(
            "block {:>7}  {}  {}  {}  (fee {}, seq {})  tx {}",
            v["height"],
            time(v["block_time_ms"].as_u64().unwrap_or(0)),
            v["from"].as_str().unwrap_or_default(),
            outcome_line(&v["outcome"]),
            v["fee"],
            v["seq"],
            v["hash"].as_str().unwrap_or_default()
        ),
        Some("contract") => {
            let a = &v["action"];
            let what = match (a.get("deploy"), a.get("call")) {
                (Some(d), _) => format!(
                    "deploy {} ({} bytes)",
                    v["outcome"]["contract"].as_str().unwrap_or_default(),
                    d["code_bytes"]
                ),
                (_, Some(c)) => format!(
                    "call {}.{}{}",
                    c["contract"].as_str().unwrap_or_default(),
                    c["method"].as_str().unwrap_or_default(),
                    match c["value"].as_u64() {
                        Some(n) if n > 0 => format!(" with {n}"),
                        _ => String::new(),
                    }
                ),
                _ => "contract".to_owned(),
            };
            format!(
                "block {:>7}  {}  {}  {what}: {}  (gas {}, fee {}, seq {})  tx {}",
                v["height"],
                time(v["block_time_ms"].as_u64().unwrap_or(0)),
                v["from"].as_str().unwrap_or_default(),
                v["outcome"]["status"].as_str().unwrap_or("?"),
                v["outcome"]["gas_used"],
                v["outcome"]["fee"],
                v["seq"],
                v["hash"].as_str().unwrap_or_default()
            )
        }
        _ => format!(
            "block {:>7}  {}  {} -> {}  {}  (fee {}, seq {}){}  tx {}",
            v["height"],
            time(v["block_time_ms"].as_u64().unwrap_or(0)),
            v["from"].as_str().unwrap_or_default(),
            v["to"].as_str().unwrap_or_default(),
            v["amount"],
            v["fee"],
            v["seq"],
            v["memo"]
                .as_str()
                .map(|m| format!("  memo {m:?}"))
                .unwrap_or_default(),
            v["hash"].as_str().unwrap_or_default()
        ),
    }
}

pub fn tx(client: &ClientArgs, hash: &str) -> Result<()> {
    let hash = hash.trim();
    if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("{hash:?} is not a transaction hash (64 hex digits, as `agora pay` prints)");
    }
    let v: Value = Endpoint::resolve(client)?.get(&format!("/v1/ledger/tx/{hash}"))?;
    if client.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{}", tx_line(&v));
    }
    Ok(())
}

pub fn run(cmd: LedgerCmd) -> Result<()> {
    match cmd {
        LedgerCmd::Balance { account, client } => balance(&client, account.as_deref()),
        LedgerCmd::Trust {
            issuer,
            currency,
            limit,
            fee,
            client,
        } => {
            let v: Value = Endpoint::resolve(&client)?.post(
                "/v1/ledger/trust",
                &json!({"issuer": issuer, "currency": currency, "limit": limit, "fee": fee.fee}),
            )?;
            print_market(client.json, &v)
        }
        LedgerCmd::Issuer {
            require_auth,
            transfer_fee,
            fee,
            client,
        } => {
            let v: Value = Endpoint::resolve(&client)?.post(
                "/v1/ledger/issuer",
                &json!({"require_auth": require_auth, "transfer_fee_ppm": transfer_fee,
                        "fee": fee.fee}),
            )?;
            print_market(client.json, &v)
        }
        LedgerCmd::Authorize {
            holder,
            currency,
            fee,
            client,
        } => {
            let v: Value = Endpoint::resolve(&client)?.post(
                "/v1/ledger/authorize",
                &json!({"holder": holder, "currency": currency, "fee": fee.fee}),
            )?;
            print_market(client.json, &v)
        }
        LedgerCmd::Lines { account, client } => lines(&client, account.as_deref()),
        LedgerCmd::Offers { account, client } => offers(&client, account.as_deref()),
        LedgerCmd::Book {
            base,
            quote,
            limit,
            client,
        } => book(&client, &base, &quote, limit),
        LedgerCmd::Offer(OfferCmd::Create {
            sell,
            buy,
            ioc,
            fok,
            passive,
            sell_all,
            fee,
            client,
        }) => {
            let v: Value = Endpoint::resolve(&client)?.post(
                "/v1/ledger/offers",
                &json!({"sell": sell.to_string(), "buy": buy.to_string(), "ioc": ioc,
                        "fok": fok, "passive": passive, "sell_all": sell_all, "fee": fee.fee}),
            )?;
            print_market(client.json, &v)
        }
        LedgerCmd::Offer(OfferCmd::Cancel { seq, fee, client }) => {
            let endpoint = Endpoint::resolve(&client)?;
            let path = match fee.fee {
                Some(f) => format!("/v1/ledger/offers/{seq}?fee={f}"),
                None => format!("/v1/ledger/offers/{seq}"),
            };
            print_market(client.json, &delete(&endpoint, &path)?)
        }
        LedgerCmd::Status(client) => {
            let v: Value = Endpoint::resolve(&client)?.get("/v1/ledger/status")?;
            if client.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let committee: Vec<&str> = v["committee"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            println!(
                "chain      {} ({})",
                v["chain"].as_str().unwrap_or_default(),
                v["chain_id"].as_str().unwrap_or_default()
            );
            println!("height     {}", v["height"]);
            println!(
                "last block {}",
                time(v["last_block_time_ms"].as_u64().unwrap_or(0))
            );
            println!(
                "rate       {:.1} tx/s, {:.1} blocks/s (last minute)",
                v["tx_per_sec"].as_f64().unwrap_or(0.0),
                v["blocks_per_sec"].as_f64().unwrap_or(0.0)
            );
            println!(
                "role       {}",
                match (v["validator"].as_bool(), v["runs_consensus"].as_bool()) {
                    (Some(true), _) => "validator",
                    (_, Some(true)) => "follower until a committee change adds it (--validator)",
                    _ => "follower",
                }
            );
            println!("supply     {} (burned {})", v["supply"], v["burned"]);
            println!(
                "epoch      {} ({} blocks each)",
                v["epoch"], v["epoch_length"]
            );
            println!("committee  {} validators", committee.len());
            for c in &committee {
                println!("  {c}");
            }
            let next: Vec<&str> = v["next_committee"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if next != committee {
                println!("next epoch {} validators", next.len());
                for c in next {
                    println!("  {c}");
                }
            }
            Ok(())
        }
        LedgerCmd::Approve {
            action,
            account,
            client,
        } => {
            let v: Value = Endpoint::resolve(&client)?.post(
                "/v1/ledger/committee/approve",
                &change_body(action, &account)?,
            )?;
            if client.json {
                println!("{}", serde_json::to_string(&v)?);
            } else {
                println!("{}", v["approval"].as_str().unwrap_or_default());
            }
            Ok(())
        }
        LedgerCmd::Change {
            action,
            account,
            approvals,
            client,
        } => {
            let mut body = change_body(action, &account)?;
            body["approvals"] = json!(approvals);
            let v: Value =
                Endpoint::resolve(&client)?.post("/v1/ledger/committee/change", &body)?;
            if client.json {
                println!("{}", serde_json::to_string(&v)?);
            } else {
                println!(
                    "committee change final in block {} (tx {})\ntakes effect at epoch {} \
                     (block {}); the committee will have {} validators",
                    v["height"],
                    v["hash"].as_str().unwrap_or_default(),
                    v["effective_epoch"],
                    v["effective_height"],
                    v["next_committee"].as_array().map_or(0, Vec::len)
                );
            }
            Ok(())
        }
        LedgerCmd::History {
            account,
            limit,
            client,
        } => {
            let mut path = format!("/v1/ledger/history?limit={}", limit.clamp(1, 1000));
            if let Some(a) = account {
                // A contract's address need not be a key: its checksum is checked.
                let a = crate::contract::parse_contract(&a).map_err(|e| anyhow!("{a:?} is {e}"))?;
                path.push_str(&format!("&account={a}"));
            }
            let v: Value = Endpoint::resolve(&client)?.get(&path)?;
            if client.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let list = v.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no finalized transactions");
            }
            for t in list {
                println!("{}", tx_line(&t));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_are_millionths() {
        assert_eq!(parse_percent("1"), Ok(10_000));
        assert_eq!(parse_percent("0.25"), Ok(2_500));
        assert_eq!(parse_percent("0.0001%"), Ok(1));
        assert_eq!(parse_percent("100"), Ok(1_000_000));
        for bad in ["100.0001", "150", "0.00001", "-1", "", ".5", "1e2", "abc"] {
            assert!(parse_percent(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pay_amounts_keep_the_native_form() {
        assert!(matches!(
            parse_pay_amount("1_000"),
            Ok(PayAmount::Native(1_000))
        ));
        assert!(matches!(
            parse_pay_amount("7/AGR"),
            Ok(PayAmount::Native(7))
        ));
        assert!(parse_pay_amount("0").is_err());
        assert!(parse_pay_amount("0/AGR").is_err());
        assert!(parse_pay_amount("1.5").is_err());
        assert!(parse_pay_amount("1/USD/bob").is_err());
        assert_eq!(parse_limit("1000.50"), Ok("1000.5".to_owned()));
        assert!(parse_limit("1.0000000001").is_err());
        assert!(parse_code("usd").is_err());
        assert!(
            parse_currency("USD")
                .unwrap_err()
                .contains("write AGR or CUR/ISSUER")
        );
        assert_eq!(parse_currency("AGR"), Ok("AGR".to_owned()));
    }
}
