//! Waiting on a client by its progress, never by the clock alone.
//!
//! A field device on a radio link may take minutes over a body and still be
//! alive: what tells a slow client from a gone one is whether TCP hears
//! acknowledgments. So every wait of the write path ([`writable`],
//! [`acknowledged`]) gives up only when the peer acknowledged no byte for a
//! whole `write_timeout` (`tcpi_bytes_acked` of `TCP_INFO`, looked at four
//! times per timeout: a silent client is dropped after one to one and a
//! quarter timeouts), however long the wait as a whole.
//!
//! [`acknowledged`] waits until the peer has acknowledged everything sent,
//! which the sendfile path needs before its final check (sendfile queues
//! page references, see `sendfile::finish`). It costs no polling: the byte
//! before the held-back one is sent with an acknowledgment request
//! ([`AckRequest`], `SO_TIMESTAMPING` with `SOF_TIMESTAMPING_TX_ACK`), and
//! the kernel puts a notification on the socket's error queue once every
//! byte up to it is acknowledged; the task sleeps on the socket's error
//! readiness until then. A waiting connection wakes four times per
//! `write_timeout` to look at its progress, and once when done. (A kernel
//! that refuses the request gets its send queue polled instead, at most
//! every 50 ms.)

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How many times per timeout a wait looks at the peer's progress.
const CHECKS: u32 = 4;

/// The peer's progress during one wait: bytes acknowledged, and for how
/// many consecutive checks nothing more was.
struct Progress {
    acked: Option<u64>,
    quiet: u32,
    period: Duration,
}

impl Progress {
    fn new(stream: &TcpStream, timeout: Duration) -> Progress {
        Progress { acked: bytes_acked(stream), quiet: 0, period: (timeout / CHECKS).max(Duration::from_millis(1)) }
    }

    /// After one period: an error once a whole timeout passed without an
    /// acknowledged byte ("write stalled").
    fn check(&mut self, stream: &TcpStream) -> io::Result<()> {
        let now = bytes_acked(stream);
        if now.is_some() && now != self.acked {
            self.acked = now;
            self.quiet = 0;
            return Ok(());
        }
        self.quiet += 1;
        if self.quiet >= CHECKS {
            return Err(stalled());
        }
        Ok(())
    }
}

/// The error of a client that acknowledged nothing for `write_timeout`.
pub fn stalled() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "write stalled: the client acknowledged nothing for write_timeout_ms")
}

/// Waits until the socket takes more. Gives up only when the peer
/// acknowledged nothing for `timeout` (see the module comment): a socket
/// buffer of a few hundred KiB frees its first third slowly at a few KB/s.
pub async fn writable(stream: &TcpStream, timeout: Duration) -> io::Result<()> {
    let mut progress = Progress::new(stream, timeout);
    loop {
        match tokio::time::timeout(progress.period, stream.writable()).await {
            Ok(result) => return result,
            Err(_) => progress.check(stream)?,
        }
    }
}

/// Asks the kernel to report, on the socket's error queue, when the bytes
/// of the next send are acknowledged; dropping it stops asking.
pub struct AckRequest<'a>(&'a TcpStream);

impl<'a> AckRequest<'a> {
    /// `None` where the kernel refuses (then [`acknowledged`] looks at the
    /// send queue at each progress check instead).
    pub fn arm(stream: &'a TcpStream) -> Option<AckRequest<'a>> {
        // A notification left from an earlier response on this connection
        // would end the next wait early.
        while recv_error_queue(stream).is_ok() {}
        let flags = libc::SOF_TIMESTAMPING_TX_ACK
            | libc::SOF_TIMESTAMPING_SOFTWARE
            | libc::SOF_TIMESTAMPING_OPT_ID
            | libc::SOF_TIMESTAMPING_OPT_TSONLY;
        set_timestamping(stream, flags).ok().map(|()| AckRequest(stream))
    }
}

impl Drop for AckRequest<'_> {
    fn drop(&mut self) {
        let _ = set_timestamping(self.0, 0);
    }
}

/// Waits until the peer has acknowledged every byte sent, with `request`
/// armed for the last send. Gives up when it acknowledged nothing for
/// `timeout`.
pub async fn acknowledged(stream: &TcpStream, request: Option<AckRequest<'_>>, timeout: Duration) -> io::Result<()> {
    let mut progress = Progress::new(stream, timeout);
    let mut next_check = Instant::now() + progress.period;
    // Without a request (a kernel that refuses it), the send queue is
    // polled instead, from 1 ms up to POLL_MAX apart.
    let mut poll = Duration::from_millis(1);
    loop {
        if request.is_some() && take_notification(stream)? {
            return Ok(());
        }
        // Also the way out when the kernel dropped the notification (an
        // error queue over the receive buffer's limit).
        if unacknowledged(stream)? == 0 {
            return Ok(());
        }
        let wake = if request.is_some() { next_check } else { next_check.min(Instant::now() + poll) };
        tokio::select! {
            ready = stream.ready(Interest::ERROR), if request.is_some() => { ready?; }
            () = tokio::time::sleep_until(wake) => poll = (poll * 2).min(POLL_MAX),
        }
        if Instant::now() >= next_check {
            progress.check(stream)?;
            next_check = Instant::now() + progress.period;
        }
    }
}

/// The longest pause between two looks at the send queue when the kernel
/// cannot notify.
const POLL_MAX: Duration = Duration::from_millis(50);

/// Takes the acknowledgment notification off the error queue, if it came.
/// Error readiness without one is the socket's own error (a reset).
fn take_notification(stream: &TcpStream) -> io::Result<bool> {
    match stream.try_io(Interest::ERROR, || recv_error_queue(stream)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => match stream.take_error()? {
            Some(e) => Err(e),
            None => Ok(false),
        },
        Err(e) => Err(e),
    }
}

/// One message off the socket's error queue (`MSG_ERRQUEUE`): with
/// `OPT_TSONLY` a timestamp without payload, whose content is not needed.
fn recv_error_queue(stream: &TcpStream) -> io::Result<()> {
    let mut control = [0u64; 32];
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` points at `control`, alive for the call; no iovec.
    let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_timestamping(stream: &TcpStream, flags: libc::c_uint) -> io::Result<()> {
    let value = flags as libc::c_int;
    // SAFETY: the pointer and length describe `value`, alive for the call.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPING,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Bytes the peer has acknowledged on this connection (`None` if the kernel
/// does not say: then no progress is ever seen and waits end by the clock).
fn bytes_acked(stream: &TcpStream) -> Option<u64> {
    // SAFETY: tcp_info is plain data; the kernel fills at most `len` bytes.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the pointer and length describe `info`, alive for the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    let end = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_acked) + std::mem::size_of::<u64>();
    (rc == 0 && len as usize >= end).then_some(info.tcpi_bytes_acked)
}

/// Bytes sent but not yet acknowledged, plus those not yet sent (`TIOCOUTQ`).
fn unacknowledged(stream: &TcpStream) -> io::Result<u32> {
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ writes one int through the pointer, which is valid.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(queued.max(0) as u32)
}
