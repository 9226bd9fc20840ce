//! Benchmark harness: what `mcpsm proxy` costs, measured side by side with the peer
//! stdio→HTTP proxies (`mcp-proxy`, `mcp-remote`, `supergateway`) on the same upstream, with
//! the same client, in one interleaved run.
//!
//! This is a measuring tool, not a test: nothing here asserts on timings. `bash bench/run.sh`
//! installs the pinned peers, builds mcpsm in release mode, runs this harness and writes
//! `BENCHMARKS.md` and `bench/results.json`; `--smoke` (CI) runs mcpsm alone against the demo
//! upstream and the mcpsm-only sections for a few dozen calls, prints to stdout only, and fails
//! only if a call fails.
//!
//! Beside the proxies on HTTP upstreams, mcpsm alone gets these sections (`--only NAME` runs
//! one of the last three alone; `--skip-managed` skips all but the stdio-host one):
//! - the manager path: cold start of `mcpsm proxy --target`, warm start, recovery after the
//!   daemon is killed;
//! - `managed-http`: one session to a managed HTTP daemon (`mcpsm demo-server`, already
//!   running) through direct HTTP, `mcpsm proxy --url` and `mcpsm proxy --target demo`, with
//!   the manager's and the daemon's CPU per call over each contender's calls;
//! - `stdio-host`: a stdio-only server spawned by the client itself against the same command as
//!   a `transport = "stdio"` registry daemon reached through `mcpsm proxy --target`;
//! - `scale-target`: the largest `--sessions` count of `mcpsm proxy --target` sessions at once
//!   (`--session-calls` calls each), to the HTTP demo daemon and to a stdio daemon behind the
//!   stdio host, with the CPU per call of the proxies, the manager, the host and the server.
//!
//! How it measures:
//! - The client is a minimal MCP stdio client written here: it spawns a contender's command,
//!   sends `initialize` + `notifications/initialized`, then `tools/call echo` round trips, one
//!   at a time per session. `direct` is this harness's own HTTP client POSTing to the upstream
//!   (the floor every proxy adds to).
//! - Contenders run in one process group each; CPU is the on-CPU time of every thread of every
//!   process in that group (`/proc/PID/task/TID/schedstat`, nanoseconds; `utime+stime` from
//!   `/proc/PID/stat` is kept in the JSON as a cross-check), RSS is `VmHWM`/`VmRSS` from
//!   `/proc/PID/status` summed over the group (so `npx` → `node` would count both).
//! - Sequential latency runs in rounds: each round gives every contender one block of calls,
//!   in a rotating order, so a noisy neighbour hits every contender alike.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use bytes::Bytes;
use clap::Parser;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const PROTOCOL_VERSION: &str = "2025-06-18";
const SHORT_MESSAGE: &str = "hello from the mcpsm benchmark";
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const LARGE_CALL_TIMEOUT: Duration = Duration::from_secs(30);
const OPEN_TIMEOUT: Duration = Duration::from_secs(90);
const WARMUP_CALLS: usize = 20;
const MIB: usize = 1024 * 1024;
/// A "N MiB" echo carries N MiB less this, so the whole JSON-RPC line stays under N MiB (the
/// TypeScript SDK's stdio transport, used by mcp-remote and supergateway, silently drops lines
/// over 10 MiB).
const LARGE_ENVELOPE_ROOM: usize = 1024;
/// server-everything refuses request bodies over 4 MiB (HTTP 413).
const EVERYTHING_BODY_LIMIT: usize = 4 * MIB;
/// Sessions opened at once in the many-session runs (Node and Python start slowly).
const SPAWN_PARALLELISM: usize = 4;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "bench",
    about = "Measure mcpsm proxy side by side with peer stdio->HTTP MCP proxies (see BENCHMARKS.md)"
)]
struct Args {
    /// CI smoke run: mcpsm and direct only, demo upstream and the mcpsm-only sections, a few
    /// dozen calls, stdout only; exits non-zero only if a call fails
    #[arg(long)]
    smoke: bool,
    /// Soak run instead of the benchmark: `--soak-calls` calls through one `mcpsm proxy
    /// --target demo` session under a real manager, printing the proxy's and the manager's RSS
    /// at the start, the middle and the end (minutes; not for CI)
    #[arg(long)]
    soak: bool,
    /// Calls in the soak run
    #[arg(long, default_value_t = 50_000)]
    soak_calls: usize,
    /// The mcpsm binary [default: `mcpsm` in the target directory this harness was built in]
    #[arg(long)]
    mcpsm: Option<PathBuf>,
    /// Where bench/setup.sh installed the peers (node_modules/, .venv/) [default: <repo>/bench]
    #[arg(long)]
    peers: Option<PathBuf>,
    /// server-everything's dist/index.js [default: the one under tests/support/node_modules]
    #[arg(long)]
    everything: Option<PathBuf>,
    /// The loopback preload for Node servers [default: tests/support/loopback.cjs]
    #[arg(long)]
    loopback: Option<PathBuf>,
    /// Sequential calls per contender and upstream in the one-session run
    #[arg(long, default_value_t = 1000)]
    calls: usize,
    /// Rounds the one-session calls are split into (contenders take turns each round)
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Spawn → initialize measurements per contender and upstream
    #[arg(long, default_value_t = 5)]
    spawns: usize,
    /// Concurrent-session counts to run
    #[arg(long, value_delimiter = ',', default_value = "32,64")]
    sessions: Vec<usize>,
    /// Sequential calls per session in the concurrent-session runs
    #[arg(long, default_value_t = 40)]
    session_calls: usize,
    /// Upstreams: demo (mcpsm demo-server, fast), everything (server-everything, real)
    #[arg(long, value_delimiter = ',', default_value = "demo,everything")]
    upstreams: Vec<String>,
    /// Contenders: pipe (`cat`, the floor of the stdio hop), direct, mcpsm, mcp-proxy,
    /// mcp-remote, supergateway
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "pipe,direct,mcpsm,mcp-proxy,mcp-remote,supergateway"
    )]
    contenders: Vec<String>,
    /// Upstreams on which the peers also get the concurrent-session runs (each needs dozens of
    /// Node or Python processes started)
    #[arg(long, value_delimiter = ',', default_value = "demo")]
    peer_scale_upstreams: Vec<String>,
    /// Large echo sizes in MiB
    #[arg(long, value_delimiter = ',', default_value = "1,10")]
    large_mib: Vec<usize>,
    /// Repetitions of the mcpsm-only cold start and recovery measurements
    #[arg(long, default_value_t = 3)]
    managed_reps: usize,
    /// Skip the mcpsm-only manager measurements (cold start, warm --target, recovery, the
    /// managed-http and scale-target sections)
    #[arg(long)]
    skip_managed: bool,
    /// Run only this section: `stdio-host` (a stdio-only server spawned directly vs shared
    /// through `mcpsm proxy --target`; `--calls` and `--rounds` apply), `managed-http` (one
    /// session to a managed HTTP daemon: direct vs `--url` vs `--target`, with the manager's
    /// CPU; `--calls` and `--rounds` apply), `scale-target` (the largest `--sessions` count of
    /// `--target` sessions at once, `--session-calls` each, to an HTTP and a stdio daemon: CPU
    /// per call of the proxies, the manager, the stdio host and the server)
    #[arg(long, value_enum)]
    only: Option<Section>,
    /// Skip the stdio-host section
    #[arg(long)]
    skip_stdio_host: bool,
    /// Stdio servers of the stdio-host section: everything (server-everything's stdio mode),
    /// echo (this harness's own minimal stdio server, which costs next to nothing)
    #[arg(long, value_delimiter = ',', default_value = "everything,echo")]
    stdio_servers: Vec<String>,
    /// Serve a minimal stdio MCP server (tool `echo`) on stdin/stdout instead of measuring:
    /// the `echo` stdio server of the stdio-host section
    #[arg(long, hide = true)]
    serve_stdio_echo: bool,
    /// Also measure another mcpsm build or configuration beside the main one, e.g.
    /// `--variant new=/tmp/mcpsm` or `--variant x=target/release/mcpsm,SOME_ENV=1` (repeatable)
    #[arg(long)]
    variant: Vec<String>,
    /// Write the raw results here (JSON)
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the markdown report here
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// The command that reproduces this run, for the report
    #[arg(long, default_value = "bash bench/run.sh")]
    reproduce: String,
}

/// A section `--only` runs.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Section {
    /// A stdio-only server spawned directly vs shared through `mcpsm proxy --target`
    StdioHost,
    /// One session to a managed HTTP daemon: direct vs `mcpsm proxy --url` vs `--target`
    ManagedHttp,
    /// Many `mcpsm proxy --target` sessions at once, to an HTTP and a stdio daemon
    ScaleTarget,
}

impl Args {
    fn apply_smoke(&mut self) {
        self.contenders = vec!["pipe".into(), "direct".into(), "mcpsm".into()];
        self.upstreams = vec!["demo".into()];
        self.calls = 40;
        self.rounds = 2;
        self.spawns = 2;
        self.sessions = vec![8];
        self.session_calls = 5;
        self.large_mib = vec![1];
        self.managed_reps = 1;
    }
}

// ---------------------------------------------------------------------------------------------
// Contenders and upstreams

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Peer {
    /// Not a proxy: `cat` echoing the request line, the floor of the stdio hop alone.
    Pipe,
    Direct,
    /// A stdio server spawned by the client itself (the stdio-host section's floor).
    DirectStdio,
    Mcpsm,
    McpProxy,
    McpRemote,
    Supergateway,
    /// Another mcpsm build or configuration (`--variant`), by index.
    Variant(usize),
}

impl Peer {
    fn parse(name: &str) -> Result<Peer> {
        Ok(match name.trim() {
            "pipe" => Peer::Pipe,
            "direct" => Peer::Direct,
            "mcpsm" => Peer::Mcpsm,
            "mcp-proxy" => Peer::McpProxy,
            "mcp-remote" => Peer::McpRemote,
            "supergateway" => Peer::Supergateway,
            other => bail!(
                "unknown contender `{other}` (known: pipe, direct, mcpsm, mcp-proxy, mcp-remote, supergateway)"
            ),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Peer::Pipe => "pipe (cat)",
            Peer::Direct => "direct",
            Peer::DirectStdio => "direct stdio",
            Peer::Mcpsm => "mcpsm",
            Peer::McpProxy => "mcp-proxy",
            Peer::McpRemote => "mcp-remote",
            Peer::Supergateway => "supergateway",
            Peer::Variant(_) => "mcpsm variant",
        }
    }

    /// Speaks MCP (everything but the `cat` floor).
    fn is_mcp(self) -> bool {
        self != Peer::Pipe
    }

    fn is_peer(self) -> bool {
        matches!(self, Peer::McpProxy | Peer::McpRemote | Peer::Supergateway)
    }
}

/// How to start a stdio contender.
#[derive(Clone, Debug)]
struct Launch {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Launch {
    fn display(&self, ctx: &Ctx) -> String {
        let mut out = String::new();
        for (k, v) in &self.env {
            let _ = write!(out, "{k}={} ", shorten(v, ctx));
        }
        out.push_str(&shorten(&self.program.to_string_lossy(), ctx));
        for a in &self.args {
            out.push(' ');
            out.push_str(&shorten(a, ctx));
        }
        out
    }
}

/// Paths relative to the repository, URLs with their port elided, for the report.
fn shorten(text: &str, ctx: &Ctx) -> String {
    let repo = format!("{}/", ctx.repo.display());
    let mut out = text.replace(&repo, "");
    if let Some(rest) = out.strip_prefix("http://127.0.0.1:") {
        if let Some(slash) = rest.find('/') {
            out = format!("http://127.0.0.1:PORT{}", &rest[slash..]);
        }
    }
    out
}

#[derive(Clone, Debug)]
struct Contender {
    peer: Peer,
    name: String,
    /// `None` for `direct`.
    launch: Option<Launch>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UpstreamKind {
    Demo,
    Everything,
}

impl UpstreamKind {
    fn parse(name: &str) -> Result<UpstreamKind> {
        match name.trim() {
            "demo" => Ok(UpstreamKind::Demo),
            "everything" => Ok(UpstreamKind::Everything),
            other => bail!("unknown upstream `{other}` (known: demo, everything)"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            UpstreamKind::Demo => "demo",
            UpstreamKind::Everything => "everything",
        }
    }

    fn title(self) -> &'static str {
        match self {
            UpstreamKind::Demo => "Fast upstream: `mcpsm demo-server` (JSON answers)",
            UpstreamKind::Everything => {
                "Real upstream: `@modelcontextprotocol/server-everything streamableHttp` (SSE answers)"
            }
        }
    }
}

/// Everything the measurements share.
struct Ctx {
    args: Args,
    repo: PathBuf,
    mcpsm: PathBuf,
    peers: PathBuf,
    everything: PathBuf,
    loopback: PathBuf,
    /// This harness's own executable (the `echo` stdio server of the stdio-host section).
    harness: PathBuf,
    scratch: tempfile::TempDir,
    http: reqwest::Client,
    logs: AtomicU64,
    clock_ticks: u64,
    variants: Vec<Variant>,
}

/// `--variant LABEL=PATH[,KEY=VALUE...]`: another mcpsm measured beside the main one.
#[derive(Clone, Debug)]
struct Variant {
    label: String,
    program: PathBuf,
    env: Vec<(String, String)>,
}

impl Variant {
    fn parse(text: &str) -> Result<Variant> {
        let mut parts = text.split(',');
        let head = parts.next().unwrap_or_default();
        let (label, path) = head
            .split_once('=')
            .with_context(|| format!("--variant `{text}`: expected LABEL=PATH[,KEY=VALUE...]"))?;
        let program = std::fs::canonicalize(path)
            .with_context(|| format!("--variant `{text}`: {path} does not exist"))?;
        let env = parts
            .map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .with_context(|| format!("--variant `{text}`: `{kv}` is not KEY=VALUE"))
            })
            .collect::<Result<_>>()?;
        Ok(Variant {
            label: label.to_owned(),
            program,
            env,
        })
    }
}

impl Ctx {
    fn contender(&self, peer: Peer, url: &str) -> Contender {
        let bin = |name: &str| self.peers.join("node_modules/.bin").join(name);
        let name = match peer {
            Peer::Variant(i) => format!("mcpsm[{}]", self.variants[i].label),
            _ => peer.name().to_owned(),
        };
        let launch = match peer {
            Peer::Variant(i) => Some(Launch {
                program: self.variants[i].program.clone(),
                args: vec![
                    "proxy".into(),
                    "--url".into(),
                    url.into(),
                    "--transport".into(),
                    "streamable-http".into(),
                ],
                env: self.variants[i].env.clone(),
            }),
            Peer::Direct | Peer::DirectStdio => None,
            Peer::Pipe => Some(Launch {
                program: PathBuf::from("cat"),
                args: vec![],
                env: vec![],
            }),
            Peer::Mcpsm => Some(Launch {
                program: self.mcpsm.clone(),
                args: vec![
                    "proxy".into(),
                    "--url".into(),
                    url.into(),
                    "--transport".into(),
                    "streamable-http".into(),
                ],
                env: vec![],
            }),
            Peer::McpProxy => Some(Launch {
                program: self.peers.join(".venv/bin/mcp-proxy"),
                args: vec![
                    "--transport".into(),
                    "streamablehttp".into(),
                    "--log-level".into(),
                    "WARNING".into(),
                    url.into(),
                ],
                env: vec![],
            }),
            Peer::McpRemote => Some(Launch {
                program: bin("mcp-remote"),
                args: vec![
                    url.into(),
                    "--transport".into(),
                    "http-only".into(),
                    "--silent".into(),
                ],
                env: vec![],
            }),
            Peer::Supergateway => Some(Launch {
                program: bin("supergateway"),
                args: vec![
                    "--streamableHttp".into(),
                    url.into(),
                    "--logLevel".into(),
                    "none".into(),
                ],
                env: vec![],
            }),
        };
        Contender { peer, name, launch }
    }

    /// `mcpsm proxy --target NAME` with the registry in `home`.
    fn target_launch(&self, home: &Path, name: &str) -> Launch {
        Launch {
            program: self.mcpsm.clone(),
            args: vec!["proxy".into(), "--target".into(), name.into()],
            env: vec![
                ("MCPSM_HOME".into(), home.to_string_lossy().into_owned()),
                ("HOME".into(), home.to_string_lossy().into_owned()),
            ],
        }
    }

    /// A child's environment: no proxies for loopback traffic, a scratch HOME.
    fn command(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        for var in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
            "RUST_LOG",
            "NODE_OPTIONS",
            "MCPSM_REGISTRY",
        ] {
            command.env_remove(var);
        }
        let home = self.scratch.path().join("home");
        command
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost")
            .env("HOME", &home)
            .env("MCPSM_HOME", self.scratch.path().join("mcpsm-home"))
            .env(
                "MCP_REMOTE_CONFIG_DIR",
                self.scratch.path().join("mcp-auth"),
            )
            .kill_on_drop(true);
        command
    }

    fn log_file(&self, label: &str) -> Result<(PathBuf, std::fs::File)> {
        let n = self.logs.fetch_add(1, Ordering::Relaxed);
        let path = self
            .scratch
            .path()
            .join("logs")
            .join(format!("{n:05}-{label}.log"));
        let file = std::fs::File::create(&path)
            .with_context(|| format!("creating the log file {}", path.display()))?;
        Ok((path, file))
    }

    fn smoke(&self) -> bool {
        self.args.smoke
    }
}

// ---------------------------------------------------------------------------------------------
// /proc: CPU and memory of a process group

mod procfs {
    use std::collections::HashMap;

