//! `mcpsm logs NAME [-n N | --since DURATION] [-f]`: reads the daemon's log file directly, so it
//! works whether or not a manager runs. Every line starts with the time it was written (UTC);
//! `--since` keeps the lines of the last DURATION, from the rotated files too.

use std::io::{Read, Seek, SeekFrom, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

use super::Settings;
use crate::cli::LogsArgs;
use crate::supervise::logs;

pub async fn run(args: LogsArgs, settings: Settings) -> anyhow::Result<ExitCode> {
    let path = settings.paths.daemon_log(&args.name);
    if path.is_symlink() {
        // Never read through a link planted in place of a log.
        logs::open_log_for_reading(&path)?;
    }
    if !path.exists() {
        // An unknown name gets the registry's answer (with a suggestion).
        settings.registry()?.daemon(&args.name)?;
        if !args.follow {
            eprintln!(
                "{} does not exist yet: daemon \"{}\" has not run under this manager",
                path.display(),
                args.name
            );
            return Ok(ExitCode::SUCCESS);
        }
    }
    let mut stdout = std::io::stdout().lock();
    let lines = match args.since {
        Some(since) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            let cutoff = now.saturating_sub(since.as_millis());
            logs::lines_since(&path, u64::try_from(cutoff).unwrap_or(0))
        }
        None => logs::tail(&path, args.lines),
    };
    for line in lines {
        writeln!(stdout, "{line}")?;
    }
    stdout.flush()?;
    if !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    let mut offset = std::fs::metadata(&path).map_or(0, |m| m.len());
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Ok(mut file) = logs::open_log_for_reading(&path) else {
            continue;
        };
        let len = file.metadata().map_or(0, |m| m.len());
        if len < offset {
            offset = 0; // rotated or truncated: read the new content from the start
        }
        if len == offset {
            continue;
        }
        file.seek(SeekFrom::Start(offset))
            .with_context(|| format!("reading {}", path.display()))?;
        let mut chunk = Vec::new();
        file.take(len - offset).read_to_end(&mut chunk)?;
        offset = len;
        stdout.write_all(&chunk)?;
        stdout.flush()?;
    }
}
