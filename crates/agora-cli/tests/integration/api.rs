//! The HTTP API: authentication, errors, events, metrics.

use std::io::{BufRead, BufReader, Write};

use serde_json::{Value, json};

use crate::common::*;

fn error_code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    assert!(v["error"]["message"].is_string(), "{body}");
    v["error"]["code"].as_str().unwrap().to_owned()
}

#[test]
fn api_errors_are_json_with_the_right_status() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let token = node.token.clone();

    // Authentication.
    let (status, body) = node.request("GET", "/v1/id", None, None);
    assert_eq!((status, error_code(&body).as_str()), (401, "unauthorized"));
    let (status, _) = node.request("GET", "/v1/id", Some("0000"), None);
    assert_eq!(status, 401);
    let (status, _) = node.request("GET", "/metrics", None, None);
    assert_eq!(status, 401);
    let (status, _) = node.request("GET", "/v1/id", Some(&token), None);
    assert_eq!(status, 200);

    // Malformed bodies.
    for body in [
        "{not json",
        "[]",
        "{\"target\": 5}",
        "{\"target\": \"x\", \"extra\": 1}",
    ] {
        let (status, resp) = node.request("POST", "/v1/connect", Some(&token), Some(body));
        assert_eq!(status, 400, "{body} -> {resp}");
        assert_eq!(error_code(&resp), "bad_request");
    }
    let (status, resp) = node.request(
        "POST",
        "/v1/connect",
        Some(&token),
        Some(&json!({"target": "/ip4/999.1.1.1/tcp/1"}).to_string()),
    );
    assert_eq!(status, 400, "{resp}");
    let (status, resp) = node.request(
        "POST",
        "/v1/connect",
        Some(&token),
        Some(&json!({"target": "not-a-peer-id"}).to_string()),
    );
    assert_eq!(status, 400, "{resp}");
    // An oversized body is refused once the limit is crossed, without reading the rest.
    let mut sock = std::net::TcpStream::connect(&node.api).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        sock,
        "POST /v1/connect HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n{{\"target\": \""
    )
    .unwrap();
    // Past the 256 KiB limit; the node may answer and close before all of it is written.
    let _ = sock.write_all(&vec![b'x'; 300_000]);
    let mut status_line = String::new();
    BufReader::new(sock).read_line(&mut status_line).unwrap();
    assert!(status_line.contains(" 413 "), "{status_line}");

    // Unknown things.
    let stranger = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";
    let (status, resp) = node.request("GET", &format!("/v1/peers/{stranger}"), Some(&token), None);
    assert_eq!(
        (status, error_code(&resp).as_str()),
        (404, "peer_not_connected")
    );
    let (status, resp) = node.post("/v1/disconnect", &json!({ "peer": stranger }));
    assert_eq!(status, 404, "{resp}");
    let (status, resp) = node.post("/v1/connect", &json!({ "target": stranger }));
    assert_eq!(status, 404, "{resp}");
    assert_eq!(resp["error"]["code"], "peer_not_found");
    let (status, resp) = node.request("GET", "/v2/nothing", Some(&token), None);
    assert_eq!((status, error_code(&resp).as_str()), (404, "not_found"));

    // An unreachable address is a gateway error, not a hang.
    let (status, resp) = node.post("/v1/connect", &json!({ "target": "/ip4/127.0.0.1/tcp/1" }));
    assert_eq!(status, 502, "{resp}");
}

#[test]
fn events_stream_reports_peers_and_metrics_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let a = Node::start(&dir.path().join("a"), &[]);

    // Raw HTTP so the stream can be read line by line as it arrives.
    let mut sock = std::net::TcpStream::connect(&a.api).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        sock,
        "GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        a.token
    )
    .unwrap();
    let mut reader = BufReader::new(sock);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    assert!(status_line.contains("200"), "{status_line}");

    let b = Node::start(&dir.path().join("b"), &["--bootstrap", &a.tcp_addr()]);
    let mut seen = Vec::new();
    let found = loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            break false;
        }
        if let Some(data) = line.trim().strip_prefix("data:") {
            let v: Value = serde_json::from_str(data.trim()).unwrap();
            seen.push(v.clone());
            if v["type"] == "peer_connected" && v["peer_id"] == b.peer_id.as_str() {
                assert_eq!(v["direction"], "inbound");
                break true;
            }
        }
    };
    assert!(found, "no peer_connected event for b; saw {seen:?}");

    wait_connected(&a, &b);
    let (status, text) = a.request("GET", "/metrics", Some(&a.token.clone()), None);
    assert_eq!(status, 200);
    assert!(text.contains("agora_connected_peers 1"), "{text}");
    assert!(text.contains("libp2p_bandwidth_bytes_total"), "{text}");
    assert!(text.contains("libp2p_identify"), "{text}");
    assert_eq!(text.matches("# EOF").count(), 1);
    assert!(text.trim_end().ends_with("# EOF"));
}
