#!/usr/bin/env bash
# File-sharing benchmark, every figure measured in this one run on this machine:
#   - the machine's limits: loopback iperf3, single-thread b3sum, the disk (median of 5 rounds
#     of an O_DIRECT write of the file's size, as agora writes) and the secure-transfer ceiling
#     (below) with the cipher the two nodes actually negotiated;
#   - `agora share` hashing throughput vs b3sum --num-threads 1;
#   - node -> node transfer over loopback (verified, written to disk) vs the smallest of them,
#     median of ROUNDS (default 3) interleaved with sendme's rounds;
#   - peak RSS (VmHWM) of both nodes;
#   - iroh's `sendme` on the same file, if a sendme binary is on PATH or in $SENDME (install it
#     with `cargo install sendme`). sendme publishes its address to n0's servers on start, so it
#     runs inside a network namespace made here with nothing but loopback (needs root): nothing
#     it tries can leave the machine.
# Usage: bench/files.sh [path/to/agora]   (default target/release/agora; SIZE_MIB=1024)
# Starts two nodes and one iperf3 server on 127.0.0.1 and stops them (by pid) at the end.
set -euo pipefail
BIN=$(readlink -f "${1:-target/release/agora}")
SIZE_MIB=${SIZE_MIB:-1024}
missing=()
command -v iperf3 >/dev/null || missing+=(iperf3)
command -v b3sum >/dev/null || missing+=(b3sum)
command -v openssl >/dev/null || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The source, dd's file, agora's copy and sendme's copy exist at once.
NEED_MIB=$((SIZE_MIB * 4 + 512))
FREE_MIB=$(df --output=avail -B1M /var/tmp | tail -1 | tr -d ' ')
if [ "$FREE_MIB" -lt "$NEED_MIB" ]; then
  echo "bench/files.sh: needs $NEED_MIB MiB free under /var/tmp for SIZE_MIB=$SIZE_MIB, has $FREE_MIB" >&2
  exit 1
fi
D=$(mktemp -d /var/tmp/agora-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.5; rm -rf "$D"; }
trap cleanup EXIT
now() { date +%s.%N; }
rate() { python3 -c "print(f'{$1/1048576/($3-$2):.0f}')"; }   # bytes start end -> MiB/s

BYTES=$((SIZE_MIB * 1048576))
head -c "$BYTES" /dev/urandom > "$D/src.bin"
# On disk before anything is timed. Every transfer then syncs only its own copy (fsync of that
# file): `sync -f` (the whole file system) used to flush this gigabyte inside the first get,
# which made that round 0.4-0.5 s slower than the others.
sync "$D/src.bin"

# Every figure is the median of ROUNDS runs: page-cache work on this kind of VM costs very
# different amounts from one minute to the next (fresh guest memory is slow to touch).
ROUNDS=${ROUNDS:-3}
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Machine limits. The disk: 1 MiB O_DIRECT writes, the path and size agora's downloads use
# (the page cache swings several-fold from minute to minute on this kind of VM). Five rounds:
# one right before each transfer (below), so that the transfers and the limit meet the same
# conditions, and the rest now.
B3S=(); DISKS=()
disk_round() {
  local t0 t1
  t0=$(now); dd if=/dev/zero of="$D/dd.bin" bs=1M count="$SIZE_MIB" oflag=direct conv=fdatasync status=none; t1=$(now)
  DISKS+=("$(rate $BYTES $t0 $t1)"); rm -f "$D/dd.bin"
}
for _ in $(seq $((5 > ROUNDS ? 5 - ROUNDS : 0))); do disk_round; done
for r in $(seq "$ROUNDS"); do
  t0=$(now); b3sum --num-threads 1 "$D/src.bin" > /dev/null; t1=$(now)
  B3S+=("$(rate $BYTES $t0 $t1)")
