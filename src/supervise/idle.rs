//! Idle shutdown: which daemons have open client sessions, and for how long those without one
//! have had none.
//!
//! A session counts from the moment its proxy opens it until the proxy exits, whether or not
//! messages flow: each `mcpsm proxy --target NAME` holds a **lease** with the manager — one
//! long-lived `POST /session` whose streamed answer lasts as long as the proxy. The manager
//! writes a keep-alive byte on it every [`LEASE_PING`]; when the proxy is gone (exit, crash,
//! SIGKILL: the kernel closes its socket), that write fails, the answer is dropped and with it
//! the [`Lease`]. No timer guesses liveness, and the count is the same for every kind of daemon
//! (streamable HTTP, legacy SSE, or a stdio server behind mcpsm's host). For hosted stdio
//! daemons the manager also asks the host (`GET /mcpsm/status`) before stopping one: a client
//! that reaches the host without a proxy and holds its GET stream open counts too.
//!
//! The clock of a daemon with no session starts when its last lease ends, or at the last
//! `ensure` (a proxy about to open a session), or when the manager first saw it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often the manager writes a keep-alive byte on each lease (and so how soon it notices a
/// proxy that is gone: at most about two of these).
pub const LEASE_PING: Duration = Duration::from_secs(1);

/// How often the manager looks for idle daemons.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy)]
struct Activity {
    sessions: u32,
    /// When the daemon last had a session (or was ensured).
    since: Instant,
}

/// What the manager knows about a daemon's sessions right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Open proxy sessions (leases).
    pub sessions: u32,
    /// How long it has had none (zero while it has some).
    pub idle_for: Duration,
}

/// Open sessions per daemon name. Cheap to clone; shared by the API and the idle check.
#[derive(Clone, Default)]
pub struct Leases {
    inner: Arc<Mutex<HashMap<String, Activity>>>,
}

impl Leases {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Activity>> {
        // A poisoned map holds plain counters: still right to use.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn entry<'a>(map: &'a mut HashMap<String, Activity>, name: &str) -> &'a mut Activity {
        map.entry(name.to_owned()).or_insert(Activity {
            sessions: 0,
            since: Instant::now(),
        })
    }

    /// Opens a session of daemon `name`; it lasts until the returned lease is dropped.
    pub fn open(&self, name: &str) -> Lease {
        let mut map = self.lock();
        let activity = Self::entry(&mut map, name);
        activity.sessions += 1;
        activity.since = Instant::now();
        Lease {
            leases: self.clone(),
            name: name.to_owned(),
        }
    }

    /// Restarts the idle clock of `name` (an ensure, a session seen elsewhere).
    pub fn touch(&self, name: &str) {
        Self::entry(&mut self.lock(), name).since = Instant::now();
    }

    pub fn usage(&self, name: &str) -> Usage {
        let mut map = self.lock();
        let activity = Self::entry(&mut map, name);
        Usage {
            sessions: activity.sessions,
            idle_for: if activity.sessions > 0 {
                Duration::ZERO
            } else {
                activity.since.elapsed()
            },
        }
    }

    fn close(&self, name: &str) {
        let mut map = self.lock();
        let activity = Self::entry(&mut map, name);
        activity.sessions = activity.sessions.saturating_sub(1);
        activity.since = Instant::now();
    }
}

/// One open session; dropping it ends the session.
pub struct Lease {
    leases: Leases,
    name: String,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.leases.close(&self.name);
    }
}

/// Whether a daemon with `usage` and `timeout` should be stopped now, and if not, in how long
/// it will be (`None`: never, or not while sessions are open).
pub fn stop_in(usage: Usage, timeout: Option<Duration>) -> Option<Duration> {
    let timeout = timeout?;
    if usage.sessions > 0 {
        return None;
    }
    Some(timeout.saturating_sub(usage.idle_for))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_holds_the_daemon_and_its_end_starts_the_clock() {
        let leases = Leases::default();
        let lease = leases.open("memory");
        let second = leases.open("memory");
        assert_eq!(leases.usage("memory").sessions, 2);
        let timeout = Some(Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(stop_in(leases.usage("memory"), timeout), None);
        drop(lease);
        assert_eq!(stop_in(leases.usage("memory"), timeout), None);
        drop(second);
        let usage = leases.usage("memory");
        assert_eq!(usage.sessions, 0);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            stop_in(leases.usage("memory"), timeout),
            Some(Duration::ZERO)
        );
        assert_eq!(stop_in(leases.usage("memory"), None), None);
        leases.touch("memory");
        assert!(
            stop_in(leases.usage("memory"), Some(Duration::from_secs(60)))
                .is_some_and(|d| d > Duration::from_secs(50))
        );
    }
}
