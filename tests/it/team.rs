//! A team service: Debian's nginx (consistent hash on `Mcp-Session-Id`) in front of two
//! `mcpsm stdio-host` replicas of one real server (server-memory), reached by `mcpsm proxy`
//! sessions with a bearer token, as README's "Team setup" describes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::json;

use crate::support::managed::{kill, try_http};
use crate::support::servers::memory_js;
use crate::support::{call_tool, free_port, wait_for, Proxy, TestHome, DEADLINE};

const TOKEN: &str = "team-token-0123456789";

/// One `mcpsm stdio-host` replica, killed when dropped.
struct Replica {
    child: Child,
    port: u16,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_replica(home: &TestHome, dir: &Path, index: usize) -> Replica {
    let port = free_port();
    let mut host = home.mcpsm();
    host.args([
        "stdio-host",
        "--port",
        &port.to_string(),
        "--name",
        "memory",
    ])
    .arg("--token-file")
    .arg(dir.join("tokens"))
    .args(["--drain-grace", "30s", "--log-level", "info", "--"])
    .arg("node")
    .arg(memory_js())
    .env("MEMORY_FILE_PATH", dir.join(format!("memory-{index}.json")))
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(dir.join(format!("replica-{index}.log"))).expect("log"));
    std::os::unix::process::CommandExt::process_group(&mut host, 0);
    let child = host.spawn().expect("spawn mcpsm stdio-host");
    wait_for(DEADLINE, "the replica to be ready", || {
        try_http(port, "GET", "/readyz", &[], "").is_ok_and(|a| a.status == 200)
    });
    Replica { child, port }
}

/// nginx from a generated config in `dir`, run as this user; killed when dropped.
struct Nginx {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

fn nginx_binary() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("nginx is not installed: `apt-get install -y nginx` (.ci/run does)")
}

fn start_nginx(dir: &Path, replicas: &[&Replica]) -> Nginx {
    let port = free_port();
    let servers: String = replicas
        .iter()
        .map(|r| format!("    server 127.0.0.1:{};\n", r.port))
        .collect();
    let root = Command::new("id").arg("-u").output().expect("id -u").stdout == b"0\n";
    let d = dir.display();
    let config = format!(
        "{user}daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
events {{ worker_connections 1024; }}\n\
http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
  upstream mcp {{\n    hash $http_mcp_session_id consistent;\n{servers}  }}\n\
  server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://mcp;\n\
      proxy_http_version 1.1;\n      proxy_set_header Host $http_host;\n      proxy_set_header Connection \"\";\n\
      proxy_buffering off;\n      proxy_read_timeout 1h;\n      proxy_next_upstream error timeout;\n    }}\n  }}\n}}\n",
        user = if root { "user root;\n" } else { "" },
    );
    let file = dir.join("nginx.conf");
    std::fs::write(&file, config).expect("write nginx.conf");
    let child = Command::new(nginx_binary())
        .arg("-c")
        .arg(&file)
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nginx");
    let nginx = Nginx {
        child,
        port,
        dir: dir.to_owned(),
    };
    wait_for(DEADLINE, "nginx to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    nginx
}

fn team_proxy(home: &TestHome, nginx: &Nginx) -> Proxy {
    let mut command = home.mcpsm();
    command
        .args(["proxy", "--url", &nginx.url(), "--log-level", "info"])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")]);
    Proxy::spawn_command(command)
}

/// `read_graph` through `proxy`: answered with a result.
#[track_caller]
fn assert_call_works(proxy: &mut Proxy, id: i64) {
    proxy.send(&call_tool(id, "read_graph", json!({})));
    let (response, _) = proxy.recv_response(&json!(id));
    assert!(
        response.get("result").is_some(),
        "call {id} failed: {response}\n--- proxy stderr ---\n{}",
        proxy.stderr()
    );
}

fn recoveries(proxy: &Proxy) -> usize {
    proxy.stderr().matches(" is back after ").count()
}

/// A figure from a replica's `/metrics`.
fn metric(port: u16, name: &str) -> f64 {
    let answer = try_http(port, "GET", "/metrics", &[], "").expect("GET /metrics");
    answer
        .body
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {}", answer.body))
}

fn setup(home: &TestHome) -> tempfile::TempDir {
    let dir = tempfile::tempdir_in(home.path()).expect("tempdir");
    std::fs::write(dir.path().join("tokens"), format!("# team\n{TOKEN}\n")).expect("tokens");
    dir
}

#[test]
fn twenty_sessions_survive_a_replica_killed_behind_nginx() {
    let home = TestHome::new();
    let dir = setup(&home);
    let first = start_replica(&home, dir.path(), 1);
    let mut second = start_replica(&home, dir.path(), 2);
    let nginx = start_nginx(dir.path(), &[&first, &second]);
    let mut proxies: Vec<Proxy> = (0..20).map(|_| team_proxy(&home, &nginx)).collect();
    for proxy in &mut proxies {
        proxy.initialize();
    }
    for (i, proxy) in proxies.iter_mut().enumerate() {
        assert_call_works(proxy, 10 + i as i64);
    }
    let opened: f64 = [first.port, second.port]
        .iter()
        .map(|p| metric(*p, "mcpsm_host_sessions_opened_total"))
        .sum();
    assert!(opened >= 20.0, "{opened} sessions opened for 20 proxies");
    let before: Vec<usize> = proxies.iter().map(recoveries).collect();

    kill(second.child.id(), libc::SIGKILL);
    let _ = second.child.wait();
    for (i, proxy) in proxies.iter_mut().enumerate() {
        assert_call_works(proxy, 100 + i as i64);
    }
    // Every call still works; the sessions that were on the killed replica were recovered
    // (re-initialized on the other one), and each proxy counted it.
    let recovered = proxies
        .iter()
        .zip(&before)
        .filter(|(p, b)| recoveries(p) > **b)
        .count();
    let on_survivor = metric(first.port, "mcpsm_host_sessions");
    eprintln!("recovered sessions after the kill: {recovered} of 20; sessions on the survivor: {on_survivor}");
    assert!(
        recovered >= 1,
        "no session was recovered; nginx:\n{}",
        nginx.error_log()
    );
    assert!(
        on_survivor >= 20.0,
        "{on_survivor} sessions on the surviving replica"
    );
}

#[test]
fn sessionless_requests_spread_over_both_replicas() {
    let home = TestHome::new();
    let dir = setup(&home);
    let first = start_replica(&home, dir.path(), 1);
    let second = start_replica(&home, dir.path(), 2);
    let nginx = start_nginx(dir.path(), &[&first, &second]);
    let auth = format!("Bearer {TOKEN}");
    for id in 0..20 {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/list", "params": {
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {}}}});
        let answer = try_http(
            nginx.port,
            "POST",
            "/mcp",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
                ("Accept", "application/json, text/event-stream"),
                ("MCP-Protocol-Version", "2026-07-28"),
            ],
            &body.to_string(),
        )
        .expect("POST through nginx");
        assert_eq!(answer.status, 200, "{answer:?}");
        assert!(answer.body.contains("read_graph"), "{answer:?}");
    }
    let counts: Vec<f64> = [first.port, second.port]
        .iter()
        .map(|p| metric(*p, "mcpsm_host_sessionless_requests_total"))
        .collect();
    eprintln!("sessionless requests per replica: {counts:?}");
    assert_eq!(counts.iter().sum::<f64>(), 20.0, "{counts:?}");
    assert!(counts.iter().all(|c| *c >= 1.0), "not spread: {counts:?}");
}

