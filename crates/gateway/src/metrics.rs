//! The gateway's metrics, served in Prometheus text format on `--metrics-listen`
//! (`GET /metrics`), never on the public listener.
//!
//! What every request counts (its path, status class, latencies and how it
//! authenticated) goes to the counting thread's own `Shard`: each event loop
//! is one thread, so no two loops write the same cache line and the request path
//! takes no lock. A scrape sums the shards. A thread that ends folds its counts
//! into the registry first, so nothing counted is lost. Rarer events (sign-ins,
//! argon2, the bus, store errors) are shared counters.
//!
//! Counters are per process, like any Prometheus client's default registry:
//! `portcullis serve` runs one gateway per process (tests that run two in one
//! process compare changes, not values).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use portcullis_core::metrics::{Counter, Exposition, Histogram, HistogramTotals, Kind};
use portcullis_store::metrics as store;

use crate::carrier::Carrier;
use crate::error::GatewayError;
use crate::pipeline::PathKind;
use crate::pipeline::authenticate::Refusal;
use crate::state::Gateway;

const PATHS: [PathKind; 4] = [
    PathKind::FastPath,
    PathKind::Proxy,
    PathKind::Upgrade,
    PathKind::Endpoint,
];
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// The carriers in the order of the carrier table (each one's `scheme()` is
/// its label), then no credential (`none`).
const CARRIERS: usize = crate::carrier::CARRIERS.len() + 1;

fn carrier_index(carrier: Option<Carrier>) -> usize {
    // The carrier table lists the carriers in their declaration order (tested).
    carrier.map_or(CARRIERS - 1, |carrier| carrier as usize)
}

fn carrier_label(index: usize) -> &'static str {
    crate::carrier::CARRIERS
        .get(index)
        .map_or("none", |rule| rule.carrier.scheme())
}

/// How an authentication ended: its `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    Ok,
    /// Nothing was presented.
    NoCredential,
    Refused(Refusal),
    /// The answer could not be known (the database did not answer): refused 503.
    Unavailable,
}

const RESULTS: usize = 3 + Refusal::ALL.len();

impl AuthResult {
    fn index(self) -> usize {
        match self {
            AuthResult::Ok => 0,
            AuthResult::NoCredential => 1,
            AuthResult::Unavailable => 2,
            AuthResult::Refused(refusal) => 3 + refusal as usize,
        }
    }

    fn label(index: usize) -> &'static str {
        match index {
            0 => "ok",
            1 => "no_credential",
            2 => "unavailable",
            n => Refusal::ALL[n - 3].as_str(),
        }
    }
}

/// One thread's request counts.
#[derive(Debug)]
#[repr(align(128))]
struct Shard {
    /// By path kind and status class.
    requests: [[Counter; STATUS_CLASSES.len()]; PATHS.len()],
    /// Arrival to response (to the end, for a WebSocket), by path kind.
    request_seconds: [Histogram; PATHS.len()],
    /// Sending upstream to the upstream's response head, by path kind.
    upstream_seconds: [Histogram; PATHS.len()],
    /// By carrier and result.
    authentications: [[Counter; RESULTS]; CARRIERS],
}

impl Shard {
    const fn new() -> Self {
        Self {
            requests: [const { [const { Counter::new() }; STATUS_CLASSES.len()] }; PATHS.len()],
            request_seconds: [const { Histogram::new() }; PATHS.len()],
            upstream_seconds: [const { Histogram::new() }; PATHS.len()],
            authentications: [const { [const { Counter::new() }; RESULTS] }; CARRIERS],
        }
    }

    /// Adds every count of `self` to `into`.
    fn fold_into(&self, into: &Shard) {
        let pairs = |a: &[Counter], b: &[Counter]| {
            for (from, to) in a.iter().zip(b) {
                to.add(from.get());
            }
        };
        for (from, to) in self.requests.iter().zip(&into.requests) {
            pairs(from, to);
        }
        for (from, to) in self.authentications.iter().zip(&into.authentications) {
            pairs(from, to);
        }
        for (from, to) in self
            .request_seconds
            .iter()
            .zip(&into.request_seconds)
            .chain(self.upstream_seconds.iter().zip(&into.upstream_seconds))
        {
            from.merge_into(to);
        }
    }
}

/// Every live thread's shard, and the counts of threads that ended.
struct Registry {
    live: Mutex<Vec<Arc<Shard>>>,
    retired: Shard,
}

