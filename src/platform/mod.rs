//! The platform seam: every difference between Linux, macOS and Windows goes through here, so
//! `cmd/`, `transport/`, `host/` and `supervise/` hold no `cfg` of their own.
//!
//! What the rest of mcpsm needs from the OS, and how each half provides it:
//!
//! | need | Linux | macOS | Windows |
//! |---|---|---|---|
//! | spawn a daemon out of every client's reach ([`detach`]) | `setsid`, default signals, no inherited fds | same | `DETACHED_PROCESS \| CREATE_NEW_PROCESS_GROUP \| CREATE_NO_WINDOW`, out of the client's job when allowed |
//! | its children die with it ([`log_writer`]) | `PR_SET_PDEATHSIG` | the manager kills the group when the leader exits ([`reap_leftovers`]) | a named Job Object with kill-on-close, held by the log-writer |
//! | stop its whole tree ([`stop_tree`]) | SIGTERM the group, grace, SIGKILL, wait for every thread (`/proc/PID/task`) | SIGTERM/SIGKILL the group, members from the process table | terminate the job (there is no graceful stop signal for a detached process) |
//! | one process across pid reuse ([`start_time`]) | `/proc/PID/stat` field 22 | sysinfo (seconds) | `GetProcessTimes` (100 ns) |
//! | who owns a port ([`port_owner`]) | `/proc/net/tcp{,6}` + `/proc/*/fd` | `lsof -F` | `GetExtendedTcpTable` |
//! | the client died ([`exit_with_parent`]) | `PR_SET_PDEATHSIG` (SIGTERM) | a thread watching `getppid()` raises SIGTERM | a thread waiting on the parent's handle |
//! | ignore the client's interrupt ([`ignore_interrupt`]) | SIGINT ignored | same | CTRL_C and CTRL_BREAK ignored |
//! | asked to stop ([`Signals`]) | SIGTERM, SIGINT, SIGHUP | same | CTRL_CLOSE/SHUTDOWN/LOGOFF, CTRL_C/CTRL_BREAK |
//! | the proxy's stdio on the runtime ([`stdio`]) | pipes and sockets non-blocking on the reactor, flags restored at exit | same | tokio's blocking stdio (a helper thread) |
//! | owner-only files ([`fs`]) | mode 0600 / 0700 | same | a protected DACL granting only the current user |
//!
//! The macOS (and Windows) process facts come from `sysinfo` ([`portable`]); on Linux the
//! `/proc` code stays, because it waits for every thread of a group (see [`is_alive`]), and the
//! unit tests check the portable implementation against it.

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use unix::*;
#[cfg(unix)]
mod unix_stdio;
#[cfg(unix)]
pub use unix_stdio::{nonblocking_stdio, restore_stdio};

pub mod stdio;

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub use linux::*;

#[cfg(all(unix, not(target_os = "linux")))]
mod macos;
#[cfg(all(unix, not(target_os = "linux")))]
pub use macos::*;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::*;

#[cfg(any(not(target_os = "linux"), test))]
pub mod portable;

pub mod lsof;

/// How a stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Every process of the group exited after SIGTERM.
    Gracefully,
    /// SIGKILL was needed.
    Killed,
    /// The whole tree was terminated at once (Windows: a detached process has no graceful
    /// stop signal, so its Job Object is terminated).
    Terminated,
    /// Processes of the group were still alive after SIGKILL (they left the group's reach).
    Stuck,
}

/// An OS whose conventions (file locations) mcpsm knows; a value, so Linux tests can check
/// macOS and Windows ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Os {
    Linux,
    MacOs,
    Windows,
}

impl Os {
    /// The OS this binary runs on (other Unixes follow Linux).
    pub const fn current() -> Os {
        if cfg!(windows) {
            Os::Windows
        } else if cfg!(target_os = "macos") {
            Os::MacOs
        } else {
            Os::Linux
        }
    }
}

/// The system's command to open a URL in the browser (`$BROWSER` first, else the platform's
/// opener when there is a display to open it on); the URL is appended as the last argument.
pub fn browser_command() -> Option<(String, Vec<String>)> {
    if let Ok(browser) = std::env::var("BROWSER") {
        if !browser.trim().is_empty() {
            return Some((browser, Vec::new()));
        }
    }
    url_opener()
}

/// What asks a server process to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM; on Windows the console is closing, or the user logs off or shuts down.
    Terminate,
    /// SIGINT; on Windows CTRL_C or CTRL_BREAK.
    Interrupt,
    /// SIGHUP; never on Windows.
    Hangup,
}

/// Ends this process the way `status` says a child ended (same code; on Unix, same signal).
pub fn exit_like(status: Option<std::process::ExitStatus>) -> std::process::ExitCode {
    let Some(status) = status else {
        return std::process::ExitCode::from(125);
    };
    if let Some(code) = raise_like(&status) {
        return std::process::ExitCode::from(code);
    }
    let code = status.code().unwrap_or(125);
    match u8::try_from(code) {
        Ok(code) => std::process::ExitCode::from(code),
        // Windows exit codes are 32-bit (0xC000013A, …): keep them whole.
        Err(_) if cfg!(windows) => std::process::exit(code),
        Err(_) => std::process::ExitCode::from(125),
    }
}

/// Whether a panic message is the standard library's "failed printing to stdout" for a
/// closed stdout.
pub fn is_broken_pipe_message(message: &str) -> bool {
    BROKEN_PIPE_ERRORS
        .iter()
        .any(|&code| message.contains(&std::io::Error::from_raw_os_error(code).to_string()))
}
