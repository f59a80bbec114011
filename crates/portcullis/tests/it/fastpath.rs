//! The proxy's fast path, over raw TCP on both sides: how upstream responses are
//! delimited and cleaned, what happens when a pooled upstream connection turns out
//! closed, and how a connection moves to the general path mid-stream.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::both_backends;
use crate::harness::*;
use portcullis_gateway::Upstream;

/// An upstream that answers each path with fixed bytes, written by hand so that
/// it can send what real servers rarely do. It records each request head and
/// counts connections.
#[derive(Clone, Default)]
struct ScriptedUpstream {
    heads: Arc<Mutex<Vec<String>>>,
    connections: Arc<Mutex<usize>>,
}

/// Length of `/big`'s body: more than one read and more than one write.
const BIG: usize = 300_000;

fn scripted_answer(method: &str, path: &str) -> Vec<u8> {
    if path == "/big" {
        let mut answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n").into_bytes();
        answer.extend((0..BIG).map(|i| b'a' + (i % 26) as u8));
        return answer;
    }
    let answer: &[u8] = match (method, path) {
        (_, "/chunked") => {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n"
        }
        (_, "/until-close") => b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
        (_, "/no-content") => b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n",
        (_, "/both") => {
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        }
        (_, "/bad-length") => b"HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\nhello",
        (_, "/bad-chunk") => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        (_, "/gzip-coded") => {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
        }
        (_, "/interim") => {
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n\
              HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        }
        (_, "/hop") => {
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, x-hop\r\nX-Hop: secret\r\n\
              Keep-Alive: timeout=5\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\nok"
        }
        ("HEAD", "/length") => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    };
    answer.to_vec()
}

impl ScriptedUpstream {
    async fn start(&self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let this = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                *this.connections.lock().unwrap() += 1;
                tokio::spawn(this.clone().serve(stream));
            }
        });
        addr
    }

    async fn serve(self, mut stream: TcpStream) {
        let mut buf = Vec::new();
        // After `/one-shot`, the next request on the connection is read and the
        // connection closed without an answer: an upstream closing an idle
        // connection just as the gateway reuses it.
        let mut hang_up_next = false;
        loop {
            let Some(end) = read_head(&mut stream, &mut buf).await else {
                return;
            };
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end);
            self.heads.lock().unwrap().push(head.clone());
            if hang_up_next {
                return;
            }
            let mut words = head.split(' ');
            let method = words.next().unwrap_or_default().to_owned();
            let path = words.next().unwrap_or_default().to_owned();
            let answer = if path == "/one-shot" {
                hang_up_next = true;
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()
            } else {
                scripted_answer(&method, &path)
            };
            if stream.write_all(&answer).await.is_err() || path == "/until-close" {
                return;
            }
        }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        *self.connections.lock().unwrap()
    }
}

/// Reads until `buf` holds a whole head; returns its length.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(at + 4);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Sends `request` on a new connection and reads until the gateway closes it.
async fn exchange(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("the gateway closes the connection")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn get(gw: &TestGateway, session: &Session, method: &str, path: &str, extra: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nCookie: {}\r\n{extra}\r\n",
        gw.addr,
        session.cookie_header()
    )
}

async fn scripted_gateway(db: &TestDb) -> (TestGateway, ScriptedUpstream) {
    let upstream = ScriptedUpstream::default();
    let addr = upstream.start().await;
    let gw = TestGateway::start_with(db, |config| {
        config.upstream = Upstream::parse(&format!("http://{addr}")).unwrap();
    })
    .await;
    (gw, upstream)
}

