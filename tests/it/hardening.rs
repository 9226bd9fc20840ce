//! Hardening (issue 11): what mcpsm does under bad input and faults — half-open connections,
//! chatty daemons, planted symlinks, unauthenticated readers, registry mistakes, a closed
//! stdout — each shown with the real binary in a temp home.

use std::io::Read;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use std::os::fd::FromRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::support::managed::{kill, listen_port, wait_dead, ManagedHome};
use crate::support::servers::run_with_deadline;
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

/// `[daemons.NAME]` running `sh -c "PRELUDE; exec mcpsm demo-server"` on a free port.
fn demo_after(name: &str, prelude: &str) -> String {
    let script = format!("{prelude}; exec \"$MCPSM\" demo-server --port \"$PORT\"");
    format!(
        "[daemons.{name}]\ncommand = \"sh\"\nargs = [\"-c\", {}]\nenv = {{ PORT = \"{{port}}\", MCPSM = \"{{mcpsm}}\" }}\nport = {}\nhealth-interval = 0\n",
        serde_json::to_string(&script).expect("a TOML string"),
        listen_port()
    )
}

/// Every file of `dir` whose name starts with `prefix`, with its size.
fn files_of(dir: &Path, prefix: &str) -> Vec<(String, u64)> {
    let mut files: Vec<(String, u64)> = std::fs::read_dir(dir)
        .expect("read the logs directory")
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let len = entry.metadata().ok()?.len();
            name.starts_with(prefix).then_some((name, len))
        })
        .collect();
    files.sort();
    files
}

const MIB: u64 = 1024 * 1024;

#[test]
fn a_chatty_daemon_log_is_rotated_as_it_is_written_and_capped() {
    // 36 MB at once, with health probes (the old rotation points) turned off.
    let home = ManagedHome::new(&demo_after(
        "chatty",
        "yes 0123456789abcdef0123456789abcdef0123456789abcdef | head -c 36000000; echo chatty-done",
    ));
    home.start("chatty");
    let logs = home.path().join("logs");
    wait_for(DEADLINE, "the last line in the current log", || {
        std::fs::read_to_string(home.log_file("chatty")).is_ok_and(|t| t.contains("chatty-done"))
    });
    let files = files_of(&logs, "chatty.log");
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["chatty.log", "chatty.log.1", "chatty.log.2"],
        "{files:?}"
    );
    assert!(
        files.iter().all(|(_, len)| *len <= 10 * MIB),
        "no file past 10 MiB: {files:?}"
    );
    let total: u64 = files.iter().map(|(_, len)| len).sum();
    assert!(
        total <= 30 * MIB,
        "the cap is 30 MiB: {total} bytes in {files:?}"
    );
}

#[test]
fn a_daemon_keeps_logging_and_rotating_after_the_manager_is_killed_and_replaced() {
    let home = ManagedHome::new(&demo_after(
        "ticker",
        "(while :; do echo tick; sleep 0.02; done) & true",
    ));
    let before = home.start("ticker");
    let manager = home.manager_pid();
    kill(manager, libc::SIGKILL);
    wait_dead(manager, DEADLINE, "the manager");
    let log = home.log_file("ticker");
    let size = |path: &Path| std::fs::metadata(path).map_or(0, |m| m.len());
    let at_kill = size(&log);
    wait_for(DEADLINE, "the log to grow without a manager", || {
        size(&log) > at_kill + 200
    });
    // The next manager adopts the same process; its output still reaches the log.
    let after = home.start("ticker");
    assert_eq!(
        after["pid"], before["pid"],
        "adopted, not restarted: {after}"
    );
    assert_eq!(after["adopted"], true, "{after}");
    let at_adoption = size(&log);
    wait_for(DEADLINE, "the log to grow under the new manager", || {
        size(&log) > at_adoption + 200
    });
}

#[test]
fn a_symlink_in_place_of_a_daemon_log_is_refused_and_left_alone() {
    let home = ManagedHome::new(&demo_after("linked", "echo hello"));
    let logs = home.path().join("logs");
    std::fs::create_dir_all(&logs).expect("logs dir");
    let target = home.path().join("precious.txt");
    std::fs::write(&target, "precious\n").expect("write the target");
    std::os::unix::fs::symlink(&target, home.log_file("linked")).expect("plant a link");
    let ran = home.run(&["start", "linked"]);
    assert_eq!(ran.code, Some(1), "{ran:#?}");
    assert!(
        ran.stderr.contains("linked.log") && ran.stderr.contains("symbolic link"),
        "names the link: {ran:#?}"
    );
    assert!(ran.stderr.contains("hint:"), "{ran:#?}");
    assert_eq!(
        std::fs::read_to_string(&target).expect("read the target"),
        "precious\n",
        "the link's target is untouched"
    );
    let logs_api = home.http(
        "GET",
        "/logs/linked?tail=5",
        &[("Authorization", &format!("Bearer {}", home.token()))],
        "",
    );
    assert!(
        !logs_api.body.contains("precious"),
        "not read through the link: {logs_api:?}"
    );
}

