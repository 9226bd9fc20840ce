//! The JSON-RPC envelope as mcpsm sees it.
//!
//! mcpsm is a transparent relay: a message is kept as the exact bytes it arrived as (one line of
//! compact JSON, no trailing newline) and only the few fields mcpsm must act on are read out of
//! it: the `id`, the `method`, and for requests a peek into `params`. Nothing is re-serialized
//! on the way through, so fields mcpsm does not know survive byte for byte.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

mod scan;

/// Invalid JSON was received.
pub const PARSE_ERROR: i64 = -32700;
/// The JSON sent is not a valid request object.
pub const INVALID_REQUEST: i64 = -32600;
/// mcpsm could not get an answer from the daemon (implementation-defined server error range).
pub const UPSTREAM_ERROR: i64 = -32000;

/// Method names mcpsm acts on.
pub mod method {
    pub const INITIALIZE: &str = "initialize";
    pub const INITIALIZED: &str = "notifications/initialized";
    pub const CANCELLED: &str = "notifications/cancelled";
    pub const TOOLS_CALL: &str = "tools/call";
    pub const RESOURCES_READ: &str = "resources/read";
    pub const PROMPTS_GET: &str = "prompts/get";
    /// 2026-07-28: a request whose answer is a stream of notifications that never ends.
    pub const SUBSCRIPTIONS_LISTEN: &str = "subscriptions/listen";
}

/// `_meta` key that marks 2026-07-28 (sessionless) traffic.
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";

/// A request id. It is compared and hashed by **value**, because servers re-serialize ids:
/// `"caf\u00e9"` comes back as `"café"`, `1e2` as `100.0`, `"a\/b"` as `"a/b"`. The type still
/// counts: `1` and `"1"` are different ids, as JSON-RPC says. The JSON text as it was written is
/// kept too ([`Id::as_json`]), so the client gets its id back exactly as it sent it.
///
/// Almost every id is already in canonical form (a string without escapes, a plain integer):
/// only the others pay for a normalised copy.
#[derive(Clone)]
pub struct Id {
    json: Box<str>,
    /// The canonical text, when it differs from `json`.
    canonical: Option<Box<str>>,
}

impl Id {
    /// An id from its JSON text, e.g. `params.requestId` of a cancellation.
    pub fn from_json(text: &str) -> Id {
        let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
        Id {
            canonical: canonical_form(text),
            json: text.into(),
        }
    }

    /// The id exactly as it was written.
    pub fn as_json(&self) -> &str {
        &self.json
    }

    /// The text ids are compared by.
    fn key(&self) -> &str {
        self.canonical.as_deref().unwrap_or(&self.json)
    }

    /// `"id": null`, which MCP does not allow for requests.
    pub fn is_null(&self) -> bool {
        &*self.json == "null"
    }

    /// A string or a number: the ids JSON-RPC allows besides `null`.
    pub fn is_string_or_number(&self) -> bool {
        matches!(
            self.json.as_bytes().first(),
            Some(b'"' | b'-' | b'0'..=b'9')
        )
    }
}

impl PartialEq for Id {
    fn eq(&self, other: &Id) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Id {}

impl std::hash::Hash for Id {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

/// The canonical text of an id when `text` is not canonical already: a string as serde_json
/// writes it (escapes only where needed), an integral number as a plain integer, another number
/// in its shortest form, an array or object compact. `None` when `text` is canonical (the
/// common case, decided without allocating) or not JSON.
fn canonical_form(text: &str) -> Option<Box<str>> {
    let bytes = text.as_bytes();
    let canonical = match bytes.first()? {
        b'"' => {
            // Without a backslash a valid JSON string holds no `"` or control character, so
            // serde_json would write it the same way.
            memchr::memchr(b'\\', bytes)?;
            let value: String = serde_json::from_str(text).ok()?;
            serde_json::to_string(&value).ok()?
        }
        b'-' | b'0'..=b'9' => {
            if is_plain_integer(bytes) {
                return None;
            }
            canonical_number(text)?
        }
        b'{' | b'[' => serde_json::from_str::<serde_json::Value>(text)
            .ok()?
            .to_string(),
        _ => return None,
    };
    (canonical != text).then(|| canonical.into_boxed_str())
}

/// `0`, `-12`, `345`: an integer with no exponent, fraction or leading zero, short enough to
/// fit an `i64` whatever its digits.
fn is_plain_integer(bytes: &[u8]) -> bool {
    let digits = bytes.strip_prefix(b"-").unwrap_or(bytes);
    !digits.is_empty()
        && digits.len() <= 18
        && digits.iter().all(u8::is_ascii_digit)
        && (digits[0] != b'0' || (digits.len() == 1 && digits.len() == bytes.len()))
}

fn canonical_number(text: &str) -> Option<String> {
    if let Ok(integer) = text.parse::<i64>() {
        return Some(integer.to_string());
    }
    if let Ok(integer) = text.parse::<u64>() {
        return Some(integer.to_string());
    }
    let float: f64 = text.parse().ok()?;
    if !float.is_finite() {
        return None;
    }
    // 2^63: every integral f64 below it is exactly an i64.
    if float.fract() == 0.0 && float.abs() < 9_223_372_036_854_775_808.0 {
        return Some((float as i64).to_string());
    }
    Some(serde_json::Number::from_f64(float)?.to_string())
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.json)
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.json)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Request,
    Notification,
    Response,
}

