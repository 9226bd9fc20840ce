//! `mcpsm generate-config` and `mcpsm import` on realistic client files
//! (`tests/fixtures/clients/`), checked against golden outputs (`…/golden/`).
//!
//! Goldens are normalized: the mcpsm binary's absolute path reads `<MCPSM>`, the temp HOME
//! `<HOME>`, backup timestamps `<TIME>`. Fixtures use `<MCPSM>` (an entry that is already a
//! proxy) and `<PROJECT>` (the directory the commands run in) the same way. After a deliberate
//! change, rewrite the goldens with `MCPSM_UPDATE_GOLDEN=1 cargo test --test it clients::` and
//! review the diff.
//!
//! Tests run as root, and root ignores permission bits, so "unwritable" is made in ways root
//! cannot bypass: a parent directory that is really a regular file (ENOTDIR), and a file-size
//! limit of zero (`RLIMIT_FSIZE`, EFBIG).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::TestHome;

const CLIENTS: [&str; 7] = [
    "claude-code",
    "claude-desktop",
    "cursor",
    "vscode",
    "codex",
    "gemini",
    "windsurf",
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clients")
}

/// The mcpsm binary by the canonical path it writes into proxy entries.
fn mcpsm_path() -> String {
    std::fs::canonicalize(crate::support::bin())
        .expect("canonical binary path")
        .display()
        .to_string()
}

/// A client's user-scope file (relative to HOME) and its fixture.
fn client_file(client: &str) -> (&'static str, &'static str) {
    match client {
        "claude-code" => (".claude.json", "claude.json"),
        "claude-desktop" => (
            ".config/Claude/claude_desktop_config.json",
            "claude_desktop_config.json",
        ),
        "cursor" => (".cursor/mcp.json", "cursor-mcp.json"),
        "vscode" => (".config/Code/User/mcp.json", "vscode-mcp.json"),
        "codex" => (".codex/config.toml", "codex-config.toml"),
        "gemini" => (".gemini/settings.json", "gemini-settings.json"),
        "windsurf" => (
            ".codeium/windsurf/mcp_config.json",
            "windsurf-mcp_config.json",
        ),
        other => panic!("no fixture for client {other}"),
    }
}

/// A temp HOME (also MCPSM_HOME) with a project directory the commands run in.
struct Setup {
    home: TestHome,
}

impl Setup {
    fn new() -> Setup {
        let setup = Setup {
            home: TestHome::new(),
        };
        std::fs::create_dir_all(setup.project()).expect("create the project dir");
        setup
    }

    fn project(&self) -> PathBuf {
        self.home.path().join("src/api")
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.home.path().join(relative)
    }

    /// Installs the fixture of `client` at its user-scope place; returns its path and bytes.
    fn install(&self, client: &str) -> (PathBuf, Vec<u8>) {
        let (relative, fixture) = client_file(client);
        let text = std::fs::read_to_string(fixtures().join(fixture)).expect("read fixture");
        let text = text
            .replace("<MCPSM>", &mcpsm_path())
            .replace("<PROJECT>", &self.project().display().to_string());
        let path = self.path(relative);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, &text).expect("write fixture");
        (path, text.into_bytes())
    }

    fn install_registry(&self) -> Vec<u8> {
        let text = std::fs::read(fixtures().join("registry.toml")).expect("read registry");
        std::fs::write(self.path("daemons.toml"), &text).expect("write registry");
        text
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = self.home.mcpsm();
        command
            .env_remove("RUST_LOG")
            .current_dir(self.project())
            .args(args);
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run mcpsm")
    }

    /// Runs and expects success; returns stdout, normalized.
    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "mcpsm {args:?} failed ({:?})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        self.normalize(&String::from_utf8_lossy(&output.stdout))
    }

    /// Runs and expects failure; returns stderr, normalized.
    #[track_caller]
    fn fails(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            !output.status.success(),
            "mcpsm {args:?} succeeded, expected an error\n--- stdout ---\n{}",
            String::from_utf8_lossy(&output.stdout)
        );
        self.normalize(&String::from_utf8_lossy(&output.stderr))
    }

    fn read(&self, relative: &str) -> String {
        let text = std::fs::read_to_string(self.path(relative))
            .unwrap_or_else(|e| panic!("read {relative}: {e}"));
        self.normalize(&text)
    }

    fn normalize(&self, text: &str) -> String {
        let text = text
            .replace(&mcpsm_path(), "<MCPSM>")
            .replace(&self.home.path().display().to_string(), "<HOME>");
        mask_timestamps(&text)
    }

    /// Every file under HOME with its bytes, to prove nothing changed.
    fn snapshot(&self) -> Vec<(PathBuf, Vec<u8>)> {
        fn walk(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
            let mut entries: Vec<_> = std::fs::read_dir(dir)
                .expect("read dir")
                .map(|e| e.expect("entry").path())
                .collect();
            entries.sort();
            for path in entries {
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    let bytes = std::fs::read(&path).expect("read");
                    out.push((path, bytes));
                }
            }
        }
        let mut out = Vec::new();
        walk(self.home.path(), &mut out);
        out
    }
}

