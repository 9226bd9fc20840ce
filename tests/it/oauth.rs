//! OAuth through `mcpsm proxy --url`, against an in-process authorization server and MCP
//! server on one origin: tokens never reach stderr, and concurrent proxies for one URL share
//! one authorization and one refresh; and registry daemons, whose authorization the manager
//! owns for all their sessions.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde_json::{json, Value};

use crate::support::fake::Fake;
use crate::support::managed::ManagedHome;
use crate::support::{initialize_request, request, support_dir, wait_for, Proxy, TestHome};

#[derive(Default)]
struct AuthServer {
    authorizations: AtomicUsize,
    refreshes: AtomicUsize,
    issued: AtomicUsize,
    valid: Mutex<HashSet<String>>,
    /// Lifetime of tokens from the code exchange (refreshed ones live an hour).
    first_lifetime: u64,
}

fn base(headers: &HeaderMap) -> String {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    format!("http://{host}")
}

fn oauth_fake(first_lifetime: u64) -> (Fake, Arc<AuthServer>) {
    let state = Arc::new(AuthServer {
        first_lifetime,
        ..AuthServer::default()
    });
    let router = Router::new()
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(|headers: HeaderMap| async move {
                let base = base(&headers);
                Json(json!({"resource": format!("{base}/mcp"), "authorization_servers": [base], "scopes_supported": ["mcp"]}))
            }),
        )
        .route(
            "/.well-known/oauth-authorization-server",
            get(|headers: HeaderMap| async move {
                let base = base(&headers);
                Json(json!({
                    "issuer": base,
                    "authorization_endpoint": format!("{base}/authorize"),
                    "token_endpoint": format!("{base}/token"),
                    "registration_endpoint": format!("{base}/register"),
                    "response_types_supported": ["code"],
                    "code_challenge_methods_supported": ["S256"],
                    "token_endpoint_auth_methods_supported": ["none"],
                }))
            }),
        )
        .route(
            "/register",
            post(|| async { (StatusCode::CREATED, Json(json!({"client_id": "fake-client"}))) }),
        )
        .route(
            "/authorize",
            get(
                |State(state): State<Arc<AuthServer>>, Query(q): Query<HashMap<String, String>>| async move {
                    state.authorizations.fetch_add(1, Ordering::SeqCst);
                    let to = format!(
                        "{}?code=fake-code&state={}",
                        q.get("redirect_uri").cloned().unwrap_or_default(),
                        q.get("state").cloned().unwrap_or_default()
                    );
                    (StatusCode::FOUND, [("location", to)])
                },
            ),
        )
        .route(
            "/token",
            post(
                |State(state): State<Arc<AuthServer>>, Form(form): Form<HashMap<String, String>>| async move {
                    let n = state.issued.fetch_add(1, Ordering::SeqCst) + 1;
                    let lifetime = if form.get("grant_type").map(String::as_str) == Some("refresh_token") {
                        state.refreshes.fetch_add(1, Ordering::SeqCst);
                        3600
                    } else {
                        state.first_lifetime
                    };
                    let token = format!("secret-access-{n}");
                    state.valid.lock().unwrap().insert(token.clone());
                    Json(json!({
                        "access_token": token,
                        "token_type": "Bearer",
                        "expires_in": lifetime,
                        "refresh_token": format!("secret-refresh-{n}"),
                    }))
                },
            ),
        )
        .route("/mcp", post(mcp).get(|| async { StatusCode::METHOD_NOT_ALLOWED }))
        .with_state(state.clone());
    (Fake::start(router), state)
}

async fn mcp(
    State(state): State<Arc<AuthServer>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let token = headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !state.valid.lock().unwrap().contains(token) {
        let challenge = format!(
            r#"Bearer resource_metadata="{}/.well-known/oauth-protected-resource/mcp""#,
            base(&headers)
        );
        return (
            StatusCode::UNAUTHORIZED,
            [("www-authenticate", challenge)],
            Json(json!({"error": "invalid_token"})),
        )
            .into_response();
    }
    let Some(id) = body.get("id").cloned() else {
        return StatusCode::ACCEPTED.into_response();
    };
    let result = match body["method"].as_str() {
        Some("initialize") => json!({
            "protocolVersion": "2025-06-18",
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "fake-oauth", "version": "1"}
        }),
        Some("tools/list") => json!({"tools": []}),
        _ => json!({}),
    };
    Json(json!({"jsonrpc": "2.0", "id": id, "result": result})).into_response()
}

fn oauth_proxy(home: &TestHome, url: &str) -> Proxy {
    let mut command = home.mcpsm();
    command
        .env("RUST_LOG", "trace")
        .env(
            "MCPSM_OAUTH_OPENER",
            format!("node {}", support_dir().join("oauth_opener.mjs").display()),
        )
        .args(["proxy", "--url", url]);
    Proxy::spawn_command(command)
}

