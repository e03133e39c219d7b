//! The watcher of a local root: one non-recursive inotify watch per
//! directory, so that tessera knows exactly which directories are watched,
//! and polling for the directories inotify refuses (the watch limit).
//!
//! One thread per root owns everything: the inotify descriptor, the map
//! from watch descriptor to directory, and the polled directories. It
//! waits on inotify and, while some directories are polled, wakes every
//! `poll_interval` to list them ([`super::poll`]) and to try inotify again
//! for them, so they move back to inotify once watches are free.
//!
//! A new directory (made, or moved in) is watched, then listed, and its
//! subdirectories the same way down the tree; its path is queued after its
//! watch is in place, so files written into it before that are found by the
//! catalog's reconcile of the directory. A directory moved away or removed
//! loses its watches and polled listings, and its new name (if inside the
//! root) is added as a new directory. Hidden names get no watch, and
//! symbolic links are never followed (`IN_DONT_FOLLOW`, `IN_ONLYDIR`, and
//! listings that `lstat`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::OsStr;
use std::io;
use std::ops::Bound;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use prometheus::IntGauge;

use super::limit::WatchLimit;
use super::poll::{self, Change, Polled};
use super::Sink;
use crate::names::is_hidden_name;
use crate::roots::Root;

/// Events that can mean different bytes, a different length or a different
/// set of files, filtered in the kernel: opens and reads (tessera's own
/// included) never wake the thread. The watch is on the directory itself,
/// never through a symbolic link, and stops reporting for a file once it
/// is unlinked.
const MASK: WatchMask = WatchMask::MODIFY
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::CREATE)
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::ONLYDIR)
    .union(WatchMask::DONT_FOLLOW)
    .union(WatchMask::EXCL_UNLINK);

/// The root also reports its own removal or move (its subdirectories'
/// are reported by their parents).
const ROOT_MASK: WatchMask = MASK.union(WatchMask::DELETE_SELF).union(WatchMask::MOVE_SELF);

/// Events that name a change to report.
const CHANGES: EventMask = EventMask::MODIFY
    .union(EventMask::CLOSE_WRITE)
    .union(EventMask::CREATE)
    .union(EventMask::DELETE)
    .union(EventMask::MOVED_FROM)
    .union(EventMask::MOVED_TO)
    .union(EventMask::ATTRIB)
    .union(EventMask::DELETE_SELF)
    .union(EventMask::MOVE_SELF)
    .union(EventMask::UNMOUNT);

/// A running tree watcher; dropping it stops and joins its thread.
pub struct Running {
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Watches `root`'s directories (before returning, so that a change made
/// during the start-up reconcile is seen) and starts the thread that keeps
/// them watched. Fails only if inotify itself cannot be had (the limit on
/// inotify instances) or the thread cannot start.
pub fn start(root: &Root, sink: Sink, gauge: IntGauge) -> io::Result<Running> {
    let mut tree = Tree {
        root: root.path().to_path_buf(),
        inotify: Inotify::init()?,
        sink,
        interval: root.spec.poll_interval,
        by_path: BTreeMap::new(),
        by_wd: HashMap::new(),
        polled: Polled::default(),
        gauge,
        polling: false,
        moved: BTreeSet::new(),
    };
    tree.add_tree(tree.root.clone());
    tree.note_polled();
    tracing::debug!(
        root = %tree.root.display(),
        watched = tree.by_path.len(),
        polled = tree.polled.len(),
        "watching with inotify"
    );
    let stop = Arc::new(EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?);
    let thread = std::thread::Builder::new().name(format!("watch-{}", root.index)).spawn({
        let stop = stop.clone();
        move || tree.run(&stop)
    })?;
    Ok(Running { stop, thread: Some(thread) })
}

struct Tree {
    root: PathBuf,
    inotify: Inotify,
    sink: Sink,
    interval: std::time::Duration,
    /// Watched directories and their watch descriptors, both ways.
    by_path: BTreeMap<PathBuf, WatchDescriptor>,
    by_wd: HashMap<WatchDescriptor, PathBuf>,
    /// Directories inotify refused, listed every `interval` instead.
    polled: Polled,
    /// `tessera_watch_unwatched_directories` of this root.
    gauge: IntGauge,
    /// Polling began and has not ended (one warning when it begins).
    polling: bool,
    /// Directory names a move touched in the batch of events being read;
    /// see [`Tree::settle_moves`].
    moved: BTreeSet<PathBuf>,
}

/// The kernel refused a watch for want of watches (or of kernel memory):
/// the directory is polled instead.
fn refused(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::ENOMEM))
}

