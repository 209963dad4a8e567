#!/usr/bin/env bash
# Grid throughput on a 4-node loopback network, against the machine's own limit, in one run:
#   ideal = native units/s (the same C program compiled for this machine, one core)
#           x cores / R  (every unit runs R times)
#   ratio = validated units/s of `agora grid run` / ideal          (target >= 0.7)
# and the scheduling overhead per unit for tiny units (an echo of a few bytes: the whole cost
# of fetch, run, commit, reveal and quorum), in ms of wall time per validated unit.
# Usage: bench/grid.sh [path/to/agora] [UNITS] [REF_LEN]
#   default target/release/agora, 16 units of a 65,536-letter reference chunk and 16 queries.
# Starts 4 nodes on 127.0.0.1 (node 1 submits; nodes 2-4 work with --grid-cpus 1) and stops
# them (by pid) at the end. The last line is JSON.
set -euo pipefail
BIN=${1:-target/release/agora}; UNITS=${2:-16}; REF=${3:-65536}
R=2; CORES=$(nproc)
D=$(mktemp -d)
trap 'for f in $D/*.pid; do kill $(cat $f) 2>/dev/null || true; done; sleep 1; rm -rf $D' EXIT
now() { date +%s%N; }
HERE=$(cd "$(dirname "$0")/.." && pwd)

"$HERE/workloads/genome/build.sh" $D/bin >/dev/null
$D/bin/gen 11 $UNITS $D/units $REF 16 256 >/dev/null

# Native, one core, every unit once.
t0=$(now)
for f in $D/units/*.fa; do $D/bin/align < $f > /dev/null; done
t1=$(now)
NATIVE_S=$(python3 -c "print(($t1-$t0)/1e9)")
echo "native: $UNITS units in ${NATIVE_S}s on one core"

for i in 1 2 3 4; do
  extra=""; [ $i -gt 1 ] && extra="--grid-cpus 1"
  $BIN up --data-dir $D/n$i --listen /ip4/127.0.0.1/tcp/0 --api 127.0.0.1:0 $extra >$D/n$i.log 2>&1 &
  echo $! > $D/n$i.pid
done
for i in 1 2 3 4; do for _ in $(seq 2000); do [ -f $D/n$i/api.json ] && break; sleep 0.005; done; done
A=$($BIN id --data-dir $D/n1 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["addrs"][0])')
for i in 2 3 4; do $BIN connect $A --data-dir $D/n$i >/dev/null; done
sleep 2

# Warm-up (compiles the module into each worker's cache), then the measured run.
mkdir -p $D/warm && cp $D/units/unit-000.fa $D/warm/
$BIN grid run $D/bin/align.wasm --inputs $D/warm --fuel 1000000000000 --data-dir $D/n1 >/dev/null
t0=$(now)
$BIN grid run $D/bin/align.wasm --inputs $D/units --replicas $R --fuel 1000000000000 --data-dir $D/n1 --json > $D/run.json
t1=$(now)
GRID_S=$(python3 -c "print(($t1-$t0)/1e9)")
echo "grid: $UNITS units (R=$R) in ${GRID_S}s on 3 workers sharing $CORES cores"

# Tiny units: the scheduling overhead.
TINY=${TINY:-200}
mkdir -p $D/tiny
for i in $(seq 1 $TINY); do echo "unit $i" > $D/tiny/u$i.txt; done
cat > $D/echo.wat <<'WAT'
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 1024))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 16) (i32.const 1024))
    (i32.store (i32.const 20) (i32.load (i32.const 8)))
    (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))))
WAT
t0=$(now)
$BIN grid run $D/echo.wat --inputs $D/tiny --replicas $R --data-dir $D/n1 --json > $D/tiny.json
t1=$(now)
TINY_S=$(python3 -c "print(($t1-$t0)/1e9)")
echo "tiny: $TINY units (R=$R) in ${TINY_S}s"

python3 - "$UNITS" "$NATIVE_S" "$GRID_S" "$CORES" "$R" "$TINY" "$TINY_S" $D/run.json $D/tiny.json <<'PY'
import json, sys
units, native_s, grid_s, cores, r, tiny, tiny_s = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7])
run = json.load(open(sys.argv[8])); t = json.load(open(sys.argv[9]))
assert run["validated"] == units and t["validated"] == tiny, (run["validated"], t["validated"])
native_rate = units / native_s
ideal = native_rate * cores / r
measured = units / grid_s
fuel = [u["fuel"] for u in run["results"]]
out = dict(units=units, replicas=r, cores=cores,
           native_units_per_s=round(native_rate, 3), ideal_units_per_s=round(ideal, 3),
           grid_units_per_s=round(measured, 3), ratio_to_ideal=round(measured / ideal, 3),
           fuel_per_unit=sum(fuel) // len(fuel),
           tiny_units=tiny, tiny_ms_per_unit=round(tiny_s * 1000 / tiny, 2))
print(f"ratio to ideal {out['ratio_to_ideal']} (target >= 0.7); tiny units {out['tiny_ms_per_unit']} ms each")
print(json.dumps(out))
PY
