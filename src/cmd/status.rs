//! `mcpsm status [--json] [--verbose] [--open]`: every daemon of the registry, as the manager
//! sees it; `--open` opens the manager's live status page instead.

use std::process::ExitCode;

use super::Settings;
use crate::cli::StatusArgs;
use crate::supervise::client::{connect_or_start, ClientError, ManagerClient};
use crate::supervise::daemon::{DaemonState, DaemonStatus};
use crate::supervise::process;
use crate::supervise::state::ManagerState;

/// Names a command that opens the page's URL (appended as its last argument).
pub const OPENER_ENV: &str = "MCPSM_OPENER";

pub async fn run(args: StatusArgs, settings: Settings) -> anyhow::Result<ExitCode> {
    let registry = settings.registry()?;
    if args.open {
        return open_page(&settings, registry.manager_port()).await;
    }
    let client = ManagerClient::new(&settings.paths, registry.manager_port());
    let report = match client.status().await {
        Ok(report) => report,
        Err(ClientError::NotRunning { port }) => {
            if args.json {
                println!("{}", serde_json::json!({ "manager": null, "daemons": [] }));
                return Ok(ExitCode::SUCCESS);
            }
            println!("manager: not running (127.0.0.1:{port}); it starts with the first proxy, or `mcpsm manager --detach`");
            // Daemons outlive a killed manager: manager.json says which still run.
            let state = ManagerState::read(&settings.paths.manager_state()).unwrap_or_default();
            let statuses: Vec<DaemonStatus> = registry
                .names()
                .filter_map(|name| registry.daemon(name).ok())
                .map(|spec| {
                    let mut status = DaemonStatus::new(&spec, &settings.paths);
                    if let Some(record) = state.daemons.get(&spec.name).filter(|r| {
                        process::is_alive(r.pid) && process::start_time(r.pid) == Some(r.start_time)
                    }) {
                        status.state = DaemonState::Ready;
                        status.pid = Some(record.pid);
                        status.started_at = Some(record.started_at);
                        status.restarts = record.restarts;
                    }
                    status.with_uptime()
                })
                .collect();
            print_table(&statuses, args.verbose);
            if statuses.iter().any(|s| s.pid.is_some()) {
                println!(
                    "(daemons with a pid run without a manager; the next manager adopts them)"
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e.into()),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let manager = &report.manager;
    println!(
        "manager: running at 127.0.0.1:{} (pid {}, version {}, up {})",
        manager.port,
        manager.pid,
        manager.version,
        human_duration(crate::supervise::daemon::unix_now().saturating_sub(manager.started_at))
    );
    if let Some(error) = &report.registry_error {
        println!("registry: {error}");
    }
    print_table(&report.daemons, args.verbose);
    Ok(ExitCode::SUCCESS)
}

/// Sessions and idle shutdown: `sessions: 2`, `idle 3m, stops in 7m (idle-timeout 10m)`,
/// `stopped after 10m without a session, 4m ago`.
fn idle_line(daemon: &DaemonStatus) -> Option<String> {
    let now = crate::supervise::daemon::unix_now();
    if daemon.sessions > 0 {
        return Some(format!("sessions: {}", daemon.sessions));
    }
    let timeout = daemon
        .idle_timeout()
        .map_or("never".to_owned(), |t| human_duration(t.as_secs()));
    if let Some(idle) = daemon.idle_secs {
        let stop = daemon
            .idle_stop_in_secs
            .map_or("never stops".to_owned(), |s| {
                format!("stops in {}", human_duration(s))
            });
        return Some(format!(
            "sessions: 0, idle {}, {stop} (idle-timeout {timeout})",
            human_duration(idle)
        ));
    }
    daemon.idle_stopped_at.map(|at| {
        format!(
            "stopped {} ago: no session for its idle-timeout ({timeout}); the next proxy starts it",
            human_duration(now.saturating_sub(at))
        )
    })
}

/// Asks the manager (starting one if none runs) for a one-time URL of its page, prints it
/// and opens it in the browser.
async fn open_page(settings: &Settings, port: u16) -> anyhow::Result<ExitCode> {
    let registry = settings
        .registry_explicit
        .then_some(settings.registry_path.as_path());
    let client = connect_or_start(&settings.paths, registry, port).await?;
    let url = client.page_ticket().await?;
    println!("{url}");
    eprintln!("mcpsm: the status page; the link works once, within 2 minutes (then run `mcpsm status --open` again)");
    let command = std::env::var(OPENER_ENV)
        .ok()
        .filter(|c| !c.trim().is_empty())
        .and_then(|c| {
            let mut words = c.split_whitespace().map(str::to_owned);
            Some((words.next()?, words.collect::<Vec<_>>()))
        })
        .or_else(crate::platform::browser_command);
    let Some((program, mut arguments)) = command else {
        eprintln!("mcpsm: no browser to open it with here (no display); open the URL above in one on this machine");
        return Ok(ExitCode::SUCCESS);
    };
    arguments.push(url);
    let spawned = std::process::Command::new(&program)
        .args(&arguments)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn();
    match spawned {
        // Reaped in the background; a browser may outlive this command, which does not wait.
        Ok(mut child) => {
            std::thread::spawn(move || child.wait());
        }
        Err(e) => eprintln!(
            "mcpsm: could not run `{program}` to open it: {e}\nhint: open the URL above yourself, or set {OPENER_ENV} to a command that opens URLs"
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(daemons: &[DaemonStatus], verbose: bool) {
    if daemons.is_empty() {
        println!("no daemons in the registry");
        return;
    }
    let rows: Vec<[String; 7]> = daemons
        .iter()
        .map(|d| {
            [
                d.name.clone(),
                d.state.as_str().to_owned(),
                d.pid.map_or("-".into(), |p| p.to_string()),
                d.port.map_or("-".into(), |p| p.to_string()),
                d.transport.clone(),
                d.uptime_secs.map_or("-".into(), human_duration),
                d.restarts.to_string(),
            ]
        })
        .collect();
    let headers = [
        "NAME",
        "STATE",
        "PID",
        "PORT",
        "TRANSPORT",
        "UPTIME",
        "RESTARTS",
    ];
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([headers[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    println!("{}", line(headers.to_vec()));
    for (row, daemon) in rows.iter().zip(daemons) {
        println!("{}", line(row.iter().map(String::as_str).collect()));
        if daemon.sessions_recovered > 0 {
            let ago = daemon.last_recovery.map_or(String::new(), |t| {
                format!(
                    ", the last {} ago",
                    human_duration(crate::supervise::daemon::unix_now().saturating_sub(t))
                )
            });
            println!("  sessions recovered: {}{ago}", daemon.sessions_recovered);
        }
        if let Some(line) = idle_line(daemon) {
            println!("  {line}");
        }
        if verbose {
            print_launch(daemon);
        }
        if let Some(host) = &daemon.host {
            print_host(host);
        }
        if let Some(oauth) = &daemon.oauth {
            println!("  oauth: {oauth}");
        }
        if let Some(error) = &daemon.last_error {
            for (i, text) in error.lines().enumerate() {
                let label = if i == 0 { "  last error: " } else { "    " };
                println!("{label}{text}");
            }
        }
    }
}

/// Where the daemon runs and the names of its variables (values may be secrets).
fn print_launch(daemon: &DaemonStatus) {
    match &daemon.cwd {
        Some(cwd) => println!("  cwd: {cwd}"),
        None => println!("  cwd: - (not started by this manager yet)"),
    }
    if !daemon.env_keys.is_empty() {
        println!("  env: {}", daemon.env_keys.join(" "));
    }
}

/// A stdio daemon's server processes and the sessions each serves, from its host's report.
fn print_host(host: &serde_json::Value) {
    let children = host["children"].as_array().map_or(&[][..], Vec::as_slice);
    let sharing = host["sharing"].as_str().unwrap_or("?");
    println!(
        "  sharing: {sharing}, {} server process(es)",
        children.len()
    );
    for child in children {
        let text = |key: &str| child[key].as_str().unwrap_or("-").to_owned();
        let pid = child["pid"].as_u64().map_or("-".into(), |p| p.to_string());
        let health = &child["health"];
        let hung = health["hung_restarts"].as_u64().unwrap_or(0);
        let hung = if hung > 0 {
            format!(", restarted {hung}x as hung")
        } else {
            String::new()
        };
        println!(
            "  server pid {pid} in {} speaks {}{hung}",
            text("cwd"),
            text("protocol_version")
        );
        for session in child["sessions"].as_array().map_or(&[][..], Vec::as_slice) {
            let id = session["id"].as_str().unwrap_or("?");
            println!(
                "    session {}  {}  {}{}",
                id.get(..8).unwrap_or(id),
                session["protocol_version"].as_str().unwrap_or("-"),
                session["client"]
                    .as_str()
                    .filter(|c| !c.is_empty())
                    .unwrap_or("(unnamed client)"),
                if session["connected"] == true {
                    ""
                } else {
                    "  (no GET stream)"
                }
            );
        }
    }
}

pub fn human_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}
