//! `mcpsm service install|uninstall|status`: the manager as a per-user service started at
//! login — a systemd user unit on Linux, a launchd agent on macOS, a logon task on Windows.
//!
//! The files are generated as plain text by one function per OS ([`systemd_unit`],
//! [`launchd_plist`], [`task_xml`]), so all three are tested on any OS; only registering them
//! runs the OS's own tool (`systemctl --user`, `launchctl`, `schtasks`). `--dir DIR` writes the
//! file there and registers nothing.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;

use super::Settings;
use crate::cli::{ServiceAction, ServiceArgs, ServiceTargetArgs};
use crate::platform::Os;

/// The systemd unit's name, the launchd label, the task's name.
pub const UNIT: &str = "mcpsm.service";
pub const LABEL: &str = "dev.mcpsm.manager";
pub const TASK: &str = "mcpsm manager";

/// What every OS's file starts: the binary, its arguments, its home.
pub struct ServiceSpec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub home: PathBuf,
    pub log: PathBuf,
}

pub fn run(args: ServiceArgs, settings: Settings) -> anyhow::Result<ExitCode> {
    match args.action {
        ServiceAction::Install(install) => {
            let mut manager_args = Vec::new();
            if settings.registry_explicit {
                manager_args.push("--registry".to_owned());
                manager_args.push(settings.registry_path.display().to_string());
            }
            manager_args.push("manager".to_owned());
            if install.start_all {
                manager_args.push("--start-all".to_owned());
            }
            for name in &install.start {
                manager_args.push("--start".to_owned());
                manager_args.push(name.clone());
            }
            let spec = ServiceSpec {
                program: std::env::current_exe()
                    .and_then(|p| p.canonicalize())
                    .context("finding the mcpsm binary")?,
                args: manager_args,
                home: settings.paths.home().to_path_buf(),
                log: settings.paths.manager_log(),
            };
            install_service(&install.target, &spec)
        }
        ServiceAction::Uninstall(target) => uninstall(&target),
        ServiceAction::Status(target) => status(&target),
    }
}

fn os_of(target: &ServiceTargetArgs) -> anyhow::Result<Os> {
    match target.os.as_deref() {
        None => Ok(Os::current()),
        Some("linux") => Ok(Os::Linux),
        Some("macos") => Ok(Os::MacOs),
        Some("windows") => Ok(Os::Windows),
        Some(other) => anyhow::bail!("unknown --os `{other}`\nhint: use linux, macos or windows"),
    }
}

fn file_name(os: Os) -> String {
    match os {
        Os::Linux => UNIT.to_owned(),
        Os::MacOs => format!("{LABEL}.plist"),
        Os::Windows => "mcpsm-manager-task.xml".to_owned(),
    }
}

/// Where the file goes when registering for real.
fn default_dir(os: Os) -> anyhow::Result<PathBuf> {
    let home = crate::paths::user_home().context("finding your home directory")?;
    Ok(match os {
        Os::Linux => std::env::var_os("XDG_CONFIG_HOME")
            .filter(|v| !v.is_empty())
            .map_or_else(|| home.join(".config"), PathBuf::from)
            .join("systemd")
            .join("user"),
        Os::MacOs => home.join("Library").join("LaunchAgents"),
        // schtasks reads the XML once; keep it beside mcpsm's state for `status`.
        Os::Windows => crate::paths::Paths::from_env()?.home().to_path_buf(),
    })
}

fn location(target: &ServiceTargetArgs) -> anyhow::Result<(Os, PathBuf, bool)> {
    let os = os_of(target)?;
    let (dir, register) = match &target.dir {
        Some(dir) => (dir.clone(), false),
        None => (default_dir(os)?, true),
    };
    Ok((os, dir.join(file_name(os)), register))
}

