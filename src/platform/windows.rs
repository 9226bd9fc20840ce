//! Windows: Job Objects, console control events, the TCP owner table, file ACLs.
//!
//! A daemon (the `mcpsm log-writer` that runs its command) is started with
//! `CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW` — a hidden console of its own, so no client's
//! CTRL_C/CTRL_BREAK reaches it and no console window opens for it or its children — and out
//! of the client's Job Object when that job allows it (`CREATE_BREAKAWAY_FROM_JOB`; editors
//! run their children in kill-on-close jobs). The log-writer then creates the named Job
//! Object `Local\mcpsm-job-PID` with `JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE` and puts itself in
//! it, so everything the command starts is in the job: stopping the daemon terminates the job
//! (the whole tree), and when the log-writer dies its handle closes and the job kills the rest.
//! Any later manager finds the job by the daemon's pid.

use std::ffi::OsStr;
use std::io;
use std::os::windows::ffi::OsStrExt;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle, RawHandle};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use windows_sys::Win32::Foundation::{
    LocalFree, ERROR_ACCESS_DENIED, FILETIME, GENERIC_ALL, HANDLE, STILL_ACTIVE,
};
use windows_sys::Win32::System::Threading::{
    GetCurrentProcess, GetExitCodeProcess, GetProcessTimes, OpenProcess, TerminateProcess,
    WaitForSingleObject, CREATE_BREAKAWAY_FROM_JOB, CREATE_NEW_PROCESS_GROUP, CREATE_NO_WINDOW,
    INFINITE, PROCESS_QUERY_LIMITED_INFORMATION, PROCESS_TERMINATE,
};

use super::{portable, Signal, Stopped};

/// `ERROR_BROKEN_PIPE` and `ERROR_NO_DATA` ("the pipe is being closed").
pub const BROKEN_PIPE_ERRORS: &[i32] = &[109, 232];

/// What a client sends to interrupt its servers ([`interrupt_group`]).
pub const INTERRUPT_NAME: &str = "CTRL_BREAK";
/// What [`kill`] does.
pub const KILL_NAME: &str = "TerminateProcess";

/// There is no login shell to ask: daemons get the manager's own values of the base variables.
pub const LOGIN_SHELL_ENVIRONMENT: bool = false;

/// What Windows programs need besides the common variables (node, python and npx fail without
/// `SystemRoot`, `PATHEXT`, `APPDATA`, …).
pub const EXTRA_BASE_VARIABLES: &[&str] = &[
    "SYSTEMROOT",
    "SYSTEMDRIVE",
    "WINDIR",
    "COMSPEC",
    "PATHEXT",
    "USERPROFILE",
    "USERNAME",
    "USERDOMAIN",
    "HOMEDRIVE",
    "HOMEPATH",
    "APPDATA",
    "LOCALAPPDATA",
    "PROGRAMDATA",
    "PROGRAMFILES",
    "PROGRAMFILES(X86)",
    "PROGRAMW6432",
    "COMMONPROGRAMFILES",
    "ALLUSERSPROFILE",
    "PUBLIC",
    "OS",
    "PROCESSOR_ARCHITECTURE",
    "NUMBER_OF_PROCESSORS",
];

/// Windows variable names are the same whatever their case (`Path` is `PATH`).
pub const ENV_CASE_INSENSITIVE: bool = true;

const SYNCHRONIZE: u32 = 0x0010_0000;
const JOB_OBJECT_QUERY: u32 = 0x4;
const JOB_OBJECT_TERMINATE: u32 = 0x8;
const WSAEMFILE: i32 = 10024;
const ERROR_TOO_MANY_OPEN_FILES: i32 = 4;
/// How a daemon starts: its own hidden console and process group.
const DETACHED_FLAGS: u32 = CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW;

fn wide(text: &str) -> Vec<u16> {
    OsStr::new(text).encode_wide().chain(Some(0)).collect()
}

/// A handle that is closed when dropped; `None` for a null handle.
fn owned(handle: HANDLE) -> Option<OwnedHandle> {
    // SAFETY: a non-null handle just returned to us, which nobody else owns.
    (!handle.is_null()).then(|| unsafe { OwnedHandle::from_raw_handle(handle as RawHandle) })
}

