//! `mcpsm proxy`: what an MCP client launches instead of the server.
//!
//! Reads newline-delimited JSON-RPC from stdin, hands each message to the [`Upstream`]
//! session, and writes what the daemon sends to stdout, one message per line: all on the one
//! runtime thread, stdin and stdout included ([`platform::stdio`]), so a call passes between
//! no threads. SIGINT is ignored (clients send it spuriously, sometimes to every
//! server at once); stdin EOF, SIGTERM and SIGHUP end the session (DELETE, at most 0.5 s) and
//! exit 0; a closed stdout exits at once. A line that cannot be forwarded (malformed, too long,
//! a bad batch element) is answered at once with an error under the id of each request in it
//! that can be read (`null` when none can), and the proxy goes on. A daemon that cannot be used answers every request with an error that
//! says which daemon, what failed and what to do.

use std::io::IoSlice;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};
use url::Url;

use crate::auth;
use crate::cli::ProxyArgs;
use crate::config::{OAuthSpec, Registry, Sharing, TransportKind};
use crate::jsonrpc::{oversize_refusals, Kind, Message, UPSTREAM_ERROR};
use crate::metrics::Counters;
use crate::paths::Paths;
use crate::platform::stdio::ProxyStdio;
use crate::platform::{self, Signal, Signals};
use crate::supervise::activity::{ProxyReport, HEARTBEAT_EVERY, REPORT_EVERY};
use crate::supervise::client::{connect_or_start, ClientError, ManagerClient};
use crate::supervise::secret;
use crate::transport::stdio::{Line, LineReader};
use crate::transport::{Authorizer, EnsureFn, Hooks, Options, Upstream};

/// How long a failed ensure is the answer before it is tried again.
const ENSURE_RETRY: Duration = Duration::from_secs(2);
/// Pause before a session lease is opened again after the manager went away.
const LEASE_RETRY: Duration = Duration::from_millis(500);
/// How long requests still in flight at stdin EOF may take to finish.
const EOF_GRACE: Duration = Duration::from_secs(5);
/// Bound on the best-effort DELETE at exit.
const DELETE_LIMIT: Duration = Duration::from_millis(500);

/// What the stdin reader hands over.
enum Input {
    Messages(Vec<Message>),
    /// An error response to write back (malformed or oversized line).
    Reply(Message),
}

/// Where requests go: a daemon, or nowhere with a reason (a registry problem, say).
enum Backend {
    Upstream(Arc<Upstream>, Option<Arc<Gate>>),
    Unusable(String),
}

pub async fn run(args: ProxyArgs, registry: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    // Clients send SIGINT (Windows: CTRL_C/CTRL_BREAK) to their servers for many reasons;
    // the proxy outlives all of them.
    platform::ignore_interrupt();
    // If the client dies without closing stdin: SIGTERM from the kernel (Linux), from a
    // watching thread (macOS), or `parent_exited` below (Windows).
    platform::exit_with_parent();
    let mut signals = Signals::new(&[Signal::Terminate, Signal::Hangup])
        .context("installing the SIGTERM and SIGHUP handlers")?;

    let stdio = ProxyStdio::open();
    debug!("{}", stdio.how);
    let (out_tx, out_rx) = mpsc::channel::<Bytes>(1024);
    let writer = tokio::spawn(write_stdout(out_rx, stdio.output));
    let (in_tx, in_rx) = mpsc::channel::<Input>(64);
    let stdin_closed = CancellationToken::new();
    let reader = tokio::spawn(read_stdin(
        stdio.input,
        in_tx,
        args.max_message_bytes,
        stdin_closed.clone(),
    ));

    let shutdown = CancellationToken::new();
    let explicit_registry = registry.clone();
    let backend = match resolve(&args, registry) {
        Ok((options, gate, oauth, manager_port)) => {
            let gate = gate.map(Arc::new);
            let authorizer = oauth_for(&args, &options, oauth, explicit_registry, manager_port);
            let hooks = Hooks {
                authorizer,
                ensure: gate.clone().map(|gate| {
                    let ensure: EnsureFn = Arc::new(move || {
                        let gate = gate.clone();
                        Box::pin(async move { gate.ensure().await })
                    });
                    ensure
                }),
                recovered: gate.clone().map(|gate| {
                    let recovered: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
                        let gate = gate.clone();
                        tokio::spawn(async move { gate.report_recovery().await });
                    });
                    recovered
                }),
                figures: gate.as_ref().map(|gate| gate.figures.clone()),
            };
            match Upstream::new(options, out_tx.clone(), shutdown.clone(), hooks) {
                Ok(upstream) => {
                    if let Some(gate) = &gate {
                        // Start ensuring now, while the client is still starting up.
                        let early = gate.clone();
                        tokio::spawn(async move { early.pass().await });
                        // The session's lease: the daemon is not stopped as idle while the
                        // proxy lives.
                        let holder = gate.clone();
                        tokio::spawn(async move { holder.hold_session().await });
                        tokio::spawn(gate.clone().report_figures(shutdown.clone()));
                    }
                    Backend::Upstream(upstream, gate)
                }
                Err(e) => Backend::Unusable(format!("mcpsm cannot build its HTTP client: {e}")),
            }
        }
        Err(e) => {
            let text = format!("{e:#}");
            error!("{text}");
            Backend::Unusable(text)
        }
    };

    // Signals are watched beside the loop, so a slow `initialize` cannot delay an exit.
    tokio::select! {
        () = relay(in_rx, &backend, &out_tx) => debug!("stdin closed"),
        // Whatever the relay is waiting on (a slow `initialize`, a manager starting), stdin
        // EOF ends the session within the grace period.
        () = after_eof(&stdin_closed) => debug!("stdin closed {EOF_GRACE:?} ago; exiting"),
        signal = signals.recv() => debug!(?signal, "signal"),
        () = platform::parent_exited() => debug!("the client exited"),
    }
    if let Backend::Upstream(upstream, gate) = &backend {
        let last_report = async {
            if let Some(gate) = gate {
                let _ = tokio::time::timeout(DELETE_LIMIT, gate.report(true)).await;
            }
        };
        tokio::join!(upstream.close(DELETE_LIMIT), last_report);
    }
    // Tasks still in flight hold senders too: an empty message tells the writer to flush
    // everything queued before it and stop.
    let _ = out_tx.send(Bytes::new()).await;
    let _ = writer.await;
    // Nothing may touch stdin once its flags are back (a blocking read would stall the runtime).
    reader.abort();
    platform::restore_stdio();
    Ok(ExitCode::SUCCESS)
}

