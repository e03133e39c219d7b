//! Watch: a watcher on every root. Each event first invalidates the
//! descriptor cache for its paths, right on the watcher's thread, and then
//! queues the paths for the catalog worker (DESIGN.md decision 7).
//!
//! The cache is invalidated before anything else so that freshness does not
//! wait for SQLite. A queue overflow or a watcher error clears the whole cache
//! and asks for a rescan of the root: after it nobody knows what changed.
//! Local roots use inotify, one watch per directory ([`tree`]), with the
//! directories past the watch limit polled instead ([`poll`]); shared roots
//! use notify's polling over the whole root, since changes made by other
//! machines never reach this kernel's inotify.

pub mod limit;
mod poll;
mod tree;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::sync::Notify;

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{Event, EventKind, PollWatcher, RecursiveMode, Watcher};

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
    _polling: Vec<Box<dyn Watcher + Send>>,
    _trees: Vec<tree::Running>,
}

/// What every watcher reports to.
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
    /// An event of notify's poll watcher (shared roots).
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
                for path in &event.paths {
                    self.changed(path, in_place);
                }
            }
            Err(e) => {
                tracing::warn!(root = %self.root_path.display(), error = %e, "watcher error; rescanning");
                self.rescan();
            }
        }
    }

    /// Something changed at `path` (`in_place`: a file's bytes were written
    /// where they are): invalidate, wake its followers, queue it.
    fn changed(&self, path: &Path, in_place: bool) {
        if in_place {
            self.cache.mark_rewritten(path);
        }
        self.cache.invalidate(path);
        self.followers.wake(path);
        let _ = self.jobs.send(Job::Path(self.root, path.to_path_buf()));
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
    let mut watchers = Watchers { _polling: Vec::new(), _trees: Vec::new() };
    for root in roots {
        let sink = Sink {
            root: root.index,
            root_path: root.path().to_path_buf(),
            cache: cache.clone(),
            jobs: jobs.clone(),
            metrics: metrics.clone(),
            followers: followers.clone(),
        };
        match root.watcher {
            WatcherKind::Off => {}
            WatcherKind::Poll => watchers.poll(root, sink),
            WatcherKind::Inotify => {
                let gauge = metrics.unwatched_dirs.with_label_values(&[&root.path().display().to_string()]);
                match tree::start(root, sink.clone(), gauge) {
                    Ok(tree) => watchers._trees.push(tree),
                    Err(e) => {
                        // No inotify instance (fs.inotify.max_user_instances)
                        // or no thread: polling still keeps us fresh.
                        tracing::warn!(root = %root.path().display(), error = %e, "inotify unavailable; falling back to polling");
                        watchers.poll(root, sink);
                    }
                }
            }
        }
    }
    watchers
}

impl Watchers {
    fn poll(&mut self, root: &Root, sink: Sink) {
        match poll_watcher(root, sink) {
            Ok(w) => self._polling.push(w),
            Err(e) => tracing::warn!(root = %root.path().display(), error = %e, "cannot watch root"),
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
