//! What runs, for people and for monitoring: the manager's live status page (loaded in
//! headless Chromium), `/metrics` (parsed by the Prometheus reference parser), and logs with
//! times and reasons (`mcpsm logs --since`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::managed::{assert_echo, everything_entry, listen_port, ManagedHome};
use crate::support::servers::{memory_js, node_modules, python};
use crate::support::{support_dir, wait_for, DEADLINE};

const CHROMIUM: &str = "/usr/bin/chromium";

/// `everything` (streamable HTTP) and `memory` (a stdio server behind mcpsm's host).
fn two_daemons(memory_file: &Path) -> ManagedHome {
    let memory = format!(
        "[daemons.memory]\ncommand = \"node\"\nargs = [{:?}]\nenv = {{ MEMORY_FILE_PATH = {:?} }}\nport = {}\ntransport = \"stdio\"\n",
        memory_js().display().to_string(),
        memory_file.display().to_string(),
        listen_port()
    );
    ManagedHome::new(&format!(
        "{}\n{memory}",
        everything_entry("everything", "streamableHttp", listen_port())
    ))
}

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target")
}

#[test]
fn status_page_shows_both_daemons_with_live_figures_in_headless_chromium() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: this test loads the status page in Debian's chromium.\nhint: `sudo apt-get install -y chromium` (.ci/run installs it in CI)"
    );
    node_modules();
    let memory_file = tempfile::NamedTempFile::new().expect("temp file");
    let home = two_daemons(memory_file.path());
    home.start("everything");
    home.start("memory");
    let mut busy = home.proxy("everything");
    busy.initialize();
    assert_echo(&mut busy, 1, "before the page");
    let mut other = home.proxy("memory");
    other.initialize();
    other.send(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}));
    other.recv_response(&json!(2));

    // `status --open` prints the URL and hands it to the opener.
    let opened = home.path().join("opened.txt");
    let opener = home.path().join("opener.sh");
    std::fs::write(
        &opener,
        format!("#!/bin/sh\nprintf '%s' \"$1\" > {:?}\n", opened.display()),
    )
    .expect("write the opener");
    std::fs::set_permissions(&opener, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("make the opener executable");
    let output = home
        .home
        .mcpsm()
        .args(["status", "--open"])
        .env("MCPSM_OPENER", &opener)
        .output()
        .expect("run mcpsm status --open");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    let url = stdout.trim().to_owned();
    assert!(
        url.starts_with(&format!(
            "http://127.0.0.1:{}/ui?ticket=",
            home.manager_port
        )),
        "{output:?}"
    );
    wait_for(DEADLINE, "the opener to get the URL", || {
        std::fs::read_to_string(&opened).is_ok_and(|text| text == url)
    });

    let screenshot = target_dir().join("status-page.png");
    let _ = std::fs::remove_file(&screenshot);
    let mut script = Command::new("node")
        .arg(support_dir().join("status_page.mjs"))
        .arg(&url)
        .arg(&screenshot)
        .args(["everything", "memory"])
        .env("NODE_PATH", node_modules())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node status_page.mjs");
    // Requests go on while the page is open; the page must see their count change.
    let started = Instant::now();
    let mut id = 10;
    let status = loop {
        if let Some(status) = script.try_wait().expect("wait for the script") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the page script did not finish within 3 minutes"
        );
        id += 1;
        assert_echo(&mut busy, id, "while the page is open");
        std::thread::sleep(Duration::from_millis(200));
    };
    let output = script.wait_with_output().expect("script output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        status.success(),
        "the page check failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.trim()).expect("the script's JSON line");
    assert_eq!(
        seen["rows"]["everything"]["pid"],
        home.daemon("everything")["pid"],
        "{seen}"
    );
    assert!(
        screenshot.exists(),
        "no screenshot at {}",
        screenshot.display()
    );
}

#[test]
fn status_page_needs_a_ticket_and_tickets_need_the_token() {
    let memory_file = tempfile::NamedTempFile::new().expect("temp file");
    let home = two_daemons(memory_file.path());
    home.run(&["manager", "--detach"]).assert_success();
    let page = home.http("GET", "/ui", &[], "");
    assert_eq!(page.status, 401, "{page:?}");
    assert!(page.body.contains("mcpsm status --open"), "{page:?}");
    let forged = home.http(
        "GET",
        "/ui?ticket=0123456789abcdef0123456789abcdef",
        &[],
        "",
    );
    assert_eq!(forged.status, 401, "{forged:?}");
    let data = home.http("GET", "/ui/data", &[], "");
    assert_eq!(data.status, 401, "{data:?}");
    let ticket = home.http("POST", "/ui/ticket", &[], "{}");
    assert_eq!(ticket.status, 401, "{ticket:?}");
    // With the token: a ticket, good once, for a cookie that opens the page's data.
    let bearer = home.bearer();
    let auth = [("Authorization", bearer.as_str())];
    let ticket = home.http("POST", "/ui/ticket", &auth, "{}");
    assert_eq!(ticket.status, 200, "{ticket:?}");
    let url = ticket.json()["url"].as_str().expect("url").to_owned();
    let path = &url[url.find("/ui").expect("path")..];
    let exchanged = home.http("GET", path, &[], "");
    assert_eq!(exchanged.status, 303, "{exchanged:?}");
    let cookie = exchanged
        .headers
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case("set-cookie")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no cookie: {exchanged:?}"));
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().expect("name=value").to_owned();
    let cookie_header = [("Cookie", pair.as_str())];
    let data = home.http("GET", "/ui/data", &cookie_header, "");
    assert_eq!(data.status, 200, "{data:?}");
    let report = data.json();
    let names: Vec<&str> = report["daemons"]
        .as_array()
        .expect("daemons")
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert_eq!(names, ["everything", "memory"], "{data:?}");
    // The cookie reads; it does not act.
    let stop = home.http(
        "POST",
        "/stop",
        &cookie_header,
        &json!({"name": "everything"}).to_string(),
    );
    assert_eq!(stop.status, 401, "{stop:?}");
    let again = home.http("GET", path, &[], "");
    assert_eq!(again.status, 401, "a ticket works once: {again:?}");
}

