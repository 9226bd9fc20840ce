//! The stdio host: stdio-only MCP servers shared over streamable HTTP.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::servers::{
    everything, everything_js, memory_js, python, python_client, run_with_deadline, Server,
};
use crate::support::{call_tool, free_port, support_dir, wait_for, Proxy, TestHome, DEADLINE};

/// `mcpsm stdio-host` on a free port, serving `command`.
fn stdio_host(home: &TestHome, sharing: &str, command: &[&str], env: &[(&str, String)]) -> Server {
    let port = free_port();
    let mut host = home.mcpsm();
    host.args([
        "stdio-host",
        "--port",
        &port.to_string(),
        "--sharing",
        sharing,
        "--name",
        "hosted",
        "--",
    ])
    .args(command)
    .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut host, 0);
    let child = host.spawn().expect("spawn mcpsm stdio-host");
    let server = Server::from_child(child, port, format!("http://127.0.0.1:{port}/mcp"));
    wait_for(DEADLINE, "the stdio host to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    server
}

/// Live (not zombie) children of `pid` whose command line contains `needle`.
fn children_matching(pid: u32, needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                return false;
            };
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                return false;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            fields.first() != Some(&"Z")
                && fields.get(1).and_then(|f| f.parse::<u32>().ok()) == Some(pid)
                && String::from_utf8_lossy(&cmdline).contains(needle)
        })
        .collect()
}

fn counter_server() -> Vec<String> {
    vec![
        python().display().to_string(),
        support_dir().join("py_server.py").display().to_string(),
        "--mode".into(),
        "stdio".into(),
    ]
}

fn count(proxy: &mut Proxy, id: i64) -> i64 {
    proxy.send(&call_tool(id, "counter", json!({})));
    let (answer, _) = proxy.recv_response(&json!(id));
    answer["result"]["content"][0]["text"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("counter answered {answer}"))
}

#[test]
fn two_sessions_share_one_server_memory_process() {
    let home = TestHome::new();
    let memory = memory_js().display().to_string();
    let file = home.path().join("memory.jsonl").display().to_string();
    let host = stdio_host(
        &home,
        "shared",
        &["node", &memory],
        &[("MEMORY_FILE_PATH", file)],
    );
    let a = python_client(
        &home,
        &["memory-create", "mcpsm-shared-entity"],
        &["--url", &host.url],
    );
    assert_eq!(a["ok"], true, "{a}");
    let b = python_client(
        &home,
        &["memory-read", "mcpsm-shared-entity"],
        &["--url", &host.url],
    );
    assert_eq!(b["ok"], true, "{b}");
    assert_eq!(
        children_matching(host.pid(), "server-memory").len(),
        1,
        "one server process"
    );
}

#[test]
fn shared_sessions_see_one_process_and_isolated_sessions_their_own() {
    let home = TestHome::new();
    let command = counter_server();
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let shared = stdio_host(&home, "shared", &command, &[]);
    let mut a = Proxy::spawn(&home, &["--url", &shared.url]);
    let mut b = Proxy::spawn(&home, &["--url", &shared.url]);
    a.initialize();
    b.initialize();
    assert_eq!(count(&mut a, 1), 1);
    assert_eq!(count(&mut b, 1), 2, "session B uses the same process as A");
    assert_eq!(children_matching(shared.pid(), "py_server.py").len(), 1);

    let isolated = stdio_host(&home, "isolated", &command, &[]);
    let mut c = Proxy::spawn(&home, &["--url", &isolated.url]);
    let mut d = Proxy::spawn(&home, &["--url", &isolated.url]);
    c.initialize();
    d.initialize();
    assert_eq!(count(&mut c, 1), 1);
    assert_eq!(count(&mut c, 2), 2);
    assert_eq!(count(&mut d, 1), 1, "session D has a process of its own");
    assert_eq!(children_matching(isolated.pid(), "py_server.py").len(), 2);
}

#[test]
fn sixteen_sessions_with_colliding_ids_each_get_exactly_their_answers() {
    let home = TestHome::new();
    let js = everything_js().display().to_string();
    let host = stdio_host(&home, "shared", &["node", &js, "stdio"], &[]);
    let mut sessions: Vec<Proxy> = (0..16)
        .map(|_| Proxy::spawn(&home, &["--url", &host.url]))
        .collect();
    for session in &mut sessions {
        session.initialize();
    }
    // Every session uses ids 1..=200; all are written before any answer is read.
    for round in 1..=200i64 {
        for (n, session) in sessions.iter_mut().enumerate() {
            session.send(&call_tool(
                round,
                "echo",
                json!({"message": format!("s{n}-r{round}")}),
            ));
        }
    }
    for (n, session) in sessions.iter_mut().enumerate() {
        let mut answers: BTreeMap<i64, String> = BTreeMap::new();
        while answers.len() < 200 {
            let message = session.recv();
            if message.get("method").is_some() {
                continue; // notifications
            }
            let id = message["id"]
                .as_i64()
                .unwrap_or_else(|| panic!("session {n}: {message}"));
            let text = message["result"]["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(
                answers.insert(id, text).is_none(),
                "session {n}: id {id} answered twice"
            );
        }
        for (id, text) in answers {
            assert_eq!(
                text,
                format!("Echo: s{n}-r{id}"),
                "session {n} got another session's answer"
            );
        }
    }
    for (n, session) in sessions.iter_mut().enumerate() {
        let extra: Vec<Value> = session
            .drain_for(Duration::from_millis(200))
            .into_iter()
            .filter(|m| m.get("method").is_none())
            .collect();
        assert!(
            extra.is_empty(),
            "session {n}: unexpected answers {extra:?}"
        );
    }
}

