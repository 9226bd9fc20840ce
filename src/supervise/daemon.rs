//! One actor per daemon: the only owner of its process.
//!
//! The rest of the manager holds a cloneable [`DaemonHandle`], sends it commands and reads its
//! [`DaemonStatus`] from a watch channel. The actor spawns the process, waits until it answers
//! an MCP `initialize` (ready), probes it at an interval (a hung daemon is restarted after
//! [`HEALTH_FAILURES`] failed probes), and restarts it with exponential backoff and jitter when
//! it exits unexpectedly. [`CRASH_LOOP_AFTER`] fast failures in a row make it crash-looping:
//! `ensure` then fails at once with the log tail, and a retry happens only every
//! [`CRASH_LOOP_RETRY`] or on an explicit start. Stopping sends SIGTERM to the daemon's process
//! group, then SIGKILL after the daemon's `stop-timeout`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::environment::{self, BaseEnvironment};
use super::logs;
use super::probe::probe;
use super::process::{self, Stopped};
use super::state::{DaemonRecord, StateFile};
use crate::config::{DaemonSpec, Launch, TransportKind};
use crate::paths::Paths;

/// Failed health probes in a row before a daemon counts as hung and is restarted.
pub const HEALTH_FAILURES: u32 = 3;
/// Fast failures in a row (exits or failed starts) that make a daemon crash-looping.
pub const CRASH_LOOP_AFTER: u32 = 5;
/// How often a crash-looping daemon is tried again on its own.
pub const CRASH_LOOP_RETRY: Duration = Duration::from_secs(60);
/// A daemon that stayed up this long has its failure count reset.
const HEALTHY_PERIOD: Duration = Duration::from_secs(30);
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const LOG_TAIL_LINES: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DaemonState {
    Stopped,
    Starting,
    Ready,
    BackingOff,
    CrashLooping,
    Stopping,
    Failed,
    /// A `url` daemon: mcpsm does not run it.
    External,
}

impl DaemonState {
    pub fn as_str(self) -> &'static str {
        match self {
            DaemonState::Stopped => "stopped",
            DaemonState::Starting => "starting",
            DaemonState::Ready => "ready",
            DaemonState::BackingOff => "backing-off",
            DaemonState::CrashLooping => "crash-looping",
            DaemonState::Stopping => "stopping",
            DaemonState::Failed => "failed",
            DaemonState::External => "external",
        }
    }

    /// States a start waits for: it either worked or will not without help.
    fn settled(self) -> bool {
        matches!(
            self,
            DaemonState::Ready
                | DaemonState::Failed
                | DaemonState::CrashLooping
                | DaemonState::Stopped
        )
    }
}

/// What the manager API reports about one daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub name: String,
    pub state: DaemonState,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    pub url: String,
    pub transport: String,
    /// Unix seconds when the current process was started.
    pub started_at: Option<u64>,
    pub uptime_secs: Option<u64>,
    pub restarts: u32,
    pub last_error: Option<String>,
    pub log_file: String,
    /// Taken over from a previous manager rather than started by this one.
    #[serde(default)]
    pub adopted: bool,
    /// Client sessions whose proxy reconnected them after this daemon went away.
    #[serde(default)]
    pub sessions_recovered: u64,
    /// Unix seconds of the last such recovery.
    #[serde(default)]
    pub last_recovery: Option<u64>,
    /// A running stdio daemon: its host's report of which server processes serve which
    /// sessions (`GET /mcpsm/status` of the host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<serde_json::Value>,
    /// A `auth = "oauth"` daemon: who it is logged in to and until when (never a token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth: Option<String>,
    /// The working directory the process was started in (the last start).
    #[serde(default)]
    pub cwd: Option<String>,
    /// The names of the variables of its environment, sorted; never their values.
    #[serde(default)]
    pub env_keys: Vec<String>,
    /// Its `idle-timeout` in milliseconds; `None`: never stopped for want of sessions.
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
    /// Open client sessions: proxies holding a lease with the manager.
    #[serde(default)]
    pub sessions: u32,
    /// A running daemon with no session: for how long it has had none.
    #[serde(default)]
    pub idle_secs: Option<u64>,
    /// A running daemon with no session: in how many seconds the manager stops it.
    #[serde(default)]
    pub idle_stop_in_secs: Option<u64>,
    /// Unix seconds when the manager last stopped it for having no session.
    #[serde(default)]
    pub idle_stopped_at: Option<u64>,
    /// Sessions, requests, errors and latency (see [`super::activity`]).
    #[serde(default)]
    pub figures: super::activity::Figures,
}

