//! `mcpsm demo-server --port P`: the built-in demo MCP server (see [`crate::demo`]).

use std::process::ExitCode;

use anyhow::Context as _;

use crate::cli::DemoServerArgs;
use crate::supervise::process;

pub async fn run(args: DemoServerArgs) -> anyhow::Result<ExitCode> {
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await {
        Ok(listener) => listener,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            anyhow::bail!("{}", process::describe_port_in_use(args.port))
        }
        Err(e) => return Err(e).with_context(|| format!("binding 127.0.0.1:{}", args.port)),
    };
    let port = listener.local_addr()?.port();
    eprintln!("mcpsm demo server listening on http://127.0.0.1:{port}/mcp");
    let stop = super::terminated()?;
    crate::demo::serve(listener, stop)
        .await
        .context("serving")?;
    Ok(ExitCode::SUCCESS)
}
