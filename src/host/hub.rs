//! One stdio MCP server process, and the routing of its messages among HTTP sessions.
//!
//! Every request a session sends gets an upstream id of the hub's own (a counter), so ids that
//! collide between sessions never collide at the child; the answer is mapped back to the
//! session and its original id. Progress tokens are rewritten the same way and progress is
//! routed only to the session that asked. Server→client requests go to the session with a
//! request in flight (the most recently active one), else to the most recently active
//! session; only that session's answer is passed back. `*/list_changed` goes to every
//! session, `resources/updated` to the sessions subscribed to that URI.
//!
//! The hub restarts its child when it exits (with backoff), re-initializes it with the cached
//! `initialize`, and answers the requests that were in flight with errors; sessions stay valid.
//! It also pings the child every health interval: a child that leaves three pings in a row
//! unanswered is hung, and is killed and restarted the same way. Each new session's
//! `initialize` pings it too, so a probe of the host is a probe of the server.
//!
//! What each session is told at `initialize`, and which session a server request may go to,
//! follows [`super::negotiate`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::codec::{FramedRead, LinesCodec};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::negotiate::{self, Compatibility};
use crate::jsonrpc::{method, Kind, Message, UPSTREAM_ERROR};

/// Every session request this host answered (one host process serves one daemon), for the
/// manager's figures: see [`crate::supervise::activity`].
pub static FIGURES: crate::metrics::Counters = crate::metrics::Counters::new();

/// The variable that carries the host's secret; never passed on to the server.
pub const SECRET_ENV: &str = "MCPSM_HOST_SECRET";

pub type SessionId = Arc<str>;

/// Where a session's messages go: the SSE stream of one of its POSTs, or its GET stream.
pub type Sink = mpsc::Sender<Bytes>;

/// Messages kept for a session with no GET stream open.
const BACKLOG_LIMIT: usize = 256;
/// How long a request waits for a restarting child.
const READY_WAIT: Duration = Duration::from_secs(30);
const INITIALIZE_TIMEOUT: Duration = Duration::from_secs(60);
const HEALTHY_PERIOD: Duration = Duration::from_secs(30);
/// How long the child may take to answer a ping.
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// Unanswered pings in a row that make a child hung.
const HEALTH_FAILURES: u32 = 3;
/// How long a write to a child whose input is full may wait before the child counts as hung.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a parked sessionless request waits for its client's retry.
const PARKED_TTL: Duration = Duration::from_secs(600);
/// How long a stopping child may take to exit on end of input before it is killed.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// The program the hub runs.
#[derive(Debug, Clone)]
pub struct ChildCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Names the daemon in messages.
    pub name: String,
    pub max_message_bytes: usize,
    /// The child's working directory (`None`: the host's own).
    pub cwd: Option<PathBuf>,
    /// How often the child is pinged; zero turns it off.
    pub health_interval: Duration,
}

/// What a session said about itself at `initialize`, and the revision it was given.
#[derive(Debug, Clone, Default)]
pub struct SessionInfo {
    pub version: String,
    pub capabilities: Value,
    pub client: String,
}

impl SessionInfo {
    /// Reads an `initialize` request; `version` is filled in when it is answered.
    pub fn of_initialize(request: &Value) -> SessionInfo {
        let params = &request["params"];
        SessionInfo {
            version: String::new(),
            capabilities: params
                .get("capabilities")
                .cloned()
                .unwrap_or_else(|| json!({})),
            client: params["clientInfo"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        }
    }
}

/// One HTTP session as the hub sees it.
pub struct Session {
    pub id: SessionId,
    pub info: SessionInfo,
    /// Its answer streams, kept for resumption.
    pub streams: Arc<super::stream::Streams>,
    get: Mutex<Option<Sink>>,
    /// When the session's GET stream was seen closed (its proxy may be gone).
    gone_since: Mutex<Option<Instant>>,
    backlog: Mutex<VecDeque<Bytes>>,
    last_active: Mutex<Instant>,
}

impl Session {
    pub fn new(id: SessionId, info: SessionInfo) -> Arc<Session> {
        Arc::new(Session {
            id,
            info,
            streams: Arc::default(),
            get: Mutex::new(None),
            gone_since: Mutex::new(None),
            backlog: Mutex::new(VecDeque::new()),
            last_active: Mutex::new(Instant::now()),
        })
    }

    pub fn touch(&self) {
        *lock(&self.last_active) = Instant::now();
    }

    pub fn idle_for(&self) -> Duration {
        lock(&self.last_active).elapsed()
    }

    pub fn has_get_stream(&self) -> bool {
        lock(&self.get).as_ref().is_some_and(|tx| !tx.is_closed())
    }

    /// How long ago the session's GET stream was found closed: its proxy is gone unless it
    /// comes back. `None` while the stream is open, or when none was ever opened.
    pub fn gone_for(&self) -> Option<Duration> {
        let get = lock(&self.get);
        let mut gone = lock(&self.gone_since);
        match get.as_ref() {
            Some(tx) if tx.is_closed() => Some(gone.get_or_insert_with(Instant::now).elapsed()),
            _ => {
                *gone = None;
                None
            }
        }
    }

    /// Ends the GET stream (the host is stopping).
    pub fn close_stream(&self) {
        *lock(&self.get) = None;
    }

    /// Opens the GET stream: `None` when one is open already (409).
    pub fn open_get_stream(&self) -> Option<mpsc::Receiver<Bytes>> {
        let mut get = lock(&self.get);
        if get.as_ref().is_some_and(|tx| !tx.is_closed()) {
            return None;
        }
        let (tx, rx) = mpsc::channel(BACKLOG_LIMIT + 16);
        for message in lock(&self.backlog).drain(..) {
            let _ = tx.try_send(message);
        }
        *get = Some(tx);
        *lock(&self.gone_since) = None;
        Some(rx)
    }

