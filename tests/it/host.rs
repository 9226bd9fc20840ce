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
    stdio_host_with(
        home,
        &["--sharing", sharing, "--name", "hosted"],
        command,
        env,
    )
}

/// `mcpsm stdio-host OPTIONS` on a free port, serving `command`.
fn stdio_host_with(
    home: &TestHome,
    options: &[&str],
    command: &[&str],
    env: &[(&str, String)],
) -> Server {
    let port = free_port();
    let mut host = home.mcpsm();
    host.args(["stdio-host", "--port", &port.to_string()])
        .args(options)
        .arg("--")
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

// ---------------------------------------------------------------- faithful sharing (issue 10)

/// `[daemons.NAME]` serving `command` through the stdio host; `extra` adds keys.
fn stdio_entry(name: &str, command: &[String], port: u16, extra: &str) -> String {
    let quoted: Vec<String> = command[1..].iter().map(|a| format!("{a:?}")).collect();
    format!(
        "[daemons.{name}]\ncommand = {:?}\nargs = [{}]\nport = {port}\ntransport = \"stdio\"\n{extra}\n",
        command[0],
        quoted.join(", ")
    )
}

fn memory_command() -> Vec<String> {
    vec!["node".into(), memory_js().display().to_string()]
}

/// `initialize` asking `version` with `capabilities`, then `initialized`; returns the answer.
fn initialize_as(proxy: &mut Proxy, version: &str, capabilities: Value) -> Value {
    proxy.send(
        &json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": version,
            "capabilities": capabilities,
            "clientInfo": {"name": format!("client-{version}"), "version": "0"}
        }}),
    );
    let (answer, _) = proxy.recv_response(&json!(0));
    if answer.get("result").is_some() {
        proxy.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    }
    answer
}

fn server_processes(home: &crate::support::managed::ManagedHome, needle: &str) -> Vec<u32> {
    home.processes()
        .into_iter()
        .filter(|p| !p.is_mcpsm() && p.command_line().contains(needle))
        .map(|p| p.pid)
        .collect()
}

