//! Streamable HTTP behaviour and faults, against in-process fake daemons.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Router;
use serde_json::{json, Value};

use crate::support::fake::{
    accepted, event, json_response, mcp_router, mcp_routes, result_for, sse_response, Chunk, Fake,
};
use crate::support::{call_tool, error_of, request, Proxy, TestHome};

fn proxy_to(fake: &Fake, home: &TestHome) -> Proxy {
    Proxy::spawn(
        home,
        &["--url", &fake.url, "--transport", "streamable-http"],
    )
}

/// A fake that answers initialize with a session and everything else through `other`.
fn with_session<F>(
    other: F,
) -> impl Fn(Value, HeaderMap) -> Response + Clone + Send + Sync + 'static
where
    F: Fn(Value, HeaderMap) -> Response + Clone + Send + Sync + 'static,
{
    move |message: Value, headers: HeaderMap| match message["method"].as_str() {
        Some("initialize") => {
            let mut response = json_response(
                StatusCode::OK,
                &result_for(
                    &message,
                    json!({"protocolVersion": "2025-06-18", "capabilities": {}, "serverInfo": {"name": "fake", "version": "0"}}),
                ),
            );
            response
                .headers_mut()
                .insert("mcp-session-id", HeaderValue::from_static("sess-1"));
            response
        }
        Some(m) if m.starts_with("notifications/") => accepted(),
        _ => other(message, headers),
    }
}

#[test]
fn response_arrives_after_priming_event_close_and_resume() {
    let router = Router::new().route(
        "/mcp",
        mcp_routes(|message, _| {
            let _ = message;
            sse_response(vec![Chunk::Text("id: ev-1\nretry: 300\ndata: \n\n".into())])
        })
        .get(|headers: HeaderMap| async move {
            match headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
                Some("ev-1") => sse_response(vec![
                    Chunk::Text("id: ev-2\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"resumed\":true}}\n\n".into()),
                ]),
                _ => Response::builder()
                    .status(StatusCode::BAD_REQUEST)
                    .body(axum::body::Body::from("expected Last-Event-ID: ev-1"))
                    .expect("response"),
            }
        }),
    );
    let fake = Fake::start(router);
    let home = TestHome::new();
    let mut proxy = proxy_to(&fake, &home);
    proxy.send(&call_tool(7, "slow", json!({})));
    let (response, _) = proxy.recv_response(&json!(7));
    assert_eq!(response["result"]["resumed"], true, "{response}");

    let post = &fake.with_http_method("POST")[0];
    let gets = fake.with_http_method("GET");
    assert_eq!(gets.len(), 1, "one resumption GET");
    assert_eq!(gets[0].header("last-event-id"), Some("ev-1"));
    assert_eq!(gets[0].header("accept"), Some("text/event-stream"));
    assert!(
        gets[0].at.duration_since(post.at) >= Duration::from_millis(300),
        "the proxy must wait the server's retry (300 ms) before resuming"
    );
}

#[test]
fn stream_dying_mid_response_answers_the_request_with_an_error() {
    let fake = Fake::start(mcp_router(|_, _| {
        sse_response(vec![
            event(
                &json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": "p", "progress": 1}}),
            ),
            Chunk::Pause(Duration::from_millis(50)),
            Chunk::Break,
        ])
    }));
    let home = TestHome::new();
    let mut proxy = proxy_to(&fake, &home);
    proxy.send(&call_tool(41, "dies", json!({})));
    let (response, before) = proxy.recv_response(&json!(41));
    assert_eq!(
        before.len(),
        1,
        "the progress notification is forwarded first"
    );
    let error = error_of(&response);
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains("may or may not have run"), "{message}");
    assert!(message.contains(&fake.url), "names the upstream: {message}");
    proxy.assert_silent_for(Duration::from_millis(300));
}

