//! The messaging service against hostile peers, in one process over real loopback sockets:
//! a node running [`Chat`] and raw peers that speak its protocols with crafted frames.

use std::{sync::Arc, time::Duration};

use agora_chat::{
    crypto::Identity,
    proto::mailbox::{self, Quota},
    service::{
        CHAT_PROTOCOL, Chat, Config, Direction, MAILBOX_PROTOCOL, MessageFilter, MessageState,
        budget,
    },
    wire::{
        AckRequest, DirectMessage, DirectReply, Envelope, FetchRequest, Frame, Letter,
        MailboxRequest, MailboxResponse, MessageId, Refusal, Rejection, Timestamp,
    },
};
use agora_net::{Handle, InboundRequest, Multiaddr};
use libp2p::identity::Keypair;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

struct Peer {
    net: Handle,
    addr: Multiaddr,
    identity: Identity,
    chat: Option<Arc<Chat>>,
    _dir: tempfile::TempDir,
    stop: CancellationToken,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn peer(bootstrap: Vec<Multiaddr>, chat: Option<Config>) -> Peer {
    let keypair = Keypair::generate_ed25519();
    let (net, addr) = agora_net::start_loopback(keypair.clone(), bootstrap)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let chat = match chat {
        Some(config) => {
            let db = Arc::new(agora_store::Db::open(&dir.path().join("agora.redb")).unwrap());
            Some(
                Chat::start(net.clone(), &keypair, db, config, stop.clone())
                    .await
                    .unwrap(),
            )
        }
        None => None,
    };
    Peer {
        net,
        addr,
        identity: Identity::from_keypair(&keypair).unwrap(),
        chat,
        _dir: dir,
        stop,
    }
}

async fn wait_for<T, F: std::future::Future<Output = Option<T>>>(mut f: impl FnMut() -> F) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `a` is connected to `b` (bootstrap usually got there first).
async fn connect(a: &Peer, b: &Peer) {
    let _ = a.net.dial(b.addr.clone()).await;
    let b = b.net.local_peer_id().to_string();
    wait_for(|| async {
        a.net
            .peers()
            .await
            .unwrap()
            .iter()
            .any(|p| p.peer_id == b)
            .then_some(())
    })
    .await;
}

fn now() -> Timestamp {
    Timestamp::from_millis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
    )
}

fn id() -> MessageId {
    MessageId::random(&mut rand::rng())
}

async fn direct(from: &Peer, to: &Peer, bytes: Vec<u8>) -> DirectReply {
    let answer = from
        .net
        .request(to.net.local_peer_id(), CHAT_PROTOCOL, bytes, WAIT)
        .await
        .expect("the node answers");
    DirectReply::decode(&answer).expect("a well-formed reply")
}

/// Sends a direct message that must be refused with a reason naming `budget`.
async fn assert_refused(from: &Peer, to: &Peer, bytes: Vec<u8>, budget: &str) {
    match from
        .net
        .request(to.net.local_peer_id(), CHAT_PROTOCOL, bytes, WAIT)
        .await
    {
        Err(agora_net::Error::Refused(reason)) => {
            assert!(
                reason.contains(budget),
                "refused for {reason:?}, not {budget}"
            )
        }
        other => panic!("expected a refusal by {budget}, got {other:?}"),
    }
}

async fn mailbox(from: &Peer, to: &Peer, req: MailboxRequest) -> MailboxResponse {
    let answer = from
        .net
        .request(
            to.net.local_peer_id(),
            MAILBOX_PROTOCOL,
            req.encode().unwrap(),
            WAIT,
        )
        .await
        .expect("the holder answers");
    MailboxResponse::decode(&answer).expect("a well-formed reply")
}

async fn inbox(chat: &Chat) -> Vec<String> {
    let filter = MessageFilter {
        direction: Some(Direction::In),
        ..Default::default()
    };
    chat.messages(filter, 0, 100, Duration::ZERO, false)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.text)
        .collect()
}

