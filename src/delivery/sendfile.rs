//! The zero-copy path: a response head written with `MSG_MORE` so that it
//! shares packets with the body, then `sendfile(2)` from the response's own
//! offset, waiting for writability through tokio (the socket stays
//! non-blocking; `EAGAIN` parks the task, it never spins).
//!
//! Each call moves at most `chunk` bytes and the task yields between calls,
//! so one fast reader cannot starve the other connections of its worker
//! thread. Linux moves at most 0x7ffff000 bytes a call anyway, so a loop is
//! needed for large files regardless; offsets are 64-bit (`sendfile64`).
//!
//! Large bodies are not corked (`TCP_CORK`, nginx's `tcp_nopush`). Corked,
//! the kernel holds partial segments until an ACK pulls them out, and on
//! loopback that transmit, with the receive processing it triggers, runs
//! in the client's context: one curl over one connection moved 1.6-1.7 GB/s
//! at 0.48-0.55 s of curl CPU per GB corked, 2.6-2.9 GB/s at 0.25 uncorked
//! (docs/BENCHMARKS.md, "Efficiency").

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use nix::errno::Errno;
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::progress::{self, writable};
use super::FileSlice;
use crate::cache::{read_exact_at, ACKNOWLEDGED_FROM};

/// Why a sendfile transfer stopped early.
#[derive(Debug)]
pub enum SendError {
    /// The kernel cannot sendfile this file (`EINVAL`, `ENOSYS`,
    /// `EOPNOTSUPP`) and no body byte has moved: send it the buffered way.
    Refused(io::Error),
    /// The file ended before the promised length: close the connection.
    Shrank,
    /// The file changed (length or mtime) under the response: the
    /// connection must close without the last byte, so that no client takes
    /// a torn body as whole.
    Changed,
    Io(io::Error),
}

impl From<io::Error> for SendError {
    fn from(e: io::Error) -> Self {
        SendError::Io(e)
    }
}

/// Writes all of `buf`; with `more`, tells the kernel that more data follows
/// (`MSG_MORE`), so a head is held back to share a packet with the body.
pub async fn send_all(stream: &TcpStream, mut buf: &[u8], more: bool, timeout: Duration) -> io::Result<()> {
    let flags = libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
    while !buf.is_empty() {
        let sent = stream.try_io(Interest::WRITABLE, || {
            // SAFETY: the pointer and length describe `buf`, alive for the call.
            let n = unsafe { libc::send(stream.as_raw_fd(), buf.as_ptr().cast(), buf.len(), flags) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match sent {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => writable(stream, timeout).await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends `head`, then the slice's bytes straight from its file.
pub async fn send_head_and_file(
    stream: &TcpStream,
    head: &[u8],
    slice: &FileSlice,
    chunk: u64,
    timeout: Duration,
) -> Result<(), SendError> {
    let (offset, len) = (slice.offset, slice.len);
    send_all(stream, head, len > 0, timeout).await?;
    let mut body = Body { stream, slice, off: offset as libc::off64_t, chunk, timeout, sent: head.len() as u64 };
    let end = offset + len;
    // Large bodies hold their last byte back until the file is known
    // unchanged after the rest went out (see `finish`). Small ones go in one
    // call: three more syscalls per tile would cost more than the
    // microseconds of exposure they close for files nobody writes in place.
    // Files known to be written in place (`DescriptorCache::entry`), and
    // files modified lately, which may be being written in place for the
    // first time (`FileEntry::settled`), take the buffered path instead.
    if len < GUARD_FROM {
        return body.send_to(end).await;
    }
    if len < ACKNOWLEDGED_FROM {
        body.send_to(end - 1).await?;
    } else {
        // The byte before the held-back one carries an acknowledgment
        // request, so that the drain waits for the kernel's word instead
        // of polling the send queue.
        body.send_to(end - 2).await?;
        let request = progress::AckRequest::arm(stream);
        body.send_to(end - 1).await?;
        progress::acknowledged(stream, request, timeout).await?;
    }
    finish(stream, slice, timeout).await?;
    slice.entry.counters.sendfile.inc_by(1);
    Ok(())
}

/// A body being sent by sendfile: where it stands in its file.
struct Body<'a> {
    stream: &'a TcpStream,
    slice: &'a FileSlice,
    off: libc::off64_t,
    chunk: u64,
    timeout: Duration,
    /// Bytes of the response (head included) gone into the socket.
    sent: u64,
}

impl Body<'_> {
    /// Sends the slice's file up to offset `end`, at most `chunk` bytes a
    /// call, yielding between full chunks. Calls end where the response
    /// reaches a multiple of `chunk` (the first one is shortened by the
    /// head), as lighttpd's do: with 256 KiB calls, one curl over loopback
    /// took 4.1-4.2 GB/s at 0.24 s of server CPU per GB, against 2.7-3.0
    /// GB/s at 0.35 for the same calls shifted by the head, and 3.4 GB/s at
    /// 0.29 for aligned 1 MiB calls (docs/BENCHMARKS.md, "Efficiency").
    async fn send_to(&mut self, end: u64) -> Result<(), SendError> {
        let (stream, file) = (self.stream, &self.slice.entry.file);
        while (self.off as u64) < end {
            let to_boundary = self.chunk - self.sent % self.chunk;
            let want = (end - self.off as u64).min(to_boundary) as usize;
            let result = stream.try_io(Interest::WRITABLE, || {
                nix::sys::sendfile::sendfile64(stream.as_fd(), file.as_fd(), Some(&mut self.off), want)
                    .map_err(io::Error::from)
            });
            match result {
                Ok(0) => return Err(SendError::Shrank),
                Ok(n) => {
                    self.sent += n as u64;
                    self.slice.entry.counters.sendfile.inc_by(n as u64);
                    if n == want && (self.off as u64) < end {
                        // A full chunk went out: let the other connections run.
                        tokio::task::yield_now().await;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => writable(stream, self.timeout).await?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if self.off as u64 == self.slice.offset && refused(&e) => return Err(SendError::Refused(e)),
                Err(e) => return Err(SendError::Io(e)),
            }
        }
        Ok(())
    }
}

/// Bodies at least this long hold back their last byte (see `finish`).
pub const GUARD_FROM: u64 = 64 * 1024;

/// Sends the slice's last byte, only if the file is still the version the
/// head describes; otherwise the connection ends without it, and the client
/// sees an incomplete response rather than a torn one.
async fn finish(stream: &TcpStream, slice: &FileSlice, timeout: Duration) -> Result<(), SendError> {
    let last = read_exact_at(&slice.entry.file, slice.offset + slice.len - 1, 1)?;
    if last.len() != 1 {
        return Err(SendError::Shrank);
    }
    if !slice.entry.holds_snapshot() {
        return Err(SendError::Changed);
    }
    send_all(stream, &last, false, timeout).await?;
    Ok(())
}

/// Errors that mean "this file cannot be sendfile'd", not "the peer is gone".
fn refused(e: &io::Error) -> bool {
    matches!(e.raw_os_error().map(Errno::from_raw), Some(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP))
}

/// `tessera doctor`'s live probe: sendfile up to 64 KiB of `file` into a
/// socket pair. Returns the bytes moved.
pub fn probe(file: &File) -> io::Result<usize> {
    let (a, _b) = std::os::unix::net::UnixStream::pair()?;
    let len = file.metadata()?.len().min(64 * 1024) as usize;
    let mut off: libc::off64_t = 0;
    Ok(nix::sys::sendfile::sendfile64(a.as_fd(), file.as_fd(), Some(&mut off), len)?)
}