#[test]
fn http_error_with_a_jsonrpc_body_is_answered_with_the_request_id() {
    let fake = Fake::start(mcp_router(|_, _| {
        json_response(
            StatusCode::BAD_REQUEST,
            &json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32602, "message": "bad params here"}}),
        )
    }));
    let home = TestHome::new();
    let mut proxy = proxy_to(&fake, &home);
    proxy.send(&call_tool(5, "x", json!({})));
    let (response, _) = proxy.recv_response(&json!(5));
    let error = error_of(&response);
    assert_eq!(error["code"], -32602);
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("bad params here") && message.contains("HTTP 400"),
        "{message}"
    );
}

#[test]
fn http_error_without_a_body_names_the_status_and_a_hint() {
    let fake = Fake::start(mcp_router(|_, _| {
        Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body(axum::body::Body::from("boom"))
            .expect("response")
    }));
    let home = TestHome::new();
    let mut proxy = proxy_to(&fake, &home);
    proxy.send(&request(6, "tools/list", json!({})));
    let (response, _) = proxy.recv_response(&json!(6));
    let message = error_of(&response)["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("HTTP 500: boom"), "{message}");
    assert!(message.contains("hint:"), "{message}");
}

#[test]
fn non_json_sse_data_is_skipped_and_the_response_still_arrives() {
    let fake = Fake::start(mcp_router(|message, _| {
        sse_response(vec![
            Chunk::Text("data: this is not json\n\n".into()),
            event(&result_for(&message, json!({"ok": 1}))),
        ])
    }));
    let home = TestHome::new();
    let mut proxy = proxy_to(&fake, &home);
    proxy.send(&request(8, "tools/list", json!({})));
    let (response, before) = proxy.recv_response(&json!(8));
    assert!(before.is_empty(), "garbage is not forwarded: {before:?}");
    assert_eq!(response["result"]["ok"], 1);
}

#[test]
fn non_json_sse_data_alone_ends_in_an_error_not_a_hang() {
    let fake = Fake::start(mcp_router(|_, _| {
        sse_response(vec![Chunk::Text("data: {{{{\n\n".into())])
    }));
    let home = TestHome::new();
    let mut proxy = proxy_to(&fake, &home);
    proxy.send(&request(9, "tools/list", json!({})));
    let (response, _) = proxy.recv_response(&json!(9));
    error_of(&response);
}

#[test]
fn a_slow_request_does_not_hold_back_others() {
    let fake = Fake::start(mcp_router(|message, _| {
        if message["method"] == "slow" {
            sse_response(vec![
                Chunk::Pause(Duration::from_secs(2)),
                event(&result_for(&message, json!({"slow": true}))),
            ])
        } else {
            json_response(StatusCode::OK, &result_for(&message, json!({})))
        }
    }));
    let home = TestHome::new();
    let mut proxy = proxy_to(&fake, &home);
    proxy.send(&request(1, "slow", json!({})));
    proxy.send(&request(2, "ping", json!({})));
    let first = proxy.recv();
    assert_eq!(first["id"], 2, "ping overtakes the slow request: {first}");
    let second = proxy.recv();
    assert_eq!(second["id"], 1);
    assert_eq!(second["result"]["slow"], true);
}

#[test]
fn session_headers_go_on_every_later_request_and_delete_ends_the_session() {
    let fake = Fake::start(mcp_router(with_session(|message, _| {
        json_response(StatusCode::OK, &result_for(&message, json!({"tools": []})))
    })));
    let home = TestHome::new();
    let mut proxy = proxy_to(&fake, &home);
    proxy.initialize();
    proxy.send(&request(1, "tools/list", json!({})));
    let (response, _) = proxy.recv_response(&json!(1));
    assert!(response["result"]["tools"].is_array());
    crate::support::wait_for(Duration::from_secs(10), "the GET stream attempt", || {
        !fake.with_http_method("GET").is_empty()
    });
    proxy.close_stdin();
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)), Some(0));

    let requests = fake.requests();
    let initialize = &requests[0];
    assert_eq!(initialize.rpc_method().as_deref(), Some("initialize"));
    assert!(initialize.header("mcp-session-id").is_none());
    let accept = initialize.header("accept").unwrap_or_default();
    assert!(
        accept.contains("application/json") && accept.contains("text/event-stream"),
        "{accept}"
    );
    assert_eq!(initialize.header("content-type"), Some("application/json"));
    for later in &requests[1..] {
        assert_eq!(
            later.header("mcp-session-id"),
            Some("sess-1"),
            "{} {}",
            later.method,
            later.body
        );
        assert_eq!(
            later.header("mcp-protocol-version"),
            Some("2025-06-18"),
            "{} {}",
            later.method,
            later.body
        );
    }
    assert_eq!(
        fake.with_http_method("GET").len(),
        1,
        "405 means no GET stream: not retried"
    );
    assert_eq!(fake.with_http_method("DELETE").len(), 1, "DELETE at exit");
}

