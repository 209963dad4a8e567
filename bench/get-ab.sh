#!/usr/bin/env bash
# Two builds of agora side by side on the same 1 GiB get: each build gets a seeder of its own
# (sharing the same random file), then fresh downloaders of build A and build B take turns,
# ROUNDS each (default 5). Prints every round — MiB/s (get until the copy is fsynced), the
# seeder's and the downloader's CPU in 10 ms ticks during it — and the medians per build.
# This is how the changes in the README's Performance section were compared: the VM's speed
# drifts from minute to minute, so only interleaved rounds compare.
#
# Usage: bench/get-ab.sh path/to/agora-A path/to/agora-B   (SIZE_MIB=1024 ROUNDS=5)
# Loopback only; every process it starts is killed at the end, and its files removed.
set -euo pipefail
A_BIN=$1
B_BIN=$2
SIZE_MIB=${SIZE_MIB:-1024}
ROUNDS=${ROUNDS:-5}
D=$(mktemp -d /var/tmp/agora-get-ab.XXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$D"
}
trap cleanup EXIT

head -c $((SIZE_MIB * 1048576)) /dev/urandom > "$D/src.bin"
sync "$D/src.bin"

# start BIN NAME [ARGS...]: a node in $D/NAME; its pid in $D/NAME.pid once its API is up.
start() {
  local bin=$1 name=$2
  shift 2
  "$bin" up --data-dir "$D/$name" --listen /ip4/127.0.0.1/tcp/0 --api 127.0.0.1:0 "$@" \
    > "$D/$name.log" 2>&1 &
  echo $! > "$D/$name.pid"
  PIDS+=("$!")
  for _ in $(seq 400); do
    [ -f "$D/$name/api.json" ] && return
    sleep 0.05
  done
  echo "get-ab: node $name did not start" >&2
  exit 1
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
json() { python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }

declare -A ADDR HASH BIN=([A]=$A_BIN [B]=$B_BIN)
for v in A B; do
  start "${BIN[$v]}" "seed$v"
  ADDR[$v]=$("${BIN[$v]}" id --data-dir "$D/seed$v" --json | python3 -c \
    'import json,sys; print(json.load(sys.stdin)["addrs"][0])')
  HASH[$v]=$("${BIN[$v]}" share "$D/src.bin" --data-dir "$D/seed$v" --json | json hash)
done

echo "build round MiB/s seeder_ticks downloader_ticks"
for r in $(seq "$ROUNDS"); do
  for v in A B; do
    start "${BIN[$v]}" "get$v$r" --bootstrap "${ADDR[$v]}"
    seeder=$(cat "$D/seed$v.pid")
    getter=$(cat "$D/get$v$r.pid")
    s0=$(ticks "$seeder")
    g0=$(ticks "$getter")
    t0=$(date +%s.%N)
    "${BIN[$v]}" get "${HASH[$v]}" -o "$D/copy.bin" --data-dir "$D/get$v$r" > /dev/null
    sync "$D/copy.bin"
    t1=$(date +%s.%N)
    echo "$v $r $(python3 -c "print(round($SIZE_MIB / ($t1 - $t0)))") \
$(($(ticks "$seeder") - s0)) $(($(ticks "$getter") - g0))" | tee -a "$D/rounds"
    kill "$getter"
    wait "$getter" 2>/dev/null || true
    rm -rf "$D/copy.bin" "$D/get$v$r"
  done
done
python3 - "$D/rounds" <<'PY'
import statistics as st, sys
rows = [line.split() for line in open(sys.argv[1])]
for v in "AB":
    r = [list(map(int, x[2:])) for x in rows if x[0] == v]
    print(f"{v}: median {st.median(x[0] for x in r)} MiB/s, seeder {st.median(x[1] for x in r)}"
          f" ticks, downloader {st.median(x[2] for x in r)} ticks")
PY
