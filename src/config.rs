//! The daemon registry: `daemons.toml`, its schema, defaults and validation.
//!
//! Loading checks the structure of the whole file (unknown keys, types, required keys) so a
//! broken registry is reported at once with file, line and key. Expansion of `${VAR}`, `~` and
//! `{port}` happens later, per daemon, in [`Registry::daemon`]: a variable that only one daemon
//! needs must not stop every other daemon from starting.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use url::Url;

use crate::paths;

pub const DEFAULT_MANAGER_PORT: u16 = 3199;
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How long a stdio host keeps a session whose proxy went away, for a reconnect.
pub const DEFAULT_SESSION_GRACE: Duration = Duration::from_secs(30);
/// How many server processes a non-shared stdio daemon may run at once.
pub const DEFAULT_MAX_SESSIONS: usize = 32;
/// How long a daemon with no open session keeps running before the manager stops it.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// The registry used when `daemons.toml` does not exist.
pub const EMBEDDED_DEFAULTS: &str = include_str!("defaults.toml");
const EMBEDDED_NAME: &str = "<embedded defaults>";

/// Which wire a daemon speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransportKind {
    /// Streamable HTTP (2025-03-26 and later): one endpoint, POST + GET.
    StreamableHttp,
    /// Legacy HTTP+SSE (2024-11-05): GET an SSE stream, POST to its `endpoint`.
    Sse,
    /// Try streamable HTTP, fall back to legacy SSE on 400/404/405.
    Auto,
    /// A server that speaks only stdio: mcpsm's stdio host serves it as streamable HTTP.
    Stdio,
}

/// How the sessions of a stdio daemon share its server process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sharing {
    /// One process for every session.
    Shared,
    /// One process per client working directory, started in that directory.
    PerProject,
    /// One process per session (for servers that keep per-client state).
    Isolated,
}

impl Sharing {
    pub fn as_str(self) -> &'static str {
        match self {
            Sharing::Shared => "shared",
            Sharing::PerProject => "per-project",
            Sharing::Isolated => "isolated",
        }
    }

    pub fn parse(text: &str) -> Option<Sharing> {
        match text {
            "shared" => Some(Sharing::Shared),
            "per-project" => Some(Sharing::PerProject),
            "isolated" => Some(Sharing::Isolated),
            _ => None,
        }
    }
}

impl TransportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::StreamableHttp => "streamable-http",
            TransportKind::Sse => "sse",
            TransportKind::Auto => "auto",
            TransportKind::Stdio => "stdio",
        }
    }

    /// What a client speaks to reach such a daemon: the stdio host is streamable HTTP.
    pub fn wire(self) -> TransportKind {
        match self {
            TransportKind::Stdio => TransportKind::StreamableHttp,
            other => other,
        }
    }

    fn default_path(self) -> &'static str {
        match self {
            TransportKind::Sse => "/sse",
            TransportKind::StreamableHttp | TransportKind::Auto | TransportKind::Stdio => "/mcp",
        }
    }
}

impl std::str::FromStr for TransportKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "streamable-http" => Ok(TransportKind::StreamableHttp),
            "sse" => Ok(TransportKind::Sse),
            "auto" => Ok(TransportKind::Auto),
            other => Err(format!(
                "unknown transport `{other}`; expected streamable-http, sse or auto"
            )),
        }
    }
}

