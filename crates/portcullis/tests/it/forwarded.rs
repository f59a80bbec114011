//! Trusted proxies (`--trusted-proxies`): forwarding headers are believed from
//! them only; the client address they give drives the upstream's
//! `X-Forwarded-For`, login throttling and the audit log, and never satisfies the
//! internal credential's loopback rule.

use portcullis_core::forwarded::TrustedProxies;
use portcullis_core::routes::{RouteRules, RouteSpec};

use crate::both_backends;
use crate::harness::*;

both_backends!(
    forwarding_headers_from_untrusted_peers_are_ignored,
    a_trusted_proxy_names_the_client,
    verify_decides_the_original_request,
    refusals_a_browser_can_read_and_aliases_that_sign_in,
    traefik_forward_auth_protocol,
);

async fn failed_login(gw: &TestGateway, forwarded_for: &str) -> u16 {
    gw.client
        .request(
            "POST",
            "/.auth/login",
            &[
                ("content-type", "application/json"),
                ("x-forwarded-for", forwarded_for),
            ],
            r#"{"username":"nobody","password":"x"}"#,
        )
        .await
        .status
}

/// The default: nobody is trusted. A spoofed `X-Forwarded-For` reaches neither the
/// upstream nor the throttling key; a client's `X-Request-Id` is replaced.
async fn forwarding_headers_from_untrusted_peers_are_ignored(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start_with(&db, |c| {
        c.login_limits.per_ip_per_minute = 3;
    })
    .await;
    let s = gw.login(USER).await;
    for path in ["/echo", "/upload-nothing?x=1"] {
        let r = gw
            .client
            .get(
                path,
                &[
                    ("cookie", &s.cookie_header()),
                    ("x-forwarded-for", "198.51.100.7"),
                    ("x-request-id", "forged-1"),
                ],
            )
            .await;
        let seen = r.json();
        assert_eq!(
            seen["headers"]["x-forwarded-for"],
            serde_json::json!(["127.0.0.1"]),
            "{path}"
        );
        assert_ne!(seen["headers"]["x-request-id"][0], "forged-1", "{path}");
    }
    // Rotating the spoofed address does not reset the per-IP limit.
    let statuses: Vec<u16> = futures_util::future::join_all(
        ["1.1.1.1", "2.2.2.2", "3.3.3.3", "4.4.4.4"]
            .iter()
            .map(|ip| failed_login(&gw, ip)),
    )
    .await;
    assert!(statuses.contains(&429), "{statuses:?}");
    let ips: Vec<String> = gw
        .audit("auth.login")
        .await
        .iter()
        .filter_map(|e| e.ip.clone())
        .collect();
    assert!(ips.iter().all(|ip| ip == "127.0.0.1"), "{ips:?}");
}

