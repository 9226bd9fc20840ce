//! OAuth 2.1 for remote MCP servers, per the MCP authorization spec.
//!
//! When a server answers 401 (or 403 `insufficient_scope`), [`OAuth`] finds out where to
//! authorize ([`discovery`]: RFC 9728 → RFC 8414 / OpenID Connect), becomes a client there
//! ([`flow`]: pre-registered, client ID metadata document, or RFC 7591 registration), sends the
//! user's browser through the authorization code flow with PKCE S256, `state` and `resource`
//! ([`browser`]: a redirect listener on 127.0.0.1), and keeps the tokens ([`store`]: a 0600
//! file per server under `MCPSM_HOME/oauth/`). Tokens are refreshed shortly before they expire
//! and when the server refuses them; a refusal for missing scopes asks for them (step-up).
//!
//! Guarantees:
//! - one authorization or refresh at a time per server, across processes: the store's file
//!   lock is held while it runs, and whoever waited adopts the result instead of starting
//!   another;
//! - tokens never reach logs: they live in [`store::Secret`], whose `Debug` hides them, and
//!   header values are marked sensitive;
//! - credentials of one authorization server are never presented to another.
//!
//! The transport knows none of this: it sees an [`Authorizer`] that supplies a header.

mod broker;
mod browser;
mod challenge;
mod discovery;
mod dpop;
mod flow;
mod grants;
mod jwt;
pub mod keychain;
pub mod store;

use std::sync::RwLock;
use std::time::Duration;

use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use serde::de::DeserializeOwned;
use tracing::{debug, info};
use url::Url;

pub use broker::{digest, login_timeout, Ask, Broker, BrokerAnswer, BrokerRequest, Managed};
pub use browser::OPENER_ENV;
use challenge::Challenge;
use discovery::Discovered;
pub use grants::{Grant, GrantSettings};
use store::{now, Client, Record, Store, Tokens};

use crate::transport::{http, AuthFuture, Authorizer};

/// Refresh this long before a token expires.
const REFRESH_MARGIN: u64 = 60;
/// Bound on metadata and token responses.
const BODY_LIMIT: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Discovery(String),
    #[error("{0}")]
    Registration(String),
    #[error("{0}")]
    Browser(String),
    #[error("{0}")]
    Token(String),
    #[error("the token store: {0}")]
    Store(String),
    #[error("{0}")]
    Http(String),
}

/// How to authorize, from the registry or the proxy's options.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// A pre-registered client.
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    /// The URL of a client ID metadata document describing mcpsm, if one is published.
    pub client_metadata_url: Option<String>,
    /// Scopes to ask for instead of what the server suggests (space-separated).
    pub scopes: Option<String>,
    /// The redirect listener's port; 0 = a free one.
    pub callback_port: u16,
    /// A command that opens the authorization URL (else `MCPSM_OAUTH_OPENER`, else the
    /// system browser).
    pub opener: Option<String>,
    /// How long the user has to finish in the browser.
    pub login_timeout: Duration,
    /// Grants without a browser, and DPoP ([`grants`]).
    pub grant: GrantSettings,
}

/// The settings of a registry daemon's `auth = "oauth"` keys.
pub fn settings_of(spec: &crate::config::OAuthSpec) -> Settings {
    Settings {
        client_id: spec.client_id.clone(),
        client_secret: spec.client_secret.clone(),
        client_metadata_url: None,
        scopes: spec.scopes.clone(),
        callback_port: spec.callback_port,
        opener: None,
        login_timeout: Duration::from_secs(300),
        grant: spec.grant.clone(),
    }
}

/// The store key of a registry daemon's authorization.
pub fn daemon_key(name: &str) -> String {
    format!("daemon:{name}")
}

