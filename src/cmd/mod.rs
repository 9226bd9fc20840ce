//! One module per subcommand; this file only dispatches and resolves the settings they share.

mod control;
mod demo;
mod demo_server;
mod doctor;
mod generate_config;
mod host;
mod import;
mod login;
mod logs;
mod manager;
mod manager_page;
mod proxy;
mod service;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use crate::cli::{Cli, Command};
use crate::config::{LoadError, Registry};
use crate::paths::Paths;

/// Where mcpsm keeps its state and which registry applies.
#[derive(Debug, Clone)]
pub struct Settings {
    pub paths: Paths,
    pub registry_path: PathBuf,
    /// Named by `--registry`/`MCPSM_REGISTRY`: it must exist.
    pub registry_explicit: bool,
}

impl Settings {
    fn new(registry: Option<PathBuf>) -> anyhow::Result<Settings> {
        let paths = Paths::from_env()?;
        let (registry_path, registry_explicit) = match registry {
            Some(path) => (path, true),
            None => (paths.default_registry(), false),
        };
        Ok(Settings {
            paths,
            registry_path,
            registry_explicit,
        })
    }

    pub fn registry(&self) -> Result<Registry, LoadError> {
        Registry::load(&self.registry_path, self.registry_explicit)
    }

    /// The registry path to hand to a manager this process starts, if it is not the default.
    pub fn explicit_registry(&self) -> Option<&std::path::Path> {
        self.registry_explicit
            .then_some(self.registry_path.as_path())
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Proxy(args) => proxy::run(*args, cli.registry).await,
        Command::StdioHost(args) => host::run(*args).await,
        Command::LogWriter(args) => {
            Ok(crate::supervise::log_writer::run(&args.file, &args.command))
        }
        Command::DemoServer(args) => demo_server::run(args).await,
        Command::Demo => demo::run().await,
        Command::Completions(args) => {
            let mut command = <Cli as clap::CommandFactory>::command();
            // Into a buffer first: clap_complete panics on a write error (a closed stdout).
            let mut script = Vec::new();
            clap_complete::generate(args.shell, &mut command, "mcpsm", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)?;
            Ok(ExitCode::SUCCESS)
        }
        command => {
            let settings = Settings::new(cli.registry)?;
            match command {
                Command::Proxy(_)
                | Command::StdioHost(_)
                | Command::LogWriter(_)
                | Command::DemoServer(_)
                | Command::Demo
                | Command::Completions(_) => {
                    unreachable!("handled above")
                }
                Command::Manager(args) => manager::run(args, settings).await,
                Command::Status(args) => status::run(args, settings).await,
                Command::Start(args) => control::run("start", args, settings).await,
                Command::Stop(args) => control::run("stop", args, settings).await,
                Command::Restart(args) => control::run("restart", args, settings).await,
                Command::Logs(args) => logs::run(args, settings).await,
                Command::Login(args) => login::login(args, settings).await,
                Command::Logout(args) => login::logout(args, settings).await,
                Command::Doctor(args) => doctor::run(args, settings).await,
                Command::GenerateConfig(args) => generate_config::run(args, settings),
                Command::Import(args) => import::run(args, settings),
                Command::Service(args) => service::run(args, settings),
            }
        }
    }
}

/// Resolves on SIGTERM or SIGINT (Windows: console close, shutdown, logoff, CTRL_C or
/// CTRL_BREAK): how a server process run in the foreground is asked to end.
fn terminated() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use crate::platform::{Signal, Signals};
    use anyhow::Context as _;
    let mut signals = Signals::new(&[Signal::Terminate, Signal::Interrupt])
        .context("installing the SIGTERM and SIGINT handlers")?;
    Ok(async move {
        signals.recv().await;
    })
}
