//! The environment and working directory every daemon starts with, defined rather than
//! inherited.
//!
//! The manager is started by whichever proxy needs it first, so its own environment and cwd
//! are that client session's: a project directory, a client's private variables, an
//! editor's PATH. Handing them on would make a shared daemon behave differently depending on
//! which session came first. Instead a daemon gets:
//!
//! - the **base variables** ([`BASE_VARIABLES`], [`BASE_PREFIXES`]: PATH, HOME, user, locale,
//!   temp and XDG directories, display, CA bundles and proxies — what programs need to work at
//!   all), with the values of the user's **login environment**: the login shell
//!   (`$SHELL -l -i -c …`, started with a minimal environment, as `login` would) prints them
//!   once per manager, within [`CAPTURE_TIMEOUT`]. A name the login shell does not give (or
//!   every name, when the shell cannot be run) takes the manager's own value;
//! - `MCPSM_HOME`, the manager's home, so a daemon that is itself `mcpsm` finds its manager;
//! - the registry's `env` on top;
//! - nothing else: the spawn clears the environment first.
//!
//! Its cwd is the registry's `cwd` (relative to HOME), else HOME; its `command` is looked up on
//! the base PATH.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tracing::{debug, warn};

use crate::config::Launch;

/// Variables a daemon takes from the user's login environment.
pub const BASE_VARIABLES: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "TMP",
    "TEMP",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "XDG_STATE_HOME",
    "XDG_CACHE_HOME",
    "XDG_RUNTIME_DIR",
    "XDG_CONFIG_DIRS",
    "XDG_DATA_DIRS",
    "DISPLAY",
    "WAYLAND_DISPLAY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "NODE_EXTRA_CA_CERTS",
    "REQUESTS_CA_BUNDLE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
];

/// Families of variables a daemon takes too (`LC_ALL`, `LC_CTYPE`, …).
pub const BASE_PREFIXES: &[&str] = &["LC_"];

/// How long the login shell may take to print its environment.
pub const CAPTURE_TIMEOUT: Duration = Duration::from_secs(5);

/// The PATH the login shell starts with, as `login(1)` gives it; its profile builds on it.
const LOGIN_START_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
const BEGIN: &str = "__MCPSM_ENV_BEGIN__";
const END: &str = "__MCPSM_ENV_END__";

