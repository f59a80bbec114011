//! Tests that run the real `portcullis` binary: several gateway processes on one
//! database, `kill -9` and restart, and the operator commands.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;

use crate::both_backends;
use crate::harness::*;

pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// Made by Python argon2-cffi 25.1 `PasswordHasher().hash("correct horse")`
/// (its defaults: argon2id, m=65536, t=3, p=4).
const CFFI_HASH: &str = "$argon2id$v=19$m=65536,t=3,p=4$/OM+x2kf9PGTa17ocdGIhQ$ZjDM0SlpgJaJdMSmaOFuWloJmgfC1tCb7hSSdj0YK2o";

fn secret_b64() -> String {
    base64::engine::general_purpose::STANDARD.encode([7u8; 32])
}

pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// `portcullis` with a clean environment pointing at `db`.
pub fn command(db: &TestDb) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .env("PORTCULLIS_DATABASE", &db.url)
        .env("PORTCULLIS_DATA_DIR", &db.dir)
        .env("PORTCULLIS_SECRET_KEY", secret_b64());
    cmd
}

/// A `portcullis serve` process, killed on drop.
pub struct Replica {
    pub child: Child,
    pub client: TestClient,
}

impl Replica {
    pub async fn start(db: &TestDb, upstream: SocketAddr, listen: SocketAddr, users: &str) -> Self {
        Self::start_with(db, listen, |cmd| {
            cmd.env("PORTCULLIS_UPSTREAM", format!("http://{upstream}"))
                .env("AUTH_BASIC_USERS", users);
        })
        .await
    }

    /// `portcullis serve` on `listen`, with `configure` adding arguments and
    /// environment; returns once the gateway answers `readyz`.
    pub async fn start_with(
        db: &TestDb,
        listen: SocketAddr,
        configure: impl FnOnce(&mut Command),
    ) -> Self {
        let mut cmd = command(db);
        cmd.arg("serve")
            .env("PORTCULLIS_LISTEN", listen.to_string())
            .env("PORTCULLIS_LOGIN_RATE_PER_IP", "1000")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        configure(&mut cmd);
        let child = cmd.spawn().unwrap();
        let client = TestClient::new(listen);
        let ready = eventually(Duration::from_secs(20), || {
            let client = client.clone();
            async move {
                tokio::time::timeout(Duration::from_millis(500), async {
                    let mut builder = hyper_util::client::legacy::connect::HttpConnector::new();
                    builder.set_connect_timeout(Some(Duration::from_millis(200)));
                    tokio::net::TcpStream::connect(client.addr).await.is_ok()
                })
                .await
                .unwrap_or(false)
            }
        })
        .await;
        assert!(ready.is_some(), "portcullis serve did not start listening");
        let mut replica = Self { child, client };
        assert_eq!(replica.client.get("/.auth/readyz", &[]).await.status, 200);
        assert!(replica.child.try_wait().unwrap().is_none());
        replica
    }

    /// `portcullis serve` writing its log to `log` (for tests that read it),
    /// with `RUST_LOG` as `filter` and `configure` adding more; returns once it
    /// listens.
    pub async fn logging_to(
        db: &TestDb,
        upstream: SocketAddr,
        listen: SocketAddr,
        log: &std::path::Path,
        filter: &str,
        configure: impl FnOnce(&mut Command),
    ) -> Self {
        let mut cmd = command(db);
        cmd.arg("serve")
            .env("RUST_LOG", filter)
            .env("PORTCULLIS_LISTEN", listen.to_string())
            .env("PORTCULLIS_UPSTREAM", format!("http://{upstream}"))
            .env("AUTH_BASIC_USERS", users())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap());
        configure(&mut cmd);
        let replica = Replica {
            child: cmd.spawn().unwrap(),
            client: TestClient::new(listen),
        };
        let up = eventually(Duration::from_secs(20), || async move {
            tokio::net::TcpStream::connect(listen).await.is_ok()
        })
        .await;
        assert!(up.is_some());
        replica
    }

    pub fn kill9(&mut self) {
        // SIGKILL: no shutdown hook runs, nothing is flushed by us.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn users() -> String {
    format!("{USER}:{}", cheap_hash(PASSWORD))
}

async fn sessions_survive_kill_9(backend: Backend) {
    let db = TestDb::new(backend).await;
    let upstream = TestUpstream::start().await;
    let listen = free_port();
    let users = users();
    let mut first = Replica::start(&db, upstream.addr, listen, &users).await;
    let session = login(&first.client, USER, PASSWORD).await;
    first.kill9();
    let second = Replica::start(&db, upstream.addr, listen, &users).await;
    let r = second
        .client
        .get("/echo", &[("cookie", &session.cookie_header())])
        .await;
    assert_eq!(r.status, 200, "session lost across kill -9: {}", r.text());
    assert_eq!(
        r.json()["headers"]["x-forwarded-user"],
        serde_json::json!([USER])
    );
}

