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
//! - messages are forwarded byte for byte, whatever they contain.

pub mod http;
mod legacy;
pub mod sse;
pub mod stdio;
mod streamable;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderMap;
use tokio::sync::{mpsc, Notify, OnceCell};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use url::Url;

use crate::config::TransportKind;
use crate::jsonrpc::{method, Id, Kind, Message, UPSTREAM_ERROR};

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
}

struct Pending {
    method: Box<str>,
    task: Option<AbortHandle>,
}

/// State shared by the transport tasks of one session.
pub(crate) struct Shared {
    pub http: reqwest::Client,
    pub options: Options,
    out: mpsc::Sender<Bytes>,
    pending: Mutex<HashMap<Id, Pending>>,
    idle: Notify,
    pub shutdown: CancellationToken,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, HashMap<Id, Pending>> {
        // A panic while holding this lock cannot leave the map inconsistent; keep going.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn track(&self, message: &Message) {
        if let (Kind::Request, Some(id)) = (message.kind(), message.id()) {
            let method = message.method().unwrap_or_default().into();
            self.pending()
                .insert(id.clone(), Pending { method, task: None });
        }
    }

    pub fn is_pending(&self, id: &Id) -> bool {
        self.pending().contains_key(id)
    }

    fn pending_count(&self) -> usize {
        self.pending().len()
    }

    /// Hands a message from the daemon to the client. A response is forwarded only while its
    /// request is pending, so the client never sees two answers to one request.
    pub async fn deliver(&self, message: Message) {
        if message.kind() == Kind::Response {
            if let Some(id) = message.id() {
                let known = self.pending().remove(id).is_some();
                if !known {
                    debug!(%id, "dropping a response to no pending request");
                    return;
                }
                self.idle.notify_waiters();
            }
        }
        // Fails only when the client side is gone; then nobody is left to tell.
        let _ = self.out.send(message.bytes().clone()).await;
    }

    /// Answers request `id` with an error, unless it was answered already.
    pub async fn fail(&self, id: &Id, failure: &Failure) {
        let Some(pending) = self.pending().remove(id) else {
            return;
        };
        self.idle.notify_waiters();
        let error = self.error_message(id, &pending.method, failure);
        let _ = self.out.send(error.bytes().clone()).await;
    }

    /// Answers every pending request with an error.
    pub async fn fail_all(&self, failure: &Failure) {
        let drained: Vec<(Id, Pending)> = self.pending().drain().collect();
        self.idle.notify_waiters();
        for (id, pending) in drained {
            if let Some(task) = pending.task {
                task.abort();
            }
            let error = self.error_message(&id, &pending.method, failure);
            let _ = self.out.send(error.bytes().clone()).await;
        }
    }

    /// Reports a failure for `message`: an error response for a request, a log line otherwise.
    pub async fn report(&self, message: &Message, failure: &Failure) {
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

#[derive(Clone)]
enum Mode {
    Streamable(Arc<streamable::Session>),
    Legacy(Arc<legacy::Session>),
}

impl Mode {
    async fn send(&self, message: Message) {
        match self {
            Mode::Streamable(session) => session.send(message).await,
            Mode::Legacy(session) => session.send(message).await,
        }
    }
}

/// A client session with one daemon.
pub struct Upstream {
    shared: Arc<Shared>,
    mode: OnceCell<Mode>,
    detecting: tokio::sync::Mutex<()>,
}

impl Upstream {
    /// Messages from the daemon are sent to `out`. Nothing connects until the first message.
    pub fn new(
        options: Options,
        out: mpsc::Sender<Bytes>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Upstream>, reqwest::Error> {
        let http = http::client(&options.url)?;
        let transport = options.transport;
        let shared = Arc::new(Shared {
            http,
            options,
            out,
            pending: Mutex::new(HashMap::new()),
            idle: Notify::new(),
            shutdown,
        });
        let mode = match transport {
            TransportKind::StreamableHttp => OnceCell::new_with(Some(Mode::Streamable(
                streamable::Session::new(shared.clone()),
            ))),
            TransportKind::Sse => {
                let url = shared.options.url.clone();
                OnceCell::new_with(Some(Mode::Legacy(legacy::Session::new(
                    shared.clone(),
                    url,
                ))))
            }
            TransportKind::Auto => OnceCell::new(),
        };
        Ok(Arc::new(Upstream {
            shared,
            mode,
            detecting: tokio::sync::Mutex::new(()),
        }))
    }

    /// Sends one message from the client. Returns once it is on its way; `initialize` and
    /// `notifications/initialized` are awaited, so the session exists before anything else.
    pub async fn send(self: &Arc<Self>, message: Message) {
        self.shared.track(&message);
        let mode = match self.mode.get() {
            Some(mode) => mode,
            None => {
                let _guard = self.detecting.lock().await;
                match self.mode.get() {
                    Some(mode) => mode,
                    None => return self.detect_and_send(message).await,
                }
            }
        };
        if message.method() == Some(method::CANCELLED) {
            if let Mode::Streamable(session) = mode {
                if session.cancel_by_closing(&message) {
                    return;
                }
            }
        }
        let inline = matches!(
            message.method(),
            Some(method::INITIALIZE | method::INITIALIZED)
        );
        if inline {
            return mode.send(message).await;
        }
        let id = message.id().filter(|_| message.is_request()).cloned();
        let mode = mode.clone();
        let task = tokio::spawn(async move { mode.send(message).await }).abort_handle();
        if let Some(id) = id {
            self.shared.set_task(&id, task);
        }
    }

    /// `auto`: POST the first message; on 400/404/405 without a JSON-RPC answer, try the
    /// legacy SSE transport at the same URL.
    async fn detect_and_send(&self, message: Message) {
        let streamable = streamable::Session::new(self.shared.clone());
        match streamable.detect(&message).await {
            streamable::Detected::Streamable => {
                let _ = self.mode.set(Mode::Streamable(streamable));
            }
            streamable::Detected::Undecided => {}
            streamable::Detected::NotStreamable(failure) => {
                let legacy =
                    legacy::Session::new(self.shared.clone(), self.shared.options.url.clone());
                match legacy.connect().await {
                    Ok(()) => {
                        debug!("{} speaks legacy HTTP+SSE", self.shared.options.label);
                        let _ = self.mode.set(Mode::Legacy(legacy.clone()));
                        legacy.send(message).await;
                    }
                    Err(legacy_failure) => {
                        debug!(?legacy_failure, "legacy SSE fallback failed too");
                        self.shared.report(&message, &failure).await;
                    }
                }
            }
        }
    }

    /// Waits until no request is pending, or `limit` passes.
    pub async fn wait_idle(&self, limit: Duration) {
        let wait = async {
            loop {
                let notified = self.shared.idle.notified();
                if self.shared.pending_count() == 0 {
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
