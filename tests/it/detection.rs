//! `--transport auto` (the default with `--url`) and the 2026-07-28 wire, against in-process
//! fake daemons: detection holds nothing back and never delays the exit at stdin EOF, and
//! every request of a 2026-07-28 connection carries `Mcp-Method`/`Mcp-Name`, however the
//! version was agreed.
//!
//! Timing-shaped behaviour is asserted by order and by deadlines far from the real figures
//! (a request that was held back would come after the slow one; an exit that waited for a
//! never-ending request would not come at all).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Router;
use serde_json::{json, Value};

use crate::support::fake::{
    accepted, event, json_response, mcp_router, result_for, sse_response, Chunk, Fake,
};
use crate::support::{request, Proxy, TestHome};

/// A proxy with no `--transport`: `auto`.
fn auto_proxy(fake: &Fake, home: &TestHome) -> Proxy {
    Proxy::spawn(home, &["--url", &fake.url])
}

fn meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {}
    })
}

/// A 2026-07-28 request: its version and capabilities in `_meta`.
fn sessionless(id: i64, method: &str, mut params: Value) -> Value {
    params["_meta"] = meta();
    request(id, method, params)
}

/// Answers `slow` and `initialize` after `delay` (the whole answer, headers included, comes
/// late: a JSON answer, as JSON-response servers give), `listen` with a stream that never
/// ends, and everything else at once.
fn slow_daemon(delay: Duration) -> Fake {
    let router = Router::new().route(
        "/mcp",
        axum::routing::post(move |body: Bytes| async move {
            let message: Value = serde_json::from_slice(&body).unwrap_or_default();
            match message["method"].as_str() {
                Some("slow" | "initialize") => {
                    tokio::time::sleep(delay).await;
                    json_response(StatusCode::OK, &result_for(&message, json!({"slow": true})))
                }
                Some("subscriptions/listen") => sse_response(vec![
                    event(&json!({"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged"})),
                    Chunk::Pause(Duration::from_secs(600)),
                ]),
                _ if message.get("id").is_none() => accepted(),
                _ => json_response(
                    StatusCode::OK,
                    &result_for(&message, json!({"resultType": "complete", "tools": []})),
                ),
            }
        })
        .get(|| async { StatusCode::METHOD_NOT_ALLOWED })
        .delete(|| async { StatusCode::OK }),
    );
    Fake::start(router)
}

#[test]
fn auto_answers_a_request_sent_while_a_slow_first_request_is_open() {
    let fake = slow_daemon(Duration::from_secs(3));
    let home = TestHome::new();
    let mut proxy = auto_proxy(&fake, &home);
    proxy.send(&sessionless(1, "slow", json!({})));
    crate::support::wait_for(
        Duration::from_secs(10),
        "the slow request to arrive",
        || !fake.with_rpc_method("slow").is_empty(),
    );
    proxy.send(&sessionless(2, "tools/list", json!({})));
    let first = proxy.recv();
    assert_eq!(
        first["id"], 2,
        "tools/list is answered before the slow first request: {first}"
    );
    assert!(first["result"]["tools"].is_array(), "{first}");
    let second = proxy.recv();
    assert_eq!(second["id"], 1, "{second}");
    assert_eq!(second["result"]["slow"], true, "{second}");
}

#[test]
fn auto_answers_requests_while_a_never_ending_subscriptions_listen_is_open() {
    let fake = slow_daemon(Duration::from_secs(3));
    let home = TestHome::new();
    let mut proxy = auto_proxy(&fake, &home);
    proxy.send(&sessionless(
        1,
        "subscriptions/listen",
        json!({"notifications": {"toolsListChanged": true}}),
    ));
    let acknowledged = proxy.recv();
    assert_eq!(
        acknowledged["method"], "notifications/subscriptions/acknowledged",
        "{acknowledged}"
    );
    for id in 2..5 {
        proxy.send(&sessionless(id, "tools/list", json!({})));
        let (response, _) = proxy.recv_response(&json!(id));
        assert!(response["result"]["tools"].is_array(), "{response}");
    }
}

