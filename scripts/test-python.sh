#!/usr/bin/env bash
# The Python client (clients/python) and its Django 6 Tasks backend, tested
# against a real `wasmq serve` and `wasmq worker` on SQLite and PostgreSQL.
# Needs the venv of scripts/setup.sh, the release binary ($WASMQ_BIN, default
# ${CARGO_TARGET_DIR:-target}/release/wasmq, which `cargo test --release`
# builds) and the Django example's component (scripts/build-examples.sh
# python).
#
# Usage: scripts/test-python.sh [PYTEST ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${WASMQ_CLIENT_VENV:-$HOME/.cache/wasmq/venv-client}"
[ -x "$VENV/bin/python" ] || { echo "test-python: $VENV missing: run scripts/setup.sh" >&2; exit 1; }
export WASMQ_BIN="${WASMQ_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/wasmq}"
cd clients/python
# -p no:cacheprovider: no .pytest_cache in the source tree.
exec env PYTHONDONTWRITEBYTECODE=1 "$VENV/bin/python" -m pytest -p no:cacheprovider -q "$@"
