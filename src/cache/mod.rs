//! Descriptor cache: open file, length, validators and prepared header values
//! per path, bounded in number of open files, invalidated by the watcher.
//!
//! Freshness rests on two rules:
//! - the watcher calls [`DescriptorCache::invalidate`] for every path it hears
//!   about, before the catalog is touched;
//! - a miss that opened a file may only insert it if no invalidation happened
//!   since the miss began (the `epoch` check). Without it, a request that
//!   opened the old file just before a rename could insert that old
//!   descriptor after the watcher had already dropped it, and serve it until
//!   evicted.
//!
//! And a bound that does not depend on the watcher: an entry not checked
//! for `revalidate_after` (40 ms by default) is confirmed with one `stat` of
//! its path before use, so a watcher thread waiting for a core under load,
//! or a lost event, cannot keep an old file served for longer. That `stat`
//! walks the path from the root's own descriptor, as the open did, not from
//! `/`: a few path components instead of a dozen on every request.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::hash::BuildHasher;
use std::io;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::HeaderValue;
use lru::LruCache;
use parking_lot::Mutex;

mod entry;
mod memory;

use entry::{clock_ms, settles_ms, Samples};
pub use entry::{read_exact_at, shrank, FileEntry, ACKNOWLEDGED_FROM};
use memory::MemoryBudget;

use crate::config::{CacheSettings, EtagMode};
use crate::metrics::{DeliveryCounters, Metrics};
use crate::roots::{DeliveryPath, Root};
use crate::validators::Tag;

/// The cache is split in shards by key hash so that the driver's worker
/// threads rarely wait for each other (one lock showed as `sched_yield`
/// spinning in strace); each shard is an LRU of its share of the capacity.
const SHARDS: usize = 16;
/// Most paths remembered as written in place.
const REWRITTEN_MAX: usize = 1 << 16;

type Shard = Mutex<ShardInner>;

/// One shard: an LRU of entries, and for every directory above a cached
/// file, how many of the shard's files are below it. notify does not say
/// whether a renamed or deleted path was a directory; with these counts an
/// event for an uncached path costs one lookup per shard instead of a scan
/// of every entry (which, under a writer renaming tiles every few
/// milliseconds, held the locks long enough to stall requests and delay
/// later invalidations).
struct ShardInner {
    lru: LruCache<String, Arc<FileEntry>>,
    dirs: HashMap<String, u32, foldhash::fast::RandomState>,
}

impl ShardInner {
    /// Inserts under the shard's lock; returns how many entries it added (0 or 1).
    fn put(&mut self, key: String, entry: Arc<FileEntry>) -> usize {
        let added = key.clone();
        entry.cached.store(true, Ordering::Release);
        match self.lru.push(key, entry) {
            // The same key again: replaced in place, nothing to count.
            Some((old, previous)) if old == added => {
                previous.cached.store(false, Ordering::Release);
                0
            }
            Some((evicted, previous)) => {
                previous.cached.store(false, Ordering::Release);
                self.count_dirs(&evicted, false);
                self.count_dirs(&added, true);
                0
            }
            None => {
                self.count_dirs(&added, true);
                1
            }
        }
    }

    fn pop(&mut self, key: &str) -> bool {
        if let Some(entry) = self.lru.pop(key) {
            entry.cached.store(false, Ordering::Release);
            self.count_dirs(key, false);
            return true;
        }
        false
    }

    /// Removes every entry under directory `dir`; returns how many.
    fn pop_under(&mut self, dir: &str) -> usize {
        if !self.dirs.contains_key(dir) {
            return 0;
        }
        let under = |k: &str| k.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/'));
        let keys: Vec<String> = self.lru.iter().filter(|(k, _)| under(k)).map(|(k, _)| k.clone()).collect();
        for key in &keys {
            self.pop(key);
        }
        keys.len()
    }

