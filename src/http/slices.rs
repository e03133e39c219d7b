//! Log lines by time: `GET /logs/{device}/{file}?since=T1&until=T2` answers
//! exactly the whole lines of one log whose times fall in `[T1, T2)`, and
//! `GET /logs/{device}/.lines?since=T1&until=T2` those of every log of the
//! device, file after file in time order (a name with a leading dot is never
//! a log, so `.lines` cannot hide one). Either end may be left open; with
//! `follow` (and no `until`) the answer goes on with what is appended.
//!
//! How a file's slice is found (see [`crate::logline`] for what a line and
//! its time are):
//! - **indexed**: a plain log in time order whose index describes the open
//!   file. The marks before `T1` and `T2` come from SQLite, the exact
//!   boundaries from reading at most one mark interval after each, and the
//!   part the index has not read yet is checked to keep time order. The
//!   body is one byte range of the file, sent like a file (sendfile, memory
//!   or buffered).
//! - **filtered**: a log out of time order, or one the index has not caught
//!   up with: read through, the matching runs of lines sent as parts.
//! - **decompressed**: a `.gz` log, decompressed and filtered into memory
//!   (up to [`DECOMPRESSED_MAX`] per request, and [`DECOMPRESSED_HELD`]
//!   held by all answers at once).
//!
//! Every slice has a strong ETag of its own; `Range` and `If-Range` apply
//! within it (so `curl -C -` resumes one); HEAD gives its size; a span
//! with no lines is an empty 200.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::{error, files, follow, AppState};
use crate::access::Caller;
use crate::cache::FileEntry;
use crate::catalog::timeindex::LogIndex;
use crate::catalog::{logscan, LogFilter, LogRecord};
use crate::config::RootKind;
use crate::delivery::{FileBody, FileSlice, NoReplay, Part, Parts, PartsBody};
use crate::logline::{self, boundary, filter_runs, still_ordered, tail_check, Mark, Shape};
use crate::metrics::Route;

/// The device-wide slice's file name.
pub const DEVICE_LINES: &str = ".lines";
/// The most decompressed bytes a compressed log's slice may hold.
pub const DECOMPRESSED_MAX: usize = 256 << 20;
/// The most decompressed bytes all answers in flight hold together, in MiB.
pub const DECOMPRESSED_HELD: usize = 1024;
/// The most files one device-wide slice reads.
pub const MAX_FILES: usize = 1000;

const FILE_ROUTE: Route = Route("/logs/{device}/{file}?since");
const DEVICE_ROUTE: Route = Route("/logs/{device}/.lines");

/// `[since, until)` in Unix milliseconds; an open end is `i64::MIN` or `i64::MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub since: i64,
    pub until: i64,
}

impl Span {
    /// Every line.
    pub const ALL: Span = Span { since: i64::MIN, until: i64::MAX };
}

/// The span a query asks for: `None` if it names neither end. `Err` is the
/// message of a 400, naming the parameter.
pub fn span(query: &HashMap<String, String>) -> Result<Option<Span>, String> {
    let since = time(query, "since")?;
    let until = time(query, "until")?;
    if let (Some(since), Some(until)) = (since, until) {
        if until < since {
            return Err("until is earlier than since".into());
        }
    }
    if query.contains_key("follow") && until.is_some() {
        return Err("until: a followed slice has no end; leave until out".into());
    }
    Ok((since.is_some() || until.is_some())
        .then(|| Span { since: since.unwrap_or(i64::MIN), until: until.unwrap_or(i64::MAX) }))
}

/// A time parameter of a query (RFC 3339, read as log lines' times are),
/// for slices and for the listings' filters alike.
pub fn time(query: &HashMap<String, String>, key: &str) -> Result<Option<i64>, String> {
    let Some(value) = query.get(key) else { return Ok(None) };
    let parsed = logline::rfc3339_ms(value.as_bytes()).or_else(|| {
        // A `+` offset written unescaped in a query string arrives as a space.
        let (time, offset) = value.split_at_checked(value.len().checked_sub(6)?)?;
        let offset = offset.strip_prefix(' ')?;
        logline::rfc3339_ms(format!("{time}+{offset}").as_bytes())
    });
    match parsed {
        Some(ms) => Ok(Some(ms)),
        None => Err(format!("{key} must be an RFC 3339 time such as 2026-11-20T06:00:00Z")),
    }
}

