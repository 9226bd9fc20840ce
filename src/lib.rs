//! mcpsm — MCP session manager.
//!
//! MCP clients start every MCP server as a child process over stdio, one copy per session.
//! mcpsm runs one daemon per server instead, shared by every session, and gives each session a
//! tiny stdio proxy that bridges to the daemon over HTTP:
//!
//! ```text
//!   MCP client A (stdio)            MCP client B (stdio)
//!         │                               │
//!   mcpsm proxy --target memory     mcpsm proxy --target memory      one per client session
//!         │                               │
//!         ▼                               ▼
//!       ════ daemon "memory" (HTTP on 127.0.0.1:3100) ════           one per MCP server
//!            streamable HTTP | legacy SSE
//! ```
//!
//! Modules, top to bottom (dependencies point down):
//! - [`cli`]: the clap types, nothing else.
//! - [`cmd`]: one module per subcommand; `proxy` is the stdio bridge.
//! - [`transport`]: one client session with a daemon over streamable HTTP or legacy SSE,
//!   plus stdio framing and SSE decoding.
//! - [`host`]: the stdio host, which serves a stdio-only MCP server as an HTTP daemon.
//! - [`supervise`]: the manager's side: daemon processes, their actors, state and API client.
//! - [`clients`]: MCP clients' config files: where they are, reading servers, writing proxies.
//! - [`guard`]: DNS-rebinding protection for mcpsm's HTTP servers.
//! - [`demo`]: the built-in demo MCP server (the default daemon `demo`, tests, benchmarks).
//! - [`config`]: the TOML daemon registry, its defaults and validation.
//! - [`jsonrpc`]: the message envelope: exact bytes plus id and method.
//! - [`metrics`]: request counters where requests pass, and the Prometheus text format.
//! - [`paths`]: where mcpsm keeps its files.
//! - [`platform`]: the one seam for what differs between Linux, macOS and Windows.
//! - [`serve`]: how every mcpsm HTTP server accepts connections (TCP_NODELAY, timeouts).

pub mod auth;
pub mod cli;
pub mod clients;
pub mod cmd;
pub mod config;
pub mod demo;
pub mod guard;
pub mod host;
pub mod jsonrpc;
pub mod metrics;
pub mod paths;
pub mod platform;
pub mod serve;
pub mod supervise;
pub mod transport;
