//! The internal credential (SPEC 6.3), in a gateway in this process: the reference's
//! cases (mint-once stability, multi-use, rejection before minting, empty value,
//! wrong value, reset and re-mint, independence from the ticket store), loopback
//! only, never in a response. The supervised child is in `processes`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

use crate::both_backends;
use crate::harness::*;
use crate::websocket::{close_frame, connect, mint_ticket, next_data, status_of, upstream_view};

const MARKER: &str = "v1.token.websocket.jupyter.org";

pub async fn mint(gw: &TestGateway) -> String {
    gw.gateway
        .internal_credential()
        .await
        .unwrap()
        .expose()
        .to_owned()
}

fn bearer(value: &str) -> String {
    format!("Bearer {value}")
}

pub async fn http_status(gw: &TestGateway, credential: &str) -> u16 {
    gw.client
        .get(
            "/anything",
            &[
                ("authorization", &bearer(credential)),
                ("accept", "application/json"),
            ],
        )
        .await
        .status
}

async fn minted_once_and_stable(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let first = mint(&gw).await;
    assert!(first.starts_with("pci_") && first.len() == 47, "{first}");
    for _ in 0..3 {
        assert_eq!(mint(&gw).await, first, "minted once, then stable");
    }
    assert_eq!(gw.audit("auth.internal_credential.mint").await.len(), 1);

    // Another gateway on the same database: with PostgreSQL the credential belongs
    // to the deployment (stored sealed, so every replica accepts a child's
    // credential); with SQLite it belongs to the process.
    let other = TestGateway::start(&db).await;
    match backend {
        Backend::Postgres => {
            assert_eq!(http_status(&other, &first).await, 200, "read on demand");
            assert_eq!(mint(&other).await, first);
            let stored = db_value(&gw).await.expect("stored");
            assert!(
                !String::from_utf8_lossy(&stored).contains(&first[4..]),
                "stored sealed, not in the clear"
            );
        }
        Backend::Sqlite => {
            assert_eq!(http_status(&other, &first).await, 401);
            assert_ne!(mint(&other).await, first);
            assert!(db_value(&gw).await.is_none(), "never written to SQLite");
        }
    }
}

async fn db_value(gw: &TestGateway) -> Option<Vec<u8>> {
    gw.store.internal_credential().await.unwrap()
}

async fn multi_use_over_every_carrier(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let credential = mint(&gw).await;
    for _ in 0..3 {
        let r = gw
            .client
            .get("/echo", &[("authorization", &bearer(&credential))])
            .await;
        assert_eq!(r.status, 200);
        let seen = r.json();
        assert_eq!(seen["headers"]["x-forwarded-user"][0], "server-internal");
        assert!(
            seen["headers"].get("authorization").is_none(),
            "our credential never reaches the upstream: {seen}"
        );
    }
    let me = gw
        .client
        .get("/.auth/me", &[("authorization", &bearer(&credential))])
        .await;
    assert_eq!(me.json()["sub"], "server-internal");
    assert_eq!(me.json()["provider"], "server-internal");

    // WebSockets, reconnecting with the same value: header, JEP 121, ?token=.
    let offer = format!("{MARKER}.{credential}, {MARKER}");
    let carriers: [(String, Vec<(&str, String)>); 3] = [
        (
            "/ws/echo".into(),
            vec![("authorization", bearer(&credential))],
        ),
        (
            "/ws/echo".into(),
            vec![("sec-websocket-protocol", offer.clone())],
        ),
        (format!("/ws/echo?token={credential}"), vec![]),
    ];
    for round in 0..2 {
        for (path, headers) in &carriers {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (mut ws, response) = connect(gw.addr, path, &headers).await.unwrap();
            assert_eq!(response.status(), 101, "{path} round {round}");
            let seen = upstream_view(&mut ws).await;
            assert_eq!(seen["x-forwarded-user"], "server-internal");
            assert!(!seen.to_string().contains(&credential[4..]), "{seen}");
        }
    }
    let upgrades = gw.audit("auth.internal_credential").await;
    assert_eq!(
        upgrades.iter().filter(|e| e.outcome == "success").count(),
        6,
        "every upgrade is on record: {upgrades:?}"
    );
}

