//! `portcullis serve [options] -- CMD ARGS...` and the credential file, with the
//! real binary: the child gets the internal credential (and none of the gateway's
//! secrets), is proxied to, stopped on shutdown, and takes the gateway down when
//! it dies. With PostgreSQL, replicas share one credential and a reset from the CLI
//! reaches all of them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;
use crate::processes::{Replica, command, free_port};
use crate::websocket::{close_frame, connect, next_data};

/// A child application: records its environment and pid in `argv[1]`, then
/// serves HTTP on `$PORT`, answering with the identity header it received.
const CHILD: &str = r#"
import http.server, json, os, sys
out = sys.argv[1]
env = {k: v for k, v in os.environ.items() if k.startswith(("PORTCULLIS", "AUTH_", "PORT"))}
env["pid"] = os.getpid()
with open(out + ".tmp", "w") as f:
    json.dump(env, f)
os.rename(out + ".tmp", out)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({
            "user": self.headers.get("X-Forwarded-User"),
            "authorization": self.headers.get("Authorization"),
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

fn python() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 runs the test child");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

async fn wait_for_file(path: &Path) -> String {
    let found = eventually(Duration::from_secs(20), || async { path.exists() }).await;
    assert!(found.is_some(), "{} never appeared", path.display());
    std::fs::read_to_string(path).unwrap()
}

fn pid_alive(pid: i64) -> bool {
    // A zombie still has a /proc entry; its state is Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}

fn signal(pid: i64, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn exit_code_within(replica: &mut Replica, within: Duration) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt as _;
    let status = eventually(within, || {
        let done = replica.child.try_wait().unwrap().is_some();
        async move { done }
    })
    .await;
    status?;
    let status = replica.child.wait().unwrap();
    Some(
        status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
    )
}

struct ChildRun {
    replica: Replica,
    env: serde_json::Value,
    credential_file: PathBuf,
}

async fn start_with_child(db: &TestDb, script_args: &[&str]) -> ChildRun {
    let env_file = db
        .dir
        .join(format!("child-env-{}.json", free_port().port()));
    let credential_file = db.dir.join("internal.credential");
    let listen = free_port();
    let python = python();
    let replica = Replica::start_with(db, listen, |cmd| {
        cmd.env(
            "AUTH_BASIC_USERS",
            format!("{USER}:{}", cheap_hash(PASSWORD)),
        )
        .arg("--internal-credential-file")
        .arg(&credential_file)
        .arg("--")
        .arg(&python)
        .args(["-c", CHILD])
        .arg(&env_file)
        .args(script_args);
    })
    .await;
    let env: serde_json::Value = serde_json::from_str(&wait_for_file(&env_file).await).unwrap();
    ChildRun {
        replica,
        env,
        credential_file,
    }
}

async fn a_supervised_child_gets_the_credential_and_nothing_else(backend: Backend) {
    let db = TestDb::new(backend).await;
    let ChildRun {
        mut replica,
        env,
        credential_file,
    } = start_with_child(&db, &[]).await;
    let credential = env["PORTCULLIS_INTERNAL_CREDENTIAL"]
        .as_str()
        .expect("credential in the child's environment")
        .to_owned();
    assert!(credential.starts_with("pci_"), "{env}");
    // None of the gateway's own secrets are inherited.
    for private in [
        "PORTCULLIS_SECRET_KEY",
        "PORTCULLIS_DATABASE",
        "AUTH_BASIC_USERS",
    ] {
        assert!(env.get(private).is_none(), "{private} leaked to the child");
    }
    let gateway_url = format!("http://{}", replica.client.addr);
    assert_eq!(env["PORTCULLIS_URL"], gateway_url.as_str());
    assert_eq!(env["PORTCULLIS_AUTH_PREFIX"], "/.auth");
    assert!(env["PORT"].as_str().unwrap().parse::<u16>().is_ok());

    // The file holds the same credential, readable by its owner only.
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::read_to_string(&credential_file).unwrap().trim(),
        credential
    );
    let mode = std::fs::metadata(&credential_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // The child is the upstream; its processes reach it through the gateway with
    // the credential, as often as they like.
    let auth = format!("Bearer {credential}");
    let up = eventually(Duration::from_secs(20), || {
        let client = replica.client.clone();
        let auth = auth.clone();
        async move { client.get("/", &[("authorization", &auth)]).await.status == 200 }
    })
    .await;
    assert!(up.is_some(), "the child never answered through the gateway");
    for _ in 0..3 {
        let r = replica.client.get("/", &[("authorization", &auth)]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["user"], "server-internal");
        assert_eq!(r.json()["authorization"], serde_json::Value::Null);
    }
    let anonymous = replica
        .client
        .get("/", &[("accept", "application/json")])
        .await;
    assert_eq!(anonymous.status, 401);

    // SIGTERM: the gateway stops its child, then exits cleanly.
    let child_pid = env["pid"].as_i64().unwrap();
    assert!(pid_alive(child_pid));
    signal(i64::from(replica.child.id()), "TERM");
    assert_eq!(
        exit_code_within(&mut replica, Duration::from_secs(15)).await,
        Some(0)
    );
    let gone = eventually(
        Duration::from_secs(5),
        || async move { !pid_alive(child_pid) },
    )
    .await;
    assert!(gone.is_some(), "the child outlived the gateway");
}

async fn the_gateway_exits_when_its_child_dies(backend: Backend) {
    let db = TestDb::new(backend).await;
    // The child exits on its own with code 7: so does the gateway.
    let listen = free_port();
    let mut replica = Replica::start_with(&db, listen, |cmd| {
        cmd.args(["--", "sh", "-c", "sleep 1; exit 7"]);
    })
    .await;
    assert_eq!(
        exit_code_within(&mut replica, Duration::from_secs(15)).await,
        Some(7)
    );

    // The child is killed: the gateway exits with 128 + SIGKILL.
    let ChildRun {
        mut replica, env, ..
    } = start_with_child(&db, &[]).await;
    signal(env["pid"].as_i64().unwrap(), "KILL");
    assert_eq!(
        exit_code_within(&mut replica, Duration::from_secs(15)).await,
        Some(137)
    );

    // A command that cannot start is a clear error at start.
    let out = command(&db)
        .env("PORTCULLIS_LISTEN", free_port().to_string())
        .args(["serve", "--", "/nonexistent/app"])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("starting the child command") && stderr.contains("/nonexistent/app"),
        "{stderr}"
    );
}

/// With PostgreSQL: two replicas, each writing the credential file, hold the same
/// credential; `keys reset-internal-credential` makes both refuse it and closes a
/// WebSocket it carried within a second.
async fn replicas_share_the_credential_and_a_reset_reaches_all() {
    let db = TestDb::new(Backend::Postgres).await;
    let upstream = TestUpstream::start().await;
    let mut replicas = Vec::new();
    let mut credentials = Vec::new();
    for name in ["a", "b"] {
        let file = db.dir.join(format!("credential-{name}"));
        let replica = Replica::start_with(&db, free_port(), |cmd| {
            cmd.env("PORTCULLIS_UPSTREAM", format!("http://{}", upstream.addr))
                .arg("--internal-credential-file")
                .arg(&file);
        })
        .await;
        credentials.push(wait_for_file(&file).await.trim().to_owned());
        replicas.push(replica);
    }
    assert_eq!(
        credentials[0], credentials[1],
        "one credential per deployment"
    );
    let auth = format!("Bearer {}", credentials[0]);
    for replica in &replicas {
        assert_eq!(
            replica
                .client
                .get("/echo", &[("authorization", &auth)])
                .await
                .status,
            200
        );
    }
    let (mut ws, _) = connect(
        replicas[1].client.addr,
        "/ws/echo",
        &[("authorization", &auth)],
    )
    .await
    .unwrap();
    ws.send(Message::text("x")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("x"));

    let out = command(&db)
        .args(["keys", "reset-internal-credential"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let frame = close_frame(&mut ws, Duration::from_secs(1))
        .await
        .expect("closed within 1 s on the other replica");
    assert_eq!(u16::from(frame.code), 4401);
    for replica in &replicas {
        let refused = header_refused_within(
            &replica.client,
            "authorization",
            &auth,
            Duration::from_secs(1),
        )
        .await;
        assert!(refused, "a replica still accepts the reset credential");
    }

    // SQLite keeps the credential in the process: the command says so.
    let sqlite = TestDb::new(Backend::Sqlite).await;
    let out = command(&sqlite)
        .args(["keys", "reset-internal-credential"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("restart the gateway"));
}

mod sqlite {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_supervised_child_gets_the_credential_and_nothing_else() {
        super::a_supervised_child_gets_the_credential_and_nothing_else(
            crate::harness::Backend::Sqlite,
        )
        .await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_gateway_exits_when_its_child_dies() {
        super::the_gateway_exits_when_its_child_dies(crate::harness::Backend::Sqlite).await
    }
}

mod postgres {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_supervised_child_gets_the_credential_and_nothing_else() {
        super::a_supervised_child_gets_the_credential_and_nothing_else(
            crate::harness::Backend::Postgres,
        )
        .await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_share_the_credential_and_a_reset_reaches_all() {
        super::replicas_share_the_credential_and_a_reset_reaches_all().await
    }
}
