//! Which `sharing` mode `mcpsm import` gives a stdio server, and why.
//!
//! Sharing one process between sessions is right for most servers (a knowledge graph, a
//! database, an index) and wrong for two kinds: servers that keep per-client state in the
//! process (a chain of thoughts, a browser and its pages) must be `isolated`, and servers that
//! work on "the current directory" (a `.` or relative path argument, `mcp-server-git` without
//! `--repository`) must run once per project, in it (`per-project`). A built-in list names the
//! known stateful servers; the rest is decided from the arguments. Every choice carries its
//! reason, which the import summary prints.

use crate::config::Sharing;

use super::Stdio;

/// The mode for one server and the reason, for the summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub sharing: Sharing,
    pub reason: String,
}

/// Servers known to keep per-session state in their process: (package or program, why).
const ISOLATED: &[(&str, &str)] = &[
    (
        "@modelcontextprotocol/server-sequential-thinking",
        "it keeps each session's chain of thoughts in the process",
    ),
    (
        "mcp-server-sequential-thinking",
        "it keeps each session's chain of thoughts in the process",
    ),
    ("@playwright/mcp", BROWSER),
    ("@executeautomation/playwright-mcp-server", BROWSER),
    ("@modelcontextprotocol/server-puppeteer", BROWSER),
    ("puppeteer-mcp-server", BROWSER),
    ("@browsermcp/mcp", BROWSER),
    ("chrome-devtools-mcp", BROWSER),
    ("@browserbasehq/mcp-server-browserbase", BROWSER),
    (
        "mcp/sequentialthinking",
        "it keeps each session's chain of thoughts in the process",
    ),
    ("mcp/puppeteer", BROWSER),
    ("mcp/playwright", BROWSER),
];

const BROWSER: &str = "browser automation: each session needs a browser and pages of its own";

/// Picks the mode for `server`: `forced` (from `--sharing`) when given, else the known list,
/// else the arguments.
pub fn choose(server: &Stdio, forced: Option<Sharing>) -> Choice {
    if let Some(sharing) = forced {
        return Choice {
            sharing,
            reason: "chosen with --sharing".to_owned(),
        };
    }
    let words: Vec<&str> = std::iter::once(server.command.as_str())
        .chain(server.args.iter().map(String::as_str))
        .collect();
    if let Some((package, why)) = ISOLATED
        .iter()
        .find(|(package, _)| words.iter().any(|w| names_package(w, package)))
    {
        return Choice {
            sharing: Sharing::Isolated,
            reason: format!("{why} (known per-session server {package})"),
        };
    }
    if server.cwd.is_none() {
        if let Some(arg) = server.args.iter().find(|a| is_relative_path(a)) {
            return Choice {
                sharing: Sharing::PerProject,
                reason: format!(
                    "argument `{arg}` is relative to the directory the client starts it in"
                ),
            };
        }
        let git = words.iter().any(|w| names_package(w, "mcp-server-git"));
        let repository = server
            .args
            .iter()
            .any(|a| a == "-r" || a == "--repository" || a.starts_with("--repository="));
        if git && !repository {
            return Choice {
                sharing: Sharing::PerProject,
                reason: "mcp-server-git without --repository works on the repository it runs in"
                    .to_owned(),
            };
        }
    }
    Choice {
        sharing: Sharing::Shared,
        reason: "no per-session state known: one process serves every session".to_owned(),
    }
}

/// Whether `word` (a program, an npm/PyPI spec such as `@playwright/mcp@latest`, or a path
/// into a package) names `package`.
fn names_package(word: &str, package: &str) -> bool {
    let Some(rest) = word.strip_prefix(package) else {
        return word.contains(&format!("/{package}/")) || word.ends_with(&format!("/{package}"));
    };
    // `package`, `package@version`, `package==1.0` (uvx/pip), `image:tag` (docker) or a path
    // inside it.
    rest.is_empty() || ["@", "==", ":", "/"].iter().any(|p| rest.starts_with(p))
}

/// `.`, `..`, `./x`, `../x`, `${PWD}`…, also as the value of `--option=…`.
fn is_relative_path(arg: &str) -> bool {
    let value = match arg.split_once('=') {
        Some((option, value)) if option.starts_with('-') => value,
        _ => arg,
    };
    value == "."
        || value == ".."
        || value.starts_with("./")
        || value.starts_with("../")
        || value.starts_with("${PWD}")
        || value.starts_with("$PWD")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stdio(command: &str, args: &[&str], cwd: Option<&str>) -> Stdio {
        Stdio {
            command: command.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: Vec::new(),
            cwd: cwd.map(str::to_owned),
        }
    }

    fn mode(command: &str, args: &[&str]) -> Sharing {
        choose(&stdio(command, args, None), None).sharing
    }

    #[test]
    fn known_stateful_servers_are_isolated_with_the_reason() {
        let choice = choose(
            &stdio(
                "npx",
                &["-y", "@modelcontextprotocol/server-sequential-thinking"],
                None,
            ),
            None,
        );
        assert_eq!(choice.sharing, Sharing::Isolated);
        assert!(choice.reason.contains("chain of thoughts"), "{choice:?}");
        assert_eq!(
            mode("npx", &["@playwright/mcp@latest", "--headless"]),
            Sharing::Isolated
        );
        assert_eq!(
            mode("npx", &["-y", "chrome-devtools-mcp@0.8"]),
            Sharing::Isolated
        );
        assert_eq!(
            mode("node", &["/opt/node_modules/@browsermcp/mcp/dist/index.js"]),
            Sharing::Isolated
        );
        assert_eq!(
            mode("mcp-server-sequential-thinking", &[]),
            Sharing::Isolated
        );
        assert_eq!(
            mode(
                "docker",
                &["run", "-i", "--rm", "mcp/sequentialthinking:latest"]
            ),
            Sharing::Isolated
        );
    }

    #[test]
    fn a_relative_path_argument_means_per_project() {
        let fs = ["-y", "@modelcontextprotocol/server-filesystem", "."];
        let choice = choose(&stdio("npx", &fs, None), None);
        assert_eq!(choice.sharing, Sharing::PerProject);
        assert!(choice.reason.contains("`.`"), "{choice:?}");
        assert_eq!(mode("server", &["--root=./src"]), Sharing::PerProject);
        assert_eq!(mode("server", &["../data"]), Sharing::PerProject);
        // A fixed cwd makes relative paths fixed too.
        assert_eq!(
            choose(&stdio("npx", &fs, Some("/home/u/project")), None).sharing,
            Sharing::Shared
        );
    }

    #[test]
    fn git_without_a_repository_is_per_project() {
        assert_eq!(mode("uvx", &["mcp-server-git"]), Sharing::PerProject);
        assert_eq!(
            mode("uvx", &["mcp-server-git", "--repository", "/home/u/repo"]),
            Sharing::Shared
        );
    }

    #[test]
    fn everything_else_is_shared_and_the_option_wins() {
        let memory = stdio("npx", &["-y", "@modelcontextprotocol/server-memory"], None);
        assert_eq!(choose(&memory, None).sharing, Sharing::Shared);
        assert_eq!(
            mode("uvx", &["mcp-server-sqlite", "--db-path", "/a.db"]),
            Sharing::Shared
        );
        assert_eq!(
            mode("npx", &["-y", "@acme/playwright-mcp-helper"]),
            Sharing::Shared
        );
        let forced = choose(&memory, Some(Sharing::Isolated));
        assert_eq!(forced.sharing, Sharing::Isolated);
        assert!(forced.reason.contains("--sharing"), "{forced:?}");
    }
}