/// `mcpsm-backup-20261126T065530` → `mcpsm-backup-<TIME>` (and `mcpsm-undone-…`).
fn mask_timestamps(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let next = ["mcpsm-backup-", "mcpsm-undone-"]
            .into_iter()
            .filter_map(|mark| rest.find(mark).map(|i| (i, mark)))
            .min();
        let Some((i, mark)) = next else { break };
        let after = &rest[i + mark.len()..];
        let stamp_len = after
            .char_indices()
            .take_while(|(_, c)| c.is_ascii_digit() || *c == 'T')
            .count();
        out.push_str(&rest[..i + mark.len()]);
        out.push_str("<TIME>");
        rest = &after[stamp_len..];
    }
    out.push_str(rest);
    out
}

/// Compares `actual` with `golden/<name>`, or rewrites it with `MCPSM_UPDATE_GOLDEN=1`.
#[track_caller]
fn assert_golden(name: &str, actual: &str) {
    let path = fixtures().join("golden").join(name);
    if std::env::var_os("MCPSM_UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir golden");
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read golden {}: {e}\nhint: MCPSM_UPDATE_GOLDEN=1 cargo test --test it clients:: writes it",
            path.display()
        )
    });
    if expected != actual {
        let diff = similar::TextDiff::from_lines(&expected, actual)
            .unified_diff()
            .header("golden", "actual")
            .to_string();
        panic!(
            "{} differs from the golden:\n{diff}\nhint: if the change is intended, run MCPSM_UPDATE_GOLDEN=1 cargo test --test it clients:: and review the diff",
            path.display()
        );
    }
}

fn extension(client: &str) -> &'static str {
    if client == "codex" {
        "toml"
    } else {
        "json"
    }
}

#[test]
fn generate_config_matches_the_goldens_for_every_client() {
    for client in CLIENTS {
        let setup = Setup::new();
        setup.install_registry();
        setup.install(client);
        let stdout = setup.ok(&["generate-config", "--client", client]);
        assert_golden(&format!("generate-config/{client}.out"), &stdout);
        let written = setup.read(client_file(client).0);
        assert_golden(
            &format!("generate-config/{client}.{}", extension(client)),
            &written,
        );
    }
}

#[test]
fn import_matches_the_goldens_for_every_client() {
    for client in CLIENTS {
        let setup = Setup::new();
        setup.install_registry();
        setup.install(client);
        let stdout = setup.ok(&["import", "--client", client, "--remote"]);
        assert_golden(&format!("import/{client}.out"), &stdout);
        let written = setup.read(client_file(client).0);
        assert_golden(&format!("import/{client}.{}", extension(client)), &written);
        assert_golden(
            &format!("import/{client}.daemons.toml"),
            &setup.read("daemons.toml"),
        );
    }
}

