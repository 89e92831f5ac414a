#!/usr/bin/env bash
# `wasmq new` in every language, as a task author would use it: writes each
# project into a temporary directory outside this repository, builds it with
# the commands its README gives (after its native unit tests: `cargo test`,
# `make test` for Python and C, `npm test`), then runs the component with `wasmq run` and through a queue
# (`module push`, `task enqueue --wait`, as the README says) and checks its
# output and log line.
#
# No network beyond the package registries: JavaScript installs with
# `npm install --offline` from npm's cache, which scripts/setup.sh filled (the
# project's package-lock.json is the examples' one); the Python SDK's wheel
# is built with hatchling, which pip fetches from PyPI; Rust and the C adapter
# come from crates.io through cargo's cache.
#
# Usage: scripts/test-scaffold.sh [rust|python|js|c]...   (default: all)
# Uses the release binary ${WASMQ_BIN:-$CARGO_TARGET_DIR/release/wasmq} and
# componentize-py from ${WASMQ_VENV:-~/.cache/wasmq/venv}.
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)
WASMQ_BIN="${WASMQ_BIN:-${CARGO_TARGET_DIR:-$repo/target}/release/wasmq}"
VENV="${WASMQ_VENV:-$HOME/.cache/wasmq/venv}"
[ -x "$WASMQ_BIN" ] || { echo "test-scaffold: $WASMQ_BIN missing: cargo build --release -p wasmq" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/wasmq-scaffold.XXXXXX")
worker=
cleanup() {
    [ -z "$worker" ] || kill "$worker" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
case "$work/" in
    "$repo"/*) echo "test-scaffold: $work is inside the repository" >&2; exit 1 ;;
esac
# The queue the READMEs push to and enqueue on, and a worker serving it.
export DATABASE_URL="sqlite://$work/wasmq.db"
"$WASMQ_BIN" migrate >/dev/null
"$WASMQ_BIN" worker >"$work/worker.log" 2>&1 &
worker=$!

# The project's own build, run in its directory.
build_rust() {
    cargo test --quiet
    cargo build --quiet --release --target wasm32-wasip2
}
# Python, JavaScript and C first run their native unit tests (test_app.py,
# task.test.mjs, test_task.c, under the SDK's test context), as their READMEs
# say, and must show that tests ran (Python 3.11's unittest exits 0 when it
# finds none).
#
# Python and JavaScript use the SDK as a package, installed as their READMEs
# say: a wheel built from guest-sdk/python, pip-installed into a fresh venv
# (`make sdk`), and a tarball `npm pack`ed from guest-sdk/js, `npm install`ed
# (offline, from npm's cache, with the examples' lock file). No copy of the
# SDK may be in the project.
build_python() {
    make --quiet sdk >/dev/null
    [ ! -e wasmq ] && compgen -G 'dist/wasmq_guest-*-py3-none-any.whl' >/dev/null ||
        { echo "test-scaffold: python: no SDK wheel in dist/, or a copy of the SDK in the project" >&2; return 1; }
    .venv/bin/python -c 'import sys, wasmq; sys.exit(not wasmq.__file__.startswith(sys.prefix + "/"))' ||
        { echo "test-scaffold: python: wasmq is not imported from the project's venv" >&2; return 1; }
    local log
    log=$(make --quiet test 2>&1) && grep -q '^Ran [1-9]' <<<"$log" ||
        { echo "$log" >&2; echo "test-scaffold: python: unit tests failed or none ran" >&2; return 1; }
    make --quiet COMPONENTIZE_PY="$VENV/bin/componentize-py" >/dev/null
}
build_js() {
    local tarball
    tarball=$(npm pack --silent "$repo/guest-sdk/js")
    npm install --offline --no-audit --no-fund --loglevel=error "./$tarball" >/dev/null
    [ ! -e wasmq.js ] && grep -qF "\"wasmq-guest\": \"file:$tarball\"" package.json ||
        { echo "test-scaffold: js: $tarball not installed as a dependency, or a copy of the SDK in the project" >&2; return 1; }
    # What the lock file now holds installs again.
    npm ci --offline --no-audit --no-fund --loglevel=error >/dev/null
    local log
    log=$(npm test --silent 2>&1) && grep -q '^# pass [1-9]' <<<"$log" ||
        { echo "$log" >&2; echo "test-scaffold: js: unit tests failed or none ran" >&2; return 1; }
    npm run --silent build >/dev/null
}
build_c() {
    local log
    log=$(make --quiet test 2>&1) && grep -q '^test_task: [1-9][0-9]* runs, [1-9][0-9]* checks, all passed$' <<<"$log" ||
        { echo "$log" >&2; echo "test-scaffold: c: unit tests failed or none ran" >&2; return 1; }
    make --quiet >/dev/null
}

check() { # LANG
    local lang=$1 name="greet-$1" start=$SECONDS
    local dir="$work/$name"
    "$WASMQ_BIN" new "$name" --lang "$lang" --path "$dir" --sdk "$repo" >/dev/null
    # Rust builds into the project's own target/, as its README says.
    (cd "$dir" && unset CARGO_TARGET_DIR CARGO_BUILD_TARGET_DIR && "build_$lang")
    local wasm
    case "$lang" in
        rust) wasm="$dir/target/wasm32-wasip2/release/${name//-/_}.wasm" ;;
        *) wasm="$dir/$name.wasm" ;;
    esac
    # The README names the component the build wrote.
    local line
    for line in "wasmq run ${wasm#"$dir/"} " "wasmq module push ${wasm#"$dir/"} --name $name"; do
        grep -qF "$line" "$dir/README.md" ||
            { echo "test-scaffold: $lang: README.md lacks \`$line\`" >&2; return 1; }
    done

    local out report
    out=$("$WASMQ_BIN" run "$wasm" --input '{"name":"Ada"}')
    [ "$out" = '{"greeting":"Hello, Ada!"}' ] ||
        { echo "test-scaffold: $lang: unexpected output $out" >&2; return 1; }
    report=$("$WASMQ_BIN" run "$wasm" --json --input '{"name":"Ada"}')
    grep -q '"message": "greeting Ada' <<<"$report" ||
        { echo "test-scaffold: $lang: no log line in $report" >&2; return 1; }
    local code=0
    "$WASMQ_BIN" run "$wasm" --input '{}' >/dev/null 2>&1 || code=$?
    [ "$code" = 12 ] ||
        { echo "test-scaffold: $lang: {} exited $code, expected 12 (invalid-input)" >&2; return 1; }

    "$WASMQ_BIN" module push "$wasm" --name "$name" >/dev/null
    out=$(timeout 120 "$WASMQ_BIN" task enqueue "$name" --input '{"name":"Ada"}' --wait 2>/dev/null)
    [ "$out" = '{"greeting":"Hello, Ada!"}' ] ||
        { echo "test-scaffold: $lang: unexpected queued result $out" >&2; cat "$work/worker.log" >&2; return 1; }
    printf 'test-scaffold: %-6s ok  %s  (%d s, %s bytes)\n' \
        "$lang" "$out" $((SECONDS - start)) "$(wc -c <"$wasm")"
    [ "$lang" != rust ] || check_cargo_component "$dir" "$name"
}

# The Rust project built the other way its README gives, with cargo-component
# (scripts/setup.sh installs it): a wasm32-wasip1 module made a component
# with the preview-1 adapter, which must run the same.
check_cargo_component() { # DIR NAME
    local dir=$1 name=$2 start=$SECONDS
    (cd "$dir" && unset CARGO_TARGET_DIR CARGO_BUILD_TARGET_DIR &&
        cargo component build --quiet --release >/dev/null)
    local wasm="$dir/target/wasm32-wasip1/release/${name//-/_}.wasm" out
    out=$("$WASMQ_BIN" run "$wasm" --input '{"name":"Ada"}')
    [ "$out" = '{"greeting":"Hello, Ada!"}' ] ||
        { echo "test-scaffold: cargo component: unexpected output $out" >&2; return 1; }
    printf 'test-scaffold: %-6s ok  %s  (cargo component build, %d s, %s bytes)\n' \
        rust "$out" $((SECONDS - start)) "$(wc -c <"$wasm")"
}

# A name that is not a module name, and a directory that is not empty, are refused.
code=0
"$WASMQ_BIN" new Not_Valid --lang rust --path "$work/bad" 2>/dev/null || code=$?
[ "$code" = 2 ] || { echo "test-scaffold: a bad name exited $code, expected 2" >&2; exit 1; }
mkdir "$work/full" && touch "$work/full/file"
code=0
"$WASMQ_BIN" new full --lang c --path "$work/full" --sdk "$repo" 2>/dev/null || code=$?
[ "$code" = 2 ] || { echo "test-scaffold: a non-empty directory exited $code, expected 2" >&2; exit 1; }

langs=("$@")
[ ${#langs[@]} -gt 0 ] || langs=(c python js rust)
for lang in "${langs[@]}"; do
    case "$lang" in
        rust | python | js | c) check "$lang" ;;
        *) echo "test-scaffold: unknown language \`$lang\` (rust, python, js, c)" >&2; exit 2 ;;
    esac
done
echo "test-scaffold: ${langs[*]} built and ran in $SECONDS s"
