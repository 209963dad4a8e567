#!/usr/bin/env bash
# Node basics on loopback: start time (spawn -> api.json), idle RSS, connect time over TCP and
# QUIC (measured through the CLI, so each figure includes one `agora` process start).
# Usage: bench/node-basics.sh [path/to/agora]   (default: target/release/agora)
# Starts 5 nodes on 127.0.0.1 and stops them (by pid) at the end. The last line is JSON.
set -euo pipefail
BIN=${1:-target/release/agora}; D=$(mktemp -d)
trap 'for f in $D/*.pid; do kill $(cat $f) 2>/dev/null || true; done; sleep 1; rm -rf $D' EXIT
start_ms() { date +%s%N; }
rss_mib() { awk '/VmRSS/ {print int($2/1024)}' /proc/$(cat $D/$1.pid)/status; }
STARTS=(); IDLE=(); TCP=(); QUIC=(); PEERS=()
for i in 1 2 3 4 5; do
  rm -rf $D/n$i; t0=$(start_ms)
  $BIN up --data-dir $D/n$i --listen /ip4/127.0.0.1/tcp/0 --listen /ip4/127.0.0.1/udp/0/quic-v1 --api 127.0.0.1:0 >$D/n$i.log 2>&1 &
  echo $! > $D/n$i.pid
  for _ in $(seq 2000); do [ -f $D/n$i/api.json ] && break; sleep 0.005; done
  t1=$(start_ms); ms=$(( (t1-t0)/1000000 )); STARTS+=($ms); echo "start n$i: $ms ms"
done
sleep 5
for i in 1 2 3 4 5; do r=$(rss_mib n$i); IDLE+=($r); echo "idle rss n$i: $r MiB"; done
A=$($BIN id --data-dir $D/n1 --json | python3 -c 'import json,sys; print([a for a in json.load(sys.stdin)["addrs"] if "/tcp/" in a][0])')
Q=$($BIN id --data-dir $D/n1 --json | python3 -c 'import json,sys; print([a for a in json.load(sys.stdin)["addrs"] if "quic" in a][0])')
for i in 2 3; do t0=$(start_ms); $BIN connect $A --data-dir $D/n$i >/dev/null; t1=$(start_ms); ms=$(( (t1-t0)/1000000 )); TCP+=($ms); echo "connect tcp n$i->n1 (incl. CLI process): $ms ms"; done
for i in 4 5; do t0=$(start_ms); $BIN connect $Q --data-dir $D/n$i >/dev/null; t1=$(start_ms); ms=$(( (t1-t0)/1000000 )); QUIC+=($ms); echo "connect quic n$i->n1 (incl. CLI process): $ms ms"; done
t0=$(start_ms); $BIN status --data-dir $D/n1 > /dev/null; t1=$(start_ms); STATUS=$(( (t1-t0)/1000000 )); echo "cli status round trip: $STATUS ms"
sleep 3
for i in 1 2 3 4 5; do r=$(rss_mib n$i); PEERS+=($r); echo "rss with peers n$i: $r MiB"; done
python3 - "${STARTS[*]}" "${IDLE[*]}" "${TCP[*]}" "${QUIC[*]}" "$STATUS" "${PEERS[*]}" <<'PY'
import json, sys
ints = lambda s: [int(x) for x in s.split()]
starts, idle, tcp, quic, status, peers = ints(sys.argv[1]), ints(sys.argv[2]), ints(sys.argv[3]), ints(sys.argv[4]), int(sys.argv[5]), ints(sys.argv[6])
print(json.dumps(dict(start_ms=starts, idle_rss_mib=idle, connect_tcp_ms=tcp, connect_quic_ms=quic,
                      status_ms=status, rss_with_peers_mib=peers)))
PY
