//! DPoP (RFC 9449, the MCP DPoP extension SEP-1932): tokens bound to a key mcpsm holds, so a
//! stolen access token is useless without it. Every token request and every request to the
//! server carries a fresh proof (a JWT signed by that key naming the method, the URL, the time,
//! a unique id and, towards the server, a hash of the token); a server that wants a nonce in
//! the proof says so (`use_dpop_nonce` with a `DPoP-Nonce` header) and the request is sent again
//! with it.
//!
//! The key is an ECDSA P-256 key kept beside the stored tokens (same 0600 protection), so that
//! every process using the authorization presents the key its tokens are bound to.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use reqwest::header::{HeaderMap, HeaderValue};
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};
use url::Url;

use super::flow::random_text;
use super::jwt::{b64, Signer};
use super::store::now;
use super::{AuthError, Http};

pub const HEADER: &str = "dpop";
const NONCE_HEADER: &str = "dpop-nonce";

/// The proof key and the nonces servers asked for.
#[derive(Debug)]
pub struct Dpop {
    signer: Signer,
    jwk: Value,
    /// The latest `DPoP-Nonce` of each origin.
    nonces: Mutex<HashMap<String, String>>,
}

impl Dpop {
    /// The key stored at `path`, created (0600) when there is none.
    pub fn load_or_create(path: &Path) -> Result<Dpop, AuthError> {
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            AuthError::Store(format!("{what} the DPoP key {}: {e}", path.display()))
        };
        let der = match std::fs::read(path) {
            Ok(der) => der,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                create(path).map_err(|e| failed("cannot create", &e))?
            }
            Err(e) => return Err(failed("cannot read", &e)),
        };
        let signer = Signer::from_pkcs8(&der, Some("ES256")).map_err(|e| {
            failed(
                "cannot use",
                &format!("{e}; delete the file and mcpsm makes a new one (log in again)"),
            )
        })?;
        let jwk = signer
            .public_jwk()
            .ok_or_else(|| failed("cannot use", &"not an EC key"))?;
        Ok(Dpop {
            signer,
            jwk,
            nonces: Mutex::new(HashMap::new()),
        })
    }

    /// A fresh proof for `method url`, bound to `access_token` when there is one (`ath`).
    pub fn proof(
        &self,
        method: &str,
        url: &Url,
        access_token: Option<&str>,
    ) -> Result<HeaderValue, AuthError> {
        let mut htu = url.clone();
        htu.set_query(None);
        htu.set_fragment(None);
        let mut claims = json!({
            "jti": random_text(16),
            "htm": method,
            "htu": htu.as_str(),
            "iat": now(),
        });
        if let Some(token) = access_token {
            let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
            claims["ath"] = json!(b64(digest.as_ref()));
        }
        if let Some(nonce) = self.nonce_of(url) {
            claims["nonce"] = json!(nonce);
        }
        let jwt = self
            .signer
            .sign(json!({"typ": "dpop+jwt", "jwk": self.jwk}), &claims)?;
        let mut value = HeaderValue::from_str(&jwt).map_err(|e| AuthError::Token(e.to_string()))?;
        value.set_sensitive(true);
        Ok(value)
    }

    fn nonce_of(&self, url: &Url) -> Option<String> {
        let nonces = self.nonces.lock().unwrap_or_else(|e| e.into_inner());
        nonces.get(&url.origin().ascii_serialization()).cloned()
    }

    /// Remembers the nonce a response from `url` hands out; true when it is a new one.
    pub fn observe(&self, url: &Url, headers: &HeaderMap) -> bool {
        let Some(nonce) = headers.get(NONCE_HEADER).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let mut nonces = self.nonces.lock().unwrap_or_else(|e| e.into_inner());
        let previous = nonces.insert(url.origin().ascii_serialization(), nonce.to_owned());
        previous.as_deref() != Some(nonce)
    }
}

