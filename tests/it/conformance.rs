//! The newest official conformance suite (0.2.0-alpha.12) against its reference server, directly
//! and through mcpsm (`mcpsm stdio-host` serving `mcpsm proxy --url REFERENCE`), at every spec
//! version the suite has: through mcpsm, every check must end as it does directly.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::servers::{installed, loopback_server, run_with_deadline, Server};
use crate::support::{bin, free_port, support_dir, wait_for, TestHome, DEADLINE};

const VERSIONS: [&str; 4] = ["2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28"];

/// Checks that may end differently through mcpsm, with the reason. A stdio hop cannot carry
/// everything HTTP can; each entry here must say what. (None today.)
const ALLOWED: &[(&str, &str, &str)] = &[];

fn alpha_bin() -> PathBuf {
    installed(support_dir().join("conformance-alpha/node_modules/.bin"))
}

/// The reference everything-server on a free port, under Node 22 with tsx.
fn reference_server() -> Server {
    let dir = installed(support_dir().join("reference-server/node_modules")).join("..");
    let mut command = Command::new(alpha_bin().join("node"));
    command
        .current_dir(&dir)
        .arg("-r")
        .arg(support_dir().join("loopback.cjs"))
        .args(["--import", "tsx", "everything-server.ts"]);
    loopback_server(command, "/mcp")
}