#[test]
fn auto_proxy_exits_within_the_eof_bound_with_a_never_ending_request_open() {
    // README: requests in flight at stdin EOF get up to 5 s; then a DELETE of at most 0.5 s.
    let fake = slow_daemon(Duration::from_secs(600));
    let home = TestHome::new();
    let mut proxy = auto_proxy(&fake, &home);
    proxy.send(&sessionless(1, "slow", json!({})));
    crate::support::wait_for(
        Duration::from_secs(10),
        "the slow request to arrive",
        || !fake.with_rpc_method("slow").is_empty(),
    );
    proxy.close_stdin();
    assert_eq!(proxy.wait_exit(Duration::from_secs(9)), Some(0));
}

#[test]
fn auto_proxy_exits_at_eof_with_only_subscriptions_listen_open() {
    let fake = slow_daemon(Duration::from_secs(600));
    let home = TestHome::new();
    let mut proxy = auto_proxy(&fake, &home);
    proxy.send(&sessionless(1, "subscriptions/listen", json!({})));
    proxy.recv(); // acknowledged: the stream is open
    proxy.send(&sessionless(2, "tools/list", json!({})));
    proxy.recv_response(&json!(2));
    proxy.close_stdin();
    // A listen stream never ends by itself: it is not waited for (a slow request would be,
    // up to 5 s; this bound is below that plus the DELETE).
    assert_eq!(proxy.wait_exit(Duration::from_secs(4)), Some(0));
}

#[test]
fn the_proxy_exits_within_the_eof_bound_while_initialize_is_unanswered() {
    // `initialize` is sent before anything else is read: EOF must end the wait all the same.
    let fake = slow_daemon(Duration::from_secs(600));
    let home = TestHome::new();
    let mut proxy = auto_proxy(&fake, &home);
    proxy.send(&crate::support::initialize_request(0));
    crate::support::wait_for(Duration::from_secs(10), "initialize to arrive", || {
        !fake.with_rpc_method("initialize").is_empty()
    });
    proxy.send(&request(1, "tools/list", json!({})));
    proxy.close_stdin();
    assert_eq!(proxy.wait_exit(Duration::from_secs(9)), Some(0));
}

/// A legacy HTTP+SSE daemon whose SSE URL is `/mcp`: GET opens the stream (after
/// `connect_delay`), whose first event names `/message`; POST `/mcp` is 405; every message
/// POSTed to `/message` is answered on the stream.
fn legacy_daemon(connect_delay: Duration) -> Fake {
    type Stream = tokio::sync::mpsc::UnboundedSender<String>;
    let stream: Arc<Mutex<Option<Stream>>> = Arc::default();
    let opened = stream.clone();
    let router = Router::new()
        .route(
            "/mcp",
            axum::routing::get(move || {
                let opened = opened.clone();
                async move {
                    tokio::time::sleep(connect_delay).await;
                    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
                    let _ = tx.send("event: endpoint\ndata: /message?session=1\n\n".to_owned());
                    *opened.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
                    let body = futures_util::stream::unfold(rx, |mut rx| async move {
                        let text = rx.recv().await?;
                        Some((Ok::<Bytes, std::io::Error>(Bytes::from(text)), rx))
                    });
                    Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(Body::from_stream(body))
                        .expect("response")
                }
            })
            .post(|| async { StatusCode::METHOD_NOT_ALLOWED }),
        )
        .route(
            "/message",
            axum::routing::post(move |body: Bytes| {
                let stream = stream.clone();
                async move {
                    let message: Value = serde_json::from_slice(&body).unwrap_or_default();
                    if message.get("id").is_some() && message.get("method").is_some() {
                        let answer = result_for(&message, json!({"legacy": true}));
                        if let Some(tx) = &*stream.lock().unwrap_or_else(|e| e.into_inner()) {
                            let _ = tx.send(format!("event: message\ndata: {answer}\n\n"));
                        }
                    }
                    StatusCode::ACCEPTED
                }
            }),
        );
    Fake::start(router)
}

