//! Linux: process facts from /proc.

use std::path::PathBuf;

/// Live processes of the tree a daemon leads: the members of its process group (the daemon
/// leads its own group; see [`super::detach`]).
pub fn tree_members(leader: u32) -> Vec<u32> {
    match libc::pid_t::try_from(leader) {
        Ok(pgid) => group_members(pgid),
        Err(_) => Vec::new(),
    }
}

/// Live processes whose process group is `pgid` (see [`is_alive`]).
fn group_members(pgid: libc::pid_t) -> Vec<u32> {
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

/// The program (and leading arguments) that opens a URL in the user's browser, when there is
/// a display to open it on (none over SSH or in a headless session).
pub fn url_opener() -> Option<(String, Vec<String>)> {
    let display =
        std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    display.then(|| ("xdg-open".into(), Vec::new()))
}

/// Whether a Secret Service could answer: it lives on the session bus, which a headless box
/// (a server, CI, a container) does not have.
pub fn keychain_reachable() -> Result<(), String> {
    let address = std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some();
    let socket = std::env::var_os("XDG_RUNTIME_DIR")
        .is_some_and(|dir| std::path::Path::new(&dir).join("bus").exists());
    if address || socket {
        Ok(())
    } else {
        Err("no D-Bus session bus for a Secret Service".into())
    }
}
