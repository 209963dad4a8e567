//! Messaging commands: `profile`, `contacts`, `send`, `inbox`, `room`, `chat`, `who`.

use std::{
    io::{BufRead, IsTerminal, Read},
    sync::OnceLock,
};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::{ClientArgs, client::Endpoint, output};

#[derive(Subcommand, Debug)]
pub enum ProfileCmd {
    /// Set your nickname, status and/or about text (signed, sent to contacts and rooms).
    Set {
        #[arg(long)]
        nick: Option<String>,
        /// online, away or busy.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        about: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show your profile, or a peer's (by peer id or contact name).
    Show {
        peer: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum ContactsCmd {
    /// Add a peer to your contacts (its presence is then tracked).
    Add {
        peer: String,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a contact (by peer id or name).
    Remove {
        peer: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum RoomCmd {
    /// Join a room: find its members and fetch recent history.
    Join {
        room: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Leave a room and forget its messages.
    Leave {
        room: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Post to a room (joins it first if needed). TEXT `-` reads standard input.
    Post {
        room: String,
        #[arg(required = true)]
        text: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a room's messages.
    Read {
        room: String,
        /// Keep printing new messages as they arrive.
        #[arg(long, short)]
        follow: bool,
        /// How many recent messages to show.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Members of a room with their presence.
    Members {
        room: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Rooms this node has joined.
    List(ClientArgs),
}

fn local_offset() -> time::UtcOffset {
    static OFFSET: OnceLock<time::UtcOffset> = OnceLock::new();
    *OFFSET.get_or_init(|| time::UtcOffset::current_local_offset().unwrap_or(time::UtcOffset::UTC))
}

/// `2026-11-25 22:14:45` in local time.
pub fn when(ms: u64) -> String {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) else {
        return "-".into();
    };
    let t = t.to_offset(local_offset());
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// `nick (…abcd1234)` or the short id alone.
fn who_label(v: &Value) -> String {
    let short = v["short_id"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| output::short_id(s(&v["peer_id"])));
    match v["nick"].as_str() {
        Some(n) => format!("{n} ({short})"),
        None => short,
    }
}

fn text_arg(words: &[String]) -> Result<String> {
    if words.len() == 1 && words[0] == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the message from standard input")?;
        let text = text.trim_end_matches('\n').to_owned();
        if text.is_empty() {
            bail!("the message read from standard input is empty");
        }
        return Ok(text);
    }
    let text = words.join(" ");
    if text.trim().is_empty() {
        bail!("the message is empty");
    }
    Ok(text)
}

pub fn profile(cmd: ProfileCmd) -> Result<()> {
    let (v, json_out): (Value, bool) = match cmd {
        ProfileCmd::Set {
            nick,
            status,
            about,
            client,
        } => {
            if nick.is_none() && status.is_none() && about.is_none() {
                bail!("nothing to set: pass --nick, --status and/or --about");
            }
            let ep = Endpoint::resolve(&client)?;
            (
                ep.post(
                    "/v1/chat/profile",
                    &json!({ "nick": nick, "status": status, "about": about }),
                )?,
                client.json,
            )
        }
        ProfileCmd::Show { peer, client } => {
            let ep = Endpoint::resolve(&client)?;
            let path = match &peer {
                Some(p) => format!("/v1/chat/profile?peer={}", urlencode(p)),
                None => "/v1/chat/profile".to_owned(),
            };
            (ep.get(&path)?, client.json)
        }
    };
    output::print(json_out, &v, |v| {
        let mut out = format!(
            "{}\npeer id: {}\nstatus:  {}",
            who_label(v),
            s(&v["peer_id"]),
            s(&v["status"])
        );
        if let Some(a) = v["about"].as_str().filter(|a| !a.is_empty()) {
            out.push_str(&format!("\nabout:   {a}"));
        }
        out
    })
}

fn peer_table(v: &Value) -> String {
    let list = v.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return "nobody yet".into();
    }
    let mut out = format!(
        "{:<32} {:<8} {:<20} {}",
        "PEER", "STATUS", "LAST SEEN", "CONTACT"
    );
    for p in list {
        out.push_str(&format!(
            "\n{:<32} {:<8} {:<20} {}",
            who_label(&p),
            s(&p["status"]),
            p["last_seen"]
                .as_u64()
                .map(when)
                .unwrap_or_else(|| "never".into()),
            p["contact"]
                .as_str()
                .unwrap_or(if p["is_contact"].as_bool() == Some(true) {
                    "yes"
                } else {
                    ""
                }),
        ));
    }
    out
}

pub fn contacts(cmd: Option<ContactsCmd>, list_client: &ClientArgs) -> Result<()> {
    match cmd {
        None => {
            let ep = Endpoint::resolve(list_client)?;
            let v: Value = ep.get("/v1/chat/contacts")?;
            output::print(list_client.json, &v, |v| {
                if v.as_array().is_some_and(|a| a.is_empty()) {
                    "no contacts yet (add one with `agora contacts add PEER --name NAME`)".into()
                } else {
                    peer_table(v)
                }
            })
        }
        Some(ContactsCmd::Add { peer, name, client }) => {
            let ep = Endpoint::resolve(&client)?;
            let v: Value = ep.post("/v1/chat/contacts", &json!({ "peer": peer, "name": name }))?;
            output::print(client.json, &v, |v| {
                format!("added {} — {}", who_label(v), s(&v["status"]))
            })
        }
        Some(ContactsCmd::Remove { peer, client }) => {
            let ep = Endpoint::resolve(&client)?;
            let v: Value = ep.post("/v1/chat/contacts/remove", &json!({ "peer": peer }))?;
            output::print(client.json, &v, |v| format!("removed {}", s(&v["peer_id"])))
        }
    }
}

pub fn send(client: &ClientArgs, to: &str, words: &[String]) -> Result<()> {
    let text = text_arg(words)?;
    let ep = Endpoint::resolve(client)?;
    let v: Value = ep.post("/v1/chat/send", &json!({ "to": to, "text": text }))?;
    let state = s(&v["state"]).to_owned();
    output::print(client.json, &v, |v| match s(&v["state"]) {
        "delivered" => format!("delivered to {}", output::short_id(s(&v["to"]))),
        "stored" => format!(
            "{} is offline: stored in its mailbox at {} peer(s); it gets the message when it comes online",
            output::short_id(s(&v["to"])),
            v["holders"]
        ),
        _ => "not delivered".into(),
    })?;
    if state == "queued" {
        let notes: Vec<&str> = v["notes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        bail!(
            "the message could be neither delivered nor stored in a mailbox ({}); it stays queued on this node and is re-sent when the peer is reachable",
            notes.join("; ")
        );
    }
    Ok(())
}

fn print_message(m: &Value) {
    let incoming = m["direction"] == "in";
    let arrow = if incoming { "from" } else { "to" };
    println!(
        "[{}] {arrow} {} ({}): {}",
        when(m["sent_at"].as_u64().unwrap_or(0)),
        who_label(m),
        s(&m["state"]),
        s(&m["text"])
    );
}

pub struct InboxArgs {
    pub follow: bool,
    pub sent: bool,
    pub all: bool,
    pub unread: bool,
    pub peer: Option<String>,
    pub limit: usize,
}

pub fn inbox(client: &ClientArgs, a: InboxArgs) -> Result<()> {
    let ep = Endpoint::resolve(client)?;
    let direction = if a.all {
        "all"
    } else if a.sent {
        "out"
    } else {
        "in"
    };
    let mut base = format!("/v1/chat/messages?direction={direction}&mark_read=true");
    if a.unread {
        base.push_str("&unread=true");
    }
    if let Some(p) = &a.peer {
        base.push_str(&format!("&peer={}", urlencode(p)));
    }
    // Following goes on from the highest number stored, not only from those that matched,
    // so as not to list old ones again. It is taken before the first page: a message that
    // arrives after it is in that page or comes in the loop below (taken after the page, one
    // that arrived in between was never shown).
    let top = if a.follow {
        let top: Value = ep.get("/v1/chat/messages?direction=all&limit=1")?;
        top["cursor"].as_u64().unwrap_or(0)
    } else {
        0
    };
    let page: Value = ep.get(&format!("{base}&limit={}", a.limit))?;
    let mut cursor = page["cursor"].as_u64().unwrap_or(0);
    let messages = page["messages"].as_array().cloned().unwrap_or_default();
    if client.json && !a.follow {
        println!("{}", serde_json::to_string_pretty(&page["messages"])?);
        return Ok(());
    }
    emit(client.json, &messages);
    if !a.follow {
        if messages.is_empty() {
            println!("no messages");
        }
        return Ok(());
    }
    cursor = cursor.max(top);
    loop {
        let page: Value = ep.get(&format!("{base}&after={cursor}&wait=25&limit=100"))?;
        cursor = page["cursor"].as_u64().unwrap_or(cursor);
        emit(
            client.json,
            &page["messages"].as_array().cloned().unwrap_or_default(),
        );
    }
}

/// Prints messages as text, or one JSON object per line.
fn emit(json: bool, messages: &[Value]) {
    for m in messages {
        if json {
            println!("{m}");
        } else {
            print_message(m);
        }
    }
}

fn print_post(p: &Value) {
    let who = if p["mine"] == true {
        "you".to_owned()
    } else {
        who_label(p)
    };
    println!(
        "[{}] {who}: {}",
        when(p["sent_at"].as_u64().unwrap_or(0)),
        s(&p["text"])
    );
}

pub fn room(cmd: RoomCmd) -> Result<()> {
    match cmd {
        RoomCmd::Join { room, client } => {
            let ep = Endpoint::resolve(&client)?;
            let v: Value = ep.post("/v1/chat/rooms/join", &json!({ "room": room }))?;
            output::print(client.json, &v, |v| {
                let mut out = format!(
                    "joined {}: {} member(s) connected, {} message(s) of history",
                    s(&v["room"]),
                    v["members"],
                    v["history"]
                );
                if v["rejected"].as_u64().unwrap_or(0) > 0 {
                    out.push_str(&format!("; {} forged message(s) dropped", v["rejected"]));
                }
                out
            })
        }
        RoomCmd::Leave { room, client } => {
            let ep = Endpoint::resolve(&client)?;
            let v: Value = ep.post("/v1/chat/rooms/leave", &json!({ "room": room }))?;
            output::print(client.json, &v, |v| format!("left {}", s(&v["room"])))
        }
        RoomCmd::Post { room, text, client } => {
            let text = text_arg(&text)?;
            let ep = Endpoint::resolve(&client)?;
            let v: Value = ep.post(
                "/v1/chat/rooms/post",
                &json!({ "room": room, "text": text }),
            )?;
            output::print(client.json, &v, |v| {
                format!(
                    "posted to {} ({} member(s) connected)",
                    s(&v["room"]),
                    v["peers"]
                )
            })
        }
        RoomCmd::Read {
            room,
            follow,
            limit,
            client,
        } => {
            let ep = Endpoint::resolve(&client)?;
            let path = format!("/v1/chat/rooms/{}/messages", urlencode(&room));
            let page: Value = ep.get(&format!("{path}?limit={limit}"))?;
            let mut posts = page["messages"].as_array().cloned().unwrap_or_default();
            posts.sort_by_key(|p| p["sent_at"].as_u64().unwrap_or(0));
            if client.json && !follow {
                println!("{}", serde_json::to_string_pretty(&posts)?);
                return Ok(());
            }
            for p in &posts {
                if client.json {
                    println!("{p}");
                } else {
                    print_post(p);
                }
            }
            if !follow {
                if posts.is_empty() {
                    println!("no messages in {room} yet");
                }
                return Ok(());
            }
            let mut cursor = page["cursor"].as_u64().unwrap_or(0);
            loop {
                let page: Value = ep.get(&format!("{path}?after={cursor}&wait=25&limit=100"))?;
                cursor = page["cursor"].as_u64().unwrap_or(cursor);
                for p in page["messages"].as_array().into_iter().flatten() {
                    if client.json {
                        println!("{p}");
                    } else {
                        print_post(p);
                    }
                }
            }
        }
        RoomCmd::Members { room, client } => {
            let ep = Endpoint::resolve(&client)?;
            let v: Value = ep.get(&format!("/v1/chat/rooms/{}/members", urlencode(&room)))?;
            output::print(client.json, &v, peer_table)
        }
        RoomCmd::List(client) => {
            let ep = Endpoint::resolve(&client)?;
            let v: Value = ep.get("/v1/chat/rooms")?;
            output::print(client.json, &v, |v| {
                let list = v.as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    return "no rooms joined (join one with `agora room join NAME`)".into();
                }
                let mut out = format!("{:<24} {:>8} {:>9}", "ROOM", "MEMBERS", "MESSAGES");
                for r in list {
                    out.push_str(&format!(
                        "\n{:<24} {:>8} {:>9}",
                        s(&r["room"]),
                        r["members"].as_u64().unwrap_or(0),
                        r["messages"].as_u64().unwrap_or(0)
                    ));
                }
                out
            })
        }
    }
}

pub fn who(client: &ClientArgs) -> Result<()> {
    let ep = Endpoint::resolve(client)?;
    let v: Value = ep.get("/v1/chat/who")?;
    if client.json {
        // The documented shape: peer_id, nick, status, last_seen (plus extras).
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("{}", peer_table(&v));
    Ok(())
}

/// Interactive chat with a room or a peer: lines typed are sent, incoming ones printed.
pub fn interactive(client: &ClientArgs, target: &str) -> Result<()> {
    let ep = Endpoint::resolve(client)?;
    // A peer id or contact name means a conversation; anything else is a room.
    let me: Value = ep.get("/v1/id")?;
    let contacts: Value = ep.get("/v1/chat/contacts")?;
    let is_peer = target.starts_with("12D3Koo")
        || contacts
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["contact"].as_str() == Some(target));
    let interactive = std::io::stdin().is_terminal();
    let watcher = {
        let ep = Endpoint::resolve(client)?;
        let target = target.to_owned();
        if is_peer {
            let top: Value = ep.get("/v1/chat/messages?direction=all&limit=1")?;
            let mut cursor = top["cursor"].as_u64().unwrap_or(0);
            std::thread::spawn(move || -> Result<()> {
                let base = format!(
                    "/v1/chat/messages?direction=in&mark_read=true&peer={}",
                    urlencode(&target)
                );
                loop {
                    let page: Value = ep.get(&format!("{base}&after={cursor}&wait=25"))?;
                    cursor = page["cursor"].as_u64().unwrap_or(cursor);
                    for m in page["messages"].as_array().into_iter().flatten() {
                        print_message(m);
                    }
                }
            })
        } else {
            let joined: Value = ep.post("/v1/chat/rooms/join", &json!({ "room": target }))?;
            eprintln!(
                "in {}: {} member(s) connected; type to post, /who for members, /quit to leave",
                s(&joined["room"]),
                joined["members"]
            );
            let path = format!("/v1/chat/rooms/{}/messages", urlencode(&target));
            let recent: Value = ep.get(&format!("{path}?limit=20"))?;
            let mut posts = recent["messages"].as_array().cloned().unwrap_or_default();
            posts.sort_by_key(|p| p["sent_at"].as_u64().unwrap_or(0));
            posts.iter().for_each(print_post);
            let mut cursor = recent["cursor"].as_u64().unwrap_or(0);
            std::thread::spawn(move || -> Result<()> {
                loop {
                    let page: Value = ep.get(&format!("{path}?after={cursor}&wait=25"))?;
                    cursor = page["cursor"].as_u64().unwrap_or(cursor);
                    for p in page["messages"].as_array().into_iter().flatten() {
                        if p["mine"] != true {
                            print_post(p);
                        }
                    }
                }
            })
        }
    };
    if is_peer {
        eprintln!(
            "chatting with {target} as {}; /who shows its presence, /quit leaves",
            output::short_id(s(&me["peer_id"]))
        );
    }
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line = line.context("cannot read standard input")?;
        let line = line.trim_end();
        if watcher.is_finished() {
            break;
        }
        match line {
            "" => continue,
            "/quit" | "/exit" => return Ok(()),
            "/who" => {
                let v: Value = if is_peer {
                    let all: Value = ep.get("/v1/chat/who")?;
                    Value::Array(
                        all.as_array()
                            .into_iter()
                            .flatten()
                            .filter(|p| {
                                p["peer_id"].as_str() == Some(target)
                                    || p["contact"].as_str() == Some(target)
                            })
                            .cloned()
                            .collect(),
                    )
                } else {
                    ep.get(&format!("/v1/chat/rooms/{}/members", urlencode(target)))?
                };
                println!("{}", peer_table(&v));
            }
            text if text.starts_with('/') => {
                eprintln!("unknown command {text:?}: /who lists who is here, /quit leaves");
            }
            text => {
                if is_peer {
                    let v: Value =
                        ep.post("/v1/chat/send", &json!({ "to": target, "text": text }))?;
                    if interactive || v["state"] != "delivered" {
                        eprintln!("  ({})", s(&v["state"]));
                    }
                } else {
                    ep.post::<Value>(
                        "/v1/chat/rooms/post",
                        &json!({ "room": target, "text": text }),
                    )?;
                }
            }
        }
    }
    // Standard input ended (Ctrl-D or the end of piped input).
    if watcher.is_finished() {
        match watcher.join() {
            Ok(result) => result?,
            Err(_) => bail!("the message watcher stopped unexpectedly"),
        }
    }
    Ok(())
}

/// Percent-encodes a query value (peer ids and names are mostly safe, contact names may not be).
fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