#[test]
fn a_non_loopback_bind_without_auth_is_refused() {
    let home = TestHome::new();
    let output = home
        .mcpsm()
        .args(["stdio-host", "--bind", "0.0.0.0", "--port"])
        .arg(free_port().to_string())
        .arg("--")
        .arg("node")
        .arg(memory_js())
        .stdin(Stdio::null())
        .output()
        .expect("run mcpsm stdio-host");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0") && stderr.contains("--token-file"),
        "{stderr}"
    );
}

#[test]
fn a_drain_under_load_loses_no_request() {
    let home = TestHome::new();
    let dir = setup(&home);
    let first = start_replica(&home, dir.path(), 1);
    let second = start_replica(&home, dir.path(), 2);
    let nginx = start_nginx(dir.path(), &[&first, &second]);
    let mut proxies: Vec<Proxy> = (0..6).map(|_| team_proxy(&home, &nginx)).collect();
    // nginx hashes the session id: a new session often lands on the other replica, and the
    // proxy makes sessions until one sticks (see README, hash-only balancers).
    for proxy in &mut proxies {
        proxy.initialize();
    }
    for proxy in &mut proxies {
        assert_call_works(proxy, 1);
    }
    // Calls in flight on every session while one replica gets SIGTERM.
    let mut next = 100;
    let mut sent: Vec<Vec<i64>> = vec![Vec::new(); proxies.len()];
    for round in 0..10 {
        for (i, proxy) in proxies.iter_mut().enumerate() {
            proxy.send(&call_tool(next, "read_graph", json!({})));
            sent[i].push(next);
            next += 1;
        }
        if round == 3 {
            kill(second.child.id(), libc::SIGTERM);
        }
    }
    for (proxy, ids) in proxies.iter_mut().zip(&sent) {
        let mut waiting: Vec<i64> = ids.clone();
        let until = std::time::Instant::now() + DEADLINE;
        while !waiting.is_empty() {
            let Some(left) = until.checked_duration_since(std::time::Instant::now()) else {
                break;
            };
            let Ok(line) = proxy.try_recv_line(left) else {
                break;
            };
            let message: serde_json::Value = serde_json::from_str(&line).expect("JSON");
            let Some(id) = message["id"].as_i64() else {
                continue;
            };
            assert!(
                message.get("result").is_some(),
                "call {id} failed in the drain: {message}\n--- proxy stderr ---\n{}\n--- nginx ---\n{}",
                proxy.stderr(),
                nginx.error_log()
            );
            waiting.retain(|w| *w != id);
        }
        assert!(
            waiting.is_empty(),
            "calls {waiting:?} never answered\n--- proxy stderr ---\n{}\n--- nginx ---\n{}\n--- draining replica ---\n{}",
            proxy.stderr(),
            nginx.error_log(),
            std::fs::read_to_string(dir.path().join("replica-2.log")).unwrap_or_default()
        );
    }
}