    /// A message not tied to a request: onto the GET stream, or kept until one opens.
    fn push(&self, message: Bytes) {
        let open = lock(&self.get).clone().filter(|tx| !tx.is_closed());
        if let Some(tx) = open {
            match tx.try_send(message) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(message)) => {
                    // The client reads nothing: end its stream (it reconnects and gets the
                    // backlog) rather than queue without bound.
                    debug!(session = %self.id, "GET stream full: closed it; messages kept in the backlog");
                    *lock(&self.get) = None;
                    lock(&self.backlog).push_back(message);
                }
                Err(mpsc::error::TrySendError::Closed(message)) => {
                    lock(&self.backlog).push_back(message);
                }
            }
        } else {
            lock(&self.backlog).push_back(message);
        }
        let mut backlog = lock(&self.backlog);
        while backlog.len() > BACKLOG_LIMIT {
            backlog.pop_front();
            debug!(session = %self.id, "backlog full: dropped the oldest message");
        }
    }
}

/// Sends without blocking the caller; the order among overflowing messages may change.
fn spawn_send(tx: Sink, message: Bytes) {
    match tx.try_send(message) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(message)) => {
            tokio::spawn(async move {
                let _ = tx.send(message).await;
            });
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {}
    }
}

enum Reply {
    /// The SSE stream of the POST that carried the request.
    Stream(Sink),
    /// The hub's own request (initialize).
    Internal(oneshot::Sender<Message>),
    /// A sessionless request waiting for its client to retry with the input the server asked
    /// for (see [`Hub::park`]).
    Parked,
}

/// The session id under which sessionless (2026-07-28) requests run.
pub const SESSIONLESS: &str = "sessionless";
/// The key of the one input an input-required result asks for.
const INPUT_KEY: &str = "mcpsm-input";
/// Parked requests kept at most; the oldest is given up beyond.
const PARKED_LIMIT: usize = 256;

/// A sessionless request whose server asked the client something: the client gets an
/// input-required result and retries with the answer and `requestState`.
struct Parked {
    upstream: u64,
    /// The server's request id (JSON), answered with the client's input.
    server_request: String,
    /// The child's answer to the request, if it came while parked.
    answer: Option<Message>,
    since: Instant,
}

struct InFlight {
    session: Option<SessionId>,
    /// The id the session used, as JSON text.
    original_id: String,
    reply: Reply,
    /// The session's progress token (JSON text), when the request carried one.
    progress_token: Option<String>,
    /// When the request came (for the latency figures).
    since: Instant,
}

#[derive(Default)]
struct Routes {
    requests: HashMap<u64, InFlight>,
    /// Upstream progress token (JSON text) → upstream request id.
    progress: HashMap<String, u64>,
    /// The child's server→client request ids (JSON text) → the session that got them.
    server_requests: HashMap<String, SessionId>,
    subscriptions: HashMap<String, HashSet<SessionId>>,
    /// `requestState` → parked request, oldest first.
    parked: Vec<(String, Parked)>,
}

#[derive(Default)]
struct Init {
    /// The child's `initialize` request (built from the first session's) and its result.
    request: Option<Message>,
    result: Option<Value>,
    initialized_sent: bool,
}

pub struct Hub {
    command: ChildCommand,
    compatibility: Compatibility,
    /// The running child's pid.
    pid: Mutex<Option<u32>>,
    /// Kills the running child (it is hung); the supervisor restarts it.
    kill: tokio::sync::Notify,
    health: Mutex<Health>,
    /// 2026-07-28 `subscriptions/listen` streams the hub serves itself.
    listeners: Mutex<Vec<Listener>>,
    /// When a request last came (sessionless clients use a child without a session).
    last_request: Mutex<Instant>,
    stdin: Mutex<Option<mpsc::Sender<Bytes>>>,
    routes: Mutex<Routes>,
    sessions: Mutex<HashMap<SessionId, Arc<Session>>>,
    /// Serializes first initializations: one goes to the child, the others wait for its result.
    initializing: tokio::sync::Mutex<()>,
    init: Mutex<Init>,
    /// True while a child runs and is initialized (or was never initialized yet).
    ready: watch::Sender<bool>,
    next_id: AtomicU64,
    stop: CancellationToken,
    /// Cancelled once the child is gone for good after a shutdown.
    done: CancellationToken,
}

/// A `subscriptions/listen` stream: which notifications it wants, under which subscription id.
struct Listener {
    sink: Sink,
    /// The listen request's id, as JSON.
    subscription: String,
    /// Notification methods, e.g. `notifications/tools/list_changed`.
    wants: HashSet<String>,
}

/// The key of a 2026-07-28 notification's subscription in `params._meta`.
pub const META_SUBSCRIPTION: &str = "io.modelcontextprotocol/subscriptionId";

/// The child's answers to the hub's pings.
#[derive(Debug, Clone, Default)]
pub struct Health {
    pub failures: u32,
    pub last_ping: Option<Duration>,
    pub last_error: Option<String>,
    pub hung_restarts: u32,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    /// Starts the child and keeps it running until [`Hub::shutdown`].
    pub fn start(command: ChildCommand, compatibility: Compatibility) -> Arc<Hub> {
        let (ready, _) = watch::channel(false);
        let hub = Arc::new(Hub {
            command,
            compatibility,
            pid: Mutex::new(None),
            kill: tokio::sync::Notify::new(),
            health: Mutex::new(Health::default()),
            listeners: Mutex::new(Vec::new()),
            last_request: Mutex::new(Instant::now()),
            stdin: Mutex::new(None),
            routes: Mutex::new(Routes::default()),
            sessions: Mutex::new(HashMap::new()),
            initializing: tokio::sync::Mutex::new(()),
            init: Mutex::new(Init::default()),
            ready,
            next_id: AtomicU64::new(1),
            stop: CancellationToken::new(),
            done: CancellationToken::new(),
        });
        let running = hub.clone();
        tokio::spawn(async move {
            let done = running.done.clone();
            running.supervise().await;
            done.cancel();
        });
        if !hub.command.health_interval.is_zero() {
            let watched = hub.clone();
            tokio::spawn(async move { watched.watch_health().await });
        }
        hub
    }

