//! Every command-line type, and nothing else: commands receive resolved values from here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::clients::{Client, Scope};
use crate::config::{Sharing, TransportKind};
use crate::transport::stdio::DEFAULT_MAX_MESSAGE_BYTES;

const EXAMPLES: &str = "\
Examples:
  mcpsm import --dry-run                             what moving Claude Code's servers to mcpsm changes
  mcpsm generate-config --client cursor              point Cursor at every registry daemon
  mcpsm proxy --target memory                        bridge stdio to the registry's daemon `memory`
  mcpsm proxy --url http://127.0.0.1:3001/mcp        bridge stdio to any MCP endpoint
  mcpsm status                                       what runs, since when, and what failed
  mcpsm logs memory -f                               follow a daemon's output
  mcpsm manager stop                                 stop every daemon and the manager

Invoked through a link named `mcpsm-proxy`, mcpsm behaves as `mcpsm proxy`.";

#[derive(Debug, Parser)]
#[command(
    name = "mcpsm",
    version,
    about = "MCP session manager: one shared daemon per MCP server, a tiny stdio proxy per client session",
    after_help = EXAMPLES
)]
pub struct Cli {
    /// The daemon registry [default: $MCPSM_HOME/daemons.toml]
    #[arg(long, global = true, env = "MCPSM_REGISTRY", value_name = "PATH")]
    pub registry: Option<PathBuf>,

    /// Log verbosity on stderr: error, warn, info, debug or trace (overrides RUST_LOG)
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Bridge this process's stdio to an MCP daemon over HTTP (what an MCP client launches)
    #[command(after_help = "\
Examples:
  mcpsm proxy --target memory
  mcpsm proxy --url http://127.0.0.1:3001/mcp --transport streamable-http
  mcpsm proxy --url http://127.0.0.1:3001/sse --transport sse

The proxy reads one JSON-RPC message per line on stdin and writes the daemon's messages to
stdout, one per line; logs go to stderr. It ignores SIGINT, and exits 0 on stdin EOF, SIGTERM,
SIGHUP or a closed stdout, ending its session on the daemon (DELETE, at most 0.5 s).")]
    Proxy(Box<ProxyArgs>),

    /// Run the manager that owns the daemons (started on demand by proxies; rarely run by hand)
    #[command(after_help = "\
Examples:
  mcpsm manager --detach     start it in the background (no-op when one runs)
  mcpsm manager              run it in the foreground (Ctrl-C leaves daemons running)
  mcpsm manager stop         stop every daemon, then the manager

One manager runs per MCPSM_HOME, on 127.0.0.1:<[manager] port> (default 3199).")]
    Manager(ManagerArgs),

    /// Show every daemon: state, pid, port, transport, uptime, restarts, last error
    #[command(after_help = "\
Examples:
  mcpsm status
  mcpsm status --verbose                  also each daemon's cwd and environment variable names
  mcpsm status --json | jq '.daemons[] | select(.state != \"ready\")'
  mcpsm status --open                     the live status page in the browser")]
    Status(StatusArgs),

    /// Authorize mcpsm (OAuth) for a `url` daemon with `auth = "oauth"`, in the browser
    #[command(after_help = "\
Example:
  mcpsm login github

Opens the authorization URL in the system browser (or MCPSM_OAUTH_OPENER) and prints it too.
Tokens are kept in MCPSM_HOME/oauth/ (0600); every session of the daemon uses them.")]
    Login(NameArgs),

    /// Forget the stored OAuth authorization of a daemon
    #[command(after_help = "Example:\n  mcpsm logout github")]
    Logout(NameArgs),

    /// Start a daemon (starting the manager if needed) and wait until it is ready
    #[command(after_help = "Example:\n  mcpsm start memory")]
    Start(NameArgs),

    /// Stop a daemon (SIGTERM to its process group, SIGKILL after its stop-timeout)
    #[command(after_help = "Example:\n  mcpsm stop memory")]
    Stop(NameArgs),

    /// Stop a daemon, start it again and wait until it is ready
    #[command(after_help = "Example:\n  mcpsm restart memory")]
    Restart(NameArgs),

