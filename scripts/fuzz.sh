#!/usr/bin/env bash
# Fuzzes wasmq's parsers of untrusted input with cargo-fuzz (libFuzzer), each
# target for a bounded time, starting from the seed corpus kept in
# fuzz/corpus/TARGET. Fails when any target finds a crash (a panic, an
# overflow, a failed assertion, a timeout or an out-of-memory); the input is
# left in fuzz/artifacts/TARGET/ and the command to reproduce it is printed.
#
# Usage: scripts/fuzz.sh [TARGET]...   (default: every target in fuzz/Cargo.toml)
#   WASMQ_FUZZ_SECONDS     seconds per target (default 45)
#   WASMQ_FUZZ_TARGET_DIR  build directory (default ~/.cache/wasmq/fuzz:
#                          outside the clone, so CI's clean clones reuse the
#                          instrumented build of wasmtime, like the venv)
#
# One target by hand, as long as you like (Ctrl-C to stop):
#   cd fuzz && cargo fuzz run -s none --codegen-units 16 \
#     --target-dir ~/.cache/wasmq/fuzz module_bytes
# Replaying a crash: the same with the artifact's path after the target name.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

CARGO_FUZZ_VERSION=0.13.2
SECONDS_EACH="${WASMQ_FUZZ_SECONDS:-45}"
TARGET_DIR="${WASMQ_FUZZ_TARGET_DIR:-$HOME/.cache/wasmq/fuzz}"

if ! cargo fuzz --version 2>/dev/null | grep -q " $CARGO_FUZZ_VERSION\$"; then
  echo "fuzz: cargo install cargo-fuzz $CARGO_FUZZ_VERSION"
  env -u CARGO_TARGET_DIR cargo install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

# No sanitizer, which is also what lets stable Rust build the targets: every
# sanitizer is a nightly-only flag (-Zsanitizer), while the coverage
# instrumentation cargo-fuzz adds is stable. The parsers fuzzed here are safe
# Rust, where a bug shows as a panic or an overflow (cargo-fuzz turns on
# debug assertions and overflow checks), which libFuzzer catches as it is;
# AddressSanitizer would add checks only to wasmtime's unsafe code, which
# wasmtime fuzzes with it upstream. No RUSTC_BOOTSTRAP either: with it set,
# anyhow, thiserror and proc-macro2 detect "nightly" and build other code.
# 16 codegen units: the build of wasmtime is most of this script's time, and
# cargo-fuzz's default of 1 makes it several times longer.
build_flags=(--sanitizer none --codegen-units 16 --target-dir "$TARGET_DIR")

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi

start=$(date +%s)
cargo fuzz build "${build_flags[@]}"
echo "fuzz: built in $(($(date +%s) - start)) s"

# Per target: the largest input worth trying, in bytes. Compiling a module
# costs milliseconds per KiB; the text parsers need only short inputs.
max_len() {
  case "$1" in
    module_bytes) echo 16384 ;;
    module_smith) echo 8192 ;;
    envelope | io_json) echo 8192 ;;
    cli_parsers) echo 64 ;;
    *) echo 4096 ;;
  esac
}

failed=()
for target in "${targets[@]}"; do
  seeds="corpus/$target"
  mkdir -p "$seeds" "artifacts/$target"
  # New inputs go to a scratch corpus, so a run leaves the repository as it
  # was; the committed seeds are only read.
  work="$(mktemp -d)"
  echo "fuzz: $target for ${SECONDS_EACH} s"
  if ! cargo fuzz run "${build_flags[@]}" "$target" "$work" "$seeds" -- \
    -max_total_time="$SECONDS_EACH" -max_len="$(max_len "$target")" \
    -timeout=120 -rss_limit_mb=4096 -print_final_stats=1 2>"$work.log"; then
    tail -n 40 "$work.log" >&2
    failed+=("$target")
  fi
  grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done [0-9]+ runs)' "$work.log" |
    sed "s/^/fuzz: $target: /" || true
  rm -rf "$work" "$work.log"
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in ${failed[*]}: see fuzz/artifacts/; reproduce with" >&2
  echo "  cd fuzz && cargo fuzz run ${build_flags[*]} TARGET ARTIFACT" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} targets ran ${SECONDS_EACH} s each, no crash"
