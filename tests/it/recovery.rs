//! Sessions survive daemon restarts: the proxy reconnects, replays the client's `initialize`
//! and resends what never reached the daemon.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use crate::support::fake::{accepted, json_response, mcp_router, result_for, Fake};
use crate::support::servers::{client_report, everything, everything_on, python_client_spawn};
use crate::support::{call_tool, error_of, request, wait_for, Proxy, TestHome, DEADLINE};

/// A streamable daemon that can forget every session (as a restarted one does) and answer
/// later requests of a forgotten session with `lost` (404, or 400 as real servers do).
struct Forgetful {
    sessions: Mutex<HashSet<String>>,
    next: AtomicUsize,
    forget: AtomicBool,
    lost: StatusCode,
    /// The protocol version answered after the first forget.
    version_after: &'static str,
    /// The sessions of this many first `initialize`s are unknown from the start, as when a
    /// balancer sends a session's next requests to another replica.
    routed_away: AtomicUsize,
}

fn forgetful_daemon(lost: StatusCode, version_after: &'static str) -> (Fake, Arc<Forgetful>) {
    let state = Arc::new(Forgetful {
        sessions: Mutex::new(HashSet::new()),
        next: AtomicUsize::new(0),
        forget: AtomicBool::new(false),
        lost,
        version_after,
        routed_away: AtomicUsize::new(0),
    });
    let daemon = state.clone();
    let fake = Fake::start(mcp_router(move |message: Value, headers: HeaderMap| {
        let state = &daemon;
        if state.forget.swap(false, Ordering::SeqCst) {
            state.sessions.lock().expect("lock").clear();
        }
        if message["method"] == "initialize" {
            let n = state.next.fetch_add(1, Ordering::SeqCst);
            let id = format!("session-{n}");
            if n >= state.routed_away.load(Ordering::SeqCst) {
                state.sessions.lock().expect("lock").insert(id.clone());
            }
            let version = if n == 0 {
                "2025-06-18"
            } else {
                state.version_after
            };
            let result = json!({
                "protocolVersion": version,
                "capabilities": {"tools": {"listChanged": true}, "prompts": {"listChanged": true}},
                "serverInfo": {"name": "forgetful", "version": "0"}
            });
            let mut response = json_response(StatusCode::OK, &result_for(&message, result));
            response.headers_mut().insert(
                "mcp-session-id",
                HeaderValue::from_str(&id).expect("header"),
            );
            return response;
        }
        let session = headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !state.sessions.lock().expect("lock").contains(session) {
            let body = json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32000, "message": "Bad Request: No valid session ID provided"}});
            return json_response(state.lost, &body);
        }
        if message.get("method").is_none()
            || message["method"]
                .as_str()
                .is_some_and(|m| m.starts_with("notifications/"))
        {
            return accepted();
        }
        json_response(
            StatusCode::OK,
            &result_for(&message, json!({"session": session})),
        )
    }));
    (fake, state)
}

fn initialize_params(fake: &Fake, nth: usize) -> Value {
    fake.with_rpc_method("initialize")[nth].json()["params"].clone()
}

