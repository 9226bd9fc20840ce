//! HTTP pieces shared by the streamable and legacy clients: the client itself, bounded bodies,
//! and an SSE event stream over a response body.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::header::{HeaderValue, CONTENT_TYPE};
use url::Url;

use super::sse::{Decoder, Event, EventTooLarge};

pub const ACCEPT_BOTH: HeaderValue =
    HeaderValue::from_static("application/json, text/event-stream");
pub const ACCEPT_SSE: HeaderValue = HeaderValue::from_static("text/event-stream");
pub const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Builds the HTTP client for one upstream. Loopback traffic never goes through a proxy from
/// `HTTP_PROXY`; remote daemons honour it.
pub fn client(url: &Url) -> Result<reqwest::Client, reqwest::Error> {
    install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(60))
        // Idle connections kept: no more than may be busy at once.
        .pool_max_idle_per_host(slots().requests + slots().others);
    if is_loopback(url) {
        builder = builder.no_proxy();
    }
    if url.scheme() == "http" {
        // No TLS will be spoken: skip loading the system's root certificates (time and
        // memory at every proxy start).
        builder = builder.tls_certs_only([]);
    }
    builder.build()
}

/// How many messages of one session may use a connection to the daemon at once.
///
/// Each message on its way (or waiting for its answer) holds a connection: HTTP/1.1 carries one
/// exchange at a time. Bounding them bounds the sockets a proxy opens, so a client that
/// pipelines 1,000 calls does not need 1,000 file descriptors; the others wait their turn, in
/// order (tokio's semaphore is fair). A connection lingers for a moment after its exchange
/// before it is idle in the pool again, so up to twice the bound may be open: the bound leaves
/// room for that within the process's open-file limit.
#[derive(Clone, Copy, Debug)]
pub struct Slots {
    /// Requests (each may be a long `tools/call` stream).
    pub requests: usize,
    /// Notifications and answers to server requests, counted apart so that the answer a
    /// `tools/call` waits for (an elicitation, say) never queues behind that call.
    pub others: usize,
}

/// Most requests of one session in flight at once, whatever the open-file limit.
const MAX_REQUESTS: usize = 64;
/// Descriptors left for everything else (stdio, the runtime, the GET stream, the manager).
const RESERVED_DESCRIPTORS: u64 = 32;

pub fn slots() -> Slots {
    static SLOTS: std::sync::OnceLock<Slots> = std::sync::OnceLock::new();
    *SLOTS.get_or_init(|| {
        // Busy and lingering connections, plus a quarter more for `others`: 2 × 1.25 × requests.
        let room = open_file_limit()
            .saturating_sub(RESERVED_DESCRIPTORS)
            .saturating_mul(2)
            / 5;
        let requests = usize::try_from(room)
            .unwrap_or(MAX_REQUESTS)
            .clamp(4, MAX_REQUESTS);
        Slots {
            requests,
            others: (requests / 4).max(2),
        }
    })
}

/// The soft limit on open files of this process (`ulimit -n`; none on Windows).
fn open_file_limit() -> u64 {
    crate::platform::open_file_limit()
}

/// reqwest is built without a default TLS provider (aws-lc is slow to build); use ring.
pub fn install_crypto_provider() {
    // Fails only if a provider is already installed, which is what we want anyway.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

pub fn is_event_stream(response: &reqwest::Response) -> bool {
    content_type_is(response, "text/event-stream")
}

pub fn is_json(response: &reqwest::Response) -> bool {
    content_type_is(response, "application/json")
}

fn content_type_is(response: &reqwest::Response, wanted: &str) -> bool {
    response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(wanted))
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the response body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error(transparent)]
    Http(#[from] reqwest::Error),
}

/// Reads a whole body, refusing more than `limit` bytes.
pub async fn read_body(response: reqwest::Response, limit: usize) -> Result<Bytes, BodyError> {
    let length = response.content_length();
    if length.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let mut stream = response.bytes_stream();
    let mut first: Option<Bytes> = None;
    let mut rest: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let have = first.as_ref().map_or(0, Bytes::len) + rest.len();
        if have + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        match &first {
            None => first = Some(chunk),
            Some(head) => {
                if rest.is_empty() {
                    // Sized once when the length is known: no doubling copies of big bodies.
                    let expected = length.map_or(0, |n| n as usize);
                    rest.reserve(expected.max(head.len() + chunk.len()));
                    rest.extend_from_slice(head);
                }
                rest.extend_from_slice(&chunk);
            }
        }
    }
    Ok(if rest.is_empty() {
        first.unwrap_or_default()
    } else {
        Bytes::from(rest)
    })
}

/// A short, printable excerpt of an error body for messages.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let mut out: String = text.chars().take(300).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    TooLarge(#[from] EventTooLarge),
    #[error("the event stream broke: {0}")]
    Http(#[from] reqwest::Error),
}

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// The SSE events of one response body.
pub struct EventStream {
    body: Body,
    decoder: Decoder,
    queue: VecDeque<Event>,
    scratch: Vec<Event>,
}

impl EventStream {
    pub fn new(response: reqwest::Response, max_event_bytes: usize) -> EventStream {
        EventStream {
            body: Box::pin(response.bytes_stream()),
            decoder: Decoder::new(max_event_bytes),
            queue: VecDeque::new(),
            scratch: Vec::new(),
        }
    }

    /// The next event with data; `Ok(None)` when the server ended the stream.
    /// Cancel-safe: a chunk is decoded into the queue before anything is returned.
    pub async fn next(&mut self) -> Result<Option<Event>, StreamError> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Ok(Some(event));
            }
            match self.body.next().await {
                None => return Ok(None),
                Some(chunk) => {
                    self.decoder.feed(&chunk?, &mut self.scratch)?;
                    self.queue.extend(self.scratch.drain(..));
                }
            }
        }
    }

    pub fn last_event_id(&self) -> Option<&str> {
        self.decoder.last_event_id()
    }

    pub fn retry(&self) -> Option<Duration> {
        self.decoder.retry_ms().map(Duration::from_millis)
    }
}

/// The innermost cause of an HTTP error, which is the part a person can act on.
pub fn cause(error: &reqwest::Error) -> String {
    let mut source: &dyn std::error::Error = error;
    while let Some(next) = source.source() {
        source = next;
    }
    let text = source.to_string();
    if error.is_timeout() {
        format!("timed out ({text})")
    } else {
        text
    }
}
