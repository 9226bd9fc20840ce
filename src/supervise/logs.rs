//! Log files: opening them safely, size rotation as they are written, and tails.
//!
//! A daemon's stdout and stderr go through a pipe to `mcpsm log-writer` ([`super::log_writer`]),
//! which appends to `logs/NAME.log` and rotates it as it writes: past [`MAX_LOG_BYTES`] the
//! file becomes `NAME.log.1` (the older ones shift to `.2`, …) and a new one is started, so a
//! daemon never has more than `MAX_LOG_BYTES × (1 + ROTATED_LOGS)` on disk ([`LOG_CAP_BYTES`]),
//! however fast it writes and whether or not a manager runs.
//!
//! Every line is stamped with the time it was written, in UTC to the millisecond
//! (`2026-12-04T19:06:08.123Z `, [`Stamper`]), and the manager adds a line of its own for each
//! start, stop and restart with the reason ([`append_event`]); `mcpsm logs --since` reads the
//! stamps back ([`lines_since`]).
//!
//! Log files are opened without following symbolic links (a link is refused with an error that
//! names it) and are made mode 0600 whatever the umask: they may hold secrets.

use crate::platform::fs as platform_fs;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A log file is rotated once it reaches this size.
pub const MAX_LOG_BYTES: u64 = 10 * 1024 * 1024;
/// Rotated files kept next to the current one (`NAME.log.1` … `NAME.log.N`).
pub const ROTATED_LOGS: u32 = 2;
/// The most one daemon's logs take on disk.
pub const LOG_CAP_BYTES: u64 = MAX_LOG_BYTES * (1 + ROTATED_LOGS as u64);

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{} is a symbolic link; mcpsm does not write or read logs through links\nhint: remove the link (`rm {}`); mcpsm creates a regular file in its place", path.display(), path.display())]
    Link { path: PathBuf },
    #[error("{} is not a regular file\nhint: remove it; mcpsm creates a regular file in its place", path.display())]
    NotAFile { path: PathBuf },
    #[error("cannot open the log file {}: {cause}\nhint: check that {} is writable by this user", path.display(), path.parent().unwrap_or(path).display())]
    Open { path: PathBuf, cause: io::Error },
}

/// Opens `path` for appending, creating it 0600; refuses a symbolic link or a non-file.
pub fn open_log(path: &Path) -> Result<File, LogError> {
    let file = platform_fs::no_follow(platform_fs::owner_only(
        std::fs::OpenOptions::new().create(true).append(true),
    ))
    .open(path)
    .map_err(|cause| opening_failed(path, cause))?;
    let meta = regular_file(path, &file)?;
    // The umask may have made it anything narrower, or someone else wider.
    if platform_fs::mode(&meta).is_some_and(|mode| mode != 0o600) {
        platform_fs::restrict_open_file_to_owner(&file)
            .map_err(|cause| opening_failed(path, cause))?;
    }
    Ok(file)
}

/// Opens `path` for reading without following a link.
pub fn open_log_for_reading(path: &Path) -> Result<File, LogError> {
    let file = platform_fs::no_follow(std::fs::OpenOptions::new().read(true))
        .open(path)
        .map_err(|cause| opening_failed(path, cause))?;
    regular_file(path, &file)?;
    Ok(file)
}

fn opening_failed(path: &Path, cause: io::Error) -> LogError {
    if platform_fs::is_link_refused(&cause) {
        LogError::Link {
            path: path.to_path_buf(),
        }
    } else {
        LogError::Open {
            path: path.to_path_buf(),
            cause,
        }
    }
}