    fn count_dirs(&mut self, key: &str, add: bool) {
        let mut end = key.len();
        while let Some(slash) = key[..end].rfind('/') {
            if slash == 0 {
                break;
            }
            let dir = &key[..slash];
            if add {
                // Look up before inserting: `entry` wants an owned key, an
                // allocation per ancestor on every miss (callgrind).
                match self.dirs.get_mut(dir) {
                    Some(n) => *n += 1,
                    None => {
                        self.dirs.insert(dir.to_string(), 1);
                    }
                }
            } else if let Some(n) = self.dirs.get_mut(dir) {
                *n -= 1;
                if *n == 0 {
                    self.dirs.remove(dir);
                }
            }
            end = slash;
        }
    }
}

pub struct DescriptorCache {
    /// Keyed by absolute path as a string: hashing a `str` is much cheaper
    /// than hashing a `Path` component by component (perf).
    shards: Vec<Shard>,
    /// Bumped by every invalidation, before it removes anything; a miss
    /// inserts only if it is unchanged (checked under the shard's lock).
    /// See the module comment.
    epoch: AtomicU64,
    /// Picks a key's shard (foldhash, seeded per process: SipHash was a
    /// visible part of a miss in callgrind).
    hasher: foldhash::fast::RandomState,
    revalidate_after: Duration,
    budget: Arc<MemoryBudget>,
    /// Delivery counters by root index.
    counters: Vec<Arc<DeliveryCounters>>,
    /// Paths seen written in place, as keys (see [`Self::mark_rewritten`]).
    rewritten: Mutex<HashSet<String, foldhash::fast::RandomState>>,
    metrics: Arc<Metrics>,
}

impl DescriptorCache {
    pub fn new(settings: &CacheSettings, roots: &[Root], metrics: Arc<Metrics>) -> DescriptorCache {
        // Never more than max_open_files in all: at most that many shards,
        // each holding the floor of its share.
        let shards = SHARDS.min(settings.max_open_files.max(1));
        let per_shard = NonZeroUsize::new((settings.max_open_files / shards).max(1)).expect("nonzero");
        let budget = MemoryBudget {
            used: AtomicU64::new(0),
            limit: settings.memory_budget,
            max_file: settings.memory_max_file,
            gauge: metrics.memory_bytes.clone(),
        };
        DescriptorCache {
            shards: (0..shards)
                .map(|_| Mutex::new(ShardInner { lru: LruCache::new(per_shard), dirs: HashMap::default() }))
                .collect(),
            epoch: AtomicU64::new(0),
            hasher: foldhash::fast::RandomState::default(),
            revalidate_after: settings.revalidate_after,
            budget: Arc::new(budget),
            counters: roots.iter().map(|r| Arc::new(metrics.delivery(&r.path().display().to_string()))).collect(),
            rewritten: Mutex::new(HashSet::default()),
            metrics,
        }
    }

    fn shard(&self, key: &str) -> &Shard {
        &self.shards[(self.hasher.hash_one(key) as usize) % self.shards.len()]
    }

    /// The file at `rel` in `root`, from the cache or freshly opened.
    /// Files on shared storage are always opened afresh and never cached.
    pub fn open(&self, root: &Root, rel: &str) -> io::Result<Arc<FileEntry>> {
        let key = root.key(rel);
        let cacheable = root.caches_descriptors(rel);
        if cacheable {
            if let Some(entry) = self.lookup(&key) {
                self.metrics.cache_hits.inc();
                return Ok(entry);
            }
        }
        self.metrics.cache_misses.inc();
        let epoch = self.epoch.load(Ordering::SeqCst);
        let file = root.open_file(rel)?;
        let entry = Arc::new(self.entry(root, rel, &key, file, cacheable)?);
        if cacheable {
            let mut shard = self.shard(&key).lock();
            if self.epoch.load(Ordering::SeqCst) == epoch {
                let added = shard.put(key, entry.clone());
                self.metrics.cache_open_files.add(added as i64);
            }
        }
        Ok(entry)
    }

