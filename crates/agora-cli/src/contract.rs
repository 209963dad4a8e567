//! Contract commands: `agora contract deploy|call|query|show|events`.
//!
//! A `.wasm` module (it starts with `\0asm`) is checked here as the ledger will check it and
//! sent as hex; anything else is read as WAT text and sent as it is, for the node to compile
//! (the node's `wat` compiler names the line of an error). A malformed file, bad hex, a bad
//! account, a module the ledger would refuse (a forbidden import, a start function, over the
//! transaction size) are usage errors: exit 2 with the reason, before anything is signed.
//! A call or deploy that is included but fails when it runs exits 1 (its fee was charged);
//! with `--json` its outcome is still printed on standard output.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agora_ledger::contract::{ContractAction, MAX_GAS, MAX_INPUT, MAX_METHOD};
use agora_ledger::tx::MAX_TX_BYTES;
use agora_ledger::{Account, AccountTx, Action, SignedAccountTx, Tx};
use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::{ClientArgs, client::Endpoint};

/// How often `events --follow` asks the node for new events.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(500);
/// How long one request may take: a deploy or call waits up to 30 s for finality.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);
/// Node answers that mean the input was wrong (exit 2 like a usage error).
const USAGE_CODES: &[&str] = &[
    "bad_wat",
    "bad_module",
    "bad_hex",
    "bad_gas",
    "bad_method",
    "bad_account",
    "too_large",
    "too_long",
    "payload_too_large",
];

