#!/usr/bin/env bash
# Builds the genome workload into OUT_DIR:
#   align.wasm, nan.wasm   WASI preview-1 commands (clang --target=wasm32-wasi -O2, stripped)
#   align, gen, nan        native (cc -O2)
# Idempotent: an output newer than its source and this script is kept as is.
# Environment: CC (native compiler, default cc), CLANG (default clang), WASI_SYSROOT (a WASI
# sysroot when clang does not find one itself; Debian's wasi-libc is found without it).
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi
src=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=$1
mkdir -p "$out"
out=$(cd "$out" && pwd)
CC=${CC:-cc}
CLANG=${CLANG:-clang}
PACKAGES="clang lld wasi-libc libclang-rt-dev-wasm32"

missing() {
    echo "build.sh: $1" >&2
    echo "build.sh: the wasm toolchain is missing; on Debian/Ubuntu: sudo apt-get install $PACKAGES" >&2
    exit 1
}

wasm_flags=(--target=wasm32-wasi -O2 -std=c11 -Wall -Wextra -s)
if [ -n "${WASI_SYSROOT:-}" ]; then
    wasm_flags+=(--sysroot="$WASI_SYSROOT")
fi
native_flags=(-O2 -std=c11 -Wall -Wextra)

# True if $1 is missing or older than any of the other arguments.
stale() {
    local target=$1
    shift
    [ -e "$target" ] || return 0
    for dep in "$@"; do
        [ "$dep" -nt "$target" ] && return 0
    done
    return 1
}

# build TARGET SOURCE LIBS COMPILER FLAGS... : compile into a temporary file, then rename, so
# a reader never sees half a binary. LIBS (one word, may be empty) goes after the source.
build() {
    local target=$out/$1 source=$src/$2 libs=$3
    shift 3
    stale "$target" "$source" "$src/build.sh" || return 0
    local tmp
    tmp=$(mktemp "$target.XXXXXX")
    # shellcheck disable=SC2086 # LIBS is one word or none
    if ! "$@" "$source" $libs -o "$tmp"; then
        rm -f "$tmp"
        echo "build.sh: compiling $source failed" >&2
        exit 1
    fi
    chmod 755 "$tmp"
    mv -f "$tmp" "$target"
}

# Native first: it needs only a C compiler.
command -v "$CC" >/dev/null || { echo "build.sh: no C compiler '$CC' (set CC)" >&2; exit 1; }
build align align.c "" "$CC" "${native_flags[@]}"
build gen gen.c "" "$CC" "${native_flags[@]}"
build nan nan.c -lm "$CC" "${native_flags[@]}"

# The wasm toolchain: clang, wasm-ld (lld), the WASI libc and clang's wasm32 builtins. A tiny
# probe tells which part is missing before the real builds.
if stale "$out/align.wasm" "$src/align.c" "$src/build.sh" \
    || stale "$out/nan.wasm" "$src/nan.c" "$src/build.sh"; then
    command -v "$CLANG" >/dev/null || missing "no '$CLANG' on the PATH (package clang)"
    probe_dir=$(mktemp -d)
    trap 'rm -rf "$probe_dir"' EXIT
    printf '#include <stdio.h>\nint main(void){double x=0.5;printf("%%g\\n",x*x);return 0;}\n' \
        >"$probe_dir/probe.c"
    if ! "$CLANG" "${wasm_flags[@]}" "$probe_dir/probe.c" -o "$probe_dir/probe.wasm" \
        2>"$probe_dir/err"; then
        cat "$probe_dir/err" >&2
        if grep -q "stdio.h" "$probe_dir/err"; then
            missing "clang finds no WASI libc headers (package wasi-libc, or set WASI_SYSROOT)"
        elif grep -q "wasm-ld" "$probe_dir/err"; then
            missing "clang finds no wasm-ld linker (package lld)"
        elif grep -q "libclang_rt\|builtins" "$probe_dir/err"; then
            missing "clang finds no wasm32 compiler-rt builtins (package libclang-rt-dev-wasm32)"
        else
            missing "clang cannot link a wasm32-wasi program"
        fi
    fi
    build align.wasm align.c "" "$CLANG" "${wasm_flags[@]}"
    build nan.wasm nan.c "" "$CLANG" "${wasm_flags[@]}"
fi
echo "built into $out: align.wasm nan.wasm align gen nan"