static REGISTRY: Registry = Registry {
    live: Mutex::new(Vec::new()),
    retired: Shard::new(),
};

/// This thread's shard, registered on first use and folded into the retired
/// counts when the thread ends.
struct Local(Arc<Shard>);

impl Local {
    fn register() -> Self {
        let shard = Arc::new(Shard::new());
        lock(&REGISTRY.live).push(shard.clone());
        Self(shard)
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        // Under the lock, so that a scrape sees the counts once: in the shard or
        // in the retired ones.
        let mut live = lock(&REGISTRY.live);
        self.0.fold_into(&REGISTRY.retired);
        live.retain(|shard| !Arc::ptr_eq(shard, &self.0));
    }
}

thread_local! {
    static LOCAL: Local = Local::register();
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counts on this thread's shard, its only writer (`true`), or, while the
/// thread ends, on the retired counts, which any thread may add to (`false`).
fn with_shard(count: impl Fn(&Shard, bool)) {
    if LOCAL.try_with(|local| count(&local.0, true)).is_err() {
        count(&REGISTRY.retired, false);
    }
}

impl Shard {
    fn inc(counter: &Counter, by_owner: bool) {
        if by_owner {
            counter.add_by_owner(1);
        } else {
            counter.inc();
        }
    }

    fn observe(histogram: &Histogram, took: Duration, by_owner: bool) {
        if by_owner {
            histogram.observe_by_owner(took);
        } else {
            histogram.observe(took);
        }
    }
}

/// The log phase's counts for one request.
pub fn request(kind: PathKind, status: u16, took: Duration, upstream: Option<Duration>) {
    let path = kind as usize;
    let class = match status {
        100..=599 => usize::from(status / 100) - 1,
        // The client went away before an answer.
        _ => STATUS_CLASSES.len() - 1,
    };
    with_shard(|shard, by_owner| {
        Shard::inc(&shard.requests[path][class], by_owner);
        Shard::observe(&shard.request_seconds[path], took, by_owner);
        if let Some(upstream) = upstream {
            Shard::observe(&shard.upstream_seconds[path], upstream, by_owner);
        }
    });
}

/// This thread's count of requests of `kind` in status class `class` (`0`:
/// none, else the status's hundreds), for tests.
#[cfg(test)]
pub(crate) fn counted_here(kind: PathKind, class: u16) -> u64 {
    let class = if class == 0 {
        STATUS_CLASSES.len() - 1
    } else {
        usize::from(class) - 1
    };
    LOCAL.with(|local| local.0.requests[kind as usize][class].get())
}

/// The authenticate phase's outcome.
pub fn authentication(carrier: Option<Carrier>, result: AuthResult) {
    with_shard(|shard, by_owner| {
        let counter = &shard.authentications[carrier_index(carrier)][result.index()];
        Shard::inc(counter, by_owner);
    });
}

/// How a sign-in ended: its `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LoginOutcome {
    Success,
    /// Wrong password, refused link or token, failed OpenID callback.
    Failure,
    /// Refused before any check: too many attempts.
    Throttled,
    /// The gateway could not decide (database, workers busy).
    Error,
}

impl LoginOutcome {
    /// The outcome of a sign-in that ended with `error` (`None`: signed in).
    pub fn of(error: Option<&GatewayError>) -> Self {
        match error {
            None => LoginOutcome::Success,
            Some(GatewayError::Throttled { .. }) => LoginOutcome::Throttled,
            Some(error) if error.status().is_server_error() => LoginOutcome::Error,
            Some(_) => LoginOutcome::Failure,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            LoginOutcome::Success => "success",
            LoginOutcome::Failure => "failure",
            LoginOutcome::Throttled => "throttled",
            LoginOutcome::Error => "error",
        }
    }
}

/// Sign-ins by provider (`basic`, `magic`, or an OpenID provider's id) and
/// outcome. Providers are the configured ones, so the labels are bounded.
static LOGINS: Mutex<BTreeMap<(String, LoginOutcome), u64>> = Mutex::new(BTreeMap::new());

pub fn login(provider: &str, outcome: LoginOutcome) {
    *lock(&LOGINS)
        .entry((provider.to_owned(), outcome))
        .or_default() += 1;
}