async fn revocation_reaches_every_replica_within_a_second(backend: Backend) {
    let db = TestDb::new(backend).await;
    let upstream = TestUpstream::start().await;
    let users = users();
    let a = Replica::start(&db, upstream.addr, free_port(), &users).await;
    let b = Replica::start(&db, upstream.addr, free_port(), &users).await;
    let session = login(&a.client, USER, PASSWORD).await;
    let cookie = session.cookie_header();
    for replica in [&a, &b] {
        assert_eq!(
            replica
                .client
                .get("/echo", &[("cookie", &cookie)])
                .await
                .status,
            200
        );
    }
    // A live WebSocket on replica b, carried by the same session.
    let mut socket = crate::websocket::connect_as(b.client.addr, &session).await;
    // Revoke from the CLI, a third process.
    let out = command(&db)
        .args(["sessions", "revoke", &session.id()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, replica) in [("a", &a), ("b", &b)] {
        assert!(
            refused_within(&replica.client, &cookie, Duration::from_secs(1)).await,
            "replica {name} still accepts the revoked session after 1 s"
        );
    }
    let frame = crate::websocket::close_frame(&mut socket, Duration::from_secs(1))
        .await
        .expect("the WebSocket on replica b was not closed within 1 s");
    assert_eq!(u16::from(frame.code), 4401);
    assert_eq!(frame.reason.as_str(), "session revoked");
    // Logout on one replica is refused on the other within a second as well.
    let second = login(&b.client, USER, PASSWORD).await;
    assert_eq!(
        a.client
            .get("/echo", &[("cookie", &second.cookie_header())])
            .await
            .status,
        200
    );
    let r = b
        .client
        .request(
            "POST",
            "/.auth/logout",
            &[
                ("cookie", &second.cookie_header()),
                ("x-csrf-token", &second.csrf),
                ("accept", "application/json"),
            ],
            "",
        )
        .await;
    assert_eq!(r.status, 204);
    assert!(
        refused_within(&a.client, &second.cookie_header(), Duration::from_secs(1)).await,
        "logout on b not honoured by a within 1 s"
    );
}

async fn cli_operates_on_sessions_and_keys(backend: Backend) {
    let db = TestDb::new(backend).await;
    let upstream = TestUpstream::start().await;
    let users = format!(
        "{USER}:{};{ADMIN}:{}",
        cheap_hash(PASSWORD),
        cheap_hash(PASSWORD)
    );
    let gw = Replica::start(&db, upstream.addr, free_port(), &users).await;
    let bob1 = login(&gw.client, USER, PASSWORD).await;
    let bob2 = login(&gw.client, USER, PASSWORD).await;
    let alice = login(&gw.client, ADMIN, PASSWORD).await;

    let out = command(&db)
        .args(["sessions", "list", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let listed: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|s| s["status"] == "live"));

    // Rotation while serving: old cookies keep working.
    let out = command(&db).args(["keys", "rotate"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("sk-"));
    assert_eq!(
        gw.client
            .get("/echo", &[("cookie", &bob1.cookie_header())])
            .await
            .status,
        200
    );

    // Bob's API token (tied to his basic identity, expiring in an hour).
    let out = command(&db)
        .args([
            "api-tokens",
            "create",
            "--user",
            USER,
            "--provider",
            "basic",
            "--ttl",
            "1h",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bearer = format!("Bearer {}", String::from_utf8_lossy(&out.stdout).trim());
    assert_eq!(
        gw.client
            .get("/echo", &[("authorization", &bearer)])
            .await
            .status,
        200
    );
    let out = command(&db)
        .args(["api-tokens", "list", "--json"])
        .output()
        .unwrap();
    let listed: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(listed["provider"], "basic");
    assert!(listed["expires_at"].is_string(), "{listed}");
    for bad in [&["--ttl", "soon"][..], &["--ttl", "1s"][..]] {
        let out = command(&db)
            .args(["api-tokens", "create", "--user", USER])
            .args(bad)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad:?}");
    }

    let out = command(&db)
        .args(["sessions", "revoke", "--user", USER, "--api-tokens"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(said.matches("revoked ses-").count(), 2, "{said}");
    assert_eq!(said.matches("revoked tok-").count(), 1, "{said}");
    assert!(
        header_refused_within(&gw.client, "authorization", &bearer, Duration::from_secs(1)).await
    );
    for s in [&bob1, &bob2] {
        assert!(refused_within(&gw.client, &s.cookie_header(), Duration::from_secs(1)).await);
    }
    assert_eq!(
        gw.client
            .get("/echo", &[("cookie", &alice.cookie_header())])
            .await
            .status,
        200
    );
    let out = command(&db)
        .args(["sessions", "revoke", "ses-AAAAAAAAAAAAAAAAAAAAAA"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "revoking an unknown session must say so"
    );
    let out = command(&db)
        .args(["sessions", "list", "--all", "--json"])
        .output()
        .unwrap();
    let statuses: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["status"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| *s == "session revoked").count(),
        2,
        "{statuses:?}"
    );
}

/// One ticket, 100 simultaneous upgrades spread over two gateway processes: the
/// database's atomic consumption lets exactly one through.
async fn a_ticket_is_consumed_exactly_once_across_replicas(backend: Backend) {
    let db = TestDb::new(backend).await;
    let upstream = TestUpstream::start().await;
    let users = users();
    let a = Replica::start(&db, upstream.addr, free_port(), &users).await;
    let b = Replica::start(&db, upstream.addr, free_port(), &users).await;
    let session = login(&a.client, USER, PASSWORD).await;
    let ticket = crate::websocket::mint_ticket(&a.client, &session).await;
    let attempts: Vec<_> = (0..100)
        .map(|i| {
            let addr = if i % 2 == 0 {
                a.client.addr
            } else {
                b.client.addr
            };
            let path = format!("/ws/echo?ticket={ticket}");
            tokio::spawn(async move {
                match crate::websocket::connect(addr, &path, &[]).await {
                    Ok((socket, response)) => (response.status().as_u16(), Some(socket)),
                    Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                        (response.status().as_u16(), None)
                    }
                    Err(e) => panic!("handshake failed: {e}"),
                }
            })
        })
        .collect();
    let mut statuses = Vec::new();
    let mut sockets = Vec::new();
    for attempt in attempts {
        let (status, socket) = attempt.await.unwrap();
        statuses.push(status);
        sockets.extend(socket);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 101).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 403).count(),
        99,
        "{statuses:?}"
    );
}

async fn api_tokens_from_the_cli_work_on_every_replica(backend: Backend) {
    let db = TestDb::new(backend).await;
    let upstream = TestUpstream::start().await;
    let users = users();
    let a = Replica::start(&db, upstream.addr, free_port(), &users).await;
    let b = Replica::start(&db, upstream.addr, free_port(), &users).await;
    let out = command(&db)
        .args([
            "api-tokens",
            "create",
            "--user",
            "ci-bot",
            "--label",
            "nightly",
            "--force",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(secret.starts_with("pct_"), "{secret}");
    let bearer = format!("Bearer {secret}");
    for replica in [&a, &b] {
        let r = replica
            .client
            .get("/echo", &[("authorization", &bearer)])
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.json()["headers"]["x-forwarded-user"],
            serde_json::json!(["ci-bot"])
        );
    }
    let out = command(&db)
        .args(["api-tokens", "list", "--json"])
        .output()
        .unwrap();
    let listed: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(listed["label"], "nightly");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(&secret),
        "list must never show secrets"
    );
    let id = listed["id"].as_str().unwrap().to_owned();
    let mut socket =
        crate::websocket::connect(b.client.addr, "/ws/echo", &[("authorization", &bearer)])
            .await
            .unwrap()
            .0;
    let out = command(&db)
        .args(["api-tokens", "revoke", &id])
        .output()
        .unwrap();
    assert!(out.status.success());
    let frame = crate::websocket::close_frame(&mut socket, Duration::from_secs(1))
        .await
        .expect("socket closed within 1 s");
    assert_eq!(u16::from(frame.code), 4401);
    for replica in [&a, &b] {
        assert!(
            header_refused_within(
                &replica.client,
                "authorization",
                &bearer,
                Duration::from_secs(1)
            )
            .await,
            "revoked token accepted after 1 s"
        );
    }
}

/// `--users-file`: a user removed from the file is signed out everywhere within
/// a second (sessions, live WebSockets, on every replica reading it); SIGHUP
/// reloads too (a changed hash signs the user out); a file that does not parse
/// changes nothing.
async fn a_users_file_reloads_and_signs_out(backend: Backend) {
    let db = TestDb::new(backend).await;
    let upstream = TestUpstream::start().await;
    let file = db.dir.join("users");
    let line = |name: &str, password: &str| format!("{name}:{}\n", cheap_hash(password));
    let alice_line = line(ADMIN, PASSWORD);
    std::fs::write(
        &file,
        format!("# who may sign in\n{alice_line}\n{}", line(USER, PASSWORD)),
    )
    .unwrap();
    let start = |listen| {
        let (db, file) = (&db, file.clone());
        async move {
            Replica::start_with(db, listen, |cmd| {
                cmd.env("PORTCULLIS_UPSTREAM", format!("http://{}", upstream.addr))
                    .env("PORTCULLIS_USERS_FILE", &file);
            })
            .await
        }
    };
    let a = start(free_port()).await;
    // Two replicas read the file on PostgreSQL; one is enough on SQLite.
    let b = match backend {
        Backend::Postgres => Some(start(free_port()).await),
        Backend::Sqlite => None,
    };
    let other = b.as_ref().unwrap_or(&a);
    let bob = login(&a.client, USER, PASSWORD).await;
    let alice = login(&a.client, ADMIN, PASSWORD).await;
    let mut socket = crate::websocket::connect_as(other.client.addr, &bob).await;

    // bob leaves the file: signed out everywhere within a second.
    std::fs::write(&file, &alice_line).unwrap();
    let closed = crate::websocket::close_frame(&mut socket, Duration::from_secs(2))
        .await
        .expect("bob's WebSocket closed");
    assert_eq!(u16::from(closed.code), 4401);
    for replica in [&a, other] {
        assert!(
            refused_within(
                &replica.client,
                &bob.cookie_header(),
                Duration::from_secs(1)
            )
            .await,
            "bob still accepted"
        );
        let r = replica
            .client
            .get("/echo", &[("cookie", &alice.cookie_header())])
            .await;
        assert_eq!(r.status, 200, "alice is still signed in");
    }

    // A file that does not parse changes nothing.
    std::fs::write(&file, format!("{alice_line}carol:plaintext\n")).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let seen = std::fs::metadata(&file).unwrap().modified().unwrap();
    let r = a
        .client
        .get("/echo", &[("cookie", &alice.cookie_header())])
        .await;
    assert_eq!(r.status, 200, "a broken file signs no one out");

    // SIGHUP: alice's hash changes while the file keeps its old time, so only
    // the signal can make the change seen; her session ends.
    std::fs::write(&file, line(ADMIN, "a new password")).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(seen)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = a
        .client
        .get("/echo", &[("cookie", &alice.cookie_header())])
        .await;
    assert_eq!(r.status, 200, "not reloaded before the signal");
    let hup = Command::new("kill")
        .args(["-HUP", &a.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    assert!(
        refused_within(&a.client, &alice.cookie_header(), Duration::from_secs(1)).await,
        "a changed hash signs the user out"
    );
    login(&a.client, ADMIN, "a new password").await;
}

both_backends!(
    api_tokens_from_the_cli_work_on_every_replica,
    a_users_file_reloads_and_signs_out,
    a_ticket_is_consumed_exactly_once_across_replicas,
    sessions_survive_kill_9,
    revocation_reaches_every_replica_within_a_second,
    cli_operates_on_sessions_and_keys,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argon2_cffi_hashes_log_in() {
    let db = TestDb::new(Backend::Sqlite).await;
    let upstream = TestUpstream::start().await;
    let gw = Replica::start(
        &db,
        upstream.addr,
        free_port(),
        &format!("carol:{CFFI_HASH}"),
    )
    .await;
    let session = login(&gw.client, "carol", "correct horse").await;
    assert_eq!(
        gw.client
            .get("/echo", &[("cookie", &session.cookie_header())])
            .await
            .status,
        200
    );
}

/// Passwords, cookies and the secret key never reach the log, even at debug level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_log() {
    let db = TestDb::new(Backend::Sqlite).await;
    let upstream = TestUpstream::start().await;
    let log = db.dir.join("serve.log");
    let mut replica =
        Replica::logging_to(&db, upstream.addr, free_port(), &log, "debug", |_| {}).await;
    let wrong =
        serde_json::json!({"username": USER, "password": "hunter2-wrong-guess"}).to_string();
    let r = replica
        .client
        .request(
            "POST",
            "/.auth/login",
            &[("content-type", "application/json")],
            wrong,
        )
        .await;
    assert_eq!(r.status, 401);
    let session = login(&replica.client, USER, PASSWORD).await;
    let forged = format!("portcullis_session={}x", session.cookie);
    replica.client.get("/echo", &[("cookie", &forged)]).await;
    replica
        .client
        .get("/echo", &[("cookie", &session.cookie_header())])
        .await;
    replica.kill9();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("auth.login"),
        "the log should hold the audit lines:\n{text}"
    );
    // Not every statement of the bus's polls (five a second) at debug.
    assert!(
        !text.contains("sqlx::query"),
        "statements are logged at debug:\n{text}"
    );
    let mac = session.cookie.rsplit('.').next().unwrap();
    for secret in [
        "hunter2-wrong-guess",
        PASSWORD,
        mac,
        &session.csrf,
        &secret_b64(),
    ] {
        assert!(!text.contains(secret), "log leaks {secret:?}");
    }
}

#[test]
fn hash_password_reads_one_line_from_stdin() {
    let mut child = Command::new(BIN)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"s3cret pass\nignored second line\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap();
    let hash = hash.trim();
    assert!(
        hash.starts_with("$argon2id$v=19$m=65536,t=3,p=4$"),
        "{hash}"
    );
    let ok = portcullis_core::basic::verify_password(
        hash,
        &portcullis_core::secret::SecretString::new("s3cret pass"),
    );
    assert!(ok);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("s3cret"));
}

#[test]
fn check_config_lists_every_problem() {
    let out = Command::new(BIN)
        .env_clear()
        .args([
            "check-config",
            "--listen",
            "nowhere",
            "--public-url",
            "ftp://x",
            "--session-ttl",
            "soon",
        ])
        .env("AUTH_BASIC_USERS", "alice:plaintext;:$argon2id$x;bob")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--listen",
        "--upstream",
        "--public-url",
        "--session-ttl",
        "entry 1",
        "entry 2",
        "entry 3",
        "4 problem(s)",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(
        !text.contains("plaintext"),
        "hash field must never be printed"
    );

    let dir = std::env::temp_dir().join(format!("pc-check-{}", std::process::id()));
    let out = Command::new(BIN)
        .env_clear()
        .args([
            "check-config",
            "--upstream",
            "http://127.0.0.1:8888",
            "--data-dir",
        ])
        .arg(&dir)
        .env("AUTH_BASIC_USERS", format!("alice:{CFFI_HASH}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !dir.join("secret.key").exists(),
        "check-config must not write anything"
    );
}

/// `--log-format json` writes one JSON object per line, the access log's and the
/// audit events' parts as keys (not JSON inside a message); text logs written to
/// a file carry no colour codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_structured_and_plain_off_a_terminal() {
    let db = TestDb::new(Backend::Sqlite).await;
    let upstream = TestUpstream::start().await;
    for format in ["json", "text"] {
        let log = db.dir.join(format!("serve-{format}.log"));
        let filter = "info,portcullis::access=info";
        let mut replica =
            Replica::logging_to(&db, upstream.addr, free_port(), &log, filter, |cmd| {
                cmd.env("PORTCULLIS_LOG_FORMAT", format);
            })
            .await;
        let wrong = serde_json::json!({"username": USER, "password": "wrong"}).to_string();
        let r = replica
            .client
            .request(
                "POST",
                "/.auth/login",
                &[("content-type", "application/json")],
                wrong,
            )
            .await;
        assert_eq!(r.status, 401);
        let session = login(&replica.client, USER, PASSWORD).await;
        let r = replica
            .client
            .get("/echo", &[("cookie", &session.cookie_header())])
            .await;
        assert_eq!(r.status, 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
        replica.kill9();
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            !text.contains('\u{1b}'),
            "{format}: colour codes in a file:\n{text}"
        );
        if format == "text" {
            assert!(text.contains("auth.login"), "{text}");
            continue;
        }
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        let failed = lines
            .iter()
            .find(|l| {
                l["target"] == "portcullis::audit"
                    && l["action"] == "auth.login"
                    && l["outcome"] == "failure"
            })
            .unwrap_or_else(|| panic!("no audit line for the failed sign-in:\n{text}"));
        assert_eq!(failed["object"], USER);
        assert_eq!(failed["reason"], "bad_password");
        assert_eq!(failed["count"], 1);
        let access = lines
            .iter()
            .find(|l| l["target"] == "portcullis::access" && l["path"] == "/echo")
            .unwrap_or_else(|| panic!("no access line:\n{text}"));
        assert_eq!(access["method"], "GET");
        assert_eq!(access["status"], 200);
        assert!(
            access["request_id"].is_string() && access["total_ms"].is_number(),
            "{access}"
        );
    }
}

/// The demo leaves no directory behind when it cannot start (its port taken).
#[test]
fn the_demo_cleans_up_when_its_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tmp = std::env::temp_dir().join(format!("pc-demo-tmp-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let out = Command::new(BIN)
        .env_clear()
        .env("TMPDIR", &tmp)
        .args(["demo", "--listen", &taken.local_addr().unwrap().to_string()])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the demo cannot listen on a taken port"
    );
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Database errors reach the operator as one sentence naming what happened (and
/// the fix), never the driver's text twice. A row: the database URL, what the
/// message must say.
#[test]
fn database_errors_are_one_readable_sentence() {
    let free = free_port();
    let admin = pg_admin_url();
    let server = admin.rsplit_once('/').unwrap().0;
    let missing = format!("{server}/portcullis_no_such_database");
    let refused = format!("postgres://postgres@{free}/portcullis");
    let rows = [
        (refused.as_str(), "the database refused the connection"),
        (missing.as_str(), "createdb portcullis_no_such_database"),
    ];
    for (url, needle) in rows {
        let out = Command::new(BIN)
            .env_clear()
            .env("PORTCULLIS_SECRET_KEY", secret_b64())
            .args(["sessions", "list", "--database", url])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{url}");
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains(needle), "{url}: {text}");
        assert!(!text.contains("pool timed out"), "{url}: {text}");
        assert_eq!(text.lines().count(), 1, "{url}: one line: {text}");
    }
}

/// The complete example configuration.
const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../docs/portcullis.example.toml"
);

/// The systemd unit in `packaging/` passes `systemd-analyze verify` (with the
/// binary where the unit expects it, here the one under test).
#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../packaging/portcullis.service"
    ))
    .unwrap();
    let dir = std::env::temp_dir().join(format!("pc-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("portcullis.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/portcullis", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd package) must be installed");
    let _ = std::fs::remove_dir_all(&dir);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(
        !said.contains("portcullis.service"),
        "warnings about the unit: {said}"
    );
}

