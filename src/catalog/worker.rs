//! The catalog worker: one thread that owns the writer connection, runs the
//! start-up reconcile, then applies the watcher's changes in small batches.
//!
//! SQLite work is blocking, so it never runs on the async executor's threads
//! (DESIGN.md decision 6). Events are batched for a few milliseconds and
//! collapsed (a directory covers the paths under it), so a burst of writes
//! to one file becomes one reconcile of that file.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::{reconcile, ReconcileStats};
use crate::metrics::Metrics;
use crate::roots::Root;

/// Work for the catalog worker.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Job {
    /// Something changed at this absolute path in root `.0`.
    Path(usize, PathBuf),
    /// Nobody knows what changed in root `.0`: reconcile all of it.
    Rescan(usize),
    /// The time index of log `.1` (relative to root `.0`) was cut short by
    /// its read budget: read the next chunk.
    Index(usize, String),
}

const BATCH_WINDOW: Duration = Duration::from_millis(15);
const BATCH_MAX: usize = 10_000;
const RETRY_AFTER: Duration = Duration::from_secs(1);

pub struct Worker {
    pub conn: Connection,
    /// Where `conn`'s database lives, for the other connections.
    pub location: super::Location,
    pub roots: Arc<Vec<Root>>,
    /// Database id of each root, by root index.
    pub root_ids: Vec<i64>,
    pub metrics: Arc<Metrics>,
    /// Set once the start-up reconcile is done (`/readyz`).
    pub ready: Arc<AtomicBool>,
    /// Bumped after every reconcile that may have changed the catalog, so
    /// that readers can keep what they derived from it until it moves.
    pub generation: Arc<AtomicU64>,
    /// Bumped after a batch that changed rows of a tiles root: what the
    /// HTTP layer derives from tilesets (their list, replays of answers
    /// from archives) lasts until it moves, whatever the logs (or an
    /// MBTiles file's `-wal` beside its tiles) do.
    pub tiles_generation: Arc<AtomicU64>,
    /// Set by a reconcile that changed rows of a tiles root.
    pub tiles_changed: bool,
    /// Logs (root index, relative path) whose time index is unfinished.
    pub unfinished: BTreeSet<(usize, String)>,
    /// Failed continuations in a row, per log.
    pub index_failures: std::collections::HashMap<(usize, String), u32>,
    /// Told the paths each batch changed, by root kind: the caches in
    /// front hear of them through it (`invalidate`, wired by `server`).
    pub on_change: Option<ChangeListener>,
    /// Changed paths of the batch being applied, per root index, told to
    /// `on_change` once the generations moved.
    pub changed: std::collections::BTreeMap<usize, super::ReconcileStats>,
}

/// What the worker calls with the paths (relative to a root of the kind)
/// that a reconcile re-read or deleted. It must not block.
pub type ChangeListener = Box<dyn Fn(crate::config::RootKind, &[String]) + Send>;

/// A time index that fails this many continuations in a row waits for its
/// log's next change.
pub const INDEX_ATTEMPTS: u32 = 5;

