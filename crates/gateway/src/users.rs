//! The basic users, as they stand now: from `AUTH_BASIC_USERS` (fixed for the
//! process) or from `--users-file`, reloaded on `SIGHUP` and when the file
//! changes. A user removed from the file, or whose hash changed, is signed out
//! everywhere: their sessions of an older hash (each session records which hash
//! signed it in, whenever it was made) and their API tokens made before the
//! change are revoked (through the revocation log, so every replica and every
//! live WebSocket follows); a replica that reads the same change later revokes
//! nothing the new password made. A sign-in that checked the old hash while the
//! users were swapped ends itself (`endpoints::signin`). A file that does not
//! parse cleanly changes nothing and says why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis_core::basic::BasicUsers;
use portcullis_core::secret::Entropy;
use portcullis_store::Store;

/// How often the file's modification time is looked at.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// The users and the hash an unknown name is verified against (as costly as the
/// costliest user's).
pub struct Users {
    pub list: BasicUsers,
    pub dummy_hash: String,
}

impl std::fmt::Debug for Users {
    /// Hashes are never printed (`BasicUsers` redacts its own).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users")
            .field("list", &self.list)
            .field("dummy_hash", &"[redacted]")
            .finish()
    }
}

/// The current users, replaced whole on a reload.
#[derive(Debug)]
pub struct LiveUsers(RwLock<Arc<Users>>);

impl LiveUsers {
    pub fn new(users: Users) -> Self {
        Self(RwLock::new(Arc::new(users)))
    }

    /// The users now (a reload does not change what a caller holds).
    pub fn get(&self) -> Arc<Users> {
        match self.0.read() {
            Ok(users) => users.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Whether `name` is a user now, without cloning anything (every request).
    pub fn has(&self, name: &str) -> bool {
        match self.0.read() {
            Ok(users) => users.list.hash_of(name).is_some(),
            Err(poisoned) => poisoned.into_inner().list.hash_of(name).is_some(),
        }
    }

    fn replace(&self, users: Users) -> Arc<Users> {
        let users = Arc::new(users);
        match self.0.write() {
            Ok(mut current) => std::mem::replace(&mut *current, users),
            Err(poisoned) => std::mem::replace(&mut *poisoned.into_inner(), users),
        }
    }
}

/// The `AUTH_BASIC_USERS` form of a users file: one `name:hash` entry per line;
/// blank lines and lines starting with `#` are skipped.
pub fn file_entries(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect::<Vec<_>>()
        .join(";")
}

/// What reloading needs.
pub struct Reloader {
    pub path: PathBuf,
    pub admins: String,
    pub users: Arc<LiveUsers>,
    pub store: Store,
    pub entropy: Arc<dyn Entropy>,
    /// Revocations made here reach this process's cache at once.
    pub revoked: Box<dyn Fn(&str) + Send + Sync>,
}

fn modified_ms(path: &Path) -> Option<i64> {
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    let since = modified.duration_since(UNIX_EPOCH).ok()?;
    i64::try_from(since.as_millis()).ok()
}

impl Reloader {
    /// Reloads on `SIGHUP` and whenever the file's modification time changes.
    pub async fn follow(self) {
        let mut seen = modified_ms(&self.path);
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        #[cfg(unix)]
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            #[cfg(unix)]
            let asked = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let asked = std::future::pending::<Option<()>>();
            tokio::select! {
                _ = asked => {
                    tracing::info!(path = %self.path.display(), "SIGHUP: reloading the users file");
                }
                _ = tick.tick() => {
                    let now = modified_ms(&self.path);
                    if now == seen {
                        continue;
                    }
                }
            }
            seen = modified_ms(&self.path);
            self.reload(seen).await;
        }
    }

    /// Reads the file and, if it parses cleanly, makes it the users; signs out
    /// those removed or whose hash changed (what they had before `changed_ms`).
    pub async fn reload(&self, changed_ms: Option<i64>) {
        let path = self.path.display().to_string();
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(error) => {
                tracing::error!(%path, %error, "users file unreadable; the previous users stay");
                return;
            }
        };
        let (list, warnings) = BasicUsers::parse(&file_entries(&text), &self.admins);
        let refusals: Vec<String> = warnings
            .iter()
            .filter(|w| !w.is_advice())
            .map(ToString::to_string)
            .collect();
        if !refusals.is_empty() {
            tracing::error!(
                %path,
                problems = %refusals.join("; "),
                "users file not applied (entries count the file's user lines); the previous users stay"
            );
            return;
        }
        for advice in &warnings {
            tracing::warn!(%path, "{advice}");
        }
        let (costs, entropy) = (list.clone(), self.entropy.clone());
        let dummy = tokio::task::spawn_blocking(move || costs.dummy_hash(entropy.as_ref())).await;
        let Ok(Ok(dummy_hash)) = dummy else {
            tracing::error!(%path, "could not prepare the password verifier; the previous users stay");
            return;
        };
        let before = self.users.replace(Users { list, dummy_hash });
        let after = self.users.get();
        let gone: Vec<&str> = before
            .list
            .names()
            .filter(|name| after.list.hash_of(name) != before.list.hash_of(name))
            .collect();
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let cutoff = changed_ms.unwrap_or(now_ms).min(now_ms);
        let mut ended = 0;
        for name in &gone {
            let keep = after
                .list
                .hash_of(name)
                .map(portcullis_core::basic::credential_fingerprint);
            match self
                .store
                .sign_out_basic_user(name, keep.as_deref(), cutoff, now_ms)
                .await
            {
                Ok(ids) => {
                    for id in &ids {
                        (self.revoked)(id);
                    }
                    ended += ids.len();
                }
                Err(error) => {
                    tracing::error!(%path, user = %name, %error, "could not sign a removed or changed user out");
                }
            }
        }
        tracing::info!(
            %path,
            users = after.list.len(),
            signed_out = gone.len(),
            sessions_and_tokens_ended = ended,
            "users file reloaded"
        );
    }
}