/// One JSON-RPC message: its exact bytes plus the envelope fields.
#[derive(Clone)]
pub struct Message {
    raw: Bytes,
    id: Option<Id>,
    method: Option<Box<str>>,
    /// A response with an `error` member (read in the same parse as the id).
    error: bool,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.id)
            .field("method", &self.method)
            .field("bytes", &self.raw.len())
            .finish()
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    /// `Some` for `"id": null` too: a request with a null id is not a notification.
    #[serde(default, borrow, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
}

fn present<'de: 'a, 'a, D>(deserializer: D) -> Result<Option<&'a RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <&'a RawValue>::deserialize(deserializer).map(Some)
}

/// What [`Message::peek_params`] reads out of a request's `params`.
#[derive(Default, Deserialize)]
pub struct ParamsPeek {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default, rename = "requestId")]
    pub request_id: Option<Box<RawValue>>,
    /// What an `initialize` asks for.
    #[serde(default, rename = "protocolVersion")]
    pub protocol_version: Option<String>,
    #[serde(default, rename = "_meta")]
    pub meta: Option<MetaPeek>,
}

#[derive(Default, Deserialize)]
pub struct MetaPeek {
    #[serde(default, rename = "io.modelcontextprotocol/protocolVersion")]
    pub protocol_version: Option<String>,
}

#[derive(Deserialize)]
struct ParamsOnly<'a> {
    #[serde(default, borrow)]
    params: Option<&'a RawValue>,
}

/// Why a line could not be taken as a JSON-RPC message.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("a JSON-RPC message must be an object or an array of objects, got {0}")]
    NotAnObject(&'static str),
    #[error("empty batch array")]
    EmptyBatch,
    #[error("a batch element is not a valid message ({0})")]
    BadElement(Box<ParseError>),
}

/// The hint every refused line gets.
const INPUT_HINT: &str = "hint: send one JSON-RPC message (or one batch array) per line";

/// Error responses for a line that cannot be forwarded: one per readable request id, else one
/// with id `null`.
fn refusals(ids: &[Id], code: i64, what: &str) -> Vec<Message> {
    refusals_with_hint(ids, code, what, INPUT_HINT)
}

fn refusals_with_hint(ids: &[Id], code: i64, what: &str, hint: &str) -> Vec<Message> {
    if ids.is_empty() {
        let text = format!("{what}; mcpsm skipped this line. {hint}");
        return vec![Message::error(None, code, &text, None)];
    }
    let text = format!("{what}; mcpsm did not send this request. {hint}");
    ids.iter()
        .map(|id| Message::error(Some(id), code, &text, None))
        .collect()
}

/// Error responses for a line over the size bound (see [`IdScanner`]).
pub fn oversize_refusals(ids: &[Id], bytes: usize, limit: usize) -> Vec<Message> {
    let what = format!("Parse error: a line of {bytes} bytes exceeds the limit of {limit} bytes");
    let hint = "hint: raise `mcpsm proxy --max-message-bytes`";
    refusals_with_hint(ids, PARSE_ERROR, &what, hint)
}

