//! One client session with a daemon, whatever wire it speaks.
//!
//! [`Upstream::send`] takes a JSON-RPC message from the client; everything the daemon sends
//! back (responses, notifications, server→client requests) comes out of the channel given to
//! [`Upstream::new`], one message per item, each a single line of JSON. The interface is the
//! same for streamable HTTP ([`streamable`]), legacy HTTP+SSE ([`legacy`]) and `auto`, which
//! picks one of the two on the first message.
//!
//! Guarantees:
//! - requests are sent concurrently, never one at a time (a `tools/call` may wait on an
//!   elicitation the client answers with another POST);
//! - every request gets exactly one response: the daemon's, or a JSON-RPC error with the
//!   request's id saying what failed and what to do. Late or duplicate responses are dropped;
//! - messages are forwarded byte for byte, whatever they contain;
//! - when the daemon goes away (refused connections, an unknown session, a closed legacy
//!   stream) the client's session survives: [`recovery`] reconnects, replays the client's
//!   `initialize`, and resends what never reached the daemon.

mod authorize;
pub mod http;
mod legacy;
mod recovery;
pub mod sse;
pub mod stdio;
mod streamable;
mod tool_headers;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::HeaderMap;
use tokio::sync::{mpsc, oneshot, watch, Notify, OnceCell, Semaphore, SemaphorePermit};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use url::Url;

use crate::config::TransportKind;
use crate::jsonrpc::{method, Id, Kind, Message, INVALID_REQUEST, UPSTREAM_ERROR};
pub use authorize::{AuthFuture, Authorizer};

/// What an [`Upstream`] connects to and how it talks about it.
#[derive(Debug, Clone)]
pub struct Options {
    pub url: Url,
    pub transport: TransportKind,
    /// Extra headers on every request (e.g. `Authorization`).
    pub headers: HeaderMap,
    /// Names the upstream in messages, e.g. `daemon "memory" (http://127.0.0.1:3100/mcp)`.
    pub label: String,
    /// Told to the user when the daemon cannot be reached.
    pub unreachable_hint: String,
    /// Told to the user when the daemon fails otherwise (bad status, broken stream).
    pub failure_hint: String,
    /// Bound on one message or SSE event, in bytes.
    pub max_message_bytes: usize,
    /// How long to try to get the daemon back when it goes away; `None` reports such
    /// failures at once (health probes want that).
    pub reconnect_timeout: Option<Duration>,
}

/// Makes sure the daemon runs (asks the manager); used before reconnecting.
pub type EnsureFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// What the owner of an [`Upstream`] wants to hear about recovery.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Called before each reconnection attempt; its error is the reason reported to the
    /// client if the daemon does not come back.
    pub ensure: Option<EnsureFn>,
    /// Called after each successful recovery.
    pub recovered: Option<Arc<dyn Fn() + Send + Sync>>,
    /// Supplies `Authorization` (OAuth) and answers refusals; see [`Authorizer`].
    pub authorizer: Option<Arc<dyn Authorizer>>,
    /// Counts each answered client request (latency, error or not) for the manager.
    pub figures: Option<Arc<crate::metrics::Counters>>,
}

/// Why a message could not be delivered.
#[derive(Debug)]
pub(crate) enum Failure {
    /// No connection could be made: the request never reached the daemon.
    Unreachable(String),
    /// The daemon answered with an HTTP error status.
    Status { status: u16, body: String },
    /// The daemon answered 4xx with a JSON-RPC error of its own (id null or ours).
    Rejected {
        status: u16,
        code: i64,
        message: String,
    },
    /// The stream carrying the response ended before the response came.
    StreamEnded(String),
    /// The daemon no longer knows the session.
    SessionLost { status: u16 },
    /// A message from the daemon exceeded the size bound.
    TooLarge(String),
    /// Something in the daemon's answer made no sense.
    Protocol(String),
    /// The daemon went away and did not come back (or came back speaking another version).
    Recovery(String),
    /// TLS could not be set up (an untrusted certificate, say).
    Tls(String),
    /// This process ran out of something (file descriptors, memory, local ports): a failure
    /// of this one message, not a sign that the daemon went away.
    LocalResource(String),
}

