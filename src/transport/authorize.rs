//! The transport's whole part in authorization: attach the `Authorization` header an
//! [`Authorizer`] supplies, and when the daemon refuses a request (401, or 403 with
//! `insufficient_scope`), tell the authorizer and send the request again once it has a new
//! token. How tokens are obtained, stored and refreshed is the authorizer's business
//! (`crate::auth`); the transport never sees more than the header value.

use std::future::Future;
use std::pin::Pin;

use reqwest::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use tracing::warn;

use super::http::SendError;
use super::Shared;

/// How often one message is sent again after a refusal: a first authorization, then one
/// scope step-up. More would loop against a server that will never accept.
const MAX_AUTH_RETRIES: u32 = 2;

pub type AuthFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Supplies the `Authorization` header of an upstream and reacts when it is refused.
pub trait Authorizer: Send + Sync {
    /// The header to send now (`None`: no credentials yet). May refresh a token about to
    /// expire first.
    fn authorization(&self) -> AuthFuture<'_, Option<HeaderValue>>;

    /// The `DPoP` proof (RFC 9449) to send with `header` on `method url`, when the token is
    /// bound to a key; a fresh one for every request.
    fn proof(&self, _method: &str, _url: &url::Url, _header: &HeaderValue) -> Option<HeaderValue> {
        None
    }

    /// Sees the headers of every answer (a server's `DPoP-Nonce`).
    fn observe(&self, _url: &url::Url, _headers: &reqwest::header::HeaderMap) {}

    /// The daemon answered `status` (401 or 403) with the challenge `challenge` (its
    /// `WWW-Authenticate`) to a request that carried `sent`. `Ok` when a new attempt may
    /// succeed (new credentials are in place); `Err` says why not.
    fn refused<'a>(
        &'a self,
        status: u16,
        challenge: Option<&'a str>,
        sent: Option<&'a HeaderValue>,
    ) -> AuthFuture<'a, Result<(), String>>;
}

impl Shared {
    /// Sends `request`: through the [`http::Lean`](super::http::Lean) client when the daemon
    /// is at a loopback `http://` URL, else with reqwest's `client`.
    pub(crate) async fn execute(
        &self,
        client: reqwest::Client,
        request: reqwest::Request,
    ) -> Result<reqwest::Response, SendError> {
        match &self.lean {
            Some(lean) if lean.takes(&request) => Ok(lean.execute(request).await?),
            _ => Ok(client.execute(request).await?),
        }
    }

    /// Sends the request `make` builds, with the authorizer's header when there is one, and
    /// again (rebuilt) after a refusal the authorizer could answer.
    pub(crate) async fn send_authorized(
        &self,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, SendError> {
        let Some(authorizer) = &self.hooks.authorizer else {
            let (client, request) = make().build_split();
            return self.execute(client, request?).await;
        };
        let mut retries = 0;
        let mut nonce_retried = false;
        loop {
            let header = authorizer.authorization().await;
            let (client, request) = make().build_split();
            let mut request = request?;
            if let Some(value) = &header {
                request.headers_mut().insert(AUTHORIZATION, value.clone());
                if let Some(proof) =
                    authorizer.proof(request.method().as_str(), request.url(), value)
                {
                    request.headers_mut().insert("dpop", proof);
                }
            }
            let url = request.url().clone();
            let response = self.execute(client, request).await?;
            authorizer.observe(&url, response.headers());
            let status = response.status().as_u16();
            let challenge = response
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let refused = match status {
                401 => true,
                403 => challenge
                    .as_deref()
                    .is_some_and(|c| c.contains("insufficient_scope")),
                _ => false,
            };
            // A server's DPoP nonce (RFC 9449 §9) costs one more attempt, not a retry.
            let nonce = challenge
                .as_deref()
                .is_some_and(|c| c.contains("use_dpop_nonce"));
            if nonce && !nonce_retried && header.is_some() {
                nonce_retried = true;
            } else if !refused || retries >= MAX_AUTH_RETRIES {
                return Ok(response);
            } else {
                retries += 1;
            }
            match authorizer
                .refused(status, challenge.as_deref(), header.as_ref())
                .await
            {
                Ok(()) => continue,
                Err(why) => {
                    warn!("{}: authorization failed: {why}", self.options.label);
                    return Ok(response);
                }
            }
        }
    }
}
