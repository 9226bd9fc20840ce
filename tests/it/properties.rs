//! Property tests of the stdin framing and the JSON-RPC envelope, against the real binary: for
//! any sequence of lines (valid requests with every id shape, notifications, `"id": null`,
//! garbage bytes, lines over the size bound, deep nesting, broken JSON, batches with bad
//! elements), every request whose id can be read gets exactly one answer carrying that id as
//! written, every line that holds no readable id gets one error with id `null`, and the proxy
//! keeps serving. A bounded number of cases (24; `PROPTEST_CASES` raises it) runs in seconds.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::support::fake::{accepted, json_response, mcp_router, result_for, Fake};
use crate::support::{Proxy, TestHome};

/// The proxy's `--max-message-bytes` in these tests: small, so that long lines are cheap.
const LIMIT: usize = 4096;

#[derive(Debug, Clone)]
enum Line {
    Request(String),
    Notification,
    NullId,
    Garbage(Vec<u8>),
    /// A request longer than the bound.
    Huge(String),
    /// A request whose params nest this deep.
    Nested(String, usize),
    /// A request cut off in the middle.
    Broken(String),
    Batch(Vec<Element>),
    EmptyBatch,
}

#[derive(Debug, Clone)]
enum Element {
    Request(String),
    Notification,
    NotAnObject,
    BadMethod(String),
}

fn request_text(id: &str) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list"}}"#)
}

const NOTIFICATION: &str = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#;

impl Line {
    fn bytes(&self) -> Vec<u8> {
        let text = match self {
            Line::Request(id) => request_text(id),
            Line::Notification => NOTIFICATION.to_owned(),
            Line::NullId => request_text("null"),
            Line::Garbage(bytes) => {
                let mut line = b"x".to_vec();
                line.extend_from_slice(bytes);
                line.push(b'\n');
                return line;
            }
            Line::Huge(id) => format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"pad":"{}"}}}}"#,
                "a".repeat(LIMIT + 100)
            ),
            Line::Nested(id, depth) => format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"deep":{}{}}}}}"#,
                "[".repeat(*depth),
                "]".repeat(*depth)
            ),
            Line::Broken(id) => format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"x","params":{{"#),
            Line::Batch(elements) => {
                let parts: Vec<String> = elements
                    .iter()
                    .map(|element| match element {
                        Element::Request(id) => request_text(id),
                        Element::Notification => NOTIFICATION.to_owned(),
                        Element::NotAnObject => "42".to_owned(),
                        Element::BadMethod(id) => {
                            format!(r#"{{"jsonrpc":"2.0","id":{id},"method":7}}"#)
                        }
                    })
                    .collect();
                format!("[{}]", parts.join(","))
            }
            Line::EmptyBatch => "[]".to_owned(),
        };
        let mut line = text.into_bytes();
        line.push(b'\n');
        line
    }

    /// The ids (as JSON text) of the answers this line must get.
    fn expected(&self, out: &mut Vec<String>) {
        match self {
            Line::Request(id) | Line::Huge(id) | Line::Nested(id, _) | Line::Broken(id) => {
                out.push(id.clone())
            }
            Line::Notification => {}
            Line::NullId | Line::Garbage(_) | Line::EmptyBatch => out.push("null".to_owned()),
            Line::Batch(elements) => {
                for element in elements {
                    match element {
                        Element::Request(id) | Element::BadMethod(id) => out.push(id.clone()),
                        Element::Notification => {}
                        Element::NotAnObject => out.push("null".to_owned()),
                    }
                }
            }
        }
    }
}

