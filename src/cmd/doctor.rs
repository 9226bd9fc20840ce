//! `mcpsm doctor [--json] [--fix]`: finds what is wrong and says how to fix it.
//!
//! One finding per line (ok / warn / fail) with a hint; exit 1 when anything fails. Checks the
//! registry, each daemon (command, port, MCP handshake, transport), the manager (running,
//! version, token), leftover state (dead entries in `manager.json`, unheld lock files), the
//! clients' configs (proxy entries pointing at a missing binary, servers still spawned
//! directly) and recent errors in daemon logs. `--fix` repairs what is safe to repair:
//! leftover state and the token's permissions.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

use super::Settings;
use crate::cli::DoctorArgs;
use crate::clients::{Client, ClientFile, Entry, Environment, ProxyCommand, Scope, Server};
use crate::config::{DaemonSpec, TransportKind};
use crate::supervise::client::{ClientError, ManagerClient};
use crate::supervise::daemon::{DaemonState, DaemonStatus};
use crate::supervise::environment::BaseEnvironment;
use crate::supervise::manager::StatusReport;
use crate::supervise::probe::probe;
use crate::supervise::state::{write_atomic, ManagerState};
use crate::supervise::{logs, process};

const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Level {
    Ok,
    Warn,
    Fail,
}

/// What `--fix` can do about a finding.
#[derive(Debug, Clone)]
enum Fix {
    MakePrivate(PathBuf),
    ForgetDaemons(Vec<String>),
}

#[derive(Debug, Serialize)]
struct Finding {
    level: Level,
    subject: String,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<String>,
    #[serde(skip)]
    fix: Option<Fix>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fixed: Option<String>,
}

#[derive(Default)]
struct Findings(Vec<Finding>);

impl Findings {
    fn add(
        &mut self,
        level: Level,
        subject: impl Into<String>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.0.push(Finding {
            level,
            subject: subject.into(),
            message: message.into(),
            hint,
            fix: None,
            fixed: None,
        });
    }

    fn ok(&mut self, subject: impl Into<String>, message: impl Into<String>) {
        self.add(Level::Ok, subject, message, None);
    }

    fn warn(
        &mut self,
        subject: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.add(Level::Warn, subject, message, Some(hint.into()));
    }

    fn fail(
        &mut self,
        subject: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.add(Level::Fail, subject, message, Some(hint.into()));
    }

    fn fixable(&mut self, level: Level, subject: &str, message: String, hint: String, fix: Fix) {
        self.add(level, subject, message, Some(hint));
        if let Some(last) = self.0.last_mut() {
            last.fix = Some(fix);
        }
    }
}

