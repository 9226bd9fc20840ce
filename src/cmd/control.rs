//! `mcpsm start|stop|restart NAME`.

use std::process::ExitCode;

use super::status::human_duration;
use super::Settings;
use crate::cli::NameArgs;
use crate::supervise::client::{connect_or_start, ClientError, ManagerClient};

pub async fn run(action: &str, args: NameArgs, settings: Settings) -> anyhow::Result<ExitCode> {
    let registry = settings.registry()?;
    // Refuse unknown names here, with a suggestion, before any manager is started.
    registry.daemon(&args.name)?;
    let port = registry.manager_port();
    let client = if action == "stop" {
        ManagerClient::new(&settings.paths, port)
    } else {
        connect_or_start(&settings.paths, settings.explicit_registry(), port).await?
    };
    match client.daemon_action(action, &args.name).await {
        Ok(status) => {
            let pid = status.pid.map_or(String::new(), |p| format!(" (pid {p}"));
            let uptime = match (status.pid, status.uptime_secs) {
                (Some(_), Some(up)) => format!(", up {})", human_duration(up)),
                (Some(_), None) => ")".to_owned(),
                _ => String::new(),
            };
            println!("{}: {}{pid}{uptime}", status.name, status.state.as_str());
            Ok(ExitCode::SUCCESS)
        }
        Err(ClientError::NotRunning { .. }) if action == "stop" => {
            println!("{}: stopped (no manager is running)", args.name);
            Ok(ExitCode::SUCCESS)
        }
        Err(ClientError::Api {
            message, daemon, ..
        }) => {
            eprintln!("error: {message}");
            if let Some(daemon) = daemon {
                eprintln!(
                    "hint: read its log with `mcpsm logs {}` ({})",
                    daemon.name, daemon.log_file
                );
            }
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}