impl Failure {
    /// Failures after which the message never reached a live session: safe to send again
    /// once the session is back.
    fn is_recoverable(&self) -> bool {
        matches!(self, Failure::Unreachable(_) | Failure::SessionLost { .. })
    }
}

struct Pending {
    method: Box<str>,
    task: Option<AbortHandle>,
    /// How often the request was held for a resend.
    holds: u8,
    /// Held or queued until the daemon is back: not in flight.
    parked: bool,
    /// When the client sent it (for the latency figures).
    since: Instant,
}

/// What the client's session consists of, for replaying it to a new daemon session.
#[derive(Default)]
struct ClientSession {
    initialize: Option<Message>,
    initialized: Option<Message>,
    /// The client's `initialize` was answered: there is a session to replay.
    established: bool,
    protocol_version: Option<String>,
    /// `*/list_changed` notifications to send after a recovery.
    list_changed: Vec<&'static str>,
}

/// State shared by the transport tasks of one session.
pub(crate) struct Shared {
    pub http: reqwest::Client,
    /// The lean client for a loopback `http://` daemon (see [`http::Lean`]).
    lean: Option<http::Lean>,
    pub options: Options,
    out: mpsc::Sender<Bytes>,
    pending: Mutex<HashMap<Id, Pending>>,
    idle: Notify,
    pub shutdown: CancellationToken,
    session: Mutex<ClientSession>,
    established: AtomicBool,
    /// Responses to requests mcpsm itself sends (the replayed `initialize`).
    internal: Mutex<HashMap<Id, oneshot::Sender<Message>>>,
    internal_count: AtomicUsize,
    /// Server→client requests forwarded to the client, with the session generation.
    server_requests: Mutex<HashMap<Id, u64>>,
    /// Bumped by every recovery: a new daemon session.
    generation: AtomicU64,
    recovery: Mutex<recovery::State>,
    wake_recovery: Notify,
    hooks: Hooks,
    /// Bound the connections to the daemon: see [`http::Slots`].
    requests_in_flight: Semaphore,
    /// `Mcp-Param-*` headers learned from `tools/list` (2026-07-28 connections).
    pub tool_headers: tool_headers::ToolHeaders,
    others_in_flight: Semaphore,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, HashMap<Id, Pending>> {
        // A panic while holding this lock cannot leave the map inconsistent; keep going.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts waiting for the answer to a request. False when a request with the same id (by
    /// value) is still waiting: its answer could not be told from this one's.
    fn track(&self, message: &Message) -> bool {
        if let (Kind::Request, Some(id)) = (message.kind(), message.id()) {
            let mut pending = self.pending();
            if pending.contains_key(id) {
                return false;
            }
            let method = message.method().unwrap_or_default().into();
            pending.insert(
                id.clone(),
                Pending {
                    method,
                    task: None,
                    holds: 0,
                    parked: false,
                    since: Instant::now(),
                },
            );
        }
        true
    }

    /// Tracks a client request, or says why it cannot be sent: an id MCP does not allow, or an
    /// id (by value) that another request still waiting for its answer has.
    fn admit(&self, request: &Message) -> Option<Message> {
        let id = request.id()?;
        let label = &self.options.label;
        let why = if id.is_null() {
            format!("Invalid request: `\"id\": null` is not allowed in MCP (a request needs a string or integer id; a message without an id is a notification); mcpsm did not send it to {label}. hint: give the request a string or integer id")
        } else if !id.is_string_or_number() {
            format!("Invalid request: the id {id} is neither a string nor a number; mcpsm did not send it to {label}. hint: give the request a string or integer id")
        } else if !self.track(request) {
            let method = self
                .pending()
                .get(id)
                .map_or_else(String::new, |p| format!(" `{}`", p.method));
            format!("Invalid request: id {id} is already in flight (an earlier{method} request with this id has not been answered yet); mcpsm did not send this request to {label}, so that the two answers cannot be confused. hint: give every request in flight its own id")
        } else {
            return None;
        };
        debug!(%id, "refused a request: {why}");
        Some(Message::error(Some(id), INVALID_REQUEST, &why, None))
    }

    /// Waits for a connection slot for `message` (see [`http::Slots`]).
    async fn slot(&self, message: &Message) -> Option<SemaphorePermit<'_>> {
        let slots = match message.kind() {
            Kind::Request => &self.requests_in_flight,
            Kind::Notification | Kind::Response => &self.others_in_flight,
        };
        // Never closed, so this always gives a permit.
        slots.acquire().await.ok()
    }

    fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
        mutex.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_internal(&self, id: Option<&Id>) -> bool {
        self.internal_count.load(Ordering::Acquire) > 0
            && id.is_some_and(|id| Self::lock(&self.internal).contains_key(id))
    }

    /// Sends a response to its waiter: mcpsm's own request, or the client.
    async fn respond(&self, id: &Id, message: Message) {
        if self.internal_count.load(Ordering::Acquire) > 0 {
            let waiter = Self::lock(&self.internal).remove(id);
            if let Some(waiter) = waiter {
                self.internal_count.fetch_sub(1, Ordering::AcqRel);
                let _ = waiter.send(message);
                return;
            }
        }
        // Fails only when the client side is gone; then nobody is left to tell.
        let _ = self.out.send(message.bytes().clone()).await;
    }

    pub fn is_pending(&self, id: &Id) -> bool {
        self.pending().contains_key(id)
    }

    /// Requests still waiting for an answer that will come: a `subscriptions/listen` stream
    /// is open until someone closes it, so it is not counted.
    fn finishing_count(&self) -> usize {
        self.pending()
            .values()
            .filter(|p| &*p.method != method::SUBSCRIPTIONS_LISTEN)
            .count()
    }

    /// Hands a message from the daemon to the client. A response is forwarded only while its
    /// request is pending, so the client never sees two answers to one request.
    pub async fn deliver(&self, message: Message) {
        match (message.kind(), message.id()) {
            (Kind::Response, Some(id)) if !id.is_null() => {
                // Matched by value: the daemon may have written the id another way.
                let Some((asked, pending)) = self.pending().remove_entry(id) else {
                    debug!(%id, "dropping a response to no pending request");
                    return;
                };
                self.idle.notify_waiters();
                self.count(&pending, message.is_error());
                let message = if asked.as_json() == id.as_json() {
                    message
                } else {
                    // The client gets its id back exactly as it wrote it.
                    message.with_id_text(&asked)
                };
                if !self.established.load(Ordering::Acquire) {
                    self.note_initialize_result(&message);
                }
                let message = self.tool_headers.learn(message);
                self.respond(&asked, message).await;
                return;
            }
            (Kind::Request, Some(id)) => {
                let generation = self.generation.load(Ordering::Acquire);
                Self::lock(&self.server_requests).insert(id.clone(), generation);
            }
            _ => {}
        }
        // Fails only when the client side is gone; then nobody is left to tell.
        let _ = self.out.send(message.bytes().clone()).await;
    }

    /// Remembers what the client's own `initialize` negotiated.
    fn note_initialize_result(&self, response: &Message) {
        let mut session = Self::lock(&self.session);
        let is_initialize = session
            .initialize
            .as_ref()
            .is_some_and(|init| init.id() == response.id());
        if !is_initialize {
            return;
        }
        let Some(version) = response.initialize_protocol_version() else {
            return; // an error: no session yet
        };
        session.protocol_version = Some(version);
        session.list_changed = recovery::list_changed_notifications(response);
        session.established = true;
        self.established.store(true, Ordering::Release);
    }

    /// Counts an answered client request in the figures the proxy reports.
    fn count(&self, pending: &Pending, error: bool) {
        if let Some(figures) = &self.hooks.figures {
            figures.record(pending.since.elapsed(), error);
        }
    }

