//! The stdio host's figures for `GET /metrics`, in the Prometheus text format (0.0.4).
//!
//! Counters are atomics bumped on the request path (no lock shared across sessions); gauges
//! are read from the host's state when scraped; the text is written by the renderer the
//! manager's `/metrics` uses ([`crate::metrics::Exposition`]).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::metrics::{Exposition, Kind};

/// What the host counts.
#[derive(Default)]
pub struct Counters {
    /// HTTP requests answered, by status class (index 1..=5: 1xx..5xx).
    pub responses: [AtomicU64; 6],
    /// Requests refused for want of a credential (401).
    pub unauthorized: AtomicU64,
    /// Requests refused by the Host/Origin check (403).
    pub forbidden: AtomicU64,
    /// Requests naming a session this host does not know (404: another replica's, or ended).
    pub unknown_sessions: AtomicU64,
    /// Sessions opened (initialize answered).
    pub sessions_opened: AtomicU64,
    /// Sessionless (2026-07-28) POSTs served.
    pub sessionless_requests: AtomicU64,
    /// Requests being served now.
    pub in_flight: AtomicU64,
}

impl Counters {
    pub fn count_status(&self, status: u16) {
        let class = usize::from(status / 100).min(5);
        self.responses[class].fetch_add(1, Ordering::Relaxed);
    }
}

/// The figures read at scrape time.
pub struct Gauges {
    pub sessions: usize,
    pub children: usize,
    pub ready: bool,
    pub draining: bool,
}

fn counter(out: &mut Exposition, name: &str, help: &str, value: &AtomicU64) {
    out.family(name, Kind::Counter, help);
    out.sample(name, &[], value.load(Ordering::Relaxed) as f64);
}

fn gauge(out: &mut Exposition, name: &str, help: &str, value: f64) {
    out.family(name, Kind::Gauge, help);
    out.sample(name, &[], value);
}

/// The text `/metrics` answers.
pub fn render(daemon: &str, counters: &Counters, gauges: &Gauges) -> String {
    let mut out = Exposition::new();
    out.family(
        "mcpsm_host_info",
        Kind::Gauge,
        "The served daemon's name and mcpsm's version.",
    );
    out.sample(
        "mcpsm_host_info",
        &[("daemon", daemon), ("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    let responses = "mcpsm_host_http_responses_total";
    out.family(responses, Kind::Counter, "HTTP responses by status class.");
    for (class, count) in counters.responses.iter().enumerate().skip(1) {
        let label = format!("{class}xx");
        out.sample(
            responses,
            &[("code", &label)],
            count.load(Ordering::Relaxed) as f64,
        );
    }
    counter(
        &mut out,
        "mcpsm_host_unauthorized_total",
        "Requests refused for want of an accepted credential (401).",
        &counters.unauthorized,
    );
    counter(
        &mut out,
        "mcpsm_host_forbidden_total",
        "Requests refused by the Host/Origin check (403).",
        &counters.forbidden,
    );
    counter(
        &mut out,
        "mcpsm_host_unknown_sessions_total",
        "Requests naming a session this host does not know (404; the client re-initializes).",
        &counters.unknown_sessions,
    );
    counter(
        &mut out,
        "mcpsm_host_sessions_opened_total",
        "Sessions opened (initialize answered).",
        &counters.sessions_opened,
    );
    counter(
        &mut out,
        "mcpsm_host_sessionless_requests_total",
        "Sessionless (MCP 2026-07-28) POSTs served.",
        &counters.sessionless_requests,
    );
    gauge(
        &mut out,
        "mcpsm_host_requests_in_flight",
        "HTTP requests being served (SSE streams included).",
        counters.in_flight.load(Ordering::Relaxed) as f64,
    );
    gauge(
        &mut out,
        "mcpsm_host_sessions",
        "Sessions open.",
        gauges.sessions as f64,
    );
    gauge(
        &mut out,
        "mcpsm_host_server_processes",
        "MCP server processes running.",
        gauges.children as f64,
    );
    gauge(
        &mut out,
        "mcpsm_host_ready",
        "1 when /readyz answers 200.",
        f64::from(u8::from(gauges.ready)),
    );
    gauge(
        &mut out,
        "mcpsm_host_draining",
        "1 once SIGTERM was received.",
        f64::from(u8::from(gauges.draining)),
    );
    out.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let counters = Counters::default();
        counters.count_status(200);
        counters.count_status(404);
        counters.unknown_sessions.fetch_add(1, Ordering::Relaxed);
        let text = render(
            "mem\"ory",
            &counters,
            &Gauges {
                sessions: 3,
                children: 1,
                ready: true,
                draining: false,
            },
        );
        assert!(
            text.contains("mcpsm_host_info{daemon=\"mem\\\"ory\",version="),
            "{text}"
        );
        assert!(
            text.contains("mcpsm_host_http_responses_total{code=\"2xx\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("mcpsm_host_http_responses_total{code=\"4xx\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE mcpsm_host_unknown_sessions_total counter\n"),
            "{text}"
        );
        assert!(text.contains("mcpsm_host_sessions 3\n"), "{text}");
        assert!(text.contains("mcpsm_host_ready 1\n"), "{text}");
    }
}
