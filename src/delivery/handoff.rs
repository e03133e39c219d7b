//! Hand-off: hyper serves the rest of a connection the driver does not fully
//! handle (request bodies, `Expect`, `Upgrade`, HTTP/2 with prior knowledge),
//! starting with the bytes the driver already read.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use bytes::{Buf, Bytes};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tower::ServiceExt;

use super::Peer;

/// Serves the connection with hyper until it ends, or until shutdown asks
/// hyper to finish gracefully.
pub async fn serve(stream: TcpStream, prefix: Bytes, peer: Peer, router: Router, limits: Limits) {
    serve_io(Prefixed { prefix, stream }, Protocol::Sniff, peer, router, limits).await
}

/// The limits and the shutdown signal a hyper connection runs under, the
/// driver's own settings.
#[derive(Clone)]
pub struct Limits {
    /// A connection with no request in flight for this long is closed
    /// (HTTP/1 keep-alive, an HTTP/2 connection without streams, one that
    /// never says which protocol it speaks), and an HTTP/1 head must be
    /// whole within it.
    pub idle: Duration,
    /// A write that moves no byte for this long ends the connection.
    pub write: Duration,
    /// `http.max_head_bytes` and `http.max_headers`.
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub shutdown: watch::Receiver<bool>,
}

impl Limits {
    pub fn new(settings: &crate::config::HttpSettings, shutdown: watch::Receiver<bool>) -> Limits {
        Limits {
            idle: settings.idle_timeout,
            write: settings.write_timeout,
            max_head_bytes: settings.max_head_bytes,
            max_headers: settings.max_headers,
            shutdown,
        }
    }
}

/// Which HTTP a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// As its first bytes say (the HTTP/2 preface or not).
    Sniff,
    /// As ALPN agreed.
    Http1,
    Http2,
}

/// Most HTTP/2 streams at once on one connection: each may hold an open
/// file while its client's window is shut.
const MAX_STREAMS: u32 = 64;

/// Serves any connection with hyper, each request carrying `peer`: the
/// hand-off, plaintext connections under `transport = "hyper"`, and TLS
/// connections.
pub async fn serve_io<I>(io: I, protocol: Protocol, peer: Peer, router: Router, limits: Limits)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Limits { idle, write, max_head_bytes, max_headers, mut shutdown } = limits;
    let activity = Arc::new(AtomicUsize::new(0));
    let io = TokioIo::new(Deadlines::new(io, write, idle, activity.clone()));
    let service = tower::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(peer.clone());
        let in_flight = InFlight::new(activity.clone());
        let router = router.clone();
        async move {
            let response = router.oneshot(request).await?;
            Ok::<_, Infallible>(response.map(|body| Body::new(Tracked { body, _in_flight: in_flight })))
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(idle)
        .max_buf_size(max_head_bytes.max(8192))
        .max_headers(max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(max_head_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(MAX_STREAMS);
    let builder = match protocol {
        Protocol::Sniff => builder,
        Protocol::Http1 => builder.http1_only(),
        Protocol::Http2 => builder.http2_only(),
    };
    let conn = builder.serve_connection_with_upgrades(io, TowerToHyperService::new(service));
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = super::stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "hyper connection ended with an error");
    }
}

/// One request in flight on a hyper connection, from its call to the end
/// of its response body (the body is dropped when hyper is done with it).
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(count: Arc<AtomicUsize>) -> InFlight {
        count.fetch_add(1, Ordering::Relaxed);
        InFlight(count)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts as in flight until it is dropped.
    struct Tracked {
        #[pin]
        body: Body,
        _in_flight: InFlight,
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A stream that first yields bytes already read from it.
struct Prefixed {
    prefix: Bytes,
    stream: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// A stream with the connection's two deadlines, one timer between them:
/// a write that moves no byte for `write` fails, and so does a read that
/// waits while no request has been in flight for `idle` (bytes that come
/// without making a request, such as HTTP/2 pings or a head trickling in,
/// do not hold a connection open). The timer is armed when a wait begins
/// and moved only when the kind of wait changes.
struct Deadlines<S> {
    stream: S,
    write: Duration,
    idle: Duration,
    in_flight: Arc<AtomicUsize>,
    timer: Option<(Wait, Pin<Box<tokio::time::Sleep>>)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    Write,
    Idle,
}

impl<S> Deadlines<S> {
    fn new(stream: S, write: Duration, idle: Duration, in_flight: Arc<AtomicUsize>) -> Self {
        Deadlines { stream, write, idle, in_flight, timer: None }
    }

    /// Arms the timer for `wait` (unless it already runs for it) and fails
    /// once it has run out.
    fn wait<T>(&mut self, cx: &mut Context<'_>, wait: Wait) -> Poll<io::Result<T>> {
        let limit = match wait {
            Wait::Write => self.write,
            Wait::Idle => self.idle,
        };
        if self.timer.as_ref().map_or(true, |(w, _)| *w != wait) {
            self.timer = Some((wait, Box::pin(tokio::time::sleep(limit))));
        }
        let (_, timer) = self.timer.as_mut().expect("armed");
        ready!(timer.as_mut().poll(cx));
        let why = match wait {
            Wait::Write => "no byte written for write_timeout_ms",
            Wait::Idle => "no request for idle_timeout_ms",
        };
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)))
    }

    /// A write's outcome: progress disarms a write timer; waiting arms it.
    fn judge_write<T>(&mut self, cx: &mut Context<'_>, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match result {
            Poll::Ready(result) => {
                if matches!(self.timer, Some((Wait::Write, _))) {
                    self.timer = None;
                }
                Poll::Ready(result)
            }
            Poll::Pending => self.wait(cx, Wait::Write),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Deadlines<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.stream).poll_read(cx, buf);
        let busy = self.in_flight.load(Ordering::Relaxed) > 0;
        if busy && matches!(self.timer, Some((Wait::Idle, _))) {
            self.timer = None;
        }
        match result {
            Poll::Pending if !busy => self.wait(cx, Wait::Idle),
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Deadlines<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.judge_write(cx, result)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.stream).poll_flush(cx);
        self.judge_write(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.stream).poll_shutdown(cx);
        self.judge_write(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.judge_write(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
