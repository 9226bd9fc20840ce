//! Newline-delimited JSON-RPC framing for the client side of the proxy.
//!
//! One message per `\n`-terminated line. A trailing `\r`, a UTF-8 byte-order mark and blank
//! lines are tolerated. Lines may be many megabytes (base64 images), so the bound is generous;
//! a longer line is skipped to its end and reported as [`Line::TooLong`], never buffered whole;
//! the ids of the requests in it are picked out on the way ([`IdScanner`]), so each can still be
//! answered under its own id.
//! Reading is blocking: the proxy runs it on a thread of its own.

use std::io::{self, BufRead};

use bytes::Bytes;

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

pub struct LineReader<R> {
    inner: R,
    max_bytes: usize,
}

impl<R: BufRead> LineReader<R> {
    pub fn new(inner: R, max_bytes: usize) -> LineReader<R> {
        LineReader { inner, max_bytes }
    }

    /// The next non-blank line, or `None` at end of input.
    pub fn next_line(&mut self) -> io::Result<Option<Line>> {
        loop {
            let Some((line, total, overflow)) = self.read_raw()? else {
                return Ok(None);
            };
            if let Some(scanner) = overflow {
                return Ok(Some(Line::TooLong {
                    bytes: total,
                    ids: scanner.finish(),
                }));
            }
            let mut content: &[u8] = &line;
            content = content.strip_prefix(BOM).unwrap_or(content);
            content = content.strip_suffix(b"\r").unwrap_or(content);
            if content.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let start = content.as_ptr() as usize - line.as_ptr() as usize;
            let end = start + content.len();
            let mut line = line;
            line.truncate(end);
            let bytes = Bytes::from(line).slice(start..);
            return Ok(Some(Line::Message(bytes)));
        }
    }

    /// Reads up to the next `\n`: (content, total length, and when it overflowed the bound, the
    /// scanner that read it for ids).
    #[allow(clippy::type_complexity)]
    fn read_raw(&mut self) -> io::Result<Option<(Vec<u8>, usize, Option<IdScanner>)>> {
        let mut line = Vec::new();
        let mut total = 0usize;
        let mut overflow: Option<IdScanner> = None;
        let mut saw_any = false;
        loop {
            let buf = match self.inner.fill_buf() {
                Ok(buf) => buf,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if buf.is_empty() {
                return Ok(saw_any.then_some((line, total, overflow)));
            }
            saw_any = true;
            let (chunk, done) = match memchr::memchr(b'\n', buf) {
                Some(i) => (&buf[..i], Some(i + 1)),
                None => (buf, None),
            };
            total += chunk.len();
            match &mut overflow {
                Some(scanner) => scanner.feed(chunk),
                None if line.len() + chunk.len() > self.max_bytes => {
                    let mut scanner = IdScanner::default();
                    scanner.feed(&line);
                    scanner.feed(chunk);
                    overflow = Some(scanner);
                    line = Vec::new();
                }
                None => line.extend_from_slice(chunk),
            }
            let consumed = done.unwrap_or(buf.len());
            self.inner.consume(consumed);
            if done.is_some() {
                return Ok(Some((line, total, overflow)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], max: usize) -> Vec<Line> {
        let mut reader = LineReader::new(io::BufReader::with_capacity(4, input), max);
        let mut out = Vec::new();
        while let Some(line) = reader.next_line().expect("read") {
            out.push(line);
        }
        out
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
