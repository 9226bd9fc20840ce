//! The requests of the authorization code flow: client registration (pre-registered, client
//! ID metadata document, or dynamic registration per RFC 7591, in the MCP spec's order), the
//! authorization URL with PKCE S256, `state` and `resource` (RFC 8707), and the token
//! endpoint (code exchange and refresh) with the client authentication the server accepts.

use base64::Engine as _;
use ring::rand::SecureRandom as _;
use serde::Deserialize;
use serde_json::json;
use url::Url;

use super::discovery::Discovered;
use super::store::{now, Client, Secret, Tokens};
use super::{AuthError, Http, Settings};

/// Random URL-safe text of `bytes` random bytes.
pub fn random_text(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    // The system RNG does not fail on the platforms mcpsm runs on; a zero buffer would still
    // be a valid (if weak) verifier, so there is nothing better to do than go on.
    let _ = ring::rand::SystemRandom::new().fill(&mut buffer);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buffer)
}

/// The S256 code challenge of a verifier (RFC 7636 §4.2).
pub fn challenge_of(verifier: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// Chooses how to be known to the authorization server: a configured client id, else a
/// client ID metadata document (when the server supports them and one is configured), else a
/// client registered before with this server and redirect URI, else dynamic registration.
pub async fn client(
    http: &Http,
    found: &Discovered,
    settings: &Settings,
    stored: Option<&Client>,
    redirect_uri: &str,
) -> Result<Client, AuthError> {
    let metadata = &found.metadata;
    if let Some(client_id) = &settings.client_id {
        let secret = settings.client_secret.clone().map(Secret);
        return Ok(Client {
            issuer: found.issuer.clone(),
            client_id: client_id.clone(),
            auth_method: default_method(
                metadata.token_endpoint_auth_methods_supported.as_deref(),
                secret.is_some(),
            ),
            client_secret: secret,
            redirect_uri: None,
            kind: "pre-registered".into(),
        });
    }
    if let Some(document) = &settings.client_metadata_url {
        if metadata.client_id_metadata_document_supported {
            return Ok(Client {
                issuer: found.issuer.clone(),
                client_id: document.clone(),
                client_secret: None,
                auth_method: "none".into(),
                redirect_uri: None,
                kind: "metadata-document".into(),
            });
        }
    }
    if let Some(stored) = stored {
        if stored.issuer == found.issuer
            && stored.kind == "dynamic"
            && stored.redirect_uri.as_deref() == Some(redirect_uri)
        {
            return Ok(stored.clone());
        }
    }
    let Some(endpoint) = &metadata.registration_endpoint else {
        return Err(AuthError::Registration(format!(
            "the authorization server {} offers no dynamic client registration",
            found.issuer
        )));
    };
    let supported = metadata.token_endpoint_auth_methods_supported.as_deref();
    let requested = match supported {
        None => "none",
        Some(list) if list.iter().any(|m| m == "none") => "none",
        Some(list) if list.iter().any(|m| m == "client_secret_basic") => "client_secret_basic",
        Some(list) if list.iter().any(|m| m == "client_secret_post") => "client_secret_post",
        Some(_) => "none",
    };
    let body = json!({
        "client_name": "mcpsm",
        // SEP-837: a local program with a loopback redirect is a native application.
        "application_type": "native",
        "redirect_uris": [redirect_uri],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": requested,
    });
    #[derive(Deserialize)]
    struct Registered {
        client_id: String,
        client_secret: Option<String>,
        token_endpoint_auth_method: Option<String>,
    }
    let registered: Registered = http.post_json(endpoint, &body).await.map_err(|e| {
        AuthError::Registration(format!(
            "dynamic client registration at {endpoint} failed: {e}"
        ))
    })?;
    let secret = registered.client_secret.map(Secret);
    let auth_method = registered
        .token_endpoint_auth_method
        .unwrap_or_else(|| default_method(supported, secret.is_some()));
    Ok(Client {
        issuer: found.issuer.clone(),
        client_id: registered.client_id,
        client_secret: secret,
        auth_method,
        redirect_uri: Some(redirect_uri.to_owned()),
        kind: "dynamic".into(),
    })
}

/// The token endpoint authentication for a client with or without a secret: Basic unless
/// the server lists only `client_secret_post` (RFC 8414's default is Basic).
pub fn default_method(supported: Option<&[String]>, has_secret: bool) -> String {
    if !has_secret {
        return "none".into();
    }
    match supported {
        Some(list)
            if !list.iter().any(|m| m == "client_secret_basic")
                && list.iter().any(|m| m == "client_secret_post") =>
        {
            "client_secret_post".into()
        }
        _ => "client_secret_basic".into(),
    }
}

/// What the browser is sent to.
pub fn authorization_url(
    found: &Discovered,
    client: &Client,
    redirect_uri: &str,
    state: &str,
    challenge: &str,
    scope: Option<&str>,
) -> Result<Url, AuthError> {
    let endpoint = &found.metadata.authorization_endpoint;
    let mut url = Url::parse(endpoint).map_err(|e| {
        AuthError::Discovery(format!(
            "the authorization endpoint `{endpoint}` is not a URL ({e})"
        ))
    })?;
    {
        let mut query = url.query_pairs_mut();
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", &client.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("code_challenge", challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("state", state)
            .append_pair("resource", &found.resource);
        if let Some(scope) = scope {
            query.append_pair("scope", scope);
        }
    }
    Ok(url)
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    token_type: Option<String>,
    refresh_token: Option<String>,
    expires_in: Option<u64>,
    scope: Option<String>,
}

/// What a token endpoint granted.
pub struct Granted {
    pub access: Secret,
    pub refresh: Option<Secret>,
    pub expires_at: Option<u64>,
    pub scope: Option<String>,
    /// `Bearer`, or `DPoP` for a token bound to mcpsm's DPoP key.
    pub token_type: Option<String>,
}

/// `Authorization: Basic` for a client id and secret (RFC 6749 §2.3.1: each form-encoded).
pub fn basic_header(client_id: &str, secret: &str) -> String {
    let encode =
        |s: &str| -> String { url::form_urlencoded::byte_serialize(s.as_bytes()).collect() };
    let pair = format!("{}:{}", encode(client_id), encode(secret));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// A token endpoint request with the client's authentication.
pub async fn token_request(
    http: &Http,
    found_token_endpoint: &str,
    client: &Client,
    mut form: Vec<(&str, String)>,
) -> Result<Granted, AuthError> {
    let mut basic = None;
    match (client.auth_method.as_str(), &client.client_secret) {
        ("client_secret_basic", Some(secret)) => {
            basic = Some(basic_header(&client.client_id, &secret.0));
        }
        ("client_secret_post", Some(secret)) => {
            form.push(("client_id", client.client_id.clone()));
            form.push(("client_secret", secret.0.clone()));
        }
        _ if client.client_id.is_empty() => {}
        _ => form.push(("client_id", client.client_id.clone())),
    }
    let response: TokenResponse = http
        .post_form(found_token_endpoint, &form, basic.as_deref())
        .await?;
    Ok(Granted {
        access: Secret(response.access_token),
        refresh: response.refresh_token.map(Secret),
        expires_at: response.expires_in.map(|s| now() + s),
        scope: response.scope,
        token_type: response.token_type,
    })
}

/// Exchanges an authorization code for tokens.
#[allow(clippy::too_many_arguments)]
pub async fn exchange_code(
    http: &Http,
    found: &Discovered,
    client: &Client,
    code: String,
    redirect_uri: &str,
    verifier: String,
    requested_scope: Option<String>,
) -> Result<Tokens, AuthError> {
    let form = vec![
        ("grant_type", "authorization_code".to_owned()),
        ("code", code),
        ("redirect_uri", redirect_uri.to_owned()),
        ("code_verifier", verifier),
        ("resource", found.resource.clone()),
    ];
    let granted = token_request(http, &found.metadata.token_endpoint, client, form).await?;
    Ok(Tokens {
        access_token: granted.access,
        refresh_token: granted.refresh,
        expires_at: granted.expires_at,
        scope: granted.scope,
        token_type: granted.token_type,
        requested_scope,
        resource: found.resource.clone(),
        issuer: found.issuer.clone(),
        token_endpoint: found.metadata.token_endpoint.clone(),
        obtained_at: now(),
        refreshed_at: None,
    })
}

/// Trades the refresh token for new tokens (RFC 6749 §6); keeps the old refresh token when
/// the server sends none.
pub async fn refresh(http: &Http, client: &Client, tokens: &Tokens) -> Result<Tokens, AuthError> {
    let Some(refresh_token) = &tokens.refresh_token else {
        return Err(AuthError::Token("there is no refresh token".into()));
    };
    let form = vec![
        ("grant_type", "refresh_token".to_owned()),
        ("refresh_token", refresh_token.0.clone()),
        ("resource", tokens.resource.clone()),
    ];
    let granted = token_request(http, &tokens.token_endpoint, client, form).await?;
    Ok(Tokens {
        access_token: granted.access,
        refresh_token: granted.refresh.or_else(|| tokens.refresh_token.clone()),
        expires_at: granted.expires_at,
        scope: granted.scope.or_else(|| tokens.scope.clone()),
        token_type: granted.token_type.or_else(|| tokens.token_type.clone()),
        refreshed_at: Some(now()),
        ..tokens.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::challenge_of;

    #[test]
    fn s256_matches_rfc_7636_appendix_b() {
        assert_eq!(
            challenge_of("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
