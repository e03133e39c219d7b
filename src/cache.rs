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
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::HeaderValue;
use bytes::Bytes;
use lru::LruCache;
use parking_lot::Mutex;
use prometheus::IntGauge;

use crate::config::CacheSettings;
use crate::metrics::{DeliveryCounters, Metrics};
use crate::roots::{DeliveryPath, Root};

/// What identifies one version of a file on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Validators {
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    pub mtime_ns: i128,
}

impl Validators {
    /// `statx` of `rel` below the directory `dir`, following symbolic links
    /// as `std::fs::metadata` does, and decoded as it decodes (so that the
    /// result compares equal with [`Validators::of`] for the same file).
    fn at(dir: &OwnedFd, rel: &[u8]) -> io::Result<Validators> {
        use nix::NixPath;
        // SAFETY: statx only writes the struct, which is plain data.
        let mut buf: libc::statx = unsafe { std::mem::zeroed() };
        // A stack copy with the NUL (nix's NixPath), no allocation.
        let rc = rel.with_nix_path(|path| {
            // SAFETY: `path` is NUL-terminated and outlives the call; `buf` is valid.
            unsafe { libc::statx(dir.as_raw_fd(), path.as_ptr(), 0, libc::STATX_BASIC_STATS, &mut buf) }
        })?;
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Validators {
            dev: libc::makedev(buf.stx_dev_major, buf.stx_dev_minor),
            ino: buf.stx_ino,
            len: buf.stx_size,
            mtime_ns: buf.stx_mtime.tv_sec as i128 * 1_000_000_000 + buf.stx_mtime.tv_nsec as i128,
        })
    }

    pub fn of(meta: &std::fs::Metadata) -> Validators {
        Validators {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        }
    }

    /// Strong ETag from what two appliances serving the same file share:
    /// modification time and length, never the inode (DESIGN.md decision 5).
    pub fn etag(&self) -> String {
        format!("\"{:x}-{:x}\"", self.mtime_ns, self.len)
    }

    pub fn modified(&self) -> SystemTime {
        if self.mtime_ns >= 0 {
            UNIX_EPOCH + Duration::from_nanos(self.mtime_ns as u64)
        } else {
            UNIX_EPOCH
        }
    }
}

/// One open file and everything needed to answer for it without another syscall.
#[derive(Debug)]
pub struct FileEntry {
    pub file: File,
    pub path: PathBuf,
    pub root: usize,
    /// The root's directory, and where in `path` the part below it starts:
    /// path checks walk from there.
    root_dir: Arc<OwnedFd>,
    rel_at: usize,
    pub validators: Validators,
    pub etag: HeaderValue,
    pub last_modified: HeaderValue,
    pub content_type: HeaderValue,
    pub cache_control: HeaderValue,
    /// The path this file's area allows (sendfile only on local storage).
    pub delivery: DeliveryPath,
    pub counters: Arc<DeliveryCounters>,
    /// Set once sendfile refused this file; it then goes the buffered way.
    pub sendfile_refused: AtomicBool,
    /// The whole content, for small files of cached areas; loaded on first use.
    memory: OnceLock<Option<Bytes>>,
    /// Whether the content is gzip-compressed; read on first need.
    gzip: OnceLock<bool>,
    budget: Option<Arc<MemoryBudget>>,
    /// Milliseconds on [`clock_ms`] when this entry was last known fresh.
    checked_ms: AtomicU64,
    /// True while the entry is in the descriptor cache: false once an
    /// invalidation, an eviction or a clear removed it (and for entries that
    /// were never cached). The driver replays responses only for such entries.
    pub cached: AtomicBool,
    /// Whether a response for this file may be replayed by the driver: the
    /// file is cacheable and its root is the first of its kind (no earlier
    /// root can come to shadow the same URL without an event for this file).
    pub replayable: bool,
    /// On local storage: reads come from the page cache or a local disk and
    /// are done inline; shared storage can block for long and is read on the
    /// blocking pool.
    pub local: bool,
    /// A log: growth by appends keeps an earlier snapshot valid, as long
    /// as these bytes of it are unchanged (see [`Self::holds_snapshot`]).
    appended_to: Option<Samples>,
    revalidate_after_ms: u64,
}

impl FileEntry {
    pub fn len(&self) -> u64 {
        self.validators.len
    }

    pub fn is_empty(&self) -> bool {
        self.validators.len == 0
    }

    /// Still the answer for its path: in the cache and checked recently enough.
    pub fn is_current(&self) -> bool {
        self.currency() != Currency::Stale
    }

