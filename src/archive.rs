//! PMTiles archives being served: where a tile is in its archive, found
//! through the archive's directories, each decoded once per archive version
//! and kept within a memory budget.
//!
//! The archive itself is an ordinary file of the descriptor cache (the HTTP
//! layer opens it as it opens any tile), so the answer for a tile is a
//! byte range of that open file, sent by whatever path the file takes, with
//! the file's freshness checks. Cached headers and directories are keyed by
//! the archive's validators (device, inode, length, mtime): a replaced or
//! rewritten archive is read anew, never through another version's
//! directories.

use std::collections::HashMap;
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;

use crate::pmtiles::{self, Entry, Error, Header, Section};
use crate::validators::Validators;

/// Bytes of decoded directories kept across all archives. A root
/// directory holds a few thousand entries (tens of KiB decoded), a leaf a
/// few thousand more: this keeps the roots and thousands of leaves.
pub const DIRECTORY_BUDGET: usize = 64 << 20;

/// What a cached directory costs: its entries, and the key, `Arc` and LRU
/// node around them.
fn cost(entries: &[Entry]) -> usize {
    std::mem::size_of_val(entries) + 128
}

/// Headers kept (one per archive version in use).
const HEADERS_MAX: usize = 256;

/// The cached headers and directories of the archives being served.
pub struct Archives {
    headers: Mutex<HashMap<Validators, Arc<Header>>>,
    directories: Mutex<Directories>,
}

struct Directories {
    lru: LruCache<(Validators, u64), Arc<[Entry]>>,
    bytes: usize,
    budget: usize,
}

/// Where a tile is: the archive's header (for its tile compression) and the
/// tile's bytes in the file, or `None` when the archive has no such tile.
#[derive(Debug, Clone)]
pub struct Located {
    pub header: Arc<Header>,
    pub tile: Option<Section>,
}

impl Default for Archives {
    fn default() -> Archives {
        Archives::new(DIRECTORY_BUDGET)
    }
}

impl Archives {
    pub fn new(budget: usize) -> Archives {
        Archives {
            headers: Mutex::new(HashMap::new()),
            directories: Mutex::new(Directories { lru: LruCache::unbounded(), bytes: 0, budget }),
        }
    }

    /// Whether this archive version's header is cached: then a lookup
    /// reads directories that are cached or in the page cache, and may run
    /// on an async worker thread.
    pub fn quick(&self, v: Validators) -> bool {
        self.headers.lock().contains_key(&v)
    }

    /// Finds tile `z/x/y` (XYZ rows) in the archive open as `file`, whose
    /// validators are `v`. Reads only what the caches lack: the header and
    /// at most [`pmtiles::MAX_DEPTH`] directories. Blocking on a miss. With
    /// `cache` false (an archive modified lately, whose validators may not
    /// yet tell its versions apart) nothing read is kept.
    pub fn locate(
        &self,
        file: &std::fs::File,
        v: Validators,
        cache: bool,
        z: u32,
        x: u32,
        y: u32,
    ) -> Result<Located, Error> {
        let header = self.header(file, v, cache)?;
        let Some(id) = u8::try_from(z).ok().and_then(|z| pmtiles::tile_id(z, x.into(), y.into())) else {
            return Ok(Located { header, tile: None });
        };
        let mut section = header.root;
        for _ in 0..pmtiles::MAX_DEPTH {
            let entries = self.directory(file, v, &header, section, cache)?;
            let Some(e) = pmtiles::find(&entries, id) else { return Ok(Located { header, tile: None }) };
            if !e.is_leaf() {
                let tile = header.tile(&e)?;
                return Ok(Located { header, tile: Some(tile) });
            }
            section = header.leaf(&e)?;
        }
        Err(pmtiles::Malformed(format!("leaf directories nested deeper than {}", pmtiles::MAX_DEPTH)).into())
    }

    fn header(&self, file: &std::fs::File, v: Validators, cache: bool) -> Result<Arc<Header>, Error> {
        if let Some(header) = self.headers.lock().get(&v) {
            return Ok(header.clone());
        }
        let header = Arc::new(pmtiles::read_header(file, v.len)?);
        if !cache {
            return Ok(header);
        }
        let mut headers = self.headers.lock();
        if headers.len() >= HEADERS_MAX {
            headers.clear();
        }
        headers.insert(v, header.clone());
        Ok(header)
    }

    fn directory(
        &self,
        file: &std::fs::File,
        v: Validators,
        header: &Header,
        section: Section,
        cache: bool,
    ) -> Result<Arc<[Entry]>, Error> {
        let key = (v, section.offset);
        if let Some(entries) = self.directories.lock().lru.get(&key) {
            return Ok(entries.clone());
        }
        // Read outside the lock: two requests missing the same directory
        // both read it, which is cheaper than making every hit wait.
        let entries: Arc<[Entry]> = pmtiles::read_directory(file, header, section)?.into();
        let size = cost(&entries);
        let mut dirs = self.directories.lock();
        // One directory larger than an eighth of the budget is used, not kept.
        if !cache || size > dirs.budget / 8 {
            return Ok(entries);
        }
        if let Some(old) = dirs.lru.put(key, entries.clone()) {
            dirs.bytes -= cost(&old);
        }
        dirs.bytes += size;
        while dirs.bytes > dirs.budget && dirs.lru.len() > 1 {
            match dirs.lru.pop_lru() {
                Some((_, gone)) => dirs.bytes -= cost(&gone),
                None => break,
            }
        }
        Ok(entries)
    }

    /// Decoded directory bytes held now.
    pub fn directory_bytes(&self) -> usize {
        self.directories.lock().bytes
    }
}
