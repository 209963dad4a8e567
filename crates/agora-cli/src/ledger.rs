//! Ledger commands: account, balance, pay, tx, ledger status|history|approve|change.

use anyhow::{Result, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::{ClientArgs, client::Endpoint};

#[derive(Subcommand, Debug)]
pub enum LedgerCmd {
    /// Height, committee, last block time, transactions per second.
    Status(ClientArgs),
    /// Finalized transactions that paid from or to an account (yours by default).
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
        Some(a) => format!("/v1/ledger/balance?account={}", check_account(a)?),
        None => "/v1/ledger/balance".to_owned(),
    };
    let v: Value = Endpoint::resolve(client)?.get(&path)?;
    if client.json {
        println!(
            "{}",
            json!({"account": v["account"], "balance": v["balance"], "seq": v["seq"]})
        );
    } else {
        println!(
            "{}  balance {}  seq {}  (as of block {})",
            v["account"].as_str().unwrap_or_default(),
            v["balance"],
            v["seq"],
            v["height"]
        );
    }
    Ok(())
}

pub fn pay(
    client: &ClientArgs,
    to: &str,
    amount: u64,
    memo: Option<String>,
    fee: Option<u64>,
) -> Result<()> {
    let to = check_account(to)?;
    let v: Value = Endpoint::resolve(client)?.post(
        "/v1/ledger/pay",
        &json!({"to": to, "amount": amount, "memo": memo, "fee": fee}),
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
                path.push_str(&format!("&account={}", check_account(&a)?));
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
