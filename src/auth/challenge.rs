//! `WWW-Authenticate: Bearer k="v", k2=v2` (RFC 6750 §3, RFC 9728 §5.1), read leniently.

use std::collections::HashMap;

/// The parameters of the `Bearer` challenge (keys lower-cased).
#[derive(Debug, Default, Clone)]
pub struct Challenge {
    params: HashMap<String, String>,
}

impl Challenge {
    pub fn parse(header: &str) -> Challenge {
        let mut params = HashMap::new();
        let text = header.trim();
        // Only the Bearer (or DPoP, RFC 9449 §7.1) challenge matters; tolerate a missing
        // scheme.
        let text = match text.find(|c: char| c.is_whitespace()) {
            Some(at) if !text[..at].contains('=') => {
                let scheme = &text[..at];
                if !scheme.eq_ignore_ascii_case("bearer") && !scheme.eq_ignore_ascii_case("dpop") {
                    return Challenge { params };
                }
                &text[at..]
            }
            _ => text,
        };
        let mut chars = text.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
                chars.next();
            }
            let key: String = chars
                .by_ref()
                .take_while(|c| *c != '=')
                .collect::<String>()
                .trim()
                .to_ascii_lowercase();
            if key.is_empty() {
                break;
            }
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            let mut value = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next()),
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(c) = chars.peek().copied() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
                value = value.trim().to_owned();
            }
            params.insert(key, value);
        }
        Challenge { params }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }

    /// The scopes the server asks for, if it names them.
    pub fn scope(&self) -> Option<&str> {
        self.get("scope").filter(|s| !s.trim().is_empty())
    }

    pub fn resource_metadata(&self) -> Option<&str> {
        self.get("resource_metadata")
    }

    pub fn insufficient_scope(&self) -> bool {
        self.get("error") == Some("insufficient_scope")
    }
}

#[cfg(test)]
mod tests {
    use super::Challenge;

    #[test]
    fn reads_quoted_and_bare_parameters() {
        let c = Challenge::parse(
            r#"Bearer error="insufficient_scope", scope="a b", resource_metadata="http://x/.well-known/oauth-protected-resource/mcp", realm=mcp"#,
        );
        assert!(c.insufficient_scope());
        assert_eq!(c.scope(), Some("a b"));
        assert_eq!(
            c.resource_metadata(),
            Some("http://x/.well-known/oauth-protected-resource/mcp")
        );
        assert_eq!(c.get("realm"), Some("mcp"));
    }

    #[test]
    fn other_schemes_give_nothing() {
        assert!(Challenge::parse(r#"Basic realm="x""#)
            .get("realm")
            .is_none());
    }
}
