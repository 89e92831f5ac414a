#!/usr/bin/env bash
# Builds every example task in every language (and the test fixtures built
# alongside them) as WebAssembly components, then lists the artifacts.
#
#   Rust        examples/target/wasm32-wasip2/release/NAME.wasm   (cargo)
#   Python      examples/target/wasm/python-NAME.wasm             (componentize-py)
#               examples/target/wasm/django-NAME.wasm             (the Django example's tasks)
#   JavaScript  examples/target/wasm/js-NAME.wasm                 (componentize-js)
#   C           examples/target/wasm/c-NAME.wasm                  (clang, wit-bindgen, wasm-tools)
#
# Python and JavaScript builds take 10-25 s each, so a component is rebuilt
# only when one of its inputs changed (its sources, the SDK but not its unit
# tests, the WIT, the tool's version): a `.inputs` file next to it records
# their hash.
#
# Usage: scripts/build-examples.sh [rust|python|js|c]...   (default: all; from any directory)
# The tools come from scripts/setup.sh.
set -euo pipefail

cd "$(dirname "$0")/.."

RUST_TARGET=wasm32-wasip2
OUT=examples/target/wasm
VENV="${WASMQ_VENV:-$HOME/.cache/wasmq/venv}"
# Keep in step with scripts/setup.sh.
WASI_ADAPTER_VERSION=48.0.8

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

# up_to_date OUTPUT TOOL-VERSION INPUT...: true when OUTPUT exists and was
# built from exactly these inputs; otherwise records what the caller is about
# to build from, in "$stamp_next", for `stamp` to commit after a success.
up_to_date() {
    local output=$1 version=$2
    shift 2
    stamp_next=$(
        {
            echo "$version"
            find "$@" -type f -not -name '*.md' -not -path '*/node_modules/*' -not -path '*/__pycache__/*' \
                -not -path 'guest-sdk/*/tests/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
        } | sha256sum | cut -d' ' -f1
    )
    [ -f "$output" ] && [ "$(cat "$output.inputs" 2>/dev/null)" = "$stamp_next" ]
}

stamp() { echo "$stamp_next" >"$1.inputs"; }

report() { printf '%8s  %s%s\n' "$(wc -c <"$1")" "$1" "${2:-}"; }

# The world an example is built with (wit/task.wit, wit/granted.wit): `task`,
# unless it uses what the operator grants its module. Python's `fetch` needs
# `http-task` (wasi:config for its secret, wasi:http for wasmq.http);
# JavaScript's `granted-task` (wasi:config), since componentize-js brings
# the wasi:http imports of its own `fetch`.
world_of() {
    case "$1/$2" in
        python/fetch) echo http-task ;;
        js/fetch) echo granted-task ;;
        *) echo task ;;
    esac
}

# The componentize-js features a JavaScript example leaves out: `http`
# (StarlingMonkey's fetch, on wasi:http imports) and `fetch-event` (an
# incoming-handler export) for all but `fetch`, which keeps `http`.
js_disabled() {
    case "$1" in
        fetch) echo fetch-event ;;
        *) echo http fetch-event ;;
    esac
}