#[tokio::test]
async fn forged_replayed_oversized_and_malformed_direct_messages_are_rejected() {
    let x = peer(vec![], Some(Config::default())).await;
    let h = peer(vec![x.addr.clone()], None).await;
    let chat = x.chat.as_ref().unwrap();
    let xid = x.net.local_peer_id();
    connect(&h, &x).await;

    // Garbage and a frame just over the message limit: refused, nothing stored.
    assert_eq!(
        direct(&h, &x, b"\x00\xffnot postcard".to_vec()).await,
        DirectReply::Rejected(Rejection::Invalid)
    );
    let huge = vec![7u8; agora_chat::wire::MAX_DIRECT_MESSAGE_LEN + 1];
    assert_eq!(
        direct(&h, &x, huge).await,
        DirectReply::Rejected(Rejection::Invalid)
    );
    // A body over 64 KiB cannot be signed or encoded.
    let mut long = DirectMessage::new(&h.identity, id(), xid, 0, now(), "short".into()).unwrap();
    long.body = "x".repeat(64 * 1024 + 1);
    assert!(long.encode().is_err(), "the encoder refuses it too");
    // Forged: signed by h but claiming to be from someone else.
    let other = Identity::from_keypair(&Keypair::generate_ed25519()).unwrap();
    let mut forged = DirectMessage::new(&h.identity, id(), xid, 0, now(), "forged".into()).unwrap();
    forged.from = other.peer_id();
    assert_refused(&h, &x, forged.encode().unwrap(), budget::REFUSED_AUTHOR).await;
    // Addressed to someone else.
    let elsewhere =
        DirectMessage::new(&h.identity, id(), other.peer_id(), 0, now(), "hi".into()).unwrap();
    assert_eq!(
        direct(&h, &x, elsewhere.encode().unwrap()).await,
        DirectReply::Rejected(Rejection::NotForUs)
    );
    assert!(inbox(chat).await.is_empty());

    // A good message gets a receipt signed by the recipient.
    let hello = DirectMessage::new(&h.identity, id(), xid, 0, now(), "hello".into()).unwrap();
    let DirectReply::Delivered(receipt) = direct(&h, &x, hello.encode().unwrap()).await else {
        panic!("not delivered");
    };
    receipt.verify().unwrap();
    assert_eq!((receipt.message_id, receipt.recipient), (hello.id, xid));
    // Replayed as is: acknowledged again (the first receipt may have been lost), shown once.
    assert!(matches!(
        direct(&h, &x, hello.encode().unwrap()).await,
        DirectReply::Delivered(_)
    ));
    // The same seq with other content: a replay attack, refused.
    let evil = DirectMessage::new(&h.identity, id(), xid, 0, now(), "evil".into()).unwrap();
    assert_eq!(
        direct(&h, &x, evil.encode().unwrap()).await,
        DirectReply::Rejected(Rejection::Invalid)
    );
    // Out of order: 2 before 1 is held back, then both appear in order.
    let m2 = DirectMessage::new(&h.identity, id(), xid, 2, now(), "two".into()).unwrap();
    let m1 = DirectMessage::new(&h.identity, id(), xid, 1, now(), "one".into()).unwrap();
    assert!(matches!(
        direct(&h, &x, m2.encode().unwrap()).await,
        DirectReply::Delivered(_)
    ));
    assert_eq!(inbox(chat).await, ["hello"]);
    assert!(matches!(
        direct(&h, &x, m1.encode().unwrap()).await,
        DirectReply::Delivered(_)
    ));
    assert_eq!(inbox(chat).await, ["hello", "one", "two"]);

    // A frame at the transport limit is cut off; the node keeps serving.
    let _ = h
        .net
        .request(
            xid,
            CHAT_PROTOCOL,
            vec![0u8; agora_net::MAX_FRAME_LEN],
            Duration::from_secs(5),
        )
        .await;
    let three = DirectMessage::new(&h.identity, id(), xid, 3, now(), "three".into()).unwrap();
    assert!(matches!(
        direct(&h, &x, three.encode().unwrap()).await,
        DirectReply::Delivered(_)
    ));
    assert_eq!(inbox(chat).await, ["hello", "one", "two", "three"]);
}

