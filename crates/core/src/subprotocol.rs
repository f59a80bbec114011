//! Bearer tokens carried in `Sec-WebSocket-Protocol` (Jupyter JEP 121).
//!
//! Browsers cannot set `Authorization` on a WebSocket, but they can offer
//! subprotocols. A client offers the bare marker `v1.token.websocket.jupyter.org`
//! and `v1.token.websocket.jupyter.org.<url-encoded token>`. The gateway takes the
//! token, removes both entries from what it forwards (other protocols keep their
//! order), and never echoes the token-bearing entry back.

/// The bare marker entry.
pub const JEP121_MARKER: &str = "v1.token.websocket.jupyter.org";

/// What a `Sec-WebSocket-Protocol` offer says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Offer {
    /// The url-decoded token, if exactly one token entry was offered.
    pub token: Option<String>,
    /// The bare marker was offered (so it may be selected in the answer).
    pub marker_offered: bool,
    /// The offered protocols other than the JEP 121 entries, in order.
    pub forwarded: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    #[error("more than one token entry in Sec-WebSocket-Protocol")]
    TwoTokens,
    #[error("empty token in Sec-WebSocket-Protocol")]
    EmptyToken,
    #[error("token in Sec-WebSocket-Protocol is not valid url-encoded UTF-8")]
    Encoding,
}

/// Parses all `Sec-WebSocket-Protocol` header values (comma-separated lists).
pub fn parse_offer<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<Offer, OfferError> {
    let token_prefix = concat!("v1.token.websocket.jupyter.org", ".");
    let mut offer = Offer::default();
    for entry in values.into_iter().flat_map(|v| v.split(',')).map(str::trim) {
        if entry.is_empty() {
            continue;
        }
        if entry == JEP121_MARKER {
            offer.marker_offered = true;
        } else if let Some(encoded) = entry.strip_prefix(token_prefix) {
            if offer.token.is_some() {
                return Err(OfferError::TwoTokens);
            }
            let token = percent_decode(encoded).ok_or(OfferError::Encoding)?;
            if token.is_empty() {
                return Err(OfferError::EmptyToken);
            }
            offer.token = Some(token);
        } else {
            offer.forwarded.push(entry.to_owned());
        }
    }
    Ok(offer)
}

/// The protocol to answer the client with: the upstream's selection (which can only
/// be one of the forwarded ones), else the bare marker if the client offered it
/// (browsers fail a handshake whose offer gets no answer), else none.
pub fn answer<'a>(offer: &Offer, upstream_selected: Option<&'a str>) -> Option<&'a str> {
    match upstream_selected {
        Some(selected) if offer.forwarded.iter().any(|p| p == selected) => Some(selected),
        // An upstream answering with something never offered is ignored.
        _ if offer.token.is_some() && offer.marker_offered => Some(JEP121_MARKER),
        _ => None,
    }
}

fn percent_decode(input: &str) -> Option<String> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
                let (h, l) = (hex(bytes.get(i + 1))?, hex(bytes.get(i + 2))?);
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "v1.token.websocket.jupyter.org.pct_abc";

    #[test]
    fn offer_rows() {
        let kernel = "v1.kernel.websocket.jupyter.org";
        /// Expected: token, marker offered, forwarded protocols.
        type Parsed<'a> = Result<(Option<&'a str>, bool, Vec<&'a str>), OfferError>;
        let rows: Vec<(&str, Vec<String>, Parsed)> = vec![
            (
                "token first",
                vec![format!("{T}, {JEP121_MARKER}, {kernel}")],
                Ok((Some("pct_abc"), true, vec![kernel])),
            ),
            (
                "token last",
                vec![format!("{kernel}, {JEP121_MARKER}, {T}")],
                Ok((Some("pct_abc"), true, vec![kernel])),
            ),
            (
                "token in the middle",
                vec![format!("a, {T}, b, {JEP121_MARKER}")],
                Ok((Some("pct_abc"), true, vec!["a", "b"])),
            ),
            (
                "url-encoded characters",
                vec![format!("{JEP121_MARKER}.a%2Fb%3D%25c, {JEP121_MARKER}")],
                Ok((Some("a/b=%c"), true, vec![])),
            ),
            (
                "missing bare entry",
                vec![T.to_string()],
                Ok((Some("pct_abc"), false, vec![])),
            ),
            (
                "entries split across headers",
                vec![T.to_string(), format!("{JEP121_MARKER}, {kernel}")],
                Ok((Some("pct_abc"), true, vec![kernel])),
            ),
            (
                "two token entries",
                vec![format!("{T}, {JEP121_MARKER}.pct_def")],
                Err(OfferError::TwoTokens),
            ),
            (
                "empty token",
                vec![format!("{JEP121_MARKER}., {JEP121_MARKER}")],
                Err(OfferError::EmptyToken),
            ),
            (
                "bad encoding",
                vec![format!("{JEP121_MARKER}.%zz")],
                Err(OfferError::Encoding),
            ),
            (
                "non-UTF-8 token",
                vec![format!("{JEP121_MARKER}.%ff")],
                Err(OfferError::Encoding),
            ),
            (
                "no JEP 121 entries",
                vec!["a, b".to_string()],
                Ok((None, false, vec!["a", "b"])),
            ),
            (
                "marker only",
                vec![JEP121_MARKER.to_string()],
                Ok((None, true, vec![])),
            ),
        ];
        for (name, values, expected) in rows {
            let got = parse_offer(values.iter().map(String::as_str))
                .map(|o| (o.token, o.marker_offered, o.forwarded));
            let expected = expected.map(|(t, m, f)| {
                (
                    t.map(str::to_owned),
                    m,
                    f.into_iter().map(str::to_owned).collect::<Vec<_>>(),
                )
            });
            assert_eq!(got, expected, "row {name}");
        }
    }

    #[test]
    fn answer_rows() {
        let offer = parse_offer([
            format!("{T}, {JEP121_MARKER}, v1.kernel.websocket.jupyter.org").as_str(),
        ])
        .unwrap();
        assert_eq!(
            answer(&offer, Some("v1.kernel.websocket.jupyter.org")),
            Some("v1.kernel.websocket.jupyter.org")
        );
        assert_eq!(answer(&offer, None), Some(JEP121_MARKER));
        assert_eq!(
            answer(&offer, Some(T)),
            Some(JEP121_MARKER),
            "the token entry is never echoed"
        );
        let no_marker = parse_offer([T]).unwrap();
        assert_eq!(answer(&no_marker, None), None);
    }
}
