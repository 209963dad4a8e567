//! `agora space`, `agora doc`, `agora task`: groupware. A space is a group of members with
//! roles (admin, editor, reader); its documents — notes, task lists, threads, forms — are kept
//! by every member, edited offline and merged without conflicts by the node. These commands
//! drive the node's `/v1/spaces`, `/v1/docs` and `/v1/tasks` API.

use std::{
    fs,
    io::{IsTerminal, Read, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    process::Command,
    str::FromStr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::{
    ClientArgs,
    chat::when,
    client::Endpoint,
    output::{self, short_id},
};

/// A member's rights in a space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// Edits documents and manages members.
    Admin,
    /// Edits documents.
    Editor,
    /// Reads documents.
    Reader,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Editor => "editor",
            Role::Reader => "reader",
        }
    }
}

/// What a document holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// Free text.
    Note,
    /// A task list (`agora task ...`).
    Tasks,
    /// A discussion of posts and replies (`agora doc post`).
    Thread,
    /// Named fields, a JSON object (`agora doc set`).
    Form,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Note => "note",
            Kind::Tasks => "tasks",
            Kind::Thread => "thread",
            Kind::Form => "form",
        }
    }
}

/// What `agora doc export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Markdown.
    Md,
    /// The document as JSON (what `agora doc show --json` prints).
    Json,
}

