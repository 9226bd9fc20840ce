//! The manager and supervision, with real processes: server-everything and `sh` scripts as
//! managed daemons, the detached manager that proxies start on demand, signals as clients
//! send them, crashes of daemons and of the manager, the API's security, and the CLI.
//!
//! Every test has its own home and registry ([`ManagedHome`]) with free ports for the manager
//! and each daemon, and leaves no process behind.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::managed::{
    alive, assert_echo, assert_session_works, daemon_in, direct_proxy, everything_entry,
    exec_everything, kill, listen_port, loopback_cjs, pid_of, sh_entry, shell_quote, wait_dead,
    ManagedHome,
};
use crate::support::servers::{everything_js, python_client};
use crate::support::{error_of, initialize_request, Proxy, DEADLINE};

/// A home with one server-everything daemon `everything` in `mode`.
fn everything_home(mode: &str) -> ManagedHome {
    ManagedHome::new(&everything_entry("everything", mode, listen_port()))
}

#[test]
fn python_sdk_client_uses_a_managed_streamable_http_daemon_from_a_cold_home() {
    let home = everything_home("streamableHttp");
    assert!(home.managers().is_empty(), "a cold home has no manager");
    let report = python_client(&home.home, &["basic"], &["--target", "everything"]);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(home.managers().len(), 1, "the proxy started a manager");
    let daemon = home.daemon("everything");
    assert_eq!(daemon["state"], "ready", "{daemon}");
    assert_eq!(daemon["transport"], "streamable-http", "{daemon}");
}

#[test]
fn python_sdk_client_uses_a_managed_legacy_sse_daemon_from_a_cold_home() {
    let home = everything_home("sse");
    assert!(home.managers().is_empty(), "a cold home has no manager");
    let report = python_client(&home.home, &["basic"], &["--target", "everything"]);
    assert_eq!(report["ok"], true, "{report}");
    let daemon = home.daemon("everything");
    assert_eq!(daemon["state"], "ready", "{daemon}");
    assert_eq!(daemon["transport"], "sse", "{daemon}");
    let url = daemon["url"].as_str().unwrap_or_default();
    assert!(url.ends_with("/sse"), "the sse path is the default: {url}");
}

#[test]
fn twenty_proxies_started_at_once_share_one_manager_and_one_daemon() {
    let home = everything_home("streamableHttp");
    let mut proxies: Vec<Proxy> = (0..20).map(|_| home.proxy("everything")).collect();
    for proxy in &mut proxies {
        proxy.send(&initialize_request(0));
    }
    for (i, proxy) in proxies.iter_mut().enumerate() {
        let (response, _) = proxy.recv_response(&json!(0));
        assert!(
            response.get("result").is_some(),
            "session {i}: initialize failed: {response}\n--- stderr ---\n{}",
            proxy.stderr()
        );
        proxy.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    }
    for (i, proxy) in proxies.iter_mut().enumerate() {
        assert_echo(proxy, 1, &format!("session {i}"));
    }
    let managers = home.managers();
    assert_eq!(managers.len(), 1, "exactly one manager: {managers:#?}");
    let log = std::fs::read_to_string(home.path().join("logs/manager.log")).expect("manager.log");
    assert_eq!(
        log.matches("mcpsm manager listening on").count(),
        1,
        "one manager was ever started (the start lock): {log}"
    );
    assert!(
        !log.contains("already running"),
        "no second manager was tried: {log}"
    );
    let daemons = home.daemon_processes();
    assert_eq!(daemons.len(), 1, "exactly one daemon process: {daemons:#?}");
    assert!(daemons[0].argv[0].ends_with("node"), "{daemons:#?}");
    let daemon = home.daemon("everything");
    // The pid mcpsm reports leads the daemon's process group: `mcpsm log-writer`, which runs
    // the server with its output rotated into the log.
    assert_eq!(
        json!(process_group_of(daemons[0].pid)),
        daemon["pid"],
        "{daemon}"
    );
    assert_eq!(daemon["restarts"], 0, "{daemon}");
}

/// The process group of `pid`, from /proc.
fn process_group_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

