//! One module per subcommand; this file only dispatches.

mod proxy;

use std::process::ExitCode;

use crate::cli::{Cli, Command};

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Proxy(args) => proxy::run(args, cli.registry).await,
    }
}
