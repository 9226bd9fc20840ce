//! Server-sent events decoding, bounded at the byte level.
//!
//! Follows the WHATWG event-stream rules that MCP servers rely on: CR, LF and CRLF line ends
//! (also split across chunks), `:` comments, multi-line `data:` joined with `\n`, a missing
//! `event:` meaning `message`, and `id:`/`retry:` recorded for resumption. Events whose data is
//! empty (2025-11-25 "priming" events) update `id`/`retry` but are not yielded. No line and no
//! event may exceed `max_event_bytes`, so a hostile or broken server cannot grow memory without
//! bound. Hand-written rather than `sse-stream` because mcpsm needs that byte bound and the
//! id/retry state between chunks, and the format is small.

use bytes::{Buf, Bytes, BytesMut};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field; `None` means the default, `message`.
    pub event: Option<String>,
    pub data: Bytes,
}

impl Event {
    pub fn is_message(&self) -> bool {
        matches!(self.event.as_deref(), None | Some("message"))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("an event on the SSE stream is larger than {limit} bytes")]
pub struct EventTooLarge {
    pub limit: usize,
}

#[derive(Debug)]
pub struct Decoder {
    buffer: BytesMut,
    /// Bytes of `buffer` already searched for a line end.
    scanned: usize,
    /// The previous chunk ended in CR: a leading LF of the next one belongs to it.
    after_cr: bool,
    data: Vec<u8>,
    has_data: bool,
    event: Option<String>,
    last_event_id: Option<String>,
    retry_ms: Option<u64>,
    max_event_bytes: usize,
}

impl Decoder {
    pub fn new(max_event_bytes: usize) -> Decoder {
        Decoder {
            buffer: BytesMut::new(),
            scanned: 0,
            after_cr: false,
            data: Vec::new(),
            has_data: false,
            event: None,
            last_event_id: None,
            retry_ms: None,
            max_event_bytes,
        }
    }

    /// The id of the last event seen (dispatched or not), for `Last-Event-ID`.
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref()
    }

    /// The reconnection delay the server asked for, if any.
    pub fn retry_ms(&self) -> Option<u64> {
        self.retry_ms
    }

    /// Feeds a chunk and appends every complete event to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<Event>) -> Result<(), EventTooLarge> {
        let mut chunk = chunk;
        if self.after_cr && !chunk.is_empty() {
            self.after_cr = false;
            if chunk[0] == b'\n' {
                chunk = &chunk[1..];
            }
        }
        self.buffer.extend_from_slice(chunk);
        loop {
            let Some(offset) = memchr::memchr2(b'\n', b'\r', &self.buffer[self.scanned..]) else {
                self.scanned = self.buffer.len();
                if self.buffer.len() + self.data.len() > self.max_event_bytes {
                    return Err(self.too_large());
                }
                return Ok(());
            };
            let end = self.scanned + offset;
            let terminator = self.buffer[end];
            let line = self.buffer.split_to(end).freeze();
            self.buffer.advance(1);
            self.scanned = 0;
            if terminator == b'\r' {
                if self.buffer.is_empty() {
                    self.after_cr = true;
                } else if self.buffer[0] == b'\n' {
                    self.buffer.advance(1);
                }
            }
            self.line(line, out)?;
        }
    }

    fn too_large(&self) -> EventTooLarge {
        EventTooLarge {
            limit: self.max_event_bytes,
        }
    }

    fn line(&mut self, line: Bytes, out: &mut Vec<Event>) -> Result<(), EventTooLarge> {
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let (field, value) = match memchr::memchr(b':', &line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                let value = value.strip_prefix(b" ").unwrap_or(value);
                (&line[..colon], value)
            }
            None => (&line[..], &b""[..]),
        };
        match field {
            b"data" => {
                if self.data.len() + value.len() + 1 > self.max_event_bytes {
                    return Err(self.too_large());
                }
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            b"id" if !value.contains(&0) => {
                self.last_event_id = Some(String::from_utf8_lossy(value).into_owned());
            }
            b"retry" => {
                if let Some(ms) = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    self.retry_ms = Some(ms);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<Event>) {
        let event = self.event.take();
        self.has_data = false;
        if self.data.is_empty() || self.data.iter().all(u8::is_ascii_whitespace) {
            self.data.clear();
            return;
        }
        out.push(Event {
            event,
            data: Bytes::from(std::mem::take(&mut self.data)),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_chunks(chunks: &[&[u8]]) -> (Vec<Event>, Decoder) {
        let mut decoder = Decoder::new(1024);
        let mut out = Vec::new();
        for chunk in chunks {
            decoder.feed(chunk, &mut out).expect("within bounds");
        }
        (out, decoder)
    }

    fn data(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| String::from_utf8(e.data.to_vec()).expect("utf8"))
            .collect()
    }

    #[test]
    fn priming_event_records_id_and_retry_but_is_not_yielded() {
        let (events, decoder) = decode_chunks(&[b"id: 42\nretry: 3000\ndata: \n\n"]);
        assert!(events.is_empty());
        assert_eq!(decoder.last_event_id(), Some("42"));
        assert_eq!(decoder.retry_ms(), Some(3000));
    }

    #[test]
    fn all_line_endings_and_split_chunks() {
        let (events, _) = decode_chunks(&[
            b"data: a\r\n\r\ndata: b\r",
            b"\r",
            b"data: c\n",
            b"\n",
            b"event: message\rdata: d\r\r",
        ]);
        assert_eq!(data(&events), ["a", "b", "c", "d"]);
    }

    #[test]
    fn crlf_split_between_chunks_is_one_line_end() {
        let (events, _) = decode_chunks(&[b"data: x\r", b"\n\r", b"\n"]);
        assert_eq!(data(&events), ["x"]);
    }

    #[test]
    fn multi_line_data_is_joined_and_comments_ignored() {
        let (events, _) = decode_chunks(&[b": keepalive\ndata: {\"a\":\ndata: 1}\n\n"]);
        assert_eq!(data(&events), ["{\"a\":\n1}"]);
        assert!(events[0].is_message());
    }

    #[test]
    fn named_events_are_kept() {
        let (events, _) = decode_chunks(&[b"event: endpoint\ndata: /message?sessionId=1\n\n"]);
        assert_eq!(events[0].event.as_deref(), Some("endpoint"));
        assert!(!events[0].is_message());
    }

    #[test]
    fn oversized_event_is_an_error() {
        let mut decoder = Decoder::new(8);
        let mut out = Vec::new();
        assert!(decoder.feed(b"data: 0123456789\n", &mut out).is_err());
        let mut decoder = Decoder::new(12);
        assert!(decoder.feed(b"data: 0123", &mut out).is_ok());
        assert!(decoder.feed(b"456789", &mut out).is_err());
    }
}
