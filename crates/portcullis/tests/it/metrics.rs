//! `GET /metrics` on `--metrics-listen`: scraped from a real `portcullis serve`
//! after real traffic, every family read back and checked to have moved as the
//! traffic says.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::both_backends;
use crate::harness::*;
use crate::processes::{Replica, free_port};
use crate::websocket::{close_frame, connect_as};

/// One scrape: every sample by its name and labels as written
/// (`name{a="x",b="y"}`).
pub struct Scrape {
    samples: BTreeMap<String, f64>,
    text: String,
}

impl Scrape {
    async fn of(addr: SocketAddr) -> Self {
        let response = TestClient::new(addr).get("/metrics", &[]).await;
        assert_eq!(response.status, 200);
        assert_eq!(
            response.header("content-type").as_deref(),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        Self::parse(response.text())
    }

    /// The samples of an exposition.
    pub fn parse(text: String) -> Self {
        let mut samples = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
            assert!(
                samples.insert(series.to_owned(), value).is_none(),
                "{series} twice"
            );
        }
        Self { samples, text }
    }

    /// The value of one series (0 when absent).
    pub fn get(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }

    /// How much `series` moved since `before`.
    fn moved(&self, before: &Scrape, series: &str) -> f64 {
        self.get(series) - before.get(series)
    }
}

