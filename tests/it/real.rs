//! Real MCP clients and servers through `mcpsm proxy`: the official Python SDK client, the
//! official conformance suite's client scenarios, server-everything (npm) in streamable HTTP
//! and legacy SSE modes, and FastMCP servers (official Python SDK).

use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::support::servers::{everything, python_client, python_server, run_with_deadline};
use crate::support::{call_tool, request, support_dir, Proxy, TestHome};

/// Everything py_client.py checks in one session: initialize, tools/prompts/resources, 1 MiB and
/// tricky-Unicode echoes, progress (all notifications), sampling, elicitation, roots,
/// 16 concurrent calls, an unknown tool.
#[test]
fn python_sdk_client_through_proxy_to_streamable_http_everything() {
    let server = everything("streamableHttp");
    let home = TestHome::new();
    let report = python_client(&home, &["all"], &["--url", &server.url]);
    assert_eq!(report["ok"], true, "{report}");
}

#[test]
fn python_sdk_client_through_proxy_to_legacy_sse_everything_detected_by_auto() {
    let server = everything("sse");
    let home = TestHome::new();
    let report = python_client(&home, &["all"], &["--url", &server.url]);
    assert_eq!(report["ok"], true, "{report}");
}

#[test]
fn explicit_sse_transport_talks_to_legacy_everything() {
    let server = everything("sse");
    let home = TestHome::new();
    let report = python_client(
        &home,
        &["basic"],
        &["--url", &server.url, "--transport", "sse"],
    );
    assert_eq!(report["ok"], true, "{report}");
}

#[test]
fn target_resolves_a_registry_daemon_with_a_client_stripped_environment() {
    let server = everything("streamableHttp");
    let home = TestHome::new();
    // No MCPSM_HOME reaches the proxy (--default-env passes only what the SDK passes: HOME,
    // PATH, …), so the registry is found under $HOME/.mcp-session-manager.
    let state = home.path().join(".mcp-session-manager");
    std::fs::create_dir_all(&state).expect("mkdir");
    std::fs::write(
        state.join("daemons.toml"),
        format!(
            "[daemons.everything]\nurl = \"{}\"\ntransport = \"streamable-http\"\n",
            server.url
        ),
    )
    .expect("write registry");
    let report = python_client(
        &home,
        &["--default-env", "basic"],
        &["--target", "everything"],
    );
    assert_eq!(report["ok"], true, "{report}");
}

#[test]
fn fastmcp_json_response_server_through_proxy() {
    let server = python_server("json");
    let home = TestHome::new();
    for scenario in ["basic", "echo-big", "concurrent", "unknown-tool"] {
        let report = python_client(&home, &[scenario], &["--url", &server.url]);
        assert_eq!(report["ok"], true, "{scenario}: {report}");
    }
}

#[test]
fn fastmcp_sse_response_server_delivers_progress_through_proxy() {
    let server = python_server("sse");
    let home = TestHome::new();
    for scenario in ["basic", "progress", "concurrent"] {
        let report = python_client(&home, &[scenario], &["--url", &server.url]);
        assert_eq!(report["ok"], true, "{scenario}: {report}");
    }
}

#[test]
fn fastmcp_legacy_sse_server_through_proxy() {
    let server = python_server("legacy-sse");
    let home = TestHome::new();
    for scenario in ["basic", "progress", "unknown-tool"] {
        let report = python_client(&home, &[scenario], &["--url", &server.url]);
        assert_eq!(report["ok"], true, "{scenario}: {report}");
    }
}

