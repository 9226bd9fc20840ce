//! The manager API as the proxy and the CLI use it, and starting a manager when none answers.
//!
//! Starting is serialized by `manager.start.lock`: of many proxies that find no manager at
//! once, one starts it and the others wait for it. The manager is started through
//! `mcpsm manager --detach`, which puts it in a session of its own with no inherited
//! descriptors, so the client that ran the proxy never waits on it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::daemon::DaemonStatus;
use super::logs;
use super::manager::{ManagerInfo, StatusReport};
use super::state::ManagerState;
use crate::paths::Paths;

/// How long a new manager may take to answer `/ping`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no mcpsm manager is running on 127.0.0.1:{port}")]
    NotRunning { port: u16 },
    #[error("{message}")]
    Api {
        status: u16,
        message: String,
        daemon: Option<Box<DaemonStatus>>,
    },
    #[error("talking to the mcpsm manager on 127.0.0.1:{port} failed: {cause}")]
    Http { port: u16, cause: String },
    #[error("{0}")]
    Start(String),
}

#[derive(Clone)]
pub struct ManagerClient {
    http: reqwest::Client,
    port: u16,
    token_path: PathBuf,
}

impl ManagerClient {
    pub fn new(paths: &Paths, port: u16) -> ManagerClient {
        crate::transport::http::install_crypto_provider();
        let http = reqwest::Client::builder()
            .no_proxy()
            .tls_certs_only([])
            .connect_timeout(Duration::from_secs(2))
            // Below the manager's idle timeout (crate::serve::IDLE_TIMEOUT): the client closes
            // an idle connection before the server would, so no request races that close.
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        ManagerClient {
            http,
            port,
            token_path: paths.manager_token(),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn http_error(&self, e: &reqwest::Error) -> ClientError {
        if e.is_connect() {
            ClientError::NotRunning { port: self.port }
        } else {
            ClientError::Http {
                port: self.port,
                cause: crate::transport::http::cause(e),
            }
        }
    }

    pub async fn ping(&self) -> Result<ManagerInfo, ClientError> {
        let request = self
            .http
            .get(self.url("/ping"))
            .timeout(Duration::from_secs(5));
        self.call(request).await
    }

    pub async fn status(&self) -> Result<StatusReport, ClientError> {
        let request = self.authorized(self.http.get(self.url("/status")))?;
        self.call(request).await
    }

    pub async fn logs(&self, name: &str, tail: usize) -> Result<String, ClientError> {
        let response = self
            .authorized(
                self.http
                    .get(self.url(&format!("/logs/{name}?tail={tail}"))),
            )?
            .send()
            .await
            .map_err(|e| self.http_error(&e))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| self.http_error(&e))?;
        if status.is_success() {
            Ok(text)
        } else {
            Err(api_error(status, &text))
        }
    }

    /// `POST /start`, `/stop`, `/restart` or `/ensure` for daemon `name`.
    pub async fn daemon_action(
        &self,
        action: &str,
        name: &str,
    ) -> Result<DaemonStatus, ClientError> {
        let request = self.post(action, &json!({ "name": name }))?;
        self.call(request).await
    }

    /// `POST /session`: holds a client session of daemon `name` open (see
    /// [`super::idle`]) until the manager ends it or goes away; returns then.
    pub async fn hold_session(&self, name: &str) -> Result<(), ClientError> {
        let request = self.post("session", &json!({ "name": name }))?;
        let mut response = request.send().await.map_err(|e| self.http_error(&e))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await.map_err(|e| self.http_error(&e))?;
            return Err(api_error(status, &String::from_utf8_lossy(&body)));
        }
        while response
            .chunk()
            .await
            .map_err(|e| self.http_error(&e))?
            .is_some()
        {}
        Ok(())
    }

    /// `POST /report`: a proxy session's figures (see [`super::activity`]).
    pub async fn report(&self, report: &super::activity::ProxyReport) -> Result<(), ClientError> {
        let body = serde_json::to_value(report).unwrap_or_default();
        let request = self.post("report", &body)?.timeout(Duration::from_secs(2));
        self.call::<Value>(request).await.map(|_| ())
    }

    /// `POST /ui/ticket`: a one-time URL of the status page.
    pub async fn page_ticket(&self) -> Result<String, ClientError> {
        let request = self.post("ui/ticket", &json!({}))?;
        let answer: Value = self.call(request).await?;
        answer["url"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ClientError::Http {
                port: self.port,
                cause: "the manager's answer has no `url`".to_owned(),
            })
    }

    /// `POST /oauth`: a question about a daemon's authorization (a long poll of at most a
    /// few tens of seconds; see `auth::broker`).
    pub async fn oauth(
        &self,
        request: &crate::auth::BrokerRequest,
    ) -> Result<crate::auth::BrokerAnswer, ClientError> {
        let body = serde_json::to_value(request).map_err(|e| ClientError::Http {
            port: self.port,
            cause: e.to_string(),
        })?;
        let request = self.post("oauth", &body)?.timeout(Duration::from_secs(90));
        self.call(request).await
    }

    /// `POST /start-all`, `/stop-all` or `/shutdown`.
    pub async fn action(&self, action: &str) -> Result<Value, ClientError> {
        let request = self.post(action, &json!({}))?;
        self.call(request).await
    }

