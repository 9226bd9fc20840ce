//! HTTPS for the stdio host: a certificate chain and key from PEM files, loaded again when
//! either file changes (cert-manager and similar tools renew them in place), so a renewal
//! needs no restart. A file that cannot be read or parsed after a change keeps the pair
//! loaded before (with a warning): a half-written renewal never takes the service down.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tracing::{info, warn};

/// The files are looked at again at most this often (at a handshake).
const CHECK_EVERY: Duration = Duration::from_secs(1);

type Stamp = Option<(SystemTime, u64)>;

/// The TLS acceptor serving `cert` and `key`; `Err` names the file that is wrong.
pub fn acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, String> {
    let resolver = ReloadingCert::new(cert, key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("setting up TLS: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[derive(Debug)]
struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    stamps: (Stamp, Stamp),
    checked: Instant,
    loaded: Arc<CertifiedKey>,
}

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| format!("reading the certificate chain {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate; hint: give the certificate chain (BEGIN CERTIFICATE) with --tls-cert",
            cert.display()
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("reading the private key {}: {e}", key.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&private)
        .map_err(|e| format!("the private key {} is not usable: {e}", key.display()))?;
    Ok(CertifiedKey::new(chain, signing))
}

impl ReloadingCert {
    fn new(cert: &Path, key: &Path) -> Result<ReloadingCert, String> {
        let stamps = (stamp(cert), stamp(key));
        let loaded = Arc::new(load(cert, key)?);
        Ok(ReloadingCert {
            cert: cert.to_owned(),
            key: key.to_owned(),
            state: Mutex::new(State {
                stamps,
                checked: Instant::now(),
                loaded,
            }),
        })
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checked.elapsed() >= CHECK_EVERY {
            state.checked = Instant::now();
            let now = (stamp(&self.cert), stamp(&self.key));
            if now != state.stamps {
                match load(&self.cert, &self.key) {
                    Ok(loaded) => {
                        info!("TLS certificate {} reloaded", self.cert.display());
                        state.loaded = Arc::new(loaded);
                        state.stamps = now;
                    }
                    Err(why) => warn!("{why}; still serving the certificate loaded before"),
                }
            }
        }
        Some(state.loaded.clone())
    }
}
