//! The browser step: a redirect listener on 127.0.0.1 (a random port unless one is
//! configured), the system browser or a configured opener command, and the check that the
//! redirect carries the `state` mcpsm sent.

use std::collections::HashMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tracing::debug;

use super::AuthError;

pub const CALLBACK_PATH: &str = "/callback";
/// The environment variable naming a command that opens the authorization URL (appended as
/// its last argument) instead of the system browser.
pub const OPENER_ENV: &str = "MCPSM_OAUTH_OPENER";

pub struct Listener {
    listener: TcpListener,
    pub port: u16,
}

impl Listener {
    /// Binds 127.0.0.1:`port` (0 = any free port).
    pub async fn bind(port: u16) -> Result<Listener, AuthError> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.map_err(|e| {
            AuthError::Browser(format!(
                "cannot listen for the authorization redirect on 127.0.0.1:{port}: {e}"
            ))
        })?;
        let port = listener
            .local_addr()
            .map_err(|e| AuthError::Browser(e.to_string()))?
            .port();
        Ok(Listener { listener, port })
    }

    pub fn redirect_uri(&self) -> String {
        format!("http://127.0.0.1:{}{CALLBACK_PATH}", self.port)
    }

    /// Waits for the redirect that carries `state`; other requests (a favicon, a stale
    /// redirect) are answered and ignored.
    pub async fn wait(
        &self,
        state: &str,
        timeout: Duration,
    ) -> Result<HashMap<String, String>, AuthError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let accepted = tokio::time::timeout_at(deadline, self.listener.accept())
                .await
                .map_err(|_| {
                    AuthError::Browser(format!(
                        "no authorization came back within {}s",
                        timeout.as_secs()
                    ))
                })?;
            let Ok((mut stream, _)) = accepted else {
                continue;
            };
            let mut buffer = vec![0u8; 16 * 1024];
            let mut used = 0;
            // The request line is all that matters; read until the end of the headers.
            let read = tokio::time::timeout(Duration::from_secs(10), async {
                while used < buffer.len() {
                    let n = stream.read(&mut buffer[used..]).await?;
                    if n == 0 {
                        break;
                    }
                    used += n;
                    if buffer[..used].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                continue;
            }
            let head = String::from_utf8_lossy(&buffer[..used]);
            let target = head.split_whitespace().nth(1).unwrap_or_default();
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let params: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect();
            let ours =
                path == CALLBACK_PATH && params.get("state").map(String::as_str) == Some(state);
            let (status, body) = if ours {
                if params.contains_key("error") {
                    (
                        "200 OK",
                        "Authorization was refused. You can close this window.",
                    )
                } else {
                    ("200 OK", "mcpsm is authorized. You can close this window.")
                }
            } else {
                (
                    "404 Not Found",
                    "Not the authorization mcpsm is waiting for.",
                )
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes()).await;
            let _ = stream.shutdown().await;
            if ours {
                return Ok(params);
            }
            debug!(path, "ignoring a request to the redirect listener");
        }
    }
}

/// Shows the authorization URL: always on stderr (a terminal over SSH has no browser), and in
/// the configured opener or the system browser. True when one of those was started.
pub fn open(url: &str, label: &str, opener: Option<&str>) -> bool {
    eprintln!("mcpsm: to authorize {label}, open this URL in a browser:\n  {url}");
    let command = opener
        .map(str::to_owned)
        .or_else(|| std::env::var(OPENER_ENV).ok())
        .filter(|c| !c.trim().is_empty());
    let (program, mut args) = match &command {
        Some(command) => {
            let mut words = command.split_whitespace().map(str::to_owned);
            let Some(program) = words.next() else {
                return false;
            };
            (program, words.collect::<Vec<_>>())
        }
        None => match crate::platform::browser_command() {
            Some((program, args)) => (program, args),
            None => return false,
        },
    };
    args.push(url.to_owned());
    let spawned = std::process::Command::new(&program)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn();
    match spawned {
        // Reaped in the background: the opener may outlive the wait (a browser).
        Ok(mut child) => {
            std::thread::spawn(move || child.wait());
            true
        }
        Err(e) => {
            eprintln!("mcpsm: could not run `{program}` to open it: {e}");
            false
        }
    }
}
