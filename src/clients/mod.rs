//! MCP clients' configuration files: where each client keeps its MCP servers, how to read
//! them, and how to point an entry at `mcpsm proxy`. Used by `mcpsm generate-config` and
//! `mcpsm import`.
//!
//! What it guarantees about a client's file:
//! - **Merge, never overwrite.** Only the entries mcpsm writes change. In JSON files every other
//!   key keeps its value and its place (serde_json's `preserve_order`), the file's indentation
//!   and final newline are kept; Codex's TOML is edited with `toml_edit`, so comments and layout
//!   survive and a `[mcp_servers.NAME]` table is updated in place, never duplicated.
//! - **Absolute proxy command.** An entry runs the canonical path of the running binary with
//!   `proxy --target NAME`, whatever the client's `PATH` is.
//! - **Atomic, with a backup** ([`files`]): the new text goes to a temp file next to the target
//!   and is renamed over it; the old bytes are kept as `FILE.mcpsm-backup-YYYYMMDDTHHMMSS`.
//!
//! | client | `user` scope (default) | `local` scope | `project` scope (in the cwd) | servers key |
//! |---|---|---|---|---|
//! | `claude-code` | `~/.claude.json` | `~/.claude.json` → `projects["<cwd>"]` | `.mcp.json` | `mcpServers` |
//! | `claude-desktop` | `~/.config/Claude/claude_desktop_config.json` | — | — | `mcpServers` |
//! | `cursor` | `~/.cursor/mcp.json` | — | `.cursor/mcp.json` | `mcpServers` |
//! | `vscode` | `~/.config/Code/User/mcp.json` | — | `.vscode/mcp.json` | `servers` |
//! | `codex` | `$CODEX_HOME/config.toml` (`~/.codex`) | — | `.codex/config.toml` | `[mcp_servers.NAME]` |
//! | `gemini` | `~/.gemini/settings.json` | — | `.gemini/settings.json` | `mcpServers` |
//! | `windsurf` | `~/.codeium/windsurf/mcp_config.json` | — | — | `mcpServers` |
//!
//! (`~/.config` is `$XDG_CONFIG_HOME` when set; Claude Desktop and VS Code live under
//! `~/Library/Application Support` on macOS and `%APPDATA%` (`~\AppData\Roaming`) on Windows;
//! `~` is `%USERPROFILE%` on Windows.)

pub mod files;
pub mod registry;
mod server;
pub mod sharing;

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

pub use crate::platform::Os;

pub use server::{Entry, Remote, Server, Stdio};

/// The MCP clients mcpsm knows how to configure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    ClaudeCode,
    ClaudeDesktop,
    Cursor,
    VsCode,
    Codex,
    Gemini,
    Windsurf,
}

