#!/usr/bin/env bash
# One seeder, N downloaders (default 8) starting together: total time until all have the file,
# and the seeder's upload as a multiple of the file size (downloaders serve each other the
# pieces they have verified, so it should stay well under N).
# Usage: bench/swarm.sh [path/to/agora]   (default target/release/agora; SIZE_MIB=256, N=8)
# All nodes listen on 127.0.0.1 and are stopped (by pid) at the end.
set -euo pipefail
BIN=$(readlink -f "${1:-target/release/agora}")
SIZE_MIB=${SIZE_MIB:-256}
N=${N:-8}
D=$(mktemp -d /var/tmp/agora-swarm.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.5; [ -n "${KEEP:-}" ] && echo "kept $D" || rm -rf "$D"; }
trap cleanup EXIT
start() {
  "$BIN" up --data-dir "$D/$1" --listen /ip4/127.0.0.1/tcp/0 --api 127.0.0.1:0 \
    --storage-quota 0 "${@:2}" > "$D/$1.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 400); do [ -f "$D/$1/api.json" ] && return; sleep 0.05; done
  echo "node $1 did not start"; exit 1
}
status() { "$BIN" status --data-dir "$D/$1" --json | python3 -c "import json,sys; print(json.load(sys.stdin)['$2'])"; }

head -c $((SIZE_MIB * 1048576)) /dev/urandom > "$D/src.bin"
start seed
SEED=$("$BIN" id --data-dir "$D/seed" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["addrs"][0])')
for i in $(seq "$N"); do start "d$i" --bootstrap "$SEED"; done
HASH=$("$BIN" share "$D/src.bin" --data-dir "$D/seed" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["hash"])')
BEFORE=$(status seed bytes_out)

t0=$(date +%s.%N)
GETS=()
for i in $(seq "$N"); do
  "$BIN" get "$HASH" -o "$D/out$i.bin" --data-dir "$D/d$i" > /dev/null &
  GETS+=($!)
done
for p in "${GETS[@]}"; do wait "$p"; done
t1=$(date +%s.%N)
for i in $(seq "$N"); do cmp -s "$D/src.bin" "$D/out$i.bin" || { echo "copy $i differs"; exit 1; }; done
AFTER=$(status seed bytes_out)
python3 - "$SIZE_MIB" "$N" "$t0" "$t1" "$BEFORE" "$AFTER" <<'PY'
import json, sys
size, n, t0, t1, before, after = int(sys.argv[1]), int(sys.argv[2]), *map(float, sys.argv[3:5]), int(sys.argv[5]), int(sys.argv[6])
up = (after - before) / (size * 1048576)
secs = t1 - t0
print(f"1 seeder -> {n} downloaders, {size} MiB each: all done in {secs:.1f} s "
      f"({n * size / secs:.0f} MiB/s delivered in total)")
print(f"seeder upload: {up:.2f} x the file size (target <= 3; without swarming it would be {n})")
print(json.dumps(dict(size_mib=size, downloaders=n, seconds=round(secs, 2), seeder_upload_x=round(up, 2))))
PY
