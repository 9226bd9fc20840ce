use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mcpsm::cli::Cli;

fn main() -> ExitCode {
    quiet_on_closed_stdout();
    let cli = Cli::parse_from(mcpsm::cli::args_from_env());
    // The manager's log is where daemons' lives are told; everything else stays quiet.
    let json_logs =
        matches!(&cli.command, mcpsm::cli::Command::StdioHost(args) if args.log_format == "json");
    // So is a team service's, when it logs for a collector.
    let default_level = match cli.command {
        mcpsm::cli::Command::Manager(_) => "info",
        _ if json_logs => "info",
        _ => "warn",
    };
    init_logging(cli.log_level.as_deref(), default_level, json_logs);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(mcpsm::cmd::run(cli));
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(code) => code,
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr only: stdout carries JSON-RPC. `--log-level` beats `RUST_LOG`. The
/// exception: `stdio-host --log-format json` writes JSON lines to stdout (where a container
/// runtime collects them; the host's stdout carries nothing else).
fn init_logging(level: Option<&str>, default_level: &str, json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(level) => EnvFilter::new(level),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
    };
    if json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stdout)
            .init();
        return;
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Output piped into `head` and closed early is not an error.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `mcpsm status | head -1`: `println!` panics when the reader has gone. For every command,
/// that ends the process quietly with status 0, like any other write to a closed stdout.
fn quiet_on_closed_stdout() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout")
            && mcpsm::platform::is_broken_pipe_message(message)
        {
            std::process::exit(0);
        }
        default_hook(info);
    }));
}