/// The ids of the requests in `line`, however broken it is (see [`IdScanner`]).
pub fn scan_request_ids(line: &[u8]) -> Vec<Id> {
    let mut scanner = IdScanner::default();
    scanner.feed(line);
    scanner.finish()
}

/// Most ids one line is searched for: a bound on memory for a line of any size.
pub const MAX_SCANNED_IDS: usize = 4096;
/// Longest id text the scanner keeps.
const MAX_ID_BYTES: usize = 1024;

/// Finds the request ids in a line that cannot be parsed (broken JSON, too deep, too long),
/// so that each request can be answered under its own id. It reads the bytes once, in chunks of
/// any size, keeping only the state of strings and nesting: a line of any length is scanned in
/// constant memory (ids excepted). An object at message level (the line itself, or an element
/// of a batch array) with an `id` key and no `result`/`error` key counts as a request.
#[derive(Default)]
pub struct IdScanner {
    depth: usize,
    /// Depth of the message objects: 1 for a line that is an object, 2 in a batch array.
    level: usize,
    in_string: bool,
    escaped: bool,
    /// At message level, the next string is a key.
    expect_key: bool,
    /// Reading a key at message level; its first bytes (enough to tell `id` and `result`).
    in_key: bool,
    key: [u8; 8],
    key_len: usize,
    /// The key whose value comes next, after the `:`.
    field: Option<Field>,
    capture: Option<Vec<u8>>,
    id: Option<Id>,
    is_response: bool,
    found: Vec<Id>,
}

#[derive(Clone, Copy, PartialEq)]
enum Field {
    Id,
    Answer,
    Other,
}

impl IdScanner {
    pub fn feed(&mut self, chunk: &[u8]) {
        for &b in chunk {
            self.byte(b);
        }
    }

    /// The ids found, including that of a request the line cut off (it is still waited for).
    pub fn finish(mut self) -> Vec<Id> {
        if self.level > 0 && self.depth >= self.level {
            if self.depth == self.level {
                self.end_value();
            }
            if let Some(id) = self.id.take() {
                if !self.is_response && self.found.len() < MAX_SCANNED_IDS {
                    self.found.push(id);
                }
            }
        }
        self.found
    }

    fn byte(&mut self, b: u8) {
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
                self.in_key = false;
            }
            if self.in_key {
                if self.key_len < self.key.len() {
                    self.key[self.key_len] = b;
                }
                self.key_len += 1;
            }
            self.push(b);
            return;
        }
        let at_level = self.level > 0 && self.depth == self.level;
        match b {
            b'"' => {
                self.in_string = true;
                if at_level && self.expect_key {
                    self.expect_key = false;
                    self.in_key = true;
                    self.key_len = 0;
                }
                self.push(b);
            }
            b'{' | b'[' => {
                if self.depth == 0 && self.level == 0 {
                    self.level = if b == b'[' { 2 } else { 1 };
                }
                if b == b'{' && self.level > 0 && self.depth + 1 == self.level {
                    self.id = None;
                    self.is_response = false;
                    self.expect_key = true;
                    self.field = None;
                    self.capture = None;
                }
                self.push(b);
                self.depth += 1;
            }
            b'}' | b']' => {
                if at_level {
                    self.end_value();
                    if b == b'}' {
                        if let Some(id) = self.id.take() {
                            if !self.is_response && self.found.len() < MAX_SCANNED_IDS {
                                self.found.push(id);
                            }
                        }
                    }
                } else {
                    self.push(b);
                }
                self.depth = self.depth.saturating_sub(1);
            }
            b',' if at_level => {
                self.end_value();
                self.expect_key = true;
            }
            b':' if at_level && self.field.is_none() && !self.expect_key => {
                let key = &self.key[..self.key_len.min(self.key.len())];
                let field = match (self.key_len, key) {
                    (2, b"id") => Field::Id,
                    (6, b"result") | (5, b"error") => Field::Answer,
                    _ => Field::Other,
                };
                if field == Field::Answer {
                    self.is_response = true;
                }
                if field == Field::Id {
                    self.capture = Some(Vec::new());
                }
                self.field = Some(field);
            }
            _ => self.push(b),
        }
    }

    fn push(&mut self, b: u8) {
        if let Some(capture) = &mut self.capture {
            if capture.len() < MAX_ID_BYTES {
                capture.push(b);
            } else {
                self.capture = None;
            }
        }
    }

    /// A value at message level ended: keep the id if that is what it was.
    fn end_value(&mut self) {
        if let Some(text) = self.capture.take() {
            if let Ok(value) = serde_json::from_slice::<&RawValue>(&text) {
                self.id = Some(Id::from_json(value.get()));
            }
        }
        self.field = None;
    }
}