#[test]
fn oauth_tokens_never_appear_on_stderr_even_with_trace_logging() {
    let (fake, state) = oauth_fake(3600);
    let home = TestHome::new();
    let mut proxy = oauth_proxy(&home, &fake.url);
    proxy.initialize();
    proxy.send(&request(2, "tools/list", json!({})));
    let (answer, _) = proxy.recv_response(&json!(2));
    assert!(answer.get("result").is_some(), "{answer}");
    assert_eq!(state.authorizations.load(Ordering::SeqCst), 1);
    let stderr = proxy.stderr();
    assert!(
        stderr.contains("to authorize"),
        "the URL is shown: {stderr}"
    );
    assert!(
        !stderr.contains("secret-"),
        "a token reached stderr:\n{stderr}"
    );
    let file = std::fs::read_dir(home.path().join("oauth"))
        .expect("oauth dir")
        .filter_map(Result::ok)
        .find(|e| e.path().extension().is_some_and(|x| x == "json"))
        .expect("a token file");
    use std::os::unix::fs::PermissionsExt;
    let mode = file.metadata().expect("metadata").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "token file mode");
}

/// Every proxy (each sent `initialize` with id 0) gets its answer after one authorization;
/// three seconds later (62 s tokens) each pings, after one refresh between them.
fn one_authorization_then_one_refresh(proxies: &mut [Proxy], state: &AuthServer) {
    for proxy in proxies.iter_mut() {
        let (answer, _) = proxy.recv_response(&json!(0));
        assert!(answer.get("result").is_some(), "{answer}");
        proxy.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    }
    assert_eq!(
        state.authorizations.load(Ordering::SeqCst),
        1,
        "authorizations"
    );
    std::thread::sleep(Duration::from_secs(3));
    for (n, proxy) in proxies.iter_mut().enumerate() {
        let id = 100 + n as i64;
        proxy.send(&request(id, "ping", json!({})));
        let (answer, _) = proxy.recv_response(&json!(id));
        assert!(answer.get("result").is_some(), "{answer}");
    }
    assert_eq!(
        state.authorizations.load(Ordering::SeqCst),
        1,
        "authorizations"
    );
    assert_eq!(state.refreshes.load(Ordering::SeqCst), 1, "refreshes");
}

#[test]
fn ten_concurrent_proxies_share_one_authorization_and_one_refresh() {
    // 62 s tokens are refreshed once they are within 60 s of expiring: two seconds in.
    let (fake, state) = oauth_fake(62);
    let home = TestHome::new();
    let mut proxies: Vec<Proxy> = (0..10).map(|_| oauth_proxy(&home, &fake.url)).collect();
    // All ten ask at once: ten 401s, one authorization.
    for proxy in &mut proxies {
        proxy.send(&initialize_request(0));
    }
    one_authorization_then_one_refresh(&mut proxies, &state);
}

#[test]
fn login_authorizes_a_registry_daemon_that_its_proxies_then_use_and_logout_forgets_it() {
    let (fake, state) = oauth_fake(3600);
    // Without a manager running, `login` runs the flow itself; the proxy then starts one.
    let home = oauth_daemon_home(&fake.url, "scopes = \"mcp\"\n");
    let opener = format!("node {}", support_dir().join("oauth_opener.mjs").display());
    let output = home
        .home
        .mcpsm()
        .env("MCPSM_OAUTH_OPENER", &opener)
        .args(["login", "remote"])
        .output()
        .expect("mcpsm login");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("logged in to"), "{stdout}");
    assert!(!stdout.contains("secret-"), "{stdout}");
    let status = home
        .home
        .mcpsm()
        .arg("status")
        .output()
        .expect("mcpsm status");
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("oauth: logged in to") && !status.contains("secret-"),
        "status says who the daemon is logged in to, never a token: {status}"
    );
    let mut proxy = home.proxy("remote");
    proxy.initialize();
    assert_eq!(
        state.authorizations.load(Ordering::SeqCst),
        1,
        "authorizations"
    );
    let output = home
        .home
        .mcpsm()
        .args(["logout", "remote"])
        .output()
        .expect("mcpsm logout");
    assert!(String::from_utf8_lossy(&output.stdout).contains("logged out"));
    let status = home
        .home
        .mcpsm()
        .arg("status")
        .output()
        .expect("mcpsm status");
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("oauth: not logged in; run `mcpsm login remote`"),
        "{status}"
    );
}

/// A home whose registry has daemon `remote` at `url` with `auth = "oauth"` (and `extra`).
fn oauth_daemon_home(url: &str, extra: &str) -> ManagedHome {
    ManagedHome::new(&format!(
        "[daemons.remote]\nurl = \"{url}\"\ntransport = \"streamable-http\"\nauth = \"oauth\"\n{extra}"
    ))
}

