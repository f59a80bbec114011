//! Protection of the login endpoint: rate limits, and a bounded pool for argon2 so
//! a login flood cannot starve proxying.
//!
//! The limits, per minute: each client address has a budget of attempts
//! (`per_ip_per_minute`, of which at most [`ADDRESS_BURST`] at once by default, so a flood
//! from one address costs few argon2 verifications before it is answered 429); each username has one *per client address*
//! (`per_user_per_minute`), so guessing a user's password from one address does
//! not lock the user out at another; and each username has a ceiling across all
//! addresses ([`USER_CEILING_FACTOR`] times its per-address budget), which bounds
//! guessing spread over many addresses. Only an attacker with that many addresses
//! can refuse a user everywhere, and only while they keep guessing.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use portcullis_core::basic::verify_password;
use portcullis_core::secret::SecretString;
use tokio::sync::Semaphore;

use crate::config::LoginLimits;
use crate::error::GatewayError;
use portcullis_core::forwarded::budget_key;

/// How long a login waits for a free argon2 worker before answering 503.
const WORKER_WAIT: Duration = Duration::from_secs(10);

/// A username's budget across all addresses, as a multiple of its budget at one.
pub const USER_CEILING_FACTOR: u32 = 10;

#[derive(Debug)]
pub struct LoginThrottle {
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    per_user_ip: DefaultKeyedRateLimiter<(String, IpAddr)>,
    per_user: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
}

fn quota(per_minute: u32) -> Quota {
    let n = NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(n).allow_burst(n)
}

/// The most attempts one address may make at once at the default rates, before
/// its budget refills at its per-minute rate: a flood costs at most this many
/// argon2 verifications, then one every `60 / per_ip_per_minute` seconds. A
/// higher configured rate allows ten seconds' worth at once.
pub const ADDRESS_BURST: u32 = 10;

fn address_quota(per_minute: u32) -> Quota {
    let per_minute = per_minute.max(1);
    let n = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
    let burst = per_minute.min(ADDRESS_BURST.max(per_minute / 6));
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(n).allow_burst(burst)
}

impl LoginThrottle {
    pub fn new(limits: LoginLimits) -> Self {
        Self {
            per_ip: RateLimiter::dashmap(address_quota(limits.per_ip_per_minute)),
            per_user_ip: RateLimiter::dashmap(quota(limits.per_user_per_minute)),
            per_user: RateLimiter::dashmap(quota(
                limits
                    .per_user_per_minute
                    .saturating_mul(USER_CEILING_FACTOR),
            )),
            clock: DefaultClock::default(),
        }
    }

    /// Counts one attempt; `Err` carries the seconds until the next is allowed.
    /// The budgets are asked in order, widest claim last, and an attempt one of
    /// them refuses costs nothing from the later ones: a flood from one address
    /// spends its own budget, not the user's ceiling.
    pub fn check(&self, ip: IpAddr, username: &str) -> Result<(), GatewayError> {
        let now = self.clock.now();
        let refuse = |not_until: governor::NotUntil<_>| GatewayError::Throttled {
            retry_after_secs: not_until.wait_time_from(now).as_secs().max(1),
        };
        // One budget per IPv4 address or IPv6 /64 (see `budget_key`).
        let ip = budget_key(ip);
        self.per_ip.check_key(&ip).map_err(refuse)?;
        // Usernames are case-folded so `Alice` and `alice` share one budget.
        let user = username.to_lowercase();
        self.per_user_ip
            .check_key(&(user.clone(), ip))
            .map_err(refuse)?;
        self.per_user.check_key(&user).map_err(refuse)?;
        Ok(())
    }

    /// The per-address budget alone, for attempts that name no user (magic
    /// links): a shared per-name budget would let anyone lock every client out.
    pub fn check_address(&self, ip: IpAddr) -> Result<(), GatewayError> {
        self.per_ip
            .check_key(&budget_key(ip))
            .map_err(|not_until| GatewayError::Throttled {
                retry_after_secs: not_until.wait_time_from(self.clock.now()).as_secs().max(1),
            })
    }

    /// Drops state of keys that are back to a full budget.
    pub fn prune(&self) {
        self.per_ip.retain_recent();
        self.per_user_ip.retain_recent();
        self.per_user.retain_recent();
    }
}