impl Message {
    /// Parses one JSON object. `raw` must hold a single line (no raw `\n`/`\r`).
    pub fn parse(raw: Bytes) -> Result<Message, ParseError> {
        if let Some(fields) = scan::envelope(&raw) {
            return Ok(Message {
                id: fields.id.map(Id::from_json),
                method: fields.method.map(Box::from),
                error: fields.error,
                raw,
            });
        }
        // What the one-pass scanner leaves to serde: invalid JSON (serde says what is wrong)
        // and the rare valid forms it does not handle.
        let (id, method, error) = {
            let envelope: Envelope<'_> = serde_json::from_slice(&raw)?;
            (
                envelope.id.map(|id| Id::from_json(id.get())),
                envelope.method.map(|m| Box::from(m.as_ref())),
                envelope.error.is_some(),
            )
        };
        Ok(Message {
            raw,
            id,
            method,
            error,
        })
    }

    /// Parses a line that holds one message or a batch array, splitting batches.
    /// Raw newlines (only possible as JSON whitespace) are turned into spaces so every message
    /// stays one line.
    pub fn parse_many(raw: Bytes) -> Result<Vec<Message>, ParseError> {
        let raw = single_line(raw);
        match first_non_space(&raw) {
            Some(b'{') => Ok(vec![Message::parse(raw)?]),
            Some(b'[') => {
                let items: Vec<&RawValue> = serde_json::from_slice(&raw)?;
                if items.is_empty() {
                    return Err(ParseError::EmptyBatch);
                }
                items
                    .into_iter()
                    .map(|item| {
                        let text = item.get();
                        if !text.starts_with('{') {
                            return Err(ParseError::NotAnObject(json_type_name(text)));
                        }
                        Message::parse(raw.slice_ref(text.as_bytes()))
                    })
                    .collect()
            }
            _ => {
                // Let serde say what is wrong with it, or name the type it found.
                let value: &RawValue = serde_json::from_slice(&raw)?;
                Err(ParseError::NotAnObject(json_type_name(value.get())))
            }
        }
    }

    pub fn bytes(&self) -> &Bytes {
        &self.raw
    }

    pub fn id(&self) -> Option<&Id> {
        self.id.as_ref()
    }

    pub fn method(&self) -> Option<&str> {
        self.method.as_deref()
    }

    pub fn kind(&self) -> Kind {
        match (&self.method, &self.id) {
            (Some(_), Some(_)) => Kind::Request,
            (Some(_), None) => Kind::Notification,
            (None, _) => Kind::Response,
        }
    }

    /// A JSON-RPC error response.
    pub fn is_error(&self) -> bool {
        self.error
    }

    pub fn is_request(&self) -> bool {
        self.kind() == Kind::Request
    }

