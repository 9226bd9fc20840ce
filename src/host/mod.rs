//! The stdio host: shares an MCP server that only speaks stdio by serving it as a
//! streamable-HTTP daemon.
//!
//! It runs as a process of its own (`mcpsm stdio-host`), which the manager starts, probes,
//! restarts and stops like any other daemon: it keeps serving when the manager is killed, it
//! is adopted by the next manager, and stopping its process group stops the server with it.
//! (Running it inside the manager would tie every stdio server's life to the manager's.)
//!
//! Every HTTP session gets its own `Mcp-Session-Id` and is served by one server process (a
//! child, run by a [`hub::Hub`]) chosen by the sharing mode:
//! - `shared`: one child for every session whose protocol revision can be bridged (see
//!   [`negotiate`]); a revision mcpsm does not know gets a child of its own.
//! - `per-project`: one child per client working directory (the proxy sends it in the
//!   `Mcpsm-Client-Cwd` header), started in that directory.
//! - `isolated`: one child per session.
//!
//! Request ids and progress tokens are rewritten so sessions never collide, and each message
//! goes only to the session it belongs to. Request answers come as SSE on the POST (so
//! server→client requests can ride the same stream), other server messages on the session's
//! GET stream (kept in a bounded backlog while none is open), notifications and responses get
//! 202, DELETE ends a session. A session also ends when its proxy is gone (its GET stream
//! closed for `session-grace`) or it is idle for `session-idle-timeout`; a child no session
//! uses any more (per-project, isolated, unknown revisions) is stopped then. At most
//! `max-sessions` children run at once.
//!
//! The front binds 127.0.0.1 by default, refuses a non-loopback `Host` or a foreign `Origin`
//! with 403, bounds request bodies, and, when the manager gave it a secret, answers 401 to any
//! request without it. `GET /mcpsm/status` reports which children serve which sessions.
//!
//! It can also serve a team ([`service`]): bound to another address it requires bearer tokens
//! from a file and/or OIDC access tokens, checks `Host` against its public names, speaks TLS
//! from cert/key files ([`tls`]), and answers `/healthz` (alive), `/readyz` (its server
//! process answers a ping; 503 while draining) and `/metrics` ([`metrics`]) without a token.
//! Replicas behind a balancer need nothing from each other: a sessionless (2026-07-28)
//! request is served by whichever replica gets it, and a session a replica does not know
//! (another replica's, or one from before a restart) is answered 404, which makes the proxy
//! re-initialize wherever the balancer sends it.
//!
//! On SIGTERM it drains: `/readyz` turns 503, no connection is accepted any more, GET streams
//! end (their proxies reconnect elsewhere), requests in flight get `drain-grace` to finish,
//! and then its children are stopped.

pub mod hub;
pub mod metrics;
pub mod modern;
pub mod negotiate;
pub mod service;
pub mod stream;
pub mod tls;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::jsonrpc::{method, Kind, Message};
use hub::{ChildCommand, Hub, Session, SessionId, SessionInfo};
use negotiate::Compatibility;

const SESSION_HEADER: &str = "mcp-session-id";
/// The client's working directory, percent-encoded, sent by `mcpsm proxy` (per-project).
pub const CWD_HEADER: &str = "mcpsm-client-cwd";
/// Which children serve which sessions.
pub const STATUS_PATH: &str = "/mcpsm/status";
/// How long a stopping host waits for its server processes to end.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How long `/readyz` waits for the server's answer to a ping.
const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// Alive while the host runs.
pub const HEALTHZ_PATH: &str = "/healthz";
/// Ready while the server process answers and the host is not draining.
pub const READYZ_PATH: &str = "/readyz";
/// The host's figures, Prometheus text.
pub const METRICS_PATH: &str = "/metrics";

pub use crate::config::Sharing;

