//! The HTTP/1.1 connection driver (DESIGN.md decision 1).
//!
//! hyper owns its socket writes and cannot call sendfile, so tessera runs
//! its own loop for requests without a body: read and parse a head
//! ([`head`]), call the axum Router in-process, write the response head
//! itself, then move the body by the fastest path the response allows:
//!
//! - a file kept in memory: head and body in one write;
//! - a file on storage that allows it: head with `MSG_MORE`, then sendfile;
//! - anything else: the response body's frames, with `Content-Length` when
//!   the length is known and chunked encoding when it is not.
//!
//! A plain whole-file answer is kept and replayed for the same request
//! target while its file is current, without calling the Router
//! (`replay.rs`); heads are written by `response.rs`.
//!
//! Keep-alive and pipelining come naturally: requests are read from one
//! buffer and answered in order. What the driver does not handle goes to
//! hyper with the bytes already read ([`handoff`]).

use std::convert::Infallible;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, Response, StatusCode};
use axum::Router;
use bytes::{Buf, Bytes, BytesMut};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::futures::OwnedNotified;
use tokio::sync::watch;
use tokio::time::{sleep_until, timeout_at, Instant, Sleep};
use tower::ServiceExt;

use super::head::{self, Head, Parsed};
use super::replay::{self, route_of, Found};
use super::response::{
    bodiless_status, finish_head, http_date_string, push_header, with_http_date, write_date, write_status_and_headers,
};
use super::sendfile::{self, SendError};
use super::{handoff, read_chunk, FileSlice, Held, Part, Parts};
use crate::cache::{DescriptorCache, FileEntry};
use crate::config::HttpSettings;
use crate::logging::Access;
use crate::metrics::Metrics;
use crate::roots::{DeliveryPath, Root};

/// What every connection shares.
pub struct Shared {
    pub router: Router,
    /// The descriptor cache and roots the Router opens files through: a
    /// replay whose descriptor was evicted re-opens its file here.
    pub cache: Arc<DescriptorCache>,
    pub roots: Arc<Vec<Root>>,
    pub settings: HttpSettings,
    pub metrics: Arc<Metrics>,
    pub shutdown: watch::Receiver<bool>,
    /// Wakes every idle keep-alive connection to close: rung on shutdown,
    /// and by the accept loops when the process runs out of descriptors (as
    /// nginx drains its reusable connections), so that new clients can be
    /// answered. A connection that was busy when it rang stays open (see
    /// `idle_close_rings`).
    pub idle_close: Arc<tokio::sync::Notify>,
    /// How many times `idle_close` rang; bumped before each ring (see
    /// [`Shared::ring_idle_close`]), so that a connection can tell a ring
    /// during its idle wait from one that came while it was busy.
    pub idle_close_rings: std::sync::atomic::AtomicU64,
    /// One permit per open client connection, `max_connections` in all,
    /// held by the connection's task for its life.
    pub connection_slots: Arc<tokio::sync::Semaphore>,
}

impl Shared {
    /// What a connection served by hyper runs under.
    pub fn hyper_limits(&self) -> handoff::Limits {
        handoff::Limits::new(&self.settings, self.shutdown.clone())
    }

    /// Closes the connections that are idle now.
    pub fn ring_idle_close(&self) {
        self.idle_close_rings.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.idle_close.notify_waiters();
    }
}

/// How a connection's own loop ended.
enum End {
    /// The peer closed, or was idle too long: nothing more to say.
    Quiet,
    /// We decided to close: linger so the last response is not lost to a reset.
    Close,
    /// hyper takes over from here.
    Handoff,
}

/// Bodies written from memory are gathered up to this size before a write.
const COALESCE: usize = 64 * 1024;
/// How long a closing connection keeps reading (and discarding) what the
/// client still sends, so that the kernel does not answer it with a reset.
const LINGER: Duration = Duration::from_secs(2);