    /// Reads the few `params` fields mcpsm acts on; anything unexpected reads as absent.
    pub fn peek_params(&self) -> ParamsPeek {
        let Ok(outer) = serde_json::from_slice::<ParamsOnly<'_>>(&self.raw) else {
            return ParamsPeek::default();
        };
        outer
            .params
            .and_then(|p| serde_json::from_str(p.get()).ok())
            .unwrap_or_default()
    }

    /// Reads `result.protocolVersion` of an InitializeResult.
    pub fn initialize_protocol_version(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct Outer {
            result: Option<Inner>,
        }
        #[derive(Deserialize)]
        struct Inner {
            #[serde(rename = "protocolVersion")]
            protocol_version: Option<String>,
        }
        serde_json::from_slice::<Outer>(&self.raw)
            .ok()?
            .result?
            .protocol_version
    }

    /// The same message under another id (mcpsm's replay of a client request).
    pub fn with_id(&self, id: &Id) -> Option<Message> {
        let mut value: serde_json::Value = serde_json::from_slice(&self.raw).ok()?;
        *value.get_mut("id")? = serde_json::from_str(id.as_json()).ok()?;
        Message::parse(Bytes::from(serde_json::to_vec(&value).ok()?)).ok()
    }

    /// The same message with its id written as `id` is: a response of the daemon handed back
    /// under the id text the client used. The bytes around the id are kept as they are.
    pub fn with_id_text(&self, id: &Id) -> Message {
        let id_text = match scan::envelope(&self.raw) {
            Some(fields) => fields.id,
            None => serde_json::from_slice::<Envelope<'_>>(&self.raw)
                .ok()
                .and_then(|envelope| envelope.id)
                .map(RawValue::get),
        };
        let range = id_text.map(|text| {
            let start = text.as_ptr() as usize - self.raw.as_ptr() as usize;
            start..start + text.len()
        });
        let Some(range) = range else {
            return self.clone();
        };
        let mut text = Vec::with_capacity(self.raw.len() + id.as_json().len());
        text.extend_from_slice(&self.raw[..range.start]);
        text.extend_from_slice(id.as_json().as_bytes());
        text.extend_from_slice(&self.raw[range.end..]);
        Message {
            raw: Bytes::from(text),
            id: Some(id.clone()),
            method: self.method.clone(),
            error: self.error,
        }
    }

    /// Parses one line from the client. Never fails: what cannot be forwarded becomes an error
    /// response to write back at once, carrying the request's own id whenever it can be read
    /// (a client waits for that id), else `null`. The valid messages of a batch are kept even
    /// when other elements are refused. Returns (messages to forward, error responses).
    pub fn parse_input(raw: Bytes) -> (Vec<Message>, Vec<Message>) {
        let raw = single_line(raw);
        let refused = |error: ParseError, raw: &[u8]| -> Vec<Message> {
            let code = match error {
                ParseError::Json(_) => PARSE_ERROR,
                _ => INVALID_REQUEST,
            };
            let text = match code {
                PARSE_ERROR => format!("Parse error: {error}"),
                _ => format!("Invalid request: {error}"),
            };
            refusals(&scan_request_ids(raw), code, &text)
        };
        match first_non_space(&raw) {
            Some(b'{') => match Message::parse(raw.clone()) {
                Ok(message) => (vec![message], Vec::new()),
                Err(e) => (Vec::new(), refused(e, &raw)),
            },
            Some(b'[') => {
                let items: Vec<&RawValue> = match serde_json::from_slice(&raw) {
                    Ok(items) => items,
                    Err(e) => return (Vec::new(), refused(e.into(), &raw)),
                };
                if items.is_empty() {
                    return (Vec::new(), refused(ParseError::EmptyBatch, &raw));
                }
                let mut messages = Vec::with_capacity(items.len());
                let mut errors = Vec::new();
                for item in items {
                    let text = item.get();
                    let parsed = if text.starts_with('{') {
                        Message::parse(raw.slice_ref(text.as_bytes()))
                    } else {
                        Err(ParseError::NotAnObject(json_type_name(text)))
                    };
                    match parsed {
                        Ok(message) => messages.push(message),
                        // The batch as a whole is valid JSON: this element is an invalid request.
                        Err(e) => errors.extend(refused(
                            ParseError::BadElement(Box::new(e)),
                            text.as_bytes(),
                        )),
                    }
                }
                (messages, errors)
            }
            _ => {
                let error = match serde_json::from_slice::<&RawValue>(&raw) {
                    Ok(value) => ParseError::NotAnObject(json_type_name(value.get())),
                    Err(e) => e.into(),
                };
                (Vec::new(), refused(error, &raw))
            }
        }
    }

    /// Builds an error response for request `id` (or `null` when the id is unknown).
    pub fn error(
        id: Option<&Id>,
        code: i64,
        message: &str,
        data: Option<serde_json::Value>,
    ) -> Message {
        let mut error = serde_json::json!({ "code": code, "message": message });
        if let Some(data) = data {
            error["data"] = data;
        }
        let id_json = id.map_or("null", Id::as_json);
        let text = format!(r#"{{"jsonrpc":"2.0","id":{id_json},"error":{error}}}"#);
        Message {
            raw: Bytes::from(text),
            id: id.cloned(),
            method: None,
            error: true,
        }
    }
}

fn first_non_space(raw: &[u8]) -> Option<u8> {
    raw.iter().copied().find(|b| !b.is_ascii_whitespace())
}

