//! Where to authorize: protected resource metadata (RFC 9728) names the authorization server,
//! whose metadata (RFC 8414, or OpenID Connect discovery) names its endpoints. Without
//! protected resource metadata (servers written for MCP 2025-03-26) the authorization server is
//! the MCP server's origin, with `/authorize`, `/token` and `/register` as the fallback.

use serde::Deserialize;
use url::Url;

use super::challenge::Challenge;
use super::{AuthError, Http};

/// Protected resource metadata (RFC 9728 §2), the parts mcpsm uses.
#[derive(Debug, Clone, Deserialize)]
struct ResourceMetadata {
    resource: Option<String>,
    #[serde(default)]
    authorization_servers: Vec<String>,
    scopes_supported: Option<Vec<String>>,
}

/// Authorization server metadata (RFC 8414 §2), the parts mcpsm uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ServerMetadata {
    pub issuer: Option<String>,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub registration_endpoint: Option<String>,
    pub scopes_supported: Option<Vec<String>>,
    pub token_endpoint_auth_methods_supported: Option<Vec<String>>,
    pub code_challenge_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    pub client_id_metadata_document_supported: bool,
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
}

/// Everything the flow needs to know about where to authorize.
#[derive(Debug, Clone)]
pub struct Discovered {
    /// The authorization server's identifier (from the resource metadata, else the origin).
    pub issuer: String,
    pub metadata: ServerMetadata,
    /// The `resource` parameter (RFC 8707): the resource metadata's `resource`, else the
    /// server URL.
    pub resource: String,
    pub resource_scopes: Option<Vec<String>>,
}

pub async fn discover(
    http: &Http,
    server: &Url,
    challenge: &Challenge,
) -> Result<Discovered, AuthError> {
    let prm = resource_metadata(http, server, challenge).await?;
    let Some(prm) = prm else {
        return legacy(http, server).await;
    };
    let resource = match &prm.resource {
        Some(resource) => {
            if !resource_matches(resource, server) {
                return Err(AuthError::Discovery(format!(
                    "the server's protected resource metadata names the resource {resource}, which is not {server}; mcpsm will not send credentials for it"
                )));
            }
            resource.clone()
        }
        None => without_fragment(server),
    };
    let issuer = prm.authorization_servers.first().cloned().ok_or_else(|| {
        AuthError::Discovery("its protected resource metadata names no authorization server".into())
    })?;
    let issuer_url = Url::parse(&issuer).map_err(|e| {
        AuthError::Discovery(format!(
            "the authorization server `{issuer}` is not a URL ({e})"
        ))
    })?;
    let metadata = server_metadata(http, &issuer_url).await?.ok_or_else(|| {
        AuthError::Discovery(format!(
            "no authorization server metadata found for {issuer} (tried RFC 8414 and OpenID Connect discovery)"
        ))
    })?;
    // RFC 8414 §3.3: metadata for another issuer must not be used.
    let stated = metadata.issuer.as_deref().unwrap_or_default();
    if stated.trim_end_matches('/') != issuer.trim_end_matches('/') {
        return Err(AuthError::Discovery(format!(
            "the authorization server metadata of {issuer} says its issuer is `{stated}`; mcpsm does not use metadata for another issuer"
        )));
    }
    check_pkce(&metadata, &issuer)?;
    Ok(Discovered {
        issuer,
        metadata,
        resource,
        resource_scopes: prm.scopes_supported,
    })
}

/// MCP 2025-03-26: no resource metadata; the authorization server is the server's origin.
async fn legacy(http: &Http, server: &Url) -> Result<Discovered, AuthError> {
    let origin = server.origin().ascii_serialization();
    let base = Url::parse(&origin).map_err(|e| AuthError::Discovery(e.to_string()))?;
    let found = http
        .get_json::<ServerMetadata>(&join(&base, "/.well-known/oauth-authorization-server"))
        .await?;
    let metadata = match found {
        Some(metadata) => {
            check_pkce(&metadata, &origin)?;
            metadata
        }
        None => ServerMetadata {
            authorization_endpoint: format!("{origin}/authorize"),
            token_endpoint: format!("{origin}/token"),
            registration_endpoint: Some(format!("{origin}/register")),
            ..ServerMetadata::default()
        },
    };
    Ok(Discovered {
        issuer: metadata.issuer.clone().unwrap_or(origin),
        metadata,
        resource: without_fragment(server),
        resource_scopes: None,
    })
}

