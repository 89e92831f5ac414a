#!/usr/bin/env bash
# One-time set-up on a fresh machine with Rust installed: the WebAssembly
# target the task modules build for. Idempotent and quiet when done already.
set -euo pipefail

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  echo "setup: installing the wasm32-wasip2 target"
  rustup target add wasm32-wasip2
fi

# Debian packages the tests use: promtool (package prometheus) checks the
# /metrics format; chromium and chromium-driver drive the dashboard test.
missing=()
for pkg in prometheus chromium chromium-driver; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
fi
