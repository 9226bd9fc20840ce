//! `mcpsm import`: a client's own MCP servers become registry daemons, and its entries become
//! proxies to them; `--undo` puts the client's file back from its newest backup.

use std::process::ExitCode;

use super::generate_config::print;
use super::Settings;
use crate::cli::ImportArgs;
use crate::clients::files::{self, Change, Keep};
use crate::clients::registry::{daemon_name, Placement, RegistryFile};
use crate::clients::sharing::{self, Choice};
use crate::clients::{ClientFile, Entry, Environment, Location, ProxyCommand, Server};
use crate::config::Registry;

/// One line of the summary, with the sharing mode chosen for an added stdio daemon.
struct Line {
    verb: &'static str,
    name: String,
    detail: String,
    sharing: Option<Choice>,
}

pub fn run(args: ImportArgs, settings: Settings) -> anyhow::Result<ExitCode> {
    let target = &args.target;
    let env = Environment::from_process()?;
    let location = target.client.location(target.scope, &env)?;
    if args.undo {
        return undo(&location, target.dry_run, args.force);
    }
    let code = import_one(&args, &settings, &location, target.dry_run)?;
    if !args.all_scopes {
        return Ok(code);
    }
    if location.client != crate::clients::Client::ClaudeCode {
        anyhow::bail!(
            "--all-scopes applies to claude-code, whose ~/.claude.json holds every project's servers\nhint: for {}, run the import in each project with `--scope project`",
            location.client
        );
    }
    let file = ClientFile::load(&location)?;
    for (dir, _) in file.project_servers() {
        let project = Environment {
            cwd: std::path::PathBuf::from(&dir),
            ..env.clone()
        };
        let local = target
            .client
            .location(crate::clients::Scope::Local, &project)?;
        println!();
        import_one(&args, &settings, &local, target.dry_run)?;
    }
    Ok(code)
}

