//! The self-service pages in a real headless browser (Debian's Chromium driven
//! through its ChromeDriver): sign in, open the sessions page, end another
//! session and see its live WebSocket close, end all others, read the audit log.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};

use crate::both_backends;
use crate::harness::*;
use crate::websocket::{close_frame, connect_as};

both_backends!(
    sessions_page_in_a_browser,
    a_magic_link_in_a_browser,
    signing_in_and_out_in_a_browser,
);

/// The sign-in and sign-out pages as a person meets them: a failed sign-in keeps
/// the name typed; opening the sign-out address asks first, and signing out
/// says so.
async fn signing_in_and_out_in_a_browser(backend: Backend) {
    let db = TestDb::new(backend).await;
    // The operator's product name, markup and all, shown as text on every page.
    const BRAND: &str = "Acme <b>Dashboards</b>";
    let gw = TestGateway::start_with(&db, |config| config.brand_name = BRAND.into()).await;
    let base = format!("http://{}", gw.addr);
    let browser = Browser::start().await;
    let b = &browser.client;
    b.goto(&format!("{base}/.auth/login")).await.unwrap();
    assert_eq!(b.title().await.unwrap(), format!("Sign in - {BRAND}"));
    assert_eq!(browser.text(".brand").await, BRAND);
    // An error page, rendered far from the configuration, names it too.
    b.goto(&format!("{base}/.auth/magic/not-a-link"))
        .await
        .unwrap();
    browser.wait_text("h1", "This link is not valid").await;
    assert_eq!(browser.text(".brand").await, BRAND);
    b.goto(&format!("{base}/.auth/login")).await.unwrap();
    browser.type_into("#username", USER).await;
    browser.type_into("#password", "not the password").await;
    browser.click("form button[type=submit]").await;
    browser.wait_text("[role=alert]", "").await;
    let kept = b
        .find(Locator::Css("#username"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap();
    assert_eq!(kept.as_deref(), Some(USER), "the name typed is kept");
    browser.type_into("#password", PASSWORD).await;
    browser.click("form button[type=submit]").await;
    // Signed in (the test upstream answers), then to the sign-out address.
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.goto(&format!("{base}/.auth/logout")).await.unwrap();
    browser.wait_text("h1", "Sign out").await;
    assert!(browser.text("main").await.contains(USER));
    browser.click("form button[type=submit]").await;
    browser
        .wait_text("[role=status]", "You have been signed out")
        .await;
    assert_eq!(b.current_url().await.unwrap().path(), "/.auth/login");
    // Signed out for real: the sign-out address now sends to the sign-in page.
    b.goto(&format!("{base}/.auth/logout")).await.unwrap();
    browser.wait_text("h1", "Sign in").await;
}

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A ChromeDriver process and a browser session on it; both end on drop.
pub struct Browser {
    pub client: Client,
    driver: Child,
    /// The browser's profile directory, unique to this browser: it names the
    /// browser's processes on the command line.
    profile: std::path::PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // A test that fails before closing the session leaves no Chromium behind.
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", &self.profile.display().to_string()])
            .status();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Browser {
    pub async fn start() -> Self {
        assert!(
            std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists(),
            "Chromium and ChromeDriver are not installed: run scripts/ensure-browser (scripts/test does)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let profile =
            std::env::temp_dir().join(format!("portcullis-browser-{port}-{}", std::process::id()));
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--user-agent=PortcullisTestBrowser/1.0",
                         format!("--user-data-dir={}", profile.display())],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let mut last = None;
        for _ in 0..100 {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => {
                    return Self {
                        client,
                        driver,
                        profile,
                    };
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("ChromeDriver did not start: {last:?}");
    }

    /// Types `text` into the first element matching `css`.
    async fn type_into(&self, css: &str, text: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap()
            .send_keys(text)
            .await
            .unwrap();
    }

    /// Clicks the first element matching `css`.
    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    /// Waits until the element matching `css` says `needle` (the page a submitted
    /// form leads to loads after the click returns), and returns its text.
    async fn wait_text(&self, css: &str, needle: &str) -> String {
        let mut last = String::new();
        for _ in 0..200 {
            if let Ok(element) = self.client.find(Locator::Css(css)).await
                && let Ok(text) = element.text().await
            {
                if text.contains(needle) {
                    return text;
                }
                last = text;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{css} never said {needle:?}; last: {last:?}");
    }

    /// Waits until the address holds `needle`.
    async fn wait_url(&self, needle: &str) {
        for _ in 0..200 {
            if self
                .client
                .current_url()
                .await
                .unwrap()
                .as_str()
                .contains(needle)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the address never held {needle:?}");
    }

    /// The text of the first element matching `css`, waiting for it to appear
    /// (a submitted form's answer loads after the click returns).
    async fn text(&self, css: &str) -> String {
        self.client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .text()
            .await
            .unwrap()
    }
}

async fn sessions_page_in_a_browser(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let base = format!("http://{}", gw.addr);
    // Bob is also signed in elsewhere, with a live WebSocket.
    let phone = gw.login(USER).await;
    let mut phone_ws = connect_as(gw.addr, &phone).await;
    let tablet = gw.login(USER).await;

    let browser = Browser::start().await;
    let b = &browser.client;
    // Not signed in: the page sends the browser to sign in, and back.
    b.goto(&format!("{base}/.auth/sessions")).await.unwrap();
    assert!(
        b.current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/.auth/login")
    );
    browser.type_into("#username", USER).await;
    browser.type_into("#password", PASSWORD).await;
    browser.click("form button[type=submit]").await;
    browser.wait_text("h1", "Sessions of").await;
    let url = b.current_url().await.unwrap();
    assert_eq!(url.path(), "/.auth/sessions", "{url}");
    assert!(browser.text("h1").await.contains(USER));

    // Three sessions: this browser (marked, no End button), the phone with its
    // live WebSocket, the tablet.
    let phone_row = format!("tr[data-session='{}']", phone.id());
    assert_eq!(browser.text(&format!("{phone_row} td.live")).await, "1");
    let current = browser.text("tr.current").await;
    assert!(current.contains("PortcullisTestBrowser"), "{current}");
    assert!(current.contains("this browser"));
    assert!(
        b.find_all(Locator::Css("tr.current form"))
            .await
            .unwrap()
            .is_empty()
    );

    // End the phone's session: its WebSocket closes with 4401 at once.
    browser.click(&format!("{phone_row} form button")).await;
    let frame = close_frame(&mut phone_ws, Duration::from_secs(1)).await;
    assert_eq!(frame.map(|f| u16::from(f.code)), Some(4401));
    browser.wait_text("[role=status]", "was ended").await;
    assert!(
        b.find_all(Locator::Css(&phone_row))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        gw.client
            .get("/echo", &[("cookie", &phone.cookie_header())])
            .await
            .status,
        401
    );

    // End all others: the tablet goes, this browser stays signed in.
    browser.click("form.inline button").await;
    browser
        .wait_text("[role=status]", "All other sessions")
        .await;
    assert!(refused_within(&gw.client, &tablet.cookie_header(), Duration::from_secs(1)).await);
    assert_eq!(b.find_all(Locator::Css("tbody tr")).await.unwrap().len(), 1);
    // A user has no audit log and no view of everyone's sessions.
    assert!(
        b.find_all(Locator::Css("a[href$='/audit']"))
            .await
            .unwrap()
            .is_empty()
    );
    b.goto(&format!("{base}/.auth/audit")).await.unwrap();
    assert!(browser.text("h1").await.contains("403"));

    // An admin in a fresh browser sees everyone's sessions and the audit log.
    browser.client.clone().close().await.unwrap();
    drop(browser);
    let admin = Browser::start().await;
    let a = &admin.client;
    a.goto(&format!("{base}/.auth/login?next=/.auth/sessions"))
        .await
        .unwrap();
    admin.type_into("#username", ADMIN).await;
    admin.type_into("#password", PASSWORD).await;
    admin.click("form button[type=submit]").await;
    admin.wait_text("h2", "Everyone").await;
    admin.click("a[href$='/audit']").await;
    admin.wait_text("h1", "Audit log").await;
    let log = admin.text("table").await;
    assert!(log.contains("auth.session.revoke"), "{log}");
    // Filters are a plain GET form.
    admin.type_into("input[name=action]", "auth.login").await;
    admin.click("form.filters button").await;
    admin.wait_url("action=auth.login").await;
    let filtered = admin.text("tbody").await;
    assert!(
        filtered.contains("auth.login") && !filtered.contains("auth.session.revoke"),
        "{filtered}"
    );
    admin.client.clone().close().await.unwrap();
}

/// A client in a browser: inside the scope without a session, the page says to
/// ask for a new link; the link signs in and lands on the client's pages with the
/// secret gone from the address; outside the scope, access is limited.
async fn a_magic_link_in_a_browser(backend: Backend) {
    let db = TestDb::new(backend).await;
    let gw = TestGateway::start(&db).await;
    let base = format!("http://{}", gw.addr);
    let spec =
        portcullis_core::client::ClientSpec::new("acme", "ACME", &["/portal/"], &[] as &[&str])
            .unwrap();
    portcullis_gateway::clients::create_client(
        &gw.store,
        &spec,
        false,
        &portcullis_core::secret::OsEntropy,
        now_ms(),
    )
    .await
    .unwrap();
    gw.gateway.clients().reload(&gw.store).await.unwrap();
    let (_, secret) = portcullis_gateway::clients::create_link(
        &gw.store,
        "acme",
        None,
        None,
        &portcullis_core::secret::OsEntropy,
        now_ms(),
    )
    .await
    .unwrap();
    let secret = secret.expose().to_owned();

    let browser = Browser::start().await;
    let b = &browser.client;
    b.goto(&format!("{base}/portal/report")).await.unwrap();
    browser.wait_text("h1", "Access required").await;
    let said = browser.text("p:not(.brand)").await;
    assert!(said.contains("new link"), "{said}");
    assert!(
        b.find_all(Locator::Css("input[type=password]"))
            .await
            .unwrap()
            .is_empty(),
        "not the sign-in form"
    );

    b.goto(&format!("{base}/.auth/magic/{secret}?next=/portal/report"))
        .await
        .unwrap();
    browser.wait_url("/portal/report").await;
    let url = b.current_url().await.unwrap();
    assert!(!url.as_str().contains(&secret), "{url}");
    let body = browser.text("body").await;
    assert!(body.contains("x-forwarded-user"), "{body}");
    assert!(body.contains("acme"), "{body}");
    assert!(
        !body.contains(&secret),
        "the upstream never sees the secret"
    );

    b.goto(&format!("{base}/elsewhere/")).await.unwrap();
    browser.wait_text("h1", "Access is limited").await;
    browser.client.clone().close().await.unwrap();
}