#[test]
fn each_session_gets_the_protocol_version_it_asked_for_from_one_shared_server() {
    use crate::support::managed::{daemon_in, listen_port, ManagedHome};
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let extra = format!(
        "env = {{ MEMORY_FILE_PATH = {:?} }}",
        file.path().display().to_string()
    );
    let home = ManagedHome::new(&stdio_entry(
        "memory",
        &memory_command(),
        listen_port(),
        &extra,
    ));
    let mut sessions = Vec::new();
    for version in ["2024-11-05", "2025-06-18", "2025-03-26", "2025-11-25"] {
        let mut proxy = home.proxy("memory");
        let answer = initialize_as(&mut proxy, version, json!({}));
        assert_eq!(
            answer["result"]["protocolVersion"], version,
            "a session asking {version}: {answer}"
        );
        sessions.push(proxy);
    }
    for (n, proxy) in sessions.iter_mut().enumerate() {
        let id = 10 + n as i64;
        proxy.send(&call_tool(id, "read_graph", json!({})));
        let (answer, _) = proxy.recv_response(&json!(id));
        assert!(answer.get("result").is_some(), "session {n}: {answer}");
    }
    assert_eq!(
        server_processes(&home, "server-memory").len(),
        1,
        "one server process for sessions of four revisions"
    );
    let report: Value =
        serde_json::from_str(&home.run(&["status", "--json"]).stdout).expect("status json");
    let host = &daemon_in(&report, "memory")["host"];
    let children = host["children"].as_array().expect("children in status");
    assert_eq!(children.len(), 1, "{host}");
    let versions: Vec<&str> = children[0]["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .filter_map(|s| s["protocol_version"].as_str())
        .collect();
    for version in ["2024-11-05", "2025-06-18", "2025-03-26", "2025-11-25"] {
        assert!(versions.contains(&version), "{version} in {host}");
    }
    let table = home.run(&["status"]).stdout;
    assert!(
        table.contains("1 server process") && table.contains("2024-11-05  client-2024-11-05"),
        "{table}"
    );
}

#[test]
fn a_revision_mcpsm_cannot_bridge_gets_a_server_process_of_its_own() {
    let home = TestHome::new();
    let js = memory_js().display().to_string();
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let env = [("MEMORY_FILE_PATH", file.path().display().to_string())];
    let host = stdio_host(&home, "shared", &["node", &js], &env);
    let mut known = Proxy::spawn(&home, &["--url", &host.url]);
    initialize_as(&mut known, "2025-06-18", json!({}));
    let mut unknown = Proxy::spawn(&home, &["--url", &host.url]);
    let answer = initialize_as(&mut unknown, "2099-01-01", json!({}));
    // What server-memory answers on its own: its newest revision.
    assert_eq!(
        answer["result"]["protocolVersion"], "2025-11-25",
        "{answer}"
    );
    wait_for(DEADLINE, "a second server process", || {
        children_matching(host.pid(), "server-memory").len() == 2
    });
}

#[test]
fn sampling_requests_go_only_to_a_session_that_declared_sampling() {
    let home = TestHome::new();
    let js = everything_js().display().to_string();
    let host = stdio_host(&home, "shared", &["node", &js, "stdio"], &[]);
    let mut without = Proxy::spawn(&home, &["--url", &host.url]);
    let answer = initialize_as(&mut without, "2025-06-18", json!({}));
    assert!(answer.get("result").is_some(), "{answer}");
    let mut with = Proxy::spawn(&home, &["--url", &host.url]);
    let answer = initialize_as(&mut with, "2025-06-18", json!({"sampling": {}}));
    assert!(answer.get("result").is_some(), "{answer}");

    let sample = |id| call_tool(id, "trigger-sampling-request", json!({"prompt": "hi"}));
    without.send(&sample(1));
    let (answer, before) = without.recv_response(&json!(1));
    assert!(
        before
            .iter()
            .all(|m| m["method"] != "sampling/createMessage"),
        "a session without sampling was asked to sample: {before:?}"
    );
    let failed = answer.get("error").is_some() || answer["result"]["isError"] == true;
    assert!(
        failed,
        "the server got the error a client without sampling gives: {answer}"
    );
    assert!(
        with.drain_for(Duration::from_millis(300))
            .iter()
            .all(|m| m["method"] != "sampling/createMessage"),
        "another session's sampling request reached this one"
    );

    with.send(&sample(2));
    let request = with.recv();
    assert_eq!(request["method"], "sampling/createMessage", "{request}");
    with.send(&json!({"jsonrpc": "2.0", "id": request["id"], "result": {
        "role": "assistant",
        "content": {"type": "text", "text": "canned answer"},
        "model": "test", "stopReason": "endTurn"
    }}));
    let (answer, _) = with.recv_response(&json!(2));
    assert!(
        answer.to_string().contains("canned answer"),
        "the sampling answer reached the server: {answer}"
    );
}

#[test]
fn a_hung_server_is_detected_and_restarted_while_its_session_stays_open() {
    let home = TestHome::new();
    let command = counter_server();
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let host = stdio_host_with(&home, &["--health-interval", "300ms"], &command, &[]);
    let port = host.port;
    let mut session = Proxy::spawn(&home, &["--url", &host.url]);
    session.initialize();
    assert_eq!(count(&mut session, 1), 1);
    let hung = children_matching(host.pid(), "py_server.py");
    assert_eq!(hung.len(), 1);
    // SAFETY: kill(2) on a process this test started (through the host).
    unsafe { libc::kill(hung[0] as i32, libc::SIGSTOP) };
    session.send(&call_tool(2, "counter", json!({})));

    // A new session's handshake reaches the server: it fails while the server is hung.
    let mut late = Proxy::spawn(&home, &["--url", &host.url]);
    late.send(&crate::support::initialize_request(0));
    let (answer, _) = late.recv_response(&json!(0));
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("ping")),
        "{answer}"
    );

    let (answer, _) = session.recv_response(&json!(2));
    assert!(
        answer.get("error").is_some(),
        "the call in flight gets an error with its id: {answer}"
    );
    wait_for(DEADLINE, "a new server process", || {
        let now = children_matching(host.pid(), "py_server.py");
        now.len() == 1 && now[0] != hung[0]
    });
    assert_eq!(
        count(&mut session, 3),
        1,
        "the same session goes on with the new process"
    );
    let status = crate::support::managed::try_http(port, "GET", "/mcpsm/status", &[], "")
        .expect("the host's status")
        .json();
    assert_eq!(
        status["children"][0]["health"]["hung_restarts"], 1,
        "{status}"
    );
}