/// In valid JSON a raw CR or LF can only be whitespace, so replacing them keeps the meaning.
pub fn single_line(raw: Bytes) -> Bytes {
    if memchr::memchr2(b'\n', b'\r', &raw).is_none() {
        return raw;
    }
    let mut owned = raw.to_vec();
    for b in &mut owned {
        if *b == b'\n' || *b == b'\r' {
            *b = b' ';
        }
    }
    Bytes::from(owned)
}

fn json_type_name(text: &str) -> &'static str {
    match text.as_bytes().first() {
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Message {
        Message::parse(Bytes::copy_from_slice(text.as_bytes())).expect("valid")
    }

    #[test]
    fn kinds_are_told_apart() {
        assert_eq!(
            parse(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#).kind(),
            Kind::Request
        );
        assert_eq!(
            parse(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).kind(),
            Kind::Notification
        );
        assert_eq!(
            parse(r#"{"jsonrpc":"2.0","id":"a","result":{}}"#).kind(),
            Kind::Response
        );
    }

    #[test]
    fn ids_keep_their_json_type() {
        let number = parse(r#"{"id":1,"method":"x"}"#);
        let string = parse(r#"{"id":"1","method":"x"}"#);
        assert_ne!(number.id(), string.id());
        assert_eq!(string.id().map(Id::as_json), Some(r#""1""#));
    }

    #[test]
    fn batches_are_split_and_bytes_kept() {
        let line =
            Bytes::from_static(br#"[{"id":1,"method":"a","x":{"keep":"me"}},{"method":"b"}]"#);
        let messages = Message::parse_many(line).expect("batch");
        assert_eq!(messages.len(), 2);
        assert_eq!(
            &messages[0].bytes()[..],
            br#"{"id":1,"method":"a","x":{"keep":"me"}}"#
        );
        assert_eq!(messages[1].method(), Some("b"));
    }

    #[test]
    fn non_objects_are_refused_with_their_type() {
        let error = Message::parse_many(Bytes::from_static(b"42")).expect_err("error");
        assert!(error.to_string().contains("a number"), "{error}");
        assert!(matches!(
            Message::parse_many(Bytes::from_static(b"[]")),
            Err(ParseError::EmptyBatch)
        ));
        assert!(matches!(
            Message::parse_many(Bytes::from_static(b"{bad")),
            Err(ParseError::Json(_))
        ));
    }

    #[test]
    fn pretty_json_becomes_one_line() {
        let messages = Message::parse_many(Bytes::from_static(
            b"{\n  \"id\": 2,\r\n  \"result\": {}\n}",
        ))
        .expect("valid");
        assert!(!messages[0].bytes().contains(&b'\n'));
        assert_eq!(messages[0].id().map(Id::as_json), Some("2"));
    }

    #[test]
    fn params_peek_reads_name_and_meta() {
        let message = parse(
            r#"{"id":1,"method":"tools/call","params":{"name":"echo","arguments":{},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#,
        );
        let peek = message.peek_params();
        assert_eq!(peek.name.as_deref(), Some("echo"));
        assert_eq!(
            peek.meta.and_then(|m| m.protocol_version).as_deref(),
            Some("2026-07-28")
        );
        // params that are not an object read as absent, not as an error
        assert!(parse(r#"{"id":1,"method":"x","params":[1]}"#)
            .peek_params()
            .name
            .is_none());
    }

    #[test]
    fn error_responses_carry_the_request_id() {
        let id = parse(r#"{"id":"abc","method":"x"}"#).id().cloned();
        let error = Message::error(id.as_ref(), UPSTREAM_ERROR, "down \"now\"", None);
        let value: serde_json::Value = serde_json::from_slice(error.bytes()).expect("json");
        assert_eq!(value["id"], "abc");
        assert_eq!(value["error"]["message"], "down \"now\"");
        let value: serde_json::Value =
            serde_json::from_slice(Message::error(None, PARSE_ERROR, "bad", None).bytes())
                .expect("json");
        assert!(value["id"].is_null());
    }

    fn id(text: &str) -> Id {
        Id::from_json(text)
    }

    #[test]
    fn ids_are_matched_by_value_as_servers_rewrite_them() {
        assert_eq!(id(r#""caf\u00e9""#), id(r#""café""#));
        assert_eq!(id(r#""a\/b""#), id(r#""a/b""#));
        assert_eq!(id("1e2"), id("100.0"));
        assert_eq!(id("1e2"), id("100"));
        assert_eq!(id("-0"), id("0"));
        assert_eq!(id("1.5"), id("15e-1"));
        assert_eq!(id("[1, 2]"), id("[1,2]"));
        assert_ne!(id("1"), id(r#""1""#));
        assert_ne!(id(r#""a""#), id(r#""b""#));
        assert_ne!(id("9007199254740993"), id("9007199254740992"));
        // the text as written is kept
        assert_eq!(id(r#""caf\u00e9""#).as_json(), r#""caf\u00e9""#);
        let mut set = std::collections::HashSet::new();
        set.insert(id(r#""caf\u00e9""#));
        assert!(set.contains(&id(r#""café""#)));
    }

    #[test]
    fn canonical_ids_are_not_copied() {
        for text in [r#""plain""#, "0", "-12", "123456789012345678", r#""é""#] {
            assert!(id(text).canonical.is_none(), "{text}");
        }
        for text in ["1e2", "1.0", "-0", "123456789012345678901", r#""\u0041""#] {
            assert!(id(text).canonical.is_some(), "{text}");
        }
    }

    #[test]
    fn a_null_id_makes_a_request_not_a_notification() {
        let message = parse(r#"{"jsonrpc":"2.0","id":null,"method":"x"}"#);
        assert_eq!(message.kind(), Kind::Request);
        assert!(message.id().is_some_and(Id::is_null));
    }

    #[test]
    fn a_response_gets_the_id_text_of_the_request() {
        let response = parse(r#"{"jsonrpc":"2.0","id":"café","result":{"id":"keep"}}"#);
        let asked = id(r#""caf\u00e9""#);
        let rewritten = response.with_id_text(&asked);
        assert_eq!(
            &rewritten.bytes()[..],
            br#"{"jsonrpc":"2.0","id":"caf\u00e9","result":{"id":"keep"}}"#
        );
    }

    fn input(line: &str) -> (Vec<Message>, Vec<serde_json::Value>) {
        let (messages, replies) = Message::parse_input(Bytes::copy_from_slice(line.as_bytes()));
        let replies = replies
            .iter()
            .map(|r| serde_json::from_slice(r.bytes()).expect("json"))
            .collect();
        (messages, replies)
    }

    #[test]
    fn a_batch_keeps_its_valid_messages_and_refuses_the_others_by_id() {
        let (messages, replies) =
            input(r#"[{"id":1,"method":"a"},42,{"id":"x","method":7},{"method":"n"}]"#);
        assert_eq!(messages.len(), 2);
        assert_eq!(replies.len(), 2);
        assert_eq!(replies[0]["id"], serde_json::Value::Null);
        assert_eq!(replies[1]["id"], "x");
        assert_eq!(replies[1]["error"]["code"], INVALID_REQUEST);
    }

    #[test]
    fn broken_json_is_answered_under_each_readable_id() {
        let (messages, replies) = input(r#"{"jsonrpc":"2.0","id":7,"method":"x","params":{"a":}}"#);
        assert!(messages.is_empty());
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0]["id"], 7);
        assert_eq!(replies[0]["error"]["code"], PARSE_ERROR);
        // deeper than serde_json's recursion limit: still forwarded (the envelope is shallow)
        let deep = format!(
            r#"{{"id":"d","method":"x","params":{}{}}}"#,
            "[".repeat(300),
            "]".repeat(300)
        );
        let (messages, replies) = input(&deep);
        assert_eq!((messages.len(), replies.len()), (1, 0));
        // nothing readable: one error with id null
        let (_, replies) = input("{nope");
        assert_eq!(replies.len(), 1);
        assert!(replies[0]["id"].is_null());
    }

    #[test]
    fn the_scanner_skips_responses_nested_ids_and_strings() {
        let ids = scan_request_ids(
            br#"[{"id":1,"result":{}},{"params":{"id":9},"text":"\"id\":8,","id":"a\"b","method":"m"},{"id" : [1, 2] ,"method":"x"}"#,
        );
        let ids: Vec<&str> = ids.iter().map(Id::as_json).collect();
        assert_eq!(ids, [r#""a\"b""#, "[1, 2]"]);
    }
}
