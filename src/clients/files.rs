//! Changing configuration files without ever leaving one broken or losing one.
//!
//! [`apply`] writes a set of changes in three steps, so that a failure changes nothing where it
//! can: (1) every new text goes to a temp file next to its target (an unwritable place fails
//! here, before any file is touched), (2) every old text is copied to a backup next to the file,
//! (3) the temp files are renamed over their targets, in order (readers see the old file or the
//! new one, never a mix). A symlinked file is written through its link; permissions are kept.
//!
//! Backups are named `FILE.mcpsm-backup-YYYYMMDDTHHMMSS` (UTC; `.2`, `.3`, … when several are
//! made in the same second) and are never deleted except by [`undo`]: it restores the newest
//! one byte for byte, keeps the replaced text as `FILE.mcpsm-undone-YYYYMMDDTHHMMSS`, and
//! removes the backup it used, so a second undo goes one change further back.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::Error;

const BACKUP_MARK: &str = ".mcpsm-backup-";
const UNDONE_MARK: &str = ".mcpsm-undone-";
/// Beside each backup: the SHA-256 of the text mcpsm wrote then, so `--undo` can tell whether
/// the file changed since.
const WROTE_MARK: &str = ".mcpsm-wrote-";

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `FILE.mcpsm-wrote-STAMP` for `FILE.mcpsm-backup-STAMP`.
fn wrote_record(backup: &Path) -> Option<PathBuf> {
    let name = backup.file_name()?.to_str()?;
    Some(backup.with_file_name(name.replacen(BACKUP_MARK, WROTE_MARK, 1)))
}

/// The UTC time in a backup's name, as `2026-12-04 20:14:18 UTC`.
pub fn backup_time(backup: &Path) -> Option<String> {
    let name = backup.file_name()?.to_str()?;
    let stamp = name.rsplit_once(BACKUP_MARK)?.1.get(..15)?;
    let (d, t) = stamp.split_once('T')?;
    Some(format!(
        "{}-{}-{} {}:{}:{} UTC",
        d.get(..4)?,
        d.get(4..6)?,
        d.get(6..8)?,
        t.get(..2)?,
        t.get(2..4)?,
        t.get(4..6)?
    ))
}

/// A file's new content.
#[derive(Debug, Clone)]
pub struct Change {
    pub path: PathBuf,
    /// The path as shown to the user (`~/.claude.json`).
    pub display: String,
    /// `None` when the file does not exist yet.
    pub before: Option<Vec<u8>>,
    pub after: Vec<u8>,
}

/// What to do with the text a change replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// A `FILE.mcpsm-backup-…` that `--undo` can restore.
    Backup,
    /// A `FILE.mcpsm-undone-…` that `--undo` ignores (the text an undo replaced).
    Undone,
}

/// A change made: the file and where its old text went.
#[derive(Debug, Clone)]
pub struct Written {
    pub path: PathBuf,
    pub kept: Option<PathBuf>,
}

impl Written {
    /// `wrote FILE (backup: FILE.mcpsm-backup-…)` or `created FILE`, one line.
    pub fn summary(&self, location: &super::Location) -> String {
        match &self.kept {
            Some(backup) => format!(
                "wrote {} (backup: {})\n",
                location.display_other(&self.path),
                location.display_other(backup)
            ),
            None => format!("created {}\n", location.display_other(&self.path)),
        }
    }
}

impl Change {
    pub fn is_noop(&self) -> bool {
        self.before.as_deref() == Some(self.after.as_slice())
    }

    /// A unified diff from the old text to the new one (`/dev/null` for a new file).
    pub fn diff(&self) -> String {
        let before = String::from_utf8_lossy(self.before.as_deref().unwrap_or_default());
        let after = String::from_utf8_lossy(&self.after);
        let old_label = if self.before.is_some() {
            self.display.as_str()
        } else {
            "/dev/null"
        };
        similar::TextDiff::from_lines(before.as_ref(), after.as_ref())
            .unified_diff()
            .context_radius(3)
            .header(old_label, &self.display)
            .to_string()
    }
}