#[test]
fn killed_proxies_isolated_servers_are_stopped_after_the_grace() {
    use crate::support::managed::{kill, listen_port, ManagedHome};
    let home = ManagedHome::new(&stdio_entry(
        "counter",
        &counter_server(),
        listen_port(),
        "sharing = \"isolated\"\nsession-grace = \"1s\"",
    ));
    let mut proxies: Vec<Proxy> = (0..3).map(|_| home.proxy("counter")).collect();
    for proxy in &mut proxies {
        proxy.initialize();
        assert_eq!(count(proxy, 1), 1, "each session has a server of its own");
    }
    assert_eq!(server_processes(&home, "py_server.py").len(), 3);
    for proxy in &proxies {
        kill(proxy.pid() as u32, libc::SIGKILL);
    }
    wait_for(DEADLINE, "the killed sessions' servers to stop", || {
        server_processes(&home, "py_server.py").is_empty()
    });
}

#[test]
fn requests_without_the_daemons_secret_get_401_and_start_nothing() {
    use crate::support::managed::{listen_port, try_http, ManagedHome};
    let port = listen_port();
    let home = ManagedHome::new(&stdio_entry(
        "counter",
        &counter_server(),
        port,
        // No health probes: each would start (and stop) a server of its own meanwhile.
        "sharing = \"isolated\"\nhealth-interval = \"0\"",
    ));
    home.start("counter");
    let before = server_processes(&home, "py_server.py").len();
    let body = crate::support::initialize_request(1).to_string();
    for auth in [None, Some("Bearer not-the-secret"), Some("Bearer ")] {
        let mut headers = vec![
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
        ];
        if let Some(auth) = auth {
            headers.push(("Authorization", auth));
        }
        let answer = try_http(port, "POST", "/mcp", &headers, &body).expect("the host answers");
        assert_eq!(answer.status, 401, "{auth:?}: {answer:?}");
        assert!(
            answer.body.contains("mcpsm proxy --target counter"),
            "{answer:?}"
        );
    }
    let after = server_processes(&home, "py_server.py").len();
    assert!(
        after <= before,
        "no server started: {before} before, {after} after"
    );
    // mcpsm's own proxies carry the secret.
    let mut proxy = home.proxy("counter");
    proxy.initialize();
    assert_eq!(count(&mut proxy, 1), 1);
}

#[test]
fn beyond_max_sessions_a_session_gets_a_clear_error() {
    let home = TestHome::new();
    let command = counter_server();
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let options = [
        "--sharing",
        "isolated",
        "--max-sessions",
        "2",
        "--name",
        "counter",
    ];
    let host = stdio_host_with(&home, &options, &command, &[]);
    let mut first = Proxy::spawn(&home, &["--url", &host.url]);
    first.initialize();
    let mut second = Proxy::spawn(&home, &["--url", &host.url]);
    second.initialize();
    let mut third = Proxy::spawn(&home, &["--url", &host.url]);
    third.send(&crate::support::initialize_request(0));
    let (answer, _) = third.recv_response(&json!(0));
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("max-sessions") && message.contains("counter"),
        "{answer}"
    );
    assert_eq!(children_matching(host.pid(), "py_server.py").len(), 2);
}

#[test]
fn per_project_sessions_share_a_server_per_directory_started_there() {
    use crate::support::managed::{listen_port, ManagedHome};
    let home = ManagedHome::new(&stdio_entry(
        "counter",
        &counter_server(),
        listen_port(),
        "sharing = \"per-project\"",
    ));
    home.start("counter");
    let project_a = tempfile::tempdir().expect("temp dir");
    let project_b = tempfile::tempdir().expect("temp dir");
    let in_dir = |dir: &std::path::Path| {
        let mut command = home.home.mcpsm();
        command
            .args(["proxy", "--target", "counter"])
            .current_dir(dir);
        let mut proxy = Proxy::spawn_command(command);
        proxy.initialize();
        proxy
    };
    let mut a1 = in_dir(project_a.path());
    let mut a2 = in_dir(project_a.path());
    let mut b = in_dir(project_b.path());
    assert_eq!(count(&mut a1, 1), 1);
    assert_eq!(
        count(&mut a2, 1),
        2,
        "sessions of one project share a server"
    );
    assert_eq!(count(&mut b, 1), 1, "another project has its own");
    // (mcpsm's own readiness probe, which has no directory, may add a server elsewhere.)
    let cwds: Vec<std::path::PathBuf> = server_processes(&home, "py_server.py")
        .iter()
        .filter_map(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).ok())
        .collect();
    for project in [&project_a, &project_b] {
        let dir = project.path().canonicalize().expect("canonical");
        assert_eq!(
            cwds.iter().filter(|c| **c == dir).count(),
            1,
            "one server runs in {}: {cwds:?}",
            dir.display()
        );
    }
}