/// `check-config` catches what would lock everyone out and says how to fix what
/// operators commonly get wrong. A row: name, arguments, environment, whether it
/// passes, what its output must say.
#[test]
fn each_commands_help_lists_only_the_settings_it_reads() {
    // (arguments, in the help, not in the help)
    let rows: &[(&[&str], &[&str], &[&str])] = &[
        (
            &["serve", "--help"],
            &[
                "--upstream",
                "--database",
                "--metrics-listen",
                "--brand-name",
                "--config",
            ],
            &[],
        ),
        (
            &["check-config", "--help"],
            &["--upstream", "--users-file", "--config"],
            &[],
        ),
        (
            &["sessions", "list", "--help"],
            &[
                "--database",
                "--data-dir",
                "--db-timeout",
                "--user",
                "--config",
            ],
            &[
                "--upstream",
                "--listen",
                "--brand-name",
                "--users-file",
                "--ws-reject",
            ],
        ),
        (
            &["api-tokens", "create", "--help"],
            &["--database", "--users-file", "--force"],
            &["--upstream", "--metrics-listen"],
        ),
        (
            &["tokens", "create", "--help"],
            &["--database", "--public-url", "--auth-prefix", "--client"],
            &["--upstream", "--users-file"],
        ),
        (
            &["hash-password", "--help"],
            &["--log-format"],
            &["--database", "--upstream"],
        ),
        (
            &["--help"],
            &["serve", "sessions", "--config", "portcullis serve --help"],
            &["--upstream", "--database"],
        ),
    ];
    for (args, present, absent) in rows {
        let out = Command::new(BIN).env_clear().args(*args).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}");
        for needle in *present {
            assert!(help.contains(needle), "{args:?}: no {needle} in\n{help}");
        }
        for needle in *absent {
            assert!(!help.contains(needle), "{args:?}: {needle} in\n{help}");
        }
    }
    // Settings are still accepted before the command.
    let dir = std::env::temp_dir().join(format!("pc-help-{}", std::process::id()));
    let out = Command::new(BIN)
        .env_clear()
        .arg("--data-dir")
        .arg(&dir)
        .args(["sessions", "list"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains(&dir.display().to_string()), "{said}");
}

