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
//! Both read with positional reads (`pread`) from one shared descriptor, so
//! concurrent responses from one cached file never disturb each other, and
//! both stop the connection if the file ends early: a body never disagrees
//! with its `Content-Length` (DESIGN.md decision 4).

use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use prometheus::IntCounter;
use tokio::task::JoinHandle;

use crate::cache::FileEntry;
use crate::roots::DeliveryPath;

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
    /// The path the root's storage allows (sendfile only on local storage).
    pub delivery: DeliveryPath,
}

/// A streaming body that reads `len` bytes at `offset` from an open file on
/// the blocking pool.
pub struct FileBody {
    entry: Arc<FileEntry>,
    offset: u64,
    remaining: u64,
    pending: Option<JoinHandle<io::Result<Bytes>>>,
    sent: IntCounter,
}

impl FileBody {
    pub fn new(slice: &FileSlice, sent: IntCounter) -> FileBody {
        FileBody { entry: slice.entry.clone(), offset: slice.offset, remaining: slice.len, pending: None, sent }
    }

    fn start_read(&mut self) -> JoinHandle<io::Result<Bytes>> {
        let entry = self.entry.clone();
        let (offset, want) = (self.offset, self.remaining.min(CHUNK) as usize);
        tokio::task::spawn_blocking(move || read_exact_at(&entry, offset, want))
    }
}

/// Reads up to `want` bytes at `offset`; fewer only if the file ended.
fn read_exact_at(entry: &FileEntry, offset: u64, want: usize) -> io::Result<Bytes> {
    let mut buf = BytesMut::zeroed(want);
    let mut filled = 0;
    while filled < want {
        match entry.file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf.freeze())
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        if self.pending.is_none() {
            let handle = self.start_read();
            self.pending = Some(handle);
        }
        let handle = self.pending.as_mut().expect("read in flight");
        let result = ready!(Pin::new(handle).poll(cx));
        self.pending = None;
        let bytes = match result {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => return Poll::Ready(Some(Err(e))),
            Err(join) => return Poll::Ready(Some(Err(io::Error::other(join)))),
        };
        if bytes.is_empty() {
            // The file shrank under us: end the connection rather than pad
            // or hang (DESIGN.md decision 4).
            tracing::warn!(path = %self.entry.path.display(), missing = self.remaining, "file ended early; closing connection");
            return Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while being sent",
            ))));
        }
        self.offset += bytes.len() as u64;
        self.remaining -= bytes.len() as u64;
        self.sent.inc_by(bytes.len() as u64);
        Poll::Ready(Some(Ok(Frame::data(bytes))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
