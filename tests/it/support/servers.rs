//! Real MCP servers from npm and PyPI, installed by `tests/support/setup.sh`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::{free_port, support_dir, wait_for, DEADLINE};

/// A server process, killed (with its process group) on drop.
pub struct Server {
    child: Child,
    pub port: u16,
    pub url: String,
}

impl Server {
    pub fn from_child(child: Child, port: u16, url: String) -> Server {
        Server { child, port, url }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: killpg(2) on the group our child leads.
        unsafe {
            libc::killpg(self.child.id() as i32, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

#[track_caller]
pub fn installed(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run `bash tests/support/setup.sh` (tests/run.sh does it for you)",
        path.display()
    );
    path
}

pub fn node_modules() -> PathBuf {
    installed(support_dir().join("node_modules"))
}

pub fn everything_js() -> PathBuf {
    installed(node_modules().join("@modelcontextprotocol/server-everything/dist/index.js"))
}

pub fn memory_js() -> PathBuf {
    installed(node_modules().join("@modelcontextprotocol/server-memory/dist/index.js"))
}

pub fn python() -> PathBuf {
    installed(support_dir().join(".venv/bin/python"))
}

/// `node -r loopback.cjs SCRIPT ARGS` with PORT=0: binds 127.0.0.1 only, and reports the
/// port it got on stderr.
pub fn node_server(script: PathBuf, args: &[&str], path: &str) -> Server {
    let mut command = Command::new("node");
    command
        .arg("-r")
        .arg(support_dir().join("loopback.cjs"))
        .arg(script)
        .args(args);
    loopback_server(command, path)
}

/// Runs `command` (a Node server with the loopback preload) with PORT=0 and waits for the
/// port it reports.
pub fn loopback_server(mut command: Command, path: &str) -> Server {
    command
        .env("PORT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command.spawn().expect("spawn node");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(port) = line
                .strip_prefix("[loopback.cjs] listening on 127.0.0.1:")
                .and_then(|p| p.trim().parse::<u16>().ok())
            {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(port);
                }
            }
        }
    });
    let port = match rx.recv_timeout(DEADLINE) {
        Ok(port) => port,
        Err(_) => {
            let _ = child.kill();
            panic!("the node server did not report a listening port within {DEADLINE:?}");
        }
    };
    Server {
        child,
        port,
        url: format!("http://127.0.0.1:{port}{path}"),
    }
}

/// server-everything in `streamableHttp` mode (`/mcp`) or `sse` mode (`/sse`).
pub fn everything(mode: &str) -> Server {
    let path = match mode {
        "sse" => "/sse",
        _ => "/mcp",
    };
    node_server(everything_js(), &[mode], path)
}

/// `py_server.py` (official SDK FastMCP): mode `json`, `sse` or `legacy-sse`.
pub fn python_server(mode: &str) -> Server {
    let port = free_port();
    let mut command = Command::new(python());
    command
        .arg(support_dir().join("py_server.py"))
        .args(["--port", &port.to_string(), "--mode", mode])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let child = command.spawn().expect("spawn py_server.py");
    let path = if mode == "legacy-sse" { "/sse" } else { "/mcp" };
    let server = Server {
        child,
        port,
        url: format!("http://127.0.0.1:{port}{path}"),
    };
    wait_for(DEADLINE, "py_server.py to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    server
}

/// Runs `py_client.py SCENARIO -- mcpsm proxy ARGS` (official Python SDK client over stdio);
/// returns its JSON report, or panics with its output.
#[track_caller]
pub fn python_client(
    home: &super::TestHome,
    scenario: &[&str],
    proxy_args: &[&str],
) -> serde_json::Value {
    let client = python_client_command(home, scenario, proxy_args);
    let output = run_with_deadline(client, Duration::from_secs(120));
    client_report(scenario, output)
}

/// `python_client` in the background, for scenarios the test interacts with.
pub fn python_client_spawn(
    home: &super::TestHome,
    scenario: &[&str],
    proxy_args: &[&str],
) -> std::thread::JoinHandle<std::process::Output> {
    let client = python_client_command(home, scenario, proxy_args);
    std::thread::spawn(move || run_with_deadline(client, Duration::from_secs(120)))
}

fn python_client_command(
    home: &super::TestHome,
    scenario: &[&str],
    proxy_args: &[&str],
) -> Command {
    let mut command = home.mcpsm();
    command.env_remove("RUST_LOG");
    let envs: Vec<(String, String)> = command
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_str()?.to_owned(), v?.to_str()?.to_owned())))
        .collect();
    let mut client = Command::new(python());
    client
        .env_clear()
        .envs(envs)
        .arg(support_dir().join("py_client.py"))
        .args(scenario)
        .arg("--")
        .arg(super::bin())
        .arg("proxy")
        .args(proxy_args);
    client
}

/// The JSON report of a finished `py_client.py`, or a panic with its output.
#[track_caller]
pub fn client_report(scenario: &[&str], output: std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "py_client.py {scenario:?} failed ({})\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("py_client.py printed something that is not JSON ({e}):\n{stdout}")
    })
}

/// server-everything on a given port (to restart a daemon where it was).
pub fn everything_on(mode: &str, port: u16) -> Server {
    let path = if mode == "sse" { "/sse" } else { "/mcp" };
    let mut command = Command::new("node");
    command
        .arg("-r")
        .arg(support_dir().join("loopback.cjs"))
        .arg(everything_js())
        .arg(mode)
        .env("PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let child = command.spawn().expect("spawn node");
    let server = Server {
        child,
        port,
        url: format!("http://127.0.0.1:{port}{path}"),
    };
    wait_for(DEADLINE, "server-everything to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    server
}

/// Runs a command to completion, killing it if it outlives `limit`.
#[track_caller]
pub fn run_with_deadline(mut command: Command, limit: Duration) -> std::process::Output {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let child = command.spawn().expect("spawn");
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => output.expect("wait"),
        Err(_) => {
            // SAFETY: killpg(2) on the group our child leads.
            unsafe {
                libc::killpg(pid, libc::SIGKILL);
            }
            let output = rx.recv().expect("output after kill").expect("wait");
            panic!(
                "{command:?} did not finish within {limit:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

/// `mcpsm demo-server` (the built-in demo server, which re-serializes ids the way serde_json
/// does) on a free port.
pub fn demo_server(home: &super::TestHome) -> Server {
    let port = free_port();
    let mut command = home.mcpsm();
    command
        .args(["demo-server", "--port", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let child = command.spawn().expect("spawn mcpsm demo-server");
    let server = Server {
        child,
        port,
        url: format!("http://127.0.0.1:{port}/mcp"),
    };
    wait_for(DEADLINE, "the demo server to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    server
}