#[test]
fn auto_sends_requests_made_during_detection_to_a_legacy_daemon_too() {
    // The legacy stream opens slowly, so the second request goes out (as streamable HTTP,
    // refused with 405) while the first is still finding out.
    let fake = legacy_daemon(Duration::from_millis(800));
    let home = TestHome::new();
    let mut proxy = auto_proxy(&fake, &home);
    proxy.send(&request(1, "tools/list", json!({})));
    crate::support::wait_for(Duration::from_secs(10), "the legacy GET", || {
        !fake.with_http_method("GET").is_empty()
    });
    proxy.send(&request(2, "prompts/list", json!({})));
    for id in [1, 2] {
        let (response, _) = proxy.recv_response(&json!(id));
        assert_eq!(response["result"]["legacy"], true, "{response}");
    }
    let refused = fake
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.rpc_method().as_deref() == Some("prompts/list"))
        .count();
    assert_eq!(
        refused, 2,
        "prompts/list went out during detection, was refused, then sent as legacy"
    );
}

/// Answers `initialize` with `version` and a session, everything else at once.
fn versioned_daemon(version: &'static str) -> Fake {
    Fake::start(mcp_router(
        move |message: Value, _headers: HeaderMap| match message["method"].as_str() {
            Some("initialize") => {
                let mut response = json_response(
                    StatusCode::OK,
                    &result_for(
                        &message,
                        json!({"protocolVersion": version, "capabilities": {}, "serverInfo": {"name": "fake", "version": "0"}}),
                    ),
                );
                response
                    .headers_mut()
                    .insert("mcp-session-id", HeaderValue::from_static("sess-1"));
                response
            }
            _ if message.get("id").is_none() => accepted(),
            _ => json_response(StatusCode::OK, &result_for(&message, json!({}))),
        },
    ))
}

/// initialize (asking for `version`), initialized, then requests of every kind that names
/// something, with no `_meta`; returns the POSTs the daemon got.
fn stateful_session(fake: &Fake, version: &str) -> Vec<crate::support::fake::Recorded> {
    let home = TestHome::new();
    let mut proxy = auto_proxy(fake, &home);
    proxy.send(&json!({
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
    }));
    proxy.recv_response(&json!(0));
    proxy.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    let requests = [
        request(1, "tools/list", json!({})),
        request(
            2,
            "tools/call",
            json!({"name": "my-hyphenated-tool", "arguments": {}}),
        ),
        request(
            3,
            "resources/read",
            json!({"uri": "file:///path/to/file%20name.txt"}),
        ),
        request(4, "prompts/get", json!({"name": "test_prompt"})),
    ];
    for message in &requests {
        proxy.send(message);
        proxy.recv_response(&message["id"]);
    }
    fake.with_http_method("POST")
}

#[test]
fn a_session_that_negotiated_2026_07_28_through_initialize_names_every_request_in_headers() {
    let fake = versioned_daemon("2026-07-28");
    let posts = stateful_session(&fake, "2026-07-28");
    assert_eq!(posts.len(), 6, "{posts:?}");
    for post in &posts {
        let body = post.json();
        let method = body["method"].as_str().unwrap_or_default();
        assert_eq!(post.header("mcp-method"), Some(method), "{}", post.body);
        let name = match method {
            "tools/call" | "prompts/get" => body["params"]["name"].as_str(),
            "resources/read" => body["params"]["uri"].as_str(),
            _ => None,
        };
        assert_eq!(post.header("mcp-name"), name, "{}", post.body);
        if method != "initialize" {
            assert_eq!(
                post.header("mcp-protocol-version"),
                Some("2026-07-28"),
                "{}",
                post.body
            );
        }
    }
}

#[test]
fn a_session_of_an_older_revision_gets_mcp_method_but_no_mcp_name() {
    let fake = versioned_daemon("2025-11-25");
    let posts = stateful_session(&fake, "2025-11-25");
    assert_eq!(posts.len(), 6, "{posts:?}");
    for post in &posts {
        let method = post.rpc_method().unwrap_or_default();
        assert_eq!(
            post.header("mcp-method"),
            Some(method.as_str()),
            "{}",
            post.body
        );
        assert_eq!(post.header("mcp-name"), None, "{}", post.body);
    }
}