/// Raw wire check against a real server: 16 requests written at once all come back, each
/// exactly once, with their own ids.
#[test]
fn sixteen_requests_in_flight_each_get_exactly_one_answer() {
    let server = everything("streamableHttp");
    let home = TestHome::new();
    let mut proxy = Proxy::spawn(&home, &["--url", &server.url]);
    proxy.initialize();
    for id in 1..=16 {
        proxy.send(&call_tool(id, "echo", json!({"message": format!("m{id}")})));
    }
    let mut seen = std::collections::BTreeMap::new();
    while seen.len() < 16 {
        let message = proxy.recv();
        if message.get("method").is_some() {
            continue; // list_changed and other notifications
        }
        let id = message["id"].as_i64().expect("numeric id");
        let text = message["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_default();
        assert_eq!(text, format!("Echo: m{id}"));
        assert!(seen.insert(id, ()).is_none(), "id {id} answered twice");
    }
    proxy.send(&request(99, "ping", json!({})));
    let (pong, _) = proxy.recv_response(&json!(99));
    assert!(pong.get("result").is_some());
}

/// The official conformance suite's client scenarios, with a TS SDK host driving
/// `mcpsm proxy --url <mock server>`.
fn conformance_client(scenario: &str) {
    let output = run_conformance_client("conformance", scenario);
    assert!(
        output.status.success(),
        "conformance client scenario {scenario} failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs one client scenario of the suite installed under tests/support/`suite`.
fn run_conformance_client(suite_dir: &str, scenario: &str) -> std::process::Output {
    let support = support_dir();
    let suite = support.join(format!("{suite_dir}/node_modules/.bin/conformance"));
    let node22 = support.join(format!("{suite_dir}/node_modules/.bin"));
    assert!(
        suite.exists(),
        "{} is missing: run `bash tests/support/setup.sh`",
        suite.display()
    );
    let home = TestHome::new();
    let results = home.path().join("results");
    let path = format!(
        "{}:{}",
        node22.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new(&suite);
    command
        .env("PATH", path)
        .env("HOME", home.path())
        .env("MCPSM_HOME", home.path())
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .arg("client")
        .arg("--command")
        .arg(format!(
            "node {} {} proxy",
            support.join("conformance_client.mjs").display(),
            crate::support::bin().display()
        ))
        .arg("--scenario")
        .arg(scenario)
        .arg("-o")
        .arg(&results)
        .current_dir(home.path());
    run_with_deadline(command, Duration::from_secs(120))
}

/// The `auth/*` client scenarios of one suite through `mcpsm proxy`, the browser step done by
/// tests/support/oauth_opener.mjs (MCPSM_OAUTH_OPENER). Every scenario passes except those
/// in `not_passing`, each with its reason; those must still not pass (a stale entry fails).
fn conformance_auth(suite_dir: &str, scenarios: &[&str], not_passing: &[(&str, &str)]) {
    let mut failed = Vec::new();
    for scenario in scenarios.iter().chain(not_passing.iter().map(|(s, _)| s)) {
        let output = run_conformance_client(suite_dir, scenario);
        let expected = !not_passing.iter().any(|(s, _)| s == scenario);
        if output.status.success() != expected {
            failed.push(format!(
                "{scenario}: expected {}, got {}\n{}",
                if expected { "a pass" } else { "a failure" },
                output.status,
                String::from_utf8_lossy(&output.stdout)
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

/// Authorization scenarios every suite version has.
const AUTH_SCENARIOS: &[&str] = &[
    "auth/metadata-default",
    "auth/metadata-var1",
    "auth/metadata-var2",
    "auth/metadata-var3",
    "auth/basic-cimd",
    "auth/scope-from-www-authenticate",
    "auth/scope-from-scopes-supported",
    "auth/scope-omitted-when-undefined",
    "auth/scope-step-up",
    "auth/scope-retry-limit",
    "auth/token-endpoint-auth-basic",
    "auth/token-endpoint-auth-post",
    "auth/token-endpoint-auth-none",
    "auth/pre-registration",
    "auth/2025-03-26-oauth-metadata-backcompat",
    "auth/2025-03-26-oauth-endpoint-fallback",
    "auth/resource-mismatch",
];

/// Extensions beyond the MCP authorization spec every suite version has (SEP-1046 client
/// credentials, with a secret and with `private_key_jwt`).
const AUTH_EXTENSIONS: &[&str] = &[
    "auth/client-credentials-basic",
    "auth/client-credentials-jwt",
];

#[test]
fn conformance_auth_scenarios_pass_through_the_proxy() {
    let mut scenarios = AUTH_SCENARIOS.to_vec();
    scenarios.extend(AUTH_EXTENSIONS);
    scenarios.extend([
        "auth/offline-access-scope",
        "auth/offline-access-not-supported",
        "auth/cross-app-access-complete-flow",
    ]);
    conformance_auth("conformance", &scenarios, &[]);
}

/// 0.2.0-alpha.12: its RFC 9207 `iss` and issuer checks too, its 2026-07-28-only scenarios
/// (the driver hands those to a raw sessionless host: the mock refuses `initialize`), and the
/// SEP-990, DPoP and workload identity extensions.
#[test]
fn newest_conformance_auth_scenarios_pass_through_the_proxy() {
    let mut scenarios = AUTH_SCENARIOS.to_vec();
    scenarios.extend(AUTH_EXTENSIONS);
    scenarios.extend([
        "auth/iss-supported-missing",
        "auth/iss-wrong-issuer",
        "auth/iss-unexpected",
        "auth/iss-normalized",
        "auth/metadata-issuer-mismatch",
        "auth/offline-access-scope",
        "auth/offline-access-not-supported",
        "auth/iss-supported",
        "auth/iss-not-advertised",
        "auth/authorization-server-migration",
        "auth/enterprise-managed-authorization",
        "auth/dpop",
        "auth/dpop-nonce",
        "auth/wif-jwt-bearer",
    ]);
    conformance_auth("conformance-alpha", &scenarios, &[]);
}

#[test]
fn conformance_client_initialize() {
    conformance_client("initialize");
}

#[test]
fn conformance_client_tools_call() {
    conformance_client("tools_call");
}

#[test]
fn conformance_client_sse_retry() {
    conformance_client("sse-retry");
}

#[test]
fn conformance_client_elicitation_defaults() {
    conformance_client("elicitation-sep1034-client-defaults");
}

/// Remote daemons over HTTPS: rustls with the platform's roots (here a test CA given by
/// `SSL_CERT_FILE`), and a clear error for a certificate that is not trusted.
#[test]
fn https_daemons_work_and_an_untrusted_certificate_is_a_clear_error() {
    use crate::support::servers::python;
    let home = TestHome::new();
    let tls = home.path().join("tls");
    std::fs::create_dir_all(&tls).expect("mkdir");
    let made = Command::new(python())
        .arg(support_dir().join("make_cert.py"))
        .arg(&tls)
        .status()
        .expect("run make_cert.py");
    assert!(made.success());
    let port = crate::support::free_port();
    let mut server = Command::new(python());
    server
        .arg(support_dir().join("py_server.py"))
        .args(["--port", &port.to_string(), "--mode", "json", "--tls-cert"])
        .arg(tls.join("cert.pem"))
        .arg("--tls-key")
        .arg(tls.join("key.pem"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut server, 0);
    let server = crate::support::servers::Server::from_child(
        server.spawn().expect("spawn py_server.py"),
        port,
        format!("https://localhost:{port}/mcp"),
    );
    crate::support::wait_for(
        crate::support::DEADLINE,
        "the HTTPS server to listen",
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );

    let mut trusted = home.mcpsm();
    trusted
        .env("SSL_CERT_FILE", tls.join("cert.pem"))
        .args(["proxy", "--url", &server.url]);
    let mut proxy = Proxy::spawn_command(trusted);
    proxy.initialize();
    proxy.send(&call_tool(1, "echo", json!({"message": "over tls"})));
    let (answer, _) = proxy.recv_response(&json!(1));
    assert_eq!(
        answer["result"]["content"][0]["text"], "Echo: over tls",
        "{answer}"
    );

    let mut untrusted = Proxy::spawn(&home, &["--url", &server.url]);
    untrusted.send(&crate::support::initialize_request(1));
    let (answer, _) = untrusted.recv_response(&json!(1));
    let message = crate::support::error_of(&answer)["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains("could not set up TLS") && message.contains("SSL_CERT_FILE"),
        "{message}"
    );
}
