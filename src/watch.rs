//! Watch: notify watchers on every root. Each event first invalidates the
//! descriptor cache for its paths, right on the watcher's thread, and then
//! queues the paths for the catalog worker (DESIGN.md decision 7).
//!
//! The cache is invalidated before anything else so that freshness does not
//! wait for SQLite. A queue overflow or a watcher error clears the whole cache
//! and asks for a rescan of the root: after it nobody knows what changed.
//! Local roots use inotify; shared roots use polling, since changes made by
//! other machines never reach this kernel's inotify.

use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::Arc;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, EventKindMask, PollWatcher, RecommendedWatcher, RecursiveMode, Watcher};

use crate::cache::DescriptorCache;
use crate::catalog::worker::Job;
use crate::metrics::Metrics;
use crate::roots::{Root, WatcherKind};

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
                for path in event.paths {
                    self.cache.invalidate(&path);
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
pub fn start(roots: &[Root], cache: &Arc<DescriptorCache>, jobs: &Sender<Job>, metrics: &Arc<Metrics>) -> Watchers {
    let mut watchers: Vec<Box<dyn Watcher + Send>> = Vec::new();
    for root in roots {
        let sink = Sink {
            root: root.index,
            root_path: root.path().to_path_buf(),
            cache: cache.clone(),
            jobs: jobs.clone(),
            metrics: metrics.clone(),
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
            let config = notify::Config::default().with_event_kinds(kinds);
            let mut w = RecommendedWatcher::new(move |r| sink.handle(r), config)?;
            w.watch(root.path(), RecursiveMode::Recursive)?;
            tracing::debug!(root = %root.path().display(), "watching with inotify");
            Ok(Some(Box::new(w)))
        }
    }
}

fn poll_watcher(root: &Root, sink: Sink) -> notify::Result<Box<dyn Watcher + Send>> {
    let config = notify::Config::default().with_poll_interval(root.spec.poll_interval);
    let mut w = PollWatcher::new(move |r| sink.handle(r), config)?;
    w.watch(root.path(), RecursiveMode::Recursive)?;
    tracing::debug!(root = %root.path().display(), interval = ?root.spec.poll_interval, "watching by polling");
    Ok(Box::new(w))
}
