//! Processes: spawning a daemon out of everyone's reach, stopping a whole process group, and
//! what Linux's /proc says about a pid or a port.
//!
//! A daemon runs in a session and process group of its own (`setsid`), with stdin from
//! /dev/null, stdout and stderr through `mcpsm log-writer` into its log file, and no other
//! inherited descriptor, so
//! no client's signal, terminal or pipe can reach it. Stopping it means SIGTERM to the group,
//! a grace period, SIGKILL to the group, until no live member of the group is left: a server
//! started through `npx` or `sh` leaves no grandchild behind.

use std::ffi::OsStr;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::environment;
use crate::config::Launch;

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
    let check = |candidate: PathBuf| -> Option<Result<PathBuf, SpawnError>> {
        let meta = std::fs::metadata(&candidate).ok()?;
        if !meta.is_file() {
            return None;
        }
        if meta.permissions().mode() & 0o111 == 0 {
            return Some(Err(SpawnError::NotExecutable { path: candidate }));
        }
        Some(Ok(candidate))
    };
    if command.contains('/') {
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
    detach(command.as_std_mut());
    command.spawn().map_err(|cause| SpawnError::Spawn {
        command: launch.command.clone(),
        cause,
    })
}

/// Makes the child a session leader with default signal handling and no inherited
/// descriptors beyond stdio.
pub fn detach(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure only calls async-signal-safe functions (setsid, signal, fcntl,
    // syscall) between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            // Ignored signals survive exec; the daemon must see SIGINT/SIGHUP/SIGTERM normally.
            for signal in [libc::SIGINT, libc::SIGHUP, libc::SIGTERM, libc::SIGPIPE] {
                libc::signal(signal, libc::SIG_DFL);
            }
            mark_inherited_fds_cloexec();
            Ok(())
        });
    }
}

/// Every descriptor above stdio closes at exec, whatever the parent forgot to mark.
fn mark_inherited_fds_cloexec() {
    #[cfg(target_os = "linux")]
    {
        const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
        // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags.
        let done =
            unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) }
                == 0;
        if done {
            return;
        }
    }
    for fd in 3..1024 {
        // SAFETY: fcntl on a descriptor that may not exist just fails with EBADF.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// How a stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Every process of the group exited after SIGTERM.
    Gracefully,
    /// SIGKILL was needed.
    Killed,
    /// Processes of the group were still alive after SIGKILL (they left the group's reach).
    Stuck,
}

/// SIGTERM to process group `pgid`, up to `grace` for it to empty, then SIGKILL. `child` is
/// reaped along the way when the group leader is our own child.
pub async fn stop_group(
    pgid: u32,
    mut child: Option<&mut tokio::process::Child>,
    grace: Duration,
) -> Stopped {
    let pgid = pgid as libc::pid_t;
    let reap = |child: &mut Option<&mut tokio::process::Child>| {
        if let Some(child) = child.as_mut() {
            let _ = child.try_wait();
        }
    };
    // SAFETY: killpg(2) on a group we created; a vanished group gives ESRCH.
    unsafe { libc::killpg(pgid, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    loop {
        reap(&mut child);
        if group_members(pgid).is_empty() {
            return Stopped::Gracefully;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // SAFETY: as above.
        unsafe { libc::killpg(pgid, libc::SIGKILL) };
        reap(&mut child);
        if group_members(pgid).is_empty() {
            return Stopped::Killed;
        }
        if Instant::now() >= deadline {
            return Stopped::Stuck;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Live processes whose process group is `pgid` (see [`is_alive`]).
pub fn group_members(pgid: libc::pid_t) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            stat_fields(pid).is_some_and(|f| {
                f.get(2).and_then(|g| g.parse::<libc::pid_t>().ok()) == Some(pgid)
                    && alive_given(pid, &f)
            })
        })
        .collect()
}

/// `pid` and every process below it, parents first.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut children: std::collections::HashMap<u32, Vec<u32>> = Default::default();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for child in entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        {
            if let Some(parent) = stat_fields(child).and_then(|f| f.get(1)?.parse().ok()) {
                children.entry(parent).or_default().push(child);
            }
        }
    }
    let mut tree = vec![pid];
    let mut next = 0;
    while let Some(&parent) = tree.get(next) {
        tree.extend(children.remove(&parent).unwrap_or_default());
        next += 1;
    }
    tree
}

