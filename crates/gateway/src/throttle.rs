//! Protection of the login endpoint: per-IP and per-username rate limits, and a
//! bounded pool for argon2 so a login flood cannot starve proxying.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use portcullis_core::basic::verify_password;
use portcullis_core::secret::SecretString;
use tokio::sync::Semaphore;

use crate::config::LoginLimits;
use crate::error::GatewayError;

/// How long a login waits for a free argon2 worker before answering 503.
const WORKER_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct LoginThrottle {
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    per_user: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
}

fn quota(per_minute: u32) -> Quota {
    let n = NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(n).allow_burst(n)
}

impl LoginThrottle {
    pub fn new(limits: LoginLimits) -> Self {
        Self {
            per_ip: RateLimiter::dashmap(quota(limits.per_ip_per_minute)),
            per_user: RateLimiter::dashmap(quota(limits.per_user_per_minute)),
            clock: DefaultClock::default(),
        }
    }

    /// Counts one attempt; `Err` carries the seconds until the next is allowed.
    pub fn check(&self, ip: IpAddr, username: &str) -> Result<(), GatewayError> {
        let now = self.clock.now();
        let ip_result = self.per_ip.check_key(&ip);
        // Usernames are case-folded so `Alice` and `alice` share one budget.
        let user_result = self.per_user.check_key(&username.to_lowercase());
        for result in [ip_result, user_result] {
            if let Err(not_until) = result {
                let wait = not_until.wait_time_from(now).as_secs().max(1);
                return Err(GatewayError::Throttled {
                    retry_after_secs: wait,
                });
            }
        }
        Ok(())
    }

    /// The per-address budget alone, for attempts that name no user (magic
    /// links): a shared per-name budget would let anyone lock every client out.
    pub fn check_address(&self, ip: IpAddr) -> Result<(), GatewayError> {
        self.per_ip
            .check_key(&ip)
            .map_err(|not_until| GatewayError::Throttled {
                retry_after_secs: not_until.wait_time_from(self.clock.now()).as_secs().max(1),
            })
    }

    /// Drops state of keys that are back to a full budget.
    pub fn prune(&self) {
        self.per_ip.retain_recent();
        self.per_user.retain_recent();
    }
}

/// Runs argon2 verifications on blocking threads, at most `workers` at once.
#[derive(Debug, Clone)]
pub struct PasswordPool {
    permits: Arc<Semaphore>,
}

impl PasswordPool {
    pub fn new(workers: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(workers.max(1))),
        }
    }

    pub async fn verify(&self, hash: String, password: SecretString) -> Result<bool, GatewayError> {
        let permit = tokio::time::timeout(WORKER_WAIT, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| GatewayError::Busy)?
            .map_err(|_| GatewayError::Busy)?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            verify_password(&hash, &password)
        })
        .await
        .map_err(|e| GatewayError::Internal(format!("password worker failed: {e}")))
    }
}
