//! Magic links for external clients (SPEC 7), end to end: a link signs a client
//! in and leaves the address bar; every request re-checks the link and its
//! client, so revoking, disabling or expiry ends live sessions and WebSockets on
//! every replica; the client reaches its scope only; the operator preview.

use std::time::Duration;

use futures_util::SinkExt;
use portcullis_core::client::ClientSpec;
use portcullis_core::secret::OsEntropy;
use portcullis_gateway::clients::{create_client, create_link};
use tokio_tungstenite::tungstenite::Message;

use crate::both_backends;
use crate::harness::*;
use crate::websocket::{close_frame, connect, next_data};

both_backends!(
    a_link_signs_the_client_in_and_leaves_the_address_bar,
    the_scope_holds_under_every_reading_of_a_path,
    a_revoked_link_ends_its_sessions_and_websockets_on_every_replica,
    a_disabled_client_and_an_expired_link_sign_no_one_in,
    unauthenticated_requests_inside_a_scope_are_told_to_ask_for_a_link,
    forward_auth_holds_a_client_to_its_scope,
    a_sign_in_racing_a_revocation_never_outlives_it,
    clients_and_links_through_the_admin_api,
    preview_creates_and_links_a_client_when_the_scope_has_none,
    preview_is_idempotent_on_repeat,
    preview_reuses_a_linked_client_without_clobbering_it,
    preview_keeps_the_operator_session_beside_the_client_session,
    preview_needs_an_operator_browser_with_csrf,
    preview_never_enables_a_disabled_preview_client,
    preview_refuses_a_scope_that_is_not_one,
    cli_manages_clients_and_links_across_replicas,
);

const SCOPE: [&str; 2] = ["/portal/", "/ws/"];

/// A client `acme` (scope `/portal/` and `/ws/`, role `viewer`) and one link;
/// returns the link's secret and token id.
async fn acme(gw: &TestGateway) -> (String, String) {
    let spec = ClientSpec::new("acme", "ACME Corp", &SCOPE, &["viewer"]).unwrap();
    create_client(&gw.store, &spec, false, &OsEntropy, now_ms())
        .await
        .unwrap();
    link(gw, "acme", None).await
}

async fn link(gw: &TestGateway, slug: &str, expires_ms: Option<i64>) -> (String, String) {
    let (row, secret) = create_link(
        &gw.store,
        slug,
        Some("test".into()),
        expires_ms,
        &OsEntropy,
        now_ms(),
    )
    .await
    .unwrap();
    (secret.expose().to_owned(), row.id)
}

/// Follows a link; returns the response and the client cookie it set (if any).
async fn follow(client: &TestClient, secret: &str, query: &str) -> (TestResponse, Option<String>) {
    let r = client
        .get(
            &format!("/.auth/magic/{secret}{query}"),
            &[("accept", "text/html")],
        )
        .await;
    let cookie = r.cookie("portcullis_client");
    (r, cookie)
}

/// A WebSocket to the echo upstream carried by a client cookie, from the public
/// origin (as a browser page of the scope would open it).
async fn client_socket(addr: std::net::SocketAddr, cookie: &str) -> crate::websocket::Ws {
    let origin = format!("http://{addr}");
    connect(addr, "/ws/echo", &[("cookie", cookie), ("origin", &origin)])
        .await
        .expect("an upgrade inside the client's scope")
        .0
}

fn client_cookie(value: &str) -> String {
    format!("portcullis_client={value}")
}

