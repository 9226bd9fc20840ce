//! The manager's status page and `/metrics`: what runs, for people and for monitoring.
//!
//! `GET /ui` serves one HTML file embedded in the binary (`status_page.html`: plain JS, no
//! third-party code, its chart drawn as SVG by its own script), which polls `GET /ui/data`.
//! Getting in: `mcpsm status --open` asks for a ticket (`POST /ui/ticket`, manager token
//! required) and opens `http://127.0.0.1:PORT/ui?ticket=T`; the first `GET /ui` with that
//! ticket (valid for [`TICKET_TTL`], once) sets an `HttpOnly`, `SameSite=Strict` cookie and
//! redirects to the bare `/ui`, so the ticket leaves the address bar and the history. The
//! cookie opens the page's GETs only (`/ui`, `/ui/data`, `/metrics`, `/status`, `/logs/…`),
//! never an action. `GET /metrics` is the same figures in the Prometheus text format, for
//! the manager token (or the page's cookie).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::metrics::{Exposition, Kind};
use crate::supervise::daemon::{unix_now, DaemonState};
use crate::supervise::logs;
use crate::supervise::manager::StatusReport;

/// The page, embedded.
const PAGE: &str = include_str!("status_page.html");
/// How long a ticket from `mcpsm status --open` can be used.
pub const TICKET_TTL: Duration = Duration::from_secs(120);
/// Tickets not used yet, at most (the oldest is dropped beyond).
const TICKETS_MAX: usize = 16;
/// Log lines per daemon on the page.
const PAGE_LOG_LINES: usize = 8;

/// The page's secrets: the cookie every exchanged ticket sets, and the tickets not used yet.
pub struct PageAccess {
    cookie_name: String,
    cookie: String,
    tickets: Mutex<Vec<(String, Instant)>>,
}

impl PageAccess {
    /// Cookies are per host, not per port: the name carries the port so that managers of
    /// two homes do not overwrite each other's.
    pub fn new(port: u16) -> std::io::Result<PageAccess> {
        Ok(PageAccess {
            cookie_name: format!("mcpsm-page-{port}"),
            cookie: random_hex()?,
            tickets: Mutex::new(Vec::new()),
        })
    }

    pub fn cookie_matches(&self, headers: &HeaderMap) -> bool {
        crate::guard::cookie_matches(headers, &self.cookie_name, &self.cookie)
    }

    pub fn new_ticket(&self) -> std::io::Result<String> {
        let ticket = random_hex()?;
        let mut tickets = self.tickets.lock().unwrap_or_else(|e| e.into_inner());
        tickets.retain(|(_, at)| at.elapsed() < TICKET_TTL);
        if tickets.len() >= TICKETS_MAX {
            tickets.remove(0);
        }
        tickets.push((ticket.clone(), Instant::now()));
        Ok(ticket)
    }

    /// Uses up `ticket`: true once, within [`TICKET_TTL`].
    fn redeem(&self, ticket: &str) -> bool {
        let mut tickets = self.tickets.lock().unwrap_or_else(|e| e.into_inner());
        tickets.retain(|(_, at)| at.elapsed() < TICKET_TTL);
        let found = tickets
            .iter()
            .position(|(t, _)| crate::guard::same_secret(ticket, t));
        found.map(|i| tickets.remove(i)).is_some()
    }

    /// `GET /ui[?ticket=T]`.
    pub fn page(&self, headers: &HeaderMap, ticket: Option<&str>) -> Response {
        if let Some(ticket) = ticket {
            if !self.redeem(ticket) {
                return refused("This link was used already or is more than two minutes old.");
            }
            let cookie = format!(
                "{}={}; HttpOnly; SameSite=Strict; Path=/",
                self.cookie_name, self.cookie
            );
            return (
                StatusCode::SEE_OTHER,
                [
                    (header::SET_COOKIE, cookie),
                    (header::LOCATION, "/ui".to_owned()),
                    (header::CACHE_CONTROL, "no-store".to_owned()),
                ],
            )
                .into_response();
        }
        if !self.cookie_matches(headers) {
            return refused("This page needs a link from `mcpsm status --open`.");
        }
        (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
                ),
            ],
            PAGE,
        )
            .into_response()
    }
}

