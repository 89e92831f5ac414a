#!/usr/bin/env bash
# The main job on the embedded default (a SQLite file, an in-process worker):
# builds wasmq and the example task modules, pushes the modules, enqueues a
# mix of tasks (some succeed, one fails, one retries and succeeds, some are
# cut by their limits), drains the queue with one worker, and prints a summary.
set -euo pipefail
cd "$(dirname "$0")/.."

# Only what the demo runs: the Rust examples and wasmq itself.
scripts/setup.sh --rust-only
scripts/build-examples.sh rust >/dev/null
cargo build --release --locked -p wasmq
WASMQ=${CARGO_TARGET_DIR:-$PWD/target}/release/wasmq
EX=$PWD/examples/target/wasm32-wasip2/release

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export DATABASE_URL="sqlite://$work/demo.db"
export WASMQ_CACHE_DIR="$work/cache"
export WASMQ_LOG="${WASMQ_LOG:-warn}"

echo "== pushing modules"
for m in hello add fib flaky sleepy spin hog panicky escape; do
  "$WASMQ" module push "$EX/$m.wasm" --name "$m"
done

echo "== enqueueing"
q() { "$WASMQ" task enqueue --queue demo "$@" >/dev/null; }
q hello   --input '{"name":"Ada"}'
q add     --input '{"a":2,"b":40}'
q fib     --input '{"n":50000000}' --priority 10
q flaky   --input '{"succeed_on_attempt":3}' --max-attempts 5
q panicky --input '{"message":"boom"}' --max-attempts 2
q spin    --fuel 200000000
q hog     --memory 32MiB
q sleepy  --input '{"ms":5000}' --timeout 300ms --max-attempts 2
q escape
q hello   --input '{"wrong":"field"}'
q sleepy  --input '{"ms":200}' --delay 1s
# A bulk of small tasks, for a throughput figure.
for i in $(seq 1 5000); do echo "{\"name\":\"bulk $i\"}"; done >"$work/bulk.jsonl"
"$WASMQ" task enqueue-batch hello "$work/bulk.jsonl" --queue bulk >/dev/null

# The bulk alone first, so that its tasks/s is the drain rate and not the
# waits of the demo's delayed and retried tasks; default worker flags.
echo "== draining the 5,000 bulk tasks with one worker (default flags)"
"$WASMQ" worker --queues bulk --exit-when-idle

echo "== draining the demo queue (retries and delays included)"
"$WASMQ" worker --queues demo --exit-when-idle --backoff-base 100ms

echo "== summary (queue demo)"
"$WASMQ" task list --queue demo