#[test]
fn get_stream_delivers_server_initiated_messages() {
    let router = Router::new().route(
        "/mcp",
        mcp_routes(with_session(|message, _| {
            json_response(StatusCode::OK, &result_for(&message, json!({})))
        }))
        .get(|| async {
            sse_response(vec![
                event(&json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})),
                event(&json!({"jsonrpc": "2.0", "id": "srv-1", "method": "roots/list"})),
                Chunk::Pause(Duration::from_secs(60)),
            ])
        }),
    );
    let fake = Fake::start(router);
    let home = TestHome::new();
    let mut proxy = proxy_to(&fake, &home);
    proxy.initialize();
    let notification = proxy.recv();
    assert_eq!(notification["method"], "notifications/tools/list_changed");
    let server_request = proxy.recv();
    assert_eq!(server_request["method"], "roots/list");
    // The client's answer to a server→client request is POSTed and accepted.
    proxy.send(&json!({"jsonrpc": "2.0", "id": "srv-1", "result": {"roots": []}}));
    crate::support::wait_for(
        Duration::from_secs(10),
        "the roots answer to be POSTed",
        || fake.requests().iter().any(|r| r.json()["id"] == "srv-1"),
    );
}

#[test]
fn sessionless_requests_carry_method_and_name_headers() {
    let fake = Fake::start(mcp_router(|message, _| {
        json_response(
            StatusCode::OK,
            &result_for(&message, json!({"resultType": "complete"})),
        )
    }));
    let home = TestHome::new();
    let mut proxy = proxy_to(&fake, &home);
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}});
    proxy.send(&request(
        1,
        "tools/call",
        json!({"name": "echo", "arguments": {}, "_meta": meta}),
    ));
    proxy.recv_response(&json!(1));
    proxy.send(&request(
        2,
        "resources/read",
        json!({"uri": "file:///a b/ü.txt", "_meta": meta}),
    ));
    proxy.recv_response(&json!(2));
    let posts = fake.with_http_method("POST");
    assert_eq!(posts[0].header("mcp-method"), Some("tools/call"));
    assert_eq!(posts[0].header("mcp-name"), Some("echo"));
    assert_eq!(posts[0].header("mcp-protocol-version"), Some("2026-07-28"));
    assert!(posts[0].header("mcp-session-id").is_none());
    assert_eq!(posts[1].header("mcp-method"), Some("resources/read"));
    let encoded = posts[1].header("mcp-name").unwrap_or_default();
    assert!(
        encoded.starts_with("=?base64?") && encoded.ends_with("?="),
        "{encoded}"
    );
}