    /// Answers request `id` with an error, unless it was answered already.
    pub async fn fail(&self, id: &Id, failure: &Failure) {
        let Some((id, pending)) = self.pending().remove_entry(id) else {
            return;
        };
        self.idle.notify_waiters();
        self.count(&pending, true);
        let error = self.error_message(&id, &pending.method, failure);
        self.respond(&id, error).await;
    }

    /// Answers every pending request with an error.
    /// Answers every request in flight with an error (not those parked for a resend).
    pub async fn fail_all(&self, failure: &Failure) {
        let drained: Vec<(Id, Pending)> = {
            let mut pending = self.pending();
            let ids: Vec<Id> = pending
                .iter()
                .filter(|(_, p)| !p.parked)
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| pending.remove(&id).map(|p| (id, p)))
                .collect()
        };
        self.idle.notify_waiters();
        for (id, pending) in drained {
            self.count(&pending, true);
            if let Some(task) = pending.task {
                task.abort();
            }
            let error = self.error_message(&id, &pending.method, failure);
            self.respond(&id, error).await;
        }
    }

    /// Reports a failure for `message`: an error response for a request, a log line otherwise.
    /// A message that never reached a live session is held for a resend after recovery
    /// instead (a few times at most).
    pub async fn report(&self, message: &Message, failure: &Failure) {
        let broken;
        let mut failure = failure;
        if failure.is_recoverable() {
            match self.hold(message) {
                Ok(()) => return,
                Err(None) => {}
                Err(Some(why)) => {
                    broken = Failure::Recovery(why);
                    failure = &broken;
                }
            }
        }
        match (message.kind(), message.id()) {
            (Kind::Request, Some(id)) => self.fail(id, failure).await,
            _ => warn!(
                method = message.method().unwrap_or("(response)"),
                "could not deliver a message to {}: {}",
                self.options.label,
                self.describe(failure).0
            ),
        }
    }

    fn describe(&self, failure: &Failure) -> (String, i64, &str) {
        let label = &self.options.label;
        let failure_hint = self.options.failure_hint.as_str();
        match failure {
            Failure::Unreachable(cause) => (
                format!("mcpsm could not reach {label}: {cause}"),
                UPSTREAM_ERROR,
                self.options.unreachable_hint.as_str(),
            ),
            Failure::Status { status, body } if body.is_empty() => (
                format!("{label} answered HTTP {status}"),
                UPSTREAM_ERROR,
                failure_hint,
            ),
            Failure::Status { status, body } => (
                format!("{label} answered HTTP {status}: {body}"),
                UPSTREAM_ERROR,
                failure_hint,
            ),
            Failure::Rejected {
                status,
                code,
                message,
            } => (
                format!("{label} rejected the request (HTTP {status}): {message}"),
                *code,
                failure_hint,
            ),
            Failure::StreamEnded(why) => (
                format!("{why} before the response to this request arrived from {label}; the request may or may not have run"),
                UPSTREAM_ERROR,
                failure_hint,
            ),
            Failure::SessionLost { status } => (
                format!("{label} no longer knows this MCP session (HTTP {status}); the daemon was probably restarted"),
                UPSTREAM_ERROR,
                "restart the MCP session in your client (e.g. reconnect the server)",
            ),
            Failure::TooLarge(what) => (
                format!("{what} (from {label})"),
                UPSTREAM_ERROR,
                "raise --max-message-bytes if such large messages are expected",
            ),
            Failure::Protocol(what) => (
                format!("{label} sent something mcpsm cannot use: {what}"),
                UPSTREAM_ERROR,
                failure_hint,
            ),
            Failure::Tls(cause) => (
                format!("mcpsm could not set up TLS with {label}: {cause}"),
                UPSTREAM_ERROR,
                "if the server's certificate comes from a private CA, point SSL_CERT_FILE at the CA certificate in the environment mcpsm runs in",
            ),
            Failure::LocalResource(cause) => (
                format!("mcpsm could not open a connection to {label}: {cause}; this is a limit of the proxy's own process, not a fault of the daemon, and only this request failed"),
                UPSTREAM_ERROR,
                "raise the open-file limit (`ulimit -n`) of the MCP client that starts mcpsm, or send fewer requests at once",
            ),
            Failure::Recovery(why) => (
                format!("{label} went away and mcpsm could not get it back: {why}"),
                UPSTREAM_ERROR,
                failure_hint,
            ),
        }
    }

    fn error_message(&self, id: &Id, method: &str, failure: &Failure) -> Message {
        let (text, code, hint) = self.describe(failure);
        let data = serde_json::json!({
            "upstream": self.options.url.as_str(),
            "method": method,
            "hint": hint,
        });
        Message::error(Some(id), code, &format!("{text}. hint: {hint}"), Some(data))
    }

    fn set_task(&self, id: &Id, task: AbortHandle) {
        if let Some(pending) = self.pending().get_mut(id) {
            pending.task = Some(task);
        }
    }

    /// Stops waiting for request `id` (2026-07-28 cancellation: closing its stream).
    fn cancel(&self, id: &Id) -> bool {
        let Some(pending) = self.pending().remove(id) else {
            return false;
        };
        self.idle.notify_waiters();
        if let Some(task) = pending.task {
            task.abort();
        }
        true
    }
}

