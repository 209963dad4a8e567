//! `agora-testbed agent-link`: a WAN link emulator in user space, for kernels without
//! `sch_netem` (this machine's has none).
//!
//! Each router of the `wan` scenario runs one agent in its namespace. The router routes the
//! other LANs into a TUN device; the agent reads each IP packet from it, drops it with the
//! configured probability, holds it for the configured one-way delay (in order), and sends it
//! in a UDP datagram over the undelayed backbone to the agent of the router whose LAN holds the
//! destination, which writes it into its own TUN device. Bounded: packets waiting in the delay
//! line are capped, beyond which they are dropped as a full router queue would.

use std::{
    collections::VecDeque,
    fs::File,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd,
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// UDP port of the agents on the backbone.
pub const PORT: u16 = 5000;
/// Most packets held in one delay line.
const MAX_QUEUED: usize = 20_000;

/// Packets waiting to leave: when, where to, the packet.
type DelayLine = VecDeque<(Instant, SocketAddrV4, Vec<u8>)>;

const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Attaches to the (already created) TUN device `name` of this namespace.
fn open_tun(name: &str) -> Result<File> {
    let file = File::options()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("cannot open /dev/net/tun")?;
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TUN | IFF_NO_PI,
        _pad: [0; 22],
    };
    if name.len() >= 16 {
        bail!("TUN name {name:?} is too long");
    }
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads an ifreq, which `req` is, laid out as the kernel expects.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) };
    if rc < 0 {
        bail!("TUNSETIFF on {name}: {}", std::io::Error::last_os_error());
    }
    Ok(file)
}

/// The backbone address of the router whose LAN holds `dst`: LAN k is 10.(10+k).0.0/24 and
/// its router is 10.200.0.(k+1).
fn next_hop(dst: Ipv4Addr) -> Option<SocketAddrV4> {
    let [a, b, ..] = dst.octets();
    (a == 10 && (10..60).contains(&b))
        .then(|| SocketAddrV4::new(Ipv4Addr::new(10, 200, 0, b - 10 + 1), PORT))
}

/// Runs the link of router `index`: packets leave `delay` ± `jitter` after they arrive (never
/// before the packet ahead of them, so jitter does not reorder), and `loss_percent` of them
/// are dropped.
pub fn run(index: u8, delay: Duration, jitter: Duration, loss_percent: f64) -> Result<()> {
    let tun = open_tun("wan0")?;
    let mut tun_in = tun.try_clone()?;
    let mut tun_out = tun;
    let me = SocketAddrV4::new(Ipv4Addr::new(10, 200, 0, index + 1), PORT);
    let udp = UdpSocket::bind(me).with_context(|| format!("cannot bind {me}"))?;
    let udp_in = udp.try_clone()?;

    // Backbone → TUN: deliver at once (the sender already applied the delay).
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while let Ok(n) = udp_in.recv(&mut buf) {
            let _ = tun_out.write(&buf[..n]);
        }
    });

    // The delay line: packets leave in arrival order, each `delay` after it arrived.
    let line: Arc<(Mutex<DelayLine>, Condvar)> =
        Arc::new((Mutex::new(VecDeque::new()), Condvar::new()));
    let sender = line.clone();
    std::thread::spawn(move || {
        let (queue, ready) = &*sender;
        loop {
            let mut q = queue.lock().unwrap();
            while q.is_empty() {
                q = ready.wait(q).unwrap();
            }
            let due = q.front().map(|p| p.0).unwrap();
            let now = Instant::now();
            if due > now {
                let _unused = ready.wait_timeout(q, due - now).unwrap();
                continue;
            }
            let (_, to, packet) = q.pop_front().unwrap();
            drop(q);
            let _ = udp.send_to(&packet, to);
        }
    });

    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(index);
    let mut buf = vec![0u8; 65_536];
    loop {
        let n = tun_in.read(&mut buf).context("reading the TUN device")?;
        if n < 20 || buf[0] >> 4 != 4 {
            continue;
        }
        let dst = Ipv4Addr::new(buf[16], buf[17], buf[18], buf[19]);
        let Some(to) = next_hop(dst) else { continue };
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        if (rng % 1_000_000) as f64 / 10_000.0 < loss_percent {
            continue;
        }
        let spread = jitter.as_micros() as u64;
        let wait = if spread == 0 {
            delay
        } else {
            (delay + Duration::from_micros(rng % (2 * spread + 1))).saturating_sub(jitter)
        };
        let (queue, ready) = &*line;
        let mut q = queue.lock().unwrap();
        if q.len() < MAX_QUEUED {
            let due = (Instant::now() + wait).max(q.back().map_or(Instant::now(), |p| p.0));
            q.push_back((due, to, buf[..n].to_vec()));
            ready.notify_one();
        }
    }
}
