//! `agora-testbed transport-bench`: how fast Agora's libp2p transport alone (TCP + TLS 1.3 or
//! Noise + Yamux, as `agora-net` builds it) carries bytes between two processes on this machine — a
//! raw stream, nothing hashed, nothing written to disk. No file transfer over this transport
//! can be faster, so it tells how much of a `get`'s time is the transport's and how much is
//! Agora's own work.
//!
//! The sender is this process; the receiver is a child process (`--serve`) on 127.0.0.1 that
//! reads the stream to its end and answers with the byte count.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde_json::{Value, json};

const SINK: StreamProtocol = StreamProtocol::new("/agora-bench/sink/1.0.0");
/// The sender writes (and the receiver reads) in pieces of this size.
const CHUNK: usize = 1 << 20;

/// CPU time (user + system) of this process, or of its waited-for children, in seconds.
fn cpu_seconds(who: libc::c_int) -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(who, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// The receiving side: listens on loopback, prints `ADDR <multiaddr>/p2p/<peer>`, takes one
/// stream, reads it to its end, answers the byte count (8 bytes, big endian) and exits.
pub fn serve(security: agora_net::Security) -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let (net, addr) = agora_net::start_loopback_secured(key, vec![], security).await?;
        let mut incoming = net
            .stream_control()
            .accept(SINK)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        println!("ADDR {addr}/p2p/{}", net.local_peer_id());
        std::io::stdout().flush()?;
        let (_, mut stream) = tokio::time::timeout(Duration::from_secs(60), async {
            futures::StreamExt::next(&mut incoming).await
        })
        .await
        .context("no sender within 60 s")?
        .context("the listener closed")?;
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        stream.write_all(&total.to_be_bytes()).await?;
        stream.close().await?;
        // Let the answer leave before the process ends.
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(())
    })
}

/// Sends `mib` MiB to a child receiver and reports the rate and both sides' CPU per GiB.
pub fn run(mib: u64, security: agora_net::Security) -> Result<Value> {
    if mib == 0 {
        bail!("--mib must be at least 1");
    }
    let exe = std::env::current_exe()?;
    // Children's CPU accumulates over every child waited for; keep only this one's.
    let children_before = cpu_seconds(libc::RUSAGE_CHILDREN);
    let mut child = Command::new(exe)
        .args([
            "transport-bench",
            "--serve",
            "--security",
            &security.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start the receiving process")?;
    let result = send_to(&mut child, mib, security);
    if result.is_err() {
        let _ = child.kill();
    }
    let status = child.wait()?;
    let (secs, sender_cpu, negotiated) = result?;
    if !status.success() {
        bail!("the receiving process failed: {status}");
    }
    let receiver_cpu = cpu_seconds(libc::RUSAGE_CHILDREN) - children_before;
    let gib = mib as f64 / 1024.0;
    Ok(json!({
        "mib": mib,
        "security": negotiated,
        "mib_s": (mib as f64 / secs).round() as u64,
        "sender_cpu_s_per_gib": (sender_cpu / gib * 100.0).round() / 100.0,
        "receiver_cpu_s_per_gib": (receiver_cpu / gib * 100.0).round() / 100.0,
    }))
}

/// Returns the transfer's seconds, this process's CPU seconds spent on it and the security
/// protocol the connection negotiated.
fn send_to(
    child: &mut std::process::Child,
    mib: u64,
    security: agora_net::Security,
) -> Result<(f64, f64, String)> {
    let stdout = child.stdout.take().context("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr: libp2p::Multiaddr = line
        .trim()
        .strip_prefix("ADDR ")
        .context("the receiver printed no address")?
        .parse()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let (net, _) = agora_net::start_loopback_secured(key, vec![], security).await?;
        let peer = net.dial(addr).await?;
        let negotiated = net
            .peers()
            .await?
            .into_iter()
            .find(|p| p.peer_id == peer.to_string())
            .and_then(|p| p.security.into_iter().next())
            .unwrap_or_else(|| "unknown".into());
        // Incompressible bytes, as a real file would be (no layer compresses, but be sure).
        let mut chunk = vec![0u8; CHUNK];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for b in chunk.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let cpu0 = cpu_seconds(libc::RUSAGE_SELF);
        let t0 = Instant::now();
        let mut stream = net
            .stream_control()
            .open_stream(peer, SINK)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for _ in 0..mib {
            stream.write_all(&chunk).await?;
        }
        stream.close().await?;
        let mut answer = [0u8; 8];
        stream.read_exact(&mut answer).await?;
        let secs = t0.elapsed().as_secs_f64();
        let cpu = cpu_seconds(libc::RUSAGE_SELF) - cpu0;
        let got = u64::from_be_bytes(answer);
        if got != mib << 20 {
            bail!("the receiver counted {got} bytes of {}", mib << 20);
        }
        Ok((secs, cpu, negotiated))
    })
}
