//! The reverse proxy: who gets through, what the upstream sees, streaming, and
//! upstream failures.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::both_backends;
use crate::harness::*;

async fn unauthenticated_requests_are_refused_by_kind(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let nav = gw
        .client
        .get(
            "/lab/tree?path=a%20b",
            &[("accept", "text/html,application/xhtml+xml")],
        )
        .await;
    assert_eq!(nav.status, 302);
    assert_eq!(
        nav.header("location").as_deref(),
        Some("/.auth/login?next=%2Flab%2Ftree%3Fpath%3Da%2520b")
    );
    let api = gw
        .client
        .get("/api/contents", &[("accept", "application/json")])
        .await;
    assert_eq!(api.status, 401);
    assert_eq!(api.json()["error"], "unauthenticated");
    let post = gw
        .client
        .request("POST", "/api/x", &[("accept", "text/html")], "x")
        .await;
    assert_eq!(post.status, 401, "only GET navigations are redirected");
}

async fn upstream_sees_identity_not_credentials(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let s = gw.login(ADMIN).await;
    let cookie = format!("theme=dark; {}; other=1", s.cookie_header());
    let r = gw
        .client
        .get(
            "/echo?q=1",
            &[
                ("cookie", &cookie),
                ("x-forwarded-user", "root"),
                ("x-forwarded-groups", "superuser"),
                ("x-forwarded-email", "root@evil.example"),
                ("x-forwarded-preferred-username", "root"),
                ("x-forwarded-for", "6.6.6.6"),
                ("forwarded", "for=6.6.6.6"),
                ("x-custom", "kept"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    let h = &seen["headers"];
    assert_eq!(seen["uri"], "/echo?q=1");
    assert_eq!(h["x-forwarded-user"], serde_json::json!([ADMIN]));
    assert_eq!(h["x-forwarded-groups"], serde_json::json!(["admin,user"]));
    assert_eq!(
        h["x-forwarded-preferred-username"],
        serde_json::json!([ADMIN])
    );
    assert!(
        h.get("x-forwarded-email").is_none(),
        "basic users have no email; the spoofed one must be gone"
    );
    assert_eq!(h["x-forwarded-for"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(h["x-forwarded-proto"], serde_json::json!(["http"]));
    assert_eq!(
        h["x-forwarded-host"],
        serde_json::json!([gw.addr.to_string()])
    );
    assert!(h.get("forwarded").is_none());
    assert_eq!(h["x-custom"], serde_json::json!(["kept"]));
    assert_eq!(
        h["cookie"],
        serde_json::json!(["theme=dark; other=1"]),
        "gateway cookies are stripped"
    );
    // Only gateway cookies: no Cookie header at all.
    let r = gw
        .client
        .get("/echo", &[("cookie", &s.cookie_header())])
        .await;
    assert!(r.json()["headers"].get("cookie").is_none());
}

async fn host_header_must_be_allowed(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw =
        TestGateway::start_with(&db, |c| c.allowed_hosts = vec!["dash.internal:8080".into()]).await;
    let s = gw.login(ADMIN).await;
    let own = gw.addr.to_string();
    let rows = [
        ("public host", own.as_str(), 200),
        ("allowed extra host", "dash.internal:8080", 200),
        ("allowed extra host, other case", "DASH.internal:8080", 200),
        ("rebinding attacker host", "evil.example", 400),
        ("right host, wrong port", "127.0.0.1:1", 400),
        ("allowed host without its port", "dash.internal", 400),
    ];
    // Two Host headers, the first one valid: refused outright.
    let r = gw
        .client
        .get(
            "/echo",
            &[
                ("host", own.as_str()),
                ("host", "evil.example"),
                ("cookie", &s.cookie_header()),
            ],
        )
        .await;
    assert_eq!(r.status, 400, "duplicate Host");
    for (name, host, status) in rows {
        let r = gw
            .client
            .get("/echo", &[("host", host), ("cookie", &s.cookie_header())])
            .await;
        assert_eq!(r.status, status, "row {name}");
        if status == 400 {
            assert_eq!(r.json()["error"], "host_not_allowed", "row {name}");
        }
        let login = gw.client.get("/.auth/login", &[("host", host)]).await;
        assert_eq!(
            login.status,
            if status == 200 { 200 } else { 400 },
            "row {name} (login page)"
        );
    }
}

/// A request body streamed by the test, chunk by chunk.
type Streamed =
    StreamBody<futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, std::io::Error>>>;

/// A client that streams request bodies.
fn streaming_client() -> Client<HttpConnector, Streamed> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// A POST to `path` on `gw` as `session`, its body streamed.
fn streamed_post(
    gw: &TestGateway,
    path: &str,
    session: &Session,
    body: Streamed,
) -> http::Request<Streamed> {
    http::Request::post(format!("http://{}{path}", gw.addr))
        .header("cookie", session.cookie_header())
        .body(body)
        .unwrap()
}

async fn upstream_failures_are_clear(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw =
        TestGateway::start_with(&db, |c| c.upstream_timeout = Duration::from_millis(500)).await;
    let s = gw.login(ADMIN).await;
    let slow = gw
        .client
        .get("/slow", &[("cookie", &s.cookie_header())])
        .await;
    assert_eq!(slow.status, 504);
    assert_eq!(slow.json()["error"], "upstream_timeout");
    // An upload that takes longer than the upstream timeout at a steady rate is
    // not cut: the upstream's time starts once the body is all sent.
    let chunks = 6;
    let upload: Streamed = StreamBody::new(
        futures_util::stream::iter(0..chunks)
            .then(|_| async {
                tokio::time::sleep(Duration::from_millis(250)).await;
                Ok(Frame::data(Bytes::from(vec![b'u'; 64 * 1024])))
            })
            .boxed(),
    );
    let client = streaming_client();
    let response = client
        .request(streamed_post(&gw, "/upload", &s, upload))
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "a 1.5 s upload behind a 0.5 s timeout"
    );
    let counted = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&counted),
        (chunks * 64 * 1024).to_string()
    );
    // Once the body is sent the upstream's time runs: a stalled upstream is a
    // 504, whether the body ended plainly or with trailers.
    for trailers in [false, true] {
        let mut frames = vec![Ok(Frame::data(Bytes::from_static(b"some body")))];
        if trailers {
            let mut map = http::HeaderMap::new();
            map.insert("x-checksum", http::HeaderValue::from_static("abc"));
            frames.push(Ok(Frame::trailers(map)));
        }
        let body: Streamed = StreamBody::new(futures_util::stream::iter(frames).boxed());
        let request = streamed_post(&gw, "/slow", &s, body);
        let answered = tokio::time::timeout(Duration::from_secs(5), client.request(request))
            .await
            .expect("a stalled upstream is bounded after the body");
        assert_eq!(answered.unwrap().status(), 504, "trailers: {trailers}");
    }
    // An upstream that stops reading the body mid-upload is bounded too.
    let deaf = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let deaf_addr = deaf.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = deaf.accept().await {
            sockets.push(socket);
        }
    });
    let db3 = TestDb::new(backend).await;
    let gw3 = TestGateway::start_with(&db3, |c| {
        c.upstream = portcullis_gateway::Upstream::parse(&format!("http://{deaf_addr}")).unwrap();
        c.upstream_timeout = Duration::from_millis(500);
    })
    .await;
    let s3 = gw3.login(ADMIN).await;
    let chunk = Bytes::from(vec![b'd'; 1024 * 1024]);
    let flood: Streamed = StreamBody::new(
        futures_util::stream::iter((0..64).map(move |_| Ok(Frame::data(chunk.clone())))).boxed(),
    );
    let request = streamed_post(&gw3, "/upload", &s3, flood);
    let answered = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .expect("an upstream that stops reading is bounded");
    // The gateway answers 504 and closes while the client may still be sending.
    if let Ok(response) = answered {
        assert_eq!(response.status(), 504);
    }
    held.abort();

    // An upstream nobody listens on.
    let db2 = TestDb::new(backend).await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let gw2 = TestGateway::start_with(&db2, |c| {
        c.upstream = portcullis_gateway::Upstream::parse(&format!("http://{dead}")).unwrap();
    })
    .await;
    let s2 = gw2.login(ADMIN).await;
    let json = gw2
        .client
        .get("/x", &[("cookie", &s2.cookie_header())])
        .await;
    assert_eq!(json.status, 502);
    assert_eq!(json.json()["error"], "upstream_unavailable");
    assert!(json.json()["error_id"].is_string());
    assert!(
        !json.text().contains(&dead.to_string()),
        "internal detail stays in the log"
    );
    let page = gw2
        .client
        .get(
            "/x",
            &[("cookie", &s2.cookie_header()), ("accept", "text/html")],
        )
        .await;
    assert_eq!(page.status, 502);
    assert!(page.text().contains("not reachable"), "{}", page.text());
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

async fn large_bodies_stream_both_ways(backend: Backend) {
    const SIZE: u64 = 1 << 30; // 1 GiB each way
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let s = gw.login(ADMIN).await;
    let before = peak_rss_kib();
    let client = streaming_client();

    let empty: Streamed = StreamBody::new(futures_util::stream::empty().boxed());
    let request = http::Request::get(format!("http://{}/bytes/{SIZE}", gw.addr))
        .header("cookie", s.cookie_header())
        .body(empty)
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            received += data.len() as u64;
        }
    }
    assert_eq!(received, SIZE);

    let chunk = Bytes::from(vec![b'y'; 256 * 1024]);
    let chunks = SIZE / chunk.len() as u64;
    let upload: Streamed = StreamBody::new(
        futures_util::stream::iter((0..chunks).map(move |_| Ok(Frame::data(chunk.clone()))))
            .boxed(),
    );
    let response = client
        .request(streamed_post(&gw, "/upload", &s, upload))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let counted = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(String::from_utf8_lossy(&counted), SIZE.to_string());
    let growth_mib = (peak_rss_kib().saturating_sub(before)) / 1024;
    assert!(
        growth_mib < 256,
        "peak RSS grew by {growth_mib} MiB while moving 2 GiB: bodies are being buffered"
    );
}

