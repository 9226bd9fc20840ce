//! Reading one entry of a client's servers object: a stdio server, a URL server, an entry that
//! already runs `mcpsm proxy`, or something mcpsm cannot take over (and says why).
//!
//! Values come out in the registry's syntax, ready for `daemons.toml`, meaning what they meant
//! to the client:
//! - Claude Code: `${VAR}` and `${VAR:-default}` mean the same in the registry and are kept.
//! - Gemini CLI: the same, and a bare `$VAR` becomes `${VAR}`.
//! - VS Code, Cursor, Windsurf: `${env:VAR}` becomes `${VAR}`, `${userHome}` `${HOME}`; any other
//!   `${…}` (`${workspaceFolder}`, `${input:token}`) only the editor can resolve, so the entry is
//!   not imported.
//! - Claude Desktop, Codex: no interpolation; every `$` is literal.
//!
//! Every `$` that is literal for the client is written `$$` (a literal `$` in the registry).

use serde_json::{Map, Value};

use super::{Client, Location, ProxyCommand};
use crate::config::TransportKind;

/// What one entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A server the client starts or connects to itself: mcpsm can take it over.
    Server(Server),
    /// Already `mcpsm proxy`: of this binary or of another mcpsm installation.
    Proxy {
        this_binary: bool,
        target: Option<String>,
    },
    /// Left alone, for this reason.
    Unsupported(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Server {
    Stdio(Stdio),
    Remote(Remote),
}

/// A server run as a child process over stdio (values in registry syntax).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stdio {
    pub command: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
}

/// A server reached over HTTP (values in registry syntax).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// Only when the client's entry says which wire it is.
    pub transport: Option<TransportKind>,
}