#[test]
fn batch_arrays_become_one_post_per_message() {
    let fake = Fake::start(mcp_router(|message, _| {
        json_response(StatusCode::OK, &result_for(&message, json!({})))
    }));
    let home = TestHome::new();
    let mut proxy = proxy_to(&fake, &home);
    proxy.send(&json!([
        {"jsonrpc": "2.0", "id": 1, "method": "ping"},
        {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    ]));
    let mut ids = vec![proxy.recv()["id"].clone(), proxy.recv()["id"].clone()];
    ids.sort_by_key(|v| v.as_i64());
    assert_eq!(ids, [json!(1), json!(2)]);
    let posts = fake.with_http_method("POST");
    assert_eq!(posts.len(), 2);
    assert!(
        posts.iter().all(|p| p.json().is_object()),
        "each POST carries one object"
    );
}

#[test]
fn a_session_that_stays_lost_is_answered_with_the_request_id() {
    let fake = Fake::start(mcp_router(with_session(|_, _| {
        json_response(
            StatusCode::NOT_FOUND,
            &json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32001, "message": "Session not found"}}),
        )
    })));
    let home = TestHome::new();
    let mut proxy = proxy_to(&fake, &home);
    proxy.initialize();
    proxy.send(&request(3, "tools/list", json!({})));
    let (response, _) = proxy.recv_response(&json!(3));
    let message = error_of(&response)["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains("no longer knows this MCP session"),
        "{message}"
    );
}

