//! One open file as the cache holds it ([`FileEntry`]): its descriptor,
//! validators, prepared header values and delivery path, and the checks that
//! say whether it still answers for its path and for a response in flight.
//!
//! The checks, from cheapest to strictest:
//! - [`FileEntry::is_current`]: in the cache, and its path confirmed by a
//!   `stat` within `revalidate_after` (else one `stat` now): nothing was
//!   renamed over it;
//! - [`FileEntry::unchanged`]: its own descriptor's `fstat` still has the
//!   validators the head was written from: nothing rewrote it in place;
//! - [`FileEntry::fresh`]: both, for reusing an entry, in one syscall at most;
//! - [`FileEntry::holds_snapshot`]: before a body's last byte, whether the
//!   bytes the head describes are still the file's (for logs, appends allowed).

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::HeaderValue;
use bytes::Bytes;

use super::memory::{charge, MemoryBudget};
use crate::metrics::DeliveryCounters;
use crate::roots::DeliveryPath;
use crate::validators::Validators;

/// One open file and everything needed to answer for it without another syscall.
#[derive(Debug)]
pub struct FileEntry {
    pub file: File,
    pub path: PathBuf,
    pub root: usize,
    /// The root's directory, and where in `path` the part below it starts:
    /// path checks walk from there.
    pub(super) root_dir: Arc<OwnedFd>,
    pub(super) rel_at: usize,
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
    pub(super) memory: OnceLock<Option<Bytes>>,
    /// Whether the content is gzip-compressed; read on first need.
    pub(super) gzip: OnceLock<bool>,
    pub(super) budget: Option<Arc<MemoryBudget>>,
    /// Milliseconds on [`clock_ms`] when this entry was last known fresh.
    pub(super) checked_ms: AtomicU64,
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
    pub(super) appended_to: Option<Samples>,
    pub(super) revalidate_after_ms: u64,
    /// When, on [`clock_ms`], the file will have gone unmodified for
    /// [`SETTLE`]; 0 if it had when opened, or if it is not on local
    /// storage. See [`Self::settled`].
    pub(super) settles_ms: u64,
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
    /// with the same sampled bytes (`Samples`): an append holds the
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

    /// Whether a body of this file may go by reference with no final
    /// check (sendfile under 64 KiB): it has not been modified for
    /// [`SETTLE`]. A file modified lately may be being written in place,
    /// for the first time as far as anyone here can know (`rewritten`
    /// only learns from an `IN_MODIFY` that arrives after the writer
    /// started): its small bodies are copied, and checked before their
    /// last chunk, instead. One clock read, only for files changed lately.
    pub fn settled(&self) -> bool {
        self.settles_ms == 0 || clock_ms() >= self.settles_ms
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
        match read_exact_at(&self.file, 0, len as usize) {
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
pub(super) struct Samples(u64);

impl Samples {
    const BLOCK: u64 = 4096;

    pub(super) fn take(file: &File, len: u64) -> io::Result<Samples> {
        use std::hash::Hasher;
        // SipHash with fixed keys: the same bytes hash the same within the process.
        let mut hasher = std::hash::DefaultHasher::new();
        let block = Self::BLOCK.min(len);
        for at in [0, (len - block) / 2, len - block] {
            let bytes = read_exact_at(file, at, block as usize)?;
            if bytes.len() as u64 != block {
                return Err(shrank());
            }
            hasher.write(&bytes);
        }
        Ok(Samples(hasher.finish()))
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

/// How long a file must go unmodified (mtime) before its small bodies go
/// by sendfile with no final check ([`FileEntry::settled`]).
pub const SETTLE: Duration = Duration::from_secs(60);

/// [`FileEntry::settles_ms`] for a file last modified at `mtime_ns`.
pub(super) fn settles_ms(mtime_ns: i128) -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128);
    let (age, settle) = (now - mtime_ns, SETTLE.as_nanos() as i128);
    if age >= settle {
        return 0;
    }
    // A modification "after now" (the clock was set back): a whole SETTLE.
    clock_ms() + ((settle - age.max(0)) / 1_000_000) as u64 + 1
}

/// Milliseconds since the first call: the clock of `checked_ms`.
pub(super) fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Bodies at least this long wait, on the sendfile path, until the client
/// has acknowledged all but their last byte before the final check
/// ([`FileEntry::holds_snapshot`]): sendfile queues page references, not
/// copies, so a page rewritten or truncated while still queued (or kept for
/// a retransmission) would go out changed. Files written in place are copied
/// below this length instead (see `DescriptorCache::entry`).
pub const ACKNOWLEDGED_FROM: u64 = 1 << 20;

/// Reads up to `want` bytes at `offset`; fewer only if the file ended.
///
/// A chunk of a TLS record or more starts [`CHUNK_PAGE_OFFSET`] bytes past
/// a page boundary. glibc's and the kernel's `rep movsb` copies run at 1 to
/// 3.5 GB/s when the destination is 1 to 15 bytes past the source modulo a
/// page, against 15 to 70 GB/s otherwise (measured on this machine's CPU),
/// and a TLS body is copied twice: by `pread` from the page cache (page
/// offset 0 for page-aligned file offsets) into this chunk, then by rustls
/// from the chunk to behind the 5-byte header in its page-aligned record
/// buffer. A chunk at page offset 0 made the second copy slow, one at 5 the
/// first (each a third or more of the TLS path's CPU in perf); at 64 both
/// are fast and the chunk stays cache-line aligned (docs/BENCHMARKS.md).
/// The buffer is not zeroed first: `pread` fills it.
pub fn read_exact_at(file: &File, offset: u64, want: usize) -> io::Result<Bytes> {
    use std::os::fd::AsRawFd;
    let page = 4096;
    let mut buf: Vec<u8> = Vec::with_capacity(want + if want >= TLS_RECORD { page } else { 0 });
    let lead = if want >= TLS_RECORD { (CHUNK_PAGE_OFFSET + page - buf.as_ptr() as usize % page) % page } else { 0 };
    buf.resize(lead, 0);
    let mut filled = 0;
    while filled < want {
        let spare = &mut buf.spare_capacity_mut()[..want - filled];
        // SAFETY: `spare` is writable memory of the length passed; pread
        // writes at most that many bytes, which are then initialised.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                spare.len(),
                (offset + filled as u64) as libc::off_t,
            )
        };
        match n {
            0 => break,
            n if n > 0 => {
                // SAFETY: pread initialised these `n` bytes.
                unsafe { buf.set_len(buf.len() + n as usize) };
                filled += n as usize;
            }
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(Bytes::from(buf).slice(lead..))
}

/// The most plaintext one TLS record carries.
const TLS_RECORD: usize = 16 * 1024;
/// Where a large chunk starts within its page (see [`read_exact_at`]).
const CHUNK_PAGE_OFFSET: usize = 64;

/// The error for a file that ended before its `Content-Length`.
pub fn shrank() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while being sent")
}
