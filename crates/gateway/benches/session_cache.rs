//! The per-request session check without a database round trip, and the memory a
//! large cache costs.
//!
//! Before the criterion run this prints the resident-size growth from caching
//! 100,000 sessions (read from /proc/self/status on Linux).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_core::identity::Identity;
use portcullis_core::secret::OsEntropy;
use portcullis_core::session::{SessionPolicy, new_session};
use portcullis_gateway::session_cache::{Cached, SessionCache};

const NOW: i64 = 1_800_000_000_000;

fn identity(i: usize) -> Identity {
    Identity {
        subject: format!("user{i}@corp.example.com"),
        name: format!("User Number {i}"),
        email: Some(format!("user{i}@corp.example.com")),
        provider: portcullis_core::identity::IdentityProvider::Oidc("corp-sso".into()),
        roles: vec!["user".into(), "analysts".into()],
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn fill(cache: &SessionCache, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let s = new_session(identity(i), SessionPolicy::default(), NOW, &OsEntropy).unwrap();
            let id = s.id.clone();
            cache.insert_new(s, cache.epoch());
            id
        })
        .collect()
}

fn memory_report() {
    let before = rss_kib();
    let (cache, _activity) = SessionCache::new();
    let ids = fill(&cache, 100_000);
    let entries = cache.len();
    let after = rss_kib();
    let per_entry = (after.saturating_sub(before) * 1024) / entries.max(1);
    println!(
        "session_cache/memory: {entries} cached sessions, RSS +{} MiB ({per_entry} bytes each)",
        (after.saturating_sub(before)) / 1024
    );
    drop(ids);
}

fn bench(c: &mut Criterion) {
    memory_report();
    let (cache, _activity) = SessionCache::new();
    let ids = fill(&cache, 10_000);
    let mut i = 0usize;
    c.bench_function("session_cache/hit", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            matches!(
                cache.cached(black_box(&ids[i]), NOW + 1000),
                Cached::Valid(_)
            )
        })
    });
    c.bench_function("session_cache/miss", |b| {
        b.iter(|| {
            matches!(
                cache.cached(black_box("ses-AAAAAAAAAAAAAAAAAAAAAA"), NOW),
                Cached::Miss
            )
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
