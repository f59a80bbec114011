//! Metric primitives and the Prometheus text exposition format (version 0.0.4).
//!
//! Counters and histograms are relaxed atomics, never locks: a value is written
//! by the code that counts and read only when metrics are scraped. The request
//! path keeps its own per-thread copies of these (the gateway's `metrics`), so
//! no two event loops write the same cache line, and each copy, having one
//! writer, is added to with a plain load and store (`by_owner`), not a locked
//! read-modify-write; rarer events (sign-ins, bus events, store errors) use one
//! shared copy.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A count that only goes up.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// [`Counter::add`] for a counter only one thread ever adds to: a load and
    /// a store (readers on other threads still see whole values). Two threads
    /// adding this way could lose counts.
    pub fn add_by_owner(&self, n: u64) {
        let now = self.0.load(Ordering::Relaxed);
        self.0.store(now.wrapping_add(n), Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The upper bounds, in seconds, of every histogram's buckets: from half a
/// millisecond (a proxied request on loopback) to ten seconds (a request that
/// is about to time out, a bus that was away).
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// [`BUCKETS`] in nanoseconds, for comparing without floating point.
const BUCKET_NANOS: [u64; 14] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// A distribution of durations over [`BUCKETS`].
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative), the last beyond every bound.
    counts: [Counter; BUCKETS.len() + 1],
    sum_micros: Counter,
}

impl Histogram {
    pub const fn new() -> Self {
        Self {
            counts: [const { Counter::new() }; BUCKETS.len() + 1],
            sum_micros: Counter::new(),
        }
    }

    pub fn observe(&self, took: Duration) {
        let (bucket, micros) = Self::place(took);
        self.counts[bucket].inc();
        self.sum_micros.add(micros);
    }

    /// [`Histogram::observe`] for a histogram only one thread ever observes
    /// into (see [`Counter::add_by_owner`]).
    pub fn observe_by_owner(&self, took: Duration) {
        let (bucket, micros) = Self::place(took);
        self.counts[bucket].add_by_owner(1);
        self.sum_micros.add_by_owner(micros);
    }

    /// The bucket of `took` (the first whose bound holds it), and `took` in
    /// microseconds for the sum.
    fn place(took: Duration) -> (usize, u64) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BUCKET_NANOS.partition_point(|&bound| bound < nanos);
        (bucket, nanos / 1_000)
    }

    /// Adds this histogram's observations to `into` (a thread's to the
    /// counts of threads that ended).
    pub fn merge_into(&self, into: &Histogram) {
        for (from, to) in self.counts.iter().zip(&into.counts) {
            to.add(from.get());
        }
        into.sum_micros.add(self.sum_micros.get());
    }

    /// Adds this histogram's observations to `into` (to sum per-thread copies).
    pub fn add_to(&self, into: &mut HistogramTotals) {
        for (total, count) in into.counts.iter_mut().zip(&self.counts) {
            *total += count.get();
        }
        into.sum_micros += self.sum_micros.get();
    }
}

/// A histogram's observations, summed over its copies, for rendering.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HistogramTotals {
    counts: [u64; BUCKETS.len() + 1],
    sum_micros: u64,
}