/// Imports the servers at one location (a client file and scope); prints the summary.
fn import_one(
    args: &ImportArgs,
    settings: &Settings,
    location: &Location,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    let proxy = ProxyCommand::current()?;
    let mut file = ClientFile::load(location)?;
    if !file.exists() {
        anyhow::bail!(
            "nothing to import: {} does not exist\n\
             hint: that is where {} keeps its {} scope servers; `mcpsm generate-config --client {} --scope {}` creates it with proxies to the registry's daemons",
            location.display(),
            location.client.title(),
            location.scope,
            location.client,
            location.scope,
        );
    }
    let entries = file.entries(&proxy)?;
    let registry_display = location.display_other(&settings.registry_path);
    let mut registry = RegistryFile::load(&settings.registry_path, registry_display.clone())?;
    let origin = location.describe();

    let mut lines = Vec::new();
    let mut added: Vec<(String, Server)> = Vec::new();
    let mut rewrites: Vec<(String, String)> = Vec::new();
    let mut manager_note = None;
    match args.manager_port {
        Some(0) => anyhow::bail!("--manager-port must be 1-65535"),
        Some(port) if port != registry.manager_port() => {
            registry.set_manager_port(port);
            manager_note = Some(format!(
                "manager: [manager] port = {port} in {registry_display} (restart a running manager: `mcpsm manager stop`)\n"
            ));
        }
        Some(_) => {}
        None => {
            let port = registry.manager_port();
            let ours = crate::supervise::client::manager_on_other_port(&settings.paths, 0)
                .is_some_and(|m| m.port == port);
            if !ours && !crate::supervise::process::port_is_free(port) {
                manager_note = Some(format!(
                    "warning: the manager's port {port} is taken: {}\nhint: import again with `--manager-port PORT` (or MCPSM_MANAGER_PORT) to give the manager a free one\n",
                    crate::supervise::process::describe_port_in_use(port)
                ));
            }
        }
    }
    for (name, entry) in entries {
        match entry {
            Entry::Server(Server::Remote(remote)) if !args.remote => lines.push(Line {
                verb: "left",
                name,
                detail: format!(
                    "URL server {}: the client speaks HTTP to it itself (and may do its own OAuth); `--remote` makes it a url daemon",
                    remote.url
                ),
                sharing: None,
            }),
            Entry::Server(server) => match registry.place(&name, &server) {
                Placement::Existing(daemon) => {
                    lines.push(Line {
                        verb: "shared",
                        name: name.clone(),
                        detail: format!("the registry's `{daemon}` runs the same server"),
                        sharing: None,
                    });
                    rewrites.push((name, daemon));
                }
                Placement::New {
                    name: daemon,
                    renamed_from,
                } => {
                    let choice = match &server {
                        Server::Stdio(stdio) => Some(sharing::choose(stdio, args.sharing)),
                        Server::Remote(_) => None,
                    };
                    let port = registry.add(&daemon, &server, choice.as_ref(), &origin);
                    let what = match port {
                        Some(port) => format!("stdio daemon on port {port}"),
                        None => "url daemon".to_owned(),
                    };
                    let mut detail = format!("{what}: {}", server.summary());
                    if let Some(original) = renamed_from {
                        let base = daemon_name(&original);
                        let why = if base == daemon {
                            "a daemon name has only letters, digits, `-`, `_` and `.`".to_owned()
                        } else {
                            format!("the registry's `{base}` runs another server")
                        };
                        detail = format!("{detail} (`{original}` in the client; {why})");
                    }
                    lines.push(Line {
                        verb: "added",
                        name: daemon.clone(),
                        detail,
                        sharing: choice,
                    });
                    added.push((daemon.clone(), server));
                    rewrites.push((name, daemon));
                }
            },
            Entry::Proxy {
                this_binary: true,
                target,
            } => {
                let detail = match target {
                    Some(t) if registry.contains(&t) || registry_is_default(&registry, &t) => {
                        format!("already runs mcpsm proxy --target {t}")
                    }
                    Some(t) => format!(
                        "already runs mcpsm proxy --target {t}, but the registry has no `{t}`"
                    ),
                    None => "already runs mcpsm proxy".to_owned(),
                };
                lines.push(Line {
                    verb: "kept",
                    name,
                    detail,
                    sharing: None,
                });
            }
            Entry::Proxy {
                this_binary: false, ..
            } => lines.push(Line {
                verb: "skipped",
                name,
                detail: format!(
                    "it runs another mcpsm binary than this one ({}); left as is",
                    proxy.program
                ),
                sharing: None,
            }),
            Entry::Unsupported(reason) => lines.push(Line {
                verb: "skipped",
                name,
                detail: reason,
                sharing: None,
            }),
        }
    }

    let mut out = format!("import from {origin}:\n");
    if lines.is_empty() {
        out.push_str(&format!(
            "  (no servers under `{}`)\n",
            location.servers_key_display()
        ));
    }
    let width = lines.iter().map(|l| l.name.len()).max().unwrap_or(0);
    for line in &lines {
        out.push_str(&format!(
            "  {:9}{:width$}  {}\n",
            line.verb, line.name, line.detail
        ));
        if let Some(choice) = &line.sharing {
            out.push_str(&format!(
                "  {:9}{:width$}  sharing = \"{}\": {}\n",
                "",
                "",
                choice.sharing.as_str(),
                choice.reason
            ));
        }
    }
    if lines.iter().any(|l| l.sharing.is_some()) {
        out.push_str(&format!(
            "sharing: to change a daemon's mode, edit its `sharing` in {registry_display} (shared, per-project or isolated; then `mcpsm restart NAME`), or import with `--sharing MODE` for all\n"
        ));
    }
    if let Some(note) = &manager_note {
        out.push_str(note);
    }
    let projects = file.project_servers();
    if !args.all_scopes && location.scope == crate::clients::Scope::User && !projects.is_empty() {
        out.push_str(&format!(
            "note: {} project(s) in {} have servers of their own (local scope), not imported:\n",
            projects.len(),
            location.display()
        ));
        for (dir, names) in &projects {
            out.push_str(&format!("  {dir}: {}\n", names.join(", ")));
        }
        out.push_str("  `mcpsm import --all-scopes` imports them too, each kept in its project (or `--scope local` in one project)\n");
    }
    if rewrites.is_empty()
        && !manager_note
            .as_ref()
            .is_some_and(|n| n.starts_with("manager:"))
    {
        out.push_str(&format!(
            "nothing to do: every server in {} that mcpsm can take over already runs through it\n",
            location.display()
        ));
        return print(&out);
    }

    let (registry_text, warnings) = registry.render_checked(&added)?;
    for (entry, daemon) in &rewrites {
        file.set_proxy(entry, daemon, &proxy)?;
    }
    let changes = [
        Change {
            path: registry.path.clone(),
            display: registry_display.clone(),
            before: registry.original.clone().map(String::into_bytes),
            after: registry_text.into_bytes(),
        },
        Change {
            path: location.path.clone(),
            display: location.display(),
            before: file.original.clone(),
            after: file.render().into_bytes(),
        },
    ];
    for warning in &warnings {
        out.push_str(&format!("warning: {warning}\n"));
    }
    if dry_run {
        for change in changes.iter().filter(|c| !c.is_noop()) {
            out.push_str(&change.diff());
        }
        out.push_str("dry run: nothing written\n");
        return print(&out);
    }
    // The registry first: the client must never point at a daemon that does not exist yet.
    let written = files::apply(&changes, Keep::Backup)?;
    for w in &written {
        out.push_str(&w.summary(location));
    }
    if registry.original.is_none() {
        let defaults: Vec<String> = Registry::embedded().names().map(str::to_owned).collect();
        out.push_str(&format!(
            "note: {registry_display} is new, so mcpsm's embedded default daemons ({}) no longer apply\n",
            defaults.join(", ")
        ));
    }
    out.push_str(&format!(
        "undo: mcpsm import --client {} --scope {} --undo (restores {}; the registry keeps its new daemons)\n",
        location.client,
        location.scope,
        location.display()
    ));
    print(&out)
}

/// Whether `name` is an embedded default daemon and the registry file does not exist.
fn registry_is_default(registry: &RegistryFile, name: &str) -> bool {
    registry.original.is_none() && Registry::embedded().names().any(|n| n == name)
}

fn undo(location: &Location, dry_run: bool, force: bool) -> anyhow::Result<ExitCode> {
    let plan = files::plan_undo(&location.path, &location.display(), force)?;
    let backup = location.display_other(&plan.backup);
    let when = files::backup_time(&plan.backup).unwrap_or_else(|| "an unknown time".to_owned());
    let what = format!(
        "undoing mcpsm's change of {when} to {}\n",
        location.describe()
    );
    if dry_run {
        let mut out = what.clone();
        out.push_str(&format!(
            "would restore {} from {backup}\n",
            location.display()
        ));
        out.push_str(&plan.change.diff());
        out.push_str("dry run: nothing written\n");
        return print(&out);
    }
    let written = files::undo(&plan)?;
    let mut out = what;
    out.push_str(&format!("restored {} from {backup}\n", location.display()));
    if let Some(kept) = written.and_then(|w| w.kept) {
        out.push_str(&format!(
            "the text it replaced is in {}\n",
            location.display_other(&kept)
        ));
    }
    let older = files::backups(&location.path).map_or(0, |b| b.len());
    if older > 0 {
        out.push_str(&format!(
            "{older} older backup(s) left: run --undo again to go further back\n"
        ));
    }
    print(&out)
}