/// `initialize` and `notifications/initialized` are sent before the next message is looked
/// at, so the session exists before anything else uses it.
fn is_inline(message: &Message) -> bool {
    matches!(
        message.method(),
        Some(method::INITIALIZE | method::INITIALIZED)
    )
}

#[derive(Clone)]
enum Mode {
    Streamable(Arc<streamable::Session>),
    Legacy(Arc<legacy::Session>),
}

impl Mode {
    async fn send(&self, message: Message) {
        let shared = match self {
            Mode::Streamable(session) => session.shared(),
            Mode::Legacy(session) => session.shared(),
        };
        let _slot = shared.slot(&message).await;
        match self {
            Mode::Streamable(session) => session.send(message).await,
            Mode::Legacy(session) => session.send(message).await,
        }
    }

    /// Forgets the daemon session, so the next message starts a new one.
    async fn reset(&self) {
        match self {
            Mode::Streamable(session) => session.reset(),
            Mode::Legacy(session) => session.reset().await,
        }
    }
}

/// A client session with one daemon.
pub struct Upstream {
    shared: Arc<Shared>,
    mode: OnceCell<Mode>,
    /// `auto`: the streamable session messages go out on while the wire is not known yet; it
    /// becomes the session when the daemon turns out to speak streamable HTTP.
    probe: Option<Arc<streamable::Session>>,
    detection: watch::Sender<Detection>,
}

/// Where `auto` stands in finding out which wire the daemon speaks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Detection {
    /// Not known, and nobody is finding out: the next message does.
    Unknown,
    /// A first message is on its way. Others go out as streamable HTTP meanwhile; those
    /// answered as if the daemon spoke legacy SSE wait for the outcome and are sent again.
    Probing,
    /// `Upstream::mode` is set.
    Decided,
}