/// A registry error, located in its file.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {key}{message}{}", if *line > 0 { format!(":{line}") } else { String::new() }, hint.as_ref().map(|h| format!("\nhint: {h}")).unwrap_or_default())]
pub struct ConfigError {
    pub file: String,
    /// 0 when the error is about the file as a whole.
    pub line: usize,
    /// `key: ` (with the dotted key path), or empty when no key applies.
    pub key: String,
    pub message: String,
    pub hint: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read the registry {}: {cause}\nhint: check the path given by --registry or {}", path.display(), paths::REGISTRY_ENV)]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    #[serde(default)]
    manager: Option<Spanned<RawManager>>,
    #[serde(default)]
    defaults: Option<Spanned<RawDefaults>>,
    #[serde(default)]
    daemons: BTreeMap<Spanned<String>, Spanned<RawDaemon>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawManager {
    port: Option<Spanned<u16>>,
    /// The manager exits after this long with no daemon running (default: never).
    idle_timeout: Option<Spanned<DurationValue>>,
}

/// `[defaults]`: values every daemon gets unless it sets its own.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawDefaults {
    idle_timeout: Option<Spanned<DurationValue>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawDaemon {
    command: Option<Spanned<String>>,
    #[serde(default)]
    args: Vec<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<String, Spanned<String>>,
    cwd: Option<Spanned<String>>,
    port: Option<Spanned<u16>>,
    transport: Option<Spanned<TransportKind>>,
    path: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    #[serde(default)]
    headers: BTreeMap<String, Spanned<String>>,
    startup_timeout: Option<Spanned<DurationValue>>,
    stop_timeout: Option<Spanned<DurationValue>>,
    health_interval: Option<Spanned<DurationValue>>,
    sharing: Option<Spanned<Sharing>>,
    session_idle_timeout: Option<Spanned<DurationValue>>,
    session_grace: Option<Spanned<DurationValue>>,
    max_sessions: Option<Spanned<usize>>,
    /// Stop the daemon after this long with no open session (`"never"` opts out).
    idle_timeout: Option<Spanned<DurationValue>>,
    /// `"oauth"`: authorize with OAuth 2.1 (url daemons).
    auth: Option<Spanned<String>>,
    client_id: Option<Spanned<String>>,
    client_secret: Option<Spanned<String>>,
    scopes: Option<Spanned<String>>,
    callback_port: Option<Spanned<u16>>,
    /// Grants without a browser and DPoP (`crate::auth::GrantSettings`).
    grant: Option<Spanned<String>>,
    private_key_file: Option<Spanned<String>>,
    signing_alg: Option<Spanned<String>>,
    assertion_file: Option<Spanned<String>>,
    id_token_file: Option<Spanned<String>>,
    idp_token_endpoint: Option<Spanned<String>>,
    idp_client_id: Option<Spanned<String>>,
    idp_client_secret: Option<Spanned<String>>,
    dpop: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DurationValue {
    Seconds(u64),
    Text(String),
}

/// The registry, structurally valid; daemons are resolved on demand.
pub struct Registry {
    file: String,
    source: String,
    manager_port: u16,
    /// `[manager] idle-timeout`: `None` = the manager never exits on its own.
    manager_idle_timeout: Option<Duration>,
    /// `[defaults] idle-timeout`: `None` = never.
    idle_timeout: Option<Duration>,
    daemons: BTreeMap<String, Spanned<RawDaemon>>,
}

/// How mcpsm starts a daemon it manages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub command: String,
    pub args: Vec<String>,
    /// The registry's `env`; once the manager applied the base environment
    /// (`supervise::environment`), the daemon's whole environment.
    pub env: Vec<(String, String)>,
    /// The registry's `cwd`; once applied, the directory the daemon runs in.
    pub cwd: Option<PathBuf>,
    pub port: u16,
}

/// One daemon, fully resolved: variables expanded, URL built.
#[derive(Debug, Clone)]
pub struct DaemonSpec {
    pub name: String,
    /// `None` for daemons mcpsm does not start (`url = …`).
    pub launch: Option<Launch>,
    pub url: Url,
    pub transport: TransportKind,
    pub headers: Vec<(String, String)>,
    pub startup_timeout: Duration,
    /// SIGTERM → SIGKILL grace when stopping.
    pub stop_timeout: Duration,
    /// Time between health probes of a ready daemon; zero turns them off.
    pub health_interval: Duration,
    /// For `transport = "stdio"`: how sessions share the server process.
    pub sharing: Sharing,
    /// For `transport = "stdio"`: sessions with no request for this long are forgotten.
    pub session_idle_timeout: Duration,
    /// For `transport = "stdio"`: a session whose proxy went away ends after this long.
    pub session_grace: Duration,
    /// For `transport = "stdio"`: the most server processes at once (per-project, isolated).
    pub max_sessions: usize,
    /// Stop it after this long with no open session; `None` = never (`idle-timeout`).
    pub idle_timeout: Option<Duration>,
    /// `file:line` of the daemon's table, for messages.
    pub defined_at: String,
    /// For a stdio daemon the manager runs: the secret its host wants on every request
    /// (see `supervise::secret`); sent as `Authorization: Bearer`.
    pub host_secret: Option<String>,
    /// `auth = "oauth"`: how to authorize (url daemons).
    pub oauth: Option<OAuthSpec>,
}

/// A url daemon's `auth = "oauth"` keys, variables expanded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OAuthSpec {
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub scopes: Option<String>,
    /// 0 = a free port.
    pub callback_port: u16,
    /// `grant`, its keys, and `dpop`.
    pub grant: crate::auth::GrantSettings,
}

impl DaemonSpec {
    /// The registry's `headers`, validated when the spec was resolved.
    pub fn header_map(&self) -> reqwest::header::HeaderMap {
        let mut map = reqwest::header::HeaderMap::new();
        if let Some(secret) = &self.host_secret {
            if let Ok(value) = reqwest::header::HeaderValue::from_str(&format!("Bearer {secret}")) {
                map.insert(reqwest::header::AUTHORIZATION, value);
            }
        }
        for (key, value) in &self.headers {
            if let (Ok(name), Ok(value)) = (
                reqwest::header::HeaderName::from_bytes(key.as_bytes()),
                reqwest::header::HeaderValue::from_str(value),
            ) {
                map.append(name, value);
            }
        }
        map
    }

