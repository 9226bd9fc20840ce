//! Idle shutdown: a daemon with no client session for its `idle-timeout` is stopped, the next
//! proxy starts it again, and one with a session open is never stopped, however quiet it is;
//! the manager itself exits after `[manager] idle-timeout` with no daemon running.

use std::time::Duration;

use crate::support::managed::{
    alive, assert_echo, assert_session_works, listen_port, wait_dead, ManagedHome,
};

const LIMIT: Duration = Duration::from_secs(60);

fn demo_entry(name: &str, port: u16, extra: &str) -> String {
    format!("[daemons.{name}]\ncommand = \"{{mcpsm}}\"\nargs = [\"demo-server\", \"--port\", \"{{port}}\"]\nport = {port}\n{extra}\n")
}

#[test]
fn idle_daemon_is_stopped_after_its_timeout_and_restarted_by_the_next_proxy() {
    let home = ManagedHome::new(&format!(
        "[defaults]\nidle-timeout = \"2s\"\n\n{}",
        demo_entry("demo", listen_port(), "")
    ));
    let mut proxy = home.proxy("demo");
    assert_session_works(&mut proxy);
    let first = home.wait_daemon("demo", LIMIT, "holding one session", |d| d["sessions"] == 1);
    assert_eq!(first["state"], "ready", "{first}");
    drop(proxy);
    let stopped = home.wait_daemon("demo", LIMIT, "stopped as idle", |d| {
        d["state"] == "stopped" && d["idle_stopped_at"].is_u64()
    });
    assert_eq!(stopped["sessions"], 0, "{stopped}");
    let status = home.run(&["status"]);
    assert!(
        status
            .stdout
            .contains("no session for its idle-timeout (2s)"),
        "`mcpsm status` says why it stopped: {}",
        status.stdout
    );
    let manager_log =
        std::fs::read_to_string(home.path().join("logs/manager.log")).unwrap_or_default();
    assert!(
        manager_log.contains("no client session for"),
        "the manager logs the idle stop:\n{manager_log}"
    );

    let mut next = home.proxy("demo");
    assert_session_works(&mut next);
    let again = home.wait_daemon("demo", LIMIT, "ready with the new session", |d| {
        d["state"] == "ready" && d["sessions"] == 1
    });
    assert!(again["idle_stopped_at"].is_null(), "{again}");
}

#[test]
fn daemon_with_an_open_session_is_never_stopped_even_when_quiet() {
    let home = ManagedHome::new(&format!(
        "[defaults]\nidle-timeout = \"1s\"\n\n{}{}",
        demo_entry("held", listen_port(), ""),
        demo_entry("unused", listen_port(), ""),
    ));
    let mut proxy = home.proxy("held");
    assert_session_works(&mut proxy);
    let held = home.wait_daemon("held", LIMIT, "holding one session", |d| d["sessions"] == 1);
    let pid = held["pid"].as_u64().expect("pid");
    // Started after the session's last message: once it is stopped as idle (at least 1 s
    // later), the held daemon has been silent longer than its timeout too.
    home.start("unused");
    home.wait_daemon("unused", LIMIT, "stopped as idle", |d| {
        d["state"] == "stopped"
    });
    let still = home.wait_daemon("held", LIMIT, "listed", |_| true);
    assert_eq!(
        still["state"], "ready",
        "a daemon with a session open was stopped: {still}"
    );
    assert_eq!(still["pid"].as_u64(), Some(pid), "{still}");
    assert!(still["idle_stop_in_secs"].is_null(), "{still}");
    assert_echo(&mut proxy, 2, "still here");
}

#[test]
fn never_opts_out_of_idle_shutdown() {
    let home = ManagedHome::new(&format!(
        "[defaults]\nidle-timeout = \"1s\"\n\n{}{}",
        demo_entry("kept", listen_port(), "idle-timeout = \"never\""),
        demo_entry("unused", listen_port(), ""),
    ));
    let kept = home.start("kept");
    home.start("unused");
    home.wait_daemon("unused", LIMIT, "stopped as idle", |d| {
        d["state"] == "stopped"
    });
    let still = home.daemon("kept");
    assert_eq!(still["state"], "ready", "{still}");
    assert_eq!(still["pid"], kept["pid"], "{still}");
    assert!(still["idle_timeout_ms"].is_null(), "{still}");
}

#[test]
fn manager_exits_after_its_idle_timeout_with_no_daemon_running() {
    let home = ManagedHome::new("");
    let port = home.manager_port;
    home.home.write_registry(&format!(
        "[manager]\nport = {port}\nidle-timeout = \"1s\"\n\n{}",
        demo_entry("demo", listen_port(), "idle-timeout = \"1s\"")
    ));
    home.start("demo");
    let manager = home.manager_pid();
    home.wait_daemon("demo", LIMIT, "stopped as idle", |d| {
        d["state"] == "stopped"
    });
    wait_dead(manager, LIMIT, "the manager, idle with no daemon running");
    assert!(!alive(manager));
}
