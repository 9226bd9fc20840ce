//! What the daemons are doing: the request figures the manager adds up per daemon.
//!
//! Figures arise where requests pass. Every `mcpsm proxy` session of a managed daemon counts
//! its answered requests ([`crate::metrics::Counters`]) and sends its cumulative totals to the
//! manager (`POST /report`) when they changed, at most every [`REPORT_EVERY`], with a
//! heartbeat every [`HEARTBEAT_EVERY`] and a last report when it ends; a live reporter is an
//! open session. A stdio daemon's host counts every request it serves, from any client, and
//! the manager reads that from the host's status report; for such daemons the host's figures
//! are used (a proxy's would count the same requests twice) and its session count too.
//!
//! Totals only grow: a reporter that ends (or goes silent for [`REPORTER_TTL`]) has its last
//! totals kept, and a host that restarts (a new pid) has its old totals kept, so a daemon's
//! figures are counters in the Prometheus sense for the life of the manager. Rates and
//! percentiles are worked out over the last minute from samples the manager takes every
//! [`SAMPLE_EVERY`] (the last [`SAMPLES`] of them also make the page's chart).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::metrics::Totals;

/// How often a proxy with new figures reports them, at most.
pub const REPORT_EVERY: Duration = Duration::from_secs(2);
/// How often a proxy with nothing new reports anyway (it is still there).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(30);
/// A reporter silent this long is gone (its process was killed, say).
pub const REPORTER_TTL: Duration = Duration::from_secs(75);
/// How often the manager samples every daemon's totals.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Samples kept per daemon: five minutes.
pub const SAMPLES: usize = 60;
/// The window of the per-minute rates and the percentiles.
const WINDOW: Duration = Duration::from_secs(60);

/// `POST /report` from a proxy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxyReport {
    pub name: String,
    /// Unique per proxy session (its pid and start time).
    pub session: String,
    pub totals: Totals,
    /// The session ended: this is its last report.
    #[serde(default)]
    pub closed: bool,
}

/// A daemon's figures, as the API and the page show them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Figures {
    /// Open client sessions (proxies reporting, or the host's sessions).
    pub sessions: u64,
    /// Since the manager started.
    pub requests: u64,
    pub errors: u64,
    /// Over the last minute.
    pub requests_per_minute: f64,
    pub errors_per_minute: f64,
    /// Latency percentiles over the last minute, in milliseconds (the bucket bound).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Requests per [`SAMPLE_EVERY`] over the last samples, oldest first (the chart).
    pub history: Vec<u64>,
    /// Cumulative, for `/metrics`.
    #[serde(skip)]
    pub totals: Totals,
}

struct Reporter {
    totals: Totals,
    seen: Instant,
}

struct Daemon {
    /// When the manager first heard of the daemon's figures.
    since: Instant,
    reporters: HashMap<String, Reporter>,
    /// Totals of reporters that ended.
    ended: Totals,
    /// The host's pid and totals, when the daemon is a stdio daemon that answered.
    host: Option<(u64, Totals)>,
    host_sessions: Option<u64>,
    /// Totals of earlier host processes.
    host_ended: Totals,
    samples: VecDeque<(Instant, Totals)>,
}

impl Default for Daemon {
    fn default() -> Daemon {
        Daemon {
            since: Instant::now(),
            reporters: HashMap::new(),
            ended: Totals::default(),
            host: None,
            host_sessions: None,
            host_ended: Totals::default(),
            samples: VecDeque::new(),
        }
    }
}

impl Daemon {
    fn expire(&mut self, now: Instant) {
        let ended = &mut self.ended;
        self.reporters.retain(|_, r| {
            let live = now.duration_since(r.seen) < REPORTER_TTL;
            if !live {
                ended.add(&r.totals);
            }
            live
        });
    }

    fn totals(&self) -> Totals {
        let mut totals = Totals::default();
        if self.host.is_some() || !self.host_ended.buckets.is_empty() {
            totals.add(&self.host_ended);
            if let Some((_, host)) = &self.host {
                totals.add(host);
            }
        } else {
            totals.add(&self.ended);
            for reporter in self.reporters.values() {
                totals.add(&reporter.totals);
            }
        }
        totals
    }

    fn sessions(&self) -> u64 {
        self.host_sessions.unwrap_or(self.reporters.len() as u64)
    }
}

/// Every daemon's figures; shared by the manager's API handlers and its sampler.
#[derive(Default)]
pub struct Activity {
    daemons: Mutex<HashMap<String, Daemon>>,
}

impl Activity {
    fn daemons(&self) -> std::sync::MutexGuard<'_, HashMap<String, Daemon>> {
        self.daemons.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn report(&self, report: ProxyReport) {
        let mut daemons = self.daemons();
        let daemon = daemons.entry(report.name).or_default();
        if report.closed {
            daemon.reporters.remove(&report.session);
            daemon.ended.add(&report.totals);
        } else {
            daemon.reporters.insert(
                report.session,
                Reporter {
                    totals: report.totals,
                    seen: Instant::now(),
                },
            );
        }
    }

