//! Unit tests of reading and merging client files (the integration tests in tests/it/clients.rs
//! drive the binary on realistic fixtures).

use super::*;

fn env(dir: &Path) -> Environment {
    Environment {
        home: dir.to_path_buf(),
        cwd: dir.join("project"),
        xdg_config_home: None,
        codex_home: None,
        appdata: None,
        os: Os::Linux,
    }
}

fn proxy() -> ProxyCommand {
    ProxyCommand {
        program: "/opt/mcpsm/bin/mcpsm".into(),
    }
}

fn load(client: Client, scope: Scope, text: &str) -> (tempfile::TempDir, ClientFile) {
    let dir = tempfile::tempdir().expect("temp dir");
    let location = client.location(scope, &env(dir.path())).expect("location");
    std::fs::create_dir_all(location.path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&location.path, text).expect("write");
    let file = ClientFile::load(&location).expect("load");
    (dir, file)
}

/// Where `client` keeps `scope`'s servers under `env`, with `/` for every separator (so one
/// golden text holds on every OS), or the error.
fn located(client: Client, scope: Scope, env: &Environment) -> String {
    client
        .location(scope, env)
        .map(|l| l.path.display().to_string().replace('\\', "/"))
        .unwrap_or_else(|e| e.to_string())
}

/// Each client's files on macOS: desktop apps under `~/Library/Application Support`.
#[test]
fn every_client_knows_its_files_on_macos() {
    let env = Environment {
        os: Os::MacOs,
        ..env(Path::new("/Users/u"))
    };
    let path = |client: Client, scope| located(client, scope, &env);
    assert_eq!(
        path(Client::ClaudeDesktop, Scope::User),
        "/Users/u/Library/Application Support/Claude/claude_desktop_config.json"
    );
    assert_eq!(
        path(Client::VsCode, Scope::User),
        "/Users/u/Library/Application Support/Code/User/mcp.json"
    );
    assert_eq!(
        path(Client::ClaudeCode, Scope::User),
        "/Users/u/.claude.json"
    );
    assert_eq!(
        path(Client::Cursor, Scope::User),
        "/Users/u/.cursor/mcp.json"
    );
    assert_eq!(
        path(Client::Codex, Scope::User),
        "/Users/u/.codex/config.toml"
    );
    assert_eq!(
        path(Client::Gemini, Scope::User),
        "/Users/u/.gemini/settings.json"
    );
    assert_eq!(
        path(Client::Windsurf, Scope::User),
        "/Users/u/.codeium/windsurf/mcp_config.json"
    );
    assert_eq!(
        path(Client::VsCode, Scope::Project),
        "/Users/u/project/.vscode/mcp.json"
    );
}

/// Each client's files on Windows: desktop apps under `%APPDATA%`, the rest under the profile.
#[test]
fn every_client_knows_its_files_on_windows() {
    let home = Path::new(r"C:\Users\u");
    let env = Environment {
        os: Os::Windows,
        appdata: Some(PathBuf::from(r"C:\Users\u\AppData\Roaming")),
        cwd: home.join("project"),
        ..env(home)
    };
    let path = |client: Client, scope| located(client, scope, &env);
    assert_eq!(
        path(Client::ClaudeDesktop, Scope::User),
        "C:/Users/u/AppData/Roaming/Claude/claude_desktop_config.json"
    );
    assert_eq!(
        path(Client::VsCode, Scope::User),
        "C:/Users/u/AppData/Roaming/Code/User/mcp.json"
    );
    assert_eq!(
        path(Client::ClaudeCode, Scope::User),
        "C:/Users/u/.claude.json"
    );
    assert_eq!(
        path(Client::Cursor, Scope::User),
        "C:/Users/u/.cursor/mcp.json"
    );
    assert_eq!(
        path(Client::Codex, Scope::User),
        "C:/Users/u/.codex/config.toml"
    );
    assert_eq!(
        path(Client::Gemini, Scope::User),
        "C:/Users/u/.gemini/settings.json"
    );
    assert_eq!(
        path(Client::Windsurf, Scope::User),
        "C:/Users/u/.codeium/windsurf/mcp_config.json"
    );
    assert_eq!(
        path(Client::Cursor, Scope::Project),
        "C:/Users/u/project/.cursor/mcp.json"
    );
    // Without %APPDATA%, its default under the profile.
    let bare = Environment {
        appdata: None,
        ..env.clone()
    };
    assert_eq!(
        located(Client::ClaudeDesktop, Scope::User, &bare),
        "C:/Users/u/AppData/Roaming/Claude/claude_desktop_config.json"
    );
}

