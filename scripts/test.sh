#!/usr/bin/env bash
# The whole test suite: builds the example task modules, then runs every unit,
# integration and end-to-end test against release builds (wasmtime is too slow
# unoptimised), then the Python client and its Django backend against the
# release binary (scripts/test-python.sh), then the projects `wasmq new` writes
# (scripts/test-scaffold.sh), then fuzzes the parsers of untrusted input for a bounded time. Needs PostgreSQL on 127.0.0.1:5432 (WASMQ_TEST_PG_URL to
# override); with CI=true a missing database fails the run instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/build-examples.sh
cargo test --release --workspace --locked "$@"
# Task logic tested natively through wasmq_guest::testing, as a task author
# would (no host, no WebAssembly).
cargo test --locked --manifest-path examples/Cargo.toml -p flaky -p sleepy
# The Python and JavaScript SDKs' own logic, run natively against stand-ins
# for the host's imports (no host, no WebAssembly).
PYTHONDONTWRITEBYTECODE=1 python3 -m unittest discover -s guest-sdk/python/tests -q
node --import ./guest-sdk/js/tests/register.mjs --test guest-sdk/js/tests/
# wasmq-testing.js as a task's own tests load it: with no host stand-ins at all.
node --test guest-sdk/js/tests/testing.test.mjs
# The C test context (guest-sdk/c/wasmq_testing.c), compiled natively with
# the sanitizers against the generated task.h, under its own test task.
(
    gen=$(mktemp -d)
    trap 'rm -rf "$gen"' EXIT
    wit-bindgen c wit --world task --out-dir "$gen" 2>/dev/null
    cc -g -Wall -Wextra -Werror -Wno-unused-parameter -fsanitize=address,undefined -I "$gen" -I guest-sdk/c \
        guest-sdk/c/tests/test_testing.c guest-sdk/c/wasmq.c guest-sdk/c/wasmq_testing.c -o "$gen/test_testing"
    "$gen/test_testing"
    # It stands in for every function task.h declares but the task's export.
    cc -c -I "$gen" -I guest-sdk/c guest-sdk/c/wasmq_testing.c -o "$gen/wasmq_testing.o"
    missing=$(comm -23 \
        <(grep -v '^ *//' "$gen/task.h" | grep -oE '\b[a-z][a-z0-9_]*\(' | tr -d '(' | grep -vx exports_task_run | sort -u) \
        <(nm --defined-only "$gen/wasmq_testing.o" | awk '$2 == "T" { print $3 }' | sort -u))
    [ -z "$missing" ] || { echo "test: guest-sdk/c/wasmq_testing.c lacks" $missing >&2; exit 1; }
)
# The Rust SDK packages as it would be published, its WIT inside.
cargo package --locked --allow-dirty -p wasmq-guest
scripts/test-python.sh
# `wasmq new` in every language: each project built outside the repository with
# its own tools (the Python and JavaScript SDKs installed as packages), its
# native unit tests run, each component run (about 2 minutes).
scripts/test-scaffold.sh
# README's "Your first task", run as written.
scripts/test-tutorial.sh
scripts/fuzz.sh