# Python tasks: examples/python/NAME/app.py with the SDK in guest-sdk/python.
build_python() {
    local cpy="$VENV/bin/componentize-py"
    [ -x "$cpy" ] || { echo "build-examples: $cpy missing: run scripts/setup.sh" >&2; return 1; }
    local version dir name output world
    version=$("$cpy" --version)
    for dir in examples/python/*/; do
        name=$(basename "$dir")
        output="$OUT/python-$name.wasm"
        world=$(world_of python "$name")
        if up_to_date "$output" "$version; world $world" "$dir" guest-sdk/python wit; then
            report "$output" "  (unchanged)"
            continue
        fi
        # componentize-py imports the app at build time to snapshot it; keep
        # its bytecode out of the source tree.
        PYTHONDONTWRITEBYTECODE=1 "$cpy" -d wit -w "$world" componentize app \
            -p "$dir" -p guest-sdk/python -o "$output.tmp" >/dev/null
        mv "$output.tmp" "$output"
        stamp "$output"
        report "$output"
    done
    # The Django example's tasks: examples/django/components/NAME.py exports
    # a function of the project's apps (shop/tasks.py) with function_task.
    local project=examples/django
    for entry in "$project"/components/*.py; do
        name=$(basename "$entry" .py)
        output="$OUT/django-$name.wasm"
        if up_to_date "$output" "$version" "$project/components" "$project/shop" guest-sdk/python wit; then
            report "$output" "  (unchanged)"
            continue
        fi
        PYTHONDONTWRITEBYTECODE=1 "$cpy" -d wit -w task componentize "$name" \
            -p "$project/components" -p "$project" -p guest-sdk/python -o "$output.tmp" >/dev/null
        mv "$output.tmp" "$output"
        stamp "$output"
        report "$output"
    done
}

# JavaScript tasks: examples/js/NAME/task.js with the SDK in guest-sdk/js.
# `-d http fetch-event` keeps wasi:http out of the component's imports (the
# host links it only into runs granted outbound HTTP, and refuses a module
# that imports it any other run); only `fetch` keeps `http` (js_disabled).
build_js() {
    local cjs=examples/js/node_modules/@bytecodealliance/componentize-js/src/cli.js
    [ -f "$cjs" ] || { echo "build-examples: $cjs missing: run scripts/setup.sh" >&2; return 1; }
    local version dir name output world disabled
    version=$(node "$cjs" --version)
    for dir in examples/js/*/; do
        [ -f "$dir/task.js" ] || continue
        name=$(basename "$dir")
        output="$OUT/js-$name.wasm"
        world=$(world_of js "$name")
        disabled=$(js_disabled "$name")
        if up_to_date "$output" "$version; world $world; -d $disabled" "$dir" guest-sdk/js wit; then
            report "$output" "  (unchanged)"
            continue
        fi
        # shellcheck disable=SC2086 # $disabled: one feature per word
        node "$cjs" "$dir/task.js" --wit wit --world-name "$world" \
            -d $disabled -o "$output.tmp" >/dev/null
        mv "$output.tmp" "$output"
        stamp "$output"
        report "$output"
    done
}

# The preview-1 adapter that turns a wasm32-wasi core module into a component,
# from the crate wasmtime ships it in (same version as the host's wasmtime).
wasi_adapter() {
    cargo metadata --format-version 1 --locked \
        --manifest-path examples/c/adapter/Cargo.toml 2>/dev/null |
        python3 -c '
import json, os, sys
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "wasi-preview1-component-adapter-provider":
        print(os.path.join(os.path.dirname(p["manifest_path"]),
                           "artefacts", "wasi_snapshot_preview1.reactor.wasm"))
'
}

# C tasks: examples/c/NAME/*.c with the helpers in guest-sdk/c. wit-bindgen
# generates the bindings, Debian's clang and wasi-libc compile a wasm32-wasi
# reactor module, and wasm-tools wraps it into a component with the adapter.
build_c() {
    local tool
    for tool in clang wit-bindgen wasm-tools; do
        command -v "$tool" >/dev/null ||
            { echo "build-examples: $tool missing: run scripts/setup.sh" >&2; return 1; }
    done
    local adapter gen="examples/target/c"
    adapter=$(wasi_adapter)
    [ -f "$adapter" ] || { echo "build-examples: the WASI adapter was not found" >&2; return 1; }
    local version dir name output
    version="$(clang --version | head -n1); $(wit-bindgen --version); $(wasm-tools --version); adapter $WASI_ADAPTER_VERSION"
    for dir in examples/c/*/; do
        compgen -G "$dir*.c" >/dev/null || continue
        name=$(basename "$dir")
        output="$OUT/c-$name.wasm"
        if up_to_date "$output" "$version" "$dir" guest-sdk/c wit; then
            report "$output" "  (unchanged)"
            continue
        fi
        mkdir -p "$gen"
        # wit-bindgen lists the files it writes on stderr: show that only on failure.
        local log
        log=$(wit-bindgen c wit --world task --out-dir "$gen" 2>&1) || { echo "$log" >&2; return 1; }
        clang --target=wasm32-wasi --sysroot=/usr -O2 -Wall -Wextra -Werror \
            -Wno-unused-parameter -mexec-model=reactor -s \
            -I "$gen" -I guest-sdk/c \
            "$dir"*.c guest-sdk/c/wasmq.c "$gen/task.c" "$gen/task_component_type.o" \
            -o "$gen/$name.core.wasm"
        wasm-tools component new "$gen/$name.core.wasm" \
            --adapt "wasi_snapshot_preview1=$adapter" -o "$output.tmp"
        mv "$output.tmp" "$output"
        stamp "$output"
        report "$output"
    done
}

langs=("$@")
[ ${#langs[@]} -gt 0 ] || langs=(rust python js c)
mkdir -p "$OUT"
for lang in "${langs[@]}"; do
    case "$lang" in
        rust | python | js | c) "build_$lang" ;;
        *) echo "build-examples: unknown language \`$lang\` (rust, python, js, c)" >&2; exit 2 ;;
    esac
done