/// The fields of /proc/PID/stat after `(comm)`: state, ppid, pgrp, …
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// When `pid` started, in clock ticks since boot (field 22 of /proc/PID/stat). Together with
/// the pid it names one process, even after pid reuse.
pub fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// Whether `pid` is alive: some thread of it has not exited. A dead process that nobody reaps
/// stays a zombie (`Z`), which is not alive. But the leader of a multi-threaded process (node)
/// shows `Z` as soon as its own thread has exited, while its other threads are still exiting
/// and still hold its descriptors, listening socket included; that process is still alive, or
/// a restart would find its port taken.
pub fn is_alive(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| alive_given(pid, &f))
}

/// [`is_alive`] with the leader's stat fields already read.
fn alive_given(pid: u32, leader: &[String]) -> bool {
    let exited = |fields: &[String]| matches!(fields.first().map(String::as_str), Some("Z" | "X"));
    if !exited(leader) {
        return true;
    }
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    threads.filter_map(Result::ok).any(|thread| {
        std::fs::read_to_string(thread.path().join("stat"))
            .ok()
            .and_then(|stat| {
                let rest = stat.get(stat.rfind(')')? + 1..)?;
                Some(
                    rest.split_whitespace()
                        .map(str::to_owned)
                        .collect::<Vec<_>>(),
                )
            })
            .is_some_and(|fields| !exited(&fields))
    })
}

/// The command line of `pid`, space-separated.
pub fn command_line(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let text = raw
        .split(|&b| b == 0)
        .filter(|part| !part.is_empty())
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    (!text.is_empty()).then_some(text)
}

/// The working directory of `pid`, from /proc/PID/cwd.
pub fn working_dir(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

/// The names (never the values) of the environment `pid` was started with, sorted, from
/// /proc/PID/environ.
pub fn environment_keys(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let mut keys: Vec<String> = raw
        .split(|&b| b == 0)
        .filter_map(|entry| {
            let end = entry.iter().position(|&b| b == b'=')?;
            Some(String::from_utf8_lossy(&entry[..end]).into_owned())
        })
        .filter(|key| !key.is_empty())
        .collect();
    keys.sort();
    keys.dedup();
    Some(keys)
}

/// Whether 127.0.0.1:`port` can be bound right now.
pub fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Who listens on TCP `port` (any address), from /proc/net/tcp{,6} and /proc/*/fd.
pub fn port_owner(port: u16) -> Option<(u32, String)> {
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|file| std::fs::read_to_string(file).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local_port = fields.get(1)?.rsplit(':').next()?;
                    let listening = fields.get(3)? == &"0A";
                    (listening && u16::from_str_radix(local_port, 16).ok()? == port)
                        .then(|| fields.get(9).map(|s| (*s).to_owned()))
                        .flatten()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    if inodes.is_empty() {
        return None;
    }
    let targets: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let procs = std::fs::read_dir("/proc").ok()?;
    for entry in procs.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.filter_map(Result::ok) {
            if let Ok(link) = std::fs::read_link(fd.path()) {
                if targets.iter().any(|t| link.as_os_str() == t.as_str()) {
                    return Some((pid, command_line(pid).unwrap_or_else(|| "?".into())));
                }
            }
        }
    }
    None
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
        assert!(find_program("sh", None).is_ok());
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
        let (pid, _) = port_owner(port).expect("owner found");
        assert_eq!(pid, std::process::id());
        assert!(describe_port_in_use(port).contains(&format!("pid {pid}")));
    }
}
