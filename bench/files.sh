#!/usr/bin/env bash
# File-sharing benchmark, every figure measured in this one run on this machine:
#   - the machine's limits: loopback iperf3, single-thread b3sum, disk write with fdatasync;
#   - `agora share` hashing throughput vs b3sum --num-threads 1;
#   - node -> node transfer over loopback (verified, written to disk) vs the smallest limit;
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
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
D=$(mktemp -d /var/tmp/agora-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.5; rm -rf "$D"; }
trap cleanup EXIT
now() { date +%s.%N; }
rate() { python3 -c "print(f'{$1/1048576/($3-$2):.0f}')"; }   # bytes start end -> MiB/s

BYTES=$((SIZE_MIB * 1048576))
head -c "$BYTES" /dev/urandom > "$D/src.bin"

# Machine limits.
t0=$(now); b3sum --num-threads 1 "$D/src.bin" > /dev/null; t1=$(now)
B3=$(rate $BYTES $t0 $t1)
t0=$(now); dd if=/dev/zero of="$D/dd.bin" bs=1M count="$SIZE_MIB" conv=fdatasync status=none; t1=$(now)
DISK=$(rate $BYTES $t0 $t1); rm -f "$D/dd.bin"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
iperf3 -s -1 -B 127.0.0.1 -p "$PORT" > /dev/null 2>&1 & PIDS+=($!)
sleep 0.5
NET=$(iperf3 -c 127.0.0.1 -p "$PORT" -t 5 -J | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/8/1048576))')
LIMIT=$(python3 -c "print(min($B3, $DISK, $NET))")

# Two nodes.
start() {
  "$BIN" up --data-dir "$D/$1" --listen /ip4/127.0.0.1/tcp/0 --api 127.0.0.1:0 "${@:2}" > "$D/$1.log" 2>&1 &
  PIDS+=($!); echo $! > "$D/$1.pid"
  for _ in $(seq 400); do [ -f "$D/$1/api.json" ] && return; sleep 0.05; done
  echo "node $1 did not start"; exit 1
}
start a
A_ADDR=$("$BIN" id --data-dir "$D/a" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["addrs"][0])')
start b --bootstrap "$A_ADDR"

t0=$(now); HASH=$("$BIN" share "$D/src.bin" --data-dir "$D/a" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["hash"])'); t1=$(now)
SHARE=$(rate $BYTES $t0 $t1)
t0=$(now); "$BIN" get "$HASH" -o "$D/copy.bin" --data-dir "$D/b" > /dev/null; sync -f "$D/copy.bin"; t1=$(now)
GET=$(rate $BYTES $t0 $t1)
cmp -s "$D/src.bin" "$D/copy.bin" || { echo "copy differs!"; exit 1; }
# iroh sendme, same file, same machine, same run.
SENDME=${SENDME:-$(command -v sendme || true)}
SM=0
if [ -n "$SENDME" ] && [ -x "$SENDME" ] && [ "$(id -u)" = 0 ]; then
  NS="agora-bench-$$"
  ip netns add "$NS"; ip -n "$NS" link set lo up
  trap 'cleanup; ip netns del "$NS" 2>/dev/null || true' EXIT
  mkdir -p "$D/sm-send" "$D/sm-recv"
  (cd "$D/sm-send" && exec ip netns exec "$NS" "$SENDME" send "$D/src.bin" --relay disabled --no-progress > "$D/sm-send.log" 2>&1) &
  PIDS+=($!)
  for _ in $(seq 600); do grep -q "sendme receive" "$D/sm-send.log" 2>/dev/null && break; sleep 0.1; done
  TICKET=$(grep -o 'blob[a-z0-9]*' "$D/sm-send.log" | head -1)
  t0=$(now); (cd "$D/sm-recv" && ip netns exec "$NS" "$SENDME" receive "$TICKET" --relay disabled --no-progress > /dev/null 2>&1); sync -f "$D/sm-recv/src.bin"; t1=$(now)
  cmp -s "$D/src.bin" "$D/sm-recv/src.bin" || { echo "sendme copy differs!"; exit 1; }
  SM=$(rate $BYTES $t0 $t1)
  pkill -f "$SENDME send $D/src.bin" 2>/dev/null || true
fi
RSS_A=$(awk '/VmHWM/ {print int($2/1024)}' /proc/$(cat "$D/a.pid")/status)
RSS_B=$(awk '/VmHWM/ {print int($2/1024)}' /proc/$(cat "$D/b.pid")/status)

python3 - "$SIZE_MIB" "$B3" "$DISK" "$NET" "$LIMIT" "$SHARE" "$GET" "$RSS_A" "$RSS_B" "$SM" <<'PY'
import json, sys
size, b3, disk, net, limit, share, get, rss_a, rss_b, sm = map(int, sys.argv[1:])
rows = [
    ("file size", f"{size} MiB", ""),
    ("b3sum --num-threads 1", f"{b3} MiB/s", ""),
    ("disk write + fdatasync (dd)", f"{disk} MiB/s", ""),
    ("loopback TCP (iperf3)", f"{net} MiB/s", ""),
    ("agora share (hash + outboard)", f"{share} MiB/s", f"{share/b3:.2f} x b3sum (target >= 0.8)"),
    ("agora get node->node, verified, on disk", f"{get} MiB/s", f"{get/limit:.2f} x machine limit {limit} MiB/s (target >= 0.6)"),
    ("peak RSS seeder / downloader", f"{rss_a} / {rss_b} MiB", ""),
    ("iroh sendme receive (same file, loopback)", f"{sm} MiB/s" if sm else "not run",
     f"agora get = {get/sm:.2f} x sendme (target >= 1.5)" if sm else "no sendme binary, or not root"),
]
for name, value, ratio in rows:
    print(f"{name:<42} {value:>14}  {ratio}")
print(json.dumps(dict(size_mib=size, b3sum=b3, disk=disk, iperf3=net, limit=limit, share=share,
                      get=get, share_ratio=round(share/b3, 2), get_ratio=round(get/limit, 2),
                      rss_seeder_mib=rss_a, rss_downloader_mib=rss_b, sendme=sm,
                      vs_sendme=round(get/sm, 2) if sm else None)))
PY