async fn a_link_signs_the_client_in_and_leaves_the_address_bar(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let (secret, token_id) = acme(&gw).await;
    let (r, cookie) = follow(&gw.client, &secret, "").await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.header("location").as_deref(), Some("/portal/"));
    assert_eq!(r.header("referrer-policy").as_deref(), Some("no-referrer"));
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    assert!(
        r.set_cookie("portcullis_csrf").is_some(),
        "a client alone gets the CSRF cookie"
    );
    let cookie = client_cookie(&cookie.expect("client cookie"));

    let page = gw.client.get("/portal/page", &[("cookie", &cookie)]).await;
    assert_eq!(page.status, 200, "{}", page.text());
    let seen = &page.json()["headers"];
    assert_eq!(seen["x-forwarded-user"], serde_json::json!(["acme"]));
    assert_eq!(seen["x-forwarded-groups"], serde_json::json!(["viewer"]));
    assert_eq!(
        seen["x-forwarded-preferred-username"],
        serde_json::json!(["ACME Corp"])
    );
    assert!(
        seen.get("cookie").is_none(),
        "no gateway cookie upstream: {seen}"
    );

    let me = gw.client.get("/.auth/me", &[("cookie", &cookie)]).await;
    assert_eq!(me.status, 200);
    assert_eq!(me.json()["provider"], "magic");
    assert_eq!(me.json()["sub"], "acme");

    // `next` is honoured inside the scope only.
    for (next, location) in [
        ("/portal/docs/a?x=1", "/portal/docs/a?x=1"),
        ("/admin/", "/portal/"),
        ("/portal/../admin/", "/portal/"),
        ("//evil.example/portal/", "/portal/"),
        ("https://evil.example/portal/", "/portal/"),
    ] {
        let query = format!("?next={}", urlencode(next));
        let (r, _) = follow(&gw.client, &secret, &query).await;
        assert_eq!(
            r.header("location").as_deref(),
            Some(location),
            "next={next}"
        );
    }

    // A browser signed in as a person is asked before a link makes it act as a
    // client (someone else's link must not switch it silently).
    let bob = gw.login(USER).await;
    let asked = gw
        .client
        .get(
            &format!("/.auth/magic/{secret}"),
            &[("cookie", &bob.cookie_header()), ("accept", "text/html")],
        )
        .await;
    assert_eq!(asked.status, 200);
    assert!(
        asked.text().contains("Open a shared link"),
        "{}",
        asked.text()
    );
    assert!(asked.cookie("portcullis_client").is_none());
    assert!(
        !asked.text().contains(&secret),
        "the page never holds the secret"
    );
    assert_eq!(
        asked.header("referrer-policy").as_deref(),
        Some("no-referrer")
    );
    let origin = format!("http://{}", gw.addr);
    for (name, from, status) in [
        ("a foreign origin", "https://evil.example", 403),
        ("the gateway's own page", origin.as_str(), 303),
    ] {
        let r = gw
            .client
            .request(
                "POST",
                &format!("/.auth/magic/{secret}"),
                &[
                    ("cookie", &bob.cookie_header()),
                    ("origin", from),
                    ("content-type", "application/x-www-form-urlencoded"),
                ],
                "",
            )
            .await;
        assert_eq!(r.status, status, "{name}: {}", r.text());
        assert_eq!(
            r.cookie("portcullis_client").is_some(),
            status == 303,
            "{name}"
        );
    }

    // Following a link again replaces the browser's client session: the old one
    // ends (nothing could use or end it once its cookie is overwritten).
    let again = gw
        .client
        .get(
            &format!("/.auth/magic/{secret}"),
            &[("cookie", &cookie), ("accept", "text/html")],
        )
        .await;
    assert_eq!(again.status, 303);
    assert!(refused_within(&gw.client, &cookie, Duration::from_secs(1)).await);
    let cookie = client_cookie(&again.cookie("portcullis_client").unwrap());
    assert_eq!(
        gw.client
            .get("/portal/", &[("cookie", &cookie)])
            .await
            .status,
        200
    );

    let used = gw.audit("auth.magic_link").await;
    assert!(
        used.iter()
            .any(|e| e.outcome == "success" && e.target.as_deref() == Some(token_id.as_str())),
        "{used:?}"
    );
    // Sign-in stamps the link as used.
    let tokens = gw.store.list_access_tokens(Some("acme")).await.unwrap();
    assert!(tokens[0].last_used_ms.is_some(), "{tokens:?}");
    // Use is stamped again, batched like activity.
    let first_use = tokens[0].last_used_ms.unwrap();
    gw.clock.advance(10_000);
    gw.client.get("/portal/later", &[("cookie", &cookie)]).await;
    let stamped = eventually(Duration::from_secs(5), || {
        let store = gw.store.clone();
        async move {
            let tokens = store.list_access_tokens(Some("acme")).await.unwrap();
            tokens[0].last_used_ms.is_some_and(|at| at > first_use)
        }
    })
    .await;
    assert!(stamped.is_some(), "last_used_at follows use");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn the_scope_holds_under_every_reading_of_a_path(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let (secret, _) = acme(&gw).await;
    let cookie = client_cookie(&follow(&gw.client, &secret, "").await.1.unwrap());
    let rows: &[(&str, u16)] = &[
        ("/portal/", 200),
        ("/portal", 200),
        ("/portal/a/b?c=d", 200),
        ("//portal/x", 200),
        ("/admin", 403),
        ("/", 403),
        ("/portal/../admin", 403),
        ("/portal/%2e%2e/admin", 403),
        ("/portal/%2E%2E%2Fadmin", 403),
        ("/portal%2F..%2Fadmin", 403),
        ("/portal/..;/admin", 403),
        ("/portal/%252e%252e/admin", 403),
        ("/portal/..%5Cadmin", 403),
        ("/PORTAL/", 403),
        ("/portalx", 403),
        ("/.auth/api/v1/sessions?all=true", 403),
    ];
    for (path, status) in rows {
        let r = gw
            .client
            .get(path, &[("cookie", &cookie), ("accept", "application/json")])
            .await;
        assert_eq!(r.status, *status, "{path}: {}", r.text());
        if *status == 403 && !path.starts_with("/.auth") {
            assert_eq!(r.json()["error"], "outside_scope", "{path}");
        }
    }
    // A browser outside the scope reads that its access is limited.
    let page = gw
        .client
        .get("/admin/", &[("cookie", &cookie), ("accept", "text/html")])
        .await;
    assert_eq!(page.status, 403);
    assert!(page.text().contains("Access is limited"), "{}", page.text());
    // Other methods, method overrides and upgrades are held to the scope too.
    let r = gw
        .client
        .request("POST", "/admin/delete", &[("cookie", &cookie)], "x=1")
        .await;
    assert_eq!(r.status, 403);
    let origin = format!("http://{}", gw.addr);
    let refused = connect(
        gw.addr,
        "/admin/ws",
        &[("cookie", &cookie), ("origin", &origin)],
    )
    .await;
    assert!(refused.is_err(), "an upgrade outside the scope is refused");
    let (mut ws, _) = connect(
        gw.addr,
        "/ws/echo",
        &[("cookie", &cookie), ("origin", &origin)],
    )
    .await
    .expect("an upgrade inside the scope");
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("hi"));
    // A client administers nothing, even with a role that could.
    let spec = ClientSpec::new("boss", "Boss", &["/portal/"], &["admin"]).unwrap();
    create_client(&gw.store, &spec, false, &OsEntropy, now_ms())
        .await
        .unwrap();
    let (boss_secret, _) = link(&gw, "boss", None).await;
    let signed_in = follow(&gw.client, &boss_secret, "").await.0;
    let boss = client_cookie(&signed_in.cookie("portcullis_client").unwrap());
    let csrf = signed_in.cookie("portcullis_csrf").unwrap();
    let boss_cookie = format!("{boss}; portcullis_csrf={csrf}");
    assert_eq!(
        gw.client.get("/portal/", &[("cookie", &boss)]).await.status,
        200
    );
    for (method, path, body) in [
        ("GET", "/.auth/api/v1/clients", ""),
        ("GET", "/.auth/api/v1/sessions?all=true", ""),
        ("GET", "/.auth/api/v1/audit", ""),
        (
            "POST",
            "/.auth/api/v1/clients",
            r#"{"slug": "wider", "name": "w", "scope": "/admin/"}"#,
        ),
        ("POST", "/.auth/api/v1/clients/acme/disable", ""),
    ] {
        let r = gw
            .client
            .request(
                method,
                path,
                &[
                    ("cookie", &boss_cookie),
                    ("x-csrf-token", &csrf),
                    ("content-type", "application/json"),
                ],
                body,
            )
            .await;
        assert_eq!(r.status, 403, "{method} {path}: {}", r.text());
    }
    assert!(gw.store.client_by_slug("wider").await.unwrap().is_none());
    // A client session mints no API token, even with a role that could.
    let r = gw
        .client
        .request(
            "POST",
            "/.auth/api/v1/api-tokens",
            &[("cookie", &cookie), ("content-type", "application/json")],
            "{}",
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
}