done
B3=$(median "${B3S[@]}")
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
iperf3 -s -1 -B 127.0.0.1 -p "$PORT" > /dev/null 2>&1 & PIDS+=($!)
sleep 0.5
iperf3 -c 127.0.0.1 -p "$PORT" -t 5 -J > "$D/iperf.json"
NET=$(python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"]/8/1048576))' "$D/iperf.json")
# What any encrypted, verified transfer between two processes sharing this machine's cores
# must spend per GiB, at the least: the kernel's TCP work (iperf3's own CPU time, both ends),
# the AEAD once each way (AES-128-GCM when the nodes negotiate TLS, ChaCha20-Poly1305 under
# Noise; which one is read from `agora peers` after the first transfer) and one BLAKE3 pass
# (the downloader's verification). Divided into the cores there are, that is a ceiling no
# such transfer can pass here, whatever the disk and the network allow.
TCP_CPU=$(python3 -c '
import json, sys
e = json.load(open(sys.argv[1]))["end"]
cpu = e["cpu_utilization_percent"]
print((cpu["host_total"] + cpu["remote_total"]) / 100 * e["sum_received"]["seconds"] / (e["sum_received"]["bytes"] / 2**30))' "$D/iperf.json")
CHACHA=$(openssl speed -evp chacha20-poly1305 -bytes 16384 -seconds 2 2>/dev/null | awk '/^ChaCha20-Poly1305/ {sub(/k$/, "", $2); print int($2 * 1000 / 1048576)}')
AES=$(openssl speed -evp aes-128-gcm -bytes 16384 -seconds 2 2>/dev/null | awk '/^AES-128-GCM/ {sub(/k$/, "", $2); print int($2 * 1000 / 1048576)}')
CORES=$(nproc)

# Two nodes.
start() {
  "$BIN" up --data-dir "$D/$1" --listen /ip4/127.0.0.1/tcp/0 --api 127.0.0.1:0 "${@:2}" > "$D/$1.log" 2>&1 &
  PIDS+=($!); echo $! > "$D/$1.pid"
  for _ in $(seq 400); do [ -f "$D/$1/api.json" ] && return; sleep 0.05; done
  echo "node $1 did not start"; exit 1
}
start a
A_ADDR=$("$BIN" id --data-dir "$D/a" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["addrs"][0])')

SHARES=()
for r in $(seq "$ROUNDS"); do
  [ "$r" -gt 1 ] && "$BIN" unshare "$HASH" --data-dir "$D/a" > /dev/null
  t0=$(now); HASH=$("$BIN" share "$D/src.bin" --data-dir "$D/a" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["hash"])'); t1=$(now)
  SHARES+=("$(rate $BYTES $t0 $t1)")
done
SHARE=$(median "${SHARES[@]}")

# Transfers: agora and (if present) sendme take turns, so both meet the same conditions.
SENDME=${SENDME:-$(command -v sendme || true)}
USE_SENDME=0
if [ -n "$SENDME" ] && [ -x "$SENDME" ] && [ "$(id -u)" = 0 ]; then
  USE_SENDME=1
  NS="agora-bench-$$"
  ip netns add "$NS"; ip -n "$NS" link set lo up
  trap 'cleanup; ip netns del "$NS" 2>/dev/null || true' EXIT
  mkdir -p "$D/sm-send"
  (cd "$D/sm-send" && exec ip netns exec "$NS" "$SENDME" send "$D/src.bin" --relay disabled --no-progress > "$D/sm-send.log" 2>&1) &
  PIDS+=($!)
  for _ in $(seq 600); do grep -q "sendme receive" "$D/sm-send.log" 2>/dev/null && break; sleep 0.1; done
  TICKET=$(grep -o 'blob[a-z0-9]*' "$D/sm-send.log" | head -1)
fi
GETS=(); SMS=(); RSS_B=0
for r in $(seq "$ROUNDS"); do
  disk_round
  # A fresh downloader each round (a node that holds the blob would not fetch it again).
  start "b$r" --bootstrap "$A_ADDR"
  t0=$(now); "$BIN" get "$HASH" -o "$D/copy.bin" --data-dir "$D/b$r" > /dev/null; sync "$D/copy.bin"; t1=$(now)
  GETS+=("$(rate $BYTES $t0 $t1)")
  cmp -s "$D/src.bin" "$D/copy.bin" || { echo "copy differs!"; exit 1; }
  if [ "$r" = 1 ]; then
    SECURITY=$("$BIN" peers --data-dir "$D/b$r" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["security"][0])')
  fi
  HWM=$(awk '/VmHWM/ {print int($2/1024)}' /proc/$(cat "$D/b$r.pid")/status)
  [ "$HWM" -gt "$RSS_B" ] && RSS_B=$HWM
  kill "$(cat "$D/b$r.pid")"; rm -f "$D/copy.bin"
  if [ "$USE_SENDME" = 1 ]; then
    mkdir -p "$D/sm-recv$r"
    t0=$(now); (cd "$D/sm-recv$r" && ip netns exec "$NS" "$SENDME" receive "$TICKET" --relay disabled --no-progress > /dev/null 2>&1); sync "$D/sm-recv$r/src.bin"; t1=$(now)
    cmp -s "$D/src.bin" "$D/sm-recv$r/src.bin" || { echo "sendme copy differs!"; exit 1; }
    SMS+=("$(rate $BYTES $t0 $t1)")
    rm -rf "$D/sm-recv$r"
  fi
done
GET=$(median "${GETS[@]}")
DISK=$(median "${DISKS[@]}")
if [ "$SECURITY" = tls ]; then CIPHER=AES-128-GCM; AEAD=$AES; else CIPHER=ChaCha20-Poly1305; AEAD=$CHACHA; fi
CEILING=$(python3 -c "print(int($CORES * 1024 / ($TCP_CPU + 2 * 1024 / $AEAD + 1024 / $B3)))")
LIMIT=$(python3 -c "print(min($B3, $DISK, $NET, $CEILING))")
SM=0
if [ "$USE_SENDME" = 1 ]; then
  SM=$(median "${SMS[@]}")
  pkill -f "$SENDME send $D/src.bin" 2>/dev/null || true
fi
# A get that meets a replica fetch of the same blob: the downloader is connected before the
# share, so the share pushes a replica to it (it is among the 3 nodes nearest the hash of a
# 2-node network) and the get follows that fetch, then takes the file over. Timed from the end
# of the share to the get's end (the replica starts before the get does).
start rep --bootstrap "$A_ADDR"
for _ in $(seq 200); do
  [ "$("$BIN" peers --data-dir "$D/rep" --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')" -gt 0 ] && break
  sleep 0.05
done
"$BIN" unshare "$HASH" --data-dir "$D/a" > /dev/null
"$BIN" share "$D/src.bin" --data-dir "$D/a" > /dev/null; t0=$(now)
for _ in $(seq 400); do
  IN=$("$BIN" status --data-dir "$D/rep" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes_in"])')
  [ "$IN" -gt $((BYTES / 16)) ] && break
  sleep 0.05
done
"$BIN" get "$HASH" -o "$D/copy.bin" --data-dir "$D/rep" > /dev/null; sync "$D/copy.bin"; t1=$(now)
REPLICA_GET=$(rate $BYTES $t0 $t1)
cmp -s "$D/src.bin" "$D/copy.bin" || { echo "copy beside the replica differs!"; exit 1; }
rm -f "$D/copy.bin"
echo "rounds (MiB/s): b3sum ${B3S[*]}; dd ${DISKS[*]}; share ${SHARES[*]}; get ${GETS[*]}; sendme ${SMS[*]:-none}; get beside a replica $REPLICA_GET" >&2
RSS_A=$(awk '/VmHWM/ {print int($2/1024)}' /proc/$(cat "$D/a.pid")/status)

python3 - "$SIZE_MIB" "$B3" "$DISK" "$NET" "$LIMIT" "$SHARE" "$GET" "$RSS_A" "$RSS_B" "$SM" "$CHACHA" "$CEILING" "$CORES" "$TCP_CPU" "$REPLICA_GET" "$AES" "$SECURITY" "$CIPHER" <<'PY'
import json, sys
size, b3, disk, net, limit, share, get, rss_a, rss_b, sm, chacha, ceiling, cores = map(int, sys.argv[1:14])
tcp_cpu = float(sys.argv[14])
replica_get, aes = int(sys.argv[15]), int(sys.argv[16])
security, cipher = sys.argv[17], sys.argv[18]
rows = [
    ("file size", f"{size} MiB", ""),
    ("b3sum --num-threads 1", f"{b3} MiB/s", ""),
    ("disk, O_DIRECT write + fdatasync (dd)", f"{disk} MiB/s", "median of 5 rounds"),
    ("loopback TCP (iperf3)", f"{net} MiB/s", f"{tcp_cpu:.2f} CPU-s per GiB, both ends"),
    ("AES-128-GCM / ChaCha20-Poly1305, one core", f"{aes} / {chacha} MiB/s", "openssl speed"),
    ("encrypted + verified transfer ceiling", f"{ceiling} MiB/s",
     f"{cores} cores / (TCP + 2 x {cipher} + 1 x BLAKE3 per GiB); the nodes negotiated {security}"),
    ("agora share (hash + outboard)", f"{share} MiB/s", f"{share/b3:.2f} x b3sum (target >= 0.8)"),
    ("agora get node->node, verified, on disk", f"{get} MiB/s",
     f"{get/limit:.2f} x the limit {limit} MiB/s (target >= 0.6); {get/ceiling:.2f} x the ceiling"),
    ("agora get on a node fetching it as a replica", f"{replica_get} MiB/s",
     f"{replica_get/get:.2f} x a get on a node that was not (one round; from the share's end)"),
    ("peak RSS seeder / downloader", f"{rss_a} / {rss_b} MiB", ""),
    ("iroh sendme receive (same file, loopback)", f"{sm} MiB/s" if sm else "not run",
     f"agora get = {get/sm:.2f} x sendme (target >= 1.5)" if sm else "no sendme binary, or not root"),
]
for name, value, ratio in rows:
    print(f"{name:<42} {value:>14}  {ratio}")
print(json.dumps(dict(size_mib=size, b3sum=b3, disk=disk, iperf3=net, limit=limit, share=share,
                      get=get, share_ratio=round(share/b3, 2), get_ratio=round(get/limit, 2),
                      chacha=chacha, aes=aes, security=security, cipher=cipher,
                      tcp_cpu_s_per_gib=round(tcp_cpu, 2), cores=cores, ceiling=ceiling,
                      get_vs_ceiling=round(get/ceiling, 2),
                      rss_seeder_mib=rss_a, rss_downloader_mib=rss_b, sendme=sm,
                      vs_sendme=round(get/sm, 2) if sm else None,
                      replica_get=replica_get, replica_get_vs_get=round(replica_get/get, 2))))
PY
