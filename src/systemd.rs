//! systemd integration: socket activation (`LISTEN_FDS`) and the service
//! manager's notifications (`READY`, `STATUS`, `WATCHDOG`, `STOPPING`).
//!
//! Each is a no-op when tessera is not started by systemd, so the same binary
//! runs by hand, in tests and under the appliance's units.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The listening socket systemd passed (the first of `LISTEN_FDS`), if any.
/// Call before any thread starts: it unsets `LISTEN_PID` and `LISTEN_FDS`
/// so that children do not inherit them.
pub fn inherited_listener() -> io::Result<Option<TcpListener>> {
    let Some(fd) = sd_notify::listen_fds()?.next() else { return Ok(None) };
    // SAFETY: systemd passed this descriptor to this process (LISTEN_PID
    // matched) and nothing else in the process owns it.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    let addr = listener.local_addr().map_err(|e| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("LISTEN_FDS: descriptor {fd} is not a TCP socket ({e})"))
    })?;
    let accepting = nix::sys::socket::getsockopt(&listener, nix::sys::socket::sockopt::AcceptConn).unwrap_or(false);
    if !accepting {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("LISTEN_FDS: {addr} is not listening")));
    }
    listener.set_nonblocking(true)?;
    Ok(Some(listener))
}

/// Whether a service manager listens for notifications.
fn managed() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Tells systemd the service is stopping (it then waits, rather than
/// counting the drain against the watchdog).
pub fn stopping() {
    if managed() {
        notify(&[NotifyState::Stopping, NotifyState::Status("stopping: finishing requests in flight")]);
    }
}

/// What the status line reports, read when it is due.
pub trait StatusSource: Send + Sync + 'static {
    fn status(&self) -> impl std::future::Future<Output = String> + Send;
}

/// Sends `READY=1` once the first reconcile is done, then a `STATUS` line
/// every [`STATUS_EVERY`], and `WATCHDOG=1` at half the watchdog period for
/// as long as the server answers its own `/healthz` over the listening
/// socket: a wedged accept loop or runtime stops the pings, and systemd
/// restarts the service. `tls`: the socket speaks only TLS, and the check
/// is that it answers a request that is not TLS with a TLS alert, which
/// shows the accept loop and the handshake running without needing a client
/// certificate the service might require.
pub async fn supervise(ready: Arc<AtomicBool>, listen: SocketAddr, tls: bool, status: impl StatusSource) {
    if !managed() {
        return;
    }
    while !ready.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let line = status.status().await;
    notify(&[NotifyState::Ready, NotifyState::Status(&format!("ready: {line}"))]);
    tracing::info!(status = line, "notified systemd: ready");

    let mut usec = 0;
    let watchdog = sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec) / 2);
    let tick = watchdog.map_or(STATUS_EVERY, |half| half.min(STATUS_EVERY));
    let mut since_status = Duration::ZERO;
    loop {
        tokio::time::sleep(tick).await;
        since_status += tick;
        if watchdog.is_some() {
            match self_check(listen, tls).await {
                Ok(()) => notify(&[NotifyState::Watchdog]),
                Err(e) => tracing::warn!(error = %e, "health self-check failed; not feeding the watchdog"),
            }
        }
        if since_status >= STATUS_EVERY {
            since_status = Duration::ZERO;
            let line = status.status().await;
            notify(&[NotifyState::Status(&format!("ready: {line}"))]);
        }
    }
}

const STATUS_EVERY: Duration = Duration::from_secs(10);

/// Marks the watchdog's own `GET /healthz`, which the HTTP layer keeps out
/// of the access log.
pub const SELF_CHECK_HEADER: &str = "x-tessera-self-check";

/// `GET /healthz` through the listening socket, as a client would.
async fn self_check(listen: SocketAddr, tls: bool) -> io::Result<()> {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    let check = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(
                b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Tessera-Self-Check: 1\r\nConnection: close\r\n\r\n",
            )
            .await?;
        if tls {
            // A TLS record of type 21 (alert) is the answer of a live TLS stack.
            let mut record = [0u8; 1];
            stream.read_exact(&mut record).await?;
            return if record[0] == 21 { Ok(()) } else { Err(io::Error::other("no TLS alert")) };
        }
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        if &head == b"HTTP/1.1 200" {
            Ok(())
        } else {
            Err(io::Error::other(format!("/healthz answered {:?}", String::from_utf8_lossy(&head))))
        }
    };
    tokio::time::timeout(Duration::from_secs(3), check).await.unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}
