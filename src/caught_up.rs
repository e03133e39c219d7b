//! Whether a root's inotify watcher has applied every change the kernel
//! has reported so far, checked from any thread in one `ioctl`. Written by
//! the watcher (`watch::tree`), read by the descriptor cache's entries; a
//! module of its own below both, held by each `Root`.
//!
//! The descriptor cache confirms an entry not checked for
//! `revalidate_after` with a `stat` of its path (`FileEntry::fresh`), so
//! that a watcher thread waiting for a core cannot keep an old file served.
//! On a root whose every directory is watched, the watcher itself can
//! answer for all entries at once: inotify queues the event of a change
//! before the changing syscall returns, so if, at some moment, the queue is
//! empty (`FIONREAD` is 0) and the watcher is not between reading events
//! and having invalidated their paths, every change made before that moment
//! has already taken its entries out of the cache. An entry still cached is
//! then as current as a `stat` at that moment would have shown, which is
//! the guarantee the per-entry check gives, without walking a path (the
//! `statx` was a tenth of the tile path's CPU, perf). When the check fails
//! (events waiting, the watcher busy or stopped, or some directory polled
//! for want of watches) entries fall back to their own `stat`.
//!
//! The watcher marks its busy spans with a sequence number, odd while it
//! reads and applies events; a reader takes it before and after `FIONREAD`
//! and trusts the empty queue only if it stayed the same even number.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

/// One root's answer, shared by its watcher thread and the cache's entries.
#[derive(Debug, Default)]
pub struct CaughtUp {
    /// A duplicate of the watcher's inotify descriptor (the same queue),
    /// owned here so that it stays valid for readers whatever the watcher
    /// does. Unset for roots without an inotify watcher.
    inotify: OnceLock<OwnedFd>,
    /// Odd while the watcher reads events and applies them.
    busy: AtomicU64,
    running: AtomicBool,
    /// Set once any directory of the root is polled instead of watched
    /// (the watch limit); from then on, entries check themselves. Never
    /// cleared: a directory watched again may hide a change made while it
    /// was polled and not yet listed.
    partial: AtomicBool,
    /// The last moment, on the cache's clock, when the watcher was seen
    /// caught up.
    confirmed_ms: AtomicU64,
}

impl CaughtUp {
    /// Called by the watcher once its directories are watched.
    pub fn attach(&self, inotify: BorrowedFd<'_>) -> io::Result<()> {
        let fd = inotify.try_clone_to_owned()?;
        let _ = self.inotify.set(fd);
        self.running.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// The watcher starts reading events.
    pub fn begin(&self) {
        self.busy.fetch_add(1, Ordering::SeqCst);
    }

    /// The watcher has applied every event it read.
    pub fn end(&self) {
        self.busy.fetch_add(1, Ordering::SeqCst);
    }

    /// The watcher stopped: nothing is applied any more.
    pub fn stopped(&self) {
        self.running.store(false, Ordering::SeqCst);
    }

    /// Some directory of the root is polled instead of watched.
    pub fn partial(&self) {
        self.partial.store(true, Ordering::SeqCst);
    }

    /// Whether every change made before some moment in the last `within_ms`
    /// (before `now_ms`, on the cache's clock) has been applied. Looks at
    /// the queue at most once per `within_ms` while the answer is yes.
    pub fn confirmed(&self, now_ms: u64, within_ms: u64) -> bool {
        if !self.running.load(Ordering::SeqCst) || self.partial.load(Ordering::SeqCst) {
            return false;
        }
        if now_ms.saturating_sub(self.confirmed_ms.load(Ordering::Relaxed)) < within_ms {
            return true;
        }
        let Some(inotify) = self.inotify.get() else { return false };
        let before = self.busy.load(Ordering::SeqCst);
        if before % 2 == 1 || pending(inotify.as_fd()) != Some(0) || self.busy.load(Ordering::SeqCst) != before {
            return false;
        }
        self.confirmed_ms.fetch_max(now_ms, Ordering::Relaxed);
        true
    }
}

/// Bytes of events waiting in an inotify queue (`FIONREAD`).
fn pending(inotify: BorrowedFd<'_>) -> Option<libc::c_int> {
    let mut bytes: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which is valid.
    let rc = unsafe { libc::ioctl(inotify.as_raw_fd(), libc::FIONREAD, &mut bytes) };
    (rc == 0).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use inotify::{Inotify, WatchMask};

    #[test]
    fn an_event_waiting_or_being_applied_is_not_caught_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut inotify = Inotify::init().unwrap();
        inotify.watches().add(dir.path(), WatchMask::CREATE | WatchMask::MOVED_TO).unwrap();
        let caught = CaughtUp::default();
        assert!(!caught.confirmed(1000, 40), "no watcher attached yet");
        caught.attach(inotify.as_fd()).unwrap();
        assert!(caught.confirmed(1000, 40), "an empty queue and an idle watcher");
        assert!(caught.confirmed(1039, 40), "within the window, no new look");

        std::fs::write(dir.path().join("a.png"), b"x").unwrap();
        assert!(!caught.confirmed(1040, 40), "an event waits in the queue");
        caught.begin();
        let mut buffer = [0u8; 4096];
        assert!(inotify.read_events(&mut buffer).unwrap().count() > 0);
        assert!(!caught.confirmed(1041, 40), "read but not applied yet");
        caught.end();
        assert!(caught.confirmed(1042, 40), "applied, queue empty");

        caught.partial();
        assert!(!caught.confirmed(1043, 40), "a polled directory");
    }

    #[test]
    fn a_stopped_watcher_confirms_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let inotify = Inotify::init().unwrap();
        inotify.watches().add(dir.path(), WatchMask::CREATE).unwrap();
        let caught = CaughtUp::default();
        caught.attach(inotify.as_fd()).unwrap();
        caught.stopped();
        assert!(!caught.confirmed(5000, 40));
    }
}
