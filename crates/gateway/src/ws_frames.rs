//! WebSocket frame boundaries (RFC 6455, section 5.2) for the relay, which forwards
//! bytes verbatim and parses only frame headers: enough to know where a frame ends
//! (so a close frame can be injected between two frames), to see close frames, and
//! to refuse what the protocol forbids (reserved bits without extensions, unknown
//! opcodes, unmasked client frames, fragmented or long control frames, frames past
//! the size limit). Payloads are never copied, unmasked or re-masked.

/// Largest frame payload relayed (a bound on what a peer can make the gateway
/// stream without a boundary; messages may span several frames).
pub const MAX_FRAME: u64 = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("reserved bits set without a negotiated extension")]
    Reserved,
    #[error("unknown opcode {0:#x}")]
    Opcode(u8),
    #[error("frame masking is wrong for its direction")]
    Masking,
    #[error("control frame fragmented or longer than 125 bytes")]
    Control,
    #[error("frame of {0} bytes exceeds the limit")]
    TooBig(u64),
    #[error("invalid length encoding")]
    Length,
}

#[derive(Debug, Clone)]
enum State {
    /// Collecting a header: the bytes seen so far.
    Header { bytes: [u8; 14], have: usize },
    /// Inside a payload: bytes still to pass.
    Payload { remaining: u64 },
}

/// Tracks frame boundaries in one direction of a connection.
#[derive(Debug, Clone)]
pub struct FrameTracker {
    /// Client-to-server frames must be masked; server-to-client frames must not.
    masked: bool,
    state: State,
    closed: bool,
}

impl FrameTracker {
    pub fn new(masked: bool) -> Self {
        Self {
            masked,
            state: State::Header {
                bytes: [0; 14],
                have: 0,
            },
            closed: false,
        }
    }

    /// Between two frames: a frame may be injected here.
    pub fn at_boundary(&self) -> bool {
        matches!(self.state, State::Header { have: 0, .. })
    }

    /// A close frame has passed in this direction.
    pub fn saw_close(&self) -> bool {
        self.closed
    }

    /// Accounts for `data`, the next bytes of the stream. On a violation, also says
    /// how many leading bytes of `data` were whole frames (or the start of a frame)
    /// before the offending header, so they can still be delivered.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), (FrameError, usize)> {
        let total = data.len();
        let mut header_start = 0;
        self.feed_inner(data, &mut header_start)
            .map_err(|e| (e, header_start.min(total)))
    }

    fn feed_inner(&mut self, mut data: &[u8], header_start: &mut usize) -> Result<(), FrameError> {
        let total = data.len();
        while !data.is_empty() {
            if let State::Header { have: 0, .. } = self.state {
                *header_start = total - data.len();
            }
            match &mut self.state {
                State::Payload { remaining } => {
                    let take = (*remaining).min(data.len() as u64);
                    *remaining -= take;
                    data = &data[take as usize..];
                    if *remaining == 0 {
                        self.state = State::Header {
                            bytes: [0; 14],
                            have: 0,
                        };
                    }
                }
                State::Header { bytes, have } => {
                    // The header's length is known once its second byte is.
                    let take = (header_len(&bytes[..*have]) - *have).min(data.len());
                    bytes[*have..*have + take].copy_from_slice(&data[..take]);
                    *have += take;
                    data = &data[take..];
                    if *have >= 2 && *have == header_len(&bytes[..*have]) {
                        let (header, len) = (*bytes, *have);
                        let payload = self.check(&header[..len])?;
                        self.state = if payload == 0 {
                            State::Header {
                                bytes: [0; 14],
                                have: 0,
                            }
                        } else {
                            State::Payload { remaining: payload }
                        };
                    }
                }
            }
        }
        Ok(())
    }

    /// Validates a complete header and returns its payload length.
    fn check(&mut self, header: &[u8]) -> Result<u64, FrameError> {
        let (b0, b1) = (header[0], header[1]);
        if b0 & 0x70 != 0 {
            return Err(FrameError::Reserved);
        }
        let opcode = b0 & 0x0F;
        if !matches!(opcode, 0x0 | 0x1 | 0x2 | 0x8 | 0x9 | 0xA) {
            return Err(FrameError::Opcode(opcode));
        }
        if (b1 & 0x80 != 0) != self.masked {
            return Err(FrameError::Masking);
        }
        let len = match b1 & 0x7F {
            126 => {
                let len = u64::from(u16::from_be_bytes([header[2], header[3]]));
                if len < 126 {
                    return Err(FrameError::Length);
                }
                len
            }
            127 => {
                let mut raw = [0u8; 8];
                raw.copy_from_slice(&header[2..10]);
                let len = u64::from_be_bytes(raw);
                if len >> 63 != 0 || len <= 0xFFFF {
                    return Err(FrameError::Length);
                }
                len
            }
            small => u64::from(small),
        };
        if opcode >= 0x8 && (b0 & 0x80 == 0 || len > 125) {
            return Err(FrameError::Control);
        }
        if len > MAX_FRAME {
            return Err(FrameError::TooBig(len));
        }
        if opcode == 0x8 {
            self.closed = true;
        }
        Ok(len)
    }
}

/// Length of the header whose first bytes are `seen` (2 until the second byte is
/// known).
fn header_len(seen: &[u8]) -> usize {
    if seen.len() < 2 {
        return 2;
    }
    let mask = if seen[1] & 0x80 != 0 { 4 } else { 0 };
    let extended = match seen[1] & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + extended + mask
}