async fn a_revoked_link_ends_its_sessions_and_websockets_on_every_replica(backend: Backend) {
    let db = TestDb::new(backend).await;
    let a = TestGateway::start(&db).await;
    let b = TestGateway::start(&db).await;
    let (secret, token_id) = acme(&a).await;
    let cookie = client_cookie(&follow(&a.client, &secret, "").await.1.unwrap());
    // The same session on the other replica, over a WebSocket.
    let mut ws = client_socket(b.addr, &cookie).await;
    ws.send(Message::text("x")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("x"));
    assert_eq!(
        b.client
            .get("/portal/", &[("cookie", &cookie)])
            .await
            .status,
        200
    );

    // Revoked through replica a's admin API.
    let admin = a.login(ADMIN).await;
    let r = a
        .client
        .request(
            "DELETE",
            &format!("/.auth/api/v1/access-tokens/{token_id}"),
            &[
                ("cookie", &admin.cookie_header()),
                ("x-csrf-token", &admin.csrf),
            ],
            "",
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let frame = close_frame(&mut ws, Duration::from_secs(1))
        .await
        .expect("closed on replica b within 1 s");
    assert_eq!(u16::from(frame.code), 4401);
    for gw in [&a, &b] {
        assert!(refused_within(&gw.client, &cookie, Duration::from_secs(1)).await);
    }
    // The link, replayed, signs no one in; the reason is audited.
    let (r, cookie) = follow(&a.client, &secret, "").await;
    assert_eq!(r.status, 401);
    assert!(cookie.is_none());
    assert!(r.text().contains("This link is not valid"), "{}", r.text());
    assert!(!r.text().contains(&secret));
    let refused = a.audit("auth.magic_link").await;
    assert!(
        refused
            .iter()
            .any(|e| e.reason.as_deref() == Some("token_revoked")),
        "{refused:?}"
    );
    let revoked = a.audit("auth.access_token.revoke").await;
    assert_eq!(revoked.len(), 1, "{revoked:?}");
}

async fn a_disabled_client_and_an_expired_link_sign_no_one_in(backend: Backend) {
    let db = TestDb::new(backend).await;
    let a = TestGateway::start(&db).await;
    let b = TestGateway::start(&db).await;
    let (secret, _) = acme(&a).await;
    let cookie = client_cookie(&follow(&a.client, &secret, "").await.1.unwrap());
    let mut ws = client_socket(b.addr, &cookie).await;
    // Disabled elsewhere (the CLI, another replica): sessions and sockets end.
    let elsewhere = portcullis_store::Store::connect(&db.url).await.unwrap();
    elsewhere
        .set_client_active("acme", false, "test", now_ms())
        .await
        .unwrap();
    let frame = close_frame(&mut ws, Duration::from_secs(1))
        .await
        .expect("closed within 1 s");
    assert_eq!(u16::from(frame.code), 4401);
    assert!(refused_within(&a.client, &cookie, Duration::from_secs(1)).await);
    let (r, _) = follow(&a.client, &secret, "").await;
    assert_eq!(r.status, 401);
    let audit = a.audit("auth.magic_link").await;
    assert!(
        audit
            .iter()
            .any(|e| e.reason.as_deref() == Some("client_disabled"))
    );
    // Enabled again: the old session stays ended, the link works again.
    elsewhere
        .set_client_active("acme", true, "test", now_ms())
        .await
        .unwrap();
    assert_eq!(
        a.client
            .get("/portal/", &[("cookie", &cookie)])
            .await
            .status,
        401
    );
    let (r, fresh) = follow(&a.client, &secret, "").await;
    assert_eq!(r.status, 303);
    assert!(fresh.is_some());

    // A link that expires: its session ends with it, sockets included.
    let (short, _) = link(&a, "acme", Some(now_ms() + 60_000)).await;
    let cookie = client_cookie(&follow(&a.client, &short, "").await.1.unwrap());
    let mut ws = client_socket(a.addr, &cookie).await;
    a.clock.advance(61_000);
    let frame = close_frame(&mut ws, Duration::from_secs(3))
        .await
        .expect("closed at the link's expiry");
    assert_eq!(u16::from(frame.code), 4401);
    assert_eq!(
        a.client
            .get("/portal/", &[("cookie", &cookie)])
            .await
            .status,
        401
    );
    let (r, _) = follow(&a.client, &short, "").await;
    assert_eq!(r.status, 401);
    let audit = a.audit("auth.magic_link").await;
    assert!(
        audit
            .iter()
            .any(|e| e.reason.as_deref() == Some("token_expired"))
    );
    // A client named like a basic user would reach the upstream as them: its
    // links sign no one in, and the API refuses to create one.
    let spec = ClientSpec::new(USER, "Not Bob", &["/portal/"], &[] as &[&str]).unwrap();
    create_client(&a.store, &spec, false, &OsEntropy, now_ms())
        .await
        .unwrap();
    let (bobs, _) = link(&a, USER, None).await;
    let (r, cookie) = follow(&a.client, &bobs, "").await;
    assert_eq!(r.status, 401);
    assert!(cookie.is_none());
    let audit = a.audit("auth.magic_link").await;
    assert!(
        audit
            .iter()
            .any(|e| e.reason.as_deref() == Some("slug_names_a_basic_user"))
    );
    let admin = a.login(ADMIN).await;
    let r = a
        .client
        .request(
            "POST",
            "/.auth/api/v1/clients",
            &[
                ("cookie", &admin.cookie_header()),
                ("x-csrf-token", &admin.csrf),
                ("content-type", "application/json"),
            ],
            format!(r#"{{"slug": "{ADMIN}", "name": "x", "scope": "/p/"}}"#),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    // Malformed and unknown links: the same answer, their own reasons.
    for (bad, reason) in [
        ("short", "malformed"),
        (&"A".repeat(43)[..], "unknown_token"),
    ] {
        let (r, _) = follow(&a.client, bad, "").await;
        assert_eq!(r.status, 401, "{bad}");
        assert!(
            a.audit("auth.magic_link")
                .await
                .iter()
                .any(|e| e.reason.as_deref() == Some(reason))
        );
    }
}

async fn unauthenticated_requests_inside_a_scope_are_told_to_ask_for_a_link(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    // Added beside the gateway (as the CLI would): known within a second.
    acme(&gw).await;
    let known = eventually(Duration::from_secs(1), || {
        let client = gw.client.clone();
        async move {
            client
                .get("/portal/x", &[("accept", "text/html")])
                .await
                .status
                != 302
        }
    })
    .await;
    assert!(known.is_some(), "the scope reached the gateway");
    let page = gw.client.get("/portal/x", &[("accept", "text/html")]).await;
    assert_eq!(page.status, 401);
    assert!(page.text().contains("Access required"), "{}", page.text());
    assert!(page.text().contains("new link"), "{}", page.text());
    assert!(!page.text().contains("password"), "not the sign-in form");
    let api = gw
        .client
        .get("/portal/api/data", &[("accept", "application/json")])
        .await;
    assert_eq!(api.status, 401);
    assert_eq!(api.json()["error"], "unauthenticated");
    // Outside every scope, browsers are still sent to sign in.
    let other = gw
        .client
        .get("/elsewhere", &[("accept", "text/html")])
        .await;
    assert_eq!(other.status, 302);
    // A scope added on another replica is known here within a second.
    let elsewhere = portcullis_store::Store::connect(&db.url).await.unwrap();
    let spec = ClientSpec::new("beta", "Beta", &["/beta/"], &[] as &[&str]).unwrap();
    create_client(&elsewhere, &spec, false, &OsEntropy, now_ms())
        .await
        .unwrap();
    let known = eventually(Duration::from_secs(1), || {
        let client = gw.client.clone();
        async move {
            client
                .get("/beta/", &[("accept", "text/html")])
                .await
                .status
                == 401
        }
    })
    .await;
    assert!(known.is_some(), "the new scope reached this replica");
}

async fn clients_and_links_through_the_admin_api(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let admin = gw.login(ADMIN).await;
    let headers = [
        ("cookie", admin.cookie_header()),
        ("x-csrf-token", admin.csrf.clone()),
        ("content-type", "application/json".to_owned()),
    ];
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let body = r#"{"slug": "acme", "name": "ACME", "scope": ["/portal/"], "roles": ["viewer"]}"#;
    let r = gw
        .client
        .request("POST", "/.auth/api/v1/clients", &h, body)
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["scope"], serde_json::json!(["/portal/"]));
    let again = gw
        .client
        .request("POST", "/.auth/api/v1/clients", &h, body)
        .await;
    assert_eq!(again.status, 409);
    for bad in [
        r#"{"slug": "Bad Slug", "name": "x", "scope": "/p/"}"#,
        r#"{"slug": "x", "name": "x", "scope": "/p"}"#,
        r#"{"slug": "x", "name": "x", "scope": []}"#,
        r#"{"slug": "x", "name": "x", "scope": "/a/../b/"}"#,
        r#"{"slug": "x", "name": "x", "scope": "/p/", "roles": ["a,b"]}"#,
        r#"{"slug": "x", "name": "x", "scope": "/p/", "extra": 1}"#,
    ] {
        let r = gw
            .client
            .request("POST", "/.auth/api/v1/clients", &h, bad)
            .await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    let r = gw
        .client
        .request(
            "POST",
            "/.auth/api/v1/access-tokens",
            &h,
            r#"{"client": "acme", "label": "kickoff", "ttl_seconds": 3600}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    let link = r.json()["link"].as_str().unwrap().to_owned();
    let prefix = format!("http://{}/.auth/magic/", gw.addr);
    assert!(link.starts_with(&prefix), "{link}");
    let secret = link[prefix.len()..].to_owned();
    assert_eq!(secret.len(), 43);
    let (r, cookie) = follow(&gw.client, &secret, "").await;
    assert_eq!(r.status, 303);
    let cookie = client_cookie(&cookie.unwrap());
    // Listing never shows a secret; it shows use.
    let list = gw
        .client
        .get("/.auth/api/v1/access-tokens?client=acme", &h)
        .await;
    assert_eq!(list.status, 200);
    assert!(!list.text().contains(&secret));
    assert_eq!(list.json()["access_tokens"][0]["status"], "live");
    assert!(list.json()["access_tokens"][0]["last_used_at"].is_string());
    let clients = gw.client.get("/.auth/api/v1/clients", &h).await;
    assert_eq!(clients.json()["clients"][0]["slug"], "acme");
    // Disabling through the API ends the session here at once.
    let r = gw
        .client
        .request("POST", "/.auth/api/v1/clients/acme/disable", &h, "")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["sessions_ended"], 1);
    assert_eq!(
        gw.client
            .get("/portal/", &[("cookie", &cookie)])
            .await
            .status,
        401
    );
    let r = gw
        .client
        .request("POST", "/.auth/api/v1/clients/acme/enable", &h, "")
        .await;
    assert_eq!(r.json()["active"], true);
    let r = gw
        .client
        .request("POST", "/.auth/api/v1/clients/nobody/enable", &h, "")
        .await;
    assert_eq!(r.status, 404);
    for action in [
        "auth.client.create",
        "auth.client.disable",
        "auth.client.enable",
        "auth.access_token.create",
    ] {
        assert_eq!(gw.audit(action).await.len(), 1, "{action}");
    }
    // No audit row, response or list holds the secret.
    let rows = gw
        .store
        .audit_events(&portcullis_store::AuditFilter::default())
        .await
        .unwrap();
    let printed = format!("{rows:?}");
    assert!(!printed.contains(&secret));
    assert!(!printed.contains(&secret[..8]), "not even a part of it");
}

/// Signs an operator in and previews `scope` (a JSON value) with the session.
async fn preview(gw: &TestGateway, admin: &Session, scope: &str) -> TestResponse {
    gw.client
        .request(
            "POST",
            "/.auth/api/v1/clients/preview",
            &[
                ("cookie", &admin.cookie_header()),
                ("x-csrf-token", &admin.csrf),
                ("content-type", "application/json"),
            ],
            format!(r#"{{"scope": {scope}}}"#),
        )
        .await
}

async fn preview_creates_and_links_a_client_when_the_scope_has_none(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let admin = gw.login(ADMIN).await;
    let r = preview(&gw, &admin, r#""/portal/""#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json();
    assert_eq!(answer["client_created"], true);
    let slug = answer["client"]["slug"].as_str().unwrap().to_owned();
    assert!(slug.starts_with("preview-"), "{slug}");
    assert_eq!(answer["client"]["preview"], true);
    assert_eq!(answer["location"], "/portal/");
    let cookie = client_cookie(&r.cookie("portcullis_client").expect("client cookie"));
    assert!(
        r.set_cookie("portcullis_csrf").is_none(),
        "the operator's CSRF cookie stays theirs"
    );
    let page = gw.client.get("/portal/", &[("cookie", &cookie)]).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.json()["headers"]["x-forwarded-user"],
        serde_json::json!([slug])
    );
    let tokens = gw.store.list_access_tokens(Some(&slug)).await.unwrap();
    assert_eq!(tokens.len(), 1);
    assert!(tokens[0].preview);
    assert_eq!(gw.audit("auth.client.preview").await.len(), 1);
}

async fn preview_is_idempotent_on_repeat(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let admin = gw.login(ADMIN).await;
    let first = preview(&gw, &admin, r#""/portal/""#).await.json();
    let second = preview(&gw, &admin, r#"["/portal/"]"#).await;
    assert_eq!(second.status, 200);
    let second = second.json();
    assert_eq!(second["client_created"], false);
    assert_eq!(first["client"]["id"], second["client"]["id"]);
    assert_eq!(first["token_id"], second["token_id"]);
    assert_eq!(gw.store.list_clients().await.unwrap().len(), 1);
    assert_eq!(gw.store.list_access_tokens(None).await.unwrap().len(), 1);
    // Previews racing for another scope still make one client and one token.
    let mut racing = Vec::new();
    for _ in 0..6 {
        let (client, admin) = (gw.client.clone(), admin.clone());
        racing.push(tokio::spawn(async move {
            client
                .request(
                    "POST",
                    "/.auth/api/v1/clients/preview",
                    &[
                        ("cookie", &admin.cookie_header()),
                        ("x-csrf-token", &admin.csrf),
                        ("content-type", "application/json"),
                    ],
                    r#"{"scope": "/raced/"}"#,
                )
                .await
                .status
        }));
    }
    for task in racing {
        assert_eq!(task.await.unwrap(), 200);
    }
    assert_eq!(gw.store.list_clients().await.unwrap().len(), 2);
    assert_eq!(gw.store.list_access_tokens(None).await.unwrap().len(), 2);
}

async fn preview_reuses_a_linked_client_without_clobbering_it(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let (secret, token_id) = acme(&gw).await;
    let before = gw.store.client_by_slug("acme").await.unwrap().unwrap();
    let admin = gw.login(ADMIN).await;
    let r = preview(&gw, &admin, r#""/portal/""#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json();
    assert_eq!(answer["client"]["slug"], "acme");
    assert_eq!(answer["client_created"], false);
    assert_ne!(
        answer["token_id"],
        token_id.as_str(),
        "a preview token, not the client's link"
    );
    // The client and its link are as they were.
    assert_eq!(
        gw.store.client_by_slug("acme").await.unwrap().unwrap(),
        before
    );
    assert_eq!(gw.store.list_clients().await.unwrap().len(), 1);
    let link = gw.store.access_token(&token_id).await.unwrap().unwrap();
    assert_eq!(link.revoked_ms, None);
    assert!(!link.preview);
    let (r, _) = follow(&gw.client, &secret, "").await;
    assert_eq!(r.status, 303, "the client's own link still works");
    // A narrower scope inside the client's is the same client; a wider or
    // different one is not.
    let r = preview(&gw, &admin, r#""/ws/""#).await;
    assert_eq!(r.json()["client"]["slug"], "acme");
    let r = preview(&gw, &admin, r#""/elsewhere/""#).await;
    assert_ne!(r.json()["client"]["slug"], "acme");
}

async fn preview_keeps_the_operator_session_beside_the_client_session(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let admin = gw.login(ADMIN).await;
    let r = preview(&gw, &admin, r#"["/portal/", "/ws/"]"#).await;
    let client = r.cookie("portcullis_client").unwrap();
    let both = format!("{}; portcullis_client={client}", admin.cookie_header());
    // The upstream sees the client inside its scope; the gateway's own pages and
    // API still see the operator.
    let page = gw.client.get("/portal/", &[("cookie", &both)]).await;
    let slug = r.json()["client"]["slug"].as_str().unwrap().to_owned();
    assert_eq!(
        page.json()["headers"]["x-forwarded-user"],
        serde_json::json!([slug])
    );
    let me = gw.client.get("/.auth/me", &[("cookie", &both)]).await;
    assert_eq!(me.json()["sub"], ADMIN);
    let api = gw
        .client
        .get("/.auth/api/v1/sessions?all=true", &[("cookie", &both)])
        .await;
    assert_eq!(api.status, 200);
    // A WebSocket ticket from the previewing page (the operator's CSRF token) is
    // the client's, and opens a socket inside the scope as the client.
    let r = gw
        .client
        .request(
            "POST",
            "/.auth/ws-ticket",
            &[("cookie", &both), ("x-csrf-token", &admin.csrf)],
            "",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ticket = r.json()["ticket"].as_str().unwrap().to_owned();
    let refused = connect(gw.addr, &format!("/admin/ws?ticket={ticket}"), &[]).await;
    assert!(refused.is_err(), "the ticket carries the client's scope");
    let r = gw
        .client
        .request(
            "POST",
            "/.auth/ws-ticket",
            &[("cookie", &both), ("x-csrf-token", &admin.csrf)],
            "",
        )
        .await;
    let ticket = r.json()["ticket"].as_str().unwrap().to_owned();
    let (mut ws, _) = connect(gw.addr, &format!("/ws/echo?ticket={ticket}"), &[])
        .await
        .expect("a ticket inside the scope");
    ws.send(Message::text("headers")).await.unwrap();
    let Message::Text(seen) = next_data(&mut ws).await else {
        panic!("text expected")
    };
    assert!(seen.contains(&slug), "{seen}");
    let wrong = gw
        .client
        .request(
            "POST",
            "/.auth/ws-ticket",
            &[("cookie", &both), ("x-csrf-token", "AAAA")],
            "",
        )
        .await;
    assert_eq!(wrong.status, 403);
    // A client cookie that stops working gives way to the operator's session.
    gw.store
        .set_client_active(&slug, false, "test", now_ms())
        .await
        .unwrap();
    // (Disabled beside the gateway, as the CLI would: heard within a second.)
    let operator = eventually(Duration::from_secs(1), || {
        let (client, both) = (gw.client.clone(), both.clone());
        async move {
            let page = client.get("/portal/", &[("cookie", &both)]).await;
            page.status == 200
                && page.json()["headers"]["x-forwarded-user"] == serde_json::json!([ADMIN])
        }
    })
    .await;
    assert!(operator.is_some(), "the operator's session answers");
    gw.store
        .set_client_active(&slug, true, "test", now_ms())
        .await
        .unwrap();
    let r = preview(&gw, &admin, r#""/portal/""#).await;
    let client = r.cookie("portcullis_client").unwrap();
    let both = format!("{}; portcullis_client={client}", admin.cookie_header());
    // Signing out ends both.
    let r = gw
        .client
        .request(
            "POST",
            "/.auth/logout",
            &[
                ("cookie", &both),
                ("x-csrf-token", &admin.csrf),
                ("accept", "application/json"),
            ],
            "",
        )
        .await;
    assert_eq!(r.status, 204);
    assert!(
        r.cookie("portcullis_client").is_some(),
        "the client cookie is cleared"
    );
    assert!(refused_within(&gw.client, &client_cookie(&client), Duration::from_secs(1)).await);
    assert!(refused_within(&gw.client, &admin.cookie_header(), Duration::from_secs(1)).await);
    // Signing in as oneself clears a client cookie.
    let body = serde_json::json!({"username": ADMIN, "password": PASSWORD}).to_string();
    let r = gw
        .client
        .request(
            "POST",
            "/.auth/login",
            &[
                ("content-type", "application/json"),
                ("cookie", &client_cookie(&client)),
            ],
            body,
        )
        .await;
    assert_eq!(r.status, 200);
    let cleared = r
        .set_cookie("portcullis_client")
        .expect("client cookie cleared");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
}

async fn preview_needs_an_operator_browser_with_csrf(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let admin = gw.login(ADMIN).await;
    let body = r#"{"scope": "/portal/"}"#;
    let no_csrf = gw
        .client
        .request(
            "POST",
            "/.auth/api/v1/clients/preview",
            &[
                ("cookie", &admin.cookie_header()),
                ("content-type", "application/json"),
            ],
            body,
        )
        .await;
    assert_eq!(no_csrf.status, 403);
    let user = gw.login(USER).await;
    assert_eq!(preview(&gw, &user, r#""/portal/""#).await.status, 403);
    let (_, token) = crate::api_tokens::create_token(&gw.store, ADMIN, "admin,user").await;
    let bearer = format!("Bearer {token}");
    let r = gw
        .client
        .request(
            "POST",
            "/.auth/api/v1/clients/preview",
            &[
                ("authorization", &bearer),
                ("content-type", "application/json"),
            ],
            body,
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        gw.store.list_clients().await.unwrap().is_empty(),
        "nothing provisioned"
    );
}

async fn preview_never_enables_a_disabled_preview_client(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let admin = gw.login(ADMIN).await;
    let first = preview(&gw, &admin, r#""/portal/""#).await.json();
    let slug = first["client"]["slug"].as_str().unwrap().to_owned();
    gw.store
        .set_client_active(&slug, false, "test", now_ms())
        .await
        .unwrap();
    let r = preview(&gw, &admin, r#""/portal/""#).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.cookie("portcullis_client").is_none());
    assert!(
        !gw.store
            .client_by_slug(&slug)
            .await
            .unwrap()
            .unwrap()
            .active
    );
}

async fn preview_refuses_a_scope_that_is_not_one(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let admin = gw.login(ADMIN).await;
    for scope in [
        r#""/""#,
        r#""/portal""#,
        r#""/a/../b/""#,
        r#"[]"#,
        r#""/%2e/""#,
        "7",
    ] {
        let r = preview(&gw, &admin, scope).await;
        assert_eq!(r.status, 400, "{scope}: {}", r.text());
    }
    assert!(gw.store.list_clients().await.unwrap().is_empty());
}

async fn cli_manages_clients_and_links_across_replicas(backend: Backend) {
    use crate::processes::{Replica, command, free_port};
    let db = TestDb::new(backend).await;
    let upstream = TestUpstream::start().await;
    let users = format!("{USER}:{}", cheap_hash(PASSWORD));
    let a = Replica::start(&db, upstream.addr, free_port(), &users).await;
    let b = Replica::start(&db, upstream.addr, free_port(), &users).await;
    let run = |args: &[&str]| {
        let out = command(&db).args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, err) = run(&[
        "clients", "add", "--slug", "acme", "--name", "ACME", "--scope", "/portal/", "--scope",
        "/ws/", "--role", "viewer",
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = run(&[
        "clients", "add", "--slug", "acme", "--name", "x", "--scope", "/p/",
    ]);
    assert!(!ok && err.contains("already exists"), "{err}");
    let (ok, _, err) = run(&[
        "clients", "add", "--slug", "x", "--name", "x", "--scope", "/p",
    ]);
    assert!(!ok && err.contains("must start and end with /"), "{err}");
    let (ok, link, err) = run(&["tokens", "create", "--client", "acme", "--label", "kickoff"]);
    assert!(ok, "{err}");
    let link = link.trim().to_owned();
    assert!(link.contains("/.auth/magic/"), "{link}");
    let secret = link.rsplit('/').next().unwrap().to_owned();
    assert!(
        !err.contains(&secret),
        "the secret is printed once, on stdout"
    );
    let (ok, _, err) = run(&["tokens", "create", "--client", "nobody"]);
    assert!(!ok && err.contains("no client"), "{err}");

    let r = a.client.get(&format!("/.auth/magic/{secret}"), &[]).await;
    assert_eq!(r.status, 303, "{}", r.text());
    let cookie = client_cookie(&r.cookie("portcullis_client").unwrap());
    let mut ws = client_socket(b.client.addr, &cookie).await;
    let (_, listed, _) = run(&["tokens", "list", "--client", "acme", "--json"]);
    let row: serde_json::Value = serde_json::from_str(listed.trim()).unwrap();
    assert_eq!(row["label"], "kickoff");
    assert!(row["last_used_at"].is_string(), "{row}");
    assert!(!listed.contains(&secret));
    let (_, listed, _) = run(&["clients", "list"]);
    assert!(
        listed.contains("acme") && listed.contains("active"),
        "{listed}"
    );

    let (ok, out, err) = run(&["tokens", "revoke", row["id"].as_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("1 session(s) ended"), "{out}");
    let frame = close_frame(&mut ws, Duration::from_secs(1))
        .await
        .expect("closed within 1 s");
    assert_eq!(u16::from(frame.code), 4401);
    assert!(refused_within(&a.client, &cookie, Duration::from_secs(1)).await);
    let (ok, _, _) = run(&["tokens", "revoke", row["id"].as_str().unwrap()]);
    assert!(!ok, "revoking twice says so");

    // Disable and enable by slug.
    let (_, link, _) = run(&["tokens", "create", "--client", "acme"]);
    let secret = link.trim().rsplit('/').next().unwrap().to_owned();
    let r = b.client.get(&format!("/.auth/magic/{secret}"), &[]).await;
    let cookie = client_cookie(&r.cookie("portcullis_client").unwrap());
    let (ok, out, err) = run(&["clients", "disable", "acme"]);
    assert!(ok, "{err}");
    assert!(out.contains("1 session(s) ended"), "{out}");
    assert!(refused_within(&b.client, &cookie, Duration::from_secs(1)).await);
    let (ok, _, err) = run(&["clients", "enable", "nobody"]);
    assert!(!ok && err.contains("no client"), "{err}");
    let (ok, _, _) = run(&["clients", "enable", "acme"]);
    assert!(ok);
    let r = b.client.get(&format!("/.auth/magic/{secret}"), &[]).await;
    assert_eq!(r.status, 303);
}

/// A link's secret appears once, on `tokens create`'s standard output: never in
/// the gateway's log (access events say `magic/[redacted]`), at debug level too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_links_secret_never_reaches_the_log() {
    use crate::processes::{Replica, command, free_port};
    let db = TestDb::new(Backend::Sqlite).await;
    let upstream = TestUpstream::start().await;
    let listen = free_port();
    let log = db.dir.join("serve.log");
    // Operator commands work on an existing database only; `migrate` makes one.
    assert!(
        command(&db)
            .arg("migrate")
            .output()
            .unwrap()
            .status
            .success()
    );
    let add = command(&db)
        .args([
            "clients", "add", "--slug", "acme", "--name", "ACME", "--scope", "/portal/",
        ])
        .output()
        .unwrap();
    assert!(add.status.success());
    let out = command(&db)
        .args(["tokens", "create", "--client", "acme"])
        .env("PORTCULLIS_PUBLIC_URL", format!("http://{listen}"))
        .output()
        .unwrap();
    let link = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(link.matches("/.auth/magic/").count(), 1, "{link}");
    let secret = link.rsplit('/').next().unwrap().to_owned();
    let replica = Replica::logging_to(
        &db,
        upstream.addr,
        listen,
        &log,
        "debug,portcullis::access=info",
        |_| {},
    )
    .await;
    let r = replica
        .client
        .get(&link[link.find("/.auth").unwrap()..], &[])
        .await;
    assert_eq!(r.status, 303);
    let cookie = client_cookie(&r.cookie("portcullis_client").unwrap());
    assert_eq!(
        replica
            .client
            .get("/portal/", &[("cookie", &cookie)])
            .await
            .status,
        200
    );
    // A link one character off, and the real one after revocation.
    let mut wrong = secret.clone();
    wrong.replace_range(..1, if secret.starts_with('A') { "B" } else { "A" });
    let r = replica
        .client
        .get(&format!("/.auth/magic/{wrong}"), &[])
        .await;
    assert_eq!(r.status, 401);
    drop(replica);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("magic/[redacted]"),
        "access events are logged:\n{text}"
    );
    assert!(
        text.contains("auth.magic_link"),
        "audit lines are logged:\n{text}"
    );
    for leaked in [&secret[..], &secret[..12], &wrong[..]] {
        assert!(!text.contains(leaked), "the log leaks {leaked:?}");
    }
}

/// `[[clients]]` in the config file: created at start, kept as declared, their
/// links work; a bad entry is a clear error naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_declared_in_the_config_file() {
    use crate::processes::{Replica, command, free_port};
    let db = TestDb::new(Backend::Sqlite).await;
    let upstream = TestUpstream::start().await;
    let config = db.dir.join("portcullis.toml");
    std::fs::write(
        &config,
        "[[clients]]\nslug = \"acme\"\nname = \"ACME\"\nscope = [\"/portal/\"]\nroles = [\"viewer\"]\n",
    )
    .unwrap();
    let listen = free_port();
    let replica = Replica::start_with(&db, listen, |cmd| {
        cmd.arg("--config")
            .arg(&config)
            .env("PORTCULLIS_UPSTREAM", format!("http://{}", upstream.addr));
    })
    .await;
    let store = portcullis_store::Store::connect(&db.url).await.unwrap();
    let acme = store.client_by_slug("acme").await.unwrap().unwrap();
    assert_eq!(acme.scope().paths(), ["/portal/"]);
    assert_eq!(acme.role_list(), ["viewer"]);
    let (row, secret) = create_link(&store, "acme", None, None, &OsEntropy, now_ms())
        .await
        .unwrap();
    let r = replica
        .client
        .get(&format!("/.auth/magic/{}", secret.expose()), &[])
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert!(row.id.starts_with("act-"));
    drop(replica);

    std::fs::write(
        &config,
        "[[clients]]\nslug = \"Bad Slug\"\nname = \"x\"\nscope = \"/portal\"\n",
    )
    .unwrap();
    let out = command(&db)
        .arg("--config")
        .arg(&config)
        .args(["check-config", "--upstream", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("clients[0]") && text.contains("slug"),
        "{text}"
    );
    assert!(text.contains("must start and end with /"), "{text}");
}

/// `/verify` decides a client's requests like the proxy: its scope, and the
/// access-required page (redirect mode) for a browser without a session.
async fn forward_auth_holds_a_client_to_its_scope(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start_with(&db, |config| {
        config.trusted_proxies =
            portcullis_core::forwarded::TrustedProxies::parse(["127.0.0.1"]).unwrap();
    })
    .await;
    let (secret, _) = acme(&gw).await;
    gw.gateway.clients().reload(&gw.store).await.unwrap();
    let cookie = client_cookie(&follow(&gw.client, &secret, "").await.1.unwrap());
    let host = gw.addr.to_string();
    let ask = |uri: &'static str, cookie: Option<String>| {
        let (client, host) = (gw.client.clone(), host.clone());
        async move {
            let mut headers = vec![
                ("x-forwarded-uri", uri.to_owned()),
                ("x-forwarded-host", host),
                ("x-forwarded-for", "127.0.0.9".to_owned()),
                ("accept", "text/html".to_owned()),
            ];
            if let Some(cookie) = cookie {
                headers.push(("cookie", cookie));
            }
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            client.get("/.auth/verify?mode=redirect", &h).await
        }
    };
    let r = ask("/portal/x", Some(cookie.clone())).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-forwarded-user").as_deref(), Some("acme"));
    assert_eq!(ask("/admin/", Some(cookie.clone())).await.status, 403);
    assert_eq!(
        ask("/portal/%2e%2e/admin", Some(cookie.clone()))
            .await
            .status,
        403
    );
    let r = ask("/portal/x", None).await;
    assert_eq!(r.status, 401);
    assert!(r.text().contains("Access required"), "{}", r.text());
    // nginx's recipe sends a 401 to X-Auth-Login-Url: inside a scope, that is the
    // access-required page, not the sign-in form.
    let r = gw
        .client
        .get(
            "/.auth/verify",
            &[
                ("x-forwarded-uri", "/portal/x"),
                ("x-forwarded-host", &host),
                ("x-forwarded-for", "127.0.0.9"),
            ],
        )
        .await;
    assert_eq!(r.status, 401);
    let to = r.header("x-auth-login-url").unwrap();
    assert_eq!(to, format!("http://{}/.auth/access-required", gw.addr));
    let page = gw
        .client
        .get("/.auth/access-required", &[("accept", "text/html")])
        .await;
    assert_eq!(page.status, 401);
    assert!(page.text().contains("new link"), "{}", page.text());
    assert_eq!(ask("/elsewhere", None).await.status, 302);
    // From a caller that is no trusted proxy, the path it names decides nothing
    // for a client.
    let untrusted = TestGateway::start(&db).await;
    let r = untrusted
        .client
        .get(
            "/.auth/verify",
            &[("cookie", &cookie), ("x-forwarded-uri", "/portal/x")],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
}

/// A link followed at the very moment it is revoked (or its client disabled):
/// whichever commits first, no session from it is left valid.
async fn a_sign_in_racing_a_revocation_never_outlives_it(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let spec = ClientSpec::new("acme", "ACME", &["/portal/"], &[] as &[&str]).unwrap();
    create_client(&gw.store, &spec, false, &OsEntropy, now_ms())
        .await
        .unwrap();
    let template = || {
        let identity = portcullis_core::identity::Identity {
            subject: String::new(),
            name: String::new(),
            email: None,
            provider: portcullis_core::identity::IdentityProvider::Magic,
            roles: Vec::new(),
        };
        portcullis_core::session::new_session(identity, Default::default(), now_ms(), &OsEntropy)
            .unwrap()
    };
    for round in 0..20 {
        let disable = round % 2 == 1;
        let (secret, token_id) = link(&gw, "acme", None).await;
        let hash = portcullis_core::client::hash_presented(&secret).unwrap();
        let (store_a, store_b) = (gw.store.clone(), gw.store.clone());
        let sign_in = tokio::spawn(async move {
            store_a
                .magic_sign_in(portcullis_store::TokenRef::Hash(&hash), template())
                .await
                .unwrap()
        });
        let revoke = tokio::spawn(async move {
            if disable {
                store_b
                    .set_client_active("acme", false, "test", now_ms())
                    .await
                    .unwrap();
            } else {
                store_b
                    .revoke_access_token(&token_id, "test", now_ms())
                    .await
                    .unwrap();
            }
        });
        let (signed_in, _) = (sign_in.await.unwrap(), revoke.await.unwrap());
        if let Ok(session) = signed_in {
            // The row itself was revoked (and so announced on the bus), not only
            // read as revoked through its token.
            let filter = portcullis_store::SessionFilter {
                subject: Some("acme".into()),
                include_ended: true,
                ..Default::default()
            };
            let rows = gw.store.list_sessions(&filter, now_ms()).await.unwrap();
            let row = rows.iter().find(|s| s.id == session.id).unwrap();
            assert!(
                row.revoked_ms.is_some(),
                "round {round}: a live session survived"
            );
            let read = gw.store.session(&session.id).await.unwrap().unwrap();
            assert!(read.revoked_ms.is_some(), "round {round}");
        }
        if disable {
            gw.store
                .set_client_active("acme", true, "test", now_ms())
                .await
                .unwrap();
        }
    }
}
