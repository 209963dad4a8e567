//! Groupware across real nodes, driven through `agora space`, `agora doc` and `agora task`:
//! invites and joining, edits made offline merged after reconnecting, readers and removed
//! members refused, task lists, every document kind, and the CLI's own errors.

use std::{
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::common::{Node, WAIT, agora, stderr, stdout, wait_connected, wait_for};

/// Documents travel by sync after a (re)connection: allow more than one plain wait.
const SYNC: Duration = Duration::from_secs(60);

const BASE: &str = "Agenda\n\nThe meeting is on Monday.\n";

/// `agora ARGS --json` on `node`, which must succeed and print JSON.
fn json(node: &Node, args: &[&str]) -> Value {
    try_json(node, args)
        .unwrap_or_else(|out| panic!("agora {args:?} failed: {}{}", stderr(&out), stdout(&out)))
}

/// `agora ARGS --json`, or the output of a failed run (for polling).
fn try_json(node: &Node, args: &[&str]) -> Result<Value, Output> {
    let mut all = args.to_vec();
    all.push("--json");
    let out = node.cli(&all);
    if !out.status.success() {
        return Err(out);
    }
    serde_json::from_str(&stdout(&out))
        .map_err(|e| panic!("agora {args:?}: not JSON ({e}): {}", stdout(&out)))
}

/// Runs `agora ARGS --data-dir DIR` with `input` on its standard input.
fn with_stdin(node: &Node, args: &[&str], input: &[u8]) -> Output {
    let mut child = agora()
        .args(args)
        .arg("--data-dir")
        .arg(&node.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// `agora doc edit DOC` with `editor` as $VISUAL.
fn edit_with(node: &Node, doc: &str, editor: &Path, json: bool) -> Output {
    let mut cmd = agora();
    cmd.args(["doc", "edit", doc, "--data-dir"])
        .arg(&node.dir)
        .env("VISUAL", editor)
        .env_remove("EDITOR");
    if json {
        cmd.arg("--json");
    }
    cmd.output().unwrap()
}

/// An executable shell script standing in for the user's editor.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// A command that must fail with exit code `code`; returns its standard error.
fn fails(out: &Output, code: i32, what: &str) -> String {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: expected exit {code}\nstdout: {}\nstderr: {err}",
        stdout(out)
    );
    assert!(!err.contains("panicked"), "{what}: {err}");
    err
}

/// `n` nodes on loopback, every pair connected.
fn mesh(root: &Path, n: usize) -> Vec<Node> {
    let nodes: Vec<Node> = (0..n)
        .map(|i| Node::start(&root.join(format!("n{i}")), &[]))
        .collect();
    for i in 0..n {
        for j in i + 1..n {
            connect(&nodes[i], &nodes[j]);
        }
    }
    nodes
}

fn connect(a: &Node, b: &Node) {
    let o = a.cli(&["connect", &b.tcp_addr()]);
    assert!(o.status.success(), "{}", stderr(&o));
    wait_connected(a, b);
    wait_connected(b, a);
}

/// The note's text and sorted heads as `node` has them, once it has the document.
fn note(node: &Node, doc: &str) -> Option<(String, Vec<String>)> {
    let v = try_json(node, &["doc", "show", doc]).ok()?;
    Some((v["text"].as_str()?.to_owned(), heads(&v)))
}

fn heads(doc: &Value) -> Vec<String> {
    let mut h: Vec<String> = doc["heads"]
        .as_array()
        .unwrap_or_else(|| panic!("no heads: {doc}"))
        .iter()
        .map(|h| h.as_str().unwrap().to_owned())
        .collect();
    h.sort();
    h
}

/// Waits until `node` has `doc` with exactly `text`.
fn wait_text(node: &Node, doc: &str, text: &str) -> Vec<String> {
    wait_for(
        &format!("{} to have the text {text:?}", node.peer_id),
        SYNC,
        || note(node, doc).and_then(|(t, h)| (t == text).then_some(h)),
    )
}

/// Waits until `a` and `b` hold the same text and heads for `doc`, and that text is neither
/// of `solo` (what each had alone: both hold changes of both); on timeout shows what each had.
fn converge(a: &Node, b: &Node, doc: &str, solo: &[&str]) -> (String, Vec<String>) {
    let deadline = Instant::now() + SYNC;
    loop {
        let (na, nb) = (note(a, doc), note(b, doc));
        if let Some(both) = na
            .clone()
            .filter(|(text, _)| na == nb && !solo.contains(&text.as_str()))
        {
            return both;
        }
        assert!(
            Instant::now() < deadline,
            "a and b did not converge within {SYNC:?}:\na: {na:?}\nb: {nb:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Replaces the note's text with `text` through `agora doc write`.
fn write(node: &Node, doc: &str, text: &str) -> Value {
    let out = with_stdin(node, &["doc", "write", doc, "--json"], text.as_bytes());
    assert!(out.status.success(), "doc write: {}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

/// `owner` creates a space and a note holding `text`; returns (space, doc).
fn space_with_note(owner: &Node, text: &str) -> (String, String) {
    let space = json(owner, &["space", "create", "team"]);
    assert_eq!(space["name"], "team", "{space}");
    assert_eq!(space["owner"], owner.peer_id.as_str(), "{space}");
    let space = space["space"].as_str().unwrap().to_owned();
    let doc = json(owner, &["doc", "new", &space, "Minutes"]);
    assert_eq!(doc["kind"], "note", "the default kind: {doc}");
    assert_eq!(doc["title"], "Minutes");
    assert_eq!(doc["space"], space.as_str());
    let doc = doc["doc"].as_str().unwrap().to_owned();
    let written = write(owner, &doc, text);
    assert_eq!(written["changed"], true, "{written}");
    (space, doc)
}

/// `admin` invites `peer` as `role`; `peer` waits for the invite and joins.
fn invite_and_join(admin: &Node, peer: &Node, space: &str, role: &str) -> Value {
    let invited = json(
        admin,
        &["space", "invite", space, &peer.peer_id, "--role", role],
    );
    assert_eq!(invited["peer"], peer.peer_id.as_str(), "{invited}");
    assert_eq!(invited["role"], role, "{invited}");
    let invite = wait_for(&format!("the invite at {}", peer.peer_id), WAIT, || {
        let v = try_json(peer, &["space", "list", "--invites"]).ok()?;
        v["invites"]
            .as_array()?
            .iter()
            .find(|i| i["space"] == space)
            .cloned()
    });
    assert_eq!(invite["from"], admin.peer_id.as_str(), "{invite}");
    assert_eq!(invite["role"], role, "{invite}");
    assert_eq!(invite["name"], "team", "{invite}");
    assert!(invite["at"].as_u64().is_some(), "{invite}");
    let joined = json(peer, &["space", "join", space]);
    assert_eq!(joined["space"], space, "{joined}");
    assert_eq!(joined["role"], role, "{joined}");
    assert!(
        members(&joined).contains(&(peer.peer_id.clone(), role.to_owned())),
        "{joined}"
    );
    joined
}

fn members(space: &Value) -> Vec<(String, String)> {
    space["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no members: {space}"))
        .iter()
        .map(|m| {
            (
                m["peer"].as_str().unwrap().to_owned(),
                m["role"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn an_invited_editor_joins_gets_the_note_and_its_edits_come_back() {
    let root = tempfile::tempdir().unwrap();
    let net = mesh(root.path(), 2);
    let (a, b) = (&net[0], &net[1]);
    let (space, doc) = space_with_note(a, BASE);
    let a_heads = wait_text(a, &doc, BASE);

    // Nothing to join before the invite; the invite then shows at b with who sent it.
    let listed = json(b, &["space", "list"]);
    assert!(
        !listed["spaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["space"] == space.as_str()),
        "{listed}"
    );
    invite_and_join(a, b, &space, "editor");

    // b gets the same note, heads and all.
    let b_heads = wait_text(b, &doc, BASE);
    assert_eq!(b_heads, a_heads);
    let shown = json(b, &["doc", "show", &doc]);
    assert_eq!(shown["title"], "Minutes");
    assert_eq!(shown["kind"], "note");
    assert_eq!(shown["space"], space.as_str());
    assert_eq!(shown["authors"], serde_json::json!([a.peer_id]));
    let listed = json(b, &["doc", "list", &space]);
    assert!(
        listed["docs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["doc"] == doc.as_str() && d["kind"] == "note"),
        "{listed}"
    );
    // Both see both members, with their roles.
    for n in [a, b] {
        wait_for("both members at both nodes", WAIT, || {
            let m = members(&json(n, &["space", "members", &space]));
            (m.contains(&(b.peer_id.clone(), "editor".into())) && m.len() == 2).then_some(())
        });
    }
    let spaces = json(b, &["space", "list"]);
    let entry = spaces["spaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["space"] == space.as_str())
        .unwrap_or_else(|| panic!("{spaces}"));
    assert_eq!(entry["role"], "editor");
    assert_eq!(entry["owner"], a.peer_id.as_str());
    assert_eq!(entry["docs"], 1);
    assert!(
        json(b, &["space", "list", "--invites"])["invites"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["space"] != space.as_str()),
        "a joined space is no longer an invite"
    );

    // The editor's append reaches the owner.
    let appended = json(b, &["doc", "append", &doc, "Bring the budget."]);
    assert_eq!(appended["doc"], doc.as_str(), "{appended}");
    let merged = wait_for("b's append at a", SYNC, || {
        let (t, _) = note(a, &doc)?;
        t.contains("Bring the budget.").then_some(t)
    });
    assert!(merged.starts_with(BASE), "{merged:?}");
    let (b_text, b_heads) = note(b, &doc).unwrap();
    assert_eq!(wait_text(a, &doc, &b_text), b_heads);

    // Human output: the title, the kind, the text; the space with its name.
    let o = b.cli(&["doc", "show", &doc]);
    assert!(o.status.success(), "{}", stderr(&o));
    for want in [
        "Minutes",
        "note",
        "The meeting is on Monday.",
        "Bring the budget.",
    ] {
        assert!(stdout(&o).contains(want), "{want}: {}", stdout(&o));
    }
    let o = b.cli(&["space", "list"]);
    assert!(stdout(&o).contains("team"), "{}", stdout(&o));
    let o = a.cli(&["space", "show", &space]);
    assert!(stdout(&o).contains(&b.peer_id), "{}", stdout(&o));
    assert!(stdout(&o).contains("Minutes"), "{}", stdout(&o));
}

#[test]
fn edits_made_while_the_other_is_offline_merge_after_reconnecting() {
    let root = tempfile::tempdir().unwrap();
    let mut net = mesh(root.path(), 2);
    let (a_dir, b_dir) = (net[0].dir.clone(), net[1].dir.clone());
    let (space, doc) = space_with_note(&net[0], BASE);
    invite_and_join(&net[0], &net[1], &space, "editor");
    let base_heads = wait_text(&net[1], &doc, BASE);

    // b is killed; a edits the paragraph while b is down, then stops.
    net[1].kill9();
    let a_edit = "Agenda\n\nThe meeting is on Monday at noon.\n";
    assert_eq!(write(&net[0], &doc, a_edit)["changed"], true);
    assert_eq!(note(&net[0], &doc).unwrap().0, a_edit);
    assert!(net[0].terminate().success());

    // b comes back alone: it still has the note as it was (kill -9 lost nothing), and edits
    // the same paragraph.
    net[1] = Node::start(&b_dir, &[]);
    let (text, heads_b) = note(&net[1], &doc).expect("b kept the note across kill -9");
    assert_eq!(text, BASE);
    assert_eq!(heads_b, base_heads);
    let b_edit = "Agenda\n\nThe big meeting is on Monday.\n";
    assert_eq!(write(&net[1], &doc, b_edit)["changed"], true);

    // a comes back; once connected, both hold both edits, made into one paragraph, and the
    // same heads.
    net[0] = Node::start(&a_dir, &[]);
    let (text, _) = note(&net[0], &doc).unwrap();
    assert!(text.contains("Monday at noon"), "a kept its edit: {text:?}");
    connect(&net[0], &net[1]);
    let merged = "Agenda\n\nThe big meeting is on Monday at noon.\n";
    let (a, b) = (&net[0], &net[1]);
    let (text, merged_heads) = converge(a, b, &doc, &[a_edit, b_edit]);
    assert_eq!(
        text, merged,
        "both edits, merged character by character into one paragraph"
    );
    assert_ne!(merged_heads, base_heads);
    // Both changes are in both histories, with their authors.
    let ha = json(a, &["doc", "history", &doc]);
    let hb = json(b, &["doc", "history", &doc]);
    assert_eq!(
        ha["history"].as_array().unwrap().len(),
        hb["history"].as_array().unwrap().len()
    );
    for who in [&a.peer_id, &b.peer_id] {
        assert!(
            ha["history"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["author"] == who.as_str()),
            "{who} missing from {ha}"
        );
    }
    let shown = json(a, &["doc", "show", &doc]);
    let mut authors: Vec<&str> = shown["authors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    authors.sort();
    let mut want = vec![a.peer_id.as_str(), b.peer_id.as_str()];
    want.sort();
    assert_eq!(authors, want);
}

#[test]
fn a_reader_cannot_write_and_a_removed_member_edits_reach_nobody() {
    let root = tempfile::tempdir().unwrap();
    let mut net = mesh(root.path(), 3);
    let b_dir = net[1].dir.clone();
    let (space, doc) = space_with_note(&net[0], BASE);
    invite_and_join(&net[0], &net[1], &space, "editor");
    invite_and_join(&net[0], &net[2], &space, "reader");
    let base_heads = wait_text(&net[2], &doc, BASE);
    wait_text(&net[1], &doc, BASE);
    let (a, c) = (&net[0], &net[2]);

    // The reader's writes are refused, each with a clear error naming the role and the fix.
    for out in [
        c.cli(&["doc", "append", &doc, "reader was here"]),
        with_stdin(c, &["doc", "write", &doc], b"reader was here\n"),
    ] {
        let err = fails(&out, 1, "a reader's write");
        assert!(err.contains("you are a reader of space team"), "{err}");
        assert!(err.contains("agora space role"), "{err}");
    }
    // `doc edit` refuses before the editor even runs.
    let ran = root.path().join("editor-ran");
    let editor = script(
        root.path(),
        "reader-editor.sh",
        &format!("touch {}\necho 'reader was here' >> \"$1\"", ran.display()),
    );
    let err = fails(&edit_with(c, &doc, &editor, false), 1, "a reader's edit");
    assert!(err.contains("you are a reader"), "{err}");
    assert!(!ran.exists(), "the editor ran for a reader");
    // Nothing changed, here or at the owner.
    assert_eq!(
        note(c, &doc).unwrap(),
        (BASE.to_owned(), base_heads.clone())
    );
    assert_eq!(
        note(a, &doc).unwrap(),
        (BASE.to_owned(), base_heads.clone())
    );

    // b is removed while it is down.
    net[1].kill9();
    let removed = json(&net[0], &["space", "remove", &space, &net[1].peer_id]);
    assert_eq!(removed["peer"], net[1].peer_id.as_str(), "{removed}");
    assert_eq!(removed["space"], space.as_str(), "{removed}");
    for n in [&net[0], &net[2]] {
        wait_for("b gone from the members", SYNC, || {
            let m = members(&try_json(n, &["space", "members", &space]).ok()?);
            (!m.iter().any(|(p, _)| p == &net[1].peer_id)).then_some(())
        });
    }

    // b comes back, reconnects and edits: whether its own node already refuses that or not,
    // the edit must never reach a or c.
    net[1] = Node::start(&b_dir, &[]);
    connect(&net[1], &net[0]);
    connect(&net[1], &net[2]);
    let late = net[1].cli(&["doc", "append", &doc, "written after removal"]);
    if !late.status.success() {
        fails(&late, 1, "a removed member's edit");
    }
    // Later edits by a member still get through (so sync is running), b's never. (An append,
    // not a write: a write would replace whatever had wrongly arrived.)
    let decided = json(&net[0], &["doc", "append", &doc, "Decided: Monday."]);
    assert_eq!(decided["doc"], doc.as_str(), "{decided}");
    wait_for("a's later append at c", SYNC, || {
        let (text, _) = note(&net[2], &doc)?;
        text.contains("Decided: Monday.").then_some(())
    });
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(5) {
        for n in [&net[0], &net[2]] {
            let (text, _) = note(n, &doc).unwrap();
            assert!(
                !text.contains("written after removal"),
                "a removed member's edit reached {}: {text:?}",
                n.peer_id
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(note(&net[0], &doc).unwrap(), note(&net[2], &doc).unwrap());
}

#[test]
fn tasks_assigned_to_a_member_show_in_its_list_and_its_done_reaches_the_owner() {
    let root = tempfile::tempdir().unwrap();
    let net = mesh(root.path(), 2);
    let (a, b) = (&net[0], &net[1]);
    let space = json(a, &["space", "create", "team"])["space"]
        .as_str()
        .unwrap()
        .to_owned();
    let todo = json(a, &["doc", "new", &space, "Todo", "--kind", "tasks"]);
    assert_eq!(todo["kind"], "tasks", "{todo}");
    let doc = todo["doc"].as_str().unwrap().to_owned();
    invite_and_join(a, b, &space, "editor");
    // b is one of a's contacts: assigning it a task also tells it by chat.
    let o = a.cli(&["contacts", "add", &b.peer_id, "--name", "bob"]);
    assert!(o.status.success(), "{}", stderr(&o));

    let added = json(
        a,
        &[
            "task",
            "add",
            &doc,
            "Write the report",
            "--assign",
            &b.peer_id,
            "--due",
            "2030-01-31",
        ],
    );
    assert_eq!(added["doc"], doc.as_str(), "{added}");
    let report = added["task"].as_str().unwrap().to_owned();
    wait_for("the chat message telling b of its task", WAIT, || {
        let inbox = json(b, &["inbox", "--all"]);
        inbox
            .as_array()?
            .iter()
            .any(|m| {
                m["text"]
                    .as_str()
                    .is_some_and(|t| t.contains("assigned you a task: Write the report"))
            })
            .then_some(())
    });
    let other = json(a, &["task", "add", &doc, "Book a room"])["task"]
        .as_str()
        .unwrap()
        .to_owned();

    // b's own list holds the one task assigned to it.
    let mine = wait_for("the task in b's list", SYNC, || {
        let v = try_json(b, &["task", "list", "--mine"]).ok()?;
        let tasks = v["tasks"].as_array()?.clone();
        (!tasks.is_empty()).then_some(tasks)
    });
    assert_eq!(mine.len(), 1, "{mine:?}");
    let t = &mine[0];
    assert_eq!(t["task"], report.as_str());
    assert_eq!(t["doc"], doc.as_str());
    assert_eq!(t["space"], space.as_str());
    assert_eq!(t["title"], "Write the report");
    assert_eq!(t["assignee"], b.peer_id.as_str());
    assert_eq!(t["state"], "todo");
    assert_eq!(t["due"], "2030-01-31");
    // Everyone's list has both; the unassigned one has no assignee or due date.
    let all = wait_for("both tasks at b", SYNC, || {
        let v = try_json(b, &["task", "list"]).ok()?;
        let tasks = v["tasks"].as_array()?.clone();
        (tasks.len() == 2).then_some(tasks)
    });
    let room = all.iter().find(|t| t["task"] == other.as_str()).unwrap();
    assert!(
        room["assignee"].is_null() && room["due"].is_null(),
        "{room}"
    );
    assert!(
        json(a, &["task", "list", "--mine"])["tasks"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let o = b.cli(&["task", "list", "--mine"]);
    assert!(stdout(&o).contains("Write the report"), "{}", stdout(&o));

    // b starts, then finishes it; a sees each state.
    let state_at_a = |want: &str| {
        wait_for(&format!("the task {want} at a"), SYNC, || {
            let v = try_json(a, &["doc", "show", &doc]).ok()?;
            let item = v["items"]
                .as_array()?
                .iter()
                .find(|i| i["task"] == report.as_str())?
                .clone();
            (item["state"] == want).then_some(item)
        })
    };
    let started = json(b, &["task", "start", &doc, &report]);
    assert_eq!(started["task"], report.as_str(), "{started}");
    state_at_a("doing");
    json(b, &["task", "done", &doc, &report]);
    let item = state_at_a("done");
    assert_eq!(item["assignee"], b.peer_id.as_str());
    assert_eq!(item["due"], "2030-01-31");
    let o = a.cli(&["doc", "show", &doc]);
    for want in ["Todo", "tasks", "Write the report", "done", "Book a room"] {
        assert!(stdout(&o).contains(want), "{want}: {}", stdout(&o));
    }

    // Assigning the other task puts it in b's list too.
    json(a, &["task", "assign", &doc, &other, &b.peer_id]);
    wait_for("both tasks in b's own list", SYNC, || {
        let v = try_json(b, &["task", "list", "--mine"]).ok()?;
        (v["tasks"].as_array()?.len() == 2).then_some(())
    });
}

#[test]
fn every_document_kind_on_one_node_edit_history_and_export() {
    let root = tempfile::tempdir().unwrap();
    let node = Node::start(&root.path().join("n"), &[]);
    let space = json(&node, &["space", "create", "solo"])["space"]
        .as_str()
        .unwrap()
        .to_owned();
    let new = |title: &str, kind: &str| {
        let v = json(&node, &["doc", "new", &space, title, "--kind", kind]);
        assert_eq!(v["kind"], kind, "{v}");
        v["doc"].as_str().unwrap().to_owned()
    };

    // A note edited in $VISUAL.
    let note_doc = new("Plan", "note");
    assert_eq!(write(&node, &note_doc, "first line\n")["changed"], true);
    assert_eq!(write(&node, &note_doc, "first line\n")["changed"], false);
    let appender = script(
        root.path(),
        "append.sh",
        "printf 'added in the editor\\n' >> \"$1\"",
    );
    let out = edit_with(&node, &note_doc, &appender, true);
    assert!(out.status.success(), "{}", stderr(&out));
    let written: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(written["doc"], note_doc.as_str(), "{written}");
    let (text, edited_heads) = note(&node, &note_doc).unwrap();
    assert_eq!(text, "first line\nadded in the editor\n");
    // An editor that exits non-zero changes nothing, even after writing its file.
    let failing = script(root.path(), "fail.sh", "echo 'half-done' >> \"$1\"\nexit 3");
    let err = fails(
        &edit_with(&node, &note_doc, &failing, false),
        1,
        "a failing editor",
    );
    assert!(err.contains("exited with"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    // An editor that saves nothing new writes nothing.
    let idle = script(root.path(), "idle.sh", "true");
    let out = edit_with(&node, &note_doc, &idle, false);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("no changes"), "{}", stdout(&out));
    assert_eq!(
        note(&node, &note_doc).unwrap(),
        (text.clone(), edited_heads)
    );
    // Another change arriving while the editor is open: writing would undo it, so nothing is
    // written and the user's text is kept in a file the error names.
    let racer = script(
        root.path(),
        "race.sh",
        &format!(
            "{} doc append {note_doc} 'meanwhile' --data-dir {} >/dev/null\necho 'mine' >> \"$1\"",
            env!("CARGO_BIN_EXE_agora"),
            node.dir.display()
        ),
    );
    let err = fails(
        &edit_with(&node, &note_doc, &racer, false),
        1,
        "an edit raced",
    );
    assert!(err.contains("changed while you were editing"), "{err}");
    let kept = err
        .split("your text is kept in ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_else(|| panic!("no kept file named: {err}"));
    assert!(
        std::fs::read_to_string(kept).unwrap().ends_with("mine\n"),
        "{kept}"
    );
    std::fs::remove_file(kept).unwrap();
    let (text, _) = note(&node, &note_doc).unwrap();
    assert!(
        text.starts_with("first line\nadded in the editor\n"),
        "{text:?}"
    );
    assert!(text.contains("meanwhile"), "{text:?}");
    assert!(
        !text.contains("mine"),
        "the raced edit was written: {text:?}"
    );
    let appended = node.cli(&["doc", "append", &note_doc, "the end"]);
    assert!(appended.status.success(), "{}", stderr(&appended));
    let (text, _) = note(&node, &note_doc).unwrap();
    assert!(
        text.starts_with("first line\nadded in the editor\n"),
        "{text:?}"
    );
    assert!(text.contains("the end"), "{text:?}");

    // History: every change, with its author.
    let history = json(&node, &["doc", "history", &note_doc])["history"]
        .as_array()
        .unwrap()
        .clone();
    assert!(history.len() >= 3, "{history:?}");
    for c in &history {
        assert_eq!(c["author"], node.peer_id.as_str(), "{c}");
        assert!(c["time"].as_u64().is_some() && c["hash"].is_string(), "{c}");
    }

    // Export as Markdown to a file and as JSON to standard output.
    let md = root.path().join("plan.md");
    let out = node.cli(&["doc", "export", &note_doc, "--out", md.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let exported = std::fs::read_to_string(&md).unwrap();
    assert!(exported.contains("Plan"), "{exported}");
    assert!(exported.contains("added in the editor"), "{exported}");
    let out = node.cli(&["doc", "export", &note_doc, "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let exported: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(exported["doc"], note_doc.as_str());
    assert_eq!(exported["text"], text.as_str());

    // A thread with a reply.
    let thread = new("Lunch?", "thread");
    let first = json(&node, &["doc", "post", &thread, "Pizza", "on", "Friday?"]);
    let first = first["post"].as_str().unwrap().to_owned();
    json(
        &node,
        &["doc", "post", &thread, "Yes", "--reply-to", &first],
    );
    let posts = json(&node, &["doc", "show", &thread])["posts"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(posts.len(), 2, "{posts:?}");
    assert_eq!(posts[0]["text"], "Pizza on Friday?");
    assert!(posts[0]["reply_to"].is_null());
    assert_eq!(posts[1]["text"], "Yes");
    assert_eq!(posts[1]["reply_to"], first.as_str());
    assert_eq!(posts[1]["author"], node.peer_id.as_str());

    // A form, from a file and from standard input; non-objects are refused before sending.
    let form = new("Signup", "form");
    let file = root.path().join("fields.json");
    std::fs::write(&file, r#"{"name": "Ada", "seats": 2}"#).unwrap();
    json(&node, &["doc", "set", &form, file.to_str().unwrap()]);
    let out = with_stdin(
        &node,
        &["doc", "set", &form, "-"],
        br#"{"name": "Ada", "seats": 3}"#,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = json(&node, &["doc", "show", &form]);
    assert_eq!(shown["fields"]["name"], "Ada", "{shown}");
    assert_eq!(shown["fields"]["seats"], 3, "{shown}");
    let fields_heads = heads(&shown);
    std::fs::write(&file, "[1, 2]").unwrap();
    let err = fails(
        &node.cli(&["doc", "set", &form, file.to_str().unwrap()]),
        1,
        "an array as form fields",
    );
    assert!(err.contains("not a JSON object"), "{err}");
    let err = fails(
        &with_stdin(&node, &["doc", "set", &form, "-"], b"name = Ada"),
        1,
        "TOML as form fields",
    );
    assert!(err.contains("standard input is not JSON"), "{err}");
    assert_eq!(heads(&json(&node, &["doc", "show", &form])), fields_heads);

    // The space lists all three, and `doc edit` on a non-note says what to use instead.
    let docs = json(&node, &["doc", "list", &space])["docs"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(docs, 3);
    let err = fails(&edit_with(&node, &form, &idle, false), 1, "editing a form");
    assert!(err.contains("not a note"), "{err}");
    assert!(err.contains("agora doc set"), "{err}");
}

#[test]
fn bad_ids_roles_dates_and_input_are_clear_errors() {
    let root = tempfile::tempdir().unwrap();
    let node = Node::start(&root.path().join("n"), &[]);
    let peer = node.peer_id.clone();
    let space = json(&node, &["space", "create", "team"])["space"]
        .as_str()
        .unwrap()
        .to_owned();
    let doc = json(&node, &["doc", "new", &space, "Minutes"])["doc"]
        .as_str()
        .unwrap()
        .to_owned();
    let tasks = json(&node, &["doc", "new", &space, "Todo", "--kind", "tasks"])["doc"]
        .as_str()
        .unwrap()
        .to_owned();

    // Unknown ids: the node's not-found, no panic.
    let unknown = "0".repeat(64);
    for args in [
        vec!["doc", "show", unknown.as_str()],
        vec!["doc", "append", unknown.as_str(), "x"],
        vec!["space", "show", unknown.as_str()],
        vec!["doc", "new", unknown.as_str(), "T"],
        vec!["task", "done", tasks.as_str(), unknown.as_str()],
    ] {
        let err = fails(&node.cli(&args), 1, &format!("{args:?}"));
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert!(err.contains("HTTP 404"), "{args:?}: {err}");
        assert!(!err.contains("no such route"), "{args:?}: {err}");
    }

    // Usage errors are clap's (exit 2), name the bad value and what would do; none reaches
    // the node (they fail the same with no node running).
    let nowhere = root.path().join("no-node");
    for (args, needles) in [
        (
            vec![
                "space",
                "invite",
                space.as_str(),
                peer.as_str(),
                "--role",
                "owner",
            ],
            vec!["invalid value 'owner'", "admin, editor, reader"],
        ),
        (
            vec!["space", "role", space.as_str(), peer.as_str(), "boss"],
            vec!["invalid value 'boss'", "admin, editor, reader"],
        ),
        (
            vec!["space", "invite", space.as_str(), "bob"],
            vec!["not a peer id"],
        ),
        (
            vec!["doc", "new", space.as_str(), "T", "--kind", "sheet"],
            vec!["invalid value 'sheet'", "note, tasks, thread, form"],
        ),
        (
            vec!["task", "add", tasks.as_str(), "T", "--due", "31/01/2030"],
            vec!["YYYY-MM-DD"],
        ),
        (
            vec!["task", "add", tasks.as_str(), "T", "--due", "2030-13-01"],
            vec!["no month 13"],
        ),
        (
            vec!["task", "add", tasks.as_str(), "T", "--due", "2031-02-29"],
            vec!["no day 29 in February 2031"],
        ),
        (
            vec!["task", "assign", tasks.as_str(), "t1", "bob"],
            vec!["not a peer id"],
        ),
    ] {
        for dir in [&node.dir, &nowhere] {
            let out = agora()
                .args(&args)
                .arg("--data-dir")
                .arg(dir)
                .output()
                .unwrap();
            let err = fails(&out, 2, &format!("{args:?}"));
            for needle in &needles {
                assert!(err.contains(needle), "{args:?}: {err}");
            }
        }
    }
    assert!(
        json(&node, &["doc", "show", &tasks])["items"]
            .as_array()
            .unwrap()
            .is_empty(),
        "a task with a bad date was added"
    );

    // Empty input is refused rather than wiping the note.
    write(&node, &doc, "keep me\n");
    let err = fails(
        &with_stdin(&node, &["doc", "write", &doc], b""),
        1,
        "empty write",
    );
    assert!(err.contains("--allow-empty"), "{err}");
    assert_eq!(note(&node, &doc).unwrap().0, "keep me\n");
    let out = with_stdin(&node, &["doc", "write", &doc, "--allow-empty"], b"");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(note(&node, &doc).unwrap().0, "");
}

/// A gauge or counter from `node`'s `/metrics` (0 when absent).
fn metric(node: &Node, name: &str) -> u64 {
    let (_, text) = node.request("GET", "/metrics", Some(&node.token.clone()), None);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

/// Whether any file under `dir` contains `needle`.
fn dir_contains(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            dir_contains(&p, needle)
        } else {
            std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
        }
    })
}

#[test]
fn members_never_online_together_converge_through_holders_that_see_only_ciphertext() {
    let root = tempfile::tempdir().unwrap();
    // 0: owner, 1: editor, 2: editor removed later, 3..6: nodes that are not members.
    let mut net = mesh(root.path(), 6);
    let (space, doc) = space_with_note(&net[0], BASE);
    invite_and_join(&net[0], &net[1], &space, "editor");
    invite_and_join(&net[0], &net[2], &space, "editor");
    wait_text(&net[1], &doc, BASE);
    wait_text(&net[2], &doc, BASE);
    let held = |net: &[Node]| -> u64 {
        net[3..]
            .iter()
            .map(|h| metric(h, "agora_docs_held_envelopes"))
            .sum()
    };
    // The holders keep the space from the start (creation, invites, the note).
    wait_for("the holders to take envelopes", SYNC, || {
        (held(&net) > 0).then_some(())
    });

    // The editor goes away; the owner removes the other editor (rotating the key) and
    // writes a phrase the holders must never be able to read.
    assert!(net[1].terminate().success());
    let before = held(&net);
    json(&net[0], &["space", "remove", &space, &net[2].peer_id]);
    const SECRET: &str = "Quetzalcoatl marmalade 7731";
    let text = format!("{BASE}{SECRET}\n");
    write(&net[0], &doc, &text);
    // Every upload has reached the holders once their count grew and then held still.
    let mut last = (before, Instant::now());
    wait_for("the holders to take the new envelopes", SYNC, || {
        let now = held(&net);
        if now != last.0 {
            last = (now, Instant::now());
        }
        (now > before && last.1.elapsed() > Duration::from_secs(3)).then_some(())
    });

    // The owner goes away before the editor comes back: they are never online together.
    assert!(net[0].terminate().success());
    let b_dir = net[1].dir.clone();
    net[1] = Node::start(&b_dir, &[]);
    for h in 2..6 {
        connect(&net[1], &net[h]);
    }
    let b_heads = wait_text(&net[1], &doc, &text);
    assert!(!b_heads.is_empty());

    // The removed editor took sealed envelopes from the holders and could not open them.
    wait_for(
        "the removed editor to take what it cannot read",
        SYNC,
        || (metric(&net[2], "agora_docs_unreadable_envelopes") > 0).then_some(()),
    );
    let (c_text, _) = note(&net[2], &doc).expect("the removed editor keeps what it had");
    assert!(!c_text.contains(SECRET), "{c_text}");

    // Holders keep ciphertext only: neither the phrase nor the document's title is in any
    // file of their data directories.
    for h in &net[3..] {
        assert!(metric(h, "agora_docs_held_envelopes") > 0 || h.dir.exists());
        assert!(
            !dir_contains(&h.dir, SECRET.as_bytes()),
            "{}",
            h.dir.display()
        );
        assert!(!dir_contains(&h.dir, b"Minutes"), "{}", h.dir.display());
    }
}

#[test]
fn an_attachment_is_fetched_verified_by_another_member() {
    let root = tempfile::tempdir().unwrap();
    let net = mesh(root.path(), 2);
    let (a, b) = (&net[0], &net[1]);
    let (space, doc) = space_with_note(a, BASE);
    invite_and_join(a, b, &space, "editor");
    let file = root.path().join("plan.bin");
    let content: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &content).unwrap();
    let attached = json(a, &["doc", "attach", &doc, file.to_str().unwrap()]);
    assert_eq!(attached["name"], "plan.bin", "{attached}");
    assert_eq!(attached["size"], 300_000, "{attached}");
    let hash = attached["hash"].as_str().unwrap().to_owned();
    assert_eq!(hash, blake3::hash(&content).to_hex().as_str());
    // b sees the attachment in the document and fetches the file from a, verified.
    let listed = wait_for("the attachment at b", SYNC, || {
        let v = try_json(b, &["doc", "show", &doc]).ok()?;
        v["attachments"]
            .as_array()?
            .iter()
            .find(|x| x["hash"] == hash.as_str())
            .cloned()
    });
    assert_eq!(listed["by"], a.peer_id.as_str(), "{listed}");
    let out = root.path().join("fetched.bin");
    let o = b.cli(&["get", &hash, "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out).unwrap(), content);
    // Attaching something that is not a file is a clear error and changes nothing.
    let heads = heads(&json(a, &["doc", "show", &doc]));
    let o = a.cli(&["doc", "attach", &doc, root.path().to_str().unwrap()]);
    let err = fails(&o, 1, "attach a directory");
    assert!(err.contains("not a file"), "{err}");
    assert_eq!(heads, self::heads(&json(a, &["doc", "show", &doc])));
}

#[test]
fn a_member_killed_mid_sync_restarts_with_a_consistent_note_and_completes_it() {
    let root = tempfile::tempdir().unwrap();
    let mut net = mesh(root.path(), 2);
    let (space, doc) = space_with_note(&net[0], BASE);
    invite_and_join(&net[0], &net[1], &space, "editor");
    wait_text(&net[1], &doc, BASE);
    assert!(net[1].terminate().success());
    // While b is away, a appends 8 chunks of 60 kB, one change each.
    const CHUNKS: usize = 8;
    let chunk = |i: usize| format!("{i:04}{}\n", "z".repeat(60_000));
    for i in 0..CHUNKS {
        let out = with_stdin(&net[0], &["doc", "append", &doc, "-"], chunk(i).as_bytes());
        assert!(out.status.success(), "append {i}: {}", stderr(&out));
    }
    let full: String = std::iter::once(BASE.to_owned())
        .chain((0..CHUNKS).map(chunk))
        .collect();
    // b comes back, and is killed as soon as the first changes have arrived.
    let b_dir = net[1].dir.clone();
    net[1] = Node::start(&b_dir, &[]);
    connect(&net[1], &net[0]);
    wait_for("b to receive the first changes", SYNC, || {
        (metric(&net[1], "agora_docs_changes_received_total") > 0).then_some(())
    });
    net[1].kill9();
    // Restarted alone, b holds a note that is one of the states a went through: the base
    // and a prefix of the chunks, nothing torn.
    net[1] = Node::start(&b_dir, &[]);
    let (text, _) = note(&net[1], &doc).expect("b keeps the note across kill -9");
    let k = (0..=CHUNKS)
        .find(|&k| {
            let prefix: String = std::iter::once(BASE.to_owned())
                .chain((0..k).map(chunk))
                .collect();
            prefix == text
        })
        .unwrap_or_else(|| panic!("b's note is not a state a had: {} bytes", text.len()));
    eprintln!("b had {k} of {CHUNKS} chunks when it was killed");
    // Back with a, b completes the sync.
    connect(&net[1], &net[0]);
    wait_text(&net[1], &doc, &full);
}

#[test]
fn a_long_history_is_snapshotted_and_both_members_reload_it_after_kill_9() {
    let root = tempfile::tempdir().unwrap();
    let mut net = mesh(root.path(), 2);
    let (space, doc) = space_with_note(&net[0], BASE);
    invite_and_join(&net[0], &net[1], &space, "editor");
    wait_text(&net[1], &doc, BASE);
    // 600 changes: a snapshot replaces the stored changes every 256, on the author (local
    // edits) and on the member that receives them by sync.
    let mut full = BASE.to_owned();
    for i in 0..600 {
        let line = format!("line {i}\n");
        let (status, body) = net[(i / 300) % 2].post(
            &format!("/v1/docs/{doc}/append"),
            &serde_json::json!({ "text": line }),
        );
        assert_eq!(status, 200, "append {i}: {body}");
        full.push_str(&line);
        if i == 299 {
            wait_text(&net[1], &doc, &full);
        }
    }
    let heads = wait_text(&net[0], &doc, &full);
    assert_eq!(wait_text(&net[1], &doc, &full), heads);
    for n in &net {
        assert!(
            metric(n, "agora_docs_snapshots_written_total") >= 2,
            "{}",
            n.dir.display()
        );
    }
    // kill -9 both; each comes back alone with the same note and heads, from its snapshot and
    // the changes stored after it.
    let dirs: Vec<PathBuf> = net.iter().map(|n| n.dir.clone()).collect();
    for n in net.iter_mut() {
        n.kill9();
    }
    for (i, dir) in dirs.iter().enumerate() {
        net[i] = Node::start(dir, &[]);
        let (text, h) = note(&net[i], &doc).expect("the note is back");
        assert_eq!(text, full, "node {i}");
        assert_eq!(h, heads, "node {i}");
    }
    // Both still edit and merge after the reload.
    write(&net[1], &doc, &format!("{full}from b\n"));
    connect(&net[0], &net[1]);
    wait_text(&net[0], &doc, &format!("{full}from b\n"));
}
