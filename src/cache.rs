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
//! As a safety net against a lost event, an entry older than
//! `revalidate_after` is compared with one `stat` of its path before use.

use std::fs::File;
use std::io;
use std::num::NonZeroUsize;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::HeaderValue;
use lru::LruCache;
use parking_lot::Mutex;

use crate::metrics::Metrics;
use crate::roots::Root;

/// What identifies one version of a file on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validators {
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    pub mtime_ns: i128,
}

impl Validators {
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
    pub validators: Validators,
    pub etag: HeaderValue,
    pub last_modified: HeaderValue,
    pub content_type: HeaderValue,
    pub cache_control: HeaderValue,
    /// Milliseconds since the cache's start when this entry was last known fresh.
    checked_ms: AtomicU64,
}

impl FileEntry {
    pub fn len(&self) -> u64 {
        self.validators.len
    }

    pub fn is_empty(&self) -> bool {
        self.validators.len == 0
    }
}

struct Inner {
    lru: LruCache<PathBuf, Arc<FileEntry>>,
    /// Bumped by every invalidation; see the module comment.
    epoch: u64,
}

pub struct DescriptorCache {
    inner: Mutex<Inner>,
    revalidate_after: Duration,
    started: Instant,
    metrics: Arc<Metrics>,
}

impl DescriptorCache {
    pub fn new(max_open_files: usize, revalidate_after: Duration, metrics: Arc<Metrics>) -> DescriptorCache {
        let cap = NonZeroUsize::new(max_open_files.max(1)).expect("nonzero");
        DescriptorCache {
            inner: Mutex::new(Inner { lru: LruCache::new(cap), epoch: 0 }),
            revalidate_after,
            started: Instant::now(),
            metrics,
        }
    }

    /// The file at `rel` in `root`, from the cache or freshly opened.
    /// Shared-storage roots are always opened afresh and never cached.
    pub fn open(&self, root: &Root, rel: &str) -> io::Result<Arc<FileEntry>> {
        let path = root.join(rel);
        if root.caches_descriptors() {
            if let Some(entry) = self.lookup(&path) {
                self.metrics.cache_hits.inc();
                return Ok(entry);
            }
        }
        self.metrics.cache_misses.inc();
        let epoch = self.inner.lock().epoch;
        let file = root.open_file(rel)?;
        let entry = Arc::new(self.entry(root, path.clone(), file)?);
        if root.caches_descriptors() {
            let mut inner = self.inner.lock();
            if inner.epoch == epoch {
                inner.lru.put(path, entry.clone());
                self.metrics.cache_open_files.set(inner.lru.len() as i64);
            }
        }
        Ok(entry)
    }

    fn lookup(&self, path: &Path) -> Option<Arc<FileEntry>> {
        let entry = self.inner.lock().lru.get(path).cloned()?;
        let now = self.now_ms();
        if now.saturating_sub(entry.checked_ms.load(Ordering::Relaxed)) < self.revalidate_after.as_millis() as u64 {
            return Some(entry);
        }
        match std::fs::metadata(path) {
            Ok(meta) if Validators::of(&meta) == entry.validators => {
                entry.checked_ms.store(now, Ordering::Relaxed);
                Some(entry)
            }
            _ => {
                tracing::warn!(path = %path.display(), "cached descriptor was stale without a watcher event; dropped");
                self.invalidate(path);
                None
            }
        }
    }

    fn entry(&self, root: &Root, path: PathBuf, file: File) -> io::Result<FileEntry> {
        // Length and validators come from the descriptor that will be sent
        // (DESIGN.md decision 4), not from a separate stat of the path.
        let validators = Validators::of(&file.metadata()?);
        let header = |s: &str| HeaderValue::from_str(s).map_err(io::Error::other);
        Ok(FileEntry {
            etag: header(&validators.etag())?,
            last_modified: header(&httpdate::fmt_http_date(validators.modified()))?,
            content_type: HeaderValue::from_static(content_type(&path)),
            cache_control: header(&root.spec.cache_control)?,
            root: root.index,
            validators,
            file,
            path,
            checked_ms: AtomicU64::new(self.now_ms()),
        })
    }

    /// Drops `path` and everything under it (a directory event covers its tree).
    pub fn invalidate(&self, path: &Path) {
        let mut inner = self.inner.lock();
        inner.epoch += 1;
        let doomed: Vec<PathBuf> =
            inner.lru.iter().filter(|(k, _)| k.starts_with(path)).map(|(k, _)| k.clone()).collect();
        for key in &doomed {
            inner.lru.pop(key);
        }
        self.metrics.cache_invalidations.inc_by(doomed.len() as u64);
        self.metrics.cache_open_files.set(inner.lru.len() as i64);
    }

    /// Drops everything: after a watcher overflow nobody knows what changed.
    pub fn clear(&self) {
        let mut inner = self.inner.lock();
        inner.epoch += 1;
        self.metrics.cache_invalidations.inc_by(inner.lru.len() as u64);
        inner.lru.clear();
        self.metrics.cache_open_files.set(0);
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

/// The media type for a stored file, by extension.
pub fn content_type(path: &Path) -> &'static str {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let ext = name.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
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
