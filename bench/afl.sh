#!/usr/bin/env bash
# Coverage-guided fuzzing of every decoder of network input with AFL++ (hardening issue 20),
# beside the proptest runs of bench/fuzz.sh. Targets (fuzz/afl/src/bin, one per decoder
# family; the first input byte picks the frame type, the rest is the frame):
#   chat    agora_chat::wire::*::decode, every Frame type, then verify / open
#   files   agora_files::wire::decode of blob, search and replicate frames, Collection::parse,
#           Ticket::decode
#   ledger  Tx, Block, Approval, BlockMsg decoders and service::wire Request/Response/Announcement
#   net     agora_net::read_frame_with_limit over a cursor or a trickling reader
# A target panics (an AFL crash) on a decoder panic, on memory held past the proptest files'
# bound, or when what decodes does not re-encode to an equal value.
#
# Runtime: the instrumented release build (its own target dir; 11 minutes from cold on 2
# busy cores, seconds when warm), then SECONDS_PER_TARGET of fuzzing per target, one target at
# a time (plus calibration, a few seconds): about 21 minutes for the four targets with the
# default 300 s, 8.5 minutes with 120 s (seen: chat 11k, files 16k, ledger 22k, net 54k
# execs/s on one core). Each afl-fuzz stops by itself (-V) and is killed by `timeout` 120 s
# later if it has not; Ctrl-C or a kill of this script stops the running one.
#
# Needs: cargo-afl, which builds AFL++ from its bundled sources when installed (gcc, make):
#   cargo install cargo-afl --locked --version 0.18.2
# (stable Rust is enough: without AFL++'s LLVM plugins, cargo-afl instruments with rustc's
# own SanitizerCoverage). Nothing in /proc or /sys is changed: AFL_SKIP_CPUFREQ and
# AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES skip the checks that would ask for it.
#
# Seeds: fuzz/afl/seeds/<target>/ (valid encodings; the build also makes the binary that
# regenerates them: $AFL_TARGET_DIR/<host triple>/release/seeds). Output:
# fuzz/afl/out/<target>/ (not committed), replaced each run unless RESUME=1, which goes on
# from the last run's queue.
# A crash is listed with the command that reproduces and minimises it: add the minimal input
# to crates/<crate>/tests/fuzz_decoders.rs as a named regression test and fix the decoder.
# Exit status: 1 if any target crashed (or afl-fuzz did not start), 0 otherwise.
#
# Usage: bench/afl.sh [target...]   (SECONDS_PER_TARGET=300 RESUME=0
#                                    AFL_TARGET_DIR=/var/tmp/agora-afl-target)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
fuzz_dir=$root/fuzz/afl
SECONDS_PER_TARGET=${SECONDS_PER_TARGET:-300}
RESUME=${RESUME:-0}
# Never the workspace's target dir: instrumented builds would thrash it.
export CARGO_TARGET_DIR=${AFL_TARGET_DIR:-/var/tmp/agora-afl-target}
out_root=$fuzz_dir/out
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(chat files ledger net)

if ! command -v cargo-afl >/dev/null; then
  echo "cargo-afl is not installed: cargo install cargo-afl --locked --version 0.18.2" >&2
  exit 2
fi
# cargo-afl builds AFL++ when installed; build it here if that did not happen.
if ! config=$(cargo afl config --build 2>&1) && ! grep -q "already built" <<<"$config"; then
  echo "$config" >&2
  echo "could not build AFL++ (cargo afl config --build)" >&2
  exit 2
fi

# An explicit --target keeps cargo-afl's RUSTFLAGS (instrumentation, opt-level 3, one codegen
# unit) off build scripts and proc macros, which then build as plain release host code.
host=$(rustc -vV | sed -n 's/^host: //p')
echo "== building the targets (cargo afl build --release --target $host, $CARGO_TARGET_DIR)"
(cd "$fuzz_dir" && cargo afl build --release --target "$host" --bins)
bin=$CARGO_TARGET_DIR/$host/release

export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1
# Others build on the same cores: do not insist on a core of one's own.
export AFL_NO_AFFINITY=1
[ "$RESUME" = 1 ] && export AFL_AUTORESUME=1

running=
stop() {
  # `timeout` signals its whole process group: afl-fuzz and the target it forked.
  [ -n "$running" ] && kill -TERM "$running" 2>/dev/null && wait "$running" 2>/dev/null
  running=
}
trap 'stop; exit 130' INT TERM
trap stop EXIT

stat() { sed -n "s/^$1 *: *//p" "$2" 2>/dev/null; }

crashed=()
for t in "${targets[@]}"; do
  out=$out_root/$t
  [ "$RESUME" = 1 ] || rm -rf "$out"
  mkdir -p "$out"
  echo "== $t: ${SECONDS_PER_TARGET}s of AFL++ (log: $out/afl.log)"
  timeout --kill-after=30 $((SECONDS_PER_TARGET + 120)) \
    cargo afl fuzz -V "$SECONDS_PER_TARGET" -i "$fuzz_dir/seeds/$t" -o "$out" -- "$bin/$t" \
    >"$out/afl.log" 2>&1 &
  running=$!
  set +e
  wait "$running"
  rc=$?
  set -e
  running=
  # Without its screen afl-fuzz logs a line per test case fuzzed: keep the rest.
  grep -v "Fuzzing test case" "$out/afl.log" >"$out/afl.log.short" || true
  mv "$out/afl.log.short" "$out/afl.log"
  stats=$out/default/fuzzer_stats
  if [ ! -f "$stats" ]; then
    echo "== $t: afl-fuzz did not start (exit $rc); the end of its log:"
    tail -n 30 "$out/afl.log"
    crashed+=("$t(no-start)")
    continue
  fi
  echo "== $t: exit $rc; $(stat execs_done "$stats") execs, $(stat execs_per_sec "$stats")/s" \
    "on average, corpus $(stat corpus_count "$stats"), edges $(stat edges_found "$stats")" \
    "of $(stat total_edges "$stats") ($(stat bitmap_cvg "$stats")), stability" \
    "$(stat stability "$stats"), crashes $(stat saved_crashes "$stats")," \
    "hangs $(stat saved_hangs "$stats")"
  shopt -s nullglob
  crashes=("$out"/default/crashes/id:*)
  hangs=("$out"/default/hangs/id:*)
  shopt -u nullglob
  for c in "${crashes[@]}"; do
    echo "   crash: $bin/$t < '$c'"
    echo "     minimise: cargo afl tmin -i '$c' -o /tmp/$t.min -- $bin/$t"
  done
  for h in "${hangs[@]}"; do
    echo "   hang:  timeout 10 $bin/$t < '$h'"
  done
  [ ${#crashes[@]} -eq 0 ] || crashed+=("$t")
done

if [ ${#crashed[@]} -gt 0 ]; then
  echo "CRASHED: ${crashed[*]} (inputs and commands above)"
  exit 1
fi
echo "no crashes in ${targets[*]} (${SECONDS_PER_TARGET}s each)"
