//! The forward-auth recipes run as shipped: the real nginx from Debian (installed
//! by `scripts/ensure-proxies`) with `docs/proxies/nginx.conf`, its placeholders
//! filled in, in front of a real gateway and application.

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

both_backends!(nginx_forward_auth_recipe);

const NGINX: &str = "/usr/sbin/nginx";

/// An nginx process on `listen` with a recipe; stopped on drop.
struct Nginx {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Nginx {
    async fn start(
        recipe: &str,
        listen: SocketAddr,
        portcullis: SocketAddr,
        app: SocketAddr,
    ) -> Self {
        assert!(
            std::path::Path::new(NGINX).exists(),
            "nginx is not installed: run scripts/ensure-proxies (scripts/test does)"
        );
        let dir = std::env::temp_dir().join(format!("portcullis-nginx-{}", listen.port()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = recipe
            .replace("LISTEN", &listen.to_string())
            .replace("PORTCULLIS", &portcullis.to_string())
            .replace("APP", &app.to_string());
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let globals = format!(
            "pid {0}/nginx.pid; error_log {0}/error.log; daemon off;",
            dir.display()
        );
        let child = Command::new(NGINX)
            .args([
                "-p",
                &dir.display().to_string(),
                "-c",
                &path.display().to_string(),
            ])
            .args(["-g", &globals])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let up = eventually(Duration::from_secs(5), || async move {
            tokio::net::TcpStream::connect(listen).await.is_ok()
        })
        .await;
        assert!(
            up.is_some(),
            "nginx did not start: {}",
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
        Self { child, dir }
    }
}

/// Signs in, proves the application sees exactly the gateway's decision (not the
/// client's spoofed headers, not the gateway's cookies, the real client address),
/// that the sign-in redirect keeps the whole query string, and that a WebSocket
/// routed through the gateway closes when its session ends.
async fn nginx_forward_auth_recipe(backend: Backend) {
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
    let recipe = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/proxies/nginx.conf"
    ))
    .unwrap();
    let _nginx = Nginx::start(&recipe, listen, gw.addr, app.addr).await;

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
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen: serde_json::Value = r.json().await.unwrap();
    let h = &seen["headers"];
    assert_eq!(seen["uri"], "/app/?a=1&b=2");
    assert_eq!(h["x-forwarded-user"], serde_json::json!([USER]), "{seen}");
    assert_eq!(
        h["x-forwarded-groups"],
        serde_json::json!(["user"]),
        "{seen}"
    );
    assert!(
        h.get("x-forwarded-email").is_none(),
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