    fn lookup(&self, key: &str) -> Option<Arc<FileEntry>> {
        let entry = self.shard(key).lock().lru.get(key).cloned()?;
        // Current by path (no rename over it) and by descriptor (no in-place
        // rewrite or truncation since its head values were taken).
        if entry.fresh() {
            return Some(entry);
        }
        tracing::debug!(path = key, "cached descriptor changed before its watcher event; dropped");
        if !entry.unchanged() {
            self.rewritten_under(&entry);
        }
        self.invalidate(Path::new(key));
        None
    }

    fn entry(&self, root: &Root, rel: &str, key: &str, file: File, cacheable: bool) -> io::Result<FileEntry> {
        let path = PathBuf::from(key);
        // Length and validators come from the descriptor that will be sent
        // (DESIGN.md decision 4), not from a separate stat of the path.
        // A log on local storage also gets samples of its bytes for the
        // final check (shared storage has none: see `holds_snapshot`); a
        // file rewritten in place can shrink between the two looks, which
        // are then taken again.
        let samples = root.kind() == crate::config::RootKind::Logs && cacheable;
        let mut attempts = 0;
        let (Tag { validators, etag, .. }, appended_to) = loop {
            let tag = Tag::of(&file, root.spec.etag == EtagMode::Content)?;
            match samples.then(|| Samples::take(&file, tag.validators.len)).transpose() {
                Ok(taken) => break (tag, taken),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && attempts < 3 => attempts += 1,
                Err(e) => return Err(e),
            }
        };
        // A file known to be written in place is copied, not sent by
        // reference, under 1 MiB: sendfile queues page references, and an
        // overwrite after the last check would change bytes still waiting in
        // the socket (one version's length with another's bytes). From 1 MiB
        // the sendfile path waits for the client's acknowledgments before
        // that check anyway.
        let delivery = match root.area(rel).delivery {
            DeliveryPath::Sendfile
                if cacheable && validators.len < ACKNOWLEDGED_FROM && self.rewritten.lock().contains(key) =>
            {
                DeliveryPath::Buffered
            }
            delivery => delivery,
        };
        let header = |s: &str| HeaderValue::from_str(s).map_err(io::Error::other);
        Ok(FileEntry {
            etag: header(&etag)?,
            last_modified: header(&httpdate::fmt_http_date(validators.modified()))?,
            content_type: HeaderValue::from_static(crate::mime::content_type(&path)),
            cache_control: header(root.cache_control_for(rel))?,
            root: root.index,
            root_dir: root.dir().clone(),
            rel_at: key.len() - rel.len(),
            delivery,
            counters: self.counters[root.index].clone(),
            sendfile_refused: AtomicBool::new(false),
            memory: OnceLock::new(),
            gzip: OnceLock::new(),
            budget: cacheable.then(|| self.budget.clone()),
            validators,
            file,
            path,
            checked_ms: AtomicU64::new(clock_ms()),
            cached: AtomicBool::new(false),
            replayable: cacheable && root.first_of_kind,
            local: cacheable,
            appended_to,
            revalidate_after_ms: self.revalidate_after.as_millis() as u64,
            settles_ms: if cacheable { settles_ms(validators.mtime_ns) } else { 0 },
        })
    }

    /// Remembers that `path` was written in place (the watcher saw
    /// `IN_MODIFY`), before its invalidation: entries opened for it from
    /// then on are copied, not sent by reference (see [`Self::entry`]). Only
    /// paths being served (in the cache) are remembered, so that the
    /// temporary files of a pipeline that publishes by rename, written once
    /// under ever new names, never fill the set. The set is bounded;
    /// starting afresh only loses the extra care for a while.
    pub fn mark_rewritten(&self, path: &Path) {
        let Some(key) = path.to_str() else { return };
        if self.shard(key).lock().lru.peek(key).is_some() {
            self.remember_rewritten(key);
        }
    }

