//! The request pipeline from outside: which credential the upstream sees, request
//! ids, header spellings, and a refused cookie authenticated only once.

use crate::both_backends;
use crate::harness::*;
use crate::websocket::{connect, mint_ticket, upstream_view};

both_backends!(
    bearer_carriers_leave_the_upstreams_authorization_alone,
    gateway_query_tokens_never_reach_the_upstream,
    request_ids_and_header_spellings_on_both_paths,
    a_refused_cookie_is_authenticated_once,
);

/// A WebSocket authenticated by a ticket, a JEP 121 token or `?token=` carries the
/// client's own `Authorization` (Jupyter's token, say) to the upstream untouched;
/// only `Authorization: Bearer pct_…` that authenticated is removed.
async fn bearer_carriers_leave_the_upstreams_authorization_alone(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let (_, secret) = crate::api_tokens::create_token(&gw.store, "kernel-client", "user").await;
    let s = gw.login(USER).await;
    let own = ("authorization", "token jupyter-own");
    let marker = "v1.token.websocket.jupyter.org";

    let ticket = mint_ticket(&gw.client, &s).await;
    let subprotocol = format!("{marker}.{secret}, {marker}");
    // (carrier, path, headers)
    type Row<'a> = (&'a str, String, Vec<(&'a str, &'a str)>);
    let rows: Vec<Row> = vec![
        ("ticket", format!("/ws/echo?ticket={ticket}"), vec![own]),
        (
            "JEP 121 subprotocol",
            "/ws/echo".into(),
            vec![own, ("sec-websocket-protocol", subprotocol.as_str())],
        ),
        ("query token", format!("/ws/echo?token={secret}"), vec![own]),
    ];
    for (carrier, path, headers) in rows {
        let (mut ws, response) = connect(gw.addr, &path, &headers).await.unwrap();
        assert_eq!(response.status(), 101, "{carrier}");
        let seen = upstream_view(&mut ws).await;
        assert_eq!(
            seen["authorization"], "token jupyter-own",
            "{carrier}: {seen}"
        );
        assert!(seen["x-forwarded-user"].as_str().is_some(), "{carrier}");
    }
    // A bearer of ours beside a ticket is removed all the same.
    let ticket = mint_ticket(&gw.client, &s).await;
    let ours = format!("Bearer {secret}");
    let (mut ws, _) = connect(
        gw.addr,
        &format!("/ws/echo?ticket={ticket}"),
        &[
            ("authorization", &ours),
            // Identity headers spelled with `_` on an upgrade (SPEC 9).
            ("x_forwarded_user", "mallory"),
            ("X_Forwarded_Groups", "admin"),
        ],
    )
    .await
    .unwrap();
    let seen = upstream_view(&mut ws).await;
    assert!(seen.get("authorization").is_none(), "{seen}");
    assert!(seen.get("x_forwarded_user").is_none(), "{seen}");
    assert!(seen.get("x_forwarded_groups").is_none(), "{seen}");
    assert_eq!(seen["x-forwarded-user"], USER, "{seen}");
    // The carrier that was ours is removed.
    let bearer = format!("Bearer {secret}");
    let (mut ws, _) = connect(gw.addr, "/ws/echo", &[("authorization", &bearer)])
        .await
        .unwrap();
    let seen = upstream_view(&mut ws).await;
    assert!(seen.get("authorization").is_none(), "{seen}");
    // Every spelling of our bearer a server may accept is ours: it authenticates
    // and is removed, beside a ticket or on its own (SPEC 9).
    for spelling in [
        format!("Bearer\t{secret}"),
        format!("bearer   {secret}"),
        format!("BEARER {secret}\t"),
    ] {
        let ticket = mint_ticket(&gw.client, &s).await;
        let (mut ws, _) = connect(
            gw.addr,
            &format!("/ws/echo?ticket={ticket}"),
            &[("authorization", &spelling)],
        )
        .await
        .unwrap();
        let seen = upstream_view(&mut ws).await;
        assert!(seen.get("authorization").is_none(), "{spelling:?}: {seen}");
        let r = gw
            .client
            .get(
                "/echo",
                &[("authorization", &spelling), ("cookie", &s.cookie_header())],
            )
            .await;
        assert_eq!(r.status, 200, "{spelling:?}");
        let headers = &r.json()["headers"];
        assert!(
            headers.get("authorization").is_none(),
            "{spelling:?}: {headers}"
        );
        assert_eq!(
            headers["x-forwarded-user"],
            serde_json::json!(["kernel-client"])
        );
    }
}