/// From asking for an argon2 worker to the verification starting.
pub static ARGON2_WAIT: Histogram = Histogram::new();
/// Revocations this process made and told its own followers of.
pub static REVOCATIONS_PUBLISHED: Counter = Counter::new();
/// Times the session cache was emptied (a flush, or the bus lost).
pub static CACHE_FLUSHES: Counter = Counter::new();

/// The whole exposition, with the gauges read from `gw` now.
pub fn render(gw: &Gateway) -> String {
    let totals = Shard::new();
    {
        let live = lock(&REGISTRY.live);
        REGISTRY.retired.fold_into(&totals);
        for shard in live.iter() {
            shard.fold_into(&totals);
        }
    }
    let mut out = Exposition::new();

    out.family(
        "portcullis_requests_total",
        Kind::Counter,
        "Requests answered, by path (fast, proxy, upgrade, endpoint) and status class.",
    );
    for (kind, row) in PATHS.iter().zip(&totals.requests) {
        for (class, count) in STATUS_CLASSES.iter().zip(row) {
            let labels = [("path", kind.as_str()), ("status", *class)];
            out.sample("portcullis_requests_total", &labels, count.get());
        }
    }
    for (name, help, histograms) in [
        (
            "portcullis_request_duration_seconds",
            "From a request's arrival to its response (a WebSocket: to its end), by path.",
            &totals.request_seconds,
        ),
        (
            "portcullis_upstream_duration_seconds",
            "From sending a request upstream to the upstream's response head, by path.",
            &totals.upstream_seconds,
        ),
    ] {
        out.family(name, Kind::Histogram, help);
        for (kind, histogram) in PATHS.iter().zip(histograms) {
            out.histogram(name, &[("path", kind.as_str())], &totals_of(histogram));
        }
    }
    out.family(
        "portcullis_authentications_total",
        Kind::Counter,
        "Authentications by credential carrier and result (ok, no_credential, unavailable, or why it was refused).",
    );
    for (carrier, row) in totals.authentications.iter().enumerate() {
        for (index, count) in row.iter().enumerate() {
            let labels = [
                ("carrier", carrier_label(carrier)),
                ("result", AuthResult::label(index)),
            ];
            out.sample("portcullis_authentications_total", &labels, count.get());
        }
    }

    out.family(
        "portcullis_logins_total",
        Kind::Counter,
        "Sign-ins by provider (basic, magic, or an OpenID provider's id) and outcome (success, failure, throttled, error).",
    );
    for ((provider, outcome), count) in lock(&LOGINS).iter() {
        let labels = [
            ("provider", provider.as_str()),
            ("outcome", outcome.as_str()),
        ];
        out.sample("portcullis_logins_total", &labels, *count);
    }
    out.family(
        "portcullis_argon2_queue_depth",
        Kind::Gauge,
        "Password verifications waiting for an argon2 worker.",
    );
    out.sample(
        "portcullis_argon2_queue_depth",
        &[],
        gw.passwords().waiting(),
    );
    out.family(
        "portcullis_argon2_wait_seconds",
        Kind::Histogram,
        "From asking for an argon2 worker to the verification starting.",
    );
    out.histogram(
        "portcullis_argon2_wait_seconds",
        &[],
        &totals_of(&ARGON2_WAIT),
    );

    out.family(
        "portcullis_cached_sessions",
        Kind::Gauge,
        "Sessions and API tokens in the session cache.",
    );
    out.sample("portcullis_cached_sessions", &[], gw.session_cache().len());
    out.family(
        "portcullis_live_websockets",
        Kind::Gauge,
        "WebSocket connections relayed now.",
    );
    let live = u64::try_from(gw.live_websockets()).unwrap_or(u64::MAX);
    out.sample("portcullis_live_websockets", &[], live);

    let counters = [
        (
            "portcullis_revocations_published_total",
            "Revocations made by this process.",
            REVOCATIONS_PUBLISHED.get(),
        ),
        (
            "portcullis_revocations_received_total",
            "Revocations read from the revocation log (from every process).",
            store::REVOCATIONS_RECEIVED.get(),
        ),
        (
            "portcullis_bus_lost_total",
            "Times the revocation bus was lost (every request then asks the database).",
            store::BUS_LOST.get(),
        ),
        (
            "portcullis_bus_reconnects_total",
            "Times the revocation bus came back and caught up after being lost.",
            store::BUS_RECONNECTS.get(),
        ),
        (
            "portcullis_session_cache_flushes_total",
            "Times the session cache was emptied (revocations may have been missed, or the bus was lost).",
            CACHE_FLUSHES.get(),
        ),
    ];
    for (name, help, value) in counters {
        out.family(name, Kind::Counter, help);
        out.sample(name, &[], value);
    }
    out.family(
        "portcullis_bus_delay_seconds",
        Kind::Histogram,
        "From a revocation's write to this process reading it from the log.",
    );
    out.histogram(
        "portcullis_bus_delay_seconds",
        &[],
        &totals_of(&store::BUS_DELAY),
    );
    out.family(
        "portcullis_bus_connected",
        Kind::Gauge,
        "1 while the revocation bus is up (cached sessions are trusted), else 0.",
    );
    out.sample(
        "portcullis_bus_connected",
        &[],
        u64::from(gw.bus_connected()),
    );
    out.family(
        "portcullis_store_errors_total",
        Kind::Counter,
        "Database operations that failed, by kind (database: the driver's error; timeout: no answer within --db-timeout).",
    );
    out.sample(
        "portcullis_store_errors_total",
        &[("kind", "database")],
        store::DATABASE_ERRORS.get(),
    );
    out.sample(
        "portcullis_store_errors_total",
        &[("kind", "timeout")],
        store::TIMEOUTS.get(),
    );
    out.finish()
}

