//! Test harness: the real `mcpsm` binary, real MCP servers, and in-process fakes.
//!
//! Everything is hermetic: each spawned `mcpsm` gets a temp `MCPSM_HOME` and `HOME`, servers
//! listen on 127.0.0.1 with ports the OS picks, proxy variables are removed, and every wait
//! has a deadline that fails the test with a description instead of hanging.

#![allow(dead_code)] // each test module uses a different part

pub mod fake;
pub mod managed;
pub mod servers;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The default deadline for anything a test waits on.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_mcpsm"))
}

pub fn support_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support")
}

/// A temp directory used as both `MCPSM_HOME` and `HOME`.
pub struct TestHome {
    pub dir: tempfile::TempDir,
}

impl TestHome {
    pub fn new() -> TestHome {
        TestHome {
            dir: tempfile::Builder::new()
                .prefix("mcpsm-test-")
                .tempdir()
                .expect("create a temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write_registry(&self, text: &str) -> PathBuf {
        let path = self.path().join("daemons.toml");
        std::fs::write(&path, text).expect("write the registry");
        path
    }

    /// A `Command` for the mcpsm binary with a clean, hermetic environment.
    pub fn mcpsm(&self) -> Command {
        self.command(bin())
    }

    /// A `Command` for `program` with a clean, hermetic environment.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        command.env_clear();
        for key in ["PATH", "LANG", "TERM", "USER", "LOGNAME"] {
            if let Some(value) = std::env::var_os(key) {
                command.env(key, value);
            }
        }
        command
            .env("HOME", self.path())
            .env("MCPSM_HOME", self.path())
            .env("RUST_LOG", "mcpsm=debug");
        command
    }
}

/// Waits for `condition` to hold, polling, or panics with `what` after `limit`.
#[track_caller]
pub fn wait_for(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port that was free a moment ago, for servers that cannot be given port 0.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A running `mcpsm proxy` driven over its stdio, in its own process group (as Codex does).
pub struct Proxy {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Proxy {
    pub fn spawn(home: &TestHome, args: &[&str]) -> Proxy {
        let mut command = home.mcpsm();
        command.arg("proxy").args(args);
        Proxy::spawn_command(command)
    }

    pub fn spawn_command(mut command: Command) -> Proxy {
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = command.spawn().expect("spawn mcpsm proxy");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr_pipe = child.stderr.take().expect("stderr");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines() {
                let Ok(line) = line else { break };
                let mut all = sink.lock().unwrap_or_else(|e| e.into_inner());
                all.push_str(&line);
                all.push('\n');
            }
        });
        Proxy {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn send(&mut self, message: &Value) {
        let mut line = serde_json::to_vec(message).expect("serialize");
        line.push(b'\n');
        self.send_raw(&line);
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin.write_all(bytes).expect("write to the proxy's stdin");
        stdin.flush().expect("flush the proxy's stdin");
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next line on stdout, as written.
    #[track_caller]
    pub fn recv_line(&mut self) -> String {
        match self.lines.recv_timeout(DEADLINE) {
            Ok(line) => line,
            Err(_) => panic!(
                "no message from the proxy within {DEADLINE:?}\n--- proxy stderr ---\n{}",
                self.stderr()
            ),
        }
    }

    /// The next line on stdout, as written, if one comes within `limit`.
    pub fn try_recv_line(&mut self, limit: Duration) -> Result<String, mpsc::RecvTimeoutError> {
        self.lines.recv_timeout(limit)
    }

    /// The next line on stdout, parsed.
    #[track_caller]
    pub fn recv(&mut self) -> Value {
        self.recv_within(DEADLINE)
    }

    #[track_caller]
    pub fn recv_within(&mut self, limit: Duration) -> Value {
        match self.lines.recv_timeout(limit) {
            Ok(line) => serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("proxy wrote a line that is not JSON ({e}): {line}")),
            Err(_) => panic!(
                "no message from the proxy within {limit:?}\n--- proxy stderr ---\n{}",
                self.stderr()
            ),
        }
    }

    /// Reads messages until the response with `id`; returns it and what came before.
    #[track_caller]
    pub fn recv_response(&mut self, id: &Value) -> (Value, Vec<Value>) {
        let mut before = Vec::new();
        let start = Instant::now();
        loop {
            let left = DEADLINE.saturating_sub(start.elapsed());
            let message = self.recv_within(left);
            if message.get("id") == Some(id) && message.get("method").is_none() {
                return (message, before);
            }
            before.push(message);
        }
    }

    /// Sends `initialize` + `notifications/initialized`; returns the InitializeResult.
    #[track_caller]
    pub fn initialize(&mut self) -> Value {
        self.send(&initialize_request(0));
        let (response, _) = self.recv_response(&json!(0));
        assert!(
            response.get("result").is_some(),
            "initialize failed: {response}"
        );
        self.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        response["result"].clone()
    }

    /// Everything the proxy writes within `period`.
    pub fn drain_for(&mut self, period: Duration) -> Vec<Value> {
        let until = Instant::now() + period;
        let mut out = Vec::new();
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => out.push(serde_json::from_str(&line).unwrap_or(Value::String(line))),
                Err(_) => break,
            }
        }
        out
    }

    /// Nothing more on stdout for `quiet` (used to prove no duplicate answers).
    #[track_caller]
    pub fn assert_silent_for(&mut self, quiet: Duration) {
        if let Ok(line) = self.lines.recv_timeout(quiet) {
            panic!("unexpected message from the proxy: {line}");
        }
    }

    /// Waits for the process to exit; returns its exit code (None = killed by a signal).
    #[track_caller]
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            if start.elapsed() > limit {
                panic!(
                    "the proxy did not exit within {limit:?}\n--- stderr ---\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.pid(), signal);
        }
    }

    pub fn signal_group(&self, signal: i32) {
        // SAFETY: killpg(2) on the group our child leads.
        unsafe {
            libc::killpg(self.pid(), signal);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn initialize_request(id: i64) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "mcpsm-tests", "version": "0"}
        }
    })
}

pub fn request(id: i64, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

pub fn call_tool(id: i64, name: &str, arguments: Value) -> Value {
    request(
        id,
        "tools/call",
        json!({"name": name, "arguments": arguments}),
    )
}

/// The error object of a response, or a panic naming what came instead.
#[track_caller]
pub fn error_of(response: &Value) -> &Value {
    response
        .get("error")
        .unwrap_or_else(|| panic!("expected an error response, got {response}"))
}
