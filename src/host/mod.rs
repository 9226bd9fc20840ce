//! The stdio host: shares an MCP server that only speaks stdio by serving it as a
//! streamable-HTTP daemon.
//!
//! It runs as a process of its own (`mcpsm stdio-host`), which the manager starts, probes,
//! restarts and stops like any other daemon: it keeps serving when the manager is killed, it
//! is adopted by the next manager, and stopping its process group stops the server with it.
//! (Running it inside the manager would tie every stdio server's life to the manager's.)
//!
//! Every HTTP session gets its own `Mcp-Session-Id`. With `sharing = "shared"` all sessions
//! are multiplexed onto one child process by a [`hub::Hub`]: the first `initialize` goes to
//! the child, later sessions get the cached InitializeResult under their own id, request ids
//! and progress tokens are rewritten so sessions never collide, and each message goes only to
//! the session it belongs to. With `sharing = "isolated"` each session gets a child (and hub)
//! of its own, for stateful servers such as browser automation.
//!
//! Request answers come as SSE on the POST (so server→client requests can ride the same
//! stream), other server messages on the session's GET stream (kept in a bounded backlog
//! while none is open), notifications and responses get 202, `ping` is answered here, DELETE
//! ends a session and idle sessions expire. The front binds 127.0.0.1 only, refuses a
//! non-loopback `Host` or a foreign `Origin` with 403, and bounds request bodies.

pub mod hub;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::jsonrpc::{method, Kind, Message};
use hub::{ChildCommand, Hub, Session, SessionId};

const SESSION_HEADER: &str = "mcp-session-id";

pub use crate::config::Sharing;

#[derive(Debug, Clone)]
pub struct HostOptions {
    pub port: u16,
    pub sharing: Sharing,
    pub command: ChildCommand,
    /// Sessions with no request for this long are forgotten.
    pub idle_timeout: Duration,
}

struct Attached {
    session: Arc<Session>,
    hub: Arc<Hub>,
}

struct Front {
    options: HostOptions,
    shared: Option<Arc<Hub>>,
    sessions: Mutex<HashMap<SessionId, Arc<Attached>>>,
}

impl Front {
    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Arc<Attached>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Serves until `stop` resolves, then stops every child.
pub async fn run(
    options: HostOptions,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let shared = (options.sharing == Sharing::Shared).then(|| Hub::start(options.command.clone()));
    let body_limit = options.command.max_message_bytes;
    let front = Arc::new(Front {
        options,
        shared,
        sessions: Mutex::new(HashMap::new()),
    });
    let reaper = tokio::spawn(reap_idle_sessions(front.clone()));
    let router = Router::new()
        .route(
            "/mcp",
            axum::routing::post(post_mcp)
                .get(get_mcp)
                .delete(delete_mcp),
        )
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(loopback_only))
        .with_state(front.clone());
    info!(
        daemon = %front.options.command.name,
        "stdio host listening on 127.0.0.1:{}",
        front.options.port
    );
    let served = crate::serve::serve(listener, router, stop).await;
    reaper.abort();
    if let Some(hub) = &front.shared {
        hub.shutdown();
    }
    for attached in front.sessions().values() {
        attached.hub.shutdown();
    }
    served
}

/// 403 for a `Host` that is not loopback or an `Origin` from elsewhere (DNS rebinding).
async fn loopback_only(request: Request, next: Next) -> Response {
    if let Err(why) = crate::guard::check_loopback(request.headers()) {
        return jsonrpc_error(StatusCode::FORBIDDEN, -32000, &why);
    }
    next.run(request).await
}

fn jsonrpc_error(status: StatusCode, code: i64, message: &str) -> Response {
    let body = json!({"jsonrpc": "2.0", "id": null, "error": {"code": code, "message": message}});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The session a request names, or the response that refuses it (boxed: it is large).
fn session_of(front: &Front, headers: &HeaderMap) -> Result<Arc<Attached>, Box<Response>> {
    let Some(id) = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) else {
        return Err(Box::new(jsonrpc_error(
            StatusCode::BAD_REQUEST,
            -32000,
            "Bad Request: Mcp-Session-Id header is required",
        )));
    };
    let found = front.sessions().get(id).cloned();
    found.ok_or_else(|| {
        Box::new(jsonrpc_error(
            StatusCode::NOT_FOUND,
            -32001,
            "Session not found",
        ))
    })
}