impl Dpop {
    /// A token endpoint request (`make` builds it) with a proof, sent again once with the
    /// authorization server's nonce when it asks for one (RFC 9449 §8).
    pub(super) async fn post<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<T, AuthError> {
        let target = Url::parse(url).map_err(|e| {
            AuthError::Token(format!("the token endpoint `{url}` is not a URL ({e})"))
        })?;
        let mut asked = false;
        loop {
            let request = make().header(HEADER, self.proof("POST", &target, None)?);
            let response = request.send().await.map_err(|e| {
                AuthError::Http(format!("POST {url}: {}", crate::transport::http::cause(&e)))
            })?;
            let fresh = self.observe(&target, response.headers());
            let status = response.status();
            let body = crate::transport::http::read_body(response, super::BODY_LIMIT)
                .await
                .map_err(|e| AuthError::Http(format!("POST {url}: {e}")))?;
            if status == reqwest::StatusCode::BAD_REQUEST
                && !asked
                && fresh
                && wants_nonce(&String::from_utf8_lossy(&body))
            {
                asked = true;
                continue;
            }
            return Http::parse(url, status, &body);
        }
    }
}

/// A `WWW-Authenticate` (or token error) asking for a DPoP nonce.
pub fn wants_nonce(text: &str) -> bool {
    text.contains("use_dpop_nonce")
}

/// The scheme a token of `token_type` is presented with (RFC 9449 §7.1).
pub fn scheme(token_type: Option<&str>) -> &'static str {
    match token_type {
        Some(t) if t.eq_ignore_ascii_case("dpop") => "DPoP",
        _ => "Bearer",
    }
}

/// Writes a new PKCS#8 key at `path`, or reads the one another process wrote first.
fn create(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Write as _;
    let rng = ring::rand::SystemRandom::new();
    let der = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| std::io::Error::other("the system's random source failed"))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    crate::paths::create_private_dir(dir)?;
    let temp = path.with_extension(format!("{}.tmp", std::process::id()));
    let mut file = crate::platform::fs::owner_only(
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true),
    )
    .open(&temp)?;
    crate::platform::fs::restrict_to_owner(&temp)?;
    file.write_all(der.as_ref())?;
    file.sync_all()?;
    drop(file);
    // A link never replaces a key another process made meanwhile.
    let linked = std::fs::hard_link(&temp, path);
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => Ok(der.as_ref().to_vec()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read(path),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_are_fresh_bound_and_carry_the_servers_nonce() {
        let dir = std::env::temp_dir().join(format!("mcpsm-dpop-{}", std::process::id()));
        let key = dir.join("k.dpop");
        let dpop = Dpop::load_or_create(&key).expect("a key");
        let again = Dpop::load_or_create(&key).expect("the same key");
        assert_eq!(dpop.jwk, again.jwk);
        let url = Url::parse("http://127.0.0.1:1/mcp?x=1#f").expect("url");
        let claims = |value: &HeaderValue| -> Value {
            let text = value.to_str().expect("ascii");
            let part = text.split('.').nth(1).expect("claims");
            use base64::Engine as _;
            serde_json::from_slice(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(part)
                    .expect("b64"),
            )
            .expect("json")
        };
        let first = claims(&dpop.proof("POST", &url, Some("tok")).expect("proof"));
        let second = claims(&dpop.proof("POST", &url, Some("tok")).expect("proof"));
        assert_ne!(first["jti"], second["jti"]);
        assert_eq!(first["htu"], "http://127.0.0.1:1/mcp");
        assert!(first["ath"].is_string() && first.get("nonce").is_none());
        let mut headers = HeaderMap::new();
        headers.insert(NONCE_HEADER, HeaderValue::from_static("n1"));
        assert!(dpop.observe(&url, &headers));
        assert!(!dpop.observe(&url, &headers));
        assert_eq!(
            claims(&dpop.proof("GET", &url, None).expect("proof"))["nonce"],
            "n1"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
