//! Delivery: how a file's bytes leave the process.
//!
//! The HTTP layer answers every file request with a response whose body is a
//! [`FileBody`] and which carries a [`FileSlice`] extension naming the same
//! open file, offset and length. Any transport can stream the body (this is
//! the buffered path, and the only one hyper can do). A connection driver
//! that can do better takes the extension instead and moves the bytes with
//! `sendfile(2)` (DESIGN.md decision 1): that is the seam for the zero-copy
//! path.
//!
//! Modules: [`head`] parses request heads strictly, [`driver`] runs one
//! HTTP/1.1 connection, [`sendfile`] moves file bodies without copying,
//! [`handoff`] gives hyper a connection the driver does not fully handle.
//!
//! Both read with positional reads (`pread`) from one shared descriptor, so
//! concurrent responses from one cached file never disturb each other, and
//! both stop the connection if the file ends early: a body never disagrees
//! with its `Content-Length` (DESIGN.md decision 4).

pub mod driver;
pub mod handoff;
pub mod head;
pub mod progress;
mod replay;
mod response;
pub mod sendfile;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::task::JoinHandle;

use crate::cache::{read_exact_at, shrank, FileEntry};

/// Read size of the buffered path: large enough that a big log costs few
/// round trips to the blocking pool, small enough to keep memory per
/// connection modest.
const CHUNK: u64 = 256 * 1024;

/// The file slice a response's body consists of, for a transport that can
/// send it without copying.
#[derive(Debug, Clone)]
pub struct FileSlice {
    pub entry: Arc<FileEntry>,
    pub offset: u64,
    pub len: u64,
}

impl FileSlice {
    /// The slice's bytes from the memory cache, if the file is kept there.
    pub fn memory(&self) -> Option<Bytes> {
        let all = self.entry.memory()?;
        Some(all.slice(self.offset as usize..(self.offset + self.len) as usize))
    }
}

/// One part of a body made of several (a log's lines for a time span, from
/// several files or several runs of one): a file slice, sent by the file's
/// own delivery path, or bytes already in memory.
#[derive(Debug, Clone)]
pub enum Part {
    File(FileSlice),
    Bytes(Bytes),
}

