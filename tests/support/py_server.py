#!/usr/bin/env python3
"""An MCP server built with the official Python SDK's FastMCP, for mcpsm's tests.

Usage:
    py_server.py --port P --mode json|sse|legacy-sse [--log-level LEVEL]
    py_server.py --mode stdio

Modes (always bound to 127.0.0.1):
    json        streamable HTTP at /mcp, plain application/json answers, stateless (no session
                id). Notifications tied to a request (progress) cannot be delivered here.
    sse         streamable HTTP at /mcp, SSE-framed answers, sessions (Mcp-Session-Id).
    legacy-sse  the old HTTP+SSE transport: GET /sse, POST /messages/?session_id=...
    stdio       newline-delimited JSON-RPC on stdin/stdout (no port)
With --tls-cert CERT --tls-key KEY the HTTP modes serve HTTPS.

Tools:
    echo(message: str) -> "Echo: <message>"          (same shape as server-everything)
    add(a: int, b: int) -> a + b                     (text plus structuredContent {"result": ...})
    long_running(steps: int = 3, delay: float = 0.1) -> reports progress 1..steps of steps
                                                     via ctx.report_progress, then "done N"
    counter() -> "N": how often it was called in this process (shows which sessions share one)

--port 0 picks a free port. Once the socket is bound it prints one line to stderr:
    py_server: listening on http://127.0.0.1:PORT/mcp     (or .../sse for legacy-sse)
Exits on SIGINT/SIGTERM (uvicorn's handlers, 1 s grace for open streams); exit code 2 on bad
arguments, 3 if it cannot start (e.g. port in use).
"""

from __future__ import annotations

import argparse
import sys

import anyio
import uvicorn
from mcp.server.fastmcp import Context, FastMCP


def build(mode: str, port: int, log_level: str) -> FastMCP:
    kwargs: dict = {"host": "127.0.0.1", "port": port, "log_level": log_level.upper()}
    if mode == "json":
        kwargs.update(json_response=True, stateless_http=True)
    mcp = FastMCP(f"mcpsm-py-server-{mode}", **kwargs)

    @mcp.tool()
    def echo(message: str) -> str:
        """Echoes back the input string."""
        return f"Echo: {message}"

    @mcp.tool()
    def add(a: int, b: int) -> int:
        """Adds two numbers."""
        return a + b

    calls = {"n": 0}

    @mcp.tool()
    def counter() -> str:
        """Counts its calls in this server process."""
        calls["n"] += 1
        return str(calls["n"])

    @mcp.tool()
    async def long_running(ctx: Context, steps: int = 3, delay: float = 0.1) -> str:
        """Reports progress `steps` times (progress 1..steps, total steps), then answers."""
        for i in range(1, steps + 1):
            await anyio.sleep(delay)
            await ctx.report_progress(i, steps, f"step {i} of {steps}")
        return f"done {steps}"

    return mcp


async def serve(mode: str, port: int, log_level: str) -> None:
    mcp = build(mode, port, log_level)
    app = mcp.sse_app() if mode == "legacy-sse" else mcp.streamable_http_app()
    path = mcp.settings.sse_path if mode == "legacy-sse" else mcp.settings.streamable_http_path
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level=log_level.lower(),
        timeout_graceful_shutdown=1,
        ssl_certfile=TLS.get("cert"),
        ssl_keyfile=TLS.get("key"),
    )
    server = uvicorn.Server(config)

    async def announce() -> None:
        while not server.started:
            await anyio.sleep(0.02)
        bound = server.servers[0].sockets[0].getsockname()[1]
        scheme = "https" if TLS else "http"
        print(f"py_server: listening on {scheme}://127.0.0.1:{bound}{path}", file=sys.stderr, flush=True)

    async with anyio.create_task_group() as tg:
        tg.start_soon(announce)
        await server.serve()
        tg.cancel_scope.cancel()


TLS: dict[str, str] = {}


def main() -> int:
    ap = argparse.ArgumentParser(prog="py_server.py", description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--mode", choices=["json", "sse", "legacy-sse", "stdio"], required=True)
    ap.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    ap.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate (with --tls-key)")
    ap.add_argument("--tls-key", help="the certificate's PEM private key")
    ns = ap.parse_args()
    if ns.tls_cert and ns.tls_key:
        TLS.update(cert=ns.tls_cert, key=ns.tls_key)
    if ns.mode == "stdio":
        build(ns.mode, 0, ns.log_level).run(transport="stdio")
        return 0
    try:
        anyio.run(serve, ns.mode, ns.port, ns.log_level)
    except BaseException as exc:  # noqa: BLE001 - unwrap task-group errors into one clear line
        e = exc
        while isinstance(e, BaseExceptionGroup) and e.exceptions:
            e = e.exceptions[0]
        if isinstance(e, KeyboardInterrupt):
            return 130
        if isinstance(e, SystemExit):  # uvicorn's startup failure (e.g. port in use), logged above
            print(f"py_server: failed to start on port {ns.port} (exit {e.code})", file=sys.stderr)
            return 3
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
