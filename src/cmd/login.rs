//! `mcpsm login NAME` / `mcpsm logout NAME`: the OAuth authorization of a `url` daemon with
//! `auth = "oauth"`, run ahead of time (proxies would otherwise start it on the first 401) or
//! forgotten. The stored tokens are the ones every proxy of the daemon uses.

use std::process::ExitCode;

use anyhow::Context as _;

use super::Settings;
use crate::auth;
use crate::cli::NameArgs;

fn oauth_daemon(
    args: &NameArgs,
    settings: &Settings,
) -> anyhow::Result<(crate::config::DaemonSpec, crate::config::OAuthSpec)> {
    let registry = settings.registry()?;
    let daemon = registry.daemon(&args.name)?;
    let Some(spec) = daemon.oauth.clone() else {
        anyhow::bail!(
            "daemon \"{}\" does not use OAuth ({})\nhint: add `auth = \"oauth\"` to its table in {}",
            args.name,
            daemon.defined_at,
            settings.registry_path.display()
        );
    };
    Ok((daemon, spec))
}

pub async fn login(args: NameArgs, settings: Settings) -> anyhow::Result<ExitCode> {
    let (daemon, spec) = oauth_daemon(&args, &settings)?;
    let home = settings.paths.home();
    let oauth = auth::OAuth::new(
        daemon.url.clone(),
        format!("daemon \"{}\" ({})", args.name, daemon.url),
        auth::settings_of(&spec),
        home,
        &auth::daemon_key(&args.name),
    )
    .context("preparing the authorization")?;
    oauth
        .login()
        .await
        .with_context(|| format!("logging in to daemon \"{}\" ({})", args.name, daemon.url))?;
    let state = auth::describe(home, &auth::daemon_key(&args.name)).unwrap_or_default();
    println!("{}: {state}", args.name);
    Ok(ExitCode::SUCCESS)
}

pub fn logout(args: NameArgs, settings: Settings) -> anyhow::Result<ExitCode> {
    oauth_daemon(&args, &settings)?;
    let forgot = auth::forget(settings.paths.home(), &auth::daemon_key(&args.name))?;
    if forgot {
        println!("{}: logged out (stored tokens removed)", args.name);
    } else {
        println!("{}: was not logged in", args.name);
    }
    Ok(ExitCode::SUCCESS)
}