/// What `mcpsm login`/`logout`/`status` say about a stored authorization (never a token).
pub fn describe(home: &std::path::Path, key: &str) -> Option<String> {
    let record = Store::new(home, key).load();
    let tokens = record.tokens?;
    let expiry = match tokens.expires_at {
        Some(at) if at > now() => format!("expires in {}m", (at - now()) / 60),
        Some(_) if tokens.refresh_token.is_some() => "expired; refreshed on next use".into(),
        Some(_) => "expired".into(),
        None => "no expiry given".into(),
    };
    let scope = tokens.scope.or(tokens.requested_scope).unwrap_or_default();
    Some(format!(
        "logged in to {} ({expiry}{}{}; tokens {})",
        tokens.issuer,
        if scope.is_empty() { "" } else { "; scope " },
        scope,
        Store::new(home, key).location()
    ))
}

/// Which token store new tokens go to, and why (for `doctor`).
pub fn token_store() -> String {
    keychain::backend().1.clone()
}

/// Forgets a stored authorization; true when there was one.
pub fn forget(home: &std::path::Path, key: &str) -> Result<bool, AuthError> {
    Store::new(home, key).remove()
}

/// The HTTP requests of discovery and the token endpoint.
pub struct Http {
    /// Built at the first request: building it loads the system's root certificates
    /// (milliseconds and hundreds of KiB), which a proxy whose server never asks for OAuth
    /// must not pay at every start.
    client: std::sync::OnceLock<reqwest::Client>,
    /// The authorization server is on this machine: no `HTTP_PROXY`.
    loopback: bool,
    /// Proofs on token requests when tokens are DPoP-bound.
    dpop: Option<std::sync::Arc<dpop::Dpop>>,
}

impl Http {
    fn new(server: &Url, dpop: Option<std::sync::Arc<dpop::Dpop>>) -> Http {
        Http {
            client: std::sync::OnceLock::new(),
            loopback: http::is_loopback(server),
            dpop,
        }
    }

