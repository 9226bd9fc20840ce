//! `Mcp-Param-{Name}` headers (2026-07-28, SEP-2243): a tool's input schema may mark a
//! parameter with `x-mcp-header: Name`, and a `tools/call` over streamable HTTP then mirrors
//! that argument's value into the header, so intermediaries can route without reading the
//! body. The proxy is the HTTP client, so it does this for its stdio client: it learns the
//! annotations from `tools/list` results on 2026-07-28 connections, leaves out of those results
//! the tools whose annotations are invalid (clients MUST NOT call them), and adds the headers to
//! each `tools/call` of a known tool. Older connections never pay for any of it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

use base64::Engine as _;
use bytes::Bytes;
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::Value;

use crate::jsonrpc::Message;

/// One annotated parameter: its argument name, its header suffix, its JSON type.
#[derive(Debug, Clone, PartialEq)]
struct Param {
    argument: String,
    header: HeaderName,
}

#[derive(Default)]
pub struct ToolHeaders {
    /// Set once the connection speaks 2026-07-28.
    enabled: AtomicBool,
    tools: RwLock<HashMap<String, Vec<Param>>>,
}

impl ToolHeaders {
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    /// A response on its way to the client: a `tools/list` result teaches the annotations and
    /// loses its invalid tools; anything else passes as it is.
    pub fn learn(&self, message: Message) -> Message {
        if !self.enabled.load(Ordering::Relaxed)
            || memchr::memmem::find(message.bytes(), b"\"tools\"").is_none()
        {
            return message;
        }
        let Ok(mut value) = serde_json::from_slice::<Value>(message.bytes()) else {
            return message;
        };
        let Some(tools) = value
            .get_mut("result")
            .and_then(|r| r.get_mut("tools"))
            .and_then(Value::as_array_mut)
        else {
            return message;
        };
        let before = tools.len();
        let mut learned = self.tools.write().unwrap_or_else(|e| e.into_inner());
        tools.retain(|tool| {
            let Some(name) = tool["name"].as_str() else {
                return true;
            };
            match annotations(&tool["inputSchema"]) {
                Ok(params) => {
                    if params.is_empty() {
                        learned.remove(name);
                    } else {
                        learned.insert(name.to_owned(), params);
                    }
                    true
                }
                Err(why) => {
                    tracing::warn!(tool = name, "left out of tools/list: {why}");
                    learned.remove(name);
                    false
                }
            }
        });
        if tools.len() == before {
            return message;
        }
        drop(learned);
        Message::parse(Bytes::from(value.to_string())).unwrap_or(message)
    }

    /// The `Mcp-Param-*` headers of a `tools/call` (`params` of the request).
    pub fn headers_for(&self, params: &Value) -> Vec<(HeaderName, HeaderValue)> {
        let Some(name) = params["name"].as_str() else {
            return Vec::new();
        };
        let tools = self.tools.read().unwrap_or_else(|e| e.into_inner());
        let Some(annotated) = tools.get(name) else {
            return Vec::new();
        };
        annotated
            .iter()
            .filter_map(|param| {
                let value = encode(params["arguments"].get(&param.argument)?)?;
                Some((param.header.clone(), HeaderValue::from_str(&value).ok()?))
            })
            .collect()
    }
}

/// The annotated parameters of an input schema, or why the tool is invalid.
fn annotations(schema: &Value) -> Result<Vec<Param>, String> {
    let Some(properties) = schema["properties"].as_object() else {
        return Ok(Vec::new());
    };
    let mut params: Vec<Param> = Vec::new();
    for (argument, property) in properties {
        let Some(header) = property.get("x-mcp-header") else {
            continue;
        };
        let header = header
            .as_str()
            .ok_or_else(|| format!("x-mcp-header of `{argument}` is not a string"))?;
        let valid_name =
            !header.is_empty() && header.bytes().all(|b| b.is_ascii_graphic() && b != b':');
        if !valid_name {
            return Err(format!(
                "x-mcp-header `{header}` of `{argument}` is not a valid header name"
            ));
        }
        if !matches!(
            property["type"].as_str(),
            Some("string" | "integer" | "boolean")
        ) {
            return Err(format!(
                "x-mcp-header on `{argument}`, whose type is not string, integer or boolean"
            ));
        }
        if params.iter().any(|p| {
            p.header
                .as_str()
                .eq_ignore_ascii_case(&format!("mcp-param-{header}"))
        }) {
            return Err(format!("x-mcp-header `{header}` is used twice"));
        }
        let header = HeaderName::from_bytes(format!("mcp-param-{header}").as_bytes())
            .map_err(|_| format!("x-mcp-header `{header}` is not a valid header name"))?;
        params.push(Param {
            argument: argument.clone(),
            header,
        });
    }
    Ok(params)
}