/// Behind a trusted proxy (here: loopback), the rightmost untrusted address is the
/// client: the upstream sees it, the audit log records it, throttling counts per
/// client, the proxy's request id is kept, and a forwarded address never counts
/// as loopback for the internal credential.
async fn a_trusted_proxy_names_the_client(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start_with(&db, |c| {
        c.login_limits.per_ip_per_minute = 2;
        c.trusted_proxies = TrustedProxies::parse(["127.0.0.1", "::1"]).unwrap();
    })
    .await;
    let s = gw.login(USER).await;
    let r = gw
        .client
        .get(
            "/echo",
            &[
                ("cookie", &s.cookie_header()),
                ("x-forwarded-for", "6.6.6.6, 198.51.100.7"),
                ("x-request-id", "edge-42"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    assert_eq!(
        seen["headers"]["x-forwarded-for"],
        serde_json::json!(["198.51.100.7"])
    );
    assert_eq!(
        seen["headers"]["x-request-id"],
        serde_json::json!(["edge-42"])
    );
    assert_eq!(r.header("x-request-id").as_deref(), Some("edge-42"));

    // Throttling per client: one client's failures do not lock out another.
    for _ in 0..2 {
        assert_eq!(failed_login(&gw, "203.0.113.1").await, 401);
    }
    assert_eq!(failed_login(&gw, "203.0.113.1").await, 429);
    assert_eq!(failed_login(&gw, "203.0.113.2").await, 401);
    let ips: Vec<String> = gw
        .audit("auth.login")
        .await
        .iter()
        .filter(|e| e.outcome == "failure")
        .filter_map(|e| e.ip.clone())
        .collect();
    assert!(ips.iter().any(|ip| ip == "203.0.113.2"), "{ips:?}");
    assert!(!ips.iter().any(|ip| ip == "127.0.0.1"), "{ips:?}");

    // The internal credential: loopback directly, never through the proxy.
    let credential = gw.gateway.internal_credential().await.unwrap();
    let bearer = format!("Bearer {}", credential.expose());
    assert_eq!(
        gw.client
            .get("/echo", &[("authorization", &bearer)])
            .await
            .status,
        200
    );
    for forwarded in ["127.0.0.1", "198.51.100.7", "garbage"] {
        let r = gw
            .client
            .get(
                "/echo",
                &[("authorization", &bearer), ("x-forwarded-for", forwarded)],
            )
            .await;
        assert_eq!(r.status, 401, "forwarded for {forwarded}");
    }
}

/// `GET /.auth/verify` rebuilds the original request from a trusted proxy's
/// headers and decides it like the proxy path: route rules (on the normalised
/// path), authentication, every identity header present, the cookie header
/// without the gateway's cookies, the sign-in URL with the whole original address.
async fn verify_decides_the_original_request(backend: Backend) {
    let db = TestDb::new(backend).await;
    let rules = RouteRules::from_specs(&[
        RouteSpec {
            path_prefix: "/admin/".into(),
            allow: vec!["admin".into()],
            ..RouteSpec::default()
        },
        RouteSpec {
            path_prefix: "/public/".into(),
            allow: vec!["anonymous".into()],
            ..RouteSpec::default()
        },
    ])
    .unwrap();
    let gw = TestGateway::start_with(&db, |c| {
        c.trusted_proxies = TrustedProxies::parse(["127.0.0.1"]).unwrap();
        c.routes = rules.clone();
    })
    .await;
    let alice = gw.login(ADMIN).await.cookie_header();
    let bob = gw.login(USER).await.cookie_header();
    let origin = format!("http://{}", gw.addr);
    // (name, verify query, headers, status, user header)
    type Row<'a> = (
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        u16,
        Option<&'a str>,
    );
    let rows: Vec<Row> = vec![
        (
            "anonymous, signed out",
            "",
            vec![("x-forwarded-uri", "/public/app.js")],
            200,
            Some(""),
        ),
        (
            "signed out",
            "",
            vec![("x-forwarded-uri", "/app/?a=1&b=2")],
            401,
            None,
        ),
        (
            "admin route, user",
            "",
            vec![("x-forwarded-uri", "/admin/x"), ("cookie", &bob)],
            403,
            None,
        ),
        (
            "admin route, admin",
            "",
            vec![("x-forwarded-uri", "/admin/x"), ("cookie", &alice)],
            200,
            Some(ADMIN),
        ),
        (
            "dot segments",
            "",
            vec![("x-forwarded-uri", "/public/../admin/x"), ("cookie", &bob)],
            403,
            None,
        ),
        (
            "encoded slash",
            "",
            vec![("x-forwarded-uri", "/admin%2Fx"), ("cookie", &bob)],
            403,
            None,
        ),
        (
            "nginx's header",
            "",
            vec![("x-original-uri", "/admin/x"), ("cookie", &bob)],
            403,
            None,
        ),
        (
            "bad escape",
            "",
            vec![("x-forwarded-uri", "/a%zz"), ("cookie", &bob)],
            400,
            None,
        ),
        (
            "other path, user",
            "",
            vec![("x-forwarded-uri", "/app/"), ("cookie", &bob)],
            200,
            Some(USER),
        ),
        (
            "redirect mode, browser",
            "?mode=redirect",
            vec![
                ("x-forwarded-uri", "/app/?a=1&b=2"),
                ("accept", "text/html"),
            ],
            302,
            None,
        ),
        (
            "redirect mode, API client",
            "?mode=redirect",
            vec![("x-forwarded-uri", "/app/")],
            401,
            None,
        ),
    ];
    for (name, query, headers, status, user) in rows {
        let r = gw
            .client
            .get(&format!("/.auth/verify{query}"), &headers)
            .await;
        assert_eq!(r.status, status, "{name}: {}", r.text());
        if status == 200 {
            for header in [
                "x-forwarded-user",
                "x-forwarded-email",
                "x-forwarded-groups",
                "x-forwarded-preferred-username",
            ] {
                assert!(r.header(header).is_some(), "{name}: {header} missing");
            }
            assert_eq!(r.header("x-forwarded-user").as_deref(), user, "{name}");
        }
    }
    let want = format!("{origin}/.auth/login?next=%2Fapp%2F%3Fa%3D1%26b%3D2");
    let r = gw
        .client
        .get("/.auth/verify", &[("x-forwarded-uri", "/app/?a=1&b=2")])
        .await;
    assert_eq!(r.header("x-auth-login-url").as_deref(), Some(want.as_str()));
    let r = gw
        .client
        .get(
            "/.auth/verify?mode=redirect",
            &[
                ("x-forwarded-uri", "/app/?a=1&b=2"),
                ("accept", "text/html"),
            ],
        )
        .await;
    assert_eq!(r.header("location").as_deref(), Some(want.as_str()));
    // The application's cookies, without the gateway's.
    let with_app = format!("{bob}; app=1");
    let r = gw
        .client
        .get(
            "/.auth/verify",
            &[("x-forwarded-uri", "/app/"), ("cookie", &with_app)],
        )
        .await;
    assert_eq!(r.header("x-auth-cookie").as_deref(), Some("app=1"));

    // A caller that is not a trusted proxy cannot have its address believed: with
    // route rules, forward auth is refused (and says why in the log).
    let untrusted = TestGateway::start_with(&db, |c| c.routes = rules).await;
    let r = untrusted
        .client
        .get(
            "/.auth/verify",
            &[("x-forwarded-uri", "/public/x"), ("cookie", &bob)],
        )
        .await;
    assert_eq!(r.status, 403);
}

/// A refused host, a refused method on a gateway path: a page for browsers, JSON
/// for others. An `--allowed-hosts` alias can sign in (its Origin is accepted);
/// another origin cannot.
async fn refusals_a_browser_can_read_and_aliases_that_sign_in(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start_with(&db, |c| c.allowed_hosts = vec!["alias.test".into()]).await;
    let html = ("accept", "text/html");
    // (name, method, path, headers, status, page)
    type Row<'a> = (
        &'a str,
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        u16,
        bool,
    );
    let rows: Vec<Row> = vec![
        (
            "host, browser",
            "GET",
            "/",
            vec![("host", "evil.example"), html],
            400,
            true,
        ),
        (
            "host, API",
            "GET",
            "/",
            vec![("host", "evil.example")],
            400,
            false,
        ),
        (
            "method, browser",
            "GET",
            // POST only (GET /logout is a page asking to confirm).
            "/.auth/ws-ticket",
            vec![html],
            405,
            true,
        ),
        ("method, API", "POST", "/.auth/me", vec![], 405, false),
    ];
    // A browser on a host the gateway does not serve is told the fix.
    let r = gw.client.get("/", &[("host", "evil.example"), html]).await;
    assert!(r.text().contains("--allowed-hosts"), "{}", r.text());
    assert!(!r.text().contains("evil.example"), "the host is not echoed");
    for (name, method, path, headers, status, page) in rows {
        let r = gw.client.request(method, path, &headers, "").await;
        assert_eq!(r.status, status, "{name}");
        let content_type = r.header("content-type").unwrap_or_default();
        assert_eq!(
            content_type.starts_with("text/html"),
            page,
            "{name}: {content_type}"
        );
        if !page {
            assert!(r.json()["error"].is_string(), "{name}");
        }
    }
    let login = |origin: &'static str| {
        let client = gw.client.clone();
        async move {
            client
                .request(
                    "POST",
                    "/.auth/login",
                    &[
                        ("host", "alias.test"),
                        ("origin", origin),
                        ("content-type", "application/json"),
                    ],
                    format!(r#"{{"username":"{USER}","password":"{PASSWORD}"}}"#),
                )
                .await
                .status
        }
    };
    assert_eq!(login("http://alias.test").await, 200);
    assert_eq!(login("http://evil.example").await, 403);
}

/// Traefik's forwardAuth protocol (`docs/proxies/traefik.yml`), as Traefik speaks
/// it: `GET {prefix}/verify?mode=redirect` with the client's headers plus
/// `X-Forwarded-Method`, `-Proto`, `-Host`, `-Uri` and `-For`. A browser not
/// signed in is redirected with the whole original address; an API client gets
/// 401; a signed-in user gets 200 and every identity header; route rules apply
/// to the forwarded address.
async fn traefik_forward_auth_protocol(backend: Backend) {
    let db = TestDb::new(backend).await;
    let rules = RouteRules::from_specs(&[RouteSpec {
        path_prefix: "/admin/".into(),
        allow: vec!["admin".into()],
        methods: Some(vec!["DELETE".into()]),
        ..RouteSpec::default()
    }])
    .unwrap();
    let gw = TestGateway::start_with(&db, |c| {
        c.trusted_proxies = TrustedProxies::parse(["127.0.0.1"]).unwrap();
        c.routes = rules;
    })
    .await;
    let bob = gw.login(USER).await.cookie_header();
    let host = gw.addr.to_string();
    let traefik = |method: &'static str, uri: &'static str| {
        vec![
            ("x-forwarded-method", method),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-uri", uri),
            ("x-forwarded-for", "198.51.100.23"),
        ]
    };
    let verify = "/.auth/verify?mode=redirect";
    // A browser navigation, signed out: the sign-in page, coming back here.
    let mut headers = traefik("GET", "/reports/?q=a%20b&n=2");
    headers.push(("x-forwarded-host", host.as_str()));
    headers.push(("accept", "text/html"));
    let r = gw.client.get(verify, &headers).await;
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location").unwrap(),
        format!("http://{host}/.auth/login?next=%2Freports%2F%3Fq%3Da%2520b%26n%3D2")
    );
    // An API client, signed out: 401 with the sign-in address.
    let r = gw.client.get(verify, &traefik("GET", "/api/x")).await;
    assert_eq!(r.status, 401);
    assert!(r.header("x-auth-login-url").is_some());
    // Signed in: 200 and the identity headers Traefik copies.
    let mut headers = traefik("GET", "/reports/");
    headers.push(("cookie", &bob));
    let r = gw.client.get(verify, &headers).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-forwarded-user").as_deref(), Some(USER));
    assert_eq!(r.header("x-forwarded-email").as_deref(), Some(""));
    assert_eq!(r.header("authorization"), None, "none was sent");
    assert_eq!(r.header("x-auth-authorization").as_deref(), Some(""));
    // The application's own Authorization comes back for Traefik to copy; a
    // gateway bearer never does (in any of its spellings), whichever credential
    // authenticated the request.
    let (_, secret) = crate::api_tokens::create_token(&gw.store, "robot", "user").await;
    let ours = format!("Bearer\t{secret}");
    let ours_upper = format!("BEARER  {secret}");
    // (Authorization values sent, the one answered)
    let rows: [(Vec<&str>, Option<&str>); 4] = [
        (
            vec!["Basic YXBwOnNlY3JldA=="],
            Some("Basic YXBwOnNlY3JldA=="),
        ),
        (vec![&ours], None),
        (
            vec![&ours_upper, "Bearer app-token"],
            Some("Bearer app-token"),
        ),
        (vec!["Bearer app-token", &ours], Some("Bearer app-token")),
    ];
    for (sent, answered) in rows {
        let mut headers = traefik("GET", "/reports/");
        headers.push(("cookie", &bob));
        headers.extend(sent.iter().map(|v| ("authorization", *v)));
        let r = gw.client.get(verify, &headers).await;
        assert_eq!(r.status, 200, "{sent:?}");
        assert_eq!(r.header("authorization").as_deref(), answered, "{sent:?}");
        assert_eq!(
            r.header("x-auth-authorization").as_deref(),
            Some(answered.unwrap_or("")),
            "{sent:?}"
        );
    }
    // The rule on DELETE /admin/ is decided on the forwarded method and address.
    let mut headers = traefik("DELETE", "/admin/report/7");
    headers.push(("cookie", &bob));
    assert_eq!(gw.client.get(verify, &headers).await.status, 403);
    let mut headers = traefik("GET", "/admin/report/7");
    headers.push(("cookie", &bob));
    assert_eq!(gw.client.get(verify, &headers).await.status, 200);
    // What the client sent along is read as the proxy path reads it: method
    // overrides, a WebSocket handshake's Origin.
    let evil_upgrade = [
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("origin", "http://evil.example"),
    ];
    // (name, method, address, extra headers, status)
    type Row<'a> = (
        &'a str,
        &'static str,
        &'static str,
        Vec<(&'a str, &'a str)>,
        u16,
    );
    let rows: Vec<Row> = vec![
        (
            "override header",
            "POST",
            "/admin/report/7",
            vec![("x-http-method-override", "DELETE")],
            403,
        ),
        (
            "override in the query",
            "POST",
            "/admin/report/7?_method=DELETE",
            vec![],
            403,
        ),
        (
            "cross-site WebSocket",
            "GET",
            "/live",
            evil_upgrade.to_vec(),
            403,
        ),
        (
            "unknown original host",
            "GET",
            "/reports/",
            vec![("x-forwarded-host", "evil.example")],
            400,
        ),
    ];
    for (name, method, uri, extra, status) in rows {
        let mut headers = traefik(method, uri);
        headers.push(("cookie", &bob));
        headers.extend(extra);
        assert_eq!(
            gw.client.get(verify, &headers).await.status,
            status,
            "{name}"
        );
    }
    // Traefik calls the gateway by its own address: a trusted proxy's forward-auth
    // call is exempt from the Host check (the original host is checked instead);
    // anyone else's is not.
    let mut headers = traefik("GET", "/reports/");
    headers.push(("cookie", &bob));
    headers.push(("host", "portcullis.internal:4180"));
    headers.push(("x-forwarded-host", host.as_str()));
    assert_eq!(gw.client.get(verify, &headers).await.status, 200);
    let untrusted = TestGateway::start(&db).await;
    let r = untrusted
        .client
        .get(verify, &[("host", "portcullis.internal:4180")])
        .await;
    assert_eq!(r.status, 400);
    // A trusted proxy that does not say which address it asks about is refused.
    let r = gw
        .client
        .get(
            verify,
            &[("cookie", bob.as_str()), ("x-forwarded-method", "GET")],
        )
        .await;
    assert_eq!(r.status, 400);
    // Traefik copies the filtered cookies by the name `Cookie`.
    let with_app = format!("{bob}; app=1");
    let mut headers = traefik("GET", "/reports/");
    headers.push(("cookie", &with_app));
    let r = gw.client.get(verify, &headers).await;
    assert_eq!(r.header("cookie").as_deref(), Some("app=1"));
}