impl Client {
    pub const ALL: [Client; 7] = [
        Client::ClaudeCode,
        Client::ClaudeDesktop,
        Client::Cursor,
        Client::VsCode,
        Client::Codex,
        Client::Gemini,
        Client::Windsurf,
    ];

    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Client::ClaudeCode => "claude-code",
            Client::ClaudeDesktop => "claude-desktop",
            Client::Cursor => "cursor",
            Client::VsCode => "vscode",
            Client::Codex => "codex",
            Client::Gemini => "gemini",
            Client::Windsurf => "windsurf",
        }
    }

    /// The product's name, for messages.
    pub fn title(self) -> &'static str {
        match self {
            Client::ClaudeCode => "Claude Code",
            Client::ClaudeDesktop => "Claude Desktop",
            Client::Cursor => "Cursor",
            Client::VsCode => "VS Code",
            Client::Codex => "Codex",
            Client::Gemini => "Gemini CLI",
            Client::Windsurf => "Windsurf",
        }
    }

    /// The scopes this client has, the default (`user`) first.
    pub fn scopes(self) -> &'static [Scope] {
        match self {
            Client::ClaudeCode => &[Scope::User, Scope::Local, Scope::Project],
            Client::Cursor | Client::VsCode | Client::Codex | Client::Gemini => {
                &[Scope::User, Scope::Project]
            }
            Client::ClaudeDesktop | Client::Windsurf => &[Scope::User],
        }
    }

    /// Where this client keeps its servers for `scope`.
    pub fn location(self, scope: Scope, env: &Environment) -> Result<Location, Error> {
        if !self.scopes().contains(&scope) {
            return Err(Error::UnsupportedScope {
                client: self,
                scope,
            });
        }
        let home = &env.home;
        let project = |relative: &str| under(&env.cwd, relative);
        let servers_key = |key: &str| vec![key.to_owned()];
        let (path, servers_key) = match (self, scope) {
            (Client::ClaudeCode, Scope::User) => {
                (under(home, ".claude.json"), servers_key("mcpServers"))
            }
            (Client::ClaudeCode, Scope::Local) => (
                under(home, ".claude.json"),
                vec![
                    "projects".to_owned(),
                    env.cwd.to_string_lossy().into_owned(),
                    "mcpServers".to_owned(),
                ],
            ),
            (Client::ClaudeCode, _) => (project(".mcp.json"), servers_key("mcpServers")),
            (Client::ClaudeDesktop, _) => (
                under(&env.app_config_dir(), "Claude/claude_desktop_config.json"),
                servers_key("mcpServers"),
            ),
            (Client::Cursor, Scope::User) => {
                (under(home, ".cursor/mcp.json"), servers_key("mcpServers"))
            }
            (Client::Cursor, _) => (project(".cursor/mcp.json"), servers_key("mcpServers")),
            (Client::VsCode, Scope::User) => (
                under(&env.app_config_dir(), "Code/User/mcp.json"),
                servers_key("servers"),
            ),
            (Client::VsCode, _) => (project(".vscode/mcp.json"), servers_key("servers")),
            (Client::Codex, Scope::User) => (
                env.codex_home
                    .clone()
                    .unwrap_or_else(|| under(home, ".codex"))
                    .join("config.toml"),
                servers_key("mcp_servers"),
            ),
            (Client::Codex, _) => (project(".codex/config.toml"), servers_key("mcp_servers")),
            (Client::Gemini, Scope::User) => (
                under(home, ".gemini/settings.json"),
                servers_key("mcpServers"),
            ),
            (Client::Gemini, _) => (project(".gemini/settings.json"), servers_key("mcpServers")),
            (Client::Windsurf, _) => (
                under(home, ".codeium/windsurf/mcp_config.json"),
                servers_key("mcpServers"),
            ),
        };
        Ok(Location {
            client: self,
            scope,
            path,
            servers_key,
            project_dir: (scope != Scope::User).then(|| env.cwd.clone()),
            home: home.clone(),
        })
    }

    fn format(self) -> Format {
        match self {
            Client::Codex => Format::Toml,
            _ => Format::Json,
        }
    }

    /// The proxy entry this client gets for daemon `target` (JSON clients).
    fn proxy_entry(self, proxy: &ProxyCommand, target: &str) -> Map<String, Value> {
        let mut entry = Map::new();
        if matches!(self, Client::ClaudeCode | Client::VsCode) {
            // VS Code requires it; Claude Code writes it itself (`claude mcp add`).
            entry.insert("type".into(), Value::from("stdio"));
        }
        entry.insert("command".into(), Value::from(proxy.program.as_str()));
        entry.insert("args".into(), Value::from(proxy.args(target)));
        entry
    }
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Client {
    type Err = String;
    fn from_str(text: &str) -> Result<Client, String> {
        if let Some(client) = Client::ALL.into_iter().find(|c| c.as_str() == text) {
            return Ok(client);
        }
        let names: Vec<&str> = Client::ALL.iter().map(|c| c.as_str()).collect();
        let suggestion = crate::config::closest(text, names.iter().copied())
            .map(|close| format!(" (did you mean `{close}`?)"))
            .unwrap_or_default();
        Err(format!(
            "unknown client `{text}`{suggestion}; the clients mcpsm can configure are {}",
            names.join(", ")
        ))
    }
}

/// Whose configuration: every project of this user, this project for this user only, or the
/// project's shared file (in the current directory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    User,
    Local,
    Project,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::User => "user",
            Scope::Local => "local",
            Scope::Project => "project",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(text: &str) -> Result<Scope, String> {
        match text {
            "user" => Ok(Scope::User),
            "local" => Ok(Scope::Local),
            "project" => Ok(Scope::Project),
            other => Err(format!(
                "unknown scope `{other}`; expected user, local or project"
            )),
        }
    }
}