/// How a file's slice was found, for the metric and the debug log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    Indexed,
    Filtered,
    Decompressed,
}

impl How {
    fn label(self) -> &'static str {
        match self {
            How::Indexed => "indexed",
            How::Filtered => "filtered",
            How::Decompressed => "decompressed",
        }
    }
}

/// One file's lines for a span.
struct Sliced {
    entry: Arc<FileEntry>,
    parts: Vec<Part>,
    /// What the slice's ETag is made of.
    tag: [u8; 32],
    how: How,
    /// Where following goes on after the parts: the end of the whole
    /// lines read (with no `until`).
    end: u64,
}

/// A log whose index has more than this left to read is read through
/// (under the read-through limit) rather than checked line by line here.
const UNINDEXED_MAX: u64 = 16 << 20;

/// One file's slice from its time index (blocking: reads the catalog and
/// the file's ends), or `None` if the index cannot answer for the open file.
fn from_index(
    reader: &crate::catalog::Reader,
    root_id: i64,
    rel: &str,
    entry: &Arc<FileEntry>,
    span: Span,
) -> io::Result<Option<Sliced>> {
    let index = match reader.read(|q| q.log_index(root_id, rel, span.since, span.until)) {
        Ok(index) => index,
        Err(e) => {
            tracing::warn!(rel, error = %e, "time index unreadable; filtering the log instead");
            None
        }
    };
    let Some(index) = index else { return Ok(None) };
    // A read error here (the file cut short under us) is the read-through's to meet.
    let (start, end) = match indexed(&entry.file, &entry.validators, &index, span) {
        Ok(Some(found)) => found,
        Ok(None) => return Ok(None),
        Err(e) => {
            tracing::debug!(rel, error = %e, "time index not usable; filtering the log instead");
            return Ok(None);
        }
    };
    let tag = indexed_tag(entry, rel, start, end)?;
    let part = Part::File(FileSlice { entry: entry.clone(), offset: start, len: end - start });
    Ok(Some(Sliced { entry: entry.clone(), parts: vec![part], tag, how: How::Indexed, end }))
}

/// One file's slice by reading it through (blocking): filtered, or
/// decompressed and filtered.
/// A compressed log's slice holds at most `cap` bytes.
fn read_through(rel: &str, entry: Arc<FileEntry>, span: Span, cap: usize) -> io::Result<Sliced> {
    if logscan::compressed(&entry.path) {
        return decompressed(rel, entry, span, cap);
    }
    let (runs, end) = filter_runs(&entry.file, span.since, span.until, entry.len())?;
    let parts = runs
        .into_iter()
        .map(|(from, to)| Part::File(FileSlice { entry: entry.clone(), offset: from, len: to - from }))
        .collect();
    let tag = version_tag(How::Filtered, rel, &entry, span);
    Ok(Sliced { entry, parts, tag, how: How::Filtered, end })
}

/// The slice from the time index, or `None` if the index cannot answer for
/// this version of the file exactly: not in time order; describing another
/// file (device, inode), a longer one, or one written since without growing
/// (same length, other mtime); bytes before its end changed; too much left
/// unread, or what was appended since out of order; its marks inconsistent
/// or no longer at lines with their times.
fn indexed(
    file: &std::fs::File,
    v: &crate::validators::Validators,
    index: &LogIndex,
    span: Span,
) -> io::Result<Option<(u64, u64)>> {
    let (shape, len) = (&index.shape, v.len);
    let rewritten = len == index.size && v.mtime_ns as i64 != index.mtime_ns;
    if !index.ordered || (index.dev, index.ino) != (v.dev, v.ino) || len < index.indexed_to || rewritten {
        return Ok(None);
    }
    if len - index.indexed_to > UNINDEXED_MAX || (index.marks > 0 && index.first.is_none()) {
        return Ok(None);
    }
    if tail_check(file, index.indexed_to)? != index.tail_check
        || !still_ordered(file, shape, index.indexed_to, len, index.prev_ms)?
    {
        return Ok(None);
    }
    // A mark is used only if it lies inside what the index read and still
    // starts a line with its time.
    let usable = |mark: Mark| -> io::Result<bool> {
        Ok(mark.offset < index.indexed_to.min(len) && marks_line(file, shape, mark, len)?)
    };
    // Nothing before the first mark has a time: lines start counting there.
    let from = match index.before_since.or(index.first) {
        Some(mark) if usable(mark)? => mark.offset,
        Some(_) => return Ok(None),
        None => index.indexed_to,
    };
    let start = boundary(file, shape, from, len, span.since)?.offset;
    let from = match index.before_until {
        Some(mark) if mark.offset > start => {
            if !usable(mark)? {
                return Ok(None);
            }
            mark.offset
        }
        _ => start,
    };
    let end = boundary(file, shape, from, len, span.until)?.offset;
    Ok(Some((start, end)))
}