#[test]
fn generate_config_keeps_every_unrelated_key_of_a_large_claude_json() {
    let setup = Setup::new();
    setup.install_registry();
    let (path, before) = setup.install("claude-code");
    setup.ok(&["generate-config"]);
    let after = std::fs::read(&path).expect("read");
    let parse =
        |bytes: &[u8]| -> serde_json::Value { serde_json::from_slice(bytes).expect("valid JSON") };
    let (mut before_doc, mut after_doc) = (parse(&before), parse(&after));
    let projects = before_doc["projects"]
        .as_object()
        .map_or(0, serde_json::Map::len);
    assert!(projects >= 50, "the fixture has {projects} projects");
    let before_servers = before_doc
        .as_object_mut()
        .and_then(|o| o.remove("mcpServers"))
        .expect("servers before");
    let after_servers = after_doc
        .as_object_mut()
        .and_then(|o| o.remove("mcpServers"))
        .expect("servers after");
    // Serialized with preserve_order, equal strings mean equal values in the same key order.
    assert_eq!(
        serde_json::to_string(&before_doc).expect("json"),
        serde_json::to_string(&after_doc).expect("json"),
        "everything but mcpServers is kept, in order"
    );
    for (name, server) in before_servers.as_object().expect("object") {
        if name != "memory" && name != "everything" && name != "search" {
            assert_eq!(&after_servers[name], server, "server `{name}` is kept");
        }
    }
    // Claude Code's own formatting (2 spaces, no final newline) is kept, so the diff is small.
    let (before_text, after_text) = (
        String::from_utf8_lossy(&before),
        String::from_utf8_lossy(&after),
    );
    assert!(!after_text.ends_with('\n'));
    let changed = similar::TextDiff::from_lines(before_text.as_ref(), after_text.as_ref())
        .iter_all_changes()
        .filter(|c| c.tag() != similar::ChangeTag::Equal)
        .count();
    assert!(changed < 40, "{changed} lines changed in a 1700-line file");
}

#[test]
fn import_then_undo_restores_the_original_byte_for_byte() {
    for client in CLIENTS {
        let setup = Setup::new();
        setup.install_registry();
        let (path, original) = setup.install(client);
        setup.ok(&["import", "--client", client]);
        assert_ne!(
            std::fs::read(&path).expect("read"),
            original,
            "{client}: import changed the file"
        );
        let stdout = setup.ok(&["import", "--client", client, "--undo"]);
        assert_eq!(
            std::fs::read(&path).expect("read"),
            original,
            "{client}: --undo restores the original bytes"
        );
        let (relative, _) = client_file(client);
        assert!(
            stdout.starts_with("undoing mcpsm's change of "),
            "{client}: --undo names the change it undoes: {stdout}"
        );
        assert!(
            stdout.contains(&format!(
                "restored ~/{relative} from ~/{relative}.mcpsm-backup-<TIME>\n"
            )),
            "{client}: {stdout}"
        );
        assert!(
            stdout.contains(&format!("~/{relative}.mcpsm-undone-<TIME>")),
            "{stdout}"
        );
    }
}

#[test]
fn import_twice_changes_nothing_the_second_time() {
    for client in CLIENTS {
        let setup = Setup::new();
        setup.install_registry();
        setup.install(client);
        setup.ok(&["import", "--client", client]);
        let before = setup.snapshot();
        let stdout = setup.ok(&["import", "--client", client]);
        assert!(
            stdout.contains("nothing to do: every server in"),
            "{client}: {stdout}"
        );
        assert!(
            setup.snapshot() == before,
            "{client}: the second import wrote something"
        );
    }
}

#[test]
fn generate_config_twice_changes_nothing_the_second_time() {
    let setup = Setup::new();
    setup.install_registry();
    let (path, _) = setup.install("codex");
    setup.ok(&["generate-config", "--client", "codex"]);
    let before = setup.snapshot();
    let stdout = setup.ok(&["generate-config", "--client", "codex"]);
    assert!(stdout.contains("nothing to do:"), "{stdout}");
    assert!(setup.snapshot() == before, "nothing was written");
    let text = std::fs::read_to_string(path).expect("read");
    assert_eq!(text.matches("[mcp_servers.memory]").count(), 1, "{text}");
    assert!(text.contains("# Knowledge-graph memory, the same server Claude Code uses."));
    assert!(text.contains("startup_timeout_sec = 20 # npx is slow on a cold cache"));
}