fn refused(why: &str) -> Response {
    let body = format!(
        "<!doctype html><meta charset=utf-8><title>mcpsm</title><p>{why}</p><p>Run <code>mcpsm status --open</code> for a new one.</p>"
    );
    (
        StatusCode::UNAUTHORIZED,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

fn random_hex() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| std::io::Error::other("the system's random generator failed"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// `GET /ui/data`: the status report with each daemon's figures and last log lines.
pub fn data(report: &StatusReport) -> Value {
    let daemons: Vec<Value> = report
        .daemons
        .iter()
        .map(|daemon| {
            let mut value = serde_json::to_value(daemon).unwrap_or_default();
            let log = logs::tail(std::path::Path::new(&daemon.log_file), PAGE_LOG_LINES);
            value["log"] = json!(log);
            value["host"] = Value::Null;
            value["env_keys"] = Value::Null;
            value
        })
        .collect();
    json!({
        "manager": report.manager,
        "manager_uptime_secs": unix_now().saturating_sub(report.manager.started_at),
        "registry_error": report.registry_error,
        "daemons": daemons,
        "now": unix_now(),
    })
}

/// Every metric `/metrics` serves: name, kind, help (README lists the same).
const STATES: [DaemonState; 8] = [
    DaemonState::Stopped,
    DaemonState::Starting,
    DaemonState::Ready,
    DaemonState::BackingOff,
    DaemonState::CrashLooping,
    DaemonState::Stopping,
    DaemonState::Failed,
    DaemonState::External,
];

/// `GET /metrics`, Prometheus text format.
pub fn metrics(report: &StatusReport) -> Response {
    let mut out = Exposition::new();
    out.family(
        "mcpsm_manager_uptime_seconds",
        Kind::Gauge,
        "Seconds since the manager started.",
    );
    out.sample(
        "mcpsm_manager_uptime_seconds",
        &[],
        unix_now().saturating_sub(report.manager.started_at) as f64,
    );
    let daemons = &report.daemons;
    let per_daemon =
        |out: &mut Exposition, name: &str, kind, help, value: &dyn Fn(usize) -> f64| {
            out.family(name, kind, help);
            for (i, daemon) in daemons.iter().enumerate() {
                out.sample(name, &[("daemon", &daemon.name)], value(i));
            }
        };
    out.family(
        "mcpsm_daemon_state",
        Kind::Gauge,
        "1 for the state the daemon is in, 0 for the others.",
    );
    for daemon in daemons {
        for state in STATES {
            out.sample(
                "mcpsm_daemon_state",
                &[("daemon", &daemon.name), ("state", state.as_str())],
                f64::from(u8::from(daemon.state == state)),
            );
        }
    }
    per_daemon(
        &mut out,
        "mcpsm_daemon_up",
        Kind::Gauge,
        "1 when the daemon is ready (answers MCP), else 0.",
        &|i| f64::from(u8::from(daemons[i].state == DaemonState::Ready)),
    );
    per_daemon(
        &mut out,
        "mcpsm_daemon_uptime_seconds",
        Kind::Gauge,
        "Seconds since the daemon's process started (0 when it does not run).",
        &|i| daemons[i].uptime_secs.unwrap_or(0) as f64,
    );
    per_daemon(
        &mut out,
        "mcpsm_daemon_restarts_total",
        Kind::Counter,
        "Restarts after the daemon exited or hung.",
        &|i| f64::from(daemons[i].restarts),
    );
    per_daemon(
        &mut out,
        "mcpsm_daemon_sessions",
        Kind::Gauge,
        "Open client sessions.",
        &|i| daemons[i].figures.sessions as f64,
    );
    per_daemon(
        &mut out,
        "mcpsm_daemon_sessions_recovered_total",
        Kind::Counter,
        "Client sessions a proxy reconnected after the daemon went away.",
        &|i| daemons[i].sessions_recovered as f64,
    );
    per_daemon(
        &mut out,
        "mcpsm_daemon_requests_total",
        Kind::Counter,
        "Client requests answered, errors included.",
        &|i| daemons[i].figures.requests as f64,
    );
    per_daemon(
        &mut out,
        "mcpsm_daemon_errors_total",
        Kind::Counter,
        "Client requests answered with a JSON-RPC error.",
        &|i| daemons[i].figures.errors as f64,
    );
    out.family(
        "mcpsm_daemon_request_duration_seconds",
        Kind::Histogram,
        "Time from a client request to its answer.",
    );
    for daemon in daemons {
        out.histogram(
            "mcpsm_daemon_request_duration_seconds",
            &[("daemon", &daemon.name)],
            &daemon.figures.totals,
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out.finish(),
    )
        .into_response()
}