/// Writes `changes` (no-ops skipped) as described in the module docs.
pub fn apply(changes: &[Change], keep: Keep) -> Result<Vec<Written>, Error> {
    let stamp = timestamp(SystemTime::now());
    let changes: Vec<&Change> = changes.iter().filter(|c| !c.is_noop()).collect();
    // 1. the new texts, in temp files next to their targets
    let mut prepared = Vec::new();
    for change in &changes {
        let target = real_target(&change.path);
        let temp = prepare(&target, &change.after).map_err(|cause| Error::Write {
            file: change.display.clone(),
            cause,
            hint: write_hint(&target),
        })?;
        prepared.push((target, temp));
    }
    // 2. the old texts, as backups
    let mut kept = Vec::new();
    for change in &changes {
        let Some(before) = &change.before else {
            kept.push(None);
            continue;
        };
        match keep_copy(&change.path, before, keep, &stamp) {
            Ok(path) => kept.push(Some(path)),
            Err(cause) => {
                for path in kept.iter().flatten() {
                    let _ = std::fs::remove_file(path);
                }
                return Err(Error::Write {
                    file: change.display.clone(),
                    cause,
                    hint: format!(
                        "mcpsm keeps a backup next to the file before changing it; {}",
                        write_hint(&change.path)
                    ),
                });
            }
        }
    }
    // 3. the renames
    let mut written = Vec::new();
    for ((change, (target, temp)), kept) in changes.iter().zip(prepared).zip(kept) {
        if let Err(e) = temp.persist(&target) {
            let done: Vec<String> = written
                .iter()
                .map(|w: &Written| w.path.display().to_string())
                .collect();
            return Err(Error::Replace {
                file: change.display.clone(),
                cause: e.error,
                hint: if done.is_empty() {
                    write_hint(&target)
                } else {
                    format!(
                        "{} (already written: {})",
                        write_hint(&target),
                        done.join(", ")
                    )
                },
            });
        }
        if let (Keep::Backup, Some(backup)) = (keep, &kept) {
            // Best effort: without it, undo restores without checking, as before.
            if let Some(record) = wrote_record(backup) {
                let _ = std::fs::write(record, sha256_hex(&change.after));
            }
        }
        written.push(Written {
            path: change.path.clone(),
            kept,
        });
    }
    Ok(written)
}

/// The file a path really names: through a symlink, so the link stays a link.
fn real_target(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

fn write_hint(path: &Path) -> String {
    let dir = path.parent().unwrap_or(Path::new("."));
    format!(
        "check that {} is a directory you can write to, with free space",
        dir.display()
    )
}

/// The new text in a temp file in the target's directory, with the target's permissions.
fn prepare(target: &Path, bytes: &[u8]) -> std::io::Result<tempfile::NamedTempFile> {
    let dir = target.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!(".{name}.mcpsm-");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix);
    if let Some(permissions) = crate::platform::fs::umask_default_permissions() {
        builder.permissions(permissions); // less the umask, for new files
    }
    let mut temp = builder.tempfile_in(dir)?;
    std::io::Write::write_all(&mut temp, bytes)?;
    if let Ok(metadata) = std::fs::metadata(target) {
        temp.as_file().set_permissions(metadata.permissions())?;
    }
    temp.as_file().sync_all()?;
    Ok(temp)
}

/// Copies `bytes` (the file's old text) to a new backup or undone file next to `path`.
fn keep_copy(path: &Path, bytes: &[u8], keep: Keep, stamp: &str) -> std::io::Result<PathBuf> {
    let mark = match keep {
        Keep::Backup => BACKUP_MARK,
        Keep::Undone => UNDONE_MARK,
    };
    let temp = prepare(path, bytes)?;
    let mut temp = Some(temp);
    for n in 1.. {
        let suffix = if n == 1 {
            String::new()
        } else {
            format!(".{n}")
        };
        let mut name = path.as_os_str().to_owned();
        name.push(format!("{mark}{stamp}{suffix}"));
        let candidate = PathBuf::from(name);
        let Some(file) = temp.take() else { break };
        match file.persist_noclobber(&candidate) {
            Ok(_) => return Ok(candidate),
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => temp = Some(e.file),
            Err(e) => return Err(e.error),
        }
    }
    Err(std::io::Error::other("no free backup name"))
}

/// The backups of `path`, oldest first.
pub fn backups(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{name}{BACKUP_MARK}");
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        if let Some(order) = backup_order(rest) {
            found.push((order, entry.path()));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, path)| path).collect())
}

/// `20250102T030405` → (that, 1); `20250102T030405.3` → (that, 3).
fn backup_order(suffix: &str) -> Option<(String, u32)> {
    let (stamp, n) = match suffix.split_once('.') {
        Some((stamp, n)) => (stamp, n.parse().ok()?),
        None => (suffix, 1),
    };
    let valid = stamp.len() == 15
        && stamp
            .char_indices()
            .all(|(i, c)| if i == 8 { c == 'T' } else { c.is_ascii_digit() });
    valid.then(|| (stamp.to_owned(), n))
}

/// What undoing the newest mcpsm change to `path` would do.
pub struct Undo {
    pub backup: PathBuf,
    pub change: Change,
}

/// Plans restoring the newest backup of `path`.
pub fn plan_undo(path: &Path, display: &str, force: bool) -> Result<Undo, Error> {
    let read_error = |file: &Path, cause| Error::Read {
        file: file.display().to_string(),
        cause,
    };
    let backup = backups(path)
        .map_err(|cause| read_error(path.parent().unwrap_or(Path::new(".")), cause))?
        .pop()
        .ok_or_else(|| Error::NoBackup {
            file: display.to_owned(),
        })?;
    let after = std::fs::read(&backup).map_err(|cause| read_error(&backup, cause))?;
    let before = match std::fs::read(path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(cause) => return Err(read_error(path, cause)),
    };
    let wrote = wrote_record(&backup).and_then(|r| std::fs::read_to_string(r).ok());
    if let (false, Some(wrote), Some(now)) = (force, wrote, &before) {
        if wrote.trim() != sha256_hex(now) {
            return Err(Error::ChangedSince {
                file: display.to_owned(),
                when: backup_time(&backup).unwrap_or_else(|| "its last change".to_owned()),
                backup: backup.display().to_string(),
            });
        }
    }
    Ok(Undo {
        backup,
        change: Change {
            path: path.to_path_buf(),
            display: display.to_owned(),
            before,
            after,
        },
    })
}