impl Part {
    pub fn len(&self) -> u64 {
        match self {
            Part::File(slice) => slice.len,
            Part::Bytes(bytes) => bytes.len() as u64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A response extension: the body is these parts in order, for a transport
/// that sends each file part without copying; [`PartsBody`] streams the
/// same bytes for any other.
#[derive(Debug, Clone)]
pub struct Parts(pub Arc<[Part]>);

/// The parts of [`Parts`] as one streaming body: file parts through
/// [`FileBody`], memory parts as they are.
pub struct PartsBody {
    parts: std::collections::VecDeque<Part>,
    current: Option<FileBody>,
}

impl PartsBody {
    pub fn new(parts: &[Part]) -> PartsBody {
        PartsBody { parts: parts.iter().filter(|p| !p.is_empty()).cloned().collect(), current: None }
    }
}

impl Body for PartsBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        loop {
            if let Some(body) = self.current.as_mut() {
                match ready!(Pin::new(body).poll_frame(cx)) {
                    None => self.current = None,
                    some => return Poll::Ready(some),
                }
            }
            match self.parts.pop_front() {
                None => return Poll::Ready(None),
                Some(Part::Bytes(bytes)) => return Poll::Ready(Some(Ok(Frame::data(bytes)))),
                Some(Part::File(slice)) => self.current = Some(FileBody::new(&slice)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.current.as_ref().map_or(true, |c| c.slice.len == 0) && self.parts.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        let current = self.current.as_ref().map_or(0, |c| c.slice.len);
        SizeHint::with_exact(current + self.parts.iter().map(Part::len).sum::<u64>())
    }
}

/// A streaming body that reads `len` bytes at `offset` from an open file on
/// the blocking pool, or hands out the memory cache's copy in one frame.
pub struct FileBody {
    slice: FileSlice,
    pending: Option<JoinHandle<io::Result<Bytes>>>,
}

impl FileBody {
    pub fn new(slice: &FileSlice) -> FileBody {
        FileBody { slice: slice.clone(), pending: None }
    }

    fn start_read(&mut self) -> JoinHandle<io::Result<Bytes>> {
        let entry = self.slice.entry.clone();
        let (offset, want) = (self.slice.offset, self.want());
        tokio::task::spawn_blocking(move || read_exact_at(&entry.file, offset, want))
    }

    fn want(&self) -> usize {
        self.slice.len.min(CHUNK) as usize
    }

    /// A chunk read: passed on, or the end of the connection if the file
    /// shrank under us (never padded, never hung: DESIGN.md decision 4).
    fn finish_read(&mut self, result: io::Result<Bytes>) -> Result<Frame<Bytes>, io::Error> {
        let bytes = accept_chunk(&self.slice.entry, self.slice.len, result?)?;
        // The last chunk only if the file is still the version the head describes.
        if bytes.len() as u64 == self.slice.len && !self.slice.entry.holds_snapshot() {
            return Err(io::Error::other("file changed while being sent"));
        }
        Ok(self.advance(bytes))
    }

    fn advance(&mut self, bytes: Bytes) -> Frame<Bytes> {
        self.slice.offset += bytes.len() as u64;
        self.slice.len -= bytes.len() as u64;
        Frame::data(bytes)
    }
}

/// One chunk of the buffered path: up to `remaining` (at most [`CHUNK`])
/// bytes at `offset`. Local storage is read inline (a page-cache read; a
/// blocking-pool thread per busy connection cost hundreds of MiB of resident
/// memory in the benchmark); shared storage, which can block for long, on
/// the blocking pool.
pub async fn read_chunk(entry: &Arc<FileEntry>, offset: u64, remaining: u64) -> io::Result<Bytes> {
    let want = remaining.min(CHUNK) as usize;
    let bytes = if entry.local {
        read_exact_at(&entry.file, offset, want)?
    } else {
        let entry = entry.clone();
        tokio::task::spawn_blocking(move || read_exact_at(&entry.file, offset, want))
            .await
            .map_err(io::Error::other)??
    };
    accept_chunk(entry, remaining, bytes)
}

/// A chunk read for the buffered path, counted; an empty one means the file
/// shrank under us, which ends the connection (never padded, never hung:
/// DESIGN.md decision 4).
fn accept_chunk(entry: &FileEntry, missing: u64, bytes: Bytes) -> io::Result<Bytes> {
    if bytes.is_empty() {
        tracing::warn!(path = %entry.path.display(), missing, "file ended early; closing connection");
        return Err(shrank());
    }
    entry.counters.buffered.inc_by(bytes.len() as u64);
    Ok(bytes)
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.slice.len == 0 {
            return Poll::Ready(None);
        }
        if self.pending.is_none() {
            if let Some(bytes) = self.slice.memory() {
                self.slice.entry.counters.memory.inc_by(bytes.len() as u64);
                return Poll::Ready(Some(Ok(self.advance(bytes))));
            }
            if self.slice.entry.local {
                let result = read_exact_at(&self.slice.entry.file, self.slice.offset, self.want());
                return Poll::Ready(Some(self.finish_read(result)));
            }
            let handle = self.start_read();
            self.pending = Some(handle);
        }
        let handle = self.pending.as_mut().expect("read in flight");
        let result = ready!(Pin::new(handle).poll(cx));
        self.pending = None;
        let result = match result {
            Ok(result) => result,
            Err(join) => Err(io::Error::other(join)),
        };
        Poll::Ready(Some(self.finish_read(result)))
    }

    fn is_end_stream(&self) -> bool {
        self.slice.len == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.slice.len)
    }
}

/// A request extension: the connection driver carries this request and
/// writes its access-log line itself, once it knows how the body travelled.
#[derive(Debug, Clone, Copy)]
pub struct Driven;

/// A request extension every transport sets: who is on the other end of
/// the connection. The access rules read the device names, the failure
/// limits and the access log the address.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: std::net::SocketAddr,
    /// The connection is TLS.
    pub tls: bool,
    /// The names a verified client certificate gives (subject CN, DNS and
    /// URI SANs), if one was presented.
    pub device: Option<Arc<[String]>>,
}

/// A response extension: the authenticated caller's name for the access
/// log (`token:NAME`, `device:NAME`), never a secret.
#[derive(Debug, Clone)]
pub struct Identity(pub Arc<str>);

/// A response extension: this answer is left out of the access log (the
/// service manager's own health check, every few seconds).
#[derive(Debug, Clone, Copy)]
pub struct Unlogged;

/// A response extension: this answer must not be replayed by the driver,
/// even if it looks like a plain whole-file 200 (it may gain headers, such as
/// a log's `Repr-Digest`, for the same file version).
#[derive(Debug, Clone, Copy)]
pub struct NoReplay;

/// A response extension: this 200's body is a part of its file that is a
/// whole representation of its own (a tile inside a PMTiles archive), which
/// the driver may replay like a whole file's, for as long as the file stays
/// fresh and `epoch` still holds `at` (the catalog's generation of tiles roots: what else
/// decided the answer, such as which source serves the tileset).
#[derive(Debug, Clone)]
pub struct ReplayWhile {
    pub epoch: Arc<std::sync::atomic::AtomicU64>,
    pub at: u64,
}

/// A response extension: this 200's body is `data`, read from `entry`'s
/// file (a tile of an MBTiles database), which the driver may replay for as
/// long as that file stays fresh and `while_` holds: the HTTP layer puts it
/// only where the file's validators name its content.
#[derive(Debug, Clone)]
pub struct Held {
    pub entry: Arc<FileEntry>,
    pub data: Bytes,
    pub while_: ReplayWhile,
}

impl ReplayWhile {
    fn holds(&self) -> bool {
        self.epoch.load(std::sync::atomic::Ordering::Acquire) == self.at
    }
}

/// Resolves once shutdown has been asked for (or its sender is gone).
pub async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
