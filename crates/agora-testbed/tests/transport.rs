//! `agora-testbed transport-bench` end to end: two real processes, a real libp2p stream on
//! loopback; the sender checks the receiver's byte count, so a lost or extra byte fails it.

use std::process::Command;

#[test]
fn transport_bench_moves_every_byte_and_reports_rate_and_cpu() {
    let out = Command::new(env!("CARGO_BIN_EXE_agora-testbed"))
        .args(["transport-bench", "--mib", "16"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["mib"], 16);
    assert!(v["mib_s"].as_u64().unwrap() > 0, "{v}");
    for side in ["sender_cpu_s_per_gib", "receiver_cpu_s_per_gib"] {
        assert!(v[side].as_f64().unwrap() > 0.0, "{v}");
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_agora-testbed"))
        .args(["transport-bench", "--mib", "0"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--mib must be at least 1"));
}
