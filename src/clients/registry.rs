//! Adding imported servers to the registry file (`daemons.toml`) without disturbing it.
//!
//! The file is edited with `toml_edit`: the user's comments, order and formatting stay, new
//! daemons are appended as `[daemons.NAME]` tables under a comment saying where they came from.
//! [`RegistryFile::render_checked`] parses the result with the registry's own loader and
//! resolves every added daemon, so an invalid registry is never written.

use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, InlineTable, Item, Table};

use super::server::{Remote, Server, Stdio};
use super::sharing::Choice;
use crate::config::{Registry, Sharing, DEFAULT_MANAGER_PORT};

/// The first port tried for an imported stdio daemon.
pub const FIRST_PORT: u16 = 3100;
/// Another first port for imported daemons (tests, or a machine where 3100 up is taken).
pub const FIRST_PORT_ENV: &str = "MCPSM_FIRST_PORT";

const NEW_FILE_HEADER: &str = "\
# mcpsm daemon registry: one [daemons.NAME] table per MCP server (see README.md, \"Registry reference\").
# Created by `mcpsm import`. Edit freely: mcpsm keeps your comments when it adds daemons.
";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot read the registry {file}: {cause}\nhint: check that {file} is a readable file"
    )]
    Read { file: String, cause: std::io::Error },
    #[error("{}", invalid_message(.0))]
    Invalid(crate::config::ConfigError),
    #[error("{0}")]
    Syntax(String),
    #[error("the registry mcpsm would write is invalid, so nothing was written: {0}\nhint: this is a bug in mcpsm import; please report it with the client file")]
    WouldBeInvalid(String),
}

fn invalid_message(error: &crate::config::ConfigError) -> String {
    let advice = "mcpsm import changes nothing while the registry is invalid";
    match error.hint {
        Some(_) => format!("{error}\n({advice}: fix it first)"),
        None => format!("{error}\nhint: fix the registry first; {advice}"),
    }
}

/// The registry file, loaded for editing.
pub struct RegistryFile {
    pub path: PathBuf,
    pub display: String,
    /// The file's text as read; `None` when it does not exist yet.
    pub original: Option<String>,
    doc: DocumentMut,
    /// Ports taken by daemons in the file (and the manager), plus those handed out here.
    used_ports: Vec<u16>,
}

/// How an imported server lands in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// A new daemon under this name; `renamed_from` is the name that was taken.
    New {
        name: String,
        renamed_from: Option<String>,
    },
    /// The registry already has this daemon, running the same server.
    Existing(String),
}