    /// The command line, for messages.
    pub fn command_line(&self) -> Option<String> {
        let launch = self.launch.as_ref()?;
        Some(
            std::iter::once(launch.command.as_str())
                .chain(launch.args.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join(" "),
        )
    }
}

impl Registry {
    /// Loads `path`. A missing file at the default location means the embedded defaults; a
    /// missing file that was asked for explicitly is an error.
    pub fn load(path: &Path, explicit: bool) -> Result<Registry, LoadError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Registry::parse(&path.display().to_string(), text)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                Ok(Registry::embedded())
            }
            Err(cause) => Err(LoadError::Read {
                path: path.to_path_buf(),
                cause,
            }),
        }
    }

    pub fn embedded() -> Registry {
        match Registry::parse(EMBEDDED_NAME, EMBEDDED_DEFAULTS.to_owned()) {
            Ok(registry) => registry,
            // A unit test parses the embedded file, so this is unreachable in a release.
            Err(e) => panic!("embedded registry is invalid: {e}"),
        }
    }

    pub fn parse(file: &str, source: String) -> Result<Registry, ConfigError> {
        let raw: RawRegistry = match toml::from_str(&source) {
            Ok(raw) => raw,
            Err(e) => return Err(toml_error(file, &source, &e)),
        };
        let located = |span: Range<usize>, message: String, hint: Option<String>| {
            locate_error(file, &source, span, message, hint)
        };
        let manager_port = match raw.manager.as_ref().and_then(|m| m.get_ref().port.as_ref()) {
            Some(port) if *port.get_ref() == 0 => {
                return Err(located(
                    port.span(),
                    "the manager port must be 1-65535".into(),
                    None,
                ))
            }
            Some(port) => *port.get_ref(),
            None => DEFAULT_MANAGER_PORT,
        };
        let optional =
            |value: Option<&Spanned<DurationValue>>, default: Option<Duration>| match value {
                None => Ok(default),
                Some(value) => parse_optional_duration(value.get_ref())
                    .map_err(|m| located(value.span(), m, None)),
            };
        let manager_idle_timeout = optional(
            raw.manager
                .as_ref()
                .and_then(|m| m.get_ref().idle_timeout.as_ref()),
            None,
        )?;
        let idle_timeout = optional(
            raw.defaults
                .as_ref()
                .and_then(|d| d.get_ref().idle_timeout.as_ref()),
            Some(DEFAULT_IDLE_TIMEOUT),
        )?;
        let mut daemons = BTreeMap::new();
        for (name, daemon) in raw.daemons {
            if let Some(value) = &daemon.get_ref().idle_timeout {
                parse_optional_duration(value.get_ref())
                    .map_err(|m| located(value.span(), m, None))?;
            }
            validate_daemon(&name, &daemon, &located)?;
            daemons.insert(name.into_inner(), daemon);
        }
        check_ports(manager_port, &daemons, &located)?;
        Ok(Registry {
            file: file.to_owned(),
            source,
            manager_port,
            manager_idle_timeout,
            idle_timeout,
            daemons,
        })
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    pub fn manager_port(&self) -> u16 {
        self.manager_port
    }

    /// `[manager] idle-timeout`: how long the manager stays with no daemon running (`None`:
    /// until stopped).
    pub fn manager_idle_timeout(&self) -> Option<Duration> {
        self.manager_idle_timeout
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.daemons.keys().map(String::as_str)
    }

    /// Resolves daemon `name`: expands variables, builds its URL.
    pub fn daemon(&self, name: &str) -> Result<DaemonSpec, ConfigError> {
        let Some(daemon) = self.daemons.get(name) else {
            let known: Vec<&str> = self.names().collect();
            let hint = match closest(name, known.iter().copied()) {
                Some(close) => format!("did you mean `{close}`?"),
                None if known.is_empty() => {
                    "the registry defines no daemons; add a [daemons.NAME] table".into()
                }
                None => format!("known daemons: {}", known.join(", ")),
            };
            return Err(ConfigError {
                file: self.file.clone(),
                line: 0,
                key: String::new(),
                message: format!("no daemon named `{name}` in the registry"),
                hint: Some(hint),
            });
        };
        let located = |span: Range<usize>, message: String| {
            locate_error(&self.file, &self.source, span, message, None)
        };
        let expand = |value: &Spanned<String>| {
            expand(value.get_ref()).map_err(|message| located(value.span(), message))
        };
        let body = daemon.get_ref();
        let transport =
            body.transport
                .as_ref()
                .map(|t| *t.get_ref())
                .unwrap_or(if body.url.is_some() {
                    TransportKind::Auto
                } else {
                    TransportKind::StreamableHttp
                });
        let duration = |value: &Option<Spanned<DurationValue>>, default: Duration| match value {
            None => Ok(default),
            Some(value) => parse_duration(value.get_ref()).map_err(|m| located(value.span(), m)),
        };
        let startup_timeout = duration(&body.startup_timeout, DEFAULT_STARTUP_TIMEOUT)?;
        let stop_timeout = duration(&body.stop_timeout, DEFAULT_STOP_TIMEOUT)?;
        let health_interval = duration(&body.health_interval, DEFAULT_HEALTH_INTERVAL)?;
        let session_idle_timeout =
            duration(&body.session_idle_timeout, DEFAULT_SESSION_IDLE_TIMEOUT)?;
        let session_grace = duration(&body.session_grace, DEFAULT_SESSION_GRACE)?;
        let idle_timeout = match &body.idle_timeout {
            None => self.idle_timeout,
            Some(value) => {
                parse_optional_duration(value.get_ref()).map_err(|m| located(value.span(), m))?
            }
        };
        let max_sessions = body
            .max_sessions
            .as_ref()
            .map_or(DEFAULT_MAX_SESSIONS, |m| *m.get_ref());
        let sharing = body
            .sharing
            .as_ref()
            .map_or(Sharing::Shared, |s| *s.get_ref());
        let mut headers = Vec::new();
        for (key, value) in &body.headers {
            let expanded = expand(value)?;
            if reqwest::header::HeaderName::from_bytes(key.as_bytes()).is_err() {
                return Err(located(
                    value.span(),
                    format!("`{key}` is not a valid HTTP header name"),
                ));
            }
            if reqwest::header::HeaderValue::from_str(&expanded).is_err() {
                return Err(located(
                    value.span(),
                    format!("the value of header `{key}` is not a valid HTTP header value"),
                ));
            }
            headers.push((key.clone(), expanded));
        }
        let oauth = match &body.auth {
            None => {
                let stray = [
                    ("client-id", body.client_id.as_ref().map(Spanned::span)),
                    (
                        "client-secret",
                        body.client_secret.as_ref().map(Spanned::span),
                    ),
                    ("scopes", body.scopes.as_ref().map(Spanned::span)),
                    (
                        "callback-port",
                        body.callback_port.as_ref().map(Spanned::span),
                    ),
                    ("grant", body.grant.as_ref().map(Spanned::span)),
                    (
                        "private-key-file",
                        body.private_key_file.as_ref().map(Spanned::span),
                    ),
                    ("signing-alg", body.signing_alg.as_ref().map(Spanned::span)),
                    (
                        "assertion-file",
                        body.assertion_file.as_ref().map(Spanned::span),
                    ),
                    (
                        "id-token-file",
                        body.id_token_file.as_ref().map(Spanned::span),
                    ),
                    (
                        "idp-token-endpoint",
                        body.idp_token_endpoint.as_ref().map(Spanned::span),
                    ),
                    (
                        "idp-client-id",
                        body.idp_client_id.as_ref().map(Spanned::span),
                    ),
                    (
                        "idp-client-secret",
                        body.idp_client_secret.as_ref().map(Spanned::span),
                    ),
                    ("dpop", body.dpop.as_ref().map(Spanned::span)),
                ];
                if let Some((key, Some(span))) = stray.into_iter().find(|(_, s)| s.is_some()) {
                    return Err(located(
                        span,
                        format!("`{key}` applies only with `auth = \"oauth\"`"),
                    ));
                }
                None
            }
            Some(kind) if kind.get_ref() == "oauth" => {
                if body.url.is_none() {
                    return Err(located(
                        kind.span(),
                        "`auth = \"oauth\"` applies only to daemons with `url`".into(),
                    ));
                }
                let grant_kind = match &body.grant {
                    None => crate::auth::Grant::default(),
                    Some(text) => crate::auth::Grant::parse(text.get_ref()).ok_or_else(|| {
                        located(
                            text.span(),
                            format!(
                                "`grant` must be {}, got `{}`",
                                crate::auth::Grant::NAMES,
                                text.get_ref()
                            ),
                        )
                    })?,
                };
                let path = |value: &Option<Spanned<String>>| {
                    value
                        .as_ref()
                        .map(|v| expand(v).map(PathBuf::from))
                        .transpose()
                };
                let grant = crate::auth::GrantSettings {
                    grant: grant_kind,
                    private_key_file: path(&body.private_key_file)?,
                    signing_alg: body.signing_alg.as_ref().map(expand).transpose()?,
                    assertion_file: path(&body.assertion_file)?,
                    id_token_file: path(&body.id_token_file)?,
                    idp_token_endpoint: body.idp_token_endpoint.as_ref().map(expand).transpose()?,
                    idp_client_id: body.idp_client_id.as_ref().map(expand).transpose()?,
                    idp_client_secret: body.idp_client_secret.as_ref().map(expand).transpose()?,
                    dpop: body.dpop.as_ref().is_some_and(|d| *d.get_ref()),
                };
                grant
                    .check(body.client_id.is_some(), |key| format!("`{key}`"))
                    .map_err(|message| located(kind.span(), message))?;
                Some(OAuthSpec {
                    client_id: body.client_id.as_ref().map(expand).transpose()?,
                    client_secret: body.client_secret.as_ref().map(expand).transpose()?,
                    scopes: body.scopes.as_ref().map(expand).transpose()?,
                    callback_port: body.callback_port.as_ref().map_or(0, |p| *p.get_ref()),
                    grant,
                })
            }
            Some(kind) => {
                return Err(located(
                    kind.span(),
                    format!("`auth` must be \"oauth\", got `{}`", kind.get_ref()),
                ))
            }
        };
        let (launch, url) = match (&body.command, &body.url) {
            (_, Some(url)) => {
                let text = expand(url)?;
                let url = Url::parse(&text).map_err(|e| {
                    located(url.span(), format!("`{text}` is not a valid URL: {e}"))
                })?;
                (None, url)
            }
            (Some(command), None) => {
                // validate_daemon guarantees a port for daemons with a command
                let port = body.port.as_ref().map_or(0, |p| *p.get_ref());
                let port_text = port.to_string();
                let with_port = |value: &Spanned<String>| {
                    expand(value).map(|v| {
                        v.replace("{port}", &port_text)
                            .replace("{mcpsm}", &mcpsm_bin())
                    })
                };
                let args = body.args.iter().map(with_port).collect::<Result<_, _>>()?;
                let env = body
                    .env
                    .iter()
                    .map(|(k, v)| with_port(v).map(|v| (k.clone(), v)))
                    .collect::<Result<_, _>>()?;
                let cwd = body
                    .cwd
                    .as_ref()
                    .map(expand)
                    .transpose()?
                    .map(PathBuf::from);
                let path = body
                    .path
                    .as_ref()
                    .map_or(transport.default_path(), |p| p.get_ref().as_str());
                let url = Url::parse(&format!("http://127.0.0.1:{port}{path}")).map_err(|e| {
                    located(daemon.span(), format!("cannot build the daemon URL: {e}"))
                })?;
                let launch = Launch {
                    command: with_port(command)?,
                    args,
                    env,
                    cwd,
                    port,
                };
                (Some(launch), url)
            }
            (None, None) => unreachable!("validate_daemon requires command or url"),
        };
        Ok(DaemonSpec {
            name: name.to_owned(),
            launch,
            url,
            transport,
            headers,
            startup_timeout,
            stop_timeout,
            health_interval,
            sharing,
            session_idle_timeout,
            session_grace,
            max_sessions,
            idle_timeout,
            defined_at: format!(
                "{}:{}",
                self.file,
                line_of(&self.source, daemon.span().start)
            ),
            host_secret: None,
            oauth,
        })
    }
}