    /// Serve a stdio-only MCP server as a streamable-HTTP daemon (the manager runs this for
    /// `transport = "stdio"` daemons)
    #[command(after_help = "\
Examples:
  mcpsm stdio-host --port 3100 -- npx -y @modelcontextprotocol/server-memory
  mcpsm stdio-host --port 3101 --sharing isolated -- node browser-server.js
  mcpsm stdio-host --bind 0.0.0.0 --port 8080 --token-file /run/secrets/tokens \\
      --public-name mcp.example.com --drain-grace 20s --log-format json -- node server.js

Every HTTP session gets its own Mcp-Session-Id; with --sharing shared (the default) they are
multiplexed onto one server process, with --sharing isolated each gets its own.
/healthz answers while the host runs, /readyz while its server process answers (503 while
draining), /metrics in Prometheus text; none of them needs a token.")]
    StdioHost(Box<StdioHostArgs>),

    /// Run COMMAND with its output appended to FILE, rotated by size (how the manager starts
    /// every daemon; not meant to be run by hand)
    #[command(hide = true)]
    LogWriter(LogWriterArgs),

    /// See mcpsm work in a minute: one shared daemon, two sessions, SIGINT and kill -9 survived
    #[command(
        after_help = "Example:\n  mcpsm demo\n\nRuns in a private temporary home (its own manager and ports) and cleans up after itself."
    )]
    Demo,

    /// Find what is wrong (registry, ports, daemons, manager, stale state, client configs, logs)
    /// and say how to fix it
    #[command(after_help = "\
Examples:
  mcpsm doctor           one line per finding (ok / warn / fail) with a hint; exit 1 on a fail
  mcpsm doctor --fix     also repair stale state, stale locks and the token's permissions
  mcpsm doctor --json")]
    Doctor(DoctorArgs),

    /// Print a shell completion script
    #[command(after_help = "\
Examples:
  mcpsm completions bash > ~/.local/share/bash-completion/completions/mcpsm
  mcpsm completions zsh > \"${fpath[1]}/_mcpsm\"
  mcpsm completions fish > ~/.config/fish/completions/mcpsm.fish")]
    Completions(CompletionsArgs),

    /// Run the built-in demo MCP server (tools `echo` and `counter`) on 127.0.0.1:PORT/mcp
    #[command(
        after_help = "Example:\n  mcpsm demo-server --port 3102\n\nIt is the embedded default daemon `demo`; tests and benchmarks use it as a fast upstream."
    )]
    DemoServer(DemoServerArgs),

    /// Point an MCP client at mcpsm: one proxy entry per registry daemon in the client's config
    #[command(after_help = "\
Examples:
  mcpsm generate-config                                  Claude Code, every project (~/.claude.json)
  mcpsm generate-config --client cursor --dry-run        show the change to ~/.cursor/mcp.json
  mcpsm generate-config --client vscode --scope project  .vscode/mcp.json in this directory

Each entry runs this binary by its absolute path with `proxy --target NAME`. The file is
merged, not overwritten (other servers and keys stay), written atomically, and the old
file is kept as FILE.mcpsm-backup-YYYYMMDDTHHMMSS (`mcpsm import --undo` restores it).")]
    GenerateConfig(GenerateConfigArgs),

    /// Move a client's MCP servers into the registry and point the client at mcpsm's proxies
    #[command(after_help = "\
Examples:
  mcpsm import --dry-run                  what would change, as diffs; nothing is written
  mcpsm import                            Claude Code's user-scope servers (~/.claude.json)
  mcpsm import --client codex             ~/.codex/config.toml
  mcpsm import --client cursor --undo     put ~/.cursor/mcp.json back as it was
  mcpsm import --sharing isolated         one server process per session for every server

A stdio server becomes a `transport = \"stdio\"` daemon, a URL server a `url` daemon. Each
stdio daemon gets a sharing mode, printed with its reason: `isolated` for servers known to
keep per-session state (sequential-thinking, browser automation), `per-project` for a `.` or
relative path argument (and mcp-server-git without --repository), else `shared`;
entries that already run mcpsm's proxy are left alone, so a second run changes nothing. A
name the registry already uses for another server gets a new name (NAME-2), shown in the
summary. Both files are written atomically, each with a timestamped backup.")]
    Import(ImportArgs),

    /// Start the manager at login: a systemd user unit, a launchd agent or a logon task
    #[command(after_help = "\
