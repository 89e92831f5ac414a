#!/usr/bin/env bash
# Builds every example task (and the test fixtures built alongside them) as
# WebAssembly components, then lists the artifacts.
#
# Usage: scripts/build-examples.sh    (from any directory)
set -euo pipefail

cd "$(dirname "$0")/.."

RUST_TARGET=wasm32-wasip2

# Rust tasks: one cargo workspace, examples/Cargo.toml.
build_rust() {
    if ! rustup target list --installed 2>/dev/null | grep -qx "$RUST_TARGET"; then
        rustup target add "$RUST_TARGET" >/dev/null 2>&1
    fi
    cargo build --release --target "$RUST_TARGET" \
        --manifest-path examples/Cargo.toml --workspace \
        --target-dir examples/target

    local out="examples/target/$RUST_TARGET/release"
    local wasm
    for wasm in "$out"/*.wasm; do
        printf '%8s  %s\n' "$(wc -c <"$wasm")" "$wasm"
    done
}

build_rust