pub async fn run(args: DoctorArgs, settings: Settings) -> anyhow::Result<ExitCode> {
    let mut findings = Findings::default();
    let registry = match settings.registry() {
        Ok(registry) => {
            let count = registry.names().count();
            let source = if settings.registry_path.exists() {
                settings.registry_path.display().to_string()
            } else {
                format!(
                    "embedded defaults ({} does not exist)",
                    settings.registry_path.display()
                )
            };
            findings.ok("registry", format!("{count} daemons from {source}"));
            Some(registry)
        }
        Err(e) => {
            let text = e.to_string();
            let (message, hint) = split_hint(&text);
            findings.fail(
                "registry",
                message,
                hint.unwrap_or_else(|| {
                    format!(
                        "fix {} and run `mcpsm doctor` again",
                        settings.registry_path.display()
                    )
                }),
            );
            None
        }
    };
    let port = registry
        .as_ref()
        .map_or(crate::config::DEFAULT_MANAGER_PORT, |r| r.manager_port());
    let report = check_manager(&settings, port, &mut findings).await;
    let token = crate::supervise::secret::read_token(&settings.paths.manager_token());
    if let Some(registry) = &registry {
        // Commands are looked up as the manager will: on the daemons' base PATH.
        let base = BaseEnvironment::capture().await;
        for name in registry.names() {
            match registry.daemon(name) {
                Ok(mut spec) => {
                    if let Some(token) = &token {
                        crate::supervise::secret::authorize(&mut spec, token);
                    }
                    check_daemon(&spec, &settings, &base, report.as_ref(), &mut findings).await
                }
                Err(e) => {
                    let text = e.to_string();
                    let (message, hint) = split_hint(&text);
                    findings.fail(
                        format!("daemon {name}"),
                        message,
                        hint.unwrap_or_else(|| "fix the registry".into()),
                    );
                }
            }
        }
    }
    check_state(&settings, report.is_some(), &mut findings);
    check_logs(&settings, &mut findings);
    check_clients(&mut findings);
    if args.fix {
        apply_fixes(&mut findings);
    }
    print(&findings, args.json)?;
    let failed = findings
        .0
        .iter()
        .any(|f| f.level == Level::Fail && f.fixed.is_none());
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn split_hint(text: &str) -> (String, Option<String>) {
    match text.split_once("\nhint: ") {
        Some((message, hint)) => (message.to_owned(), Some(hint.to_owned())),
        None => (text.to_owned(), None),
    }
}

async fn check_manager(
    settings: &Settings,
    port: u16,
    findings: &mut Findings,
) -> Option<StatusReport> {
    let token = settings.paths.manager_token();
    if let Some(mode) = std::fs::metadata(&token)
        .ok()
        .and_then(|meta| crate::platform::fs::mode(&meta))
    {
        if mode & 0o077 != 0 {
            findings.fixable(
                Level::Fail,
                "manager token",
                format!("{} is readable by others (mode {mode:o}): anyone on this machine could control your daemons", token.display()),
                format!("chmod 600 {} (or `mcpsm doctor --fix`)", token.display()),
                Fix::MakePrivate(token.clone()),
            );
        } else {
            findings.ok(
                "manager token",
                format!("{} is private (mode {mode:o})", token.display()),
            );
        }
    }
    let client = ManagerClient::new(&settings.paths, port);
    match client.ping().await {
        Ok(info) => {
            let version = env!("CARGO_PKG_VERSION");
            if info.version == version {
                findings.ok(
                    "manager",
                    format!(
                        "running at 127.0.0.1:{port} (pid {}, version {})",
                        info.pid, info.version
                    ),
                );
            } else {
                findings.warn(
                    "manager",
                    format!("running at 127.0.0.1:{port} (pid {}) is version {}, this mcpsm is {version}", info.pid, info.version),
                    "`mcpsm manager stop`; the next proxy starts this version (daemons are restarted)",
                );
            }
            client.status().await.ok()
        }
        Err(ClientError::NotRunning { .. }) => {
            findings.ok(
                "manager",
                format!("not running (127.0.0.1:{port}); the first proxy starts it"),
            );
            None
        }
        Err(e) => {
            let held = if process::port_is_free(port) {
                String::new()
            } else {
                format!("; {}", process::describe_port_in_use(port))
            };
            findings.fail(
                "manager",
                format!("something answers on 127.0.0.1:{port} but it is not a working mcpsm manager: {e}{held}"),
                format!("stop it, or set another `[manager] port` in {}", settings.registry_path.display()),
            );
            None
        }
    }
}

async fn check_daemon(
    spec: &DaemonSpec,
    settings: &Settings,
    base: &BaseEnvironment,
    report: Option<&StatusReport>,
    findings: &mut Findings,
) {
    let subject = format!("daemon {}", spec.name);
    if spec.oauth.is_some() {
        findings.ok(
            &subject,
            format!("OAuth tokens are kept in {}", crate::auth::token_store()),
        );
        let key = crate::auth::daemon_key(&spec.name);
        match crate::auth::describe(settings.paths.home(), &key) {
            Some(state) => findings.ok(&subject, state),
            None => findings.warn(
                &subject,
                "not logged in (OAuth): the first session will open a browser to log in",
                format!("run `mcpsm login {}` now", spec.name),
            ),
        }
    }
    let Some(launch) = &spec.launch else {
        if spec.oauth.is_none() && !check_url_daemon(spec, &subject, findings).await {
            return;
        }
        return check_handshake(spec, &subject, "", findings).await;
    };
    let spawned = base.apply(launch.clone(), settings.paths.home());
    if let Err(e) =
        process::find_program_for(&spawned.command, spawned.cwd.as_deref(), &spawned.env)
    {
        let text = e.to_string();
        let (message, hint) = split_hint(&text);
        findings.fail(&subject, message, hint.unwrap_or_default());
        return;
    }
    let status: Option<&DaemonStatus> =
        report.and_then(|r| r.daemons.iter().find(|d| d.name == spec.name));
    if let Some(status) =
        status.filter(|s| matches!(s.state, DaemonState::CrashLooping | DaemonState::Failed))
    {
        let error = status.last_error.as_deref().unwrap_or("no error recorded");
        let mut lines = error.lines().map(str::trim).filter(|l| !l.is_empty());
        let first = lines.next().unwrap_or(error);
        let summary = match lines.rfind(|l| !l.starts_with("hint:")) {
            Some(last) => format!("{} … {last}", first.trim_end_matches(':')),
            None => first.to_owned(),
        };
        findings.fail(
            &subject,
            format!("{}: {summary}", status.state.as_str()),
            format!(
                "read its log {} (`mcpsm logs {}`), fix the cause, then `mcpsm start {}`",
                status.log_file, spec.name, spec.name
            ),
        );
        return;
    }
    let own_pid = status.and_then(|s| s.pid);
    if process::port_is_free(launch.port) {
        findings.ok(
            &subject,
            format!(
                "not running; port {} is free for it (starts on demand)",
                launch.port
            ),
        );
        return;
    }
    let owner = process::port_owner(launch.port).map(|(pid, _)| pid);
    let ours = match (own_pid, owner) {
        (Some(daemon), Some(owner)) => {
            owner == daemon || process::tree_members(daemon).contains(&owner)
        }
        _ => false,
    };
    if !ours {
        findings.fail(
            &subject,
            process::describe_port_in_use(launch.port),
            format!(
                "stop that process, or give daemon \"{}\" another `port` ({})",
                spec.name, spec.defined_at
            ),
        );
        return;
    }
    let running = format!("pid {}, ", own_pid.unwrap_or_default());
    check_handshake(spec, &subject, &running, findings).await;
}

/// A `url` daemon (a team service, a vendor's server): reachable, its TLS certificate
/// trusted, its `headers` accepted. One POST with the registry's headers; `false` (with a
/// finding) when the handshake need not be tried.
async fn check_url_daemon(spec: &DaemonSpec, subject: &str, findings: &mut Findings) -> bool {
    let Ok(client) = crate::transport::http::client(&spec.url) else {
        return true;
    };
    let mut request = client
        .post(spec.url.clone())
        .timeout(PROBE_TIMEOUT)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":"mcpsm-doctor","method":"ping"}"#);
    for (name, value) in &spec.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let host = spec.url.host_str().unwrap_or("?").to_owned();
    match request.send().await {
        Err(e) if is_tls_error(&e) => {
            findings.fail(
                subject,
                format!("TLS with {host} failed: {}", error_chain(&e)),
                "the certificate is not trusted or does not name the host: fix the server's certificate, or point SSL_CERT_FILE at the team's CA bundle".to_owned(),
            );
            false
        }
        Err(e) if e.is_connect() || e.is_timeout() => {
            findings.fail(
                subject,
                format!("{} is not reachable: {}", spec.url, error_chain(&e)),
                format!(
                    "check the address ({}), DNS, VPN and firewall",
                    spec.defined_at
                ),
            );
            false
        }
        Err(_) => true,
        Ok(response) if matches!(response.status().as_u16(), 401 | 403) => {
            let sent = if spec
                .headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("authorization"))
            {
                "the `Authorization` header of the registry was refused"
            } else {
                "no `Authorization` header is configured"
            };
            findings.fail(
                subject,
                format!("{} answered HTTP {}: {sent}", spec.url, response.status().as_u16()),
                format!(
                    "set `headers = {{ Authorization = \"Bearer ${{TOKEN_VARIABLE}}\" }}` for daemon \"{}\" ({}) and export the token, or log in with `mcpsm login {}` if the service uses OAuth",
                    spec.name, spec.defined_at, spec.name
                ),
            );
            false
        }
        Ok(response) => {
            let scheme = if spec.url.scheme() == "https" {
                "TLS ok, "
            } else {
                ""
            };
            findings.ok(
                subject,
                format!(
                    "{}reachable ({scheme}HTTP {} to a ping)",
                    spec.url,
                    response.status().as_u16()
                ),
            );
            true
        }
    }
}