    /// A stdio daemon's host report (`GET /mcpsm/status`): its pid, figures and sessions.
    /// `None` when the host does not run or did not answer (its last totals are kept).
    pub fn host(&self, name: &str, report: Option<&serde_json::Value>) {
        let mut daemons = self.daemons();
        let daemon = daemons.entry(name.to_owned()).or_default();
        let Some(report) = report else {
            daemon.host_sessions = None;
            return;
        };
        let totals: Option<Totals> = serde_json::from_value(report["figures"].clone()).ok();
        let pid = report["pid"].as_u64().unwrap_or(0);
        if let Some(totals) = totals {
            if let Some((old_pid, old)) = daemon.host.take() {
                if old_pid == pid {
                    daemon.host = Some((pid, old));
                } else {
                    daemon.host_ended.add(&old);
                }
            }
            daemon.host = Some((pid, totals));
        }
        let sessions = report["children"].as_array().map(|children| {
            children
                .iter()
                .map(|c| c["sessions"].as_array().map_or(0, Vec::len) as u64)
                .sum()
        });
        daemon.host_sessions = sessions;
    }

    /// Takes a sample of every daemon's totals (the sampler calls this every [`SAMPLE_EVERY`]).
    pub fn sample(&self) {
        let now = Instant::now();
        for daemon in self.daemons().values_mut() {
            daemon.expire(now);
            let totals = daemon.totals();
            daemon.samples.push_back((now, totals));
            while daemon.samples.len() > SAMPLES + 1 {
                daemon.samples.pop_front();
            }
        }
    }

    /// The figures of daemon `name` as of now.
    pub fn figures(&self, name: &str) -> Figures {
        let now = Instant::now();
        let mut daemons = self.daemons();
        let Some(daemon) = daemons.get_mut(name) else {
            return Figures::default();
        };
        daemon.expire(now);
        let totals = daemon.totals();
        // The oldest sample within the window is the baseline; while the figures are younger
        // than the window, everything since they began counts.
        let young = daemon
            .samples
            .front()
            .is_none_or(|(at, _)| now.duration_since(*at) <= WINDOW);
        let baseline = if young {
            Some((now.duration_since(daemon.since), Totals::default()))
        } else {
            daemon
                .samples
                .iter()
                .find(|(at, _)| now.duration_since(*at) <= WINDOW)
                .map(|(at, t)| (now.duration_since(*at), t.clone()))
        };
        let (elapsed, window) = match baseline {
            Some((elapsed, earlier)) => (elapsed, totals.since(&earlier)),
            None => (SAMPLE_EVERY, Totals::default()),
        };
        let per_minute = |n: u64| n as f64 * 60.0 / elapsed.as_secs_f64().max(1.0);
        let history = daemon
            .samples
            .iter()
            .zip(daemon.samples.iter().skip(1))
            .map(|((_, a), (_, b))| b.requests.saturating_sub(a.requests))
            .collect();
        Figures {
            sessions: daemon.sessions(),
            requests: totals.requests,
            errors: totals.errors,
            requests_per_minute: round(per_minute(window.requests)),
            errors_per_minute: round(per_minute(window.errors)),
            p50_ms: window.quantile_ms(0.5),
            p99_ms: window.quantile_ms(0.99),
            history,
            totals,
        }
    }
}

fn round(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Counters;

    fn report(session: &str, counters: &Counters, closed: bool) -> ProxyReport {
        ProxyReport {
            name: "a".into(),
            session: session.into(),
            totals: counters.snapshot(),
            closed,
        }
    }

    #[test]
    fn proxies_add_up_and_ended_sessions_keep_their_counts() {
        let activity = Activity::default();
        let one = Counters::new();
        let two = Counters::new();
        one.record(Duration::from_millis(1), false);
        two.record(Duration::from_millis(1), true);
        activity.report(report("1", &one, false));
        activity.report(report("2", &two, false));
        let figures = activity.figures("a");
        assert_eq!(
            (figures.sessions, figures.requests, figures.errors),
            (2, 2, 1)
        );
        one.record(Duration::from_millis(1), false);
        activity.report(report("1", &one, true));
        let figures = activity.figures("a");
        assert_eq!((figures.sessions, figures.requests), (1, 3));
    }

    #[test]
    fn a_host_replaces_the_proxies_and_a_new_host_pid_keeps_the_old_totals() {
        let activity = Activity::default();
        let proxy = Counters::new();
        proxy.record(Duration::from_millis(1), false);
        activity.report(report("1", &proxy, false));
        let host = Counters::new();
        for _ in 0..5 {
            host.record(Duration::from_millis(1), false);
        }
        let status = |pid: u64, totals: Totals| serde_json::json!({"pid": pid, "figures": totals, "children": [{"sessions": [{}, {}]}]});
        activity.host("a", Some(&status(10, host.snapshot())));
        let figures = activity.figures("a");
        assert_eq!((figures.sessions, figures.requests), (2, 5));
        activity.host("a", Some(&status(11, Counters::new().snapshot())));
        assert_eq!(activity.figures("a").requests, 5);
    }
}