#[test]
fn sigint_to_a_proxy_group_reaches_neither_the_proxy_nor_the_daemon() {
    let home = everything_home("streamableHttp");
    // The first proxy starts the manager (cold home): the signal must not reach that either.
    let mut first = home.proxy("everything");
    assert_session_works(&mut first);
    let mut other = home.proxy("everything");
    assert_session_works(&mut other);
    let daemon = home.daemon_pid("everything");
    let manager = home.manager_pid();

    first.signal_group(libc::SIGINT);
    assert_echo(&mut first, 2, "after SIGINT");
    assert!(
        first.child.try_wait().expect("try_wait").is_none(),
        "the proxy ignores SIGINT"
    );
    assert_echo(&mut other, 2, "after the other got SIGINT");
    assert_eq!(home.daemon_pid("everything"), daemon, "same daemon process");
    assert_eq!(home.manager_pid(), manager, "same manager process");
}

#[test]
fn sigterm_then_sigkill_to_a_proxy_group_leaves_the_daemon_and_other_sessions_working() {
    let home = everything_home("streamableHttp");
    // The victim starts the manager (cold home), as the first client session would.
    let mut victim = home.proxy("everything");
    assert_session_works(&mut victim);
    let mut other = home.proxy("everything");
    assert_session_works(&mut other);
    let daemon = home.daemon_pid("everything");
    let manager = home.manager_pid();

    // Codex: SIGTERM to the group, SIGKILL to the group after 2 s.
    victim.signal_group(libc::SIGTERM);
    let grace = Instant::now() + Duration::from_secs(2);
    while victim.child.try_wait().expect("try_wait").is_none() && Instant::now() < grace {
        std::thread::sleep(Duration::from_millis(20));
    }
    victim.signal_group(libc::SIGKILL);
    victim.wait_exit(DEADLINE);

    assert_echo(&mut other, 2, "after the group kill");
    assert!(alive(daemon), "the daemon survives the client's group kill");
    assert!(
        alive(manager),
        "the manager survives the client's group kill"
    );
    let status = home.daemon("everything");
    assert_eq!(status["state"], "ready", "{status}");
    assert_eq!(pid_of(&status), daemon, "not restarted: {status}");
    assert_session_works(&mut home.proxy("everything"));
}

#[test]
fn killed_daemon_is_restarted_to_ready_and_serves_new_sessions() {
    let home = everything_home("streamableHttp");
    let before = home.start("everything");
    let old_pid = pid_of(&before);
    let killed_at = Instant::now();
    kill(old_pid, libc::SIGKILL);

    let after = home.wait_daemon("everything", Duration::from_secs(15), "ready again", |d| {
        d["state"] == "ready" && d["pid"] != old_pid && d["restarts"].as_u64() >= Some(1)
    });
    eprintln!("back to ready {:?} after kill -9", killed_at.elapsed());
    assert!(!alive(old_pid));
    assert!(alive(pid_of(&after)), "{after}");
    let status = home.daemon("everything");
    assert_eq!(status["pid"], after["pid"], "{status}");
    assert!(status["restarts"].as_u64() >= Some(1), "{status}");
    assert_session_works(&mut home.proxy("everything"));
}

#[test]
fn daemon_keeps_answering_after_the_manager_is_killed() {
    let home = everything_home("streamableHttp");
    let mut session = home.proxy("everything");
    assert_session_works(&mut session);
    let daemon = home.daemon("everything");
    let manager = home.manager_pid();

    kill(manager, libc::SIGKILL);
    wait_dead(manager, DEADLINE, "the manager");

    assert_echo(&mut session, 2, "after the manager died");
    assert!(alive(pid_of(&daemon)), "the daemon outlives its manager");
    let url = daemon["url"].as_str().expect("url");
    assert_session_works(&mut direct_proxy(&home.home, url));
}