/// Every daemon mcpsm starts listens on a port of its own, which is not the manager's.
fn check_ports(
    manager_port: u16,
    daemons: &BTreeMap<String, Spanned<RawDaemon>>,
    located: &impl Fn(Range<usize>, String, Option<String>) -> ConfigError,
) -> Result<(), ConfigError> {
    let mut ports: Vec<(&str, &Spanned<u16>)> = daemons
        .iter()
        .filter(|(_, daemon)| daemon.get_ref().command.is_some())
        .filter_map(|(name, daemon)| Some((name.as_str(), daemon.get_ref().port.as_ref()?)))
        .collect();
    // In file order, so the error points at the later of two daemons.
    ports.sort_by_key(|(_, port)| port.span().start);
    for (i, (name, port)) in ports.iter().enumerate() {
        let number = *port.get_ref();
        if number == manager_port {
            return Err(located(
                port.span(),
                format!("daemon `{name}` uses port {number}, which is the manager's port"),
                Some(format!(
                    "give daemon `{name}` another `port`, or move the manager with `[manager] port`"
                )),
            ));
        }
        if let Some((first, _)) = ports[..i].iter().find(|(_, p)| *p.get_ref() == number) {
            return Err(located(
                port.span(),
                format!("daemon `{name}` uses port {number}, which daemon `{first}` already uses"),
                Some(format!(
                    "give daemon `{name}` another `port`: every daemon mcpsm starts needs its own"
                )),
            ));
        }
    }
    Ok(())
}