    /// On-CPU time of a set of processes.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct Cpu {
        /// Sum of every thread's `schedstat` run time, in nanoseconds.
        pub sched_ns: u64,
        /// Sum of `utime + stime` of the processes, in clock ticks.
        pub ticks: u64,
    }

    impl Cpu {
        pub fn since(self, before: Cpu) -> Cpu {
            Cpu {
                sched_ns: self.sched_ns.saturating_sub(before.sched_ns),
                ticks: self.ticks.saturating_sub(before.ticks),
            }
        }

        pub fn add(&mut self, other: Cpu) {
            self.sched_ns += other.sched_ns;
            self.ticks += other.ticks;
        }
    }

    /// The fields of `/proc/PID/stat` after the command name (which may hold spaces).
    fn stat_fields(pid: i32) -> Option<Vec<String>> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &text[text.rfind(')')? + 1..];
        Some(rest.split_whitespace().map(str::to_owned).collect())
    }

    /// Every process, by process group.
    pub fn groups() -> HashMap<i32, Vec<i32>> {
        let mut out: HashMap<i32, Vec<i32>> = HashMap::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return out;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            // fields: state ppid pgrp ...
            let Some(fields) = stat_fields(pid) else {
                continue;
            };
            if let Some(pgrp) = fields.get(2).and_then(|s| s.parse::<i32>().ok()) {
                out.entry(pgrp).or_default().push(pid);
            }
        }
        out
    }

    /// The process group of a process.
    pub fn stat_group(pid: i32) -> Option<i32> {
        stat_fields(pid)?.get(2)?.parse().ok()
    }

    pub fn group(pgid: i32) -> Vec<i32> {
        groups().remove(&pgid).unwrap_or_default()
    }

    pub fn cpu(pids: &[i32]) -> Cpu {
        let mut total = Cpu::default();
        for &pid in pids {
            if let Some(fields) = stat_fields(pid) {
                // utime and stime are fields 14 and 15: indexes 11 and 12 after the name.
                let tick = |i: usize| {
                    fields
                        .get(i)
                        .and_then(|s| s.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                total.ticks += tick(11) + tick(12);
            }
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for task in tasks.flatten() {
                let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
                    continue;
                };
                if let Some(ns) = text
                    .split_whitespace()
                    .next()
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    total.sched_ns += ns;
                }
            }
        }
        total
    }

    /// A `/proc/PID/status` value in KiB (`VmHWM`, `VmRSS`), summed over `pids`.
    pub fn status_kib(pids: &[i32], key: &str) -> u64 {
        let mut total = 0;
        for &pid in pids {
            let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                continue;
            };
            for line in text.lines() {
                if let Some(rest) = line.strip_prefix(key) {
                    let rest = rest.trim_start_matches(':').trim();
                    if let Some(kib) = rest
                        .split_whitespace()
                        .next()
                        .and_then(|s| s.parse::<u64>().ok())
                    {
                        total += kib;
                    }
                }
            }
        }
        total
    }

    /// The state letter of a process (`Z` for a zombie), or `None` once it is gone.
    pub fn state(pid: i32) -> Option<char> {
        stat_fields(pid)?.first()?.chars().next()
    }

    /// The command line of a process, argument by argument (empty once it is gone).
    pub fn args(pid: i32) -> Vec<String> {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|raw| {
                raw.split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Processes whose command line contains every one of `words` as an argument.
    pub fn find_by_args(words: &[&str]) -> Vec<i32> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return out;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
            if words.iter().all(|w| args.contains(&w.as_bytes())) {
                out.push(pid);
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Sessions: the minimal MCP client

fn initialize_request(id: u64) -> Vec<u8> {
    let mut line = json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "initialize",
        "params": {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "mcpsm-bench", "version": env!("CARGO_PKG_VERSION")}
        }
    })
    .to_string()
    .into_bytes();
    line.push(b'\n');
    line
}

const INITIALIZED: &[u8] = b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n";

/// A `tools/call echo` request line; `message` is already a JSON string literal.
fn echo_request(id: u64, message: &str) -> Vec<u8> {
    let mut line = Vec::with_capacity(message.len() + 128);
    line.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    line.extend_from_slice(id.to_string().as_bytes());
    line.extend_from_slice(
        b",\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"message\":",
    );
    line.extend_from_slice(message.as_bytes());
    line.extend_from_slice(b"}}}\n");
    line
}

/// What came back for one request, checked after the clock stopped.
struct Reply {
    id: u64,
    body: Bytes,
    /// The body is an SSE stream (direct to an SSE-answering server).
    sse: bool,
    /// `cat`: the body is the request line itself, of this length.
    raw_len: Option<usize>,
}

impl Reply {
    /// The JSON-RPC response to our request.
    fn message(&self) -> Result<Value> {
        if !self.sse {
            return serde_json::from_slice(&self.body).context("the answer is not JSON");
        }
        let text = std::str::from_utf8(&self.body).context("the SSE answer is not UTF-8")?;
        let mut data = String::new();
        for line in text.split('\n').map(|l| l.trim_end_matches('\r')) {
            if let Some(rest) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
            } else if line.is_empty() && !data.is_empty() {
                if let Ok(message) = serde_json::from_str::<Value>(&data) {
                    if message.get("id").and_then(Value::as_u64) == Some(self.id) {
                        return Ok(message);
                    }
                }
                data.clear();
            }
        }
        if let Ok(message) = serde_json::from_str::<Value>(&data) {
            if message.get("id").and_then(Value::as_u64) == Some(self.id) {
                return Ok(message);
            }
        }
        bail!("no response with id {} in the SSE answer", self.id)
    }

    /// Checks that this is the echo of `expected`.
    fn check_echo(&self, expected: &str) -> Result<()> {
        if let Some(len) = self.raw_len {
            if self.body.len() != len {
                bail!("cat echoed {} bytes for a line of {len}", self.body.len());
            }
            return Ok(());
        }
        let message = self.message()?;
        let text = message
            .pointer("/result/content/0/text")
            .and_then(Value::as_str);
        match text {
            Some(text)
                if text.len() == expected.len() + 6 && text == format!("Echo: {expected}") =>
            {
                Ok(())
            }
            _ => bail!("unexpected answer: {}", excerpt(&message.to_string())),
        }
    }
}

fn excerpt(text: &str) -> String {
    let mut out: String = text.chars().take(300).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

/// A session through a stdio contender.
struct StdioSession {
    child: Child,
    pid: i32,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    line: Vec<u8>,
    next_id: u64,
    log: PathBuf,
    /// `cat`: the answer is the request line itself.
    raw: bool,
}

impl StdioSession {
    async fn spawn(ctx: &Ctx, launch: &Launch, label: &str) -> Result<StdioSession> {
        let (log, stderr) = ctx.log_file(label)?;
        let mut command = ctx.command(&launch.program);
        command
            .args(&launch.args)
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .process_group(0);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", launch.program.display()))?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .context("the child has no pid")?;
        let stdin = child.stdin.take().context("no stdin pipe")?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        Ok(StdioSession {
            child,
            pid,
            stdin: Some(stdin),
            stdout: BufReader::with_capacity(1 << 20, stdout),
            line: Vec::with_capacity(64 * 1024),
            next_id: 1,
            log,
            raw: false,
        })
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
        if tail.is_empty() {
            String::new()
        } else {
            format!(" (stderr: {})", excerpt(&tail))
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin already closed")?;
        stdin.write_all(bytes).await.context("writing to stdin")?;
        stdin.flush().await.context("flushing stdin")
    }

    /// Reads lines until the response to `id`; returns it and when its line arrived.
    /// Server→client requests are answered with an empty result; notifications are skipped.
    async fn read_response(&mut self, id: u64) -> Result<(Instant, Bytes)> {
        loop {
            self.line.clear();
            let n = self
                .stdout
                .read_until(b'\n', &mut self.line)
                .await
                .context("reading stdout")?;
            let arrived = Instant::now();
            if n == 0 {
                bail!("the contender closed stdout (it exited?)");
            }
            let message: Value = match serde_json::from_slice(&self.line) {
                Ok(v) => v,
                Err(e) => bail!(
                    "stdout carried a line that is not JSON ({e}): {}",
                    excerpt(&String::from_utf8_lossy(&self.line))
                ),
            };
            let msg_id = message.get("id");
            let method = message.get("method").and_then(Value::as_str);
            match (msg_id, method) {
                (Some(mid), None) if mid.as_u64() == Some(id) => {
                    return Ok((arrived, Bytes::from(std::mem::take(&mut self.line))));
                }
                (Some(mid), Some(_)) => {
                    let mut answer = json!({"jsonrpc": "2.0", "id": mid, "result": {}})
                        .to_string()
                        .into_bytes();
                    answer.push(b'\n');
                    self.write(&answer).await?;
                }
                _ => {} // a notification, or a response to someone else
            }
        }
    }

    async fn initialize(&mut self) -> Result<()> {
        self.write(&initialize_request(0)).await?;
        let (_, body) = self.read_response(0).await?;
        let message: Value = serde_json::from_slice(&body).context("initialize answer")?;
        if message.get("result").is_none() {
            bail!(
                "initialize failed: {}",
                excerpt(&message.to_string()) // e.g. an error response
            );
        }
        self.write(INITIALIZED).await
    }

    async fn echo(&mut self, message: &str) -> Result<(Duration, Reply)> {
        let id = self.next_id;
        self.next_id += 1;
        let request = echo_request(id, message);
        let start = Instant::now();
        if self.raw {
            // `cat` answers while it reads: write and read at once, or both pipes fill up.
            let stdin = self.stdin.as_mut().context("stdin already closed")?;
            let line = &mut self.line;
            line.clear();
            let write = async {
                stdin.write_all(&request).await?;
                stdin.flush().await
            };
            let (written, read) = tokio::join!(write, self.stdout.read_until(b'\n', line));
            written.context("writing to stdin")?;
            read.context("reading stdout")?;
            let arrived = Instant::now();
            let body = Bytes::from(std::mem::take(&mut self.line));
            return Ok((
                arrived - start,
                Reply {
                    id,
                    body,
                    sse: false,
                    raw_len: Some(request.len()),
                },
            ));
        }
        self.write(&request).await?;
        let (arrived, body) = self.read_response(id).await?;
        Ok((
            arrived - start,
            Reply {
                id,
                body,
                sse: false,
                raw_len: None,
            },
        ))
    }

    /// Closes stdin and waits for a clean exit; kills the group if it takes too long.
    async fn close(mut self, grace: Duration) {
        drop(self.stdin.take());
        let exited = tokio::time::timeout(grace, self.child.wait()).await;
        if !matches!(exited, Ok(Ok(_))) {
            // SAFETY: killpg only sends a signal to the group this harness created.
            unsafe {
                libc::killpg(self.pid, libc::SIGKILL);
            }
            let _ = self.child.wait().await;
        }
        // Stragglers in the group (a child of the contender that outlived it).
        if !procfs::group(self.pid).is_empty() {
            // SAFETY: as above.
            unsafe {
                libc::killpg(self.pid, libc::SIGKILL);
            }
        }
    }
}

/// A session straight to the upstream: the floor.
struct HttpSession {
    client: reqwest::Client,
    url: String,
    session_id: Option<reqwest::header::HeaderValue>,
    version: reqwest::header::HeaderValue,
    next_id: u64,
}

impl HttpSession {
    async fn post(&self, body: Vec<u8>) -> Result<(bool, Bytes)> {
        let mut request = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                reqwest::header::ACCEPT,
                "application/json, text/event-stream",
            )
            .header("mcp-protocol-version", self.version.clone());
        if let Some(id) = &self.session_id {
            request = request.header("mcp-session-id", id.clone());
        }
        let response = request.body(body).send().await.context("POST")?;
        let status = response.status();
        let sse = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let body = response.bytes().await.context("reading the body")?;
        if !status.is_success() {
            bail!(
                "HTTP {status}: {}",
                excerpt(&String::from_utf8_lossy(&body))
            );
        }
        Ok((sse, body))
    }

    async fn open(client: reqwest::Client, url: &str) -> Result<HttpSession> {
        let mut session = HttpSession {
            client,
            url: url.to_owned(),
            session_id: None,
            version: reqwest::header::HeaderValue::from_static(PROTOCOL_VERSION),
            next_id: 1,
        };
        let mut request = initialize_request(0);
        request.pop();
        let response = session
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                reqwest::header::ACCEPT,
                "application/json, text/event-stream",
            )
            .body(request)
            .send()
            .await
            .context("POST initialize")?;
        let status = response.status();
        session.session_id = response.headers().get("mcp-session-id").cloned();
        let sse = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let body = response.bytes().await.context("reading the body")?;
        if !status.is_success() {
            bail!(
                "initialize: HTTP {status}: {}",
                excerpt(&String::from_utf8_lossy(&body))
            );
        }
        let reply = Reply {
            id: 0,
            body,
            sse,
            raw_len: None,
        };
        let message = reply.message()?;
        if let Some(version) = message
            .pointer("/result/protocolVersion")
            .and_then(Value::as_str)
        {
            session.version = reqwest::header::HeaderValue::from_str(version)
                .context("the negotiated protocol version is not a header value")?;
        }
        let initialized = INITIALIZED[..INITIALIZED.len() - 1].to_vec();
        session.post(initialized).await?;
        Ok(session)
    }

    async fn echo(&mut self, message: &str) -> Result<(Duration, Reply)> {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = echo_request(id, message);
        request.pop();
        let start = Instant::now();
        let (sse, body) = self.post(request).await?;
        Ok((
            start.elapsed(),
            Reply {
                id,
                body,
                sse,
                raw_len: None,
            },
        ))
    }

    async fn close(self) {
        if let Some(id) = &self.session_id {
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                self.client
                    .delete(&self.url)
                    .header("mcp-session-id", id.clone())
                    .header("mcp-protocol-version", self.version.clone())
                    .send(),
            )
            .await;
        }
    }
}

enum Session {
    Http(HttpSession),
    Stdio(Box<StdioSession>),
}

impl Session {
    /// Starts a session and returns it with the time from spawn (or first byte sent, for
    /// `direct`) to the `initialize` result.
    async fn open(ctx: &Ctx, contender: &Contender, url: &str) -> Result<(Session, Duration)> {
        let start = Instant::now();
        let opened = async {
            match &contender.launch {
                None => {
                    let session = HttpSession::open(ctx.http.clone(), url).await?;
                    Ok::<_, anyhow::Error>((Session::Http(session), start.elapsed()))
                }
                Some(launch) => {
                    let mut session = StdioSession::spawn(ctx, launch, "contender").await?;
                    if !contender.peer.is_mcp() {
                        session.raw = true;
                        return Ok((Session::Stdio(Box::new(session)), start.elapsed()));
                    }
                    match session.initialize().await {
                        Ok(()) => {
                            let took = start.elapsed();
                            Ok((Session::Stdio(Box::new(session)), took))
                        }
                        Err(e) => {
                            let tail = session.log_tail();
                            session.close(Duration::from_millis(200)).await;
                            Err(e.context(format!("initializing{tail}")))
                        }
                    }
                }
            }
        };
        tokio::time::timeout(OPEN_TIMEOUT, opened)
            .await
            .map_err(|_| anyhow!("no initialize result within {OPEN_TIMEOUT:?}"))?
            .with_context(|| format!("opening a {} session", contender.name))
    }

    async fn echo(&mut self, message: &str, limit: Duration) -> Result<(Duration, Reply)> {
        let call = async {
            match self {
                Session::Http(s) => s.echo(message).await,
                Session::Stdio(s) => match s.echo(message).await {
                    Ok(r) => Ok(r),
                    Err(e) => {
                        let tail = s.log_tail();
                        Err(e.context(format!("the call failed{tail}")))
                    }
                },
            }
        };
        tokio::time::timeout(limit, call)
            .await
            .map_err(|_| anyhow!("no answer within {limit:?}"))?
    }

    /// One checked echo round trip.
    async fn checked_echo(&mut self, message: &str, expected: &str) -> Result<Duration> {
        let (took, reply) = self.echo(message, CALL_TIMEOUT).await?;
        reply.check_echo(expected)?;
        Ok(took)
    }

    fn pgid(&self) -> Option<i32> {
        match self {
            Session::Http(_) => None,
            Session::Stdio(s) => Some(s.pid),
        }
    }

    async fn close(self) {
        match self {
            Session::Http(s) => s.close().await,
            Session::Stdio(s) => s.close(Duration::from_secs(2)).await,
        }
    }
}

async fn close_all(sessions: Vec<Session>) {
    futures_util::future::join_all(sessions.into_iter().map(Session::close)).await;
}

// ---------------------------------------------------------------------------------------------
// Results

#[derive(Serialize, Clone, Debug, Default)]
struct Stats {
    n: usize,
    min_us: f64,
    p50_us: f64,
    p90_us: f64,
    p95_us: f64,
    p99_us: f64,
    max_us: f64,
    mean_us: f64,
}

fn stats(values: &[f64]) -> Option<Stats> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let rank = (q * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    };
    Some(Stats {
        n: v.len(),
        min_us: v[0],
        p50_us: at(0.50),
        p90_us: at(0.90),
        p95_us: at(0.95),
        p99_us: at(0.99),
        max_us: v[v.len() - 1],
        mean_us: v.iter().sum::<f64>() / v.len() as f64,
    })
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[derive(Serialize, Clone, Debug, Default)]
struct Latency {
    calls: usize,
    latency: Option<Stats>,
    added_p50_us: Option<f64>,
    added_p99_us: Option<f64>,
    /// On-CPU µs of the contender's process group per call (schedstat).
    cpu_us_per_call: Option<f64>,
    /// The same from utime+stime (clock-tick resolution).
    cpu_us_per_call_ticks: Option<f64>,
    /// VmHWM summed over the process group at the end of the session.
    peak_rss_kib: Option<u64>,
    /// RssAnon (private, not the shared binary pages) at the end of the session.
    anon_rss_kib: Option<u64>,
    processes: Option<usize>,
    error: Option<String>,
}

#[derive(Serialize, Clone, Debug, Default)]
struct Large {
    mib: usize,
    reps: usize,
    time: Option<Stats>,
    /// p50 over direct's p50, in percent.
    vs_direct_pct: Option<f64>,
    /// The largest VmRSS sampled (every 2 ms) while the calls ran.
    rss_during_max_kib: Option<u64>,
    error: Option<String>,
}

#[derive(Serialize, Clone, Debug, Default)]
struct LargeSet {
    sizes: Vec<Large>,
    /// VmHWM of the session that carried the large messages.
    peak_rss_kib: Option<u64>,
    error: Option<String>,
}

#[derive(Serialize, Clone, Debug, Default)]
struct Scale {
    sessions: usize,
    calls_per_session: usize,
    ok_calls: usize,
    errors: usize,
    first_error: Option<String>,
    wall_ms: f64,
    calls_per_sec: f64,
    latency: Option<Stats>,
    cpu_us_per_call: Option<f64>,
    cpu_us_per_call_ticks: Option<f64>,
    peak_rss_per_proxy_max_kib: Option<u64>,
    peak_rss_per_proxy_mean_kib: Option<u64>,
    /// RssAnon per proxy after the calls (largest).
    anon_rss_per_proxy_max_kib: Option<u64>,
}

