//! WebSockets through the gateway: authenticated upgrades, the frame relay, and
//! live connections closed with 4401 when their session dies.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::both_backends;
use crate::harness::*;

pub type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn connect(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(Ws, http::Response<Option<Vec<u8>>>), Error> {
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (k, v) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    tokio_tungstenite::connect_async(request).await
}

pub async fn connect_as(addr: SocketAddr, session: &Session) -> Ws {
    let origin = format!("http://{addr}");
    let (ws, response) = connect(
        addr,
        "/ws/echo",
        &[("cookie", &session.cookie_header()), ("origin", &origin)],
    )
    .await
    .expect("authenticated upgrade");
    assert_eq!(response.status(), 101);
    ws
}

/// Reads until a close frame (or the end) and returns it; data frames are skipped.
pub async fn close_frame(ws: &mut Ws, within: Duration) -> Option<CloseFrame> {
    tokio::time::timeout(within, async {
        while let Some(message) = ws.next().await {
            match message {
                Ok(Message::Close(frame)) => return frame,
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

pub async fn next_data(ws: &mut Ws) -> Message {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Message::Ping(_) | Message::Pong(_) => continue,
            other => return other,
        }
    }
}

async fn relays_frames_both_ways(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let s = gw.login(ADMIN).await;
    let mut ws = connect_as(gw.addr, &s).await;
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("hello"));
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        next_data(&mut ws).await,
        Message::binary(vec![0u8, 1, 2, 255])
    );
    // A 16 MiB message crosses intact.
    let big: Vec<u8> = (0..16 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    match next_data(&mut ws).await {
        Message::Binary(got) => assert!(got.as_ref() == big.as_slice(), "16 MiB message corrupted"),
        other => panic!("expected binary, got {other:?}"),
    }
    // Ping reaches a pong.
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(Ok(Message::Pong(payload))) = ws.next().await {
                return payload;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(pong.as_ref(), b"are you there");
    // The upstream saw identity, not credentials, and no extension negotiation.
    ws.send(Message::text("headers")).await.unwrap();
    let Message::Text(seen) = next_data(&mut ws).await else {
        panic!("expected headers")
    };
    let seen: serde_json::Value = serde_json::from_str(&seen).unwrap();
    assert_eq!(seen["x-forwarded-user"], ADMIN);
    assert!(seen.get("cookie").is_none(), "{seen}");
    assert!(seen.get("sec-websocket-extensions").is_none(), "{seen}");
    // Close codes pass through from the upstream.
    ws.send(Message::text("close:4000")).await.unwrap();
    let frame = close_frame(&mut ws, Duration::from_secs(5))
        .await
        .expect("close frame");
    assert_eq!(u16::from(frame.code), 4000);
    assert_eq!(frame.reason.as_str(), "bye");
}

async fn upstream_subprotocol_is_returned(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let s = gw.login(ADMIN).await;
    let origin = format!("http://{}", gw.addr);
    let (_ws, response) = connect(
        gw.addr,
        "/ws/echo",
        &[
            ("cookie", &s.cookie_header()),
            ("origin", &origin),
            (
                "sec-websocket-protocol",
                "v1.kernel.websocket.jupyter.org, other",
            ),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "v1.kernel.websocket.jupyter.org"
    );
}

async fn upgrades_are_authenticated_before_the_upstream(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let s = gw.login(ADMIN).await;
    let origin = format!("http://{}", gw.addr);
    let cookie = s.cookie_header();
    let forged = format!("portcullis_session={}x", s.cookie);
    let rows: Vec<HeaderRow> = vec![
        ("no credential", vec![("origin", &origin)], 401),
        (
            "cookie from a foreign origin",
            vec![("cookie", &cookie), ("origin", "https://evil.example")],
            403,
        ),
        ("cookie without origin", vec![("cookie", &cookie)], 403),
        (
            "forged cookie",
            vec![("cookie", &forged), ("origin", &origin)],
            403,
        ),
        (
            "host not allowed",
            vec![
                ("cookie", &cookie),
                ("origin", &origin),
                ("host", "evil.example"),
            ],
            400,
        ),
    ];
    for (name, headers, status) in rows {
        match connect(gw.addr, "/ws/echo", &headers).await {
            Err(Error::Http(response)) => assert_eq!(response.status(), status, "row {name}"),
            other => panic!(
                "row {name}: expected HTTP {status}, got {:?}",
                other.map(|(_, r)| r.status())
            ),
        }
    }
}

async fn close_mode_rejects_with_close_codes(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw =
        TestGateway::start_with(&db, |c| c.ws_reject = portcullis_gateway::WsReject::Close).await;
    let s = gw.login(ADMIN).await;
    let origin = format!("http://{}", gw.addr);
    let cookie = s.cookie_header();
    let rows: Vec<HeaderRow> = vec![
        ("no credential", vec![("origin", &origin)], 4401),
        (
            "foreign origin",
            vec![("cookie", &cookie), ("origin", "https://evil.example")],
            4403,
        ),
    ];
    for (name, headers, code) in rows {
        let (mut ws, response) = connect(gw.addr, "/ws/echo", &headers).await.unwrap();
        assert_eq!(response.status(), 101, "row {name}");
        let frame = close_frame(&mut ws, Duration::from_secs(5))
            .await
            .expect("close frame");
        assert_eq!(u16::from(frame.code), code, "row {name}");
    }
}

async fn revocation_closes_live_connections_within_a_second(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let s = gw.login(USER).await;
    let other = gw.login(USER).await;
    let mut ws1 = connect_as(gw.addr, &s).await;
    let mut ws2 = connect_as(gw.addr, &s).await;
    let mut bystander = connect_as(gw.addr, &other).await;
    ws1.send(Message::text("x")).await.unwrap();
    assert_eq!(next_data(&mut ws1).await, Message::text("x"));
    // Revoked from elsewhere (as the CLI or another replica would).
    let elsewhere = portcullis_store::Store::connect(&db.url).await.unwrap();
    elsewhere
        .revoke_session(&s.id(), "test", now_ms())
        .await
        .unwrap();
    for ws in [&mut ws1, &mut ws2] {
        let frame = close_frame(ws, Duration::from_secs(1))
            .await
            .expect("closed within 1 s");
        assert_eq!(u16::from(frame.code), 4401);
        assert_eq!(frame.reason.as_str(), "session revoked");
    }
    bystander.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_data(&mut bystander).await, Message::text("still here"));

    // Logging out closes the session's sockets as well.
    let r = gw
        .client
        .request(
            "POST",
            "/.auth/logout",
            &[
                ("cookie", &other.cookie_header()),
                ("x-csrf-token", &other.csrf),
                ("accept", "application/json"),
            ],
            "",
        )
        .await;
    assert_eq!(r.status, 204);
    let frame = close_frame(&mut bystander, Duration::from_secs(1))
        .await
        .expect("closed on logout");
    assert_eq!(u16::from(frame.code), 4401);
}

async fn expiry_closes_live_connections(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start_with(&db, |c| c.session.ttl_ms = 3_600_000).await;
    let s = gw.login(USER).await;
    let mut ws = connect_as(gw.addr, &s).await;
    gw.clock.advance(3_600_000);
    let frame = close_frame(&mut ws, Duration::from_secs(3))
        .await
        .expect("closed at expiry");
    assert_eq!(u16::from(frame.code), 4401);
    assert_eq!(frame.reason.as_str(), "session expired");
}

async fn upstream_refusal_is_a_clear_close(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let s = gw.login(USER).await;
    let origin = format!("http://{}", gw.addr);
    // `/plain` is an ordinary HTTP route upstream: it answers 200, never 101.
    let (mut ws, response) = connect(
        gw.addr,
        "/plain",
        &[("cookie", &s.cookie_header()), ("origin", &origin)],
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 101);
    let frame = close_frame(&mut ws, Duration::from_secs(5))
        .await
        .expect("close frame");
    assert_eq!(u16::from(frame.code), 1011);
    assert_eq!(frame.reason.as_str(), "upstream unavailable");
}

/// Mints a ticket for `session` through the gateway's API.
pub async fn mint_ticket(client: &TestClient, session: &Session) -> String {
    let r = client
        .request(
            "POST",
            "/.auth/ws-ticket",
            &[
                ("cookie", &session.cookie_header()),
                ("x-csrf-token", &session.csrf),
            ],
            "",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    let body = r.json();
    assert_eq!(body["expires_in"], 30);
    let ticket = body["ticket"].as_str().unwrap().to_owned();
    assert_eq!(ticket.len(), 43);
    ticket
}

pub async fn status_of(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> u16 {
    match connect(addr, path, headers).await {
        Ok((_ws, response)) => response.status().as_u16(),
        Err(Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("handshake failed: {e}"),
    }
}

async fn tickets_are_single_use_and_bound_to_their_session(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let s = gw.login(USER).await;
    // Minting needs the session and its CSRF token.
    let no_csrf = gw
        .client
        .request(
            "POST",
            "/.auth/ws-ticket",
            &[("cookie", &s.cookie_header())],
            "",
        )
        .await;
    assert_eq!(no_csrf.status, 403);
    assert_eq!(
        gw.client
            .request("POST", "/.auth/ws-ticket", &[], "")
            .await
            .status,
        401
    );

    // A ticket opens one socket, with no cookie and no Origin (non-browser clients).
    let ticket = mint_ticket(&gw.client, &s).await;
    let path = format!("/ws/echo?x=1&ticket={ticket}");
    let (mut ws, response) = connect(gw.addr, &path, &[]).await.unwrap();
    assert_eq!(response.status(), 101);
    ws.send(Message::text("headers")).await.unwrap();
    let Message::Text(seen) = next_data(&mut ws).await else {
        panic!()
    };
    let seen: serde_json::Value = serde_json::from_str(&seen).unwrap();
    assert_eq!(seen["x-forwarded-user"], USER);
    assert_eq!(
        seen[":uri"], "/ws/echo?x=1",
        "the ticket must not reach the upstream"
    );
    // Replays fail.
    assert_eq!(status_of(gw.addr, &path, &[]).await, 403, "replayed ticket");
    // The socket is bound to the minting session: revoking it closes the socket.
    let elsewhere = portcullis_store::Store::connect(&db.url).await.unwrap();
    elsewhere
        .revoke_session(&s.id(), "test", now_ms())
        .await
        .unwrap();
    let frame = close_frame(&mut ws, Duration::from_secs(1))
        .await
        .expect("closed within 1 s");
    assert_eq!(u16::from(frame.code), 4401);

    // A ticket whose session was revoked before use is refused.
    let s2 = gw.login(USER).await;
    let orphan = mint_ticket(&gw.client, &s2).await;
    elsewhere
        .revoke_session(&s2.id(), "test", now_ms())
        .await
        .unwrap();
    assert!(refused_within(&gw.client, &s2.cookie_header(), Duration::from_secs(1)).await);
    assert_eq!(
        status_of(gw.addr, &format!("/ws/echo?ticket={orphan}"), &[]).await,
        403
    );

    // Expired tickets fail (the clock moves instead of the test sleeping).
    let s3 = gw.login(USER).await;
    let stale = mint_ticket(&gw.client, &s3).await;
    gw.clock.advance(30_001);
    assert_eq!(
        status_of(gw.addr, &format!("/ws/echo?ticket={stale}"), &[]).await,
        403
    );

    // Malformed and unknown tickets: refused, and never echoed.
    for bad in ["short", &"A".repeat(43), "%00%00"] {
        let r = connect(gw.addr, &format!("/ws/echo?ticket={bad}"), &[]).await;
        let Err(Error::Http(response)) = r else {
            panic!("{bad} accepted")
        };
        assert_eq!(response.status(), 403, "{bad}");
        let body =
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned();
        assert!(
            !body.contains(bad) || bad.len() < 8,
            "{bad} echoed in {body}"
        );
    }
    let events = gw.audit("auth.ws_ticket").await;
    assert!(events.len() >= 4, "{events:?}");
    for e in &events {
        let target = e.target.clone().unwrap_or_default();
        assert!(
            target.chars().count() <= 9,
            "audit holds more than 8 characters of a ticket: {target}"
        );
    }
}

/// Reads the upstream's view of the handshake through the `headers` command.
pub async fn upstream_view(ws: &mut Ws) -> serde_json::Value {
    ws.send(Message::text("headers")).await.unwrap();
    let Message::Text(seen) = next_data(ws).await else {
        panic!("expected headers")
    };
    serde_json::from_str(&seen).unwrap()
}

async fn jep121_subprotocol_tokens(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let (_, secret) = crate::api_tokens::create_token(&gw.store, "kernel-client", "user").await;
    let marker = "v1.token.websocket.jupyter.org";
    let kernel = "v1.kernel.websocket.jupyter.org";
    let encoded: String = secret.bytes().map(|b| format!("%{b:02X}")).collect();
    let token_entry = format!("{marker}.{encoded}");

    // With a protocol the upstream negotiates (Jupyter's kernel protocol).
    let offer = format!("{token_entry}, {marker}, {kernel}");
    let (mut ws, response) = connect(gw.addr, "/ws/echo", &[("sec-websocket-protocol", &offer)])
        .await
        .unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], kernel);
    let seen = upstream_view(&mut ws).await;
    assert_eq!(seen["x-forwarded-user"], "kernel-client");
    assert_eq!(
        seen["sec-websocket-protocol"], kernel,
        "token entries are not forwarded: {seen}"
    );

    // With nothing the upstream selects: the bare marker answers, never the token.
    let offer = format!("{marker}, {token_entry}");
    let (_ws, response) = connect(gw.addr, "/ws/echo", &[("sec-websocket-protocol", &offer)])
        .await
        .unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], marker);

    // A ticket works as the subprotocol token too.
    let s = gw.login(USER).await;
    let ticket = mint_ticket(&gw.client, &s).await;
    let offer = format!("{marker}.{ticket}, {marker}");
    let (_ws, response) = connect(gw.addr, "/ws/echo", &[("sec-websocket-protocol", &offer)])
        .await
        .unwrap();
    assert_eq!(response.status(), 101);

    let rows = [
        (
            "invalid token",
            format!("{marker}.pct_{}, {marker}", "A".repeat(43)),
            403,
        ),
        (
            "two token entries",
            format!("{token_entry}, {marker}.pct_x, {marker}"),
            403,
        ),
        ("empty token", format!("{marker}., {marker}"), 403),
        ("marker only, no credential", marker.to_string(), 401),
    ];
    for (name, offer, status) in rows {
        assert_eq!(
            status_of(gw.addr, "/ws/echo", &[("sec-websocket-protocol", &offer)]).await,
            status,
            "row {name}"
        );
    }
}

async fn query_tokens_are_ours_only_when_they_look_ours(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let (_, secret) = crate::api_tokens::create_token(&gw.store, "legacy", "user").await;
    let (mut ws, _) = connect(gw.addr, &format!("/ws/echo?a=1&token={secret}"), &[])
        .await
        .unwrap();
    let seen = upstream_view(&mut ws).await;
    assert_eq!(seen["x-forwarded-user"], "legacy");
    assert_eq!(
        seen[":uri"], "/ws/echo?a=1",
        "our token must not reach the upstream: {seen}"
    );
    // Jupyter's own ?token= is not a gateway credential: it neither authenticates
    // nor is stripped.
    assert_eq!(
        status_of(gw.addr, "/ws/echo?token=jupyter-own", &[]).await,
        401
    );
    let s = gw.login(USER).await;
    let origin = format!("http://{}", gw.addr);
    let (mut ws, _) = connect(
        gw.addr,
        "/ws/echo?token=jupyter-own",
        &[("cookie", &s.cookie_header()), ("origin", &origin)],
    )
    .await
    .unwrap();
    assert_eq!(
        upstream_view(&mut ws).await[":uri"],
        "/ws/echo?token=jupyter-own"
    );

    // The legacy carrier can be switched off.
    let db2 = TestDb::new(backend).await;
    let gw2 = TestGateway::start_with(&db2, |c| c.ws_query_token = false).await;
    let (_, secret2) = crate::api_tokens::create_token(&gw2.store, "legacy", "user").await;
    assert_eq!(
        status_of(gw2.addr, &format!("/ws/echo?token={secret2}"), &[]).await,
        401
    );
    let caps = gw2.client.get("/.auth/capabilities", &[]).await.json();
    assert!(
        !caps["websocket"]["schemes"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("query-token"))
    );
}

async fn capabilities_describe_the_accepted_schemes(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let caps = gw.client.get("/.auth/capabilities", &[]).await;
    assert_eq!(caps.status, 200);
    let ws = &caps.json()["websocket"];
    assert_eq!(
        ws["schemes"],
        serde_json::json!([
            "ticket",
            "jep121-subprotocol",
            "authorization-bearer",
            "query-token",
            "cookie"
        ])
    );
    assert_eq!(ws["ticket_endpoint"], "/.auth/ws-ticket");
    assert_eq!(ws["subprotocol"], "v1.token.websocket.jupyter.org");
    assert_eq!(ws["close_codes"]["session_ended"], 4401);
    assert_eq!(ws["reject"], "status");
}

async fn fragments_and_client_close_codes_cross_the_relay(backend: Backend) {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let s = gw.login(USER).await;
    let origin = format!("http://{}", gw.addr);
    let key = format!("case={}", s.id());
    let (mut ws, _) = connect(
        gw.addr,
        &format!("/ws/echo?{key}"),
        &[("cookie", &s.cookie_header()), ("origin", &origin)],
    )
    .await
    .unwrap();
    // One text message in three fragments arrives whole.
    ws.send(Message::Frame(Frame::message(
        b"frag".to_vec(),
        OpCode::Data(Data::Text),
        false,
    )))
    .await
    .unwrap();
    ws.send(Message::Frame(Frame::message(
        b"men".to_vec(),
        OpCode::Data(Data::Continue),
        false,
    )))
    .await
    .unwrap();
    ws.send(Message::Frame(Frame::message(
        b"ted".to_vec(),
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("fragmented"));
    // The client's close code and reason reach the upstream.
    ws.send(Message::Close(Some(CloseFrame {
        code: 4002.into(),
        reason: "done here".into(),
    })))
    .await
    .unwrap();
    let seen = eventually(Duration::from_secs(3), || {
        let key = key.clone();
        async move { upstream_closes().lock().unwrap().contains_key(&key) }
    })
    .await;
    assert!(seen.is_some(), "the upstream never saw the client's close");
    assert_eq!(
        upstream_closes().lock().unwrap()[&key],
        (4002, "done here".to_string())
    );
}

async fn connections_end_at_the_maximum_lifetime(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw =
        TestGateway::start_with(&db, |c| c.ws_max_lifetime = Some(Duration::from_secs(1))).await;
    let s = gw.login(USER).await;
    let mut ws = connect_as(gw.addr, &s).await;
    let frame = close_frame(&mut ws, Duration::from_secs(4))
        .await
        .expect("closed at the maximum lifetime");
    assert_eq!(u16::from(frame.code), 1001);
    assert_eq!(frame.reason.as_str(), "maximum connection lifetime reached");
    // The session itself is untouched: the client just reconnects.
    connect_as(gw.addr, &s).await;
}

/// An upstream that stops reading cannot keep a revoked session's socket open.
async fn a_stalled_upstream_cannot_delay_revocation(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let s = gw.login(USER).await;
    let origin = format!("http://{}", gw.addr);
    let (ws, _) = connect(
        gw.addr,
        "/ws/stall",
        &[("cookie", &s.cookie_header()), ("origin", &origin)],
    )
    .await
    .unwrap();
    let (mut sink, mut stream) = ws.split();
    let flood = tokio::spawn(async move {
        let chunk = vec![1u8; 1 << 20];
        for _ in 0..256 {
            if sink.send(Message::binary(chunk.clone())).await.is_err() {
                return;
            }
        }
    });
    // Give the flood time to fill the socket buffers towards the upstream.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let elsewhere = portcullis_store::Store::connect(&db.url).await.unwrap();
    elsewhere
        .revoke_session(&s.id(), "test", now_ms())
        .await
        .unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(message) = stream.next().await {
            if let Ok(Message::Close(frame)) = message {
                return frame;
            }
        }
        None
    })
    .await
    .expect("no close within 2 s while the upstream was stalled")
    .expect("close frame");
    assert_eq!(u16::from(frame.code), 4401);
    flood.abort();
}

/// An upstream that writes its 101 and a first frame in one segment: the frame
/// arrives after the handshake bytes the gateway parses, and must not be lost. Then
/// frames the protocol forbids end the connection rather than pass.
async fn a_greeting_in_the_handshake_segment_is_relayed(backend: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let raw = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raw_addr = raw.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = raw.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if tcp.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let text = String::from_utf8_lossy(&head).to_lowercase();
                let key = text
                    .lines()
                    .find_map(|l| l.strip_prefix("sec-websocket-key:"))
                    .unwrap()
                    .trim()
                    .to_owned();
                let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(
                    // The key is base64: case matters, so take it from the raw head.
                    String::from_utf8_lossy(&head)
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .starts_with("sec-websocket-key:")
                                .then(|| l.split_once(':').unwrap().1.trim().to_owned())
                        })
                        .unwrap_or(key)
                        .as_bytes(),
                );
                let mut out = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                )
                .into_bytes();
                out.extend_from_slice(&[0x81, 5]);
                out.extend_from_slice(b"hello");
                if text.starts_with("get /ws/bad") {
                    // A masked frame from a server: forbidden.
                    out.extend_from_slice(&[0x81, 0x85, 1, 2, 3, 4, 0, 0, 0, 0, 0]);
                }
                tcp.write_all(&out).await.unwrap();
                let mut sink = [0u8; 1024];
                while tcp.read(&mut sink).await.unwrap_or(0) > 0 {}
            });
        }
    });
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start_with(&db, |c| {
        c.upstream = portcullis_gateway::Upstream::parse(&format!("http://{raw_addr}")).unwrap()
    })
    .await;
    let s = gw.login(USER).await;
    let origin = format!("http://{}", gw.addr);
    let headers = [("cookie", s.cookie_header()), ("origin", origin)];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (mut ws, _) = connect(gw.addr, "/ws/good", &headers).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("hello"));

    let (mut ws, _) = connect(gw.addr, "/ws/bad", &headers).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("hello"));
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => panic!("a forbidden frame passed: {t}"),
                Some(Ok(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection ends on a protocol violation");
}

/// An upstream that hangs up without a close frame: the client gets a clear 1011.
async fn an_upstream_that_vanishes_is_a_clear_close(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let s = gw.login(USER).await;
    let mut ws = connect_as(gw.addr, &s).await;
    ws.send(Message::text("x")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("x"));
    ws.send(Message::text("vanish")).await.unwrap();
    let frame = close_frame(&mut ws, Duration::from_secs(2))
        .await
        .expect("a close frame, not a bare end of stream");
    assert_eq!(u16::from(frame.code), 1011);
    assert_eq!(frame.reason.as_str(), "upstream connection lost");
}

both_backends!(
    an_upstream_that_vanishes_is_a_clear_close,
    a_greeting_in_the_handshake_segment_is_relayed,
    a_stalled_upstream_cannot_delay_revocation,
    fragments_and_client_close_codes_cross_the_relay,
    connections_end_at_the_maximum_lifetime,
    jep121_subprotocol_tokens,
    query_tokens_are_ours_only_when_they_look_ours,
    capabilities_describe_the_accepted_schemes,
    tickets_are_single_use_and_bound_to_their_session,
    relays_frames_both_ways,
    upstream_subprotocol_is_returned,
    upgrades_are_authenticated_before_the_upstream,
    close_mode_rejects_with_close_codes,
    revocation_closes_live_connections_within_a_second,
    expiry_closes_live_connections,
    upstream_refusal_is_a_clear_close,
);
