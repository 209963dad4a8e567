//! Hostile peers against a real groupware node: bare `agora_net` nodes that send raw bytes on
//! `/agora/docs/1.0.0` over real loopback sockets to a node running the real [`Docs`] service.
//!
//! The attackers build their messages with the crate's own pure core (`Space`, `Document`),
//! so what they send is well formed wherever the attack is not the form itself.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use agora_docs::{
    Action, DocId, Document, Kind, MAX_OP_BYTES, MAX_PARENTS, Op, OpId, Role, SignedChange,
    SignedOp, Space, SpaceId,
    proto::{
        doc::MAX_CHANGE_BYTES,
        keys::{Envelope, KeyId, MAX_ENVELOPE_BYTES},
        sync::{MAX_BLOOM_BYTES, MAX_HASHES, SyncMsg},
    },
    service::{self, Docs, DocsError, Edit, budget},
    wire::{self, MAX_DOCS_PER_ROUND, MAX_OPS_PER_MESSAGE, Members, PROTOCOL, Request, Response},
};
use agora_net::{Handle, Multiaddr};
use libp2p_identity::{Keypair, PeerId, ed25519};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long one raw request may take.
const ASK: Duration = Duration::from_secs(10);
/// The note every space of these tests starts with.
const SECRET: &str = "secret plans: meet at the old mill at dawn\n";

// ---- the honest node ----

/// A node running the real groupware service on its own database file.
struct Honest {
    net: Handle,
    addr: Multiaddr,
    id: PeerId,
    keypair: Keypair,
    docs: Arc<Docs>,
    db: Arc<agora_store::Db>,
    path: PathBuf,
    stop: CancellationToken,
    dir: tempfile::TempDir,
}

async fn honest() -> Honest {
    let keypair = Keypair::generate_ed25519();
    let (net, addr) = agora_net::start_loopback(keypair.clone(), vec![])
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agora.redb");
    let db = Arc::new(agora_store::Db::open(&path).unwrap());
    let stop = CancellationToken::new();
    let docs = Docs::start(net.clone(), &keypair, db.clone(), stop.clone())
        .await
        .unwrap();
    Honest {
        id: net.local_peer_id(),
        net,
        addr,
        keypair,
        docs,
        db,
        path,
        stop,
        dir,
    }
}

