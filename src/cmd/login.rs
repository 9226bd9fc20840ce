//! `mcpsm login NAME` / `mcpsm logout NAME`: the OAuth authorization of a `url` daemon with
//! `auth = "oauth"`, run ahead of time (proxies would otherwise start it on the first 401) or
//! forgotten. The stored tokens are the ones every proxy of the daemon uses. When a manager
//! runs, it owns the authorization: both go through it (the URL is printed here), so there
//! is still one owner and its proxies see the change at once.

use std::process::ExitCode;

use anyhow::Context as _;

use super::Settings;
use crate::auth;
use crate::cli::NameArgs;
use crate::supervise::client::ManagerClient;
use std::time::Duration;

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

/// The running manager of this home, if one answers.
async fn running_manager(settings: &Settings) -> Option<ManagerClient> {
    let port = settings.registry().ok()?.manager_port();
    let client = ManagerClient::new(&settings.paths, port);
    client.ping().await.ok().map(|_| client)
}

/// Asks the manager until it answers something other than `pending`, printing the login URL.
async fn through_manager(
    client: &ManagerClient,
    name: &str,
    event: &str,
) -> anyhow::Result<auth::BrokerAnswer> {
    let mut request = auth::BrokerRequest {
        name: name.to_owned(),
        event: event.to_owned(),
        status: None,
        challenge: None,
        sent: None,
        seen_url: false,
    };
    let deadline = std::time::Instant::now() + auth::login_timeout() + Duration::from_secs(30);
    loop {
        let answer = client
            .oauth(&request)
            .await
            .with_context(|| format!("asking the manager to {event} daemon \"{name}\""))?;
        match answer {
            auth::BrokerAnswer::Pending { url, .. } => {
                if let Some(url) = url.filter(|_| !request.seen_url) {
                    eprintln!("mcpsm: to authorize daemon \"{name}\", open this URL in a browser (the manager opened one if it could):\n  {url}");
                    request.seen_url = true;
                }
                if std::time::Instant::now() > deadline {
                    anyhow::bail!("the login of daemon \"{name}\" did not finish in time\nhint: run `mcpsm login {name}` again and finish in the browser");
                }
            }
            auth::BrokerAnswer::Failed { error } => {
                anyhow::bail!("{event} daemon \"{name}\" (through the manager): {error}")
            }
            answer => return Ok(answer),
        }
    }
}

pub async fn login(args: NameArgs, settings: Settings) -> anyhow::Result<ExitCode> {
    let (daemon, spec) = oauth_daemon(&args, &settings)?;
    let home = settings.paths.home();
    if let Some(client) = running_manager(&settings).await {
        through_manager(&client, &args.name, "login").await?;
        let state = auth::describe(home, &auth::daemon_key(&args.name)).unwrap_or_default();
        println!("{}: {state}", args.name);
        return Ok(ExitCode::SUCCESS);
    }
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

pub async fn logout(args: NameArgs, settings: Settings) -> anyhow::Result<ExitCode> {
    oauth_daemon(&args, &settings)?;
    let forgot = match running_manager(&settings).await {
        Some(client) => matches!(
            through_manager(&client, &args.name, "logout").await?,
            auth::BrokerAnswer::LoggedOut { forgot: true }
        ),
        None => auth::forget(settings.paths.home(), &auth::daemon_key(&args.name))?,
    };
    if forgot {
        println!("{}: logged out (stored tokens removed)", args.name);
    } else {
        println!("{}: was not logged in", args.name);
    }
    Ok(ExitCode::SUCCESS)
}
