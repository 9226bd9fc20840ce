//! Streamable HTTP client (MCP 2025-03-26 and later, including sessionless 2026-07-28).
//!
//! Every message is its own POST, sent concurrently. A request's answer comes back as one JSON
//! object or as an SSE stream that may carry server→client requests and notifications before
//! the response. If that stream ends early and the server gave event ids, the client waits
//! `retry` and resumes with GET + `Last-Event-ID`; the response is routed by id whichever
//! stream brings it. After `notifications/initialized` a standalone GET stream carries
//! server-initiated messages (405 = not offered, 409 = already open). `Mcp-Session-Id` and
//! `MCP-Protocol-Version` go on every request after initialize; DELETE ends the session.
//! Every request of a 2026-07-28 connection — its `_meta` names that version, or the session
//! negotiated it through `initialize` — gets `Mcp-Method`/`Mcp-Name` headers, and its
//! cancellation closes the request's stream.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use reqwest::header::{HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use tracing::{debug, warn};

use super::http::{self, any_cause, cause, EventStream, SendError, StreamError};
use super::{Failure, Shared};
use crate::jsonrpc::{method, Id, Kind, Message};

const SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
const PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
const MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
const MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");
/// The first revision whose requests carry `Mcp-Method`/`Mcp-Name` (and have no session).
/// Revisions are dates, so a later one compares greater as text.
const FIRST_SESSIONLESS_VERSION: &[u8] = b"2026-07-28";

/// `Mcp-Method` and, for the methods that name something, `Mcp-Name`.
type RequestNames = (HeaderValue, Option<HeaderValue>);

/// Whether revision `version` is 2026-07-28 or later.
fn is_modern(version: &[u8]) -> bool {
    version >= FIRST_SESSIONLESS_VERSION
}

/// Wait before resuming a stream when the server named no `retry`.
const DEFAULT_RETRY: Duration = Duration::from_secs(1);
/// Resumptions in a row that bring nothing before a request is given up.
const MAX_FRUITLESS_RESUMES: u32 = 3;
/// Failures in a row before the standalone GET stream is given up.
const MAX_GET_FAILURES: u32 = 8;
/// Bound on error bodies read for messages.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

pub struct Session {
    shared: Arc<Shared>,
    session_id: RwLock<Option<HeaderValue>>,
    protocol_version: RwLock<Option<HeaderValue>>,
    initialize_id: Mutex<Option<Id>>,
    get_stream_started: AtomicBool,
    /// Bumped by [`Session::reset`]: a GET stream of an older daemon session stops.
    epoch: AtomicU64,
    /// The client speaks 2026-07-28 (sessionless) MCP.
    modern: AtomicBool,
}

/// What the answer to a message POSTed before the wire is known says about the daemon.
pub enum Probed {
    /// A status other than 400/404/405: streamable HTTP. The body is still to be read
    /// ([`Session::handle`]), which may take as long as the request runs. With it: whether
    /// the request went with a daemon session id.
    Streamable(reqwest::Response, bool),
    /// 400/404/405 with a JSON-RPC answer: streamable HTTP; the answer was handled.
    Answered,
    /// 400/404/405 without a JSON-RPC answer: perhaps legacy SSE; nothing was reported.
    NotStreamable(Failure),
    /// No answer at all (e.g. connection refused); nothing was reported.
    Failed(Failure),
}

enum Pumped {
    /// The response to the awaited request came.
    Answered,
    /// The stream ended (cleanly or not); `delivered` messages came through it.
    Ended {
        delivered: usize,
        error: Option<StreamError>,
    },
    Cancelled,
}

