//! Hardening (issue 11): what mcpsm does under bad input and faults — half-open connections,
//! chatty daemons, planted symlinks, unauthenticated readers, registry mistakes, a closed
//! stdout — each shown with the real binary in a temp home.

use std::io::Read;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::support::managed::{listen_port, ManagedHome};
use crate::support::{wait_for, TestHome, DEADLINE};

/// A process killed (with its group) when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        // SAFETY: killpg(2) on the group our child leads.
        unsafe {
            libc::killpg(self.0.id() as i32, libc::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

fn connect_when_listening(port: u16) -> TcpStream {
    let start = Instant::now();
    loop {
        if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) {
            return stream;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "nothing listens on 127.0.0.1:{port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Connects, sends half a request head and then nothing: the server must close the
/// connection by itself.
#[track_caller]
fn assert_half_open_connection_is_closed(port: u16, what: &str) {
    let mut stream = connect_when_listening(port);
    std::io::Write::write_all(&mut stream, b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .expect("write half a request");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => panic!("{what} kept a half-open connection for 10 s ({e})"),
        }
    }
}

const SHORT_IDLE: (&str, &str) = ("MCPSM_HTTP_IDLE_TIMEOUT_MS", "300");

#[test]
fn manager_closes_half_open_connections() {
    let home = ManagedHome::new("");
    let mut command = home.home.mcpsm();
    command
        .args(["manager", "--detach"])
        .env(SHORT_IDLE.0, SHORT_IDLE.1)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    assert!(command.status().expect("run").success());
    assert_half_open_connection_is_closed(home.manager_port, "the manager API");
}

#[test]
fn demo_server_and_stdio_host_close_half_open_connections() {
    let home = TestHome::new();
    let demo_port = listen_port();
    let mut demo = home.mcpsm();
    demo.args(["demo-server", "--port", &demo_port.to_string()])
        .env(SHORT_IDLE.0, SHORT_IDLE.1)
        .stderr(Stdio::null())
        .process_group(0);
    let _demo = Killed(demo.spawn().expect("spawn the demo server"));
    let host_port = listen_port();
    let mut host = home.mcpsm();
    host.args(["stdio-host", "--port", &host_port.to_string(), "--", "cat"])
        .env(SHORT_IDLE.0, SHORT_IDLE.1)
        .stderr(Stdio::null())
        .process_group(0);
    let _host = Killed(host.spawn().expect("spawn the stdio host"));
    assert_half_open_connection_is_closed(demo_port, "the demo server");
    assert_half_open_connection_is_closed(host_port, "the stdio host");
}

#[allow(dead_code)]
fn unused() {
    wait_for(Duration::ZERO, "", || true);
}