impl HistogramTotals {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// What kind of metric a family is (its `# TYPE` line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A Prometheus text-format document, written family by family.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

/// The `Content-Type` of [`Exposition::finish`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family: its `# HELP` and `# TYPE` lines. Its samples follow.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let _ = writeln!(
            self.text,
            "# HELP {name} {}\n# TYPE {name} {}",
            escape(help, false),
            kind.as_str()
        );
    }

    /// One sample of a counter or gauge.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.text.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.text, " {value}");
    }

    /// One labelled histogram: cumulative buckets, `_sum` (seconds) and `_count`.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], totals: &HistogramTotals) {
        let mut cumulative = 0;
        for (i, count) in totals.counts.iter().enumerate() {
            cumulative += count;
            let le = match BUCKETS.get(i) {
                Some(bound) => bound.to_string(),
                None => "+Inf".to_owned(),
            };
            let _ = write!(self.text, "{name}_bucket");
            self.labels(labels, Some(&le));
            let _ = writeln!(self.text, " {cumulative}");
        }
        let _ = write!(self.text, "{name}_sum");
        self.labels(labels, None);
        let _ = writeln!(self.text, " {}", totals.sum_micros as f64 / 1e6);
        let _ = write!(self.text, "{name}_count");
        self.labels(labels, None);
        let _ = writeln!(self.text, " {cumulative}");
    }

    fn labels(&mut self, labels: &[(&str, &str)], le: Option<&str>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.text.push('{');
        let le = le.map(|le| ("le", le));
        for (i, (name, value)) in labels.iter().copied().chain(le).enumerate() {
            if i > 0 {
                self.text.push(',');
            }
            let _ = write!(self.text, "{name}=\"{}\"", escape(value, true));
        }
        self.text.push('}');
    }

    pub fn finish(self) -> String {
        self.text
    }
}

/// Escapes a help text (backslash and newline) or a label value (also `"`).
fn escape(text: &str, quoted: bool) -> std::borrow::Cow<'_, str> {
    if !text.contains(['\\', '\n', '"']) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 4);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quoted => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        // (duration, bucket index)
        let rows = [
            (Duration::ZERO, 0),
            (Duration::from_micros(500), 0),
            (Duration::from_nanos(500_001), 1),
            (Duration::from_micros(501), 1),
            (Duration::from_millis(1), 1),
            (Duration::from_millis(7), 4),
            (Duration::from_secs(10), 13),
            (Duration::from_secs(11), 14),
            (Duration::MAX, 14),
        ];
        for (took, bucket) in rows {
            let (shared, owned) = (Histogram::new(), Histogram::new());
            shared.observe(took);
            owned.observe_by_owner(took);
            for histogram in [shared, owned] {
                let mut totals = HistogramTotals::default();
                histogram.add_to(&mut totals);
                assert_eq!(totals.counts[bucket], 1, "{took:?}");
                assert_eq!(totals.count(), 1, "{took:?}");
            }
        }
    }

    #[test]
    fn the_text_format_is_prometheus_0_0_4() {
        let mut text = Exposition::new();
        text.family("t_total", Kind::Counter, "Things.\nMany \\ of them.");
        text.sample("t_total", &[], 3);
        text.sample("t_total", &[("a", "x\"y\\z\nw"), ("b", "2")], 4);
        text.family("d_seconds", Kind::Histogram, "Durations.");
        let histogram = Histogram::new();
        histogram.observe(Duration::from_micros(300));
        histogram.observe(Duration::from_millis(2));
        histogram.observe(Duration::from_secs(60));
        let mut totals = HistogramTotals::default();
        histogram.add_to(&mut totals);
        text.histogram("d_seconds", &[("kind", "fast")], &totals);
        let text = text.finish();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "# HELP t_total Things.\\nMany \\\\ of them.");
        assert_eq!(lines[1], "# TYPE t_total counter");
        assert_eq!(lines[2], "t_total 3");
        assert_eq!(lines[3], r#"t_total{a="x\"y\\z\nw",b="2"} 4"#);
        assert!(text.contains("d_seconds_bucket{kind=\"fast\",le=\"0.0005\"} 1\n"));
        assert!(text.contains("d_seconds_bucket{kind=\"fast\",le=\"0.001\"} 1\n"));
        assert!(text.contains("d_seconds_bucket{kind=\"fast\",le=\"0.0025\"} 2\n"));
        assert!(text.contains("d_seconds_bucket{kind=\"fast\",le=\"10\"} 2\n"));
        assert!(text.contains("d_seconds_bucket{kind=\"fast\",le=\"+Inf\"} 3\n"));
        assert!(text.contains("d_seconds_sum{kind=\"fast\"} 60.0023\n"));
        assert!(text.contains("d_seconds_count{kind=\"fast\"} 3\n"));
    }
}
