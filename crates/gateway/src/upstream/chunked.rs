//! A strict, incremental checker of chunked upstream response bodies (RFC 9112
//! section 7.1). The fast path forwards the bytes as they are and uses this only to
//! know where a body ends and to refuse one that is not well formed (a malformed
//! chunk is how responses are smuggled).

/// Largest trailer section of a chunked upstream response.
const MAX_TRAILERS: usize = 64 * 1024;

/// Incremental checker of a chunked body (RFC 9112 section 7.1), strict: sizes of
/// at most 16 hex digits, CRLF line ends, visible ASCII in extensions and
/// trailers, a bounded trailer section. The bytes are forwarded as they are.
#[derive(Debug, Default, Clone)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u8,
    trailer_bytes: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// A chunked body that is not well formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkError(&'static str);

impl ChunkError {
    pub fn reason(self) -> &'static str {
        self.0
    }
}

impl Chunked {
    /// Checks `input`, the next bytes of the body; returns how many belong to it
    /// (fewer than all only when the body ends inside `input`).
    pub fn scan(&mut self, input: &[u8]) -> Result<usize, ChunkError> {
        use ChunkState::*;
        let mut i = 0;
        while i < input.len() {
            match self.state {
                Done => return Ok(i),
                Data => {
                    let take = self.size.min((input.len() - i) as u64);
                    i += take as usize;
                    self.size -= take;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                    continue;
                }
                _ => {}
            }
            let b = input[i];
            i += 1;
            let text = b == b'\t' || (0x20..0x7f).contains(&b);
            self.state = match (self.state, b) {
                (Size, b) if b.is_ascii_hexdigit() => {
                    if self.digits == 16 {
                        return Err(ChunkError("chunk size too large"));
                    }
                    self.digits += 1;
                    self.size = (self.size << 4) | u64::from(hex_value(b));
                    Size
                }
                (Size, b';' | b' ' | b'\t') if self.digits > 0 => Extension,
                (Size, b'\r') if self.digits > 0 => SizeLf,
                (Extension, b'\r') => SizeLf,
                (Extension, _) if text => Extension,
                (SizeLf, b'\n') => {
                    self.digits = 0;
                    if self.size == 0 { TrailerStart } else { Data }
                }
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => Size,
                (TrailerStart, b'\r') => EndLf,
                (TrailerStart | Trailer, _) if text => {
                    self.trailer_bytes += 1;
                    if self.trailer_bytes > MAX_TRAILERS {
                        return Err(ChunkError("trailers too large"));
                    }
                    Trailer
                }
                (Trailer, b'\r') => TrailerLf,
                (TrailerLf, b'\n') => TrailerStart,
                (EndLf, b'\n') => Done,
                _ => return Err(ChunkError("unexpected byte")),
            };
        }
        Ok(i)
    }

    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_delimited_exactly() {
        // (name, body, bytes that belong to it, complete)
        let rows: &[(&str, &[u8], usize, bool)] = &[
            ("one chunk", b"5\r\nhello\r\n0\r\n\r\n", 15, true),
            ("extension", b"5;a=b\r\nhello\r\n0\r\n\r\n", 19, true),
            ("trailer", b"1\r\nx\r\n0\r\nx-t: 1\r\n\r\n", 19, true),
            ("bytes after the end", b"0\r\n\r\nGET / HTTP/1.1", 5, true),
            ("upper-case hex", b"A\r\n0123456789\r\n0\r\n\r\n", 20, true),
            ("cut in the data", b"5\r\nhel", 6, false),
            ("cut in the size line", b"5", 1, false),
        ];
        for (name, body, belongs, complete) in rows {
            let mut scan = Chunked::default();
            assert_eq!(scan.scan(body), Ok(*belongs), "{name}");
            assert_eq!(scan.done(), *complete, "{name}");
        }
    }

    #[test]
    fn any_split_gives_the_same_result() {
        let body = b"3;x\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nt: v\r\n\r\n";
        for split in 0..body.len() {
            let mut scan = Chunked::default();
            let first = scan.scan(&body[..split]).unwrap();
            assert_eq!(first, split);
            assert_eq!(scan.scan(&body[split..]), Ok(body.len() - split));
            assert!(scan.done(), "split at {split}");
        }
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        let rows: &[(&str, &[u8])] = &[
            ("no size", b"\r\nhello\r\n"),
            ("not hex", b"g\r\n"),
            ("size too large", b"11111111111111111\r\n"),
            ("bare LF after size", b"5\nhello\r\n"),
            ("data longer than size", b"2\r\nabc\r\n"),
            ("control byte in extension", b"1;\x01\r\nx\r\n"),
            ("bare LF ends", b"0\r\n\n"),
            ("negative size", b"-1\r\n"),
        ];
        for (name, body) in rows {
            assert!(Chunked::default().scan(body).is_err(), "{name}");
        }
        let mut scan = Chunked::default();
        scan.scan(b"0\r\n").unwrap();
        let huge = vec![b'a'; MAX_TRAILERS + 1];
        assert!(scan.scan(&huge).is_err(), "trailers over the limit");
    }
}
