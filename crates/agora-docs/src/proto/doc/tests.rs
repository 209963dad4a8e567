use super::*;
use crate::{Action, Role};
use libp2p_identity::ed25519::{Keypair, SecretKey};

fn key(n: u8) -> Keypair {
    Keypair::from(SecretKey::try_from_bytes([n; 32]).unwrap())
}

fn peer(k: &Keypair) -> PeerId {
    libp2p_identity::PublicKey::from(k.public()).to_peer_id()
}

struct World {
    space: Space,
    owner: Keypair,
    editor: Keypair,
    reader: Keypair,
    outsider: Keypair,
}

fn world() -> World {
    let owner = key(1);
    let editor = key(2);
    let reader = key(3);
    let (mut space, _) = Space::create("team", &owner, 1).unwrap();
    space
        .act(
            Action::Add {
                member: peer(&editor),
                role: Role::Editor,
            },
            &owner,
            2,
        )
        .unwrap();
    space
        .act(
            Action::Add {
                member: peer(&reader),
                role: Role::Reader,
            },
            &owner,
            3,
        )
        .unwrap();
    World {
        space,
        owner,
        editor,
        reader,
        outsider: key(9),
    }
}

fn replica(w: &World, d: &mut Document, me: &Keypair) -> Document {
    let mut r = Document::empty(w.space.id(), d.id(), &peer(me));
    let got = r.receive(&w.space, d.changes(&[]));
    assert!(got.refused.is_empty(), "{:?}", got.refused);
    r
}

#[test]
fn concurrent_edits_of_one_paragraph_merge_per_character() {
    let w = world();
    let (mut a, _) = Document::create(&w.space, Kind::Note, "plan", &w.owner, 10).unwrap();
    a.set_text(&w.space, &w.owner, 11, "The meeting is on Monday.\n")
        .unwrap();
    let mut b = replica(&w, &mut a, &w.editor);
    // Both edit the same sentence while apart.
    a.set_text(&w.space, &w.owner, 12, "The long meeting is on Monday.\n")
        .unwrap();
    b.set_text(&w.space, &w.editor, 12, "The meeting is on Monday at 10.\n")
        .unwrap();
    let from_a = a.changes(&[]);
    let from_b = b.changes(&[]);
    b.receive(&w.space, from_a);
    a.receive(&w.space, from_b);
    assert_eq!(a.text().unwrap(), "The long meeting is on Monday at 10.\n");
    assert_eq!(a.text().unwrap(), b.text().unwrap());
    assert_eq!(a.heads(), b.heads());
}

#[test]
fn readers_outsiders_and_forgeries_are_refused() {
    let w = world();
    let (mut a, _) = Document::create(&w.space, Kind::Note, "n", &w.owner, 10).unwrap();
    // A reader cannot edit locally...
    let mut r = replica(&w, &mut a, &w.reader);
    assert!(matches!(
        r.set_text(&w.space, &w.reader, 11, "x"),
        Err(DocError::NotWriter { .. })
    ));
    // ...nor by crafting a change with a space where it is an editor.
    let (mut fake, _) = Space::create("team", &w.reader, 1).unwrap();
    fake.act(
        Action::Add {
            member: peer(&w.owner),
            role: Role::Editor,
        },
        &w.reader,
        2,
    )
    .unwrap();
    let mut forged_doc = Document::empty(w.space.id(), a.id(), &peer(&w.reader));
    forged_doc.receive(&w.space, a.changes(&[]));
    let c = forged_doc
        .set_text(
            &fake_space_with_writer(&w, &w.reader),
            &w.reader,
            12,
            "evil",
        )
        .unwrap()
        .unwrap();
    let got = a.receive(&w.space, vec![c.clone()]);
    assert_eq!(got.applied.len(), 0);
    assert!(
        matches!(got.refused[0].1, DocError::NotWriter { .. }),
        "{:?}",
        got.refused
    );
    // An outsider likewise.
    let mut outsider_doc = Document::empty(w.space.id(), a.id(), &peer(&w.outsider));
    outsider_doc.receive(&w.space, a.changes(&[]));
    let c2 = outsider_doc
        .set_text(
            &fake_space_with_writer(&w, &w.outsider),
            &w.outsider,
            13,
            "evil2",
        )
        .unwrap()
        .unwrap();
    let got = a.receive(&w.space, vec![c2]);
    assert!(matches!(got.refused[0].1, DocError::NotWriter { .. }));
    // An editor's change with a tampered signature or tampered bytes.
    let mut e = replica(&w, &mut a, &w.editor);
    let mut good = e
        .set_text(&w.space, &w.editor, 14, "fine")
        .unwrap()
        .unwrap();
    good.sig[0] ^= 1;
    let got = a.receive(&w.space, vec![good.clone()]);
    assert!(
        matches!(got.refused[0].1, DocError::BadSignature { .. }),
        "{:?}",
        got.refused
    );
    good.sig[0] ^= 1;
    let mut bad_bytes = good.clone();
    let n = bad_bytes.bytes.len();
    bad_bytes.bytes[n - 1] ^= 1;
    let got = a.receive(&w.space, vec![bad_bytes]);
    assert_eq!(got.applied.len(), 0);
    assert_eq!(got.refused.len(), 1);
    // The genuine one applies; nothing refused changed the text.
    let got = a.receive(&w.space, vec![good]);
    assert_eq!(got.applied.len(), 1);
    assert_eq!(a.text().unwrap(), "fine");
    // A change replayed into another document of the same space is refused.
    let (mut other, _) = Document::create(&w.space, Kind::Note, "other", &w.owner, 20).unwrap();
    let got = other.receive(&w.space, e.changes(&[]));
    assert!(got.applied.is_empty());
}