#[test]
fn metrics_need_the_token_and_parse_as_prometheus_text() {
    let memory_file = tempfile::NamedTempFile::new().expect("temp file");
    let home = two_daemons(memory_file.path());
    home.start("everything");
    let mut proxy = home.proxy("everything");
    proxy.initialize();
    for id in 1..=3 {
        assert_echo(&mut proxy, id, "counted");
    }
    // Proxies report every 2 s; the initialize and three calls make 4 requests.
    home.wait_daemon("everything", DEADLINE, "4 requests counted", |d| {
        d["figures"]["requests"].as_u64() >= Some(4)
    });
    let unauthorized = home.http("GET", "/metrics", &[], "");
    assert_eq!(unauthorized.status, 401, "{unauthorized:?}");
    let bearer = home.bearer();
    let metrics = home.http("GET", "/metrics", &[("Authorization", bearer.as_str())], "");
    assert_eq!(metrics.status, 200, "{metrics:?}");
    let families = parse_prometheus(&metrics.body);
    let sample = |family: &str, sample: &str, daemon: &str| -> f64 {
        families[family]["samples"]
            .as_array()
            .unwrap_or_else(|| panic!("no family {family}: {families}"))
            .iter()
            .find(|s| s[0] == sample && s[1]["daemon"] == daemon && s[1].get("le").is_none())
            .and_then(|s| s[2].as_f64())
            .unwrap_or_else(|| panic!("no {sample}{{daemon={daemon}}} in {}", metrics.body))
    };
    assert!(
        sample(
            "mcpsm_daemon_requests",
            "mcpsm_daemon_requests_total",
            "everything"
        ) >= 4.0,
        "{}",
        metrics.body
    );
    assert_eq!(
        sample("mcpsm_daemon_up", "mcpsm_daemon_up", "everything"),
        1.0
    );
    assert_eq!(sample("mcpsm_daemon_up", "mcpsm_daemon_up", "memory"), 0.0);
    assert_eq!(
        sample(
            "mcpsm_daemon_sessions",
            "mcpsm_daemon_sessions",
            "everything"
        ),
        1.0
    );
    assert!(
        sample(
            "mcpsm_daemon_request_duration_seconds",
            "mcpsm_daemon_request_duration_seconds_count",
            "everything"
        ) >= 4.0
    );
    assert_eq!(
        families["mcpsm_daemon_request_duration_seconds"]["type"],
        "histogram"
    );
    for family in [
        "mcpsm_manager_uptime_seconds",
        "mcpsm_daemon_state",
        "mcpsm_daemon_uptime_seconds",
        "mcpsm_daemon_restarts",
        "mcpsm_daemon_sessions_recovered",
        "mcpsm_daemon_errors",
    ] {
        assert!(families.get(family).is_some(), "no {family} in {families}");
    }
}

/// The families of a Prometheus text exposition, as `tests/support/parse_metrics.py` (the
/// `prometheus_client` reference parser) reads them; panics when it does not parse.
fn parse_prometheus(text: &str) -> Value {
    use std::io::Write as _;
    let mut parser = Command::new(python())
        .arg(support_dir().join("parse_metrics.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run parse_metrics.py");
    parser
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write the metrics");
    let output = parser.wait_with_output().expect("parse_metrics.py");
    assert!(
        output.status.success(),
        "/metrics is not Prometheus text: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the parser's JSON")
}

#[test]
fn logs_are_stamped_say_why_a_daemon_restarted_and_since_keeps_the_recent_lines() {
    let memory_file = tempfile::NamedTempFile::new().expect("temp file");
    let home = two_daemons(memory_file.path());
    let first = home.start("everything")["pid"].clone();
    home.run(&["restart", "everything"]).assert_success();
    // A line from long ago in the rotated file: --since leaves it out.
    std::fs::write(
        home.path().join("logs/everything.log.1"),
        "2020-01-01T00:00:00.000Z long ago\n",
    )
    .expect("write a rotated log");
    let ran = home.run(&["logs", "everything", "--since", "10m"]);
    ran.assert_success();
    assert!(!ran.stdout.contains("long ago"), "{ran:#?}");
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert!(
        lines
            .iter()
            .all(|l| l.len() > 25 && l.as_bytes()[23] == b'Z'),
        "every line starts with its time: {ran:#?}"
    );
    let stopping = format!("mcpsm: stopping pid {first}: `mcpsm restart`");
    for wanted in ["mcpsm: started pid ", stopping.as_str(), "mcpsm: pid "] {
        assert!(
            lines.iter().any(|l| l.contains(wanted)),
            "no line with {wanted:?}: {ran:#?}"
        );
    }
    let starts = lines
        .iter()
        .filter(|l| l.contains("mcpsm: started pid ") && l.ends_with(": `mcpsm restart`"))
        .count();
    assert_eq!(starts, 1, "the restart's start says why: {ran:#?}");
    let all = home.run(&["logs", "everything", "--since", "100000d"]);
    assert!(all.stdout.contains("long ago"), "{all:#?}");
}
