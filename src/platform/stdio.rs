//! The proxy's stdin and stdout as async streams on the runtime's own thread.
//!
//! A proxied call is a line read from stdin, a POST, and a line written to stdout. Done on the
//! runtime itself, a call needs no hand-off between threads (each costs a wake-up, tens of µs
//! of kernel time on a busy machine). On Unix, a pipe or a socket — what an MCP client gives
//! its server — is made non-blocking and registered with the reactor
//! ([`super::nonblocking_stdio`]); its flags are put back when the session ends
//! ([`super::restore_stdio`]). O_NONBLOCK belongs to the open file, which a terminal shares
//! with the shell that started the proxy, so a terminal (or a file, or `/dev/null`, which the
//! reactor cannot watch) and every handle on Windows go through tokio's blocking stdio, which
//! reads and writes on a helper thread: slower, and works anywhere.

use tokio::io::{AsyncRead, AsyncWrite};

/// stdin and stdout of the proxy.
pub struct ProxyStdio {
    pub input: Box<dyn AsyncRead + Send + Unpin>,
    pub output: Box<dyn AsyncWrite + Send + Unpin>,
    /// How they are read and written (for the debug log).
    pub how: &'static str,
}

impl ProxyStdio {
    /// stdin and stdout the way [`super::nonblocking_stdio`] can have them, else through
    /// tokio's blocking stdio.
    pub fn open() -> ProxyStdio {
        let (direct_in, direct_out) = super::nonblocking_stdio();
        let how = match (direct_in.is_some(), direct_out.is_some()) {
            (true, true) => "stdin and stdout on the runtime",
            (true, false) => "stdin on the runtime, stdout through a helper thread",
            (false, true) => "stdin through a helper thread, stdout on the runtime",
            (false, false) => "stdin and stdout through a helper thread",
        };
        ProxyStdio {
            input: direct_in.unwrap_or_else(|| Box::new(tokio::io::stdin())),
            output: direct_out.unwrap_or_else(|| Box::new(tokio::io::stdout())),
            how,
        }
    }
}

/// What [`super::nonblocking_stdio`] returns: stdin and stdout, each when it can be used on
/// the runtime directly.
pub type Direct = (
    Option<Box<dyn AsyncRead + Send + Unpin>>,
    Option<Box<dyn AsyncWrite + Send + Unpin>>,
);