Examples:
  mcpsm service install                   Linux: ~/.config/systemd/user/mcpsm.service, enabled
  mcpsm service install --start-all       also start every daemon when the manager starts
  mcpsm service install --start memory    also start daemon `memory`
  mcpsm service status                    where it is installed, and whether it is enabled
  mcpsm service uninstall                 disable it and remove the file
  mcpsm service install --dir /tmp/x --os macos   only write the file (here: a launchd plist)")]
    Service(ServiceArgs),

    /// Print a daemon's log ($MCPSM_HOME/logs/NAME.log)
    #[command(after_help = "\
Examples:
  mcpsm logs memory            the last 50 lines
  mcpsm logs memory -n 200 -f  the last 200, then follow
  mcpsm logs memory --since 10m  what it wrote in the last ten minutes")]
    Logs(LogsArgs),
}

/// Which client file: shared by `generate-config` and `import`.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The MCP client: claude-code, claude-desktop, cursor, vscode, codex, gemini or windsurf
    #[arg(long, value_name = "CLIENT", default_value = "claude-code", value_parser = parse_client)]
    pub client: Client,

    /// user: every project (the default); local: this directory's project, for you only
    /// (Claude Code); project: the project's own file in this directory
    #[arg(long, value_name = "SCOPE", default_value = "user", value_parser = parse_scope)]
    pub scope: Scope,

    /// Print the change as a unified diff and write nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct GenerateConfigArgs {
    #[command(flatten)]
    pub target: ClientArgs,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub target: ClientArgs,

    /// Restore the client's file from its newest mcpsm backup instead of importing
    #[arg(long)]
    pub undo: bool,

    /// With --undo: restore even though the file changed after mcpsm wrote it (those later
    /// edits are lost; the replaced text is kept as FILE.mcpsm-undone-…)
    #[arg(long, requires = "undo")]
    pub force: bool,

    /// The sharing mode of every imported stdio server (shared, per-project or isolated),
    /// instead of the one import chooses for each
    #[arg(long, value_parser = parse_sharing, conflicts_with = "undo")]
    pub sharing: Option<Sharing>,

    /// Claude Code: also import every project's own servers (`projects["/dir"].mcpServers`
    /// in ~/.claude.json), each kept in its project's scope
    #[arg(long, conflicts_with = "undo")]
    pub all_scopes: bool,

    /// Also take over URL servers (`"type": "http"`/`"sse"`, `url`) as url daemons; without it
    /// they stay as they are (the client speaks HTTP to them itself, and may do its own OAuth)
    #[arg(long, conflicts_with = "undo")]
    pub remote: bool,

    /// Write `[manager] port = PORT` into the registry: the manager's loopback port, when
    /// the default 3199 is taken
    #[arg(
        long,
        env = "MCPSM_MANAGER_PORT",
        value_name = "PORT",
        conflicts_with = "undo"
    )]
    pub manager_port: Option<u16>,
}

fn parse_client(text: &str) -> Result<Client, String> {
    text.parse()
}

