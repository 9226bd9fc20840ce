//! Request ids: matched by value whatever the server does to them, answered exactly as the
//! client wrote them, and refused (with an error under that id, never silence) when MCP does not
//! allow them or they are already in flight.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::support::fake::Fake;
use crate::support::fake::{event, json_response, mcp_router, result_for, sse_response, Chunk};
use crate::support::servers::demo_server;
use crate::support::{error_of, request, Proxy, TestHome};

/// The `id` of a line exactly as written, and the line parsed.
fn raw_id(line: &str) -> (String, Value) {
    #[derive(Deserialize)]
    struct Envelope {
        id: Box<RawValue>,
    }
    let envelope: Envelope =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("a line without an id ({e}): {line}"));
    let value = serde_json::from_str(line).expect("json");
    (envelope.id.get().to_owned(), value)
}

/// A daemon that answers every request at once, and `slow` ones after 2 s.
fn answering_daemon() -> Fake {
    Fake::start(mcp_router(|message: Value, _| {
        if message["method"] == "slow" {
            return sse_response(vec![
                Chunk::Pause(Duration::from_secs(2)),
                event(&result_for(&message, json!({"slow": true}))),
            ]);
        }
        json_response(StatusCode::OK, &result_for(&message, json!({})))
    }))
}

fn proxy_to(fake: &Fake, home: &TestHome, extra: &[&str]) -> Proxy {
    let mut args = vec!["--url", fake.url.as_str(), "--transport", "streamable-http"];
    args.extend_from_slice(extra);
    Proxy::spawn(home, &args)
}

/// The issue's repro: the demo server (serde_json) writes `"caf\u00e9"` as `"café"`, `1e2` as
/// `100.0` and `"a\/b"` as `"a/b"`; each answer still arrives, under the id as the client wrote
/// it.
#[test]
fn ids_the_server_rewrites_are_matched_by_value_and_answered_as_written() {
    let home = TestHome::new();
    let server = demo_server(&home);
    let mut proxy = Proxy::spawn(&home, &["--url", &server.url]);
    proxy.initialize();
    let ids = [r#""caf\u00e9""#, "1e2", r#""a\/b""#, "-0", "7"];
    for id in ids {
        proxy.send_raw(
            format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"tools/list\"}}\n").as_bytes(),
        );
    }
    let mut answered = BTreeMap::new();
    while answered.len() < ids.len() {
        let line = proxy.recv_line();
        if line.contains(r#""method""#) && !line.contains(r#""result""#) {
            continue; // a notification
        }
        let (id, value) = raw_id(&line);
        assert!(value["result"]["tools"].is_array(), "{line}");
        assert!(
            answered.insert(id.clone(), line).is_none(),
            "{id} answered twice"
        );
    }
    let mut expected: Vec<&str> = ids.to_vec();
    expected.sort_unstable();
    assert_eq!(
        answered.keys().map(String::as_str).collect::<Vec<_>>(),
        expected
    );
    proxy.send(&request(8, "ping", json!({})));
    let (pong, _) = proxy.recv_response(&json!(8));
    assert!(pong.get("result").is_some(), "{pong}");
}

#[test]
fn a_request_with_id_null_gets_an_error_and_is_not_sent() {
    let fake = answering_daemon();
    let home = TestHome::new();
    let mut proxy = proxy_to(&fake, &home, &[]);
    proxy.send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":null,\"method\":\"tools/list\"}\n");
    let error = proxy.recv();
    assert_eq!(error["id"], Value::Null);
    assert_eq!(error_of(&error)["code"], -32600);
    let message = error_of(&error)["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("null") && message.contains(&fake.url) && message.contains("hint:"),
        "{message}"
    );
    proxy.send(&request(2, "ping", json!({})));
    assert_eq!(proxy.recv()["id"], 2);
    assert_eq!(fake.with_rpc_method("tools/list").len(), 0, "not sent");
}

#[test]
fn a_second_request_with_an_id_in_flight_gets_an_error_and_the_first_its_answer() {
    let fake = answering_daemon();
    let home = TestHome::new();
    let mut proxy = proxy_to(&fake, &home, &[]);
    proxy.send(&request(5, "slow", json!({})));
    // The same id by value, written another way.
    proxy.send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":5.0,\"method\":\"ping\"}\n");
    let line = proxy.recv_line();
    let (id, refused) = raw_id(&line);
    assert_eq!(id, "5.0", "the second request's own id text: {line}");
    let message = error_of(&refused)["message"].as_str().unwrap_or_default();
    assert!(message.contains("already in flight"), "{message}");
    let (first, _) = proxy.recv_response(&json!(5));
    assert_eq!(first["result"]["slow"], true, "{first}");
    assert_eq!(fake.requests().len(), 1, "the second request was not sent");
    // Once answered, the id may be used again.
    proxy.send(&request(5, "ping", json!({})));
    let (again, _) = proxy.recv_response(&json!(5));
    assert!(again.get("result").is_some(), "{again}");
}

#[test]
fn a_batch_with_bad_elements_sends_the_valid_requests_and_refuses_the_others_by_id() {
    let fake = answering_daemon();
    let home = TestHome::new();
    let mut proxy = proxy_to(&fake, &home, &[]);
    proxy.send_raw(
        b"[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"},{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":7},42,{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"ping\"}]\n",
    );
    let mut answers = BTreeMap::new();
    for _ in 0..4 {
        let answer = proxy.recv();
        answers.insert(answer["id"].to_string(), answer);
    }
    assert!(answers["1"].get("result").is_some(), "{answers:?}");
    assert!(answers["3"].get("result").is_some(), "{answers:?}");
    assert_eq!(error_of(&answers["2"])["code"], -32600);
    assert_eq!(error_of(&answers["null"])["code"], -32600, "the element 42");
    assert_eq!(fake.requests().len(), 2);
    proxy.assert_silent_for(Duration::from_millis(200));
}