/// `?token=pct_…` is no carrier of an ordinary request, and never reaches the
/// upstream on any path: fast path, general path (a body), bearer-authenticated.
async fn gateway_query_tokens_never_reach_the_upstream(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let (_, secret) = crate::api_tokens::create_token(&gw.store, "svc", "user").await;
    let s = gw.login(USER).await;
    let cookie = s.cookie_header();
    let bearer = format!("Bearer {secret}");
    let query = format!("/echo?a=1&token={secret}&b=2");
    // (path taken, method, headers)
    type Row<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);
    let rows: Vec<Row> = vec![
        ("fast path", "GET", vec![("cookie", cookie.as_str())]),
        (
            "general path",
            "POST",
            vec![
                ("cookie", cookie.as_str()),
                ("x-csrf-token", s.csrf.as_str()),
            ],
        ),
        ("bearer", "GET", vec![("authorization", bearer.as_str())]),
    ];
    for (path, method, headers) in rows {
        let response = gw.client.request(method, &query, &headers, "body").await;
        assert_eq!(response.status, 200, "{path}: {}", response.text());
        assert_eq!(response.json()["uri"], "/echo?a=1&b=2", "{path}");
    }
    // Alone it authenticates nothing.
    let alone = gw.client.get(&format!("/echo?token={secret}"), &[]).await;
    assert_eq!(alone.status, 401);
}

/// Every request gets a request id of the gateway's own, on the upstream request
/// and on the response (a client's is replaced), and client headers spelled with
/// `_` for `-` are identity headers too.
async fn request_ids_and_header_spellings_on_both_paths(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let s = gw.login(USER).await;
    let cookie = s.cookie_header();
    let spoofed = [
        ("x-request-id", "forged-id"),
        ("X_Forwarded_User", "mallory"),
        ("x_forwarded_groups", "admin"),
        ("X_FORWARDED_EMAIL", "mallory@evil"),
        ("x-forwarded-prefix", "/admin"),
    ];
    for (path, method) in [("fast path", "GET"), ("general path", "POST")] {
        let mut headers = vec![
            ("cookie", cookie.as_str()),
            ("x-csrf-token", s.csrf.as_str()),
        ];
        headers.extend(spoofed);
        let response = gw.client.request(method, "/echo", &headers, "x").await;
        assert_eq!(response.status, 200, "{path}");
        let seen = &response.json()["headers"];
        let id = response.header("x-request-id").expect("a request id");
        assert_ne!(id, "forged-id", "{path}");
        assert_eq!(
            seen["x-request-id"],
            serde_json::json!([id]),
            "{path}: {seen}"
        );
        for name in [
            "x_forwarded_user",
            "x_forwarded_groups",
            "x_forwarded_email",
            "x-forwarded-prefix",
        ] {
            assert!(
                seen.get(name).is_none(),
                "{path}: {name} reached the upstream: {seen}"
            );
        }
        assert_eq!(
            seen["x-forwarded-user"],
            serde_json::json!([USER]),
            "{path}"
        );
    }
    // Refusals and gateway endpoints carry one too.
    let refused = gw.client.get("/echo", &[]).await;
    assert_eq!(refused.status, 401);
    assert!(refused.header("x-request-id").is_some());
    assert_eq!(
        refused.header("www-authenticate").as_deref(),
        Some("Bearer realm=\"portcullis\"")
    );
    let me = gw.client.get("/.auth/me", &[("cookie", &cookie)]).await;
    assert!(me.header("x-request-id").is_some());
}

/// A cookie the fast path refuses is answered by the general path from the fast
/// path's outcome: one database read, not two (during an outage, one wait).
async fn a_refused_cookie_is_authenticated_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let s = gw.login(USER).await;
    gw.store
        .revoke_session(&s.id(), "test", now_ms())
        .await
        .unwrap();
    assert!(
        refused_within(
            &gw.client,
            &s.cookie_header(),
            std::time::Duration::from_secs(5)
        )
        .await
    );
    let cache = gw.gateway.session_cache();
    let before = cache.database_loads();
    let response = gw
        .client
        .get("/echo", &[("cookie", &s.cookie_header())])
        .await;
    assert_eq!(response.status, 401);
    assert_eq!(
        cache.database_loads() - before,
        1,
        "authenticated more than once"
    );
}
