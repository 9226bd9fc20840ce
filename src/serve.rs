//! The one way mcpsm serves HTTP: the manager API, the stdio host and the demo server all go
//! through [`serve`], so each socket they own gets the same treatment.
//!
//! - `TCP_NODELAY` on every accepted connection. Without it an answer written in two pieces
//!   (headers, then an SSE event) waits for the client's delayed ACK: ~40 ms per request.
//! - A connection that does not deliver a complete request head within [`IDLE_TIMEOUT`] is
//!   closed: one that connects and says nothing, sends its headers a byte at a time, or sits
//!   idle between keep-alive requests. The timer runs only while hyper waits for a request
//!   head, so a response that streams for hours (the stdio host's SSE answers and GET streams)
//!   is never cut.
//! - Graceful stop: when `stop` resolves, no new connection is accepted, idle connections are
//!   closed, and requests in flight are let finish.
//! - TLS ([`serve_tls`]): the handshake runs in the connection's own task, bounded like a
//!   request head, so a slow handshake never holds up accepting.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

/// How long a connection may take to send a request head, including the wait between two
/// requests on a kept-alive connection. Longer than the idle timeout of mcpsm's own HTTP
/// client pools (60 s in the transport, 30 s for the manager client), so the client always
/// closes an idle connection first and never races the server's close with a new request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(75);

/// Milliseconds that replace [`IDLE_TIMEOUT`], for tests that cannot wait 75 s.
pub const IDLE_TIMEOUT_ENV: &str = "MCPSM_HTTP_IDLE_TIMEOUT_MS";

/// Serves `router` on `listener` until `stop` resolves and every request in flight is done.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let idle_timeout = std::env::var(IDLE_TIMEOUT_ENV)
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(IDLE_TIMEOUT, Duration::from_millis);
    serve_inner(listener, router, stop, idle_timeout, None).await
}

/// [`serve`], speaking TLS on every connection when `tls` is given (the stdio host as a
/// network service). A handshake not done within [`IDLE_TIMEOUT`] closes the connection.
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    stop: impl Future<Output = ()> + Send + 'static,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> std::io::Result<()> {
    let idle_timeout = std::env::var(IDLE_TIMEOUT_ENV)
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(IDLE_TIMEOUT, Duration::from_millis);
    serve_inner(listener, router, stop, idle_timeout, tls).await
}

/// [`serve`] with another idle timeout (tests).
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    stop: impl Future<Output = ()> + Send + 'static,
    idle_timeout: Duration,
) -> std::io::Result<()> {
    serve_inner(listener, router, stop, idle_timeout, None).await
}

async fn serve_inner(
    listener: TcpListener,
    router: Router,
    stop: impl Future<Output = ()> + Send + 'static,
    idle_timeout: Duration,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> std::io::Result<()> {
    let connections = TaskTracker::new();
    let stopping = CancellationToken::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(idle_timeout)
        .keep_alive(true);
    tokio::pin!(stop);
    loop {
        // Both branches are cancel-safe: `accept` loses nothing when not polled to completion.
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: wait a little instead of spinning,
                    // as hyper and axum do; connection-level errors need no pause.
                    debug!("accepting a connection failed: {e}");
                    if !is_connection_error(&e) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    continue;
                }
            },
            () = &mut stop => break,
        };
        if let Err(e) = stream.set_nodelay(true) {
            debug!("setting TCP_NODELAY failed: {e}");
        }
        let stopping = stopping.clone();
        let http = http.clone();
        let router = router.clone();
        match &tls {
            None => {
                connections.spawn(drive(http, stream, router, stopping));
            }
            Some(tls) => {
                let tls = tls.clone();
                connections.spawn(async move {
                    // Cancel-safe: dropping a handshake only drops its connection.
                    let stream = tokio::select! {
                        done = tokio::time::timeout(idle_timeout, tls.accept(stream)) => match done {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => return debug!("TLS handshake failed: {e}"),
                            Err(_) => return debug!("TLS handshake not done within {idle_timeout:?}"),
                        },
                        () = stopping.cancelled() => return,
                    };
                    drive(http, stream, router, stopping).await;
                });
            }
        }
    }
    // Connections the kernel queued before the stop were made to us: serve their one request
    // (closing the listener would reset them, and a balancer answers 502 for a POST it
    // already sent). Each gets a token of its own, never cancelled: keep-alive is off instead.
    let mut last = http.clone();
    last.keep_alive(false);
    while let Some(Ok((stream, _))) = futures_util::FutureExt::now_or_never(listener.accept()) {
        let _ = stream.set_nodelay(true);
        let (last, router) = (last.clone(), router.clone());
        match &tls {
            None => {
                connections.spawn(drive(last, stream, router, CancellationToken::new()));
            }
            Some(tls) => {
                let tls = tls.clone();
                connections.spawn(async move {
                    if let Ok(Ok(stream)) =
                        tokio::time::timeout(idle_timeout, tls.accept(stream)).await
                    {
                        drive(last, stream, router, CancellationToken::new()).await;
                    }
                });
            }
        }
    }
    drop(listener);
    stopping.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Serves one connection until it ends; when `stopping` fires, lets the request in flight
/// finish and closes it.
async fn drive<IO>(
    http: hyper::server::conn::http1::Builder,
    stream: IO,
    router: Router,
    stopping: CancellationToken,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router));
    tokio::pin!(connection);
    // Cancel-safe: the connection future is polled by reference and resumed below.
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                debug!("connection ended: {e}");
            }
            return;
        }
        () = stopping.cancelled() => {}
    }
    // A request may be on its way on a connection accepted just before the stop: shutting
    // down now would close it unanswered (a balancer answers 502 for a POST it sent). Let it
    // arrive first; an idle connection is closed after this pause.
    if let Ok(result) = tokio::time::timeout(LAST_REQUEST_WAIT, connection.as_mut()).await {
        if let Err(e) = result {
            debug!("connection ended: {e}");
        }
        return;
    }
    connection.as_mut().graceful_shutdown();
    if let Err(e) = connection.await {
        debug!("connection ended: {e}");
    }
}

/// How long a stopping server waits for a request that may be on its way on a connection.
const LAST_REQUEST_WAIT: Duration = Duration::from_millis(200);

fn is_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    async fn server(idle: Duration) -> (u16, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let router = Router::new().route("/", axum::routing::get(|| async { "hi" }));
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(serve_with(
            listener,
            router,
            async move { stopped.cancelled().await },
            idle,
        ));
        (port, stop)
    }

    /// Reads until the server closes the connection; fails after `limit`.
    fn closed_within(stream: &mut std::net::TcpStream, limit: Duration) -> Vec<u8> {
        stream.set_read_timeout(Some(limit)).expect("timeout");
        let mut all = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return all,
                Ok(n) => all.extend_from_slice(&buf[..n]),
                Err(e) => panic!("the server did not close the connection within {limit:?}: {e}"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn silent_and_idle_connections_are_closed() {
        let (port, stop) = server(Duration::from_millis(300)).await;
        tokio::task::spawn_blocking(move || {
            // Connects and says nothing.
            let mut silent = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            closed_within(&mut silent, Duration::from_secs(5));
            // Half a request head, never finished.
            let mut slow = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            slow.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                .expect("write");
            closed_within(&mut slow, Duration::from_secs(5));
            // One request answered, then idle on a kept-alive connection.
            let mut idle = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            idle.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                .expect("write");
            let answer = closed_within(&mut idle, Duration::from_secs(5));
            assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
        })
        .await
        .expect("client");
        stop.cancel();
    }
}