fn validate_daemon(
    name: &Spanned<String>,
    daemon: &Spanned<RawDaemon>,
    located: &impl Fn(Range<usize>, String, Option<String>) -> ConfigError,
) -> Result<(), ConfigError> {
    let valid_name = !name.get_ref().is_empty()
        && !name.get_ref().starts_with('.')
        && name
            .get_ref()
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid_name {
        return Err(located(
            name.span(),
            format!(
                "`{}` is not a valid daemon name: use letters, digits, `-`, `_` and `.`",
                name.get_ref()
            ),
            None,
        ));
    }
    let body = daemon.get_ref();
    match (&body.command, &body.url) {
        (Some(_), Some(url)) => {
            return Err(located(
                url.span(),
                "a daemon has either `command` (mcpsm starts it) or `url` (it runs elsewhere), not both".into(),
                Some("to start it with mcpsm, remove `url` and set `port` (and `path`)".into()),
            ))
        }
        (None, None) => {
            return Err(located(
                daemon.span(),
                format!("daemon `{}` needs `command` or `url`", name.get_ref()),
                Some("`command` + `port` for a server mcpsm starts, `url` for one that runs elsewhere".into()),
            ))
        }
        (Some(command), None) => {
            if command.get_ref().trim().is_empty() {
                return Err(located(command.span(), "`command` is empty".into(), None));
            }
            match &body.port {
                None => {
                    return Err(located(
                        daemon.span(),
                        format!("daemon `{}` has a `command` but no `port`", name.get_ref()),
                        Some("add `port = N` (a free local port) and pass it to the server, e.g. with `{port}` in args or env".into()),
                    ))
                }
                Some(port) if *port.get_ref() == 0 => {
                    return Err(located(port.span(), "`port` must be 1-65535".into(), None))
                }
                Some(_) => {}
            }
            let stdio = body
                .transport
                .as_ref()
                .is_some_and(|t| *t.get_ref() == TransportKind::Stdio);
            let stdio_only = [
                ("sharing", body.sharing.as_ref().map(Spanned::span)),
                ("session-idle-timeout", body.session_idle_timeout.as_ref().map(Spanned::span)),
                ("session-grace", body.session_grace.as_ref().map(Spanned::span)),
                ("max-sessions", body.max_sessions.as_ref().map(Spanned::span)),
            ];
            if let Some(max) = body.max_sessions.as_ref().filter(|m| *m.get_ref() == 0) {
                return Err(located(max.span(), "`max-sessions` must be at least 1".into(), None));
            }
            if let (false, Some((key, Some(span)))) =
                (stdio, stdio_only.into_iter().find(|(_, s)| s.is_some()))
            {
                return Err(located(
                    span,
                    format!("`{key}` applies only to `transport = \"stdio\"` daemons"),
                    None,
                ));
            }
            if let Some(path) = &body.path {
                if !path.get_ref().starts_with('/') {
                    return Err(located(
                        path.span(),
                        format!("`path` must start with `/`, got `{}`", path.get_ref()),
                        None,
                    ));
                }
            }
        }
        (None, Some(_)) => {
            let only_with_command = [
                ("args", body.args.first().map(Spanned::span)),
                ("env", body.env.values().next().map(Spanned::span)),
                ("cwd", body.cwd.as_ref().map(Spanned::span)),
                ("port", body.port.as_ref().map(Spanned::span)),
                ("path", body.path.as_ref().map(Spanned::span)),
                ("stop-timeout", body.stop_timeout.as_ref().map(Spanned::span)),
                ("health-interval", body.health_interval.as_ref().map(Spanned::span)),
                ("startup-timeout", body.startup_timeout.as_ref().map(Spanned::span)),
                ("sharing", body.sharing.as_ref().map(Spanned::span)),
                ("idle-timeout", body.idle_timeout.as_ref().map(Spanned::span)),
            ];
            if let Some(transport) = body.transport.as_ref().filter(|t| *t.get_ref() == TransportKind::Stdio) {
                return Err(located(
                    transport.span(),
                    "`transport = \"stdio\"` needs `command` (mcpsm runs the server); this daemon has `url`".into(),
                    None,
                ));
            }
            if let Some((key, Some(span))) = only_with_command.into_iter().find(|(_, s)| s.is_some()) {
                return Err(located(
                    span,
                    format!("`{key}` applies only to daemons mcpsm starts (with `command`); this one has `url`"),
                    Some("put the full endpoint in `url`, or replace `url` with `command` + `port`".into()),
                ));
            }
        }
    }
    Ok(())
}

