//! Route rules (SPEC 8) from outside: the decision is made on the path the
//! upstream receives, under every reading an upstream may make of it, for plain
//! requests (fast path and general path) and WebSocket upgrades alike.

use portcullis_core::routes::{RouteRules, RouteSpec};
use portcullis_gateway::GatewayConfig;

use crate::both_backends;
use crate::harness::*;
use crate::websocket::{connect, upstream_view};

both_backends!(
    route_rules_decide_on_the_path_the_upstream_receives,
    anonymous_routes_forward_no_credential_and_no_identity,
    methods_and_method_overrides_obey_the_rules,
    websocket_upgrades_obey_route_rules,
);

fn rule(prefix: &str, allow: &[&str]) -> RouteSpec {
    RouteSpec {
        path_prefix: prefix.into(),
        allow: allow.iter().map(|s| (*s).to_owned()).collect(),
        ..RouteSpec::default()
    }
}

fn with_rules(specs: Vec<RouteSpec>) -> impl FnOnce(&mut GatewayConfig) {
    move |config| {
        config.routes = RouteRules::from_specs(&specs).unwrap();
    }
}

fn rules() -> Vec<RouteSpec> {
    vec![
        rule("/admin/", &["admin"]),
        RouteSpec {
            methods: Some(vec!["DELETE".into()]),
            ..rule("/records/", &["admin"])
        },
        rule("/public/", &["anonymous"]),
    ]
}

/// Each spelling of `/admin/…` is refused to a user and reaches the upstream, for
/// an admin, as the one canonical path the rule was decided on.
async fn route_rules_decide_on_the_path_the_upstream_receives(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start_with(&db, with_rules(rules())).await;
    let admin = gw.login(ADMIN).await.cookie_header();
    let user = gw.login(USER).await.cookie_header();
    // (request path, what the upstream receives)
    for (path, upstream) in [
        ("/admin/x", "/admin/x"),
        ("/admin", "/admin"),
        ("/x/../admin/x", "/admin/x"),
        ("/%2e%2e/admin/x", "/admin/x"),
        ("/public/%2E%2E/admin/x", "/admin/x"),
        ("//admin/x", "/admin/x"),
        ("/%61dmin/x", "/admin/x"),
        // Upper-case prefix: a case-insensitive upstream serves /admin/.
        ("/ADMIN/x", "/ADMIN/x"),
        // Encoded slash: stays encoded, and is also read decoded.
        ("/admin%2Fx", "/admin%2Fx"),
        ("/public%2F..%2Fadmin/x", "/public%2F..%2Fadmin/x"),
        // Segment parameters (servlet containers drop them).
        ("/public/..;/admin/x", "/public/..;/admin/x"),
        ("/admin;a=1/x", "/admin;a=1/x"),
        // Trailing dots (Windows drops them).
        ("/admin./x", "/admin./x"),
    ] {
        let refused = gw.client.get(path, &[("cookie", &user)]).await;
        assert_eq!(refused.status, 403, "{path}: {}", refused.text());
        assert_eq!(refused.json()["error"], "forbidden", "{path}");
        let passed = gw.client.get(path, &[("cookie", &admin)]).await;
        assert_eq!(passed.status, 200, "{path}: {}", passed.text());
        let seen = passed.json();
        assert_eq!(seen["uri"], upstream, "{path}");
        assert_eq!(seen["headers"]["x-forwarded-user"][0], ADMIN, "{path}");
        // Unauthenticated: the usual 401, never the upstream.
        let anonymous = gw.client.get(path, &[]).await;
        assert_eq!(anonymous.status, 401, "{path}");
    }
    // Other paths need any signed-in identity.
    assert_eq!(
        gw.client.get("/other", &[("cookie", &user)]).await.status,
        200
    );
    assert_eq!(gw.client.get("/other", &[]).await.status, 401);
    // A browser refused by a rule gets a page; unauthenticated, the sign-in redirect.
    let html = [("accept", "text/html")];
    let page = gw
        .client
        .get("/admin/x", &[("cookie", &user), html[0]])
        .await;
    assert_eq!(page.status, 403);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html"),
        "{:?}",
        page.header("content-type")
    );
    let login = gw.client.get("/admin/x", &html).await;
    assert_eq!(login.status, 302);
    // Paths that cannot be forwarded faithfully.
    for path in ["/a%zz", "/a%2", "/x/../.auth/login"] {
        let bad = gw.client.get(path, &[("cookie", &admin)]).await;
        assert_eq!(bad.status, 400, "{path}: {}", bad.text());
    }
}

