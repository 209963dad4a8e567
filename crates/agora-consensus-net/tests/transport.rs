//! The transport between real agora-net swarms over loopback TCP, in one process: committee
//! members running [`Transport`], and raw peers that speak the wire format by hand (to send
//! malformed frames, or to play a member that is not a consensus node).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use agora_consensus_net::{
    Blocker, ChannelReceiver, ChannelSender, Config, PROTOCOL, PublicKey, RecvError, Transport,
    public_key,
};
use agora_net::{Handle, Multiaddr};
use commonware_actor::{Feedback, Unreliable};
use commonware_p2p::{
    Blocker as _, CheckedSender as _, LimitedSender as _, Receiver as _, Recipients, Sender as _,
};
use futures::{AsyncReadExt as _, AsyncWriteExt as _};
use libp2p::{Stream, identity::Keypair};

const WAIT: Duration = Duration::from_secs(20);
const VOTES: u64 = 0;
const CERTS: u64 = 1;
/// Carries only the warm-up of [`mesh`], so that it never mixes with a test's messages.
const MESH: u64 = 7;
/// A small limit for the tests of oversized frames.
const MAX_MESSAGE: usize = 1024;

/// A running swarm.
struct Node {
    keypair: Keypair,
    key: PublicKey,
    net: Handle,
    addr: Multiaddr,
}

/// A swarm with a consensus transport.
struct Member {
    node: Node,
    transport: Transport,
    channels: BTreeMap<u64, (ChannelSender, ChannelReceiver)>,
    blocker: Blocker,
}

impl Member {
    fn sender(&self, channel: u64) -> ChannelSender {
        self.channels[&channel].0.clone()
    }

    fn receiver(&mut self, channel: u64) -> &mut ChannelReceiver {
        &mut self.channels.get_mut(&channel).unwrap().1
    }

    /// Sends `payload` and returns who it was queued for.
    fn send(&self, channel: u64, to: Recipients<PublicKey>, payload: &[u8]) -> Vec<PublicKey> {
        self.sender(channel).send(to, payload.to_vec(), false)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.transport.shutdown();
    }
}

fn key_of(keypair: &Keypair) -> PublicKey {
    public_key(&keypair.public().to_peer_id()).expect("an ed25519 identity")
}

async fn node(keypair: Keypair, bootstrap: Vec<Multiaddr>) -> Node {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let (net, addr) = agora_net::start_loopback(keypair.clone(), bootstrap)
        .await
        .unwrap();
    Node {
        key: key_of(&keypair),
        keypair,
        net,
        addr,
    }
}

fn member(node: Node, committee: &[PublicKey]) -> Member {
    let config = Config::new(vec![VOTES, CERTS, MESH]).with_max_message(MAX_MESSAGE);
    let (transport, channels, blocker) =
        Transport::start(node.net.clone(), committee.to_vec(), config);
    Member {
        node,
        transport,
        channels,
        blocker,
    }
}

/// Three committee members, each bootstrapped to the ones before it, plus the nodes of
/// `extra` keypairs (also in the committee, without a transport: raw peers).
async fn committee(extra: usize) -> (Vec<Member>, Vec<Node>) {
    let members: Vec<Keypair> = (0..3).map(|_| Keypair::generate_ed25519()).collect();
    let raws: Vec<Keypair> = (0..extra).map(|_| Keypair::generate_ed25519()).collect();
    let keys: Vec<PublicKey> = members.iter().chain(&raws).map(key_of).collect();
    let mut addrs = Vec::new();
    let mut nodes = Vec::new();
    for keypair in members {
        let n = node(keypair, addrs.clone()).await;
        addrs.push(n.addr.clone());
        nodes.push(n);
    }
    let mut members: Vec<Member> = nodes.into_iter().map(|n| member(n, &keys)).collect();
    let mut raw_nodes = Vec::new();
    for keypair in raws {
        raw_nodes.push(node(keypair, addrs.clone()).await);
    }
    mesh(&mut members).await;
    (members, raw_nodes)
}