#[derive(Clone)]
pub struct HostOptions {
    pub port: u16,
    pub sharing: Sharing,
    pub command: ChildCommand,
    /// Sessions with no request for this long are forgotten.
    pub idle_timeout: Duration,
    /// A session whose GET stream closed (its proxy is gone) ends after this long.
    pub grace: Duration,
    /// The most children at once.
    pub max_children: usize,
    /// Who may send requests (the manager's secret, tokens, OIDC) and by which names.
    pub access: Arc<service::Access>,
    /// HTTPS instead of HTTP.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// On SIGTERM, how long requests in flight may take to finish.
    pub drain_grace: Duration,
    /// Where it listens, for the log.
    pub address: std::net::SocketAddr,
}

/// Which sessions one child serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct GroupKey {
    cwd: Option<PathBuf>,
    compatibility: Compatibility,
}

struct Attached {
    session: Arc<Session>,
    hub: Arc<Hub>,
    /// `None` for an isolated session's own child.
    group: Option<GroupKey>,
}

struct Front {
    options: HostOptions,
    groups: Mutex<HashMap<GroupKey, Arc<Hub>>>,
    sessions: Mutex<HashMap<SessionId, Arc<Attached>>>,
    /// Serializes the choice (and start) of a session's child.
    choosing: tokio::sync::Mutex<()>,
    /// Whether the server speaks 2026-07-28 itself, once a sessionless request asked.
    sessionless: tokio::sync::Mutex<Option<bool>>,
    counters: metrics::Counters,
    /// SIGTERM received: `/readyz` answers 503.
    draining: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Front {
    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Arc<Attached>>> {
        lock(&self.sessions)
    }

    fn groups(&self) -> std::sync::MutexGuard<'_, HashMap<GroupKey, Arc<Hub>>> {
        lock(&self.groups)
    }

    /// Every child: the groups' and the isolated sessions'.
    fn hubs(&self) -> Vec<Arc<Hub>> {
        let mut hubs: Vec<Arc<Hub>> = self.groups().values().cloned().collect();
        hubs.extend(
            self.sessions()
                .values()
                .filter(|a| a.group.is_none())
                .map(|a| a.hub.clone()),
        );
        hubs
    }

    fn start_hub(&self, cwd: Option<PathBuf>, compatibility: Compatibility) -> Arc<Hub> {
        let mut command = self.options.command.clone();
        if cwd.is_some() {
            command.cwd = cwd;
        }
        Hub::start(command, compatibility)
    }

    /// The group of the default child of a shared host, kept for the host's whole life.
    fn is_main(&self, key: &GroupKey) -> bool {
        self.options.sharing == Sharing::Shared
            && key.cwd.is_none()
            && key.compatibility == Compatibility::Bridged
    }

    /// The child a sessionless (2026-07-28) request goes to; see [`modern`].
    async fn sessionless_route(
        &self,
        headers: &HeaderMap,
        request: &Value,
    ) -> Result<modern::Route, String> {
        let cwd = match self.options.sharing {
            Sharing::PerProject => client_cwd(headers)?,
            _ => None,
        };
        let speaks = {
            // Sessionless requests wait for the one question; sessions do not.
            let mut decided = self.sessionless.lock().await;
            match *decided {
                Some(speaks) => speaks,
                None => {
                    let (hub, key, started) = {
                        let _one_at_a_time = self.choosing.lock().await;
                        self.group_hub(cwd.clone(), Compatibility::Sessionless)?
                    };
                    let answer = modern::speaks_sessionless(&hub, request).await;
                    let speaks = answer.unwrap_or(false);
                    if !speaks && started {
                        hub.shutdown();
                        self.groups().remove(&key);
                    }
                    match answer {
                        Some(speaks) => {
                            info!(
                                "sessionless (2026-07-28) clients: the server {}",
                                if speaks { "speaks 2026-07-28 itself" } else { "does not speak 2026-07-28; mcpsm bridges" }
                            );
                            *decided = Some(speaks);
                        }
                        None => info!("the server did not answer server/discover; bridging this request, asking again next time"),
                    }
                    speaks
                }
            }
        };
        let compatibility = if speaks {
            Compatibility::Sessionless
        } else {
            Compatibility::Bridged
        };
        let hub = {
            let _one_at_a_time = self.choosing.lock().await;
            self.group_hub(cwd, compatibility)?.0
        };
        if speaks {
            return Ok(modern::Route::Native(hub));
        }
        if hub.init_result().is_none() {
            let initialize =
                Message::parse(Bytes::from(modern::initialize_for(request).to_string()))
                    .map_err(|e| e.to_string())?;
            if let Err(answer) = hub.initialize(&initialize).await {
                return Err(String::from_utf8_lossy(&answer).into_owned());
            }
            let initialized = Message::parse(Bytes::from_static(
                br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            ))
            .map_err(|e| e.to_string())?;
            hub.from_client(&Arc::from("sessionless"), initialized)
                .await;
        }
        Ok(modern::Route::Bridged(hub))
    }