/// What locating client files depends on, read once from the process.
#[derive(Debug, Clone)]
pub struct Environment {
    pub home: PathBuf,
    /// The project directory for `local` and `project` scopes.
    pub cwd: PathBuf,
    /// `$XDG_CONFIG_HOME` when set to an absolute path (Linux).
    pub xdg_config_home: Option<PathBuf>,
    /// `$CODEX_HOME`, where Codex keeps `config.toml`.
    pub codex_home: Option<PathBuf>,
    /// `%APPDATA%` when set to an absolute path (Windows).
    pub appdata: Option<PathBuf>,
    /// Which OS's conventions to follow (the running one, except in tests).
    pub os: Os,
}

impl Environment {
    pub fn from_process() -> Result<Environment, Error> {
        let home = crate::paths::user_home().ok_or(Error::NoHome)?;
        let cwd = std::env::current_dir().map_err(Error::NoCwd)?;
        let absolute = |name: &str| {
            std::env::var_os(name)
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
        };
        Ok(Environment {
            home,
            cwd,
            xdg_config_home: absolute("XDG_CONFIG_HOME"),
            codex_home: absolute("CODEX_HOME"),
            appdata: absolute("APPDATA"),
            os: Os::current(),
        })
    }

    /// Where desktop applications (Electron: Claude Desktop, VS Code) keep their settings.
    /// macOS: `~/Library/Application Support`; Windows: `%APPDATA%` (`~\AppData\Roaming`);
    /// Linux: `$XDG_CONFIG_HOME` or `~/.config`.
    fn app_config_dir(&self) -> PathBuf {
        match self.os {
            Os::MacOs => under(&self.home, "Library/Application Support"),
            Os::Windows => self
                .appdata
                .clone()
                .unwrap_or_else(|| under(&self.home, "AppData/Roaming")),
            Os::Linux => self
                .xdg_config_home
                .clone()
                .unwrap_or_else(|| self.home.join(".config")),
        }
    }
}

/// `base` joined with each `/`-separated part of `relative`, so every separator is the OS's.
fn under(base: &Path, relative: &str) -> PathBuf {
    relative
        .split('/')
        .fold(base.to_path_buf(), |path, part| path.join(part))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Toml,
}

/// One client's servers in one file.
#[derive(Debug, Clone)]
pub struct Location {
    pub client: Client,
    pub scope: Scope,
    pub path: PathBuf,
    /// The keys from the document's root to the object holding the servers.
    pub servers_key: Vec<String>,
    /// The project directory for `local`/`project` scope: relative commands there run in it.
    pub project_dir: Option<PathBuf>,
    home: PathBuf,
}

impl Location {
    /// The file, with `$HOME` shown as `~`, for messages.
    pub fn display(&self) -> String {
        display_path(&self.path, &self.home)
    }

    /// `claude-code, user scope`, for messages.
    pub fn describe(&self) -> String {
        format!("{} ({}, {} scope)", self.display(), self.client, self.scope)
    }

    /// Any path, with `$HOME` shown as `~`.
    pub fn display_other(&self, path: &Path) -> String {
        display_path(path, &self.home)
    }

    /// The servers key path as written in messages: `projects["/abs"].mcpServers`.
    pub fn servers_key_display(&self) -> String {
        let mut out = String::new();
        for (i, key) in self.servers_key.iter().enumerate() {
            if key.contains('/') {
                out.push_str(&format!("[{key:?}]"));
            } else {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(key);
            }
        }
        out
    }
}

/// `path` with a leading `$HOME` shown as `~`.
pub fn display_path(path: &Path, home: &Path) -> String {
    match path.strip_prefix(home) {
        Ok(rest) if !home.as_os_str().is_empty() => format!("~/{}", rest.display()),
        _ => path.display().to_string(),
    }
}

/// The command every proxy entry runs: this binary, by its canonical absolute path.
#[derive(Debug, Clone)]
pub struct ProxyCommand {
    pub program: String,
}

impl ProxyCommand {
    pub fn current() -> Result<ProxyCommand, Error> {
        let exe = std::env::current_exe()
            .and_then(std::fs::canonicalize)
            .map_err(Error::NoExe)?;
        let program = exe.to_str().ok_or_else(|| {
            Error::NoExe(std::io::Error::other(format!(
                "its path {} is not valid UTF-8",
                exe.display()
            )))
        })?;
        Ok(ProxyCommand {
            program: program.to_owned(),
        })
    }