/// Waits until every member has heard every other one on [`MESH`]: the streams are up, and
/// the connection churn of a fresh swarm (duplicate dials being closed) has had its chance to
/// take down a stream, and with it what was in flight. A test's exact-delivery assertions
/// start after it.
async fn mesh(members: &mut [Member]) {
    let others = members.len() - 1;
    let mut heard = vec![BTreeSet::new(); members.len()];
    let deadline = tokio::time::Instant::now() + WAIT;
    while heard.iter().any(|h: &BTreeSet<PublicKey>| h.len() < others) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the committee did not mesh within {WAIT:?}"
        );
        for m in members.iter() {
            m.send(MESH, Recipients::All, b"hello");
        }
        for (m, heard) in members.iter_mut().zip(&mut heard) {
            let window = Duration::from_millis(100);
            while let Ok(Ok((from, _))) =
                tokio::time::timeout(window, m.receiver(MESH).recv()).await
            {
                heard.insert(from);
            }
        }
    }
}

/// The next message on `receiver`, within [`WAIT`].
async fn next(receiver: &mut ChannelReceiver) -> (PublicKey, Vec<u8>) {
    let (from, payload) = tokio::time::timeout(WAIT, receiver.recv())
        .await
        .expect("a message within the wait")
        .expect("the transport is running");
    (from, payload.as_ref().to_vec())
}

/// A frame as the wire spec says, built independently of the crate: u32 big-endian length,
/// LEB128 channel, payload.
fn frame(channel: u64, payload: &[u8]) -> Vec<u8> {
    let mut varint = Vec::new();
    let mut value = channel;
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            varint.push(byte);
            break;
        }
        varint.push(byte | 0x80);
    }
    let mut bytes = ((varint.len() + payload.len()) as u32)
        .to_be_bytes()
        .to_vec();
    bytes.extend(varint);
    bytes.extend_from_slice(payload);
    bytes
}

async fn raw_stream(from: &Node, to: &Node) -> Stream {
    tokio::time::timeout(
        WAIT,
        from.net
            .stream_control()
            .open_stream(to.net.local_peer_id(), PROTOCOL),
    )
    .await
    .expect("a stream within the wait")
    .expect("the remote supports the protocol")
}

/// Whether the remote closed `stream` within [`WAIT`] (it never writes on it).
async fn closed_by_remote(stream: &mut Stream) -> bool {
    let mut buf = [0u8; 16];
    match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(n)) => panic!("the acceptor wrote {n} bytes on a one-way stream"),
        Err(_) => false,
    }
}

