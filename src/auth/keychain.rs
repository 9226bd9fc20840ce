//! Secrets in the OS keychain (macOS Keychain, Windows Credential Manager, the Secret
//! Service on Linux) through the `keyring` crate, and the choice between it and the 0600 file
//! ([`backend`]): automatic, overridable with `MCPSM_TOKEN_STORE=file|keychain|auto`. Only
//! [`super::store`] uses this module; everything else sees a [`super::store::Store`].

use std::sync::OnceLock;
use std::time::Duration;

/// The environment variable that overrides the choice of token store.
pub const TOKEN_STORE_ENV: &str = "MCPSM_TOKEN_STORE";
const SERVICE: &str = "mcpsm";
const FILE: &str = "a 0600 file per server in MCPSM_HOME/oauth/";

/// Where secrets are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    File,
    Keychain,
}

/// The store in use in this process and why (asked once: a keychain probe can take a moment).
pub fn backend() -> &'static (Backend, String) {
    static CHOSEN: OnceLock<(Backend, String)> = OnceLock::new();
    CHOSEN.get_or_init(|| {
        let wanted = std::env::var(TOKEN_STORE_ENV).unwrap_or_default();
        choose(&wanted, available)
    })
}

/// The choice for `wanted` (`file`, `keychain`, `auto` or empty), given whether a keychain
/// answers.
pub fn choose(wanted: &str, available: impl FnOnce() -> Result<(), String>) -> (Backend, String) {
    match wanted.trim() {
        "file" => (Backend::File, format!("{FILE} ({TOKEN_STORE_ENV}=file)")),
        wanted => {
            let asked = wanted == "keychain";
            let unknown = !matches!(wanted, "" | "auto" | "keychain");
            let note = if unknown {
                format!(" ({TOKEN_STORE_ENV}=`{wanted}` is not file, keychain or auto)")
            } else {
                String::new()
            };
            match available() {
                Ok(()) => (Backend::Keychain, format!("the OS keychain{note}")),
                Err(why) if asked => (
                    Backend::File,
                    format!("{FILE} ({TOKEN_STORE_ENV}=keychain, but there is none: {why})"),
                ),
                Err(why) => (
                    Backend::File,
                    format!("{FILE} (no OS keychain: {why}){note}"),
                ),
            }
        }
    }
}

/// Whether the platform's keychain answers (within two seconds: a Secret Service that has
/// to be activated must not hold up a session).
fn available() -> Result<(), String> {
    crate::platform::keychain_reachable()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let result = keyring::Entry::new(SERVICE, "probe")
            .and_then(|entry| entry.get_password())
            .map(|_| ());
        let _ = tx.send(match result {
            Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
            Err(e) => Err(e.to_string()),
        });
    });
    rx.recv_timeout(Duration::from_secs(2))
        .unwrap_or_else(|_| Err("it did not answer within 2 s".into()))
}

fn entry(account: &str) -> Result<keyring::Entry, String> {
    keyring::Entry::new(SERVICE, account).map_err(|e| e.to_string())
}

pub fn get(account: &str) -> Result<Option<String>, String> {
    match entry(account)?.get_password() {
        Ok(secret) => Ok(Some(secret)),
        Err(keyring::Error::NoEntry) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

pub fn set(account: &str, secret: &str) -> Result<(), String> {
    entry(account)?
        .set_password(secret)
        .map_err(|e| e.to_string())
}

pub fn delete(account: &str) -> Result<(), String> {
    match entry(account)?.delete_credential() {
        Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_store_is_chosen_automatically_with_an_override() {
        let up = || Ok(());
        let down = || Err("no Secret Service".to_owned());
        assert_eq!(choose("", up).0, Backend::Keychain);
        assert_eq!(choose("auto", up).0, Backend::Keychain);
        assert_eq!(choose("", down).0, Backend::File);
        assert!(choose("", down).1.contains("no Secret Service"));
        assert_eq!(choose("file", up).0, Backend::File);
        let (backend, why) = choose("keychain", down);
        assert_eq!(backend, Backend::File);
        assert!(why.contains("keychain, but there is none"), "{why}");
        let (backend, why) = choose("disk", up);
        assert_eq!(backend, Backend::Keychain);
        assert!(why.contains("not file, keychain or auto"), "{why}");
    }
}
