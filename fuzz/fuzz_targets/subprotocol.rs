//! `Sec-WebSocket-Protocol` offers (values split at newlines): the token-bearing
//! entry is never forwarded upstream nor echoed to the client.
#![no_main]

use portcullis_core::subprotocol::{JEP121_MARKER, answer, parse_offer};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (values, selected) = text.rsplit_once('\u{0}').unwrap_or((text, ""));
    let Ok(offer) = parse_offer(values.split('\n')) else {
        return;
    };
    let token_entry = concat!("v1.token.websocket.jupyter.org", ".");
    for forwarded in &offer.forwarded {
        assert!(!forwarded.starts_with(token_entry), "token entry forwarded");
        assert_ne!(forwarded, JEP121_MARKER);
        assert!(!forwarded.contains(',') && forwarded.trim() == forwarded);
    }
    if let Some(token) = &offer.token {
        assert!(!token.is_empty());
    }
    if let Some(chosen) = answer(&offer, Some(selected).filter(|s| !s.is_empty())) {
        assert!(!chosen.starts_with(token_entry), "token entry echoed");
        assert!(chosen == JEP121_MARKER || offer.forwarded.iter().any(|p| p == chosen));
    }
});
