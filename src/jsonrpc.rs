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
}

/// `_meta` key that marks 2026-07-28 (sessionless) traffic.
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";

/// A request id, kept as its JSON text: `1` and `"1"` are different ids, as JSON-RPC says.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Id(Box<str>);

impl Id {
    /// An id from its JSON text, e.g. `params.requestId` of a cancellation.
    pub fn from_json(text: &str) -> Id {
        Id(text.into())
    }

    pub fn as_json(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
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
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    method: Option<Cow<'a, str>>,
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
}

impl Message {
    /// Parses one JSON object. `raw` must hold a single line (no raw `\n`/`\r`).
    pub fn parse(raw: Bytes) -> Result<Message, ParseError> {
        let (id, method) = {
            let envelope: Envelope<'_> = serde_json::from_slice(&raw)?;
            (
                envelope.id.map(|id| Id(id.get().into())),
                envelope.method.map(|m| Box::from(m.as_ref())),
            )
        };
        Ok(Message { raw, id, method })
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
                        Message::parse(Bytes::copy_from_slice(text.as_bytes()))
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
}
