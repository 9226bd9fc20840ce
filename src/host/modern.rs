//! Sessionless (2026-07-28) clients on the stdio host.
//!
//! A 2026-07-28 request carries its revision and the client's capabilities in
//! `params._meta`, no `Mcp-Session-Id`, and its method (and name) in headers. The host checks
//! what only HTTP can carry — the `MCP-Protocol-Version` header against `_meta`, `Mcp-Method`
//! and `Mcp-Name` against the body — then serves the request in one of two ways, decided once
//! by asking a server process `server/discover`:
//! - **the server speaks 2026-07-28**: requests go to a child of their own (never
//!   initialized), as they are, with ids and progress tokens remapped; a closed response
//!   stream cancels the request at the child; `subscriptions/listen` notifications are routed
//!   by their subscription id.
//! - **it does not** (every stdio server written before 2026): requests go to the child the
//!   sharing rules give a session of the newest revision, which the host initialized;
//!   `server/discover` is answered from that child's InitializeResult, `subscriptions/listen`
//!   by the host from the child's list-changed notifications, and results get `resultType`.
//!   A server→client request during a sessionless request (2026-07-28 has none) becomes an
//!   input-required result for that request's client; its retry with `inputResponses` and
//!   `requestState` answers the server's request, and the parked request answers the retry.
//!
//! Either way a request answered with nothing before its result gets a plain JSON response,
//! with the HTTP status the revision gives its errors (400 for a version or header mismatch,
//! 404 for an unknown method).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::hub::{Hub, SessionId};
use super::negotiate::{self, Compatibility};
use super::{sse_response, Front};
use crate::jsonrpc::{Kind, Message};

pub const VERSION: &str = "2026-07-28";
const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
const META_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
const META_CLIENT: &str = "io.modelcontextprotocol/clientInfo";
const META_SERVER: &str = "io.modelcontextprotocol/serverInfo";
/// `-32020`: a header that is missing or does not match the body.
const HEADER_MISMATCH: i64 = -32020;
/// `-32022`: a revision the server does not speak.
const UNSUPPORTED_VERSION: i64 = -32022;
const DISCOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// How sessionless requests reach the server.
#[derive(Clone)]
pub enum Route {
    /// The server speaks 2026-07-28: its own child, requests as they are.
    Native(Arc<Hub>),
    /// It does not: the bridged child, which the host initialized.
    Bridged(Arc<Hub>),
}

/// Whether a request without a session is a 2026-07-28 one: its `MCP-Protocol-Version`
/// header names no session-era revision, or its `_meta` names a revision.
pub fn is_sessionless(headers: &HeaderMap, messages: &[Message]) -> bool {
    let header = headers
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok());
    if header.is_some_and(|v| !negotiate::KNOWN.contains(&v)) {
        return true;
    }
    messages.iter().any(|m| {
        serde_json::from_slice::<Value>(m.bytes())
            .is_ok_and(|v| v["params"]["_meta"].get(META_VERSION).is_some())
    })
}

/// Whether a GET or DELETE without a session comes from a 2026-07-28 client (405: it has no
/// stream to open or session to end).
pub fn is_sessionless_header(headers: &HeaderMap) -> bool {
    headers
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !negotiate::KNOWN.contains(&v))
}