impl DaemonStatus {
    pub fn new(spec: &DaemonSpec, paths: &Paths) -> DaemonStatus {
        DaemonStatus {
            name: spec.name.clone(),
            state: if spec.launch.is_some() {
                DaemonState::Stopped
            } else {
                DaemonState::External
            },
            pid: None,
            port: spec.launch.as_ref().map(|l| l.port),
            url: spec.url.to_string(),
            transport: spec.transport.as_str().to_owned(),
            started_at: None,
            uptime_secs: None,
            restarts: 0,
            last_error: None,
            log_file: paths.daemon_log(&spec.name).display().to_string(),
            adopted: false,
            sessions_recovered: 0,
            last_recovery: None,
            host: None,
            oauth: spec.oauth.as_ref().map(|_| {
                crate::auth::describe(paths.home(), &crate::auth::daemon_key(&spec.name))
                    .unwrap_or_else(|| format!("not logged in; run `mcpsm login {}`", spec.name))
            }),
            cwd: None,
            env_keys: Vec::new(),
            idle_timeout_ms: spec
                .launch
                .as_ref()
                .and(spec.idle_timeout)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            sessions: 0,
            idle_secs: None,
            idle_stop_in_secs: None,
            idle_stopped_at: None,
            figures: Default::default(),
        }
    }

