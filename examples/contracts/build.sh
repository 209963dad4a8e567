#!/usr/bin/env bash
# Builds the example contracts to OUT_DIR (default: ./out) with Debian's clang and wasm-ld.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/out}"
mkdir -p "$out"
for c in token escrow registry; do
  clang --target=wasm32 -O2 -nostdlib -mbulk-memory -I "$here/../../sdk/c" \
    -Wl,--no-entry -Wl,--allow-undefined -Wl,--strip-all \
    -o "$out/$c.wasm" "$here/$c.c"
done
ls -l "$out"/*.wasm