/// This binary's absolute path, for the `{mcpsm}` placeholder.
fn mcpsm_bin() -> String {
    std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "mcpsm".to_owned())
}

/// The value of environment variable `name`; `${HOME}` is the user's home even where `HOME`
/// is not set (Windows: `%USERPROFILE%`).
fn variable(name: &str) -> Result<String, std::env::VarError> {
    match std::env::var(name) {
        Err(std::env::VarError::NotPresent) if name == "HOME" => paths::user_home()
            .map(|home| home.to_string_lossy().into_owned())
            .ok_or(std::env::VarError::NotPresent),
        other => other,
    }
}

/// Expands `${VAR}`, `${VAR:-default}`, `$$` (a literal `$`) and a leading `~` / `~/`.
fn expand(value: &str) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let rest = if value == "~" || value.starts_with("~/") {
        let home = paths::user_home()
            .ok_or_else(|| format!("`{value}` starts with `~` but HOME is not set"))?;
        out.push_str(&home.to_string_lossy());
        &value[1..]
    } else {
        value
    };
    let mut chars = rest.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some((_, '$')) => {
                chars.next();
                out.push('$');
            }
            Some((_, '{')) => {
                let start = i + 2;
                let Some(len) = rest[start..].find('}') else {
                    return Err(format!("unclosed `${{` in `{value}`"));
                };
                let inner = &rest[start..start + len];
                let (name, default) = match inner.split_once(":-") {
                    Some((name, default)) => (name, Some(default)),
                    None => (inner, None),
                };
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!("`${{{inner}}}` is not a valid variable reference"));
                }
                match (variable(name), default) {
                    (Ok(v), Some(default)) if v.is_empty() => out.push_str(default),
                    (Ok(v), _) => out.push_str(&v),
                    (Err(_), Some(default)) => out.push_str(default),
                    (Err(_), None) => {
                        return Err(format!(
                            "environment variable `{name}` is not set\nhint: export {name}=… before starting mcpsm, or write `${{{name}:-default}}`"
                        ))
                    }
                }
                // skip the characters of `{...}`
                for (j, _) in chars.by_ref() {
                    if j == start + len {
                        break;
                    }
                }
            }
            _ => out.push('$'),
        }
    }
    Ok(out)
}

fn parse_duration(value: &DurationValue) -> Result<Duration, String> {
    match value {
        DurationValue::Seconds(s) => Ok(Duration::from_secs(*s)),
        DurationValue::Text(text) => parse_duration_text(text),
    }
}

/// A duration, or `"never"` (`None`). Zero is refused: it would stop a daemon at once.
fn parse_optional_duration(value: &DurationValue) -> Result<Option<Duration>, String> {
    if let DurationValue::Text(text) = value {
        if text.trim() == "never" {
            return Ok(None);
        }
    }
    match parse_duration(value)? {
        d if d.is_zero() => {
            Err("an idle timeout must be longer than 0; write \"never\" to turn it off".to_owned())
        }
        d => Ok(Some(d)),
    }
}