    /// Its `idle-timeout`, `None` for never.
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout_ms.map(Duration::from_millis)
    }

    /// Fills `uptime_secs` from `started_at`, as of now.
    pub fn with_uptime(mut self) -> DaemonStatus {
        self.uptime_secs = self.started_at.map(|t| unix_now().saturating_sub(t));
        self
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A daemon process the previous manager started and this one takes over.
pub struct Adopted {
    pub record: DaemonRecord,
}

/// What an actor needs from the manager.
pub struct Context {
    pub paths: Paths,
    pub state_file: Arc<StateFile>,
    /// The manager's API token (stdio hosts' secrets derive from it).
    pub token: String,
    /// Captured once, on first use (the manager starts that at once).
    pub environment: tokio::sync::OnceCell<BaseEnvironment>,
}

impl Context {
    pub fn new(paths: Paths, state_file: Arc<StateFile>, token: String) -> Context {
        Context {
            paths,
            state_file,
            token,
            environment: tokio::sync::OnceCell::new(),
        }
    }

    /// The base environment of every daemon, from the user's login shell (see
    /// [`super::environment`]).
    pub async fn base_environment(&self) -> &BaseEnvironment {
        self.environment.get_or_init(BaseEnvironment::capture).await
    }
}

enum Command {
    Start {
        spec: Box<DaemonSpec>,
        /// An explicit start: also retries a crash-looping or backing-off daemon now.
        force: bool,
        /// Why, for the daemon's log.
        reason: String,
        ack: oneshot::Sender<()>,
    },
    Stop {
        reason: String,
        ack: oneshot::Sender<()>,
    },
    /// The manager is exiting: stop the daemon, or leave it running for the next manager.
    /// A proxy reconnected a client session to this daemon.
    Recovered,
    /// No session for `idle_for`: stop a ready daemon (the next `ensure` starts it again).
    IdleStop { idle_for: Duration },
    Shutdown {
        stop: bool,
        ack: oneshot::Sender<()>,
    },
}

#[derive(Clone)]
pub struct DaemonHandle {
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<DaemonStatus>,
}

impl DaemonHandle {
    pub fn spawn(
        spec: DaemonSpec,
        context: Arc<Context>,
        adopted: Option<Adopted>,
    ) -> DaemonHandle {
        let (commands_tx, commands) = mpsc::channel(32);
        let mut status = DaemonStatus::new(&spec, &context.paths);
        let running = adopted.map(|a| {
            status.state = DaemonState::Ready;
            status.pid = Some(a.record.pid);
            status.started_at = Some(a.record.started_at);
            status.restarts = a.record.restarts;
            status.adopted = true;
            status.cwd = process::working_dir(a.record.pid).map(|d| d.display().to_string());
            status.env_keys = process::environment_keys(a.record.pid).unwrap_or_default();
            Running {
                process: Process::Adopted,
                pid: a.record.pid,
                start_time: Some(a.record.start_time),
                spawned_at: Instant::now(),
                started_at: a.record.started_at,
            }
        });
        let restarts = status.restarts;
        let (status_tx, status_rx) = watch::channel(status);
        let mut actor = Actor {
            log: context.paths.daemon_log(&spec.name),
            log_start: 0,
            spec,
            context,
            status: status_tx,
            commands,
            running,
            fast_failures: 0,
            restarts,
            health_failures: 0,
            timer: None,
            probe: None,
        };
        if actor.running.is_some() {
            actor.schedule_health();
        }
        tokio::spawn(async move { actor.run().await });
        DaemonHandle {
            commands: commands_tx,
            status: status_rx,
        }
    }

    pub fn status(&self) -> DaemonStatus {
        self.status.borrow().clone()
    }

    async fn command(&self, make: impl FnOnce(oneshot::Sender<()>) -> Command) {
        let (ack, done) = oneshot::channel();
        if self.commands.send(make(ack)).await.is_ok() {
            let _ = done.await;
        }
    }

    /// Starts the daemon if it is not running, and waits until it is ready or cannot be.
    /// `force` also retries a crash-looping or backing-off daemon at once.
    /// `reason` goes into the daemon's log when this starts it.
    pub async fn start(
        &self,
        spec: DaemonSpec,
        force: bool,
        reason: &str,
    ) -> Result<DaemonStatus, DaemonStatus> {
        let limit = spec.startup_timeout + BACKOFF_MAX + Duration::from_secs(5);
        self.command(|ack| Command::Start {
            spec: Box::new(spec),
            force,
            reason: reason.to_owned(),
            ack,
        })
        .await;
        let mut status = self.status.clone();
        let settled = tokio::time::timeout(limit, status.wait_for(|s| s.state.settled())).await;
        let status = match settled {
            Ok(Ok(status)) => status.clone(),
            _ => self.status(),
        };
        if status.state == DaemonState::Ready {
            Ok(status)
        } else {
            Err(status)
        }
    }

    /// `reason` goes into the daemon's log when this stops it.
    pub async fn stop(&self, reason: &str) -> DaemonStatus {
        self.command(|ack| Command::Stop {
            reason: reason.to_owned(),
            ack,
        })
        .await;
        self.status()
    }

    /// Counts a client session a proxy recovered (shown by `mcpsm status`).
    pub async fn recovered(&self) -> DaemonStatus {
        let _ = self.commands.send(Command::Recovered).await;
        self.status()
    }

    /// Stops the daemon for having had no session for `idle_for`, if it is still ready when
    /// the actor gets to it. Returns once the command is queued, so a start sent after it
    /// runs after it.
    pub async fn stop_idle(&self, idle_for: Duration) {
        let _ = self.commands.send(Command::IdleStop { idle_for }).await;
    }

    pub async fn shutdown(&self, stop: bool) {
        self.command(|ack| Command::Shutdown { stop, ack }).await;
    }
}

// One per running daemon: the size of a Windows `Child` (handles, pipes) does not matter.
#[allow(clippy::large_enum_variant)]
enum Process {
    Child(tokio::process::Child),
    /// Not our child: watched through the process table.
    Adopted,
}

struct Running {
    process: Process,
    pid: u32,
    start_time: Option<u64>,
    spawned_at: Instant,
    /// Unix seconds.
    started_at: u64,
}

#[derive(Clone, Copy, Debug)]
enum Timer {
    Restart,
    Health,
}

enum Event {
    Command(Option<Command>),
    Exited(String),
    Timer(Timer),
    Probed(Result<Duration, String>),
}

struct Actor {
    spec: DaemonSpec,
    log: PathBuf,
    /// Where the current run's output starts in `log`.
    log_start: u64,
    context: Arc<Context>,
    status: watch::Sender<DaemonStatus>,
    commands: mpsc::Receiver<Command>,
    running: Option<Running>,
    fast_failures: u32,
    restarts: u32,
    health_failures: u32,
    timer: Option<(tokio::time::Instant, Timer)>,
    probe: Option<JoinHandle<Result<Duration, String>>>,
}

impl Actor {
    async fn run(&mut self) {
        loop {
            match self.next_event().await {
                Event::Command(None) => return,
                Event::Command(Some(command)) => {
                    if self.on_command(command).await {
                        return;
                    }
                }
                Event::Exited(how) => self.on_exit(how).await,
                Event::Timer(timer) => self.on_timer(timer).await,
                Event::Probed(result) => self.on_probe(result).await,
            }
        }
    }

    async fn next_event(&mut self) -> Event {
        let adopted_pid = match &self.running {
            Some(Running {
                process: Process::Adopted,
                pid,
                start_time,
                ..
            }) => Some((*pid, *start_time)),
            _ => None,
        };
        let exited = async {
            match &mut self.running {
                Some(Running {
                    process: Process::Child(child),
                    ..
                }) => match child.wait().await {
                    Ok(status) => describe_exit(status),
                    Err(e) => format!("could not be waited for ({e})"),
                },
                Some(_) => {
                    // An adopted daemon is not our child: poll the process table.
                    let (pid, start_time) = adopted_pid.unwrap_or_default();
                    loop {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        if !process::is_alive(pid) || process::start_time(pid) != start_time {
                            return "exited".to_owned();
                        }
                    }
                }
                None => std::future::pending().await,
            }
        };
        let timer = async {
            match self.timer {
                Some((at, timer)) => {
                    tokio::time::sleep_until(at).await;
                    timer
                }
                None => std::future::pending().await,
            }
        };
        let probed = async {
            match &mut self.probe {
                Some(handle) => handle
                    .await
                    .unwrap_or_else(|e| Err(format!("the probe task failed: {e}"))),
                None => std::future::pending().await,
            }
        };
        // Every branch is cancel-safe: mpsc recv, Child::wait, sleeps, and a JoinHandle
        // polled by reference.
        tokio::select! {
            command = self.commands.recv() => Event::Command(command),
            how = exited => Event::Exited(how),
            timer = timer => Event::Timer(timer),
            result = probed => Event::Probed(result),
        }
    }

    fn state(&self) -> DaemonState {
        self.status.borrow().state
    }

    fn publish(&self, state: DaemonState, last_error: Option<Option<String>>) {
        self.status.send_modify(|status| {
            status.state = state;
            status.pid = self.running.as_ref().map(|r| r.pid);
            status.started_at = self.running.as_ref().map(|r| r.started_at);
            status.restarts = self.restarts;
            status.url = self.spec.url.to_string();
            status.transport = self.spec.transport.as_str().to_owned();
            status.port = self.spec.launch.as_ref().map(|l| l.port);
            status.idle_timeout_ms = self
                .spec
                .idle_timeout
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            if self.running.is_none() {
                status.adopted = false;
            }
            if let Some(error) = last_error {
                status.last_error = error;
            }
        });
    }

    /// Returns true when the actor should end.
    async fn on_command(&mut self, command: Command) -> bool {
        match command {
            Command::Start {
                spec,
                force,
                reason,
                ack,
            } => {
                self.spec = *spec;
                match self.state() {
                    DaemonState::Stopped | DaemonState::Failed | DaemonState::External => {
                        self.fast_failures = 0;
                        self.spawn(&reason).await;
                    }
                    DaemonState::CrashLooping | DaemonState::BackingOff if force => {
                        self.fast_failures = 0;
                        self.spawn(&reason).await;
                    }
                    _ => {}
                }
                let _ = ack.send(());
                false
            }
            Command::Stop { reason, ack } => {
                self.stop(&reason).await;
                self.publish(DaemonState::Stopped, None);
                self.status
                    .send_modify(|status| status.idle_stopped_at = None);
                let _ = ack.send(());
                false
            }
            Command::Recovered => {
                self.status.send_modify(|status| {
                    status.sessions_recovered += 1;
                    status.last_recovery = Some(unix_now());
                });
                false
            }
            Command::IdleStop { idle_for } => {
                if self.state() == DaemonState::Ready {
                    info!(
                        daemon = %self.spec.name,
                        "stopping: no client session for {}s (idle-timeout {:?}); the next proxy starts it again",
                        idle_for.as_secs(),
                        self.spec.idle_timeout.unwrap_or_default()
                    );
                    self.stop(&format!(
                        "no client session for {}s (idle-timeout {:?}); the next proxy starts it again",
                        idle_for.as_secs(),
                        self.spec.idle_timeout.unwrap_or_default()
                    ))
                    .await;
                    self.publish(DaemonState::Stopped, Some(None));
                    self.status
                        .send_modify(|status| status.idle_stopped_at = Some(unix_now()));
                }
                false
            }
            Command::Shutdown { stop, ack } => {
                if stop {
                    self.stop("the manager is shutting down (`mcpsm manager stop`)")
                        .await;
                    self.publish(DaemonState::Stopped, None);
                }
                let _ = ack.send(());
                true
            }
        }
    }

    async fn spawn(&mut self, reason: &str) {
        self.timer = None;
        if let Some(probe) = self.probe.take() {
            probe.abort();
        }
        let Some(launch) = self.spec.launch.clone() else {
            return;
        };
        if !process::port_is_free(launch.port) {
            let error = format!(
                "{}\nhint: stop that process, or give daemon \"{}\" another `port` ({})",
                process::describe_port_in_use(launch.port),
                self.spec.name,
                self.spec.defined_at
            );
            warn!(daemon = %self.spec.name, "{error}");
            return self.publish(DaemonState::Failed, Some(Some(error)));
        }
        let launch = self
            .context
            .base_environment()
            .await
            .apply(launch, self.context.paths.home());
        self.status.send_modify(|status| {
            status.cwd = launch.cwd.as_ref().map(|d| d.display().to_string());
            status.env_keys = environment::keys_of(&launch.env);
            status.idle_stopped_at = None;
        });
        let launch = match stdio_host_launch(&self.spec, launch) {
            Ok(launch) => launch,
            Err(e) => {
                warn!(daemon = %self.spec.name, "{e}");
                return self.publish(DaemonState::Failed, Some(Some(e.to_string())));
            }
        };
        self.log_start = logs::end_of(&self.log);
        let child = match process::spawn_daemon(&launch, &self.log) {
            Ok(child) => child,
            Err(e) => {
                warn!(daemon = %self.spec.name, "{e}");
                return self.publish(DaemonState::Failed, Some(Some(e.to_string())));
            }
        };
        let pid = child.id().unwrap_or_default();
        let start_time = process::start_time(pid);
        let started_at = unix_now();
        info!(daemon = %self.spec.name, pid, "started");
        logs::append_event(&self.log, &format!("started pid {pid}: {reason}"));
        self.running = Some(Running {
            process: Process::Child(child),
            pid,
            start_time,
            spawned_at: Instant::now(),
            started_at,
        });
        if let Some(start_time) = start_time {
            let record = DaemonRecord {
                pid,
                start_time,
                port: launch.port,
                started_at,
                restarts: self.restarts,
            };
            self.context
                .state_file
                .set_daemon(&self.spec.name, Some(record))
                .await;
        }
        self.health_failures = 0;
        let spec = self.spec.clone();
        self.probe = Some(tokio::spawn(wait_ready(spec)));
        self.publish(DaemonState::Starting, None);
    }

    /// Stops the process group, if anything runs; `reason` goes into the log.
    async fn stop(&mut self, reason: &str) {
        self.timer = None;
        if let Some(probe) = self.probe.take() {
            probe.abort();
        }
        if self.running.is_none() {
            return;
        }
        self.publish(DaemonState::Stopping, None);
        let Some(mut running) = self.running.take() else {
            return;
        };
        let child = match &mut running.process {
            Process::Child(child) => Some(child),
            Process::Adopted => None,
        };
        let grace = self.spec.stop_timeout;
        let pid = running.pid;
        logs::append_event(&self.log, &format!("stopping pid {pid}: {reason}"));
        let stopped = process::stop_group(running.pid, child, grace).await;
        let how = match stopped {
            Stopped::Gracefully => "stopped".to_owned(),
            Stopped::Killed => format!("killed (still running {grace:?} after SIGTERM)"),
            Stopped::Terminated => "stopped (job terminated)".to_owned(),
            Stopped::Stuck => "stopped, but processes of its group survived SIGKILL".to_owned(),
        };
        logs::append_event(&self.log, &format!("pid {pid} {how}"));
        match stopped {
            Stopped::Gracefully => info!(daemon = %self.spec.name, "stopped"),
            Stopped::Killed => warn!(
                daemon = %self.spec.name,
                "did not stop within {grace:?} of SIGTERM; killed"
            ),
            Stopped::Terminated => info!(daemon = %self.spec.name, "stopped (job terminated)"),
            Stopped::Stuck => warn!(
                daemon = %self.spec.name,
                "processes of its group survived SIGKILL"
            ),
        }
        self.context
            .state_file
            .set_daemon(&self.spec.name, None)
            .await;
    }

    async fn on_exit(&mut self, how: String) {
        let pid = self.running.as_ref().map_or(0, |r| r.pid);
        if pid != 0 {
            crate::platform::reap_leftovers(pid);
        }
        let error = format!(
            "daemon \"{}\" (pid {pid}) {how}; {}",
            self.spec.name,
            logs::run_tail_for_message(&self.log, self.log_start, LOG_TAIL_LINES)
        );
        self.fail_attempt(error).await;
    }

    async fn on_timer(&mut self, timer: Timer) {
        self.timer = None;
        match timer {
            Timer::Restart => {
                self.restarts += 1;
                let reason = format!("restart {} after the failure above", self.restarts);
                self.spawn(&reason).await;
            }
            Timer::Health => {
                let spec = self.spec.clone();
                self.probe = Some(tokio::spawn(
                    async move { probe(&spec, PROBE_TIMEOUT).await },
                ));
            }
        }
    }

    async fn on_probe(&mut self, result: Result<Duration, String>) {
        self.probe = None;
        match (self.state(), result) {
            (DaemonState::Starting, Ok(latency)) => {
                info!(daemon = %self.spec.name, ?latency, "ready");
                self.publish(DaemonState::Ready, Some(None));
                self.schedule_health();
            }
            (DaemonState::Starting, Err(why)) => {
                // Not a crash: a daemon that does not answer in time is stopped and left
                // failed (with its output) until someone starts it again.
                let error = format!(
                    "daemon \"{}\" did not become ready within {:?}: {why}; {}\nhint: if it is just slow, raise its `startup-timeout` ({})",
                    self.spec.name,
                    self.spec.startup_timeout,
                    logs::run_tail_for_message(&self.log, self.log_start, LOG_TAIL_LINES),
                    self.spec.defined_at
                );
                warn!(daemon = %self.spec.name, "{error}");
                self.stop(&format!(
                    "it did not become ready within {:?}",
                    self.spec.startup_timeout
                ))
                .await;
                self.publish(DaemonState::Failed, Some(Some(error)));
            }
            (DaemonState::Ready, Ok(_)) => {
                self.health_failures = 0;
                self.schedule_health();
            }
            (DaemonState::Ready, Err(why)) => {
                self.health_failures += 1;
                warn!(
                    daemon = %self.spec.name,
                    "health probe {}/{HEALTH_FAILURES} failed: {why}",
                    self.health_failures
                );
                if self.health_failures >= HEALTH_FAILURES {
                    let error = format!(
                        "daemon \"{}\" stopped answering ({HEALTH_FAILURES} health probes failed, last: {why}); restarted it",
                        self.spec.name
                    );
                    self.fail_attempt(error).await;
                } else {
                    self.schedule_health();
                }
            }
            _ => {}
        }
    }

    fn schedule_health(&mut self) {
        if !self.spec.health_interval.is_zero() {
            let at = tokio::time::Instant::now() + self.spec.health_interval;
            self.timer = Some((at, Timer::Health));
        }
    }

    /// The daemon died or never became ready: clean up, then back off or declare a crash loop.
    async fn fail_attempt(&mut self, error: String) {
        warn!(daemon = %self.spec.name, "{error}");
        let lived = self.running.as_ref().map(|r| r.spawned_at.elapsed());
        // The cause without the output it quotes (the log has that just above).
        let first_line = error
            .lines()
            .next()
            .unwrap_or_default()
            .split("; its last output")
            .next()
            .unwrap_or_default()
            .split("; it wrote nothing")
            .next()
            .unwrap_or_default()
            .to_owned();
        self.stop(&first_line).await;
        if lived.is_some_and(|l| l >= HEALTHY_PERIOD) {
            self.fast_failures = 0;
        }
        self.fast_failures += 1;
        let (state, delay) = if self.fast_failures >= CRASH_LOOP_AFTER {
            (DaemonState::CrashLooping, CRASH_LOOP_RETRY)
        } else {
            (DaemonState::BackingOff, backoff(self.fast_failures))
        };
        self.timer = Some((tokio::time::Instant::now() + delay, Timer::Restart));
        let next = if state == DaemonState::CrashLooping {
            format!("crash-looping ({CRASH_LOOP_AFTER} quick failures in a row): next try in {delay:?}, or `mcpsm start {}`", self.spec.name)
        } else {
            format!("restarting in {:.1}s", delay.as_secs_f64())
        };
        logs::append_event(&self.log, &format!("{first_line}; {next}"));
        self.publish(state, Some(Some(error)));
    }
}

/// A `transport = "stdio"` daemon runs behind `mcpsm stdio-host`, which serves it as
/// streamable HTTP on the daemon's port; other daemons run as they are.
fn stdio_host_launch(spec: &DaemonSpec, launch: Launch) -> Result<Launch, process::SpawnError> {
    if spec.transport != TransportKind::Stdio {
        return Ok(launch);
    }
    // Report a missing server command now, by name, rather than from inside the host; the
    // host passes its environment (the daemon's) on to the server.
    let program = process::find_program_for(&launch.command, launch.cwd.as_deref(), &launch.env)?;
    let exe = std::env::current_exe().map_err(|cause| process::SpawnError::Spawn {
        command: "mcpsm stdio-host".to_owned(),
        cause,
    })?;
    let mut args = vec![
        "stdio-host".to_owned(),
        "--port".to_owned(),
        launch.port.to_string(),
        "--name".to_owned(),
        spec.name.clone(),
        "--sharing".to_owned(),
        spec.sharing.as_str().to_owned(),
        "--session-idle-timeout".to_owned(),
        format!("{}ms", spec.session_idle_timeout.as_millis()),
        "--session-grace".to_owned(),
        format!("{}ms", spec.session_grace.as_millis()),
        "--max-sessions".to_owned(),
        spec.max_sessions.to_string(),
        "--health-interval".to_owned(),
        format!("{}ms", spec.health_interval.as_millis()),
        "--".to_owned(),
        program.display().to_string(),
    ];
    args.extend(launch.args);
    let mut env = launch.env;
    if let Some(secret) = &spec.host_secret {
        env.push((crate::host::hub::SECRET_ENV.to_owned(), secret.clone()));
    }
    Ok(Launch {
        command: exe.display().to_string(),
        args,
        env,
        ..launch
    })
}

/// Polls `initialize` until the daemon answers or its startup timeout passes.
async fn wait_ready(spec: DaemonSpec) -> Result<Duration, String> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        let left = spec.startup_timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err("no answer".to_owned());
        }
        match probe(&spec, left.min(PROBE_TIMEOUT)).await {
            Ok(_) => return Ok(started.elapsed()),
            Err(why) if started.elapsed() + pause >= spec.startup_timeout => return Err(why),
            Err(_) => {}
        }
        tokio::time::sleep(pause).await;
        // Refused connections cost nothing: look often, so a daemon is used once it is up.
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// 0.5 s, 1 s, 2 s, … up to 30 s, each ±25 % so restarts of many daemons spread out.
pub fn backoff(failures: u32) -> Duration {
    let exponential = BACKOFF_BASE.saturating_mul(1 << failures.saturating_sub(1).min(16));
    let capped = exponential.min(BACKOFF_MAX);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let jitter = 0.75 + f64::from(nanos % 1000) / 2000.0;
    capped.mul_f64(jitter)
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    crate::platform::describe_exit(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let first = backoff(1);
        assert!(
            first >= Duration::from_millis(375) && first <= Duration::from_millis(625),
            "{first:?}"
        );
        let tenth = backoff(10);
        assert!(tenth <= BACKOFF_MAX.mul_f64(1.25), "{tenth:?}");
        assert!(backoff(3) > backoff(1));
    }
}
