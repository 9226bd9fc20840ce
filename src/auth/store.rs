//! Tokens at rest: one JSON file per server under `MCPSM_HOME/oauth/`, mode 0600 in a 0700
//! directory, written atomically, and a lock file beside it so that concurrent processes
//! for the same server run one authorization (or one refresh) between them. Where there is
//! an OS keychain ([`super::keychain`]), the secrets (access and refresh token, client
//! secret) live there and the file keeps only what is not secret; the lock stays the same.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{keychain, AuthError};
use crate::paths::create_private_dir;

/// A secret string: never printed, not even by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// How mcpsm is known to one authorization server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Client {
    /// The authorization server this client belongs to (never used at another).
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    /// `none`, `client_secret_basic`, `client_secret_post` or `private_key_jwt`.
    pub auth_method: String,
    /// The redirect URI it was registered with (dynamic registration only).
    pub redirect_uri: Option<String>,
    /// How it came to be: `pre-registered`, `metadata-document` or `dynamic`.
    pub kind: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tokens {
    pub access_token: Secret,
    pub refresh_token: Option<Secret>,
    /// Seconds since the epoch.
    pub expires_at: Option<u64>,
    /// What the authorization server said it granted, if it said.
    pub scope: Option<String>,
    /// What mcpsm asked for.
    pub requested_scope: Option<String>,
    /// The `resource` the tokens were issued for.
    pub resource: String,
    pub issuer: String,
    /// Where to refresh them.
    pub token_endpoint: String,
    pub obtained_at: u64,
    pub refreshed_at: Option<u64>,
    /// `DPoP` for a token bound to mcpsm's DPoP key (RFC 9449); else a bearer token.
    #[serde(default)]
    pub token_type: Option<String>,
}

/// Everything stored for one server.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Record {
    pub server: String,
    pub client: Option<Client>,
    pub tokens: Option<Tokens>,
    /// The keychain account holding this record's secrets (absent: they are in the file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keychain: Option<String>,
}

/// The secrets of a record, as kept in the keychain.
#[derive(Default, Serialize, Deserialize)]
struct Secrets {
    access_token: Option<Secret>,
    refresh_token: Option<Secret>,
    client_secret: Option<Secret>,
}

impl Record {
    /// The record without its secrets, and the secrets.
    fn split(&self) -> (Record, Secrets) {
        let mut bare = self.clone();
        let mut secrets = Secrets::default();
        if let Some(tokens) = &mut bare.tokens {
            secrets.access_token = Some(std::mem::replace(
                &mut tokens.access_token,
                Secret(String::new()),
            ));
            secrets.refresh_token = tokens.refresh_token.replace(Secret(String::new()));
        }
        if let Some(client) = &mut bare.client {
            secrets.client_secret = client.client_secret.replace(Secret(String::new()));
        }
        (bare, secrets)
    }

    fn fill(&mut self, secrets: Secrets) {
        if let Some(tokens) = &mut self.tokens {
            tokens.access_token = secrets.access_token.unwrap_or(Secret(String::new()));
            tokens.refresh_token = tokens.refresh_token.take().and(secrets.refresh_token);
        }
        if let Some(client) = &mut self.client {
            client.client_secret = client.client_secret.take().and(secrets.client_secret);
        }
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// The store of one server.
#[derive(Debug, Clone)]
pub struct Store {
    file: PathBuf,
    lock: PathBuf,
}

/// The directory of all stored authorizations.
pub fn dir(home: &Path) -> PathBuf {
    home.join("oauth")
}

impl Store {
    /// The store for `key` (a daemon name, or a URL for `proxy --url`).
    pub fn new(home: &Path, key: &str) -> Store {
        let dir = dir(home);
        let name = file_stem(key);
        Store {
            file: dir.join(format!("{name}.json")),
            lock: dir.join(format!("{name}.lock")),
        }
    }

    pub fn path(&self) -> &Path {
        &self.file
    }

    /// The keychain account of this store: unique per home and key.
    fn account(&self) -> String {
        file_stem(&self.file.display().to_string())
    }

    /// Where the secrets are kept, for `status` and `doctor`.
    pub fn location(&self) -> String {
        match self.load_file().keychain {
            Some(_) => "in the OS keychain".into(),
            None => format!("in {}", self.file.display()),
        }
    }

    fn load_file(&self) -> Record {
        std::fs::read(&self.file)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    pub fn load(&self) -> Record {
        let mut record = self.load_file();
        let Some(account) = record.keychain.take() else {
            return record;
        };
        let secrets = keychain::get(&account)
            .map(|found| found.and_then(|text| serde_json::from_str::<Secrets>(&text).ok()));
        match secrets {
            Ok(Some(secrets)) => record.fill(secrets),
            // Without its secrets the record is of no use: not logged in.
            found => {
                if let Err(e) = found {
                    tracing::warn!(
                        "the OS keychain did not give the tokens of {}: {e}",
                        self.file.display()
                    );
                }
                record.tokens = None;
                record.client = None;
            }
        }
        record
    }

    pub fn save(&self, record: &Record) -> Result<(), AuthError> {
        let mut record = record.clone();
        record.keychain = None;
        if keychain::backend().0 == keychain::Backend::Keychain {
            let (bare, secrets) = record.split();
            let text =
                serde_json::to_string(&secrets).map_err(|e| AuthError::Store(e.to_string()))?;
            let account = self.account();
            match keychain::set(&account, &text) {
                Ok(()) => {
                    record = Record {
                        keychain: Some(account),
                        ..bare
                    };
                }
                Err(e) => tracing::warn!(
                    "the OS keychain refused the tokens ({e}); keeping them in {}",
                    self.file.display()
                ),
            }
        }
        self.save_file(&record)
    }

    fn save_file(&self, record: &Record) -> Result<(), AuthError> {
        use crate::platform::fs::{owner_only, restrict_to_owner};
        let dir = self.file.parent().unwrap_or(Path::new("."));
        create_private_dir(dir).map_err(|e| store_error(dir, &e))?;
        let bytes =
            serde_json::to_vec_pretty(record).map_err(|e| AuthError::Store(e.to_string()))?;
        let temp = self
            .file
            .with_extension(format!("json.{}.tmp", std::process::id()));
        let mut file = owner_only(
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true),
        )
        .open(&temp)
        .map_err(|e| store_error(&temp, &e))?;
        // Windows: a protected DACL for the current user alone (Unix: 0600 at creation).
        if let Err(e) = restrict_to_owner(&temp) {
            tracing::warn!("cannot restrict {} to its owner: {e}", temp.display());
        }
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| store_error(&temp, &e))?;
        std::fs::rename(&temp, &self.file).map_err(|e| store_error(&self.file, &e))
    }

    pub fn remove(&self) -> Result<bool, AuthError> {
        if let Some(account) = self.load_file().keychain {
            keychain::delete(&account).map_err(AuthError::Store)?;
        }
        match std::fs::remove_file(&self.file) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(store_error(&self.file, &e)),
        }
    }

