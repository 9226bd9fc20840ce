//! The manager's state: one [`DaemonHandle`] per daemon in use, the registry it reads on every
//! request (so edits apply without a restart), and adoption of daemons a previous manager left
//! running.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::activity::Activity;
use super::daemon::{unix_now, Adopted, Context, DaemonHandle, DaemonState, DaemonStatus};
use super::idle::{self, Lease, Leases};
use super::probe::probe;
use super::process;
use super::secret;
use super::state::ManagerState;
use crate::config::{DaemonSpec, Registry, TransportKind};

/// Who the manager is; `GET /ping` answers this.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManagerInfo {
    pub pid: u32,
    pub port: u16,
    pub version: String,
    pub home: String,
    pub registry: String,
    /// Unix seconds.
    pub started_at: u64,
}

/// `GET /status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub manager: ManagerInfo,
    pub daemons: Vec<DaemonStatus>,
    /// Set when the registry cannot be read: only daemons already in use are listed.
    #[serde(default)]
    pub registry_error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("no daemon named `{name}` in the registry (known: {})", known.join(", "))]
    UnknownDaemon { name: String, known: Vec<String> },
    #[error("{0}")]
    Registry(String),
    #[error("daemon \"{name}\" is reached at {url}; mcpsm does not start or stop it")]
    NotManaged { name: String, url: String },
    #[error("{}", not_ready_message(.0))]
    NotReady(Box<DaemonStatus>),
}

fn not_ready_message(status: &DaemonStatus) -> String {
    let mut message = format!("daemon \"{}\" is {}", status.name, status.state.as_str());
    if let Some(error) = &status.last_error {
        message.push_str(": ");
        message.push_str(error);
    }
    message
}

pub struct Manager {
    context: Arc<Context>,
    registry_path: PathBuf,
    registry_explicit: bool,
    daemons: tokio::sync::Mutex<BTreeMap<String, DaemonHandle>>,
    /// Open client sessions per daemon (see [`idle`]).
    leases: Leases,
    /// Held while an idle daemon is chosen and its stop queued, and by every start before it
    /// restarts the idle clock: a daemon being ensured is never stopped as idle.
    idle_gate: tokio::sync::Mutex<()>,
    pub info: ManagerInfo,
    /// Request figures from proxies and hosts.
    pub activity: Activity,
}

impl Manager {
    pub fn new(
        context: Arc<Context>,
        registry_path: PathBuf,
        registry_explicit: bool,
        port: u16,
    ) -> Manager {
        let info = ManagerInfo {
            pid: std::process::id(),
            port,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            home: context.paths.home().display().to_string(),
            registry: registry_path.display().to_string(),
            started_at: unix_now(),
        };
        Manager {
            context,
            registry_path,
            registry_explicit,
            daemons: tokio::sync::Mutex::new(BTreeMap::new()),
            leases: Leases::default(),
            idle_gate: tokio::sync::Mutex::new(()),
            info,
            activity: Activity::default(),
        }
    }

    fn registry(&self) -> Result<Registry, ManagerError> {
        Registry::load(&self.registry_path, self.registry_explicit)
            .map_err(|e| ManagerError::Registry(e.to_string()))
    }

    /// The daemon's spec from the registry as it is now, and its actor (created on first use).
    async fn daemon(&self, name: &str) -> Result<(DaemonHandle, DaemonSpec), ManagerError> {
        let registry = self.registry()?;
        if !registry.names().any(|n| n == name) {
            return Err(ManagerError::UnknownDaemon {
                name: name.to_owned(),
                known: registry.names().map(str::to_owned).collect(),
            });
        }
        let mut spec = registry
            .daemon(name)
            .map_err(|e| ManagerError::Registry(e.to_string()))?;
        secret::authorize(&mut spec, &self.context.token);
        if spec.launch.is_none() {
            return Err(ManagerError::NotManaged {
                name: name.to_owned(),
                url: spec.url.to_string(),
            });
        }
        let mut daemons = self.daemons.lock().await;
        let handle = daemons
            .entry(name.to_owned())
            .or_insert_with(|| DaemonHandle::spawn(spec.clone(), self.context.clone(), None))
            .clone();
        Ok((handle, spec))
    }

