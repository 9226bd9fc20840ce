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

use crate::jsonrpc::{method, Kind, Message, UPSTREAM_ERROR};

pub type SessionId = Arc<str>;

/// Where a session's messages go: the SSE stream of one of its POSTs, or its GET stream.
pub type Sink = mpsc::Sender<Bytes>;

/// Messages kept for a session with no GET stream open.
const BACKLOG_LIMIT: usize = 256;
/// How long a request waits for a restarting child.
const READY_WAIT: Duration = Duration::from_secs(30);
const INITIALIZE_TIMEOUT: Duration = Duration::from_secs(60);
const HEALTHY_PERIOD: Duration = Duration::from_secs(30);

/// The program the hub runs.
#[derive(Debug, Clone)]
pub struct ChildCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Names the daemon in messages.
    pub name: String,
    pub max_message_bytes: usize,
}

/// One HTTP session as the hub sees it.
pub struct Session {
    pub id: SessionId,
    get: Mutex<Option<Sink>>,
    backlog: Mutex<VecDeque<Bytes>>,
    last_active: Mutex<Instant>,
}

impl Session {
    pub fn new(id: SessionId) -> Arc<Session> {
        Arc::new(Session {
            id,
            get: Mutex::new(None),
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
        Some(rx)
    }

    /// A message not tied to a request: onto the GET stream, or kept until one opens.
    fn push(&self, message: Bytes) {
        let open = lock(&self.get).clone().filter(|tx| !tx.is_closed());
        if let Some(tx) = open {
            match tx.try_send(message) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(message)) => {
                    spawn_send(tx, message);
                    return;
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
}

struct InFlight {
    session: Option<SessionId>,
    /// The id the session used, as JSON text.
    original_id: String,
    reply: Reply,
    /// The session's progress token (JSON text), when the request carried one.
    progress_token: Option<String>,
}

#[derive(Default)]
struct Routes {
    requests: HashMap<u64, InFlight>,
    /// Upstream progress token (JSON text) → upstream request id.
    progress: HashMap<String, u64>,
    /// The child's server→client request ids (JSON text) → the session that got them.
    server_requests: HashMap<String, SessionId>,
    subscriptions: HashMap<String, HashSet<SessionId>>,
}

#[derive(Default)]
struct Init {
    /// The first session's `initialize` request and the child's result.
    request: Option<Message>,
    result: Option<Value>,
    initialized_sent: bool,
}

pub struct Hub {
    command: ChildCommand,
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
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    /// Starts the child and keeps it running until [`Hub::shutdown`].
    pub fn start(command: ChildCommand) -> Arc<Hub> {
        let (ready, _) = watch::channel(false);
        let hub = Arc::new(Hub {
            command,
            stdin: Mutex::new(None),
            routes: Mutex::new(Routes::default()),
            sessions: Mutex::new(HashMap::new()),
            initializing: tokio::sync::Mutex::new(()),
            init: Mutex::new(Init::default()),
            ready,
            next_id: AtomicU64::new(1),
            stop: CancellationToken::new(),
        });
        let running = hub.clone();
        tokio::spawn(async move { running.supervise().await });
        hub
    }

    pub fn shutdown(&self) {
        self.stop.cancel();
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

    /// Answers `initialize` for a session: the first goes to the child, later ones get the
    /// cached result under their own id.
    pub async fn initialize(&self, request: &Message) -> Bytes {
        let _first = self.initializing.lock().await;
        if let Some(result) = &lock(&self.init).result {
            return response_bytes(request, result);
        }
        if let Err(why) = self.wait_ready().await {
            return error_bytes(request.id().map(|i| i.as_json()), &why);
        }
        match self.call(request.clone()).await {
            Ok(answer) => {
                let value: Value = serde_json::from_slice(answer.bytes()).unwrap_or_default();
                match value.get("result") {
                    Some(result) if result.get("protocolVersion").is_some() => {
                        let mut init = lock(&self.init);
                        init.request = Some(request.clone());
                        init.result = Some(result.clone());
                        response_bytes(request, result)
                    }
                    _ => with_id(
                        answer.bytes(),
                        request.id().map(|i| i.as_json()).unwrap_or("null"),
                    ),
                }
            }
            Err(why) => error_bytes(request.id().map(|i| i.as_json()), &why),
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

    /// A request from a session; its answer (and whatever relates to it) goes to `reply`.
    pub async fn request(&self, session: &SessionId, message: Message, reply: Sink) {
        let id_json = message
            .id()
            .map(|i| i.as_json().to_owned())
            .unwrap_or_else(|| "null".into());
        match message.method() {
            Some("ping") => {
                let _ = reply
                    .send(Bytes::from(format!(
                        r#"{{"jsonrpc":"2.0","id":{id_json},"result":{{}}}}"#
                    )))
                    .await;
                return;
            }
            Some("resources/subscribe" | "resources/unsubscribe") => {
                let uri = message.peek_params().uri.unwrap_or_default();
                let subscribe = message.method() == Some("resources/subscribe");
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
                    return;
                }
            }
            _ => {}
        }
        if let Err(why) = self.wait_ready().await {
            let _ = reply.send(error_bytes(Some(&id_json), &why)).await;
            return;
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
                return;
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
                },
            );
        }
        self.write(bytes).await;
    }

    /// The hub's own request to the child; waits for the answer.
    async fn call(&self, message: Message) -> Result<Message, String> {
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
            },
        );
        self.write(bytes).await;
        match tokio::time::timeout(INITIALIZE_TIMEOUT, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(format!(
                "the MCP server of daemon \"{}\" exited before answering",
                self.command.name
            )),
            Err(_) => {
                lock(&self.routes).requests.remove(&upstream);
                Err(format!(
                    "the MCP server of daemon \"{}\" did not answer within {INITIALIZE_TIMEOUT:?}",
                    self.command.name
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

    async fn write(&self, line: Bytes) {
        let stdin = lock(&self.stdin).clone();
        match stdin {
            Some(stdin) => {
                if stdin.send(line).await.is_err() {
                    debug!("the child's stdin is gone; its requests are answered when it exits");
                }
            }
            None => debug!("no child running; message dropped"),
        }
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
        let mut child = tokio::process::Command::new(&self.command.program)
            .args(&self.command.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        info!(daemon = %self.command.name, pid = child.id().unwrap_or_default(), "MCP server process started");
        let mut stdin = child
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
                    match hub.call(request).await {
                        Ok(_) => {
                            let initialized =
                                json!({"jsonrpc": "2.0", "method": method::INITIALIZED});
                            hub.write(Bytes::from(initialized.to_string())).await;
                            info!(daemon = %hub.command.name, "MCP server process re-initialized");
                            hub.ready.send_replace(true);
                        }
                        Err(why) => warn!("re-initializing the MCP server failed: {why}"),
                    }
                });
            }
        }
        let status = tokio::select! {
            status = child.wait() => status?,
            () = self.stop.cancelled() => {
                let _ = child.kill().await;
                child.wait().await?
            }
        };
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
            routes.requests.drain().map(|(_, r)| r).collect()
        };
        let why = format!(
            "the MCP server process of daemon \"{}\" exited while this request was in flight; it may or may not have run. It is being restarted: try again",
            self.command.name
        );
        for request in in_flight {
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
            Kind::Request => self.route_server_request(message),
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
        match request.reply {
            Reply::Internal(tx) => {
                let _ = tx.send(message);
            }
            Reply::Stream(reply) => {
                spawn_send(reply, with_id(message.bytes(), &request.original_id))
            }
        }
    }

    fn sessions_by_activity(&self) -> Vec<Arc<Session>> {
        let mut sessions: Vec<Arc<Session>> = lock(&self.sessions).values().cloned().collect();
        sessions.sort_by_key(|s| s.idle_for());
        sessions
    }

    fn route_server_request(&self, message: Message) {
        let Some(id) = message.id().map(|i| i.as_json().to_owned()) else {
            return;
        };
        // The session with a request in flight (most recently active first), else the most
        // recently active one; the message rides that request's stream when there is one.
        let (target, stream) = {
            let routes = lock(&self.routes);
            let mut best: Option<(Arc<Session>, Sink)> = None;
            for session in self.sessions_by_activity() {
                let stream = routes
                    .requests
                    .values()
                    .find_map(|r| match (&r.session, &r.reply) {
                        (Some(s), Reply::Stream(tx)) if *s == session.id && !tx.is_closed() => {
                            Some(tx.clone())
                        }
                        _ => None,
                    });
                if let Some(stream) = stream {
                    best = Some((session, stream));
                    break;
                }
            }
            match best {
                Some((session, stream)) => (Some(session), Some(stream)),
                None => (self.sessions_by_activity().into_iter().next(), None),
            }
        };
        let Some(session) = target else {
            return warn!(daemon = %self.command.name, "a server request with no session to ask; dropped");
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