fn parse_scope(text: &str) -> Result<Scope, String> {
    text.parse()
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print the findings as JSON
    #[arg(long)]
    pub json: bool,

    /// Repair what is safe to repair: stale state entries, unheld lock files, token permissions
    #[arg(long)]
    pub fix: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct DemoServerArgs {
    /// The port to serve on (127.0.0.1 only; 0 picks a free one and prints it)
    #[arg(long)]
    pub port: u16,
}

#[derive(Debug, Args)]
pub struct LogWriterArgs {
    /// The log file; stdout must already be open on it (the manager opens it, without
    /// following links)
    #[arg(long, value_name = "FILE")]
    pub file: PathBuf,

    /// The program and its arguments
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<std::ffi::OsString>,
}

#[derive(Debug, Args)]
pub struct StdioHostArgs {
    /// The port to serve on; the endpoint is /mcp
    #[arg(long)]
    pub port: u16,

    /// shared: one server process for every session; per-project: one per client working
    /// directory; isolated: one per session
    #[arg(long, default_value = "shared", value_parser = parse_sharing)]
    pub sharing: Sharing,

    /// The daemon's name, for messages
    #[arg(long)]
    pub name: Option<String>,

    /// Sessions with no request for this long are forgotten
    #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = parse_duration)]
    pub session_idle_timeout: std::time::Duration,

    /// A session whose proxy is gone (its GET stream closed) ends after this long
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub session_grace: std::time::Duration,

    /// The most server processes at once (per-project and isolated sharing)
    #[arg(long, value_name = "N", default_value_t = crate::config::DEFAULT_MAX_SESSIONS)]
    pub max_sessions: usize,

    /// How often the server process is pinged (three unanswered pings restart it); 0 = never
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub health_interval: std::time::Duration,

    /// The largest message accepted in either direction, in bytes
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,

    /// The address to listen on. Anything but loopback needs --token-file or --oidc-issuer
    #[arg(
        long,
        value_name = "IP",
        default_value = "127.0.0.1",
        help_heading = "Network service"
    )]
    pub bind: std::net::IpAddr,

    /// Accept `Authorization: Bearer T` for every token T in FILE (one per line, `#` comments);
    /// the file is read again when it changes, so tokens rotate without a restart
    #[arg(long, value_name = "FILE", help_heading = "Network service")]
    pub token_file: Option<std::path::PathBuf>,

    /// Accept OIDC access tokens (JWTs) signed by this issuer's keys (its JWKS, found through
    /// ISSUER/.well-known/openid-configuration)
    #[arg(long, value_name = "ISSUER", help_heading = "Network service")]
    pub oidc_issuer: Option<String>,

    /// The audience (`aud`) OIDC access tokens must name (repeatable; required with
    /// --oidc-issuer)
    #[arg(long, value_name = "AUDIENCE", help_heading = "Network service")]
    pub oidc_audience: Vec<String>,

    /// Serve HTTPS with this certificate chain (PEM); reloaded when the file changes
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_key",
        help_heading = "Network service"
    )]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The private key (PEM) of --tls-cert; reloaded when the file changes
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_cert",
        help_heading = "Network service"
    )]
    pub tls_key: Option<std::path::PathBuf>,

    /// A name clients reach this host by (repeatable): requests must carry it (or a loopback
    /// name) in `Host`, and an `Origin` must be https://NAME. `*` accepts any Host
    #[arg(long, value_name = "NAME", help_heading = "Network service")]
    pub public_name: Vec<String>,

    /// On SIGTERM: stop accepting, end GET streams, and give requests in flight this long to
    /// finish before the server process is stopped
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration, help_heading = "Network service")]
    pub drain_grace: std::time::Duration,

    /// Log format: `text` on stderr, or `json` (one JSON object a line) on stdout
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"], help_heading = "Network service")]
    pub log_format: String,

    /// The server's command and arguments
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

fn parse_sharing(text: &str) -> Result<Sharing, String> {
    Sharing::parse(text).ok_or_else(|| {
        format!("unknown sharing `{text}`; expected shared, per-project or isolated")
    })
}

#[derive(Debug, Args)]
pub struct ManagerArgs {
    /// Start the manager in the background, detached from this terminal, and return once it
    /// answers
    #[arg(long)]
    pub detach: bool,

    /// Start every daemon of the registry once the manager runs (warm them)
    #[arg(long)]
    pub start_all: bool,

    /// Start daemon NAME once the manager runs (repeatable)
    #[arg(long = "start", value_name = "NAME")]
    pub start: Vec<String>,

    #[command(subcommand)]
    pub action: Option<ManagerAction>,
}

#[derive(Debug, Args)]
pub struct ServiceArgs {
    #[command(subcommand)]
    pub action: ServiceAction,
}

#[derive(Debug, Subcommand)]
pub enum ServiceAction {
    /// Register the manager as a per-user service started at login
    Install(ServiceInstallArgs),
    /// Unregister it and remove its file
    Uninstall(ServiceTargetArgs),
    /// Say whether it is installed, where, and the service manager's view of it
    Status(ServiceTargetArgs),
}

#[derive(Debug, Args)]
pub struct ServiceInstallArgs {
    /// Start every daemon when the manager starts
    #[arg(long)]
    pub start_all: bool,