#[test]
fn dry_run_writes_nothing_and_prints_a_diff() {
    let setup = Setup::new();
    setup.install_registry();
    setup.install("claude-code");
    let before = setup.snapshot();
    for command in ["generate-config", "import"] {
        let stdout = setup.ok(&[command, "--dry-run"]);
        assert!(
            stdout.contains("\n--- ~/.claude.json\n+++ ~/.claude.json\n@@ "),
            "{command}: {stdout}"
        );
        assert!(
            stdout.contains("\n+      \"command\": \"<MCPSM>\",\n"),
            "{stdout}"
        );
        assert!(stdout.ends_with("dry run: nothing written\n"), "{stdout}");
        assert!(
            setup.snapshot() == before,
            "{command} --dry-run wrote nothing"
        );
    }
    let stdout = setup.ok(&["import", "--dry-run"]);
    assert!(
        stdout.contains("\n--- ~/daemons.toml\n+++ ~/daemons.toml\n"),
        "{stdout}"
    );
}

#[test]
fn generate_config_creates_a_missing_file_without_a_backup() {
    let setup = Setup::new();
    setup.install_registry();
    let stdout = setup.ok(&[
        "generate-config",
        "--client",
        "cursor",
        "--scope",
        "project",
    ]);
    assert!(
        stdout.contains("created ~/src/api/.cursor/mcp.json\n"),
        "{stdout}"
    );
    let written = setup.read("src/api/.cursor/mcp.json");
    assert!(
        written.starts_with(
            "{\n  \"mcpServers\": {\n    \"everything\": {\n      \"command\": \"<MCPSM>\",\n"
        ),
        "{written}"
    );
    assert!(written.ends_with("}\n"));
}

#[test]
fn claude_code_local_scope_imports_the_projects_own_servers() {
    let setup = Setup::new();
    setup.install_registry();
    let (path, _) = setup.install("claude-code");
    let stdout = setup.ok(&["import", "--scope", "local"]);
    assert!(
        stdout.starts_with("import from ~/.claude.json (claude-code, local scope):\n"),
        "{stdout}"
    );
    assert!(stdout.contains("  added    postgres  stdio daemon on port 3102: npx -y @modelcontextprotocol/server-postgres postgresql://localhost/api_dev\n"), "{stdout}");
    assert!(
        stdout.contains("  kept     memory    already runs mcpsm proxy --target memory\n"),
        "{stdout}"
    );
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("read")).expect("json");
    let project = setup.project().display().to_string();
    assert_eq!(
        doc["projects"][&project]["mcpServers"]["postgres"]["args"],
        serde_json::json!(["proxy", "--target", "postgres"])
    );
    // The user-scope servers are not touched by a local-scope import.
    assert_eq!(doc["mcpServers"]["memory"]["command"], "npx");
    let registry = setup.read("daemons.toml");
    assert!(
        registry.contains("cwd = \"<HOME>/src/api\"\n"),
        "{registry}"
    );
}

#[test]
fn a_name_taken_by_another_server_gets_a_visible_new_name() {
    let setup = Setup::new();
    setup.install_registry();
    setup.install("cursor");
    let stdout = setup.ok(&["import", "--client", "cursor"]);
    assert!(
        stdout.contains("  added    memory-2    stdio daemon on port 3102: node /home/alice/mcp/memory/dist/index.js (`memory` in the client; the registry's `memory` runs another server)\n"),
        "{stdout}"
    );
    let written: serde_json::Value =
        serde_json::from_str(&setup.read(".cursor/mcp.json")).expect("json");
    assert_eq!(
        written["mcpServers"]["memory"]["args"],
        serde_json::json!(["proxy", "--target", "memory-2"])
    );
}

