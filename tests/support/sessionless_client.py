#!/usr/bin/env python3
"""A raw sessionless (2026-07-28) MCP host for conformance client scenarios, through a proxy.

    conformance client --scenario request-metadata --spec-version 2026-07-28 \
      --command "python3 sessionless_client.py MCPSM_BIN proxy"

The suite appends its mock server's URL as the last argument and names the scenario in
MCP_CONFORMANCE_SCENARIO. This script spawns `MCPSM_BIN proxy --url URL` and speaks 2026-07-28
over its stdio the way a sessionless client does: no initialize; every request carries `_meta`
with the revision, the client's capabilities and info; an UnsupportedProtocolVersion error is
retried with a version the server supports; `server/discover`, `tools/list`, then every tool is
called; an input-required result is answered (elicitation: accept with the schema's defaults or
`true`; sampling: a canned message; roots: none) by retrying with a new id, `inputResponses`
and the `requestState` as it came (none when none came). The headers, the HTTP side, are the
proxy's. Exit code 0 when every request got an answer, 1 otherwise.
"""
import itertools
import json
import subprocess
import sys

*proxy, url = sys.argv[1:]
child = subprocess.Popen([*proxy, "--url", url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
ids = itertools.count(1)
version = ["2026-07-28"]


def meta():
    return {
        "io.modelcontextprotocol/protocolVersion": version[0],
        "io.modelcontextprotocol/clientCapabilities": {"roots": {}, "sampling": {}, "elicitation": {}},
        "io.modelcontextprotocol/clientInfo": {"name": "mcpsm-tests", "version": "0"},
    }


def call(method, params):
    while True:
        id = next(ids)
        message = {"jsonrpc": "2.0", "id": id, "method": method, "params": {**params, "_meta": meta()}}
        child.stdin.write(json.dumps(message) + "\n")
        child.stdin.flush()
        while True:
            line = child.stdout.readline()
            if not line:
                sys.exit(f"sessionless_client: no answer to {method}")
            answer = json.loads(line)
            if answer.get("id") == id and "method" not in answer:
                break
        error = answer.get("error") or {}
        supported = (error.get("data") or {}).get("supported") or []
        if error.get("code") == -32022 and supported and supported[0] != version[0]:
            version[0] = supported[0]
            continue
        return answer


def input_for(request):
    method, params = request.get("method"), request.get("params") or {}
    if method == "elicitation/create":
        props = (params.get("requestedSchema") or {}).get("properties") or {}
        content = {k: v.get("default", True if v.get("type") == "boolean" else "x") for k, v in props.items()}
        return {"action": "accept", "content": content}
    if method == "sampling/createMessage":
        return {"role": "assistant", "content": {"type": "text", "text": "canned"}, "model": "test", "stopReason": "endTurn"}
    if method == "roots/list":
        return {"roots": []}
    return {}


def call_tool(name):
    params = {"name": name, "arguments": {}}
    for _ in range(5):
        result = call("tools/call", params).get("result") or {}
        if result.get("resultType") != "input_required":
            return
        params = {"name": name, "arguments": {}}
        params["inputResponses"] = {k: input_for(r) for k, r in (result.get("inputRequests") or {}).items()}
        if "requestState" in result:
            params["requestState"] = result["requestState"]


call("server/discover", {})
tools = (call("tools/list", {}).get("result") or {}).get("tools") or []
for tool in tools:
    call_tool(tool["name"])
child.stdin.close()
sys.exit(child.wait())