/// A space (with the real space's id, so documents bind to it) where `k` may write: what a
/// hostile peer would sign with. Built by adding `k` in a copy of the real log.
fn fake_space_with_writer(w: &World, k: &Keypair) -> Space {
    let mut s = w.space.clone();
    if !s.can_write(&peer(k)) {
        let action = if s.role(&peer(k)).is_some() {
            Action::ChangeRole {
                member: peer(k),
                role: Role::Editor,
            }
        } else {
            Action::Add {
                member: peer(k),
                role: Role::Editor,
            }
        };
        s.act(action, &w.owner, 50).unwrap();
    }
    s
}

#[test]
fn removed_members_later_changes_are_refused_and_earlier_anchored_ones_kept() {
    let w = world();
    let (mut a, _) = Document::create(&w.space, Kind::Note, "n", &w.owner, 10).unwrap();
    let mut e = replica(&w, &mut a, &w.editor);
    let before = e
        .append_text(&w.space, &w.editor, 11, "kept ")
        .unwrap()
        .unwrap();
    a.receive(&w.space, vec![before]);
    // The owner removes the editor and anchors every document.
    let mut space = w.space.clone();
    space
        .act(
            Action::Remove {
                member: peer(&w.editor),
            },
            &w.owner,
            12,
        )
        .unwrap();
    let anchor = a.anchor(&space, &w.owner, 13).unwrap();
    // The editor, not knowing, writes on: refused (parked) by the owner.
    let after = e
        .append_text(&w.space, &w.editor, 14, "late")
        .unwrap()
        .unwrap();
    let got = a.receive(&space, vec![after.clone()]);
    assert!(got.applied.is_empty());
    assert_eq!(a.text().unwrap(), "kept ");
    // A third member that saw "late" before the removal drops it when the removal arrives,
    // and keeps "kept " thanks to the anchor.
    let mut third = Document::empty(w.space.id(), a.id(), &peer(&w.reader));
    third.receive(&w.space, e.changes(&[]));
    assert_eq!(third.text().unwrap(), "kept late");
    third.receive(&space, vec![anchor]);
    assert_eq!(third.recheck(&space), 1);
    assert_eq!(third.text().unwrap(), "kept ");
    assert_eq!(third.heads(), a.heads());
}

