//! Processes: spawning a daemon out of everyone's reach, stopping its whole process tree, and
//! what the OS says about a pid or a port (through [`crate::platform`]).
//!
//! A daemon runs in a session and process group of its own (`setsid`; on Windows a process
//! group, a hidden console and a Job Object), with stdin from the null device, stdout and
//! stderr through `mcpsm log-writer` into its log file, and no other inherited descriptor, so
//! no client's signal, terminal or pipe can reach it. Stopping it means SIGTERM to the group,
//! a grace period, SIGKILL to the group, until no live member of the group is left: a server
//! started through `npx` or `sh` leaves no grandchild behind (Windows: the job is terminated).

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::environment;
use crate::config::Launch;
use crate::platform;

pub use platform::{
    command_line, environment_keys, is_alive, port_owner, process_tree, start_time, tree_members,
    working_dir, Stopped,
};

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("command `{command}` not found; searched PATH: {searched}\nhint: install it, give its absolute path as `command` in the registry, or set PATH in the daemon's `env` (daemons search the PATH of your login shell, not the client's)")]
    NotFound { command: String, searched: String },
    #[error("`{}` is not executable\nhint: chmod +x it, or fix `command` in the registry", path.display())]
    NotExecutable { path: PathBuf },
    #[error("working directory {} does not exist\nhint: create it, or fix `cwd` in the registry (a relative `cwd` is taken from HOME; without one a daemon runs in HOME)", path.display())]
    NoCwd { path: PathBuf },
    #[error("{0}")]
    Log(#[from] super::logs::LogError),
    #[error("cannot create the log directory {}: {cause}\nhint: check that {} is writable by this user", path.display(), path.parent().unwrap_or(path).display())]
    LogDir { path: PathBuf, cause: io::Error },
    #[error("cannot start `{command}`: {cause}")]
    Spawn { command: String, cause: io::Error },
}

/// Resolves `command` the way `execvp` would on this process's PATH, so a missing program is
/// reported by name together with the PATH that was searched.
pub fn find_program(command: &str, cwd: Option<&Path>) -> Result<PathBuf, SpawnError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    find_in(command, &path, cwd)
}

/// [`find_program`] on the PATH of `env` (a daemon's environment), not this process's.
pub fn find_program_for(
    command: &str,
    cwd: Option<&Path>,
    env: &[(String, String)],
) -> Result<PathBuf, SpawnError> {
    find_in(command, environment::path_of(env), cwd)
}

fn find_in(command: &str, path: &OsStr, cwd: Option<&Path>) -> Result<PathBuf, SpawnError> {
    let check_one = |candidate: PathBuf| -> Option<Result<PathBuf, SpawnError>> {
        let meta = std::fs::metadata(&candidate).ok()?;
        if !meta.is_file() {
            return None;
        }
        if !platform::is_executable(&meta) {
            return Some(Err(SpawnError::NotExecutable { path: candidate }));
        }
        Some(Ok(candidate))
    };
    let check = |candidate: PathBuf| {
        platform::executable_candidates(candidate)
            .into_iter()
            .find_map(check_one)
    };
    if platform::is_path_like(command) {
        let candidate = match cwd {
            Some(cwd) if !Path::new(command).is_absolute() => cwd.join(command),
            _ => PathBuf::from(command),
        };
        return check(candidate.clone()).unwrap_or(Err(SpawnError::NotFound {
            command: command.to_owned(),
            searched: format!("(not searched: {} does not exist)", candidate.display()),
        }));
    }
    for dir in std::env::split_paths(path) {
        if let Some(found) = check(dir.join(command)) {
            return found;
        }
    }
    Err(SpawnError::NotFound {
        command: command.to_owned(),
        searched: path.to_string_lossy().into_owned(),
    })
}

