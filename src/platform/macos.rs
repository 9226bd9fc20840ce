//! macOS (and other Unixes without /proc): process facts through `sysinfo` ([`super::portable`]),
//! group membership through `getpgid`, the port owner through `lsof`.

use std::path::PathBuf;

use super::portable;

/// Live processes of the tree a daemon leads: the members of its process group.
pub fn tree_members(leader: u32) -> Vec<u32> {
    let Ok(pgid) = libc::pid_t::try_from(leader) else {
        return Vec::new();
    };
    portable::all_pids()
        .into_iter()
        .filter(|&pid| {
            libc::pid_t::try_from(pid)
                // SAFETY: getpgid only reads a process attribute.
                .is_ok_and(|pid| unsafe { libc::getpgid(pid) } == pgid)
        })
        .collect()
}

/// `pid` and every process below it, parents first.
pub fn process_tree(pid: u32) -> Vec<u32> {
    portable::process_tree(pid)
}

/// When `pid` started (seconds since the epoch); with the pid it names one process.
pub fn start_time(pid: u32) -> Option<u64> {
    portable::start_time(pid)
}

/// Whether `pid` is alive (a zombie is not).
pub fn is_alive(pid: u32) -> bool {
    portable::is_alive(pid)
}

/// The command line of `pid`, space-separated.
pub fn command_line(pid: u32) -> Option<String> {
    portable::command_line(pid)
}

/// The working directory of `pid`.
pub fn working_dir(pid: u32) -> Option<PathBuf> {
    portable::working_dir(pid)
}

/// The names (never the values) of the environment `pid` was started with, sorted.
pub fn environment_keys(pid: u32) -> Option<Vec<String>> {
    portable::environment_keys(pid)
}

/// Who listens on TCP `port`, from `lsof`.
pub fn port_owner(port: u16) -> Option<(u32, String)> {
    let output = std::process::Command::new("lsof")
        .args(super::lsof::listener_args(port))
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let pid = super::lsof::first_pid(&String::from_utf8_lossy(&output.stdout))?;
    Some((pid, command_line(pid).unwrap_or_else(|| "?".into())))
}

/// The program (and leading arguments) that opens a URL in the user's browser.
pub fn url_opener() -> Option<(String, Vec<String>)> {
    Some(("open".into(), Vec::new()))
}

/// Whether a keychain could answer: the OS always has one.
pub fn keychain_reachable() -> Result<(), String> {
    Ok(())
}