    /// The child of group (`cwd`, `compatibility`): found, or started (within `max-sessions`).
    fn group_hub(
        &self,
        cwd: Option<PathBuf>,
        compatibility: Compatibility,
    ) -> Result<(Arc<Hub>, GroupKey, bool), String> {
        let key = GroupKey { cwd, compatibility };
        if let Some(hub) = self.groups().get(&key) {
            return Ok((hub.clone(), key, false));
        }
        self.check_room()?;
        let hub = self.start_hub(key.cwd.clone(), key.compatibility.clone());
        self.groups().insert(key.clone(), hub.clone());
        Ok((hub, key, true))
    }

    /// An error naming `max-sessions` when another child would be one too many.
    fn check_room(&self) -> Result<(), String> {
        let running = self.hubs().len();
        let max = self.options.max_children;
        if running >= max {
            return Err(format!(
                "daemon \"{}\" already runs {running} server processes, its `max-sessions` ({max}); end a client session, or raise `max-sessions` in the registry",
                self.options.command.name
            ));
        }
        Ok(())
    }

    /// Stops every child and ends every stream.
    fn close_all(&self) {
        for attached in self.sessions().values() {
            attached.session.close_stream();
        }
        for hub in self.hubs() {
            hub.shutdown();
        }
    }
}

/// Serves until `stop` resolves, then ends every stream and stops every child.
pub async fn run(
    options: HostOptions,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let body_limit = options.command.max_message_bytes;
    let front = Arc::new(Front {
        options,
        groups: Mutex::new(HashMap::new()),
        sessions: Mutex::new(HashMap::new()),
        choosing: tokio::sync::Mutex::new(()),
        sessionless: tokio::sync::Mutex::new(None),
        counters: metrics::Counters::default(),
        draining: AtomicBool::new(false),
    });
    if front.options.sharing == Sharing::Shared {
        let key = GroupKey {
            cwd: None,
            compatibility: Compatibility::Bridged,
        };
        let hub = front.start_hub(None, Compatibility::Bridged);
        front.groups().insert(key, hub);
    }
    let reaper = tokio::spawn(reap(front.clone()));
    let router = Router::new()
        .route(
            "/mcp",
            axum::routing::post(post_mcp)
                .get(get_mcp)
                .delete(delete_mcp),
        )
        .route(STATUS_PATH, axum::routing::get(get_status))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            front.clone(),
            authorize,
        ))
        .layer(axum::middleware::from_fn_with_state(
            front.clone(),
            check_host,
        ))
        // The probes and the metrics: no token, any Host (a kubelet uses the pod's IP).
        .route(HEALTHZ_PATH, axum::routing::get(|| async { "alive\n" }))
        .route(READYZ_PATH, axum::routing::get(get_readyz))
        .route(METRICS_PATH, axum::routing::get(get_metrics))
        .layer(axum::middleware::from_fn_with_state(front.clone(), count))
        .with_state(front.clone());
    info!(
        daemon = %front.options.command.name,
        sharing = front.options.sharing.as_str(),
        "stdio host listening on {}://{}",
        if front.options.tls.is_some() { "https" } else { "http" },
        front.options.address
    );
    let stopping = CancellationToken::new();
    let stopper = {
        let front = front.clone();
        let stopping = stopping.clone();
        tokio::spawn(async move {
            stop.await;
            info!(
                "draining: no new connections, GET streams end, requests in flight have {:?} to finish",
                front.options.drain_grace
            );
            front.draining.store(true, Ordering::Relaxed);
            for attached in front.sessions().values() {
                attached.session.close_stream();
            }
            stopping.cancel();
        })
    };
    let serve = crate::serve::serve_tls(
        listener,
        router,
        stopping.clone().cancelled_owned(),
        front.options.tls.clone(),
    );
    let grace = front.options.drain_grace;
    let served = tokio::select! {
        served = serve => {
            info!("drained: every request in flight was answered");
            served
        }
        // Connections that outlive their streams do not hold the stop up.
        () = async { stopping.cancelled().await; tokio::time::sleep(grace).await } => {
            warn!("drain grace ({grace:?}) over with requests still in flight; stopping anyway");
            Ok(())
        }
    };
    stopper.abort();
    reaper.abort();
    front.close_all();
    for hub in front.hubs() {
        hub.stopped(STOP_GRACE).await;
    }
    served
}