/// `"500ms"`, `"30s"`, `"2m"`, `"1h"` or a bare number of seconds.
pub fn parse_duration_text(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: f64 = number.parse().map_err(|_| {
        format!("`{text}` is not a duration; write e.g. \"30s\", \"500ms\" or \"2m\"")
    })?;
    let seconds = match unit.trim() {
        "ms" => number / 1000.0,
        "s" | "" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` in `{text}`; use ms, s, m or h"
            ))
        }
    };
    Ok(Duration::from_secs_f64(seconds))
}

fn line_of(source: &str, offset: usize) -> usize {
    source.as_bytes()[..offset.min(source.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The dotted key path of the `key = …` line at `offset`, with the table it is in.
fn key_path_at(source: &str, offset: usize) -> Option<String> {
    let offset = offset.min(source.len());
    let line_start = source[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = source[offset..]
        .find('\n')
        .map_or(source.len(), |i| offset + i);
    let line = source[line_start..line_end].trim();
    let table = source[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    if line.starts_with('[') {
        return Some(
            line.trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_owned(),
        );
    }
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"'))?;
    if key.is_empty() {
        return None;
    }
    Some(match table {
        Some(table) => format!("{table}.{key}"),
        None => key.to_owned(),
    })
}

fn locate_error(
    file: &str,
    source: &str,
    span: Range<usize>,
    message: String,
    hint: Option<String>,
) -> ConfigError {
    // A message may carry its own hint after a newline.
    let (message, hint) = match (message.split_once("\nhint: "), hint) {
        (Some((m, h)), None) => (m.to_owned(), Some(h.to_owned())),
        (_, hint) => (message, hint),
    };
    ConfigError {
        file: file.to_owned(),
        line: line_of(source, span.start),
        key: key_path_at(source, span.start)
            .map(|k| format!("{k}: "))
            .unwrap_or_default(),
        message,
        hint,
    }
}

fn toml_error(file: &str, source: &str, error: &toml::de::Error) -> ConfigError {
    let message = error.message().trim().to_owned();
    let span = error.span().unwrap_or(0..0);
    let (message, hint) = match unknown_name(&message) {
        Some((short, hint)) => (short, Some(hint)),
        None => (message, None),
    };
    locate_error(file, source, span, message, hint)
}

/// Rewrites serde's "unknown field `x`, expected one of `a`, `b`" (and "unknown variant") as
/// a short message plus a hint naming the closest valid name.
fn unknown_name(message: &str) -> Option<(String, String)> {
    let (what, rest) = if let Some(rest) = message.strip_prefix("unknown field `") {
        ("key", rest)
    } else {
        ("value", message.strip_prefix("unknown variant `")?)
    };
    let (unknown, expected) = rest.split_once('`')?;
    let valid: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let hint = match closest(unknown, valid.iter().copied()) {
        Some(close) => format!("did you mean `{close}`?"),
        None => format!("valid here: {}", valid.join(", ")),
    };
    Some((format!("unknown {what} `{unknown}`"), hint))
}

