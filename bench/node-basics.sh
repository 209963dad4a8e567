#!/usr/bin/env bash
# Node basics on loopback: start time (spawn -> api.json), idle RSS, connect time over TCP and
# QUIC (measured through the CLI, so each figure includes one `agora` process start).
# Usage: bench/node-basics.sh [path/to/agora]   (default: target/release/agora)
# Starts 5 nodes on 127.0.0.1 and stops them (by pid) at the end.
set -euo pipefail
BIN=${1:-target/release/agora}; D=$(mktemp -d)
trap 'for f in $D/*.pid; do kill $(cat $f) 2>/dev/null || true; done; sleep 1; rm -rf $D' EXIT
start_ms() { date +%s%N; }
for i in 1 2 3 4 5; do
  rm -rf $D/n$i; t0=$(start_ms)
  $BIN up --data-dir $D/n$i --listen /ip4/127.0.0.1/tcp/0 --listen /ip4/127.0.0.1/udp/0/quic-v1 --api 127.0.0.1:0 >$D/n$i.log 2>&1 &
  echo $! > $D/n$i.pid
  for _ in $(seq 2000); do [ -f $D/n$i/api.json ] && break; sleep 0.005; done
  t1=$(start_ms); echo "start n$i: $(( (t1-t0)/1000000 )) ms"
done
sleep 5
for i in 1 2 3 4 5; do echo "idle rss n$i: $(grep VmRSS /proc/$(cat $D/n$i.pid)/status)"; done
A=$($BIN id --data-dir $D/n1 --json | python3 -c 'import json,sys; print([a for a in json.load(sys.stdin)["addrs"] if "/tcp/" in a][0])')
Q=$($BIN id --data-dir $D/n1 --json | python3 -c 'import json,sys; print([a for a in json.load(sys.stdin)["addrs"] if "quic" in a][0])')
for i in 2 3; do t0=$(start_ms); $BIN connect $A --data-dir $D/n$i >/dev/null; t1=$(start_ms); echo "connect tcp n$i->n1 (incl. CLI process): $(( (t1-t0)/1000000 )) ms"; done
for i in 4 5; do t0=$(start_ms); $BIN connect $Q --data-dir $D/n$i >/dev/null; t1=$(start_ms); echo "connect quic n$i->n1 (incl. CLI process): $(( (t1-t0)/1000000 )) ms"; done
t0=$(start_ms); $BIN status --data-dir $D/n1 > /dev/null; t1=$(start_ms); echo "cli status round trip: $(( (t1-t0)/1000000 )) ms"
sleep 3
for i in 1 2 3 4 5; do echo "rss with peers n$i: $(grep VmRSS /proc/$(cat $D/n$i.pid)/status)"; done
