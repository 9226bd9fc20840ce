//! Unix (Linux and macOS): sessions, process groups, signals, file modes.

use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{Signal, Stopped};

/// Error codes that mean "stdout is closed" in the standard library's print panics.
pub const BROKEN_PIPE_ERRORS: &[i32] = &[libc::EPIPE];

/// What a client sends to interrupt its servers ([`interrupt_group`]).
pub const INTERRUPT_NAME: &str = "SIGINT";
/// What [`kill`] does.
pub const KILL_NAME: &str = "SIGKILL";

/// Whether the user's login shell defines a daemon's base environment (see
/// `supervise::environment`).
pub const LOGIN_SHELL_ENVIRONMENT: bool = true;

/// Variables a daemon takes from the user's environment besides the common ones.
pub const EXTRA_BASE_VARIABLES: &[&str] = &[];

/// Whether environment variable names are compared without case.
pub const ENV_CASE_INSENSITIVE: bool = false;

/// The user's home when `HOME` is unset: none on Unix (`HOME` is the one variable every
/// client passes).
pub fn user_profile() -> Option<PathBuf> {
    None
}

/// Whether `command` names a path rather than a program to look up on PATH.
pub fn is_path_like(command: &str) -> bool {
    command.contains('/')
}

/// The files a program named `path` may be: on Unix just `path`.
pub fn executable_candidates(path: PathBuf) -> Vec<PathBuf> {
    vec![path]
}

