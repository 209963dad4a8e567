//! Human-readable rendering of API answers (`--json` prints them as they are).

use anyhow::Result;
use serde_json::Value;

pub fn print(json: bool, value: &Value, human: impl Fn(&Value) -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        println!("{}", human(value));
    }
    Ok(())
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// `12D3KooWAbc…xyz` for tables.
pub fn short_id(id: &str) -> String {
    if id.len() > 16 {
        format!("{}…{}", &id[..10], &id[id.len() - 6..])
    } else {
        id.to_owned()
    }
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

pub fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

pub fn id(v: &Value) -> String {
    let mut out = format!(
        "peer id:     {}\nagent:       {}\nnat status:  {}\nkad mode:    {}\naddresses:",
        s(&v["peer_id"]),
        s(&v["agent_version"]),
        s(&v["nat_status"]),
        s(&v["kad_mode"]),
    );
    for a in v["addrs"].as_array().into_iter().flatten() {
        out.push_str(&format!("\n  {}", s(a)));
    }
    for a in v["external_addrs"].as_array().into_iter().flatten() {
        out.push_str(&format!("\n  {} (external)", s(a)));
    }
    out
}

pub fn peers(v: &Value) -> String {
    let list = v.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return "no connected peers (connect with `agora connect MULTIADDR`)".into();
    }
    let mut out = format!(
        "{:<54} {:<4} {:>9}  {:<24} {:<8} {}",
        "PEER", "DIR", "LATENCY", "AGENT", "SECURITY", "ADDRESS"
    );
    for p in &list {
        let latency = p["latency_ms"]
            .as_f64()
            .map(|ms| format!("{ms:.1} ms"))
            .unwrap_or_else(|| "-".into());
        let dir = if s(&p["direction"]) == "inbound" {
            "in"
        } else {
            "out"
        };
        let addr = p["addrs"].get(0).map(s).unwrap_or("-");
        let security = |i: usize| p["security"].get(i).map(s).unwrap_or("?");
        out.push_str(&format!(
            "\n{:<54} {:<4} {:>9}  {:<24} {:<8} {}",
            s(&p["peer_id"]),
            dir,
            latency,
            p["agent_version"].as_str().unwrap_or("?"),
            security(0),
            addr
        ));
        // Further connections to the same peer, each with its own security.
        for (i, a) in p["addrs"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .skip(1)
        {
            out.push_str(&format!("\n    also {} {}", security(i), s(a)));
        }
        let protocols: Vec<&str> = p["protocols"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if !protocols.is_empty() {
            out.push_str(&format!("\n    protocols: {}", protocols.join(" ")));
        }
    }
    out.push_str(&format!("\n{} peer(s)", list.len()));
    out
}

pub fn status(v: &Value) -> String {
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    format!(
        "peer id:        {}\nagent:          {}\nuptime:         {}\npeers:          {} ({} connections)\nrouting table:  {} peers\nbandwidth:      {} in, {} out\nstorage:        {} in {}\nnat status:     {}",
        s(&v["peer_id"]),
        s(&v["agent_version"]),
        duration(n("uptime_secs")),
        n("connected_peers"),
        n("connections"),
        n("routing_table_size"),
        bytes(n("bytes_in")),
        bytes(n("bytes_out")),
        bytes(n("storage_bytes")),
        s(&v["data_dir"]),
        s(&v["nat_status"]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(bytes(12), "12 B");
        assert_eq!(bytes(2048), "2.0 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(61), "1m1s");
        assert_eq!(duration(7200), "2h0m");
        assert_eq!(short_id("12D3KooWABCDEFGHIJKLMNOP"), "12D3KooWAB…KLMNOP");
    }
}
