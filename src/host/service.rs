//! Who may use a stdio host that serves a team, not one machine.
//!
//! Bound to loopback and run by the manager, the host answers only requests carrying the
//! manager's secret and a loopback `Host`. Bound to another address it is a network service,
//! and then:
//! - **authentication is required**: bearer tokens from a file (one per line; the file is read
//!   again when it changes, so a token rotates without a restart — a Kubernetes Secret volume
//!   updates in place) and/or OIDC access tokens, JWTs checked against the issuer's JWKS (its
//!   keys fetched once, again for a key id it has not seen, at most every
//!   [`JWKS_MIN_REFRESH`], and at least every [`JWKS_MAX_AGE`]);
//! - `Host` must be loopback or one of the configured public names, and a browser's `Origin`
//!   https://NAME (DNS rebinding: a page elsewhere cannot make its requests carry either).
//!
//! The probes (`/healthz`, `/readyz`) and `/metrics` need neither: a kubelet or Prometheus
//! reaches a pod by its IP and carries no token.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use axum::http::header::{AUTHORIZATION, HOST, ORIGIN};
use axum::http::HeaderMap;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tracing::{info, warn};

/// A JWKS is fetched again for an unknown key id at most this often (a flood of tokens with
/// made-up key ids must not become a flood of requests to the issuer).
pub const JWKS_MIN_REFRESH: Duration = Duration::from_secs(30);
/// A JWKS older than this is fetched again (keys removed at the issuer stop being accepted).
pub const JWKS_MAX_AGE: Duration = Duration::from_secs(3600);
/// The token file is looked at again at most this often.
const TOKEN_FILE_CHECK: Duration = Duration::from_secs(1);

/// How requests to the host are let in.
#[derive(Default)]
pub struct Access {
    /// The manager's secret for the daemons it runs.
    pub secret: Option<String>,
    pub tokens: Option<TokenFile>,
    pub oidc: Option<Oidc>,
    /// Names besides loopback that `Host` may carry; `*` for any.
    pub public_names: Vec<String>,
}

impl Access {
    /// Whether any request is checked for a credential.
    pub fn requires_auth(&self) -> bool {
        self.secret.is_some() || self.tokens.is_some() || self.oidc.is_some()
    }

    /// `Err` with the reason when the request carries no accepted credential.
    pub async fn authorize(&self, headers: &HeaderMap) -> Result<(), String> {
        if !self.requires_auth() {
            return Ok(());
        }
        let Some(token) = bearer(headers) else {
            return Err("no `Authorization: Bearer` token".into());
        };
        if let Some(secret) = &self.secret {
            if equal_in_constant_time(token, secret) {
                return Ok(());
            }
        }
        if let Some(tokens) = &self.tokens {
            if tokens.accepts(token) {
                return Ok(());
            }
        }
        if let Some(oidc) = &self.oidc {
            if looks_like_jwt(token) {
                return oidc.validate(token).await.map(|_| ());
            }
        }
        Err("the bearer token is not accepted".into())
    }