    pub fn command(&self) -> &ChildCommand {
        &self.command
    }

    pub fn compatibility(&self) -> &Compatibility {
        &self.compatibility
    }

    pub fn pid(&self) -> Option<u32> {
        *lock(&self.pid)
    }

    pub fn health(&self) -> Health {
        lock(&self.health).clone()
    }

    /// The revision the child negotiated, once it is initialized.
    pub fn child_version(&self) -> Option<String> {
        lock(&self.init)
            .result
            .as_ref()
            .and_then(|r| r["protocolVersion"].as_str().map(str::to_owned))
    }

    pub fn sessions(&self) -> Vec<Arc<Session>> {
        lock(&self.sessions).values().cloned().collect()
    }

    pub fn is_stopped(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Pings the child every health interval; three unanswered pings in a row mean it is
    /// hung: it is killed, and restarted like a child that exited.
    async fn watch_health(self: Arc<Self>) {
        let interval = self.command.health_interval;
        let limit = interval.clamp(Duration::from_millis(100), PING_TIMEOUT);
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = self.stop.cancelled() => return,
            }
            if !*self.ready.borrow() || lock(&self.init).result.is_none() {
                continue;
            }
            let outcome = self.ping(limit).await;
            let hung = {
                let mut health = lock(&self.health);
                match outcome {
                    Ok(latency) => {
                        health.failures = 0;
                        health.last_ping = Some(latency);
                        health.last_error = None;
                        false
                    }
                    Err(why) => {
                        health.failures += 1;
                        warn!(daemon = %self.command.name, "health ping {}/{HEALTH_FAILURES} failed: {why}", health.failures);
                        health.last_error = Some(why);
                        if health.failures >= HEALTH_FAILURES {
                            health.failures = 0;
                            true
                        } else {
                            false
                        }
                    }
                }
            };
            if hung {
                self.hung(&format!("left {HEALTH_FAILURES} pings in a row unanswered"));
            }
        }
    }

    /// A round trip to the child: `ping`, answered within `limit`. Any answer counts, an
    /// error too (a server without `ping` is still alive).
    pub async fn ping(&self, limit: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        let ping = Message::parse(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":0,"method":"ping"}"#,
        ))
        .map_err(|e| e.to_string())?;
        self.call(ping, limit).await?;
        Ok(started.elapsed())
    }

    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    /// Waits (up to `limit`) until a shut-down hub's child is gone.
    pub async fn stopped(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.done.cancelled()).await;
    }

    pub fn attach(&self, session: Arc<Session>) {
        lock(&self.sessions).insert(session.id.clone(), session);
    }

    /// Forgets a session: its requests in flight are cancelled at the child.
    pub async fn detach(&self, session: &SessionId) {
        lock(&self.sessions).remove(session);
        let (cancelled, unsubscribe): (Vec<u64>, Vec<String>) = {
            let mut routes = lock(&self.routes);
            let ids: Vec<u64> = routes
                .requests
                .iter()
                .filter(|(_, r)| r.session.as_ref() == Some(session))
                .map(|(id, _)| *id)
                .collect();
            for id in &ids {
                if let Some(request) = routes.requests.remove(id) {
                    if let Some(token) = request.progress_token.map(|_| progress_token(*id)) {
                        routes.progress.remove(&token);
                    }
                }
            }
            routes.server_requests.retain(|_, s| s != session);
            let mut last = Vec::new();
            for (uri, sessions) in routes.subscriptions.iter_mut() {
                if sessions.remove(session) && sessions.is_empty() {
                    last.push(uri.clone());
                }
            }
            routes.subscriptions.retain(|_, s| !s.is_empty());
            (ids, last)
        };
        for id in cancelled {
            let notification = json!({"jsonrpc": "2.0", "method": method::CANCELLED, "params": {"requestId": id, "reason": "the client session ended"}});
            self.write(Bytes::from(notification.to_string())).await;
        }
        for uri in unsubscribe {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let request = json!({"jsonrpc": "2.0", "id": id, "method": "resources/unsubscribe", "params": {"uri": uri}});
            self.write(Bytes::from(request.to_string())).await;
        }
    }

    pub fn session_count(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// Answers `initialize` for a session as the server would answer it alone: the first
    /// initializes the child (see [`negotiate::child_initialize`]), later ones first check
    /// that the child answers a ping. Returns the answer and the revision given, or an error
    /// answer.
    pub async fn initialize(&self, request: &Message) -> Result<(Bytes, String), Bytes> {
        let id = request.id().map(|i| i.as_json()).unwrap_or("null");
        let value: Value = serde_json::from_slice(request.bytes()).unwrap_or_default();
        let requested = value["params"]["protocolVersion"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let answer = |child_result: &Value| {
            let child = child_result["protocolVersion"].as_str().unwrap_or_default();
            let version = negotiate::session_version(&requested, child).to_owned();
            let result = negotiate::session_result(child_result, &version);
            (response_bytes(request, &result), version)
        };
        let first = self.initializing.lock().await;
        let cached = lock(&self.init).result.clone();
        if let Some(child_result) = cached {
            drop(first);
            self.wait_ready()
                .await
                .map_err(|why| error_bytes(Some(id), &why))?;
            self.ping(PING_TIMEOUT).await.map_err(|why| {
                error_bytes(
                    Some(id),
                    &format!("{why}; the server may be hung (mcpsm restarts it after {HEALTH_FAILURES} failed health pings)"),
                )
            })?;
            return Ok(answer(&child_result));
        }
        self.wait_ready()
            .await
            .map_err(|why| error_bytes(Some(id), &why))?;
        let child_request = negotiate::child_initialize(&value, &self.compatibility);
        let child_request =
            Message::parse(Bytes::from(child_request.to_string())).map_err(|e| {
                error_bytes(Some(id), &format!("mcpsm could not read this request: {e}"))
            })?;
        let reply = self
            .call(child_request.clone(), INITIALIZE_TIMEOUT)
            .await
            .map_err(|why| error_bytes(Some(id), &why))?;
        let reply: Value = serde_json::from_slice(reply.bytes()).unwrap_or_default();
        match reply.get("result") {
            Some(result) if result.get("protocolVersion").is_some() => {
                let mut init = lock(&self.init);
                init.request = Some(child_request);
                init.result = Some(result.clone());
                Ok(answer(result))
            }
            _ => Err(with_id(reply.to_string().as_bytes(), id)),
        }
    }

    /// A notification or response from a session.
    pub async fn from_client(&self, session: &SessionId, message: Message) {
        match (message.kind(), message.method()) {
            (Kind::Notification, Some(method::INITIALIZED)) => {
                let first = {
                    let mut init = lock(&self.init);
                    let first = !init.initialized_sent && init.result.is_some();
                    init.initialized_sent |= first;
                    first
                };
                if first {
                    self.write(message.bytes().clone()).await;
                }
            }
            (Kind::Notification, Some(method::CANCELLED)) => {
                let params = message.peek_params();
                let Some(original) = params.request_id.map(|id| id.get().to_owned()) else {
                    return;
                };
                let upstream = {
                    let mut routes = lock(&self.routes);
                    let id = routes
                        .requests
                        .iter()
                        .find(|(_, r)| {
                            r.session.as_ref() == Some(session) && r.original_id == original
                        })
                        .map(|(id, _)| *id);
                    if let Some(id) = id {
                        routes.requests.remove(&id);
                        routes.progress.remove(&progress_token(id));
                    }
                    id
                };
                if let Some(id) = upstream {
                    let mut value: Value =
                        serde_json::from_slice(message.bytes()).unwrap_or_default();
                    value["params"]["requestId"] = json!(id);
                    self.write(Bytes::from(value.to_string())).await;
                }
            }
            (Kind::Notification, _) => self.write(message.bytes().clone()).await,
            (Kind::Response, _) => {
                let Some(id) = message.id() else { return };
                let asked = lock(&self.routes).server_requests.remove(id.as_json());
                if asked.as_ref() == Some(session) {
                    self.write(message.bytes().clone()).await;
                } else {
                    debug!(%id, session = %session, "dropping an answer to no request of this session");
                }
            }
            (Kind::Request, _) => {}
        }
    }

    /// Answers a server request on the child's behalf.
    fn answer_child(&self, line: String) {
        self.try_write(Bytes::from(line));
    }

    /// A request from a session; its answer (and whatever relates to it) goes to `reply`.
    /// How long since the last request; a child with listeners open counts as in use.
    pub fn idle_for(&self) -> Duration {
        let listening = lock(&self.listeners).iter().any(|l| !l.sink.is_closed());
        let busy = lock(&self.routes)
            .requests
            .values()
            .any(|r| !matches!(r.reply, Reply::Parked));
        if listening || busy {
            return Duration::ZERO;
        }
        lock(&self.last_request).elapsed()
    }

    /// Returns the id the child saw, while the request is in flight.
    pub async fn request(&self, session: &SessionId, message: Message, reply: Sink) -> Option<u64> {
        *lock(&self.last_request) = Instant::now();
        let id_json = message
            .id()
            .map(|i| i.as_json().to_owned())
            .unwrap_or_else(|| "null".into());
        if !message.id().is_some_and(|id| id.is_string_or_number()) {
            let refusal = Message::error(
                None,
                crate::jsonrpc::INVALID_REQUEST,
                &format!("Invalid Request: the id must be a string or a number, got {id_json}"),
                None,
            );
            let _ = reply.send(refusal.bytes().clone()).await;
            return None;
        }
        if let Some(method @ ("resources/subscribe" | "resources/unsubscribe")) = message.method() {
            let uri = message.peek_params().uri.unwrap_or_default();
            let subscribe = method == "resources/subscribe";
            let forward = {
                let mut routes = lock(&self.routes);
                let sessions = routes.subscriptions.entry(uri.clone()).or_default();
                let forward = if subscribe {
                    sessions.insert(session.clone()) && sessions.len() == 1
                } else {
                    sessions.remove(session) && sessions.is_empty()
                };
                routes.subscriptions.retain(|_, s| !s.is_empty());
                forward
            };
            if !forward {
                let _ = reply
                    .send(Bytes::from(format!(
                        r#"{{"jsonrpc":"2.0","id":{id_json},"result":{{}}}}"#
                    )))
                    .await;
                return None;
            }
        }
        if let Some(resumed) = self
            .resume_parked(session, &message, &id_json, &reply)
            .await
        {
            return resumed;
        }
        if let Err(why) = self.wait_ready().await {
            let _ = reply.send(error_bytes(Some(&id_json), &why)).await;
            return None;
        }
        let upstream = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (bytes, progress) = match rewrite_request(&message, upstream) {
            Some(rewritten) => rewritten,
            None => {
                let _ = reply
                    .send(error_bytes(
                        Some(&id_json),
                        "mcpsm could not read this request",
                    ))
                    .await;
                return None;
            }
        };
        {
            let mut routes = lock(&self.routes);
            if progress.is_some() {
                routes.progress.insert(progress_token(upstream), upstream);
            }
            routes.requests.insert(
                upstream,
                InFlight {
                    session: Some(session.clone()),
                    original_id: id_json,
                    reply: Reply::Stream(reply),
                    progress_token: progress,
                    since: Instant::now(),
                },
            );
        }
        self.write(bytes).await;
        Some(upstream)
    }

    /// Gives up on a request still in flight (its client closed the stream: a 2026-07-28
    /// cancellation) and tells the child.
    pub async fn cancel(&self, upstream: u64) {
        let removed = {
            let mut routes = lock(&self.routes);
            routes.progress.remove(&progress_token(upstream));
            routes.requests.remove(&upstream).is_some()
        };
        if removed {
            let notification = json!({"jsonrpc": "2.0", "method": method::CANCELLED, "params": {"requestId": upstream, "reason": "the client closed the request's stream"}});
            self.write(Bytes::from(notification.to_string())).await;
        }
    }

    /// A 2026-07-28 `subscriptions/listen` served by the hub for a child that speaks an
    /// older revision: list changes the filter asks for go to `sink` until it closes.
    pub fn listen(&self, sink: Sink, subscription: String, wants: HashSet<String>) {
        let mut listeners = lock(&self.listeners);
        listeners.retain(|l| !l.sink.is_closed());
        listeners.push(Listener {
            sink,
            subscription,
            wants,
        });
    }

    /// The child's InitializeResult, once it is initialized.
    pub fn init_result(&self) -> Option<Value> {
        lock(&self.init).result.clone()
    }

    /// The hub's own request to the child, for callers above it.
    pub async fn ask(&self, message: Message, limit: Duration) -> Result<Message, String> {
        self.wait_ready().await?;
        self.call(message, limit).await
    }

    /// The hub's own request to the child; waits for the answer up to `limit`.
    async fn call(&self, message: Message, limit: Duration) -> Result<Message, String> {
        let upstream = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (bytes, _) = rewrite_request(&message, upstream).ok_or("unreadable request")?;
        let (tx, rx) = oneshot::channel();
        lock(&self.routes).requests.insert(
            upstream,
            InFlight {
                session: None,
                original_id: message
                    .id()
                    .map(|i| i.as_json().to_owned())
                    .unwrap_or_default(),
                reply: Reply::Internal(tx),
                progress_token: None,
                since: Instant::now(),
            },
        );
        let answered = tokio::time::timeout(limit, async {
            self.write(bytes).await;
            rx.await
        });
        match answered.await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(format!(
                "the MCP server of daemon \"{}\" exited before answering",
                self.command.name
            )),
            Err(_) => {
                lock(&self.routes).requests.remove(&upstream);
                Err(format!(
                    "the MCP server of daemon \"{}\" did not answer `{}` within {limit:?}",
                    self.command.name,
                    message.method().unwrap_or("a request")
                ))
            }
        }
    }

    async fn wait_ready(&self) -> Result<(), String> {
        let mut ready = self.ready.subscribe();
        let waited = tokio::time::timeout(READY_WAIT, ready.wait_for(|r| *r))
            .await
            .map(|r| r.is_ok());
        match waited {
            Ok(true) => Ok(()),
            _ => Err(format!(
                "the MCP server of daemon \"{}\" is not running (it is being restarted); try again",
                self.command.name
            )),
        }
    }

    /// Writes a line to the child. A child that reads nothing for [`WRITE_TIMEOUT`] while its
    /// input is full is hung: it is killed (and restarted) rather than waited for.
    async fn write(&self, line: Bytes) {
        let stdin = lock(&self.stdin).clone();
        match stdin {
            Some(stdin) => match stdin.send_timeout(line, WRITE_TIMEOUT).await {
                Ok(()) => {}
                Err(mpsc::error::SendTimeoutError::Timeout(_)) => self.hung("reads no input"),
                Err(mpsc::error::SendTimeoutError::Closed(_)) => {
                    debug!("the child's stdin is gone; its requests are answered when it exits")
                }
            },
            None => debug!("no child running; message dropped"),
        }
    }

    /// Writes a line without waiting (from the child's own reader, which must never block).
    fn try_write(&self, line: Bytes) {
        let stdin = lock(&self.stdin).clone();
        if let Some(stdin) = stdin {
            if let Err(mpsc::error::TrySendError::Full(_)) = stdin.try_send(line) {
                self.hung("reads no input");
            }
        }
    }

    /// Kills the child, which is restarted like one that exited.
    fn hung(&self, why: &str) {
        warn!(daemon = %self.command.name, "the MCP server process {why}: it is hung; killing it");
        lock(&self.health).hung_restarts += 1;
        self.kill.notify_one();
    }

    /// Runs the child, restarting it with backoff whenever it exits, until shutdown.
    async fn supervise(self: Arc<Self>) {
        let mut failures = 0u32;
        loop {
            let started = Instant::now();
            match self.run_child().await {
                Ok(status) => {
                    warn!(daemon = %self.command.name, "the MCP server process exited ({status})")
                }
                Err(e) => {
                    warn!(daemon = %self.command.name, "the MCP server process could not run: {e}")
                }
            }
            self.ready.send_replace(false);
            *lock(&self.stdin) = None;
            self.fail_in_flight();
            if self.stop.is_cancelled() {
                return;
            }
            failures = if started.elapsed() >= HEALTHY_PERIOD {
                1
            } else {
                failures + 1
            };
            let delay = crate::supervise::daemon::backoff(failures);
            info!(daemon = %self.command.name, "restarting the MCP server process in {delay:?}");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.stop.cancelled() => return,
            }
        }
    }

    async fn run_child(self: &Arc<Self>) -> std::io::Result<String> {
        let mut command = tokio::process::Command::new(&self.command.program);
        command
            .args(&self.command.args)
            .env_remove(SECRET_ENV)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(cwd) = &self.command.cwd {
            command.current_dir(cwd);
        }
        let mut child = command.spawn()?;
        let pid = child.id();
        *lock(&self.pid) = pid;
        info!(daemon = %self.command.name, pid = pid.unwrap_or_default(), cwd = ?self.command.cwd, "MCP server process started");
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("no stdin"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("no stdout"))?;
        let (tx, mut rx) = mpsc::channel::<Bytes>(1024);
        *lock(&self.stdin) = Some(tx);
        let writer = tokio::spawn(async move {
            // Buffered, so a line and its newline reach the server in one write (one read and
            // one wake-up of its event loop, not two); flushed whenever no other line waits.
            let mut stdin = tokio::io::BufWriter::new(stdin);
            while let Some(line) = rx.recv().await {
                if stdin.write_all(&line).await.is_err() || stdin.write_all(b"\n").await.is_err() {
                    return;
                }
                if rx.is_empty() && stdin.flush().await.is_err() {
                    return;
                }
            }
        });
        let reader_hub = self.clone();
        let max = self.command.max_message_bytes;
        let reader = tokio::spawn(async move {
            let mut lines = FramedRead::new(stdout, LinesCodec::new_with_max_length(max));
            while let Some(line) = lines.next().await {
                match line {
                    Ok(line) => reader_hub.on_child_line(line).await,
                    Err(e) => warn!("the MCP server wrote an unusable line: {e}"),
                }
            }
        });
        // A restarted child is initialized again by the hub, with the first session's request.
        let replay = {
            let mut init = lock(&self.init);
            let replay = init.request.clone();
            if replay.is_none() {
                init.initialized_sent = false;
            }
            replay
        };
        match replay {
            None => {
                self.ready.send_replace(true);
            }
            Some(request) => {
                let hub = self.clone();
                tokio::spawn(async move {
                    let answer = hub
                        .call(request, INITIALIZE_TIMEOUT)
                        .await
                        .and_then(|answer| {
                            let value: Value =
                                serde_json::from_slice(answer.bytes()).unwrap_or_default();
                            match value["result"].get("protocolVersion") {
                                Some(_) => Ok(answer),
                                None => Err(format!("it answered {value}")),
                            }
                        });
                    match answer {
                        Ok(_) => {
                            let initialized =
                                json!({"jsonrpc": "2.0", "method": method::INITIALIZED});
                            hub.write(Bytes::from(initialized.to_string())).await;
                            info!(daemon = %hub.command.name, "MCP server process re-initialized");
                            hub.ready.send_replace(true);
                        }
                        Err(why) => hub.hung(&format!("could not be initialized again ({why})")),
                    }
                });
            }
        }
        let status = tokio::select! {
            status = child.wait() => status?,
            () = self.stop.cancelled() => {
                // Stopping: end of input first (most servers exit on it), then SIGKILL.
                *lock(&self.stdin) = None;
                writer.abort();
                match tokio::time::timeout(STOP_WAIT, child.wait()).await {
                    Ok(status) => status?,
                    Err(_) => {
                        kill_tree(pid);
                        let _ = child.kill().await;
                        child.wait().await?
                    }
                }
            }
            () = self.kill.notified() => {
                kill_tree(pid);
                let _ = child.kill().await;
                child.wait().await?
            }
        };
        *lock(&self.pid) = None;
        writer.abort();
        let _ = tokio::time::timeout(Duration::from_secs(1), reader).await;
        Ok(status.to_string())
    }

    /// Requests whose child died: answered with errors carrying their own ids.
    fn fail_in_flight(&self) {
        let in_flight: Vec<InFlight> = {
            let mut routes = lock(&self.routes);
            routes.progress.clear();
            routes.server_requests.clear();
            routes.parked.clear();
            routes.requests.drain().map(|(_, r)| r).collect()
        };
        let why = format!(
            "the MCP server process of daemon \"{}\" exited while this request was in flight; it may or may not have run. It is being restarted: try again",
            self.command.name
        );
        for request in in_flight {
            if request.session.is_some() {
                FIGURES.record(request.since.elapsed(), true);
            }
            if let Reply::Stream(reply) = request.reply {
                spawn_send(reply, error_bytes(Some(&request.original_id), &why));
            }
        }
    }

    async fn on_child_line(&self, line: String) {
        let message = match Message::parse(Bytes::from(line)) {
            Ok(message) => message,
            Err(e) => {
                warn!(daemon = %self.command.name, "the MCP server wrote a line that is not JSON-RPC ({e}); skipped it");
                return;
            }
        };
        match message.kind() {
            Kind::Response => self.route_response(message),
            Kind::Request => self.route_server_request(message).await,
            Kind::Notification => self.route_notification(message),
        }
    }

    fn route_response(&self, message: Message) {
        let Some(upstream) = message.id().and_then(|id| id.as_json().parse::<u64>().ok()) else {
            return debug!("a response to no request of the hub");
        };
        let request = {
            let mut routes = lock(&self.routes);
            let request = routes.requests.remove(&upstream);
            routes.progress.remove(&progress_token(upstream));
            request
        };
        let Some(request) = request else {
            return debug!(upstream, "a late response (cancelled or failed already)");
        };
        if request.session.is_some() {
            FIGURES.record(request.since.elapsed(), message.is_error());
        }
        match request.reply {
            Reply::Internal(tx) => {
                let _ = tx.send(message);
            }
            Reply::Stream(reply) => {
                spawn_send(reply, with_id(message.bytes(), &request.original_id))
            }
            Reply::Parked => {
                let mut routes = lock(&self.routes);
                if let Some((_, parked)) = routes
                    .parked
                    .iter_mut()
                    .find(|(_, p)| p.upstream == upstream)
                {
                    parked.answer = Some(message);
                }
            }
        }
    }

    fn sessions_by_activity(&self) -> Vec<Arc<Session>> {
        let mut sessions: Vec<Arc<Session>> = lock(&self.sessions).values().cloned().collect();
        sessions.sort_by_key(|s| s.idle_for());
        sessions
    }

    /// A server→client request goes to a session that declared what it needs: the session
    /// with a request in flight (most recently active first: the likely cause), else, when
    /// no request is in flight, the most recently active session. It rides the POST stream of
    /// that session's request when there is one. With no session able, the child gets the
    /// answer a client without the capability gives.
    async fn route_server_request(&self, message: Message) {
        let Some(id) = message.id().map(|i| i.as_json().to_owned()) else {
            return;
        };
        let method = message.method().unwrap_or_default().to_owned();
        let params = {
            let value: Value = serde_json::from_slice(message.bytes()).unwrap_or_default();
            value.get("params").cloned().unwrap_or(Value::Null)
        };
        if self.park(&id, &method, &params) {
            return;
        }
        let able =
            |session: &Session| negotiate::can_answer(&session.info.capabilities, &method, &params);
        let (target, stream) = {
            let routes = lock(&self.routes);
            let sessions = self.sessions_by_activity();
            let stream_of = |session: &Session| {
                routes
                    .requests
                    .values()
                    .find_map(|r| match (&r.session, &r.reply) {
                        (Some(s), Reply::Stream(tx)) if *s == session.id && !tx.is_closed() => {
                            Some(tx.clone())
                        }
                        _ => None,
                    })
            };
            let busy: Vec<(Arc<Session>, Sink)> = sessions
                .iter()
                .filter_map(|s| stream_of(s).map(|tx| (s.clone(), tx)))
                .collect();
            if busy.is_empty() {
                (sessions.into_iter().find(|s| able(s)), None)
            } else {
                match busy.into_iter().find(|(s, _)| able(s)) {
                    Some((session, stream)) => (Some(session), Some(stream)),
                    None => (None, None),
                }
            }
        };
        let Some(session) = target else {
            debug!(daemon = %self.command.name, %method, "no session can answer this server request; answered as a client without the capability would");
            return self.answer_child(negotiate::not_supported(&id));
        };
        lock(&self.routes)
            .server_requests
            .insert(id, session.id.clone());
        match stream {
            Some(stream) => spawn_send(stream, message.bytes().clone()),
            None => session.push(message.bytes().clone()),
        }
    }

    fn route_notification(&self, message: Message) {
        let method = message.method().unwrap_or_default();
        let value: Value = serde_json::from_slice(message.bytes()).unwrap_or_default();
        if let Some(subscription) = value["params"]["_meta"].get(META_SUBSCRIPTION) {
            // A 2026-07-28 child's notification for one `subscriptions/listen` stream: the
            // subscription id is the id the child saw for the listen request.
            let routes = lock(&self.routes);
            let request = subscription
                .as_u64()
                .or_else(|| subscription.as_str()?.parse().ok())
                .and_then(|upstream| routes.requests.get(&upstream));
            if let Some(InFlight {
                original_id,
                reply: Reply::Stream(reply),
                ..
            }) = request
            {
                let mut value = value.clone();
                value["params"]["_meta"][META_SUBSCRIPTION] =
                    serde_json::from_str(original_id).unwrap_or(Value::Null);
                spawn_send(reply.clone(), Bytes::from(value.to_string()));
            }
            return;
        }
        self.notify_listeners(method, &value);
        if method == "notifications/progress" {
            let value: Value = serde_json::from_slice(message.bytes()).unwrap_or_default();
            let token = value["params"]["progressToken"].to_string();
            let routes = lock(&self.routes);
            let Some(request) = routes
                .progress
                .get(&token)
                .and_then(|id| routes.requests.get(id))
            else {
                return debug!("progress for no request in flight");
            };
            if let (Some(original), Reply::Stream(reply)) =
                (&request.progress_token, &request.reply)
            {
                let mut value = value;
                value["params"]["progressToken"] =
                    serde_json::from_str(original).unwrap_or(Value::Null);
                spawn_send(reply.clone(), Bytes::from(value.to_string()));
            }
            return;
        }
        let targets: Vec<Arc<Session>> = if method == "notifications/resources/updated" {
            let uri = message.peek_params().uri.unwrap_or_default();
            let subscribed = lock(&self.routes)
                .subscriptions
                .get(&uri)
                .cloned()
                .unwrap_or_default();
            lock(&self.sessions)
                .values()
                .filter(|s| subscribed.contains(&s.id))
                .cloned()
                .collect()
        } else if method == method::CANCELLED {
            let asked = message
                .peek_params()
                .request_id
                .and_then(|id| lock(&self.routes).server_requests.get(id.get()).cloned());
            let sessions = lock(&self.sessions);
            asked
                .and_then(|id| sessions.get(&id).cloned())
                .into_iter()
                .collect()
        } else {
            // list_changed, logging and anything else: every session.
            lock(&self.sessions).values().cloned().collect()
        };
        for session in targets {
            session.push(message.bytes().clone());
        }
    }
}

