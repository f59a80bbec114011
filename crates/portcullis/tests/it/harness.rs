//! Shared test machinery: databases (a temporary SQLite file, or a fresh PostgreSQL
//! database per test on the real server), a real upstream, a real gateway on port 0,
//! a small HTTP client, and helpers to run the `portcullis` binary.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::routing::{any, get, post};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use portcullis_core::basic::{BasicUsers, hash_password_with};
use portcullis_core::clock::{Clock, ManualClock};
use portcullis_core::keys::SecretKey;
use portcullis_core::secret::{Key32, OsEntropy, SecretString};
use portcullis_gateway::{Gateway, GatewayConfig, PublicUrl, Upstream};
use portcullis_store::Store;
use sqlx::Connection;
use tokio::sync::oneshot;

/// A table row: name, extra request headers, expected status.
pub type HeaderRow<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16);

pub const PASSWORD: &str = "correct horse battery";
pub const ADMIN: &str = "alice";
pub const USER: &str = "bob";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Admin URL of the PostgreSQL server used to create per-test databases.
pub fn pg_admin_url() -> String {
    std::env::var("PORTCULLIS_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn random_suffix() -> String {
    let mut raw = [0u8; 8];
    portcullis_core::secret::Entropy::fill(&OsEntropy, &mut raw).unwrap();
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

/// A database that exists for one test and is removed afterwards.
pub struct TestDb {
    pub url: String,
    pub dir: PathBuf,
    pg_name: Option<String>,
}

impl TestDb {
    /// Runs `sql` on the test database directly (to break it on purpose).
    pub async fn execute(&self, sql: &'static str) {
        if self.pg_name.is_some() {
            let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
            sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
        } else {
            let mut conn = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
            sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
        }
    }

    /// Makes statements of `kind` (`INSERT`, `UPDATE`) on `table` fail until the
    /// returned statement is run.
    pub async fn refuse(&self, kind: &str, table: &str) -> &'static str {
        let (fail, heal) = if self.pg_name.is_some() {
            (
                format!(
                    "CREATE OR REPLACE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS \
                     $$ BEGIN RAISE EXCEPTION 'refused'; END $$; \
                     CREATE TRIGGER refuse BEFORE {kind} ON {table} FOR EACH ROW EXECUTE FUNCTION refuse()"
                ),
                format!("DROP TRIGGER refuse ON {table}"),
            )
        } else {
            (
                format!(
                    "CREATE TRIGGER refuse BEFORE {kind} ON {table} BEGIN SELECT RAISE(ABORT, 'refused'); END"
                ),
                "DROP TRIGGER refuse".to_owned(),
            )
        };
        self.execute(fail.leak()).await;
        heal.leak()
    }

    pub async fn new(backend: Backend) -> Self {
        let dir = std::env::temp_dir().join(format!("portcullis-it-{}", random_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        match backend {
            Backend::Sqlite => Self {
                url: format!("sqlite://{}", dir.join("portcullis.db").display()),
                dir,
                pg_name: None,
            },
            Backend::Postgres => {
                let name = format!("portcullis_it_{}", random_suffix());
                let mut conn = sqlx::PgConnection::connect(&pg_admin_url())
                    .await
                    .expect("PostgreSQL must be running on 127.0.0.1:5432 (see .ci/run)");
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                let admin = pg_admin_url();
                let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap();
                Self {
                    url: format!("{base}/{name}"),
                    dir,
                    pg_name: Some(name),
                }
            }
        }
    }
}

impl TestDb {
    /// Makes the database unreachable for everyone connected to it: the SQLite pool
    /// is closed; the PostgreSQL database is dropped with its connections killed.
    pub async fn take_offline(&self, store: &Store) {
        match &self.pg_name {
            None => store.close().await,
            Some(name) => {
                let mut conn = sqlx::PgConnection::connect(&pg_admin_url()).await.unwrap();
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE {name} WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await
                .unwrap();
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(name) = self.pg_name.take() {
            // Drop runs outside async context: use a private runtime on a thread.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(mut conn) = sqlx::PgConnection::connect(&pg_admin_url()).await {
                        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .execute(&mut conn)
                        .await;
                    }
                });
            })
            .join();
        }
    }
}

/// A real upstream application. `/echo*` answers with what it received; `/bytes/N`
/// streams N bytes; `/upload` counts the bytes of a streamed body; `/slow` stalls
/// (whatever the method).
pub struct TestUpstream {
    pub addr: SocketAddr,
}

async fn echo(request: Request) -> axum::Json<serde_json::Value> {
    let headers: BTreeMap<String, Vec<String>> = request
        .headers()
        .keys()
        .map(|k| {
            (
                k.as_str().to_owned(),
                request
                    .headers()
                    .get_all(k)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .collect(),
            )
        })
        .collect();
    axum::Json(serde_json::json!({
        "method": request.method().as_str(),
        "uri": request.uri().to_string(),
        "headers": headers,
    }))
}