/// The path is no longer a directory: nothing to watch; its parent's
/// watch or poll reports what took its place.
fn gone(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

/// The subdirectories of `dir` that are not hidden (not through links:
/// the entry's own type).
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter(|e| !is_hidden_name(&e.file_name()) && e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

impl Tree {
    fn run(mut self, stop: &EventFd) {
        let mut buffer = vec![0u8; 64 * 1024];
        let mut next_round = Instant::now() + self.interval;
        loop {
            let timeout = if self.polled.is_empty() {
                PollTimeout::NONE
            } else {
                // Rounded up, so that the wait does not end just short of the round.
                let left = next_round.saturating_duration_since(Instant::now()) + Duration::from_micros(999);
                PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)
            };
            let (events, stopped) = {
                let mut fds = [
                    PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN),
                    PollFd::new(stop.as_fd(), PollFlags::POLLIN),
                ];
                match poll(&mut fds, timeout) {
                    Ok(_) => (fds[0].any() == Some(true), fds[1].any() == Some(true)),
                    Err(Errno::EINTR) => (false, false),
                    Err(e) => {
                        tracing::error!(root = %self.root.display(), error = %e, "watcher stopped: cannot wait for events");
                        return;
                    }
                }
            };
            if stopped {
                return;
            }
            if events {
                self.read_events(&mut buffer);
            }
            if self.polled.is_empty() {
                next_round = Instant::now() + self.interval;
            } else if Instant::now() >= next_round {
                self.poll_round();
                next_round = Instant::now() + self.interval;
            }
        }
    }

    /// Handles every event queued.
    fn read_events(&mut self, buffer: &mut [u8]) {
        loop {
            let events = match self.inotify.read_events(buffer) {
                Ok(events) => events,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.settle_moves();
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(root = %self.root.display(), error = %e, "watcher error; rescanning");
                    self.sink.rescan();
                    return;
                }
            };
            for event in events {
                self.on_event(&event.wd, event.mask, event.name);
            }
        }
    }

    fn on_event(&mut self, wd: &WatchDescriptor, mask: EventMask, name: Option<&OsStr>) {
        if mask.contains(EventMask::Q_OVERFLOW) {
            tracing::warn!(root = %self.root.display(), "watcher queue overflowed; rescanning");
            self.sink.rescan();
            self.resync();
            return;
        }
        if mask.contains(EventMask::IGNORED) {
            self.dropped(wd);
            return;
        }
        // None: a watch removed since the event was queued, whose directory
        // was forgotten (moved away or removed) and reported then.
        let Some(dir) = self.by_wd.get(wd) else { return };
        let path = match name {
            Some(name) => dir.join(name),
            None => dir.clone(),
        };
        if mask.intersects(CHANGES) {
            self.sink.metrics.watch_events.inc();
            self.sink.changed(&path, mask.contains(EventMask::MODIFY));
        }
        let Some(name) = name else { return };
        if !mask.contains(EventMask::ISDIR) || is_hidden_name(name) {
            return;
        }
        if mask.intersects(EventMask::MOVED_FROM | EventMask::MOVED_TO) {
            self.moved.insert(path);
        } else if mask.contains(EventMask::CREATE) {
            self.new_dir(path);
        } else if mask.contains(EventMask::DELETE) {
            self.forget(&path);
        }
        self.note_polled();
    }

    /// Settles the directory moves of the batch just read, once the queue is
    /// empty. A watch follows its directory, not its name, and a move is
    /// several events (`MOVED_FROM`, `MOVED_TO`, then `IGNORED` for a
    /// directory renamed over; two pairs for a `RENAME_EXCHANGE`), so names
    /// mapped event by event can end on the wrong watch or on none. Each
    /// name a move touched is forgotten with everything below it and, if a
    /// directory is there now, watched again down its tree and queued, so
    /// the catalog reconciles it whole (events of the batch that named the
    /// old places are covered by that).
    fn settle_moves(&mut self) {
        if self.moved.is_empty() {
            return;
        }
        let moved = std::mem::take(&mut self.moved);
        for path in &moved {
            self.forget(path);
        }
        for path in moved {
            if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                self.new_dir(path);
            }
        }
        self.note_polled();
    }

    /// A directory new under `path`: watched (or polled) down its tree, then
    /// queued again, so that what was written into it before its watch is
    /// reconciled.
    fn new_dir(&mut self, path: PathBuf) {
        self.add_tree(path.clone());
        self.sink.changed(&path, false);
    }

    /// Watches (or polls) `top` and every directory below it not yet known.
    /// Each directory is listed only once its watch is in place or its
    /// listing kept for polling, so a subdirectory made meanwhile is either
    /// in that listing or reported by an event.
    fn add_tree(&mut self, top: PathBuf) {
        let mut stack = vec![top];
        while let Some(dir) = stack.pop() {
            if self.by_path.contains_key(&dir) || self.polled.contains(&dir) {
                continue;
            }
            stack.extend(self.add_dir(dir).unwrap_or_default());
        }
    }

    /// Watches `dir`, or polls it if inotify refuses; returns its
    /// subdirectories, or None if it is neither watched nor polled.
    fn add_dir(&mut self, dir: PathBuf) -> Option<Vec<PathBuf>> {
        match self.watch(&dir) {
            Ok(()) => Some(subdirs(&dir)),
            Err(e) if refused(&e) => {
                let listing = poll::list(&dir).ok()?;
                let children = listing.iter().filter(|(_, s)| s.is_dir()).map(|(n, _)| dir.join(n)).collect();
                self.polled.insert(dir, listing);
                Some(children)
            }
            Err(e) if gone(&e) => None,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory");
                None
            }
        }
    }

    /// Adds (or renews) the watch of `dir`.
    fn watch(&mut self, dir: &Path) -> io::Result<()> {
        let mask = if dir == self.root { ROOT_MASK } else { MASK };
        let wd = self.inotify.watches().add(dir, mask)?;
        // The same directory known under another name (moved, its old name
        // not forgotten yet): the new name is the true one.
        if let Some(previous) = self.by_wd.insert(wd.clone(), dir.to_path_buf()) {
            if previous != dir {
                self.by_path.remove(&previous);
            }
        }
        // Another directory under this name before (replaced while events
        // were lost): its watch goes.
        if let Some(old) = self.by_path.insert(dir.to_path_buf(), wd.clone()) {
            if old != wd && self.by_wd.get(&old).is_some_and(|p| p == dir) {
                self.by_wd.remove(&old);
                let _ = self.inotify.watches().remove(old);
            }
        }
        Ok(())
    }

    /// The kernel dropped a watch (its directory was removed, or its
    /// filesystem unmounted).
    fn dropped(&mut self, wd: &WatchDescriptor) {
        if let Some(path) = self.by_wd.remove(wd) {
            if self.by_path.get(&path) == Some(wd) {
                self.by_path.remove(&path);
            }
        }
    }

    /// Drops the watches and listings of `top` and everything below it: it
    /// was removed or moved away.
    fn forget(&mut self, top: &Path) {
        let below: Vec<PathBuf> = self
            .by_path
            .range::<Path, _>((Bound::Included(top), Bound::Unbounded))
            .take_while(|(path, _)| path.starts_with(top))
            .map(|(path, _)| path.clone())
            .collect();
        for path in below {
            self.unwatch(&path);
        }
        self.polled.forget(top);
    }

    fn unwatch(&mut self, path: &Path) {
        if let Some(wd) = self.by_path.remove(path) {
            // A descriptor now known under another name stays.
            if self.by_wd.get(&wd).is_some_and(|p| p == path) {
                self.by_wd.remove(&wd);
                // A removed directory's watch is already gone (EINVAL).
                let _ = self.inotify.watches().remove(wd);
            }
        }
    }

    /// After a queue overflow, events were lost, directories made or removed
    /// among them: walk the tree again, watch what has no watch, and drop
    /// what is no longer there. One system call per directory.
    fn resync(&mut self) {
        let mut seen = HashSet::new();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let children = if self.polled.contains(&dir) { Some(subdirs(&dir)) } else { self.add_dir(dir.clone()) };
            if let Some(children) = children {
                seen.insert(dir);
                stack.extend(children);
            }
        }
        let stale: Vec<PathBuf> = self.by_path.keys().filter(|p| !seen.contains(*p)).cloned().collect();
        for path in stale {
            self.unwatch(&path);
        }
        for dir in self.polled.dirs() {
            if !seen.contains(&dir) {
                self.polled.remove(&dir);
            }
        }
        self.note_polled();
    }

    /// Tries inotify again for the polled directories, then lists the rest
    /// and reports what changed.
    fn poll_round(&mut self) {
        self.upgrade();
        for dir in self.polled.dirs() {
            if !self.polled.contains(&dir) {
                continue; // forgotten earlier in this round
            }
            match self.polled.relist(&dir) {
                Ok(changes) => self.report(&dir, changes),
                Err(e) if gone(&e) => self.forget(&dir),
                Err(e) => tracing::debug!(dir = %dir.display(), error = %e, "cannot list polled directory"),
            }
        }
        self.note_polled();
    }

    /// Moves polled directories back to inotify, parents first, until the
    /// kernel refuses one: while the limit holds, a round costs one refused
    /// system call. A directory that gets its watch is listed once more
    /// (what changed since the last round is reported, new subdirectories
    /// are added) and queued, so nothing between the last round and the
    /// watch is lost.
    fn upgrade(&mut self) {
        for dir in self.polled.dirs() {
            if !self.polled.contains(&dir) {
                continue;
            }
            match self.watch(&dir) {
                Ok(()) => {
                    if let Ok(changes) = self.polled.relist(&dir) {
                        self.report(&dir, changes);
                    }
                    self.polled.remove(&dir);
                    self.sink.changed(&dir, false);
                }
                Err(e) if gone(&e) => self.forget(&dir),
                Err(_) => break,
            }
        }
    }

    /// Reports the changes a listing of polled `dir` found.
    fn report(&mut self, dir: &Path, changes: Vec<Change>) {
        for change in changes {
            let path = dir.join(&change.name);
            self.sink.metrics.watch_events.inc();
            self.sink.changed(&path, change.in_place());
            if change.dir_gone() {
                self.forget(&path);
            }
            if change.dir_new() {
                self.new_dir(path);
            }
        }
    }

    /// Updates the gauge; warns once when polling begins, and says when every
    /// directory is back on inotify.
    fn note_polled(&mut self) {
        let polled = self.polled.len();
        self.gauge.set(polled as i64);
        if polled > 0 && !self.polling {
            self.polling = true;
            let needed = (self.by_path.len() + polled) as u64;
            let (limit, advice) = match WatchLimit::read() {
                Some(limit) => (limit.to_string(), limit.advice(needed)),
                None => ("unknown".to_string(), "raise fs.inotify.max_user_watches".to_string()),
            };
            tracing::warn!(
                root = %self.root.display(),
                polled,
                interval_ms = self.interval.as_millis() as u64,
                "inotify watch limit reached, {limit}: directories of this root that get no watch are polled \
                 every {} ms instead until watches are free; {advice}",
                self.interval.as_millis()
            );
        } else if polled == 0 && self.polling {
            self.polling = false;
            tracing::info!(root = %self.root.display(), "every directory of the root is watched by inotify again");
        }
    }
}