/// The candidate most similar to `input`, if any is similar enough.
pub fn closest<'a>(input: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (strsim::jaro_winkler(input, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Registry, ConfigError> {
        Registry::parse("daemons.toml", text.to_owned())
    }

    fn error(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn embedded_defaults_are_valid() {
        let registry = Registry::embedded();
        assert_eq!(registry.manager_port(), DEFAULT_MANAGER_PORT);
        for name in registry.names() {
            registry.daemon(name).expect("embedded daemon resolves");
        }
    }

    #[test]
    fn a_full_daemon_resolves() {
        std::env::set_var("MCPSM_TEST_TOKEN", "s3cret");
        let registry = parse(
            r#"
[manager]
port = 4000

[daemons.memory]
command = "node"
args = ["server.js", "--port", "{port}"]
env = { DB = "${MCPSM_TEST_TOKEN}/db", PORT = "{port}" }
port = 3100
transport = "sse"
startup-timeout = "1500ms"

[daemons.search]
url = "https://mcp.example.com/mcp"
headers = { Authorization = "Bearer ${MCPSM_TEST_TOKEN}" }
"#,
        )
        .expect("valid");
        assert_eq!(registry.manager_port(), 4000);
        let memory = registry.daemon("memory").expect("resolves");
        let launch = memory.launch.expect("managed");
        assert_eq!(launch.args, ["server.js", "--port", "3100"]);
        assert!(launch.env.contains(&("DB".into(), "s3cret/db".into())));
        assert!(launch.env.contains(&("PORT".into(), "3100".into())));
        assert_eq!(memory.url.as_str(), "http://127.0.0.1:3100/sse");
        assert_eq!(memory.startup_timeout, Duration::from_millis(1500));
        let search = registry.daemon("search").expect("resolves");
        assert!(search.launch.is_none());
        assert_eq!(search.transport, TransportKind::Auto);
        assert_eq!(
            search.headers,
            [("Authorization".into(), "Bearer s3cret".into())]
        );
    }

    #[test]
    fn oauth_grant_keys_resolve_and_incomplete_grants_are_refused() {
        let registry = parse(
            "[daemons.bot]\nurl = \"https://x/mcp\"\nauth = \"oauth\"\ngrant = \"client-credentials\"\nclient-id = \"bot\"\nprivate-key-file = \"/k.pem\"\nsigning-alg = \"ES256\"\ndpop = true\n",
        )
        .expect("valid");
        let oauth = registry
            .daemon("bot")
            .expect("resolves")
            .oauth
            .expect("oauth");
        assert_eq!(oauth.grant.grant, crate::auth::Grant::ClientCredentials);
        assert_eq!(oauth.grant.private_key_file, Some(PathBuf::from("/k.pem")));
        assert!(oauth.grant.dpop);
        let error = |text: &str| match parse(text).expect("parses").daemon("a") {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e.to_string(),
        };
        let message = error("[daemons.a]\nurl = \"https://x/mcp\"\nauth = \"oauth\"\ngrant = \"id-jag\"\nclient-id = \"c\"\n");
        assert!(message.contains("needs `id-token-file`"), "{message}");
        let message =
            error("[daemons.a]\nurl = \"https://x/mcp\"\nauth = \"oauth\"\ngrant = \"magic\"\n");
        assert!(message.contains("`grant` must be"), "{message}");
        let message = error("[daemons.a]\nurl = \"https://x/mcp\"\ndpop = true\n");
        assert!(
            message.contains("applies only with `auth = \"oauth\"`"),
            "{message}"
        );
    }

    #[test]
    fn unknown_key_names_line_key_and_suggestion() {
        let message = error("[daemons.memory]\ncomand = \"node\"\nport = 1\n");
        assert!(
            message.starts_with("daemons.toml:2: daemons.memory.comand: unknown key"),
            "{message}"
        );
        assert!(message.contains("did you mean `command`?"), "{message}");
    }

    #[test]
    fn bad_transport_value_suggests_the_valid_one() {
        let message =
            error("[daemons.a]\nurl = \"http://x/mcp\"\ntransport = \"streamable_http\"\n");
        assert!(
            message.starts_with("daemons.toml:3: daemons.a.transport:"),
            "{message}"
        );
        assert!(
            message.contains("did you mean `streamable-http`?"),
            "{message}"
        );
    }

    #[test]
    fn wrong_type_names_the_key() {
        let message = error("[manager]\nport = \"x\"\n");
        assert!(
            message.starts_with("daemons.toml:2: manager.port:"),
            "{message}"
        );
    }

    #[test]
    fn syntax_error_names_the_line() {
        let message = error("[daemons.a]\nurl = \"http://x\n");
        assert!(message.starts_with("daemons.toml:2:"), "{message}");
    }

    #[test]
    fn command_without_port_is_refused_with_a_hint() {
        let message = error("[daemons.a]\ncommand = \"node\"\n");
        assert!(
            message.contains("has a `command` but no `port`"),
            "{message}"
        );
        assert!(message.contains("hint: add `port = N`"), "{message}");
    }

    #[test]
    fn url_daemons_refuse_launch_keys() {
        let message = error("[daemons.a]\nurl = \"http://x/mcp\"\nport = 3\n");
        assert!(
            message.starts_with("daemons.toml:3: daemons.a.port:"),
            "{message}"
        );
    }

    #[test]
    fn missing_variable_is_reported_at_resolve_time_only() {
        let registry = parse(
            "[daemons.a]\nurl = \"http://x/${MCPSM_TEST_SURELY_UNSET}\"\n[daemons.b]\nurl = \"http://y/mcp\"\n",
        )
        .expect("structure is valid");
        assert!(registry.daemon("b").is_ok());
        let message = registry
            .daemon("a")
            .expect_err("unset variable")
            .to_string();
        assert!(
            message.contains("daemons.toml:2: daemons.a.url:"),
            "{message}"
        );
        assert!(message.contains("MCPSM_TEST_SURELY_UNSET"), "{message}");
    }

    #[test]
    fn unknown_daemon_suggests_a_close_name() {
        let registry = parse("[daemons.memory]\nurl = \"http://x/mcp\"\n").expect("valid");
        let message = registry.daemon("memroy").expect_err("unknown").to_string();
        assert!(message.contains("did you mean `memory`?"), "{message}");
    }

    #[test]
    fn expansion_rules() {
        std::env::set_var("MCPSM_TEST_X", "x");
        let home = paths::user_home()
            .expect("HOME is set for tests")
            .display()
            .to_string();
        assert_eq!(expand("a${MCPSM_TEST_X}b").as_deref(), Ok("axb"));
        assert_eq!(expand("${MCPSM_TEST_UNSET_Y:-dflt}").as_deref(), Ok("dflt"));
        assert_eq!(expand("$$HOME $5").as_deref(), Ok("$HOME $5"));
        assert_eq!(expand("~/x"), Ok(format!("{home}/x")));
        assert_eq!(expand("a~b").as_deref(), Ok("a~b"));
        assert!(expand("${unclosed").is_err());
    }

    #[test]
    fn durations() {
        let d = |t: &str| parse_duration(&DurationValue::Text(t.into()));
        assert_eq!(d("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(d("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(d("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(
            parse_duration(&DurationValue::Seconds(5)),
            Ok(Duration::from_secs(5))
        );
        assert!(d("soon").is_err());
        assert_eq!(d("1h"), Ok(Duration::from_secs(3600)));
        assert!(d("3d").is_err());
    }

    #[test]
    fn idle_timeouts_default_inherit_and_opt_out() {
        let registry = parse(
            r#"
[manager]
idle-timeout = "30m"
[defaults]
idle-timeout = "2s"
[daemons.a]
command = "x"
port = 4001
[daemons.b]
command = "x"
port = 4002
idle-timeout = "never"
[daemons.c]
command = "x"
port = 4003
idle-timeout = "5m"
"#,
        )
        .expect("valid");
        assert_eq!(
            registry.manager_idle_timeout(),
            Some(Duration::from_secs(1800))
        );
        let idle = |n: &str| registry.daemon(n).expect("daemon").idle_timeout;
        assert_eq!(idle("a"), Some(Duration::from_secs(2)));
        assert_eq!(idle("b"), None);
        assert_eq!(idle("c"), Some(Duration::from_secs(300)));
        let plain = parse("[daemons.a]\ncommand = \"x\"\nport = 4001\n").expect("valid");
        assert_eq!(plain.manager_idle_timeout(), None);
        assert_eq!(
            plain.daemon("a").expect("daemon").idle_timeout,
            Some(DEFAULT_IDLE_TIMEOUT)
        );
        let zero = error("[daemons.a]\ncommand = \"x\"\nport = 4001\nidle-timeout = \"0s\"\n");
        assert!(zero.contains(":4:") && zero.contains("never"), "{zero}");
    }
}