async fn stream_bytes(axum::extract::Path(n): axum::extract::Path<u64>) -> Body {
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    let count = n / chunk.len() as u64;
    let stream =
        futures_util::stream::iter((0..count).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    Body::from_stream(stream)
}

async fn upload(request: Request) -> String {
    let mut body = request.into_body().into_data_stream();
    let mut total: u64 = 0;
    use futures_util::StreamExt;
    while let Some(chunk) = body.next().await {
        total += chunk.map(|c| c.len() as u64).unwrap_or(0);
    }
    total.to_string()
}

/// Close frames the WebSocket echo upstream received, by the query string of the
/// connection (tests use a unique query to find theirs).
pub fn upstream_closes()
-> &'static std::sync::Mutex<std::collections::HashMap<String, (u16, String)>> {
    static CLOSES: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<String, (u16, String)>>,
    > = std::sync::OnceLock::new();
    CLOSES.get_or_init(Default::default)
}

/// WebSocket echo: echoes every message; `close:N` closes with code N ("bye");
/// `vanish` drops the connection without a close frame;
/// `headers` answers with the handshake headers as JSON. Selects the Jupyter kernel
/// subprotocol when offered.
async fn ws_echo(
    ws: axum::extract::ws::WebSocketUpgrade,
    uri: http::Uri,
    headers: http::HeaderMap,
) -> axum::response::Response {
    use axum::extract::ws::{CloseFrame, Message};
    let mut seen: BTreeMap<String, String> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    seen.insert(":uri".into(), uri.to_string());
    let uri = uri.clone();
    ws.protocols(["v1.kernel.websocket.jupyter.org"])
        .max_message_size(64 << 20)
        .on_upgrade(move |mut socket| async move {
            while let Some(Ok(message)) = socket.recv().await {
                let reply = match message {
                    Message::Text(text) if text.starts_with("close:") => {
                        let code = text[6..].parse().unwrap_or(1000);
                        let _ = socket
                            .send(Message::Close(Some(CloseFrame {
                                code,
                                reason: "bye".into(),
                            })))
                            .await;
                        continue;
                    }
                    // Hang up without a close frame, as a crashed upstream would.
                    Message::Text(text) if text.as_str() == "vanish" => return,
                    Message::Text(text) if text.as_str() == "headers" => {
                        Message::Text(serde_json::to_string(&seen).unwrap().into())
                    }
                    Message::Close(frame) => {
                        if let Some(frame) = frame {
                            let key = uri.query().unwrap_or_default().to_owned();
                            upstream_closes()
                                .lock()
                                .unwrap()
                                .insert(key, (frame.code, frame.reason.to_string()));
                        }
                        break;
                    }
                    other => other,
                };
                if socket.send(reply).await.is_err() {
                    break;
                }
            }
        })
}

impl TestUpstream {
    pub async fn start() -> Self {
        let app = Router::new()
            .route("/ws/echo", get(ws_echo))
            .route(
                "/ws/stall",
                get(|ws: axum::extract::ws::WebSocketUpgrade| async move {
                    // Accepts, then never reads: the gateway's sends to it block.
                    ws.on_upgrade(|socket| async move {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        drop(socket);
                    })
                }),
            )
            .route("/bytes/{n}", get(stream_bytes))
            .route("/upload", post(upload))
            .route(
                "/slow",
                any(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            )
            .fallback(any(echo));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr }
    }
}

/// Cheap argon2 hashes keep tests fast; the cost parameters are what differs from
/// production, not the code path.
pub fn cheap_hash(password: &str) -> String {
    hash_password_with(&SecretString::new(password), &OsEntropy, 64, 1, 1).unwrap()
}

pub fn basic_users() -> BasicUsers {
    let hash = cheap_hash(PASSWORD);
    BasicUsers::parse(&format!("{ADMIN}:{hash};{USER}:{hash}"), ADMIN).0
}

pub fn test_secret() -> SecretKey {
    SecretKey::new(Key32::from_bytes([7; 32]))
}

/// A gateway running in this process on port 0.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub clock: Arc<ManualClock>,
    pub store: Store,
    pub client: TestClient,
    pub gateway: Gateway,
    shutdown: Option<oneshot::Sender<()>>,
}

pub fn now_ms() -> i64 {
    portcullis_core::clock::SystemClock.now_ms()
}

impl TestGateway {
    pub async fn start(db: &TestDb) -> Self {
        Self::start_with(db, |_| {}).await
    }

    pub async fn start_with(db: &TestDb, tweak: impl FnOnce(&mut GatewayConfig)) -> Self {
        Self::start_on(db, std::net::Ipv4Addr::LOCALHOST.into(), tweak).await
    }

    /// A gateway listening on `ip` (and reached through it).
    pub async fn start_on(
        db: &TestDb,
        ip: std::net::IpAddr,
        tweak: impl FnOnce(&mut GatewayConfig),
    ) -> Self {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        Self::start_listening(db, listener, tweak).await
    }

    /// A gateway on a listener bound beforehand (so its address can be told to an
    /// OpenID provider before the gateway is configured).
    pub async fn start_listening(
        db: &TestDb,
        listener: tokio::net::TcpListener,
        tweak: impl FnOnce(&mut GatewayConfig),
    ) -> Self {
        let store = Store::connect(&db.url).await.unwrap();
        Self::start_on_store(store, listener, tweak).await
    }