    /// Fit to answer from: current for its path ([`Self::is_current`]) and
    /// its descriptor not rewritten in place ([`Self::unchanged`]), in one
    /// `stat` at most. When the path had to be `stat`ed and gave back the
    /// validators, the descriptor's `fstat` is skipped: the same device and
    /// inode with the same length and mtime is the same answer an `fstat` of
    /// that inode would give (strace: two `statx` per request before, the
    /// most frequent syscall of the tile path).
    pub fn fresh(&self) -> bool {
        match self.currency() {
            Currency::Stale => false,
            Currency::Confirmed => true,
            Currency::Recent => self.unchanged(),
        }
    }

    fn currency(&self) -> Currency {
        if !self.cached.load(Ordering::Acquire) {
            return Currency::Stale;
        }
        let now = clock_ms();
        if now.saturating_sub(self.checked_ms.load(Ordering::Relaxed)) < self.revalidate_after_ms {
            return Currency::Recent;
        }
        let rel = self.path.as_os_str().as_bytes().get(self.rel_at..).unwrap_or_default();
        match Validators::at(&self.root_dir, rel) {
            Ok(now_seen) if now_seen == self.validators => {
                self.checked_ms.store(now, Ordering::Relaxed);
                Currency::Confirmed
            }
            _ => Currency::Stale,
        }
    }

    /// Whether the open file still has the validators the response's head
    /// was written from (one `fstat`). An in-place rewrite or a truncation
    /// changes the length or the mtime; a rename over the path does not
    /// touch this descriptor (that is `is_current`'s part).
    pub fn unchanged(&self) -> bool {
        self.file.metadata().is_ok_and(|meta| Validators::of(&meta) == self.validators)
    }

    /// Whether the bytes the head describes are still the file's, checked
    /// before a body's last byte goes out. Strict ([`Self::unchanged`]) for
    /// tiles; for logs, which grow by appends, the same inode, not shorter,
    /// with the same sampled bytes ([`Samples`]): an append holds the
    /// snapshot, a truncation or a rewrite in place does not. Always true
    /// on shared storage (see below).
    pub fn holds_snapshot(&self) -> bool {
        // Shared storage is opened afresh for every request, and its
        // attributes come through client caches (NFS, FUSE) that can
        // disagree between two `fstat`s of one descriptor: no check there.
        if !self.local {
            return true;
        }
        let Some(samples) = &self.appended_to else { return self.unchanged() };
        let Ok(meta) = self.file.metadata() else { return false };
        let now = Validators::of(&meta);
        if now == self.validators {
            return true;
        }
        // Grown or touched: an append leaves the snapshot's bytes as they
        // were; a rewrite in place or a truncation followed by new lines
        // (`copytruncate`) changes the bytes sampled, unless it wrote the same ones.
        now.dev == self.validators.dev
            && now.ino == self.validators.ino
            && now.len >= self.validators.len
            && Samples::take(&self.file, self.validators.len).is_ok_and(|again| again == *samples)
    }

    /// Whether the file starts with the gzip magic bytes (read once).
    pub fn is_gzip(&self) -> bool {
        *self.gzip.get_or_init(|| {
            let mut magic = [0u8; 2];
            matches!(self.file.read_at(&mut magic, 0), Ok(2)) && magic == [0x1f, 0x8b]
        })
    }

    /// The file's bytes from memory, if it is small enough and the budget allows.
    pub fn memory(&self) -> Option<&Bytes> {
        self.memory.get_or_init(|| self.load()).as_ref()
    }

    fn load(&self) -> Option<Bytes> {
        let budget = self.budget.as_ref()?;
        let len = self.len();
        let charge = charge(len);
        if len > budget.max_file || !budget.reserve(charge) {
            return None;
        }
        match crate::delivery::read_exact_at(&self.file, 0, len as usize) {
            // Kept only if the file did not change during the read.
            Ok(bytes) if bytes.len() as u64 == len && self.unchanged() => {
                budget.gauge.add(charge as i64);
                Some(bytes)
            }
            // Shorter than its fstat: the file changed; the watcher is about to
            // drop this entry, and the file path will close the connection.
            _ => {
                budget.release(charge);
                None
            }
        }
    }
}

impl Drop for FileEntry {
    fn drop(&mut self) {
        if let (Some(Some(bytes)), Some(budget)) = (self.memory.get(), &self.budget) {
            let charge = charge(bytes.len() as u64);
            budget.release(charge);
            budget.gauge.sub(charge as i64);
        }
    }
}

/// A fingerprint of three blocks of a log version (its first, middle and last
/// 4 KiB), taken when its descriptor is opened: a log that grew keeps
/// answering for the version a response started with only while these
/// bytes stay the same. Appends never touch them; rewrites of logs (a
/// `copytruncate` rotation, a shell `>`, a re-upload in place) change
/// timestamps, and with them the first and last lines. Twelve KiB read
/// at open and at the end of a large body, never per byte sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Samples(u64);

impl Samples {
    const BLOCK: u64 = 4096;

