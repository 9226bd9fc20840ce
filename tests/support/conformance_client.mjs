#!/usr/bin/env node
// MCP host driver for the conformance suite's *client* scenarios, run through a stdio proxy.
//
//   conformance client --scenario S \
//     --command "node tests/support/conformance_client.mjs /path/to/mcpsm proxy"
//
// With `--direct` instead of a proxy command, the same host talks to the mock server with the
// SDK's own StreamableHTTPClientTransport: the reference a run through the proxy is compared to.
//
// The suite appends its mock server's URL as the LAST argument and sets
// MCP_CONFORMANCE_SCENARIO. Everything between this script and the URL is the proxy command:
// it is spawned as `PROXY_CMD... --url URL` (or, if some argument contains `{url}`, with that
// placeholder replaced instead of appending `--url URL`). This script is the MCP host: the
// official TS SDK Client over StdioClientTransport, talking to the proxy, which talks HTTP to
// the mock server.
//
// Scenarios:
//   initialize                            connect, tools/list, close
//   tools_call                            call add_numbers {a: 5, b: 3}, expect 8 in the answer
//   sse-retry                             call test_reconnection (the answer arrives on the GET
//                                         stream the proxy must reopen after `retry` ms with
//                                         Last-Event-ID)
//   elicitation-sep1034-client-defaults   declare elicitation; accept each elicitation/create
//                                         with the requested schema's defaults; call the first
//                                         tool
//   auth/*                                the proxy authorizes (OAuth) on the first 401: this
//                                         script sets MCPSM_OAUTH_OPENER to oauth_opener.mjs
//                                         (a headless browser that follows the redirects to
//                                         the proxy's listener), passes the scenario's
//                                         pre-registered client from MCP_CONFORMANCE_CONTEXT
//                                         as MCPSM_OAUTH_CLIENT_ID/SECRET and the suite's
//                                         client metadata document URL; then connects, lists
//                                         tools and calls the first one
//                                         The extension scenarios' inputs become mcpsm's
//                                         options: MCPSM_OAUTH_GRANT (client-credentials,
//                                         jwt-bearer, id-jag), the key / workload JWT / ID
//                                         token written to 0600 files (MCPSM_OAUTH_*_FILE),
//                                         MCPSM_OAUTH_IDP_*, MCPSM_OAUTH_DPOP. At 2026-07-28
//                                         (MCP_CONFORMANCE_PROTOCOL_VERSION) the mock is
//                                         sessionless and refuses `initialize`: the same
//                                         environment goes to sessionless_client.py instead
//   anything else                         connect, tools/list, close (logged as unknown)
//
// The proxy's stderr passes through. Exit code 0 when the scenario's own expectations hold,
// 1 otherwise (message on stderr prefixed "conformance_client: FAIL"), 2 on usage errors. The
// suite itself judges the protocol; this exit code only makes a broken driver visible.
import { spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const TAG = "conformance_client";
const log = (...a) => console.error(`${TAG}:`, ...a);

async function loadSdk() {
  const subpaths = ["client/index.js", "client/stdio.js", "types.js", "client/streamableHttp.js"];
  const tries = [
    (p) => import(`@modelcontextprotocol/sdk/${p}`), // tests/support/node_modules
    (p) => {
      // the conformance package's own dependency, if only that one is installed
      const req = createRequire(new URL("./conformance/node_modules/@modelcontextprotocol/conformance/package.json", import.meta.url));
      return import(pathToFileURL(req.resolve(`@modelcontextprotocol/sdk/${p}`)).href);
    },
  ];
  let last;
  for (const t of tries) {
    try {
      const [client, stdio, types, http] = await Promise.all(subpaths.map(t));
      return {
        Client: client.Client,
        StdioClientTransport: stdio.StdioClientTransport,
        StreamableHTTPClientTransport: http.StreamableHTTPClientTransport,
        types,
      };
    } catch (e) {
      last = e;
    }
  }
  throw new Error(`cannot load @modelcontextprotocol/sdk (run tests/support/setup.sh): ${last}`);
}

function defaultsFor(schema) {
  const out = {};
  for (const [k, v] of Object.entries(schema?.properties ?? {})) {
    if (v && Object.hasOwn(v, "default")) out[k] = v.default;
  }
  return out;
}

function textOf(result) {
  return (result?.content ?? []).filter((c) => c.type === "text").map((c) => c.text).join("\n");
}

class Fail extends Error {}
const expect = (cond, msg) => {
  if (!cond) throw new Fail(msg);
};

async function main() {
  const argv = process.argv.slice(2);
  if (argv.length < 2) {
    log("usage: conformance_client.mjs PROXY_CMD [ARGS...] URL   (URL is appended by the suite)");
    return 2;
  }
  const url = argv[argv.length - 1];
  const direct = argv[0] === "--direct";
  let cmd = argv.slice(0, -1);
  if (cmd.some((a) => a.includes("{url}"))) cmd = cmd.map((a) => a.replaceAll("{url}", url));
  else cmd = [...cmd, "--url", url];
  const scenario = process.env.MCP_CONFORMANCE_SCENARIO ?? "initialize";
  log(`scenario ${scenario}: ${direct ? `directly to ${url}` : `spawning ${JSON.stringify(cmd)}`}`);

  const { Client, StdioClientTransport, StreamableHTTPClientTransport, types } = await loadSdk();
  const elicitations = [];
  const client = new Client(
    { name: "mcpsm-conformance-driver", version: "0.1.0" },
    { capabilities: scenario.startsWith("elicitation") ? { elicitation: { form: { applyDefaults: true } } } : {} },
  );
  if (scenario.startsWith("elicitation")) {
    client.setRequestHandler(types.ElicitRequestSchema, async (req) => {
      const content = defaultsFor(req.params.requestedSchema);
      elicitations.push({ message: req.params.message, content });
      log(`elicitation/create "${req.params.message}" -> accept ${JSON.stringify(content)}`);
      return { action: "accept", content };
    });
  }
  const env = { ...process.env }; // the SDK would otherwise pass only HOME, PATH, ...
  if (scenario.startsWith("auth/")) {
    const opener = new URL("./oauth_opener.mjs", import.meta.url).pathname;
    env.MCPSM_OAUTH_OPENER ??= `${process.execPath} ${opener}`;
    env.MCPSM_OAUTH_CLIENT_METADATA_URL ??= "https://conformance-test.local/client-metadata.json";
    const context = JSON.parse(process.env.MCP_CONFORMANCE_CONTEXT ?? "{}");
    if (context.client_id) env.MCPSM_OAUTH_CLIENT_ID = context.client_id;
    if (context.client_secret) env.MCPSM_OAUTH_CLIENT_SECRET = context.client_secret;
    // The extension scenarios' inputs, as a user of such a server would configure mcpsm.
    const secretFile = (name, text) => {
      const dir = mkdtempSync(join(tmpdir(), "mcpsm-conformance-"));
      const file = join(dir, name);
      writeFileSync(file, text, { mode: 0o600 });
      return file;
    };
    if (scenario.startsWith("auth/client-credentials")) env.MCPSM_OAUTH_GRANT = "client-credentials";
    if (context.private_key_pem) env.MCPSM_OAUTH_PRIVATE_KEY_FILE = secretFile("key.pem", context.private_key_pem);
    if (context.signing_algorithm) env.MCPSM_OAUTH_SIGNING_ALG = context.signing_algorithm;
    if (context.idp_id_token) {
      env.MCPSM_OAUTH_GRANT = "id-jag";
      env.MCPSM_OAUTH_ID_TOKEN_FILE = secretFile("id-token", context.idp_id_token);
      env.MCPSM_OAUTH_IDP_TOKEN_ENDPOINT = context.idp_token_endpoint;
      if (context.idp_client_id) env.MCPSM_OAUTH_IDP_CLIENT_ID = context.idp_client_id;
    }
    if (context.valid_jwt) {
      env.MCPSM_OAUTH_GRANT = "jwt-bearer";
      env.MCPSM_OAUTH_ASSERTION_FILE = secretFile("workload.jwt", context.valid_jwt);
    }
    if (scenario.startsWith("auth/dpop")) env.MCPSM_OAUTH_DPOP = "true";
  }
  // 2026-07-28 mocks are sessionless (no initialize): a raw sessionless host drives them.
  if (process.env.MCP_CONFORMANCE_PROTOCOL_VERSION === "2026-07-28" && !direct) {
    const host = new URL("./sessionless_client.py", import.meta.url).pathname;
    const child = spawnSync("python3", [host, ...argv], { env, stdio: "inherit" });
    return child.status ?? 1;
  }
  const transport = direct
    ? new StreamableHTTPClientTransport(new URL(url))
    : new StdioClientTransport({
        command: cmd[0],
        args: cmd.slice(1),
        env,
        stderr: "inherit",
      });
  const opts = { timeout: 25_000 }; // the suite kills us after 30 s by default
  try {
    await client.connect(transport, opts);
    const sv = client.getServerVersion();
    log(`connected: server ${sv?.name} ${sv?.version}`);
    const tools = (await client.listTools(undefined, opts)).tools;
    log(`tools: ${tools.map((t) => t.name).join(", ") || "(none)"}`);
    const call = async (name, args) => {
      const res = await client.callTool({ name, arguments: args }, undefined, opts);
      log(`${name} -> ${JSON.stringify(res).slice(0, 500)}`);
      expect(!res.isError, `${name} returned isError: ${textOf(res)}`);
      return res;
    };
    switch (scenario) {
      case "initialize":
        break;
      case "tools_call": {
        expect(tools.some((t) => t.name === "add_numbers"), "tool add_numbers not listed");
        const res = await call("add_numbers", { a: 5, b: 3 });
        expect(/\b8\b/.test(textOf(res)), `add_numbers(5, 3) answered ${JSON.stringify(textOf(res))}`);
        break;
      }
      case "sse-retry": {
        expect(tools.some((t) => t.name === "test_reconnection"), "tool test_reconnection not listed");
        const res = await call("test_reconnection", {});
        expect(textOf(res).includes("Reconnection test completed"), `unexpected answer ${JSON.stringify(textOf(res))}`);
        break;
      }
      default:
        if (scenario.startsWith("auth/")) {
          expect(tools.length > 0, "no tools listed");
          const res = await call(tools[0].name, {});
          log(`answer: ${textOf(res)}`);
        } else if (scenario.startsWith("elicitation")) {
          expect(tools.length > 0, "no tools listed");
          const res = await call(tools[0].name, {});
          expect(elicitations.length > 0, "the server sent no elicitation/create");
          log(`answer: ${textOf(res)}`);
        } else {
          log(`unknown scenario ${scenario}: only connected and listed tools`);
        }
    }
  } finally {
    await client.close().catch((e) => log(`close: ${e}`));
  }
  log("ok");
  return 0;
}

main().then(
  (code) => process.exit(code),
  (e) => {
    console.error(`${TAG}: FAIL: ${e instanceof Fail ? e.message : e?.stack ?? e}`);
    process.exit(1);
  },
);