    /// The URL and `auth = "oauth"` keys of url daemon `name`, as the registry has them now.
    pub fn oauth_daemon(
        &self,
        name: &str,
    ) -> Result<(url::Url, crate::config::OAuthSpec), ManagerError> {
        let registry = self.registry()?;
        if !registry.names().any(|n| n == name) {
            return Err(ManagerError::UnknownDaemon {
                name: name.to_owned(),
                known: registry.names().map(str::to_owned).collect(),
            });
        }
        let spec = registry
            .daemon(name)
            .map_err(|e| ManagerError::Registry(e.to_string()))?;
        match spec.oauth {
            Some(oauth) => Ok((spec.url, oauth)),
            None => Err(ManagerError::Registry(format!(
                "daemon \"{name}\" does not use OAuth ({}); add `auth = \"oauth\"` to its table",
                spec.defined_at
            ))),
        }
    }

    /// Starts the daemon unless it runs; waits until it is ready (or cannot be).
    pub async fn ensure(&self, name: &str) -> Result<DaemonStatus, ManagerError> {
        let (handle, spec) = self.daemon(name).await?;
        self.touch(name).await;
        self.with_usage(ready(
            handle.start(spec, false, "a client session needs it").await,
        ))
    }

    /// Like `ensure`, but also retries a crash-looping or backing-off daemon at once.
    pub async fn start(&self, name: &str) -> Result<DaemonStatus, ManagerError> {
        let (handle, spec) = self.daemon(name).await?;
        self.touch(name).await;
        self.with_usage(ready(handle.start(spec, true, "`mcpsm start`").await))
    }

    /// Restarts the idle clock of `name`, after any idle stop already decided was queued.
    async fn touch(&self, name: &str) {
        let _gate = self.idle_gate.lock().await;
        self.leases.touch(name);
    }

    /// Opens a client session of daemon `name` (a proxy's lease): the daemon is not stopped
    /// as idle while the lease lives. Refuses names the registry does not know.
    pub async fn open_session(&self, name: &str) -> Result<Lease, ManagerError> {
        let registry = self.registry()?;
        if !registry.names().any(|n| n == name) {
            return Err(ManagerError::UnknownDaemon {
                name: name.to_owned(),
                known: registry.names().map(str::to_owned).collect(),
            });
        }
        let _gate = self.idle_gate.lock().await;
        Ok(self.leases.open(name))
    }

    /// Fills the session count and idle figures of a status.
    fn usage_of(&self, mut status: DaemonStatus) -> DaemonStatus {
        let usage = self.leases.usage(&status.name);
        status.sessions = usage.sessions;
        let running = matches!(status.state, DaemonState::Ready | DaemonState::Starting);
        if running && usage.sessions == 0 {
            status.idle_secs = Some(usage.idle_for.as_secs());
            status.idle_stop_in_secs = idle::stop_in(usage, status.idle_timeout())
                .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
        }
        status
    }

    fn with_usage(
        &self,
        result: Result<DaemonStatus, ManagerError>,
    ) -> Result<DaemonStatus, ManagerError> {
        result.map(|status| self.usage_of(status))
    }

    /// Stops every ready daemon that has had no session for its `idle-timeout`. A hosted
    /// stdio daemon whose host still serves a connected session (a client without a proxy)
    /// is not idle.
    pub async fn stop_idle(&self) {
        let handles = self.daemons.lock().await.clone();
        for (name, handle) in handles {
            let status = handle.status();
            if status.state != DaemonState::Ready {
                continue;
            }
            let gate = self.idle_gate.lock().await;
            let usage = self.leases.usage(&name);
            if idle::stop_in(usage, status.idle_timeout()) != Some(Duration::ZERO) {
                continue;
            }
            if status.transport == TransportKind::Stdio.as_str() {
                if let Some(port) = status.port {
                    // Asked without the gate: the host may take up to a second to answer.
                    drop(gate);
                    let secret = secret::host_secret(&self.context.token, &name);
                    let report = crate::host::fetch_status(port, &secret).await;
                    if report.as_ref().is_some_and(host_has_connected_session) {
                        self.leases.touch(&name);
                        continue;
                    }
                    let _gate = self.idle_gate.lock().await;
                    let usage = self.leases.usage(&name);
                    if idle::stop_in(usage, status.idle_timeout()) == Some(Duration::ZERO) {
                        handle.stop_idle(usage.idle_for).await;
                    }
                    continue;
                }
            }
            handle.stop_idle(usage.idle_for).await;
            drop(gate);
        }
    }

