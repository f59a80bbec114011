//! Session validity on every request: cookies, revocation, expiry, idleness, key
//! rotation, activity batching, and failing closed.

use std::time::Duration;

use portcullis_core::clock::Clock;
use portcullis_core::cookie::CookieMac;
use portcullis_core::keys::{Keyring, new_signing_key};
use portcullis_core::secret::OsEntropy;

use crate::both_backends;
use crate::harness::*;

async fn malformed_and_forged_cookies_are_refused(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let s = gw.login(ADMIN).await;
    let good = s.cookie.clone();
    let parts: Vec<&str> = good.split('.').collect();
    let (id, key, mac) = (parts[1], parts[2], parts[3]);
    let mut flipped = mac.as_bytes().to_vec();
    flipped[5] = if flipped[5] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let ring = Keyring::unseal(&test_secret(), &gw.store.signing_keys().await.unwrap()).unwrap();
    let unknown_session = ring.sign("ses-AAAAAAAAAAAAAAAAAAAAAA").unwrap();
    let pre_login = ring.sign("pl-AAAAAAAAAAAAAAAAAAAAAA").unwrap();
    let foreign_key = CookieMac::new(&[1; 32]).sign(id, "sk-ZZZZZZZZZZZZZZZZZZZZZZ");
    let rows: Vec<(&str, String)> = vec![
        ("tampered MAC", format!("v1.{id}.{key}.{flipped}")),
        ("unknown key id", foreign_key),
        ("pre-login id presented as session", pre_login),
        ("validly signed but no such session", unknown_session),
        ("missing fields", format!("v1.{id}.{key}")),
        ("extra dots", format!("{good}.extra")),
        ("bad base64", format!("v1.{id}.{key}.{}", "*".repeat(43))),
        ("oversized", format!("{good}{}", "A".repeat(4000))),
        ("wrong version", format!("v2.{id}.{key}.{mac}")),
        ("empty", String::new()),
        ("quoted garbage", "\"v1...\"".into()),
    ];
    for (name, value) in rows {
        let cookie = format!("portcullis_session={value}");
        let r = gw.client.get("/echo", &[("cookie", &cookie)]).await;
        assert_eq!(r.status, 401, "row {name}");
        assert_eq!(r.json()["error"], "unauthenticated", "row {name}");
        assert!(
            !r.text().contains(&value[..value.len().min(20)]) || value.len() < 5,
            "row {name} echoes the cookie"
        );
    }
    assert_eq!(
        gw.client
            .get("/echo", &[("cookie", &s.cookie_header())])
            .await
            .status,
        200
    );
}

async fn revocation_elsewhere_is_seen_within_a_second(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let s = gw.login(USER).await;
    let cookie = s.cookie_header();
    assert_eq!(
        gw.client.get("/echo", &[("cookie", &cookie)]).await.status,
        200
    );
    // Another process's view of the same database (like the CLI or another replica).
    let other = portcullis_store::Store::connect(&db.url).await.unwrap();
    assert!(
        other
            .revoke_session(&s.id(), "test", now_ms())
            .await
            .unwrap()
    );
    assert!(
        refused_within(&gw.client, &cookie, Duration::from_secs(1)).await,
        "revocation not seen within 1 s"
    );
}

async fn expired_and_idle_sessions_end(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start_with(&db, |c| {
        c.session.ttl_ms = 3_600_000;
        c.session.idle_timeout_ms = Some(600_000);
    })
    .await;
    let s = gw.login(USER).await;
    let cookie = s.cookie_header();
    let ok = |status: u16| status == 200;
    // Activity every 9 minutes keeps the idle timer from firing.
    for _ in 0..3 {
        gw.clock.advance(540_000);
        assert!(ok(gw
            .client
            .get("/echo", &[("cookie", &cookie)])
            .await
            .status));
    }
    // Ten quiet minutes: idle.
    gw.clock.advance(600_000);
    assert_eq!(
        gw.client.get("/echo", &[("cookie", &cookie)]).await.status,
        401,
        "idle session must end"
    );

    // Absolute expiry wins over activity.
    let s2 = gw.login(USER).await;
    let cookie2 = s2.cookie_header();
    for _ in 0..6 {
        gw.clock.advance(590_000);
        assert!(ok(gw
            .client
            .get("/echo", &[("cookie", &cookie2)])
            .await
            .status));
    }
    gw.clock.advance(60_000);
    assert_eq!(
        gw.client.get("/echo", &[("cookie", &cookie2)]).await.status,
        401,
        "expired session must end"
    );
}

