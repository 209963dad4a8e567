//! Bad input on the listen ports: the connection is dropped, the node lives on, memory stays
//! bounded.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use crate::common::*;

fn socket_addr(multiaddr: &str, proto: &str) -> SocketAddr {
    // /ip4/127.0.0.1/<proto>/<port>/...
    let parts: Vec<&str> = multiaddr.split('/').collect();
    let i = parts.iter().position(|p| *p == proto).unwrap();
    format!("{}:{}", parts[2], parts[i + 1]).parse().unwrap()
}

/// Sends `bytes`, then reads until the node closes the connection (or 20 s pass). A peer that
/// stops mid-handshake is dropped by the transport's upgrade timeout (libp2p's 10 s), which a
/// loaded CI machine can pass by a few milliseconds: hence twice that here.
fn send_and_expect_close(addr: SocketAddr, bytes: &[u8]) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.write_all(bytes);
    let mut sink = [0u8; 4096];
    let mut total = 0;
    loop {
        match s.read(&mut sink) {
            Ok(0) => return,
            Ok(n) => {
                total += n;
                assert!(total < 1 << 20, "the node keeps talking to a garbage peer");
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                panic!("the node kept a garbage connection open for 20 s")
            }
            Err(_) => return, // reset: also a drop
        }
    }
}

#[test]
fn garbage_truncated_and_oversized_input_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&dir.path().join("target"), &[]);
    let tcp = socket_addr(&node.tcp_addr(), "tcp");
    let quic_addr = node
        .addrs
        .iter()
        .find(|a| a.contains("quic-v1"))
        .unwrap()
        .clone();
    let udp = socket_addr(&quic_addr, "udp");
    let rss_before = node.rss_kib();

    let mut noise = vec![0u8; 1 << 20];
    let mut x: u32 = 0x9e37_79b9;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    // Random bytes instead of a multistream-select header.
    send_and_expect_close(tcp, &noise);
    // A truncated multistream-select handshake.
    send_and_expect_close(tcp, b"\x13/multistream/1.0.0");
    // A valid header, then a protocol line announcing an oversized length (varint 2^32-1).
    send_and_expect_close(tcp, b"\x13/multistream/1.0.0\n\xff\xff\xff\xff\x0f");
    // A valid header and /noise, then a Noise frame claiming 64 KiB of handshake garbage.
    let mut frame = b"\x13/multistream/1.0.0\n\x07/noise\n\xff\xff".to_vec();
    frame.extend_from_slice(&noise[..65535]);
    send_and_expect_close(tcp, &frame);

    // Garbage datagrams at the QUIC port.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    for chunk in noise.chunks(1200).take(500) {
        sock.send_to(chunk, udp).unwrap();
    }

    // A storm of connections opened and dropped at once, and idle ones held open.
    for _ in 0..200 {
        drop(TcpStream::connect(tcp).unwrap());
    }
    let idle: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(tcp).unwrap()).collect();

    // The node still works for honest peers, over TCP and QUIC.
    let honest = Node::start(&dir.path().join("honest"), &[]);
    let (status, body) = honest.post(
        "/v1/connect",
        &serde_json::json!({ "target": node.tcp_addr() }),
    );
    assert_eq!(status, 200, "{body}");
    let honest_quic = Node::start(&dir.path().join("honest-quic"), &[]);
    let (status, body) =
        honest_quic.post("/v1/connect", &serde_json::json!({ "target": quic_addr }));
    assert_eq!(status, 200, "{body}");
    drop(idle);
    assert_eq!(node.get("/v1/status").0, 200);

    let rss_after = node.rss_kib();
    assert!(
        rss_after < rss_before + 64 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );
}