#[test]
fn concurrent_change_built_on_by_a_writer_is_kept_everywhere() {
    let w = world();
    let (mut a, _) = Document::create(&w.space, Kind::Note, "n", &w.owner, 10).unwrap();
    let editor2 = key(4);
    let mut space = w.space.clone();
    space
        .act(
            Action::Add {
                member: peer(&editor2),
                role: Role::Editor,
            },
            &w.owner,
            11,
        )
        .unwrap();
    let mut e = replica(&w, &mut a, &w.editor);
    let c1 = e
        .append_text(&space, &w.editor, 12, "one ")
        .unwrap()
        .unwrap();
    // editor2 sees c1 and builds on it before hearing of the removal.
    let mut f = Document::empty(w.space.id(), a.id(), &peer(&editor2));
    f.receive(&space, a.changes(&[]));
    f.receive(&space, vec![c1.clone()]);
    let c2 = f.append_text(&space, &editor2, 13, "two").unwrap().unwrap();
    space
        .act(
            Action::Remove {
                member: peer(&w.editor),
            },
            &w.owner,
            14,
        )
        .unwrap();
    // The owner (who knows the removal) gets c2 then c1: c1 is parked, then pulled by c2.
    let got = a.receive(&space, vec![c2]);
    assert!(got.applied.is_empty());
    assert_eq!(a.missing().len(), 1);
    let got = a.receive(&space, vec![c1]);
    assert_eq!(got.applied.len(), 2);
    assert_eq!(a.text().unwrap(), "one two");
    assert_eq!(f.recheck(&space), 0);
}

#[test]
fn tasks_posts_and_forms() {
    let w = world();
    let (mut t, _) = Document::create(&w.space, Kind::Tasks, "todo", &w.owner, 10).unwrap();
    let (id, _) = t
        .add_task(
            &w.space,
            &w.owner,
            11,
            "write report",
            Some(peer(&w.editor)),
            Some("2026-12-31"),
        )
        .unwrap();
    let mut te = replica(&w, &mut t, &w.editor);
    te.update_task(
        &w.space,
        &w.editor,
        12,
        &id,
        &TaskUpdate {
            state: Some(TaskState::Done),
            ..Default::default()
        },
    )
    .unwrap();
    t.receive(&w.space, te.changes(&[]));
    let tasks = t.tasks().unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].state, TaskState::Done);
    assert_eq!(tasks[0].assignee, Some(peer(&w.editor).to_string()));
    assert_eq!(tasks[0].due.as_deref(), Some("2026-12-31"));
    assert!(matches!(t.text(), Err(DocError::WrongKind { .. })));
    assert!(matches!(
        t.update_task(&w.space, &w.owner, 13, "nope", &TaskUpdate::default()),
        Err(DocError::NoTask(_))
    ));

    let (mut th, _) = Document::create(&w.space, Kind::Thread, "talk", &w.owner, 10).unwrap();
    let (p, _) = th.add_post(&w.space, &w.owner, 11, "first", None).unwrap();
    th.add_post(&w.space, &w.owner, 12, "reply", Some(&p))
        .unwrap();
    assert!(
        th.add_post(&w.space, &w.owner, 12, "x", Some("missing"))
            .is_err()
    );
    let posts = th.posts().unwrap();
    assert_eq!(posts[1].reply_to.as_deref(), Some(p.as_str()));

    let (mut f, _) = Document::create(&w.space, Kind::Form, "form", &w.owner, 10).unwrap();
    let v = serde_json::json!({"name": "x", "n": 3, "tags": ["a", {"b": true}], "none": null});
    f.set_fields(&w.space, &w.owner, 11, &v).unwrap();
    assert_eq!(f.fields().unwrap(), v);
    let v2 = serde_json::json!({"name": "y"});
    f.set_fields(&w.space, &w.owner, 12, &v2).unwrap();
    assert_eq!(f.fields().unwrap(), v2);
    assert!(matches!(
        f.set_fields(&w.space, &w.owner, 13, &serde_json::json!([1])),
        Err(DocError::NotAnObject)
    ));
    assert_eq!(f.history().len(), 3);
    assert_eq!(f.history()[1].author, peer(&w.owner).to_string());
}

#[test]
fn load_rebuilds_and_detects_corruption() {
    let w = world();
    let (mut a, _) = Document::create(&w.space, Kind::Note, "n", &w.owner, 10).unwrap();
    for i in 0..10 {
        a.append_text(&w.space, &w.owner, 11 + i, "ab").unwrap();
    }
    let changes = a.changes(&[]);
    let mut b = Document::load(w.space.id(), a.id(), &peer(&w.owner), changes.clone()).unwrap();
    assert_eq!(b.text().unwrap(), a.text().unwrap());
    assert_eq!(b.heads(), a.heads());
    let mut bad = changes.clone();
    bad[3].sig[5] ^= 0x40;
    assert!(Document::load(w.space.id(), a.id(), &peer(&w.owner), bad).is_err());
    let mut short = changes;
    short.remove(2);
    assert!(Document::load(w.space.id(), a.id(), &peer(&w.owner), short).is_err());
    // A second root change in the same document is refused.
    let mut fake = Document::empty(w.space.id(), a.id(), &peer(&w.owner));
    let (_, other_root) = Document::create(&w.space, Kind::Note, "n2", &w.owner, 99).unwrap();
    let got = fake.receive(&w.space, vec![other_root]);
    assert!(got.applied.is_empty() && !got.refused.is_empty(), "{got:?}");
}