/// The report of the host on `port` (`GET /mcpsm/status`), when it answers within a second.
pub async fn fetch_status(port: u16, secret: &str) -> Option<Value> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(1))
        .build()
        .ok()?;
    let response = client
        .get(format!("http://127.0.0.1:{port}{STATUS_PATH}"))
        .bearer_auth(secret)
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    serde_json::from_slice(&response.bytes().await.ok()?).ok()
}

/// 403 for a `Host` that is neither loopback nor a public name, or an `Origin` from elsewhere
/// (DNS rebinding).
async fn check_host(State(front): State<Arc<Front>>, request: Request, next: Next) -> Response {
    if let Err(why) = front.options.access.check_host(request.headers()) {
        front.counters.forbidden.fetch_add(1, Ordering::Relaxed);
        return jsonrpc_error(StatusCode::FORBIDDEN, -32000, &why);
    }
    next.run(request).await
}

/// 401 without an accepted credential, when the host checks them.
async fn authorize(State(front): State<Arc<Front>>, request: Request, next: Next) -> Response {
    let access = &front.options.access;
    if let Err(why) = access.authorize(request.headers()).await {
        front.counters.unauthorized.fetch_add(1, Ordering::Relaxed);
        let name = &front.options.command.name;
        let message = if access.tokens.is_none() && access.oidc.is_none() {
            format!("Unauthorized: daemon \"{name}\" is run by mcpsm and answers only its proxies; connect with `mcpsm proxy --target {name}`")
        } else {
            debug!("refused a request: {why}");
            format!("Unauthorized: {why}; send `Authorization: Bearer TOKEN` with a token of this team service (in the registry: `headers = {{ Authorization = \"Bearer ${{TOKEN_VARIABLE}}\" }}`)")
        };
        let mut response = jsonrpc_error(StatusCode::UNAUTHORIZED, -32001, &message);
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"mcpsm\""),
        );
        return response;
    }
    next.run(request).await
}

/// Counts every response by status class, and the requests being handled.
async fn count(State(front): State<Arc<Front>>, request: Request, next: Next) -> Response {
    front.counters.in_flight.fetch_add(1, Ordering::Relaxed);
    let response = next.run(request).await;
    front.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
    front.counters.count_status(response.status().as_u16());
    response
}

/// `GET /readyz`: 200 once the server process answers a ping (any answer: a server without
/// `ping` is alive too), 503 while it does not or once the host is draining.
async fn get_readyz(State(front): State<Arc<Front>>) -> Response {
    let unavailable = |why: String| (StatusCode::SERVICE_UNAVAILABLE, why + "\n").into_response();
    if front.draining.load(Ordering::Relaxed) {
        return unavailable("draining (SIGTERM received)".into());
    }
    let main = front
        .groups()
        .iter()
        .find(|(key, _)| front.is_main(key))
        .map(|(_, hub)| hub.clone());
    let Some(hub) = main else {
        return if front.options.sharing == Sharing::Shared {
            unavailable("the server process is not running".into())
        } else {
            (
                StatusCode::OK,
                "ready (a server process starts per session)\n",
            )
                .into_response()
        };
    };
    if hub.is_stopped() {
        return unavailable("the server process is stopped".into());
    }
    let ping = match Message::parse(Bytes::from_static(
        br#"{"jsonrpc":"2.0","id":"mcpsm-readyz","method":"ping"}"#,
    )) {
        Ok(ping) => ping,
        Err(e) => return unavailable(e.to_string()),
    };
    let started = Instant::now();
    match tokio::time::timeout(READY_TIMEOUT, hub.ask(ping, READY_TIMEOUT)).await {
        Ok(Ok(_)) => (
            StatusCode::OK,
            format!(
                "ready: the server answered a ping in {:?}\n",
                started.elapsed()
            ),
        )
            .into_response(),
        Ok(Err(why)) => unavailable(format!("the server did not answer a ping: {why}")),
        Err(_) => unavailable(format!(
            "the server did not answer a ping within {READY_TIMEOUT:?}"
        )),
    }
}

