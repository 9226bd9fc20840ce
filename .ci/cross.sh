#!/usr/bin/env bash
# Cross-OS checks from Linux, after ../shared/tools/cross-check.sh (which installs the toolchain:
# Debian's rustc/cargo + std source, zig for macOS, mingw-w64 and Wine for Windows):
#
#   1. clippy -D warnings for x86_64-apple-darwin, aarch64-apple-darwin, x86_64-pc-windows-gnu
#      (Debian's rust-web-clippy, the same version as its rustc);
#   2. the unit tests built for x86_64-pc-windows-gnu and run under Wine;
#   3. `mcpsm demo` end to end under Wine (manager, demo daemon, two proxies, CTRL_BREAK to a
#      proxy's process group, TerminateProcess of the daemon).
#
# Run from the repository root: `bash .ci/cross.sh` (CI runs it from .ci/run). Same cache as
# cross-check.sh: XC_DIR (default ~/.cache/cross-check). Steps: XC_STEPS="clippy tests demo".
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
XC=${XC_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cross-check}
STEPS=${XC_STEPS:-clippy tests demo}
WIN=x86_64-pc-windows-gnu

# The environment cross-check.sh uses (Debian's toolchain, not rustup's proxies).
export PATH="$XC/venv/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/bin"
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc CARGO=/usr/bin/cargo RUSTC_BOOTSTRAP=1
unset RUSTUP_TOOLCHAIN
export WINEPREFIX="$XC/wineprefix" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
export CARGO_TARGET_DIR="$XC/target/$(basename "$ROOT")"
BUILD_STD=(-Zbuild-std=std,panic_abort)
fail=0
SUMMARY=()
wine_filter() { grep -v -E 'wine32 is missing|multiarch needs|dpkg --add-architecture|apt-get install wine32'; }

if [[ " $STEPS " == *" clippy "* ]]; then
  if [ ! -x /usr/bin/clippy-driver ]; then
    echo "== apt: installing rust-web-clippy (clippy for Debian's rustc)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      rust-web-clippy > "$XC/logs/apt-clippy.log" 2>&1 || tail -20 "$XC/logs/apt-clippy.log"
  fi
  # What `cargo clippy -- -D warnings` does, spelled out: `cargo clippy` would find rustup's
  # cargo-clippy in ~/.cargo/bin first, whose clippy does not match Debian's rustc and std.
  for t in x86_64-apple-darwin aarch64-apple-darwin $WIN; do
    echo "== [$t] clippy --all-targets -D warnings"
    # Windows: the library and binary with their unit tests; the integration tests (tests/it)
    # and the bench example drive Unix processes and signals, and are Unix-only.
    case $t in
      *-apple-darwin) cmd=(cargo-zigbuild check); selections=("--all-targets") ;;
      *) cmd=(/usr/bin/cargo check); selections=("--lib --bins" "--lib --bins --profile test") ;;
    esac
    ok=1
    : > "$XC/logs/clippy-$t.log"
    for selection in "${selections[@]}"; do
      # shellcheck disable=SC2086 # a selection is several arguments
      RUSTC_WORKSPACE_WRAPPER=/usr/bin/clippy-driver CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__" \
        "${cmd[@]}" "${BUILD_STD[@]}" --target "$t" $selection -q 2>> "$XC/logs/clippy-$t.log" || ok=0
    done
    if [ $ok = 1 ]; then
      SUMMARY+=("$t clippy: ok")
    else
      grep -E '^(error|warning)' -A6 "$XC/logs/clippy-$t.log" | head -60
      SUMMARY+=("$t clippy: FAILED"); fail=1
    fi
  done
fi

if [[ " $STEPS " == *" tests "* ]]; then
  echo "== [$WIN] unit tests under Wine"
  exes=$(/usr/bin/cargo test "${BUILD_STD[@]}" --target $WIN --lib --no-run --message-format=json 2> "$XC/logs/test-build-$WIN.log" \
    | "$XC/venv/bin/python3" -c 'import json,sys
for l in sys.stdin:
    try: m=json.loads(l)
    except ValueError: continue
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["profile"].get("test"): print(m["executable"])')
  if [ -z "$exes" ]; then
    tail -20 "$XC/logs/test-build-$WIN.log"; SUMMARY+=("$WIN unit tests: build FAILED"); fail=1
  else
    for exe in $exes; do
      timeout 600 wine "$exe" --test-threads=2 2>&1 | wine_filter | tee "$XC/logs/test-run-$WIN.log" | grep -E '^test .*FAILED|^test result|panicked|^failures' | head -40
      rc=${PIPESTATUS[0]}
      SUMMARY+=("$WIN unit tests under Wine: rc=$rc ($(grep -E '^test result' "$XC/logs/test-run-$WIN.log" | tail -1))")
      [ "$rc" -eq 0 ] || fail=1
    done
  fi
fi

if [[ " $STEPS " == *" demo "* ]]; then
  echo "== [$WIN] mcpsm demo under Wine"
  if /usr/bin/cargo build "${BUILD_STD[@]}" --target $WIN --bin mcpsm > "$XC/logs/build-demo-$WIN.log" 2>&1; then
    # A fresh profile for the demo's manager: wineserver ends with the last process.
    timeout 300 wine "$CARGO_TARGET_DIR/$WIN/debug/mcpsm.exe" demo 2>&1 | wine_filter | tee "$XC/logs/demo-$WIN.log" | sed 's/^/   | /'
    rc=${PIPESTATUS[0]}
    SUMMARY+=("$WIN mcpsm demo under Wine: rc=$rc")
    [ "$rc" -eq 0 ] || fail=1
  else
    tail -20 "$XC/logs/build-demo-$WIN.log"; SUMMARY+=("$WIN mcpsm demo: build FAILED"); fail=1
  fi
  wineserver -k 2>/dev/null || true
fi

echo "== .ci/cross.sh summary"
printf '   %s\n' "${SUMMARY[@]}"
exit $fail