#[derive(Serialize, Clone, Debug, Default)]
struct ScaleSet {
    open_errors: usize,
    open_first_error: Option<String>,
    runs: Vec<Scale>,
    skipped: Option<String>,
}

#[derive(Serialize, Clone, Debug)]
struct ContenderResult {
    contender: String,
    kind: Peer,
    command: String,
    one_session: Latency,
    spawn_to_initialize: Option<Stats>,
    spawn_error: Option<String>,
    large: LargeSet,
    scale: ScaleSet,
}

#[derive(Serialize, Clone, Debug)]
struct UpstreamResult {
    upstream: &'static str,
    title: &'static str,
    contenders: Vec<ContenderResult>,
    error: Option<String>,
}

#[derive(Serialize, Clone, Debug, Default)]
struct Cold {
    daemon: String,
    /// `mcpsm proxy --target NAME` spawned with no manager running → initialize result.
    cold_to_initialize: Option<Stats>,
    /// The daemon alone: spawn → first answered `initialize` (polled every ms).
    daemon_alone_ready: Option<Stats>,
    errors: Vec<String>,
}

#[derive(Serialize, Clone, Debug, Default)]
struct Recovery {
    /// `kill -9` of the daemon → the restarted daemon answers `initialize`.
    kill_to_ready: Option<Stats>,
    /// The restarted daemon answers → the call sent right after the kill is answered through
    /// the proxy.
    ready_to_answer: Option<Stats>,
    kill_to_answer: Option<Stats>,
    errors: Vec<String>,
}

#[derive(Serialize, Clone, Debug, Default)]
struct Managed {
    cold: Vec<Cold>,
    /// `mcpsm proxy --target demo` with the manager and daemon running.
    warm_target_spawn_to_initialize: Option<Stats>,
    warm_error: Option<String>,
    recovery: Recovery,
}

#[derive(Serialize, Clone, Debug)]
struct Machine {
    nproc: usize,
    cpu: String,
    memory_gib: f64,
    kernel: String,
    loadavg_before: String,
    loadavg_after: String,
}

#[derive(Serialize, Clone, Debug)]
struct Report {
    date: String,
    mode: &'static str,
    command: String,
    harness_args: Vec<String>,
    machine: Machine,
    versions: BTreeMap<String, String>,
    contender_commands: BTreeMap<String, String>,
    settings: Value,
    upstreams: Vec<UpstreamResult>,
    managed: Option<Managed>,
    managed_http: Option<ManagedHttp>,
    stdio_host: Option<StdioHost>,
    scale_target: Option<TargetScale>,
    wall_seconds: f64,
}

// ---------------------------------------------------------------------------------------------
// Upstreams the harness starts

struct Upstream {
    url: String,
    child: Child,
}

impl Upstream {
    async fn start(ctx: &Ctx, kind: UpstreamKind) -> Result<Upstream> {
        let (mut command, marker) = match kind {
            UpstreamKind::Demo => {
                let mut c = ctx.command(&ctx.mcpsm);
                c.args(["demo-server", "--port", "0"]);
                (c, "listening on http://127.0.0.1:")
            }
            UpstreamKind::Everything => {
                let mut c = ctx.command(Path::new("node"));
                c.arg("-r")
                    .arg(&ctx.loopback)
                    .arg(&ctx.everything)
                    .arg("streamableHttp")
                    .env("PORT", "0");
                (c, "[loopback.cjs] listening on 127.0.0.1:")
            }
        };
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting the {} upstream", kind.name()))?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let mut lines = BufReader::new(stderr).lines();
        let find_port = async {
            let mut seen = Vec::new();
            while let Some(line) = lines.next_line().await? {
                if let Some(pos) = line.find(marker) {
                    let digits: String = line[pos + marker.len()..]
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect();
                    let port: u16 = digits.parse().context("no port in the listening line")?;
                    return Ok::<_, anyhow::Error>(port);
                }
                seen.push(line);
            }
            bail!(
                "the {} upstream exited before listening: {}",
                kind.name(),
                seen.join(" | ")
            )
        };
        let port = tokio::time::timeout(Duration::from_secs(60), find_port)
            .await
            .map_err(|_| anyhow!("the {} upstream did not listen within 60 s", kind.name()))??;
        // Keep draining stderr so the upstream never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Upstream {
            url: format!("http://127.0.0.1:{port}/mcp"),
            child,
        })
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: signals only the group this harness created.
            unsafe {
                libc::killpg(pid, libc::SIGTERM);
            }
            if tokio::time::timeout(Duration::from_secs(3), self.child.wait())
                .await
                .is_err()
            {
                unsafe {
                    libc::killpg(pid, libc::SIGKILL);
                }
            }
        }
        let _ = self.child.wait().await;
    }
}

// ---------------------------------------------------------------------------------------------
// The measurements

/// One session per contender, `calls` sequential echoes each, in rotating rounds.
async fn one_session(ctx: &Ctx, url: &str, contenders: &[Contender]) -> Vec<Latency> {
    one_session_watching(ctx, url, contenders, &[]).await.0
}

/// [`one_session`], also measuring the CPU of other processes during one contender's blocks
/// only: `watch` is (contender index, pids); the answer has one [`procfs::Cpu`] per entry.
async fn one_session_watching(
    ctx: &Ctx,
    url: &str,
    contenders: &[Contender],
    watch: &[(usize, Vec<i32>)],
) -> (Vec<Latency>, Vec<procfs::Cpu>) {
    let mut watched = vec![procfs::Cpu::default(); watch.len()];
    let mut results: Vec<Latency> = vec![Latency::default(); contenders.len()];
    let mut sessions: Vec<Option<Session>> = Vec::new();
    let message = json_string(SHORT_MESSAGE);
    for (i, c) in contenders.iter().enumerate() {
        match Session::open(ctx, c, url).await {
            Ok((mut s, _)) => {
                let mut warm = Ok(());
                for _ in 0..WARMUP_CALLS {
                    if let Err(e) = s.checked_echo(&message, SHORT_MESSAGE).await {
                        warm = Err(e);
                        break;
                    }
                }
                match warm {
                    Ok(()) => sessions.push(Some(s)),
                    Err(e) => {
                        results[i].error = Some(format!("{e:#}"));
                        s.close().await;
                        sessions.push(None);
                    }
                }
            }
            Err(e) => {
                results[i].error = Some(format!("{e:#}"));
                sessions.push(None);
            }
        }
    }
    let rounds = ctx.args.rounds.max(1);
    let block = (ctx.args.calls / rounds).max(1);
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); contenders.len()];
    let mut cpu: Vec<procfs::Cpu> = vec![procfs::Cpu::default(); contenders.len()];
    let n = contenders.len();
    for round in 0..rounds {
        for k in 0..n {
            let i = (k + round) % n;
            let Some(session) = sessions[i].as_mut() else {
                continue;
            };
            // For `direct`, the harness itself: what a client spends making the call itself.
            let own = i32::try_from(std::process::id()).ok();
            let pids = session.pgid().map(procfs::group).or(own.map(|p| vec![p]));
            let before = pids.as_deref().map(procfs::cpu);
            let watched_before: Vec<Option<procfs::Cpu>> = watch
                .iter()
                .map(|(c, pids)| (*c == i).then(|| procfs::cpu(pids)))
                .collect();
            let mut failed = None;
            for _ in 0..block {
                match session.echo(&message, CALL_TIMEOUT).await {
                    Ok((took, reply)) => {
                        samples[i].push(us(took));
                        if let Err(e) = reply.check_echo(SHORT_MESSAGE) {
                            failed = Some(e);
                            break;
                        }
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if let (Some(pids), Some(before)) = (&pids, before) {
                cpu[i].add(procfs::cpu(pids).since(before));
            }
            for (k, before) in watched_before.into_iter().enumerate() {
                if let Some(before) = before {
                    watched[k].add(procfs::cpu(&watch[k].1).since(before));
                }
            }
            if let Some(e) = failed {
                results[i].error = Some(format!("{e:#}"));
                if let Some(s) = sessions[i].take() {
                    s.close().await;
                }
            }
        }
    }
    for (i, slot) in sessions.iter_mut().enumerate() {
        let calls = samples[i].len();
        results[i].calls = calls;
        results[i].latency = stats(&samples[i]);
        if calls > 0 && slot.is_some() {
            results[i].cpu_us_per_call = Some(cpu[i].sched_ns as f64 / 1e3 / calls as f64);
            results[i].cpu_us_per_call_ticks = Some(ticks_us(ctx, cpu[i].ticks) / calls as f64);
        }
        if let Some(pgid) = slot.as_ref().and_then(Session::pgid) {
            let pids = procfs::group(pgid);
            results[i].peak_rss_kib = Some(procfs::status_kib(&pids, "VmHWM"));
            results[i].anon_rss_kib = Some(procfs::status_kib(&pids, "RssAnon"));
            results[i].processes = Some(pids.len());
        }
    }
    close_all(sessions.into_iter().flatten().collect()).await;
    let direct = contenders
        .iter()
        .position(|c| c.peer == Peer::Direct)
        .and_then(|i| results[i].latency.clone());
    if let Some(direct) = direct {
        for (r, c) in results.iter_mut().zip(contenders) {
            if !c.peer.is_mcp() {
                continue;
            }
            if let Some(l) = &r.latency {
                r.added_p50_us = Some(l.p50_us - direct.p50_us);
                r.added_p99_us = Some(l.p99_us - direct.p99_us);
            }
        }
    }
    (results, watched)
}

fn ticks_us(ctx: &Ctx, ticks: u64) -> f64 {
    ticks as f64 * 1e6 / ctx.clock_ticks as f64
}

/// Spawn → initialize result, `spawns` times per contender, in rotating order.
async fn spawn_times(
    ctx: &Ctx,
    url: &str,
    contenders: &[Contender],
) -> Vec<(Option<Stats>, Option<String>)> {
    let n = contenders.len();
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut errors: Vec<Option<String>> = vec![None; n];
    for round in 0..ctx.args.spawns {
        for k in 0..n {
            let i = (k + round) % n;
            if errors[i].is_some() || !contenders[i].peer.is_mcp() {
                continue;
            }
            match Session::open(ctx, &contenders[i], url).await {
                Ok((session, took)) => {
                    samples[i].push(us(took));
                    session.close().await;
                }
                Err(e) => errors[i] = Some(format!("{e:#}")),
            }
        }
    }
    samples
        .iter()
        .zip(errors)
        .map(|(s, e)| (stats(s), e))
        .collect()
}

/// Samples the summed VmRSS of `pids` every 2 ms until stopped; returns the largest.
fn rss_sampler(pids: Vec<i32>) -> (Arc<AtomicBool>, tokio::task::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = tokio::spawn(async move {
        let mut max = 0;
        while !flag.load(Ordering::Relaxed) {
            max = max.max(procfs::status_kib(&pids, "VmRSS"));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        max.max(procfs::status_kib(&pids, "VmRSS"))
    });
    (stop, handle)
}

/// 1 MiB and 10 MiB echoes through a fresh session per contender.
async fn large_messages(
    ctx: &Ctx,
    url: &str,
    contenders: &[Contender],
    sizes_mib: &[usize],
) -> Vec<LargeSet> {
    let n = contenders.len();
    let mut results: Vec<LargeSet> = vec![LargeSet::default(); n];
    let mut sessions: Vec<Option<Session>> = Vec::new();
    let short = json_string(SHORT_MESSAGE);
    for (i, c) in contenders.iter().enumerate() {
        match Session::open(ctx, c, url).await {
            Ok((mut s, _)) => match s.checked_echo(&short, SHORT_MESSAGE).await {
                Ok(_) => sessions.push(Some(s)),
                Err(e) => {
                    results[i].error = Some(format!("{e:#}"));
                    s.close().await;
                    sessions.push(None);
                }
            },
            Err(e) => {
                results[i].error = Some(format!("{e:#}"));
                sessions.push(None);
            }
        }
    }
    for &mib in sizes_mib {
        let text = "x".repeat((mib * MIB).saturating_sub(LARGE_ENVELOPE_ROOM));
        let encoded = json_string(&text);
        let reps = if ctx.smoke() {
            1
        } else if mib >= 10 {
            3
        } else {
            9
        };
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); n];
        let mut rss: Vec<Option<u64>> = vec![None; n];
        let mut errors: Vec<Option<String>> = vec![None; n];
        for rep in 0..reps {
            for k in 0..n {
                let i = (k + rep) % n;
                if errors[i].is_some() {
                    continue;
                }
                let Some(session) = sessions[i].as_mut() else {
                    continue;
                };
                let sampler = session.pgid().map(|g| rss_sampler(procfs::group(g)));
                let outcome = session.echo(&encoded, LARGE_CALL_TIMEOUT).await;
                if let Some((stop, handle)) = sampler {
                    stop.store(true, Ordering::Relaxed);
                    if let Ok(max) = handle.await {
                        rss[i] = Some(rss[i].unwrap_or(0).max(max));
                    }
                }
                match outcome.and_then(|(took, reply)| reply.check_echo(&text).map(|()| took)) {
                    Ok(took) => samples[i].push(us(took)),
                    Err(e) => errors[i] = Some(format!("{e:#}")),
                }
            }
        }
        let direct_p50 = contenders
            .iter()
            .position(|c| c.peer == Peer::Direct)
            .and_then(|i| stats(&samples[i]))
            .map(|s| s.p50_us);
        for i in 0..n {
            let time = stats(&samples[i]);
            let vs_direct_pct = match (&time, direct_p50) {
                (Some(t), Some(d)) if d > 0.0 => Some((t.p50_us / d - 1.0) * 100.0),
                _ => None,
            };
            results[i].sizes.push(Large {
                mib,
                reps,
                time,
                vs_direct_pct,
                rss_during_max_kib: rss[i],
                error: errors[i].take(),
            });
        }
    }
    for (i, slot) in sessions.iter().enumerate() {
        if let Some(pgid) = slot.as_ref().and_then(Session::pgid) {
            results[i].peak_rss_kib = Some(procfs::status_kib(&procfs::group(pgid), "VmHWM"));
        }
    }
    close_all(sessions.into_iter().flatten().collect()).await;
    results
}

/// Many sessions of one contender at once: the first `sessions[0]`, then all, each doing
/// `session_calls` sequential calls.
async fn many_sessions(ctx: &Ctx, url: &str, contender: &Contender) -> ScaleSet {
    let mut set = ScaleSet::default();
    let most = ctx.args.sessions.iter().copied().max().unwrap_or(0);
    if most == 0 {
        return set;
    }
    let (mut sessions, open_errors, open_first_error) =
        open_sessions(ctx, contender, url, most).await;
    set.open_errors = open_errors;
    set.open_first_error = open_first_error;
    for &count in &ctx.args.sessions {
        let count = count.min(sessions.len());
        if count == 0 {
            continue;
        }
        let rest = sessions.split_off(count);
        let (run, _, mut back) = concurrent_calls(ctx, sessions, ctx.args.session_calls, &[]).await;
        // Put the sessions back in front, so the next run reuses them.
        back.extend(rest);
        sessions = back;
        set.runs.push(run);
    }
    close_all(sessions).await;
    set
}

/// Opens `count` sessions of `contender`, [`SPAWN_PARALLELISM`] at a time: the sessions that
/// opened, how many did not, and the first error.
async fn open_sessions(
    ctx: &Ctx,
    contender: &Contender,
    url: &str,
    count: usize,
) -> (Vec<Session>, usize, Option<String>) {
    let semaphore = Arc::new(tokio::sync::Semaphore::new(SPAWN_PARALLELISM));
    let opens = (0..count).map(|_| {
        let semaphore = semaphore.clone();
        async move {
            let _permit = semaphore.acquire().await;
            Session::open(ctx, contender, url).await
        }
    });
    let mut sessions: Vec<Session> = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for opened in futures_util::future::join_all(opens).await {
        match opened {
            Ok((s, _)) => sessions.push(s),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(format!("{e:#}"));
            }
        }
    }
    (sessions, errors, first_error)
}

/// All of `sessions` at once, `calls` sequential calls each. The proxies' CPU and RSS (when
/// the sessions are proxy processes), and the on-CPU time of each of `watch` (sets of pids)
/// over the same run. Gives the sessions back for reuse.
async fn concurrent_calls(
    ctx: &Ctx,
    sessions: Vec<Session>,
    calls: usize,
    watch: &[Vec<i32>],
) -> (Scale, Vec<procfs::Cpu>, Vec<Session>) {
    let count = sessions.len();
    let proxied = sessions.first().is_some_and(|s| s.pgid().is_some());
    let message = Arc::new(json_string(SHORT_MESSAGE));
    let groups = procfs::groups();
    let pids: Vec<Vec<i32>> = sessions
        .iter()
        .map(|s| {
            s.pgid()
                .and_then(|g| groups.get(&g).cloned())
                .unwrap_or_default()
        })
        .collect();
    let before: Vec<procfs::Cpu> = pids.iter().map(|p| procfs::cpu(p)).collect();
    let watched_before: Vec<procfs::Cpu> = watch.iter().map(|p| procfs::cpu(p)).collect();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for mut session in sessions {
        let message = message.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(calls);
            let mut errors = 0;
            let mut first = None;
            for _ in 0..calls {
                match session.checked_echo(&message, SHORT_MESSAGE).await {
                    Ok(took) => lat.push(us(took)),
                    Err(e) => {
                        errors += 1;
                        first.get_or_insert(format!("{e:#}"));
                    }
                }
            }
            (session, lat, errors, first)
        }));
    }
    let mut run = Scale {
        sessions: count,
        calls_per_session: calls,
        ..Scale::default()
    };
    let mut all = Vec::new();
    let mut back = Vec::new();
    for task in tasks {
        match task.await {
            Ok((session, lat, errors, first)) => {
                run.errors += errors;
                if run.first_error.is_none() {
                    run.first_error = first;
                }
                all.extend(lat);
                back.push(session);
            }
            Err(e) => {
                run.errors += calls;
                run.first_error
                    .get_or_insert(format!("a session task died: {e}"));
            }
        }
    }
    let wall = start.elapsed();
    let after: Vec<procfs::Cpu> = pids.iter().map(|p| procfs::cpu(p)).collect();
    let watched: Vec<procfs::Cpu> = watch
        .iter()
        .zip(watched_before)
        .map(|(p, b)| procfs::cpu(p).since(b))
        .collect();
    run.ok_calls = all.len();
    run.wall_ms = wall.as_secs_f64() * 1e3;
    run.calls_per_sec = all.len() as f64 / wall.as_secs_f64();
    run.latency = stats(&all);
    if proxied && !all.is_empty() {
        let mut total = procfs::Cpu::default();
        for (a, b) in after.iter().zip(&before) {
            total.add(a.since(*b));
        }
        run.cpu_us_per_call = Some(total.sched_ns as f64 / 1e3 / all.len() as f64);
        run.cpu_us_per_call_ticks = Some(ticks_us(ctx, total.ticks) / all.len() as f64);
        let hwm: Vec<u64> = pids
            .iter()
            .map(|p| procfs::status_kib(p, "VmHWM"))
            .collect();
        run.peak_rss_per_proxy_max_kib = hwm.iter().copied().max();
        run.peak_rss_per_proxy_mean_kib = Some(hwm.iter().sum::<u64>() / hwm.len() as u64);
        run.anon_rss_per_proxy_max_kib =
            pids.iter().map(|p| procfs::status_kib(p, "RssAnon")).max();
    }
    (run, watched, back)
}