/// Resolves [`EOF_GRACE`] after stdin ended.
async fn after_eof(stdin_closed: &CancellationToken) {
    stdin_closed.cancelled().await;
    tokio::time::sleep(EOF_GRACE).await;
}

/// Moves stdin messages to the backend until stdin ends, then lets requests in flight finish.
async fn relay(mut input: mpsc::Receiver<Input>, backend: &Backend, out: &mpsc::Sender<Bytes>) {
    while let Some(item) = input.recv().await {
        match item {
            Input::Reply(reply) => {
                let _ = out.send(reply.bytes().clone()).await;
            }
            Input::Messages(messages) => {
                for message in messages {
                    match backend {
                        Backend::Upstream(upstream, gate) => {
                            if let Some(gate) = gate {
                                if let Err(why) = gate.pass().await {
                                    refuse(&message, &why, out).await;
                                    continue;
                                }
                            }
                            upstream.send(message).await;
                        }
                        Backend::Unusable(why) => refuse(&message, why, out).await,
                    }
                }
            }
        }
    }
    if let Backend::Upstream(upstream, _) = backend {
        upstream.wait_idle(EOF_GRACE).await;
    }
}

async fn refuse(message: &Message, why: &str, out: &mpsc::Sender<Bytes>) {
    if message.kind() == Kind::Request {
        let error = Message::error(message.id(), UPSTREAM_ERROR, why, None);
        let _ = out.send(error.bytes().clone()).await;
    }
}

/// Turns the arguments (and the registry, for `--target`) into transport options.
type Resolved = (Options, Option<Gate>, Option<(String, OAuthSpec)>, u16);