fn install_service(target: &ServiceTargetArgs, spec: &ServiceSpec) -> anyhow::Result<ExitCode> {
    let (os, path, register) = location(target)?;
    let text = match os {
        Os::Linux => systemd_unit(spec),
        Os::MacOs => launchd_plist(spec),
        Os::Windows => task_xml(spec, &current_user()),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // UTF-16 is what Task Scheduler documents for its XML; UTF-8 with the declaration works
    // with schtasks too, and stays readable.
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    if !register {
        println!("not registered (--dir): {}", register_hint(os, &path));
        return Ok(ExitCode::SUCCESS);
    }
    for command in register_commands(os, &path) {
        run_tool(&command)?;
    }
    println!(
        "the manager now starts at login; {}",
        match os {
            Os::Linux => "`systemctl --user start mcpsm` starts it now",
            Os::MacOs => "launchd started it now too",
            Os::Windows => "`schtasks /Run /TN \"mcpsm manager\"` starts it now",
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn uninstall(target: &ServiceTargetArgs) -> anyhow::Result<ExitCode> {
    let (os, path, register) = location(target)?;
    if register {
        for command in unregister_commands(os, &path) {
            // Already unregistered is fine: the file is what matters next.
            if let Err(e) = run_tool(&command) {
                eprintln!("warning: {e}");
            }
        }
    }
    match std::fs::remove_file(&path) {
        Ok(()) => println!("removed {}", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("not installed: {} does not exist", path.display())
        }
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    Ok(ExitCode::SUCCESS)
}

fn status(target: &ServiceTargetArgs) -> anyhow::Result<ExitCode> {
    let (os, path, register) = location(target)?;
    if !path.exists() {
        println!(
            "not installed ({} does not exist); `mcpsm service install` installs it",
            path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("installed: {}", path.display());
    if register {
        let query: Vec<String> = match os {
            Os::Linux => vec![
                "systemctl".into(),
                "--user".into(),
                "is-enabled".into(),
                UNIT.into(),
            ],
            Os::MacOs => vec!["launchctl".into(), "list".into(), LABEL.into()],
            Os::Windows => vec![
                "schtasks".into(),
                "/Query".into(),
                "/TN".into(),
                TASK.into(),
            ],
        };
        match std::process::Command::new(&query[0])
            .args(&query[1..])
            .output()
        {
            Ok(output) => {
                let said = String::from_utf8_lossy(&output.stdout);
                println!("{}: {}", query.join(" "), said.trim());
            }
            Err(e) => println!("{}: could not run it ({e})", query.join(" ")),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn register_commands(os: Os, path: &Path) -> Vec<Vec<String>> {
    let path = path.display().to_string();
    match os {
        Os::Linux => vec![
            vec!["systemctl".into(), "--user".into(), "daemon-reload".into()],
            vec![
                "systemctl".into(),
                "--user".into(),
                "enable".into(),
                UNIT.into(),
            ],
        ],
        Os::MacOs => vec![vec!["launchctl".into(), "load".into(), "-w".into(), path]],
        Os::Windows => vec![vec![
            "schtasks".into(),
            "/Create".into(),
            "/TN".into(),
            TASK.into(),
            "/XML".into(),
            path,
            "/F".into(),
        ]],
    }
}

fn unregister_commands(os: Os, path: &Path) -> Vec<Vec<String>> {
    match os {
        Os::Linux => vec![vec![
            "systemctl".into(),
            "--user".into(),
            "disable".into(),
            UNIT.into(),
        ]],
        Os::MacOs => vec![vec![
            "launchctl".into(),
            "unload".into(),
            "-w".into(),
            path.display().to_string(),
        ]],
        Os::Windows => vec![vec![
            "schtasks".into(),
            "/Delete".into(),
            "/TN".into(),
            TASK.into(),
            "/F".into(),
        ]],
    }
}

fn register_hint(os: Os, path: &Path) -> String {
    let commands = register_commands(os, path);
    let lines: Vec<String> = commands.iter().map(|c| c.join(" ")).collect();
    format!("to register it: {}", lines.join(" && "))
}

fn run_tool(command: &[String]) -> anyhow::Result<()> {
    let output = std::process::Command::new(&command[0])
        .args(&command[1..])
        .output()
        .with_context(|| format!("running `{}`", command.join(" ")))?;
    if !output.status.success() {
        anyhow::bail!(
            "`{}` failed ({}): {}\nhint: run it yourself to see why, or use --dir DIR to only write the file",
            command.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn current_user() -> String {
    let user = std::env::var("USERNAME")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_default();
    match std::env::var("USERDOMAIN") {
        Ok(domain) if !domain.is_empty() && !user.is_empty() => format!("{domain}\\{user}"),
        _ => user,
    }
}

/// A systemd command-line word: quoted, with `\`, `"`, `%` and `$` escaped.
fn systemd_word(word: &str) -> String {
    let escaped = word
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%")
        .replace('$', "$$");
    format!("\"{escaped}\"")
}

/// The Linux user unit. `KillMode=process`: stopping the unit stops the manager only; its
/// daemons (in the unit's cgroup) keep serving and the next manager adopts them, as after
/// any SIGTERM.
pub fn systemd_unit(spec: &ServiceSpec) -> String {
    let exec: Vec<String> = std::iter::once(spec.program.display().to_string())
        .chain(spec.args.iter().cloned())
        .map(|w| systemd_word(&w))
        .collect();
    format!(
        "# Written by `mcpsm service install`; `mcpsm service uninstall` removes it.\n\
         [Unit]\n\
         Description=mcpsm manager: MCP servers shared by every client session\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart={}\n\
         Environment={}\n\
         Restart=on-failure\n\
         RestartSec=2\n\
         KillMode=process\n\
         \n\
         [Install]\n\
         WantedBy=default.target\n",
        exec.join(" "),
        systemd_word(&format!(
            "{}={}",
            crate::paths::HOME_ENV,
            spec.home.display()
        )),
    )
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// The macOS launch agent: run at load (login), restarted if it exits with a failure.
pub fn launchd_plist(spec: &ServiceSpec) -> String {
    let args: String = std::iter::once(spec.program.display().to_string())
        .chain(spec.args.iter().cloned())
        .map(|a| format!("        <string>{}</string>\n", xml_escape(&a)))
        .collect();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<!-- Written by `mcpsm service install`; `mcpsm service uninstall` removes it. -->
<plist version="1.0">
<dict>
    <key>Label</key>
    <string>{LABEL}</string>
    <key>ProgramArguments</key>
    <array>
{args}    </array>
    <key>EnvironmentVariables</key>
    <dict>
        <key>{}</key>
        <string>{}</string>
    </dict>
    <key>RunAtLoad</key>
    <true/>
    <key>KeepAlive</key>
    <dict>
        <key>SuccessfulExit</key>
        <false/>
    </dict>
    <key>ProcessType</key>
    <string>Background</string>
    <key>StandardOutPath</key>
    <string>{}</string>
    <key>StandardErrorPath</key>
    <string>{}</string>
</dict>
</plist>
"#,
        crate::paths::HOME_ENV,
        xml_escape(&spec.home.display().to_string()),
        xml_escape(&spec.log.display().to_string()),
        xml_escape(&spec.log.display().to_string()),
    )
}

/// A Windows argument, quoted the way `CommandLineToArgvW` reads it back.
fn windows_word(word: &str) -> String {
    if !word.is_empty() && !word.contains([' ', '\t', '"']) {
        return word.to_owned();
    }
    let mut quoted = String::from("\"");
    let mut backslashes = 0;
    for c in word.chars() {
        match c {
            '\\' => backslashes += 1,
            '"' => {
                quoted.push_str(&"\\".repeat(backslashes * 2 + 1));
                quoted.push('"');
                backslashes = 0;
            }
            c => {
                quoted.push_str(&"\\".repeat(backslashes));
                quoted.push(c);
                backslashes = 0;
            }
        }
    }
    quoted.push_str(&"\\".repeat(backslashes * 2));
    quoted.push('"');
    quoted
}

/// The Windows logon task (Task Scheduler XML for `schtasks /Create /XML`): at this user's
/// logon, hidden, no time limit, restarted on failure.
pub fn task_xml(spec: &ServiceSpec, user: &str) -> String {
    let arguments: Vec<String> = spec.args.iter().map(|a| windows_word(a)).collect();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by `mcpsm service install`; `mcpsm service uninstall` removes the task. -->
<Task version="1.2" xmlns="http://schemas.microsoft.com/windows/2004/02/mit/task">
  <RegistrationInfo>
    <Description>mcpsm manager: MCP servers shared by every client session</Description>
  </RegistrationInfo>
  <Triggers>
    <LogonTrigger>
      <Enabled>true</Enabled>
      <UserId>{user}</UserId>
    </LogonTrigger>
  </Triggers>
  <Principals>
    <Principal id="Author">
      <UserId>{user}</UserId>
      <LogonType>InteractiveToken</LogonType>
      <RunLevel>LeastPrivilege</RunLevel>
    </Principal>
  </Principals>
  <Settings>
    <MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>
    <DisallowStartIfOnBatteries>false</DisallowStartIfOnBatteries>
    <StopIfGoingOnBatteries>false</StopIfGoingOnBatteries>
    <ExecutionTimeLimit>PT0S</ExecutionTimeLimit>
    <Hidden>true</Hidden>
    <RestartOnFailure>
      <Interval>PT1M</Interval>
      <Count>3</Count>
    </RestartOnFailure>
  </Settings>
  <Actions Context="Author">
    <Exec>
      <Command>{}</Command>
      <Arguments>{}</Arguments>
      <WorkingDirectory>{}</WorkingDirectory>
    </Exec>
  </Actions>
</Task>
"#,
        xml_escape(&spec.program.display().to_string()),
        xml_escape(&arguments.join(" ")),
        xml_escape(&spec.home.display().to_string()),
        user = xml_escape(user),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ServiceSpec {
        ServiceSpec {
            program: PathBuf::from("/opt/my tools/mcpsm"),
            args: vec!["manager".into(), "--start".into(), "a&b".into()],
            home: PathBuf::from("/home/u/.mcp-session-manager"),
            log: PathBuf::from("/home/u/.mcp-session-manager/logs/manager.log"),
        }
    }

    #[test]
    fn systemd_unit_quotes_and_escapes_the_command_line() {
        let unit = systemd_unit(&spec());
        assert!(
            unit.contains("ExecStart=\"/opt/my tools/mcpsm\" \"manager\" \"--start\" \"a&b\"\n"),
            "{unit}"
        );
        assert!(unit.contains("KillMode=process"), "{unit}");
        assert_eq!(systemd_word("50%$x\"y"), "\"50%%$$x\\\"y\"");
    }

    #[test]
    fn plist_and_task_escape_xml() {
        let plist = launchd_plist(&spec());
        assert!(plist.contains("<string>a&amp;b</string>"), "{plist}");
        let task = task_xml(&spec(), "PC\\me");
        assert!(
            task.contains("<Command>/opt/my tools/mcpsm</Command>"),
            "{task}"
        );
        assert!(
            task.contains("<Arguments>manager --start a&amp;b</Arguments>"),
            "{task}"
        );
        assert_eq!(windows_word("C:\\a b\\"), "\"C:\\a b\\\\\"");
        assert_eq!(windows_word("say \"hi\""), "\"say \\\"hi\\\"\"");
    }
}
