//! Sign-in, sign-out, identity and forward auth.

use crate::both_backends;
use crate::harness::*;

async fn form_login_sets_hardened_cookies_and_redirects(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let origin = format!("http://{}", gw.addr);
    let body = format!("username={ADMIN}&password=correct+horse+battery&next=%2Flab%3Fx%3D1");
    let r = gw
        .client
        .request(
            "POST",
            "/.auth/login",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("origin", &origin),
            ],
            body,
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.header("location").as_deref(), Some("/lab?x=1"));
    let session = r.set_cookie("portcullis_session").unwrap();
    for attr in ["Path=/", "HttpOnly", "SameSite=Lax", "Max-Age=28800"] {
        assert!(session.contains(attr), "{session} lacks {attr}");
    }
    assert!(
        !session.contains("Secure"),
        "http public URL must not set Secure"
    );
    let csrf = r.set_cookie("portcullis_csrf").unwrap();
    assert!(
        !csrf.contains("HttpOnly"),
        "CSRF cookie must be readable by scripts"
    );
    let value = r.cookie("portcullis_session").unwrap();
    assert!(value.starts_with("v1.ses-"), "{value}");
    assert_eq!(value.split('.').count(), 4);
}

async fn json_login_and_me(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let s = gw.login(ADMIN).await;
    let me = gw
        .client
        .get("/.auth/me", &[("cookie", &s.cookie_header())])
        .await;
    assert_eq!(me.status, 200);
    let me = me.json();
    assert_eq!(me["sub"], ADMIN);
    assert_eq!(me["provider"], "basic");
    assert_eq!(me["roles"], serde_json::json!(["admin", "user"]));
    assert_eq!(me["session_id"], s.id());
    assert!(me["expires_at"].as_str().unwrap().ends_with('Z'));
    let anon = gw.client.get("/.auth/me", &[]).await;
    assert_eq!(anon.status, 401);
    assert_eq!(anon.json()["error"], "unauthenticated");
}

async fn unknown_user_and_wrong_password_are_indistinguishable(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let attempt = |user, password| json_login(&gw.client, user, password, None);
    let unknown = attempt("mallory", PASSWORD).await;
    let wrong = attempt(ADMIN, "wrong").await;
    assert_eq!(unknown.status, 401);
    assert_eq!(wrong.status, 401);
    assert_eq!(
        unknown.body, wrong.body,
        "bodies must not reveal which part was wrong"
    );
    assert!(unknown.set_cookie("portcullis_session").is_none());
    // The audit log keeps the precise reason for operators.
    let events = gw.audit("auth.login").await;
    let reasons: Vec<_> = events.iter().filter_map(|e| e.reason.clone()).collect();
    assert!(reasons.contains(&"unknown_user".to_string()), "{reasons:?}");
    assert!(reasons.contains(&"bad_password".to_string()), "{reasons:?}");
    assert!(
        events.iter().all(|e| !format!("{e:?}").contains("wrong")),
        "audit must not hold passwords"
    );
}