/// Whether a mark still points at the start of a line (before `len`) with its time.
fn marks_line(file: &std::fs::File, shape: &Shape, mark: Mark, len: u64) -> io::Result<bool> {
    if mark.offset > 0 {
        let mut before = [0u8];
        file.read_exact_at(&mut before, mark.offset - 1)?;
        if before[0] != b'\n' {
            return Ok(false);
        }
    }
    let mut lines = logline::Lines::new(file, mark.offset, len, 4096);
    Ok(lines.next_line()?.is_some_and(|(_, line)| shape.time(line) == Some(mark.ms)))
}

/// A slice this long or shorter is hashed whole for its tag.
const HASHED_WHOLE: u64 = 256 * 1024;

/// An indexed slice's tag: where it lies and its bytes (all of them up to
/// [`HASHED_WHOLE`], else its first, middle and last 4 KiB with the file's
/// first 4 KiB), so that it stays the same while the log grows past it (a
/// resumed download keeps its `If-Range`) and is the same on every node
/// with the same log.
fn indexed_tag(entry: &FileEntry, rel: &str, start: u64, end: u64) -> io::Result<[u8; 32]> {
    let mut hash = Sha256::new();
    hash.update(b"indexed\0");
    hash.update(rel.as_bytes());
    hash.update(start.to_le_bytes());
    hash.update(end.to_le_bytes());
    let len = end - start;
    let samples: Vec<(u64, u64)> = if len <= HASHED_WHOLE {
        vec![(start, len)]
    } else {
        let n = 4096;
        vec![(0, n.min(start)), (start, n), (start + len / 2, n), (end - n, n)]
    };
    for (at, n) in samples {
        let mut buf = vec![0; n as usize];
        entry.file.read_exact_at(&mut buf, at)?;
        hash.update(&buf);
    }
    Ok(hash.finalize().into())
}

/// The tag of a slice read through: the file's version and the span.
fn version_tag(how: How, rel: &str, entry: &FileEntry, span: Span) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(how.label().as_bytes());
    hash.update(b"\0");
    hash.update(rel.as_bytes());
    hash.update(entry.etag.as_bytes());
    hash.update(span.since.to_le_bytes());
    hash.update(span.until.to_le_bytes());
    hash.finalize().into()
}

/// A compressed log's slice: decompressed and filtered into memory, at most
/// `cap` bytes, which hold a share of [`DECOMPRESSED_HELD`] until the last
/// copy of them is dropped (the answer sent or abandoned).
fn decompressed(rel: &str, entry: Arc<FileEntry>, span: Span, cap: usize) -> io::Result<Sliced> {
    static HELD: std::sync::OnceLock<Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
    let reader = Positional { entry: &entry, at: 0, end: entry.len() };
    let bytes = logline::filter_stream(logscan::decompressed(reader), span.since, span.until, cap)?;
    let held = HELD.get_or_init(|| Arc::new(tokio::sync::Semaphore::new(DECOMPRESSED_HELD)));
    let mib = u32::try_from(bytes.len().div_ceil(1 << 20)).unwrap_or(u32::MAX);
    let permit = held.clone().try_acquire_many_owned(mib).map_err(|_| io::Error::other(Busy))?;
    let tag = version_tag(How::Decompressed, rel, &entry, span);
    let parts = vec![Part::Bytes(Bytes::from_owner(Held { bytes, _permit: permit }))];
    Ok(Sliced { entry, parts, tag, how: How::Decompressed, end: 0 })
}

/// Decompressed lines and their share of [`DECOMPRESSED_HELD`].
struct Held {
    bytes: Vec<u8>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Why a compressed slice was not made: the memory for such answers is in use.
#[derive(Debug)]
struct Busy;

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("compressed logs' slices in flight hold all the memory allowed them; retry shortly")
    }
}

impl std::error::Error for Busy {}

/// Reads a cached descriptor by position, never moving the offset that
/// every clone of it shares.
struct Positional<'a> {
    entry: &'a FileEntry,
    at: u64,
    end: u64,
}

