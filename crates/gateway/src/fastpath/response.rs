//! The fast path's answers to the client: the client-facing head of an upstream
//! response (strict framing: both `Content-Length` and `Transfer-Encoding`, an
//! invalid length or a transfer coding other than `chunked` are refused), and the
//! few responses the fast path makes itself (502/504 from [`crate::error`]).

use std::time::SystemTime;

use super::ClientStream;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use super::Forward;
use crate::request_id::RequestId;
use crate::upstream::raw::Framing;
use crate::upstream::rewrite::{self, NormalName, is_hop_by_hop, push_header};

/// Writes the client-facing head of the upstream response in `buf` to `out`:
/// status line, end-to-end headers, framing, `Date` if missing. Returns how the
/// body is delimited and whether the upstream connection may be reused.
pub(super) fn response_head(
    response: &httparse::Response<'_, '_>,
    plan: &Forward,
    request_id: &RequestId,
    out: &mut Vec<u8>,
) -> Result<(Framing, bool), &'static str> {
    let (Some(version), Some(code)) = (response.version, response.code) else {
        return Err("malformed response head");
    };
    let mut reusable = version == 1;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut has_date = false;
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let digits = h.value.trim_ascii();
            let value = (!digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(digits).ok()?.parse::<u64>().ok())
                .flatten()
                .ok_or("invalid content-length")?;
            if length.is_some_and(|l| l != value) {
                return Err("conflicting content-length");
            }
            length = Some(value);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err("unsupported transfer-encoding");
            }
            chunked = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    reusable = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && version == 0 {
                    reusable = true;
                }
            }
        } else if h.name.eq_ignore_ascii_case("date") {
            has_date = true;
        }
    }
    if chunked && length.is_some() {
        // Both framings at once is how responses are smuggled; refuse it.
        return Err("both content-length and transfer-encoding");
    }
    let no_body = plan.head || code == 204 || code == 304;
    let framing = match (no_body, chunked, length) {
        (true, _, _) => Framing::Empty,
        (false, true, _) => Framing::Chunked,
        (false, false, Some(n)) => Framing::Length(n),
        (false, false, None) => Framing::UntilClose,
    };
    out.extend_from_slice(b"HTTP/1.1 ");
    // httparse reads exactly three digits.
    out.extend_from_slice(&[
        b'0' + (code / 100 % 10) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
    ]);
    out.push(b' ');
    out.extend_from_slice(response.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let named_in_connection = |name: &str| {
        response
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .flat_map(|h| h.value.split(|b| *b == b','))
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
    };
    for h in response.headers.iter() {
        let normal = NormalName::new(h.name);
        let name = normal.as_str();
        if is_hop_by_hop(name)
            || name == rewrite::X_REQUEST_ID
            || (code == 204 && name == "content-length")
            || named_in_connection(h.name)
        {
            continue;
        }
        push_header(out, h.name.as_bytes(), h.value);
    }
    push_header(
        out,
        rewrite::X_REQUEST_ID.as_bytes(),
        request_id.as_str().as_bytes(),
    );
    if framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !has_date {
        push_date(out);
    }
    // Delimited by the upstream closing, so by closing towards the client too; and
    // a client that asked to close is told the connection ends here.
    if framing == Framing::UntilClose || plan.close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok((framing, reusable))
}

/// `date: <IMF-fixdate>\r\n`, formatted at most once a second per thread.
fn push_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs || text.is_empty() {
            *at = secs;
            *text = httpdate::fmt_http_date(now);
        }
        push_header(out, b"date", text.as_bytes());
    });
}

/// Writes a response the gateway made (502/504) to the client.
pub(super) async fn write_response(
    client: &mut ClientStream,
    response: axum::response::Response,
    request_id: &RequestId,
    close: bool,
) -> std::io::Result<()> {
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or("Unknown")
            .as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name != http::header::CONTENT_LENGTH {
            push_header(&mut out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    out.extend_from_slice(b"content-length: ");
    write_display(&mut out, body.len());
    out.extend_from_slice(b"\r\n");
    push_date(&mut out);
    push_header(
        &mut out,
        rewrite::X_REQUEST_ID.as_bytes(),
        request_id.as_str().as_bytes(),
    );
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    client.write_all(&out).await
}

fn write_display(out: &mut Vec<u8>, value: impl std::fmt::Display) {
    use std::io::Write;
    let _ = write!(out, "{value}");
}
