//! `AUTH_BASIC_USERS` entries (and `AUTH_BASIC_ADMINS` after a NUL): every kept
//! user has an argon2 hash, and no warning repeats any part of a hash.
#![no_main]

use portcullis_core::basic::BasicUsers;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (users, admins) = text.split_once('\u{0}').unwrap_or((text, ""));
    let (parsed, _) = BasicUsers::parse(users, admins);
    for name in parsed.names() {
        assert!(
            !name.is_empty() && !name.contains(';') && !name.contains(':'),
            "{name:?}"
        );
        assert!(
            parsed
                .hash_of(name)
                .is_some_and(|h| h.starts_with("$argon2"))
        );
    }
    // Debug never shows a hash (unless a name or an admin is spelled like one).
    let debug = format!("{parsed:?}");
    for name in parsed.names() {
        let hash = parsed.hash_of(name).unwrap_or_default();
        let spelled = parsed.names().any(|n| n.contains(hash)) || admins.contains(hash);
        assert!(spelled || !debug.contains(hash), "Debug shows a hash");
    }
    // Entry by entry, so each warning is about the entry it names.
    for entry in users.split(';') {
        let Some((name, hash)) = entry.split_once(':') else {
            continue;
        };
        let hash = hash.trim();
        // Too short to tell, or text the warnings' own wording could contain.
        let wording = ["AUTH_BASIC_USERS", "hash-password)"];
        if hash.len() < 12
            || hash.contains(' ')
            || format!("{:?}", name.trim()).contains(hash)
            || wording.iter().any(|w| w.contains(hash))
        {
            continue;
        }
        let (_, warnings) = BasicUsers::parse(entry, "");
        for warning in warnings {
            assert!(
                !warning.to_string().contains(hash),
                "a warning repeats the hash: {warning}"
            );
        }
    }
});
