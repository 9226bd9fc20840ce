//! DNS-rebinding protection for mcpsm's HTTP servers (the manager API and the stdio host):
//! a browser page on another site can make requests to 127.0.0.1, but it cannot make them
//! carry a loopback `Host` (for a rebound name) or a loopback `Origin`.

use axum::http::header::{HOST, ORIGIN};
use axum::http::HeaderMap;

/// `Err` with a message for a non-loopback `Host` or a foreign `Origin`.
pub fn check_loopback(headers: &HeaderMap) -> Result<(), String> {
    let host = headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !host_is_loopback(host) {
        return Err(format!(
            "Host `{host}` is not a loopback address; this mcpsm server only answers 127.0.0.1 (DNS rebinding protection)"
        ));
    }
    if let Some(origin) = headers.get(ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !origin_is_loopback(origin) {
            return Err(format!(
                "Origin `{origin}` is not allowed (DNS rebinding protection)"
            ));
        }
    }
    Ok(())
}

/// `127.0.0.1`, `localhost` or `[::1]`, with or without a port.
pub fn host_is_loopback(host: &str) -> bool {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
            _ => host,
        }
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub fn origin_is_loopback(origin: &str) -> bool {
    url::Url::parse(origin).is_ok_and(|url| {
        matches!(url.scheme(), "http" | "https") && crate::transport::http::is_loopback(&url)
    })
}

/// Whether `headers` carry `Authorization: Bearer <secret>`, compared in constant time.
pub fn bearer_matches(headers: &HeaderMap, secret: &str) -> bool {
    let Some(given) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    same_secret(given, secret)
}

/// Whether the `Cookie` header carries cookie `name` with value `secret` (constant time).
pub fn cookie_matches(headers: &HeaderMap, name: &str, secret: &str) -> bool {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .any(|(key, value)| key == name && same_secret(value, secret))
}

/// Compares two secrets in time that depends on their length only.
pub fn same_secret(given: &str, secret: &str) -> bool {
    given.len() == secret.len()
        && given
            .bytes()
            .zip(secret.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in [
            "127.0.0.1",
            "127.0.0.1:3199",
            "localhost:80",
            "LOCALHOST",
            "[::1]:3199",
            "[::1]",
        ] {
            assert!(host_is_loopback(host), "{host}");
        }
        for host in [
            "evil.example.com",
            "evil.example.com:3199",
            "10.0.0.1:3199",
            "",
            "localhost.evil.com",
        ] {
            assert!(!host_is_loopback(host), "{host}");
        }
    }

    #[test]
    fn loopback_origins() {
        assert!(origin_is_loopback("http://localhost:3000"));
        assert!(origin_is_loopback("http://127.0.0.1"));
        assert!(!origin_is_loopback("http://evil.example.com"));
        assert!(!origin_is_loopback("null"));
    }

    #[test]
    fn bearer_tokens_must_match_exactly() {
        let mut headers = HeaderMap::new();
        assert!(!bearer_matches(&headers, "abc"));
        headers.insert(
            axum::http::header::AUTHORIZATION,
            "Bearer abc".parse().expect("header"),
        );
        assert!(bearer_matches(&headers, "abc"));
        assert!(!bearer_matches(&headers, "abd"));
        assert!(!bearer_matches(&headers, "abcd"));
    }
}