#[test]
fn compressed_and_oversized_chunks_are_refused_before_parsing() {
    let w = world();
    let (mut a, _) = Document::create(&w.space, Kind::Note, "n", &w.owner, 10).unwrap();
    let mut c = a
        .append_text(&w.space, &w.owner, 11, &"x".repeat(2000))
        .unwrap()
        .unwrap();
    c.bytes[8] = 2;
    let got = a.receive(&w.space, vec![c]);
    assert!(matches!(got.refused[0].1, DocError::Malformed(_)));
    let big = SignedChange {
        bytes: vec![0; MAX_CHANGE_BYTES + 1],
        sig: vec![0; 64],
    };
    let got = a.receive(&w.space, vec![big]);
    assert!(matches!(got.refused[0].1, DocError::TooLarge { .. }));
}

#[test]
fn a_document_at_its_memory_budget_takes_no_more_operations() {
    let w = world();
    let (mut a, _) = Document::create(&w.space, Kind::Note, "n", &w.owner, 10).unwrap();
    let mut e = replica(&w, &mut a, &w.editor);
    // Pretend both copies are a few operations short of the budget.
    a.ops = MAX_DOC_OPS - 5;
    e.ops = MAX_DOC_OPS - 5;
    let before = a.text().unwrap();
    assert!(matches!(
        a.append_text(&w.space, &w.owner, 11, "more than five characters"),
        Err(DocError::DocTooBig { .. })
    ));
    assert_eq!(
        a.text().unwrap(),
        before,
        "the refused edit was rolled back"
    );
    // A small edit still fits.
    a.append_text(&w.space, &w.owner, 12, "ok")
        .unwrap()
        .unwrap();
    // A peer's change that would cross the budget is refused, not applied.
    e.ops = 0;
    let big = e
        .append_text(&w.space, &w.editor, 13, &"x".repeat(100))
        .unwrap()
        .unwrap();
    let got = a.receive(&w.space, vec![big]);
    assert!(got.applied.is_empty());
    assert!(
        got.refused
            .iter()
            .any(|(_, r)| matches!(r, DocError::DocTooBig { .. })),
        "{got:?}"
    );
    assert_eq!(a.text().unwrap(), "ok");
}

#[test]
fn an_edit_larger_than_a_change_may_be_is_undone_with_a_clear_error() {
    let w = world();
    let (mut a, _) = Document::create(&w.space, Kind::Note, "n", &w.owner, 10).unwrap();
    a.set_text(&w.space, &w.owner, 11, "small").unwrap();
    let heads = a.heads();
    let huge = "y".repeat(MAX_CHANGE_BYTES + 1000);
    assert!(matches!(
        a.set_text(&w.space, &w.owner, 12, &huge),
        Err(DocError::TooLarge { .. })
    ));
    assert_eq!(a.text().unwrap(), "small");
    assert_eq!(a.heads(), heads);
    // The document still takes edits afterwards, and a replica agrees.
    a.append_text(&w.space, &w.owner, 13, " more").unwrap();
    let r = replica(&w, &mut a, &w.editor);
    assert_eq!(r.text().unwrap(), "small more");
}