/// Kills `pid` and every process below it (a server started through `npx` or `sh` has its
/// real process as a grandchild, which would otherwise be left running, or stopped).
fn kill_tree(pid: Option<u32>) {
    let Some(pid) = pid else { return };
    for member in crate::platform::process_tree(pid) {
        let _ = crate::platform::kill(member);
    }
}

impl Hub {
    /// A server request while a sessionless request is in flight: that request's client gets
    /// an input-required result (2026-07-28 has no server→client requests) and the request
    /// waits, parked, for the client's retry. Returns whether it was parked.
    fn park(&self, server_request: &str, method: &str, params: &Value) -> bool {
        if !matches!(
            method,
            "sampling/createMessage" | "elicitation/create" | "roots/list"
        ) {
            return false;
        }
        let mut routes = lock(&self.routes);
        // A session's request in flight may be the cause: sessions are asked the usual way.
        let session_busy = routes.requests.values().any(|r| {
            r.session.as_deref().is_some_and(|s| s != SESSIONLESS)
                && matches!(r.reply, Reply::Stream(_))
        });
        if session_busy {
            return false;
        }
        let now = Instant::now();
        let expired: Vec<Parked> = {
            let (old, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut routes.parked)
                .into_iter()
                .partition(|(_, p)| now.duration_since(p.since) >= PARKED_TTL);
            routes.parked = kept;
            old.into_iter().map(|(_, p)| p).collect()
        };
        for parked in &expired {
            routes.requests.remove(&parked.upstream);
        }
        let Some(upstream) = routes
            .requests
            .iter()
            .filter(|(_, r)| {
                r.session.as_deref() == Some(SESSIONLESS) && matches!(r.reply, Reply::Stream(_))
            })
            .map(|(upstream, _)| *upstream)
            .max()
        else {
            return false;
        };
        let Some(request) = routes.requests.get_mut(&upstream) else {
            return false;
        };
        let Reply::Stream(reply) = std::mem::replace(&mut request.reply, Reply::Parked) else {
            return false;
        };
        let state = format!(
            "mcpsm-{upstream}-{}",
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let result = json!({
            "resultType": "input_required",
            "inputRequests": {INPUT_KEY: {"method": method, "params": params}},
            "requestState": state,
        });
        let answer = format!(
            r#"{{"jsonrpc":"2.0","id":{},"result":{result}}}"#,
            request.original_id
        );
        spawn_send(reply, Bytes::from(answer));
        routes.parked.push((
            state,
            Parked {
                upstream,
                server_request: server_request.to_owned(),
                answer: None,
                since: now,
            },
        ));
        let mut given_up = expired;
        if routes.parked.len() > PARKED_LIMIT {
            let (_, oldest) = routes.parked.remove(0);
            routes.requests.remove(&oldest.upstream);
            given_up.push(oldest);
        }
        drop(routes);
        for parked in given_up {
            // The client never came back: the server's question gets the answer of a client
            // that cannot answer it.
            if parked.answer.is_none() {
                self.try_write(Bytes::from(negotiate::not_supported(
                    &parked.server_request,
                )));
            }
        }
        true
    }

    /// A sessionless retry carrying the `requestState` of a parked request: the client's input
    /// goes to the server as the answer to its request, and the parked request answers on
    /// this retry's stream. `None` when the message is no such retry.
    async fn resume_parked(
        &self,
        session: &SessionId,
        message: &Message,
        id_json: &str,
        reply: &Sink,
    ) -> Option<Option<u64>> {
        if session.as_ref() != SESSIONLESS {
            return None;
        }
        let value: Value = serde_json::from_slice(message.bytes()).ok()?;
        let state = value["params"]["requestState"].as_str()?;
        let (parked, held) = {
            let mut routes = lock(&self.routes);
            let at = routes.parked.iter().position(|(s, _)| s == state)?;
            let (_, mut parked) = routes.parked.remove(at);
            let held = parked.answer.take();
            if held.is_none() {
                match routes.requests.get_mut(&parked.upstream) {
                    Some(request) => {
                        request.reply = Reply::Stream(reply.clone());
                        request.original_id = id_json.to_owned();
                    }
                    None => {
                        drop(routes);
                        let why = "the request this input was for is gone (the MCP server process was restarted); send the request again without requestState";
                        spawn_send(reply.clone(), error_bytes(Some(id_json), why));
                        return Some(None);
                    }
                }
            }
            (parked, held)
        };
        if let Some(answer) = held {
            spawn_send(reply.clone(), with_id(answer.bytes(), id_json));
            return Some(None);
        }
        let id: Value = serde_json::from_str(&parked.server_request).unwrap_or(Value::Null);
        let line = match value["params"]["inputResponses"].get(INPUT_KEY) {
            Some(input) => json!({"jsonrpc": "2.0", "id": id, "result": input}),
            None => json!({"jsonrpc": "2.0", "id": id,
                "error": {"code": -32602, "message": "the client sent no input for this request"}}),
        };
        self.write(Bytes::from(line.to_string())).await;
        Some(Some(parked.upstream))
    }

    /// Hands a list change to the `subscriptions/listen` streams that asked for it.
    fn notify_listeners(&self, method: &str, value: &Value) {
        let mut listeners = lock(&self.listeners);
        listeners.retain(|l| !l.sink.is_closed());
        for listener in listeners.iter().filter(|l| l.wants.contains(method)) {
            let mut value = value.clone();
            if !value["params"].is_object() {
                value["params"] = json!({});
            }
            value["params"]["_meta"][META_SUBSCRIPTION] =
                serde_json::from_str(&listener.subscription).unwrap_or(Value::Null);
            spawn_send(listener.sink.clone(), Bytes::from(value.to_string()));
        }
    }
}

fn progress_token(upstream: u64) -> String {
    format!("\"mcpsm-{upstream}\"")
}

/// The request with the hub's id (and progress token); returns the session's token.
fn rewrite_request(message: &Message, upstream: u64) -> Option<(Bytes, Option<String>)> {
    let mut value: Value = serde_json::from_slice(message.bytes()).ok()?;
    value["id"] = json!(upstream);
    let token = value
        .get_mut("params")
        .and_then(|p| p.get_mut("_meta"))
        .and_then(|m| m.get_mut("progressToken"))
        .map(|t| {
            std::mem::replace(
                t,
                serde_json::from_str(&progress_token(upstream)).unwrap_or(Value::Null),
            )
            .to_string()
        });
    Some((Bytes::from(value.to_string()), token))
}

/// The message with its `id` replaced by `id_json`.
fn with_id(bytes: &[u8], id_json: &str) -> Bytes {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(mut value) => {
            value["id"] = serde_json::from_str(id_json).unwrap_or(Value::Null);
            Bytes::from(value.to_string())
        }
        Err(_) => Bytes::copy_from_slice(bytes),
    }
}

fn response_bytes(request: &Message, result: &Value) -> Bytes {
    let id = request.id().map(|i| i.as_json()).unwrap_or("null");
    Bytes::from(format!(
        r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#
    ))
}

fn error_bytes(id_json: Option<&str>, message: &str) -> Bytes {
    let error = json!({"code": UPSTREAM_ERROR, "message": message});
    let id = id_json.unwrap_or("null");
    Bytes::from(format!(r#"{{"jsonrpc":"2.0","id":{id},"error":{error}}}"#))
}