async fn refusals(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let shaped = format!("pci_{}", "A".repeat(43));

    // Before anything is minted, nothing is accepted, not even a well-formed value.
    assert_eq!(http_status(&gw, &shaped).await, 401);
    assert_eq!(
        status_of(gw.addr, "/ws/echo", &[("authorization", &bearer(&shaped))]).await,
        403
    );

    let credential = mint(&gw).await;
    let mut flipped = credential.clone().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let rows: [(&str, String); 6] = [
        ("empty value", "pci_".into()),
        ("wrong value", shaped.clone()),
        ("last character changed", flipped),
        ("truncated", credential[..credential.len() - 1].into()),
        ("extended", format!("{credential}A")),
        ("lower-cased", credential.to_lowercase()),
    ];
    for (name, value) in &rows {
        assert_eq!(http_status(&gw, value).await, 401, "http: {name}");
        assert_eq!(
            status_of(gw.addr, "/ws/echo", &[("authorization", &bearer(value))]).await,
            403,
            "ws header: {name}"
        );
        let offer = format!("{MARKER}.{value}, {MARKER}");
        assert_eq!(
            status_of(gw.addr, "/ws/echo", &[("sec-websocket-protocol", &offer)]).await,
            403,
            "ws subprotocol: {name}"
        );
    }
    // `Bearer` with nothing after it is not a credential of ours at all.
    assert_eq!(http_status(&gw, "").await, 401);

    let refused = gw.audit("auth.internal_credential").await;
    let reasons: Vec<_> = refused.iter().filter_map(|e| e.reason.clone()).collect();
    assert!(reasons.iter().any(|r| r == "not_minted"), "{reasons:?}");
    assert!(reasons.iter().any(|r| r == "mismatch"), "{reasons:?}");
    for event in &refused {
        let target = event.target.clone().unwrap_or_default();
        assert!(
            target.chars().count() <= 20 && target.starts_with("int-"),
            "a fingerprint, not a secret, on record: {target}"
        );
        for (_, value) in &rows {
            let body = value.trim_start_matches("pci_");
            assert!(
                body.len() < 8 || !target.contains(&body[..8]),
                "no part of a presented value on record: {target}"
            );
        }
    }
    // Still fine after all those refusals.
    assert_eq!(http_status(&gw, &credential).await, 200);
}

async fn reset_and_remint(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let first = mint(&gw).await;
    let (mut ws, _) = connect(gw.addr, "/ws/echo", &[("authorization", &bearer(&first))])
        .await
        .unwrap();
    ws.send(Message::text("x")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("x"));

    gw.gateway.reset_internal_credential().await.unwrap();
    let frame = close_frame(&mut ws, Duration::from_secs(1))
        .await
        .expect("closed within 1 s of the reset");
    assert_eq!(u16::from(frame.code), 4401);
    assert_eq!(http_status(&gw, &first).await, 401, "the old value is dead");

    let second = mint(&gw).await;
    assert_ne!(second, first, "re-minted");
    assert_eq!(http_status(&gw, &second).await, 200);
    assert_eq!(http_status(&gw, &first).await, 401);
    let (_ws, response) = connect(gw.addr, "/ws/echo", &[("authorization", &bearer(&second))])
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        101,
        "the new credential's sockets register"
    );
    assert_eq!(gw.audit("auth.internal_credential.mint").await.len(), 2);
    assert_eq!(gw.audit("auth.internal_credential.reset").await.len(), 1);
}