impl Honest {
    /// Stops the service (cancels its token, drops it), waits until nothing holds it, reopens
    /// the database file and starts the service again on the same node.
    async fn restart(self) -> Result<Honest, DocsError> {
        let Honest {
            net,
            addr,
            id,
            keypair,
            docs,
            db,
            path,
            stop,
            dir,
        } = self;
        let gone = Arc::downgrade(&docs);
        stop.cancel();
        drop(docs);
        let deadline = Instant::now() + Duration::from_secs(20);
        while gone.strong_count() > 0 {
            assert!(
                Instant::now() < deadline,
                "the cancelled service is still held by a task after 20 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(db);
        let db = Arc::new(
            agora_store::Db::open(&path)
                .expect("the database file reopens once the service is gone"),
        );
        let stop = CancellationToken::new();
        let docs = Docs::start(net.clone(), &keypair, db.clone(), stop.clone()).await?;
        Ok(Honest {
            net,
            addr,
            id,
            keypair,
            docs,
            db,
            path,
            stop,
            dir,
        })
    }

    fn refused(&self, budget: &'static str) -> u64 {
        self.net.admission().count(budget)
    }
}

/// A space "team" on `owner` holding one note, "plans", that reads [`SECRET`], with `members`
/// added (their invites are not delivered: bare nodes do not serve the protocol).
async fn team(owner: &Honest, members: &[(&Raw, Role)]) -> (SpaceId, DocId) {
    let view = owner.docs.create_space("team").await.unwrap();
    let space = service::space_id(&view.space).unwrap();
    let doc = owner
        .docs
        .new_doc(&space, "plans", Kind::Note)
        .await
        .unwrap();
    let doc = service::doc_id(&doc.doc).unwrap();
    owner
        .docs
        .edit(&doc, Edit::SetText(SECRET.into()))
        .await
        .unwrap();
    for (m, role) in members {
        owner.docs.invite(&space, m.id, *role).await.unwrap();
    }
    (space, doc)
}

/// What the honest node shows of a space and its note.
#[derive(Debug, PartialEq)]
struct Snapshot {
    text: Option<String>,
    heads: Vec<String>,
    changes: usize,
    docs: usize,
    members: Vec<(String, Role)>,
}

fn snapshot(o: &Honest, space: &SpaceId, doc: &DocId) -> Snapshot {
    let d = o.docs.doc(doc).unwrap();
    let s = o.docs.space(space).unwrap();
    Snapshot {
        text: d.text,
        heads: d.heads,
        changes: d.changes,
        docs: s.docs.len(),
        members: s.members.into_iter().map(|m| (m.peer, m.role)).collect(),
    }
}

fn members_of(o: &Honest, space: &SpaceId) -> Vec<(String, Role)> {
    let s = o.docs.space(space).unwrap();
    s.members.into_iter().map(|m| (m.peer, m.role)).collect()
}

// ---- the bare peers ----

/// A bare node: no groupware service, only raw requests.
struct Raw {
    net: Handle,
    ed: ed25519::Keypair,
    id: PeerId,
}

async fn raw(to: &Honest) -> Raw {
    let keypair = Keypair::generate_ed25519();
    let ed = keypair.clone().try_into_ed25519().unwrap();
    let (net, _) = agora_net::start_loopback(keypair, vec![to.addr.clone()])
        .await
        .unwrap();
    net.dial(to.addr.clone()).await.unwrap();
    Raw {
        id: net.local_peer_id(),
        net,
        ed,
    }
}

impl Raw {
    async fn send(&self, to: PeerId, bytes: Vec<u8>) -> Result<Vec<u8>, agora_net::Error> {
        self.net.request(to, PROTOCOL, bytes, ASK).await
    }

    async fn ask(&self, to: PeerId, request: &Request) -> Result<Vec<u8>, agora_net::Error> {
        self.send(to, wire::encode(request)).await
    }

    /// An honest first round: the whole membership log and every document's changes.
    async fn pull(&self, to: PeerId, space: SpaceId) -> Pulled {
        let request = Request::Sync {
            space,
            members: members(vec![], vec![]),
            docs: vec![],
            all_docs: true,
        };
        let bytes = self
            .ask(to, &request)
            .await
            .expect("a member's sync is answered");
        match Response::decode(&bytes).unwrap() {
            Response::Sync { members, docs, .. } => Pulled {
                space: replica(&members.ops),
                docs: docs.into_iter().map(|(id, m)| (id, m.changes)).collect(),
            },
            other => panic!("a sync answered with {other:?}"),
        }
    }
}

/// A space and its documents as a member received them.
struct Pulled {
    space: Space,
    docs: Vec<(DocId, Vec<SignedChange>)>,
}

impl Pulled {
    /// A replica of document `id` whose edits have `actor` as their automerge actor (the
    /// author a change claims).
    fn replica(&self, id: DocId, actor: &PeerId) -> Document {
        let changes = self
            .docs
            .iter()
            .find(|(d, _)| *d == id)
            .map(|(_, c)| c.clone())
            .expect("the document came with the sync");
        let mut d = Document::empty(self.space.id(), id, actor);
        let r = d.receive(&self.space, changes);
        assert!(r.refused.is_empty(), "{:?}", r.refused);
        d
    }

    /// An honest edit by `me`: the replica's heads after it and the signed change.
    fn edit(&self, id: DocId, me: &Raw, text: &str) -> (Vec<[u8; 32]>, SignedChange) {
        let mut d = self.replica(id, &me.id);
        let c = d
            .set_text(&self.space, &me.ed, now_ms() as i64, text)
            .unwrap()
            .expect("the text changed");
        (d.heads().iter().map(|h| h.0).collect(), c)
    }

    /// An edit whose change claims `actor` as its author and carries `signer`'s signature.
    /// The local editing checks only ask whether the signer may write, so the signer shows
    /// them a space of its own.
    fn forge(
        &self,
        id: DocId,
        actor: &PeerId,
        signer: &ed25519::Keypair,
        text: &str,
    ) -> SignedChange {
        let mut d = self.replica(id, actor);
        let (own, _) = Space::create("mine", signer, 1).unwrap();
        d.set_text(&own, signer, now_ms() as i64, text)
            .unwrap()
            .expect("the text changed")
    }
}

fn replica(ops: &[Vec<u8>]) -> Space {
    let mut ops = ops.iter().map(|b| SignedOp::from_bytes(b).unwrap());
    let mut space =
        Space::from_create(ops.next().expect("a log starts with its create operation")).unwrap();
    for op in ops {
        space.apply(op).unwrap();
    }
    space
}

/// Membership heads and operations to send; no key grants.
fn members(heads: Vec<OpId>, ops: Vec<Vec<u8>>) -> Members {
    Members {
        heads,
        ops,
        ..Members::default()
    }
}

/// A sync round that pushes `changes` of one document.
fn push(space: SpaceId, doc: DocId, heads: Vec<[u8; 32]>, changes: Vec<SignedChange>) -> Request {
    Request::Sync {
        space,
        members: members(vec![], vec![]),
        docs: vec![(
            doc,
            SyncMsg {
                heads,
                changes,
                ..SyncMsg::default()
            },
        )],
        all_docs: false,
    }
}

/// The reason of a refusal; anything else fails the test.
fn refused(what: &str, r: Result<Vec<u8>, agora_net::Error>) -> String {
    match r {
        Err(agora_net::Error::Refused(reason)) => reason,
        Ok(bytes) => panic!(
            "{what}: answered ({} bytes, {}) instead of refused",
            bytes.len(),
            match Response::decode(&bytes) {
                Ok(Response::Sync { docs, .. }) =>
                    format!("a Sync round of {} documents", docs.len()),
                Ok(other) => format!("{other:?}"),
                Err(e) => e.to_string(),
            }
        ),
        Err(e) => panic!("{what}: failed without a refusal: {e}"),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `len` bytes that look random, the same on every run.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

// ---- 1. garbage ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_refused_as_malformed_and_the_node_keeps_serving() {
    let o = honest().await;
    let r = raw(&o).await;
    let (space, doc) = team(&o, &[(&r, Role::Editor)]).await;
    let p = r.pull(o.id, space).await;
    let before = snapshot(&o, &space, &doc);

    // A whole valid round: the log, an edit of the note, ask for everything.
    let (heads, change) = p.edit(doc, &r, "edited after the garbage\n");
    let valid = wire::encode(&Request::Sync {
        space,
        members: members(
            p.space.heads(),
            p.space.ops().map(|o| o.to_bytes()).collect(),
        ),
        docs: vec![(
            doc,
            SyncMsg {
                heads,
                changes: vec![change],
                ..SyncMsg::default()
            },
        )],
        all_docs: true,
    });

    let mut garbage: Vec<(String, Vec<u8>)> = vec![
        ("empty".into(), vec![]),
        (
            "a response sent as a request".into(),
            wire::encode(&Response::Sync {
                members: members(vec![], vec![]),
                docs: vec![],
            }),
        ),
        (
            "the invite answer sent as a request".into(),
            wire::encode(&Response::Invited),
        ),
        (
            "a postcard string".into(),
            wire::encode(&"please sync me".to_string()),
        ),
        ("an unknown request variant".into(), vec![9, 0, 0, 0]),
    ];
    for (seed, len) in [(1, 1), (2, 7), (3, 33), (4, 100), (5, 1000), (6, 65_536)] {
        garbage.push((format!("{len} random bytes"), noise(seed, len)));
    }
    for cut in [1, 33, valid.len() / 2, valid.len() - 1] {
        garbage.push((
            format!("a valid request cut to {cut} of {} bytes", valid.len()),
            valid[..cut].to_vec(),
        ));
    }
    for (what, bytes) in garbage {
        let counted = o.refused(budget::REFUSED_MALFORMED);
        let reason = refused(&what, r.send(o.id, bytes).await);
        assert!(
            reason.starts_with("malformed message") || reason.starts_with("message over limits"),
            "{what}: {reason}"
        );
        assert_eq!(
            o.refused(budget::REFUSED_MALFORMED),
            counted + 1,
            "{what} is counted as malformed once"
        );
    }
    assert_eq!(
        snapshot(&o, &space, &doc),
        before,
        "garbage changed nothing"
    );

    // A well-formed invite that proves nothing is refused with a reason too.
    let reason = refused(
        "an invite of junk operations",
        r.ask(
            o.id,
            &Request::Invite {
                ops: vec![vec![0; 40]],
            },
        )
        .await,
    );
    assert!(reason.starts_with("invite:"), "{reason}");

    // The node still serves the member: its whole round goes through.
    let bytes = r
        .send(o.id, valid)
        .await
        .expect("an honest sync after the garbage");
    match Response::decode(&bytes).unwrap() {
        Response::Sync { docs, .. } => assert!(docs.iter().any(|(d, _)| *d == doc)),
        other => panic!("a sync answered with {other:?}"),
    }
    assert_eq!(
        o.docs.doc(&doc).unwrap().text.as_deref(),
        Some("edited after the garbage\n")
    );
}

// ---- 2. a non-member asks ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_member_is_refused_and_learns_nothing() {
    let o = honest().await;
    let x = raw(&o).await;
    let (space, doc) = team(&o, &[]).await;
    let before = snapshot(&o, &space, &doc);

    let asks = [
        (
            "everything",
            Request::Sync {
                space,
                members: members(vec![], vec![]),
                docs: vec![],
                all_docs: true,
            },
        ),
        (
            "the note by id, from nothing",
            Request::Sync {
                space,
                members: members(vec![], vec![]),
                docs: vec![(doc, SyncMsg::default())],
                all_docs: false,
            },
        ),
        (
            "the note with an empty Bloom filter",
            Request::Sync {
                space,
                members: members(vec![space], vec![]),
                docs: vec![(
                    doc,
                    SyncMsg {
                        heads: vec![[1; 32]],
                        bloom: Some(vec![]),
                        ..SyncMsg::default()
                    },
                )],
                all_docs: true,
            },
        ),
        (
            "a space that does not exist",
            Request::Sync {
                space: OpId([7; 32]),
                members: members(vec![], vec![]),
                docs: vec![],
                all_docs: true,
            },
        ),
    ];
    for (what, request) in asks {
        let counted = o.refused(budget::REFUSED_NOT_MEMBER);
        let reason = refused(what, x.ask(o.id, &request).await);
        assert!(
            reason.contains(budget::REFUSED_NOT_MEMBER),
            "{what}: {reason}"
        );
        assert!(
            !reason.contains("secret"),
            "{what}: the refusal leaks: {reason}"
        );
        assert_eq!(o.refused(budget::REFUSED_NOT_MEMBER), counted + 1, "{what}");
    }
    assert_eq!(snapshot(&o, &space, &doc), before);
}

// ---- 3. pushed changes ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_of_outsiders_forgers_and_readers_are_never_applied() {
    let o = honest().await;
    let editor = raw(&o).await;
    let reader = raw(&o).await;
    let outsider = raw(&o).await;
    let (space, doc) = team(&o, &[(&editor, Role::Editor), (&reader, Role::Reader)]).await;
    // What a member received; the outsider has a copy of it (a leak), so that its changes
    // build on the real document and would apply if authorship were not checked.
    let p = editor.pull(o.id, space).await;
    let before = snapshot(&o, &space, &doc);

    // The outsider's own change, signed by itself.
    let own = p.forge(doc, &outsider.id, &outsider.ed, "pwned by an outsider\n");
    // A change claiming the editor as its author, signed by the outsider.
    let forged = p.forge(
        doc,
        &editor.id,
        &outsider.ed,
        "pwned in the editor's name\n",
    );
    for (what, c) in [("its own change", &own), ("a forged change", &forged)] {
        let counted = o.refused(budget::REFUSED_NOT_MEMBER);
        let reason = refused(
            what,
            outsider
                .ask(o.id, &push(space, doc, vec![], vec![c.clone()]))
                .await,
        );
        assert!(
            reason.contains(budget::REFUSED_NOT_MEMBER),
            "{what}: {reason}"
        );
        assert_eq!(o.refused(budget::REFUSED_NOT_MEMBER), counted + 1);
        assert_eq!(
            snapshot(&o, &space, &doc),
            before,
            "{what} changed the note"
        );
    }

    // A member relays them, and a reader pushes its own change (also the forged one with the
    // reader's signature over the editor's name): none applies, each is counted.
    let reader_own = p.forge(doc, &reader.id, &reader.ed, "a reader writes\n");
    let reader_forged = p.forge(
        doc,
        &editor.id,
        &reader.ed,
        "a reader in the editor's name\n",
    );
    for (what, c) in [
        ("an outsider's change relayed by a reader", own),
        ("a forged change relayed by a reader", forged),
        ("the reader's own change", reader_own),
        ("a change by the reader in the editor's name", reader_forged),
    ] {
        let stats = o.docs.stats().changes_refused;
        let counted = o.refused(budget::REFUSED_CHANGE);
        reader
            .ask(o.id, &push(space, doc, vec![], vec![c]))
            .await
            .unwrap_or_else(|e| panic!("{what}: a member's round is answered: {e}"));
        assert_eq!(
            snapshot(&o, &space, &doc),
            before,
            "{what} changed the note"
        );
        assert_eq!(o.docs.stats().changes_refused, stats + 1, "{what}");
        assert_eq!(o.refused(budget::REFUSED_CHANGE), counted + 1, "{what}");
    }

    // The same path applies the editor's real change (the checks above could fail).
    let (heads, c) = p.edit(doc, &editor, "the editor writes\n");
    editor
        .ask(o.id, &push(space, doc, heads, vec![c]))
        .await
        .unwrap();
    assert_eq!(
        o.docs.doc(&doc).unwrap().text.as_deref(),
        Some("the editor writes\n")
    );
}

// ---- 4. forged membership ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_membership_operations_change_no_one() {
    let o = honest().await;
    let editor = raw(&o).await;
    let outsider = raw(&o).await;
    let (space, _doc) = team(&o, &[(&editor, Role::Editor)]).await;
    let p = editor.pull(o.id, space).await;
    let before = members_of(&o, &space);
    let make_admin = Action::Add {
        member: outsider.id,
        role: Role::Admin,
    };