    /// Whether any daemon runs (or is being started, or has a session open).
    pub async fn any_running(&self) -> bool {
        let handles = self.daemons.lock().await.clone();
        handles.iter().any(|(name, handle)| {
            !matches!(
                handle.status().state,
                DaemonState::Stopped | DaemonState::Failed | DaemonState::External
            ) || self.leases.usage(name).sessions > 0
        })
    }

    pub async fn stop(&self, name: &str) -> Result<DaemonStatus, ManagerError> {
        let existing = self.daemons.lock().await.get(name).cloned();
        match existing {
            Some(handle) => Ok(self.usage_of(handle.stop("`mcpsm stop`").await.with_uptime())),
            // Nothing runs; still say so for a known name, and refuse an unknown one.
            None => self.daemon(name).await.map(|(handle, _)| handle.status()),
        }
    }

    /// A proxy reports that it recovered a client session of daemon `name`.
    pub async fn recovered(&self, name: &str) -> Result<DaemonStatus, ManagerError> {
        let (handle, _) = self.daemon(name).await?;
        Ok(handle.recovered().await.with_uptime())
    }

    pub async fn restart(&self, name: &str) -> Result<DaemonStatus, ManagerError> {
        let (handle, spec) = self.daemon(name).await?;
        handle.stop("`mcpsm restart`").await;
        self.touch(name).await;
        self.with_usage(ready(handle.start(spec, true, "`mcpsm restart`").await))
    }

    pub async fn status(&self) -> StatusReport {
        let handles = self.daemons.lock().await.clone();
        let mut daemons: BTreeMap<String, DaemonStatus> = handles
            .iter()
            .map(|(name, handle)| (name.clone(), self.usage_of(handle.status().with_uptime())))
            .collect();
        for status in daemons.values() {
            if status.transport == TransportKind::Stdio.as_str()
                && status.state != DaemonState::Ready
            {
                self.activity.host(&status.name, None);
            }
        }
        let hosts = daemons.values().filter_map(|status| {
            let port = status.port?;
            let running = status.transport == TransportKind::Stdio.as_str()
                && status.state == DaemonState::Ready;
            running.then(|| {
                let secret = secret::host_secret(&self.context.token, &status.name);
                let name = status.name.clone();
                async move { (name, crate::host::fetch_status(port, &secret).await) }
            })
        });
        for (name, report) in futures_util::future::join_all(hosts).await {
            self.activity.host(&name, report.as_ref());
            if let Some(status) = daemons.get_mut(&name) {
                status.host = report;
            }
        }
        let registry_error = match self.registry() {
            Ok(registry) => {
                for name in registry.names() {
                    if daemons.contains_key(name) {
                        continue;
                    }
                    if let Ok(spec) = registry.daemon(name) {
                        daemons.insert(
                            name.to_owned(),
                            DaemonStatus::new(&spec, &self.context.paths),
                        );
                    }
                }
                None
            }
            Err(e) => Some(e.to_string()),
        };
        for status in daemons.values_mut() {
            status.figures = self.activity.figures(&status.name);
        }
        StatusReport {
            manager: self.info.clone(),
            daemons: daemons.into_values().collect(),
            registry_error,
        }
    }