#[test]
fn next_manager_adopts_a_running_daemon_without_restarting_it() {
    let home = everything_home("streamableHttp");
    let before = home.start("everything");
    let daemon = pid_of(&before);
    let manager = home.manager_pid();
    kill(manager, libc::SIGKILL);
    wait_dead(manager, DEADLINE, "the manager");

    let ran = home.run(&["start", "everything"]);
    ran.assert_success();
    assert!(
        ran.stdout.contains(&format!("pid {daemon}")),
        "the same process: {ran:#?}"
    );
    let report = home.status();
    assert_ne!(report["manager"]["pid"], manager, "a new manager: {report}");
    let after = daemon_in(&report, "everything");
    assert_eq!(after["state"], "ready", "{after}");
    assert_eq!(pid_of(&after), daemon, "same daemon pid: {after}");
    assert_eq!(after["adopted"], true, "{after}");
    assert_eq!(after["restarts"], 0, "{after}");
    assert_eq!(after["started_at"], before["started_at"], "{after}");
    assert_session_works(&mut home.proxy("everything"));
    assert_eq!(home.daemon_pid("everything"), daemon);
}

#[test]
fn daemon_that_crashes_at_once_fails_start_as_crash_looping_with_its_output() {
    let home = ManagedHome::new(&sh_entry("crashy", "echo boom; exit 3", listen_port()));
    let ran = home.run(&["start", "crashy"]);
    assert_eq!(ran.code, Some(1), "{ran:#?}");
    assert!(ran.stderr.contains("crash-looping"), "{ran:#?}");
    assert!(ran.stderr.contains("boom"), "the log tail: {ran:#?}");

    let daemon = home.daemon("crashy");
    assert_eq!(daemon["state"], "crash-looping", "{daemon}");
    let error = daemon["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("exited with status 3"), "{error}");
    assert!(error.contains("boom"), "{error}");
    assert!(daemon["restarts"].as_u64() >= Some(1), "{daemon}");
    assert!(daemon["pid"].is_null(), "nothing runs: {daemon}");
}

#[test]
fn proxy_to_a_crash_looping_daemon_answers_every_request_with_an_error_naming_it() {
    let home = ManagedHome::new(&sh_entry("crashy", "echo boom; exit 3", listen_port()));
    let log = home.log_file("crashy").display().to_string();
    let mut proxy = home.proxy("crashy");
    for id in [7, 8] {
        let started = Instant::now();
        proxy.send(&initialize_request(id));
        let (response, _) = proxy.recv_response(&json!(id));
        let took = started.elapsed();
        eprintln!("request {id} answered after {took:?}");
        if id == 8 {
            // The first answer waited for the crash loop to show; later ones must not wait.
            assert!(took < Duration::from_secs(5), "answered after {took:?}");
        }
        let message = error_of(&response)["message"].as_str().unwrap_or_default();
        assert!(message.contains("daemon \"crashy\""), "{message}");
        assert!(message.contains("crash-looping"), "{message}");
        assert!(message.contains(&log), "names the log file: {message}");
    }
    assert!(
        proxy.child.try_wait().expect("try_wait").is_none(),
        "the proxy goes on"
    );
}

#[test]
fn daemon_that_never_answers_fails_start_naming_its_startup_timeout_and_output() {
    let entry = sh_entry(
        "mute",
        "echo hello from mute; exec sleep 300",
        listen_port(),
    ) + "startup-timeout = \"300ms\"\n";
    let home = ManagedHome::new(&entry);
    let ran = home.run(&["start", "mute"]);
    assert_eq!(ran.code, Some(1), "{ran:#?}");
    assert!(
        ran.stderr.contains("did not become ready within 300ms"),
        "{ran:#?}"
    );
    assert!(
        ran.stderr.contains("hello from mute"),
        "the log tail: {ran:#?}"
    );
    let left = home.daemon_processes();
    assert!(left.is_empty(), "every attempt was stopped: {left:#?}");
}

#[test]
fn missing_command_fails_start_naming_it_and_the_path_searched() {
    let home = ManagedHome::new(&format!(
        "[daemons.ghost]\ncommand = \"mcpsm-no-such-program\"\nport = {}\n",
        listen_port()
    ));
    let ran = home.run(&["start", "ghost"]);
    assert_eq!(ran.code, Some(1), "{ran:#?}");
    assert!(
        ran.stderr.contains("`mcpsm-no-such-program` not found"),
        "{ran:#?}"
    );
    // The daemons' base PATH (the login shell's), not the one of this CLI.
    assert!(
        ran.stderr.contains("searched PATH: /") && ran.stderr.contains("login shell"),
        "names the PATH searched: {ran:#?}"
    );
    assert_eq!(home.daemon("ghost")["state"], "failed");
}

#[test]
fn daemon_ignoring_sigterm_is_killed_after_its_stop_timeout() {
    // Not `trap '' TERM; exec node …`: node resets inherited signal dispositions at startup,
    // so the server itself ignores SIGTERM here (as servers with a stuck shutdown do).
    let ignore_sigterm =
        r#"process.on("SIGTERM", () => console.error("SIGTERM ignored")); import(process.argv[1])"#;
    let script = format!(
        "exec node -r {} -e {} {} streamableHttp",
        shell_quote(&loopback_cjs().display().to_string()),
        shell_quote(ignore_sigterm),
        shell_quote(&everything_js().display().to_string()),
    );
    let entry = sh_entry("stubborn", &script, listen_port()) + "stop-timeout = \"1s\"\n";
    let home = ManagedHome::new(&entry);
    let pid = pid_of(&home.start("stubborn"));

    let started = Instant::now();
    home.run(&["stop", "stubborn"]).assert_success();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "SIGKILL comes after the 1 s grace, took {took:?}"
    );
    assert!(!alive(pid), "the daemon is gone");
    let log = std::fs::read_to_string(home.log_file("stubborn")).expect("read the log");
    assert!(log.contains("SIGTERM ignored"), "SIGTERM came first: {log}");
    assert_eq!(home.daemon("stubborn")["state"], "stopped");
    assert!(
        home.daemon_processes().is_empty(),
        "{:#?}",
        home.daemon_processes()
    );
}

