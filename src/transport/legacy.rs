//! Legacy HTTP+SSE client (MCP 2024-11-05).
//!
//! GET the SSE URL; the first `endpoint` event names (usually relatively) the URL every client
//! message is POSTed to; everything from the server, responses included, arrives as `message`
//! events on that one GET stream. The stream is the session: when it closes, every request
//! still waiting is answered with an error, and the next message opens a new stream.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::StatusCode;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use url::Url;

use super::http::{self, EventStream};
use super::streamable::failure_of;
use super::{Failure, Shared};
use crate::jsonrpc::Message;

/// How long the daemon may take to name its POST endpoint.
const ENDPOINT_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Session {
    shared: Arc<Shared>,
    sse_url: Url,
    connection: tokio::sync::Mutex<Option<Connection>>,
}

struct Connection {
    endpoint: Url,
    /// Cancelled when the GET stream ends.
    closed: CancellationToken,
}

impl Session {
    pub fn new(shared: Arc<Shared>, sse_url: Url) -> Arc<Session> {
        Arc::new(Session {
            shared,
            sse_url,
            connection: tokio::sync::Mutex::new(None),
        })
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Opens the SSE stream now (used by `auto` detection).
    pub async fn connect(self: &Arc<Self>) -> Result<(), Failure> {
        self.endpoint().await.map(|_| ())
    }

    async fn endpoint(self: &Arc<Self>) -> Result<Url, Failure> {
        let mut connection = self.connection.lock().await;
        if let Some(open) = connection.as_ref() {
            if !open.closed.is_cancelled() {
                return Ok(open.endpoint.clone());
            }
            if self
                .shared
                .established
                .load(std::sync::atomic::Ordering::Acquire)
            {
                // The daemon session died with its stream: only a recovery (which replays
                // the client's initialize) may open a new one.
                return Err(Failure::Unreachable("its SSE stream closed".to_owned()));
            }
        }
        let open = self.open().await?;
        let endpoint = open.endpoint.clone();
        *connection = Some(open);
        Ok(endpoint)
    }

    async fn open(self: &Arc<Self>) -> Result<Connection, Failure> {
        let response = self
            .shared
            .send_authorized(|| {
                self.shared
                    .http
                    .get(self.sse_url.clone())
                    .headers(self.shared.options.headers.clone())
                    .header(ACCEPT, http::ACCEPT_SSE)
            })
            .await
            .map_err(|e| failure_of(&e))?;
        let status = response.status();
        if !status.is_success() {
            let body = http::read_body(response, 64 * 1024)
                .await
                .unwrap_or_default();
            return Err(Failure::Status {
                status: status.as_u16(),
                body: http::excerpt(&body),
            });
        }
        if !http::is_event_stream(&response) {
            return Err(Failure::Protocol(format!(
                "GET {} did not answer with an SSE stream",
                self.sse_url
            )));
        }
        let mut stream = EventStream::new(response, self.shared.options.max_message_bytes);
        let first = tokio::time::timeout(ENDPOINT_TIMEOUT, async {
            loop {
                match stream.next().await {
                    Ok(Some(event)) if event.event.as_deref() == Some("endpoint") => {
                        return Ok(event.data);
                    }
                    Ok(Some(event)) => {
                        debug!(event = ?event.event, "event before `endpoint`, skipped")
                    }
                    Ok(None) => {
                        return Err("the stream ended before an `endpoint` event".to_owned())
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
        })
        .await;
        let data = match first {
            Ok(Ok(data)) => data,
            Ok(Err(why)) => return Err(Failure::Protocol(why)),
            Err(_) => {
                return Err(Failure::Protocol(format!(
                    "no `endpoint` event within {}s",
                    ENDPOINT_TIMEOUT.as_secs()
                )))
            }
        };
        let text = String::from_utf8_lossy(&data);
        let endpoint = self.sse_url.join(text.trim()).map_err(|e| {
            Failure::Protocol(format!("the `endpoint` event `{text}` is not a URL ({e})"))
        })?;
        if endpoint.origin() != self.sse_url.origin() {
            // Its POSTs would carry the daemon's headers and tokens to another server.
            return Err(Failure::Protocol(format!(
                "the `endpoint` event names another origin ({}) than the SSE stream ({}); refused",
                endpoint.origin().ascii_serialization(),
                self.sse_url.origin().ascii_serialization()
            )));
        }
        debug!(%endpoint, "legacy SSE session open");
        let closed = CancellationToken::new();
        let session = self.clone();
        let reader_closed = closed.clone();
        tokio::spawn(async move { session.read(stream, reader_closed).await });
        Ok(Connection { endpoint, closed })
    }

    /// Forgets the daemon session (the next message opens a new stream).
    pub async fn reset(&self) {
        if let Some(open) = self.connection.lock().await.take() {
            open.closed.cancel();
        }
    }

    /// Forwards the GET stream's messages until it ends.
    async fn read(&self, mut stream: EventStream, closed: CancellationToken) {
        let why = loop {
            // Cancel-safe: EventStream::next keeps undelivered events in its queue.
            let next = tokio::select! {
                next = stream.next() => next,
                () = self.shared.shutdown.cancelled() => return,
                () = closed.cancelled() => return,
            };
            match next {
                Ok(Some(event)) if event.is_message() => match Message::parse_many(event.data) {
                    Ok(messages) => {
                        for message in messages {
                            self.shared.deliver(message).await;
                        }
                    }
                    Err(e) => warn!(
                        "{} sent an SSE event that is not a JSON-RPC message ({e}); skipped it",
                        self.shared.options.label
                    ),
                },
                Ok(Some(event)) => debug!(event = ?event.event, "ignoring a non-message event"),
                Ok(None) => break "the daemon closed its SSE stream".to_owned(),
                Err(e) => break format!("the daemon's SSE stream broke ({e})"),
            }
        };
        closed.cancel();
        warn!("{}: {why}", self.shared.options.label);
        self.shared.fail_all(&Failure::StreamEnded(why)).await;
        self.shared.trigger_recovery();
    }

    pub async fn send(self: &Arc<Self>, message: Message) {
        let endpoint = match self.endpoint().await {
            Ok(endpoint) => endpoint,
            Err(failure) => return self.shared.report(&message, &failure).await,
        };
        let response = self
            .shared
            .send_authorized(|| {
                self.shared
                    .http
                    .post(endpoint.clone())
                    .headers(self.shared.options.headers.clone())
                    .header(CONTENT_TYPE, http::JSON)
                    .body(message.bytes().clone())
            })
            .await;
        let failure = match response {
            Ok(r) if r.status().is_success() => return,
            Ok(r) if r.status() == StatusCode::NOT_FOUND => Failure::SessionLost { status: 404 },
            Ok(r) => {
                let status = r.status().as_u16();
                let body = http::read_body(r, 64 * 1024).await.unwrap_or_default();
                Failure::Status {
                    status,
                    body: http::excerpt(&body),
                }
            }
            Err(e) => failure_of(&e),
        };
        self.shared.report(&message, &failure).await;
    }
}