#[tokio::test]
async fn one_connection_cannot_open_conversations_for_throwaway_keys() {
    // Hardening item 1: every author key used to get a conversation (with up to 256 buffered
    // messages of 64 KiB) no matter which peer delivered its messages.
    let x = peer(vec![], Some(Config::default())).await;
    let h = peer(vec![x.addr.clone()], None).await;
    let chat = x.chat.as_ref().unwrap();
    let xid = x.net.local_peer_id();
    connect(&h, &x).await;
    for i in 0..20 {
        // Validly signed by a fresh key, sent over h's connection; seq 5 would be buffered.
        let throwaway = Identity::from_keypair(&Keypair::generate_ed25519()).unwrap();
        let msg = DirectMessage::new(&throwaway, id(), xid, 5, now(), format!("spam {i}")).unwrap();
        assert_refused(&h, &x, msg.encode().unwrap(), budget::REFUSED_AUTHOR).await;
    }
    assert_eq!(x.net.admission().count(budget::REFUSED_AUTHOR), 20);
    // h's own messages still go through, in order.
    let hello = DirectMessage::new(&h.identity, id(), xid, 0, now(), "hello".into()).unwrap();
    assert!(matches!(
        direct(&h, &x, hello.encode().unwrap()).await,
        DirectReply::Delivered(_)
    ));
    assert_eq!(inbox(chat).await, ["hello"]);
}

#[tokio::test]
async fn a_peer_past_its_message_rate_is_refused_and_its_conversation_table_is_bounded() {
    let config = Config {
        direct_rate: agora_net::admission::Rate::new(0.001, 3.0),
        max_conversations: 2,
        ..Config::default()
    };
    let x = peer(vec![], Some(config)).await;
    let chat = x.chat.as_ref().unwrap();
    let xid = x.net.local_peer_id();
    let h = peer(vec![x.addr.clone()], None).await;
    connect(&h, &x).await;
    for seq in 0..3 {
        let m = DirectMessage::new(&h.identity, id(), xid, seq, now(), format!("m{seq}")).unwrap();
        assert!(matches!(
            direct(&h, &x, m.encode().unwrap()).await,
            DirectReply::Delivered(_)
        ));
    }
    let fourth = DirectMessage::new(&h.identity, id(), xid, 3, now(), "m3".into()).unwrap();
    assert_refused(
        &h,
        &x,
        fourth.encode().unwrap(),
        budget::REFUSED_DIRECT_RATE,
    )
    .await;
    assert_eq!(inbox(chat).await, ["m0", "m1", "m2"]);

    // Two more peers: the table holds two conversations, but idle ones (nothing buffered)
    // make room and resume from their counters, so a third author is still served.
    let g = peer(vec![x.addr.clone()], None).await;
    connect(&g, &x).await;
    let gm = DirectMessage::new(&g.identity, id(), xid, 0, now(), "from g".into()).unwrap();
    assert!(matches!(
        direct(&g, &x, gm.encode().unwrap()).await,
        DirectReply::Delivered(_)
    ));
    // g buffers a message (seq 2 before 1): its conversation cannot be dropped now.
    let g2 = DirectMessage::new(&g.identity, id(), xid, 2, now(), "g two".into()).unwrap();
    assert!(matches!(
        direct(&g, &x, g2.encode().unwrap()).await,
        DirectReply::Delivered(_)
    ));
    let k = peer(vec![x.addr.clone()], None).await;
    connect(&k, &x).await;
    let km = DirectMessage::new(&k.identity, id(), xid, 0, now(), "from k".into()).unwrap();
    assert!(matches!(
        direct(&k, &x, km.encode().unwrap()).await,
        DirectReply::Delivered(_)
    ));
    // Now g (buffering) and k (just written) hold the table... h's conversation was dropped;
    // its counter is resumed, so a replay of m2 is not shown twice.
    let replay = DirectMessage::new(&h.identity, id(), xid, 2, now(), "m2 again".into()).unwrap();
    let _ = h
        .net
        .request(xid, CHAT_PROTOCOL, replay.encode().unwrap(), WAIT)
        .await;
    // A fourth author finds the table full of buffering or fresh conversations only if they
    // all buffer: make k buffer too, then a new peer is refused.
    let k2 = DirectMessage::new(&k.identity, id(), xid, 2, now(), "k two".into()).unwrap();
    assert!(matches!(
        direct(&k, &x, k2.encode().unwrap()).await,
        DirectReply::Delivered(_)
    ));
    let z = peer(vec![x.addr.clone()], None).await;
    connect(&z, &x).await;
    let zm = DirectMessage::new(&z.identity, id(), xid, 0, now(), "from z".into()).unwrap();
    assert_eq!(
        direct(&z, &x, zm.encode().unwrap()).await,
        DirectReply::Rejected(Rejection::TryLater)
    );
    assert_eq!(x.net.admission().count(budget::REFUSED_CONVERSATIONS), 1);
    let mut shown = inbox(chat).await;
    shown.sort();
    assert_eq!(shown, ["from g", "from k", "m0", "m1", "m2"]);
}