#[test]
fn restart_with_sessions_open_is_prompt() {
    use crate::support::managed::{listen_port, ManagedHome};
    let home = ManagedHome::new(&stdio_entry(
        "counter",
        &counter_server(),
        listen_port(),
        "stop-timeout = \"60s\"",
    ));
    let mut sessions: Vec<Proxy> = (0..2).map(|_| home.proxy("counter")).collect();
    for session in &mut sessions {
        session.initialize();
        count(session, 1);
    }
    let started = std::time::Instant::now();
    home.run(&["restart", "counter"]).assert_success();
    // Without a prompt stop, the open streams would hold the host until the 60 s SIGKILL.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "restart took {:?}",
        started.elapsed()
    );
    for (n, session) in sessions.iter_mut().enumerate() {
        assert!(count(session, 10 + n as i64) >= 1, "session {n} goes on");
    }
}

/// Writes one HTTP/1.1 request on a new connection and returns the connection, to be read
/// as the answer streams in.
fn open_request(
    port: u16,
    method: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::net::TcpStream {
    use std::io::Write as _;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    let mut request = format!("{method} /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).expect("write");
    stream
}

/// Reads from `stream` until `needle` has been seen; returns all that was read.
#[track_caller]
fn read_until(stream: &mut std::net::TcpStream, needle: &str) -> String {
    use std::io::Read as _;
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => panic!(
                "the stream ended before {needle:?}: {}",
                String::from_utf8_lossy(&seen)
            ),
            Ok(n) => seen.extend_from_slice(&buffer[..n]),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[test]
fn a_broken_answer_stream_is_primed_and_resumes_with_last_event_id() {
    let home = TestHome::new();
    let command = counter_server();
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let host = stdio_host(&home, "shared", &command, &[]);
    let json_headers = [
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
    ];
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"}}});
    let answer = crate::support::managed::try_http(
        host.port,
        "POST",
        "/mcp",
        &json_headers,
        &init.to_string(),
    )
    .expect("initialize");
    let session = answer
        .headers
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("mcp-session-id")
                .then(|| value.trim().to_owned())
        })
        .expect("a session id");
    let mut headers = json_headers.to_vec();
    headers.push(("Mcp-Session-Id", &session));
    headers.push(("MCP-Protocol-Version", "2025-11-25"));
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    crate::support::managed::try_http(
        host.port,
        "POST",
        "/mcp",
        &headers,
        &initialized.to_string(),
    )
    .expect("initialized");

    let call = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
        "name": "long_running", "arguments": {"steps": 4, "delay": 0.3},
        "_meta": {"progressToken": "p"}}});
    let mut stream = open_request(host.port, "POST", &headers, &call.to_string());
    let first = read_until(&mut stream, "\"progress\":1");
    assert!(
        first.contains("retry: 1000"),
        "a priming event first: {first}"
    );
    let last_id = first
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("id: "))
        .expect("event ids")
        .trim()
        .to_owned();
    drop(stream);

    let mut resume_headers = headers.clone();
    resume_headers.retain(|(k, _)| *k != "Content-Type");
    resume_headers.push(("Last-Event-ID", &last_id));
    let mut resumed = open_request(host.port, "GET", &resume_headers, "");
    let rest = read_until(&mut resumed, "done 4");
    assert!(
        rest.contains("\"progress\":4") && !rest.contains("\"progress\":1"),
        "the events after {last_id}, then the answer: {rest}"
    );
}

