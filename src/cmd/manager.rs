//! `mcpsm manager [--detach]` and `mcpsm manager stop`: the process that owns the daemons, and
//! its loopback HTTP API.
//!
//! API (JSON in and out; `{"name": "NAME"}` bodies where a daemon is meant): `GET /ping`,
//! and with `Authorization: Bearer <manager.token>`: `GET /status`, `GET /logs/NAME?tail=N`
//! (text), `POST /start`, `/stop`, `/restart`, `/ensure`, `/start-all`, `/stop-all`,
//! `/shutdown`, `POST /report` (a proxy's figures), `GET /metrics` (Prometheus text), the
//! status page (`/ui`, `/ui/data`, `POST /ui/ticket`; see [`super::manager_page`]), and
//! `POST /oauth` (the authorization of a daemon with `auth = "oauth"`, which the manager owns:
//! see `auth::broker`). It binds 127.0.0.1 only and answers 403 to a `Host` that is not
//! loopback or an `Origin` from elsewhere (DNS rebinding), 401 to any request but `/ping` and
//! `/ui` without the token (the page's cookie stands for it in GETs), 413 to a body over 16 KiB.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::platform::{Signal, Signals};
use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::manager_page::{self, PageAccess};
use super::Settings;
use crate::cli::{ManagerAction, ManagerArgs};
use crate::paths::Paths;
use crate::supervise::activity::{ProxyReport, SAMPLE_EVERY};
use crate::supervise::client::{self, ClientError, ManagerClient};
use crate::supervise::daemon::{unix_now, Context};
use crate::supervise::manager::{Manager, ManagerError};
use crate::supervise::state::{ManagerState, StateFile};
use crate::supervise::{idle, logs, process};

const BODY_LIMIT: usize = 16 * 1024;
const DETACH_TIMEOUT: Duration = Duration::from_secs(20);

pub async fn run(args: ManagerArgs, settings: Settings) -> anyhow::Result<ExitCode> {
    let registry = settings.registry()?;
    let port = registry.manager_port();
    match (args.action, args.detach) {
        (Some(ManagerAction::Stop), _) => stop(&settings, port).await,
        (None, true) => detach(&settings, port).await,
        (None, false) => {
            let warm = Warm {
                all: args.start_all,
                names: args.start,
            };
            serve(settings, port, registry.manager_idle_timeout(), warm).await
        }
    }
}

/// Starts the manager in a new session with its output in `logs/manager.log`, and returns
/// once it answers.
async fn detach(settings: &Settings, port: u16) -> anyhow::Result<ExitCode> {
    let paths = &settings.paths;
    let client = ManagerClient::new(paths, port);
    if let Ok(info) = client.ping().await {
        println!(
            "mcpsm manager is already running at 127.0.0.1:{} (pid {})",
            info.port, info.pid
        );
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(running) = client::manager_on_other_port(paths, port) {
        anyhow::bail!("{}", client::moved_message(paths, &running, port));
    }
    paths
        .create_dirs()
        .with_context(|| format!("creating {}", paths.logs_dir().display()))?;
    let log_path = paths.manager_log();
    let _ = logs::rotate_if_large(&log_path, logs::MAX_LOG_BYTES);
    let log = logs::open_log(&log_path)?;
    let exe = std::env::current_exe().context("finding the mcpsm binary")?;
    let mut command = std::process::Command::new(exe);
    if settings.registry_explicit {
        command.arg("--registry").arg(&settings.registry_path);
    }
    command
        .arg("manager")
        .env(crate::paths::HOME_ENV, paths.home())
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    crate::platform::detach(&mut command);
    let mut child =
        crate::platform::spawn_detached_std(&mut command).context("starting the manager")?;
    let deadline = Instant::now() + DETACH_TIMEOUT;
    loop {
        if let Ok(info) = client.ping().await {
            println!(
                "mcpsm manager running at 127.0.0.1:{} (pid {})",
                info.port, info.pid
            );
            return Ok(ExitCode::SUCCESS);
        }
        // Exit 0 means another manager won the lock: wait for that one to answer.
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                anyhow::bail!(
                    "the manager exited ({status}) before answering on 127.0.0.1:{port}; {}",
                    logs::tail_for_message(&log_path, 10)
                );
            }
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "the manager did not answer on 127.0.0.1:{port} within {DETACH_TIMEOUT:?}; {}",
                logs::tail_for_message(&log_path, 10)
            );
        }
        // A refused connection costs nothing; the manager is up within a few ms.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `mcpsm manager stop`: stops every daemon and the manager.
