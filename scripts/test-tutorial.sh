#!/usr/bin/env bash
# README's "Your first task", run as written: the shell block between the
# `tutorial:begin` and `tutorial:end` markers runs in an empty directory
# outside this repository, with the release `wasmq` first on PATH, and must
# succeed; then its output is checked for what the README promises.
#
# Usage: scripts/test-tutorial.sh   (WASMQ_BIN to use another binary)
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)
WASMQ_BIN="${WASMQ_BIN:-${CARGO_TARGET_DIR:-$repo/target}/release/wasmq}"
[ -x "$WASMQ_BIN" ] || { echo "test-tutorial: $WASMQ_BIN missing: cargo build --release -p wasmq" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/wasmq-tutorial.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir "$work/bin"
ln -s "$WASMQ_BIN" "$work/bin/wasmq"

# The fenced block inside the markers, without the fences.
script=$(awk '
    /<!-- tutorial:begin -->/ { inside = 1; next }
    /<!-- tutorial:end -->/   { inside = 0 }
    inside && !/^```/         { print }
' README.md)
[ -n "$script" ] || { echo "test-tutorial: no tutorial block in README.md" >&2; exit 1; }

started=$(date +%s)
(
    cd "$work"
    export PATH="$work/bin:$PATH"
    unset DATABASE_URL
    # The tutorial's own cargo builds go to its own target directory, as
    # they would for a reader.
    unset CARGO_TARGET_DIR
    bash -euo pipefail -c "$script"
) >"$work/out.log" 2>&1 || {
    echo "test-tutorial: the tutorial failed; its output:" >&2
    cat "$work/out.log" >&2
    exit 1
}
for expected in '{"greeting":"Hello, Ada!"}' 'state     succeeded' '{"greeting":"Hello, Grace!"}' 'greeting Grace (attempt 1)'; do
    grep -qF "$expected" "$work/out.log" || {
        echo "test-tutorial: the output lacks $expected:" >&2
        cat "$work/out.log" >&2
        exit 1
    }
done
echo "test-tutorial: README's tutorial ran as written in $(( $(date +%s) - started )) s"