fn resolve(args: &ProxyArgs, registry: Option<PathBuf>) -> anyhow::Result<Resolved> {
    let mut headers = HeaderMap::new();
    let mut gate = None;
    let mut oauth = None;
    let mut manager_port = 0;
    let (url, transport, label, unreachable_hint, failure_hint) = match (&args.target, &args.url) {
        (Some(name), _) => {
            let (path, explicit) = match registry {
                Some(path) => (path, true),
                None => (Paths::from_env()?.default_registry(), false),
            };
            let registry = Registry::load(&path, explicit)?;
            manager_port = registry.manager_port();
            let mut daemon = registry.daemon(name)?;
            if daemon.transport == TransportKind::Stdio && daemon.launch.is_some() {
                // The host wants its secret, and, per project, the client's directory.
                let paths = Paths::from_env()?;
                let token = secret::load_or_create_token(&paths).with_context(|| {
                    format!(
                        "reading the manager token {}",
                        paths.manager_token().display()
                    )
                })?;
                secret::authorize(&mut daemon, &token);
            }
            headers = daemon.header_map();
            oauth = daemon.oauth.clone().map(|spec| (name.clone(), spec));
            if daemon.sharing == Sharing::PerProject && daemon.launch.is_some() {
                if let Some(cwd) = std::env::current_dir().ok().and_then(|cwd| {
                    let text: String =
                        url::form_urlencoded::byte_serialize(cwd.as_os_str().as_encoded_bytes())
                            .collect();
                    HeaderValue::from_str(&text).ok()
                }) {
                    headers.insert(crate::host::CWD_HEADER, cwd);
                }
            }
            let label = format!("daemon \"{name}\" ({})", daemon.url);
            let paths = Paths::from_env()?;
            let log = paths.daemon_log(name);
            let (unreachable_hint, failure_hint) = if daemon.launch.is_some() {
                gate = Some(Gate {
                    paths,
                    registry: explicit.then_some(path),
                    manager_port: registry.manager_port(),
                    name: name.clone(),
                    ready: AtomicBool::new(false),
                    last: tokio::sync::Mutex::new(None),
                    figures: Arc::new(Counters::new()),
                    session: format!(
                        "{}-{}",
                        std::process::id(),
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_nanos())
                    ),
                });
                (
                    format!("see `mcpsm status` and its log {}", log.display()),
                    format!("see its log {} (`mcpsm logs {name}`)", log.display()),
                )
            } else {
                (
                    format!(
                        "check that the server at {} is up and reachable (defined at {})",
                        daemon.url, daemon.defined_at
                    ),
                    format!("check the logs of the server at {}", daemon.url),
                )
            };
            (
                daemon.url,
                daemon.transport,
                label,
                unreachable_hint,
                failure_hint,
            )
        }
        (None, Some(url)) => {
            let url =
                Url::parse(url).with_context(|| format!("--url `{url}` is not a valid URL"))?;
            let unreachable_hint = format!("check that an MCP server is listening at {url}");
            let failure_hint = format!("check the logs of the server at {url}");
            (
                url.clone(),
                TransportKind::Auto,
                url.to_string(),
                unreachable_hint,
                failure_hint,
            )
        }
        (None, None) => anyhow::bail!("give --target NAME or --url URL"),
    };
    if !matches!(url.scheme(), "http" | "https") {
        anyhow::bail!("{label}: only http:// and https:// URLs are supported, got `{url}`");
    }
    for header in &args.headers {
        let (key, value) = header
            .split_once(':')
            .with_context(|| format!("--header `{header}` is not of the form 'Name: value'"))?;
        let name = HeaderName::from_bytes(key.trim().as_bytes()).with_context(|| {
            format!(
                "--header `{header}`: `{}` is not a valid header name",
                key.trim()
            )
        })?;
        let value = HeaderValue::from_str(value.trim()).with_context(|| {
            format!("--header `{header}`: the value is not a valid header value")
        })?;
        headers.insert(name, value);
    }
    let options = Options {
        url,
        transport: args.transport.unwrap_or(transport),
        headers,
        label,
        unreachable_hint,
        failure_hint,
        max_message_bytes: args.max_message_bytes,
        reconnect_timeout: Some(args.reconnect_timeout),
    };
    Ok((options, gate, oauth, manager_port))
}