    fn take(file: &File, len: u64) -> io::Result<Samples> {
        use std::hash::Hasher;
        // SipHash with fixed keys: the same bytes hash the same within the process.
        let mut hasher = std::hash::DefaultHasher::new();
        let block = Self::BLOCK.min(len);
        for at in [0, (len - block) / 2, len - block] {
            let bytes = crate::delivery::read_exact_at(file, at, block as usize)?;
            if bytes.len() as u64 != block {
                return Err(crate::delivery::shrank());
            }
            hasher.write(&bytes);
        }
        Ok(Samples(hasher.finish()))
    }
}

/// What a file of `len` bytes costs the memory budget: whole 4 KiB pages,
/// since the budget bounds resident memory, and an allocator keeps blocks of
/// a few KiB with slack (26 MiB of it over 64 MiB of tiles, in the benchmark).
fn charge(len: u64) -> u64 {
    len.div_ceil(4096) * 4096
}

/// The memory cache's budget, shared by every entry.
#[derive(Debug)]
pub struct MemoryBudget {
    used: AtomicU64,
    limit: u64,
    max_file: u64,
    gauge: IntGauge,
}

impl MemoryBudget {
    fn reserve(&self, n: u64) -> bool {
        let before = self.used.fetch_add(n, Ordering::AcqRel);
        if before + n > self.limit {
            self.used.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        true
    }

    fn release(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

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
        let validators = Validators::of(&file.metadata()?);
        // A file known to be written in place is copied, not sent by
        // reference, under 1 MiB: sendfile queues page references, and an
        // overwrite after the last check would change bytes still waiting in
        // the socket (one version's length with another's bytes). From 1 MiB
        // the sendfile path waits for the client's acknowledgments before
        // that check anyway.
        let delivery = match root.area(rel).delivery {
            DeliveryPath::Sendfile
                if cacheable
                    && validators.len < crate::delivery::sendfile::DRAIN_FROM
                    && self.rewritten.lock().contains(key) =>
            {
                DeliveryPath::Buffered
            }
            delivery => delivery,
        };
        // Shared storage has no final check (see `holds_snapshot`).
        let appended_to = match root.kind() == crate::config::RootKind::Logs && cacheable {
            true => Some(Samples::take(&file, validators.len)?),
            false => None,
        };
        let header = |s: &str| HeaderValue::from_str(s).map_err(io::Error::other);
        Ok(FileEntry {
            etag: header(&validators.etag())?,
            last_modified: header(&httpdate::fmt_http_date(validators.modified()))?,
            content_type: HeaderValue::from_static(content_type(&path)),
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

/// How [`FileEntry::currency`] found an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Currency {
    /// Out of the cache, or its path now names another version.
    Stale,
    /// Checked by another request within `revalidate_after`.
    Recent,
    /// Its path was `stat`ed just now and still has its validators.
    Confirmed,
}

/// Milliseconds since the first call: the clock of `checked_ms`.
fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// The media type for a stored file, by extension.
pub fn content_type(path: &Path) -> &'static str {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    content_type_of_ext(&name.rsplit('.').next().unwrap_or("").to_ascii_lowercase())
}

/// The Content-Type for a lowercase file extension (or a tileset's format).
pub fn content_type_of_ext(ext: &str) -> &'static str {
    match ext {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "pbf" | "mvt" => "application/x-protobuf",
        "json" => "application/json",
        "jsonl" | "ndjson" => "application/x-ndjson",
        "csv" => "text/csv; charset=utf-8",
        "log" | "txt" => "text/plain; charset=utf-8",
        "gz" => "application/gzip",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The root-relative check decodes `statx` as std does: for the same
    /// file it equals the descriptor's validators (else every path check
    /// would call a current file stale), through a symlink too.
    #[test]
    fn validators_at_a_relative_path_match_the_descriptors() {
        let dir = std::env::temp_dir().join(format!("tessera-validators-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/b/t.png"), b"tile").unwrap();
        let _ = std::os::unix::fs::symlink("b/t.png", dir.join("a/link.png"));
        let root: OwnedFd = File::open(&dir).unwrap().into();
        let of = Validators::of(&File::open(dir.join("a/b/t.png")).unwrap().metadata().unwrap());
        assert_eq!(Validators::at(&root, b"a/b/t.png").unwrap(), of);
        assert_eq!(Validators::at(&root, b"a/link.png").unwrap(), of, "symlinks are followed");
        assert!(Validators::at(&root, b"a/b/none.png").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn shard() -> ShardInner {
        ShardInner { lru: LruCache::new(NonZeroUsize::new(2).unwrap()), dirs: HashMap::default() }
    }

    /// A stand-in entry: the tests look only at keys and directory counts.
    fn entry() -> Arc<FileEntry> {
        let file = File::open("/proc/self/exe").unwrap();
        let validators = Validators::of(&file.metadata().unwrap());
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
