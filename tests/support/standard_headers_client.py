#!/usr/bin/env python3
"""A raw MCP host for the conformance client scenario `http-standard-headers`, through a proxy.

    conformance client --scenario http-standard-headers --spec-version 2026-07-28 \
      --command "python3 standard_headers_client.py MCPSM_BIN proxy"

The suite appends its mock server's URL as the last argument; this script spawns
`MCPSM_BIN proxy --url URL` and, over its stdio, initializes asking for 2026-07-28, sends
notifications/initialized and one request of every method the scenario checks, then closes
stdin. (The TS SDK client the other scenarios use refuses a server that picks 2026-07-28.)
Exit code 0 when every request got an answer, 1 otherwise.
"""
import json
import subprocess
import sys

*proxy, url = sys.argv[1:]
child = subprocess.Popen([*proxy, "--url", url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def send(message):
    child.stdin.write(json.dumps(message) + "\n")
    child.stdin.flush()


def call(id, method, params):
    send({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
    while True:
        line = child.stdout.readline()
        if not line:
            sys.exit(f"standard_headers_client: no answer to {method}")
        message = json.loads(line)
        if message.get("id") == id and "method" not in message:
            return message


call(0, "initialize", {"protocolVersion": "2026-07-28", "capabilities": {}, "clientInfo": {"name": "mcpsm-tests", "version": "0"}})
send({"jsonrpc": "2.0", "method": "notifications/initialized"})
call(1, "tools/list", {})
call(2, "tools/call", {"name": "my-hyphenated-tool", "arguments": {}})
call(3, "resources/list", {})
call(4, "resources/read", {"uri": "file:///path/to/file%20name.txt"})
call(5, "prompts/list", {})
call(6, "prompts/get", {"name": "test_prompt"})
child.stdin.close()
sys.exit(child.wait())