fn is_tls_error(error: &reqwest::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if e.is::<rustls::Error>() {
            return true;
        }
        cause = e.source();
    }
    false
}

fn error_chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// MCP `initialize` over the daemon's transport; on failure, whether the other wire works.
async fn check_handshake(spec: &DaemonSpec, subject: &str, running: &str, findings: &mut Findings) {
    match probe(spec, PROBE_TIMEOUT).await {
        Ok(latency) => findings.ok(
            subject,
            format!(
                "{running}MCP handshake in {} ms over {}",
                latency.as_millis(),
                spec.transport.as_str()
            ),
        ),
        Err(why) => {
            let other = match spec.transport {
                TransportKind::StreamableHttp => Some(TransportKind::Sse),
                TransportKind::Sse => Some(TransportKind::StreamableHttp),
                TransportKind::Auto | TransportKind::Stdio => None,
            };
            if let Some(other) = other {
                let mut alternative = spec.clone();
                alternative.transport = other;
                if probe(&alternative, PROBE_TIMEOUT).await.is_ok() {
                    findings.fail(
                        subject,
                        format!(
                            "it speaks {}, but the registry says `transport = \"{}\"`",
                            other.as_str(),
                            spec.transport.as_str()
                        ),
                        format!(
                            "set `transport = \"{}\"` for daemon \"{}\" ({})",
                            other.as_str(),
                            spec.name,
                            spec.defined_at
                        ),
                    );
                    return;
                }
            }
            findings.fail(
                subject,
                format!("{running}no MCP handshake at {}: {why}", spec.url),
                format!(
                    "check the server (`mcpsm logs {}` for daemons mcpsm runs)",
                    spec.name
                ),
            );
        }
    }
}