/// Starts the home's manager with `opener` as its browser, logging at trace level.
fn start_manager(home: &ManagedHome, opener: &str) {
    let started = home
        .home
        .mcpsm()
        .env("RUST_LOG", "trace")
        .env("MCPSM_OAUTH_OPENER", opener)
        .args(["manager", "--detach"])
        .output()
        .expect("mcpsm manager --detach");
    assert!(started.status.success(), "{started:?}");
}

/// An opener that waits for `gate` to exist before completing the flow: the login stays
/// under way as long as the test wants.
fn gated_opener(dir: &std::path::Path, gate: &std::path::Path) -> String {
    let script = dir.join("gated_opener.sh");
    std::fs::write(
        &script,
        format!(
            "while [ ! -e '{}' ]; do sleep 0.05; done\nexec node '{}' \"$@\"\n",
            gate.display(),
            support_dir().join("oauth_opener.mjs").display()
        ),
    )
    .expect("write the opener");
    format!("sh {}", script.display())
}

#[test]
fn ten_sessions_of_a_registry_daemon_share_the_managers_one_authorization_and_one_refresh() {
    // 62 s tokens are refreshed once they are within 60 s of expiring: two seconds in.
    let (fake, state) = oauth_fake(62);
    let home = oauth_daemon_home(&fake.url, "");
    let gate = home.path().join("browser-done");
    let opener = gated_opener(home.path(), &gate);
    start_manager(&home, &opener);
    let spawn = || {
        let mut command = home.home.mcpsm();
        command
            .env("RUST_LOG", "trace")
            .args(["proxy", "--target", "remote"]);
        Proxy::spawn_command(command)
    };
    // The first session starts the login; the manager opens the (gated) browser.
    let mut proxies = vec![spawn()];
    proxies[0].send(&initialize_request(0));
    let manager_log = home.path().join("logs").join("manager.log");
    let log = || std::fs::read_to_string(&manager_log).unwrap_or_default();
    wait_for(
        Duration::from_secs(30),
        "the manager to open the browser",
        || log().contains("to authorize"),
    );
    // Nine more start while the login is under way: they wait for it.
    for _ in 1..10 {
        let mut proxy = spawn();
        proxy.send(&initialize_request(0));
        proxies.push(proxy);
    }
    wait_for(
        Duration::from_secs(30),
        "every waiting session to show the URL",
        || proxies.iter().all(|p| p.stderr().contains("/authorize?")),
    );
    std::fs::write(&gate, "").expect("open the gate");
    one_authorization_then_one_refresh(&mut proxies, &state);
    let log = log();
    assert!(
        log.contains("authorized by"),
        "the manager ran the flow:\n{log}"
    );
    assert!(
        !log.contains("secret-"),
        "a token reached the manager's log:\n{log}"
    );
    for proxy in &proxies {
        let stderr = proxy.stderr();
        assert!(
            !stderr.contains("authorized by"),
            "a proxy ran its own flow:\n{stderr}"
        );
        assert!(
            !stderr.contains("secret-"),
            "a token reached stderr:\n{stderr}"
        );
    }
    // No Secret Service here (no session bus): the 0600 file, and status says so. Doctor's
    // tokenless probe counts the daemon's 401 as reachable and opens no browser.
    let status = home.run(&["status"]);
    assert!(
        status.stdout.contains("oauth: logged in to")
            && status.stdout.contains("tokens in ")
            && !status.stdout.contains("secret-"),
        "{status:?}"
    );
    let doctor = home.run(&["doctor"]);
    assert!(
        doctor
            .stdout
            .contains("OAuth tokens are kept in a 0600 file")
            && !doctor.stdout.contains("no MCP handshake")
            && !doctor.stdout.contains("secret-"),
        "{doctor:?}"
    );
}

#[test]
fn login_goes_through_a_running_manager_which_its_sessions_then_use() {
    let (fake, state) = oauth_fake(3600);
    let home = oauth_daemon_home(&fake.url, "");
    let opener = format!("node {}", support_dir().join("oauth_opener.mjs").display());
    start_manager(&home, &opener);
    let login = home.run(&["login", "remote"]);
    assert_eq!(login.code, Some(0), "{login:?}");
    assert!(
        login.stderr.contains("/authorize?"),
        "the URL is printed: {login:?}"
    );
    assert!(login.stdout.contains("logged in to"), "{login:?}");
    let log =
        std::fs::read_to_string(home.path().join("logs").join("manager.log")).unwrap_or_default();
    assert!(
        log.contains("authorized by"),
        "the manager ran the flow:\n{log}"
    );
    let mut proxy = home.proxy("remote");
    proxy.initialize();
    assert_eq!(
        state.authorizations.load(Ordering::SeqCst),
        1,
        "authorizations"
    );
    let logout = home.run(&["logout", "remote"]);
    assert!(logout.stdout.contains("logged out"), "{logout:?}");
    // The manager forgot its tokens too: a new session has to authorize again.
    let mut proxy = home.proxy("remote");
    proxy.initialize();
    assert_eq!(
        state.authorizations.load(Ordering::SeqCst),
        2,
        "authorizations"
    );
}
