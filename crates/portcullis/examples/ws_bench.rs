//! WebSocket load tool for `scripts/bench-ws.sh`.
//!
//! - `ws_bench echo ADDR`: a WebSocket echo server (the upstream).
//! - `ws_bench load URL CONNECTIONS SECONDS ["Header: value"...]`: each connection sends
//!   1 KiB binary messages and waits for each echo; prints round trips per second.
//! - `ws_bench upgrades GATEWAY SECONDS COOKIE CSRF`: mints a ticket and opens (then
//!   closes) a WebSocket with it, as fast as possible; prints upgrades per second.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("echo") => echo(&args[2]).await,
        Some("load") => {
            load(
                &args[2],
                args[3].parse().unwrap(),
                args[4].parse().unwrap(),
                &args[5..],
            )
            .await
        }
        Some("upgrades") => upgrades(&args[2], args[3].parse().unwrap(), &args[4], &args[5]).await,
        Some("idle") => {
            idle(
                &args[2],
                args[3].parse().unwrap(),
                args[4].parse().unwrap(),
                &args[5..],
            )
            .await
        }
        _ => panic!(
            "usage: ws_bench echo ADDR | load URL CONNS SECS [HEADER] | upgrades ADDR SECS COOKIE CSRF \
             | idle URL CONNS SECS [HEADER]"
        ),
    }
}

async fn echo(addr: &str) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(message)) = ws.next().await {
                if message.is_binary() || message.is_text() {
                    if ws.send(message).await.is_err() {
                        return;
                    }
                } else if message.is_close() {
                    return;
                }
            }
        });
    }
}

fn request(
    url: &str,
    headers: &[String],
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers.iter().filter_map(|h| h.split_once(": ")) {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    request
}

async fn load(url: &str, connections: usize, seconds: u64, headers: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let payload = vec![7u8; 1024];
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (request, payload) = (request(url, headers), payload.clone());
            tokio::spawn(async move {
                let (mut ws, _) = tokio_tungstenite::connect_async(request)
                    .await
                    .expect("upgrade");
                let mut count = 0u64;
                while Instant::now() < deadline {
                    ws.send(Message::binary(payload.clone())).await.unwrap();
                    loop {
                        match ws.next().await.unwrap().unwrap() {
                            Message::Binary(_) => break,
                            Message::Close(frame) => panic!("closed: {frame:?}"),
                            _ => continue,
                        }
                    }
                    count += 1;
                }
                let _ = ws.close(None).await;
                count
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    println!("{:.0}", total as f64 / seconds as f64);
}

/// Opens `connections` WebSockets, sends one message on each and waits for its
/// echo, prints `open`, then holds them idle for `seconds`.
async fn idle(url: &str, connections: usize, seconds: u64, headers: &[String]) {
    let mut open = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (mut ws, _) = tokio_tungstenite::connect_async(request(url, headers))
            .await
            .expect("upgrade");
        ws.send(Message::binary(vec![7u8; 1024])).await.unwrap();
        while !matches!(ws.next().await.unwrap().unwrap(), Message::Binary(_)) {}
        open.push(ws);
    }
    println!("open");
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    for mut ws in open {
        let _ = ws.close(None).await;
    }
}

async fn upgrades(gateway: &str, seconds: u64, cookie: &str, csrf: &str) {
    use http_body_util::{BodyExt, Full};
    let client: hyper_util::client::legacy::Client<_, Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut count = 0u64;
    while Instant::now() < deadline {
        let mint = http::Request::post(format!("http://{gateway}/.auth/ws-ticket"))
            .header("cookie", cookie)
            .header("x-csrf-token", csrf)
            .body(Full::new(bytes::Bytes::new()))
            .unwrap();
        let body = client
            .request(mint)
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        let ticket = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["ticket"]
            .as_str()
            .unwrap()
            .to_owned();
        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{gateway}/?ticket={ticket}"))
                .await
                .expect("upgrade");
        let _ = ws.close(None).await;
        count += 1;
    }
    println!("{:.0}", count as f64 / seconds as f64);
}
