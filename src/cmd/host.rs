//! `mcpsm stdio-host`: serves a stdio-only MCP server as a streamable-HTTP daemon. The manager
//! runs it for `transport = "stdio"` daemons (giving it a secret in `MCPSM_HOST_SECRET`, which
//! every request must then carry); run by hand with `--bind`, `--token-file`/`--oidc-issuer`
//! and `--tls-cert` it serves a team (see [`crate::host::service`]).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;

use crate::cli::StdioHostArgs;
use crate::host::hub::{ChildCommand, SECRET_ENV};
use crate::host::service::{Access, Oidc, TokenFile};
use crate::host::{self, HostOptions};
use crate::supervise::process;

pub async fn run(args: StdioHostArgs) -> anyhow::Result<ExitCode> {
    let Some((command, rest)) = args.command.split_first() else {
        anyhow::bail!("give the server's command after `--`, e.g. `mcpsm stdio-host --port 3100 -- npx -y @modelcontextprotocol/server-memory`");
    };
    let access = access(&args)?;
    let address = SocketAddr::new(args.bind, args.port);
    if !args.bind.is_loopback() {
        if access.tokens.is_none() && access.oidc.is_none() {
            anyhow::bail!(
                "refusing to listen on {address} without authentication: anyone who can reach it could use the server\n\
                 hint: give --token-file FILE (bearer tokens, one a line) and/or --oidc-issuer URL --oidc-audience AUD, or bind 127.0.0.1"
            );
        }
        if access.public_names.is_empty() {
            anyhow::bail!(
                "listening on {address} needs --public-name: the name clients reach this host by (checked against `Host` and `Origin`, DNS rebinding protection)\n\
                 hint: --public-name mcp.example.com, or --public-name '*' to accept any Host (tokens are still required)"
            );
        }
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            Some(host::tls::acceptor(cert, key).map_err(|why| anyhow::anyhow!("{why}"))?)
        }
        _ => None,
    };
    if tls.is_none() && !args.bind.is_loopback() {
        tracing::warn!("serving plain HTTP on {address}: tokens cross the network in clear unless a TLS-terminating proxy or mesh is in front; hint: --tls-cert and --tls-key");
    }
    let program = process::find_program(command, None)?;
    let listener = match tokio::net::TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            anyhow::bail!("{}", process::describe_port_in_use(args.port))
        }
        Err(e) => return Err(e).with_context(|| format!("binding {address}")),
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
        access: Arc::new(access),
        tls,
        drain_grace: args.drain_grace,
        address,
    };
    let stop = super::terminated()?;
    host::run(options, listener, stop)
        .await
        .context("serving")?;
    Ok(ExitCode::SUCCESS)
}

/// Who may use the host, from its flags and environment.
fn access(args: &StdioHostArgs) -> anyhow::Result<Access> {
    let tokens = match &args.token_file {
        Some(path) => Some(TokenFile::open(path).map_err(|why| anyhow::anyhow!("{why}"))?),
        None => None,
    };
    let oidc = match &args.oidc_issuer {
        Some(issuer) => Some(
            Oidc::new(issuer, args.oidc_audience.clone())
                .map_err(|why| anyhow::anyhow!("{why}"))?,
        ),
        None => None,
    };
    Ok(Access {
        // Set by the manager for the daemons it runs; by hand, no secret is checked.
        secret: std::env::var(SECRET_ENV).ok().filter(|s| !s.is_empty()),
        tokens,
        oidc,
        public_names: args.public_name.clone(),
    })
}
