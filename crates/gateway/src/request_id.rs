//! Request ids: one per request, on the upstream request, the response, the access
//! event and as the error id of a failure.

use std::cell::Cell;
use std::sync::OnceLock;

/// A request id: unique across processes and requests without a system call per
/// request (a random prefix per process, then the event loop's own counter).
/// Not a secret, never an authority: it only ties log lines together.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestId {
    bytes: [u8; MAX_REQUEST_ID],
    len: u8,
}

/// Longest request id accepted from a trusted proxy.
const MAX_REQUEST_ID: usize = 64;

impl RequestId {
    /// The next id of this thread.
    pub fn next() -> Self {
        thread_local! {
            static NEXT: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
        }
        let (thread, count) = NEXT.with(|next| {
            let (mut thread, count) = next.get();
            if thread == 0 {
                thread = thread_number();
            }
            next.set((thread, count + 1));
            (thread, count)
        });
        let mut bytes = [0u8; MAX_REQUEST_ID];
        let hex = |n: u64, out: &mut [u8]| {
            let len = out.len();
            for (i, b) in out.iter_mut().enumerate() {
                let nibble = (n >> (4 * (len - 1 - i))) & 0xf;
                *b = b"0123456789abcdef"[nibble as usize];
            }
        };
        hex(process_prefix(), &mut bytes[..8]);
        hex(thread, &mut bytes[8..12]);
        hex(count, &mut bytes[12..24]);
        Self { bytes, len: 24 }
    }

    /// The id a trusted proxy sent, if it is one: 1 to 64 characters of
    /// `[A-Za-z0-9._:-]` (nothing that could split a log line or a header).
    pub fn from_proxy(value: &[u8]) -> Option<Self> {
        let ok = !value.is_empty()
            && value.len() <= MAX_REQUEST_ID
            && value
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        if !ok {
            return None;
        }
        let mut bytes = [0u8; MAX_REQUEST_ID];
        bytes[..value.len()].copy_from_slice(value);
        Some(Self {
            bytes,
            len: value.len() as u8,
        })
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever written.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// 32 bits per process: from the OS entropy source, or (should that fail; an id
/// is no secret) from the time and the process id.
fn process_prefix() -> u64 {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    *PREFIX.get_or_init(|| {
        use portcullis_core::secret::{Entropy, OsEntropy};
        let mut raw = [0u8; 4];
        match OsEntropy.fill(&mut raw) {
            Ok(()) => u64::from(u32::from_be_bytes(raw)),
            Err(_) => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                u64::from(nanos ^ std::process::id().rotate_left(16))
            }
        }
    })
}

/// A number per thread (16 bits), never 0.
fn thread_number() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static THREADS: AtomicU64 = AtomicU64::new(0);
    (THREADS.fetch_add(1, Ordering::Relaxed) % 0xffff) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_distinct_hex_of_one_length() {
        let a = RequestId::next();
        let b = RequestId::next();
        let other = std::thread::spawn(RequestId::next).join().unwrap();
        assert_ne!(a, b);
        assert_ne!(a, other);
        assert_ne!(b, other);
        for id in [&a, &b, &other] {
            assert_eq!(id.as_str().len(), 24);
            assert!(id.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        }
        assert_eq!(a.as_str()[..8], other.as_str()[..8], "one process prefix");
    }

    #[test]
    fn ids_from_proxies_are_checked() {
        // (value, accepted)
        let rows: &[(&[u8], bool)] = &[
            (b"abc-123", true),
            (b"0f1e.2d:3c_4b", true),
            (b"", false),
            (b"a b", false),
            (b"a\r\nx-forwarded-user: root", false),
            (b"caf\xc3\xa9", false),
            (&[b'a'; 64], true),
            (&[b'a'; 65], false),
        ];
        for (value, accepted) in rows {
            let id = RequestId::from_proxy(value);
            assert_eq!(
                id.is_some(),
                *accepted,
                "{:?}",
                String::from_utf8_lossy(value)
            );
            if let Some(id) = id {
                assert_eq!(id.as_str().as_bytes(), *value);
            }
        }
    }
}