impl RegistryFile {
    /// Loads the file (a missing file is an empty registry). A file the registry loader refuses
    /// is an error: importing into it would hide the problem.
    pub fn load(path: &Path, display: String) -> Result<RegistryFile, Error> {
        let original = match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(e) if super::is_missing(&e) => None,
            Err(cause) => {
                return Err(Error::Read {
                    file: display,
                    cause,
                })
            }
        };
        let text = original.as_deref().unwrap_or("");
        let registry = Registry::parse(&display, text.to_owned()).map_err(Error::Invalid)?;
        let doc: DocumentMut = text
            .parse()
            .map_err(|e: toml_edit::TomlError| Error::Syntax(format!("{display}: {e}")))?;
        let mut used_ports = vec![registry.manager_port(), DEFAULT_MANAGER_PORT];
        if let Some(daemons) = doc.get("daemons").and_then(Item::as_table_like) {
            for (_, daemon) in daemons.iter() {
                let port = daemon
                    .as_table_like()
                    .and_then(|d| d.get("port"))
                    .and_then(Item::as_integer)
                    .and_then(|p| u16::try_from(p).ok());
                used_ports.extend(port);
            }
        }
        Ok(RegistryFile {
            path: path.to_path_buf(),
            display,
            original,
            doc,
            used_ports,
        })
    }

    fn daemons(&self) -> Option<&dyn toml_edit::TableLike> {
        self.doc.get("daemons").and_then(Item::as_table_like)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.daemons().is_some_and(|d| d.contains_key(name))
    }

    /// Whether daemon `name` runs exactly `server` (launch keys only: port, transport and
    /// timeouts are mcpsm's business).
    fn runs(&self, name: &str, server: &Server) -> bool {
        let Some(daemon) = self
            .daemons()
            .and_then(|d| d.get(name))
            .and_then(Item::as_table_like)
        else {
            return false;
        };
        let string = |key: &str| daemon.get(key).and_then(Item::as_str).map(str::to_owned);
        let list = |key: &str| -> Vec<String> {
            daemon
                .get(key)
                .and_then(Item::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let pairs = |key: &str| -> Vec<(String, String)> {
            let mut pairs: Vec<(String, String)> = daemon
                .get(key)
                .and_then(Item::as_table_like)
                .map(|t| {
                    t.iter()
                        .filter_map(|(k, v)| v.as_str().map(|v| (k.to_owned(), v.to_owned())))
                        .collect()
                })
                .unwrap_or_default();
            pairs.sort();
            pairs
        };
        let sorted = |pairs: &[(String, String)]| {
            let mut pairs = pairs.to_vec();
            pairs.sort();
            pairs
        };
        match server {
            Server::Stdio(s) => {
                string("command").as_deref() == Some(s.command.as_str())
                    && string("url").is_none()
                    && list("args") == s.args
                    && pairs("env") == sorted(&s.env)
                    && string("cwd") == s.cwd
            }
            Server::Remote(r) => {
                string("url").as_deref() == Some(r.url.as_str())
                    && pairs("headers") == sorted(&r.headers)
            }
        }
    }

    /// Where `server`, called `wanted` by the client, goes: a daemon that already runs it
    /// (preferring the name `wanted`), else `wanted`, else `wanted-2`, `wanted-3`, …
    pub fn place(&self, wanted: &str, server: &Server) -> Placement {
        let name = daemon_name(wanted);
        if self.runs(&name, server) {
            return Placement::Existing(name);
        }
        let same = self
            .daemons()
            .into_iter()
            .flat_map(|d| d.iter().map(|(k, _)| k.to_owned()).collect::<Vec<_>>())
            .find(|other| self.runs(other, server));
        if let Some(same) = same {
            return Placement::Existing(same);
        }
        if !self.contains(&name) {
            return Placement::New {
                renamed_from: (name != wanted).then(|| wanted.to_owned()),
                name,
            };
        }
        let free = (2..)
            .map(|n| format!("{name}-{n}"))
            .find(|candidate| !self.contains(candidate))
            .unwrap_or_else(|| format!("{name}-imported"));
        Placement::New {
            name: free,
            renamed_from: Some(wanted.to_owned()),
        }
    }

    /// Appends `[daemons.NAME]` for `server` (a stdio one with the `sharing` chosen for it,
    /// default `shared`); returns the port given to a stdio daemon.
    pub fn add(
        &mut self,
        name: &str,
        server: &Server,
        sharing: Option<&Choice>,
        origin: &str,
    ) -> Option<u16> {
        let mut table = Table::new();
        let port = match server {
            Server::Stdio(stdio) => {
                let port = self.next_port();
                fill_stdio(&mut table, stdio, port, sharing);
                Some(port)
            }
            Server::Remote(remote) => {
                fill_remote(&mut table, remote);
                None
            }
        };
        let blank_line = if self.daemons().is_some_and(|d| !d.is_empty())
            || self.doc.as_table().iter().next().is_some()
            || self
                .original
                .as_deref()
                .is_some_and(|t| !t.trim().is_empty())
        {
            "\n"
        } else {
            ""
        };
        table
            .decor_mut()
            .set_prefix(format!("{blank_line}# imported from {origin}\n"));
        let daemons = self.doc.entry("daemons").or_insert_with(|| {
            let mut daemons = Table::new();
            daemons.set_implicit(true);
            Item::Table(daemons)
        });
        if let Some(daemons) = daemons.as_table_like_mut() {
            daemons.insert(name, Item::Table(table));
        }
        port
    }

    /// The first port from [`FIRST_PORT`] (or `$MCPSM_FIRST_PORT`) that no daemon of the
    /// registry, nor the manager, uses, and that nothing listens on now.
    fn next_port(&mut self) -> u16 {
        let first = std::env::var(FIRST_PORT_ENV)
            .ok()
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p > 0)
            .unwrap_or(FIRST_PORT);
        let port = (first..=u16::MAX)
            .find(|p| !self.used_ports.contains(p) && crate::supervise::process::port_is_free(*p))
            .unwrap_or(first);
        self.used_ports.push(port);
        port
    }

    /// The manager's port in the file (`[manager] port`), or the default.
    pub fn manager_port(&self) -> u16 {
        self.doc
            .get("manager")
            .and_then(|m| m.get("port"))
            .and_then(Item::as_integer)
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(DEFAULT_MANAGER_PORT)
    }

    /// Sets `[manager] port`; daemons added later keep off it.
    pub fn set_manager_port(&mut self, port: u16) {
        let manager = self
            .doc
            .entry("manager")
            .or_insert_with(|| Item::Table(Table::new()));
        if let Some(manager) = manager.as_table_like_mut() {
            manager.insert("port", toml_edit::value(i64::from(port)));
        }
        self.used_ports.push(port);
    }

    /// The new text, checked with the registry loader; `added` daemons are resolved too.
    /// Returns the text and, per added daemon whose variables are not set here, a warning.
    pub fn render_checked(
        &self,
        added: &[(String, Server)],
    ) -> Result<(String, Vec<String>), Error> {
        let mut text = self.doc.to_string();
        if self.original.as_deref().is_none_or(|t| t.trim().is_empty()) {
            text = format!("{NEW_FILE_HEADER}\n{}", text.trim_start_matches('\n'));
        }
        let registry = Registry::parse(&self.display, text.clone())
            .map_err(|e| Error::WouldBeInvalid(e.to_string()))?;
        let mut warnings = Vec::new();
        for (name, server) in added {
            if let Err(e) = registry.daemon(name) {
                let unset = server.unset_variables();
                if unset.is_empty() {
                    return Err(Error::WouldBeInvalid(e.to_string()));
                }
                warnings.push(format!(
                    "daemon `{name}` needs {} set in the environment mcpsm runs in",
                    unset
                        .iter()
                        .map(|v| format!("${v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        Ok((text, warnings))
    }
}

fn fill_stdio(table: &mut Table, stdio: &Stdio, port: u16, sharing: Option<&Choice>) {
    table.insert("command", toml_edit::value(stdio.command.as_str()));
    if !stdio.args.is_empty() {
        table.insert(
            "args",
            toml_edit::value(toml_edit::Array::from_iter(stdio.args.iter())),
        );
    }
    if !stdio.env.is_empty() {
        table.insert("env", toml_edit::value(inline(&stdio.env)));
    }
    if let Some(cwd) = &stdio.cwd {
        table.insert("cwd", toml_edit::value(cwd.as_str()));
    }
    table.insert("port", toml_edit::value(i64::from(port)));
    table.insert("transport", toml_edit::value("stdio"));
    let mut value = toml_edit::value(sharing.map_or(Sharing::Shared, |c| c.sharing).as_str());
    // The surprising choices say why, where a user reading the registry sees them.
    if let Some(choice) = sharing.filter(|c| c.sharing != Sharing::Shared) {
        if let Some(value) = value.as_value_mut() {
            value
                .decor_mut()
                .set_suffix(format!("  # {}", choice.reason.replace('\n', " ")));
        }
    }
    table.insert("sharing", value);
}

fn fill_remote(table: &mut Table, remote: &Remote) {
    table.insert("url", toml_edit::value(remote.url.as_str()));
    if let Some(transport) = remote.transport {
        table.insert("transport", toml_edit::value(transport.as_str()));
    }
    if !remote.headers.is_empty() {
        table.insert("headers", toml_edit::value(inline(&remote.headers)));
    }
}

fn inline(pairs: &[(String, String)]) -> InlineTable {
    let mut table = InlineTable::new();
    for (key, value) in pairs {
        table.insert(key, value.as_str().into());
    }
    table
}

/// A client's server name as a registry daemon name: letters, digits, `-`, `_` and `.`, not
/// starting with `.`; anything else becomes `-`.
pub fn daemon_name(client_name: &str) -> String {
    let mut name: String = client_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    while name.starts_with('.') {
        name.remove(0);
    }
    if name.trim_matches('-').is_empty() {
        name = "server".into();
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stdio(command: &str) -> Server {
        Server::Stdio(Stdio {
            command: command.into(),
            args: vec!["-y".into(), "pkg".into()],
            env: vec![("B".into(), "2".into()), ("A".into(), "${TOKEN}".into())],
            cwd: None,
        })
    }

    fn load(text: &str) -> RegistryFile {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("daemons.toml");
        std::fs::write(&path, text).expect("write");
        RegistryFile::load(&path, "daemons.toml".into()).expect("load")
    }

    #[test]
    fn names_are_made_valid() {
        assert_eq!(daemon_name("memory"), "memory");
        assert_eq!(daemon_name("My Server/v2"), "My-Server-v2");
        assert_eq!(daemon_name(".hidden"), "hidden");
        assert_eq!(daemon_name("@@"), "server");
    }

    #[test]
    fn the_same_server_reuses_its_daemon_and_another_gets_a_new_name() {
        let file = load(
            "[daemons.memory]\ncommand = \"npx\"\nargs = [\"-y\", \"pkg\"]\n\
             env = { A = \"${TOKEN}\", B = \"2\" }\nport = 3100\ntransport = \"stdio\"\n",
        );
        assert_eq!(
            file.place("memory", &stdio("npx")),
            Placement::Existing("memory".into())
        );
        assert_eq!(
            file.place("mem", &stdio("npx")),
            Placement::Existing("memory".into())
        );
        assert_eq!(
            file.place("memory", &stdio("node")),
            Placement::New {
                name: "memory-2".into(),
                renamed_from: Some("memory".into())
            }
        );
    }

    #[test]
    fn ports_skip_those_in_use_and_comments_survive() {
        let mut file = load(
            "# my servers\n[manager]\nport = 3101 # the API\n\n\
             [daemons.a]\ncommand = \"x\"\nport = 3100\n",
        );
        assert_eq!(file.add("b", &stdio("npx"), None, "test"), Some(3102));
        assert_eq!(file.add("c", &stdio("node"), None, "test"), Some(3103));
        let (text, warnings) = file
            .render_checked(&[("b".into(), stdio("npx"))])
            .expect("valid");
        assert!(
            text.starts_with("# my servers\n[manager]\nport = 3101 # the API\n"),
            "{text}"
        );
        assert!(
            text.contains("\n# imported from test\n[daemons.b]\n"),
            "{text}"
        );
        if std::env::var_os("TOKEN").is_none() {
            assert_eq!(warnings.len(), 1, "{warnings:?}");
        }
    }

    #[test]
    fn an_invalid_registry_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("daemons.toml");
        std::fs::write(&path, "[daemons.a]\ncommand = \"x\"\n").expect("write");
        let error = RegistryFile::load(&path, "daemons.toml".into())
            .err()
            .expect("no port is an error");
        assert!(
            error
                .to_string()
                .contains("changes nothing while the registry is invalid"),
            "{error}"
        );
    }
}