/// Whether a file may be executed by someone (any `x` bit).
pub fn is_executable(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
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

/// Spawns a command prepared by [`detach`].
pub fn spawn_detached(command: &mut tokio::process::Command) -> io::Result<tokio::process::Child> {
    command.spawn()
}

/// [`spawn_detached`] for a std command.
pub fn spawn_detached_std(command: &mut std::process::Command) -> io::Result<std::process::Child> {
    command.spawn()
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

/// Puts a child in a process group of its own (as clients such as Codex do with servers).
pub fn new_process_group(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    command.process_group(0);
}

/// What a client does to interrupt a server: SIGINT to the process group `leader` leads.
pub fn interrupt_group(leader: u32) -> io::Result<()> {
    let pgid = libc::pid_t::try_from(leader).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: killpg(2) on a group the caller started.
    if unsafe { libc::killpg(pgid, libc::SIGINT) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Kills `pid` at once (SIGKILL).
pub fn kill(pid: u32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: kill(2) on a process the caller started.
    if unsafe { libc::kill(pid, libc::SIGKILL) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Kills every process of the group `leader` leads at once (SIGKILL); a gone group is fine.
pub fn kill_group(leader: u32) {
    if let Ok(pgid) = libc::pid_t::try_from(leader) {
        // SAFETY: killpg on a session/group the caller started; a gone group gives ESRCH.
        unsafe { libc::killpg(pgid, libc::SIGKILL) };
    }
}

/// After the leader of a daemon's group exited: on Linux nothing is left (the log-writer's
/// child has `PR_SET_PDEATHSIG`); elsewhere the group's leftovers are killed.
pub fn reap_leftovers(leader: u32) {
    if cfg!(not(target_os = "linux")) {
        kill_group(leader);
    }
}

/// SIGTERM to the process group `leader` leads, up to `grace` for it to empty, then SIGKILL.
/// `child` is reaped along the way when the group leader is our own child.
pub async fn stop_tree(
    leader: u32,
    mut child: Option<&mut tokio::process::Child>,
    grace: Duration,
) -> Stopped {
    let Ok(pgid) = libc::pid_t::try_from(leader) else {
        return Stopped::Gracefully;
    };
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
        if super::tree_members(leader).is_empty() {
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
        if super::tree_members(leader).is_empty() {
            return Stopped::Killed;
        }
        if Instant::now() >= deadline {
            return Stopped::Stuck;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// "exited with status 3", "was killed by signal 9".
pub fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => "exited".to_owned(),
    }
}

/// When a child was killed by a signal, ends this process by the same signal (the exit code
/// returned is for when that signal does not end it).
pub(super) fn raise_like(status: &std::process::ExitStatus) -> Option<u8> {
    use std::os::unix::process::ExitStatusExt;
    let signal = status.signal()?;
    // SAFETY: restoring the default disposition and raising the signal on ourselves.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
    Some(128u8.saturating_add(u8::try_from(signal).unwrap_or(0)))
}

/// The signals a server process listens to, as one stream.
pub struct Signals {
    terminate: Option<tokio::signal::unix::Signal>,
    interrupt: Option<tokio::signal::unix::Signal>,
    hangup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Listens to `wanted` from now on (their default action, ending the process, is off).
    pub fn new(wanted: &[Signal]) -> io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let listen = |which: Signal, kind: SignalKind| -> io::Result<_> {
            wanted.contains(&which).then(|| signal(kind)).transpose()
        };
        Ok(Signals {
            terminate: listen(Signal::Terminate, SignalKind::terminate())?,
            interrupt: listen(Signal::Interrupt, SignalKind::interrupt())?,
            hangup: listen(Signal::Hangup, SignalKind::hangup())?,
        })
    }

    /// The next signal. Cancel-safe.
    pub async fn recv(&mut self) -> Signal {
        async fn next(signal: &mut Option<tokio::signal::unix::Signal>) {
            match signal {
                Some(signal) => {
                    if signal.recv().await.is_none() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            () = next(&mut self.terminate) => Signal::Terminate,
            () = next(&mut self.interrupt) => Signal::Interrupt,
            () = next(&mut self.hangup) => Signal::Hangup,
        }
    }
}

/// Clients send SIGINT to their servers for many reasons; the proxy outlives all of them.
pub fn ignore_interrupt() {
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
}

/// If the parent (the client) dies without closing stdin, this process gets SIGTERM: from the
/// kernel on Linux (`PR_SET_PDEATHSIG`), from a thread watching `getppid()` elsewhere.
pub fn exit_with_parent() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a process attribute.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
    }
    #[cfg(not(target_os = "linux"))]
    {
        // SAFETY: getppid has no preconditions.
        let parent = unsafe { libc::getppid() };
        let _ = std::thread::Builder::new()
            .name("parent-watch".into())
            .spawn(move || {
                // SAFETY: as above.
                watch_parent(parent, || unsafe { libc::getppid() }, PARENT_POLL);
                // SAFETY: raising SIGTERM on ourselves runs the same path as a client's.
                unsafe { libc::raise(libc::SIGTERM) };
            });
    }
}

/// How often a thread looks whether the parent is still there (macOS).
#[cfg(not(target_os = "linux"))]
const PARENT_POLL: Duration = Duration::from_millis(250);

/// Returns once `current_parent()` is no longer `parent` (the parent died and this process
/// was re-parented).
#[cfg(any(not(target_os = "linux"), test))]
fn watch_parent(parent: libc::pid_t, current_parent: impl Fn() -> libc::pid_t, every: Duration) {
    while current_parent() == parent {
        std::thread::sleep(every);
    }
}

/// Notices the parent's death without a signal; on Unix the signal path covers it.
pub async fn parent_exited() {
    std::future::pending::<()>().await;
}

/// The soft limit on open files of this process (`ulimit -n`).
pub fn open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    if ok && limit.rlim_cur != libc::RLIM_INFINITY {
        limit.rlim_cur
    } else {
        u64::MAX
    }
}

/// Whether an IO error means this process ran out of file descriptors.
pub fn is_out_of_descriptors(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// The shell in the user's password entry.
pub fn account_shell() -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut entry = std::mem::MaybeUninit::<libc::passwd>::uninit();
    let mut buffer = vec![0u8; 4096];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwuid_r writes into `entry` and `buffer`, both live and sized as passed; the
    // strings it points to live in `buffer`, which outlives their use below.
    let code = unsafe {
        libc::getpwuid_r(
            libc::getuid(),
            entry.as_mut_ptr(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            &mut found,
        )
    };
    if code != 0 || found.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded, so `entry` is initialized and pw_shell is null or a
    // NUL-terminated string inside `buffer`.
    let shell = unsafe {
        let entry = entry.assume_init();
        if entry.pw_shell.is_null() {
            return None;
        }
        std::ffi::CStr::from_ptr(entry.pw_shell)
    };
    let shell = PathBuf::from(std::ffi::OsStr::from_bytes(shell.to_bytes()));
    (shell.is_absolute() && shell.is_file()).then_some(shell)
}

/// The pieces of `mcpsm log-writer` that differ per OS (see `supervise::log_writer`).
pub mod log_writer {
    use std::io;
    use std::os::fd::{FromRawFd, OwnedFd};

    /// This process's stdout (the log file the manager opened), as a file of its own.
    pub fn stdout_file() -> io::Result<std::fs::File> {
        use std::os::fd::AsFd;
        Ok(std::fs::File::from(
            io::stdout().as_fd().try_clone_to_owned()?,
        ))
    }

    /// The group gets SIGTERM when the daemon is stopped: the log-writer outlasts the daemon
    /// to copy its last output, and exits when it has.
    pub fn outlast_stop_signals() -> io::Result<()> {
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            // SAFETY: setting a signal disposition to SIG_IGN.
            unsafe { libc::signal(signal, libc::SIG_IGN) };
        }
        Ok(())
    }

    /// A pipe whose both ends close on exec (the child gets dups on its stdout and stderr).
    pub fn pipe() -> io::Result<(std::fs::File, OwnedFd)> {
        let mut fds = [0; 2];
        // SAFETY: pipe fills two new descriptors, which we then own.
        #[cfg(target_os = "linux")]
        let made = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
        #[cfg(not(target_os = "linux"))]
        let made = unsafe { libc::pipe(fds.as_mut_ptr()) };
        if made == -1 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned by nobody else.
        let (reader, writer) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        #[cfg(not(target_os = "linux"))]
        for fd in [&reader, &writer] {
            use std::os::fd::AsRawFd;
            // SAFETY: fcntl on a descriptor we own.
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        Ok((std::fs::File::from(reader), writer))
    }

    /// COMMAND gets default signals, and SIGKILL if the log-writer dies (Linux).
    pub fn prepare_child(child: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        // SAFETY: getpid is async-signal-safe; it is read here, before the fork.
        #[cfg(target_os = "linux")]
        let parent = unsafe { libc::getpid() };
        // SAFETY: only async-signal-safe calls (signal, prctl, getppid, raise) between fork
        // and exec.
        unsafe {
            child.pre_exec(move || {
                for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGPIPE] {
                    libc::signal(signal, libc::SIG_DFL);
                }
                #[cfg(target_os = "linux")]
                {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    if libc::getppid() != parent {
                        libc::raise(libc::SIGKILL);
                    }
                }
                Ok(())
            });
        }
    }
}

/// Files only their owner may read: modes 0600 and 0700.
pub mod fs {
    use std::io;
    use std::path::Path;

    /// Creates `dir` (and missing parents) with mode 0700; the mode is set explicitly on `dir`
    /// itself, so neither a lax nor a strict umask changes it. An existing `dir` is left alone.
    pub fn create_private_dir(dir: &Path) -> io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if dir.is_dir() {
            return Ok(());
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
    }

    /// New files are created owner-only (0600).
    pub fn owner_only(options: &mut std::fs::OpenOptions) -> &mut std::fs::OpenOptions {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600)
    }

    /// The open refuses a symbolic link (and never blocks on a FIFO).
    pub fn no_follow(options: &mut std::fs::OpenOptions) -> &mut std::fs::OpenOptions {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
    }

    /// Whether an open failed because the path is a symbolic link (see [`no_follow`]).
    pub fn is_link_refused(error: &io::Error) -> bool {
        error.raw_os_error() == Some(libc::ELOOP)
    }

    /// Whether `meta` allows no one but its owner (mode `& 0o077 == 0`); `None` where the OS
    /// has no such mode.
    pub fn mode(meta: &std::fs::Metadata) -> Option<u32> {
        use std::os::unix::fs::PermissionsExt;
        Some(meta.permissions().mode() & 0o777)
    }

    /// Makes an existing file owner-only (0600).
    pub fn restrict_to_owner(path: &Path) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
    }

    /// [`restrict_to_owner`] on an open file.
    pub fn restrict_open_file_to_owner(file: &std::fs::File) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
    }

    /// The permissions a new file gets before the umask (0666), where the OS has modes.
    pub fn umask_default_permissions() -> Option<std::fs::Permissions> {
        use std::os::unix::fs::PermissionsExt;
        Some(std::fs::Permissions::from_mode(0o666))
    }

    /// Whether `file` is still the file at `path` (not followed through a link).
    pub fn is_same_file(file: &std::fs::File, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), std::fs::symlink_metadata(path)) {
            (Ok(open), Ok(on_disk)) => open.dev() == on_disk.dev() && open.ino() == on_disk.ino(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parent_watch_returns_when_the_parent_changes() {
        let calls = std::sync::atomic::AtomicU32::new(0);
        watch_parent(
            42,
            || {
                let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if n < 3 {
                    42
                } else {
                    1
                }
            },
            Duration::from_millis(1),
        );
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 4);
    }
}