impl Read for Positional<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (self.end - self.at).min(buf.len() as u64) as usize;
        let n = self.entry.file.read_at(&mut buf[..want], self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// Reads through at most this many logs at once (the rest wait): each
/// costs a core for up to a second per GB.
static READ_THROUGH: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Slices one file on the blocking pool: from its index if it can, else by
/// reading it through. A failure is the response to give.
/// `cap`: the most decompressed bytes a compressed log's slice may hold.
async fn slice(app: &AppState, entry: Arc<FileEntry>, rel: String, span: Span, cap: usize) -> Result<Sliced, Response> {
    let root_id = app.root_ids[entry.root];
    let reader = app.reader.clone();
    let path = entry.path.clone();
    let compressed = logscan::compressed(&path);
    let result = async {
        if !compressed {
            let (entry, rel) = (entry.clone(), rel.clone());
            let found = tokio::task::spawn_blocking(move || from_index(&reader, root_id, &rel, &entry, span))
                .await
                .map_err(io::Error::other)??;
            if let Some(sliced) = found {
                return Ok(sliced);
            }
        }
        let _permit = READ_THROUGH.acquire().await.map_err(io::Error::other)?;
        tokio::task::spawn_blocking(move || read_through(&rel, entry, span, cap)).await.map_err(io::Error::other)?
    }
    .await;
    match result {
        Ok(sliced) => {
            app.metrics.log_slices.with_label_values(&[sliced.how.label()]).inc();
            Ok(sliced)
        }
        Err(e) if e.get_ref().is_some_and(|inner| inner.is::<logline::TooLarge>()) => {
            Err(error(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()))
        }
        Err(e) if e.get_ref().is_some_and(|inner| inner.is::<Busy>()) => {
            Err(error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()))
        }
        Err(e) if compressed && matches!(e.kind(), io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput) => {
            Err(error(StatusCode::UNPROCESSABLE_ENTITY, &format!("the compressed log cannot be read: {e}")))
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read log for a slice");
            Err(error(StatusCode::SERVICE_UNAVAILABLE, "cannot read the log now, retry shortly"))
        }
    }
}

/// `/logs/{device}/{file}?since&until[&follow]`.
pub async fn file(
    app: &AppState,
    method: &Method,
    headers: &HeaderMap,
    entry: Arc<FileEntry>,
    rel: String,
    span: Span,
    follow: bool,
) -> Response {
    if follow && logscan::compressed(&entry.path) {
        return error(StatusCode::BAD_REQUEST, "follow: a compressed log does not grow; leave follow out");
    }
    let span = if follow { Span { until: i64::MAX, ..span } } else { span };
    let sliced = match slice(app, entry, rel, span, DECOMPRESSED_MAX).await {
        Ok(sliced) => sliced,
        Err(response) => return response,
    };
    let mut response = if follow {
        let before = PartsBody::new(&sliced.parts);
        follow::start_at(app, method, sliced.entry.clone(), sliced.end, Some(before))
    } else {
        answer(method, headers, &[sliced])
    };
    response.extensions_mut().insert(FILE_ROUTE);
    response
}

