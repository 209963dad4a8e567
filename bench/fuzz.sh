#!/usr/bin/env bash
# Long fuzzing run of every decoder of network input (hardening issue 20): the proptest
# properties of each crate's tests/fuzz_decoders.rs (mutated valid frames, random bytes,
# hostile length prefixes; no panic, allocation bounded, round trips), with many more cases than
# CI's 256 per property.
#
# Crates: agora-chat, agora-files, agora-ledger, agora-consensus-net, agora-net, agora-grid.
# Runtime on 2 cores with the default CASES=100000: about 10 minutes after the build
# (roughly chat 2, files 2, ledger 1, consensus-net 0.5, net 4.5 minutes), never more than
# TIME_PER_CRATE seconds (default 900) per crate. A crate that runs out of time is reported
# as such (its properties passed as far as they got) and does not fail the run; a property
# that fails prints its minimal input and fails the run: add it to that file as a named
# regression test (byte literal) and fix the decoder.
#
# It builds the test profile on purpose: integer overflow checks and debug assertions stay on
# (release turns them off, and an overflow is exactly what fuzzing should find); dependencies
# are built with opt-level 1 (workspace profile). PROFILE=release trades that for speed.
#
# Usage: bench/fuzz.sh [crate...]   (CASES=100000 TIME_PER_CRATE=900 PROFILE=dev)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/agora-target}
CASES=${CASES:-100000}
TIME_PER_CRATE=${TIME_PER_CRATE:-900}
PROFILE=${PROFILE:-dev}
crates=("$@")
[ ${#crates[@]} -gt 0 ] || crates=(agora-chat agora-files agora-ledger agora-consensus-net agora-net agora-grid)
profile_flag=()
[ "$PROFILE" = release ] && profile_flag=(--release)

for c in "${crates[@]}"; do
  cargo test -q -p "$c" --test fuzz_decoders "${profile_flag[@]}" --no-run
done

failed=() timed_out=()
for c in "${crates[@]}"; do
  echo "== $c: $CASES cases per property, at most ${TIME_PER_CRATE}s"
  start=$(date +%s)
  set +e
  PROPTEST_CASES=$CASES timeout --signal=INT --kill-after=30 "$TIME_PER_CRATE" \
    cargo test -q -p "$c" --test fuzz_decoders "${profile_flag[@]}" -- --test-threads=2
  rc=$?
  set -e
  echo "== $c: exit $rc after $(( $(date +%s) - start ))s"
  case $rc in
    0) ;;
    124|130|137) timed_out+=("$c") ;;
    *) failed+=("$c") ;;
  esac
done

[ ${#timed_out[@]} -eq 0 ] || echo "ran out of time (no failure so far): ${timed_out[*]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]} (minimal inputs above)"
  exit 1
fi
if [ ${#timed_out[@]} -eq 0 ]; then
  echo "all decoders held for $CASES cases per property"
else
  echo "no failures; the crates above stopped before $CASES cases"
fi