#[test]
fn stopping_a_daemon_kills_its_backgrounded_grandchild() {
    let script = format!("sleep 317 & {}", exec_everything());
    let home = ManagedHome::new(&sh_entry("forky", &script, listen_port()));
    let is_sleeper = |p: &crate::support::managed::HomeProcess| p.argv == ["sleep", "317"];
    home.start("forky");
    assert!(
        home.daemon_processes().iter().any(is_sleeper),
        "the grandchild runs: {:#?}",
        home.daemon_processes()
    );

    home.run(&["stop", "forky"]).assert_success();
    let left: Vec<_> = home
        .daemon_processes()
        .into_iter()
        .filter(is_sleeper)
        .collect();
    assert!(
        left.is_empty(),
        "the group kill reaps the grandchild: {left:#?}"
    );
}

#[test]
fn foreign_listener_on_the_daemon_port_is_named_in_the_start_error() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let home = ManagedHome::new(&everything_entry("everything", "streamableHttp", port));

    let ran = home.run(&["start", "everything"]);
    assert_eq!(ran.code, Some(1), "{ran:#?}");
    assert!(ran.stderr.contains(&format!("port {port}")), "{ran:#?}");
    assert!(
        ran.stderr.contains(&format!("pid {}", std::process::id())),
        "names this test process as the owner: {ran:#?}"
    );
    assert_eq!(home.daemon("everything")["state"], "failed");
    assert!(home.daemon_processes().is_empty(), "nothing was spawned");
}

/// A home with a running manager (no daemon started) and one registry daemon `everything`.
fn home_with_manager() -> ManagedHome {
    let home = everything_home("streamableHttp");
    let ran = home.run(&["manager", "--detach"]);
    ran.assert_success();
    assert!(
        ran.stdout
            .contains(&format!("127.0.0.1:{}", home.manager_port)),
        "{ran:#?}"
    );
    home
}

