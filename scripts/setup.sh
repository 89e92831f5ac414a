#!/usr/bin/env bash
# One-time set-up on a fresh machine with Rust installed. Idempotent and
# quiet when done already.
#
# Usage: scripts/setup.sh [--rust-only]
#   --rust-only  only the WebAssembly target the Rust examples build for
#                (what scripts/demo.sh needs); without it, also everything
#                the test suite uses: Debian packages (promtool, Chromium,
#                clang for C tasks), the Python venv (Ray, componentize-py),
#                npm packages (componentize-js), wit-bindgen and wasm-tools.
set -euo pipefail

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  echo "setup: installing the wasm32-wasip2 target"
  rustup target add wasm32-wasip2
fi
if [ "${1:-}" = "--rust-only" ]; then
  exit 0
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

# The project's Python venv (outside the clone, so CI's clean clones reuse it),
# with the packages pinned in scripts/requirements.txt. pip runs only when the
# requirements changed since the last install (a stamp holds their hash).
VENV="${WASMQ_VENV:-$HOME/.cache/wasmq/venv}"
REQS="$(dirname "$0")/requirements.txt"
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating the Python venv at $VENV"
  python3 -m venv "$VENV"
fi
want="$(sha256sum "$REQS" | cut -d' ' -f1)"
if [ "$(cat "$VENV/.wasmq-requirements" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python packages from $REQS into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQS"
  echo "$want" >"$VENV/.wasmq-requirements"
fi

# The Python client's tests and bench (clients/python) run in a venv of their
# own: Django 6 needs Python >= 3.12, the project venv above is the system's
# 3.11. Any 3.12+ interpreter will do: on PATH, or one pyenv has installed.
# The client itself is not installed: the tests import it from the source
# tree (pytest's pythonpath), so the venv serves every clone.
python312() {
  local py
  for py in python3.14 python3.13 python3.12 python3 \
    "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[2-9]*/bin/python3; do
    if "$py" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      command -v "$py"
      return
    fi
  done
  return 1
}
CLIENT_VENV="${WASMQ_CLIENT_VENV:-$HOME/.cache/wasmq/venv-client}"
CLIENT_REQS="$(dirname "$0")/../clients/python/requirements-test.txt"
if [ ! -x "$CLIENT_VENV/bin/python" ]; then
  py=$(python312) || { echo "setup: no Python >= 3.12 found (Django 6 needs it)" >&2; exit 1; }
  echo "setup: creating the client's Python venv at $CLIENT_VENV with $py"
  "$py" -m venv "$CLIENT_VENV"
fi
want="$(sha256sum "$CLIENT_REQS" | cut -d' ' -f1)"
if [ "$(cat "$CLIENT_VENV/.wasmq-requirements" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python packages from $CLIENT_REQS into $CLIENT_VENV"
  "$CLIENT_VENV/bin/pip" install --quiet --disable-pip-version-check -r "$CLIENT_REQS"
  echo "$want" >"$CLIENT_VENV/.wasmq-requirements"
fi

# JavaScript tasks: componentize-js (and rolldown, which bundles the projects
# `wasmq new --lang js` writes), pinned in examples/js/package-lock.json.
# `npm ci` runs only when the lock file changed since the last install; it
# also fills npm's cache, from which those projects install offline.
JS="$(dirname "$0")/../examples/js"
want="$(sha256sum "$JS/package-lock.json" | cut -d' ' -f1)"
if [ "$(cat "$JS/node_modules/.wasmq-lock" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing npm packages in examples/js"
  (cd "$JS" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" >"$JS/node_modules/.wasmq-lock"
fi

# C tasks: Debian's clang, lld and wasi-libc (wasm32-wasi, WASI preview 1).
missing=()
for pkg in clang lld wasi-libc libclang-rt-dev-wasm32; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]} with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# ... plus wit-bindgen's C generator and wasm-tools, built once into
# ~/.cargo/bin (a few minutes each the first time).
cargo_tool() { # BINARY CRATE VERSION [CARGO INSTALL FLAGS...]
  if ! "$1" --version 2>/dev/null | grep -q " $3"; then
    echo "setup: cargo install $2 $3"
    # Not into the project's target dir: these are tools, not wasmq.
    env -u CARGO_TARGET_DIR cargo install --locked --quiet "$2" --version "$3" "${@:4}"
  fi
}
cargo_tool wit-bindgen wit-bindgen-cli 0.63.0
cargo_tool wasm-tools wasm-tools 1.263.0 --no-default-features --features component
# cargo-component, the other route to a Rust component, which the test of
# `wasmq new`'s Rust project takes too (about 8 minutes to build, once). It
# builds for wasm32-wasip1 and adds the preview-1 adapter.
cargo_tool cargo-component cargo-component 0.21.1
if ! rustup target list --installed | grep -qx wasm32-wasip1; then
  echo "setup: installing the wasm32-wasip1 target (for cargo-component)"
  rustup target add wasm32-wasip1
fi
