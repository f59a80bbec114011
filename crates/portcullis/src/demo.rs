//! `portcullis demo`: the gateway in front of a built-in dashboard, on SQLite in a
//! temporary directory, with a generated user. The dashboard shows who the gateway
//! says you are and every header the upstream received.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context;
use axum::Router;
use axum::http::HeaderMap;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use portcullis_core::basic::hash_password;
use portcullis_core::secret::{Entropy, OsEntropy, SecretString};
use portcullis_gateway::serve_per_core;

use crate::commands::{shutdown_signal, start_gateway};
use crate::settings::RawSettings;

pub async fn run(mut raw: RawSettings) -> anyhow::Result<ExitCode> {
    let mut suffix = [0u8; 6];
    OsEntropy.fill(&mut suffix)?;
    let dir = std::env::temp_dir().join(format!(
        "portcullis-demo-{}",
        URL_SAFE_NO_PAD.encode(suffix)
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Removed on every way out, an error (a port in use) included.
    let _remove = RemoveOnDrop(dir.clone());

    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let upstream_addr = upstream.local_addr()?;
    let prefix = raw.auth_prefix.clone().unwrap_or_else(|| "/.auth".into());
    tokio::spawn(async move {
        let _ = axum::serve(upstream, dashboard(prefix)).await;
    });

    let mut raw_password = [0u8; 15];
    OsEntropy.fill(&mut raw_password)?;
    let password = SecretString::new(URL_SAFE_NO_PAD.encode(raw_password));
    let hash_input = password.clone();
    let hash =
        tokio::task::spawn_blocking(move || hash_password(&hash_input, &OsEntropy)).await??;

    raw.upstream = Some(format!("http://{upstream_addr}"));
    raw.data_dir = Some(dir.clone());
    raw.database = Some(format!("sqlite://{}", dir.join("portcullis.db").display()));
    raw.basic_users = Some(portcullis_core::secret::SecretString::new(format!(
        "demo:{hash}"
    )));
    raw.basic_admins = Some("demo".into());
    let settings = raw
        .resolve(true)
        .map_err(|problems| anyhow::anyhow!("{problems}"))?;
    let (listeners, gateway) = start_gateway(&settings).await?;
    let metrics = crate::commands::start_metrics(&settings, &gateway).await?;
    let origin = gateway.config().public_url.origin();

    println!();
    println!("  Portcullis demo is running.");
    println!();
    println!("    Open:      {origin}/");
    println!("    Username:  demo");
    println!("    Password:  {}", password.expose());
    println!();
    println!(
        "  Data (SQLite, signing keys) lives in {} and is removed on exit.",
        dir.display()
    );
    println!(
        "  Try: portcullis sessions list --data-dir {}",
        dir.display()
    );
    if let Some((_, bound)) = &metrics {
        println!("  Metrics:   http://{bound}/metrics");
    }
    println!("  Press Ctrl-C to stop.");
    println!();

    serve_per_core(listeners, gateway, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Deletes the demo's directory when the demo ends, however it ends.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The built-in demo dashboard (the upstream). `prefix` is the gateway's auth
/// prefix, for the sign-out form.
pub fn dashboard(prefix: String) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/api/headers", get(headers_json))
        .route("/ws/clock", get(clock))
        .layer(axum::Extension(AuthPrefix(prefix)))
}

/// A live clock: one text frame per second, and echoes of anything sent. It runs
/// until the gateway closes it, which is what the demo page shows.
async fn clock(ws: axum::extract::ws::WebSocketUpgrade) -> axum::response::Response {
    use axum::extract::ws::Message;
    ws.on_upgrade(|mut socket| async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
                    if socket.send(Message::Text(now.into())).await.is_err() {
                        return;
                    }
                }
                message = socket.recv() => match message {
                    Some(Ok(Message::Text(text))) => {
                        if socket.send(Message::Text(format!("echo: {text}").into())).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => {}
                },
            }
        }
    })
}

fn header_map(headers: &HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

async fn headers_json(headers: HeaderMap) -> axum::Json<BTreeMap<String, String>> {
    axum::Json(header_map(&headers))
}

#[derive(Clone)]
struct AuthPrefix(String);

async fn home(
    axum::Extension(AuthPrefix(prefix)): axum::Extension<AuthPrefix>,
    headers: HeaderMap,
) -> Markup {
    let get = |name: &str| {
        headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default()
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Demo dashboard" }
                style { (PreEscaped(DASHBOARD_STYLE)) }
            }
            body {
                h1 { "Demo dashboard" }
                div.who {
                    p { "Signed in as " strong { (get("x-forwarded-user")) } " (groups: " (get("x-forwarded-groups")) ")." }
                    p { "This page is the upstream application. It never saw a password or a session cookie: \
                         Portcullis authenticated the request and told it who you are in the headers below." }
                    form method="post" action=(format!("{prefix}/logout")) {
                        input type="hidden" name="csrf_token" id="csrf";
                        button type="submit" { "Sign out" }
                    }
                }
                h2 { "Live WebSocket" }
                p { "Server clock over a WebSocket through the gateway: " strong #clock { "connecting…" } }
                p #ws-status.muted { "Sign out in another tab, or run " code { "portcullis sessions revoke" }
                    ", and watch the gateway close this connection." }
                h2 { "Headers the upstream received" }
                table {
                    @for (name, value) in header_map(&headers) {
                        tr { td { code { (name) } } td { code { (value) } } }
                    }
                }
                script { (PreEscaped(CSRF_SCRIPT)) }
            }
        }
    }
}

const DASHBOARD_STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem}\
table{border-collapse:collapse;width:100%}td{border-bottom:1px solid #ddd;padding:.3rem .5rem;vertical-align:top;overflow-wrap:anywhere}\
.who{background:#eef3ff;padding:1rem;border-radius:8px}button{padding:.4rem 1rem}.muted{color:#555}#clock{font-family:monospace}";

/// The CSRF cookie is readable by design; sign-out echoes it as the gateway requires.
const CSRF_SCRIPT: &str = "const m=document.cookie.match(/(?:^|; )portcullis_csrf=([^;]+)/);\
if(m)document.getElementById('csrf').value=decodeURIComponent(m[1]);\
const ws=new WebSocket((location.protocol==='https:'?'wss://':'ws://')+location.host+'/ws/clock');\
ws.onmessage=e=>{document.getElementById('clock').textContent=e.data;};\
ws.onclose=e=>{document.getElementById('clock').textContent='closed';\
document.getElementById('ws-status').textContent='Connection closed by the gateway: '+e.code+' '+(e.reason||'(no reason)')+\
(e.code===4401?'. Sign in again to reconnect.':'');};";
