#!/usr/bin/env python3
"""A raw MCP host for the conformance client scenarios about custom headers, through a proxy.

    conformance client --scenario http-custom-headers --spec-version 2026-07-28 \
      --command "python3 header_scenarios_client.py MCPSM_BIN proxy"

The suite appends its mock server's URL as the last argument and describes the scenario in
MCP_CONFORMANCE_SCENARIO and MCP_CONFORMANCE_CONTEXT. This script spawns `MCPSM_BIN proxy --url
URL`, initializes asking for 2026-07-28 over its stdio and lists the tools. Then:
  http-custom-headers        calls each tool of the context's `toolCalls` with its arguments;
  http-invalid-tool-headers  calls every tool the proxy listed (the proxy must have left out the
                             ones whose x-mcp-header annotations are invalid).
The headers are the proxy's business: this host only sends JSON-RPC. Exit code 0 when every
request got an answer, 1 otherwise.
"""
import json
import os
import subprocess
import sys

*proxy, url = sys.argv[1:]
scenario = os.environ.get("MCP_CONFORMANCE_SCENARIO", "")
context = json.loads(os.environ.get("MCP_CONFORMANCE_CONTEXT", "{}") or "{}")
child = subprocess.Popen([*proxy, "--url", url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def send(message):
    child.stdin.write(json.dumps(message) + "\n")
    child.stdin.flush()


def call(id, method, params):
    send({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
    while True:
        line = child.stdout.readline()
        if not line:
            sys.exit(f"header_scenarios_client: no answer to {method}")
        message = json.loads(line)
        if message.get("id") == id and "method" not in message:
            return message


def sample(schema):
    kind = (schema or {}).get("type")
    return {"integer": 1, "number": 1.5, "boolean": True, "object": {}, "array": [], "null": None}.get(kind, "x")


call(0, "initialize", {"protocolVersion": "2026-07-28", "capabilities": {}, "clientInfo": {"name": "mcpsm-tests", "version": "0"}})
send({"jsonrpc": "2.0", "method": "notifications/initialized"})
tools = call(1, "tools/list", {}).get("result", {}).get("tools", [])
next_id = 2
if scenario == "http-custom-headers":
    calls = context.get("toolCalls", [])
else:
    calls = [
        {"name": t["name"], "arguments": {k: sample(v) for k, v in t.get("inputSchema", {}).get("properties", {}).items()}}
        for t in tools
    ]
for c in calls:
    call(next_id, "tools/call", {"name": c["name"], "arguments": c.get("arguments", {})})
    next_id += 1
child.stdin.close()
sys.exit(child.wait())
