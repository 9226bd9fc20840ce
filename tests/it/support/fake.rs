//! In-process axum servers for faults real servers will not produce on demand.
//!
//! Each fake runs on its own runtime thread and records every request it gets (method,
//! headers, body, arrival time) so tests can check what the proxy sent.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub headers: HeaderMap,
    pub body: String,
    pub at: Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    pub fn rpc_method(&self) -> Option<String> {
        self.json()
            .get("method")
            .and_then(Value::as_str)
            .map(str::to_owned)
    }
}

pub struct Fake {
    pub url: String,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Fake {
    /// Serves `router` at `http://127.0.0.1:PORT/mcp` (the router decides what paths exist).
    pub fn start(router: Router) -> Fake {
        Fake::start_on(0, router)
    }

    /// Like `start`, on a given port (0 = any).
    pub fn start_on(port: u16, router: Router) -> Fake {
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let recorder = requests.clone();
        let router = router
            .layer(axum::extract::DefaultBodyLimit::disable())
            .layer(axum::middleware::from_fn(
                move |request: Request, next: Next| {
                    let recorder = recorder.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let bytes = axum::body::to_bytes(body, usize::MAX)
                            .await
                            .unwrap_or_default();
                        recorder
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(Recorded {
                                method: parts.method.to_string(),
                                headers: parts.headers.clone(),
                                body: String::from_utf8_lossy(&bytes).into_owned(),
                                at: Instant::now(),
                            });
                        next.run(Request::from_parts(parts, Body::from(bytes)))
                            .await
                    }
                },
            ));
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                    .await
                    .expect("bind");
                let _ = port_tx.send(listener.local_addr().expect("addr").port());
                let _ = axum::serve(listener, router)
                    .with_graceful_shutdown(async {
                        let _ = shutdown_rx.await;
                    })
                    .await;
            });
            runtime.shutdown_timeout(Duration::from_millis(100));
        });
        let port = port_rx.recv().expect("fake server port");
        Fake {
            url: format!("http://127.0.0.1:{port}/mcp"),
            requests,
            shutdown: Some(shutdown_tx),
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Requests whose JSON-RPC method is `method`.
    pub fn with_rpc_method(&self, method: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.rpc_method().as_deref() == Some(method))
            .collect()
    }

    pub fn with_http_method(&self, method: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method)
            .collect()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("response")
}

/// 202 Accepted, empty.
pub fn accepted() -> Response {
    Response::builder()
        .status(StatusCode::ACCEPTED)
        .body(Body::empty())
        .expect("response")
}

/// One piece of an SSE body: text to send, a pause, or a broken connection.
pub enum Chunk {
    Text(String),
    Pause(Duration),
    Break,
}

/// An SSE response made of `chunks`; it ends cleanly unless a chunk is [`Chunk::Break`].
pub fn sse_response(chunks: Vec<Chunk>) -> Response {
    sse_response_with(StatusCode::OK, HeaderMap::new(), chunks)
}

pub fn sse_response_with(status: StatusCode, headers: HeaderMap, chunks: Vec<Chunk>) -> Response {
    let stream = futures_util::stream::unfold(chunks.into_iter(), |mut chunks| async move {
        loop {
            match chunks.next()? {
                Chunk::Text(text) => {
                    return Some((Ok::<Bytes, std::io::Error>(Bytes::from(text)), chunks))
                }
                Chunk::Pause(pause) => tokio::time::sleep(pause).await,
                Chunk::Break => {
                    return Some((
                        Err(std::io::Error::other("connection broken on purpose")),
                        chunks,
                    ))
                }
            }
        }
    });
    let mut response = Response::builder()
        .status(status)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(stream))
        .expect("response");
    response.headers_mut().extend(headers);
    response
}

/// `data: <message>` as one SSE event.
pub fn event(message: &Value) -> Chunk {
    Chunk::Text(format!("event: message\ndata: {message}\n\n"))
}

/// A router serving `/mcp`: POST bodies go to `on_post` (as parsed JSON, with the request's
/// headers); GET answers 405 and DELETE 200.
pub fn mcp_router<F>(on_post: F) -> Router
where
    F: Fn(Value, HeaderMap) -> Response + Clone + Send + Sync + 'static,
{
    Router::new().route(
        "/mcp",
        mcp_routes(on_post).get(|| async { StatusCode::METHOD_NOT_ALLOWED }),
    )
}

/// POST (to `on_post`) and DELETE (200) for `/mcp`; add `.get(...)` for a GET stream.
pub fn mcp_routes<F>(on_post: F) -> axum::routing::MethodRouter
where
    F: Fn(Value, HeaderMap) -> Response + Clone + Send + Sync + 'static,
{
    axum::routing::post(move |headers: HeaderMap, body: Bytes| {
        let on_post = on_post.clone();
        async move {
            match serde_json::from_slice::<Value>(&body) {
                Ok(message) => on_post(message, headers),
                Err(_) => Response::builder()
                    .status(StatusCode::BAD_REQUEST)
                    .body(Body::from("not json"))
                    .expect("response"),
            }
        }
    })
    .delete(|| async { StatusCode::OK })
}

/// `{"jsonrpc":"2.0","id":ID,"result":RESULT}` for the request `message`.
pub fn result_for(message: &Value, result: Value) -> Value {
    serde_json::json!({"jsonrpc": "2.0", "id": message["id"].clone(), "result": result})
}