    /// A gateway on `store` (for instance one reaching its database through a
    /// relay the test controls).
    pub async fn start_on_store(
        store: Store,
        listener: tokio::net::TcpListener,
        tweak: impl FnOnce(&mut GatewayConfig),
    ) -> Self {
        let upstream = TestUpstream::start().await;
        let addr = listener.local_addr().unwrap();
        let mut config = GatewayConfig::new(
            Upstream::parse(&format!("http://{}", upstream.addr)).unwrap(),
            PublicUrl::parse(&format!("http://{addr}")).unwrap(),
        );
        config.basic_users = basic_users();
        config.login_limits.per_ip_per_minute = 10_000;
        config.login_limits.per_user_per_minute = 10_000;
        config.upstream_timeout = Duration::from_secs(5);
        tweak(&mut config);
        let clock = Arc::new(ManualClock::new(now_ms()));
        let gateway = Gateway::start(
            config,
            store.clone(),
            test_secret(),
            clock.clone(),
            Arc::new(OsEntropy),
        )
        .await
        .unwrap();
        let (tx, rx) = oneshot::channel();
        let served = gateway.clone();
        tokio::spawn(async move {
            portcullis_gateway::serve(listener, served, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Self {
            addr,
            clock,
            store,
            client: TestClient::new(addr),
            gateway,
            shutdown: Some(tx),
        }
    }

    /// The audit events recorded for `action`.
    pub async fn audit(&self, action: &str) -> Vec<portcullis_store::AuditEvent> {
        self.store
            .audit_events(&portcullis_store::AuditFilter {
                action: Some(action.into()),
                ..Default::default()
            })
            .await
            .unwrap()
    }

    /// Signs in through the JSON API and returns the session cookie value and the
    /// CSRF token.
    pub async fn login(&self, user: &str) -> Session {
        login(&self.client, user, PASSWORD).await
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

#[derive(Debug, Clone)]
pub struct Session {
    pub cookie: String,
    pub csrf: String,
}

impl Session {
    pub fn cookie_header(&self) -> String {
        format!(
            "portcullis_session={}; portcullis_csrf={}",
            self.cookie, self.csrf
        )
    }

    pub fn id(&self) -> String {
        self.cookie.split('.').nth(1).unwrap().to_owned()
    }
}

/// A JSON sign-in attempt; through a trusted proxy naming `from` when given.
pub async fn json_login(
    client: &TestClient,
    user: &str,
    password: &str,
    from: Option<&str>,
) -> TestResponse {
    let body = serde_json::json!({"username": user, "password": password}).to_string();
    let mut headers = vec![("content-type", "application/json")];
    headers.extend(from.map(|from| ("x-forwarded-for", from)));
    client.request("POST", "/.auth/login", &headers, body).await
}

pub async fn login(client: &TestClient, user: &str, password: &str) -> Session {
    let response = json_login(client, user, password, None).await;
    assert_eq!(response.status, 200, "login failed: {}", response.text());
    Session {
        cookie: response
            .cookie("portcullis_session")
            .expect("session cookie"),
        csrf: response.cookie("portcullis_csrf").expect("csrf cookie"),
    }
}

/// A minimal HTTP/1.1 client over a pooled connection.
#[derive(Clone)]
pub struct TestClient {
    pub addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
}

#[derive(Debug)]
pub struct TestResponse {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    /// Value of a cookie set by this response.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.set_cookie(name).map(|c| {
            c.split(';')
                .next()
                .unwrap()
                .split_once('=')
                .unwrap()
                .1
                .to_owned()
        })
    }

    /// The full `Set-Cookie` line for `name`.
    pub fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .find(|v| v.starts_with(&format!("{name}=")))
    }
}

impl TestClient {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        }
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> TestResponse {
        self.request("GET", path, headers, String::new()).await
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> TestResponse {
        let mut builder = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let request = builder.body(Full::new(body.into())).unwrap();
        // A hung exchange fails the test with its name instead of stalling the run.
        let response = tokio::time::timeout(Duration::from_secs(30), self.client.request(request))
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no answer within 30 s"))
            .unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        TestResponse {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    }
}

/// Polls `check` every 20 ms until it returns true or `within` passes; returns the
/// time it took, or `None` on timeout.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while start.elapsed() < within {
        if check().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Whether `client` stops accepting the session `cookie` header within `within`.
pub async fn refused_within(client: &TestClient, cookie: &str, within: Duration) -> bool {
    header_refused_within(client, "cookie", cookie, within).await
}

/// Whether requests carrying `name: value` are refused (401) within `within`.
pub async fn header_refused_within(
    client: &TestClient,
    name: &str,
    value: &str,
    within: Duration,
) -> bool {
    eventually(within, || {
        let (client, name, value) = (client.clone(), name.to_owned(), value.to_owned());
        async move { client.get("/echo", &[(&name, &value)]).await.status == 401 }
    })
    .await
    .is_some()
}

/// Declares one test per backend for an `async fn(Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name($crate::harness::Backend::Sqlite).await }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name($crate::harness::Backend::Postgres).await }
            )+
        }
    };
}