    pub fn args(&self, target: &str) -> Vec<String> {
        vec!["proxy".into(), "--target".into(), target.into()]
    }

    /// Whether `command` is this binary (the same file, by any path).
    fn is_this_binary(&self, command: &str) -> bool {
        command == self.program
            || std::fs::canonicalize(command).is_ok_and(|p| p.to_str() == Some(&self.program))
    }
}

/// Errors about client files; each names the file and ends with a hint.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{client} has no `{scope}` scope\nhint: {}", scope_hint(*client))]
    UnsupportedScope { client: Client, scope: Scope },
    #[error("neither HOME nor a home directory is known\nhint: set HOME to your home directory")]
    NoHome,
    #[error("cannot read the current directory (needed for local and project scopes): {0}\nhint: run mcpsm from your project's directory")]
    NoCwd(std::io::Error),
    #[error("cannot find the path of the running mcpsm binary: {0}\nhint: run mcpsm by its installed path, e.g. ~/.cargo/bin/mcpsm")]
    NoExe(std::io::Error),
    #[error("cannot read {file}: {cause}\nhint: check that {file} is a readable file")]
    Read { file: String, cause: std::io::Error },
    #[error("{file}:{line}:{column}: invalid JSON: {message}\nhint: {hint} (mcpsm left the file as it was)")]
    InvalidJson {
        file: String,
        line: usize,
        column: usize,
        message: String,
        hint: String,
    },
    #[error("{file}:{line}:{column}: invalid TOML: {message}\nhint: fix the file and run the command again (mcpsm left the file as it was)")]
    InvalidToml {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}: `{key}` is not {expected}\nhint: fix that key by hand, or move the file away to start afresh (mcpsm left the file as it was)")]
    Shape {
        file: String,
        key: String,
        expected: &'static str,
    },
    #[error("cannot write {file}: {cause}\nhint: {hint} (nothing was changed)")]
    Write {
        file: String,
        cause: std::io::Error,
        hint: String,
    },
    #[error("cannot replace {file}: {cause}\nhint: {hint}")]
    Replace {
        file: String,
        cause: std::io::Error,
        hint: String,
    },
    #[error("no mcpsm backup of {file} to restore\nhint: backups are named {file}.mcpsm-backup-YYYYMMDDTHHMMSS; mcpsm makes one each time it changes the file")]
    NoBackup { file: String },
    #[error("{file} changed after mcpsm wrote it at {when} (the client, or you, edited it since), so restoring {backup} would throw those edits away\nhint: `--undo --dry-run` shows what would be lost; `--undo --force` restores it anyway")]
    ChangedSince {
        file: String,
        when: String,
        backup: String,
    },
}

fn scope_hint(client: Client) -> String {
    let scopes: Vec<&str> = client.scopes().iter().map(|s| s.as_str()).collect();
    match scopes.as_slice() {
        [only] => format!(
            "{} has only the `{only}` scope: leave out --scope",
            client.title()
        ),
        _ => format!("use --scope {}", scopes.join(" or --scope ")),
    }
}

/// A client's file, loaded and ready to edit.
pub struct ClientFile {
    pub location: Location,
    /// The file's bytes as read; `None` when it does not exist.
    pub original: Option<Vec<u8>>,
    document: Document,
}

enum Document {
    Json {
        root: Map<String, Value>,
        indent: String,
        final_newline: bool,
    },
    Toml(toml_edit::DocumentMut),
}

/// What [`ClientFile::set_proxy`] did to an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetOutcome {
    Added,
    /// The entry ran something else (described).
    Replaced(String),
    Unchanged,
}