/// Starts a daemon in its own session with its output appended to `log`, rotated as it is
/// written: the process started is `mcpsm log-writer`, which runs the daemon's command (see
/// [`super::log_writer`]); its pid is the daemon's pid for the rest of mcpsm. `launch.env` is
/// its whole environment (see [`environment`]): nothing of this process's reaches it, and its
/// `command` is looked up on that environment's PATH.
pub fn spawn_daemon(launch: &Launch, log: &Path) -> Result<tokio::process::Child, SpawnError> {
    if let Some(cwd) = &launch.cwd {
        if !cwd.is_dir() {
            return Err(SpawnError::NoCwd { path: cwd.clone() });
        }
    }
    let program = find_program_for(&launch.command, launch.cwd.as_deref(), &launch.env)?;
    if let Some(dir) = log.parent() {
        crate::paths::create_private_dir(dir).map_err(|cause| SpawnError::LogDir {
            path: dir.to_path_buf(),
            cause,
        })?;
    }
    let out = super::logs::open_log(log)?;
    // The log-writer's own complaints (a log it cannot reopen) go to the log too.
    let err = out.try_clone().map_err(|cause| {
        SpawnError::Log(super::logs::LogError::Open {
            path: log.to_path_buf(),
            cause,
        })
    })?;
    let exe = std::env::current_exe().map_err(|cause| SpawnError::Spawn {
        command: "mcpsm log-writer".to_owned(),
        cause,
    })?;
    let mut command = tokio::process::Command::new(exe);
    command
        .arg("log-writer")
        .arg("--file")
        .arg(log)
        .arg("--")
        .arg(&program)
        .args(&launch.args)
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(false);
    if let Some(cwd) = &launch.cwd {
        command.current_dir(cwd);
    }
    platform::detach(command.as_std_mut());
    platform::spawn_detached(&mut command).map_err(|cause| SpawnError::Spawn {
        command: launch.command.clone(),
        cause,
    })
}

/// SIGTERM to the process group `pgid` leads, up to `grace` for it to empty, then SIGKILL
/// (see [`platform::stop_tree`]). `child` is reaped along the way when the group leader is our
/// own child.
pub async fn stop_group(
    pgid: u32,
    child: Option<&mut tokio::process::Child>,
    grace: Duration,
) -> Stopped {
    platform::stop_tree(pgid, child, grace).await
}

/// Whether 127.0.0.1:`port` can be bound right now.
pub fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// "port 3100 is in use by pid 42 (`python -m http.server 3100`)", or without the owner when
/// it cannot be seen (another user's process).
pub fn describe_port_in_use(port: u16) -> String {
    match port_owner(port) {
        Some((pid, command)) => format!("port {port} is in use by pid {pid} (`{command}`)"),
        None => format!(
            "port {port} is in use, but no process visible to this user listens on it (another user's process, or a connection still closing)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_program_names_the_path_searched() {
        let error = find_in(
            "surely-not-a-program",
            OsStr::new("/nonexistent/a:/nonexistent/b"),
            None,
        )
        .expect_err("missing");
        let text = error.to_string();
        assert!(
            text.contains("surely-not-a-program") && text.contains("/nonexistent/a:/nonexistent/b"),
            "{text}"
        );
    }

    #[test]
    fn programs_are_found_on_path() {
        let shell = if cfg!(windows) { "cmd" } else { "sh" };
        assert!(find_program(shell, None).is_ok());
    }

    #[test]
    fn own_process_facts_are_readable() {
        let pid = std::process::id();
        assert!(start_time(pid).is_some());
        assert!(is_alive(pid));
        assert!(command_line(pid).is_some());
        assert_eq!(
            working_dir(pid),
            std::env::current_dir().ok(),
            "the cwd of this process"
        );
        let keys = environment_keys(pid).expect("own environ is readable");
        assert!(keys.iter().any(|k| k == "PATH"), "{keys:?}");
        assert!(keys.iter().all(|k| !k.contains('=')), "{keys:?}");
    }

    #[test]
    fn a_listening_port_names_its_owner() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert!(!port_is_free(port));
        // Wine's TCP owner table has no pids (real Windows has): no owner is then named.
        let Some((pid, _)) = port_owner(port) else {
            if cfg!(windows) {
                return;
            }
            panic!("the owner of port {port} is not found");
        };
        assert_eq!(pid, std::process::id());
        assert!(describe_port_in_use(port).contains(&format!("pid {pid}")));
    }
}
