//! The admin API (SPEC 8): every route refused without its permission, sessions
//! listed and ended (their WebSockets closed on another replica), API tokens,
//! audit pages, and offboarding.

use std::time::Duration;

use portcullis_core::identity::{Permission, RolePermissions};
use portcullis_gateway::GatewayConfig;
use portcullis_gateway::openapi::Access;

use crate::api_tokens::{create_owned_token, create_token};
use crate::both_backends;
use crate::harness::*;
use crate::websocket::{close_frame, connect_as};

both_backends!(
    every_admin_route_needs_its_permission,
    sessions_are_listed_and_ended_through_the_api,
    api_tokens_through_the_api,
    audit_events_page_with_filters,
    offboarded_identities_lose_sessions_and_tokens,
    audit_rows_past_their_retention_are_swept,
);

/// Audit rows older than the retention period are deleted by the sweeper, in
/// batches (more rows than one batch here), and younger ones are kept.
async fn audit_rows_past_their_retention_are_swept(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = portcullis_store::Store::connect(&db.url).await.unwrap();
    store.migrate().await.unwrap();
    let day = 86_400_000;
    let event = |at_ms: i64, n: usize| portcullis_store::AuditEvent {
        at_ms,
        actor: "cli".into(),
        action: "auth.key.rotate".into(),
        target: Some(format!("row-{n}")),
        outcome: "success".into(),
        reason: None,
        ip: None,
        count: 1,
    };
    for n in 0..700 {
        store
            .record_audit(&event(now_ms() - 2 * day, n))
            .await
            .unwrap();
    }
    for n in 0..3 {
        store
            .record_audit(&event(now_ms() - day / 2, n))
            .await
            .unwrap();
    }
    let gw =
        TestGateway::start_with(&db, |c| c.audit_retention = Duration::from_secs(86_400)).await;
    let older = portcullis_store::AuditFilter {
        until_ms: Some(now_ms() - day),
        limit: 1000,
        ..Default::default()
    };
    let swept = eventually(Duration::from_secs(10), || async {
        gw.store.audit_events(&older).await.unwrap().is_empty()
    })
    .await;
    assert!(swept.is_some(), "rows past the retention are deleted");
    let kept = gw
        .store
        .audit_events(&portcullis_store::AuditFilter {
            action: Some("auth.key.rotate".into()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(kept.len(), 3, "younger rows are kept");
}

/// Rows beyond the documented ones: a further permission a route needs once it
/// knows its target (method, path, permissions, body).
const CONDITIONAL: &[(&str, &str, &[Permission], &str)] = &[
    (
        "GET",
        "/.auth/api/v1/sessions?all=true",
        &[Permission::SessionList, Permission::SessionListAll],
        "",
    ),
    (
        "POST",
        "/.auth/api/v1/sessions/revoke",
        &[Permission::SessionRevoke, Permission::SessionListAll],
        r#"{"user": "someone-else"}"#,
    ),
    (
        "POST",
        "/.auth/api/v1/sessions/revoke",
        &[Permission::SessionRevoke, Permission::TokenRevoke],
        r#"{"api_tokens": true}"#,
    ),
];

/// Every permission-guarded route as the OpenAPI table documents it (so the
/// document, the handlers and this test agree), then the conditional rows.
fn routes() -> Vec<(String, String, Vec<Permission>, String)> {
    let mut rows = Vec::new();
    for endpoint in portcullis_gateway::openapi::ENDPOINTS {
        for op in endpoint.operations {
            if let Access::Admin(needs, mutating) = op.access {
                let body = if mutating { "{}" } else { "" };
                rows.push((
                    op.method.to_ascii_uppercase(),
                    format!(
                        "/.auth{}",
                        endpoint
                            .path
                            .replace("{id}", "nope-x")
                            .replace("{slug}", "nope-x")
                    ),
                    needs.to_vec(),
                    body.to_owned(),
                ));
            }
        }
    }
    assert!(rows.len() >= 20, "{}", rows.len());
    for (method, path, needs, body) in CONDITIONAL {
        rows.push((
            method.to_string(),
            path.to_string(),
            needs.to_vec(),
            body.to_string(),
        ));
    }
    rows
}

/// One role per permission (`only:<name>`), so a token can hold exactly one.
fn one_role_per_permission(config: &mut GatewayConfig) {
    let grants: Vec<(String, Vec<String>)> = Permission::ALL
        .iter()
        .map(|p| (format!("only:{}", p.name()), vec![p.name().to_owned()]))
        .collect();
    config.role_permissions =
        RolePermissions::from_config(grants.iter().map(|(r, g)| (r.as_str(), g.as_slice())))
            .unwrap();
}

fn roles_for(permissions: impl Iterator<Item = Permission>) -> String {
    permissions
        .map(|p| format!("only:{}", p.name()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Refusals of `permission` on record.
async fn refusals(gw: &TestGateway, permission: Permission) -> usize {
    gw.audit("auth.permission.denied")
        .await
        .iter()
        .filter(|e| e.outcome == "failure" && e.reason.as_deref() == Some(permission.name()))
        .count()
}

/// Each route: 401 without a credential; 403 when any one of its permissions is
/// missing (all the others held), the refusal audited; and past every permission
/// check (no refusal on record) with exactly its own.
async fn every_admin_route_needs_its_permission(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start_with(&db, one_role_per_permission).await;
    // A session with every permission, so "tokens cannot mint tokens" is not what
    // answers for the token-creation row.
    for (method, path, needs, body) in routes() {
        let (method, path, needs, body) = (
            method.as_str(),
            path.as_str(),
            needs.as_slice(),
            body.as_str(),
        );
        let r = gw.client.request(method, path, &[], body.to_string()).await;
        assert_eq!(r.status, 401, "{method} {path} without a credential");

        for missing in needs {
            let before = refusals(&gw, *missing).await;
            let roles = roles_for(Permission::ALL.into_iter().filter(|p| p != missing));
            let (_, without) = create_token(&gw.store, "probe", &roles).await;
            let bearer = format!("Bearer {without}");
            let r = gw
                .client
                .request(
                    method,
                    path,
                    &[("authorization", &bearer)],
                    body.to_string(),
                )
                .await;
            assert_eq!(
                r.status,
                403,
                "{method} {path} without {}: {}",
                missing.name(),
                r.text()
            );
            assert_eq!(
                refusals(&gw, *missing).await,
                before + 1,
                "{method} {path} audited"
            );
        }

        let mut before = Vec::new();
        for p in needs {
            before.push(refusals(&gw, *p).await);
        }
        let (_, with) = create_token(&gw.store, "probe", &roles_for(needs.iter().copied())).await;
        let bearer = format!("Bearer {with}");
        let r = gw
            .client
            .request(
                method,
                path,
                &[
                    ("authorization", &bearer),
                    ("content-type", "application/json"),
                ],
                body.to_string(),
            )
            .await;
        assert_ne!(r.status, 401, "{method} {path}");
        for (p, before) in needs.iter().zip(before) {
            assert_eq!(
                refusals(&gw, *p).await,
                before,
                "{method} {path} with {}: {}",
                p.name(),
                r.text()
            );
        }
    }
    // The built-in user role lists and ends only its own sessions.
    let bob = gw.login(USER).await;
    let own = gw
        .client
        .get(
            "/.auth/api/v1/sessions",
            &[("cookie", &bob.cookie_header())],
        )
        .await;
    assert_eq!(own.status, 200, "{}", own.text());
    for path in [
        "/.auth/api/v1/sessions?all=true",
        "/.auth/api/v1/sessions?user=alice",
        "/.auth/api/v1/audit",
        "/.auth/api/v1/api-tokens",
    ] {
        let r = gw
            .client
            .get(path, &[("cookie", &bob.cookie_header())])
            .await;
        assert_eq!(r.status, 403, "{path}");
    }
}

fn csrf_headers(s: &Session) -> [(&'static str, String); 3] {
    [
        ("cookie", s.cookie_header()),
        ("x-csrf-token", s.csrf.clone()),
        ("content-type", "application/json".to_owned()),
    ]
}

fn refs<'a>(headers: &'a [(&'static str, String)]) -> Vec<(&'a str, &'a str)> {
    headers.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

async fn sessions_are_listed_and_ended_through_the_api(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let replica = TestGateway::start(&db).await;
    let alice = gw.login(ADMIN).await;
    let bob = gw.login(USER).await;
    let bob_phone = gw.login(USER).await;
    // Bob's live WebSocket is on the other replica.
    let mut ws = connect_as(replica.addr, &bob).await;

    // Bob sees his own two sessions, the current one marked.
    let own = gw
        .client
        .get(
            "/.auth/api/v1/sessions",
            &[("cookie", &bob.cookie_header())],
        )
        .await
        .json();
    let list = own["sessions"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{own}");
    assert!(list.iter().all(|s| s["user"] == USER));
    assert!(
        list.iter()
            .any(|s| s["id"] == bob.id() && s["current"] == true)
    );

    // A token stands for its owner: Bob's own token sees his sessions; a service
    // token named like him owns none.
    for (provider, count) in [(Some("basic"), 2), (None, 0)] {
        let (id, secret) = create_owned_token(&gw.store, USER, "user", provider, None).await;
        let seen = gw
            .client
            .get(
                "/.auth/api/v1/sessions",
                &[("authorization", &format!("Bearer {secret}"))],
            )
            .await
            .json();
        assert_eq!(
            seen["sessions"].as_array().map(Vec::len),
            Some(count),
            "{provider:?}: {seen}"
        );
        gw.store.revoke_api_token(&id, now_ms()).await.unwrap();
    }

    // Alice filters everyone's by user and provider.
    let all = gw
        .client
        .get(
            "/.auth/api/v1/sessions?all=true&user=bob&provider=basic",
            &[("cookie", &alice.cookie_header())],
        )
        .await
        .json();
    assert_eq!(all["sessions"].as_array().unwrap().len(), 2, "{all}");
    let bad = gw
        .client
        .get(
            "/.auth/api/v1/sessions?everything=1",
            &[("cookie", &alice.cookie_header())],
        )
        .await;
    assert_eq!(bad.status, 400);

    // Bob cannot end Alice's session; without the CSRF token he cannot end his own.
    let h = csrf_headers(&bob);
    let r = gw
        .client
        .request(
            "DELETE",
            &format!("/.auth/api/v1/sessions/{}", alice.id()),
            &refs(&h),
            "",
        )
        .await;
    assert_eq!(r.status, 403);
    let r = gw
        .client
        .request(
            "DELETE",
            &format!("/.auth/api/v1/sessions/{}", bob_phone.id()),
            &[("cookie", &bob.cookie_header())],
            "",
        )
        .await;
    assert_eq!(r.status, 403, "CSRF: {}", r.text());

    // Alice ends Bob's session: his WebSocket on the other replica closes within 1 s.
    let h = csrf_headers(&alice);
    let started = std::time::Instant::now();
    let r = gw
        .client
        .request(
            "DELETE",
            &format!("/.auth/api/v1/sessions/{}", bob.id()),
            &refs(&h),
            "",
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let frame = close_frame(&mut ws, Duration::from_secs(1)).await;
    assert_eq!(frame.map(|f| u16::from(f.code)), Some(4401));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(
        refused_within(
            &replica.client,
            &bob.cookie_header(),
            Duration::from_secs(1)
        )
        .await
    );
    let again = gw
        .client
        .request(
            "DELETE",
            &format!("/.auth/api/v1/sessions/{}", bob.id()),
            &refs(&h),
            "",
        )
        .await;
    assert_eq!(again.status, 409);
    let audited = gw.audit("auth.session.revoke").await;
    assert!(
        audited
            .iter()
            .any(|e| e.actor == ADMIN && e.target.as_deref() == Some(bob.id().as_str()))
    );

    // Bob ends all his other sessions, keeping the current one.
    let bob2 = gw.login(USER).await;
    let h = csrf_headers(&bob2);
    let r = gw
        .client
        .request(
            "POST",
            "/.auth/api/v1/sessions/revoke",
            &refs(&h),
            r#"{"keep_current": true}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["revoked_sessions"],
        serde_json::json!([bob_phone.id()])
    );
    assert_eq!(
        gw.client
            .get("/echo", &[("cookie", &bob2.cookie_header())])
            .await
            .status,
        200
    );

    // Alice ends everything of Bob's, API tokens included.
    let (token_id, secret) = create_owned_token(&gw.store, USER, "user", Some("basic"), None).await;
    let h = csrf_headers(&alice);
    let r = gw
        .client
        .request(
            "POST",
            "/.auth/api/v1/sessions/revoke",
            &refs(&h),
            r#"{"user": "bob", "api_tokens": true}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json();
    assert_eq!(answer["revoked_sessions"], serde_json::json!([bob2.id()]));
    assert_eq!(answer["revoked_api_tokens"], serde_json::json!([token_id]));
    assert!(
        header_refused_within(
            &replica.client,
            "authorization",
            &format!("Bearer {secret}"),
            Duration::from_secs(1)
        )
        .await
    );
}

async fn api_tokens_through_the_api(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let alice = gw.login(ADMIN).await;
    let h = csrf_headers(&alice);
    // Without the CSRF token a cookie cannot mint a token.
    let r = gw
        .client
        .request(
            "POST",
            "/.auth/api/v1/api-tokens",
            &[("cookie", &alice.cookie_header())],
            "{}",
        )
        .await;
    assert_eq!(r.status, 403);
    for (body, status) in [
        (r#"{"ttl_seconds": 5}"#, 400),
        (r#"{"ttl_seconds": 99999999999}"#, 400),
        (r#"{"owner": "bob"}"#, 400),
        ("not json", 400),
    ] {
        let r = gw
            .client
            .request("POST", "/.auth/api/v1/api-tokens", &refs(&h), body)
            .await;
        assert_eq!(r.status, status, "{body}: {}", r.text());
    }
    let r = gw
        .client
        .request(
            "POST",
            "/.auth/api/v1/api-tokens",
            &refs(&h),
            r#"{"label": "deploy", "ttl_seconds": 3600}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    let created = r.json();
    let secret = created["token"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["user"], ADMIN);
    assert_eq!(created["provider"], "basic");
    assert!(created["expires_at"].is_string());
    let bearer = format!("Bearer {secret}");
    let me = gw
        .client
        .get("/.auth/me", &[("authorization", &bearer)])
        .await;
    assert_eq!(me.status, 200);
    assert_eq!(me.json()["sub"], ADMIN);
    // A token cannot mint tokens.
    let r = gw
        .client
        .request(
            "POST",
            "/.auth/api/v1/api-tokens",
            &[("authorization", &bearer)],
            "{}",
        )
        .await;
    assert_eq!(r.status, 403);
    // Listed without its secret.
    let list = gw
        .client
        .get(
            "/.auth/api/v1/api-tokens?user=alice",
            &[("cookie", &alice.cookie_header())],
        )
        .await;
    assert!(!list.text().contains(&secret));
    assert!(
        list.json()["api_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == id && t["status"] == "live")
    );
    // Expiry: an hour later it is refused.
    gw.clock.advance(3_600_001);
    assert_eq!(
        gw.client
            .get("/echo", &[("authorization", &bearer)])
            .await
            .status,
        401
    );
    gw.clock.advance(-3_600_001);
    assert_eq!(
        gw.client
            .get("/echo", &[("authorization", &bearer)])
            .await
            .status,
        200
    );
    // Revoked.
    let r = gw
        .client
        .request(
            "DELETE",
            &format!("/.auth/api/v1/api-tokens/{id}"),
            &refs(&h),
            "",
        )
        .await;
    assert_eq!(r.status, 204);
    assert!(
        header_refused_within(&gw.client, "authorization", &bearer, Duration::from_secs(1)).await
    );
    let r = gw
        .client
        .request(
            "DELETE",
            &format!("/.auth/api/v1/api-tokens/{id}"),
            &refs(&h),
            "",
        )
        .await;
    assert_eq!(r.status, 404);
    for action in ["auth.api_token.create", "auth.api_token.revoke"] {
        let events = gw.audit(action).await;
        assert!(
            events
                .iter()
                .any(|e| e.target.as_deref() == Some(id.as_str())),
            "{action}"
        );
        assert!(events.iter().all(|e| !format!("{e:?}").contains(&secret)));
    }
}

async fn audit_events_page_with_filters(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let alice = gw.login(ADMIN).await;
    for _ in 0..5 {
        let r = json_login(&gw.client, "nobody", "x", None).await;
        assert_eq!(r.status, 401);
    }
    let cookie = alice.cookie_header();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => {
                format!("/.auth/api/v1/audit?action=auth.login&outcome=failure&limit=2&cursor={c}")
            }
            None => "/.auth/api/v1/audit?action=auth.login&outcome=failure&limit=2".to_owned(),
        };
        let page = gw.client.get(&path, &[("cookie", &cookie)]).await;
        assert_eq!(page.status, 200, "{}", page.text());
        let page = page.json();
        pages += 1;
        for e in page["events"].as_array().unwrap() {
            assert_eq!(e["action"], "auth.login");
            assert_eq!(e["outcome"], "failure");
            seen.push(e["id"].as_i64().unwrap());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 5);
    let mut sorted = seen.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    sorted.dedup();
    assert_eq!(sorted, seen, "newest first, no repeats");
    // Time range and actor filters.
    let now = now_ms();
    let later = gw
        .client
        .get(
            &format!("/.auth/api/v1/audit?since_ms={}", now + 60_000),
            &[("cookie", &cookie)],
        )
        .await
        .json();
    assert_eq!(later["events"].as_array().unwrap().len(), 0);
    let mine = gw
        .client
        .get(
            "/.auth/api/v1/audit?actor=alice&action=auth.login",
            &[("cookie", &cookie)],
        )
        .await
        .json();
    assert!(!mine["events"].as_array().unwrap().is_empty());
    for bad in [
        "cursor=abc",
        "limit=0",
        "limit=5000",
        "outcome=maybe",
        "since_ms=soon",
        "x=1",
    ] {
        let r = gw
            .client
            .get(
                &format!("/.auth/api/v1/audit?{bad}"),
                &[("cookie", &cookie)],
            )
            .await;
        assert_eq!(r.status, 400, "{bad}");
        // Authentication and permission come first: an anonymous caller learns
        // nothing about what the route accepts.
        let r = gw
            .client
            .get(&format!("/.auth/api/v1/audit?{bad}"), &[])
            .await;
        assert_eq!(r.status, 401, "{bad}");
    }
    // The sessions page's forms are cookie mutations: no CSRF token, no change.
    let bob = gw.login(USER).await;
    let other = gw.login(USER).await;
    for (path, body) in [
        ("/.auth/sessions/end", format!("session_id={}", other.id())),
        ("/.auth/sessions/end-others", String::new()),
    ] {
        let r = gw
            .client
            .request(
                "POST",
                path,
                &[
                    ("cookie", &bob.cookie_header()),
                    ("content-type", "application/x-www-form-urlencoded"),
                ],
                body,
            )
            .await;
        assert_eq!(r.status, 403, "{path}");
    }
    assert_eq!(
        gw.client
            .get("/echo", &[("cookie", &other.cookie_header())])
            .await
            .status,
        200
    );
}

/// A basic user removed from the configuration (a gateway started without them)
/// and a token whose owner's provider is gone authenticate no more; a service
/// token (no owner) keeps working.
async fn offboarded_identities_lose_sessions_and_tokens(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let bob = gw.login(USER).await;
    let (_, bob_token) = create_owned_token(&gw.store, USER, "user", Some("basic"), None).await;
    let (_, gone_token) =
        create_owned_token(&gw.store, "ada", "user", Some("retired-idp"), None).await;
    let (_, service) = create_owned_token(&gw.store, "ci", "user", None, None).await;
    // A token made before tokens recorded their owner: a gateway started while
    // Bob is configured adopts it as his.
    let (_, legacy) = create_owned_token(&gw.store, USER, "user", None, None).await;
    let _adopting = TestGateway::start(&db).await;
    let bearer = |s: &str| format!("Bearer {s}");
    assert_eq!(
        gw.client
            .get("/echo", &[("cookie", &bob.cookie_header())])
            .await
            .status,
        200
    );
    assert_eq!(
        gw.client
            .get("/echo", &[("authorization", &bearer(&bob_token))])
            .await
            .status,
        200
    );

    // Bob is removed from AUTH_BASIC_USERS: the restarted gateway refuses him.
    let restarted = TestGateway::start_with(&db, |config| {
        let hash = cheap_hash(PASSWORD);
        config.basic_users =
            portcullis_core::basic::BasicUsers::parse(&format!("{ADMIN}:{hash}"), ADMIN).0;
    })
    .await;
    // (what, header, value, status)
    for (what, name, value, status) in [
        ("removed user's cookie", "cookie", bob.cookie_header(), 401),
        (
            "removed user's token",
            "authorization",
            bearer(&bob_token),
            401,
        ),
        (
            "removed provider's token",
            "authorization",
            bearer(&gone_token),
            401,
        ),
        (
            "removed user's older token",
            "authorization",
            bearer(&legacy),
            401,
        ),
        ("service token", "authorization", bearer(&service), 200),
    ] {
        let r = restarted.client.get("/echo", &[(name, &value)]).await;
        assert_eq!(r.status, status, "{what}: {}", r.text());
    }
    // Their WebSocket tickets are refused too.
    let r = restarted
        .client
        .request(
            "POST",
            "/.auth/ws-ticket",
            &[
                ("cookie", &bob.cookie_header()),
                ("x-csrf-token", &bob.csrf),
            ],
            "",
        )
        .await;
    assert_eq!(r.status, 401);
}
