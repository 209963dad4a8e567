//! The currency market across real processes, through the `agora` command line: two issuers
//! (USD, EUR) and four traders on a ledger of four validators. Trust lines, required
//! authorisation, a transfer fee, issuing, holder-to-holder payments, an over-limit payment
//! that fails (fee charged, nothing else changed), offers crossing and resting, a USD → EUR
//! payment auto-bridged through AGR, a validator killed with -9 and restarted, and every node
//! agreeing on every line, balance and state root. Malformed input is a usage error (exit 2).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use agora_ledger::Account;
use serde_json::{Value, json};

use crate::common::{
    Node, WAIT, ledger_height as height, start_ledger_node as start, stderr, stdout, wait_for,
    write_ledger_genesis,
};

const START: u64 = 1_000_000;
const FEE: u64 = 10;
/// Each line and resting offer holds back 100 × the minimum fee.
const RESERVE: u64 = 100 * FEE;

fn write_genesis(root: &Path, dirs: &[PathBuf], validators: usize) -> Vec<Account> {
    write_ledger_genesis(root, dirs, validators, "market-itest", START, FEE)
}

/// The highest ledger height any command has reported so far. A command waits until its node
/// has finalized that far, so it reads (and builds on) everything that came before it, whichever
/// node submitted it: a transaction is final on its submitter a moment before the others.
static SEEN: AtomicU64 = AtomicU64::new(0);

fn caught_up(node: &Node) {
    let seen = SEEN.load(Ordering::SeqCst);
    wait_for(&format!("the node to reach height {seen}"), WAIT, || {
        (height(node) >= seen).then_some(())
    });
}

