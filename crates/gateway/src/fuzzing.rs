//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`, never part of a
//! release build). Each feeds one parser what a client or an upstream could send
//! and checks the invariants the rest of the gateway relies on, beyond "no panic".

use std::sync::LazyLock;

use crate::config::{GatewayConfig, PublicUrl, Upstream};
use crate::cookies::{self, CLIENT_COOKIE, Held, SESSION_COOKIE};
use crate::upstream::chunked::Chunked;
use crate::ws_frames::FrameTracker;

static CONFIG: LazyLock<GatewayConfig> = LazyLock::new(|| {
    match (
        Upstream::parse("http://127.0.0.1:9"),
        PublicUrl::parse("http://gw.test"),
    ) {
        (Ok(upstream), Ok(public)) => GatewayConfig::new(upstream, public),
        _ => unreachable!("fixed, valid URLs"),
    }
});

/// The fast path's request planner on one buffer (a request head and whatever
/// follows it).
pub fn fastpath_plan(data: &[u8]) {
    crate::fastpath::fuzz_plan(&CONFIG, data);
}

/// `Cookie` header values (`data` split at newlines): the fast path's one-pass
/// reading agrees with the general path's, and nothing the gateway owns is among
/// the pairs forwarded upstream.
pub fn cookie_headers(data: &[u8]) {
    let values: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
    let values = || values.iter().copied();
    fn single(held: Held<'_>) -> Result<Option<&str>, ()> {
        match held {
            Held::None => Ok(None),
            Held::One(value) => Ok(Some(value)),
            Held::Several(_) => Err(()),
        }
    }
    let client = single(cookies::held_from(values(), CLIENT_COOKIE));
    let session = single(cookies::held_from(values(), SESSION_COOKIE));
    let general = client.and_then(|c| session.map(|s| (c, s)));
    assert_eq!(cookies::credential_pair(values()), general);
    if let Ok((client, session)) = general {
        for value in [client, session].into_iter().flatten() {
            let _ = portcullis_core::cookie::parse(value, portcullis_core::cookie::SESSION_PREFIX);
        }
    }
    for pair in cookies::foreign_pairs(values()) {
        let name = pair.split('=').next().unwrap_or_default().trim();
        let name = name.strip_prefix(cookies::HOST_PREFIX).unwrap_or(name);
        assert!(
            !cookies::GATEWAY_COOKIES.contains(&name),
            "gateway cookie {pair:?} would be forwarded"
        );
    }
}

/// The chunked-body checker: the same verdict and the same body length however
/// the bytes are split across reads.
pub fn chunked_body(data: &[u8]) {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let whole = Chunked::default().scan(data);
    let at = usize::from(split).min(data.len());
    let mut parts = Chunked::default();
    let pieces = parts.scan(&data[..at]).and_then(|first| {
        if first < at {
            Ok(first)
        } else {
            parts.scan(&data[at..]).map(|rest| first + rest)
        }
    });
    assert_eq!(whole, pieces);
    if let Ok(n) = whole {
        assert!(n <= data.len());
    }
}

/// WebSocket frame tracking in both directions: the same verdict however the
/// stream is split, and on a violation never more bytes to deliver than were fed.
pub fn ws_frames(data: &[u8]) {
    let Some((&control, data)) = data.split_first() else {
        return;
    };
    let masked = control & 1 == 1;
    let at = usize::from(control >> 1).min(data.len());
    let whole = FrameTracker::new(masked).feed(data);
    if let Err((_, deliverable)) = &whole {
        assert!(*deliverable <= data.len());
    }
    let mut parts = FrameTracker::new(masked);
    let pieces = parts
        .feed(&data[..at])
        .map_err(|(e, _)| e)
        .and_then(|()| parts.feed(&data[at..]).map_err(|(e, _)| e));
    assert_eq!(whole.map_err(|(e, _)| e), pieces);
}