#[test]
fn home_and_logs_are_private_whatever_the_umask() {
    let home = TestHome::new();
    let state = home.path().join("state");
    let port = listen_port();
    let registry = home.write_registry(&format!(
        "[manager]\nport = {port}\n\n{}",
        demo_after("demo", "echo hello")
    ));
    let mut command = home.mcpsm();
    command
        .env("MCPSM_HOME", &state)
        .arg("--registry")
        .arg(&registry)
        .args(["start", "demo"]);
    // SAFETY: umask(2) is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let output = run_with_deadline(command, DEADLINE);
    let stop = || {
        let mut stop = home.mcpsm();
        stop.env("MCPSM_HOME", &state)
            .arg("--registry")
            .arg(&registry)
            .args(["manager", "stop"]);
        run_with_deadline(stop, DEADLINE);
    };
    let mode = |path: &Path| {
        std::fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let modes = [
        mode(&state),
        mode(&state.join("logs")),
        mode(&state.join("logs/demo.log")),
        mode(&state.join("logs/manager.log")),
    ];
    stop();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        modes,
        [0o700, 0o700, 0o600, 0o600],
        "home, logs/, demo.log, manager.log"
    );
}

#[test]
fn every_manager_endpoint_but_ping_needs_the_token() {
    let home = ManagedHome::new(&demo_after("quiet", "echo secret-in-the-log"));
    home.start("quiet");
    for path in ["/status", "/logs/quiet?tail=5", "/logs/nope"] {
        let answer = home.http("GET", path, &[], "");
        assert_eq!(
            answer.status, 401,
            "GET {path} without the token: {answer:?}"
        );
        assert!(!answer.body.contains("secret-in-the-log"), "{answer:?}");
        assert!(answer.body.contains("manager.token"), "{answer:?}");
    }
    let ping = home.http("GET", "/ping", &[], "");
    assert_eq!(ping.status, 200, "/ping stays open: {ping:?}");
    let token = home.bearer();
    let logs = home.http(
        "GET",
        "/logs/quiet?tail=5",
        &[("Authorization", &token)],
        "",
    );
    assert_eq!(logs.status, 200, "{logs:?}");
    assert!(logs.body.contains("secret-in-the-log"), "{logs:?}");
    // The CLI sends the token.
    let ran = home.run(&["status"]);
    ran.assert_success();
    assert!(
        ran.stdout.contains("quiet") && ran.stdout.contains("ready"),
        "{ran:#?}"
    );
}

#[test]
fn a_closed_stdout_ends_every_printing_command_quietly() {
    let home = ManagedHome::new(&demo_after("quiet", "echo hello"));
    home.start("quiet");
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["doctor"],
        &["doctor", "--json"],
        &["logs", "quiet"],
        &["completions", "bash"],
        &["generate-config", "--dry-run"],
        &["--help"],
    ] {
        let mut fds = [0; 2];
        // SAFETY: pipe(2) fills two new descriptors, owned below.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
        // SAFETY: both were just created; the read end is closed at once, like `head` exiting.
        let (reader, writer) = unsafe {
            (
                std::os::fd::OwnedFd::from_raw_fd(fds[0]),
                std::os::fd::OwnedFd::from_raw_fd(fds[1]),
            )
        };
        drop(reader);
        let mut command = home.home.mcpsm();
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(writer))
            .stderr(Stdio::piped());
        let output = command.output().expect("run mcpsm");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(0),
            "mcpsm {args:?} with a closed stdout: {stderr}"
        );
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "mcpsm {args:?} ends quietly: {stderr}"
        );
    }
}

