//! The store's atomic operations, on both backends, under concurrency: each is
//! raced by many tasks at once (as replicas would) and must take effect exactly
//! once. And the revocation log: what commits is read from a cursor exactly once,
//! in whatever order concurrent writers commit.

use std::collections::BTreeSet;
use std::sync::Arc;

use portcullis_core::identity::{Identity, IdentityProvider};
use portcullis_core::oidc::PendingLogin;
use portcullis_core::secret::{OsEntropy, SecretString};
use portcullis_core::session::{Session, SessionPolicy, new_session};
use portcullis_store::{Log, LogCursor, Store};

use crate::both_backends;
use crate::harness::*;

/// How many tasks race for each operation.
const RACERS: usize = 16;

async fn store(db: &TestDb) -> Store {
    let store = Store::connect(&db.url).await.unwrap();
    store.migrate().await.unwrap();
    store
}

fn session(provider: IdentityProvider, sid: Option<&str>) -> Session {
    let identity = Identity {
        subject: "ada".into(),
        name: "Ada".into(),
        email: None,
        provider,
        roles: vec!["user".into()],
    };
    let mut s = new_session(identity, SessionPolicy::default(), now_ms(), &OsEntropy).unwrap();
    s.oidc_sid = sid.map(str::to_owned);
    s
}

/// Runs `op` in `RACERS` tasks at once; returns how many said they took effect.
async fn race<F, Fut>(op: F) -> usize
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let start = Arc::new(tokio::sync::Barrier::new(RACERS));
    let tasks: Vec<_> = (0..RACERS)
        .map(|_| {
            let work = op();
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                work.await
            })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        won += usize::from(task.await.unwrap());
    }
    won
}

async fn a_ticket_is_consumed_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = store(&db).await;
    let s = session(IdentityProvider::Basic, None);
    store.insert_session(&s).await.unwrap();
    for round in 0..5 {
        let hash = format!("ticket-{round}");
        store
            .insert_ticket(&hash, &s.id, now_ms(), now_ms() + 30_000)
            .await
            .unwrap();
        let won = race(|| {
            let (store, hash) = (store.clone(), hash.clone());
            async move {
                store
                    .consume_ticket(&hash, now_ms())
                    .await
                    .unwrap()
                    .is_some()
            }
        })
        .await;
        assert_eq!(won, 1, "round {round}");
    }
}

async fn a_pre_login_row_is_consumed_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = store(&db).await;
    let provider = portcullis_core::oidc::ProviderRecord {
        id: "corp".into(),
        display_name: "Corp".into(),
        issuer: "https://id.example.com".into(),
        client_id: "portcullis".into(),
        client_secret_sealed: None,
        scopes: vec!["openid".into()],
        algorithms: vec!["RS256".into()],
        groups_claim: "groups".into(),
        refuse_unmapped: false,
        accept_unverified_email: false,
        user_claim: "sub".into(),
        user_prefix: None,
        source: "api".into(),
        key_baseline: None,
        created_ms: now_ms(),
        updated_ms: now_ms(),
    };
    store.upsert_oidc_provider(&provider).await.unwrap();
    for round in 0..5 {
        let id = format!("pl-conformance{round:012}");
        let row = PendingLogin {
            id: id.clone(),
            provider_id: "corp".into(),
            state: SecretString::new("state".to_owned()),
            nonce: SecretString::new("nonce".to_owned()),
            pkce_verifier: SecretString::new("v".repeat(43)),
            next: "/".into(),
            created_ms: now_ms(),
            expires_ms: now_ms() + 600_000,
        };
        store.insert_pending_login(&row).await.unwrap();
        let won = race(|| {
            let (store, id) = (store.clone(), id.clone());
            async move { store.consume_pending_login(&id).await.unwrap().is_some() }
        })
        .await;
        assert_eq!(won, 1, "round {round}");
    }
}

