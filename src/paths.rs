//! Every file location mcpsm uses, derived from one directory.
//!
//! `MCPSM_HOME` (default `~/.mcp-session-manager`) holds all state. `$HOME` is the one variable
//! every MCP client passes to the servers it spawns, so state is never located through
//! `XDG_RUNTIME_DIR`, `TMPDIR` or the working directory (clients strip those or run from `/`).

use std::path::{Path, PathBuf};

pub const HOME_ENV: &str = "MCPSM_HOME";
pub const REGISTRY_ENV: &str = "MCPSM_REGISTRY";
const DEFAULT_DIR: &str = ".mcp-session-manager";

#[derive(Debug, Clone)]
pub struct Paths {
    home: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot locate the mcpsm home directory: neither {HOME_ENV} nor HOME is set\n\
     hint: set {HOME_ENV}=/path/to/state (or HOME) in the environment that starts mcpsm"
)]
pub struct NoHome;

impl Paths {
    /// `MCPSM_HOME`, else `$HOME/.mcp-session-manager`.
    pub fn from_env() -> Result<Paths, NoHome> {
        if let Some(dir) = std::env::var_os(HOME_ENV).filter(|v| !v.is_empty()) {
            return Ok(Paths {
                home: PathBuf::from(dir),
            });
        }
        let home = user_home().ok_or(NoHome)?;
        Ok(Paths {
            home: home.join(DEFAULT_DIR),
        })
    }

    /// Everything under `home`.
    pub fn new(home: PathBuf) -> Paths {
        Paths { home }
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The registry at its default place (`--registry`/`MCPSM_REGISTRY` override it).
    pub fn default_registry(&self) -> PathBuf {
        self.home.join("daemons.toml")
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.home.join("logs")
    }

    /// A daemon's stdout and stderr (rotated as written to `NAME.log.1`, `NAME.log.2`).
    pub fn daemon_log(&self, name: &str) -> PathBuf {
        self.logs_dir().join(format!("{name}.log"))
    }

    /// The detached manager's own log.
    pub fn manager_log(&self) -> PathBuf {
        self.logs_dir().join("manager.log")
    }

    /// Held by the running manager for its whole life: one manager per home.
    pub fn manager_lock(&self) -> PathBuf {
        self.home.join("manager.lock")
    }

    /// Held by whoever is starting a manager, so concurrent proxies start one, not twenty.
    pub fn manager_start_lock(&self) -> PathBuf {
        self.home.join("manager.start.lock")
    }

    /// The manager's pid, port, version and the daemons it runs (for adoption).
    pub fn manager_state(&self) -> PathBuf {
        self.home.join("manager.json")
    }

    /// The secret the CLI and proxies send to the manager API (mode 0600).
    pub fn manager_token(&self) -> PathBuf {
        self.home.join("manager.token")
    }

    /// Creates the home and its `logs/` directory, mode 0700 whatever the umask (existing
    /// directories are left as they are).
    pub fn create_dirs(&self) -> std::io::Result<()> {
        create_private_dir(&self.home)?;
        create_private_dir(&self.logs_dir())
    }
}

/// Creates `dir` (and missing parents) with mode 0700; the mode is set explicitly on `dir`
/// itself, so neither a lax nor a strict umask changes it. An existing `dir` is left alone.
/// (Windows: created with the ACL its parent passes on; see [`crate::platform`].)
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    crate::platform::fs::create_private_dir(dir)
}

/// `$HOME`, if set and not empty.
/// On Windows, where `HOME` is usually unset, `%USERPROFILE%`.
pub fn user_home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(crate::platform::user_profile)
}