fn make_cert(dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let made = Command::new(crate::support::servers::python())
        .arg(crate::support::support_dir().join("make_cert.py"))
        .arg(dir)
        .status()
        .expect("run make_cert.py");
    assert!(made.success());
}

/// An `initialize` through a fresh proxy trusting only `cert`: whether it was answered.
fn initializes_trusting(home: &TestHome, url: &str, cert: &Path) -> bool {
    let mut command = home.mcpsm();
    command
        .env("SSL_CERT_FILE", cert)
        .args(["proxy", "--url", url, "--reconnect-timeout", "0s"])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")]);
    let mut proxy = Proxy::spawn_command(command);
    proxy.send(&crate::support::initialize_request(0));
    let (answer, _) = proxy.recv_response(&json!(0));
    answer.get("result").is_some()
}

#[test]
fn tls_certificates_are_reloaded_when_their_files_change() {
    let home = TestHome::new();
    let dir = setup(&home);
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    make_cert(&first);
    make_cert(&second);
    let live = dir.path().join("live");
    std::fs::create_dir_all(&live).expect("mkdir");
    for file in ["cert.pem", "key.pem"] {
        std::fs::copy(first.join(file), live.join(file)).expect("copy");
    }
    let port = free_port();
    let mut host = home.mcpsm();
    host.args(["stdio-host", "--port", &port.to_string()])
        .arg("--token-file")
        .arg(dir.path().join("tokens"))
        .arg("--tls-cert")
        .arg(live.join("cert.pem"))
        .arg("--tls-key")
        .arg(live.join("key.pem"))
        .arg("--")
        .arg("node")
        .arg(memory_js())
        .env("MEMORY_FILE_PATH", dir.path().join("memory.json"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = host.spawn().expect("spawn mcpsm stdio-host");
    let _replica = Replica { child, port };
    wait_for(DEADLINE, "the host to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let url = format!("https://localhost:{port}/mcp");
    assert!(initializes_trusting(&home, &url, &first.join("cert.pem")));
    assert!(!initializes_trusting(&home, &url, &second.join("cert.pem")));
    // Renewed in place (written aside, then renamed over, as cert-manager's volumes do).
    for file in ["key.pem", "cert.pem"] {
        std::fs::copy(second.join(file), live.join(format!("{file}.new"))).expect("copy");
        std::fs::rename(live.join(format!("{file}.new")), live.join(file)).expect("rename");
    }
    wait_for(DEADLINE, "the renewed certificate to be served", || {
        initializes_trusting(&home, &url, &second.join("cert.pem"))
    });
}

#[test]
fn doctor_checks_reachability_and_auth_of_a_team_service() {
    let home = TestHome::new();
    let dir = setup(&home);
    let replica = start_replica(&home, dir.path(), 1);
    let down = free_port();
    home.write_registry(&format!(
        "[daemons.team]\nurl = \"http://127.0.0.1:{port}/mcp\"\nheaders = {{ Authorization = \"Bearer ${{TEAM_TOKEN}}\" }}\n\n\
         [daemons.tokenless]\nurl = \"http://127.0.0.1:{port}/mcp\"\n\n\
         [daemons.gone]\nurl = \"http://127.0.0.1:{down}/mcp\"\n",
        port = replica.port
    ));
    let mut command = home.mcpsm();
    command
        .env_remove("RUST_LOG")
        .env("TEAM_TOKEN", TOKEN)
        .arg("doctor");
    let output = crate::support::servers::run_with_deadline(command, DEADLINE);
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        out.contains("ok    daemon team: http://127.0.0.1:") && out.contains("reachable"),
        "{out}"
    );
    assert!(
        out.contains("daemon tokenless:")
            && out.contains("answered HTTP 401: no `Authorization` header is configured"),
        "{out}"
    );
    assert!(
        out.contains("daemon gone:") && out.contains("is not reachable"),
        "{out}"
    );
    assert_eq!(output.status.code(), Some(1), "{out}");
}