impl Session {
    pub fn new(shared: Arc<Shared>) -> Arc<Session> {
        Arc::new(Session {
            shared,
            session_id: RwLock::new(None),
            protocol_version: RwLock::new(None),
            initialize_id: Mutex::new(None),
            get_stream_started: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            modern: AtomicBool::new(false),
        })
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Forgets the daemon session: the next `initialize` starts a new one, with a new GET
    /// stream.
    pub fn reset(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        *self.session_id.write().unwrap_or_else(|e| e.into_inner()) = None;
        *self
            .protocol_version
            .write()
            .unwrap_or_else(|e| e.into_inner()) = None;
        self.get_stream_started.store(false, Ordering::Release);
    }

    fn session_id(&self) -> Option<HeaderValue> {
        self.session_id
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn negotiated(&self) -> Option<HeaderValue> {
        self.protocol_version
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A request with the session's headers: the session id and the negotiated version.
    fn request(&self, method: Method) -> reqwest::RequestBuilder {
        self.request_as(method, self.negotiated(), self.session_id())
    }

    /// Like [`Session::request`], with `version` as `MCP-Protocol-Version` and `session` as
    /// `Mcp-Session-Id`.
    fn request_as(
        &self,
        method: Method,
        version: Option<HeaderValue>,
        session: Option<HeaderValue>,
    ) -> reqwest::RequestBuilder {
        let mut request = self
            .shared
            .http
            .request(method, self.shared.options.url.clone())
            .headers(self.shared.options.headers.clone());
        if let Some(id) = session {
            request = request.header(SESSION_ID, id);
        }
        if let Some(version) = version {
            request = request.header(PROTOCOL_VERSION, version);
        }
        request
    }

    /// POSTs `message`; says too whether it went with a daemon session id (read once, so a
    /// recovery resetting the session meanwhile cannot make a lost session look like none).
    async fn post(&self, message: &Message) -> (Result<reqwest::Response, SendError>, bool) {
        let is_initialize = message.is_request() && message.method() == Some(method::INITIALIZE);
        if is_initialize {
            *self.initialize_id.lock().unwrap_or_else(|e| e.into_inner()) = message.id().cloned();
            // A new session: whatever was negotiated before does not apply.
            *self.session_id.write().unwrap_or_else(|e| e.into_inner()) = None;
            *self
                .protocol_version
                .write()
                .unwrap_or_else(|e| e.into_inner()) = None;
        }
        let session = self.session_id();
        let negotiated = self.negotiated();
        let (version, metadata) = self.request_metadata(message, is_initialize, negotiated);
        // Only a 2026-07-28 connection names its calls; only then are arguments mirrored.
        let params = match &metadata {
            Some((_, Some(_))) if message.method() == Some(method::TOOLS_CALL) => {
                serde_json::from_slice::<serde_json::Value>(message.bytes())
                    .map(|v| self.shared.tool_headers.headers_for(&v["params"]))
                    .unwrap_or_default()
            }
            _ => Vec::new(),
        };
        let sent = self
            .shared
            .send_authorized(|| {
                let mut request = self
                    .request_as(Method::POST, version.clone(), session.clone())
                    .header(CONTENT_TYPE, http::JSON)
                    .header(ACCEPT, http::ACCEPT_BOTH);
                if let Some((method, name)) = &metadata {
                    request = request.header(MCP_METHOD, method.clone());
                    if let Some(name) = name {
                        request = request.header(MCP_NAME, name.clone());
                    }
                }
                for (name, value) in &params {
                    request = request.header(name.clone(), value.clone());
                }
                request.body(message.bytes().clone())
            })
            .await;
        (sent, session.is_some())
    }

    /// The `MCP-Protocol-Version` a POST of `message` carries, its `Mcp-Method` and, when it
    /// belongs to a 2026-07-28 (or later) connection, its `Mcp-Name`.
    ///
    /// `Mcp-Method` goes on every request and notification, whatever the revision: the first
    /// POST of a connection (its `initialize`) cannot know the revision the server will pick,
    /// 2026-07-28 wants the header on all of them, and earlier servers ignore it. `Mcp-Name`
    /// needs a look into `params`, so it is added only when the message belongs to a 2026-07-28
    /// connection: its `_meta` names such a version (sessionless), the session negotiated one
    /// through `initialize`, or it is an `initialize` asking for one. `MCP-Protocol-Version` is
    /// the message's own `_meta` version when it has one (the two must match), else the
    /// negotiated one; an `initialize` carries none.
    fn request_metadata(
        &self,
        message: &Message,
        is_initialize: bool,
        negotiated: Option<HeaderValue>,
    ) -> (Option<HeaderValue>, Option<RequestNames>) {
        let Some(method) = message.method() else {
            return (negotiated, None); // a response: no method to name
        };
        let method_only = Some((header_value(method), None));
        let negotiated_modern = match &negotiated {
            // A session of an older revision: nothing to look at (the common, hot case).
            Some(version) if !is_modern(version.as_bytes()) => return (negotiated, method_only),
            Some(_) => true,
            None => false,
        };
        let params = message.peek_params();
        let own = params.meta.and_then(|m| m.protocol_version);
        let asked = if is_initialize {
            params.protocol_version
        } else {
            None
        };
        let modern = negotiated_modern
            || own.as_deref().is_some_and(|v| is_modern(v.as_bytes()))
            || asked.as_deref().is_some_and(|v| is_modern(v.as_bytes()));
        let version = match own {
            Some(own) => Some(header_value(&own)),
            None => negotiated,
        };
        if !modern {
            return (version, method_only);
        }
        if message.is_request() {
            self.modern.store(true, Ordering::Relaxed);
            self.shared.tool_headers.enable();
        }
        let name = match method {
            method::TOOLS_CALL | method::PROMPTS_GET => params.name,
            method::RESOURCES_READ => params.uri,
            _ => None,
        };
        (
            version,
            Some((header_value(method), name.map(|n| header_value(&n)))),
        )
    }

    /// 2026-07-28: cancelling a request means closing its stream, not sending a notification.
    pub fn cancel_by_closing(&self, message: &Message) -> bool {
        if !self.modern.load(Ordering::Relaxed) {
            return false;
        }
        match message.peek_params().request_id {
            Some(id) => self.shared.cancel(&Id::from_json(id.get())),
            None => false,
        }
    }

    pub async fn send(self: &Arc<Self>, message: Message) {
        match self.post(&message).await {
            (Ok(response), with_session) => self.handle(&message, response, with_session).await,
            (Err(e), _) => self.shared.report(&message, &failure_of(&e)).await,
        }
    }

    /// `auto` mode: POSTs a message and says what its status tells about the daemon, as soon
    /// as the status is known (never waiting for the end of the body).
    pub async fn probe(&self, message: &Message) -> Probed {
        let (response, with_session) = match self.post(message).await {
            (Ok(response), with_session) => (response, with_session),
            (Err(e), _) => return Probed::Failed(failure_of(&e)),
        };
        let status = response.status();
        if !matches!(status.as_u16(), 400 | 404 | 405) {
            return Probed::Streamable(response, with_session);
        }
        let body = http::read_body(response, ERROR_BODY_LIMIT)
            .await
            .unwrap_or_default();
        if Message::parse_many(body.clone()).is_ok() {
            self.handle_error_status(message, status, &body, with_session)
                .await;
            return Probed::Answered;
        }
        Probed::NotStreamable(Failure::Status {
            status: status.as_u16(),
            body: http::excerpt(&body),
        })
    }

    pub async fn handle(
        self: &Arc<Self>,
        message: &Message,
        response: reqwest::Response,
        with_session: bool,
    ) {
        let status = response.status();
        if !status.is_success() {
            let body = http::read_body(response, ERROR_BODY_LIMIT)
                .await
                .unwrap_or_default();
            return self
                .handle_error_status(message, status, &body, with_session)
                .await;
        }
        if message.method() == Some(method::INITIALIZE) {
            if let Some(id) = response.headers().get(SESSION_ID) {
                *self.session_id.write().unwrap_or_else(|e| e.into_inner()) = Some(id.clone());
            }
        }
        let awaited = message.id().filter(|_| message.is_request());
        if http::is_event_stream(&response) {
            self.read_response_stream(awaited, response).await;
        } else {
            let body = match http::read_body(response, self.shared.options.max_message_bytes).await
            {
                Ok(body) => body,
                Err(http::BodyError::TooLarge { limit }) => {
                    let failure =
                        Failure::TooLarge(format!("the response is larger than {limit} bytes"));
                    return self.shared.report(message, &failure).await;
                }
                Err(http::BodyError::Http(e)) => {
                    let failure =
                        Failure::StreamEnded(format!("the connection broke ({})", cause(&e)));
                    return self.shared.report(message, &failure).await;
                }
            };
            let mut other_ids = Vec::new();
            let mut null_error = None;
            if !body.iter().all(u8::is_ascii_whitespace) {
                match Message::parse_many(body) {
                    Ok(messages) => {
                        for reply in messages {
                            if reply.kind() == Kind::Response && reply.id() != awaited {
                                match reply.id() {
                                    // An error the server could not tie to a request: this
                                    // request's, since it is this request's answer.
                                    Some(id) if id.is_null() && awaited.is_some() => {
                                        null_error = error_of(&reply);
                                        continue;
                                    }
                                    Some(id) => other_ids.push(id.to_string()),
                                    None => {}
                                }
                            }
                            self.receive(reply).await;
                        }
                    }
                    Err(e) => {
                        let failure = Failure::Protocol(format!(
                            "a response body that is not JSON-RPC ({e})"
                        ));
                        return self.shared.report(message, &failure).await;
                    }
                }
            }
            // A request's answer is the body itself (the spec allows nothing else for a
            // JSON answer): a request still waiting now would wait forever.
            if let Some(id) = awaited.filter(|id| self.shared.is_pending(id)) {
                if let Some((code, text)) = null_error {
                    let failure = Failure::Rejected {
                        status: status.as_u16(),
                        code,
                        message: text,
                    };
                    return self.shared.fail(id, &failure).await;
                }
                let what = if other_ids.is_empty() {
                    format!(
                        "it answered the request with HTTP {} and no response in the body",
                        status.as_u16()
                    )
                } else {
                    format!(
                        "it answered the request with a response for another id ({}), not for id {id}",
                        other_ids.join(", ")
                    )
                };
                return self.shared.fail(id, &Failure::Protocol(what)).await;
            }
        }
        if message.method() == Some(method::INITIALIZED) {
            self.start_get_stream();
        }
    }

    /// Answers `message` after an error status. A 404, or a 400 that speaks of the session,
    /// to a message sent in a daemon session means the session is gone: the message is held
    /// for the recovery. So does one to a message that went without a session id because a
    /// recovery had just reset it (the client's session exists, the message is not its
    /// `initialize`).
    async fn handle_error_status(
        &self,
        message: &Message,
        status: StatusCode,
        body: &Bytes,
        with_session: bool,
    ) {
        let mentions_session = String::from_utf8_lossy(body)
            .to_ascii_lowercase()
            .contains("session");
        let between_sessions = !with_session
            && message.method() != Some(method::INITIALIZE)
            && self.shared.established.load(Ordering::Acquire);
        if (with_session || between_sessions)
            && (status == StatusCode::NOT_FOUND
                || (status == StatusCode::BAD_REQUEST && mentions_session))
        {
            let failure = Failure::SessionLost {
                status: status.as_u16(),
            };
            return self.shared.report(message, &failure).await;
        }
        if let Ok(replies) = Message::parse_many(body.clone()) {
            for reply in replies {
                if reply.kind() == Kind::Response
                    && reply.id().is_some()
                    && reply.id() == message.id()
                {
                    return self.receive(reply).await;
                }
                if let Some((code, text)) = error_of(&reply) {
                    let failure = Failure::Rejected {
                        status: status.as_u16(),
                        code,
                        message: text,
                    };
                    return self.shared.report(message, &failure).await;
                }
            }
        }
        let failure = Failure::Status {
            status: status.as_u16(),
            body: http::excerpt(body),
        };
        self.shared.report(message, &failure).await;
    }

    /// Reads a request's SSE answer, resuming with GET + `Last-Event-ID` when it ends early.
    async fn read_response_stream(&self, awaited: Option<&Id>, response: reqwest::Response) {
        // Resuming only makes sense in the daemon session the request was sent in.
        let epoch = self.epoch.load(Ordering::Acquire);
        let max = self.shared.options.max_message_bytes;
        let mut stream = EventStream::new(response, max);
        let mut last_event_id: Option<String> = None;
        let mut retry = DEFAULT_RETRY;
        let mut fruitless = 0;
        loop {
            let pumped = self.pump(&mut stream, awaited).await;
            if let Some(id) = stream.last_event_id() {
                last_event_id = Some(id.to_owned());
            }
            retry = stream.retry().unwrap_or(retry);
            let (delivered, error) = match pumped {
                Pumped::Answered | Pumped::Cancelled => return,
                Pumped::Ended { delivered, error } => (delivered, error),
            };
            let Some(id) = awaited else { return };
            if !self.shared.is_pending(id) {
                return; // answered on another stream
            }
            if let Some(StreamError::TooLarge(e)) = &error {
                return self
                    .shared
                    .fail(id, &Failure::TooLarge(e.to_string()))
                    .await;
            }
            let how = match &error {
                Some(e) => format!("the response stream broke ({e})"),
                None => "the daemon closed the response stream".to_owned(),
            };
            fruitless = if delivered > 0 { 0 } else { fruitless + 1 };
            let Some(resume_from) = last_event_id.clone() else {
                return self.shared.fail(id, &Failure::StreamEnded(how)).await;
            };
            if fruitless > MAX_FRUITLESS_RESUMES {
                let why = format!("{how}, and {MAX_FRUITLESS_RESUMES} resumptions brought nothing");
                return self.shared.fail(id, &Failure::StreamEnded(why)).await;
            }
            tokio::select! {
                () = tokio::time::sleep(retry) => {}
                () = self.shared.shutdown.cancelled() => return,
            }
            if self.epoch.load(Ordering::Acquire) != epoch {
                let why = format!("{how}, and the daemon session it belonged to is gone");
                return self.shared.fail(id, &Failure::StreamEnded(why)).await;
            }
            debug!(%id, last_event_id = %resume_from, "resuming the response stream");
            let resumed = self
                .shared
                .send_authorized(|| {
                    self.request(Method::GET)
                        .header(ACCEPT, http::ACCEPT_SSE)
                        .header(LAST_EVENT_ID, header_value(&resume_from))
                })
                .await;
            stream = match resumed {
                Ok(r) if r.status().is_success() && http::is_event_stream(&r) => {
                    EventStream::new(r, max)
                }
                Ok(r) => {
                    let why = format!(
                        "{how}, and resuming it with GET Last-Event-ID was answered HTTP {}",
                        r.status().as_u16()
                    );
                    return self.shared.fail(id, &Failure::StreamEnded(why)).await;
                }
                Err(e) => {
                    let why = format!("{how}, and resuming it failed ({})", e.cause());
                    return self.shared.fail(id, &Failure::StreamEnded(why)).await;
                }
            };
        }
    }

    /// Forwards the messages of one stream until it ends or brings the awaited response.
    async fn pump(&self, stream: &mut EventStream, awaited: Option<&Id>) -> Pumped {
        let mut delivered = 0;
        loop {
            // Cancel-safe: EventStream::next keeps undelivered events in its queue.
            let next = tokio::select! {
                next = stream.next() => next,
                () = self.shared.shutdown.cancelled() => return Pumped::Cancelled,
            };
            let event = match next {
                Ok(Some(event)) => event,
                Ok(None) => {
                    return Pumped::Ended {
                        delivered,
                        error: None,
                    }
                }
                Err(e) => {
                    return Pumped::Ended {
                        delivered,
                        error: Some(e),
                    }
                }
            };
            if !event.is_message() {
                debug!(event = ?event.event, "ignoring an SSE event that is not a message");
                continue;
            }
            match Message::parse_many(event.data) {
                Ok(messages) => {
                    for message in messages {
                        let answered = message.kind() == Kind::Response
                            && awaited.is_some()
                            && message.id() == awaited;
                        self.receive(message).await;
                        delivered += 1;
                        if answered {
                            return Pumped::Answered;
                        }
                    }
                }
                Err(e) => warn!(
                    "{} sent an SSE event that is not a JSON-RPC message ({e}); skipped it",
                    self.shared.options.label
                ),
            }
        }
    }

    /// Notes what the session needs from a message, then hands it to the client.
    async fn receive(&self, message: Message) {
        if message.kind() == Kind::Response {
            let is_initialize = {
                let initialize_id = self.initialize_id.lock().unwrap_or_else(|e| e.into_inner());
                initialize_id.is_some() && initialize_id.as_ref() == message.id()
            };
            if is_initialize {
                if let Some(version) = message.initialize_protocol_version() {
                    *self
                        .protocol_version
                        .write()
                        .unwrap_or_else(|e| e.into_inner()) = HeaderValue::from_str(&version).ok();
                }
            }
        }
        self.shared.deliver(message).await;
    }

    fn start_get_stream(self: &Arc<Self>) {
        if self.get_stream_started.swap(true, Ordering::Relaxed) {
            return;
        }
        let session = self.clone();
        tokio::spawn(async move { session.run_get_stream().await });
    }

    /// The standalone GET stream for server-initiated messages, reconnected while it works.
    async fn run_get_stream(&self) {
        let epoch = self.epoch.load(Ordering::Acquire);
        let max = self.shared.options.max_message_bytes;
        let mut last_event_id: Option<String> = None;
        let mut retry = DEFAULT_RETRY;
        let mut failures = 0u32;
        let mut broken = false;
        loop {
            if self.epoch.load(Ordering::Acquire) != epoch {
                return; // a newer daemon session has its own stream
            }
            let send = self.shared.send_authorized(|| {
                let mut request = self.request(Method::GET).header(ACCEPT, http::ACCEPT_SSE);
                if let Some(id) = &last_event_id {
                    request = request.header(LAST_EVENT_ID, header_value(id));
                }
                request
            });
            // Cancel-safe: dropping the send drops its connection; nothing was delivered yet.
            let response = tokio::select! {
                r = send => r,
                () = self.shared.shutdown.cancelled() => return,
            };
            match response {
                Ok(r) if r.status() == StatusCode::METHOD_NOT_ALLOWED => {
                    debug!("{} offers no GET stream (405)", self.shared.options.label);
                    return;
                }
                Ok(r) if r.status() == StatusCode::CONFLICT => {
                    debug!(
                        "{} already has a GET stream for this session (409)",
                        self.shared.options.label
                    );
                    return;
                }
                Ok(r) if r.status().is_success() && http::is_event_stream(&r) => {
                    let mut stream = EventStream::new(r, max);
                    match self.pump(&mut stream, None).await {
                        Pumped::Cancelled => return,
                        Pumped::Answered => {}
                        Pumped::Ended { delivered, error } => {
                            failures = if delivered > 0 { 0 } else { failures + 1 };
                            if let Some(e) = error {
                                // Broken, not closed: the daemon may have died. Look at once,
                                // so a dead daemon is noticed before the next request is sent
                                // on a connection that no longer leads anywhere.
                                debug!("GET stream broke: {e}");
                                broken = true;
                            }
                        }
                    }
                    if let Some(id) = stream.last_event_id() {
                        last_event_id = Some(id.to_owned());
                    }
                    retry = stream.retry().unwrap_or(retry);
                }
                Ok(r) => {
                    debug!("GET stream refused: HTTP {}", r.status());
                    if matches!(r.status().as_u16(), 400 | 404) && self.session_id().is_some() {
                        // The daemon forgot the session: it restarted.
                        self.shared.trigger_recovery();
                        return;
                    }
                    failures += 1;
                }
                Err(e) if e.is_connect() && local_resource(&e).is_none() => {
                    // The daemon is gone: get it back now rather than at the next request.
                    debug!("GET stream failed: {}", e.cause());
                    self.shared.trigger_recovery();
                    return;
                }
                Err(e) => {
                    debug!("GET stream failed: {}", e.cause());
                    failures += 1;
                }
            }
            if failures >= MAX_GET_FAILURES {
                warn!(
                    "giving up on the GET stream of {} after {failures} failures; server-initiated notifications may be missed",
                    self.shared.options.label
                );
                return;
            }
            let delay = if std::mem::take(&mut broken) {
                Duration::ZERO
            } else if failures == 0 {
                retry
            } else {
                retry.max(Duration::from_millis(250 << failures.min(7)))
            };
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.shared.shutdown.cancelled() => return,
            }
        }
    }

    /// Ends the session on the daemon (best effort).
    pub async fn delete(&self) {
        if self.session_id().is_none() {
            return;
        }
        match self
            .shared
            .send_authorized(|| self.request(Method::DELETE))
            .await
        {
            Ok(r) => debug!("DELETE session: HTTP {}", r.status()),
            Err(e) => debug!("DELETE session failed: {}", e.cause()),
        }
    }
}

/// A header value as is when it is visible ASCII, else in the `=?base64?…?=` form.
fn header_value(text: &str) -> HeaderValue {
    if text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        if let Ok(value) = HeaderValue::from_str(text) {
            return value;
        }
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(text);
    HeaderValue::from_str(&format!("=?base64?{encoded}?=")).unwrap_or(HeaderValue::from_static(""))
}

fn error_of(reply: &Message) -> Option<(i64, String)> {
    #[derive(Deserialize)]
    struct Outer {
        error: Inner,
    }
    #[derive(Deserialize)]
    struct Inner {
        code: i64,
        message: String,
    }
    let outer: Outer = serde_json::from_slice(reply.bytes()).ok()?;
    Some((outer.error.code, outer.error.message))
}

/// What a failed send means for the request. A refused connection never reached the daemon.
/// Nor did a request answered with a TCP reset before any response: a reset is what the kernel
/// sends when data arrives for a socket whose process is gone (a daemon killed while this
/// request went out on a kept-alive connection), whereas a server that read the request and
/// then died closes the connection normally, and that request may have run.
pub(crate) fn failure_of(error: &SendError) -> Failure {
    if let Some(cause) = local_resource(error) {
        // The daemon may be perfectly well: never start a recovery for this.
        Failure::LocalResource(cause)
    } else if is_tls(error) {
        // Waiting will not make a certificate trusted: no recovery for this one.
        Failure::Tls(error.cause())
    } else if error.is_connect() || was_reset(error) {
        Failure::Unreachable(error.cause())
    } else {
        Failure::StreamEnded(format!("the connection broke ({})", error.cause()))
    }
}

/// The cause, when the error is this process running out of something (file descriptors,
/// memory, local ports) rather than anything the daemon did.
pub(crate) fn local_resource(error: &SendError) -> Option<String> {
    let exhausted = any_cause(error.error(), |e| {
        e.downcast_ref::<std::io::Error>().is_some_and(|io| {
            crate::platform::is_out_of_descriptors(io)
                || matches!(
                    io.kind(),
                    std::io::ErrorKind::OutOfMemory | std::io::ErrorKind::AddrNotAvailable
                )
        })
    });
    exhausted.then(|| error.cause())
}

fn is_tls(error: &SendError) -> bool {
    any_cause(error.error(), |e| e.is::<rustls::Error>())
}

fn was_reset(error: &SendError) -> bool {
    any_cause(error.error(), |e| {
        e.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// Reads one request (head and a `Content-Length` body) from `stream`.
    async fn read_request(stream: &mut TcpStream) -> String {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "the client closed before sending a whole request");
            seen.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&seen).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if seen.len() >= end + 4 + length {
                    return text;
                }
            }
        }
    }