/// `manager.json` entries and lock files left behind by a manager that is gone.
fn check_state(settings: &Settings, manager_running: bool, findings: &mut Findings) {
    let paths = &settings.paths;
    let state_path = paths.manager_state();
    if let (Some(state), false) = (ManagerState::read(&state_path), manager_running) {
        let dead: Vec<String> = state
            .daemons
            .iter()
            .filter(|(_, r)| {
                !(process::is_alive(r.pid) && process::start_time(r.pid) == Some(r.start_time))
            })
            .map(|(name, _)| name.clone())
            .collect();
        for (name, record) in state.daemons.iter().filter(|(n, _)| !dead.contains(n)) {
            findings.ok(
                format!("daemon {name}"),
                format!(
                    "pid {} outlived the manager; the next manager adopts it",
                    record.pid
                ),
            );
        }
        if !dead.is_empty() {
            findings.fixable(
                Level::Warn,
                "state",
                format!(
                    "{} lists daemons that are gone: {}",
                    state_path.display(),
                    dead.join(", ")
                ),
                "`mcpsm doctor --fix` removes them".into(),
                Fix::ForgetDaemons(dead),
            );
        }
    }
    // `manager.lock` and `manager.start.lock` are not reported: they are locked while in use
    // and stay on disk after a clean stop, by design, so an unheld one is no leftover.
}

fn check_logs(settings: &Settings, findings: &mut Findings) {
    let Ok(entries) = std::fs::read_dir(settings.paths.logs_dir()) else {
        return;
    };
    let mut logs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    for log in logs {
        let recent = logs::tail(&log, 50);
        let errors: Vec<&String> = recent
            .iter()
            .filter(|line| {
                let lower = line.to_ascii_lowercase();
                lower.contains("error") || lower.contains("panic") || lower.contains("fatal")
            })
            .collect();
        if let Some(last) = errors.last() {
            let name = log
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            findings.warn(
                format!("log {name}"),
                format!(
                    "{} recent error lines in {}, the last: {}",
                    errors.len(),
                    log.display(),
                    last.trim()
                ),
                format!("`mcpsm logs {name} -n 100`"),
            );
        }
    }
}

