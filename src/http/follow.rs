//! Follow mode: `GET /logs/{device}/{file}?follow` sends the file from the
//! requested offset (`Range: bytes=N-`, else the start), then each append as
//! it arrives, like `tail -f` over HTTP, chunked since the length is open.
//!
//! The stream is woken by the watcher's events for the file's path
//! ([`Followers`](crate::watch::Followers)), not by sleeping in a loop; a
//! slow safety check every [`RECHECK`] covers an event lost in an overflow.
//! It ends when the file at the path is replaced (rotation: a new inode),
//! removed or truncated (also when written again past the stream's place
//! before it looked: the log's sampled bytes changed), once everything the
//! old file held has been sent, or when the client leaves (the driver sees
//! the connection close).

use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use http_body::Frame;
use tokio::sync::Notify;

use super::{error, AppState};
use crate::cache::read_exact_at;
use crate::cache::FileEntry;
use crate::delivery::{NoReplay, PartsBody};

/// With no event, the file is looked at again after this long.
const RECHECK: Duration = Duration::from_secs(5);
/// The most bytes sent in one chunk.
const CHUNK: u64 = 64 * 1024;

/// Starts a follow stream for an open log, from the start of its `Range`.
pub fn start(app: &AppState, method: &Method, headers: &HeaderMap, entry: Arc<FileEntry>) -> Response {
    let Some(offset) = start_offset(headers, entry.len()) else {
        return error(StatusCode::BAD_REQUEST, "follow takes one open range, bytes=N-, or none");
    };
    start_at(app, method, entry, offset, None)
}

/// Starts a follow stream for an open log at `offset`, after the bytes of
/// `before` (the earlier logs of a device-wide slice), if any.
pub fn start_at(
    app: &AppState,
    method: &Method,
    entry: Arc<FileEntry>,
    offset: u64,
    before: Option<PartsBody>,
) -> Response {
    if method != Method::GET {
        return error(StatusCode::METHOD_NOT_ALLOWED, "follow is for GET");
    }
    if app.following.fetch_add(1, Ordering::AcqRel) >= app.max_followers {
        app.following.fetch_sub(1, Ordering::AcqRel);
        return error(StatusCode::SERVICE_UNAVAILABLE, "too many follow streams; retry later");
    }
    let state = Follow {
        notify: app.followers.subscribe(&entry.path),
        path: entry.path.clone(),
        entry: entry.clone(),
        pos: offset,
        waited: false,
        _slot: Slot(app.clone()),
    };
    let stream = futures_util::stream::unfold(state, |mut state| async move {
        match state.next().await {
            Ok(Some(bytes)) => Some((Ok(Frame::data(bytes)), state)),
            Ok(None) => None,
            Err(e) => Some((Err(e), state)),
        }
    });
    let body = match before {
        None => Body::new(http_body_util::StreamBody::new(stream)),
        Some(before) => {
            let before = http_body_util::BodyStream::new(before);
            Body::new(http_body_util::StreamBody::new(futures_util::StreamExt::chain(before, stream)))
        }
    };
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, entry.content_type.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Proxies such as nginx would otherwise buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response.extensions_mut().insert(NoReplay);
    response
}

/// Where to start: the start of one open range `bytes=N-` (clamped to the
/// length), or 0 without a Range; `None` for any other range.
fn start_offset(headers: &HeaderMap, len: u64) -> Option<u64> {
    use http_range_header::{EndPosition, StartPosition};
    let Some(range) = headers.get(header::RANGE) else { return Some(0) };
    let parsed = http_range_header::parse_range_header(range.to_str().ok()?).ok()?;
    match parsed.ranges.as_slice() {
        [one] => match (&one.start, &one.end) {
            (StartPosition::Index(n), EndPosition::LastByte) => Some((*n).min(len)),
            _ => None,
        },
        _ => None,
    }
}

/// Holds one of the `max_followers` places while the stream lives.
struct Slot(AppState);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.following.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Follow {
    entry: Arc<FileEntry>,
    path: PathBuf,
    notify: Arc<Notify>,
    pos: u64,
    /// Whether the stream waited for the file since it last read: the new
    /// bytes are then checked once to be appends (see `next`).
    waited: bool,
    _slot: Slot,
}

impl Follow {
    /// The next chunk, waiting for one if need be; `None` at the end.
    async fn next(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            // Registered before looking, so an append between the look and
            // the wait still wakes us.
            let notify = self.notify.clone();
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let len = self.entry.file.metadata()?.len();
            if self.pos < len {
                // New bytes after a wait: appended, or a truncation (`copytruncate`)
                // written past where the stream stands before it looked.
                if std::mem::take(&mut self.waited) && !self.entry.holds_snapshot() {
                    return Ok(None);
                }
                return self.read(len).await.map(Some);
            }
            if len < self.pos || self.replaced() {
                return Ok(None); // truncated, rotated or removed: this file is done
            }
            self.waited = true;
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(RECHECK) => {}
            }
        }
    }

    async fn read(&mut self, len: u64) -> io::Result<Bytes> {
        let want = (len - self.pos).min(CHUNK) as usize;
        let bytes = if self.entry.local {
            read_exact_at(&self.entry.file, self.pos, want)?
        } else {
            let (entry, pos) = (self.entry.clone(), self.pos);
            tokio::task::spawn_blocking(move || read_exact_at(&entry.file, pos, want))
                .await
                .map_err(io::Error::other)??
        };
        if bytes.is_empty() {
            return Err(crate::cache::shrank());
        }
        self.pos += bytes.len() as u64;
        self.entry.counters.buffered.inc_by(bytes.len() as u64);
        Ok(bytes)
    }

    /// Whether the path now names another file, or none.
    fn replaced(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata(&self.path) {
            Ok(meta) => meta.ino() != self.entry.validators.ino || meta.dev() != self.entry.validators.dev,
            Err(_) => true,
        }
    }
}