#[track_caller]
fn recovers_transparently(lost: StatusCode) {
    let (fake, daemon) = forgetful_daemon(lost, "2025-06-18");
    let home = TestHome::new();
    let mut proxy = Proxy::spawn(
        &home,
        &["--url", &fake.url, "--transport", "streamable-http"],
    );
    proxy.initialize();
    proxy.send(&request(1, "tools/list", json!({})));
    let (first, _) = proxy.recv_response(&json!(1));
    assert_eq!(first["result"]["session"], "session-0");

    daemon.forget.store(true, Ordering::SeqCst);
    proxy.send(&request(2, "tools/list", json!({})));
    let (second, before) = proxy.recv_response(&json!(2));
    assert_eq!(
        second["result"]["session"], "session-1",
        "answered in a new session: {second}"
    );
    let methods: Vec<&str> = before.iter().filter_map(|m| m["method"].as_str()).collect();
    assert!(
        methods.contains(&"notifications/tools/list_changed"),
        "{before:?}"
    );
    assert!(
        methods.contains(&"notifications/prompts/list_changed"),
        "{before:?}"
    );
    assert!(
        before.iter().all(|m| m.get("id").is_none()),
        "the replayed initialize's answer must not reach the client: {before:?}"
    );

    let initializes = fake.with_rpc_method("initialize");
    assert_eq!(initializes.len(), 2);
    assert_eq!(
        initialize_params(&fake, 1),
        initialize_params(&fake, 0),
        "same params replayed"
    );
    assert_ne!(initializes[1].json()["id"], initializes[0].json()["id"]);
    let initialized = fake.with_rpc_method("notifications/initialized");
    assert_eq!(initialized.len(), 2, "initialized is replayed too");
    assert_eq!(initialized[1].header("mcp-session-id"), Some("session-1"));
    proxy.assert_silent_for(Duration::from_millis(300));
}

#[test]
fn a_404_for_the_session_is_recovered_by_replaying_initialize() {
    recovers_transparently(StatusCode::NOT_FOUND);
}

#[test]
fn a_400_that_speaks_of_the_session_is_recovered_by_replaying_initialize() {
    recovers_transparently(StatusCode::BAD_REQUEST);
}

/// A balancer that only hashes the session id (nginx OSS) sends `initialize` round-robin and
/// the session's next requests wherever the id hashes, so a new session is often unknown to
/// its very next request. The proxy makes sessions until one sticks: no call fails however
/// many tries it takes, and nothing is resent into a session already known to be lost.
#[test]
fn sessions_a_hashing_balancer_routes_away_are_made_again_until_one_sticks() {
    let (fake, daemon) = forgetful_daemon(StatusCode::NOT_FOUND, "2025-06-18");
    daemon.routed_away.store(6, Ordering::SeqCst);
    let home = TestHome::new();
    let mut proxy = Proxy::spawn(
        &home,
        &["--url", &fake.url, "--transport", "streamable-http"],
    );
    proxy.initialize();
    for id in 1..=3 {
        proxy.send(&request(id, "tools/list", json!({})));
    }
    let mut answered = Vec::new();
    while answered.len() < 3 {
        let message = proxy.recv();
        if message.get("method").is_some() {
            continue; // the `*/list_changed` after the recovery
        }
        assert_eq!(message["result"]["session"], "session-6", "{message}");
        answered.push(message["id"].as_i64().unwrap_or_default());
    }
    answered.sort_unstable();
    assert_eq!(answered, [1, 2, 3]);
    assert_eq!(fake.with_rpc_method("initialize").len(), 7);
    let initialized: Vec<String> = fake
        .with_rpc_method("notifications/initialized")
        .iter()
        .map(|r| r.header("mcp-session-id").unwrap_or("none").to_owned())
        .collect();
    let expected: Vec<String> = (0..7).map(|n| format!("session-{n}")).collect();
    assert_eq!(initialized, expected, "one initialized per session");
    let calls = fake.with_rpc_method("tools/list");
    assert!(
        calls
            .iter()
            .all(|r| r.header("mcp-session-id") == Some("session-6")),
        "calls went only to the session that stuck: {:?}",
        calls
            .iter()
            .map(|r| r.header("mcp-session-id"))
            .collect::<Vec<_>>()
    );
    proxy.assert_silent_for(Duration::from_millis(300));
}

#[test]
fn a_daemon_back_with_another_protocol_version_gets_clear_errors_and_the_proxy_stays_up() {
    let (fake, daemon) = forgetful_daemon(StatusCode::NOT_FOUND, "2024-11-05");
    let home = TestHome::new();
    let mut proxy = Proxy::spawn(
        &home,
        &["--url", &fake.url, "--transport", "streamable-http"],
    );
    proxy.initialize();
    daemon.forget.store(true, Ordering::SeqCst);
    for id in [1, 2] {
        proxy.send(&request(id, "tools/list", json!({})));
        let (response, _) = proxy.recv_response(&json!(id));
        let message = error_of(&response)["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            message.contains("2024-11-05") && message.contains("2025-06-18"),
            "{message}\n{}",
            proxy.stderr()
        );
    }
    assert!(
        proxy.child.try_wait().expect("try_wait").is_none(),
        "the proxy stays up"
    );
}

