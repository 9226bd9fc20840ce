// Test-only preload: `node -r tests/support/loopback.cjs SERVER.js ...`
//
// Many MCP servers (server-everything among them) call `listen(PORT)` with no host, which binds
// every interface. This wraps net.Server.prototype.listen (http/https/express servers inherit it)
// so that a TCP listen without a host binds 127.0.0.1 (or $MCPSM_TEST_LISTEN_HOST) instead.
// Unix sockets, handles, fds and calls that already name a host are left alone.
//
// Once listening, it prints one line to stderr:
//   [loopback.cjs] listening on 127.0.0.1:PORT
// so a test can start a server with PORT=0 and read the real port from stderr.
"use strict";

const net = require("net");

const HOST = process.env.MCPSM_TEST_LISTEN_HOST || "127.0.0.1";
const origListen = net.Server.prototype.listen;

function isPortLike(v) {
  return (
    v === undefined ||
    v === null ||
    typeof v === "number" ||
    (typeof v === "string" && /^\s*\d+\s*$/.test(v))
  );
}

function withHost(args) {
  // listen() / listen(cb): ephemeral port, all interfaces -> loopback.
  if (args.length === 0 || typeof args[0] === "function") {
    return [{ port: 0, host: HOST }, ...args];
  }
  const first = args[0];
  // listen({port, host?, backlog?, ...}) — leave path/handle/fd forms alone.
  if (typeof first === "object" && first !== null) {
    const isTcp =
      first.path == null && first.handle == null && first._handle == null && first.fd == null;
    if (isTcp && (first.host == null || first.host === "")) {
      return [{ ...first, host: HOST }, ...args.slice(1)];
    }
    return args;
  }
  // listen(port[, host][, backlog][, cb]) with a numeric (or numeric-string) port.
  if (isPortLike(first)) {
    const rest = args.slice(1);
    if (typeof rest[0] === "string" && rest[0] !== "") return args; // host given
    if (rest.length > 0 && (rest[0] == null || rest[0] === "")) rest[0] = HOST; // listen(p, undefined, cb)
    else rest.unshift(HOST); // listen(p), listen(p, cb), listen(p, backlog, cb)
    return [first == null ? 0 : first, ...rest];
  }
  // listen("/path/to/socket"), listen(handle), ...
  return args;
}

net.Server.prototype.listen = function listen(...args) {
  const patched = withHost(args);
  this.once("listening", () => {
    const a = this.address();
    if (a && typeof a === "object") {
      const host = a.family === "IPv6" ? `[${a.address}]` : a.address;
      process.stderr.write(`[loopback.cjs] listening on ${host}:${a.port}\n`);
    }
  });
  return origListen.apply(this, patched);
};