#[test]
fn manager_api_refuses_a_host_that_is_not_loopback() {
    let home = home_with_manager();
    let evil = home.http("GET", "/status", &[("Host", "evil.example.com")], "");
    assert_eq!(evil.status, 403, "{evil:?}");
    assert!(!evil.body.contains("daemons"), "no status leaks: {evil:?}");
    let evil_with_port = home.http("GET", "/ping", &[("Host", "evil.example.com:80")], "");
    assert_eq!(evil_with_port.status, 403, "{evil_with_port:?}");
    let token = home.bearer();
    let local = home.http(
        "GET",
        "/status",
        &[("Host", "localhost"), ("Authorization", &token)],
        "",
    );
    assert_eq!(local.status, 200, "loopback names are fine: {local:?}");
}

#[test]
fn manager_api_refuses_a_foreign_origin() {
    let home = home_with_manager();
    let origin = [("Origin", "http://evil.example.com")];
    let answer = home.http("GET", "/status", &origin, "");
    assert_eq!(answer.status, 403, "{answer:?}");
    let token = format!("Bearer {}", home.token());
    let post = home.http(
        "POST",
        "/stop-all",
        &[origin[0], ("Authorization", &token)],
        "{}",
    );
    assert_eq!(post.status, 403, "even with the token: {post:?}");
    let local = home.http(
        "GET",
        "/status",
        &[
            ("Origin", "http://127.0.0.1:8080"),
            ("Authorization", &token),
        ],
        "",
    );
    assert_eq!(local.status, 200, "a loopback origin is fine: {local:?}");
}

#[test]
fn manager_api_mutations_need_the_token() {
    let home = home_with_manager();
    let body = r#"{"name": "everything"}"#;
    let json = ("Content-Type", "application/json");
    let none = home.http("POST", "/stop", &[json], body);
    assert_eq!(none.status, 401, "{none:?}");
    assert!(
        none.body.contains("manager.token"),
        "says where the token is: {none:?}"
    );
    let wrong = home.http(
        "POST",
        "/stop",
        &[json, ("Authorization", "Bearer 0123")],
        body,
    );
    assert_eq!(wrong.status, 401, "{wrong:?}");
    let token = format!("Bearer {}", home.token());
    let right = home.http("POST", "/stop", &[json, ("Authorization", &token)], body);
    assert_eq!(right.status, 200, "{right:?}");
    assert_eq!(right.json()["state"], "stopped", "{right:?}");
}