#[test]
fn two_daemons_on_one_port_or_one_on_the_manager_port_are_refused_with_file_and_line() {
    let home = TestHome::new();
    let shared = listen_port();
    let manager = listen_port();
    let entry = |name: &str, port: u16| {
        format!(
            "[daemons.{name}]\ncommand = \"sh\"\nargs = [\"-c\", \"sleep 30\"]\nport = {port}\n\n"
        )
    };
    // Line 12 is the port of `b`, the later of the two on one port.
    home.write_registry(&format!(
        "[manager]\nport = {manager}\n\n{}{}",
        entry("a", shared),
        entry("b", shared)
    ));
    let ran = home.mcpsm().args(["doctor"]).output().expect("doctor");
    let out = String::from_utf8_lossy(&ran.stdout);
    assert_eq!(ran.status.code(), Some(1), "{out}");
    assert!(
        out.contains("fail  registry:")
            && out.contains("daemons.toml:12")
            && out.contains(&format!("port {shared}"))
            && out.contains("daemon `a` already uses")
            && out.contains("hint:"),
        "{out}"
    );
    let start = home.mcpsm().args(["start", "a"]).output().expect("start");
    let err = String::from_utf8_lossy(&start.stderr);
    assert_eq!(start.status.code(), Some(1), "{err}");
    assert!(err.contains("daemons.toml:12"), "{err}");

    home.write_registry(&format!(
        "[manager]\nport = {manager}\n\n{}",
        entry("c", manager)
    ));
    let ran = home.mcpsm().args(["doctor"]).output().expect("doctor");
    let out = String::from_utf8_lossy(&ran.stdout);
    assert_eq!(ran.status.code(), Some(1), "{out}");
    assert!(
        out.contains("daemons.toml:7")
            && out.contains("the manager's port")
            && out.contains("hint:"),
        "{out}"
    );
}

#[test]
fn a_manager_port_edited_while_the_manager_runs_is_named_at_once() {
    let daemons = demo_after("quiet", "echo hello");
    let home = ManagedHome::new(&daemons);
    home.start("quiet");
    let pid = home.manager_pid();
    let old = home.manager_port;
    let new = listen_port();
    home.home
        .write_registry(&format!("[manager]\nport = {new}\n\n{daemons}"));

    let started = Instant::now();
    let ran = home.run(&["start", "quiet"]);
    assert_eq!(ran.code, Some(1), "{ran:#?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "said at once, not after a 20 s wait: {:?}",
        started.elapsed()
    );
    assert!(
        ran.stderr
            .contains(&format!("runs on 127.0.0.1:{old} (pid {pid})"))
            && ran.stderr.contains(&format!("port = {new}"))
            && ran.stderr.contains("hint:"),
        "{ran:#?}"
    );
    let mut proxy = home.proxy("quiet");
    proxy.send(&crate::support::initialize_request(1));
    let answer = proxy.recv_within(Duration::from_secs(5));
    assert!(
        answer.to_string().contains(&format!("127.0.0.1:{old}")),
        "the proxy names the running manager: {answer}"
    );
    // `manager stop` finds the manager where it runs.
    home.run(&["manager", "stop"]).assert_success();
    wait_dead(pid, DEADLINE, "the manager");
}

#[test]
fn status_without_a_manager_shows_the_daemons_still_running() {
    let home = ManagedHome::new(&demo_after("quiet", "echo hello"));
    let pid = crate::support::managed::pid_of(&home.start("quiet"));
    let manager = home.manager_pid();
    kill(manager, libc::SIGKILL);
    wait_dead(manager, DEADLINE, "the manager");
    let ran = home.run(&["status"]);
    ran.assert_success();
    let row = ran
        .stdout
        .lines()
        .find(|l| l.starts_with("quiet "))
        .unwrap_or_else(|| panic!("no row for quiet: {ran:#?}"));
    assert!(
        row.contains("ready") && row.contains(&pid.to_string()),
        "the daemon runs on without a manager: {ran:#?}"
    );
}

#[test]
fn doctor_after_a_clean_manager_stop_has_no_warning() {
    let home = ManagedHome::new(&demo_after("quiet", "echo hello"));
    home.start("quiet");
    home.run(&["manager", "stop"]).assert_success();
    let ran = home.run(&["doctor"]);
    assert!(
        !ran.stdout.contains("warn ") && !ran.stdout.contains("lock"),
        "{ran:#?}"
    );
}

#[test]
fn a_crash_error_shows_the_last_run_output_once() {
    let home = ManagedHome::new(
        "[daemons.crash]\ncommand = \"sh\"\nargs = [\"-c\", \"echo boom-once; exit 3\"]\nport = 1\n"
            .replace("port = 1", &format!("port = {}", listen_port()))
            .as_str(),
    );
    let ran = home.run(&["start", "crash"]);
    assert_eq!(ran.code, Some(1), "{ran:#?}");
    assert_eq!(
        ran.stderr.matches("boom-once").count(),
        1,
        "the output of the run that failed, once: {ran:#?}"
    );
    let status = home.run(&["status"]);
    assert_eq!(status.stdout.matches("boom-once").count(), 1, "{status:#?}");
}
