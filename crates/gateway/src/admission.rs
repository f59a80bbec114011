//! How many connections the gateway holds open, in total and per client address
//! (SPEC 9: everything a client can hold is bounded in number). A connection over
//! either cap is refused as soon as it is accepted (a short 503, then closed),
//! before it can hold a file descriptor waiting for a head or a body, so sockets
//! a flood opens fail early instead of exhausting descriptors that signed-in
//! users need. Trusted proxies carry many clients' connections and are held to
//! the total only.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub total: usize,
    pub per_ip: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        // The binary sets the total from the file-descriptor limit it runs with.
        Self {
            total: 10_000,
            per_ip: 256,
        }
    }
}

/// Open connections, shared by every event loop.
#[derive(Debug, Default)]
pub struct Admission {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Total,
    PerAddress,
}

/// An admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    ip: Option<IpAddr>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.admission.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            let mut per_ip = self
                .admission
                .per_ip
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(count) = per_ip.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

impl Admission {
    /// Admits a connection from `ip` (counted per address unless `trusted`).
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        trusted: bool,
        limits: ConnectionLimits,
    ) -> Result<Admitted, Refused> {
        // One place count per IPv4 address or IPv6 /64.
        let ip = portcullis_core::forwarded::budget_key(ip);
        if self.total.fetch_add(1, Ordering::AcqRel) >= limits.total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Total);
        }
        if trusted {
            return Ok(Admitted {
                admission: self.clone(),
                ip: None,
            });
        }
        let mut per_ip = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        let count = per_ip.entry(ip).or_insert(0);
        if *count >= limits.per_ip {
            drop(per_ip);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::PerAddress);
        }
        *count += 1;
        Ok(Admitted {
            admission: self.clone(),
            ip: Some(ip),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_and_places_come_back() {
        let admission = Arc::new(Admission::default());
        let limits = ConnectionLimits {
            total: 3,
            per_ip: 2,
        };
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let proxy: IpAddr = [10, 0, 0, 9].into();
        let first = admission.admit(a, false, limits).unwrap();
        let _second = admission.admit(a, false, limits).unwrap();
        assert_eq!(
            admission.admit(a, false, limits).unwrap_err(),
            Refused::PerAddress
        );
        let _third = admission.admit(b, false, limits).unwrap();
        assert_eq!(
            admission.admit(proxy, true, limits).unwrap_err(),
            Refused::Total
        );
        assert_eq!(admission.open(), 3);
        drop(first);
        assert_eq!(admission.open(), 2);
        let _again = admission.admit(a, false, limits).unwrap();
        assert_eq!(
            admission.admit(b, false, limits).unwrap_err(),
            Refused::Total
        );
    }

    #[test]
    fn an_ipv6_64_shares_one_count() {
        let admission = Arc::new(Admission::default());
        let limits = ConnectionLimits {
            total: 10,
            per_ip: 2,
        };
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        let elsewhere: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _first = admission.admit(a, false, limits).unwrap();
        let _second = admission.admit(b, false, limits).unwrap();
        assert_eq!(
            admission
                .admit("2001:db8:1:2::42".parse().unwrap(), false, limits)
                .unwrap_err(),
            Refused::PerAddress
        );
        assert!(admission.admit(elsewhere, false, limits).is_ok());
    }

    #[test]
    fn trusted_proxies_are_held_to_the_total_only() {
        let admission = Arc::new(Admission::default());
        let limits = ConnectionLimits {
            total: 10,
            per_ip: 1,
        };
        let proxy: IpAddr = [10, 0, 0, 9].into();
        let held: Vec<_> = (0..5)
            .map(|_| admission.admit(proxy, true, limits).unwrap())
            .collect();
        assert_eq!(admission.open(), 5);
        drop(held);
        assert_eq!(admission.open(), 0);
        assert!(admission.per_ip.lock().unwrap().is_empty());
    }
}
