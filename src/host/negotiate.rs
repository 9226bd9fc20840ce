//! What each session of a shared server is told at `initialize`, and which session may be
//! asked what: the rules that make one shared server process look like a private copy.
//!
//! **Versions.** The server process (the child) is initialized once, asking for the newest
//! revision mcpsm bridges ([`NEWEST`]), so it negotiates the newest revision it supports.
//! Each session is then answered as the server would answer it alone: a session asking for a
//! revision the child speaks or an older known one gets that revision (the revisions from
//! 2024-11-05 to 2025-11-25 differ on the wire only additively for a server's messages:
//! fields and methods a client of an older revision does not ask for or ignores); a session
//! asking for a newer revision than the child negotiated gets the child's (what the server
//! itself answers when it does not support the requested one). A revision mcpsm does not know
//! cannot be bridged: such sessions get a child of their own per revision
//! ([`Compatibility::Exact`]).
//!
//! **Client capabilities.** The child is told a client that can do sampling, elicitation
//! (form and URL) and roots: the sessions together may. A server→client request then goes to
//! a session that declared what it needs, never to one that did not; when none can, the
//! server gets the answer a client without the capability gives (`-32601`).

use serde_json::{json, Value};

/// The revisions that use `initialize`, oldest first.
pub const KNOWN: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
/// What the child is asked for.
pub const NEWEST: &str = "2025-11-25";

/// Which sessions may share one child.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Compatibility {
    /// Every known revision: one child, each session answered with its own revision.
    Bridged,
    /// A revision mcpsm does not know: a child for the sessions asking exactly this one.
    Exact(String),
    /// 2026-07-28 requests, as they are, to a server that speaks that revision (never
    /// initialized).
    Sessionless,
}

impl Compatibility {
    pub fn of(requested: &str) -> Compatibility {
        if KNOWN.contains(&requested) {
            Compatibility::Bridged
        } else {
            Compatibility::Exact(requested.to_owned())
        }
    }
}

/// The child's own `initialize`: the first session's request, asking for the newest bridged
/// revision (or the exact one) with every client capability mcpsm can route.
pub fn child_initialize(session_request: &Value, compatibility: &Compatibility) -> Value {
    let mut request = session_request.clone();
    let version = match compatibility {
        Compatibility::Bridged | Compatibility::Sessionless => NEWEST,
        Compatibility::Exact(version) => version.as_str(),
    };
    let params = &mut request["params"];
    if !params.is_object() {
        *params = json!({});
    }
    params["protocolVersion"] = json!(version);
    let mut capabilities = match params.get("capabilities") {
        Some(Value::Object(map)) => map.clone(),
        _ => serde_json::Map::new(),
    };
    let merge = |capabilities: &mut serde_json::Map<String, Value>, key: &str, wanted: Value| {
        let entry = capabilities.entry(key).or_insert_with(|| json!({}));
        if let (Value::Object(have), Value::Object(wanted)) = (entry, wanted) {
            for (k, v) in wanted {
                have.entry(k).or_insert(v);
            }
        }
    };
    merge(&mut capabilities, "sampling", json!({}));
    merge(
        &mut capabilities,
        "elicitation",
        json!({"form": {}, "url": {}}),
    );
    merge(&mut capabilities, "roots", json!({"listChanged": true}));
    params["capabilities"] = Value::Object(capabilities);
    request
}

/// The revision a session asking `requested` gets from a child that negotiated `child`.
pub fn session_version<'a>(requested: &'a str, child: &'a str) -> &'a str {
    let known = |v: &str| KNOWN.iter().position(|k| *k == v);
    match (known(requested), known(child)) {
        (Some(r), Some(c)) if r <= c => requested,
        _ => child,
    }
}

/// The child's InitializeResult as this session sees it.
pub fn session_result(child_result: &Value, version: &str) -> Value {
    let mut result = child_result.clone();
    result["protocolVersion"] = json!(version);
    result
}