impl Worker {
    /// Reconciles every root once, then serves jobs until every sender is gone.
    pub fn run(mut self, jobs: Receiver<Job>) {
        let started = Instant::now();
        let stats = self.reconcile_all();
        self.metrics.reconcile_rereads.inc_by(stats.rereads);
        tracing::info!(
            reread = stats.rereads,
            unchanged = stats.unchanged,
            removed = stats.deleted,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "catalog reconciled with the disk"
        );
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.tiles_generation.fetch_add(1, Ordering::AcqRel);
        self.tell_changes();
        self.ready.store(true, Ordering::Release);

        let mut retry: BTreeSet<Job> = BTreeSet::new();
        self.load_unfinished();
        let mut pending = self.take_unfinished();
        loop {
            // Unfinished indexes go on at once, one chunk of one log per
            // batch, so that the watcher's changes are never far behind.
            let wait = if !pending.is_empty() {
                Duration::ZERO
            } else if retry.is_empty() {
                Duration::from_secs(3600)
            } else {
                RETRY_AFTER
            };
            retry.extend(pending.pop_first());
            let mut batch: BTreeSet<Job> = std::mem::take(&mut retry);
            match jobs.recv_timeout(wait) {
                Ok(job) => {
                    batch.insert(job);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            let deadline = Instant::now() + BATCH_WINDOW;
            while batch.len() < BATCH_MAX {
                match jobs.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(job) => {
                        batch.insert(job);
                    }
                    Err(_) => break,
                }
            }
            // Whatever is already queued joins the batch: after an inotify
            // overflow the rescan is queued behind the ~16k events read before
            // it, and in one batch it makes their paths redundant (`apply`),
            // instead of waiting for them (a CI run under load took > 20 s).
            while let Ok(job) = jobs.try_recv() {
                batch.insert(job);
            }
            self.tiles_changed = false;
            retry = self.apply(batch);
            pending.append(&mut self.take_unfinished());
            self.generation.fetch_add(1, Ordering::AcqRel);
            if self.tiles_changed {
                self.tiles_generation.fetch_add(1, Ordering::AcqRel);
            }
            self.tell_changes();
        }
    }

    /// Tells `on_change` what the batch changed. Called only after the
    /// generations moved: a cache told of a change that then asks this node
    /// must get the new version (its TileJSON, its replays), not the old one
    /// it would keep until the TTL.
    fn tell_changes(&mut self) {
        let Some(listener) = &self.on_change else { return };
        for (index, stats) in std::mem::take(&mut self.changed) {
            listener(self.roots[index].kind(), &stats.changed);
        }
    }

    /// Reads every unfinished time index to its end (`tessera index`, which
    /// has nothing else to do), a failing one at most [`INDEX_ATTEMPTS`] times.
    pub fn finish_indexes(&mut self) {
        self.load_unfinished();
        while !self.unfinished.is_empty() {
            let batch: BTreeSet<Job> = self.take_unfinished();
            let failed = self.apply(batch);
            self.unfinished.extend(failed.into_iter().filter_map(|job| match job {
                Job::Index(index, rel) => Some((index, rel)),
                _ => None,
            }));
        }
    }

    /// Queues the logs whose index an earlier pass, in this process or an
    /// earlier one, left unfinished.
    fn load_unfinished(&mut self) {
        match super::timeindex::unfinished(&self.conn) {
            Ok(rows) => {
                for (root_id, rel) in rows {
                    if let Some(index) = self.root_ids.iter().position(|id| *id == root_id) {
                        self.unfinished.insert((index, rel));
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list unfinished time indexes"),
        }
    }

    /// The index jobs that the last reconciles and index passes left.
    fn take_unfinished(&mut self) -> BTreeSet<Job> {
        std::mem::take(&mut self.unfinished).into_iter().map(|(i, rel)| Job::Index(i, rel)).collect()
    }

    /// The time index's size, for `tessera index`.
    pub fn time_index_size(&self) -> rusqlite::Result<super::timeindex::Size> {
        super::timeindex::size(&self.conn)
    }

    /// Reconciles every root whole; returns the summed statistics.
    pub fn reconcile_all(&mut self) -> ReconcileStats {
        let mut total = ReconcileStats::default();
        for index in 0..self.roots.len() {
            match self.reconcile(index, "") {
                Ok(stats) => total.add(&stats),
                Err(e) => tracing::warn!(root = %self.roots[index].path().display(), error = %e, "reconcile failed"),
            }
        }
        total
    }

    fn reconcile(&mut self, index: usize, rel: &str) -> rusqlite::Result<ReconcileStats> {
        let root = &self.roots[index];
        let by_content = root.spec.etag == crate::config::EtagMode::Content;
        let stats = reconcile(&mut self.conn, self.root_ids[index], root.kind(), root.path(), rel, by_content)?;
        self.metrics.catalog_changes.inc_by(stats.changes());
        self.tiles_changed |= root.kind() == crate::config::RootKind::Tiles && stats.changes() > 0;
        self.unfinished.extend(stats.unfinished.iter().map(|rel| (index, rel.clone())));
        if self.on_change.is_some() && !stats.changed.is_empty() {
            let pending = self.changed.entry(index).or_default();
            for rel in &stats.changed {
                pending.note_change(rel);
            }
        }
        Ok(stats)
    }

    /// Applies one batch; returns the jobs that failed, to be retried.
    fn apply(&mut self, batch: BTreeSet<Job>) -> BTreeSet<Job> {
        let rescans: BTreeSet<usize> =
            batch.iter().filter_map(|j| if let Job::Rescan(i) = j { Some(*i) } else { None }).collect();
        // BTreeSet order puts a directory right before the paths under it,
        // so one pass drops every path already covered by an earlier one.
        let mut covered: Option<(usize, PathBuf)> = None;
        let mut failed = BTreeSet::new();
        for job in batch {
            let result = match &job {
                Job::Rescan(index) => {
                    tracing::warn!(root = %self.roots[*index].path().display(), "rescanning root");
                    self.reconcile(*index, "").map(|_| ()).map_err(anyhow::Error::from)
                }
                Job::Path(index, path) => {
                    if rescans.contains(index)
                        || covered.as_ref().is_some_and(|(i, c)| i == index && path.starts_with(c))
                    {
                        continue;
                    }
                    covered = Some((*index, path.clone()));
                    let Some(rel) = path.strip_prefix(self.roots[*index].path()).ok().and_then(|r| r.to_str()) else {
                        continue;
                    };
                    let rel = rel.to_string();
                    self.reconcile(*index, &rel).map(|_| ()).map_err(anyhow::Error::from)
                }
                Job::Index(index, rel) => {
                    let root = &self.roots[*index];
                    let result = super::timeindex::continue_log(&self.conn, self.root_ids[*index], root.path(), rel);
                    match result {
                        Ok(more) => {
                            self.index_failures.remove(&(*index, rel.clone()));
                            if more {
                                self.unfinished.insert((*index, rel.clone()));
                            }
                            Ok(())
                        }
                        // A log that keeps failing waits for its next change
                        // (or the next start) instead of being read every second.
                        Err(e) => {
                            let failures = self.index_failures.entry((*index, rel.clone())).or_default();
                            *failures += 1;
                            if *failures >= INDEX_ATTEMPTS {
                                self.index_failures.remove(&(*index, rel.clone()));
                                self.metrics.catalog_errors.inc();
                                tracing::warn!(rel, error = %e, "time index given up until the log changes");
                                continue;
                            }
                            Err(e)
                        }
                    }
                }
            };
            if let Err(e) = result {
                self.metrics.catalog_errors.inc();
                tracing::warn!(error = %e, ?job, "catalog update failed; will retry");
                failed.insert(job);
            }
        }
        failed
    }
}