#[test]
fn the_same_server_in_two_clients_shares_one_daemon() {
    let setup = Setup::new();
    setup.install("claude-code");
    setup.install("windsurf");
    setup.ok(&["import"]);
    let stdout = setup.ok(&["import", "--client", "windsurf"]);
    let shared = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("shared"));
    assert_eq!(
        shared.map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")),
        Some("shared memory the registry's `memory` runs the same server".into()),
        "{stdout}"
    );
    let registry = setup.read("daemons.toml");
    assert_eq!(registry.matches("[daemons.memory").count(), 1, "{registry}");
}

#[test]
fn unknown_client_is_refused_with_the_valid_names() {
    let setup = Setup::new();
    for command in ["generate-config", "import"] {
        let output = setup.run(&[command, "--client", "cusor"]);
        assert_eq!(output.status.code(), Some(2), "a usage error");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("unknown client `cusor` (did you mean `cursor`?)"),
            "{stderr}"
        );
        assert!(
            stderr.contains("claude-code, claude-desktop, cursor, vscode, codex, gemini, windsurf"),
            "{stderr}"
        );
    }
}

#[test]
fn a_scope_the_client_lacks_is_refused() {
    let setup = Setup::new();
    let stderr = setup.fails(&[
        "generate-config",
        "--client",
        "windsurf",
        "--scope",
        "project",
    ]);
    assert!(
        stderr.contains(
            "error: windsurf has no `project` scope\nhint: Windsurf has only the `user` scope"
        ),
        "{stderr}"
    );
}

#[test]
fn invalid_json_is_reported_at_its_line_and_the_file_left_untouched() {
    let setup = Setup::new();
    setup.install_registry();
    let path = setup.path(".gemini/settings.json");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let broken = "{\n  \"theme\": \"GitHub\",\n  \"mcpServers\": {\n    \"a\": {\"command\": \"x\"},,\n  }\n}\n";
    std::fs::write(&path, broken).expect("write");
    let before = setup.snapshot();
    for command in ["generate-config", "import"] {
        let stderr = setup.fails(&[command, "--client", "gemini"]);
        assert!(
            stderr.contains("error: ~/.gemini/settings.json:4:27: invalid JSON: "),
            "{command}: {stderr}"
        );
        assert!(stderr.contains("\nhint: ") && stderr.contains("left the file as it was"));
        assert!(setup.snapshot() == before, "{command} changed nothing");
    }
}

#[test]
fn json_comments_get_their_own_hint() {
    let setup = Setup::new();
    setup.install_registry();
    let path = setup.path(".config/Code/User/mcp.json");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&path, "{\n  // my servers\n  \"servers\": {}\n}\n").expect("write");
    let stderr = setup.fails(&["generate-config", "--client", "vscode"]);
    assert!(
        stderr.contains("~/.config/Code/User/mcp.json:2:3: invalid JSON"),
        "{stderr}"
    );
    assert!(stderr.contains("hint: the file has a comment"), "{stderr}");
}

#[test]
fn a_parent_that_is_a_file_makes_the_write_fail_cleanly() {
    // Root ignores permission bits, not ENOTDIR: ~/.cursor is a regular file here.
    let setup = Setup::new();
    setup.install_registry();
    std::fs::write(setup.path(".cursor"), "not a directory").expect("write");
    let before = setup.snapshot();
    let stderr = setup.fails(&["generate-config", "--client", "cursor"]);
    assert!(
        stderr.starts_with("error: cannot write ~/.cursor/mcp.json: "),
        "{stderr}"
    );
    assert!(
        stderr.contains("hint: check that <HOME>/.cursor is a directory you can write to"),
        "{stderr}"
    );
    assert!(stderr.contains("(nothing was changed)"), "{stderr}");
    assert!(setup.snapshot() == before);
}