/// A logout token's `jti` is accepted once, and its revocation happens with it:
/// the one that is accepted revokes the session, every replay revokes nothing.
async fn a_logout_token_is_applied_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = store(&db).await;
    let s = session(IdentityProvider::Oidc("corp".into()), Some("sid-1"));
    store.insert_session(&s).await.unwrap();
    let revoked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let won = race(|| {
        let (store, revoked) = (store.clone(), revoked.clone());
        async move {
            let applied = store
                .apply_logout_token(
                    "corp",
                    "jti-1",
                    now_ms() + 60_000,
                    Some("sid-1"),
                    None,
                    now_ms(),
                )
                .await
                .unwrap();
            if let Some(ids) = &applied {
                revoked.lock().unwrap().extend(ids.clone());
            }
            applied.is_some()
        }
    })
    .await;
    assert_eq!(won, 1);
    assert_eq!(*revoked.lock().unwrap(), vec![s.id.clone()]);
    assert!(
        store
            .session(&s.id)
            .await
            .unwrap()
            .unwrap()
            .revoked_ms
            .is_some()
    );
}

/// Replicas racing to mint the internal credential all end up with one.
async fn the_internal_credential_is_minted_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = store(&db).await;
    let kept = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let n = std::sync::atomic::AtomicU8::new(0);
    race(|| {
        let (store, kept) = (store.clone(), kept.clone());
        let mine = vec![n.fetch_add(1, std::sync::atomic::Ordering::Relaxed); 8];
        async move {
            let stored = store
                .internal_credential_or_insert(&mine, now_ms())
                .await
                .unwrap();
            kept.lock().unwrap().insert(stored.clone());
            stored == mine
        }
    })
    .await;
    assert_eq!(
        kept.lock().unwrap().len(),
        1,
        "every racer got the same credential"
    );
}

/// Revocations from many writers at once, read from a cursor while they commit:
/// each is read exactly once, none is missed.
async fn the_revocation_log_is_read_once_from_a_cursor(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = store(&db).await;
    let mut cursor = store.log_end(Log::Revocations).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..RACERS * 4 {
        let s = session(IdentityProvider::Basic, None);
        store.insert_session(&s).await.unwrap();
        ids.push(s.id);
    }
    let writers: Vec<_> = ids
        .chunks(4)
        .map(|chunk| {
            let (store, chunk) = (store.clone(), chunk.to_vec());
            tokio::spawn(async move {
                for id in chunk {
                    assert!(store.revoke_session(&id, "test", now_ms()).await.unwrap());
                }
            })
        })
        .collect();
    let mut read = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while read.len() < ids.len() && std::time::Instant::now() < deadline {
        let (entries, _) = read_ids(&store, &mut cursor).await;
        read.extend(entries);
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let (rest, _) = read_ids(&store, &mut cursor).await;
    read.extend(rest);
    let mut sorted = read.clone();
    sorted.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(sorted, expected, "each revocation read exactly once");
}

both_backends!(
    a_ticket_is_consumed_once,
    a_pre_login_row_is_consumed_once,
    a_logout_token_is_applied_once,
    the_internal_credential_is_minted_once,
    the_revocation_log_is_read_once_from_a_cursor,
    a_read_only_store_reads_and_never_writes,
    a_changed_password_ends_exactly_the_sessions_of_the_old_one,
);

/// PostgreSQL: a log row whose transaction commits after a later row was read is
/// still read (concurrent writers commit out of sequence order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_row_committed_below_the_cursor_is_still_read() {
    use sqlx::Connection;
    let db = TestDb::new(Backend::Postgres).await;
    let store = store(&db).await;
    let mut cursor = store.log_end(Log::Revocations).await.unwrap();
    // A writer takes the lower sequence number and holds its transaction open.
    let mut slow = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut slow_tx = slow.begin().await.unwrap();
    sqlx::query("INSERT INTO revocation_log (session_id, at_ms) VALUES ('ses-slow', 1)")
        .execute(&mut *slow_tx)
        .await
        .unwrap();
    // Another commits a higher one, which the reader sees first.
    let fast = session(IdentityProvider::Basic, None);
    store.insert_session(&fast).await.unwrap();
    store
        .revoke_session(&fast.id, "test", now_ms())
        .await
        .unwrap();
    let (first, _) = read_ids(&store, &mut cursor).await;
    assert_eq!(first, vec![fast.id.clone()]);
    // The slow one commits below the cursor: the next read finds it, once.
    slow_tx.commit().await.unwrap();
    let (second, _) = read_ids(&store, &mut cursor).await;
    assert_eq!(second, vec!["ses-slow".to_owned()]);
    let (third, _) = read_ids(&store, &mut cursor).await;
    assert!(third.is_empty(), "{third:?}");
}