async fn activity_is_written_in_batches(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let s = gw.login(USER).await;
    let created = gw
        .store
        .session(&s.id())
        .await
        .unwrap()
        .unwrap()
        .last_seen_ms;
    gw.clock.advance(60_000);
    for _ in 0..20 {
        assert_eq!(
            gw.client
                .get("/echo", &[("cookie", &s.cookie_header())])
                .await
                .status,
            200
        );
    }
    let expected = gw.clock.now_ms();
    let store = gw.store.clone();
    let id = s.id();
    let took = eventually(Duration::from_secs(5), || {
        let (store, id) = (store.clone(), id.clone());
        async move { store.session(&id).await.unwrap().unwrap().last_seen_ms == expected }
    })
    .await;
    assert!(took.is_some(), "last_seen never reached the database");
    assert!(expected > created);
}

async fn key_rotation_logs_nobody_out(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let before = gw.login(USER).await;
    let key = new_signing_key(&test_secret(), &OsEntropy, now_ms() + 1).unwrap();
    gw.store.rotate_signing_key(&key).await.unwrap();
    // A second gateway started after the rotation signs with the new key.
    let gw2 = TestGateway::start(&db).await;
    let after = gw2.login(USER).await;
    assert!(after.cookie.contains(&key.id), "new logins use the new key");
    assert!(!before.cookie.contains(&key.id));
    for (name, session) in [("old-key cookie", &before), ("new-key cookie", &after)] {
        for (which, g) in [("first", &gw), ("second", &gw2)] {
            // The first gateway learns the new key on first sight (rate limited reload).
            let status = match eventually(Duration::from_secs(3), || {
                let (client, cookie) = (g.client.clone(), session.cookie_header());
                async move { client.get("/echo", &[("cookie", &cookie)]).await.status == 200 }
            })
            .await
            {
                Some(_) => 200,
                None => 401,
            };
            assert_eq!(status, 200, "{name} on the {which} gateway");
        }
    }
}

async fn database_outage_fails_closed(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let used = gw.login(USER).await;
    // Minted by another gateway on the same database, so this one has never seen it.
    let other = TestGateway::start(&db).await;
    let unused = other.login(USER).await;
    assert_eq!(
        gw.client
            .get("/echo", &[("cookie", &used.cookie_header())])
            .await
            .status,
        200
    );
    db.take_offline(&gw.store).await;
    // A session the gateway has not validated yet cannot be decided: 503, never a pass.
    let r = gw
        .client
        .get("/echo", &[("cookie", &unused.cookie_header())])
        .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "unavailable");
    assert_eq!(gw.client.get("/.auth/readyz", &[]).await.status, 503);
    let login = gw
        .client
        .request(
            "POST",
            "/.auth/login",
            &[("content-type", "application/json")],
            serde_json::json!({"username": USER, "password": PASSWORD}).to_string(),
        )
        .await;
    assert_eq!(
        login.status, 503,
        "no session can be minted without the database"
    );
}

both_backends!(
    malformed_and_forged_cookies_are_refused,
    revocation_elsewhere_is_seen_within_a_second,
    expired_and_idle_sessions_end,
    activity_is_written_in_batches,
    key_rotation_logs_nobody_out,
    database_outage_fails_closed,
    configuration_changes_are_not_revocations,
);

/// The bus tells configuration changes and revocations apart by where they travel
/// (their own log and channel), never by the shape of an id: a change arrives as
/// `Changed`, a revocation as `Revoked`, and neither as the other.
async fn configuration_changes_are_not_revocations(backend: Backend) {
    use portcullis_store::{BusEvent, ConfigTopic, RevocationBus};
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let s = gw.login(USER).await;
    let bus = RevocationBus::start(gw.store.clone()).await.unwrap();
    let mut events = bus.subscribe();
    gw.store.announce_oidc_change(now_ms()).await.unwrap();
    gw.store
        .revoke_session(&s.id(), "test", now_ms())
        .await
        .unwrap();
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while seen.len() < 2 {
            match events.recv().await {
                Ok(BusEvent::Flush) => continue,
                Ok(event) => seen.push(event),
                Err(_) => break,
            }
        }
    })
    .await;
    // Each arrives once, as what it is (their relative order is the poller's).
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen.contains(&BusEvent::Changed(ConfigTopic::OidcProviders)),
        "{seen:?}"
    );
    assert!(seen.contains(&BusEvent::Revoked(s.id())), "{seen:?}");
}
