#!/usr/bin/env bash
# The benchmark, from one command:
#
#   bash bench/run.sh                 install the pinned peers, build release, measure everything,
#                                     write BENCHMARKS.md and bench/results.json (a few minutes)
#   bash bench/run.sh --smoke         mcpsm only, demo upstream, a few dozen calls, stdout only
#   bash bench/run.sh --soak          50,000 calls through one managed proxy session: proxy and
#                                     manager RSS at start, middle and end (minutes; not in CI)
#   bash bench/run.sh -- ARGS...      pass ARGS to the harness instead of the defaults, e.g.
#                                     bash bench/run.sh -- --contenders direct,mcpsm --calls 5000
#                                     bash bench/run.sh -- --only stdio-host --calls 2000 --rounds 10
#                                     (the stdio-host section alone: seconds)
#                                     bash bench/run.sh -- --only managed-http --calls 2000 --rounds 10
#                                     (one session: direct vs `mcpsm proxy --url` vs `--target`
#                                     to a managed HTTP daemon, with the manager's CPU per call)
#                                     bash bench/run.sh -- --only scale-target --sessions 64 --session-calls 40
#                                     (64 `--target` sessions at once to an HTTP and a stdio
#                                     daemon: CPU per call of proxies, manager, stdio host, server)
#
# The harness is examples/bench.rs (`target/release/examples/bench --help` lists its options).
# Benchmarks are not tests: nothing here asserts on timings; the harness fails only when calls
# fail. Run it on a quiet machine if you can: it measures microseconds on 2 cores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

smoke=0
soak=0
harness=()
if [ "${1:-}" = "--smoke" ]; then
  smoke=1
  shift
elif [ "${1:-}" = "--soak" ]; then
  soak=1
  shift
fi
if [ "${1:-}" = "--" ]; then
  shift
  harness=("$@")
elif [ "$#" -gt 0 ]; then
  echo "usage: bash bench/run.sh [--smoke|--soak] [-- HARNESS-ARGS...]" >&2
  exit 2
fi

# mcpsm as `cargo build --release` and `cargo install` build it: built together with the example,
# the dependencies would get the dev-dependencies' features too, other symbol hashes, and the
# binary would lose its link order (build.rs, bench/proxy.order; ~4 MiB more peak RSS).
build() {
  cargo build --release --quiet --bin mcpsm
  cargo build --release --quiet --example bench
}

if [ "$smoke" = 1 ]; then
  build
  exec target/release/examples/bench --smoke
fi
if [ "$soak" = 1 ]; then
  build
  exec target/release/examples/bench --soak "${harness[@]}"
fi

bash bench/setup.sh
echo "bench/run.sh: cargo build --release"
build
if [ "${#harness[@]}" = 0 ]; then
  harness=(--markdown BENCHMARKS.md --json bench/results.json)
fi
exec target/release/examples/bench --reproduce "bash bench/run.sh${*:+ -- $*}" "${harness[@]}"
