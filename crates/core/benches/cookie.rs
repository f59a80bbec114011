//! Hot-path cost of the signed cookie: verify (parse + HMAC + constant-time compare),
//! sign, and CSRF derivation.
#![allow(clippy::unwrap_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_core::keys::{Keyring, SecretKey, new_signing_key};
use portcullis_core::secret::{Key32, OsEntropy};
use portcullis_core::session::CsrfKey;
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let secret = SecretKey::new(Key32::from_bytes([7; 32]));
    let mut old = new_signing_key(&secret, &OsEntropy, 1).unwrap();
    old.active = false;
    let active = new_signing_key(&secret, &OsEntropy, 2).unwrap();
    let ring = Keyring::unseal(&secret, &[old, active]).unwrap();
    let id = "ses-AAAAAAAAAAAAAAAAAAAAAA";
    let cookie = ring.sign(id).unwrap();
    let csrf = CsrfKey::new(&secret.derive("csrf"));

    c.bench_function("cookie/verify", |b| {
        b.iter(|| ring.verify(black_box(&cookie), "ses-").unwrap())
    });
    c.bench_function("cookie/verify_forged", |b| {
        let mut forged = cookie.clone();
        forged.pop();
        forged.push('A');
        b.iter(|| ring.verify(black_box(&forged), "ses-").is_err())
    });
    c.bench_function("cookie/sign", |b| {
        b.iter(|| ring.sign(black_box(id)).unwrap())
    });
    c.bench_function("csrf/token", |b| b.iter(|| csrf.token(black_box(id))));
}

criterion_group!(benches, bench);
criterion_main!(benches);