fn json_string(text: &str) -> String {
    Value::String(text.to_owned()).to_string()
}

async fn measure_upstream(ctx: &Ctx, kind: UpstreamKind, peers: &[Peer]) -> UpstreamResult {
    let mut result = UpstreamResult {
        upstream: kind.name(),
        title: kind.title(),
        contenders: Vec::new(),
        error: None,
    };
    let upstream = match Upstream::start(ctx, kind).await {
        Ok(u) => u,
        Err(e) => {
            result.error = Some(format!("{e:#}"));
            return result;
        }
    };
    let url = upstream.url.clone();
    let contenders: Vec<Contender> = peers.iter().map(|p| ctx.contender(*p, &url)).collect();
    for c in &contenders {
        result.contenders.push(ContenderResult {
            contender: c.name.clone(),
            kind: c.peer,
            command: c
                .launch
                .as_ref()
                .map_or_else(|| "(the harness's HTTP client)".into(), |l| l.display(ctx)),
            one_session: Latency::default(),
            spawn_to_initialize: None,
            spawn_error: None,
            large: LargeSet::default(),
            scale: ScaleSet::default(),
        });
    }
    progress(
        ctx,
        &format!("{}: one session, sequential calls", kind.name()),
    );
    for (r, latency) in result
        .contenders
        .iter_mut()
        .zip(one_session(ctx, &url, &contenders).await)
    {
        r.one_session = latency;
    }
    progress(ctx, &format!("{}: spawn → initialize", kind.name()));
    for (r, (spawn, error)) in result
        .contenders
        .iter_mut()
        .zip(spawn_times(ctx, &url, &contenders).await)
    {
        r.spawn_to_initialize = spawn;
        r.spawn_error = error;
    }
    progress(ctx, &format!("{}: large messages", kind.name()));
    let sizes: Vec<usize> = ctx
        .args
        .large_mib
        .iter()
        .copied()
        .filter(|mib| kind != UpstreamKind::Everything || mib * MIB <= EVERYTHING_BODY_LIMIT)
        .collect();
    for (r, large) in result
        .contenders
        .iter_mut()
        .zip(large_messages(ctx, &url, &contenders, &sizes).await)
    {
        r.large = large;
    }
    for (r, c) in result.contenders.iter_mut().zip(&contenders) {
        let peers_here = ctx
            .args
            .peer_scale_upstreams
            .iter()
            .any(|u| u.trim() == kind.name());
        if !c.peer.is_mcp() {
            continue;
        }
        if c.peer.is_peer() && !peers_here {
            r.scale.skipped = Some(format!(
                "not run on this upstream (--peer-scale-upstreams {})",
                ctx.args.peer_scale_upstreams.join(",")
            ));
            continue;
        }
        progress(
            ctx,
            &format!("{}: {} concurrent sessions", kind.name(), c.name),
        );
        r.scale = many_sessions(ctx, &url, c).await;
    }
    upstream.stop().await;
    result
}

// ---------------------------------------------------------------------------------------------
// mcpsm only: the manager path (cold start, warm --target, recovery)

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// An MCPSM_HOME with a registry; its manager is stopped when dropped.
struct Home {
    dir: PathBuf,
    mcpsm: PathBuf,
    demo_port: u16,
}

impl Home {
    fn create(ctx: &Ctx, name: &str) -> Result<Home> {
        Home::with_daemons(ctx, name, "")
    }

    /// A home whose registry has `extra` (TOML daemon tables) beside the usual daemons.
    fn with_daemons(ctx: &Ctx, name: &str, extra: &str) -> Result<Home> {
        let dir = ctx.scratch.path().join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let manager_port = free_port()?;
        let demo_port = free_port()?;
        let everything_port = free_port()?;
        let s = |p: &Path| json_string(&p.to_string_lossy());
        let registry = format!(
            r#"[manager]
port = {manager_port}

[daemons.demo]
command = {mcpsm}
args = ["demo-server", "--port", "{{port}}"]
port = {demo_port}
startup-timeout = "10s"

[daemons.everything]
command = "node"
args = ["-r", {loopback}, {everything}, "streamableHttp"]
env = {{ PORT = "{{port}}" }}
port = {everything_port}
startup-timeout = "60s"
{extra}"#,
            mcpsm = s(&ctx.mcpsm),
            loopback = s(&ctx.loopback),
            everything = s(&ctx.everything),
        );
        let path = dir.join("daemons.toml");
        std::fs::write(&path, registry).with_context(|| format!("writing {}", path.display()))?;
        Ok(Home {
            dir,
            mcpsm: ctx.mcpsm.clone(),
            demo_port,
        })
    }