/// `GET /metrics`: the host's figures in the Prometheus text format.
async fn get_metrics(State(front): State<Arc<Front>>) -> Response {
    let hubs = front.hubs();
    let children = hubs.iter().filter(|hub| !hub.is_stopped()).count();
    let draining = front.draining.load(Ordering::Relaxed);
    let gauges = metrics::Gauges {
        sessions: front.sessions().len(),
        children,
        ready: !draining && (children > 0 || front.options.sharing != Sharing::Shared),
        draining,
    };
    let text = metrics::render(&front.options.command.name, &front.counters, &gauges);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
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
        front
            .counters
            .unknown_sessions
            .fetch_add(1, Ordering::Relaxed);
        Box::new(jsonrpc_error(
            StatusCode::NOT_FOUND,
            -32001,
            "Session not found",
        ))
    })
}

fn new_session_id() -> Option<String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// An SSE response whose items are whole events already (see [`stream`]); it ends when every
/// sender is gone.
fn events_response(rx: mpsc::Receiver<Bytes>) -> Response {
    sse_of(rx, |event| event)
}

/// An SSE response made of the messages sent to `rx`, one event each, without ids.
pub(crate) fn sse_response(rx: mpsc::Receiver<Bytes>) -> Response {
    sse_of(rx, |message| stream::event(None, &message))
}

fn sse_of(rx: mpsc::Receiver<Bytes>, to_event: fn(Bytes) -> Bytes) -> Response {
    let body = futures_util::stream::unfold(rx, move |mut rx| async move {
        let item = rx.recv().await?;
        Some((Ok::<Bytes, std::convert::Infallible>(to_event(item)), rx))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
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
        if messages.len() > 1 {
            return jsonrpc_error(
                StatusCode::BAD_REQUEST,
                crate::jsonrpc::INVALID_REQUEST,
                "Invalid Request: initialize must not be part of a JSON-RPC batch",
            );
        }
        return initialize_session(&front, &headers, initialize).await;
    }
    if !headers.contains_key(SESSION_HEADER) && modern::is_sessionless(&headers, &messages) {
        front
            .counters
            .sessionless_requests
            .fetch_add(1, Ordering::Relaxed);
        return modern::post(&front, &headers, messages).await;
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
    // Priming events came with 2025-11-25; event ids (resumption) with 2025-03-26.
    let prime = attached.session.info.version.as_str() >= "2025-11-25";
    events_response(attached.session.streams.open(rx, prime))
}

/// The client's working directory from the proxy's header, when it sent a usable one.
fn client_cwd(headers: &HeaderMap) -> Result<Option<PathBuf>, String> {
    let Some(value) = headers.get(CWD_HEADER) else {
        return Ok(None);
    };
    // Percent-encoded as one form value: `&` and `=` are escaped, so it parses as one key.
    let text = url::form_urlencoded::parse(value.as_bytes())
        .next()
        .map(|(key, _)| key.into_owned())
        .unwrap_or_default();
    let path = PathBuf::from(text);
    // One key per directory however it is spelled (`/p/x/..`, a symlink).
    match std::fs::canonicalize(&path) {
        Ok(path) if path.is_absolute() && path.is_dir() => Ok(Some(path)),
        _ => Err(format!(
            "the client's working directory {} is not a directory",
            path.display()
        )),
    }
}

/// The child a new session is served by: found, or started.
fn choose_child(
    front: &Front,
    cwd: Option<PathBuf>,
    compatibility: Compatibility,
) -> Result<(Arc<Hub>, Option<GroupKey>, bool), String> {
    let key = match front.options.sharing {
        Sharing::Isolated => None,
        Sharing::Shared => Some(GroupKey {
            cwd: None,
            compatibility: compatibility.clone(),
        }),
        Sharing::PerProject => {
            if cwd.is_none() {
                // No directory (mcpsm's own probe, a client run by hand): any running child.
                let groups = front.groups();
                let any = groups
                    .iter()
                    .filter(|(k, _)| k.compatibility == compatibility)
                    .max_by_key(|(_, hub)| hub.session_count())
                    .map(|(k, hub)| (hub.clone(), Some(k.clone()), false));
                if let Some(found) = any {
                    return Ok(found);
                }
            }
            Some(GroupKey {
                cwd,
                compatibility: compatibility.clone(),
            })
        }
    };
    if let Some(key) = &key {
        if let Some(hub) = front.groups().get(key) {
            return Ok((hub.clone(), Some(key.clone()), false));
        }
    }
    front.check_room()?;
    let (cwd, compatibility) = match &key {
        Some(key) => (key.cwd.clone(), key.compatibility.clone()),
        None => (None, compatibility),
    };
    let hub = front.start_hub(cwd, compatibility);
    if let Some(key) = &key {
        front.groups().insert(key.clone(), hub.clone());
    }
    Ok((hub, key, true))
}

fn json_answer(answer: Bytes) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        answer,
    )
        .into_response()
}

