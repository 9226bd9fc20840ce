//! The grants that need no browser, for servers whose clients are programs rather than people
//! (MCP authorization extensions):
//!
//! - `client-credentials` (OAuth 2.1 §4.2, SEP-1046): the client authenticates as itself, with
//!   a secret (`client_secret_basic`/`_post`) or a signed assertion (`private_key_jwt`,
//!   RFC 7523 §2.2, from `private-key-file`);
//! - `jwt-bearer` (RFC 7523 §2.1, SEP-1933 workload identity federation): a JWT the platform
//!   issues to the workload (a Kubernetes service account token, a cloud identity token…),
//!   read from `assertion-file` at each grant because such tokens rotate;
//! - `id-jag` (SEP-990 enterprise-managed authorization, "cross-app access"): the user's ID
//!   token from the enterprise identity provider (`id-token-file`) is exchanged there
//!   (RFC 8693) for an identity assertion authorization grant (ID-JAG) naming the MCP server's
//!   authorization server and resource, which that server trades for an access token
//!   (RFC 7523).
//!
//! And `dpop`: whatever the grant, tokens bound to a key mcpsm holds ([`super::dpop`]).
//! A failed grant is reported, never retried with another grant.

use std::path::PathBuf;

use serde::Deserialize;

use super::discovery::Discovered;
use super::flow;
use super::jwt::Signer;
use super::store::{now, Client, Secret, Tokens};
use super::{AuthError, Http, Settings};

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
const ID_JAG: &str = "urn:ietf:params:oauth:token-type:id-jag";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How tokens are obtained.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Grant {
    /// The user logs in in the browser (authorization code with PKCE).
    #[default]
    AuthorizationCode,
    ClientCredentials,
    JwtBearer,
    IdJag,
}

impl Grant {
    pub const NAMES: &'static str =
        "\"authorization-code\", \"client-credentials\", \"jwt-bearer\" or \"id-jag\"";

    pub fn parse(text: &str) -> Option<Grant> {
        Some(match text {
            "authorization-code" => Grant::AuthorizationCode,
            "client-credentials" => Grant::ClientCredentials,
            "jwt-bearer" => Grant::JwtBearer,
            "id-jag" => Grant::IdJag,
            _ => return None,
        })
    }
}

/// The keys of the grants beyond the authorization code flow (registry and `proxy --url`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantSettings {
    pub grant: Grant,
    /// `private_key_jwt`: a PKCS#8 PEM key registered for the client.
    pub private_key_file: Option<PathBuf>,
    /// Its algorithm (ES256, RS256, …); default from the key.
    pub signing_alg: Option<String>,
    /// `jwt-bearer`: the file holding the workload's JWT.
    pub assertion_file: Option<PathBuf>,
    /// `id-jag`: the file holding the user's ID token from the identity provider.
    pub id_token_file: Option<PathBuf>,
    /// `id-jag`: the identity provider's token endpoint.
    pub idp_token_endpoint: Option<String>,
    /// `id-jag`: mcpsm's client at the identity provider.
    pub idp_client_id: Option<String>,
    pub idp_client_secret: Option<String>,
    /// DPoP-bound tokens (RFC 9449).
    pub dpop: bool,
}