#[test]
fn an_oversized_message_from_the_daemon_is_refused_with_the_id() {
    let fake = Fake::start(mcp_router(|message, _| {
        let big = "x".repeat(5000);
        sse_response(vec![event(&result_for(&message, json!({"big": big})))])
    }));
    let home = TestHome::new();
    let mut proxy = Proxy::spawn(&home, &["--url", &fake.url, "--max-message-bytes", "1000"]);
    proxy.send(&request(4, "tools/list", json!({})));
    let (response, _) = proxy.recv_response(&json!(4));
    let message = error_of(&response)["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("1000 bytes"), "{message}");
}

#[test]
fn json_responses_are_forwarded_byte_for_byte_in_meaning() {
    let fake = Fake::start(mcp_router(|message, _| {
        let body = format!(
            "{{\n  \"jsonrpc\": \"2.0\",\n  \"id\": {},\n  \"result\": {{\"unknown\": {{\"field\": [1, 2.5e3, \"\\u00e9\\n\"]}}}}\n}}",
            message["id"]
        );
        Response::builder()
            .header("content-type", "application/json; charset=utf-8")
            .body(axum::body::Body::from(body))
            .expect("response")
    }));
    let home = TestHome::new();
    let mut proxy = proxy_to(&fake, &home);
    proxy.send(&request(12, "x/custom", json!({"anything": true})));
    let (response, _) = proxy.recv_response(&json!(12));
    assert_eq!(
        response["result"]["unknown"]["field"],
        json!([1, 2500.0, "é\n"])
    );
    assert_eq!(
        fake.with_http_method("POST")[0].json()["params"]["anything"],
        true
    );
}

#[test]
fn an_empty_200_to_a_request_is_answered_with_an_error_at_once() {
    let fake = Fake::start(mcp_router(|_, _| {
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(axum::body::Body::empty())
            .expect("response")
    }));
    let home = TestHome::new();
    let mut proxy = proxy_to(&fake, &home);
    proxy.send(&call_tool(11, "x", json!({})));
    let (response, _) = proxy.recv_response(&json!(11));
    let message = error_of(&response)["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("HTTP 200 and no response") && message.contains(&fake.url),
        "{message}"
    );
    assert!(message.contains("hint:"), "{message}");
    proxy.assert_silent_for(Duration::from_millis(200));
}

#[test]
fn a_response_for_another_id_is_answered_with_an_error_at_once() {
    let fake = Fake::start(mcp_router(|_, _| {
        json_response(
            StatusCode::OK,
            &json!({"jsonrpc": "2.0", "id": "someone-else", "result": {}}),
        )
    }));
    let home = TestHome::new();
    let mut proxy = proxy_to(&fake, &home);
    proxy.send(&call_tool(12, "x", json!({})));
    let (response, before) = proxy.recv_response(&json!(12));
    assert!(
        before.is_empty(),
        "nothing else reaches the client: {before:?}"
    );
    let message = error_of(&response)["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("another id") && message.contains("someone-else"),
        "{message}"
    );
    proxy.send(&request(13, "ping", json!({})));
    let (next, _) = proxy.recv_response(&json!(13));
    error_of(&next);
}

/// 400 calls written at once to a proxy that may open only 128 files: before, one socket per
/// call ran out of descriptors, and each EMFILE was taken for a dead daemon (recoveries,
/// re-initialize, list_changed, 30 s). Now the connections are bounded and every call is
/// answered by the daemon, with no recovery.
#[test]
fn pipelined_calls_under_a_low_file_limit_complete_without_recovery() {
    const CALLS: i64 = 400;
    let fake = Fake::start(mcp_router(with_session(|message, _| {
        sse_response(vec![
            Chunk::Pause(Duration::from_millis(100)),
            event(&result_for(&message, json!({"content": []}))),
        ])
    })));
    let home = TestHome::new();
    let mut command = home.command("sh");
    command.args([
        "-c",
        r#"ulimit -n 128 && exec "$0" proxy --url "$1" --transport streamable-http"#,
        &crate::support::bin().display().to_string(),
        &fake.url,
    ]);
    let mut proxy = Proxy::spawn_command(command);
    proxy.initialize();
    let mut batch = Vec::new();
    for id in 1..=CALLS {
        let mut line = serde_json::to_vec(&call_tool(id, "work", json!({}))).expect("json");
        line.push(b'\n');
        batch.extend_from_slice(&line);
    }
    let started = std::time::Instant::now();
    proxy.send_raw(&batch);
    let mut answered = std::collections::BTreeSet::new();
    while answered.len() < CALLS as usize {
        let message = proxy.recv();
        assert!(
            message.get("method").is_none(),
            "no notification (a recovery sends list_changed): {message}"
        );
        assert!(message.get("result").is_some(), "{message}");
        let id = message["id"].as_i64().expect("numeric id");
        assert!(answered.insert(id), "id {id} answered twice");
    }
    eprintln!(
        "{CALLS} pipelined calls under ulimit -n 128: {:?}",
        started.elapsed()
    );
    let stderr = proxy.stderr();
    assert!(
        !stderr.contains("went away") && !stderr.contains("reconnecting"),
        "no recovery:\n{stderr}"
    );
    assert_eq!(
        fake.with_rpc_method("initialize").len(),
        1,
        "no re-initialize"
    );
}

#[test]
fn a_legacy_endpoint_on_another_origin_is_refused_and_gets_no_headers() {
    // The SSE stream names a POST endpoint on another server: the daemon's headers (and OAuth
    // tokens) must not follow it there.
    let elsewhere = Fake::start(Router::new().fallback(|| async { accepted() }));
    let target = format!("{}/message?sessionId=abc", elsewhere.url);
    let legacy = Fake::start(Router::new().route(
        "/sse",
        axum::routing::get(move || {
            let target = target.clone();
            async move {
                sse_response(vec![
                    Chunk::Text(format!("event: endpoint\ndata: {target}\n\n")),
                    Chunk::Pause(Duration::from_secs(30)),
                ])
            }
        }),
    ));
    let home = TestHome::new();
    let url = format!("{}/sse", legacy.url.trim_end_matches("/mcp"));
    let mut proxy = Proxy::spawn(
        &home,
        &[
            "--url",
            &url,
            "--transport",
            "sse",
            "-H",
            "Authorization: Bearer keep-me-home",
        ],
    );
    proxy.send(&crate::support::initialize_request(1));
    let (answer, _) = proxy.recv_response(&json!(1));
    let message = error_of(&answer)["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("another origin"), "{answer}");
    assert!(
        elsewhere.requests().is_empty(),
        "nothing was sent to the other origin"
    );
}