/// Every way an upstream response can be delimited, and every malformed one.
async fn upstream_responses_are_delimited_and_cleaned(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (gw, upstream) = scripted_gateway(&db).await;
    let session = gw.login(USER).await;
    let close = "Connection: close\r\n";
    // (name, method, path, status line, must contain, must not contain)
    type Row<'a> = (
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a [&'a str],
        &'a [&'a str],
    );
    let rows: &[Row] = &[
        (
            "chunked with extension and trailer",
            "GET",
            "/chunked",
            "HTTP/1.1 200 OK",
            &[
                "transfer-encoding: chunked",
                "hello\r\n6\r\n world",
                "x-trailer: t",
            ],
            &[],
        ),
        (
            "interim 103 is not forwarded",
            "GET",
            "/interim",
            "HTTP/1.1 200 OK",
            &["\r\n\r\nok", "connection: close"],
            &["Early Hints", "a.css"],
        ),
        (
            "hop-by-hop headers and those named in Connection are removed",
            "GET",
            "/hop",
            "HTTP/1.1 200 OK",
            &["X-Kept: yes", "date: "],
            &["X-Hop", "Keep-Alive:", "secret"],
        ),
        (
            "204 carries no body and no length",
            "GET",
            "/no-content",
            "HTTP/1.1 204 No Content",
            &[],
            &["Content-Length"],
        ),
        (
            "HEAD gets the length and no body",
            "HEAD",
            "/length",
            "HTTP/1.1 200 OK",
            &["Content-Length: 5"],
            &["hello"],
        ),
        (
            "both Content-Length and Transfer-Encoding",
            "GET",
            "/both",
            "HTTP/1.1 502 Bad Gateway",
            &["upstream_unavailable"],
            &[],
        ),
        (
            "invalid Content-Length",
            "GET",
            "/bad-length",
            "HTTP/1.1 502 Bad Gateway",
            &["upstream_unavailable"],
            &["hello"],
        ),
        (
            "malformed chunk size",
            "GET",
            "/bad-chunk",
            "HTTP/1.1 502 Bad Gateway",
            &[],
            &["zz"],
        ),
        (
            "a transfer coding other than chunked",
            "GET",
            "/gzip-coded",
            "HTTP/1.1 502 Bad Gateway",
            &[],
            &["gzip"],
        ),
    ];
    for (name, method, path, status, contains, absent) in rows {
        let response = exchange(gw.addr, &get(&gw, &session, method, path, close)).await;
        assert!(response.starts_with(status), "{name}: {response}");
        for needle in *contains {
            assert!(response.contains(needle), "{name}: {needle} in {response}");
        }
        for needle in *absent {
            assert!(
                !response.contains(needle),
                "{name}: no {needle} in {response}"
            );
        }
    }

    // A large body streams through, exactly, and the connections on both sides are
    // reused after it (two on one client connection, one upstream connection).
    let before = upstream.connections();
    let two = format!(
        "{}{}",
        get(&gw, &session, "GET", "/big", ""),
        get(&gw, &session, "GET", "/big", close)
    );
    let response = exchange(gw.addr, &two).await;
    let body: String = (0..BIG).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    assert_eq!(response.matches(&body).count(), 2, "two whole bodies");
    assert_eq!(
        response.matches("HTTP/1.1 200 OK").count(),
        2,
        "two answers"
    );
    assert!(
        upstream.connections() <= before + 1,
        "one upstream connection for both"
    );

    // A body delimited by the upstream closing is delimited the same way to the
    // client, which is told so.
    let response = exchange(gw.addr, &get(&gw, &session, "GET", "/until-close", "")).await;
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.contains("connection: close"), "{response}");
    assert!(response.ends_with("\r\n\r\nuntil the end"), "{response}");

    // Spoofed identity and forwarding headers, in any letter case, and hop-by-hop
    // headers never reach the upstream; the gateway's own values do, once.
    let spoofed = "X-Forwarded-User: root\r\nX-FORWARDED-GROUPS: superuser\r\n\
                   x-Forwarded-Email: root@evil.example\r\nForwarded: for=6.6.6.6\r\n\
                   X-Real-IP: 6.6.6.6\r\nX-Forwarded-For: 6.6.6.6\r\nTE: trailers\r\n\
                   Connection: close\r\n";
    let response = exchange(gw.addr, &get(&gw, &session, "GET", "/spoofed", spoofed)).await;
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    let head = upstream
        .heads()
        .into_iter()
        .find(|h| h.starts_with("GET /spoofed "))
        .expect("the request reached the upstream");
    let lower = head.to_ascii_lowercase();
    for absent in [
        "root",
        "superuser",
        "6.6.6.6",
        "forwarded: ",
        "x-real-ip",
        "te: ",
    ] {
        assert!(!lower.contains(absent), "{absent} in {head}");
    }
    assert_eq!(
        lower.matches("x-forwarded-user: bob\r\n").count(),
        1,
        "{head}"
    );
    assert_eq!(
        lower.matches("x-forwarded-for: 127.0.0.1\r\n").count(),
        1,
        "{head}"
    );

    // The upstream saw the identity and none of the gateway's cookies.
    let heads = upstream.heads();
    assert!(!heads.is_empty());
    for head in &heads {
        assert!(head.contains("x-forwarded-user: bob"), "{head}");
        assert!(!head.contains("portcullis_"), "{head}");
    }
}