async fn oversized_request_heads_are_refused(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let s = gw.login(ADMIN).await;
    let big = "a".repeat(80 * 1024);
    let many: Vec<(String, String)> = (0..200).map(|i| (format!("x-h{i}"), "v".into())).collect();
    type Row<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str, u16);
    let rows: Vec<Row> = vec![
        (
            "80 KiB header on proxied path",
            vec![("x-big", big.as_str())],
            "/echo",
            431,
        ),
        (
            "80 KiB header on login",
            vec![("x-big", big.as_str())],
            "/.auth/login",
            431,
        ),
        (
            "200 headers",
            many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
            "/echo",
            431,
        ),
        ("normal request", vec![], "/echo", 200),
    ];
    for (name, mut headers, path, status) in rows {
        let cookie = s.cookie_header();
        headers.push(("cookie", &cookie));
        // A fresh client: the server closes a connection after refusing its head.
        let client = TestClient::new(gw.addr);
        let r = client.get(path, &headers).await;
        assert_eq!(r.status, status, "row {name}");
    }
}

both_backends!(
    oversized_request_heads_are_refused,
    unauthenticated_requests_are_refused_by_kind,
    upstream_sees_identity_not_credentials,
    host_header_must_be_allowed,
    upstream_failures_are_clear,
    large_bodies_stream_both_ways,
    malformed_and_stalled_bodies_are_the_clients_fault,
    connections_over_a_cap_are_refused_at_once,
    a_client_that_stops_reading_is_let_go,
);

