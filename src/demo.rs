//! A small MCP server built into mcpsm: streamable HTTP, JSON answers, two tools.
//!
//! `echo {message}` answers `Echo: <message>`; `counter` counts its calls in this process, so
//! two sessions that see one sequence share one server. It is the embedded default daemon
//! `demo` (what `mcpsm demo` shows with nothing else installed), and the fast upstream of the
//! tests and benchmarks: it costs next to nothing, so what is measured is mcpsm.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

/// Protocol versions the demo server speaks; the last is offered when the client's is unknown.
const VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
const SESSION_HEADER: &str = "mcp-session-id";

#[derive(Default)]
struct Demo {
    sessions: Mutex<HashSet<String>>,
    next_session: AtomicU64,
    counter: AtomicU64,
}

/// Serves the demo server on `listener` until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let demo = Arc::new(Demo::default());
    let router = Router::new()
        .route(
            "/mcp",
            axum::routing::post(post)
                .get(|| async { StatusCode::METHOD_NOT_ALLOWED })
                .delete(delete),
        )
        .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
        .layer(axum::middleware::from_fn(loopback_only))
        .with_state(demo);
    crate::serve::serve(listener, router, stop).await
}

async fn loopback_only(request: Request, next: Next) -> Response {
    if let Err(why) = crate::guard::check_loopback(request.headers()) {
        return error_response(StatusCode::FORBIDDEN, Value::Null, -32000, &why);
    }
    next.run(request).await
}

fn json_response(body: Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error_response(status: StatusCode, id: Value, code: i64, message: &str) -> Response {
    let body = json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn session_of(headers: &HeaderMap) -> Option<&str> {
    headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok())
}

async fn delete(State(demo): State<Arc<Demo>>, headers: HeaderMap) -> StatusCode {
    match session_of(&headers) {
        Some(id)
            if demo
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(id) =>
        {
            StatusCode::OK
        }
        _ => StatusCode::NOT_FOUND,
    }
}

async fn post(State(demo): State<Arc<Demo>>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(message) = serde_json::from_slice::<Value>(&body) else {
        return error_response(StatusCode::BAD_REQUEST, Value::Null, -32700, "Parse error");
    };
    let id = message.get("id").cloned().unwrap_or(Value::Null);
    let method = message.get("method").and_then(Value::as_str).unwrap_or("");
    if method == "initialize" {
        return initialize(&demo, id, &message);
    }
    let known = session_of(&headers).is_some_and(|s| {
        demo.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(s)
    });
    if !known {
        return error_response(
            StatusCode::NOT_FOUND,
            Value::Null,
            -32001,
            "Session not found",
        );
    }
    if id.is_null() || method.is_empty() {
        return StatusCode::ACCEPTED.into_response(); // a notification or a response
    }
    let result = match method {
        "ping" => json!({}),
        "tools/list" => tools(),
        "tools/call" => match call(&demo, &message["params"]) {
            Ok(result) => result,
            Err(why) => {
                return json_response(
                    json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32602, "message": why}}),
                )
            }
        },
        "resources/list" => json!({"resources": []}),
        "prompts/list" => json!({"prompts": []}),
        _ => {
            return json_response(
                json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": format!("Method not found: {method}")}}),
            )
        }
    };
    json_response(json!({"jsonrpc": "2.0", "id": id, "result": result}))
}

fn initialize(demo: &Demo, id: Value, message: &Value) -> Response {
    let asked = message["params"]["protocolVersion"].as_str().unwrap_or("");
    let version = VERSIONS
        .iter()
        .find(|v| **v == asked)
        .unwrap_or(&VERSIONS[VERSIONS.len() - 1]);
    let session = format!(
        "demo-{}-{}",
        std::process::id(),
        demo.next_session.fetch_add(1, Ordering::Relaxed)
    );
    demo.sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(session.clone());
    let result = json!({
        "protocolVersion": version,
        "capabilities": {"tools": {"listChanged": false}},
        "serverInfo": {"name": "mcpsm-demo", "version": env!("CARGO_PKG_VERSION")},
        "instructions": "A demo server built into mcpsm: `echo` echoes, `counter` counts calls in this process."
    });
    let mut response = json_response(json!({"jsonrpc": "2.0", "id": id, "result": result}));
    if let Ok(value) = HeaderValue::from_str(&session) {
        response.headers_mut().insert(SESSION_HEADER, value);
    }
    response
}

fn tools() -> Value {
    json!({"tools": [
        {
            "name": "echo",
            "description": "Echoes back the input string",
            "inputSchema": {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]}
        },
        {
            "name": "counter",
            "description": "Counts its calls in this server process: sessions that share the server see one sequence",
            "inputSchema": {"type": "object", "properties": {}}
        }
    ]})
}

fn call(demo: &Demo, params: &Value) -> Result<Value, String> {
    let text = match params["name"].as_str() {
        Some("echo") => {
            let message = params["arguments"]["message"]
                .as_str()
                .ok_or("echo needs a string argument `message`")?;
            format!("Echo: {message}")
        }
        Some("counter") => (demo.counter.fetch_add(1, Ordering::Relaxed) + 1).to_string(),
        Some(other) => return Err(format!("Tool {other} not found")),
        None => return Err("tools/call needs `name`".into()),
    };
    Ok(json!({"content": [{"type": "text", "text": text}]}))
}
