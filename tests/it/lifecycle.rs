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

/// Starts daemon `unused` (idle-timeout 1 s, no session) and waits until the manager stopped
/// it as idle: by then `name` has gone longer than its timeout without traffic too. Then
/// checks that `name` still runs, as the same process as `before`; returns its status.
#[track_caller]
fn assert_outlives_an_idle_stop(
    home: &ManagedHome,
    name: &str,
    before: &serde_json::Value,
) -> serde_json::Value {
    home.start("unused");
    home.wait_daemon("unused", LIMIT, "stopped as idle", |d| {
        d["state"] == "stopped"
    });
    let still = home.daemon(name);
    assert_eq!(
        still["state"], "ready",
        "daemon {name} was stopped: {still}"
    );
    assert_eq!(still["pid"], before["pid"], "{still}");
    still
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
    // `unused` is started after the session's last message: once it is stopped as idle, the
    // held daemon has been silent longer than its timeout too.
    let still = assert_outlives_an_idle_stop(&home, "held", &held);
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
    let still = assert_outlives_an_idle_stop(&home, "kept", &kept);
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

/// `mcpsm service install --dir DIR [--os OS] ARGS`: the file it writes.
fn service_file(home: &ManagedHome, os: &str, extra: &[&str]) -> (std::path::PathBuf, String) {
    let dir = home.path().join(format!("service-{os}"));
    let dir_text = dir.display().to_string();
    let mut args = vec!["service", "install", "--dir", &dir_text, "--os", os];
    args.extend_from_slice(extra);
    let ran = home.run(&args);
    ran.assert_success();
    let entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("the service dir")
        .flatten()
        .collect();
    assert_eq!(entries.len(), 1, "one file in {dir_text}: {ran:?}");
    let path = entries[0].path();
    let text = std::fs::read_to_string(&path).expect("the service file");
    (path, text)
}

#[test]
fn service_unit_for_systemd_passes_systemd_analyze_verify() {
    let home = ManagedHome::new("");
    let (path, unit) = service_file(&home, "linux", &["--start-all"]);
    assert!(path.ends_with("mcpsm.service"), "{path:?}");
    assert!(unit.contains("\"manager\" \"--start-all\""), "{unit}");
    assert!(
        unit.contains(&format!("MCPSM_HOME={}", home.path().display())),
        "{unit}"
    );
    // systemd-analyze checks the syntax, every directive, and that ExecStart exists and is
    // executable. It needs no running systemd with --man=no and a plain file path.
    let output = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no", "--recursive-errors=no"])
        .arg(&path)
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .expect("systemd-analyze is not installed: `apt-get install -y systemd` (.ci/run does)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // The container has no user manager: only lines about the unit itself matter.
    let about_unit: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("mcpsm.service"))
        .collect();
    assert!(
        about_unit.is_empty(),
        "systemd-analyze verify found problems:\n{said}\n--- unit ---\n{unit}"
    );
    // And it does look: a broken copy of the unit is refused.
    let broken = path.with_file_name("broken.service");
    std::fs::write(
        &broken,
        unit.replace("Restart=on-failure", "Restart=whenever"),
    )
    .expect("write");
    let output = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no", "--recursive-errors=no"])
        .arg(&broken)
        .output()
        .expect("systemd-analyze");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("broken.service"),
        "verify must notice a bad value: {said}"
    );
}

#[test]
fn service_plist_for_launchd_parses_with_plistlib() {
    let home = ManagedHome::new("");
    let (path, _) = service_file(&home, "macos", &["--start", "a&b"]);
    let script =
        "import plistlib,sys,json; d=plistlib.load(open(sys.argv[1],'rb')); print(json.dumps(d))";
    let output = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&path)
        .output()
        .expect("python3");
    assert!(
        output.status.success(),
        "plistlib refused it: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let plist: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(plist["Label"], "dev.mcpsm.manager");
    assert_eq!(plist["RunAtLoad"], true);
    let args = plist["ProgramArguments"]
        .as_array()
        .expect("ProgramArguments");
    assert!(
        args[0].as_str().is_some_and(|p| p.ends_with("mcpsm")),
        "{plist}"
    );
    assert_eq!(
        args[1..],
        [
            serde_json::json!("manager"),
            serde_json::json!("--start"),
            serde_json::json!("a&b")
        ],
        "{plist}"
    );
    assert_eq!(
        plist["EnvironmentVariables"]["MCPSM_HOME"],
        home.path().display().to_string()
    );
}

#[test]
fn service_task_for_windows_is_task_scheduler_xml() {
    let home = ManagedHome::new("");
    let (path, _) = service_file(&home, "windows", &["--start-all"]);
    let script = "import sys,xml.etree.ElementTree as E; ns={'t':'http://schemas.microsoft.com/windows/2004/02/mit/task'}; r=E.parse(sys.argv[1]).getroot(); print(r.find('t:Triggers/t:LogonTrigger/t:Enabled',ns).text, r.find('t:Actions/t:Exec/t:Arguments',ns).text)";
    let output = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&path)
        .output()
        .expect("python3");
    assert!(
        output.status.success(),
        "not XML: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "true manager --start-all"
    );
    let ran = home.run(&[
        "service",
        "uninstall",
        "--dir",
        &path.parent().expect("dir").display().to_string(),
        "--os",
        "windows",
    ]);
    ran.assert_success();
    assert!(!path.exists());
}

#[test]
fn hosted_stdio_daemon_is_held_by_its_session_and_stopped_when_it_ends() {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let home = ManagedHome::new(&format!(
        "[defaults]\nidle-timeout = \"1s\"\n\n[daemons.memory]\ncommand = \"node\"\nargs = [{:?}]\nenv = {{ MEMORY_FILE_PATH = {:?} }}\nport = {}\ntransport = \"stdio\"\n\n{}",
        crate::support::servers::memory_js().display().to_string(),
        file.path().display().to_string(),
        listen_port(),
        demo_entry("unused", listen_port(), ""),
    ));
    let mut proxy = home.proxy("memory");
    proxy.initialize();
    let held = home.wait_daemon("memory", LIMIT, "holding one session", |d| {
        d["sessions"] == 1 && d["state"] == "ready"
    });
    assert_outlives_an_idle_stop(&home, "memory", &held);
    drop(proxy);
    home.wait_daemon(
        "memory",
        LIMIT,
        "stopped as idle once its session ended",
        |d| d["state"] == "stopped" && d["idle_stopped_at"].is_u64(),
    );
}