#[test]
fn manager_api_refuses_a_large_body() {
    let home = home_with_manager();
    let token = format!("Bearer {}", home.token());
    let body = format!(r#"{{"name": "{}"}}"#, "x".repeat(64 * 1024));
    let answer = home.http("POST", "/start", &[("Authorization", &token)], &body);
    assert_eq!(answer.status, 413, "{answer:?}");
}

#[test]
fn manager_token_is_private() {
    let home = home_with_manager();
    let meta = std::fs::metadata(home.path().join("manager.token")).expect("manager.token");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(home.token().len() >= 32, "a long secret");
}

#[test]
fn manager_api_answers_an_unknown_daemon_with_404_and_the_known_names() {
    let home = home_with_manager();
    let token = format!("Bearer {}", home.token());
    let auth = ("Authorization", token.as_str());
    let answer = home.http("POST", "/start", &[auth], r#"{"name": "nope"}"#);
    assert_eq!(answer.status, 404, "{answer:?}");
    assert_eq!(answer.json()["known"], json!(["everything"]), "{answer:?}");
    assert!(answer.body.contains("nope"), "{answer:?}");
    let logs = home.http("GET", "/logs/nope?tail=5", &[auth], "");
    assert_eq!(logs.status, 404, "{logs:?}");
    assert_eq!(logs.json()["known"], json!(["everything"]), "{logs:?}");
}

/// Starts `talker` (prints ten numbered lines, then runs server-everything) and stops it, so
/// its log no longer changes.
fn home_with_a_finished_log() -> ManagedHome {
    let script = format!(
        "for i in 1 2 3 4 5 6 7 8 9 10; do echo line-$i; done; {}",
        exec_everything()
    );
    let home = ManagedHome::new(&sh_entry("talker", &script, listen_port()));
    home.start("talker");
    home.run(&["stop", "talker"]).assert_success();
    home
}

/// `text` without the time stamp at the start of each line (asserting that each has one).
fn unstamped(text: &str) -> String {
    text.lines()
        .map(|line| {
            let (stamp, rest) = line.split_at(25.min(line.len()));
            assert!(
                stamp.len() == 25 && stamp.starts_with("20") && stamp.ends_with("Z "),
                "every log line starts with its UTC time: {line:?}"
            );
            format!("{rest}\n")
        })
        .collect()
}

fn last_lines(text: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

#[test]
fn manager_api_logs_returns_the_log_tail() {
    let home = home_with_a_finished_log();
    let file = std::fs::read_to_string(home.log_file("talker")).expect("read the log");
    assert!(file.lines().count() > 13, "{file}");
    let token = home.bearer();
    let auth = [("Authorization", token.as_str())];
    let tail = home.http("GET", "/logs/talker?tail=3", &auth, "");
    assert_eq!(tail.status, 200, "{tail:?}");
    assert_eq!(tail.body.lines().collect::<Vec<_>>(), last_lines(&file, 3));
    let all = home.http("GET", "/logs/talker?tail=1000", &auth, "");
    assert_eq!(all.body, file, "the whole log");
    let text = unstamped(&all.body);
    assert!(text.contains("\nline-1\nline-2\n"), "{all:?}");
}

#[test]
fn logs_prints_the_last_lines_of_a_daemon() {
    let home = home_with_a_finished_log();
    let file = std::fs::read_to_string(home.log_file("talker")).expect("read the log");
    let ran = home.run(&["logs", "talker", "-n", "4"]);
    ran.assert_success();
    assert_eq!(ran.stdout.lines().collect::<Vec<_>>(), last_lines(&file, 4));
    let all = home.run(&["logs", "talker", "-n", "1000"]);
    let text = unstamped(&all.stdout);
    assert!(
        text.starts_with("mcpsm: started pid ") && text.contains("\nline-1\n"),
        "the manager's start line, then the daemon's output: {all:#?}"
    );
    assert!(
        all.stdout
            .contains("[loopback.cjs] listening on 127.0.0.1:"),
        "the daemon's stderr is in its log: {all:#?}"
    );
}

#[test]
fn second_manager_reports_the_running_one_and_exits_0() {
    let home = home_with_manager();
    let pid = home.manager_pid();
    let expected = format!(
        "already running at 127.0.0.1:{} (pid {pid})",
        home.manager_port
    );
    for args in [&["manager"][..], &["manager", "--detach"][..]] {
        let ran = home.run(args);
        ran.assert_success();
        assert!(ran.stdout.contains(&expected), "mcpsm {args:?}: {ran:#?}");
    }
    assert_eq!(home.managers().len(), 1, "{:#?}", home.managers());
    assert_eq!(home.manager_pid(), pid);
}

#[test]
fn manager_stop_stops_every_daemon_and_the_manager() {
    let home = ManagedHome::new(
        &(everything_entry("streamable", "streamableHttp", listen_port())
            + "\n"
            + &everything_entry("legacy", "sse", listen_port())),
    );
    let daemons = [
        pid_of(&home.start("streamable")),
        pid_of(&home.start("legacy")),
    ];
    let manager = home.manager_pid();

    home.run(&["manager", "stop"]).assert_success();
    for pid in daemons {
        assert!(!alive(pid), "daemon pid {pid} is gone");
    }
    wait_dead(manager, Duration::from_secs(5), "the manager");
    let left = home.processes();
    assert!(left.is_empty(), "nothing of this home runs: {left:#?}");
}

#[test]
fn restart_replaces_the_daemon_process() {
    let home = everything_home("streamableHttp");
    let mut old = pid_of(&home.start("everything"));
    // A few rounds: the new process needs the port the moment the old one is declared gone
    // (node's main thread exits before its other threads, which still hold the socket).
    for round in 1..=3 {
        home.run(&["restart", "everything"]).assert_success();
        let new = home.daemon("everything");
        assert_eq!(new["state"], "ready", "round {round}: {new}");
        assert_ne!(pid_of(&new), old, "round {round}: {new}");
        assert!(!alive(old), "round {round}");
        old = pid_of(&new);
    }
}

/// A home with `everything` ready and `blocked` failed (a foreign listener holds its port).
fn home_with_a_ready_and_a_failed_daemon(listener: &TcpListener) -> ManagedHome {
    let blocked = listener.local_addr().expect("addr").port();
    let home = ManagedHome::new(
        &(everything_entry("everything", "streamableHttp", listen_port())
            + "\n"
            + &everything_entry("blocked", "sse", blocked)),
    );
    home.start("everything");
    assert_eq!(home.run(&["start", "blocked"]).code, Some(1));
    home
}

#[test]
fn status_json_shows_every_field_of_every_daemon() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let home = home_with_a_ready_and_a_failed_daemon(&listener);
    let report = home.status();
    assert_eq!(report["manager"]["pid"], home.manager_pid(), "{report}");
    assert_eq!(report["manager"]["port"], home.manager_port, "{report}");

    let ready = daemon_in(&report, "everything");
    assert_eq!(ready["state"], "ready", "{ready}");
    assert!(alive(pid_of(&ready)), "{ready}");
    assert!(ready["port"].as_u64().is_some(), "{ready}");
    assert_eq!(ready["transport"], "streamable-http", "{ready}");
    assert!(ready["uptime_secs"].as_u64().is_some(), "{ready}");
    assert_eq!(ready["restarts"], 0, "{ready}");
    assert!(ready["last_error"].is_null(), "{ready}");

    let failed = daemon_in(&report, "blocked");
    let port = listener.local_addr().expect("addr").port();
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(failed["pid"].is_null(), "{failed}");
    assert_eq!(failed["port"], port, "{failed}");
    assert_eq!(failed["transport"], "sse", "{failed}");
    let error = failed["last_error"].as_str().unwrap_or_default();
    assert!(error.contains(&format!("port {port} is in use")), "{error}");
}

#[test]
fn status_table_shows_every_field_of_every_daemon() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let home = home_with_a_ready_and_a_failed_daemon(&listener);
    let ready = home.daemon("everything");
    let ran = home.run(&["status"]);
    ran.assert_success();
    let lines: Vec<&str> = ran.stdout.lines().collect();
    let header = lines
        .iter()
        .find(|l| l.starts_with("NAME"))
        .unwrap_or_else(|| panic!("no header: {ran:#?}"));
    let columns: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        columns,
        [
            "NAME",
            "STATE",
            "PID",
            "PORT",
            "TRANSPORT",
            "UPTIME",
            "RESTARTS"
        ]
    );
    let row = |name: &str| -> Vec<&str> {
        lines
            .iter()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}: {ran:#?}"))
            .split_whitespace()
            .collect()
    };
    let everything = row("everything");
    assert_eq!(everything[1], "ready", "{ran:#?}");
    assert_eq!(everything[2], pid_of(&ready).to_string(), "{ran:#?}");
    assert_eq!(everything[3], ready["port"].to_string(), "{ran:#?}");
    assert_eq!(everything[4], "streamable-http", "{ran:#?}");
    assert!(everything[5].ends_with('s'), "an uptime: {ran:#?}");
    assert_eq!(everything[6], "0", "{ran:#?}");
    let blocked = row("blocked");
    let port = listener.local_addr().expect("addr").port();
    let port_text = port.to_string();
    assert_eq!(
        blocked[1..5],
        ["failed", "-", port_text.as_str(), "sse"],
        "{ran:#?}"
    );
    assert!(
        ran.stdout
            .contains(&format!("last error: port {port} is in use")),
        "{ran:#?}"
    );
    assert!(ran
        .stdout
        .contains(&format!("127.0.0.1:{}", home.manager_port)));
}

#[test]
fn a_cold_home_has_no_manager_and_status_starts_none() {
    let home = everything_home("streamableHttp");
    let ran = home.run(&["status"]);
    ran.assert_success();
    assert!(ran.stdout.contains("not running"), "{ran:#?}");
    assert!(ran.stdout.contains("everything"), "{ran:#?}");
    assert!(home.processes().is_empty(), "status starts nothing");
}
