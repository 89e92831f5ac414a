#!/usr/bin/env bash
# One-time set-up on a fresh machine with Rust installed: the WebAssembly
# target the task modules build for. Idempotent and quiet when done already.
set -euo pipefail

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  echo "setup: installing the wasm32-wasip2 target"
  rustup target add wasm32-wasip2
fi