    fn post(client: &reqwest::Client, url: &url::Url) -> reqwest::Request {
        client
            .post(url.clone())
            .header(CONTENT_TYPE, http::JSON)
            .header(ACCEPT, http::ACCEPT_BOTH)
            .header(SESSION_ID, "session-1")
            .header(PROTOCOL_VERSION, "2025-06-18")
            .header("x-custom", "custom value")
            .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
            .build()
            .expect("request")
    }

    /// The same request sent by reqwest and by the lean client, as `failure_of` sees it.
    async fn failures(url: &url::Url) -> (String, String) {
        let client = http::client(url).expect("client");
        let lean = http::Lean::new(url).expect("a loopback http URL gets the lean client");
        let by_reqwest = client
            .execute(post(&client, url))
            .await
            .map(|_| ())
            .expect_err("reqwest got an answer");
        let by_lean = lean
            .execute(post(&client, url))
            .await
            .map(|_| ())
            .expect_err("the lean client got an answer");
        (
            format!("{:?}", failure_of(&SendError::Reqwest(by_reqwest))),
            format!("{:?}", failure_of(&SendError::Lean(by_lean))),
        )
    }

    #[tokio::test]
    async fn lean_refused_connection_fails_as_with_reqwest() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let url = url::Url::parse(&format!("http://127.0.0.1:{port}/mcp")).expect("url");
        let (by_reqwest, by_lean) = failures(&url).await;
        assert!(by_reqwest.starts_with("Unreachable("), "{by_reqwest}");
        assert_eq!(by_lean, by_reqwest);
    }

    #[tokio::test]
    async fn lean_reset_connection_fails_as_with_reqwest() {
        // A daemon killed while a request comes in: the kernel answers with a reset.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let (mut stream, _) = listener.accept().await.expect("accept");
                read_request(&mut stream).await;
                stream.set_zero_linger().expect("linger");
                drop(stream);
            }
        });
        let url = url::Url::parse(&format!("http://127.0.0.1:{port}/mcp")).expect("url");
        let (by_reqwest, by_lean) = failures(&url).await;
        // Wine (where CI runs the Windows tests) closes a zero-linger socket gracefully
        // instead of resetting it: the failure is then a stream that ended early.
        let expected: &[&str] = if cfg!(windows) {
            &["Unreachable(", "StreamEnded("]
        } else {
            &["Unreachable("]
        };
        assert!(
            expected.iter().any(|kind| by_reqwest.starts_with(kind)),
            "{by_reqwest}"
        );
        assert_eq!(by_lean, by_reqwest);
        server.await.expect("server");
    }

    #[tokio::test]
    async fn lean_request_carries_the_session_headers_and_body() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let request = read_request(&mut stream).await;
            let answer = r#"{"jsonrpc":"2.0","id":1,"result":{}}"#;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nmcp-session-id: s\r\ncontent-length: {}\r\n\r\n",
                answer.len()
            );
            stream.write_all(head.as_bytes()).await.expect("write");
            stream.write_all(answer.as_bytes()).await.expect("write");
            request
        });
        let url = url::Url::parse(&format!("http://127.0.0.1:{port}/mcp")).expect("url");
        let client = http::client(&url).expect("client");
        let lean = http::Lean::new(&url).expect("lean");
        let request = post(&client, &url);
        assert!(lean.takes(&request));
        let response = lean.execute(request).await.expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.url(), &url);
        assert!(http::is_json(&response));
        assert_eq!(response.headers()[SESSION_ID], "s");
        let body = http::read_body(response, 1024).await.expect("body");
        assert_eq!(&body[..], br#"{"jsonrpc":"2.0","id":1,"result":{}}"#);

        let request = server.await.expect("server").to_ascii_lowercase();
        let (head, body) = request.split_once("\r\n\r\n").expect("head");
        let lines: Vec<&str> = head.lines().collect();
        assert_eq!(lines[0], "post /mcp http/1.1");
        for wanted in [
            format!("host: 127.0.0.1:{port}"),
            "content-type: application/json".to_owned(),
            "accept: application/json, text/event-stream".to_owned(),
            "mcp-session-id: session-1".to_owned(),
            "mcp-protocol-version: 2025-06-18".to_owned(),
            "x-custom: custom value".to_owned(),
            "content-length: 40".to_owned(),
        ] {
            assert!(
                lines.contains(&wanted.as_str()),
                "{wanted} missing: {lines:?}"
            );
        }
        assert_eq!(body, r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#);
    }

    #[test]
    fn lean_only_for_loopback_http() {
        let lean = |u: &str| http::Lean::new(&url::Url::parse(u).expect("url")).is_some();
        assert!(lean("http://127.0.0.1:1/mcp"));
        assert!(lean("http://localhost:1/mcp"));
        assert!(lean("http://[::1]:1/mcp"));
        assert!(!lean("https://127.0.0.1:1/mcp"));
        assert!(!lean("http://example.com/mcp"));
        assert!(!lean("http://10.0.0.1:1/mcp"));
    }
}