#[test]
fn check_config_rows() {
    let dir = std::env::temp_dir().join(format!("pc-check-rows-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let toml = dir.join("users.toml");
    std::fs::write(
        &toml,
        format!("upstream = \"http://127.0.0.1:9\"\nbasic_users = [\"alice:{CFFI_HASH}\", \"bob:{CFFI_HASH}\"]\n"),
    )
    .unwrap();
    let good = format!("alice:{CFFI_HASH}");
    let truncated = format!("{good};carol:$argon2id$v=19$m=8,t=1,p=1$c29tZXNhbHQ");
    let commas = format!("alice:{CFFI_HASH},bob:{CFFI_HASH}");
    let hex = "ab".repeat(32);
    let long_brand = "é".repeat(65);
    let config = toml.display().to_string();
    type Row<'a> = (
        &'a str,
        Vec<&'a str>,
        Vec<(&'a str, &'a str)>,
        bool,
        Vec<&'a str>,
    );
    let rows: Vec<Row> = vec![
        (
            "valid",
            vec![],
            vec![("AUTH_BASIC_USERS", &good)],
            true,
            vec!["configuration is valid"],
        ),
        (
            "no one can sign in",
            vec![],
            vec![],
            false,
            vec!["no one can sign in", "1 problem(s)"],
        ),
        (
            "an admin who is not a user",
            vec![],
            vec![
                ("AUTH_BASIC_USERS", &good),
                ("AUTH_BASIC_ADMINS", "alice, carol"),
            ],
            true,
            vec!["\"carol\", who is not in AUTH_BASIC_USERS"],
        ),
        (
            "idle timeout past the lifetime",
            vec!["--session-ttl", "1h", "--session-idle-timeout", "2h"],
            vec![("AUTH_BASIC_USERS", &good)],
            true,
            vec!["never ends a session"],
        ),
        (
            "a truncated hash",
            vec![],
            vec![("AUTH_BASIC_USERS", &truncated)],
            true,
            vec!["user \"carol\") has an unparsable or truncated argon2 hash"],
        ),
        (
            "comma-separated entries",
            vec![],
            vec![("AUTH_BASIC_USERS", &commas)],
            false,
            vec!["separated by `;`", "no one can sign in"],
        ),
        (
            "a hex secret key",
            vec![],
            vec![("AUTH_BASIC_USERS", &good), ("PORTCULLIS_SECRET_KEY", &hex)],
            false,
            vec!["looks like hex", "portcullis secret generate"],
        ),
        (
            "a secret key of the wrong length",
            vec![],
            vec![
                ("AUTH_BASIC_USERS", &good),
                ("PORTCULLIS_SECRET_KEY", "c2hvcnQ="),
            ],
            false,
            vec!["decodes to 5 bytes, not 32", "portcullis secret generate"],
        ),
        (
            "empty variables count as unset",
            vec![],
            vec![
                ("AUTH_BASIC_USERS", &good),
                ("PORTCULLIS_SECRET_KEY", ""),
                ("PORTCULLIS_AUTH_PREFIX", ""),
                ("AUTH_BASIC_ADMINS", ""),
            ],
            true,
            vec!["configuration is valid"],
        ),
        (
            "a host name to listen on",
            vec!["--listen", "localhost:4180"],
            vec![("AUTH_BASIC_USERS", &good)],
            true,
            vec!["configuration is valid"],
        ),
        (
            "the example configuration in docs/",
            vec!["--config", EXAMPLE],
            vec![("PORTCULLIS_OIDC_CORP_SECRET", "example")],
            true,
            vec!["configuration is valid"],
        ),
        (
            "basic users as a TOML array",
            vec!["--config", &config],
            vec![],
            true,
            vec!["configuration is valid"],
        ),
        (
            "metrics on the public address",
            vec![
                "--listen",
                "127.0.0.1:4180",
                "--metrics-listen",
                "127.0.0.1:4180",
            ],
            vec![("AUTH_BASIC_USERS", &good)],
            false,
            vec!["--metrics-listen / PORTCULLIS_METRICS_LISTEN: must differ from --listen"],
        ),
        (
            "metrics on a non-loopback address",
            vec!["--metrics-listen", "0.0.0.0:9464"],
            vec![("AUTH_BASIC_USERS", &good)],
            true,
            vec!["not a loopback address", "configuration is valid"],
        ),
        (
            "a metrics address that is not one",
            vec![],
            vec![
                ("AUTH_BASIC_USERS", &good),
                ("PORTCULLIS_METRICS_LISTEN", "9464"),
            ],
            false,
            vec!["\"9464\" is not an address"],
        ),
        (
            "a brand name",
            vec!["--brand-name", "  Acme Dashboards  "],
            vec![("AUTH_BASIC_USERS", &good)],
            true,
            vec!["configuration is valid"],
        ),
        (
            "a blank brand name",
            vec!["--brand-name", "   "],
            vec![("AUTH_BASIC_USERS", &good)],
            false,
            vec!["--brand-name / PORTCULLIS_BRAND_NAME: must not be empty"],
        ),
        (
            "a brand name of two lines",
            vec!["--brand-name", "Acme\nDashboards"],
            vec![("AUTH_BASIC_USERS", &good)],
            false,
            vec!["--brand-name / PORTCULLIS_BRAND_NAME: must be one line"],
        ),
        (
            "a brand name too long",
            vec!["--brand-name", &long_brand],
            vec![("AUTH_BASIC_USERS", &good)],
            false,
            vec!["--brand-name / PORTCULLIS_BRAND_NAME: at most 64 characters"],
        ),
    ];
    for (name, args, env, passes, needles) in rows {
        let data = dir.join(name.replace(' ', "-"));
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .arg("check-config")
            .args(["--upstream", "http://127.0.0.1:9", "--data-dir"])
            .arg(&data)
            .args(&args);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.success(), passes, "{name}:\n{text}");
        for needle in needles {
            assert!(
                text.contains(needle),
                "{name}: missing {needle:?} in:\n{text}"
            );
        }
        assert!(!text.contains("c29tZXNhbHQ"), "{name}: a hash was printed");
    }
    let _ = std::fs::remove_dir_all(&dir);

    // `secret generate` prints a key the configuration accepts.
    let out = Command::new(BIN)
        .args(["secret", "generate"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let key = String::from_utf8(out.stdout).unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key.trim())
        .unwrap();
    assert_eq!(decoded.len(), 32);
}

#[test]
fn check_config_reads_an_sqlite_database_without_touching_it() {
    let dir = std::env::temp_dir().join(format!("pc-ro-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let made = Command::new(BIN)
        .env_clear()
        .args(["migrate", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(made.status.success());
    let files = || {
        let mut names: Vec<(String, std::time::SystemTime)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                let modified = entry.metadata().unwrap().modified().unwrap();
                (entry.file_name().to_string_lossy().into_owned(), modified)
            })
            .collect();
        names.sort();
        names
    };
    // As `migrate` leaves it (closed: no WAL beside it; a running gateway has
    // its WAL and shared-memory files already, and they are opened as they are).
    assert!(!dir.join("portcullis.db-wal").exists());
    {
        let before = files();
        // No user configured: the check looks in the database for providers.
        let out = Command::new(BIN)
            .env_clear()
            .args([
                "check-config",
                "--upstream",
                "http://127.0.0.1:9",
                "--data-dir",
            ])
            .arg(&dir)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{said}");
        assert!(said.contains("none in the database either"), "{said}");
        assert_eq!(files(), before, "{said}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn generated_secret_key_is_private() {
    let dir = std::env::temp_dir().join(format!("pc-key-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Operator commands work on an existing database only; `migrate` makes one.
    let made = Command::new(BIN)
        .env_clear()
        .args(["migrate", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(made.status.success());
    let meta = std::fs::metadata(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o700,
        "the data directory is private"
    );
    let db = std::fs::metadata(dir.join("portcullis.db")).unwrap();
    assert_eq!(
        db.permissions().mode() & 0o777,
        0o600,
        "the database file is private"
    );
    let refused = Command::new(BIN)
        .env_clear()
        .args(["sessions", "list", "--data-dir"])
        .arg(dir.join("mistyped"))
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "no database is created by an operator command"
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no Portcullis database in"));
    assert!(!dir.join("mistyped").exists());
    let out = Command::new(BIN)
        .env_clear()
        .args(["keys", "rotate", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta = std::fs::metadata(dir.join("secret.key")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The throttled attempts counted into a window still open when the gateway
/// stops are written as it stops, not lost.
#[tokio::test]
async fn throttled_attempts_are_written_when_the_gateway_stops() {
    let db = TestDb::new(Backend::Sqlite).await;
    let upstream = TestUpstream::start().await;
    let users = format!("alice:{}", cheap_hash("pw"));
    let mut gw = Replica::start_with(&db, free_port(), |cmd| {
        cmd.env("PORTCULLIS_UPSTREAM", format!("http://{}", upstream.addr))
            .env("AUTH_BASIC_USERS", &users)
            .env("PORTCULLIS_LOGIN_RATE_PER_IP", "2");
    })
    .await;
    let mut refused = 0;
    for _ in 0..8 {
        let r = json_login(&gw.client, "alice", "nope", None).await;
        refused += usize::from(r.status == 429);
    }
    assert_eq!(refused, 6, "two verified, six throttled");
    let term = Command::new("kill")
        .args(["-TERM", &gw.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let stopped = tokio::task::spawn_blocking(move || gw.child.wait().unwrap())
        .await
        .unwrap();
    assert!(stopped.success(), "{stopped:?}");
    let store = portcullis_store::Store::connect(&db.url).await.unwrap();
    let throttled: Vec<_> = store
        .audit_events(&portcullis_store::AuditFilter {
            action: Some("auth.login".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("throttled"))
        .collect();
    // The first at once, the other five as one row with their count.
    let counts: i64 = throttled.iter().map(|e| e.count).sum();
    assert_eq!(counts, 6, "{throttled:?}");
    assert_eq!(throttled.len(), 2, "{throttled:?}");
}
