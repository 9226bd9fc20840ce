//! Unix: a stdin or stdout that is a pipe or a socket, non-blocking on the reactor (see
//! [`super::stdio`]).

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicI32, Ordering};
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tracing::debug;

use super::stdio::Direct;

/// The file status flags stdin (0) and stdout (1) had before this process set O_NONBLOCK on
/// them; -1 when it did not.
static ORIGINAL_FLAGS: [AtomicI32; 2] = [AtomicI32::new(-1), AtomicI32::new(-1)];

/// Most buffers one `writev` takes (POSIX guarantees at least 16; Linux and macOS take 1024).
const MAX_IOVECS: usize = 1024;

/// stdin and stdout, each when it is a pipe or a socket: non-blocking and on the reactor.
pub fn nonblocking_stdio() -> Direct {
    let input = on_reactor(libc::STDIN_FILENO, Interest::READABLE)
        .map(|fd| Box::new(fd) as Box<dyn AsyncRead + Send + Unpin>);
    let output = on_reactor(libc::STDOUT_FILENO, Interest::WRITABLE)
        .map(|fd| Box::new(fd) as Box<dyn AsyncWrite + Send + Unpin>);
    (input, output)
}

/// Gives stdin and stdout back the flags they had: whoever shares them (the client, a shell)
/// must not find them non-blocking. Call it once nothing reads or writes them any more, and
/// before `process::exit`.
pub fn restore_stdio() {
    for (fd, original) in (0..).zip(&ORIGINAL_FLAGS) {
        let flags = original.swap(-1, Ordering::AcqRel);
        if flags >= 0 {
            // SAFETY: F_SETFL on a standard descriptor with the flags it had; no memory is
            // involved.
            unsafe { libc::fcntl(fd, libc::F_SETFL, flags) };
        }
    }
}

/// A standard descriptor this process does not own (never closed here).
struct StdFd(RawFd);

impl AsRawFd for StdFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// A standard stream on the reactor.
pub struct Stream(AsyncFd<StdFd>);

fn on_reactor(fd: RawFd, interest: Interest) -> Option<Stream> {
    if !is_pipe_or_socket(fd) {
        return None;
    }
    // SAFETY: F_GETFL reads the flags of a descriptor; an invalid one gives -1.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return None;
    }
    let slot = &ORIGINAL_FLAGS[usize::from(fd == libc::STDOUT_FILENO)];
    if flags & libc::O_NONBLOCK == 0 {
        // SAFETY: as above, setting one more flag.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return None;
        }
        slot.store(flags, Ordering::Release);
    }
    // SAFETY: stdin and stdout stay open, the same descriptions, for the life of the process:
    // nothing in mcpsm closes or replaces them.
    match unsafe { AsyncFd::register_with_interest(StdFd(fd), interest) } {
        Ok(fd) => Some(Stream(fd)),
        Err(e) => {
            let (_, e) = e.into_parts();
            debug!("cannot put descriptor {fd} on the reactor ({e}); using a helper thread");
            let original = slot.swap(-1, Ordering::AcqRel);
            if original >= 0 {
                // SAFETY: as above, putting the flags back.
                unsafe { libc::fcntl(fd, libc::F_SETFL, original) };
            }
            None
        }
    }
}

/// Only pipes and sockets: O_NONBLOCK on a terminal would reach the shell that shares it, and
/// files cannot be watched by the reactor.
fn is_pipe_or_socket(fd: RawFd) -> bool {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes the struct it is given, which is read only when it succeeded.
    if unsafe { libc::fstat(fd, stat.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: fstat succeeded, so the struct is written.
    let mode = unsafe { stat.assume_init() }.st_mode & libc::S_IFMT;
    mode == libc::S_IFIFO || mode == libc::S_IFSOCK
}

/// The result of a system call returning a byte count or -1.
fn counted(n: isize) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

impl Stream {
    /// Runs `call` once the descriptor is `ready` and until it does not say EAGAIN.
    fn poll_io(
        &self,
        cx: &mut Context<'_>,
        write: bool,
        mut call: impl FnMut(RawFd) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = if write {
                ready!(self.0.poll_write_ready(cx))?
            } else {
                ready!(self.0.poll_read_ready(cx))?
            };
            match guard.try_io(|fd| call(fd.as_raw_fd())) {
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(result) => return Poll::Ready(result),
                // EAGAIN: the readiness was cleared; wait for the next.
                Err(_would_block) => {}
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // SAFETY: `read` only writes into the bytes it reports, which are then marked
        // initialized; nothing is read from the uninitialized part.
        let unfilled = unsafe { buf.unfilled_mut() };
        let n = ready!(self.poll_io(cx, false, |fd| {
            // SAFETY: the pointer and length are those of the unfilled part of `buf`.
            counted(unsafe { libc::read(fd, unfilled.as_mut_ptr().cast(), unfilled.len()) })
        }))?;
        // SAFETY: `read` wrote `n` bytes at the start of the unfilled part.
        unsafe { buf.assume_init(n) };
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_io(cx, true, |fd| {
            // SAFETY: the pointer and length are those of `data`.
            counted(unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) })
        })
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let count = bufs.len().min(MAX_IOVECS);
        self.poll_io(cx, true, |fd| {
            // SAFETY: IoSlice is ABI-compatible with `struct iovec` on Unix; `count` of them
            // are valid.
            counted(unsafe { libc::writev(fd, bufs.as_ptr().cast(), count as libc::c_int) })
        })
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
