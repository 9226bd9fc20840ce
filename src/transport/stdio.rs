//! Newline-delimited JSON-RPC framing for the client side of the proxy.
//!
//! One message per `\n`-terminated line. A trailing `\r`, a UTF-8 byte-order mark and blank
//! lines are tolerated. Lines may be many megabytes (base64 images), so the bound is generous;
//! a longer line is skipped to its end and reported as [`Line::TooLong`], never buffered whole;
//! the ids of the requests in it are picked out on the way ([`IdScanner`]), so each can still be
//! answered under its own id.

use std::io;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::jsonrpc::{Id, IdScanner};

/// Default bound on one message: 64 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

const BOM: &[u8] = b"\xEF\xBB\xBF";

#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A line's content, without its terminator, BOM or trailing `\r`.
    Message(Bytes),
    /// A line longer than the bound; its content was discarded, but for the ids of the
    /// requests it holds.
    TooLong { bytes: usize, ids: Vec<Id> },
}

/// Bytes asked of each read: what a pipe holds at once on Linux.
const READ_SIZE: usize = 64 * 1024;

pub struct LineReader<R> {
    inner: R,
    max_bytes: usize,
    /// Read and not yet returned. A line is split off it and frozen: its bytes are never
    /// copied (a long line grows the buffer by doubling, as a `Vec` would).
    buf: BytesMut,
    /// How much of `buf` is known to hold no `\n`.
    searched: usize,
    /// The line being read overflowed the bound: its ids so far and its length.
    overflow: Option<(IdScanner, usize)>,
    eof: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub fn new(inner: R, max_bytes: usize) -> LineReader<R> {
        LineReader {
            inner,
            max_bytes,
            buf: BytesMut::new(),
            searched: 0,
            overflow: None,
            eof: false,
        }
    }

    /// The next non-blank line, or `None` at end of input. Cancel-safe: what was read stays
    /// in the buffer.
    pub async fn next_line(&mut self) -> io::Result<Option<Line>> {
        loop {
            if let Some(line) = self.split_line() {
                match line {
                    Some(line) => return Ok(Some(line)),
                    None => continue, // blank
                }
            }
            if self.eof {
                return Ok(None);
            }
            if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
                // Doubling while a line grows: a megabyte line is copied about once in all.
                self.buf.reserve(READ_SIZE.max(self.buf.len()));
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                self.eof = true;
            }
        }
    }

    /// The next line from the buffer: `Some(Some(line))`, `Some(None)` for a blank one, `None`
    /// when more input is needed. At end of input, what is left is the last line.
    fn split_line(&mut self) -> Option<Option<Line>> {
        let end = match memchr::memchr(b'\n', &self.buf[self.searched..]) {
            Some(i) => self.searched + i,
            None if self.eof && (!self.buf.is_empty() || self.overflow.is_some()) => self.buf.len(),
            None => {
                self.searched = self.buf.len();
                if let Some((scanner, total)) = &mut self.overflow {
                    scanner.feed(&self.buf);
                    *total += self.buf.len();
                    self.buf.clear();
                    self.searched = 0;
                } else if self.buf.len() > self.max_bytes {
                    let mut scanner = IdScanner::default();
                    scanner.feed(&self.buf);
                    self.overflow = Some((scanner, self.buf.len()));
                    self.buf.clear();
                    self.searched = 0;
                }
                return None;
            }
        };
        let taken = (end + 1).min(self.buf.len());
        let line = self.buf.split_to(taken);
        self.searched = 0;
        let content = &line[..end];
        if let Some((mut scanner, total)) = self.overflow.take() {
            scanner.feed(content);
            return Some(Some(Line::TooLong {
                bytes: total + content.len(),
                ids: scanner.finish(),
            }));
        }
        if content.len() > self.max_bytes {
            let mut scanner = IdScanner::default();
            scanner.feed(content);
            return Some(Some(Line::TooLong {
                bytes: content.len(),
                ids: scanner.finish(),
            }));
        }
        let mut text: &[u8] = content;
        text = text.strip_prefix(BOM).unwrap_or(text);
        text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.iter().all(u8::is_ascii_whitespace) {
            return Some(None);
        }
        let start = text.as_ptr() as usize - line.as_ptr() as usize;
        let stop = start + text.len();
        Some(Some(Line::Message(line.freeze().slice(start..stop))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::ReadBuf;

    /// Gives its input a few bytes per read, so lines straddle reads.
    struct Trickle<'a>(&'a [u8]);

    impl AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let n = self.0.len().min(4).min(buf.remaining());
            buf.put_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Poll::Ready(Ok(()))
        }
    }

    fn lines(input: &[u8], max: usize) -> Vec<Line> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let mut reader = LineReader::new(Trickle(input), max);
            let mut out = Vec::new();
            while let Some(line) = reader.next_line().await.expect("read") {
                out.push(line);
            }
            out
        })
    }

    fn message(text: &str) -> Line {
        Line::Message(Bytes::copy_from_slice(text.as_bytes()))
    }

    #[test]
    fn crlf_bom_and_blank_lines_are_tolerated() {
        let input = b"\xEF\xBB\xBF{\"a\":1}\r\n\n  \r\n{\"b\":2}\n{\"c\":3}";
        assert_eq!(
            lines(input, 1024),
            [
                message("{\"a\":1}"),
                message("{\"b\":2}"),
                message("{\"c\":3}")
            ]
        );
    }

    #[test]
    fn too_long_lines_are_skipped_and_reading_goes_on() {
        let input = b"{\"long\":\"0123456789\"}\n{\"ok\":1}\n";
        assert_eq!(
            lines(input, 12),
            [
                Line::TooLong {
                    bytes: 21,
                    ids: Vec::new()
                },
                message("{\"ok\":1}")
            ]
        );
    }

    #[test]
    fn the_ids_of_a_too_long_line_are_found() {
        let input = b"[{\"id\":\"a\",\"method\":\"m\",\"params\":{\"x\":\"0123456789\"}},{\"method\":\"n\",\"id\":2}]\n";
        let found = lines(input, 12);
        let Line::TooLong { ids, .. } = &found[0] else {
            panic!("{found:?}");
        };
        let ids: Vec<&str> = ids.iter().map(Id::as_json).collect();
        assert_eq!(ids, ["\"a\"", "2"]);
    }
}