#[test]
fn a_killed_shared_child_is_restarted_and_every_session_goes_on() {
    let home = TestHome::new();
    let command = counter_server();
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let host = stdio_host(&home, "shared", &command, &[]);
    let mut sessions: Vec<Proxy> = (0..3)
        .map(|_| Proxy::spawn(&home, &["--url", &host.url]))
        .collect();
    for session in &mut sessions {
        session.initialize();
        count(session, 1);
    }
    let children = children_matching(host.pid(), "py_server.py");
    assert_eq!(children.len(), 1);
    // SAFETY: kill(2) on a process this test started (through the host).
    unsafe { libc::kill(children[0] as i32, libc::SIGKILL) };
    wait_for(DEADLINE, "a new server process", || {
        let now = children_matching(host.pid(), "py_server.py");
        now.len() == 1 && now[0] != children[0]
    });
    for (n, session) in sessions.iter_mut().enumerate() {
        let value = count(session, 10 + n as i64);
        assert!(value >= 1, "session {n} works after the restart");
    }
}

#[test]
fn progress_and_sampling_reach_only_the_session_that_asked() {
    let home = TestHome::new();
    let js = everything_js().display().to_string();
    let host = stdio_host(&home, "shared", &["node", &js, "stdio"], &[]);
    for scenario in ["progress", "sampling", "elicitation", "concurrent"] {
        let report = python_client(&home, &[scenario], &["--url", &host.url]);
        assert_eq!(report["ok"], true, "{scenario}: {report}");
    }
}

#[test]
fn conformance_server_suite_passes_through_the_host_as_it_does_directly() {
    let home = TestHome::new();
    let js = everything_js().display().to_string();
    let host = stdio_host(&home, "shared", &["node", &js, "stdio"], &[]);
    let direct = everything("streamableHttp");
    let through_host = conformance_server(&home, &host.url, "host");
    let directly = conformance_server(&home, &direct.url, "direct");
    let mut differences = Vec::new();
    for (scenario, passed) in &directly {
        if through_host.get(scenario) != Some(passed) && scenario != "dns-rebinding-protection" {
            differences.push(format!(
                "{scenario}: direct {passed}, through the host {:?}",
                through_host.get(scenario)
            ));
        }
    }
    assert!(differences.is_empty(), "{differences:#?}");
    assert_eq!(
        through_host.get("dns-rebinding-protection"),
        Some(&true),
        "{through_host:?}"
    );
    assert!(
        directly.values().filter(|p| **p).count() >= 10,
        "the suite ran: {directly:?}"
    );
}

/// Runs `conformance server --url URL`; returns scenario → passed.
fn conformance_server(home: &TestHome, url: &str, label: &str) -> BTreeMap<String, bool> {
    let support = support_dir();
    let bin = support.join("conformance/node_modules/.bin");
    let out = home.path().join(format!("conformance-{label}"));
    let mut command = Command::new(bin.join("conformance"));
    command
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .args(["server", "--url", url, "-o"])
        .arg(&out)
        .current_dir(home.path());
    let output = run_with_deadline(command, Duration::from_secs(180));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let results: BTreeMap<String, bool> = stdout
        .lines()
        .filter_map(|line| {
            let (mark, rest) = line.split_at_checked(line.char_indices().nth(1)?.0)?;
            let name = rest.trim().split(':').next()?.trim().to_owned();
            match mark {
                "✓" => Some((name, true)),
                "✗" => Some((name, false)),
                _ => None,
            }
        })
        .collect();
    assert!(
        !results.is_empty(),
        "no scenario results from the conformance suite against {url}\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    results
}

#[test]
fn server_memory_as_a_managed_shared_stdio_daemon_serves_two_sessions_with_one_process() {
    use crate::support::managed::{listen_port, ManagedHome};
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let registry = format!(
        "[daemons.memory]\ncommand = \"node\"\nargs = [{:?}]\nenv = {{ MEMORY_FILE_PATH = {:?} }}\nport = {}\ntransport = \"stdio\"\n",
        memory_js().display().to_string(),
        file.path().display().to_string(),
        listen_port()
    );
    let home = ManagedHome::new(&registry);
    let a = python_client(
        &home.home,
        &["memory-create", "mcpsm-managed-entity"],
        &["--target", "memory"],
    );
    assert_eq!(a["ok"], true, "{a}");
    let b = python_client(
        &home.home,
        &["memory-read", "mcpsm-managed-entity"],
        &["--target", "memory"],
    );
    assert_eq!(b["ok"], true, "{b}");
    let servers: Vec<_> = home
        .processes()
        .into_iter()
        .filter(|p| !p.is_mcpsm() && p.command_line().contains("server-memory"))
        .collect();
    assert_eq!(
        servers.len(),
        1,
        "one server-memory process for both sessions"
    );
    let status = home.run(&["status", "--json"]);
    let report: Value = serde_json::from_str(&status.stdout).expect("json");
    let daemon = crate::support::managed::daemon_in(&report, "memory");
    assert_eq!(daemon["state"], "ready");
    assert_eq!(daemon["transport"], "stdio");
}