#[test]
fn a_file_size_limit_leaves_the_client_file_untouched() {
    // RLIMIT_FSIZE binds root too: every write of a byte fails with EFBIG.
    let setup = Setup::new();
    setup.install_registry();
    setup.install("claude-code");
    let before = setup.snapshot();
    let mut command = setup.command(&["generate-config"]);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: libc::RLIM_INFINITY,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let output = command.output().expect("run");
    let stderr = setup.normalize(&String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.starts_with("error: cannot write ~/.claude.json: File too large"),
        "{stderr}"
    );
    assert!(
        setup.snapshot() == before,
        "no file, temp file or backup was left"
    );
}

#[test]
fn an_unwritable_registry_leaves_the_client_file_untouched() {
    let setup = Setup::new();
    setup.install("claude-code");
    std::fs::write(setup.path("registry-dir"), "a file, not a directory").expect("write");
    let before = setup.snapshot();
    let mut command = setup.command(&["import"]);
    command.env("MCPSM_REGISTRY", setup.path("registry-dir/daemons.toml"));
    let output = command.output().expect("run");
    let stderr = setup.normalize(&String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.starts_with("error: cannot write ~/registry-dir/daemons.toml: "),
        "{stderr}"
    );
    assert!(
        setup.snapshot() == before,
        "the client file was not rewritten"
    );
}

#[test]
fn import_without_the_file_says_there_is_nothing_to_import() {
    let setup = Setup::new();
    let stderr = setup.fails(&["import", "--client", "codex"]);
    assert!(
        stderr.starts_with("error: nothing to import: ~/.codex/config.toml does not exist\nhint: "),
        "{stderr}"
    );
}

#[test]
fn undo_without_a_backup_says_so() {
    let setup = Setup::new();
    setup.install("cursor");
    let stderr = setup.fails(&["import", "--client", "cursor", "--undo"]);
    assert!(
        stderr.starts_with("error: no mcpsm backup of ~/.cursor/mcp.json to restore\nhint: "),
        "{stderr}"
    );
}

#[test]
fn an_invalid_registry_stops_import_before_anything_is_written() {
    let setup = Setup::new();
    setup.install("claude-code");
    setup
        .home
        .write_registry("[daemons.broken]\ncommand = \"x\"\n# no port\n");
    let before = setup.snapshot();
    let stderr = setup.fails(&["import"]);
    assert!(
        stderr.contains("daemon `broken` has a `command` but no `port`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("mcpsm import changes nothing while the registry is invalid"),
        "{stderr}"
    );
    assert!(setup.snapshot() == before);
}

/// A Claude Code file with servers of each kind of sharing.
fn install_sharing_servers(setup: &Setup) {
    let servers = serde_json::json!({
        "mcpServers": {
            "thinking": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-sequential-thinking"]},
            "files": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "."]},
            "git": {"command": "uvx", "args": ["mcp-server-git"]},
            "memory": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-memory"]}
        }
    });
    std::fs::write(
        setup.path(".claude.json"),
        serde_json::to_string_pretty(&servers).expect("serialize"),
    )
    .expect("write ~/.claude.json");
}

/// The `sharing` of each daemon in the registry.
fn sharing_modes(setup: &Setup) -> Vec<(String, String)> {
    let registry: toml::Table = setup
        .read("daemons.toml")
        .parse()
        .expect("the registry is TOML");
    let daemons = registry["daemons"].as_table().expect("[daemons]");
    daemons
        .iter()
        .map(|(name, daemon)| {
            let sharing = daemon["sharing"].as_str().unwrap_or("<none>");
            (name.clone(), sharing.to_owned())
        })
        .collect()
}

/// The summary's `sharing = …` line under the `added` line of `name`.
#[track_caller]
fn sharing_line<'a>(stdout: &'a str, name: &str) -> &'a str {
    let mut lines = stdout.lines();
    lines
        .find(|l| l.split_whitespace().take(2).eq(["added", name]))
        .and_then(|_| lines.next())
        .map(str::trim)
        .filter(|l| l.starts_with("sharing = "))
        .unwrap_or_else(|| panic!("no sharing line for {name}: {stdout}"))
}

