//! Faults between a replica and its database (SPEC 9; the resilience issue): a
//! relay the test controls stands between a gateway and PostgreSQL and resets or
//! silently drops its connections.
//!
//! What must hold: a replica notices a lost bus within a second and from then on
//! checks every request against the database (failing closed while it cannot);
//! a revocation made elsewhere during the cut is honoured once noticed, and a
//! live WebSocket of a session revoked during the cut closes within a second of
//! the link healing; nothing stale is cached across the cut; with the database
//! gone, requests answer 503 within the bound and both replicas recover without
//! a restart.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use portcullis_store::Store;

use crate::harness::*;
use crate::relay::Relay;
use crate::websocket::{close_frame, connect_as};

/// PostgreSQL's address in a test database's URL.
pub fn server_of(url: &str) -> SocketAddr {
    let authority = url.split_once('@').unwrap().1.split('/').next().unwrap();
    authority.parse().unwrap()
}

/// A replica reaching the database through `relay`, waiting at most `timeout`.
async fn replica_via(relay: &Relay, db: &TestDb, timeout: Duration) -> TestGateway {
    let store = Store::connect_with_timeout(&relay.url(&db.url), timeout)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    TestGateway::start_on_store(store, listener, |_| {}).await
}

async fn status(gw: &TestGateway, session: &Session) -> u16 {
    gw.client
        .get("/echo", &[("cookie", &session.cookie_header())])
        .await
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_during_a_reset_reaches_the_cut_off_replica() {
    revocation_during_a_cut(Relay::down).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_during_a_partition_reaches_the_cut_off_replica() {
    revocation_during_a_cut(Relay::black_hole).await;
}

/// Replica A on the database directly, replica B through a relay. Sessions are
/// revoked on A while B is cut off; B must refuse them once it noticed the cut
/// and close the live WebSocket of one within a second of the link healing.
async fn revocation_during_a_cut(cut: fn(&Relay)) {
    let db = TestDb::new(Backend::Postgres).await;
    let a = TestGateway::start(&db).await;
    let relay = Relay::start(server_of(&db.url)).await;
    let b = replica_via(&relay, &db, Duration::from_millis(500)).await;

    let revoked = a.login(USER).await;
    let kept = a.login(USER).await;
    let watched = a.login(USER).await;
    // B has both cached, and a WebSocket of the third open.
    assert_eq!(status(&b, &revoked).await, 200);
    assert_eq!(status(&b, &kept).await, 200);
    let mut ws = connect_as(b.addr, &watched).await;
    // Metrics are per process, and both replicas run in this one: what moves
    // from here on is B's doing (A's bus and database never fail).
    let metrics_before =
        crate::metrics::Scrape::parse(portcullis_gateway::metrics::render(&b.gateway));

    cut(&relay);
    // B's bus notices within a second, and /readyz says so (answering within its
    // bound of 0.9 s whatever the database does).
    let noticed = eventually(Duration::from_secs(3), || async {
        let asked = Instant::now();
        let r = b.client.get("/.auth/readyz", &[]).await;
        assert!(
            asked.elapsed() < Duration::from_millis(1500),
            "readyz took {:?}",
            asked.elapsed()
        );
        r.status == 503 && r.json()["reasons"].to_string().contains("revocation_bus")
    })
    .await;
    // The bus notices within 850 ms; asking /readyz adds up to its own 0.9 s.
    let noticed = noticed.expect("B notices the cut");
    assert!(
        noticed < Duration::from_secs(2),
        "noticed after {noticed:?}"
    );

    // Revoked on A during the cut: refused on B (503 while it cannot ask the
    // database; never the cached 200), each answer within the database bound.
    a.store
        .revoke_session(&revoked.id(), "test", now_ms())
        .await
        .unwrap();
    a.store
        .revoke_session(&watched.id(), "test", now_ms())
        .await
        .unwrap();
    for _ in 0..3 {
        let asked = Instant::now();
        let code = status(&b, &revoked).await;
        assert_eq!(
            code, 503,
            "a revoked session on a cut-off replica fails closed"
        );
        assert!(
            asked.elapsed() < Duration::from_millis(1500),
            "{:?}",
            asked.elapsed()
        );
    }

    relay.up();
    let healed = Instant::now();
    // The WebSocket of the session revoked during the cut closes within a second.
    let frame = close_frame(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(frame.map(|f| u16::from(f.code)), Some(4401));
    assert!(
        healed.elapsed() < Duration::from_millis(1500),
        "closed {:?} after healing",
        healed.elapsed()
    );
    // Nothing stale: the revoked session stays refused, the kept one works again.
    let back = eventually(Duration::from_secs(3), || async {
        status(&b, &kept).await == 200
    })
    .await;
    assert!(back.is_some(), "B serves again after healing");
    assert_eq!(status(&b, &revoked).await, 401);
    assert_eq!(status(&a, &revoked).await, 401);
    let ready = eventually(Duration::from_secs(3), || async {
        b.client.get("/.auth/readyz", &[]).await.status == 200
    })
    .await;
    assert!(ready.is_some(), "B is ready again");
    // B's metrics tell it: the bus lost and back, the cache emptied, the
    // database's timeouts, and the refusals that could not be decided.
    let scrape = crate::metrics::Scrape::parse(portcullis_gateway::metrics::render(&b.gateway));
    let moved = |series: &str| scrape.get(series) - metrics_before.get(series);
    for (series, least) in [
        ("portcullis_bus_lost_total", 1.0),
        ("portcullis_bus_reconnects_total", 1.0),
        ("portcullis_session_cache_flushes_total", 1.0),
        (
            r#"portcullis_authentications_total{carrier="cookie",result="unavailable"}"#,
            3.0,
        ),
    ] {
        assert!(moved(series) >= least, "{series} moved {}", moved(series));
    }
    // The bus is back (a gauge: its value, not a change).
    assert_eq!(scrape.get("portcullis_bus_connected"), 1.0);
    // A reset refuses connections, a partition lets them time out.
    let store_errors = moved(r#"portcullis_store_errors_total{kind="timeout"}"#)
        + moved(r#"portcullis_store_errors_total{kind="database"}"#);
    assert!(store_errors >= 1.0, "no store error counted");
}

/// Both replicas lose the database under load: every request answers within the
/// bound (503 for any credential, 401 without one), nothing passes, and both
/// serve again once it is back, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_going_away_fails_closed_fast_and_both_replicas_recover() {
    let db = TestDb::new(Backend::Postgres).await;
    let relays = [
        Relay::start(server_of(&db.url)).await,
        Relay::start(server_of(&db.url)).await,
    ];
    let replicas = [
        replica_via(&relays[0], &db, portcullis_store::DEFAULT_TIMEOUT).await,
        replica_via(&relays[1], &db, portcullis_store::DEFAULT_TIMEOUT).await,
    ];
    let session = replicas[0].login(USER).await;
    let forged = "portcullis_session=v1.ses-AAAAAAAAAAAAAAAAAAAAAA.sk-AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    for gw in &replicas {
        assert_eq!(status(gw, &session).await, 200);
    }
    for relay in &relays {
        relay.down();
    }
    // Once each replica noticed (within a second), a cached session is no longer
    // trusted: the database must say, and cannot.
    for gw in &replicas {
        let noticed = eventually(Duration::from_secs(3), || async {
            let r = gw.client.get("/.auth/readyz", &[]).await;
            let reasons = r.json()["reasons"].to_string();
            r.status == 503 && reasons.contains("revocation_bus") && reasons.contains("database")
        })
        .await;
        assert!(
            noticed.is_some_and(|t| t < Duration::from_secs(2)),
            "{noticed:?}"
        );
    }
    // Under load: several requests in flight on each replica at once.
    let bound = portcullis_store::DEFAULT_TIMEOUT + Duration::from_millis(500);
    for _ in 0..3 {
        let mut asked = Vec::new();
        for gw in &replicas {
            for cookie in [session.cookie_header(), forged.to_owned(), String::new()] {
                let client = gw.client.clone();
                asked.push(tokio::spawn(async move {
                    let start = Instant::now();
                    let headers: Vec<(&str, &str)> = if cookie.is_empty() {
                        vec![]
                    } else {
                        vec![("cookie", cookie.as_str())]
                    };
                    let r = client.get("/echo", &headers).await;
                    (cookie, r.status, start.elapsed())
                }));
            }
        }
        for request in asked {
            let (cookie, code, took) = request.await.unwrap();
            assert_ne!(code, 200, "nothing passes while the database is gone");
            // A forged cookie is refused by its signature, before any lookup.
            let expected: &[u16] = match cookie.as_str() {
                "" => &[401],
                c if c == forged => &[401, 503],
                _ => &[503],
            };
            assert!(expected.contains(&code), "{code} for cookie {cookie:?}");
            assert!(took < bound, "answered after {took:?}");
        }
    }
    for relay in &relays {
        relay.up();
    }
    for gw in &replicas {
        let back = eventually(Duration::from_secs(5), || async {
            status(gw, &session).await == 200
        })
        .await;
        assert!(back.is_some(), "a replica recovers without a restart");
        assert_eq!(
            gw.client.get("/echo", &[("cookie", forged)]).await.status,
            401
        );
    }
}

/// Requests that timed out on connections gone silent do not keep their places
/// in the pool: once the link works again for new connections (the old ones
/// never answer again: their state was lost on the way), the replica serves
/// again within seconds, not when TCP gives up on the old ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_gone_silent_do_not_hold_the_pool() {
    let db = TestDb::new(Backend::Postgres).await;
    let a = TestGateway::start(&db).await;
    let relay = Relay::start(server_of(&db.url)).await;
    let b = replica_via(&relay, &db, Duration::from_millis(500)).await;
    // More sessions than the pool has connections, none cached on B.
    let mut sessions = Vec::new();
    for _ in 0..20 {
        sessions.push(a.login(USER).await);
    }
    relay.black_hole();
    let asked: Vec<_> = sessions
        .iter()
        .map(|s| {
            let (client, cookie) = (b.client.clone(), s.cookie_header());
            tokio::spawn(async move { client.get("/echo", &[("cookie", &cookie)]).await.status })
        })
        .collect();
    for request in asked {
        assert_eq!(request.await.unwrap(), 503, "fails closed while silent");
    }
    relay.sever();
    let back = eventually(Duration::from_secs(10), || async {
        status(&b, &sessions[0]).await == 200
    })
    .await;
    assert!(back.is_some(), "the pool is not held by silent connections");
    for s in &sessions {
        assert_eq!(status(&b, s).await, 200);
    }
}

/// The internal credential held in memory is not trusted while the bus is down
/// (a reset on another replica would go unheard): the database decides, and a
/// replica that cannot reach it refuses the credential (503) until it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_internal_credential_fails_closed_while_the_bus_is_down() {
    let db = TestDb::new(Backend::Postgres).await;
    let relay = Relay::start(server_of(&db.url)).await;
    let b = replica_via(&relay, &db, Duration::from_millis(500)).await;
    let credential = crate::internal::mint(&b).await;
    assert_eq!(crate::internal::http_status(&b, &credential).await, 200);

    relay.black_hole();
    let noticed = eventually(Duration::from_secs(3), || async {
        !b.gateway.bus_connected()
    })
    .await;
    assert!(noticed.is_some(), "B notices the cut");
    for _ in 0..3 {
        let asked = Instant::now();
        assert_eq!(crate::internal::http_status(&b, &credential).await, 503);
        assert!(
            asked.elapsed() < Duration::from_millis(1500),
            "{:?}",
            asked.elapsed()
        );
    }

    relay.up();
    let back = eventually(Duration::from_secs(5), || async {
        crate::internal::http_status(&b, &credential).await == 200
    })
    .await;
    assert!(
        back.is_some(),
        "the credential works again once the bus is back"
    );
}
