//! Signed JWTs (RFC 7515 compact serialization) with `ring`, for what mcpsm signs itself:
//! `private_key_jwt` client assertions (RFC 7523 §2.2) and DPoP proofs (RFC 9449).
//! `ring` already signs and hashes for mcpsm (PKCE); a JWT crate would add a dependency tree
//! for the few lines of base64url and JSON that signing takes. mcpsm never verifies JWTs: the
//! authorization server does.

use std::path::Path;

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use serde_json::{json, Value};

use super::flow::random_text;
use super::store::now;
use super::AuthError;

/// The signing algorithms mcpsm can use with a key file (RFC 7518 names).
pub const ALGORITHMS: &[&str] = &[
    "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
];

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A private key and the algorithm it signs with.
pub enum Signer {
    Ec(EcdsaKeyPair, &'static str),
    Rsa(
        RsaKeyPair,
        &'static str,
        &'static dyn signature::RsaEncoding,
    ),
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.alg())
    }
}

impl Signer {
    /// A PKCS#8 PEM file (`-----BEGIN PRIVATE KEY-----`), with `alg` (default: ES256 for an
    /// EC key, RS256 for an RSA key).
    pub fn from_file(path: &Path, alg: Option<&str>) -> Result<Signer, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            AuthError::Token(format!(
                "cannot read the private key file {}: {e}",
                path.display()
            ))
        })?;
        Signer::from_pem(&text, alg)
            .map_err(|e| AuthError::Token(format!("the private key file {}: {e}", path.display())))
    }

    pub fn from_pem(text: &str, alg: Option<&str>) -> Result<Signer, String> {
        let der = pem_body(text, "PRIVATE KEY").ok_or(
            "not a PKCS#8 PEM key (`-----BEGIN PRIVATE KEY-----`); convert one with `openssl pkcs8 -topk8 -nocrypt`",
        )?;
        Signer::from_pkcs8(&der, alg)
    }

    pub fn from_pkcs8(der: &[u8], alg: Option<&str>) -> Result<Signer, String> {
        let rng = SystemRandom::new();
        let ec = |alg: &'static str, scheme| {
            EcdsaKeyPair::from_pkcs8(scheme, der, &rng)
                .map(|key| Signer::Ec(key, alg))
                .map_err(|e| format!("not a usable {alg} key ({e})"))
        };
        let rsa = |alg: &'static str, encoding| {
            RsaKeyPair::from_pkcs8(der)
                .map(|key| Signer::Rsa(key, alg, encoding))
                .map_err(|e| format!("not a usable {alg} key ({e})"))
        };
        match alg {
            Some("ES256") => ec("ES256", &signature::ECDSA_P256_SHA256_FIXED_SIGNING),
            Some("ES384") => ec("ES384", &signature::ECDSA_P384_SHA384_FIXED_SIGNING),
            Some("RS256") => rsa("RS256", &signature::RSA_PKCS1_SHA256),
            Some("RS384") => rsa("RS384", &signature::RSA_PKCS1_SHA384),
            Some("RS512") => rsa("RS512", &signature::RSA_PKCS1_SHA512),
            Some("PS256") => rsa("PS256", &signature::RSA_PSS_SHA256),
            Some("PS384") => rsa("PS384", &signature::RSA_PSS_SHA384),
            Some("PS512") => rsa("PS512", &signature::RSA_PSS_SHA512),
            Some(other) => Err(format!(
                "signing algorithm `{other}` is not one of {}",
                ALGORITHMS.join(", ")
            )),
            None => ec("ES256", &signature::ECDSA_P256_SHA256_FIXED_SIGNING)
                .or_else(|_| ec("ES384", &signature::ECDSA_P384_SHA384_FIXED_SIGNING))
                .or_else(|_| rsa("RS256", &signature::RSA_PKCS1_SHA256))
                .map_err(|_| "neither an EC (P-256, P-384) nor an RSA key".to_owned()),
        }
    }

    pub fn alg(&self) -> &'static str {
        match self {
            Signer::Ec(_, alg) | Signer::Rsa(_, alg, _) => alg,
        }
    }

    /// The public key as a JWK (RFC 7517), for a DPoP proof's header. EC keys only.
    pub fn public_jwk(&self) -> Option<Value> {
        let Signer::Ec(key, alg) = self else {
            return None;
        };
        // An uncompressed point: 0x04 ‖ x ‖ y.
        let point = key.public_key().as_ref();
        let half = (point.len() - 1) / 2;
        let crv = if *alg == "ES384" { "P-384" } else { "P-256" };
        Some(json!({
            "kty": "EC",
            "crv": crv,
            "x": b64(&point[1..1 + half]),
            "y": b64(&point[1 + half..]),
        }))
    }

    /// `header.claims.signature`, `alg` added to the header.
    pub fn sign(&self, mut header: Value, claims: &Value) -> Result<String, AuthError> {
        header["alg"] = json!(self.alg());
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let failed = |_| AuthError::Token(format!("signing a {} JWT failed", self.alg()));
        let signature = match self {
            Signer::Ec(key, _) => key
                .sign(&rng, input.as_bytes())
                .map_err(failed)?
                .as_ref()
                .to_vec(),
            Signer::Rsa(key, _, encoding) => {
                let mut out = vec![0u8; key.public().modulus_len()];
                key.sign(*encoding, &rng, input.as_bytes(), &mut out)
                    .map_err(failed)?;
                out
            }
        };
        Ok(format!("{input}.{}", b64(&signature)))
    }

    /// A `private_key_jwt` client assertion (RFC 7523 §3): issued by and about the client,
    /// for the authorization server, valid five minutes, used once.
    pub fn client_assertion(&self, client_id: &str, audience: &str) -> Result<String, AuthError> {
        let iat = now();
        self.sign(
            json!({"typ": "JWT"}),
            &json!({
                "iss": client_id,
                "sub": client_id,
                "aud": audience,
                "iat": iat,
                "exp": iat + 300,
                "jti": random_text(16),
            }),
        )
    }
}

/// The DER inside the PEM block labelled `label`.
fn pem_body(text: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    let body: String = text[start..stop].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn es256_keys_sign_verifiable_jwts_and_publish_their_jwk() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("generate");
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref())
        );
        let signer = Signer::from_pem(&pem, None).expect("an ES256 key");
        assert_eq!(signer.alg(), "ES256");
        let jwt = signer
            .client_assertion("me", "https://as.example")
            .expect("sign");
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(parts[1])
                .expect("b64"),
        )
        .expect("json");
        assert_eq!(claims["iss"], "me");
        assert_eq!(claims["aud"], "https://as.example");
        let Signer::Ec(key, _) = &signer else {
            panic!("EC")
        };
        let public = signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            key.public_key().as_ref(),
        );
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[2])
            .expect("b64");
        public
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .expect("the signature verifies");
        let jwk = signer.public_jwk().expect("jwk");
        assert_eq!(jwk["crv"], "P-256");
        assert!(Signer::from_pem(&pem, Some("RS256")).is_err());
        assert!(Signer::from_pem("junk", None).is_err());
    }
}