/// A pooled upstream connection that the upstream closed is retried once on a new
/// connection for a request that may be repeated, and never for one that may not.
async fn closed_pooled_connections_are_retried_only_when_safe(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (gw, upstream) = scripted_gateway(&db).await;
    let session = gw.login(USER).await;
    let mut client = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();

    let mut ask = async |method: &str, path: &str| {
        let request = get(&gw, &session, method, path, "Content-Length: 0\r\n");
        client.write_all(request.as_bytes()).await.unwrap();
        let end = read_head(&mut client, &mut buf).await.expect("a response");
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .or_else(|| {
                head.lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
            })
            .map_or(0, |v| v.trim().parse().unwrap());
        while buf.len() < length {
            let mut chunk = [0u8; 4096];
            let n = client.read(&mut chunk).await.unwrap();
            assert!(n > 0, "body cut short");
            buf.extend_from_slice(&chunk[..n]);
        }
        buf.drain(..length);
        head
    };

    assert!(ask("GET", "/one-shot").await.starts_with("HTTP/1.1 200"));
    let before = upstream.connections();
    let retried = ask("GET", "/plain").await;
    assert!(
        retried.starts_with("HTTP/1.1 200"),
        "GET is retried: {retried}"
    );
    assert_eq!(upstream.connections(), before + 1, "on one new connection");
    let gets = upstream
        .heads()
        .iter()
        .filter(|h| h.starts_with("GET /plain"))
        .count();
    assert_eq!(
        gets, 2,
        "the upstream saw the GET twice (first one unanswered)"
    );

    assert!(ask("GET", "/one-shot").await.starts_with("HTTP/1.1 200"));
    let refused = ask("POST", "/order").await;
    assert!(
        refused.starts_with("HTTP/1.1 502"),
        "POST is not repeated: {refused}"
    );
    let posts = upstream
        .heads()
        .iter()
        .filter(|h| h.starts_with("POST /order"))
        .count();
    assert_eq!(posts, 1, "the upstream saw the POST once");
}

/// Pipelined requests on one connection: the fast path answers what it takes and
/// hands the connection, with the bytes it read, to the general path at the first
/// request it does not take (here an upload); answers stay in order.
async fn pipelined_requests_move_to_the_general_path_in_order(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let session = gw.login(USER).await;
    let cookie = session.cookie_header();
    let host = gw.addr;
    let pipeline = format!(
        "GET /first HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n\
         POST /upload HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nContent-Length: 3\r\n\r\nabc\
         GET /third?x=1 HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nX-Forwarded-User: root\r\n\
         Connection: close\r\n\r\n"
    );
    let response = exchange(gw.addr, &pipeline).await;
    assert_eq!(response.matches("HTTP/1.1 200 OK").count(), 3, "{response}");
    let first = response.find("\"uri\":\"/first\"").expect("first answered");
    let upload = response
        .find("\r\n\r\n3")
        .expect("upload answered with its size");
    let third = response
        .find("\"uri\":\"/third?x=1\"")
        .expect("third answered");
    assert!(first < upload && upload < third, "{response}");
    assert!(
        !response.contains("root"),
        "spoofed identity never reaches the upstream"
    );
}

/// A request the fast path does not take is answered exactly as before: a refused
/// cookie, a gateway path and a bad Host all reach the general path.
async fn what_the_fast_path_declines_is_answered_by_the_general_path(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let session = gw.login(USER).await;
    let tampered = Session {
        cookie: format!("{}x", session.cookie),
        csrf: session.csrf.clone(),
    };
    let close = "Connection: close\r\n";
    let rows = [
        (
            "tampered cookie",
            get(&gw, &tampered, "GET", "/x", close),
            "HTTP/1.1 401",
        ),
        (
            "gateway path",
            get(&gw, &session, "GET", "/.auth/me", close),
            "HTTP/1.1 200",
        ),
        (
            "host not allowed",
            format!(
                "GET /x HTTP/1.1\r\nHost: evil.example\r\nCookie: {}\r\n{close}\r\n",
                session.cookie_header()
            ),
            "HTTP/1.1 400",
        ),
        (
            "HTTP/1.0",
            format!(
                "GET /x HTTP/1.0\r\nHost: {}\r\nCookie: {}\r\n\r\n",
                gw.addr,
                session.cookie_header()
            ),
            "HTTP/1.",
        ),
    ];
    for (name, request, status) in rows {
        let response = exchange(gw.addr, &request).await;
        assert!(response.starts_with(status), "{name}: {response}");
    }
}

both_backends!(
    upstream_responses_are_delimited_and_cleaned,
    closed_pooled_connections_are_retried_only_when_safe,
    pipelined_requests_move_to_the_general_path_in_order,
    what_the_fast_path_declines_is_answered_by_the_general_path,
);
