//! Request bodies as clients send them, bounded in time (SPEC 9: a slow body is
//! bounded like everything else a client can hold). A [`ClientBody`] must arrive
//! by a deadline that starts at `grace` and grows with every byte received at the
//! minimum rate, so a large upload at a reasonable speed is never cut while a
//! client that stalls (a `Content-Length: 1000` and then nothing, a trailer that
//! never ends) is dropped once the deadline passes. Its failures, malformed
//! framing included, are the client's: they are marked in a shared flag so the
//! proxy answers 400 and closes the connection instead of blaming the upstream.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// How long a request body may take: `grace`, plus one second per `min_rate`
/// bytes received (`None`: no extension, a fixed deadline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    pub grace: Duration,
    pub min_rate: Option<u32>,
}

/// Why a client's request body failed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is malformed: {0}")]
    Malformed(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the request body arrived too slowly")]
    TooSlow,
}

/// A request body with a deadline; see the module documentation.
#[derive(Debug)]
pub struct ClientBody<B> {
    inner: B,
    limits: BodyLimits,
    started: Instant,
    received: u64,
    deadline: Pin<Box<Sleep>>,
    failed: Arc<AtomicBool>,
    progress: Arc<BodyProgress>,
}

/// How far a [`ClientBody`] has been sent, for whoever waits on the upstream:
/// when it last moved, and when it ended (the upstream's time to answer starts
/// then, not while a client is still uploading).
#[derive(Debug)]
pub struct BodyProgress {
    started: Instant,
    /// Milliseconds from `started` to the last data read.
    moved_ms: std::sync::atomic::AtomicU64,
    /// Milliseconds from `started` to the end; `u64::MAX` until then.
    ended_ms: std::sync::atomic::AtomicU64,
    ended: tokio::sync::Notify,
}

impl BodyProgress {
    fn new(started: Instant) -> Self {
        Self {
            started,
            moved_ms: 0.into(),
            ended_ms: u64::MAX.into(),
            ended: tokio::sync::Notify::new(),
        }
    }

    fn since_start(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn moved(&self) {
        self.moved_ms.store(self.since_start(), Ordering::Relaxed);
    }

    /// Marks the end, once (later calls, from `Drop` say, change nothing).
    fn end(&self) {
        let first = self
            .ended_ms
            .compare_exchange(
                u64::MAX,
                self.since_start(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok();
        if first {
            self.ended.notify_one();
        }
    }

    /// When data last arrived (or the body began).
    pub fn last_moved(&self) -> Instant {
        self.started + Duration::from_millis(self.moved_ms.load(Ordering::Relaxed))
    }

    /// When the body ended, if it has.
    pub fn ended_at(&self) -> Option<Instant> {
        let at = self.ended_ms.load(Ordering::Relaxed);
        (at != u64::MAX).then(|| self.started + Duration::from_millis(at))
    }

    /// Resolves once the body has ended (at once if it has).
    pub async fn ended(&self) {
        if self.ended_at().is_none() {
            self.ended.notified().await;
        }
    }
}

impl<B> ClientBody<B> {
    /// Wraps `inner`; `failed` is set when the body fails (malformed or late).
    pub fn new(inner: B, limits: BodyLimits, failed: Arc<AtomicBool>) -> Self {
        let started = Instant::now();
        Self {
            inner,
            limits,
            started,
            received: 0,
            deadline: Box::pin(tokio::time::sleep_until(started + limits.grace)),
            failed,
            progress: Arc::new(BodyProgress::new(started)),
        }
    }

    /// How far the body has been sent (see [`BodyProgress`]).
    pub fn progress(&self) -> Arc<BodyProgress> {
        self.progress.clone()
    }

    fn extend(&mut self) {
        if let Some(rate) = self.limits.min_rate.filter(|r| *r > 0) {
            let earned = Duration::from_secs_f64(self.received as f64 / f64::from(rate));
            let deadline = self.started + self.limits.grace + earned;
            self.deadline.as_mut().reset(deadline);
        }
    }

    fn fail(&self, error: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.failed.store(true, Ordering::Release);
        Poll::Ready(Some(Err(error)))
    }
}

impl<B> Body for ClientBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    this.extend();
                    this.progress.moved();
                } else if frame.is_trailers() {
                    // Trailers are the last frame: nothing is polled after them.
                    this.progress.end();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => this.fail(BodyError::Malformed(error.into())),
            Poll::Ready(None) => {
                this.progress.end();
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    this.fail(BodyError::TooSlow)
                } else {
                    Poll::Pending
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.progress.end();
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// However the sender stops with the body (its end, an error, an early
/// answer), whoever waits on its end stops waiting.
impl<B> Drop for ClientBody<B> {
    fn drop(&mut self) {
        self.progress.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn limits(grace_ms: u64, min_rate: Option<u32>) -> BodyLimits {
        BodyLimits {
            grace: Duration::from_millis(grace_ms),
            min_rate,
        }
    }

    #[tokio::test]
    async fn a_stalled_body_fails_at_its_deadline_and_says_whose_fault_it_is() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
        let stream = tokio_stream_from(rx);
        let failed = Arc::new(AtomicBool::new(false));
        let mut body = ClientBody::new(StreamBody::new(stream), limits(200, None), failed.clone());
        tx.send(Ok(Frame::data(Bytes::from_static(b"abc"))))
            .await
            .unwrap();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "abc");
        // Nothing more: the deadline passes.
        let error = body.frame().await.unwrap().unwrap_err();
        assert!(matches!(error, BodyError::TooSlow), "{error}");
        assert!(failed.load(Ordering::Acquire));
        drop(tx);
    }

    #[tokio::test]
    async fn bytes_received_earn_time_at_the_minimum_rate() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
        let failed = Arc::new(AtomicBool::new(false));
        let mut body = ClientBody::new(
            StreamBody::new(tokio_stream_from(rx)),
            limits(200, Some(10_000)),
            failed.clone(),
        );
        // 5,000 bytes at 10,000 bytes/s earn 500 ms beyond the 200 ms grace.
        tx.send(Ok(Frame::data(Bytes::from(vec![0u8; 5_000]))))
            .await
            .unwrap();
        body.frame().await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(450)).await;
        tx.send(Ok(Frame::data(Bytes::from_static(b"late but in time"))))
            .await
            .unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        assert!(!failed.load(Ordering::Acquire));
        let error = body.frame().await.unwrap().unwrap_err();
        assert!(matches!(error, BodyError::TooSlow));
        drop(tx);
    }

    #[tokio::test]
    async fn a_malformed_body_is_the_clients_fault() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
        let failed = Arc::new(AtomicBool::new(false));
        let mut body = ClientBody::new(
            StreamBody::new(tokio_stream_from(rx)),
            limits(10_000, None),
            failed.clone(),
        );
        tx.send(Err(std::io::Error::other("bad chunk size")))
            .await
            .unwrap();
        let error = body.frame().await.unwrap().unwrap_err();
        assert!(matches!(error, BodyError::Malformed(_)), "{error}");
        assert!(failed.load(Ordering::Acquire));
    }

    /// A stream of the channel's items (no extra dependency for one test).
    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Unpin {
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}