fn raw(handle: &OwnedHandle) -> HANDLE {
    handle.as_raw_handle() as HANDLE
}

/// The user's home when `HOME` is unset: `%USERPROFILE%`.
pub fn user_profile() -> Option<PathBuf> {
    std::env::var_os("USERPROFILE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Whether `command` names a path rather than a program to look up on PATH.
pub fn is_path_like(command: &str) -> bool {
    command.contains(['/', '\\'])
}

/// The files a program named `path` may be: itself when it has an extension, else each
/// `%PATHEXT%` extension added (`npx` is `npx.cmd`; the extensionless `npx` next to it is a
/// shell script Windows cannot run).
pub fn executable_candidates(path: PathBuf) -> Vec<PathBuf> {
    if path.extension().is_some() {
        return vec![path];
    }
    let pathext = std::env::var("PATHEXT").unwrap_or_else(|_| ".COM;.EXE;.BAT;.CMD".into());
    pathext
        .split(';')
        .filter(|ext| !ext.is_empty())
        .map(|ext| {
            let mut name = path.clone().into_os_string();
            name.push(ext.to_ascii_lowercase());
            PathBuf::from(name)
        })
        .collect()
}

/// Windows has no execute bit: any file found may be run.
pub fn is_executable(_meta: &std::fs::Metadata) -> bool {
    true
}

/// A hidden console and a process group of its own (see the module docs), and no inherited
/// handle beyond the stdio it is given.
pub fn detach(command: &mut std::process::Command) {
    use std::os::windows::process::CommandExt;
    command.creation_flags(DETACHED_FLAGS);
    keep_own_stdio_from_children();
}

/// Windows children inherit every inheritable handle, and this process's own stdio handles
/// are inheritable when it got them from its parent: a detached child would hold the pipe its
/// starter waits on (`mcpsm manager --detach`'s stderr). Children given stdio explicitly get
/// their own duplicates, and `Stdio::inherit` duplicates too, so clearing the flag on the
/// originals only stops the leak.
fn keep_own_stdio_from_children() {
    use windows_sys::Win32::Foundation::{SetHandleInformation, HANDLE_FLAG_INHERIT};
    use windows_sys::Win32::System::Console::{
        GetStdHandle, STD_ERROR_HANDLE, STD_INPUT_HANDLE, STD_OUTPUT_HANDLE,
    };
    for which in [STD_INPUT_HANDLE, STD_OUTPUT_HANDLE, STD_ERROR_HANDLE] {
        // SAFETY: plain calls on this process's own standard handles; an absent one fails.
        unsafe {
            let handle = GetStdHandle(which);
            if !handle.is_null() && handle as isize != -1 {
                SetHandleInformation(handle, HANDLE_FLAG_INHERIT, 0);
            }
        }
    }
}

/// Spawns a command prepared by [`detach`], out of the caller's job if the job allows it.
pub fn spawn_detached(command: &mut tokio::process::Command) -> io::Result<tokio::process::Child> {
    command.creation_flags(DETACHED_FLAGS | CREATE_BREAKAWAY_FROM_JOB);
    match command.spawn() {
        Err(e) if e.raw_os_error() == Some(ERROR_ACCESS_DENIED as i32) => {
            command.creation_flags(DETACHED_FLAGS);
            command.spawn()
        }
        result => result,
    }
}

/// [`spawn_detached`] for a std command.
pub fn spawn_detached_std(command: &mut std::process::Command) -> io::Result<std::process::Child> {
    use std::os::windows::process::CommandExt;
    command.creation_flags(DETACHED_FLAGS | CREATE_BREAKAWAY_FROM_JOB);
    match command.spawn() {
        Err(e) if e.raw_os_error() == Some(ERROR_ACCESS_DENIED as i32) => {
            command.creation_flags(DETACHED_FLAGS);
            command.spawn()
        }
        result => result,
    }
}

/// A process group of its own, so a CTRL_BREAK can be sent to it alone. The child shares
/// this process's console, which console events need: a process started without one (from
/// a service, or with every stdio handle redirected under Wine) gets one first.
pub fn new_process_group(command: &mut std::process::Command) {
    use std::os::windows::process::CommandExt;
    ensure_console();
    command.creation_flags(CREATE_NEW_PROCESS_GROUP);
}

/// Attaches a new console when this process has none, keeping its standard handles (output
/// that goes to a pipe or file stays there).
fn ensure_console() {
    use windows_sys::Win32::System::Console::{
        AllocConsole, GetConsoleWindow, GetStdHandle, SetStdHandle, STD_ERROR_HANDLE,
        STD_INPUT_HANDLE, STD_OUTPUT_HANDLE,
    };
    // SAFETY: plain calls; the saved handles are put back unchanged.
    unsafe {
        if !GetConsoleWindow().is_null() {
            return;
        }
        let which = [STD_INPUT_HANDLE, STD_OUTPUT_HANDLE, STD_ERROR_HANDLE];
        let saved = which.map(|w| GetStdHandle(w));
        if AllocConsole() != 0 {
            for (w, handle) in which.into_iter().zip(saved) {
                if !handle.is_null() {
                    SetStdHandle(w, handle);
                }
            }
        }
    }
}

/// What a console does to interrupt a program: CTRL_BREAK to the process group `leader`
/// leads (CTRL_C cannot be sent to a group). The group must share this process's console.
pub fn interrupt_group(leader: u32) -> io::Result<()> {
    use windows_sys::Win32::System::Console::{GenerateConsoleCtrlEvent, CTRL_BREAK_EVENT};
    // SAFETY: plain call; a missing group makes it fail.
    if unsafe { GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, leader) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn open_process(pid: u32, access: u32) -> Option<OwnedHandle> {
    // SAFETY: plain call; failure gives a null handle.
    owned(unsafe { OpenProcess(access, 0, pid) })
}

/// Kills `pid` at once (TerminateProcess).
pub fn kill(pid: u32) -> io::Result<()> {
    let process = open_process(pid, PROCESS_TERMINATE).ok_or_else(io::Error::last_os_error)?;
    // SAFETY: a live handle with PROCESS_TERMINATE.
    if unsafe { TerminateProcess(raw(&process), 1) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Kills the tree `leader` leads at once: its job when it has one, else every process below it.
pub fn kill_group(leader: u32) {
    if let Some(job) = open_job(leader, JOB_OBJECT_TERMINATE) {
        // SAFETY: a live job handle with JOB_OBJECT_TERMINATE.
        unsafe { windows_sys::Win32::System::JobObjects::TerminateJobObject(raw(&job), 1) };
        return;
    }
    for pid in portable::process_tree(leader) {
        let _ = kill(pid);
    }
}

/// After a daemon's log-writer exited its job killed the rest: nothing to do.
pub fn reap_leftovers(_leader: u32) {}

fn job_name(leader: u32) -> Vec<u16> {
    wide(&format!("Local\\mcpsm-job-{leader}"))
}

fn open_job(leader: u32, access: u32) -> Option<OwnedHandle> {
    use windows_sys::Win32::System::JobObjects::OpenJobObjectW;
    let name = job_name(leader);
    // SAFETY: a NUL-terminated name; failure gives a null handle.
    owned(unsafe { OpenJobObjectW(access, 0, name.as_ptr()) })
}

/// The processes in the job of `leader`, or `leader` alone when it has no job.
pub fn tree_members(leader: u32) -> Vec<u32> {
    use windows_sys::Win32::System::JobObjects::{
        JobObjectBasicProcessIdList, QueryInformationJobObject, JOBOBJECT_BASIC_PROCESS_ID_LIST,
    };
    let Some(job) = open_job(leader, JOB_OBJECT_QUERY) else {
        return if is_alive(leader) {
            vec![leader]
        } else {
            Vec::new()
        };
    };
    const MAX: usize = 1024;
    #[repr(C)]
    struct List {
        head: JOBOBJECT_BASIC_PROCESS_ID_LIST,
        rest: [usize; MAX],
    }
    // SAFETY: plain data; zero is a valid value for every field.
    let mut list: Box<List> = Box::new(unsafe { std::mem::zeroed() });
    // SAFETY: the buffer is as large as the size passed.
    let ok = unsafe {
        QueryInformationJobObject(
            raw(&job),
            JobObjectBasicProcessIdList,
            std::ptr::from_mut(&mut *list).cast(),
            std::mem::size_of::<List>() as u32,
            std::ptr::null_mut(),
        )
    } != 0;
    if !ok {
        return if is_alive(leader) {
            vec![leader]
        } else {
            Vec::new()
        };
    }
    let count = (list.head.NumberOfProcessIdsInList as usize).min(MAX + 1);
    let base = std::ptr::addr_of!(list.head.ProcessIdList).cast::<usize>();
    (0..count)
        // SAFETY: `count` entries follow `ProcessIdList` inside `list`.
        .map(|i| unsafe { *base.add(i) } as u32)
        .filter(|&pid| is_alive(pid))
        .collect()
}

/// `pid` and every process below it, parents first.
pub fn process_tree(pid: u32) -> Vec<u32> {
    portable::process_tree(pid)
}

/// Terminates the job of `leader` (the whole tree; a detached process has no graceful stop
/// signal on Windows), then waits up to 5 s for it to empty. `grace` is not used.
pub async fn stop_tree(
    leader: u32,
    mut child: Option<&mut tokio::process::Child>,
    _grace: Duration,
) -> Stopped {
    kill_group(leader);
    let _ = kill(leader);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(child) = child.as_mut() {
            let _ = child.try_wait();
        }
        if tree_members(leader).is_empty() {
            return Stopped::Terminated;
        }
        if Instant::now() >= deadline {
            return Stopped::Stuck;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Whether `pid` runs (its exit code is still `STILL_ACTIVE`).
pub fn is_alive(pid: u32) -> bool {
    let Some(process) = open_process(pid, PROCESS_QUERY_LIMITED_INFORMATION) else {
        return false;
    };
    let mut code = 0u32;
    // SAFETY: a live handle and a place for the code.
    let ok = unsafe { GetExitCodeProcess(raw(&process), &mut code) } != 0;
    ok && code == STILL_ACTIVE as u32
}

/// When `pid` was created, in 100 ns units since 1601: with the pid it names one process.
pub fn start_time(pid: u32) -> Option<u64> {
    let process = open_process(pid, PROCESS_QUERY_LIMITED_INFORMATION)?;
    let zero = FILETIME {
        dwLowDateTime: 0,
        dwHighDateTime: 0,
    };
    let (mut created, mut exited, mut kernel, mut user) = (zero, zero, zero, zero);
    // SAFETY: a live handle and four places for the times.
    let ok = unsafe {
        GetProcessTimes(
            raw(&process),
            &mut created,
            &mut exited,
            &mut kernel,
            &mut user,
        )
    } != 0;
    ok.then(|| (u64::from(created.dwHighDateTime) << 32) | u64::from(created.dwLowDateTime))
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

/// Who listens on TCP `port` (IPv4 or IPv6), from the TCP owner table.
pub fn port_owner(port: u16) -> Option<(u32, String)> {
    use windows_sys::Win32::NetworkManagement::IpHelper::{
        GetExtendedTcpTable, MIB_TCP6ROW_OWNER_PID, MIB_TCPROW_OWNER_PID,
        TCP_TABLE_OWNER_PID_LISTENER,
    };
    use windows_sys::Win32::Networking::WinSock::{AF_INET, AF_INET6};
    fn table(family: u16) -> Vec<u8> {
        let mut size = 0u32;
        for _ in 0..4 {
            let mut buffer = vec![0u8; size as usize];
            // SAFETY: `buffer` is `size` bytes long; the call says how much it needs.
            let code = unsafe {
                GetExtendedTcpTable(
                    buffer.as_mut_ptr().cast(),
                    &mut size,
                    0,
                    u32::from(family),
                    TCP_TABLE_OWNER_PID_LISTENER,
                    0,
                )
            };
            if code == 0 {
                return buffer;
            }
        }
        Vec::new()
    }
    fn rows<T: Copy>(buffer: &[u8]) -> Vec<T> {
        if buffer.len() < 4 {
            return Vec::new();
        }
        let count = u32::from_ne_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]) as usize;
        let offset = std::mem::align_of::<T>().max(4);
        (0..count)
            .filter_map(|i| {
                let start = offset + i * std::mem::size_of::<T>();
                let bytes = buffer.get(start..start + std::mem::size_of::<T>())?;
                // SAFETY: `bytes` holds one whole row; read_unaligned copies it.
                Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
            })
            .collect()
    }
    let local = |raw_port: u32| u16::from_be((raw_port & 0xffff) as u16);
    let pid = rows::<MIB_TCPROW_OWNER_PID>(&table(AF_INET))
        .into_iter()
        .find(|row| local(row.dwLocalPort) == port)
        .map(|row| row.dwOwningPid)
        .or_else(|| {
            rows::<MIB_TCP6ROW_OWNER_PID>(&table(AF_INET6))
                .into_iter()
                .find(|row| local(row.dwLocalPort) == port)
                .map(|row| row.dwOwningPid)
        })
        // pid 0 is the idle process: Wine does not fill the owner in.
        .filter(|&pid| pid != 0)?;
    Some((pid, command_line(pid).unwrap_or_else(|| "?".into())))
}

/// "exited with status 3"; NTSTATUS-like codes are shown in hex too.
pub fn describe_exit(status: std::process::ExitStatus) -> String {
    match status.code() {
        Some(code) if code < 0 => format!("exited with status {code} ({:#010x})", code as u32),
        Some(code) => format!("exited with status {code}"),
        None => "exited".to_owned(),
    }
}

/// Windows has no signals to re-raise.
pub(super) fn raise_like(_status: &std::process::ExitStatus) -> Option<u8> {
    None
}

/// The console events a server process listens to, as one stream.
pub struct Signals {
    close: Option<tokio::signal::windows::CtrlClose>,
    shutdown: Option<tokio::signal::windows::CtrlShutdown>,
    logoff: Option<tokio::signal::windows::CtrlLogoff>,
    ctrl_c: Option<tokio::signal::windows::CtrlC>,
    ctrl_break: Option<tokio::signal::windows::CtrlBreak>,
}

impl Signals {
    /// Listens to `wanted` from now on. Terminate is CTRL_CLOSE, CTRL_SHUTDOWN and
    /// CTRL_LOGOFF; Interrupt is CTRL_C and CTRL_BREAK; Hangup never comes.
    pub fn new(wanted: &[Signal]) -> io::Result<Signals> {
        use tokio::signal::windows as w;
        let terminate = wanted.contains(&Signal::Terminate);
        let interrupt = wanted.contains(&Signal::Interrupt);
        Ok(Signals {
            close: terminate.then(w::ctrl_close).transpose()?,
            shutdown: terminate.then(w::ctrl_shutdown).transpose()?,
            logoff: terminate.then(w::ctrl_logoff).transpose()?,
            ctrl_c: interrupt.then(w::ctrl_c).transpose()?,
            ctrl_break: interrupt.then(w::ctrl_break).transpose()?,
        })
    }

    /// The next event. Cancel-safe.
    pub async fn recv(&mut self) -> Signal {
        macro_rules! next {
            ($field:expr) => {
                async {
                    match $field.as_mut() {
                        Some(listener) => {
                            if listener.recv().await.is_none() {
                                std::future::pending::<()>().await;
                            }
                        }
                        None => std::future::pending::<()>().await,
                    }
                }
            };
        }
        tokio::select! {
            () = next!(self.close) => Signal::Terminate,
            () = next!(self.shutdown) => Signal::Terminate,
            () = next!(self.logoff) => Signal::Terminate,
            () = next!(self.ctrl_c) => Signal::Interrupt,
            () = next!(self.ctrl_break) => Signal::Interrupt,
        }
    }
}

unsafe extern "system" fn ignore_interrupts(event: u32) -> windows_sys::core::BOOL {
    use windows_sys::Win32::System::Console::{CTRL_BREAK_EVENT, CTRL_C_EVENT};
    // TRUE: handled, so the default handler (ExitProcess) does not run.
    i32::from(event == CTRL_C_EVENT || event == CTRL_BREAK_EVENT)
}

/// Clients interrupt their servers for many reasons; the proxy outlives CTRL_C and CTRL_BREAK.
pub fn ignore_interrupt() {
    use windows_sys::Win32::System::Console::SetConsoleCtrlHandler;
    // SAFETY: registering a handler that only returns a value.
    unsafe { SetConsoleCtrlHandler(Some(ignore_interrupts), 1) };
}

static PARENT_GONE: OnceLock<tokio::sync::Notify> = OnceLock::new();

/// Watches the parent (the client) from a thread; [`parent_exited`] resolves when it exits.
pub fn exit_with_parent() {
    let gone = PARENT_GONE.get_or_init(tokio::sync::Notify::new);
    let Some(parent) = parent_of(std::process::id()) else {
        return;
    };
    // The parent must have started before us, or the pid is already someone else's.
    let (Some(ours), Some(theirs)) = (start_time(std::process::id()), start_time(parent)) else {
        return;
    };
    if theirs > ours {
        gone.notify_one();
        return;
    }
    let Some(handle) = open_process(parent, SYNCHRONIZE) else {
        gone.notify_one();
        return;
    };
    let _ = std::thread::Builder::new()
        .name("parent-watch".into())
        .spawn(move || {
            // SAFETY: a live handle with SYNCHRONIZE.
            unsafe { WaitForSingleObject(raw(&handle), INFINITE) };
            if let Some(gone) = PARENT_GONE.get() {
                gone.notify_one();
            }
        });
}

/// Resolves when [`exit_with_parent`] saw the parent exit; never when it was not called.
pub async fn parent_exited() {
    match PARENT_GONE.get() {
        Some(gone) => gone.notified().await,
        None => std::future::pending().await,
    }
}

fn parent_of(pid: u32) -> Option<u32> {
    use windows_sys::Win32::System::Diagnostics::ToolHelp::{
        CreateToolhelp32Snapshot, Process32FirstW, Process32NextW, PROCESSENTRY32W,
        TH32CS_SNAPPROCESS,
    };
    // SAFETY: plain call; failure gives INVALID_HANDLE_VALUE (-1).
    let snapshot = unsafe { CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS, 0) };
    if snapshot as isize == -1 {
        return None;
    }
    let snapshot = owned(snapshot)?;
    // SAFETY: plain data.
    let mut entry: PROCESSENTRY32W = unsafe { std::mem::zeroed() };
    entry.dwSize = std::mem::size_of::<PROCESSENTRY32W>() as u32;
    // SAFETY: a live snapshot and an entry with dwSize set.
    let mut more = unsafe { Process32FirstW(raw(&snapshot), &mut entry) } != 0;
    while more {
        if entry.th32ProcessID == pid {
            return Some(entry.th32ParentProcessID);
        }
        // SAFETY: as above.
        more = unsafe { Process32NextW(raw(&snapshot), &mut entry) } != 0;
    }
    None
}

/// The proxy's stdin and stdout always go through tokio's blocking stdio on Windows (see
/// [`super::stdio`]).
pub fn nonblocking_stdio() -> super::stdio::Direct {
    (None, None)
}

/// Nothing to restore: [`nonblocking_stdio`] changes no handle.
pub fn restore_stdio() {}

/// No descriptor limit to respect.
pub fn open_file_limit() -> u64 {
    u64::MAX
}

/// Whether an IO error means this process ran out of handles or sockets.
pub fn is_out_of_descriptors(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(WSAEMFILE | ERROR_TOO_MANY_OPEN_FILES)
    )
}

/// No password entry on Windows.
pub fn account_shell() -> Option<PathBuf> {
    None
}

/// The pieces of `mcpsm log-writer` that differ per OS (see `supervise::log_writer`).
pub mod log_writer {
    use super::*;
    use windows_sys::Win32::System::JobObjects::{
        AssignProcessToJobObject, CreateJobObjectW, JobObjectExtendedLimitInformation,
        SetInformationJobObject, JOBOBJECT_EXTENDED_LIMIT_INFORMATION,
        JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
    };

    /// This process's stdout (the log file the manager opened), as a file of its own.
    pub fn stdout_file() -> io::Result<std::fs::File> {
        use std::os::windows::io::AsHandle;
        Ok(std::fs::File::from(
            io::stdout().as_handle().try_clone_to_owned()?,
        ))
    }

    /// Puts this process in the job `Local\mcpsm-job-PID` (kill-on-close), which everything it
    /// starts inherits: a stop terminates the job, and this process's death closes the last
    /// handle, which kills the rest. The handle is kept open for the life of the process.
    pub fn outlast_stop_signals() -> io::Result<()> {
        use windows_sys::Win32::System::Console::SetConsoleCtrlHandler;
        // A console event for this hidden console is not a stop request.
        // SAFETY: NULL handler + TRUE: ignore CTRL_C for this process.
        unsafe { SetConsoleCtrlHandler(None, 1) };
        let name = job_name(std::process::id());
        // SAFETY: a NUL-terminated name; failure gives a null handle.
        let job = owned(unsafe { CreateJobObjectW(std::ptr::null(), name.as_ptr()) })
            .ok_or_else(io::Error::last_os_error)?;
        // SAFETY: plain data.
        let mut limits: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = unsafe { std::mem::zeroed() };
        limits.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
        // SAFETY: the struct and its size, for the class that expects it.
        let set = unsafe {
            SetInformationJobObject(
                raw(&job),
                JobObjectExtendedLimitInformation,
                std::ptr::from_ref(&limits).cast(),
                std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
            )
        } != 0;
        if !set {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: live handles (GetCurrentProcess is a pseudo-handle).
        if unsafe { AssignProcessToJobObject(raw(&job), GetCurrentProcess()) } == 0 {
            return Err(io::Error::last_os_error());
        }
        std::mem::forget(job);
        Ok(())
    }

    /// An anonymous pipe (not inherited; the child gets its own copies).
    pub fn pipe() -> io::Result<(std::io::PipeReader, std::io::PipeWriter)> {
        std::io::pipe()
    }

    /// COMMAND is in the log-writer's job already; its console is the hidden one. It gets
    /// the pipe, not the log file itself.
    pub fn prepare_child(_child: &mut std::process::Command) {
        keep_own_stdio_from_children();
    }
}

/// Files only their owner may read. Windows has no modes: a file is restricted by a protected
/// DACL with one entry, full control for the current user (`CURRENT_USER`); mcpsm's directory
/// under the profile inherits the profile's ACL (the user, SYSTEM, Administrators).
pub mod fs {
    use super::*;
    use std::path::Path;
    use windows_sys::Win32::Security::Authorization::{
        SetEntriesInAclW, SetNamedSecurityInfoW, EXPLICIT_ACCESS_W, SET_ACCESS, SE_FILE_OBJECT,
        TRUSTEE_IS_NAME, TRUSTEE_IS_USER,
    };
    use windows_sys::Win32::Security::{
        ACL, DACL_SECURITY_INFORMATION, NO_INHERITANCE, PROTECTED_DACL_SECURITY_INFORMATION,
    };
    use windows_sys::Win32::Storage::FileSystem::{
        GetFileInformationByHandle, BY_HANDLE_FILE_INFORMATION, FILE_FLAG_BACKUP_SEMANTICS,
        FILE_FLAG_OPEN_REPARSE_POINT,
    };

    /// Creates `dir` and missing parents; it inherits its parent's ACL.
    pub fn create_private_dir(dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    /// Nothing to set at open time; see [`restrict_to_owner`].
    pub fn owner_only(options: &mut std::fs::OpenOptions) -> &mut std::fs::OpenOptions {
        options
    }

    /// Opens a reparse point (a link) itself rather than its target; the caller then sees
    /// that it is not a regular file.
    pub fn no_follow(options: &mut std::fs::OpenOptions) -> &mut std::fs::OpenOptions {
        use std::os::windows::fs::OpenOptionsExt;
        options.custom_flags(FILE_FLAG_OPEN_REPARSE_POINT)
    }

    /// Links are not refused by the open itself on Windows (see [`no_follow`]).
    pub fn is_link_refused(_error: &io::Error) -> bool {
        false
    }

    /// No Unix mode on Windows.
    pub fn mode(_meta: &std::fs::Metadata) -> Option<u32> {
        None
    }

    /// Gives `path` a protected DACL granting only the current user full control.
    pub fn restrict_to_owner(path: &Path) -> io::Result<()> {
        let mut name = wide("CURRENT_USER");
        // SAFETY: plain data.
        let mut access: EXPLICIT_ACCESS_W = unsafe { std::mem::zeroed() };
        access.grfAccessPermissions = GENERIC_ALL;
        access.grfAccessMode = SET_ACCESS;
        access.grfInheritance = NO_INHERITANCE;
        access.Trustee.TrusteeForm = TRUSTEE_IS_NAME;
        access.Trustee.TrusteeType = TRUSTEE_IS_USER;
        access.Trustee.ptstrName = name.as_mut_ptr();
        let mut acl: *mut ACL = std::ptr::null_mut();
        // SAFETY: one entry, no old ACL; the new ACL is freed with LocalFree below.
        let code = unsafe { SetEntriesInAclW(1, &access, std::ptr::null(), &mut acl) };
        if code != 0 {
            return Err(io::Error::from_raw_os_error(code as i32));
        }
        let target: Vec<u16> = path.as_os_str().encode_wide().chain(Some(0)).collect();
        // SAFETY: a NUL-terminated path and the ACL just built.
        let code = unsafe {
            SetNamedSecurityInfoW(
                target.as_ptr(),
                SE_FILE_OBJECT,
                DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                acl,
                std::ptr::null(),
            )
        };
        // SAFETY: allocated by SetEntriesInAclW.
        unsafe { LocalFree(acl.cast()) };
        if code != 0 {
            return Err(io::Error::from_raw_os_error(code as i32));
        }
        Ok(())
    }

    /// Nothing to do on an open file at creation; the path is restricted by the callers that
    /// keep secrets (see [`restrict_to_owner`]).
    pub fn restrict_open_file_to_owner(_file: &std::fs::File) -> io::Result<()> {
        Ok(())
    }

    /// No modes: new files get their directory's inherited ACL.
    pub fn umask_default_permissions() -> Option<std::fs::Permissions> {
        None
    }

    fn identity(file: &std::fs::File) -> Option<(u32, u32, u32)> {
        // SAFETY: plain data.
        let mut info: BY_HANDLE_FILE_INFORMATION = unsafe { std::mem::zeroed() };
        // SAFETY: a live handle and a place for the information.
        let ok =
            unsafe { GetFileInformationByHandle(file.as_raw_handle() as HANDLE, &mut info) } != 0;
        ok.then_some((
            info.dwVolumeSerialNumber,
            info.nFileIndexHigh,
            info.nFileIndexLow,
        ))
    }

    /// Whether `file` is still the file at `path` (volume and file index; links not followed).
    pub fn is_same_file(file: &std::fs::File, path: &Path) -> bool {
        use std::os::windows::fs::OpenOptionsExt;
        let Ok(on_disk) = std::fs::OpenOptions::new()
            .access_mode(0)
            .custom_flags(FILE_FLAG_OPEN_REPARSE_POINT | FILE_FLAG_BACKUP_SEMANTICS)
            .open(path)
        else {
            return false;
        };
        match (identity(file), identity(&on_disk)) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
    }
}

/// The program (and leading arguments) that opens a URL in the user's browser.
pub fn url_opener() -> Option<(String, Vec<String>)> {
    Some((
        "rundll32".into(),
        vec!["url.dll,FileProtocolHandler".into()],
    ))
}

/// Whether a keychain could answer: the OS always has one.
pub fn keychain_reachable() -> Result<(), String> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensionless_programs_are_looked_up_with_pathext() {
        let found = executable_candidates(PathBuf::from(r"C:\node\npx"));
        assert!(
            found
                .iter()
                .any(|p| p.to_string_lossy().ends_with("npx.cmd")),
            "{found:?}"
        );
        assert!(!found.contains(&PathBuf::from(r"C:\node\npx")));
        assert_eq!(
            executable_candidates(PathBuf::from(r"C:\node\node.exe")),
            vec![PathBuf::from(r"C:\node\node.exe")]
        );
    }

    #[test]
    fn own_process_has_a_start_time_and_lives() {
        let pid = std::process::id();
        assert!(is_alive(pid));
        assert!(start_time(pid).is_some());
        assert!(tree_members(pid).contains(&pid));
    }

    #[test]
    fn a_listening_port_names_its_owner() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        // Wine's TCP owner table has no pids (real Windows has): no owner is named then.
        if let Some((pid, _)) = port_owner(port) {
            assert_eq!(pid, std::process::id());
        }
    }
}