#[test]
fn import_chooses_a_sharing_mode_per_server_and_says_why() {
    let setup = Setup::new();
    install_sharing_servers(&setup);
    let stdout = setup.ok(&["import"]);
    let thinking = sharing_line(&stdout, "thinking");
    assert!(
        thinking.starts_with("sharing = \"isolated\": ") && thinking.contains("chain of thoughts"),
        "{stdout}"
    );
    let files = sharing_line(&stdout, "files");
    assert!(
        files.starts_with("sharing = \"per-project\": ") && files.contains("`.`"),
        "{stdout}"
    );
    assert!(
        sharing_line(&stdout, "git").starts_with("sharing = \"per-project\": mcp-server-git"),
        "{stdout}"
    );
    assert!(
        sharing_line(&stdout, "memory").starts_with("sharing = \"shared\": "),
        "{stdout}"
    );
    assert!(
        stdout.contains("sharing: to change a daemon's mode, edit its `sharing` in ~/daemons.toml")
            && stdout.contains("--sharing MODE"),
        "says how to change a choice: {stdout}"
    );
    assert_eq!(
        sharing_modes(&setup),
        [
            ("files".to_owned(), "per-project".to_owned()),
            ("git".to_owned(), "per-project".to_owned()),
            ("memory".to_owned(), "shared".to_owned()),
            ("thinking".to_owned(), "isolated".to_owned()),
        ]
    );
}

#[test]
fn import_sharing_option_overrides_every_choice() {
    let setup = Setup::new();
    install_sharing_servers(&setup);
    let stdout = setup.ok(&["import", "--sharing", "shared"]);
    for name in ["thinking", "files", "git", "memory"] {
        assert_eq!(
            sharing_line(&stdout, name),
            "sharing = \"shared\": chosen with --sharing",
            "{stdout}"
        );
    }
    assert!(sharing_modes(&setup).iter().all(|(_, s)| s == "shared"));
    let refused = setup.fails(&["import", "--sharing", "everyone"]);
    assert!(
        refused.contains("expected shared, per-project or isolated"),
        "{refused}"
    );
}