/// SPEC 9: a response the client does not read is bounded in time: once a write
/// has waited for the write timeout, the connection closes (fast path and general
/// path alike); a client that reads, however late, within it gets everything.
async fn a_client_that_stops_reading_is_let_go(backend: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start_with(&db, |c| c.write_timeout = Duration::from_secs(1)).await;
    let session = gw.login(USER).await;
    let (_, token) = crate::api_tokens::create_token(&gw.store, "robot", "user").await;
    const SIZE: usize = 64 << 20;
    // (path taken, credential header)
    let rows = [
        ("fast path", format!("Cookie: {}", session.cookie_header())),
        ("general path", format!("Authorization: Bearer {token}")),
    ];
    for (path, credential) in rows {
        let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let request = format!(
            "GET /bytes/{SIZE} HTTP/1.1\r\nHost: {}\r\n{credential}\r\n\r\n",
            gw.addr
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        // Stop reading: the socket buffers fill and the gateway's writes wait.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let mut received = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => received += n,
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "{path}: the connection was closed");
        assert!(
            received < SIZE,
            "{path}: let go before the end ({received} bytes)"
        );
    }
    // A client that reads (late, but within the timeout) gets the whole body.
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let request = format!(
        "GET /bytes/{} HTTP/1.1\r\nHost: {}\r\nCookie: {}\r\nConnection: close\r\n\r\n",
        4 << 20,
        gw.addr,
        session.cookie_header()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut all = Vec::new();
    stream.read_to_end(&mut all).await.unwrap();
    assert!(all.len() > 4 << 20, "{}", all.len());
}

/// SPEC 9: open connections are capped per client address (and in total); one
/// over the cap gets a 503 and is closed at once, instead of holding a
/// descriptor; a place freed is available again.
async fn connections_over_a_cap_are_refused_at_once(backend: Backend) {
    use tokio::io::AsyncReadExt;
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start_with(&db, |c| {
        c.connections.per_ip = 3;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(gw.addr).await.unwrap());
    }
    // Idle connections (a head never sent) hold their places.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let mut over = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), over.read_to_end(&mut answer))
        .await
        .expect("closed at once")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    // A place freed is a place again.
    held.pop();
    let request = format!(
        "GET /.auth/healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        gw.addr
    );
    let back = eventually(Duration::from_secs(2), || {
        let (addr, request) = (gw.addr, request.clone());
        async move {
            raw_exchange(addr, request.as_bytes())
                .await
                .0
                .contains("200")
        }
    })
    .await;
    assert!(back.is_some(), "admitted once a place was freed");
    drop(held);

    // A WebSocket keeps its connection's place for as long as it lives.
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start_with(&db, |c| {
        c.connections.per_ip = 2;
    })
    .await;
    let (_, token) = crate::api_tokens::create_token(&gw.store, "robot", "user").await;
    let bearer = format!("Bearer {token}");
    let mut sockets = Vec::new();
    for _ in 0..2 {
        let (ws, _) = crate::websocket::connect(gw.addr, "/ws/echo", &[("authorization", &bearer)])
            .await
            .expect("an upgrade within the cap");
        sockets.push(ws);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (line, _, closed) = raw_exchange(gw.addr, request.as_bytes()).await;
    assert!(
        line.contains("503") && closed,
        "two live sockets fill the cap: {line}"
    );
    drop(sockets);
}

/// Sends `request` raw and returns the status line of the answer, how long it
/// took, and whether the gateway then closed the connection.
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> (String, Duration, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    stream.write_all(request).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(8), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    let text = String::from_utf8_lossy(&seen);
    let status = text.lines().next().unwrap_or("(no answer)").to_owned();
    (status, started.elapsed(), closed)
}

/// SPEC 9: malformed chunked framing is the client's fault (400 and close, at
/// once, never a 502 blaming the upstream), and a body that stalls is dropped
/// at the body deadline on the gateway's endpoints and on proxied uploads alike.
async fn malformed_and_stalled_bodies_are_the_clients_fault(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start_with(&db, |c| {
        c.body_timeout = Duration::from_secs(1);
        c.body_min_rate = 1024;
    })
    .await;
    let session = gw.login(USER).await;
    let host = gw.addr.to_string();
    let head = |path: &str, framing: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nCookie: {}\r\nOrigin: http://{host}\r\n\
             Content-Type: application/json\r\n{framing}\r\n",
            session.cookie_header()
        )
    };
    let chunked = "Transfer-Encoding: chunked\r\n";
    // (case, path, framing header, body, status, within)
    type Row<'a> = (&'a str, &'a str, &'a str, &'a [u8], &'a str, u64);
    let rows: Vec<Row> = vec![
        (
            "bare LF in a chunk line",
            "/upload",
            chunked,
            b"5\nhello\r\n0\r\n\r\n",
            "400",
            1,
        ),
        (
            "a size that is no number",
            "/upload",
            chunked,
            b"zz\r\nhello\r\n0\r\n\r\n",
            "400",
            1,
        ),
        (
            "a size that overflows",
            "/upload",
            chunked,
            b"ffffffffffffffffffff\r\nx\r\n0\r\n\r\n",
            "400",
            1,
        ),
        (
            "a body that stalls, proxied",
            "/upload",
            "Content-Length: 1000\r\n",
            b"only ten..",
            "400",
            4,
        ),
        (
            "a body that stalls, sign-in",
            "/.auth/login",
            "Content-Length: 1000\r\n",
            b"{",
            "400",
            4,
        ),
        (
            "a trailer that never ends, sign-in",
            "/.auth/login",
            chunked,
            b"2\r\n{}\r\n0\r\nX-T: 1\n\r\n",
            "",
            4,
        ),
    ];
    for (case, path, framing, body, status, within) in rows {
        let mut request = head(path, framing).into_bytes();
        request.extend_from_slice(body);
        let (line, took, closed) = raw_exchange(gw.addr, &request).await;
        assert!(
            took < Duration::from_secs(within),
            "{case}: answered after {took:?} ({line})"
        );
        assert!(closed, "{case}: the connection is closed ({line})");
        assert!(
            !line.contains("502"),
            "{case}: the upstream is not to blame ({line})"
        );
        if !status.is_empty() {
            assert!(line.contains(status), "{case}: {line}");
        }
    }
    // The gateway's own endpoints answer such a body in the gateway's words.
    let mut request = head("/.auth/login", "Content-Length: 1000\r\n").into_bytes();
    request.extend_from_slice(b"{");
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(&request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("answered and closed")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(answer.contains("\"error\":\"bad_request\""), "{answer}");
    // Bare-LF line endings in a head (which a proxy in front may read otherwise)
    // are refused at once, on the first request of a connection and on later ones.
    let cookie = session.cookie_header();
    let heads = [
        format!("GET /echo HTTP/1.1\nHost: {host}\nCookie: {cookie}\n\n"),
        format!("GET /echo HTTP/1.1\r\nHost: {host}\nCookie: {cookie}\r\n\r\n"),
        format!("GET /echo HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\n"),
        format!(
            "GET /echo HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n\
             GET /echo HTTP/1.1\nHost: {host}\nCookie: {cookie}\n\n"
        ),
    ];
    for head in heads {
        let (line, took, closed) = raw_exchange(gw.addr, head.as_bytes()).await;
        assert!(closed && took < Duration::from_secs(2), "{head:?}: {line}");
        if head.starts_with("GET /echo HTTP/1.1\r\nHost") && head.matches("GET").count() == 2 {
            // The first, well-formed request is answered; the second is refused.
            assert!(line.contains("200"), "{line}");
        } else {
            assert!(line.contains("400"), "{head:?}: {line}");
        }
    }
    // A slow but steady upload is never cut: 64 KiB at well above the minimum rate.
    let mut request = head("/upload", "Content-Length: 65536\r\n").into_bytes();
    request.extend_from_slice(&[b'x'; 32768]);
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(&request).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stream.write_all(&[b'x'; 32768]).await.unwrap();
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("65536"), "{answer}");
}