    /// `Err` with the reason for a `Host` that is neither loopback nor a public name, or an
    /// `Origin` from elsewhere.
    pub fn check_host(&self, headers: &HeaderMap) -> Result<(), String> {
        if self.public_names.is_empty() {
            return crate::guard::check_loopback(headers);
        }
        let any = self.public_names.iter().any(|n| n == "*");
        let host = headers
            .get(HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !any && !crate::guard::host_is_loopback(host) && !self.is_public(host_name(host)) {
            return Err(format!(
                "Host `{host}` is not one of this host's names ({}; --public-name) (DNS rebinding protection)",
                self.public_names.join(", ")
            ));
        }
        if let Some(origin) = headers.get(ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            let allowed = crate::guard::origin_is_loopback(origin)
                || url::Url::parse(origin).is_ok_and(|url| {
                    url.scheme() == "https"
                        && url.host_str().is_some_and(|h| any || self.is_public(h))
                });
            if !allowed {
                return Err(format!(
                    "Origin `{origin}` is not allowed (DNS rebinding protection)"
                ));
            }
        }
        Ok(())
    }

    fn is_public(&self, name: &str) -> bool {
        self.public_names
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// `name` of `name:port` (and of `[v6]:port`).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn equal_in_constant_time(given: &str, expected: &str) -> bool {
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

/// Bearer tokens from a file, one a line (`#` starts a comment), read again when the file's
/// modification time or size changes.
pub struct TokenFile {
    path: PathBuf,
    state: Mutex<TokenState>,
}

struct TokenState {
    stamp: Option<(SystemTime, u64)>,
    checked: Instant,
    tokens: Vec<String>,
}

impl TokenFile {
    /// Reads `path`; `Err` when it cannot be read or holds no token.
    pub fn open(path: &Path) -> Result<TokenFile, String> {
        let (stamp, tokens) = read_tokens(path)?;
        if tokens.is_empty() {
            return Err(format!(
                "the token file {} holds no token; hint: write one token a line (e.g. `openssl rand -hex 32 > {}`)",
                path.display(),
                path.display()
            ));
        }
        Ok(TokenFile {
            path: path.to_owned(),
            state: Mutex::new(TokenState {
                stamp: Some(stamp),
                checked: Instant::now(),
                tokens,
            }),
        })
    }

    /// Whether `token` is in the file (as it is now: a changed file is read again; an
    /// unreadable one keeps the tokens read last, with a warning).
    pub fn accepts(&self, token: &str) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checked.elapsed() >= TOKEN_FILE_CHECK {
            state.checked = Instant::now();
            let now = file_stamp(&self.path);
            if now.is_some() && now != state.stamp {
                match read_tokens(&self.path) {
                    Ok((stamp, tokens)) => {
                        info!(
                            "token file {} changed: {} token(s) now",
                            self.path.display(),
                            tokens.len()
                        );
                        state.stamp = Some(stamp);
                        state.tokens = tokens;
                    }
                    Err(why) => warn!("{why}; keeping the tokens read before"),
                }
            }
        }
        state
            .tokens
            .iter()
            .any(|t| equal_in_constant_time(token, t))
    }
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn read_tokens(path: &Path) -> Result<((SystemTime, u64), Vec<String>), String> {
    let fail = |e: std::io::Error| format!("reading the token file {}: {e}", path.display());
    let stamp = file_stamp(path);
    let text = std::fs::read_to_string(path).map_err(fail)?;
    let tokens = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    Ok((stamp.unwrap_or((SystemTime::UNIX_EPOCH, 0)), tokens))
}

/// OIDC access tokens: JWTs signed by the issuer's keys, for one of the audiences.
pub struct Oidc {
    issuer: String,
    audiences: Vec<String>,
    client: reqwest::Client,
    keys: tokio::sync::Mutex<Keys>,
}

#[derive(Default)]
struct Keys {
    by_id: HashMap<String, DecodingKey>,
    /// The keys without a `kid` (tried for tokens without one).
    unnamed: Vec<DecodingKey>,
    fetched: Option<Instant>,
    jwks_uri: Option<String>,
}

/// The signature algorithms accepted: asymmetric only (an HMAC "key" from a JWKS would let
/// anyone who read the JWKS sign tokens).
const ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl Oidc {
    pub fn new(issuer: &str, audiences: Vec<String>) -> Result<Oidc, String> {
        let url = url::Url::parse(issuer)
            .map_err(|e| format!("--oidc-issuer `{issuer}` is not a URL: {e}"))?;
        if audiences.is_empty() {
            return Err("--oidc-issuer needs --oidc-audience (the `aud` its access tokens name for this service); hint: the API identifier / client id configured at the issuer".into());
        }
        let client = crate::transport::http::client(&url)
            .map_err(|e| format!("building the HTTP client for {issuer}: {e}"))?;
        Ok(Oidc {
            issuer: issuer.trim_end_matches('/').to_owned(),
            audiences,
            client,
            keys: tokio::sync::Mutex::new(Keys::default()),
        })
    }

    /// The token's claims when it is valid now: signed by a key of the issuer's JWKS, `iss`
    /// the issuer, `aud` one of the audiences, not expired (60 s leeway) and not before `nbf`.
    pub async fn validate(&self, token: &str) -> Result<Value, String> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| format!("the bearer token is not a JWT: {e}"))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(format!(
                "the token is signed with {:?}; only asymmetric algorithms are accepted",
                header.alg
            ));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer, &format!("{}/", self.issuer)]);
        validation.set_audience(&self.audiences);
        validation.validate_nbf = true;
        let candidates = self.keys_for(header.kid.as_deref()).await?;
        let mut last = String::from("no key of the issuer's JWKS matches the token");
        for key in &candidates {
            match jsonwebtoken::decode::<Value>(token, key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => last = format!("the token is not valid: {e}"),
            }
        }
        Err(last)
    }

    /// The keys a token with `kid` may be signed with: fetched again when the JWKS is old, or
    /// the key id is unknown and the last fetch was long enough ago.
    async fn keys_for(&self, kid: Option<&str>) -> Result<Vec<DecodingKey>, String> {
        let mut keys = self.keys.lock().await;
        let known = |keys: &Keys| match kid {
            Some(kid) => keys.by_id.get(kid).cloned().map(|k| vec![k]),
            None if !keys.unnamed.is_empty() => Some(keys.unnamed.clone()),
            None => Some(keys.by_id.values().cloned().collect()),
        };
        let stale = keys.fetched.is_none_or(|t| t.elapsed() >= JWKS_MAX_AGE);
        let missing = known(&keys).is_none_or(|k| k.is_empty());
        let may_refresh = keys.fetched.is_none_or(|t| t.elapsed() >= JWKS_MIN_REFRESH);
        if stale || (missing && may_refresh) {
            if let Err(why) = self.fetch(&mut keys).await {
                warn!("{why}");
                if keys.fetched.is_none() {
                    return Err(why);
                }
            }
        }
        match known(&keys) {
            Some(found) if !found.is_empty() => Ok(found),
            _ => Err(format!(
                "the token's key id {kid:?} is not in the JWKS of {}",
                self.issuer
            )),
        }
    }

    async fn fetch(&self, keys: &mut Keys) -> Result<(), String> {
        let jwks_uri = match &keys.jwks_uri {
            Some(uri) => uri.clone(),
            None => {
                let discovery = format!("{}/.well-known/openid-configuration", self.issuer);
                let document: Value = self.get_json(&discovery).await?;
                let Some(uri) = document["jwks_uri"].as_str() else {
                    return Err(format!("{discovery} names no `jwks_uri`"));
                };
                keys.jwks_uri = Some(uri.to_owned());
                uri.to_owned()
            }
        };
        let set: JwkSet = serde_json::from_value(self.get_json(&jwks_uri).await?)
            .map_err(|e| format!("{jwks_uri} is not a JWKS: {e}"))?;
        let mut by_id = HashMap::new();
        let mut unnamed = Vec::new();
        for jwk in &set.keys {
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            match &jwk.common.key_id {
                Some(kid) => {
                    by_id.insert(kid.clone(), key);
                }
                None => unnamed.push(key),
            }
        }
        info!(
            "fetched {} key(s) from {jwks_uri}",
            by_id.len() + unnamed.len()
        );
        keys.by_id = by_id;
        keys.unnamed = unnamed;
        keys.fetched = Some(Instant::now());
        Ok(())
    }

    async fn get_json(&self, url: &str) -> Result<Value, String> {
        let response = self
            .client
            .get(url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| format!("fetching {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("fetching {url}: HTTP {}", response.status()));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("reading {url}: {e}"))?;
        serde_json::from_slice(&body).map_err(|e| format!("{url} is not JSON: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, value.parse().expect("header value"));
        }
        headers
    }

    #[test]
    fn public_names_and_loopback_pass_the_host_check() {
        let access = Access {
            public_names: vec!["mcp.example.com".into()],
            ..Access::default()
        };
        assert!(access
            .check_host(&headers(&[("host", "mcp.example.com:443")]))
            .is_ok());
        assert!(access
            .check_host(&headers(&[("host", "127.0.0.1:80")]))
            .is_ok());
        assert!(access
            .check_host(&headers(&[("host", "evil.example")]))
            .is_err());
        assert!(access
            .check_host(&headers(&[
                ("host", "mcp.example.com"),
                ("origin", "https://mcp.example.com")
            ]))
            .is_ok());
        assert!(access
            .check_host(&headers(&[
                ("host", "mcp.example.com"),
                ("origin", "https://evil.example")
            ]))
            .is_err());
    }

    #[tokio::test]
    async fn a_rotated_token_file_is_read_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# team\nfirst\n").expect("write");
        let file = TokenFile::open(&path).expect("open");
        assert!(file.accepts("first"));
        assert!(!file.accepts("second"));
        std::fs::write(&path, "second-token\n").expect("write");
        // The file is looked at again after TOKEN_FILE_CHECK.
        file.state.lock().expect("lock").checked = Instant::now() - TOKEN_FILE_CHECK;
        assert!(file.accepts("second-token"));
        assert!(!file.accepts("first"));
    }

    /// A P-256 key: its PKCS#8 (for signing) and its JWK (for the JWKS) under `kid`.
    fn es256_key(kid: &str) -> (Vec<u8>, Value) {
        use base64::Engine as _;
        use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("generate");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("parse");
        let point = pair.public_key().as_ref();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": b64.encode(&point[1..33]), "y": b64.encode(&point[33..65])});
        (pkcs8.as_ref().to_vec(), jwk)
    }

    fn sign(pkcs8: &[u8], kid: &str, claims: &Value) -> String {
        let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(
            &header,
            claims,
            &jsonwebtoken::EncodingKey::from_ec_der(pkcs8),
        )
        .expect("sign")
    }

    #[tokio::test]
    async fn oidc_tokens_are_checked_against_the_issuers_jwks() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let issuer = format!("http://{}", listener.local_addr().expect("addr"));
        let (first_key, first_jwk) = es256_key("one");
        let (second_key, second_jwk) = es256_key("two");
        let jwks = std::sync::Arc::new(Mutex::new(serde_json::json!({"keys": [first_jwk]})));
        let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let router = {
            let issuer = issuer.clone();
            let jwks = jwks.clone();
            let fetches = fetches.clone();
            axum::Router::new()
                .route(
                    "/.well-known/openid-configuration",
                    axum::routing::get(move || {
                        let document = serde_json::json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks")});
                        async move { axum::Json(document) }
                    }),
                )
                .route(
                    "/jwks",
                    axum::routing::get(move || {
                        fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let set = jwks.lock().expect("lock").clone();
                        async move { axum::Json(set) }
                    }),
                )
        };
        tokio::spawn(async move { axum::serve(listener, router).await });
        let oidc = Oidc::new(&issuer, vec!["mcp-team".into()]).expect("oidc");
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let claims =
            serde_json::json!({"iss": issuer, "aud": "mcp-team", "sub": "ada", "exp": now + 300});
        let claims = oidc
            .validate(&sign(&first_key, "one", &claims))
            .await
            .expect("a valid token");
        assert_eq!(claims["sub"], "ada");
        let other_audience =
            serde_json::json!({"iss": issuer, "aud": "elsewhere", "exp": now + 300});
        assert!(oidc
            .validate(&sign(&first_key, "one", &other_audience))
            .await
            .is_err());
        let expired = serde_json::json!({"iss": issuer, "aud": "mcp-team", "exp": now - 3600});
        assert!(oidc
            .validate(&sign(&first_key, "one", &expired))
            .await
            .is_err());
        let forged = serde_json::json!({"iss": issuer, "aud": "mcp-team", "exp": now + 300});
        // Signed by a key the issuer does not publish, under a known kid.
        assert!(oidc
            .validate(&sign(&second_key, "one", &forged))
            .await
            .is_err());
        // The issuer rotates: a token with the new kid makes the host fetch the JWKS again
        // (once the minimum refresh interval has passed).
        *jwks.lock().expect("lock") = serde_json::json!({"keys": [second_jwk]});
        oidc.keys.lock().await.fetched = Some(Instant::now() - JWKS_MIN_REFRESH);
        let before = fetches.load(std::sync::atomic::Ordering::Relaxed);
        oidc.validate(&sign(&second_key, "two", &forged))
            .await
            .expect("a token signed by the rotated key");
        assert_eq!(
            fetches.load(std::sync::atomic::Ordering::Relaxed),
            before + 1
        );
    }

    #[test]
    fn an_empty_token_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# nothing yet\n").expect("write");
        let Err(why) = TokenFile::open(&path) else {
            panic!("an empty token file was accepted");
        };
        assert!(why.contains("holds no token"), "{why}");
    }
}