fn check_pkce(metadata: &ServerMetadata, issuer: &str) -> Result<(), AuthError> {
    // The MCP spec: without S256 in the metadata, the server cannot protect the code.
    match &metadata.code_challenge_methods_supported {
        Some(methods) if methods.iter().any(|m| m == "S256") => Ok(()),
        _ => Err(AuthError::Discovery(format!(
            "the authorization server {issuer} does not advertise PKCE with S256 (code_challenge_methods_supported); MCP clients must not use it"
        ))),
    }
}

/// RFC 9728 §3: from the challenge's `resource_metadata`, else the path-based then the root
/// well-known location.
async fn resource_metadata(
    http: &Http,
    server: &Url,
    challenge: &Challenge,
) -> Result<Option<ResourceMetadata>, AuthError> {
    let mut candidates = Vec::new();
    if let Some(url) = challenge
        .resource_metadata()
        .and_then(|u| Url::parse(u).ok())
    {
        candidates.push(url);
    }
    let path = server.path().trim_end_matches('/');
    if !path.is_empty() {
        candidates.push(join(
            server,
            &format!("/.well-known/oauth-protected-resource{path}"),
        ));
    }
    candidates.push(join(server, "/.well-known/oauth-protected-resource"));
    for url in candidates {
        if let Some(found) = http.get_json::<ResourceMetadata>(&url).await? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// RFC 8414 §3.1 and OpenID Connect discovery, in the order the MCP spec gives.
async fn server_metadata(http: &Http, issuer: &Url) -> Result<Option<ServerMetadata>, AuthError> {
    let path = issuer.path().trim_end_matches('/');
    let candidates: Vec<String> = if path.is_empty() {
        vec![
            "/.well-known/oauth-authorization-server".into(),
            "/.well-known/openid-configuration".into(),
        ]
    } else {
        vec![
            format!("/.well-known/oauth-authorization-server{path}"),
            format!("/.well-known/openid-configuration{path}"),
            format!("{path}/.well-known/openid-configuration"),
        ]
    };
    for candidate in candidates {
        if let Some(found) = http
            .get_json::<ServerMetadata>(&join(issuer, &candidate))
            .await?
        {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

fn join(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    url.set_path(path);
    url.set_query(None);
    url.set_fragment(None);
    url
}

fn without_fragment(url: &Url) -> String {
    let mut url = url.clone();
    url.set_fragment(None);
    url.to_string()
}

/// The resource metadata's `resource` covers the server URL: same origin, and the server's
/// path within the resource's.
fn resource_matches(resource: &str, server: &Url) -> bool {
    let Ok(resource) = Url::parse(resource) else {
        return false;
    };
    if resource.origin() != server.origin() {
        return false;
    }
    let want = resource.path().trim_end_matches('/');
    let have = server.path().trim_end_matches('/');
    have == want || have.starts_with(&format!("{want}/")) || want.is_empty()
}

#[cfg(test)]
mod tests {
    use super::resource_matches;
    use url::Url;

    #[test]
    fn a_resource_covers_its_own_paths_only() {
        let server = Url::parse("http://localhost:3000/mcp").unwrap();
        assert!(resource_matches("http://localhost:3000/mcp", &server));
        assert!(resource_matches("http://localhost:3000/", &server));
        assert!(resource_matches("http://localhost:3000", &server));
        assert!(!resource_matches("https://evil.example.com/mcp", &server));
        assert!(!resource_matches("http://localhost:3000/other", &server));
    }
}
