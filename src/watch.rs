//! Watch: notify watchers on every root. Each event first invalidates the
//! descriptor cache for its paths, right on the watcher's thread, and then
//! queues the paths for the catalog worker (DESIGN.md decision 7).
//!
//! The cache is invalidated before anything else so that freshness does not
//! wait for SQLite. A queue overflow or a watcher error clears the whole cache
//! and asks for a rescan of the root: after it nobody knows what changed.
//! Local roots use inotify; shared roots use polling, since changes made by
//! other machines never reach this kernel's inotify.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::sync::Notify;

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{Event, EventKind, EventKindMask, PollWatcher, RecommendedWatcher, RecursiveMode, Watcher};

use crate::cache::DescriptorCache;
use crate::catalog::worker::Job;
use crate::metrics::Metrics;
use crate::roots::{Root, WatcherKind};

/// Wake-ups for follow-mode downloads (`?follow`), by absolute path: a
/// follower waits on its path's `Notify`, and every watcher event for that
/// path (an append, a rename over it, a removal) wakes it. Paths nobody
/// follows cost one map lookup per event.
#[derive(Default)]
pub struct Followers {
    waiting: Mutex<HashMap<PathBuf, Weak<Notify>>>,
}

impl Followers {
    /// The `Notify` for `path`; held by the follower for as long as it follows.
    pub fn subscribe(&self, path: &Path) -> Arc<Notify> {
        let mut waiting = self.waiting.lock();
        if let Some(notify) = waiting.get(path).and_then(Weak::upgrade) {
            return notify;
        }
        waiting.retain(|_, w| w.strong_count() > 0);
        let notify = Arc::new(Notify::new());
        waiting.insert(path.to_path_buf(), Arc::downgrade(&notify));
        notify
    }

    fn wake(&self, path: &Path) {
        let waiting = self.waiting.lock();
        if waiting.is_empty() {
            return;
        }
        if let Some(notify) = waiting.get(path).and_then(Weak::upgrade) {
            notify.notify_waiters();
        }
    }

    /// After an overflow nobody knows which path changed: wake everyone.
    fn wake_all(&self) {
        for notify in self.waiting.lock().values().filter_map(Weak::upgrade) {
            notify.notify_waiters();
        }
    }
}

/// The running watchers; dropping this stops them.
pub struct Watchers {
    _watchers: Vec<Box<dyn Watcher + Send>>,
}

/// What every watcher's callback needs.
#[derive(Clone)]
struct Sink {
    root: usize,
    root_path: PathBuf,
    cache: Arc<DescriptorCache>,
    jobs: Sender<Job>,
    metrics: Arc<Metrics>,
    followers: Arc<Followers>,
}

impl Sink {
    fn handle(&self, result: notify::Result<Event>) {
        match result {
            Ok(event) if event.need_rescan() => {
                tracing::warn!(root = %self.root_path.display(), "watcher queue overflowed; rescanning");
                self.rescan();
            }
            Ok(event) => {
                if !changes_content(&event.kind) {
                    return;
                }
                self.metrics.watch_events.inc();
                let in_place = matches!(event.kind, EventKind::Modify(ModifyKind::Data(_)));
                for path in event.paths {
                    if in_place {
                        self.cache.mark_rewritten(&path);
                    }
                    self.cache.invalidate(&path);
                    self.followers.wake(&path);
                    let _ = self.jobs.send(Job::Path(self.root, path));
                }
            }
            Err(e) => {
                tracing::warn!(root = %self.root_path.display(), error = %e, "watcher error; rescanning");
                self.rescan();
            }
        }
    }

    fn rescan(&self) {
        self.metrics.watch_events.inc();
        self.metrics.rescans.inc();
        self.cache.clear();
        self.followers.wake_all();
        let _ = self.jobs.send(Job::Rescan(self.root));
    }
}

/// Whether an event can mean different bytes, a different length or a
/// different set of files. Opens and reads (ours included) cannot.
fn changes_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Starts one watcher per root according to its [`WatcherKind`].
pub fn start(
    roots: &[Root],
    cache: &Arc<DescriptorCache>,
    jobs: &Sender<Job>,
    metrics: &Arc<Metrics>,
    followers: &Arc<Followers>,
) -> Watchers {
    let mut watchers: Vec<Box<dyn Watcher + Send>> = Vec::new();
    for root in roots {
        let sink = Sink {
            root: root.index,
            root_path: root.path().to_path_buf(),
            cache: cache.clone(),
            jobs: jobs.clone(),
            metrics: metrics.clone(),
            followers: followers.clone(),
        };
        match start_one(root, sink.clone()) {
            Ok(Some(w)) => watchers.push(w),
            Ok(None) => {}
            Err(e) if root.watcher == WatcherKind::Inotify => {
                // Typically the inotify watch limit: polling still keeps us fresh.
                tracing::warn!(root = %root.path().display(), error = %e, "inotify unavailable; falling back to polling");
                match poll_watcher(root, sink) {
                    Ok(w) => watchers.push(w),
                    Err(e) => tracing::warn!(root = %root.path().display(), error = %e, "cannot watch root"),
                }
            }
            Err(e) => tracing::warn!(root = %root.path().display(), error = %e, "cannot watch root"),
        }
    }
    Watchers { _watchers: watchers }
}

fn start_one(root: &Root, sink: Sink) -> notify::Result<Option<Box<dyn Watcher + Send>>> {
    match root.watcher {
        WatcherKind::Off => Ok(None),
        WatcherKind::Poll => poll_watcher(root, sink).map(Some),
        WatcherKind::Inotify => {
            // Only events that can change content or the set of files, filtered
            // in the kernel: inotify would otherwise wake this thread for
            // every open of a file, tessera's own included.
            let kinds = EventKindMask::CORE | EventKindMask::ACCESS_CLOSE;
            // Never through symbolic links: a link inside a root may point
            // anywhere, and nothing behind one is served or indexed.
            let config = notify::Config::default().with_event_kinds(kinds).with_follow_symlinks(false);
            let mut w = RecommendedWatcher::new(move |r| sink.handle(r), config)?;
            w.watch(root.path(), RecursiveMode::Recursive)?;
            tracing::debug!(root = %root.path().display(), "watching with inotify");
            Ok(Some(Box::new(w)))
        }
    }
}

fn poll_watcher(root: &Root, sink: Sink) -> notify::Result<Box<dyn Watcher + Send>> {
    let config = notify::Config::default().with_poll_interval(root.spec.poll_interval).with_follow_symlinks(false);
    let mut w = PollWatcher::new(move |r| sink.handle(r), config)?;
    w.watch(root.path(), RecursiveMode::Recursive)?;
    tracing::debug!(root = %root.path().display(), interval = ?root.spec.poll_interval, "watching by polling");
    Ok(Box::new(w))
}
