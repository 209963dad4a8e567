//! `agora share`, `get`, `files`, `unshare`, `pin`.

use std::{
    io::IsTerminal,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::{
    ClientArgs,
    client::Endpoint,
    output::{self, bytes, short_id},
};

/// `path` made absolute against the current directory (the node resolves paths on its own).
pub(crate) fn absolute(path: &Path) -> Result<PathBuf> {
    Ok(if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()
            .context("cannot read the current directory")?
            .join(path)
    })
}

/// Polls a job until it ends, drawing a progress bar on a terminal. Returns its result.
fn follow(ep: &Endpoint, job: u64, verb: &str) -> Result<Value> {
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(verb.to_owned());
        bar
    });
    loop {
        let v: Value = ep.get(&format!("/v1/jobs/{job}"))?;
        if let Some(bar) = &bar {
            bar.set_length(v["total_bytes"].as_u64().unwrap_or(0));
            bar.set_position(v["done_bytes"].as_u64().unwrap_or(0));
            let peers = v["peers"].as_u64().unwrap_or(0);
            if peers > 0 {
                bar.set_message(format!("{peers} peer(s)"));
            }
        }
        match v["state"].as_str() {
            Some("running") => std::thread::sleep(Duration::from_millis(50)),
            Some("done") => {
                if let Some(bar) = &bar {
                    bar.finish_and_clear();
                }
                for banned in v["banned"].as_array().into_iter().flatten() {
                    eprintln!(
                        "banned provider {} (sent data that did not match the hash)",
                        banned.as_str().unwrap_or("?")
                    );
                }
                return Ok(v["result"].clone());
            }
            _ => {
                if let Some(bar) = &bar {
                    bar.abandon();
                }
                bail!("{}", v["error"].as_str().unwrap_or("the job failed"));
            }
        }
    }
}

pub fn share(args: &ClientArgs, path: &Path, pin: bool, copy: bool) -> Result<()> {
    let ep = Endpoint::resolve(args)?;
    let path = absolute(path)?;
    let started: Value = ep.post(
        "/v1/files/share",
        &json!({ "path": path, "pin": pin, "copy": copy }),
    )?;
    let result = follow(&ep, started["job"].as_u64().unwrap_or(0), "hashing")?;
    output::print(args.json, &result, |v| {
        format!(
            "shared {} ({})\nhash:   {}\nticket: {}",
            v["name"].as_str().unwrap_or("?"),
            bytes(v["size"].as_u64().unwrap_or(0)),
            v["hash"].as_str().unwrap_or("?"),
            v["ticket"].as_str().unwrap_or("?"),
        )
    })
}

pub fn get(args: &ClientArgs, target: &str, out: &Path) -> Result<()> {
    let ep = Endpoint::resolve(args)?;
    let out = absolute(out)?;
    let started: Value = ep.post("/v1/files/get", &json!({ "target": target, "out": out }))?;
    let result = follow(&ep, started["job"].as_u64().unwrap_or(0), "fetching")?;
    output::print(args.json, &result, |v| {
        let what = if v["collection"].as_bool() == Some(true) {
            format!("{} files", v["files"].as_u64().unwrap_or(0))
        } else {
            "file".into()
        };
        format!(
            "saved {what} ({}) to {}",
            bytes(v["size"].as_u64().unwrap_or(0)),
            v["path"].as_str().unwrap_or("?")
        )
    })
}

pub fn list(args: &ClientArgs) -> Result<()> {
    let files: Value = Endpoint::resolve(args)?.get("/v1/files")?;
    output::print(args.json, &files, |v| {
        let list = v.as_array().cloned().unwrap_or_default();
        if list.is_empty() {
            return "no files (share one with `agora share PATH`)".into();
        }
        let mut out = format!("{:<20} {:<7} {:>10}  NAME", "HASH", "KIND", "SIZE");
        for f in &list {
            let mut kind = f["kind"].as_str().unwrap_or("?").to_owned();
            if f["collection"].as_bool() == Some(true) {
                kind.push('/');
            }
            let mut name = f["name"].as_str().unwrap_or("").to_owned();
            if f["stale"].as_bool() == Some(true) {
                name.push_str("  (changed on disk: not served)");
            }
            out.push_str(&format!(
                "\n{:<20} {:<7} {:>10}  {}",
                short_id(f["hash"].as_str().unwrap_or("")),
                kind,
                bytes(f["size"].as_u64().unwrap_or(0)),
                name
            ));
        }
        out
    })
}

pub fn unshare(args: &ClientArgs, hash: &str) -> Result<()> {
    let v: Value = Endpoint::resolve(args)?.post("/v1/files/unshare", &json!({ "hash": hash }))?;
    output::print(args.json, &v, |v| {
        format!("no longer sharing {}", v["name"].as_str().unwrap_or(hash))
    })
}

pub fn pin(args: &ClientArgs, hash: &str) -> Result<()> {
    let v: Value = Endpoint::resolve(args)?.post("/v1/files/pin", &json!({ "hash": hash }))?;
    output::print(args.json, &v, |v| {
        format!(
            "{} is {}",
            v["name"].as_str().unwrap_or(hash),
            v["kind"].as_str().unwrap_or("?")
        )
    })
}

pub fn search(args: &ClientArgs, words: &[String]) -> Result<()> {
    let ep = Endpoint::resolve(args)?;
    let query: String = words.join(" ");
    let mut url = String::from("/v1/search?q=");
    for b in query.bytes() {
        if b.is_ascii_alphanumeric() {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    let hits: Value = ep.get(&url)?;
    output::print(args.json, &hits, |v| {
        let list = v.as_array().cloned().unwrap_or_default();
        if list.is_empty() {
            return format!("nothing found for {query:?}");
        }
        let mut out = format!("{:<64} {:>10} {:>9}  NAME", "HASH", "SIZE", "PROVIDERS");
        for h in &list {
            out.push_str(&format!(
                "\n{:<64} {:>10} {:>9}  {}",
                h["hash"].as_str().unwrap_or(""),
                bytes(h["size"].as_u64().unwrap_or(0)),
                h["providers"].as_u64().unwrap_or(0),
                h["name"].as_str().unwrap_or("")
            ));
        }
        out
    })
}