pub async fn serve_connection(stream: TcpStream, addr: std::net::SocketAddr, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let idle_end = idle_close_registration(&shared);
    let mut conn = Conn {
        stream,
        buf: BytesMut::with_capacity(4096),
        out: Vec::with_capacity(1024),
        shutdown: shared.shutdown.clone(),
        timer: Box::pin(sleep_until(Instant::now() + shared.settings.head_timeout)),
        idle_end,
        shared,
        peer: super::Peer { addr, tls: false, device: None },
    };
    match conn.run().await {
        Ok(End::Quiet) => {}
        Ok(End::Close) => conn.linger().await,
        Ok(End::Handoff) => {
            conn.shared.metrics.handoffs.inc();
            let Conn { stream, buf, shared, peer, .. } = conn;
            handoff::serve(stream, buf.freeze(), peer, shared.router.clone(), shared.hyper_limits()).await;
        }
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            conn.shared.metrics.write_stalls.inc();
            tracing::debug!(error = %e, "connection dropped");
        }
        Err(e) => tracing::debug!(error = %e, "connection ended"),
    }
}

/// A registration on `idle_close`, made before any look at the shutdown
/// flag or the ring count: a ring from then on is not lost (see `read_head`).
fn idle_close_registration(shared: &Shared) -> Pin<Box<OwnedNotified>> {
    let mut registration = Box::pin(shared.idle_close.clone().notified_owned());
    registration.as_mut().enable();
    registration
}

struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    /// The response head being built; kept between requests to reuse its allocation.
    out: Vec<u8>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    /// The connection's one timer for its head and idle deadlines. It is
    /// moved only when a deadline comes earlier than it, or when it fires
    /// before the deadline in force (then it is set to that deadline), the
    /// way nginx keeps a timer that is close enough: a tokio timer per read
    /// put an entry into the timer wheel and took it out again on every
    /// request (callgrind).
    timer: Pin<Box<Sleep>>,
    /// Ready once `Shared::idle_close` rang; registered for the whole
    /// connection instead of once per idle wait (callgrind: a registration
    /// and removal under a lock per request), and registered anew after a
    /// ring that came while the connection was busy.
    idle_end: Pin<Box<OwnedNotified>>,
    /// Who is on the other end, for the Router's access rules and the access log.
    peer: super::Peer,
}

impl Conn {
    async fn run(&mut self) -> io::Result<End> {
        let mut first = true;
        loop {
            let Some(parsed) = self.read_head(first).await? else { return Ok(End::Quiet) };
            first = false;
            match parsed {
                Parsed::Request(head) => {
                    let keep_alive = match self.serve(&head).await? {
                        Some(keep_alive) => keep_alive,
                        None => return Ok(End::Close),
                    };
                    let keep_alive = keep_alive && !*self.shutdown.borrow();
                    if !keep_alive {
                        return Ok(End::Close);
                    }
                    // Writes try the socket before they wait and pipelined
                    // heads are parsed from the buffer, so a fast pipelining
                    // client might never make this task wait: spend tokio's
                    // cooperative budget once per response, which yields to
                    // the worker's other connections every 128 responses.
                    tokio::task::coop::consume_budget().await;
                }
                Parsed::Handoff(why) => {
                    tracing::debug!(why, "handing the connection to hyper");
                    return Ok(End::Handoff);
                }
                Parsed::Reject(status, why) => {
                    self.reject(status, why).await?;
                    return Ok(End::Close);
                }
                Parsed::Partial => unreachable!("read_head returns whole heads"),
            }
        }
    }

    /// Answers the request whose head starts the buffer, from a replay if
    /// there is a current one, else through the Router; consumes the head.
    /// Returns whether the connection may stay open (`None`: it was refused).
    async fn serve(&mut self, head: &Head) -> io::Result<Option<bool>> {
        let replay_key = if head.replayable() {
            let target = head.target(&self.buf);
            if let Some(found) = replay::find(target, &self.shared) {
                let path = access_enabled().then(|| target.split('?').next().unwrap_or(target).to_owned());
                self.buf.advance(head.len);
                return self.replay(found, head, path).await.map(Some);
            }
            Some(target.to_owned())
        } else {
            None
        };
        let request = head.request(&self.buf);
        self.buf.advance(head.len);
        match request {
            Ok(request) => self.respond(request, head, replay_key).await.map(Some),
            Err((status, why)) => self.reject(status, why).await.map(|()| None),
        }
    }