/// The revoked ids the log holds after `cursor`, and whether there may be more.
async fn read_ids(store: &Store, cursor: &mut LogCursor) -> (Vec<String>, bool) {
    let (entries, more) = store.read_log(Log::Revocations, cursor).await.unwrap();
    (entries.into_iter().map(|entry| entry.value).collect(), more)
}

async fn a_read_only_store_reads_and_never_writes(backend: Backend) {
    let db = TestDb::new(backend).await;
    let writer = store(&db).await;
    let kept = session(IdentityProvider::Basic, None);
    writer.insert_session(&kept).await.unwrap();
    // As `check-config` leaves a stopped gateway's SQLite file: closed, no WAL.
    writer.close().await;
    let reader = Store::open_read_only(&db.url, std::time::Duration::from_secs(2))
        .await
        .unwrap();
    assert!(reader.oidc_providers().await.unwrap().is_empty());
    assert_eq!(reader.session(&kept.id).await.unwrap().unwrap().id, kept.id);
    let refused = reader
        .insert_session(&session(IdentityProvider::Basic, None))
        .await;
    assert!(refused.is_err(), "a read-only store wrote");
    assert!(
        reader
            .revoke_session(&kept.id, "test", now_ms())
            .await
            .is_err()
    );
    reader.close().await;
    // While a gateway writes (on SQLite, its latest rows only in the WAL).
    let writer = store(&db).await;
    let fresh = session(IdentityProvider::Basic, None);
    writer.insert_session(&fresh).await.unwrap();
    let reader = Store::open_read_only(&db.url, std::time::Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(
        reader.session(&fresh.id).await.unwrap().unwrap().id,
        fresh.id
    );
    assert!(
        reader
            .revoke_session(&fresh.id, "test", now_ms())
            .await
            .is_err()
    );
}

async fn a_changed_password_ends_exactly_the_sessions_of_the_old_one(backend: Backend) {
    use portcullis_core::basic::credential_fingerprint;
    let db = TestDb::new(backend).await;
    let store = store(&db).await;
    let (old, new) = (
        credential_fingerprint("$old"),
        credential_fingerprint("$new"),
    );
    let change_ms = now_ms();
    // (credential, made after the change, ended)
    let rows = [
        (Some(&old), false, true),
        // The old password, signed in after the file changed (before this
        // replica read it): ended all the same.
        (Some(&old), true, true),
        // The new password, however early: kept.
        (Some(&new), false, false),
        (Some(&new), true, false),
        // Recorded no hash (made before hashes were recorded): the time decides.
        (None, false, true),
        (None, true, false),
    ];
    let mut ids = Vec::new();
    for (credential, after, _) in &rows {
        let mut s = session(IdentityProvider::Basic, None);
        s.credential = credential.cloned();
        s.created_ms = if *after {
            change_ms + 10
        } else {
            change_ms - 10
        };
        store.insert_session(&s).await.unwrap();
        ids.push(s.id);
    }
    let ended = store
        .sign_out_basic_user("ada", Some(&new), change_ms, change_ms + 20)
        .await
        .unwrap();
    for ((credential, after, want), id) in rows.iter().zip(&ids) {
        assert_eq!(ended.contains(id), *want, "{credential:?} after={after}");
    }
    // Removed altogether: every session of a recorded hash ends.
    let ended = store
        .sign_out_basic_user("ada", None, change_ms, change_ms + 30)
        .await
        .unwrap();
    let mut ended = ended;
    ended.sort();
    let mut kept_until_now = vec![ids[2].clone(), ids[3].clone()];
    kept_until_now.sort();
    assert_eq!(ended, kept_until_now);
}