/// Whether a client that declared `capabilities` can take the server request `method`.
pub fn can_answer(capabilities: &Value, method: &str, params: &Value) -> bool {
    match method {
        "sampling/createMessage" => {
            let Some(sampling) = capabilities.get("sampling") else {
                return false;
            };
            params.get("tools").is_none() || sampling.get("tools").is_some()
        }
        "elicitation/create" => {
            let Some(elicitation) = capabilities.get("elicitation") else {
                return false;
            };
            let has = |mode: &str| elicitation.get(mode).is_some();
            match params.get("mode").and_then(Value::as_str) {
                Some("url") => has("url"),
                // An empty `elicitation` object means form only.
                _ => {
                    has("form")
                        || elicitation
                            .as_object()
                            .is_some_and(|m| !m.contains_key("url"))
                }
            }
        }
        "roots/list" => capabilities.get("roots").is_some(),
        _ => true,
    }
}

/// What a client without the capability answers (the TypeScript SDK's words).
pub fn not_supported(id_json: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id_json},"error":{{"code":-32601,"message":"Method not found"}}}}"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_known_revisions_are_answered_with_themselves() {
        assert_eq!(session_version("2024-11-05", "2025-11-25"), "2024-11-05");
        assert_eq!(session_version("2025-06-18", "2025-06-18"), "2025-06-18");
        assert_eq!(session_version("2025-03-26", "2025-06-18"), "2025-03-26");
    }

    #[test]
    fn a_revision_newer_than_the_child_gets_the_childs() {
        assert_eq!(session_version("2025-11-25", "2025-06-18"), "2025-06-18");
        assert_eq!(session_version("2099-01-01", "2025-11-25"), "2025-11-25");
    }

    #[test]
    fn unknown_revisions_are_not_bridged() {
        assert_eq!(Compatibility::of("2025-06-18"), Compatibility::Bridged);
        assert_eq!(
            Compatibility::of("2099-01-01"),
            Compatibility::Exact("2099-01-01".into())
        );
    }

    #[test]
    fn the_child_is_asked_for_the_newest_revision_with_every_routable_capability() {
        let session = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
            "protocolVersion":"2024-11-05",
            "capabilities":{"roots":{},"experimental":{"x":{}}},
            "clientInfo":{"name":"c","version":"1"}}});
        let child = child_initialize(&session, &Compatibility::Bridged);
        assert_eq!(child["params"]["protocolVersion"], NEWEST);
        let caps = &child["params"]["capabilities"];
        assert_eq!(caps["roots"]["listChanged"], true);
        assert_eq!(caps["experimental"]["x"], json!({}));
        assert!(caps["sampling"].is_object());
        assert!(caps["elicitation"]["url"].is_object());
        assert_eq!(child["params"]["clientInfo"]["name"], "c");
    }

    #[test]
    fn server_requests_need_the_matching_capability() {
        let none = json!({});
        let sampling = json!({"sampling": {}});
        let form = json!({"elicitation": {}});
        let url = json!({"elicitation": {"url": {}}});
        assert!(!can_answer(&none, "sampling/createMessage", &json!({})));
        assert!(can_answer(&sampling, "sampling/createMessage", &json!({})));
        assert!(!can_answer(
            &sampling,
            "sampling/createMessage",
            &json!({"tools": []})
        ));
        assert!(can_answer(&form, "elicitation/create", &json!({})));
        assert!(!can_answer(
            &form,
            "elicitation/create",
            &json!({"mode": "url"})
        ));
        assert!(can_answer(
            &url,
            "elicitation/create",
            &json!({"mode": "url"})
        ));
        assert!(!can_answer(
            &url,
            "elicitation/create",
            &json!({"mode": "form"})
        ));
        assert!(!can_answer(&none, "roots/list", &json!({})));
        assert!(can_answer(&none, "ping", &json!({})));
    }
}