async fn login_page_works_without_javascript(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let page = gw
        .client
        .get("/.auth/login?next=%2Fnotebooks", &[("accept", "text/html")])
        .await;
    assert_eq!(page.status, 200);
    let html = page.text();
    assert!(
        html.contains(r#"<form method="post" action="/.auth/login">"#),
        "{html}"
    );
    assert!(html.contains(r#"name="next" value="/notebooks""#));
    assert!(
        !html.contains("<script"),
        "sign-in must not need JavaScript"
    );
    // A failed form sign-in re-renders the page with the uniform message.
    let origin = format!("http://{}", gw.addr);
    let r = gw
        .client
        .request(
            "POST",
            "/.auth/login",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("origin", &origin),
            ],
            "username=alice&password=nope&next=%2Fnotebooks",
        )
        .await;
    assert_eq!(r.status, 401);
    assert!(r.text().contains("Invalid username or password."));
    assert!(r.text().contains(r#"value="/notebooks""#));
}

async fn open_redirects_are_refused(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let origin = format!("http://{}", gw.addr);
    let rows = [
        ("%2F%2Fevil.example", "/"),
        ("%2F%5Cevil.example", "/"),
        ("https%3A%2F%2Fevil.example", "/"),
        ("%252F%252Fevil", "/"),
        ("%2F%252F%252Fevil", "/"),
        ("%2F%255Cevil", "/"),
        ("javascript%3Aalert(1)", "/"),
        ("%2Fok%2Fpath", "/ok/path"),
    ];
    for (next, expected) in rows {
        let body = format!("username={ADMIN}&password=correct+horse+battery&next={next}");
        let r = gw
            .client
            .request(
                "POST",
                "/.auth/login",
                &[
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("origin", &origin),
                ],
                body,
            )
            .await;
        assert_eq!(r.status, 303, "row {next}");
        assert_eq!(
            r.header("location").as_deref(),
            Some(expected),
            "row {next}"
        );
    }
    // The login page never echoes an unsafe next either.
    let page = gw.client.get("/.auth/login?next=//evil.example", &[]).await;
    assert!(page.text().contains(r#"name="next" value="/""#));
}

async fn cross_site_login_posts_are_refused(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let same = format!("http://{}", gw.addr);
    let same_referer = format!("http://{}/.auth/login", gw.addr);
    let prefix_trick = format!("{same}.evil.example/");
    let rows: Vec<HeaderRow> = vec![
        (
            "foreign origin",
            vec![("origin", "https://evil.example")],
            403,
        ),
        ("null origin", vec![("origin", "null")], 403),
        (
            "origin with other port",
            vec![("origin", "http://127.0.0.1:1")],
            403,
        ),
        (
            "foreign referer",
            vec![("referer", "https://evil.example/x")],
            403,
        ),
        (
            "referer prefix trick",
            vec![("referer", &prefix_trick)],
            403,
        ),
        ("same origin", vec![("origin", &same)], 200),
        ("same-origin referer", vec![("referer", &same_referer)], 200),
        ("non-browser client", vec![], 200),
    ];
    for (name, extra, status) in rows {
        let mut headers = vec![("content-type", "application/json")];
        headers.extend(extra);
        let body = serde_json::json!({"username": ADMIN, "password": PASSWORD}).to_string();
        let r = gw
            .client
            .request("POST", "/.auth/login", &headers, body)
            .await;
        assert_eq!(r.status, status, "row {name}: {}", r.text());
    }
    // A form is what a cross-site page can make a browser post: it must name its
    // origin (a form that signs in answers 303).
    let form: Vec<HeaderRow> = vec![
        ("form without Origin or Referer", vec![], 403),
        (
            "form from a foreign origin",
            vec![("origin", "https://evil.example")],
            403,
        ),
        ("form with an empty Referer", vec![("referer", "")], 403),
        ("form from the same origin", vec![("origin", &same)], 303),
        (
            "form with a same-origin Referer",
            vec![("referer", &same_referer)],
            303,
        ),
    ];
    for (name, extra, status) in form {
        let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
        headers.extend(extra);
        let body = format!("username={ADMIN}&password=correct+horse+battery");
        let r = gw
            .client
            .request("POST", "/.auth/login", &headers, body)
            .await;
        assert_eq!(r.status, status, "row {name}: {}", r.text());
    }
}

async fn bad_login_input_gets_clear_errors(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let huge = "x".repeat(100 * 1024);
    let long_password =
        serde_json::json!({"username": ADMIN, "password": "p".repeat(5000)}).to_string();
    let rows: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "wrong content type",
            "text/plain",
            "username=a".into(),
            400,
            "bad_request",
        ),
        (
            "malformed json",
            "application/json",
            "{\"username\":".into(),
            400,
            "bad_request",
        ),
        (
            "missing password",
            "application/json",
            "{\"username\":\"alice\"}".into(),
            400,
            "bad_request",
        ),
        ("oversized body", "application/json", huge, 413, ""),
        (
            "password too long",
            "application/json",
            long_password,
            401,
            "invalid_credentials",
        ),
        (
            "empty username",
            "application/json",
            "{\"username\":\"\",\"password\":\"x\"}".into(),
            401,
            "invalid_credentials",
        ),
    ];
    // From the same origin, as a browser's form would be: these rows are about
    // the input, not where it came from.
    let origin = format!("http://{}", gw.addr);
    for (name, content_type, body, status, code) in rows {
        let r = gw
            .client
            .request(
                "POST",
                "/.auth/login",
                &[("content-type", content_type), ("origin", &origin)],
                body,
            )
            .await;
        assert_eq!(r.status, status, "row {name}: {}", r.text());
        if !code.is_empty() {
            assert_eq!(r.json()["error"], code, "row {name}");
        }
    }
}

async fn logout_needs_csrf_then_revokes(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let s = gw.login(USER).await;
    let cookie = s.cookie_header();
    let rows: Vec<HeaderRow> = vec![
        ("no token", vec![("cookie", &cookie)], 403),
        (
            "wrong token",
            vec![("cookie", &cookie), ("x-csrf-token", "AAAA")],
            403,
        ),
    ];
    for (name, headers, status) in rows {
        let r = gw
            .client
            .request("POST", "/.auth/logout", &headers, "")
            .await;
        assert_eq!(r.status, status, "row {name}");
        assert_eq!(
            gw.client
                .get("/.auth/me", &[("cookie", &cookie)])
                .await
                .status,
            200,
            "row {name} must not log out"
        );
    }
    // A token from another session does not work either.
    let other = gw.login(USER).await;
    let r = gw
        .client
        .request(
            "POST",
            "/.auth/logout",
            &[("cookie", &cookie), ("x-csrf-token", &other.csrf)],
            "",
        )
        .await;
    assert_eq!(r.status, 403);

    let r = gw
        .client
        .request(
            "POST",
            "/.auth/logout",
            &[
                ("cookie", &cookie),
                ("x-csrf-token", &s.csrf),
                ("accept", "application/json"),
            ],
            "",
        )
        .await;
    assert_eq!(r.status, 204);
    assert!(
        r.set_cookie("portcullis_session")
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(
        gw.client
            .get("/.auth/me", &[("cookie", &cookie)])
            .await
            .status,
        401
    );
    assert_eq!(
        gw.client
            .get("/.auth/me", &[("cookie", &other.cookie_header())])
            .await
            .status,
        200,
        "other sessions live on"
    );

    // No-JavaScript form logout with the token as a field.
    let third = gw.login(USER).await;
    let r = gw
        .client
        .request(
            "POST",
            "/.auth/logout",
            &[
                ("cookie", &third.cookie_header()),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            format!("csrf_token={}", third.csrf),
        )
        .await;
    assert_eq!(r.status, 303);
    assert_eq!(
        r.header("location").as_deref(),
        Some("/.auth/login?signed_out=1"),
        "to the sign-in page, which says so"
    );
    assert_eq!(
        gw.client
            .get("/.auth/me", &[("cookie", &third.cookie_header())])
            .await
            .status,
        401
    );
    let events = gw.audit("auth.logout").await;
    assert_eq!(events.len(), 2);
}

async fn login_throttling_answers_429(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start_with(&db, |c| {
        c.login_limits.per_user_per_minute = 3;
        c.login_limits.per_ip_per_minute = 1000;
    })
    .await;
    for _ in 0..3 {
        let r = json_login(&gw.client, ADMIN, "wrong", None).await;
        assert_eq!(r.status, 401);
    }
    let r = json_login(&gw.client, ADMIN, "wrong", None).await;
    assert_eq!(r.status, 429);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(r.json()["error"], "too_many_attempts");
    // Case variations share the budget; other users do not.
    assert_eq!(
        json_login(&gw.client, "ALICE", "wrong", None).await.status,
        429
    );
    gw.login(USER).await;

    // Guesses from one address do not lock the user out at another: the budget is
    // per user and address, under a ceiling per user ten times higher.
    let db3 = TestDb::new(backend).await;
    let gw3 = TestGateway::start_with(&db3, |c| {
        c.login_limits.per_user_per_minute = 2;
        c.login_limits.per_ip_per_minute = 1000;
        c.trusted_proxies =
            portcullis_core::forwarded::TrustedProxies::parse(["127.0.0.1"]).unwrap();
    })
    .await;
    let attempt = |from: String, password: &'static str| {
        let client = gw3.client.clone();
        async move {
            json_login(&client, ADMIN, password, Some(&from))
                .await
                .status
        }
    };
    let attacker = "203.0.113.9".to_owned();
    assert_eq!(attempt(attacker.clone(), "guess").await, 401);
    assert_eq!(attempt(attacker.clone(), "guess").await, 401);
    assert_eq!(attempt(attacker.clone(), "guess").await, 429);
    assert_eq!(
        attempt(attacker.clone(), PASSWORD).await,
        429,
        "the attacker's address is out"
    );
    assert_eq!(
        attempt("198.51.100.7".into(), PASSWORD).await,
        200,
        "the owner is not"
    );
    // Guessing spread over many addresses meets the per-user ceiling (20 here).
    let mut refused = 0;
    for n in 0..30 {
        if attempt(format!("192.0.2.{n}"), "guess").await == 429 {
            refused += 1;
        }
    }
    assert!(
        refused >= 10,
        "the per-user ceiling holds: {refused} refused"
    );

    // Per-IP limit.
    let db2 = TestDb::new(backend).await;
    let gw2 = TestGateway::start_with(&db2, |c| c.login_limits.per_ip_per_minute = 2).await;
    for user in ["u1", "u2"] {
        let b = serde_json::json!({"username": user, "password": "x"}).to_string();
        assert_eq!(
            gw2.client
                .request(
                    "POST",
                    "/.auth/login",
                    &[("content-type", "application/json")],
                    b
                )
                .await
                .status,
            401
        );
    }
    let b = serde_json::json!({"username": "u3", "password": "x"}).to_string();
    assert_eq!(
        gw2.client
            .request(
                "POST",
                "/.auth/login",
                &[("content-type", "application/json")],
                b
            )
            .await
            .status,
        429
    );
}

/// A flood of wrong passwords from one address costs at most the address's burst
/// of verifications (10) before it is answered 429 without one, whatever names it
/// tries; the owner signs in from elsewhere meanwhile.
async fn a_flood_from_one_address_costs_few_verifications(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start_with(&db, |c| {
        c.login_limits = portcullis_gateway::config::LoginLimits::default();
        c.trusted_proxies =
            portcullis_core::forwarded::TrustedProxies::parse(["127.0.0.1"]).unwrap();
    })
    .await;
    let attempt = |from: &'static str, user: String, password: &'static str| {
        let client = gw.client.clone();
        async move {
            json_login(&client, &user, password, Some(from))
                .await
                .status
        }
    };
    let mut answers = std::collections::BTreeMap::new();
    for n in 0..25 {
        let status = attempt("203.0.113.50", format!("user{n}"), "guess").await;
        *answers.entry(status).or_insert(0) += 1;
    }
    assert_eq!(
        answers,
        std::collections::BTreeMap::from([(401, 10), (429, 15)]),
        "ten verified, the rest refused before any verification"
    );
    // The 15 refusals are one audit row so far (the rest are counted into it when
    // the minute ends), not 15.
    let throttled: Vec<_> = gw
        .audit("auth.login")
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("throttled"))
        .collect();
    assert_eq!(throttled.len(), 1, "{throttled:?}");
    assert_eq!(throttled[0].ip.as_deref(), Some("203.0.113.50"));
    assert_eq!(attempt("198.51.100.8", ADMIN.into(), PASSWORD).await, 200);
}

async fn forward_auth_verify(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let anon = gw
        .client
        .get("/.auth/verify", &[("x-original-uri", "/grafana/d/1?x=2")])
        .await;
    assert_eq!(anon.status, 401);
    let login_url = anon.header("x-auth-login-url").unwrap();
    assert_eq!(
        login_url,
        format!(
            "http://{}/.auth/login?next=%2Fgrafana%2Fd%2F1%3Fx%3D2",
            gw.addr
        )
    );
    let evil = gw
        .client
        .get("/.auth/verify", &[("x-original-uri", "//evil.example")])
        .await;
    assert!(
        evil.header("x-auth-login-url")
            .unwrap()
            .ends_with("next=%2F")
    );
    let s = gw.login(ADMIN).await;
    let ok = gw
        .client
        .get("/.auth/verify", &[("cookie", &s.cookie_header())])
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("x-forwarded-user").as_deref(), Some(ADMIN));
    assert_eq!(
        ok.header("x-forwarded-groups").as_deref(),
        Some("admin,user")
    );
}

async fn health_endpoints(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    assert_eq!(gw.client.get("/.auth/healthz", &[]).await.status, 200);
    assert_eq!(gw.client.get("/.auth/readyz", &[]).await.status, 200);
    // Probes by IP need no allowed Host.
    assert_eq!(
        gw.client
            .get("/.auth/healthz", &[("host", "10.1.2.3:4180")])
            .await
            .status,
        200
    );
    assert_eq!(gw.client.get("/.auth/nope", &[]).await.status, 404);
}

both_backends!(
    a_flood_from_one_address_costs_few_verifications,
    form_login_sets_hardened_cookies_and_redirects,
    json_login_and_me,
    unknown_user_and_wrong_password_are_indistinguishable,
    login_page_works_without_javascript,
    open_redirects_are_refused,
    cross_site_login_posts_are_refused,
    bad_login_input_gets_clear_errors,
    logout_needs_csrf_then_revokes,
    login_throttling_answers_429,
    forward_auth_verify,
    health_endpoints,
    gateway_pages_cannot_be_framed,
    a_failure_takes_as_long_whichever_user_was_named,
    tossed_cookies_never_choose_who_the_request_is,
);

/// Cookie tossing (SPEC 4): over https the cookies carry the `__Host-` prefix (a
/// sibling subdomain cannot plant them), the old names are still read, and a
/// session cookie present with two values is refused unless exactly one verifies.
async fn tossed_cookies_never_choose_who_the_request_is(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start_with(&db, |c| {
        let https = c.public_url.origin().replace("http://", "https://");
        c.public_url = portcullis_gateway::PublicUrl::parse(&https).unwrap();
    })
    .await;
    let body = serde_json::json!({"username": ADMIN, "password": PASSWORD}).to_string();
    let r = gw
        .client
        .request(
            "POST",
            "/.auth/login",
            &[("content-type", "application/json")],
            body,
        )
        .await;
    assert_eq!(r.status, 200);
    let alice = r
        .cookie("__Host-portcullis_session")
        .expect("prefixed session cookie");
    let line = r.set_cookie("__Host-portcullis_session").unwrap();
    assert!(line.contains("Secure") && line.contains("Path=/"), "{line}");
    assert!(r.cookie("__Host-portcullis_csrf").is_some());
    assert!(
        r.set_cookie("portcullis_session").is_none(),
        "no unprefixed cookie is set"
    );
    let body = serde_json::json!({"username": USER, "password": PASSWORD}).to_string();
    let r = gw
        .client
        .request(
            "POST",
            "/.auth/login",
            &[("content-type", "application/json")],
            body,
        )
        .await;
    let bob = r.cookie("__Host-portcullis_session").unwrap();
    let bob_csrf = r.cookie("__Host-portcullis_csrf").unwrap();
    let forged = format!("{}x", &alice[..alice.len() - 1]);
    // (Cookie header, status, user the upstream sees)
    let rows: Vec<(String, u16, Option<&str>)> = vec![
        (
            format!("__Host-portcullis_session={alice}"),
            200,
            Some(ADMIN),
        ),
        (format!("portcullis_session={alice}"), 200, Some(ADMIN)),
        (
            format!("__Host-portcullis_session={alice}; portcullis_session={alice}"),
            200,
            Some(ADMIN),
        ),
        // A `__Host-` cookie hides an unprefixed one, which a sibling subdomain
        // could have planted.
        (
            format!("portcullis_session={bob}; __Host-portcullis_session={alice}"),
            200,
            Some(ADMIN),
        ),
        (
            format!("portcullis_session={bob}; portcullis_session={alice}"),
            401,
            None,
        ),
        (
            format!("portcullis_session={forged}; __Host-portcullis_session={alice}"),
            200,
            Some(ADMIN),
        ),
        (
            format!("__Host-portcullis_session={alice}; portcullis_session=junk"),
            200,
            Some(ADMIN),
        ),
    ];
    for (cookie, status, user) in rows {
        for accept in ["application/json", "*/*"] {
            let r = gw
                .client
                .get("/echo", &[("cookie", &cookie), ("accept", accept)])
                .await;
            assert_eq!(r.status, status, "{cookie}");
            if let Some(user) = user {
                let seen = &r.json()["headers"];
                assert_eq!(
                    seen["x-forwarded-user"],
                    serde_json::json!([user]),
                    "{cookie}"
                );
                assert!(seen.get("cookie").is_none(), "{cookie}: {seen}");
            }
        }
    }
    // Signing out clears both names.
    let csrf = gw
        .client
        .request(
            "POST",
            "/.auth/logout",
            &[
                ("cookie", &format!("__Host-portcullis_session={bob}")),
                ("accept", "application/json"),
            ],
            "",
        )
        .await;
    assert_eq!(csrf.status, 403, "CSRF still applies");
    let out = gw
        .client
        .request(
            "POST",
            "/.auth/logout",
            &[
                ("cookie", &format!("__Host-portcullis_session={bob}")),
                ("x-csrf-token", &bob_csrf),
                ("accept", "application/json"),
            ],
            "",
        )
        .await;
    assert_eq!(out.status, 204);
    let cleared: Vec<String> = out
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    for name in [
        "__Host-portcullis_session=;",
        "portcullis_session=;",
        "__Host-portcullis_csrf=;",
    ] {
        assert!(
            cleared.iter().any(|c| c.starts_with(name)),
            "{name} in {cleared:?}"
        );
    }
    let r = gw
        .client
        .get(
            "/echo",
            &[("cookie", &format!("__Host-portcullis_session={bob}"))],
        )
        .await;
    assert_eq!(r.status, 401);
}

/// With hashes of different costs, a wrong password for the cheap user takes as
/// long as one for the costly user or an unknown name (the costliest
/// verification sets the floor). Asserted as a lower bound on the fastest of a
/// few tries: noise on this machine only ever makes attempts slower.
async fn a_failure_takes_as_long_whichever_user_was_named(backend: Backend) {
    use portcullis_core::basic::{BasicUsers, hash_password_with};
    use portcullis_core::secret::{OsEntropy, SecretString};
    let costly = hash_password_with(&SecretString::new(PASSWORD), &OsEntropy, 32768, 2, 1).unwrap();
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start_with(&db, |c| {
        c.basic_users = BasicUsers::parse(
            &format!("{ADMIN}:{costly};{USER}:{}", cheap_hash(PASSWORD)),
            ADMIN,
        )
        .0;
    })
    .await;
    let fastest = |user: &'static str| {
        let client = gw.client.clone();
        async move {
            let mut best = std::time::Duration::MAX;
            for _ in 0..3 {
                let body = serde_json::json!({"username": user, "password": "wrong"}).to_string();
                let started = std::time::Instant::now();
                let r = client
                    .request(
                        "POST",
                        "/.auth/login",
                        &[("content-type", "application/json")],
                        body,
                    )
                    .await;
                assert_eq!(r.status, 401);
                best = best.min(started.elapsed());
            }
            best
        }
    };
    let costly_user = fastest(ADMIN).await;
    let unknown = fastest("mallory").await;
    let cheap_user = fastest(USER).await;
    for (name, took) in [("unknown user", unknown), ("cheap user", cheap_user)] {
        assert!(
            took * 2 >= costly_user,
            "{name}: {took:?} against the costly user's {costly_user:?}"
        );
    }
    // The right password is never slowed.
    let r = gw.login(USER).await;
    assert!(!r.cookie.is_empty());
}

/// Every page the gateway answers (its own, and a refusal on the upstream's
/// paths) forbids framing and runs no script (SPEC 9).
async fn gateway_pages_cannot_be_framed(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let bob = gw.login(USER).await;
    let cookie = bob.cookie_header();
    let html = ("accept", "text/html");
    let rows: Vec<HeaderRow> = vec![
        ("/.auth/login", vec![html], 200),
        ("/.auth/sessions", vec![html, ("cookie", &cookie)], 200),
        ("/.auth/audit", vec![html, ("cookie", &cookie)], 403),
        ("/.auth/nothing-here", vec![html], 404),
        ("/.auth/api/openapi.json", vec![], 200),
        ("/.auth/me", vec![("cookie", &cookie)], 200),
        ("/app", vec![html, ("host", "evil.example")], 400),
    ];
    for (path, headers, status) in rows {
        let r = gw.client.get(path, &headers).await;
        assert_eq!(r.status, status, "{path}");
        assert_eq!(
            r.header("x-frame-options").as_deref(),
            Some("DENY"),
            "{path}"
        );
        let csp = r.header("content-security-policy").unwrap_or_default();
        for directive in ["frame-ancestors 'none'", "default-src 'none'"] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(
            !csp.contains("script-src"),
            "{path}: no script is ever allowed"
        );
        assert_eq!(
            r.header("x-content-type-options").as_deref(),
            Some("nosniff")
        );
    }
    // The upstream's own pages are the upstream's business.
    let r = gw.client.get("/app", &[("cookie", &cookie)]).await;
    assert_eq!(r.status, 200);
    assert!(r.header("x-frame-options").is_none());
}

/// Real-cost hashes (argon2id m=64 MiB, t=3, p=4, as `hash-password` makes them).
fn real_cost_users() -> portcullis_core::basic::BasicUsers {
    let hash = portcullis_core::basic::hash_password(
        &portcullis_core::secret::SecretString::new(PASSWORD),
        &portcullis_core::secret::OsEntropy,
    )
    .unwrap();
    portcullis_core::basic::BasicUsers::parse(&format!("{ADMIN}:{hash}"), "").0
}

async fn timed_login(client: &TestClient, user: &str, password: &str) -> std::time::Duration {
    timed_login_from(client, user, password, None).await
}

/// [`timed_login`] through a trusted proxy naming `from`.
async fn timed_login_from(
    client: &TestClient,
    user: &str,
    password: &str,
    from: Option<&str>,
) -> std::time::Duration {
    let start = std::time::Instant::now();
    let r = json_login(client, user, password, from).await;
    assert_eq!(r.status, 401);
    start.elapsed()
}

/// Unknown users run the same argon2 work as known ones. Without the dummy verify an
/// unknown user would answer in about a millisecond instead of about 100 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_users_cost_the_same_as_wrong_passwords() {
    let db = TestDb::new(Backend::Sqlite).await;
    let gw = TestGateway::start_with(&db, |c| c.basic_users = real_cost_users()).await;
    let mut unknown = Vec::new();
    let mut wrong = Vec::new();
    for _ in 0..5 {
        unknown.push(timed_login(&gw.client, "mallory", "guess").await);
        wrong.push(timed_login(&gw.client, ADMIN, "guess").await);
    }
    unknown.sort();
    wrong.sort();
    let (u, w) = (unknown[2].as_secs_f64(), wrong[2].as_secs_f64());
    assert!(
        w > 0.02,
        "a real-cost verify takes tens of milliseconds, got {w}"
    );
    assert!(
        u > w * 0.5 && u < w * 2.0,
        "median unknown-user {u:.3}s vs wrong-password {w:.3}s"
    );
}

/// argon2 runs on a bounded pool off the async workers: a login flood queues, and
/// proxied requests keep flowing meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_flood_does_not_starve_proxying() {
    let db = TestDb::new(Backend::Sqlite).await;
    let gw = TestGateway::start_with(&db, |c| {
        c.basic_users = real_cost_users();
        c.argon2_workers = 1;
        c.trusted_proxies =
            portcullis_core::forwarded::TrustedProxies::parse(["127.0.0.1"]).unwrap();
    })
    .await;
    let session = login(&gw.client, ADMIN, PASSWORD).await;
    // From as many addresses (a burst from one address is refused before it
    // costs a verification): every attempt here is verified.
    let flood: Vec<_> = (0..16)
        .map(|n| {
            let client = gw.client.clone();
            tokio::spawn(async move {
                let from = format!("192.0.2.{n}");
                timed_login_from(&client, ADMIN, "wrong", Some(&from)).await
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let mut slowest = std::time::Duration::ZERO;
    for _ in 0..20 {
        let start = std::time::Instant::now();
        let r = gw
            .client
            .get("/echo", &[("cookie", &session.cookie_header())])
            .await;
        assert_eq!(r.status, 200);
        slowest = slowest.max(start.elapsed());
    }
    let mut flood_total = std::time::Duration::ZERO;
    for f in flood {
        flood_total = flood_total.max(f.await.unwrap());
    }
    // The flood needs 16 sequential verifies on one worker (over a second); each
    // proxied request needs none and must not wait behind them.
    assert!(
        flood_total > std::time::Duration::from_millis(500),
        "flood finished too fast to prove anything: {flood_total:?}"
    );
    assert!(
        slowest < std::time::Duration::from_millis(300),
        "a proxied request waited {slowest:?} behind logins"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_public_url_makes_cookies_secure() {
    let db = TestDb::new(Backend::Sqlite).await;
    let gw = TestGateway::start_with(&db, |c| {
        c.public_url = portcullis_gateway::PublicUrl::parse("https://dash.example.com").unwrap();
        c.same_site = portcullis_gateway::SameSite::Strict;
    })
    .await;
    let body = serde_json::json!({"username": ADMIN, "password": PASSWORD}).to_string();
    let r = gw
        .client
        .request(
            "POST",
            "/.auth/login",
            &[
                ("content-type", "application/json"),
                ("host", "dash.example.com"),
                ("origin", "https://dash.example.com"),
            ],
            body,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Over https the names carry the `__Host-` prefix (SPEC 4).
    for name in ["__Host-portcullis_session", "__Host-portcullis_csrf"] {
        let cookie = r.set_cookie(name).unwrap();
        assert!(cookie.contains("; Secure"), "{cookie}");
        assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    }
}