impl GrantSettings {
    /// What is missing or inconsistent, as a sentence naming the keys (`flag` turns a key
    /// name into how the user spells it: registry key or command-line flag).
    pub fn check(&self, client_id: bool, flag: impl Fn(&str) -> String) -> Result<(), String> {
        let need = |present: bool, key: &str, grant: &str| {
            if present {
                Ok(())
            } else {
                Err(format!("`grant = \"{grant}\"` needs {}", flag(key)))
            }
        };
        match self.grant {
            Grant::AuthorizationCode => {}
            Grant::ClientCredentials => need(client_id, "client-id", "client-credentials")?,
            Grant::JwtBearer => need(
                self.assertion_file.is_some(),
                "assertion-file",
                "jwt-bearer",
            )?,
            Grant::IdJag => {
                need(client_id, "client-id", "id-jag")?;
                need(self.id_token_file.is_some(), "id-token-file", "id-jag")?;
                need(
                    self.idp_token_endpoint.is_some(),
                    "idp-token-endpoint",
                    "id-jag",
                )?;
            }
        }
        if let Some(alg) = &self.signing_alg {
            if !super::jwt::ALGORITHMS.contains(&alg.as_str()) {
                return Err(format!(
                    "{} `{alg}` is not one of {}",
                    flag("signing-alg"),
                    super::jwt::ALGORITHMS.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// Tokens by the configured grant, when it is not the browser's; `None` for the
/// authorization code flow.
pub async fn obtain(
    http: &Http,
    found: &Discovered,
    settings: &Settings,
    scope: Option<String>,
) -> Result<Option<(Client, Tokens)>, AuthError> {
    let grant = &settings.grant;
    let mut form = match grant.grant {
        Grant::AuthorizationCode => return Ok(None),
        Grant::ClientCredentials => vec![("grant_type", "client_credentials".to_owned())],
        Grant::JwtBearer => {
            let path = grant
                .assertion_file
                .as_deref()
                .unwrap_or(std::path::Path::new(""));
            vec![
                ("grant_type", JWT_BEARER.to_owned()),
                ("assertion", read_token(path, "assertion-file")?),
            ]
        }
        Grant::IdJag => vec![
            ("grant_type", JWT_BEARER.to_owned()),
            (
                "assertion",
                id_jag(http, found, settings, scope.as_deref()).await?,
            ),
        ],
    };
    form.push(("resource", found.resource.clone()));
    if let Some(scope) = &scope {
        form.push(("scope", scope.clone()));
    }
    let client = client_of(found, settings)?;
    if client.auth_method == "private_key_jwt" {
        let path = grant
            .private_key_file
            .as_deref()
            .unwrap_or(std::path::Path::new(""));
        let signer = Signer::from_file(path, grant.signing_alg.as_deref())?;
        form.push(("client_assertion_type", ASSERTION_TYPE.to_owned()));
        form.push((
            "client_assertion",
            signer.client_assertion(&client.client_id, &audience(found))?,
        ));
    }
    let granted = flow::token_request(http, &found.metadata.token_endpoint, &client, form)
        .await
        .map_err(|e| AuthError::Token(format!("the {} grant failed: {e}", name(grant.grant))))?;
    let tokens = Tokens {
        access_token: granted.access,
        refresh_token: granted.refresh,
        expires_at: granted.expires_at,
        scope: granted.scope,
        requested_scope: scope,
        resource: found.resource.clone(),
        issuer: found.issuer.clone(),
        token_endpoint: found.metadata.token_endpoint.clone(),
        obtained_at: now(),
        refreshed_at: None,
        token_type: granted.token_type,
    };
    Ok(Some((client, tokens)))
}

fn name(grant: Grant) -> &'static str {
    match grant {
        Grant::AuthorizationCode => "authorization code",
        Grant::ClientCredentials => "client credentials",
        Grant::JwtBearer => "JWT bearer",
        Grant::IdJag => "ID-JAG (enterprise-managed authorization)",
    }
}

/// The authorization server as an audience: its issuer identifier.
fn audience(found: &Discovered) -> String {
    found
        .metadata
        .issuer
        .clone()
        .unwrap_or_else(|| found.issuer.clone())
}

/// The configured client and how it authenticates: a key file → `private_key_jwt`, a secret
/// → what the server supports (Basic by default), nothing → `none` (the client id in the form).
fn client_of(found: &Discovered, settings: &Settings) -> Result<Client, AuthError> {
    let client_id = match (&settings.client_id, settings.grant.grant) {
        (Some(id), _) => id.clone(),
        // A workload's identity is its assertion; the client id is the assertion's subject.
        (None, Grant::JwtBearer) => String::new(),
        (None, _) => {
            return Err(AuthError::Registration(
                "this grant needs a pre-registered client (client-id)".into(),
            ))
        }
    };
    let supported = found
        .metadata
        .token_endpoint_auth_methods_supported
        .as_deref();
    let secret = settings.client_secret.clone().map(Secret);
    let auth_method = if settings.grant.private_key_file.is_some() {
        "private_key_jwt".to_owned()
    } else {
        flow::default_method(supported, secret.is_some())
    };
    Ok(Client {
        issuer: found.issuer.clone(),
        client_id,
        client_secret: secret,
        auth_method,
        redirect_uri: None,
        kind: "pre-registered".into(),
    })
}

/// A token kept in a file (trimmed), read now: workload and ID tokens are replaced by their
/// issuers while mcpsm runs.
fn read_token(path: &std::path::Path, key: &str) -> Result<String, AuthError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AuthError::Token(format!("cannot read the {key} {}: {e}", path.display())))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(AuthError::Token(format!(
            "the {key} {} is empty",
            path.display()
        )));
    }
    Ok(token.to_owned())
}

/// SEP-990 step one: the ID token for an ID-JAG at the identity provider (RFC 8693).
async fn id_jag(
    http: &Http,
    found: &Discovered,
    settings: &Settings,
    scope: Option<&str>,
) -> Result<String, AuthError> {
    let grant = &settings.grant;
    let path = grant
        .id_token_file
        .as_deref()
        .unwrap_or(std::path::Path::new(""));
    let id_token = read_token(path, "id-token-file")?;
    let endpoint = grant.idp_token_endpoint.clone().unwrap_or_default();
    let mut form = vec![
        ("grant_type", TOKEN_EXCHANGE.to_owned()),
        ("requested_token_type", ID_JAG.to_owned()),
        ("subject_token", id_token),
        ("subject_token_type", ID_TOKEN.to_owned()),
        ("audience", audience(found)),
        ("resource", found.resource.clone()),
    ];
    if let Some(scope) = scope {
        form.push(("scope", scope.to_owned()));
    }
    let idp_client = Client {
        issuer: endpoint.clone(),
        client_id: grant.idp_client_id.clone().unwrap_or_default(),
        client_secret: grant.idp_client_secret.clone().map(Secret),
        auth_method: if grant.idp_client_secret.is_some() {
            "client_secret_basic".into()
        } else {
            "none".into()
        },
        redirect_uri: None,
        kind: "pre-registered".into(),
    };
    #[derive(Deserialize)]
    struct Exchanged {
        access_token: String,
        issued_token_type: Option<String>,
    }
    let body = http
        .post_form::<Exchanged>(
            &endpoint,
            &with_client(form, &idp_client),
            basic(&idp_client).as_deref(),
        )
        .await
        .map_err(|e| {
            AuthError::Token(format!(
                "exchanging the ID token at the identity provider failed: {e}"
            ))
        })?;
    if body
        .issued_token_type
        .as_deref()
        .is_some_and(|t| t != ID_JAG)
    {
        return Err(AuthError::Token(format!(
            "the identity provider {endpoint} issued a {} instead of an ID-JAG",
            body.issued_token_type.unwrap_or_default()
        )));
    }
    Ok(body.access_token)
}

fn with_client<'a>(mut form: Vec<(&'a str, String)>, client: &Client) -> Vec<(&'a str, String)> {
    if client.auth_method == "none" && !client.client_id.is_empty() {
        form.push(("client_id", client.client_id.clone()));
    }
    form
}

fn basic(client: &Client) -> Option<String> {
    let secret = client.client_secret.as_ref()?;
    Some(flow::basic_header(&client.client_id, &secret.0))
}
