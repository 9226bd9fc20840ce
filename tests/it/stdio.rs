//! The proxy's stdio side: framing, bad input, signals and exit.

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::support::fake::{
    event, json_response, mcp_router, result_for, sse_response, Chunk, Fake,
};
use crate::support::{error_of, request, Proxy, TestHome};

/// A daemon that answers every request with the size of the request body it got, and
/// `slow` requests after 1.5 s.
fn sizing_daemon() -> Fake {
    Fake::start(mcp_router(|message: Value, _| {
        let size = message.to_string().len();
        if message["method"] == "slow" {
            return sse_response(vec![
                Chunk::Pause(Duration::from_millis(1500)),
                event(&result_for(&message, json!({"size": size}))),
            ]);
        }
        json_response(StatusCode::OK, &result_for(&message, json!({"size": size})))
    }))
}

fn proxy(fake: &Fake, home: &TestHome, extra: &[&str]) -> Proxy {
    let mut args = vec!["--url", fake.url.as_str(), "--transport", "streamable-http"];
    args.extend_from_slice(extra);
    Proxy::spawn(home, &args)
}

#[test]
fn malformed_json_gets_a_parse_error_and_the_proxy_goes_on() {
    let fake = sizing_daemon();
    let home = TestHome::new();
    let mut proxy = proxy(&fake, &home, &[]);
    // The id can be read: the client waits for it, so the error carries it.
    proxy.send_raw(b"{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": \n");
    let error = proxy.recv();
    assert_eq!(error["id"], 1);
    assert_eq!(error_of(&error)["code"], -32700);
    // Nothing can be read: id null.
    proxy.send_raw(b"{nothing readable\n");
    let error = proxy.recv();
    assert_eq!(error["id"], Value::Null);
    assert_eq!(error_of(&error)["code"], -32700);
    proxy.send(&request(2, "ping", json!({})));
    assert_eq!(proxy.recv()["id"], 2);
}

#[test]
fn invalid_utf8_gets_a_parse_error() {
    let fake = sizing_daemon();
    let home = TestHome::new();
    let mut proxy = proxy(&fake, &home, &[]);
    proxy.send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"a\xff\xfe\"}\n");
    assert_eq!(error_of(&proxy.recv())["code"], -32700);
    proxy.send(&request(2, "ping", json!({})));
    assert_eq!(proxy.recv()["id"], 2);
}

#[test]
fn non_object_json_is_refused_as_a_parse_error() {
    let fake = sizing_daemon();
    let home = TestHome::new();
    let mut proxy = proxy(&fake, &home, &[]);
    proxy.send_raw(b"42\n[]\n");
    for _ in 0..2 {
        let error = proxy.recv();
        assert_eq!(error["id"], Value::Null);
        error_of(&error);
    }
    assert!(fake.requests().is_empty(), "nothing reaches the daemon");
}

#[test]
fn a_ten_megabyte_line_goes_through() {
    let fake = sizing_daemon();
    let home = TestHome::new();
    let mut proxy = proxy(&fake, &home, &[]);
    let big = "a".repeat(10 * 1024 * 1024);
    let message = request(
        1,
        "tools/call",
        json!({"name": "echo", "arguments": {"message": big}}),
    );
    proxy.send(&message);
    let (response, _) = proxy.recv_response(&json!(1));
    assert_eq!(
        response["result"]["size"],
        message.to_string().len(),
        "{}",
        &response.to_string()[..response.to_string().len().min(500)]
    );
}

#[test]
fn a_line_over_the_limit_gets_a_clear_error_and_reading_goes_on() {
    let fake = sizing_daemon();
    let home = TestHome::new();
    let mut proxy = proxy(&fake, &home, &["--max-message-bytes", "4096"]);
    proxy.send(&request(
        1,
        "tools/call",
        json!({"name": "echo", "arguments": {"message": "b".repeat(10_000)}}),
    ));
    let error = proxy.recv();
    let message = error_of(&error)["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        error["id"], 1,
        "the request's own id, read from the skipped line"
    );
    assert_eq!(error_of(&error)["code"], -32700);
    assert!(
        message.contains("4096") && message.contains("--max-message-bytes"),
        "{message}"
    );
    proxy.send(&request(2, "ping", json!({})));
    assert_eq!(proxy.recv()["id"], 2);
}

#[test]
fn crlf_bom_and_blank_lines_are_tolerated() {
    let fake = sizing_daemon();
    let home = TestHome::new();
    let mut proxy = proxy(&fake, &home, &[]);
    proxy.send_raw(b"\xEF\xBB\xBF{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\r\n\r\n\n   \n{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"ping\"}\r\n");
    let mut ids = vec![proxy.recv()["id"].clone(), proxy.recv()["id"].clone()];
    ids.sort_by_key(|v| v.as_i64());
    assert_eq!(ids, [json!(1), json!(2)]);
    proxy.assert_silent_for(Duration::from_millis(300));
}