/// Runs `mcpsm ARGS` with extra environment; expects success; returns stdout.
fn ok_with(setup: &Setup, env: &[(&str, String)], args: &[&str]) -> String {
    let mut command = setup.command(args);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("run mcpsm");
    assert!(
        output.status.success(),
        "mcpsm {args:?} failed\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn import_leaves_remote_http_entries_as_they_are_unless_asked() {
    let setup = Setup::new();
    setup.install_registry();
    let (path, before) = setup.install("claude-code");
    let stdout = setup.ok(&["import"]);
    assert!(
        stdout.contains("  left     github ")
            && stdout.contains("`--remote` makes it a url daemon"),
        "{stdout}"
    );
    let parse =
        |bytes: &[u8]| -> serde_json::Value { serde_json::from_slice(bytes).expect("json") };
    let after = parse(&std::fs::read(&path).expect("read"));
    let before = parse(&before);
    assert_eq!(
        after["mcpServers"]["github"],
        before["mcpServers"]["github"]
    );
    assert_eq!(
        after["mcpServers"]["context7"],
        before["mcpServers"]["context7"]
    );
    assert_eq!(
        after["mcpServers"]["memory"]["args"][0], "proxy",
        "stdio servers are still imported"
    );
    assert!(!setup.read("daemons.toml").contains("api.githubcopilot.com"));
    let stdout = setup.ok(&["import", "--remote"]);
    assert!(
        stdout.contains("url daemon: https://api.githubcopilot.com/mcp/"),
        "{stdout}"
    );
    let after = parse(&std::fs::read(&path).expect("read"));
    assert_eq!(
        after["mcpServers"]["github"]["args"],
        serde_json::json!(["proxy", "--target", "github"])
    );
}

#[test]
fn import_gives_new_daemons_ports_free_now() {
    let setup = Setup::new();
    setup.install_registry();
    setup.install("claude-code");
    // Something else listens on the first port import would try.
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = held.local_addr().expect("addr").port();
    let stdout = ok_with(
        &setup,
        &[("MCPSM_FIRST_PORT", taken.to_string())],
        &["import"],
    );
    let registry = setup.read("daemons.toml");
    assert!(
        !registry.contains(&format!("port = {taken}\n")),
        "a port in use was given out:\n{registry}"
    );
    let given: Vec<u16> = stdout
        .lines()
        .filter_map(|l| {
            l.split("stdio daemon on port ")
                .nth(1)?
                .split(':')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(!given.is_empty(), "{stdout}");
    for port in given {
        assert!(port > taken, "{stdout}");
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} is free"
        );
    }
    drop(held);
}

#[test]
fn import_manager_port_sets_the_managers_port() {
    let setup = Setup::new();
    setup.install("claude-code");
    let port = crate::support::managed::listen_port();
    let stdout = setup.ok(&["import", "--manager-port", &port.to_string()]);
    assert!(
        stdout.contains(&format!("[manager] port = {port}")),
        "{stdout}"
    );
    let registry = setup.read("daemons.toml");
    assert!(
        registry.contains(&format!("[manager]\nport = {port}\n")),
        "{registry}"
    );
    // The environment variable does the same.
    let other = crate::support::managed::listen_port();
    ok_with(
        &setup,
        &[("MCPSM_MANAGER_PORT", other.to_string())],
        &["import"],
    );
    let registry = setup.read("daemons.toml");
    assert!(
        registry.contains(&format!("port = {other}\n")),
        "{registry}"
    );
}

#[test]
fn undo_refuses_a_file_the_client_changed_since_unless_forced() {
    let setup = Setup::new();
    setup.install_registry();
    let (path, original) = setup.install("claude-code");
    setup.ok(&["import"]);
    // Claude Code bumps a counter and adds a project after the import.
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    doc["numStartups"] = serde_json::json!(4242);
    doc["projects"]["/new/project"] = serde_json::json!({ "mcpServers": {} });
    let edited = serde_json::to_vec_pretty(&doc).expect("json");
    std::fs::write(&path, &edited).expect("write");

    let output = setup.run(&["import", "--undo"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "undo over later edits must be refused: {stderr}"
    );
    assert!(
        stderr.contains("changed after mcpsm wrote it at ") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&path).expect("read"),
        edited,
        "nothing was restored"
    );

    let stdout = setup.ok(&["import", "--undo", "--force"]);
    assert!(stdout.contains("undoing mcpsm's change of "), "{stdout}");
    assert!(stdout.contains("(claude-code, user scope)"), "{stdout}");
    assert_eq!(std::fs::read(&path).expect("read"), original);
}

#[test]
fn project_scoped_servers_are_reported_and_imported_with_all_scopes_in_their_scope() {
    let setup = Setup::new();
    setup.install_registry();
    let (path, _) = setup.install("claude-code");
    let project = setup.project().display().to_string();
    let stdout = setup.ok(&["import"]);
    assert!(
        stdout.contains("have servers of their own (local scope), not imported:")
            && stdout.contains("postgres")
            && stdout.contains("--all-scopes"),
        "a user-scope import names the project servers it leaves: {stdout}"
    );
    let read = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json")
    };
    assert_eq!(
        read()["projects"][&project]["mcpServers"]["postgres"]["command"],
        "npx"
    );

    let stdout = setup.ok(&["import", "--all-scopes"]);
    assert!(stdout.contains("(claude-code, local scope):"), "{stdout}");
    let doc = read();
    assert_eq!(
        doc["projects"][&project]["mcpServers"]["postgres"]["args"],
        serde_json::json!(["proxy", "--target", "postgres"]),
        "{stdout}"
    );
    assert!(
        doc["mcpServers"].get("postgres").is_none(),
        "a project's server stays in its project, not promoted to every project"
    );
    assert!(setup
        .read("daemons.toml")
        .contains("cwd = \"<HOME>/src/api\"\n"));
}