    /// The descriptor of `entry` changed under a response or a lookup (its
    /// own `fstat` moved: an in-place write, not a rename). Remembered here
    /// too, since a request can see the change before the watcher does and
    /// take the entry out of the cache, where `mark_rewritten` looks.
    pub fn rewritten_under(&self, entry: &FileEntry) {
        if let (true, Some(key)) = (entry.local, entry.path.to_str()) {
            self.remember_rewritten(key);
        }
    }

    fn remember_rewritten(&self, key: &str) {
        let mut rewritten = self.rewritten.lock();
        if rewritten.contains(key) {
            return;
        }
        if rewritten.len() >= REWRITTEN_MAX {
            rewritten.clear();
        }
        rewritten.insert(key.to_owned());
    }

    /// Drops `path` and everything under it (a directory event covers its tree).
    pub fn invalidate(&self, path: &Path) {
        let prefix = path.to_string_lossy();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        // A file's own entry is the common case; only a miss can be a directory.
        if self.shard(&prefix).lock().pop(prefix.as_ref()) {
            self.dropped(1);
            return;
        }
        for shard in &self.shards {
            let n = shard.lock().pop_under(prefix.as_ref());
            self.dropped(n);
        }
    }

    /// Drops everything: after a watcher overflow nobody knows what changed.
    pub fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        for shard in &self.shards {
            let mut shard = shard.lock();
            self.dropped(shard.lru.len());
            for (_, entry) in shard.lru.iter() {
                entry.cached.store(false, Ordering::Release);
            }
            shard.lru.clear();
            shard.dirs.clear();
        }
    }

    fn dropped(&self, n: usize) {
        self.metrics.cache_invalidations.inc_by(n as u64);
        self.metrics.cache_open_files.sub(n as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard() -> ShardInner {
        ShardInner { lru: LruCache::new(NonZeroUsize::new(2).unwrap()), dirs: HashMap::default() }
    }

    /// A stand-in entry: the tests look only at keys and directory counts.
    fn entry() -> Arc<FileEntry> {
        let file = File::open("/proc/self/exe").unwrap();
        let validators = crate::validators::Validators::of(&file.metadata().unwrap());
        let metrics = Metrics::new();
        Arc::new(FileEntry {
            file,
            path: PathBuf::from("/x"),
            root: 0,
            root_dir: Arc::new(File::open("/").unwrap().into()),
            rel_at: 1,
            validators,
            etag: HeaderValue::from_static("\"e\""),
            last_modified: HeaderValue::from_static("x"),
            content_type: HeaderValue::from_static("x"),
            cache_control: HeaderValue::from_static("x"),
            delivery: DeliveryPath::Sendfile,
            counters: Arc::new(metrics.delivery("/r")),
            sendfile_refused: AtomicBool::new(false),
            memory: OnceLock::new(),
            gzip: OnceLock::new(),
            budget: None,
            checked_ms: AtomicU64::new(0),
            cached: AtomicBool::new(false),
            replayable: false,
            local: true,
            appended_to: None,
            revalidate_after_ms: 0,
            settles_ms: 0,
        })
    }

    #[test]
    fn directory_counts_follow_inserts_evictions_and_pops() {
        let mut s = shard();
        assert_eq!(s.put("/r/a/1.png".into(), entry()), 1);
        assert_eq!(s.put("/r/b/2.png".into(), entry()), 1);
        assert_eq!(s.dirs.get("/r"), Some(&2));
        assert_eq!(s.put("/r/a/1.png".into(), entry()), 0, "replacing a key adds nothing");
        assert_eq!(s.dirs.get("/r"), Some(&2));
        // Capacity 2: this evicts the least recently used, /r/b/2.png.
        assert_eq!(s.put("/r/c/3.png".into(), entry()), 0);
        assert!(!s.dirs.contains_key("/r/b"));
        assert_eq!(s.pop_under("/r/nothing"), 0);
        assert_eq!(s.pop_under("/r/a"), 1);
        assert!(s.pop("/r/c/3.png"));
        assert!(s.dirs.is_empty() && s.lru.is_empty());
    }
}