/// `/logs/{device}/.lines?since&until[&follow]`: every log of the device
/// the caller may read, in time order (by each file's first time).
pub async fn device(
    app: &AppState,
    caller: Option<&Caller>,
    method: &Method,
    headers: &HeaderMap,
    device: String,
    span: Span,
    follow: bool,
) -> Response {
    let order = app.root_order(RootKind::Logs);
    let filter = LogFilter { device: Some(device.clone()), ..LogFilter::default() };
    let logs = match app.query(move |q| q.logs(&order, &filter)).await {
        Ok(logs) => logs,
        Err(response) => return response,
    };
    let readable: Vec<LogRecord> =
        logs.into_iter().filter(|l| app.may_read(caller, &super::logs::url(&l.device, &l.file))).collect();
    if readable.is_empty() {
        return error(StatusCode::NOT_FOUND, "no such device");
    }
    let compressed = |l: &LogRecord| logscan::compressed(Path::new(&l.file));
    // Followed: the device's newest plain log, whatever the span: the one
    // that started last (a log with no line yet, just rotated in, first).
    // Its first time does not change as it grows, where its mtime in the
    // catalog may lag the last append.
    let newest = |l: &&LogRecord| (l.first_ms.unwrap_or(i64::MAX), l.mtime_ns, l.file.clone());
    let followed = if follow {
        match readable.iter().filter(|l| !compressed(l)).max_by_key(newest) {
            Some(newest) => Some(newest.file.clone()),
            None => return error(StatusCode::NOT_FOUND, "no plain log of this device to follow"),
        }
    } else {
        None
    };
    // The listing's times are exact for a log whose index read it all and
    // that is not being appended to; any other may hold lines of any time
    // (its times come from its ends, or lag its last lines). A compressed
    // log without times could not be read: its slice says why.
    let may_hold = |l: &LogRecord| {
        let unsure = l.index.map_or(!compressed(l), |i| !i.complete) || l.growing;
        match (l.first_ms, l.last_ms) {
            _ if unsure => true,
            (Some(first), Some(last)) => first < span.until && last >= span.since,
            (None, None) => compressed(l),
            _ => false,
        }
    };
    let is_followed = |l: &LogRecord| followed.as_deref() == Some(l.file.as_str());
    let mut logs: Vec<LogRecord> = readable.iter().filter(|l| may_hold(l) && !is_followed(l)).cloned().collect();
    if logs.len() >= MAX_FILES {
        let message = format!("the span covers {} logs, more than {MAX_FILES}; ask for a shorter one", logs.len());
        return error(StatusCode::UNPROCESSABLE_ENTITY, &message);
    }
    logs.sort_by(|a, b| a.first_ms.cmp(&b.first_ms).then_with(|| a.file.cmp(&b.file)));
    logs.extend(readable.iter().filter(|l| is_followed(l)).cloned());
    // One decompression budget for the whole answer.
    let mut budget = DECOMPRESSED_MAX;
    let mut sliced = Vec::with_capacity(logs.len());
    for log in &logs {
        let rel = format!("{}/{}", log.device, log.file);
        let Some(root) = app.root_by_id(log.root).map(|i| &app.roots[i]) else { continue };
        let entry = match app.open_in(std::iter::once(root), rel.clone()).await {
            Ok(Some(entry)) => entry,
            // Gone since the catalog listed it: its lines are no longer there to send.
            Ok(None) => continue,
            Err(response) => return response,
        };
        let file_span = if is_followed(log) { Span { until: i64::MAX, ..span } } else { span };
        match slice(app, entry, rel, file_span, budget).await {
            Ok(s) => {
                let held: u64 = s.parts.iter().filter(|p| matches!(p, Part::Bytes(_))).map(Part::len).sum();
                budget = budget.saturating_sub(held as usize);
                sliced.push(s);
            }
            Err(response) => return response,
        }
    }
    let mut response = if follow { follow_device(app, method, sliced) } else { answer(method, headers, &sliced) };
    response.extensions_mut().insert(DEVICE_ROUTE);
    response
}

/// A followed device-wide slice: the span's lines from every log, then what
/// the last (plain) log gets appended.
fn follow_device(app: &AppState, method: &Method, sliced: Vec<Sliced>) -> Response {
    let Some(last) = sliced.last() else {
        return error(StatusCode::NOT_FOUND, "no log of this device has lines to follow");
    };
    if last.how == How::Decompressed {
        return error(StatusCode::BAD_REQUEST, "follow: the device's latest log is compressed and does not grow");
    }
    let (entry, end) = (last.entry.clone(), last.end);
    let before: Vec<Part> = sliced.into_iter().flat_map(|s| s.parts).collect();
    follow::start_at(app, method, entry, end, Some(PartsBody::new(&before)))
}