impl Upstream {
    /// Messages from the daemon are sent to `out`. Nothing connects until the first message.
    pub fn new(
        options: Options,
        out: mpsc::Sender<Bytes>,
        shutdown: CancellationToken,
        hooks: Hooks,
    ) -> Result<Arc<Upstream>, reqwest::Error> {
        let http = http::client(&options.url)?;
        let lean = http::Lean::new(&options.url);
        let transport = options.transport;
        let recovers = options.reconnect_timeout.is_some();
        let shared = Arc::new(Shared {
            http,
            lean,
            options,
            out,
            pending: Mutex::new(HashMap::new()),
            idle: Notify::new(),
            shutdown,
            session: Mutex::new(ClientSession::default()),
            established: AtomicBool::new(false),
            internal: Mutex::new(HashMap::new()),
            internal_count: AtomicUsize::new(0),
            server_requests: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            recovery: Mutex::new(recovery::State::default()),
            wake_recovery: Notify::new(),
            hooks,
            requests_in_flight: Semaphore::new(http::slots().requests),
            tool_headers: tool_headers::ToolHeaders::default(),
            others_in_flight: Semaphore::new(http::slots().others),
        });
        let mode = match transport.wire() {
            TransportKind::StreamableHttp | TransportKind::Stdio => OnceCell::new_with(Some(
                Mode::Streamable(streamable::Session::new(shared.clone())),
            )),
            TransportKind::Sse => {
                let url = shared.options.url.clone();
                OnceCell::new_with(Some(Mode::Legacy(legacy::Session::new(
                    shared.clone(),
                    url,
                ))))
            }
            TransportKind::Auto => OnceCell::new(),
        };
        let (probe, detection) = if mode.initialized() {
            (None, Detection::Decided)
        } else {
            (
                Some(streamable::Session::new(shared.clone())),
                Detection::Unknown,
            )
        };
        let upstream = Arc::new(Upstream {
            shared,
            mode,
            probe,
            detection: watch::Sender::new(detection),
        });
        if recovers {
            tokio::spawn(recovery::run(
                Arc::downgrade(&upstream),
                upstream.shared.clone(),
            ));
        }
        Ok(upstream)
    }

    /// Sends one message from the client. Returns once it is on its way; `initialize` and
    /// `notifications/initialized` are awaited, so the session exists before anything else.
    /// While the daemon is being recovered, messages wait in a bounded queue.
    pub async fn send(self: &Arc<Self>, message: Message) {
        if message.kind() == Kind::Request {
            if let Some(refusal) = self.shared.admit(&message) {
                // Fails only when the client side is gone; then nobody is left to tell.
                let _ = self.shared.out.send(refusal.bytes().clone()).await;
                return;
            }
        }
        match (message.kind(), message.method()) {
            (Kind::Response, _) if !self.shared.answers_current_session(&message) => return,
            (Kind::Request, Some(method::INITIALIZE)) => {
                let mut session = Shared::lock(&self.shared.session);
                *session = ClientSession {
                    initialize: Some(message.clone()),
                    ..ClientSession::default()
                };
                self.shared.established.store(false, Ordering::Release);
            }
            (Kind::Notification, Some(method::INITIALIZED)) => {
                Shared::lock(&self.shared.session).initialized = Some(message.clone());
            }
            _ => {}
        }
        match self.shared.queue_if_recovering(message) {
            recovery::Queued::No(message) => self.dispatch(message).await,
            recovery::Queued::Yes => {}
            recovery::Queued::Refused(message, why) => {
                self.shared.report(&message, &Failure::Recovery(why)).await;
            }
        }
    }

    /// Sends a tracked message on its way.
    async fn dispatch(self: &Arc<Self>, message: Message) {
        let Some(mode) = self.mode.get() else {
            return self.dispatch_undecided(message).await;
        };
        if message.method() == Some(method::CANCELLED) {
            if let Mode::Streamable(session) = mode {
                if session.cancel_by_closing(&message) {
                    return;
                }
            }
        }
        if is_inline(&message) {
            return mode.send(message).await;
        }
        let id = message.id().filter(|_| message.is_request()).cloned();
        let mode = mode.clone();
        let task = tokio::spawn(async move { mode.send(message).await }).abort_handle();
        if let Some(id) = id {
            self.shared.set_task(&id, task);
        }
    }

    /// `auto`, before the wire is known. The first message finds out (POST; on 400/404/405
    /// without a JSON-RPC answer, try legacy SSE at the same URL); the wire is decided by the
    /// status of its answer, not by its end, so a long or never-ending first request (a slow
    /// `tools/call`, `subscriptions/listen`) holds nothing back. Messages that come meanwhile
    /// go out at once as streamable HTTP too: a streamable daemon answers them as usual, and a
    /// legacy one refuses them before reading them, so they are sent again once it is known.
    async fn dispatch_undecided(self: &Arc<Self>, message: Message) {
        let Some(session) = self.probe.clone() else {
            return; // a transport given explicitly always has its mode
        };
        if message.method() == Some(method::CANCELLED) && session.cancel_by_closing(&message) {
            return;
        }
        let first = self.detection.send_if_modified(|state| {
            let unknown = *state == Detection::Unknown;
            if unknown {
                *state = Detection::Probing;
            }
            unknown
        });
        if is_inline(&message) {
            return self.probe_send(session, message, first).await;
        }
        let id = message.id().filter(|_| message.is_request()).cloned();
        let upstream = self.clone();
        let task = tokio::spawn(async move { upstream.probe_send(session, message, first).await })
            .abort_handle();
        if let Some(id) = id {
            self.shared.set_task(&id, task);
        }
    }

