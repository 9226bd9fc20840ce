//! Daemons that mcpsm itself starts: a hermetic home whose registry puts the manager and every
//! daemon on free ports, the processes of that home as /proc shows them, the manager API over
//! raw HTTP/1.1, and a guard that leaves no process behind.
//!
//! Every process the manager starts inherits `MCPSM_HOME=<home>` (the manager gets it from the
//! proxy or CLI that started it, daemons and their children from the manager), so scanning
//! `/proc/*/environ` finds exactly the processes a test caused, grandchildren included. Zombies
//! are never counted: PID 1 here does not reap orphans, so dead processes linger as `Z`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::servers::{everything_js, run_with_deadline};
use super::{call_tool, free_port, support_dir, Proxy, TestHome, DEADLINE};

/// A temp home with a registry on free ports; on drop it runs `mcpsm manager stop` and then
/// SIGKILLs whatever of this home is still alive.
pub struct ManagedHome {
    pub home: TestHome,
    pub manager_port: u16,
}

/// What a finished `mcpsm` command said.
#[derive(Debug)]
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    #[track_caller]
    pub fn assert_success(&self) -> &Ran {
        assert_eq!(self.code, Some(0), "mcpsm failed: {self:#?}");
        self
    }
}

/// A live (not zombie) process of a test home.
#[derive(Debug, Clone)]
pub struct HomeProcess {
    pub pid: u32,
    pub argv: Vec<String>,
}

impl HomeProcess {
    /// The mcpsm binary itself (manager, proxy, CLI), as opposed to a daemon.
    pub fn is_mcpsm(&self) -> bool {
        self.argv
            .first()
            .is_some_and(|arg0| Path::new(arg0).file_name() == Some("mcpsm".as_ref()))
    }

    /// `mcpsm manager` or `mcpsm manager --detach` (not `mcpsm manager stop`).
    pub fn is_manager(&self) -> bool {
        self.is_mcpsm()
            && self.argv.iter().any(|a| a == "manager")
            && !self.argv.iter().any(|a| a == "stop")
    }

    pub fn is_proxy(&self) -> bool {
        self.is_mcpsm() && self.argv.iter().any(|a| a == "proxy")
    }

    pub fn command_line(&self) -> String {
        self.argv.join(" ")
    }
}

/// A free port below the kernel's ephemeral range, for a server mcpsm starts later.
///
/// A port from `bind(0)` lies in the ephemeral range, so until the server binds it any
/// outgoing connection on the machine may take it as its source port, and the readiness probe
/// that connects to it again and again before the server listens may even connect to itself
/// (TCP simultaneous open). Ports below the range are never picked by `connect`.
pub fn listen_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.max(10_001));
    for _ in 0..1000 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
        hasher.write_u32(std::process::id());
        let port = low + u16::try_from(hasher.finish() % u64::from(high - low)).unwrap_or(0);
        // Never the same port twice in one test run (a manager and its daemon, say): two
        // calls may both find a port free before anything listens on it.
        let fresh = GIVEN.lock().unwrap_or_else(|e| e.into_inner()).insert(port);
        if fresh && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    free_port()
}

impl ManagedHome {
    /// A home whose registry is `[manager] port = <free port>` followed by `daemons` (tables
    /// made with [`everything_entry`] and [`sh_entry`], on [`listen_port`]s).
    pub fn new(daemons: &str) -> ManagedHome {
        let home = TestHome::new();
        let manager_port = listen_port();
        home.write_registry(&format!("[manager]\nport = {manager_port}\n\n{daemons}"));
        ManagedHome { home, manager_port }
    }

    pub fn path(&self) -> &Path {
        self.home.path()
    }

    pub fn log_file(&self, name: &str) -> PathBuf {
        self.path().join("logs").join(format!("{name}.log"))
    }

