#!/usr/bin/env bash
# Runs the whole test suite: installs the pinned MCP servers/SDKs (tests/support/setup.sh,
# quick when already done), then `cargo test --all-targets -- --test-threads=2`.
#
#   bash tests/run.sh                      everything
#   bash tests/run.sh proxy                cargo's TESTNAME filter (args before `--` go to cargo)
#   bash tests/run.sh -- --nocapture       args after `--` go to the test harness
#   bash tests/run.sh --release it -- --exact foo
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash tests/support/setup.sh

cargo_args=()
harness_args=()
seen_sep=0
for a in "$@"; do
  if [ "$seen_sep" = 0 ] && [ "$a" = "--" ]; then
    seen_sep=1
  elif [ "$seen_sep" = 0 ]; then
    cargo_args+=("$a")
  else
    harness_args+=("$a")
  fi
done

exec cargo test --all-targets "${cargo_args[@]}" -- --test-threads=2 "${harness_args[@]}"
