#!/usr/bin/env bash
# Installs the real MCP software mcpsm's integration tests drive, pinned by the files beside
# this script:
#   package.json + package-lock.json                 -> tests/support/node_modules
#       (@modelcontextprotocol/server-everything, server-memory, sdk; playwright-core, which
#        drives the system's chromium for the status page test: it downloads no browser)
#   conformance/package.json + package-lock.json     -> tests/support/conformance/node_modules
#       (@modelcontextprotocol/conformance and the `node` package: a Node 22 binary at
#        conformance/node_modules/.bin/node, kept apart so it never shadows the system Node)
#   conformance-alpha/package.json + lock            -> tests/support/conformance-alpha/node_modules
#       (the newest suite, 0.2.0-alpha.12, which tests every spec version up to 2026-07-28)
#   reference-server/package.json + lock             -> tests/support/reference-server/node_modules
#       (the suite's reference everything-server, a copy of its source with its LICENSE; run
#        with Node 22 and tsx)
#   requirements.txt                                 -> tests/support/.venv (official `mcp` SDK,
#                                                       prometheus_client's text parser)
#
# Idempotent and quick when nothing changed: each part records a hash of its pin files (and the
# tool version) in a stamp file and is skipped while the stamp matches. Quiet: one line per
# part it installs; on failure the tool's log is printed and the exit code is non-zero.
# Needs: node >= 18 with npm, python3 >= 3.10 with venv, network access to the npm and PyPI
# registries. Safe to run concurrently (flock).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
cd "$HERE"

die() {
  echo "setup.sh: ERROR: $*" >&2
  exit 1
}

for tool in node npm python3 sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found on PATH (needed to install the test servers)"
done
node -e 'process.exit(+process.versions.node.split(".")[0] >= 18 ? 0 : 1)' ||
  die "node >= 18 needed, found $(node --version)"
python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' ||
  die "python3 >= 3.10 needed (the mcp SDK), found $(python3 --version 2>&1)"

# One setup at a time per checkout (parallel test runners, two terminals...).
LOCK="${TMPDIR:-/tmp}/mcpsm-test-setup-$(printf '%s' "$HERE" | sha256sum | cut -c1-16).lock"
exec 9>"$LOCK"
flock 9

LOG="$(mktemp "${TMPDIR:-/tmp}/mcpsm-setup.XXXXXX.log")"
trap 'rm -f "$LOG"' EXIT

# run DESCRIPTION CMD... : run quietly, print the log and fail loudly if it fails.
run() {
  local what="$1"
  shift
  if ! "$@" >"$LOG" 2>&1; then
    echo "setup.sh: ERROR: $what failed: $*" >&2
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

npm_part() { # DIR
  local dir="$1" t0
  local stamp_file="$dir/node_modules/.mcpsm-setup-stamp"
  [ -f "$dir/package-lock.json" ] || die "$dir/package-lock.json missing"
  local want
  want="$(stamp_of "$dir/package.json" "$dir/package-lock.json")"
  if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$want" ]; then
    return 0
  fi
  t0=$SECONDS
  (
    cd "$dir"
    run "npm ci in ${dir#"$REPO"/}" npm ci --no-audit --no-fund --loglevel=error
  )
  echo "$want" >"$stamp_file"
  echo "setup.sh: npm ci in ${dir#"$REPO"/} ($((SECONDS - t0)) s)"
  did=1
}

npm_part "$HERE"
npm_part "$HERE/conformance"
npm_part "$HERE/conformance-alpha"
npm_part "$HERE/reference-server"

# The conformance suite needs Node >= 22: the `node` package's install script puts one here.
NODE22="$HERE/conformance/node_modules/.bin/node"
"$NODE22" -e 'process.exit(+process.versions.node.split(".")[0] >= 22 ? 0 : 1)' 2>/dev/null || {
  rm -f "$HERE/conformance/node_modules/.mcpsm-setup-stamp"
  die "$NODE22 is not a working Node >= 22 (did the 'node' package's install script run? allowScripts in conformance/package.json)"
}
"$HERE/conformance-alpha/node_modules/.bin/node" -e 'process.exit(+process.versions.node.split(".")[0] >= 22 ? 0 : 1)' 2>/dev/null || {
  rm -f "$HERE/conformance-alpha/node_modules/.mcpsm-setup-stamp"
  die "conformance-alpha's node is not a working Node >= 22 (allowScripts in conformance-alpha/package.json)"
}

VENV="$HERE/.venv"
want="$(stamp_of "$HERE/requirements.txt")"
if ! { [ -f "$VENV/.mcpsm-setup-stamp" ] && [ "$(cat "$VENV/.mcpsm-setup-stamp")" = "$want" ] &&
  [ -x "$VENV/bin/python" ]; }; then
  t0=$SECONDS
  if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c '' 2>/dev/null; then
    rm -rf "$VENV"
    run "creating the venv $VENV" python3 -m venv "$VENV"
  fi
  run "pip install -r requirements.txt" \
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$HERE/requirements.txt"
  run "importing the mcp SDK" "$VENV/bin/python" -c 'import mcp.client.stdio, mcp.server.fastmcp, uvicorn, prometheus_client.parser'
  echo "$want" >"$VENV/.mcpsm-setup-stamp"
  echo "setup.sh: venv tests/support/.venv ($((SECONDS - t0)) s)"
  did=1
fi

if [ "$did" = 0 ]; then
  echo "setup.sh: test support up to date"
fi