/// Restores the backup, keeps the replaced text as an undone file, removes the backup.
pub fn undo(undo: &Undo) -> Result<Option<Written>, Error> {
    let written = apply(std::slice::from_ref(&undo.change), Keep::Undone)?;
    if let Some(record) = wrote_record(&undo.backup) {
        let _ = std::fs::remove_file(record);
    }
    std::fs::remove_file(&undo.backup).map_err(|cause| Error::Replace {
        file: undo.backup.display().to_string(),
        cause,
        hint:
            "the file was restored; remove this backup by hand so the next --undo goes further back"
                .into(),
    })?;
    Ok(written.into_iter().next())
}

/// `YYYYMMDDTHHMMSS` in UTC.
pub fn timestamp(now: SystemTime) -> String {
    let seconds = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_calendar_times() {
        let at = |s| timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "19700101T000000");
        assert_eq!(at(951_782_400), "20000229T000000");
        assert_eq!(at(1_767_225_599), "20251231T235959");
    }

    #[test]
    fn backups_sort_by_time_then_sequence() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("mcp.json");
        for name in [
            "mcp.json.mcpsm-backup-20250101T000000.10",
            "mcp.json.mcpsm-backup-20250101T000000",
            "mcp.json.mcpsm-backup-20250101T000000.2",
            "mcp.json.mcpsm-backup-20241231T235959",
            "mcp.json.mcpsm-undone-20260101T000000",
            "mcp.json.mcpsm-backup-garbage",
            "other.json.mcpsm-backup-20260101T000000",
        ] {
            std::fs::write(dir.path().join(name), name).expect("write");
        }
        let names: Vec<String> = backups(&file)
            .expect("list")
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "mcp.json.mcpsm-backup-20241231T235959",
                "mcp.json.mcpsm-backup-20250101T000000",
                "mcp.json.mcpsm-backup-20250101T000000.2",
                "mcp.json.mcpsm-backup-20250101T000000.10",
            ]
        );
    }

    #[test]
    #[cfg(unix)] // Unix modes
    fn apply_keeps_a_backup_and_the_file_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("config.json");
        std::fs::write(&file, "old\n").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let change = Change {
            path: file.clone(),
            display: "config.json".into(),
            before: Some(b"old\n".to_vec()),
            after: b"new\n".to_vec(),
        };
        let written = apply(&[change.clone(), change], Keep::Backup).expect("apply");
        assert_eq!(std::fs::read(&file).expect("read"), b"new\n");
        let mode = std::fs::metadata(&file).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        // two backups in the same second get distinct names
        let kept: Vec<PathBuf> = written.iter().filter_map(|w| w.kept.clone()).collect();
        assert_eq!(kept.len(), 2);
        assert_ne!(kept[0], kept[1]);
        for backup in &kept {
            assert_eq!(std::fs::read(backup).expect("read backup"), b"old\n");
        }
    }

    #[test]
    fn undo_restores_the_newest_backup_and_consumes_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("settings.json");
        std::fs::write(&file, "current").expect("write");
        std::fs::write(
            dir.path()
                .join("settings.json.mcpsm-backup-20250101T000000"),
            "one",
        )
        .expect("write");
        std::fs::write(
            dir.path()
                .join("settings.json.mcpsm-backup-20250102T000000"),
            "two",
        )
        .expect("write");
        let plan = plan_undo(&file, "settings.json", false).expect("plan");
        assert!(plan
            .backup
            .ends_with("settings.json.mcpsm-backup-20250102T000000"));
        let written = undo(&plan).expect("undo").expect("written");
        assert_eq!(std::fs::read(&file).expect("read"), b"two");
        let undone = written.kept.expect("the replaced text is kept");
        assert_eq!(std::fs::read(undone).expect("read"), b"current");
        let plan = plan_undo(&file, "settings.json", false).expect("plan again");
        assert!(plan
            .backup
            .ends_with("settings.json.mcpsm-backup-20250101T000000"));
    }

    #[test]
    fn a_new_file_diffs_against_dev_null() {
        let change = Change {
            path: "x.json".into(),
            display: "x.json".into(),
            before: None,
            after: b"{}\n".to_vec(),
        };
        let diff = change.diff();
        assert!(diff.starts_with("--- /dev/null\n+++ x.json\n"), "{diff}");
        assert!(diff.contains("+{}"), "{diff}");
    }
}