async fn initialize_session(
    front: &Arc<Front>,
    headers: &HeaderMap,
    initialize: &Message,
) -> Response {
    let request: Value = serde_json::from_slice(initialize.bytes()).unwrap_or_default();
    let refuse = |why: &str| {
        let id = initialize.id().map_or("null", |i| i.as_json());
        json_answer(Bytes::from(format!(
            r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":{},"message":{}}}}}"#,
            crate::jsonrpc::UPSTREAM_ERROR,
            Value::String(why.to_owned())
        )))
    };
    let requested = request["params"]["protocolVersion"]
        .as_str()
        .unwrap_or_default();
    let compatibility = Compatibility::of(requested);
    let cwd = match client_cwd(headers) {
        Ok(cwd) if front.options.sharing == Sharing::PerProject => cwd,
        Ok(_) => None,
        Err(why) if front.options.sharing == Sharing::PerProject => return refuse(&why),
        Err(_) => None,
    };
    let chosen = {
        let _one_at_a_time = front.choosing.lock().await;
        choose_child(front, cwd, compatibility)
    };
    let (hub, group, started) = match chosen {
        Ok(chosen) => chosen,
        Err(why) => return refuse(&why),
    };
    let (answer, version) = match hub.initialize(initialize).await {
        Ok(answered) => answered,
        Err(answer) => {
            if started && hub.session_count() == 0 {
                hub.shutdown();
                if let Some(key) = &group {
                    front.groups().remove(key);
                }
            }
            return json_answer(answer);
        }
    };
    let Some(id) = new_session_id() else {
        if group.is_none() {
            hub.shutdown();
        }
        return refuse("the system's random number generator failed; try again");
    };
    let id: SessionId = Arc::from(id);
    let mut info = SessionInfo::of_initialize(&request);
    info.version = version;
    let session = Session::new(id.clone(), info);
    hub.attach(session.clone());
    front.sessions().insert(
        id.clone(),
        Arc::new(Attached {
            session,
            hub,
            group,
        }),
    );
    front
        .counters
        .sessions_opened
        .fetch_add(1, Ordering::Relaxed);
    debug!(session = %id, "new session");
    let mut response = json_answer(answer);
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(SESSION_HEADER, value);
    }
    response
}

