//! A daemon's environment and working directory are the manager's definition, not the ones of
//! the proxy that happened to start the manager: a stdio daemon (server-memory behind the
//! stdio host) auto-started from a proxy running elsewhere, with a variable of its own, runs in
//! the registry's `cwd` (HOME without one) and sees none of the proxy's variables.

use std::path::{Path, PathBuf};

use crate::support::managed::{listen_port, HomeProcess, ManagedHome};
use crate::support::servers::memory_js;
use crate::support::{wait_for, DEADLINE};

/// A home with the stdio daemon `memory`, run in `cwd` when given.
fn memory_home(cwd: Option<&str>) -> ManagedHome {
    let home = ManagedHome::new("");
    let memory_file = home.path().join("memory.jsonl");
    let cwd = cwd.map_or(String::new(), |dir| {
        let dir = home.path().join(dir);
        std::fs::create_dir_all(&dir).expect("create the registry's cwd");
        format!("cwd = {}\n", toml(&dir))
    });
    let registry = format!(
        "[manager]\nport = {}\n\n[daemons.memory]\ncommand = \"node\"\nargs = [{}]\nenv = {{ MEMORY_FILE_PATH = {} }}\nport = {}\ntransport = \"stdio\"\n{cwd}",
        home.manager_port,
        toml(&memory_js()),
        toml(&memory_file),
        listen_port(),
    );
    home.home.write_registry(&registry);
    home
}

fn toml(path: &Path) -> String {
    serde_json::to_string(&path.display().to_string()).expect("serialize a path")
}

/// Starts the daemon the way a client does: a proxy that runs in another directory, with a
/// variable only it has, auto-starts the manager.
fn start_from_a_foreign_proxy(home: &ManagedHome) -> crate::support::Proxy {
    let elsewhere = home.path().join("some-project");
    std::fs::create_dir_all(&elsewhere).expect("create the proxy's directory");
    let mut command = home.home.mcpsm();
    command
        .args(["proxy", "--target", "memory"])
        .current_dir(&elsewhere)
        .env("MCPSM_TEST_LEAK", "1");
    let mut proxy = crate::support::Proxy::spawn_command(command);
    proxy.initialize();
    proxy
}

/// The server-memory process of the home, once it runs.
fn server_process(home: &ManagedHome) -> HomeProcess {
    let mut found = None;
    wait_for(DEADLINE, "the server-memory process", || {
        found = home
            .daemon_processes()
            .into_iter()
            .find(|p| p.argv.iter().any(|a| Path::new(a) == memory_js()));
        found.is_some()
    });
    found.expect("found above")
}

fn environment_of(pid: u32) -> Vec<(String, String)> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).expect("read /proc/PID/environ");
    raw.split(|&b| b == 0)
        .filter_map(|entry| {
            let text = String::from_utf8_lossy(entry);
            let (key, value) = text.split_once('=')?;
            Some((key.to_owned(), value.to_owned()))
        })
        .collect()
}

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().expect("canonicalize a test path")
}

fn cwd_of(pid: u32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/cwd")).expect("read /proc/PID/cwd")
}

#[track_caller]
fn assert_defined_environment(pid: u32, what: &str) {
    let env = environment_of(pid);
    let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        !keys.contains(&"MCPSM_TEST_LEAK") && !keys.contains(&"RUST_LOG"),
        "the proxy's variables reached the {what}: {keys:?}"
    );
    assert!(
        keys.contains(&"PATH") && keys.contains(&"HOME"),
        "the {what} lacks base variables: {keys:?}"
    );
    assert!(
        keys.contains(&"MEMORY_FILE_PATH"),
        "the {what} lacks the registry's env: {keys:?}"
    );
}

#[test]
fn a_daemon_runs_in_the_registry_cwd_without_the_variables_of_the_proxy_that_started_it() {
    let home = memory_home(Some("server-dir"));
    let _proxy = start_from_a_foreign_proxy(&home);

    let manager = home
        .managers()
        .into_iter()
        .next()
        .expect("the proxy started a manager");
    assert!(
        environment_of(manager.pid)
            .iter()
            .any(|(k, _)| k == "MCPSM_TEST_LEAK"),
        "the manager inherits the proxy's environment (else this test proves nothing)"
    );

    let server = server_process(&home);
    let registry_cwd = canonical(&home.path().join("server-dir"));
    assert_eq!(cwd_of(server.pid), registry_cwd, "the server's cwd");
    assert_defined_environment(server.pid, "server");

    let daemon = home.daemon("memory");
    let host = crate::support::managed::pid_of(&daemon);
    assert_eq!(cwd_of(host), registry_cwd, "the stdio host's cwd");
    assert_defined_environment(host, "stdio host");
    assert_eq!(
        daemon["cwd"],
        registry_cwd.display().to_string(),
        "{daemon}"
    );
    let keys: Vec<&str> = daemon["env_keys"]
        .as_array()
        .map(|keys| keys.iter().filter_map(|k| k.as_str()).collect())
        .unwrap_or_default();
    assert!(
        keys.contains(&"MEMORY_FILE_PATH") && keys.contains(&"PATH"),
        "status lists the variable names: {daemon}"
    );
    assert!(!keys.contains(&"MCPSM_TEST_LEAK"), "{daemon}");

    let verbose = home.run(&["status", "--verbose"]);
    verbose.assert_success();
    assert!(
        verbose
            .stdout
            .contains(&format!("cwd: {}", registry_cwd.display()))
            && verbose.stdout.contains("MEMORY_FILE_PATH"),
        "status --verbose shows the cwd and the variable names: {verbose:#?}"
    );
    assert!(
        !verbose
            .stdout
            .contains(&home.path().join("memory.jsonl").display().to_string()),
        "status --verbose shows no values: {verbose:#?}"
    );
}

#[test]
fn a_daemon_without_a_cwd_runs_in_home() {
    let home = memory_home(None);
    let _proxy = start_from_a_foreign_proxy(&home);
    let server = server_process(&home);
    assert_eq!(
        cwd_of(server.pid),
        canonical(home.path()),
        "HOME is the default cwd"
    );
    assert_defined_environment(server.pid, "server");
}
