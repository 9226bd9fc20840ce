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

/// The proxy's own HTTP/1.1 client for a daemon at a loopback `http://` URL, where reqwest would
/// use no proxy and no TLS. reqwest spends about 13,000 instructions on every request in layers
/// no option turns off: its redirect layer turns the request's URI back into a string and parses
/// it as a `Url`, the response's URI is parsed once more, and retry and redirect futures wrap
/// each call. This sends the same request (headers, body, the connection settings of
/// [`client`]) through the hyper client reqwest itself is built on, with the URI parsed once,
/// and hands back a `reqwest::Response`, so reading answers works as before.
///
/// It differs from reqwest in one respect: it follows no redirects (a loopback daemon has no
/// reason to send any, and reqwest turns a redirected POST into a GET anyway).
pub struct Lean {
    client: LeanClient,
    /// The daemon's URL; requests to any other URL go through reqwest.
    url: Url,
    /// `url`, parsed once.
    uri: hyper::Uri,
}

type LeanClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    reqwest::Body,
>;

impl Lean {
    /// The lean client for `url`, when it is a loopback `http://` URL.
    pub fn new(url: &Url) -> Option<Lean> {
        if url.scheme() != "http" || !is_loopback(url) {
            return None;
        }
        let uri = url.as_str().parse::<hyper::Uri>().ok()?;
        // reqwest's settings (see `client`, and reqwest's own TCP keepalive defaults).
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        connector.set_keepalive(Some(Duration::from_secs(15)));
        connector.set_keepalive_interval(Some(Duration::from_secs(15)));
        connector.set_keepalive_retries(Some(3));
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .timer(hyper_util::rt::TokioTimer::new())
                .pool_timer(hyper_util::rt::TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(slots().requests + slots().others)
                .build(connector);
        Some(Lean {
            client,
            url: url.clone(),
            uri,
        })
    }

    /// Whether `request` can go this way: it is for the daemon's URL and wants nothing only
    /// reqwest does (a timeout of its own).
    pub fn takes(&self, request: &reqwest::Request) -> bool {
        request.url() == &self.url && request.timeout().is_none()
    }

    /// Sends `request` (one [`Lean::takes`]) to the daemon.
    pub async fn execute(
        &self,
        mut request: reqwest::Request,
    ) -> Result<reqwest::Response, hyper_util::client::legacy::Error> {
        // As reqwest does: no body is an empty one.
        let body = request
            .body_mut()
            .take()
            .unwrap_or_else(|| reqwest::Body::from(Bytes::new()));
        let mut sent = hyper::Request::new(body);
        *sent.method_mut() = request.method().clone();
        *sent.uri_mut() = self.uri.clone();
        *sent.headers_mut() = std::mem::take(request.headers_mut());
        let response = self.client.request(sent).await?;
        let (mut parts, body) = response.into_parts();
        // reqwest keeps a response's URL in an extension of its own, which only its builder
        // extension sets; without it, the conversion parses a placeholder URL every time.
        use reqwest::ResponseBuilderExt as _;
        if let Ok(marker) = hyper::Response::builder().url(self.url.clone()).body(()) {
            parts.extensions.extend(marker.into_parts().0.extensions);
        }
        Ok(reqwest::Response::from(hyper::Response::from_parts(
            parts,
            reqwest::Body::wrap(body),
        )))
    }
}

/// Why a request got no answer, from reqwest or from the [`Lean`] client.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Reqwest(#[from] reqwest::Error),
    #[error(transparent)]
    Lean(#[from] hyper_util::client::legacy::Error),
}

impl SendError {
    /// The error itself, whose `source()` chain leads to the cause.
    pub fn error(&self) -> &(dyn std::error::Error + 'static) {
        match self {
            SendError::Reqwest(e) => e,
            SendError::Lean(e) => e,
        }
    }

    /// No connection could be made.
    pub fn is_connect(&self) -> bool {
        match self {
            SendError::Reqwest(e) => e.is_connect(),
            SendError::Lean(e) => e.is_connect(),
        }
    }

    /// The innermost cause, as [`cause`] says it.
    pub fn cause(&self) -> String {
        match self {
            SendError::Reqwest(e) => cause(e),
            SendError::Lean(e) => {
                let text = innermost(e);
                let timed_out = any_cause(e, |e| {
                    e.downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
                });
                if timed_out {
                    format!("timed out ({text})")
                } else {
                    text
                }
            }
        }
    }
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
    let text = innermost(error);
    if error.is_timeout() {
        format!("timed out ({text})")
    } else {
        text
    }
}

fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut source = error;
    while let Some(next) = source.source() {
        source = next;
    }
    source.to_string()
}

/// Whether `test` holds for the error or anything it wraps. An `io::Error` hides the error it
/// wraps from `source()`, so that one is looked into as well.
pub(crate) fn any_cause(
    error: &(dyn std::error::Error + 'static),
    test: impl Fn(&(dyn std::error::Error + 'static)) -> bool,
) -> bool {
    let mut pending = vec![error];
    while let Some(e) = pending.pop() {
        if test(e) {
            return true;
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            pending.push(inner);
        }
        if let Some(source) = e.source() {
            pending.push(source);
        }
    }
    false
}
