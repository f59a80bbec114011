//! The soak (not in CI: `scripts/soak.sh`): three `portcullis serve` processes
//! on one PostgreSQL database, each through a relay, under load for a few
//! minutes, while one is killed with SIGKILL and restarted, one is cut off by a
//! silent partition and healed, and one by resets and healed. Sessions are
//! signed in and revoked all along; a revocation is not honoured when a replica
//! still serves its session more than a second after it was committed. The count
//! of those must be zero.

use std::time::{Duration, Instant};

use crate::harness::*;
use crate::processes::{Replica, free_port};
use crate::relay::Relay;

/// What happens to which replica when, in seconds into each cycle.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill(usize),
    Restart(usize),
    Partition(usize),
    Reset(usize),
    Heal(usize),
}

const CYCLE_SECONDS: u64 = 60;
const SCHEDULE: &[(u64, Fault)] = &[
    (10, Fault::Kill(0)),
    (18, Fault::Restart(0)),
    (25, Fault::Partition(1)),
    (35, Fault::Heal(1)),
    (42, Fault::Reset(2)),
    (50, Fault::Heal(2)),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a soak of minutes: run by scripts/soak.sh"]
async fn soak_revocations_are_honoured_through_kills_and_cuts() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(180);
    let db = TestDb::new(Backend::Postgres).await;
    let upstream = TestUpstream::start().await;
    let users = format!("{USER}:{}", cheap_hash(PASSWORD));
    let server = crate::resilience::server_of(&db.url);
    let relays = [
        Relay::start(server).await,
        Relay::start(server).await,
        Relay::start(server).await,
    ];
    let ports = [free_port(), free_port(), free_port()];
    let start = |n: usize| {
        let (db, users, url) = (&db, users.clone(), relays[n].url(&db.url));
        let upstream = upstream.addr;
        async move {
            Replica::start_with(db, ports[n], |cmd| {
                cmd.env("PORTCULLIS_DATABASE", url)
                    .env("PORTCULLIS_LOGIN_RATE_PER_USER", "100000")
                    .env("PORTCULLIS_UPSTREAM", format!("http://{upstream}"))
                    .env("AUTH_BASIC_USERS", users);
            })
            .await
        }
    };
    let mut replicas: Vec<Option<Replica>> = vec![
        Some(start(0).await),
        Some(start(1).await),
        Some(start(2).await),
    ];
    // Which replicas can sign users in (up, and not cut off).
    let mut healthy = [true; 3];

    // Load: authenticated requests on every replica all along.
    let mut load_sessions: Vec<Session> = Vec::new();
    for replica in replicas.iter().flatten() {
        load_sessions.push(login(&replica.client, USER, PASSWORD).await);
    }
    let load = {
        let clients: Vec<TestClient> = ports.iter().map(|p| TestClient::new(*p)).collect();
        tokio::spawn(async move {
            loop {
                for (client, session) in clients.iter().zip(&load_sessions) {
                    let (client, cookie) = (client.clone(), session.cookie_header());
                    // A killed replica resets the connection: the test client
                    // panics on that, inside its own task.
                    let request = tokio::spawn(async move {
                        let headers = [("cookie", cookie.as_str())];
                        client.get("/echo", &headers).await.status
                    });
                    let _ = tokio::time::timeout(Duration::from_secs(3), request).await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let began = Instant::now();
    let (mut next_fault, mut fault_cycle) = (0, 0);
    let (mut revocations, mut checks, mut late) = (0u64, 0u64, Vec::new());
    while began.elapsed() < Duration::from_secs(seconds) {
        // Faults due by now, cycle after cycle.
        let now_s = began.elapsed().as_secs();
        if next_fault == SCHEDULE.len() && now_s / CYCLE_SECONDS > fault_cycle {
            (next_fault, fault_cycle) = (0, now_s / CYCLE_SECONDS);
        }
        while next_fault < SCHEDULE.len()
            && now_s >= fault_cycle * CYCLE_SECONDS + SCHEDULE[next_fault].0
        {
            let fault = SCHEDULE[next_fault].1;
            eprintln!("soak {:>4}s: {fault:?}", began.elapsed().as_secs());
            match fault {
                Fault::Kill(n) => {
                    if let Some(mut replica) = replicas[n].take() {
                        replica.kill9();
                    }
                    healthy[n] = false;
                }
                Fault::Restart(n) => {
                    replicas[n] = Some(start(n).await);
                    healthy[n] = true;
                }
                Fault::Partition(n) => {
                    relays[n].black_hole();
                    healthy[n] = false;
                }
                Fault::Reset(n) => {
                    relays[n].down();
                    healthy[n] = false;
                }
                Fault::Heal(n) => {
                    relays[n].up();
                    healthy[n] = true;
                }
            }
            next_fault += 1;
        }

        // Sign a session in on a healthy replica, let every running one see it,
        // revoke it (as the CLI would), and watch every running replica.
        let Some(home) = (0..3).find(|n| healthy[*n] && replicas[*n].is_some()) else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let session = login(&replicas[home].as_ref().unwrap().client, USER, PASSWORD).await;
        let cookie = session.cookie_header();
        let running: Vec<usize> = (0..3).filter(|n| replicas[*n].is_some()).collect();
        for n in &running {
            let client = &replicas[*n].as_ref().unwrap().client;
            let _ = tokio::time::timeout(
                Duration::from_secs(3),
                client.get("/echo", &[("cookie", &cookie)]),
            )
            .await;
        }
        let id = session.cookie.split('.').nth(1).unwrap().to_owned();
        let store = portcullis_store::Store::connect(&db.url).await.unwrap();
        store.revoke_session(&id, "soak", now_ms()).await.unwrap();
        let revoked_at = Instant::now();
        store.close().await;
        revocations += 1;
        let watches: Vec<_> = running
            .iter()
            .map(|n| {
                let client = replicas[*n].as_ref().unwrap().client.clone();
                let (cookie, n) = (cookie.clone(), *n);
                tokio::spawn(async move {
                    let mut late = None;
                    let mut checks = 0u64;
                    while revoked_at.elapsed() < Duration::from_millis(1500) {
                        let headers = [("cookie", cookie.as_str())];
                        let get = client.get("/echo", &headers);
                        let status = tokio::time::timeout(Duration::from_secs(3), get)
                            .await
                            .map_or(0, |r| r.status);
                        checks += 1;
                        // Every answer counts, a 200 after a refusal too.
                        if status == 200 && revoked_at.elapsed() > Duration::from_secs(1) {
                            late = Some((n, revoked_at.elapsed()));
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    (checks, late)
                })
            })
            .collect();
        for watch in watches {
            let (n, was_late) = watch.await.unwrap();
            checks += n;
            if let Some(late_one) = was_late {
                eprintln!(
                    "soak: replica {} served a revoked session after {:?}",
                    late_one.0, late_one.1
                );
                late.push(late_one);
            }
        }
    }
    load.abort();
    eprintln!(
        "soak result: {seconds} s, 3 replicas, {revocations} revocations, {checks} checks, \
         {} not honoured within 1 s",
        late.len()
    );
    assert!(late.is_empty(), "{late:?}");
}