    /// Waits for the store's lock (other processes may be authorizing) and holds it until
    /// the closure's future ends.
    pub async fn locked<T>(
        &self,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, AuthError> {
        let dir = self.lock.parent().unwrap_or(Path::new("."));
        create_private_dir(dir).map_err(|e| store_error(dir, &e))?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)
            .map_err(|e| store_error(&self.lock, &e))?;
        let mut lock = fd_lock::RwLock::new(file);
        // A try-lock loop keeps the runtime free while another process logs in.
        let _guard = loop {
            match lock.try_write() {
                Ok(guard) => break guard,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(store_error(&self.lock, &e)),
            }
        };
        Ok(work.await)
    }
}

fn store_error(path: &Path, e: &std::io::Error) -> AuthError {
    AuthError::Store(format!("{}: {e}", path.display()))
}

/// A file name for a key: readable where it can be, unique always.
fn file_stem(key: &str) -> String {
    let readable: String = key
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect();
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let hash: String = digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{readable}-{hash}")
}

#[cfg(all(test, unix))] // Unix modes
mod tests {
    use super::*;

    #[test]
    fn the_token_file_is_private_and_secrets_do_not_print() {
        use std::os::unix::fs::PermissionsExt;
        let home = tempfile::tempdir().unwrap();
        let store = Store::new(home.path(), "http://localhost:3000/mcp");
        let mut record = split_tests::sample();
        record.server = "http://localhost:3000/mcp".into();
        if let Some(tokens) = &mut record.tokens {
            tokens.access_token = Secret("very-secret".into());
        }
        store.save_file(&record).unwrap();
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!format!("{record:?}").contains("very-secret"));
        assert_eq!(
            store.load().tokens.unwrap().access_token,
            Secret("very-secret".into())
        );
    }
}

#[cfg(test)]
pub(super) mod split_tests {
    use super::*;

    pub fn sample() -> Record {
        Record {
            server: "s".into(),
            client: Some(Client {
                issuer: "i".into(),
                client_id: "id".into(),
                client_secret: Some(Secret("client-secret".into())),
                auth_method: "client_secret_basic".into(),
                redirect_uri: None,
                kind: "pre-registered".into(),
            }),
            tokens: Some(Tokens {
                access_token: Secret("access".into()),
                refresh_token: Some(Secret("refresh".into())),
                expires_at: Some(1),
                scope: None,
                requested_scope: None,
                resource: "r".into(),
                issuer: "i".into(),
                token_endpoint: "t".into(),
                obtained_at: 0,
                refreshed_at: None,
                token_type: None,
            }),
            keychain: None,
        }
    }

    #[test]
    fn a_record_in_the_keychain_keeps_no_secret_in_its_file() {
        let record = sample();
        let (mut bare, secrets) = record.split();
        let file = serde_json::to_string(&bare).unwrap();
        for secret in ["client-secret", "access", "refresh"] {
            assert!(!file.contains(&format!("\"{secret}\"")), "{file}");
        }
        bare.fill(secrets);
        let tokens = bare.tokens.unwrap();
        assert_eq!(tokens.access_token, Secret("access".into()));
        assert_eq!(tokens.refresh_token, Some(Secret("refresh".into())));
        assert_eq!(
            bare.client.unwrap().client_secret,
            Some(Secret("client-secret".into()))
        );
    }
}
