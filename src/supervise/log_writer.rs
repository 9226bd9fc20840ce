//! `mcpsm log-writer --file FILE -- COMMAND…`: how the manager starts every daemon, so that
//! the daemon's output is rotated as it is written, by a process that outlives the manager.
//!
//! The manager opens `logs/NAME.log` itself (no links followed, 0600: errors reach the user
//! by name) and starts this process with stdout on it, in a session of its own. This process
//! runs COMMAND — same environment, working directory and arguments — with stdout and stderr
//! on a pipe, and copies the pipe into the log through [`RotatingLog`], each line stamped
//! with the time it was read ([`Stamper`]). It is the daemon's
//! session and group leader, so:
//!
//! - **It survives the manager** (killed, restarted) just as the daemon does, and the next
//!   manager adopts this pid like any daemon's: logging and rotation go on throughout.
//! - **Stopping the group stops both.** It ignores SIGTERM/SIGINT/SIGHUP itself, keeps
//!   copying until COMMAND exits, drains what COMMAND wrote (at most [`DRAIN`] more, as a
//!   grandchild may hold the pipe), then exits the way COMMAND did (same code, same signal):
//!   the manager sees the daemon's own exit, and the log already holds its last words.
//! - **It dies with COMMAND and COMMAND with it.** COMMAND gets SIGKILL if this process dies
//!   (`PR_SET_PDEATHSIG`), so a `kill -9` of the pid in `mcpsm status` ends the daemon, which
//!   the manager then restarts. (macOS has no such signal: the manager kills what is left of
//!   the group when this process exits. Windows: this process puts itself in a kill-on-close
//!   Job Object that COMMAND inherits, and a stop terminates that job; see
//!   [`crate::platform`].)

use std::ffi::OsString;
use std::io::{self, Read};
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use super::logs::{RotatingLog, Stamper, MAX_LOG_BYTES, ROTATED_LOGS};
use crate::platform::{self, log_writer as platform_writer};

/// How long to keep copying after COMMAND exited, for output still in the pipe.
const DRAIN: Duration = Duration::from_millis(500);

/// Runs `command` with its output rotated into `file` (already open on stdout); returns
/// only when it failed to start: otherwise this process exits as `command` did.
pub fn run(file: &Path, command: &[OsString]) -> ExitCode {
    let log = match platform_writer::stdout_file() {
        Ok(file) => file,
        Err(e) => {
            eprintln!("mcpsm log-writer: stdout is not usable ({e})");
            return ExitCode::from(125);
        }
    };
    let mut log = RotatingLog::new(file.to_path_buf(), log, MAX_LOG_BYTES, ROTATED_LOGS);
    let Some((program, args)) = command.split_first() else {
        log.write(b"mcpsm log-writer: no command given\n");
        return ExitCode::from(125);
    };
    // The group gets SIGTERM when the daemon is stopped: this process outlasts the daemon to
    // copy its last output, and exits when it has.
    if let Err(e) = platform_writer::outlast_stop_signals() {
        log.write(format!("mcpsm log-writer: cannot set up the process tree: {e}\n").as_bytes());
    }
    let (reader, writer) = match platform_writer::pipe() {
        Ok(ends) => ends,
        Err(e) => {
            log.write(format!("mcpsm log-writer: cannot create a pipe: {e}\n").as_bytes());
            return ExitCode::from(125);
        }
    };
    let stderr = match writer.try_clone() {
        Ok(fd) => fd,
        Err(e) => {
            log.write(format!("mcpsm log-writer: cannot duplicate a pipe: {e}\n").as_bytes());
            return ExitCode::from(125);
        }
    };
    let mut child = std::process::Command::new(program);
    child
        .args(args)
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(stderr));
    platform_writer::prepare_child(&mut child);
    let spawned = child.spawn();
    // Our copies of the pipe's write end go with the Command, so EOF means COMMAND (and
    // whatever inherited its output) is done.
    drop(child);
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            log.write(
                format!(
                    "mcpsm log-writer: cannot start `{}`: {e}\n",
                    program.to_string_lossy()
                )
                .as_bytes(),
            );
            return ExitCode::from(127);
        }
    };
    let (done_tx, done) = std::sync::mpsc::channel::<()>();
    let copier = std::thread::spawn(move || {
        let mut reader = reader;
        let mut stamper = Stamper::default();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => log.write(stamper.stamp(&buffer[..n])),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = done_tx.send(());
    });
    let status = loop {
        match child.wait() {
            Ok(status) => break Some(status),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break None,
        }
    };
    if done.recv_timeout(DRAIN).is_ok() {
        let _ = copier.join();
    }
    platform::exit_like(status)
}
