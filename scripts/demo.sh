#!/usr/bin/env bash
# The main job on the embedded default: builds wasmq and the example task
# modules, then runs each example once through `wasmq run`.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/build-examples.sh >/dev/null
cargo build --release --locked -p wasmq
WASMQ=target/release/wasmq
EX=examples/target/wasm32-wasip2/release

demo() {
  local name=$1; shift
  printf '\n$ wasmq run %s %s\n' "$name.wasm" "$*"
  local code=0
  "$WASMQ" run "$EX/$name.wasm" "$@" || code=$?
  echo "(exit code $code)"
}

demo hello --input '{"name":"Ada"}'
demo add --input '{"a":2,"b":40}'
demo fib --input '{"n":1000000}'
demo flaky --input '{"succeed_on_attempt":2}'
demo sleepy --input '{"ms":2000}' --timeout 200ms
demo spin --fuel 100000000
demo hog --memory 32MiB
demo panicky --input '{"message":"boom"}'
demo escape