fn answer(status: StatusCode, id: &Value, error: Value) -> Response {
    let body = json!({"jsonrpc": "2.0", "id": id, "error": error});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn bad(id: &Value, code: i64, message: &str) -> Response {
    answer(
        StatusCode::BAD_REQUEST,
        id,
        json!({"code": code, "message": message}),
    )
}

/// Checks what a stdio server cannot see: the headers against the body.
fn check(headers: &HeaderMap, value: &Value) -> Result<(), Box<Response>> {
    let id = &value["id"];
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(version) = header("mcp-protocol-version") else {
        return Err(Box::new(bad(
            id,
            HEADER_MISMATCH,
            "Missing MCP-Protocol-Version header",
        )));
    };
    let meta = &value["params"]["_meta"];
    if meta.get(META_VERSION).is_none() || meta.get(META_CAPABILITIES).is_none() {
        return Err(Box::new(bad(
            id,
            -32602,
            "Invalid params: a 2026-07-28 request needs _meta with io.modelcontextprotocol/protocolVersion and io.modelcontextprotocol/clientCapabilities",
        )));
    }
    if meta[META_VERSION].as_str() != Some(version) {
        return Err(Box::new(bad(
            id,
            HEADER_MISMATCH,
            "Mismatched MCP-Protocol-Version header: it must equal _meta's protocolVersion",
        )));
    }
    let method = value["method"].as_str().unwrap_or_default();
    if header("mcp-method").is_some_and(|h| h != method) {
        return Err(Box::new(bad(
            id,
            HEADER_MISMATCH,
            "Mismatched Mcp-Method header: it must equal the request's method",
        )));
    }
    let name = match method {
        "tools/call" | "prompts/get" => value["params"]["name"].as_str(),
        "resources/read" => value["params"]["uri"].as_str(),
        _ => None,
    };
    if let (Some(given), Some(name)) = (header("mcp-name"), name) {
        if given != name {
            return Err(Box::new(bad(
                id,
                HEADER_MISMATCH,
                "Mismatched Mcp-Name header: it must equal the request's name or uri",
            )));
        }
    }
    Ok(())
}

/// Serves one sessionless POST.
pub(super) async fn post(
    front: &Arc<Front>,
    headers: &HeaderMap,
    messages: Vec<Message>,
) -> Response {
    let Ok([message]) = <[Message; 1]>::try_from(messages) else {
        return bad(
            &Value::Null,
            -32600,
            "Invalid Request: a 2026-07-28 request is one JSON-RPC message, not a batch",
        );
    };
    if message.kind() != Kind::Request {
        // Clients send no responses in 2026-07-28, and cancel by closing the stream.
        return StatusCode::ACCEPTED.into_response();
    }
    let value: Value = serde_json::from_slice(message.bytes()).unwrap_or_default();
    if let Err(refused) = check(headers, &value) {
        return *refused;
    }
    let route = match front.sessionless_route(headers, &value).await {
        Ok(route) => route,
        Err(why) => {
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                &value["id"],
                json!({"code": crate::jsonrpc::UPSTREAM_ERROR, "message": why}),
            )
        }
    };
    let method = value["method"].as_str().unwrap_or_default().to_owned();
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let session: SessionId = Arc::from(super::hub::SESSIONLESS);
    match route {
        Route::Native(hub) => {
            let upstream = hub.request(&session, message, tx).await;
            // Closing the response stream cancels the request (2026-07-28): `gone` is dropped
            // when the response is over, either way; a request answered already is not
            // cancelled.
            let (gone, on_gone) = oneshot::channel::<()>();
            if let Some(upstream) = upstream {
                let hub = hub.clone();
                tokio::spawn(async move {
                    let _ = on_gone.await;
                    hub.cancel(upstream).await;
                });
            }
            respond(rx, false, gone).await
        }
        Route::Bridged(hub) => {
            let version = value["params"]["_meta"][META_VERSION].as_str();
            if version != Some(VERSION) {
                return answer(
                    StatusCode::BAD_REQUEST,
                    &value["id"],
                    json!({"code": UNSUPPORTED_VERSION, "message": "Unsupported protocol version",
                           "data": {"supported": [VERSION], "requested": version}}),
                );
            }
            match method.as_str() {
                "server/discover" => discover(&hub, &value),
                "subscriptions/listen" => listen(&hub, &value, tx, rx),
                _ => {
                    hub.request(&session, message, tx).await;
                    let (gone, _) = oneshot::channel::<()>();
                    respond(rx, true, gone).await
                }
            }
        }
    }
}

/// The response: plain JSON when the result comes first (with the status its error code
/// has over HTTP), else SSE carrying what came before it, then the rest.
async fn respond(
    mut rx: mpsc::Receiver<Bytes>,
    add_result_type: bool,
    gone: oneshot::Sender<()>,
) -> Response {
    let Some(first) = rx.recv().await else {
        return StatusCode::ACCEPTED.into_response();
    };
    let mut value: Value = serde_json::from_slice(&first).unwrap_or_default();
    let is_response = value.get("method").is_none();
    if is_response {
        if add_result_type {
            stamp_result(&mut value);
        }
        let status = match value["error"]["code"].as_i64() {
            Some(HEADER_MISMATCH | UNSUPPORTED_VERSION) => StatusCode::BAD_REQUEST,
            Some(-32601) => StatusCode::NOT_FOUND,
            _ => StatusCode::OK,
        };
        return (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            value.to_string(),
        )
            .into_response();
    }
    let (out, body) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let _gone = gone;
        if out.send(first).await.is_err() {
            return;
        }
        loop {
            // Both branches are cancel-safe: a message not received stays in `rx`.
            let message = tokio::select! {
                message = rx.recv() => message,
                () = out.closed() => return,
            };
            let Some(message) = message else { return };
            let message = if add_result_type {
                let mut value: Value = serde_json::from_slice(&message).unwrap_or_default();
                if value.get("method").is_none() {
                    stamp_result(&mut value);
                }
                Bytes::from(value.to_string())
            } else {
                message
            };
            if out.send(message).await.is_err() {
                return;
            }
        }
    });
    sse_response(body)
}