fn new_session_id() -> String {
    let mut bytes = [0u8; 16];
    let filled = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_ok();
    if !filled {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = nanos.to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An SSE body made of the messages sent to `rx`; it ends when every sender is gone.
fn sse(rx: mpsc::Receiver<Bytes>) -> Body {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let message = rx.recv().await?;
        let mut event = Vec::with_capacity(message.len() + 24);
        event.extend_from_slice(b"event: message\ndata: ");
        event.extend_from_slice(&message);
        event.extend_from_slice(b"\n\n");
        Some((
            Ok::<Bytes, std::convert::Infallible>(Bytes::from(event)),
            rx,
        ))
    });
    Body::from_stream(stream)
}

fn sse_response(rx: mpsc::Receiver<Bytes>) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(sse(rx))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn post_mcp(State(front): State<Arc<Front>>, headers: HeaderMap, body: Bytes) -> Response {
    let messages = match Message::parse_many(body) {
        Ok(messages) => messages,
        Err(e) => {
            return jsonrpc_error(
                StatusCode::BAD_REQUEST,
                -32700,
                &format!("Parse error: {e}"),
            )
        }
    };
    if let Some(initialize) = messages
        .iter()
        .find(|m| m.is_request() && m.method() == Some(method::INITIALIZE))
    {
        return initialize_session(&front, initialize).await;
    }
    let attached = match session_of(&front, &headers) {
        Ok(attached) => attached,
        Err(response) => return *response,
    };
    attached.session.touch();
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let mut requests = 0;
    for message in messages {
        if message.kind() == Kind::Request {
            requests += 1;
            attached
                .hub
                .request(&attached.session.id, message, tx.clone())
                .await;
        } else {
            attached
                .hub
                .from_client(&attached.session.id, message)
                .await;
        }
    }
    drop(tx);
    if requests == 0 {
        return StatusCode::ACCEPTED.into_response();
    }
    sse_response(rx)
}

async fn initialize_session(front: &Arc<Front>, initialize: &Message) -> Response {
    let id: SessionId = Arc::from(new_session_id());
    let hub = match &front.shared {
        Some(hub) => hub.clone(),
        None => Hub::start(front.options.command.clone()),
    };
    let answer = hub.initialize(initialize).await;
    let value: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
    if value.get("result").is_none() {
        if front.shared.is_none() {
            hub.shutdown();
        }
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            answer,
        )
            .into_response();
    }
    let session = Session::new(id.clone());
    hub.attach(session.clone());
    front
        .sessions()
        .insert(id.clone(), Arc::new(Attached { session, hub }));
    debug!(session = %id, "new session");
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        answer,
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(SESSION_HEADER, value);
    }
    response
}

async fn get_mcp(State(front): State<Arc<Front>>, headers: HeaderMap) -> Response {
    let attached = match session_of(&front, &headers) {
        Ok(attached) => attached,
        Err(response) => return *response,
    };
    attached.session.touch();
    match attached.session.open_get_stream() {
        Some(rx) => sse_response(rx),
        None => jsonrpc_error(
            StatusCode::CONFLICT,
            -32000,
            "Conflict: Only one SSE stream is allowed per session",
        ),
    }
}

async fn delete_mcp(State(front): State<Arc<Front>>, headers: HeaderMap) -> Response {
    let attached = match session_of(&front, &headers) {
        Ok(attached) => attached,
        Err(response) => return *response,
    };
    end_session(&front, &attached).await;
    StatusCode::OK.into_response()
}

async fn end_session(front: &Front, attached: &Attached) {
    front.sessions().remove(&attached.session.id);
    attached.hub.detach(&attached.session.id).await;
    if front.shared.is_none() {
        attached.hub.shutdown();
    }
    debug!(session = %attached.session.id, "session ended");
}

async fn reap_idle_sessions(front: Arc<Front>) {
    let period =
        (front.options.idle_timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        tokio::time::sleep(period).await;
        let idle: Vec<Arc<Attached>> = front
            .sessions()
            .values()
            .filter(|a| {
                a.session.idle_for() >= front.options.idle_timeout && !a.session.has_get_stream()
            })
            .cloned()
            .collect();
        for attached in idle {
            info!(session = %attached.session.id, "session idle for {:?}; ended", front.options.idle_timeout);
            end_session(&front, &attached).await;
        }
    }
}