/// A header value for an argument: integers and booleans as text, strings as they are when
/// they are plain visible ASCII without surrounding spaces, else `=?base64?…?=`; null: none.
fn encode(value: &Value) -> Option<String> {
    match value {
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(text) => {
            let plain = text.bytes().all(|b| (0x20..=0x7e).contains(&b)) && text.trim() == text;
            Some(if plain {
                text.clone()
            } else {
                format!(
                    "=?base64?{}?=",
                    base64::engine::general_purpose::STANDARD.encode(text)
                )
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn list(tools: Value) -> Message {
        Message::parse(Bytes::from(
            json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": tools}}).to_string(),
        ))
        .expect("message")
    }

    #[test]
    fn annotated_arguments_become_headers_encoded_as_the_spec_says() {
        let headers = ToolHeaders::default();
        headers.enable();
        let schema = json!({"type": "object", "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"},
            "priority": {"type": "integer", "x-mcp-header": "Priority"},
            "verbose": {"type": "boolean", "x-mcp-header": "Verbose"},
            "wide": {"type": "string", "x-mcp-header": "Wide"},
            "query": {"type": "string"}}});
        headers.learn(list(json!([{"name": "t", "inputSchema": schema}])));
        let got = headers.headers_for(&json!({"name": "t", "arguments": {
            "region": "us-west1", "priority": 42, "verbose": null, "wide": " 世界", "query": "q"}}));
        let got: HashMap<String, String> = got
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_owned()))
            .collect();
        assert_eq!(
            got.get("mcp-param-region").map(String::as_str),
            Some("us-west1")
        );
        assert_eq!(
            got.get("mcp-param-priority").map(String::as_str),
            Some("42")
        );
        assert!(!got.contains_key("mcp-param-verbose"), "null is omitted");
        assert!(!got.contains_key("mcp-param-query"), "unannotated");
        assert_eq!(
            got.get("mcp-param-wide").map(String::as_str),
            Some("=?base64?IOS4lueVjA==?=")
        );
    }

    #[test]
    fn tools_with_invalid_annotations_are_left_out() {
        let headers = ToolHeaders::default();
        headers.enable();
        let prop = |p: Value| json!({"type": "object", "properties": p});
        let tools = json!([
            {"name": "ok", "inputSchema": prop(json!({"r": {"type": "string", "x-mcp-header": "Region"}}))},
            {"name": "empty", "inputSchema": prop(json!({"v": {"type": "string", "x-mcp-header": ""}}))},
            {"name": "number", "inputSchema": prop(json!({"v": {"type": "number", "x-mcp-header": "N"}}))},
            {"name": "space", "inputSchema": prop(json!({"v": {"type": "string", "x-mcp-header": "A B"}}))},
            {"name": "twice", "inputSchema": prop(json!({
                "a": {"type": "string", "x-mcp-header": "X"}, "b": {"type": "string", "x-mcp-header": "x"}}))},
        ]);
        let out = headers.learn(list(tools));
        let value: Value = serde_json::from_slice(out.bytes()).expect("json");
        let names: Vec<&str> = value["result"]["tools"]
            .as_array()
            .expect("tools")
            .iter()
            .filter_map(|t| t["name"].as_str())
            .collect();
        assert_eq!(names, ["ok"]);
    }

    #[test]
    fn older_connections_are_left_alone() {
        let headers = ToolHeaders::default();
        let message = list(
            json!([{"name": "e", "inputSchema": {"properties": {"v": {"type": "number", "x-mcp-header": "N"}}}}]),
        );
        let out = headers.learn(message.clone());
        assert_eq!(out.bytes(), message.bytes());
    }
}