/// A close frame with `code` and `reason` (at most 123 bytes), masked with `mask`
/// when sent by the gateway as a client (towards the upstream).
pub fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    let mut frame = vec![0x88, payload.len() as u8];
    if let Some(mask) = mask {
        frame[1] |= 0x80;
        frame.extend_from_slice(&mask);
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= mask[i % 4];
        }
    }
    frame.extend_from_slice(&payload);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, opcode: u8, mask: Option<[u8; 4]>, payload_len: usize) -> Vec<u8> {
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload_len {
            0..=125 => out.push(m | payload_len as u8),
            126..=0xFFFF => {
                out.push(m | 126);
                out.extend_from_slice(&(payload_len as u16).to_be_bytes());
            }
            _ => {
                out.push(m | 127);
                out.extend_from_slice(&(payload_len as u64).to_be_bytes());
            }
        }
        if let Some(mask) = mask {
            out.extend_from_slice(&mask);
        }
        out.extend(std::iter::repeat_n(0x61, payload_len));
        out
    }

    /// Feeds `stream` in chunks of every size from 1 byte up, so headers and
    /// payloads split anywhere.
    fn track(masked: bool, stream: &[u8]) -> Result<FrameTracker, FrameError> {
        let mut last = None;
        for chunk in [1, 2, 3, 5, 7, 13, 64, 4096, stream.len().max(1)] {
            let mut tracker = FrameTracker::new(masked);
            for piece in stream.chunks(chunk) {
                tracker.feed(piece).map_err(|(e, _)| e)?;
            }
            last = Some(tracker);
        }
        Ok(last.expect("at least one chunk size"))
    }

    #[test]
    fn boundaries_survive_any_split() {
        let m = Some([1, 2, 3, 4]);
        let mut stream = Vec::new();
        stream.extend(frame(true, 0x1, m, 5));
        stream.extend(frame(false, 0x2, m, 300));
        stream.extend(frame(true, 0x0, m, 70_000));
        stream.extend(frame(true, 0x9, m, 0));
        stream.extend(frame(true, 0x8, m, 2));
        let tracker = track(true, &stream).unwrap();
        assert!(tracker.at_boundary());
        assert!(tracker.saw_close());
        let mut partial = FrameTracker::new(true);
        partial.feed(&stream[..stream.len() - 1]).unwrap();
        assert!(!partial.at_boundary(), "inside the last frame");
        let mut header_only = FrameTracker::new(false);
        header_only.feed(&[0x82, 126]).unwrap();
        assert!(!header_only.at_boundary(), "inside a header");
    }

    #[test]
    fn refusal_rows() {
        let m = Some([9, 9, 9, 9]);
        let rows: Vec<(&str, bool, Vec<u8>, FrameError)> = vec![
            (
                "unmasked client frame",
                true,
                frame(true, 0x1, None, 3),
                FrameError::Masking,
            ),
            (
                "masked server frame",
                false,
                frame(true, 0x1, m, 3),
                FrameError::Masking,
            ),
            (
                "reserved bit (compression not negotiated)",
                true,
                {
                    let mut f = frame(true, 0x1, m, 3);
                    f[0] |= 0x40;
                    f
                },
                FrameError::Reserved,
            ),
            (
                "unknown opcode",
                true,
                frame(true, 0x3, m, 0),
                FrameError::Opcode(3),
            ),
            (
                "fragmented control frame",
                true,
                frame(false, 0x9, m, 0),
                FrameError::Control,
            ),
            (
                "long control frame",
                true,
                frame(true, 0x8, m, 126),
                FrameError::Control,
            ),
            (
                "frame past the limit",
                false,
                {
                    let mut f = vec![0x82, 127];
                    f.extend_from_slice(&(MAX_FRAME + 1).to_be_bytes());
                    f
                },
                FrameError::TooBig(MAX_FRAME + 1),
            ),
            (
                "64-bit length with the top bit",
                false,
                {
                    let mut f = vec![0x82, 127];
                    f.extend_from_slice(&u64::MAX.to_be_bytes());
                    f
                },
                FrameError::Length,
            ),
            (
                "non-minimal 16-bit length",
                false,
                vec![0x82, 126, 0, 5],
                FrameError::Length,
            ),
        ];
        for (name, masked, bytes, expected) in rows {
            assert_eq!(track(masked, &bytes).unwrap_err(), expected, "{name}");
        }
    }

    #[test]
    fn frames_before_a_violation_are_counted_as_deliverable() {
        let m = Some([1, 2, 3, 4]);
        let good = frame(true, 0x1, m, 5);
        let mut stream = good.clone();
        stream.extend(frame(true, 0x1, None, 3));
        let (error, deliverable) = FrameTracker::new(true).feed(&stream).unwrap_err();
        assert_eq!(error, FrameError::Masking);
        assert_eq!(deliverable, good.len());
    }

    #[test]
    fn close_frames_are_well_formed_both_ways() {
        let plain = close_frame(4401, "session revoked", None);
        assert_eq!(&plain[..4], &[0x88, 17, 0x11, 0x31]);
        assert_eq!(&plain[4..], b"session revoked");
        let mut tracker = FrameTracker::new(false);
        tracker.feed(&plain).unwrap();
        assert!(tracker.at_boundary() && tracker.saw_close());

        let masked = close_frame(1001, "bye", Some([1, 2, 3, 4]));
        let mut tracker = FrameTracker::new(true);
        tracker.feed(&masked).unwrap();
        assert!(tracker.at_boundary() && tracker.saw_close());
        let payload: Vec<u8> = masked[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4])
            .collect();
        assert_eq!(payload, [&1001u16.to_be_bytes()[..], b"bye"].concat());
        let long = close_frame(1000, &"x".repeat(300), None);
        assert_eq!(long.len(), 2 + 125);
    }
}