/// `agora ARGS --json` on `node`, which must succeed.
fn ok(node: &Node, args: &[&str]) -> Value {
    caught_up(node);
    let mut args = args.to_vec();
    args.push("--json");
    let out = node.cli(&args);
    assert!(out.status.success(), "agora {args:?}: {}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("agora {args:?}: {e}: {}", stdout(&out)));
    if let Some(h) = v.get("height").and_then(Value::as_u64) {
        SEEN.fetch_max(h, Ordering::SeqCst);
    }
    v
}

/// `agora ARGS` on `node`, which must fail with exit `code`; its standard error.
fn fails(node: &Node, args: &[&str], code: i32) -> String {
    caught_up(node);
    let out = node.cli(args);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "agora {args:?}: expected exit {code}\nstdout: {}\nstderr: {err}",
        stdout(&out)
    );
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// The balance of `account`'s line of `code`/`issuer`, as `agora ledger lines` prints it.
fn line(node: &Node, account: &Account, code: &str, issuer: &Account) -> Value {
    let lines = ok(node, &["ledger", "lines", &account.to_string()]);
    lines
        .as_array()
        .unwrap()
        .iter()
        .find(|l| {
            l["currency"] == code && l["issuer"] == issuer.to_string() && l["holder"].is_null()
        })
        .cloned()
        .unwrap_or_else(|| panic!("{account} has no {code} line: {lines}"))
}

fn held(node: &Node, account: &Account, code: &str, issuer: &Account) -> String {
    line(node, account, code, issuer)["balance"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn final_everywhere(nodes: &[&Node], hash: &str) {
    for n in nodes {
        wait_for(&format!("tx {hash} final on every node"), WAIT, || {
            (n.get(&format!("/v1/ledger/tx/{hash}")).0 == 200).then_some(())
        });
    }
}

fn outcome(v: &Value) -> &Value {
    assert_eq!(v["kind"], "market", "{v}");
    &v["outcome"]
}

#[test]
fn issuers_and_traders_use_lines_books_and_bridged_payments_on_every_node() {
    let root = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (0..6).map(|i| root.path().join(format!("n{i}"))).collect();
    let accounts = write_genesis(root.path(), &dirs, 4);
    let gpath = root.path().join("genesis.json");
    let mut nodes = vec![start(&dirs[0], &gpath, true, None)];
    for (i, dir) in dirs.iter().enumerate().skip(1) {
        let node = start(dir, &gpath, i < 4, Some(&nodes[0]));
        nodes.push(node);
    }
    for n in &nodes {
        wait_for("blocks on every node", WAIT, || {
            (height(n) >= 2).then_some(())
        });
    }
    // n0 issues USD, n1 EUR (both validators); A and B are validators too, C and D follow.
    let (usd_issuer, eur_issuer) = (accounts[0], accounts[1]);
    let [a, b, c, d] = [accounts[2], accounts[3], accounts[4], accounts[5]];
    let (ai, bi, ci, di) = (2, 3, 4, 5);
    let usd = format!("USD/{usd_issuer}");
    let eur = format!("EUR/{eur_issuer}");
    let amt = |v: &str, cur: &str| format!("{v}/{cur}");

    // ---- malformed input: usage errors before anything is sent ----
    let n = &nodes[ai];
    let bs = b.to_string();
    for (args, needle) in [
        (
            vec!["pay", &bs, &amt("1.0000000001", &usd)],
            "up to 9 decimals",
        ),
        (vec!["pay", &bs, "abc"], "not an amount"),
        (
            vec!["pay", &bs, &format!("1/usd/{usd_issuer}")],
            "currency code",
        ),
        (vec!["pay", &bs, "1/USD/bob"], "issuer \"bob\""),
        (vec!["pay", &bs, &amt("0", &usd)], "more than zero"),
        (vec!["pay", "bob", "5"], "not an account"),
        (
            vec!["pay", &bs, &amt("5", &eur), "--send-max", "1/USD/nobody"],
            "issuer \"nobody\"",
        ),
        (
            vec!["ledger", "trust", "bob", "USD", "100"],
            "not an account",
        ),
        (
            vec!["ledger", "trust", &usd_issuer.to_string(), "usd", "100"],
            "currency code",
        ),
        (
            vec![
                "ledger",
                "trust",
                &usd_issuer.to_string(),
                "USD",
                "1.0000000001",
            ],
            "9 decimals",
        ),
        (
            vec![
                "ledger",
                "offer",
                "create",
                "--sell",
                "abc",
                "--buy",
                &amt("1", &usd),
            ],
            "a number",
        ),
        (
            vec!["ledger", "book", "USD", "AGR"],
            "write AGR or CUR/ISSUER",
        ),
        (vec!["ledger", "lines", "bob"], "not an account"),
        (
            vec!["ledger", "issuer", "--transfer-fee", "150"],
            "percentage",
        ),
    ] {
        let err = fails(n, &args, 2);
        assert!(err.contains(needle), "agora {args:?}: {err}");
    }
    // The API answers 400 with the parse error.
    for (path, body, code) in [
        (
            "/v1/ledger/pay",
            json!({"to": bs, "amount": "abc"}),
            "bad_amount",
        ),
        (
            "/v1/ledger/pay",
            json!({"to": bs, "amount": amt("1.0000000001", &usd)}),
            "bad_amount",
        ),
        (
            "/v1/ledger/trust",
            json!({"issuer": usd_issuer.to_string(), "currency": "usd", "limit": "1"}),
            "bad_currency",
        ),
        (
            "/v1/ledger/offers",
            json!({"sell": "5", "buy": "1/USD/nobody"}),
            "bad_amount",
        ),
    ] {
        let (status, v) = n.post(path, &body);
        assert_eq!(status, 400, "{path} {body}: {v}");
        assert_eq!(v["error"]["code"], code, "{v}");
    }
    let (status, v) = n.get("/v1/ledger/book?base=usd&quote=AGR");
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("bad_currency"))
    );
    assert_eq!(ok(n, &["balance"])["seq"], 0, "nothing was sent");

    // ---- issuers' settings, trust lines, authorisation ----
    let v = ok(&nodes[1], &["ledger", "issuer", "--require-auth", "true"]);
    assert_eq!(outcome(&v)["require_auth"], true, "{v}");
    let v = ok(&nodes[0], &["ledger", "issuer", "--transfer-fee", "1"]);
    assert_eq!(outcome(&v)["transfer_fee_ppm"], 10_000, "{v}");
    std::thread::scope(|s| {
        for i in [ai, bi, ci, di] {
            let node = &nodes[i];
            let (ui, ei) = (usd_issuer.to_string(), eur_issuer.to_string());
            s.spawn(move || {
                for (issuer, code) in [(&ui, "USD"), (&ei, "EUR")] {
                    let v = ok(node, &["ledger", "trust", issuer, code, "1000"]);
                    assert_eq!(outcome(&v)["result"], "trust_set", "{v}");
                    assert_eq!(outcome(&v)["limit"], "1000", "{v}");
                }
            });
        }
    });
    let l = line(&nodes[0], &c, "EUR", &eur_issuer);
    assert_eq!(
        (l["balance"].as_str(), l["authorized"].as_bool()),
        (Some("0"), Some(false))
    );
    // Before authorisation the issuer cannot pay C: included, fee charged, reason given.
    let err = fails(&nodes[1], &["pay", &c.to_string(), &amt("400", &eur)], 1);
    assert!(err.contains("not authorised"), "{err}");
    assert!(err.contains("fee of 10 was charged"), "{err}");
    assert!(err.contains("HTTP 409"), "{err}");
    assert_eq!(held(&nodes[4], &c, "EUR", &eur_issuer), "0");
    for holder in [a, b, c, d] {
        let v = ok(
            &nodes[1],
            &["ledger", "authorize", &holder.to_string(), "EUR"],
        );
        assert_eq!(outcome(&v)["result"], "authorized", "{v}");
    }

    // ---- issuing ----
    std::thread::scope(|s| {
        let (n0, n1) = (&nodes[0], &nodes[1]);
        let (usd, eur) = (&usd, &eur);
        s.spawn(move || {
            for (to, v) in [(a, "500"), (b, "300")] {
                let p = ok(n0, &["pay", &to.to_string(), &amt(v, usd)]);
                assert_eq!(outcome(&p)["delivered"], amt(v, usd), "{p}");
                assert_eq!(outcome(&p)["spent"], amt(v, usd), "the issuer pays no fee");
            }
        });
        s.spawn(move || {
            for (to, v) in [(c, "400"), (d, "200")] {
                ok(n1, &["pay", &to.to_string(), &amt(v, eur)]);
            }
        });
    });

    // ---- holder to holder, through the issuer, with its 1 % fee ----
    let p = ok(&nodes[ai], &["pay", &bs, &amt("100", &usd)]);
    assert_eq!(outcome(&p)["delivered"], amt("100", &usd), "{p}");
    assert_eq!(outcome(&p)["spent"], amt("101", &usd), "{p}");
    assert_eq!(held(&nodes[5], &a, "USD", &usd_issuer), "399");
    assert_eq!(held(&nodes[5], &b, "USD", &usd_issuer), "400");
    ok(&nodes[0], &["ledger", "issuer", "--transfer-fee", "0"]);

    // ---- over the limit: B's line is 1000 and holds 400 ----
    let before = ok(&nodes[3], &["ledger", "lines", &bs]);
    let (status, v) = nodes[0].post(
        "/v1/ledger/pay",
        &json!({"to": bs, "amount": amt("700", &usd)}),
    );
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["error"]["code"], "market_failed", "{v}");
    let reason = v["error"]["reason"].as_str().unwrap();
    assert!(reason.contains("over its trust line limit"), "{v}");
    let failed_hash = v["error"]["hash"].as_str().unwrap().to_owned();
    final_everywhere(&[&nodes[5]], &failed_hash);
    let failed = tx_outcome(&nodes[5], &failed_hash);
    assert_eq!(failed["result"], "failed", "{failed}");
    assert!(
        failed["error"].as_str().unwrap().contains("limit"),
        "{failed}"
    );
    assert_eq!(
        ok(&nodes[3], &["ledger", "lines", &bs]),
        before,
        "nothing changed"
    );
    let usd_bal = ok(&nodes[2], &["balance", &usd_issuer.to_string()]);
    assert_eq!(usd_bal["seq"], 5, "{usd_bal}");
    assert_eq!(
        usd_bal["balance"],
        START - 5 * FEE,
        "the fee was charged: {usd_bal}"
    );

    // ---- offers: C sells EUR for USD; A crosses half; B bids below and cancels ----
    let o = ok(
        &nodes[ci],
        &[
            "ledger",
            "offer",
            "create",
            "--sell",
            &amt("100", &eur),
            "--buy",
            &amt("110", &usd),
        ],
    );
    let c_direct = outcome(&o)["seq"].as_u64().unwrap();
    assert_eq!(outcome(&o)["resting"], amt("100", &eur), "{o}");
    assert_eq!(outcome(&o)["rate"], "1.1", "{o}");
    let offers = ok(&nodes[0], &["ledger", "offers", &c.to_string()]);
    assert_eq!(offers["offers"][0]["seq"], c_direct, "{offers}");
    assert_eq!(offers["offers"][0]["remaining"], "100", "{offers}");
    let o = ok(
        &nodes[ai],
        &[
            "ledger",
            "offer",
            "create",
            "--sell",
            &amt("55", &usd),
            "--buy",
            &amt("50", &eur),
        ],
    );
    let fills = outcome(&o)["fills"].as_array().unwrap().clone();
    assert_eq!(fills.len(), 1, "{o}");
    assert_eq!(fills[0]["owner"], c.to_string());
    assert_eq!(fills[0]["seq"], c_direct);
    assert_eq!(fills[0]["paid"], amt("55", &usd));
    assert_eq!(fills[0]["got"], amt("50", &eur));
    assert!(outcome(&o)["resting"].is_null(), "{o}");
    assert_eq!(held(&nodes[1], &a, "USD", &usd_issuer), "344");
    assert_eq!(held(&nodes[1], &a, "EUR", &eur_issuer), "50");
    assert_eq!(held(&nodes[1], &c, "USD", &usd_issuer), "55");
    assert_eq!(held(&nodes[1], &c, "EUR", &eur_issuer), "350");
    let o = ok(
        &nodes[bi],
        &[
            "ledger",
            "offer",
            "create",
            "--sell",
            &amt("40", &usd),
            "--buy",
            &amt("50", &eur),
        ],
    );
    let b_bid = outcome(&o)["seq"].as_u64().unwrap();
    assert!(outcome(&o)["fills"].as_array().unwrap().is_empty(), "{o}");
    let book = ok(&nodes[5], &["ledger", "book", &eur, &usd]);
    assert_eq!(book["asks"][0]["rate"], "1.1", "{book}");
    assert_eq!(book["asks"][0]["size"], "50", "{book}");
    assert_eq!(book["bids"][0]["rate"], "0.8", "{book}");
    assert_eq!(book["bids"][0]["size"], "50", "{book}");
    assert_eq!(book["bids"][0]["seq"], b_bid, "{book}");
    let v = ok(
        &nodes[bi],
        &["ledger", "offer", "cancel", &b_bid.to_string()],
    );
    assert_eq!(outcome(&v)["result"], "offer_cancelled", "{v}");
    assert!(
        ok(&nodes[bi], &["ledger", "offers"])["offers"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let err = fails(
        &nodes[bi],
        &["ledger", "offer", "cancel", &b_bid.to_string()],
        1,
    );
    assert!(err.contains(&format!("no offer {b_bid}")), "{err}");

    // ---- kill -9 validator B: three of four still finalize ----
    nodes[bi].kill9();
    let alive: Vec<&Node> = [0, 1, 2, 4, 5].iter().map(|&i| &nodes[i]).collect();
    // A USD → AGR → EUR path at 0.5 USD per EUR beats C's direct ask at 1.1.
    let o = ok(
        &nodes[di],
        &[
            "ledger",
            "offer",
            "create",
            "--sell",
            "100000",
            "--buy",
            &amt("50", &usd),
        ],
    );
    let d_agr = outcome(&o)["seq"].as_u64().unwrap();
    let o = ok(
        &nodes[ci],
        &[
            "ledger",
            "offer",
            "create",
            "--sell",
            &amt("100", &eur),
            "--buy",
            "100000",
        ],
    );
    let c_agr = outcome(&o)["seq"].as_u64().unwrap();
    let p = ok(
        &nodes[ai],
        &["pay", &bs, &amt("50", &eur), "--send-max", &amt("30", &usd)],
    );
    let paid = outcome(&p);
    assert_eq!(paid["delivered"], amt("50", &eur), "{p}");
    assert_eq!(paid["spent"], amt("25", &usd), "through AGR: {p}");
    let mut path: Vec<(String, u64)> = paid["fills"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["owner"].as_str().unwrap().to_owned(),
                f["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    path.sort();
    let mut want = vec![(c.to_string(), c_agr), (d.to_string(), d_agr)];
    want.sort();
    assert_eq!(
        path, want,
        "the AGR books, not C's direct offer {c_direct}: {p}"
    );
    final_everywhere(&alive, p["hash"].as_str().unwrap());

    // ---- B restarts, catches up and trades again ----
    nodes[bi] = start(&dirs[bi], &gpath, true, Some(&nodes[0]));
    let h = p["height"].as_u64().unwrap();
    wait_for("the restarted validator to catch up", WAIT, || {
        (height(&nodes[bi]) >= h).then_some(())
    });
    let p = ok(&nodes[bi], &["pay", &a.to_string(), &amt("10", &eur)]);
    let all: Vec<&Node> = nodes.iter().collect();
    final_everywhere(&all, p["hash"].as_str().unwrap());
    let last = p["height"].as_u64().unwrap();

    // ---- every node agrees: state root, lines, balances ----
    let roots: Vec<Value> = all
        .iter()
        .map(|n| {
            let (status, block) = n.get(&format!("/v1/ledger/blocks/{last}"));
            assert_eq!(status, 200, "{block}");
            block["state_root"].clone()
        })
        .collect();
    assert!(roots.iter().all(|r| *r == roots[0]), "{roots:?}");
    for account in &accounts {
        let acc = account.to_string();
        let lines0 = ok(all[0], &["ledger", "lines", &acc]);
        let balance0 = ok(all[0], &["balance", &acc]);
        for n in &all[1..] {
            assert_eq!(ok(n, &["ledger", "lines", &acc]), lines0, "lines of {acc}");
            assert_eq!(ok(n, &["balance", &acc]), balance0, "balance of {acc}");
        }
    }
    let n = &nodes[ci];
    for (who, usd_v, eur_v) in [
        (a, "319", "60"),
        (b, "400", "40"),
        (c, "55", "300"),
        (d, "25", "200"),
    ] {
        assert_eq!(held(n, &who, "USD", &usd_issuer), usd_v, "{who} USD");
        assert_eq!(held(n, &who, "EUR", &eur_issuer), eur_v, "{who} EUR");
    }
    // The issuers owe what was issued, less the 1 USD transfer fee destroyed.
    let owed = |issuer: &Account, code: &str| -> String {
        ok(n, &["balance", &issuer.to_string()])["issued"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["currency"] == code && l["obligation"] == true)
            .map(|l| l["balance"].as_str().unwrap().to_owned())
            .unwrap()
    };
    assert_eq!(owed(&usd_issuer, "USD"), "-799");
    assert_eq!(owed(&eur_issuer, "EUR"), "-600");
    let issued = ok(n, &["ledger", "lines", &usd_issuer.to_string()]);
    let to_a = issued
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["holder"] == a.to_string())
        .unwrap();
    assert_eq!(to_a["balance"], "-319", "{issued}");
    // AGR moved along the bridge: C got 50,000, D gave them; lines and offers hold reserve.
    let cb = ok(n, &["balance", &c.to_string()]);
    assert_eq!(cb["balance"], START - 4 * FEE + 50_000, "{cb}");
    assert_eq!(cb["reserve"], 4 * RESERVE, "two lines, two offers: {cb}");
    let db = ok(n, &["balance", &d.to_string()]);
    assert_eq!(db["balance"], START - 3 * FEE - 50_000, "{db}");
    assert_eq!(db["reserve"], 3 * RESERVE, "{db}");
    let book = ok(n, &["ledger", "book", "AGR", &usd]);
    assert_eq!(book["asks"][0]["size"], "50000", "{book}");
    assert_eq!(book["asks"][0]["rate"], "0.0005", "{book}");
}

fn tx_outcome(node: &Node, hash: &str) -> Value {
    let (status, v) = node.get(&format!("/v1/ledger/tx/{hash}"));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["kind"], "market", "{v}");
    v["outcome"].clone()
}
