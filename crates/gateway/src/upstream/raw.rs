//! The fast path's raw upstream connections: a per-event-loop pool of keep-alive
//! HTTP/1.1 connections, request heads written as bytes, response heads parsed with
//! httparse and bodies relayed by their framing.

use std::collections::VecDeque;
use std::mem::MaybeUninit;
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::UpstreamError;
use super::chunked::Chunked;

/// Headers read per upstream response head (more: 502).
pub const MAX_HEADERS: usize = 128;
/// Largest upstream response head accepted.
const MAX_RESPONSE_HEAD: usize = 256 * 1024;
/// Upstream reads are at most this large; bodies stream through in such pieces.
pub const READ_CHUNK: usize = 64 * 1024;
/// Idle upstream connections kept per event loop, and for how long.
const MAX_IDLE: usize = 1024;
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How an upstream response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}
/// A connection to the upstream, with its read buffer.
pub struct UpstreamConn {
    stream: TcpStream,
    pub buf: BytesMut,
    /// It came from the pool (so the upstream may have closed it meanwhile).
    pub reused: bool,
    pub head_len: usize,
    pub remaining: u64,
    pub chunked: Chunked,
}

impl UpstreamConn {
    fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
            reused: false,
            head_len: 0,
            remaining: 0,
            chunked: Chunked::default(),
        }
    }

    /// Sends `request`, reads until the final (non-1xx) response head is complete
    /// and hands it to `head`, which writes its client-facing version and says how
    /// the body is delimited and whether the connection may be reused.
    pub async fn send_and_read_head(
        &mut self,
        request: &[u8],
        head: &mut impl FnMut(&httparse::Response<'_, '_>) -> Result<(Framing, bool), &'static str>,
    ) -> Result<(Framing, bool), UpstreamError> {
        self.buf.clear();
        self.chunked = Chunked::default();
        self.stream
            .write_all(request)
            .await
            .map_err(UpstreamError::Send)?;
        loop {
            let mut headers = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut []);
            let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut response,
                &self.buf,
                &mut headers,
            );
            match parsed {
                Ok(httparse::Status::Complete(len)) => match response.code {
                    // Interim responses (100, 102, 103) are not forwarded.
                    Some(code) if (100..200).contains(&code) && code != 101 => {
                        self.buf.advance(len);
                        continue;
                    }
                    Some(101) => {
                        return Err(UpstreamError::Malformed(
                            "unexpected 101 Switching Protocols",
                        ));
                    }
                    _ => {
                        self.head_len = len;
                        return head(&response).map_err(UpstreamError::Malformed);
                    }
                },
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(UpstreamError::MalformedHead(e)),
            }
            if self.buf.len() >= MAX_RESPONSE_HEAD {
                return Err(UpstreamError::Malformed("response head too large"));
            }
            self.buf
                .reserve(READ_CHUNK.min(MAX_RESPONSE_HEAD - self.buf.len()));
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) => return Err(UpstreamError::ClosedEarly),
                Ok(_) => {}
                Err(e) => return Err(UpstreamError::Read(e)),
            }
        }
    }

    /// Relays the rest of the body (what was not in the first write) to `client`.
    pub async fn stream_body(
        &mut self,
        framing: Framing,
        client: &mut crate::fastpath::ClientStream,
    ) -> Result<(), ()> {
        loop {
            self.buf.clear();
            self.buf.reserve(READ_CHUNK);
            let read = self.stream.read_buf(&mut self.buf).await.map_err(drop)?;
            match framing {
                Framing::Empty => return Ok(()),
                Framing::Length(_) => {
                    if read == 0 {
                        return Err(());
                    }
                    let now = (read as u64).min(self.remaining) as usize;
                    client.write_all(&self.buf[..now]).await.map_err(drop)?;
                    self.remaining -= now as u64;
                    self.buf.advance(now);
                    if self.remaining == 0 {
                        return Ok(());
                    }
                }
                Framing::Chunked => {
                    if read == 0 {
                        return Err(());
                    }
                    let n = self.chunked.scan(&self.buf).map_err(drop)?;
                    client.write_all(&self.buf[..n]).await.map_err(drop)?;
                    self.buf.advance(n);
                    if self.chunked.done() {
                        return Ok(());
                    }
                }
                Framing::UntilClose => {
                    if read == 0 {
                        return Ok(());
                    }
                    client.write_all(&self.buf).await.map_err(drop)?;
                }
            }
        }
    }
}

/// Idle keep-alive connections to the upstream, one pool per event loop.
#[derive(Debug)]
pub struct RawPool {
    addr: String,
    connect_timeout: Duration,
    idle: Mutex<VecDeque<(UpstreamConn, Instant)>>,
}

impl std::fmt::Debug for UpstreamConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConn")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl RawPool {
    pub fn new(addr: String, connect_timeout: Duration) -> Self {
        Self {
            addr,
            connect_timeout,
            idle: Mutex::new(VecDeque::new()),
        }
    }

    /// The most recently used idle connection that is still open, or a new one.
    pub async fn checkout(&self, now: Instant) -> Result<UpstreamConn, UpstreamError> {
        loop {
            let next = self
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_back();
            let Some((mut conn, since)) = next else { break };
            if now.saturating_duration_since(since) > IDLE_TIMEOUT {
                continue;
            }
            // An idle connection must have nothing to read: data or EOF means the
            // upstream closed it (or broke the protocol). No system call when the
            // reactor has seen nothing.
            let mut probe = [0u8; 1];
            match conn.stream.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    conn.reused = true;
                    return Ok(conn);
                }
                _ => continue,
            }
        }
        self.connect().await
    }

    pub async fn connect(&self) -> Result<UpstreamConn, UpstreamError> {
        let stream = super::connect_tcp(&self.addr, self.connect_timeout).await?;
        let _ = stream.set_nodelay(true);
        Ok(UpstreamConn::new(stream))
    }

    /// Returns `conn`, last used at `now`; connections idle too long leave the
    /// other end (the oldest).
    pub fn checkin(&self, conn: UpstreamConn, now: Instant) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while idle
            .front()
            .is_some_and(|(_, since)| now.saturating_duration_since(*since) > IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
        if idle.len() < MAX_IDLE {
            idle.push_back((conn, now));
        }
    }
}