impl Server {
    /// Variables referenced without a default that are not set in this process.
    pub fn unset_variables(&self) -> Vec<String> {
        let values: Vec<&str> = match self {
            Server::Stdio(s) => std::iter::once(s.command.as_str())
                .chain(s.args.iter().map(String::as_str))
                .chain(s.env.iter().map(|(_, v)| v.as_str()))
                .chain(s.cwd.as_deref())
                .collect(),
            Server::Remote(r) => std::iter::once(r.url.as_str())
                .chain(r.headers.iter().map(|(_, v)| v.as_str()))
                .collect(),
        };
        let mut names: Vec<String> = values
            .into_iter()
            .flat_map(variables_without_default)
            .filter(|name| std::env::var_os(name).is_none())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// One line for the summary: the command line or the URL.
    pub fn summary(&self) -> String {
        match self {
            Server::Stdio(s) => std::iter::once(s.command.as_str())
                .chain(s.args.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join(" "),
            Server::Remote(r) => r.url.clone(),
        }
    }
}

/// Keys that say how a server is started or reached; a proxy entry replaces all of them and
/// keeps the rest (`disabled`, `timeout`, `alwaysAllow`, `enabled_tools`, …).
pub fn is_launch_key(key: &str, client: Client) -> bool {
    let common = matches!(key, "command" | "args" | "env" | "cwd" | "url");
    let specific = match client {
        Client::Codex => matches!(
            key,
            "env_vars" | "bearer_token_env_var" | "http_headers" | "env_http_headers"
        ),
        _ => matches!(
            key,
            "type" | "transport" | "headers" | "serverUrl" | "httpUrl" | "envFile"
        ),
    };
    common || specific
}

/// A short description of an entry, for messages (`npx -y server-memory`, a URL, …).
pub fn describe(value: &Value) -> String {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    if let Some(command) = text(value.get("command")) {
        let args = value
            .get("args")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>())
            .unwrap_or_default();
        return std::iter::once(command.as_str())
            .chain(args)
            .collect::<Vec<_>>()
            .join(" ");
    }
    ["url", "serverUrl", "httpUrl"]
        .into_iter()
        .find_map(|k| text(value.get(k)))
        .unwrap_or_else(|| "an entry mcpsm does not understand".into())
}

pub fn read_entry(value: &Value, location: &Location, proxy: &ProxyCommand) -> Entry {
    match read(value, location, proxy) {
        Ok(entry) => entry,
        Err(reason) => Entry::Unsupported(reason),
    }
}

fn read(value: &Value, location: &Location, proxy: &ProxyCommand) -> Result<Entry, String> {
    let client = location.client;
    let Value::Object(entry) = value else {
        return Err("the entry is not an object".into());
    };
    if let Some(command) = entry.get("command") {
        let command = command
            .as_str()
            .ok_or("its `command` is not a string")?
            .to_owned();
        let args = strings(entry, "args")?;
        if let Some(target) = proxy_target(&command, &args) {
            return Ok(Entry::Proxy {
                this_binary: proxy.is_this_binary(&command),
                target,
            });
        }
        if entry.contains_key("envFile") {
            return Err(
                "it reads variables from `envFile`, which mcpsm does not; put them in `env` first"
                    .into(),
            );
        }
        let translate = |text: &str| translate(text, client);
        let mut env = Vec::new();
        for (key, value) in object_of_strings(entry, "env")? {
            env.push((key, translate(&value)?));
        }
        // Codex: names of variables to pass through from the client's environment.
        for name in strings(entry, "env_vars")? {
            env.push((name.clone(), format!("${{{name}:-}}")));
        }
        let cwd = match entry.get("cwd") {
            None => None,
            Some(Value::String(cwd)) => Some(translate(cwd)?),
            Some(_) => return Err("its `cwd` is not a string".into()),
        };
        // Relative paths in a project's file are relative to the project.
        let cwd = cwd.or_else(|| {
            location
                .project_dir
                .as_ref()
                .map(|dir| escape_dollars(&dir.to_string_lossy()))
        });
        return Ok(Entry::Server(Server::Stdio(Stdio {
            command: translate(&command)?,
            args: args
                .iter()
                .map(|a| translate(a))
                .collect::<Result<_, _>>()?,
            env,
            cwd,
        })));
    }
    let Some((url_key, url)) = ["url", "serverUrl", "httpUrl"]
        .into_iter()
        .find_map(|k| entry.get(k).map(|v| (k, v)))
    else {
        return Err("it has neither `command` nor a URL".into());
    };
    let url = url
        .as_str()
        .ok_or_else(|| format!("its `{url_key}` is not a string"))?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!(
            "its URL `{url}` is not http:// or https://, which mcpsm cannot proxy"
        ));
    }
    let translate = |text: &str| translate(text, client);
    let mut headers = Vec::new();
    let header_key = if client == Client::Codex {
        "http_headers"
    } else {
        "headers"
    };
    for (key, value) in object_of_strings(entry, header_key)? {
        headers.push((key, translate(&value)?));
    }
    // Codex: headers whose values come from environment variables, and a bearer token.
    for (key, variable) in object_of_strings(entry, "env_http_headers")? {
        headers.push((key, format!("${{{variable}}}")));
    }
    if let Some(variable) = entry.get("bearer_token_env_var").and_then(Value::as_str) {
        headers.push(("Authorization".into(), format!("Bearer ${{{variable}}}")));
    }
    let declared = entry
        .get("type")
        .or_else(|| entry.get("transport"))
        .and_then(Value::as_str);
    let transport = match (declared, url_key, client) {
        (Some("sse"), _, _) => Some(TransportKind::Sse),
        (Some("http" | "streamable-http" | "streamableHttp" | "streamable_http"), _, _) => {
            Some(TransportKind::StreamableHttp)
        }
        // Gemini: `httpUrl` is streamable HTTP, `url` is SSE.
        (_, "httpUrl", Client::Gemini) => Some(TransportKind::StreamableHttp),
        (_, "url", Client::Gemini) => Some(TransportKind::Sse),
        // Codex speaks only streamable HTTP to URL servers.
        (_, _, Client::Codex) => Some(TransportKind::StreamableHttp),
        _ => None,
    };
    Ok(Entry::Server(Server::Remote(Remote {
        url: translate(url)?,
        headers,
        transport,
    })))
}