/// The answer for slices of one or more files: preconditions against the
/// slice's own ETag, then one `Range` within it.
fn answer(method: &Method, headers: &HeaderMap, sliced: &[Sliced]) -> Response {
    let mut hash = Sha256::new();
    for s in sliced {
        hash.update(s.tag);
    }
    let digest = hash.finalize();
    let etag = HeaderValue::from_str(&format!("\"s-{}\"", URL_SAFE_NO_PAD.encode(&digest[..18]))).expect("ascii");
    let newest = sliced.iter().map(|s| &s.entry).max_by_key(|e| e.validators.modified());
    let modified = newest.map_or(SystemTime::UNIX_EPOCH, |e| e.validators.modified());
    let etag_str = etag.to_str().expect("ascii");
    let common = |h: &HeaderMap| {
        let mut h = h.clone();
        h.insert(header::ETAG, etag.clone());
        if let Some(e) = newest {
            h.insert(header::LAST_MODIFIED, e.last_modified.clone());
            h.insert(header::CACHE_CONTROL, e.cache_control.clone());
        }
        h
    };
    if let Some(status) = files::precondition(headers, etag_str, Some(modified)) {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = status;
        *response.headers_mut() = common(&HeaderMap::new());
        response.extensions_mut().insert(NoReplay);
        return response;
    }
    let parts: Vec<Part> = sliced.iter().flat_map(|s| s.parts.iter().cloned()).collect();
    let total: u64 = parts.iter().map(Part::len).sum();
    let if_range_holds = headers.get(header::IF_RANGE).map_or(true, |v| v.as_bytes() == etag.as_bytes());
    let selection =
        if if_range_holds { files::select(headers.get(header::RANGE), total) } else { files::Selection::Whole };
    let (status, first, count) = match selection {
        // Several ranges of a slice get all of it (RFC 9110 14.2 allows it).
        files::Selection::Whole | files::Selection::Multi(_) => (StatusCode::OK, 0, total),
        files::Selection::Range(first, last) => (StatusCode::PARTIAL_CONTENT, first, last - first + 1),
        files::Selection::Unsatisfiable => {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            let mut h = common(&HeaderMap::new());
            h.insert(header::CONTENT_RANGE, HeaderValue::from_str(&format!("bytes */{total}")).expect("ascii"));
            h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            *response.headers_mut() = h;
            response.extensions_mut().insert(NoReplay);
            return response;
        }
    };
    let parts = cut(parts, first, count);
    let mut response = if *method == Method::HEAD {
        Response::new(Body::empty())
    } else if let [Part::File(slice)] = parts.as_slice() {
        let mut response = Response::new(Body::new(FileBody::new(slice)));
        response.extensions_mut().insert(slice.clone());
        response
    } else {
        let mut response = Response::new(Body::new(PartsBody::new(&parts)));
        response.extensions_mut().insert(Parts(parts.into()));
        response
    };
    *response.status_mut() = status;
    let mut h = common(&HeaderMap::with_capacity(12));
    h.insert(header::CONTENT_TYPE, content_type(sliced));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT {
        let range = format!("bytes {}-{}/{}", first, first + count - 1, total);
        h.insert(header::CONTENT_RANGE, HeaderValue::from_str(&range).expect("ascii"));
    }
    *response.headers_mut() = h;
    // The same target answers differently as the log grows: never replayed.
    response.extensions_mut().insert(NoReplay);
    response
}

/// The parts that hold bytes `[first, first + count)` of their concatenation.
fn cut(parts: Vec<Part>, first: u64, count: u64) -> Vec<Part> {
    let (mut skip, mut left) = (first, count);
    let mut out = Vec::new();
    for part in parts {
        let len = part.len();
        if skip >= len {
            skip -= len;
            continue;
        }
        if left == 0 {
            break;
        }
        let take = (len - skip).min(left);
        out.push(match part {
            Part::File(s) => Part::File(FileSlice { entry: s.entry, offset: s.offset + skip, len: take }),
            Part::Bytes(b) => Part::Bytes(b.slice(skip as usize..(skip + take) as usize)),
        });
        left -= take;
        skip = 0;
    }
    out
}

