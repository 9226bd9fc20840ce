#!/usr/bin/env python3
"""A real MCP client (the official Python `mcp` SDK) that drives a stdio MCP server.

Usage:
    py_client.py [--timeout SECS] [--default-env] SCENARIO [SCENARIO_ARGS...] -- CMD [ARGS...]

CMD ARGS is the stdio server to spawn, e.g. `mcpsm proxy --url http://127.0.0.1:PORT/mcp`, or
`node .../server-everything/dist/index.js stdio` directly.

Scenarios (written against @modelcontextprotocol/server-everything unless said otherwise):
    basic          initialize, tools/list (needs `echo`), prompts/list + get, resources/list + read
    echo-big       `echo` with 1 MiB ASCII, tricky Unicode, and ~1 MiB of multi-byte text; exact
    progress       `trigger-long-running-operation` (or py_server's `long_running`) with a
                   progress callback: every notification arrives, in order, before the result
    sampling       server->client sampling/createMessage inside `trigger-sampling-request`
    elicitation    server->client elicitation/create inside `trigger-elicitation-request`
    roots          server->client roots/list sent unsolicited after initialize; `get-roots-list`
    concurrent     16 `echo` calls in flight at once, each answer matches its own request
    unknown-tool   calling a missing tool gives an error and the session keeps working
    get-env [VAR...]   `get-env`: the server's environment (only VARs if given)
    memory-create NAME  server-memory: create_entities NAME
    memory-read NAME    server-memory: read_graph contains NAME
    survive-restart GO  `echo`, then GO.waiting is written and the client waits for the file GO
                        (the test restarts the daemon meanwhile), then `echo` again must work
    in-flight-restart GO  a long `trigger-long-running-operation` runs; once its progress
                        starts GO.waiting is written and the client waits for GO (the test kills
                        the daemon): that call must end in a JSON-RPC error, the next `echo` works
    all            basic echo-big progress sampling elicitation roots concurrent unknown-tool,
                   all in one session

Output: exactly one JSON object on stdout, written after the session has shut down cleanly:
    {"ok": true, "scenario": ..., "server_info": {...}, "protocol_version": ...,
     "capabilities": {...}, "results": {SCENARIO: {...}}, "notifications": {METHOD: COUNT},
     "elapsed_s": ..., "shutdown_s": ...}
Exit codes: 0 success; 1 a check failed or the session broke (message on stderr, prefixed
"py_client: FAIL"); 2 usage error; 3 timeout (whole run limited by --timeout, default 60 s).
The server's own stderr is passed through to this process's stderr.

By default the child gets this process's full environment (env=dict(os.environ)); with
--default-env it gets only what the SDK passes by default (HOME, PATH, ...), like real clients.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import time
import traceback
from collections import Counter
from datetime import timedelta
from typing import Any, Awaitable, Callable

import anyio
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import McpError

CANNED_SAMPLING_TEXT = "canned reply from py_client \u2713"
ELICIT_CONTENT: dict[str, Any] = {
    "name": "Ada Lovelace",
    "check": True,
    "email": "ada@example.com",
    "integer": 7,
    "number": 2.5,
}
ROOT_URI = "file:///tmp/mcpsm-py-client-root"
ROOT_NAME = "py-client-root"

ALL_SCENARIOS = [
    "basic",
    "echo-big",
    "progress",
    "sampling",
    "elicitation",
    "roots",
    "concurrent",
    "unknown-tool",
]
# scenario -> number of positional arguments it takes (None = any number)
SCENARIO_ARGS: dict[str, int | None] = {s: 0 for s in ALL_SCENARIOS}
SCENARIO_ARGS.update(
    {"all": 0, "get-env": None, "memory-create": 1, "memory-read": 1, "survive-restart": 1, "in-flight-restart": 1}
)


class CheckFailed(Exception):
    pass


CURRENT = ["startup"]  # the scenario running now, for failure messages


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise CheckFailed(msg)


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


def digest(s: str) -> str:
    return hashlib.sha256(s.encode("utf-8")).hexdigest()[:16]


def strip_echo(text: str) -> str:
    # server-everything and py_server answer "Echo: <message>"
    prefix = "Echo: "
    check(text.startswith(prefix), f"echo answer does not start with {prefix!r}: {text[:80]!r}")
    return text[len(prefix) :]


class Client:
    def __init__(self, session: ClientSession, state: "State") -> None:
        self.s = session
        self.state = state
        self._tools: list[str] | None = None

    async def tools(self) -> list[str]:
        if self._tools is None:
            self._tools = [t.name for t in (await self.s.list_tools()).tools]
        return self._tools

    async def call(self, name: str, args: dict[str, Any] | None = None, **kw: Any) -> types.CallToolResult:
        res = await self.s.call_tool(name, args or {}, **kw)
        check(not res.isError, f"tool {name} returned isError: {text_of(res)[:500]}")
        return res

    async def echo(self, message: str) -> str:
        return strip_echo(text_of(await self.call("echo", {"message": message})))


# --------------------------------------------------------------------------- scenarios


async def sc_basic(c: Client, _args: list[str]) -> dict[str, Any]:
    tools = await c.tools()
    check("echo" in tools, f"tool 'echo' missing from tools/list: {tools}")
    out: dict[str, Any] = {"tools": tools}
    caps = c.state.init.capabilities
    if caps.prompts is not None:
        prompts = (await c.s.list_prompts()).prompts
        out["prompts"] = [p.name for p in prompts]
        simple = [p for p in prompts if not any(a.required for a in (p.arguments or []))]
        if simple:
            name = "simple-prompt" if any(p.name == "simple-prompt" for p in simple) else simple[0].name
            got = await c.s.get_prompt(name)
            check(len(got.messages) > 0, f"prompts/get {name}: no messages")
            first = got.messages[0].content
            out["prompt_get"] = {
                "name": name,
                "messages": len(got.messages),
                "first_text": first.text if isinstance(first, types.TextContent) else None,
            }
    if caps.resources is not None:
        resources = (await c.s.list_resources()).resources
        out["resources_count"] = len(resources)
        if resources:
            uri = str(resources[0].uri)
            read = await c.s.read_resource(resources[0].uri)
            check(len(read.contents) > 0, f"resources/read {uri}: no contents")
            r0 = read.contents[0]
            size = len(r0.text) if isinstance(r0, types.TextResourceContents) else len(r0.blob)
            check(str(r0.uri) == uri, f"resources/read {uri}: contents for {r0.uri}")
            out["resource_read"] = {"uri": uri, "mimeType": r0.mimeType, "size": size}
    return out


def tricky_unicode() -> str:
    controls = "".join(chr(i) for i in range(1, 32)) + "\x7f\x85"
    return (
        "emoji 😀👩‍👩‍👧‍👦🇫🇷🏳️‍🌈 | combining e\u0301 a\u0308\u0323 Z\u0336\u0335 | "
        "RTL שלום עליכם مرحبا \u202eevil\u202c | "
        "separators [\u2028][\u2029][\u0085] bom[\ufeff] nbsp[\u00a0] zwsp[\u200b] | "
        'quotes "double" \'single\' `back` \\backslash\\ \\u0041 \\n literal | '
        "newlines a\nb\r\nc\rd\t| astral 𝄞 𠜎 | html </script><!-- & | "
        f"controls [{controls}] | end"
    )


async def sc_echo_big(c: Client, _args: list[str]) -> dict[str, Any]:
    pattern = "0123456789abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOPQRSTUVWXYZ_\n"
    big = (pattern * (1024 * 1024 // len(pattern) + 1))[: 1024 * 1024]
    tricky = tricky_unicode()
    unit = tricky.replace("\x00", "")
    big_unicode = unit * (1024 * 1024 // len(unit.encode("utf-8")) + 1)
    out: dict[str, Any] = {}
    for label, msg in (("ascii_1mib", big), ("tricky", tricky), ("unicode_1mib", big_unicode)):
        t0 = time.monotonic()
        got = await c.echo(msg)
        if got != msg:
            i = next((k for k, (a, b) in enumerate(zip(got, msg)) if a != b), min(len(got), len(msg)))
            raise CheckFailed(
                f"echo {label}: round trip differs at char {i} (sent {len(msg)} chars, got {len(got)}): "
                f"sent {msg[max(0, i - 10) : i + 10]!r} got {got[max(0, i - 10) : i + 10]!r}"
            )
        out[label] = {
            "chars": len(msg),
            "utf8_bytes": len(msg.encode("utf-8")),
            "sha256_16": digest(msg),
            "seconds": round(time.monotonic() - t0, 3),
        }
    return out


async def sc_progress(c: Client, _args: list[str]) -> dict[str, Any]:
    tools = await c.tools()
    if "trigger-long-running-operation" in tools:
        steps = 10
        name, args = "trigger-long-running-operation", {"duration": 2, "steps": steps}
    elif "long_running" in tools:  # py_server.py
        steps = 3
        name, args = "long_running", {"steps": steps}
    else:
        raise CheckFailed(f"no progress tool in tools/list: {tools}")
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    res = await c.call(name, args, progress_callback=on_progress)
    values = [p for p, _, _ in seen]
    check(len(seen) == steps, f"{name}: expected {steps} progress notifications before the result, got {len(seen)}: {seen}")
    check(all(a < b for a, b in zip(values, values[1:])), f"{name}: progress not increasing: {values}")
    check(values == [float(i) for i in range(1, steps + 1)], f"{name}: progress values {values}")
    check(all(t == steps for _, t, _ in seen), f"{name}: totals {[t for _, t, _ in seen]}")
    return {"tool": name, "steps": steps, "progress": values, "result": text_of(res)}


async def sc_sampling(c: Client, _args: list[str]) -> dict[str, Any]:
    tools = await c.tools()
    check("trigger-sampling-request" in tools, f"'trigger-sampling-request' missing (sampling declared?): {tools}")
    before = len(c.state.sampling_requests)
    prompt = "py_client sampling prompt \u00e9\u4e2d"
    res = await c.call("trigger-sampling-request", {"prompt": prompt, "maxTokens": 50})
    text = text_of(res)
    check(len(c.state.sampling_requests) == before + 1, f"sampling callback ran {len(c.state.sampling_requests) - before} times")
    req = c.state.sampling_requests[-1]
    check(prompt in req, f"sampling request does not carry the prompt: {req!r}")
    # The server embeds the client's answer with JSON.stringify, so compare JSON-escaped text too.
    canned_json = json.dumps(CANNED_SAMPLING_TEXT, ensure_ascii=False)[1:-1]
    check(CANNED_SAMPLING_TEXT in text or canned_json in text, f"canned sampling text not in tool result: {text!r}")
    return {"request_text": req, "result": text}


async def sc_elicitation(c: Client, _args: list[str]) -> dict[str, Any]:
    tools = await c.tools()
    check("trigger-elicitation-request" in tools, f"'trigger-elicitation-request' missing (elicitation declared?): {tools}")
    before = len(c.state.elicitation_requests)
    res = await c.call("trigger-elicitation-request", {})
    text = text_of(res)
    check(len(c.state.elicitation_requests) == before + 1, "elicitation callback did not run exactly once")
    for needle in ("- Name: Ada Lovelace", "- Agreed to terms: true", "- Email: ada@example.com",
                   "- Favorite Integer: 7", "- Favorite Number: 2.5"):
        check(needle in text, f"elicitation result lacks {needle!r}: {text!r}")
    return {"request_message": c.state.elicitation_requests[-1], "result": text}


async def sc_roots(c: Client, _args: list[str]) -> dict[str, Any]:
    # server-everything asks roots/list by itself ~350 ms after notifications/initialized.
    with anyio.fail_after(15):
        await c.state.roots_requested.wait()
    tools = await c.tools()
    check("get-roots-list" in tools, f"'get-roots-list' missing (roots declared?): {tools}")
    text = text_of(await c.call("get-roots-list", {}))
    check(ROOT_URI in text and ROOT_NAME in text, f"get-roots-list does not show our root: {text!r}")
    return {"roots_list_requests": c.state.roots_requests, "result": text.splitlines()[0]}


async def sc_concurrent(c: Client, _args: list[str]) -> dict[str, Any]:
    n = 16
    msgs = [f"concurrent #{i} " + ("x" * (i * 997)) + f" end #{i} \u00e9" for i in range(n)]
    t0 = time.monotonic()
    got = await asyncio.gather(*(c.echo(m) for m in msgs))
    for i, (m, g) in enumerate(zip(msgs, got)):
        check(m == g, f"concurrent echo #{i}: got the answer for another request ({g[:20]!r}...)")
    return {"calls": n, "seconds": round(time.monotonic() - t0, 3)}


async def sc_unknown_tool(c: Client, _args: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        res = await c.s.call_tool("no-such-tool-mcpsm", {"x": 1})
        check(bool(res.isError), f"unknown tool returned a non-error result: {text_of(res)!r}")
        out["error_kind"] = "isError"
        out["message"] = text_of(res)
    except McpError as e:
        out["error_kind"] = "jsonrpc"
        out["code"] = e.error.code
        out["message"] = e.error.message
    check(await c.echo("still alive") == "still alive", "echo after unknown tool failed")
    out["after"] = "echo ok"
    return out


async def sc_get_env(c: Client, args: list[str]) -> dict[str, Any]:
    env = json.loads(text_of(await c.call("get-env", {})))
    if args:
        env = {k: env.get(k) for k in args}
    return {"env": env}


async def sc_memory_create(c: Client, args: list[str]) -> dict[str, Any]:
    name = args[0]
    res = await c.call(
        "create_entities",
        {"entities": [{"name": name, "entityType": "mcpsm-test", "observations": [f"created by py_client pid {os.getpid()}"]}]},
    )
    created = [e["name"] for e in (res.structuredContent or {}).get("entities", [])]
    if not created:  # older servers: JSON text only
        created = [e["name"] for e in json.loads(text_of(res))]
    return {"created": created}


async def sc_memory_read(c: Client, args: list[str]) -> dict[str, Any]:
    name = args[0]
    res = await c.call("read_graph", {})
    graph = res.structuredContent or json.loads(text_of(res))
    names = [e["name"] for e in graph.get("entities", [])]
    check(name in names, f"read_graph: entity {name!r} not in {names}")
    return {"entities": names}


async def wait_for_go(go_file: str) -> None:
    """Tells the test we are at the checkpoint (GO_FILE.waiting), then waits for GO_FILE."""
    with open(go_file + ".waiting", "w") as f:
        f.write(str(os.getpid()))
    with anyio.fail_after(90):
        while not os.path.exists(go_file):
            await anyio.sleep(0.02)


async def sc_survive_restart(c: Client, args: list[str]) -> dict[str, Any]:
    # The test restarts the daemon while this session sits between two calls.
    check(await c.echo("before") == "before", "echo before the restart failed")
    await wait_for_go(args[0])
    t0 = time.monotonic()
    check(await c.echo("after") == "after", "echo after the restart failed")
    return {"after_seconds": round(time.monotonic() - t0, 3)}


async def sc_in_flight_restart(c: Client, args: list[str]) -> dict[str, Any]:
    # The test kills the daemon while a long tool call runs: that call must fail with an
    # error (not hang), and the next call in the same session must work.
    started = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        started.set()

    out: dict[str, Any] = {}

    async def long_call() -> None:
        try:
            res = await c.s.call_tool(
                "trigger-long-running-operation",
                {"duration": 30, "steps": 30},
                progress_callback=on_progress,
            )
            out["long_call"] = "isError" if res.isError else "completed"
            out["message"] = text_of(res)
        except McpError as e:
            out["long_call"] = "error"
            out["code"] = e.error.code
            out["message"] = e.error.message

    async with anyio.create_task_group() as tg:
        tg.start_soon(long_call)
        with anyio.fail_after(30):
            await started.wait()
        await wait_for_go(args[0])
    check(out.get("long_call") == "error", f"the in-flight call should fail with an error: {out}")
    check(await c.echo("after") == "after", "echo after the restart failed")
    return out


SCENARIOS: dict[str, Callable[[Client, list[str]], Awaitable[dict[str, Any]]]] = {
    "basic": sc_basic,
    "echo-big": sc_echo_big,
    "progress": sc_progress,
    "sampling": sc_sampling,
    "elicitation": sc_elicitation,
    "roots": sc_roots,
    "concurrent": sc_concurrent,
    "unknown-tool": sc_unknown_tool,
    "get-env": sc_get_env,
    "memory-create": sc_memory_create,
    "memory-read": sc_memory_read,
    "survive-restart": sc_survive_restart,
    "in-flight-restart": sc_in_flight_restart,
}


# --------------------------------------------------------------------------- session plumbing


class State:
    def __init__(self, declare_roots: bool) -> None:
        self.declare_roots = declare_roots
        self.init: types.InitializeResult
        self.notifications: Counter[str] = Counter()
        self.bad_messages: list[str] = []
        self.sampling_requests: list[str] = []
        self.elicitation_requests: list[str] = []
        self.roots_requests = 0
        self.roots_requested = anyio.Event()
        self.current = CURRENT[0] = "initialize"


async def run(scenario: str, sargs: list[str], params: StdioServerParameters, timeout: float) -> dict[str, Any]:
    names = ALL_SCENARIOS if scenario == "all" else [scenario]
    state = State(declare_roots="roots" in names)

    async def sampling_cb(ctx: Any, p: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        texts = [m.content.text for m in p.messages if isinstance(m.content, types.TextContent)]
        state.sampling_requests.append("\n".join(texts))
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=CANNED_SAMPLING_TEXT),
            model="py-client-canned",
            stopReason="endTurn",
        )

    async def elicitation_cb(ctx: Any, p: types.ElicitRequestParams) -> types.ElicitResult:
        state.elicitation_requests.append(p.message)
        return types.ElicitResult(action="accept", content=dict(ELICIT_CONTENT))

    async def roots_cb(ctx: Any) -> types.ListRootsResult:
        state.roots_requests += 1
        state.roots_requested.set()
        return types.ListRootsResult(roots=[types.Root(uri=ROOT_URI, name=ROOT_NAME)])

    async def message_handler(msg: Any) -> None:
        if isinstance(msg, Exception):
            state.bad_messages.append(f"{type(msg).__name__}: {msg}")
        elif isinstance(msg, types.ServerNotification):
            state.notifications[msg.root.method] += 1

    out: dict[str, Any] = {"ok": False, "scenario": scenario, "results": {}}
    t0 = time.monotonic()
    t_close = t0
    async with stdio_client(params) as (read, write):
        async with ClientSession(
            read,
            write,
            read_timeout_seconds=timedelta(seconds=timeout),
            sampling_callback=sampling_cb,
            elicitation_callback=elicitation_cb,
            list_roots_callback=roots_cb if state.declare_roots else None,
            message_handler=message_handler,
            client_info=types.Implementation(name="mcpsm-py-client", version="0.1.0"),
        ) as session:
            state.init = await session.initialize()
            out["server_info"] = state.init.serverInfo.model_dump(exclude_none=True)
            out["protocol_version"] = state.init.protocolVersion
            out["capabilities"] = state.init.capabilities.model_dump(exclude_none=True)
            c = Client(session, state)
            for name in names:
                state.current = CURRENT[0] = name
                out["results"][name] = await SCENARIOS[name](c, sargs)
            state.current = CURRENT[0] = "shutdown"
            check(not state.bad_messages, f"unparseable messages from the server: {state.bad_messages[:3]}")
            t_close = time.monotonic()
    out["shutdown_s"] = round(time.monotonic() - t_close, 3)
    out["notifications"] = dict(state.notifications)
    out["elapsed_s"] = round(time.monotonic() - t0, 3)
    out["ok"] = True
    return out


def leaf(e: BaseException) -> BaseException:
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return e


def main() -> int:
    argv = sys.argv[1:]
    if "--" not in argv:
        print(__doc__, file=sys.stderr)
        print("py_client: usage error: missing `-- CMD [ARGS...]`", file=sys.stderr)
        return 2
    sep = argv.index("--")
    mine, cmd = argv[:sep], argv[sep + 1 :]
    ap = argparse.ArgumentParser(prog="py_client.py", add_help=True)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--default-env", action="store_true")
    ap.add_argument("scenario")
    ap.add_argument("args", nargs="*")
    try:
        ns = ap.parse_args(mine)
    except SystemExit:
        return 2
    if ns.scenario not in SCENARIO_ARGS:
        print(f"py_client: usage error: unknown scenario {ns.scenario!r}; known: {sorted(SCENARIO_ARGS)}", file=sys.stderr)
        return 2
    want = SCENARIO_ARGS[ns.scenario]
    if want is not None and len(ns.args) != want:
        print(f"py_client: usage error: scenario {ns.scenario} takes {want} argument(s), got {ns.args}", file=sys.stderr)
        return 2
    if not cmd:
        print("py_client: usage error: empty server command after --", file=sys.stderr)
        return 2

    params = StdioServerParameters(
        command=cmd[0], args=cmd[1:], env=None if ns.default_env else dict(os.environ)
    )
    result: dict[str, Any] = {}

    async def guarded() -> None:
        nonlocal result
        with anyio.fail_after(ns.timeout):
            result = await run(ns.scenario, ns.args, params, ns.timeout)

    try:
        anyio.run(guarded)
    except BaseException as exc:  # noqa: BLE001 - report everything, incl. groups
        e = leaf(exc)
        if isinstance(e, TimeoutError):
            print(f"py_client: FAIL: timeout after {ns.timeout:g}s in {CURRENT[0]} (scenario {ns.scenario})", file=sys.stderr)
            return 3
        if isinstance(e, KeyboardInterrupt):
            raise
        if not isinstance(e, CheckFailed):
            traceback.print_exception(exc, file=sys.stderr)
        print(f"py_client: FAIL: {CURRENT[0]} (scenario {ns.scenario}): {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
