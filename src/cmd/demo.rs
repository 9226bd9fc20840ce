//! `mcpsm demo`: shows the product working, with nothing installed but mcpsm.
//!
//! In a private temporary home (its own registry, manager port and daemon port, so the user's
//! setup is never touched) it starts the built-in demo daemon under a real manager, opens two
//! proxy sessions as real subprocesses, shows that they share one server, that SIGINT to one
//! proxy's process group harms neither the daemon nor the other session, and that a killed
//! daemon is restarted while the session goes on. Then it cleans up.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use crate::paths::{Paths, HOME_ENV};
use crate::platform;
use crate::supervise::client::{connect_or_start, ManagerClient};
use crate::supervise::process;

const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// What a client sends to interrupt its servers, and what kills a process at once.
const INTERRUPT: &str = platform::INTERRUPT_NAME;
const KILL: &str = platform::KILL_NAME;

pub async fn run() -> anyhow::Result<ExitCode> {
    let home = tempfile::Builder::new()
        .prefix("mcpsm-demo-")
        .tempdir()
        .context("creating a temporary home for the demo")?;
    let manager_port = free_port()?;
    let daemon_port = free_port()?;
    let registry = format!(
        "# Written by `mcpsm demo`; removed when it ends.\n[manager]\nport = {manager_port}\n\n[daemons.demo]\ncommand = \"{{mcpsm}}\"\nargs = [\"demo-server\", \"--port\", \"{{port}}\"]\nport = {daemon_port}\n"
    );
    std::fs::write(home.path().join("daemons.toml"), registry)?;
    // SAFETY: set before any thread of ours reads the environment for this variable.
    std::env::set_var(HOME_ENV, home.path());
    let paths = Paths::from_env()?;
    let result = steps(&paths, manager_port).await;
    let client = ManagerClient::new(&paths, manager_port);
    let _ = client.action("shutdown").await;
    match result {
        Ok(interrupted) => {
            let interrupt = if interrupted {
                format!("survived {INTERRUPT}")
            } else {
                format!("went on (no {INTERRUPT} could be sent)")
            };
            println!("\n✓ demo complete: one daemon served both sessions, {interrupt} and came back after {KILL}.");
            println!(
                "  Cleaned up: proxies closed, manager and daemon stopped, {} removed.",
                home.path().display()
            );
            println!("  Next: `mcpsm import --dry-run`, then `mcpsm import`: your client's own servers become shared daemons (`mcpsm import --undo` puts the client's file back).");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("\n✗ demo failed: {e:#}");
            println!(
                "  hint: run `mcpsm doctor`; the manager's log was {}",
                paths.manager_log().display()
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Runs the steps; says whether the interrupt could be sent.
async fn steps(paths: &Paths, manager_port: u16) -> anyhow::Result<bool> {
    println!(
        "mcpsm demo — a private home in {}\n",
        paths.home().display()
    );

    println!("1. Start the manager and the built-in `demo` daemon");
    let client = connect_or_start(paths, None, manager_port).await?;
    let started = client.daemon_action("ensure", "demo").await?;
    let daemon_pid = started
        .pid
        .context("the manager reports no pid for the demo daemon")?;
    let info = client.ping().await?;
    println!(
        "   ✓ manager pid {} on 127.0.0.1:{}; daemon \"demo\" pid {daemon_pid} on {}",
        info.pid, info.port, started.url
    );

    println!("\n2. Open two MCP sessions: two `mcpsm proxy --target demo` processes, as two client sessions would");
    let mut a = Session::spawn("A")?;
    let mut b = Session::spawn("B")?;
    a.initialize()?;
    b.initialize()?;
    println!(
        "   ✓ session A (proxy pid {}) and session B (proxy pid {}) initialized",
        a.pid(),
        b.pid()
    );

    println!("\n3. Both call the `counter` tool");
    let first = a.counter()?;
    let second = b.counter()?;
    println!("   ✓ A got {first}, B got {second}: one server process counts for both sessions");
    if second != first + 1 {
        bail!("the sessions do not share one server (A got {first}, B got {second})");
    }

    println!(
        "\n4. Send {INTERRUPT} to session A's whole process group (what clients do to their servers)"
    );
    // Windows: console events need a console shared with the proxies; a process whose
    // console cannot carry them (Wine's Unix console) cannot send one, and says so.
    let sent = platform::interrupt_group(a.pid())
        .map_err(|e| println!("   ⚠ {INTERRUPT} could not be sent to session A's process group ({e}); only the sessions' survival is shown"))
        .is_ok();
    std::thread::sleep(Duration::from_millis(200));
    if !process::is_alive(daemon_pid) {
        bail!("the daemon died from a {INTERRUPT} sent to a proxy's process group");
    }
    let b_value = b.counter()?;
    let a_value = a.counter()?;
    if sent {
        println!("   ✓ daemon pid {daemon_pid} still running; B's counter → {b_value}; A's proxy ignored {INTERRUPT} too (counter → {a_value})");
    } else {
        println!("   ✓ daemon pid {daemon_pid} still running; B's counter → {b_value}; A's counter → {a_value} (no {INTERRUPT} was sent)");
    }

    println!("\n5. Kill the daemon with {KILL}");
    platform::kill(daemon_pid).context("killing the daemon")?;
    let restarted = wait_for_new_pid(&client, daemon_pid).await?;
    println!("   ✓ the manager restarted it: new pid {restarted}");
    let after = b.counter()?;
    println!("   ✓ session B goes on in the same MCP session: counter → {after} (a new process counts from 1)");

    println!("\n6. Clean up");
    a.close();
    b.close();
    Ok(sent)
}

async fn wait_for_new_pid(client: &ManagerClient, old: u32) -> anyhow::Result<u32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let report = client.status().await?;
        let daemon = report.daemons.iter().find(|d| d.name == "demo");
        if let Some(pid) = daemon
            .filter(|d| d.state.as_str() == "ready")
            .and_then(|d| d.pid)
        {
            if pid != old {
                return Ok(pid);
            }
        }
        if Instant::now() > deadline {
            bail!("the daemon was not restarted within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// One `mcpsm proxy --target demo` process driven over its stdio, in its own process group.
struct Session {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    next_id: i64,
}

impl Session {
    fn spawn(name: &'static str) -> anyhow::Result<Session> {
        let exe = std::env::current_exe().context("finding the mcpsm binary")?;
        let mut command = std::process::Command::new(exe);
        command
            .args(["proxy", "--target", "demo"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        platform::new_process_group(&mut command);
        let mut child = command.spawn().context("starting a proxy")?;
        let stdout = child.stdout.take().context("the proxy's stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Session {
            name,
            stdin: child.stdin.take(),
            child,
            lines,
            next_id: 1,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn send(&mut self, message: &Value) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("the session is closed")?;
        writeln!(stdin, "{message}")?;
        stdin.flush()?;
        Ok(())
    }

    fn request(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))?;
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).with_context(|| {
                format!(
                    "session {} got no answer to {method} within {ANSWER_TIMEOUT:?}",
                    self.name
                )
            })?;
            let message: Value = serde_json::from_str(&line)?;
            if message["id"] == id && message.get("method").is_none() {
                if let Some(error) = message.get("error") {
                    bail!(
                        "session {}: {method} failed: {}",
                        self.name,
                        error["message"]
                    );
                }
                return Ok(message["result"].clone());
            }
        }
    }

    fn initialize(&mut self) -> anyhow::Result<()> {
        let params = json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": format!("mcpsm-demo-{}", self.name), "version": env!("CARGO_PKG_VERSION")}});
        self.request("initialize", params)?;
        self.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
    }

    fn counter(&mut self) -> anyhow::Result<u64> {
        let result = self.request("tools/call", json!({"name": "counter", "arguments": {}}))?;
        result["content"][0]["text"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .with_context(|| format!("unexpected counter answer: {result}"))
    }

    fn close(&mut self) {
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