fn sorted(mut keys: Vec<PublicKey>) -> Vec<PublicKey> {
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_one_and_channels_reach_the_right_members() {
    let (mut m, _) = committee(0).await;
    let [a, b, c] = [0, 1, 2].map(|i| m[i].node.key.clone());

    // All: the committee but ourselves. Some/One: committee members only, never ourselves.
    let mut sender = m[0].sender(VOTES);
    let all = sender.check(Recipients::All).unwrap();
    assert_eq!(sorted(all.recipients()), sorted(vec![b.clone(), c.clone()]));
    let outsider = key_of(&Keypair::generate_ed25519());
    let some = sender
        .check(Recipients::Some(vec![
            a.clone(),
            b.clone(),
            outsider.clone(),
            b.clone(),
        ]))
        .unwrap();
    assert_eq!(some.recipients(), vec![b.clone()]);
    assert!(
        sender
            .check(Recipients::One(outsider))
            .unwrap()
            .recipients()
            .is_empty()
    );

    assert_eq!(
        all.send(b"all-votes".to_vec(), false),
        Unreliable::new(Feedback::Ok)
    );
    assert_eq!(
        sorted(m[0].send(CERTS, Recipients::All, b"all-certs")),
        sorted(vec![b.clone(), c.clone()])
    );
    for i in [1, 2] {
        assert_eq!(
            next(m[i].receiver(VOTES)).await,
            (a.clone(), b"all-votes".to_vec())
        );
        assert_eq!(
            next(m[i].receiver(CERTS)).await,
            (a.clone(), b"all-certs".to_vec())
        );
    }

    // One reaches only its target. A's messages to C keep their order, so C seeing "after"
    // next proves "only-b" never reached it.
    assert_eq!(
        m[0].send(VOTES, Recipients::One(b.clone()), b"only-b"),
        vec![b.clone()]
    );
    m[0].send(VOTES, Recipients::All, b"after");
    assert_eq!(
        next(m[1].receiver(VOTES)).await,
        (a.clone(), b"only-b".to_vec())
    );
    assert_eq!(
        next(m[1].receiver(VOTES)).await,
        (a.clone(), b"after".to_vec())
    );
    assert_eq!(
        next(m[2].receiver(VOTES)).await,
        (a.clone(), b"after".to_vec())
    );

    // Nothing of A's own came back to it: the first message it gets is B's.
    m[1].send(VOTES, Recipients::One(a.clone()), b"from-b");
    assert_eq!(
        next(m[0].receiver(VOTES)).await,
        (b.clone(), b"from-b".to_vec())
    );
    m[2].send(CERTS, Recipients::One(a.clone()), b"from-c");
    assert_eq!(next(m[0].receiver(CERTS)).await, (c, b"from-c".to_vec()));

    // Too large to send: refused locally, not queued.
    let huge = vec![0u8; MAX_MESSAGE + 1];
    let checked = m[0].sender(VOTES).check(Recipients::All).unwrap();
    assert_eq!(checked.send(huge, false), Unreliable::Rejected);
    assert_eq!(m[0].channels[&VOTES].1.capacity().get(), 4096);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_outside_the_committee_is_refused() {
    let (mut m, _) = committee(0).await;
    let outsider = node(Keypair::generate_ed25519(), vec![m[0].node.addr.clone()]).await;
    let (a, b) = (m[0].node.key.clone(), m[1].node.key.clone());

    let mut stream = raw_stream(&outsider, &m[0].node).await;
    // The write may already fail if the refusal came first; either way the stream must end.
    let _ = stream.write_all(&frame(VOTES, b"intruder")).await;
    let _ = stream.flush().await;
    assert!(closed_by_remote(&mut stream).await, "the stream stays open");

    // An outsider's own transport (with a committee it made up) gets nothing through either.
    let committee = vec![a.clone(), b.clone(), key_of(&outsider.keypair)];
    let config = Config::new(vec![VOTES]);
    let (intruder, channels, _) = Transport::start(outsider.net.clone(), committee, config);
    let mut sender = channels[&VOTES].0.clone();
    sender.send(Recipients::All, b"intruder".to_vec(), false);

    // The member hears from its committee only.
    m[1].send(VOTES, Recipients::One(a.clone()), b"legit");
    assert_eq!(next(m[0].receiver(VOTES)).await, (b, b"legit".to_vec()));
    intruder.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_frames_close_only_their_stream() {
    let (mut m, raws) = committee(1).await;
    let raw = &raws[0];
    let (raw_key, b) = (raw.key.clone(), m[1].node.key.clone());
    let a = m[0].node.key.clone();

    // A hand-built frame from a committee member is delivered: the format is the documented one.
    let mut stream = raw_stream(raw, &m[0].node).await;
    stream.write_all(&frame(CERTS, b"hello")).await.unwrap();
    stream.flush().await.unwrap();
    assert_eq!(
        next(m[0].receiver(CERTS)).await,
        (raw_key.clone(), b"hello".to_vec())
    );

    // A length prefix over the limit (and no body): refused before reading further.
    stream.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    assert!(
        closed_by_remote(&mut stream).await,
        "oversized length accepted"
    );

    // A frame within the length limit whose payload is still one byte too large.
    let mut stream = raw_stream(raw, &m[0].node).await;
    stream
        .write_all(&frame(VOTES, &vec![7u8; MAX_MESSAGE + 1]))
        .await
        .unwrap();
    stream.flush().await.unwrap();
    assert!(
        closed_by_remote(&mut stream).await,
        "oversized payload accepted"
    );

    // A channel varint longer than a u64.
    let mut stream = raw_stream(raw, &m[0].node).await;
    let mut garbage = 12u32.to_be_bytes().to_vec();
    garbage.extend([0xff; 12]);
    stream.write_all(&garbage).await.unwrap();
    stream.flush().await.unwrap();
    assert!(closed_by_remote(&mut stream).await, "garbage accepted");

    // The node is fine: members and a fresh stream from the same peer still get through, and a
    // frame on an unknown channel is dropped without closing the stream.
    m[1].send(VOTES, Recipients::One(a.clone()), b"still-works");
    assert_eq!(
        next(m[0].receiver(VOTES)).await,
        (b, b"still-works".to_vec())
    );
    let mut stream = raw_stream(raw, &m[0].node).await;
    stream
        .write_all(&frame(99, b"nobody listens"))
        .await
        .unwrap();
    stream.write_all(&frame(VOTES, b"again")).await.unwrap();
    stream.flush().await.unwrap();
    assert_eq!(
        next(m[0].receiver(VOTES)).await,
        (raw_key, b"again".to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_peer_is_cut_off() {
    let (mut m, raws) = committee(1).await;
    let raw = &raws[0];
    let [a, b, c] = [0, 1, 2].map(|i| m[i].node.key.clone());

    let mut blocked = m[0].blocker.blocked();
    assert_eq!(blocked.recv().await.unwrap().iter().count(), 0);

    // A live stream from the raw member, then the block: the stream is closed.
    let mut stream = raw_stream(raw, &m[0].node).await;
    stream.write_all(&frame(VOTES, b"before")).await.unwrap();
    stream.flush().await.unwrap();
    assert_eq!(
        next(m[0].receiver(VOTES)).await,
        (raw.key.clone(), b"before".to_vec())
    );
    assert_eq!(m[0].blocker.block(raw.key.clone()), Feedback::Ok);
    assert!(
        closed_by_remote(&mut stream).await,
        "a blocked peer's stream stays open"
    );
    let set = blocked.recv().await.unwrap();
    assert_eq!(set.iter().collect::<Vec<_>>(), vec![&raw.key]);

    // A new stream from it is refused at once, and nothing is sent to it any more.
    let mut stream = raw_stream(raw, &m[0].node).await;
    let _ = stream.write_all(&frame(VOTES, b"after")).await;
    let _ = stream.flush().await;
    assert!(
        closed_by_remote(&mut stream).await,
        "a blocked peer's new stream is read"
    );
    let mut sender = m[0].sender(VOTES);
    let all = sender.check(Recipients::All).unwrap().recipients();
    assert_eq!(sorted(all), sorted(vec![b.clone(), c.clone()]));

    // Blocking a member with a transport: its messages to us stop, the others' don't, and it
    // still reaches the rest of the committee.
    assert_eq!(m[0].blocker.block(b.clone()), Feedback::Ok);
    let set = blocked.recv().await.unwrap();
    assert_eq!(set.iter().count(), 2);
    assert_eq!(
        m[0].send(VOTES, Recipients::All, b"to-c-only"),
        vec![c.clone()]
    );
    m[1].send(VOTES, Recipients::All, b"from-blocked");
    // C gets both (from two peers, so in either order).
    let mut at_c = vec![
        next(m[2].receiver(VOTES)).await,
        next(m[2].receiver(VOTES)).await,
    ];
    at_c.sort();
    let mut expected = vec![
        (a.clone(), b"to-c-only".to_vec()),
        (b.clone(), b"from-blocked".to_vec()),
    ];
    expected.sort();
    assert_eq!(at_c, expected);
    m[2].send(VOTES, Recipients::One(a.clone()), b"from-c");
    assert_eq!(next(m[0].receiver(VOTES)).await, (c, b"from-c".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_gets_messages_again() {
    let (mut m, _) = committee(0).await;
    let [a, _b, c] = [0, 1, 2].map(|i| m[i].node.key.clone());
    m[0].send(VOTES, Recipients::One(c.clone()), b"first");
    assert_eq!(
        next(m[2].receiver(VOTES)).await,
        (a.clone(), b"first".to_vec())
    );

    // Stop C's transport and swarm; start a new swarm with the same key on a new port.
    let committee: Vec<PublicKey> = m.iter().map(|m| m.node.key.clone()).collect();
    let old = m.pop().unwrap();
    let keypair = old.node.keypair.clone();
    old.transport.shutdown();
    old.node.net.shutdown().await.unwrap();
    drop(old);
    let bootstrap = vec![m[0].node.addr.clone(), m[1].node.addr.clone()];
    let mut restarted = member(node(keypair, bootstrap).await, &committee);

    // A keeps sending until the new C hears it (the first ones may go down with the old
    // connection, or wait in A's outbox while it reconnects).
    let deadline = tokio::time::Instant::now() + WAIT;
    let heard = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "C never heard from A again"
        );
        m[0].send(VOTES, Recipients::One(c.clone()), b"ping");
        let got =
            tokio::time::timeout(Duration::from_millis(500), restarted.receiver(VOTES).recv())
                .await;
        if let Ok(message) = got {
            break message.unwrap();
        }
    };
    assert_eq!((heard.0, heard.1.as_ref()), (a.clone(), b"ping".as_slice()));

    // And the new C reaches A.
    restarted.send(VOTES, Recipients::One(a), b"back");
    let (from, payload) = next(m[0].receiver(VOTES)).await;
    assert_eq!((from, payload), (c, b"back".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_and_receivers_work_from_another_runtime() {
    let (mut m, _) = committee(0).await;
    let [a, b, _c] = [0, 1, 2].map(|i| m[i].node.key.clone());
    let mut sender = m[0].sender(VOTES);
    let (_, receiver) = m[1].channels.remove(&VOTES).unwrap();
    let mut receiver = receiver;

    // The consensus engine's side: its own runtime on its own thread.
    let to = b.clone();
    let engine = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async move {
            let queued = sender.send(Recipients::One(to), b"cross-runtime".to_vec(), false);
            let got = tokio::time::timeout(WAIT, receiver.recv()).await;
            (
                queued,
                got.map(|r| r.map(|(k, p)| (k, p.as_ref().to_vec()))),
            )
        })
    });
    let (queued, got) = tokio::task::spawn_blocking(move || engine.join().unwrap())
        .await
        .unwrap();
    assert_eq!(queued, vec![b]);
    assert_eq!(got.unwrap().unwrap(), (a, b"cross-runtime".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committee_changes_and_shutdown() {
    let (mut m, _) = committee(0).await;
    let [a, b, c] = [0, 1, 2].map(|i| m[i].node.key.clone());

    // C leaves A's committee: A stops sending to it.
    m[0].transport.set_committee(vec![a.clone(), b.clone()]);
    assert_eq!(m[0].send(VOTES, Recipients::All, b"x"), vec![b.clone()]);
    assert!(
        m[0].send(VOTES, Recipients::One(c.clone()), b"x")
            .is_empty()
    );
    assert_eq!(next(m[1].receiver(VOTES)).await, (a.clone(), b"x".to_vec()));

    // C is back: it hears from A again.
    m[0].transport
        .set_committee(vec![a.clone(), b.clone(), c.clone()]);
    assert_eq!(
        m[0].send(VOTES, Recipients::One(c.clone()), b"welcome"),
        vec![c.clone()]
    );
    assert_eq!(
        next(m[2].receiver(VOTES)).await,
        (a.clone(), b"welcome".to_vec())
    );

    // Shutdown: receivers fail, senders and the blocker report Closed.
    m[0].transport.shutdown();
    assert_eq!(
        tokio::time::timeout(WAIT, m[0].receiver(VOTES).recv())
            .await
            .unwrap()
            .unwrap_err(),
        RecvError::Closed
    );
    let checked = m[0].sender(VOTES).check(Recipients::All).unwrap();
    assert_eq!(
        checked.send(b"late".to_vec(), false),
        Unreliable::new(Feedback::Closed)
    );
    assert_eq!(m[0].blocker.block(b), Feedback::Closed);
}