fn check_clients(findings: &mut Findings) {
    let (env, proxy) = match (Environment::from_process(), ProxyCommand::current()) {
        (Ok(env), Ok(proxy)) => (env, proxy),
        (Err(e), _) | (_, Err(e)) => {
            findings.warn(
                "clients",
                format!("client configs not checked: {e}"),
                "set HOME to your home directory",
            );
            return;
        }
    };
    for client in Client::ALL {
        for scope in [Scope::User, Scope::Local, Scope::Project] {
            let Ok(location) = client.location(scope, &env) else {
                continue;
            };
            if !location.path.exists() {
                continue;
            }
            let subject = format!("{} ({scope})", client.as_str());
            let file = match ClientFile::load(&location) {
                Ok(file) => file,
                Err(e) => {
                    findings.fail(
                        &subject,
                        e.to_string(),
                        format!("fix {}", location.display()),
                    );
                    continue;
                }
            };
            let (Ok(entries), Ok(servers)) = (file.entries(&proxy), file.servers()) else {
                continue;
            };
            let mut direct = Vec::new();
            let mut proxies = 0;
            for ((name, entry), (_, raw)) in entries.iter().zip(&servers) {
                match entry {
                    Entry::Proxy {
                        this_binary: true, ..
                    } => proxies += 1,
                    Entry::Proxy {
                        this_binary: false, ..
                    } => {
                        let command = raw.get("command").and_then(|c| c.as_str()).unwrap_or("?");
                        if Path::new(command).exists() {
                            findings.warn(
                                &subject,
                                format!("server \"{name}\" runs another mcpsm: {command}"),
                                format!(
                                    "`mcpsm generate-config --client {}` points it at this one",
                                    client.as_str()
                                ),
                            );
                        } else {
                            findings.fail(&subject, format!("server \"{name}\" runs {command}, which does not exist"), format!("`mcpsm generate-config --client {} --scope {scope}` rewrites it to {}", client.as_str(), proxy.program));
                        }
                    }
                    Entry::Server(Server::Stdio(_)) => direct.push(name.clone()),
                    Entry::Server(Server::Remote(_)) | Entry::Unsupported(_) => {}
                }
            }
            if !direct.is_empty() {
                findings.warn(
                    &subject,
                    format!(
                        "{} starts {} server(s) itself, one copy per session: {}",
                        location.display(),
                        direct.len(),
                        direct.join(", ")
                    ),
                    format!(
                        "`mcpsm import --client {} --scope {scope}` shares them",
                        client.as_str()
                    ),
                );
            } else if proxies > 0 {
                findings.ok(
                    &subject,
                    format!(
                        "{proxies} server(s) go through mcpsm ({})",
                        location.display()
                    ),
                );
            }
        }
    }
}

fn apply_fixes(findings: &mut Findings) {
    for finding in &mut findings.0 {
        let Some(fix) = finding.fix.take() else {
            continue;
        };
        let result = match &fix {
            Fix::MakePrivate(path) => crate::platform::fs::restrict_to_owner(path)
                .map(|()| format!("{} is now mode 600", path.display())),
            Fix::ForgetDaemons(names) => forget_daemons(names),
        };
        match result {
            Ok(done) => finding.fixed = Some(done),
            Err(e) => finding.hint = Some(format!("--fix failed: {e}")),
        }
    }
}

fn forget_daemons(names: &[String]) -> std::io::Result<String> {
    let paths = crate::paths::Paths::from_env().map_err(std::io::Error::other)?;
    let path = paths.manager_state();
    let mut state = ManagerState::read(&path).unwrap_or_default();
    state.daemons.retain(|name, _| !names.contains(name));
    let text = serde_json::to_vec_pretty(&state).map_err(std::io::Error::other)?;
    write_atomic(&path, &text)?;
    Ok(format!(
        "removed {} from {}",
        names.join(", "),
        path.display()
    ))
}

fn print(findings: &Findings, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&findings.0)?);
        return Ok(());
    }
    for finding in &findings.0 {
        let label = match (finding.level, &finding.fixed) {
            (_, Some(_)) => "fixed",
            (Level::Ok, None) => "ok",
            (Level::Warn, None) => "warn",
            (Level::Fail, None) => "fail",
        };
        println!("{label:<5} {}: {}", finding.subject, finding.message);
        match (&finding.fixed, &finding.hint) {
            (Some(done), _) => println!("      {done}"),
            (None, Some(hint)) if finding.level != Level::Ok => println!("      hint: {hint}"),
            _ => {}
        }
    }
    let count = |level| {
        findings
            .0
            .iter()
            .filter(|f| f.level == level && f.fixed.is_none())
            .count()
    };
    let fixed = findings.0.iter().filter(|f| f.fixed.is_some()).count();
    let mut summary = format!(
        "\n{} fail, {} warn, {} ok",
        count(Level::Fail),
        count(Level::Warn),
        count(Level::Ok)
    );
    if fixed > 0 {
        summary.push_str(&format!(", {fixed} fixed"));
    }
    println!("{summary}");
    Ok(())
}