    /// Start daemon NAME when the manager starts (repeatable)
    #[arg(long = "start", value_name = "NAME")]
    pub start: Vec<String>,

    #[command(flatten)]
    pub target: ServiceTargetArgs,
}

#[derive(Debug, Args)]
pub struct ServiceTargetArgs {
    /// Only write (or remove) the file in DIR; do not register it with the service manager
    #[arg(long, value_name = "DIR")]
    pub dir: Option<std::path::PathBuf>,

    /// The OS whose service file to write (default: this one): linux, macos, windows
    #[arg(long, value_name = "OS", requires = "dir")]
    pub os: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ManagerAction {
    /// Stop every daemon, then the manager
    Stop,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the manager's status report as JSON
    #[arg(long)]
    pub json: bool,
    /// Also show each daemon's working directory and the names of its environment variables
    #[arg(long, short)]
    pub verbose: bool,
    /// Open the live status page: print a one-time URL (valid 2 minutes) and open it in the
    /// browser ($MCPSM_OPENER, else $BROWSER, else the system's opener)
    #[arg(long, conflicts_with = "json")]
    pub open: bool,
}

#[derive(Debug, Args)]
pub struct NameArgs {
    /// The daemon's name in the registry
    pub name: String,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The daemon's name in the registry
    pub name: String,

    /// How many lines to print
    #[arg(short = 'n', long = "lines", default_value_t = 50)]
    pub lines: usize,

    /// Keep printing lines as they are written
    #[arg(short = 'f', long)]
    pub follow: bool,

