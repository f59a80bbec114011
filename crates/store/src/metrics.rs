//! What the store counts, for the gateway's `/metrics`: the process's store
//! errors and the revocation bus (these happen off the request path, so one
//! shared copy of each suffices).

use portcullis_core::metrics::{Counter, Histogram};

/// Database operations that failed: the driver's errors.
pub static DATABASE_ERRORS: Counter = Counter::new();
/// Database operations that did not finish in time: within `--db-timeout`, or
/// the bus's log reads and heartbeats within theirs.
pub static TIMEOUTS: Counter = Counter::new();
/// Revocations read from the log (from this process and every other).
pub static REVOCATIONS_RECEIVED: Counter = Counter::new();
/// From a revocation's write to this process reading it from the log.
pub static BUS_DELAY: Histogram = Histogram::new();
/// Times the bus was lost (every request then asks the database).
pub static BUS_LOST: Counter = Counter::new();
/// Times the bus came back after being lost, having caught up.
pub static BUS_RECONNECTS: Counter = Counter::new();
