//! The forward-auth recipes run as shipped: the real nginx and Caddy from Debian
//! (installed by `scripts/ensure-proxies`) with `docs/proxies/nginx.conf` and
//! `docs/proxies/Caddyfile`, their placeholders filled in, in front of a real
//! gateway and application.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use portcullis_core::forwarded::TrustedProxies;
use portcullis_gateway::{PublicUrl, Upstream};
use reqwest::cookie::{CookieStore, Jar};

use crate::both_backends;
use crate::harness::*;
use crate::websocket::{close_frame, connect, upstream_view};

both_backends!(nginx_forward_auth_recipe, caddy_forward_auth_recipe);

const NGINX: &str = "/usr/sbin/nginx";
const CADDY: &str = "/usr/bin/caddy";

#[derive(Debug, Clone, Copy)]
enum Kind {
    Nginx,
    Caddy,
}

/// A front proxy process on `listen` running a recipe; stopped on drop.
struct FrontProxy {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for FrontProxy {
    fn drop(&mut self) {
        // SIGTERM, so nginx's master stops its workers (SIGKILL would orphan
        // them, still holding the port); SIGKILL only if it does not exit.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl FrontProxy {
    async fn start(
        kind: Kind,
        listen: SocketAddr,
        portcullis: SocketAddr,
        app: SocketAddr,
    ) -> Self {
        let (binary, recipe, site) = match kind {
            Kind::Nginx => (NGINX, "nginx.conf", listen.to_string()),
            Kind::Caddy => (CADDY, "Caddyfile", format!("http://{listen}")),
        };
        assert!(
            std::path::Path::new(binary).exists(),
            "{binary} is not installed: run scripts/ensure-proxies (scripts/test does)"
        );
        let recipe = std::fs::read_to_string(format!(
            "{}/../../docs/proxies/{recipe}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let dir = std::env::temp_dir().join(format!("portcullis-{kind:?}-{}", listen.port()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = recipe
            .replace("LISTEN", &site)
            .replace("PORTCULLIS", &portcullis.to_string())
            .replace("APP", &app.to_string());
        let child = match kind {
            Kind::Nginx => {
                let path = dir.join("nginx.conf");
                std::fs::write(&path, conf).unwrap();
                let globals = format!(
                    "pid {0}/nginx.pid; error_log {0}/error.log; daemon off;",
                    dir.display()
                );
                Command::new(NGINX)
                    .args(["-p", &dir.display().to_string()])
                    .args(["-c", &path.display().to_string()])
                    .args(["-g", &globals])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            }
            Kind::Caddy => {
                // Test-only globals: no admin endpoint (parallel instances would
                // share its port), no certificates for a loopback address.
                let path = dir.join("Caddyfile");
                let globals = "{\n\tadmin off\n\tauto_https off\n}\n\n";
                std::fs::write(&path, format!("{globals}{conf}")).unwrap();
                Command::new(CADDY)
                    .args(["run", "--adapter", "caddyfile"])
                    .args(["--config", &path.display().to_string()])
                    .env("XDG_DATA_HOME", &dir)
                    .env("XDG_CONFIG_HOME", &dir)
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(dir.join("error.log")).unwrap())
                    .spawn()
                    .unwrap()
            }
        };
        let up = eventually(Duration::from_secs(10), || async move {
            tokio::net::TcpStream::connect(listen).await.is_ok()
        })
        .await;
        assert!(
            up.is_some(),
            "{kind:?} did not start: {}",
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
        Self { child, dir }
    }
}

async fn nginx_forward_auth_recipe(backend: Backend) {
    recipe(backend, Kind::Nginx).await;
}

async fn caddy_forward_auth_recipe(backend: Backend) {
    recipe(backend, Kind::Caddy).await;
}

/// Signs in, proves the application sees exactly the gateway's decision (not the
/// client's spoofed headers, not the gateway's cookies, the real client address),
/// that the sign-in redirect keeps the whole query string, and that a WebSocket
/// routed through the gateway closes when its session ends.
async fn recipe(backend: Backend, kind: Kind) {
    let db = TestDb::new(backend).await;
    let app = TestUpstream::start().await;
    let listen = crate::processes::free_port();
    let public = format!("http://{listen}");
    let gw = TestGateway::start_with(&db, |c| {
        c.upstream = Upstream::parse(&format!("http://{}", app.addr)).unwrap();
        c.public_url = PublicUrl::parse(&public).unwrap();
        c.trusted_proxies = TrustedProxies::parse(["127.0.0.1"]).unwrap();
    })
    .await;
    let _proxy = FrontProxy::start(kind, listen, gw.addr, app.addr).await;

    // A browser on another loopback address, so the client address is visibly its own.
    let jar = Arc::new(Jar::default());
    let browser = reqwest::Client::builder()
        .cookie_provider(jar.clone())
        .redirect(reqwest::redirect::Policy::none())
        .local_address(std::net::IpAddr::from([127, 0, 0, 7]))
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let page = format!("{public}/app/?a=1&b=2");
    let r = browser
        .get(&page)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        format!("{public}/.auth/login?next=%2Fapp%2F%3Fa%3D1%26b%3D2"),
        "the whole original address comes back after signing in"
    );
    let r = browser
        .post(format!("{public}/.auth/login"))
        .header("origin", &public)
        .form(&[
            ("username", USER),
            ("password", PASSWORD),
            ("next", "/app/?a=1&b=2"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/app/?a=1&b=2");
    let url: reqwest::Url = public.parse().unwrap();
    jar.add_cookie_str("app=1", &url);

    let r = browser
        .get(&page)
        .header("accept", "text/html")
        .header("x-forwarded-user", "mallory")
        .header("x-forwarded-groups", "admin")
        .header("x-forwarded-email", "mallory@evil.example")
        // Spellings an application may read as the same headers (SPEC 9).
        .header("x_forwarded_user", "mallory")
        .header("X-Forwarded_Groups", "admin")
        .header("X-Forwarded-Preferred_Username", "mallory")
        .header("X_REAL_IP", "10.6.6.6")
        // The application's own credential passes.
        .header("authorization", "Basic YXBwOnNlY3JldA==")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen: serde_json::Value = r.json().await.unwrap();
    let h = &seen["headers"];
    assert_eq!(
        h["authorization"],
        serde_json::json!(["Basic YXBwOnNlY3JldA=="]),
        "{seen}"
    );
    for spelled in [
        "x_forwarded_user",
        "x-forwarded_groups",
        "x-forwarded-preferred_username",
        "x_real_ip",
    ] {
        assert!(
            h.get(spelled).is_none(),
            "{spelled} reached the application: {seen}"
        );
    }
    assert_eq!(seen["uri"], "/app/?a=1&b=2");
    assert_eq!(h["x-forwarded-user"], serde_json::json!([USER]), "{seen}");
    assert_eq!(
        h["x-forwarded-groups"],
        serde_json::json!(["user"]),
        "{seen}"
    );
    // Unknown is empty (Caddy) or absent (nginx drops empty headers); never the
    // client's value nor a template placeholder.
    let email = h
        .get("x-forwarded-email")
        .cloned()
        .unwrap_or(serde_json::json!([""]));
    assert_eq!(
        email,
        serde_json::json!([""]),
        "a basic user has no e-mail: {seen}"
    );
    assert_eq!(
        h["cookie"],
        serde_json::json!(["app=1"]),
        "no gateway cookie: {seen}"
    );
    assert_eq!(
        h["x-forwarded-for"],
        serde_json::json!(["127.0.0.7"]),
        "{seen}"
    );
    // A script's API token authenticates through the proxy and never reaches
    // the application.
    let (_, secret) = crate::api_tokens::create_token(&gw.store, "robot", "user").await;
    let r = reqwest::Client::new()
        .get(&page)
        .header("authorization", format!("Bearer {secret}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        seen["headers"]["x-forwarded-user"],
        serde_json::json!(["robot"])
    );
    let authorization = seen["headers"]
        .get("authorization")
        .cloned()
        .unwrap_or(serde_json::json!([""]));
    assert_eq!(authorization, serde_json::json!([""]), "{seen}");
    let logins = gw.audit("auth.login").await;
    assert!(
        logins
            .iter()
            .any(|e| e.outcome == "success" && e.ip.as_deref() == Some("127.0.0.7")),
        "{logins:?}"
    );

    // The WebSocket goes through the gateway, and closes when the session ends.
    let cookies = jar.cookies(&url).unwrap().to_str().unwrap().to_owned();
    let (mut ws, response) = connect(
        listen,
        "/ws/echo",
        &[("cookie", &cookies), ("origin", &public)],
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 101);
    let view = upstream_view(&mut ws).await;
    assert_eq!(view["x-forwarded-user"], USER);
    let csrf = cookies
        .split("; ")
        .find_map(|c| c.strip_prefix("portcullis_csrf="))
        .unwrap()
        .to_owned();
    let r = browser
        .post(format!("{public}/.auth/logout"))
        .header("x-csrf-token", csrf)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let frame = close_frame(&mut ws, Duration::from_secs(2)).await;
    assert_eq!(frame.map(|f| u16::from(f.code)), Some(4401));
    // And the next page request is sent to sign in again.
    let r = browser
        .get(&page)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
}