impl ClientFile {
    /// Reads the file; a missing file is an empty configuration (`original` is `None`).
    pub fn load(location: &Location) -> Result<ClientFile, Error> {
        let file = location.display();
        let original = match std::fs::read(&location.path) {
            Ok(bytes) => Some(bytes),
            Err(e) if is_missing(&e) => None,
            Err(cause) => return Err(Error::Read { file, cause }),
        };
        let text = match &original {
            None => "",
            Some(bytes) => std::str::from_utf8(bytes).map_err(|e| Error::Read {
                file: file.clone(),
                cause: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?,
        };
        let document = match location.client.format() {
            Format::Json => parse_json(text, location)?,
            Format::Toml => {
                Document::Toml(text.parse::<toml_edit::DocumentMut>().map_err(|e| {
                    let (line, column) = e
                        .span()
                        .map_or((1, 1), |span| line_column(text, span.start));
                    Error::InvalidToml {
                        file: file.clone(),
                        line,
                        column,
                        message: e.message().trim().to_owned(),
                    }
                })?)
            }
        };
        let loaded = ClientFile {
            location: location.clone(),
            original,
            document,
        };
        loaded.servers()?; // shape errors now, before anything is planned
        Ok(loaded)
    }

    pub fn exists(&self) -> bool {
        self.original.is_some()
    }

    /// The entries in the servers object, in file order, as raw JSON values (Codex tables are
    /// converted).
    pub fn servers(&self) -> Result<Vec<(String, Value)>, Error> {
        match &self.document {
            Document::Json { root, .. } => {
                let mut node = root;
                for (depth, key) in self.location.servers_key.iter().enumerate() {
                    match node.get(key) {
                        None => return Ok(Vec::new()),
                        Some(Value::Object(inner)) => node = inner,
                        Some(_) => return Err(self.shape_error(depth + 1)),
                    }
                }
                Ok(node.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            }
            Document::Toml(doc) => match doc.get(&self.location.servers_key[0]) {
                None => Ok(Vec::new()),
                Some(item) => {
                    let table = item.as_table_like().ok_or_else(|| self.shape_error(1))?;
                    Ok(table
                        .iter()
                        .map(|(k, v)| (k.to_owned(), toml_to_json(v)))
                        .collect())
                }
            },
        }
    }

    /// Claude Code's `~/.claude.json`: each project directory (`projects["/dir"]`) that has
    /// servers of its own (local scope), with their names, in file order.
    pub fn project_servers(&self) -> Vec<(String, Vec<String>)> {
        let Document::Json { root, .. } = &self.document else {
            return Vec::new();
        };
        if self.location.client != Client::ClaudeCode {
            return Vec::new();
        }
        let Some(Value::Object(projects)) = root.get("projects") else {
            return Vec::new();
        };
        projects
            .iter()
            .filter_map(|(dir, project)| {
                let servers = project.get("mcpServers")?.as_object()?;
                (!servers.is_empty()).then(|| (dir.clone(), servers.keys().cloned().collect()))
            })
            .collect()
    }

    /// Reads every entry: a server to import, a proxy, or something mcpsm cannot take over.
    pub fn entries(&self, proxy: &ProxyCommand) -> Result<Vec<(String, Entry)>, Error> {
        Ok(self
            .servers()?
            .into_iter()
            .map(|(name, value)| {
                let entry = server::read_entry(&value, &self.location, proxy);
                (name, entry)
            })
            .collect())
    }

    /// Points entry `name` at `mcpsm proxy --target TARGET`: a new entry, or the existing one
    /// rewritten in place (its launch keys replaced, every other key kept).
    pub fn set_proxy(
        &mut self,
        name: &str,
        target: &str,
        proxy: &ProxyCommand,
    ) -> Result<SetOutcome, Error> {
        let client = self.location.client;
        let previous = self
            .servers()?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v);
        let outcome = match &previous {
            None => SetOutcome::Added,
            Some(value) if self.is_exact_proxy(value, target, proxy) => {
                return Ok(SetOutcome::Unchanged)
            }
            Some(value) => SetOutcome::Replaced(server::describe(value)),
        };
        match &mut self.document {
            Document::Json { root, .. } => {
                let servers = servers_mut(root, &self.location)?;
                let entry = match servers.get(name) {
                    Some(Value::Object(old)) => {
                        rewrite_json_entry(old, client.proxy_entry(proxy, target), client)
                    }
                    _ => client.proxy_entry(proxy, target),
                };
                servers.insert(name.to_owned(), Value::Object(entry));
            }
            Document::Toml(doc) => set_toml_proxy(doc, &self.location, name, target, proxy)?,
        }
        Ok(outcome)
    }

    /// Whether an existing entry already runs this binary's proxy for `target`, exactly as
    /// mcpsm writes it (other keys, even `env`, are the user's business and stay).
    fn is_exact_proxy(&self, previous: &Value, target: &str, proxy: &ProxyCommand) -> bool {
        let client = self.location.client;
        let type_ok =
            client != Client::VsCode || previous.get("type") == Some(&Value::from("stdio"));
        type_ok
            && previous.get("command") == Some(&Value::from(proxy.program.as_str()))
            && previous.get("args") == Some(&Value::from(proxy.args(target)))
    }

    /// The document as it would be written.
    pub fn render(&self) -> String {
        match &self.document {
            Document::Json {
                root,
                indent,
                final_newline,
            } => {
                let mut out = Vec::new();
                let formatter = serde_json::ser::PrettyFormatter::with_indent(indent.as_bytes());
                let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
                // Serializing a Value into a Vec cannot fail.
                let _ = serde::Serialize::serialize(root, &mut serializer);
                let mut text = String::from_utf8(out).unwrap_or_default();
                if *final_newline {
                    text.push('\n');
                }
                text
            }
            Document::Toml(doc) => doc.to_string(),
        }
    }

    fn shape_error(&self, depth: usize) -> Error {
        let mut shown = self.location.clone();
        shown.servers_key.truncate(depth);
        Error::Shape {
            file: self.location.display(),
            key: shown.servers_key_display(),
            expected: if self.location.client.format() == Format::Toml {
                "a table"
            } else {
                "an object"
            },
        }
    }
}

fn is_missing(error: &std::io::Error) -> bool {
    // ENOTDIR: a parent is a regular file, so the file cannot exist either.
    error.kind() == std::io::ErrorKind::NotFound
        || error.kind() == std::io::ErrorKind::NotADirectory
}

fn parse_json(text: &str, location: &Location) -> Result<Document, Error> {
    let file = location.display();
    if text.trim().is_empty() {
        return Ok(Document::Json {
            root: Map::new(),
            indent: "  ".into(),
            final_newline: true,
        });
    }
    let value: Value = serde_json::from_str(text).map_err(|e| {
        let message = e.to_string();
        let message = message
            .rsplit_once(" at line ")
            .map_or(message.as_str(), |(m, _)| m)
            .to_owned();
        let at = text
            .lines()
            .nth(e.line().saturating_sub(1))
            .and_then(|l| l.chars().nth(e.column().saturating_sub(1)));
        let hint = if matches!(at, Some('/')) {
            "the file has a comment, which JSON does not allow; remove it (mcpsm cannot keep comments in JSON files)".to_owned()
        } else {
            "fix the JSON at that place and run the command again".to_owned()
        };
        Error::InvalidJson {
            file: file.clone(),
            line: e.line(),
            column: e.column(),
            message,
            hint,
        }
    })?;
    let Value::Object(root) = value else {
        return Err(Error::Shape {
            file,
            key: "(the document)".into(),
            expected: "an object",
        });
    };
    Ok(Document::Json {
        root,
        indent: detect_indent(text),
        final_newline: text.ends_with('\n'),
    })
}

/// The indentation unit of a pretty-printed JSON document (two spaces if none is seen).
fn detect_indent(text: &str) -> String {
    text.lines()
        .skip(1)
        .find_map(|line| {
            let trimmed = line.trim_start_matches([' ', '\t']);
            let indent = &line[..line.len() - trimmed.len()];
            (!indent.is_empty() && !trimmed.is_empty()).then(|| indent.to_owned())
        })
        .unwrap_or_else(|| "  ".into())
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The servers object, created along its key path when missing.
fn servers_mut<'a>(
    root: &'a mut Map<String, Value>,
    location: &Location,
) -> Result<&'a mut Map<String, Value>, Error> {
    let mut node = root;
    for (depth, key) in location.servers_key.iter().enumerate() {
        let slot = node
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        node = match slot {
            Value::Object(inner) => inner,
            _ => {
                let mut shown = location.clone();
                shown.servers_key.truncate(depth + 1);
                return Err(Error::Shape {
                    file: location.display(),
                    key: shown.servers_key_display(),
                    expected: "an object",
                });
            }
        };
    }
    Ok(node)
}

/// `old` with its launch keys replaced by `proxy`'s, at the place of the first launch key;
/// every other key (`disabled`, `timeout`, `alwaysAllow`, …) stays where it was.
fn rewrite_json_entry(
    old: &Map<String, Value>,
    proxy: Map<String, Value>,
    client: Client,
) -> Map<String, Value> {
    let mut out = Map::new();
    let mut proxy = Some(proxy);
    for (key, value) in old {
        if server::is_launch_key(key, client) {
            if let Some(proxy) = proxy.take() {
                out.extend(proxy);
            }
        } else {
            out.insert(key.clone(), value.clone());
        }
    }
    if let Some(proxy) = proxy {
        out.extend(proxy);
    }
    out
}

fn set_toml_proxy(
    doc: &mut toml_edit::DocumentMut,
    location: &Location,
    name: &str,
    target: &str,
    proxy: &ProxyCommand,
) -> Result<(), Error> {
    let key = &location.servers_key[0];
    let servers = doc.entry(key).or_insert_with(|| {
        let mut table = toml_edit::Table::new();
        table.set_implicit(true); // only `[mcp_servers.NAME]` headers appear
        toml_edit::Item::Table(table)
    });
    let shape = || Error::Shape {
        file: location.display(),
        key: key.clone(),
        expected: "a table",
    };
    let servers = servers.as_table_like_mut().ok_or_else(shape)?;
    let args = toml_edit::Array::from_iter(proxy.args(target));
    match servers
        .get_mut(name)
        .and_then(|item| item.as_table_like_mut())
    {
        Some(entry) => {
            let launch: Vec<String> = entry
                .iter()
                .map(|(k, _)| k.to_owned())
                .filter(|k| {
                    server::is_launch_key(k, Client::Codex) && k != "command" && k != "args"
                })
                .collect();
            for k in launch {
                entry.remove(&k);
            }
            set_toml_value(
                entry,
                "command",
                toml_edit::Value::from(proxy.program.as_str()),
            );
            set_toml_value(entry, "args", toml_edit::Value::Array(args));
        }
        None => {
            // `mcp_servers = { … }` written inline takes inline entries.
            let inline = !matches!(doc.get(key), Some(toml_edit::Item::Table(_)));
            let mut table = toml_edit::Table::new();
            table.insert("command", toml_edit::value(proxy.program.as_str()));
            table.insert("args", toml_edit::value(args));
            let servers = doc
                .get_mut(key)
                .and_then(toml_edit::Item::as_table_like_mut)
                .ok_or_else(shape)?;
            let item = if inline {
                toml_edit::Item::Value(toml_edit::Value::InlineTable(table.into_inline_table()))
            } else {
                toml_edit::Item::Table(table)
            };
            servers.insert(name, item);
        }
    }
    Ok(())
}

/// Sets `key` keeping its place (and the comment before it) when it exists.
fn set_toml_value(table: &mut dyn toml_edit::TableLike, key: &str, value: toml_edit::Value) {
    match table.get_mut(key) {
        Some(toml_edit::Item::Value(old)) => {
            let decor = old.decor().clone();
            *old = value;
            *old.decor_mut() = decor;
        }
        _ => {
            table.insert(key, toml_edit::Item::Value(value));
        }
    }
}

/// A TOML item as JSON, for reading Codex entries with the same code as JSON clients.
fn toml_to_json(item: &toml_edit::Item) -> Value {
    match item {
        toml_edit::Item::None => Value::Null,
        toml_edit::Item::Value(value) => toml_value_to_json(value),
        toml_edit::Item::Table(table) => Value::Object(
            table
                .iter()
                .map(|(k, v)| (k.to_owned(), toml_to_json(v)))
                .collect(),
        ),
        toml_edit::Item::ArrayOfTables(tables) => Value::Array(
            tables
                .iter()
                .map(|t| toml_to_json(&toml_edit::Item::Table(t.clone())))
                .collect(),
        ),
    }
}

fn toml_value_to_json(value: &toml_edit::Value) -> Value {
    match value {
        toml_edit::Value::String(s) => Value::from(s.value().as_str()),
        toml_edit::Value::Integer(i) => Value::from(*i.value()),
        toml_edit::Value::Float(f) => {
            serde_json::Number::from_f64(*f.value()).map_or(Value::Null, Value::Number)
        }
        toml_edit::Value::Boolean(b) => Value::from(*b.value()),
        toml_edit::Value::Datetime(d) => Value::from(d.value().to_string()),
        toml_edit::Value::Array(array) => {
            Value::Array(array.iter().map(toml_value_to_json).collect())
        }
        toml_edit::Value::InlineTable(table) => Value::Object(
            table
                .iter()
                .map(|(k, v)| (k.to_owned(), toml_value_to_json(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests;