/// OAuth on demand (the first 401 starts it): for `proxy --url` unless the user gave an
/// `Authorization` header or `--no-oauth` (tokens stored per URL; concurrent proxies for one
/// URL share one authorization through the store's lock), and for registry daemons with
/// `auth = "oauth"`, whose authorization the manager owns (started if none runs; the
/// proxy-side flow only when no manager can be reached).
fn oauth_for(
    args: &ProxyArgs,
    options: &Options,
    daemon: Option<(String, OAuthSpec)>,
    registry: Option<PathBuf>,
    manager_port: u16,
) -> Option<Arc<dyn Authorizer>> {
    if args.no_oauth || options.headers.contains_key(AUTHORIZATION) {
        return None;
    }
    let (settings, key) = match (&daemon, &args.url) {
        (Some((name, spec)), _) => (auth::settings_of(spec), auth::daemon_key(name)),
        (None, Some(url)) => (
            auth::Settings {
                client_id: args.client_id.clone(),
                client_secret: args.client_secret.clone(),
                client_metadata_url: args.client_metadata_url.clone(),
                scopes: args.scopes.clone(),
                callback_port: args.callback_port,
                opener: None,
                login_timeout: Duration::from_secs(300),
                grant: grant_of(args),
            },
            url.clone(),
        ),
        (None, None) => return None,
    };
    if let Err(e) = settings
        .grant
        .check(settings.client_id.is_some(), |key| format!("--{key}"))
    {
        warn!("OAuth is off: {e}");
        return None;
    }
    let paths = match Paths::from_env() {
        Ok(paths) => paths,
        Err(e) => {
            warn!("OAuth is off: {e}");
            return None;
        }
    };
    let local: Arc<dyn Authorizer> = match auth::OAuth::new(
        options.url.clone(),
        options.label.clone(),
        settings,
        paths.home(),
        &key,
    ) {
        Ok(oauth) => Arc::new(oauth),
        Err(e) => {
            warn!("OAuth is off: {e}");
            return None;
        }
    };
    let Some((name, _)) = daemon else {
        return Some(local);
    };
    let ask: auth::Ask = Arc::new(move |request| {
        let paths = paths.clone();
        let registry = registry.clone();
        Box::pin(async move {
            let client = connect_or_start(&paths, registry.as_deref(), manager_port)
                .await
                .map_err(|e| e.to_string())?;
            match client.oauth(&request).await {
                Ok(answer) => Ok(answer),
                Err(ClientError::Api { message, .. }) => {
                    Ok(auth::BrokerAnswer::Failed { error: message })
                }
                Err(e) => Err(e.to_string()),
            }
        })
    });
    Some(Arc::new(auth::Managed::new(
        name,
        options.label.clone(),
        ask,
        local,
    )))
}

/// The proxy's `--grant` options.
fn grant_of(args: &ProxyArgs) -> auth::GrantSettings {
    auth::GrantSettings {
        grant: args.grant,
        private_key_file: args.private_key_file.clone(),
        signing_alg: args.signing_alg.clone(),
        assertion_file: args.assertion_file.clone(),
        id_token_file: args.id_token_file.clone(),
        idp_token_endpoint: args.idp_token_endpoint.clone(),
        idp_client_id: args.idp_client_id.clone(),
        idp_client_secret: args.idp_client_secret.clone(),
        dpop: args.dpop,
    }
}

/// For a daemon the manager runs: before the first message, ask the manager to ensure it
/// (starting a manager if none answers). A failure is remembered for a moment, so a burst of
/// requests gets the same answer instead of a burst of starts, then tried again.
struct Gate {
    paths: Paths,
    registry: Option<PathBuf>,
    manager_port: u16,
    name: String,
    ready: AtomicBool,
    last: tokio::sync::Mutex<Option<(Instant, String)>>,
    /// This session's request figures, reported to the manager.
    figures: Arc<Counters>,
    /// Names this session in its reports.
    session: String,
}

impl Gate {
    async fn pass(&self) -> Result<(), String> {
        if self.ready.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut last = self.last.lock().await;
        if self.ready.load(Ordering::Relaxed) {
            return Ok(());
        }
        if let Some((at, why)) = &*last {
            if at.elapsed() < ENSURE_RETRY {
                return Err(why.clone());
            }
        }
        match self.ensure().await {
            Ok(()) => {
                self.ready.store(true, Ordering::Relaxed);
                *last = None;
                Ok(())
            }
            Err(why) => {
                warn!("{why}");
                *last = Some((Instant::now(), why.clone()));
                Err(why)
            }
        }
    }

    /// Holds this session's lease with the manager for the proxy's whole life, opening it
    /// again whenever the manager went away (a restarted manager learns of it within a
    /// second or so of answering).
    async fn hold_session(&self) {
        let client = ManagerClient::new(&self.paths, self.manager_port);
        loop {
            match client.hold_session(&self.name).await {
                Ok(()) => debug!("the manager ended the session lease; opening it again"),
                Err(e) => debug!("holding the session lease failed: {e}"),
            }
            tokio::time::sleep(LEASE_RETRY).await;
        }
    }

    /// Sends this session's figures to the manager while it runs: when they changed (at
    /// most every [`REPORT_EVERY`]), else every [`HEARTBEAT_EVERY`]. Off the hot path: the
    /// relay only bumps counters.
    async fn report_figures(self: Arc<Self>, shutdown: CancellationToken) {
        let mut sent = None;
        let mut last_sent = Instant::now();
        loop {
            tokio::select! {
                () = tokio::time::sleep(REPORT_EVERY) => {}
                () = shutdown.cancelled() => return,
            }
            let totals = self.figures.snapshot();
            let due = last_sent.elapsed() >= HEARTBEAT_EVERY;
            // Nothing to say before the first request (the session may never be used).
            if (sent.as_ref() != Some(&totals) && totals.requests > 0) || (due && sent.is_some()) {
                self.report(false).await;
                sent = Some(totals);
                last_sent = Instant::now();
            }
        }
    }

