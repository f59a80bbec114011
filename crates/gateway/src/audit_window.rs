//! Repeated throttled attempts, recorded as one audit row per address and window:
//! the first attempt of a window is written at once (an operator sees a flood
//! start), the rest are counted and written as one row, with their count, when
//! the window ends. A flood from one address costs two rows a minute, not one
//! per attempt.

use std::collections::HashMap;
use std::sync::Mutex;

use portcullis_store::AuditEvent;

/// Windows open at once beyond which attempts are written one by one (a flood
/// from that many addresses at once is bounded by the connection caps anyway).
const MAX_OPEN: usize = 100_000;

/// The throttled attempts of the current window, by action and address.
#[derive(Debug, Default)]
pub struct ThrottledAttempts(Mutex<HashMap<(String, String), AuditEvent>>);

impl ThrottledAttempts {
    /// Notes `event` (a throttled attempt); `true` when it opens its window and
    /// must be written now, `false` when it was counted into its window's row.
    pub fn note(&self, event: &AuditEvent) -> bool {
        let Ok(mut open) = self.0.lock() else {
            return true;
        };
        let key = (event.action.clone(), event.ip.clone().unwrap_or_default());
        if let Some(window) = open.get_mut(&key) {
            window.count += 1;
            window.at_ms = event.at_ms;
            return false;
        }
        if open.len() < MAX_OPEN {
            let mut window = event.clone();
            window.count = 0;
            open.insert(key, window);
        }
        true
    }

    /// Ends the window: the rows of attempts counted in it (each with the time of
    /// its last attempt and the target of its first).
    pub fn close_window(&self) -> Vec<AuditEvent> {
        let Ok(mut open) = self.0.lock() else {
            return Vec::new();
        };
        std::mem::take(&mut *open)
            .into_values()
            .filter(|window| window.count > 0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(ip: &str, at_ms: i64) -> AuditEvent {
        AuditEvent {
            at_ms,
            actor: "anonymous".into(),
            action: "auth.login".into(),
            target: Some("alice".into()),
            outcome: "failure".into(),
            reason: Some("throttled".into()),
            ip: Some(ip.into()),
            count: 1,
        }
    }

    #[test]
    fn one_row_per_address_and_window() {
        let attempts = ThrottledAttempts::default();
        // (address, written at once)
        let rows = [
            ("203.0.113.1", true),
            ("203.0.113.1", false),
            ("203.0.113.1", false),
            ("198.51.100.2", true),
        ];
        for (n, (ip, first)) in rows.iter().enumerate() {
            assert_eq!(attempts.note(&attempt(ip, n as i64)), *first, "{n}");
        }
        let closed = attempts.close_window();
        assert_eq!(closed.len(), 1, "only the address with more attempts");
        assert_eq!(closed[0].count, 2);
        assert_eq!(closed[0].at_ms, 2);
        assert!(attempts.close_window().is_empty());
        // A new window writes its first attempt at once again.
        assert!(attempts.note(&attempt("203.0.113.1", 10)));
    }
}
