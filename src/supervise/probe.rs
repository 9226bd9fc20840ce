//! Is a daemon serving MCP? An `initialize` over its own transport answers that: a port that
//! accepts connections is not enough (a server may listen long before it can answer).

use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::DaemonSpec;
use crate::jsonrpc::{Kind, Message};
use crate::transport::{Hooks, Options, Upstream};

const PROBE_ID: &str = "\"mcpsm-probe\"";

/// Sends `initialize` and waits for its result; returns how long the answer took, or what
/// went wrong. A daemon with `auth = "oauth"` that refuses (401/403) is reachable: a probe
/// never starts a login of its own (that is the manager's, on behalf of a session).
pub async fn probe(spec: &DaemonSpec, limit: Duration) -> Result<Duration, String> {
    if spec.oauth.is_some() {
        if let Some(latency) = refuses_without_token(spec, limit).await {
            return Ok(latency);
        }
    }
    let (tx, mut rx) = mpsc::channel::<Bytes>(16);
    let options = Options {
        url: spec.url.clone(),
        transport: spec.transport,
        headers: spec.header_map(),
        label: format!("daemon \"{}\"", spec.name),
        unreachable_hint: String::new(),
        failure_hint: String::new(),
        max_message_bytes: 4 * 1024 * 1024,
        reconnect_timeout: None,
    };
    let shutdown = CancellationToken::new();
    let upstream =
        Upstream::new(options, tx, shutdown, Hooks::default()).map_err(|e| e.to_string())?;
    let initialize = Message::parse(Bytes::from(format!(
        r#"{{"jsonrpc":"2.0","id":{PROBE_ID},"method":"initialize","params":{{"protocolVersion":"2025-06-18","capabilities":{{}},"clientInfo":{{"name":"mcpsm-probe","version":"{}"}}}}}}"#,
        env!("CARGO_PKG_VERSION")
    )))
    .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let answer = tokio::time::timeout(limit, async {
        upstream.send(initialize).await;
        while let Some(bytes) = rx.recv().await {
            let Ok(message) = Message::parse(bytes) else {
                continue;
            };
            if message.kind() == Kind::Response
                && message.id().map(|id| id.as_json()) == Some(PROBE_ID)
            {
                return outcome(&message);
            }
        }
        Err("the daemon closed the session without answering".to_owned())
    })
    .await;
    upstream.close(Duration::from_millis(300)).await;
    match answer {
        Ok(Ok(())) => Ok(started.elapsed()),
        Ok(Err(why)) => Err(why),
        Err(_) => Err(format!("no answer to `initialize` within {limit:?}")),
    }
}

fn outcome(response: &Message) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_slice(response.bytes()).map_err(|e| e.to_string())?;
    if value.get("result").is_some() {
        return Ok(());
    }
    let message = value["error"]["message"]
        .as_str()
        .unwrap_or("an error without a message");
    // The transport's own errors end with a hint meant for MCP clients; keep the cause.
    Err(message
        .split(". hint: ")
        .next()
        .unwrap_or(message)
        .to_owned())
}

/// How long an OAuth daemon took to refuse a tokenless `initialize`, if it refused.
async fn refuses_without_token(spec: &DaemonSpec, limit: Duration) -> Option<Duration> {
    crate::transport::http::install_crypto_provider();
    let mut builder = reqwest::Client::builder().timeout(limit);
    if crate::transport::http::is_loopback(&spec.url) {
        builder = builder.no_proxy();
    }
    let client = builder.build().ok()?;
    let started = Instant::now();
    let response = client
        .post(spec.url.clone())
        .header(reqwest::header::CONTENT_TYPE, crate::transport::http::JSON)
        .header(reqwest::header::ACCEPT, crate::transport::http::ACCEPT_BOTH)
        .body(r#"{"jsonrpc":"2.0","id":"mcpsm-probe","method":"ping"}"#)
        .send()
        .await
        .ok()?;
    matches!(response.status().as_u16(), 401 | 403).then(|| started.elapsed())
}