fn totals_of(histogram: &Histogram) -> HistogramTotals {
    let mut totals = HistogramTotals::default();
    histogram.add_to(&mut totals);
    totals
}

/// Serves `GET /metrics` on `listener` (until the task running it is aborted).
pub async fn serve(listener: tokio::net::TcpListener, gw: Gateway) -> std::io::Result<()> {
    use axum::routing::get;
    let router = axum::Router::new()
        .route(
            "/metrics",
            get(
                |axum::extract::State(gw): axum::extract::State<Gateway>| async move {
                    (
                        [(
                            http::header::CONTENT_TYPE,
                            portcullis_core::metrics::CONTENT_TYPE,
                        )],
                        render(&gw),
                    )
                },
            ),
        )
        .with_state(gw);
    axum::serve(listener, router).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_that_ends_leaves_its_counts_behind() {
        let retired = || {
            let totals = Shard::new();
            REGISTRY.retired.fold_into(&totals);
            let upgrades = &totals.requests[PathKind::Upgrade as usize];
            (upgrades[0].get(), upgrades[1].get())
        };
        let before = retired();
        let shard = std::thread::spawn(|| {
            request(PathKind::Upgrade, 101, Duration::from_millis(3), None);
            request(PathKind::Upgrade, 204, Duration::from_millis(3), None);
            LOCAL.with(|local| Arc::as_ptr(&local.0) as usize)
        })
        .join()
        .unwrap();
        // Folded into the retired counts (other tests' threads may add more),
        // and its shard gone from the live ones.
        let after = retired();
        assert!(
            after.0 > before.0 && after.1 > before.1,
            "{before:?} {after:?}"
        );
        let live = lock(&REGISTRY.live);
        assert!(live.iter().all(|s| Arc::as_ptr(s) as usize != shard));
    }

    #[test]
    fn label_tables_follow_their_enums() {
        for (index, kind) in PATHS.iter().enumerate() {
            assert_eq!(*kind as usize, index, "{kind:?}");
        }
        for (index, refusal) in Refusal::ALL.iter().enumerate() {
            assert_eq!(*refusal as usize, index, "{refusal:?}");
            assert_eq!(
                AuthResult::label(AuthResult::Refused(*refusal).index()),
                refusal.as_str()
            );
        }
        for (index, rule) in crate::carrier::CARRIERS.iter().enumerate() {
            assert_eq!(carrier_index(Some(rule.carrier)), index);
            assert_eq!(carrier_label(index), rule.carrier.scheme());
        }
        assert_eq!(carrier_label(carrier_index(None)), "none");
    }

    #[test]
    fn every_status_has_a_class() {
        // (status, class index)
        for (status, class) in [
            (101, 0),
            (200, 1),
            (304, 2),
            (404, 3),
            (503, 4),
            (0, 5),
            (600, 5),
        ] {
            let count =
                || LOCAL.with(|local| local.0.requests[PathKind::Proxy as usize][class].get());
            let before = count();
            request(PathKind::Proxy, status, Duration::ZERO, None);
            assert_eq!(count(), before + 1, "{status} {}", STATUS_CLASSES[class]);
        }
    }
}
