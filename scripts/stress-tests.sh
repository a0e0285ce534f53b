#!/usr/bin/env bash
# Runs the tests over and over to catch flaky ones:
#   1. the README's test command (`cargo test --workspace --features ember-cli/wgpu`) N times;
#   2. the fast crates' tests (ember-ops, ember-layers, ember-models) N times with 16 test
#      threads while every core is kept busy by a spinning process, so threads interleave in
#      ways a quiet machine rarely shows.
# Everything is built first, so the runs time the tests alone. Each run's output is kept in the
# log folder; the summary at the end lists every failing run and the tests that failed in it.
#
#   scripts/stress-tests.sh [N] [LOG_DIR]     (N defaults to 10; LOG_DIR must be new or empty)
#
# Exits non-zero if any run failed. The wgpu tests need a Vulkan driver (Mesa's lavapipe on a
# CPU: `apt-get install mesa-vulkan-drivers`), as for the README's command.
set -uo pipefail
cd "$(dirname "$0")/.."
n="${1:-10}"
if [ -n "${2:-}" ]; then
  # The logs are written as full-N.log etc.: never into a folder holding files already.
  if [ -e "$2" ] && [ -n "$(ls -A "$2")" ]; then echo "LOG_DIR $2 is not empty; name a new or empty folder" >&2; exit 2; fi
  logs="$2"
  mkdir -p "$logs"
else
  logs="$(mktemp -d -t ember-stress.XXXXXX)"
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ember-target}"
export CARGO_TERM_COLOR=never
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"

full=(cargo test --workspace --features ember-cli/wgpu)
fast=(cargo test -p ember-ops -p ember-layers -p ember-models)

echo "building the tests (logs in $logs)"
"${full[@]}" --no-run >"$logs/build-full.log" 2>&1 || { echo "build failed: $logs/build-full.log"; exit 1; }
"${fast[@]}" --no-run >"$logs/build-fast.log" 2>&1 || { echo "build failed: $logs/build-fast.log"; exit 1; }

spinners=()
stop_spinners() {
  for pid in "${spinners[@]}"; do kill "$pid" 2>/dev/null; done
  spinners=()
}
trap stop_spinners EXIT

failures=()
# Runs one test command, logs it, and prints a line: passed/failed, seconds, test counts.
run() {
  local name="$1"; shift
  local log="$logs/$name.log" start=$SECONDS
  if "$@" >"$log" 2>&1; then
    status=passed
  else
    status=FAILED
    failures+=("$name: $(grep -E '^    [^ ]+$' "$log" | tr -d ' ' | sort -u | paste -sd, -) ($log)")
  fi
  local passed failed
  passed=$(grep -Eo '[0-9]+ passed' "$log" | awk '{s += $1} END {print s + 0}')
  failed=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s += $1} END {print s + 0}')
  printf '%-14s %-6s %5ds  %4d passed, %d failed\n' "$name" "$status" $((SECONDS - start)) "$passed" "$failed"
}

echo "== the README's test command, $n times"
for i in $(seq 1 "$n"); do
  run "full-$i" "${full[@]}"
done

echo "== ember-ops, ember-layers, ember-models: 16 test threads, every core busy, $n times"
for _ in $(seq 1 "$(nproc)"); do
  (while :; do :; done) &
  spinners+=($!)
done
for i in $(seq 1 "$n"); do
  run "loaded-$i" "${fast[@]}" -- --test-threads=16
done
stop_spinners

echo
if [ ${#failures[@]} -eq 0 ]; then
  echo "all $((2 * n)) runs passed"
else
  echo "${#failures[@]} of $((2 * n)) runs failed:"
  printf '  %s\n' "${failures[@]}"
  exit 1
fi