/// `Some(target)` when `command args` is an mcpsm proxy (`mcpsm proxy …` or `mcpsm-proxy …`).
fn proxy_target(command: &str, args: &[String]) -> Option<Option<String>> {
    let program = std::path::Path::new(command).file_name()?.to_str()?;
    let rest = match program {
        "mcpsm" if args.first().map(String::as_str) == Some("proxy") => &args[1..],
        "mcpsm-proxy" => args,
        _ => return None,
    };
    let target = rest
        .iter()
        .position(|a| a == "--target")
        .and_then(|i| rest.get(i + 1))
        .or_else(|| {
            rest.iter()
                .find_map(|a| a.strip_prefix("--target=").map(|_| a))
        })
        .map(|t| t.strip_prefix("--target=").unwrap_or(t).to_owned());
    Some(target)
}

fn strings(entry: &Map<String, Value>, key: &str) -> Result<Vec<String>, String> {
    match entry.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                _ => Err(format!("its `{key}` holds something that is not a string")),
            })
            .collect(),
        Some(_) => Err(format!("its `{key}` is not a list")),
    }
}

fn object_of_strings(
    entry: &Map<String, Value>,
    key: &str,
) -> Result<Vec<(String, String)>, String> {
    match entry.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                Value::Number(n) => Ok((k.clone(), n.to_string())),
                Value::Bool(b) => Ok((k.clone(), b.to_string())),
                _ => Err(format!("its `{key}.{k}` is not a string")),
            })
            .collect(),
        Some(_) => Err(format!("its `{key}` is not an object")),
    }
}

/// How a client interpolates variables in its server entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    /// `${VAR}`, `${VAR:-default}` (Claude Code).
    Shell,
    /// `$VAR` and `${VAR}` (Gemini CLI).
    Gemini,
    /// `${env:VAR}` and editor variables (VS Code, Cursor, Windsurf).
    Editor,
    /// None: every `$` is literal (Claude Desktop, Codex).
    Literal,
}

fn dialect(client: Client) -> Dialect {
    match client {
        Client::ClaudeCode => Dialect::Shell,
        Client::Gemini => Dialect::Gemini,
        Client::VsCode | Client::Cursor | Client::Windsurf => Dialect::Editor,
        Client::ClaudeDesktop | Client::Codex => Dialect::Literal,
    }
}