/// The metadata of `file` (open on `path`), which must be a regular file.
fn regular_file(path: &Path, file: &File) -> Result<std::fs::Metadata, LogError> {
    let meta = file
        .metadata()
        .map_err(|cause| opening_failed(path, cause))?;
    if !meta.is_file() {
        return Err(LogError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    Ok(meta)
}

/// `path.N`.
fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Shifts `path.1` … to `path.2` …, dropping the oldest beyond `keep`, and renames `path` to
/// `path.1`. Renames never follow links, so a planted link is moved, not written through.
pub fn rotate(path: &Path, keep: u32) -> io::Result<()> {
    if keep == 0 {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    for n in (1..keep).rev() {
        match std::fs::rename(numbered(path, n), numbered(path, n + 1)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    std::fs::rename(path, numbered(path, 1))
}

/// Rotates `path` when it is larger than `max_bytes` (the detached manager's own log, at
/// start).
pub fn rotate_if_large(path: &Path, max_bytes: u64) -> io::Result<bool> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(false);
    };
    if meta.len() <= max_bytes {
        return Ok(false);
    }
    rotate(path, ROTATED_LOGS)?;
    Ok(true)
}

/// A log file that rotates itself as it is written. If another writer rotated or removed
/// the file, the next write goes to the file now at `path`.
pub struct RotatingLog {
    path: PathBuf,
    file: Option<File>,
    max_bytes: u64,
    keep: u32,
    /// The last reopening error, reported once.
    failed: Option<String>,
}

impl RotatingLog {
    /// Writes to `file`, already open on `path`.
    pub fn new(path: PathBuf, file: File, max_bytes: u64, keep: u32) -> RotatingLog {
        RotatingLog {
            path,
            file: Some(file),
            max_bytes: max_bytes.max(1),
            keep,
            failed: None,
        }
    }

    /// The file at `path` if it is still the one open, else a newly opened one.
    fn current(&mut self) -> Option<&mut File> {
        let still_there = self
            .file
            .as_ref()
            .is_some_and(|file| platform_fs::is_same_file(file, &self.path));
        if !still_there {
            match open_log(&self.path) {
                Ok(file) => {
                    self.file = Some(file);
                    self.failed = None;
                }
                Err(e) => {
                    // Nowhere safe to write: drop output rather than write through a link.
                    if self.failed.is_none() {
                        eprintln!("mcpsm log-writer: {e}");
                    }
                    self.failed = Some(e.to_string());
                    self.file = None;
                }
            }
        }
        self.file.as_mut()
    }

    /// Appends `data`, rotating before the file would pass `max_bytes` (at a line end when
    /// one is near).
    pub fn write(&mut self, mut data: &[u8]) {
        // Each pass writes or rotates; a bound keeps a confused file system from looping.
        let limit = 2 + data.len() as u64 / self.max_bytes;
        let mut rotations = 0;
        while !data.is_empty() {
            let max_bytes = self.max_bytes;
            let Some(file) = self.current() else { return };
            let size = file.metadata().map_or(0, |m| m.len());
            if size >= max_bytes {
                rotations += 1;
                if rotations > limit || rotate(&self.path, self.keep).is_err() {
                    // Cannot rotate (a read-only directory?): drop rather than grow past the cap.
                    return;
                }
                self.file = None;
                continue;
            }
            let room = usize::try_from(max_bytes - size).unwrap_or(usize::MAX);
            let mut take = data.len().min(room);
            if take < data.len() {
                // Cut after the last full line that fits, unless that wastes half the room.
                if let Some(end) = memchr::memrchr(b'\n', &data[..take]) {
                    if end + 1 >= take / 2 {
                        take = end + 1;
                    }
                }
            }
            if file.write_all(&data[..take]).is_err() {
                return;
            }
            data = &data[take..];
            if !data.is_empty() {
                // What is left goes to a new file.
                rotations += 1;
                if rotations > limit || rotate(&self.path, self.keep).is_err() {
                    return;
                }
                self.file = None;
            }
        }
    }
}

/// The last `lines` lines of `path` (reading at most its last 64 KiB); nothing when it is
/// missing or a link.
/// Puts the time at the start of every line of a stream of output.
#[derive(Default)]
pub struct Stamper {
    /// The next byte starts a line.
    mid_line: bool,
    out: Vec<u8>,
}

impl Stamper {
    /// `data` with a stamp before each line that starts in it.
    pub fn stamp(&mut self, data: &[u8]) -> &[u8] {
        self.out.clear();
        let stamp = timestamp(std::time::SystemTime::now());
        for piece in data.split_inclusive(|b| *b == b'\n') {
            if !self.mid_line {
                self.out.extend_from_slice(stamp.as_bytes());
                self.out.push(b' ');
            }
            self.out.extend_from_slice(piece);
            self.mid_line = !piece.ends_with(b"\n");
        }
        &self.out
    }
}

/// `2026-12-04T19:06:08.123Z`: UTC, milliseconds, always 24 characters.
pub fn timestamp(at: std::time::SystemTime) -> String {
    let millis = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let secs = (millis / 1000) as i64;
    let (days, day_secs) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days → civil date.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        day_secs / 3600,
        day_secs % 3600 / 60,
        day_secs % 60,
        millis % 1000
    )
}

/// The unix time in milliseconds of a line that starts with a [`timestamp`].
pub fn stamp_of(line: &str) -> Option<u64> {
    let stamp = line.get(..24)?;
    let bytes = stamp.as_bytes();
    if bytes[4] != b'-' || bytes[10] != b'T' || bytes[23] != b'Z' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| stamp.get(range)?.parse::<i64>().ok();
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second, milli) = (
        number(11..13)?,
        number(14..16)?,
        number(17..19)?,
        number(20..23)?,
    );
    // Civil date → days (the inverse of the above).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    u64::try_from(secs * 1000 + milli).ok()
}

/// Appends a line of the manager's own to a daemon's log: `STAMP mcpsm: TEXT`.
pub fn append_event(path: &Path, text: &str) {
    let line = format!(
        "{} mcpsm: {text}\n",
        timestamp(std::time::SystemTime::now())
    );
    if let Ok(mut file) = open_log(path) {
        let _ = file.write_all(line.as_bytes());
    }
}

/// The lines of `path` and its rotated files written at or after `cutoff` (unix
/// milliseconds), oldest first. A line without a stamp goes with the line before it.
pub fn lines_since(path: &Path, cutoff: u64) -> Vec<String> {
    let mut files: Vec<PathBuf> = (1..=ROTATED_LOGS)
        .rev()
        .map(|n| numbered(path, n))
        .collect();
    files.push(path.to_path_buf());
    let mut lines = Vec::new();
    let mut keep = false;
    for file in files {
        let Ok(mut file) = open_log_for_reading(&file) else {
            continue;
        };
        let mut bytes = Vec::new();
        if file.read_to_end(&mut bytes).is_err() {
            continue;
        }
        for line in String::from_utf8_lossy(&bytes).lines() {
            if let Some(at) = stamp_of(line) {
                keep = at >= cutoff;
            }
            if keep {
                lines.push(line.to_owned());
            }
        }
    }
    lines
}

pub fn tail(path: &Path, lines: usize) -> Vec<String> {
    tail_since(path, 0, lines)
}

/// The size of `path` now (0 when missing): where what is written next starts.
pub fn end_of(path: &Path) -> u64 {
    std::fs::symlink_metadata(path).map_or(0, |m| m.len())
}

/// [`tail`] of what was written at or after byte `since` (from [`end_of`]); the whole file
/// when it was rotated since (it is shorter than `since`).
pub fn tail_since(path: &Path, since: u64, lines: usize) -> Vec<String> {
    const WINDOW: u64 = 64 * 1024;
    let Ok(mut file) = open_log_for_reading(path) else {
        return Vec::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let since = if len < since { 0 } else { since };
    let start = len.saturating_sub(WINDOW).max(since);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut all: Vec<&str> = text.lines().collect();
    if start > since && !all.is_empty() {
        all.remove(0); // a partial first line
    }
    let skip = all.len().saturating_sub(lines);
    all[skip..].iter().map(|l| (*l).to_owned()).collect()
}

/// `tail` formatted for an error message: "last lines of FILE:\n  …", or that it is empty.
pub fn tail_for_message(path: &Path, lines: usize) -> String {
    let tail = tail(path, lines);
    if tail.is_empty() {
        return format!("(its log {} is empty)", path.display());
    }
    format!("last lines of {}:\n  {}", path.display(), tail.join("\n  "))
}

/// What one run of a daemon wrote (from byte `since`), for an error message: earlier runs'
/// output is not repeated.
pub fn run_tail_for_message(path: &Path, since: u64, lines: usize) -> String {
    let tail = tail_since(path, since, lines);
    if tail.is_empty() {
        return format!("it wrote nothing to its log {}", path.display());
    }
    format!(
        "its last output (in {}):\n  {}",
        path.display(),
        tail.join("\n  ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_start_every_line_and_read_back() {
        let mut stamper = Stamper::default();
        let first = String::from_utf8_lossy(stamper.stamp(b"a\nb")).into_owned();
        let second = String::from_utf8_lossy(stamper.stamp(b"c\nd\n")).into_owned();
        let lines: Vec<&str> = first
            .split_inclusive('\n')
            .chain(second.split_inclusive('\n'))
            .collect();
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(
            lines[0].ends_with(" a\n") && stamp_of(lines[0]).is_some(),
            "{lines:?}"
        );
        assert_eq!(
            lines[2], "c\n",
            "a line started in the chunk before keeps one stamp"
        );
        assert!(lines[3].ends_with(" d\n") && stamp_of(lines[3]).is_some());
        assert_eq!(timestamp(std::time::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_796_411_168_123);
        assert_eq!(timestamp(at), "2026-12-04T19:06:08.123Z");
        assert_eq!(
            stamp_of("2026-12-04T19:06:08.123Z x"),
            Some(1_796_411_168_123)
        );
        assert_eq!(
            stamp_of("2024-02-29T23:59:59.999Z"),
            Some(1_709_251_199_999)
        );
        assert_eq!(
            timestamp(std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_709_251_199_999)),
            "2024-02-29T23:59:59.999Z"
        );
        assert_eq!(stamp_of("not a stamp at all, but long enough"), None);
    }

    #[test]
    fn tail_returns_the_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.log");
        std::fs::write(&path, "1\n2\n3\n4\n").expect("write");
        assert_eq!(tail(&path, 2), ["3", "4"]);
        assert_eq!(tail(&path, 10).len(), 4);
        assert!(tail(&dir.path().join("missing.log"), 3).is_empty());
    }

    fn sizes(dir: &Path) -> Vec<(String, u64)> {
        let mut all: Vec<(String, u64)> = std::fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| {
                let e = e.expect("entry");
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().expect("meta").len(),
                )
            })
            .collect();
        all.sort();
        all
    }

    #[test]
    fn writing_rotates_at_the_size_and_keeps_the_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.log");
        let file = open_log(&path).expect("open");
        let mut log = RotatingLog::new(path.clone(), file, 100, 2);
        for i in 0..100 {
            log.write(format!("line {i:04}\n").as_bytes()); // 10 bytes each
        }
        let all = sizes(dir.path());
        let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a.log", "a.log.1", "a.log.2"], "{all:?}");
        assert!(all.iter().all(|(_, len)| *len <= 100), "{all:?}");
        let newest = std::fs::read_to_string(&path).expect("read");
        assert!(newest.ends_with("line 0099\n"), "{newest}");
        assert!(
            newest.starts_with("line "),
            "rotated at a line end: {newest}"
        );
    }

    #[test]
    fn a_chunk_larger_than_the_limit_is_split_across_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.log");
        let file = open_log(&path).expect("open");
        let mut log = RotatingLog::new(path.clone(), file, 10, 3);
        log.write(&[b'x'; 25]);
        let all = sizes(dir.path());
        assert_eq!(
            all,
            [
                ("a.log".to_owned(), 5),
                ("a.log.1".to_owned(), 10),
                ("a.log.2".to_owned(), 10)
            ]
        );
    }

    #[test]
    #[cfg(unix)] // Unix symbolic links; Windows ones need a privilege to create
    fn a_link_is_refused_and_never_written_through() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("target");
        std::fs::write(&target, "precious\n").expect("write");
        let path = dir.path().join("a.log");
        std::os::unix::fs::symlink(&target, &path).expect("symlink");
        let error = open_log(&path).expect_err("a link is refused");
        assert!(matches!(error, LogError::Link { .. }), "{error}");
        assert!(error.to_string().contains("hint:"), "{error}");
        assert!(tail(&path, 5).is_empty(), "not read through either");
        assert_eq!(
            std::fs::read_to_string(&target).expect("read"),
            "precious\n"
        );
    }

    #[test]
    #[cfg(unix)] // Unix modes
    fn logs_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.log");
        std::fs::write(&path, "").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let file = open_log(&path).expect("open");
        assert_eq!(
            file.metadata().expect("meta").permissions().mode() & 0o777,
            0o600
        );
    }
}
