//! The manager's API token, and the per-daemon secrets derived from it.
//!
//! A stdio host that the manager runs answers only requests that carry its daemon's secret
//! (any local process could otherwise start server processes with plain POSTs). The secret
//! is HMAC-SHA256(token, daemon name): the manager hands it to the host in its environment,
//! and whoever may read `manager.token` (mcpsm's proxies, `doctor`) derives it without a
//! round trip; the host never sees the token itself, and a manager that adopts a running
//! host after a restart still knows its secret.

use std::io;
use std::path::Path;

use crate::config::{DaemonSpec, TransportKind};
use crate::paths::Paths;

/// The token in `manager.token`, made (0600, 32 hex characters) when there is none. Safe
/// against a concurrent first start: the file appears whole, once, and every caller reads
/// the same token.
pub fn load_or_create_token(paths: &Paths) -> io::Result<String> {
    use crate::platform::fs::{owner_only, restrict_to_owner};
    let path = paths.manager_token();
    if let Some(token) = read_token(&path) {
        return Ok(token);
    }
    let mut bytes = [0u8; 16];
    // The OS's generator (getrandom on Linux, ProcessPrng on Windows) through ring, which the
    // TLS stack already carries; /dev/urandom does not exist on Windows.
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| io::Error::other("the system's random generator failed"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let temp = path.with_extension(format!("token.{}.tmp", &token[..8]));
    let mut file = owner_only(
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true),
    )
    .open(&temp)?;
    // Windows: a protected DACL for the current user alone (Unix: 0600 at creation already).
    if let Err(e) = restrict_to_owner(&temp) {
        tracing::warn!("cannot restrict {} to its owner: {e}", temp.display());
    }
    io::Write::write_all(&mut file, token.as_bytes())?;
    file.sync_all()?;
    // A link, unlike a rename, never replaces a token another process made meanwhile.
    let linked = std::fs::hard_link(&temp, &path);
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => Ok(token),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_token(&path)
            .ok_or_else(|| io::Error::other(format!("{} is not a token", path.display()))),
        Err(e) => Err(e),
    }
}

/// The token, when `path` holds one.
pub fn read_token(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let token = text.trim();
    (token.len() >= 32).then(|| token.to_owned())
}

/// Daemon `name`'s secret.
pub fn host_secret(token: &str, name: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token.as_bytes());
    let tag = ring::hmac::sign(&key, format!("mcpsm stdio-host {name}").as_bytes());
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Gives a stdio daemon the manager runs its secret, so requests to it carry it.
pub fn authorize(spec: &mut DaemonSpec, token: &str) {
    if spec.transport == TransportKind::Stdio && spec.launch.is_some() {
        spec.host_secret = Some(host_secret(token, &spec.name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_differ_per_daemon_and_token_and_are_stable() {
        let token = "0123456789abcdef0123456789abcdef";
        let a = host_secret(token, "memory");
        assert_eq!(a.len(), 64);
        assert_eq!(a, host_secret(token, "memory"));
        assert_ne!(a, host_secret(token, "git"));
        assert_ne!(a, host_secret("fedcba9876543210fedcba9876543210", "memory"));
    }

    #[test]
    fn concurrent_first_starts_agree_on_one_token() {
        let dir = tempfile::tempdir().expect("temp dir");
        let paths = Paths::new(dir.path().to_path_buf());
        let tokens: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| load_or_create_token(&paths).expect("token")))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        assert!(tokens.iter().all(|t| *t == tokens[0]), "{tokens:?}");
    }
}