#[test]
fn late_client_answers_to_requests_of_a_dead_session_are_dropped() {
    let home = TestHome::new();
    let fake = Fake::start(mcp_router({
        let forgot = Arc::new(AtomicBool::new(false));
        let sessions = Arc::new(AtomicUsize::new(0));
        move |message: Value, headers: HeaderMap| -> Response {
            let session = headers
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            match message["method"].as_str() {
                Some("initialize") => {
                    let n = sessions.fetch_add(1, Ordering::SeqCst);
                    let mut response = json_response(
                        StatusCode::OK,
                        &result_for(
                            &message,
                            json!({"protocolVersion": "2025-06-18", "capabilities": {}, "serverInfo": {"name": "f", "version": "0"}}),
                        ),
                    );
                    response.headers_mut().insert(
                        "mcp-session-id",
                        HeaderValue::from_str(&format!("s{n}")).expect("header"),
                    );
                    response
                }
                Some("ask") => {
                    // A server→client request rides the first session's answer stream.
                    crate::support::fake::sse_response(vec![
                        crate::support::fake::event(
                            &json!({"jsonrpc": "2.0", "id": "srv-1", "method": "roots/list"}),
                        ),
                        crate::support::fake::event(&result_for(&message, json!({}))),
                    ])
                }
                Some(m) if m.starts_with("notifications/") => accepted(),
                None => accepted(),
                _ if session == "s0" && !forgot.swap(true, Ordering::SeqCst) => json_response(
                    StatusCode::NOT_FOUND,
                    &json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32001, "message": "Session not found"}}),
                ),
                _ => json_response(
                    StatusCode::OK,
                    &result_for(&message, json!({"session": session})),
                ),
            }
        }
    }));
    let mut proxy = Proxy::spawn(
        &home,
        &["--url", &fake.url, "--transport", "streamable-http"],
    );
    proxy.initialize();
    proxy.send(&request(1, "ask", json!({})));
    let (_, before) = proxy.recv_response(&json!(1));
    assert_eq!(before[0]["method"], "roots/list");
    // The daemon restarts (its first session is gone) before the client answers.
    proxy.send(&request(2, "tools/list", json!({})));
    let (answer, _) = proxy.recv_response(&json!(2));
    assert_eq!(answer["result"]["session"], "s1");
    proxy.send(&json!({"jsonrpc": "2.0", "id": "srv-1", "result": {"roots": []}}));
    proxy.send(&request(3, "tools/list", json!({})));
    proxy.recv_response(&json!(3));
    assert!(
        fake.requests().iter().all(|r| r.json()["id"] != "srv-1"),
        "the answer to the dead session's request must not be sent to the new session"
    );
}

#[test]
fn sessionless_requests_wait_for_the_daemon_to_come_up() {
    let port = crate::support::free_port();
    let home = TestHome::new();
    let url = format!("http://127.0.0.1:{port}/mcp");
    let mut proxy = Proxy::spawn(&home, &["--url", &url, "--transport", "streamable-http"]);
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}});
    proxy.send(&request(
        1,
        "tools/call",
        json!({"name": "echo", "arguments": {}, "_meta": meta}),
    ));
    std::thread::sleep(Duration::from_millis(300)); // the daemon is down for a while
    let fake = Fake::start_on(
        port,
        mcp_router(|message, _| {
            json_response(
                StatusCode::OK,
                &result_for(&message, json!({"resultType": "complete"})),
            )
        }),
    );
    let (response, _) = proxy.recv_response(&json!(1));
    assert_eq!(response["result"]["resultType"], "complete");
    assert_eq!(
        fake.with_http_method("POST")[0].header("mcp-method"),
        Some("tools/call")
    );
}