/// Prometheus's own checker (`promtool check metrics`, installed by
/// `scripts/ensure-promtool`) reads the exposition without a complaint, lint
/// included (names, units, suffixes).
fn promtool_accepts(text: &str) {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (scripts/ensure-promtool installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

both_backends!(a_scrape_after_real_traffic_shows_it);
async fn a_scrape_after_real_traffic_shows_it(backend: Backend) {
    let db = TestDb::new(backend).await;
    let upstream = TestUpstream::start().await;
    let metrics = free_port();
    let users = format!("alice:{}", cheap_hash("pw"));
    let gw = Replica::start_with(&db, free_port(), |cmd| {
        cmd.env("PORTCULLIS_UPSTREAM", format!("http://{}", upstream.addr))
            .env("AUTH_BASIC_USERS", &users)
            .env("PORTCULLIS_METRICS_LISTEN", metrics.to_string())
            .env("PORTCULLIS_LOGIN_RATE_PER_IP", "3");
    })
    .await;
    let client = &gw.client;
    let before = Scrape::of(metrics).await;
    // Every family is there, with HELP and TYPE, before any traffic.
    for family in [
        "portcullis_requests_total counter",
        "portcullis_request_duration_seconds histogram",
        "portcullis_upstream_duration_seconds histogram",
        "portcullis_authentications_total counter",
        "portcullis_logins_total counter",
        "portcullis_argon2_queue_depth gauge",
        "portcullis_argon2_wait_seconds histogram",
        "portcullis_cached_sessions gauge",
        "portcullis_live_websockets gauge",
        "portcullis_revocations_published_total counter",
        "portcullis_revocations_received_total counter",
        "portcullis_bus_delay_seconds histogram",
        "portcullis_bus_lost_total counter",
        "portcullis_bus_reconnects_total counter",
        "portcullis_session_cache_flushes_total counter",
        "portcullis_bus_connected gauge",
        "portcullis_store_errors_total counter",
    ] {
        assert!(
            before.text.contains(&format!("# TYPE {family}\n")),
            "{family}"
        );
    }
    assert_eq!(before.get("portcullis_bus_connected"), 1.0);
    assert_eq!(before.get("portcullis_live_websockets"), 0.0);

    // Sign-ins: a wrong password, a right one, then throttled (3 a minute).
    let r = json_login(client, "alice", "nope", None).await;
    assert_eq!(r.status, 401);
    let session = login(client, "alice", "pw").await;
    let mut throttled = false;
    for _ in 0..5 {
        let r = json_login(client, "alice", "nope", None).await;
        if r.status == 429 {
            throttled = true;
            break;
        }
    }
    assert!(throttled, "the login rate never refused");

    // The fast path (a bodiless GET with the cookie), the general path (a POST),
    // a gateway endpoint, no credential, and a forged cookie.
    let cookie = session.cookie_header();
    // A new connection: one that served a sign-in stays on the general path.
    let fresh = TestClient::new(client.addr);
    for _ in 0..3 {
        assert_eq!(fresh.get("/fast", &[("cookie", &cookie)]).await.status, 200);
    }
    let r = client
        .request("POST", "/posted", &[("cookie", &cookie)], "body")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        client.get("/.auth/me", &[("cookie", &cookie)]).await.status,
        200
    );
    let anonymous = client.get("/", &[("accept", "application/json")]).await;
    assert_eq!(anonymous.status, 401);
    let forged = client
        .get(
            "/",
            &[
                ("cookie", "portcullis_session=v1.AAAA.k.forged"),
                ("accept", "application/json"),
            ],
        )
        .await;
    assert_eq!(forged.status, 401);

    // A WebSocket, live while scraped.
    let mut ws = connect_as(client.addr, &session).await;
    let during = Scrape::of(metrics).await;
    assert_eq!(during.get("portcullis_live_websockets"), 1.0);
    assert!(during.get("portcullis_cached_sessions") >= 1.0);

    // Signing out revokes the session: published here, read back from the log,
    // and the WebSocket closed.
    let r = client
        .request(
            "POST",
            "/.auth/logout",
            &[("cookie", &cookie), ("x-csrf-token", &session.csrf)],
            "",
        )
        .await;
    assert!(r.status == 200 || r.status == 303, "{}", r.status);
    assert!(close_frame(&mut ws, Duration::from_secs(3)).await.is_some());
    // A WebSocket is counted when it ends.
    drop(ws);
    let received = eventually(Duration::from_secs(5), || async {
        let now = Scrape::of(metrics).await;
        now.moved(&before, "portcullis_revocations_received_total") >= 1.0
            && now.get("portcullis_live_websockets") == 0.0
            && now.moved(
                &before,
                r#"portcullis_requests_total{path="upgrade",status="1xx"}"#,
            ) >= 1.0
    })
    .await;
    assert!(received.is_some(), "the revocation was never read back");
    let after = Scrape::of(metrics).await;

    let moved = |series: &str| after.moved(&before, series);
    // Exactly what the traffic above makes (so nothing is counted twice, on
    // the fast path's hand-offs least of all): (series, change)
    let rows: &[(&str, f64)] = &[
        // The wrong password twice, the right one once, then throttled.
        (
            r#"portcullis_logins_total{provider="basic",outcome="failure"}"#,
            2.0,
        ),
        (
            r#"portcullis_logins_total{provider="basic",outcome="success"}"#,
            1.0,
        ),
        (
            r#"portcullis_logins_total{provider="basic",outcome="throttled"}"#,
            1.0,
        ),
        ("portcullis_argon2_wait_seconds_count", 3.0),
        (
            r#"portcullis_requests_total{path="fast",status="2xx"}"#,
            3.0,
        ),
        // The POST; the anonymous and the forged request.
        (
            r#"portcullis_requests_total{path="proxy",status="2xx"}"#,
            1.0,
        ),
        (
            r#"portcullis_requests_total{path="proxy",status="4xx"}"#,
            2.0,
        ),
        // Signed in and /me; signing out (a redirect); the refused sign-ins.
        (
            r#"portcullis_requests_total{path="endpoint",status="2xx"}"#,
            2.0,
        ),
        (
            r#"portcullis_requests_total{path="endpoint",status="3xx"}"#,
            1.0,
        ),
        (
            r#"portcullis_requests_total{path="endpoint",status="4xx"}"#,
            3.0,
        ),
        (
            r#"portcullis_requests_total{path="upgrade",status="1xx"}"#,
            1.0,
        ),
        (
            r#"portcullis_request_duration_seconds_count{path="fast"}"#,
            3.0,
        ),
        (
            r#"portcullis_upstream_duration_seconds_count{path="fast"}"#,
            3.0,
        ),
        (
            r#"portcullis_upstream_duration_seconds_count{path="proxy"}"#,
            1.0,
        ),
        // Three on the fast path, the POST, /me, the upgrade, the sign-out.
        (
            r#"portcullis_authentications_total{carrier="cookie",result="ok"}"#,
            7.0,
        ),
        (
            r#"portcullis_authentications_total{carrier="cookie",result="invalid_cookie"}"#,
            1.0,
        ),
        (
            r#"portcullis_authentications_total{carrier="none",result="no_credential"}"#,
            1.0,
        ),
        ("portcullis_revocations_published_total", 1.0),
        ("portcullis_revocations_received_total", 1.0),
        ("portcullis_bus_delay_seconds_count", 1.0),
    ];
    for (series, change) in rows {
        assert_eq!(moved(series), *change, "{series}\n{}", after.text);
    }
    // Nothing went wrong that should not have.
    for series in [
        r#"portcullis_store_errors_total{kind="database"}"#,
        r#"portcullis_store_errors_total{kind="timeout"}"#,
        "portcullis_bus_lost_total",
        r#"portcullis_requests_total{path="fast",status="5xx"}"#,
        r#"portcullis_authentications_total{carrier="cookie",result="unavailable"}"#,
    ] {
        assert_eq!(moved(series), 0.0, "{series}");
    }
    // The fast path's request histogram is cumulative and ends at its count.
    let count = after.get(r#"portcullis_request_duration_seconds_count{path="fast"}"#);
    assert_eq!(
        after.get(r#"portcullis_request_duration_seconds_bucket{path="fast",le="+Inf"}"#),
        count
    );
    assert_eq!(after.get("portcullis_argon2_queue_depth"), 0.0);
    promtool_accepts(&after.text);
    // The public listener serves no metrics.
    let public = client.get("/metrics", &[]).await;
    assert!(!public.text().contains("portcullis_requests_total"));
}