/// A 2026-07-28 result says what it is; a missing `resultType` would mean the same.
fn stamp_result(value: &mut Value) {
    if let Some(result) = value.get_mut("result").and_then(Value::as_object_mut) {
        result
            .entry("resultType")
            .or_insert_with(|| json!("complete"));
    }
}

/// `server/discover`, answered from the bridged child's InitializeResult.
fn discover(hub: &Hub, request: &Value) -> Response {
    let Some(init) = hub.init_result() else {
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            &request["id"],
            json!({"code": crate::jsonrpc::UPSTREAM_ERROR, "message": "the MCP server is not initialized yet; try again"}),
        );
    };
    let mut result = json!({
        "resultType": "complete",
        "supportedVersions": [VERSION],
        "capabilities": init["capabilities"],
        "serverInfo": init["serverInfo"],
        "ttlMs": 0,
        "cacheScope": "private",
        "_meta": {META_SERVER: init["serverInfo"]},
    });
    if let Some(instructions) = init.get("instructions") {
        result["instructions"] = instructions.clone();
    }
    let body = json!({"jsonrpc": "2.0", "id": request["id"], "result": result});
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// `subscriptions/listen` for a bridged child: acknowledged at once, then the list changes
/// the filter asks for, until the client closes the stream.
fn listen(
    hub: &Hub,
    request: &Value,
    tx: mpsc::Sender<Bytes>,
    rx: mpsc::Receiver<Bytes>,
) -> Response {
    let subscription = request["id"].to_string();
    let asked = &request["params"]["notifications"];
    let mut honoured = serde_json::Map::new();
    let mut wants = HashSet::new();
    for (flag, method) in [
        ("toolsListChanged", "notifications/tools/list_changed"),
        ("promptsListChanged", "notifications/prompts/list_changed"),
        (
            "resourcesListChanged",
            "notifications/resources/list_changed",
        ),
    ] {
        if asked[flag] == true {
            honoured.insert(flag.to_owned(), json!(true));
            wants.insert(method.to_owned());
        }
    }
    let ack = json!({"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
        "params": {"_meta": {super::hub::META_SUBSCRIPTION: request["id"]}, "notifications": honoured}});
    let _ = tx.try_send(Bytes::from(ack.to_string()));
    hub.listen(tx, subscription, wants);
    sse_response(rx)
}

/// The `initialize` a sessionless client would have sent: its `_meta`, the newest bridged
/// revision (see [`negotiate::child_initialize`]).
pub fn initialize_for(request: &Value) -> Value {
    let meta = &request["params"]["_meta"];
    let session = json!({"jsonrpc": "2.0", "id": "mcpsm-sessionless", "method": "initialize", "params": {
        "protocolVersion": negotiate::NEWEST,
        "capabilities": meta.get(META_CAPABILITIES).cloned().unwrap_or_else(|| json!({})),
        "clientInfo": meta.get(META_CLIENT).cloned().unwrap_or_else(|| json!({"name": "mcpsm (2026-07-28 clients)", "version": env!("CARGO_PKG_VERSION")})),
    }});
    negotiate::child_initialize(&session, &Compatibility::Bridged)
}

/// `server/discover` for a child that may speak 2026-07-28: whether it does, or `None` when
/// it gave no answer (asked again next time).
pub async fn speaks_sessionless(hub: &Hub, request: &Value) -> Option<bool> {
    let meta = request["params"]["_meta"].clone();
    let discover = json!({"jsonrpc": "2.0", "id": "mcpsm-discover", "method": "server/discover", "params": {"_meta": meta}});
    let message = Message::parse(Bytes::from(discover.to_string())).ok()?;
    let answer = hub.ask(message, DISCOVER_TIMEOUT).await.ok()?;
    let value: Value = serde_json::from_slice(answer.bytes()).unwrap_or_default();
    Some(
        value["result"]["supportedVersions"]
            .as_array()
            .is_some_and(|v| v.iter().any(|v| v == VERSION)),
    )
}