    async fn reject(&mut self, status: StatusCode, why: &'static str) -> io::Result<()> {
        self.shared.metrics.rejected_heads.with_label_values(&[status.as_str()]).inc();
        tracing::debug!(status = status.as_u16(), why, "request refused");
        self.write_error(status, why).await
    }

    /// Reads until the buffer starts with a whole head. `None`: close quietly
    /// (end of stream, idle timeout, or shutdown while idle).
    async fn read_head(&mut self, first: bool) -> io::Result<Option<Parsed>> {
        let settings = &self.shared.settings;
        let mut idle = !first && self.buf.is_empty();
        let mut deadline = Instant::now() + if idle { settings.idle_timeout } else { settings.head_timeout };
        let rings = self.shared.idle_close_rings.load(std::sync::atomic::Ordering::SeqCst);
        loop {
            if !self.buf.is_empty() {
                match head::parse(&self.buf, settings) {
                    Parsed::Partial => {}
                    parsed => return Ok(Some(parsed)),
                }
            }
            // A shutdown that rang before this connection registered its
            // `idle_end` is seen here; one after, through `idle_end`.
            if idle && *self.shutdown.borrow() {
                return Ok(None);
            }
            if self.buf.capacity() - self.buf.len() < 2048 {
                self.buf.reserve(8192);
            }
            if self.timer.deadline() > deadline {
                self.timer.as_mut().reset(deadline);
            }
            let read = tokio::select! {
                // In order: no random draw per poll (callgrind), and a ready
                // read wins over a timer that fired at the same time.
                biased;
                read = self.stream.read_buf(&mut self.buf) => read,
                () = &mut self.timer => {
                    if Instant::now() < deadline {
                        // Set for an earlier deadline that has since moved.
                        self.timer.as_mut().reset(deadline);
                        continue;
                    }
                    if idle {
                        return Ok(None);
                    }
                    return Ok(Some(Parsed::Reject(StatusCode::REQUEST_TIMEOUT, "request head too slow")));
                }
                () = &mut self.idle_end, if idle => {
                    // A ring while this connection was busy is not for it:
                    // register again and keep waiting; one since this idle
                    // wait began closes it.
                    self.idle_end = idle_close_registration(&self.shared);
                    if self.shared.idle_close_rings.load(std::sync::atomic::Ordering::SeqCst) != rings {
                        return Ok(None);
                    }
                    continue;
                }
            };
            match read {
                Ok(0) => return Ok(None),
                Ok(_) if idle => {
                    idle = false;
                    deadline = Instant::now() + settings.head_timeout;
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Answers from a replay (see [`Self::replay_entry`]); returns whether
    /// the connection may stay open. `path` is for the access log, when on.
    async fn replay(&mut self, found: Found, head: &Head, path: Option<String>) -> io::Result<bool> {
        let Found { slice, held, head: kept, route } = found;
        let entry = &slice.entry;
        let started = std::time::Instant::now();
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        out.extend_from_slice(&kept);
        // The head was kept without Date (it changes every second).
        out.extend_from_slice(b"date: ");
        with_http_date(|date| out.extend_from_slice(date.as_bytes()));
        out.extend_from_slice(b"\r\n");
        finish_head(&mut out, head.keep_alive, head.version);
        // Counted before the bytes leave: a client that reads `/metrics`
        // once it has its answer finds the answer counted.
        let metrics = &self.shared.metrics;
        metrics.replays.inc();
        metrics.count_request(route, StatusCode::OK.as_u16());
        let result = if head.method == Method::HEAD {
            self.write(&out).await.map(|()| (0, "none"))
        } else {
            match &held {
                Some(data) => self.write_two(&out, data).await.map(|()| {
                    entry.counters.memory.inc_by(slice.len);
                    (slice.len, "memory")
                }),
                None => self.send_file(&out, &slice).await.map(|delivery| (slice.len, delivery)),
            }
        };
        self.out = out;
        let metrics = &self.shared.metrics;
        metrics.request_seconds.observe(started.elapsed().as_secs_f64());
        if let (Some(path), Ok((bytes, delivery))) = (path, &result) {
            let root = self.shared.roots.get(entry.root).map(|r| r.path());
            let elapsed = started.elapsed().as_micros() as u64;
            let (client, user) = (Some(self.peer.addr.ip()), None);
            let (route, method, status) = (route.0, head.method.as_str(), 200);
            Access {
                route,
                method,
                path: &path,
                status,
                bytes: *bytes,
                delivery,
                root,
                elapsed_us: elapsed,
                client,
                user,
            }
            .log();
        }
        result.map(|_| head.keep_alive)
    }

    /// Answers through the Router; returns whether the connection may stay
    /// open. A whole-file answer is kept for replays under `replay_key`.
    async fn respond(&mut self, request: Request<()>, head: &Head, replay_key: Option<String>) -> io::Result<bool> {
        let (is_head, version, keep_alive) = (head.method == Method::HEAD, head.version, head.keep_alive);
        let started = std::time::Instant::now();
        let log = access_enabled().then(|| (request.method().clone(), request.uri().path().to_owned()));
        let mut request = request.map(|()| Body::empty());
        if log.is_some() {
            request.extensions_mut().insert(super::Driven);
        }
        request.extensions_mut().insert(self.peer.clone());
        let response: Response<Body> =
            self.shared.router.clone().oneshot(request).await.unwrap_or_else(|e: Infallible| match e {});
        let (parts, body) = response.into_parts();
        let status = parts.status;
        let bodiless = is_head || bodiless_status(status);

        let mut out = std::mem::take(&mut self.out);
        out.clear();
        write_status_and_headers(&mut out, &parts);
        if let Some(target) = replay_key {
            replay::remember(target, &parts, &out, &self.shared.roots);
        }
        write_date(&mut out, &parts);
        let has_length = parts.headers.contains_key(header::CONTENT_LENGTH) && !bodiless_status(status);
        let exact = body.size_hint().exact();
        let chunked = !bodiless && !has_length && exact.is_none();
        if !has_length && !bodiless_status(status) {
            if let Some(n) = exact {
                push_header(&mut out, "content-length", n.to_string().as_bytes());
            } else if chunked {
                push_header(&mut out, "transfer-encoding", b"chunked");
            }
        }
        finish_head(&mut out, keep_alive, version);

        let file = parts.extensions.get::<FileSlice>();
        let result = if bodiless {
            self.write(&out).await.map(|()| (0, "none"))
        } else if let Some(slice) = file {
            self.send_file(&out, slice).await.map(|delivery| (slice.len, delivery))
        } else if let Some(Parts(many)) = parts.extensions.get::<Parts>() {
            self.send_parts(&out, many).await
        } else if let Some(held) = parts.extensions.get::<Held>() {
            // The body is these bytes: head and body in one writev, without
            // first copying the body behind the head (perf: a tenth of the
            // MBTiles path's user time was that copy).
            self.write_two(&out, &held.data).await.map(|()| (held.data.len() as u64, "memory"))
        } else {
            self.send_body(&mut out, body, chunked, exact).await.map(|n| (n, "body"))
        };
        self.out = out;
        let log = log.filter(|_| parts.extensions.get::<super::Unlogged>().is_none());
        if let (Some((method, path)), Ok((bytes, delivery))) = (log, &result) {
            let root = file.and_then(|f| self.shared.roots.get(f.entry.root)).map(|r| r.path());
            let route = route_of(&parts);
            let elapsed = started.elapsed().as_micros() as u64;
            let user = parts.extensions.get::<super::Identity>().map(|i| &*i.0);
            let (route, method, status, client) =
                (route.0, method.as_str(), status.as_u16(), Some(self.peer.addr.ip()));
            Access {
                route,
                method,
                path: &path,
                status,
                bytes: *bytes,
                delivery,
                root,
                elapsed_us: elapsed,
                client,
                user,
            }
            .log();
        }
        result.map(|_| keep_alive)
    }

    /// A file body: from memory, by sendfile, or buffered, in that order of
    /// preference. Returns the path taken.
    async fn send_file(&mut self, out: &[u8], slice: &FileSlice) -> io::Result<&'static str> {
        let entry = &slice.entry;
        if let Some(bytes) = slice.memory() {
            self.write_two(out, &bytes).await?;
            entry.counters.memory.inc_by(slice.len);
            return Ok("memory");
        }
        let settings = &self.shared.settings;
        // Small bodies go by sendfile with no final check, so only for files
        // not modified lately (`FileEntry::settled`); the others are
        // copied and checked before their last chunk (`copy_file`).
        if entry.delivery == DeliveryPath::Sendfile
            && !entry.sendfile_refused.load(std::sync::atomic::Ordering::Relaxed)
            && (slice.len >= sendfile::GUARD_FROM || entry.settled())
        {
            let result =
                sendfile::send_head_and_file(&self.stream, out, slice, settings.sendfile_chunk, settings.write_timeout)
                    .await;
            return match result {
                Ok(()) => Ok("sendfile"),
                Err(SendError::Refused(e)) => {
                    if !entry.sendfile_refused.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        entry.counters.fallbacks.inc();
                        tracing::warn!(path = %entry.path.display(), error = %e, "sendfile refused; this file falls back to the buffered path");
                    }
                    self.copy_file(slice).await.map(|()| "buffered")
                }
                Err(SendError::Shrank) => {
                    self.shared.metrics.changed_while_sent.inc();
                    tracing::warn!(path = %entry.path.display(), "file ended early during sendfile; closing connection");
                    Err(crate::cache::shrank())
                }
                Err(SendError::Changed) => Err(self.changed(entry)),
                Err(SendError::Io(e)) => Err(e),
            };
        }
        self.write(out).await?;
        self.copy_file(slice).await.map(|()| "buffered")
    }

    /// A body of several parts, each by its own path (the head goes with
    /// the first). Returns the bytes sent and the path taken: the parts'
    /// one path, or "mixed".
    async fn send_parts(&mut self, out: &[u8], parts: &[Part]) -> io::Result<(u64, &'static str)> {
        let (mut head, mut path, mut sent) = (out, None, 0);
        for part in parts.iter().filter(|p| !p.is_empty()) {
            let used = match part {
                Part::Bytes(bytes) => self.write_two(head, bytes).await.map(|()| "memory")?,
                Part::File(slice) => self.send_file(head, slice).await?,
            };
            head = &[];
            sent += part.len();
            path = Some(match path {
                Some(before) if before != used => "mixed",
                _ => used,
            });
        }
        if path.is_none() {
            self.write(out).await?;
        }
        Ok((sent, path.unwrap_or("none")))
    }

    /// The file changed under a response (an in-place rewrite or a
    /// truncation): its descriptor leaves the cache, and the connection
    /// closes before the end of the body.
    fn changed(&self, entry: &FileEntry) -> io::Error {
        self.shared.metrics.changed_while_sent.inc();
        self.shared.cache.rewritten_under(entry);
        self.shared.cache.invalidate(&entry.path);
        tracing::info!(path = %entry.path.display(), "file changed while being sent; closing connection");
        io::Error::other("file changed while being sent")
    }

    /// The buffered path: the slice chunk by chunk, read then written.
    async fn copy_file(&mut self, slice: &FileSlice) -> io::Result<()> {
        let (mut offset, end) = (slice.offset, slice.offset + slice.len);
        while offset < end {
            let chunk = read_chunk(&slice.entry, offset, end - offset).await.inspect_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    self.shared.metrics.changed_while_sent.inc();
                }
            })?;
            // The last chunk goes only if the file is still the version the
            // head describes: a rewrite during the copy ends the connection.
            if offset + chunk.len() as u64 == end && !slice.entry.holds_snapshot() {
                return Err(self.changed(&slice.entry));
            }
            self.write(&chunk).await?;
            offset += chunk.len() as u64;
        }
        Ok(())
    }

    /// Any other body: its frames, framed by length or chunked.
    async fn send_body(
        &mut self,
        out: &mut Vec<u8>,
        mut body: Body,
        chunked: bool,
        exact: Option<u64>,
    ) -> io::Result<u64> {
        let mut written = 0u64;
        let mut watch_peer = true;
        while let Some(frame) = self.next_frame(&mut body, out, &mut watch_peer).await? {
            let frame = frame.map_err(io::Error::other)?;
            let Ok(data) = frame.into_data() else { continue };
            if data.is_empty() {
                continue;
            }
            written += data.len() as u64;
            if chunked {
                out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\r\n");
            } else {
                out.extend_from_slice(&data);
            }
            if out.len() >= COALESCE {
                self.write(out).await?;
                out.clear();
            }
        }
        if chunked {
            out.extend_from_slice(b"0\r\n\r\n");
        } else if exact.is_some_and(|n| n != written) {
            return Err(io::Error::other("body length differs from Content-Length"));
        }
        self.write(out).await.map(|()| written)
    }

    /// The body's next frame. What is gathered in `out` is written first if
    /// the frame is not ready at once, so a stream that waits (a followed
    /// log) delivers what it has. While it waits, a client that closes the
    /// connection or a shutdown ends the response (a stream may otherwise
    /// wait for ever on a file nobody writes).
    async fn next_frame(
        &mut self,
        body: &mut Body,
        out: &mut Vec<u8>,
        watch_peer: &mut bool,
    ) -> io::Result<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        use futures_util::FutureExt;
        if let Some(frame) = body.frame().now_or_never() {
            return Ok(frame);
        }
        if !out.is_empty() {
            self.write(out).await?;
            out.clear();
        }
        loop {
            let mut probe = [0u8; 1];
            tokio::select! {
                frame = body.frame() => return Ok(frame),
                // A frame that takes another second after the stop was asked
                // for is a stream waiting for data, not a read in flight.
                _ = async { super::stopped(&mut self.shutdown).await; tokio::time::sleep(Duration::from_secs(1)).await } => {
                    return Err(io::Error::new(io::ErrorKind::Interrupted, "shutting down"));
                }
                peeked = self.stream.peek(&mut probe), if *watch_peer => match peeked {
                    Ok(0) | Err(_) => return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "client left")),
                    // The client sent more (a pipelined request): it is still
                    // there; stop watching, or every poll would see that byte.
                    Ok(_) => *watch_peer = false,
                },
            }
        }
    }

    /// Writes `head` then `body` (one `writev` while both fit). Tries the
    /// socket first and waits for writability only when it is full, so a
    /// response that fits the socket buffer (nearly all) arms no timer.
    async fn write_two(&mut self, head: &[u8], body: &[u8]) -> io::Result<()> {
        let (mut h, mut b) = (0, 0);
        while h < head.len() || b < body.len() {
            let bufs = [IoSlice::new(&head[h..]), IoSlice::new(&body[b..])];
            let n = match self.stream.try_write_vectored(&bufs) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    super::progress::writable(&self.stream, self.shared.settings.write_timeout).await?;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let from_head = n.min(head.len() - h);
            h += from_head;
            b += n - from_head;
        }
        Ok(())
    }

    async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_two(bytes, &[]).await
    }

    /// A refusal from the driver itself: a short text, CORS, and close.
    async fn write_error(&mut self, status: StatusCode, why: &str) -> io::Result<()> {
        let body = format!("{why}\n");
        let head = format!(
            "HTTP/1.1 {} {}\r\ndate: {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n\
             access-control-allow-origin: *\r\nconnection: close\r\n\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            http_date_string(),
            body.len()
        );
        self.write(format!("{head}{body}").as_bytes()).await
    }

    /// Half-close, then read and discard for a while: closing a socket with
    /// unread input makes the kernel send a reset, which can destroy the
    /// last response before the client reads it.
    async fn linger(&mut self) {
        let _ = self.stream.shutdown().await;
        let deadline = Instant::now() + LINGER;
        let mut sink = [0u8; 4096];
        let mut total = 0usize;
        while total < 1 << 20 {
            match timeout_at(deadline, self.stream.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => total += n,
                _ => break,
            }
        }
    }
}

/// Whether the access log is on (a per-callsite cached check).
fn access_enabled() -> bool {
    tracing::enabled!(target: "tessera::access", tracing::Level::INFO)
}