#[test]
fn recovery_gives_up_after_the_reconnect_timeout_with_a_clear_error() {
    let server = everything("streamableHttp");
    let home = TestHome::new();
    let mut proxy = Proxy::spawn(&home, &["--url", &server.url, "--reconnect-timeout", "1s"]);
    proxy.initialize();
    drop(server);
    proxy.send(&call_tool(1, "echo", json!({"message": "x"})));
    let (response, _) = proxy.recv_response(&json!(1));
    let message = error_of(&response)["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("did not come back within 1s"), "{message}");
    assert!(
        proxy.child.try_wait().expect("try_wait").is_none(),
        "the proxy stays up"
    );
}

/// Runs py_client `scenario` (which stops at a checkpoint) through `mcpsm proxy PROXY_ARGS`,
/// runs `restart` at the checkpoint, and returns the client's report.
fn python_session_through(
    home: &TestHome,
    scenario: &str,
    proxy_args: &[&str],
    restart: impl FnOnce(),
) -> Value {
    let go = home.path().join("go");
    let go_arg = go.display().to_string();
    let client = python_client_spawn(home, &[scenario, &go_arg], proxy_args);
    let waiting = home.path().join("go.waiting");
    wait_for(DEADLINE, "the client to reach its checkpoint", || {
        waiting.exists()
    });
    restart();
    std::fs::write(&go, "").expect("write go");
    let output = client.join().expect("client thread");
    client_report(&[scenario], output)
}

/// The same, through a proxy to server-everything on a fixed port that the test restarts.
fn python_session_through_restart(scenario: &str, mode: &str) -> Value {
    let port = crate::support::free_port();
    let server = everything_on(mode, port);
    let home = TestHome::new();
    let url = server.url.clone();
    let mut restarted = None;
    let report = python_session_through(&home, scenario, &["--url", &url], || {
        drop(server);
        restarted = Some(everything_on(mode, port));
    });
    drop(restarted);
    report
}

#[test]
fn python_session_survives_a_streamable_daemon_restart_between_calls() {
    let report = python_session_through_restart("survive-restart", "streamableHttp");
    assert_eq!(report["ok"], true, "{report}");
}

#[test]
fn python_session_survives_a_legacy_sse_daemon_restart_between_calls() {
    let report = python_session_through_restart("survive-restart", "sse");
    assert_eq!(report["ok"], true, "{report}");
}

#[test]
fn a_call_in_flight_when_the_daemon_dies_gets_an_error_and_the_next_call_works() {
    let report = python_session_through_restart("in-flight-restart", "streamableHttp");
    let result = &report["results"]["in-flight-restart"];
    assert_eq!(result["long_call"], "error", "{report}");
    let message = result["message"].as_str().unwrap_or_default();
    assert!(message.contains("may or may not have run"), "{message}");
}

#[test]
fn eight_sessions_recover_and_every_request_gets_exactly_one_answer() {
    let port = crate::support::free_port();
    let server = everything_on("streamableHttp", port);
    let home = TestHome::new();
    let mut proxies: Vec<Proxy> = (0..8)
        .map(|_| Proxy::spawn(&home, &["--url", &server.url]))
        .collect();
    for proxy in &mut proxies {
        proxy.initialize();
        proxy.send(&call_tool(1, "echo", json!({"message": "before"})));
        proxy.recv_response(&json!(1));
    }
    drop(server);
    // Requests sent while the daemon is down wait for it.
    for (n, proxy) in proxies.iter_mut().enumerate() {
        for id in 10..15 {
            proxy.send(&call_tool(
                id,
                "echo",
                json!({"message": format!("{n}-{id}")}),
            ));
        }
    }
    let _restarted = everything_on("streamableHttp", port);
    for (n, proxy) in proxies.iter_mut().enumerate() {
        let mut answers: BTreeMap<i64, Value> = BTreeMap::new();
        while answers.len() < 5 {
            let message = proxy.recv();
            let Some(id) = message.get("id").and_then(Value::as_i64) else {
                continue; // notifications, list_changed
            };
            if message.get("method").is_some() {
                continue; // a server request
            }
            assert!(
                answers.insert(id, message).is_none(),
                "session {n}: id {id} answered twice"
            );
        }
        for (id, answer) in &answers {
            let text = answer["result"]["content"][0]["text"]
                .as_str()
                .unwrap_or_default();
            assert_eq!(text, format!("Echo: {n}-{id}"), "session {n}: {answer}");
        }
    }
    for (n, proxy) in proxies.iter_mut().enumerate() {
        let extra: Vec<Value> = proxy
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

mod managed {
    //! The same through the manager: it restarts the daemon, the proxy asks it to.

    use std::time::Duration;

    use serde_json::json;

    use super::python_session_through;
    use crate::support::managed::{everything_entry, kill, listen_port, ManagedHome};
    use crate::support::{call_tool, error_of, wait_for, DEADLINE};

    fn everything_home() -> ManagedHome {
        ManagedHome::new(&everything_entry(
            "everything",
            "streamableHttp",
            listen_port(),
        ))
    }

    #[test]
    fn a_session_survives_kill_9_of_its_managed_daemon_between_calls() {
        let home = everything_home();
        let report = python_session_through(
            &home.home,
            "survive-restart",
            &["--target", "everything"],
            || {
                kill(home.daemon_pid("everything"), libc::SIGKILL);
            },
        );
        assert_eq!(report["ok"], true, "{report}");
        let daemon = home.wait_daemon("everything", DEADLINE, "counting the recovery", |d| {
            d["sessions_recovered"].as_u64() >= Some(1)
        });
        assert!(daemon["last_recovery"].is_u64(), "{daemon}");
        let status = home.run(&["status"]);
        assert!(
            status.stdout.contains("sessions recovered: "),
            "{}",
            status.stdout
        );
    }

    #[test]
    fn a_call_in_flight_when_the_managed_daemon_is_killed_fails_and_the_next_works() {
        let home = everything_home();
        let report = python_session_through(
            &home.home,
            "in-flight-restart",
            &["--target", "everything"],
            || {
                kill(home.daemon_pid("everything"), libc::SIGKILL);
            },
        );
        let result = &report["results"]["in-flight-restart"];
        assert_eq!(result["long_call"], "error", "{report}");
    }

    #[test]
    fn a_session_survives_mcpsm_restart() {
        let home = everything_home();
        let report = python_session_through(
            &home.home,
            "survive-restart",
            &["--target", "everything"],
            || {
                home.run(&["restart", "everything"]).assert_success();
            },
        );
        assert_eq!(report["ok"], true, "{report}");
    }

    #[test]
    fn a_daemon_gone_for_good_gets_an_error_naming_its_log_within_the_reconnect_timeout() {
        let port = listen_port();
        let home = ManagedHome::new(&everything_entry("everything", "streamableHttp", port));
        let mut proxy = crate::support::Proxy::spawn(
            &home.home,
            &["--target", "everything", "--reconnect-timeout", "3s"],
        );
        proxy.initialize();
        // The daemon's command disappears, then the daemon dies.
        home.home.write_registry(&format!(
            "[manager]\nport = {}\n\n[daemons.everything]\ncommand = \"/nonexistent/mcp-server\"\nport = {port}\n",
            home.manager_port
        ));
        kill(home.daemon_pid("everything"), libc::SIGKILL);
        wait_for(DEADLINE, "the daemon to fail", || {
            home.api_status().is_some_and(|s| {
                crate::support::managed::daemon_in(&s, "everything")["state"] != "ready"
            })
        });
        let started = std::time::Instant::now();
        proxy.send(&call_tool(7, "echo", json!({"message": "x"})));
        let (response, _) = proxy.recv_response(&json!(7));
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "answered within the reconnect timeout"
        );
        let message = error_of(&response)["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let log = home.log_file("everything").display().to_string();
        assert!(message.contains(&log), "names the log {log}: {message}");
        assert!(message.contains("/nonexistent/mcp-server"), "{message}");
    }
}