/// Whether a daemon gets variable `name` from the base environment.
pub fn is_base(name: &str) -> bool {
    if crate::platform::ENV_CASE_INSENSITIVE {
        let upper = name.to_ascii_uppercase();
        return BASE_VARIABLES
            .iter()
            .chain(crate::platform::EXTRA_BASE_VARIABLES)
            .any(|v| *v == upper)
            || BASE_PREFIXES.iter().any(|p| upper.starts_with(p));
    }
    BASE_VARIABLES.contains(&name)
        || crate::platform::EXTRA_BASE_VARIABLES.contains(&name)
        || BASE_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Whether two variable names are the same name (without case on Windows).
fn same_name(a: &str, b: &str) -> bool {
    if crate::platform::ENV_CASE_INSENSITIVE {
        a.eq_ignore_ascii_case(b)
    } else {
        a == b
    }
}

/// The base variables with their values.
#[derive(Debug, Clone, Default)]
pub struct BaseEnvironment {
    vars: BTreeMap<String, String>,
}

impl BaseEnvironment {
    /// Asks the user's login shell, and falls back to this process's values for what it does
    /// not give.
    pub async fn capture() -> BaseEnvironment {
        if !crate::platform::LOGIN_SHELL_ENVIRONMENT {
            // Windows: no login shell; the user's environment is the manager's own.
            return BaseEnvironment::combine(Vec::new(), own_variables());
        }
        let shell = login_shell();
        let login = match login_environment(&shell, CAPTURE_TIMEOUT).await {
            Ok(vars) => {
                debug!(shell = %shell.display(), "captured the login environment");
                vars
            }
            Err(why) => {
                warn!(
                    "cannot read the login environment from {} ({why}); daemons get the manager's values of the base variables",
                    shell.display()
                );
                Vec::new()
            }
        };
        BaseEnvironment::combine(login, own_variables())
    }

    /// `login`'s values of the base variables, and `own`'s for the names `login` lacks.
    pub fn combine(
        login: impl IntoIterator<Item = (String, String)>,
        own: impl IntoIterator<Item = (String, String)>,
    ) -> BaseEnvironment {
        let mut vars: BTreeMap<String, String> =
            login.into_iter().filter(|(k, _)| is_base(k)).collect();
        for (key, value) in own {
            if is_base(&key) {
                vars.entry(key).or_insert(value);
            }
        }
        BaseEnvironment { vars }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        match self.vars.get(name) {
            Some(value) => Some(value.as_str()),
            None if crate::platform::ENV_CASE_INSENSITIVE => self
                .vars
                .iter()
                .find(|(k, _)| same_name(k, name))
                .map(|(_, v)| v.as_str()),
            None => None,
        }
    }

    pub fn vars(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Where a daemon runs when the registry names no `cwd`: HOME, else `/`.
    pub fn home(&self) -> PathBuf {
        self.get("HOME")
            .filter(|h| !h.is_empty())
            // Windows: HOME is often unset; the profile directory is the home.
            .or_else(|| self.get("USERPROFILE").filter(|h| !h.is_empty()))
            .map_or_else(|| PathBuf::from("/"), PathBuf::from)
    }

    /// `launch` as it is spawned: cwd resolved against HOME (default HOME), environment = the
    /// base variables, `MCPSM_HOME`, then the registry's `env`.
    pub fn apply(&self, launch: Launch, mcpsm_home: &Path) -> Launch {
        let home = self.home();
        let cwd = match launch.cwd {
            Some(cwd) => home.join(cwd),
            None => home,
        };
        let mut env: Vec<(String, String)> = self
            .vars()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        env.push((
            crate::paths::HOME_ENV.to_owned(),
            mcpsm_home.display().to_string(),
        ));
        env.extend(launch.env);
        Launch {
            env,
            cwd: Some(cwd),
            ..launch
        }
    }
}

/// The value of `name` in an environment list (the last one wins, as in a spawn).
pub fn lookup<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find(|(k, _)| same_name(k, name))
        .map(|(_, v)| v.as_str())
}

/// The PATH of an environment list, empty when it has none.
pub fn path_of(env: &[(String, String)]) -> &OsStr {
    OsStr::new(lookup(env, "PATH").unwrap_or_default())
}

/// The distinct names of an environment list, sorted.
pub fn keys_of(env: &[(String, String)]) -> Vec<String> {
    let mut keys: Vec<String> = env.iter().map(|(k, _)| k.clone()).collect();
    keys.sort();
    keys.dedup();
    keys
}

fn own_variables() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// `$SHELL` when it names a program, else the user's shell from the password database, else
/// `/bin/sh`.
fn login_shell() -> PathBuf {
    if let Some(shell) = std::env::var_os("SHELL").map(PathBuf::from) {
        if shell.is_absolute() && shell.is_file() {
            return shell;
        }
    }
    password_entry_shell().unwrap_or_else(|| PathBuf::from("/bin/sh"))
}

fn password_entry_shell() -> Option<PathBuf> {
    crate::platform::account_shell()
}

/// Runs `shell -l -i -c` with a login-like environment and returns every variable it prints.
/// Interactive too, because version managers (nvm, pyenv, …) are set up in `.bashrc` /
/// `.zshrc`, which a non-interactive shell skips. The shell runs in a session of its own (it
/// cannot take over a terminal) and is killed with its group at the deadline.
async fn login_environment(shell: &Path, limit: Duration) -> Result<Vec<(String, String)>, String> {
    let script = format!("printf '%s\\0' {BEGIN}; env -0; printf '%s\\0' {END}");
    let mut command = tokio::process::Command::new(shell);
    command
        .args(["-l", "-i", "-c", &script])
        .env_clear()
        .env("PATH", LOGIN_START_PATH)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    for name in ["HOME", "USER", "LOGNAME"] {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    command.env("SHELL", shell);
    if let Some(home) = std::env::var_os("HOME").filter(|h| Path::new(h).is_dir()) {
        command.current_dir(home);
    }
    crate::platform::detach(command.as_std_mut());
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start it: {e}"))?;
    let pid = child.id();
    let mut stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let mut output = Vec::new();
    // The shell's children may keep the pipe open after it exits: stop reading at END.
    let read = async {
        let mut chunk = [0u8; 8192];
        loop {
            let n = stdout.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok::<_, String>(());
            }
            output.extend_from_slice(&chunk[..n]);
            if parse_capture(&output).is_some() {
                return Ok(());
            }
        }
    };
    let finished = tokio::time::timeout(limit, read).await;
    if let Some(pid) = pid {
        crate::platform::kill_group(pid);
    }
    let _ = child.wait().await;
    match finished {
        Err(_) => Err(format!("no answer within {limit:?}")),
        Ok(Err(e)) => Err(format!("reading its output: {e}")),
        Ok(Ok(())) => parse_capture(&output)
            .ok_or_else(|| "its output has no environment (does it run `env -0`?)".to_owned()),
    }
}

/// The variables between the BEGIN and END markers of the capture script's output, ignoring
/// whatever profile scripts print around them. `None` when the markers are missing.
pub fn parse_capture(output: &[u8]) -> Option<Vec<(String, String)>> {
    let marker = format!("{BEGIN}\0");
    let start = output
        .windows(marker.len())
        .position(|w| w == marker.as_bytes())?
        + marker.len();
    let mut vars = Vec::new();
    for entry in output[start..].split(|&b| b == 0) {
        if entry == END.as_bytes() {
            return Some(vars);
        }
        let Ok(text) = std::str::from_utf8(entry) else {
            continue;
        };
        if let Some((key, value)) = text.split_once('=') {
            if !key.is_empty() {
                vars.push((key.to_owned(), value.to_owned()));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn capture_is_read_between_the_markers_whatever_profiles_print() {
        let output = b"Welcome!\nlast login\n__MCPSM_ENV_BEGIN__\0PATH=/a:/b\0MULTI=one\ntwo\0EQ=a=b\0\xff=bad\0noequals\0__MCPSM_ENV_END__\0bye\n";
        let vars = parse_capture(output).expect("markers found");
        assert_eq!(
            vars,
            pairs(&[("PATH", "/a:/b"), ("MULTI", "one\ntwo"), ("EQ", "a=b")])
        );
    }

    #[test]
    fn capture_without_its_end_marker_is_refused() {
        assert!(parse_capture(b"__MCPSM_ENV_BEGIN__\0PATH=/a\0").is_none());
        assert!(parse_capture(b"PATH=/a\0__MCPSM_ENV_END__\0").is_none());
        assert!(parse_capture(b"").is_none());
    }

    #[test]
    fn login_values_win_and_the_own_environment_fills_gaps_of_base_names_only() {
        let base = BaseEnvironment::combine(
            pairs(&[("PATH", "/login/bin"), ("LC_ALL", "C"), ("SECRET", "x")]),
            pairs(&[
                ("PATH", "/proxy/bin"),
                ("TZ", "UTC"),
                ("LC_TIME", "de_DE"),
                ("MCPSM_TEST_LEAK", "1"),
                ("ANTHROPIC_API_KEY", "k"),
            ]),
        );
        let vars: Vec<(&str, &str)> = base.vars().collect();
        assert_eq!(
            vars,
            [
                ("LC_ALL", "C"),
                ("LC_TIME", "de_DE"),
                ("PATH", "/login/bin"),
                ("TZ", "UTC")
            ]
        );
    }

    #[test]
    fn a_launch_runs_in_home_with_the_registry_env_last() {
        let base = BaseEnvironment::combine(
            pairs(&[("HOME", "/home/u"), ("PATH", "/bin"), ("LANG", "C")]),
            Vec::new(),
        );
        let launch = Launch {
            command: "server".into(),
            args: Vec::new(),
            env: pairs(&[("LANG", "de_DE.UTF-8"), ("TOKEN", "t")]),
            cwd: None,
            port: 1,
        };
        let applied = base.apply(launch.clone(), Path::new("/state"));
        assert_eq!(applied.cwd.as_deref(), Some(Path::new("/home/u")));
        assert_eq!(lookup(&applied.env, "LANG"), Some("de_DE.UTF-8"));
        assert_eq!(lookup(&applied.env, "MCPSM_HOME"), Some("/state"));
        assert_eq!(path_of(&applied.env), OsStr::new("/bin"));
        assert_eq!(
            keys_of(&applied.env),
            ["HOME", "LANG", "MCPSM_HOME", "PATH", "TOKEN"]
        );
        let relative = Launch {
            cwd: Some("proj".into()),
            ..launch.clone()
        };
        assert_eq!(
            base.apply(relative, Path::new("/s")).cwd.as_deref(),
            Some(Path::new("/home/u/proj"))
        );
        let absolute = Launch {
            cwd: Some("/srv".into()),
            ..launch
        };
        assert_eq!(
            base.apply(absolute, Path::new("/s")).cwd.as_deref(),
            Some(Path::new("/srv"))
        );
    }

    #[tokio::test]
    #[cfg(unix)] // a POSIX shell
    async fn a_login_shell_gives_its_environment() {
        let vars = login_environment(Path::new("/bin/sh"), CAPTURE_TIMEOUT)
            .await
            .expect("sh prints its environment");
        assert!(vars.iter().any(|(k, _)| k == "PATH"), "{vars:?}");
    }
}
