//! `manager.json`: the manager's pid, port and version, and the daemons it runs, so that the
//! next manager can adopt daemons that outlived a crashed one. Written atomically (temp file +
//! rename) on every change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ManagerState {
    pub pid: u32,
    pub port: u16,
    pub version: String,
    /// Unix seconds.
    pub started_at: u64,
    #[serde(default)]
    pub daemons: BTreeMap<String, DaemonRecord>,
}

/// One running daemon: a pid and its start time name one process, even after pid reuse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonRecord {
    pub pid: u32,
    /// When the process started, in the OS's unit (see [`crate::platform::start_time`]): clock
    /// ticks since boot on Linux, seconds since the epoch on macOS, 100 ns since 1601 on Windows.
    pub start_time: u64,
    pub port: u16,
    /// Unix seconds.
    pub started_at: u64,
    #[serde(default)]
    pub restarts: u32,
}

impl ManagerState {
    /// Reads the file; a missing or unreadable one reads as `None`.
    pub fn read(path: &Path) -> Option<ManagerState> {
        let text = std::fs::read_to_string(path).ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// The state file and its current content; updates are serialized and written in order.
pub struct StateFile {
    path: PathBuf,
    state: tokio::sync::Mutex<ManagerState>,
}

impl StateFile {
    pub fn new(path: PathBuf, state: ManagerState) -> StateFile {
        StateFile {
            path,
            state: tokio::sync::Mutex::new(state),
        }
    }

    pub async fn write(&self) {
        let state = self.state.lock().await;
        self.persist(&state).await;
    }

    /// Records (or, with `None`, forgets) daemon `name`.
    pub async fn set_daemon(&self, name: &str, record: Option<DaemonRecord>) {
        let mut state = self.state.lock().await;
        let changed = match record {
            Some(record) => state.daemons.insert(name.to_owned(), record.clone()) != Some(record),
            None => state.daemons.remove(name).is_some(),
        };
        if changed {
            self.persist(&state).await;
        }
    }

    async fn persist(&self, state: &ManagerState) {
        let Ok(text) = serde_json::to_vec_pretty(state) else {
            return;
        };
        let path = self.path.clone();
        let written = tokio::task::spawn_blocking(move || write_atomic(&path, &text)).await;
        if let Ok(Err(e)) = written {
            tracing::error!("cannot write {}: {e}", self.path.display());
        }
    }
}

/// Writes `bytes` to `path` so readers see the old or the new content, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut temp, bytes)?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