#[test]
fn every_client_knows_its_files() {
    let env = env(Path::new("/home/u"));
    let path = |client: Client, scope| located(client, scope, &env);
    assert_eq!(
        path(Client::ClaudeCode, Scope::User),
        "/home/u/.claude.json"
    );
    assert_eq!(
        path(Client::ClaudeCode, Scope::Local),
        "/home/u/.claude.json"
    );
    assert_eq!(
        path(Client::ClaudeCode, Scope::Project),
        "/home/u/project/.mcp.json"
    );
    assert_eq!(
        path(Client::Cursor, Scope::User),
        "/home/u/.cursor/mcp.json"
    );
    assert_eq!(
        path(Client::Codex, Scope::User),
        "/home/u/.codex/config.toml"
    );
    assert_eq!(
        path(Client::Codex, Scope::Project),
        "/home/u/project/.codex/config.toml"
    );
    assert_eq!(
        path(Client::Gemini, Scope::User),
        "/home/u/.gemini/settings.json"
    );
    assert_eq!(
        path(Client::Windsurf, Scope::User),
        "/home/u/.codeium/windsurf/mcp_config.json"
    );
    assert_eq!(
        path(Client::VsCode, Scope::Project),
        "/home/u/project/.vscode/mcp.json"
    );
    assert_eq!(
        path(Client::ClaudeDesktop, Scope::User),
        "/home/u/.config/Claude/claude_desktop_config.json"
    );
    assert_eq!(
        path(Client::VsCode, Scope::User),
        "/home/u/.config/Code/User/mcp.json"
    );
    let local = Client::ClaudeCode
        .location(Scope::Local, &env)
        .expect("local");
    assert_eq!(
        local.servers_key,
        ["projects", &env.cwd.display().to_string(), "mcpServers"]
    );
    let refused = path(Client::Windsurf, Scope::Project);
    assert!(
        refused.contains("windsurf has no `project` scope"),
        "{refused}"
    );
    let refused = path(Client::Cursor, Scope::Local);
    assert!(
        refused.contains("--scope user or --scope project"),
        "{refused}"
    );
}

#[test]
fn unknown_clients_are_refused_with_the_list() {
    let error = "cusor".parse::<Client>().unwrap_err();
    assert!(error.contains("did you mean `cursor`?"), "{error}");
    assert!(error.contains("claude-code, claude-desktop, cursor, vscode, codex, gemini, windsurf"));
}

#[test]
fn json_merge_keeps_other_keys_their_order_and_the_indentation() {
    let text = "{\n    \"zeta\": 1,\n    \"mcpServers\": {\n        \"other\": {\"command\": \"x\"}\n    },\n    \"alpha\": {\"nested\": [1, 2.5, \"s\"]}\n}";
    let (_dir, mut file) = load(Client::Cursor, Scope::User, text);
    assert_eq!(
        file.set_proxy("memory", "memory", &proxy()).expect("set"),
        SetOutcome::Added
    );
    let out = file.render();
    let expected = "{\n    \"zeta\": 1,\n    \"mcpServers\": {\n        \"other\": {\n            \"command\": \"x\"\n        },\n        \"memory\": {\n            \"command\": \"/opt/mcpsm/bin/mcpsm\",\n            \"args\": [\n                \"proxy\",\n                \"--target\",\n                \"memory\"\n            ]\n        }\n    },\n    \"alpha\": {\n        \"nested\": [\n            1,\n            2.5,\n            \"s\"\n        ]\n    }\n}";
    assert_eq!(out, expected);
}

