//! Daemon log files: size rotation and tails.
//!
//! A daemon writes straight into `logs/NAME.log` (opened in append mode), so it keeps logging
//! when the manager is gone. Rotation therefore copies the file to `NAME.log.1` and truncates
//! it in place (a writer in append mode continues at the new end); a few lines written during
//! the copy may be lost, which is the usual copytruncate trade.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Rotate a log once it passes this size.
pub const MAX_LOG_BYTES: u64 = 10 * 1024 * 1024;

/// Copies `path` to `path.1` and truncates it, when it is larger than `max_bytes`.
pub fn rotate_if_large(path: &Path, max_bytes: u64) -> std::io::Result<bool> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(false);
    };
    if meta.len() <= max_bytes {
        return Ok(false);
    }
    let mut rotated = path.as_os_str().to_owned();
    rotated.push(".1");
    std::fs::copy(path, &rotated)?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(0)?;
    Ok(true)
}

/// The last `lines` lines of `path` (reading at most its last 64 KiB).
pub fn tail(path: &Path, lines: usize) -> Vec<String> {
    const WINDOW: u64 = 64 * 1024;
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(WINDOW);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut all: Vec<&str> = text.lines().collect();
    if start > 0 && !all.is_empty() {
        all.remove(0); // a partial first line
    }
    let skip = all.len().saturating_sub(lines);
    all[skip..].iter().map(|l| (*l).to_owned()).collect()
}

/// `tail` formatted for an error message: "last log lines (FILE):\n  …", or nothing.
pub fn tail_for_message(path: &Path, lines: usize) -> String {
    let tail = tail(path, lines);
    if tail.is_empty() {
        return format!("(its log {} is empty)", path.display());
    }
    format!("last lines of {}:\n  {}", path.display(), tail.join("\n  "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_returns_the_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.log");
        std::fs::write(&path, "1\n2\n3\n4\n").expect("write");
        assert_eq!(tail(&path, 2), ["3", "4"]);
        assert_eq!(tail(&path, 10).len(), 4);
        assert!(tail(&dir.path().join("missing.log"), 3).is_empty());
    }

    #[test]
    fn rotation_keeps_one_old_file_and_truncates_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.log");
        std::fs::write(&path, "x".repeat(100)).expect("write");
        assert!(!rotate_if_large(&path, 1000).expect("rotate"));
        assert!(rotate_if_large(&path, 10).expect("rotate"));
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), 0);
        assert_eq!(
            std::fs::read(dir.path().join("a.log.1"))
                .expect("old")
                .len(),
            100
        );
    }
}