/// A sessionless (2026-07-28) POST to the host; returns the HTTP status and the JSON answer.
fn sessionless(
    port: u16,
    id: i64,
    method: &str,
    params: Value,
    name: Option<&str>,
) -> (u16, Value) {
    let mut params = params;
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {"sampling": {}},
        "io.modelcontextprotocol/clientInfo": {"name": "modern-client", "version": "0"}
    });
    let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", method),
    ];
    if let Some(name) = name {
        headers.push(("Mcp-Name", name));
    }
    let answer =
        crate::support::managed::try_http(port, "POST", "/mcp", &headers, &body.to_string())
            .expect("the host answers");
    let json = if answer.body.trim_start().starts_with('{') {
        answer.json()
    } else {
        // SSE: the last data line carries the response.
        answer
            .body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .find(|m| m.get("id") == Some(&json!(id)))
            .unwrap_or(Value::Null)
    };
    (answer.status, json)
}

#[test]
fn an_old_stdio_server_serves_sessionless_clients_through_the_bridge() {
    let home = TestHome::new();
    let js = everything_js().display().to_string();
    let host = stdio_host(&home, "shared", &["node", &js, "stdio"], &[]);
    let (status, discover) = sessionless(host.port, 1, "server/discover", json!({}), None);
    assert_eq!(status, 200, "{discover}");
    assert_eq!(
        discover["result"]["supportedVersions"],
        json!(["2026-07-28"]),
        "{discover}"
    );
    assert!(
        discover["result"]["capabilities"]["tools"].is_object(),
        "{discover}"
    );

    let echo = json!({"name": "echo", "arguments": {"message": "modern"}});
    let (status, answer) = sessionless(host.port, 2, "tools/call", echo.clone(), Some("echo"));
    assert_eq!(status, 200, "{answer}");
    assert!(answer.to_string().contains("modern"), "{answer}");
    assert_eq!(answer["result"]["resultType"], "complete", "{answer}");

    let (status, refused) = sessionless(host.port, 3, "tools/call", echo, Some("other"));
    assert_eq!(status, 400, "a Mcp-Name that does not match: {refused}");
    assert_eq!(refused["error"]["code"], -32020);
    let get = crate::support::managed::try_http(
        host.port,
        "GET",
        "/mcp",
        &[("MCP-Protocol-Version", "2026-07-28")],
        "",
    )
    .expect("GET");
    assert_eq!(get.status, 405);

    // A server→client request becomes an input-required result; the retry carries the answer.
    let sample = json!({"name": "trigger-sampling-request", "arguments": {"prompt": "hi"}});
    let (status, asked) = sessionless(
        host.port,
        4,
        "tools/call",
        sample.clone(),
        Some("trigger-sampling-request"),
    );
    assert_eq!(status, 200, "{asked}");
    let result = &asked["result"];
    assert_eq!(result["resultType"], "input_required", "{asked}");
    let (key, request) = result["inputRequests"]
        .as_object()
        .and_then(|m| m.iter().next())
        .expect("one input request");
    assert_eq!(request["method"], "sampling/createMessage", "{asked}");
    let mut retry = sample;
    retry["inputResponses"] = json!({key.as_str(): {
        "role": "assistant",
        "content": {"type": "text", "text": "canned answer"},
        "model": "test", "stopReason": "endTurn"
    }});
    retry["requestState"] = result["requestState"].clone();
    let (status, done) = sessionless(
        host.port,
        5,
        "tools/call",
        retry,
        Some("trigger-sampling-request"),
    );
    assert_eq!(status, 200, "{done}");
    assert!(done.to_string().contains("canned answer"), "{done}");
}

#[test]
fn initialize_in_a_batch_is_refused() {
    let home = TestHome::new();
    let command = counter_server();
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let host = stdio_host(&home, "shared", &command, &[]);
    let batch = json!([crate::support::initialize_request(1), {"jsonrpc": "2.0", "id": 2, "method": "ping"}]);
    let answer = crate::support::managed::try_http(
        host.port,
        "POST",
        "/mcp",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
        ],
        &batch.to_string(),
    )
    .expect("the host answers");
    assert_eq!(answer.status, 400, "{answer:?}");
    assert_eq!(answer.json()["error"]["code"], -32600, "{answer:?}");
}