/// Runs `conformance ARGS -o OUT` from `suite` (`conformance` or `conformance-alpha`) in the
/// test's home, with the suite's Node 22 first on PATH.
fn conformance(
    home: &TestHome,
    suite: &str,
    args: &[&str],
    out: &std::path::Path,
    limit: Duration,
) -> std::process::Output {
    let suite_bin = installed(support_dir().join(suite).join("node_modules/.bin"));
    let mut command = Command::new(suite_bin.join("conformance"));
    command
        .env(
            "PATH",
            format!(
                "{}:{}",
                suite_bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("HOME", home.path())
        .env("MCPSM_HOME", home.path())
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .args(args)
        .arg("-o")
        .arg(out)
        .current_dir(home.path());
    run_with_deadline(command, limit)
}

/// `conformance server --url URL --spec-version V`: check (scenario/id) → status.
fn run_suite(home: &TestHome, url: &str, version: &str, label: &str) -> BTreeMap<String, String> {
    let out = home.path().join(format!("conformance-{label}-{version}"));
    let output = conformance(
        home,
        "conformance-alpha",
        &["server", "--url", url, "--spec-version", version],
        &out,
        Duration::from_secs(300),
    );
    let mut checks = BTreeMap::new();
    for entry in std::fs::read_dir(&out).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // server-SCENARIO-2026-12-04T16-53-58-835Z
        let scenario = name
            .strip_prefix("server-")
            .and_then(|rest| rest.get(..rest.len().saturating_sub(25)))
            .unwrap_or(&name)
            .to_owned();
        let Ok(text) = std::fs::read_to_string(entry.path().join("checks.json")) else {
            continue;
        };
        let Ok(Value::Array(list)) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        for check in list {
            let id = check["id"].as_str().unwrap_or("?");
            let status = check["status"].as_str().unwrap_or("?");
            checks.insert(format!("{scenario}/{id}"), status.to_owned());
        }
    }
    assert!(
        !checks.is_empty(),
        "no results from the conformance suite against {url} at {version}\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    checks
}

#[test]
fn the_newest_conformance_suite_ends_through_mcpsm_as_it_does_directly_at_every_version() {
    let home = TestHome::new();
    let reference = reference_server();
    let port = free_port();
    let mut host = home.mcpsm();
    host.args([
        "stdio-host",
        "--port",
        &port.to_string(),
        "--name",
        "reference",
        "--",
    ])
    .arg(bin())
    .args(["proxy", "--url", &reference.url])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut host, 0);
    let host = Server::from_child(
        host.spawn().expect("spawn mcpsm stdio-host"),
        port,
        format!("http://127.0.0.1:{port}/mcp"),
    );
    wait_for(DEADLINE, "the stdio host to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });

    let mut table = vec![format!(
        "{:<12} {:<70} {:<10} {:<10}",
        "version", "scenario/check", "direct", "mcpsm"
    )];
    let mut unexplained = 0;
    let mut passed_direct = 0;
    for version in VERSIONS {
        let direct = run_suite(&home, &reference.url, version, "direct");
        let through = run_suite(&home, &host.url, version, "mcpsm");
        passed_direct += direct.values().filter(|s| *s == "SUCCESS").count();
        for check in direct
            .keys()
            .chain(through.keys().filter(|k| !direct.contains_key(*k)))
        {
            let (d, t) = (direct.get(check), through.get(check));
            if d == t || t.is_some_and(|t| t == "SUCCESS") {
                continue;
            }
            let allowed = ALLOWED
                .iter()
                .find(|(v, c, _)| *v == version && c == check)
                .map(|(_, _, why)| *why);
            if allowed.is_none() {
                unexplained += 1;
            }
            table.push(format!(
                "{version:<12} {check:<70} {:<10} {:<10} {}",
                d.map_or("-", String::as_str),
                t.map_or("-", String::as_str),
                allowed.unwrap_or("UNEXPLAINED")
            ));
        }
    }
    eprintln!("{}", table.join("\n"));
    assert!(
        passed_direct > 100,
        "the suite ran ({passed_direct} checks passed directly)"
    );
    assert_eq!(
        unexplained,
        0,
        "checks that end differently through mcpsm:\n{}",
        table.join("\n")
    );
}

/// The client scenarios a TS SDK host can drive (the 2026-07-28-only ones need a 2026 host:
/// see `client_scenarios_of_2026_07_28_pass_through_the_proxy`).
const CLIENT_SCENARIOS: [&str; 4] = [
    "initialize",
    "tools_call",
    "elicitation-sep1034-client-defaults",
    "sse-retry",
];

/// `conformance client --scenario S` with the TS SDK host, either through `mcpsm proxy` or
/// with the SDK's own HTTP transport: check id → status.
fn run_client_scenario(
    home: &TestHome,
    suite: &str,
    scenario: &str,
    through_mcpsm: bool,
) -> BTreeMap<String, String> {
    let label = if through_mcpsm { "mcpsm" } else { "direct" };
    let out = home
        .path()
        .join(format!("client-{suite}-{scenario}-{label}"));
    let driver = support_dir().join("conformance_client.mjs");
    let host = if through_mcpsm {
        format!("node {} {} proxy", driver.display(), bin().display())
    } else {
        format!("node {} --direct", driver.display())
    };
    let output = conformance(
        home,
        suite,
        &["client", "--scenario", scenario, "--command", &host],
        &out,
        Duration::from_secs(120),
    );
    let mut checks = BTreeMap::new();
    for entry in std::fs::read_dir(&out).into_iter().flatten().flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path().join("checks.json")) else {
            continue;
        };
        if let Ok(Value::Array(list)) = serde_json::from_str::<Value>(&text) {
            for check in list {
                checks.insert(
                    check["id"].as_str().unwrap_or("?").to_owned(),
                    check["status"].as_str().unwrap_or("?").to_owned(),
                );
            }
        }
    }
    assert!(
        !checks.is_empty(),
        "no results from client scenario {scenario} ({suite}, {label})\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    checks
}

#[test]
fn client_scenarios_of_both_suites_end_through_the_proxy_as_with_the_sdks_own_transport() {
    let home = TestHome::new();
    let mut differences = Vec::new();
    let alpha_only = ["json-schema-2020-12-preservation"];
    let runs = CLIENT_SCENARIOS
        .iter()
        .flat_map(|s| [("conformance", *s), ("conformance-alpha", *s)])
        .chain(alpha_only.iter().map(|s| ("conformance-alpha", *s)));
    for (suite, scenario) in runs {
        let direct = run_client_scenario(&home, suite, scenario, false);
        let through = run_client_scenario(&home, suite, scenario, true);
        for check in direct.keys().chain(through.keys()) {
            let (d, t) = (direct.get(check), through.get(check));
            if d != t && t.is_none_or(|t| t != "SUCCESS") {
                differences.push(format!(
                    "{suite} {scenario} {check}: direct {d:?}, through mcpsm {t:?}"
                ));
            }
        }
    }
    differences.dedup();
    assert!(differences.is_empty(), "{differences:#?}");
}

/// The alpha suite's 2026-07-28-only client scenarios, with raw 2026 hosts through `mcpsm
/// proxy` (the pinned TS SDK refuses 2026-07-28, so there is no SDK transport to compare with:
/// every check must pass). The proxy's part: `MCP-Protocol-Version` from `_meta` on every POST,
/// `Mcp-Param-*` headers from `x-mcp-header` annotations, tools with invalid annotations left
/// out, and everything else (input-required results, request state) passed as it is.
#[test]
fn client_scenarios_of_2026_07_28_pass_through_the_proxy() {
    let home = TestHome::new();
    let runs = [
        ("http-standard-headers", "standard_headers_client.py"),
        ("http-custom-headers", "header_scenarios_client.py"),
        ("http-invalid-tool-headers", "header_scenarios_client.py"),
        ("request-metadata", "sessionless_client.py"),
        ("sep-2322-client-request-state", "sessionless_client.py"),
        ("json-schema-ref-no-deref", "sessionless_client.py"),
    ];
    for (scenario, driver) in runs {
        let out = home.path().join(format!("client-{scenario}"));
        let host = format!(
            "python3 {} {} proxy",
            support_dir().join(driver).display(),
            bin().display()
        );
        let args = [
            "client",
            "--scenario",
            scenario,
            "--spec-version",
            "2026-07-28",
        ];
        let args = [&args[..], &["--command", &host]].concat();
        let output = conformance(
            &home,
            "conformance-alpha",
            &args,
            &out,
            Duration::from_secs(120),
        );
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success() && report.contains("OVERALL: PASSED"),
            "{scenario} through the proxy ({})\n{report}",
            output.status
        );
    }
}
