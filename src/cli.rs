//! Every command-line type, and nothing else: commands receive resolved values from here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::TransportKind;
use crate::transport::stdio::DEFAULT_MAX_MESSAGE_BYTES;

const EXAMPLES: &str = "\
Examples:
  mcpsm proxy --target memory                        bridge stdio to the registry's daemon `memory`
  mcpsm proxy --url http://127.0.0.1:3001/mcp        bridge stdio to any MCP endpoint
  mcpsm proxy --url https://mcp.example.com/mcp -H 'Authorization: Bearer TOKEN'

Invoked through a link named `mcpsm-proxy`, mcpsm behaves as `mcpsm proxy`.";

#[derive(Debug, Parser)]
#[command(
    name = "mcpsm",
    version,
    about = "MCP session manager: one shared daemon per MCP server, a tiny stdio proxy per client session",
    after_help = EXAMPLES
)]
pub struct Cli {
    /// The daemon registry [default: $MCPSM_HOME/daemons.toml]
    #[arg(long, global = true, env = "MCPSM_REGISTRY", value_name = "PATH")]
    pub registry: Option<PathBuf>,

    /// Log verbosity on stderr: error, warn, info, debug or trace (overrides RUST_LOG)
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Bridge this process's stdio to an MCP daemon over HTTP (what an MCP client launches)
    #[command(after_help = "\
Examples:
  mcpsm proxy --target memory
  mcpsm proxy --url http://127.0.0.1:3001/mcp --transport streamable-http
  mcpsm proxy --url http://127.0.0.1:3001/sse --transport sse

The proxy reads one JSON-RPC message per line on stdin and writes the daemon's messages to
stdout, one per line; logs go to stderr. It ignores SIGINT, and exits 0 on stdin EOF, SIGTERM,
SIGHUP or a closed stdout, ending its session on the daemon (DELETE, at most 0.5 s).")]
    Proxy(ProxyArgs),
}

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// The registry daemon to connect to
    #[arg(
        long,
        value_name = "NAME",
        required_unless_present = "url",
        conflicts_with = "url"
    )]
    pub target: Option<String>,

    /// An MCP endpoint to connect to directly, instead of a registry daemon
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,

    /// The wire the daemon speaks [default: the registry's, or auto for --url]
    #[arg(long, value_name = "TRANSPORT", value_parser = parse_transport)]
    pub transport: Option<TransportKind>,

    /// An HTTP header for every request to the daemon, as 'Name: value' (repeatable)
    #[arg(long = "header", short = 'H', value_name = "'NAME: VALUE'")]
    pub headers: Vec<String>,

    /// The largest message accepted in either direction, in bytes
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
}

fn parse_transport(text: &str) -> Result<TransportKind, String> {
    text.parse()
}

/// The arguments, with `proxy` inserted when invoked as `mcpsm-proxy` (multi-call binary).
pub fn args_from_env() -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let invoked_as_proxy = args
        .first()
        .map(std::path::Path::new)
        .and_then(|p| p.file_stem())
        .is_some_and(|stem| stem == "mcpsm-proxy");
    if invoked_as_proxy {
        args.insert(1, "proxy".into());
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn proxy_needs_a_target_or_a_url() {
        assert!(Cli::try_parse_from(["mcpsm", "proxy"]).is_err());
        assert!(
            Cli::try_parse_from(["mcpsm", "proxy", "--target", "a", "--url", "http://x"]).is_err()
        );
        assert!(Cli::try_parse_from(["mcpsm", "proxy", "--target", "a"]).is_ok());
    }
}