#[test]
fn rewriting_an_entry_keeps_its_other_keys_in_place() {
    let text = r#"{"servers": {"gh": {"disabled": false, "type": "stdio", "command": "npx", "args": ["gh"], "env": {"A": "1"}, "timeout": 5}}}"#;
    let (_dir, mut file) = load(Client::VsCode, Scope::Project, text);
    let outcome = file.set_proxy("gh", "gh", &proxy()).expect("set");
    assert_eq!(outcome, SetOutcome::Replaced("npx gh".into()));
    let servers = file.servers().expect("servers");
    let keys: Vec<&String> = servers[0].1.as_object().expect("object").keys().collect();
    assert_eq!(keys, ["disabled", "type", "command", "args", "timeout"]);
    assert_eq!(servers[0].1["type"], "stdio");
    assert_eq!(
        file.set_proxy("gh", "gh", &proxy()).expect("again"),
        SetOutcome::Unchanged
    );
}

#[test]
fn claude_code_local_scope_writes_under_the_project() {
    let dir = tempfile::tempdir().expect("temp dir");
    let env = env(dir.path());
    let location = Client::ClaudeCode
        .location(Scope::Local, &env)
        .expect("location");
    let project = env.cwd.display().to_string();
    let text = format!(
        "{{\"projects\": {{{}: {{\"allowedTools\": []}}, \"/other\": {{}}}}}}\n",
        Value::from(project.as_str())
    );
    std::fs::write(&location.path, &text).expect("write");
    let mut file = ClientFile::load(&location).expect("load");
    file.set_proxy("memory", "memory", &proxy()).expect("set");
    let root: Value = serde_json::from_str(&file.render()).expect("json");
    assert_eq!(
        root["projects"][&project]["allowedTools"],
        serde_json::json!([])
    );
    assert_eq!(
        root["projects"][&project]["mcpServers"]["memory"]["args"],
        serde_json::json!(["proxy", "--target", "memory"])
    );
    assert!(root.get("mcpServers").is_none());
}

#[test]
fn invalid_json_names_line_and_column() {
    let dir = tempfile::tempdir().expect("temp dir");
    let location = Client::Gemini
        .location(Scope::User, &env(dir.path()))
        .expect("location");
    std::fs::create_dir_all(location.path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&location.path, "{\n  \"a\": 1,\n  \"b\" 2\n}\n").expect("write");
    let error = ClientFile::load(&location)
        .err()
        .expect("invalid")
        .to_string();
    assert!(
        error
            .replace('\\', "/")
            .starts_with("~/.gemini/settings.json:3:7: invalid JSON: expected `:`"),
        "{error}"
    );
    assert!(error.contains("\nhint: "), "{error}");
}

#[test]
fn servers_that_are_not_an_object_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let location = Client::Cursor
        .location(Scope::User, &env(dir.path()))
        .expect("location");
    std::fs::create_dir_all(location.path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&location.path, "{\"mcpServers\": []}").expect("write");
    let error = ClientFile::load(&location)
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("`mcpServers` is not an object"), "{error}");
}