    fn stop_manager(&self) {
        let _ = std::process::Command::new(&self.mcpsm)
            .args(["manager", "stop"])
            .env("MCPSM_HOME", &self.dir)
            .env("HOME", &self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        self.stop_manager();
    }
}

/// Polls `initialize` at `url` every millisecond until it is answered; returns when.
async fn wait_ready(client: &reqwest::Client, url: &str, limit: Duration) -> Result<Instant> {
    let deadline = Instant::now() + limit;
    let mut body = initialize_request(0);
    body.pop();
    loop {
        let attempt = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                reqwest::header::ACCEPT,
                "application/json, text/event-stream",
            )
            .timeout(Duration::from_millis(500))
            .body(body.clone())
            .send()
            .await;
        if let Ok(response) = attempt {
            if response.status().is_success() {
                return Ok(Instant::now());
            }
        }
        if Instant::now() > deadline {
            bail!("{url} did not answer initialize within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The daemon alone: spawn → first answered `initialize`.
async fn daemon_alone(ctx: &Ctx, daemon: &str) -> Result<Duration> {
    let port = free_port()?;
    let mut command = match daemon {
        "demo" => {
            let mut c = ctx.command(&ctx.mcpsm);
            c.args(["demo-server", "--port", &port.to_string()]);
            c
        }
        _ => {
            let mut c = ctx.command(Path::new("node"));
            c.arg("-r")
                .arg(&ctx.loopback)
                .arg(&ctx.everything)
                .arg("streamableHttp")
                .env("PORT", port.to_string());
            c
        }
    };
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let start = Instant::now();
    let mut child = command.spawn().context("starting the daemon")?;
    let url = format!("http://127.0.0.1:{port}/mcp");
    // Cancel-safe: a lost race drops the poller, and `wait` can be called again below.
    let ready = tokio::select! {
        ready = wait_ready(&ctx.http, &url, Duration::from_secs(60)) => ready,
        status = child.wait() => Err(anyhow!(
            "the daemon exited ({}) before answering",
            status.map_or_else(|e| e.to_string(), |s| s.to_string())
        )),
    };
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: signals only the group this harness created.
        unsafe {
            libc::killpg(pid, libc::SIGKILL);
        }
    }
    let _ = child.wait().await;
    Ok(ready? - start)
}

/// `mcpsm proxy --target NAME` on a fresh MCPSM_HOME: spawn → initialize result.
async fn cold_start(ctx: &Ctx, daemon: &str, rep: usize) -> Result<Duration> {
    let home = Home::create(ctx, &format!("cold-{daemon}-{rep}"))?;
    let contender = Contender {
        peer: Peer::Mcpsm,
        name: "mcpsm --target".into(),
        launch: Some(ctx.target_launch(&home.dir, daemon)),
    };
    let (session, took) = Session::open(ctx, &contender, "").await?;
    session.close().await;
    home.stop_manager();
    Ok(took)
}

async fn measure_managed(ctx: &Ctx, with_everything: bool) -> Managed {
    let mut managed = Managed::default();
    let reps = ctx.args.managed_reps.max(1);
    let mut daemons = vec!["demo"];
    if with_everything {
        daemons.push("everything");
    }
    for daemon in daemons {
        progress(ctx, &format!("mcpsm: cold start ({daemon})"));
        let mut cold = Cold {
            daemon: daemon.into(),
            ..Cold::default()
        };
        let mut cold_samples = Vec::new();
        let mut alone_samples = Vec::new();
        for rep in 0..reps {
            match daemon_alone(ctx, daemon).await {
                Ok(d) => alone_samples.push(us(d)),
                Err(e) => cold.errors.push(format!("daemon alone: {e:#}")),
            }
            match cold_start(ctx, daemon, rep).await {
                Ok(d) => cold_samples.push(us(d)),
                Err(e) => cold.errors.push(format!("cold start: {e:#}")),
            }
        }
        cold.cold_to_initialize = stats(&cold_samples);
        cold.daemon_alone_ready = stats(&alone_samples);
        managed.cold.push(cold);
    }

    progress(ctx, "mcpsm: warm --target spawn and recovery");
    let home = match Home::create(ctx, "warm") {
        Ok(h) => h,
        Err(e) => {
            managed.warm_error = Some(format!("{e:#}"));
            return managed;
        }
    };
    let contender = Contender {
        peer: Peer::Mcpsm,
        name: "mcpsm --target".into(),
        launch: Some(ctx.target_launch(&home.dir, "demo")),
    };
    // The first session starts the manager and the daemon; the next ones find them warm.
    match Session::open(ctx, &contender, "").await {
        Ok((s, _)) => s.close().await,
        Err(e) => {
            managed.warm_error = Some(format!("{e:#}"));
            return managed;
        }
    }
    let mut warm = Vec::new();
    for _ in 0..ctx.args.spawns.max(1) * 2 {
        match Session::open(ctx, &contender, "").await {
            Ok((s, took)) => {
                warm.push(us(took));
                s.close().await;
            }
            Err(e) => {
                managed.warm_error = Some(format!("{e:#}"));
                break;
            }
        }
    }
    managed.warm_target_spawn_to_initialize = stats(&warm);
    managed.recovery = recovery(ctx, &home, &contender, reps.min(2)).await;
    home.stop_manager();
    managed
}

/// `--soak`: many calls through one managed session; memory of the proxy and the manager at
/// the start, the middle and the end. Flat figures mean nothing grows per call.
async fn soak(ctx: &Ctx) -> Result<ExitCode> {
    let calls = ctx.args.soak_calls.max(2);
    let home = Home::create(ctx, "soak")?;
    let contender = Contender {
        peer: Peer::Mcpsm,
        name: "mcpsm --target".into(),
        launch: Some(ctx.target_launch(&home.dir, "demo")),
    };
    let message = json_string(SHORT_MESSAGE);
    let (mut session, _) = Session::open(ctx, &contender, "").await?;
    let proxy = session
        .pgid()
        .context("the soak session has no proxy process")?;
    let manager = manager_pid(&home)?;
    for _ in 0..WARMUP_CALLS {
        session.checked_echo(&message, SHORT_MESSAGE).await?;
    }
    let rss = || {
        (
            procfs::status_kib(&[proxy], "VmRSS"),
            procfs::status_kib(&[manager], "VmRSS"),
        )
    };
    println!("soak: {calls} calls through one `mcpsm proxy --target demo` session");
    println!(
        "{:>9}  {:>14}  {:>16}  {:>10}",
        "calls", "proxy RSS KiB", "manager RSS KiB", "p50 µs"
    );
    let mut samples = Vec::new();
    let mut latencies = Vec::with_capacity(calls / 2);
    let report = |done: usize, latencies: &mut Vec<f64>, samples: &mut Vec<Value>| {
        let (proxy_kib, manager_kib) = rss();
        latencies.sort_unstable_by(f64::total_cmp);
        let p50 = latencies.get(latencies.len() / 2).copied().unwrap_or(0.0);
        println!("{done:>9}  {proxy_kib:>14}  {manager_kib:>16}  {p50:>10.1}");
        samples.push(json!({"calls": done, "proxy_rss_kib": proxy_kib, "manager_rss_kib": manager_kib, "p50_us": p50}));
        latencies.clear();
    };
    report(0, &mut latencies, &mut samples);
    let started = Instant::now();
    for done in 1..=calls {
        let took = session.checked_echo(&message, SHORT_MESSAGE).await?;
        latencies.push(us(took));
        if done == calls / 2 || done == calls {
            report(done, &mut latencies, &mut samples);
        }
    }
    println!(
        "soak: {calls} calls in {:.1} s, every one answered",
        started.elapsed().as_secs_f64()
    );
    session.close().await;
    home.stop_manager();
    if let Some(path) = &ctx.args.json {
        let text = serde_json::to_string_pretty(&json!({"soak": samples}))
            .context("serializing the soak results")?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `kill -9` of the managed demo daemon under a live session; see [`Recovery`].
async fn recovery(ctx: &Ctx, home: &Home, contender: &Contender, reps: usize) -> Recovery {
    let mut result = Recovery::default();
    let (mut session, _) = match Session::open(ctx, contender, "").await {
        Ok(s) => s,
        Err(e) => {
            result.errors.push(format!("{e:#}"));
            return result;
        }
    };
    let message = json_string(SHORT_MESSAGE);
    let url = format!("http://127.0.0.1:{}/mcp", home.demo_port);
    let port = home.demo_port.to_string();
    let mcpsm = ctx.mcpsm.to_string_lossy().into_owned();
    let (mut to_ready, mut to_answer, mut total) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..reps {
        let attempt = async {
            session.checked_echo(&message, SHORT_MESSAGE).await?;
            // Not the daemon's `mcpsm log-writer … -- mcpsm demo-server --port P` parent.
            let pids: Vec<i32> = procfs::find_by_args(&[&mcpsm, "demo-server", "--port", &port])
                .into_iter()
                .filter(|&p| procfs::args(p).get(1).map(String::as_str) == Some("demo-server"))
                .collect();
            let &[pid] = pids.as_slice() else {
                bail!("expected one managed demo daemon on port {port}, found {pids:?}");
            };
            // SAFETY: the pid was just found as the managed daemon this harness set up.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            // Wait until it is really dead (a zombie or reaped), so the poller cannot reach it.
            let dead_by = Instant::now() + Duration::from_secs(5);
            while !matches!(procfs::state(pid), None | Some('Z')) {
                if Instant::now() > dead_by {
                    bail!("the daemon (pid {pid}) did not die after SIGKILL");
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            let killed = Instant::now();
            let client = ctx.http.clone();
            let poll_url = url.clone();
            let poller = tokio::spawn(async move {
                wait_ready(&client, &poll_url, Duration::from_secs(60)).await
            });
            let (_, reply) = session
                .echo(&message, Duration::from_secs(90))
                .await
                .context("the call after the kill")?;
            let answered = Instant::now();
            reply.check_echo(SHORT_MESSAGE)?;
            let ready = poller
                .await
                .map_err(|e| anyhow!("the readiness poller died: {e}"))??;
            Ok::<_, anyhow::Error>((killed, ready, answered))
        };
        match attempt.await {
            Ok((killed, ready, answered)) => {
                to_ready.push(us(ready - killed));
                to_answer.push(if answered > ready {
                    us(answered - ready)
                } else {
                    -us(ready - answered)
                });
                total.push(us(answered - killed));
            }
            Err(e) => {
                result.errors.push(format!("rep {rep}: {e:#}"));
                break;
            }
        }
    }
    session.close().await;
    result.kill_to_ready = stats(&to_ready);
    result.ready_to_answer = stats(&to_answer);
    result.kill_to_answer = stats(&total);
    result
}

// ---------------------------------------------------------------------------------------------
// The stdio-host path: a stdio-only server shared through mcpsm vs spawned by the client

/// A stdio server of the stdio-host section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StdioServer {
    /// `node server-everything/dist/index.js stdio`: the real server the issue names.
    Everything,
    /// This harness's own minimal stdio server (`--serve-stdio-echo`): it costs next to
    /// nothing, so the difference is mcpsm's alone.
    Echo,
}

impl StdioServer {
    fn parse(name: &str) -> Result<StdioServer> {
        match name.trim() {
            "everything" => Ok(StdioServer::Everything),
            "echo" => Ok(StdioServer::Echo),
            other => bail!("unknown stdio server `{other}` (known: everything, echo)"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            StdioServer::Everything => "everything",
            StdioServer::Echo => "echo",
        }
    }

    /// The registry daemon that runs this server behind the stdio host.
    fn daemon(self) -> &'static str {
        match self {
            StdioServer::Everything => "everything-stdio",
            StdioServer::Echo => "echo-stdio",
        }
    }

    fn title(self) -> &'static str {
        match self {
            StdioServer::Everything => "`@modelcontextprotocol/server-everything stdio`",
            StdioServer::Echo => "the harness's minimal stdio server (`bench --serve-stdio-echo`)",
        }
    }

    /// The server's command, as a client without mcpsm spawns it.
    fn launch(self, ctx: &Ctx) -> Launch {
        match self {
            StdioServer::Everything => Launch {
                program: PathBuf::from("node"),
                args: vec![
                    ctx.everything.to_string_lossy().into_owned(),
                    "stdio".into(),
                ],
                env: vec![],
            },
            StdioServer::Echo => Launch {
                program: ctx.harness.clone(),
                args: vec!["--serve-stdio-echo".into()],
                env: vec![],
            },
        }
    }

    /// Its registry table: the same command, `transport = "stdio"`.
    fn registry_table(self, ctx: &Ctx, port: u16) -> String {
        let launch = self.launch(ctx);
        let args: Vec<String> = launch.args.iter().map(|a| json_string(a)).collect();
        format!(
            "\n[daemons.{}]\ncommand = {}\nargs = [{}]\nport = {port}\ntransport = \"stdio\"\nstartup-timeout = \"60s\"\n",
            self.daemon(),
            json_string(&launch.program.to_string_lossy()),
            args.join(", ")
        )
    }
}

#[derive(Serialize, Clone, Debug, Default)]
struct StdioHostRun {
    server: String,
    title: String,
    direct_command: String,
    mcpsm_command: String,
    /// The daemon's table in the scratch home's registry.
    registry_table: String,
    /// The client spawns the server itself; CPU and RSS are the server process's.
    direct: Latency,
    /// `mcpsm proxy --target`; CPU and RSS are the proxy's.
    mcpsm: Latency,
    added_p50_us: Option<f64>,
    added_p95_us: Option<f64>,
    added_p99_us: Option<f64>,
    /// `mcpsm stdio-host` alone (not its server process), at the end of the run.
    host_peak_rss_kib: Option<u64>,
    host_anon_rss_kib: Option<u64>,
    /// On-CPU µs of the host per call through it, over mcpsm's blocks of calls.
    host_cpu_us_per_call: Option<f64>,
    /// The server process behind the host, the same way.
    hosted_server_peak_rss_kib: Option<u64>,
    hosted_server_cpu_us_per_call: Option<f64>,
    error: Option<String>,
}

#[derive(Serialize, Clone, Debug, Default)]
struct StdioHost {
    runs: Vec<StdioHostRun>,
    error: Option<String>,
}

/// `--serve-stdio-echo`: a minimal stdio MCP server (`initialize`, `ping`, `tools/list`,
/// `tools/call echo`), one line in, one line out, no threads.
fn serve_stdio_echo() -> ExitCode {
    use std::io::{BufRead as _, Write as _};
    let stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    for line in stdin.lines() {
        let Ok(line) = line else { break };
        let Ok(message) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let (Some(id), Some(method)) = (
            message.get("id"),
            message.get("method").and_then(Value::as_str),
        ) else {
            continue; // a notification or a response: nothing to answer
        };
        let outcome = match method {
            "initialize" => Ok(json!({
                "protocolVersion": message
                    .pointer("/params/protocolVersion")
                    .and_then(Value::as_str)
                    .unwrap_or(PROTOCOL_VERSION),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "mcpsm-bench-echo", "version": env!("CARGO_PKG_VERSION")}
            })),
            "ping" => Ok(json!({})),
            "tools/list" => Ok(json!({"tools": [{
                "name": "echo",
                "description": "Echoes the message back",
                "inputSchema": {
                    "type": "object",
                    "properties": {"message": {"type": "string"}},
                    "required": ["message"]
                }
            }]})),
            "tools/call" if message.pointer("/params/name") == Some(&json!("echo")) => {
                let text = message
                    .pointer("/params/arguments/message")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                Ok(json!({"content": [{"type": "text", "text": format!("Echo: {text}")}]}))
            }
            _ => Err(json!({"code": -32601, "message": format!("no method {method}")})),
        };
        let answer = match outcome {
            Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
            Err(error) => json!({"jsonrpc": "2.0", "id": id, "error": error}),
        };
        if writeln!(stdout, "{answer}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            break;
        }
    }
    ExitCode::SUCCESS
}

/// Each stdio server spawned directly by the client vs the same command as a registry daemon
/// with `transport = "stdio"`, reached through `mcpsm proxy --target`: interleaved rounds of
/// sequential `tools/call echo`, as in [`one_session`].
async fn measure_stdio_host(ctx: &Ctx, servers: &[StdioServer]) -> StdioHost {
    let mut result = StdioHost::default();
    let mut tables = String::new();
    let mut ports = Vec::new();
    for server in servers {
        let port = match free_port() {
            Ok(p) => p,
            Err(e) => {
                result.error = Some(format!("{e:#}"));
                return result;
            }
        };
        tables.push_str(&server.registry_table(ctx, port));
        ports.push(port);
    }
    let home = match Home::with_daemons(ctx, "stdio-host", &tables) {
        Ok(h) => h,
        Err(e) => {
            result.error = Some(format!("{e:#}"));
            return result;
        }
    };
    for (server, port) in servers.iter().zip(ports) {
        progress(
            ctx,
            &format!(
                "stdio host ({}): direct stdio vs mcpsm --target",
                server.name()
            ),
        );
        result
            .runs
            .push(stdio_host_run(ctx, &home, *server, port).await);
    }
    home.stop_manager();
    result
}

async fn stdio_host_run(ctx: &Ctx, home: &Home, server: StdioServer, port: u16) -> StdioHostRun {
    let direct = Contender {
        peer: Peer::DirectStdio,
        name: "direct stdio".into(),
        launch: Some(server.launch(ctx)),
    };
    let mcpsm = Contender {
        peer: Peer::Mcpsm,
        name: "mcpsm --target".into(),
        launch: Some(ctx.target_launch(&home.dir, server.daemon())),
    };
    let mut run = StdioHostRun {
        server: server.name().into(),
        title: server.title().into(),
        direct_command: direct
            .launch
            .as_ref()
            .map(|l| l.display(ctx))
            .unwrap_or_default(),
        // Without its MCPSM_HOME (a scratch directory): the registry table is in the report.
        mcpsm_command: mcpsm
            .launch
            .as_ref()
            .map(|l| {
                Launch {
                    env: Vec::new(),
                    ..l.clone()
                }
                .display(ctx)
            })
            .unwrap_or_default(),
        registry_table: shorten(&server.registry_table(ctx, 0), ctx)
            .replace("port = 0", "port = PORT"),
        ..StdioHostRun::default()
    };
    // The first session starts the manager (if needed), the host and its server process, so
    // the measured one finds them warm, as a client's second session would.
    if let Err(e) = warm_up(ctx, &mcpsm).await {
        run.error = Some(format!("starting the daemon: {e:#}"));
        return run;
    }
    // The daemon's process group: `mcpsm log-writer … -- mcpsm stdio-host --port P …` (the
    // group's leader, which writes the host's stderr to the daemon's log), the host, and the
    // host's server processes.
    let host = match daemon_pid("stdio-host", port) {
        Ok(pid) => pid,
        Err(e) => {
            run.error = Some(format!("{e:#}"));
            return run;
        }
    };
    let hosted = || hosted_servers(host);
    // The host's and its server's CPU over mcpsm's blocks of calls only, as the proxy's.
    let watch = [(1, vec![host]), (1, hosted())];
    let (latencies, watched) = one_session_watching(ctx, "", &[direct, mcpsm], &watch).await;
    let mut latencies = latencies.into_iter();
    run.direct = latencies.next().unwrap_or_default();
    run.mcpsm = latencies.next().unwrap_or_default();
    let calls = run.mcpsm.calls;
    let per_call = |cpu: procfs::Cpu| (calls > 0).then(|| cpu.sched_ns as f64 / 1e3 / calls as f64);
    run.host_cpu_us_per_call = per_call(watched[0]);
    run.hosted_server_cpu_us_per_call = per_call(watched[1]);
    run.host_peak_rss_kib = Some(procfs::status_kib(&[host], "VmHWM"));
    run.host_anon_rss_kib = Some(procfs::status_kib(&[host], "RssAnon"));
    run.hosted_server_peak_rss_kib = Some(procfs::status_kib(&hosted(), "VmHWM"));
    if let (Some(d), Some(m)) = (&run.direct.latency, &run.mcpsm.latency) {
        run.added_p50_us = Some(m.p50_us - d.p50_us);
        run.added_p95_us = Some(m.p95_us - d.p95_us);
        run.added_p99_us = Some(m.p99_us - d.p99_us);
    }
    run
}

// ---------------------------------------------------------------------------------------------
// mcpsm only: the managed `--target` path to an HTTP daemon, and the manager and the stdio
// host under many `--target` sessions

/// The manager's pid, from `manager.json` in `home`.
fn manager_pid(home: &Home) -> Result<i32> {
    let path = home.dir.join("manager.json");
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("parsing {}", path.display()))?;
    state["pid"]
        .as_i64()
        .and_then(|p| i32::try_from(p).ok())
        .with_context(|| format!("no manager pid in {}", path.display()))
}

/// The one process `mcpsm SUBCOMMAND --port PORT …` (a managed daemon), not the `mcpsm
/// log-writer … -- mcpsm SUBCOMMAND --port PORT` that leads its process group.
fn daemon_pid(subcommand: &str, port: u16) -> Result<i32> {
    let port = port.to_string();
    let pids: Vec<i32> = procfs::find_by_args(&[subcommand, "--port", &port])
        .into_iter()
        .filter(|&p| procfs::args(p).get(1).map(String::as_str) == Some(subcommand))
        .collect();
    match pids.as_slice() {
        &[pid] => Ok(pid),
        _ => bail!("expected one `mcpsm {subcommand} --port {port}`, found {pids:?}"),
    }
}

/// The server processes behind a stdio host: its process group, less the host and the
/// log-writer in front of it (whose command lines name `stdio-host`).
fn hosted_servers(host: i32) -> Vec<i32> {
    procfs::stat_group(host)
        .map(procfs::group)
        .unwrap_or_default()
        .into_iter()
        .filter(|&p| !procfs::args(p).iter().any(|a| a == "stdio-host"))
        .collect()
}

/// Opens one session of `contender` and closes it: the manager (if needed) and the daemon
/// start, so the measured sessions find them warm, as a client's second session would.
async fn warm_up(ctx: &Ctx, contender: &Contender) -> Result<()> {
    let (session, _) = Session::open(ctx, contender, "").await?;
    session.close().await;
    Ok(())
}

fn cpu_per_call(cpu: procfs::Cpu, calls: usize) -> Option<f64> {
    (calls > 0).then(|| cpu.sched_ns as f64 / 1e3 / calls as f64)
}

#[derive(Serialize, Clone, Debug, Default)]
struct ManagedHttpRow {
    contender: String,
    command: String,
    /// CPU and RSS are the proxy's (for direct: the harness's whole process, no RSS).
    one_session: Latency,
    added_p95_us: Option<f64>,
    /// The manager process, over this contender's blocks of calls.
    manager_cpu_us_per_call: Option<f64>,
    /// The daemon process, over this contender's blocks of calls.
    daemon_cpu_us_per_call: Option<f64>,
}

#[derive(Serialize, Clone, Debug, Default)]
struct ManagedHttp {
    rows: Vec<ManagedHttpRow>,
    /// The manager at the end of the run.
    manager_peak_rss_kib: Option<u64>,
    manager_anon_rss_kib: Option<u64>,
    error: Option<String>,
}

/// One session each of direct, `mcpsm proxy --url` and `mcpsm proxy --target demo` to the same
/// managed HTTP daemon (already running), interleaved rounds as in [`one_session`]; the
/// manager's and the daemon's CPU over each contender's blocks of calls.
async fn measure_managed_http(ctx: &Ctx) -> ManagedHttp {
    let mut result = ManagedHttp::default();
    progress(ctx, "mcpsm: --target to an HTTP daemon vs --url vs direct");
    let home = match Home::create(ctx, "managed-http") {
        Ok(h) => h,
        Err(e) => {
            result.error = Some(format!("{e:#}"));
            return result;
        }
    };
    let url = format!("http://127.0.0.1:{}/mcp", home.demo_port);
    let target = Contender {
        peer: Peer::Mcpsm,
        name: "mcpsm --target".into(),
        launch: Some(ctx.target_launch(&home.dir, "demo")),
    };
    let found = async {
        warm_up(ctx, &target).await?;
        Ok::<_, anyhow::Error>((
            manager_pid(&home)?,
            daemon_pid("demo-server", home.demo_port)?,
        ))
    }
    .await;
    let (manager, daemon) = match found {
        Ok(pids) => pids,
        Err(e) => {
            result.error = Some(format!("starting the demo daemon: {e:#}"));
            return result;
        }
    };
    let mut url_proxy = ctx.contender(Peer::Mcpsm, &url);
    url_proxy.name = "mcpsm --url".into();
    let contenders = [ctx.contender(Peer::Direct, &url), url_proxy, target];
    let watch: Vec<(usize, Vec<i32>)> = (0..contenders.len())
        .flat_map(|i| [(i, vec![manager]), (i, vec![daemon])])
        .collect();
    let (latencies, watched) = one_session_watching(ctx, &url, &contenders, &watch).await;
    let direct_p95 = latencies
        .first()
        .and_then(|l| l.latency.as_ref())
        .map(|s| s.p95_us);
    for (i, (c, l)) in contenders.iter().zip(latencies).enumerate() {
        let calls = l.calls;
        result.rows.push(ManagedHttpRow {
            contender: c.name.clone(),
            command: c.launch.as_ref().map_or_else(
                || "(the harness's HTTP client)".into(),
                // Without its MCPSM_HOME (a scratch directory).
                |l| {
                    Launch {
                        env: Vec::new(),
                        ..l.clone()
                    }
                    .display(ctx)
                },
            ),
            added_p95_us: match (&l.latency, direct_p95) {
                (Some(s), Some(d)) if c.peer != Peer::Direct => Some(s.p95_us - d),
                _ => None,
            },
            manager_cpu_us_per_call: watched.get(2 * i).and_then(|cpu| cpu_per_call(*cpu, calls)),
            daemon_cpu_us_per_call: watched
                .get(2 * i + 1)
                .and_then(|cpu| cpu_per_call(*cpu, calls)),
            one_session: l,
        });
    }
    result.manager_peak_rss_kib = Some(procfs::status_kib(&[manager], "VmHWM"));
    result.manager_anon_rss_kib = Some(procfs::status_kib(&[manager], "RssAnon"));
    home.stop_manager();
    result
}

#[derive(Serialize, Clone, Debug, Default)]
struct TargetScaleRun {
    daemon: String,
    transport: &'static str,
    /// The proxies' figures (`cpu_us_per_call` summed over every proxy process ÷ calls).
    scale: Scale,
    open_errors: usize,
    open_first_error: Option<String>,
    /// The manager process over the run ÷ the answered calls.
    manager_cpu_us_per_call: Option<f64>,
    /// `mcpsm stdio-host` alone (stdio daemon only).
    host_cpu_us_per_call: Option<f64>,
    /// The daemon process (HTTP) or the server process behind the host (stdio).
    server_cpu_us_per_call: Option<f64>,
    error: Option<String>,
}

#[derive(Serialize, Clone, Debug, Default)]
struct TargetScale {
    runs: Vec<TargetScaleRun>,
    error: Option<String>,
}

/// The largest `--sessions` count of `mcpsm proxy --target` sessions at once, `--session-calls`
/// each, to the demo HTTP daemon and to the echo stdio server behind the stdio host: the CPU
/// per call of the proxies, the manager, the host and the server.
async fn measure_target_scale(ctx: &Ctx) -> TargetScale {
    let mut result = TargetScale::default();
    let echo_port = match free_port() {
        Ok(p) => p,
        Err(e) => {
            result.error = Some(format!("{e:#}"));
            return result;
        }
    };
    let table = StdioServer::Echo.registry_table(ctx, echo_port);
    let home = match Home::with_daemons(ctx, "scale-target", &table) {
        Ok(h) => h,
        Err(e) => {
            result.error = Some(format!("{e:#}"));
            return result;
        }
    };
    for (daemon, stdio) in [("demo", false), (StdioServer::Echo.daemon(), true)] {
        progress(
            ctx,
            &format!("mcpsm: concurrent --target sessions ({daemon})"),
        );
        let port = if stdio { echo_port } else { home.demo_port };
        result
            .runs
            .push(target_scale_run(ctx, &home, daemon, stdio, port).await);
    }
    home.stop_manager();
    result
}

async fn target_scale_run(
    ctx: &Ctx,
    home: &Home,
    daemon: &str,
    stdio: bool,
    port: u16,
) -> TargetScaleRun {
    let mut run = TargetScaleRun {
        daemon: daemon.into(),
        transport: if stdio { "stdio" } else { "streamable-http" },
        ..TargetScaleRun::default()
    };
    let contender = Contender {
        peer: Peer::Mcpsm,
        name: "mcpsm --target".into(),
        launch: Some(ctx.target_launch(&home.dir, daemon)),
    };
    // Watched: the manager, then the host (stdio) or the daemon (HTTP), then the hosted server.
    let found = async {
        warm_up(ctx, &contender).await?;
        let manager = manager_pid(home)?;
        if stdio {
            let host = daemon_pid("stdio-host", port)?;
            Ok::<_, anyhow::Error>(vec![vec![manager], vec![host], hosted_servers(host)])
        } else {
            Ok(vec![vec![manager], vec![daemon_pid("demo-server", port)?]])
        }
    }
    .await;
    let watch = match found {
        Ok(w) => w,
        Err(e) => {
            run.error = Some(format!("starting the daemon: {e:#}"));
            return run;
        }
    };
    let count = ctx.args.sessions.iter().copied().max().unwrap_or(0);
    let (sessions, open_errors, open_first_error) = open_sessions(ctx, &contender, "", count).await;
    run.open_errors = open_errors;
    run.open_first_error = open_first_error;
    if sessions.is_empty() {
        return run;
    }
    let (scale, watched, sessions) =
        concurrent_calls(ctx, sessions, ctx.args.session_calls, &watch).await;
    close_all(sessions).await;
    let calls = scale.ok_calls;
    let per_call = |k: usize| watched.get(k).and_then(|cpu| cpu_per_call(*cpu, calls));
    run.manager_cpu_us_per_call = per_call(0);
    if stdio {
        run.host_cpu_us_per_call = per_call(1);
        run.server_cpu_us_per_call = per_call(2);
    } else {
        run.server_cpu_us_per_call = per_call(1);
    }
    run.scale = scale;
    run
}

// ---------------------------------------------------------------------------------------------
// Machine, versions, report

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let text = if text.is_empty() {
        String::from_utf8_lossy(&out.stderr).trim().to_owned()
    } else {
        text
    };
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn package_version(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("package.json")).ok()?;
    let value: Value = serde_json::from_str(&text).ok()?;
    value.get("version")?.as_str().map(str::to_owned)
}

fn machine(loadavg_before: String) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    Machine {
        nproc: std::thread::available_parallelism().map_or(0, usize::from),
        cpu,
        memory_gib: (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        loadavg_before,
        loadavg_after: loadavg(),
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn versions(ctx: &Ctx, peers: &[Peer], upstreams: &[UpstreamKind]) -> BTreeMap<String, String> {
    let mut v = BTreeMap::new();
    let mcpsm = command_output(&ctx.mcpsm.to_string_lossy(), &["--version"])
        .map(|v| without_name(&v))
        .unwrap_or_else(|| "unknown".into());
    let rev = command_output(
        "git",
        &[
            "-C",
            &ctx.repo.to_string_lossy(),
            "describe",
            "--always",
            "--dirty",
        ],
    );
    v.insert(
        "mcpsm".into(),
        match rev {
            Some(rev) => format!("{mcpsm} (git {rev})"),
            None => mcpsm,
        },
    );
    for variant in &ctx.variants {
        let env: Vec<String> = variant
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let version = command_output(&variant.program.to_string_lossy(), &["--version"])
            .unwrap_or_else(|| "unknown".into());
        v.insert(
            format!("mcpsm[{}]", variant.label),
            format!(
                "{version} ({}{}{})",
                variant.program.display(),
                if env.is_empty() { "" } else { " " },
                env.join(" ")
            ),
        );
    }
    if let Some(rustc) = command_output("rustc", &["--version"]) {
        v.insert("rustc".into(), without_name(&rustc));
    }
    let needs_node = peers
        .iter()
        .any(|p| matches!(p, Peer::McpRemote | Peer::Supergateway))
        || upstreams.contains(&UpstreamKind::Everything);
    if needs_node {
        if let Some(node) = command_output("node", &["--version"]) {
            v.insert("node".into(), node);
        }
    }
    for (peer, package) in [
        (Peer::McpRemote, "mcp-remote"),
        (Peer::Supergateway, "supergateway"),
    ] {
        if peers.contains(&peer) {
            let version = package_version(&ctx.peers.join("node_modules").join(package))
                .unwrap_or_else(|| "not installed".into());
            v.insert(format!("{package} (npm)"), version);
        }
    }
    if peers.contains(&Peer::McpProxy) {
        let python = ctx.peers.join(".venv/bin/python");
        let python = python.to_string_lossy();
        let version = command_output(
            &python,
            &[
                "-c",
                "import importlib.metadata as m; print(m.version('mcp-proxy'))",
            ],
        )
        .unwrap_or_else(|| "not installed".into());
        v.insert("mcp-proxy (PyPI)".into(), version);
        if let Some(py) = command_output(&python, &["--version"]) {
            v.insert("python".into(), without_name(&py));
        }
    }
    if upstreams.contains(&UpstreamKind::Everything) {
        let dir = ctx
            .everything
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        v.insert(
            "@modelcontextprotocol/server-everything (npm)".into(),
            package_version(&dir).unwrap_or_else(|| "unknown".into()),
        );
    }
    v
}

/// `mcpsm 0.1.0` → `0.1.0`.
fn without_name(version: &str) -> String {
    version
        .split_once(' ')
        .map_or(version, |(_, rest)| rest)
        .to_owned()
}

fn date() -> String {
    command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_else(|| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        format!("unix time {secs}")
    })
}

fn progress(ctx: &Ctx, what: &str) {
    let _ = ctx;
    eprintln!("bench: {what} …");
}

// Formatting helpers for the markdown tables.

fn fmt_us(v: f64) -> String {
    if v.abs() >= 10_000.0 {
        format!("{:.1} ms", v / 1e3)
    } else if v.abs() >= 1_000.0 {
        format!("{:.2} ms", v / 1e3)
    } else {
        format!("{v:.0} µs")
    }
}

fn fmt_added(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 0.0 => format!("+{}", fmt_us(v)),
        Some(v) => format!("−{}", fmt_us(-v)),
        None => "—".into(),
    }
}

fn fmt_opt_us(v: Option<f64>) -> String {
    v.map_or_else(|| "—".into(), fmt_us)
}

fn fmt_cpu(v: Option<f64>) -> String {
    v.map_or_else(|| "—".into(), |v| format!("{v:.0} µs"))
}

/// CPU figures that may be near zero (the manager's): one decimal below 10 µs.
fn fmt_cpu_fine(v: Option<f64>) -> String {
    match v {
        Some(v) if v < 10.0 => format!("{v:.1} µs"),
        _ => fmt_cpu(v),
    }
}

fn fmt_errors(errors: usize, first: &Option<String>) -> String {
    match first {
        Some(e) if errors > 0 => format!("**{errors}** ({})", excerpt(e).replace('|', "/")),
        _ => errors.to_string(),
    }
}

fn fmt_kib(v: Option<u64>) -> String {
    v.map_or_else(|| "—".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

fn fmt_stat(s: &Option<Stats>, pick: fn(&Stats) -> f64) -> String {
    s.as_ref().map_or_else(|| "—".into(), |s| fmt_us(pick(s)))
}

fn fail_cell(error: &Option<String>) -> Option<String> {
    error
        .as_ref()
        .map(|e| format!("failed: {}", excerpt(e).replace('|', "/")))
}

fn render(report: &Report) -> String {
    let mut md = String::new();
    let m = &report.machine;
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "What `mcpsm proxy` costs a tool call, measured side by side with the peer stdio→HTTP \
         MCP proxies on the same upstream, with the same client, in one interleaved run. \
         Generated by `examples/bench.rs`; do not edit by hand — rerun it.\n"
    );
    let _ = writeln!(md, "- **Date**: {}", report.date);
    let _ = writeln!(
        md,
        "- **Machine**: {} cores ({}), {:.1} GiB RAM, Linux {}; load average {} at the start, {} \
         at the end (which includes this run's own many-process phases). A shared 2-core VM where \
         other builds and tests may run: expect ±20 % between runs on the µs figures.",
        m.nproc, m.cpu, m.memory_gib, m.kernel, m.loadavg_before, m.loadavg_after
    );
    let versions: Vec<String> = report
        .versions
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let _ = writeln!(md, "- **Versions**: {}", versions.join(" · "));
    let _ = writeln!(
        md,
        "- **Reproduce**: `{}` (runs `target/release/examples/bench {}`); whole run took {:.0} s",
        report.command,
        report.harness_args.join(" "),
        report.wall_seconds
    );
    let _ = writeln!(md, "- **Settings**: `{}`\n", report.settings);

    let _ = writeln!(md, "## How it is measured\n");
    let _ = writeln!(
        md,
        "- **Client**: a minimal MCP stdio client in the harness spawns each contender, sends \
         `initialize` + `notifications/initialized`, then `tools/call echo` round trips, one at a \
         time per session. **direct** is the harness's own HTTP client (reqwest, keep-alive) \
         POSTing the same requests to the upstream: the floor. *added* = contender − direct at \
         the same percentile.\n\
         - **pipe (cat)** is not a proxy: `cat` echoing the request line back. It is the cost of \
         the stdio hop alone (two pipe transfers and two wake-ups), which every stdio proxy pays \
         on top of direct: a proxy can at best be *direct + pipe*.\n\
         - **Interleaved**: the one-session calls run in rounds; each round gives every \
         contender a block of calls in a rotating order, so background load hits all alike. \
         Spawn and large-message repetitions rotate the same way.\n\
         - **CPU per call**: on-CPU time of every thread of every process in the contender's \
         process group (`/proc/PID/task/TID/schedstat`, ns) over the calls, divided by the \
         calls; `utime+stime` from `/proc/PID/stat` agrees within clock-tick resolution and is in \
         the JSON. In parentheses for the floors: `cat`'s own CPU, and for direct the harness's \
         whole process (what an HTTP client spends making the call itself).\n\
         - **Peak RSS**: `VmHWM` summed over the process group; it counts the pages of the \
         executable mapped in, which every proxy process shares. **Private RSS**: `RssAnon` at \
         the end of the session, what each additional proxy really costs.\n\
         - **Peers** run with their logging turned down (`mcp-proxy --log-level WARNING`, \
         `mcp-remote --silent`, `supergateway --logLevel none`) — their best case — and \
         started from their installed bin (no `npx` in front).\n\
         - Raw numbers: `bench/results.json`; `--variant LABEL=PATH` measures another mcpsm \
         build in the same interleaved run (for before/after comparisons).\n"
    );

    let _ = writeln!(md, "Contender commands (`PORT` is the upstream's):\n");
    for (name, command) in &report.contender_commands {
        let _ = writeln!(md, "- **{name}**: `{command}`");
    }
    let _ = writeln!(md);

    render_targets(&mut md, report);

    for upstream in &report.upstreams {
        let _ = writeln!(md, "## {}\n", upstream.title);
        if let Some(e) = &upstream.error {
            let _ = writeln!(md, "Could not start the upstream: {e}\n");
            continue;
        }
        let calls = upstream
            .contenders
            .iter()
            .map(|c| c.one_session.calls)
            .max()
            .unwrap_or(0);
        let _ = writeln!(
            md,
            "### One session: {calls} sequential `tools/call echo` per contender\n"
        );
        let _ = writeln!(
            md,
            "| contender | p50 | p99 | added p50 | added p99 | proxy CPU / call | peak RSS | private RSS |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for c in &upstream.contenders {
            let l = &c.one_session;
            if let (None, Some(fail)) = (&l.latency, fail_cell(&l.error)) {
                let _ = writeln!(md, "| {} | {fail} | | | | | | |", c.contender);
                continue;
            }
            let floor = matches!(c.kind, Peer::Direct | Peer::Pipe);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                c.contender,
                fmt_stat(&l.latency, |s| s.p50_us),
                fmt_stat(&l.latency, |s| s.p99_us),
                if floor {
                    "—".into()
                } else {
                    fmt_added(l.added_p50_us)
                },
                if floor {
                    "—".into()
                } else {
                    fmt_added(l.added_p99_us)
                },
                if floor {
                    format!("({})", fmt_cpu(l.cpu_us_per_call))
                } else {
                    fmt_cpu(l.cpu_us_per_call)
                },
                if floor {
                    "—".into()
                } else {
                    fmt_kib(l.peak_rss_kib)
                },
                if floor {
                    "—".into()
                } else {
                    fmt_kib(l.anon_rss_kib)
                },
            );
        }
        let _ = writeln!(md);

        let _ = writeln!(
            md,
            "### Start-up: spawn → `initialize` result (warm upstream)\n"
        );
        let _ = writeln!(md, "| contender | p50 | min | max | runs |");
        let _ = writeln!(md, "|---|---:|---:|---:|---:|");
        for c in upstream.contenders.iter().filter(|c| c.kind.is_mcp()) {
            if let Some(fail) = fail_cell(&c.spawn_error) {
                let _ = writeln!(md, "| {} | {fail} | | | |", c.contender);
                continue;
            }
            let s = &c.spawn_to_initialize;
            let name = if c.kind == Peer::Direct {
                "direct (new HTTP session: connect + initialize)".to_owned()
            } else {
                c.contender.clone()
            };
            let _ = writeln!(
                md,
                "| {name} | {} | {} | {} | {} |",
                fmt_stat(s, |s| s.p50_us),
                fmt_stat(s, |s| s.min_us),
                fmt_stat(s, |s| s.max_us),
                s.as_ref().map_or(0, |s| s.n),
            );
        }
        let _ = writeln!(md);

        let _ = writeln!(md, "### Large messages: `echo` of an N MiB string\n");
        let _ = writeln!(
            md,
            "The string is N MiB less 1 KiB, so each JSON-RPC line stays under N MiB (the \
             TypeScript SDK's stdio transport in mcp-remote and supergateway silently drops \
             lines over 10 MiB); the request and the answer each carry it. Time is the p50 round \
             trip; RSS is the largest `VmRSS` of the proxy sampled every 2 ms while the calls \
             ran, and the session's `VmHWM` at the end.{}\n",
            if upstream.upstream == "everything" {
                " server-everything refuses request bodies over 4 MiB (HTTP 413), so only the \
                 sizes up to 4 MiB run here."
            } else {
                ""
            }
        );
        let _ = writeln!(
            md,
            "| contender | size | p50 | vs direct | RSS while streaming | peak RSS (session) |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
        for c in &upstream.contenders {
            if c.large.sizes.is_empty() {
                if let Some(fail) = fail_cell(&c.large.error) {
                    let _ = writeln!(md, "| {} | | {fail} | | | |", c.contender);
                }
                continue;
            }
            for l in &c.large.sizes {
                if let (None, Some(fail)) = (&l.time, fail_cell(&l.error)) {
                    let _ = writeln!(md, "| {} | {} MiB | {fail} | | | |", c.contender, l.mib);
                    continue;
                }
                let vs = match (c.kind, l.vs_direct_pct) {
                    (Peer::Direct | Peer::Pipe, _) => "—".into(),
                    (_, Some(p)) => format!("{p:+.0} %"),
                    _ => "—".into(),
                };
                let _ = writeln!(
                    md,
                    "| {} | {} MiB | {} | {vs} | {} | {} |",
                    c.contender,
                    l.mib,
                    fmt_stat(&l.time, |s| s.p50_us),
                    if c.kind == Peer::Pipe {
                        "—".into()
                    } else {
                        fmt_kib(l.rss_during_max_kib)
                    },
                    if c.kind == Peer::Pipe {
                        "—".into()
                    } else {
                        fmt_kib(c.large.peak_rss_kib)
                    },
                );
            }
        }
        let _ = writeln!(md);

        let _ = writeln!(md, "### Concurrent sessions through one upstream\n");
        let _ = writeln!(
            md,
            "Every session is its own proxy process (for direct: its own MCP session on a \
             shared HTTP client) doing sequential calls; all sessions run at once.\n"
        );
        let _ = writeln!(
            md,
            "| contender | sessions × calls | throughput | errors | p50 | p99 | proxy CPU / call | peak RSS per proxy (max / mean) | private RSS per proxy (max) |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for c in upstream.contenders.iter().filter(|c| c.kind.is_mcp()) {
            if let Some(skipped) = &c.scale.skipped {
                let _ = writeln!(md, "| {} | {skipped} | | | | | | | |", c.contender);
                continue;
            }
            if c.scale.open_errors > 0 {
                let _ = writeln!(
                    md,
                    "| {} | {} sessions failed to open: {} | | | | | | | |",
                    c.contender,
                    c.scale.open_errors,
                    excerpt(c.scale.open_first_error.as_deref().unwrap_or("")).replace('|', "/")
                );
            }
            for r in &c.scale.runs {
                let rss = match (r.peak_rss_per_proxy_max_kib, r.peak_rss_per_proxy_mean_kib) {
                    (Some(max), Some(mean)) => {
                        format!("{} / {}", fmt_kib(Some(max)), fmt_kib(Some(mean)))
                    }
                    _ => "—".into(),
                };
                let errors = match &r.first_error {
                    Some(e) if r.errors > 0 => {
                        format!("**{}** ({})", r.errors, excerpt(e).replace('|', "/"))
                    }
                    _ => r.errors.to_string(),
                };
                let _ = writeln!(
                    md,
                    "| {} | {} × {} | {:.0} calls/s | {errors} | {} | {} | {} | {rss} | {} |",
                    c.contender,
                    r.sessions,
                    r.calls_per_session,
                    r.calls_per_sec,
                    fmt_stat(&r.latency, |s| s.p50_us),
                    fmt_stat(&r.latency, |s| s.p99_us),
                    fmt_cpu(r.cpu_us_per_call),
                    fmt_kib(r.anon_rss_per_proxy_max_kib),
                );
            }
        }
        let _ = writeln!(md);
    }

    if let Some(managed) = &report.managed {
        render_managed(&mut md, managed);
    }
    if let Some(managed_http) = &report.managed_http {
        render_managed_http(&mut md, managed_http, &report.settings);
    }
    if let Some(host) = &report.stdio_host {
        render_stdio_host(&mut md, host);
    }
    if let Some(scale) = &report.scale_target {
        render_target_scale(&mut md, scale);
    }
    md
}

fn render_managed(md: &mut String, managed: &Managed) {
    let _ = writeln!(
        md,
        "## mcpsm only: the manager path (`mcpsm proxy --target NAME`)\n"
    );
    let _ = writeln!(
        md,
        "*Cold*: a fresh `MCPSM_HOME` with no manager running; the proxy starts the manager \
         (detached), which starts the daemon and probes it ready; the time is spawn → \
         `initialize` result. *Daemon alone*: the same daemon started by hand, spawn → first \
         answered `initialize` (polled every ms) — what the daemon itself needs.\n"
    );
    let _ = writeln!(
        md,
        "| daemon | cold: spawn → initialize (p50) | daemon alone → ready (p50) | mcpsm's share | runs |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    for c in &managed.cold {
        let share = match (&c.cold_to_initialize, &c.daemon_alone_ready) {
            (Some(a), Some(b)) => fmt_us(a.p50_us - b.p50_us),
            _ => "—".into(),
        };
        let mut row = format!(
            "| {} | {} | {} | {share} | {} |",
            c.daemon,
            fmt_stat(&c.cold_to_initialize, |s| s.p50_us),
            fmt_stat(&c.daemon_alone_ready, |s| s.p50_us),
            c.cold_to_initialize.as_ref().map_or(0, |s| s.n)
        );
        if !c.errors.is_empty() {
            let _ = write!(row, " errors: {}", excerpt(&c.errors.join("; ")));
        }
        let _ = writeln!(md, "{row}");
    }
    let _ = writeln!(md);
    let w = &managed.warm_target_spawn_to_initialize;
    let _ = writeln!(
        md,
        "*Warm `--target`*: manager and daemon running, spawn → `initialize` result: p50 {}, \
         min {}, max {} ({} runs){}.\n",
        fmt_stat(w, |s| s.p50_us),
        fmt_stat(w, |s| s.min_us),
        fmt_stat(w, |s| s.max_us),
        w.as_ref().map_or(0, |s| s.n),
        managed
            .warm_error
            .as_ref()
            .map(|e| format!("; error: {}", excerpt(e)))
            .unwrap_or_default()
    );
    let r = &managed.recovery;
    let _ = writeln!(
        md,
        "*Recovery*: a live `--target demo` session; `kill -9` of the managed daemon, then a \
         call at once. The manager restarts the daemon (after its restart back-off); the proxy \
         holds the call, reconnects, replays `initialize` and sends it.\n"
    );
    let _ = writeln!(
        md,
        "| kill → daemon ready (manager back-off + start) | daemon ready → call answered (proxy) | kill → call answered | runs |"
    );
    let _ = writeln!(md, "|---:|---:|---:|---:|");
    let _ = writeln!(
        md,
        "| {} | {} | {} | {} |",
        fmt_stat(&r.kill_to_ready, |s| s.p50_us),
        fmt_stat(&r.ready_to_answer, |s| s.p50_us),
        fmt_stat(&r.kill_to_answer, |s| s.p50_us),
        r.kill_to_answer.as_ref().map_or(0, |s| s.n)
    );
    if !r.errors.is_empty() {
        let _ = writeln!(md, "\nErrors: {}", excerpt(&r.errors.join("; ")));
    }
    let _ = writeln!(md);
}

fn render_managed_http(md: &mut String, m: &ManagedHttp, settings: &Value) {
    let _ = writeln!(
        md,
        "## mcpsm only: the managed `--target` path to an HTTP daemon\n"
    );
    let calls = m
        .rows
        .iter()
        .map(|r| r.one_session.calls)
        .max()
        .unwrap_or(0);
    let _ = writeln!(
        md,
        "The registry daemon `demo` (`mcpsm demo-server`, streamable HTTP), already started by \
         the manager (a scratch `MCPSM_HOME`); one session per contender, {WARMUP_CALLS} warm-up \
         calls, then {calls} sequential `tools/call echo` in {} interleaved rounds. **direct**: \
         the harness's HTTP client to the daemon's port; **mcpsm --url**: `mcpsm proxy --url` to \
         the same port, no manager involved; **mcpsm --target**: `mcpsm proxy --target demo`, \
         which asks the manager to ensure the daemon, then talks to it itself. *Proxy CPU*: the \
         proxy process (in parentheses for direct: the harness's whole process); *manager CPU* \
         and *daemon CPU*: the manager process and the daemon process (schedstat, every \
         thread) over the same blocks of calls as the contender's, ÷ those calls; the manager's \
         figure in the *direct* and *--url* rows, where it has nothing to do with the calls, is \
         its background.\n",
        settings["rounds"]
    );
    if let Some(e) = &m.error {
        let _ = writeln!(md, "Could not set up the managed daemon: {}\n", excerpt(e));
        return;
    }
    let _ = writeln!(
        md,
        "| contender | p50 | p95 | p99 | added p50 | added p95 | added p99 | proxy CPU / call | manager CPU / call | daemon CPU / call | peak RSS | private RSS |"
    );
    let _ = writeln!(
        md,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in &m.rows {
        let l = &r.one_session;
        if let (None, Some(fail)) = (&l.latency, fail_cell(&l.error)) {
            let _ = writeln!(md, "| {} | {fail} | | | | | | | | | | |", r.contender);
            continue;
        }
        let direct = r.contender == Peer::Direct.name();
        let dash = |text: String| if direct { "—".to_owned() } else { text };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.contender,
            fmt_stat(&l.latency, |s| s.p50_us),
            fmt_stat(&l.latency, |s| s.p95_us),
            fmt_stat(&l.latency, |s| s.p99_us),
            dash(fmt_added(l.added_p50_us)),
            dash(fmt_added(r.added_p95_us)),
            dash(fmt_added(l.added_p99_us)),
            if direct {
                format!("({})", fmt_cpu(l.cpu_us_per_call))
            } else {
                fmt_cpu(l.cpu_us_per_call)
            },
            fmt_cpu_fine(r.manager_cpu_us_per_call),
            fmt_cpu(r.daemon_cpu_us_per_call),
            dash(fmt_kib(l.peak_rss_kib)),
            dash(fmt_kib(l.anon_rss_kib)),
        );
    }
    let _ = writeln!(
        md,
        "\nThe manager at the end of the run: {} peak RSS ({} private).\n",
        fmt_kib(m.manager_peak_rss_kib),
        fmt_kib(m.manager_anon_rss_kib)
    );
    let errors: Vec<String> = m
        .rows
        .iter()
        .filter_map(|r| {
            r.one_session
                .error
                .as_ref()
                .map(|e| format!("{}: {e}", r.contender))
        })
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(md, "Errors: {}\n", excerpt(&errors.join("; ")));
    }
    let commands: Vec<String> = m
        .rows
        .iter()
        .map(|r| format!("{} `{}`", r.contender, r.command))
        .collect();
    let _ = writeln!(
        md,
        "Commands (`PORT` is the daemon's): {}; the registry's `[daemons.demo]` runs `mcpsm \
         demo-server --port {{port}}`.\n",
        commands.join("; ")
    );
}

fn render_target_scale(md: &mut String, t: &TargetScale) {
    let _ = writeln!(
        md,
        "## mcpsm only: the manager and the stdio host under many `--target` sessions\n"
    );
    let _ = writeln!(
        md,
        "Every session is its own `mcpsm proxy --target NAME` process (opened {SPAWN_PARALLELISM} \
         at a time, manager and daemon already running) doing sequential `tools/call echo`; all \
         sessions run at once. **demo**: `mcpsm demo-server`, streamable HTTP; **echo-stdio**: \
         the harness's minimal stdio server (`bench --serve-stdio-echo`) as a `transport = \
         \"stdio\"` daemon, behind `mcpsm stdio-host`. *Throughput*: answered calls ÷ the run's \
         wall time. *CPU / call*: on-CPU time (schedstat, every thread) over the run ÷ the \
         answered calls, of: all the proxy processes together (= the mean proxy's), the manager \
         process, the stdio host alone, and the server (the demo daemon, or the stdio server \
         behind the host). The manager's figure is whatever it does for the sessions meanwhile \
         (their leases, their periodic reports of figures), spread over the run's calls: the \
         shorter the run (*wall*), the less of that it catches.\n"
    );
    if let Some(e) = &t.error {
        let _ = writeln!(md, "Could not set up the daemons: {}\n", excerpt(e));
        return;
    }
    let _ = writeln!(
        md,
        "| daemon | sessions × calls | wall | throughput | errors | p50 | p99 | proxies CPU / call | manager CPU / call | stdio host CPU / call | server CPU / call |"
    );
    let _ = writeln!(
        md,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for run in &t.runs {
        let name = format!("{} ({})", run.daemon, run.transport);
        if let Some(e) = &run.error {
            let _ = writeln!(
                md,
                "| {name} | failed: {} | | | | | | | | | |",
                excerpt(e).replace('|', "/")
            );
            continue;
        }
        if run.open_errors > 0 {
            let _ = writeln!(
                md,
                "| {name} | {} sessions failed to open: {} | | | | | | | | | |",
                run.open_errors,
                excerpt(run.open_first_error.as_deref().unwrap_or("")).replace('|', "/")
            );
        }
        let r = &run.scale;
        if r.sessions == 0 {
            continue;
        }
        let _ = writeln!(
            md,
            "| {name} | {} × {} | {} | {:.0} calls/s | {} | {} | {} | {} | {} | {} | {} |",
            r.sessions,
            r.calls_per_session,
            fmt_us(r.wall_ms * 1e3),
            r.calls_per_sec,
            fmt_errors(r.errors, &r.first_error),
            fmt_stat(&r.latency, |s| s.p50_us),
            fmt_stat(&r.latency, |s| s.p99_us),
            fmt_cpu(r.cpu_us_per_call),
            fmt_cpu_fine(run.manager_cpu_us_per_call),
            if run.transport == "stdio" {
                fmt_cpu_fine(run.host_cpu_us_per_call)
            } else {
                "—".into()
            },
            fmt_cpu(run.server_cpu_us_per_call),
        );
    }
    let _ = writeln!(md);
}

/// The stdio-host target: a `tools/call` through `mcpsm proxy --target` to a stdio-hosted server
/// adds at most this much p50 over the client spawning the server itself.
const STDIO_HOST_TARGET_US: f64 = 500.0;

fn render_stdio_host(md: &mut String, host: &StdioHost) {
    let _ = writeln!(
        md,
        "## mcpsm only: the stdio-host path (a stdio-only server shared through `mcpsm proxy --target`)\n"
    );
    let _ = writeln!(
        md,
        "**direct stdio**: the harness's client spawns the stdio server itself and talks to it \
         over its stdin/stdout — what a client does without mcpsm. **mcpsm --target**: the same \
         command as a registry daemon with `transport = \"stdio\"`, which the manager runs behind \
         `mcpsm stdio-host`; the client spawns `mcpsm proxy --target NAME` (manager, host and \
         server already running, as for any session after the first). Same client, same \
         `tools/call echo` round trips, interleaved rounds. CPU and RSS of *direct stdio* are \
         the server process's; of *mcpsm --target* the proxy's. The host and the server behind \
         it are shared by every session of the daemon; their CPU per call is measured over the \
         same blocks of calls as the proxy's. Target: added p50 ≤ {}.\n",
        fmt_us(STDIO_HOST_TARGET_US)
    );
    if let Some(e) = &host.error {
        let _ = writeln!(md, "Could not set up the stdio host: {e}\n");
    }
    for run in &host.runs {
        let calls = run.direct.calls.max(run.mcpsm.calls);
        let _ = writeln!(
            md,
            "### {}: {calls} sequential `tools/call echo` per contender\n",
            run.title
        );
        if let Some(e) = &run.error {
            let _ = writeln!(md, "Failed: {}\n", excerpt(e));
            continue;
        }
        let _ = writeln!(
            md,
            "| contender | p50 | p95 | p99 | added p50 | added p95 | added p99 | CPU / call | peak RSS | private RSS |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (name, l, added) in [
            ("direct stdio", &run.direct, [None, None, None]),
            (
                "mcpsm --target",
                &run.mcpsm,
                [run.added_p50_us, run.added_p95_us, run.added_p99_us],
            ),
        ] {
            if let (None, Some(fail)) = (&l.latency, fail_cell(&l.error)) {
                let _ = writeln!(md, "| {name} | {fail} | | | | | | | | |");
                continue;
            }
            let _ = writeln!(
                md,
                "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                fmt_stat(&l.latency, |s| s.p50_us),
                fmt_stat(&l.latency, |s| s.p95_us),
                fmt_stat(&l.latency, |s| s.p99_us),
                fmt_added(added[0]),
                fmt_added(added[1]),
                fmt_added(added[2]),
                fmt_cpu(l.cpu_us_per_call),
                fmt_kib(l.peak_rss_kib),
                fmt_kib(l.anon_rss_kib),
            );
        }
        let _ = writeln!(
            md,
            "\nShared by every session: the host (`mcpsm stdio-host`) {} peak RSS ({} private), \
             {} CPU per call; the server process behind it {} peak RSS, {} CPU per call.\n",
            fmt_kib(run.host_peak_rss_kib),
            fmt_kib(run.host_anon_rss_kib),
            fmt_cpu(run.host_cpu_us_per_call),
            fmt_kib(run.hosted_server_peak_rss_kib),
            fmt_cpu(run.hosted_server_cpu_us_per_call),
        );
        let verdict = match run.added_p50_us {
            Some(a) if a <= STDIO_HOST_TARGET_US => "met",
            Some(_) => "**not met**",
            None => "not measured",
        };
        let _ = writeln!(
            md,
            "Target added p50 ≤ {}: {} — {verdict}.\n",
            fmt_us(STDIO_HOST_TARGET_US),
            fmt_added(run.added_p50_us)
        );
        let errors: Vec<&String> = [&run.direct.error, &run.mcpsm.error]
            .into_iter()
            .flatten()
            .collect();
        if !errors.is_empty() {
            let _ = writeln!(
                md,
                "Errors: {}\n",
                excerpt(
                    &errors
                        .iter()
                        .map(|e| e.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            );
        }
        let _ = writeln!(
            md,
            "Commands: direct `{}`; mcpsm `{}`, with this daemon in its registry:\n\n```toml\n{}\n```\n",
            run.direct_command,
            run.mcpsm_command,
            run.registry_table.trim(),
        );
    }
}

/// The issue's targets against mcpsm's numbers on the fast upstream.
fn render_targets(md: &mut String, report: &Report) {
    let Some(demo) = report.upstreams.iter().find(|u| u.upstream == "demo") else {
        return;
    };
    let Some(mcpsm) = demo.contenders.iter().find(|c| c.kind == Peer::Mcpsm) else {
        return;
    };
    let _ = writeln!(md, "## Targets (mcpsm, fast upstream)\n");
    let _ = writeln!(md, "| target | measured | met |");
    let _ = writeln!(md, "|---|---|:-:|");
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "—",
    };
    let l = &mcpsm.one_session;
    let pipe = demo.contenders.iter().find(|c| c.kind == Peer::Pipe);
    let pipe_p50 = pipe
        .and_then(|c| c.one_session.latency.as_ref())
        .map(|s| s.p50_us);
    let pipe_1mib_pct = {
        let direct_1mib = demo
            .contenders
            .iter()
            .find(|c| c.kind == Peer::Direct)
            .and_then(|c| c.large.sizes.iter().find(|l| l.mib == 1))
            .and_then(|l| l.time.as_ref())
            .map(|t| t.p50_us);
        let pipe_1mib = pipe
            .and_then(|c| c.large.sizes.iter().find(|l| l.mib == 1))
            .and_then(|l| l.time.as_ref())
            .map(|t| t.p50_us);
        match (pipe_1mib, direct_1mib) {
            (Some(p), Some(d)) if d > 0.0 => Some(p / d * 100.0),
            _ => None,
        }
    };
    let scale_cpu: Vec<String> = mcpsm
        .scale
        .runs
        .iter()
        .filter_map(|r| {
            r.cpu_us_per_call
                .map(|c| format!("{c:.0} µs at {}", r.sessions))
        })
        .collect();
    let cpu_ok = l.cpu_us_per_call.map(|c| {
        c <= 60.0
            && mcpsm
                .scale
                .runs
                .iter()
                .all(|r| r.cpu_us_per_call.is_none_or(|c| c <= 80.0))
    });
    let _ = writeln!(
        md,
        "| proxy CPU ≤ 60 µs per call at 1 session, ≤ 80 µs with many | {} at 1 session; {} | {} |",
        fmt_cpu(l.cpu_us_per_call),
        if scale_cpu.is_empty() {
            "—".into()
        } else {
            format!("{} sessions", scale_cpu.join(", "))
        },
        verdict(cpu_ok)
    );
    let _ = writeln!(
        md,
        "| added p50 ≤ 60 µs over direct HTTP | {} (p99 {}); the stdio hop alone (`cat`) takes {} | {} |",
        fmt_added(l.added_p50_us),
        fmt_added(l.added_p99_us),
        fmt_opt_us(pipe_p50),
        verdict(l.added_p50_us.map(|a| a <= 60.0))
    );
    let scale_rss = mcpsm
        .scale
        .runs
        .iter()
        .filter_map(|r| r.peak_rss_per_proxy_max_kib)
        .max();
    let large_rss = mcpsm.large.peak_rss_kib;
    let rss_all = [l.peak_rss_kib, scale_rss].into_iter().flatten().max();
    let _ = writeln!(
        md,
        "| peak RSS ≤ 8 MiB per proxy | {} (1 session), {} (max over concurrent sessions), {} after the large messages; private (`RssAnon`) {} | {} |",
        fmt_kib(l.peak_rss_kib),
        fmt_kib(scale_rss),
        fmt_kib(large_rss),
        fmt_kib(l.anon_rss_kib),
        verdict(rss_all.map(|k| k <= 8 * 1024))
    );
    let warm = mcpsm.spawn_to_initialize.as_ref().map(|s| s.p50_us);
    let warm_target = report
        .managed
        .as_ref()
        .and_then(|m| m.warm_target_spawn_to_initialize.as_ref())
        .map(|s| s.p50_us);
    let _ = writeln!(
        md,
        "| warm spawn → initialize ≤ 5 ms | {} (`--url`), {} (`--target`, manager running) | {} |",
        fmt_opt_us(warm),
        fmt_opt_us(warm_target),
        verdict(warm.map(|w| w <= 5_000.0 && warm_target.is_none_or(|t| t <= 5_000.0)))
    );
    let one_mib = mcpsm.large.sizes.iter().find(|l| l.mib == 1);
    let _ = writeln!(
        md,
        "| 1 MiB echo ≤ direct + `cat` + 10 % | {} over direct; the stdio hop alone (`cat`) takes {} of direct's time | {} |",
        one_mib
            .and_then(|l| l.vs_direct_pct)
            .map_or_else(|| "—".into(), |p| format!("{p:+.1} %")),
        pipe_1mib_pct.map_or_else(|| "—".into(), |p| format!("{p:.0} %")),
        verdict(
            one_mib
                .and_then(|l| l.vs_direct_pct)
                .zip(pipe_1mib_pct)
                .map(|(p, cat)| p <= cat + 10.0)
        )
    );
    let run64 = mcpsm.scale.runs.iter().find(|r| r.sessions == 64);
    let _ = writeln!(
        md,
        "| 64 sessions, 0 errors | {} | {} |",
        run64.map_or_else(
            || "—".into(),
            |r| format!(
                "{} errors in {} calls, {:.0} calls/s",
                r.errors,
                r.sessions * r.calls_per_session,
                r.calls_per_sec
            )
        ),
        verdict(run64.map(|r| r.errors == 0 && mcpsm.scale.open_errors == 0))
    );
    let stdio_host = report
        .stdio_host
        .as_ref()
        .and_then(|h| h.runs.iter().find(|r| r.server == "everything"));
    if let Some(run) = stdio_host {
        let _ = writeln!(
            md,
            "| stdio-hosted `tools/call` (server-everything) ≤ direct stdio + {} p50 | {} (direct stdio {}, mcpsm --target {}) | {} |",
            fmt_us(STDIO_HOST_TARGET_US),
            fmt_added(run.added_p50_us),
            fmt_stat(&run.direct.latency, |s| s.p50_us),
            fmt_stat(&run.mcpsm.latency, |s| s.p50_us),
            verdict(run.added_p50_us.map(|a| a <= STDIO_HOST_TARGET_US))
        );
    }
    let _ = writeln!(md);
}

/// Short human summary for the console (and the whole output of `--smoke`).
fn summary(report: &Report) -> String {
    let mut out = String::new();
    for u in &report.upstreams {
        let _ = writeln!(out, "upstream {}:", u.upstream);
        if let Some(e) = &u.error {
            let _ = writeln!(out, "  error: {e}");
        }
        for c in &u.contenders {
            let l = &c.one_session;
            let _ = writeln!(
                out,
                "  {:<13} p50 {:>9} p99 {:>9} added p50 {:>9} cpu/call {:>7} rss {:>9} spawn {:>9}{}",
                c.contender,
                fmt_stat(&l.latency, |s| s.p50_us),
                fmt_stat(&l.latency, |s| s.p99_us),
                fmt_added(l.added_p50_us),
                fmt_cpu(l.cpu_us_per_call),
                fmt_kib(l.peak_rss_kib),
                fmt_stat(&c.spawn_to_initialize, |s| s.p50_us),
                l.error
                    .as_ref()
                    .map(|e| format!("  ERROR: {}", excerpt(e)))
                    .unwrap_or_default()
            );
            for large in &c.large.sizes {
                let _ = writeln!(
                    out,
                    "  {:<13} echo {} MiB p50 {:>9} vs direct {} rss {}{}",
                    "",
                    large.mib,
                    fmt_stat(&large.time, |s| s.p50_us),
                    large
                        .vs_direct_pct
                        .map_or_else(|| "—".into(), |p| format!("{p:+.0} %")),
                    fmt_kib(large.rss_during_max_kib),
                    large
                        .error
                        .as_ref()
                        .map(|e| format!("  ERROR: {}", excerpt(e)))
                        .unwrap_or_default()
                );
            }
            for r in &c.scale.runs {
                let _ = writeln!(
                    out,
                    "  {:<13} {} sessions: {:.0} calls/s, {} errors, p50 {}, cpu/call {}, rss/proxy max {}{}",
                    "",
                    r.sessions,
                    r.calls_per_sec,
                    r.errors,
                    fmt_stat(&r.latency, |s| s.p50_us),
                    fmt_cpu(r.cpu_us_per_call),
                    fmt_kib(r.peak_rss_per_proxy_max_kib),
                    r.first_error
                        .as_ref()
                        .map(|e| format!("  ERROR: {}", excerpt(e)))
                        .unwrap_or_default()
                );
            }
            if c.scale.open_errors > 0 {
                let _ = writeln!(
                    out,
                    "  {:<13} {} sessions failed to open: {}",
                    "",
                    c.scale.open_errors,
                    excerpt(c.scale.open_first_error.as_deref().unwrap_or(""))
                );
            }
        }
    }
    if let Some(m) = &report.managed {
        for c in &m.cold {
            let _ = writeln!(
                out,
                "mcpsm cold ({}): spawn → initialize {} (daemon alone {}){}",
                c.daemon,
                fmt_stat(&c.cold_to_initialize, |s| s.p50_us),
                fmt_stat(&c.daemon_alone_ready, |s| s.p50_us),
                if c.errors.is_empty() {
                    String::new()
                } else {
                    format!("  ERROR: {}", excerpt(&c.errors.join("; ")))
                }
            );
        }
        let _ = writeln!(
            out,
            "mcpsm warm --target: spawn → initialize {}{}",
            fmt_stat(&m.warm_target_spawn_to_initialize, |s| s.p50_us),
            m.warm_error
                .as_ref()
                .map(|e| format!("  ERROR: {}", excerpt(e)))
                .unwrap_or_default()
        );
        let r = &m.recovery;
        let _ = writeln!(
            out,
            "mcpsm recovery: kill → ready {}, ready → answer {}, kill → answer {}{}",
            fmt_stat(&r.kill_to_ready, |s| s.p50_us),
            fmt_stat(&r.ready_to_answer, |s| s.p50_us),
            fmt_stat(&r.kill_to_answer, |s| s.p50_us),
            if r.errors.is_empty() {
                String::new()
            } else {
                format!("  ERROR: {}", excerpt(&r.errors.join("; ")))
            }
        );
    }
    if let Some(m) = &report.managed_http {
        let _ = writeln!(out, "mcpsm --target to an HTTP daemon (demo):");
        if let Some(e) = &m.error {
            let _ = writeln!(out, "  ERROR: {}", excerpt(e));
        }
        for r in &m.rows {
            let l = &r.one_session;
            let _ = writeln!(
                out,
                "  {:<14} p50 {:>9} p95 {:>9} p99 {:>9} added p50 {:>9} cpu/call {:>7} manager {:>7} daemon {:>7}{}",
                r.contender,
                fmt_stat(&l.latency, |s| s.p50_us),
                fmt_stat(&l.latency, |s| s.p95_us),
                fmt_stat(&l.latency, |s| s.p99_us),
                fmt_added(l.added_p50_us),
                fmt_cpu(l.cpu_us_per_call),
                fmt_cpu_fine(r.manager_cpu_us_per_call),
                fmt_cpu(r.daemon_cpu_us_per_call),
                l.error
                    .as_ref()
                    .map(|e| format!("  ERROR: {}", excerpt(e)))
                    .unwrap_or_default()
            );
        }
    }
    if let Some(h) = &report.stdio_host {
        if let Some(e) = &h.error {
            let _ = writeln!(out, "stdio host: ERROR: {}", excerpt(e));
        }
        for run in &h.runs {
            let _ = writeln!(out, "stdio host ({}):", run.server);
            if let Some(e) = &run.error {
                let _ = writeln!(out, "  ERROR: {}", excerpt(e));
            }
            for (name, l, added) in [
                ("direct stdio", &run.direct, None),
                ("mcpsm --target", &run.mcpsm, run.added_p50_us),
            ] {
                let _ = writeln!(
                    out,
                    "  {:<14} p50 {:>9} p95 {:>9} p99 {:>9} added p50 {:>9} cpu/call {:>7} rss {:>9}{}",
                    name,
                    fmt_stat(&l.latency, |s| s.p50_us),
                    fmt_stat(&l.latency, |s| s.p95_us),
                    fmt_stat(&l.latency, |s| s.p99_us),
                    fmt_added(added),
                    fmt_cpu(l.cpu_us_per_call),
                    fmt_kib(l.peak_rss_kib),
                    l.error
                        .as_ref()
                        .map(|e| format!("  ERROR: {}", excerpt(e)))
                        .unwrap_or_default()
                );
            }
            let _ = writeln!(
                out,
                "  {:<14} rss {} (private {}), cpu/call {}; its server: rss {}, cpu/call {}",
                "stdio host",
                fmt_kib(run.host_peak_rss_kib),
                fmt_kib(run.host_anon_rss_kib),
                fmt_cpu(run.host_cpu_us_per_call),
                fmt_kib(run.hosted_server_peak_rss_kib),
                fmt_cpu(run.hosted_server_cpu_us_per_call),
            );
        }
    }
    if let Some(t) = &report.scale_target {
        if let Some(e) = &t.error {
            let _ = writeln!(out, "concurrent --target sessions: ERROR: {}", excerpt(e));
        }
        for run in &t.runs {
            let r = &run.scale;
            let _ = writeln!(
                out,
                "concurrent --target sessions ({}, {}): {} × {}, {:.0} calls/s, {} errors, p50 {}, p99 {}; cpu/call: proxies {}, manager {}, stdio host {}, server {}{}{}",
                run.daemon,
                run.transport,
                r.sessions,
                r.calls_per_session,
                r.calls_per_sec,
                r.errors,
                fmt_stat(&r.latency, |s| s.p50_us),
                fmt_stat(&r.latency, |s| s.p99_us),
                fmt_cpu(r.cpu_us_per_call),
                fmt_cpu_fine(run.manager_cpu_us_per_call),
                fmt_cpu_fine(run.host_cpu_us_per_call),
                fmt_cpu(run.server_cpu_us_per_call),
                [&run.error, &r.first_error, &run.open_first_error]
                    .into_iter()
                    .flatten()
                    .next()
                    .map(|e| format!("  ERROR: {}", excerpt(e)))
                    .unwrap_or_default(),
                if run.open_errors > 0 {
                    format!(" ({} sessions failed to open)", run.open_errors)
                } else {
                    String::new()
                }
            );
        }
    }
    out
}

/// Everything that went wrong, for the smoke run's exit status.
fn failures(report: &Report) -> Vec<String> {
    let mut out = Vec::new();
    for u in &report.upstreams {
        if let Some(e) = &u.error {
            out.push(format!("{}: {e}", u.upstream));
        }
        for c in &u.contenders {
            let name = format!("{} / {}", u.upstream, c.contender);
            for e in [&c.one_session.error, &c.spawn_error, &c.large.error]
                .into_iter()
                .flatten()
            {
                out.push(format!("{name}: {e}"));
            }
            for l in &c.large.sizes {
                if let Some(e) = &l.error {
                    out.push(format!("{name}: {} MiB: {e}", l.mib));
                }
            }
            if let Some(e) = &c.scale.open_first_error {
                out.push(format!("{name}: opening sessions: {e}"));
            }
            for r in &c.scale.runs {
                if r.errors > 0 {
                    out.push(format!(
                        "{name}: {} sessions: {} errors, first: {}",
                        r.sessions,
                        r.errors,
                        r.first_error.as_deref().unwrap_or("")
                    ));
                }
            }
        }
    }
    if let Some(m) = &report.managed {
        for c in &m.cold {
            out.extend(c.errors.iter().map(|e| format!("cold {}: {e}", c.daemon)));
        }
        if let Some(e) = &m.warm_error {
            out.push(format!("warm --target: {e}"));
        }
        out.extend(m.recovery.errors.iter().map(|e| format!("recovery: {e}")));
    }
    if let Some(m) = &report.managed_http {
        if let Some(e) = &m.error {
            out.push(format!("managed http: {e}"));
        }
        for r in &m.rows {
            if let Some(e) = &r.one_session.error {
                out.push(format!("managed http / {}: {e}", r.contender));
            }
        }
    }
    if let Some(t) = &report.scale_target {
        if let Some(e) = &t.error {
            out.push(format!("target sessions: {e}"));
        }
        for run in &t.runs {
            let name = format!("target sessions ({})", run.daemon);
            if let Some(e) = &run.error {
                out.push(format!("{name}: {e}"));
            }
            if let Some(e) = &run.open_first_error {
                out.push(format!(
                    "{name}: {} sessions failed to open, first: {e}",
                    run.open_errors
                ));
            }
            if run.scale.errors > 0 {
                out.push(format!(
                    "{name}: {} errors, first: {}",
                    run.scale.errors,
                    run.scale.first_error.as_deref().unwrap_or("")
                ));
            }
        }
    }
    if let Some(h) = &report.stdio_host {
        if let Some(e) = &h.error {
            out.push(format!("stdio host: {e}"));
        }
        for run in &h.runs {
            for (what, e) in [
                ("", &run.error),
                (" / direct stdio", &run.direct.error),
                (" / mcpsm --target", &run.mcpsm.error),
            ] {
                if let Some(e) = e {
                    out.push(format!("stdio host ({}){what}: {e}", run.server));
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------

fn resolve(ctx_args: &Args) -> Result<(PathBuf, PathBuf, PathBuf, PathBuf, PathBuf)> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mcpsm = match &ctx_args.mcpsm {
        Some(p) => p.clone(),
        None => {
            // target/<profile>/examples/bench → target/<profile>/mcpsm
            let exe = std::env::current_exe().context("locating this harness")?;
            exe.parent()
                .and_then(Path::parent)
                .map(|dir| dir.join("mcpsm"))
                .context("locating the mcpsm binary beside this harness")?
        }
    };
    let mcpsm = std::fs::canonicalize(&mcpsm).with_context(|| {
        format!(
            "the mcpsm binary {} does not exist\nhint: build it first (`cargo build --release`) or pass --mcpsm PATH",
            mcpsm.display()
        )
    })?;
    let peers = ctx_args.peers.clone().unwrap_or_else(|| repo.join("bench"));
    let everything = ctx_args.everything.clone().unwrap_or_else(|| {
        repo.join(
            "tests/support/node_modules/@modelcontextprotocol/server-everything/dist/index.js",
        )
    });
    let loopback = ctx_args
        .loopback
        .clone()
        .unwrap_or_else(|| repo.join("tests/support/loopback.cjs"));
    Ok((repo, mcpsm, peers, everything, loopback))
}

async fn run(mut args: Args) -> Result<ExitCode> {
    let started = Instant::now();
    let mut harness_args = Vec::new();
    let mut raw = std::env::args().skip(1);
    while let Some(arg) = raw.next() {
        if arg == "--reproduce" {
            raw.next();
        } else if !arg.starts_with("--reproduce=") {
            harness_args.push(arg);
        }
    }
    if args.smoke {
        if args.json.is_some() || args.markdown.is_some() {
            bail!("--smoke writes nothing but stdout; drop --json/--markdown");
        }
        args.apply_smoke();
    }
    if args.soak {
        // The soak needs mcpsm and its demo daemon only.
        args.contenders = vec!["mcpsm".into()];
        args.upstreams = vec!["demo".into()];
    }
    // The mcpsm-only sections: all of them, or the one `--only` names.
    let only = args.only;
    let wants = |section: Section| only.is_none_or(|only| only == section);
    let (mut run_managed_http, mut run_scale_target) =
        (wants(Section::ManagedHttp), wants(Section::ScaleTarget));
    if only.is_some() {
        args.upstreams = Vec::new();
        args.contenders = vec!["mcpsm".into()];
        args.skip_managed = true;
        args.skip_stdio_host = !wants(Section::StdioHost);
    } else if args.skip_managed {
        (run_managed_http, run_scale_target) = (false, false);
    }
    let mut peers: Vec<Peer> = args
        .contenders
        .iter()
        .map(|c| Peer::parse(c))
        .collect::<Result<_>>()?;
    let variants: Vec<Variant> = args
        .variant
        .iter()
        .map(|v| Variant::parse(v))
        .collect::<Result<_>>()?;
    peers.extend((0..variants.len()).map(Peer::Variant));
    let upstreams: Vec<UpstreamKind> = args
        .upstreams
        .iter()
        .map(|u| UpstreamKind::parse(u))
        .collect::<Result<_>>()?;
    let (repo, mcpsm, peers_dir, everything, loopback) = resolve(&args)?;
    for peer in &peers {
        let missing = match peer {
            Peer::McpProxy => Some(peers_dir.join(".venv/bin/mcp-proxy")),
            Peer::McpRemote => Some(peers_dir.join("node_modules/.bin/mcp-remote")),
            Peer::Supergateway => Some(peers_dir.join("node_modules/.bin/supergateway")),
            _ => None,
        }
        .filter(|p| !p.exists());
        if let Some(path) = missing {
            bail!(
                "{} is not installed ({} is missing)\nhint: run `bash bench/setup.sh`, or leave it out with --contenders",
                peer.name(),
                path.display()
            );
        }
    }
    let needs_everything = upstreams.contains(&UpstreamKind::Everything);
    if needs_everything && !everything.exists() {
        bail!(
            "server-everything is not installed ({} is missing)\nhint: run `bash tests/support/setup.sh`",
            everything.display()
        );
    }
    let mut stdio_servers: Vec<StdioServer> = args
        .stdio_servers
        .iter()
        .map(|s| StdioServer::parse(s))
        .collect::<Result<_>>()?;
    if args.skip_stdio_host || !peers.contains(&Peer::Mcpsm) {
        stdio_servers.clear();
    }
    if stdio_servers.contains(&StdioServer::Everything) && !everything.exists() {
        if !args.smoke {
            bail!(
                "server-everything is not installed ({} is missing)\nhint: run `bash tests/support/setup.sh`, or leave it out with --stdio-servers echo",
                everything.display()
            );
        }
        eprintln!(
            "bench: server-everything is not installed ({}): the smoke run's stdio-host section uses the echo server only",
            everything.display()
        );
        stdio_servers.retain(|s| *s != StdioServer::Everything);
    }

    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow!("installing the TLS crypto provider"))?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .tcp_nodelay(true)
        .build()
        .context("building the HTTP client")?;
    let scratch = tempfile::Builder::new()
        .prefix("mcpsm-bench.")
        .tempdir()
        .context("creating a scratch directory")?;
    for dir in ["home", "mcpsm-home", "mcp-auth", "logs"] {
        std::fs::create_dir_all(scratch.path().join(dir))
            .with_context(|| format!("creating {dir} in the scratch directory"))?;
    }
    // SAFETY: sysconf has no preconditions.
    let clock_ticks = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()
        .filter(|t| *t > 0)
        .unwrap_or(100);
    let ctx = Ctx {
        args: args.clone(),
        repo,
        mcpsm,
        peers: peers_dir,
        everything,
        loopback,
        harness: std::env::current_exe().context("locating this harness")?,
        scratch,
        http,
        logs: AtomicU64::new(0),
        clock_ticks,
        variants,
    };
    if args.soak {
        return soak(&ctx).await;
    }
    let loadavg_before = loadavg();

    let mut results = Vec::new();
    let mut commands = BTreeMap::new();
    for kind in &upstreams {
        let result = measure_upstream(&ctx, *kind, &peers).await;
        for c in &result.contenders {
            commands
                .entry(c.contender.clone())
                .or_insert_with(|| c.command.clone());
        }
        results.push(result);
    }
    let with_mcpsm = peers.contains(&Peer::Mcpsm);
    let managed = if with_mcpsm && !args.skip_managed {
        Some(measure_managed(&ctx, needs_everything).await)
    } else {
        None
    };
    let managed_http = if with_mcpsm && run_managed_http {
        Some(measure_managed_http(&ctx).await)
    } else {
        None
    };
    let stdio_host = if stdio_servers.is_empty() {
        None
    } else {
        Some(measure_stdio_host(&ctx, &stdio_servers).await)
    };
    let scale_target = if with_mcpsm && run_scale_target {
        Some(measure_target_scale(&ctx).await)
    } else {
        None
    };
    let mut version_upstreams = upstreams.clone();
    if stdio_servers.contains(&StdioServer::Everything) {
        version_upstreams.push(UpstreamKind::Everything);
    }

    let report = Report {
        date: date(),
        mode: if args.smoke { "smoke" } else { "full" },
        command: args.reproduce.clone(),
        harness_args,
        machine: machine(loadavg_before),
        versions: versions(&ctx, &peers, &version_upstreams),
        contender_commands: commands,
        settings: json!({
            "calls": args.calls, "rounds": args.rounds, "spawns": args.spawns,
            "sessions": args.sessions, "session_calls": args.session_calls,
            "large_mib": args.large_mib, "managed_reps": args.managed_reps,
            "peer_scale_upstreams": args.peer_scale_upstreams,
            "stdio_servers": stdio_servers.iter().map(|s| s.name()).collect::<Vec<_>>(),
        }),
        upstreams: results,
        managed,
        managed_http,
        stdio_host,
        scale_target,
        wall_seconds: started.elapsed().as_secs_f64(),
    };
    print!("{}", summary(&report));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).context("serializing the results")?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, render(&report))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }
    let failed = failures(&report);
    if failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("bench: {} failure(s):", failed.len());
    for f in &failed {
        eprintln!("  - {}", excerpt(f));
    }
    // A peer failing is a finding for the report; mcpsm failing is a bug.
    let mcpsm_failed = failed.iter().any(|f| {
        f.contains("/ mcpsm")
            || f.starts_with("cold")
            || f.starts_with("warm")
            || f.starts_with("recovery")
            || f.starts_with("stdio host")
            || f.starts_with("managed http")
            || f.starts_with("target sessions")
            || f.contains("/ direct")
    });
    Ok(if mcpsm_failed || args.smoke {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.serve_stdio_echo {
        return serve_stdio_echo();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