/// The media type of a slice: its logs' one type, else plain text. A
/// compressed log's slice is decompressed: the type of the name without `.gz`.
fn content_type(sliced: &[Sliced]) -> HeaderValue {
    let of = |s: &Sliced| match s.how {
        How::Decompressed => {
            let name = s.entry.path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let inner = name.get(..name.len().saturating_sub(3)).unwrap_or("");
            HeaderValue::from_static(crate::mime::content_type(Path::new(inner)))
        }
        _ => s.entry.content_type.clone(),
    };
    let mut types = sliced.iter().map(of);
    match types.next() {
        Some(first) if types.all(|t| t == first) => first,
        Some(_) => HeaderValue::from_static("text/plain; charset=utf-8"),
        None => HeaderValue::from_static("text/plain; charset=utf-8"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn spans_and_their_errors() {
        assert_eq!(span(&query(&[])), Ok(None));
        let s = span(&query(&[("since", "2026-11-20T06:00:00Z")])).unwrap().unwrap();
        assert_eq!((s.since, s.until), (1_795_154_400_000, i64::MAX));
        let plus = span(&query(&[("until", "2026-11-20T07:00:00 01:00")])).unwrap().unwrap();
        assert_eq!(plus.until, 1_795_154_400_000, "an unescaped + arrives as a space");
        let err = span(&query(&[("since", "yesterday")])).unwrap_err();
        assert!(err.starts_with("since "), "{err}");
        let err = span(&query(&[("since", "2026-11-20T07:00:00Z"), ("until", "2026-11-20T06:00:00Z")])).unwrap_err();
        assert!(err.starts_with("until "), "{err}");
        let err = span(&query(&[("until", "2026-11-20T06:00:00Z"), ("follow", "")])).unwrap_err();
        assert!(err.starts_with("until"), "{err}");
        assert_eq!(Span::ALL.since, i64::MIN);
    }

    /// The index read part of a log; what was appended since is checked
    /// before the index is trusted, and a stale mark is noticed.
    #[test]
    fn the_index_answers_only_for_the_file_it_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let line = |s: u32| format!("2026-11-20T00:{:02}:{:02}Z reading\n", s / 60, s % 60);
        let body: String = (0..3000).map(line).collect();
        std::fs::write(&path, &body).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let mut progress = logline::Progress::new();
        let (marks, held) = progress.extend(&file, body.len() as u64).unwrap();
        assert!(!held);
        assert!(marks.len() > 1);
        let v = crate::validators::Validators::of(&file.metadata().unwrap());
        let at = |s: u32| logline::rfc3339_ms(line(s).trim_end().split(' ').next().unwrap().as_bytes()).unwrap();
        let span = Span { since: at(1000), until: at(2000) };
        let index = |since_mark: Option<Mark>| LogIndex {
            dev: v.dev,
            ino: v.ino,
            size: v.len,
            mtime_ns: v.mtime_ns as i64,
            marks: marks.len() as u64,
            indexed_to: progress.indexed_to,
            tail_check: tail_check(&file, progress.indexed_to).unwrap(),
            shape: progress.shape,
            ordered: progress.ordered,
            prev_ms: progress.prev_ms,
            first: marks.first().copied(),
            before_since: since_mark,
            before_until: marks.iter().rev().find(|m| m.ms < span.until).copied(),
        };
        let good = index(marks.iter().rev().find(|m| m.ms < span.since).copied());
        let want = (body.find(&line(1000)).unwrap() as u64, body.find(&line(2000)).unwrap() as u64);
        assert_eq!(indexed(&file, &v, &good, span).unwrap(), Some(want));
        let other = crate::validators::Validators { ino: v.ino + 1, ..v };
        assert_eq!(indexed(&file, &other, &good, span).unwrap(), None, "another file");
        let touched = crate::validators::Validators { mtime_ns: v.mtime_ns + 1, ..v };
        assert_eq!(indexed(&file, &touched, &good, span).unwrap(), None, "written without growing");
        let moved = Mark { offset: marks[1].offset + 1, ..marks[1] };
        assert_eq!(indexed(&file, &v, &index(Some(moved)), span).unwrap(), None, "a stale mark");
        let beyond = Mark { offset: body.len() as u64 + 10, ..marks[1] };
        assert_eq!(indexed(&file, &v, &index(Some(beyond)), span).unwrap(), None, "a mark past the file");
        let unmarked = LogIndex { first: None, before_since: None, before_until: None, ..good.clone() };
        assert_eq!(indexed(&file, &v, &unmarked, span).unwrap(), None, "a row whose marks are not there");

        // Appended in order: still answered; out of order: not.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(line(3001).as_bytes()).unwrap();
        let v = crate::validators::Validators::of(&file.metadata().unwrap());
        assert_eq!(indexed(&file, &v, &good, span).unwrap(), Some(want));
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(line(1500).as_bytes()).unwrap();
        let v = crate::validators::Validators::of(&file.metadata().unwrap());
        assert_eq!(indexed(&file, &v, &good, span).unwrap(), None, "an append went back in time");
    }

    #[test]
    fn cut_spans_parts() {
        let parts = vec![Part::Bytes(Bytes::from_static(b"abc")), Part::Bytes(Bytes::from_static(b"defg"))];
        let got: Vec<u8> = cut(parts, 2, 3)
            .into_iter()
            .flat_map(|p| match p {
                Part::Bytes(b) => b.to_vec(),
                Part::File(_) => unreachable!(),
            })
            .collect();
        assert_eq!(got, b"cde");
    }
}