    /// Sends `message` as streamable HTTP while the wire is not known; `first` when its
    /// answer decides the wire.
    async fn probe_send(
        self: &Arc<Self>,
        session: Arc<streamable::Session>,
        message: Message,
        first: bool,
    ) {
        let _slot = self.shared.slot(&message).await;
        match session.probe(&message).await {
            streamable::Probed::Streamable(response, with_session) => {
                self.decide(Mode::Streamable(session.clone()));
                session.handle(&message, response, with_session).await;
            }
            streamable::Probed::Answered => self.decide(Mode::Streamable(session.clone())),
            streamable::Probed::Failed(failure) => {
                if first {
                    self.undecided();
                }
                self.shared.report(&message, &failure).await;
            }
            streamable::Probed::NotStreamable(failure) if first => {
                if self.mode.get().is_none() {
                    let url = self.shared.options.url.clone();
                    let legacy = legacy::Session::new(self.shared.clone(), url);
                    match legacy.connect().await {
                        Ok(()) => {
                            debug!("{} speaks legacy HTTP+SSE", self.shared.options.label);
                            self.decide(Mode::Legacy(legacy));
                        }
                        Err(legacy_failure) => {
                            debug!(?legacy_failure, "legacy SSE fallback failed too");
                            self.undecided();
                        }
                    }
                }
                self.resend_refused(message, &failure).await;
            }
            streamable::Probed::NotStreamable(failure) => {
                let mut detection = self.detection.subscribe();
                // Cancel-safe: waiting on a watch channel loses nothing.
                let known = tokio::select! {
                    known = detection.wait_for(|state| *state != Detection::Probing) => known.is_ok(),
                    () = self.shared.shutdown.cancelled() => false,
                };
                if known {
                    self.resend_refused(message, &failure).await;
                }
            }
        }
    }

    /// A message the daemon refused as a streamable one: sent again as legacy SSE when the
    /// daemon turned out to speak that, else reported with the refusal.
    async fn resend_refused(&self, message: Message, failure: &Failure) {
        match self.mode.get() {
            Some(Mode::Legacy(legacy)) => legacy.send(message).await,
            _ => self.shared.report(&message, failure).await,
        }
    }

    fn decide(&self, mode: Mode) {
        if self.mode.set(mode).is_ok() {
            let wire = match self.mode.get() {
                Some(Mode::Legacy(_)) => "legacy HTTP+SSE",
                _ => "streamable HTTP",
            };
            debug!("{} speaks {wire}", self.shared.options.label);
        }
        self.detection.send_replace(Detection::Decided);
    }

    /// The first message did not tell: the next one tries again.
    fn undecided(&self) {
        if self.mode.get().is_none() {
            self.detection.send_replace(Detection::Unknown);
        }
    }

    /// Waits until no request is pending (an open `subscriptions/listen` aside: it never
    /// ends by itself), or `limit` passes.
    pub async fn wait_idle(&self, limit: Duration) {
        let wait = async {
            loop {
                let notified = self.shared.idle.notified();
                if self.shared.finishing_count() == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
    }

    /// Ends the session: stops the streams and, for streamable HTTP, sends a DELETE that may
    /// take at most `limit`.
    pub async fn close(&self, limit: Duration) {
        self.shared.shutdown.cancel();
        if let Some(Mode::Streamable(session)) = self.mode.get() {
            let _ = tokio::time::timeout(limit, session.delete()).await;
        }
    }
}