async fn get_mcp(State(front): State<Arc<Front>>, headers: HeaderMap) -> Response {
    if !headers.contains_key(SESSION_HEADER) && modern::is_sessionless_header(&headers) {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let attached = match session_of(&front, &headers) {
        Ok(attached) => attached,
        Err(response) => return *response,
    };
    attached.session.touch();
    if let Some(last) = headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        if let Some(resumed) = attached.session.streams.resume(last) {
            return events_response(resumed);
        }
    }
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
    if !headers.contains_key(SESSION_HEADER) && modern::is_sessionless_header(&headers) {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
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
    if attached.group.is_none() {
        attached.hub.shutdown();
    }
    debug!(session = %attached.session.id, "session ended");
}

/// Ends sessions whose proxy is gone or that are idle, and stops the children no session
/// uses any more.
async fn reap(front: Arc<Front>) {
    let period = (front.options.idle_timeout.min(front.options.grace) / 4)
        .clamp(Duration::from_millis(200), Duration::from_secs(60));
    let mut unused_since: HashMap<GroupKey, Instant> = HashMap::new();
    loop {
        tokio::time::sleep(period).await;
        let ended: Vec<(Arc<Attached>, &str)> = front
            .sessions()
            .values()
            .filter_map(|a| {
                if a.session
                    .gone_for()
                    .is_some_and(|g| g >= front.options.grace)
                {
                    Some((a.clone(), "its proxy is gone (its GET stream closed)"))
                } else if a.session.idle_for() >= front.options.idle_timeout
                    && !a.session.has_get_stream()
                {
                    Some((a.clone(), "idle"))
                } else {
                    None
                }
            })
            .collect();
        for (attached, why) in ended {
            info!(session = %attached.session.id, "session ended: {why}");
            end_session(&front, &attached).await;
        }
        let groups: Vec<(GroupKey, Arc<Hub>)> = front
            .groups()
            .iter()
            .map(|(k, h)| (k.clone(), h.clone()))
            .collect();
        for (key, hub) in groups {
            if front.is_main(&key)
                || hub.session_count() > 0
                || hub.idle_for() < front.options.grace
            {
                unused_since.remove(&key);
                continue;
            }
            let since = *unused_since.entry(key.clone()).or_insert_with(Instant::now);
            if since.elapsed() >= front.options.grace {
                info!(cwd = ?key.cwd, "no session uses this MCP server process any more; stopping it");
                front.groups().remove(&key);
                unused_since.remove(&key);
                hub.shutdown();
            }
        }
    }
}

/// `GET /mcpsm/status`: the children and the sessions each serves.
async fn get_status(State(front): State<Arc<Front>>) -> Response {
    let hubs = front.hubs();
    let sessions = front.sessions();
    let children: Vec<Value> = hubs
        .iter()
        .filter(|hub| !hub.is_stopped())
        .map(|hub| {
            let health = hub.health();
            let served: Vec<Value> = sessions
                .values()
                .filter(|a| Arc::ptr_eq(&a.hub, hub))
                .map(|a| {
                    let info = &a.session.info;
                    let capabilities: Vec<&String> = info
                        .capabilities
                        .as_object()
                        .map(|m| m.keys().collect())
                        .unwrap_or_default();
                    json!({
                        "id": a.session.id.as_ref(),
                        "protocol_version": info.version,
                        "client": info.client,
                        "capabilities": capabilities,
                        "idle_secs": a.session.idle_for().as_secs(),
                        "connected": a.session.has_get_stream(),
                    })
                })
                .collect();
            json!({
                "pid": hub.pid(),
                "cwd": hub.command().cwd.clone().or_else(|| std::env::current_dir().ok()),
                "protocol_version": hub.child_version(),
                "revisions": match hub.compatibility() {
                    Compatibility::Bridged => negotiate::KNOWN.join(", "),
                    Compatibility::Exact(v) => v.clone(),
                    Compatibility::Sessionless => modern::VERSION.to_owned(),
                },
                "health": {
                    "failures": health.failures,
                    "last_ping_ms": health.last_ping.map(|d| d.as_secs_f64() * 1000.0),
                    "last_error": health.last_error,
                    "hung_restarts": health.hung_restarts,
                },
                "sessions": served,
            })
        })
        .collect();
    drop(sessions);
    axum::Json(json!({
        "daemon": front.options.command.name,
        "pid": std::process::id(),
        "figures": hub::FIGURES.snapshot(),
        "sharing": front.options.sharing.as_str(),
        "max_sessions": front.options.max_children,
        "children": children,
    }))
    .into_response()
}