impl Format {
    fn as_str(self) -> &'static str {
        match self {
            Format::Md => "md",
            Format::Json => "json",
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum SpaceCmd {
    /// Create a space; you are its owner and first admin.
    Create {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Spaces this node is a member of, or (--invites) invites waiting to be joined.
    List {
        /// Show the pending invites instead.
        #[arg(long)]
        invites: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A space: owner, your role, members and documents.
    Show {
        space: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Members of a space with their roles.
    Members {
        space: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Invite a peer (admins only); it joins with `agora space join SPACE`.
    Invite {
        space: String,
        /// The peer id to invite (`agora id` on that node prints it).
        #[arg(value_parser = parse_peer)]
        peer: String,
        #[arg(long, value_enum, default_value_t = Role::Editor)]
        role: Role,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Accept an invite: become a member and fetch the space's documents.
    Join {
        space: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a member (admins only); its later changes are refused by every member.
    Remove {
        space: String,
        #[arg(value_parser = parse_peer)]
        peer: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a member's role (admins only).
    Role {
        space: String,
        #[arg(value_parser = parse_peer)]
        peer: String,
        #[arg(value_enum)]
        role: Role,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Leave a space and forget its documents.
    Leave {
        space: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum DocCmd {
    /// Create a document in a space.
    New {
        space: String,
        title: String,
        #[arg(long, value_enum, default_value_t = Kind::Note)]
        kind: Kind,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Documents of a space.
    List {
        space: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A document: its text, tasks, posts or fields.
    Show {
        doc: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Replace a note's text with standard input (merged as an edit, not an overwrite).
    Write {
        doc: String,
        /// Write even if standard input is empty (clears the note).
        #[arg(long)]
        allow_empty: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Add a line at the end of a note. TEXT `-` reads standard input (added as it is).
    Append {
        doc: String,
        #[arg(required = true)]
        text: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Edit a note in $VISUAL or $EDITOR (default vi); saved when the editor exits with 0.
    Edit {
        doc: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The changes made to a document: when, by whom.
    History {
        doc: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Write a document out as Markdown or JSON.
    Export {
        doc: String,
        #[arg(long, value_enum, default_value_t = Format::Md)]
        format: Format,
        /// The file to write (default: standard output).
        #[arg(long, short)]
        out: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Attach a file to a document: the node shares it (pinned) and the document names it by
    /// hash; members fetch it with `agora get HASH -o PATH`.
    Attach {
        doc: String,
        file: std::path::PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Post to a thread. TEXT `-` reads standard input.
    Post {
        doc: String,
        #[arg(required = true)]
        text: Vec<String>,
        /// The post this one answers.
        #[arg(long)]
        reply_to: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Set a form's fields to the JSON object in FILE (`-`: standard input); fields not in it
    /// are removed.
    Set {
        doc: String,
        #[arg(value_name = "FILE")]
        source: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum TaskCmd {
    /// Add a task to a task list.
    Add {
        doc: String,
        title: String,
        /// The peer who should do it.
        #[arg(long, value_name = "PEER", value_parser = parse_peer)]
        assign: Option<String>,
        /// Due date.
        #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date)]
        due: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Mark a task done.
    Done {
        doc: String,
        task: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Mark a task as being worked on (state "doing").
    Start {
        doc: String,
        task: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Give a task to a peer.
    Assign {
        doc: String,
        task: String,
        #[arg(value_parser = parse_peer)]
        peer: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Tasks of every space this node is in.
    List {
        /// Only the tasks assigned to this node.
        #[arg(long)]
        mine: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub fn space(cmd: SpaceCmd) -> Result<()> {
    match cmd {
        SpaceCmd::Create { name, client } => {
            if name.trim().is_empty() {
                bail!("the space name is empty");
            }
            let v: Value =
                Endpoint::resolve(&client)?.post("/v1/spaces", &json!({ "name": name }))?;
            output::print(client.json, &v, |v| {
                format!(
                    "created space {} ({})\ninvite members with `agora space invite {} PEER`",
                    s(&v["name"]),
                    s(&v["space"]),
                    s(&v["space"])
                )
            })
        }
        SpaceCmd::List { invites, client } => {
            let v: Value = Endpoint::resolve(&client)?.get("/v1/spaces")?;
            if invites {
                let v = json!({ "invites": v["invites"] });
                output::print(client.json, &v, invites_table)
            } else {
                output::print(client.json, &v, spaces_table)
            }
        }
        SpaceCmd::Show { space, client } => {
            let v: Value = Endpoint::resolve(&client)?.get(&space_path(&space, ""))?;
            output::print(client.json, &v, space_details)
        }
        SpaceCmd::Members { space, client } => {
            let v: Value = Endpoint::resolve(&client)?.get(&space_path(&space, ""))?;
            output::print(client.json, &v, members_table)
        }
        SpaceCmd::Invite {
            space,
            peer,
            role,
            client,
        } => {
            let v: Value = Endpoint::resolve(&client)?.post(
                &space_path(&space, "/invite"),
                &json!({ "peer": peer, "role": role.as_str() }),
            )?;
            output::print(client.json, &v, |v| {
                let mut out = format!("invited {} as {}", s(&v["peer"]), s(&v["role"]));
                if v["delivered"] == true {
                    out.push_str(&format!(
                        "; they join with `agora space join {}`",
                        s(&v["space"])
                    ));
                } else {
                    out.push_str(
                        "; not delivered yet: the peer is not reachable now, the node sends the invite when it is",
                    );
                }
                out
            })
        }
        SpaceCmd::Join { space, client } => {
            let v: Value =
                Endpoint::resolve(&client)?.post(&space_path(&space, "/join"), &json!({}))?;
            output::print(client.json, &v, |v| {
                format!(
                    "joined space {} ({}) as {}: {} member(s), {} document(s)",
                    s(&v["name"]),
                    s(&v["space"]),
                    s(&v["role"]),
                    len(&v["members"]),
                    len(&v["docs"])
                )
            })
        }
        SpaceCmd::Remove {
            space,
            peer,
            client,
        } => {
            let v: Value = Endpoint::resolve(&client)?
                .post(&space_path(&space, "/remove"), &json!({ "peer": peer }))?;
            output::print(client.json, &v, |v| {
                format!("removed {} from space {}", s(&v["peer"]), s(&v["space"]))
            })
        }
        SpaceCmd::Role {
            space,
            peer,
            role,
            client,
        } => {
            let v: Value = Endpoint::resolve(&client)?.post(
                &space_path(&space, "/role"),
                &json!({ "peer": peer, "role": role.as_str() }),
            )?;
            output::print(client.json, &v, |v| {
                format!(
                    "{} is now {} in space {}",
                    s(&v["peer"]),
                    s(&v["role"]),
                    s(&v["space"])
                )
            })
        }
        SpaceCmd::Leave { space, client } => {
            let v: Value =
                Endpoint::resolve(&client)?.post(&space_path(&space, "/leave"), &json!({}))?;
            output::print(client.json, &v, |v| {
                format!("left space {}", s(&v["space"]))
            })
        }
    }
}

pub fn doc(cmd: DocCmd) -> Result<()> {
    match cmd {
        DocCmd::New {
            space,
            title,
            kind,
            client,
        } => {
            if title.trim().is_empty() {
                bail!("the title is empty");
            }
            let v: Value = Endpoint::resolve(&client)?.post(
                &space_path(&space, "/docs"),
                &json!({ "title": title, "kind": kind.as_str() }),
            )?;
            output::print(client.json, &v, |v| {
                let doc = s(&v["doc"]);
                let next = match s(&v["kind"]) {
                    "tasks" => format!("add tasks with `agora task add {doc} TITLE`"),
                    "thread" => format!("post with `agora doc post {doc} TEXT`"),
                    "form" => format!("fill it with `agora doc set {doc} FILE.json`"),
                    _ => format!(
                        "write it with `agora doc edit {doc}` or `agora doc write {doc} < FILE`"
                    ),
                };
                format!(
                    "created {} \"{}\" ({doc})\n{next}",
                    s(&v["kind"]),
                    s(&v["title"])
                )
            })
        }
        DocCmd::List { space, client } => {
            let v: Value = Endpoint::resolve(&client)?.get(&space_path(&space, "/docs"))?;
            output::print(client.json, &v, docs_table)
        }
        DocCmd::Show { doc, client } => {
            let v: Value = Endpoint::resolve(&client)?.get(&doc_path(&doc, ""))?;
            output::print(client.json, &v, doc_details)
        }
        DocCmd::Write {
            doc,
            allow_empty,
            client,
        } => {
            let mut stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!("type the new text of {doc}, then Ctrl-D on a line of its own");
            }
            let mut text = String::new();
            stdin
                .read_to_string(&mut text)
                .context("cannot read the new text from standard input (it must be UTF-8)")?;
            if text.is_empty() && !allow_empty {
                bail!(
                    "standard input was empty, so nothing was written (to clear the note on purpose, pass --allow-empty)"
                );
            }
            let ep = Endpoint::resolve(&client)?;
            let v = put(&ep, &doc_path(&doc, "/text"), &json!({ "text": text }))
                .map_err(|e| explain_write(&ep, &doc, e))?;
            output::print(client.json, &v, text_written)
        }
        DocCmd::Append { doc, text, client } => {
            let stdin = text.len() == 1 && text[0] == "-";
            let mut text = text_arg(&text)?;
            // Words are a line, as `echo` prints them; standard input is taken as it is.
            if !stdin && !text.ends_with('\n') {
                text.push('\n');
            }
            let ep = Endpoint::resolve(&client)?;
            let v: Value = ep
                .post(&doc_path(&doc, "/append"), &json!({ "text": text }))
                .map_err(|e| explain_write(&ep, &doc, e))?;
            output::print(client.json, &v, |v| format!("appended to {}", s(&v["doc"])))
        }
        DocCmd::Edit { doc, client } => edit(&client, &doc),
        DocCmd::History { doc, client } => {
            let v: Value = Endpoint::resolve(&client)?.get(&doc_path(&doc, "/history"))?;
            output::print(client.json, &v, history_table)
        }
        DocCmd::Export {
            doc,
            format,
            out,
            client,
        } => {
            let ep = Endpoint::resolve(&client)?;
            let mut body = get_text(
                &ep,
                &format!("{}?format={}", doc_path(&doc, "/export"), format.as_str()),
            )?;
            if !body.ends_with('\n') {
                body.push('\n');
            }
            let Some(out) = out else {
                print!("{body}");
                return Ok(());
            };
            fs::write(&out, &body).with_context(|| format!("cannot write {}", out.display()))?;
            let v = json!({
                "doc": doc,
                "format": format.as_str(),
                "out": out,
                "bytes": body.len(),
            });
            output::print(client.json, &v, |v| {
                format!("wrote {} ({} bytes)", out.display(), v["bytes"])
            })
        }
        DocCmd::Attach { doc, file, client } => {
            let path = crate::files::absolute(&file)?;
            if !path.is_file() {
                anyhow::bail!("{} is not a file", path.display());
            }
            let ep = Endpoint::resolve(&client)?;
            let v: Value = ep
                .post(
                    &doc_path(&doc, "/attach"),
                    &json!({ "path": path.display().to_string() }),
                )
                .map_err(|e| explain_write(&ep, &doc, e))?;
            output::print(client.json, &v, |v| {
                format!(
                    "attached {} ({} bytes) to {}\nfetch it with: agora get {} -o {}",
                    s(&v["name"]),
                    v["size"],
                    s(&v["doc"]),
                    s(&v["hash"]),
                    s(&v["name"])
                )
            })
        }
        DocCmd::Post {
            doc,
            text,
            reply_to,
            client,
        } => {
            let text = text_arg(&text)?;
            let ep = Endpoint::resolve(&client)?;
            let v: Value = ep
                .post(
                    &doc_path(&doc, "/posts"),
                    &json!({ "text": text, "reply_to": reply_to }),
                )
                .map_err(|e| explain_write(&ep, &doc, e))?;
            output::print(client.json, &v, |v| {
                format!("posted {} to {}", s(&v["post"]), s(&v["doc"]))
            })
        }
        DocCmd::Set {
            doc,
            source,
            client,
        } => {
            // Checked before the node is asked anything: a form is one JSON object.
            let (text, from) = if source == "-" {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("cannot read the fields from standard input (it must be UTF-8)")?;
                (text, "standard input".to_owned())
            } else {
                let text =
                    fs::read_to_string(&source).with_context(|| format!("cannot read {source}"))?;
                (text, source.clone())
            };
            let fields = fields_object(&text, &from)?;
            let ep = Endpoint::resolve(&client)?;
            let v = put(&ep, &doc_path(&doc, "/fields"), &fields)
                .map_err(|e| explain_write(&ep, &doc, e))?;
            output::print(client.json, &v, |v| {
                format!("set {} field(s) of {}", len(&fields), s(&v["doc"]))
            })
        }
    }
}

pub fn task(cmd: TaskCmd) -> Result<()> {
    // Every command but `list` is one POST to a task list; `what` is its human summary.
    let (client, doc, path, body, what) = match cmd {
        TaskCmd::List { mine, client } => {
            let v: Value = Endpoint::resolve(&client)?.get(&format!("/v1/tasks?mine={mine}"))?;
            return output::print(client.json, &v, |v| tasks_table(&v["tasks"], mine));
        }
        TaskCmd::Add {
            doc,
            title,
            assign,
            due,
            client,
        } => {
            if title.trim().is_empty() {
                bail!("the task's title is empty");
            }
            let path = doc_path(&doc, "/tasks");
            let body = json!({ "title": title, "assign": assign, "due": due });
            (client, doc, path, body, "added".to_owned())
        }
        TaskCmd::Done { doc, task, client } => {
            let path = task_path(&doc, &task);
            let body = json!({ "state": "done" });
            (client, doc, path, body, "is done".to_owned())
        }
        TaskCmd::Start { doc, task, client } => {
            let path = task_path(&doc, &task);
            let body = json!({ "state": "doing" });
            (client, doc, path, body, "is being done".to_owned())
        }
        TaskCmd::Assign {
            doc,
            task,
            peer,
            client,
        } => {
            let path = task_path(&doc, &task);
            let what = format!("is assigned to {peer}");
            (client, doc, path, json!({ "assign": peer }), what)
        }
    };
    let ep = Endpoint::resolve(&client)?;
    let v: Value = ep
        .post(&path, &body)
        .map_err(|e| explain_write(&ep, &doc, e))?;
    output::print(client.json, &v, |v| {
        format!("task {} {what} (in {})", s(&v["task"]), s(&v["doc"]))
    })
}

/// `doc edit`: the note in a temporary file, the user's editor, then the new text if it changed.
fn edit(client: &ClientArgs, doc: &str) -> Result<()> {
    let ep = Endpoint::resolve(client)?;
    let before: Value = ep.get(&doc_path(doc, ""))?;
    let kind = s(&before["kind"]);
    if kind != "note" {
        bail!(
            "{doc} is a {kind} document, not a note: only notes have text to edit ({})",
            match kind {
                "tasks" => "use `agora task add|done|start|assign`",
                "thread" => "use `agora doc post`",
                "form" => "use `agora doc set`",
                _ => "see `agora doc show`",
            }
        );
    }
    // Refuse before the user spends time in the editor.
    if let Some(refusal) = reader_refusal(&ep, &before) {
        bail!(refusal);
    }
    let text = before["text"].as_str().unwrap_or_default().to_owned();
    let file = TempText::create(doc, &text)?;
    let editor = editor();
    run_editor(&editor, file.path())?;
    let edited = fs::read_to_string(file.path())
        .with_context(|| format!("cannot read back {}", file.path().display()))?;
    if edited == text {
        let v = json!({ "doc": before["doc"], "heads": before["heads"], "changed": false });
        return output::print(client.json, &v, |_| format!("no changes to {doc}"));
    }
    // The node applies the new text as a diff against its current text: had another member's
    // edit arrived meanwhile, that diff would undo it. Keep the user's text and say so instead.
    let now: Value = ep.get(&doc_path(doc, ""))?;
    if heads(&now) != heads(&before) {
        let kept = file.keep();
        bail!(
            "{doc} changed while you were editing it, so nothing was written (writing now would undo that change); your text is kept in {}: compare it with `agora doc show {doc}` and write it with `agora doc write {doc} < {}`",
            kept.display(),
            kept.display()
        );
    }
    let v = put(&ep, &doc_path(doc, "/text"), &json!({ "text": edited }))
        .map_err(|e| explain_write(&ep, doc, e))?;
    output::print(client.json, &v, text_written)
}

/// `$VISUAL`, else `$EDITOR`, else `vi`.
fn editor() -> String {
    ["VISUAL", "EDITOR"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| "vi".to_owned())
}

/// Runs the editor on `path` through the shell, as git does: `$EDITOR` may carry arguments
/// (`code --wait`).
fn run_editor(editor: &str, path: &Path) -> Result<()> {
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$@\""))
        .arg(editor)
        .arg(path)
        .status()
        .with_context(|| format!("cannot run the editor `{editor}` through sh"))?;
    if !status.success() {
        let hint = if status.code() == Some(127) {
            " (not found? set $VISUAL or $EDITOR to your editor)"
        } else {
            ""
        };
        bail!("the editor `{editor}` exited with {status}{hint}; nothing was changed");
    }
    Ok(())
}

/// A private temporary file holding a note's text, removed when dropped unless kept.
struct TempText {
    path: PathBuf,
    keep: bool,
}

impl TempText {
    fn create(doc: &str, text: &str) -> Result<Self> {
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_nanos();
        let name: String = doc
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(12)
            .collect();
        let path =
            std::env::temp_dir().join(format!("agora-{name}-{}-{stamp}.md", std::process::id()));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        file.write_all(text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Self { path, keep: false })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn keep(mut self) -> PathBuf {
        self.keep = true;
        self.path.clone()
    }
}

impl Drop for TempText {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// When this node is only a reader of the document's space: why a write is refused and what
/// to do. `None` when it may write, or when that cannot be found out.
fn reader_refusal(ep: &Endpoint, doc: &Value) -> Option<String> {
    let space_id = doc["space"].as_str()?;
    let space: Value = ep.get(&space_path(space_id, "")).ok()?;
    if space["role"] != "reader" {
        return None;
    }
    let me = ep
        .get::<Value>("/v1/id")
        .ok()
        .and_then(|v| v["peer_id"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "YOUR_PEER_ID".to_owned());
    Some(format!(
        "you are a reader of space {} ({space_id}): readers cannot change its documents; an admin can make you an editor with `agora space role {space_id} {me} editor`",
        s(&space["name"])
    ))
}

/// A write the node refused: when this node is a reader, say so first (the node's own message
/// follows).
fn explain_write(ep: &Endpoint, doc: &str, e: anyhow::Error) -> anyhow::Error {
    match ep
        .get::<Value>(&doc_path(doc, ""))
        .ok()
        .and_then(|d| reader_refusal(ep, &d))
    {
        Some(refusal) => e.context(refusal),
        None => e,
    }
}

/// The words of TEXT joined by spaces, or standard input for `-` (kept as it is: it is
/// document text).
fn text_arg(words: &[String]) -> Result<String> {
    let text = if words.len() == 1 && words[0] == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the text from standard input (it must be UTF-8)")?;
        text
    } else {
        words.join(" ")
    };
    if text.trim().is_empty() {
        bail!("the text is empty");
    }
    Ok(text)
}

/// The fields of a form: `text` must be one JSON object.
fn fields_object(text: &str, from: &str) -> Result<Value> {
    let v: Value = serde_json::from_str(text).with_context(|| format!("{from} is not JSON"))?;
    if !v.is_object() {
        let what = match v {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => unreachable!("checked above"),
        };
        bail!(
            "{from} holds {what}, not a JSON object: a form's fields are one object, e.g. {{\"name\": \"Ada\", \"seats\": 2}}"
        );
    }
    Ok(v)
}

/// A clap value parser: a peer id (`12D3KooW…`).
pub fn parse_peer(s: &str) -> Result<String, String> {
    libp2p::PeerId::from_str(s)
        .map(|p| p.to_string())
        .map_err(|_| {
            "not a peer id (they look like 12D3KooW…; `agora id` on that node prints its own)"
                .to_owned()
        })
}

/// A clap value parser: a calendar date written `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let shaped = b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        });
    if !shaped {
        return Err("write dates as YYYY-MM-DD, e.g. 2026-03-31".to_owned());
    }
    // Four and two ASCII digits: these parses cannot fail.
    let year: i32 = s[..4].parse().map_err(|_| "bad year".to_owned())?;
    let month: u8 = s[5..7].parse().map_err(|_| "bad month".to_owned())?;
    let day: u8 = s[8..].parse().map_err(|_| "bad day".to_owned())?;
    let month = time::Month::try_from(month)
        .map_err(|_| format!("there is no month {month:02} (months are 01 to 12)"))?;
    time::Date::from_calendar_date(year, month, day).map_err(|_| {
        format!(
            "there is no day {day:02} in {month} {year} (it has {} days)",
            month.length(year)
        )
    })?;
    Ok(s.to_owned())
}

// ---- requests `Endpoint` does not make: PUT, and GET of a body that is not JSON ----

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(5)))
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .new_agent()
}

fn put(ep: &Endpoint, path: &str, body: &Value) -> Result<Value> {
    let response = agent()
        .put(format!("{}{path}", ep.base))
        .header("Authorization", format!("Bearer {}", ep.token))
        .send_json(body);
    let text = finish_text(ep, response)?;
    serde_json::from_str(&text).context("unexpected response from the node")
}

fn get_text(ep: &Endpoint, path: &str) -> Result<String> {
    let response = agent()
        .get(format!("{}{path}", ep.base))
        .header("Authorization", format!("Bearer {}", ep.token))
        .call();
    finish_text(ep, response)
}

/// The body of a successful answer; an error reads like `Endpoint`'s.
fn finish_text(
    ep: &Endpoint,
    response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<String> {
    let mut response = response.map_err(|e| match e {
        ureq::Error::Io(_) | ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => anyhow!(
            "no agora node is running at {} (start one with `agora up`)",
            ep.base.trim_start_matches("http://")
        ),
        other => anyhow!("talking to the node at {}: {other}", ep.base),
    })?;
    let status = response.status();
    let body = response
        .body_mut()
        .read_to_string()
        .with_context(|| format!("reading the node's answer ({status})"))?;
    if status.is_success() {
        return Ok(body);
    }
    bail!(error_text(status.as_u16(), &body))
}

/// `message (HTTP n)` and the hint, from `{"error": {"message", "hint"?}}` or
/// `{"error": "message"}`.
fn error_text(status: u16, body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let err = &v["error"];
    let message = err
        .as_str()
        .or_else(|| err["message"].as_str())
        .unwrap_or("unknown error");
    let mut text = format!("{message} (HTTP {status})");
    if let Some(hint) = err["hint"].as_str() {
        text.push_str(&format!("\nhint: {hint}"));
    }
    text
}

// ---- paths ----

/// One path segment, percent-encoded (ids are hex, but what is typed may be anything).
fn seg(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn space_path(space: &str, rest: &str) -> String {
    format!("/v1/spaces/{}{rest}", seg(space))
}

fn doc_path(doc: &str, rest: &str) -> String {
    format!("/v1/docs/{}{rest}", seg(doc))
}

fn task_path(doc: &str, task: &str) -> String {
    doc_path(doc, &format!("/tasks/{}", seg(task)))
}

// ---- human output ----

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// A count given as a number or as the array itself.
fn len(v: &Value) -> usize {
    match v {
        Value::Array(a) => a.len(),
        Value::Object(o) => o.len(),
        other => other.as_u64().unwrap_or(0) as usize,
    }
}

/// A document's heads, sorted (their order carries no meaning).
fn heads(doc: &Value) -> Vec<String> {
    let mut h: Vec<String> = doc["heads"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h.as_str().map(str::to_owned))
        .collect();
    h.sort();
    h
}

fn text_written(v: &Value) -> String {
    if v["changed"] == false {
        format!("{} unchanged (it already had that text)", s(&v["doc"]))
    } else {
        format!("{} updated", s(&v["doc"]))
    }
}

fn spaces_table(v: &Value) -> String {
    let list = v["spaces"].as_array().cloned().unwrap_or_default();
    let mut out = if list.is_empty() {
        "no spaces (create one with `agora space create NAME`)".to_owned()
    } else {
        let mut out = format!(
            "{:<64} {:<7} {:>7} {:>5}  {}",
            "SPACE", "ROLE", "MEMBERS", "DOCS", "NAME"
        );
        for sp in &list {
            out.push_str(&format!(
                "\n{:<64} {:<7} {:>7} {:>5}  {}",
                s(&sp["space"]),
                s(&sp["role"]),
                len(&sp["members"]),
                len(&sp["docs"]),
                s(&sp["name"])
            ));
        }
        out
    };
    let invites = len(&v["invites"]);
    if invites > 0 {
        out.push_str(&format!(
            "\n{invites} pending invite(s): see them with `agora space list --invites`"
        ));
    }
    out
}

fn invites_table(v: &Value) -> String {
    let list = v["invites"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return "no pending invites".into();
    }
    let mut out = format!(
        "{:<64} {:<7} {:<17} {:<19}  {}",
        "SPACE", "ROLE", "FROM", "WHEN", "NAME"
    );
    for i in &list {
        out.push_str(&format!(
            "\n{:<64} {:<7} {:<17} {:<19}  {}",
            s(&i["space"]),
            s(&i["role"]),
            short_id(s(&i["from"])),
            i["at"].as_u64().map(when).unwrap_or_else(|| "-".into()),
            s(&i["name"])
        ));
    }
    out.push_str("\njoin one with `agora space join SPACE`");
    out
}

fn members_table(v: &Value) -> String {
    let list = v["members"].as_array().cloned().unwrap_or_default();
    let mut out = format!("{:<54} {}", "PEER", "ROLE");
    for m in &list {
        let owner = if m["peer"] == v["owner"] {
            " (owner)"
        } else {
            ""
        };
        out.push_str(&format!("\n{:<54} {}{owner}", s(&m["peer"]), s(&m["role"])));
    }
    out.push_str(&format!("\n{} member(s)", list.len()));
    out
}

fn space_details(v: &Value) -> String {
    let mut out = format!(
        "space {} ({})\nowner:     {}\nyour role: {}\n\n{}",
        s(&v["name"]),
        s(&v["space"]),
        s(&v["owner"]),
        s(&v["role"]),
        members_table(v)
    );
    let docs = v["docs"].as_array().cloned().unwrap_or_default();
    if docs.is_empty() {
        out.push_str(&format!(
            "\n\nno documents (create one with `agora doc new {} TITLE`)",
            s(&v["space"])
        ));
    } else {
        out.push_str(&format!("\n\n{:<64} {:<6}  {}", "DOC", "KIND", "TITLE"));
        for d in &docs {
            out.push_str(&format!(
                "\n{:<64} {:<6}  {}",
                s(&d["doc"]),
                s(&d["kind"]),
                s(&d["title"])
            ));
        }
    }
    out
}

fn docs_table(v: &Value) -> String {
    let list = v["docs"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return "no documents (create one with `agora doc new SPACE TITLE`)".into();
    }
    let mut out = format!("{:<64} {:<6} {:>7}  {}", "DOC", "KIND", "CHANGES", "TITLE");
    for d in &list {
        out.push_str(&format!(
            "\n{:<64} {:<6} {:>7}  {}",
            s(&d["doc"]),
            s(&d["kind"]),
            d["changes"].to_string(),
            s(&d["title"])
        ));
    }
    out
}

fn doc_details(v: &Value) -> String {
    let mut out = format!(
        "{}\n{} · {} change(s) by {} author(s) · {} in space {}\n",
        s(&v["title"]),
        s(&v["kind"]),
        v["changes"],
        len(&v["authors"]),
        s(&v["doc"]),
        s(&v["space"])
    );
    match s(&v["kind"]) {
        "note" => {
            let text = v["text"].as_str().unwrap_or_default();
            out.push('\n');
            out.push_str(if text.is_empty() { "(empty)" } else { text });
        }
        "tasks" => {
            out.push('\n');
            out.push_str(&items_table(&v["items"]));
        }
        "thread" => {
            let posts = v["posts"].as_array().cloned().unwrap_or_default();
            if posts.is_empty() {
                out.push_str(&format!(
                    "\nno posts yet (post with `agora doc post {} TEXT`)",
                    s(&v["doc"])
                ));
            }
            for p in &posts {
                let reply = p["reply_to"]
                    .as_str()
                    .map(|r| format!(" in reply to {r}"))
                    .unwrap_or_default();
                out.push_str(&format!(
                    "\n[{}] {} ({}){reply}:\n    {}",
                    p["at"].as_u64().map(when).unwrap_or_else(|| "-".into()),
                    short_id(s(&p["author"])),
                    s(&p["post"]),
                    s(&p["text"]).replace('\n', "\n    ")
                ));
            }
        }
        "form" => {
            let fields = v["fields"].as_object().cloned().unwrap_or_default();
            if fields.is_empty() {
                out.push_str(&format!(
                    "\nno fields yet (set them with `agora doc set {} FILE.json`)",
                    s(&v["doc"])
                ));
            }
            for (k, f) in &fields {
                let f = match f {
                    Value::String(t) => t.clone(),
                    other => other.to_string(),
                };
                out.push_str(&format!("\n{k}: {f}"));
            }
        }
        _ => {}
    }
    let attachments = v["attachments"].as_array().cloned().unwrap_or_default();
    if !attachments.is_empty() {
        out.push_str("\n\nattachments (fetch with `agora get HASH -o PATH`):");
        for a in &attachments {
            out.push_str(&format!(
                "\n  {}  {} bytes  {}",
                s(&a["name"]),
                a["size"],
                s(&a["hash"])
            ));
        }
    }
    out
}

/// The tasks of one task list.
fn items_table(items: &Value) -> String {
    let list = items.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return "no tasks yet (add one with `agora task add DOC TITLE`)".into();
    }
    let mut out = format!(
        "{:<24} {:<5} {:<10} {:<17}  {}",
        "TASK", "STATE", "DUE", "ASSIGNEE", "TITLE"
    );
    for t in &list {
        out.push_str(&format!(
            "\n{:<24} {:<5} {:<10} {:<17}  {}",
            s(&t["task"]),
            s(&t["state"]),
            s(&t["due"]),
            t["assignee"]
                .as_str()
                .map(short_id)
                .unwrap_or_else(|| "-".into()),
            s(&t["title"])
        ));
    }
    out
}

/// Tasks across spaces, grouped by task list (both ids are needed by `agora task done`).
fn tasks_table(tasks: &Value, mine: bool) -> String {
    let list = tasks.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return if mine {
            "no tasks assigned to this node".into()
        } else {
            "no tasks".into()
        };
    }
    let mut docs: Vec<&str> = Vec::new();
    for t in &list {
        if !docs.contains(&s(&t["doc"])) {
            docs.push(s(&t["doc"]));
        }
    }
    docs.iter()
        .map(|doc| {
            let items: Vec<Value> = list
                .iter()
                .filter(|t| s(&t["doc"]) == *doc)
                .cloned()
                .collect();
            let space = s(&items[0]["space"]);
            format!(
                "doc {doc} (space {space})\n{}",
                items_table(&Value::Array(items.clone()))
            )
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

fn history_table(v: &Value) -> String {
    let list = v["history"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return "no changes yet".into();
    }
    let mut out = format!(
        "{:<19}  {:<17} {:>5}  {:<16}  {}",
        "WHEN", "AUTHOR", "OPS", "CHANGE", "MESSAGE"
    );
    for c in &list {
        out.push_str(&format!(
            "\n{:<19}  {:<17} {:>5}  {:<16}  {}",
            c["time"].as_u64().map(when).unwrap_or_else(|| "-".into()),
            short_id(s(&c["author"])),
            c["ops"].to_string(),
            short_id(s(&c["hash"])),
            c["message"].as_str().unwrap_or("")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::{Parser, error::ErrorKind};

    use super::*;
    use crate::{Cli, Command as Top};

    fn peer() -> String {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
            .to_string()
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("agora").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_well_formed() {
        // Clap's own checks (duplicate flags, bad defaults) over every command, these included.
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn dates_are_calendar_days_written_yyyy_mm_dd() {
        assert_eq!(parse_date("2026-03-31"), Ok("2026-03-31".to_owned()));
        assert_eq!(parse_date("2028-02-29"), Ok("2028-02-29".to_owned()));
        for bad in [
            "2026-3-31",
            "31/03/2026",
            "2026-03-31T00:00",
            "",
            "２０２６-03-31",
            "+026-03-31",
        ] {
            let err = parse_date(bad).unwrap_err();
            assert!(err.contains("YYYY-MM-DD"), "{bad}: {err}");
        }
        let err = parse_date("2026-13-01").unwrap_err();
        assert!(err.contains("no month 13"), "{err}");
        let err = parse_date("2026-02-29").unwrap_err();
        assert!(err.contains("February 2026 (it has 28 days)"), "{err}");
        assert!(parse_date("2026-04-00").is_err());
    }

    #[test]
    fn peers_are_checked() {
        let p = peer();
        assert_eq!(parse_peer(&p), Ok(p.clone()));
        assert!(parse_peer("bob").unwrap_err().contains("not a peer id"));
    }

    #[test]
    fn roles_kinds_and_defaults_parse() {
        let p = peer();
        let Top::Space(SpaceCmd::Invite { space, role, .. }) =
            parse(&["space", "invite", "s1", &p]).unwrap().command
        else {
            panic!("not space invite");
        };
        assert_eq!((space.as_str(), role), ("s1", Role::Editor));
        let Top::Space(SpaceCmd::Role { role, .. }) = parse(&["space", "role", "s1", &p, "reader"])
            .unwrap()
            .command
        else {
            panic!("not space role");
        };
        assert_eq!(role, Role::Reader);
        let Top::Doc(DocCmd::New { kind, title, .. }) =
            parse(&["doc", "new", "s1", "Minutes"]).unwrap().command
        else {
            panic!("not doc new");
        };
        assert_eq!((kind, title.as_str()), (Kind::Note, "Minutes"));
        let Top::Doc(DocCmd::Export { format, out, .. }) =
            parse(&["doc", "export", "d1"]).unwrap().command
        else {
            panic!("not doc export");
        };
        assert_eq!((format, out), (Format::Md, None));
        let Top::Task(TaskCmd::Add { assign, due, .. }) = parse(&[
            "task",
            "add",
            "d1",
            "Write it",
            "--assign",
            &p,
            "--due",
            "2030-01-31",
        ])
        .unwrap()
        .command
        else {
            panic!("not task add");
        };
        assert_eq!(assign, Some(p.clone()));
        assert_eq!(due.as_deref(), Some("2030-01-31"));
        let Top::Doc(DocCmd::Post { reply_to, text, .. }) =
            parse(&["doc", "post", "d1", "hello", "there", "--reply-to", "p9"])
                .unwrap()
                .command
        else {
            panic!("not doc post");
        };
        assert_eq!(
            (reply_to.as_deref(), text.join(" ")),
            (Some("p9"), "hello there".into())
        );
    }

    #[test]
    fn bad_arguments_are_clap_errors() {
        let p = peer();
        for (args, kind, needle) in [
            (
                vec!["space", "invite", "s1", p.as_str(), "--role", "owner"],
                ErrorKind::InvalidValue,
                "[possible values: admin, editor, reader]",
            ),
            (
                vec!["space", "role", "s1", p.as_str(), "boss"],
                ErrorKind::InvalidValue,
                "[possible values: admin, editor, reader]",
            ),
            (
                vec!["space", "invite", "s1", "bob"],
                ErrorKind::ValueValidation,
                "not a peer id",
            ),
            (
                vec!["doc", "new", "s1", "t", "--kind", "sheet"],
                ErrorKind::InvalidValue,
                "[possible values: note, tasks, thread, form]",
            ),
            (
                vec!["doc", "export", "d1", "--format", "pdf"],
                ErrorKind::InvalidValue,
                "[possible values: md, json]",
            ),
            (
                vec!["task", "add", "d1", "t", "--due", "tomorrow"],
                ErrorKind::ValueValidation,
                "YYYY-MM-DD",
            ),
            (
                vec!["task", "add", "d1", "t", "--assign", "bob"],
                ErrorKind::ValueValidation,
                "not a peer id",
            ),
            (
                vec!["doc", "append", "d1"],
                ErrorKind::MissingRequiredArgument,
                "<TEXT>",
            ),
            (
                vec!["space", "frobnicate"],
                ErrorKind::InvalidSubcommand,
                "frobnicate",
            ),
        ] {
            let err = parse(&args)
                .err()
                .unwrap_or_else(|| panic!("{args:?} parsed"));
            assert_eq!(err.kind(), kind, "{args:?}: {err}");
            assert!(err.to_string().contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn form_fields_must_be_one_object() {
        let v = fields_object(r#"{"name": "Ada", "seats": 2}"#, "f.json").unwrap();
        assert_eq!(v["seats"], 2);
        let err = fields_object("[1, 2]", "f.json").unwrap_err();
        assert!(
            format!("{err:#}").contains("f.json holds an array, not a JSON object"),
            "{err:#}"
        );
        let err = fields_object("\"x\"", "standard input").unwrap_err();
        assert!(format!("{err:#}").contains("holds a string"), "{err:#}");
        let err = fields_object("{nope", "f.json").unwrap_err();
        assert!(format!("{err:#}").contains("f.json is not JSON"), "{err:#}");
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(doc_path("ab12", "/text"), "/v1/docs/ab12/text");
        assert_eq!(space_path("../x y", ""), "/v1/spaces/%2E%2E%2Fx%20y");
        assert_eq!(task_path("d", "t/1"), "/v1/docs/d/tasks/t%2F1");
    }

    #[test]
    fn errors_read_both_shapes() {
        assert_eq!(
            error_text(
                404,
                r#"{"error": {"code": "not_found", "message": "no such doc", "hint": "see agora doc list"}}"#
            ),
            "no such doc (HTTP 404)\nhint: see agora doc list"
        );
        assert_eq!(
            error_text(403, r#"{"error": "readers cannot write"}"#),
            "readers cannot write (HTTP 403)"
        );
        assert_eq!(error_text(500, "oops"), "unknown error (HTTP 500)");
    }

    #[test]
    fn documents_render_by_kind() {
        let tasks = json!({
            "doc": "d1", "space": "s1", "title": "Todo", "kind": "tasks", "changes": 3,
            "authors": ["a"], "heads": ["h"],
            "items": [
                {"task": "t1", "title": "Write", "assignee": null, "state": "todo", "due": null},
                {"task": "t2", "title": "Ship", "assignee": "12D3KooWAbcdefghijklmnop",
                 "state": "done", "due": "2030-01-31"},
            ],
        });
        let out = doc_details(&tasks);
        assert!(
            out.starts_with("Todo\ntasks · 3 change(s) by 1 author(s)"),
            "{out}"
        );
        assert!(out.contains("t2"), "{out}");
        assert!(out.contains("2030-01-31"), "{out}");
        assert!(out.contains("12D3KooWAb…klmnop"), "{out}");
        let note = json!({"doc": "d", "title": "N", "kind": "note", "text": "hello\nworld"});
        assert!(doc_details(&note).ends_with("\nhello\nworld"));
        let form = json!({"doc": "d", "title": "F", "kind": "form", "fields": {"a": "x", "b": 2}});
        assert!(doc_details(&form).ends_with("\na: x\nb: 2"));
        let thread = json!({"doc": "d", "title": "T", "kind": "thread", "posts": [
            {"post": "p1", "author": "me", "text": "hi", "reply_to": null, "at": 0},
            {"post": "p2", "author": "you", "text": "yo", "reply_to": "p1", "at": 0},
        ]});
        let out = doc_details(&thread);
        assert!(out.contains("(p2) in reply to p1:\n    yo"), "{out}");
        assert_eq!(heads(&json!({"heads": ["b", "a"]})), ["a", "b"]);
    }

    #[test]
    fn lists_say_what_to_do_when_empty() {
        let v = json!({"spaces": [], "invites": [{"space": "s", "name": "n", "from": "f",
            "role": "editor", "at": 0}]});
        let out = spaces_table(&v);
        assert!(out.contains("agora space create"), "{out}");
        assert!(out.contains("1 pending invite(s)"), "{out}");
        assert!(invites_table(&v).contains("agora space join SPACE"));
        assert_eq!(
            tasks_table(&json!([]), true),
            "no tasks assigned to this node"
        );
        let out = tasks_table(
            &json!([
                {"space": "s", "doc": "d1", "task": "t1", "title": "A", "assignee": null,
                 "state": "todo", "due": null},
                {"space": "s", "doc": "d2", "task": "t2", "title": "B", "assignee": null,
                 "state": "doing", "due": null},
                {"space": "s", "doc": "d1", "task": "t3", "title": "C", "assignee": null,
                 "state": "done", "due": null},
            ]),
            false,
        );
        assert_eq!(out.matches("doc d1 (space s)").count(), 1, "{out}");
        assert!(out.contains("doc d2 (space s)"), "{out}");
    }
}
