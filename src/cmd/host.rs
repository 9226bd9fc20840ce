//! `mcpsm stdio-host`: serves a stdio-only MCP server as a streamable-HTTP daemon. The manager
//! runs it for `transport = "stdio"` daemons (giving it a secret in `MCPSM_HOST_SECRET`, which
//! every request must then carry); see [`crate::host`].

use std::process::ExitCode;

use anyhow::Context as _;

use crate::cli::StdioHostArgs;
use crate::host::hub::{ChildCommand, SECRET_ENV};
use crate::host::{self, HostOptions};
use crate::supervise::process;

pub async fn run(args: StdioHostArgs) -> anyhow::Result<ExitCode> {
    let Some((command, rest)) = args.command.split_first() else {
        anyhow::bail!("give the server's command after `--`, e.g. `mcpsm stdio-host --port 3100 -- npx -y @modelcontextprotocol/server-memory`");
    };
    let program = process::find_program(command, None)?;
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await {
        Ok(listener) => listener,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            anyhow::bail!("{}", process::describe_port_in_use(args.port))
        }
        Err(e) => return Err(e).with_context(|| format!("binding 127.0.0.1:{}", args.port)),
    };
    let options = HostOptions {
        port: args.port,
        sharing: args.sharing,
        command: ChildCommand {
            program,
            args: rest.to_vec(),
            name: args.name.unwrap_or_else(|| command.clone()),
            max_message_bytes: args.max_message_bytes,
            cwd: None,
            health_interval: args.health_interval,
        },
        idle_timeout: args.session_idle_timeout,
        grace: args.session_grace,
        max_children: args.max_sessions.max(1),
        // Set by the manager for the daemons it runs; by hand, no secret is checked.
        secret: std::env::var(SECRET_ENV).ok().filter(|s| !s.is_empty()),
    };
    let stop = super::terminated()?;
    host::run(options, listener, stop)
        .await
        .context("serving")?;
    Ok(ExitCode::SUCCESS)
}
