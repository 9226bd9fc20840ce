//! `mcpsm doctor` on seeded broken setups: each yields its finding, hint and exit code, and
//! `--fix` repairs what it claims to.

use crate::support::managed::{listen_port, sh_entry, ManagedHome};
use crate::support::TestHome;

fn demo_entry(name: &str, port: u16) -> String {
    format!("[daemons.{name}]\ncommand = \"{{mcpsm}}\"\nargs = [\"demo-server\", \"--port\", \"{{port}}\"]\nport = {port}\n")
}

#[track_caller]
fn doctor(home: &TestHome, args: &[&str]) -> (Option<i32>, String) {
    let mut command = home.mcpsm();
    command.env_remove("RUST_LOG").arg("doctor").args(args);
    let output =
        crate::support::servers::run_with_deadline(command, std::time::Duration::from_secs(60));
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn a_healthy_setup_passes_with_exit_0() {
    let home = ManagedHome::new(&demo_entry("demo", listen_port()));
    home.start("demo");
    let (code, out) = doctor(&home.home, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("ok    daemon demo: pid") && out.contains("MCP handshake in"),
        "{out}"
    );
    assert!(out.contains("ok    manager: running at"), "{out}");
    assert!(out.contains("0 fail"), "{out}");
}

#[test]
fn a_bad_registry_line_is_a_fail_naming_file_and_line() {
    let home = TestHome::new();
    home.write_registry("[manager]\nport = 1\n\n[daemons.a]\ncommand = \n");
    let (code, out) = doctor(&home, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("fail  registry:") && out.contains("daemons.toml:5"),
        "{out}"
    );
}

#[test]
fn a_port_held_by_a_foreign_process_is_named() {
    let port = listen_port();
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind");
    let home = ManagedHome::new(&demo_entry("demo", port));
    let (code, out) = doctor(&home.home, &[]);
    drop(listener);
    assert_eq!(code, Some(1), "{out}");
    let expected = format!(
        "fail  daemon demo: port {port} is in use by pid {}",
        std::process::id()
    );
    assert!(out.contains(&expected), "{out}");
    assert!(
        out.contains("hint: stop that process, or give daemon \"demo\" another `port`"),
        "{out}"
    );
}

#[test]
fn a_crashed_daemon_is_a_fail_pointing_at_its_log() {
    let home = ManagedHome::new(&sh_entry("crash", "echo boom; exit 3", listen_port()));
    assert_eq!(home.run(&["start", "crash"]).code, Some(1));
    let (code, out) = doctor(&home.home, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("fail  daemon crash: crash-looping:"), "{out}");
    assert!(out.contains("mcpsm logs crash"), "{out}");
    assert!(
        out.contains("warn  log crash:") || out.contains("boom"),
        "{out}"
    );
}

#[test]
fn a_wrong_transport_is_named_with_the_right_value() {
    let port = listen_port();
    let home = ManagedHome::new(&format!(
        "{}\n[daemons.wrong]\nurl = \"http://127.0.0.1:{port}/mcp\"\ntransport = \"sse\"\n",
        demo_entry("demo", port)
    ));
    home.start("demo");
    let (code, out) = doctor(&home.home, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("fail  daemon wrong: it speaks streamable-http, but the registry says `transport = \"sse\"`"), "{out}");
    assert!(
        out.contains("hint: set `transport = \"streamable-http\"` for daemon \"wrong\""),
        "{out}"
    );
}

#[test]
fn a_client_config_pointing_at_a_missing_binary_is_a_fail_and_direct_servers_are_shareable() {
    let home = TestHome::new();
    home.write_registry(&format!("[manager]\nport = {}\n", listen_port()));
    std::fs::write(
        home.path().join(".claude.json"),
        r#"{"mcpServers": {"old": {"command": "/gone/bin/mcpsm", "args": ["proxy", "--target", "x"]}, "memory": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-memory"]}}}"#,
    )
    .expect("write");
    let (code, out) = doctor(&home, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(
            "fail  claude-code (user): server \"old\" runs /gone/bin/mcpsm, which does not exist"
        ),
        "{out}"
    );
    assert!(
        out.contains("mcpsm generate-config --client claude-code"),
        "{out}"
    );
    assert!(
        out.contains("warn  claude-code (user):")
            && out.contains("mcpsm import --client claude-code"),
        "{out}"
    );
}

#[test]
fn stale_state_and_locks_are_reported_and_fixed() {
    let home = TestHome::new();
    home.write_registry(&format!("[manager]\nport = {}\n", listen_port()));
    std::fs::write(
        home.path().join("manager.json"),
        r#"{"pid": 999999, "port": 1, "version": "0.0.0", "started_at": 0, "daemons": {"ghost": {"pid": 999998, "start_time": 1, "port": 1, "started_at": 0}}}"#,
    )
    .expect("write state");
    std::fs::write(home.path().join("manager.lock"), "").expect("write lock");
    let (code, out) = doctor(&home, &[]);
    assert_eq!(code, Some(0), "warnings only: {out}");
    assert!(
        out.contains("warn  state:") && out.contains("ghost"),
        "{out}"
    );
    // An unheld lock file is how a lock looks when nothing runs: not a finding.
    assert!(!out.contains("locks"), "{out}");
    let (_, fixed) = doctor(&home, &["--fix"]);
    assert!(fixed.contains("fixed state:"), "{fixed}");
    let state = std::fs::read_to_string(home.path().join("manager.json")).expect("state");
    assert!(!state.contains("ghost"), "{state}");
    let (_, after) = doctor(&home, &[]);
    assert!(after.contains("0 fail, 0 warn"), "{after}");
}

#[test]
fn a_readable_token_is_a_fail_that_fix_repairs() {
    use std::os::unix::fs::PermissionsExt;
    let home = ManagedHome::new(&demo_entry("demo", listen_port()));
    home.start("demo");
    let token = home.path().join("manager.token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (code, out) = doctor(&home.home, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("fail  manager token:"), "{out}");
    let (code, fixed) = doctor(&home.home, &["--fix"]);
    assert_eq!(code, Some(0), "{fixed}");
    let mode = std::fs::metadata(&token)
        .expect("meta")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn json_output_lists_every_finding() {
    let home = TestHome::new();
    home.write_registry("[manager]\nport = 1\n\n[daemons.a]\ncommand = \n");
    let (_, out) = doctor(&home, &["--json"]);
    let findings: serde_json::Value = serde_json::from_str(&out).expect("json");
    let registry = findings
        .as_array()
        .and_then(|f| f.iter().find(|f| f["subject"] == "registry").cloned())
        .expect("a registry finding");
    assert_eq!(registry["level"], "fail");
}