    /// Only lines written in the last DURATION (e.g. 10m, 2h, 30s), rotated files included;
    /// replaces -n
    #[arg(long, value_name = "DURATION", value_parser = parse_since)]
    pub since: Option<std::time::Duration>,
}

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// The registry daemon to connect to
    #[arg(
        long,
        value_name = "NAME",
        required_unless_present = "url",
        conflicts_with = "url"
    )]
    pub target: Option<String>,

    /// An MCP endpoint to connect to directly, instead of a registry daemon
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,

    /// The wire the daemon speaks [default: the registry's, or auto for --url]
    #[arg(long, value_name = "TRANSPORT", value_parser = parse_transport)]
    pub transport: Option<TransportKind>,

    /// An HTTP header for every request to the daemon, as 'Name: value' (repeatable)
    #[arg(long = "header", short = 'H', value_name = "'NAME: VALUE'")]
    pub headers: Vec<String>,

    /// The largest message accepted in either direction, in bytes
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,

    /// How long to wait for a daemon that went away to come back (e.g. 60s, 500ms, 2m)
    /// before its waiting requests get errors
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub reconnect_timeout: std::time::Duration,

    /// OAuth: a pre-registered client id for the server's authorization server
    #[arg(
        long,
        value_name = "ID",
        env = "MCPSM_OAUTH_CLIENT_ID",
        help_heading = "OAuth (--url)"
    )]
    pub client_id: Option<String>,

    /// OAuth: the pre-registered client's secret (prefer the environment variable)
    #[arg(
        long,
        value_name = "SECRET",
        env = "MCPSM_OAUTH_CLIENT_SECRET",
        hide_env_values = true,
        help_heading = "OAuth (--url)"
    )]
    pub client_secret: Option<String>,

    /// OAuth: the URL of a client ID metadata document describing this client
    #[arg(
        long,
        value_name = "URL",
        env = "MCPSM_OAUTH_CLIENT_METADATA_URL",
        help_heading = "OAuth (--url)"
    )]
    pub client_metadata_url: Option<String>,

    /// OAuth: scopes to ask for (space-separated) instead of those the server suggests
    #[arg(long, value_name = "SCOPES", help_heading = "OAuth (--url)")]
    pub scopes: Option<String>,

    /// OAuth: the port of the 127.0.0.1 redirect listener [default: a free port]
    #[arg(
        long,
        value_name = "PORT",
        default_value_t = 0,
        help_heading = "OAuth (--url)"
    )]
    pub callback_port: u16,

    /// OAuth: never authorize; pass the server's 401 on to the client
    #[arg(long, help_heading = "OAuth (--url)")]
    pub no_oauth: bool,

    /// OAuth: how to get tokens: authorization-code (the browser), client-credentials,
    /// jwt-bearer (a workload's JWT), id-jag (enterprise ID token, SEP-990)
    #[arg(
        long,
        value_name = "GRANT",
        env = "MCPSM_OAUTH_GRANT",
        default_value = "authorization-code",
        value_parser = parse_grant,
        help_heading = "OAuth (--url)"
    )]
    pub grant: crate::auth::Grant,

    /// OAuth: authenticate the client with a JWT signed by this PKCS#8 PEM key (private_key_jwt)
    #[arg(
        long,
        value_name = "FILE",
        env = "MCPSM_OAUTH_PRIVATE_KEY_FILE",
        help_heading = "OAuth (--url)"
    )]
    pub private_key_file: Option<std::path::PathBuf>,

    /// OAuth: the key's signing algorithm (ES256, ES384, RS256, PS256, …) [default: from the key]
    #[arg(
        long,
        value_name = "ALG",
        env = "MCPSM_OAUTH_SIGNING_ALG",
        help_heading = "OAuth (--url)"
    )]
    pub signing_alg: Option<String>,

    /// OAuth (--grant jwt-bearer): the file holding the workload's JWT, read at each grant
    #[arg(
        long,
        value_name = "FILE",
        env = "MCPSM_OAUTH_ASSERTION_FILE",
        help_heading = "OAuth (--url)"
    )]
    pub assertion_file: Option<std::path::PathBuf>,

    /// OAuth (--grant id-jag): the file holding the user's ID token from the identity provider
    #[arg(
        long,
        value_name = "FILE",
        env = "MCPSM_OAUTH_ID_TOKEN_FILE",
        help_heading = "OAuth (--url)"
    )]
    pub id_token_file: Option<std::path::PathBuf>,

    /// OAuth (--grant id-jag): the identity provider's token endpoint
    #[arg(
        long,
        value_name = "URL",
        env = "MCPSM_OAUTH_IDP_TOKEN_ENDPOINT",
        help_heading = "OAuth (--url)"
    )]
    pub idp_token_endpoint: Option<String>,

    /// OAuth (--grant id-jag): mcpsm's client id at the identity provider
    #[arg(
        long,
        value_name = "ID",
        env = "MCPSM_OAUTH_IDP_CLIENT_ID",
        help_heading = "OAuth (--url)"
    )]
    pub idp_client_id: Option<String>,

    /// OAuth (--grant id-jag): that client's secret (prefer the environment variable)
    #[arg(
        long,
        value_name = "SECRET",
        env = "MCPSM_OAUTH_IDP_CLIENT_SECRET",
        hide_env_values = true,
        help_heading = "OAuth (--url)"
    )]
    pub idp_client_secret: Option<String>,

    /// OAuth: DPoP-bound tokens (RFC 9449): a proof signed by mcpsm's key on every request
    #[arg(long, env = "MCPSM_OAUTH_DPOP", help_heading = "OAuth (--url)")]
    pub dpop: bool,
}

fn parse_grant(text: &str) -> Result<crate::auth::Grant, String> {
    crate::auth::Grant::parse(text).ok_or_else(|| format!("must be {}", crate::auth::Grant::NAMES))
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    crate::config::parse_duration_text(text)
}

/// A duration in ms, s, m (as elsewhere), or hours (`2h`) and days (`1d`).
fn parse_since(text: &str) -> Result<std::time::Duration, String> {
    for (unit, secs) in [("h", 3600), ("d", 86_400)] {
        if let Some(number) = text.trim().strip_suffix(unit) {
            let n: u64 = number
                .trim()
                .parse()
                .map_err(|_| format!("`{text}` is not a duration like 30s, 10m, 2h or 1d"))?;
            return Ok(std::time::Duration::from_secs(n.saturating_mul(secs)));
        }
    }
    parse_duration(text)
}

fn parse_transport(text: &str) -> Result<TransportKind, String> {
    text.parse()
}

