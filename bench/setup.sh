#!/usr/bin/env bash
# Installs the peer proxies the benchmark measures beside mcpsm, pinned by the files beside this
# script:
#   package.json + package-lock.json  -> bench/node_modules  (mcp-remote, supergateway)
#   requirements.txt                  -> bench/.venv         (mcp-proxy)
# and the upstream server the benchmark uses as the real one (server-everything), through
# tests/support/setup.sh.
#
# Same approach as tests/support/setup.sh: idempotent and quick when nothing changed (each part
# records a hash of its pin files and the tool versions in a stamp file), one line per part it
# installs, the tool's log on failure. Needs node >= 18 with npm, python3 >= 3.10 with venv, and
# the npm and PyPI registries. Safe to run concurrently (flock).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
cd "$HERE"

die() {
  echo "bench/setup.sh: ERROR: $*" >&2
  exit 1
}

for tool in node npm python3 sha256sum flock; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found on PATH (needed to install the peers)"
done
node -e 'process.exit(+process.versions.node.split(".")[0] >= 18 ? 0 : 1)' ||
  die "node >= 18 needed, found $(node --version)"
python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' ||
  die "python3 >= 3.10 needed (mcp-proxy), found $(python3 --version 2>&1)"

# The upstreams: server-everything and the loopback preload live in the test support.
bash "$REPO/tests/support/setup.sh"

LOCK="${TMPDIR:-/tmp}/mcpsm-bench-setup-$(printf '%s' "$HERE" | sha256sum | cut -c1-16).lock"
exec 9>"$LOCK"
flock 9

LOG="$(mktemp "${TMPDIR:-/tmp}/mcpsm-bench-setup.XXXXXX.log")"
trap 'rm -f "$LOG"' EXIT

run() { # DESCRIPTION CMD... : run quietly, print the log and fail loudly if it fails.
  local what="$1"
  shift
  if ! "$@" >"$LOG" 2>&1; then
    echo "bench/setup.sh: ERROR: $what failed: $*" >&2
    echo "----- output -----" >&2
    tail -n 60 "$LOG" >&2
    echo "------------------" >&2
    exit 1
  fi
}

stamp_of() { # files... -> hash of their contents plus the tool versions that matter
  { cat "$@"; node --version; python3 --version; } | sha256sum | cut -c1-64
}

did=0

stamp_file="$HERE/node_modules/.mcpsm-setup-stamp"
want="$(stamp_of "$HERE/package.json" "$HERE/package-lock.json")"
if ! { [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$want" ]; }; then
  t0=$SECONDS
  run "npm ci in bench/" npm ci --no-audit --no-fund --loglevel=error
  echo "$want" >"$stamp_file"
  echo "bench/setup.sh: npm ci in bench/ ($((SECONDS - t0)) s)"
  did=1
fi

VENV="$HERE/.venv"
want="$(stamp_of "$HERE/requirements.txt")"
if ! { [ -f "$VENV/.mcpsm-setup-stamp" ] && [ "$(cat "$VENV/.mcpsm-setup-stamp")" = "$want" ] &&
  [ -x "$VENV/bin/python" ]; }; then
  t0=$SECONDS
  if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c '' 2>/dev/null; then
    rm -rf "$VENV"
    run "creating the venv $VENV" python3 -m venv "$VENV"
  fi
  run "pip install -r bench/requirements.txt" \
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$HERE/requirements.txt"
  run "running mcp-proxy --version" "$VENV/bin/mcp-proxy" --version
  echo "$want" >"$VENV/.mcpsm-setup-stamp"
  echo "bench/setup.sh: venv bench/.venv ($((SECONDS - t0)) s)"
  did=1
fi

for bin in "$HERE/node_modules/.bin/mcp-remote" "$HERE/node_modules/.bin/supergateway" "$VENV/bin/mcp-proxy"; do
  [ -x "$bin" ] || die "$bin is missing after the install"
done

if [ "$did" = 0 ]; then
  echo "bench/setup.sh: peers up to date"
fi