/// Runs argon2 verifications on its own threads, at most `workers` at once and
/// at a lower scheduling priority than the event loops (nice +10), so a login
/// flood cannot take the cores that proxying needs; and makes every failure last
/// as long as a verification of the costliest configured hash: when users'
/// hashes differ in cost, how long a wrong password takes must not tell which
/// user was named (or whether one exists).
#[derive(Debug, Clone)]
pub struct PasswordPool {
    permits: Arc<Semaphore>,
    /// Verifications asked for and not yet started.
    waiting: Arc<AtomicU64>,
    jobs: std::sync::mpsc::SyncSender<Job>,
    /// A moving average of how long the costliest verifications take, in µs.
    costliest_micros: Arc<AtomicU64>,
}

/// A verification for a worker.
struct Job {
    hash: String,
    password: SecretString,
    answer: tokio::sync::oneshot::Sender<(bool, Duration)>,
    /// The worker slot, held until the verification is done (a sign-in whose
    /// client went away must not free its slot while its job still runs: the
    /// queue would overflow).
    permit: tokio::sync::OwnedSemaphorePermit,
    /// When the sign-in asked for a worker.
    asked: std::time::Instant,
    /// Counts it as waiting until a worker starts it (or it is dropped).
    waiting: Waiting,
}

/// How much lower than the event loops the workers run (a nice value).
const WORKER_NICENESS: i32 = 10;

impl PasswordPool {
    /// `costliest` is a first estimate of the costliest verification (the time
    /// it took to make the dummy hash, which costs the same).
    pub fn new(workers: usize, costliest: Duration) -> Self {
        let workers = workers.max(1);
        // Jobs are sent only with a permit, so the queue never holds more.
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(workers);
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for n in 0..workers {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || work(&queue));
            if let Err(error) = spawned {
                tracing::error!(%error, "could not start an argon2 worker");
            }
        }
        Self {
            permits: Arc::new(Semaphore::new(workers)),
            waiting: Arc::default(),
            jobs,
            costliest_micros: Arc::new(AtomicU64::new(duration_micros(costliest))),
        }
    }

    /// Verifies `password` against `hash`. A failure returns no sooner than a
    /// verification of the costliest hash would; `costliest` says whether `hash`
    /// is one (its time then refines that estimate).
    pub async fn verify(
        &self,
        hash: String,
        password: SecretString,
        costliest: bool,
    ) -> Result<bool, GatewayError> {
        let asked = std::time::Instant::now();
        let waiting = Waiting::start(&self.waiting);
        let permit = tokio::time::timeout(WORKER_WAIT, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| GatewayError::Busy)?
            .map_err(|_| GatewayError::Busy)?;
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.jobs
            .try_send(Job {
                hash,
                password,
                answer,
                permit,
                asked,
                waiting,
            })
            .map_err(|e| GatewayError::Internal(format!("password workers unavailable: {e}")))?;
        let (matched, took) = answered
            .await
            .map_err(|e| GatewayError::Internal(format!("password worker failed: {e}")))?;
        let took = duration_micros(took);
        if costliest {
            // An average over the last few, so one slow run (a busy machine) moves
            // the floor little.
            let old = self.costliest_micros.load(Ordering::Relaxed);
            let new = if old == 0 { took } else { (old * 7 + took) / 8 };
            self.costliest_micros.store(new, Ordering::Relaxed);
        }
        if !matched {
            let floor = self.costliest_micros.load(Ordering::Relaxed);
            if floor > took {
                tokio::time::sleep(Duration::from_micros(floor - took)).await;
            }
        }
        Ok(matched)
    }

    /// Verifications asked for and not yet started (the queue's depth).
    pub fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }
}

/// One sign-in counted as waiting for a worker until dropped: when its job
/// starts, or when it gives up or fails first.
struct Waiting(Arc<AtomicU64>);

impl Waiting {
    fn start(count: &Arc<AtomicU64>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn duration_micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// One worker: lowers its own priority, then verifies until the pool is gone.
fn work(queue: &std::sync::Mutex<std::sync::mpsc::Receiver<Job>>) {
    // On Linux the nice value is per thread: this worker alone runs lower.
    if let Err(error) = rustix::process::setpriority_process(None, WORKER_NICENESS) {
        tracing::warn!(%error, "could not lower an argon2 worker's priority");
    }
    loop {
        let job = match queue.lock() {
            Ok(queue) => queue.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else {
            return;
        };
        let started = std::time::Instant::now();
        drop(job.waiting);
        crate::metrics::ARGON2_WAIT.observe(started.saturating_duration_since(job.asked));
        let matched = verify_password(&job.hash, &job.password);
        drop(job.permit);
        let _ = job.answer.send((matched, started.elapsed()));
    }
}