#[test]
fn codex_tables_are_updated_in_place_with_comments_kept() {
    let text = "# my codex config\nmodel = \"o3\"\n\n# the memory server\n[mcp_servers.memory]\n# how to start it\ncommand = \"npx\" # via npx\nargs = [\"-y\", \"server-memory\"]\nenv = { A = \"1\" }\nstartup_timeout_sec = 20\n\n[profiles.fast]\nmodel = \"o4-mini\"\n";
    let (_dir, mut file) = load(Client::Codex, Scope::User, text);
    let outcome = file.set_proxy("memory", "memory", &proxy()).expect("set");
    assert_eq!(outcome, SetOutcome::Replaced("npx -y server-memory".into()));
    assert_eq!(
        file.set_proxy("fetch", "fetch", &proxy()).expect("add"),
        SetOutcome::Added
    );
    let out = file.render();
    assert_eq!(
        out,
        "# my codex config\nmodel = \"o3\"\n\n# the memory server\n[mcp_servers.memory]\n# how to start it\ncommand = \"/opt/mcpsm/bin/mcpsm\" # via npx\nargs = [\"proxy\", \"--target\", \"memory\"]\nstartup_timeout_sec = 20\n\n[mcp_servers.fetch]\ncommand = \"/opt/mcpsm/bin/mcpsm\"\nargs = [\"proxy\", \"--target\", \"fetch\"]\n\n[profiles.fast]\nmodel = \"o4-mini\"\n"
    );
    assert_eq!(out.matches("[mcp_servers.memory]").count(), 1);
}

#[test]
fn codex_entries_read_like_json_ones() {
    let text = "[mcp_servers.docs]\nurl = \"https://example.com/mcp\"\nbearer_token_env_var = \"DOCS_TOKEN\"\n\n[mcp_servers.local]\ncommand = \"node\"\nargs = [\"server.js\"]\nenv_vars = [\"HOME_DIR\"]\n[mcp_servers.local.env]\nLEVEL = \"debug\"\n";
    let (_dir, file) = load(Client::Codex, Scope::User, text);
    let entries = file.entries(&proxy()).expect("entries");
    assert_eq!(
        entries[0].1,
        Entry::Server(Server::Remote(Remote {
            url: "https://example.com/mcp".into(),
            headers: vec![("Authorization".into(), "Bearer ${DOCS_TOKEN}".into())],
            transport: Some(crate::config::TransportKind::StreamableHttp),
        }))
    );
    assert_eq!(
        entries[1].1,
        Entry::Server(Server::Stdio(Stdio {
            command: "node".into(),
            args: vec!["server.js".into()],
            env: vec![
                ("LEVEL".into(), "debug".into()),
                ("HOME_DIR".into(), "${HOME_DIR:-}".into())
            ],
            cwd: None,
        }))
    );
}

#[test]
fn project_scope_servers_run_in_the_project() {
    let text =
        r#"{"mcpServers": {"local": {"command": "./bin/server", "args": ["--db", "data.db"]}}}"#;
    let (dir, file) = load(Client::ClaudeCode, Scope::Project, text);
    let entries = file.entries(&proxy()).expect("entries");
    let Entry::Server(Server::Stdio(stdio)) = &entries[0].1 else {
        panic!("expected a stdio server: {:?}", entries[0].1);
    };
    assert_eq!(
        stdio.cwd.as_deref(),
        Some(dir.path().join("project").to_str().expect("utf-8"))
    );
}

#[test]
fn our_own_proxy_entries_are_recognized() {
    let text = r#"{"mcpServers": {"m": {"command": "/opt/mcpsm/bin/mcpsm", "args": ["proxy", "--target", "memory"]}, "o": {"command": "/usr/bin/mcpsm", "args": ["proxy", "--target", "x"]}}}"#;
    let (_dir, file) = load(Client::Windsurf, Scope::User, text);
    let entries = file.entries(&proxy()).expect("entries");
    assert_eq!(
        entries[0].1,
        Entry::Proxy {
            this_binary: true,
            target: Some("memory".into())
        }
    );
    assert_eq!(
        entries[1].1,
        Entry::Proxy {
            this_binary: false,
            target: Some("x".into())
        }
    );
}

#[test]
fn line_columns_count_characters() {
    assert_eq!(line_column("ab\ncé\nx", 6), (2, 3));
    assert_eq!(line_column("abc", 0), (1, 1));
}