    /// Every daemon mcpsm starts, concurrently.
    pub async fn start_all(&self) -> Result<Vec<Result<DaemonStatus, String>>, ManagerError> {
        let registry = self.registry()?;
        let names: Vec<String> = registry
            .names()
            .filter(|name| registry.daemon(name).is_ok_and(|s| s.launch.is_some()))
            .map(str::to_owned)
            .collect();
        let starts = names
            .iter()
            .map(|name| async move { self.start(name).await.map_err(|e| e.to_string()) });
        Ok(futures_util::future::join_all(starts).await)
    }

    pub async fn stop_all(&self) -> Vec<DaemonStatus> {
        let handles: Vec<DaemonHandle> = self.daemons.lock().await.values().cloned().collect();
        let stops = handles.iter().map(|handle| async move {
            handle
                .stop("the manager stops every daemon (`mcpsm manager stop`)")
                .await
                .with_uptime()
        });
        futures_util::future::join_all(stops).await
    }

    /// Ends every actor; with `stop_daemons` the processes are stopped too, otherwise they
    /// keep serving and the next manager adopts them.
    pub async fn shutdown(&self, stop_daemons: bool) {
        let handles: Vec<DaemonHandle> = self.daemons.lock().await.values().cloned().collect();
        let shutdowns = handles.iter().map(|handle| handle.shutdown(stop_daemons));
        futures_util::future::join_all(shutdowns).await;
    }

    /// Takes over the daemons a previous manager left running, after checking that each pid
    /// is still the same process (start time) and answers MCP on its port. A verified process
    /// that fails the check or left the registry is stopped; anything else is left alone.
    pub async fn adopt(&self, previous: &ManagerState) {
        let registry = match self.registry() {
            Ok(registry) => registry,
            Err(e) => {
                warn!("not adopting the previous manager's daemons: {e}");
                return;
            }
        };
        for (name, record) in &previous.daemons {
            let same_process = process::is_alive(record.pid)
                && process::start_time(record.pid) == Some(record.start_time);
            if !same_process {
                continue;
            }
            let spec = registry
                .daemon(name)
                .ok()
                .filter(|s| s.launch.as_ref().is_some_and(|l| l.port == record.port))
                .map(|mut spec| {
                    secret::authorize(&mut spec, &self.context.token);
                    spec
                });
            let answered = match &spec {
                Some(spec) => probe(spec, Duration::from_secs(5)).await,
                None => Err("it is no longer in the registry".to_owned()),
            };
            match (spec, answered) {
                (Some(spec), Ok(_)) => {
                    info!(daemon = %name, pid = record.pid, "adopted from the previous manager");
                    self.context
                        .state_file
                        .set_daemon(name, Some(record.clone()))
                        .await;
                    let handle = DaemonHandle::spawn(
                        spec,
                        self.context.clone(),
                        Some(Adopted {
                            record: record.clone(),
                        }),
                    );
                    self.daemons.lock().await.insert(name.clone(), handle);
                }
                (spec, answered) => {
                    let why = answered.err().unwrap_or_default();
                    warn!(daemon = %name, pid = record.pid, "not adopting: {why}; stopping it");
                    let grace = spec.map_or(Duration::from_secs(5), |s| s.stop_timeout);
                    process::stop_group(record.pid, None, grace).await;
                }
            }
        }
    }
}

/// Whether a stdio host's `GET /mcpsm/status` report lists a session with its GET stream open.
fn host_has_connected_session(report: &serde_json::Value) -> bool {
    report["children"].as_array().is_some_and(|children| {
        children.iter().any(|child| {
            child["sessions"].as_array().is_some_and(|sessions| {
                sessions
                    .iter()
                    .any(|s| s["connected"].as_bool() == Some(true))
            })
        })
    })
}

fn ready(result: Result<DaemonStatus, DaemonStatus>) -> Result<DaemonStatus, ManagerError> {
    match result {
        Ok(status) => Ok(status.with_uptime()),
        Err(status) if status.state == DaemonState::Ready => Ok(status.with_uptime()),
        Err(status) => Err(ManagerError::NotReady(Box::new(status.with_uptime()))),
    }
}
