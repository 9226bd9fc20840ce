#!/usr/bin/env bash
# bash bench/order.sh: rewrite bench/proxy.order, the functions a proxy session runs.
#
# build.rs gives that list to the linker for release builds on Linux (see build.rs), which lays
# those functions out together: a proxy then maps ~1.3 MiB of mcpsm's code instead of ~5.5 MiB.
# Symbol names carry hashes of the toolchain, the dependencies and mcpsm's version: run this
# again after changing any of them (a stale list loses its effect, never breaks a build; the
# benchmark's peak RSS shows it). It runs two proxy sessions under callgrind, which lists every
# function run: `--url` to `mcpsm demo-server`, and `--target` to the same server as a managed
# daemon (a temporary MCPSM_HOME and ports the system gives). Needs valgrind and python3; a
# minute or two, plus a release link. `target/release/mcpsm` is left with its symbols: the next
# `cargo build --release` links it again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
for tool in valgrind python3 nm; do
  command -v "$tool" >/dev/null || { echo "bench/order.sh needs $tool (Debian: apt-get install valgrind python3 binutils)" >&2; exit 1; }
done

echo "== release build with symbols (the names \`cargo build --release\` links)"
cargo rustc --quiet --release --bin mcpsm -- -C strip=none
bin=$PWD/target/release/mcpsm
work=$(mktemp -d)
trap 'MCPSM_HOME="$work/home" HOME="$work/home" "$bin" manager stop >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

echo "== two proxy sessions under callgrind"
python3 - "$bin" "$work" <<'EOF'
import json, os, socket, subprocess, sys

binary, work = sys.argv[1], sys.argv[2]

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def session(args, env=None):
    """One session as a client runs it: initialize, list, calls small and large, end of input."""
    cmd = ["valgrind", "--tool=callgrind", "--demangle=no",
           f"--callgrind-out-file={work}/callgrind.%p", binary, "proxy", *args]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, env=env)
    def call(id, method, params=None):
        message = {"jsonrpc": "2.0", "id": id, "method": method}
        if params is not None:
            message["params"] = params
        p.stdin.write((json.dumps(message) + "\n").encode()); p.stdin.flush()
        answer = json.loads(p.stdout.readline())
        if "result" not in answer:
            sys.exit(f"{' '.join(args)}: {method} failed: {answer}")
    call(0, "initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                           "clientInfo": {"name": "order", "version": "1"}})
    p.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n'); p.stdin.flush()
    call(1, "tools/list")
    call(2, "ping")
    for i in range(30):
        call(10 + i, "tools/call", {"name": "echo", "arguments": {"message": "x" * 100}})
    for i in range(2):
        call(50 + i, "tools/call", {"name": "echo", "arguments": {"message": "x" * 300_000}})
    call(60, "tools/call", {"name": "counter", "arguments": {}})
    p.stdin.close()
    if p.wait(timeout=120) != 0:
        sys.exit(f"proxy {' '.join(args)} exited with {p.returncode}")

server = subprocess.Popen([binary, "demo-server", "--port", "0"], stderr=subprocess.PIPE)
try:
    url = server.stderr.readline().decode().split()[-1]  # "… listening on URL"
    session(["--url", url])
finally:
    server.kill()

home = os.path.join(work, "home")
os.makedirs(home)
with open(os.path.join(home, "daemons.toml"), "w") as registry:
    registry.write(f'''[manager]
port = {free_port()}

[daemons.demo]
command = {json.dumps(binary)}
args = ["demo-server", "--port", "{{port}}"]
port = {free_port()}
''')
session(["--target", "demo"], env={**os.environ, "MCPSM_HOME": home, "HOME": home})
EOF

# Every function callgrind saw, in the order first listed, that the binary defines.
nm --defined-only "$bin" | awk '$2 ~ /^[tTwW]$/ { print $3 }' | sort -u > "$work/defined"
grep -hE '^c?fn=\([0-9]+\) .' "$work"/callgrind.* | sed -E 's/^c?fn=\([0-9]+\) //' \
  | awk 'NR == FNR { defined[$0] = 1; next } defined[$0] && !seen[$0]++' "$work/defined" - \
  > bench/proxy.order
echo "== bench/proxy.order: $(wc -l < bench/proxy.order) functions"