#[test]
fn a_snapshot_restores_the_document_and_detects_corruption() {
    let w = world();
    let me = peer(&w.owner);
    let (mut a, _) = Document::create(&w.space, Kind::Note, "n", &w.owner, 10).unwrap();
    for i in 0..20 {
        a.append_text(&w.space, &w.owner, 11 + i, "ab").unwrap();
    }
    let snap = a.snapshot();
    let at_snapshot = a.changes(&[]);
    // Changes after the snapshot, and one the snapshot already holds, form the stored tail.
    let heads = a.heads();
    a.append_text(&w.space, &w.owner, 40, "tail").unwrap();
    let mut tail = a.changes(&heads);
    assert_eq!(tail.len(), 1);
    tail.insert(0, at_snapshot[5].clone());
    let mut b = Document::restore(w.space.id(), a.id(), &me, snap.clone(), tail.clone()).unwrap();
    assert_eq!(b.text().unwrap(), a.text().unwrap());
    assert_eq!(b.heads(), a.heads());
    assert_eq!(b.len(), a.len());
    // The restored document hands out the same signed changes (signatures kept) ...
    assert_eq!(b.changes(&[]), a.changes(&[]));
    // ... and edits as this node's actor.
    let c = b.append_text(&w.space, &w.owner, 41, "!").unwrap().unwrap();
    assert_eq!(a.receive(&w.space, vec![c]).applied.len(), 1);

    let restore = |s: Snapshot, t: Vec<SignedChange>| {
        Document::restore(w.space.id(), a.id(), &me, s, t).map(drop)
    };
    let mut flipped = snap.clone();
    flipped.save[40] ^= 1;
    assert!(matches!(
        restore(flipped, vec![]),
        Err(DocError::Corrupt(_))
    ));
    let mut sig = snap.clone();
    sig.sigs[3].1[0] ^= 1;
    assert!(matches!(restore(sig, vec![]), Err(DocError::Corrupt(_))));
    // A snapshot of another document does not pass for this one.
    let (mut other, _) = Document::create(&w.space, Kind::Note, "o", &w.owner, 10).unwrap();
    assert!(matches!(
        restore(other.snapshot(), vec![]),
        Err(DocError::Corrupt(_))
    ));
    // A forged change in the tail is an error, not a different document.
    let mut forged = tail;
    forged[1].sig[7] ^= 1;
    assert!(restore(snap, forged).is_err());
}

#[test]
fn a_change_already_applied_is_not_checked_again() {
    let w = world();
    let (mut a, first) = Document::create(&w.space, Kind::Note, "n", &w.owner, 10).unwrap();
    let c = a.append_text(&w.space, &w.owner, 11, "x").unwrap().unwrap();
    let mut b = Document::empty(w.space.id(), a.id(), &peer(&w.editor));
    let got = b.receive(&w.space, vec![first.clone(), c.clone()]);
    assert_eq!(got.applied.len(), 2);
    assert_eq!(got.applied[1].author, peer(&w.owner));
    assert_eq!(got.applied[1].change, c);
    // Sent again, even with a damaged signature: nothing applied, nothing refused.
    let mut again = c.clone();
    again.sig[0] ^= 1;
    let got = b.receive(&w.space, vec![first, again]);
    assert!(got.applied.is_empty() && got.refused.is_empty(), "{got:?}");
}

#[test]
fn splices_in_runs_give_the_same_text_as_one_by_one() {
    let w = world();
    let (mut a, _) = Document::create(&w.space, Kind::Note, "n", &w.owner, 10).unwrap();
    // Typing, a backspace run, a forward-delete run, typing elsewhere, a jump, a multi-char
    // delete; every shape of run the coalescing joins and the ones it must not.
    let edits: Vec<(usize, isize, &str)> = vec![
        (0, 0, "h"),
        (1, 0, "e"),
        (2, 0, "l"),
        (3, 0, "l"),
        (4, 0, "o"),
        (5, 0, " "),
        (6, 0, "w"),
        (7, 0, "x"),
        (7, 1, ""),
        (6, 1, ""),
        (5, 1, ""),
        (1, 1, ""),
        (1, 1, ""),
        (1, 0, "E"),
        (0, 0, ">"),
        (1, 0, "é"),
        (2, 0, "ß"),
        (3, 2, ""),
        (4, 0, "!"),
    ];
    let mut model: Vec<char> = Vec::new();
    for (pos, del, ins) in &edits {
        model.splice(*pos..*pos + *del as usize, ins.chars());
    }
    a.splice(&w.space, &w.owner, 11, &edits).unwrap().unwrap();
    assert_eq!(a.text().unwrap(), model.into_iter().collect::<String>());
    // Another member applies the change and reads the same text.
    let mut b = Document::empty(w.space.id(), a.id(), &peer(&w.editor));
    b.receive(&w.space, a.changes(&[]));
    assert_eq!(b.text().unwrap(), a.text().unwrap());
}