/// A client's value in registry syntax (see the module docs).
pub fn translate(text: &str, client: Client) -> Result<String, String> {
    let dialect = dialect(client);
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if dialect != Dialect::Literal {
            if let Some(body) = rest.strip_prefix("${") {
                if let Some(end) = body.find('}') {
                    let inner = &body[..end];
                    out.push_str(&translate_reference(inner, dialect, client)?);
                    rest = &body[end + 1..];
                    continue;
                }
            }
        }
        if dialect == Dialect::Gemini {
            let name_len = rest[1..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len() - 1);
            let name = &rest[1..1 + name_len];
            if !name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit()) {
                out.push_str(&format!("${{{name}}}"));
                rest = &rest[1 + name_len..];
                continue;
            }
        }
        out.push_str("$$");
        rest = &rest[1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `${inner}` in registry syntax.
fn translate_reference(inner: &str, dialect: Dialect, client: Client) -> Result<String, String> {
    if dialect == Dialect::Editor {
        if let Some(name) = inner.strip_prefix("env:").filter(|n| is_variable_name(n)) {
            return Ok(format!("${{{name}}}"));
        }
        if inner == "userHome" {
            return Ok("${HOME}".into());
        }
    } else {
        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        if is_variable_name(name) {
            return Ok(match default {
                // The default is literal in both (no `$` processing inside `${…}`).
                Some(default) => format!("${{{name}:-{default}}}"),
                None => format!("${{{name}}}"),
            });
        }
    }
    Err(format!(
        "it uses `${{{inner}}}`, which only {} can resolve",
        client.title()
    ))
}

fn is_variable_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn escape_dollars(text: &str) -> String {
    text.replace('$', "$$")
}

/// The `NAME`s of `${NAME}` references (not `${NAME:-default}`) in a registry-syntax value.
fn variables_without_default(value: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        rest = &rest[i + 1..];
        if let Some(body) = rest.strip_prefix('$') {
            rest = body; // `$$` is a literal dollar
            continue;
        }
        if let Some(body) = rest.strip_prefix('{') {
            if let Some(end) = body.find('}') {
                let inner = &body[..end];
                if is_variable_name(inner) {
                    names.push(inner.to_owned());
                }
                rest = &body[end + 1..];
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_references_are_kept_and_lone_dollars_escaped() {
        let t = |s| translate(s, Client::ClaudeCode);
        assert_eq!(t("${TOKEN}").as_deref(), Ok("${TOKEN}"));
        assert_eq!(t("a-${X:-d}-b").as_deref(), Ok("a-${X:-d}-b"));
        assert_eq!(t("cost $5 and $$").as_deref(), Ok("cost $$5 and $$$$"));
        assert_eq!(t("${unclosed").as_deref(), Ok("$${unclosed"));
    }

    #[test]
    fn editor_references_are_translated_or_refused() {
        let t = |s| translate(s, Client::VsCode);
        assert_eq!(t("${env:GITHUB_TOKEN}").as_deref(), Ok("${GITHUB_TOKEN}"));
        assert_eq!(t("${userHome}/x").as_deref(), Ok("${HOME}/x"));
        let refused = t("${input:token}").unwrap_err();
        assert!(
            refused.contains("${input:token}") && refused.contains("VS Code"),
            "{refused}"
        );
        assert!(t("${workspaceFolder}/src").is_err());
        assert!(
            t("${TOKEN}").is_err(),
            "VS Code reads environment variables as ${{env:NAME}}"
        );
    }

    #[test]
    fn clients_without_interpolation_keep_every_dollar_literal() {
        let t = |s| translate(s, Client::Codex);
        assert_eq!(t("${TOKEN} $X").as_deref(), Ok("$${TOKEN} $$X"));
    }

    #[test]
    fn gemini_bare_variables_become_references() {
        let t = |s| translate(s, Client::Gemini);
        assert_eq!(t("$API_KEY").as_deref(), Ok("${API_KEY}"));
        assert_eq!(t("Bearer $TOKEN!").as_deref(), Ok("Bearer ${TOKEN}!"));
        assert_eq!(t("$5").as_deref(), Ok("$$5"));
        // other clients keep a bare `$NAME` literal
        assert_eq!(
            translate("$API_KEY", Client::ClaudeCode).as_deref(),
            Ok("$$API_KEY")
        );
    }

    #[test]
    fn only_references_without_default_are_required() {
        assert_eq!(
            variables_without_default("${A} ${B:-x} $${C} ${D}"),
            vec!["A".to_owned(), "D".to_owned()]
        );
    }

    #[test]
    fn proxies_are_recognized_by_program_name() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            proxy_target("/opt/bin/mcpsm", &args(&["proxy", "--target", "memory"])),
            Some(Some("memory".into()))
        );
        assert_eq!(
            proxy_target("mcpsm-proxy", &args(&["--target=memory"])),
            Some(Some("memory".into()))
        );
        assert_eq!(
            proxy_target("mcpsm", &args(&["proxy", "--url", "http://x"])),
            Some(None)
        );
        assert_eq!(proxy_target("mcpsm", &args(&["status"])), None);
        assert_eq!(proxy_target("npx", &args(&["mcpsm", "proxy"])), None);
    }
}