/// Ids of every shape a client may write, several of which servers re-serialize.
fn id() -> impl Strategy<Value = String> {
    let letters = prop::sample::select(vec!["a", "Z", "0", " ", "é", "/", "\"", "\\", "☃"]);
    prop_oneof![
        any::<i32>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        (0u32..1000).prop_map(|n| format!("{n}.0")),
        (1u32..10).prop_map(|n| format!("{n}e2")),
        Just("-0".to_owned()),
        // strings, written plainly or with every escape JSON allows
        (prop::collection::vec(letters, 0..6), any::<bool>()).prop_map(|(chars, escape)| {
            let mut text = String::from("\"");
            for c in chars {
                match (c, escape) {
                    ("\"", _) => text.push_str("\\\""),
                    ("\\", _) => text.push_str("\\\\"),
                    ("/", true) => text.push_str("\\/"),
                    (c, true) if !c.is_ascii() => {
                        for unit in c.encode_utf16() {
                            text.push_str(&format!("\\u{unit:04x}"));
                        }
                    }
                    (c, _) => text.push_str(c),
                }
            }
            text.push('"');
            text
        }),
    ]
}

fn element() -> impl Strategy<Value = Element> {
    prop_oneof![
        4 => id().prop_map(Element::Request),
        1 => Just(Element::Notification),
        1 => Just(Element::NotAnObject),
        1 => id().prop_map(Element::BadMethod),
    ]
}

fn line() -> impl Strategy<Value = Line> {
    let garbage = prop::collection::vec(
        prop::sample::select(b"ab 0\"\\}]:,\t\x00\xff\xef".to_vec()),
        0..40,
    );
    prop_oneof![
        6 => id().prop_map(Line::Request),
        1 => Just(Line::Notification),
        1 => Just(Line::NullId),
        1 => garbage.prop_map(Line::Garbage),
        1 => id().prop_map(Line::Huge),
        1 => (id(), 1usize..200).prop_map(|(id, depth)| Line::Nested(id, depth)),
        1 => id().prop_map(Line::Broken),
        2 => prop::collection::vec(element(), 1..5).prop_map(Line::Batch),
        1 => Just(Line::EmptyBatch),
    ]
}

/// The `id` of an answer exactly as written.
fn raw_id(line: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Envelope {
        id: Box<RawValue>,
    }
    serde_json::from_str::<Envelope>(line)
        .ok()
        .map(|e| e.id.get().to_owned())
}

/// A daemon that answers every request at once (re-serializing its id, as serde_json does).
fn answering_daemon() -> Fake {
    Fake::start(mcp_router(|message: Value, _| {
        if message.get("id").is_none() {
            return accepted();
        }
        json_response(StatusCode::OK, &result_for(&message, json!({"tools": []})))
    }))
}

fn check(fake: &Fake, lines: &[Line]) -> Result<(), TestCaseError> {
    let home = TestHome::new();
    let limit = LIMIT.to_string();
    let mut proxy = Proxy::spawn(
        &home,
        &[
            "--url",
            &fake.url,
            "--transport",
            "streamable-http",
            "--max-message-bytes",
            &limit,
        ],
    );
    let mut expected = Vec::new();
    let mut input = Vec::new();
    for line in lines {
        line.expected(&mut expected);
        input.extend_from_slice(&line.bytes());
    }
    proxy.send_raw(&input);

    let mut want: BTreeMap<String, usize> = BTreeMap::new();
    for id in &expected {
        *want.entry(id.clone()).or_default() += 1;
    }
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    for _ in 0..expected.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = proxy.try_recv_line(left) else {
            return Err(TestCaseError::fail(format!(
                "answers missing: wanted {want:?}, got {got:?}\n--- stderr ---\n{}",
                proxy.stderr()
            )));
        };
        let id = raw_id(&line).ok_or_else(|| TestCaseError::fail(format!("no id: {line}")))?;
        *got.entry(id).or_default() += 1;
    }
    prop_assert_eq!(&got, &want);

    // Still serving, and nothing more came before this answer.
    proxy.send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":\"final\",\"method\":\"ping\"}\n");
    let line = proxy
        .try_recv_line(Duration::from_secs(20))
        .map_err(|_| TestCaseError::fail("no answer to the final ping"))?;
    let id = raw_id(&line);
    prop_assert_eq!(id.as_deref(), Some("\"final\""), "{}", line);
    Ok(())
}

#[test]
fn every_request_with_a_readable_id_gets_exactly_one_answer_with_that_id() {
    let fake = answering_daemon();
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&prop::collection::vec(line(), 1..12), |lines| {
        check(&fake, &lines)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