#[derive(Subcommand, Debug)]
pub enum ContractCmd {
    /// Deploy a contract from FILE (`.wasm`, or `.wat` text); waits until it is final and
    /// prints the contract's account.
    Deploy {
        /// A WebAssembly module (`.wasm`) or its text form (`.wat`), at most about 16 KiB.
        file: PathBuf,
        #[command(flatten)]
        init: InitArgs,
        #[command(flatten)]
        gas: GasArg,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Call METHOD of a contract from this node's account; waits until it is final. Exits 1
    /// when the call failed (its fee for the gas used is charged, nothing else changes).
    Call {
        /// The contract's account (`ag…`, as `deploy` printed it).
        #[arg(value_parser = parse_contract)]
        contract: String,
        /// An exported function of the contract (no parameters, no results).
        #[arg(value_parser = parse_method)]
        method: String,
        #[command(flatten)]
        args: ArgsArgs,
        /// AGR base units sent to the contract with the call.
        #[arg(long, default_value_t = 0, value_parser = parse_value)]
        value: u64,
        #[command(flatten)]
        gas: GasArg,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Run METHOD read-only on this node's copy of the ledger: no transaction, no fee, nothing
    /// kept. Exits 1 when it fails.
    Query {
        #[arg(value_parser = parse_contract)]
        contract: String,
        #[arg(value_parser = parse_method)]
        method: String,
        #[command(flatten)]
        args: ArgsArgs,
        #[command(flatten)]
        gas: GasArg,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A contract's code hash and size, creator, AGR balance and storage entries.
    Show {
        #[arg(value_parser = parse_contract)]
        contract: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Events a contract emitted in finalized transactions, oldest first (`--json`: as the
    /// node lists them, newest first).
    Events {
        #[arg(value_parser = parse_contract)]
        contract: String,
        /// How many of the latest events.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Keep printing new events as blocks are finalized, until interrupted (`--json`:
        /// one JSON object per line).
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(clap::Args, Debug, Clone)]
pub struct InitArgs {
    /// Input of the contract's `init`, as text.
    #[arg(long, conflicts_with = "init_hex")]
    pub init: Option<String>,
    /// Input of the contract's `init`, as hex.
    #[arg(long, value_name = "HEX", value_parser = parse_hex)]
    pub init_hex: Option<String>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ArgsArgs {
    /// The method's input, as text.
    #[arg(long, conflicts_with = "args_hex")]
    pub args: Option<String>,
    /// The method's input, as hex.
    #[arg(long, value_name = "HEX", value_parser = parse_hex)]
    pub args_hex: Option<String>,
}

#[derive(clap::Args, Debug, Clone, Copy)]
pub struct GasArg {
    /// Most gas to use (about one per wasm instruction, plus host fees). The fee offered is the
    /// minimum fee + 1 per 10,000 of it; only the gas used is charged.
    #[arg(long, default_value_t = agora_node::DEFAULT_CONTRACT_GAS, value_parser = parse_gas)]
    pub gas: u64,
}

/// A clap value parser: a contract's (or any) account, checksum checked.
pub fn parse_contract(s: &str) -> Result<String, String> {
    agora_node::parse_contract_account(s)
        .map(|a| a.to_string())
        .map_err(|e| {
            format!("not an account: {e} (a contract's is printed by `agora contract deploy`)")
        })
}

fn parse_method(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > MAX_METHOD {
        return Err(format!(
            "a method is an exported function's name of 1 to {MAX_METHOD} bytes"
        ));
    }
    Ok(s.to_owned())
}

fn parse_hex(s: &str) -> Result<String, String> {
    let bytes = unhex(s.trim()).ok_or_else(|| "not hex (pairs of 0-9, a-f)".to_owned())?;
    if bytes.len() > MAX_INPUT {
        return Err(format!(
            "{} bytes, more than the {MAX_INPUT} an input may have",
            bytes.len()
        ));
    }
    Ok(to_hex(&bytes))
}

fn parse_gas(s: &str) -> Result<u64, String> {
    let gas: u64 = s
        .trim()
        .replace('_', "")
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number"))?;
    if gas == 0 || gas > MAX_GAS {
        return Err(format!("gas is 1 to {MAX_GAS}"));
    }
    Ok(gas)
}

fn parse_value(s: &str) -> Result<u64, String> {
    s.trim()
        .replace('_', "")
        .parse()
        .map_err(|_| format!("{s:?} is not an amount (a whole number of AGR base units)"))
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// A usage error found after parsing (a file, the node's verdict on a module): exit 2.
fn usage(message: impl std::fmt::Display) -> ! {
    eprintln!("error: {message}");
    std::process::exit(2)
}

/// The module in `file`: `{"code_hex"}` for a binary module (checked here as the ledger will),
/// `{"wat"}` for text.
fn module(file: &Path, init: &[u8], gas: u64) -> Value {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => usage(format!("cannot read {}: {e}", file.display())),
    };
    if bytes.is_empty() {
        usage(format!("{} is empty", file.display()));
    }
    if bytes.starts_with(b"\0asm") {
        let action = ContractAction::Deploy {
            code: bytes.clone(),
            init: init.to_vec(),
            gas,
        };
        // Fee and minimum fee that always pass: only the module and the gas are checked.
        if let Err(e) = action.check_static(u64::MAX, 0) {
            usage(format!("{}: {e}", file.display()));
        }
        // The transaction also carries the sender, sequence, fee, init and a signature (the
        // largest values of each, so that the real one is never longer).
        let probe = Tx::Account(SignedAccountTx {
            body: AccountTx {
                from: Account([0xff; 32]),
                seq: u64::MAX,
                fee: u64::MAX,
                action: Action::Contract(action),
            },
            signature: [0; 64],
        });
        let size = probe.encode().len();
        if size > MAX_TX_BYTES {
            usage(format!(
                "{} is {} bytes: its deploy transaction would be {size} bytes, over the \
                 {MAX_TX_BYTES}-byte limit of a ledger transaction, so a contract is at most \
                 about 16 KiB (build with -Oz, strip the name and debug sections)",
                file.display(),
                bytes.len()
            ));
        }
        return json!({ "code_hex": to_hex(&bytes) });
    }
    match String::from_utf8(bytes) {
        Ok(text) => json!({ "wat": text }),
        Err(_) => usage(format!(
            "{} is neither a WebAssembly module (it does not start with \\0asm) nor WAT text",
            file.display()
        )),
    }
}

/// The node's answer to a GET (`body` none) or a POST: its status and JSON body.
fn send(endpoint: &Endpoint, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(5)))
        .timeout_global(Some(REQUEST_TIMEOUT))
        .build()
        .new_agent();
    let url = format!("{}{path}", endpoint.base);
    let auth = format!("Bearer {}", endpoint.token);
    let response = match body {
        Some(b) => agent.post(&url).header("Authorization", &auth).send_json(b),
        None => agent.get(&url).header("Authorization", &auth).call(),
    };
    let mut response = response.map_err(|e| match e {
        ureq::Error::Io(_) | ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => anyhow!(
            "no agora node is running at {} (start one with `agora up`)",
            endpoint.base.trim_start_matches("http://")
        ),
        other => anyhow!("talking to the node at {}: {other}", endpoint.base),
    })?;
    let status = response.status().as_u16();
    let body: Value = response
        .body_mut()
        .read_json()
        .with_context(|| format!("the node answered {status} with a body that is not JSON"))?;
    Ok((status, body))
}

/// The error text of a failed answer, as the other commands print it.
fn error_text(status: u16, body: &Value) -> String {
    let err = &body["error"];
    let mut text = format!(
        "{} (HTTP {status})",
        err["message"].as_str().unwrap_or("unknown error")
    );
    if let Some(hint) = err["hint"].as_str() {
        text.push_str(&format!("\nhint: {hint}"));
    }
    text
}

/// A successful answer's body; a contract that ran and failed is printed and exits 1; input
/// the node refused exits 2.
fn outcome(json_out: bool, what: &str, status: u16, body: Value) -> Result<Value> {
    if (200..300).contains(&status) {
        return Ok(body);
    }
    let code = body["error"]["code"].as_str().unwrap_or_default();
    if status == 409 && (code == "contract_failed" || code == "query_failed") {
        let err = &body["error"];
        if json_out {
            let mut v = err.clone();
            if let Some(o) = v.as_object_mut() {
                for k in ["code", "message", "hint"] {
                    o.remove(k);
                }
            }
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            print_outcome(err, what);
        }
        eprintln!("error: {}", error_text(status, &body));
        std::process::exit(1);
    }
    if USAGE_CODES.contains(&code) {
        usage(error_text(status, &body));
    }
    bail!(error_text(status, &body))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// Bytes for people: the text when it is UTF-8 (quoted), else hex.
fn bytes(text: &Value, hex: &Value) -> String {
    match text.as_str() {
        Some(t) => format!("{t:?}"),
        None => format!("0x{}", s(hex)),
    }
}

fn print_events(v: &Value) {
    for e in v["events"].as_array().into_iter().flatten() {
        println!("{}", event_line(e));
    }
}

fn event_line(e: &Value) -> String {
    let mut line = format!(
        "event {} {}",
        bytes(&e["topic"], &e["topic_hex"]),
        bytes(&e["data"], &e["data_hex"])
    );
    if let Some(h) = e["height"].as_u64() {
        line = format!(
            "block {h:>7}  {}  {line}  tx {}",
            match e["method"].as_str() {
                Some(m) => format!("{m:<12}"),
                None => format!("{:<12}", "-"),
            },
            s(&e["hash"])
        );
    }
    line
}

/// Prints a deploy's, call's or query's outcome.
/// [`outcome`], then the answer as JSON or as text.
fn show_outcome(json_out: bool, what: &str, status: u16, body: Value) -> Result<()> {
    let v = outcome(json_out, what, status, body)?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_outcome(&v, what);
    }
    Ok(())
}

fn print_outcome(v: &Value, what: &str) {
    if what == "deploy" {
        println!("contract {}", s(&v["contract"]));
    }
    println!("{what}: {}", s(&v["status"]));
    if !v["output_hex"].as_str().unwrap_or_default().is_empty() {
        println!(
            "output {} (hex {})",
            bytes(&v["output"], &v["output_hex"]),
            s(&v["output_hex"])
        );
    }
    print_events(v);
    match v["hash"].as_str() {
        Some(hash) => println!(
            "gas used {}, fee {}\ntx {hash} final in block {} after {} ms",
            v["gas_used"], v["fee"], v["height"], v["finality_ms"]
        ),
        None => println!(
            "gas used {} (a query: nothing charged), on block {}",
            v["gas_used"], v["height"]
        ),
    }
}

fn input_body(text: Option<String>, hex: Option<String>, text_key: &str, hex_key: &str) -> Value {
    let mut body = json!({});
    if let Some(t) = text {
        if t.len() > MAX_INPUT {
            usage(format!(
                "--{text_key} is {} bytes, more than the {MAX_INPUT} an input may have",
                t.len()
            ));
        }
        body[text_key] = json!(t);
    }
    if let Some(h) = hex {
        body[hex_key] = json!(h);
    }
    body
}

pub fn run(cmd: ContractCmd) -> Result<()> {
    match cmd {
        ContractCmd::Deploy {
            file,
            init,
            gas,
            client,
        } => {
            let init_bytes = match (&init.init, &init.init_hex) {
                (Some(t), _) => t.as_bytes().to_vec(),
                (None, Some(h)) => unhex(h).expect("checked by clap"),
                (None, None) => Vec::new(),
            };
            let mut body = module(&file, &init_bytes, gas.gas);
            let extra = input_body(init.init, init.init_hex, "init", "init_hex");
            for (k, v) in extra.as_object().into_iter().flatten() {
                body[k] = v.clone();
            }
            body["gas"] = json!(gas.gas);
            let endpoint = Endpoint::resolve(&client)?;
            let (status, v) = send(&endpoint, "/v1/ledger/contracts", Some(&body))?;
            if USAGE_CODES.contains(&v["error"]["code"].as_str().unwrap_or_default()) {
                usage(format!("{}: {}", file.display(), error_text(status, &v)));
            }
            show_outcome(client.json, "deploy", status, v)
        }
        ContractCmd::Call {
            contract,
            method,
            args,
            value,
            gas,
            client,
        } => {
            let mut body = input_body(args.args, args.args_hex, "args", "args_hex");
            body["method"] = json!(method);
            body["value"] = json!(value);
            body["gas"] = json!(gas.gas);
            let endpoint = Endpoint::resolve(&client)?;
            let path = format!("/v1/ledger/contracts/{contract}/call");
            let (status, v) = send(&endpoint, &path, Some(&body))?;
            show_outcome(client.json, "call", status, v)
        }
        ContractCmd::Query {
            contract,
            method,
            args,
            gas,
            client,
        } => {
            let mut body = input_body(args.args, args.args_hex, "args", "args_hex");
            body["method"] = json!(method);
            body["gas"] = json!(gas.gas);
            let endpoint = Endpoint::resolve(&client)?;
            let path = format!("/v1/ledger/contracts/{contract}/query");
            let (status, v) = send(&endpoint, &path, Some(&body))?;
            show_outcome(client.json, "query", status, v)
        }
        ContractCmd::Show { contract, client } => {
            let endpoint = Endpoint::resolve(&client)?;
            let (status, v) = send(&endpoint, &format!("/v1/ledger/contracts/{contract}"), None)?;
            let v = outcome(client.json, "", status, v)?;
            if client.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!("contract  {}", s(&v["contract"]));
            println!("creator   {}", s(&v["creator"]));
            println!(
                "code      {} ({} bytes)",
                s(&v["code_hash"]),
                v["code_size"]
            );
            println!("balance   {} AGR base units", v["balance"]);
            println!(
                "storage   {}{} entries, {} bytes",
                v["storage_entries"],
                if v["storage_counted_all"] == false {
                    "+"
                } else {
                    ""
                },
                v["storage_bytes"]
            );
            println!("as of block {}", v["height"]);
            Ok(())
        }
        ContractCmd::Events {
            contract,
            limit,
            follow,
            client,
        } => events(&client, &contract, limit, follow),
    }
}

fn events(client: &ClientArgs, contract: &str, limit: usize, follow: bool) -> Result<()> {
    let endpoint = Endpoint::resolve(client)?;
    let list = |after: u64, limit: usize| -> Result<Value> {
        let path = format!(
            "/v1/ledger/contracts/{contract}/events?limit={}&after={after}",
            limit.clamp(1, 1_000)
        );
        let (status, v) = send(&endpoint, &path, None)?;
        outcome(client.json, "", status, v)
    };
    let v = list(0, limit)?;
    if client.json && !follow {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let print = |v: &Value| -> Result<()> {
        let list = v["events"].as_array().cloned().unwrap_or_default();
        for e in list.iter().rev() {
            if client.json {
                println!("{}", serde_json::to_string(e)?);
            } else {
                println!("{}", event_line(e));
            }
        }
        Ok(())
    };
    print(&v)?;
    if !follow {
        if !client.json && v["events"].as_array().is_none_or(Vec::is_empty) {
            println!("no events (as of block {})", v["height"]);
        }
        return Ok(());
    }
    let mut after = v["height"].as_u64().unwrap_or(0);
    loop {
        std::thread::sleep(FOLLOW_INTERVAL);
        let v = list(after, 1_000)?;
        print(&v)?;
        after = v["height"].as_u64().unwrap_or(after).max(after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_checked() {
        assert!(parse_gas("0").is_err());
        assert_eq!(parse_gas("1_000"), Ok(1_000));
        assert!(parse_gas(&(MAX_GAS + 1).to_string()).is_err());
        assert!(parse_hex("zz").is_err());
        assert_eq!(parse_hex("0A0b"), Ok("0a0b".to_owned()));
        assert!(parse_method("").is_err());
        assert!(parse_method(&"m".repeat(65)).is_err());
        assert!(parse_contract("agnope").is_err());
        assert!(parse_value("-1").is_err());
        assert_eq!(unhex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(to_hex(&[0, 255, 16]), "00ff10");
        assert!(unhex("abc").is_none() && unhex("é1").is_none() && unhex("+1").is_none());
    }
}