    /// Adds `Authorization: Bearer <manager.token>`: every endpoint but `/ping` needs it.
    fn authorized(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, ClientError> {
        let token = match std::fs::read_to_string(&self.token_path) {
            Ok(token) => token,
            // No manager ever ran in this home: the request finds none (or gets a 401 from
            // another home's manager on this port, which names the token it wants).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(request),
            Err(e) => {
                return Err(ClientError::Http {
                    port: self.port,
                    cause: format!(
                        "cannot read the manager token {}: {e}\nhint: run mcpsm as the user that started the manager, with the same MCPSM_HOME",
                        self.token_path.display()
                    ),
                })
            }
        };
        Ok(request.header(AUTHORIZATION, format!("Bearer {}", token.trim())))
    }

    fn post(&self, action: &str, body: &Value) -> Result<reqwest::RequestBuilder, ClientError> {
        let request = self
            .http
            .post(self.url(&format!("/{action}")))
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string());
        self.authorized(request)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let response = request.send().await.map_err(|e| self.http_error(&e))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| self.http_error(&e))?;
        if !status.is_success() {
            return Err(api_error(status, &String::from_utf8_lossy(&body)));
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Http {
            port: self.port,
            cause: format!("unexpected answer ({e})"),
        })
    }
}

fn api_error(status: StatusCode, body: &str) -> ClientError {
    let value: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let message = value["error"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| {
            format!(
                "the manager answered HTTP {}: {}",
                status.as_u16(),
                body.trim()
            )
        });
    let daemon = serde_json::from_value(value["daemon"].clone())
        .ok()
        .map(Box::new);
    ClientError::Api {
        status: status.as_u16(),
        message,
        daemon,
    }
}

/// A client for the running manager, starting one (detached) when none answers.
pub async fn connect_or_start(
    paths: &Paths,
    registry: Option<&Path>,
    port: u16,
) -> Result<ManagerClient, ClientError> {
    let client = ManagerClient::new(paths, port);
    match client.ping().await {
        Ok(_) => return Ok(client),
        Err(ClientError::NotRunning { .. }) => {}
        Err(e) => return Err(e),
    }
    if let Some(running) = manager_on_other_port(paths, port) {
        return Err(ClientError::Start(moved_message(paths, &running, port)));
    }
    paths.create_dirs().map_err(|e| {
        ClientError::Start(format!(
            "cannot create {}: {e}\nhint: check that its parent directory is writable, or set MCPSM_HOME to a directory you own",
            paths.logs_dir().display()
        ))
    })?;
    let lock_path = paths.manager_start_lock();
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| ClientError::Start(format!("cannot open {}: {e}", lock_path.display())))?;
    let mut lock = fd_lock::RwLock::new(lock_file);
    let deadline = Instant::now() + START_TIMEOUT + Duration::from_secs(5);
    // A try-lock loop keeps the runtime free; whoever holds the lock is starting a manager.
    let _guard = loop {
        match lock.try_write() {
            Ok(guard) => break guard,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if client.ping().await.is_ok() {
                    return Ok(client);
                }
            }
            Err(e) => {
                return Err(ClientError::Start(format!(
                    "another process holds {} and no manager answered within {:?}: {e}",
                    lock_path.display(),
                    START_TIMEOUT
                )))
            }
        }
    };
    if client.ping().await.is_ok() {
        return Ok(client);
    }
    start_detached(paths, registry).await?;
    Ok(client)
}

/// The manager of this home, when it runs on another port than `port`: the registry's
/// `[manager] port` was edited while it ran. Known from `manager.json` and `manager.lock`
/// (held by a live manager), so no request to any port is needed.
pub fn manager_on_other_port(paths: &Paths, port: u16) -> Option<ManagerState> {
    let state = ManagerState::read(&paths.manager_state())?;
    if state.port == port || !super::process::is_alive(state.pid) {
        return None;
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(paths.manager_lock())
        .ok()?;
    let mut lock = fd_lock::RwLock::new(file);
    let held = lock.try_write().is_err();
    held.then_some(state)
}

/// What to say when the manager runs on another port than the registry's.
pub fn moved_message(paths: &Paths, running: &ManagerState, port: u16) -> String {
    format!(
        "the mcpsm manager of {} runs on 127.0.0.1:{} (pid {}), but the registry now says `[manager] port = {port}`\n\
         hint: restart the manager to move it: `kill {}` (its daemons keep running; the next proxy or `mcpsm start` starts a manager on port {port}, which adopts them), or `mcpsm manager stop` (stops its daemons too); or set `port = {}` back",
        paths.home().display(),
        running.port,
        running.pid,
        running.pid,
        running.port
    )
}

/// Runs `mcpsm manager --detach` and waits for it: it returns once the manager answers.
async fn start_detached(paths: &Paths, registry: Option<&Path>) -> Result<(), ClientError> {
    let exe = std::env::current_exe()
        .map_err(|e| ClientError::Start(format!("cannot find the mcpsm binary: {e}")))?;
    let mut command = tokio::process::Command::new(&exe);
    if let Some(registry) = registry {
        command.arg("--registry").arg(registry);
    }
    command
        .args(["manager", "--detach"])
        .env(crate::paths::HOME_ENV, paths.home())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().map_err(|e| {
        ClientError::Start(format!(
            "cannot run {} manager --detach: {e}",
            exe.display()
        ))
    })?;
    let output = tokio::time::timeout(
        START_TIMEOUT + Duration::from_secs(5),
        child.wait_with_output(),
    )
    .await
    .map_err(|_| {
        ClientError::Start(format!(
            "`mcpsm manager --detach` did not finish within {START_TIMEOUT:?}"
        ))
    })?
    .map_err(|e| ClientError::Start(format!("waiting for `mcpsm manager --detach` failed: {e}")))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(ClientError::Start(format!(
        "the mcpsm manager could not start: {}\n{}",
        stderr.trim(),
        logs::tail_for_message(&paths.manager_log(), 5)
    )))
}