    // An editor signs an Add by itself; another op claims the owner as author, editor-signed.
    let by_editor = p.space.sign(make_admin.clone(), &editor.ed, now_ms());
    let as_owner = Op {
        parents: p.space.heads(),
        author: o.id,
        time_ms: now_ms(),
        action: make_admin.clone(),
    }
    .sign(&editor.ed);
    for (what, op) in [
        ("signed by an editor", by_editor),
        ("a forged owner", as_owner),
    ] {
        editor
            .ask(
                o.id,
                &Request::Sync {
                    space,
                    members: members(p.space.heads(), vec![op.to_bytes()]),
                    docs: vec![],
                    all_docs: false,
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{what}: a member's round is answered: {e}"));
        assert_eq!(members_of(&o, &space), before, "an Add {what} took effect");
    }

    // The outsider signs its own promotion and asks with it.
    let by_outsider = p.space.sign(make_admin, &outsider.ed, now_ms());
    let reason = refused(
        "a self-signed promotion",
        outsider
            .ask(
                o.id,
                &Request::Sync {
                    space,
                    members: members(vec![], vec![by_outsider.to_bytes()]),
                    docs: vec![],
                    all_docs: true,
                },
            )
            .await,
    );
    assert!(reason.contains(budget::REFUSED_NOT_MEMBER), "{reason}");
    assert_eq!(members_of(&o, &space), before);
    assert!(
        !before
            .iter()
            .any(|(peer, _)| *peer == outsider.id.to_string())
    );
}

// ---- 5. budgets ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_flood_is_refused_by_the_peer_rate_and_served_again_later() {
    let o = honest().await;
    let r = raw(&o).await;
    let (space, _doc) = team(&o, &[(&r, Role::Editor)]).await;
    let quiet = wire::encode(&Request::Sync {
        space,
        members: members(vec![], vec![]),
        docs: vec![],
        all_docs: false,
    });

    // Waves as wide as the requester puts on the wire at once, until one is refused.
    let start = Instant::now();
    let mut served = 0;
    let mut refusal = None;
    for _ in 0..500 {
        let wave = (0..agora_net::MAX_OUTBOUND_PER_PEER).map(|_| r.send(o.id, quiet.clone()));
        for result in libp2p::futures::future::join_all(wave).await {
            match result {
                Ok(_) => served += 1,
                Err(agora_net::Error::Refused(reason)) => {
                    refusal.get_or_insert(reason);
                }
                Err(e) => panic!("a sync failed without a refusal: {e}"),
            }
        }
        if refusal.is_some() {
            break;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let reason = refusal.expect("the sync rate of a peer is bounded");
    assert!(reason.contains(budget::REFUSED_SYNC_RATE), "{reason}");
    assert!(o.refused(budget::REFUSED_SYNC_RATE) > 0);
    let rate = budget::SYNC_REQUESTS;
    let allowed = rate.burst + rate.per_sec * elapsed + 1.0;
    assert!(
        served as f64 >= rate.burst && served as f64 <= allowed,
        "{served} served in {elapsed:.2} s; the budget allows {} then {}/s",
        rate.burst,
        rate.per_sec
    );

    // After a pause the member is served again.
    tokio::time::sleep(Duration::from_secs_f64(2.0 / rate.per_sec)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match r.send(o.id, quiet.clone()).await {
            Ok(bytes) => {
                assert!(matches!(
                    Response::decode(&bytes),
                    Ok(Response::Sync { .. })
                ));
                break;
            }
            Err(agora_net::Error::Refused(reason))
                if reason.contains(budget::REFUSED_SYNC_RATE) && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("the member is not served again after a pause: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_flood_is_refused_and_pending_invites_stay_bounded() {
    let victim = honest().await;
    let attacker = raw(&victim).await;
    // Each invite is valid: a space of the attacker's own that adds the victim.
    let invite = |i: u64| {
        let (mut s, _) = Space::create(&format!("spam {i}"), &attacker.ed, i).unwrap();
        s.act(
            Action::Add {
                member: victim.id,
                role: Role::Editor,
            },
            &attacker.ed,
            i + 1,
        )
        .unwrap();
        wire::encode(&Request::Invite {
            ops: s.ops().map(|o| o.to_bytes()).collect(),
        })
    };
    let cap = budget::MAX_INVITES_PER_PEER;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(40);
    let mut accepted = 0;
    let mut before_first_rate_refusal = None;
    let mut full = None;
    let mut next = 0;
    while full.is_none() {
        assert!(
            Instant::now() < deadline,
            "{accepted} invites accepted, never refused as full"
        );
        match attacker.send(victim.id, invite(next)).await {
            Ok(bytes) => {
                assert!(matches!(Response::decode(&bytes), Ok(Response::Invited)));
                accepted += 1;
                next += 1;
            }
            Err(agora_net::Error::Refused(reason))
                if reason.contains(budget::REFUSED_INVITE_RATE) =>
            {
                before_first_rate_refusal.get_or_insert((accepted, start.elapsed()));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(agora_net::Error::Refused(reason))
                if reason.contains(budget::REFUSED_INVITES_FULL) =>
            {
                full = Some(reason)
            }
            Err(e) => panic!("an invite failed otherwise: {e}"),
        }
        assert!(victim.docs.spaces().1.len() <= cap);
    }
    let (burst_taken, at) = before_first_rate_refusal.expect("the invite rate is bounded");
    let rate = budget::INVITES;
    assert!(
        burst_taken as f64 >= rate.burst
            && burst_taken as f64 <= rate.burst + rate.per_sec * at.as_secs_f64() + 1.0,
        "{burst_taken} invites before the first rate refusal, at {at:?}"
    );
    assert!(victim.refused(budget::REFUSED_INVITE_RATE) > 0);
    assert_eq!(
        accepted, cap,
        "invites taken from one peer before it is full"
    );
    assert_eq!(victim.refused(budget::REFUSED_INVITES_FULL), 1);
    assert_eq!(victim.docs.spaces().1.len(), cap);
}

// ---- 6. over limits ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_limit_messages_are_refused_and_huge_frames_never_arrive() {
    let o = honest().await;
    let r = raw(&o).await;
    let (space, doc) = team(&o, &[(&r, Role::Editor)]).await;
    let before = snapshot(&o, &space, &doc);
    let one = |m: SyncMsg| Request::Sync {
        space,
        members: members(vec![], vec![]),
        docs: vec![(doc, m)],
        all_docs: true,
    };
    let with_members = |m: Members| Request::Sync {
        space,
        members: m,
        docs: vec![],
        all_docs: true,
    };
    let cases = [
        (
            "a Bloom filter over MAX_BLOOM_BYTES",
            one(SyncMsg {
                bloom: Some(vec![0xff; MAX_BLOOM_BYTES + 1]),
                ..SyncMsg::default()
            }),
        ),
        (
            "more than MAX_HASHES heads",
            one(SyncMsg {
                heads: vec![[7; 32]; MAX_HASHES + 1],
                ..SyncMsg::default()
            }),
        ),
        (
            "more than MAX_HASHES needs",
            one(SyncMsg {
                need: vec![[7; 32]; MAX_HASHES + 1],
                ..SyncMsg::default()
            }),
        ),
        (
            "more than MAX_DOCS_PER_ROUND documents",
            Request::Sync {
                space,
                members: members(vec![], vec![]),
                docs: (0..=MAX_DOCS_PER_ROUND as u64)
                    .map(|i| {
                        let id: [u8; 32] = noise(i, 32).try_into().unwrap();
                        (DocId(id), SyncMsg::default())
                    })
                    .chain([(doc, SyncMsg::default())])
                    .collect(),
                all_docs: true,
            },
        ),
        (
            "too many membership heads",
            with_members(members(vec![OpId([1; 32]); MAX_PARENTS * 64 + 1], vec![])),
        ),
        (
            "more than MAX_OPS_PER_MESSAGE membership operations",
            with_members(members(vec![], vec![vec![0]; MAX_OPS_PER_MESSAGE + 1])),
        ),
        (
            "a membership operation over MAX_OP_BYTES",
            with_members(members(vec![], vec![vec![0; MAX_OP_BYTES + 1]])),
        ),
        (
            "an invite with an operation over MAX_OP_BYTES",
            Request::Invite {
                ops: vec![vec![0; MAX_OP_BYTES + 1]],
            },
        ),
    ];
    for (what, request) in cases {
        let counted = o.refused(budget::REFUSED_MALFORMED);
        let reason = refused(what, r.ask(o.id, &request).await);
        assert!(
            reason.starts_with("message over limits"),
            "{what}: {reason}"
        );
        assert_eq!(o.refused(budget::REFUSED_MALFORMED), counted + 1, "{what}");
        assert_eq!(snapshot(&o, &space, &doc), before, "{what} changed state");
    }

    // A frame over the request layer's limit: the requester does not send it…
    let e = r
        .net
        .request(o.id, PROTOCOL, vec![0; agora_net::MAX_FRAME_LEN + 1], ASK)
        .await
        .unwrap_err();
    assert!(matches!(e, agora_net::Error::Request(_)), "{e}");
    // …and a peer that writes one by hand gets the stream closed, no answer.
    // (The same path by hand carries a request of the right length to an answer.)
    let quiet = wire::encode(&Request::Sync {
        space,
        members: members(vec![], vec![]),
        docs: vec![],
        all_docs: false,
    });
    let answer = by_hand(&r.net, o.id, quiet.len(), &quiet).await;
    assert!(
        answer.len() > 4 && matches!(Response::decode(&answer[4..]), Ok(Response::Sync { .. })),
        "{} bytes came back to a request written by hand",
        answer.len()
    );
    let answer = by_hand(
        &r.net,
        o.id,
        agora_net::MAX_FRAME_LEN + 1,
        &vec![0; 256 * 1024],
    )
    .await;
    assert!(answer.is_empty(), "{} bytes came back", answer.len());

    // The member is still served, with everything.
    let p = r.pull(o.id, space).await;
    assert_eq!(p.replica(doc, &r.id).text().unwrap(), SECRET);
    assert_eq!(snapshot(&o, &space, &doc), before);
}

/// Writes a request of the request layer by hand on a stream of its own: the docs protocol's
/// name, a length claim of `claimed` bytes and `body`. Returns whatever came back.
async fn by_hand(net: &Handle, to: PeerId, claimed: usize, body: &[u8]) -> Vec<u8> {
    use libp2p::futures::{AsyncReadExt, AsyncWriteExt};
    let mut control = net.stream_control();
    let mut stream = control
        .open_stream(to, agora_net::RPC_PROTOCOL)
        .await
        .expect("a stream of the request layer opens");
    let protocol = PROTOCOL;
    let name = protocol.as_ref().as_bytes();
    let mut head = (name.len() as u32).to_be_bytes().to_vec();
    head.extend_from_slice(name);
    head.extend_from_slice(&(claimed as u32).to_be_bytes());
    stream.write_all(&head).await.unwrap();
    // The peer may close before all of this is written.
    let _ = stream.write_all(body).await;
    let _ = stream.flush().await;
    let mut back = Vec::new();
    let _ = tokio::time::timeout(ASK, stream.read_to_end(&mut back)).await;
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_over_max_change_bytes_is_refused_as_malformed() {
    let o = honest().await;
    let r = raw(&o).await;
    let (space, doc) = team(&o, &[(&r, Role::Editor)]).await;
    let before = snapshot(&o, &space, &doc);
    // Shaped like a change chunk (magic, checksum, type 1), one byte over the limit.
    let mut bytes = vec![0; MAX_CHANGE_BYTES + 1];
    bytes[..4].copy_from_slice(&[0x85, 0x6f, 0x4a, 0x83]);
    bytes[8] = 1;
    let big = SignedChange {
        bytes,
        sig: vec![0; 64],
    };
    let counted = o.refused(budget::REFUSED_MALFORMED);
    let result = r.ask(o.id, &push(space, doc, vec![], vec![big])).await;
    assert_eq!(
        snapshot(&o, &space, &doc),
        before,
        "an oversized change changed state"
    );
    let reason = refused("a Sync carrying a change over MAX_CHANGE_BYTES", result);
    assert!(reason.starts_with("message over limits"), "{reason}");
    assert_eq!(o.refused(budget::REFUSED_MALFORMED), counted + 1);
}

// ---- 7. durability ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_acknowledged_to_a_member_survive_a_restart() {
    let o = honest().await;
    let r = raw(&o).await;
    let (space, doc) = team(&o, &[(&r, Role::Editor)]).await;
    let p = r.pull(o.id, space).await;
    let (heads, c) = p.edit(doc, &r, "written by the member, acknowledged\n");
    r.ask(o.id, &push(space, doc, heads, vec![c]))
        .await
        .expect("the member's sync is acknowledged");
    let acknowledged = snapshot(&o, &space, &doc);
    assert_eq!(
        acknowledged.text.as_deref(),
        Some("written by the member, acknowledged\n")
    );

    let o = o.restart().await.expect("the service restarts");
    assert_eq!(snapshot(&o, &space, &doc), acknowledged);
    // And it serves the member from what it loaded.
    let p = r.pull(o.id, space).await;
    assert_eq!(
        p.replica(doc, &r.id).text().unwrap(),
        "written by the member, acknowledged\n"
    );
}

/// A non-member's round carries valid operations of an admin that the node lacks: the node
/// applies them (they are self-authenticating) and refuses the round. Whatever it keeps in
/// memory must be in its store too, or its next own operation names a parent the store lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_from_a_refused_round_are_stored_like_the_rest() {
    let o = honest().await;
    let admin = raw(&o).await;
    let outsider = raw(&o).await;
    let (space, _doc) = team(&o, &[(&admin, Role::Admin)]).await;
    let mut p = admin.pull(o.id, space).await;
    let someone = Keypair::generate_ed25519().public().to_peer_id();
    let add = p
        .space
        .act(
            Action::Add {
                member: someone,
                role: Role::Reader,
            },
            &admin.ed,
            now_ms(),
        )
        .unwrap();

    // The outsider relays the admin's operation; it is refused as a non-member.
    let reason = refused(
        "a non-member's round",
        outsider
            .ask(
                o.id,
                &Request::Sync {
                    space,
                    members: members(vec![], vec![add.to_bytes()]),
                    docs: vec![],
                    all_docs: false,
                },
            )
            .await,
    );
    assert!(reason.contains(budget::REFUSED_NOT_MEMBER), "{reason}");

    // The owner changes membership (on top of whatever it holds), then restarts.
    o.docs
        .set_role(&space, admin.id, Role::Editor)
        .await
        .unwrap();
    let members_before = members_of(&o, &space);
    let o = match o.restart().await {
        Ok(o) => o,
        Err(e) => panic!(
            "the service does not start again after a refused round carried valid operations: {e}"
        ),
    };
    assert_eq!(members_of(&o, &space), members_before);
}

// ---- holders ----

/// A well-formed sealed envelope of about `len` bytes that no key opens.
fn envelope(seed: u64, len: usize) -> Vec<u8> {
    Envelope::Sealed {
        key: KeyId([7; 16]),
        nonce: [9; 24],
        ct: noise(seed, len),
    }
    .to_bytes()
}

async fn hold(
    by: &Raw,
    to: PeerId,
    tag: [u8; 32],
    envelope: Vec<u8>,
) -> Result<Vec<u8>, agora_net::Error> {
    by.send(to, wire::encode(&Request::Hold { tag, envelope }))
        .await
}

/// Every envelope `tag` holds on `o`, fetched page by page as `by`.
async fn fetch_all(by: &Raw, o: &Honest, tag: [u8; 32]) -> Vec<Vec<u8>> {
    let mut since = None;
    let mut out = Vec::new();
    loop {
        let answer = loop {
            match by.ask(o.id, &Request::Fetch { tag, since }).await {
                Ok(bytes) => break Response::decode(&bytes).unwrap(),
                Err(agora_net::Error::Refused(r)) if r.contains(budget::REFUSED_FETCH_RATE) => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) => panic!("a fetch failed: {e}"),
            }
        };
        let Response::Fetched { envelopes, more } = answer else {
            panic!("a fetch answered with {answer:?}");
        };
        since = envelopes.last().map(|(seq, _)| *seq).or(since);
        out.extend(envelopes.into_iter().map(|(_, e)| e));
        if !more {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_refuses_non_envelopes_and_floods_of_holds_and_fetches() {
    let o = honest().await;
    let r = raw(&o).await;
    let tag = [0x41; 32];

    // Not an envelope: refused, nothing held.
    for junk in [noise(1, 1000), Vec::new(), vec![0xff; 64]] {
        let reason = refused(
            "junk held",
            r.ask(
                o.id,
                &Request::Hold {
                    tag,
                    envelope: junk,
                },
            )
            .await,
        );
        assert!(reason.contains("not an envelope"), "{reason}");
    }
    assert!(o.refused(budget::REFUSED_MALFORMED) >= 3);
    assert_eq!(o.docs.stats().held_envelopes, 0);

    // A flood of small, distinct envelopes: the hold rate refuses it past its budget.
    let start = Instant::now();
    let mut held = 0;
    let mut refusal = None;
    for wave in 0..100u64 {
        let sends = (0..agora_net::MAX_OUTBOUND_PER_PEER as u64).map(|i| {
            let envelope = envelope(wave * 1000 + i, 200);
            r.send(o.id, wire::encode(&Request::Hold { tag, envelope }))
        });
        for result in libp2p::futures::future::join_all(sends).await {
            match result {
                Ok(bytes) => {
                    assert_eq!(Response::decode(&bytes).unwrap(), Response::Held);
                    held += 1;
                }
                Err(agora_net::Error::Refused(reason)) => {
                    refusal.get_or_insert(reason);
                }
                Err(e) => panic!("a hold failed without a refusal: {e}"),
            }
        }
        if refusal.is_some() {
            break;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let reason = refusal.expect("the hold rate of a peer is bounded");
    assert!(reason.contains(budget::REFUSED_HOLD_RATE), "{reason}");
    // The three junk holds were charged too: the rate is checked before the bytes are read.
    let rate = budget::HOLDS;
    let charged = held as f64 + 3.0;
    assert!(
        charged >= rate.burst && charged <= rate.burst + rate.per_sec * elapsed + 1.0,
        "{held} held in {elapsed:.2} s; the budget allows {} then {}/s",
        rate.burst,
        rate.per_sec
    );
    assert_eq!(o.docs.stats().held_envelopes, held);

    // What was held is what a fetch returns (refused holds left nothing behind).
    let got = fetch_all(&r, &o, tag).await;
    assert_eq!(got.len(), held);

    // A fetch flood is refused by the fetch rate.
    let mut refusal = None;
    for _ in 0..100 {
        let sends = (0..agora_net::MAX_OUTBOUND_PER_PEER)
            .map(|_| r.send(o.id, wire::encode(&Request::Fetch { tag, since: None })));
        for result in libp2p::futures::future::join_all(sends).await {
            if let Err(agora_net::Error::Refused(reason)) = result {
                refusal.get_or_insert(reason);
            }
        }
        if refusal.is_some() {
            break;
        }
    }
    let reason = refusal.expect("the fetch rate of a peer is bounded");
    assert!(reason.contains(budget::REFUSED_FETCH_RATE), "{reason}");
    // The holder still serves everyone else.
    let other = raw(&o).await;
    assert_eq!(fetch_all(&other, &o, tag).await.len(), held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sender_fills_only_its_own_quota_and_evicts_nothing() {
    let o = honest().await;
    let honest_sender = raw(&o).await;
    let attacker = raw(&o).await;
    let tag = [0x42; 32];

    let mine: Vec<Vec<u8>> = (0..3).map(|i| envelope(100 + i, 10_000)).collect();
    for e in &mine {
        hold(&honest_sender, o.id, tag, e.clone()).await.unwrap();
    }

    // The attacker sends envelopes of almost 1 MiB, paced by the byte rate, until the holder
    // says it is full for it.
    let limits = agora_docs::proto::holder::Limits::default();
    let size = MAX_ENVELOPE_BYTES - 1024;
    let mut accepted = 0u64;
    let mut seed = 1000;
    let deadline = Instant::now() + Duration::from_secs(90);
    let full = loop {
        assert!(
            Instant::now() < deadline,
            "the holder never refused the attacker"
        );
        seed += 1;
        let e = envelope(seed, size - 64);
        let len = e.len() as u64;
        match hold(&attacker, o.id, tag, e).await {
            Ok(_) => accepted += len,
            Err(agora_net::Error::Refused(reason))
                if reason.contains(budget::REFUSED_HOLD_BYTES)
                    || reason.contains(budget::REFUSED_HOLD_RATE) =>
            {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            Err(agora_net::Error::Refused(reason)) => break reason,
            Err(e) => panic!("a hold failed without a refusal: {e}"),
        }
    };
    assert!(full.contains(budget::REFUSED_HOLD_FULL), "{full}");
    assert!(
        accepted <= limits.sender_tag_bytes && accepted + size as u64 > limits.sender_tag_bytes,
        "the attacker had {accepted} bytes held; its quota for one space is {}",
        limits.sender_tag_bytes
    );
    assert!(o.refused(budget::REFUSED_HOLD_FULL) > 0);

    // The honest sender still holds in the same space, and loses nothing it held before.
    let late = envelope(999, 10_000);
    let answer = hold(&honest_sender, o.id, tag, late.clone()).await.unwrap();
    assert_eq!(Response::decode(&answer).unwrap(), Response::Held);
    let got = fetch_all(&honest_sender, &o, tag).await;
    for e in mine.iter().chain([&late]) {
        assert!(got.contains(e), "an honest envelope is gone");
    }
    let stats = o.docs.stats();
    assert_eq!(
        stats.held_bytes,
        accepted
            + mine
                .iter()
                .chain([&late])
                .map(|e| e.len() as u64)
                .sum::<u64>()
    );
}