#[tokio::test]
async fn mailbox_holders_enforce_quotas_and_serve_only_the_recipient() {
    let quota = mailbox::Config::default().with_sender_quota(Quota {
        messages: 3,
        bytes: 1 << 20,
    });
    let x = peer(
        vec![],
        Some(Config {
            mailbox: quota,
            ..Config::default()
        }),
    )
    .await;
    let flooder = peer(vec![x.addr.clone()], None).await;
    let honest = peer(vec![x.addr.clone()], None).await;
    let recipient = peer(vec![x.addr.clone()], None).await;
    for p in [&flooder, &honest, &recipient] {
        connect(p, &x).await;
    }
    let rid = recipient.net.local_peer_id();
    let seal = |from: &Peer, seq: u64, text: &str| {
        let msg = DirectMessage::new(&from.identity, id(), rid, seq, now(), text.into()).unwrap();
        Envelope::seal(
            &from.identity,
            &Letter::Message(msg),
            now(),
            &mut rand::rng(),
        )
        .unwrap()
    };

    // The flooder fills its quota at this holder, then is refused.
    for seq in 0..3 {
        let env = seal(&flooder, seq, "spam");
        assert_eq!(
            mailbox(&flooder, &x, MailboxRequest::Store(env)).await,
            MailboxResponse::Stored
        );
    }
    let env = seal(&flooder, 3, "spam");
    assert_eq!(
        mailbox(&flooder, &x, MailboxRequest::Store(env)).await,
        MailboxResponse::Refused(Refusal::SenderFull)
    );
    // Others are unaffected.
    let from_honest = seal(&honest, 0, "hello from an honest peer");
    assert_eq!(
        mailbox(&honest, &x, MailboxRequest::Store(from_honest)).await,
        MailboxResponse::Stored
    );
    // A tampered envelope is refused at the holder (the sender's signature covers it).
    let mut tampered = seal(&honest, 1, "tamper with me");
    tampered.ciphertext[0] ^= 1;
    assert_eq!(
        mailbox(&honest, &x, MailboxRequest::Store(tampered)).await,
        MailboxResponse::Refused(Refusal::Invalid)
    );
    // Malformed requests get a refusal, not a crash.
    let answer = flooder
        .net
        .request(
            x.net.local_peer_id(),
            MAILBOX_PROTOCOL,
            b"junk".to_vec(),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(
        MailboxResponse::decode(&answer).unwrap(),
        MailboxResponse::Refused(Refusal::Invalid)
    );

    // Nobody but the recipient can read its mail: a fetch signed by someone else sees its own
    // (empty) box, and a fetch claiming to be the recipient but signed by another is refused.
    let xid = x.net.local_peer_id();
    let theirs = FetchRequest::new(&flooder.identity, xid, now());
    assert_eq!(
        mailbox(&flooder, &x, MailboxRequest::Fetch(theirs)).await,
        MailboxResponse::Envelopes {
            envelopes: vec![],
            remaining: 0
        }
    );
    let mut impostor = FetchRequest::new(&flooder.identity, xid, now());
    impostor.recipient = rid;
    assert_eq!(
        mailbox(&flooder, &x, MailboxRequest::Fetch(impostor)).await,
        MailboxResponse::Refused(Refusal::Invalid)
    );

    // The recipient gets all four, opens them, acknowledges, and the holder forgets them.
    let fetch = FetchRequest::new(&recipient.identity, xid, now());
    let MailboxResponse::Envelopes {
        envelopes,
        remaining,
    } = mailbox(&recipient, &x, MailboxRequest::Fetch(fetch)).await
    else {
        panic!("no envelopes");
    };
    assert_eq!((envelopes.len(), remaining), (4, 0));
    let mut texts: Vec<String> = envelopes
        .iter()
        .map(|e| match e.open(&recipient.identity).unwrap() {
            Letter::Message(m) => m.body,
            Letter::Receipt(_) => panic!("unexpected receipt"),
        })
        .collect();
    texts.sort();
    assert_eq!(texts, ["hello from an honest peer", "spam", "spam", "spam"]);
    let ids = envelopes.iter().map(|e| e.id).collect();
    let ack = AckRequest::new(&recipient.identity, xid, now(), ids).unwrap();
    assert_eq!(
        mailbox(&recipient, &x, MailboxRequest::Ack(ack)).await,
        MailboxResponse::Acked { deleted: 4 }
    );
    // The flooder's quota is free again.
    let env = seal(&flooder, 4, "later");
    assert_eq!(
        mailbox(&flooder, &x, MailboxRequest::Store(env)).await,
        MailboxResponse::Stored
    );
}

#[tokio::test]
async fn a_recipient_drops_tampered_mail_from_a_lying_holder_and_keeps_the_rest() {
    // The lying holder serves one genuine and one tampered envelope and records the acks.
    let holder = peer(vec![], None).await;
    let recipient = peer(vec![holder.addr.clone()], Some(Config::default())).await;
    let sender = Identity::from_keypair(&Keypair::generate_ed25519()).unwrap();
    let rid = recipient.net.local_peer_id();
    let letter = |seq: u64, text: &str| {
        let m = DirectMessage::new(&sender, id(), rid, seq, now(), text.into()).unwrap();
        Envelope::seal(&sender, &Letter::Message(m), now(), &mut rand::rng()).unwrap()
    };
    let good = letter(0, "genuine");
    let mut bad = letter(1, "tampered");
    let last = bad.ciphertext.len() - 1;
    bad.ciphertext[last] ^= 0x80;
    let served = vec![bad.clone(), good.clone()];
    let (tx, mut rx) = mpsc::channel::<InboundRequest>(16);
    holder.net.serve(MAILBOX_PROTOCOL, tx).unwrap();
    let (acks_tx, mut acks) = mpsc::unbounded_channel::<Vec<MessageId>>();
    tokio::spawn(async move {
        let mut served = Some(served);
        while let Some(req) = rx.recv().await {
            let response = match MailboxRequest::decode(&req.data).unwrap() {
                MailboxRequest::Fetch(_) => MailboxResponse::Envelopes {
                    envelopes: served.take().unwrap_or_default(),
                    remaining: 0,
                },
                MailboxRequest::Ack(a) => {
                    let _ = acks_tx.send(a.ids.clone());
                    MailboxResponse::Acked {
                        deleted: a.ids.len() as u32,
                    }
                }
                MailboxRequest::Store(_) => MailboxResponse::Stored,
            };
            let _ = req.reply.send(response.encode().unwrap());
        }
    });
    let chat = recipient.chat.as_ref().unwrap();
    // The mailbox is found through the DHT: wait until the holder is in the routing table, not
    // just connected (identify has to finish first).
    wait_for(|| async {
        (recipient.net.stats().await.unwrap().routing_table_size > 0).then_some(())
    })
    .await;
    let collected = chat.collect_mailbox().await;
    assert_eq!(collected, 1, "only the genuine message counts");
    assert_eq!(inbox(chat).await, ["genuine"]);
    let mut acked = tokio::time::timeout(WAIT, acks.recv())
        .await
        .unwrap()
        .unwrap();
    acked.sort_by_key(|i| i.0);
    let mut expected = vec![good.id, bad.id];
    expected.sort_by_key(|i| i.0);
    assert_eq!(
        acked, expected,
        "both are acknowledged so the holder drops the bad one"
    );
    let all = chat
        .messages(MessageFilter::default(), 0, 10, Duration::ZERO, false)
        .await
        .unwrap();
    assert_eq!(all[0].via.as_deref(), Some("mailbox"));
    assert_eq!(all[0].state, MessageState::Unread);
}

/// Hardening item 7: a chat handler used to commit to redb (with fsync) on the task serving
/// the protocol. Here the database is held by another writer, so a direct message's handler
/// waits for it; on a runtime with one worker thread, the node must still answer other
/// requests meanwhile (a handler blocking that worker would stall the whole node). A std
/// channel with a timeout observes it, so a stalled runtime fails the test instead of hanging.
#[test]
fn a_handler_waiting_on_the_database_does_not_stall_the_node() {
    use agora_chat::{
        service::HISTORY_PROTOCOL,
        wire::{HistoryRequest, RoomId},
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(agora_store::Db::open(&dir.path().join("agora.redb")).unwrap());
    let (_x_net, h, xid, _chat, stop) = rt.block_on(async {
        let keypair = Keypair::generate_ed25519();
        let (net, addr) = agora_net::start_loopback(keypair.clone(), vec![])
            .await
            .unwrap();
        let stop = CancellationToken::new();
        let chat = Chat::start(
            net.clone(),
            &keypair,
            db.clone(),
            Config::default(),
            stop.clone(),
        )
        .await
        .unwrap();
        let h = peer(vec![addr.clone()], None).await;
        let xid = net.local_peer_id();
        let _ = h.net.dial(addr).await;
        let x = xid.to_string();
        wait_for(|| async {
            h.net
                .peers()
                .await
                .unwrap()
                .iter()
                .any(|p| p.peer_id == x)
                .then_some(())
        })
        .await;
        (net, h, xid, chat, stop)
    });
    // Another writer holds the database.
    let writer = db.redb().begin_write().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<&'static str>();
    let msg = DirectMessage::new(&h.identity, id(), xid, 0, now(), "waits".into()).unwrap();
    let (net, done) = (h.net.clone(), tx.clone());
    rt.spawn(async move {
        let answer = net
            .request(xid, CHAT_PROTOCOL, msg.encode().unwrap(), WAIT)
            .await;
        if matches!(
            answer.map(|a| DirectReply::decode(&a)),
            Ok(Ok(DirectReply::Delivered(_)))
        ) {
            let _ = done.send("direct delivered");
        }
    });
    let net = h.net.clone();
    rt.spawn(async move {
        // Give the direct message a head start to its handler.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ask = HistoryRequest {
            room: RoomId::new("elsewhere").unwrap(),
            since: now(),
            limit: 10,
        };
        if net
            .request(xid, HISTORY_PROTOCOL, ask.encode().unwrap(), WAIT)
            .await
            .is_ok()
        {
            let _ = tx.send("history answered");
        }
    });
    assert_eq!(
        rx.recv_timeout(WAIT),
        Ok("history answered"),
        "the node stalled while a handler waited for the database"
    );
    drop(writer);
    assert_eq!(rx.recv_timeout(WAIT), Ok("direct delivered"));
    stop.cancel();
    drop(h);
}