async fn stop(settings: &Settings, port: u16) -> anyhow::Result<ExitCode> {
    // A manager still on the port the registry had when it started is this home's manager.
    let port = client::manager_on_other_port(&settings.paths, port).map_or(port, |m| m.port);
    let client = ManagerClient::new(&settings.paths, port);
    match client.action("shutdown").await {
        Ok(_) => {}
        Err(ClientError::NotRunning { .. }) => {
            println!("no mcpsm manager is running on 127.0.0.1:{port}");
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e.into()),
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.ping().await.is_ok() {
        if Instant::now() > deadline {
            anyhow::bail!("the manager on 127.0.0.1:{port} stopped its daemons but did not exit");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    println!("mcpsm manager stopped, and its daemons with it");
    Ok(ExitCode::SUCCESS)
}

struct App {
    manager: Manager,
    broker: crate::auth::Broker,
    paths: Paths,
    token: String,
    token_path: PathBuf,
    port: u16,
    exit: CancellationToken,
    page: PageAccess,
}

/// Runs the manager in the foreground until SIGTERM/SIGINT (daemons keep running, for the next
/// manager to adopt) or `POST /shutdown` (daemons are stopped).
async fn serve(
    settings: Settings,
    port: u16,
    idle_exit: Option<Duration>,
    warm: Warm,
) -> anyhow::Result<ExitCode> {
    let paths = settings.paths.clone();
    paths
        .create_dirs()
        .with_context(|| format!("creating {}", paths.logs_dir().display()))?;
    let lock_path = paths.manager_lock();
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    let mut lock = fd_lock::RwLock::new(lock_file);
    let Ok(_guard) = lock.try_write() else {
        let state = ManagerState::read(&paths.manager_state()).unwrap_or_default();
        println!(
            "mcpsm manager is already running at 127.0.0.1:{} (pid {})",
            state.port, state.pid
        );
        return Ok(ExitCode::SUCCESS);
    };
    let token = crate::supervise::secret::load_or_create_token(&paths).with_context(|| {
        format!(
            "making the manager token {}",
            paths.manager_token().display()
        )
    })?;
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(listener) => listener,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => anyhow::bail!(
            "the manager cannot listen: {}\nhint: stop that process, or set another `[manager] port` in {}",
            process::describe_port_in_use(port),
            settings.registry_path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("binding 127.0.0.1:{port}")),
    };
    let previous = ManagerState::read(&paths.manager_state());
    let state_file = Arc::new(StateFile::new(
        paths.manager_state(),
        ManagerState {
            pid: std::process::id(),
            port,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: unix_now(),
            daemons: Default::default(),
        },
    ));
    let context = Arc::new(Context::new(
        paths.clone(),
        state_file.clone(),
        token.clone(),
    ));
    // The login shell runs while the manager adopts and answers, not on a daemon's first start.
    let capturing = context.clone();
    tokio::spawn(async move {
        capturing.base_environment().await;
    });
    let manager = Manager::new(
        context,
        settings.registry_path.clone(),
        settings.registry_explicit,
        port,
    );
    if let Some(previous) = previous {
        manager.adopt(&previous).await;
    }
    state_file.write().await;
    let exit = CancellationToken::new();
    let app = Arc::new(App {
        manager,
        broker: crate::auth::Broker::new(paths.home()),
        paths: paths.clone(),
        token,
        token_path: paths.manager_token(),
        port,
        exit: exit.clone(),
        page: PageAccess::new(port).context("making the status page's secret")?,
    });
    // Samples for the per-minute rates and the page's chart; a status also reads the hosts'
    // figures.
    let sampling = app.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(SAMPLE_EVERY) => {}
                () = sampling.exit.cancelled() => return,
            }
            sampling.manager.status().await;
            sampling.manager.activity.sample();
        }
    });
    info!(
        pid = std::process::id(),
        "mcpsm manager listening on 127.0.0.1:{port}"
    );
    // Windows: console close, shutdown and logoff are Terminate; CTRL_C/CTRL_BREAK Interrupt.
    let mut signals = Signals::new(&[Signal::Terminate, Signal::Interrupt, Signal::Hangup])
        .context("installing the SIGTERM, SIGINT and SIGHUP handlers")?;
    let stopping = exit.clone();
    let stop = async move {
        loop {
            tokio::select! {
                signal = signals.recv() => match signal {
                    Signal::Hangup => info!("SIGHUP ignored"),
                    Signal::Terminate | Signal::Interrupt => break,
                },
                () = stopping.cancelled() => break,
            }
        }
        // Ends the session leases' streams, so the graceful stop does not wait for them.
        stopping.cancel();
    };
    tokio::spawn(watch_idle(app.clone(), idle_exit));
    tokio::spawn(warm_up(app.clone(), warm));
    crate::serve::serve(listener, router(app.clone()), stop)
        .await
        .context("serving the manager API")?;
    // After /shutdown the daemons are stopped already; after a signal they keep running.
    app.manager.shutdown(false).await;
    info!("mcpsm manager exiting");
    Ok(ExitCode::SUCCESS)
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/ping", get(ping))
        .route("/status", get(status))
        .route("/logs/{name}", get(logs_of))
        .route("/start", post(|s, b| daemon_action(s, b, "start")))
        .route("/stop", post(|s, b| daemon_action(s, b, "stop")))
        .route("/restart", post(|s, b| daemon_action(s, b, "restart")))
        .route("/ensure", post(|s, b| daemon_action(s, b, "ensure")))
        .route("/recovered", post(|s, b| daemon_action(s, b, "recovered")))
        .route("/session", post(session))
        .route("/start-all", post(start_all))
        .route("/stop-all", post(stop_all))
        .route("/shutdown", post(shutdown))
        .route("/report", post(report))
        .route("/metrics", get(metrics))
        .route("/ui", get(page))
        .route("/ui/data", get(page_data))
        .route("/ui/ticket", post(page_ticket))
        .route("/oauth", post(oauth))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// DNS-rebinding protection and authentication, before any handler.
