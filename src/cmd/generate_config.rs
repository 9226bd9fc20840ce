//! `mcpsm generate-config`: one proxy entry per registry daemon in an MCP client's config file.

use std::process::ExitCode;

use super::Settings;
use crate::cli::GenerateConfigArgs;
use crate::clients::files::{self, Change, Keep};
use crate::clients::{ClientFile, Environment, ProxyCommand, SetOutcome};

pub fn run(args: GenerateConfigArgs, settings: Settings) -> anyhow::Result<ExitCode> {
    let args = args.target;
    let env = Environment::from_process()?;
    let location = args.client.location(args.scope, &env)?;
    let registry = settings.registry()?;
    let names: Vec<String> = registry.names().map(str::to_owned).collect();
    let registry_display = location.display_other(&settings.registry_path);
    if names.is_empty() {
        anyhow::bail!(
            "the registry {registry_display} defines no daemons, so there is nothing to point {} at\n\
             hint: add [daemons.NAME] tables to it, or run `mcpsm import --client {}` to take over the client's own servers",
            location.client.title(),
            location.client,
        );
    }
    let proxy = ProxyCommand::current()?;
    let mut file = ClientFile::load(&location)?;

    let mut out = format!("{}:\n", location.describe());
    let width = names.iter().map(String::len).max().unwrap_or(0);
    let mut changed = false;
    for name in &names {
        let line = match file.set_proxy(name, name, &proxy)? {
            SetOutcome::Added => format!("added      {name:width$}  mcpsm proxy --target {name}"),
            SetOutcome::Replaced(before) => format!("replaced   {name:width$}  was: {before}"),
            SetOutcome::Unchanged => format!("unchanged  {name:width$}"),
        };
        changed |= !line.starts_with("unchanged");
        out.push_str(&format!("  {}\n", line.trim_end()));
    }
    out.push_str(&format!("proxy command: {}\n", proxy.program));
    if !settings.registry_path.exists() {
        out.push_str(&format!(
            "note: {registry_display} does not exist, so these are mcpsm's embedded default daemons; `mcpsm import` adds your own\n"
        ));
    }

    let change = Change {
        path: location.path.clone(),
        display: location.display(),
        before: file.original.clone(),
        after: file.render().into_bytes(),
    };
    if !changed || change.is_noop() {
        out.push_str(&format!(
            "nothing to do: {} already runs every registry daemon through mcpsm\n",
            location.display()
        ));
        return print(&out);
    }
    if args.dry_run {
        out.push_str(&change.diff());
        out.push_str("dry run: nothing written\n");
        return print(&out);
    }
    let written = files::apply(std::slice::from_ref(&change), Keep::Backup)?;
    for w in &written {
        out.push_str(&w.summary(&location));
    }
    out.push_str(&format!(
        "{} reads the file when it starts: restart it (or start a new session) to use the proxies\n",
        location.client.title()
    ));
    print(&out)
}

/// Writes the report to stdout; a closed pipe surfaces as an io::Error (exit 0 in main).
pub(super) fn print(text: &str) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(ExitCode::SUCCESS)
}