async fn independent_of_the_ticket_store(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let credential = mint(&gw).await;
    // Not a ticket: `?ticket=` with it is refused (and the refusal consumes nothing).
    assert_eq!(
        status_of(gw.addr, &format!("/ws/echo?ticket={credential}"), &[]).await,
        403
    );
    // Tickets come and go (minted, consumed, swept) without touching it.
    let s = gw.login(USER).await;
    let ticket = mint_ticket(&gw.client, &s).await;
    assert_eq!(
        status_of(gw.addr, &format!("/ws/echo?ticket={ticket}"), &[]).await,
        101
    );
    let _ = mint_ticket(&gw.client, &s).await;
    gw.store.sweep(now_ms() + 3_600_000, 1000).await.unwrap();
    assert_eq!(mint(&gw).await, credential);
    assert_eq!(http_status(&gw, &credential).await, 200);
    // And a ticket is not an internal credential.
    let ticket = mint_ticket(&gw.client, &s).await;
    assert_eq!(http_status(&gw, &format!("pci_{ticket}")).await, 401);
    assert_eq!(
        status_of(gw.addr, &format!("/ws/echo?ticket={ticket}"), &[]).await,
        101,
        "the ticket itself is untouched by that attempt"
    );
}

async fn never_in_a_response(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let credential = mint(&gw).await;
    let s = gw.login(USER).await;
    let auth = bearer(&credential);
    let cookie = s.cookie_header();
    type Row<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);
    let requests: [Row; 7] = [
        ("GET", "/.auth/login", vec![("accept", "text/html")]),
        ("GET", "/.auth/capabilities", vec![]),
        ("GET", "/.auth/me", vec![("authorization", &auth)]),
        ("GET", "/.auth/me", vec![("cookie", &cookie)]),
        ("GET", "/.auth/verify", vec![("authorization", &auth)]),
        ("GET", "/.auth/healthz", vec![]),
        ("GET", "/.auth/readyz", vec![]),
    ];
    for (method, path, headers) in &requests {
        let r = gw.client.request(method, path, headers, "").await;
        let all = format!("{:?} {}", r.headers, r.text());
        assert!(!all.contains(&credential[4..]), "{method} {path}: {all}");
    }
}

/// The first non-loopback address of this host, if it has one.
fn host_address() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

async fn loopback_peers_only(backend: Backend) {
    let Some(ip) = host_address() else {
        panic!("this test needs a non-loopback address on the host");
    };
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start_on(&db, ip, |_| {}).await;
    let credential = mint(&gw).await;
    assert_ne!(gw.addr.ip(), IpAddr::from([127, 0, 0, 1]));
    assert_eq!(
        http_status(&gw, &credential).await,
        401,
        "non-loopback peer"
    );
    assert_eq!(
        status_of(
            gw.addr,
            "/ws/echo",
            &[("authorization", &bearer(&credential))]
        )
        .await,
        403
    );
    let refused = gw.audit("auth.internal_credential").await;
    assert!(
        refused
            .iter()
            .any(|e| e.reason.as_deref() == Some("remote_peer")),
        "{refused:?}"
    );
    // Refused only for its peer, so it is the real secret: only its fingerprint
    // (the credential's id) is on record.
    let body = credential.trim_start_matches("pci_");
    for event in &refused {
        let target = event.target.clone().unwrap_or_default();
        assert!(!target.contains(&body[..8]), "{target}");
        assert!(target.starts_with("int-"), "{target}");
    }

    // Allowed when the operator says so.
    let db2 = TestDb::new(backend).await;
    let open = TestGateway::start_on(&db2, ip, |c| c.internal_credential_remote = true).await;
    let credential = mint(&open).await;
    assert_eq!(http_status(&open, &credential).await, 200);
    let _: SocketAddr = open.addr;
}

both_backends!(
    minted_once_and_stable,
    multi_use_over_every_carrier,
    refusals,
    reset_and_remint,
    independent_of_the_ticket_store,
    never_in_a_response,
    loopback_peers_only,
);