async fn guard(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    if let Err(why) = crate::guard::check_loopback(request.headers()) {
        return error(StatusCode::FORBIDDEN, why);
    }
    // Only /ping is open: it says nothing but who runs. Status and logs may hold secrets.
    // `/ui` checks its ticket or cookie itself; the page's cookie opens GETs only.
    let path = request.uri().path();
    let open = path == "/ping" || path == "/ui";
    let page_read =
        request.method() == axum::http::Method::GET && app.page.cookie_matches(request.headers());
    if !open && !page_read && !crate::guard::bearer_matches(request.headers(), &app.token) {
        return error(
            StatusCode::UNAUTHORIZED,
            format!(
                "this request needs `Authorization: Bearer <token>` with the token in {}",
                app.token_path.display()
            ),
        );
    }
    next.run(request).await
}

async fn ping(State(app): State<Arc<App>>) -> Response {
    Json(&app.manager.info).into_response()
}

#[derive(Deserialize)]
struct TicketQuery {
    ticket: Option<String>,
}

async fn page(
    State(app): State<Arc<App>>,
    headers: axum::http::HeaderMap,
    Query(query): Query<TicketQuery>,
) -> Response {
    app.page.page(&headers, query.ticket.as_deref())
}

async fn page_data(State(app): State<Arc<App>>) -> Response {
    Json(manager_page::data(&app.manager.status().await)).into_response()
}

async fn page_ticket(State(app): State<Arc<App>>) -> Response {
    match app.page.new_ticket() {
        Ok(ticket) => Json(json!({
            "url": format!("http://127.0.0.1:{}/ui?ticket={ticket}", app.port),
            "expires_in_secs": manager_page::TICKET_TTL.as_secs(),
        }))
        .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    manager_page::metrics(&app.manager.status().await)
}

async fn report(State(app): State<Arc<App>>, body: Bytes) -> Response {
    match serde_json::from_slice::<ProxyReport>(&body) {
        Ok(report) => {
            app.manager.activity.report(report);
            Json(json!({})).into_response()
        }
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            format!("the body must be a proxy's figures report: {e}"),
        ),
    }
}

async fn status(State(app): State<Arc<App>>) -> Response {
    Json(app.manager.status().await).into_response()
}

#[derive(Deserialize)]
struct TailQuery {
    tail: Option<usize>,
}

async fn logs_of(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Query(query): Query<TailQuery>,
) -> Response {
    let report = app.manager.status().await;
    if !report.daemons.iter().any(|d| d.name == name) {
        let known: Vec<&str> = report.daemons.iter().map(|d| d.name.as_str()).collect();
        return (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("no daemon named `{name}`"), "known": known })),
        )
            .into_response();
    }
    let path = app.paths.daemon_log(&name);
    let lines = logs::tail(&path, query.tail.unwrap_or(100).min(10_000));
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    text.into_response()
}

#[derive(Deserialize)]
struct NameBody {
    name: String,
}

async fn daemon_action(State(app): State<Arc<App>>, body: Bytes, action: &'static str) -> Response {
    let Ok(NameBody { name }) = serde_json::from_slice(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            r#"the body must be {"name": "DAEMON"}"#,
        );
    };
    let manager = &app.manager;
    let result = match action {
        "start" => manager.start(&name).await,
        "stop" => manager.stop(&name).await,
        "restart" => manager.restart(&name).await,
        "recovered" => manager.recovered(&name).await,
        _ => manager.ensure(&name).await,
    };
    match result {
        Ok(status) => Json(status).into_response(),
        Err(e) => manager_error(e),
    }
}