/// The arguments, with `proxy` inserted when invoked as `mcpsm-proxy` (multi-call binary).
pub fn args_from_env() -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let invoked_as_proxy = args
        .first()
        .map(std::path::Path::new)
        .and_then(|p| p.file_stem())
        .is_some_and(|stem| stem == "mcpsm-proxy");
    if invoked_as_proxy {
        args.insert(1, "proxy".into());
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn proxy_needs_a_target_or_a_url() {
        assert!(Cli::try_parse_from(["mcpsm", "proxy"]).is_err());
        assert!(
            Cli::try_parse_from(["mcpsm", "proxy", "--target", "a", "--url", "http://x"]).is_err()
        );
        assert!(Cli::try_parse_from(["mcpsm", "proxy", "--target", "a"]).is_ok());
    }
}

#[cfg(test)]
mod readme {
    use super::*;

    /// Splits a shell command line on spaces, honouring single and double quotes.
    fn words(line: &str) -> Vec<String> {
        let mut words = Vec::new();
        let mut current = String::new();
        let mut quote = None;
        let mut started = false;
        for c in line.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), c) => current.push(c),
                (None, '\'' | '"') => {
                    quote = Some(c);
                    started = true;
                }
                (None, ' ') => {
                    if started || !current.is_empty() {
                        words.push(std::mem::take(&mut current));
                    }
                    started = false;
                }
                (None, c) => current.push(c),
            }
        }
        if started || !current.is_empty() {
            words.push(current);
        }
        words
    }

    /// Every `mcpsm …` command in README.md's code blocks parses (placeholders filled in).
    #[test]
    fn readme_commands_parse() {
        let readme = include_str!("../README.md");
        let mut in_code = false;
        let mut checked = 0;
        for line in readme.lines() {
            if line.trim_start().starts_with("```") {
                in_code = !in_code;
                continue;
            }
            let line = line.trim();
            if !in_code || !line.starts_with("mcpsm ") {
                continue;
            }
            // Drop the trailing explanation and fill in placeholders.
            let command = line
                .split("  ")
                .next()
                .unwrap_or(line)
                .split(" > ")
                .next()
                .unwrap_or(line);
            let command = command
                .replace("[--client C]", "--client cursor")
                .replace("[--scope user|local|project]", "--scope user")
                .replace("[--dry-run]", "--dry-run")
                .replace("[--undo]", "--undo")
                .replace(
                    "[--sharing shared|per-project|isolated]",
                    "--sharing isolated",
                )
                .replace("[--json]", "--json")
                .replace("[--verbose]", "--verbose")
                .replace("[--fix]", "--fix")
                .replace("[-n N]", "-n 5")
                .replace("[-f]", "-f")
                .replace("[--transport T]", "--transport sse")
                .replace("[-H 'Name: value']...", "-H 'A: b'")
                .replace(
                    "[--sharing shared|per-project|isolated]",
                    "--sharing per-project",
                )
                .replace("[--name NAME]", "--name n")
                .replace("[--remote]", "--remote")
                .replace("[--manager-port PORT]", "--manager-port 3299")
                .replace("[--start-all]", "--start-all")
                .replace("[--start NAME]...", "--start a --start b")
                .replace("[--os linux|macos|windows]", "--os macos")
                .replace("[--force]", "--force")
                .replace("[--session-idle-timeout D]", "--session-idle-timeout 5m")
                .replace("COMMAND ARGS...", "node server.js")
                .replace("bash|zsh|fish", "bash")
                .replace("NAME", "memory")
                .replace("PORT", "3100")
                .replace("URL", "http://127.0.0.1:3100/mcp");
            let args = words(&command);
            match Cli::try_parse_from(&args) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        clap::error::ErrorKind::DisplayHelp
                            | clap::error::ErrorKind::DisplayVersion
                    ) => {}
                Err(e) => panic!("README command `{line}` does not parse: {e}"),
            }
            checked += 1;
        }
        assert!(checked >= 15, "only {checked} README commands found");
    }

    #[test]
    fn the_example_registry_is_valid() {
        let registry = crate::config::Registry::parse(
            "examples/daemons.toml",
            include_str!("../examples/daemons.toml").to_owned(),
        )
        .expect("examples/daemons.toml is valid");
        for name in registry.names() {
            registry
                .daemon(name)
                .expect("every example daemon resolves");
        }
    }
}