    /// The client, built on first use.
    fn client(&self) -> Result<&reqwest::Client, AuthError> {
        if let Some(client) = self.client.get() {
            return Ok(client);
        }
        http::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30));
        if self.loopback {
            builder = builder.no_proxy();
        }
        let client = builder
            .build()
            .map_err(|e| AuthError::Http(format!("cannot set up the HTTP client: {e}")))?;
        Ok(self.client.get_or_init(|| client))
    }

    /// A JSON document, or `None` when there is none at `url` (any non-2xx, or not JSON).
    async fn get_json<T: DeserializeOwned>(&self, url: &Url) -> Result<Option<T>, AuthError> {
        debug!(%url, "oauth: GET");
        let response = self
            .client()?
            .get(url.clone())
            .header(ACCEPT, http::JSON)
            .send()
            .await
            .map_err(|e| AuthError::Http(format!("GET {url}: {}", http::cause(&e))))?;
        if !response.status().is_success() {
            return Ok(None);
        }
        let body = http::read_body(response, BODY_LIMIT)
            .await
            .map_err(|e| AuthError::Http(format!("GET {url}: {e}")))?;
        Ok(serde_json::from_slice(&body).ok())
    }

    async fn post_json<T: DeserializeOwned>(
        &self,
        url: &str,
        body: &serde_json::Value,
    ) -> Result<T, AuthError> {
        let request = self
            .client()?
            .post(url)
            .header(CONTENT_TYPE, http::JSON)
            .header(ACCEPT, http::JSON)
            .body(body.to_string());
        self.answer(url, request).await
    }

    async fn post_form<T: DeserializeOwned>(
        &self,
        url: &str,
        form: &[(&str, String)],
        basic: Option<&str>,
    ) -> Result<T, AuthError> {
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form.iter().map(|(k, v)| (*k, v.as_str())))
            .finish();
        let basic = match basic {
            Some(basic) => {
                let mut value =
                    HeaderValue::from_str(basic).map_err(|e| AuthError::Token(e.to_string()))?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let client = self.client()?;
        let make = || {
            let request = client
                .post(url)
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(ACCEPT, http::JSON)
                .body(body.clone());
            match &basic {
                Some(value) => request.header(AUTHORIZATION, value.clone()),
                None => request,
            }
        };
        match &self.dpop {
            Some(dpop) => dpop.post(url, make).await,
            None => self.answer(url, make()).await,
        }
    }

    async fn answer<T: DeserializeOwned>(
        &self,
        url: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<T, AuthError> {
        let response = request
            .send()
            .await
            .map_err(|e| AuthError::Http(format!("POST {url}: {}", http::cause(&e))))?;
        let status = response.status();
        let body = http::read_body(response, BODY_LIMIT)
            .await
            .map_err(|e| AuthError::Http(format!("POST {url}: {e}")))?;
        Self::parse(url, status, &body)
    }

    fn parse<T: DeserializeOwned>(
        url: &str,
        status: reqwest::StatusCode,
        body: &[u8],
    ) -> Result<T, AuthError> {
        if !status.is_success() {
            // An OAuth error body names the error; say that, not the whole body.
            let error: Option<serde_json::Value> = serde_json::from_slice(body).ok();
            let what = error
                .as_ref()
                .and_then(|e| {
                    let code = e.get("error")?.as_str()?;
                    let text = e
                        .get("error_description")
                        .and_then(|d| d.as_str())
                        .unwrap_or("");
                    Some(format!("{code} {text}").trim().to_owned())
                })
                .unwrap_or_else(|| http::excerpt(body));
            return Err(AuthError::Token(format!(
                "{url} answered HTTP {}: {what}",
                status.as_u16()
            )));
        }
        serde_json::from_slice(body).map_err(|e| {
            AuthError::Token(format!(
                "{url} answered something that is not the expected JSON ({e})"
            ))
        })
    }
}

/// The authorization of one server, shared by every request of a session (and, through the
/// store's lock, with every other process using the same store).
pub struct OAuth {
    server: Url,
    label: String,
    settings: Settings,
    http: Http,
    store: Store,
    /// The header in use and when its token expires.
    current: RwLock<Option<(HeaderValue, Option<u64>)>>,
    /// One authorization or refresh at a time in this process.
    flight: tokio::sync::Mutex<()>,
    /// After a refresh before expiry failed: no new attempt before then (a 401 still
    /// triggers one), so an unreachable authorization server does not slow every request.
    refresh_not_before: std::sync::Mutex<Option<std::time::Instant>>,
    /// The authorization URL while the user is expected in the browser, and whether a
    /// browser (or opener) was started for it: for whoever waits (the manager's proxies).
    login_url: tokio::sync::watch::Sender<Option<(String, bool)>>,
}

impl OAuth {
    /// `store_key` names the stored authorization (a daemon name, or the URL itself).
    pub fn new(
        server: Url,
        label: String,
        settings: Settings,
        home: &std::path::Path,
        store_key: &str,
    ) -> Result<OAuth, AuthError> {
        let store = Store::new(home, store_key);
        let dpop = match settings.grant.dpop {
            true => Some(std::sync::Arc::new(dpop::Dpop::load_or_create(
                &store.path().with_extension("dpop"),
            )?)),
            false => None,
        };
        let oauth = OAuth {
            http: Http::new(&server, dpop),
            server,
            label,
            settings,
            store,
            current: RwLock::new(None),
            flight: tokio::sync::Mutex::new(()),
            refresh_not_before: std::sync::Mutex::new(None),
            login_url: tokio::sync::watch::Sender::new(None),
        };
        let record = oauth.store.load();
        if record.server == oauth.server.as_str() {
            if let Some(tokens) = &record.tokens {
                oauth.adopt(tokens);
            }
        }
        Ok(oauth)
    }

    fn current(&self) -> Option<(HeaderValue, Option<u64>)> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The header in use and when its token expires (when it can be refreshed).
    pub fn current_header(&self) -> Option<(HeaderValue, Option<u64>)> {
        self.current()
    }

    /// Follows the authorization URL of a login under way.
    pub fn watch_login_url(&self) -> tokio::sync::watch::Receiver<Option<(String, bool)>> {
        self.login_url.subscribe()
    }

    fn adopt(&self, tokens: &Tokens) {
        let value = HeaderValue::from_str(&Self::header_text(tokens)).ok();
        let value = value.map(|mut v| {
            v.set_sensitive(true);
            // Only a token that can be refreshed is refreshed ahead of time.
            (v, tokens.refresh_token.as_ref().and(tokens.expires_at))
        });
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = value;
    }

    /// `Bearer TOKEN`, or `DPoP TOKEN` for a DPoP-bound one.
    fn header_text(tokens: &Tokens) -> String {
        let scheme = dpop::scheme(tokens.token_type.as_deref());
        format!("{scheme} {}", tokens.access_token.0)
    }

    fn matches(tokens: &Tokens, header: Option<&HeaderValue>) -> bool {
        header.is_some_and(|h| h.as_bytes() == Self::header_text(tokens).as_bytes())
    }

    fn expiring(expires_at: Option<u64>) -> bool {
        expires_at.is_some_and(|at| at <= now() + REFRESH_MARGIN)
    }

    /// Logs in now if there are no tokens yet (`mcpsm login`): probes the server first, so
    /// that discovery starts from its challenge.
    pub async fn login(&self) -> Result<(), AuthError> {
        let _flight = self.flight.lock().await;
        let response = self
            .http
            .client()?
            .post(self.server.clone())
            .header(CONTENT_TYPE, http::JSON)
            .header(ACCEPT, http::ACCEPT_BOTH)
            .body(r#"{"jsonrpc":"2.0","id":0,"method":"ping"}"#)
            .send()
            .await
            .map_err(|e| AuthError::Http(format!("POST {}: {}", self.server, http::cause(&e))))?;
        let challenge = response
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(Challenge::parse)
            .unwrap_or_default();
        self.store
            .locked(async {
                let mut record = self.store.load();
                self.authorize(&mut record, &challenge, None).await
            })
            .await?
    }

    /// Refreshes tokens about to expire (once, whoever else is waiting).
    async fn refresh_expiring(&self, seen: HeaderValue) {
        let _flight = self.flight.lock().await;
        if self.current().map(|c| c.0) != Some(seen.clone()) {
            return; // refreshed meanwhile
        }
        let done = self
            .store
            .locked(async {
                let mut record = self.store.load();
                let Some(tokens) = record.tokens.clone() else {
                    return;
                };
                if !Self::matches(&tokens, Some(&seen)) && !Self::expiring(tokens.expires_at) {
                    return self.adopt(&tokens); // another process refreshed
                }
                if let Err(e) = self.refresh(&mut record).await {
                    debug!("{}: refreshing before expiry failed: {e}", self.label);
                }
            })
            .await;
        if let Err(e) = done {
            debug!("{}: {e}", self.label);
        }
    }

    async fn refresh(&self, record: &mut Record) -> Result<(), AuthError> {
        let (Some(tokens), Some(client)) = (&record.tokens, &record.client) else {
            return Err(AuthError::Token("nothing to refresh".into()));
        };
        if client.issuer != tokens.issuer {
            return Err(AuthError::Token(
                "the client belongs to another authorization server".into(),
            ));
        }
        let fresh = flow::refresh(&self.http, client, tokens).await?;
        info!("{}: refreshed the access token", self.label);
        record.tokens = Some(fresh);
        record.server = self.server.to_string();
        self.store.save(record)?;
        if let Some(tokens) = &record.tokens {
            self.adopt(tokens);
        }
        Ok(())
    }

    /// After a refusal: adopt what another process obtained, else refresh (same
    /// authorization server, no new scopes), else authorize from the start.
    async fn answer_refusal(
        &self,
        status: u16,
        challenge: &Challenge,
        sent: Option<&HeaderValue>,
    ) -> Result<(), AuthError> {
        let mut record = self.store.load();
        if let Some(tokens) = &record.tokens {
            // Expiring soon is fine: `authorization` refreshes it before use.
            if record.server == self.server.as_str()
                && !Self::matches(tokens, sent)
                && tokens.expires_at.is_none_or(|at| at > now())
            {
                self.adopt(tokens);
                return Ok(());
            }
        }
        if status == 403 && challenge.insufficient_scope() {
            let wanted = challenge.scope().unwrap_or_default();
            let had = record
                .tokens
                .as_ref()
                .and_then(|t| t.requested_scope.clone())
                .unwrap_or_default();
            let missing: Vec<&str> = wanted
                .split_whitespace()
                .filter(|s| !had.split_whitespace().any(|h| h == *s))
                .collect();
            if missing.is_empty() {
                return Err(AuthError::Token(format!(
                    "the server refuses the scopes it was granted (it wants `{wanted}`); asking again would not help"
                )));
            }
            let scope = had
                .split_whitespace()
                .chain(missing.iter().copied())
                .collect::<Vec<_>>()
                .join(" ");
            info!(
                "{}: the server asks for more scopes; authorizing again",
                self.label
            );
            return self.authorize(&mut record, challenge, Some(scope)).await;
        }
        if sent.is_some()
            && record
                .tokens
                .as_ref()
                .is_some_and(|t| t.refresh_token.is_some())
        {
            let found = discovery::discover(&self.http, &self.server, challenge).await?;
            let same_server = record
                .tokens
                .as_ref()
                .is_some_and(|t| t.issuer == found.issuer);
            if same_server {
                match self.refresh(&mut record).await {
                    Ok(()) => return Ok(()),
                    Err(e) => info!("{}: refreshing failed ({e}); authorizing again", self.label),
                }
            }
        }
        self.authorize(&mut record, challenge, None).await
    }

    /// The whole flow, from discovery to stored tokens.
    async fn authorize(
        &self,
        record: &mut Record,
        challenge: &Challenge,
        scope: Option<String>,
    ) -> Result<(), AuthError> {
        let found: Discovered = discovery::discover(&self.http, &self.server, challenge).await?;
        let mut scope = scope
            .or_else(|| self.settings.scopes.clone())
            .or_else(|| challenge.scope().map(str::to_owned))
            .or_else(|| found.resource_scopes.as_ref().map(|s| s.join(" ")))
            .filter(|s| !s.trim().is_empty());
        if let Some((client, tokens)) =
            grants::obtain(&self.http, &found, &self.settings, scope.clone()).await?
        {
            info!("{}: authorized by {}", self.label, found.issuer);
            return self.keep(record, client, tokens);
        }
        // SEP-2207: ask for a refresh token where the server offers `offline_access`.
        let offers_offline = found
            .metadata
            .scopes_supported
            .as_ref()
            .is_some_and(|s| s.iter().any(|s| s == "offline_access"));
        if let Some(text) = &mut scope {
            if offers_offline && !text.split_whitespace().any(|s| s == "offline_access") {
                text.push_str(" offline_access");
            }
        }
        // A client registered with another authorization server is never used here.
        let stored = record.client.as_ref().filter(|c| c.issuer == found.issuer);
        let port = match (
            self.settings.callback_port,
            stored.and_then(|c| c.redirect_uri.as_deref()),
        ) {
            (0, Some(uri)) => Url::parse(uri).ok().and_then(|u| u.port()).unwrap_or(0),
            (port, _) => port,
        };
        let listener = match browser::Listener::bind(port).await {
            Ok(listener) => listener,
            Err(_) if self.settings.callback_port == 0 && port != 0 => {
                browser::Listener::bind(0).await?
            }
            Err(e) => return Err(e),
        };
        let redirect_uri = listener.redirect_uri();
        let client =
            flow::client(&self.http, &found, &self.settings, stored, &redirect_uri).await?;
        let verifier = flow::random_text(48);
        let state = flow::random_text(24);
        let url = flow::authorization_url(
            &found,
            &client,
            &redirect_uri,
            &state,
            &flow::challenge_of(&verifier),
            scope.as_deref(),
        )?;
        let opened = browser::open(url.as_str(), &self.label, self.settings.opener.as_deref());
        self.login_url.send_replace(Some((url.to_string(), opened)));
        let timeout = if self.settings.login_timeout.is_zero() {
            Duration::from_secs(300)
        } else {
            self.settings.login_timeout
        };
        let params = listener.wait(&state, timeout).await;
        self.login_url.send_replace(None);
        let params = params?;
        if let Some(error) = params.get("error") {
            let text = params
                .get("error_description")
                .map(String::as_str)
                .unwrap_or("");
            return Err(AuthError::Browser(format!(
                "the authorization server refused: {error} {text}"
            )));
        }
        // RFC 9207: the response names its issuer; compared exactly, without normalization.
        let issuer = found.metadata.issuer.as_deref().unwrap_or(&found.issuer);
        match params.get("iss") {
            Some(iss) if iss != issuer => {
                return Err(AuthError::Browser(format!(
                    "the authorization response comes from issuer `{iss}`, not `{issuer}`; mcpsm did not use it"
                )))
            }
            None if found.metadata.authorization_response_iss_parameter_supported => {
                return Err(AuthError::Browser(format!(
                    "the authorization response lacks the `iss` that {issuer} promises; mcpsm did not use it"
                )))
            }
            _ => {}
        }
        let code = params
            .get("code")
            .cloned()
            .ok_or_else(|| AuthError::Browser("the authorization response has no code".into()))?;
        let tokens = flow::exchange_code(
            &self.http,
            &found,
            &client,
            code,
            &redirect_uri,
            verifier,
            scope,
        )
        .await?;
        info!("{}: authorized by {}", self.label, found.issuer);
        self.keep(record, client, tokens)
    }

    /// Stores and uses new tokens.
    fn keep(&self, record: &mut Record, client: Client, tokens: Tokens) -> Result<(), AuthError> {
        record.server = self.server.to_string();
        record.client = Some(client);
        record.tokens = Some(tokens);
        self.store.save(record)?;
        if let Some(tokens) = &record.tokens {
            self.adopt(tokens);
        }
        Ok(())
    }
}

/// How long after a failed refresh before expiry the next one is tried.
const REFRESH_BACKOFF: std::time::Duration = std::time::Duration::from_secs(30);

impl Authorizer for OAuth {
    fn authorization(&self) -> AuthFuture<'_, Option<HeaderValue>> {
        Box::pin(async move {
            let (header, expires_at) = self.current()?;
            let backing_off = self
                .refresh_not_before
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some_and(|at| std::time::Instant::now() < at);
            if Self::expiring(expires_at) && !backing_off {
                self.refresh_expiring(header.clone()).await;
                let now = self.current().map(|c| c.0);
                if now.as_ref() == Some(&header) {
                    *self
                        .refresh_not_before
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) =
                        Some(std::time::Instant::now() + REFRESH_BACKOFF);
                }
                return now;
            }
            Some(header)
        })
    }

    fn proof(&self, method: &str, url: &Url, header: &HeaderValue) -> Option<HeaderValue> {
        let dpop = self.http.dpop.as_ref()?;
        let token = header.to_str().ok()?.strip_prefix("DPoP ")?;
        dpop.proof(method, url, Some(token))
            .map_err(|e| debug!("{}: {e}", self.label))
            .ok()
    }

    fn observe(&self, url: &Url, headers: &reqwest::header::HeaderMap) {
        if let Some(dpop) = &self.http.dpop {
            dpop.observe(url, headers);
        }
    }

    fn refused<'a>(
        &'a self,
        status: u16,
        challenge: Option<&'a str>,
        sent: Option<&'a HeaderValue>,
    ) -> AuthFuture<'a, Result<(), String>> {
        Box::pin(async move {
            // RFC 9449 §9: the server wants its nonce in the proof; it came with the refusal.
            if self.http.dpop.is_some() && challenge.is_some_and(dpop::wants_nonce) {
                return Ok(());
            }
            let _flight = self.flight.lock().await;
            let current = self.current().map(|c| c.0);
            if current.is_some() && current.as_ref() != sent {
                return Ok(()); // replaced while this request was out
            }
            let challenge = Challenge::parse(challenge.unwrap_or_default());
            let result = self
                .store
                .locked(self.answer_refusal(status, &challenge, sent))
                .await;
            match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) | Err(e) => Err(e.to_string()),
            }
        })
    }
}