    /// Sends this session's figures to the manager; best effort.
    async fn report(&self, closed: bool) {
        let client = ManagerClient::new(&self.paths, self.manager_port);
        let report = ProxyReport {
            name: self.name.clone(),
            session: self.session.clone(),
            totals: self.figures.snapshot(),
            closed,
        };
        if let Err(e) = client.report(&report).await {
            debug!("could not report figures to the manager: {e}");
        }
    }

    /// Tells the manager a client session was recovered (for `mcpsm status`); best effort.
    async fn report_recovery(&self) {
        let client = ManagerClient::new(&self.paths, self.manager_port);
        if let Err(e) = client.daemon_action("recovered", &self.name).await {
            debug!("could not report the recovery to the manager: {e}");
        }
    }

    async fn ensure(&self) -> Result<(), String> {
        let name = &self.name;
        let client = connect_or_start(&self.paths, self.registry.as_deref(), self.manager_port)
            .await
            .map_err(|e| format!("mcpsm could not start daemon \"{name}\": {e}"))?;
        match client.daemon_action("ensure", name).await {
            Ok(_) => Ok(()),
            Err(ClientError::Api {
                message, daemon, ..
            }) => {
                let log = daemon.map_or_else(
                    || self.paths.daemon_log(name).display().to_string(),
                    |d| d.log_file,
                );
                Err(format!(
                    "{message}\nhint: read its log {log} (`mcpsm logs {name}`), fix the cause, then `mcpsm start {name}`"
                ))
            }
            Err(e) => Err(format!("mcpsm could not start daemon \"{name}\": {e}")),
        }
    }
}

/// Reads and parses stdin, so the relay only routes. `closed` is cancelled when the task ends
/// (end of input, a read error, or nobody left to take lines).
async fn read_stdin(
    input: Box<dyn AsyncRead + Send + Unpin>,
    tx: mpsc::Sender<Input>,
    max_bytes: usize,
    closed: CancellationToken,
) {
    let _closed = closed.drop_guard();
    let mut lines = LineReader::new(input, max_bytes);
    loop {
        let (messages, replies) = match lines.next_line().await {
            Ok(Some(Line::Message(bytes))) => Message::parse_input(bytes),
            Ok(Some(Line::TooLong { bytes, ids })) => {
                (Vec::new(), oversize_refusals(&ids, bytes, max_bytes))
            }
            Ok(None) => return,
            Err(e) => {
                warn!("reading stdin failed: {e}; treating it as end of input");
                return;
            }
        };
        for reply in replies {
            if tx.send(Input::Reply(reply)).await.is_err() {
                return;
            }
        }
        if !messages.is_empty() && tx.send(Input::Messages(messages)).await.is_err() {
            return;
        }
    }
}

/// Most messages written to stdout with one `writev`.
const WRITE_BATCH: usize = 64;

/// Writes messages to stdout, one per line, until an empty message (the end marker): whatever
/// is queued goes out in one vectored write, the messages' own bytes with a `\n` after each,
/// never copied into a buffer. A closed stdout (EPIPE) means the client is gone: exit at once.
async fn write_stdout(mut rx: mpsc::Receiver<Bytes>, output: Box<dyn AsyncWrite + Send + Unpin>) {
    let exit = |code| {
        platform::restore_stdio();
        std::process::exit(code)
    };
    match write_lines(&mut rx, output).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => exit(0),
        Err(e) => {
            error!("writing to stdout failed: {e}");
            exit(1);
        }
    }
}

async fn write_lines(
    rx: &mut mpsc::Receiver<Bytes>,
    mut output: Box<dyn AsyncWrite + Send + Unpin>,
) -> std::io::Result<()> {
    let mut batch: Vec<Bytes> = Vec::with_capacity(WRITE_BATCH);
    loop {
        let Some(first) = rx.recv().await else {
            return output.flush().await;
        };
        batch.push(first);
        while batch.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(message) => batch.push(message),
                Err(_) => break,
            }
        }
        let end = batch.iter().position(Bytes::is_empty);
        let lines = &batch[..end.unwrap_or(batch.len())];
        let mut slices: Vec<IoSlice<'_>> = lines
            .iter()
            .flat_map(|line| [IoSlice::new(line), IoSlice::new(b"\n")])
            .collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            let written = output.write_vectored(rest).await?;
            if written == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut rest, written);
        }
        output.flush().await?;
        if end.is_some() {
            return Ok(());
        }
        drop(slices);
        batch.clear();
    }
}