/// An anonymous route is proxied without authentication: no identity headers (a
/// client's spoofed ones removed), no gateway cookie, no bearer of ours. A path
/// that leaves the anonymous prefix under any reading is not anonymous.
async fn anonymous_routes_forward_no_credential_and_no_identity(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start_with(&db, with_rules(rules())).await;
    let user = gw.login(USER).await.cookie_header();
    let (_, token) = crate::api_tokens::create_token(&gw.store, "ci", "user").await;
    let bearer = format!("Bearer {token}");
    let cookie_and_own = format!("{user}; app=1");
    for (name, headers) in [
        ("nobody", vec![("x-forwarded-user", "mallory")]),
        (
            "a signed-in user",
            vec![
                ("cookie", cookie_and_own.as_str()),
                ("X_Forwarded_User", "mallory"),
            ],
        ),
        ("a bearer", vec![("authorization", bearer.as_str())]),
        // A broken cookie does not matter where none is needed.
        (
            "a forged cookie",
            vec![("cookie", "portcullis_session=v1.x.y.z")],
        ),
    ] {
        let r = gw.client.get("/public/app.js?token=abc", &headers).await;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let seen = r.json();
        assert_eq!(seen["uri"], "/public/app.js?token=abc", "{name}");
        let upstream_headers = seen["headers"].as_object().unwrap();
        for absent in [
            "x-forwarded-user",
            "x-forwarded-email",
            "x-forwarded-groups",
            "x-forwarded-preferred-username",
            "x_forwarded_user",
            "authorization",
        ] {
            assert!(
                !upstream_headers.contains_key(absent),
                "{name}: {absent} in {seen}"
            );
        }
        if let Some(cookie) = upstream_headers.get("cookie") {
            assert_eq!(cookie[0], "app=1", "{name}");
        }
        assert!(upstream_headers.contains_key("x-request-id"), "{name}");
    }
    // Leaving the anonymous prefix under some reading needs a sign-in.
    for path in [
        "/public/../private",
        "/public%2F..%2Fprivate",
        "/PUBLIC/app.js",
        "/public/..;/private",
    ] {
        assert_eq!(gw.client.get(path, &[]).await.status, 401, "{path}");
    }
}

async fn methods_and_method_overrides_obey_the_rules(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start_with(&db, with_rules(rules())).await;
    let user = gw.login(USER).await;
    let cookie = user.cookie_header();
    // (method, path, extra header, status for a user)
    for (method, path, extra, status) in [
        ("GET", "/records/7", None, 200),
        ("POST", "/records/7", None, 200),
        ("DELETE", "/records/7", None, 403),
        ("delete", "/records/7", None, 403),
        (
            "POST",
            "/records/7",
            Some(("x-http-method-override", "DELETE")),
            403,
        ),
        ("POST", "/records/7", Some(("X-HTTP-Method", "delete")), 403),
        (
            "POST",
            "/records/7",
            Some(("x-method-override", "DELETE")),
            403,
        ),
        // Spelled with `_`, as Rack, PHP and WSGI servers still read it.
        (
            "POST",
            "/records/7",
            Some(("X_HTTP_Method_Override", "DELETE")),
            403,
        ),
        // The query parameter of Rails, Laravel, Symfony and Express.
        ("POST", "/records/7?_method=DELETE", None, 403),
        ("POST", "/records/7?a=1&%5Fmethod=delete", None, 403),
        ("GET", "/records/7?_method=DELETE", None, 403),
        (
            "GET",
            "/records/7",
            Some(("x-http-method-override", "GET")),
            200,
        ),
        ("GET", "/records/7?method=DELETE", None, 200),
    ] {
        let mut headers = vec![
            ("cookie", cookie.as_str()),
            ("x-csrf-token", user.csrf.as_str()),
        ];
        headers.extend(extra);
        let r = gw
            .client
            .request(method, path, &headers, String::new())
            .await;
        assert_eq!(r.status, status, "{method} {path} {extra:?}: {}", r.text());
    }
}

/// Upgrades are decided like plain requests: refused by a rule (403), allowed for
/// the role, and anonymous ones relayed without identity headers.
async fn websocket_upgrades_obey_route_rules(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start_with(&db, with_rules(vec![rule("/ws/", &["admin"])])).await;
    let origin = format!("http://{}", gw.addr);
    let user = gw.login(USER).await.cookie_header();
    let admin = gw.login(ADMIN).await.cookie_header();
    for path in ["/ws/echo", "/x/../ws/echo", "/WS/echo", "//ws/echo"] {
        let refused = connect(gw.addr, path, &[("cookie", &user), ("origin", &origin)]).await;
        match refused {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 403, "{path}");
            }
            other => panic!(
                "{path}: expected 403, got {:?}",
                other.map(|(_, r)| r.status())
            ),
        }
    }
    let (mut ws, response) = connect(
        gw.addr,
        "/x/../ws/echo",
        &[("cookie", &admin), ("origin", &origin)],
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 101);
    let seen = upstream_view(&mut ws).await;
    assert_eq!(seen[":uri"], "/ws/echo");
    assert_eq!(seen["x-forwarded-user"], ADMIN);

    let open = TestGateway::start_with(&db, with_rules(vec![rule("/ws/", &["anonymous"])])).await;
    let (mut ws, response) = connect(
        open.addr,
        "/ws/echo",
        &[("x-forwarded-user", "mallory"), ("cookie", &user)],
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 101);
    let seen = upstream_view(&mut ws).await;
    assert!(seen.get("x-forwarded-user").is_none(), "{seen}");
    assert!(seen.get("cookie").is_none(), "{seen}");
}