fn manager_error(e: ManagerError) -> Response {
    let message = e.to_string();
    match e {
        ManagerError::UnknownDaemon { known, .. } => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": message, "known": known })),
        )
            .into_response(),
        ManagerError::Registry(_) => error(StatusCode::UNPROCESSABLE_ENTITY, message),
        ManagerError::NotManaged { .. } => error(StatusCode::CONFLICT, message),
        ManagerError::NotReady(status) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": message, "daemon": status })),
        )
            .into_response(),
    }
}

/// `POST /session {"name": N}`: a proxy's lease on daemon N. The answer streams a newline
/// every [`idle::LEASE_PING`] for as long as the proxy keeps the connection; when a write
/// fails (the proxy is gone) or the manager stops, the lease ends.
async fn session(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let Ok(NameBody { name }) = serde_json::from_slice(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            r#"the body must be {"name": "DAEMON"}"#,
        );
    };
    let lease = match app.manager.open_session(&name).await {
        Ok(lease) => lease,
        Err(e) => return manager_error(e),
    };
    let exit = app.exit.clone();
    let pings = futures_util::stream::unfold((lease, true), move |(lease, first)| {
        let exit = exit.clone();
        async move {
            if !first {
                // Cancel-safe: a sleep and a token.
                tokio::select! {
                    () = tokio::time::sleep(idle::LEASE_PING) => {}
                    () = exit.cancelled() => return None,
                }
            }
            Some((
                Ok::<_, std::convert::Infallible>(Bytes::from_static(b"\n")),
                (lease, false),
            ))
        }
    });
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain")],
        axum::body::Body::from_stream(pings),
    )
        .into_response()
}

/// `--start-all` / `--start NAME`: daemons to start as soon as the manager runs.
struct Warm {
    all: bool,
    names: Vec<String>,
}

async fn warm_up(app: Arc<App>, warm: Warm) {
    if warm.all {
        match app.manager.start_all().await {
            Ok(results) => {
                for result in results.into_iter().filter_map(Result::err) {
                    warn!("--start-all: {result}");
                }
            }
            Err(e) => warn!("--start-all: {e}"),
        }
    }
    for name in &warm.names {
        if let Err(e) = app.manager.start(name).await {
            warn!("--start {name}: {e}");
        }
    }
}

/// Stops daemons idle past their `idle-timeout`, and ends the manager after `idle_exit` with
/// no daemon running.
async fn watch_idle(app: Arc<App>, idle_exit: Option<Duration>) {
    let mut busy_at = Instant::now();
    loop {
        // Cancel-safe: a sleep and a token.
        tokio::select! {
            () = tokio::time::sleep(idle::CHECK_INTERVAL) => {}
            () = app.exit.cancelled() => return,
        }
        app.manager.stop_idle().await;
        let Some(idle_exit) = idle_exit else {
            continue;
        };
        if app.manager.any_running().await {
            busy_at = Instant::now();
        } else if busy_at.elapsed() >= idle_exit {
            info!(
                "exiting: no daemon has run for {}s ([manager] idle-timeout {idle_exit:?})",
                busy_at.elapsed().as_secs()
            );
            app.exit.cancel();
            return;
        }
    }
}

async fn start_all(State(app): State<Arc<App>>) -> Response {
    match app.manager.start_all().await {
        Ok(results) => {
            let results: Vec<serde_json::Value> = results
                .into_iter()
                .map(|r| match r {
                    Ok(status) => json!({ "ok": true, "daemon": status }),
                    Err(error) => json!({ "ok": false, "error": error }),
                })
                .collect();
            Json(results).into_response()
        }
        Err(e) => manager_error(e),
    }
}

async fn stop_all(State(app): State<Arc<App>>) -> Response {
    Json(app.manager.stop_all().await).into_response()
}

async fn shutdown(State(app): State<Arc<App>>) -> Response {
    let stopped = app.manager.stop_all().await;
    app.manager.shutdown(true).await;
    warn!("shutdown requested through the API on port {}", app.port);
    app.exit.cancel();
    Json(json!({ "stopped": stopped })).into_response()
}

/// A proxy's (or `mcpsm login`'s) question about a daemon's authorization; a long poll.
async fn oauth(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let Ok(request) = serde_json::from_slice::<crate::auth::BrokerRequest>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            r#"the body must be {"name": "DAEMON", "event": "token" | "refused" | "login" | "logout", …}"#,
        );
    };
    let (url, spec) = match app.manager.oauth_daemon(&request.name) {
        Ok(found) => found,
        Err(e) => return manager_error(e),
    };
    Json(app.broker.answer(request, &url, &spec).await).into_response()
}