    /// Runs `mcpsm ARGS` to completion (within a minute).
    #[track_caller]
    pub fn run(&self, args: &[&str]) -> Ran {
        let mut command = self.home.mcpsm();
        command.args(args);
        let output = run_with_deadline(command, Duration::from_secs(60));
        Ran {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// `mcpsm start NAME`, which must succeed; returns the daemon's status.
    #[track_caller]
    pub fn start(&self, name: &str) -> Value {
        self.run(&["start", name]).assert_success();
        let daemon = self.daemon(name);
        assert_eq!(
            daemon["state"], "ready",
            "after `mcpsm start {name}`: {daemon}"
        );
        daemon
    }

    /// `mcpsm status --json`, parsed.
    #[track_caller]
    pub fn status(&self) -> Value {
        let ran = self.run(&["status", "--json"]);
        ran.assert_success();
        serde_json::from_str(&ran.stdout)
            .unwrap_or_else(|e| panic!("`mcpsm status --json` is not JSON ({e}): {ran:#?}"))
    }

    /// One daemon's entry in `mcpsm status --json`.
    #[track_caller]
    pub fn daemon(&self, name: &str) -> Value {
        daemon_in(&self.status(), name)
    }

    /// The daemon's pid, which must be set.
    #[track_caller]
    pub fn daemon_pid(&self, name: &str) -> u32 {
        pid_of(&self.daemon(name))
    }

    /// Polls the manager's `GET /status` until daemon `name` satisfies `condition`; returns
    /// that entry.
    #[track_caller]
    pub fn wait_daemon(
        &self,
        name: &str,
        limit: Duration,
        what: &str,
        condition: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        let mut last = Value::Null;
        loop {
            if let Some(report) = self.api_status() {
                last = daemon_in(&report, name);
                if condition(&last) {
                    return last;
                }
            }
            if start.elapsed() > limit {
                panic!("timed out after {limit:?} waiting for daemon \"{name}\" to be {what}; last status: {last}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET /status` straight from the manager, or None when none answers.
    pub fn api_status(&self) -> Option<Value> {
        let token = std::fs::read_to_string(self.path().join("manager.token")).ok()?;
        let token = format!("Bearer {}", token.trim());
        let answer = try_http(
            self.manager_port,
            "GET",
            "/status",
            &[("Authorization", &token)],
            "",
        )
        .ok()?;
        (answer.status == 200).then(|| answer.json())
    }

    /// The running manager's pid (from `GET /ping`).
    #[track_caller]
    pub fn manager_pid(&self) -> u32 {
        let answer = self.http("GET", "/ping", &[], "");
        assert_eq!(answer.status, 200, "GET /ping: {answer:?}");
        answer.json()["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or_else(|| panic!("no pid in /ping: {answer:?}"))
    }

    /// `("Authorization", "Bearer <manager.token>")`, as the value of a header pair.
    #[track_caller]
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.token())
    }

    /// The secret in `manager.token`.
    #[track_caller]
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.path().join("manager.token"))
            .expect("read manager.token")
            .trim()
            .to_owned()
    }

    /// A raw HTTP/1.1 request to the manager API; `Host: 127.0.0.1:PORT` unless `headers`
    /// names another.
    #[track_caller]
    pub fn http(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
        try_http(self.manager_port, method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path} on the manager API failed: {e}"))
    }

    /// `mcpsm proxy --target NAME`.
    pub fn proxy(&self, name: &str) -> Proxy {
        Proxy::spawn(&self.home, &["--target", name])
    }

    /// Live processes of this home, newest last.
    pub fn processes(&self) -> Vec<HomeProcess> {
        processes_of(self.path())
    }

    pub fn managers(&self) -> Vec<HomeProcess> {
        self.processes()
            .into_iter()
            .filter(HomeProcess::is_manager)
            .collect()
    }

    /// Live processes of this home that are not mcpsm: daemons and their children.
    pub fn daemon_processes(&self) -> Vec<HomeProcess> {
        self.processes()
            .into_iter()
            .filter(|p| !p.is_mcpsm())
            .collect()
    }
}

impl Drop for ManagedHome {
    fn drop(&mut self) {
        if self.processes().is_empty() {
            return;
        }
        // The polite way first: it is what users do, and it stops daemons by process group.
        let mut command = self.home.mcpsm();
        command
            .args(["manager", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Ok(mut child) = command.spawn() {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                match child.try_wait() {
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Ok(None) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    _ => break,
                }
            }
        }
        // Then force: daemon groups from manager.json, and every process of this home.
        let state = std::fs::read_to_string(self.path().join("manager.json"))
            .ok()
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .unwrap_or(Value::Null);
        let ours: Vec<u32> = self.processes().iter().map(|p| p.pid).collect();
        let daemons = state["daemons"].as_object().cloned().unwrap_or_default();
        for pid in daemons.values().filter_map(|d| d["pid"].as_u64()) {
            if let Ok(pid) = u32::try_from(pid) {
                if ours.contains(&pid) {
                    kill_group(pid);
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = self.processes();
            if left.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                eprintln!(
                    "processes of {} survived SIGKILL: {left:?}",
                    self.path().display()
                );
                return;
            }
            for process in &left {
                kill(process.pid, libc::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `[daemons.NAME]` running server-everything in `mode` (`streamableHttp` or `sse`) on `port`,
/// bound to 127.0.0.1 by the loopback preload. Append more keys to the returned text.
pub fn everything_entry(name: &str, mode: &str, port: u16) -> String {
    let transport = if mode == "sse" {
        "sse"
    } else {
        "streamable-http"
    };
    format!(
        "[daemons.{name}]\ncommand = \"node\"\nargs = [\"-r\", {}, {}, \"{mode}\"]\nenv = {{ PORT = \"{{port}}\" }}\nport = {port}\ntransport = \"{transport}\"\n",
        toml_string(&loopback_cjs().display().to_string()),
        toml_string(&everything_js().display().to_string()),
    )
}

/// `[daemons.NAME]` running `sh -c SCRIPT` with `PORT={port}` on `port`. Append more keys to
/// the returned text.
pub fn sh_entry(name: &str, script: &str, port: u16) -> String {
    format!(
        "[daemons.{name}]\ncommand = \"sh\"\nargs = [\"-c\", {}]\nenv = {{ PORT = \"{{port}}\" }}\nport = {port}\n",
        toml_string(script)
    )
}

/// A shell command that replaces the shell with server-everything (`streamableHttp`), for
/// [`sh_entry`] scripts.
pub fn exec_everything() -> String {
    format!(
        "exec node -r {} {} streamableHttp",
        shell_quote(&loopback_cjs().display().to_string()),
        shell_quote(&everything_js().display().to_string())
    )
}

pub fn loopback_cjs() -> PathBuf {
    support_dir().join("loopback.cjs")
}

/// A TOML basic string (JSON string escapes are valid TOML).
fn toml_string(text: &str) -> String {
    serde_json::to_string(text).expect("serialize a string")
}

pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The entry for daemon `name` in a status report.
#[track_caller]
pub fn daemon_in(report: &Value, name: &str) -> Value {
    report["daemons"]
        .as_array()
        .and_then(|daemons| daemons.iter().find(|d| d["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no daemon \"{name}\" in the status report: {report}"))
}

/// The `pid` of a daemon status entry, which must be set.
#[track_caller]
pub fn pid_of(daemon: &Value) -> u32 {
    daemon["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or_else(|| panic!("the daemon has no pid: {daemon}"))
}

/// Initializes a proxy session and checks that `echo` answers through it.
#[track_caller]
pub fn assert_session_works(proxy: &mut Proxy) {
    proxy.initialize();
    assert_echo(proxy, 1, "first");
}

/// `tools/call echo` through an initialized session answers "Echo: TEXT".
#[track_caller]
pub fn assert_echo(proxy: &mut Proxy, id: i64, text: &str) {
    proxy.send(&call_tool(id, "echo", json!({ "message": text })));
    let (response, _) = proxy.recv_response(&json!(id));
    assert_eq!(
        response["result"]["content"][0]["text"],
        format!("Echo: {text}"),
        "echo through the proxy: {response}\n--- proxy stderr ---\n{}",
        proxy.stderr()
    );
}

/// Whether `pid` is a live process. A zombie is dead, but a zombie thread-group leader whose
/// other threads are still exiting is not: they still hold its sockets.
pub fn alive(pid: u32) -> bool {
    let running = |stat: &str| !matches!(state_letter(stat), None | Some('Z' | 'X'));
    let leader = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    running(&leader)
        || std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|threads| {
            threads.filter_map(Result::ok).any(|thread| {
                running(&std::fs::read_to_string(thread.path().join("stat")).unwrap_or_default())
            })
        })
}

/// Waits until `pid` is dead (gone or a zombie).
#[track_caller]
pub fn wait_dead(pid: u32, limit: Duration, what: &str) {
    super::wait_for(limit, &format!("{what} (pid {pid}) to exit"), || {
        !alive(pid)
    });
}

/// The state letter of a /proc stat line (R, S, Z, …).
fn state_letter(stat: &str) -> Option<char> {
    stat.get(stat.rfind(')')? + 1..)?
        .trim_start()
        .chars()
        .next()
}

pub fn kill(pid: u32, signal: i32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) has no memory-safety preconditions; a stale pid gives ESRCH.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

fn kill_group(pgid: u32) {
    if let Ok(pgid) = libc::pid_t::try_from(pgid) {
        // SAFETY: killpg(2) has no memory-safety preconditions.
        unsafe {
            libc::killpg(pgid, libc::SIGKILL);
        }
    }
}

/// Live processes whose environment has `MCPSM_HOME=<home>`.
pub fn processes_of(home: &Path) -> Vec<HomeProcess> {
    let mut marker = b"MCPSM_HOME=".to_vec();
    marker.extend_from_slice(home.as_os_str().as_encoded_bytes());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<HomeProcess> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| alive(pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == marker.as_slice()))
        })
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let argv = raw
                .split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            // Checked again: the process may have died while we read it.
            alive(pid).then_some(HomeProcess { pid, argv })
        })
        .collect();
    found.sort_by_key(|p| p.pid);
    found
}

/// An HTTP answer: status, raw header block, body (chunked encoding removed).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Answer {
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("the answer is not JSON ({e}): {self:?}"))
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), written by hand so a test
/// controls every header, `Host` included.
pub fn try_http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(DEADLINE))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let bad = |what: &str| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{what}: {text}"))
    };
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest).ok_or_else(|| bad("bad chunked body"))?
    } else {
        rest.to_owned()
    };
    Ok(Answer {
        status,
        headers: head.to_owned(),
        body,
    })
}

fn dechunk(mut rest: &str) -> Option<String> {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(body);
        }
        body.push_str(after.get(..size)?);
        rest = after.get(size + 2..)?;
    }
}

/// `mcpsm proxy --url URL` for a daemon reached directly, without the manager.
pub fn direct_proxy(home: &TestHome, url: &str) -> Proxy {
    Proxy::spawn(home, &["--url", url])
}