#[test]
fn stdin_closed_mid_request_still_delivers_the_response_then_exits_zero() {
    let fake = sizing_daemon();
    let home = TestHome::new();
    let mut proxy = proxy(&fake, &home, &[]);
    proxy.send(&request(1, "slow", json!({})));
    proxy.close_stdin();
    let (response, _) = proxy.recv_response(&json!(1));
    assert!(response["result"]["size"].is_number());
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn sigint_is_ignored_even_when_sent_to_the_whole_group() {
    let fake = sizing_daemon();
    let home = TestHome::new();
    let mut proxy = proxy(&fake, &home, &[]);
    proxy.send(&request(1, "ping", json!({})));
    proxy.recv_response(&json!(1));
    proxy.signal(libc::SIGINT);
    proxy.signal_group(libc::SIGINT);
    proxy.send(&request(2, "ping", json!({})));
    let (response, _) = proxy.recv_response(&json!(2));
    assert!(response.get("result").is_some());
    assert!(
        proxy.child.try_wait().expect("try_wait").is_none(),
        "still running"
    );
}

#[test]
fn sigterm_exits_zero_promptly_even_with_a_request_in_flight() {
    let fake = sizing_daemon();
    let home = TestHome::new();
    let mut proxy = proxy(&fake, &home, &[]);
    proxy.send(&request(1, "slow", json!({})));
    crate::support::wait_for(
        Duration::from_secs(10),
        "the request to reach the daemon",
        || !fake.requests().is_empty(),
    );
    proxy.signal_group(libc::SIGTERM);
    assert_eq!(proxy.wait_exit(Duration::from_secs(2)), Some(0));
}

#[test]
fn sighup_exits_zero() {
    let fake = sizing_daemon();
    let home = TestHome::new();
    let mut proxy = proxy(&fake, &home, &[]);
    proxy.send(&request(1, "ping", json!({})));
    proxy.recv_response(&json!(1));
    proxy.signal(libc::SIGHUP);
    assert_eq!(proxy.wait_exit(Duration::from_secs(2)), Some(0));
}

#[test]
fn a_closed_stdout_ends_the_proxy_at_once() {
    let fake = sizing_daemon();
    let home = TestHome::new();
    let mut command = home.mcpsm();
    command
        .args(["proxy", "--url", &fake.url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = command.spawn().expect("spawn");
    drop(child.stdout.take());
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n")
        .expect("write");
    stdin.flush().expect("flush");
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the proxy kept running with no stdout"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0));
    drop(stdin);
}

#[test]
fn stdout_carries_only_json_rpc_even_with_debug_logging() {
    let fake = sizing_daemon();
    let home = TestHome::new();
    let mut command = home.mcpsm();
    command
        .args(["--log-level", "trace", "proxy", "--url", &fake.url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\nnot json\n")
        .expect("write");
    drop(stdin);
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("read");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read");
    assert_eq!(child.wait().expect("wait").code(), Some(0));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for line in lines {
        let value: Value = serde_json::from_str(line).expect("every stdout line is JSON");
        assert_eq!(value["jsonrpc"], "2.0");
    }
    assert!(!stderr.is_empty(), "logs went to stderr");
}

#[test]
fn an_unreachable_daemon_answers_each_request_with_its_id_and_a_hint() {
    let home = TestHome::new();
    let port = crate::support::free_port();
    let url = format!("http://127.0.0.1:{port}/mcp");
    let mut proxy = Proxy::spawn(&home, &["--url", &url, "--reconnect-timeout", "300ms"]);
    proxy.send(&crate::support::initialize_request(1));
    proxy.send(&request(2, "tools/list", json!({})));
    for id in [1, 2] {
        let (response, _) = proxy.recv_response(&json!(id));
        let message = error_of(&response)["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            message.contains(&url) && message.contains("hint:"),
            "{message}"
        );
    }
    proxy.close_stdin();
    assert_eq!(proxy.wait_exit(Duration::from_secs(5)), Some(0));
}

#[test]
fn invoked_as_mcpsm_proxy_it_is_the_proxy() {
    let fake = sizing_daemon();
    let home = TestHome::new();
    let link = home.path().join("mcpsm-proxy");
    std::os::unix::fs::symlink(crate::support::bin(), &link).expect("symlink");
    let mut command = home.command(&link);
    command.args(["--url", &fake.url]);
    let mut proxy = Proxy::spawn_command(command);
    proxy.send(&request(1, "ping", json!({})));
    assert!(proxy.recv_response(&json!(1)).0.get("result").is_some());
}

/// Whether the open file behind `fd` is non-blocking.
fn is_non_blocking(fd: &impl std::os::fd::AsRawFd) -> bool {
    // SAFETY: F_GETFL reads the flags of a descriptor the caller keeps open.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    assert!(flags >= 0, "F_GETFL: {}", std::io::Error::last_os_error());
    flags & libc::O_NONBLOCK != 0
}

/// A proxy on pipes whose other copies of the proxy's ends the test keeps (the same open
/// files, so it sees their flags): (proxy, its stdin, its stdout, the proxy's stdin end, the
/// proxy's stdout end).
fn proxy_on_pipes(
    fake: &Fake,
    home: &TestHome,
) -> (
    std::process::Child,
    std::io::PipeWriter,
    std::io::BufReader<std::io::PipeReader>,
    std::io::PipeReader,
    std::io::PipeWriter,
) {
    let (stdin_end, to_proxy) = std::io::pipe().expect("pipe");
    let (from_proxy, stdout_end) = std::io::pipe().expect("pipe");
    let stdin_copy = stdin_end.try_clone().expect("dup");
    let stdout_copy = stdout_end.try_clone().expect("dup");
    let child = home
        .mcpsm()
        .args(["proxy", "--url", &fake.url])
        .stdin(stdin_end)
        .stdout(stdout_end)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    (
        child,
        to_proxy,
        std::io::BufReader::new(from_proxy),
        stdin_copy,
        stdout_copy,
    )
}

fn ping_through(to_proxy: &mut impl Write, from_proxy: &mut impl std::io::BufRead, id: i64) {
    to_proxy
        .write_all(format!("{}\n", request(id, "ping", json!({}))).as_bytes())
        .expect("write");
    let mut line = String::new();
    from_proxy.read_line(&mut line).expect("read");
    let answer: Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(answer["id"], id, "{line}");
}

fn wait_exit(child: &mut std::process::Child) -> Option<i32> {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status.code();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the proxy did not exit"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn pipes_made_non_blocking_get_their_flags_back_at_end_of_input() {
    let fake = sizing_daemon();
    let home = TestHome::new();
    let (mut child, mut to_proxy, mut from_proxy, stdin_end, stdout_end) =
        proxy_on_pipes(&fake, &home);
    ping_through(&mut to_proxy, &mut from_proxy, 1);
    // While the session runs, its pipes are read and written on the runtime.
    assert!(is_non_blocking(&stdin_end) && is_non_blocking(&stdout_end));
    drop(to_proxy);
    assert_eq!(wait_exit(&mut child), Some(0));
    assert!(!is_non_blocking(&stdin_end), "stdin left non-blocking");
    assert!(!is_non_blocking(&stdout_end), "stdout left non-blocking");
}

#[test]
fn pipes_made_non_blocking_get_their_flags_back_on_sigterm() {
    let fake = sizing_daemon();
    let home = TestHome::new();
    let (mut child, mut to_proxy, mut from_proxy, stdin_end, stdout_end) =
        proxy_on_pipes(&fake, &home);
    ping_through(&mut to_proxy, &mut from_proxy, 1);
    assert!(is_non_blocking(&stdin_end));
    // SAFETY: kill sends a signal to the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(wait_exit(&mut child), Some(0));
    assert!(!is_non_blocking(&stdin_end), "stdin left non-blocking");
    assert!(!is_non_blocking(&stdout_end), "stdout left non-blocking");
}

#[test]
fn a_terminal_on_stdin_is_read_but_never_made_non_blocking() {
    use std::os::fd::{FromRawFd, OwnedFd};
    let fake = sizing_daemon();
    let home = TestHome::new();
    // SAFETY: the usual pseudo-terminal calls; every descriptor is checked and owned below.
    let (master, terminal) = unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(master >= 0, "posix_openpt");
        assert_eq!(libc::grantpt(master), 0, "grantpt");
        assert_eq!(libc::unlockpt(master), 0, "unlockpt");
        let name = libc::ptsname(master);
        assert!(!name.is_null(), "ptsname");
        let terminal = libc::open(name, libc::O_RDWR | libc::O_NOCTTY);
        assert!(terminal >= 0, "open the terminal");
        (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(terminal))
    };
    let (from_proxy, stdout_end) = std::io::pipe().expect("pipe");
    let mut child = home
        .mcpsm()
        .args(["proxy", "--url", &fake.url])
        .stdin(terminal.try_clone().expect("dup"))
        .stdout(stdout_end)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut master = std::fs::File::from(master);
    let mut from_proxy = std::io::BufReader::new(from_proxy);
    ping_through(&mut master, &mut from_proxy, 1);
    assert!(
        !is_non_blocking(&terminal),
        "the proxy made its terminal non-blocking"
    );
    // ^D at the start of a line: end of input.
    master.write_all(b"\x04").expect("write ^D");
    assert_eq!(wait_exit(&mut child), Some(0));
    assert!(!is_non_blocking(&terminal));
}
