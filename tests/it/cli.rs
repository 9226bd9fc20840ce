//! The command line as a newcomer meets it: `mcpsm demo`, help, version, completions.

use std::time::Duration;

use crate::support::servers::run_with_deadline;
use crate::support::TestHome;

#[test]
fn demo_runs_every_step_and_cleans_up() {
    let home = TestHome::new();
    let mut command = home.mcpsm();
    command.env_remove("RUST_LOG").arg("demo");
    let output = run_with_deadline(command, Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "mcpsm demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let expected = [
        "1. Start the manager",
        "✓ manager pid",
        "2. Open two MCP sessions",
        "✓ session A (proxy pid",
        "3. Both call the `counter` tool",
        "✓ A got 1, B got 2",
        "4. Send SIGINT",
        "✓ daemon pid",
        "5. Kill the daemon",
        "✓ the manager restarted it",
        "✓ session B goes on in the same MCP session",
        "6. Clean up",
        "✓ demo complete",
        // The closing hint moves the user's own servers (keeping their scope), not
        // generate-config, which would give every project the registry's servers.
        "Next: `mcpsm import --dry-run`",
    ];
    let mut rest = stdout.as_ref();
    for step in expected {
        let at = rest
            .find(step)
            .unwrap_or_else(|| panic!("`{step}` missing (or out of order) in:\n{stdout}"));
        rest = &rest[at + step.len()..];
    }
    let home_line = stdout.lines().next().unwrap_or_default();
    let private = home_line.rsplit(' ').next().unwrap_or_default();
    assert!(
        !private.is_empty() && !std::path::Path::new(private).exists(),
        "the demo's home {private} was removed"
    );
    assert!(
        std::fs::read_dir(home.path())
            .map(|d| d.count())
            .unwrap_or(0)
            == 0,
        "the demo never touches the user's MCPSM_HOME"
    );
}

#[test]
fn every_subcommand_has_help_with_examples() {
    let home = TestHome::new();
    let output = home.mcpsm().arg("--help").output().expect("run");
    let help = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success());
    let commands: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter(|l| !l.starts_with("   ")) // wrapped descriptions
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|c| c != "help")
        .collect();
    assert!(commands.len() >= 10, "{help}");
    for command in commands {
        let output = home
            .mcpsm()
            .args([command.as_str(), "--help"])
            .output()
            .expect("run");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{command} --help failed");
        assert!(
            text.contains("Example"),
            "`mcpsm {command} --help` has no example:\n{text}"
        );
    }
}

#[test]
fn version_and_completions() {
    let home = TestHome::new();
    let output = home.mcpsm().arg("--version").output().expect("run");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("mcpsm {}", env!("CARGO_PKG_VERSION"))
    );
    for shell in ["bash", "zsh", "fish"] {
        let output = home
            .mcpsm()
            .args(["completions", shell])
            .output()
            .expect("run");
        assert!(output.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&output.stdout);
        assert!(
            script.contains("mcpsm") && script.contains("proxy"),
            "{shell}: {script}"
        );
    }
    let bad = home
        .mcpsm()
        .args(["completions", "tcsh"])
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(2));
}
